"""The training toolkit's fault defects, each reproduced and handled: non-finite state is never
checkpointed; the workdir is locked; metrics are exact across resumes; resume errors name only
what differs; a damaged latest checkpoint falls back to the previous one; a finished run can
be extended; progress is shown off a terminal."""

import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import helpers  # tests/helpers.py
import lstm_jax as lj
from lstm_jax.data import get_task
from lstm_jax.models import readout
from lstm_jax.train import MetricsLog, TrainConfig, WorkdirInUseError, WorkdirLock, fit
from train_problems import ArraySource

TASK = get_task("adding")
T, B = 6, 8
DATA = TASK.sample(jax.random.key(1), 32, T)


def problem(hidden=4):
    model = readout(lj.lstm(hidden), 1)
    params = model.init(jax.random.key(0), TASK.input_size)

    def loss_fn(p, batch, key):
        del key
        return TASK.loss(model.apply(p, batch.xs, lengths=batch.lengths), batch)

    eval_fn = jax.jit(lambda p: {"mse": TASK.loss(model.apply(p, DATA.xs, lengths=DATA.lengths), DATA)})
    return loss_fn, params, eval_fn


def records(workdir):
    """metrics.jsonl without the wall-clock times."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in MetricsLog(workdir / "metrics.jsonl").read()]


# ------------------------------------------------------------------ non-finite state

def test_a_nan_gradient_with_a_finite_loss_is_never_checkpointed(tmp_path):
    """sqrt at 0 has an infinite derivative: the loss stays finite, the gradient is NaN, and the
    update fills the params with NaN. Looking at the loss alone, step 1 would be saved."""
    loss_fn, params, _ = problem()
    bad = lambda p, b, k: loss_fn(p, b, k) + 0.0 * jnp.sqrt(0.0 * jnp.sum(p.w))
    config = TrainConfig(steps=4, log_every=100, checkpoint_every=1)
    with pytest.raises(FloatingPointError, match=r"the gradient norm became nan at step 1 while the loss was "
                                                 r"finite \(.*\); stopped by step 1, nothing non-finite was saved"):
        fit(bad, params, ArraySource(DATA, B), config, workdir=tmp_path, progress=False)
    assert not list((tmp_path / "checkpoints").iterdir())


def test_non_finite_params_after_a_finite_step_are_never_checkpointed(tmp_path):
    """SGD with a huge step: loss and gradient finite, the updated params overflow to inf."""
    _, params, _ = problem()
    linear = lambda p, b, k: 10.0 * jnp.sum(p.w)
    config = TrainConfig(steps=2, optimizer="sgd", learning_rate=3e38, clip_norm=None, checkpoint_every=1)
    with pytest.raises(FloatingPointError, match="the parameters, optimiser state or carry hold NaN or infinite "
                                                 "values at step 1 although the loss and the gradient norm were "
                                                 "finite; the checkpoint of step 1 was not saved"):
        fit(linear, params, ArraySource(DATA, B), config, workdir=tmp_path, progress=False)
    assert not list((tmp_path / "checkpoints").iterdir())


# ------------------------------------------------------------------ the workdir lock

def test_a_second_live_run_is_refused(tmp_path):
    loss_fn, params, _ = problem()
    with WorkdirLock(tmp_path):  # a run in progress (this process, as any other would)
        with pytest.raises(WorkdirInUseError, match=rf"`workdir` '{tmp_path}' is in use by another run \(pid "
                                                    rf"{os.getpid()} on .*, started .*\); wait for it to finish"):
            fit(loss_fn, params, ArraySource(DATA, B), TrainConfig(steps=1), workdir=tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "checkpoints").exists()


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / "run.lock"
    for holder, why in [({"pid": dead.pid}, "that process no longer exists"),
                        ({"pid": os.getpid(), "boot": "an-earlier-boot"}, "it ran before this machine rebooted")]:
        lock.write_text(json.dumps({"host": os.uname().nodename, "started": "then", **holder}))
        with pytest.warns(RuntimeWarning, match=rf"taking over the lock of `workdir` .*: the run that held it "
                                                rf"\(pid {holder['pid']} on .*\) ended without releasing it "
                                                rf"\({why}\)"):
            with WorkdirLock(tmp_path):
                assert json.loads(lock.read_text())["pid"] == os.getpid()
        assert lock.read_text() == ""


# ------------------------------------------------------------------ exact metrics

def test_metrics_are_exact_across_a_resume(tmp_path):
    """Checkpoint at 6, records every 4: the record at step 8 must average steps 5-8 (5 and 6
    come from the checkpoint), as an uninterrupted run's does; nothing is duplicated."""
    loss_fn, params, _ = problem()
    config = TrainConfig(steps=12, log_every=4, checkpoint_every=6)
    fit(loss_fn, params, ArraySource(DATA, B), config, workdir=tmp_path / "whole", progress=False)
    with pytest.raises(KeyboardInterrupt):
        fit(loss_fn, params, ArraySource(DATA, B, fail_at=7), config, workdir=tmp_path / "cut", progress=False)
    assert [r["step"] for r in records(tmp_path / "cut")] == [4]
    resumed = fit(loss_fn, params, ArraySource(DATA, B), config, workdir=tmp_path / "cut", resume=True,
                  progress=False)
    assert resumed.start_step == 6
    assert records(tmp_path / "cut") == records(tmp_path / "whole")
    assert [r["step"] for r in records(tmp_path / "whole")] == [4, 8, 12]


# ------------------------------------------------------------------ resume errors

def test_resume_errors_name_only_what_differs(tmp_path):
    loss_fn, params, _ = problem()
    config = TrainConfig(steps=1, learning_rate=1e-2)
    run = {"model": {"cell": "lstm", "hidden": 4}, "task": "adding"}
    fit(loss_fn, params, ArraySource(DATA, B), config, workdir=tmp_path, run_config=run, progress=False)
    with pytest.raises(ValueError) as e:
        fit(loss_fn, params, ArraySource(DATA, B), TrainConfig(steps=1, learning_rate=1e-3), workdir=tmp_path,
            resume=True, run_config={**run, "model": {"cell": "lstm", "hidden": 8}})
    assert str(e.value) == (f"cannot resume from '{tmp_path}': it was written by a different configuration "
                            "(model.hidden: 4 there, 8 now; train.learning_rate: 0.01 there, 0.001 now).")
    with pytest.raises(ValueError, match=r"\(data_source.batch_size: 8 there, 16 now; "
                                         r"data_source.steps_per_epoch: 4 there, 2 now\)"):
        fit(loss_fn, params, ArraySource(DATA, 16), config, workdir=tmp_path, resume=True, run_config=run)
    _, wider, _ = problem(hidden=6)
    with pytest.raises(ValueError) as e:
        fit(loss_fn, wider, ArraySource(DATA, B), config, workdir=tmp_path, resume=True, run_config=run)
    message = str(e.value)
    assert message.startswith(f"cannot resume from '{tmp_path}': the checkpoint at step 1 does not fit the "
                              "current state (params.body.b has shape (16,) float32 there, (24,) float32 now; ")
    assert "params.body.w_h has shape (4, 16) float32 there, (6, 24) float32 now" in message
    assert "params.w has shape (4, 1) float32 there, (6, 1) float32 now" in message
    assert message.endswith(" more).") and "strict" not in message


# ------------------------------------------------------------------ damaged checkpoints

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 6-step run with checkpoints at 4 and 6, and its final params."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    loss_fn, params, _ = problem()
    result = fit(loss_fn, params, ArraySource(DATA, B), TrainConfig(steps=6, log_every=2, checkpoint_every=2),
                 workdir=workdir, progress=False)
    assert sorted(os.listdir(workdir / "checkpoints")) == ["4", "6"]
    return workdir, result


def _empty(step_dir):
    for p in step_dir.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def _truncate(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


DAMAGE = {
    "metadata deleted": lambda d: (d / "state" / "_METADATA").unlink(),
    "step directory emptied": _empty,
    "_METADATA truncated": lambda d: _truncate(d / "state" / "_METADATA"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(finished_run, tmp_path, damage):
    source, whole = finished_run
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir)
    DAMAGE[damage](workdir / "checkpoints" / "6")
    loss_fn, params, _ = problem()
    with pytest.warns(RuntimeWarning, match=rf"the checkpoint at step 6 in '{workdir}' is unreadable \(.*\); it "
                                            r"is moved to corrupt_checkpoints/ and the previous checkpoint is tried"):
        resumed = fit(loss_fn, params, ArraySource(DATA, B), TrainConfig(steps=6, log_every=2, checkpoint_every=2),
                      workdir=workdir, resume=True, progress=False)
    assert resumed.start_step == 4
    helpers.assert_trees_close(resumed.params, whole.params, rtol=0, atol=0)
    assert records(workdir) == records(source)
    assert os.listdir(workdir / "corrupt_checkpoints") == ["6"]
    assert sorted(os.listdir(workdir / "checkpoints")) == ["4", "6"]  # 6 written again


def test_no_readable_checkpoint_and_a_corrupt_config_are_clear_errors(finished_run, tmp_path):
    source, _ = finished_run
    loss_fn, params, _ = problem()
    config = TrainConfig(steps=6, log_every=2, checkpoint_every=2)
    workdir = tmp_path / "none"
    shutil.copytree(source, workdir)
    for step in ("4", "6"):
        _empty(workdir / "checkpoints" / step)
    with pytest.warns(RuntimeWarning, match="step 4"), pytest.warns(RuntimeWarning, match="step 6"):
        with pytest.raises(ValueError, match=rf"cannot resume from '{workdir}': none of its checkpoints \(steps "
                                             r"\[4, 6\]\) is readable; they are in corrupt_checkpoints/\."):
            fit(loss_fn, params, ArraySource(DATA, B), config, workdir=workdir, resume=True)
    workdir = tmp_path / "config"
    shutil.copytree(source, workdir)
    _truncate(workdir / "config.json")
    with pytest.raises(ValueError, match=rf"cannot resume from '{workdir}': its config.json, which records the "
                                         r"run's configuration, is corrupt \(.*\); restore it, or start a new "
                                         r"workdir\."):
        fit(loss_fn, params, ArraySource(DATA, B), config, workdir=workdir, resume=True)


# ------------------------------------------------------------------ extending a run

def test_steps_can_grow_on_resume_to_extend_a_finished_run(tmp_path):
    """6 steps, then resumed to 10: the same params and metrics records as 10 steps at once
    (the records a 6-step run writes at its end, off the intervals, are dropped)."""
    loss_fn, params, eval_fn = problem()
    config = lambda steps: TrainConfig(steps=steps, log_every=4, eval_every=4, checkpoint_every=4)
    whole = fit(loss_fn, params, ArraySource(DATA, B), config(10), eval_fn=eval_fn, workdir=tmp_path / "whole",
                progress=False)
    fit(loss_fn, params, ArraySource(DATA, B), config(6), eval_fn=eval_fn, workdir=tmp_path / "grown",
        progress=False)
    assert [r["step"] for r in records(tmp_path / "grown")] == [4, 4, 6, 6]
    grown = fit(loss_fn, params, ArraySource(DATA, B), config(10), eval_fn=eval_fn, workdir=tmp_path / "grown",
                resume=True, progress=False)
    assert grown.start_step == 6
    helpers.assert_trees_close(grown.params, whole.params, rtol=0, atol=0)
    assert records(tmp_path / "grown") == records(tmp_path / "whole")
    assert json.loads((tmp_path / "grown" / "config.json").read_text())["train"]["steps"] == 10
    with pytest.raises(ValueError, match=rf"cannot resume from '{tmp_path / 'grown'}' with steps=8: the run is "
                                         r"already at step 10\."):
        fit(loss_fn, params, ArraySource(DATA, B), config(8), workdir=tmp_path / "grown", resume=True)


def test_a_schedule_that_depends_on_steps_cannot_be_extended(tmp_path):
    loss_fn, params, _ = problem()
    fit(loss_fn, params, ArraySource(DATA, B), TrainConfig(steps=1, schedule="cosine"), workdir=tmp_path,
        progress=False)
    with pytest.raises(ValueError, match=r"with different steps \(train.steps: 1 there, 3 now\): the 'cosine' "
                                         r"schedule depends on `steps`, so only a 'constant' schedule can be "
                                         r"extended\."):
        fit(loss_fn, params, ArraySource(DATA, B), TrainConfig(steps=3, schedule="cosine"), workdir=tmp_path,
            resume=True)


# ------------------------------------------------------------------ progress

def test_progress_is_a_line_every_n_steps_off_a_terminal_and_a_bar_on_one(capsys, monkeypatch):
    loss_fn, params, _ = problem()
    fit(loss_fn, params, ArraySource(DATA, B), TrainConfig(steps=5, log_every=100), progress=2, description="toy")
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == ["toy: step 2/5 (40%)", "toy: step 4/5 (80%)",
                                                     "toy: step 5/5 (100%)"]
    assert all(" loss " in line and "steps/s" in line and " left" in line for line in lines)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    fit(loss_fn, params, ArraySource(DATA, B), TrainConfig(steps=2), progress=2, description="toy")
    err = capsys.readouterr().err
    assert "\r" in err and "toy:" in err and "step 2/2" not in err  # tqdm's bar, no lines
    with pytest.raises(ValueError, match=r"`progress` must be None, True, False or a positive int \(steps between "
                                         r"progress lines\), got 0\."):
        fit(loss_fn, params, ArraySource(DATA, B), TrainConfig(steps=1), progress=0)


def test_the_experiment_takes_a_progress_interval(capsys):
    path = pathlib.Path(__file__).parent.parent / "experiments" / "long_term_deps.py"
    spec = importlib.util.spec_from_file_location("long_term_deps_progress", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.parse_args([]).progress is None
    assert module.parse_args(["--progress", "50"]).progress == 50
    with pytest.raises(SystemExit):
        module.parse_args(["--progress", "0"])
    assert "--progress must be positive, got 0" in capsys.readouterr().err
