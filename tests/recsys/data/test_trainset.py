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
    assert trainset.PrecedingItems(users, items, 2)[np.arange(5)].tolist() == h.tolist()


def test_per_batch_histories_equal_the_in_memory_windows_batch_for_batch():
    """Training builds each batch's histories from the item column and one start per user; for a seed,
    every shuffled batch equals the rows of the full [interactions, L] array it replaces."""
    rng = np.random.default_rng(0)
    users = np.sort(rng.integers(0, 300, 20_000))
    users[users == 7] = 8                      # a user with no rows
    items = rng.integers(0, 1000, len(users))
    full = trainset.history_windows(users, items, 20)
    lazy = trainset.PrecedingItems(users, items, 20, n_users=301)
    assert lazy.shape == full.shape and np.array_equal(np.asarray(lazy), full)
    perm = np.random.default_rng(5).permutation(len(users))
    for s in range(0, len(users) - 2048 + 1, 2048):
        idx = perm[s:s + 2048]
        np.testing.assert_array_equal(lazy[idx], full[idx])
    assert lazy[3].tolist() == full[3].tolist() and lazy[10:20].tolist() == full[10:20].tolist()
    # the memory it holds: one start per user, beside the columns the TrainSet has anyway
    assert lazy.first.nbytes == 301 * 8 and lazy.items is items



def test_target_events_make_only_those_held_out_rows_relevant(write_file, make_config, build_dataset):
    """Train on every event, measure on purchases (evaluation.target_events)."""
    import pytest
    from recsys.data.trainset import eval_sets, from_dataset
    from recsys.errors import DataError
    funnel = ["view", "view", "cart", "purchase"]
    rows = ["user_id,item_id,event,timestamp"] + [
        f"u{u},i{(u + k) % 9},{funnel[k % 4]},{100 * u + k}" for u in range(12) for k in range(8)]
    cfg = make_config({"source": {"path": write_file("shop.csv", rows), "format": "csv",
                                  "columns": {"value": "", "event": "event"}},
                       "feedback": {"mode": "event"}, "split": {"strategy": "leave_last_n", "leave_last_n": 2}})
    ds = build_dataset(cfg)
    test = ds.read("test", ["user", "item", "event"])
    everything = eval_sets(ds, 3)["test"]
    purchases = eval_sets(ds, 3, target_events=("purchase",))["test"]
    assert everything.relevant.nnz == len(test.drop_duplicates(["user", "item"]))
    want = test[test["event"] == "purchase"]
    assert purchases.relevant.nnz == len(want.drop_duplicates(["user", "item"])) > 0
    assert set(purchases.user_ids) == set(want["user"])
    assert set(from_dataset(ds, 3, target_events=("purchase",)).evals["test"].user_ids) == set(want["user"])
    # a dataset without event types cannot be measured on some of them
    plain = make_config({"source": {"path": write_file("plain.csv", [r.rsplit(",", 2)[0] + "," + r.rsplit(",", 1)[1]
                                                                       for r in rows]),
                                    "format": "csv", "columns": {"value": ""}},
                         "feedback": {"mode": "implicit"}, "split": {"strategy": "leave_last_n", "leave_last_n": 2}})
    with pytest.raises(DataError, match="evaluation.target_events"):
        eval_sets(build_dataset(plain, dataset_id="plain"), 3, target_events=("purchase",))


def test_catalog_attributes_become_candidate_tower_tokens():
    """category / tags / price reach the two_tower candidate tower as tokens beside the genres."""
    import pandas as pd
    from recsys.data.trainset import item_features_from_frame
    feats = pd.DataFrame({"item": ["a", "b", "c", "d"], "item_idx": [0, 1, 2, 3], "title": ["A", "B", "C", "D"],
                          "year": [0, 0, 0, 0], "genres": [[], ["g"], [], []],
                          "category": ["Books", "Games", None, "Books"], "tags": [["new"], [], ["new", "sale"], []],
                          "price": [1.0, 10.0, 100.0, float("nan")], "train_count": [1, 1, 1, 1]})
    f = item_features_from_frame(feats, 4)
    names = list(f.genre_names)
    tokens = [{names[t] for t in row if t >= 0} for row in f.genres]
    assert {"category=Books", "tags=new"} <= tokens[0] and any(t.startswith("price=q") for t in tokens[0])
    assert tokens[1] >= {"g", "category=Games"} and "category=Books" not in tokens[2]
    assert tokens[3] == {"category=Books"}                       # unknown price: no price token
    prices = [next(t for t in tokens[i] if t.startswith("price=")) for i in range(3)]
    assert len(set(prices)) == 3                                 # deciles tell 1, 10 and 100 apart


def test_text_attributes_join_the_title_words_and_are_not_attribute_tokens():
    import pandas as pd
    from recsys.data.trainset import item_features_from_frame
    feats = pd.DataFrame({"item": ["a", "b", "c"], "item_idx": [0, 1, 2], "title": ["Lamp", "Lamp", "Chair"],
                          "year": [0, 0, 0], "genres": [[], [], []], "category": ["Home", "Home", "Home"],
                          "blurb": ["warm oak wood wood", "cold steel", "oak wood seat"], "train_count": [1, 1, 1]})
    feats.attrs["kinds"] = {"category": "categorical", "blurb": "text"}
    f = item_features_from_frame(feats, 3)
    genre_names, words = list(f.genre_names), list(f.token_names)
    assert genre_names == ["category=Home"]                      # no "blurb=..." token
    row = lambda i: [words[t] for t in f.title_tokens[i] if t >= 0]   # noqa: E731
    assert row(0) == ["lamp", "oak", "wood"]                     # words in >= 2 items, each once
    assert row(2) == ["oak", "wood"] and row(1) == ["lamp"]


def _eval_set_by_id_strings(df, seen, users, n_items, history_len, target_events, exclusion):
    """The previous definition, matching users by their ID strings on every row (the reference)."""
    import pandas as pd
    ids = np.asarray(sorted(df["user"].unique()), dtype=object)
    row_of = pd.Index(ids)
    relevant = trainset.csr_from_pairs(row_of.get_indexer(df["user"]), df["item_idx"].to_numpy(), len(ids), n_items)
    seen = seen[seen["user"].isin(row_of)].sort_values(["timestamp"], kind="stable")
    rows = row_of.get_indexer(seen["user"])
    done = trainset.excluded_rows(seen, exclusion, target_events)
    exclude = trainset.csr_from_pairs(rows[done], seen["item_idx"].to_numpy()[done], len(ids), n_items)
    history = trainset.last_items(rows, seen["item_idx"].to_numpy(), len(ids), history_len)
    return trainset.EvalSet(ids, users.lookup(ids), relevant, exclude, history)


def test_evaluation_sets_match_users_by_index_as_they_did_by_id_string():
    """Held-out users known to the vocabulary and users first seen in validation (user_idx -1, matched by
    ID among the earlier rows without one): the same EvalSet as matching every row by its ID string,
    though train's rows carry no ID strings at all."""
    import pandas as pd
    from recsys.data.vocab import Vocabulary
    rng = np.random.default_rng(3)
    users = Vocabulary([f"u{i:03d}" for i in range(60)])
    n_items = 40
    train = pd.DataFrame({"user_idx": rng.integers(0, 60, 900), "item_idx": rng.integers(0, n_items, 900),
                          "timestamp": rng.integers(0, 10_000, 900), "event": rng.choice(["view", "purchase"], 900)})
    val_users = np.r_[np.arange(0, 60, 3), -np.ones(20, int)]
    val_ids = [f"u{u:03d}" if u >= 0 else f"new{k % 7}" for k, u in enumerate(val_users)]
    val = pd.DataFrame({"user": np.repeat(val_ids, 3), "user_idx": np.repeat(val_users, 3),
                        "item_idx": rng.integers(0, n_items, 120), "timestamp": rng.integers(10_000, 12_000, 120),
                        "event": rng.choice(["view", "purchase"], 120)})
    test_ids = [f"u{u:03d}" for u in range(1, 60, 4)] + ["new2", "new5", "brand_new"]
    test = pd.DataFrame({"user": test_ids, "user_idx": users.lookup(test_ids),
                         "item_idx": rng.integers(0, n_items, len(test_ids)), "timestamp": 20_000,
                         "event": "purchase"})
    with_ids = train.assign(user=np.asarray(users.ids)[train["user_idx"]])
    for held, seen, seen_ref in [(val, train, with_ids),
                                 (test, pd.concat([train, val], ignore_index=True),
                                  pd.concat([with_ids, val], ignore_index=True))]:
        for exclusion, events in [("seen", ()), ("bought", ("purchase",)), ("none", ())]:
            got = trainset._eval_set(held, seen, users, n_items, 5, events, exclusion)
            ref = _eval_set_by_id_strings(held, seen_ref, users, n_items, 5, events, exclusion)
            assert got.user_ids.tolist() == ref.user_ids.tolist()
            assert got.user_idx.tolist() == ref.user_idx.tolist()
            assert (got.relevant != ref.relevant).nnz == 0 and (got.exclude != ref.exclude).nnz == 0
            assert got.history.tolist() == ref.history.tolist()


def _last_items_reference(users, items, n_rows, length):
    """The row-at-a-time definition: each user's items in input (time) order, the last `length` reversed."""
    out = np.full((n_rows, length), trainset.PAD, dtype=np.int32)
    seen = {}
    for u, i in zip(users, items):
        seen.setdefault(int(u), []).append(int(i))
    for u, its in seen.items():
        last = its[::-1][:length]
        out[u, :len(last)] = last
    return out


def test_last_items_is_each_users_newest_items_first():
    rng = np.random.default_rng(5)
    for n_rows, n, length in ((50, 2000, 20), (7, 30, 5), (300, 100, 3), (4, 1, 20), (10, 0, 4), (5, 40, 0)):
        users = rng.integers(0, n_rows, n)
        items = rng.integers(0, 999, n)
        got = trainset.last_items(users, items, n_rows, length)
        assert got.dtype == np.int32 and got.shape == (n_rows, length)
        np.testing.assert_array_equal(got, _last_items_reference(users, items, n_rows, length))
    # rows without items stay padded; a user with fewer items than `length` is padded at the end
    got = trainset.last_items(np.array([2, 2, 0]), np.array([5, 6, 7]), 4, 3)
    np.testing.assert_array_equal(got, [[7, -1, -1], [-1, -1, -1], [6, 5, -1], [-1, -1, -1]])
