"""The gated recurrent unit (Cho et al. 2014)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lstm_jax import _checks, fused
from lstm_jax import initializers as inits
from lstm_jax.cell import Cell, make_cell, split_blocks

Array = jax.Array

GATE_ORDER = ("reset", "update", "candidate")  # PyTorch's (r, z, n)


class GRUParams(NamedTuple):
    """GRU parameters (weights ``[in, out]``, blocks in order ``(r, z, n)``)."""

    w_x: Array  # [I, 3H]
    w_h: Array  # [H, 3H]
    b: Array  # [3H]  input-side bias (for r and z also PyTorch's b_hr, b_hz)
    b_hn: Array | None = None  # [H]  recurrent candidate bias, inside r * (...) (reset_after)


class GRUState(NamedTuple):
    """GRU carry."""

    hidden: Array  # [..., H]


def gru(
    hidden_size: int,
    *,
    reset_after: bool = True,
    kernel_init: inits.Initializer | None = None,
    recurrent_init: inits.Initializer | None = None,
    bias_init: inits.Initializer | None = None,
) -> Cell:
    r"""Gated recurrent unit, with a choice of where the reset gate applies.

    .. math::

        r_t &= \sigma(x_t W_{xr} + h_{t-1} W_{hr} + b_r) \\
        z_t &= \sigma(x_t W_{xz} + h_{t-1} W_{hz} + b_z) \\
        n_t &= \tanh(x_t W_{xn} + b_n + r_t \odot (h_{t-1} W_{hn} + b_{hn}))
               \quad \text{(reset\_after=True: PyTorch, cuDNN)} \\
        n_t &= \tanh(x_t W_{xn} + b_n + (r_t \odot h_{t-1}) W_{hn})
               \quad \text{(reset\_after=False: Cho et al. 2014)} \\
        h_t &= (1 - z_t) \odot n_t + z_t \odot h_{t-1}

    ``reset_after=True`` (default) matches ``torch.nn.GRU`` exactly and lets the whole
    recurrent matmul ``h_{t-1} W_h`` be one fused ``[H, 3H]`` product per step; the paper's
    form needs a second, dependent ``[H, H]`` matmul after the reset gate.

    Args:
      hidden_size: ``H``.
      reset_after: where the reset gate applies (see above).
      kernel_init: input kernel initialiser per gate block (default Glorot uniform).
      recurrent_init: recurrent initialiser per gate block (default orthogonal).
      bias_init: bias initialiser per block (default zeros).

    Returns:
      A :class:`~lstm_jax.Cell` with :class:`GRUParams` and :class:`GRUState`;
      ``project(params, xs[..., I]) -> [..., 3H]``; ``y_t = h_t [..., H]``.
    """
    H = _checks.positive_int("hidden_size", hidden_size)
    kernel_init = kernel_init or inits.glorot_uniform()
    recurrent_init = recurrent_init or inits.orthogonal()
    bias_init = bias_init or inits.zeros

    def init(key, input_size, *, dtype=jnp.float32):
        input_size = _checks.positive_int("input_size", input_size)
        dtype = _checks.floating_dtype("dtype", dtype)
        kx, kh, kb, kn = jax.random.split(key, 4)
        return GRUParams(
            w_x=inits.init_blocks(kernel_init, kx, input_size, H, 3, dtype),
            w_h=inits.init_blocks(recurrent_init, kh, H, H, 3, dtype),
            b=inits.init_blocks(bias_init, kb, None, H, 3, dtype),
            b_hn=bias_init(kn, (H,), dtype) if reset_after else None,
        )

    def init_carry(params, batch_shape=()):
        _checks.params_of(params, GRUParams, "w_h", 3 * H)
        return GRUState(hidden=jnp.zeros(_checks.batch_shape(batch_shape) + (H,), params.w_h.dtype))

    def project(params, xs):
        _checks.params_of(params, GRUParams, "w_h", 3 * H)
        _checks.features("xs", xs, params.w_x.shape[0], params.w_x.dtype)
        return xs @ params.w_x + params.b

    def recur_impl(params, carry, px, with_gates):
        h_prev = carry.hidden
        x = split_blocks(px, GATE_ORDER)
        if reset_after:
            rec = split_blocks(h_prev @ params.w_h, GATE_ORDER)
            r = jax.nn.sigmoid(x["reset"] + rec["reset"])
            z = jax.nn.sigmoid(x["update"] + rec["update"])
            n = jnp.tanh(x["candidate"] + r * (rec["candidate"] + params.b_hn))
        else:
            w_rz, w_n = params.w_h[:, :2 * H], params.w_h[:, 2 * H:]
            rec = split_blocks(h_prev @ w_rz, GATE_ORDER[:2])
            r = jax.nn.sigmoid(x["reset"] + rec["reset"])
            z = jax.nn.sigmoid(x["update"] + rec["update"])
            n = jnp.tanh(x["candidate"] + (r * h_prev) @ w_n)
        h = (1.0 - z) * n + z * h_prev
        if with_gates:
            return GRUState(h), h, {"reset": r, "update": z, "candidate": n, "hidden": h}
        return GRUState(h), h

    def fused_unroll(params, xs, carry, valid, unroll, kernel="xla"):
        if kernel != "xla":
            raise ValueError(f"gru has no {kernel!r} kernel; use impl='fused' (XLA).")
        ys, h = fused.gru_layer(params.w_x, params.w_h, params.b, params.b_hn, xs, carry.hidden, valid,
                                unroll, fused.hoist_projection())
        return ys, GRUState(h)

    return make_cell(name="gru", options=dict(hidden_size=H, reset_after=reset_after),
                     hidden_size=H, output_size=H, init=init, init_carry=init_carry,
                     project=project, recur_impl=recur_impl,
                     fused=fused_unroll if reset_after else None)
