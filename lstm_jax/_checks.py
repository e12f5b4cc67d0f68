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
