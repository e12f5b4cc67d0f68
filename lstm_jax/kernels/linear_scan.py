r"""``parallel_unroll``: all time steps of a linear recurrence at once, with an associative scan.

A cell whose carry obeys ``h_t = a_t \odot h_{t-1} + b_t``, with ``a_t, b_t`` depending on
the inputs only (minGRU, minLSTM: :mod:`lstm_jax.cells.minimal`), needs no sequential loop:
the affine maps ``h \mapsto a_t h + b_t`` compose associatively,

.. math::

    (a_2, b_2) \circ (a_1, b_1) = (a_1 a_2,\; a_2 b_1 + b_2),

so ``jax.lax.associative_scan`` evaluates all ``T`` prefixes in ``O(log T)`` depth.

How it is computed, and why (Feng et al. 2024, App. B, do it differently):

* **Coefficients in log space.** Each element carries ``log A`` (a sum of ``log a_t``,
  which the cell computes directly as a ``-softplus``) and combines by addition; ``A``
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
  logs of nearby steps, so its error matches the sequential loop's (tests check ``1e-5``
  at ``T = 4096`` in float32).

The initial carry is folded into the first step (``b_0 \leftarrow a_0 h_0 + b_0``), so the
scan's values are the hidden states themselves. Padded steps (``t >= lengths``) get
``a_t = 1, b_t = 0``: they keep the carry, and the value at ``T - 1`` is the last valid one.
For bfloat16 and float16 parameters the coefficients are computed in that dtype (as the
sequential step computes its gates) but the scan accumulates in float32; outputs and carry
are cast back.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lstm_jax.cell import Cell
from lstm_jax.layers import Layer
from lstm_jax.unroll import prepare_sequence, reverse_within_lengths

Array = jax.Array


def has_parallel_form(cell: Any) -> bool:
    """Whether ``cell`` exposes ``linear_recurrence(params, px) -> (log_a, b)``."""
    return isinstance(cell, Cell) and callable(getattr(cell, "linear_recurrence", None))


def _require_parallel_form(cell: Any) -> None:
    if not isinstance(cell, Cell):
        raise TypeError(f"`cell` must be a lstm_jax Cell (e.g. min_gru(64)), got {type(cell).__name__}.")
    if not has_parallel_form(cell):
        raise TypeError(
            f"`cell` {cell!r} has no parallel form: parallel_unroll needs a recurrence that is "
            "linear in the carry, h_t = a_t * h_{t-1} + b_t with gates that read only x_t "
            "(min_gru, min_lstm from lstm_jax.cells.minimal). Use lstm_jax.unroll for this cell.")


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
    autodiff (``jax.jvp``, ``jax.jacfwd``) is therefore not available here; use
    :func:`lstm_jax.unroll` for it.

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


def parallel_unroll(
    cell: Cell,
    params: Any,
    xs: Array,
    carry: Any = None,
    *,
    lengths: Array | None = None,
    reverse: bool = False,
    time_major: bool = False,
):
    """Runs a linear-recurrence cell over a sequence with ``jax.lax.associative_scan``.

    Same arguments, semantics and results as :func:`lstm_jax.unroll` (up to rounding), for
    cells with a parallel form: minGRU and minLSTM (:mod:`lstm_jax.cells.minimal`), or any
    :class:`~lstm_jax.Cell` with a method ``linear_recurrence(params, px) -> (log_a, b)``
    such that ``recur(params, State(h), px)`` returns ``State(h')`` and ``h'`` with
    ``h' = exp(log_a) * h + b``, for a carry with one array ``[..., H]``. Depth is
    ``O(log T)`` instead of ``O(T)``, work ``O(T)`` (about twice the sequential loop's);
    see the module docstring for the numerics. Reverse-mode gradients use a hand-written
    VJP (:func:`linear_scan`); forward-mode autodiff is not supported (use ``unroll``).
    The associative scan is made for accelerators; on a small CPU it mostly loses to the
    sequential loop, except for short sequences (``experiments/parallel_scan_benchmark.py``
    measures both in one run).

    Args:
      cell: the cell (must have a parallel form).
      params: its parameters.
      xs: ``[..., T, I]`` inputs (``[T, ..., I]`` if ``time_major``).
      carry: initial carry ``[..., H]``; zeros (``cell.init_carry``) if None.
      lengths: optional ``[...]`` integer valid lengths in ``[0, T]``. Steps at or beyond a
        sequence's length keep its carry (``a_t = 1, b_t = 0``) and output zeros; the
        returned carry is each sequence's last valid one.
      reverse: run from the last step to the first; with ``lengths``, within each length
        (:func:`lstm_jax.reverse_within_lengths`). Outputs stay in input order.
      time_major: whether time is the leading axis of ``xs`` and of the outputs.

    Returns:
      ``(ys, carry)``: ``ys`` ``[..., T, H]`` (``[T, ..., H]`` if ``time_major``) in the
      parameters' dtype, and the final carry.

    Raises:
      TypeError: ``cell`` is not a Cell or has no parallel form (e.g. :func:`lstm_jax.lstm`,
        whose gates read ``h_{t-1}``); dtype mismatches; non-integer ``lengths``.
      ValueError: the same shape errors as :func:`lstm_jax.unroll`.
    """
    _require_parallel_form(cell)
    T, xs_tm, carry, lengths = prepare_sequence(cell, params, xs, carry, lengths, reverse, time_major)
    (h0,), carry_tree = jax.tree_util.tree_flatten(carry)

    px = cell.project(params, xs_tm)  # [T, ..., *] all steps in one matmul
    log_a, b = cell.linear_recurrence(params, px)  # [T, ..., H] each
    dtype = h0.dtype
    work = jnp.float32 if jnp.finfo(dtype).bits < 32 else dtype  # bf16/f16 -> f32 inside
    log_a, b, h0 = log_a.astype(work), b.astype(work), h0.astype(work)
    if lengths is not None:
        t = jnp.arange(T, dtype=jnp.int32).reshape((T,) + (1,) * lengths.ndim)
        valid = (t < lengths)[..., None]  # [T, ..., 1]
        log_a = jnp.where(valid, log_a, jnp.zeros_like(log_a))  # a = 1: keep the carry
        b = jnp.where(valid, b, jnp.zeros_like(b))
    # With lengths, reversal was done on the inputs; the scan itself runs forwards.
    flip = reverse and lengths is None
    if flip:
        log_a, b = jnp.flip(log_a, 0), jnp.flip(b, 0)
    hs = linear_scan(log_a, b, h0) if T else b  # [T, ..., H]
    final = hs[-1] if T else h0
    if flip:
        hs = jnp.flip(hs, 0)
    ys = hs if lengths is None else jnp.where(valid, hs, jnp.zeros_like(hs))
    if reverse and lengths is not None:
        ys = reverse_within_lengths(ys, lengths)
    ys = ys.astype(dtype)
    carry = jax.tree_util.tree_unflatten(carry_tree, [final.astype(dtype)])
    return (ys if time_major else jnp.moveaxis(ys, 0, -2)), carry


def parallel_layer(cell: Cell, *, reverse: bool = False, time_major: bool = False) -> Layer:
    """A sequence layer like :func:`lstm_jax.layer` that runs :func:`parallel_unroll`.

    Combines with :func:`lstm_jax.stack`, :func:`lstm_jax.bidirectional` and
    :func:`lstm_jax.models.readout` like any layer.

    Args:
      cell: a cell with a parallel form (e.g. ``min_gru(64)``).
      reverse: read each sequence backwards (within its length when ``lengths`` is given).
      time_major: ``xs`` is ``[T, ..., I]`` instead of ``[..., T, I]``.

    Returns:
      A :class:`~lstm_jax.Layer` with the cell's params and carry.
    """
    _require_parallel_form(cell)

    def apply(params, xs, carry=None, *, lengths=None, key=None):
        del key  # a single cell has no dropout
        return parallel_unroll(cell, params, xs, carry, lengths=lengths, reverse=reverse,
                               time_major=time_major)

    return Layer(init=cell.init, apply=apply, init_carry=cell.init_carry,
                 output_size=cell.output_size, reverse=reverse, time_major=time_major,
                 spec={"kind": "parallel_layer", "cell": cell})
