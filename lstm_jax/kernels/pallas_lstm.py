"""The LSTM recurrence as Pallas kernels: one persistent launch per direction.

The fused LSTM path (:mod:`lstm_jax.kernels.fused_rnn`) splits a layer into (a) the input projection
``px = x W_x + b`` for all steps at once, (b) the recurrence over time and (c) the weight
gradients as large matmuls. This module writes (b) — forward and backward — as Pallas kernels
following the math of :func:`lstm_jax.kernels.fused_rnn.lstm_recurrence` and
:func:`lstm_jax.kernels.fused_rnn.lstm_recurrence_grad` (no ``valid`` masks; ``acts`` here is one
``[T, B, 4H]`` array):

- the grid runs over blocks of ``block_b`` batch rows; each program loads ``W_h`` once, keeps
  its rows' ``h`` and ``c`` on chip and runs the whole time loop (``lax.fori_loop``) inside
  the kernel — the "persistent kernel" design, aimed at the Triton backend on GPU;
- the gates are handled as four ``[block_b, H]`` blocks (i, f, g, o, PyTorch's order) with four
  ``[H, H]`` weight blocks, because Triton lowers neither slicing nor concatenation of values;
- dtypes float32 and bfloat16 are the targets (float16 and float64 are accepted too); matmuls
  accumulate in (at least) float32, elementwise math runs in (at least) float32, and
  ``h``, ``c`` (forward) and ``dh``, ``dc``, ``dz`` (backward) are rounded to the input dtype
  each step, exactly as :mod:`lstm_jax.kernels.fused_rnn` does, so the two paths agree to rounding.

Triton wants power-of-two tensors with every ``dot`` dimension >= 16, so the wrappers pad the
batch up to a multiple of ``block_b`` and each gate block's width ``H`` up to the next power of
two >= 16 (zero padding is exact: padded units stay at ``h = c = 0`` and get zero gradient),
then slice the results back.

Status, plainly: **numerics are tested in interpret mode on the CPU** (``tests/test_pallas_lstm.py``,
against float64 references), and on an H200 (2026-12-04, jax 0.11.2, ``experiments/gpu_check.py``)
Triton compiled both kernels and they matched the generic scan (3e-07 relative in float32 at
full precision, 5e-03 in bfloat16) **while W_h fits one program's shared memory** (``4 H^2``
elements, H padded): float32 up to H = 64, bfloat16 up to H = 128; larger hidden sizes failed to
compile ("Shared memory size limit exceeded"), so the form refuses them on the GPU
(:func:`refusal`). Their speed is not measured yet. JAX 0.11 deprecates the Pallas Triton
backend in favour of Mosaic GPU: a port is the next step for these kernels.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from lstm_jax.ops import lstm_update

Array = jax.Array

_DTYPES = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32), jnp.dtype(jnp.float64))
_MIN_BLOCK = 16  # Triton's smallest dot dimension.


# --- argument checks ---------------------------------------------------------------------


def _check_array(name: str, x, shape: tuple[int, ...], what: str) -> None:
    """Raises naming ``name`` unless ``x`` has exactly ``shape`` (described as ``what``)."""
    got = tuple(jnp.shape(x))
    if got != shape:
        raise ValueError(f"`{name}` must have shape {what} = {shape}, got {got}.")


def _check_dtypes(named: dict) -> jnp.dtype:
    """All arrays share one supported floating dtype; returns it."""
    (first, x0), *rest = named.items()
    dtype = jnp.result_type(x0)
    if dtype not in _DTYPES:
        raise TypeError(f"`{first}` must have a floating dtype in "
                        f"{tuple(d.name for d in _DTYPES)}, got {dtype}.")
    for name, x in rest:
        if jnp.result_type(x) != dtype:
            raise TypeError(f"`{name}` has dtype {jnp.result_type(x)} but `{first}` is {dtype}; "
                            f"all arguments must share one dtype (cast with `.astype`).")
    return dtype


def _options(interpret, block_b) -> tuple[bool, int]:
    """Resolves ``interpret`` (None: interpret unless on GPU) and checks ``block_b``."""
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    elif not isinstance(interpret, bool):
        raise TypeError(f"`interpret` must be None, True or False, got {interpret!r}.")
    if block_b is None:
        block_b = _MIN_BLOCK
    if (isinstance(block_b, bool) or not isinstance(block_b, int) or block_b < _MIN_BLOCK
            or block_b & (block_b - 1)):
        raise ValueError(f"`block_b` must be a power of two >= {_MIN_BLOCK} (Triton's block "
                         f"constraints), got {block_b!r}.")
    return interpret, block_b


def _gate_width(px_or_acts, name: str) -> int:
    """``H`` from a ``[T, B, 4H]`` array, checking its rank and sizes."""
    shape = tuple(jnp.shape(px_or_acts))
    if len(shape) != 3 or shape[-1] % 4 or 0 in shape:
        raise ValueError(f"`{name}` must have shape [T, B, 4H] with T, B, H >= 1, got {shape}.")
    return shape[-1] // 4


# On the GPU, Triton places each program's W_h ([H, 4H], padded) in shared memory: on an H200
# (measured, jax 0.11.2) a request over 232,448 bytes fails to compile ("Shared memory size limit
# exceeded"), so float32 runs up to H = 64 and bfloat16 up to H = 128. The form refuses beyond.
GPU_SHARED_MEMORY_BYTES = 232_448


def refusal(params, xs, carry) -> str | None:
    """Why the ``"pallas"`` form cannot serve a call with these arrays (None if it can)."""
    hid = params.w_h.shape[0]
    need = 4 * _padded_width(hid) ** 2 * jnp.dtype(params.w_h.dtype).itemsize
    if jax.default_backend() == "gpu" and need > GPU_SHARED_MEMORY_BYTES:
        return (f"the Pallas kernels keep W_h in shared memory: {need:,} bytes at hidden size {hid} "
                f"({jnp.dtype(params.w_h.dtype).name}), over the {GPU_SHARED_MEMORY_BYTES:,} a GPU program gets")
    return None


# --- padding -----------------------------------------------------------------------------


def _padded_width(h: int) -> int:
    return max(_MIN_BLOCK, pl.next_power_of_2(h))


def _pad(x: Array, rows: int, cols: int, *, gates: bool = False) -> Array:
    """Zero-pads the row axis (the one before the features) to ``rows`` and the last axis
    (each of the 4 gate blocks if ``gates``) to ``cols``."""
    if gates:
        x = x.reshape(*x.shape[:-1], 4, x.shape[-1] // 4)
    row_axis = -3 if gates else -2
    pads = [(0, 0)] * x.ndim
    pads[row_axis] = (0, rows - x.shape[row_axis])
    pads[-1] = (0, cols - x.shape[-1])
    x = jnp.pad(x, pads)
    return x.reshape(*x.shape[:-2], -1) if gates else x


def _unpad(x: Array, rows: int, cols: int, *, gates: bool = False) -> Array:
    """Inverse of :func:`_pad`."""
    if gates:
        x = x.reshape(*x.shape[:-1], 4, x.shape[-1] // 4)[..., :rows, :, :cols]
        return x.reshape(*x.shape[:-2], -1)
    return x[..., :rows, :cols]


def _compiler_params(interpret: bool):
    """Names the Triton backend explicitly (not Mosaic GPU) when compiling for the GPU."""
    if interpret:
        return None
    return pltriton.CompilerParams(num_warps=4, num_stages=1)


# --- kernels -----------------------------------------------------------------------------


def _acc(dtype) -> jnp.dtype:
    """Accumulation and elementwise dtype: at least float32."""
    return jnp.dtype(dtype) if jnp.finfo(dtype).bits >= 32 else jnp.dtype(jnp.float32)


def _forward_kernel(px_ref, w_ref, h0_ref, c0_ref, hs_ref, cs_ref, acts_ref):
    """One block of rows. Refs: px ``[T, b, 4H]``, w ``[H, 4H]``, h0/c0 ``[b, H]``;
    outputs hs/cs ``[T, b, H]``, acts ``[T, b, 4H]``."""
    n_steps, _, hid = hs_ref.shape
    dtype, acc = hs_ref.dtype, _acc(hs_ref.dtype)
    gate = [slice(k * hid, (k + 1) * hid) for k in range(4)]
    w = [w_ref[:, gate[k]] for k in range(4)]  # loaded once: 4 x [H, H]

    def step(t, carry):
        h, c = carry  # [b, H] each, input dtype
        z = [px_ref[t, :, gate[k]].astype(acc) + jnp.dot(h, w[k], preferred_element_type=acc)
             for k in range(4)]
        h_new, c_new, gates = lstm_update(z[0], z[1], z[2], z[3], c.astype(acc))
        for k, a in enumerate(gates[n] for n in ("input", "forget", "candidate", "output")):
            acts_ref[t, :, gate[k]] = a.astype(dtype)
        h_new, c_new = h_new.astype(dtype), c_new.astype(dtype)
        hs_ref[t] = h_new
        cs_ref[t] = c_new
        return h_new, c_new

    jax.lax.fori_loop(0, n_steps, step, (h0_ref[...], c0_ref[...]))


def _backward_kernel(w_ref, acts_ref, cs_ref, c0_ref, dhs_ref, dhl_ref, dcl_ref,
                     dz_ref, dh0_ref, dc0_ref):
    """One block of rows, reverse in time. Refs: w ``[H, 4H]``, acts ``[T, b, 4H]``, cs/dhs
    ``[T, b, H]``, c0/dh_last/dc_last ``[b, H]``; outputs dz ``[T, b, 4H]``, dh0/dc0 ``[b, H]``."""
    n_steps, _, hid = cs_ref.shape
    dtype, acc = cs_ref.dtype, _acc(cs_ref.dtype)
    gate = [slice(k * hid, (k + 1) * hid) for k in range(4)]
    w = [w_ref[:, gate[k]] for k in range(4)]
    contract_last = (((1,), (1,)), ((), ()))  # dz_k @ w_k^T

    def step(t, c_prev, carry):
        dh_next, dc_next = carry  # [b, H] each, input dtype
        i, f, g, o = (acts_ref[t, :, gate[k]].astype(acc) for k in range(4))
        c, c_prev = cs_ref[t].astype(acc), c_prev.astype(acc)
        dh = dh_next.astype(acc) + dhs_ref[t].astype(acc)
        tc = jnp.tanh(c)
        dc = dc_next.astype(acc) + dh * o * (1.0 - tc * tc)
        dz = [dc * g * i * (1.0 - i), dc * c_prev * f * (1.0 - f),
              dc * i * (1.0 - g * g), dh * tc * o * (1.0 - o)]
        dh_prev = None
        for k in range(4):
            dz_k = dz[k].astype(dtype)
            dz_ref[t, :, gate[k]] = dz_k
            term = jax.lax.dot_general(dz_k, w[k], contract_last, preferred_element_type=acc)
            dh_prev = term if dh_prev is None else dh_prev + term
        return dh_prev.astype(dtype), (dc * f).astype(dtype)

    # Steps T-1 .. 1 read c_{t-1} from cs; step 0 reads c0 (peeled: no select in the loop).
    carry = jax.lax.fori_loop(
        1, n_steps, lambda s, carry: step(n_steps - s, cs_ref[n_steps - s - 1], carry),
        (dhl_ref[...], dcl_ref[...]))
    dh0, dc0 = step(0, c0_ref[...], carry)
    dh0_ref[...] = dh0
    dc0_ref[...] = dc0


# --- wrappers ----------------------------------------------------------------------------


def _specs(n_steps, block_b, hid):
    """BlockSpecs for a grid over row blocks: sequences, W_h, per-row states."""
    seq = lambda width: pl.BlockSpec((n_steps, block_b, width), lambda b: (0, b, 0))
    return seq(hid), seq(4 * hid), pl.BlockSpec((hid, 4 * hid), lambda b: (0, 0)), \
        pl.BlockSpec((block_b, hid), lambda b: (b, 0))


@functools.partial(jax.jit, static_argnames=("interpret", "block_b"))
def _forward(px, w_h, h0, c0, *, interpret, block_b):
    (n_steps, batch, four_h), dtype = px.shape, px.dtype
    hid = four_h // 4
    hp, bp = _padded_width(hid), pl.cdiv(batch, block_b) * block_b
    px, h0, c0 = _pad(px, bp, hp, gates=True), _pad(h0, bp, hp), _pad(c0, bp, hp)
    w_h = _pad(w_h, hp, hp, gates=True)
    state_seq, gate_seq, weight, state = _specs(n_steps, block_b, hp)
    hs, cs, acts = pl.pallas_call(
        _forward_kernel,
        grid=(bp // block_b,),
        in_specs=[gate_seq, weight, state, state],
        out_specs=[state_seq, state_seq, gate_seq],
        out_shape=[jax.ShapeDtypeStruct((n_steps, bp, hp), dtype)] * 2
        + [jax.ShapeDtypeStruct((n_steps, bp, 4 * hp), dtype)],
        interpret=interpret,
        compiler_params=_compiler_params(interpret),
    )(px, w_h, h0, c0)
    return _unpad(hs, batch, hid), _unpad(cs, batch, hid), _unpad(acts, batch, hid, gates=True)


@functools.partial(jax.jit, static_argnames=("interpret", "block_b"))
def _backward(w_h, acts, cs, c0, dhs, dh_last, dc_last, *, interpret, block_b):
    (n_steps, batch, hid), dtype = cs.shape, cs.dtype
    hp, bp = _padded_width(hid), pl.cdiv(batch, block_b) * block_b
    w_h, acts = _pad(w_h, hp, hp, gates=True), _pad(acts, bp, hp, gates=True)
    cs, c0, dhs, dh_last, dc_last = (_pad(x, bp, hp) for x in (cs, c0, dhs, dh_last, dc_last))
    state_seq, gate_seq, weight, state = _specs(n_steps, block_b, hp)
    dz, dh0, dc0 = pl.pallas_call(
        _backward_kernel,
        grid=(bp // block_b,),
        in_specs=[weight, gate_seq, state_seq, state, state_seq, state, state],
        out_specs=[gate_seq, state, state],
        out_shape=[jax.ShapeDtypeStruct((n_steps, bp, 4 * hp), dtype)]
        + [jax.ShapeDtypeStruct((bp, hp), dtype)] * 2,
        interpret=interpret,
        compiler_params=_compiler_params(interpret),
    )(w_h, acts, cs, c0, dhs, dh_last, dc_last)
    return _unpad(dz, batch, hid, gates=True), _unpad(dh0, batch, hid), _unpad(dc0, batch, hid)


def lstm_forward_pallas(px, w_h, h0, c0, *, interpret=None, block_b=None):
    """The LSTM recurrence ``z_t = px_t + h_{t-1} W_h`` (gates i, f, g, o) as one Pallas kernel.

    ``c_t = f c_{t-1} + i g``, ``h_t = o tanh(c_t)`` with ``i, f, o = sigmoid``, ``g = tanh``
    of the four ``H``-wide blocks of ``z_t``; ``h_{-1} = h0``, ``c_{-1} = c0``.

    Args:
      px: ``[T, B, 4H]`` input projections ``x_t W_x + b`` (time-major, batch flattened).
      w_h: ``[H, 4H]`` recurrent weights, gate blocks i, f, g, o along the last axis.
      h0, c0: ``[B, H]`` initial carry.
      interpret: run the kernel in Pallas interpret mode; None means interpret unless
        ``jax.default_backend() == "gpu"``.
      block_b: batch rows per program, a power of two >= 16 (default 16); ``B`` is padded
        up to a multiple of it.

    Returns:
      ``(hs [T, B, H], cs [T, B, H], acts [T, B, 4H])``: ``h_t``, ``c_t`` and the gate
      activations ``(i, f, g, o)`` of every step, in the input dtype.
    """
    hid = _gate_width(px, "px")
    batch = jnp.shape(px)[1]
    _check_array("w_h", w_h, (hid, 4 * hid), "[H, 4H]")
    _check_array("h0", h0, (batch, hid), "[B, H]")
    _check_array("c0", c0, (batch, hid), "[B, H]")
    _check_dtypes({"px": px, "w_h": w_h, "h0": h0, "c0": c0})
    interpret, block_b = _options(interpret, block_b)
    return _forward(px, w_h, h0, c0, interpret=interpret, block_b=block_b)


def lstm_backward_pallas(w_h, acts, cs, c0, dhs, dh_last, dc_last, *, interpret=None, block_b=None):
    """Reverse pass of :func:`lstm_forward_pallas`: the gradient of every gate pre-activation.

    Going back from ``dh_T = dh_last``, ``dc_T = dc_last``, with ``dh = dhs_t + dh_{t+1}`` and
    ``tc = tanh(c_t)``: ``do = dh tc``, ``dc = dc_{t+1} + dh o (1 - tc^2)``, ``di = dc g``,
    ``dg = dc i``, ``df = dc c_{t-1}``, ``dz_t = [di i(1-i), df f(1-f), dg (1-g^2), do o(1-o)]``,
    then ``dh_t = dz_t W_h^T`` and ``dc_t = dc f`` flow to step ``t - 1``.

    Args:
      w_h: ``[H, 4H]`` recurrent weights.
      acts: ``[T, B, 4H]`` gate activations from the forward pass.
      cs: ``[T, B, H]`` cell states from the forward pass; c0 ``[B, H]`` the initial one.
      dhs: ``[T, B, H]`` gradient w.r.t. the outputs ``hs``.
      dh_last, dc_last: ``[B, H]`` gradient w.r.t. the final carry ``(h_{T-1}, c_{T-1})``.
      interpret, block_b: as in :func:`lstm_forward_pallas`.

    Returns:
      ``(dz [T, B, 4H], dh0 [B, H], dc0 [B, H])`` in the input dtype. The weight and input
      gradients follow outside as matmuls: ``dW_h = sum_t h_{t-1}^T dz_t``, ``dpx = dz``.
    """
    hid = _gate_width(acts, "acts")
    n_steps, batch, _ = jnp.shape(acts)
    _check_array("w_h", w_h, (hid, 4 * hid), "[H, 4H]")
    for name, x in (("cs", cs), ("dhs", dhs)):
        _check_array(name, x, (n_steps, batch, hid), "[T, B, H]")
    for name, x in (("c0", c0), ("dh_last", dh_last), ("dc_last", dc_last)):
        _check_array(name, x, (batch, hid), "[B, H]")
    _check_dtypes({"w_h": w_h, "acts": acts, "cs": cs, "c0": c0, "dhs": dhs,
                   "dh_last": dh_last, "dc_last": dc_last})
    interpret, block_b = _options(interpret, block_b)
    return _backward(w_h, acts, cs, c0, dhs, dh_last, dc_last, interpret=interpret, block_b=block_b)
