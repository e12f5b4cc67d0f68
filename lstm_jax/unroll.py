"""``unroll``: the one evaluator of a cell over a sequence.

It owns everything that is the same for every cell and every way of running one: argument
checks (params once, against the cell's ``init``), the time-major layout, ``lengths``,
``reverse``, ``resets``, ``remat_chunk`` and the choice between the generic scan of
``cell.recur`` and the cell's whole-sequence forms (:class:`~lstm_jax.SequenceForm`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lstm_jax import _checks
from lstm_jax.cell import Cell, Resets, SequenceForm
from lstm_jax.ops import tree_where, tree_zeros_where_not

Array = jax.Array
tree_map = jax.tree_util.tree_map


class UnrollAux(NamedTuple):
    """What :func:`unroll` returns on request, laid out like ``ys`` (time on the same axis)."""

    carries: Any | None  # the carry after every step: leaves [..., T, *] ([T, ..., *] time-major)
    gates: dict[str, Array] | None  # per-step activations by name: [..., T, H]


def reverse_within_lengths(xs: Array, lengths: Array) -> Array:
    """Reverses each sequence of a time-major batch within its own length.

    Step ``t < lengths[b]`` of sequence ``b`` goes to ``lengths[b] - 1 - t``; padding stays
    where it is. The map is its own inverse.

    Args:
      xs: ``[T, ..., *]`` time-major sequences (any trailing axes after the batch shape).
      lengths: ``[...]`` integer lengths in ``[0, T]``.

    Returns:
      ``[T, ..., *]``.
    """
    T = xs.shape[0]
    lengths = jnp.clip(jnp.asarray(lengths).astype(jnp.int32), 0, T)  # int8 would wrap in arange(T)
    t = jnp.arange(T, dtype=jnp.int32).reshape((T,) + (1,) * lengths.ndim)
    idx = jnp.where(t < lengths, lengths - 1 - t, t)  # [T, ...]
    idx = idx.reshape(idx.shape + (1,) * (xs.ndim - idx.ndim))
    return jnp.take_along_axis(xs, jnp.broadcast_to(idx, xs.shape), axis=0)


# Steps per loop iteration that unroll="auto" gives on a GPU. Measured on an H200 (README,
# Performance): the fused LSTM at unroll 8 ran forward+backward 1.2-1.9x faster than at unroll 1
# across the GPU anchor sizes; on the CPU unroll 1 was as fast or faster (and compiles faster).
GPU_UNROLL = 8


def default_unroll() -> int:
    """``unroll="auto"``'s factor for JAX's default backend: :data:`GPU_UNROLL` on a GPU, else 1."""
    return GPU_UNROLL if jax.default_backend() == "gpu" else 1


# ------------------------------------------------------------------------------ forms

def _blockers(form: SequenceForm, *, empty, lengths, resets, return_carries, return_gates, remat_chunk, arrays):
    """Why ``form`` cannot serve this call (empty if it can); ``arrays`` is ``(params, xs, carry)``."""
    reasons = ["`xs` is empty (no steps or no sequences)"] if empty else []
    refusal = form.refuses(*arrays) if form.refuses is not None else None
    if refusal:
        reasons.append(refusal)
    for flag, on in (("return_carries", return_carries), ("return_gates", return_gates),
                     ("remat_chunk", remat_chunk is not None)):
        if on:
            reasons.append(f"`{flag}` needs the generic scan")
    if lengths is not None and not form.lengths:
        reasons.append("this form takes no `lengths`")
    if resets is not None and not form.resets:
        reasons.append("this form takes no `resets`")
    return reasons


def _choose_form(cell: Cell, impl: str, **call) -> tuple[str, SequenceForm] | None:
    """The form ``impl`` asks for (None: the generic scan), or a ValueError saying why not."""
    if not isinstance(impl, str):
        raise TypeError(f"`impl` must be a string ('auto', 'scan' or a form name), got {impl!r}.")
    if impl == "scan":
        return None
    if impl == "auto":
        for name, form in cell.forms.items():
            if not _blockers(form, **call) and (form.auto(*call["arrays"]) if callable(form.auto) else form.auto):
                return name, form
        return None
    if impl not in cell.forms:
        have = ", ".join(repr(n) for n in cell.forms) or "none"
        raise ValueError(f"`impl={impl!r}`: {cell!r} has no form {impl!r}; its forms: {have} "
                         "(and 'auto' or 'scan', the generic scan, for every cell).")
    form = cell.forms[impl]
    reasons = _blockers(form, **call)
    if reasons:
        raise ValueError(f"`impl={impl!r}` cannot be used here: {'; '.join(reasons)}. "
                         "Use impl='auto' to fall back to the generic scan.")
    return impl, form


def _run_form(form, params, xs_tm, carry, valid, flags, reset_to, batch, unroll):
    """Runs a form on the flattened batch and restores the batch shape."""
    T, B = jax.tree_util.tree_leaves(xs_tm)[0].shape[0], math.prod(batch)
    nb = len(batch)
    flat_time = lambda a: a.reshape((T, B) + a.shape[1 + nb:])
    flat = lambda a: a.reshape((B,) + a.shape[nb:])
    resets = None if flags is None else Resets(flags.reshape(T, B), tree_map(flat, reset_to))
    ys, carry = form.run(params, tree_map(flat_time, xs_tm), tree_map(flat, carry),
                         valid=None if valid is None else valid.reshape(T, B), resets=resets, unroll=unroll)
    ys = tree_map(lambda a: a.reshape((T,) + batch + a.shape[2:]), ys)
    return ys, tree_map(lambda a: a.reshape(batch + a.shape[1:]), carry)


# ------------------------------------------------------------------------------ the scan

def _scan(cell, params, xs_tm, carry, valid, flags, reset_to, *, unroll, remat_chunk, return_carries,
          return_gates):
    """The generic scan of ``cell.recur``; ``remat_chunk`` makes it an outer scan over
    checkpointed chunks. Returns time-major ``(ys, carry, carries, gates)``."""

    def body(carry, inputs):
        px_t, valid_t, flag_t = inputs
        carry_in = carry if flag_t is None else tree_where(flag_t, reset_to, carry)
        out = cell.recur(params, carry_in, px_t, aux=True) if return_gates else cell.recur(params, carry_in, px_t)
        new, y = out[0], out[1]
        gates = out[2] if return_gates else None
        if valid_t is not None:  # past a sequence's length: keep the carry, output zeros
            new = tree_where(valid_t, new, carry)
            y, gates = tree_zeros_where_not(valid_t, y), tree_zeros_where_not(valid_t, gates)
        return new, (y, new if return_carries else None, gates)

    if remat_chunk is None:
        px = cell.project(params, xs_tm)  # [T, ..., *] all steps in one matmul
        carry, (ys, carries, gates) = jax.lax.scan(body, carry, (px, valid, flags), unroll=unroll)
        return ys, carry, carries, gates

    T = jax.tree_util.tree_leaves(xs_tm)[0].shape[0]
    n = -(-T // remat_chunk)
    pad = n * remat_chunk - T
    if pad:  # padded steps are masked like steps past a sequence's length
        steps = jnp.arange(n * remat_chunk, dtype=jnp.int32) < T
        grown = lambda a: jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
        xs_tm, flags = tree_map(grown, xs_tm), tree_map(grown, flags)
        # a per-step scalar broadcasts over every leaf; with lengths, over the batch shape too
        valid = steps if valid is None else grown(valid) & steps.reshape((-1,) + (1,) * (valid.ndim - 1))
    chunks = lambda a: a.reshape((n, remat_chunk) + a.shape[1:])

    @jax.checkpoint
    def run_chunk(carry, inputs):
        xs_k, valid_k, flags_k = inputs
        px_k = cell.project(params, xs_k)  # [chunk, ..., *]: recomputed in the backward pass
        return jax.lax.scan(body, carry, (px_k, valid_k, flags_k), unroll=unroll)

    carry, outs = jax.lax.scan(run_chunk, carry, tree_map(chunks, (xs_tm, valid, flags)))
    ys, carries, gates = tree_map(lambda a: a.reshape((n * remat_chunk,) + a.shape[2:])[:T], outs)
    return ys, carry, carries, gates


# ------------------------------------------------------------------------------ unroll

def unroll(
    cell: Cell,
    params: Any,
    xs: Any,
    carry: Any = None,
    *,
    lengths: Array | None = None,
    resets: Array | None = None,
    reset_to: Any = None,
    reverse: bool = False,
    time_major: bool = False,
    unroll: int | bool | str = "auto",
    remat_chunk: int | None = None,
    impl: str = "auto",
    return_carries: bool = False,
    return_gates: bool = False,
):
    """Runs ``cell`` over a sequence: the generic scan of ``cell.recur`` or one of its forms.

    The generic scan runs ``cell.project`` once for all steps before the scan (one large
    matmul), so the scan body does only the recurrent matmul and elementwise work.

    Args:
      cell: the :class:`~lstm_jax.Cell`.
      params: its parameters, checked once against ``jax.eval_shape(cell.init, ...)``: another
        variant's params, a wrong size or a mixed dtype is refused naming the first differing
        field.
      xs: ``[..., T, I]`` inputs (``[T, ..., I]`` if ``time_major``); ``...`` is any batch
        shape, including none. Composite cells take a pytree whose leaves share the leading
        ``[..., T]`` axes (e.g. inputs with dropout masks).
      carry: initial carry with leaves ``[..., *]``; zeros (``cell.init_carry``) if None.
      lengths: optional ``[...]`` integer valid lengths in ``[0, T]``. Steps at or beyond a
        sequence's length leave its carry unchanged, output zeros and have no influence on
        values or gradients (their inputs may even be NaN), so the returned carry is each
        sequence's last valid one. Values are checked when concrete; under ``jit`` they are
        not (unless inside :func:`lstm_jax.checked`), and lengths past ``T`` act as ``T``.
      resets: optional ``[..., T]`` bool (``[T, ...]`` time-major), True at the first step of
        each new segment (a document in a packed language-model batch, an episode in RL).
        The carry is set back to ``reset_to`` there, so no information crosses a boundary:
        reading forwards, before that step; with ``reverse``, before the step that precedes
        it (the last step of the previous segment, which a backward reading reaches first).
        Running with resets equals running each segment separately.
      reset_to: the carry a reset restores (default ``cell.init_carry(params, batch_shape)``:
        zeros, not ``carry``, which in truncated BPTT is the previous chunk's state).
      reverse: run from the last step to the first. With ``lengths``, each sequence is
        reversed within its own length (padding stays at the end), which is what a
        bidirectional layer over a padded batch needs. Outputs stay in input order.
      time_major: whether time is the leading axis of ``xs`` (and of the outputs).
      unroll: passed to ``lax.scan`` (and the forms' loops): steps per loop iteration, True
        for all, or ``"auto"`` (default): :func:`lstm_jax.default_unroll`, 8 on a GPU and 1 elsewhere.
      remat_chunk: if set to ``K``, rematerialise in chunks of ``K`` steps (chunked gradient
        checkpointing): each chunk's input projection and steps run under ``jax.checkpoint``
        and the backward pass keeps only the carries at chunk boundaries, so training memory
        grows like ``T / K + K`` steps instead of ``T`` (``K ≈ sqrt(T)`` is the usual choice)
        for one extra forward pass. ``K > T`` acts as ``T``.
      impl: ``"auto"`` (default) takes the first of the cell's forms that ``"auto"`` may
        pick and that can serve the call (e.g. ``lstm(H)``'s ``"fused"`` hand-written
        backward), else the generic scan; ``"scan"`` always the generic scan (differentiated
        by JAX); a form's name (``"fused"``, ``"pallas"``, ``"parallel"``) insists on it and
        raises, listing the cell's forms, when the cell has no such form or it cannot serve
        the call. All compute the same function, equal up to floating-point rounding. Forms
        serve neither ``return_carries``, ``return_gates`` nor ``remat_chunk``.
      return_carries: also return the carry after every step.
      return_gates: also return per-step gate activations (``recur(..., aux=True)``), traced
        only when asked for.

    Returns:
      ``(ys, carry)`` where ``ys`` is ``[..., T, O]`` (``[T, ..., O]`` if ``time_major``; a
      pytree for cells whose outputs are) and ``carry`` is the final carry; with
      ``return_carries`` or ``return_gates``, ``(ys, carry, UnrollAux(carries, gates))``.

    Raises:
      TypeError: ``cell`` is not a Cell (a Layer, or params in its place); ``params`` of
        another variant's type or mixed dtypes; ``xs`` not an array or of another dtype
        than the params; non-integer ``lengths``, non-bool ``resets``.
      ValueError: ``xs`` of rank < 2 or the wrong feature size; params, ``carry``,
        ``lengths`` or ``resets`` of the wrong shape; ``lengths`` outside ``[0, T]``; an
        ``impl`` the cell lacks or that cannot serve the call.
    """
    _checks.cell_argument(cell)
    T, batch, _ = _checks.sequence(cell, params, xs, time_major=time_major)
    nb = len(batch)
    xs_tm = xs if time_major else tree_map(lambda a: jnp.moveaxis(a, nb, 0), xs)
    if carry is None:
        carry = cell.init_carry(params, batch)
    else:
        _checks.carry(cell, params, carry, batch)
    if lengths is not None:
        lengths = _checks.lengths(lengths, batch, T)
    if resets is not None:
        resets = _checks.resets(resets, batch, T, time_major)
        if reset_to is None:
            reset_to = cell.init_carry(params, batch)
            _checks.tree_like("reset_to", reset_to, jax.eval_shape(lambda: carry), "the carry (pass `reset_to`: "
                              f"the default, `cell.init_carry(params, {batch})`, does not fit the carry, as for "
                              "an attention decoder whose carry holds its memory)", batch)
        else:
            _checks.carry(cell, params, reset_to, batch, name="reset_to")
            _checks.tree_like("reset_to", reset_to, jax.eval_shape(lambda: carry), "the carry", batch)
    elif reset_to is not None:
        raise ValueError("`reset_to` is the carry that `resets` restore; pass `resets` with it.")
    unroll = _checks.unroll_factor(unroll)
    if unroll == "auto":
        unroll = default_unroll()
    if remat_chunk is not None:
        remat_chunk = min(_checks.positive_int("remat_chunk", remat_chunk), max(T, 1))
    _checks.boolean("reverse", reverse)
    _checks.boolean("return_carries", return_carries)
    _checks.boolean("return_gates", return_gates)
    chosen = _choose_form(cell, impl, empty=T == 0 or 0 in batch, lengths=lengths, resets=resets,
                          return_carries=return_carries, return_gates=return_gates, remat_chunk=remat_chunk,
                          arrays=(params, xs_tm, carry))

    valid = None
    if lengths is not None:
        valid = jnp.arange(T, dtype=jnp.int32).reshape((T,) + (1,) * nb) < lengths  # [T, ...]
    _checks.finite_inputs(xs_tm, valid)
    if valid is not None:  # padding must not reach values or gradients, even when it is NaN
        xs_tm = tree_zeros_where_not(valid, xs_tm)
    flags = None
    if resets is not None:  # where to reset, by position: before step t in reading order
        starts = resets if valid is None else resets & valid
        flags = jnp.concatenate([starts[1:], jnp.zeros_like(starts[:1])]) if reverse else starts
    if reverse:  # reading order; the map is its own inverse, so it also restores the outputs
        order = (lambda a: jnp.flip(a, 0)) if lengths is None else (lambda a: reverse_within_lengths(a, lengths))
        xs_tm, flags = tree_map(order, xs_tm), tree_map(order, flags)
    else:
        order = None

    if chosen is not None:
        ys, carry = _run_form(chosen[1], params, xs_tm, carry, valid, flags, reset_to, batch, unroll)
        carries = gates = None
    else:
        ys, carry, carries, gates = _scan(cell, params, xs_tm, carry, valid, flags, reset_to, unroll=unroll,
                                          remat_chunk=remat_chunk, return_carries=return_carries,
                                          return_gates=return_gates)

    def to_layout(a):
        a = a if order is None else order(a)
        return a if time_major else jnp.moveaxis(a, 0, nb)

    ys = tree_map(to_layout, ys)
    if not (return_carries or return_gates):
        return ys, carry
    return ys, carry, UnrollAux(carries=tree_map(to_layout, carries) if return_carries else None,
                                gates=tree_map(to_layout, gates) if return_gates else None)
