"""Argument checks that turn user mistakes into messages naming the argument.

All checks read only static information (shapes, dtypes, Python values), so they cost
nothing under ``jit``; value checks on arrays run only when the array is concrete.
"""

from __future__ import annotations

from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np


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


def floating_dtype(name: str, dtype: Any) -> jnp.dtype:
    """Returns ``dtype`` as a NumPy dtype if it is a floating type, else raises."""
    dt = jnp.dtype(dtype)
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(f"`{name}` must be a floating dtype (float32, bfloat16, float64...), got {dt}.")
    return dt


def features(name: str, x: Any, size: int, dtype: Any, *, what: str = "[..., I]") -> None:
    """Checks that ``x`` has at least one axis, ``x.shape[-1] == size`` and ``x.dtype == dtype``.

    The dtype check is strict: mixing, say, float32 inputs with bfloat16 parameters is a
    silent precision change in JAX, so we ask the user to cast explicitly.
    """
    shape = jnp.shape(x)
    if len(shape) < 1:
        raise ValueError(f"`{name}` must have shape {what} with {what[-2]}={size}, got a scalar.")
    if shape[-1] != size:
        raise ValueError(
            f"`{name}` must have shape {what} with last axis {size} (the cell's input size), "
            f"got shape {tuple(shape)}."
        )
    xdt = jnp.result_type(x)
    if xdt != jnp.dtype(dtype):
        raise TypeError(
            f"`{name}` has dtype {xdt} but the parameters are {jnp.dtype(dtype)}; "
            f"cast one of them (e.g. `{name}.astype(jnp.{jnp.dtype(dtype).name})`)."
        )


def is_concrete(x: Any) -> bool:
    """True if ``x`` is not a tracer, so its values can be inspected."""
    return not isinstance(x, jax.core.Tracer)


def params_of(params: Any, cls: type, field: str, last_axis: int) -> None:
    """Checks that ``params`` is a ``cls`` whose ``field`` has ``last_axis`` columns.

    Catches parameters from another kind of cell, or from the same kind with another
    hidden size, before they fail deep inside a matmul.
    """
    if not isinstance(params, cls):
        raise TypeError(f"`params` must be {cls.__name__} (from this cell's init), got {type(params).__name__}.")
    got = jnp.shape(getattr(params, field))
    if not got or got[-1] != last_axis:
        raise ValueError(f"`params.{field}` must have last axis {last_axis} for this cell, got shape "
                         f"{tuple(got)}; were the params made by a cell of another size or option set?")


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
