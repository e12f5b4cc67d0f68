"""Flax Linen modules over the functional core: :class:`RNN` and :class:`Bidirectional`.

``lstm_jax.linen.RNN(lj.lstm(H))`` is a drop-in for ``flax.linen.RNN(nn.LSTMCell(H))``
with the same call, and works inside ``flax.linen.Bidirectional`` too. Its parameters live
in the ``params`` collection under the params NamedTuple's field names
(``{"params": {"w_x": [I, 4H], "w_h": [H, 4H], "b": [4H]}}``; a stack's layers under
``layers_0``, ``layers_1``, ...; ``forward``/``backward`` for a bidirectional layer).
Differences from Flax are those of :mod:`lstm_jax.nnx`: the cell's own carry NamedTuples,
zeros past ``seq_lengths``, zeros (or a learned carry) to start from.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from flax import linen as nn

from lstm_jax import _checks
from lstm_jax.cell import Cell
from lstm_jax.layers import BidirectionalConfig, Layer, LayerConfig, StackConfig
from lstm_jax._wrappers import as_layer, both_directions, concatenate, reading_order, relaid, stochastic, time_axis

Array = jax.Array

__all__ = ["Bidirectional", "RNN", "from_collection", "to_collection"]


class RNN(nn.Module):
    """An lstm_jax cell or layer over a sequence, as a Linen module (``flax.linen.RNN``'s call).

    Shapes: ``inputs`` ``[..., T, I]`` (``[T, ..., I]`` time-major), outputs ``[..., T, O]``,
    carry leaves ``[..., *]``. ``I`` is read from the inputs at ``init``.

    Attributes:
      cell: an lstm_jax :class:`~lstm_jax.Cell` (any registered cell) or
        :class:`~lstm_jax.Layer` (``lj.layer``, ``lj.stack``, ``lj.bidirectional``); static.
      time_major, return_carry, reverse, keep_order, unroll: as in ``flax.linen.RNN``
        (``reverse`` and ``keep_order=False`` return the outputs in reading order, as Flax
        does). ``time_major``, ``reverse``, ``unroll``, ``impl``, ``remat_chunk`` and
        ``learn_initial_carry`` are :func:`lstm_jax.layer`'s options, for a cell (a layer
        carries its own, and others are refused).
      dtype: the parameters' dtype, which is also the computation's; default: the dtype of
        the inputs at ``init`` (later inputs must have it).
      deterministic: turns the layer's randomness (stack dropout, cells that draw noise) off;
        as for ``nn.Dropout``, give it here or at the call (not both) when the layer has
        any. Keys come from the ``rng_collection`` stream (``rngs={"dropout": key}``).
    """

    cell: Cell | Layer
    time_major: bool = False
    return_carry: bool = False
    reverse: bool = False
    keep_order: bool = False
    unroll: int | bool | str = "auto"
    impl: str = "auto"
    remat_chunk: int | None = None
    learn_initial_carry: bool = False
    dtype: Any = None
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    @property
    def layer(self) -> Layer:
        """The :class:`~lstm_jax.Layer` this module runs."""
        return as_layer(self.cell, reverse=self.reverse, time_major=self.time_major, unroll=self.unroll,
                        impl=self.impl, remat_chunk=self.remat_chunk, learn_initial_carry=self.learn_initial_carry)

    @nn.compact
    def __call__(
        self,
        inputs: Any,
        *,
        initial_carry: Any = None,
        init_key: Array | None = None,
        seq_lengths: Array | None = None,
        resets: Array | None = None,
        return_carry: bool | None = None,
        time_major: bool | None = None,
        reverse: bool | None = None,
        keep_order: bool | None = None,
        deterministic: bool | None = None,
    ):
        """Runs the layer over ``inputs``; arguments left None take the module's attributes.

        Args:
          inputs: ``[..., T, I]`` (``[T, ..., I]`` time-major), in ``dtype``; a pytree for
            composite cells.
          initial_carry: the cell's carry NamedTuple (``LSTMState(hidden, cell)``, leaves
            ``[..., *]``); default zeros (or the learned initial carry).
          init_key: accepted for Flax's signature (``nn.Bidirectional`` passes it) and
            ignored: initial carries are zeros or learned, never random.
          seq_lengths: ``[...]`` integer lengths; steps past them keep the carry and output
            zeros; the returned carry is each sequence's last valid one.
          resets: ``[..., T]`` bool (``[T, ...]`` time-major), True where a new segment
            starts (see :func:`lstm_jax.unroll`). Not in Flax.
          return_carry, time_major, reverse, keep_order: override the attributes.
          deterministic: see the attribute.

        Returns:
          ``ys [..., T, O]``, or ``(carry, ys)`` with ``return_carry``.
        """
        del init_key
        base = self.layer
        layer = relaid(base, time_major=self.time_major if time_major is None else time_major,
                       reverse=self.reverse if reverse is None else reverse)
        first = jax.tree.leaves(inputs)[0]
        in_features = first.shape[-1]
        dtype = _checks.floating_dtype("dtype", first.dtype if self.dtype is None else self.dtype)
        init = lambda key: base.init(key, in_features, dtype=dtype)
        template = jax.eval_shape(init, jax.random.key(0))
        names = list(to_collection(template))
        full = None
        if self.is_mutable_collection("params") and not all(self.has_variable("params", n) for n in names):
            full = to_collection(init(self.make_rng("params")))  # one key for all fields, as layer.init
        # existing params are shape-checked by Linen against init at this input size
        tree = {n: self.param(n, lambda key, n=n: (full if full is not None else to_collection(init(key)))[n])
                for n in names}
        key = None
        if stochastic(layer) and not nn.merge_param("deterministic", self.deterministic, deterministic):
            key = self.make_rng(self.rng_collection)
        ys, carry = layer.apply(from_collection(template, tree), inputs, initial_carry, lengths=seq_lengths,
                                resets=resets, key=key)
        if layer.reverse and not (self.keep_order if keep_order is None else keep_order):
            ys = reading_order(ys, seq_lengths, time_axis(inputs, layer.time_major))
        return (carry, ys) if (self.return_carry if return_carry is None else return_carry) else ys

    def initialize_carry(self, batch_shape: int | tuple[int, ...] = ()) -> Any:
        """The carry a sequence starts from (zeros, or the learned one), leaves
        ``[*batch_shape, *]``; needs the params: ``model.apply(variables, (B,),
        method="initialize_carry")``."""
        base = self.layer
        template = jax.eval_shape(lambda k: base.init(k, _some_input_size(base)),
                                  jax.random.key(0))  # the structure, which depends on neither I nor dtype
        params = from_collection(template, self.variables.get("params", {}))
        return base.init_carry(params, _checks.batch_shape(batch_shape))


class Bidirectional(nn.Module):
    """Two RNN modules over one sequence, outputs merged (``flax.linen.Bidirectional``'s call,
    plus ``resets`` and ``deterministic``). The carry is ``(forward carry, backward carry)``.
    ``RNN(lj.bidirectional(fwd, bwd))`` is the same model as one layer.

    Attributes:
      forward_rnn, backward_rnn: the halves (:class:`RNN` over a single layer, or
        ``flax.linen.RNN``).
      merge_fn: ``(ys_f [..., T, O_f], ys_b [..., T, O_b]) -> ys``; default concatenation.
      time_major, return_carry: call defaults.
    """

    forward_rnn: nn.Module
    backward_rnn: nn.Module
    merge_fn: Callable[[Array, Array], Array] = concatenate
    time_major: bool = False
    return_carry: bool = False

    def __call__(self, inputs: Any, *, initial_carry: tuple[Any, Any] | None = None, init_key: Array | None = None,
                 seq_lengths: Array | None = None, resets: Array | None = None, return_carry: bool | None = None,
                 time_major: bool | None = None, reverse: bool | None = None, keep_order: bool | None = None,
                 deterministic: bool | None = None):
        """``inputs [..., T, I] -> ys [..., T, O]`` (or ``((carry_f, carry_b), ys)``);
        ``reverse`` and ``keep_order`` are ignored, as in Flax."""
        del init_key, reverse, keep_order
        return both_directions(self.forward_rnn, self.backward_rnn, self.merge_fn, inputs,
                               self.return_carry if return_carry is None else return_carry, initial_carry,
                               time_major=self.time_major if time_major is None else time_major,
                               seq_lengths=seq_lengths, resets=resets, deterministic=deterministic)


# ------------------------------------------------------------------------------ params layout

def to_collection(params: Any) -> dict[str, Any]:
    """Params as the nested dict Linen stores: NamedTuple fields by name (None fields left
    out), tuple entries (a stack's layers) as ``layers_0``, ``layers_1``, ..."""
    if hasattr(params, "_fields"):
        return {f: to_collection(v) for f, v in zip(params._fields, params) if v is not None}
    if isinstance(params, tuple):
        return {f"layers_{i}": to_collection(v) for i, v in enumerate(params)}
    return params


def from_collection(template: Any, tree: Any) -> Any:
    """The inverse of :func:`to_collection`: ``tree``'s arrays in ``template``'s structure."""
    if hasattr(template, "_fields"):
        return type(template)(*(None if v is None else from_collection(v, tree[f])
                                for f, v in zip(template._fields, template)))
    if isinstance(template, tuple):
        return tuple(from_collection(v, tree[f"layers_{i}"]) for i, v in enumerate(template))
    return tree


def _some_input_size(layer: Layer) -> int:
    """An input size the layer accepts (``H`` of its first cell: MUT1/2 need ``I == H``)."""
    config = layer.config
    if isinstance(config, LayerConfig):
        return config.cell.hidden_size
    if isinstance(config, StackConfig):
        return _some_input_size(config.layers[0])
    if isinstance(config, BidirectionalConfig):
        return _some_input_size(config.forward)
    raise TypeError(f"cannot tell an input size for {layer!r}.")
