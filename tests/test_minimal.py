"""minGRU and minLSTM (Feng et al. 2024) in both implementations: the generic scan
(``lstm_jax.unroll(..., impl="scan")``) and their ``"parallel"`` form (``impl="parallel"``,
an associative scan over time, ``lstm_jax.kernels.linear_scan``).

Proven here:

* both equal a float64 NumPy reference written from the paper's equations (below, stepped
  in a Python loop) to 1e-10, for both candidate activations, with and without minLSTM's
  normalisation, from a random signed carry; the per-step gates too;
* ``cell.step == recur(project)`` == one reference step for batch shapes () and (2, 3); the
  parallel-form contract ``recur(h) == exp(log a) * h + b`` (``config.linear_recurrence``);
  the scan == a Python loop of ``step``;
* float32 at T = 4096: parallel == scan == the float64 reference to 1e-5, outputs, final
  carry and gradients, also with gates near 1 (long memory) and signed values; and the
  paper's global ``logcumsumexp`` form does *not* reach that precision (the reason the
  kernel combines pairwise with linear values); T = 1, 33 edge cases;
* parallel == scan in float64, values and gradients w.r.t. params, inputs, initial carry and
  reset carry, under ``lengths``, ``reverse``, ``resets`` and all three together; running
  with resets equals running each segment separately (forwards and reversed, with lengths);
  finite-difference gradient checks in float64 for both (the parallel one with resets);
* ``lengths`` (padded == the unpadded reference, zeros after the end, carry = last valid,
  lengths 0 and T) with and without ``reverse``; ``reverse`` alone; ``time_major``; batch
  shapes; the parallel form inside ``bidirectional``;
* bfloat16 / float32 / float64 preserved through outputs, carries and gradients (bfloat16
  is scanned in float32 inside the parallel form, then cast back);
* configs: equal and hashable cells (a jit static argument), ``repr``; every user error's
  message (``impl="parallel"`` on a cell without the form lists its forms); a training run
  with the parallel form whose held-out loss must fall below a stated bound.
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
from lstm_jax.cells.minimal import (
    MinGRUConfig,
    MinGRUParams,
    MinimalState,
    MinLSTMConfig,
    MinLSTMParams,
    g,
    min_gru,
    min_lstm,
)
from lstm_jax.models.readout import readout

F32, F64, BF16 = jnp.float32, jnp.float64, jnp.bfloat16
B, T, I, H = 2, 5, 3, 4
TOL64 = dict(rtol=1e-10, atol=1e-10)
TOL32 = dict(rtol=1e-5, atol=1e-5)

CELLS = {
    "min_gru": lambda: min_gru(H),
    "min_gru_identity": lambda: min_gru(H, candidate_activation="identity"),
    "min_lstm": lambda: min_lstm(H),
    "min_lstm_identity": lambda: min_lstm(H, candidate_activation="identity"),
    "min_lstm_unnormalized": lambda: min_lstm(H, normalize=False),
}
all_cells = pytest.mark.parametrize("name", list(CELLS))
IMPLS = ("scan", "parallel")
both_impls = pytest.mark.parametrize("impl", IMPLS)
assert_tree_close = helpers.assert_trees_close


# --------------------------------------------------- float64 NumPy reference (the paper's equations)

def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


REF_ACTIVATIONS = {
    "g": lambda z: np.where(z >= 0, z + 0.5, sigmoid(z)),  # App. B: x + 1/2 if x >= 0 else sigma(x)
    "identity": lambda z: z,
}


def ref_min_gru(p, xs, h, *, candidate_activation="g"):
    """minGRU, Sec. 3.1.3::

        z_t = sigma(x_t W_xz + b_z);  h~_t = phi(x_t W_xh + b_h);  h_t = (1 - z_t) h_{t-1} + z_t h~_t

    ``p``: ``W_xz, W_xh [I, H]``, ``b_z, b_h [H]``; ``xs [B, T, I]``; ``h [B, H]``.
    Returns ``(ys [B, T, H], h [B, H], acts)``.
    """
    phi = REF_ACTIVATIONS[candidate_activation]
    ys, acts = [], {"update": [], "candidate": [], "hidden": []}
    for t in range(xs.shape[1]):
        x = xs[:, t]
        z = sigmoid(x @ p["W_xz"] + p["b_z"])
        h_tilde = phi(x @ p["W_xh"] + p["b_h"])
        h = (1.0 - z) * h + z * h_tilde
        ys.append(h)
        for k, v in (("update", z), ("candidate", h_tilde), ("hidden", h)):
            acts[k].append(v)
    return np.stack(ys, 1), h, {k: np.stack(v, 1) for k, v in acts.items()}


def ref_min_lstm(p, xs, h, *, candidate_activation="g", normalize=True):
    """minLSTM, Sec. 3.2.3::

        f_t = sigma(x_t W_xf + b_f);  i_t = sigma(x_t W_xi + b_i)
        f'_t = f_t / (f_t + i_t);  i'_t = i_t / (f_t + i_t)     (normalize; else f', i' = f, i)
        h~_t = phi(x_t W_xh + b_h);  h_t = f'_t h_{t-1} + i'_t h~_t

    ``p``: ``W_xf, W_xi, W_xh [I, H]``, ``b_f, b_i, b_h [H]``.
    """
    phi = REF_ACTIVATIONS[candidate_activation]
    ys, acts = [], {"forget": [], "input": [], "candidate": [], "hidden": []}
    for t in range(xs.shape[1]):
        x = xs[:, t]
        f = sigmoid(x @ p["W_xf"] + p["b_f"])
        i = sigmoid(x @ p["W_xi"] + p["b_i"])
        if normalize:
            f, i = f / (f + i), i / (f + i)
        h_tilde = phi(x @ p["W_xh"] + p["b_h"])
        h = f * h + i * h_tilde
        ys.append(h)
        for k, v in (("forget", f), ("input", i), ("candidate", h_tilde), ("hidden", h)):
            acts[k].append(v)
    return np.stack(ys, 1), h, {k: np.stack(v, 1) for k, v in acts.items()}


def run_reference(cell, params, xs, carry=None):
    """Our fused params (blocks documented as (z, h~) and (f, i, h~)) -> the per-gate reference."""
    w, b = np.asarray(params.w_x, np.float64), np.asarray(params.b, np.float64)
    xs = np.asarray(xs, np.float64)
    h = np.zeros((xs.shape[0], H)) if carry is None else np.asarray(carry.hidden, np.float64)
    config = cell.config
    if isinstance(config, MinGRUConfig):
        p = {"W_xz": w[:, :H], "W_xh": w[:, H:], "b_z": b[:H], "b_h": b[H:]}
        return ref_min_gru(p, xs, h, candidate_activation=config.candidate_activation)
    p = {"W_xf": w[:, :H], "W_xi": w[:, H:2 * H], "W_xh": w[:, 2 * H:],
         "b_f": b[:H], "b_i": b[H:2 * H], "b_h": b[2 * H:]}
    return ref_min_lstm(p, xs, h, candidate_activation=config.candidate_activation, normalize=config.normalize)


# ------------------------------------------------------------------------------------ helpers

def normal(rng, shape, dtype=F64, scale=1.0):
    return jnp.asarray(scale * rng.standard_normal(shape), dtype)


def cast(tree, dtype):
    return jax.tree.map(lambda a: a.astype(dtype), tree)


@functools.cache
def setup(name, dtype=F64, seed=0, T=T, memory_shift=0.0):
    """(cell, params, xs [B, T, I], carry [B, H]): perturbed params, N(0, 1) inputs, signed carry.

    ``memory_shift`` lowers the write gate's bias (minGRU's z, minLSTM's i), which pushes
    ``a_t`` towards 1: memory over ~``exp(memory_shift)`` steps.
    """
    cell = CELLS[name]()
    rng = np.random.default_rng(seed)
    params = cell.init(jax.random.key(seed), I, dtype=F64)
    params = jax.tree.map(lambda a: a + normal(rng, a.shape, scale=0.5), params)
    write = slice(0, H) if isinstance(cell.config, MinGRUConfig) else slice(H, 2 * H)
    params = params._replace(b=params.b.at[write].add(-memory_shift))
    xs = normal(rng, (B, T, I))
    carry = MinimalState(hidden=normal(rng, (B, H)))
    return cell, cast(params, dtype), cast(xs, dtype), cast(carry, dtype)


def run(impl, cell, params, xs, carry=None, **kw):
    return lj.unroll(cell, params, xs, carry, impl=impl, **kw)


def jitted(impl, cell, **kw):
    return jax.jit(lambda p, x, c: run(impl, cell, p, x, c, **kw))


# ------------------------------------------------------------------ agreement with the reference

@all_cells
@both_impls
def test_matches_reference_f64(name, impl):
    cell, params, xs, carry = setup(name)
    ys, final = jitted(impl, cell)(params, xs, carry)
    want_ys, want_h, _ = run_reference(cell, params, xs, carry)
    assert ys.shape == (B, T, H) and isinstance(final, MinimalState)
    np.testing.assert_allclose(ys, want_ys, **TOL64)
    np.testing.assert_allclose(final.hidden, want_h, **TOL64)


@all_cells
def test_gates_match_reference(name):
    cell, params, xs, carry = setup(name)
    _, _, aux = lj.unroll(cell, params, xs, carry, return_gates=True)
    _, _, want = run_reference(cell, params, xs, carry)
    assert_tree_close(aux.gates, want, **TOL64)
    if getattr(cell.config, "normalize", False):
        np.testing.assert_allclose(aux.gates["forget"] + aux.gates["input"], 1.0, rtol=1e-14, atol=1e-14)
    if cell.config.candidate_activation == "g":
        assert np.all(np.asarray(aux.gates["candidate"]) > 0)


@all_cells
@pytest.mark.parametrize("batch_shape", [(), (2, 3)], ids=str)
def test_step_is_recur_of_project_and_linear_form(name, batch_shape):
    cell, params, _, _ = setup(name)
    rng = np.random.default_rng(1)
    x = normal(rng, batch_shape + (I,))
    carry = MinimalState(hidden=normal(rng, batch_shape + (H,)))
    new, y = cell.step(params, carry, x)
    px = cell.project(params, x)
    new2, y2 = cell.recur(params, carry, px)
    assert y.shape == batch_shape + (H,)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(new.hidden, new2.hidden)
    np.testing.assert_array_equal(y, new.hidden)  # the output is the hidden state
    # the contract the parallel form relies on: recur(h) == exp(log a) * h + b, with 0 < a < 1
    log_a, b = cell.config.linear_recurrence(px)
    assert log_a.shape == b.shape == batch_shape + (H,) and np.all(np.asarray(log_a) < 0)
    np.testing.assert_allclose(y, jnp.exp(log_a) * carry.hidden + b, rtol=1e-13, atol=1e-13)
    # one reference step
    flat = lambda a: np.asarray(a).reshape(-1, a.shape[-1])  # [..., n] -> [B', n]
    want_ys, want_h, _ = run_reference(cell, params, flat(x)[:, None], MinimalState(flat(carry.hidden)))
    np.testing.assert_allclose(flat(y), want_ys[:, 0], **TOL64)


@pytest.mark.parametrize("name", ["min_gru", "min_lstm"])
def test_scan_equals_python_loop(name):
    cell, params, xs, carry = setup(name)
    ys, final = lj.unroll(cell, params, xs, carry)
    c, loop_ys = carry, []
    for t in range(T):
        c, y = cell.step(params, c, xs[:, t])
        loop_ys.append(y)
    np.testing.assert_allclose(ys, jnp.stack(loop_ys, 1), rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(final.hidden, c.hidden, rtol=1e-14, atol=1e-14)


def test_g_is_the_papers_activation():
    x = jnp.array([-30.0, -2.0, -1e-9, 0.0, 1e-9, 0.7, 40.0], F64)
    np.testing.assert_allclose(g(x), REF_ACTIVATIONS["g"](np.asarray(x)), rtol=1e-15)
    assert np.all(np.asarray(g(x)) > 0)
    np.testing.assert_allclose(g(jnp.array([-1e-12, 1e-12], F64)), [0.5, 0.5], atol=1e-11)  # continuous
    assert g(jnp.zeros((2,), BF16)).dtype == BF16


# ------------------------------------------------------------------- parallel == scan, long

LONG_T = 4096


def loss_and_grads(impl, cell, **kw):
    """jit(value_and_grad) of ``sum(ys) + sum(sin(h_T))`` w.r.t. (params, xs, carry), with
    ``(ys, carry)`` as aux: one compile gives outputs and gradients."""
    def loss(p, x, c):
        ys, final = run(impl, cell, p, x, c, **kw)
        return jnp.sum(ys) + jnp.sum(jnp.sin(final.hidden)), (ys, final)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


@pytest.mark.parametrize("name, memory_shift", [
    ("min_gru", 0.0),
    ("min_lstm_identity", 6.0),  # a_t ~ 0.995: memory over hundreds of steps; signed values
], ids=str)
def test_parallel_equals_scan_long_f32(name, memory_shift):
    cell, params, xs, carry = setup(name, F32, seed=3, T=LONG_T, memory_shift=memory_shift)
    (_, par), par_grads = loss_and_grads("parallel", cell)(params, xs, carry)
    (_, seq), seq_grads = loss_and_grads("scan", cell)(params, xs, carry)
    assert all(leaf.dtype == F32 for leaf in jax.tree.leaves((par, par_grads, seq, seq_grads)))
    assert_tree_close(par, seq, **TOL32)
    # both follow the float64 reference run on the same (rounded) values
    want_ys, want_h, _ = run_reference(cell, params, xs, carry)
    for ys, final in (par, seq):
        np.testing.assert_allclose(np.asarray(ys, np.float64), want_ys, **TOL32)
        np.testing.assert_allclose(np.asarray(final.hidden, np.float64), want_h, **TOL32)
    # gradients: the parameter gradients are sums over 4096 steps, so relative to their scale
    for g_, w_ in zip(jax.tree.leaves(par_grads), jax.tree.leaves(seq_grads)):
        scale = max(1.0, float(jnp.max(jnp.abs(w_))))
        np.testing.assert_allclose(np.asarray(g_) / scale, np.asarray(w_) / scale, rtol=0, atol=1e-5)


@pytest.mark.parametrize("steps", [1, 33])
def test_parallel_short_sequences(steps):  # the associative scan's odd/even edge cases
    cell, params, xs, carry = setup("min_lstm", F32, seed=4, T=steps)
    ys, final = jitted("parallel", cell)(params, xs, carry)
    want_ys, want_h, _ = run_reference(cell, params, xs, carry)
    np.testing.assert_allclose(np.asarray(ys, np.float64), want_ys, **TOL32)
    np.testing.assert_allclose(np.asarray(final.hidden, np.float64), want_h, **TOL32)


@pytest.mark.parametrize("reverse", [False, True])
def test_empty_sequence_keeps_the_carry(reverse):
    """The generic scan serves empty sequences (``impl="auto"`` falls back to it); the
    parallel form refuses them by name."""
    cell, params, xs, carry = setup("min_gru")
    for impl in ("scan", "auto"):
        ys, final = run(impl, cell, params, xs[:, :0], carry, reverse=reverse)
        assert ys.shape == (B, 0, H) and ys.dtype == F64
        np.testing.assert_array_equal(final.hidden, carry.hidden)
    with pytest.raises(ValueError, match=r"`impl='parallel'` cannot be used here: `xs` is empty"):
        run("parallel", cell, params, xs[:, :0], carry, reverse=reverse)


def paper_log_space_scan(cell, params, xs, h0):
    """The paper's App. B parallel mode: log h_t = a*_t + logcumsumexp_k(log b_k - a*_k),
    a*_t = sum_{k <= t} log a_k, with log h_0 in front (needs b_k > 0 and h_0 > 0)."""
    log_a, b = cell.config.linear_recurrence(cell.project(params, jnp.moveaxis(xs, 1, 0)))
    log_values = jnp.concatenate([jnp.log(h0)[None], jnp.log(b)], 0)  # [T + 1, B, H]
    a_star = jnp.concatenate([jnp.zeros_like(log_a[:1]), jnp.cumsum(log_a, 0)], 0)
    log_h = a_star + jax.lax.cumlogsumexp(log_values - a_star, axis=0)
    return jnp.moveaxis(jnp.exp(log_h[1:]), 0, 1)


def test_papers_global_log_form_loses_float32_precision():
    # Why the parallel form does not use the paper's formulation: a*_t reaches about -3000 at
    # T = 4096, where float32 resolves 2.4e-4, so h_t has relative errors of that order;
    # test_parallel_equals_scan_long_f32 holds ours to 1e-5 on the same kind of data.
    cell, params, xs, carry = setup("min_gru", F32, seed=3, T=LONG_T)
    h0 = jnp.abs(carry.hidden) + 0.1  # the paper's form needs h_0 > 0 (and g, so b > 0)
    want, _, _ = run_reference(cell, params, xs, MinimalState(h0))
    got = np.asarray(jax.jit(functools.partial(paper_log_space_scan, cell))(params, xs, h0), np.float64)
    assert np.max(np.abs(got - want) / (1.0 + np.abs(want))) > 1e-4


# ------------------------------------------------------- parallel == scan: lengths, reverse, resets

RB, RT = 3, 9
RESETS = np.zeros((RB, RT), bool)
RESETS[0, [3, 6]] = True  # three segments
RESETS[1, [0, 4, 5]] = True  # a reset at step 0 and two in a row
RESETS[2, [7]] = True  # past this sequence's length: no effect
CASES = {  # unroll's arguments (no options at all: test_parallel_equals_scan_long_f32)
    "lengths": dict(lengths=jnp.array([9, 6, 0])),
    "reverse": dict(reverse=True),
    "resets": dict(resets=jnp.asarray(RESETS)),
    "all": dict(lengths=jnp.array([9, 6, 5]), reverse=True, resets=jnp.asarray(RESETS)),
}


@functools.cache
def case_data(name, seed=5):
    """(cell, params, xs [3, 9, I], carry, reset_to): a random signed carry and reset carry."""
    cell, params, _, _ = setup(name)
    rng = np.random.default_rng(seed)
    return (cell, params, normal(rng, (RB, RT, I)), MinimalState(normal(rng, (RB, H))),
            MinimalState(normal(rng, (RB, H))))


@pytest.mark.parametrize("name", ["min_gru", "min_lstm"])
def test_parallel_equals_scan_values_and_gradients(name):
    """Outputs, final carry and the gradients of a loss of both w.r.t. params, inputs, the
    initial carry and the reset carry, float64, under lengths, reverse, resets and all three."""
    cell, params, xs, carry, reset_to = case_data(name)
    results = helpers.forms_and_scan(cell, CASES)(params, xs, carry, reset_to)
    for case, (want, got) in results.items():
        assert_tree_close(got, jax.tree.map(np.asarray, want), same_dtype=True, **TOL64)
        grads = want[1]
        if "resets" in CASES[case]:  # the reset carry matters (and gets gradient) exactly when a reset happens
            assert np.abs(np.asarray(grads[3].hidden)).max() > 1e-3, case
        else:
            np.testing.assert_array_equal(grads[3].hidden, 0.0)


def segments_reference(cell, params, xs, h0, h_reset, flags, n, reverse):
    """One sequence ``xs [T, I]`` of length ``n`` with reset flags ``[T]``, as the reference run
    segment by segment: the first segment read starts from ``h0``, every other one from
    ``h_reset`` (reversed: the segments are read from the last to the first). Forwards, a
    reset at step 0 replaces ``h0`` too; backwards it has nothing to cut."""
    starts = [0] + [t for t in range(1, n) if flags[t]]
    bounds = list(zip(starts, starts[1:] + [n]))
    ys, h = np.zeros((xs.shape[0], H)), np.asarray(h0)
    for k, (lo, hi) in enumerate(bounds[::-1] if reverse else bounds):
        restart = k > 0 or (flags[0] and not reverse and n > 0)
        ys[lo:hi], h = reference_alone(cell, params, xs[lo:hi], h_reset if restart else h, reverse)
    return ys, h


@pytest.mark.parametrize("impl, name", [("scan", "min_gru"), ("parallel", "min_gru"), ("parallel", "min_lstm")])
def test_resets_equal_running_segments_separately(name, impl):
    cell, params, xs, carry, reset_to = case_data(name)
    lengths = [9, 6, 5]
    for reverse in (False, True):
        ys, final = jitted(impl, cell, lengths=jnp.array(lengths), resets=jnp.asarray(RESETS), reverse=reverse,
                           reset_to=reset_to)(params, xs, carry)
        for b, n in enumerate(lengths):
            want_ys, want_h = segments_reference(cell, params, xs[b], carry.hidden[b], reset_to.hidden[b],
                                                 RESETS[b], n, reverse)
            np.testing.assert_allclose(ys[b], want_ys, **TOL64)  # zeros past the length too
            np.testing.assert_allclose(final.hidden[b], want_h, **TOL64)


# ------------------------------------------------------------------------------------ gradients

@pytest.mark.parametrize("impl, name, resets", [("scan", "min_lstm", False), ("parallel", "min_gru", True),
                                                ("parallel", "min_lstm_identity", False)])
def test_gradients_match_finite_differences(name, impl, resets):
    """W.r.t. params, inputs and carry (and the reset carry, with resets)."""
    cell, params, xs, carry = setup(name, T=3)
    kw = dict(lengths=jnp.array([3, 2], jnp.int32))
    if resets:
        kw["resets"] = jnp.array([[False, True, False], [True, False, False]])
    f = jax.jit(lambda p, x, c, r: run(impl, cell, p, x, c, reset_to=r if resets else None, **kw))
    check_grads(f, (params, xs, carry, MinimalState(carry.hidden[::-1])), order=1, modes=("rev",),
                atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------- lengths, reverse, layouts

def reference_alone(cell, params, xs, h0, reverse):
    """The reference on one unpadded sequence ``xs [T, I]``; reversed: run on the flipped
    sequence and flip the outputs back."""
    if len(xs) == 0:
        return np.zeros((0, H)), np.asarray(h0)
    xs = np.asarray(xs)[None, ::-1] if reverse else np.asarray(xs)[None]
    ys, h, _ = run_reference(cell, params, xs, MinimalState(np.asarray(h0)[None]))
    return (ys[0, ::-1] if reverse else ys[0]), h[0]


@pytest.mark.parametrize("name", ["min_gru", "min_lstm"])
@pytest.mark.parametrize("reverse", [False, True])
@both_impls
def test_lengths_padded_equals_unpadded(name, reverse, impl):
    cell, params, _, _ = setup(name)
    rng = np.random.default_rng(5)
    lengths = [6, 3, 0]
    xs = normal(rng, (3, 6, I))
    carry = MinimalState(hidden=normal(rng, (3, H)))
    ys, final = jitted(impl, cell, lengths=jnp.array(lengths, jnp.int32), reverse=reverse)(params, xs, carry)
    for k, n in enumerate(lengths):
        want_ys, want_h = reference_alone(cell, params, xs[k, :n], carry.hidden[k], reverse)
        np.testing.assert_allclose(ys[k, :n], want_ys, **TOL64)
        np.testing.assert_array_equal(ys[k, n:], 0.0)  # padded outputs are zero
        np.testing.assert_allclose(final.hidden[k], want_h, **TOL64)  # the last valid carry
    np.testing.assert_array_equal(final.hidden[2], carry.hidden[2])  # length 0 keeps the carry


@pytest.mark.parametrize("name", ["min_gru", "min_lstm"])
def test_reverse_without_lengths(name):
    cell, params, xs, carry = setup(name)
    ys, final = jitted("parallel", cell, reverse=True)(params, xs, carry)
    for k in range(B):
        want_ys, want_h = reference_alone(cell, params, xs[k], carry.hidden[k], True)
        np.testing.assert_allclose(ys[k], want_ys, **TOL64)
        np.testing.assert_allclose(final.hidden[k], want_h, **TOL64)


@pytest.mark.parametrize("batch_shape", [(), (2, 3)], ids=str)
def test_batch_shapes_and_time_major(batch_shape):
    cell, params, _, _ = setup("min_lstm")
    rng = np.random.default_rng(6)
    xs = normal(rng, batch_shape + (T, I))
    carry = MinimalState(hidden=normal(rng, batch_shape + (H,)))
    ys, final = jitted("parallel", cell)(params, xs, carry)
    assert ys.shape == batch_shape + (T, H) and final.hidden.shape == batch_shape + (H,)
    flat = lambda a: np.asarray(a).reshape((-1,) + a.shape[len(batch_shape):])  # batch -> [B']
    want_ys, want_h, _ = run_reference(cell, params, flat(xs), MinimalState(flat(carry.hidden)))
    np.testing.assert_allclose(flat(ys), want_ys, **TOL64)
    np.testing.assert_allclose(flat(final.hidden), want_h, **TOL64)
    if batch_shape:
        tm = jitted("parallel", cell, time_major=True)(params, jnp.moveaxis(xs, -2, 0), carry)
        np.testing.assert_array_equal(jnp.moveaxis(tm[0], 0, -2), ys)
        np.testing.assert_array_equal(tm[1].hidden, final.hidden)


def test_parallel_form_composes_in_layers():
    cell, params, xs, _ = setup("min_gru")
    lengths = jnp.array([5, 3], jnp.int32)
    bi_par = lj.bidirectional(cell, cell, impl="parallel")
    bi_seq = lj.bidirectional(cell, cell, impl="scan")
    bp = lj.BidirectionalParams(params, params)
    got = jax.jit(lambda p, x, n: bi_par.apply(p, x, lengths=n))(bp, xs, lengths)
    want = jax.jit(lambda p, x, n: bi_seq.apply(p, x, lengths=n))(bp, xs, lengths)
    assert bi_par.output_size == 2 * H
    assert_tree_close(got, jax.tree.map(np.asarray, want), **TOL64)


# ----------------------------------------------------------------------------------- dtypes

@pytest.mark.parametrize("impl, name, dtype", [  # bfloat16: ~3 significant digits
    ("parallel", "min_gru", BF16), ("parallel", "min_lstm", BF16), ("scan", "min_gru", BF16),
    ("scan", "min_lstm", BF16),
], ids=lambda v: v if isinstance(v, str) else jnp.dtype(v).name)
# float32 is checked the same way at T = 4096 (test_parallel_equals_scan_long_f32), float64 in
# test_parallel_equals_scan_values_and_gradients (outputs, carries, gradients)
def test_dtype_preserved(name, dtype, impl):
    cell, params, xs, carry = setup(name, dtype)

    def loss(p, x, c):
        ys, final = run(impl, cell, p, x, c, lengths=jnp.array([T, 3], jnp.int32))
        return jnp.sum(ys) + jnp.sum(final.hidden), (ys, final)

    (_, (ys, final)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(
        params, xs, carry)
    for leaf in jax.tree.leaves((ys, final, grads)):
        assert leaf.dtype == dtype
    assert cell.init(jax.random.key(0), I, dtype=dtype).w_x.dtype == dtype
    assert cell.init_carry(params, (B,)).hidden.dtype == dtype
    want_ys, _, _ = run_reference(cell, params, xs[:1], MinimalState(carry.hidden[:1]))
    np.testing.assert_allclose(np.asarray(ys[:1], np.float64), want_ys, rtol=0.05, atol=0.05)


# --------------------------------------------------------------------------- init and structure

def test_init_shapes_and_forget_bias():
    p = min_gru(H).init(jax.random.key(0), I, dtype=F64)
    assert isinstance(p, MinGRUParams) and p.w_x.shape == (I, 2 * H) and p.b.shape == (2 * H,)
    np.testing.assert_array_equal(p.b, 0.0)
    p = min_lstm(H, forget_bias=1.5).init(jax.random.key(0), I, dtype=F64)
    assert isinstance(p, MinLSTMParams) and p.w_x.shape == (I, 3 * H)
    np.testing.assert_array_equal(p.b, np.r_[np.full(H, 1.5), np.zeros(2 * H)])  # forget block only
    assert not np.allclose(p.w_x[:, :H], p.w_x[:, H:2 * H])  # independent draws per block
    assert min_lstm(H).init_carry(p, (2, 3)).hidden.shape == (2, 3, H)


def test_cells_configs_and_parallel_form():
    for make in CELLS.values():
        cell = make()
        assert isinstance(cell, lj.Cell) and cell.hidden_size == cell.output_size == H
        form = cell.forms["parallel"]
        assert set(cell.forms) == {"parallel"} and form.lengths and form.resets and not form.auto
        assert isinstance(lj.layer(cell, impl="parallel"), lj.Layer)
    assert "parallel" not in lj.lstm(H).forms and "parallel" not in lj.gru(H).forms
    assert repr(min_gru(8)) == "min_gru(8)"
    assert repr(min_lstm(8, normalize=False, forget_bias=1)) == "min_lstm(8, normalize=False, forget_bias=1.0)"
    assert min_gru(8) == min_gru(8) and hash(min_gru(8)) == hash(min_gru(8))
    assert min_lstm(8) == MinLSTMConfig(8).build() and min_lstm(8).config == MinLSTMConfig(8)
    assert min_gru(8) != min_gru(8, candidate_activation="identity") and min_gru(8) != min_lstm(8)
    assert min_lstm(8, forget_bias=1).config.forget_bias == 1.0  # normalised: equal configs, equal cells
    assert min_lstm(8).config.replace(normalize=False) == min_lstm(8, normalize=False).config

    _, params, xs, _ = setup("min_gru")
    traces, (ya, yb) = helpers.traces_with_static(lambda c, p, x: lj.unroll(c, p, x, impl="parallel")[0],
                                                  (min_gru(H), params, xs), (min_gru(H), params, xs))
    np.testing.assert_array_equal(ya, yb)
    assert len(traces) == 1  # an equal cell built anew is the same static argument: no retrace


# ------------------------------------------------------------------------------------- errors

CELL, PARAMS, XS, CARRY = setup("min_gru")
P = "parallel"


@pytest.mark.parametrize("thunk, error, match", [
    (lambda: run(P, lj.lstm(H), lj.lstm(H).init(jax.random.key(0), I, dtype=F64), XS), ValueError,
     r"`impl='parallel'`: lstm\(4\) has no form 'parallel'; its forms: 'native', 'onednn', 'fused', 'pallas' \(and 'auto' or 'scan'"),
    (lambda: lj.layer(lj.gru(H), impl=P), ValueError,
     r"`impl` must be 'auto', 'scan' or one of gru\(4\)'s forms \('onednn', 'fused'\), got 'parallel'"),
    (lambda: run(P, CELL, PARAMS, XS, return_gates=True), ValueError,
     r"`impl='parallel'` cannot be used here: `return_gates` needs the generic scan. Use impl='auto'"),
    (lambda: run(P, CELL, PARAMS, XS, remat_chunk=2), ValueError,
     r"`impl='parallel'` cannot be used here: `remat_chunk` needs the generic scan"),
    (lambda: run(P, lj.layer(CELL), PARAMS, XS), TypeError,
     r"`cell` is a Layer \(layer\(min_gru\(4\)\)\): call `layer.apply\(params, xs\)`"),
    (lambda: run(P, CELL, PARAMS, jnp.ones((I,), F64)), ValueError,
     r"`xs` must have shape \[..., T, I\] \(at least 2 axes\), got shape \(3,\)"),
    (lambda: run(P, CELL, PARAMS, jnp.ones((I,), F64), time_major=True), ValueError,
     r"`xs` must have shape \[T, ..., I\]"),
    (lambda: run(P, CELL, PARAMS, jnp.ones((B, T, 5), F64)), ValueError,
     r"`xs` must have shape .* with last axis 3 \(the cell's input size\), got shape \(2, 5, 5\)"),
    (lambda: run(P, CELL, PARAMS, XS.astype(F32)), TypeError,
     "`xs` has dtype float32 but the parameters are float64"),
    (lambda: run(P, CELL, PARAMS, XS, MinimalState(jnp.zeros((3, H), F64))), ValueError,
     r"`carry.hidden` must have shape \(2, 4\) for batch shape \(2,\)"),
    (lambda: run(P, CELL, PARAMS, XS, lj.GRUState(jnp.zeros((B, H), F64))), TypeError,
     "`carry` must be MinimalState for .*got GRUState"),
    (lambda: run(P, CELL, PARAMS, XS, MinimalState(jnp.zeros((B, H), F32))), TypeError,
     "`carry.hidden` must have dtype float64"),
    (lambda: run(P, CELL, PARAMS, XS, lengths=jnp.array([1.0, 2.0], F64)), TypeError,
     "`lengths` must be an integer array"),
    (lambda: run(P, CELL, PARAMS, XS, lengths=jnp.array([1], jnp.int32)), ValueError,
     r"`lengths` must have shape \(2,\)"),
    (lambda: run(P, CELL, PARAMS, XS, lengths=jnp.array([1, 6], jnp.int32)), ValueError,
     r"`lengths` must lie in \[0, 5\]"),
    (lambda: run(P, min_lstm(H), PARAMS, XS), TypeError,
     r"`params` must be MinLSTMParams for min_lstm\(4\), got MinGRUParams"),
    (lambda: run(P, min_gru(H + 1), PARAMS, XS), ValueError,
     r"`params.w_x` has shape \(3, 8\), but min_gru\(5\) needs \(3, 10\)"),
    (lambda: min_gru(0), ValueError, "`hidden_size` must be a positive int, got 0"),
    (lambda: min_lstm(H, candidate_activation="tanh"), ValueError,
     r"`candidate_activation` must be one of \('g', 'identity'\), got 'tanh'"),
    (lambda: min_lstm(H, normalize="yes"), TypeError, "`normalize` must be a bool, got 'yes'"),
    (lambda: min_lstm(H, forget_bias="1"), ValueError, "`forget_bias` must be a finite number, got '1'"),
    (lambda: min_gru(H, kernel_init=3), TypeError, "`kernel_init` must be an initialiser"),
    (lambda: min_gru(H).init(jax.random.key(0), I, dtype=jnp.int32), TypeError,
     "`dtype` must be a floating dtype"),
    (lambda: min_gru(H).init(jax.random.key(0), 0), ValueError, "`input_size` must be a positive int"),
], ids=lambda v: None)
def test_errors(thunk, error, match):
    with pytest.raises(error, match=match):
        thunk()


# ------------------------------------------------------------------------------------ training

# Task ("latest flagged value"): channel 0 carries values v_t ~ N(0, 1), channel 1 a flag
# that is on with probability 1/4, the rest noise; the target at step t is v at the latest
# flagged step <= t (0 before the first flag). It needs an input-dependent gate (write on a
# flag, hold otherwise): a fixed-decay average cannot do it. Predicting 0 scores
# E[y_t^2] = 1 - mean_t 0.75^(t+1) ≈ 0.81 at T = 16; the bound asks for 5% of that.
TR_B, TR_T, TR_I, TR_H, TR_STEPS, FLAG_P = 32, 16, 4, 8, 200, 0.25
TR_BASELINE = 1.0 - np.mean(0.75 ** np.arange(1, TR_T + 1))
TR_BOUND = 0.05 * TR_BASELINE


def latest_flagged(key, batch):
    kv, kf, kn = jax.random.split(key, 3)
    v = jax.random.normal(kv, (batch, TR_T), F32)
    flag = jax.random.bernoulli(kf, FLAG_P, (batch, TR_T))
    noise = jax.random.normal(kn, (batch, TR_T, TR_I - 2), F32)
    xs = jnp.concatenate([v[..., None], flag[..., None].astype(F32), noise], -1)  # [B, T, I]
    last = jax.lax.cummax(jnp.where(flag, jnp.arange(TR_T), -1), axis=1)  # latest flagged step
    ys = jnp.where(last >= 0, jnp.take_along_axis(v, jnp.maximum(last, 0), 1), jnp.zeros_like(v))
    return xs, ys[..., None]  # [B, T, 1]


@pytest.mark.parametrize("name", ["min_gru", "min_lstm"])
def test_learns_latest_flagged_value_with_the_parallel_form(name):
    model = readout(lj.layer(CELLS[name](), impl="parallel"), 1, at="every")
    params = model.init(jax.random.key(0), TR_I, dtype=F32)
    params, losses = helpers.train_with_optax(model, params, latest_flagged, steps=TR_STEPS, batch=TR_B, lr=3e-2)
    test_loss = float(jax.jit(helpers.mse_loss(model))(params, *latest_flagged(jax.random.key(2), 512)))
    assert float(losses[0]) > 0.5 * TR_BASELINE  # it starts out knowing nothing
    assert test_loss < TR_BOUND, f"{name}: held-out MSE {test_loss:.4f} not below {TR_BOUND:.4f}"
