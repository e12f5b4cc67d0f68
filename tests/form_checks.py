"""The check every whole-sequence form of a cell needs: it equals the generic scan, values and
gradients (tests/ is on sys.path under pytest, like helpers.py)."""

import functools

import jax
import jax.numpy as jnp

import lstm_jax as lj


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
