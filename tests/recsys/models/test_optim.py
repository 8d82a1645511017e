import numpy as np
import tensorflow as tf

from recsys.models.optim import LazyAdam


def _run(decay_steps, steps):
    table = tf.Variable(np.ones((5, 3), np.float32))
    dense = tf.Variable(np.ones(3, np.float32))
    opt = LazyAdam([table, dense], 0.1, decay_steps=decay_steps)
    trace = []
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.gather(table, [1, 1, 3])) + tf.reduce_sum(dense ** 2)
        opt.apply_gradients(tape.gradient(loss, [table, dense]))
        trace.append((table.numpy().copy(), dense.numpy().copy()))
    return trace


def test_lazy_adam_updates_only_touched_rows():
    table, dense = _run(0, 3)[-1]
    assert np.all(table[[0, 2, 4]] == 1) and np.all(table[[1, 3]] < 1) and np.all(dense < 1)


def test_cosine_decay_reaches_zero_and_stops_updates():
    trace = _run(4, 6)
    constant = _run(0, 2)
    # the first step of a half cosine is the full rate; after decay_steps nothing moves any more
    np.testing.assert_allclose(trace[0][0], constant[0][0])
    step2_decayed = 1 - trace[1][0][1, 0] - (1 - trace[0][0][1, 0])
    step2_constant = 1 - constant[1][0][1, 0] - (1 - constant[0][0][1, 0])
    assert 0 < step2_decayed < step2_constant
    assert np.all(trace[3][1] < trace[2][1])      # the last decay step still moves
    np.testing.assert_array_equal(trace[3][0], trace[5][0])
    np.testing.assert_array_equal(trace[3][1], trace[5][1])
