import numpy as np

from recsys.data import trainset


def test_lightgcn_loader(tmp_path):
    (tmp_path / "train.txt").write_text("0 1 2 3\n1 0 2\n2 4\n")
    (tmp_path / "test.txt").write_text("0 4\n1 3\n2\n")
    ts = trainset.from_lightgcn(str(tmp_path), history_len=2)
    assert ts.n_users == 3 and ts.n_items == 5 and len(ts.user_idx) == 6
    test = ts.evals["test"]
    assert test.relevant[0].indices.tolist() == [4] and test.relevant[2].nnz == 0
    assert sorted(test.exclude[0].indices.tolist()) == [1, 2, 3]
    # no timestamps: every training example of a user carries the user's evaluation-time history
    assert ts.history[:3].tolist() == [[3, 2]] * 3 and ts.history[3:5].tolist() == [[2, 0]] * 2
    assert ts.history[5].tolist() == [4, -1]
    assert test.history[0].tolist() == [3, 2]


def test_history_windows_stop_at_user_boundaries():
    users = np.array([0, 0, 0, 1, 1])
    items = np.array([5, 6, 7, 8, 9])
    h = trainset.history_windows(users, items, 2)
    assert h.tolist() == [[-1, -1], [5, -1], [6, 5], [-1, -1], [8, -1]]

