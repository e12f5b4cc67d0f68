"""``unroll``: the one place in the library that scans a cell over time."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax import _checks
from lstm_jax.cell import Cell

Array = jax.Array


class UnrollAux(NamedTuple):
    """What :func:`unroll` returns on request, laid out like ``ys`` (time on the same axis)."""

    carries: Any | None  # the carry after every step: leaves [..., T, n] ([T, ..., n] time-major)
    gates: dict[str, Array] | None  # per-step activations by name: [..., T, H]


def reverse_within_lengths(xs: Array, lengths: Array) -> Array:
    """Reverses each sequence of a time-major batch within its own length.

    Step ``t < lengths[b]`` of sequence ``b`` goes to ``lengths[b] - 1 - t``; padding stays
    where it is. The map is its own inverse.

    Args:
      xs: ``[T, ..., F]`` time-major sequences.
      lengths: ``[...]`` integer lengths.

    Returns:
      ``[T, ..., F]``.
    """
    T = xs.shape[0]
    lengths = jnp.asarray(lengths).astype(jnp.int32)  # narrow ints would wrap in arange(T)
    t = jnp.arange(T, dtype=jnp.int32).reshape((T,) + (1,) * lengths.ndim)
    idx = jnp.where(t < lengths, lengths - 1 - t, t)  # [T, ...]
    idx = jnp.broadcast_to(idx[..., None], idx.shape + xs.shape[lengths.ndim + 1:])
    return jnp.take_along_axis(xs, idx, axis=0)


def _check_carry(cell: Cell, params, carry, batch_shape) -> None:
    expected = jax.eval_shape(lambda p: cell.init_carry(p, batch_shape), params)
    exp_leaves, exp_tree = jax.tree_util.tree_flatten(expected)
    got_leaves, got_tree = jax.tree_util.tree_flatten(carry)
    describe = lambda leaves: [tuple(jnp.shape(x)) for x in leaves]
    if got_tree != exp_tree:
        raise ValueError(f"`carry` must have the structure of `cell.init_carry(params, {batch_shape})`: "
                         f"{exp_tree}, got {got_tree}.")
    if describe(got_leaves) != describe(exp_leaves):
        raise ValueError(f"`carry` must have shapes {describe(exp_leaves)} for batch shape "
                         f"{batch_shape}, got {describe(got_leaves)}.")
    for g, e in zip(got_leaves, exp_leaves):
        if jnp.result_type(g) != e.dtype:
            raise TypeError(f"`carry` must have dtype {e.dtype} (the parameters'), got {jnp.result_type(g)}.")


def _check_lengths(lengths, batch_shape, T) -> Array:
    lengths = jnp.asarray(lengths)  # accept lists and NumPy arrays
    if not jnp.issubdtype(jnp.result_type(lengths), jnp.integer):
        raise TypeError(f"`lengths` must be an integer array, got dtype {jnp.result_type(lengths)}.")
    if tuple(jnp.shape(lengths)) != tuple(batch_shape):
        raise ValueError(f"`lengths` must have shape {tuple(batch_shape)} (the batch shape of `xs`), "
                         f"got {tuple(jnp.shape(lengths))}.")
    if _checks.is_concrete(lengths):
        values = np.asarray(lengths)
        if values.size and (values.min() < 0 or values.max() > T):
            raise ValueError(f"`lengths` must lie in [0, {T}] (T, the number of steps in `xs`), "
                             f"got values in [{values.min()}, {values.max()}].")
    return lengths.astype(jnp.int32)  # an int8 step counter would wrap before T


def _chunked_scan(cell: Cell, params, body, carry, xs_tm, chunk: int, reverse: bool, unroll):
    """``lax.scan(body)`` over time as an outer scan over checkpointed chunks of ``chunk`` steps."""
    T = xs_tm.shape[0]
    n = -(-T // chunk)
    pad = n * chunk - T
    to_chunks = lambda a: jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)).reshape((n, chunk) + a.shape[1:])
    ts_pad = jnp.arange(n * chunk, dtype=jnp.int32)

    @jax.checkpoint
    def run_chunk(carry, inputs):
        xs_k, ts_k = inputs
        px_k = cell.project(params, xs_k)  # [chunk, ..., *]: recomputed in the backward pass
        return jax.lax.scan(body, carry, (px_k, ts_k), reverse=reverse, unroll=unroll)

    carry, outs = jax.lax.scan(run_chunk, carry, (to_chunks(xs_tm), ts_pad.reshape(n, chunk)), reverse=reverse)
    from_chunks = lambda a: a.reshape((n * chunk,) + a.shape[2:])[:T]
    return carry, jax.tree_util.tree_map(from_chunks, outs)


def _fused_blockers(cell: Cell, xs_shape, return_carries, return_gates, remat_chunk) -> list[str]:
    """Why the cell's fused fast path cannot serve this call (empty if it can)."""
    reasons = [] if 0 not in xs_shape else ["`xs` is empty (no steps or no sequences)"]
    if cell.fused is None:
        reasons.append(f"{cell!r} has no fused path (only lstm(H) and gru(H) without variants do)")
    for flag, on in (("return_carries", return_carries), ("return_gates", return_gates),
                     ("remat_chunk", remat_chunk is not None)):
        if on:
            reasons.append(f"`{flag}` needs the generic scan")
    return reasons


def _fused_unroll(cell: Cell, params, xs_tm, carry, lengths, reverse, time_major, unroll, kernel):
    """``unroll`` through ``cell.fused``: flattens the batch axes, runs, restores the layout."""
    jax.eval_shape(cell.project, params, xs_tm)  # the same argument checks as the scan path
    T, batch_shape = xs_tm.shape[0], xs_tm.shape[1:-1]
    flat = lambda a: a.reshape((-1, a.shape[-1]))
    xs_flat = xs_tm.reshape((T, -1, xs_tm.shape[-1]))
    valid = None
    if lengths is not None:  # reversal within lengths was done on the inputs: run forwards
        valid = (jnp.arange(T, dtype=jnp.int32)[:, None] < lengths.reshape(-1)[None, :])[..., None]
    elif reverse:
        xs_flat = xs_flat[::-1]
    ys, carry = cell.fused(params, xs_flat, jax.tree_util.tree_map(flat, carry), valid, unroll, kernel)
    if reverse and lengths is None:
        ys = ys[::-1]
    elif reverse:
        ys = reverse_within_lengths(ys, lengths.reshape(-1))
    ys = ys.reshape((T,) + batch_shape + ys.shape[-1:])
    carry = jax.tree_util.tree_map(lambda a: a.reshape(batch_shape + a.shape[-1:]), carry)
    return (ys if time_major else jnp.moveaxis(ys, 0, -2)), carry


def prepare_sequence(cell: Cell, params, xs, carry, lengths, reverse: bool, time_major: bool):
    """Checks a sequence call's arguments and puts ``xs`` time-major.

    Shared by every evaluator of a cell over a sequence (:func:`unroll`,
    :func:`lstm_jax.parallel_unroll`) so that they accept and refuse the same things.

    Returns:
      ``(T, xs_tm [T, ..., I], carry, lengths)``: the carry is zeros when None was given;
      ``lengths`` is a checked array or None; with ``reverse`` and ``lengths``, ``xs_tm``
      is already reversed within each sequence's length.
    """
    xs_shape = tuple(jnp.shape(xs))
    layout = "[T, ..., I]" if time_major else "[..., T, I]"
    if len(xs_shape) < 2:
        raise ValueError(f"`xs` must have shape {layout} (at least 2 axes), got shape {xs_shape}.")
    if time_major:
        T, batch_shape, xs_tm = xs_shape[0], xs_shape[1:-1], xs
    else:
        jax.eval_shape(cell.project, params, xs)  # checks xs in the caller's layout (shapes only)
        T, batch_shape, xs_tm = xs_shape[-2], xs_shape[:-2], jnp.moveaxis(xs, -2, 0)

    if carry is None:
        carry = cell.init_carry(params, batch_shape)
    else:
        _check_carry(cell, params, carry, batch_shape)
    if lengths is not None:
        lengths = _check_lengths(lengths, batch_shape, T)
        if reverse:
            xs_tm = reverse_within_lengths(xs_tm, lengths)
    return T, xs_tm, carry, lengths


def unroll(
    cell: Cell,
    params: Any,
    xs: Array,
    carry: Any = None,
    *,
    lengths: Array | None = None,
    reverse: bool = False,
    time_major: bool = False,
    unroll: int | bool = 1,
    return_carries: bool = False,
    return_gates: bool = False,
    remat_chunk: int | None = None,
    impl: str = "auto",
):
    """Runs ``cell`` over a sequence with one ``jax.lax.scan``.

    The input projection ``cell.project`` runs once for all steps before the scan (one
    large matmul), so the scan body does only the recurrent matmul and elementwise work.

    Args:
      cell: the :class:`~lstm_jax.Cell`.
      params: its parameters.
      xs: ``[..., T, I]`` inputs (``[T, ..., I]`` if ``time_major``); ``...`` is any batch
        shape, including none.
      carry: initial carry with leaves ``[..., n]``; zeros (``cell.init_carry``) if None.
      lengths: optional ``[...]`` integer valid lengths in ``[0, T]``. Steps at or beyond a
        sequence's length leave its carry unchanged and output zeros, so the returned carry
        is each sequence's last valid one. Values are checked when concrete; under ``jit``
        they are not, and lengths past ``T`` act as ``T``.
      reverse: run from the last step to the first. With ``lengths``, each sequence is
        reversed within its own length (padding stays at the end), which is what a
        bidirectional layer over a padded batch needs. Outputs stay in input order.
      time_major: whether time is the leading axis of ``xs`` (and of the outputs).
      unroll: passed to ``lax.scan``: steps per loop iteration (or True for all).
      return_carries: also return the carry after every step.
      return_gates: also return per-step gate activations (``cell.recur_with_gates``);
        traced only when asked for, so the default path is unchanged.
      remat_chunk: if set to ``K``, rematerialise in chunks of ``K`` steps (chunked gradient
        checkpointing): the time axis is cut into ``ceil(T / K)`` chunks, each chunk's input
        projection and steps run under ``jax.checkpoint``, and the backward pass keeps only
        the carries at chunk boundaries, recomputing one chunk at a time. Training memory
        then grows like ``T / K + K`` steps instead of ``T`` (``K ≈ sqrt(T)`` is the usual
        choice), for the price of one extra forward pass. Results are equal up to
        floating-point rounding (the chunked program may fuse differently).
      impl: ``"auto"`` (default) uses the cell's fused fast path when it has one (``lstm(H)``
        and ``gru(H)`` without variants: a hand-written backward pass, see
        :mod:`lstm_jax.fused`) and the call asks for nothing it does not give
        (``return_carries``, ``return_gates``, ``remat_chunk``); otherwise the generic scan.
        ``"scan"`` always takes the generic scan of ``cell.recur`` (differentiated by JAX);
        ``"fused"`` insists on the fast path and raises if it cannot be used; ``"pallas"`` is
        the fused LSTM path with its recurrence as Pallas kernels
        (:mod:`lstm_jax.pallas_lstm`; LSTM only, no ``lengths``; interpret mode off the GPU;
        opt-in, since its GPU speed is unmeasured). All compute the same function, equal up
        to floating-point rounding.

    Returns:
      ``(ys, carry)`` where ``ys`` is ``[..., T, O]`` (``[T, ..., O]`` if ``time_major``) and
      ``carry`` is the final carry; with ``return_carries`` or ``return_gates``,
      ``(ys, carry, UnrollAux(carries, gates))``.

    Raises:
      ValueError: ``xs`` of rank < 2 or the wrong feature size; a ``carry`` or ``lengths``
        of the wrong shape; ``lengths`` outside ``[0, T]``; ``impl="fused"`` where the fast
        path does not apply.
      TypeError: ``xs``/``carry`` dtype differs from the parameters'; non-integer ``lengths``.
    """
    T, xs_tm, carry, lengths = prepare_sequence(cell, params, xs, carry, lengths, reverse, time_major)
    if remat_chunk is not None:
        remat_chunk = _checks.positive_int("remat_chunk", remat_chunk)
    if not isinstance(unroll, bool):  # True unrolls fully; otherwise steps per loop iteration
        unroll = _checks.positive_int("unroll", unroll)
    _checks.choice("impl", impl, ("auto", "scan", "fused", "pallas"))
    blockers = _fused_blockers(cell, jnp.shape(xs), return_carries, return_gates, remat_chunk)
    if impl in ("fused", "pallas") and blockers:
        raise ValueError(f"`impl={impl!r}` cannot be used here: {'; '.join(blockers)}. "
                         "Use impl='auto' to fall back to the generic scan.")
    if impl != "scan" and not blockers:
        kernel = "pallas" if impl == "pallas" else "xla"
        return _fused_unroll(cell, params, xs_tm, carry, lengths, reverse, time_major, unroll, kernel)

    recur = cell.recur_with_gates if return_gates else cell.recur
    ts = jnp.arange(T, dtype=jnp.int32)
    # Chunking pads the time axis to a multiple of the chunk; padded steps are masked like
    # steps past a sequence's length.
    padded = remat_chunk is not None and T % remat_chunk != 0
    limit = lengths if lengths is not None else (jnp.asarray(T, jnp.int32) if padded else None)

    def body(carry, inputs):
        px_t, t = inputs
        out = recur(params, carry, px_t)
        new_carry, y = out[0], out[1]
        gates = out[2] if return_gates else None
        if limit is not None:
            valid = (t < limit)[..., None]  # [..., 1]
            new_carry = jax.tree_util.tree_map(lambda n, o: jnp.where(valid, n, o), new_carry, carry)
            y = jnp.where(valid, y, jnp.zeros_like(y))
            if gates is not None:
                gates = {k: jnp.where(valid, v, jnp.zeros_like(v)) for k, v in gates.items()}
        return new_carry, (y, new_carry if return_carries else None, gates)

    # With lengths, reversal was done on the inputs; the scan itself runs forwards.
    scan_reverse = reverse and lengths is None
    if remat_chunk is None:
        px = cell.project(params, xs_tm)  # [T, ..., *] all steps in one matmul
        carry, (ys, carries, gates) = jax.lax.scan(body, carry, (px, ts), reverse=scan_reverse,
                                                   unroll=unroll)
    else:
        carry, (ys, carries, gates) = _chunked_scan(cell, params, body, carry, xs_tm, remat_chunk,
                                                    scan_reverse, unroll)

    def to_layout(a):
        if reverse and lengths is not None:
            a = reverse_within_lengths(a, lengths)
        return a if time_major else jnp.moveaxis(a, 0, -2)

    ys = to_layout(ys)
    if not (return_carries or return_gates):
        return ys, carry
    aux = UnrollAux(
        carries=jax.tree_util.tree_map(to_layout, carries) if return_carries else None,
        gates={k: to_layout(v) for k, v in gates.items()} if return_gates else None,
    )
    return ys, carry, aux
