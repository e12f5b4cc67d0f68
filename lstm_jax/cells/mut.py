"""MUT1, MUT2, MUT3: the three architectures found by Jozefowicz et al. 2015."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lstm_jax import _checks
from lstm_jax import initializers as inits
from lstm_jax.cell import Cell, make_cell, split_blocks
from lstm_jax.cells.gru import GRUState

Array = jax.Array

BLOCKS = ("update", "reset", "candidate")  # (z, r, h) order of project's output

# Which of the three input blocks go through a learned kernel; the others are fixed maps of
# x (MUT1's candidate gets tanh(x), MUT2's reset gate gets x itself).
_KERNEL_BLOCKS = {
    "mut1": ("update", "reset"),
    "mut2": ("update", "candidate"),
    "mut3": ("update", "reset", "candidate"),
}


class MUTParams(NamedTuple):
    """Parameters of MUT1/2/3 (weights ``[in, out]``); ``K`` input blocks (2 or 3)."""

    w_x: Array  # [I, K*H]  input kernels for the blocks in _KERNEL_BLOCKS[variant]
    b: Array  # [3H]        biases (z, r, h)
    w_hz: Array | None  # [H, H]  recurrent weights of z (MUT2: from h, MUT3: from tanh(h))
    w_hr: Array  # [H, H]         recurrent weights of r
    w_hh: Array  # [H, H]         recurrent weights of the candidate, applied to r * h


def _mut(variant: str, hidden_size: int, kernel_init, recurrent_init) -> Cell:
    H = _checks.positive_int("hidden_size", hidden_size)
    kernel_blocks = _KERNEL_BLOCKS[variant]
    kernel_init = kernel_init or inits.glorot_uniform()
    recurrent_init = recurrent_init or inits.orthogonal()
    identity_input = variant in ("mut1", "mut2")

    def init(key, input_size, *, dtype=jnp.float32):
        input_size = _checks.positive_int("input_size", input_size)
        dtype = _checks.floating_dtype("dtype", dtype)
        if identity_input and input_size != H:
            raise ValueError(f"{variant} adds the raw input to a hidden-sized pre-activation, so "
                             f"`input_size` must equal `hidden_size` ({H}), got {input_size}.")
        kx, kz, kr, kh = jax.random.split(key, 4)
        return MUTParams(
            w_x=inits.init_blocks(kernel_init, kx, input_size, H, len(kernel_blocks), dtype),
            b=jnp.zeros((3 * H,), dtype),
            w_hz=None if variant == "mut1" else recurrent_init(kz, (H, H), dtype),
            w_hr=recurrent_init(kr, (H, H), dtype),
            w_hh=recurrent_init(kh, (H, H), dtype),
        )

    def init_carry(params, batch_shape=()):
        _checks.params_of(params, MUTParams, "w_hr", H)
        return GRUState(hidden=jnp.zeros(_checks.batch_shape(batch_shape) + (H,), params.w_hr.dtype))

    def project(params, xs):
        _checks.params_of(params, MUTParams, "w_hr", H)
        _checks.features("xs", xs, params.w_x.shape[0], params.w_x.dtype)
        learned = split_blocks(xs @ params.w_x, kernel_blocks)
        fixed = {"reset": xs, "candidate": jnp.tanh(xs)}  # only used by MUT1/MUT2
        parts = [learned[n] if n in learned else fixed[n] for n in BLOCKS]
        return jnp.concatenate(parts, axis=-1) + params.b

    def recur_impl(params, carry, px, with_gates):
        h = carry.hidden
        p = split_blocks(px, BLOCKS)
        if variant == "mut1":
            z = jax.nn.sigmoid(p["update"])
        elif variant == "mut2":
            z = jax.nn.sigmoid(p["update"] + h @ params.w_hz)
        else:
            z = jax.nn.sigmoid(p["update"] + jnp.tanh(h) @ params.w_hz)
        r = jax.nn.sigmoid(p["reset"] + h @ params.w_hr)
        n = jnp.tanh((r * h) @ params.w_hh + p["candidate"])
        h_new = n * z + h * (1.0 - z)
        if with_gates:
            return GRUState(h_new), h_new, {"update": z, "reset": r, "candidate": n, "hidden": h_new}
        return GRUState(h_new), h_new

    return make_cell(name=variant, options=dict(hidden_size=H), hidden_size=H, output_size=H,
                     init=init, init_carry=init_carry, project=project, recur_impl=recur_impl)


def mut1(hidden_size: int, *, kernel_init=None, recurrent_init=None) -> Cell:
    r"""MUT1 of Jozefowicz et al. 2015 (needs ``input_size == hidden_size``).

    .. math::

        z &= \sigma(x_t W_{xz} + b_z) \\
        r &= \sigma(x_t W_{xr} + h_{t-1} W_{hr} + b_r) \\
        h_t &= \tanh((r \odot h_{t-1}) W_{hh} + \tanh(x_t) + b_h) \odot z + h_{t-1} \odot (1 - z)

    Returns a :class:`~lstm_jax.Cell` with :class:`MUTParams`, carry ``GRUState``,
    ``project(params, xs[..., I]) -> [..., 3H]`` and ``y_t = h_t [..., H]``.
    """
    return _mut("mut1", hidden_size, kernel_init, recurrent_init)


def mut2(hidden_size: int, *, kernel_init=None, recurrent_init=None) -> Cell:
    r"""MUT2 of Jozefowicz et al. 2015 (needs ``input_size == hidden_size``).

    .. math::

        z &= \sigma(x_t W_{xz} + h_{t-1} W_{hz} + b_z) \\
        r &= \sigma(x_t + h_{t-1} W_{hr} + b_r) \\
        h_t &= \tanh((r \odot h_{t-1}) W_{hh} + x_t W_{xh} + b_h) \odot z + h_{t-1} \odot (1 - z)

    Returns a :class:`~lstm_jax.Cell` with :class:`MUTParams`, carry ``GRUState``,
    ``project(params, xs[..., I]) -> [..., 3H]`` and ``y_t = h_t [..., H]``.
    """
    return _mut("mut2", hidden_size, kernel_init, recurrent_init)


def mut3(hidden_size: int, *, kernel_init=None, recurrent_init=None) -> Cell:
    r"""MUT3 of Jozefowicz et al. 2015.

    .. math::

        z &= \sigma(x_t W_{xz} + \tanh(h_{t-1}) W_{hz} + b_z) \\
        r &= \sigma(x_t W_{xr} + h_{t-1} W_{hr} + b_r) \\
        h_t &= \tanh((r \odot h_{t-1}) W_{hh} + x_t W_{xh} + b_h) \odot z + h_{t-1} \odot (1 - z)

    Returns a :class:`~lstm_jax.Cell` with :class:`MUTParams`, carry ``GRUState``,
    ``project(params, xs[..., I]) -> [..., 3H]`` and ``y_t = h_t [..., H]``.
    """
    return _mut("mut3", hidden_size, kernel_init, recurrent_init)
