"""xLSTM cells (sLSTM, mLSTM and its parallel form) against float64 NumPy references, plus invariants.

The references (``tests/reference_xlstm.py``) are written from the paper's equations with
unfused per-gate weights, per-head loops and the matrix memory in the paper's orientation;
the adapters below slice our fused parameters into them, so agreement proves the maths and
the documented layouts. Proven here:

* ``unroll`` outputs, final carry and per-step gates equal the stabilised reference
  (float64 to 1e-10 from a random carry, float32 to 1e-5), and ``cell.step`` equals one
  reference step for batch shapes (), (2,), (2, 3);
* ``unroll`` (one ``lax.scan``) equals a Python loop of ``cell.step``;
* the stabilised cells compute the *unstabilised* equations exactly (float64) where those
  do not overflow, and stay finite (float32) with gate pre-activations of +-100 (and float64
  with +-1000), where the unstabilised equations give inf/NaN;
* sLSTM memory mixing is block-diagonal: the Jacobian of the gates w.r.t. ``h_{t-1}`` has
  exactly zero off-head blocks, and perturbing one head's state changes no other head;
* the sLSTM normaliser is ``>= 1`` from the zero state (no 0/0 at the first step);
* the mLSTM's ``"parallel"`` form (``unroll(..., impl="parallel")``) equals the generic scan
  (outputs and final carry, stabiliser included; float64 to 1e-10, float32 to 1e-5; random
  carry; ``lengths``) and the reference's parallel form; its values and gradients w.r.t.
  params, inputs, initial carry and reset carry equal the scan's under ``lengths``,
  ``reverse``, ``resets`` and all three together; with resets it equals the reference run
  segment by segment;
* finite-difference gradients; ``lengths``; float32 / bfloat16 / float64 preserved; configs
  (equal, hashable cells usable as jit static arguments; ``repr``); every user error's
  message; and a small Optax training run per cell with a stated loss bound.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import helpers  # tests/helpers.py
import lstm_jax as lj
from lstm_jax.cells.xlstm import (
    MLSTMConfig,
    MLSTMParams,
    MLSTMState,
    SLSTMConfig,
    SLSTMParams,
    SLSTMState,
    mlstm,
    slstm,
)
from lstm_jax.models.readout import readout

import reference_xlstm as rx  # tests/reference_xlstm.py

F32, F64, BF16 = jnp.float32, jnp.float64, jnp.bfloat16
B, T, I, H = 2, 5, 3, 8
TOL64 = dict(rtol=1e-10, atol=1e-10)
TOL32 = dict(rtol=1e-5, atol=1e-5)
assert_tree_close = helpers.assert_trees_close

CELLS = {
    "slstm": lambda: slstm(H),
    "slstm_heads": lambda: slstm(H, num_heads=2),
    "slstm_exp": lambda: slstm(H, num_heads=4, forget_gate="exp"),
    "mlstm": lambda: mlstm(H),
    "mlstm_heads": lambda: mlstm(H, num_heads=2),
    "mlstm_exp": lambda: mlstm(H, num_heads=2, forget_gate="exp"),
}
MAIN = ["slstm_heads", "slstm_exp", "mlstm_heads", "mlstm_exp"]  # one per family and forget gate
all_cells = pytest.mark.parametrize("name", list(CELLS))


# ------------------------------------------------------------------- adapters to the reference

def is_slstm(cell):
    return isinstance(cell.config, SLSTMConfig)


def ref_params(cell, params):
    """Our fused params -> the reference's per-gate dict (float64)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    NH = cell.config.num_heads
    Dh = H // NH
    blk = lambda a, j, n: a[..., j * n:(j + 1) * n]
    if is_slstm(cell):  # blocks (i, f, z, o); head k's recurrent block w_h[k]
        out = {}
        for j, g in enumerate("ifzo"):
            out.update({f"W_x{g}": blk(p.w_x, j, H), f"b_{g}": blk(p.b, j, H), f"R_{g}": blk(p.w_h, j, Dh)})
        return out
    out = {}  # blocks (q, k, v, o) of H, then (i, f) of NH
    for j, g in enumerate("qkvo"):
        out.update({f"W_{g}": blk(p.w_x, j, H), f"b_{g}": blk(p.b, j, H)})
    out.update(w_i=p.w_x[:, 4 * H:4 * H + NH], b_i=p.b[4 * H:4 * H + NH],
               w_f=p.w_x[:, 4 * H + NH:], b_f=p.b[4 * H + NH:])
    return out


def ref_state(cell, carry):
    """Our carry -> the reference's state dict (float64, leading axes flattened to one)."""
    f64 = lambda a: np.asarray(a, np.float64)
    if is_slstm(cell):
        return {k: f64(v).reshape(-1, H) for k, v in zip("hcnm", carry)}
    NH = cell.config.num_heads
    Dh = H // NH
    return {"C": f64(carry.matrix).reshape(-1, NH, Dh, Dh).transpose(0, 1, 3, 2),  # C^T -> C
            "n": f64(carry.normalizer).reshape(-1, NH, Dh), "m": f64(carry.stabilizer).reshape(-1, NH)}


def run_reference(cell, params, xs, carry=None, *, stabilized=True, state=None):
    """The reference on ``xs [B, T, I]`` from our ``carry`` (or a reference ``state`` dict)."""
    fn = rx.slstm if is_slstm(cell) else rx.mlstm
    state = state if carry is None else ref_state(cell, carry)
    return fn(ref_params(cell, params), np.asarray(xs, np.float64), state, stabilized=stabilized,
              num_heads=cell.config.num_heads, forget_gate=cell.config.forget_gate)


# ------------------------------------------------------------------------------------ helpers

normal, perturb = helpers.normal, helpers.perturb  # N(0, 1) arrays; add scale * N(0, 1) to every leaf


def random_carry(cell, params, rng, batch_shape):
    """A random carry; the sLSTM normaliser positive, as it is after any step."""
    carry = perturb(cell.init_carry(params, batch_shape), rng)
    if is_slstm(cell):
        carry = carry._replace(normalizer=jnp.asarray(rng.uniform(0.5, 2.0, carry.normalizer.shape),
                                                      carry.normalizer.dtype))
    return carry


@functools.cache
def setup(name, dtype=F64, seed=0):
    """(cell, params, xs [B, T, I], carry [B, *]), everything random, at ``dtype``."""
    cell = CELLS[name]()
    rng = np.random.default_rng(seed)
    params = perturb(cell.init(jax.random.key(seed), I, dtype=F64), rng)
    xs = normal(rng, (B, T, I))
    carry = random_carry(cell, params, rng, (B,))
    cast = lambda tree: jax.tree.map(lambda a: a.astype(dtype), tree)
    return cell, cast(params), cast(xs), cast(carry)


def input_gate_bias_slice(cell):
    NH = cell.config.num_heads
    return slice(0, H) if is_slstm(cell) else slice(4 * H, 4 * H + NH)


def forget_gate_bias_slice(cell):
    NH = cell.config.num_heads
    return slice(H, 2 * H) if is_slstm(cell) else slice(4 * H + NH, 4 * H + 2 * NH)


# ------------------------------------------------------------------- agreement with reference

@all_cells
def test_unroll_matches_reference_f64(name):
    cell, params, xs, carry = setup(name)
    ys, final, aux = jax.jit(lambda p, x, c: lj.unroll(cell, p, x, c, return_gates=True))(params, xs, carry)
    want_ys, want_state, want_acts = run_reference(cell, params, xs, carry)
    assert ys.shape == (B, T, H)
    np.testing.assert_allclose(ys, want_ys, **TOL64)
    assert_tree_close(ref_state(cell, final), want_state, **TOL64)
    assert set(aux.gates) == set(want_acts)
    assert_tree_close(aux.gates, want_acts, **TOL64)


@pytest.mark.parametrize("name", MAIN)
def test_unroll_matches_reference_f32(name):
    cell, params, xs, _ = setup(name, F32)
    ys, final = jax.jit(lambda p, x: lj.unroll(cell, p, x))(params, xs)
    assert ys.dtype == F32
    want_ys, want_state, _ = run_reference(cell, params, xs)  # float64 on the rounded inputs
    np.testing.assert_allclose(np.asarray(ys, np.float64), want_ys, **TOL32)
    assert_tree_close(ref_state(cell, final), want_state, **TOL32)


@pytest.mark.parametrize("name", ["slstm_heads", "mlstm_exp"])
def test_step_reference_and_scan_equals_python_loop(name):
    """``step == recur(project)`` == one reference step for batch shapes (), (2,), (2, 3);
    and ``unroll`` (one ``lax.scan``) == a Python loop of ``cell.step``."""
    cell, params, xs, carry = setup(name)
    both = jax.jit(lambda p, c, x: (cell.step(p, c, x), cell.recur(p, c, cell.project(p, x))))
    rng = np.random.default_rng(1)
    for batch_shape in [(), (2, 3)]:
        x = normal(rng, batch_shape + (I,))
        c = random_carry(cell, params, rng, batch_shape)
        (new, y), (new2, y2) = both(params, c, x)
        assert y.shape == batch_shape + (H,)
        assert all(a.shape[:-1] == batch_shape for a in new)
        assert_tree_close(new, jax.tree.map(np.asarray, new2), rtol=0, atol=0)
        np.testing.assert_array_equal(y, y2)
        want_ys, want_state, _ = run_reference(cell, params, np.asarray(x).reshape(-1, 1, I), c)
        np.testing.assert_allclose(np.asarray(y).reshape(-1, H), want_ys[:, 0], **TOL64)
        assert_tree_close(ref_state(cell, new), want_state, **TOL64)
    c, ys = carry, []  # batch shape (2,)
    for t in range(T):
        (c, y), _ = both(params, c, xs[:, t])
        ys.append(y)
    got_ys, got_c = jax.jit(lambda p, x, c0: lj.unroll(cell, p, x, c0))(params, xs, carry)
    np.testing.assert_allclose(got_ys, np.stack(ys, axis=1), rtol=1e-13, atol=1e-13)
    assert_tree_close(got_c, jax.tree.map(np.asarray, c), rtol=1e-13, atol=1e-13)
    want_ys, want_state, _ = run_reference(cell, params, xs, carry)
    np.testing.assert_allclose(np.stack(ys, axis=1), want_ys, **TOL64)


# ------------------------------------------------------------------------------ stabiliser

@pytest.mark.parametrize("name", MAIN)
def test_stabilized_equals_unstabilized(name):
    """Float64, zero initial state, input-gate pre-activations shifted by 0 and +-30 (exp(30)
    ~ 1e13 is still fine unstabilised in float64): same outputs, in the reference and in the
    library."""
    cell, params0, xs, _ = setup(name)
    run = jax.jit(lambda p, x: lj.unroll(cell, p, x))
    for shift in [0.0, 30.0, -30.0]:
        params = params0._replace(b=params0.b.at[input_gate_bias_slice(cell)].add(shift))
        stab_ys, _, _ = run_reference(cell, params, xs)
        plain_ys, _, _ = run_reference(cell, params, xs, stabilized=False)
        np.testing.assert_allclose(stab_ys, plain_ys, **TOL64)
        np.testing.assert_allclose(run(params, xs)[0], plain_ys, **TOL64)


@pytest.mark.parametrize("name", ["slstm_exp", "mlstm_exp"])
def test_large_gate_preactivations_stay_finite(name):
    """Float32 with an input-gate bias of +-100 (and a forget-gate bias of +100 for the
    exponential forget gate; exp(100) = inf in float32): outputs, carries and gradients are
    finite and equal the float64 reference. The same in float64 with +-1000, where even float64
    overflows unstabilised (so the test has teeth)."""
    cell, params32, xs32, _ = setup(name, F32)
    params64, xs64 = jax.tree.map(lambda a: a.astype(F64), (params32, xs32))

    def loss(p, x):
        ys, carry = lj.unroll(cell, p, x)
        return jnp.sum(ys), (ys, carry)

    run32 = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    run64 = jax.jit(lambda p, x: lj.unroll(cell, p, x))
    cases = [("input", 100.0), ("input", -100.0)] + ([("forget", 100.0)] if "exp" in name else [])
    for gate, value in cases:
        where = input_gate_bias_slice(cell) if gate == "input" else forget_gate_bias_slice(cell)
        params = params32._replace(b=params32.b.at[where].add(jnp.asarray(value, F32)))
        (_, (ys, final)), grads = run32(params, xs32)
        for leaf in jax.tree.leaves((ys, final, grads)):
            assert leaf.dtype == F32 and np.all(np.isfinite(np.asarray(leaf))), (gate, value)
        want_ys, want_state, _ = run_reference(cell, params, xs32)
        np.testing.assert_allclose(np.asarray(ys, np.float64), want_ys, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(ref_state(cell, final)["m"], want_state["m"], rtol=1e-5)

        params = params64._replace(b=params64.b.at[where].add(10 * value))
        ys, _ = run64(params, xs64)
        assert np.all(np.isfinite(np.asarray(ys)))
        with np.errstate(over="ignore", invalid="ignore"):  # the mLSTM reference's exp(-m) = exp(1000)
            np.testing.assert_allclose(ys, run_reference(cell, params, xs64)[0], **TOL64)
            plain, _, _ = run_reference(cell, params, xs64, stabilized=False)
        if value > 0:  # exp(1000) = inf: the unstabilised equations give inf/NaN
            assert not np.all(np.isfinite(plain))


def test_slstm_normalizer_at_least_one_from_zero_state():
    """From the zero state the first step starts m at log i, so n_1 = 1 and n_t >= 1 after,
    even with input-gate pre-activations of -100 (plain max(log f, log i) would underflow
    i'_1 to 0 and divide 0/0)."""
    cell, params, xs, _ = setup("slstm_heads", F32)
    params = params._replace(b=params.b.at[:H].add(jnp.asarray(-100.0, F32)))
    ys, _, aux = jax.jit(lambda p, x: lj.unroll(cell, p, x, return_carries=True))(params, xs)
    n = np.asarray(aux.carries.normalizer)
    assert np.all(n >= 1.0) and np.all(n[:, 0] == 1.0)
    assert np.all(np.isfinite(np.asarray(ys)))
    np.testing.assert_allclose(np.asarray(ys, np.float64), run_reference(cell, params, xs)[0], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------- structure

def test_slstm_recurrence_is_block_diagonal():
    NH, Dh = 4, H // 4
    cell, params, xs, carry = setup("slstm_exp")
    assert cell.config.num_heads == NH and params.w_h.shape == (NH, Dh, 4 * Dh)
    px = cell.project(params, xs[:, 0])
    head = np.arange(H) // Dh

    # d(pre-activation-dependent gates)/d h_{t-1}: zero outside the diagonal head blocks
    def gates(h):
        _, _, g = cell.recur(params, carry._replace(hidden=h), px, aux=True)
        return {k: g[k] for k in ("input", "forget", "candidate", "output")}

    jac = jax.jit(jax.jacobian(gates))(carry.hidden[0:1])  # per gate: [1, H, 1, H]
    off_block = head[:, None] != head[None, :]
    for name, j in jac.items():
        j = np.asarray(j)[0, :, 0, :]
        assert np.all(j[off_block] == 0.0), name
        if name in ("candidate", "output"):  # i', f' can be locally constant (1) where m_t = log i_t
            assert all(np.abs(j[head == k][:, head == k]).max() > 1e-4 for k in range(NH)), name

    # perturbing head k's part of the state changes head k, and no other head, at all
    recur = jax.jit(cell.recur)
    new0, y0 = recur(params, carry, px)
    for k in range(NH):
        units = head == k
        bumped = jax.tree.map(lambda a: jnp.where(units, a + 3.0, a), carry)
        new1, y1 = recur(params, bumped, px)
        for a, b in zip((y0, *new0), (y1, *new1)):
            a, b = np.asarray(a), np.asarray(b)
            np.testing.assert_array_equal(a[:, ~units], b[:, ~units])
            assert np.abs(a[:, units] - b[:, units]).max() > 1e-3


def test_mlstm_heads_are_independent():
    cell, params, xs, carry = setup("mlstm_heads")
    NH, Dh = 2, H // 2
    px = cell.project(params, xs[:, 0])
    recur = jax.jit(cell.recur)
    for k in range(NH):
        bumped = MLSTMState(
            matrix=carry.matrix.at[:, k * Dh * Dh:(k + 1) * Dh * Dh].add(1.0),
            normalizer=carry.normalizer.at[:, k * Dh:(k + 1) * Dh].add(1.0),
            stabilizer=carry.stabilizer.at[:, k].add(1.0))
        y0 = np.asarray(recur(params, carry, px)[1])
        y1 = np.asarray(recur(params, bumped, px)[1])
        units = np.arange(H) // Dh == k
        np.testing.assert_array_equal(y0[:, ~units], y1[:, ~units])
        assert np.abs(y0[:, units] - y1[:, units]).max() > 1e-3


# ----------------------------------------------------------------------- parallel mLSTM form

@pytest.mark.parametrize("name, dtype", [("mlstm_heads", F64), ("mlstm_exp", F32)],
                         ids=["heads-float64", "exp-float32"])
def test_mlstm_parallel_equals_recurrent(name, dtype):
    """Outputs and final carry (stabiliser included) equal the generic scan's: from the zero
    state with no batch axes (and equal the reference's loop-written parallel form), and from
    a random carry with batch shape (2, 3) and lengths 0..T (length 0: the carry passes
    through untouched). An empty sequence is the generic scan's (the form refuses it)."""
    cell, params, _, _ = setup(name, dtype)
    rng = np.random.default_rng(7)
    Tl = 12
    tol = TOL64 if dtype == F64 else TOL32
    xs = normal(rng, (Tl, I), dtype)  # no batch axes, zero state
    xs_b, carry = normal(rng, (2, 3, Tl, I), dtype), random_carry(cell, params, rng, (2, 3))
    lengths = jnp.array([[0, 1, Tl], [Tl, 7, 3]], jnp.int32)
    run = jax.jit(lambda p, x, c, n, impl: lj.unroll(cell, p, x, c, lengths=n, impl=impl), static_argnums=4)
    for x, c, n in [(xs, None, None), (xs_b, carry, lengths)]:
        got_ys, got_c = run(params, x, c, n, "parallel")
        want_ys, want_c = run(params, x, c, n, "scan")
        assert got_ys.dtype == dtype and got_ys.shape == x.shape[:-1] + (H,)
        np.testing.assert_allclose(np.asarray(got_ys, np.float64), np.asarray(want_ys, np.float64), **tol)
        assert_tree_close(got_c, jax.tree.map(np.asarray, want_c), **tol)
        if c is None:
            want = rx.mlstm_parallel(ref_params(cell, params), np.asarray(xs, np.float64)[None],
                                     num_heads=cell.config.num_heads, forget_gate=cell.config.forget_gate)
            np.testing.assert_allclose(np.asarray(got_ys, np.float64), want[0], **tol)
    one = lambda tree: jax.tree.map(lambda a: np.asarray(a[0, 0]), tree)
    assert_tree_close(one(got_c), one(carry), rtol=0, atol=0)  # length 0: the carry untouched
    np.testing.assert_array_equal(got_ys[0, 0], 0.0)
    with pytest.raises(ValueError, match=r"`impl='parallel'` cannot be used here: `xs` is empty"):
        lj.unroll(cell, params, jnp.zeros((2, 0, I), dtype), impl="parallel")  # T = 0


RB, RT = 3, 7
RESETS = np.zeros((RB, RT), bool)
RESETS[0, [2, 5]] = True  # three segments
RESETS[1, [0, 3, 4]] = True  # a reset at step 0 and two in a row
RESETS[2, [6]] = True  # past this sequence's length (with lengths): no effect
CASES = {  # unroll's arguments
    "lengths": dict(lengths=jnp.array([7, 4, 0])),
    "reverse": dict(reverse=True),
    "resets": dict(resets=jnp.asarray(RESETS)),
    "all": dict(lengths=jnp.array([7, 5, 4]), reverse=True, resets=jnp.asarray(RESETS)),
}


@functools.cache
def case_data(name, seed=3):
    """(cell, params, xs [3, 7, I], carry, reset_to): random carries (the reset carry too)."""
    cell, params, _, _ = setup(name)
    rng = np.random.default_rng(seed)
    return (cell, params, normal(rng, (RB, RT, I)), random_carry(cell, params, rng, (RB,)),
            random_carry(cell, params, rng, (RB,)))


def test_mlstm_parallel_equals_recurrent_values_and_gradients():
    """Outputs, final carry and the gradients of a loss of both w.r.t. params, inputs, the
    initial carry and the reset carry equal the generic scan's (whose gradients are checked
    against finite differences below), float64, under lengths, reverse, resets and all three
    (two heads, the exponential forget gate; the sigmoid one's values are compared above)."""
    cell, params, xs, carry, reset_to = case_data("mlstm_exp")
    results = helpers.forms_and_scan(cell, CASES)(params, xs, carry, reset_to)
    for case, (want, got) in results.items():
        assert_tree_close(got, jax.tree.map(np.asarray, want), same_dtype=True, **TOL64)
        grads = want[1]
        assert max(np.abs(np.asarray(g)).max() for g in jax.tree.leaves(grads[:3])) > 1e-2
        reset_grad = max(np.abs(np.asarray(g)).max() for g in jax.tree.leaves(grads[3]))
        assert (reset_grad > 1e-3) if "resets" in CASES[case] else (reset_grad == 0.0), case


def reference_segments(cell, params, xs, carry, reset_to, flags, n, reverse):
    """One sequence ``xs [T, I]`` of length ``n`` with reset flags ``[T]``, as the reference run
    segment by segment: the first segment read starts from ``carry`` (batch shape (1,)),
    every other one from ``reset_to`` (reversed: the segments are read from the last to the
    first). Forwards, a reset at step 0 replaces ``carry`` too; backwards it cuts nothing.
    Returns ``(ys [T, H], state)`` (zeros past ``n``; the reference's state dict)."""
    starts = [0] + [t for t in range(1, n) if flags[t]]
    bounds = list(zip(starts, starts[1:] + [n]))
    ys, state = np.zeros((xs.shape[0], H)), ref_state(cell, carry)
    for k, (lo, hi) in enumerate(bounds[::-1] if reverse else bounds):
        if k > 0 or (flags[0] and not reverse and n > 0):
            state = ref_state(cell, reset_to)
        segment = np.asarray(xs[lo:hi], np.float64)[None]
        out, state, _ = run_reference(cell, params, segment[:, ::-1] if reverse else segment, state=state)
        ys[lo:hi] = out[0, ::-1] if reverse else out[0]
    return ys, state


@pytest.mark.parametrize("impl", ["scan", "parallel"])
def test_mlstm_resets_equal_running_segments_separately(impl):
    cell, params, xs, carry, reset_to = case_data("mlstm_exp")
    lengths = [7, 5, 4]
    for reverse in (False, True):
        ys, final = jax.jit(lambda p, x, c, r: lj.unroll(
            cell, p, x, c, lengths=jnp.array(lengths), resets=jnp.asarray(RESETS), reset_to=r, reverse=reverse,
            impl=impl))(params, xs, carry, reset_to)
        for b, n in enumerate(lengths):
            one = lambda tree: jax.tree.map(lambda a: a[b:b + 1], tree)
            want_ys, want_state = reference_segments(cell, params, xs[b], one(carry), one(reset_to), RESETS[b], n,
                                                     reverse)
            np.testing.assert_allclose(ys[b], want_ys, **TOL64)  # zeros past the length too
            assert_tree_close(ref_state(cell, one(final)), want_state, **TOL64)


# ------------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("name", ["slstm_exp", "mlstm_heads"])
def test_gradients_match_finite_differences(name):
    """W.r.t. params, inputs and the carry; example 0 starts from a random carry, example 1
    from the zero state (the first-step rule; not perturbed, since n = 0 is a switch)."""
    cell, params, _, carry = setup(name, seed=2)
    xs = normal(np.random.default_rng(2), (2, 3, I))
    zero = cell.init_carry(params, (1,))
    run = lambda p, x, c: lj.unroll(cell, p, x, jax.tree.map(lambda a, z: jnp.concatenate([a, z]), c, zero))
    check_grads(jax.jit(run), (params, xs, jax.tree.map(lambda a: a[:1], carry)),
                order=1, modes=("rev",), atol=1e-6, rtol=1e-6, eps=1e-6)


# --------------------------------------------------------------------------------- lengths

@pytest.mark.parametrize("name", ["slstm_heads", "mlstm_heads"])
def test_lengths(name):
    """Padded sequences give the unpadded results (the reference on the truncated sequence),
    zero outputs past their length, and their last valid carry."""
    cell, params, _, _ = setup(name)
    rng = np.random.default_rng(4)
    xs = normal(rng, (3, T, I))
    carry = random_carry(cell, params, rng, (3,))
    lengths = [T, 2, 0]
    ys, final = jax.jit(lambda x, c, l: lj.unroll(cell, params, x, c, lengths=l))(xs, carry, jnp.array(lengths))
    for b, n in enumerate(lengths):
        one = jax.tree.map(lambda a: a[b:b + 1], carry)
        want_ys, want_state, _ = run_reference(cell, params, xs[b:b + 1, :n], one)  # the unpadded sequence
        np.testing.assert_allclose(ys[b, :n], want_ys[0], **TOL64)
        np.testing.assert_array_equal(ys[b, n:], 0.0)  # padded outputs are zero
        assert_tree_close(ref_state(cell, jax.tree.map(lambda a: a[b:b + 1], final)), want_state, **TOL64)


# ------------------------------------------------------------------------------------ dtypes

@pytest.mark.parametrize("dtype", [F32, BF16, F64], ids=lambda d: jnp.dtype(d).name)
def test_dtype_preserved(dtype):
    """sLSTM, mLSTM and the parallel mLSTM: outputs, carries, gradients and init stay at
    ``dtype`` (checked on the traced program, which fixes every dtype), and the outputs follow
    the reference (float32 and float64 values are checked at tight tolerances above; here
    bfloat16's, to its ~3 significant digits)."""
    (s_cell, s_params, xs, _), (m_cell, m_params, _, _) = setup("slstm_heads", dtype), setup("mlstm_heads", dtype)
    runs = {"slstm": (s_cell, s_params, lambda p, x: lj.unroll(s_cell, p, x)),
            "mlstm": (m_cell, m_params, lambda p, x: lj.unroll(m_cell, p, x)),
            "parallel": (m_cell, m_params, lambda p, x: lj.unroll(m_cell, p, x, impl="parallel"))}

    def loss(p, x, run):
        ys, carry = run(p, x)
        return jnp.sum(ys) + sum(jnp.sum(c) for c in jax.tree.leaves(carry)), (ys, carry)

    for name, (cell, params, run) in runs.items():
        out = jax.eval_shape(jax.value_and_grad(functools.partial(loss, run=run), argnums=(0, 1), has_aux=True),
                             params, xs)
        init = jax.eval_shape(lambda k: cell.init(k, I, dtype=dtype), jax.random.key(0))
        for leaf in jax.tree.leaves((out, init)):
            assert leaf.dtype == dtype, name
    if dtype == BF16:
        got = jax.jit(lambda: {k: run(params, xs)[0] for k, (_, params, run) in runs.items()})()
        for name, (cell, params, _) in runs.items():
            np.testing.assert_allclose(np.asarray(got[name], np.float64), run_reference(cell, params, xs)[0],
                                       rtol=0.05, atol=0.05)


# ------------------------------------------------------------------------- init and configs

def test_init_shapes_configs_and_forget_bias():
    s = slstm(H, num_heads=4)
    p = s.init(jax.random.key(0), I, dtype=F64)
    assert isinstance(p, SLSTMParams) and {k: v.shape for k, v in p._asdict().items()} == dict(
        w_x=(I, 4 * H), w_h=(4, 2, 8), b=(4 * H,))
    carry = s.init_carry(p, (2, 3))
    assert isinstance(carry, SLSTMState) and all(a.shape == (2, 3, H) and not np.any(a) for a in carry)
    np.testing.assert_array_equal(p.b, np.r_[np.zeros(H), np.ones(H), np.zeros(2 * H)])
    for k in range(4):  # each head's (i, f, z, o) recurrent blocks orthogonal, drawn independently
        blocks = np.split(np.asarray(p.w_h[k]), 4, axis=-1)
        for w in blocks:
            np.testing.assert_allclose(w.T @ w, np.eye(2), atol=1e-12)
    assert s.config == SLSTMConfig(H, num_heads=4) and s.config.initial_forget_bias == 1.0
    assert (s.config.num_heads, s.config.head_size, s.config.forget_gate) == (4, 2, "sigmoid")
    assert s.hidden_size == s.output_size == H and repr(s) == "slstm(8, num_heads=4)" and not s.forms

    m = mlstm(H, num_heads=2, forget_gate="exp")
    p = m.init(jax.random.key(0), I, dtype=F64)
    assert isinstance(p, MLSTMParams) and p.w_x.shape == (I, 4 * H + 4) and p.b.shape == (4 * H + 4,)
    carry = m.init_carry(p, 3)
    assert isinstance(carry, MLSTMState)
    assert [a.shape for a in carry] == [(3, 2 * 4 * 4), (3, 2 * 4), (3, 2)]
    np.testing.assert_array_equal(p.b, 0.0)  # exp forget gate: default bias 0, i.e. f = 1
    assert m.config.forget_bias is None and m.config.initial_forget_bias == 0.0
    assert repr(m) == "mlstm(8, num_heads=2, forget_gate='exp')" and isinstance(m.config, MLSTMConfig)
    form = m.forms["parallel"]
    assert set(m.forms) == {"parallel"} and form.lengths and form.resets and not form.auto
    p = mlstm(H, num_heads=2, forget_bias=2.5).init(jax.random.key(0), I, dtype=F64)
    np.testing.assert_array_equal(p.b, np.r_[np.zeros(4 * H + 2), [2.5, 2.5]])
    p = slstm(H, forget_gate="exp", forget_bias=-1.0).init(jax.random.key(0), I, dtype=F64)
    np.testing.assert_array_equal(p.b[H:2 * H], -1.0)
    assert slstm(H, forget_bias=2).config.forget_bias == 2.0  # normalised to a float


def test_cells_compare_by_config_and_are_jit_static_arguments():
    assert slstm(H, num_heads=2) == slstm(H, num_heads=2) and hash(mlstm(H)) == hash(mlstm(H))
    assert slstm(H) != slstm(H, num_heads=2) and mlstm(H) != slstm(H)
    assert mlstm(H, forget_gate="exp") == MLSTMConfig(H, forget_gate="exp").build()
    _, params, xs, _ = setup("mlstm_heads")
    traces, (ya, yb) = helpers.traces_with_static(lambda c, p, x: lj.unroll(c, p, x, impl="parallel")[0],
                                                  (mlstm(H, num_heads=2), params, xs), (mlstm(H, num_heads=2), params, xs))
    np.testing.assert_array_equal(ya, yb)
    assert len(traces) == 1  # an equal cell built anew is the same static argument: no retrace


# ---------------------------------------------------------------------------------- errors

KEY = jax.random.key(0)
S2, M2 = slstm(H, num_heads=2), mlstm(H, num_heads=2)
S2P, M2P = S2.init(KEY, I, dtype=F64), M2.init(KEY, I, dtype=F64)
XS = jnp.ones((B, T, I), F64)
P = "parallel"

ERRORS = [
    ("slstm_divisible", lambda: slstm(6, num_heads=4), ValueError,
     "`hidden_size` (6) must be divisible by `num_heads` (4)."),
    ("mlstm_divisible", lambda: mlstm(6, num_heads=4), ValueError,
     "`hidden_size` (6) must be divisible by `num_heads` (4)."),
    ("num_heads", lambda: slstm(H, num_heads=0), ValueError, "`num_heads` must be a positive int, got 0."),
    ("hidden_size", lambda: mlstm(0), ValueError, "`hidden_size` must be a positive int, got 0."),
    ("forget_gate", lambda: slstm(H, forget_gate="tanh"), ValueError,
     "`forget_gate` must be one of ('sigmoid', 'exp'), got 'tanh'."),
    ("forget_bias", lambda: mlstm(H, forget_bias="1"), TypeError, "`forget_bias` must be a number or None, got '1'."),
    ("input_size", lambda: S2.init(KEY, 0), ValueError, "`input_size` must be a positive int, got 0."),
    ("init_dtype", lambda: M2.init(KEY, I, dtype=jnp.int32), TypeError, "`dtype` must be a floating dtype"),
    ("kernel_init", lambda: mlstm(H, kernel_init=3), TypeError, "`kernel_init` must be an initialiser"),
    ("slstm_params_type", lambda: lj.unroll(S2, M2P, XS), TypeError,
     "`params` must be SLSTMParams for slstm(8, num_heads=2), got MLSTMParams."),
    ("slstm_params_heads", lambda: lj.unroll(S2, slstm(H, num_heads=4).init(KEY, I, dtype=F64), XS), ValueError,
     "`params.w_h` has shape (4, 2, 8), but slstm(8, num_heads=2) needs (2, 4, 16)", "another size or variant"),
    ("mlstm_params_heads", lambda: lj.unroll(M2, mlstm(H, num_heads=4).init(KEY, I, dtype=F64), XS), ValueError,
     "`params.w_x` has shape (3, 40), but mlstm(8, num_heads=2) needs (3, 36)"),
    ("xs_features", lambda: lj.unroll(S2, S2P, jnp.ones((B, T, 4), F64)), ValueError,
     "`xs` must have shape", "with last axis 3 (the cell's input size)"),
    ("xs_dtype", lambda: lj.unroll(M2, M2P, XS.astype(F32)), TypeError,
     "`xs` has dtype float32 but the parameters are float64"),
    ("parallel_cell", lambda: lj.unroll(S2, S2P, XS, impl=P), ValueError,
     "`impl='parallel'`: slstm(8, num_heads=2) has no form 'parallel'; its forms: none"),
    ("parallel_layer", lambda: lj.layer(S2, impl=P), ValueError,
     "`impl` must be 'auto', 'scan' or one of slstm(8, num_heads=2)'s forms (none), got 'parallel'."),
    ("parallel_not_cell", lambda: lj.unroll("mlstm", M2P, XS, impl=P), TypeError,
     "`cell` must be a lstm_jax Cell", "got str."),
    ("parallel_gates", lambda: lj.unroll(M2, M2P, XS, impl=P, return_gates=True), ValueError,
     "`impl='parallel'` cannot be used here: `return_gates` needs the generic scan."),
    ("parallel_xs_rank", lambda: lj.unroll(M2, M2P, jnp.ones((I,), F64), impl=P), ValueError,
     "`xs` must have shape [..., T, I] (at least 2 axes), got shape (3,)."),
    ("parallel_params", lambda: lj.unroll(M2, S2P, XS, impl=P), TypeError, "`params` must be MLSTMParams"),
    ("parallel_carry_type", lambda: lj.unroll(M2, M2P, XS, S2.init_carry(S2P, (B,)), impl=P), TypeError,
     "`carry` must be MLSTMState", "got SLSTMState."),
    ("parallel_carry_shape", lambda: lj.unroll(M2, M2P, XS, M2.init_carry(M2P, (3,)), impl=P), ValueError,
     "`carry.matrix` must have shape (2, 32) for batch shape (2,)", "got (3, 32)."),
    ("parallel_carry_dtype",
     lambda: lj.unroll(M2, M2P, XS, jax.tree.map(lambda a: a.astype(F32), M2.init_carry(M2P, (B,))), impl=P),
     TypeError, "`carry.matrix` must have dtype float64", "got float32."),
    ("parallel_lengths_dtype", lambda: lj.unroll(M2, M2P, XS, lengths=jnp.ones((B,), F64), impl=P), TypeError,
     "`lengths` must be an integer array, got dtype float64."),
    ("parallel_lengths_shape", lambda: lj.unroll(M2, M2P, XS, lengths=jnp.ones((3,), jnp.int32), impl=P),
     ValueError, "`lengths` must have shape (2,) (the batch shape of `xs`), got (3,)."),
    ("parallel_lengths_range", lambda: lj.unroll(M2, M2P, XS, lengths=[2, 6], impl=P), ValueError,
     "`lengths` must lie in [0, 5] (T, the number of steps in `xs`), got values in [2, 6]."),
]


@pytest.mark.parametrize("thunk, error, fragments", [pytest.param(t, e, f, id=i) for i, t, e, *f in ERRORS])
def test_errors(thunk, error, fragments):
    with pytest.raises(error) as info:
        thunk()
    message, pos = str(info.value), 0
    for fragment in fragments:
        pos = message.find(fragment, pos)
        assert pos >= 0, f"{fragment!r} not in order in {message!r}"


# -------------------------------------------------------------------------------- training

def _train(cell, task, at, steps):
    """Adam on ``task(key, batch) -> (xs, ys)``; returns (first loss, held-out loss)."""
    model = readout(cell, 1, at=at)
    params = model.init(jax.random.key(0), task.input_size, dtype=F32)

    def train_and_test(params):  # one program: the optimiser scan (a nested jit), then the held-out loss
        params, losses = helpers.train_with_optax(model, params, task, steps=steps, batch=32)
        return losses[0], helpers.mse_loss(model)(params, *task(jax.random.key(2), 256))

    with jax.numpy_dtype_promotion("standard"):  # optax's bias correction mixes int and float
        first, test = jax.jit(train_and_test)(params)
    return float(first), float(test)


def delayed_recall(key, batch):
    """x ~ N(0, 1) [B, 12, 16]; the target at step t is x[t - 2, 0] (tests/test_training.py)."""
    return helpers.delayed_recall(key, batch, T=12, I=16, lag=2, dtype=F32)


delayed_recall.input_size = 16


def marked_recall(key, batch, *, steps=12, size=4):
    """x ~ N(0, 1) [B, T, 4] whose last channel is replaced by a marker, 1 at one random step
    in [0, T-3] and 0 elsewhere; the target (read at the last step) is x[marked step, 0]."""
    kx, km = jax.random.split(key)
    xs = jax.random.normal(kx, (batch, steps, size), F32)
    mark = jax.random.randint(km, (batch,), 0, steps - 2)
    xs = xs.at[..., -1].set((jnp.arange(steps)[None] == mark[:, None]).astype(F32))
    return xs, jnp.take_along_axis(xs[..., 0], mark[:, None], axis=1)  # [B, 1]


marked_recall.input_size = 4


def test_slstm_learns_delayed_recall():
    """Memory without a content-based read: predicting 0 scores (T - lag) / T = 0.83; the
    bound is a tenth of that (300 Adam steps reach about 0.01)."""
    first, test = _train(slstm(16, num_heads=4), delayed_recall, "every", 300)
    baseline = 10 / 12
    assert first > 0.5 * baseline
    assert test < 0.1 * baseline, f"held-out MSE {test:.3f}"


def test_mlstm_learns_marked_recall():
    """A store-on-marker task, what an exponential input gate with a matrix memory is for
    (the mLSTM has no hidden-to-hidden path, so a fixed lag is not its task): predicting 0
    scores Var(x) = 1; the bound is 0.1 (250 Adam steps reach about 0.003)."""
    first, test = _train(mlstm(16, num_heads=4), marked_recall, "last", 250)
    assert first > 0.5
    assert test < 0.1, f"held-out MSE {test:.3f}"
