"""Argument checks that turn user mistakes into messages naming the argument.

Two kinds:

* **Static checks** read only shapes, dtypes, tree structures and Python values, so they
  cost nothing under ``jit``. The central one, :func:`params`, compares a params tree with
  ``jax.eval_shape(cell.init, key, input_size, dtype=...)``: structure, shapes and dtypes,
  naming the first differing field. :func:`sequence` does the same for a call over a
  sequence (``xs``, ``carry``, ``lengths``, ``resets``). Values of concrete arrays are
  checked too (``lengths`` in ``[0, T]``).
* **Value checks** under ``jit`` (``lengths`` within ``[0, T]``, finite inputs in the valid
  region) run only inside :func:`checked`, through ``jax.experimental.checkify``; they are
  not even traced otherwise, so they cost nothing when off.

Static errors are ``ValueError`` (shapes, values) and ``TypeError`` (types, dtypes), the
exceptions Python code raises for bad arguments. chex's static assertions raise
``AssertionError`` under a generic "[Chex] Assertion ... failed" prefix, which would make
these messages less clear and change what callers catch, so chex serves the tests (tree
comparisons) rather than these checks.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Any, Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


# ------------------------------------------------------------------------- Python values

def positive_int(name: str, value: Any) -> int:
    """Returns ``value`` if it is a positive Python int, else raises naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return int(value)


def choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """Returns ``value`` if it is one of ``choices``, else raises naming ``name``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")
    return value


def boolean(name: str, value: Any) -> bool:
    """Returns ``value`` if it is a bool, else raises naming ``name``."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be a bool, got {value!r}.")
    return bool(value)


def number(name: str, value: Any, *, positive: bool = False, optional: bool = False) -> float | None:
    """Returns ``value`` as a float if it is a real number (``> 0`` if ``positive``; None
    allowed if ``optional``), else raises naming ``name``."""
    if value is None and optional:
        return None
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    if not ok or not np.isfinite(value) or (positive and not value > 0):
        what = "a positive number" if positive else "a finite number"
        raise ValueError(f"`{name}` must be {what}{' or None' if optional else ''}, got {value!r}.")
    return float(value)


def rate(name: str, value: Any) -> float:
    """A probability in ``[0, 1)`` (dropout rates)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must lie in [0, 1), got {value!r}.")
    return float(value)


def unroll_factor(value: Any) -> int | bool | str:
    """``lax.scan``'s unroll: True (all steps), a positive int, or ``"auto"`` (the backend's
    default, :func:`lstm_jax.default_unroll`)."""
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"`unroll` must be a positive int, True (unroll every step) or 'auto', got {value!r}.")
        return value
    if isinstance(value, bool):
        if not value:
            raise ValueError("`unroll` must be a positive int or True (unroll every step), got False.")
        return True
    return positive_int("unroll", value)


def floating_dtype(name: str, dtype: Any) -> jnp.dtype:
    """Returns ``dtype`` as a NumPy dtype if it is a floating type, else raises."""
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        raise TypeError(f"`{name}` must be a floating dtype (float32, bfloat16, float64...), got {dtype!r}.") from None
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(f"`{name}` must be a floating dtype (float32, bfloat16, float64...), got {dt}.")
    return dt


def batch_shape(value: Any) -> tuple[int, ...]:
    """Normalises ``batch_shape`` (an int or a sequence of ints) to a tuple."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,)
    try:
        if isinstance(value, str):
            raise TypeError
        shape = tuple(int(n) for n in value)
    except (TypeError, ValueError):
        raise TypeError(f"`batch_shape` must be an int or a tuple of ints, got {value!r}.") from None
    if any(n < 0 for n in shape):
        raise ValueError(f"`batch_shape` must not have negative sizes, got {shape}.")
    return shape


def is_concrete(x: Any) -> bool:
    """True if ``x`` is not a tracer, so its values can be inspected."""
    return not isinstance(x, jax.core.Tracer)


def prng_key(name: str, key: Any) -> Any:
    """Checks that ``key`` is a JAX PRNG key (typed, or a legacy ``uint32[2]`` one)."""
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
        return key
    if dtype is not None and dtype == jnp.uint32 and jnp.shape(key)[-1:] == (2,):
        return key  # jax.random.PRNGKey(0)
    got = f"{type(key).__name__} {key!r}" if isinstance(key, (int, float)) else \
        (f"an array of dtype {dtype} and shape {tuple(jnp.shape(key))}" if dtype is not None else type(key).__name__)
    raise TypeError(f"`{name}` must be a PRNG key such as jax.random.key(0), got {got}.")


# --------------------------------------------------------------------- which argument is what

def cell_argument(cell: Any, where: str = "unroll") -> None:
    """Raises a helpful error unless ``cell`` is a :class:`~lstm_jax.Cell`."""
    from lstm_jax.cell import Cell
    from lstm_jax.layers import Layer

    if isinstance(cell, Cell):
        return
    if isinstance(cell, Layer):
        raise TypeError(f"`cell` is a Layer ({cell!r}): call `layer.apply(params, xs)` instead of "
                        f"{where}(layer, ...).")
    hint = ""
    if jax.tree_util.tree_leaves(cell) and all(hasattr(a, "shape") for a in jax.tree_util.tree_leaves(cell)):
        hint = f"; it looks like params: the arguments are {where}(cell, params, ...)"
    raise TypeError(f"`cell` must be a lstm_jax Cell (e.g. lstm_jax.lstm(64)), got {type(cell).__name__}{hint}.")


# ------------------------------------------------------------------------------ pytrees

def _path(name: str, path) -> str:
    return name + jax.tree_util.keystr(path)


def _leaves(name: str, tree: Any) -> list[tuple[str, Any]]:
    """``[(path string, leaf)]``; every leaf must be an array."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            raise TypeError(f"`{_path(name, path)}` must be an array, got {type(leaf).__name__}.")
        out.append((_path(name, path), leaf))
    return out


def _dtype(leaf: Any) -> jnp.dtype:
    """The dtype JAX will use for ``leaf`` (a NumPy float64 array is float32 when x64 is off)."""
    return jnp.dtype(jax.dtypes.canonicalize_dtype(leaf.dtype))


def _describe(tree: Any) -> str:
    t = type(tree)
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return t.__name__
    if isinstance(tree, (tuple, list)):
        return f"a {t.__name__} of length {len(tree)}"
    return t.__name__


def _compare_structure(name: str, got: Any, want: Any, owner: str) -> None:
    """Same tree structure, or an error naming the first missing or unexpected field."""
    if jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want):
        return
    if type(got) is not type(want) and not (isinstance(got, list) and isinstance(want, tuple)):
        raise TypeError(f"`{name}` must be {_describe(want)} for {owner}, got {_describe(got)}.")
    got_paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(got)[0]]
    want_leaves = jax.tree_util.tree_flatten_with_path(want)[0]
    want_paths = [p for p, _ in want_leaves]
    got_keys = {jax.tree_util.keystr(p) for p in got_paths}
    want_keys = {jax.tree_util.keystr(p) for p in want_paths}
    for p, leaf in want_leaves:
        if jax.tree_util.keystr(p) not in got_keys:
            raise ValueError(f"`{_path(name, p)}` is missing: {owner} has it (shape "
                             f"{tuple(leaf.shape)}). Were these made for another cell or variant?")
    for p in got_paths:
        if jax.tree_util.keystr(p) not in want_keys:
            fields = ", ".join(jax.tree_util.keystr(q) for q in want_paths) or "none"
            raise ValueError(f"`{_path(name, p)}` is not part of {owner} (which has {fields}). "
                             "Were these made for another cell or variant?")
    raise TypeError(f"`{name}` has the fields of {owner} but another structure: expected "
                    f"{jax.tree_util.tree_structure(want)}, got {jax.tree_util.tree_structure(got)}.")


# ------------------------------------------------------------------------------ params

class _Expected(NamedTuple):
    tree: Any  # ShapeDtypeStructs
    input_axis: tuple[int, int] | None  # (leaf index, axis) that holds the input size


@functools.lru_cache(maxsize=512)
def _init_shapes(init_owner: Any, input_size: int, dtype: jnp.dtype) -> Any:
    """``jax.eval_shape`` of ``init_owner.init`` (a Cell: hashable by its config)."""
    return jax.eval_shape(lambda k: init_owner.init(k, input_size, dtype=dtype), jax.random.key(0))


@functools.lru_cache(maxsize=512)
def _probe(init_owner: Any, dtype: jnp.dtype) -> _Expected:
    """The params at input size ``H`` and where the input size sits in them (None when the
    cell fixes it, e.g. MUT1 needs ``I == H``)."""
    H = init_owner.config.hidden_size
    at_h = _init_shapes(init_owner, H, dtype)
    try:
        at_h1 = _init_shapes(init_owner, H + 1, dtype)
    except (ValueError, TypeError):
        return _Expected(at_h, None)
    for n, (a, b) in enumerate(zip(jax.tree_util.tree_leaves(at_h), jax.tree_util.tree_leaves(at_h1))):
        for axis, (da, db) in enumerate(zip(a.shape, b.shape)):
            if da != db:
                return _Expected(at_h, (n, axis))
    return _Expected(at_h, None)


def params(owner: Any, params: Any, *, input_size: int | None = None, name: str = "params") -> tuple[jnp.dtype, int]:
    """Checks ``params`` against ``jax.eval_shape(owner.init, key, I, dtype=...)``.

    ``owner`` is the Cell whose ``init(key, input_size, *, dtype)`` made them.
    The dtype is the params' own (all leaves must share it), the input size is read from the
    params (or fixed by the cell) and then, if ``input_size`` is given, compared with it by
    the caller.

    Returns:
      ``(dtype, input_size)`` of the params.

    Raises:
      TypeError: params that are a cell or layer, of another NamedTuple type, with non-array
        leaves, mixed or non-floating dtypes.
      ValueError: a missing or unexpected field, or a field of the wrong shape.
    """
    from lstm_jax.cell import Cell
    from lstm_jax.layers import Layer

    if isinstance(params, (Cell, Layer)):
        raise TypeError(f"`{name}` is a {type(params).__name__} ({params!r}), not parameters: the arguments "
                        "are (cell, params, ...) / layer.apply(params, ...).")
    leaves = _leaves(name, params)
    if not leaves:
        raise TypeError(f"`{name}` must be the parameters from {owner!r}.init, got {_describe(params)} "
                        "without arrays.")
    first_name, first = leaves[0]
    dtype = _dtype(first)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`{first_name}` must be floating (float32, bfloat16, float64...), got {dtype}.")
    for leaf_name, leaf in leaves[1:]:
        if _dtype(leaf) != dtype:
            raise TypeError(f"`{name}` mix dtypes: `{first_name}` is {dtype} but `{leaf_name}` is "
                            f"{_dtype(leaf)}; cast them to one dtype, e.g. "
                            f"`jax.tree.map(lambda a: a.astype(jnp.{dtype.name}), {name})`.")
    probe = _probe(owner, dtype)
    _compare_structure(name, params, probe.tree, repr(owner))
    if probe.input_axis is None:
        size = owner.config.hidden_size
    else:
        leaf_index, axis = probe.input_axis
        shape = leaves[leaf_index][1].shape
        size = int(shape[axis]) if axis < len(shape) else 0
        if size <= 0:
            size = input_size or 1  # a broken leaf: let the shape comparison below name it
    expected = _init_shapes(owner, size, dtype)
    for (leaf_name, leaf), want in zip(leaves, jax.tree_util.tree_leaves(expected)):
        if tuple(leaf.shape) != tuple(want.shape):
            raise ValueError(f"`{leaf_name}` has shape {tuple(leaf.shape)}, but {owner!r} needs "
                             f"{tuple(want.shape)} (for input size {size}). Were these params made for "
                             "a cell of another size or variant?")
    return dtype, size


# ------------------------------------------------------------------------------ inputs

def _input_leaves(name: str, xs: Any) -> list[tuple[str, Any]]:
    if isinstance(xs, (list, tuple)) and not hasattr(xs, "_fields"):
        raise TypeError(f"`{name}` must be a JAX or NumPy array (or a cell's input NamedTuple), got a "
                        f"{type(xs).__name__}; convert it with jnp.asarray.")
    leaves = _leaves(name, xs)
    if not leaves:
        raise TypeError(f"`{name}` must be an array, got {_describe(xs)}.")
    return leaves


def _input_dtypes(name: str, leaves, dtype) -> None:
    for leaf_name, leaf in leaves:
        got = _dtype(leaf)
        if got != dtype:
            raise TypeError(f"`{leaf_name}` has dtype {got} but the parameters are {dtype}; cast one of "
                            f"them (e.g. `{name}.astype(jnp.{dtype.name})`).")


def _input_size(name: str, shape, size: int, layout: str) -> None:
    if shape[-1] != size:
        raise ValueError(f"`{name}` must have shape {layout} with last axis {size} (the cell's input size), "
                         f"got shape {tuple(shape)}.")


class Sequence(NamedTuple):
    """A checked call over a sequence."""

    T: int
    batch_shape: tuple[int, ...]
    dtype: jnp.dtype


def sequence(cell: Any, params_: Any, xs: Any, *, time_major: bool, name: str = "params") -> Sequence:
    """Checks ``params`` and ``xs`` (``[..., T, I]``, or ``[T, ..., I]`` time-major; a pytree's
    leaves share the leading axes) for ``cell``; returns ``T``, the batch shape and the dtype."""
    leaves = _input_leaves("xs", xs)
    layout = "[T, ..., I]" if time_major else "[..., T, I]"
    shape = tuple(leaves[0][1].shape)
    if len(shape) < 2:
        raise ValueError(f"`xs` must have shape {layout} (at least 2 axes), got shape {shape}.")
    T, batch = (shape[0], shape[1:-1]) if time_major else (shape[-2], shape[:-2])
    prefix = (T,) + batch if time_major else batch + (T,)
    for leaf_name, leaf in leaves[1:]:
        if tuple(leaf.shape[:len(prefix)]) != prefix or len(leaf.shape) <= len(prefix):
            raise ValueError(f"`{leaf_name}` must share the leading axes {prefix} of the first input "
                             f"(shape {shape}), got shape {tuple(leaf.shape)}.")
    dtype, size = params(cell, params_, input_size=shape[-1], name=name)
    _input_dtypes("xs", leaves, dtype)
    _input_size("xs", shape, size, layout)
    return Sequence(T, batch, dtype)


def step_arguments(cell: Any, params_: Any, carry_: Any, x: Any, *, name: str = "params") -> tuple[int, ...]:
    """Checks one step's ``params``, ``carry`` and ``x [..., I]``; returns the batch shape."""
    leaves = _input_leaves("x", x)
    shape = tuple(leaves[0][1].shape)
    if len(shape) < 1:
        raise ValueError("`x` must have shape [..., I], got a scalar.")
    dtype, size = params(cell, params_, input_size=shape[-1], name=name)
    _input_dtypes("x", leaves, dtype)
    _input_size("x", shape, size, "[..., I]")
    carry(cell, params_, carry_, shape[:-1])
    return shape[:-1]


def carry(cell: Any, params_: Any, carry_: Any, batch: tuple[int, ...], *, name: str = "carry") -> None:
    """Checks ``carry`` against ``cell.init_carry(params, batch)``."""
    want = jax.eval_shape(lambda p: cell.init_carry(p, batch), params_)
    tree_like(name, carry_, want, f"`cell.init_carry(params, {batch})` of {cell!r}", batch)


def tree_like(name: str, got: Any, want: Any, owner: str, batch: tuple[int, ...] = ()) -> None:
    """Checks ``got`` against a tree of ``ShapeDtypeStruct`` (``owner`` says where it comes
    from): structure, shapes and dtypes. An axis after ``batch`` that ``want`` leaves empty
    (size 0, such as an attention memory's length) may have any size."""
    _compare_structure(name, got, want, owner)
    for (leaf_name, leaf), w in zip(_leaves(name, got), jax.tree_util.tree_leaves(want)):
        got_shape, want_shape = tuple(leaf.shape), tuple(w.shape)
        fits = len(got_shape) == len(want_shape) and all(
            g == e or (e == 0 and i >= len(batch)) for i, (g, e) in enumerate(zip(got_shape, want_shape)))
        if not fits:
            shown = "(" + ", ".join("*" if e == 0 and i >= len(batch) else str(e)
                                    for i, e in enumerate(want_shape)) + ("," if len(want_shape) == 1 else "") + ")"
            raise ValueError(f"`{leaf_name}` must have shape {shown}"
                             + (f" for batch shape {batch}" if batch else "") + f" ({owner}), got {got_shape}.")
        if _dtype(leaf) != _dtype(w):
            raise TypeError(f"`{leaf_name}` must have dtype {_dtype(w)} (as {owner}), got {_dtype(leaf)}.")


def lengths(value: Any, batch: tuple[int, ...], T: int) -> Array:
    """Checked ``lengths [...]`` as int32, clipped to ``[0, T]`` (lengths past ``T`` act as
    ``T``: traced values cannot be checked without :func:`checked`)."""
    value = jnp.asarray(value)  # accept lists and NumPy arrays
    if not jnp.issubdtype(value.dtype, jnp.integer):
        raise TypeError(f"`lengths` must be an integer array, got dtype {value.dtype}.")
    if tuple(value.shape) != tuple(batch):
        raise ValueError(f"`lengths` must have shape {tuple(batch)} (the batch shape of `xs`), "
                         f"got {tuple(value.shape)}.")
    if is_concrete(value) and value.size:
        values = np.asarray(value)  # on the host: no JAX op, whatever is tracing around us
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi > T:
            raise ValueError(f"`lengths` must lie in [0, {T}] (T, the number of steps in `xs`), "
                             f"got values in [{lo}, {hi}].")
    elif value_checks_enabled():
        from jax.experimental import checkify

        # debug_check: a no-op wherever the trace is later reused outside checked() (a jit cache)
        checkify.debug_check(jnp.all((value >= 0) & (value <= T)),
                       f"`lengths` must lie in [0, {T}] (T, the number of steps in `xs`), got values in "
                       "[{lo}, {hi}].", lo=jnp.min(value), hi=jnp.max(value))
    # int32 before comparing with a step counter: an int8 one would wrap before T
    return jnp.clip(value.astype(jnp.int32), 0, T)


def resets(value: Any, batch: tuple[int, ...], T: int, time_major: bool) -> Array:
    """Checked ``resets`` as a time-major ``[T, ...]`` bool array."""
    value = jnp.asarray(value)
    want = (T,) + tuple(batch) if time_major else tuple(batch) + (T,)
    layout = "[T, ...]" if time_major else "[..., T]"
    if value.dtype != jnp.bool_:
        raise TypeError(f"`resets` must be a bool array {layout} (True where a new segment starts), "
                        f"got dtype {value.dtype}.")
    if tuple(value.shape) != want:
        raise ValueError(f"`resets` must have shape {want} ({layout}: `xs` without its feature axis), "
                         f"got {tuple(value.shape)}.")
    return value if time_major else jnp.moveaxis(value, -1, 0)


# ------------------------------------------------------------------------- value checks

_STATE = threading.local()


def value_checks_enabled() -> bool:
    """Whether the code being traced runs under :func:`checked`."""
    return getattr(_STATE, "on", False)


@contextlib.contextmanager
def _value_checks():
    before = value_checks_enabled()
    _STATE.on = True
    try:
        yield
    finally:
        _STATE.on = before


def finite_inputs(xs: Any, valid: Array | None) -> None:
    """Under :func:`checked`: every input in the valid region (``valid [T, ...]``) is finite."""
    if not value_checks_enabled():
        return
    from jax.experimental import checkify

    for leaf in jax.tree_util.tree_leaves(xs):
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            continue
        ok = jnp.isfinite(leaf)
        if valid is not None:
            ok = ok | ~valid.reshape(valid.shape + (1,) * (leaf.ndim - valid.ndim))
        checkify.debug_check(jnp.all(ok), "`xs` must be finite within each sequence's length; it has "
                       "{n} NaN or infinite entries there.", n=jnp.sum(~ok))


def checked(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with value checks that also run under ``jit``.

    Inside ``checked(fn)``, :func:`lstm_jax.unroll` and the layers add runtime checks that
    static checks cannot do on traced values: ``lengths`` within ``[0, T]`` and inputs
    finite within each sequence's length. ``fn`` runs through
    ``jax.experimental.checkify`` and a failed check raises (``JaxRuntimeError``, naming the
    argument) when the call returns. Outside ``checked`` those checks are not even traced,
    so they cost nothing.

    Pass the plain function (``checked(loss)``, not an already-jitted one that was traced
    before: JAX would reuse that trace, which has no checks); it may call ``jax.jit``
    inside.

    Example::

        loss_checked = lj.checked(lambda p, xs, n: jnp.sum(lj.unroll(cell, p, xs, lengths=n)[0]))
        loss_checked(params, xs, jnp.array([7]))   # T = 5: `lengths` must lie in [0, 5]
    """
    from jax.experimental import checkify

    def traced_with_checks(*args, **kwargs):
        with _value_checks():
            return fn(*args, **kwargs)

    with_errors = checkify.checkify(traced_with_checks)

    def run(*args, **kwargs):
        error, out = with_errors(*args, **kwargs)
        error.throw()
        return out

    return run
