"""lstm_jax.eqx: the Equinox module over the functional core.

``eqx.filter_jit`` and ``eqx.filter_grad`` through the module equal the functional layer;
Optax on ``eqx.filter(model, eqx.is_array)`` trains it as the functional path does; dropout
from the call's key, off under ``eqx.nn.inference_mode``; errors.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close, delayed_recall

import lstm_jax as lj

eqx = pytest.importorskip("equinox")
from lstm_jax.eqx import RNN  # noqa: E402  (needs equinox)

B, T, I, H = 2, 5, 3, 4
F64 = jnp.float64
LENGTHS = jnp.array([5, 3])


def xs_of(seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal((B, T, I)), F64)


def test_filter_jit_and_grad_equal_the_functional_path():
    net = lj.stack([lj.layer(lj.lstm(H), learn_initial_carry=True), lj.gru(H)])
    model = RNN(net, I, key=jax.random.key(0), dtype=F64)
    assert isinstance(model.params[0], lj.LearnedCarryParams) and model.layer == net
    xs, resets = xs_of(), jnp.zeros((B, T), bool).at[:, 2].set(True)
    assert_trees_close(model.params, net.init(jax.random.key(0), I, dtype=F64))

    def loss(ys, carry):
        return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(jnp.cos(c)) for c in jax.tree.leaves(carry))

    ours = eqx.filter_jit(eqx.filter_value_and_grad(lambda m, x: loss(*m(x, lengths=LENGTHS, resets=resets))))
    functional = jax.jit(jax.value_and_grad(lambda p, x: loss(*net.apply(p, x, lengths=LENGTHS, resets=resets))))
    (l_o, g_o), (l_f, g_f) = ours(model, xs), functional(model.params, xs)
    np.testing.assert_allclose(l_o, l_f, rtol=1e-12)
    assert_trees_close(g_o.params, g_f)

    @eqx.filter_jit
    def pairs(model, xs):
        c = model.init_carry(B)
        return [(c, net.init_carry(model.params, (B,))),
                (model.step(c, xs[:, 0]), net.step(model.params, c, xs[:, 0])),
                (model(xs[0]), net.apply(model.params, xs[0]))]  # no batch axis: no vmap needed

    for got, want in pairs(model, xs):
        assert_trees_close(got, want)


def test_optax_training_equals_functional_path():
    """10 Adam steps of the usual Equinox loop equal the same steps on lj.layer + optax."""
    model = RNN(lj.gru(H), I, key=jax.random.key(0), dtype=F64)
    layer, tx = lj.layer(lj.gru(H)), optax.adam(5e-2)
    loss = lambda ys, targets: jnp.mean((ys[..., :1] - targets) ** 2)

    @eqx.filter_jit
    def eqx_step(model, opt_state, xs, targets):
        value, grads = eqx.filter_value_and_grad(lambda m: loss(m(xs)[0], targets))(model)
        with jax.numpy_dtype_promotion("standard"):  # optax's bias correction mixes int and float
            updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, value

    @jax.jit
    def step(p, opt_state, xs, targets):
        value, grads = jax.value_and_grad(lambda p: loss(layer.apply(p, xs)[0], targets))(p)
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, value

    params, state_f, state_e = model.params, tx.init(model.params), tx.init(eqx.filter(model, eqx.is_array))
    for s in range(10):
        xs, targets = delayed_recall(jax.random.key(s), 8, T, I, 1, F64)
        model, state_e, l_e = eqx_step(model, state_e, xs, targets)
        params, state_f, l_f = step(params, state_f, xs, targets)
        np.testing.assert_allclose(l_e, l_f, rtol=1e-10)
    assert_trees_close(model.params, params, rtol=1e-10, atol=1e-12)


def test_dropout_from_the_key_and_inference_mode():
    net = lj.stack([lj.lstm(H), lj.lstm(H)], dropout_rate=0.5)
    model, xs, key = RNN(net, I, key=jax.random.key(0), dtype=F64), xs_of(), jax.random.key(1)

    @eqx.filter_jit
    def outputs(model, xs, key):
        p = model.params
        return (model(xs, key=key)[0], net.apply(p, xs, key=key)[0], eqx.nn.inference_mode(model)(xs, key=key)[0],
                model(xs)[0], net.apply(p, xs)[0])

    noisy, want_noisy, inference, no_key, clean = outputs(model, xs, key)
    assert_trees_close(noisy, want_noisy)
    assert not np.allclose(noisy, clean)
    assert_trees_close(inference, clean)
    assert_trees_close(no_key, clean)  # no key: deterministic


def test_options_and_params():
    p = lj.gru(H).init(jax.random.key(3), I, dtype=F64)
    model = RNN(lj.gru(H), I, key=jax.random.key(0), params=p, reverse=True)
    assert model.layer == lj.layer(lj.gru(H), reverse=True)
    assert_trees_close(model(xs_of())[0], lj.layer(lj.gru(H), reverse=True).apply(p, xs_of())[0])


def test_errors_name_the_argument():
    key = jax.random.key(0)
    with pytest.raises(TypeError, match=r"`cell` must be a lstm_jax Cell .* got LSTMCell"):
        RNN(eqx.nn.LSTMCell(I, H, key=key), I, key=key)
    with pytest.raises(ValueError, match=r"`in_features` must be a positive int, got 3.0"):
        RNN(lj.lstm(H), 3.0, key=key)
    with pytest.raises(TypeError, match=r"`key` must be a PRNG key such as jax.random.key\(0\), got int 0"):
        RNN(lj.lstm(H), I, key=0)
    with pytest.raises(ValueError, match=r"`impl`: layer\(lstm\(4\)\) is a Layer, which has its own options"):
        RNN(lj.layer(lj.lstm(H)), I, key=key, impl="scan")
    with pytest.raises(TypeError, match=r"unexpected layer option 'revers'; lstm_jax.layer takes reverse, time_major"):
        RNN(lj.lstm(H), I, key=key, revers=True)
    with pytest.raises(ValueError, match=r"`params.w_x` must have shape \(3, 16\) \(layer\(lstm\(4\)\).init\(key, 3, "
                                         r"dtype=float32\)\), got \(3, 20\)"):
        RNN(lj.lstm(H), I, key=key, params=lj.lstm(H + 1).init(key, I))
    with pytest.raises(ValueError, match=r"`xs` must have shape \[\.\.\., T, I\] with last axis 3"):
        RNN(lj.lstm(H), I, key=key)(jnp.ones((B, T, I + 1), jnp.float32))
