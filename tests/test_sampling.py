"""Sampling: the top-k and nucleus filters against a NumPy reference (ties included), the
distribution of many draws against softmax(logits / temperature), temperature -> 0 equal to
greedy, determinism per key, ``generate`` equal to stepping the model by hand (tokens, carry,
gates) for several bodies, continuation through the returned carry, no recompilation for new
temperatures, and every error."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers  # tests/helpers.py
import lstm_jax as lj
from lstm_jax.models import generate, language_model, sample_logits, top_k_logits, top_p_logits
from lstm_jax.models.sampling import _generate

V = 9
F64 = jnp.float64


def random_params(init, seed=0, scale=0.5):
    """Params shaped like ``init()``'s, drawn N(0, scale^2) by NumPy: no initialiser runs (their
    QR decompositions compile per shape), and zero-initialised biases and peepholes matter."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), s.dtype), jax.eval_shape(init))


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def reference_top_k(z, k):
    """Keep the k largest of each row and every entry tied with the k-th."""
    out = np.full_like(z, -np.inf)
    for r, row in enumerate(z):
        kth = sorted(row, reverse=True)[min(k, len(row)) - 1]
        out[r] = np.where(row >= kth, row, -np.inf)
    return out


def reference_top_p(z, p):
    """Add tokens from the most probable down until their probability reaches p; then keep
    every token tied with the last one added."""
    out = np.full_like(z, -np.inf)
    for r, row in enumerate(z):
        probs, mass, last = softmax(row), 0.0, None
        for i in sorted(range(len(row)), key=lambda i: -row[i]):
            mass, last = mass + probs[i], row[i]
            if mass >= p:
                break
        out[r] = np.where(row >= last, row, -np.inf)
    return out


def logits_with_ties(seed, rows=6):
    z = np.random.default_rng(seed).normal(size=(rows, V))
    z[1, 3] = z[1, 5] = z[1].max() + 0.5  # a tie at the top
    z[2, [0, 4, 7]] = np.sort(z[2])[-3]  # a three-way tie in the middle
    z[3] = 0.0  # all tied
    z[4, 2] = -np.inf  # already filtered out
    return z


@pytest.mark.parametrize("k", [1, 2, 3, 5, V, V + 4])
def test_top_k_matches_numpy_and_keeps_the_mass_of_the_k_largest(k):
    z = logits_with_ties(0)
    got = np.asarray(top_k_logits(jnp.asarray(z), k))
    np.testing.assert_array_equal(got, reference_top_k(z, k))
    kept = np.isfinite(got)
    assert (kept.sum(-1) >= min(k, V)).all() or not np.isfinite(z).all()
    # the renormalised distribution: the original probabilities of the kept tokens, rescaled
    probs = softmax(z)
    np.testing.assert_allclose(softmax(got), np.where(kept, probs, 0) / (probs * kept).sum(-1, keepdims=True),
                               rtol=1e-12, atol=1e-15)
    assert got.dtype == z.dtype


@pytest.mark.parametrize("p", [1e-6, 0.2, 0.5, 0.9, 0.99, 1.0])
def test_top_p_matches_numpy_and_keeps_the_smallest_set_reaching_p(p):
    z = logits_with_ties(1)
    got = np.asarray(top_p_logits(jnp.asarray(z), p))
    np.testing.assert_array_equal(got, reference_top_p(z, p))
    probs, kept = softmax(z), np.isfinite(got)
    assert (kept.sum(-1) >= 1).all()
    mass = (probs * kept).sum(-1)
    assert (mass >= p - 1e-12).all()
    for r in (0, 5):  # rows without ties: dropping the least probable kept token falls short of p
        least = np.where(kept[r], probs[r], np.inf).min()
        assert mass[r] - least < p


def test_top_p_after_top_k_renormalises_over_the_kept_set():
    z = logits_with_ties(2)
    both = np.asarray(sample_filters(z, top_k=4, top_p=0.6))
    np.testing.assert_array_equal(both, reference_top_p(reference_top_k(z, 4), 0.6))


def sample_filters(z, **filters):
    return top_p_logits(top_k_logits(jnp.asarray(z), filters["top_k"]), filters["top_p"])


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, None, None), (0.5, None, None), (2.0, 3, None),
                                                       (1.0, None, 0.7), (0.8, 4, 0.8)])
def test_many_samples_follow_softmax_of_the_filtered_tempered_logits(temperature, top_k, top_p):
    """n = 40,000 draws of each row (one jitted call); every token's frequency must lie within
    5 binomial standard deviations (sqrt(q (1 - q) / n)) of its probability q, plus 1e-3."""
    z = logits_with_ties(3)[[0, 5]]  # rows without ties or -inf
    n = 40_000
    draws = jax.jit(lambda k: sample_logits(k, jnp.broadcast_to(jnp.asarray(z), (n, 2, V)),
                                            temperature=temperature, top_k=top_k, top_p=top_p))(jax.random.key(0))
    assert draws.shape == (n, 2) and draws.dtype == jnp.int32
    want = z / temperature
    if top_k is not None:
        want = reference_top_k(want, top_k)
    if top_p is not None:
        want = reference_top_p(want, top_p)
    q = softmax(want)
    for r in range(2):
        freq = np.bincount(np.asarray(draws[:, r]), minlength=V) / n
        assert (np.abs(freq - q[r]) <= 5 * np.sqrt(q[r] * (1 - q[r]) / n) + 1e-3).all(), (freq, q[r])
        assert (freq[q[r] == 0] == 0).all()


def test_sample_logits_temperature_zero_and_greedy_are_argmax():
    z = logits_with_ties(4)
    best = z.argmax(-1)  # the lowest id among tied maxima
    key = jax.random.key(1)
    np.testing.assert_array_equal(sample_logits(key, jnp.asarray(z), temperature=0.0), best)
    np.testing.assert_array_equal(sample_logits(key, jnp.asarray(z), greedy=True, temperature=3.0), best)
    untied = [0, 2, 4, 5]
    np.testing.assert_array_equal(sample_logits(key, jnp.asarray(z[untied]), temperature=1e-6), best[untied])


# ------------------------------------------------------------------------------ generate

BODIES = {  # the model's own tests step every kind of body; these are the awkward carries
    "lstm": lambda: lj.lstm(8),
    "stack": lambda: lj.stack([lj.gru(6), lj.layer(lj.lstm(8), learn_initial_carry=True)], dropout_rate=0.5),
    "clockwork": lambda: lj.clockwork(8, periods=(1, 2)),
}


def model(name="lstm", dtype=F64):
    lm = language_model(BODIES[name](), V, embed_size=4, dropout_rate=0.5)
    params = random_params(lambda: lm.init(jax.random.key(0), dtype=dtype))
    return lm, params


PROMPT = jnp.asarray(np.random.default_rng(1).integers(0, V, (3, 4)), jnp.int32)  # [B, P]


@pytest.mark.parametrize("name", ["stack", "clockwork"])
def test_generate_equals_stepping_by_hand(name):
    """The prompt read by apply then step, each token drawn with sample_logits from
    split(key, N)[n]: the same tokens, final carry and gates, for any body."""
    lm, params = model(name)
    N, key = 3, jax.random.key(7)
    options = dict(temperature=0.9, top_k=6, top_p=0.95)
    tokens, carry, gates = generate(lm, params, key, PROMPT, N, return_gates=True, **options)

    @jax.jit
    def by_hand(params):
        c = lm.init_carry(params, (3,))
        for t in range(PROMPT.shape[1] - 1):
            c, _ = lm.step(params, c, PROMPT[:, t])
        token, out, all_gates = PROMPT[:, -1], [], []
        for k in jax.random.split(key, N):
            c, logits, g = lm.step(params, c, token, return_gates=True)
            token = sample_logits(k, logits, **options)
            out.append(token)
            all_gates.append(g)
        return jnp.stack(out, 1), c, jax.tree.map(lambda *g: jnp.stack(g, 1), *all_gates)

    want_tokens, want_carry, want_gates = by_hand(params)
    assert tokens.shape == (3, N) and tokens.dtype == jnp.int32
    np.testing.assert_array_equal(tokens, want_tokens)
    helpers.assert_trees_close(carry, want_carry, rtol=1e-10, atol=1e-10)
    helpers.assert_trees_close(gates, want_gates, rtol=1e-10, atol=1e-10)


def test_greedy_generation_is_the_argmax_of_apply_on_its_own_output():
    """Feeding prompt + generated tokens back to apply: each generated token is the argmax of
    the logits at the position before it."""
    lm, params = model("stack")
    tokens, _ = generate(lm, params, jax.random.key(0), PROMPT, 6, greedy=True)
    logits, _ = lm.apply(params, jnp.concatenate([PROMPT, tokens], axis=1))
    P = PROMPT.shape[1]
    np.testing.assert_array_equal(tokens, np.asarray(logits[:, P - 1:-1]).argmax(-1))


def test_temperature_to_zero_is_greedy_and_a_key_fixes_the_sample():
    lm, params = model()
    greedy, _ = generate(lm, params, jax.random.key(0), PROMPT, 8, greedy=True)
    for t in (0.0, 1e-6):
        np.testing.assert_array_equal(generate(lm, params, jax.random.key(5), PROMPT, 8, temperature=t)[0], greedy)
    a = generate(lm, params, jax.random.key(1), PROMPT, 8)[0]
    np.testing.assert_array_equal(generate(lm, params, jax.random.key(1), PROMPT, 8)[0], a)
    assert not np.array_equal(generate(lm, params, jax.random.key(2), PROMPT, 8)[0], a)
    assert not np.array_equal(a, greedy)


def test_continuing_from_the_returned_carry_equals_one_longer_generation():
    lm, params = model("clockwork")
    whole, _ = generate(lm, params, jax.random.key(0), PROMPT, 7, greedy=True)
    first, carry = generate(lm, params, jax.random.key(0), PROMPT, 3, greedy=True)
    rest, _ = generate(lm, params, jax.random.key(0), first[:, -1:], 4, greedy=True, carry=carry)
    np.testing.assert_array_equal(np.concatenate([first, rest], 1), whole)


def test_one_program_for_all_temperatures_and_filter_values():
    lm, params = model()
    one_token_prompt = PROMPT[:, :1]
    generate(lm, params, jax.random.key(0), one_token_prompt, 3, temperature=1.0, top_k=2, top_p=0.5)
    size = _generate._cache_size()
    for t, k, p in ((0.5, 3, 0.9), (2.0, 9, 1.0), (0.0, 1, 0.1)):
        generate(lm, params, jax.random.key(0), one_token_prompt, 3, temperature=t, top_k=k, top_p=p)
    assert _generate._cache_size() == size


def test_generate_in_bfloat16_keeps_the_dtype():
    lm = language_model(lj.lstm(8), V, embed_size=4)
    params = jax.eval_shape(lambda: lm.init(jax.random.key(0), dtype=jnp.bfloat16))
    tokens, carry = jax.eval_shape(lambda p: generate(lm, p, jax.random.key(0), PROMPT, 4, top_p=0.9), params)
    assert (tokens.shape, tokens.dtype, carry.hidden.dtype) == ((3, 4), jnp.int32, jnp.bfloat16)


def test_errors_name_the_argument():
    lm, params = model()
    key = jax.random.key(0)
    with pytest.raises(TypeError, match=r"`lm` must be a LanguageModel \(from lstm_jax.language_model\), got Layer"):
        generate(lj.layer(lj.lstm(4)), params, key, PROMPT, 3)
    with pytest.raises(TypeError, match=r"`prompt` must be integer token ids in \[0, 9\), got dtype float64"):
        generate(lm, params, key, PROMPT.astype(F64), 3)
    with pytest.raises(ValueError, match=r"`prompt` must hold at least one token \(shape \[\.\.\., P\] with P >= 1\), "
                                         r"got P = 0"):
        generate(lm, params, key, PROMPT[:, :0], 3)
    with pytest.raises(ValueError, match=r"`prompt` must lie in \[0, 9\) \(the vocabulary\), got values in"):
        generate(lm, params, key, PROMPT.at[0, 0].set(9), 3)
    with pytest.raises(ValueError, match=r"`num_tokens` must be a positive int, got 0"):
        generate(lm, params, key, PROMPT, 0)
    with pytest.raises(ValueError, match=r"`temperature` must lie in \[0.0, inf\), got -1.0"):
        generate(lm, params, key, PROMPT, 3, temperature=-1.0)
    with pytest.raises(TypeError, match=r"`temperature` must be a number, got 'hot'"):
        generate(lm, params, key, PROMPT, 3, temperature="hot")
    with pytest.raises(ValueError, match=r"`top_k` must be a positive int, got 0"):
        generate(lm, params, key, PROMPT, 3, top_k=0)
    for p in (0.0, 1.5):
        with pytest.raises(ValueError, match=rf"`top_p` must lie in \(0.0, 1.0\], got {p}"):
            generate(lm, params, key, PROMPT, 3, top_p=p)
    with pytest.raises(TypeError, match=r"`greedy` must be a bool, got 1"):
        generate(lm, params, key, PROMPT, 3, greedy=1)
    with pytest.raises(TypeError, match=r"`key` must be a PRNG key such as jax.random.key\(0\), got int 0"):
        generate(lm, params, 0, PROMPT, 3)
    with pytest.raises(TypeError, match=r"`params` must be LanguageModelParams"):
        generate(lm, params.body, key, PROMPT, 3)


def test_generation_benchmark_runs_and_its_pytorch_peer_is_the_same_model(tmp_path):
    """experiments/generation_benchmark.py at toy size: every row timed, the JSON written, and
    PyTorch stepping our converted weights gives our first logits and greedy tokens."""
    import json

    bench = helpers.load_experiment("generation_benchmark")
    with jax.numpy_dtype_promotion("standard"), jax.enable_x64(False):  # as the script runs
        rows = bench.main(["--hidden", "8", "--embed", "4", "--vocab", "5", "--batch", "2", "--tokens", "4",
                           "--repeats", "1", "--layers", "2", "--torch-threads", "0",  # 0: leave torch's setting
                           "--out", str(tmp_path / "bench.json")])
    assert [r["impl"] for r in rows] == ["generate greedy", "generate T=0.8", "generate top-p 0.9",
                                         "jit step, Python loop", "step compute (scan, no sampling)",
                                         "torch greedy", "torch T=0.8"]
    assert all(r["ms_per_step"] > 0 and r["B"] == 2 for r in rows)
    saved = json.loads((tmp_path / "bench.json").read_text())
    (check,) = saved["checks"]
    assert check["max_abs_diff"] < 1e-5 and check["greedy_agreement"] == 1.0
