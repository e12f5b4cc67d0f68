"""Small task models: a sequence layer followed by a linear readout."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from lstm_jax import _checks
from lstm_jax.cell import Cell, static_pytree
from lstm_jax.layers import Layer, layer

Array = jax.Array


class ReadoutParams(NamedTuple):
    """Params of :func:`readout`: the body's, then the linear map."""

    body: Any  # the sequence layer's params
    w: Array  # [O, K]
    b: Array  # [K]


@static_pytree
class Model(NamedTuple):
    """A sequence layer with a linear readout: what :func:`readout` returns.

    Attributes:
      body: the :class:`~lstm_jax.Layer` that reads the sequence.
      output_size: ``K``, the size of each prediction.
      at: ``"last"`` or ``"every"`` (see :func:`readout`).
      init: ``init(key, input_size, *, dtype=jnp.float32) -> ReadoutParams``.
      apply: ``apply(params, xs, *, lengths=None, resets=None, key=None, return_gates=False)
        -> predictions``, or ``(predictions, gates)`` with ``return_gates``.

    Models compare and hash by ``(body, output_size, at)``, like layers by their config.
    """

    body: Layer
    output_size: int
    at: str
    init: Callable[..., ReadoutParams]
    apply: Callable[..., Any]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Model) and (self.body, self.output_size, self.at) == \
            (other.body, other.output_size, other.at)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((Model, self.body, self.output_size, self.at))

    def __repr__(self) -> str:
        return f"readout({self.body!r}, {self.output_size}, at={self.at!r})"


def readout(body: Cell | Layer, output_size: int, *, at: str = "last") -> Model:
    r"""A sequence layer with a linear map from its outputs to ``K = output_size`` values.

    .. math::

        \hat y = y_{t^*} W + b \;\; (t^* = \mathrm{lengths} - 1 \text{ or } T - 1; \ \texttt{at="last"}),
        \qquad \hat y_t = y_t W + b \;\; (\texttt{at="every"})

    Args:
      body: a cell (wrapped with :func:`~lstm_jax.layer`) or a layer; batch-first.
      output_size: ``K``.
      at: ``"last"`` reads the output at each sequence's last valid step (``lengths - 1``,
        or ``T - 1``) giving ``[..., K]``; ``"every"`` reads every step, ``[..., T, K]``.

    Returns:
      A :class:`Model`. The readout weights start at Lecun-normal, the bias at zero.
      ``apply(params, xs[..., T, I], *, lengths=None, resets=None, key=None,
      return_gates=False)`` passes ``lengths``, ``resets`` and ``key`` (dropout) to the body;
      with ``return_gates`` it returns ``(predictions, gates)``, the gates being the body's
      (``{name: [..., T, H]}`` for a layer, a tuple of those for a stack, ``{"forward": ...,
      "backward": ...}`` for a bidirectional layer).

    Raises:
      TypeError: ``body`` is neither a cell nor a layer.
      ValueError: a time-major ``body``, a non-positive ``output_size`` or an unknown ``at``.
    """
    body = layer(body) if isinstance(body, Cell) else body
    if not isinstance(body, Layer):
        raise TypeError(f"`body` must be a Cell or a Layer, got {type(body).__name__}.")
    if body.time_major:
        raise ValueError("`body` must be batch-first (time_major=False).")
    K = _checks.positive_int("output_size", output_size)
    _checks.choice("at", at, ("last", "every"))

    def init(key, input_size, *, dtype=jnp.float32):
        kb, kw = jax.random.split(_checks.prng_key("key", key))
        return ReadoutParams(
            body=body.init(kb, input_size, dtype=dtype),
            w=jax.nn.initializers.lecun_normal()(kw, (body.output_size, K), dtype),
            b=jnp.zeros((K,), dtype),
        )

    def apply(params, xs, *, lengths=None, resets=None, key=None, return_gates=False):
        if not isinstance(params, ReadoutParams):
            raise TypeError(f"`params` must be ReadoutParams (from this model's init), got {type(params).__name__}.")
        out = body.apply(params.body, xs, lengths=lengths, resets=resets, key=key, return_gates=return_gates)
        ys = out[0]  # [..., T, O]
        if at == "last":
            T = ys.shape[-2]
            # lengths past T act as T (as in unroll): an index past T - 1 would read NaN fill
            last = (jnp.full(ys.shape[:-2], T - 1, jnp.int32) if lengths is None
                    else jnp.clip(jnp.asarray(lengths).astype(jnp.int32), 1, T) - 1)
            ys = jnp.take_along_axis(ys, last[..., None, None], axis=-2)[..., 0, :]  # [..., O]
        predictions = ys @ params.w + params.b
        return (predictions, out[2]) if return_gates else predictions

    return Model(body=body, output_size=K, at=at, init=init, apply=apply)
