"""The readout model, checked against NumPy by hand and against its body's own gates, and the
cell registry (the task generators: test_tasks.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers  # tests/helpers.py
import lstm_jax as lj
from lstm_jax.cells.registry import CELL_CONSTRUCTORS, cell_by_name
from lstm_jax.models import Model, ReadoutParams, readout


def test_readout_reads_last_valid_step():
    cell = lj.lstm(5)
    model = readout(cell, 3, at="last")
    params = model.init(jax.random.key(0), 4, dtype=jnp.float64)
    xs = jax.random.normal(jax.random.key(1), (3, 6, 4), jnp.float64)
    lengths = jnp.array([6, 2, 1], jnp.int32)
    ys, _ = lj.unroll(cell, params.body, xs, lengths=lengths)
    expected = np.stack([np.asarray(ys)[b, int(n) - 1] for b, n in enumerate(lengths)]) @ params.w + params.b
    np.testing.assert_allclose(model.apply(params, xs, lengths=lengths), expected, atol=1e-12)
    every = readout(cell, 3, at="every").apply(params, xs)
    np.testing.assert_allclose(every, lj.unroll(cell, params.body, xs)[0] @ params.w + params.b, atol=1e-12)
    assert every.shape == (3, 6, 3)


def test_readout_with_traced_lengths_past_T_reads_the_last_step():
    """As in unroll, lengths past T act as T under jit (an index past T - 1 used to read NaN)."""
    model = readout(lj.lstm(5), 3, at="last")
    params = model.init(jax.random.key(0), 4, dtype=jnp.float64)
    xs = jax.random.normal(jax.random.key(1), (2, 5, 4), jnp.float64)
    got = jax.jit(lambda p, n: model.apply(p, xs, lengths=n))(params, jnp.array([6, 5]))
    np.testing.assert_allclose(got, model.apply(params, xs), atol=1e-12)


def test_readout_is_a_typed_hashable_model():
    model = readout(lj.gru(4), 2)
    assert isinstance(model, Model) and model.body == lj.layer(lj.gru(4))
    assert (model.output_size, model.at) == (2, "last")
    assert model == readout(lj.layer(lj.gru(4)), 2) and hash(model) == hash(readout(lj.gru(4), 2))
    assert model != readout(lj.gru(4), 2, at="every") and model != readout(lj.gru(5), 2)
    assert repr(model) == "readout(layer(gru(4)), 2, at='last')"
    params = model.init(jax.random.key(0), 3, dtype=jnp.float64)
    assert isinstance(params, ReadoutParams) and params.w.shape == (4, 2) and params.b.shape == (2,)


def test_readout_return_gates_are_the_body_gates():
    xs = helpers.normal(np.random.default_rng(0), (2, 5, 3))
    resets = jnp.zeros((2, 5), bool).at[1, 3].set(True)
    cell = lj.lstm(4)
    model = readout(cell, 2, at="every")
    params = model.init(jax.random.key(0), 3, dtype=jnp.float64)
    preds, gates = model.apply(params, xs, resets=resets, return_gates=True)
    ys, _, aux = lj.unroll(cell, params.body, xs, resets=resets, return_gates=True)
    np.testing.assert_allclose(preds, ys @ params.w + params.b, atol=1e-12)
    np.testing.assert_allclose(preds, model.apply(params, xs, resets=resets), atol=1e-12)
    helpers.assert_trees_close(gates, aux.gates)
    assert set(gates) == {"input", "forget", "candidate", "output", "cell", "hidden"}

    body = lj.stack([lj.gru(4), lj.lstm(3)])  # a stack: one gate dict per layer
    model = readout(body, 2)
    params = model.init(jax.random.key(1), 3, dtype=jnp.float64)
    lengths = jnp.array([5, 2], jnp.int32)
    preds, gates = model.apply(params, xs, lengths=lengths, return_gates=True)
    ys, _, body_gates = body.apply(params.body, xs, lengths=lengths, return_gates=True)
    helpers.assert_trees_close(gates, body_gates)
    assert isinstance(gates, tuple) and set(gates[0]) == {"reset", "update", "candidate", "hidden"}
    assert gates[1]["cell"].shape == (2, 5, 3)
    np.testing.assert_allclose(preds, ys[jnp.arange(2), lengths - 1] @ params.w + params.b, atol=1e-12)


def test_readout_errors():
    with pytest.raises(ValueError, match="`at`"):
        readout(lj.lstm(4), 1, at="first")
    with pytest.raises(TypeError, match="`body`"):
        readout("lstm", 1)
    with pytest.raises(ValueError, match="`body` must be batch-first"):
        readout(lj.layer(lj.lstm(4), time_major=True), 1)
    with pytest.raises(ValueError, match="`output_size`"):
        readout(lj.lstm(4), 0)
    model = readout(lj.lstm(4), 1)
    params = model.init(jax.random.key(0), 3, dtype=jnp.float64)
    with pytest.raises(TypeError, match="`params` must be ReadoutParams .* got LSTMParams"):
        model.apply(params.body, jnp.zeros((2, 5, 3), jnp.float64))


REGISTERED = ["clockwork", "gru", "lstm", "min_gru", "min_lstm", "mlstm", "mut1", "mut2", "mut3", "rnn", "rnn_relu",
              "slstm"] + [f"lstm_{v}" for v in lj.GREFF_VARIANTS]


def test_every_registered_cell_builds_and_steps():
    assert sorted(CELL_CONSTRUCTORS) == sorted(REGISTERED)
    for name in CELL_CONSTRUCTORS:
        cell = cell_by_name(name, 8)
        assert isinstance(cell, lj.Cell) and cell == cell_by_name(name, 8), name
        params = cell.init(jax.random.key(0), 8)  # I == H, as MUT1/MUT2 need
        ys, _ = lj.unroll(cell, params, jnp.ones((2, 3, 8), jnp.float32))
        assert ys.shape == (2, 3, cell.output_size), name


def test_registered_names_are_the_constructors_presets():
    assert cell_by_name("rnn_relu", 8) == lj.rnn(8, activation="relu")
    assert cell_by_name("lstm_CIFG", 8) == lj.greff_variant("CIFG", 8)
    assert cell_by_name("lstm_CIFG", 8, forget_bias=0.5) == lj.lstm(8, peephole=True, coupled=True, forget_bias=0.5)
    assert cell_by_name("lstm", 8, derivative_clip=1.0) == lj.lstm(8, derivative_clip=1.0)
    assert cell_by_name("clockwork", 8) == lj.clockwork(8, num_modules=4)
