r"""All time steps of a linear recurrence at once, with an associative scan.

A recurrence ``h_t = a_t \odot h_{t-1} + b_t`` whose coefficients depend on the inputs only
(minGRU, minLSTM: :mod:`lstm_jax.cells.minimal`, whose ``"parallel"`` form runs this) needs
no sequential loop: the affine maps ``h \mapsto a_t h + b_t`` compose associatively,

.. math::

    (a_2, b_2) \circ (a_1, b_1) = (a_1 a_2,\; a_2 b_1 + b_2),

so ``jax.lax.associative_scan`` evaluates all ``T`` prefixes in ``O(log T)`` depth, for about
twice the sequential loop's work.

How it is computed, and why (Feng et al. 2024, App. B, do it differently):

* **Coefficients in log space.** Each element carries ``log A`` (a sum of ``log a_t``,
  which the cells compute directly as a ``-softplus``) and combines by addition; ``A``
  enters only as ``exp(log A_2) * B_1``. Long products of gates never under- or overflow
  on the way, and an ``A`` too small for the dtype flushes to the exact limit 0.
* **Values in linear space.** ``B`` (a partial sum ``\sum_k b_k \prod_{j>k} a_j``) stays
  an ordinary signed number. With ``a_t \in (0, 1)`` and ``f' + i' = 1`` (or
  ``(1 - z) + z = 1``) it is a damped sum of the ``b_t``, bounded by ``\max |\tilde h|``,
  so linear space has no range problem, and any sign of ``\tilde h`` or ``h_0`` is exact
  (the identity candidate, a negative initial carry), with no sign bookkeeping.
* **Not the paper's global form.** The paper computes ``log h_t = a^*_t +
  logcumsumexp_k(log b_k - a^*_k)`` with ``a^*_t = \sum_{k<=t} log a_k``. That needs
  ``b_k, h_0 > 0`` (hence its ``g`` and ``g(h_0)``), and ``a^*_t`` grows like ``-t``: at
  ``T = 4096`` it is about ``-3000``, where float32 resolves only ``2.4e-4``, so ``h_t``
  carries relative errors near ``1e-4``. The pairwise combination above only ever adds
  logs of nearby steps, so its error matches the sequential loop's (the tests check
  ``1e-5`` at ``T = 4096`` in float32).
* **Low precision.** For bfloat16 and float16 the coefficients arrive in that dtype (the
  cells compute them as their sequential step computes its gates) but the scan accumulates
  in float32; values are cast back at the end.

The initial carry is folded into the first step (``b_0 \leftarrow a_0 h_0 + b_0``), so the
scan's values are the states themselves. :func:`linear_recurrence` adds the sequence
contract of a cell's form: invalid steps (past a sequence's length) get ``a_t = 1, b_t = 0``,
so they keep the carry; a reset before step ``r`` makes that step start from ``h^{reset}``,
which is the step ``(0, a_r h^{reset} + b_r)``: ``\log a_r = -\infty`` cuts every earlier
contribution exactly (``\exp(-\infty) = 0``) and the reset carry enters through ``b_r``,
so its gradient is ``a_r`` times what reaches step ``r``'s state.

Arrays in, arrays out: time is the leading axis, ``[T, ...]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _combine(earlier, later):
    """Composes two affine maps given as ``(log A, B)``: first ``earlier``, then ``later``."""
    log_a1, b1 = earlier
    log_a2, b2 = later
    return log_a1 + log_a2, jnp.exp(log_a2) * b1 + b2


def _scan(log_a, b, h0):
    b = b.at[0].set(jnp.exp(log_a[0]) * h0 + b[0])  # fold the initial state into step 0
    return jax.lax.associative_scan(_combine, (log_a, b), axis=0)[1]


@jax.custom_vjp
def linear_scan(log_a: Array, b: Array, h0: Array) -> Array:
    r"""All states of ``h_t = exp(log_a_t) * h_{t-1} + b_t``, ``t = 0..T-1``, in parallel.

    Differentiable in reverse mode with a hand-written VJP: the cotangent obeys the same
    kind of recurrence backwards in time, ``g_t = \bar h_t + a_{t+1} g_{t+1}``, so the
    backward pass is one more ``linear_scan`` (reversed) instead of the transpose of every
    level of the associative scan: about 1.5x faster to run and to compile, and it stores
    only ``h`` and ``log a``. Then ``\partial b_t = g_t``,
    ``\partial \log a_t = g_t a_t h_{t-1}`` and ``\partial h_0 = a_0 g_0``. Forward-mode
    autodiff (``jax.jvp``, ``jax.jacfwd``) is therefore not available here; the generic scan
    (``lstm_jax.unroll(..., impl="scan")``) has it.

    Args:
      log_a: ``[T, ...]`` log coefficients (``-inf`` allowed: ``a_t = 0``), ``T >= 1``.
      b: ``[T, ...]`` offsets (any sign).
      h0: ``[...]`` the state before step 0.

    Returns:
      ``h`` ``[T, ...]``; ``h[-1]`` is the last state.
    """
    return _scan(log_a, b, h0)


def _linear_scan_fwd(log_a, b, h0):
    h = _scan(log_a, b, h0)
    return h, (log_a, h, h0)


def _linear_scan_bwd(residuals, h_bar):
    log_a, h, h0 = residuals
    # g_t = h_bar_t + a_{t+1} g_{t+1}: a forward linear scan over the time-reversed sequence
    log_a_next = jnp.concatenate([log_a[1:], jnp.zeros_like(log_a[:1])], axis=0)
    g = jnp.flip(_scan(jnp.flip(log_a_next, 0), jnp.flip(h_bar, 0), jnp.zeros_like(h0)), 0)
    a = jnp.exp(log_a)
    h_prev = jnp.concatenate([h0[None], h[:-1]], axis=0)
    return g * a * h_prev, g, a[0] * g[0]


linear_scan.defvjp(_linear_scan_fwd, _linear_scan_bwd)


def linear_recurrence(
    log_a: Array,
    b: Array,
    h0: Array,
    *,
    valid: Array | None = None,
    flags: Array | None = None,
    h_reset: Array | None = None,
) -> tuple[Array, Array]:
    r"""``h_t = a_t \odot h_{t-1} + b_t`` over a batch of sequences, with lengths and resets.

    Args:
      log_a: ``[T, B, H]`` log coefficients ``\log a_t`` (``<= 0`` for the minimal cells).
      b: ``[T, B, H]`` offsets.
      h0: ``[B, H]`` the carry before step 0; its dtype is the result's.
      valid: optional ``[T, B]`` bool: invalid steps keep the carry and output zeros.
      flags: optional ``[T, B]`` bool: a flagged step starts from ``h_reset`` instead of
        the carry before it (flags on invalid steps must be off).
      h_reset: ``[B, H]`` the carry a reset restores (with ``flags``).

    Returns:
      ``(hs [T, B, H], h_last [B, H])``: the state after every step (zeros at invalid steps)
      and after the last valid one, in ``h0``'s dtype.
    """
    dtype = h0.dtype
    work = jnp.float32 if jnp.finfo(dtype).bits < 32 else dtype  # bf16/f16: accumulate in f32
    log_a, b, h0 = log_a.astype(work), b.astype(work), h0.astype(work)
    if valid is not None:  # a = 1, b = 0: the carry passes through
        keep = valid[..., None]
        log_a = jnp.where(keep, log_a, jnp.zeros_like(log_a))
        b = jnp.where(keep, b, jnp.zeros_like(b))
    if flags is not None:  # the step (0, a h_reset + b): nothing before it reaches it
        flag = flags[..., None]
        b = jnp.where(flag, jnp.exp(log_a) * h_reset.astype(work)[None] + b, b)
        log_a = jnp.where(flag, jnp.full_like(log_a, -jnp.inf), log_a)
    hs = linear_scan(log_a, b, h0)
    h_last = hs[-1]
    if valid is not None:
        hs = jnp.where(valid[..., None], hs, jnp.zeros_like(hs))
    return hs.astype(dtype), h_last.astype(dtype)
