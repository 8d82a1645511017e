"""Adam with sparse (lazy) updates for embedding tables.

Keras' Adam updates the first and second moments of every row of an embedding table each step, even
though a batch touches a few thousand rows of tens of thousands: on 2 cores that dense update cost as
much as the forward and backward pass together (benchmarks/train_throughput.py). Here rows a batch does
not touch keep their moments and values (the "lazy Adam" of TF-Addons); dense variables get plain Adam.
"""
from __future__ import annotations

import tensorflow as tf


def _slot(var):
    """A zero moment variable beside `var`: on the same device, and under ParameterServerStrategy on
    the same parameter server as that shard of a table (so a shard's rows and moments share indices)."""
    with tf.distribute.get_strategy().extended.colocate_vars_with(var):
        return tf.Variable(tf.zeros_like(var), trainable=False)


class LazyAdam:
    """Adam that applies `tf.IndexedSlices` gradients to the touched rows only."""

    def __init__(self, variables, learning_rate: float = 0.01, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-7, decay_steps: int = 0):
        """`decay_steps` > 0: cosine decay of the learning rate to 0 over that many steps."""
        self.variables = list(variables)
        self.lr, self.b1, self.b2, self.eps = learning_rate, beta_1, beta_2, epsilon
        self.decay_steps = float(decay_steps)
        self.step = tf.Variable(0.0, trainable=False, name="adam_step")
        self.m = [_slot(v) for v in self.variables]
        self.v = [_slot(v) for v in self.variables]

    def _learning_rate(self):
        self.step.assign_add(1.0)
        t = self.step
        lr = self.lr * tf.sqrt(1.0 - self.b2 ** t) / (1.0 - self.b1 ** t)
        if self.decay_steps:
            lr = lr * 0.5 * (1.0 + tf.cos(3.141592653589793 * tf.minimum((t - 1.0) / self.decay_steps, 1.0)))
        return lr

    def apply_gradients(self, grads) -> None:
        """One update of every variable (one process)."""
        lr = self._learning_rate()
        for var, m, v, g in zip(self.variables, self.m, self.v, grads):
            if g is not None:
                self._apply(var, m, v, g, lr)

    def apply_distributed(self, strategy, grads) -> None:
        """One update of every replica's copy from the same all-reduced gradients (cross-replica
        context: call it from `merge_call`); see recsys/models/distribute.py."""
        lr = self._learning_rate()
        for var, m, v, g in zip(self.variables, self.m, self.v, grads):
            if g is not None:
                strategy.extended.update(var, self._apply, args=(m, v, g, lr), group=False)

    def _apply(self, var, m, v, g, lr) -> None:
        if isinstance(g, tf.IndexedSlices):
            idx, pos = tf.unique(g.indices)
            gs = tf.math.unsorted_segment_sum(g.values, pos, tf.shape(idx)[0])
            m_rows = self.b1 * tf.gather(m, idx) + (1.0 - self.b1) * gs
            v_rows = self.b2 * tf.gather(v, idx) + (1.0 - self.b2) * tf.square(gs)
            m.scatter_update(tf.IndexedSlices(m_rows, idx))
            v.scatter_update(tf.IndexedSlices(v_rows, idx))
            var.scatter_sub(tf.IndexedSlices(lr * m_rows / (tf.sqrt(v_rows) + self.eps), idx))
        else:
            m.assign(self.b1 * m + (1.0 - self.b1) * g)
            v.assign(self.b2 * v + (1.0 - self.b2) * tf.square(g))
            var.assign_sub(lr * m / (tf.sqrt(v) + self.eps))
