"""Invariants of ``lstm_jax.unroll``, checked against a plain Python loop over ``cell.step``.

The loop knows nothing of ``lax.scan``, masking, reversal or layouts, so agreement proves:
scan == loop (forwards, reversed, time-major, any ``unroll`` factor), vmap == per-example,
jit == eager, any leading batch shape, ``lengths`` padding invariance (garbage past each
length never leaks, padded outputs are exactly zero, each sequence keeps its own final
carry), the ``return_carries`` / ``return_gates`` extras, ``reverse_within_lengths`` and,
from the jaxpr, that the input projection is hoisted out of the scan and that gates cost
the default path nothing. All at float64 to ~1e-12.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers  # tests/helpers.py
import lstm_jax as lj

F64 = jnp.float64
I, T, B, H = 3, 5, 3, 4
TOL = dict(rtol=1e-12, atol=1e-12)

CELLS = {
    "rnn": lambda: lj.rnn(H),
    "lstm": lambda: lj.lstm(H),
    "lstm_peephole_proj": lambda: lj.lstm(H, peephole=True, proj_size=3),
    "greff_FGR": lambda: lj.greff_variant("FGR", H),  # the carry holds the gates
    "gru": lambda: lj.gru(H),
    "gru_reset_before": lambda: lj.gru(H, reset_after=False),
    "mut3": lambda: lj.mut3(H),
}
GATE_KEYS = {
    "rnn": {"hidden"},
    "lstm": {"input", "forget", "candidate", "output", "cell", "hidden"},
    "lstm_peephole_proj": {"input", "forget", "candidate", "output", "cell", "hidden"},
    "greff_FGR": {"input", "forget", "candidate", "output", "cell", "hidden"},
    "gru": {"reset", "update", "candidate", "hidden"},
    "gru_reset_before": {"reset", "update", "candidate", "hidden"},
    "mut3": {"reset", "update", "candidate", "hidden"},
}
cell_names = pytest.mark.parametrize("name", list(CELLS))


# ----------------------------------------------------------------------------- helpers

def randomize(tree, key, scale=0.5):
    """Every array leaf replaced by scale * N(0, 1) of the same shape and dtype."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(key, max(len(leaves), 1))
    return treedef.unflatten([scale * jax.random.normal(k, l.shape, l.dtype) for k, l in zip(keys, leaves)])


@functools.cache
def setup(name, seed=0):
    """(cell, params): every weight random (peepholes, FGR and biases too, not their zero init)."""
    cell = CELLS[name]()
    key = jax.random.key(seed)
    return cell, randomize(cell.init(key, I, dtype=F64), jax.random.fold_in(key, 1))


def inputs(batch_shape=(B,), steps=T, seed=1):
    return jax.random.normal(jax.random.key(seed), (*batch_shape, steps, I), F64)


def random_carry(cell, params, batch_shape, seed=2):
    return randomize(cell.init_carry(params, batch_shape), jax.random.key(seed))


def stack_time(seq):
    """A list over time of trees -> one tree with time on axis -2."""
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a, axis=-2), *seq)


def loop(cell, params, xs, carry=None, *, reverse=False, gates=False):
    """Reference: step the cell in a Python loop over xs[..., T, I].

    Returns (ys [..., T, O], final carry, carries [..., T, n] after each step, gates or None),
    with everything in input order. With ``reverse`` it visits t = T-1 ... 0.
    """
    batch_shape, steps = xs.shape[:-2], xs.shape[-2]
    carry = cell.init_carry(params, batch_shape) if carry is None else carry
    ys, carries, acts = [None] * steps, [None] * steps, [None] * steps
    for t in reversed(range(steps)) if reverse else range(steps):
        x_t = xs[..., t, :]
        if gates:
            carry, ys[t], acts[t] = cell.recur(params, carry, cell.project(params, x_t), aux=True)
        else:
            carry, ys[t] = cell.step(params, carry, x_t)
        carries[t] = carry
    return stack_time(ys), carry, stack_time(carries), stack_time(acts) if gates else None


assert_trees_close = functools.partial(helpers.assert_trees_close, same_dtype=True)
def take(tree, index):
    return jax.tree_util.tree_map(lambda a: a[index], tree)


# ------------------------------------------------------------------ scan == Python loop

@cell_names
@pytest.mark.parametrize("reverse", [False, True])
def test_scan_matches_loop(name, reverse):
    cell, params = setup(name)
    xs = inputs()
    carry0 = random_carry(cell, params, (B,))
    ys, carry = lj.unroll(cell, params, xs, carry0, reverse=reverse)
    ys_ref, carry_ref, _, _ = loop(cell, params, xs, carry0, reverse=reverse)
    assert ys.shape == (B, T, cell.output_size)
    assert_trees_close(ys, ys_ref)
    assert_trees_close(carry, carry_ref)


@pytest.mark.parametrize("name", ["lstm_peephole_proj", "greff_FGR", "gru_reset_before"])
@pytest.mark.parametrize("unroll", [3, True])
def test_unroll_factor_changes_no_numbers(name, unroll):
    """T=5 is not a multiple of 3, so unroll=3 also exercises the remainder steps."""
    cell, params = setup(name)
    xs, lengths = padded_batch()
    kw = dict(lengths=lengths, reverse=True)
    assert_trees_close(lj.unroll(cell, params, xs, unroll=unroll, **kw), lj.unroll(cell, params, xs, **kw))


@cell_names
def test_time_major_is_the_same_numbers_with_axes_swapped(name):
    """Reversed with lengths and every output: the most layout-sensitive path."""
    cell, params = setup(name)
    xs = inputs()
    lengths = jnp.array([T, 2, 0], jnp.int32)
    kw = dict(lengths=lengths, reverse=True, return_carries=True, return_gates=True)
    ys, carry, aux = lj.unroll(cell, params, xs, **kw)
    ys_tm, carry_tm, aux_tm = lj.unroll(cell, params, jnp.swapaxes(xs, 0, 1), time_major=True, **kw)
    assert ys_tm.shape == (T, B, cell.output_size)
    swap = lambda tree: jax.tree_util.tree_map(lambda a: jnp.swapaxes(a, 0, 1), tree)
    assert_trees_close((ys_tm, carry_tm, aux_tm), (swap(ys), carry, swap(aux)))


# --------------------------------------------------------- vmap, jit and batch shapes

@cell_names
def test_vmap_matches_batched_call_and_per_example_loop(name):
    cell, params = setup(name)
    xs, lengths = inputs(), jnp.array([4, T, 1], jnp.int32)
    carry0 = random_carry(cell, params, (B,))
    one = lambda x, c, n: lj.unroll(cell, params, x, c, lengths=n)  # x: [T, I], n: []
    vmapped = jax.vmap(one)(xs, carry0, lengths)  # lengths are tracers here: no value check
    batched = lj.unroll(cell, params, xs, carry0, lengths=lengths)
    assert_trees_close(vmapped, batched)
    one = jax.jit(one)  # compiled once for all examples
    for b in range(B):
        assert_trees_close(take(vmapped, b), one(xs[b], take(carry0, b), lengths[b]))


@cell_names
def test_jit_matches_eager(name):
    cell, params = setup(name)
    xs, lengths = inputs(), jnp.array([T, 0, 3], jnp.int32)
    f = lambda p, x, n: lj.unroll(cell, p, x, lengths=n, reverse=True, return_carries=True)
    assert_trees_close(jax.jit(f)(params, xs, lengths), f(params, xs, lengths))


@pytest.mark.parametrize("name", ["lstm_peephole_proj", "greff_FGR", "gru_reset_before"])
@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 3)], ids=str)
def test_any_leading_batch_shape(name, batch_shape):
    cell, params = setup(name)
    xs = inputs(batch_shape)
    ys, carry = lj.unroll(cell, params, xs)
    assert ys.shape == (*batch_shape, T, cell.output_size)
    ys_ref, carry_ref, _, _ = loop(cell, params, xs)
    assert_trees_close((ys, carry), (ys_ref, carry_ref))
    # with lengths of that batch shape: the same numbers as the flattened [N, T, I] batch,
    # whose per-sequence correctness test_lengths_padding_invariance proves
    n = int(np.prod(batch_shape, dtype=int))
    lengths = jnp.asarray(np.arange(n) % (T + 1), jnp.int32)
    kw = dict(reverse=True, return_carries=True)
    got = lj.unroll(cell, params, xs, lengths=lengths.reshape(batch_shape), **kw)
    flat = lj.unroll(cell, params, xs.reshape(n, T, I), lengths=lengths, **kw)
    unflatten = lambda a: a.reshape(*batch_shape, *a.shape[1:])
    assert_trees_close(got, jax.tree_util.tree_map(unflatten, flat))


def test_empty_sequence_returns_the_initial_carry():
    cell, params = setup("lstm")
    carry0 = random_carry(cell, params, (B,))
    ys, carry = lj.unroll(cell, params, inputs(steps=0), carry0)
    assert ys.shape == (B, 0, cell.output_size)
    assert_trees_close(carry, carry0)


# ------------------------------------------------------------------------------ lengths

LENGTHS = (T, 0, 2)  # full, empty and partial


def padded_batch(seed=3):
    """[B, T, I] inputs whose steps at or past each length are large random garbage."""
    xs = inputs(seed=seed)
    garbage = 1e3 * jax.random.normal(jax.random.key(seed + 100), xs.shape, F64)
    valid = np.arange(T)[None, :, None] < np.array(LENGTHS)[:, None, None]
    return jnp.where(jnp.asarray(valid), xs, garbage), jnp.array(LENGTHS, jnp.int32)


def alone(cell, params, x, carry, reverse):
    """Reference for one unpadded sequence x [n, I]: (ys [n, O], carry, carries [n, ...]).

    Reversed: run the loop on the flipped sequence, then flip the outputs back into input order.
    """
    carry = jax.tree_util.tree_map(lambda a: a[None], carry)  # batch of one
    if x.shape[0] == 0:
        return jnp.zeros((0, cell.output_size), F64), take(carry, 0), None
    ys, carry, carries, _ = loop(cell, params, (x[::-1] if reverse else x)[None], carry)
    flip = (lambda a: a[::-1]) if reverse else (lambda a: a)
    return flip(ys[0]), take(carry, 0), jax.tree_util.tree_map(flip, take(carries, 0))


@cell_names
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("zero_carry", [True, False], ids=["zero_carry", "random_carry"])
def test_lengths_padding_invariance(name, reverse, zero_carry):
    cell, params = setup(name)
    xs, lengths = padded_batch()
    carry0 = cell.init_carry(params, (B,)) if zero_carry else random_carry(cell, params, (B,))
    ys, carry, aux = lj.unroll(cell, params, xs, carry0, lengths=lengths, reverse=reverse,
                               return_carries=True)
    for b, n in enumerate(LENGTHS):
        ys_ref, carry_ref, carries_ref = alone(cell, params, xs[b, :n], take(carry0, b), reverse)
        np.testing.assert_allclose(ys[b, :n], ys_ref, **TOL)
        assert np.all(np.asarray(ys[b, n:]) == 0.0), "padded outputs must be exactly zero"
        assert_trees_close(take(carry, b), carry_ref)  # the initial carry when n == 0
        # the carry after each step; padded steps repeat the last valid (= final) carry
        carries_b = take(aux.carries, b)
        if n:
            assert_trees_close(jax.tree_util.tree_map(lambda a: a[:n], carries_b), carries_ref)
        for t in range(n, T):
            assert_trees_close(jax.tree_util.tree_map(lambda a: a[t], carries_b), carry_ref)


@cell_names
@pytest.mark.parametrize("reverse", [False, True])
def test_return_carries_matches_loop(name, reverse):
    cell, params = setup(name)
    xs, carry0 = inputs(), random_carry(cell, params, (B,))
    ys, carry, aux = lj.unroll(cell, params, xs, carry0, reverse=reverse, return_carries=True)
    ys_ref, carry_ref, carries_ref, _ = loop(cell, params, xs, carry0, reverse=reverse)
    assert aux.gates is None
    assert_trees_close((ys, carry, aux.carries), (ys_ref, carry_ref, carries_ref))


@cell_names
def test_return_gates_matches_loop(name):
    cell, params = setup(name)
    xs, lengths = padded_batch()
    ys, carry, aux = lj.unroll(cell, params, xs, lengths=lengths, return_gates=True)
    assert aux.carries is None
    assert set(aux.gates) == GATE_KEYS[name]
    np.testing.assert_allclose(aux.gates["hidden"], ys, **TOL)
    _, _, _, gates_ref = loop(cell, params, xs, gates=True)
    valid = (np.arange(T)[None, :] < np.array(LENGTHS)[:, None])[..., None]
    for k, g in aux.gates.items():
        assert g.shape == (B, T, gates_ref[k].shape[-1])
        np.testing.assert_allclose(g, np.where(valid, gates_ref[k], 0.0), **TOL, err_msg=k)


def test_default_return_is_a_pair():
    cell, params = setup("lstm")
    out = lj.unroll(cell, params, inputs())
    assert isinstance(out, tuple) and len(out) == 2
    out = lj.unroll(cell, params, inputs(), return_gates=True)
    assert len(out) == 3 and isinstance(out[2], lj.UnrollAux)


# ------------------------------------------------------------------ reverse_within_lengths

def numpy_reverse_within_lengths(xs, lengths):
    out = xs.copy()
    for idx in np.ndindex(*lengths.shape):
        n = lengths[idx]
        out[(slice(0, n), *idx)] = xs[(slice(0, n), *idx)][::-1]
    return out


def test_reverse_within_lengths():
    xs = np.asarray(jax.random.normal(jax.random.key(4), (T, 2, 3, 2), F64))
    lengths = np.array([[0, 1, T], [2, 3, 4]], np.int32)
    once = lj.reverse_within_lengths(jnp.asarray(xs), jnp.asarray(lengths))
    np.testing.assert_array_equal(once, numpy_reverse_within_lengths(xs, lengths))
    np.testing.assert_array_equal(lj.reverse_within_lengths(once, jnp.asarray(lengths)), xs)


# ------------------------------------------------------------------------------ jaxprs

def sub_jaxprs(eqn):
    for v in eqn.params.values():
        for j in v if isinstance(v, (tuple, list)) else (v,):
            j = getattr(j, "jaxpr", j)  # ClosedJaxpr -> Jaxpr
            if hasattr(j, "eqns"):
                yield j


def count(jaxpr, primitive, *, into_scans):
    """Occurrences of ``primitive`` in ``jaxpr`` and nested jaxprs (scan bodies only if asked)."""
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name == primitive
        if eqn.primitive.name != "scan" or into_scans:
            n += sum(count(j, primitive, into_scans=into_scans) for j in sub_jaxprs(eqn))
    return n


def scan_eqns(jaxpr):
    found = []
    for eqn in jaxpr.eqns:
        found += [eqn] if eqn.primitive.name == "scan" else []
        for j in sub_jaxprs(eqn):
            found += scan_eqns(j)
    return found


def unroll_jaxpr(**kw):
    """The generic scan path's jaxpr (the fused LSTM path has its own tests in test_fused.py)."""
    cell, params = setup("lstm")
    return jax.make_jaxpr(lambda p, x: lj.unroll(cell, p, x, impl="scan", **kw))(params, inputs()).jaxpr


def test_input_projection_is_hoisted_out_of_the_scan():
    jaxpr = unroll_jaxpr()
    (scan,) = scan_eqns(jaxpr)
    body = scan.params["jaxpr"].jaxpr
    assert count(body, "dot_general", into_scans=True) == 1  # h @ w_h only
    assert count(jaxpr, "dot_general", into_scans=False) == 1  # xs @ w_x, all steps at once
    # the hoisted product is time-major [T, B, 4H] and is fed to the scan as xs
    projected = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
    assert projected and projected[0].outvars[0].aval.shape == (T, B, 4 * H)


def test_gates_cost_the_default_path_nothing():
    num_outs = lambda **kw: len(scan_eqns(unroll_jaxpr(**kw))[0].outvars)
    carry_leaves = 2  # LSTMState(hidden, cell), gates=None
    assert num_outs() == carry_leaves + 1  # the carry and ys, nothing else
    assert num_outs(return_gates=True) == carry_leaves + 1 + len(GATE_KEYS["lstm"])


# --------------------------------------------------------------------- rematerialisation

@pytest.mark.parametrize("options", [dict(), dict(reverse=True), dict(lengths=[23, 10, 0, 17]),
                                     dict(lengths=[23, 10, 0, 17], reverse=True), dict(time_major=True)],
                         ids=["plain", "reverse", "lengths", "lengths_reverse", "time_major"])
def test_remat_chunks_change_nothing_but_memory(options):
    """Chunked checkpointing (chunks that do and do not divide T) gives the same outputs,
    final carry, per-step carries and gradients as the plain scan."""
    cell = lj.lstm(5, peephole=True)
    params = cell.init(jax.random.key(0), 3, dtype=jnp.float64)
    time_major = options.get("time_major", False)
    xs = jax.random.normal(jax.random.key(1), (23, 4, 3) if time_major else (4, 23, 3), jnp.float64)
    if "lengths" in options:
        options = dict(options, lengths=jnp.asarray(options["lengths"], jnp.int32))

    def run(p, x, chunk):
        ys, carry, aux = lj.unroll(cell, p, x, remat_chunk=chunk, return_carries=True, **options)
        return jnp.sum(ys ** 2) + jnp.sum(carry.cell), (ys, carry, aux.carries)

    want = jax.value_and_grad(run, argnums=(0, 1), has_aux=True)(params, xs, None)
    for chunk in (1, 7, 50):  # many chunks; chunks that do not divide T; one padded chunk
        got = jax.jit(jax.value_and_grad(run, argnums=(0, 1), has_aux=True), static_argnums=2)(params, xs, chunk)
        helpers.assert_trees_close(got, want)


@pytest.mark.parametrize("kwargs, message", [
    (dict(remat_chunk=0), "`remat_chunk` must be a positive int, got 0."),
    (dict(unroll=0), "`unroll` must be a positive int, got 0."),
    (dict(unroll=2.5), "`unroll` must be a positive int, got 2.5."),
])
def test_remat_chunk_and_unroll_must_be_positive(kwargs, message):
    cell = lj.lstm(4)
    params = cell.init(jax.random.key(0), 3)
    with pytest.raises(ValueError, match=re.escape(message)):
        lj.unroll(cell, params, jnp.ones((2, 5, 3), jnp.float32), **kwargs)


def test_narrow_integer_lengths_do_not_wrap():
    """int8 lengths with T > 127: the step counter is int32, so nothing wraps around."""
    cell = lj.rnn(3)
    params = cell.init(jax.random.key(0), 2, dtype=jnp.float64)
    xs = jax.random.normal(jax.random.key(1), (2, 200, 2), jnp.float64)
    for reverse in (False, True):
        want = lj.unroll(cell, params, xs, lengths=jnp.array([5, 120], jnp.int32), reverse=reverse)
        got = lj.unroll(cell, params, xs, lengths=jnp.array([5, 120], jnp.int8), reverse=reverse)
        helpers.assert_trees_close(got, want)
