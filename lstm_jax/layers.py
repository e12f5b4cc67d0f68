"""Sequence layers built from cells: ``layer``, ``stack`` and ``bidirectional``.

A :class:`Layer` is a complete sequence model, combinable like ``stax.serial``:

* ``init(key, input_size, *, dtype=jnp.float32) -> params``
* ``init_carry(params, batch_shape=()) -> carry``
* ``apply(params, xs, carry=None, *, lengths=None, resets=None, reset_to=None, key=None,
  return_gates=False) -> (ys, carry)`` (``(ys, carry, gates)`` with ``return_gates``);
  ``reset_to`` is the carry ``resets`` restore, structured like ``carry``
* ``step(params, carry, x_t, *, return_gates=False) -> (carry, y_t[, gates])``: one step of a
  forward layer or stack (dropout off), for generation.

``xs`` is ``[..., T, I]`` (``[T, ..., I]`` for a time-major layer) and ``ys`` is
``[..., T, output_size]``. ``key`` is only consumed by dropout (and by cells that draw noise):
without it a layer is deterministic (evaluation mode). Layers compare and hash by their
config, which holds their cells, so a layer can be a ``jit`` static argument.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from lstm_jax import _checks
from lstm_jax.cell import Cell, compared_by_config
from lstm_jax.unroll import unroll as _unroll

Array = jax.Array

MERGES: Mapping[str, Callable[[Array, Array], Array]] = {
    "concat": lambda a, b: jnp.concatenate([a, b], axis=-1),
    "sum": lambda a, b: a + b,
    "mean": lambda a, b: (a + b) / 2,
    "mul": lambda a, b: a * b,
}


# ------------------------------------------------------------------------------ configs

@dataclasses.dataclass(frozen=True)
class LayerConfig:
    """:func:`layer`: one cell over a sequence, with :func:`lstm_jax.unroll`'s options."""

    cell: Cell
    reverse: bool = False
    time_major: bool = False
    unroll: int | str = "auto"  # steps per loop iteration, "all" (unroll=True: True == 1 would alias) or "auto"
    impl: str = "auto"
    remat_chunk: int | None = None
    learn_initial_carry: bool = False

    @property
    def output_size(self) -> int:
        return self.cell.output_size

    def __repr__(self) -> str:
        opts = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)[1:]
                if getattr(self, f.name) != f.default]
        return f"layer({', '.join([repr(self.cell)] + opts)})"


@dataclasses.dataclass(frozen=True)
class StackConfig:
    """:func:`stack`: layers one after another, dropout between them."""

    layers: tuple["Layer", ...]
    dropout_rate: float = 0.0

    @property
    def output_size(self) -> int:
        return self.layers[-1].output_size

    @property
    def time_major(self) -> bool:
        return self.layers[0].time_major

    @property
    def reverse(self) -> bool:
        return False

    def __repr__(self) -> str:
        rate = f", dropout_rate={self.dropout_rate!r}" if self.dropout_rate else ""
        return f"stack([{', '.join(map(repr, self.layers))}]{rate})"


@dataclasses.dataclass(frozen=True)
class BidirectionalConfig:
    """:func:`bidirectional`: a forward and a backward layer over the same sequence."""

    forward: "Layer"
    backward: "Layer"
    merge: str = "concat"

    @property
    def output_size(self) -> int:
        f, b = self.forward.output_size, self.backward.output_size
        return f + b if self.merge == "concat" else f

    @property
    def time_major(self) -> bool:
        return self.forward.time_major

    @property
    def reverse(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"bidirectional({self.forward!r}, {self.backward!r}, merge={self.merge!r})"


@compared_by_config
class Layer(NamedTuple):
    """A sequence layer: its config plus pure functions (see the module docstring).

    Attributes:
      config: :class:`LayerConfig`, :class:`StackConfig` or :class:`BidirectionalConfig`;
        layers are equal (and hash equally) exactly when their configs are.
      init, init_carry, apply, step: the functions.
    """

    config: Any
    init: Callable[..., Any]
    init_carry: Callable[..., Any]
    apply: Callable[..., tuple]
    step: Callable[..., tuple]

    @property
    def output_size(self) -> int:
        """The last axis of ``ys``."""
        return self.config.output_size

    @property
    def time_major(self) -> bool:
        """Whether ``xs`` and ``ys`` have time first."""
        return self.config.time_major

    @property
    def reverse(self) -> bool:
        """Whether the layer reads its sequence backwards."""
        return self.config.reverse


class LearnedCarryParams(NamedTuple):
    """Params of ``layer(cell, learn_initial_carry=True)``."""

    cell: Any  # the cell's params
    initial_carry: Any  # the carry without batch axes; integer leaves (step counters) are None


class BidirectionalParams(NamedTuple):
    forward: Any
    backward: Any


class BidirectionalCarry(NamedTuple):
    forward: Any
    backward: Any


# ------------------------------------------------------------------------------ helpers

def dropout(key: Array, xs: Array, rate: float) -> Array:
    """Inverted dropout: zeroes each entry with probability ``rate`` and scales the rest by
    ``1 / (1 - rate)`` so the expectation is unchanged. ``xs`` is any shape."""
    keep = jax.random.bernoulli(key, 1.0 - rate, xs.shape)
    return jnp.where(keep, xs / (1.0 - rate), jnp.zeros_like(xs))


def _split_keys(key, n):
    if key is None:
        return [None] * n
    return list(jax.random.split(_checks.prng_key("key", key), n))


def _check_tuple(name: str, value: Any, n: int, what: str) -> None:
    if not isinstance(value, (tuple, list)) or hasattr(value, "_fields") or len(value) != n:
        got = f"a {type(value).__name__} of length {len(value)}" if isinstance(value, (tuple, list)) \
            else type(value).__name__
        raise ValueError(f"`{name}` must be a tuple of {n} per-layer {what} (one per stacked layer), got {got}.")


def _floating(a) -> bool:
    return jnp.issubdtype(a.dtype, jnp.floating)


def _learned_part(carry):
    """A carry with its integer leaves (step counters: not trainable) replaced by None."""
    return jax.tree_util.tree_map(lambda a: a if _floating(a) else None, carry)


def _with_learned(template, learned, batch):
    """``template``'s carry with its floating leaves taken from ``learned``, broadcast over ``batch``."""
    floats = iter(jax.tree_util.tree_leaves(learned))
    return jax.tree_util.tree_map(
        lambda t: jnp.broadcast_to(next(floats), t.shape) if _floating(t) else t, template)


def _as_layer(x: Cell | "Layer", name: str, **options) -> "Layer":
    if isinstance(x, Layer):
        return x
    if isinstance(x, Cell):
        return layer(x, **options)
    raise TypeError(f"`{name}` must be a Cell or a Layer, got {type(x).__name__}.")


# ------------------------------------------------------------------------------ layer

def layer(
    cell: Cell,
    *,
    reverse: bool = False,
    time_major: bool = False,
    unroll: int | bool | str = "auto",
    impl: str = "auto",
    remat_chunk: int | None = None,
    learn_initial_carry: bool = False,
) -> Layer:
    """A sequence layer that unrolls one cell (see :func:`lstm_jax.unroll`).

    Args:
      cell: the :class:`~lstm_jax.Cell`.
      reverse: read each sequence backwards (within its length when ``lengths`` is given).
      time_major: ``xs`` is ``[T, ..., I]`` instead of ``[..., T, I]``.
      unroll: ``lax.scan`` unroll factor, or ``"auto"`` (the backend's default; see
        :func:`lstm_jax.unroll`).
      impl: ``"auto"``, ``"scan"`` or one of the cell's forms (``"fused"``, ``"pallas"``,
        ``"parallel"``), as in :func:`lstm_jax.unroll`.
      remat_chunk: chunked rematerialisation, as in :func:`lstm_jax.unroll`.
      learn_initial_carry: make the initial carry a parameter (zeros at first): params become
        :class:`LearnedCarryParams` ``(cell, initial_carry)`` and the learned carry is where
        every sequence starts (unless ``apply`` gets a carry) and what ``resets`` restore.
        Integer carry leaves (a Clockwork step counter) are not learned.

    Returns:
      A :class:`Layer` whose params are the cell's params (or :class:`LearnedCarryParams`)
      and whose carry is the cell's carry; ``apply(params, xs[..., T, I]) -> (ys[..., T, O],
      carry)``; with ``return_gates=True`` also the gates ``{name: [..., T, H]}``.
    """
    if not isinstance(cell, Cell):
        if isinstance(cell, Layer):
            raise TypeError(f"`cell` is already a Layer ({cell!r}); pass a Cell such as lstm_jax.lstm(64).")
        raise TypeError(f"`cell` must be a lstm_jax Cell (e.g. lstm_jax.lstm(64)), got {type(cell).__name__}.")
    for name, value in (("reverse", reverse), ("time_major", time_major), ("learn_initial_carry", learn_initial_carry)):
        _checks.boolean(name, value)
    unroll = _checks.unroll_factor(unroll)
    scan_unroll = unroll
    unroll = "all" if unroll is True else unroll  # in the config: True == 1 would make them equal
    if remat_chunk is not None:
        remat_chunk = _checks.positive_int("remat_chunk", remat_chunk)
    if not isinstance(impl, str) or (impl not in ("auto", "scan") and impl not in cell.forms):
        have = ", ".join(repr(n) for n in cell.forms) or "none"
        raise ValueError(f"`impl` must be 'auto', 'scan' or one of {cell!r}'s forms ({have}), got {impl!r}.")
    config = LayerConfig(cell, reverse, time_major, unroll, impl, remat_chunk, learn_initial_carry)
    options = dict(reverse=reverse, time_major=time_major, unroll=scan_unroll, impl=impl, remat_chunk=remat_chunk)

    def split(params, name="params"):
        """``(cell params, learned initial carry or None)``, checked."""
        if not learn_initial_carry:
            return params, None
        if not isinstance(params, LearnedCarryParams):
            raise TypeError(f"`{name}` must be LearnedCarryParams (this layer learns its initial carry), "
                            f"got {type(params).__name__}.")
        _checks.params(cell, params.cell, name=f"{name}.cell")
        want = jax.eval_shape(lambda p: _learned_part(cell.init_carry(p, ())), params.cell)
        _checks.tree_like(f"{name}.initial_carry", params.initial_carry, want, f"the initial carry of {cell!r}")
        return params.cell, params.initial_carry

    def init(key, input_size, *, dtype=jnp.float32):
        params = cell.init(key, input_size, dtype=dtype)
        if not learn_initial_carry:
            return params
        return LearnedCarryParams(params, _learned_part(cell.init_carry(params, ())))

    def init_carry(params, batch_shape=(), **context):
        cell_params, learned = split(params)
        _checks.params(cell, cell_params, name="params.cell" if learned is not None else "params")
        carry = cell.init_carry(cell_params, batch_shape, **context)
        return carry if learned is None else _with_learned(carry, learned, batch_shape)

    def apply(params, xs, carry=None, *, lengths=None, resets=None, reset_to=None, key=None, return_gates=False):
        cell_params, learned = split(params)
        batch = _checks.sequence(cell, cell_params, xs, time_major=time_major,
                                 name="params.cell" if learned is not None else "params").batch_shape
        if key is not None and cell.noise is not None:
            xs = cell.noise(_checks.prng_key("key", key), xs)
        if learned is not None:
            start = _with_learned(cell.init_carry(cell_params, batch), learned, batch)
            carry = start if carry is None else carry
            if resets is not None and reset_to is None:
                reset_to = start
        out = _unroll(cell, cell_params, xs, carry, lengths=lengths, resets=resets, reset_to=reset_to,
                      return_gates=return_gates, **options)
        return (out[0], out[1], out[2].gates) if return_gates else out

    def step(params, carry, x, *, return_gates=False):
        if reverse:
            raise ValueError(f"{config!r} reads its sequence backwards, so it cannot step forwards one input "
                             "at a time; use apply on the whole sequence.")
        cell_params, _ = split(params)
        return cell.step(cell_params, carry, x, return_gates=return_gates)

    return Layer(config=config, init=init, init_carry=init_carry, apply=apply, step=step)


# ------------------------------------------------------------------------------ stack

def stack(layers: Sequence[Cell | Layer], *, dropout_rate: float = 0.0, **layer_options: Any) -> Layer:
    """Layers applied one after another, with dropout *between* them (Zaremba et al. 2014).

    Args:
      layers: cells (wrapped with :func:`layer` and ``layer_options``) or layers; all must
        share ``time_major``.
      dropout_rate: probability of zeroing each entry of the sequence passed from one layer to
        the next (not after the last). Applied only when ``apply`` is given a ``key``; never
        in ``step``.
      **layer_options: :func:`layer`'s options (``time_major``, ``impl``, ``unroll``,
        ``remat_chunk``, ...) for the entries given as cells.

    Returns:
      A :class:`Layer` whose params, carry and gates are tuples with one entry per layer.
    """
    if isinstance(layers, (Cell, Layer)):
        raise TypeError(f"`layers` must be a list of cells or layers, got a single {type(layers).__name__}; "
                        "wrap it in a list: stack([...]).")
    layers = tuple(_as_layer(x, f"layers[{i}]", **layer_options) for i, x in enumerate(layers))
    if not layers:
        raise ValueError("`layers` must contain at least one cell or layer.")
    dropout_rate = _checks.rate("dropout_rate", dropout_rate)
    if len({l.time_major for l in layers}) != 1:
        raise ValueError("`layers` must all share one `time_major` setting.")
    config = StackConfig(layers, dropout_rate)
    n = len(layers)

    def check(params, carry=None):
        _check_tuple("params", params, n, "parameters")
        if carry is not None:
            _check_tuple("carry", carry, n, "carries")

    def init(key, input_size, *, dtype=jnp.float32):
        input_size = _checks.positive_int("input_size", input_size)
        params = []
        for l, k in zip(layers, jax.random.split(_checks.prng_key("key", key), n)):
            params.append(l.init(k, input_size, dtype=dtype))
            input_size = l.output_size
        return tuple(params)

    def init_carry(params, batch_shape=()):
        check(params)
        return tuple(_labelled(f"[{i}]", f"layers[{i}]", l.init_carry, p, batch_shape)
                     for i, (l, p) in enumerate(zip(layers, params)))

    def apply(params, xs, carry=None, *, lengths=None, resets=None, reset_to=None, key=None, return_gates=False):
        check(params, carry)
        if reset_to is not None:
            _check_tuple("reset_to", reset_to, n, "reset carries")
        carry = (None,) * n if carry is None else carry
        reset_to = (None,) * n if reset_to is None else reset_to
        keys = _split_keys(key, 2 * n)
        new_carry, gates = [], []
        for i, (l, p, c, r) in enumerate(zip(layers, params, carry, reset_to)):
            if i > 0 and dropout_rate > 0.0 and key is not None:
                xs = dropout(keys[2 * i], xs, dropout_rate)
            out = _labelled(f"[{i}]", f"layers[{i}]", l.apply, p, xs, c, lengths=lengths, resets=resets,
                            reset_to=r, key=keys[2 * i + 1], return_gates=return_gates)
            xs = out[0]
            new_carry.append(out[1])
            if return_gates:
                gates.append(out[2])
        return (xs, tuple(new_carry), tuple(gates)) if return_gates else (xs, tuple(new_carry))

    def step(params, carry, x, *, return_gates=False):
        check(params, carry)
        new_carry, gates = [], []
        for i, (l, p, c) in enumerate(zip(layers, params, carry)):
            out = _labelled(f"[{i}]", f"layers[{i}]", l.step, p, c, x, return_gates=return_gates)
            c, x = out[0], out[1]
            new_carry.append(c)
            if return_gates:
                gates.append(out[2])
        return (tuple(new_carry), x, tuple(gates)) if return_gates else (tuple(new_carry), x)

    return Layer(config=config, init=init, init_carry=init_carry, apply=apply, step=step)


def _labelled(where: str, label: str, fn: Callable, *args, **kwargs):
    """Calls a sub-layer's function; an argument error names the sub-layer: `params` becomes
    `params{where}` (e.g. `params[1]`, `params.backward`), others get ``label`` in front."""
    try:
        return fn(*args, **kwargs)
    except (TypeError, ValueError) as e:
        if type(e) not in (TypeError, ValueError):  # JAX's own errors take other constructor arguments
            e.add_note(f"(in {label})")
            raise
        message = str(e)
        for arg in ("params", "carry", "reset_to"):
            message = message.replace(f"`{arg}", f"`{arg}{where}")
        if message == str(e):
            message = f"{label}: {message}"
        raise type(e)(message) from e


# ------------------------------------------------------------------------------ bidirectional

def bidirectional(fwd: Cell | Layer, bwd: Cell | Layer, *, merge: str = "concat", **layer_options: Any) -> Layer:
    """Runs one layer forwards and one backwards over the same sequence and merges the outputs.

    With ``lengths``, the backward layer reverses each sequence within its own length, so a
    padded batch gives the same outputs as each sequence alone; with ``resets``, neither
    direction carries anything across a segment boundary.

    Args:
      fwd: the forward cell or layer.
      bwd: the backward cell (wrapped to run in reverse) or a layer built with ``reverse=True``.
      merge: ``"concat"`` (output ``O_f + O_b``), ``"sum"``, ``"mean"`` or ``"mul"``
        (these need ``O_f == O_b``).
      **layer_options: :func:`layer`'s options for arguments given as cells.

    Returns:
      A :class:`Layer` with :class:`BidirectionalParams` and :class:`BidirectionalCarry`;
      gates are ``{"forward": ..., "backward": ...}``. It cannot ``step`` (the backward half
      needs the whole sequence).
    """
    merge_fn = MERGES[_checks.choice("merge", merge, MERGES)]
    if "reverse" in layer_options:
        raise ValueError("`reverse` is set by bidirectional itself (forwards for `fwd`, backwards for `bwd`).")
    fwd = _as_layer(fwd, "fwd", **layer_options)
    bwd = _as_layer(bwd, "bwd", reverse=True, **layer_options)
    if fwd.reverse or not bwd.reverse:
        raise ValueError("`fwd` must read forwards and `bwd` backwards: pass cells, or "
                         "`layer(cell)` and `layer(cell, reverse=True)`.")
    if fwd.time_major != bwd.time_major:
        raise ValueError("`fwd` and `bwd` must share one `time_major` setting.")
    if merge != "concat" and fwd.output_size != bwd.output_size:
        raise ValueError(f"merge={merge!r} needs equal output sizes, got {fwd.output_size} and {bwd.output_size}.")
    config = BidirectionalConfig(fwd, bwd, merge)

    def check(params):
        if not isinstance(params, BidirectionalParams):
            raise TypeError(f"`params` must be BidirectionalParams (from this layer's init), got {type(params).__name__}.")

    def init(key, input_size, *, dtype=jnp.float32):
        kf, kb = jax.random.split(_checks.prng_key("key", key))
        return BidirectionalParams(fwd.init(kf, input_size, dtype=dtype), bwd.init(kb, input_size, dtype=dtype))

    def init_carry(params, batch_shape=()):
        check(params)
        return BidirectionalCarry(_labelled(".forward", "forward", fwd.init_carry, params.forward, batch_shape),
                                  _labelled(".backward", "backward", bwd.init_carry, params.backward, batch_shape))

    def apply(params, xs, carry=None, *, lengths=None, resets=None, reset_to=None, key=None, return_gates=False):
        check(params)
        for name, value in (("carry", carry), ("reset_to", reset_to)):
            if value is not None and not isinstance(value, BidirectionalCarry):
                raise TypeError(f"`{name}` must be a BidirectionalCarry (like this layer's init_carry), got "
                                f"{type(value).__name__}.")
        carry = carry if carry is not None else BidirectionalCarry(None, None)
        reset_to = reset_to if reset_to is not None else BidirectionalCarry(None, None)
        kf, kb = _split_keys(key, 2)
        kw = dict(lengths=lengths, resets=resets, return_gates=return_gates)
        out_f = _labelled(".forward", "forward", fwd.apply, params.forward, xs, carry.forward,
                          reset_to=reset_to.forward, key=kf, **kw)
        out_b = _labelled(".backward", "backward", bwd.apply, params.backward, xs, carry.backward,
                          reset_to=reset_to.backward, key=kb, **kw)
        ys, new = merge_fn(out_f[0], out_b[0]), BidirectionalCarry(out_f[1], out_b[1])
        return (ys, new, {"forward": out_f[2], "backward": out_b[2]}) if return_gates else (ys, new)

    def step(params, carry, x, *, return_gates=False):
        raise ValueError(f"{config!r} cannot step: its backward half reads the sequence from the end, so it "
                         "needs the whole sequence; use apply.")

    return Layer(config=config, init=init, init_carry=init_carry, apply=apply, step=step)
