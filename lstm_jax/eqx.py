"""An Equinox module over the functional core: :class:`RNN` (needs ``equinox``: the
``lstm_jax[equinox]`` extra).

``RNN(lj.lstm(H), in_features, key=key)`` holds the layer's params NamedTuple as a field
(``rnn.params.w_x``) and the cell or layer as a static field, so ``eqx.filter_jit``,
``eqx.filter_grad`` and Optax on ``eqx.filter(model, eqx.is_array)`` work as for any Equinox
module. The call follows :meth:`lstm_jax.Layer.apply`: ``rnn(xs) -> (ys, carry)``.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax

from lstm_jax import _checks
from lstm_jax.cell import Cell
from lstm_jax.layers import Layer
from lstm_jax._wrappers import as_layer, initial_params

Array = jax.Array

__all__ = ["RNN"]


class RNN(eqx.Module):
    """An lstm_jax cell or layer over a sequence, as an Equinox module.

    Shapes: ``xs`` ``[..., T, I]`` (``[T, ..., I]`` for a time-major layer; ``...`` is any
    batch shape, including none, so no ``jax.vmap`` is needed), ``ys`` ``[..., T, O]``, carry
    leaves ``[..., *]``.

    Attributes:
      params: the layer's params NamedTuple (``LSTMParams(w_x [I, 4H], w_h [H, 4H], b [4H],
        ...)``; tuples for a stack), the module's only arrays.
      layer: the static :class:`~lstm_jax.Layer`.
      inference: True turns the layer's randomness (stack dropout, cells that draw noise)
        off even when a key is given; ``eqx.nn.inference_mode(model)`` sets it.
    """

    params: Any
    layer: Layer = eqx.field(static=True)
    inference: bool = False

    def __init__(self, cell: Cell | Layer, in_features: int, *, key: Array, dtype: Any = None,
                 params: Any = None, inference: bool = False, **layer_options: Any):
        """Builds the module and initialises its parameters.

        Args:
          cell: an lstm_jax :class:`~lstm_jax.Cell` (any registered cell) or
            :class:`~lstm_jax.Layer` (``lj.layer``, ``lj.stack``, ``lj.bidirectional``).
          in_features: ``I``.
          key: initialises the parameters (with the cell's own initialisers).
          dtype: the parameters' dtype (default float32, or that of ``params``), which is
            also the computation's: inputs must have it.
          params: start from these params instead (checked against the layer's ``init``).
          inference: see the attribute.
          **layer_options: :func:`lstm_jax.layer`'s options (``reverse``, ``time_major``,
            ``impl``, ...), for a cell.

        Raises:
          TypeError: ``cell`` is neither a Cell nor a Layer, ``key`` is not a PRNG key,
            ``params`` of another structure or dtype.
          ValueError: ``in_features`` not a positive int, layer options given with a Layer,
            ``params`` of the wrong shapes.
        """
        self.layer = as_layer(cell, **layer_options)
        key = _checks.prng_key("key", key)
        self.params = initial_params(self.layer, _checks.positive_int("in_features", in_features), dtype, params,
                                     lambda: key)
        self.inference = _checks.boolean("inference", inference)

    def __call__(self, xs: Any, *, carry: Any = None, lengths: Array | None = None, resets: Array | None = None,
                 key: Array | None = None) -> tuple[Any, Any]:
        """``xs [..., T, I] -> (ys [..., T, O], carry)``, as :meth:`lstm_jax.Layer.apply`.

        Args:
          xs: inputs in the params' dtype (a pytree for composite cells).
          carry: the initial carry (the cell's NamedTuple); default zeros or the learned one.
          lengths: ``[...]`` integer lengths: past them the carry is kept and outputs are 0.
          resets: ``[..., T]`` bool, True where a new segment starts.
          key: draws dropout (training); None, or ``inference=True``, is deterministic.
        """
        key = None if self.inference else key
        return self.layer.apply(self.params, xs, carry, lengths=lengths, resets=resets, key=key)

    def init_carry(self, batch_shape: int | tuple[int, ...] = ()) -> Any:
        """The carry a sequence starts from, leaves ``[*batch_shape, *]``."""
        return self.layer.init_carry(self.params, _checks.batch_shape(batch_shape))

    def step(self, carry: Any, x: Any) -> tuple[Any, Any]:
        """One step, ``(carry, x [..., I]) -> (carry, y [..., O])`` (forward layers and stacks)."""
        return self.layer.step(self.params, carry, x)
