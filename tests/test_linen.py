"""lstm_jax.linen: the Flax Linen modules over the functional core.

Parity with ``flax.linen.RNN`` over Flax's cells on the same (mapped) weights with
``seq_lengths``, ``reverse`` (both output orders) and ``flax.linen.Bidirectional``: outputs,
final carries and gradients; the ``params`` collection's layout; gradients equal to the
functional path's; dropout under ``deterministic``; errors. Flax's internals are not
strict-promotion clean, so its calls run under standard promotion; everything is float64.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax
from flax import linen as nn
from helpers import assert_trees_close

import lstm_jax as lj
from lstm_jax.linen import RNN, Bidirectional, to_collection

B, T, I, H = 2, 5, 3, 4
F64 = jnp.float64
LENGTHS = jnp.array([5, 3])
MASK = (jnp.arange(T) < LENGTHS[:, None])[..., None]
standard = lambda: jax.numpy_dtype_promotion("standard")


def xs_of(seed=0, shape=(B, T, I)):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), F64)


def perturbed(tree, seed):
    """Flax's biases start at zero: random values everywhere, so every weight matters."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: a + 0.3 * jnp.asarray(rng.standard_normal(a.shape), a.dtype), tree)


def from_flax(kind, p):
    """Flax Linen's per-gate Dense kernels and biases in our fused ``[in, G*H]`` layout: LSTM
    gates (i, f, g, o) (``LSTMCell`` and ``OptimizedLSTMCell`` share names), GRU (r, z, n)
    with ``hn``'s bias inside ``r * (.)``: our reset-after GRU's ``b_hn``."""
    cat = lambda *a: jnp.concatenate(a, axis=-1)
    gates = "rzn" if kind == "GRUCell" else "ifgo"
    w_x = cat(*(p["i" + g]["kernel"] for g in gates))
    w_h = cat(*(p["h" + g]["kernel"] for g in gates))
    if kind == "GRUCell":
        return lj.GRUParams(w_x, w_h, cat(*(p["i" + g]["bias"] for g in gates)), p["hn"]["bias"])
    return lj.LSTMParams(w_x, w_h, cat(*(p["h" + g]["bias"] for g in gates)))


def flax_carry(carry):
    """Our carry in Flax's form: the LSTM's is ``(c, h)``, the GRU's ``h``."""
    return (carry.cell, carry.hidden) if isinstance(carry, lj.LSTMState) else carry.hidden


def loss_of(ys, carry):
    """Every output at valid steps (Flax computes garbage past them) and every carry leaf."""
    w = jnp.arange(1.0, 1.0 + ys.shape[-1], dtype=F64)
    return jnp.sum(jnp.where(MASK, jnp.sin(ys) * w, 0.0)) + sum(jnp.sum(jnp.cos(c)) for c in jax.tree.leaves(carry))


def losses_and_grads(calls, xs):
    """For each ``(module, variables, call keywords)``, ``((loss, (ys, carry)), (variables
    grads, xs grads))`` of :func:`loss_of`; all in one jitted program (one compile)."""
    def one(module, kw, v, x):
        with standard():
            carry, ys = module.apply(v, x, return_carry=True, **kw)
        return loss_of(ys, carry), (ys, carry)

    grads = [jax.value_and_grad(functools.partial(one, m, kw), argnums=(0, 1), has_aux=True) for m, _, kw in calls]
    return jax.jit(lambda vs, x: [g(v, x) for g, v in zip(grads, vs)])([v for _, v, _ in calls], xs)


def assert_parity(ours, theirs, to_ours):
    """Equal outputs at valid steps (ours: zeros past them), final carries (``to_ours`` maps
    ours to Flax's form), losses, input gradients and weight gradients (Flax's mapped by
    ``to_ours``)."""
    (l_o, (ys_o, c_o)), (g_o, gx_o) = ours
    (l_t, (ys_t, c_t)), (g_t, gx_t) = theirs
    np.testing.assert_allclose(jnp.where(MASK, ys_o, 0.0), jnp.where(MASK, ys_t, 0.0), rtol=1e-10, atol=1e-12)
    assert not jnp.any(jnp.where(MASK, 0.0, ys_o))
    assert_trees_close(to_ours(c_o), c_t, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(l_o, l_t, rtol=1e-12)
    np.testing.assert_allclose(gx_o, gx_t, rtol=1e-9, atol=1e-12)
    assert_trees_close(g_o, to_ours(g_t), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell"])
def test_matches_flax_linen_rnn(kind):
    """nn.RNN over Flax's cell and ours over lj.lstm/lj.gru: equal outputs (at valid steps),
    final carries, input and weight gradients, with seq_lengths, forwards and reversed (in
    reading order, Flax's default, and with keep_order). (Linen's OptimizedLSTMCell has
    LSTMCell's parameters: tests/test_flax_parity.py and the NNX tests cover it.)"""
    cell = getattr(nn, kind)(H, param_dtype=F64, dtype=F64)
    xs = xs_of()
    with standard():
        v_theirs = perturbed(nn.RNN(cell).init(jax.random.key(0), xs), seed=1)
    v_ours = {"params": to_collection(from_flax(kind, v_theirs["params"]["cell"]))}
    ours = RNN(lj.gru(H) if kind == "GRUCell" else lj.lstm(H), dtype=F64)
    calls = [dict(seq_lengths=LENGTHS, **kw) for kw in ({}, dict(reverse=True), dict(reverse=True, keep_order=True))]

    def to_ours(tree):  # Flax's params grads into our collection; our carry into Flax's form
        if isinstance(tree, (lj.LSTMState, lj.GRUState)):
            return flax_carry(tree)
        return {"params": to_collection(from_flax(kind, tree["params"]["cell"]))} if "cell" in tree["params"] else tree

    results = losses_and_grads([(m, v, kw) for kw in calls for m, v in ((ours, v_ours), (nn.RNN(cell), v_theirs))], xs)
    for o, t in zip(results[::2], results[1::2]):
        assert_parity(o, t, to_ours)


def test_bidirectional_matches_flax():
    """flax.linen.Bidirectional over our RNNs, and our Bidirectional (which adds resets), equal
    nn.Bidirectional over Flax's RNNs: outputs, (forward, backward) carries, gradients."""
    xs = xs_of()
    theirs = nn.Bidirectional(nn.RNN(nn.LSTMCell(H, param_dtype=F64)), nn.RNN(nn.GRUCell(2, param_dtype=F64)))
    with standard():
        v_theirs = perturbed(theirs.init(jax.random.key(0), xs), seed=2)
    p = v_theirs["params"]
    fwd, bwd = from_flax("LSTMCell", p["forward_rnn"]["cell"]), from_flax("GRUCell", p["backward_rnn"]["cell"])
    v_ours = {"params": {"forward_rnn": to_collection(fwd), "backward_rnn": to_collection(bwd)}}
    halves = RNN(lj.lstm(H), dtype=F64), RNN(lj.gru(2), dtype=F64)

    def to_ours(tree):
        if isinstance(tree, tuple):
            return tuple(map(flax_carry, tree))
        t = tree["params"]
        if "cell" not in t["forward_rnn"]:
            return tree
        return {"params": {"forward_rnn": to_collection(from_flax("LSTMCell", t["forward_rnn"]["cell"])),
                           "backward_rnn": to_collection(from_flax("GRUCell", t["backward_rnn"]["cell"]))}}

    kw = dict(seq_lengths=LENGTHS)
    t, *ours = losses_and_grads([(theirs, v_theirs, kw), (nn.Bidirectional(*halves), v_ours, kw),
                                 (Bidirectional(*halves), v_ours, kw)], xs)
    for o in ours:
        assert o[0][1][0].shape == (B, T, H + 2)
        assert_parity(o, t, to_ours)


# ------------------------------------------------------------------------------ layout and the functional path

class Tagger(nn.Module):
    """A parent module: our RNN is one submodule among others."""

    @nn.compact
    def __call__(self, xs):
        return nn.Dense(1, param_dtype=F64)(RNN(lj.lstm(H, peephole=True), dtype=F64)(xs))


def test_params_collection_mirrors_our_fields():
    xs = xs_of()
    shapes = lambda v: jax.tree.map(lambda a: (a.shape, a.dtype), v)
    init = lambda module: jax.eval_shape(module.init, jax.random.key(0), xs)  # the layout, no compile
    v = init(RNN(lj.lstm(H), dtype=F64))
    want = to_collection(jax.eval_shape(lambda k: lj.lstm(H).init(k, I, dtype=F64), jax.random.key(0)))
    assert shapes(v) == {"params": shapes(want)} and set(v["params"]) == {"w_x", "w_h", "b"}
    assert shapes(init(RNN(lj.lstm(H)))) == shapes(v)  # without a dtype: the inputs' (float64)
    net = lj.stack([lj.layer(lj.lstm(H), learn_initial_carry=True), lj.bidirectional(lj.gru(H), lj.gru(H))])
    v = init(RNN(net, dtype=F64))
    assert set(v["params"]) == {"layers_0", "layers_1"}
    assert set(v["params"]["layers_0"]) == {"cell", "initial_carry"}
    assert set(v["params"]["layers_0"]["initial_carry"]) == {"hidden", "cell"}
    assert set(v["params"]["layers_1"]) == {"forward", "backward"}
    assert set(v["params"]["layers_1"]["backward"]) == {"w_x", "w_h", "b", "b_hn"}
    v = init(Tagger())
    assert set(v["params"]) == {"RNN_0", "Dense_0"}
    assert set(v["params"]["RNN_0"]) == {"w_x", "w_h", "b", "peephole_i", "peephole_f", "peephole_o"}


def test_gradients_equal_the_functional_path():
    """A stack with a learned initial carry, with lengths and resets: module.apply's values
    and gradients w.r.t. the params collection are the functional layer's."""
    net = lj.stack([lj.layer(lj.lstm(H), learn_initial_carry=True), lj.gru(H)])
    params = perturbed(net.init(jax.random.key(0), I, dtype=F64), seed=3)
    xs, resets = xs_of(), jnp.zeros((B, T), bool).at[:, 2].set(True)
    module = RNN(net, dtype=F64)

    def ours(v):
        carry, ys = module.apply(v, xs, seq_lengths=LENGTHS, resets=resets, return_carry=True)
        return loss_of(ys, carry), (ys, carry)

    def functional(p):
        ys, carry = net.apply(p, xs, lengths=LENGTHS, resets=resets)
        return loss_of(ys, carry), (ys, carry)

    (l_o, out_o), g_o = jax.jit(jax.value_and_grad(ours, has_aux=True))({"params": to_collection(params)})
    (l_f, out_f), g_f = jax.jit(jax.value_and_grad(functional, has_aux=True))(params)
    np.testing.assert_allclose(l_o, l_f, rtol=1e-12)
    assert_trees_close(out_o, out_f)
    assert_trees_close(g_o, {"params": to_collection(g_f)})
    carry = module.apply({"params": to_collection(params)}, (B,), method="initialize_carry")
    assert_trees_close(carry, net.init_carry(params, (B,)))


def test_call_conventions():
    """time_major at construction or at the call, and a cell's layer options (one jit)."""
    xs, p = xs_of(), lj.gru(H).init(jax.random.key(0), I, dtype=F64)
    swap = lambda a: jnp.swapaxes(a, 0, 1)

    @jax.jit
    def outputs(v):
        return (lj.layer(lj.gru(H)).apply(p, xs)[0], swap(RNN(lj.gru(H), time_major=True).apply(v, swap(xs))),
                swap(RNN(lj.gru(H)).apply(v, swap(xs), time_major=True)),
                RNN(lj.gru(H), impl="scan", unroll=2).apply(v, xs))

    want, *got = outputs({"params": to_collection(p)})
    for ys in got:
        assert_trees_close(ys, want)


def test_dropout_follows_deterministic():
    """As nn.Dropout: `deterministic` given once (attribute or call); keys from the 'dropout'
    stream; deterministic runs equal the functional layer without a key (one jit)."""
    net = lj.stack([lj.gru(H), lj.gru(H)], dropout_rate=0.5)
    xs, params = xs_of(), net.init(jax.random.key(0), I, dtype=F64)
    rngs = {"dropout": jax.random.key(1)}

    @jax.jit
    def outputs(v):
        return (net.apply(params, xs)[0], RNN(net).apply(v, xs, deterministic=True),
                RNN(net, deterministic=True).apply(v, xs), RNN(net).apply(v, xs, deterministic=False, rngs=rngs),
                RNN(net, deterministic=False).apply(v, xs, rngs=rngs))

    clean, clean_call, clean_attribute, noisy_call, noisy_attribute = outputs({"params": to_collection(params)})
    assert_trees_close(clean_call, clean)
    assert_trees_close(clean_attribute, clean)
    assert not np.allclose(noisy_call, clean)
    assert_trees_close(noisy_attribute, noisy_call)
    with pytest.raises(ValueError, match=r'Parameter "deterministic" must be passed to the constructor or at call'):
        RNN(net).init(jax.random.key(0), xs)
    with pytest.raises(ValueError, match=r'Parameter "deterministic" was passed to the constructor and at call'):
        RNN(net, deterministic=True).init(jax.random.key(0), xs, deterministic=True)
    jax.eval_shape(RNN(lj.gru(H)).init, jax.random.key(0), xs)  # no randomness: no `deterministic` needed


def test_errors_name_the_argument():
    xs = jnp.ones((B, T, I), jnp.float32)
    with pytest.raises(TypeError, match=r"`cell` must be a lstm_jax Cell .* got LSTMCell"):
        RNN(nn.LSTMCell(H)).init(jax.random.key(0), xs)
    with pytest.raises(ValueError, match=r"`time_major`: layer\(lstm\(4\)\) is a Layer, which has its own options"):
        RNN(lj.layer(lj.lstm(H)), time_major=True).init(jax.random.key(0), xs)
    v = RNN(lj.lstm(H)).init(jax.random.key(0), xs)
    with pytest.raises(flax.errors.ScopeParamShapeError, match=r'parameter "w_x" .* expected to generate shape '
                                                               r'\(4, 16\), but the existing parameter .* \(3, 16\)'):
        RNN(lj.lstm(H)).apply(v, jnp.ones((B, T, H), jnp.float32))  # Flax's own shape check
    with pytest.raises(TypeError, match=r"`xs` has dtype float64 but the parameters are float32"):
        RNN(lj.lstm(H)).apply(v, xs.astype(F64))
