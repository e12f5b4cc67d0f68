"""The training toolkit: the loss falls, clipping clips, a killed run resumes to the same
parameters, the sharded update equals the single-device one, and bad configurations fail
with clear messages."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import helpers  # tests/helpers.py
import lstm_jax as lj
from lstm_jax.data import get_task
from lstm_jax.models import readout
from lstm_jax.train import MetricsLog, TrainConfig, fit, learning_rate_schedule, write_json

TASK = get_task("adding")
T, B, H = 10, 16, 8


def problem(seed=0):
    """(loss_fn, params, batch_fn, eval_fn) for a small adding problem, float32."""
    model = readout(lj.lstm(H), 1)
    params = model.init(jax.random.key(seed), TASK.input_size)

    def loss_fn(p, batch, key):
        del key
        return TASK.loss(model.apply(p, batch.xs, lengths=batch.lengths), batch)

    test = TASK.sample(jax.random.key(123), 256, T)
    eval_fn = jax.jit(lambda p: TASK.evaluate(model.apply(p, test.xs, lengths=test.lengths), test))
    return loss_fn, params, lambda k: TASK.sample(k, B, T), eval_fn


def test_loss_falls_and_history_is_logged(tmp_path):
    loss_fn, params, batch_fn, eval_fn = problem()
    config = TrainConfig(steps=300, learning_rate=1e-2, log_every=50, eval_every=100)
    result = fit(loss_fn, params, batch_fn, config, eval_fn=eval_fn, workdir=tmp_path)
    before = float(eval_fn(params)["mse"])
    assert before > 0.5 * TASK.baseline(T)  # starts knowing nothing
    assert result.final_eval["mse"] < 0.5 * TASK.baseline(T)  # bound: half the no-memory baseline
    train = [h for h in result.history if "loss" in h]
    assert [h["step"] for h in train] == [50, 100, 150, 200, 250, 300]
    assert [h["step"] for h in result.history if "eval/mse" in h] == [100, 200, 300]
    assert MetricsLog(tmp_path / "metrics.jsonl").read() == json.loads(json.dumps(result.history))
    assert json.loads((tmp_path / "config.json").read_text())["train"]["steps"] == 300


def test_global_norm_clipping_is_applied():
    """One SGD step (momentum starts at zero): the update is exactly -lr * clip(g)."""
    loss_fn, params, _, _ = problem()
    batch = TASK.sample(jax.random.key(5), B, T)
    g = jax.grad(lambda p: loss_fn(p, batch, None))(params)
    norm = float(optax.tree.norm(g))
    clip, lr = norm / 4, 0.1
    config = TrainConfig(steps=1, optimizer="sgd", learning_rate=lr, clip_norm=clip, log_every=1)
    result = fit(loss_fn, params, lambda k: batch, config)
    assert result.history[0]["grad_norm"] == pytest.approx(norm, rel=1e-5)
    expected = jax.tree.map(lambda p, g: p - lr * g * (clip / norm), params, g)
    helpers.assert_trees_close(result.params, expected, rtol=1e-5, atol=1e-6)


def test_resume_after_a_crash_reaches_the_same_parameters(tmp_path):
    loss_fn, params, batch_fn, eval_fn = problem()
    config = TrainConfig(steps=12, learning_rate=1e-2, log_every=2, eval_every=4, checkpoint_every=4)
    whole = fit(loss_fn, params, batch_fn, config, eval_fn=eval_fn, workdir=tmp_path / "whole")

    calls = []

    def crashing_eval(p):  # dies during the evaluation at step 8, before that step's checkpoint
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return eval_fn(p)

    with pytest.raises(KeyboardInterrupt):
        fit(loss_fn, params, batch_fn, config, eval_fn=crashing_eval, workdir=tmp_path / "cut")
    assert sorted(os.listdir(tmp_path / "cut" / "checkpoints")) == ["4"]
    resumed = fit(loss_fn, params, batch_fn, config, eval_fn=eval_fn, workdir=tmp_path / "cut", resume=True)
    assert resumed.start_step == 4
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(a, b)  # bit for bit
    helpers.assert_trees_close(resumed.opt_state, whole.opt_state, rtol=0, atol=0)
    steps = [r["step"] for r in MetricsLog(tmp_path / "cut" / "metrics.jsonl").read() if "loss" in r]
    assert steps == list(range(2, 13, 2))  # no duplicated or missing records after the resume


def test_resume_refuses_another_config_and_overwrite_is_refused(tmp_path):
    loss_fn, params, batch_fn, _ = problem()
    config = TrainConfig(steps=2, log_every=1)
    fit(loss_fn, params, batch_fn, config, workdir=tmp_path, run_config={"model": "lstm"})
    with pytest.raises(ValueError, match="already holds a run .* resume it"):
        fit(loss_fn, params, batch_fn, config, workdir=tmp_path, run_config={"model": "lstm"})
    with pytest.raises(ValueError, match="different configuration \\(model: 'lstm' there, 'gru' now\\)"):
        fit(loss_fn, params, batch_fn, config, workdir=tmp_path, resume=True, run_config={"model": "gru"})
    with pytest.raises(ValueError, match="different configuration \\(train.learning_rate: 0.001 there, 0.01 now\\)"):
        fit(loss_fn, params, batch_fn, TrainConfig(steps=2, log_every=1, learning_rate=1e-2), workdir=tmp_path,
            resume=True, run_config={"model": "lstm"})
    done = fit(loss_fn, params, batch_fn, config, workdir=tmp_path, resume=True, run_config={"model": "lstm"})
    assert done.start_step == 2  # a finished run resumes to its end


SHARDED = textwrap.dedent("""
    import json, sys, jax, numpy as np
    import lstm_jax as lj
    from lstm_jax.data import get_task
    from lstm_jax.models import readout
    from lstm_jax.train import TrainConfig, fit
    task = get_task("adding")
    model = readout(lj.lstm(8), 1)
    params = model.init(jax.random.key(0), 2)
    loss_fn = lambda p, b, k: task.loss(model.apply(p, b.xs, lengths=b.lengths), b)
    out = {"devices": len(jax.local_devices())}
    for n in (1, 4):
        r = fit(loss_fn, params, lambda k: task.sample(k, 16, 10), TrainConfig(steps=5, log_every=1, num_devices=n))
        out[n] = {"loss": [h["loss"] for h in r.history], "params": [np.asarray(x).tolist() for x in jax.tree.leaves(r.params)],
                  "sharding": str(r.params.w.sharding)}
    try:
        fit(loss_fn, params, lambda k: task.sample(k, 6, 10), TrainConfig(steps=1, num_devices=4))
    except ValueError as e:
        out["error"] = str(e)
    # a host source, and a stateful run whose carry is sharded like the batch
    sys.path.insert(0, TESTS)
    from train_problems import StreamSource, stream_model
    net, p0, stateful_loss, _ = stream_model()
    for n in (1, 4):
        r = fit(stateful_loss, p0, StreamSource(8, 3, 2), TrainConfig(steps=3, log_every=1, num_devices=n),
                carry=net.init_carry(p0.body, (8,)), progress=False)
        out[f"host{n}"] = {"loss": [h["loss"] for h in r.history], "carry_spec": str(r.carry.hidden.sharding.spec),
                           "params": [np.asarray(x).tolist() for x in jax.tree.leaves(r.params)]}
    try:
        fit(stateful_loss, p0, StreamSource(6, 3, 2), TrainConfig(steps=1, num_devices=4), carry=net.init_carry(p0.body, (6,)))
    except ValueError as e:
        out["host_error"] = str(e)
    print(json.dumps(out))
""")


def test_sharded_over_four_devices_equals_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    script = f"TESTS = {os.path.dirname(__file__)!r}\n" + SHARDED
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4
    np.testing.assert_allclose(out["4"]["loss"], out["1"]["loss"], rtol=1e-5)
    for a, b in zip(out["4"]["params"], out["1"]["params"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert "must be divisible by the number of devices (4)" in out["error"] and "(6, 10, 2)" in out["error"]
    np.testing.assert_allclose(out["host4"]["loss"], out["host1"]["loss"], rtol=1e-5)
    for a, b in zip(out["host4"]["params"], out["host1"]["params"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert out["host4"]["carry_spec"] == "P('data',)"
    assert out["host_error"] == "the batch size (6) must be divisible by the number of devices (4) to shard it."


def test_schedules():
    warm = learning_rate_schedule(TrainConfig(steps=100, learning_rate=0.1, schedule="warmup_cosine", warmup_steps=10))
    cos = learning_rate_schedule(TrainConfig(steps=100, learning_rate=0.1, schedule="cosine"))
    const = learning_rate_schedule(TrainConfig(steps=100, learning_rate=0.1))
    assert float(warm(0)) == 0.0 and float(warm(10)) == pytest.approx(0.1) and float(warm(100)) == pytest.approx(0.0)
    assert float(cos(0)) == pytest.approx(0.1) and float(cos(50)) == pytest.approx(0.05) and float(cos(100)) == pytest.approx(0.0)
    assert float(const(77)) == pytest.approx(0.1)


def test_nan_loss_stops_training_before_any_checkpoint(tmp_path):
    loss_fn, params, batch_fn, _ = problem()
    nan_loss = lambda p, b, k: loss_fn(p, b, k) * jnp.nan
    with pytest.raises(FloatingPointError, match="the training loss became nan by step 2"):
        fit(nan_loss, params, batch_fn, TrainConfig(steps=4, log_every=2))
    # checkpoints come more often than logs: the check runs before each save as well
    with pytest.raises(FloatingPointError, match="the training loss became nan by step 2"):
        fit(nan_loss, params, batch_fn, TrainConfig(steps=4, log_every=100, checkpoint_every=2), workdir=tmp_path)
    assert not list((tmp_path / "checkpoints").iterdir())


def test_progress_false_is_quiet(capsys):
    """(Off a terminal the default is a line per metrics record: tests/test_train_faults.py.)"""
    loss_fn, params, batch_fn, _ = problem()
    fit(loss_fn, params, batch_fn, TrainConfig(steps=2, log_every=1), description="quiet-please", progress=False)
    assert "quiet-please" not in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "TrainConfig.steps must be an int >= 1, got 0."),
    (dict(steps=-5), "TrainConfig.steps must be an int >= 1, got -5."),
    (dict(learning_rate=-1e-3), "TrainConfig.learning_rate must be a positive finite number, got -0.001."),
    (dict(clip_norm=0), "TrainConfig.clip_norm must be a positive finite number, got 0."),
    (dict(optimizer="adagrad"), "TrainConfig.optimizer must be one of ('adam', 'adamw', 'sgd', 'rmsprop'), got 'adagrad'."),
    (dict(schedule="linear"), "TrainConfig.schedule must be one of ('constant', 'cosine', 'warmup_cosine'), got 'linear'."),
    (dict(schedule="warmup_cosine", warmup_steps=0), "TrainConfig.warmup_steps must lie in (0, steps=1000)"),
    (dict(num_devices=0), "TrainConfig.num_devices must be an int >= 1, got 0."),
    (dict(learning_rate=float("inf")), "TrainConfig.learning_rate must be a positive finite number, got inf."),
    (dict(weight_decay=None), "TrainConfig.weight_decay must be a non-negative finite number, got None."),
    (dict(log_every=2.5), "TrainConfig.log_every must be an int >= 1, got 2.5."),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError) as e:
        TrainConfig(**kwargs)
    assert match in str(e.value)


def test_fit_errors(tmp_path):
    loss_fn, params, batch_fn, _ = problem()
    with pytest.raises(ValueError, match=r"`num_devices` must lie in \[1, 1\]"):
        fit(loss_fn, params, batch_fn, TrainConfig(steps=1, num_devices=2))
    with pytest.raises(ValueError, match="`resume=True` needs a `workdir`"):
        fit(loss_fn, params, batch_fn, TrainConfig(steps=1), resume=True)
    with pytest.raises(TypeError, match="`config` must be a TrainConfig, got dict"):
        fit(loss_fn, params, batch_fn, {"steps": 1})


def test_write_json_is_atomic_and_leaves_no_temporary_files(tmp_path):
    path = write_json(tmp_path / "out" / "r.json", {"a": jnp.float32(1.5), "b": [np.int64(2)], "c": float("nan")})
    assert json.loads(path.read_text()) == {"a": 1.5, "b": [2], "c": "nan"}
    assert os.listdir(path.parent) == ["r.json"]
