"""experiments/odyssey.py at toy size: the studies' outputs, resume from the SQLite storage,
worker processes sharing a study, the best-trials selection and Welch's t-test, bad flags."""

import importlib.util
import json
import math
import os
import sys

import numpy as np
import pytest

from helpers import load_experiment

pytest.importorskip("optuna", reason="needs the study extra: pip install 'lstm_jax[study]'")
scipy_stats = pytest.importorskip("scipy.stats")

odyssey = load_experiment("odyssey")
import optuna  # noqa: E402

HAS_MUSIC = importlib.util.find_spec("lstm_jax.data.music") is not None and \
    importlib.util.find_spec("music21") is not None


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    rng = np.random.default_rng(0)
    words = ["to", "be", "or", "not", "that", "is", "the", "question", "\n"]
    path = tmp_path_factory.mktemp("text") / "tiny.txt"
    path.write_text(" ".join(rng.choice(words, 6000)))
    return str(path)


def toy(text, out, *extra):
    return ["--text-file", text, "--steps", "4", "--batch", "4", "--chunk", "10", "--embed", "8",
            "--hidden-range", "4,8", "--text-chars", "4000", "--eval-chars", "400", "--max-frames", "12",
            "--out", str(out), *extra]


def trials_of(storage, dataset, variant):
    study = optuna.load_study(study_name=odyssey.study_name(dataset, variant), storage=storage)
    return study.get_trials(deepcopy=False)


def test_study_writes_every_output_and_resumes_from_its_storage(text, tmp_path, capsys):
    datasets = "text,chorales" if HAS_MUSIC else "text"  # chorales: needs lstm_jax.data.music and music21
    args = toy(text, tmp_path, "--datasets", datasets, "--variants", "lstm_V", "--trials", "2")
    result = odyssey.main(args)
    storage = f"sqlite:///{tmp_path.resolve() / 'odyssey.db'}"
    for dataset in datasets.split(","):
        row = result["studies"][dataset]["variants"][0]
        assert row["variant"] == "lstm_V" and row["trials"] == 2 and row["complete"] + row["diverged"] == 2
        trials = trials_of(storage, dataset, "lstm_V")
        assert [t.number for t in trials] == [0, 1]
        assert {"learning_rate", "hidden_size", "input_noise"} <= set(trials[0].params)
        assert 4 <= trials[0].params["hidden_size"] <= 8 and trials[0].params != trials[1].params
        done = [t for t in trials if t.state.name == "COMPLETE"]
        assert all(math.isfinite(t.value) and math.isfinite(t.user_attrs["test"]) for t in done)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["studies"]["text"]["variants"][0]["trials"] == 2
    assert (tmp_path / "results.md").read_text().startswith("## text: test bits per character")
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"

    with pytest.raises(ValueError, match="already holds 2 trials; pass --resume"):
        odyssey.main(args)
    before = {t.number: t.params for t in trials_of(storage, "text", "lstm_V")}
    capsys.readouterr()
    odyssey.main(args + ["--resume"])  # complete: no new trial
    assert "0 trials to run" in capsys.readouterr().out
    assert len(trials_of(storage, "text", "lstm_V")) == 2
    odyssey.main(toy(text, tmp_path, "--datasets", "text", "--variants", "lstm_V", "--trials", "3", "--resume"))
    after = trials_of(storage, "text", "lstm_V")
    assert [t.number for t in after] == [0, 1, 2] and {t.number: t.params for t in after[:2]} == before
    assert after[2].params not in before.values()  # the sampler does not repeat itself on resume
    with pytest.raises(ValueError, match=r"different configuration \(steps: 4 there, 5 now\)"):
        odyssey.main(toy(text, tmp_path, "--datasets", "text", "--variants", "lstm_V", "--trials", "3",
                         "--resume", "--steps", "5"))
    again = odyssey.main(args + ["--analyse-only"])
    assert again["studies"]["text"]["variants"][0]["trials"] == 3


def test_two_workers_share_one_study(text, tmp_path):
    args = toy(text, tmp_path, "--datasets", "text", "--variants", "gru", "--trials", "2", "--workers", "2")
    odyssey.main(args)
    trials = trials_of(f"sqlite:///{tmp_path.resolve() / 'odyssey.db'}", "text", "gru")
    assert len(trials) == 2 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    pids = {t.user_attrs["pid"] for t in trials}
    assert len(pids) == 2 and os.getpid() not in pids
    assert sorted(t.user_attrs["worker"] for t in trials) == [0, 1]
    assert trials[0].params != trials[1].params  # the workers' draws differ


def test_best_trials_and_welch_match_numpy_and_scipy():
    rng = np.random.default_rng(3)
    values, tests = rng.normal(size=25), rng.normal(size=25)
    order, top = odyssey.top_trials(values, tests, 0.1)
    assert order.tolist() == np.argsort(values)[:3].tolist()  # ceil(0.1 * 25) = 3
    np.testing.assert_array_equal(top, tests[np.argsort(values)[:3]])
    assert len(odyssey.top_trials(values[:6], tests[:6], 0.1)[0]) == 2  # at least 2, for the t-test
    assert len(odyssey.top_trials(values[:20], tests[:20], 0.1)[0]) == 2
    a, b = np.array([1.0, 1.2, 0.9, 1.4]), np.array([1.5, 1.7, 1.6, 2.1, 1.9])
    got = odyssey.welch(a, b)
    expected = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert got["t"] == pytest.approx(float(expected.statistic)) and got["p"] == pytest.approx(float(expected.pvalue))
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)  # Welch by hand
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    assert got["t"] == pytest.approx(t) and got["p"] == pytest.approx(2 * scipy_stats.t.sf(abs(t), df))
    assert odyssey.welch([1.0], b) is None


@pytest.mark.parametrize("flags, message", [
    (["--variants", "lstm_V,unknown"], "--variants: unknown ['unknown']; choose from"),
    (["--datasets", "music"], "--datasets: unknown ['music']"),
    (["--trials", "0"], "--trials must be positive, got 0"),
    (["--lr-range", "1e-1,1e-4"], "a range lo,hi needs 0 < lo <= hi, got '1e-1,1e-4'"),
    (["--hidden-range", "8"], "a range must be two comma-separated ints lo,hi, got '8'"),
    (["--top-fraction", "0"], "--top-fraction must lie in (0, 1], got 0.0"),
])
def test_bad_flags_are_refused_with_a_message(flags, message, capsys):
    with pytest.raises(SystemExit):
        odyssey.parse_args(flags)
    assert message in capsys.readouterr().err


assert sys.modules["experiments_odyssey"] is odyssey
