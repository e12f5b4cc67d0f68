"""Attention (additive, dot, general, scaled), the attention decoder cell (Luong, Bahdanau)
and the seq2seq model.

Proven here, against the float64 NumPy references of ``tests/reference_attention.py`` (written
from the papers' equations, masked softmax over the unmasked positions only, decoder stepped
in a Python loop on the LSTM reference of ``tests/reference.py``):

* raw scores, contexts and weights of every attention equal the reference (f64 1e-10, f32
  1e-5), for batch shapes (), (3,), (2, 3); ``apply`` on a raw memory == on a precomputed
  one (an :class:`AttentionMemory` with masked rows zeroed and the mask, all True without one);
* masked positions get exactly zero weight, the rest sum to one, even with huge scores; an
  all-masked row gives zero weights and context and zero gradients, never NaN;
* extra masked memory positions holding garbage (NaN) change nothing, values or gradients;
* the decoder cell through ``lj.unroll`` (both styles, every attention, with and without input
  feeding) equals the reference from a random carry, with ``lengths``: each padded target
  equals the reference on the unpadded one, padded outputs and weights are zero, the carry is
  the last valid one and its memory is the one ``init_carry`` made, unchanged;
* ``lj.unroll`` with ``lengths`` equals a Python loop of ``Cell.step``; ``return_gates`` gives
  the LSTM's gates; batch shapes (), (B,), (1, B);
* an empty memory (``init_carry`` without one) gives zero context, never NaN, and equals an
  all-masked memory; the carry checks accept a memory of any length and refuse a wrong ``D``;
* decoder cells and attentions compare and hash by config, ``repr`` rebuilds an equal cell;
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
import lstm_jax as lj
import lstm_jax.initializers as inits
import reference_attention as ref  # tests/reference_attention.py
from lstm_jax.cells.attention import (
    AdditiveAttentionConfig,
    AdditiveParams,
    Attention,
    AttentionDecoderConfig,
    AttentionDecoderParams,
    AttentionDecoderState,
    AttentionMemory,
    DecoderOutput,
    MultiplicativeAttentionConfig,
    MultiplicativeParams,
    additive_attention,
    attention_decoder,
    multiplicative_attention,
)
from lstm_jax.cells.lstm import LSTMState
from lstm_jax.models.seq2seq import Seq2SeqParams, seq2seq
from lstm_jax.ops import masked_softmax

F32, F64, BF16 = jnp.float32, jnp.float64, jnp.bfloat16
B, S, D, Q, A = 3, 6, 4, 5, 7  # batch, memory length, memory size, query size, attention size
T, I, H, O = 5, 3, 4, 6  # decoder steps, input size, hidden size, output size
MEM_LENGTHS = (6, 0, 3)  # full, all masked, partial
TOL64 = dict(rtol=1e-10, atol=1e-10)
TOL32 = dict(rtol=1e-5, atol=1e-5)
LSTM_GATES = {"input", "forget", "candidate", "output", "cell", "hidden"}

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


def floating_leaves(tree):
    return [a for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)]


def take(tree, b):
    """Example(s) ``b`` (an int or a slice) of every leaf."""
    return jax.tree.map(lambda a: a[b], tree)


assert_trees_close = helpers.assert_trees_close


def kind(att):
    """``"additive"``, ``"dot"`` or ``"general"``."""
    return "additive" if isinstance(att.config, AdditiveAttentionConfig) else att.config.form


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
    if kind(att) == "additive":
        return {"W_s": p.w_query.T, "W_h": p.w_memory.T, "v": p.v}
    return {} if kind(att) == "dot" else {"W": p.w_memory.T}


def ref_score(att):
    if kind(att) == "additive":
        return ref.additive_score
    fn = ref.dot_score if kind(att) == "dot" else ref.general_score
    return functools.partial(fn, scale=att.config.scale)


def ref_attend(att, params, query, memory, mask):
    return ref.attend_batch(ref_score(att), ref_attention_params(att, params), f64(query), f64(memory),
                            np.asarray(mask))


@functools.cache
def decoder_of(name):
    attention, style, feeding = DECODERS[name]
    return attention_decoder(H, attention, memory_size=DEC_MEMORY.get(name, D), style=style, input_feeding=feeding,
                             output_size=O, attention_size=A if attention == "additive" else None)


def decoder_carry(dec, params, memory, mask, start=None):
    """``init_carry`` with the memory; the LSTM state and ``h~`` taken from ``start`` if given."""
    carry = dec.init_carry(params, memory=memory, memory_mask=mask)
    return carry if start is None else carry._replace(lstm=start.lstm, attentional=start.attentional)


@functools.cache
def decoder_setup(name, dtype=F64):
    """(decoder, params, xs [B, T, I], memory [B, S, D], mask [B, S], carry): random params,
    inputs, memory and LSTM state; the carry holds the memory, projected by ``init_carry``."""
    dec = decoder_of(name)
    rng = np.random.default_rng(10)
    params = random_params(dec.init, rng, I)
    xs, memory = normal(rng, (B, T, I)), normal(rng, (B, S, dec.config.memory_size))
    zeros = jax.eval_shape(lambda p: dec.init_carry(p, (B,)), params)
    start = zeros._replace(lstm=random_like(zeros.lstm, rng), attentional=random_like(zeros.attentional, rng),
                           memory=None)
    params, xs, memory, start = cast((params, xs, memory, start), dtype)
    mask = length_mask(MEM_LENGTHS)
    return dec, params, xs, memory, mask, decoder_carry(dec, params, memory, mask, start)


@functools.cache
def jitted_decoder(name):
    """(jit(unroll with lengths and gates), jit(Cell.step)) of one decoder, shared by all tests."""
    dec = decoder_of(name)
    run = lambda p, xs, carry, lengths: lj.unroll(dec, p, xs, carry, lengths=lengths, return_gates=True)
    return jax.jit(run), jax.jit(dec.step)


def ref_decoder_params(dec, params):
    p = f64(params)
    blocks = lambda w: np.split(w, 4, axis=-1)  # (i, f, g, o)
    wx = blocks(p.lstm.w_x)
    if p.w_feed is not None:  # the LSTM's kernel on the concatenated input [x; feed]
        wx = [np.concatenate([a, b], axis=0) for a, b in zip(wx, blocks(p.w_feed))]
    lstm_p = {}
    for k, wxk, whk, bk in zip("ifgo", wx, blocks(p.lstm.w_h), blocks(p.lstm.b)):
        lstm_p.update({f"W_x{k}": wxk, f"W_h{k}": whk, f"b_{k}": bk})
    return {"lstm": lstm_p, "W_c": p.w_c.T, "att": ref_attention_params(dec.config.attention, params.attention)}


def ref_state(carry):
    state = {"h": np.asarray(carry.lstm.hidden, np.float64), "c": np.asarray(carry.lstm.cell, np.float64)}
    if carry.attentional is not None:
        state["att"] = np.asarray(carry.attentional, np.float64)
    return state


def run_ref_decoder(dec, params, xs, memory, mask, carry=None):
    return ref.attention_decoder(
        ref_decoder_params(dec, params), f64(xs), f64(memory), np.asarray(mask),
        score=ref_score(dec.config.attention), style=dec.config.style,
        input_feeding=dec.config.input_feeding, state=None if carry is None else ref_state(carry))


# -------------------------------------------------------------- attention vs the reference

@functools.cache
def jitted_attention_suite(name):
    """One compiled function: the precomputed memory, raw scores, apply on a raw and on a
    precomputed memory."""
    att = attention_of(name)

    def suite(p, q, m, k):
        pre = att.precompute(p, m, k)
        return pre, att.score(p, q, pre), att.apply(p, q, m, k), att.apply(p, q, pre)

    return jax.jit(suite)


@all_attentions
def test_attention_matches_reference_f64(name):
    att, params, query, memory, mask = attention_setup(name)
    pre, scores, (context, weights), from_pre = jitted_attention_suite(name)(params, query, memory, mask)
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
    assert isinstance(pre, AttentionMemory) and pre.mask.dtype == jnp.bool_
    assert np.array_equal(pre.mask, valid) and np.all(np.asarray(pre.values)[~valid] == 0.0)
    np.testing.assert_array_equal(np.asarray(pre.values)[valid], np.asarray(memory)[valid])


@all_attentions
def test_masked_weights_exactly_zero_and_sum_to_one(name):
    att, params, query, memory, mask = attention_setup(name)
    suite = jitted_attention_suite(name)
    _, _, (context, weights), _ = suite(params, 1e3 * query, 1e3 * memory, mask)  # huge scores
    weights, valid = np.asarray(weights), np.asarray(mask)
    assert np.all(np.isfinite(weights)) and np.all(np.isfinite(np.asarray(context)))
    assert np.all(weights[~valid] == 0.0)  # exactly, not approximately
    assert np.all(weights >= 0.0)
    np.testing.assert_allclose(weights[valid.any(-1)].sum(-1), 1.0, rtol=1e-12)
    # everything attended (same compiled function, all-True mask) == no mask at all
    full = jnp.ones((B, S), bool)
    _, _, unmasked, _ = suite(params, query, memory, full)
    assert np.all(np.asarray(unmasked[1]) > 0.0)
    assert_trees_close(jax.jit(att.apply)(params, query, memory), unmasked, rtol=1e-13, atol=1e-13)
    assert np.all(np.asarray(jax.jit(att.precompute)(params, memory).mask))  # no mask: all True


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


def test_attentions_compare_and_hash_by_config():
    assert additive_attention(A) == additive_attention(A) and hash(additive_attention(A)) == hash(additive_attention(A))
    assert additive_attention(A) != additive_attention(A + 1)
    assert multiplicative_attention("dot") != multiplicative_attention("general")
    assert multiplicative_attention("dot", scale=True) != multiplicative_attention("dot")
    assert multiplicative_attention() == multiplicative_attention("general", scale=False)
    ortho = lambda: additive_attention(A, kernel_init=inits.orthogonal(0.5))
    assert ortho() == ortho() and ortho() != additive_attention(A)
    assert isinstance(additive_attention(A).config, AdditiveAttentionConfig)
    assert isinstance(multiplicative_attention().config, MultiplicativeAttentionConfig)
    assert repr(additive_attention(A)) == "additive_attention(7)"
    assert repr(multiplicative_attention("dot", scale=True)) == "multiplicative_attention('dot', scale=True)"
    assert len({additive_attention(A), additive_attention(A), multiplicative_attention()}) == 2


# --------------------------------------------------------------- decoder vs the reference

@all_decoders
def test_decoder_matches_reference_with_lengths(name):
    """Padded targets with ``lengths``: each example equals the reference run on its unpadded
    steps alone (float64, 1e-10); outputs and weights past the length are zero; the carry is
    the last valid one (the initial carry for length 0) and its memory the initial one."""
    dec, params, xs, memory, mask, carry = decoder_setup(name)
    lengths = np.array([T, 0, 2])
    valid = np.arange(T)[None, :, None] < lengths[:, None, None]
    padded = jnp.where(jnp.asarray(valid), xs, normal(np.random.default_rng(5), xs.shape, scale=1e3))
    run, _ = jitted_decoder(name)
    ys, final, _ = run(params, padded, carry, jnp.asarray(lengths, jnp.int32))
    assert isinstance(ys, DecoderOutput) and ys.y.shape == (B, T, O) and ys.weights.shape == (B, T, S)
    assert isinstance(final, AttentionDecoderState)
    assert all(a.dtype == F64 for a in floating_leaves((ys, final)))
    for b, n in enumerate(lengths):
        want_ys, want_state, want_weights = run_ref_decoder(dec, params, xs[b:b + 1, :n], memory[b:b + 1],
                                                            mask[b:b + 1], take(carry, slice(b, b + 1)))
        np.testing.assert_allclose(ys.y[b:b + 1, :n], want_ys, **TOL64)
        np.testing.assert_allclose(ys.weights[b:b + 1, :n], want_weights, **TOL64)
        got_state = ref_state(take(final, slice(b, b + 1)))
        assert_trees_close(got_state, want_state if n else ref_state(take(carry, slice(b, b + 1))), **TOL64)
        assert np.all(np.asarray(ys.y)[b, n:] == 0.0) and np.all(np.asarray(ys.weights)[b, n:] == 0.0)
    assert np.all(np.asarray(ys.weights)[1] == 0.0)  # example 1 has an all-masked memory
    assert_trees_close(final.memory, carry.memory, rtol=0, atol=0)  # the memory rides along unchanged


@pytest.mark.parametrize("name", ["luong_additive_feed", "luong_general_nofeed", "bahdanau_general"])
def test_unroll_with_lengths_equals_cell_step(name):
    """``lj.unroll`` (one scan, lengths) == a Python loop of ``Cell.step`` over each example's
    valid steps; the memory in the carry is unchanged; ``return_gates`` gives the LSTM's gates."""
    dec, params, xs, memory, mask, carry = decoder_setup(name)
    run, step = jitted_decoder(name)
    lengths = np.array([T, 1, 3])
    ys, final, aux = run(params, xs, carry, jnp.asarray(lengths, jnp.int32))
    c, carries, outs = carry, [], []
    for t in range(T):
        c, out = step(params, c, xs[:, t])
        carries.append(c)
        outs.append(out)
    assert isinstance(out, DecoderOutput) and out.y.shape == (B, O) and out.weights.shape == (B, S)
    for b, n in enumerate(lengths):
        want = jax.tree.map(lambda *a: jnp.stack(a), *outs[:n])  # DecoderOutput of [n, ...]
        assert_trees_close(take(ys, (b, slice(0, n))), take(want, (slice(None), b)), **TOL64)
        assert_trees_close(take(final, b), take(carries[n - 1], b), **TOL64)
        assert np.all(np.asarray(ys.y)[b, n:] == 0.0)
        np.testing.assert_allclose(aux.gates["hidden"][b, n - 1], final.lstm.hidden[b], **TOL64)
    assert set(aux.gates) == LSTM_GATES and aux.gates["input"].shape == (B, T, H)
    assert isinstance(carry.memory, AttentionMemory) and carry.memory.keys.shape[:-1] == (B, S)
    assert_trees_close(final.memory, carry.memory, rtol=0, atol=0)
    assert_trees_close(c.memory, carry.memory, rtol=0, atol=0)
    new, y, gates = dec.recur(params, carry, dec.project(params, xs[:, 0]), aux=True)
    assert set(gates) == LSTM_GATES and isinstance(y, DecoderOutput)
    assert_trees_close((new, y), (carries[0], outs[0]), **TOL64)


def test_decoder_batch_shapes():
    name = "luong_additive_feed"
    dec, params, xs, memory, mask, carry = decoder_setup(name)
    run = jax.jit(lambda p, xs, c: lj.unroll(dec, p, xs, c))
    ys, final = run(params, xs, carry)
    yb, fb = run(params, xs[2], take(carry, 2))  # batch shape ()
    assert_trees_close((yb, fb), (take(ys, 2), take(final, 2)), **TOL64)
    add = lambda tree: jax.tree.map(lambda a: a[None], tree)  # batch shape (1, B)
    y2, f2 = run(params, xs[None], add(carry))
    assert_trees_close((take(y2, 0), take(f2, 0)), (ys, final), **TOL64)
    # init_carry takes the batch shape from the memory
    assert dec.init_carry(params, memory=memory[2], memory_mask=mask[2]).lstm.hidden.shape == (H,)
    assert dec.init_carry(params, (1, B), memory=memory[None]).memory.mask.shape == (1, B, S)


def test_decoder_padded_memory_changes_nothing():
    dec, params, xs, memory, mask, carry = decoder_setup("bahdanau_additive")
    extra = 2
    padded = jnp.concatenate([memory, jnp.full((B, extra, memory.shape[-1]), jnp.nan, F64)], axis=1)
    padded_mask = jnp.concatenate([mask, jnp.zeros((B, extra), bool)], axis=1)

    def loss(p, x, m, k):
        ys, _ = lj.unroll(dec, p, x, decoder_carry(dec, p, m, k, carry))
        return jnp.sum(ys.y ** 2), ys

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))
    (gp, gx, gm), ys = grad(params, xs, memory, mask)
    (gp2, gx2, gm2), ys2 = grad(params, xs, padded, padded_mask)
    assert np.all(np.asarray(ys2.weights)[..., S:] == 0.0) and np.all(np.asarray(gm2)[:, S:] == 0.0)
    assert_trees_close((ys2.y, ys2.weights[..., :S], gp2, gx2, gm2[:, :S]), (ys.y, ys.weights, gp, gx, gm),
                       rtol=1e-12, atol=1e-12)
    assert all(a.dtype == F64 for a in jax.tree.leaves((gp, gx, gm)))  # float64 gradients stay float64


def test_decoder_gradients_finite_differences():
    dec, params, xs, memory, mask, carry = decoder_setup("luong_additive_feed")

    def fn(p, x, m, start):
        lstm_state, attentional = start
        ys, final = lj.unroll(dec, p, x, decoder_carry(dec, p, m, mask, carry._replace(
            lstm=lstm_state, attentional=attentional)))
        return ys, (final.lstm, final.attentional)

    check_grads(jax.jit(fn), (params, xs[:, :3], memory, (carry.lstm, carry.attentional)), order=1, modes=["rev"])


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])  # float64: the tests above
@SOME_DECODERS
def test_decoder_dtype_preserved(name, dtype):
    """Outputs and carry keep the dtype; values match the float64 reference run on the rounded
    inputs (1e-5 for float32, loosely for bfloat16). Starts from the zero carry."""
    dec, params, xs, memory, mask, _ = decoder_setup(name, dtype)
    shapes = jax.eval_shape(lambda k: dec.init(k, I, dtype=dtype), jax.random.key(0))
    assert all(a.dtype == dtype for a in jax.tree.leaves(shapes))
    assert all(a.dtype == dtype for a in floating_leaves(jax.eval_shape(lambda p: dec.init_carry(p, (B,)), params)))
    ys, final = jax.jit(lambda p, x, m, k: lj.unroll(dec, p, x, dec.init_carry(p, memory=m, memory_mask=k)))(
        params, xs, memory, mask)
    assert all(a.dtype == dtype for a in floating_leaves((ys, final)))
    want_ys, want_state, want_weights = run_ref_decoder(dec, params, xs, memory, mask)
    tol = TOL32 if dtype == F32 else dict(rtol=0, atol=0.1)
    np.testing.assert_allclose(np.asarray(ys.y, np.float64), want_ys, **tol)
    np.testing.assert_allclose(np.asarray(ys.weights, np.float64), want_weights, **tol)
    assert_trees_close(ref_state(final), want_state, **tol)


def test_empty_memory_gives_zero_context_never_nan():
    """Without a memory the carry holds an empty one (S = 0): the context is zero, outputs and
    gradients are finite, the weights are ``[B, T, 0]``, and the decoder equals the reference
    with no memory and the same decoder over an all-masked memory."""
    name = "luong_additive_feed"
    dec, params, xs, memory, _, carry = decoder_setup(name)
    empty = dec.init_carry(params, (B,))
    assert empty.memory.values.shape == (B, 0, D) and empty.memory.keys.shape == (B, 0, A)
    assert empty.memory.mask.shape == (B, 0) and empty.memory.mask.dtype == jnp.bool_
    start = empty._replace(lstm=carry.lstm, attentional=carry.attentional)

    def loss(p, x, c):
        ys, final = lj.unroll(dec, p, x, c)
        return jnp.sum(ys.y ** 2), (ys, final)

    grad = jax.jit(jax.grad(loss, has_aux=True))
    g, (ys, final) = grad(params, xs, start)
    assert ys.y.shape == (B, T, O) and ys.weights.shape == (B, T, 0)
    assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree.leaves((g, ys, final)))
    assert all(np.all(np.asarray(a) == 0.0) for a in jax.tree.leaves(g.attention))  # nothing attended
    want_ys, want_state, _ = run_ref_decoder(dec, params, xs, np.zeros((B, 0, D)), np.zeros((B, 0), bool), start)
    np.testing.assert_allclose(ys.y, want_ys, **TOL64)
    assert_trees_close(ref_state(final), want_state, **TOL64)
    nothing = jnp.zeros((B, S), bool)
    _, (masked, _) = grad(params, xs, decoder_carry(dec, params, memory, nothing, start))
    assert_trees_close(masked.y, ys.y, **TOL64)
    # unroll without a carry starts from the empty memory
    assert jax.eval_shape(lambda p, x: lj.unroll(dec, p, x), params, xs)[1].memory.values.shape == (B, 0, D)


def test_carry_checks_accept_any_memory_length_refuse_wrong_size():
    """The carry template's memory axis has size 0, so ``unroll`` and ``Cell.step`` accept a
    memory of any length S; a memory of another size D is refused, naming the leaf."""
    dec, params, xs, _, _, _ = decoder_setup("luong_additive_feed")
    for length in (1, S + 3):
        carry = jax.eval_shape(lambda p, m: dec.init_carry(p, memory=m), params, jnp.zeros((B, length, D), F64))
        ys, final = jax.eval_shape(lambda p, x, c: lj.unroll(dec, p, x, c), params, xs, carry)
        assert ys.weights.shape == (B, T, length) and final.memory.values.shape == (B, length, D)
        _, out = jax.eval_shape(dec.step, params, carry, xs[:, 0])
        assert out.weights.shape == (B, length)
    other = attention_decoder(H, memory_size=D + 1, output_size=O, attention_size=A)
    other_params = jax.eval_shape(lambda k: other.init(k, I, dtype=F64), jax.random.key(0))
    wrong = jax.eval_shape(lambda p, m: other.init_carry(p, memory=m), other_params, jnp.zeros((B, S, D + 1), F64))
    message = "`carry.memory.values` must have shape (3, *, 4) for batch shape (3,)"
    with pytest.raises(ValueError, match=r"got \(3, 6, 5\)") as info:
        lj.unroll(dec, params, xs, wrong)
    assert message in str(info.value)
    with pytest.raises(ValueError, match=r"got \(3, 6, 5\)"):
        dec.step(params, wrong, xs[:, 0])


def test_decoder_cells_equal_and_hashable():
    dec = attention_decoder(H, memory_size=D)
    assert dec == attention_decoder(H, memory_size=D) and hash(dec) == hash(attention_decoder(H, memory_size=D))
    assert dec == attention_decoder(H, additive_attention(H), memory_size=D, input_feeding=True, output_size=H)
    assert dec == attention_decoder(H, "additive", memory_size=D, attention_size=H)
    assert dec != attention_decoder(H, memory_size=D + 1)
    assert dec != attention_decoder(H, memory_size=D, style="bahdanau")
    assert dec != attention_decoder(H, "general", memory_size=D)
    assert attention_decoder(H, "dot", memory_size=H, scale=True) == attention_decoder(
        H, multiplicative_attention("dot", scale=True), memory_size=H)
    assert len({dec, attention_decoder(H, memory_size=D), attention_decoder(H, memory_size=D + 1)}) == 2
    assert isinstance(dec.config, AttentionDecoderConfig) and isinstance(dec.config.attention, Attention)
    namespace = dict(attention_decoder=attention_decoder, additive_attention=additive_attention,
                     multiplicative_attention=multiplicative_attention)
    for cell in (dec, attention_decoder(H, "general", memory_size=D, style="bahdanau", scale=True, output_size=O)):
        assert eval(repr(cell), namespace) == cell  # repr is the constructor call of an equal cell
    assert dec.config.replace(memory_size=D + 1).build() == attention_decoder(H, memory_size=D + 1)
    # a static jit argument: equal cells share one compiled function
    fn = jax.jit(lambda cell, p, x: lj.unroll(cell, p, x)[0].y, static_argnums=0)
    params = cheap_params(dec.init, I)
    xs = jnp.ones((2, 3, I), F64)
    np.testing.assert_array_equal(fn(dec, params, xs), fn(attention_decoder(H, memory_size=D), params, xs))
    assert fn._cache_size() == 1


def test_init_shapes_and_options():
    key = jax.random.key(0)
    shapes = lambda init, *args: jax.eval_shape(lambda k: init(k, *args), key)
    p = shapes(additive_attention(A).init, Q, D)
    assert isinstance(p, AdditiveParams)
    assert (p.w_query.shape, p.w_memory.shape, p.v.shape) == ((Q, A), (D, A), (A,))
    assert shapes(multiplicative_attention("general").init, Q, D).w_memory.shape == (D, Q)
    assert multiplicative_attention("dot").init(key, D, D) == MultiplicativeParams(None)
    dec = attention_decoder(H, memory_size=D, output_size=O)
    params = shapes(dec.init, I)
    assert isinstance(params, AttentionDecoderParams)
    luong = jax.tree.map(jnp.shape, params)
    assert luong.lstm.w_x == (I, 4 * H) and luong.w_feed == (O, 4 * H) and luong.w_c == (D + H, O)
    assert luong.attention == AdditiveParams((H, H), (D, H), (H,))  # attention_size defaults to H
    assert shapes(attention_decoder(H, "general", memory_size=D, input_feeding=False).init, I).w_feed is None
    bahdanau = jax.tree.map(jnp.shape, shapes(attention_decoder(H, "general", memory_size=D, style="bahdanau").init, I))
    assert bahdanau.w_feed == (D, 4 * H) and bahdanau.w_c == (D + H, H)
    carry = jax.eval_shape(lambda p: dec.init_carry(p, (2, 3)), params)
    assert isinstance(carry, AttentionDecoderState) and isinstance(carry.lstm, LSTMState)
    assert carry.lstm.hidden.shape == (2, 3, H) and carry.attentional.shape == (2, 3, O)
    assert isinstance(carry.memory, AttentionMemory) and carry.memory.values.shape == (2, 3, 0, D)
    bd = attention_decoder(H, memory_size=D, style="bahdanau")
    assert jax.eval_shape(bd.init_carry, shapes(bd.init, I)).attentional is None
    assert bd.config.input_feeding is False and dec.config.input_feeding is True
    assert "style='bahdanau'" in repr(bd) and (dec.hidden_size, dec.output_size) == (H, O)
    assert attention_decoder(H, memory_size=D).output_size == H


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
DEC = attention_decoder(H, memory_size=D, output_size=O)
DEC_P = cheap_params(DEC.init, I)
XS = jnp.ones((B, T, I), F64)
DEC_CARRY = DEC.init_carry(DEC_P, memory=MEMORY, memory_mask=MASK)
S2S = seq2seq(8)
S2S_P = jax.eval_shape(S2S.init, jax.random.key(0))  # the errors fire before any computation
DEC_NAME = "attention_decoder(4, memory_size=4, attention=additive_attention(4), input_feeding=True, output_size=6)"


class UnhashableInit:
    __hash__ = None  # type: ignore[assignment]

    def __call__(self, key, shape, dtype):
        return jnp.zeros(shape, dtype)


def case(id, thunk, error, *fragments):
    return pytest.param(thunk, error, fragments, id=id)


ERROR_CASES = [
    # attention constructors and init
    case("attention_size", lambda: additive_attention(0), ValueError,
         "`attention_size` must be a positive int, got 0."),
    case("form", lambda: multiplicative_attention("cosine"), ValueError,
         "`form` must be one of ('dot', 'general'), got 'cosine'."),
    case("scale_type", lambda: multiplicative_attention("dot", scale=1), TypeError, "`scale` must be a bool, got 1."),
    case("kernel_init_unhashable", lambda: additive_attention(A, kernel_init=UnhashableInit()), TypeError,
         "`kernel_init` must be hashable"),
    case("query_size", lambda: ADD.init(jax.random.key(0), 0, D), ValueError, "`query_size` must be a positive int"),
    case("memory_size", lambda: ADD.init(jax.random.key(0), Q, 2.0), ValueError,
         "`memory_size` must be a positive int"),
    case("init_dtype", lambda: ADD.init(jax.random.key(0), Q, D, dtype=jnp.int32), TypeError,
         "`dtype` must be a floating dtype"),
    case("init_key", lambda: ADD.init(0, Q, D), TypeError,
         "`key` must be a PRNG key such as jax.random.key(0), got int 0."),
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
    case("score_raw_memory", lambda: ADD.score(ADD_P, QUERY, MEMORY), TypeError,
         "`memory` must be an AttentionMemory (from `precompute`), got ArrayImpl."),
    # mask
    case("mask_dtype", lambda: ADD.apply(ADD_P, QUERY, MEMORY, MASK.astype(jnp.int32)), TypeError,
         "`mask` must be a boolean array (True = attend), got dtype int32"),
    case("mask_shape", lambda: ADD.apply(ADD_P, QUERY, MEMORY, MASK[:, :-1]), ValueError,
         "`mask` must have shape (3, 6) (the [..., S] of `memory`, shape (3, 6, 4)), got (3, 5)."),
    case("mask_with_precomputed", lambda: ADD.apply(ADD_P, QUERY, ADD.precompute(ADD_P, MEMORY), MASK),
         ValueError, "`mask` must be None when `memory` is an AttentionMemory", "pass the mask to `precompute`"),
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
         "`params.w_query` must have shape (5, 8) (additive_attention(8)), got (5, 7)."),
    case("params_mixed_dtype", lambda: ADD.apply(ADD_P._replace(v=ADD_P.v.astype(F32)), QUERY, MEMORY), TypeError,
         "`params.v` must have dtype float64", "got float32."),
    # decoder constructor
    case("dec_style", lambda: attention_decoder(H, memory_size=D, style="transformer"), ValueError,
         "`style` must be one of ('luong', 'bahdanau'), got 'transformer'."),
    case("dec_attention", lambda: attention_decoder(H, "cosine", memory_size=D), ValueError,
         "`attention` must be one of ('additive', 'dot', 'general'), got 'cosine'."),
    case("dec_bahdanau_feeding", lambda: attention_decoder(H, memory_size=D, style="bahdanau", input_feeding=True),
         ValueError, "`input_feeding` applies to style='luong' only"),
    case("dec_feeding_type", lambda: attention_decoder(H, memory_size=D, input_feeding=1), TypeError,
         "`input_feeding` must be a bool, got 1."),
    case("dec_attention_object_options", lambda: attention_decoder(H, ADD, memory_size=D, attention_size=3), ValueError,
         "`attention_size` and `scale` configure an attention given by name",
         "(additive_attention(7)) is already configured."),
    case("dec_attention_size_for_dot", lambda: attention_decoder(H, "general", memory_size=D, attention_size=3),
         ValueError, "`attention_size` applies to 'additive' attention, not 'general'."),
    case("dec_scale_for_additive", lambda: attention_decoder(H, memory_size=D, scale=True), ValueError,
         "`scale` applies to 'dot' and 'general' attention, not 'additive'."),
    case("dec_hidden", lambda: attention_decoder(0, memory_size=D), ValueError,
         "`hidden_size` must be a positive int, got 0."),
    case("dec_memory_size", lambda: attention_decoder(H, memory_size=0), ValueError,
         "`memory_size` must be a positive int, got 0."),
    case("dec_output_size", lambda: attention_decoder(H, memory_size=D, output_size=-1), ValueError,
         "`output_size` must be a positive int, got -1."),
    case("dec_dot_sizes", lambda: attention_decoder(H, "dot", memory_size=D + 1), ValueError,
         "dot attention needs `memory_size` == `hidden_size` (the query is h_t), got 5 and 4"),
    case("dec_init_input_size", lambda: DEC.init(jax.random.key(0), 0), ValueError,
         "`input_size` must be a positive int, got 0."),
    # decoder init_carry
    case("dec_memory_rank", lambda: DEC.init_carry(DEC_P, memory=jnp.ones((D,), F64)), ValueError,
         "`memory` must have shape [..., S, D] (at least 2 axes), got shape (4,)."),
    case("dec_memory_size_mismatch", lambda: DEC.init_carry(DEC_P, memory=jnp.ones((B, S, D + 2), F64)), ValueError,
         "`memory` must have last axis 4 (the decoder's memory_size), got shape (3, 6, 6)."),
    case("dec_memory_dtype", lambda: DEC.init_carry(DEC_P, memory=MEMORY.astype(BF16)), TypeError,
         "`memory` has dtype bfloat16 but the parameters are float64"),
    case("dec_mask_dtype", lambda: DEC.init_carry(DEC_P, memory=MEMORY, memory_mask=jnp.ones((B, S), F64)), TypeError,
         "`memory_mask` must be a boolean array (True = attend), got dtype float64"),
    case("dec_mask_shape", lambda: DEC.init_carry(DEC_P, memory=MEMORY, memory_mask=jnp.ones((B, S + 1), bool)),
         ValueError, "`memory_mask` must have shape (3, 6)", "got (3, 7)."),
    case("dec_mask_without_memory", lambda: DEC.init_carry(DEC_P, (B,), memory_mask=MASK), ValueError,
         "`memory_mask` masks `memory`; pass `memory` with it."),
    case("dec_batch_conflict", lambda: DEC.init_carry(DEC_P, (2,), memory=MEMORY), ValueError,
         "`batch_shape` (2,) differs from the batch shape (3,) of `memory` (shape (3, 6, 4)); leave it out"),
    case("dec_batch_shape_type", lambda: DEC.init_carry(DEC_P, "B", memory=MEMORY), TypeError,
         "`batch_shape` must be an int or a tuple of ints, got 'B'."),
    # decoder through unroll / step
    case("dec_xs_rank", lambda: lj.unroll(DEC, DEC_P, jnp.ones((I,), F64), DEC_CARRY), ValueError,
         "`xs` must have shape [..., T, I] (at least 2 axes), got shape (3,)."),
    case("dec_xs_size", lambda: lj.unroll(DEC, DEC_P, jnp.ones((B, T, I + 1), F64), DEC_CARRY), ValueError,
         "`xs` must have shape", "with last axis 3", "got shape (3, 5, 4)."),
    case("dec_xs_dtype", lambda: lj.unroll(DEC, DEC_P, XS.astype(F32), DEC_CARRY), TypeError,
         "`xs` has dtype float32 but the parameters are float64"),
    case("dec_memory_batch", lambda: lj.unroll(DEC, DEC_P, XS, DEC.init_carry(DEC_P, memory=jnp.ones((2, S, D), F64))),
         ValueError, "`carry.lstm.hidden` must have shape (3, 4) for batch shape (3,)", "got (2, 4)."),
    case("dec_carry_memory_size", lambda: lj.unroll(DEC, DEC_P, XS, DEC_CARRY._replace(memory=DEC_CARRY.memory._replace(
        values=jnp.ones((B, S, D + 1), F64)))), ValueError,
         "`carry.memory.values` must have shape (3, *, 4) for batch shape (3,)", "got (3, 6, 5)."),
    case("dec_carry_mask_dtype", lambda: lj.unroll(DEC, DEC_P, XS, DEC_CARRY._replace(memory=DEC_CARRY.memory._replace(
        mask=jnp.ones((B, S), F64)))), TypeError, "`carry.memory.mask` must have dtype bool", "got float64."),
    case("dec_params", lambda: lj.unroll(DEC, DEC_P.lstm, XS, DEC_CARRY), TypeError,
         f"`params` must be AttentionDecoderParams for {DEC_NAME}, got LSTMParams."),
    case("dec_params_other_decoder", lambda: lj.unroll(
        attention_decoder(H, memory_size=D, output_size=O, input_feeding=False), DEC_P, XS), ValueError,
         "`params.w_feed` is not part of attention_decoder(4, memory_size=4", "input_feeding=False"),
    case("dec_params_other_memory_size", lambda: lj.unroll(attention_decoder(H, memory_size=D + 1, output_size=O),
                                                           DEC_P, XS), ValueError,
         "`params.attention.w_memory` has shape (4, 4), but attention_decoder(4, memory_size=5"),
    case("dec_carry", lambda: lj.unroll(DEC, DEC_P, XS, DEC.init_carry(DEC_P, (2,))), ValueError,
         "`carry.lstm.hidden` must have shape (3, 4) for batch shape (3,)", "got (2, 4)."),
    case("dec_lengths_dtype", lambda: lj.unroll(DEC, DEC_P, XS, DEC_CARRY, lengths=jnp.ones((B,), F64)), TypeError,
         "`lengths` must be an integer array, got dtype float64."),
    case("dec_lengths_range", lambda: lj.unroll(DEC, DEC_P, XS, DEC_CARRY, lengths=jnp.array([1, 2, T + 1])),
         ValueError, "`lengths` must lie in [0, 5]"),
    case("dec_step_carry", lambda: DEC.step(DEC_P, DEC_CARRY.lstm, XS[:, 0]), TypeError,
         f"`carry` must be AttentionDecoderState for `cell.init_carry(params, (3,))` of {DEC_NAME}, got LSTMState."),
    case("dec_step_x_size", lambda: DEC.step(DEC_P, DEC_CARRY, jnp.ones((B, I + 1), F64)), ValueError,
         "`x` must have shape [..., I] with last axis 3", "got shape (3, 4)."),
    # seq2seq
    case("s2s_src_dtype", lambda: S2S.apply(S2S_P, jnp.ones((B, S), F32), jnp.full((B,), S),
                                            jnp.ones((B, T), jnp.int32)),
         TypeError, "`src` must be integer token ids in [0, 8), got dtype float32."),
    case("s2s_tgt_scalar", lambda: S2S.apply(S2S_P, jnp.ones((B, S), jnp.int32), jnp.full((B,), S),
                                             jnp.ones((), jnp.int32)),
         ValueError, "`tgt_in` must have shape [..., L] (at least 1 axis), got a scalar."),
    case("s2s_steps", lambda: S2S.greedy(S2S_P, jnp.ones((B, S), jnp.int32), jnp.full((B,), S), 1, 0),
         ValueError, "`num_steps` must be a positive int, got 0."),
    case("s2s_dot_bidirectional", lambda: seq2seq(8, attention="dot"), ValueError,
         "dot attention needs `memory_size` == `hidden_size` (the query is h_t), got 64 and 32"),
    case("s2s_vocab", lambda: seq2seq(0), ValueError, "`vocab_size` must be a positive int, got 0."),
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

    The decoder's LSTM starts from zeros, so all it knows of the source comes through
    attention: without it, accuracy is at chance (1/6 ≈ 0.17). The initial loss is about
    ln 8 (uniform over the vocabulary). Teacher forcing runs the decoder cell through
    ``lj.unroll`` with the memory in its carry; greedy decoding steps it with ``Cell.step``.
    """
    model = seq2seq(VOCAB, embed_size=16, hidden_size=16, attention="additive", style="luong")
    params = model.init(jax.random.key(0))
    assert isinstance(params, Seq2SeqParams) and isinstance(model.decoder, lj.Cell)
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
