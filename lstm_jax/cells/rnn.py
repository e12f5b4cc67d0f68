"""The Elman ("vanilla") RNN."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lstm_jax import _checks
from lstm_jax import initializers as inits
from lstm_jax.cell import ACTIVATIONS, Cell, make_cell

Array = jax.Array


class RNNParams(NamedTuple):
    """Elman RNN parameters (weights ``[in, out]``)."""

    w_x: Array  # [I, H]
    w_h: Array  # [H, H]
    b: Array  # [H]  (PyTorch's b_ih + b_hh)


class RNNState(NamedTuple):
    """Elman RNN carry."""

    hidden: Array  # [..., H]


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
      A :class:`~lstm_jax.Cell` with :class:`RNNParams` and :class:`RNNState`;
      ``project(params, xs[..., I]) -> [..., H]``; ``y_t = h_t [..., H]``.
    """
    H = _checks.positive_int("hidden_size", hidden_size)
    act = ACTIVATIONS[_checks.choice("activation", activation, ("tanh", "relu"))]
    kernel_init = kernel_init or inits.glorot_uniform()
    recurrent_init = recurrent_init or inits.orthogonal()
    bias_init = bias_init or inits.zeros

    def init(key, input_size, *, dtype=jnp.float32):
        input_size = _checks.positive_int("input_size", input_size)
        dtype = _checks.floating_dtype("dtype", dtype)
        kx, kh, kb = jax.random.split(key, 3)
        return RNNParams(w_x=kernel_init(kx, (input_size, H), dtype),
                         w_h=recurrent_init(kh, (H, H), dtype),
                         b=bias_init(kb, (H,), dtype))

    def init_carry(params, batch_shape=()):
        _checks.params_of(params, RNNParams, "w_h", H)
        return RNNState(hidden=jnp.zeros(_checks.batch_shape(batch_shape) + (H,), params.w_h.dtype))

    def project(params, xs):
        _checks.params_of(params, RNNParams, "w_h", H)
        _checks.features("xs", xs, params.w_x.shape[0], params.w_x.dtype)
        return xs @ params.w_x + params.b

    def recur_impl(params, carry, px, with_gates):
        h = act(px + carry.hidden @ params.w_h)
        if with_gates:
            return RNNState(h), h, {"hidden": h}
        return RNNState(h), h

    return make_cell(name="rnn", options=dict(hidden_size=H, activation=activation),
                     hidden_size=H, output_size=H, init=init, init_carry=init_carry,
                     project=project, recur_impl=recur_impl)
