"""Training: one loop for two_tower and mf (custom tf.function step), early stopping on validation.

Speed notes (benchmarks/train_throughput.py): the step is a single compiled function over large
batches; embeddings are looked up with `tf.gather`, so their gradients are `IndexedSlices` and Adam
updates only the touched rows' moments. Batches are sliced from in-memory index arrays (4 bytes per
column per interaction), which keeps the input side off the critical path.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from recsys.evaluation import metrics
from recsys.config import ModelConfig
from recsys.models.popularity import Popularity, fit_popularity
from recsys.models.optim import LazyAdam
from recsys.models.loss import RetrievalModel, build_towers
from recsys.data.trainset import EvalSet, TrainSet


@dataclass
class Trained:
    model_name: str
    query_tower: object
    candidate_tower: object
    item_embeddings: np.ndarray
    popularity: Popularity
    history: list = field(default_factory=list)
    train_seconds: float = 0.0
    examples_per_second: float = 0.0
    best_epoch: int = 0
    warm_started: dict = field(default_factory=dict)
    row_names: dict = field(default_factory=dict)   # token-keyed table kind -> row strings (train._row_names)

    def query_embeddings(self, user_idx: np.ndarray, history: np.ndarray, batch: int = 8192) -> np.ndarray:
        out = []
        for s in range(0, len(user_idx), batch):
            out.append(self.query_tower({"user_idx": tf.constant(user_idx[s:s + batch], tf.int32),
                                         "history": tf.constant(history[s:s + batch], tf.int32)}).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.item_embeddings.shape[1]), np.float32)


def item_embeddings(candidate_tower, n_items: int, batch: int = 65536) -> np.ndarray:
    idx = np.arange(n_items, dtype=np.int32)
    return np.concatenate([candidate_tower(tf.constant(idx[s:s + batch])).numpy()
                           for s in range(0, n_items, batch)]).astype(np.float32)


def eval_scorer(query_emb: np.ndarray, item_emb: np.ndarray, fallback: np.ndarray, personalized: np.ndarray):
    """Score rows: dot product for personalized rows, the fallback (popularity) row for the others."""
    def score(rows):
        s = query_emb[rows] @ item_emb.T
        s[~personalized[rows]] = fallback
        return s
    return score


def evaluate_trained(tr: Trained, ev: EvalSet, ks, item_counts: np.ndarray) -> metrics.Evaluation:
    """Full-catalog evaluation of in-memory towers on an EvalSet (same rules as `recsys evaluate`)."""
    q = tr.query_embeddings(ev.user_idx, ev.history)
    if tr.model_name == "mf":
        personalized = ev.user_idx >= 0
    else:
        personalized = (ev.user_idx >= 0) | (ev.history >= 0).any(1)
    return metrics.evaluate(eval_scorer(q, tr.item_embeddings, tr.popularity.scores.astype(np.float32), personalized),
                            np.arange(len(ev.user_ids)), ev.relevant, ev.exclude, ks, item_counts)


# Layers saved in weights.npz and warm-started. Rows of ID tables carry over by ID string, rows of
# feature tables by token (genre, title token, user feature), the year buckets and anything else only
# when the shape is unchanged.
_LAYERS = ("user_embedding", "history_embedding", "item_embedding", "genre_embedding", "token_embedding",
           "year_embedding", "user_feature_embedding")
_ROWS_BY = {"user_embedding": "user", "history_embedding": "item", "item_embedding": "item",
            "genre_embedding": "genre", "token_embedding": "token", "user_feature_embedding": "user_feature"}


def _named_layers(query_tower, candidate_tower):
    """(stable name, layer) for every weight-carrying layer of both towers."""
    for side, tower in (("query", query_tower), ("candidate", candidate_tower)):
        for attr in _LAYERS:
            if hasattr(tower, attr):
                yield f"{side}.{attr}", attr, getattr(tower, attr)


def _row_names(ts: TrainSet) -> dict:
    """Kind -> the string each table row (after the pad row 0) stands for, for the token-keyed tables."""
    out = {"user": ts.user_ids, "item": ts.item_ids}
    if ts.item_features is not None and ts.item_features.genre_names is not None:
        out["genre"], out["token"] = ts.item_features.genre_names, ts.item_features.token_names
    if ts.user_features is not None:
        out["user_feature"] = ts.user_features.names
    return out


def _warm_start(model: RetrievalModel, ts: TrainSet, previous) -> dict:
    """Copy rows of carried-over IDs and feature tokens from a previous version's weights."""
    if previous is None:
        return {}
    prev_users, prev_items, weights = previous
    names = _row_names(ts)
    copied = {}
    for name, attr, layer in _named_layers(model.query_tower, model.candidate_tower):
        if name not in weights:
            continue
        old = weights[name]
        value = layer.get_weights()[0]
        kind = _ROWS_BY.get(attr)
        if kind is None:
            if old.shape == value.shape:
                layer.set_weights([old])
            continue
        old_names = {"user": prev_users, "item": prev_items}.get(kind, weights.get(f"{name}:names"))
        if old_names is None or kind not in names or old.shape[1] != value.shape[1]:
            continue  # no names to match rows by, or the dimension changed: nothing carries over
        new_rows, old_rows = _row_map(names[kind], old_names)
        value[0] = old[0]  # out-of-vocabulary / padding row
        value[new_rows + 1] = old[old_rows + 1]
        layer.set_weights([value])
        copied[name] = int(len(new_rows))
    return copied


def _subsample(ev: EvalSet, n: int, seed: int) -> EvalSet:
    """A fixed random subset of an EvalSet's users (cheap per-epoch early-stopping checks)."""
    rows = np.sort(np.random.default_rng(seed).choice(len(ev.user_ids), n, replace=False))
    return EvalSet(ev.user_ids[rows], ev.user_idx[rows], ev.relevant[rows], ev.exclude[rows], ev.history[rows])


def _row_map(new_ids: np.ndarray, old_ids: np.ndarray):
    import pandas as pd
    pos = pd.Index(old_ids).get_indexer(pd.Index(new_ids))
    keep = pos >= 0
    return np.flatnonzero(keep), pos[keep]


def fit(ts: TrainSet, model_name: str, mc: ModelConfig, ks=(10, 20, 50), previous=None, progress=print,
        max_seconds: float | None = None, stop_after: int | None = None) -> Trained:
    """Train `two_tower` or `mf` on `ts`; early-stops on validation recall@eval_k when there is one.

    `previous`: (user ids, item ids, {variable name: array}) of a previous version to warm-start from.
    `stop_after`: run exactly this many of the `mc.epochs` epochs and keep the last weights (the refit:
    no early stopping, and a cosine schedule follows the same path as in the fit that chose the count).
    """
    tf.keras.utils.set_random_seed(mc.seed)
    pop = fit_popularity(ts, mc.popularity_window_days)
    qt, ct = build_towers(model_name, ts.n_users, ts.n_items, mc.dim, mc.normalize, ts.item_features,
                          mc.use_item_features, mc.history_items,
                          ts.user_features if mc.use_user_features else None)
    model = RetrievalModel(qt, ct, ts.item_counts, mc.temperature, mc.logq_correction,
                           mc.remove_accidental_hits, mc.extra_negatives)
    L = ts.history.shape[1]
    dummy = {"user_idx": tf.zeros([2], tf.int32), "item_idx": tf.zeros([2], tf.int32),
             "history": tf.fill([2, L], -1), "weight": tf.ones([2])}
    model.compute_loss(dummy)  # build variables
    warm = _warm_start(model, ts, previous)
    variables = model.trainable_variables
    n = len(ts.user_idx)
    bs = min(mc.batch_size, n)
    steps_per_epoch = n // max(1, bs)   # full batches only (see the epoch loop)
    opt = LazyAdam(variables, mc.learning_rate,
                   decay_steps=steps_per_epoch * mc.epochs if mc.lr_schedule == "cosine" else 0)

    spec = {"user_idx": tf.TensorSpec([None], tf.int32), "item_idx": tf.TensorSpec([None], tf.int32),
            "weight": tf.TensorSpec([None], tf.float32), "history": tf.TensorSpec([None, None], tf.int32)}

    @tf.function(input_signature=[spec])
    def step(batch):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(batch, training=True)
        opt.apply_gradients(tape.gradient(loss, variables))
        return loss

    step.get_concrete_function()  # trace once up front: examples/s measures training, not tracing
    rng = np.random.default_rng(mc.seed)
    val = ts.evals.get("validation")
    if val is not None and len(val.user_ids) > mc.eval_users:
        val = _subsample(val, mc.eval_users, mc.seed)
    key = f"recall@{mc.eval_k}"
    ks = sorted(set(ks) | {mc.eval_k})
    best, best_epoch, best_weights, bad_epochs = -np.inf, 0, None, 0
    tr = Trained(model_name, qt, ct, None, pop, row_names=_row_names(ts))
    t_start, t_train = time.time(), 0.0
    use_history = model_name == "two_tower"
    last_epoch = min(mc.epochs, stop_after) if stop_after else mc.epochs
    for epoch in range(1, last_epoch + 1):
        t0 = time.time()
        perm = rng.permutation(n)
        losses = []
        for s in range(0, n - bs + 1, bs):   # full batches only: one compiled shape
            idx = perm[s:s + bs]
            batch = {"user_idx": ts.user_idx[idx].astype(np.int32), "item_idx": ts.item_idx[idx].astype(np.int32),
                     "weight": ts.weight[idx]}
            batch["history"] = ts.history[idx] if use_history else np.full((bs, 1), -1, np.int32)
            losses.append(step(batch))
        loss = float(np.mean([float(x) for x in losses])) if losses else float("nan")
        dt = time.time() - t0
        t_train += dt
        tr.item_embeddings = item_embeddings(ct, ts.n_items)
        line = {"epoch": epoch, "loss": loss, "examples_per_second": steps_per_epoch * bs / dt, "seconds": dt}
        if val is not None:
            m = evaluate_trained(tr, val, ks, ts.item_counts).summary()
            line.update({f"val_{k}": v for k, v in m.items() if "@" in k and k.split("@")[0] in ("recall", "ndcg")})
            score = m[key]
        else:
            score = -loss
        tr.history.append(line)
        progress(f"epoch {epoch:3d}  loss {loss:.4f}  "
                 + "  ".join(f"{k} {v:.4f}" for k, v in line.items() if k.startswith("val_") and f"@{mc.eval_k}" in k)
                 + f"  {line['examples_per_second']:,.0f} ex/s  elapsed {time.time() - t_start:.0f}s")
        if stop_after:
            best_epoch = epoch
        elif score > best:
            best, best_epoch, bad_epochs = score, epoch, 0
            best_weights = [v.numpy() for v in model.variables]
        else:
            bad_epochs += 1
            if bad_epochs >= mc.patience:
                progress(f"early stop: no {key if val is not None else 'loss'} gain for {mc.patience} epochs; "
                         f"best epoch {best_epoch}")
                break
        if max_seconds and time.time() - t_start > max_seconds:
            progress(f"time budget of {max_seconds:.0f}s reached")
            break
    if best_weights is not None:
        for v, w in zip(model.variables, best_weights):
            v.assign(w)
    tr.item_embeddings = item_embeddings(ct, ts.n_items)
    tr.best_epoch, tr.train_seconds, tr.warm_started = best_epoch, time.time() - t_start, warm
    tr.examples_per_second = sum(h["examples_per_second"] * h["seconds"] for h in tr.history) / max(t_train, 1e-9)
    return tr


def tower_weights(tr: Trained) -> dict:
    """{stable layer name: array} of both towers, plus '<name>:names' (the token of each row) for the
    feature tables: what a later version warm-starts from."""
    out = {name: layer.get_weights()[0] for name, _, layer in _named_layers(tr.query_tower, tr.candidate_tower)}
    for name, attr, _ in _named_layers(tr.query_tower, tr.candidate_tower):
        kind = _ROWS_BY.get(attr)
        if kind not in (None, "user", "item") and kind in tr.row_names:
            out[f"{name}:names"] = np.asarray(tr.row_names[kind], dtype=str)
    return out
