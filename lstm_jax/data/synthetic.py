"""Synthetic long-time-lag tasks, generated from a PRNG key (nothing is downloaded).

Every generator has the signature ``(key, batch_size, length, *, dtype) -> Batch`` and is a
pure JAX function, so it can run inside a jitted training step (one fresh batch per step,
already on the device). Sequences of one batch may differ in length: ``xs`` is padded with
zeros to the longest possible length and ``lengths`` says how many steps are real.

The tasks, with the papers they come from:

* :func:`adding_problem`: Arjovsky, Shah & Bengio 2016 (uRNN), after Hochreiter &
  Schmidhuber 1997.
* :func:`adding_problem_1997`: Hochreiter & Schmidhuber 1997, Experiment 4.
* :func:`copy_memory`: Arjovsky et al. 2016, after Hochreiter & Schmidhuber 1997.
* :func:`temporal_order`: Hochreiter & Schmidhuber 1997, Experiments 6a and 6b.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lstm_jax import _checks

Array = jax.Array

# Predicting the mean target 1.0 gives MSE Var(X1 + X2) = 2/12 for X1, X2 ~ U(0, 1).
ADDING_BASELINE_MSE = 2.0 / 12.0

# Copy memory: symbols 0..7 are data, 8 is the blank, 9 the delimiter (Arjovsky et al.).
COPY_BLANK, COPY_DELIMITER = 8, 9

# Temporal order: the eight input symbols of Hochreiter & Schmidhuber 1997, Experiment 6.
ORDER_SYMBOLS = ("E", "B", "a", "b", "c", "d", "X", "Y")
# Where the relevant symbols sit, as fractions of the minimal length T (the paper's ranges
# for T = 100: 6a t1 in [10, 20], t2 in [50, 60]; 6b t1 in [10, 20], t2 in [33, 43], t3 in [66, 76]).
ORDER_WINDOWS = {2: ((0.10, 0.20), (0.50, 0.60)), 3: ((0.10, 0.20), (0.33, 0.43), (0.66, 0.76))}


class Batch(NamedTuple):
    """One batch of a sequence task."""

    xs: Array  # [B, T_max, I] inputs, zero beyond each sequence's length
    targets: Array  # [B] or [B, K] (regression at the end) or [B, T_max] (classes per step)
    lengths: Array  # [B] int32, the number of real steps of each sequence


def _sizes(batch_size, length, min_length, dtype):
    _checks.floating_dtype("dtype", dtype)
    B = _checks.positive_int("batch_size", batch_size)
    T = _checks.positive_int("length", length)
    if T < min_length:
        raise ValueError(f"`length` must be at least {min_length} for this task, got {T}.")
    return B, T


def _random_lengths(key, B: int, T: int) -> Array:
    """Lengths uniform in ``[T, T + T // 10]`` (the 1997 experiments' ``[T, T + T/10]``)."""
    return jax.random.randint(key, (B,), T, T + T // 10 + 1, jnp.int32)


def adding_problem(key: Array, batch_size: int, length: int, *, dtype=jnp.float32) -> Batch:
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
      dtype: floating dtype of ``xs`` and ``targets``.

    Returns:
      ``Batch(xs [B, T, 2], targets [B], lengths [B] = T)``.
    """
    B, T = _sizes(batch_size, length, 2, dtype)
    kv, k1, k2 = jax.random.split(key, 3)
    values = jax.random.uniform(kv, (B, T), dtype)
    half = T // 2
    first = jax.random.randint(k1, (B,), 0, half, jnp.int32)
    second = jax.random.randint(k2, (B,), half, T, jnp.int32)
    steps = jnp.arange(T, dtype=jnp.int32)
    markers = ((steps == first[:, None]) | (steps == second[:, None])).astype(dtype)
    targets = jnp.sum(values * markers, axis=1)
    return Batch(jnp.stack([values, markers], axis=-1), targets, jnp.full((B,), T, jnp.int32))


def adding_problem_1997(key: Array, batch_size: int, length: int, *, dtype=jnp.float32) -> Batch:
    """The adding problem of Hochreiter & Schmidhuber 1997, Experiment 4.

    Each step is a pair: a value ``U(-1, 1)`` and a marker in ``{-1, 0, 1}``. Sequence
    lengths are uniform in ``[T, T + T/10]``. One of the first ten pairs is marked (its
    value is ``X1``), then one of the still unmarked pairs among the first ``T/2`` (``X2``);
    the first and the last pair carry marker -1 unless marked. A marked first pair has its
    value set to 0, as the paper does for ``X1``. The target, read at the sequence's last
    step, is ``0.5 + (X1 + X2) / 4`` in ``[0, 1]``; a sequence counts as processed correctly
    when the absolute error is below 0.04.

    Args:
      key: PRNG key.
      batch_size: ``B``.
      length: the minimal length ``T`` (at least 22, so that the first ten pairs lie in the
        first half).
      dtype: floating dtype of ``xs`` and ``targets``.

    Returns:
      ``Batch(xs [B, T + T//10, 2], targets [B], lengths [B])``; ``xs`` is zero past each length.
    """
    B, T = _sizes(batch_size, length, 22, dtype)
    kl, kv, k1, k2 = jax.random.split(key, 4)
    T_max = T + T // 10
    lengths = _random_lengths(kl, B, T)
    steps = jnp.arange(T_max, dtype=jnp.int32)
    valid = steps < lengths[:, None]  # [B, T_max]
    first = jax.random.randint(k1, (B,), 0, 10, jnp.int32)
    r = jax.random.randint(k2, (B,), 0, T // 2 - 1, jnp.int32)  # among the first T/2 pairs, minus `first`
    second = r + (r >= first).astype(jnp.int32)
    marked = (steps == first[:, None]) | (steps == second[:, None])
    ends = (steps == 0) | (steps == lengths[:, None] - 1)
    markers = jnp.where(marked, 1, jnp.where(ends, -1, 0)).astype(dtype)
    values = jax.random.uniform(kv, (B, T_max), dtype, -1.0, 1.0)
    values = jnp.where(marked & (steps == 0), jnp.zeros((), dtype), values)
    xs = jnp.where(valid[..., None], jnp.stack([values, markers], axis=-1), jnp.zeros((), dtype))
    total = jnp.sum(jnp.where(marked, values, jnp.zeros((), dtype)), axis=1)
    return Batch(xs, (0.5 + total / 4).astype(dtype), lengths)


def copy_memory(key: Array, batch_size: int, length: int, *, dtype=jnp.float32) -> Batch:
    """The copy-memory task in the form of Arjovsky et al. 2016.

    Ten symbols drawn uniformly from eight data symbols, then ``T - 1`` blanks, a delimiter
    and ten more blanks (``T + 20`` steps in all, one-hot over 10 categories). The target is
    ``T + 10`` blanks followed by the ten data symbols in order. Predicting blanks and then
    a uniform guess among the eight scores a cross-entropy of ``10 ln 8 / (T + 20)`` per
    step (:func:`copy_memory_baseline`).

    Args:
      key: PRNG key.
      batch_size: ``B``.
      length: ``T``, the gap (at least 1).
      dtype: floating dtype of ``xs``.

    Returns:
      ``Batch(xs [B, T + 20, 10], targets [B, T + 20] int32 classes, lengths [B] = T + 20)``.
    """
    B, T = _sizes(batch_size, length, 1, dtype)
    data = jax.random.randint(key, (B, 10), 0, 8, jnp.int32)
    blanks = lambda n: jnp.full((B, n), COPY_BLANK, jnp.int32)
    delimiter = jnp.full((B, 1), COPY_DELIMITER, jnp.int32)
    inputs = jnp.concatenate([data, blanks(T - 1), delimiter, blanks(10)], axis=1)
    targets = jnp.concatenate([blanks(T + 10), data], axis=1)
    return Batch(jax.nn.one_hot(inputs, 10, dtype=dtype), targets, jnp.full((B,), T + 20, jnp.int32))


def copy_memory_baseline(length: int) -> float:
    """Cross-entropy per step (nats) of the memoryless copy strategy: ``10 ln 8 / (T + 20)``."""
    return 10.0 * float(jnp.log(8.0)) / (length + 20)


def temporal_order(key: Array, batch_size: int, length: int, *, num_relevant: int = 2,
                   dtype=jnp.float32) -> Batch:
    """The temporal-order task of Hochreiter & Schmidhuber 1997, Experiments 6a and 6b.

    A sequence starts with ``E``, ends with ``B`` (the trigger) and is otherwise made of
    random symbols from ``{a, b, c, d}``, except at ``num_relevant`` positions, each holding
    ``X`` or ``Y``. Its class is the temporal order of those symbols: with two (6a), ``XX,
    XY, YX, YY`` give classes 0-3; with three (6b), 8 classes (``X`` = 0, ``Y`` = 1, read as
    a binary number, first symbol most significant). Lengths are uniform in ``[T, T + T/10]``
    and the relevant positions lie in the paper's windows scaled by ``T / 100``
    (:data:`ORDER_WINDOWS`; for ``T = 100``, exactly the paper's: 6a ``t1 ∈ [10, 20]``,
    ``t2 ∈ [50, 60]``).

    Args:
      key: PRNG key.
      batch_size: ``B``.
      length: the minimal length ``T`` (at least 10).
      num_relevant: 2 (Experiment 6a) or 3 (6b).
      dtype: floating dtype of ``xs``.

    Returns:
      ``Batch(xs [B, T + T//10, 8] one-hot over ORDER_SYMBOLS, targets [B] int32 classes in
      [0, 2**num_relevant), lengths [B])``.
    """
    B, T = _sizes(batch_size, length, 10, dtype)
    windows = ORDER_WINDOWS.get(num_relevant) if type(num_relevant) is int else None
    if windows is None:
        raise ValueError(f"`num_relevant` must be 2 (Experiment 6a) or 3 (6b), got {num_relevant!r}.")
    kl, ks, kp, kc = jax.random.split(key, 4)
    T_max = T + T // 10
    lengths = _random_lengths(kl, B, T)
    steps = jnp.arange(T_max, dtype=jnp.int32)
    symbols = jax.random.randint(ks, (B, T_max), 2, 6, jnp.int32)  # a, b, c, d
    choices = jax.random.randint(kc, (B, num_relevant), 0, 2, jnp.int32)  # X = 0, Y = 1
    for k, (lo, hi) in enumerate(windows):
        pos = jax.random.randint(jax.random.fold_in(kp, k), (B,), round(lo * T), round(hi * T) + 1, jnp.int32)
        symbols = jnp.where(steps == pos[:, None], 6 + choices[:, k:k + 1], symbols)
    symbols = jnp.where(steps == 0, 0, symbols)  # E
    symbols = jnp.where(steps == lengths[:, None] - 1, 1, symbols)  # B, the trigger
    xs = jax.nn.one_hot(symbols, len(ORDER_SYMBOLS), dtype=dtype)
    xs = jnp.where((steps < lengths[:, None])[..., None], xs, jnp.zeros((), dtype))
    weights = 2 ** jnp.arange(num_relevant - 1, -1, -1, dtype=jnp.int32)
    return Batch(xs, jnp.sum(choices * weights, axis=1), lengths)
