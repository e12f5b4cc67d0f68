"""The Pallas LSTM recurrence (lstm_jax/kernels/pallas_lstm.py), run in interpret mode on the CPU.

Forward and backward kernels are checked against a float64 NumPy reference written from the
equations, and the backward reference itself against ``jax.vjp`` of a plain ``lax.scan``
forward in float64 (so the hand-derived gradient is proven, not assumed). Odd batch sizes
exercise the batch padding, H=8 and H=12 the gate-width padding (to 16). A last test lowers
both kernels for CUDA through the Triton backend (no GPU needed) so Triton's constraints
(power-of-two tensors, supported primitives) are checked here too; compiling and timing
them needs a GPU and is not done in this suite.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax.kernels.pallas_lstm import lstm_backward_pallas, lstm_forward_pallas

# (T, B, H, block_b, dtype): T=1; odd B padded to one or two blocks; H padded (8, 12) or not (16).
# Each case costs ~1 s of interpret-mode compiles, so float64 (exact math, 1e-12) and float32
# (1e-5-ish) share the cases rather than multiply them.
CASES = [(1, 3, 8, 16, jnp.float32), (5, 20, 16, 16, jnp.float32),
         (12, 17, 8, 32, jnp.float64), (4, 9, 12, 16, jnp.float64)]
TOL = {jnp.float64: 1e-12, jnp.float32: 1e-6}  # observed: ~5e-16 and ~2e-7


# --- float64 references --------------------------------------------------------------------


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def ref_forward(px, w_h, h0, c0):
    """NumPy float64, a Python loop over t: (hs, cs, acts) as in the module docstring."""
    px, w_h, h, c = (np.asarray(a, np.float64) for a in (px, w_h, h0, c0))
    hs, cs, acts = [], [], []
    for t in range(px.shape[0]):
        zi, zf, zg, zo = np.split(px[t] + h @ w_h, 4, axis=-1)
        i, f, g, o = _sigmoid(zi), _sigmoid(zf), np.tanh(zg), _sigmoid(zo)
        c = f * c + i * g
        h = o * np.tanh(c)
        hs.append(h), cs.append(c), acts.append(np.concatenate([i, f, g, o], axis=-1))
    return np.stack(hs), np.stack(cs), np.stack(acts)


def ref_backward(w_h, acts, cs, c0, dhs, dh_last, dc_last):
    """NumPy float64 reverse loop: (dz, dh0, dc0), straight from the equations."""
    w_h, acts, cs, c0, dhs, dh_next, dc_next = (
        np.asarray(a, np.float64) for a in (w_h, acts, cs, c0, dhs, dh_last, dc_last))
    dz = np.zeros_like(acts)
    for t in reversed(range(acts.shape[0])):
        i, f, g, o = np.split(acts[t], 4, axis=-1)
        c_prev = cs[t - 1] if t > 0 else c0
        dh = dhs[t] + dh_next
        tc = np.tanh(cs[t])
        do = dh * tc
        dc = dc_next + dh * o * (1 - tc**2)
        di, dg, df = dc * g, dc * i, dc * c_prev
        dc_next = dc * f
        dz[t] = np.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - g**2), do * o * (1 - o)], -1)
        dh_next = dz[t] @ w_h.T
    return dz, dh_next, dc_next


def scan_forward(px, w_h, h0, c0):
    """Plain ``lax.scan`` LSTM: (hs, h_last, c_last), differentiated by JAX in the tests."""
    def step(carry, p):
        h, c = carry
        zi, zf, zg, zo = jnp.split(p + h @ w_h, 4, axis=-1)
        c = jax.nn.sigmoid(zf) * c + jax.nn.sigmoid(zi) * jnp.tanh(zg)
        h = jax.nn.sigmoid(zo) * jnp.tanh(c)
        return (h, c), h
    (h, c), hs = jax.lax.scan(step, (h0, c0), px)
    return hs, h, c


def make_inputs(T, B, H, dtype, seed=0):
    """Forward inputs and backward cotangents, drawn in float64 then cast (N(0,1); W_h scaled)."""
    rng = np.random.default_rng(seed)
    draw = lambda *shape, scale=1.0: jnp.asarray(scale * rng.standard_normal(shape), dtype)
    fwd = {"px": draw(T, B, 4 * H), "w_h": draw(H, 4 * H, scale=H**-0.5), "h0": draw(B, H), "c0": draw(B, H)}
    cot = {"dhs": draw(T, B, H), "dh_last": draw(B, H), "dc_last": draw(B, H)}
    return fwd, cot


def assert_close(actual, expected, tol):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=tol, atol=tol)


# --- the references agree with JAX's autodiff -----------------------------------------------


def test_reference_backward_matches_vjp_of_scan():
    fwd, cot = make_inputs(6, 3, 8, jnp.float64)
    hs, cs, acts = ref_forward(**fwd)
    (hs_scan, _, _), vjp = jax.vjp(lambda px, h0, c0: scan_forward(px, fwd["w_h"], h0, c0),
                                   fwd["px"], fwd["h0"], fwd["c0"])
    dpx, dh0, dc0 = vjp((cot["dhs"], cot["dh_last"], cot["dc_last"]))
    assert_close(hs_scan, hs, 1e-12)
    dz, ref_dh0, ref_dc0 = ref_backward(fwd["w_h"], acts, cs, fwd["c0"], **cot)
    for got, want in ((dpx, dz), (dh0, ref_dh0), (dc0, ref_dc0)):
        assert_close(got, want, 1e-12)


# --- kernels against the references ---------------------------------------------------------


@pytest.mark.parametrize("T, B, H, block_b, dtype", CASES)
def test_forward_and_backward_match_reference(T, B, H, block_b, dtype):
    tol = TOL[dtype]
    fwd, cot = make_inputs(T, B, H, dtype)
    out = lstm_forward_pallas(**fwd, block_b=block_b, interpret=True)
    for got, want, shape in zip(out, ref_forward(**fwd), [(T, B, H)] * 2 + [(T, B, 4 * H)]):
        assert got.shape == shape and got.dtype == dtype
        assert_close(got, want, tol)
    _, cs, acts = out
    grads = lstm_backward_pallas(fwd["w_h"], acts, cs, fwd["c0"], **cot, block_b=block_b)
    want = ref_backward(fwd["w_h"], acts, cs, fwd["c0"], **cot)
    for got, ref, shape in zip(grads, want, [(T, B, 4 * H), (B, H), (B, H)]):
        assert got.shape == shape and got.dtype == dtype
        assert_close(got, ref, tol)


def test_bfloat16_close_to_float64_reference():
    """bf16 in and out (h, c, dz rounded each step), f32 inside: within 2.5e-2 of the f64
    result (observed ~4e-3 forward, ~6e-3 backward)."""
    T, B, H = 8, 5, 16
    fwd, cot = make_inputs(T, B, H, jnp.bfloat16, seed=1)
    hs, cs, acts = lstm_forward_pallas(**fwd)
    assert {hs.dtype, cs.dtype, acts.dtype} == {jnp.dtype(jnp.bfloat16)}
    for got, want in zip((hs, cs, acts), ref_forward(**fwd)):
        assert_close(got, want, 2.5e-2)
    # Backward from the f64 forward's activations, so only the kernel's own rounding shows.
    _, cs64, acts64 = ref_forward(**fwd)
    grads = lstm_backward_pallas(fwd["w_h"], jnp.asarray(acts64, jnp.bfloat16),
                                 jnp.asarray(cs64, jnp.bfloat16), fwd["c0"], **cot)
    assert {g.dtype for g in grads} == {jnp.dtype(jnp.bfloat16)}
    for got, want in zip(grads, ref_backward(fwd["w_h"], acts64, cs64, fwd["c0"], **cot)):
        assert_close(got, want, 2.5e-2)


def test_block_size_and_jit_do_not_change_results():
    fwd, _ = make_inputs(5, 20, 16, jnp.float32, seed=2)  # shapes of a CASE: one compile reused
    one_block = lstm_forward_pallas(**fwd, block_b=32)
    two_blocks = jax.jit(lstm_forward_pallas)(**fwd)  # default block_b=16: 2 programs
    for a, b in zip(one_block, two_blocks):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --- argument errors ------------------------------------------------------------------------


def _fwd_args(**overrides):
    fwd, _ = make_inputs(2, 3, 8, jnp.float32)
    return {**fwd, **overrides}


def _bwd_args(**overrides):
    fwd, cot = make_inputs(2, 3, 8, jnp.float32)
    z = lambda *s: jnp.zeros(s, jnp.float32)
    args = dict(w_h=fwd["w_h"], acts=z(2, 3, 32), cs=z(2, 3, 8), c0=fwd["c0"], **cot)
    return {**args, **overrides}


@pytest.mark.parametrize("overrides, error, match", [
    ({"px": jnp.zeros((2, 3, 30), jnp.float32)}, ValueError, r"`px` must have shape \[T, B, 4H\]"),
    ({"px": jnp.zeros((3, 32), jnp.float32)}, ValueError, r"`px` must have shape \[T, B, 4H\]"),
    ({"px": jnp.zeros((0, 3, 32), jnp.float32)}, ValueError, r"T, B, H >= 1"),
    ({"w_h": jnp.zeros((8, 16), jnp.float32)}, ValueError, r"`w_h` must have shape \[H, 4H\] = \(8, 32\)"),
    ({"h0": jnp.zeros((4, 8), jnp.float32)}, ValueError, r"`h0` must have shape \[B, H\] = \(3, 8\)"),
    ({"c0": jnp.zeros((3, 9), jnp.float32)}, ValueError, r"`c0` must have shape"),
    ({"px": jnp.zeros((2, 3, 32), jnp.int32)}, TypeError, r"`px` must have a floating dtype"),
    ({"w_h": jnp.zeros((8, 32), jnp.bfloat16)}, TypeError, r"`w_h` has dtype bfloat16 but `px` is float32"),
    ({"block_b": 8}, ValueError, r"`block_b` must be a power of two >= 16"),
    ({"block_b": 24}, ValueError, r"`block_b` must be a power of two"),
    ({"block_b": True}, ValueError, r"`block_b`"),
    ({"interpret": "yes"}, TypeError, r"`interpret` must be None, True or False"),
])
def test_forward_errors(overrides, error, match):
    with pytest.raises(error, match=match):
        lstm_forward_pallas(**_fwd_args(**overrides))


@pytest.mark.parametrize("overrides, error, match", [
    ({"acts": jnp.zeros((2, 3, 31), jnp.float32)}, ValueError, r"`acts` must have shape \[T, B, 4H\]"),
    ({"w_h": jnp.zeros((32, 8), jnp.float32)}, ValueError, r"`w_h` must have shape \[H, 4H\]"),
    ({"cs": jnp.zeros((3, 3, 8), jnp.float32)}, ValueError, r"`cs` must have shape \[T, B, H\] = \(2, 3, 8\)"),
    ({"dhs": jnp.zeros((2, 3, 4), jnp.float32)}, ValueError, r"`dhs` must have shape \[T, B, H\]"),
    ({"c0": jnp.zeros((3,), jnp.float32)}, ValueError, r"`c0` must have shape \[B, H\]"),
    ({"dh_last": jnp.zeros((2, 8), jnp.float32)}, ValueError, r"`dh_last` must have shape \[B, H\]"),
    ({"dc_last": jnp.zeros((3, 8), jnp.float64)}, TypeError, r"`dc_last` has dtype float64 but `w_h` is float32"),
    ({"block_b": 0}, ValueError, r"`block_b`"),
])
def test_backward_errors(overrides, error, match):
    with pytest.raises(error, match=match):
        lstm_backward_pallas(**_bwd_args(**overrides))


# --- the GPU path: lowering only ------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated:DeprecationWarning")  # JAX >= 0.11
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kernels_lower_for_cuda_through_triton(dtype):
    """Lowers (does not compile) the non-interpret kernels for CUDA on any host: Pallas's Triton
    lowering rejects non-power-of-two tensors and primitives Triton lacks (slicing, concat).
    JAX 0.11 no longer lowers Triton kernels without a GPU present: skipped there (the kernels
    compiled and matched the scan on an H200, README Performance)."""
    T, B, H = 3, 20, 12
    seq, gates = jax.ShapeDtypeStruct((T, B, H), dtype), jax.ShapeDtypeStruct((T, B, 4 * H), dtype)
    w, state = jax.ShapeDtypeStruct((H, 4 * H), dtype), jax.ShapeDtypeStruct((B, H), dtype)
    fwd = jax.jit(lambda *a: lstm_forward_pallas(*a, interpret=False))
    bwd = jax.jit(lambda *a: lstm_backward_pallas(*a, interpret=False))
    for fn, args in ((fwd, (gates, w, state, state)), (bwd, (w, gates, seq, state, seq, state, state))):
        try:
            text = fn.trace(*args).lower(lowering_platforms=("cuda",)).as_text()
        except RuntimeError as e:
            if "No supported GPU devices found" in str(e):
                pytest.skip(f"this JAX ({jax.__version__}) lowers Triton kernels only with a GPU present")
            raise
        assert "__gpu$xla.gpu.triton" in text or "triton" in text.lower()
