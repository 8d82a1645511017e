"""The retrieval loss both embedding models train with, fused into one pass over the score matrix.

Two forms, over a query's positive and a set of negatives (scores are dot products / temperature,
minus each candidate's log sampling probability where logQ applies; accidental hits dropped):

- `softmax` (TFRS `Retrieval`): logsumexp({positive} ∪ negatives) - positive.
- `bsl` (Wu et al., "BSL: Understanding and Improving Softmax Loss for Recommendation", ICDE 2024;
  the authors' `Pos_DROLoss`): τ2 · logsumexp(negatives) - positive, the positive left out of the
  normalizer. τ2 = `negative_weight` > 1 weighs the negatives' term more; on Gowalla it is what lifts
  the head of the ranking (their logs: ndcg@20 0.135 with τ2 = 1 vs 0.154 with 1.22 after 36 epochs).

Negatives (`RetrievalModel.negatives`): the batch's other positives with logQ (`in_batch`), items drawn
uniformly and shared by the batch (by each replica's share under tf.distribute), without logQ
(`uniform`), or both (`mixed`). Uniform-only needs no correction: log(M/N) is the same for every
negative and cancels. In `mixed` the uniform part also gets none, by design (BSL's recipe): each uniform
draw then counts once while an in-batch candidate counts 1/(B·p(i)); the sampled-softmax correction for
the mixture would add log(N/M) to the uniform logits (measured only without it, docs/RESULTS.md).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs


class InBatchSoftmaxLoss(tf.keras.losses.Loss):
    """Softmax cross-entropy for TFRS Retrieval's identity labels: logsumexp(row) - logit(row, row).

    Retrieval passes `labels = eye(num_queries, num_candidates)`: the positive of query r is column r.
    Written this way it skips the dense label matrix, and on 2 CPU cores its forward + backward ran
    about 1.7x faster than TensorFlow's fused sparse or dense softmax cross-entropy kernels at
    2048 x 2048 (benchmarks/train_throughput.py).
    """

    def __init__(self):
        super().__init__(reduction=tf.keras.losses.Reduction.SUM_OVER_BATCH_SIZE, name="in_batch_softmax")

    def call(self, y_true, y_pred):
        return tf.reduce_logsumexp(y_pred, axis=1) - tf.linalg.diag_part(y_pred)


_MIN_FLOAT = float(np.finfo(np.float32).min / 100.0)   # TFRS's value for masked logits
LOSSES = ("softmax", "bsl")
NEGATIVES = ("in_batch", "uniform", "mixed")


def fused_retrieval_loss(query, positives, negatives, pos_log_q, neg_log_q, masked, temperature: float,
                         negative_weight: float | None = None, margin: float = 0.0):
    """Per-query retrieval loss, value and gradients in one pass over the B x N score matrix.

    Args:
        query: [B, d] query vectors.
        positives: [B, d] each query's positive candidate.
        negatives: [N, d] candidates every query scores as negatives.
        pos_log_q: [B] log sampling probability subtracted from each positive's logit (zeros: none).
        neg_log_q: [N] the same for the negatives.
        masked: [B, N] bool, True where a negative must not count for a query (accidental hits).
        temperature: scores are dot products / temperature.
        negative_weight: None for the softmax form; τ2 for the BSL form (see the module docstring).
        margin: subtracted from each positive's score before the temperature (an additive margin, as
            in AM-softmax: the positive must beat the negatives by this much in cosine).
    Returns:
        [B] per-query losses.

    Same value and gradients as the TFRS task with `InBatchSoftmaxLoss` in the softmax form
    (tests/recsys/models/test_models.py), in fewer passes: the positive logit is a row-wise dot product,
    the logQ and accidental-hit corrections are one select, and the backward pass reuses the forward's
    exponentials instead of recomputing a softmax.
    """
    qs = query / temperature
    lq_pos, lq_neg = tf.stop_gradient(pos_log_q), tf.stop_gradient(neg_log_q)
    bsl = negative_weight is not None

    @tf.custom_gradient
    def loss_fn(qs, p, n):
        s = tf.where(masked, _MIN_FLOAT, tf.matmul(qs, n, transpose_b=True) - lq_neg)
        pos = tf.reduce_sum(qs * p, axis=1) - lq_pos - margin / temperature
        if bsl:
            # a row whose negatives are all masked has no negative term: its max is the mask value (no
            # real score comes near it); masked entries then give exp(mask - m) = 0 with m = 0, so no
            # extra pass over the B x N matrix is needed (one cost 9% of the step)
            row_max = tf.reduce_max(s, axis=1)
            has = row_max > _MIN_FLOAT / 2
            m = tf.where(has, row_max, 0.0)
            e = tf.exp(s - tf.expand_dims(m, 1))
            z = tf.reduce_sum(e, axis=1)
            loss = negative_weight * tf.where(has, m + tf.math.log(tf.maximum(z, 1e-30)), 0.0) - pos
        else:
            m = tf.maximum(tf.reduce_max(s, axis=1), pos)
            e = tf.exp(s - tf.expand_dims(m, 1))
            e_pos = tf.exp(pos - m)
            z = tf.reduce_sum(e, axis=1) + e_pos
            loss = m + tf.math.log(z) - pos

        def grad(dy):
            if bsl:
                w = tf.where(has, negative_weight * dy / tf.maximum(z, 1e-30), 0.0)
                g_pos = -dy                                   # d loss / d pos
            else:
                w = dy / z
                g_pos = e_pos * w - dy
            g = e * tf.expand_dims(w, 1)                      # d loss / d s, already scaled by dy
            g_pos = tf.expand_dims(g_pos, 1)
            return (tf.matmul(g, n) + g_pos * p, g_pos * qs, tf.matmul(g, qs, transpose_a=True))
        return loss, grad

    return loss_fn(qs, positives, negatives)


class RetrievalModel(tfrs.Model):
    """Query tower x candidate tower, scored by dot product / temperature.

    Loss: `softmax` (TFRS `Retrieval`) or `bsl` over the batch's other positives (popularity-corrected
    by logQ through `candidate_sampling_probability`) and/or `uniform_negatives` items drawn uniformly
    and shared across the batch (no correction; see the module docstring), with accidental-hit removal
    (which also masks a uniform draw equal to the positive).
    """

    def __init__(self, query_tower, candidate_tower, item_counts: np.ndarray, temperature: float = 0.1,
                 logq: bool = True, remove_accidental_hits: bool = True, uniform_negatives: int = 0,
                 fused: bool = True, loss: str = "softmax", negative_weight: float = 1.0,
                 negatives: str = "in_batch", margin: float = 0.0):
        super().__init__()
        if loss not in LOSSES or negatives not in NEGATIVES:
            raise ValueError(f"loss must be one of {LOSSES} and negatives one of {NEGATIVES}")
        if negatives != "in_batch" and uniform_negatives < 1:
            raise ValueError(f"negatives={negatives} needs uniform_negatives >= 1")
        if not fused and (loss != "softmax" or negatives == "uniform" or margin):
            raise ValueError("the TFRS task path computes the in-batch softmax only")
        self.fused, self.temperature, self.remove_accidental_hits = fused, temperature, remove_accidental_hits
        self.query_tower, self.candidate_tower = query_tower, candidate_tower
        self.n_items = len(item_counts)
        self.negatives = negatives
        self.uniform_negatives = uniform_negatives if negatives != "in_batch" else 0
        self.negative_weight = negative_weight if loss == "bsl" else None
        self.logq, self.margin = logq, margin
        p = item_counts.astype(np.float64) + 1.0
        self.item_prob = tf.constant((p / p.sum()).astype(np.float32))
        self.gather_candidates = True   # under tf.distribute (recsys/models/distribute.py)
        self.task = tfrs.tasks.Retrieval(
            loss=InBatchSoftmaxLoss(), temperature=temperature, remove_accidental_hits=remove_accidental_hits)

    def compute_loss(self, features, training=False):
        q = self.query_tower(features)
        ids = tf.cast(features["item_idx"], tf.int32)
        batch = tf.cast(tf.shape(ids)[0], tf.float32)
        # Expected occurrences of each in-batch candidate among the negatives: B * p(i)
        prob = tf.gather(self.item_prob, ids) * batch
        pos_ids = ids
        pos_c = c = self.candidate_tower(ids)
        if (self.gather_candidates and self.negatives != "uniform" and tf.distribute.has_strategy()
                and not tf.distribute.in_cross_replica_context()):
            # under tf.distribute: every replica's positives are every query's negatives (the global batch)
            from recsys.models.distribute import gather_candidates
            c, ids, prob = gather_candidates(c, ids, prob)
        if self.uniform_negatives:
            neg = tf.random.uniform([self.uniform_negatives], 0, self.n_items, dtype=tf.int32)
            uniform_c = self.candidate_tower(neg)
            ones = tf.ones([self.uniform_negatives])   # probability 1: log q = 0, no correction
            if self.negatives == "uniform":
                c, ids, prob = uniform_c, neg, ones
            else:
                c, ids, prob = tf.concat([c, uniform_c], 0), tf.concat([ids, neg], 0), tf.concat([prob, ones], 0)
        if not self.fused:
            return self.task(q, c, candidate_sampling_probability=prob if self.logq else None,
                             candidate_ids=ids, sample_weight=features.get("weight"), compute_metrics=False)
        in_batch = self.negatives != "uniform"
        # TFRS SamplingProbablityCorrection clips the same way
        log_q = tf.math.log(tf.clip_by_value(prob, 1e-6, 1.0)) if self.logq else tf.zeros_like(prob)
        b = tf.shape(q)[0]
        # uniform only: the positive's correction is a constant per query (no gradient); none is applied
        pos_log_q = log_q[:b] if in_batch else tf.zeros([b])
        n = tf.shape(ids)[0]
        if self.remove_accidental_hits:
            masked = tf.equal(tf.expand_dims(pos_ids, 1), tf.expand_dims(ids, 0))   # includes the positive itself
        elif in_batch:   # the positive's own column (query r's is column r) is never its negative
            masked = tf.expand_dims(tf.range(b), 1) == tf.expand_dims(tf.range(n), 0)
        else:
            masked = tf.zeros([b, n], tf.bool)
        per_query = fused_retrieval_loss(q, pos_c, c, pos_log_q, log_q, masked, self.temperature,
                                         self.negative_weight, self.margin)
        w = features.get("weight")
        if w is not None:
            per_query = per_query * tf.cast(w, per_query.dtype)
        return tf.reduce_sum(per_query) / batch   # the task's SUM_OVER_BATCH_SIZE reduction
