"""Fused LSTM and GRU layers: one scan forward, a hand-written backward pass.

Differentiating :func:`lax.scan` of a cell step is correct but wasteful: the backward scan
re-derives every gate's derivative from saved intermediates and accumulates the weight
gradients one small ``[H, B] x [B, G*H]`` product per step, carrying the ``[H, G*H]`` sum
through the loop. For the vanilla LSTM and GRU we know the derivative in closed form, so the
layer is a :func:`jax.custom_vjp` that

- forward: runs the recurrence once, keeping only what the backward needs — the gate
  activations ``[T, B, G*H]`` and the cell states (LSTM) or the recurrent candidate term (GRU);
- backward: one reverse scan that computes the gradient ``dz`` of every gate pre-activation
  (all the elementwise work of a step fused in one pass) and passes ``dz_t W_h^T`` back in time;
- then the weight and input gradients as three large matmuls over all ``T*B`` rows at once:
  ``dW_h = H_prev^T dZ``, ``dW_x = X^T dZ`` and ``dX = dZ W_x^T``.

Both take a ``valid`` step mask (steps past a sequence's length keep the carry and output
zeros) and ``resets`` (before a flagged step the carry is set to a reset carry, whose
gradient collects what flows into it at every reset).

Where the input projection ``x_t W_x + b`` runs is chosen per backend: on accelerators it is
hoisted out of the scan (one big matmul); on the CPU it runs inside the scan body, which XLA's
CPU backend executes faster (measured, see :func:`hoist_projection` and the README's
Performance section).

These are the ``"fused"`` forms of ``lstm(H)`` (no peepholes, projection, layer norm or other
variant) and ``gru(H)`` (``reset_after=True``), which :func:`lstm_jax.unroll` picks by itself
when the call asks for nothing they do not give; ``unroll(..., impl="scan")`` turns them off.
Arrays in, arrays out: shapes here are time-major with the batch flattened, ``[T, B, *]``;
``valid`` and reset flags are ``[T, B]`` bool.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lstm_jax.ops import lstm_update

Array = jax.Array


def hoist_projection() -> bool:
    """Whether the input projection runs before the scan (True) or inside it (False).

    Inside on the CPU: XLA's CPU backend runs the scan body's elementwise fusions markedly
    slower when they read a slice of a large precomputed ``[T, B, G*H]`` array than when they
    read two fresh ``[B, G*H]`` matmul results. With the projection hoisted, the fused forward
    pass took 1.4-1.7x as long at (B, T, H) = (32, 128, 256) and (8, 500, 128) on a 2-core
    CPU (2026-11-23), and re-measured on 2026-12-04 (interleaved, jax 0.10.2) 1.51x and 1.15x
    (LSTM), 1.50x and 1.27x (GRU); forward+backward was within noise either way (0.89-1.20x).
    Accelerators keep the classic hoisted matmul. (On the CPU the LSTM's default is now the
    oneDNN form where it is built; this choice concerns the fused form.)
    """
    return jax.default_backend() != "cpu"


def _f32(x: Array) -> Array:
    """Elementwise math in at least float32 (bf16 gate arithmetic loses too much)."""
    return x.astype(jnp.float32) if jnp.finfo(x.dtype).bits < 32 else x


def _matmul(a: Array, b: Array) -> Array:
    """``a @ b`` accumulated in at least float32."""
    acc = jnp.float32 if jnp.finfo(a.dtype).bits < 32 else a.dtype
    return jnp.matmul(a, b, preferred_element_type=acc)


def _weight_grad(rows: Array, dz: Array, dtype) -> Array:
    """``sum_t rows[t]^T dz[t]`` for ``rows [T, B, n]``, ``dz [T, B, m]``: one ``[n, T*B] x [T*B, m]`` matmul."""
    n, m = rows.shape[-1], dz.shape[-1]
    return _matmul(rows.reshape(-1, n).T, dz.reshape(-1, m)).astype(dtype)


def _keep(valid, new, old):
    """``new`` where the step is valid (``valid [B, 1]``), else ``old`` (the carry stands still
    past a length)."""
    return new if valid is None else jnp.where(valid, new, old)


# --- LSTM --------------------------------------------------------------------------------


def lstm_step(z: Array, c_prev: Array):
    """One LSTM step from pre-activations ``z [B, 4H]`` (blocks i, f, g, o): ``(h, c, (i, f, g, o))``, f32."""
    h, c, gates = lstm_update(*jnp.split(_f32(z), 4, axis=-1), _f32(c_prev))
    return h, c, tuple(gates[k] for k in ("input", "forget", "candidate", "output"))


def _mask(m, t):
    """Row ``t`` of a ``[T, B]`` mask as ``[B, 1]`` (None stays None)."""
    return None if m is None else m[t][:, None]


def _reset(flag, reset_value, value):
    """The carry a step starts from: ``reset_value`` where the step is flagged."""
    return value if flag is None else jnp.where(flag, reset_value, value)


def _prev(seq, first):
    """``[first, seq[0], ..., seq[T-2]]``: the carry entering each step (before resets)."""
    return jnp.concatenate([first[None], seq[:-1]], axis=0)


def _entering(seq, first, flags, reset_value):
    """The carry each step actually starts from, resets applied: ``[T, B, H]``."""
    prev = _prev(seq, first)
    return prev if flags is None else jnp.where(flags[..., None], reset_value[None], prev)


def lstm_recurrence(seq, w_h, h0, c0, *, valid=None, flags=None, hr=None, cr=None, w_x=None, b=None,
                    unroll=1):
    """The LSTM recurrence over time, keeping what the backward pass needs.

    Args:
      seq: ``[T, B, 4H]`` pre-computed input projections ``x W_x + b``, or, with ``w_x`` and
        ``b`` given, the raw inputs ``[T, B, I]`` (projected inside the scan).
      w_h: ``[H, 4H]``.
      h0, c0: ``[B, H]``.
      valid: optional ``[T, B]`` bool; invalid steps keep the carry.
      flags: optional ``[T, B]`` bool; flagged steps start from ``(hr, cr)`` ``[B, H]``.
      unroll: ``lax.scan`` unroll factor.

    Returns:
      ``(hs, cs, acts)``: the carries ``h_t``, ``c_t`` after every step ``[T, B, H]`` and the
      gate activations ``acts = (i, f, g, o)``, each ``[T, B, H]``, all in ``w_h``'s dtype.
      Separate arrays rather than one ``[T, B, 4H]``: XLA's CPU backend reads a contiguous
      ``[B, H]`` slice per step much faster than a column block of a ``[B, 4H]`` one.
    """
    dtype = w_h.dtype
    ts = jnp.arange(seq.shape[0], dtype=jnp.int32)

    def body(carry, inputs):
        h_kept, c_kept = carry
        s, t = inputs
        flag = _mask(flags, t)
        h_prev, c_prev = _reset(flag, hr, h_kept), _reset(flag, cr, c_kept)
        px = _f32(s) if w_x is None else _matmul(s, w_x) + _f32(b)
        h, c, acts = lstm_step(px + _matmul(h_prev, w_h), c_prev)
        h, c, acts = h.astype(dtype), c.astype(dtype), tuple(a.astype(dtype) for a in acts)
        ok = _mask(valid, t)
        h, c = _keep(ok, h, h_kept), _keep(ok, c, c_kept)
        return (h, c), (h, c, acts)

    _, (hs, cs, acts) = jax.lax.scan(body, (h0, c0), (seq, ts), unroll=unroll)
    return hs, cs, acts


def lstm_recurrence_grad(w_h, acts, cs, c_prevs, dhs, dh_last, dc_last, *, valid=None, flags=None, unroll=1):
    """Reverse pass of :func:`lstm_recurrence`: the gradient of every gate pre-activation.

    With ``dh = dhs_t + dh_{t+1}``, ``tc = tanh(c_t)``:
    ``do = dh tc``, ``dc = dc_{t+1} + dh o (1 - tc^2)``, ``di = dc g``, ``dg = dc i``,
    ``df = dc c_{t-1}``, ``dz_t = [di i(1-i), df f(1-f), dg (1-g^2), do o(1-o)]``,
    then ``dh_t = dz_t W_h^T`` and ``dc_t = dc f`` flow to step ``t-1`` — or, at a flagged
    step, to the reset carry.

    Args:
      w_h: ``[H, 4H]``; acts ``(i, f, g, o)`` each ``[T, B, H]``; cs ``[T, B, H]``; c_prevs
        ``[T, B, H]`` the cell state each step started from (resets applied).
      dhs: ``[T, B, H]`` gradient w.r.t. the outputs ``h_t``.
      dh_last, dc_last: ``[B, H]`` gradient w.r.t. the final carry.
      valid, flags: optional ``[T, B]`` masks as in the forward pass.

    Returns:
      ``(dz [T, B, 4H], dh0 [B, H], dc0 [B, H], dhr [B, H], dcr [B, H])``.
    """
    dtype = w_h.dtype
    w_h_t = w_h.T
    ts = jnp.arange(cs.shape[0], dtype=jnp.int32)
    zeros = jnp.zeros_like(dh_last)

    def body(carry, inputs):
        dh_next, dc_next, dhr, dcr = carry
        a, c, c_prev, dh_out, t = inputs
        i, f, g, o = (_f32(x) for x in a)
        c, c_prev = _f32(c), _f32(c_prev)
        ok = _mask(valid, t)
        dh = _f32(dh_next) + _f32(_keep(ok, dh_out, jnp.zeros_like(dh_out)))
        tc = jnp.tanh(c)
        dc = _f32(dc_next) + dh * o * (1.0 - tc * tc)
        dz = jnp.concatenate([dc * g * i * (1.0 - i), dc * c_prev * f * (1.0 - f),
                              dc * i * (1.0 - g * g), dh * tc * o * (1.0 - o)], axis=-1).astype(dtype)
        if ok is not None:
            dz = jnp.where(ok, dz, jnp.zeros_like(dz))
        dh_prev = _keep(ok, _matmul(dz, w_h_t), dh).astype(dtype)
        dc_prev = _keep(ok, dc * f, _f32(dc_next)).astype(dtype)
        flag = _mask(flags, t)
        if flag is not None:  # the step started from the reset carry, not from step t-1
            dhr, dcr = dhr + jnp.where(flag, dh_prev, zeros), dcr + jnp.where(flag, dc_prev, zeros)
            dh_prev, dc_prev = jnp.where(flag, zeros, dh_prev), jnp.where(flag, zeros, dc_prev)
        return (dh_prev, dc_prev, dhr, dcr), dz

    (dh0, dc0, dhr, dcr), dz = jax.lax.scan(body, (dh_last, dc_last, zeros, zeros),
                                            (acts, cs, c_prevs, dhs, ts), reverse=True, unroll=unroll)
    return dz, dh0, dc0, dhr, dcr


# --- GRU ---------------------------------------------------------------------------------


def gru_step(px: Array, rec: Array, b_hn: Array, h_prev: Array):
    """One reset-after GRU step from ``px = x W_x + b`` and ``rec = h_prev W_h`` (``[B, 3H]``,
    blocks r, z, n): ``(h, (r, z, n), hn = rec_n + b_hn)``, each ``[B, H]``, in f32."""
    xr, xz, xn = jnp.split(_f32(px), 3, axis=-1)
    hr, hz, hn = jnp.split(_f32(rec), 3, axis=-1)
    hn = hn + _f32(b_hn)
    r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    h = (1.0 - z) * n + z * _f32(h_prev)
    return h, (r, z, n), hn


def gru_recurrence(seq, w_h, b_hn, h0, *, valid=None, flags=None, hr=None, w_x=None, b=None, unroll=1):
    """The reset-after GRU recurrence, keeping what the backward pass needs.

    Args:
      seq: ``[T, B, 3H]`` input projections, or raw inputs ``[T, B, I]`` with ``w_x``, ``b``.
      w_h: ``[H, 3H]``; b_hn ``[H]``; h0 ``[B, H]``; valid, flags optional ``[T, B]``; hr
        ``[B, H]`` the reset carry.

    Returns:
      ``(hs [T, B, H], acts (r, z, n) each [T, B, H], hns [T, B, H])`` where ``hns`` is the
      recurrent candidate term ``h_{t-1} W_hn + b_hn`` the reset gate multiplies.
    """
    dtype = w_h.dtype
    ts = jnp.arange(seq.shape[0], dtype=jnp.int32)

    def body(h_kept, inputs):
        s, t = inputs
        h_prev = _reset(_mask(flags, t), hr, h_kept)
        px = s if w_x is None else _matmul(s, w_x) + _f32(b)
        h, acts, hn = gru_step(px, _matmul(h_prev, w_h), b_hn, h_prev)
        h = _keep(_mask(valid, t), h.astype(dtype), h_kept)
        return h, (h, tuple(a.astype(dtype) for a in acts), hn.astype(dtype))

    _, (hs, acts, hns) = jax.lax.scan(body, h0, (seq, ts), unroll=unroll)
    return hs, acts, hns


def gru_recurrence_grad(w_h, acts, hns, h_prevs, dhs, dh_last, *, valid=None, flags=None, unroll=1):
    """Reverse pass of :func:`gru_recurrence`.

    With ``dh = dhs_t + dh_{t+1}`` and ``a_n = 1 - n^2``: ``dn = dh (1-z) a_n``,
    ``dr = dn hn r(1-r)``, ``dz = dh (h_{t-1} - n) z(1-z)``; the input side gets
    ``dpx = [dr, dz, dn]``, the recurrent side ``drec = [dr, dz, dn r]``, and
    ``dh_{t-1} = dh z + drec W_h^T`` (to the reset carry at a flagged step).

    Args:
      w_h: ``[H, 3H]``; acts ``(r, z, n)`` each ``[T, B, H]``; hns ``[T, B, H]``; h_prevs ``[T, B, H]`` (the
      carry each step started from, resets applied); dhs ``[T, B, H]``; dh_last ``[B, H]``; valid, flags
      optional ``[T, B]``.

    Returns:
      ``(dpx [T, B, 3H], drec [T, B, 3H], dh0 [B, H], dhr [B, H])``.
    """
    dtype = w_h.dtype
    w_h_t = w_h.T
    ts = jnp.arange(hns.shape[0], dtype=jnp.int32)
    zeros = jnp.zeros_like(dh_last)

    def body(carry, inputs):
        dh_next, dhr = carry
        a, hn, h_prev, dh_out, t = inputs
        r, z, n = (_f32(x) for x in a)
        ok = _mask(valid, t)
        dh = _f32(dh_next) + _f32(_keep(ok, dh_out, jnp.zeros_like(dh_out)))
        dn = dh * (1.0 - z) * (1.0 - n * n)
        dr = dn * _f32(hn) * r * (1.0 - r)
        dzz = dh * (_f32(h_prev) - n) * z * (1.0 - z)
        dpx = jnp.concatenate([dr, dzz, dn], axis=-1).astype(dtype)
        drec = jnp.concatenate([dr, dzz, dn * r], axis=-1).astype(dtype)
        if ok is not None:
            dpx, drec = jnp.where(ok, dpx, jnp.zeros_like(dpx)), jnp.where(ok, drec, jnp.zeros_like(drec))
        dh_prev = _keep(ok, dh * z + _matmul(drec, w_h_t), dh).astype(dtype)
        flag = _mask(flags, t)
        if flag is not None:
            dhr = dhr + jnp.where(flag, dh_prev, zeros)
            dh_prev = jnp.where(flag, zeros, dh_prev)
        return (dh_prev, dhr), (dpx, drec)

    (dh0, dhr), (dpx, drec) = jax.lax.scan(body, (dh_last, zeros), (acts, hns, h_prevs, dhs, ts),
                                           reverse=True, unroll=unroll)
    return dpx, drec, dh0, dhr


# --- the differentiable layers -------------------------------------------------------------


def _project_seq(xs, w_x, b, hoist):
    """What the recurrence scans over, and the (w_x, b) it projects with inside (None if hoisted)."""
    if hoist:
        return (_matmul(xs, w_x) + _f32(b)).astype(w_x.dtype), None, None
    return xs, w_x, b


def _input_grads(xs, w_x, dpx):
    """``(dW_x, db, dxs)`` from the gradient ``dpx [T, B, G*H]`` of the input projection."""
    dw_x = _weight_grad(xs, dpx, w_x.dtype)
    db = jnp.sum(_f32(dpx), axis=(0, 1)).astype(w_x.dtype)
    dxs = _matmul(dpx, w_x.T).astype(xs.dtype)
    return dw_x, db, dxs


KERNELS = ("xla", "pallas")


@functools.partial(jax.custom_vjp, nondiff_argnums=(10, 11, 12))
def lstm_layer(w_x, w_h, b, xs, h0, c0, valid, flags, hr, cr, unroll=1, hoist=True, kernel="xla"):
    """A vanilla LSTM layer over time with a hand-written backward pass.

    Args:
      w_x: ``[I, 4H]``; w_h ``[H, 4H]``; b ``[4H]`` (gate blocks i, f, g, o).
      xs: ``[T, B, I]`` time-major inputs.
      h0, c0: ``[B, H]`` initial carry.
      valid: ``[T, B]`` bool step mask (steps past a sequence's length keep the carry and
        output zeros), or None.
      flags: ``[T, B]`` bool, or None: flagged steps start from the reset carry ``hr, cr``
        ``[B, H]`` (None without flags).
      unroll: ``lax.scan`` unroll factor; hoist: see :func:`hoist_projection`.
      kernel: ``"xla"`` (the scans above) or ``"pallas"`` (the recurrences as Pallas kernels,
        :mod:`lstm_jax.kernels.pallas_lstm`: always hoisted, no ``valid`` or ``flags``,
        ``unroll`` ignored; interpret mode off the GPU).

    Returns:
      ``(ys [T, B, H], (h_last, c_last))``.
    """
    return _lstm_fwd(w_x, w_h, b, xs, h0, c0, valid, flags, hr, cr, unroll, hoist, kernel)[0]


def _lstm_fwd(w_x, w_h, b, xs, h0, c0, valid, flags, hr, cr, unroll, hoist, kernel):
    if kernel == "pallas":
        from lstm_jax.kernels import pallas_lstm

        seq, _, _ = _project_seq(xs, w_x, b, True)
        hs, cs, acts = pallas_lstm.lstm_forward_pallas(seq, w_h, h0, c0)
        acts = tuple(jnp.split(acts, 4, axis=-1))
    else:
        seq, wx_in, b_in = _project_seq(xs, w_x, b, hoist)
        hs, cs, acts = lstm_recurrence(seq, w_h, h0, c0, valid=valid, flags=flags, hr=hr, cr=cr, w_x=wx_in,
                                       b=b_in, unroll=unroll)
    ys = hs if valid is None else jnp.where(valid[..., None], hs, jnp.zeros_like(hs))
    return (ys, (hs[-1], cs[-1])), (w_x, w_h, xs, h0, c0, valid, flags, hr, cr, hs, cs, acts)


def _lstm_bwd(unroll, hoist, kernel, res, cotangents):
    w_x, w_h, xs, h0, c0, valid, flags, hr, cr, hs, cs, acts = res
    dys, (dh_last, dc_last) = cotangents
    c_prevs = _entering(cs, c0, flags, cr)
    if kernel == "pallas":
        from lstm_jax.kernels import pallas_lstm

        dz, dh0, dc0 = pallas_lstm.lstm_backward_pallas(w_h, jnp.concatenate(acts, axis=-1), cs, c0, dys,
                                                        dh_last, dc_last)
        dhr = dcr = None
    else:
        dz, dh0, dc0, dhr, dcr = lstm_recurrence_grad(w_h, acts, cs, c_prevs, dys, dh_last, dc_last,
                                                      valid=valid, flags=flags, unroll=unroll)
    h_prevs = _entering(hs, h0, flags, hr)
    dw_x, db, dxs = _input_grads(xs, w_x, dz)
    if flags is None:
        dhr = dcr = None
    return dw_x, _weight_grad(h_prevs, dz, w_h.dtype), db, dxs, dh0, dc0, None, None, dhr, dcr


lstm_layer.defvjp(_lstm_fwd, _lstm_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(9, 10))
def gru_layer(w_x, w_h, b, b_hn, xs, h0, valid, flags, hr, unroll=1, hoist=True):
    """A reset-after GRU layer over time with a hand-written backward pass.

    Args:
      w_x: ``[I, 3H]``; w_h ``[H, 3H]``; b ``[3H]``; b_hn ``[H]`` (blocks r, z, n).
      xs: ``[T, B, I]``; h0 ``[B, H]``; valid, flags ``[T, B]`` bool or None; hr ``[B, H]`` the
        reset carry (None without flags).
      unroll: ``lax.scan`` unroll factor; hoist: see :func:`hoist_projection`.

    Returns:
      ``(ys [T, B, H], h_last [B, H])``.
    """
    return _gru_fwd(w_x, w_h, b, b_hn, xs, h0, valid, flags, hr, unroll, hoist)[0]


def _gru_fwd(w_x, w_h, b, b_hn, xs, h0, valid, flags, hr, unroll, hoist):
    seq, wx_in, b_in = _project_seq(xs, w_x, b, hoist)
    hs, acts, hns = gru_recurrence(seq, w_h, b_hn, h0, valid=valid, flags=flags, hr=hr, w_x=wx_in, b=b_in,
                                   unroll=unroll)
    ys = hs if valid is None else jnp.where(valid[..., None], hs, jnp.zeros_like(hs))
    return (ys, hs[-1]), (w_x, w_h, xs, h0, valid, flags, hr, hs, acts, hns)


def _gru_bwd(unroll, hoist, res, cotangents):
    w_x, w_h, xs, h0, valid, flags, hr, hs, acts, hns = res
    dys, dh_last = cotangents
    h_prevs = _entering(hs, h0, flags, hr)
    dpx, drec, dh0, dhr = gru_recurrence_grad(w_h, acts, hns, h_prevs, dys, dh_last, valid=valid, flags=flags,
                                              unroll=unroll)
    dw_x, db, dxs = _input_grads(xs, w_x, dpx)
    H = w_h.shape[0]
    db_hn = jnp.sum(_f32(drec[..., 2 * H:]), axis=(0, 1)).astype(w_h.dtype)
    return (dw_x, _weight_grad(h_prevs, drec, w_h.dtype), db, db_hn, dxs, dh0, None, None,
            dhr if flags is not None else None)


gru_layer.defvjp(_gru_fwd, _gru_bwd)
