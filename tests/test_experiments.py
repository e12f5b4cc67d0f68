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
    assert benchmark.IMPLS == ["fused", "native", "onednn", "pallas", "scan"]  # lstm's and gru's forms, and scan
    assert benchmark.parse_args(["--impls", "scan,fused"]).impls == ["scan", "fused"]
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--impls", "scan,parallel"])
    assert "--impls: unknown ['parallel']; choose from ['fused', 'native', 'onednn', 'pallas', 'scan']" in capsys.readouterr().err
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


def test_benchmark_time_budget_stops_before_the_next_group_and_says_what_is_left(tmp_path, capsys):
    out = tmp_path / "b.json"
    rows = benchmark.main(["--sizes", "2x3x4,2x5x4", "--cells", "gru", "--impls", "", "--peers", "",
                           "--repeats", "1", "--warmup", "0", "--time-budget", "0", "--plot", "", "--out", str(out)])
    assert rows == []
    assert "--time-budget 0 s spent: not measured: gru 2x3x4 float32, gru 2x5x4 float32" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert [(s["B"], s["T"], s["reason"]) for s in saved["skipped"]] == [(2, 3, "--time-budget spent"),
                                                                         (2, 5, "--time-budget spent")]


def test_benchmark_merge_takes_ratios_within_each_run(tmp_path):
    merge = load_experiment("benchmark_merge")

    def row(impl, fwd, fwd_bwd, B=8):
        return dict(cell="lstm", B=B, T=5, H=4, dtype="float32", impl=impl,
                    fwd={"median_ms": fwd}, fwd_bwd={"median_ms": fwd_bwd})

    run_a = {"meta": {"command": "a", "device": "gpu", "date": "2026-12-04"},
             "rows": [row("lstm_jax", 2.0, 4.0), row("torch-cudnn", 1.0, 8.0)]}
    run_b = {"meta": {"command": "b", "device": "gpu", "date": "2026-12-04"},
             "rows": [row("lstm_jax", 3.0, 6.0), row("flax", 6.0, 18.0), row("lstm_jax cudnn", 3.0, 3.0),
                      row("torch-cudnn", 9.0, 9.0), row("flax", 1.0, 1.0, B=16)]}  # no ours at B=16: left out
    paths = []
    for name, run in (("a", run_a), ("b", run_b)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(run))
    out = tmp_path / "merged.json"
    merge.main([str(p) for p in paths] + ["--out", str(out), "--rename", "lstm_jax cudnn=jax-cudnn"])
    merged = json.loads(out.read_text())
    got = {(r["impl"], r["run"]): (r["fwd_vs_ours"], r["fwd_bwd_vs_ours"]) for r in merged["summary"]}
    # the first run's torch-cudnn wins over the second's; each ratio uses its own run's "ours"
    assert got == {("lstm_jax", 0): (1.0, 1.0), ("torch-cudnn", 0): (0.5, 2.0), ("flax", 1): (2.0, 3.0),
                   ("jax-cudnn", 1): (1.0, 0.5)}
    assert merged["meta"]["merged_from"] == ["a", "b"] and len(merged["runs"]) == 2


def test_gpu_check_compares_each_form_with_the_scan(tmp_path):
    gpu_check = load_experiment("gpu_check")
    out = tmp_path / "check.json"
    assert gpu_check.main(["--sizes", "3x4x8", "--cells", "lstm", "--dtypes", "float32", "--forms", "fused",
                           "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["impl"], r["reverse"]) for r in rows] == [("fused", False), ("fused", True)]
    for r in rows:  # the CPU: full precision either way, so float32 rounding only
        assert r["highest"]["ok"] and max(r["highest"][k] for k in ("ys", "d_params", "d_xs", "d_carry")) < 1e-5
