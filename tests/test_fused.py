"""The fused LSTM/GRU forms (``lstm_jax.kernels.fused_rnn``, ``unroll(impl="fused" | "pallas")``).

Its backward pass is written by hand, so each test holds it against something independent:
JAX's own differentiation of the generic scan (``impl="scan"``, itself checked against a
Python loop, NumPy references and PyTorch elsewhere) on outputs, final carries and gradients
with respect to the parameters, the inputs and the initial carry, in float64 to ~1e-12, under
every option ``unroll`` offers (lengths, reverse, resets, layouts, unroll factors); and finite
differences on the layer functions directly.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import helpers  # tests/helpers.py
import lstm_jax as lj
from lstm_jax.kernels import fused_rnn as fused

F64, F32, BF16 = jnp.float64, jnp.float32, jnp.bfloat16
I, T, H = 3, 6, 5
CELLS = {"lstm": lambda: lj.lstm(H, forget_bias=0.5), "gru": lambda: lj.gru(H)}


def problem(name, dtype=F64, batch=(4,), seed=0):
    cell = CELLS[name]()
    rng = np.random.default_rng(seed)
    params = helpers.perturb(cell.init(jax.random.key(seed), I, dtype=F64), rng)
    carry = helpers.perturb(cell.init_carry(params, batch), rng)
    xs = helpers.normal(rng, batch + (T, I))
    cast = lambda tree: jax.tree.map(lambda a: a.astype(dtype), tree)
    return cell, cast(params), cast(xs), cast(carry)


def value_and_grads(cell, params, xs, carry, impl, **kw):
    """Outputs, final carry and the gradient of a scalar mixing both, w.r.t. params, xs, carry."""
    weights = jax.random.normal(jax.random.key(7), jnp.shape(xs)[:-1] + (cell.output_size,), F64)

    def loss(p, x, c):
        ys, final = lj.unroll(cell, p, x, c, impl=impl, **kw)
        total = jnp.sum(weights.astype(ys.dtype) * jnp.sin(ys))
        return total + sum(jnp.sum(jnp.cos(leaf)) for leaf in jax.tree.leaves(final)), (ys, final)

    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(params, xs, carry)
    return out, grads


RESETS = np.zeros((4, T), bool)
RESETS[0, 3] = RESETS[1, [0, 2]] = RESETS[3, [1, 4, 5]] = True  # at step 0, past a length, twice in a row
OPTIONS = [dict(), dict(reverse=True), dict(lengths=[6, 2, 0, 5]), dict(lengths=[6, 2, 0, 5], reverse=True),
           dict(time_major=True), dict(unroll=4), dict(unroll=True), dict(resets=RESETS),
           dict(resets=RESETS, reverse=True), dict(resets=RESETS, lengths=[6, 2, 0, 5], reverse=True)]
OPTION_IDS = ["plain", "reverse", "lengths", "lengths_reverse", "time_major", "unroll4", "unroll_all", "resets",
              "resets_reverse", "resets_lengths_reverse"]


@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
@pytest.mark.parametrize("name", sorted(CELLS))
def test_fused_equals_scan_with_gradients(name, options):
    cell, params, xs, carry = problem(name)
    if options.get("time_major"):
        xs = jnp.swapaxes(xs, 0, 1)
    if "resets" in options:
        options = dict(options, resets=jnp.asarray(options["resets"]))
    got = value_and_grads(cell, params, xs, carry, "fused", **options)
    want = value_and_grads(cell, params, xs, carry, "scan", **options)
    helpers.assert_trees_close(got, want, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("hoist", [True, False], ids=["hoisted", "in_loop"])
@pytest.mark.parametrize("name", sorted(CELLS))
def test_projection_inside_or_outside_the_scan_is_the_same_function(name, hoist, monkeypatch):
    """The CPU runs the input projection inside the scan, accelerators before it: both exact."""
    monkeypatch.setattr(fused, "hoist_projection", lambda: hoist)
    cell, params, xs, carry = problem(name)
    got = value_and_grads(cell, params, xs, carry, "fused", lengths=[6, 3, 1, 0])
    want = value_and_grads(cell, params, xs, carry, "scan", lengths=[6, 3, 1, 0])
    helpers.assert_trees_close(got, want, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("batch", [(), (2, 3)], ids=["unbatched", "two_batch_axes"])
@pytest.mark.parametrize("name", sorted(CELLS))
def test_any_batch_shape(name, batch):
    cell, params, xs, carry = problem(name, batch=batch)
    got = value_and_grads(cell, params, xs, carry, "fused")
    want = value_and_grads(cell, params, xs, carry, "scan")
    helpers.assert_trees_close(got, want, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("dtype, tol", [(F32, 2e-5), (BF16, 6e-2)], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name", sorted(CELLS))
def test_low_precision_matches_and_keeps_its_dtype(name, dtype, tol):
    """Same dtypes out as in; values within rounding of the generic path (bf16: gate math runs
    in float32 on the fused path, so it is, if anything, the more accurate of the two)."""
    cell, params, xs, carry = problem(name, dtype)
    got = value_and_grads(cell, params, xs, carry, "fused")
    want = value_and_grads(cell, params, xs, carry, "scan")
    assert [a.dtype for a in jax.tree.leaves(got)] == [a.dtype for a in jax.tree.leaves(want)]
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        scale = max(1.0, float(jnp.max(jnp.abs(b.astype(F32)))))
        assert float(jnp.max(jnp.abs(a.astype(F32) - b.astype(F32)))) <= tol * scale


def test_layer_gradients_match_finite_differences():
    """The hand-written VJPs against central differences (float64), with a length mask and
    resets (the reset carry gets its gradient too)."""
    rng = np.random.default_rng(3)
    B = 3
    valid = jnp.arange(T)[:, None] < jnp.array([6, 4, 1])[None, :]  # [T, B]
    flags = jnp.asarray(rng.random((T, B)) < 0.3) & valid
    w_x, w_h, b = (helpers.normal(rng, s, F64) * 0.5 for s in ((I, 4 * H), (H, 4 * H), (4 * H,)))
    xs, h0, c0 = helpers.normal(rng, (T, B, I)), helpers.normal(rng, (B, H)), helpers.normal(rng, (B, H))
    hr, cr = helpers.normal(rng, (B, H)), helpers.normal(rng, (B, H))
    for hoist in (True, False):
        lstm = lambda w_x, w_h, b, xs, h0, c0, hr, cr, hoist=hoist: fused.lstm_layer(
            w_x, w_h, b, xs, h0, c0, valid, flags, hr, cr, 1, hoist)
        check_grads(lstm, (w_x, w_h, b, xs, h0, c0, hr, cr), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)
    g_w = [helpers.normal(rng, s, F64) * 0.5 for s in ((I, 3 * H), (H, 3 * H), (3 * H,), (H,))]
    gru = lambda w_x, w_h, b, b_hn, xs, h0, hr: fused.gru_layer(w_x, w_h, b, b_hn, xs, h0, valid, flags, hr, 2,
                                                                False)
    check_grads(gru, (*g_w, xs, h0, hr), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_jit_and_vmap(name):
    cell, params, xs, carry = problem(name)
    run = lambda p, x, c: lj.unroll(cell, p, x, c, impl="fused")
    eager = run(params, xs, carry)
    helpers.assert_trees_close(jax.jit(run)(params, xs, carry), eager, rtol=1e-12, atol=1e-12)
    per_example = jax.vmap(run, in_axes=(None, 0, 0))(params, xs, carry)
    helpers.assert_trees_close(per_example, eager, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------- selection


def has_custom_vjp(fn, *args) -> bool:
    """Whether tracing ``fn`` goes through one of the fused layers' custom VJPs."""
    return re.search(r"name=(lstm|gru)_layer", str(jax.make_jaxpr(fn)(*args))) is not None


def test_auto_takes_the_fused_path_for_the_plain_cells_only():
    for make, fast in [(lambda: lj.lstm(H), True), (lambda: lj.gru(H), True),
                       (lambda: lj.lstm(H, peephole=True), False), (lambda: lj.lstm(H, coupled=True), False),
                       (lambda: lj.lstm(H, proj_size=2), False), (lambda: lj.lstm(H, layer_norm=True), False),
                       (lambda: lj.lstm(H, derivative_clip=1.0), False),
                       (lambda: lj.lstm(H, output_activation="identity"), False),
                       (lambda: lj.gru(H, reset_after=False), False), (lambda: lj.rnn(H), False)]:
        cell = make()
        params = cell.init(jax.random.key(0), I)
        xs = jnp.ones((2, T, I), F32)
        assert has_custom_vjp(lambda p, x: lj.unroll(cell, p, x)[0], params, xs) == fast, cell
        assert not has_custom_vjp(lambda p, x: lj.unroll(cell, p, x, impl="scan")[0], params, xs)


def test_auto_falls_back_when_the_call_needs_the_scan():
    cell = lj.lstm(H)
    params, xs = cell.init(jax.random.key(0), I), jnp.ones((2, T, I), F32)
    for kw in (dict(return_gates=True), dict(return_carries=True), dict(remat_chunk=2)):
        assert not has_custom_vjp(lambda p, x, kw=kw: lj.unroll(cell, p, x, **kw)[0], params, xs), kw
    ys, carry = lj.unroll(cell, params, jnp.ones((2, 0, I), F32))  # no steps: the initial carry
    assert ys.shape == (2, 0, H) and float(jnp.max(jnp.abs(carry.hidden))) == 0.0


def test_on_the_cpu_the_projection_runs_inside_the_scan():
    if jax.default_backend() != "cpu":
        pytest.skip("the in-loop projection is the CPU choice; accelerators hoist it")
    assert not fused.hoist_projection()
    cell = lj.lstm(H)
    params, xs = cell.init(jax.random.key(0), I), jnp.ones((2, T, I), F32)
    text = str(jax.make_jaxpr(lambda p, x: lj.unroll(cell, p, x, impl="fused")[0])(params, xs))
    assert "custom_vjp_call" in text
    assert text.count("dot_general") == 2, text  # x_t W_x and h W_h, both in the scan body


@pytest.mark.parametrize("impl", ["fused", "pallas"])
def test_impl_errors_name_the_reason(impl):
    cell = lj.lstm(H, peephole=True)
    params, xs = cell.init(jax.random.key(0), I), jnp.ones((2, T, I), F32)
    with pytest.raises(ValueError, match=re.escape(
            f"`impl={impl!r}`: lstm(5, peephole=True) has no form {impl!r}; its forms: none")):
        lj.unroll(cell, params, xs, impl=impl)
    plain = lj.lstm(H)
    with pytest.raises(ValueError, match="`return_gates` needs the generic scan"):
        lj.unroll(plain, plain.init(jax.random.key(0), I), xs, impl=impl, return_gates=True)
    with pytest.raises(ValueError, match=re.escape("lstm(5) has no form 'cudnn'; its forms: 'native', 'onednn', 'fused', 'pallas'")):
        lj.unroll(plain, plain.init(jax.random.key(0), I), xs, impl="cudnn")


def test_pallas_kernel_through_unroll_equals_the_scan():
    """The opt-in Pallas recurrence (interpret mode here) inside the fused custom VJP."""
    cell, params, xs, carry = problem("lstm", F32)
    got = value_and_grads(cell, params, xs, carry, "pallas", reverse=True)
    want = value_and_grads(cell, params, xs, carry, "scan", reverse=True)
    helpers.assert_trees_close(got, want, rtol=1e-5, atol=2e-5)
    with pytest.raises(ValueError, match="`impl='pallas'` cannot be used here: this form takes no `lengths`"):
        lj.unroll(cell, params, xs, carry, impl="pallas", lengths=[1, 2, 3, 4])
    with pytest.raises(ValueError, match="this form takes no `resets`"):
        lj.unroll(cell, params, xs, carry, impl="pallas", resets=jnp.asarray(RESETS))
    gru = lj.gru(H)
    with pytest.raises(ValueError, match=re.escape("gru(5) has no form 'pallas'; its forms: 'onednn', 'fused'")):
        lj.unroll(gru, gru.init(jax.random.key(0), I), xs, impl="pallas")
