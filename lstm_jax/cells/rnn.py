"""The Elman ("vanilla") RNN."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lstm_jax import _checks
from lstm_jax import initializers as inits
from lstm_jax.cell import Cell, CellConfig
from lstm_jax.cells.base import initializer, make_cell, or_default, set_fields
from lstm_jax.ops import ACTIVATIONS

Array = jax.Array


class RNNParams(NamedTuple):
    """Elman RNN parameters (weights ``[in, out]``)."""

    w_x: Array  # [I, H]
    w_h: Array  # [H, H]
    b: Array  # [H]  (PyTorch's b_ih + b_hh)


class RNNState(NamedTuple):
    """Elman RNN carry."""

    hidden: Array  # [..., H]


@dataclasses.dataclass(frozen=True, repr=False)
class RNNConfig(CellConfig):
    """Hyper-parameters of :func:`rnn` (see there)."""

    constructor = "rnn"
    hidden_size: int
    activation: str = "tanh"
    kernel_init: inits.Initializer | None = None
    recurrent_init: inits.Initializer | None = None
    bias_init: inits.Initializer | None = None

    def __post_init__(self):
        set_fields(self, hidden_size=_checks.positive_int("hidden_size", self.hidden_size),
                   activation=_checks.choice("activation", self.activation, ("tanh", "relu")),
                   kernel_init=initializer("kernel_init", self.kernel_init),
                   recurrent_init=initializer("recurrent_init", self.recurrent_init),
                   bias_init=initializer("bias_init", self.bias_init))

    def build(self) -> Cell:
        return _rnn_cell(self)


def rnn(
    hidden_size: int,
    *,
    activation: str = "tanh",
    kernel_init: inits.Initializer | None = None,
    recurrent_init: inits.Initializer | None = None,
    bias_init: inits.Initializer | None = None,
) -> Cell:
    r"""Elman recurrent network (Elman 1990), PyTorch's ``nn.RNN``.

    .. math::

        h_t = \phi(x_t W_x + h_{t-1} W_h + b)

    with ``\phi`` = ``tanh`` (default) or ``relu``. Its gradient through ``T`` steps is a
    product of ``T`` Jacobians ``diag(\phi') W_h^\top``, which vanishes or explodes
    geometrically: the reason it cannot learn long time lags (Bengio et al. 1994;
    Hochreiter 1991).

    Args:
      hidden_size: ``H``.
      activation: ``"tanh"`` or ``"relu"``.
      kernel_init: input kernel initialiser (default Glorot uniform).
      recurrent_init: recurrent kernel initialiser (default orthogonal).
      bias_init: bias initialiser (default zeros).

    Returns:
      A :class:`~lstm_jax.Cell` with :class:`RNNConfig`, :class:`RNNParams` and
      :class:`RNNState`; ``project(params, xs[..., I]) -> [..., H]``; ``y_t = h_t [..., H]``;
      gates ``hidden``.
    """
    return RNNConfig(hidden_size, activation=activation, kernel_init=kernel_init,
                     recurrent_init=recurrent_init, bias_init=bias_init).build()


def _rnn_cell(config: RNNConfig) -> Cell:
    H = config.hidden_size
    act = ACTIVATIONS[config.activation]
    kernel_init = or_default(config.kernel_init, inits.glorot_uniform)
    recurrent_init = or_default(config.recurrent_init, inits.orthogonal)
    bias_init = or_default(config.bias_init, lambda: inits.zeros)

    def init(key, input_size, dtype):
        kx, kh, kb = jax.random.split(key, 3)
        return RNNParams(w_x=kernel_init(kx, (input_size, H), dtype),
                         w_h=recurrent_init(kh, (H, H), dtype),
                         b=bias_init(kb, (H,), dtype))

    def init_carry(params, batch_shape):
        return RNNState(hidden=jnp.zeros(batch_shape + (H,), params.w_h.dtype))

    def project(params, xs):
        return xs @ params.w_x + params.b

    def recur(params, carry, px, *, aux=False):
        h = act(px + carry.hidden @ params.w_h)
        return (RNNState(h), h, {"hidden": h}) if aux else (RNNState(h), h)

    return make_cell(config, init=init, init_carry=init_carry, project=project, recur=recur)
