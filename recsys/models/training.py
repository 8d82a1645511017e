"""The training loop of the embedding models (two_tower, mf): one compiled step, early stopping.

Speed notes (benchmarks/train_throughput.py): the step is a single compiled function over large
batches; embeddings are looked up with `tf.gather`, so their gradients are `IndexedSlices` and Adam
updates only the touched rows' moments. Batches are sliced from in-memory index arrays (4 bytes per
column per interaction), which keeps the input side off the critical path.

Validation during training is a function the caller passes (`recsys.jobs` passes the offline
scorer's, the one `recsys evaluate` uses), so the epoch early stopping picks is chosen by the rule that
is reported and training never imports evaluation.
"""
from __future__ import annotations

import contextlib
import time

import numpy as np
import tensorflow as tf

from recsys.data.trainset import TrainSet
from recsys.models import distribute
from recsys.models.base import FitReport, WarmStart
from recsys.models.loss import RetrievalModel
from recsys.models.optim import LazyAdam
from recsys.models.popularity import fit_popularity
from recsys.models.warm_start import row_names, warm_start
from recsys.progress import Progress


def item_embeddings(candidate_tower, n_items: int, batch: int = 65536) -> np.ndarray:
    """The candidate tower's output for every item index, [n_items, d] float32."""
    idx = np.arange(n_items, dtype=np.int32)
    return np.concatenate([candidate_tower(tf.constant(idx[s:s + batch])).numpy()
                           for s in range(0, n_items, batch)]).astype(np.float32)


def tower_outputs(query_tower, user_idx: np.ndarray, history: np.ndarray, dim: int, batch: int = 8192) -> np.ndarray:
    """The query tower's output for rows of (user index, history), in batches."""
    out = [query_tower({"user_idx": tf.constant(user_idx[s:s + batch], tf.int32),
                        "history": tf.constant(history[s:s + batch], tf.int32)}).numpy()
           for s in range(0, len(user_idx), batch)]
    return np.concatenate(out) if out else np.zeros((0, dim), np.float32)


def batches(ts: TrainSet, perm: np.ndarray, bs: int, uses_history: bool):
    """An epoch's full batches (one compiled shape) in `perm` order, as the step takes them: index
    columns, weights and, for models that read it, each row's preceding items."""
    no_history = np.full((bs, 1), -1, np.int32)
    for s in range(0, len(perm) - bs + 1, bs):
        idx = perm[s:s + bs]
        yield {"user_idx": ts.user_idx[idx].astype(np.int32), "item_idx": ts.item_idx[idx].astype(np.int32),
               "weight": ts.weight[idx], "history": ts.history[idx] if uses_history else no_history}


def epoch_orders(n: int, seed: int):
    """The order of the `n` training rows in each epoch: a new permutation per epoch, the same
    sequence for the same seed (so a fit is reproducible and every epoch sees the rows differently)."""
    rng = np.random.default_rng(seed)
    while True:
        yield rng.permutation(n)


def auto_batch_size(n_examples: int, min_steps: int = 256, low: int = 256, high: int = 512) -> int:
    """`model.batch_size: 0`: the largest power of two that still gives `min_steps` steps an epoch,
    within [low, high]: 256 below ~131k training rows, 512 above.

    Chosen on validation recall@20 of the generated shop log (benchmarks/shop_future.py, docs/RESULTS.md):
    at 133k training rows 2048 trained 65 steps an epoch and early stopping ended it before the models
    learned what a popularity rule already knows (two_tower 0.239; 128-512: 0.25-0.266); at 1.5M rows,
    without a time budget, 2048 / 1024 / 512 / 256 gave two_tower 0.149 / 0.164 / 0.167 / 0.163 and mf
    0.146 / 0.159 / 0.166 / 0.163. Larger batches are faster per example, but not better here; Gowalla's
    recipe (benchmarks/gowalla.yaml) sets 1024 itself.
    """
    fit = max(1, n_examples // min_steps)
    return int(min(high, max(low, 1 << (fit.bit_length() - 1))))


def after_epoch(elapsed: float, epoch: int, best_epoch: int, max_seconds: float | None,
                refit_ratio: float | None = None, last: bool = False) -> tuple[bool, bool]:
    """What the time budget says once `epoch` has ended `elapsed` seconds into a fit: (train another
    epoch, refit afterwards).

    The next epoch is estimated to take the mean so far. Without `refit_ratio` an epoch is trained if
    it ends within `max_seconds`. With it (a refit epoch's time over a selection epoch's: the refit's
    rows over these), the budget also keeps back what a refit of the epochs so far would take. When
    that no longer fits but another epoch does and this epoch is the best so far, the model is short of
    epochs rather than done, so the refit's share trains it further instead (measured at 10M events,
    docs/RESULTS.md: mf's validation recall still rose 16% an epoch at its 6th when the refit took half
    the budget; the refit itself adds about 2% on the future). The trade is asked again after every
    epoch: once validation stops rising, the answer is to stop and refit the best epochs if that still
    fits. When it does not, there is no refit. `last`: no epoch follows (`model.epochs` reached, or
    early stopping), so only the refit is in question.
    """
    if not max_seconds:
        return not last, refit_ratio is not None
    per_epoch = elapsed / max(epoch, 1)
    fits = elapsed + per_epoch <= max_seconds and not last
    if refit_ratio is None:
        return fits, False
    if fits and elapsed + per_epoch + (epoch + 1) * per_epoch * refit_ratio <= max_seconds:
        return True, True
    if fits and best_epoch == epoch:
        return True, False
    return False, elapsed + best_epoch * per_epoch * refit_ratio <= max_seconds


def fit(model, ts: TrainSet, ks=(10, 20, 50), previous: WarmStart | None = None, progress=print,
        max_seconds: float | None = None, stop_after: int | None = None, validate=None,
        refit_ratio: float | None = None) -> FitReport:
    """Train an embedding model (`model.build_towers`) on `ts`; early-stops on validation recall@eval_k.

    Args:
        model: a `recsys.models.embedding.EmbeddingModel`; its towers, item embeddings, popularity and
            report are set here.
        ts: the TrainSet; its "validation" EvalSet, if any, drives early stopping.
        ks: cutoffs of the per-epoch validation metrics (plus `model.eval_k`).
        previous: a previous version's weights to warm-start from.
        progress: receives one line per epoch.
        max_seconds: stop before an epoch that would end past this many seconds (estimated from the
            epochs so far).
        stop_after: run exactly this many of the `model.epochs` epochs and keep the last weights
            (the refit: no early stopping, and a cosine schedule follows the same path as in the fit
            that chose the count).
        validate: `validate(model, eval_set, ks, item_counts) -> {metric: mean}` scores an epoch on
            the validation EvalSet (the caller passes the offline scorer's, so the epoch kept is
            chosen by the rule that is reported); None: the training loss decides.
        refit_ratio: the caller refits on train + validation after this fit, a refit epoch taking
            this many times a training epoch here: `max_seconds` then covers both (`after_epoch`),
            and `FitReport.refit_dropped` says why when the refit's time went to more epochs here.
    Returns:
        The FitReport.
    """
    mc = model.config
    t_setup = time.time()
    tf.keras.utils.set_random_seed(mc.seed)
    model.popularity = fit_popularity(ts, mc.popularity_window_days)
    model.user_ids, model.item_ids = ts.user_ids, ts.item_ids
    model.user_embeddings = None
    strategy = distribute.make_strategy(mc.distribute)
    n = len(ts.user_idx)
    bs = min(mc.batch_size or auto_batch_size(n), n)
    replicas = strategy.num_replicas_in_sync if strategy and not distribute.is_parameter_server(strategy) else 1
    bs -= bs % replicas                 # every replica gets the same share of the global batch
    steps_per_epoch = n // max(1, bs)   # full batches only (see the epoch loop)
    with strategy.scope() if strategy else contextlib.nullcontext():
        qt, ct = model.build_towers(ts)
        model.query_tower, model.candidate_tower = qt, ct
        retrieval = RetrievalModel(qt, ct, ts.item_counts, mc.temperature, mc.logq_correction,
                                   mc.remove_accidental_hits, mc.uniform_negatives, loss=mc.loss,
                                   negative_weight=mc.negative_weight, negatives=mc.negatives,
                                   margin=mc.margin)
        retrieval.gather_candidates = mc.gather_candidates
        L = ts.history.shape[1]
        dummy = {"user_idx": tf.zeros([2], tf.int32), "item_idx": tf.zeros([2], tf.int32),
                 "history": tf.fill([2, L], -1), "weight": tf.ones([2])}
        retrieval.compute_loss(dummy)  # build variables
        model.row_names = row_names(ts)
        warm = warm_start(qt, ct, model.row_names, previous)
        variables = retrieval.trainable_variables
        opt = LazyAdam(variables, mc.learning_rate,
                       decay_steps=steps_per_epoch * mc.epochs if mc.lr_schedule == "cosine" else 0)

    spec = {"user_idx": tf.TensorSpec([None], tf.int32), "item_idx": tf.TensorSpec([None], tf.int32),
            "weight": tf.TensorSpec([None], tf.float32), "history": tf.TensorSpec([None, None], tf.int32)}

    def train_on(batch):
        """One update from one batch: the step of one process, and of a parameter-server worker."""
        with tf.GradientTape() as tape:
            loss = retrieval.compute_loss(batch, training=True)
        opt.apply_gradients(tape.gradient(loss, variables))
        return loss

    coordinator = None
    if distribute.is_parameter_server(strategy):
        # tables sharded over the parameter servers; a worker runs each step (with one worker, in
        # order: the same updates as one process); the optimizer's moments sit beside each shard
        coordinator = distribute.coordinator(strategy)

        @tf.function(input_signature=[spec])
        def worker_step(batch):
            return strategy.run(train_on, args=(batch,))

        def step(batch):
            return coordinator.schedule(worker_step, args=(batch,))
    elif strategy is None:
        step = tf.function(train_on, input_signature=[spec])
    else:
        @tf.function(input_signature=[spec])
        def step(batch):
            """Every worker holds the same global batch; each replica trains on its share, the
            all-reduced gradients update every copy alike (recsys/models/distribute.py)."""
            def replica_step():
                ctx = tf.distribute.get_replica_context()
                share = distribute.replica_slice(batch, ctx.replica_id_in_sync_group, ctx.num_replicas_in_sync)
                with tf.GradientTape() as tape:
                    loss = retrieval.compute_loss(share, training=True)
                grads = tape.gradient(loss, variables)
                grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                                       [distribute.scale(g, 1.0 / ctx.num_replicas_in_sync) for g in grads])
                ctx.merge_call(lambda s, *g: opt.apply_distributed(s, g), args=tuple(grads))
                return loss
            per_replica = strategy.run(replica_step)
            return strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)

    if coordinator is None:
        step.get_concrete_function()  # trace once up front: examples/s measures training, not tracing
    orders = epoch_orders(n, mc.seed)
    val = ts.evals.get("validation") if validate is not None else None
    if val is not None:
        val = val.at_most(mc.eval_users, mc.seed)
    key = f"recall@{mc.eval_k}"
    ks = sorted(set(ks) | {mc.eval_k})
    best, best_epoch, best_weights, bad_epochs = -np.inf, 0, None, 0
    report = FitReport()
    report.phases["setup"] = time.time() - t_setup
    t_start, t_train, t_val, t_emb = time.time(), 0.0, 0.0, 0.0
    last_epoch = min(mc.epochs, stop_after) if stop_after else mc.epochs
    trade = ""   # why the refit's time went to more epochs (while it holds)
    for epoch in range(1, last_epoch + 1):
        t0 = time.time()
        perm = next(orders)
        losses = []
        meter = Progress(f"epoch {epoch}", steps_per_epoch * bs, "examples", progress)
        for batch in batches(ts, perm, bs, model.uses_history):
            losses.append(step(batch))
            meter.advance(bs)
        if coordinator is not None:
            coordinator.join()
            losses = [x.fetch() for x in losses]
        loss = float(np.mean([float(x) for x in losses])) if losses else float("nan")
        dt = time.time() - t0
        t_train += dt
        t1 = time.time()
        model.item_embeddings = item_embeddings(ct, ts.n_items)
        t_emb += time.time() - t1
        line = {"epoch": epoch, "loss": loss, "examples_per_second": steps_per_epoch * bs / dt, "seconds": dt}
        if val is not None:
            t1 = time.time()
            m = validate(model, val, ks, ts.item_counts)
            t_val += time.time() - t1
            line.update({f"val_{k}": v for k, v in m.items() if "@" in k and k.split("@")[0] in ("recall", "ndcg")})
            score = m[key]
        else:
            score = -loss
        report.epochs.append(line)
        progress(f"epoch {epoch:3d}  loss {loss:.4f}  "
                 + "  ".join(f"{k} {v:.4f}" for k, v in line.items() if k.startswith("val_") and f"@{mc.eval_k}" in k)
                 + f"  {line['examples_per_second']:,.0f} ex/s  elapsed {time.time() - t_start:.0f}s")
        stopped_early = False
        if stop_after:
            best_epoch = epoch
        elif score > best:
            best, best_epoch, bad_epochs = score, epoch, 0
            best_weights = [v.numpy() for v in retrieval.variables]
        else:
            bad_epochs += 1
            if bad_epochs >= mc.patience:
                progress(f"early stop: no {key if val is not None else 'loss'} gain for {mc.patience} epochs; "
                         f"best epoch {best_epoch}")
                stopped_early = True
        # stop before an epoch that would end past the budget (the epochs' mean time, validation
        # included, is the estimate of the next one's), keeping back the refit's time (after_epoch)
        elapsed = time.time() - t_start
        go, keep_refit = after_epoch(elapsed, epoch, best_epoch, max_seconds, refit_ratio,
                                     last=epoch == last_epoch or stopped_early)
        traded = go and refit_ratio is not None and not keep_refit
        if strategy is not None and coordinator is None:
            # every worker must make the same choice (one that trained on alone would wait forever in
            # the next all-reduce): never trade the refit for epochs (workers could decide it
            # differently) but stop here and refit if it fits; stop when any worker's clock says so;
            # refit only if every worker's budget holds it
            if traded:
                go, keep_refit, traded = False, after_epoch(elapsed, epoch, best_epoch, max_seconds, refit_ratio,
                                                            last=True)[1], False
            go = not distribute.any_worker(strategy, not go)
            if refit_ratio is not None:
                keep_refit = not distribute.any_worker(strategy, not keep_refit)
        if refit_ratio is not None:
            if traded and not trade:
                trade = (f"validation {key} was still rising at epoch {epoch} (its best) and the budget "
                         f"({max_seconds:.0f}s) could not hold another epoch and a refit: trained on without a refit")
                progress(f"time budget: {trade}")
            elif keep_refit and trade:
                progress(f"time budget: validation stopped rising; a refit of the best {best_epoch} epochs fits: "
                         "refitting after all")
                trade = ""
            report.refit_dropped = "" if keep_refit else trade or (
                f"no time left in the budget ({max_seconds:.0f}s) for a refit of {best_epoch} epochs")
        if stopped_early:
            break
        if not go and epoch < last_epoch:
            if not max_seconds:
                why = "another worker's is spent"
            elif elapsed + elapsed / epoch > max_seconds:
                why = f"another epoch would end past {max_seconds:.0f}s"
            else:
                why = f"another epoch and a refit of it would not both fit in {max_seconds:.0f}s"
            progress(f"time budget: {why}; stopping after epoch {epoch}"
                     + (f", best epoch {best_epoch}" if not stop_after else ""))
            break
    if best_weights is not None:
        for v, w in zip(retrieval.variables, best_weights):
            v.assign(w)
    t1 = time.time()
    model.item_embeddings = item_embeddings(ct, ts.n_items)
    t_emb += time.time() - t1
    report.best_epoch, report.seconds, report.warm_started = best_epoch, time.time() - t_start, warm
    report.phases.update(epochs=t_train, validation=t_val, item_embeddings=t_emb)
    report.phases = {k: round(v, 2) for k, v in report.phases.items()}
    report.examples_per_second = sum(h["examples_per_second"] * h["seconds"] for h in report.epochs) / max(t_train, 1e-9)
    model.report = report
    return report
