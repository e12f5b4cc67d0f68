"""Small task models: a sequence layer followed by a linear readout."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from lstm_jax import _checks
from lstm_jax.cell import Cell
from lstm_jax.layers import Layer, layer

Array = jax.Array


class ReadoutParams(NamedTuple):
    body: Any  # the sequence layer's params
    w: Array  # [O, K]
    b: Array  # [K]


class Model(NamedTuple):
    """``init(key, input_size, *, dtype) -> params``; ``apply(params, xs, *, lengths=None,
    key=None) -> predictions``."""

    init: Callable[..., ReadoutParams]
    apply: Callable[..., Array]


def readout(body: Cell | Layer, output_size: int, *, at: str = "last") -> Model:
    """A sequence layer with a linear map from its outputs to ``K = output_size`` values.

    Args:
      body: a cell (wrapped with :func:`~lstm_jax.layer`) or a layer; batch-first.
      output_size: ``K``.
      at: ``"last"`` reads the output at each sequence's last valid step (``lengths - 1``,
        or ``T - 1``) giving ``[..., K]``; ``"every"`` reads every step, ``[..., T, K]``.

    Returns:
      A :class:`Model`. The readout weights start at Lecun-normal, the bias at zero.
    """
    body = layer(body) if isinstance(body, Cell) else body
    if not isinstance(body, Layer):
        raise TypeError(f"`body` must be a Cell or a Layer, got {type(body).__name__}.")
    if body.time_major:
        raise ValueError("`body` must be batch-first (time_major=False).")
    K = _checks.positive_int("output_size", output_size)
    _checks.choice("at", at, ("last", "every"))

    def init(key, input_size, *, dtype=jnp.float32):
        kb, kw = jax.random.split(key)
        return ReadoutParams(
            body=body.init(kb, input_size, dtype=dtype),
            w=jax.nn.initializers.lecun_normal()(kw, (body.output_size, K), dtype),
            b=jnp.zeros((K,), dtype),
        )

    def apply(params, xs, *, lengths=None, key=None):
        ys, _ = body.apply(params.body, xs, lengths=lengths, key=key)  # [..., T, O]
        if at == "last":
            T = ys.shape[-2]
            last = (jnp.full(ys.shape[:-2], T - 1, jnp.int32) if lengths is None
                    else jnp.maximum(lengths.astype(jnp.int32) - 1, 0))
            ys = jnp.take_along_axis(ys, last[..., None, None], axis=-2)[..., 0, :]  # [..., O]
        return ys @ params.w + params.b

    return Model(init=init, apply=apply)
