"""Sequence layers built from cells: ``layer``, ``stack`` and ``bidirectional``.

A :class:`Layer` is the cell contract one level up, combinable like ``stax.serial``:

* ``init(key, input_size, *, dtype=jnp.float32) -> params``
* ``apply(params, xs, carry=None, *, lengths=None, key=None) -> (ys, carry)``
* ``init_carry(params, batch_shape=()) -> carry``

``xs`` is ``[..., T, I]`` (or ``[T, ..., I]`` for a time-major layer) and ``ys`` is
``[..., T, output_size]``. ``key`` is only consumed by dropout: without it a layer is
deterministic (evaluation mode).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from lstm_jax import _checks
from lstm_jax.cell import Cell
from lstm_jax.unroll import unroll as _unroll

Array = jax.Array

MERGES: Mapping[str, Callable[[Array, Array], Array]] = {
    "concat": lambda a, b: jnp.concatenate([a, b], axis=-1),
    "sum": lambda a, b: a + b,
    "mean": lambda a, b: (a + b) / 2,
    "mul": lambda a, b: a * b,
}


class Layer(NamedTuple):
    """A sequence layer: pure functions plus static facts about it.

    Attributes:
      init: ``init(key, input_size, *, dtype=jnp.float32) -> params``.
      apply: ``apply(params, xs, carry=None, *, lengths=None, key=None) -> (ys, carry)``.
      init_carry: ``init_carry(params, batch_shape=()) -> carry`` of zeros.
      output_size: the last axis of ``ys``.
      reverse: whether the layer reads its sequence backwards.
      time_major: whether ``xs``/``ys`` have time first.
      spec: what the layer is made of (``{"kind": "layer"|"stack"|"bidirectional", ...}``),
        for interop and ``repr``.
    """

    init: Callable[..., Any]
    apply: Callable[..., tuple[Array, Any]]
    init_carry: Callable[..., Any]
    output_size: int
    reverse: bool
    time_major: bool
    spec: Mapping[str, Any]


class BidirectionalParams(NamedTuple):
    forward: Any
    backward: Any


class BidirectionalCarry(NamedTuple):
    forward: Any
    backward: Any


def layer(cell: Cell, *, reverse: bool = False, time_major: bool = False, unroll: int | bool = 1) -> Layer:
    """A sequence layer that unrolls one cell (see :func:`lstm_jax.unroll`).

    Args:
      cell: the :class:`~lstm_jax.Cell`.
      reverse: read each sequence backwards (within its length when ``lengths`` is given).
      time_major: ``xs`` is ``[T, ..., I]`` instead of ``[..., T, I]``.
      unroll: ``lax.scan`` unroll factor.

    Returns:
      A :class:`Layer` whose params are the cell's params and whose carry is the cell's carry;
      ``apply(params, xs[..., T, I]) -> (ys[..., T, O], carry)``.
    """
    if not isinstance(cell, Cell):
        raise TypeError(f"`cell` must be a lstm_jax Cell (e.g. lstm_jax.lstm(64)), got {type(cell).__name__}.")

    def apply(params, xs, carry=None, *, lengths=None, key=None):
        del key  # a single cell has no dropout
        return _unroll(cell, params, xs, carry, lengths=lengths, reverse=reverse,
                       time_major=time_major, unroll=unroll)

    return Layer(init=cell.init, apply=apply, init_carry=cell.init_carry,
                 output_size=cell.output_size, reverse=reverse, time_major=time_major,
                 spec={"kind": "layer", "cell": cell, "unroll": unroll})


def _as_layer(x: Cell | Layer, name: str, *, reverse: bool = False, time_major: bool = False) -> Layer:
    if isinstance(x, Layer):
        return x
    if isinstance(x, Cell):
        return layer(x, reverse=reverse, time_major=time_major)
    raise TypeError(f"`{name}` must be a Cell or a Layer, got {type(x).__name__}.")


def _check_tuple(name: str, value: Any, n: int, what: str) -> None:
    if not isinstance(value, (tuple, list)) or len(value) != n:
        got = f"a {type(value).__name__} of length {len(value)}" if isinstance(value, (tuple, list)) \
            else type(value).__name__
        raise ValueError(f"`{name}` must be a tuple of {n} per-layer {what} (one per stacked layer), got {got}.")


def dropout(key: Array, xs: Array, rate: float) -> Array:
    """Inverted dropout: zeroes each entry with probability ``rate`` and scales the rest by
    ``1 / (1 - rate)`` so the expectation is unchanged. ``xs`` is any shape."""
    keep = jax.random.bernoulli(key, 1.0 - rate, xs.shape)
    return jnp.where(keep, xs / (1.0 - rate), jnp.zeros_like(xs))


def stack(layers: Sequence[Cell | Layer], *, dropout_rate: float = 0.0, time_major: bool = False) -> Layer:
    """Layers applied one after another, with dropout *between* them (Zaremba et al. 2014).

    Args:
      layers: cells (wrapped with :func:`layer`) or layers; all must share ``time_major``.
      dropout_rate: probability of zeroing each entry of the sequence passed from one layer to
        the next (not after the last). Applied only when ``apply`` is given a ``key``.
      time_major: layout for the cells given as :class:`Cell` (layers keep their own).

    Returns:
      A :class:`Layer` whose params and carry are tuples with one entry per layer.
    """
    if isinstance(layers, (Cell, Layer)):
        raise TypeError(f"`layers` must be a list of cells or layers, got a single {type(layers).__name__}; "
                        "wrap it in a list: stack([...]).")
    layers = tuple(_as_layer(x, f"layers[{i}]", time_major=time_major) for i, x in enumerate(layers))
    if not layers:
        raise ValueError("`layers` must contain at least one cell or layer.")
    if isinstance(dropout_rate, bool) or not isinstance(dropout_rate, (int, float)) or not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"`dropout_rate` must lie in [0, 1), got {dropout_rate!r}.")
    if len({l.time_major for l in layers}) != 1:
        raise ValueError("`layers` must all share one `time_major` setting.")
    n = len(layers)

    def init(key, input_size, *, dtype=jnp.float32):
        input_size = _checks.positive_int("input_size", input_size)
        params = []
        for l, k in zip(layers, jax.random.split(key, n)):
            params.append(l.init(k, input_size, dtype=dtype))
            input_size = l.output_size
        return tuple(params)

    def init_carry(params, batch_shape=()):
        _check_tuple("params", params, n, "parameters")
        return tuple(l.init_carry(p, batch_shape) for l, p in zip(layers, params))

    def apply(params, xs, carry=None, *, lengths=None, key=None):
        _check_tuple("params", params, n, "parameters")
        if carry is None:
            carry = (None,) * n
        _check_tuple("carry", carry, n, "carries")
        keys = jax.random.split(key, 2 * n) if key is not None else [None] * (2 * n)
        new_carry = []
        for i, (l, p, c) in enumerate(zip(layers, params, carry)):
            if i > 0 and dropout_rate > 0.0 and key is not None:
                xs = dropout(keys[2 * i], xs, dropout_rate)
            xs, c = l.apply(p, xs, c, lengths=lengths, key=keys[2 * i + 1])
            new_carry.append(c)
        return xs, tuple(new_carry)

    return Layer(init=init, apply=apply, init_carry=init_carry, output_size=layers[-1].output_size,
                 reverse=False, time_major=layers[0].time_major,
                 spec={"kind": "stack", "layers": layers, "dropout_rate": dropout_rate})


def bidirectional(fwd: Cell | Layer, bwd: Cell | Layer, *, merge: str = "concat",
                  time_major: bool = False) -> Layer:
    """Runs one layer forwards and one backwards over the same sequence and merges the outputs.

    With ``lengths``, the backward layer reverses each sequence within its own length, so a
    padded batch gives the same outputs as each sequence alone.

    Args:
      fwd: the forward cell or layer.
      bwd: the backward cell (wrapped to run in reverse) or a layer built with ``reverse=True``.
      merge: ``"concat"`` (output ``O_f + O_b``), ``"sum"``, ``"mean"`` or ``"mul"``
        (these need ``O_f == O_b``).
      time_major: layout for arguments given as :class:`Cell`.

    Returns:
      A :class:`Layer` with :class:`BidirectionalParams` and :class:`BidirectionalCarry`.
    """
    merge_fn = MERGES[_checks.choice("merge", merge, MERGES)]
    fwd = _as_layer(fwd, "fwd", time_major=time_major)
    bwd = _as_layer(bwd, "bwd", reverse=True, time_major=time_major)
    if fwd.reverse or not bwd.reverse:
        raise ValueError("`fwd` must read forwards and `bwd` backwards: pass cells, or "
                         "`layer(cell)` and `layer(cell, reverse=True)`.")
    if fwd.time_major != bwd.time_major:
        raise ValueError("`fwd` and `bwd` must share one `time_major` setting.")
    if merge != "concat" and fwd.output_size != bwd.output_size:
        raise ValueError(f"merge={merge!r} needs equal output sizes, got {fwd.output_size} and {bwd.output_size}.")
    output_size = fwd.output_size + bwd.output_size if merge == "concat" else fwd.output_size

    def init(key, input_size, *, dtype=jnp.float32):
        kf, kb = jax.random.split(key)
        return BidirectionalParams(fwd.init(kf, input_size, dtype=dtype), bwd.init(kb, input_size, dtype=dtype))

    def init_carry(params, batch_shape=()):
        return BidirectionalCarry(fwd.init_carry(params.forward, batch_shape),
                                  bwd.init_carry(params.backward, batch_shape))

    def apply(params, xs, carry=None, *, lengths=None, key=None):
        if not isinstance(params, BidirectionalParams):
            raise TypeError(f"`params` must be BidirectionalParams (from this layer's init), got {type(params).__name__}.")
        carry = carry if carry is not None else BidirectionalCarry(None, None)
        kf, kb = jax.random.split(key) if key is not None else (None, None)
        ys_f, c_f = fwd.apply(params.forward, xs, carry[0], lengths=lengths, key=kf)
        ys_b, c_b = bwd.apply(params.backward, xs, carry[1], lengths=lengths, key=kb)
        return merge_fn(ys_f, ys_b), BidirectionalCarry(c_f, c_b)

    return Layer(init=init, apply=apply, init_carry=init_carry, output_size=output_size,
                 reverse=False, time_major=fwd.time_major,
                 spec={"kind": "bidirectional", "forward": fwd, "backward": bwd, "merge": merge})
