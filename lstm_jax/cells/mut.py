"""MUT1, MUT2, MUT3: the three architectures found by Jozefowicz et al. 2015."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lstm_jax import _checks
from lstm_jax import initializers as inits
from lstm_jax.cell import Cell, CellConfig
from lstm_jax.cells.base import initializer, make_cell, or_default, set_fields
from lstm_jax.cells.gru import GRUState
from lstm_jax.ops import split_blocks

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


@dataclasses.dataclass(frozen=True, repr=False)
class MUTConfig(CellConfig):
    """Hyper-parameters of :func:`mut1`, :func:`mut2` and :func:`mut3`."""

    hidden_size: int
    variant: str = "mut1"
    kernel_init: inits.Initializer | None = None
    recurrent_init: inits.Initializer | None = None

    def __post_init__(self):
        set_fields(self, hidden_size=_checks.positive_int("hidden_size", self.hidden_size),
                   variant=_checks.choice("variant", self.variant, tuple(_KERNEL_BLOCKS)),
                   kernel_init=initializer("kernel_init", self.kernel_init),
                   recurrent_init=initializer("recurrent_init", self.recurrent_init))

    @property
    def constructor(self) -> str:  # repr as mut1(16), mut2(16), mut3(16)
        return self.variant

    def __repr__(self) -> str:
        inits_ = [f"{k}={getattr(self, k)!r}" for k in ("kernel_init", "recurrent_init") if getattr(self, k)]
        return f"{self.variant}({', '.join([repr(self.hidden_size)] + inits_)})"

    def build(self) -> Cell:
        return _mut_cell(self)


def _mut_cell(config: MUTConfig) -> Cell:
    H, variant = config.hidden_size, config.variant
    kernel_blocks = _KERNEL_BLOCKS[variant]
    kernel_init = or_default(config.kernel_init, inits.glorot_uniform)
    recurrent_init = or_default(config.recurrent_init, inits.orthogonal)
    identity_input = variant in ("mut1", "mut2")

    def init(key, input_size, dtype):
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

    def init_carry(params, batch_shape):
        return GRUState(hidden=jnp.zeros(batch_shape + (H,), params.w_hr.dtype))

    def project(params, xs):
        learned = split_blocks(xs @ params.w_x, kernel_blocks)
        fixed = {"reset": xs, "candidate": jnp.tanh(xs)}  # only used by MUT1/MUT2
        parts = [learned[n] if n in learned else fixed[n] for n in BLOCKS]
        return jnp.concatenate(parts, axis=-1) + params.b

    def recur(params, carry, px, *, aux=False):
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
        if aux:
            return GRUState(h_new), h_new, {"update": z, "reset": r, "candidate": n, "hidden": h_new}
        return GRUState(h_new), h_new

    return make_cell(config, init=init, init_carry=init_carry, project=project, recur=recur)


def mut1(hidden_size: int, *, kernel_init=None, recurrent_init=None) -> Cell:
    r"""MUT1 of Jozefowicz et al. 2015 (needs ``input_size == hidden_size``).

    .. math::

        z &= \sigma(x_t W_{xz} + b_z) \\
        r &= \sigma(x_t W_{xr} + h_{t-1} W_{hr} + b_r) \\
        h_t &= \tanh((r \odot h_{t-1}) W_{hh} + \tanh(x_t) + b_h) \odot z + h_{t-1} \odot (1 - z)

    Returns a :class:`~lstm_jax.Cell` with :class:`MUTConfig`, :class:`MUTParams`, carry ``GRUState``,
    ``project(params, xs[..., I]) -> [..., 3H]`` and ``y_t = h_t [..., H]``.
    """
    return MUTConfig(hidden_size, "mut1", kernel_init, recurrent_init).build()


def mut2(hidden_size: int, *, kernel_init=None, recurrent_init=None) -> Cell:
    r"""MUT2 of Jozefowicz et al. 2015 (needs ``input_size == hidden_size``).

    .. math::

        z &= \sigma(x_t W_{xz} + h_{t-1} W_{hz} + b_z) \\
        r &= \sigma(x_t + h_{t-1} W_{hr} + b_r) \\
        h_t &= \tanh((r \odot h_{t-1}) W_{hh} + x_t W_{xh} + b_h) \odot z + h_{t-1} \odot (1 - z)

    Returns a :class:`~lstm_jax.Cell` with :class:`MUTConfig`, :class:`MUTParams`, carry ``GRUState``,
    ``project(params, xs[..., I]) -> [..., 3H]`` and ``y_t = h_t [..., H]``.
    """
    return MUTConfig(hidden_size, "mut2", kernel_init, recurrent_init).build()


def mut3(hidden_size: int, *, kernel_init=None, recurrent_init=None) -> Cell:
    r"""MUT3 of Jozefowicz et al. 2015.

    .. math::

        z &= \sigma(x_t W_{xz} + \tanh(h_{t-1}) W_{hz} + b_z) \\
        r &= \sigma(x_t W_{xr} + h_{t-1} W_{hr} + b_r) \\
        h_t &= \tanh((r \odot h_{t-1}) W_{hh} + x_t W_{xh} + b_h) \odot z + h_{t-1} \odot (1 - z)

    Returns a :class:`~lstm_jax.Cell` with :class:`MUTConfig`, :class:`MUTParams`, carry ``GRUState``,
    ``project(params, xs[..., I]) -> [..., 3H]`` and ``y_t = h_t [..., H]``.
    """
    return MUTConfig(hidden_size, "mut3", kernel_init, recurrent_init).build()
