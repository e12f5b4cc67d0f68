"""Small training problems shared by the test_train_* files, and the scripts they run in
subprocesses (``python tests/train_problems.py kill|worker|reference ...``).

Host batch sources of our own (the protocol of :mod:`lstm_jax.train.feed`): ``ArraySource``
(shuffled rows of fixed arrays, a new permutation each epoch) and ``StreamSource`` (B
contiguous streams cut into chunks; each epoch draws new streams), so that the training
tests do not depend on :mod:`lstm_jax.data.batches`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import lstm_jax as lj
from lstm_jax.train import TrainConfig, fit


class ArraySource:
    """``source[step]``: rows ``perm_e[i B:(i + 1) B]`` of ``arrays`` (a NamedTuple of arrays),
    ``perm_e`` a permutation drawn from ``(seed, e)``, ``e, i = divmod(step, steps_per_epoch)``."""

    def __init__(self, arrays, batch_size: int, seed: int = 0, fail_at: int | None = None):
        self.arrays = type(arrays)(*(np.asarray(a) for a in arrays))
        self.batch_size, self.seed, self.fail_at = batch_size, seed, fail_at
        self.steps_per_epoch = len(self.arrays[0]) // batch_size
        self.reads: list[int] = []

    def __getitem__(self, step):
        self.reads.append(step)
        if step == self.fail_at:
            raise KeyboardInterrupt(f"interrupted reading step {step}")
        epoch, i = divmod(step, self.steps_per_epoch)
        rows = np.random.default_rng((self.seed, epoch)).permutation(len(self.arrays[0]))
        rows = rows[i * self.batch_size:(i + 1) * self.batch_size]
        return type(self.arrays)(*(a[rows] for a in self.arrays))


class Chunk(NamedTuple):
    inputs: np.ndarray  # [B, L, I] float32
    targets: np.ndarray  # [B, L, 1] float32: the stream's input[0] LAG steps earlier (0 before)
    resets: np.ndarray  # [B, L] bool: True at each stream's start (epoch start, chunk 0, position 0)


class StreamSource:
    """B streams of ``chunks * L`` steps per epoch, drawn from ``(seed, epoch)``; step
    ``e * chunks + c`` is chunk ``c`` of epoch ``e``: row b continues stream b."""

    LAG = 2

    def __init__(self, batch_size: int, chunk_length: int, chunks: int, input_size: int = 2, seed: int = 0,
                 kill_at: int | None = None):
        self.batch_size, self.steps_per_epoch = batch_size, chunks
        self.length, self.input_size, self.seed, self.kill_at = chunk_length, input_size, seed, kill_at

    def streams(self, epoch):
        """The epoch's whole streams: inputs [B, chunks L, I], targets [B, chunks L, 1]."""
        rng = np.random.default_rng((self.seed, epoch))
        x = rng.standard_normal((self.batch_size, self.steps_per_epoch * self.length, self.input_size))
        x = x.astype(np.float32)
        y = np.zeros(x.shape[:2] + (1,), np.float32)
        y[:, self.LAG:, 0] = x[:, :-self.LAG, 0]
        return x, y

    def __getitem__(self, step):
        if step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # a real kill: no cleanup, the lock left behind
        epoch, c = divmod(step, self.steps_per_epoch)
        x, y = self.streams(epoch)
        cut = slice(c * self.length, (c + 1) * self.length)
        resets = np.zeros((self.batch_size, self.length), bool)
        resets[:, 0] = c == 0
        return Chunk(x[:, cut], y[:, cut], resets)


class Params(NamedTuple):
    body: object
    w: jax.Array


def stream_model(hidden=4, input_size=2, seed=0):
    """(net, params, stateful_loss, full_loss): an LSTM layer and a linear readout per step."""
    net = lj.layer(lj.lstm(hidden))
    params = Params(net.init(jax.random.key(seed), input_size), 0.5 * jnp.ones((hidden, 1), jnp.float32))

    def mse(p, ys, batch):
        return jnp.mean((ys @ p.w - batch.targets) ** 2)

    def stateful_loss(p, batch, key, carry):
        del key
        ys, carry = net.apply(p.body, batch.inputs, carry, resets=batch.resets)
        return mse(p, ys, batch), {}, carry

    def full_loss(p, batch, key):
        del key
        ys, _ = net.apply(p.body, batch.inputs)
        return mse(p, ys, batch)

    return net, params, stateful_loss, full_loss


KILL = dict(batch=4, length=3, chunks=4, steps=10)


def kill_config():
    return TrainConfig(steps=KILL["steps"], learning_rate=1e-2, log_every=2, checkpoint_every=3)


def kill_run(workdir, kill_at=None, resume=False):
    """The stateful run of the kill test: killed (SIGKILL) while reading step ``kill_at``."""
    net, params, loss, _ = stream_model()
    source = StreamSource(KILL["batch"], KILL["length"], KILL["chunks"], kill_at=kill_at)
    return fit(loss, params, source, kill_config(), carry=net.init_carry(params.body, (KILL["batch"],)),
               workdir=workdir, resume=resume, progress=False)


WORKER = dict(batch=4, length=3, chunks=3, first=4, steps=6)


def worker_config(steps):
    return TrainConfig(steps=steps, learning_rate=1e-2, log_every=2, checkpoint_every=2)


def worker_run(workdir=None, steps=WORKER["steps"], resume=False, progress=None):
    """The stateful run of the several-processes test."""
    net, params, loss, _ = stream_model()
    source = StreamSource(WORKER["batch"], WORKER["length"], WORKER["chunks"])
    return fit(loss, params, source, worker_config(steps), carry=net.init_carry(params.body, (WORKER["batch"],)),
               workdir=workdir, resume=resume, progress=progress)


def _strict():
    """The test suite's settings (tests/conftest.py), so that results match the test process."""
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_numpy_dtype_promotion", "strict")


def _host(tree):
    return [np.asarray(jax.device_get(x.addressable_data(0))).tolist() for x in jax.tree.leaves(tree)]


def main(argv):
    if argv[0] == "kill":  # kill WORKDIR KILL_AT
        _strict()
        kill_run(argv[1], kill_at=int(argv[2]))
        raise SystemExit("not killed")
    if argv[0] == "worker":  # worker PORT PROCESS_ID NUM_PROCESSES WORKDIR OUT
        port, pid, n, workdir, out = argv[1], int(argv[2]), int(argv[3]), argv[4], argv[5]
        try:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=n, process_id=pid,
                                       initialization_timeout=60)
            jax.devices()  # the CPU client, with its collectives, is made here
        except Exception as e:  # a jaxlib without gloo: reported to the test, which skips
            if "gloo" not in str(e).lower() and "collectives" not in str(e).lower():
                raise
            print(f"GLOO UNAVAILABLE: {type(e).__name__}: {e}", flush=True)
            raise SystemExit(3)
        _strict()
        first = worker_run(workdir, steps=WORKER["first"])
        last = worker_run(workdir, resume=True)
        with open(out, "w") as f:
            json.dump({"devices": len(jax.devices()), "start": last.start_step, "params": _host(last.params),
                       "carry_rows": _host(last.carry), "history": first.history + last.history}, f)
        jax.distributed.shutdown()
        return
    if argv[0] == "reference":  # reference OUT: one process (run it with 2 forced host devices)
        _strict()
        result = worker_run()
        with open(argv[1], "w") as f:
            json.dump({"devices": len(jax.devices()), "params": _host(result.params)}, f)
        return
    raise SystemExit(f"unknown command {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
