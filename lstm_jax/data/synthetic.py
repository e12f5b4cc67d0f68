"""Synthetic long-time-lag tasks, generated from a PRNG key (nothing is downloaded)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lstm_jax import _checks

# Predicting the mean target 1.0 gives MSE Var(X1 + X2) = 2/12 for X1, X2 ~ U(0, 1).
ADDING_BASELINE_MSE = 2.0 / 12.0


def adding_problem(key: jax.Array, batch_size: int, length: int, *, dtype=jnp.float32):
    """The adding problem in the form of Arjovsky et al. 2016 (uRNN).

    Each sequence has two channels: values drawn from ``U(0, 1)``, and markers that are 1 at
    exactly two steps, one chosen uniformly in each half of the sequence and 0 elsewhere.
    The target is the sum of the two marked values, so the model must hold the first one
    for up to ``length`` steps. Always predicting 1.0 scores :data:`ADDING_BASELINE_MSE`
    (0.1667).

    Args:
      key: PRNG key.
      batch_size: ``B``.
      length: ``T`` (at least 2).
      dtype: floating dtype of the outputs.

    Returns:
      ``(xs [B, T, 2], targets [B])``.
    """
    B = _checks.positive_int("batch_size", batch_size)
    T = _checks.positive_int("length", length)
    if T < 2:
        raise ValueError(f"`length` must be at least 2 (one marker per half), got {T}.")
    kv, k1, k2 = jax.random.split(key, 3)
    values = jax.random.uniform(kv, (B, T), dtype)
    half = T // 2
    first = jax.random.randint(k1, (B,), 0, half)
    second = jax.random.randint(k2, (B,), half, T)
    steps = jnp.arange(T)
    markers = ((steps == first[:, None]) | (steps == second[:, None])).astype(dtype)
    targets = jnp.sum(values * markers, axis=1)
    return jnp.stack([values, markers], axis=-1), targets
