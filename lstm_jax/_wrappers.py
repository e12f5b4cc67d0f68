"""What the Flax NNX, Linen and Equinox modules share (:mod:`lstm_jax.nnx`, :mod:`lstm_jax.linen`,
:mod:`lstm_jax.eqx`): the layer a module wraps, Flax's call-time layout overrides, reading
order and the bidirectional body. Imports neither Flax nor Equinox."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from lstm_jax import _checks
from lstm_jax.cell import Cell
from lstm_jax.layers import (
    BidirectionalConfig,
    Layer,
    LayerConfig,
    StackConfig,
    bidirectional,
    layer as make_layer,
    stack,
)
from lstm_jax.unroll import reverse_within_lengths

Array = jax.Array


def concatenate(a: Array, b: Array) -> Array:
    """The default merge: ``[..., O_f]`` and ``[..., O_b]`` to ``[..., O_f + O_b]``."""
    return jnp.concatenate([a, b], axis=-1)


_LAYER_DEFAULTS = dict(reverse=False, time_major=False, unroll="auto", impl="auto", remat_chunk=None,
                       learn_initial_carry=False)


def first_given(value: Any, default: Any) -> Any:
    """``value`` unless it is None (a call-time override), else ``default``."""
    return default if value is None else value


def initial_params(layer: Layer, in_features: int, dtype: Any, params: Any, key: Callable[[], Array]) -> Any:
    """``layer.init(key(), in_features, dtype=dtype)``, or ``params`` checked against it
    (structure, shapes, dtypes); ``dtype`` None means float32, or the dtype of ``params``."""
    if dtype is None:
        leaves = jax.tree.leaves(params)
        dtype = leaves[0].dtype if leaves and hasattr(leaves[0], "dtype") else jnp.float32
    dtype = _checks.floating_dtype("dtype", dtype)
    if params is None:
        return layer.init(key(), in_features, dtype=dtype)
    want = jax.eval_shape(lambda k: layer.init(k, in_features, dtype=dtype), jax.random.key(0))
    _checks.tree_like("params", params, want, f"{layer!r}.init(key, {in_features}, dtype={dtype.name})")
    return params


def as_layer(cell: Any, **options: Any) -> Layer:
    """``cell`` as a Layer (a Cell wrapped with :func:`lstm_jax.layer` and ``options``); a
    Layer comes with its own options, so non-default ``options`` for one are refused."""
    unknown = sorted(set(options) - set(_LAYER_DEFAULTS))
    if unknown:
        raise TypeError(f"unexpected layer option {unknown[0]!r}; lstm_jax.layer takes {', '.join(_LAYER_DEFAULTS)}.")
    if isinstance(cell, Layer):
        given = [k for k, v in options.items() if not (type(v) is type(_LAYER_DEFAULTS[k]) and v == _LAYER_DEFAULTS[k])]
        if given:
            names = ", ".join(f"`{k}`" for k in given)
            raise ValueError(f"{names}: {cell!r} is a Layer, which has its own options; pass the Cell instead, "
                             f"or build the layer with them (lstm_jax.layer(cell, {given[0]}=...)).")
        return cell
    if isinstance(cell, Cell):
        return make_layer(cell, **options)
    raise TypeError(f"`cell` must be a lstm_jax Cell (e.g. lstm_jax.lstm(64)) or Layer (lstm_jax.layer, stack, "
                    f"bidirectional), got {type(cell).__name__}.")


def relaid(layer: Layer, *, time_major: bool, reverse: bool) -> Layer:
    """``layer`` with another layout or reading direction (Flax's call-time overrides); the
    params are unchanged. ``reverse`` applies to a single layer only."""
    config = layer.config
    if config.time_major == time_major and config.reverse == reverse:
        return layer
    _checks.boolean("time_major", time_major)
    _checks.boolean("reverse", reverse)
    if isinstance(config, LayerConfig):
        options = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)[1:]}
        return make_layer(config.cell, **{**options, "time_major": time_major, "reverse": reverse})
    if reverse:
        raise ValueError(f"`reverse=True` needs a single layer, but {layer!r} is not one; build it from reversed "
                         "layers instead (lstm_jax.layer(cell, reverse=True)).")
    if isinstance(config, StackConfig):
        return stack([relaid(l, time_major=time_major, reverse=l.reverse) for l in config.layers],
                     dropout_rate=config.dropout_rate)
    if isinstance(config, BidirectionalConfig):
        return bidirectional(relaid(config.forward, time_major=time_major, reverse=False),
                             relaid(config.backward, time_major=time_major, reverse=True), merge=config.merge)
    raise ValueError(f"`time_major`/`reverse` cannot be overridden for {layer!r}; build the layer with them.")


def stochastic(layer: Layer) -> bool:
    """Whether ``layer.apply`` uses its ``key`` (stack dropout, cells that draw noise)."""
    config = layer.config
    if isinstance(config, LayerConfig):
        return config.cell.noise is not None
    if isinstance(config, StackConfig):
        return config.dropout_rate > 0.0 or any(map(stochastic, config.layers))
    if isinstance(config, BidirectionalConfig):
        return stochastic(config.forward) or stochastic(config.backward)
    return True


def time_axis(inputs: Any, time_major: bool) -> int:
    """The time axis of ``inputs`` and of the outputs: 0, or ``len(batch shape)``."""
    return 0 if time_major else jax.tree.leaves(inputs)[0].ndim - 2


def reading_order(ys: Any, lengths: Array | None, axis: int) -> Any:
    """Reverses each sequence of ``ys`` along ``axis`` (within its length if given: padding
    stays in place), giving a reversed layer's outputs in the order Flax returns them."""
    def flip(a):
        if lengths is None:
            return jnp.flip(a, axis)
        return jnp.moveaxis(reverse_within_lengths(jnp.moveaxis(a, axis, 0), lengths), 0, axis)

    return jax.tree.map(flip, ys)


def both_directions(forward: Callable, backward: Callable, merge_fn: Callable, inputs: Any, return_carry: bool,
                    initial_carry: tuple[Any, Any] | None, **options: Any):
    """``flax.*.Bidirectional``'s body: the forward half, the backward half reversed with its
    outputs in input order, merged. ``options`` left None are not passed, so Flax's own RNN
    modules (which take no ``resets``) can be halves."""
    options = {k: v for k, v in options.items() if v is not None}
    fc, bc = (None, None) if initial_carry is None else initial_carry
    carry_f, ys_f = forward(inputs, initial_carry=fc, return_carry=True, reverse=False, **options)
    carry_b, ys_b = backward(inputs, initial_carry=bc, return_carry=True, reverse=True, keep_order=True, **options)
    ys = jax.tree.map(merge_fn, ys_f, ys_b)
    return ((carry_f, carry_b), ys) if return_carry else ys
