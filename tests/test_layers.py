"""Sequence layers (``layer``, ``stack``, ``bidirectional``, dropout) against hand-built references.

Every reference is assembled from ``lstm_jax.unroll`` (itself proven against a Python loop in
test_unroll.py) and NumPy: a stack equals its layers applied one after another, a
bidirectional layer equals a forward and a reversed unroll merged by hand, a padded batch
equals each sequence alone, dropout sits only between layers with the documented keys, a
carry passed back in continues the sequence, and f32/bf16/f64 are preserved end to end.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers  # tests/helpers.py
import lstm_jax as lj
from lstm_jax.layers import dropout

F64 = jnp.float64
I, T, B = 3, 6, 3
TOL = dict(rtol=1e-12, atol=1e-12)
LENGTHS = (T, 0, 2)  # full, empty and partial


def randomize(tree, key, scale=0.5):
    """Every array leaf replaced by scale * N(0, 1) of the same shape and dtype."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([scale * jax.random.normal(k, l.shape, l.dtype) for k, l in zip(keys, leaves)])


def init(model, seed=0, input_size=I, dtype=F64):
    """Random params for a cell or layer (peepholes and biases included)."""
    key = jax.random.key(seed)
    return randomize(model.init(key, input_size, dtype=dtype), jax.random.fold_in(key, 1))


def inputs(batch_shape=(B,), steps=T, seed=1, dtype=F64):
    return jax.random.normal(jax.random.key(seed), (*batch_shape, steps, I), dtype)


def padded_batch(seed=3):
    """[B, T, I] inputs whose steps at or past each length are large random garbage."""
    xs = inputs(seed=seed)
    garbage = 1e3 * jax.random.normal(jax.random.key(seed + 100), xs.shape, F64)
    valid = np.arange(T)[None, :, None] < np.array(LENGTHS)[:, None, None]
    return jnp.where(jnp.asarray(valid), xs, garbage), jnp.array(LENGTHS, jnp.int32)


assert_trees_close = functools.partial(helpers.assert_trees_close, same_dtype=True)
def take(tree, index):
    return jax.tree_util.tree_map(lambda a: a[index], tree)


swap = lambda tree: jax.tree_util.tree_map(lambda a: jnp.swapaxes(a, 0, 1), tree)


def by_hand(cells, params, xs, carries=None, lengths=None):
    """A stack of cells: unroll each on the previous one's output."""
    carries = carries or (None,) * len(cells)
    out = []
    for cell, p, c in zip(cells, params, carries):
        xs, c = lj.unroll(cell, p, xs, c, lengths=lengths)
        out.append(c)
    return xs, tuple(out)


# -------------------------------------------------------------------------------- layer

@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("time_major", [False, True])
def test_layer_apply_is_unroll(reverse, time_major):
    cell = lj.lstm(4, peephole=True, proj_size=2)
    lay = lj.layer(cell, reverse=reverse, time_major=time_major, unroll=2)
    assert (lay.output_size, lay.reverse, lay.time_major) == (2, reverse, time_major)
    params = init(lay)
    assert_trees_close(params, init(cell))  # the layer's params are the cell's
    xs, lengths = padded_batch()
    xs = swap(xs) if time_major else xs
    carry0 = randomize(lay.init_carry(params, (B,)), jax.random.key(5))
    got = lay.apply(params, xs, carry0, lengths=lengths, key=jax.random.key(9))  # key: unused
    want = lj.unroll(cell, params, xs, carry0, lengths=lengths, reverse=reverse, time_major=time_major)
    assert_trees_close(got, want)


# -------------------------------------------------------------------------------- stack

def test_stack_equals_its_layers_applied_by_hand():
    cells = [lj.lstm(4, proj_size=2), lj.gru(5), lj.rnn(3)]
    model = lj.stack(cells)
    params = init(model)
    assert [p.w_x.shape[0] for p in params] == [I, 2, 5]  # each layer reads the previous output
    assert model.output_size == 3
    xs, lengths = padded_batch()
    carry0 = randomize(model.init_carry(params, (B,)), jax.random.key(5))
    assert [type(c) for c in carry0] == [lj.LSTMState, lj.GRUState, lj.RNNState]
    got = model.apply(params, xs, carry0, lengths=lengths)
    assert_trees_close(got, by_hand(cells, params, xs, carry0, lengths))
    assert isinstance(got[1], tuple) and len(got[1]) == 3


def test_stack_chains_output_sizes_through_bidirectional():
    fwd, bwd, top = lj.lstm(4), lj.lstm(4), lj.lstm(3)
    model = lj.stack([lj.bidirectional(fwd, bwd), top])
    assert model.output_size == 3
    params = init(model)
    assert params[1].w_x.shape[0] == 8  # concat of 4 + 4
    xs = inputs()
    ys, carry = model.apply(params, xs)
    ys_f, c_f = lj.unroll(fwd, params[0].forward, xs)
    ys_b, c_b = lj.unroll(bwd, params[0].backward, xs, reverse=True)
    ys_ref, c_top = lj.unroll(top, params[1], jnp.concatenate([ys_f, ys_b], axis=-1))
    assert ys.shape == (B, T, 3)
    assert_trees_close((ys, carry), (ys_ref, (lj.BidirectionalCarry(c_f, c_b), c_top)))


@pytest.mark.parametrize("time_major", [False, True])
def test_carry_passed_back_in_continues_the_sequence(time_major):
    model = lj.stack([lj.lstm(4, peephole=True), lj.gru(3), lj.mut3(3)], time_major=time_major)
    params = init(model)
    xs = inputs()
    xs = swap(xs) if time_major else xs
    t_axis = 0 if time_major else 1
    first, rest = jnp.split(xs, [3], axis=t_axis)
    ys1, carry = model.apply(params, first)
    ys2, carry = model.apply(params, rest, carry)
    ys, carry_all = model.apply(params, xs)
    assert_trees_close((jnp.concatenate([ys1, ys2], axis=t_axis), carry), (ys, carry_all))


# ------------------------------------------------------------------------------ dropout

DROP_CELLS = lambda: [lj.lstm(4), lj.gru(4), lj.rnn(3)]


def test_dropout_without_key_is_off():
    xs = inputs()
    drop, plain = lj.stack(DROP_CELLS(), dropout_rate=0.5), lj.stack(DROP_CELLS())
    params = init(plain)
    got = drop.apply(params, xs)
    assert_trees_close(got, plain.apply(params, xs))
    assert_trees_close(drop.apply(params, xs), got)


def test_one_layer_stack_has_no_dropout():
    cell = lj.lstm(4)
    params = init(lj.stack([cell]))
    xs = inputs()
    got = lj.stack([cell], dropout_rate=0.5).apply(params, xs, key=jax.random.key(7))
    assert_trees_close(got, by_hand([cell], params, xs))  # not after the last layer


def test_dropout_sits_between_layers_with_the_documented_keys():
    """stack splits ``key`` into 2n keys: keys[2i] drops the input of layer i > 0."""
    cells, rate, key = DROP_CELLS(), 0.5, jax.random.key(7)
    model = lj.stack(cells, dropout_rate=rate)
    params, (xs, lengths) = init(model), padded_batch()
    keys = jax.random.split(key, 2 * len(cells))
    ys, carries = xs, []
    for i, (cell, p) in enumerate(zip(cells, params)):
        ys = dropout(keys[2 * i], ys, rate) if i else ys
        ys, c = lj.unroll(cell, p, ys, lengths=lengths)
        carries.append(c)
    got = model.apply(params, xs, lengths=lengths, key=key)
    assert_trees_close(got, (ys, tuple(carries)))
    no_drop = model.apply(params, xs, lengths=lengths)
    assert not np.allclose(got[0], no_drop[0])  # it did something
    assert_trees_close(model.apply(params, xs, lengths=lengths, key=key), got)  # same key
    other = model.apply(params, xs, lengths=lengths, key=jax.random.key(8))[0]
    assert not np.allclose(other, got[0])  # different key


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_dropout_is_inverted_dropout(rate):
    xs = 1.0 + jax.random.uniform(jax.random.key(0), (200, 100), F64)  # never zero
    out = np.asarray(dropout(jax.random.key(1), xs, rate))
    zeroed = out == 0.0
    np.testing.assert_allclose(out[~zeroed], np.asarray(xs)[~zeroed] / (1.0 - rate), rtol=1e-15)
    # 20,000 Bernoulli draws: the zero fraction is within 5 standard deviations of the rate
    assert abs(zeroed.mean() - rate) < 5 * np.sqrt(rate * (1 - rate) / zeroed.size)


# ------------------------------------------------------------------------ bidirectional

MERGES = {"concat": lambda a, b: np.concatenate([a, b], -1), "sum": np.add,
          "mean": lambda a, b: (a + b) / 2, "mul": np.multiply}


@pytest.mark.parametrize("merge", list(MERGES))
def test_bidirectional_is_forward_and_reverse_unroll_merged(merge):
    fwd, bwd = lj.lstm(4, peephole=True), lj.gru(4)
    model = lj.bidirectional(fwd, bwd, merge=merge)
    assert model.output_size == (8 if merge == "concat" else 4)
    params = init(model)
    assert isinstance(params, lj.BidirectionalParams)
    xs = inputs()
    carry0 = randomize(model.init_carry(params, (B,)), jax.random.key(5))
    ys, carry = model.apply(params, xs, carry0)
    ys_f, c_f = lj.unroll(fwd, params.forward, xs, carry0.forward)
    ys_b, c_b = lj.unroll(bwd, params.backward, xs, carry0.backward, reverse=True)
    np.testing.assert_allclose(ys, MERGES[merge](np.asarray(ys_f), np.asarray(ys_b)), **TOL)
    assert_trees_close(carry, lj.BidirectionalCarry(c_f, c_b))


def test_bidirectional_padded_batch_is_each_sequence_alone():
    model = lj.bidirectional(lj.lstm(4, peephole=True), lj.gru(3))
    params = init(model)
    xs, lengths = padded_batch()
    ys, carry = model.apply(params, xs, lengths=lengths)
    for b, n in enumerate(LENGTHS):
        ys_alone, carry_alone = model.apply(params, xs[b, :n])  # batch shape (), n may be 0
        np.testing.assert_allclose(ys[b, :n], ys_alone, **TOL)
        assert np.all(np.asarray(ys[b, n:]) == 0.0), "padded outputs must be exactly zero"
        assert_trees_close(take(carry, b), carry_alone)


def test_bidirectional_accepts_layers():
    fwd, bwd = lj.lstm(4), lj.rnn(4)
    from_cells = lj.bidirectional(fwd, bwd, merge="sum")
    from_layers = lj.bidirectional(lj.layer(fwd), lj.layer(bwd, reverse=True), merge="sum")
    params = init(from_cells)
    assert_trees_close(init(from_layers), params)
    xs, lengths = padded_batch()
    assert_trees_close(from_layers.apply(params, xs, lengths=lengths),
                       from_cells.apply(params, xs, lengths=lengths))


def test_time_major_bidirectional_stack():
    """A time-major model gives the batch-major numbers with the first two axes swapped."""
    build = lambda tm: lj.stack([lj.bidirectional(lj.lstm(4), lj.gru(4), merge="mean", time_major=tm),
                                 lj.rnn(3)], time_major=tm)
    batch_major, time_major = build(False), build(True)
    assert time_major.time_major and not batch_major.time_major
    params = init(batch_major)
    xs, lengths = padded_batch()
    ys, carry = batch_major.apply(params, xs, lengths=lengths)
    ys_tm, carry_tm = time_major.apply(params, swap(xs), lengths=lengths)
    assert_trees_close((ys_tm, carry_tm), (swap(ys), carry))


# -------------------------------------------------------------------------------- dtypes

@pytest.mark.parametrize("dtype, tol", [(jnp.float64, 0.0), (jnp.float32, 1e-5), (jnp.bfloat16, 0.05)],
                         ids=["float64", "float32", "bfloat16"])
def test_dtype_is_preserved_end_to_end(dtype, tol):
    model = lj.stack([lj.bidirectional(lj.lstm(4, peephole=True), lj.gru(4)), lj.rnn(3)], dropout_rate=0.25)
    params64, xs64 = init(model), inputs()
    cast = lambda tree: jax.tree_util.tree_map(lambda a: a.astype(dtype), tree)
    key = jax.random.key(3)
    ys, carry = model.apply(cast(params64), cast(xs64), key=key)
    ys64, carry64 = model.apply(params64, xs64, key=key)  # same dropout masks at any dtype
    assert ys.dtype == dtype and all(c.dtype == dtype for c in jax.tree_util.tree_leaves(carry))
    for got, want in zip(jax.tree_util.tree_leaves((ys, carry)), jax.tree_util.tree_leaves((ys64, carry64))):
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol, atol=tol)
