"""The adding-problem generator and the readout model, checked against NumPy by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm_jax as lj
from lstm_jax.data import ADDING_BASELINE_MSE, adding_problem
from lstm_jax.models import readout


def test_adding_problem_markers_and_targets():
    xs, ys = adding_problem(jax.random.key(0), 64, 21, dtype=jnp.float64)
    xs, ys = np.asarray(xs), np.asarray(ys)
    assert xs.shape == (64, 21, 2) and ys.shape == (64,)
    values, markers = xs[..., 0], xs[..., 1]
    assert set(np.unique(markers)) == {0.0, 1.0}
    assert (markers.sum(1) == 2).all()
    half = 21 // 2
    assert (markers[:, :half].sum(1) == 1).all() and (markers[:, half:].sum(1) == 1).all()
    assert ((values >= 0) & (values < 1)).all()
    np.testing.assert_allclose(ys, (values * markers).sum(1), rtol=0, atol=1e-15)


def test_adding_problem_baseline_is_predicting_one():
    _, ys = adding_problem(jax.random.key(1), 200_000, 4, dtype=jnp.float64)
    mse = float(jnp.mean((ys - 1.0) ** 2))
    assert abs(mse - ADDING_BASELINE_MSE) < 3e-3
    assert ADDING_BASELINE_MSE == pytest.approx(0.1667, abs=1e-4)


@pytest.mark.parametrize("bad", [dict(length=1), dict(batch_size=0), dict(length=2.5)])
def test_adding_problem_rejects_bad_sizes(bad):
    kwargs = dict(batch_size=2, length=10) | bad
    with pytest.raises(ValueError, match=f"`{next(iter(bad))}`"):
        adding_problem(jax.random.key(0), **kwargs)


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
