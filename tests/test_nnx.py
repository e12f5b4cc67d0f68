"""lstm_jax.nnx: the Flax NNX modules over the functional core.

Parity with ``flax.nnx.RNN`` over Flax's own cells on the same (mapped) weights: outputs,
final carries and gradients with ``seq_lengths``, an initial carry and ``reverse``; the
drop-in: one model and train step, with Flax's RNN or ours in it, and the functional path
(lj.layer + optax) train alike through ``nnx.Optimizer``; NNX state through Orbax; the
train/eval switch for dropout; Flax's call-time overrides; errors.
Flax's internals are not strict-promotion clean, so its calls (and optax's) run under
standard promotion; everything is float64.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import assert_trees_close, delayed_recall

import lstm_jax as lj
from lstm_jax.nnx import RNN, Bidirectional, values

B, T, I, H = 2, 5, 3, 4
F64 = jnp.float64
LENGTHS = jnp.array([5, 3])
standard = lambda: jax.numpy_dtype_promotion("standard")


def xs_of(seed=0, shape=(B, T, I)):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), F64)


# ------------------------------------------------------------------------------ Flax's cells

def flax_cell(kind, rngs):
    return getattr(nnx, kind)(I, H, param_dtype=F64, dtype=F64, rngs=rngs)


def perturbed(module, seed):
    """Flax's biases start at zero: random values everywhere, so every weight matters."""
    rng = np.random.default_rng(seed)
    state = nnx.state(module, nnx.Param)
    nnx.update(module, jax.tree.map(lambda a: a + 0.3 * jnp.asarray(rng.standard_normal(a.shape), a.dtype), state))
    return module


def from_flax(kind, p):
    """Flax's per-gate (or stacked) Linear kernels and biases in our fused ``[in, G*H]``
    layout: LSTM gates (i, f, g, o), GRU (r, z, n). Flax's GRU has no recurrent candidate
    bias (``n = tanh(x W_in + b_in + r * (h W_hn))``): our reset-after GRU with ``b_hn = 0``."""
    cat = lambda *a: jnp.concatenate(a, axis=-1)
    if kind == "LSTMCell":  # one Linear per gate; Flax's attribute for "if" is "if_"
        gates = ("i", "f_", "g", "o")
        return lj.LSTMParams(w_x=cat(*(p["i" + g]["kernel"] for g in gates)),
                             w_h=cat(*(p["h" + g.rstrip("_")]["kernel"] for g in gates)),
                             b=cat(*(p["h" + g.rstrip("_")]["bias"] for g in gates)))
    if kind == "OptimizedLSTMCell":  # the four gates stacked in one Linear each side
        return lj.LSTMParams(w_x=p["dense_i"]["kernel"], w_h=p["dense_h"]["kernel"], b=p["dense_h"]["bias"])
    if kind == "GRUCell":
        return lj.GRUParams(w_x=p["dense_i"]["kernel"], w_h=p["dense_h"]["kernel"], b=p["dense_i"]["bias"],
                            b_hn=jnp.zeros((H,), F64))
    return lj.RNNParams(w_x=p["dense_i"]["kernel"], w_h=p["dense_h"]["kernel"], b=p["dense_i"]["bias"])


OURS = {"LSTMCell": lj.lstm(H), "OptimizedLSTMCell": lj.lstm(H), "GRUCell": lj.gru(H), "SimpleCell": lj.rnn(H)}


def flax_carry(kind, carry):
    """Our carry in Flax's form: the LSTM's is ``(c, h)``, the others' ``h``."""
    return (carry.cell, carry.hidden) if "LSTM" in kind else carry.hidden


def loss_of(ys, carry, mask):
    """A loss that reaches every output (at valid steps: Flax computes garbage past them) and
    every carry leaf, with unequal weights."""
    w = jnp.arange(1.0, 1.0 + ys.shape[-1], dtype=F64)
    return jnp.sum(jnp.where(mask, jnp.sin(ys) * w, 0.0)) + sum(jnp.sum(jnp.cos(c)) for c in jax.tree.leaves(carry))


@pytest.mark.parametrize("kind", ["LSTMCell", "OptimizedLSTMCell", "GRUCell", "SimpleCell"])
def test_matches_flax_nnx_rnn(kind):
    """Outputs, final carries, input and weight gradients equal flax.nnx.RNN's, with
    seq_lengths, an initial carry, and reverse (outputs in reading order, as Flax returns them)."""
    theirs = nnx.RNN(perturbed(flax_cell(kind, nnx.Rngs(0)), seed=1))
    params = from_flax(kind, nnx.to_pure_dict(nnx.state(theirs.cell, nnx.Param)))
    ours = RNN(OURS[kind], I, rngs=nnx.Rngs(0), dtype=F64, params=params)
    xs = xs_of()
    carry0 = jax.tree.map(lambda a: 0.5 * jnp.ones_like(a), ours.initialize_carry(B))
    mask = (jnp.arange(T) < LENGTHS[:, None])[..., None]

    calls = [(theirs, dict(initial_carry=flax_carry(kind, carry0))), (ours, dict(initial_carry=carry0)),
             (theirs, dict(reverse=True)), (ours, dict(reverse=True))]
    results = losses_and_grads(calls, xs, mask)
    for ((l_t, (ys_t, c_t)), (g_t, gx_t)), ((l_o, (ys_o, c_o)), (g_o, gx_o)) in zip(results[::2], results[1::2]):
        np.testing.assert_allclose(jnp.where(mask, ys_o, 0.0), jnp.where(mask, ys_t, 0.0), rtol=1e-10, atol=1e-12)
        assert not jnp.any(jnp.where(mask, 0.0, ys_o))  # ours: zeros past each length
        assert_trees_close(flax_carry(kind, c_o), c_t, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(l_o, l_t, rtol=1e-12)
        np.testing.assert_allclose(gx_o, gx_t, rtol=1e-9, atol=1e-12)
        want = from_flax(kind, nnx.to_pure_dict(g_t)["cell"])._asdict()
        got = nnx.to_pure_dict(g_o)["params"]
        if kind == "GRUCell":  # Flax has no b_hn (ours is a parameter, held at zero here)
            del want["b_hn"], got["b_hn"]
        assert_trees_close(got, {k: v for k, v in want.items() if v is not None}, rtol=1e-9, atol=1e-12)


def losses_and_grads(calls, xs, mask):
    """For each ``(module, call keywords)``, ``((loss, (ys, carry)), (module grads, xs grads))``
    of :func:`loss_of` over ``module(xs, seq_lengths=LENGTHS, return_carry=True, **kw)``; all in
    one nnx.jit (one compile)."""
    def run(kw, module, x):
        with standard():
            carry, ys = module(x, seq_lengths=LENGTHS, return_carry=True, **kw)
        return loss_of(ys, carry, mask), (ys, carry)

    grads = [nnx.value_and_grad(functools.partial(run, kw), argnums=(0, 1), has_aux=True) for _, kw in calls]
    return nnx.jit(lambda modules, x: [g(m, x) for g, m in zip(grads, modules)])([m for m, _ in calls], xs)


def test_bidirectional_matches_flax():
    """Our Bidirectional over our RNNs, and flax.nnx.Bidirectional over them (which passes its
    'carry' stream as rngs), equal flax.nnx.Bidirectional over Flax's RNNs (the carry a pair,
    forward first), and equal one RNN over lj.bidirectional."""
    f_cell, b_cell = (perturbed(flax_cell("OptimizedLSTMCell", nnx.Rngs(s)), seed=s) for s in (1, 2))
    pf, pb = (from_flax("OptimizedLSTMCell", nnx.to_pure_dict(nnx.state(c, nnx.Param))) for c in (f_cell, b_cell))
    halves = [RNN(lj.lstm(H), I, rngs=nnx.Rngs(0), dtype=F64, params=p) for p in (pf, pb)]
    modules = [nnx.Bidirectional(nnx.RNN(f_cell), nnx.RNN(b_cell)), Bidirectional(*halves),
               nnx.Bidirectional(*halves)]
    one = RNN(lj.bidirectional(lj.lstm(H), lj.lstm(H)), I, rngs=nnx.Rngs(0), dtype=F64,
              params=lj.BidirectionalParams(pf, pb))
    xs, mask = xs_of(), (jnp.arange(T) < LENGTHS[:, None])[..., None]

    @nnx.jit
    def outputs(modules, one, xs):
        with standard():
            return [m(xs, seq_lengths=LENGTHS, return_carry=True) for m in modules], \
                one(xs, seq_lengths=LENGTHS, return_carry=True)

    (((cf_t, cb_t), ys_t), *ours), (carry, ys_one) = outputs(modules, one, xs)
    for (cf, cb), ys in ours:
        assert ys.shape == (B, T, 2 * H)
        np.testing.assert_allclose(jnp.where(mask, ys, 0.0), jnp.where(mask, ys_t, 0.0), rtol=1e-10, atol=1e-12)
        assert_trees_close((flax_carry("LSTM", cf), flax_carry("LSTM", cb)), (cf_t, cb_t), rtol=1e-10, atol=1e-12)
    (cf, cb), ys = ours[0]
    assert_trees_close(ys_one, ys)
    assert_trees_close(carry, lj.BidirectionalCarry(cf, cb))


# ------------------------------------------------------------------------------ conventions

def test_params_are_our_namedtuple_of_nnx_params():
    rnn = RNN(lj.lstm(H, peephole=True), I, rngs=nnx.Rngs(0))
    assert isinstance(rnn.params, lj.LSTMParams) and isinstance(rnn.params.w_x, nnx.Param)
    state = nnx.to_pure_dict(nnx.state(rnn, nnx.Param))
    assert set(state["params"]) == {"w_x", "w_h", "b", "peephole_i", "peephole_f", "peephole_o"}
    assert state["params"]["w_x"].shape == (I, 4 * H) and state["params"]["w_x"].dtype == jnp.float32
    same = lj.layer(lj.lstm(H, peephole=True))
    assert rnn.layer == same and hash(rnn.layer) == hash(same)  # a static, hashable field
    assert not nnx.state(rnn, nnx.RngState)  # no randomness, no rng state
    assert RNN(lj.lstm(H), I, rngs=nnx.Rngs(0)).params.w_x[...].shape == (I, 4 * H)
    stacked = RNN(lj.stack([lj.lstm(H), lj.gru(H)]), I, rngs=nnx.Rngs(0))
    assert list(nnx.to_pure_dict(nnx.state(stacked, nnx.Param))["params"]) == [0, 1]


def test_call_conventions_equal_the_functional_layer():
    """time_major, reverse and keep_order (at construction or call), resets, step and
    initialize_carry are the functional layer's (one nnx.jit)."""
    layer, xs = lj.layer(lj.gru(H)), xs_of()
    rnn = RNN(lj.gru(H), I, rngs=nnx.Rngs(0), dtype=F64)
    built = RNN(lj.gru(H), I, rngs=nnx.Rngs(0), dtype=F64, params=values(rnn.params), reverse=True, keep_order=True,
                time_major=True)
    resets = jnp.zeros((B, T), bool).at[:, 2].set(True)
    swap = lambda a: jnp.swapaxes(a, 0, 1)

    @nnx.jit
    def pairs(rnn, built, xs, resets):
        p = values(rnn.params)
        back = lj.layer(lj.gru(H), reverse=True).apply(p, xs, lengths=LENGTHS)[0]   # in input order
        ys, carry = layer.apply(p, xs, lengths=LENGTHS)
        c = rnn.initialize_carry(B)
        return [(rnn(xs, seq_lengths=LENGTHS, return_carry=True), (carry, ys)),
                (rnn(swap(xs), time_major=True), swap(layer.apply(p, xs)[0])),
                (rnn(xs, seq_lengths=LENGTHS, reverse=True, keep_order=True), back),
                (rnn(xs, seq_lengths=LENGTHS, reverse=True), swap(lj.reverse_within_lengths(swap(back), LENGTHS))),
                (built(xs, time_major=False, seq_lengths=LENGTHS), back),
                (rnn(xs, resets=resets), layer.apply(p, xs, resets=resets)[0]),
                (c, layer.init_carry(p, (B,))),
                (rnn.step(c, xs[:, 0]), layer.step(p, c, xs[:, 0]))]

    for got, want in pairs(rnn, built, xs, resets):
        assert_trees_close(got, want)


def test_any_cell_drops_in():
    """Cells Flax does not have run the same way under nnx.jit, equal to the functional path."""
    xs = xs_of()
    cells = (lj.lstm(H, peephole=True), lj.clockwork(H, num_modules=2), lj.slstm(H, num_heads=2), lj.min_gru(H),
             lj.depth_gated_lstm(H, num_layers=2, dropout_rate=0.1))  # its noise: deterministic here
    for cell in cells:
        rnn = RNN(cell, I, rngs=nnx.Rngs(0), dtype=F64, deterministic=True)
        ys, want = nnx.jit(lambda m, x, cell=cell: (m(x), lj.layer(cell).apply(values(m.params), x)[0]))(rnn, xs)
        assert ys.shape == (B, T, H)
        assert_trees_close(ys, want)


# ------------------------------------------------------------------------------ training

class Model(nnx.Module):
    """The usual NNX sequence model: a recurrent layer and a Linear head on every step."""

    def __init__(self, rnn, rngs):
        self.rnn = rnn
        self.head = nnx.Linear(H, 1, param_dtype=F64, dtype=F64, rngs=rngs)

    def __call__(self, xs):
        return self.head(self.rnn(xs))


def test_drop_in_training_equals_flax_and_the_functional_path():
    """The same model code and nnx.jit train step, with nnx.RNN(nnx.OptimizedLSTMCell) or with
    our RNN(lj.lstm(H)) in it (same weights: Flax's stacked kernels are our fused ones), and
    the functional path (lj.layer + optax): 20 Adam steps of nnx.Optimizer give the same
    losses and parameters."""
    rngs = nnx.Rngs(0)
    model = Model(RNN(lj.lstm(H), I, rngs=rngs, dtype=F64), rngs)
    flax_model = Model(nnx.RNN(flax_cell("OptimizedLSTMCell", rngs)), rngs)
    flax_model.rnn.cell.dense_i.kernel[...] = model.rnn.params.w_x[...]
    flax_model.rnn.cell.dense_h.kernel[...] = model.rnn.params.w_h[...]
    flax_model.rnn.cell.dense_h.bias[...] = model.rnn.params.b[...]
    nnx.update(flax_model.head, nnx.state(model.head))
    tx = optax.adam(5e-2)
    optimizers = [nnx.Optimizer(m, tx, wrt=nnx.Param) for m in (model, flax_model)]
    data = [delayed_recall(jax.random.key(s), 8, T, I, 1, F64) for s in range(21)]  # y_t = x_{t-1, 0}

    @nnx.jit
    def train_step(model, optimizer, xs, ys):  # unchanged whichever RNN the model holds
        with standard():
            loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(xs) - ys) ** 2))(model)
            optimizer.update(model, grads)
        return loss

    layer = lj.layer(lj.lstm(H))
    params = (values(model.rnn.params), model.head.kernel[...], model.head.bias[...])

    def loss_fn(p, xs, ys):
        hs = layer.apply(p[0], xs)[0]
        return jnp.mean((hs @ p[1] + p[2] - ys) ** 2)

    @jax.jit
    def step(p, opt_state, xs, ys):
        loss, grads = jax.value_and_grad(loss_fn)(p, xs, ys)
        with standard():
            updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    params0, opt_state = params, tx.init(params)
    for xs, ys in data[:20]:
        ours, flax_loss = (train_step(m, o, xs, ys) for m, o in zip((model, flax_model), optimizers))
        params, opt_state, loss = step(params, opt_state, xs, ys)
        np.testing.assert_allclose(ours, loss, rtol=1e-9)
        np.testing.assert_allclose(flax_loss, loss, rtol=1e-9)
    assert loss_fn(params, *data[20]) < 0.75 * loss_fn(params0, *data[20])  # it learned (held-out batch)
    assert_trees_close(values(model.rnn.params), params[0], rtol=1e-9, atol=1e-12)
    assert_trees_close((model.head.kernel[...], model.head.bias[...]), params[1:], rtol=1e-9, atol=1e-12)
    cell = flax_model.rnn.cell
    assert_trees_close((cell.dense_i.kernel[...], cell.dense_h.kernel[...], cell.dense_h.bias[...]), params[0][:3],
                       rtol=1e-8, atol=1e-10)


def test_dropout_follows_train_and_eval():
    """A stack with dropout draws keys from the 'dropout' stream in training mode (the default,
    as nnx.Dropout) and none after model.eval() or with deterministic=True; a key given at
    the call is the functional key."""
    net = lj.stack([lj.lstm(H), lj.lstm(H)], dropout_rate=0.5)
    rnn = RNN(net, I, rngs=nnx.Rngs(0, dropout=1), dtype=F64)
    xs, key = xs_of(), jax.random.key(7)

    @nnx.jit
    def outputs(rnn, xs, key):
        p = values(rnn.params)
        return (rnn(xs), rnn(xs), rnn(xs, rngs=key), net.apply(p, xs, key=key)[0], rnn(xs, deterministic=True),
                net.apply(p, xs)[0])

    first, second, keyed, want_keyed, clean, want_clean = outputs(rnn, xs, key)
    assert not np.allclose(first, second) and not np.allclose(first, clean)  # a fresh key per call
    assert_trees_close(keyed, want_keyed)
    assert_trees_close(clean, want_clean)
    assert_trees_close(outputs(RNN(net, I, rngs=nnx.Rngs(0, dropout=1), dtype=F64), xs, key)[0], first)  # seeded
    rnn.eval()
    assert rnn.deterministic is True
    assert_trees_close(rnn(xs), want_clean)
    assert_trees_close(outputs(nnx.view(rnn, deterministic=False), xs, key)[2], want_keyed)
    with pytest.raises(ValueError, match=r"draws random numbers \(dropout\), so `deterministic` must be set"):
        RNN(net, I, rngs=nnx.Rngs(0), dtype=F64, deterministic=None)(xs)


# ------------------------------------------------------------------------------ state

def test_split_merge_and_orbax_checkpoint(tmp_path):
    """nnx.split -> Orbax StandardCheckpointer -> restore into the abstract state -> nnx.merge
    gives the same module: params (a stack's tuple, a learned carry) and the dropout stream."""
    import orbax.checkpoint as ocp

    def build(seed):
        net = lj.stack([lj.layer(lj.lstm(H), learn_initial_carry=True), lj.gru(H)], dropout_rate=0.25)
        return RNN(net, I, rngs=nnx.Rngs(seed), dtype=F64)

    model, xs, call = build(0), xs_of(), nnx.jit(lambda m, x: m(x))
    call(model, xs)  # advance the dropout stream
    _, state = nnx.split(model)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "ckpt", state)
    checkpointer.wait_until_finished()

    graphdef_a, abstract = nnx.split(nnx.eval_shape(lambda: build(1)))
    restored = nnx.merge(graphdef_a, checkpointer.restore(tmp_path / "ckpt", abstract))
    checkpointer.close()
    assert_trees_close(call(restored, xs), call(model, xs))  # same params and the same next dropout key
    model.eval(), restored.eval()
    assert_trees_close(call(restored, xs), call(model, xs))
    assert_trees_close(call(nnx.merge(*nnx.split(model)), xs), call(model, xs))


# ------------------------------------------------------------------------------ errors

def test_errors_name_the_argument():
    rngs = nnx.Rngs(0)
    with pytest.raises(TypeError, match=r"`cell` must be a lstm_jax Cell .* or Layer .* got OptimizedLSTMCell"):
        RNN(nnx.OptimizedLSTMCell(I, H, rngs=rngs), I, rngs=rngs)
    with pytest.raises(ValueError, match=r"`in_features` must be a positive int, got 0"):
        RNN(lj.lstm(H), 0, rngs=rngs)
    with pytest.raises(TypeError, match=r"`rngs` must be an nnx.Rngs \(e.g. nnx.Rngs\(0\)\), got int"):
        RNN(lj.lstm(H), I, rngs=0)
    with pytest.raises(ValueError, match=r"`reverse`: layer\(lstm\(4\)\) is a Layer, which has its own options"):
        RNN(lj.layer(lj.lstm(H)), I, rngs=rngs, reverse=True)
    with pytest.raises(TypeError, match=r"`dtype` must be a floating dtype"):
        RNN(lj.lstm(H), I, rngs=rngs, dtype=jnp.int32)
    with pytest.raises(ValueError, match=r"`params.w_x` must have shape \(3, 16\) \(layer\(lstm\(4\)\).init"):
        RNN(lj.lstm(H), I, rngs=rngs, params=lj.lstm(H).init(jax.random.key(0), I + 1))
    with pytest.raises(ValueError, match=r"`params.peephole_i` is missing"):
        RNN(lj.lstm(H, peephole=True), I, rngs=rngs, params=lj.lstm(H).init(jax.random.key(0), I))
    rnn = RNN(lj.lstm(H), I, rngs=rngs)
    with pytest.raises(ValueError, match=r"`xs` must have shape \[\.\.\., T, I\] with last axis 3 .* \(2, 5, 4\)"):
        rnn(jnp.ones((B, T, I + 1), jnp.float32))
    with pytest.raises(TypeError, match=r"`xs` has dtype float64 but the parameters are float32"):
        rnn(jnp.ones((B, T, I), F64))
    stacked = RNN(lj.stack([lj.lstm(H), lj.lstm(H)]), I, rngs=rngs)
    with pytest.raises(ValueError, match=r"`reverse=True` needs a single layer"):
        stacked(jnp.ones((B, T, I), jnp.float32), reverse=True)
