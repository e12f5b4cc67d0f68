"""The Clockwork RNN against the float64 NumPy reference in ``tests/reference_clockwork.py``.

The reference applies the paper's rule module by module (no mask), so agreement from
parameters whose *unused* recurrent entries hold large random garbage proves both the
equations and that the structure is enforced. Proven here:

* ``unroll`` outputs and final carry (hidden and step counter) equal the reference for the
  default exponential periods, unsorted non-power periods, tied periods and other
  activations, from a random initial state and a random per-sequence phase (float64 to
  1e-10, float32 to 1e-5); ``cell.step`` == ``recur(project)`` == one reference step for
  batch shapes (), (3,), (2, 3); ``unroll`` == a Python loop of ``cell.step``;
* slow modules hold their state bit for bit between their ticks and change on them;
* the used part of ``w_h`` is the block-lower-triangular ``clockwork_mask``; the unused
  entries get exactly zero gradient, keep their initial values through Optax training, and
  do not affect the output;
* finite-difference gradients; ``lengths`` (padding == unpadded, zero outputs, last valid
  carry incl. the step counter) and ``reverse``; float32/bfloat16/float64 preserved;
* ``resets`` through ``lj.unroll`` equal running each segment separately (the step counter
  restarts with the rest of the carry);
* cells compare and hash by their config (periods sorted) and are ``jit`` static arguments;
* every user error's message; a small training run that needs memory.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import helpers  # tests/helpers.py
import lstm_jax as lj
import reference_clockwork as ref  # tests/reference_clockwork.py
from lstm_jax.cells.clockwork import (ClockworkConfig, ClockworkParams, ClockworkState, clockwork, clockwork_mask,
                                      exponential_periods)
from lstm_jax.models.readout import readout

F32, F64, BF16 = jnp.float32, jnp.float64, jnp.bfloat16
B, T, I = 3, 10, 3
TOL64 = dict(rtol=1e-10, atol=1e-10)
TOL32 = dict(rtol=1e-5, atol=1e-5)

CONFIGS = {  # name: (hidden_size, constructor kwargs)
    "exp4": (8, dict(num_modules=4)),  # periods 1, 2, 4, 8
    "unsorted": (6, dict(periods=[3, 1, 5])),  # sorted to (1, 3, 5); lcm 15
    "ties": (8, dict(periods=[2, 1, 2, 4])),  # sorted to (1, 2, 2, 4): tied modules unconnected
    "relu": (6, dict(periods=[1, 2, 3], activation="relu")),
    "one_module": (4, dict(periods=[1])),  # an Elman RNN
}
configs = pytest.mark.parametrize("name", list(CONFIGS))


def make(name):
    H, kw = CONFIGS[name]
    return clockwork(H, **kw)


def normal(rng, shape, scale=0.5):
    return jnp.asarray(scale * rng.standard_normal(shape), F64)


@functools.cache
def setup_f64(name, seed=0):
    """(cell, params, xs, carry): every weight random, *including* the unused entries of w_h
    (garbage of size 10), a random initial hidden state and a random step per sequence."""
    cell = make(name)
    rng = np.random.default_rng(seed)
    H = cell.hidden_size
    params = ClockworkParams(w_x=normal(rng, (I, H)), w_h=normal(rng, (H, H)), b=normal(rng, (H,)))
    unused = ~clockwork_mask(H, cell.config.periods)
    params = params._replace(w_h=jnp.where(unused, normal(rng, (H, H), 10.0), params.w_h))
    xs = normal(rng, (B, T, I), 1.0)
    carry = ClockworkState(hidden=normal(rng, (B, H)),
                           step=jnp.asarray(rng.integers(0, 7, (B, 1)), jnp.int32))
    return cell, params, xs, carry


def setup(name, dtype=F64):
    cell, params, xs, carry = setup_f64(name)
    cast = lambda a: a.astype(dtype)
    return cell, jax.tree.map(cast, params), cast(xs), carry._replace(hidden=cast(carry.hidden))


def init(model, input_size=I, dtype=F64):
    """``model.init`` compiled once (eager init would compile every small op on its own)."""
    return jax.jit(model.init, static_argnums=1, static_argnames="dtype")(jax.random.key(0), input_size,
                                                                        dtype=dtype)


def run_reference(cell, params, xs, carry=None):
    f64 = lambda a: np.asarray(a, np.float64)
    return ref.clockwork(f64(params.w_x), f64(params.w_h), f64(params.b), cell.config.periods,
                         f64(xs), None if carry is None else f64(carry.hidden),
                         None if carry is None else np.asarray(carry.step)[..., 0],
                         activation=cell.config.activation)


def lcm(cell):
    return int(np.lcm.reduce(np.array(cell.config.periods)))


# ------------------------------------------------------------------- agreement with reference

@configs
def test_unroll_matches_reference_f64(name):
    cell, params, xs, carry = setup(name)
    ys, final = jax.jit(lambda p, x, c: lj.unroll(cell, p, x, c))(params, xs, carry)
    want_ys, want_h, want_steps = run_reference(cell, params, xs, carry)
    assert ys.shape == (B, T, cell.hidden_size) and final.step.dtype == jnp.int32
    np.testing.assert_allclose(ys, want_ys, **TOL64)
    np.testing.assert_allclose(final.hidden, want_h, **TOL64)
    np.testing.assert_array_equal(final.step[:, 0], want_steps % lcm(cell))


@configs
def test_unroll_matches_reference_f32(name):
    cell, params, xs, _ = setup(name, F32)
    ys, final = jax.jit(lambda p, x: lj.unroll(cell, p, x))(params, xs)
    assert ys.dtype == F32
    want_ys, want_h, _ = run_reference(cell, params, xs)  # from a fresh carry: step 0
    np.testing.assert_allclose(np.asarray(ys, np.float64), want_ys, **TOL32)
    np.testing.assert_allclose(np.asarray(final.hidden, np.float64), want_h, **TOL32)


@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 3)], ids=str)
def test_step_is_recur_of_project_and_one_reference_step(batch_shape):
    cell, params, _, _ = setup("ties")
    rng = np.random.default_rng(1)
    H = cell.hidden_size
    x = normal(rng, batch_shape + (I,))
    carry = ClockworkState(hidden=normal(rng, batch_shape + (H,)),
                           step=jnp.asarray(rng.integers(0, 5, batch_shape + (1,)), jnp.int32))
    new, y = cell.step(params, carry, x)
    new2, y2 = cell.recur(params, carry, cell.project(params, x))
    assert y.shape == batch_shape + (H,) and new.step.shape == batch_shape + (1,)
    helpers.assert_trees_close(new, new2, rtol=0, atol=0)
    flat = lambda a: np.asarray(a).reshape(-1, np.shape(a)[-1])
    want_ys, want_h, want_steps = run_reference(cell, params, flat(x)[:, None],
                                                ClockworkState(flat(carry.hidden), flat(carry.step)))
    np.testing.assert_allclose(flat(y), want_ys[:, 0], **TOL64)
    np.testing.assert_allclose(flat(new.hidden), want_h, **TOL64)
    np.testing.assert_array_equal(flat(new.step)[:, 0], want_steps % lcm(cell))


def test_unroll_equals_python_loop_of_step():
    cell, params, xs, carry = setup("exp4")

    @jax.jit
    def both(params, xs, carry):
        c, loop_ys = carry, []
        for t in range(T):  # a Python loop of cell.step (unrolled by tracing)
            c, y = cell.step(params, c, xs[:, t])
            loop_ys.append(y)
        return lj.unroll(cell, params, xs, carry), (jnp.stack(loop_ys, axis=1), c)

    got, want = both(params, xs, carry)
    helpers.assert_trees_close(got, want, rtol=1e-14, atol=1e-14)


def test_gates_report_the_schedule():
    cell, params, xs, carry = setup("exp4")
    ys, _, aux = lj.unroll(cell, params, xs, carry, return_gates=True)
    assert set(aux.gates) == {"candidate", "active", "hidden"}
    periods = np.repeat(cell.config.periods, 2)  # k = 2 units per module
    t = np.asarray(carry.step)[:, :1] + np.arange(T)[None, :]  # [B, T]
    want = (t[..., None] % periods == 0).astype(np.float64)  # [B, T, H]
    np.testing.assert_array_equal(aux.gates["active"], want)
    np.testing.assert_array_equal(aux.gates["hidden"], ys)
    # where a module fired, its output is the candidate
    np.testing.assert_array_equal(np.where(want == 1, aux.gates["candidate"], ys), ys)


# ------------------------------------------------------------------ the clockwork structure

def test_one_module_of_period_one_is_an_elman_rnn():
    cell, params, xs, _ = setup("one_module")
    run = jax.jit(lambda p, x: (lj.unroll(cell, p, x)[0], lj.unroll(lj.rnn(4), lj.RNNParams(*p), x)[0]))
    got, want = run(params, xs)
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-14)  # equal up to XLA's fusion order


def test_slow_modules_hold_their_state_between_ticks():
    cell = clockwork(8, num_modules=4)  # periods 1, 2, 4, 8; k = 2
    params = init(cell)
    xs = normal(np.random.default_rng(1), (B, 12, I), 1.0)
    _, _, aux = jax.jit(lambda p, x: lj.unroll(cell, p, x, return_carries=True))(params, xs)
    h = np.asarray(aux.carries.hidden)  # [B, 12, H]
    h_prev = np.concatenate([np.zeros((B, 1, 8)), h[:, :-1]], axis=1)
    for i, period in enumerate((1, 2, 4, 8)):
        block = slice(2 * i, 2 * i + 2)
        for t in range(12):
            if t % period:
                np.testing.assert_array_equal(h[:, t, block], h_prev[:, t, block])  # bit for bit
            else:
                assert np.all(np.abs(h[:, t, block] - h_prev[:, t, block]) > 1e-6), (i, t)
    np.testing.assert_array_equal(aux.carries.step[0, :, 0], (np.arange(12) + 1) % 8)


def test_mask_is_block_lower_triangular_and_init_respects_it():
    # periods (1, 2, 4), k = 2: source (row) module j reaches target (column) module i iff j >= i
    want = np.kron(np.tril(np.ones((3, 3), bool)), np.ones((2, 2), bool))
    np.testing.assert_array_equal(clockwork_mask(6, (1, 2, 4)), want)
    # ties: modules 1 and 2 share period 2 and are not connected to each other
    tied = clockwork_mask(4, (1, 2, 2, 4))
    np.testing.assert_array_equal(tied, [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1]])
    cell = clockwork(6, periods=[4, 1, 2])
    assert cell.config.periods == (1, 2, 4)  # sorted: fastest first
    assert exponential_periods(4) == (1, 2, 4, 8)
    params = init(cell)
    assert params.w_h.shape == (6, 6) and params.w_x.shape == (I, 6) and params.b.shape == (6,)
    np.testing.assert_array_equal(np.asarray(params.w_h) != 0, want)  # zeros exactly where unused
    carry = cell.init_carry(params, (2, 5))
    assert carry.hidden.shape == (2, 5, 6) and carry.step.shape == (2, 5, 1)
    assert carry.step.dtype == jnp.int32 and not np.any(carry.step)


def test_unused_recurrent_weights_get_no_gradient_and_never_train():
    cell, params, xs, _ = setup("exp4")  # the unused entries of w_h hold N(0, 10^2) garbage
    unused = ~clockwork_mask(8, cell.config.periods)
    zeroed = params._replace(w_h=jnp.where(unused, 0.0, params.w_h))
    targets = normal(np.random.default_rng(7), (B, T, 8), 1.0)

    def loss_fn(p):
        return jnp.mean((lj.unroll(cell, p, xs)[0] - targets) ** 2)

    got, want, grads = jax.jit(lambda: (lj.unroll(cell, params, xs), lj.unroll(cell, zeroed, xs),
                                        jax.grad(loss_fn)(params)))()
    # the output does not depend on them at all
    helpers.assert_trees_close(got, want, rtol=0, atol=0)
    np.testing.assert_array_equal(np.asarray(grads.w_h)[unused], 0.0)
    assert np.all(np.asarray(grads.w_h)[~unused] != 0.0)

    opt = optax.adam(1e-2)

    def update(carry, _):
        p, s = carry
        loss, g = jax.value_and_grad(loss_fn)(p)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), loss

    with jax.numpy_dtype_promotion("standard"):  # optax's bias correction mixes int and float
        (trained, _), losses = jax.jit(lambda c: jax.lax.scan(update, c, None, length=20))(
            (params, opt.init(params)))
    assert float(losses[-1]) < float(losses[0])
    np.testing.assert_array_equal(np.asarray(trained.w_h)[unused], np.asarray(params.w_h)[unused])
    assert np.all(np.asarray(trained.w_h)[~unused] != np.asarray(params.w_h)[~unused])


# ------------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("name", ["exp4", "ties"])
def test_gradients_match_finite_differences(name):
    cell, params, xs, carry = setup(name)
    f = jax.jit(lambda p, x, h: lj.unroll(cell, p, x, ClockworkState(h, carry.step[:2]))[0])
    check_grads(f, (params, xs[:2, :5], carry.hidden[:2]), order=1, modes=("rev",), atol=1e-6, rtol=1e-6,
                eps=1e-5)  # central differences: error ~ eps^2 (5e-6 at the default 1e-4)


# --------------------------------------------------------------------------- lengths, reverse

def test_lengths_padding_equals_unpadded():
    """Each padded sequence gives what the reference gives on it alone, unpadded (read
    backwards within its length when ``reverse``); outputs past a length are zero; the carry,
    step counter included, is the last valid one."""
    cell, params, xs, carry = setup("unsorted")
    lengths = jnp.array([T, 0, 4], jnp.int32)
    valid = np.arange(T)[None, :, None] < np.asarray(lengths)[:, None, None]
    garbage = jnp.where(jnp.asarray(valid), xs, 1e3)
    run = jax.jit(lambda p, x, c: [lj.unroll(cell, p, x, c, lengths=lengths, reverse=r) for r in (False, True)])
    for reverse, (ys, final) in zip((False, True), run(params, garbage, carry)):
        for b, n in enumerate(np.asarray(lengths)):
            seq = np.asarray(xs)[b:b + 1, :n]
            want_ys, want_h, want_steps = run_reference(cell, params, seq[:, ::-1] if reverse else seq,
                                                        jax.tree.map(lambda a: a[b:b + 1], carry))
            np.testing.assert_allclose(ys[b, :n], (want_ys[:, ::-1] if reverse else want_ys)[0], **TOL64)
            np.testing.assert_array_equal(ys[b, n:], 0.0)
            np.testing.assert_allclose(final.hidden[b:b + 1], want_h, **TOL64)
            np.testing.assert_array_equal(final.step[b, 0], want_steps[0] % 15)


def test_reverse_counts_from_the_first_step_read():
    cell, params, xs, carry = setup("exp4")
    ys, final = lj.unroll(cell, params, xs, carry, reverse=True)
    want_ys, want_h, _ = run_reference(cell, params, xs[:, ::-1], carry)
    np.testing.assert_allclose(ys, want_ys[:, ::-1], **TOL64)
    np.testing.assert_allclose(final.hidden, want_h, **TOL64)


def test_resets_equal_running_segments_separately():
    """A reset restores the initial carry, step counter included: each new segment starts at
    t = 0 with every module firing. Forwards the first segment starts from ``carry``; read
    backwards the last one does, and the final carry is the first segment's."""
    cell, params, xs, carry = setup("unsorted")  # periods (1, 3, 5), lcm 15
    resets = np.zeros((B, T), bool)
    resets[0, 4] = resets[1, [0, 3, 8]] = True  # row 2: no reset
    run = jax.jit(lambda p, x, c, r: [lj.unroll(cell, p, x, c, resets=r, reverse=rev) for rev in (False, True)])
    for reverse, (ys, final) in zip((False, True), run(params, xs, carry, jnp.asarray(resets))):
        for b in range(B):
            parts = helpers.segments(resets[b])
            for n, (start, stop) in enumerate(parts):
                seq = np.asarray(xs)[b:b + 1, start:stop]
                # a reset at step 0 discards ``carry`` forwards; backwards it flags no step
                first = n == len(parts) - 1 if reverse else n == 0 and not resets[b, 0]
                c0 = jax.tree.map(lambda a: a[b:b + 1], carry) if first else None
                want_ys, want_h, want_steps = run_reference(cell, params, seq[:, ::-1] if reverse else seq, c0)
                np.testing.assert_allclose(ys[b, start:stop], (want_ys[:, ::-1] if reverse else want_ys)[0],
                                           **TOL64)
                if n == (0 if reverse else len(parts) - 1):
                    np.testing.assert_allclose(final.hidden[b:b + 1], want_h, **TOL64)
                    np.testing.assert_array_equal(final.step[b, 0], want_steps[0] % 15)


def test_cells_compare_by_config_and_are_static_arguments():
    a, b = clockwork(8, num_modules=4), clockwork(8, periods=[8, 2, 4, 1])
    assert isinstance(a.config, ClockworkConfig) and a.config.periods == (1, 2, 4, 8)
    assert a == b and hash(a) == hash(b) and repr(a) == "clockwork(8, periods=(1, 2, 4, 8))"
    assert ClockworkConfig(8, [4, 1]).build() == clockwork(8, periods=(1, 4))
    for other in (clockwork(8, num_modules=4, activation="relu"), clockwork(8, periods=[1, 2, 4, 16]),
                  clockwork(16, num_modules=4), lj.rnn(8)):
        assert a != other
    _, params, xs, _ = setup("exp4")
    traces, (ya, yb) = helpers.traces_with_static(lambda c, p, x: lj.unroll(c, p, x)[0], (a, params, xs),
                                                  (b, params, xs))
    np.testing.assert_array_equal(ya, yb)
    assert traces == [a]  # the equal cell hit the cache


# ------------------------------------------------------------------------------------ dtypes

@pytest.mark.parametrize("dtype", [F32, BF16, F64], ids=lambda d: jnp.dtype(d).name)
def test_dtype_preserved(dtype):
    cell, params, xs, carry = setup("exp4", dtype)

    def loss(p, x):
        ys, c = lj.unroll(cell, p, x, carry)
        return jnp.sum(ys) + jnp.sum(c.hidden), (ys, c)

    (_, (ys, c)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, xs)
    for leaf in jax.tree.leaves((ys, c.hidden, grads)):
        assert leaf.dtype == dtype
    assert c.step.dtype == jnp.int32
    want_ys, _, _ = run_reference(cell, params, xs, carry)
    tol = {F64: TOL64, F32: TOL32, BF16: dict(rtol=0.05, atol=0.05)}[dtype]
    np.testing.assert_allclose(np.asarray(ys, np.float64), want_ys, **tol)


# ------------------------------------------------------------------------------------ errors

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(), ValueError, r"Pass `periods` \(one clock period per module\) or `num_modules`"),
    (dict(num_modules=3), ValueError, r"`hidden_size` \(8\) must be divisible by the number of modules \(3\)"),
    (dict(periods=[1, 2, 4]), ValueError, r"`hidden_size` \(8\) must be divisible"),
    (dict(num_modules=0), ValueError, r"`num_modules` must be a positive int, got 0"),
    (dict(periods=[1, 0]), ValueError, r"`periods\[1\]` must be a positive int, got 0"),
    (dict(periods=[1, 2.0]), ValueError, r"`periods\[1\]` must be a positive int, got 2.0"),
    (dict(periods=[True, 2]), ValueError, r"`periods\[0\]` must be a positive int, got True"),
    (dict(periods=[]), ValueError, r"`periods` must be a non-empty list of positive ints, got \[\]"),
    (dict(periods=4), ValueError, r"`periods` must be a non-empty list of positive ints, got 4"),
    (dict(periods=[1, 2], num_modules=4), ValueError, r"`num_modules` \(4\) must equal len\(`periods`\) \(2\)"),
    (dict(num_modules=2, activation="gelu"), ValueError, r"`activation` must be one of"),
])
def test_constructor_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        clockwork(8, **kwargs)


def test_usage_errors():
    with pytest.raises(ValueError, match=r"`hidden_size` must be a positive int, got 0"):
        clockwork(0, num_modules=1)
    with pytest.raises(TypeError, match=r"`kernel_init` must be an initialiser `init\(key, shape, dtype\)` or None"):
        clockwork(4, num_modules=2, kernel_init=3)
    cell = clockwork(4, num_modules=2)
    shapes = lambda model: jax.eval_shape(lambda: model.init(jax.random.key(0), I, dtype=F64))  # all checks read
    params = shapes(cell)
    xs = jnp.ones((1, 2, I), F64)
    with pytest.raises(TypeError, match=r"`params` must be ClockworkParams for clockwork\(4, periods=\(1, 2\)\), "
                                        r"got RNNParams"):
        lj.unroll(cell, shapes(lj.rnn(4)), xs)
    with pytest.raises(ValueError, match=r"`params.w_x` has shape \(3, 6\), but clockwork\(4, periods=\(1, 2\)\) "
                                         r"needs \(3, 4\)"):
        lj.unroll(cell, shapes(clockwork(6, num_modules=2)), xs)
    with pytest.raises(TypeError, match=r"`xs` has dtype float32 but the parameters are float64"):
        lj.unroll(cell, params, jnp.ones((1, 2, I), F32))
    bad_step = ClockworkState(hidden=jnp.zeros((1, 4), F64), step=jnp.zeros((1,), jnp.int32))
    with pytest.raises(ValueError, match=r"`carry.step` must have shape \(1, 1\) for batch shape \(1,\)"):
        lj.unroll(cell, params, xs, bad_step)
    float_step = ClockworkState(hidden=jnp.zeros((1, 4), F64), step=jnp.zeros((1, 1), F64))
    with pytest.raises(TypeError, match=r"`carry.step` must have dtype int32"):
        lj.unroll(cell, params, xs, float_step)
    with pytest.raises(TypeError, match=r"`dtype` must be a floating dtype"):
        cell.init(jax.random.key(0), I, dtype=jnp.int32)


# ---------------------------------------------------------------------------------- training

def test_learns_delayed_recall():
    """Target at step t is x[t - 2, 0]: needs memory; no-memory baseline MSE ≈ (T-2)/T."""
    Bt, Tt, It, LAG, STEPS = 32, 12, 8, 2, 150
    baseline = (Tt - LAG) / Tt
    model = readout(clockwork(16, periods=[1, 2, 4, 8]), 1, at="every")
    params = init(model, It, F32)
    data = functools.partial(helpers.delayed_recall, T=Tt, I=It, lag=LAG, dtype=F32)
    params, losses = helpers.train_with_optax(model, params, data, steps=STEPS, batch=Bt)
    test_loss = float(helpers.mse_loss(model)(params, *data(jax.random.key(2), 256)))
    assert float(losses[0]) > 0.5 * baseline
    assert test_loss < 0.1 * baseline, f"held-out MSE {test_loss:.3f} not below {0.1 * baseline:.3f}"
