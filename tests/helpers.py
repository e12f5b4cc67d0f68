"""Shared test helpers (tests/ is on sys.path under pytest, like reference.py)."""

import functools
import pathlib
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lstm_jax as lj
from lstm_jax.train.cli import load_script


def assert_trees_close(actual, expected, *, rtol=1e-12, atol=1e-12, same_dtype=False):
    """Same pytree structure and shapes (and dtypes if asked), values close in float64."""
    chex.assert_trees_all_equal_structs(actual, expected)
    if same_dtype:
        chex.assert_trees_all_equal_dtypes(actual, expected)
    as_f64 = lambda t: jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), t)
    chex.assert_trees_all_close(as_f64(actual), as_f64(expected), rtol=rtol, atol=atol)


def normal(rng, shape, dtype=jnp.float64):
    """N(0, 1) drawn by NumPy (no per-shape XLA compiles for random numbers)."""
    return jnp.asarray(rng.standard_normal(shape), dtype)


def perturb(tree, rng, scale=0.5):
    """Adds scale * N(0, 1) to every leaf, so zero-initialised peepholes, biases etc. matter."""
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a) + scale * rng.standard_normal(a.shape), a.dtype), tree)


# ------------------------------------------------------------------------------ the C++ forms

def float32_problem(cell, batch, I, T, seed=0):
    """``(params, xs [*batch, T, I], carry)`` in float32 for a C++ form's test: drawn in float64,
    perturbed (so zero-initialised biases matter), then cast."""
    rng = np.random.default_rng(seed)
    params = perturb(cell.init(jax.random.key(seed), I, dtype=jnp.float64), rng)
    carry = perturb(cell.init_carry(params, batch), rng)
    xs = normal(rng, tuple(batch) + (T, I))
    cast = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), tree)
    return cast(params), cast(xs), cast(carry)


def value_and_grads(cell, params, xs, carry, impl, **kw):
    """Outputs, final carry and the gradient of a scalar mixing both, w.r.t. params, xs, carry
    (``lj.unroll`` with ``impl`` and the options ``kw``, jitted)."""
    weights = jax.random.normal(jax.random.key(7), jnp.shape(xs)[:-1] + (cell.output_size,), jnp.float32)

    def loss(p, x, c):
        ys, final = lj.unroll(cell, p, x, c, impl=impl, **kw)
        total = jnp.sum(weights * jnp.sin(ys))
        return total + sum(jnp.sum(jnp.cos(leaf)) for leaf in jax.tree.leaves(final)), (ys, final)

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(params, xs, carry)
    return out, grads


def assert_auto_falls_back_to_fused(cell, params, xs, impl, target, refused=("lengths", "resets")):
    """A C++ form ``impl`` (FFI targets named ``target...``) refuses what it cannot serve:
    ``impl="auto"`` then takes the fused form (for the options in ``refused``: ``lengths``,
    ``resets``) or the scan (float64), and asking for ``impl`` by name says why. ``xs`` is
    ``[B, T, I]`` float32, ``T >= 4``."""
    B, T = xs.shape[:2]
    options = dict(lengths=jnp.full((B,), T - 1), resets=jnp.zeros((B, T), bool).at[min(1, B - 1), 3].set(True))
    for name in refused:
        text = str(jax.make_jaxpr(lambda p, x, name=name: lj.unroll(cell, p, x, **{name: options[name]})[0])(params, xs))
        assert target not in text, name
        assert "custom_vjp_call" in text, name  # the fused form
        with pytest.raises(ValueError, match=re.escape(f"`impl={impl!r}` cannot be used here: this form takes no "
                                                       f"`{name}`")):
            lj.unroll(cell, params, xs, impl=impl, **{name: options[name]})
    f64 = jax.tree.map(lambda a: a.astype(jnp.float64), (params, xs))
    assert target not in str(jax.make_jaxpr(lambda p, x: lj.unroll(cell, p, x)[0])(*f64))
    with pytest.raises(ValueError, match="float32 only, got \\['float64'\\]"):
        lj.unroll(cell, *f64, impl=impl)


def assert_vmap_and_reused_vjp(cell, params, xs, impl):
    """Under ``vmap`` the form ``impl`` (its custom call run once per element) equals the scan;
    a vjp closure called twice sees its residuals unchanged."""
    many = jnp.stack([xs, 2 * xs])  # [2, B, T, I]
    got = jax.vmap(lambda x: lj.unroll(cell, params, x, impl=impl)[0])(many)
    want = jax.vmap(lambda x: lj.unroll(cell, params, x, impl="scan")[0])(many)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    ys, vjp = jax.vjp(lambda p: lj.unroll(cell, p, xs, impl=impl)[0], params)
    first, second = vjp(jnp.ones_like(ys)), vjp(jnp.ones_like(ys))
    assert_trees_close(first, second, rtol=0, atol=0)


# ------------------------------------------------------------------------------ training runs

def delayed_recall(key, batch, T, I, lag, dtype):
    """The delayed-recall task of tests/test_training.py: x ~ N(0, 1) of shape [batch, T, I];
    the target at step t is x[t - lag, 0] (zero for t < lag), shape [batch, T, 1]."""
    xs = jax.random.normal(key, (batch, T, I), dtype)
    return xs, jnp.pad(xs[:, :-lag, :1], ((0, 0), (lag, 0), (0, 0)))


def mse_loss(model):
    """``(params, xs, ys) -> mean((model.apply(params, xs) - ys) ** 2)``."""
    return lambda params, xs, ys: jnp.mean((model.apply(params, xs) - ys) ** 2)


def train_with_optax(model, params, data_fn, *, steps, batch=32, lr=1e-2, clip=1.0, seed=1):
    """``steps`` Adam updates (global-norm clipped at ``clip``) of ``mse_loss(model)``, each on
    a fresh ``data_fn(key, batch) -> (xs, ys)`` with the keys split from ``key(seed)``; one
    jitted ``lax.scan``. Returns (trained params, the per-step training losses [steps])."""
    loss_fn = mse_loss(model)
    opt = optax.chain(optax.clip_by_global_norm(clip), optax.adam(lr))

    def update(carry, key):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, *data_fn(key, batch))
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    keys = jax.random.split(jax.random.key(seed), steps)
    with jax.numpy_dtype_promotion("standard"):  # optax's bias correction mixes int and float
        (params, _), losses = jax.jit(lambda c: jax.lax.scan(update, c, keys))((params, opt.init(params)))
    return params, losses


def segments(resets_row, length=None):
    """``[(start, stop)]`` of the segments that a ``resets [T]`` row marks within the first
    ``length`` steps (default all): a segment starts at 0 and at every flagged step."""
    n = len(resets_row) if length is None else int(length)
    starts = [0] + [t for t in range(1, n) if resets_row[t]]
    return list(zip(starts, starts[1:] + [n]))


# ------------------------------------------------------------------------------ forms

def forms_and_scan(cell, cases):
    """One jitted program ``(params, xs, carry, reset_to) -> {case: [scan, *forms]}``.

    For every case (``cases`` maps a name to :func:`lstm_jax.unroll` keyword arguments;
    ``reset_to`` is passed where they hold ``resets``) and for ``impl="scan"`` followed by each
    of ``cell.forms``: ``((loss, (ys, carry)), grads)`` from ``jax.value_and_grad`` w.r.t.
    ``(params, xs, carry, reset_to)`` of ``loss = sum(sin(leaf))`` over the outputs and the
    final carry. One program for all cases: one compile instead of one per case.
    """

    def loss(impl, kw, params, xs, carry, reset_to):
        extra = dict(reset_to=reset_to) if "resets" in kw else {}
        ys, final = lj.unroll(cell, params, xs, carry, impl=impl, **kw, **extra)
        return sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves((ys, final))), (ys, final)

    def all_cases(*args):
        return {name: [jax.value_and_grad(functools.partial(loss, impl, kw), argnums=(0, 1, 2, 3), has_aux=True)(*args)
                       for impl in ("scan", *cell.forms)]
                for name, kw in cases.items()}

    return jax.jit(all_cases)


def traces_with_static(run, *calls):
    """``jax.jit(run, static_argnums=0)`` called as ``run(*call)`` for each call; returns
    ``(the static arguments it traced for, the outputs)``: an equal (hashable) static
    argument reuses the compiled program, so it traces nothing new."""
    traces = []

    def traced(static, *args):
        traces.append(static)
        return run(static, *args)

    jitted = jax.jit(traced, static_argnums=0)
    return traces, [jitted(*call) for call in calls]


def load_experiment(name):
    """``experiments/<name>.py`` (a script, not a package) as the module ``experiments_<name>``."""
    return load_script(pathlib.Path(__file__).parent.parent / "experiments" / f"{name}.py")
