"""The contract itself (``lstm_jax.cell``, ``unroll``, ``_checks``): typed hashable cells, params
checked once, pytrees through ``unroll``, ``resets``, value checks, and the defects the
contract-v2 issue listed, each with a test that failed before its fix.

References are independent of the machinery under test: a Python loop over ``cell.step``,
running each segment of a sequence separately, finite differences, and the same call with
clean inputs.
"""

from __future__ import annotations

import dataclasses
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import helpers  # tests/helpers.py
import lstm_jax as lj
from lstm_jax.cells.base import make_cell

F64, F32 = jnp.float64, jnp.float32
KEY = jax.random.key(0)
I, T, B, H = 3, 6, 3, 4
TOL = dict(rtol=1e-11, atol=1e-11)


def setup(cell, seed=0, input_size=I, batch=(B,), steps=T, dtype=F64):
    """(params perturbed away from their zero-initialised fields, xs [*batch, steps, I])."""
    rng = np.random.default_rng(seed)
    params = helpers.perturb(cell.init(jax.random.key(seed), input_size, dtype=dtype), rng)
    return params, helpers.normal(rng, batch + (steps, input_size), dtype)


# ------------------------------------------------------------------ typed, hashable cells

SAME_CELLS = [
    (lambda: lj.rnn(H), lambda: lj.rnn(H, activation="relu")),
    (lambda: lj.lstm(H), lambda: lj.lstm(H, peephole=True)),
    (lambda: lj.lstm(H, proj_size=2), lambda: lj.lstm(H, proj_size=3)),
    (lambda: lj.greff_variant("CIFG", H), lambda: lj.greff_variant("NP", H)),
    (lambda: lj.gru(H), lambda: lj.gru(H, reset_after=False)),
    (lambda: lj.mut1(H), lambda: lj.mut2(H)),
    (lambda: lj.lstm(H, recurrent_init=lj.initializers.orthogonal(0.5)),
     lambda: lj.lstm(H, recurrent_init=lj.initializers.orthogonal(0.9))),
]


@pytest.mark.parametrize("make, other", SAME_CELLS)
def test_cells_compare_and_hash_by_config(make, other):
    a, b, c = make(), make(), other()
    assert a == b and hash(a) == hash(b) and not (a != b)
    assert a != c and len({a, b, c}) == 2
    assert repr(a) == repr(a.config) and repr(a) != repr(c)
    assert a.config.build() == a
    assert lj.layer(a) == lj.layer(b) and hash(lj.layer(a)) == hash(lj.layer(b))
    assert lj.layer(a) != lj.layer(a, reverse=True)


def test_repr_shows_the_constructor_call():
    assert repr(lj.lstm(16)) == "lstm(16)"
    assert repr(lj.lstm(16, peephole=True, proj_size=8)) == "lstm(16, peephole=True, proj_size=8)"
    assert repr(lj.greff_variant("CIFG", 8)) == "lstm(8, peephole=True, coupled=True)"
    assert repr(lj.mut2(4)) == "mut2(4)"
    net = lj.stack([lj.bidirectional(lj.lstm(4), lj.gru(4)), lj.rnn(2)], dropout_rate=0.1)
    assert repr(net) == ("stack([bidirectional(layer(lstm(4)), layer(gru(4), reverse=True), merge='concat'), "
                         "layer(rnn(2))], dropout_rate=0.1)")


def test_a_cell_is_a_jit_static_argument_traced_once_for_equal_cells():
    params, xs = setup(lj.lstm(H))
    traces, (first, second, _) = helpers.traces_with_static(
        lambda c, p, x: lj.unroll(c, p, x)[0], (lj.lstm(H), params, xs),
        (lj.lstm(H), params, xs),  # a new, equal cell: no retrace
        (lj.lstm(H, forget_bias=2.0), params, xs))  # another config: traced again
    np.testing.assert_array_equal(first, second)
    assert traces == [lj.lstm(H), lj.lstm(H, forget_bias=2.0)]


def test_config_is_validated_and_replaceable():
    config = lj.lstm(8).config
    assert isinstance(config, lj.LSTMConfig) and config.output_size == 8
    assert config.replace(peephole=True).build() == lj.lstm(8, peephole=True)
    assert lj.LSTMConfig(8, proj_size=4).output_size == 4
    with pytest.raises(ValueError, match=re.escape("`proj_size` must be smaller than `hidden_size` (8), got 8.")):
        config.replace(proj_size=8)
    with pytest.raises(TypeError, match=re.escape("`peephole` must be a bool, got 'yes'.")):
        lj.LSTMConfig(8, peephole="yes")
    with pytest.raises(TypeError, match="`kernel_init` must be hashable"):
        lj.lstm(8, kernel_init=UnhashableInit())
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hidden_size = 9


@dataclasses.dataclass(eq=True)  # eq without frozen: unhashable
class UnhashableInit:
    def __call__(self, key, shape, dtype):
        return jnp.zeros(shape, dtype)


# ------------------------------------------------------------------ params checked once

PEEPHOLE = lj.lstm(H, peephole=True)
PLAIN = lj.lstm(H)
PLAIN_PARAMS = PLAIN.init(KEY, I, dtype=F64)
PEEP_PARAMS = PEEPHOLE.init(KEY, I, dtype=F64)
XS = jnp.ones((B, T, I), F64)


def mismatch(id, cell, params, error, message):
    return pytest.param(cell, params, error, message, id=id)


MISMATCHES = [
    mismatch("peephole_params_into_plain", PLAIN, PEEP_PARAMS, ValueError,
             "`params.peephole_i` is not part of lstm(4) (which has .w_x, .w_h, .b). Were these made for another "
             "cell or variant?"),
    mismatch("plain_params_into_peephole", PEEPHOLE, PLAIN_PARAMS, ValueError,
             "`params.peephole_i` is missing: lstm(4, peephole=True) has it (shape (4,))."),
    mismatch("plain_params_into_fgr", lj.lstm(H, full_gate_recurrence=True), PLAIN_PARAMS, ValueError,
             "`params.w_gates` is missing: lstm(4, full_gate_recurrence=True) has it (shape (12, 12))."),
    mismatch("wrong_w_h", PLAIN, PLAIN_PARAMS._replace(w_h=jnp.ones((H, 3 * H), F64)), ValueError,
             "`params.w_h` has shape (4, 12), but lstm(4) needs (4, 16) (for input size 3)."),
    mismatch("wrong_bias", PLAIN, PLAIN_PARAMS._replace(b=jnp.ones((H,), F64)), ValueError,
             "`params.b` has shape (4,), but lstm(4) needs (16,)"),
    mismatch("mixed_dtypes", PLAIN, PLAIN_PARAMS._replace(w_h=PLAIN_PARAMS.w_h.astype(jnp.bfloat16)), TypeError,
             "`params` mix dtypes: `params.w_x` is float64 but `params.w_h` is bfloat16"),
    mismatch("another_family", PLAIN, lj.gru(H).init(KEY, I, dtype=F64), TypeError,
             "`params` must be LSTMParams for lstm(4), got GRUParams."),
    mismatch("another_size", lj.lstm(H + 1), PLAIN_PARAMS, ValueError,
             "`params.w_x` has shape (3, 16), but lstm(5) needs (3, 20)"),
    mismatch("integer_params", PLAIN, jax.tree.map(lambda a: a.astype(jnp.int32), PLAIN_PARAMS), TypeError,
             "`params.w_x` must be floating (float32, bfloat16, float64...), got int32."),
    mismatch("a_cell_as_params", PLAIN, PLAIN, TypeError,
             "`params` is a Cell (lstm(4)), not parameters: the arguments are (cell, params, ...)"),
    mismatch("python_numbers", PLAIN, PLAIN_PARAMS._replace(b=1.0), TypeError,
             "`params.b` must be an array, got float."),
]


@pytest.mark.parametrize("cell, params, error, message", MISMATCHES)
@pytest.mark.parametrize("impl", ["auto", "scan"])
def test_params_mismatch_is_refused_on_every_path(cell, params, error, message, impl):
    """The same message from unroll (either implementation), Cell.step and every layer
    function: the result never depends on which path would have run."""
    calls = {
        "unroll": lambda: lj.unroll(cell, params, XS, impl=impl),
        "step": lambda: cell.step(params, cell.init_carry(PLAIN_PARAMS, (B,)), XS[:, 0]),
        "layer.apply": lambda: lj.layer(cell, impl=impl).apply(params, XS),
        "layer.step": lambda: lj.layer(cell).step(params, cell.init_carry(PLAIN_PARAMS, (B,)), XS[:, 0]),
    }
    for where, call in calls.items():
        with pytest.raises(error, match=re.escape(message)):
            call()


def test_params_are_checked_in_a_stack_naming_the_layer():
    net = lj.stack([lj.lstm(H), lj.gru(H)])
    params = net.init(KEY, I, dtype=F64)
    with pytest.raises(TypeError, match=re.escape("`params[1]` must be GRUParams for gru(4), got LSTMParams.")):
        net.apply((params[0], params[0]), XS)
    wrong = (params[0], params[1]._replace(w_h=params[1].w_h[:, :4]))
    with pytest.raises(ValueError, match=re.escape("`params[1].w_h` has shape (4, 4), but gru(4) needs (4, 12)")):
        net.apply(wrong, XS)
    carry = net.init_carry(params, (B,))
    with pytest.raises(TypeError, match=re.escape("`carry[1]` must be GRUState")):
        net.apply(params, XS, (carry[0], carry[0]))
    with pytest.raises(ValueError, match=re.escape("`params` must be a tuple of 2 per-layer parameters")):
        net.apply(params[0], XS)
    with pytest.raises(TypeError, match=re.escape("`carry[1]` must be GRUState")):
        net.step(params, (carry[0], carry[0]), XS[:, 0])


@pytest.mark.parametrize("call", [
    lambda: PLAIN.init(0, I), lambda: lj.layer(PLAIN).init(0, I), lambda: lj.stack([PLAIN]).init(0, I),
    lambda: lj.bidirectional(PLAIN, PLAIN).init(0, I), lambda: lj.stack([PLAIN], dropout_rate=0.5).apply(
        (PLAIN_PARAMS,), XS, key=0)], ids=["cell", "layer", "stack", "bidirectional", "dropout_key"])
def test_an_integer_key_is_refused(call):
    with pytest.raises(TypeError, match=re.escape("`key` must be a PRNG key such as jax.random.key(0), got int 0.")):
        call()


def test_a_legacy_uint32_key_is_accepted():
    legacy = jax.random.PRNGKey(0)
    assert jax.tree.structure(PLAIN.init(legacy, I)) == jax.tree.structure(PLAIN.init(KEY, I))


@pytest.mark.parametrize("call, error, message", [
    (lambda: lj.unroll(PLAIN_PARAMS, PLAIN, XS), TypeError,
     "`cell` must be a lstm_jax Cell (e.g. lstm_jax.lstm(64)), got LSTMParams; it looks like params: the "
     "arguments are unroll(cell, params, ...)."),
    (lambda: lj.unroll(lj.layer(PLAIN), PLAIN_PARAMS, XS), TypeError,
     "`cell` is a Layer (layer(lstm(4))): call `layer.apply(params, xs)` instead of unroll(layer, ...)."),
    (lambda: lj.unroll(PLAIN, PLAIN_PARAMS, [[1.0, 2.0, 3.0]]), TypeError,
     "`xs` must be a JAX or NumPy array (or a cell's input NamedTuple), got a list; convert it with jnp.asarray."),
    (lambda: lj.unroll(PLAIN, PLAIN_PARAMS, XS, impl=None), TypeError,
     "`impl` must be a string ('auto', 'scan' or a form name), got None."),
    (lambda: lj.layer(PLAIN, impl="parallel"), ValueError,
     "`impl` must be 'auto', 'scan' or one of lstm(4)'s forms ('native', 'onednn', 'fused', 'pallas'), got 'parallel'."),
    (lambda: lj.unroll(PLAIN, PLAIN_PARAMS, XS, reset_to=PLAIN.init_carry(PLAIN_PARAMS, (B,))), ValueError,
     "`reset_to` is the carry that `resets` restore; pass `resets` with it."),
    (lambda: lj.unroll(PLAIN, PLAIN_PARAMS, XS, resets=jnp.zeros((B, T), jnp.int32)), TypeError,
     "`resets` must be a bool array [..., T] (True where a new segment starts), got dtype int32."),
    (lambda: lj.unroll(PLAIN, PLAIN_PARAMS, XS, resets=jnp.zeros((B, T + 1), bool)), ValueError,
     "`resets` must have shape (3, 6) ([..., T]: `xs` without its feature axis), got (3, 7)."),
    (lambda: lj.unroll(PLAIN, PLAIN_PARAMS, XS, reverse="yes"), TypeError, "`reverse` must be a bool, got 'yes'."),
    (lambda: lj.layer(lj.lstm(H), reverse=True).step(PLAIN_PARAMS, PLAIN.init_carry(PLAIN_PARAMS), XS[0, 0]),
     ValueError, "layer(lstm(4), reverse=True) reads its sequence backwards, so it cannot step"),
    (lambda: lj.bidirectional(PLAIN, PLAIN).step(None, None, XS[0, 0]), ValueError,
     "bidirectional(layer(lstm(4)), layer(lstm(4), reverse=True), merge='concat') cannot step"),
    (lambda: lj.layer(PLAIN, learn_initial_carry=True).apply(PLAIN_PARAMS, XS), TypeError,
     "`params` must be LearnedCarryParams (this layer learns its initial carry), got LSTMParams."),
    (lambda: lj.bidirectional(PLAIN, PLAIN, reverse=True), ValueError,
     "`reverse` is set by bidirectional itself"),
])
def test_user_errors_are_named(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


# ------------------------------------------------------------------ pytrees through unroll

class ScaledInput(NamedTuple):
    x: jax.Array  # [..., T, I]
    gain: jax.Array  # [..., T, 1]


class Both(NamedTuple):
    hidden: jax.Array  # [..., H]
    grid: jax.Array  # [..., 2, H]: a carry leaf with two trailing axes


@dataclasses.dataclass(frozen=True, repr=False)
class ToyConfig(lj.CellConfig):
    constructor = "toy"
    hidden_size: int

    def build(self):
        H_ = self.hidden_size

        def init(key, input_size, dtype):
            return (jax.random.normal(key, (input_size, H_), dtype),)

        def init_carry(params, batch_shape):
            return Both(jnp.zeros(batch_shape + (H_,), params[0].dtype), jnp.zeros(batch_shape + (2, H_), params[0].dtype))

        def project(params, xs):
            return ScaledInput(xs.x @ params[0], xs.gain)

        def recur(params, carry, px, *, aux=False):
            h = jnp.tanh(px.x * px.gain + carry.hidden * 0.5 + carry.grid[..., 0, :])
            new = Both(h, jnp.stack([carry.grid[..., 1, :], h], axis=-2))
            y = {"h": h, "twice": 2 * h[..., :1]}  # a pytree output
            return (new, y, {"hidden": h}) if aux else (new, y)

        return make_cell(self, init=init, init_carry=init_carry, project=project, recur=recur)


@pytest.mark.parametrize("options", [dict(), dict(reverse=True), dict(lengths=[6, 0, 4]),
                                     dict(lengths=[6, 0, 4], reverse=True), dict(time_major=True),
                                     dict(resets=[[0, 0, 1, 0, 0, 0]] * 3, reverse=True)],
                         ids=["plain", "reverse", "lengths", "lengths_reverse", "time_major", "resets"])
def test_pytree_inputs_outputs_and_carries_equal_a_python_loop(options):
    cell = ToyConfig(H).build()
    params = cell.init(KEY, I, dtype=F64)
    rng = np.random.default_rng(0)
    xs = ScaledInput(helpers.normal(rng, (B, T, I)), helpers.normal(rng, (B, T, 1)))
    lengths = np.asarray(options.get("lengths", [T] * B))
    resets = np.asarray(options.get("resets", np.zeros((B, T))), bool)
    kw = dict(options, lengths=jnp.asarray(lengths)) if "lengths" in options else dict(options)
    if "resets" in options:
        kw["resets"] = jnp.asarray(resets)
    if options.get("time_major"):
        ys, carry = lj.unroll(cell, params, jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), xs), **kw)
        ys = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), ys)
    else:
        ys, carry = lj.unroll(cell, params, xs, **kw)
    for b in range(B):  # each sequence alone, in its reading order, restarting at each segment
        n = int(lengths[b])
        order = list(range(n))[::-1] if options.get("reverse") else list(range(n))
        state = cell.init_carry(params)
        want = {"h": np.zeros((T, H)), "twice": np.zeros((T, 1))}
        for t in order:
            starts_here = resets[b, t + 1] if options.get("reverse") and t + 1 < n else (
                resets[b, t] if not options.get("reverse") else False)
            if starts_here:
                state = cell.init_carry(params)
            state, y = cell.step(params, state, jax.tree.map(lambda a: a[b, t], xs))
            want["h"][t], want["twice"][t] = y["h"], y["twice"]
        helpers.assert_trees_close(jax.tree.map(lambda a: a[b], ys), want, **TOL)
        helpers.assert_trees_close(jax.tree.map(lambda a: a[b], carry), state, **TOL)


def test_pytree_inputs_must_share_their_leading_axes():
    cell = ToyConfig(H).build()
    params = cell.init(KEY, I, dtype=F64)
    xs = ScaledInput(jnp.ones((B, T, I), F64), jnp.ones((B, T - 1, 1), F64))
    with pytest.raises(ValueError, match=re.escape("`xs.gain` must share the leading axes (3, 6) of the first "
                                                   "input (shape (3, 6, 3)), got shape (3, 5, 1).")):
        lj.unroll(cell, params, xs)


# ------------------------------------------------------------------------------ resets

RESET_CELLS = {
    "rnn": lambda: lj.rnn(H),
    "lstm": lambda: lj.lstm(H),
    "lstm_peephole_fgr": lambda: lj.lstm(H, peephole=True, full_gate_recurrence=True),
    "gru": lambda: lj.gru(H),
    "gru_reset_before": lambda: lj.gru(H, reset_after=False),
    "mut3": lambda: lj.mut3(H),
}
RESETS = np.zeros((B, T), bool)
RESETS[0, [2, 4]] = True  # two boundaries
RESETS[1, 0] = True  # at the first step: drops the incoming carry (forwards)
RESETS[2, 3] = True  # past the length of sequence 2 below: no effect


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("impl", ["scan", "auto"])
@pytest.mark.parametrize("name", sorted(RESET_CELLS))
def test_resets_equal_running_each_segment_separately(name, impl, reverse):
    cell = RESET_CELLS[name]()
    params, xs = setup(cell)
    lengths = np.array([T, 5, 2])
    carry0 = helpers.perturb(cell.init_carry(params, (B,)), np.random.default_rng(5))
    ys, carry = lj.unroll(cell, params, xs, carry0, lengths=jnp.asarray(lengths), resets=jnp.asarray(RESETS),
                          reverse=reverse, impl=impl)
    for b in range(B):
        n = int(lengths[b])
        parts = helpers.segments(RESETS[b], n)
        outs, finals = [], {}
        for k, (start, stop) in enumerate(parts):
            # the first segment read starts from the given carry, every later one from zeros;
            # a reset at step 0 starts the sequence itself afresh (a reverse reading ends there)
            first_read = (k == len(parts) - 1) if reverse else (k == 0 and not RESETS[b, 0])
            c = jax.tree.map(lambda a: a[b], carry0) if first_read else cell.init_carry(params)
            y, c = lj.unroll(cell, params, xs[b, start:stop], c, reverse=reverse, impl="scan")
            outs.append(y)
            finals[k] = c
        helpers.assert_trees_close(ys[b, :n], jnp.concatenate(outs), **TOL)
        assert np.all(np.asarray(ys[b, n:]) == 0.0)
        last_read = 0 if reverse else len(parts) - 1
        helpers.assert_trees_close(jax.tree.map(lambda a: a[b], carry), finals[last_read], **TOL)


def test_resets_restore_reset_to_not_the_incoming_carry():
    """Truncated BPTT: the carry passed in is the previous chunk's state; a document boundary
    must start from zeros (or ``reset_to``), not from it."""
    cell = lj.lstm(H)
    params, xs = setup(cell)
    incoming = helpers.perturb(cell.init_carry(params, (B,)), np.random.default_rng(1))
    resets = jnp.zeros((B, T), bool).at[:, 3].set(True)
    ys, _ = lj.unroll(cell, params, xs, incoming, resets=resets)
    fresh, _ = lj.unroll(cell, params, xs[:, 3:])
    helpers.assert_trees_close(ys[:, 3:], fresh, **TOL)
    target = helpers.perturb(cell.init_carry(params, (B,)), np.random.default_rng(2))
    ys, _ = lj.unroll(cell, params, xs, incoming, resets=resets, reset_to=target)
    helpers.assert_trees_close(ys[:, 3:], lj.unroll(cell, params, xs[:, 3:], target)[0], **TOL)


def test_bidirectional_resets_keep_segments_apart_in_both_directions():
    net = lj.bidirectional(lj.lstm(H), lj.gru(H))
    params = net.init(KEY, I, dtype=F64)
    _, xs = setup(lj.lstm(H))
    resets = jnp.zeros((B, T), bool).at[:, 2].set(True)
    ys, _ = net.apply(params, xs, resets=resets)
    want = jnp.concatenate([net.apply(params, xs[:, :2])[0], net.apply(params, xs[:, 2:])[0]], axis=1)
    helpers.assert_trees_close(ys, want, **TOL)


# ------------------------------------------------------------------ learned initial carry

def test_learned_initial_carry_starts_and_resets_every_sequence():
    cell = lj.lstm(H)
    net = lj.layer(cell, learn_initial_carry=True)
    params = net.init(KEY, I, dtype=F64)
    assert isinstance(params, lj.LearnedCarryParams)
    helpers.assert_trees_close(params.initial_carry, lj.LSTMState(jnp.zeros(H, F64), jnp.zeros(H, F64)))
    params = helpers.perturb(params, np.random.default_rng(0))
    _, xs = setup(cell)
    start = jax.tree.map(lambda a: jnp.broadcast_to(a, (B,) + a.shape), params.initial_carry)
    helpers.assert_trees_close(net.apply(params, xs), lj.unroll(cell, params.cell, xs, start), **TOL)
    helpers.assert_trees_close(net.init_carry(params, (B,)), start, **TOL)
    resets = jnp.zeros((B, T), bool).at[:, 3].set(True)
    ys, _ = net.apply(params, xs, resets=resets)
    helpers.assert_trees_close(ys[:, 3:], lj.unroll(cell, params.cell, xs[:, 3:], start)[0], **TOL)

    def loss_layer(p):
        return jnp.sum(jnp.sin(net.apply(p, xs, resets=resets)[0]))

    def loss_by_hand(initial):  # the same function of the initial carry, written with unroll
        s = jax.tree.map(lambda a: jnp.broadcast_to(a, (B,) + a.shape), initial)
        return jnp.sum(jnp.sin(lj.unroll(cell, params.cell, xs, s, resets=resets, reset_to=s)[0]))

    got = jax.grad(loss_layer)(params).initial_carry
    helpers.assert_trees_close(got, jax.grad(loss_by_hand)(params.initial_carry), **TOL)
    assert float(jnp.abs(got.hidden).sum()) > 0
    # and independently of any hand-written backward: central differences on the layer
    check_grads(lambda c: loss_layer(params._replace(initial_carry=c)), (params.initial_carry,), order=1,
                modes=["rev"], atol=1e-6, rtol=1e-6)


def test_learned_initial_carry_skips_integer_carry_leaves():
    """A step counter is not a parameter: it stays out of the learned carry."""
    cell = lj.clockwork(4, periods=(1, 2))
    params = lj.layer(cell, learn_initial_carry=True).init(KEY, I, dtype=F64)
    assert params.initial_carry.step is None and params.initial_carry.hidden.shape == (4,)


# ------------------------------------------------------------------------------ layers

def test_stack_step_by_step_equals_apply():
    net = lj.stack([lj.lstm(H, peephole=True), lj.layer(lj.gru(H), learn_initial_carry=True), lj.rnn(2)],
                   dropout_rate=0.3)
    params = helpers.perturb(net.init(KEY, I, dtype=F64), np.random.default_rng(0))
    _, xs = setup(lj.lstm(H))
    ys, final = net.apply(params, xs)  # no key: no dropout, as in step
    carry, steps = net.init_carry(params, (B,)), []
    for t in range(T):
        carry, y = net.step(params, carry, xs[:, t])
        steps.append(y)
    helpers.assert_trees_close(jnp.stack(steps, axis=1), ys, **TOL)
    helpers.assert_trees_close(carry, final, **TOL)
    # the gates of each step, per layer, equal those of the whole sequence
    _, _, gates = net.apply(params, xs, return_gates=True)
    carry, stepped = net.init_carry(params, (B,)), []
    for t in range(T):
        carry, _, g = net.step(params, carry, xs[:, t], return_gates=True)
        stepped.append(g)
    helpers.assert_trees_close(jax.tree.map(lambda *a: jnp.stack(a, axis=1), *stepped), gates, **TOL)


def test_gates_are_reachable_through_every_layer_kind():
    _, xs = setup(lj.lstm(H))
    single = lj.layer(lj.lstm(H))
    p = single.init(KEY, I, dtype=F64)
    ys, _, gates = single.apply(p, xs, return_gates=True)
    helpers.assert_trees_close(gates, lj.unroll(lj.lstm(H), p, xs, return_gates=True)[2].gates, **TOL)
    net = lj.stack([lj.bidirectional(lj.lstm(H), lj.gru(H)), lj.rnn(2)])
    params = net.init(KEY, I, dtype=F64)
    ys, _, gates = net.apply(params, xs, return_gates=True)
    assert isinstance(gates, tuple) and len(gates) == 2
    assert set(gates[0]) == {"forward", "backward"}
    assert set(gates[0]["forward"]) == {"input", "forget", "candidate", "output", "cell", "hidden"}
    assert set(gates[0]["backward"]) == {"reset", "update", "candidate", "hidden"}
    helpers.assert_trees_close(gates[1]["hidden"], ys, **TOL)
    first = jnp.concatenate([gates[0]["forward"]["hidden"], gates[0]["backward"]["hidden"]], axis=-1)
    helpers.assert_trees_close(first, net.config.layers[0].apply(params[0], xs)[0], **TOL)


def has(fn, *args, name):
    return name in str(jax.make_jaxpr(fn)(*args))


def test_layer_options_pass_through_stack_and_bidirectional():
    _, xs = setup(lj.lstm(H), dtype=F32)
    for impl, fused in (("scan", False), ("auto", True)):
        net = lj.stack([lj.lstm(H), lj.bidirectional(lj.lstm(H), lj.lstm(H), impl=impl)], impl=impl)
        params = net.init(KEY, I)
        assert has(lambda p: net.apply(p, xs)[0], params, name="custom_vjp_call") == fused
    net = lj.stack([lj.lstm(H), lj.gru(H)], remat_chunk=2)
    assert has(lambda p: net.apply(p, xs)[0], net.init(KEY, I), name="remat")
    net = lj.stack([lj.lstm(H)], impl="pallas")
    assert has(lambda p: net.apply(p, xs)[0], net.init(KEY, I), name="pallas_call")


# ------------------------------------------------------------------------------ defects

def test_reverse_with_traced_lengths_past_T_acts_as_T():
    """Defect a: under jit, lengths > T with reverse=True returned all NaN (every cell, and
    bidirectional); lengths past T act as T, as documented."""
    _, xs = setup(lj.lstm(H), steps=5, batch=(1,))
    for cell in (lj.lstm(H), lj.gru(H), lj.rnn(H), lj.lstm(H, peephole=True)):
        params = cell.init(KEY, I, dtype=F64)
        for impl in ("auto", "scan"):
            run = jax.jit(lambda p, n, impl=impl, cell=cell: lj.unroll(cell, p, xs, lengths=n, reverse=True, impl=impl))
            helpers.assert_trees_close(run(params, jnp.array([6])), lj.unroll(cell, params, xs, reverse=True), **TOL)
    net = lj.bidirectional(lj.lstm(H), lj.lstm(H))
    params = net.init(KEY, I, dtype=F64)
    got = jax.jit(lambda p, n: net.apply(p, xs, lengths=n))(params, jnp.array([9]))
    helpers.assert_trees_close(got, net.apply(params, xs), **TOL)


NAN_CELLS = {
    "lstm": lambda: lj.lstm(H), "lstm_peephole": lambda: lj.lstm(H, peephole=True), "gru": lambda: lj.gru(H),
    "rnn": lambda: lj.rnn(H), "layer_norm": lambda: lj.lstm(H, layer_norm=True), "slstm": lambda: lj.slstm(H),
    "mlstm": lambda: lj.mlstm(H, num_heads=2), "min_gru": lambda: lj.min_gru(H), "min_lstm": lambda: lj.min_lstm(H),
}


@pytest.mark.parametrize("name, impl", [(name, impl) for name, make in sorted(NAN_CELLS.items())
                                         for impl in ("auto", "scan", *(n for n, f in make().forms.items() if f.lengths))])
def test_non_finite_padding_changes_no_value_and_no_gradient(name, impl):
    """Defect b: NaN or Inf past ``lengths`` poisoned every weight gradient although the
    outputs were finite (every cell, the fused path too). Padding must not influence values or
    gradients at all, on the scan and on every form that takes lengths."""
    cell = NAN_CELLS[name]()
    params, xs = setup(cell)
    lengths = jnp.array([T, 2, 0])
    pad = jnp.arange(T)[None, :, None] >= lengths[:, None, None]
    poisoned = jnp.where(pad, jnp.array([jnp.nan, jnp.inf, -jnp.inf])[:, None, None], xs)
    clean = jnp.where(pad, 0.0, xs)

    def loss(p, x):
        ys, carry = lj.unroll(cell, p, x, lengths=lengths, impl=impl)
        return jnp.sum(ys ** 2) + sum(jnp.sum(c) for c in jax.tree.leaves(carry))

    got = jax.value_and_grad(loss, argnums=(0, 1))(params, poisoned)
    want = jax.value_and_grad(loss, argnums=(0, 1))(params, clean)
    helpers.assert_trees_close(got, want, **TOL)


def test_remat_chunk_larger_than_T_is_clamped():
    """Defect c: a chunk larger than T padded the sequence to the chunk (3x the memory)."""
    cell = lj.lstm(H)
    params, xs = setup(cell)
    grad = lambda chunk: jax.jit(jax.grad(lambda p: jnp.sum(lj.unroll(cell, p, xs, remat_chunk=chunk)[0])))
    big = grad(1000).lower(params).compile().memory_analysis().temp_size_in_bytes
    exact = grad(T).lower(params).compile().memory_analysis().temp_size_in_bytes
    assert big == exact
    helpers.assert_trees_close(grad(1000)(params), grad(None)(params), **TOL)


# ------------------------------------------------------------------------------ value checks

def test_checked_mode_checks_traced_values_and_costs_nothing_when_off():
    cell = lj.lstm(H)
    params, xs = setup(cell)

    def loss(p, x, n):
        return jnp.sum(jax.jit(lambda p, x, n: lj.unroll(cell, p, x, lengths=n)[0])(p, x, n))

    checked = lj.checked(loss)
    np.testing.assert_allclose(checked(params, xs, jnp.array([6, 2, 0])), loss(params, xs, jnp.array([6, 2, 0])))
    with pytest.raises(Exception, match=re.escape("`lengths` must lie in [0, 6]")):
        checked(params, xs, jnp.array([7, 2, 0]))
    with pytest.raises(Exception, match="`xs` must be finite within each sequence's length"):
        checked(params, xs.at[1, 1, 0].set(jnp.nan), jnp.array([6, 2, 0]))
    checked(params, xs.at[1, 4, 0].set(jnp.nan), jnp.array([6, 2, 0]))  # NaN in padding: fine
    off = str(jax.make_jaxpr(lambda p, x, n: lj.unroll(cell, p, x, lengths=n))(params, xs, jnp.array([6, 2, 0])))
    assert "check" not in off and "callback" not in off


def test_a_function_traced_under_checked_still_runs_plainly():
    """jit caches the trace made inside checked(); called directly afterwards it must run."""
    cell = lj.lstm(H)
    params, xs = setup(cell)
    f = jax.jit(lambda p, x, n: jnp.sum(lj.unroll(cell, p, x, lengths=n)[0]))
    n = jnp.array([6, 2, 0])
    want = lj.checked(f)(params, xs, n)
    np.testing.assert_allclose(f(params, xs, n), want)
    np.testing.assert_allclose(f(params, xs, jnp.array([9, 2, 0])), f(params, xs, jnp.array([6, 2, 0])))


# ------------------------------------------------------------------------------ review fixes

def test_cells_and_layers_are_static_pytrees():
    """A Cell is a pytree without leaves: tree maps do not walk into its functions, and an
    Equinox module holding one jit-compiles once for equal cells."""
    cell = lj.lstm(H)
    assert jax.tree.leaves({"cell": cell, "layer": lj.layer(cell), "x": 1.0}) == [1.0]
    eqx = pytest.importorskip("equinox")

    class Holder(eqx.Module):
        cell: lj.Cell
        params: lj.LSTMParams

        def __call__(self, xs):
            return lj.unroll(self.cell, self.params, xs)[0]

    params, xs = setup(cell)
    traces = []

    @eqx.filter_jit
    def run(module, xs):
        traces.append(1)
        return module(xs)

    np.testing.assert_array_equal(run(Holder(lj.lstm(H), params), xs), run(Holder(lj.lstm(H), params), xs))
    assert len(traces) == 1


def test_numpy_float64_inputs_are_float32_without_x64():
    """With x64 off (JAX's default) a NumPy float64 array becomes float32, as JAX does."""
    script = """
import jax, numpy as np, lstm_jax as lj
cell = lj.lstm(4)
p = cell.init(jax.random.key(0), 3)
p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
ys, carry = lj.unroll(cell, p64, np.random.randn(2, 5, 3), jax.tree.map(np.asarray, cell.init_carry(p, (2,))))
assert ys.dtype == np.float32, ys.dtype
print("ok")
"""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={"JAX_PLATFORMS": "cpu"})
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def test_jax_errors_inside_a_stack_keep_their_type():
    """A cell that branches in Python on a traced value: JAX's error, not a relabelling failure."""

    @dataclasses.dataclass(frozen=True, repr=False)
    class Branchy(lj.CellConfig):
        constructor = "branchy"
        hidden_size: int

        def build(self):
            inner = lj.rnn(self.hidden_size)

            def recur(params, carry, px, *, aux=False):
                if jnp.sum(px) > 0:  # a Python branch on a tracer
                    pass
                return inner.recur(params, carry, px, aux=aux)

            return make_cell(self, init=lambda key, n, dtype: inner.init(key, n, dtype=dtype),
                             init_carry=inner.init_carry, project=inner.project, recur=recur)

    net = lj.stack([lj.rnn(H), Branchy(H).build()])
    params = net.init(KEY, I, dtype=F64)
    with pytest.raises(jax.errors.ConcretizationTypeError) as info:
        net.apply(params, XS)
    assert "(in layers[1])" in getattr(info.value, "__notes__", [])


def test_unroll_true_is_not_unroll_one():
    assert lj.layer(PLAIN, unroll=True) != lj.layer(PLAIN)
    assert repr(lj.layer(PLAIN, unroll=True)) == "layer(lstm(4), unroll='all')"


def test_reset_to_passes_through_layers():
    _, xs = setup(lj.lstm(H))
    resets = jnp.zeros((B, T), bool).at[:, 3].set(True)
    for net in (lj.stack([lj.lstm(H), lj.gru(H)]), lj.bidirectional(lj.lstm(H), lj.gru(H))):
        params = net.init(KEY, I, dtype=F64)
        target = helpers.perturb(net.init_carry(params, (B,)), np.random.default_rng(0))
        ys, _ = net.apply(params, xs, resets=resets, reset_to=target)
        default, _ = net.apply(params, xs, resets=resets)
        assert not np.allclose(ys, default)  # the target was used
        if isinstance(net.config, lj.StackConfig):  # by hand: each layer restores its own target
            h, _ = lj.unroll(lj.lstm(H), params[0], xs, resets=resets, reset_to=target[0])
            h, _ = lj.unroll(lj.gru(H), params[1], h, resets=resets, reset_to=target[1])
            helpers.assert_trees_close(ys, h, **TOL)
    dec = lj.attention_decoder(H, memory_size=2)
    net = lj.layer(dec)
    p = net.init(KEY, I, dtype=F64)
    start = net.init_carry(p, memory=jnp.ones((B, 5, 2), F64))
    out, _ = net.apply(p, xs, start, resets=resets, reset_to=start)
    assert out.weights.shape == (B, T, 5)
    wrong = net.init_carry(p, memory=jnp.ones((B, 7, 2), F64))
    with pytest.raises(ValueError, match=re.escape("`reset_to.memory.values` must have shape (3, 5, 2)")):
        net.apply(p, xs, start, resets=resets, reset_to=wrong)


def test_bidirectional_errors_name_the_direction():
    net = lj.bidirectional(lj.lstm(H), lj.gru(H))
    params = net.init(KEY, I, dtype=F64)
    bad = params._replace(backward=params.backward._replace(w_h=params.backward.w_h[:, :4]))
    with pytest.raises(ValueError, match=re.escape("`params.backward.w_h` has shape (4, 4), but gru(4) needs")):
        net.apply(bad, XS)


def test_replace_derives_defaults_again():
    dec = lj.attention_decoder(16, memory_size=8)
    assert dec.config.replace(hidden_size=32) == lj.attention_decoder(32, memory_size=8).config
    assert dec.config.replace(style="bahdanau").build() == lj.attention_decoder(16, memory_size=8, style="bahdanau")
    grid = lj.grid_lstm(4, 2, depth_lstm=False)
    assert grid.config.replace(depth_lstm=True).build() == lj.grid_lstm(4, 2)


def test_library_initialisers_compare_by_value():
    inits = lj.initializers
    assert lj.lstm(8, kernel_init=inits.glorot_uniform()) == lj.lstm(8, kernel_init=inits.glorot_uniform())
    assert inits.lecun_normal() == inits.lecun_normal() and inits.pytorch_uniform(4) == inits.pytorch_uniform(4)
    key = jax.random.key(0)
    np.testing.assert_array_equal(inits.glorot_uniform()(key, (5, 7), F64),
                                  jax.nn.initializers.glorot_uniform()(key, (5, 7), F64))
