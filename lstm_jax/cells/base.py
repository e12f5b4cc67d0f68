"""What every cell family uses to build its :class:`~lstm_jax.Cell`: the checked ``init``
wrapper and the checks of common config fields."""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable, Mapping

import jax.numpy as jnp

from lstm_jax import _checks
from lstm_jax.cell import Cell, CellConfig, SequenceForm


def make_cell(
    config: CellConfig,
    *,
    init: Callable[..., Any],
    init_carry: Callable[..., Any],
    project: Callable[..., Any],
    recur: Callable[..., tuple],
    forms: Mapping[str, SequenceForm] | None = None,
    noise: Callable[..., Any] | None = None,
) -> Cell:
    """A :class:`~lstm_jax.Cell` from a family's equations.

    ``init(key, input_size, dtype)`` and ``init_carry(params, batch_shape, **context)``
    receive checked arguments (a PRNG key, a positive int, a floating dtype, a tuple batch
    shape; ``context`` are keyword arguments a cell's carry may need, such as the attention
    decoder's memory); the other functions are used as given.
    """

    def checked_init(key, input_size, *, dtype=jnp.float32):
        _checks.prng_key("key", key)
        return init(key, _checks.positive_int("input_size", input_size), _checks.floating_dtype("dtype", dtype))

    def checked_init_carry(params, batch_shape=(), **context):
        return init_carry(params, _checks.batch_shape(batch_shape), **context)

    return Cell(config=config, init=checked_init, init_carry=checked_init_carry, project=project,
                recur=recur, forms=types.MappingProxyType(dict(forms or {})), noise=noise)


def initializer(name: str, value: Any) -> Any:
    """``None`` (the family's default) or a hashable callable ``init(key, shape, dtype)``."""
    if value is None:
        return None
    if not callable(value):
        raise TypeError(f"`{name}` must be an initialiser `init(key, shape, dtype)` or None, got {value!r}.")
    try:
        hash(value)
    except TypeError:
        raise TypeError(f"`{name}` must be hashable (a function, or a frozen dataclass such as "
                        "lstm_jax.initializers.orthogonal(1.0)) so that cells compare by value and can be "
                        f"jit static arguments; got {value!r}.") from None
    return value


def or_default(value: Any, default: Callable[[], Any]) -> Any:
    """``value`` if set, else ``default()`` (initialiser defaults are built when a cell is)."""
    return default() if value is None else value


def set_fields(config: CellConfig, **values: Any) -> None:
    """Stores checked, normalised values on a frozen config (from its ``__post_init__``).

    The values as given are kept aside (not a field: no part of equality, hash or repr), so
    that :meth:`~lstm_jax.CellConfig.replace` starts again from what the user said rather
    than from defaults that were derived from other fields (an output size taken from
    ``hidden_size``, say)."""
    if "_given" not in vars(config):
        object.__setattr__(config, "_given", {f.name: getattr(config, f.name) for f in dataclasses.fields(config)})
    for name, value in values.items():
        object.__setattr__(config, name, value)
