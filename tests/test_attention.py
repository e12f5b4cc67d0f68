"""Attention (additive, dot, general, scaled) and the attention decoder (Luong, Bahdanau).

Proven here, against the float64 NumPy references of ``tests/reference_attention.py`` (written
from the papers' equations, masked softmax over the unmasked positions only, decoder stepped
in a Python loop on the LSTM reference of ``tests/reference.py``):

* raw scores, contexts and weights of every attention equal the reference (f64 1e-10, f32
  1e-5), for batch shapes (), (3,), (2, 3); ``apply`` on a raw memory == on a precomputed one;
* masked positions get exactly zero weight, the rest sum to one, even with huge scores; an
  all-masked row gives zero weights and context and zero gradients, never NaN;
* extra masked memory positions holding garbage (NaN) change nothing, values or gradients;
* the decoder (both styles, every attention, with and without input feeding) equals the
  reference from a random carry, with ``lengths``: each padded target equals the reference
  on the unpadded one, padded outputs and weights are zero, the carry is the last valid one;
* ``apply`` (one scan) equals a Python loop of ``step``; batch shapes (), (B,), (1, B);
* finite-difference gradients; f32 / bf16 / f64 preserved; every user error's message;
* a seq2seq model learns to reverse short sequences, decoded greedily on held-out data.

Every function under test is jitted once (eager dispatch would compile each small op).
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
import reference_attention as ref  # tests/reference_attention.py
from lstm_jax.attention import (
    AdditiveParams,
    AttentionDecoderState,
    AttentionMemory,
    MultiplicativeParams,
    additive_attention,
    attention_decoder,
    masked_softmax,
    multiplicative_attention,
    seq2seq,
)
from lstm_jax.cells.lstm import LSTMState

F32, F64, BF16 = jnp.float32, jnp.float64, jnp.bfloat16
B, S, D, Q, A = 3, 6, 4, 5, 7  # batch, memory length, memory size, query size, attention size
T, I, H, O = 5, 3, 4, 6  # decoder steps, input size, hidden size, output size
MEM_LENGTHS = (6, 0, 3)  # full, all masked, partial
TOL64 = dict(rtol=1e-10, atol=1e-10)
TOL32 = dict(rtol=1e-5, atol=1e-5)

ATTENTIONS = {
    "additive": lambda: additive_attention(A),
    "dot": lambda: multiplicative_attention("dot"),
    "dot_scaled": lambda: multiplicative_attention("dot", scale=True),
    "general": lambda: multiplicative_attention("general"),
    "general_scaled": lambda: multiplicative_attention("general", scale=True),
}
QUERY_SIZE = {"dot": D, "dot_scaled": D}  # dot attention needs Q == D
all_attentions = pytest.mark.parametrize("name", list(ATTENTIONS))

DECODERS = {  # (attention, style, input_feeding)
    "luong_additive_feed": ("additive", "luong", True),
    "luong_dot_feed": ("dot", "luong", True),
    "luong_general_nofeed": ("general", "luong", False),
    "bahdanau_additive": ("additive", "bahdanau", None),
    "bahdanau_general": ("general", "bahdanau", None),
}
DEC_MEMORY = {"luong_dot_feed": H}  # memory size D for the dot decoder (needs D == H)
all_decoders = pytest.mark.parametrize("name", list(DECODERS))
SOME_DECODERS = pytest.mark.parametrize("name", ["luong_additive_feed", "bahdanau_general"])
SOME_ATTENTIONS = pytest.mark.parametrize("name", ["additive", "dot_scaled", "general"])


# ------------------------------------------------------------------------------ helpers

def normal(rng, shape, dtype=F64, scale=1.0):
    return jnp.asarray(scale * rng.standard_normal(shape), dtype)


def random_like(shapes, rng, scale=0.5):
    """Random N(0, scale^2) arrays shaped like the ``jax.eval_shape`` tree ``shapes`` (NumPy draws:
    no per-shape XLA compiles), so zero-initialised and forget-gate biases matter too."""
    return jax.tree.map(lambda a: jnp.asarray(scale * rng.standard_normal(a.shape), a.dtype), shapes)


def random_params(init, rng, *args):
    return random_like(jax.eval_shape(lambda k: init(k, *args, dtype=F64), jax.random.key(0)), rng)


def length_mask(lengths, size=S):
    return jnp.asarray(np.arange(size)[None, :] < np.asarray(lengths)[:, None])


def cast(tree, dtype):
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def f64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


assert_trees_close = helpers.assert_trees_close


@functools.cache
def attention_of(name):
    return ATTENTIONS[name]()


@functools.cache
def attention_setup(name, dtype=F64):
    """(attention, params, query [B, Q], memory [B, S, D], mask [B, S]), all random."""
    att = attention_of(name)
    q = QUERY_SIZE.get(name, Q)
    rng = np.random.default_rng(0)
    params = random_params(att.init, rng, q, D)
    query, memory = normal(rng, (B, q)), normal(rng, (B, S, D))
    return att, cast(params, dtype), query.astype(dtype), memory.astype(dtype), length_mask(MEM_LENGTHS)


@functools.cache
def jitted_apply(name):
    return jax.jit(attention_of(name).apply)


def ref_attention_params(att, params):
    p = f64(params)
    if att.name == "additive":
        return {"W_s": p.w_query.T, "W_h": p.w_memory.T, "v": p.v}
    return {} if att.name == "dot" else {"W": p.w_memory.T}


def ref_score(att):
    if att.name == "additive":
        return ref.additive_score
    fn = ref.dot_score if att.name == "dot" else ref.general_score
    return functools.partial(fn, scale=att.options["scale"])


def ref_attend(att, params, query, memory, mask):
    return ref.attend_batch(ref_score(att), ref_attention_params(att, params), f64(query), f64(memory),
                            np.asarray(mask))


@functools.cache
def decoder_of(name):
    attention, style, feeding = DECODERS[name]
    return attention_decoder(H, attention, style=style, input_feeding=feeding, output_size=O, attention_size=A)


@functools.cache
def decoder_setup(name, dtype=F64):
    """(decoder, params, xs [B, T, I], memory [B, S, D], mask [B, S], carry), all random."""
    dec = decoder_of(name)
    dm = DEC_MEMORY.get(name, D)
    rng = np.random.default_rng(10)
    params = random_params(dec.init, rng, I, dm)
    xs, memory = normal(rng, (B, T, I)), normal(rng, (B, S, dm))
    carry = random_like(jax.eval_shape(lambda p: dec.init_carry(p, (B,)), params), rng)
    c = lambda t: cast(t, dtype)
    return dec, c(params), c(xs), c(memory), length_mask(MEM_LENGTHS), c(carry)


@functools.cache
def jitted_decoder(name):
    """(jit(apply), jit(step)) of one decoder, shared by all tests (one compile per shape)."""
    dec = decoder_of(name)
    return jax.jit(dec.apply), jax.jit(dec.step)


def ref_decoder_params(dec, params):
    p = f64(params)
    blocks = lambda w: np.split(w, 4, axis=-1)  # (i, f, g, o)
    wx = blocks(p.lstm.w_x)
    if p.w_feed is not None:  # the LSTM's kernel on the concatenated input [x; feed]
        wx = [np.concatenate([a, b], axis=0) for a, b in zip(wx, blocks(p.w_feed))]
    lstm_p = {}
    for k, wxk, whk, bk in zip("ifgo", wx, blocks(p.lstm.w_h), blocks(p.lstm.b)):
        lstm_p.update({f"W_x{k}": wxk, f"W_h{k}": whk, f"b_{k}": bk})
    return {"lstm": lstm_p, "W_c": p.w_c.T, "att": ref_attention_params(dec.attention, params.attention)}


def ref_state(carry):
    state = {"h": np.asarray(carry.lstm.hidden, np.float64), "c": np.asarray(carry.lstm.cell, np.float64)}
    if carry.attentional is not None:
        state["att"] = np.asarray(carry.attentional, np.float64)
    return state


def run_ref_decoder(dec, params, xs, memory, mask, carry=None):
    return ref.attention_decoder(
        ref_decoder_params(dec, params), f64(xs), f64(memory), np.asarray(mask),
        score=ref_score(dec.attention), style=dec.options["style"],
        input_feeding=dec.options["input_feeding"], state=None if carry is None else ref_state(carry))


# -------------------------------------------------------------- attention vs the reference

@functools.cache
def jitted_attention_suite(name):
    """One compiled function: raw scores, apply on a raw and on a precomputed memory."""
    att = attention_of(name)

    def suite(p, q, m, k):
        pre = att.precompute(p, m, k)
        return att.score(p, q, pre), att.apply(p, q, m, k), att.apply(p, q, pre, k)

    return jax.jit(suite)


@all_attentions
def test_attention_matches_reference_f64(name):
    att, params, query, memory, mask = attention_setup(name)
    scores, (context, weights), from_pre = jitted_attention_suite(name)(params, query, memory, mask)
    p, score = ref_attention_params(att, params), ref_score(att)
    valid = np.asarray(mask)
    want_scores = np.stack([score(p, query[b], memory[b]) for b in range(B)])
    want_context, want_weights = ref_attend(att, params, query, memory, mask)
    # score() sees the precomputed memory, whose masked rows are zeroed: compare the others
    np.testing.assert_allclose(np.asarray(scores)[valid], want_scores[valid], **TOL64)
    np.testing.assert_allclose(weights, want_weights, **TOL64)
    np.testing.assert_allclose(context, want_context, **TOL64)
    assert context.shape == (B, D) and weights.shape == (B, S)
    assert_trees_close(from_pre, (context, weights), rtol=0, atol=0)  # precompute == raw memory


@all_attentions
def test_masked_weights_exactly_zero_and_sum_to_one(name):
    att, params, query, memory, mask = attention_setup(name)
    suite = jitted_attention_suite(name)
    _, (context, weights), _ = suite(params, 1e3 * query, 1e3 * memory, mask)  # huge scores
    weights, valid = np.asarray(weights), np.asarray(mask)
    assert np.all(np.isfinite(weights)) and np.all(np.isfinite(np.asarray(context)))
    assert np.all(weights[~valid] == 0.0)  # exactly, not approximately
    assert np.all(weights >= 0.0)
    np.testing.assert_allclose(weights[valid.any(-1)].sum(-1), 1.0, rtol=1e-12)
    # everything attended (same compiled function, all-True mask) == no mask at all
    full = jnp.ones((B, S), bool)
    _, unmasked, _ = suite(params, query, memory, full)
    assert np.all(np.asarray(unmasked[1]) > 0.0)
    assert_trees_close(jax.jit(att.apply)(params, query, memory), unmasked, rtol=1e-13, atol=1e-13)


@all_attentions
def test_all_masked_row_gives_zero_weights_context_and_grads(name):
    att, params, query, memory, _ = attention_setup(name)
    mask = jnp.zeros((B, S), bool)

    def loss(p, q, m):
        c, w = att.apply(p, q, m, mask)
        return jnp.sum(c ** 2) + jnp.sum(w * jnp.arange(S, dtype=F64)), (c, w)

    grads, (context, weights) = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(params, query, memory)
    assert np.all(np.asarray(weights) == 0.0) and np.all(np.asarray(context) == 0.0)
    for g in jax.tree.leaves(grads):
        assert np.all(np.asarray(g) == 0.0)


def test_masked_softmax_properties():
    rng = np.random.default_rng(3)
    scores = normal(rng, (4, 5), scale=300.0)
    mask = jnp.asarray([[1, 0, 1, 0, 1], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]], bool)

    def fn(s):
        w = masked_softmax(s, mask)
        return jnp.sum(w * jnp.arange(5.0, dtype=s.dtype)), w

    g, w = jax.jit(jax.grad(fn, has_aux=True))(scores)
    w, g, valid = np.asarray(w), np.asarray(g), np.asarray(mask)
    assert np.all(w[~valid] == 0.0) and np.all(np.isfinite(w)) and np.all(np.isfinite(g))
    assert np.all(g[~valid] == 0.0) and np.all(w[1] == 0.0) and w[3, 4] == 1.0
    np.testing.assert_allclose(w[[0, 2, 3]].sum(-1), 1.0, rtol=1e-12)
    s2 = np.asarray(scores[2])
    np.testing.assert_allclose(w[2], np.exp(s2 - s2.max()) / np.exp(s2 - s2.max()).sum(), rtol=1e-12)


@SOME_ATTENTIONS
def test_padded_memory_changes_nothing(name):
    """Extra masked positions, here NaN, give identical outputs and gradients."""
    att, params, query, memory, mask = attention_setup(name)
    extra = 3
    padded = jnp.concatenate([memory, jnp.full((B, extra, D), jnp.nan, F64)], axis=1)
    padded_mask = jnp.concatenate([mask, jnp.zeros((B, extra), bool)], axis=1)

    def loss(p, q, m, k):
        c, w = att.apply(p, q, m, k)
        return jnp.sum(jnp.sin(c)) + jnp.sum(w[..., :S] * jnp.arange(S, dtype=F64)), (c, w)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))
    (gp, gq, gm), (c, w) = grad(params, query, memory, mask)
    (gp2, gq2, gm2), (c2, w2) = grad(params, query, padded, padded_mask)
    assert np.all(np.asarray(w2)[:, S:] == 0.0) and np.all(np.asarray(gm2)[:, S:] == 0.0)
    assert_trees_close((c2, w2[:, :S], gp2, gq2, gm2[:, :S]), (c, w, gp, gq, gm), rtol=1e-12, atol=1e-12)


@SOME_ATTENTIONS
def test_any_batch_shape_matches_reference(name):
    att = attention_of(name)
    q = QUERY_SIZE.get(name, Q)
    rng = np.random.default_rng(7)
    params = random_params(att.init, rng, q, D)
    p, score = ref_attention_params(att, params), ref_score(att)
    for batch_shape in [(), (2, 3)]:
        query, memory = normal(rng, (*batch_shape, q)), normal(rng, (*batch_shape, S, D))
        mask = jnp.asarray(rng.random((*batch_shape, S)) < 0.7)
        context, weights = jitted_apply(name)(params, query, memory, mask)
        assert context.shape == (*batch_shape, D) and weights.shape == (*batch_shape, S)
        for idx in np.ndindex(*batch_shape):
            c, w = ref.attend(score, p, query[idx], memory[idx], mask[idx])
            np.testing.assert_allclose(weights[idx], w, **TOL64)
            np.testing.assert_allclose(context[idx], c, **TOL64)


@SOME_ATTENTIONS
def test_attention_gradients_finite_differences(name):
    att, params, query, memory, mask = attention_setup(name)
    check_grads(jax.jit(lambda p, q, m: att.apply(p, q, m, mask)), (params, query, memory), order=1, modes=["rev"])


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])  # float64: the tests above
@SOME_ATTENTIONS
def test_attention_dtype_preserved(name, dtype):
    att, params, query, memory, mask = attention_setup(name, dtype)
    context, weights = jitted_apply(name)(params, query, memory, mask)
    assert context.dtype == weights.dtype == dtype
    assert all(a.dtype == dtype for a in jax.tree.leaves(jax.eval_shape(
        lambda k: att.init(k, query.shape[-1], D, dtype=dtype), jax.random.key(0))))
    w = np.asarray(weights, np.float64)
    assert np.all(w[~np.asarray(mask)] == 0.0)
    np.testing.assert_allclose(w[np.asarray(mask).any(-1)].sum(-1), 1.0, atol=1e-2 if dtype == BF16 else 1e-6)
    tol = TOL32 if dtype == F32 else dict(rtol=0, atol=0.05)
    want_context, want_weights = ref_attend(att, params, query, memory, mask)  # on the rounded inputs
    np.testing.assert_allclose(w, want_weights, **tol)
    np.testing.assert_allclose(np.asarray(context, np.float64), want_context, **tol)


# --------------------------------------------------------------- decoder vs the reference

@all_decoders
def test_decoder_matches_reference_with_lengths(name):
    """Padded targets with ``lengths``: each example equals the reference run on its unpadded
    steps alone (float64, 1e-10); outputs and weights past the length are zero; the carry is
    the last valid one (the initial carry for length 0)."""
    dec, params, xs, memory, mask, carry = decoder_setup(name)
    lengths = np.array([T, 0, 2])
    valid = np.arange(T)[None, :, None] < lengths[:, None, None]
    padded = jnp.where(jnp.asarray(valid), xs, normal(np.random.default_rng(5), xs.shape, scale=1e3))
    apply, _ = jitted_decoder(name)
    ys, final, weights = apply(params, padded, memory, mask, carry, lengths=jnp.asarray(lengths, jnp.int32))
    assert ys.shape == (B, T, O) and weights.shape == (B, T, S)
    assert isinstance(final, AttentionDecoderState)
    assert all(a.dtype == F64 for a in jax.tree.leaves((ys, final, weights)))
    for b, n in enumerate(lengths):
        take = lambda tree: jax.tree.map(lambda a: a[b:b + 1], tree)
        want_ys, want_state, want_weights = run_ref_decoder(dec, params, xs[b:b + 1, :n], memory[b:b + 1],
                                                            mask[b:b + 1], take(carry))
        np.testing.assert_allclose(ys[b:b + 1, :n], want_ys, **TOL64)
        np.testing.assert_allclose(weights[b:b + 1, :n], want_weights, **TOL64)
        assert_trees_close(ref_state(take(final)), want_state if n else ref_state(take(carry)), **TOL64)
        assert np.all(np.asarray(ys)[b, n:] == 0.0) and np.all(np.asarray(weights)[b, n:] == 0.0)
    assert np.all(np.asarray(weights)[1] == 0.0)  # example 1 has an all-masked memory


@pytest.mark.parametrize("name", ["luong_additive_feed", "luong_general_nofeed", "bahdanau_general"])
def test_scan_equals_python_loop_of_step(name):
    dec, params, xs, memory, mask, carry = decoder_setup(name)
    apply, step = jitted_decoder(name)
    ys, final, weights = apply(params, xs, memory, mask, carry, lengths=jnp.full((B,), T, jnp.int32))
    mem = dec.precompute(params, memory, mask)
    assert isinstance(mem, AttentionMemory) and mem.keys.shape[:-1] == (B, S)
    c, loop = carry, []
    for t in range(T):
        c, y, w = step(params, c, xs[:, t], mem, mask)
        loop.append((y, w))
    assert_trees_close((ys, weights, final), (jnp.stack([y for y, _ in loop], 1),
                                              jnp.stack([w for _, w in loop], 1), c), **TOL64)


def test_decoder_batch_shapes():
    name = "luong_additive_feed"
    dec, params, xs, memory, mask, carry = decoder_setup(name)
    apply = jitted_decoder(name)[0]
    ys, final, weights = apply(params, xs, memory, mask, carry, lengths=jnp.full((B,), T, jnp.int32))
    take = lambda tree, b: jax.tree.map(lambda a: a[b], tree)
    yb, fb, wb = apply(params, xs[2], memory[2], mask[2], take(carry, 2))  # batch shape ()
    assert_trees_close((yb, fb, wb), (ys[2], take(final, 2), weights[2]), **TOL64)
    add = lambda tree: jax.tree.map(lambda a: a[None], tree)  # batch shape (1, B)
    y2, f2, w2 = apply(params, xs[None], memory[None], mask[None], add(carry))
    assert_trees_close((y2[0], take(f2, 0), w2[0]), (ys, final, weights), **TOL64)


def test_decoder_padded_memory_changes_nothing():
    dec, params, xs, memory, mask, carry = decoder_setup("bahdanau_additive")
    extra = 2
    padded = jnp.concatenate([memory, jnp.full((B, extra, memory.shape[-1]), jnp.nan, F64)], axis=1)
    padded_mask = jnp.concatenate([mask, jnp.zeros((B, extra), bool)], axis=1)

    def loss(p, x, m, k):
        ys, _, w = dec.apply(p, x, m, k, carry)
        return jnp.sum(ys ** 2), (ys, w)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))
    (gp, gx, gm), (ys, w) = grad(params, xs, memory, mask)
    (gp2, gx2, gm2), (ys2, w2) = grad(params, xs, padded, padded_mask)
    assert np.all(np.asarray(w2)[..., S:] == 0.0) and np.all(np.asarray(gm2)[:, S:] == 0.0)
    assert_trees_close((ys2, w2[..., :S], gp2, gx2, gm2[:, :S]), (ys, w, gp, gx, gm), rtol=1e-12, atol=1e-12)
    assert all(a.dtype == F64 for a in jax.tree.leaves((gp, gx, gm)))  # float64 gradients stay float64


def test_decoder_gradients_finite_differences():
    dec, params, xs, memory, mask, carry = decoder_setup("luong_additive_feed")
    fn = jax.jit(lambda p, x, m, c: dec.apply(p, x, m, mask, c))
    check_grads(fn, (params, xs[:, :3], memory, carry), order=1, modes=["rev"])


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])  # float64: the tests above
@SOME_DECODERS
def test_decoder_dtype_preserved(name, dtype):
    """Outputs and carry keep the dtype; values match the float64 reference run on the rounded
    inputs (1e-5 for float32, loosely for bfloat16). Starts from the zero carry."""
    dec, params, xs, memory, mask, _ = decoder_setup(name, dtype)
    shapes = jax.eval_shape(lambda k: dec.init(k, I, memory.shape[-1], dtype=dtype), jax.random.key(0))
    assert all(a.dtype == dtype for a in jax.tree.leaves(shapes))
    assert all(a.dtype == dtype for a in jax.tree.leaves(dec.init_carry(params, (B,))))
    ys, final, weights = jax.jit(dec.apply)(params, xs, memory, mask)
    assert all(a.dtype == dtype for a in jax.tree.leaves((ys, final, weights)))
    want_ys, want_state, want_weights = run_ref_decoder(dec, params, xs, memory, mask)
    tol = TOL32 if dtype == F32 else dict(rtol=0, atol=0.1)
    np.testing.assert_allclose(np.asarray(ys, np.float64), want_ys, **tol)
    np.testing.assert_allclose(np.asarray(weights, np.float64), want_weights, **tol)
    assert_trees_close(ref_state(final), want_state, **tol)


def test_init_shapes_and_options():
    key = jax.random.key(0)
    shapes = lambda init, *args: jax.eval_shape(lambda k: init(k, *args), key)
    p = shapes(additive_attention(A).init, Q, D)
    assert isinstance(p, AdditiveParams)
    assert (p.w_query.shape, p.w_memory.shape, p.v.shape) == ((Q, A), (D, A), (A,))
    assert shapes(multiplicative_attention("general").init, Q, D).w_memory.shape == (D, Q)
    assert multiplicative_attention("dot").init(key, D, D) == MultiplicativeParams(None)
    dec = attention_decoder(H, output_size=O)
    luong = jax.tree.map(jnp.shape, shapes(dec.init, I, D))
    assert luong.lstm.w_x == (I, 4 * H) and luong.w_feed == (O, 4 * H) and luong.w_c == (D + H, O)
    assert luong.attention == AdditiveParams((H, H), (D, H), (H,))  # attention_size defaults to H
    assert shapes(attention_decoder(H, "general", input_feeding=False).init, I, D).w_feed is None
    bahdanau = jax.tree.map(jnp.shape, shapes(attention_decoder(H, "general", style="bahdanau").init, I, D))
    assert bahdanau.w_feed == (D, 4 * H) and bahdanau.w_c == (D + H, H)
    carry = jax.eval_shape(lambda p: dec.init_carry(p, (2, 3)), shapes(dec.init, I, D))
    assert isinstance(carry, AttentionDecoderState) and isinstance(carry.lstm, LSTMState)
    assert carry.lstm.hidden.shape == (2, 3, H) and carry.attentional.shape == (2, 3, O)
    bd = attention_decoder(H, style="bahdanau")
    assert jax.eval_shape(bd.init_carry, shapes(bd.init, I, D)).attentional is None
    assert repr(additive_attention(A)) == "additive_attention(attention_size=7)"
    assert repr(multiplicative_attention("dot", scale=True)) == "multiplicative_attention(form='dot', scale=True)"
    assert "style='bahdanau'" in repr(bd) and (dec.hidden_size, dec.output_size) == (H, O)


# ---------------------------------------------------------------------------------- errors

def cheap_params(init, *args):
    """Parameters of the right structure, shapes and dtype without running ``init``."""
    shapes = jax.eval_shape(lambda k: init(k, *args, dtype=F64), jax.random.key(0))
    return jax.tree.map(lambda s: jnp.full(s.shape, 0.1, s.dtype), shapes)


ADD = additive_attention(A)
ADD_P = cheap_params(ADD.init, Q, D)
DOT = multiplicative_attention("dot")
GEN = multiplicative_attention("general")
GEN_P = cheap_params(GEN.init, Q, D)
QUERY, MEMORY, MASK = jnp.ones((B, Q), F64), jnp.ones((B, S, D), F64), jnp.ones((B, S), bool)
DEC = attention_decoder(H, output_size=O)
DEC_P = cheap_params(DEC.init, I, D)
XS = jnp.ones((B, T, I), F64)
S2S = seq2seq(8)
S2S_P = jax.eval_shape(S2S.init, jax.random.key(0))  # the errors fire before any computation


def case(id, thunk, error, *fragments):
    return pytest.param(thunk, error, fragments, id=id)


ERROR_CASES = [
    # attention constructors and init
    case("attention_size", lambda: additive_attention(0), ValueError, "`attention_size` must be a positive int, got 0."),
    case("form", lambda: multiplicative_attention("cosine"), ValueError, "`form` must be one of ('dot', 'general'), got 'cosine'."),
    case("query_size", lambda: ADD.init(jax.random.key(0), 0, D), ValueError, "`query_size` must be a positive int"),
    case("memory_size", lambda: ADD.init(jax.random.key(0), Q, 2.0), ValueError, "`memory_size` must be a positive int"),
    case("init_dtype", lambda: ADD.init(jax.random.key(0), Q, D, dtype=jnp.int32), TypeError, "`dtype` must be a floating dtype"),
    case("dot_sizes", lambda: DOT.init(jax.random.key(0), Q, D), ValueError,
         "dot attention needs `query_size` == `memory_size`, got 5 and 4", "form='general'"),
    # attention apply: memory
    case("memory_rank", lambda: ADD.apply(ADD_P, QUERY, jnp.ones((D,), F64)), ValueError,
         "`memory` must have shape [..., S, D] (at least 2 axes), got shape (4,)."),
    case("memory_size_mismatch", lambda: ADD.apply(ADD_P, QUERY, jnp.ones((B, S, D + 1), F64)), ValueError,
         "`memory` must have last axis 4 (the memory size the parameters were made for), got shape (3, 6, 5)."),
    case("memory_dtype", lambda: ADD.apply(ADD_P, QUERY, MEMORY.astype(F32)), TypeError,
         "`memory` has dtype float32 but the parameters are float64", "memory.astype(jnp.float64)"),
    case("dot_memory_int", lambda: DOT.apply(MultiplicativeParams(None), QUERY, jnp.ones((B, S, Q), jnp.int32)),
         TypeError, "`memory` must be floating, got dtype int32."),
    # mask
    case("mask_dtype", lambda: ADD.apply(ADD_P, QUERY, MEMORY, MASK.astype(jnp.int32)), TypeError,
         "`mask` must be a boolean array (True = attend), got dtype int32"),
    case("mask_shape", lambda: ADD.apply(ADD_P, QUERY, MEMORY, MASK[:, :-1]), ValueError,
         "`mask` must have shape (3, 6) (the [..., S] of `memory`, shape (3, 6, 4)), got (3, 5)."),
    case("mask_shape_precomputed", lambda: ADD.apply(ADD_P, QUERY, ADD.precompute(ADD_P, MEMORY), MASK[:2]),
         ValueError, "`mask` must have shape (3, 6)", "got (2, 6)."),
    # query
    case("query_size_mismatch", lambda: ADD.apply(ADD_P, jnp.ones((B, Q + 1), F64), MEMORY), ValueError,
         "`query` must have last axis 5 (the query size the parameters were made for), got shape (3, 6)."),
    case("query_dot_size", lambda: DOT.apply(MultiplicativeParams(None), QUERY, MEMORY), ValueError,
         "`query` must have last axis 4 (dot attention needs query size == memory size), got shape (3, 5)."),
    case("query_scalar", lambda: ADD.apply(ADD_P, jnp.ones((), F64), MEMORY), ValueError,
         "`query` must have shape [..., Q] with Q=5, got a scalar."),
    case("query_dtype", lambda: ADD.apply(ADD_P, QUERY.astype(BF16), MEMORY), TypeError,
         "`query` has dtype bfloat16 but the parameters are float64"),
    case("query_batch", lambda: ADD.apply(ADD_P, jnp.ones((2, Q), F64), MEMORY), ValueError,
         "`query` must have the memory's batch shape (3,) in front of Q", "got shape (2, 5)."),
    # params
    case("params_type", lambda: GEN.apply(ADD_P, QUERY, MEMORY), TypeError,
         "`params` must be MultiplicativeParams (from this attention's init), got AdditiveParams."),
    case("params_dot_vs_general", lambda: DOT.apply(GEN_P, QUERY, MEMORY),
         ValueError, "`params` were made for general attention, not 'dot'."),
    case("params_other_size", lambda: additive_attention(A + 1).apply(ADD_P, QUERY, MEMORY), ValueError,
         "`params.w_memory` must have last axis 8"),
    # decoder constructor
    case("dec_style", lambda: attention_decoder(H, style="transformer"), ValueError,
         "`style` must be one of ('luong', 'bahdanau'), got 'transformer'."),
    case("dec_attention", lambda: attention_decoder(H, "cosine"), ValueError,
         "`attention` must be one of ('additive', 'dot', 'general'), got 'cosine'."),
    case("dec_bahdanau_feeding", lambda: attention_decoder(H, style="bahdanau", input_feeding=True), ValueError,
         "`input_feeding` applies to style='luong' only"),
    case("dec_attention_object_options", lambda: attention_decoder(H, ADD, attention_size=3), ValueError,
         "`attention_size` and `scale` configure an attention given by name",
         "(additive_attention(attention_size=7)) is already configured."),
    case("dec_hidden", lambda: attention_decoder(0), ValueError, "`hidden_size` must be a positive int, got 0."),
    case("dec_dot_sizes", lambda: jax.eval_shape(lambda k: attention_decoder(H, "dot").init(k, I, D + 1),
                                                 jax.random.key(0)), ValueError,
         "dot attention needs `query_size` == `memory_size`, got 4 and 5"),
    # decoder apply
    case("dec_xs_rank", lambda: DEC.apply(DEC_P, jnp.ones((I,), F64), MEMORY), ValueError,
         "`xs` must have shape [..., T, I] (at least 2 axes), got shape (3,)."),
    case("dec_xs_size", lambda: DEC.apply(DEC_P, jnp.ones((B, T, I + 1), F64), MEMORY), ValueError,
         "`xs` must have shape", "with last axis 3", "got shape (3, 5, 4)."),
    case("dec_xs_dtype", lambda: DEC.apply(DEC_P, XS.astype(F32), MEMORY), TypeError,
         "`xs` has dtype float32 but the parameters are float64"),
    case("dec_memory_rank", lambda: DEC.apply(DEC_P, XS, jnp.ones((D,), F64)), ValueError,
         "`memory` must have shape [..., S, D] (at least 2 axes), got shape (4,)."),
    case("dec_memory_size", lambda: DEC.apply(DEC_P, XS, jnp.ones((B, S, D + 2), F64)), ValueError,
         "`memory` must have last axis 4 (the memory size the parameters were made for), got shape (3, 6, 6)."),
    case("dec_memory_batch", lambda: DEC.apply(DEC_P, XS, jnp.ones((2, S, D), F64)), ValueError,
         "`memory` must have the batch shape of `xs` (3,) in front of [S, D], got shape (2, 6, 4)."),
    case("dec_memory_dtype", lambda: DEC.apply(DEC_P, XS, MEMORY.astype(BF16)), TypeError,
         "`memory` has dtype bfloat16 but the parameters are float64"),
    case("dec_mask_dtype", lambda: DEC.apply(DEC_P, XS, MEMORY, jnp.ones((B, S), F64)), TypeError,
         "`memory_mask` must be a boolean array (True = attend), got dtype float64"),
    case("dec_mask_shape", lambda: DEC.apply(DEC_P, XS, MEMORY, jnp.ones((B, S + 1), bool)), ValueError,
         "`memory_mask` must have shape (3, 6)", "got (3, 7)."),
    case("dec_params", lambda: DEC.apply(DEC_P.lstm, XS, MEMORY), TypeError,
         "`params` must be AttentionDecoderParams (from this decoder's init), got LSTMParams."),
    case("dec_params_other_decoder", lambda: attention_decoder(H, output_size=O, input_feeding=False).apply(
        DEC_P, XS, MEMORY), ValueError, "`params` do not fit this decoder", "input_feeding=False"),
    case("dec_carry", lambda: DEC.apply(DEC_P, XS, MEMORY, None, DEC.init_carry(DEC_P, (2,))), ValueError,
         "`carry` must have shapes"),
    case("dec_lengths_dtype", lambda: DEC.apply(DEC_P, XS, MEMORY, lengths=jnp.ones((B,), F64)), TypeError,
         "`lengths` must be an integer array, got dtype float64."),
    case("dec_lengths_range", lambda: DEC.apply(DEC_P, XS, MEMORY, lengths=jnp.array([1, 2, T + 1])), ValueError,
         "`lengths` must lie in [0, 5]"),
    case("dec_step_carry", lambda: DEC.step(DEC_P, DEC.init_carry(DEC_P, (B,)).lstm, XS[:, 0], MEMORY), TypeError,
         "`carry` must be an AttentionDecoderState (see `init_carry`), got LSTMState."),
    # seq2seq
    case("s2s_src_dtype", lambda: S2S.apply(S2S_P, jnp.ones((B, S), F32), jnp.full((B,), S), jnp.ones((B, T), jnp.int32)),
         TypeError, "`src` must be integer token ids in [0, 8), got dtype float32."),
    case("s2s_steps", lambda: S2S.greedy(S2S_P, jnp.ones((B, S), jnp.int32), jnp.full((B,), S), 1, 0),
         ValueError, "`num_steps` must be a positive int, got 0."),
]


@pytest.mark.parametrize("thunk, error, fragments", ERROR_CASES)
def test_error_messages(thunk, error, fragments):
    with pytest.raises(error) as info:
        thunk()
    message = str(info.value)
    position = 0
    for fragment in fragments:
        found = message.find(fragment, position)
        assert found >= 0, f"{fragment!r} not found (in order) in {message!r}"
        position = found + len(fragment)


# -------------------------------------------------------------------------------- training

PAD, BOS, SYMBOLS, VOCAB, SRC_LEN, MIN_LEN = 0, 1, 6, 8, 8, 5


def reversal_batch(key, n):
    """Sources of SYMBOLS symbols (ids 2..7), lengths in [5, 8], padded with 0; the target is
    the source reversed within its length; the decoder input is the target behind BOS."""
    ks, kl = jax.random.split(key)
    t = jnp.arange(SRC_LEN, dtype=jnp.int32)
    lengths = jax.random.randint(kl, (n,), MIN_LEN, SRC_LEN + 1, jnp.int32)
    valid = t < lengths[:, None]
    src = jnp.where(valid, jax.random.randint(ks, (n, SRC_LEN), 2, 2 + SYMBOLS, jnp.int32), PAD)
    tgt = jnp.where(valid, jnp.take_along_axis(src, jnp.where(valid, lengths[:, None] - 1 - t, t), axis=1), PAD)
    tgt_in = jnp.concatenate([jnp.full((n, 1), BOS, jnp.int32), tgt[:, :-1]], axis=1)
    return src, lengths, tgt_in, tgt, valid


def test_seq2seq_learns_to_reverse():
    """Held-out greedy token accuracy must exceed 0.9 after 500 Adam steps.

    The decoder starts from a zero carry, so all it knows of the source comes through
    attention: without it, accuracy is at chance (1/6 ≈ 0.17). The initial loss is about
    ln 8 (uniform over the vocabulary).
    """
    model = seq2seq(VOCAB, embed_size=16, hidden_size=16, attention="additive", style="luong")
    params = model.init(jax.random.key(0))
    opt = optax.adam(2e-2)

    def loss_fn(params, src, lengths, tgt_in, tgt, valid):
        logits, _ = model.apply(params, src, lengths, tgt_in, tgt_lengths=lengths)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, tgt)
        return jnp.sum(jnp.where(valid, ce, jnp.zeros_like(ce))) / jnp.sum(valid).astype(F32)

    def update(carry, key):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, *reversal_batch(key, 32))
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    keys = jax.random.split(jax.random.key(1), 500)
    with jax.numpy_dtype_promotion("standard"):  # optax's bias correction mixes int and float
        (params, _), losses = jax.jit(lambda c: jax.lax.scan(update, c, keys))((params, opt.init(params)))
    src, lengths, _, tgt, valid = reversal_batch(jax.random.key(2), 256)
    tokens, weights = jax.jit(model.greedy, static_argnums=(3, 4))(params, src, lengths, BOS, SRC_LEN)
    accuracy = float(jnp.sum((tokens == tgt) & valid) / jnp.sum(valid))
    assert float(losses[0]) > 0.9 * np.log(SYMBOLS)  # it starts out knowing nothing
    assert accuracy > 0.9, f"held-out greedy token accuracy {accuracy:.3f} not above 0.9"
    # the attention learned the reversal: output step t looks mostly at source step L - 1 - t
    w = np.asarray(weights)
    peak = w.argmax(-1)  # [N, T]
    want = np.asarray(lengths)[:, None] - 1 - np.arange(SRC_LEN)[None, :]
    assert np.mean(peak[np.asarray(valid)] == want[np.asarray(valid)]) > 0.8
    assert np.all(w[~np.broadcast_to(np.asarray(valid)[:, None, :], w.shape)] == 0.0)  # padding never attended
