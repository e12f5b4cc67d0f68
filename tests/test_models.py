"""The readout model, checked against NumPy by hand, and the cell registry (the task generators: test_tasks.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm_jax as lj
from lstm_jax.models import readout


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


def test_readout_errors():
    with pytest.raises(ValueError, match="`at`"):
        readout(lj.lstm(4), 1, at="first")
    with pytest.raises(TypeError, match="`body`"):
        readout("lstm", 1)


def test_every_registered_cell_builds_and_steps():
    for name, make in lj.cells.CELL_CONSTRUCTORS.items():
        cell = lj.cell_by_name(name, 8)
        assert isinstance(cell, lj.Cell), name
        params = cell.init(jax.random.key(0), 8)  # I == H, as MUT1/MUT2 need
        ys, _ = lj.unroll(cell, params, jnp.ones((2, 3, 8), jnp.float32))
        assert ys.shape == (2, 3, cell.output_size), name
