"""Host batch sources in ``fit``: each step trains on exactly ``source[step]`` (read once, in
order, the next one prefetched), records carry the epoch, other kinds of data are refused
with a message, and a run killed mid-epoch (SIGKILL, lock left behind) resumes to the same
parameters, carry, optimiser state and metrics records, bit for bit."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers  # tests/helpers.py
import lstm_jax as lj
import train_problems
from lstm_jax.data import get_task
from lstm_jax.models import readout
from lstm_jax.train import MetricsLog, TrainConfig, fit
from train_problems import ArraySource

TASK = get_task("adding")
T, B, N = 6, 8, 32


def problem():
    model = readout(lj.lstm(4), 1)
    params = model.init(jax.random.key(0), TASK.input_size)

    def loss_fn(p, batch, key):
        del key
        loss = TASK.loss(model.apply(p, batch.xs, lengths=batch.lengths), batch)
        return loss, {"first_target": batch.targets[0], "rows": jnp.sum(batch.lengths)}

    return loss_fn, params, TASK.sample(jax.random.key(1), N, T)


def test_each_step_trains_on_its_batch_and_records_the_epoch(tmp_path):
    loss_fn, params, data = problem()
    source = ArraySource(data, B)
    result = fit(loss_fn, params, source, TrainConfig(steps=6, log_every=1), workdir=tmp_path, progress=False)
    assert source.reads == list(range(6))  # each batch read once, in order (the next one prefetched)
    targets = [float(source[s].targets[0]) for s in range(6)]
    assert [h["first_target"] for h in result.history] == pytest.approx(targets, rel=0, abs=0)
    assert [h["rows"] for h in result.history] == [B * T] * 6
    assert [h["epoch"] for h in result.history] == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5]
    saved = json.loads((tmp_path / "config.json").read_text())["data_source"]
    assert saved == {"type": "ArraySource", "batch_size": B, "steps_per_epoch": N // B}


def test_an_interrupted_read_stops_the_run_and_releases_the_workdir(tmp_path):
    """An exception in the prefetching thread reaches the caller; the lock is released, so the
    resumed run takes no lock over; it ends where an uninterrupted run does."""
    loss_fn, params, data = problem()
    config = TrainConfig(steps=6, log_every=2, checkpoint_every=2)
    whole = fit(loss_fn, params, ArraySource(data, B), config, progress=False)
    with pytest.raises(KeyboardInterrupt, match="interrupted reading step 3"):
        fit(loss_fn, params, ArraySource(data, B, fail_at=3), config, workdir=tmp_path, progress=False)
    resumed = fit(loss_fn, params, ArraySource(data, B), config, workdir=tmp_path, resume=True, progress=False)
    assert resumed.start_step == 2
    helpers.assert_trees_close(resumed.params, whole.params, rtol=0, atol=0)


def test_other_kinds_of_data_are_refused_with_a_message():
    loss_fn, params, data = problem()
    config = TrainConfig(steps=1)
    with pytest.raises(TypeError, match=r"`data` must be a batch function `batch_fn\(key\) -> batch` \(traced by "
                                        r"JAX\) or a host batch source .* got list\."):
        fit(loss_fn, params, [data], config)
    with pytest.raises(TypeError, match="batch_fn is traced by JAX inside the update, so it must be written in "
                                        "jax.numpy from its key; for NumPy data pass a host batch source"):
        fit(loss_fn, params, lambda key: data._replace(xs=np.asarray(jax.random.normal(key, (B, T, 2)))), config)
    source = ArraySource(data, B)
    source.steps_per_epoch = 0
    with pytest.raises(ValueError, match="the batch source's `steps_per_epoch` must be a positive int, got 0."):
        fit(loss_fn, params, source, config)

    class Ragged(ArraySource):
        def __getitem__(self, step):
            batch = super().__getitem__(step)
            return batch._replace(lengths=batch.lengths[:3])

    with pytest.raises(ValueError, match=r"every leaf of the batch source's batch \(step 0\) must have the global "
                                         r"batch \(8\) on its leading axis; lengths has shape \(3,\)\."):
        fit(loss_fn, params, Ragged(data, B), config, progress=False)


def test_a_run_killed_mid_epoch_resumes_bit_identical(tmp_path):
    """Stateful (TBPTT) training from a stream source with 4 chunks per epoch, checkpoints
    every 3 steps (mid-epoch, off the metrics interval of 2); the process is SIGKILLed while
    reading step 8. The resumed run takes the dead run's lock over with a warning and ends
    with the same parameters, carry and optimiser state, and the same metrics.jsonl."""
    whole = train_problems.kill_run(tmp_path / "whole")
    script = pathlib.Path(train_problems.__file__)
    proc = subprocess.Popen([sys.executable, str(script), "kill", str(tmp_path / "cut"), "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == -9, out[-3000:]
    assert (tmp_path / "cut" / "run.lock").read_text().strip()  # left behind by the killed run
    with pytest.warns(RuntimeWarning, match=rf"taking over the lock .* \(pid {proc.pid} on .*\) ended without "
                                            r"releasing it \(that process no longer exists\)"):
        resumed = train_problems.kill_run(tmp_path / "cut", resume=True)
    assert resumed.start_step in (3, 6)  # the save of step 6 may not have finished when it was killed
    for name in ("params", "carry", "opt_state"):
        helpers.assert_trees_close(getattr(resumed, name), getattr(whole, name), rtol=0, atol=0)
    records = lambda run: [{k: v for k, v in r.items() if k != "seconds"}
                           for r in MetricsLog(tmp_path / run / "metrics.jsonl").read()]
    assert records("cut") == records("whole")
    assert [r["step"] for r in records("whole")] == [2, 4, 6, 8, 10]
    assert (tmp_path / "cut" / "run.lock").read_text() == ""  # released


def test_the_library_sources_feed_fit():
    """lstm_jax.data's ArrayBatches and StreamBatches follow the protocol fit reads."""
    from lstm_jax.data import ArrayBatches, StreamBatches

    loss_fn, params, data = problem()
    result = fit(loss_fn, params, ArrayBatches(data, B, seed=3), TrainConfig(steps=5, log_every=5), progress=False)
    assert result.history[-1]["epoch"] == 5 / (N // B)
    net = lj.layer(lj.lstm(4))
    p = net.init(jax.random.key(0), 3)

    def lm_loss(p, batch, key, carry):
        ys, carry = net.apply(p, jax.nn.one_hot(batch.inputs, 3, dtype=jnp.float32), carry, resets=batch.resets)
        return jnp.mean((ys[..., 0] - batch.targets.astype(jnp.float32)) ** 2), {}, carry

    source = StreamBatches(np.arange(41) % 3, batch_size=4, chunk_length=5)  # 2 steps per epoch
    result = fit(lm_loss, p, source, TrainConfig(steps=3, log_every=1), carry=net.init_carry(p, (4,)),
                 progress=False)
    assert [h["epoch"] for h in result.history] == [0.5, 1.0, 1.5]
    assert result.carry.hidden.shape == (4, 4)
