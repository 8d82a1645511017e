"""Towers and loss of the embedding models, and warm start by token: the parts the contract test
(test_contract.py) does not reach."""
import copy

import numpy as np
import pytest
import tensorflow as tf

from recsys.config import from_dict
from recsys.data import trainset
from recsys.models import create
from recsys.models.base import WarmStart
from recsys.models.loss import RetrievalModel
from recsys.evaluation.scorer import validation_metrics

MODEL = {"dim": 16, "batch_size": 256, "epochs": 12, "patience": 4, "learning_rate": 0.02, "history_length": 5}


def towers(name, n_users, n_items, dim, **model):
    """The towers a model of `name` builds for a TrainSet of this size (no features)."""
    ts = trainset.TrainSet(np.zeros(1, np.int64), np.zeros(1, np.int64), np.ones(1, np.float32),
                           np.full((1, 1), -1, np.int32), n_users, n_items,
                           np.asarray([f"u{u}" for u in range(n_users)], dtype=object),
                           np.asarray([f"i{i}" for i in range(n_items)], dtype=object))
    return create(name, from_dict({"model": {"dim": dim, **model}}).model).build_towers(ts)


def test_candidate_history_reads_the_item_table_without_training_it():
    qt, ct = towers("two_tower", 10, 30, 8, history_items="candidate")
    model = RetrievalModel(qt, ct, np.ones(30))
    batch = {"user_idx": tf.constant([0, 1, -1]), "item_idx": tf.constant([3, 4, 5]),
             "history": tf.constant([[1, 2, -1], [7, -1, -1], [-1, -1, -1]])}
    model.compute_loss(batch)
    table = ct.item_embedding.embeddings
    assert not hasattr(qt, "history_embedding")
    assert sum(v is table for v in model.trainable_variables) == 1      # one table, updated once per step
    with tf.GradientTape() as tape:
        q = qt(batch)
    assert tape.gradient(q, table) is None                                # the query side does not train it
    before = qt(batch).numpy()
    table.assign_add(tf.ones_like(table))                                 # but it reads the current values
    assert not np.allclose(qt(batch).numpy()[:2], before[:2])
    np.testing.assert_allclose(qt(batch).numpy()[2], before[2], atol=1e-6)  # empty history: user ID only


@pytest.mark.parametrize("logq,hits,extra,weighted", [(True, True, 0, False), (True, True, 7, True),
                                                       (False, False, 0, True), (True, False, 5, False)])
def test_fused_loss_equals_the_tfrs_retrieval_task(logq, hits, extra, weighted):
    """The fused training loss is the TFRS Retrieval loss: same value and same gradients."""
    rng = np.random.default_rng(0)
    n_users, n_items, b = 40, 30, 64            # 64 draws from 30 items: many accidental hits
    counts = rng.integers(1, 50, n_items)
    qt, ct = towers("mf", n_users, n_items, 8)
    batch = {"user_idx": tf.constant(rng.integers(0, n_users, b), tf.int32),
             "item_idx": tf.constant(rng.integers(0, n_items, b), tf.int32),
             "history": tf.fill([b, 1], -1)}
    if weighted:
        batch["weight"] = tf.constant(rng.uniform(0.5, 2.0, b), tf.float32)
    results = []
    for fused in (False, True):
        model = RetrievalModel(qt, ct, counts, 0.1, logq, hits, extra, fused=fused,
                               negatives="mixed" if extra else "in_batch")
        tf.random.set_seed(3)                     # the same extra negatives for both
        with tf.GradientTape() as tape:
            loss = model.compute_loss(batch, training=True)
        grads = tape.gradient(loss, model.trainable_variables)
        results.append((float(loss), [tf.convert_to_tensor(g).numpy() for g in grads]))
    (l0, g0), (l1, g1) = results
    assert l1 == pytest.approx(l0, rel=1e-5)
    for a, c in zip(g0, g1):
        np.testing.assert_allclose(c, a, rtol=1e-3, atol=1e-6)


def _reference_loss(q, p, n, lq_pos, lq_neg, masked, tau, tau2):
    """The BSL loss written the plain way (no custom gradient): τ2 · logsumexp(negatives) - positive."""
    s = tf.matmul(q, n, transpose_b=True) / tau - lq_neg
    s = tf.where(masked, -np.inf, s)
    pos = tf.reduce_sum(q * p, axis=1) / tau - lq_pos
    return tau2 * tf.reduce_logsumexp(s, axis=1) - pos


@pytest.mark.parametrize("tau2", [1.0, 1.22, 0.8])
def test_bsl_loss_matches_the_plain_formula_and_the_authors(tau2):
    """Value and gradients of the fused BSL form equal autodiff of the plain formula; without masks the
    value is the authors' Pos_DROLoss (-log(exp(pos/τ1) / mean_j exp(neg_j/τ1)^τ2)) plus τ2·log M."""
    from recsys.models.loss import fused_retrieval_loss
    rng = np.random.default_rng(1)
    b, m, d, tau = 6, 9, 4, 0.08
    q, p, n = (tf.constant(rng.normal(size=s), tf.float32) for s in ((b, d), (b, d), (m, d)))
    lq_pos, lq_neg = tf.constant(rng.normal(size=b), tf.float32), tf.constant(rng.normal(size=m), tf.float32)
    masked = tf.constant(rng.random((b, m)) < 0.3)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([q, p, n])
        ours = fused_retrieval_loss(q, p, n, lq_pos, lq_neg, masked, tau, tau2)
        ref = _reference_loss(q, p, n, lq_pos, lq_neg, masked, tau, tau2)
        w = tf.constant(rng.uniform(0.5, 2, b), tf.float32)        # a weighted sum: per-row upstream grads
        l_ours, l_ref = tf.reduce_sum(w * ours), tf.reduce_sum(w * ref)
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)
    for a, c in zip(tape.gradient(l_ours, [q, p, n]), tape.gradient(l_ref, [q, p, n])):
        np.testing.assert_allclose(a.numpy(), c.numpy(), rtol=1e-4, atol=1e-5)
    # the authors' form (utils/losses.py, mode "single"), no masks and no logQ, in numpy
    none = tf.zeros([b, m], tf.bool)
    ours = fused_retrieval_loss(q, p, n, tf.zeros([b]), tf.zeros([m]), none, tau, tau2).numpy()
    qn, pn, nn = (x.numpy().astype(np.float64) for x in (q, p, n))
    pos_logits = np.exp((qn * pn).sum(1) / tau)
    neg_logits = np.exp(qn @ nn.T / tau).mean(1) ** tau2
    np.testing.assert_allclose(ours, -np.log(pos_logits / neg_logits) + tau2 * np.log(m), rtol=1e-4)


@pytest.mark.parametrize("tau2", [None, 1.22])
def test_margin_lowers_the_positive_score_by_margin_over_temperature(tau2):
    """softmax: logsumexp({pos - m/τ} ∪ negatives) - (pos - m/τ); bsl: τ2·logsumexp(negatives) - pos + m/τ."""
    from recsys.models.loss import fused_retrieval_loss
    rng = np.random.default_rng(3)
    q, p, n = (tf.constant(rng.normal(size=s), tf.float32) for s in ((5, 3), (5, 3), (7, 3)))
    none = tf.zeros([5, 7], tf.bool)
    got = fused_retrieval_loss(q, p, n, tf.zeros([5]), tf.zeros([7]), none, 0.1, tau2, margin=0.2).numpy()
    s = q.numpy().astype(np.float64) @ n.numpy().T / 0.1
    pos = (q.numpy() * p.numpy()).sum(1).astype(np.float64) / 0.1 - 2.0
    lse = lambda x: np.log(np.exp(x).sum(1))                    # noqa: E731
    want = lse(np.concatenate([s, pos[:, None]], 1)) - pos if tau2 is None else tau2 * lse(s) - pos
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_bsl_loss_with_every_negative_masked_is_finite_and_pulls_the_positive_only():
    from recsys.models.loss import fused_retrieval_loss
    q, p, n = tf.ones([2, 3]), tf.ones([2, 3]) * 0.5, tf.ones([4, 3])
    masked = tf.constant([[True] * 4, [False, True, True, True]])
    with tf.GradientTape() as tape:
        tape.watch(n)
        loss = fused_retrieval_loss(q, p, n, tf.zeros([2]), tf.zeros([4]), masked, 0.1, 1.5)
        total = tf.reduce_sum(loss)
    assert np.isfinite(loss.numpy()).all()
    assert loss.numpy()[0] == pytest.approx(-15.0)           # -q.p / τ: no negative term
    g = tape.gradient(total, n).numpy()
    assert np.abs(g[1:]).max() == 0 and np.abs(g[0]).max() > 0  # only the one unmasked negative


@pytest.mark.parametrize("negatives,loss,hits,logq", [
    ("uniform", "softmax", True, True), ("uniform", "bsl", True, True), ("mixed", "bsl", True, True),
    ("in_batch", "bsl", True, True), ("mixed", "softmax", False, True), ("uniform", "bsl", False, True),
    ("in_batch", "bsl", True, False), ("mixed", "bsl", False, False)])
def test_retrieval_model_negatives_reach_the_loss_as_documented(negatives, loss, hits, logq):
    """Which candidates are negatives, which are masked, and which get a logQ correction, per
    `negatives`: a numpy reference on 6 items, so uniform draws equal to a positive do occur."""
    rng = np.random.default_rng(2)
    n_users, n_items, b, m = 20, 6, 8, 5
    counts = rng.integers(1, 50, n_items)
    qt, ct = towers("mf", n_users, n_items, 4)
    batch = {"user_idx": tf.constant(rng.integers(0, n_users, b), tf.int32),
             "item_idx": tf.constant(rng.integers(0, n_items, b), tf.int32), "history": tf.fill([b, 1], -1)}
    model = RetrievalModel(qt, ct, counts, 0.1, logq, hits, m, loss=loss, negative_weight=1.3, negatives=negatives)
    tf.random.set_seed(5)
    got = float(model.compute_loss(batch))
    tf.random.set_seed(5)
    neg = tf.random.uniform([m], 0, n_items, dtype=tf.int32).numpy()
    ids = batch["item_idx"].numpy()
    assert (ids[:, None] == neg[None, :]).any()                 # the hit-masking of uniform draws is exercised
    q = qt(batch).numpy().astype(np.float64)
    emb = ct(tf.range(n_items)).numpy().astype(np.float64)
    lq_ids = np.log(np.minimum((counts + 1.0) / (counts + 1.0).sum() * b, 1.0)) * logq   # clipped as TFRS does
    cand = {"uniform": neg, "mixed": np.concatenate([ids, neg]), "in_batch": ids}[negatives]
    lq = {"uniform": np.zeros(m), "mixed": np.concatenate([lq_ids[ids], np.zeros(m)]),
          "in_batch": lq_ids[ids]}[negatives]
    s = q @ emb[cand].T / 0.1 - lq
    pos = (q * emb[ids]).sum(1) / 0.1 - (lq_ids[ids] if negatives != "uniform" else 0)
    if hits:
        s[ids[:, None] == cand[None, :]] = -np.inf              # accidental hits and the positive itself
    elif negatives != "uniform":
        s[np.arange(b), np.arange(b)] = -np.inf                 # only the positive's own column
    lse = lambda x: np.log(np.exp(x).sum(1))                    # noqa: E731
    want = (lse(np.concatenate([s, pos[:, None]], 1)) - pos) if loss == "softmax" else 1.3 * lse(s) - pos
    assert got == pytest.approx(want.mean(), rel=1e-4)


def _featured_trainset(token_names, genre_names, user_ids, item_ids):
    """A tiny two_tower TrainSet whose feature tables are keyed by the given token/genre lists."""
    rng = np.random.default_rng(0)
    n_users, n_items = len(user_ids), len(item_ids)
    u = np.repeat(np.arange(n_users), 4)
    i = rng.integers(0, n_items, len(u))
    feats = trainset.ItemFeatures(
        np.tile(np.arange(len(genre_names), dtype=np.int32)[:1], (n_items, 1)),
        np.tile(np.arange(len(token_names), dtype=np.int32), (n_items, 1)),
        np.ones(n_items, np.int32), len(genre_names), len(token_names), 41,
        np.asarray(genre_names, dtype=str), np.asarray(token_names, dtype=str))
    users = trainset.UserFeatures(np.zeros((n_users, 1), np.int32), np.asarray(["plan=basic"], dtype=object))
    return trainset.TrainSet(u, i, np.ones(len(u), np.float32), trainset.history_windows(u, i, 3), n_users, n_items,
                             np.asarray(user_ids, dtype=object), np.asarray(item_ids, dtype=object), feats, users)


def test_warm_start_matches_feature_rows_by_token_not_position():
    cfg = from_dict({"model": {**MODEL, "epochs": 1, "history_length": 3}})
    ts1 = _featured_trainset(["comedy", "war"], ["drama"], ["a", "b"], ["x", "y", "z"])
    tr1 = create("two_tower", cfg.model)
    tr1.fit(ts1, (20,), progress=lambda *_: None, validate=validation_metrics)
    old = tr1.weights()
    assert old["candidate.token_embedding:names"].tolist() == ["comedy", "war"]
    # the next dataset adds a token that sorts first: every old token moves down one index
    ts2 = _featured_trainset(["action", "comedy", "war"], ["drama", "noir"], ["a", "b", "c"], ["x", "y", "z", "w"])
    mc = copy.deepcopy(cfg.model)
    mc.learning_rate = 1e-9
    tr2 = create("two_tower", mc)
    tr2.fit(ts2, (20,), previous=WarmStart("v1", ts1.user_ids, ts1.item_ids, old), progress=lambda *_: None, validate=validation_metrics)
    new = tr2.weights()
    warm = tr2.report.warm_started
    assert warm["candidate.token_embedding"] == 2 and warm["candidate.genre_embedding"] == 1
    np.testing.assert_allclose(new["candidate.token_embedding"][2:4], old["candidate.token_embedding"][1:3], atol=1e-6)
    assert not np.allclose(new["candidate.token_embedding"][1], old["candidate.token_embedding"][1])  # "action": fresh
    np.testing.assert_allclose(new["candidate.genre_embedding"][1], old["candidate.genre_embedding"][1], atol=1e-6)
    np.testing.assert_allclose(new["query.user_feature_embedding"][1], old["query.user_feature_embedding"][1], atol=1e-6)
    # a previous version without names (written before they were saved) copies no feature rows
    legacy = {k: v for k, v in old.items() if not k.endswith(":names")}
    tr3 = create("two_tower", mc)
    tr3.fit(ts2, (20,), previous=WarmStart("v1", ts1.user_ids, ts1.item_ids, legacy), progress=lambda *_: None, validate=validation_metrics)
    warm = tr3.report.warm_started
    assert "candidate.token_embedding" not in warm and "candidate.item_embedding" in warm


def test_a_time_budget_stops_before_an_epoch_that_would_end_past_it():
    cfg = from_dict({"model": {**MODEL, "epochs": 50, "patience": 50, "history_length": 3}})
    ts = _featured_trainset(["comedy", "war"], ["drama"], [f"u{i}" for i in range(300)], [f"i{i}" for i in range(50)])
    lines = []
    model = create("mf", cfg.model)
    report = model.fit(ts, (20,), progress=lines.append, max_seconds=1e-6, validate=validation_metrics)
    assert len(report.epochs) == 1 and any("time budget" in line for line in lines)
    report = create("mf", cfg.model).fit(ts, (20,), progress=lambda *_: None, max_seconds=None, validate=validation_metrics)
    assert len(report.epochs) == 50


def test_the_automatic_batch_size_follows_the_training_set():
    from recsys.models.training import auto_batch_size
    assert [auto_batch_size(n) for n in (10, 60_000, 131_071, 133_000, 1_500_000, 50_000_000)] == \
        [256, 256, 256, 512, 512, 512]


def test_the_time_budget_keeps_the_refit_back_or_trades_it_for_epochs_while_validation_rises():
    from recsys.models.training import after_epoch
    # no budget: always another epoch; the refit follows when there is one
    assert after_epoch(1e9, 3, 3, None, 1.2) == (True, True)
    assert after_epoch(1e9, 3, 3, 0, None) == (True, False)
    # no refit: another epoch while it ends within the budget (100 s an epoch)
    assert after_epoch(300, 3, 1, 400, None) == (True, False)
    assert after_epoch(300, 3, 3, 399, None) == (False, False)
    # with a refit (each of its epochs 1.2x): epoch 4 plus a 4-epoch refit must fit: 400 + 480 <= 880
    assert after_epoch(300, 3, 3, 880, 1.2) == (True, True)
    # it does not, but epoch 4 does, and validation rose in epoch 3: train on, no refit
    assert after_epoch(300, 3, 3, 879, 1.2) == (True, False)
    # validation did not rise in epoch 3 (best 2): stop and refit the 2 epochs (240 s fit in the budget)
    assert after_epoch(300, 3, 2, 879, 1.2) == (False, True)
    # best at epoch 1: stop, and its 1-epoch refit (120 s) still fits ...
    assert after_epoch(300, 3, 1, 420, 1.2) == (False, True)
    # ... or does not: no refit either
    assert after_epoch(300, 3, 1, 419, 1.2) == (False, False)
    # still rising but not even one more epoch fits: stop; a 3-epoch refit (360 s) does not fit either
    assert after_epoch(300, 3, 3, 399, 1.2) == (False, False)
    # the fit's last epoch (model.epochs): no epoch to trade the refit for; it follows if it fits
    assert after_epoch(300, 3, 3, 880, 1.2, last=True) == (False, True)
    assert after_epoch(300, 3, 3, 659, 1.2, last=True) == (False, False)
    assert after_epoch(300, 3, 3, None, 1.2, last=True) == (False, True)
    # the 10M run's two_tower (173 s an epoch, refit 1.2x, 600 s): it had 1 epoch + refit; now 3 epochs
    go, refit = after_epoch(173, 1, 1, 600, 1.2)
    assert (go, refit) == (True, False)
    assert after_epoch(346, 2, 2, 600, None) == (True, False) and after_epoch(519, 3, 3, 600, None)[0] is False


@pytest.mark.parametrize("name", ["mf", "two_tower"])
def test_the_same_seed_trains_the_same_model(name):
    cfg = from_dict({"model": {**MODEL, "epochs": 2, "history_length": 3}})
    ts = _featured_trainset(["comedy", "war"], ["drama"], [f"u{i}" for i in range(300)], [f"i{i}" for i in range(50)])
    fits = [create(name, cfg.model) for _ in range(2)]
    for m in fits:
        m.fit(ts, (20,), progress=lambda *_: None)
    np.testing.assert_array_equal(fits[0].item_embeddings, fits[1].item_embeddings)
    other = create(name, from_dict({"model": {**MODEL, "epochs": 2, "history_length": 3, "seed": 7}}).model)
    other.fit(ts, (20,), progress=lambda *_: None)
    assert not np.array_equal(other.item_embeddings, fits[0].item_embeddings)


@pytest.mark.parametrize("curve, epochs, best, dropped", [
    # still rising at epoch 2 -> trained on; falls at 3 -> stop and refit the best 2 after all
    ([0.1, 0.2, 0.15, 0.14, 0.13, 0.12], 3, 2, ""),
    # rising every epoch -> trained on until the budget ends, no refit, and the manifest says why
    ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], 6, 6, "still rising at epoch 2"),
])
def test_the_fit_trades_the_refit_for_epochs_only_while_validation_rises(monkeypatch, curve, epochs, best, dropped):
    """A fit under a 600 s budget whose epochs take 100 s (a fake clock) and whose refit epochs take
    1.2x: a refit of the epochs so far stops fitting after epoch 2."""
    from recsys.models import training
    real = training.after_epoch
    monkeypatch.setattr(training, "after_epoch", lambda elapsed, epoch, *a, **k: real(100.0 * epoch, epoch, *a, **k))
    cfg = from_dict({"model": {**MODEL, "epochs": 20, "patience": 3, "history_length": 3}})
    ts = _featured_trainset(["comedy", "war"], ["drama"], [f"u{i}" for i in range(300)], [f"i{i}" for i in range(50)])
    ts.evals["validation"] = trainset.EvalSet(ts.user_ids[:5], np.arange(5), *[trainset.csr_from_pairs(
        np.arange(5), np.arange(5), 5, ts.n_items)] * 2, np.full((5, 1), -1, np.int32))
    scores = iter(curve)
    lines = []
    report = create("mf", cfg.model).fit(ts, (20,), progress=lines.append, max_seconds=600, refit_ratio=1.2,
                                         validate=lambda *a: {"recall@20": next(scores)})
    assert len(report.epochs) == epochs and report.best_epoch == best
    assert (dropped in report.refit_dropped) if dropped else report.refit_dropped == ""
    assert any("trained on without a refit" in line for line in lines)
    assert any("refitting after all" in line for line in lines) == (not dropped)


def test_the_training_input_shows_every_row_at_most_once_an_epoch_in_a_new_order_each_epoch():
    """What the step is fed (`epoch_orders` + `batches`, as `fit` calls them): full batches of distinct
    rows, each with its own columns; all but fewer than a batch of the rows every epoch (the one compiled
    shape drops the remainder, a different one each epoch); a new order each epoch; the same sequence for
    the same seed, another for another."""
    from types import SimpleNamespace
    from recsys.models.training import batches, epoch_orders
    n, bs = 1000, 64
    rng = np.random.default_rng(3)
    ts = SimpleNamespace(user_idx=rng.integers(0, 50, n), item_idx=np.arange(n), weight=rng.random(n).astype(np.float32),
                         history=rng.integers(-1, 50, (n, 4)).astype(np.int32))

    def epochs(seed, count=4):
        orders = epoch_orders(n, seed)
        return [list(batches(ts, next(orders), bs, uses_history=True)) for _ in range(count)]

    seen_any = set()
    runs = epochs(0)
    for epoch in runs:
        rows = np.concatenate([b["item_idx"] for b in epoch])       # item_idx is the row number here
        assert all(len(b["item_idx"]) == bs for b in epoch)
        assert len(rows) == n - n % bs and len(set(rows.tolist())) == len(rows)
        for b in epoch:
            r = b["item_idx"]
            assert (b["user_idx"] == ts.user_idx[r]).all() and (b["weight"] == ts.weight[r]).all()
            assert (b["history"] == ts.history[r]).all()
        seen_any |= set(rows.tolist())
    assert seen_any == set(range(n))                                # the dropped rows change
    orders = [np.concatenate([b["item_idx"] for b in e]) for e in runs]
    assert all(not np.array_equal(orders[0], o) for o in orders[1:])
    again = [np.concatenate([b["item_idx"] for b in e]) for e in epochs(0)]
    assert all(np.array_equal(a, b) for a, b in zip(orders, again))
    assert not np.array_equal(orders[0], np.concatenate([b["item_idx"] for b in epochs(1, 1)[0]]))
