import numpy as np
import pytest

from recsys.data.trainset import csr_from_pairs
from recsys.evaluation import metrics


def csr(rows, n_items):
    r = [i for i, items in enumerate(rows) for _ in items]
    c = [x for items in rows for x in items]
    return csr_from_pairs(np.array(r, dtype=np.int64), np.array(c, dtype=np.int64), len(rows), n_items)


def test_hand_computed_metrics():
    # user 0: ranking [0, 1, 2, 3], relevant {1, 3}; user 1: ranking [3, 2, 1, 0], relevant {0}
    scores = np.array([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    relevant = csr([[1, 3], [0]], 4)
    exclude = csr([[], []], 4)
    ev = metrics.evaluate(lambda rows: scores[rows], np.arange(2), relevant, exclude, ks=(2, 4))
    pu = ev.per_user
    # user 0 @2: hit at rank 2 only
    assert pu["recall@2"][0] == pytest.approx(0.5)
    assert pu["recall_norm@2"][0] == pytest.approx(0.5)
    assert pu["ndcg@2"][0] == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)))
    assert pu["hit_rate@2"][0] == 1.0
    assert pu["map@2"][0] == pytest.approx((1 / 2) / 2)
    assert pu["mrr@2"][0] == pytest.approx(0.5)
    # user 0 @4: hits at ranks 2 and 4
    assert pu["recall@4"][0] == pytest.approx(1.0)
    assert pu["map@4"][0] == pytest.approx((1 / 2 + 2 / 4) / 2)
    # user 1 (fewer relevant items than K): only hit at rank 4
    assert pu["recall@2"][1] == 0.0 and pu["mrr@2"][1] == 0.0
    assert pu["recall@4"][1] == 1.0
    assert pu["recall_norm@4"][1] == 1.0   # min(K, |rel|) = 1
    assert pu["ndcg@4"][1] == pytest.approx(1 / np.log2(5))
    assert ev.list_level["coverage@2"] == pytest.approx(4 / 4)


def test_exclusion_and_empty_users_are_skipped():
    scores = np.array([[4.0, 3.0, 2.0, 1.0], [4.0, 3.0, 2.0, 1.0]])
    relevant = csr([[1], []], 4)          # user 1 has nothing held out: not averaged
    exclude = csr([[0], [0]], 4)          # item 0 seen in training: removed from the ranking
    ev = metrics.evaluate(lambda rows: scores[rows], np.arange(2), relevant, exclude, ks=(1,))
    assert ev.users.tolist() == [0]
    assert ev.per_user["recall@1"].tolist() == [1.0]
    assert ev.summary()["users"] == 1


def test_novelty_uses_training_popularity():
    scores = np.array([[1.0, 0.0]])
    pop = np.array([3.0, 1.0])
    ev = metrics.evaluate(lambda rows: scores[rows], np.arange(1), csr([[0]], 2), csr([[]], 2), ks=(1,),
                          item_popularity=pop)
    assert ev.list_level["novelty@1"] == pytest.approx(-np.log2(3 / 4))
