"""Parity with Flax's recurrent cells on the same weights: a second independent implementation.

Flax's ``LSTMCell``/``OptimizedLSTMCell`` and ``GRUCell`` keep one Dense per gate (``ii``,
``hf``, ...); we slice our fused ``[in, G*H]`` matrices into them. Flax's GRU is the
reset-after form, with the input bias of ``n`` outside and the recurrent one inside ``r * (.)``.
Both our generic scan and the cells' ``"fused"`` form (what ``impl="auto"`` picks) are checked.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import lstm_jax as lj

B, T, I, H = 3, 6, 4, 5


def _blocks(w, n):
    return dict(zip(range(n), jnp.split(w, n, axis=-1)))


def _random_like(params, key):
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    return tree.unflatten([0.5 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def _flax_lstm_params(p):
    wx, wh, b = _blocks(p.w_x, 4), _blocks(p.w_h, 4), _blocks(p.b, 4)
    out = {}
    for k, g in enumerate("ifgo"):
        out["i" + g] = {"kernel": wx[k]}
        out["h" + g] = {"kernel": wh[k], "bias": b[k]}
    return {"params": {"cell": out}}


def _flax_gru_params(p):
    wx, wh, b = _blocks(p.w_x, 3), _blocks(p.w_h, 3), _blocks(p.b, 3)
    return {"params": {"cell": {
        "ir": {"kernel": wx[0], "bias": b[0]}, "iz": {"kernel": wx[1], "bias": b[1]},
        "in": {"kernel": wx[2], "bias": b[2]}, "hr": {"kernel": wh[0]}, "hz": {"kernel": wh[1]},
        "hn": {"kernel": wh[2], "bias": p.b_hn},
    }}}


@pytest.mark.parametrize("impl", ["scan", "fused"])
@pytest.mark.parametrize("dtype, tol", [(jnp.float64, 1e-12), (jnp.float32, 1e-5)])
@pytest.mark.parametrize("flax_cell", ["LSTMCell", "OptimizedLSTMCell", "GRUCell"])
def test_matches_flax(flax_cell, dtype, tol, impl):
    is_gru = flax_cell == "GRUCell"
    cell = lj.gru(H) if is_gru else lj.lstm(H)
    params = _random_like(cell.init(jax.random.key(0), I, dtype=dtype), jax.random.key(1))
    xs = jax.random.normal(jax.random.key(2), (B, T, I), dtype)
    ys, carry = lj.unroll(cell, params, xs, impl=impl)

    module = nn.RNN(getattr(nn, flax_cell)(features=H, param_dtype=dtype, dtype=dtype), return_carry=True)
    variables = _flax_gru_params(params) if is_gru else _flax_lstm_params(params)
    with jax.numpy_dtype_promotion("standard"):  # flax's internals are not strict-promotion clean
        flax_carry, flax_ys = module.apply(variables, xs)

    np.testing.assert_allclose(ys, flax_ys, atol=tol, rtol=tol)
    if is_gru:
        np.testing.assert_allclose(carry.hidden, flax_carry, atol=tol, rtol=tol)
    else:  # flax's LSTM carry is (c, h)
        np.testing.assert_allclose(carry.cell, flax_carry[0], atol=tol, rtol=tol)
        np.testing.assert_allclose(carry.hidden, flax_carry[1], atol=tol, rtol=tol)
