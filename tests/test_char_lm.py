"""The character language-model experiment and its two yardsticks at toy size: the n-gram
baseline against hand-computed interpolated Kneser-Ney probabilities, the evaluation layout,
the PyTorch twin step for step, and experiments/char_lm.py end to end (results, resume,
saved models, a stated learning bound)."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm_jax as lj
from helpers import load_experiment
from lstm_jax.data import Vocab, text_file
from lstm_jax.io import load as load_model



char_lm = load_experiment("char_lm")
ngram = load_experiment("ngram_baseline")

A, B, C, D = range(4)  # the toy vocabulary: "abcd"; "d" never occurs


def toy_model(discount=0.75):
    """``abcabb`` (one document), orders up to 3, V = 4: the counts of the hand computations."""
    return ngram.KneserNey.fit([np.array([A, B, C, A, B, B])], 3, 4, discount=discount)


# Interpolated Kneser-Ney by hand, D = 0.75 everywhere, on "abcabb":
# continuation unigrams N1+(.w): a 1 (ca), b 2 (ab, bb), c 1 (bc); total 4, 3 types
P1 = {A: 0.25 / 4 + 3 * 0.75 / 4 / 4, B: 1.25 / 4 + 3 * 0.75 / 4 / 4, C: 0.25 / 4 + 3 * 0.75 / 4 / 4,
      D: 3 * 0.75 / 4 / 4}
# continuation bigrams after b: N1+(.bc) = 1 (abc), N1+(.bb) = 1 (abb); total 2, 2 types
P2_CONT_B = {w: max((w in (B, C)) - 0.75, 0) / 2 + 1.5 / 2 * P1[w] for w in range(4)}
# raw bigrams after a: c(ab) = 2; total 2, 1 type
P2_RAW_A = {w: max(2 * (w == B) - 0.75, 0) / 2 + 0.75 / 2 * P1[w] for w in range(4)}
# raw trigrams after ab: c(abc) = c(abb) = 1; total 2, 2 types
P3_AB = {w: max((w in (B, C)) - 0.75, 0) / 2 + 1.5 / 2 * P2_CONT_B[w] for w in range(4)}


@pytest.mark.parametrize("order, context, expected", [
    (3, [A, B], P3_AB),
    (2, [A], P2_RAW_A),  # the highest order uses raw counts ...
    (3, [D, B], P2_CONT_B),  # ... lower ones continuation counts; "db" was never seen: back off
    (3, [D, D], P1),  # nothing seen: down to the continuation unigrams
    (1, [A, B], {w: max([2, 3, 1, 0][w] - 0.75, 0) / 6 + 3 * 0.75 / 6 / 4 for w in range(4)}),  # counts a2 b3 c1 d0
])
def test_kneser_ney_equals_hand_computed_probabilities(order, context, expected):
    got = toy_model().distribution(context, order)
    np.testing.assert_allclose(got, [expected[w] for w in range(4)], rtol=1e-12)
    assert got.sum() == pytest.approx(1.0, abs=1e-12)
    assert P3_AB[B] == pytest.approx(0.4736328125)  # the hand computation itself, spelled out once


def test_kneser_ney_sums_to_one_for_every_context_and_order():
    text = "the quick brown fox jumps over the lazy dog; the dog sleeps. " * 3 + "a fox? no, a dog!\n"
    vocab = Vocab.from_text(text + "QZ")  # two characters that never occur
    ids = vocab.encode(text)
    for discount in (None, 0.5):  # modified Kneser-Ney's estimated discounts, and plain
        model = ngram.KneserNey.fit([ids[:100], ids[100:]], 4, vocab.size, discount=discount)
        for order in range(1, 5):
            for context in ("the", "dog", " a ", "QZQ", "x", ""):
                p = model.distribution(vocab.encode(context), order)
                assert p.min() > 0 and p.sum() == pytest.approx(1.0, abs=1e-12), (order, context)


def test_kneser_ney_keeps_documents_apart_and_scores_each_target_in_its_context():
    apart = ngram.KneserNey.fit([np.array([A, B]), np.array([B, A])], 2, 4, discount=0.75)
    joined = ngram.KneserNey.fit([np.array([A, B, B, A])], 2, 4, discount=0.75)
    assert B * 4 + B not in apart.raw[1].grams and B * 4 + B in joined.raw[1].grams  # "bb" crosses the documents
    model = toy_model()
    tokens = np.array([A, B, C, A, B])
    starts = np.array([True, False, False, True, False])
    got = model.log2_probabilities(tokens, starts, 3)
    # target i is predicted from the characters of the document of tokens[i - 1], at most 2
    contexts = [[A], [A, B], [B, C], [A]]
    want = [np.log2(model.distribution(c, 3)[t]) for c, t in zip(contexts, tokens[1:])]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    with pytest.raises(ValueError, match=r"`order` must lie in \[1, 3\]"):
        model.distribution([A], 4)


def test_eval_layout_scores_every_target_once_and_equals_one_pass():
    N = 103
    tokens = np.arange(N)
    starts = np.zeros(N, bool)
    starts[[0, 40]] = True
    layout = char_lm.eval_layout(tokens, starts, batch=4, chunk=7, burn_in=5)
    assert layout.inputs.shape[1:] == (4, 7)
    scored = layout.targets[layout.scored]
    assert sorted(scored) == list(range(1, N))  # every target exactly once
    np.testing.assert_array_equal(layout.inputs[layout.scored], scored - 1)
    rows = layout.inputs.swapaxes(0, 1).reshape(4, -1)
    resets = layout.resets.swapaxes(0, 1).reshape(4, -1)
    assert rows[1, 0] == 26 - 5 and resets[:, 0].all()  # row 1 scores from 26, reads 5 before
    assert resets[rows == 40].all() and not resets[(rows != 40) & (np.arange(rows.shape[1]) > 0)].any()

    # Rows that read from the split's start see what one pass sees: equal bits per character.
    text = np.random.default_rng(0).integers(0, 5, 60).astype(np.int32)
    doc = np.zeros(60, bool)
    doc[[0, 33]] = True
    lm = lj.models.language_model(lj.stack([lj.lstm(6)]), 5, embed_size=3)
    params = lm.init(jax.random.key(0), dtype=jnp.float64)
    one_pass = char_lm.evaluator(lm, char_lm.eval_layout(text, doc, 1, 59, 0))(params)
    rows = char_lm.evaluator(lm, char_lm.eval_layout(text, doc, 3, 8, 60))(params)
    nats, _ = lm.loss(params, text[None, :-1], text[None, 1:], resets=doc[None, :-1])
    assert one_pass == pytest.approx(float(nats) / math.log(2), rel=1e-12)
    assert rows == pytest.approx(one_pass, rel=1e-12)


TEXT = "".join(f"{name}:\nTo be, or not to be, that is the question.\n\n" for name in ("HAMLET", "OPHELIA") * 60)
TINY = ["--hidden", "16", "--embed", "8", "--batch", "8", "--chunk", "16", "--eval-every", "20", "--eval-batch",
        "4", "--eval-chunk", "32", "--burn-in", "16", "--ngram-orders", "2,3", "--prompt", "HAMLET:\n",
        "--temperatures", "0,1", "--sample-length", "30", "--checkpoint-every", "20"]


def test_experiment_writes_results_learns_and_resumes(tmp_path):
    path = tmp_path / "play.txt"
    path.write_text(TEXT)
    out = tmp_path / "out"
    args = TINY + ["--text-file", str(path), "--models", "lstm,rnn", "--steps", "40", "--lr", "3e-2",
                   "--out", str(out)]
    first = char_lm.main(args)
    rows = {r["model"]: r for r in first["results"]}
    # A stated bound: 40 steps on this repetitive text take the LSTM far below log2(V) = 4.4 (to 0.48)
    assert rows["lstm"]["valid_bpc"] < 1.0 < math.log2(len(set(TEXT)))
    assert rows["lstm"]["valid_bpc"] < min(r["valid_bpc"] for r in first["ngram"][:1])  # below the bigram
    assert [s for s, _ in first["curves"]["lstm"]] == [0, 20, 40]
    assert all(r["tokens_per_second"] > 0 and r["epochs"] > 0 for r in rows.values())
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"][0]["valid_bpc"] == rows["lstm"]["valid_bpc"]
    assert saved["meta"]["args"]["steps"] == 40 and len(saved["ngram"]) == 2
    assert set(saved["samples"]["lstm"]) == {"0.0", "1.0"}
    greedy = saved["samples"]["lstm"]["0.0"]
    assert greedy.startswith("HAMLET:\n") and len(greedy) == len("HAMLET:\n") + 30
    table = (out / "results.md").read_text()
    assert table.startswith("| model | parameters |") and "| 3-gram KN |" in table
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    lm, params = load_model(out / "models" / "lstm.npz")  # the trained model, for sampling
    corpus = text_file(path)
    assert char_lm.sample(lm, params, corpus, 0.0, char_lm.parse_args(args)) == greedy

    again = char_lm.main(args + ["--resume"])  # everything finished: nothing retrains
    assert [r["resumed_from"] for r in again["results"]] == [40, 40]
    assert [r["tokens_per_second"] for r in again["results"]] == [r["tokens_per_second"] for r in first["results"]]
    assert again["curves"] == first["curves"]
    assert [r["valid_bpc"] for r in again["results"]] == [r["valid_bpc"] for r in first["results"]]
    with pytest.raises(ValueError, match="already holds a run"):
        char_lm.main(args)


@pytest.mark.parametrize("cell", [lj.lstm, lj.gru])
def test_pytorch_twin_reads_a_chunk_like_ours_resets_included(cell):
    torch = pytest.importorskip("torch")
    torch_char_lm = char_lm._sibling("torch_char_lm")
    lm = lj.models.language_model(lj.stack([cell(5), cell(5)]), 7, embed_size=3)
    params = lm.init(jax.random.key(1), dtype=jnp.float64)
    tokens = np.random.default_rng(0).integers(0, 7, (3, 12)).astype(np.int32)
    resets = np.zeros((3, 12), bool)
    resets[1, 4] = resets[2, 4] = resets[2, 9] = True  # rows restart at different places
    first, carry = lm.apply(params, tokens[:, :6], resets=resets[:, :6])
    logits, carry = lm.apply(params, tokens[:, 6:], carry, resets=resets[:, 6:])
    model = torch_char_lm.CharLM(lm, params)
    state = model.initial_state(3)
    with torch.no_grad():
        theirs_first, state = model(torch.from_numpy(tokens[:, :6]).long(), state, resets[:, :6])
        theirs, state = model(torch.from_numpy(tokens[:, 6:]).long(), state, resets[:, 6:])
    np.testing.assert_allclose(theirs_first.numpy(), first, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(theirs.numpy(), logits, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(state[0][-1].numpy(), carry[-1].hidden, rtol=1e-12, atol=1e-12)


def test_pytorch_twin_trains_step_for_step_like_ours(tmp_path):
    """Same weights, batches, Adam, clipping, schedule (float64): the same losses and curves,
    LSTM and GRU (whose redundant PyTorch biases must not train), two layers."""
    path = tmp_path / "play.txt"
    path.write_text(TEXT)
    out = tmp_path / "out"

    def args(models):
        return TINY + ["--text-file", str(path), "--models", models, "--layers", "2", "--steps", "4",
                       "--eval-every", "2", "--temperatures", "", "--dtype", "float64", "--ngram-orders", "",
                       "--out", str(out), "--clip", "0.5", "--schedule", "cosine"]

    result = char_lm.main(args("lstm,torch_lstm,gru,torch_gru"))
    for name in ("lstm", "gru"):
        ours = [json.loads(line) for line in (out / "runs" / name / "metrics.jsonl").read_text().splitlines()]
        ours = [r["loss"] for r in ours if "loss" in r]
        theirs = json.loads((out / "runs" / f"torch_{name}" / "result.json").read_text())["result"]["losses"]
        assert len(ours) == len(theirs) == 4
        np.testing.assert_allclose(theirs, ours, rtol=1e-10)
        assert result["agreement"][f"torch_{name}"]["max_abs_diff"] < 1e-10
    with pytest.raises(ValueError, match="already holds a run"):
        char_lm.main(args("torch_lstm"))  # the PyTorch run refuses too


@pytest.mark.parametrize("flags, message", [
    (["--models", "lstm,lstmm"], "--models: unknown ['lstmm']; choose from"),
    (["--models", "torch_mut1"], "--models: unknown ['torch_mut1']"),
    (["--hidden", "0"], "--hidden must be positive, got 0"),
    (["--ngram-orders", "3,11"], "--ngram-orders must lie in [1, 10], got [3, 11]"),
    (["--temperatures", "0.5,x"], "--ngram-orders and --temperatures must be comma-separated numbers"),
    (["--temperatures", "-1"], "--temperatures must be >= 0, got [-1.0]"),
    (["--dropout", "1.5"], "`dropout_rate` must"),
    (["--schedule", "warmup_cosine"], "TrainConfig.warmup_steps must lie in (0, steps=1000)"),
])
def test_bad_flags_are_refused_with_a_message(flags, message, capsys):
    with pytest.raises(SystemExit):
        char_lm.parse_args(flags)
    assert message in capsys.readouterr().err
