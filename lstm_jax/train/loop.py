"""``fit``: an Optax training loop around one jitted, data-parallel update."""

from __future__ import annotations

import math
import pathlib
import time
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lstm_jax.train.checkpoint import Checkpointer
from lstm_jax.train.config import TrainConfig, make_optimizer
from lstm_jax.train.feed import HostFeed, TracedFeed, check_leading_axis, is_batch_source, process_rows, to_global
from lstm_jax.train.lock import WorkdirInUseError, WorkdirLock
from lstm_jax.train.progress import Progress, check_progress
from lstm_jax.train.records import MetricsLog

Array = jax.Array


class FitResult(NamedTuple):
    """What :func:`fit` returns."""

    params: Any  # the final parameters (replicated over the devices used)
    opt_state: Any  # the final optimiser state
    history: list[dict]  # training records ({"step", "loss", ...}) and evaluations ({"step", "eval/...": ...})
    final_eval: dict  # eval_fn's metrics on the final parameters ({} without eval_fn)
    seconds: float  # wall time of this call, compilation included
    start_step: int  # the step this call started from (> 0 when resumed)
    carry: Any = None  # the final carry of a stateful run (sharded like the batch); None otherwise


def data_parallel_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh named ``"data"`` over the first ``num_devices`` local devices (all if None) of
    every process, ordered by process (so each process holds a contiguous block of rows)."""
    local = jax.local_devices()
    n = len(local) if num_devices is None else num_devices
    if not 1 <= n <= len(local):
        raise ValueError(f"`num_devices` must lie in [1, {len(local)}] (the local devices), got {n}.")
    by_process: dict[int, list] = {}
    for d in jax.devices():
        by_process.setdefault(d.process_index, []).append(d)
    devices = [d for p in sorted(by_process) for d in sorted(by_process[p], key=lambda d: d.id)[:n]]
    return Mesh(np.array(devices), ("data",))


def _split_loss(out, stateful: bool) -> tuple[Array, dict, Any]:
    """``loss_fn``'s return value as ``(loss, metrics, new_carry)``."""
    if stateful:
        if not (isinstance(out, tuple) and len(out) == 3):
            got = f"a tuple of {len(out)}" if isinstance(out, tuple) else type(out).__name__
            raise TypeError("with a `carry`, loss_fn(params, batch, key, carry) must return (loss, metrics, "
                            f"new_carry) (metrics may be {{}}); it returned {got}.")
        return out[0], dict(out[1]), out[2]
    if isinstance(out, tuple):
        if len(out) != 2:
            raise TypeError(f"loss_fn(params, batch, key) must return loss or (loss, metrics); it returned a "
                            f"tuple of {len(out)} (a stateful loss_fn needs fit(..., carry=...)).")
        return out[0], dict(out[1]), None
    return out, {}, None


def _check_new_carry(carry, new_carry) -> None:
    """The carry ``loss_fn`` hands on must look like the one it got (else every step retraces)."""
    have, got = jax.tree.structure(carry), jax.tree.structure(new_carry)
    if have != got:
        raise TypeError(f"loss_fn must return a new carry structured like the carry it was given: given "
                        f"{have}, returned {got}.")
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(carry), jax.tree.leaves(new_carry)):
        if (a.shape, a.dtype) != (b.shape, b.dtype):
            name = jax.tree_util.keystr(path, simple=True, separator=".") or "the carry"
            raise ValueError(f"loss_fn must return a new carry with the shapes and dtypes of the carry it was "
                             f"given: {name} is {a.shape} {a.dtype} given, {b.shape} {b.dtype} returned.")


@jax.jit
def _all_finite(tree) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _lock(workdir) -> WorkdirLock | None:
    """Process 0 locks the workdir; every process learns whether it could."""
    lock, error = None, None
    if jax.process_index() == 0:
        lock = WorkdirLock(workdir)
        try:
            lock.acquire()
        except WorkdirInUseError as e:
            lock, error = None, e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        if not multihost_utils.broadcast_one_to_all(np.int32(error is None)) and error is None:
            raise WorkdirInUseError(f"`workdir` {str(workdir)!r} is in use by another run (process 0 found it "
                                    "locked).")
    if error is not None:
        raise error
    return lock


def fit(
    loss_fn: Callable[..., Any],
    params: Any,
    data: Any,
    config: TrainConfig,
    *,
    carry: Any = None,
    eval_fn: Callable[[Any], Mapping[str, Any]] | None = None,
    workdir: str | pathlib.Path | None = None,
    resume: bool = False,
    run_config: Mapping[str, Any] | None = None,
    progress: bool | int | None = None,
    description: str = "train",
    prefetch: bool = True,
) -> FitResult:
    """Trains ``params`` with Optax for ``config.steps`` updates.

    Every update is one jitted function: it takes the step's batch, shards it over the
    ``"data"`` axis of a mesh of devices (the parameters are replicated, so XLA averages the
    gradients across devices), computes the loss and its gradient, clips by global norm and
    applies the optimiser (:func:`~lstm_jax.train.make_optimizer`). The data stream is a pure
    function of ``config.seed`` and the step, so a resumed run continues exactly where an
    uninterrupted one would (bit for bit).

    **Two kinds of data.** ``data`` is either

    * a ``batch_fn(key) -> batch``: a pure JAX function traced inside the update and called
      with ``fold_in(data_key, step)`` (synthetic tasks); or
    * a host batch source (:class:`~lstm_jax.data.batches.BatchSource`): ``source[step]`` is the
      global batch of that step as NumPy arrays (epochs wrap inside the source);
      ``source.steps_per_epoch`` and ``source.batch_size`` are ints. Each step's batch is
      read on the host (the next one in a background thread while the device runs, with
      ``prefetch``), this process's rows are taken and placed on the mesh. Metrics records
      get ``"epoch"``: epochs completed (a float).

    Every leaf of a batch has the global batch ``B`` on its leading axis; ``B`` must be
    divisible by the number of devices.

    **Stateful training (truncated BPTT).** With ``carry`` (a pytree whose leaves have the
    global batch on their leading axis, e.g. ``layer.init_carry(params, (B,))``) the loss is
    ``loss_fn(params, batch, key, carry) -> (loss, metrics, new_carry)``: the new carry,
    under ``stop_gradient``, is the carry of the next step, so each batch row is one
    continuing stream (consecutive chunks of one text). Streams restart where the loss_fn's
    layer is told to reset (``layer.apply(p, xs, carry, resets=batch.resets)``, at document
    and epoch starts). The carry is sharded like the batch and saved in every checkpoint.

    **Several processes.** Under ``jax.distributed`` the mesh spans every process's devices;
    each process calls ``fit`` with the same arguments, reads the same global batches and
    feeds its own rows; parameters are replicated. Only process 0 writes the metrics log,
    ``config.json`` and progress; Orbax writes the checkpoints from every process (the
    ``workdir`` must be shared by all hosts).

    **Faults.** A non-finite loss or gradient norm stops the run (``FloatingPointError``
    naming the step) at the next metrics record, progress line or checkpoint, and the
    params, optimiser state and carry are checked before every save: nothing non-finite is
    ever checkpointed. The workdir is locked (a second live run is refused; the lock of a
    killed run is taken over with a warning). Resuming cuts ``metrics.jsonl`` back to the
    checkpoint and restores the metrics of the steps since the last record, so the records
    equal an uninterrupted run's. An unreadable latest checkpoint is set aside with a warning
    and the previous one used. ``config.steps`` may grow on resume (with a constant
    schedule) to extend a finished run.

    Args:
      loss_fn: ``loss_fn(params, batch, key) -> loss`` or ``(loss, {name: scalar})``; with
        ``carry``: ``loss_fn(params, batch, key, carry) -> (loss, {name: scalar}, new_carry)``.
        ``key`` is a fresh PRNG key per step (for dropout).
      params: initial parameters (a pytree of arrays, the same in every process).
      data: a ``batch_fn(key) -> batch`` or a host batch source (see above).
      config: the :class:`~lstm_jax.train.TrainConfig`.
      carry: the initial carry for stateful training (None: stateless).
      eval_fn: ``eval_fn(params) -> {name: scalar}``, run every ``config.eval_every`` steps
        and at the end; lower-is-better is not assumed.
      workdir: where to keep ``metrics.jsonl``, ``config.json``, the lock ``run.lock`` and
        Orbax checkpoints (every ``config.checkpoint_every`` steps and at the end). None
        keeps nothing.
      resume: continue the run in ``workdir`` from its latest checkpoint (if any).
      run_config: what defines the run beyond ``config`` (model, task, sizes), stored with the
        checkpoints and compared on resume.
      progress: False: silent; None or True: a tqdm bar when stderr is a terminal, otherwise
        a line every ``config.log_every`` steps; an int N: a line every N steps off a terminal.
      description: the progress label.
      prefetch: read the next host batch in a background thread.

    Returns:
      A :class:`FitResult` (``carry``: the final carry of a stateful run).

    Raises:
      TypeError: ``data`` is neither a batch function nor a batch source; ``loss_fn``
        returns the wrong convention.
      ValueError: a batch not divisible by the device count; more devices asked for than
        exist; ``resume`` without ``workdir``; a ``workdir`` that holds another run, or whose
        configuration or arrays differ (naming them), or whose checkpoints are all unreadable.
      WorkdirInUseError: another live run holds ``workdir``.
      FloatingPointError: the loss, the gradient norm or the state became NaN or infinite.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"`config` must be a TrainConfig, got {type(config).__name__}.")
    if resume and workdir is None:
        raise ValueError("`resume=True` needs a `workdir` to resume from.")
    check_progress(progress)
    reserved = {"train", "data_source"} & set(run_config or {})
    if reserved:
        raise ValueError(f"`run_config` must not use the keys {sorted(reserved)}: fit records them itself.")
    start_time = time.perf_counter()
    mesh = data_parallel_mesh(config.num_devices)
    replicated, sharded = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
    data_key, step_key = jax.random.split(jax.random.key(config.seed))
    if is_batch_source(data):
        feed = HostFeed(data, sharded, config.steps, prefetch=prefetch)
    elif callable(data):
        feed = TracedFeed(data, data_key, sharded)
    else:
        raise TypeError("`data` must be a batch function `batch_fn(key) -> batch` (traced by JAX) or a host "
                        "batch source (`source[step] -> batch`, with `steps_per_epoch` and `batch_size`, e.g. "
                        f"lstm_jax.data.batches.ArrayBatches), got {type(data).__name__}.")
    stateful = carry is not None
    if stateful:
        check_leading_axis(carry, feed.batch_size, "`carry`")
        carry = to_global(carry, sharded, process_rows(sharded, feed.batch_size))
    optimizer = make_optimizer(config)

    # optax mixes integer step counts with floats; trace under standard promotion whatever
    # the caller's setting (the library's own code never relies on promotion).
    with jax.numpy_dtype_promotion("standard"):
        # Copies (never aliases) the caller's params: the update donates its inputs on accelerators.
        params = to_global(params, replicated, None)
        opt_state = jax.jit(optimizer.init, out_shardings=replicated)(params)

        def update(params, opt_state, carry, step, batch):
            batch = feed.in_update(batch, step)
            key = jax.random.fold_in(step_key, step)

            def objective(p):
                loss, metrics, new_carry = _split_loss(
                    loss_fn(p, batch, key, carry) if stateful else loss_fn(p, batch, key), stateful)
                return loss, (metrics, new_carry)

            (loss, (metrics, new_carry)), grads = jax.value_and_grad(objective, has_aux=True)(params)
            if stateful:
                _check_new_carry(carry, new_carry)
                new_carry = jax.lax.with_sharding_constraint(jax.lax.stop_gradient(new_carry), sharded)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            return params, opt_state, new_carry, {"loss": loss, "grad_norm": optax.tree.norm(grads), **metrics}

        donate = () if jax.default_backend() == "cpu" else (0, 1, 2)  # saves a copy of the state on accelerators
        update = jax.jit(update, donate_argnums=donate)

        lock = checkpointer = log = None
        start, window = 0, []
        try:
            if workdir is not None:
                lock = _lock(workdir)
                run = {"train": config.to_dict(), **({"data_source": feed.describe()} if feed.host else {}),
                       **(run_config or {})}
                checkpointer = Checkpointer(workdir, run, resume=resume, may_change=("train.steps",))
                _check_extension(checkpointer, config)
                state = {"params": params, "opt_state": opt_state, **({"carry": carry} if stateful else {})}
                found = checkpointer.restore_latest(state) if resume else None
                if found is not None:
                    start, state, saved_log = found
                    if start > config.steps:
                        raise ValueError(f"cannot resume from {str(checkpointer.directory)!r} with steps="
                                         f"{config.steps}: the run is already at step {start}.")
                    params, opt_state, carry = state["params"], state["opt_state"], state.get("carry")
                    window = list(saved_log.get("window", []))
                checkpointer.write_config()
                if jax.process_index() == 0:
                    log = MetricsLog(pathlib.Path(workdir) / "metrics.jsonl")
                    log.keep(_records_to_keep(start, config))
            shown = progress if jax.process_index() == 0 else False
            params, opt_state, carry, history, final_eval = _run(
                update, feed, params, opt_state, carry, start, window, config, eval_fn, log, checkpointer,
                Progress(shown, total=config.steps, start=start, every=config.log_every, description=description))
        finally:
            feed.close()
            if checkpointer is not None:
                checkpointer.close()
            if lock is not None:
                lock.release()
    return FitResult(params, opt_state, history, final_eval, time.perf_counter() - start_time, start, carry)


def _check_extension(checkpointer: Checkpointer, config: TrainConfig) -> None:
    """``steps`` may change on resume only where the schedule does not depend on it."""
    saved = (checkpointer.saved_config or {}).get("train", {}).get("steps", config.steps)
    if saved != config.steps and config.schedule != "constant":
        raise ValueError(f"cannot resume from {str(checkpointer.directory)!r} with different steps (train.steps: "
                         f"{saved} there, {config.steps} now): the {config.schedule!r} schedule depends on "
                         "`steps`, so only a 'constant' schedule can be extended.")


def _records_to_keep(start: int, config: TrainConfig) -> Callable[[dict], bool]:
    """Which metrics records of the log survive a (re)start from step ``start``: those before it,
    and those at it that an uninterrupted run also writes (a run that ends off the metrics or
    evaluation interval writes extra ones at its end, which an extended run must not keep)."""
    def keep(record: dict) -> bool:
        step = record.get("step", 0)
        if step != start or start == config.steps:  # a finished run resumed to its end keeps everything
            return step <= start
        if any(k.startswith("eval/") for k in record):
            return bool(config.eval_every) and step % config.eval_every == 0
        return step % config.log_every == 0

    return keep


def _run(update, feed, params, opt_state, carry, start, window, config, eval_fn, log, checkpointer, progress):
    history: list[dict] = []
    pending: list[tuple[int, Mapping[str, Array]]] = []  # metrics of steps not yet read back to the host
    since_shown: list[float] = []  # losses since the last progress line
    final_eval: dict = {}
    t0 = time.perf_counter()

    def record(entry):
        history.append(entry)
        if log is not None:
            log.append(entry)

    def evaluate(step, log_it=True):
        metrics = {k: float(v) for k, v in eval_fn(params).items()}
        if log_it:
            record({"step": step, **{f"eval/{k}": v for k, v in metrics.items()}})
        return metrics

    def drain(done):
        """Reads the pending metrics back (one transfer) and checks them; before every record,
        progress line and save."""
        values = jax.device_get([m for _, m in pending])
        for (step, _), m in zip(pending, values):
            m = {k: float(v) for k, v in m.items()}
            if not math.isfinite(m["loss"]):
                raise FloatingPointError(f"the training loss became {m['loss']} by step {done} (first at step "
                                         f"{step}); nothing non-finite was saved. Lower the learning rate or "
                                         "clip the gradients.")
            if not math.isfinite(m["grad_norm"]):
                raise FloatingPointError(f"the gradient norm became {m['grad_norm']} at step {step} while the loss "
                                         f"was finite ({m['loss']:.6g}); stopped by step {done}, nothing "
                                         "non-finite was saved. Look for an operation with an infinite derivative "
                                         "(sqrt or log at 0, a division by 0) or lower the learning rate.")
            window.append(m)
            since_shown.append(m["loss"])
        pending.clear()

    def save(done):
        drain(done)
        state = {"params": params, "opt_state": opt_state, **({"carry": carry} if carry is not None else {})}
        if not bool(_all_finite(state)):
            raise FloatingPointError(f"the parameters, optimiser state or carry hold NaN or infinite values at step "
                                     f"{done} although the loss and the gradient norm were finite; the checkpoint "
                                     f"of step {done} was not saved. Lower the learning rate.")
        checkpointer.save(done, state, {"window": list(window)})  # a copy: the save is asynchronous

    try:
        for step in range(start, config.steps):
            batch = feed.get(step)
            params, opt_state, carry, metrics = update(params, opt_state, carry, step, batch)
            done = step + 1
            pending.append((done, metrics))
            aligned = done % config.log_every == 0
            shown = False
            if aligned or done == config.steps:
                drain(done)
                means = {k: math.fsum(m[k] for m in window) / len(window) for k in window[0]}
                epoch = feed.epoch(done)
                record({"step": done, **means, **({"epoch": epoch} if epoch is not None else {}),
                        "seconds": time.perf_counter() - t0})
                if aligned:  # a final record off the interval keeps its window: an extended run goes on with it
                    window.clear()
                shown = True
            if progress.wants_line(done):
                drain(done)
                shown = True
            progress.update(done, since_shown if shown else ())
            if shown:
                since_shown.clear()
            if eval_fn is not None and config.eval_every and done % config.eval_every == 0 and done < config.steps:
                evaluate(done)
            if checkpointer is not None and config.checkpoint_every and done % config.checkpoint_every == 0:
                save(done)
        if eval_fn is not None:  # a resumed run that was already complete does not log it twice
            final_eval = evaluate(config.steps, log_it=start < config.steps)
        if checkpointer is not None and checkpointer.latest_step() != config.steps:
            save(config.steps)
    finally:
        progress.close()
    return params, opt_state, carry, history, final_eval
