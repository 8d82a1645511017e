import numpy as np

from recsys import trainset


def test_lightgcn_loader(tmp_path):
    (tmp_path / "train.txt").write_text("0 1 2 3\n1 0 2\n2 4\n")
    (tmp_path / "test.txt").write_text("0 4\n1 3\n2\n")
    ts = trainset.from_lightgcn(str(tmp_path), history_len=2)
    assert ts.n_users == 3 and ts.n_items == 5 and len(ts.user_idx) == 6
    test = ts.evals["test"]
    assert test.relevant[0].indices.tolist() == [4] and test.relevant[2].nnz == 0
    assert sorted(test.exclude[0].indices.tolist()) == [1, 2, 3]
    # no timestamps: a training example's history is the user's other items (never the item itself)
    assert sorted(ts.history[0].tolist()) == [2, 3] and sorted(ts.history[2].tolist()) == [1, 2]
    assert ts.history[5].tolist() == [-1, -1]   # user 2 has one train item: nothing else to show
    assert test.history[0].tolist() == [3, 2]


def test_history_windows_stop_at_user_boundaries():
    users = np.array([0, 0, 0, 1, 1])
    items = np.array([5, 6, 7, 8, 9])
    h = trainset.history_windows(users, items, 2)
    assert h.tolist() == [[-1, -1], [5, -1], [6, 5], [-1, -1], [8, -1]]


def test_other_items_never_include_the_row_item():
    rng = np.random.default_rng(1)
    users = np.repeat(np.arange(50), rng.integers(1, 40, 50))
    items = rng.permutation(len(users))            # distinct items: a leak would be visible
    h = trainset.other_items(users, items, 8, seed=3)
    for r in range(len(users)):
        row = h[r][h[r] >= 0]
        same_user = set(items[users == users[r]].tolist()) - {items[r]}
        assert items[r] not in row and set(row.tolist()) <= same_user
        # light users see every other item exactly once; heavy users a full window
        assert len(row) == min(8, len(same_user))
        if len(same_user) <= 8:
            assert sorted(row.tolist()) == sorted(same_user)
