"""Grid LSTM (``lstm_jax.cells.grid``) against the float64 NumPy reference in ``tests/reference_grid.py``.

The reference is written from the paper's equations with per-gate weights (the paper's
``g^u, g^f, g^c, g^o``); the adapters below slice our fused ``(i, f, g, o)`` transforms into
it, so agreement proves the maths and the documented layout. Proven here:

* ``grid_block`` for N = 1, 2, 3 blocks (untied, tied, a priority dimension, non-LSTM
  dimensions with identity/tanh/relu transfers, the paper's ``tanh(o * m)`` output form)
  equals the reference (float64 to 1e-10, float32 to 1e-5), for batch shapes (), (2,), (2, 3);
* a 1-D block (N = 1) is exactly one ``lstm_jax.lstm`` step with the same weights;
* the 2-D time x depth cell (run by ``lj.layer``) equals the reference's loop over time and
  depth for every option (outputs, final carry from a random initial carry, per-step gates),
  and its one ``lax.scan`` equals a Python loop of ``cell.step``;
* with a non-LSTM identity depth dimension, ``V = [I; 0]``, ``c = 0`` and the depth
  dimension prioritised, the layer equals ``lstm_jax.stack([lstm_jax.lstm(H)] * depth)``
  with the mapped weights (and does not without priority);
* tied / shared-level parameter counts, and that tying equals untied weights set equal;
* finite-difference gradients; ``lengths`` (garbage past each length never leaks, padded
  outputs are zero, carry is the last valid one), ``reverse``, ``time_major``, ``resets``
  (== each segment run separately); float32, bfloat16 and float64 preserved through outputs,
  carries and gradients; cells compare and hash by their config and are ``jit`` static
  arguments; every user error's message; and a small Optax run that learns a delayed-recall
  task.
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
import reference_grid as ref  # tests/reference_grid.py
from lstm_jax.cells.grid import (GridLSTMConfig, GridLSTMParams, GridLSTMState, GridLSTMTransform, GridTransfer,
                                 grid_block, grid_lstm, init_grid_block)
from lstm_jax.models.readout import readout

F32, F64, BF16 = jnp.float32, jnp.float64, jnp.bfloat16
B, T, I, H, L = 2, 5, 3, 4, 2
TOL64 = dict(rtol=1e-10, atol=1e-10)
TOL32 = dict(rtol=1e-5, atol=1e-5)
assert_trees_close = helpers.assert_trees_close


def perturb(tree, rng, scale=0.5):
    """Adds scale * N(0, 1) to every leaf, so zero biases etc. matter."""
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64) + scale * rng.standard_normal(a.shape),
                                              a.dtype), tree)


normal = helpers.normal  # N(0, 1) drawn by NumPy, at float64 unless told


def cast(tree, dtype):
    return jax.tree.map(lambda a: a.astype(dtype), tree)


# ------------------------------------------------------------------- adapters to the reference

def lstm_dict(w, b):
    """Fused (i, f, g, o) columns -> the reference's per-gate (u, f, c, o) weights."""
    w, b = np.asarray(w, np.float64), np.asarray(b, np.float64)
    n = b.shape[-1] // 4
    out = {}
    for j, k in enumerate("ufco"):
        out[f"W_{k}"], out[f"b_{k}"] = w[:, j * n:(j + 1) * n], b[j * n:(j + 1) * n]
    return out


def dim_dict(tr):
    if isinstance(tr, GridTransfer):
        return {"V": np.asarray(tr.w, np.float64), "c": np.asarray(tr.b, np.float64)}
    return lstm_dict(tr.w, tr.b)


def ref_params(cell, params):
    """Our GridLSTMParams -> the reference's dict (levels resolved through tying/sharing)."""
    c = cell.config
    D = 1 if (c.tied or not c.depth_lstm) else 2
    levels = []
    for l in range(c.depth):
        j = 0 if c.share_levels else l
        time = lstm_dict(params.w[j, 0], params.b[j, 0])
        depth = (lstm_dict(params.w[j, D - 1], params.b[j, D - 1]) if c.depth_lstm
                 else {"V": params.w_transfer[j], "c": params.b_transfer[j]})
        levels.append({"time": time, "depth": depth})
    p = {"W_in": params.w_in, "b_in": params.b_in, "levels": levels}
    if params.w_in_memory is not None:
        p.update(W_in_m=params.w_in_memory, b_in_m=params.b_in_memory)
    return p


def ref_state(carry):
    """GridLSTMState [..., L*H] -> the reference's {"h", "m"} [..., L, H]."""
    f = lambda a: np.asarray(a, np.float64).reshape(a.shape[:-1] + (-1, H))
    return {"h": f(carry.hidden), "m": f(carry.memory)}


def run_reference(cell, params, xs, carry=None):
    c = cell.config
    return ref.grid_lstm_2d(ref_params(cell, params), np.asarray(xs, np.float64),
                            None if carry is None else ref_state(carry), priority=c.priority,
                            depth_lstm=c.depth_lstm, depth_activation=c.depth_activation or "identity",
                            output_form=c.output_form)


# ------------------------------------------------------------------------------- the N-D block

# name: (N, lstm_dims, tied, priority, output_form, transfer_activation)
BLOCKS = {
    "n1": (1, (True,), False, None, "standard", "identity"),
    "n1_paper": (1, (True,), False, None, "paper", "identity"),
    "n2": (2, (True, True), False, None, "standard", "identity"),
    "n2_priority0": (2, (True, True), False, 0, "standard", "identity"),
    "n2_transfer_tanh_priority1": (2, (True, False), False, 1, "standard", "tanh"),
    "n3": (3, (True, True, True), False, None, "standard", "identity"),
    "n3_tied_priority2": (3, (True, True, True), True, 2, "standard", "identity"),
    "n3_transfer_relu_priority0_paper": (3, (True, False, True), False, 0, "paper", "relu"),
    "n3_two_transfers_tied": (3, (False, True, False), True, 1, "standard", "identity"),
}


def block_setup(name, batch_shape=(B,), dtype=F64, seed=0):
    N, lstm_dims, tied, priority, output_form, act = BLOCKS[name]
    rng = np.random.default_rng(seed)
    trs = init_grid_block(jax.random.key(seed), N, H, lstm_dims=lstm_dims, tied=tied, dtype=F64)
    if tied:  # perturb the shared transform once, so it stays shared
        shared = perturb(next(t for t in trs if isinstance(t, GridLSTMTransform)), rng)
        trs = tuple(shared if isinstance(t, GridLSTMTransform) else perturb(t, rng) for t in trs)
    else:
        trs = perturb(trs, rng)
    hs = tuple(normal(rng, batch_shape + (H,)) for _ in range(N))
    ms = tuple(normal(rng, batch_shape + (H,)) if d else None for d in lstm_dims)
    kw = dict(priority=priority, output_form=output_form, transfer_activation=act)
    return cast(trs, dtype), cast(hs, dtype), cast(ms, dtype), kw


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_matches_reference(name, dtype):
    trs, hs, ms, kw = block_setup(name, dtype=dtype)
    new_h, new_m = grid_block(trs, hs, ms, **kw)
    want_h, want_m = ref.grid_block([dim_dict(t) for t in trs], hs, ms, **kw)
    assert len(new_h) == len(new_m) == len(trs)
    for got, want in zip(new_h + new_m, want_h + want_m):
        if want is None:
            assert got is None
            continue
        assert got.dtype == dtype and got.shape == (B, H)
        np.testing.assert_allclose(np.asarray(got, np.float64), want, **(TOL64 if dtype == F64 else TOL32))


@pytest.mark.parametrize("batch_shape", [(), (2, 3)], ids=str)
def test_block_any_batch_shape_and_jit(batch_shape):
    trs, hs, ms, kw = block_setup("n3_transfer_relu_priority0_paper", batch_shape)
    got = jax.jit(functools.partial(grid_block, **kw))(trs, hs, ms)
    flat = lambda xs: [None if x is None else np.asarray(x).reshape(-1, H) for x in xs]
    want = ref.grid_block([dim_dict(t) for t in trs], flat(hs), flat(ms), **kw)
    for g, w in zip(got[0] + got[1], want[0] + want[1]):
        if w is not None:
            assert g.shape == batch_shape + (H,)
            np.testing.assert_allclose(np.asarray(g).reshape(-1, H), w, **TOL64)


def test_block_gates_are_the_reference_activations():
    trs, hs, ms, kw = block_setup("n3_transfer_relu_priority0_paper")
    new_h, new_m, gates = grid_block(trs, hs, ms, return_gates=True, **kw)
    assert set(gates[1]) == {"hidden"}
    H0 = np.concatenate([np.asarray(hs[0])] + [np.asarray(h) for h in new_h[1:]], axis=-1)  # priority 0
    _, _, want = ref.lstm_transform(dim_dict(trs[0]), H0, np.asarray(ms[0]), "paper")
    assert_trees_close(gates[0], want, **TOL64)
    np.testing.assert_array_equal(gates[2]["hidden"], new_h[2])


def test_1d_block_is_one_lstm_step():
    """N = 1: H = [h], so (h', m') = LSTM(h, m, W) is an LSTM step whose only input is h."""
    trs, hs, ms, _ = block_setup("n1")
    (h1,), (m1,) = grid_block(trs, hs, ms)
    cell = lj.lstm(H)
    rng = np.random.default_rng(7)
    params = lj.LSTMParams(w_x=normal(rng, (I, 4 * H)), w_h=trs[0].w, b=trs[0].b)
    carry = lj.LSTMState(hidden=hs[0], cell=ms[0])
    new, y = cell.step(params, carry, jnp.zeros((B, I), F64))  # no external input
    np.testing.assert_allclose(y, h1, rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(new.cell, m1, rtol=1e-15, atol=1e-15)
    new2, _ = cell.recur(params, carry, trs[0].b)  # the same without the input path at all
    np.testing.assert_allclose(new2.hidden, h1, rtol=1e-15, atol=1e-15)
    # and the paper's printed output form tanh(o * m') is a different function
    (h_paper,), _ = grid_block(trs, hs, ms, output_form="paper")
    assert np.max(np.abs(np.asarray(h_paper) - np.asarray(h1))) > 1e-2


def test_tied_block_shares_one_transform():
    trs = init_grid_block(jax.random.key(0), 3, H, tied=True, dtype=F64)
    assert trs[0] is trs[1] is trs[2]
    untied = init_grid_block(jax.random.key(0), 3, H, dtype=F64)
    assert not np.allclose(untied[0].w, untied[1].w)  # independent draws per dimension
    count = lambda tree: sum(a.size for a in {id(a): a for a in jax.tree.leaves(tree)}.values())
    assert count(trs) == 3 * H * 4 * H + 4 * H and count(untied) == 3 * count(trs)
    # forget bias lands in the forget block only; every [H, H] block is orthogonal
    np.testing.assert_array_equal(trs[0].b, np.r_[np.zeros(H), np.ones(H), np.zeros(2 * H)])
    for r in range(3):
        for c in range(4):
            blk = np.asarray(untied[1].w[r * H:(r + 1) * H, c * H:(c + 1) * H])
            np.testing.assert_allclose(blk.T @ blk, np.eye(H), atol=1e-12)
    # a tied block is an untied block whose transforms happen to be equal
    _, hs, ms, _ = block_setup("n3")
    copies = tuple(jax.tree.map(jnp.array, trs[0]) for _ in range(3))
    assert_trees_close(grid_block(trs, hs, ms, priority=1), grid_block(copies, hs, ms, priority=1),
                       rtol=0, atol=0)
    mixed = init_grid_block(jax.random.key(1), 3, H, lstm_dims=(True, False, True), tied=True)
    assert mixed[0] is mixed[2] and isinstance(mixed[1], GridTransfer) and mixed[1].w.shape == (3 * H, H)


# ------------------------------------------------------------------------- the 2-D layer

LAYERS = {
    "default": {},
    "tied": dict(tied=True),
    "parallel": dict(priority=False),
    "share_levels": dict(share_levels=True),
    "tied_share_levels_parallel": dict(tied=True, share_levels=True, priority=False),
    "project_memory": dict(input_memory="project"),
    "paper_output": dict(output_form="paper"),
    "transfer_identity": dict(depth_lstm=False),
    "transfer_tanh_parallel": dict(depth_lstm=False, depth_activation="tanh", priority=False),
    "transfer_relu": dict(depth_lstm=False, depth_activation="relu"),
}


@functools.cache
def layer_setup(name, dtype=F64, seed=0, depth=L):
    """(layer, cell, params, xs [B, T, I], random carry), all random, at ``dtype``."""
    cell = grid_lstm(H, depth, **LAYERS[name])
    lay = lj.layer(cell)
    rng = np.random.default_rng(seed)
    params = perturb(lay.init(jax.random.key(seed), I, dtype=F64), rng)
    xs = normal(rng, (B, T, I))
    carry = perturb(lay.init_carry(params, (B,)), rng)
    return lay, cell, cast(params, dtype), cast(xs, dtype), cast(carry, dtype)


# "tied", "parallel" and "share_levels" alone are covered by the combined config here and by
# test_tying_equals_untied_with_equal_weights (tied == untied with equal weights).
REFERENCE_CONFIGS = [("default", L), ("default", 3), ("tied_share_levels_parallel", L), ("project_memory", L),
                     ("paper_output", L), ("transfer_identity", 1), ("transfer_tanh_parallel", L),
                     ("transfer_relu", 3)]


@pytest.mark.parametrize("name, depth", REFERENCE_CONFIGS)
def test_layer_matches_reference_f64(name, depth):
    lay, cell, params, xs, carry = layer_setup(name, depth=depth)
    ys, final = jax.jit(lay.apply)(params, xs, carry)
    want_ys, want_state, _ = run_reference(cell, params, xs, carry)
    assert ys.shape == (B, T, H) and lay.output_size == H and final.hidden.shape == (B, depth * H)
    np.testing.assert_allclose(ys, want_ys, **TOL64)
    assert isinstance(final, GridLSTMState)
    assert_trees_close(ref_state(final), want_state, **TOL64)


@pytest.mark.parametrize("name", ["default", "transfer_relu"])
def test_gates_match_reference(name):
    _, cell, params, xs, carry = layer_setup(name)
    ys, _, aux = jax.jit(lambda p, x, c: lj.unroll(cell, p, x, c, return_gates=True))(params, xs, carry)
    want_ys, _, want_acts = run_reference(cell, params, xs, carry)
    assert set(aux.gates) == set(want_acts)
    assert_trees_close(aux.gates, want_acts, **TOL64)
    np.testing.assert_allclose(ys, want_ys, **TOL64)


@pytest.mark.parametrize("name, batch_shape", [("default", ()), ("transfer_tanh_parallel", (2, 3))], ids=str)
def test_one_scan_equals_python_loop_of_step(name, batch_shape):
    lay, cell, params, _, _ = layer_setup(name)
    rng = np.random.default_rng(3)
    xs = normal(rng, batch_shape + (T, I))
    carry0 = perturb(cell.init_carry(params, batch_shape), rng)
    ys, final = jax.jit(lay.apply)(params, xs, carry0)
    step = jax.jit(cell.step)
    carry, loop_ys = carry0, []
    for t in range(T):
        carry, y = step(params, carry, xs[..., t, :])
        loop_ys.append(y)
    np.testing.assert_allclose(ys, np.stack(loop_ys, axis=-2), rtol=1e-13, atol=1e-13)
    assert_trees_close(final, carry, rtol=1e-13, atol=1e-13)
    # one scan for the whole grid; the input projection is hoisted out of it (one matmul for
    # all steps), and the body does two matmuls per level (time and depth transforms)
    jaxpr = jax.make_jaxpr(lay.apply)(params, xs, carry0).jaxpr
    (scan,) = _scan_eqns(jaxpr)
    assert _count_dots(jaxpr, into_scans=False) == 1
    assert _count_dots(scan.params["jaxpr"].jaxpr, into_scans=True) == 2 * L


def _sub_jaxprs(eqn):
    for v in eqn.params.values():
        for j in v if isinstance(v, (tuple, list)) else (v,):
            j = getattr(j, "jaxpr", j)  # ClosedJaxpr -> Jaxpr
            if hasattr(j, "eqns"):
                yield j


def _count_dots(jaxpr, *, into_scans):
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name == "dot_general"
        if eqn.primitive.name != "scan" or into_scans:
            n += sum(_count_dots(j, into_scans=into_scans) for j in _sub_jaxprs(eqn))
    return n


def _scan_eqns(jaxpr):
    found = []
    for eqn in jaxpr.eqns:
        found += [eqn] if eqn.primitive.name == "scan" else []
        for j in _sub_jaxprs(eqn):
            found += _scan_eqns(j)
    return found


def _identity_transfer(params):
    """V^l = [I; 0] (rows for [h_time'; h_depth]), c^l = 0."""
    v = jnp.concatenate([jnp.eye(H, dtype=F64), jnp.zeros((H, H), F64)], axis=0)
    return params._replace(w_transfer=jnp.broadcast_to(v, params.w_transfer.shape),
                           b_transfer=jnp.zeros_like(params.b_transfer))


def _as_stacked_lstm_params(params):
    """The equivalent lstm_jax.stack([lstm(H)] * L) params (see grid_lstm's docstring)."""
    out = []
    for l in range(L):
        w, b = params.w[l, 0], params.b[l, 0]
        w_x, w_h = w[H:], w[:H]
        if l == 0:  # the input projection folds into the first layer's input kernel
            out.append(lj.LSTMParams(w_x=params.w_in @ w_x, w_h=w_h, b=b + params.b_in @ w_x))
        else:
            out.append(lj.LSTMParams(w_x=w_x, w_h=w_h, b=b))
    return tuple(out)


def test_non_lstm_depth_is_a_stacked_lstm():
    lay, _, params, xs, carry = layer_setup("transfer_identity")
    params = _identity_transfer(params)
    stacked = lj.stack([lj.lstm(H)] * L)
    sp = _as_stacked_lstm_params(params)
    h, m = ref_state(carry)["h"], ref_state(carry)["m"]
    s_carry = tuple(lj.LSTMState(hidden=jnp.asarray(h[:, l]), cell=jnp.asarray(m[:, l])) for l in range(L))
    lengths = jnp.array([T, 3], jnp.int32)
    ys, final = jax.jit(lay.apply)(params, xs, carry, lengths=lengths)
    want_ys, want_carry = jax.jit(stacked.apply)(sp, xs, s_carry, lengths=lengths)
    np.testing.assert_allclose(ys, want_ys, rtol=1e-12, atol=1e-12)
    got = ref_state(final)
    for l in range(L):
        np.testing.assert_allclose(got["h"][:, l], want_carry[l].hidden, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got["m"][:, l], want_carry[l].cell, rtol=1e-12, atol=1e-12)
    # the equivalence needs the depth dimension prioritised (it must read the new h_time)
    parallel = lj.layer(grid_lstm(H, L, depth_lstm=False, priority=False))
    ys_par, _ = jax.jit(parallel.apply)(params, xs, carry, lengths=lengths)
    assert np.max(np.abs(np.asarray(ys_par) - np.asarray(want_ys))) > 1e-2


def _n_params(tree):
    return sum(a.size for a in jax.tree.leaves(tree))


@pytest.mark.parametrize("name, D, Lp, transfer", [
    ("default", 2, L, False), ("tied", 1, L, False), ("share_levels", 2, 1, False),
    ("tied_share_levels_parallel", 1, 1, False), ("project_memory", 2, L, False),
    ("transfer_identity", 1, L, True),
])
def test_param_counts(name, D, Lp, transfer):
    cell = grid_lstm(H, L, **LAYERS[name])
    params = cell.init(jax.random.key(0), I, dtype=F64)
    lstm_w = Lp * D * (2 * H * 4 * H + 4 * H)
    inputs = (I * H + H) * (2 if LAYERS[name].get("input_memory") == "project" else 1)
    trans = Lp * (2 * H * H + H) if transfer else 0
    assert _n_params(params) == inputs + lstm_w + trans
    assert params.w.shape == (Lp, D, 2 * H, 4 * H) and params.b.shape == (Lp, D, 4 * H)
    assert (params.w_transfer is None) == (not transfer)
    carry = cell.init_carry(params, (2, 3))
    assert carry.hidden.shape == carry.memory.shape == (2, 3, L * H)
    # init: forget bias 1 in every LSTM transform's forget block, biases otherwise zero
    np.testing.assert_array_equal(params.b, np.broadcast_to(np.r_[np.zeros(H), np.ones(H), np.zeros(2 * H)],
                                                            params.b.shape))
    assert _n_params(grid_lstm(H, L, tied=True).init(jax.random.key(0), I)) < _n_params(
        grid_lstm(H, L).init(jax.random.key(0), I))


def test_tying_equals_untied_with_equal_weights():
    _, _, params, xs, carry = layer_setup("default")
    run = lambda **kw: jax.jit(functools.partial(lj.unroll, grid_lstm(H, L, **kw), xs=xs, carry=carry))
    untied, tied_apply, shared_apply = run(), run(tied=True), run(share_levels=True)  # one compile each
    # tied: the depth transform is the time transform
    equal = params._replace(w=jnp.repeat(params.w[:, :1], 2, axis=1), b=jnp.repeat(params.b[:, :1], 2, axis=1))
    tied = params._replace(w=params.w[:, :1], b=params.b[:, :1])
    assert_trees_close(tied_apply(tied), untied(equal), rtol=1e-14, atol=1e-14)
    # share_levels: every level uses level 0's block
    same = params._replace(w=jnp.repeat(params.w[:1], L, axis=0), b=jnp.repeat(params.b[:1], L, axis=0))
    shared = params._replace(w=params.w[:1], b=params.b[:1])
    assert_trees_close(shared_apply(shared), untied(same), rtol=1e-14, atol=1e-14)
    # and untied weights really do differ from the tied computation
    assert np.max(np.abs(np.asarray(untied(params)[0]) - np.asarray(untied(equal)[0]))) > 1e-3


@pytest.mark.parametrize("name", ["project_memory", "transfer_tanh_parallel"])
def test_gradients_match_finite_differences(name):
    lay = lj.layer(grid_lstm(3, 1, **LAYERS[name]))  # compile-bound: one level; levels are checked above
    rng = np.random.default_rng(2)
    params = perturb(lay.init(jax.random.key(2), 2, dtype=F64), rng)
    xs = normal(rng, (2, 2, 2))
    check_grads(jax.jit(lay.apply), (params, xs), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("reverse", [False, True])
def test_lengths_padding_and_reverse(reverse):
    """Garbage past each length never leaks; padded outputs are zero; the carry is the last
    valid one; reverse reads each sequence backwards within its own length."""
    _, cell, params, _, _ = layer_setup("default")
    lay = lj.layer(grid_lstm(H, L), reverse=reverse)
    rng = np.random.default_rng(5)
    lengths = (T, 0, 2)
    xs = normal(rng, (3, T, I))
    valid = np.arange(T)[None, :, None] < np.array(lengths)[:, None, None]
    padded = jnp.where(valid, xs, 1e3 * normal(rng, xs.shape))
    ys, final = jax.jit(lay.apply)(params, padded, lengths=jnp.array(lengths, jnp.int32))
    st = ref_state(final)
    for b, n in enumerate(lengths):
        np.testing.assert_array_equal(ys[b, n:], 0.0)
        if n == 0:
            np.testing.assert_array_equal(final.hidden[b], 0.0)
            continue
        seq = np.asarray(xs[b:b + 1, :n])
        want_ys, want_state, _ = run_reference(cell, params, seq[:, ::-1] if reverse else seq)
        np.testing.assert_allclose(ys[b:b + 1, :n], want_ys[:, ::-1] if reverse else want_ys, **TOL64)
        assert_trees_close({k: v[b:b + 1] for k, v in st.items()}, want_state, **TOL64)


def test_time_major_equals_batch_first():
    _, _, params, xs, carry = layer_setup("tied")
    bf = lj.layer(grid_lstm(H, L, tied=True))
    tm = lj.layer(grid_lstm(H, L, tied=True), time_major=True)
    assert tm.time_major and not bf.time_major
    ys, final = jax.jit(bf.apply)(params, xs, carry)
    ys_tm, final_tm = jax.jit(tm.apply)(params, jnp.swapaxes(xs, 0, 1), carry)
    np.testing.assert_allclose(jnp.swapaxes(ys_tm, 0, 1), ys, rtol=1e-14, atol=1e-14)
    assert_trees_close(final_tm, final, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("dtype", [F32, BF16, F64], ids=lambda d: jnp.dtype(d).name)
def test_dtype_preserved(dtype):
    lay, cell, params, xs, _ = layer_setup("project_memory", dtype, depth=2)

    def loss(p, x):
        ys, carry = lay.apply(p, x)
        return jnp.sum(ys) + sum(jnp.sum(c) for c in jax.tree.leaves(carry)), (ys, carry)

    (_, (ys, carry)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, xs)
    for leaf in jax.tree.leaves((ys, carry, grads)):
        assert leaf.dtype == dtype
    # values follow the reference run at float64 on the rounded params and inputs (this is the
    # float32-to-1e-5 comparison; bfloat16 has ~3 significant digits)
    want_ys, want_state, _ = run_reference(cell, params, xs)
    tol = {F64: TOL64, F32: TOL32, BF16: dict(rtol=0.1, atol=0.1)}[dtype]
    np.testing.assert_allclose(np.asarray(ys, np.float64), want_ys, **tol)
    assert_trees_close(ref_state(carry), want_state, **tol)


def test_resets_equal_running_segments_separately():
    _, cell, params, xs, carry = layer_setup("project_memory")
    resets = np.zeros((B, T), bool)
    resets[0, 2] = resets[1, [0, 3]] = True
    ys, final = jax.jit(lambda p, x, c, r: lj.unroll(cell, p, x, c, resets=r))(params, xs, carry, jnp.asarray(resets))
    st = ref_state(final)
    for b in range(B):
        for n, (start, stop) in enumerate(helpers.segments(resets[b])):
            first = n == 0 and not resets[b, 0]  # later segments start from the zero carry
            want_ys, want_state, _ = run_reference(cell, params, np.asarray(xs)[b:b + 1, start:stop],
                                                   jax.tree.map(lambda a: a[b:b + 1], carry) if first else None)
            np.testing.assert_allclose(ys[b:b + 1, start:stop], want_ys, **TOL64)
        assert_trees_close({k: v[b:b + 1] for k, v in st.items()}, want_state, **TOL64)


def test_cells_compare_by_config_and_are_static_arguments():
    a = grid_lstm(H, L, depth_lstm=False)
    b = grid_lstm(H, L, depth_lstm=False, depth_activation="identity")  # the default, spelled out
    assert isinstance(a.config, GridLSTMConfig) and a == b and hash(a) == hash(b)
    assert repr(a) == "grid_lstm(4, depth=2, depth_lstm=False, depth_activation='identity')"
    assert (a.config.num_transforms, a.config.param_levels) == (1, L)
    assert (grid_lstm(H, 3, share_levels=True).config.num_transforms,
            grid_lstm(H, 3, share_levels=True).config.param_levels) == (2, 1)
    for other in (grid_lstm(H, L), grid_lstm(H, L, depth_lstm=False, priority=False),
                  grid_lstm(H, 3, depth_lstm=False), grid_lstm(H, L, depth_lstm=False, depth_activation="tanh")):
        assert a != other
    _, _, params, xs, _ = layer_setup("transfer_identity")
    traces, (ya, yb) = helpers.traces_with_static(lambda c, p, x: lj.unroll(c, p, x)[0], (a, params, xs),
                                                  (b, params, xs))
    np.testing.assert_array_equal(ya, yb)
    assert traces == [a]  # the equal cell hit the cache


# ----------------------------------------------------------------------------------- errors

_TRS = init_grid_block(jax.random.key(0), 2, H, dtype=F64)
_HS = (jnp.zeros((B, H), F64),) * 2
_CELL = grid_lstm(H, 2)
_PARAMS = jax.eval_shape(lambda: _CELL.init(jax.random.key(0), I, dtype=F64))  # shapes: all the checks read
_LSTM_PARAMS = jax.eval_shape(lambda: lj.lstm(H).init(jax.random.key(0), I, dtype=F64))


def _layer(*args, **kwargs):
    return lj.layer(grid_lstm(*args, **kwargs))


@pytest.mark.parametrize("thunk, error, match", [
    (lambda: grid_lstm(0, 2), ValueError, "`hidden_size` must be a positive int, got 0"),
    (lambda: grid_lstm(H, 0), ValueError, "`depth` must be a positive int, got 0"),
    (lambda: grid_lstm(H, 2, input_memory="x"), ValueError, r"`input_memory` must be one of \('zeros', 'project'\)"),
    (lambda: grid_lstm(H, 2, output_form="x"), ValueError, r"`output_form` must be one of \('standard', 'paper'\)"),
    (lambda: grid_lstm(H, 2, depth_lstm=False, depth_activation="sigmoid"), ValueError,
     r"`depth_activation` must be one of \('identity', 'tanh', 'relu'\), got 'sigmoid'"),
    (lambda: grid_lstm(H, 2, depth_activation="tanh"), ValueError,
     "`depth_activation` applies to a non-LSTM depth dimension; pass it only with `depth_lstm=False`"),
    (lambda: grid_lstm(H, 2, tied=True, depth_lstm=False), ValueError, "`tied=True` .* needs `depth_lstm=True`"),
    (lambda: grid_lstm(H, 2, depth_lstm=False, input_memory="project"), ValueError,
     "`input_memory='project'` .* needs `depth_lstm=True`"),
    (lambda: grid_lstm(H, 2, tied=1), TypeError, "`tied` must be a bool, got 1"),
    (lambda: grid_lstm(H, 2, priority=None), TypeError, "`priority` must be a bool, got None"),
    (lambda: grid_lstm(H, 2, forget_bias=None), ValueError, "`forget_bias` must be a finite number, got None"),
    (lambda: grid_lstm(H, 2, bias_init=[0.0]), TypeError, r"`bias_init` must be an initialiser"),
    (lambda: _CELL.init(jax.random.key(0), 0), ValueError, "`input_size` must be a positive int"),
    (lambda: _CELL.init(jax.random.key(0), I, dtype=jnp.int32), TypeError, "`dtype` must be a floating dtype"),
    (lambda: _layer(H, 2).apply(_PARAMS, jnp.ones((B, T, I + 1), F64)), ValueError,
     r"`xs` must have shape \[..., T, I\] with last axis 3"),
    (lambda: _layer(H, 2).apply(_PARAMS, jnp.ones((B, T, I), F32)), TypeError,
     "`xs` has dtype float32 but the parameters are float64"),
    (lambda: _layer(H, 3).apply(_PARAMS, jnp.ones((B, T, I), F64)), ValueError,
     r"`params.w` has shape \(2, 2, 8, 16\), but grid_lstm\(4, depth=3\) needs \(3, 2, 8, 16\)"),
    (lambda: _layer(H, 2, tied=True).init_carry(_PARAMS), ValueError,
     r"`params.w` has shape \(2, 2, 8, 16\), but grid_lstm\(4, depth=2, tied=True\) needs \(2, 1, 8, 16\)"),
    (lambda: _layer(H, 2).apply(_LSTM_PARAMS, jnp.ones((B, T, I), F64)), TypeError,
     r"`params` must be GridLSTMParams for grid_lstm\(4, depth=2\), got LSTMParams"),
    (lambda: _layer(H + 1, 2).init_carry(_PARAMS), ValueError,
     r"`params.w_in` has shape \(3, 4\), but grid_lstm\(5, depth=2\) needs \(3, 5\)"),
    (lambda: _layer(H, 2, input_memory="project").apply(_PARAMS, jnp.ones((B, T, I), F64)), ValueError,
     r"`params.w_in_memory` is missing: grid_lstm\(4, depth=2, input_memory='project'\) has it"),
    (lambda: _layer(H, 2).apply(_PARAMS, jnp.ones((B, T, I), F64), GridLSTMState(*(jnp.zeros((B, H), F64),) * 2)),
     ValueError, r"`carry.hidden` must have shape \(2, 8\) for batch shape \(2,\)"),
    (lambda: grid_block(_TRS, _HS[:1], (None, None)), ValueError,
     "`hidden` and `memory` must each hold N=2 vectors .* got 1 and 2"),
    (lambda: grid_block((), (), ()), ValueError, "`transforms` must hold one transform per dimension, got none"),
    (lambda: grid_block(_TRS, _HS, _HS, priority=2), ValueError,
     r"`priority` must be None or a dimension index in \[0, 1\], got 2"),
    (lambda: grid_block(_TRS, _HS, _HS, priority=True), ValueError, "`priority` must be None or a dimension index"),
    (lambda: grid_block(_TRS, _HS, (_HS[0], None)), ValueError,
     r"`memory\[1\]` must be an array: dimension 1 is an LSTM dimension"),
    (lambda: grid_block((_TRS[0], GridTransfer(jnp.zeros((2 * H, H), F64), jnp.zeros(H, F64))), _HS, _HS),
     ValueError, r"`memory\[1\]` must be None: dimension 1 is a non-LSTM"),
    (lambda: grid_block(_TRS, (_HS[0], jnp.zeros((B + 1, H), F64)), _HS), ValueError,
     r"`hidden\[1\]` must have the shape of `hidden\[0\]` \(2, 4\), got \(3, 4\)"),
    (lambda: grid_block(_TRS, (jnp.zeros((B, H + 1), F64),) * 2, _HS), ValueError,
     r"`transforms\[0\]` must have w of shape \(10, 20\) and b of shape \(20,\) for N=2, H=5"),
    (lambda: grid_block(_TRS, _HS, (_HS[0], jnp.zeros((B, H), F32))), TypeError,
     r"`memory\[1\]` has dtype float32 but the weights are float64"),
    (lambda: grid_block((_TRS[0], (1, 2)), _HS, _HS), TypeError,
     r"`transforms\[1\]` must be a GridLSTMTransform or GridTransfer, got tuple"),
    (lambda: grid_block(_TRS, (jnp.zeros((), F64),) * 2, _HS), ValueError, r"`hidden\[0\]` must have shape \[..., H\]"),
    (lambda: grid_block(_TRS, _HS, _HS, transfer_activation="sigmoid"), ValueError,
     r"`transfer_activation` must be one of \('identity', 'tanh', 'relu'\)"),
    (lambda: init_grid_block(jax.random.key(0), 2, H, lstm_dims=(True,)), ValueError,
     "`lstm_dims` must hold num_dims=2 booleans, got 1"),
    (lambda: init_grid_block(jax.random.key(0), 0, H), ValueError, "`num_dims` must be a positive int"),
], ids=lambda v: None)
def test_errors(thunk, error, match):
    with pytest.raises(error, match=match):
        thunk()


# ---------------------------------------------------------------------------------- learning

def test_grid_lstm_learns_delayed_recall():
    """Optax on the delayed-recall task of tests/test_training.py: the target at step t is
    x[t - LAG, 0]. Predicting 0 (no memory) scores MSE (T - LAG) / T ~ 0.83; we ask for a tenth."""
    Bt, Tt, It, Ht, LAG, STEPS = 32, 12, 8, 8, 2, 150  # compile-bound: steps are cheap
    baseline = (Tt - LAG) / Tt

    data = functools.partial(helpers.delayed_recall, T=Tt, I=It, lag=LAG, dtype=F32)

    model = readout(grid_lstm(Ht, 2), 1, at="every")
    params = model.init(jax.random.key(0), It, dtype=F32)
    assert isinstance(params.body, GridLSTMParams)
    params, losses = helpers.train_with_optax(model, params, data, steps=STEPS, batch=Bt)
    test_loss = float(helpers.mse_loss(model)(params, *data(jax.random.key(2), 256)))
    assert float(losses[0]) > 0.5 * baseline
    assert test_loss < 0.1 * baseline, f"held-out MSE {test_loss:.3f} not below {0.1 * baseline:.3f}"
