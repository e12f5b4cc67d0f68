"""The depth-gated LSTM (Yao et al. 2015) against a float64 NumPy reference written here from
the paper's equations (per-gate weights, a Python loop over time and, inside it, over layers).

Proven here:

* ``lj.layer(cell).apply`` outputs, final carries and per-layer activations equal the
  reference for 1-3 layers, with and without peepholes, from random parameters (depth
  weights included) and a random initial carry (float64 to 1e-10, float32 to 1e-5);
  ``unroll`` == a Python loop of ``cell.step`` for batch shapes (), (3,), (2, 3);
* ``num_layers=1`` is exactly :func:`lstm_jax.lstm` on the same weights;
* finite-difference gradients; ``lengths`` (padding == unpadded, zero outputs, last valid
  carry), ``reverse``, ``time_major`` and ``resets`` (== each segment run separately);
  float32/bfloat16/float64 preserved;
* dropout between layers (``lj.layer(cell).apply(..., key=k)``) equals the reference with
  the documented masks and ``lj.unroll`` on ``DepthGatedInput(xs, masks)`` with those masks
  drawn by hand (batch-first and time-major), and is off without a key;
* it composes inside ``lstm_jax.stack`` and ``lstm_jax.bidirectional``;
* cells compare and hash by their config and are ``jit`` static arguments;
* every user error's message; a small training run.
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
from lstm_jax import initializers
from lstm_jax.cells.depth_gated import (DepthGatedInput, DepthGatedLSTMConfig, DepthGatedLSTMParams,
                                        depth_gated_lstm)
from lstm_jax.models.readout import readout

F32, F64, BF16 = jnp.float32, jnp.float64, jnp.bfloat16
B, T, I, H = 3, 6, 3, 4
TOL64 = dict(rtol=1e-10, atol=1e-10)
TOL32 = dict(rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------- NumPy reference

def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def reference(layers, xs, state=None, *, masks=None):
    """Depth-gated LSTM over ``xs [B, T, I]`` (Yao et al. 2015, eqs. for layer L+1 given L).

    ``layers[l]``: ``W_x{i,f,g,o} [I_l, H]``, ``W_h{i,f,g,o} [H, H]``, ``b_{i,f,g,o} [H]``,
    optional peepholes ``p_{i,f,o} [H]``; above layer 0 also ``W_xd [H, H]``, ``b_d``,
    ``w_cd``, ``w_ld [H]``. For each step, bottom-up, with ``x^0 = x_t`` and
    ``x^l = h^{l-1}_t`` (times ``masks[:, t, l-1]`` when given)::

        i = sigma(x W_xi + h_{t-1} W_hi + p_i * c_{t-1} + b_i)
        f = sigma(x W_xf + h_{t-1} W_hf + p_f * c_{t-1} + b_f)
        g = tanh(x W_xg + h_{t-1} W_hg + b_g)
        d = sigma(x W_xd + w_cd * c_{t-1} + w_ld * c^{l-1}_t + b_d)      (l >= 1)
        c_t = d * c^{l-1}_t + f * c_{t-1} + i * g                          (no d term at l = 0)
        o = sigma(x W_xo + h_{t-1} W_ho + p_o * c_t + b_o)
        h_t = o * tanh(c_t)

    State: ``[{"h": [B, H], "c": [B, H]}] * L``. Returns ``(ys [B, T, H], state, acts)`` with
    ``acts`` keyed ``"<name>_<l>"``, each ``[B, T, H]``.
    """
    f64 = lambda a: np.asarray(a, np.float64)
    layers = [{k: f64(v) for k, v in p.items()} for p in layers]
    xs = f64(xs)
    Bn, Tn, _ = xs.shape
    Hn = layers[0]["b_g"].shape[0]
    zero = np.zeros((Bn, Hn))
    h = [zero if state is None else f64(s["h"]) for s in (state or [None] * len(layers))]
    c = [zero if state is None else f64(s["c"]) for s in (state or [None] * len(layers))]
    ys, steps = [], []
    for t in range(Tn):
        x, c_low, acts = xs[:, t], None, {}
        for l, p in enumerate(layers):
            if l > 0:
                x = h[l - 1] if masks is None else h[l - 1] * f64(masks)[:, t, l - 1]
            peep = lambda k, cell: p[f"p_{k}"] * cell if f"p_{k}" in p else 0.0
            pre = lambda k: x @ p[f"W_x{k}"] + h[l] @ p[f"W_h{k}"] + p[f"b_{k}"]
            c_prev = c[l]
            i = sigmoid(pre("i") + peep("i", c_prev))
            f = sigmoid(pre("f") + peep("f", c_prev))
            g = np.tanh(pre("g"))
            if l > 0:
                d = sigmoid(x @ p["W_xd"] + p["w_cd"] * c_prev + p["w_ld"] * c_low + p["b_d"])
                c[l] = d * c_low + f * c_prev + i * g
                acts[f"depth_{l}"] = d
            else:
                c[l] = f * c_prev + i * g
            o = sigmoid(pre("o") + peep("o", c[l]))
            h[l] = o * np.tanh(c[l])
            acts.update({f"input_{l}": i, f"forget_{l}": f, f"candidate_{l}": g, f"output_{l}": o,
                         f"cell_{l}": c[l], f"hidden_{l}": h[l]})
            c_low = c[l]
        ys.append(h[-1])
        steps.append(acts)
    acts = {k: np.stack([s[k] for s in steps], axis=1) for k in (steps[0] if steps else ())}
    ys = np.stack(ys, axis=1) if ys else np.zeros((Bn, 0, Hn))
    return ys, [{"h": a, "c": b} for a, b in zip(h, c)], acts


def ref_params(params):
    """Our fused per-layer params -> the reference's per-gate dicts."""
    out = []
    for p in params:
        p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
        names = "ifgod" if p.depth_cell is not None else "ifgo"
        blocks = lambda a: {k: a[..., j * H:(j + 1) * H] for j, k in enumerate(names)}
        d = {**{f"W_x{k}": v for k, v in blocks(p.w_x).items()},
             **{f"W_h{k}": v for k, v in blocks(p.w_h).items() if k != "d"},
             **{f"b_{k}": v for k, v in blocks(p.b).items()}}
        for k in "ifo":
            if getattr(p, f"peephole_{k}") is not None:
                d[f"p_{k}"] = getattr(p, f"peephole_{k}")
        if p.depth_cell is not None:
            d.update(w_cd=p.depth_cell, w_ld=p.depth_lower)
        out.append(d)
    return out


def ref_state(carry):
    return [{"h": np.asarray(s.hidden, np.float64), "c": np.asarray(s.cell, np.float64)} for s in carry]


# ----------------------------------------------------------------------------------- setup

def randomize(tree, seed, scale=0.5):
    """Every array leaf replaced by scale * N(0, 1) of the same shape and dtype (NumPy draws:
    no per-shape compilation)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda l: jnp.asarray(scale * rng.standard_normal(l.shape), l.dtype), tree)


def init(model, input_size=I, dtype=F64):
    """Shapes from ``model.init`` (traced, not run), then random values."""
    return jax.eval_shape(lambda: model.init(jax.random.key(0), input_size, dtype=dtype))


@functools.cache
def setup_f64(num_layers, peephole=False, seed=0):
    """(layer, params, xs, carry): every parameter random (depth weights and peepholes too);
    the cell is ``layer.config.cell``."""
    lay = lj.layer(depth_gated_lstm(H, num_layers, peephole=peephole))
    params = randomize(init(lay), seed)
    xs = randomize(jax.ShapeDtypeStruct((B, T, I), F64), seed + 1, 1.0)
    carry = randomize(jax.eval_shape(lambda: lay.init_carry(params, (B,))), seed + 2)
    return lay, params, xs, carry


def setup(num_layers, peephole=False, dtype=F64):
    lay, params, xs, carry = setup_f64(num_layers, peephole)
    cast = lambda tree: jax.tree.map(lambda a: a.astype(dtype), tree)
    return lay, cast(params), cast(xs), cast(carry)


CONFIGS = [(1, False), (2, False), (2, True), (3, False)]
configs = pytest.mark.parametrize("num_layers, peephole", CONFIGS, ids=lambda v: str(v))


# ------------------------------------------------------------------- agreement with reference

@configs
def test_apply_matches_reference_f64(num_layers, peephole):
    lay, params, xs, carry = setup(num_layers, peephole)
    ys, final = jax.jit(lambda p, x, c: lay.apply(p, x, c))(params, xs, carry)
    want_ys, want_state, _ = reference(ref_params(params), xs, ref_state(carry))
    assert ys.shape == (B, T, H) and len(final) == num_layers
    assert all(isinstance(s, lj.LSTMState) for s in final)
    np.testing.assert_allclose(ys, want_ys, **TOL64)
    helpers.assert_trees_close(ref_state(final), want_state, **TOL64)


@configs
def test_apply_matches_reference_f32(num_layers, peephole):
    lay, params, xs, _ = setup(num_layers, peephole, F32)
    ys, final = jax.jit(lambda p, x: lay.apply(p, x))(params, xs)
    assert ys.dtype == F32
    want_ys, want_state, _ = reference(ref_params(params), xs)
    np.testing.assert_allclose(np.asarray(ys, np.float64), want_ys, **TOL32)
    helpers.assert_trees_close(ref_state(final), want_state, **TOL32)


def test_gates_match_reference():
    lay, params, xs, carry = setup(3, True)
    cell = lay.config.cell
    ys, _, aux = jax.jit(lambda p, x, c: lj.unroll(cell, p, x, c, return_gates=True))(params, xs, carry)
    _, _, want = reference(ref_params(params), xs, ref_state(carry))
    assert set(aux.gates) == set(want)
    assert "depth_0" not in aux.gates and {"depth_1", "depth_2"} <= set(aux.gates)
    helpers.assert_trees_close(aux.gates, want, **TOL64)


@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 3)], ids=str)
def test_unroll_equals_python_loop_of_step(batch_shape):
    lay, params, _, _ = setup(2, True)
    cell = lay.config.cell
    xs = randomize(jax.ShapeDtypeStruct(batch_shape + (4, I), F64), 4, 1.0)
    carry = randomize(jax.eval_shape(lambda: cell.init_carry(params, batch_shape)), 5)

    @jax.jit
    def both(params, xs, carry):
        ys, final = lj.unroll(cell, params, xs, carry)
        c, loop = carry, []
        for t in range(xs.shape[-2]):  # a Python loop of cell.step (unrolled by tracing)
            new, y = cell.step(params, c, xs[..., t, :])
            new2, y2 = cell.recur(params, c, cell.project(params, xs[..., t, :]))
            loop.append((new, y, new2, y2))
            c = new
        return ys, final, loop

    ys, final, loop = both(params, xs, carry)
    for new, y, new2, y2 in loop:
        helpers.assert_trees_close((new, y), (new2, y2), rtol=0, atol=0)
    helpers.assert_trees_close((ys, final), (jnp.stack([y for _, y, _, _ in loop], axis=-2), loop[-1][0]),
                               rtol=1e-14, atol=1e-14)
    assert ys.shape == batch_shape + (4, H)


@pytest.mark.parametrize("peephole", [False, True])
def test_one_layer_is_an_lstm(peephole):
    lay, params, xs, carry = setup(1, peephole)
    (p,) = params
    assert p.depth_cell is None and p.depth_lower is None and p.w_x.shape == (I, 4 * H)
    plain = lj.lstm(H, peephole=peephole)
    lstm_params = lj.LSTMParams(w_x=p.w_x, w_h=p.w_h, b=p.b, peephole_i=p.peephole_i,
                                peephole_f=p.peephole_f, peephole_o=p.peephole_o)
    run = jax.jit(lambda: (lay.apply(params, xs, carry), lj.unroll(plain, lstm_params, xs, carry[0])))
    (ys, (final,)), (want_ys, want_final) = run()
    helpers.assert_trees_close((ys, final), (want_ys, want_final), rtol=1e-15, atol=1e-15)


def test_depth_path_matters():
    """The depth gate does something: zeroing it (b_d -> -inf) gives a plain stack of LSTMs."""
    lay, params, xs, carry = setup(2)
    closed = (params[0], params[1]._replace(b=params[1].b.at[4 * H:].set(-jnp.inf)))
    stacked = lj.stack([lj.lstm(H), lj.lstm(H)])
    as_lstm = tuple(lj.LSTMParams(w_x=p.w_x[:, :4 * H], w_h=p.w_h, b=p.b[:4 * H]) for p in closed)
    run = jax.jit(lambda: (lay.apply(closed, xs, carry), lay.apply(params, xs, carry)[0],
                           stacked.apply(as_lstm, xs, tuple(lj.LSTMState(s.hidden, s.cell) for s in carry))))
    got, opened, want = run()
    helpers.assert_trees_close(got, want, rtol=1e-14, atol=1e-14)
    assert np.max(np.abs(np.asarray(opened) - np.asarray(got[0]))) > 1e-2


def test_init_shapes_and_config():
    cell = depth_gated_lstm(H, 3, peephole=True, forget_bias=1.5, depth_bias=-0.5, dropout_rate=0.25)
    lay = lj.layer(cell, time_major=True, reverse=True)
    assert (cell.hidden_size, cell.output_size, lay.output_size, lay.reverse, lay.time_major) == (H, H, H, True, True)
    assert cell.config == DepthGatedLSTMConfig(H, 3, forget_bias=1.5, depth_bias=-0.5, peephole=True,
                                               dropout_rate=0.25)
    assert repr(cell) == ("depth_gated_lstm(4, num_layers=3, forget_bias=1.5, depth_bias=-0.5, peephole=True, "
                          "dropout_rate=0.25)")
    assert cell.noise is not None and depth_gated_lstm(H, 3).noise is None  # nothing to draw without dropout
    params = init(cell)  # shapes of the default init (traced, not run)
    assert isinstance(params, tuple) and len(params) == 3
    # values: the same layer with cheap constant kernels (the bias does not depend on them)
    cheap = depth_gated_lstm(H, 3, peephole=True, forget_bias=1.5, depth_bias=-0.5,
                             kernel_init=initializers.constant(0.1), recurrent_init=initializers.constant(0.2))
    values = jax.jit(cheap.init, static_argnums=1)(jax.random.key(0), I)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), values) == \
        jax.tree.map(lambda a: (a.shape, jnp.dtype(F32)), init(lay, dtype=F32))
    for n, p in enumerate(params):
        G = 4 if n == 0 else 5
        assert isinstance(p, DepthGatedLSTMParams)
        assert p.w_x.shape == (I if n == 0 else H, G * H) and p.w_h.shape == (H, 4 * H)
        assert p.b.shape == (G * H,) and p.b.dtype == F64
        assert all(getattr(p, f"peephole_{k}").shape == (H,) for k in "ifo")
        assert (p.depth_cell is None) == (p.depth_lower is None) == (n == 0)
        v = values[n]
        want_b = np.zeros(G * H, np.float32)
        want_b[H:2 * H] = 1.5
        want_b[4 * H:] = -0.5  # (empty for layer 0)
        np.testing.assert_array_equal(v.b, want_b)
        for zero in (v.peephole_i, v.peephole_f, v.peephole_o) + ((v.depth_cell, v.depth_lower) if n else ()):
            np.testing.assert_array_equal(zero, np.zeros(H, np.float32))
    carry = cell.init_carry(params, (2, 5))
    assert len(carry) == 3 and all(s.hidden.shape == s.cell.shape == (2, 5, H) for s in carry)
    assert all(isinstance(s, lj.LSTMState) and s.hidden.dtype == F64 for s in carry)


def test_cells_compare_by_config_and_are_static_arguments():
    a, b = depth_gated_lstm(H, 2, dropout_rate=0.5), depth_gated_lstm(H, 2, dropout_rate=0.5)
    assert a == b and hash(a) == hash(b) and a is not b
    for other in (depth_gated_lstm(H, 3, dropout_rate=0.5), depth_gated_lstm(H, 2),
                  depth_gated_lstm(H, 2, dropout_rate=0.5, peephole=True), lj.lstm(H)):
        assert a != other
    assert lj.layer(a) == lj.layer(b) and hash(lj.layer(a)) == hash(lj.layer(b))
    params, xs = setup(2)[1:3]
    traces, (ya, yb) = helpers.traces_with_static(lambda c, p, x: lj.unroll(c, p, x)[0], (a, params, xs),
                                                  (b, params, xs))
    np.testing.assert_array_equal(ya, yb)
    assert traces == [a]  # the equal cell hit the cache


# ------------------------------------------------------------------------------- gradients

def test_gradients_match_finite_differences():
    lay, params, xs, carry = setup(2, True)
    f = jax.jit(lambda p, x, c: lay.apply(p, x, c))
    small = jax.tree.map(lambda a: a[:2], carry)
    check_grads(f, (params, xs[:2, :4], small), order=1, modes=("rev",), atol=1e-6, rtol=1e-6, eps=1e-5)


# ------------------------------------------------------------------- lengths, reverse, layout

@pytest.mark.parametrize("reverse", [False, True])
def test_lengths_padding_equals_unpadded(reverse):
    """Each padded sequence gives what the reference gives on it alone, unpadded (read
    backwards within its length when ``reverse``); outputs past a length are zero."""
    _, params, xs, carry = setup(2)
    lay = lj.layer(depth_gated_lstm(H, 2), reverse=reverse)
    lengths = jnp.array([T, 0, 2], jnp.int32)
    valid = np.arange(T)[None, :, None] < np.asarray(lengths)[:, None, None]
    garbage = jnp.where(jnp.asarray(valid), xs, 1e3)
    ys, final = jax.jit(lambda p, x, c: lay.apply(p, x, c, lengths=lengths))(params, garbage, carry)
    p_ref, s_ref = ref_params(params), ref_state(carry)
    for b, n in enumerate(np.asarray(lengths)):
        seq = np.asarray(xs)[b:b + 1, :n]
        want_ys, want_state, _ = reference(p_ref, seq[:, ::-1] if reverse else seq,
                                           [{k: v[b:b + 1] for k, v in s.items()} for s in s_ref])
        np.testing.assert_allclose(ys[b, :n], (want_ys[:, ::-1] if reverse else want_ys)[0], **TOL64)
        np.testing.assert_array_equal(ys[b, n:], 0.0)
        helpers.assert_trees_close(ref_state(jax.tree.map(lambda a: a[b:b + 1], final)), want_state, **TOL64)


def test_time_major_is_a_transpose():
    lay, params, xs, carry = setup(2)
    tm = lj.layer(depth_gated_lstm(H, 2), time_major=True)
    lengths = jnp.array([T, 3, 1], jnp.int32)

    @jax.jit
    def both(params, xs, carry):
        return (tm.apply(params, jnp.swapaxes(xs, 0, 1), carry, lengths=lengths),
                lay.apply(params, xs, carry, lengths=lengths))

    (ys, final), (want_ys, want_final) = both(params, xs, carry)
    helpers.assert_trees_close((jnp.swapaxes(ys, 0, 1), final), (want_ys, want_final), rtol=1e-15, atol=1e-15)


# ------------------------------------------------------------------------------------ dtypes

@pytest.mark.parametrize("dtype", [F32, BF16, F64], ids=lambda d: jnp.dtype(d).name)
def test_dtype_preserved(dtype):
    lay, params, xs, _ = setup(2, True, dtype)

    def loss(p, x):
        ys, c = lay.apply(p, x)
        return jnp.sum(ys) + sum(jnp.sum(a) for a in jax.tree.leaves(c)), (ys, c)

    (_, (ys, c)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, xs)
    for leaf in jax.tree.leaves((ys, c, grads)):
        assert leaf.dtype == dtype
    want_ys, _, _ = reference(ref_params(params), xs)
    tol = {F64: TOL64, F32: TOL32, BF16: dict(rtol=0.05, atol=0.05)}[dtype]
    np.testing.assert_allclose(np.asarray(ys, np.float64), want_ys, **tol)


# ----------------------------------------------------------------------------------- dropout

def test_dropout_between_layers_uses_the_documented_masks():
    rate = 0.4
    plain, params, xs, carry = setup(3)
    cell = depth_gated_lstm(H, 3, dropout_rate=rate)
    key = jax.random.key(11)
    lengths = jnp.array([T, 4, 1], jnp.int32)
    swap = lambda a: jnp.swapaxes(a, 0, 1)

    @jax.jit
    def run(params, xs, carry, key):
        # the documented masks, drawn by hand in the layout of the inputs
        by_hand = lambda shape: jnp.where(jax.random.bernoulli(key, 1.0 - rate, shape), 1.0 / (1.0 - rate), 0.0)
        masks, masks_tm = by_hand((B, T, 2 * H)), by_hand((T, B, 2 * H))
        kw = dict(lengths=lengths)
        return (masks, cell.noise(key, xs),
                (lj.layer(cell).apply(params, xs, carry, key=key, **kw),
                 lj.unroll(cell, params, DepthGatedInput(xs, masks), carry, **kw)),
                (lj.layer(cell, time_major=True).apply(params, swap(xs), carry, key=key, **kw),
                 lj.unroll(cell, params, DepthGatedInput(swap(xs), masks_tm), carry, time_major=True, **kw)),
                (lj.layer(cell).apply(params, xs, carry, **kw), plain.apply(params, xs, carry, **kw)))

    masks, drawn, (got, want), (got_tm, want_tm), (no_key, no_dropout) = run(params, xs, carry, key)
    helpers.assert_trees_close(got, want, rtol=1e-15, atol=1e-15)
    helpers.assert_trees_close(got_tm, want_tm, rtol=1e-15, atol=1e-15)
    # noise draws exactly these masks, in the inputs' dtype; masks already given are kept
    assert isinstance(drawn, DepthGatedInput) and drawn.masks.dtype == F64
    helpers.assert_trees_close(drawn, DepthGatedInput(xs, masks), rtol=0, atol=0)
    assert cell.noise(key, drawn) is drawn
    assert 0.3 < float(np.mean(np.asarray(masks) == 0.0)) < 0.5
    ys, final = got
    for b, n in enumerate(np.asarray(lengths)):
        want_ys, want_state, _ = reference(ref_params(params), xs[b:b + 1, :n],
                                           ref_state(jax.tree.map(lambda a: a[b:b + 1], carry)),
                                           masks=np.asarray(masks).reshape(B, T, 2, H)[b:b + 1, :n])
        np.testing.assert_allclose(ys[b:b + 1, :n], want_ys, **TOL64)
        helpers.assert_trees_close(ref_state(jax.tree.map(lambda a: a[b:b + 1], final)), want_state, **TOL64)
    # without a key the layer is deterministic and equals the no-dropout layer; a single
    # layer has nothing to drop between, so its cell draws no noise at all
    helpers.assert_trees_close(no_key, no_dropout, rtol=0, atol=0)
    assert depth_gated_lstm(H, 1, dropout_rate=rate).noise is None


# ------------------------------------------------------------------------------------ resets

def test_resets_equal_running_segments_separately():
    lay, params, xs, carry = setup(2, True)
    resets = np.zeros((B, T), bool)
    resets[0, 2] = resets[1, [0, 4]] = True  # row 2: no reset
    ys, final = jax.jit(lambda p, x, c, r: lj.unroll(lay.config.cell, p, x, c, resets=r))(
        params, xs, carry, jnp.asarray(resets))
    p_ref, s_ref = ref_params(params), ref_state(carry)
    for b in range(B):
        for n, (start, stop) in enumerate(helpers.segments(resets[b])):
            start_from = [{k: v[b:b + 1] for k, v in s.items()} for s in s_ref] if n == 0 and not resets[b, 0] \
                else None  # a reset restores the zero carry
            want_ys, want_state, _ = reference(p_ref, np.asarray(xs)[b:b + 1, start:stop], start_from)
            np.testing.assert_allclose(ys[b:b + 1, start:stop], want_ys, **TOL64)
        helpers.assert_trees_close(ref_state(jax.tree.map(lambda a: a[b:b + 1], final)), want_state, **TOL64)


# ------------------------------------------------------------------------------ composition

def test_composes_inside_stack_and_bidirectional():
    dg = depth_gated_lstm(H, 2)
    top = lj.gru(5)
    model = lj.stack([lj.lstm(3), dg, top])
    assert model.output_size == 5
    params = randomize(init(model), 1)
    assert params[1][0].w_x.shape == (3, 4 * H)  # reads the LSTM's output
    assert params[1][1].w_x.shape == (H, 5 * H) and params[2].w_x.shape == (H, 15)
    xs = setup(1)[2]
    lengths = jnp.array([T, 0, 3], jnp.int32)
    carry0 = randomize(jax.eval_shape(lambda: model.init_carry(params, (B,))), 2)
    bi = lj.bidirectional(dg, dg)
    bp = randomize(init(bi), 3)

    @jax.jit
    def run(params, xs, carry0, bp):
        got = model.apply(params, xs, carry0, lengths=lengths)
        h1, c1 = lj.unroll(lj.lstm(3), params[0], xs, carry0[0], lengths=lengths)
        h2, c2 = lj.unroll(dg, params[1], h1, carry0[1], lengths=lengths)
        h3, c3 = lj.unroll(top, params[2], h2, carry0[2], lengths=lengths)
        got_bi = bi.apply(bp, xs, lengths=lengths)[0]
        want_bi = jnp.concatenate([lj.unroll(dg, bp.forward, xs, lengths=lengths)[0],
                                   lj.unroll(dg, bp.backward, xs, lengths=lengths, reverse=True)[0]], axis=-1)
        return got, (h3, (c1, c2, c3)), got_bi, want_bi

    got, want, got_bi, want_bi = run(params, xs, carry0, bp)
    helpers.assert_trees_close(got, want, rtol=1e-14, atol=1e-14)
    assert got_bi.shape == (B, T, 2 * H)
    helpers.assert_trees_close(got_bi, want_bi, rtol=1e-14, atol=1e-14)


# ------------------------------------------------------------------------------------ errors

def test_errors():
    with pytest.raises(ValueError, match=r"`hidden_size` must be a positive int, got 0"):
        depth_gated_lstm(0, 2)
    with pytest.raises(ValueError, match=r"`num_layers` must be a positive int, got 0"):
        depth_gated_lstm(H, 0)
    with pytest.raises(ValueError, match=r"`num_layers` must be a positive int, got 2.0"):
        depth_gated_lstm(H, 2.0)
    for rate in (1.0, -0.1, "0.5"):
        with pytest.raises(ValueError, match=r"`dropout_rate` must lie in \[0, 1\), got"):
            depth_gated_lstm(H, 2, dropout_rate=rate)
    with pytest.raises(TypeError, match=r"`peephole` must be a bool, got 1"):
        depth_gated_lstm(H, 2, peephole=1)
    with pytest.raises(ValueError, match=r"`depth_bias` must be a finite number, got 'x'"):
        depth_gated_lstm(H, 2, depth_bias="x")
    with pytest.raises(TypeError, match=r"`kernel_init` must be an initialiser"):
        depth_gated_lstm(H, 2, kernel_init="glorot")
    lay, params, xs, carry = setup(2)
    name = r"depth_gated_lstm\(4, num_layers=2\)"
    lstm_params = init(lj.lstm(H))  # shapes are all the checks read
    with pytest.raises(TypeError, match=rf"`params` must be a tuple of length 2 for {name}, got LSTMParams"):
        lay.apply(lstm_params, xs)
    with pytest.raises(ValueError, match=rf"`params\[1\].w_x` is missing: {name} has it"):
        lay.apply(params[:1], xs)
    with pytest.raises(ValueError, match=rf"`params\[1\].depth_cell` is missing: {name} has it"):
        lay.apply((params[0], lstm_params), xs)
    with pytest.raises(ValueError, match=rf"`params\[0\].w_x` has shape \(3, 20\), but {name} needs \(3, 16\)"):
        lay.apply(init(depth_gated_lstm(5, 2)), xs)
    with pytest.raises(ValueError, match=r"`xs` must have shape \[..., T, I\] with last axis 3"):
        lay.apply(params, jnp.ones((B, T, 5), F64))
    with pytest.raises(ValueError, match=r"`xs` must have shape \[..., T, I\] with last axis 3"):
        lj.layer(depth_gated_lstm(H, 2, dropout_rate=0.5)).apply(params, jnp.ones((B, T, 5), F64),
                                                                 key=jax.random.key(0))
    with pytest.raises(TypeError, match=r"`xs` has dtype float32 but the parameters are float64"):
        lay.apply(params, xs.astype(F32))
    with pytest.raises(ValueError, match=r"`xs.masks` must share the leading axes \(3, 6\) of the first input"):
        lay.apply(params, DepthGatedInput(xs, jnp.ones((B, T - 1, H), F64)))
    with pytest.raises(TypeError, match=r"`xs.masks` has dtype float32 but the parameters are float64"):
        lay.apply(params, DepthGatedInput(xs, jnp.ones((B, T, H), F32)))
    with pytest.raises(TypeError, match=rf"`carry` must be a tuple of length 2 for `cell.init_carry\(params, "
                                        rf"\(3,\)\)` of {name}, got LSTMState"):
        lay.apply(params, xs, carry[0])
    with pytest.raises(TypeError, match=r"`dtype` must be a floating dtype"):
        lay.init(jax.random.key(0), I, dtype=jnp.int32)


# ---------------------------------------------------------------------------------- training

def test_learns_delayed_recall():
    """Target at step t is x[t - 2, 0]: needs memory; no-memory baseline MSE ≈ (T-2)/T."""
    Bt, Tt, It, LAG, STEPS = 32, 12, 8, 2, 150
    baseline = (Tt - LAG) / Tt
    model = readout(depth_gated_lstm(8, 2), 1, at="every")
    params = jax.jit(model.init, static_argnums=1, static_argnames="dtype")(jax.random.key(0), It, dtype=F32)
    data = functools.partial(helpers.delayed_recall, T=Tt, I=It, lag=LAG, dtype=F32)
    params, losses = helpers.train_with_optax(model, params, data, steps=STEPS, batch=Bt)
    test_loss = float(helpers.mse_loss(model)(params, *data(jax.random.key(2), 256)))
    assert float(losses[0]) > 0.5 * baseline
    assert test_loss < 0.1 * baseline, f"held-out MSE {test_loss:.3f} not below {0.1 * baseline:.3f}"
