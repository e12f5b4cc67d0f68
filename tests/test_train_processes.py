"""``fit`` under ``jax.distributed`` (multi-controller JAX) on the CPU: 2 processes with one
device each (gloo collectives) train the stateful stream problem, checkpoint with Orbax and
resume (extending the run). The result equals, bit for bit, 1 process with 2 devices on the
same global batches (the same reduction), and 1 process with 1 device up to rounding."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import train_problems
from lstm_jax.train import MetricsLog


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
    script, port = str(pathlib.Path(train_problems.__file__)), str(free_port())
    env = {"JAX_PLATFORMS": "cpu", "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    commands = [([script, "worker", port, str(i), "2", str(tmp_path / "run"), str(tmp_path / f"out{i}.json")], env)
                for i in range(2)]
    commands.append(([script, "reference", str(tmp_path / "reference.json")],
                     {**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}))
    procs = [subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=e) for args, e in commands]
    outputs = []
    try:
        one = train_problems.worker_run(progress=False)  # meanwhile here, 1 device: another order of summation
        for p in procs:
            outputs.append(p.communicate(timeout=180)[0])
    finally:
        for p in procs:  # a worker whose peer died waits for it: end them all
            if p.poll() is None:
                p.kill()
                p.wait()
    if any("GLOO UNAVAILABLE" in out for out in outputs):
        pytest.skip("CPU collectives (gloo) are unavailable in this jaxlib: " + outputs[0].splitlines()[-1])
    assert [p.returncode for p in procs] == [0, 0, 0], "\n---\n".join(out[-3000:] for out in outputs)

    runs = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2)]
    reference = json.loads((tmp_path / "reference.json").read_text())
    assert [r["devices"] for r in runs] == [2, 2] and [r["start"] for r in runs] == [4, 4]
    assert reference["devices"] == 2
    assert runs[0]["params"] == runs[1]["params"] == reference["params"]  # replicated, bit for bit
    for a, b in zip(runs[0]["params"], jax.tree.leaves(one.params)):
        np.testing.assert_allclose(np.asarray(a, np.float32), b, rtol=1e-6, atol=1e-6)
    half = train_problems.WORKER["batch"] // 2  # the carry is sharded like the batch: each process its rows
    for i, r in enumerate(runs):
        for a, b in zip(r["carry_rows"], jax.tree.leaves(one.carry)):
            np.testing.assert_allclose(np.asarray(a, np.float32), b[i * half:(i + 1) * half], rtol=1e-6, atol=1e-6)
    untimed = lambda history: [{k: v for k, v in h.items() if k != "seconds"} for h in history]
    assert untimed(runs[0]["history"]) == untimed(runs[1]["history"])
    assert [r["step"] for r in MetricsLog(tmp_path / "run" / "metrics.jsonl").read()] == [2, 4, 6]  # written once
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["4", "6"]
    progress = [[line for line in out.splitlines() if line.startswith("train: step")] for out in outputs[:2]]
    assert [len(p) for p in progress] == [3, 0]  # only process 0 reports (steps 2, 4 | 6)
