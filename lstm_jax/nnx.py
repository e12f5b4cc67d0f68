"""Flax NNX modules over the functional core: :class:`RNN` and :class:`Bidirectional`.

``lstm_jax.nnx.RNN(lj.lstm(H), in_features, rngs=rngs)`` is a drop-in for
``flax.nnx.RNN(flax.nnx.OptimizedLSTMCell(in_features, H, rngs=rngs))``, with the same call
(``rnn(xs, initial_carry=..., seq_lengths=..., return_carry=...)``, batch-first by default)
for every lstm_jax cell, layer, stack or bidirectional layer. Its parameters are the
cell's params NamedTuple with :class:`flax.nnx.Param` leaves (``rnn.params.w_x``), so
``nnx.Optimizer(model, tx, wrt=nnx.Param)``, ``nnx.jit``, ``nnx.split``/``merge``,
``nnx.state`` and Orbax checkpoints of the NNX state work as for any Flax module; the cell
or layer is a static, hashable field (``rnn.layer``).

Where we differ from Flax (see :class:`RNN`): carries are the cell's own NamedTuples
(``LSTMState(hidden, cell)``, where Flax's LSTM carry is ``(c, h)``); outputs past
``seq_lengths`` are zeros (Flax leaves whatever the cell computed on the padding); the
initial carry is zeros or the learned one (there is no ``carry_init``).

:func:`values` turns ``rnn.params`` into plain arrays for the functional path
(``rnn.layer.apply(values(rnn.params), xs)``). What the NNX, Linen and Equinox modules
share lives in :mod:`lstm_jax._wrappers`.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx

from lstm_jax import _checks
from lstm_jax._wrappers import (
    as_layer,
    both_directions,
    concatenate,
    first_given,
    initial_params,
    reading_order,
    relaid,
    stochastic,
    time_axis,
)
from lstm_jax.cell import Cell
from lstm_jax.layers import Layer

Array = jax.Array

__all__ = ["Bidirectional", "RNN", "values"]


class RNN(nnx.Module):
    """An lstm_jax cell or layer over a sequence, as a Flax NNX module (``flax.nnx.RNN``'s call).

    Shapes: ``inputs`` are ``[..., T, I]`` (``[T, ..., I]`` time-major; ``...`` is any batch
    shape, including none), outputs are ``[..., T, O]`` with ``O = layer.output_size``, and
    carry leaves are ``[..., *]``.

    Attributes:
      layer: the static :class:`~lstm_jax.Layer` (a cell given to the constructor is wrapped
        with :func:`lstm_jax.layer` and the layer options below).
      params: the layer's params NamedTuple (``LSTMParams(w_x, w_h, b, ...)``; tuples for a
        stack, ``BidirectionalParams``, ``LearnedCarryParams``) with ``nnx.Param`` leaves.
      in_features: ``I``.
      return_carry, keep_order: call defaults, as in ``flax.nnx.RNN``.
      deterministic: NNX's train/eval switch for the layer's randomness (stack dropout,
        cells that draw noise): ``model.train()`` sets it False, ``model.eval()`` True.
      rngs: the ``rng_collection`` stream dropout keys come from (None when the layer has no
        randomness).
    """

    def __init__(
        self,
        cell: Cell | Layer,
        in_features: int,
        *,
        rngs: nnx.Rngs,
        dtype: Any = None,
        params: Any = None,
        time_major: bool = False,
        return_carry: bool = False,
        reverse: bool = False,
        keep_order: bool = False,
        unroll: int | bool | str = "auto",
        impl: str = "auto",
        remat_chunk: int | None = None,
        learn_initial_carry: bool = False,
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
    ):
        """Builds the module and initialises its parameters.

        Args:
          cell: an lstm_jax :class:`~lstm_jax.Cell` (``lj.lstm(64)``, any registered cell) or
            :class:`~lstm_jax.Layer` (``lj.layer``, ``lj.stack``, ``lj.bidirectional``).
          in_features: ``I``, the size of the inputs' last axis.
          rngs: ``nnx.Rngs``; the ``params`` stream initialises the parameters (with the
            cell's own initialisers: :func:`lstm_jax.layer`'s ``init``), the
            ``rng_collection`` stream (falling back to ``default``, as NNX does) gives dropout
            keys when the layer has randomness.
          dtype: the parameters' dtype (default float32, or that of ``params``), which is
            also the computation's: inputs must have it (lstm_jax does not promote silently).
          params: start from these params instead (from ``layer.init``, the functional path,
            or :mod:`lstm_jax.interop`); checked against the layer's ``init`` at
            ``in_features`` and ``dtype``.
          time_major, reverse, unroll, impl, remat_chunk, learn_initial_carry: the options of
            :func:`lstm_jax.layer`, for a cell (a layer carries its own).
          return_carry: return ``(carry, ys)`` instead of ``ys`` (Flax's order).
          keep_order: with ``reverse``, return the outputs in input order; by default they
            come in reading order (reversed), as ``flax.nnx.RNN`` returns them.
          deterministic: True turns the layer's randomness off (evaluation); False (NNX's
            default, as ``nnx.Dropout``) draws it from ``rngs``.
          rng_collection: the ``rngs`` stream for dropout keys.

        Raises:
          TypeError: ``cell`` is neither a Cell nor a Layer; ``rngs`` is not an ``nnx.Rngs``;
            ``dtype`` not floating; ``params`` of another structure or dtype.
          ValueError: ``in_features`` not a positive int; layer options given with a Layer;
            ``params`` of the wrong shapes.
        """
        self.layer = as_layer(cell, reverse=reverse, time_major=time_major, unroll=unroll, impl=impl,
                              remat_chunk=remat_chunk, learn_initial_carry=learn_initial_carry)
        self.in_features = _checks.positive_int("in_features", in_features)
        if not isinstance(rngs, nnx.Rngs):
            raise TypeError(f"`rngs` must be an nnx.Rngs (e.g. nnx.Rngs(0)), got {type(rngs).__name__}.")
        params = initial_params(self.layer, self.in_features, dtype, params, rngs.params)
        self.params = nnx.data(jax.tree.map(nnx.Param, params))
        self.return_carry = _checks.boolean("return_carry", return_carry)
        self.keep_order = _checks.boolean("keep_order", keep_order)
        self.deterministic = deterministic
        self.rng_collection = rng_collection
        self.rngs = rngs[rng_collection].fork() if stochastic(self.layer) else nnx.data(None)

    def __call__(
        self,
        inputs: Any,
        *,
        initial_carry: Any = None,
        seq_lengths: Array | None = None,
        resets: Array | None = None,
        return_carry: bool | None = None,
        time_major: bool | None = None,
        reverse: bool | None = None,
        keep_order: bool | None = None,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | nnx.RngStream | Array | None = None,
    ):
        """Runs the layer over ``inputs`` (arguments left None take the module's settings).

        Args:
          inputs: ``[..., T, I]`` (``[T, ..., I]`` time-major), in the params' dtype; a
            pytree for composite cells, as in :func:`lstm_jax.unroll`.
          initial_carry: the carry to start from (leaves ``[..., *]``, the cell's NamedTuple,
            e.g. ``LSTMState(hidden, cell)``); default zeros, or the learned initial carry.
          seq_lengths: ``[...]`` integer lengths: steps past them keep the carry and output
            zeros, and the returned carry is each sequence's last valid one.
          resets: ``[..., T]`` bool (``[T, ...]`` time-major), True where a new segment
            starts: the carry restarts there (see :func:`lstm_jax.unroll`). Not in Flax.
          return_carry: return ``(carry, ys)``.
          time_major: the layout of ``inputs`` and outputs.
          reverse: read backwards (within each length); a single layer only.
          keep_order: with ``reverse``, outputs in input order instead of reading order.
          deterministic: overrides the module's ``deterministic``.
          rngs: dropout keys from this ``Rngs`` (its ``rng_collection`` stream), this
            stream (if tagged ``rng_collection``; others, such as the ``carry`` stream that
            ``flax.nnx.Bidirectional`` passes, are ignored) or this key, instead of the
            module's stream.

        Returns:
          ``ys [..., T, O]``, or ``(carry, ys)`` with ``return_carry``.
        """
        layer = relaid(self.layer, time_major=first_given(time_major, self.layer.time_major),
                       reverse=first_given(reverse, self.layer.reverse))
        key = self._dropout_key(layer, first_given(deterministic, self.deterministic), rngs)
        ys, carry = layer.apply(values(self.params), inputs, initial_carry, lengths=seq_lengths, resets=resets,
                                key=key)
        if layer.reverse and not first_given(keep_order, self.keep_order):
            ys = reading_order(ys, seq_lengths, time_axis(inputs, layer.time_major))
        return (carry, ys) if first_given(return_carry, self.return_carry) else ys

    def initialize_carry(self, batch_shape: int | tuple[int, ...] = ()) -> Any:
        """The carry a sequence starts from: zeros (or the learned one), leaves ``[*batch_shape, *]``.

        Unlike a Flax cell's ``initialize_carry(input_shape, rngs)``, this takes the batch
        shape only (the input size is known) and needs no key.
        """
        return self.layer.init_carry(values(self.params), _checks.batch_shape(batch_shape))

    def step(self, carry: Any, x: Any) -> tuple[Any, Any]:
        """One step, ``(carry, x [..., I]) -> (carry, y [..., O])``, like calling a Flax cell
        (for generation; forward layers and stacks only, dropout off)."""
        return self.layer.step(values(self.params), carry, x)

    def set_view(self, deterministic: bool | None = None):
        """For ``nnx.view(model, deterministic=...)``."""
        if deterministic is not None:
            self.deterministic = deterministic

    def _dropout_key(self, layer: Layer, deterministic: bool | None, rngs: Any) -> Array | None:
        """The key for ``layer.apply``: None when it draws nothing or in evaluation mode."""
        if not stochastic(layer):
            return None
        if deterministic is None:
            raise ValueError(f"{layer!r} draws random numbers (dropout), so `deterministic` must be set: at "
                             "construction, at the call, or by model.train() / model.eval().")
        if deterministic:
            return None
        if isinstance(rngs, nnx.RngStream) and rngs.tag != self.rng_collection:
            rngs = None  # another purpose's stream (flax.nnx.Bidirectional passes its 'carry' stream)
        rngs = first_given(rngs, self.rngs)
        if isinstance(rngs, nnx.Rngs):
            return rngs[self.rng_collection]()
        if isinstance(rngs, nnx.RngStream):
            return rngs()
        return _checks.prng_key("rngs", rngs)


class Bidirectional(nnx.Module):
    """Two RNN modules over one sequence, outputs merged (``flax.nnx.Bidirectional``'s call).

    ``forward_rnn`` reads forwards, ``backward_rnn`` backwards (each within its length, its
    outputs in input order); the carry is ``(forward carry, backward carry)``. Either half
    may be an :class:`RNN` over a single layer or a ``flax.nnx.RNN``. (``RNN(lj.bidirectional(
    fwd, bwd))`` is the same model as one layer, with ``BidirectionalParams``.)
    """

    def __init__(
        self,
        forward_rnn: nnx.Module,
        backward_rnn: nnx.Module,
        *,
        merge_fn: Callable[[Array, Array], Array] = concatenate,
        time_major: bool = False,
        return_carry: bool = False,
    ):
        """Args:
          forward_rnn, backward_rnn: the halves (modules with ``flax.nnx.RNN``'s call).
          merge_fn: ``(ys_forward [..., T, O_f], ys_backward [..., T, O_b]) -> ys``; default
            concatenation on the last axis.
          time_major, return_carry: call defaults.
        """
        self.forward_rnn = forward_rnn
        self.backward_rnn = backward_rnn
        self.merge_fn = merge_fn
        self.time_major = _checks.boolean("time_major", time_major)
        self.return_carry = _checks.boolean("return_carry", return_carry)

    def __call__(self, inputs: Any, *, initial_carry: tuple[Any, Any] | None = None,
                 seq_lengths: Array | None = None, resets: Array | None = None, return_carry: bool | None = None,
                 time_major: bool | None = None, deterministic: bool | None = None, rngs: Any = None):
        """``inputs [..., T, I] -> ys [..., T, O]`` (or ``((carry_f, carry_b), ys)`` with
        ``return_carry``); the arguments as in :meth:`RNN.__call__`."""
        return both_directions(self.forward_rnn, self.backward_rnn, self.merge_fn, inputs,
                               first_given(return_carry, self.return_carry), initial_carry,
                               time_major=first_given(time_major, self.time_major), seq_lengths=seq_lengths,
                               resets=resets, deterministic=deterministic, rngs=rngs)


def values(tree: Any) -> Any:
    """``tree`` with its ``nnx.Variable`` leaves replaced by their arrays."""
    return jax.tree.map(lambda v: v[...], tree, is_leaf=lambda x: isinstance(x, nnx.Variable))
