"""Initialisers for recurrent weights, in the ``jax.nn.initializers`` signature.

Every initialiser here is ``init(key, shape, dtype) -> array``. Cells fuse their gate
matrices along the last axis (``[I, G*H]`` and ``[H, G*H]`` for ``G`` gates); they call
their initialisers once per gate block (``[I, H]`` / ``[H, H]``) through
:func:`init_blocks`, so an orthogonal recurrent init is orthogonal *per gate* and a
Glorot input init does not shrink as gates are added.

Defaults used by the cells, and why:

* input kernels: :func:`glorot_uniform` per gate block (Glorot & Bengio 2010) — keeps the
  pre-activation variance independent of the input size.
* recurrent kernels: :func:`orthogonal` per gate block (Saxe et al. 2014; Le et al.
  2015) — all singular values 1, so the linear part of the recurrence neither explodes
  nor vanishes at initialisation.
* biases: zeros, plus ``forget_bias`` (default 1.0) on the LSTM forget gate (Gers et al.
  2000; Jozefowicz et al. 2015): the cell starts out remembering.

:func:`pytorch_uniform` reproduces PyTorch's ``U(-1/sqrt(H), 1/sqrt(H))`` for every
weight and bias; pass it as ``kernel_init``, ``recurrent_init`` and ``bias_init`` (and
``forget_bias=0.0``) to match PyTorch's initial distribution.

The initialisers defined here are frozen dataclasses, so two ``orthogonal(0.5)`` compare
equal and a cell config that holds one stays equal and hashable by value; any other
callable works too (and compares by identity).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

Initializer = Callable[[jax.Array, Sequence[int], jnp.dtype], jax.Array]

zeros = jax.nn.initializers.zeros
ones = jax.nn.initializers.ones


@dataclasses.dataclass(frozen=True)
class VarianceScaling:
    """``jax.nn.initializers.variance_scaling(scale, mode, distribution)`` as a value: equal
    (and hashing equally) when its arguments are, unlike the closures JAX's factories return."""

    scale: float = 1.0
    mode: str = "fan_avg"
    distribution: str = "uniform"

    def __call__(self, key, shape, dtype=jnp.float32):
        return jax.nn.initializers.variance_scaling(self.scale, self.mode, self.distribution)(key, shape, dtype)


def glorot_uniform() -> VarianceScaling:
    """Glorot & Bengio 2010's uniform initialiser (``jax.nn.initializers.glorot_uniform``)."""
    return VarianceScaling(1.0, "fan_avg", "uniform")


def lecun_normal() -> VarianceScaling:
    """LeCun's truncated normal initialiser (``jax.nn.initializers.lecun_normal``)."""
    return VarianceScaling(1.0, "fan_in", "truncated_normal")


@dataclasses.dataclass(frozen=True)
class Orthogonal:
    """Orthogonal matrices (QR of a Gaussian, signs fixed so the draw is uniform), times
    ``scale``; see Saxe et al. 2014. Computed in at least float32 (LAPACK has no bfloat16
    QR), then cast. A non-square ``[n, m]`` gets orthonormal rows or columns."""

    scale: float = 1.0

    def __call__(self, key, shape, dtype=jnp.float32):
        if len(shape) != 2:
            raise ValueError(f"orthogonal init needs a 2-D `shape`, got {tuple(shape)}.")
        n, m = shape
        work = jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32
        a = jax.random.normal(key, (max(n, m), min(n, m)), work)
        q, r = jnp.linalg.qr(a)
        q = q * jnp.sign(jnp.diagonal(r))  # make the decomposition unique
        q = q if n >= m else q.T
        return (self.scale * q).astype(dtype)


@dataclasses.dataclass(frozen=True)
class Uniform:
    """``U(-bound, bound)`` for every entry."""

    bound: float

    def __call__(self, key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -self.bound, self.bound)


@dataclasses.dataclass(frozen=True)
class Constant:
    """Every entry equal to ``value``."""

    value: float

    def __call__(self, key, shape, dtype=jnp.float32):
        del key
        return jnp.full(shape, self.value, dtype)


def orthogonal(scale: float = 1.0) -> Orthogonal:
    """The orthogonal initialiser (:class:`Orthogonal`) scaled by ``scale``."""
    return Orthogonal(float(scale))


def pytorch_uniform(hidden_size: int) -> Uniform:
    """``U(-1/sqrt(H), 1/sqrt(H))``: PyTorch's init for every RNN/LSTM/GRU weight and bias."""
    return Uniform(1.0 / math.sqrt(hidden_size))


def constant(value: float) -> Constant:
    """Every entry equal to ``value``."""
    return Constant(float(value))


def init_blocks(
    init: Initializer, key: jax.Array, rows: int | None, block: int, num_blocks: int, dtype
) -> jax.Array:
    """Concatenates ``num_blocks`` independent draws of ``init`` along the last axis.

    Args:
      init: initialiser for one block.
      key: PRNG key.
      rows: leading size of each block (``None`` for a vector, e.g. a bias).
      block: width of one block, usually ``H``.
      num_blocks: how many blocks (gates).
      dtype: floating dtype of the result.

    Returns:
      ``[rows, num_blocks * block]`` (or ``[num_blocks * block]`` when ``rows`` is None).
    """
    shape = (block,) if rows is None else (rows, block)
    keys = jax.random.split(key, num_blocks)
    return jnp.concatenate([init(k, shape, dtype) for k in keys], axis=-1)
