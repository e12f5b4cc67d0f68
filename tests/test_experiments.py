"""The flagship experiment script end to end at toy size: results, table, plot, resume, and
the messages for bad flags; the speed benchmark's choice of our implementations."""

import json

import jax
import jax.numpy as jnp
import pytest

import lstm_jax as lj
from helpers import load_experiment




long_term_deps = load_experiment("long_term_deps")
benchmark = load_experiment("benchmark")

TINY = ["--lengths", "12", "--steps", "20", "--hidden", "8", "--batch", "8", "--test-size", "16",
        "--checkpoint-every", "10"]


def test_sweep_writes_results_table_and_plot_and_resumes(tmp_path):
    args = TINY + ["--tasks", "adding,temporal_order_6a", "--models", "gru", "--out", str(tmp_path)]
    rows = long_term_deps.main(args)
    assert [(r["task"], r["model"]) for r in rows] == [("adding", "gru"), ("temporal_order_6a", "gru")]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["results"][0]["metric"] == rows[0]["metric"] and saved["meta"]["args"]["steps"] == 20
    assert rows[0]["baseline"] == pytest.approx(1 / 6) and rows[1]["baseline"] == 0.75
    assert all(r["steps"] == 20 and r["seconds"] > 0 and isinstance(r["solved"], bool) for r in rows)
    table = (tmp_path / "results.md").read_text()
    assert table.startswith("| task | T | model |") and table.count("\n") == 2 + len(rows)
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["adding_T12_gru", "temporal_order_6a_T12_gru"]

    again = long_term_deps.main(args + ["--resume"])  # every run is complete: nothing retrains
    assert [r["resumed_from"] for r in again] == [20] * 2
    assert [r["metric"] for r in again] == [r["metric"] for r in rows]
    with pytest.raises(ValueError, match="already holds a run"):
        long_term_deps.main(args)  # without --resume, finished runs are not overwritten
    with pytest.raises(ValueError, match="different configuration \\(hidden: 8 there, 16 now\\)"):
        long_term_deps.main(args + ["--resume", "--hidden", "16"])


@pytest.mark.parametrize("flags, message", [
    (["--models", "rnn,lstmm"], "--models: unknown ['lstmm']; choose from"),
    (["--tasks", "addition"], "--tasks: unknown ['addition']; choose from"),
    (["--hidden", "-4"], "--hidden must be positive, got -4"),
    (["--lengths", "50,abc"], "--lengths must be comma-separated integers, got '50,abc'"),
    (["--lengths", "0"], "--lengths must be positive, got [0]"),
    (["--tasks", "adding_1997", "--lengths", "50,10"], "`length` must be at least 22 for this task, got 10."),
    (["--schedule", "warmup_cosine"], "TrainConfig.warmup_steps must lie in (0, steps=3000)"),
    (["--clip", "-1"], "TrainConfig.clip_norm must be a positive finite number, got -1.0."),
    (["--models", "clockwork", "--hidden", "30"], "`hidden_size` (30) must be divisible"),
])
def test_bad_flags_are_refused_with_a_message(flags, message, capsys):
    with pytest.raises(SystemExit):
        long_term_deps.parse_args(flags)
    assert message in capsys.readouterr().err


def test_more_devices_than_exist_is_refused_before_training(capsys):
    with pytest.raises(SystemExit):
        long_term_deps.parse_args(["--num-devices", "2"])
    assert "`num_devices` must lie in [1, 1]" in capsys.readouterr().err


def test_benchmark_rows_are_the_scan_and_the_cells_forms_by_name(capsys):
    assert benchmark.IMPLS == ["fused", "onednn", "pallas", "scan"]  # lstm's and gru's forms, and scan
    assert benchmark.parse_args(["--impls", "scan,fused"]).impls == ["scan", "fused"]
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--impls", "scan,parallel"])
    assert "--impls: unknown ['parallel']; choose from ['fused', 'onednn', 'pallas', 'scan']" in capsys.readouterr().err
    cell = lj.gru(4)
    params = cell.init(jax.random.key(0), 4)
    problem = benchmark.Problem("gru", cell, 3, params, jnp.ones((2, 3, 4), jnp.float32), "float32", 1, False)
    with pytest.raises(benchmark.Skip, match=r"gru\(4\) has no form 'pallas' \(its forms: onednn, fused\)"):
        benchmark.build_ours(problem, 1, "pallas")
    assert benchmark.build_ours(problem, 1, "fused").name == "lstm_jax fused"


def test_benchmark_timing_interleaves_rounds_with_an_untimed_call_each():
    calls = []
    fns = [lambda: calls.append("a"), lambda: calls.append("b")]
    results = benchmark.time_interleaved(fns, repeats=7, warmup=1, block=3)
    assert [len(r["runs_ms"]) for r in results] == [7, 7]
    # first + warm-up, then rounds of one untimed and up to three timed calls each: 3 + 3 + 1 timed
    assert "".join(calls) == "aa" + "bb" + "aaaa" + "bbbb" + "aaaa" + "bbbb" + "aa" + "bb"
    assert all(r["median_ms"] >= r["min_ms"] >= 0 for r in results)


def test_lm_step_benchmark_times_the_same_model_in_each_implementation(tmp_path):
    lm_step = load_experiment("lm_step_benchmark")
    rows = lm_step.main(["--layers", "1", "--hidden", "8", "--embed", "4", "--vocab", "7", "--batch", "2",
                         "--chunk", "5", "--repeats", "2", "--warmup", "0", "--out", str(tmp_path / "lm.json")])
    names = [r["impl"] for r in rows]
    assert names[:2] == ["lstm_jax auto", "lstm_jax fused"]
    losses = [r["first_loss"] for r in rows]  # same weights, same batch: the same first loss
    assert losses == pytest.approx([losses[0]] * len(losses), rel=1e-5)
    assert rows[0]["ratio"] == 1.0 and all(r["median_ms"] > 0 and len(r["runs_ms"]) == 2 for r in rows)
    assert json.loads((tmp_path / "lm.json").read_text())["args"]["hidden"] == 8
