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


def data_parallel_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh named ``"data"`` over the first ``num_devices`` local devices (all if None)."""
    devices = jax.local_devices()
    n = len(devices) if num_devices is None else num_devices
    if not 1 <= n <= len(devices):
        raise ValueError(f"`num_devices` must lie in [1, {len(devices)}] (the local devices), got {n}.")
    return Mesh(np.array(devices[:n]), ("data",))


def _batch_sharding(batch_fn, key, mesh: Mesh):
    """The batch's sharding (leading axis over ``"data"``), after checking it divides evenly."""
    n = mesh.devices.size
    shapes = jax.eval_shape(batch_fn, key)

    def sharding(leaf):
        if leaf.ndim == 0 or leaf.shape[0] % n:
            raise ValueError(f"the batch size must be divisible by the number of devices ({n}) to shard "
                             f"it; batch_fn gives an array of shape {tuple(leaf.shape)}.")
        return NamedSharding(mesh, PartitionSpec("data"))

    return jax.tree.map(sharding, shapes)


def _split_loss(out) -> tuple[Array, Mapping[str, Array]]:
    if isinstance(out, tuple):
        loss, metrics = out
        return loss, dict(metrics)
    return out, {}


def fit(
    loss_fn: Callable[..., Any],
    params: Any,
    batch_fn: Callable[[Array], Any],
    config: TrainConfig,
    *,
    eval_fn: Callable[[Any], Mapping[str, Any]] | None = None,
    workdir: str | pathlib.Path | None = None,
    resume: bool = False,
    run_config: Mapping[str, Any] | None = None,
    progress: bool | None = None,
    description: str = "train",
) -> FitResult:
    """Trains ``params`` with Optax for ``config.steps`` updates.

    Every update is one jitted function: it draws a fresh batch from ``batch_fn`` with the
    key ``fold_in(data_key, step)`` (so the data stream depends only on ``config.seed`` and
    the step), shards the batch over the ``"data"`` axis of a mesh of local devices (the
    parameters are replicated, so XLA averages the gradients across devices), computes the
    loss and its gradient, clips by global norm and applies the optimiser
    (:func:`~lstm_jax.train.make_optimizer`). A resumed run therefore continues exactly
    where an uninterrupted one would be.

    Args:
      loss_fn: ``loss_fn(params, batch, key) -> loss`` or ``(loss, {name: scalar})``;
        ``key`` is a fresh PRNG key per step (for dropout).
      params: initial parameters (a pytree of arrays).
      batch_fn: ``batch_fn(key) -> batch``, a pure JAX function (traced inside the update);
        every leaf of the batch has the batch on its leading axis.
      config: the :class:`~lstm_jax.train.TrainConfig`.
      eval_fn: ``eval_fn(params) -> {name: scalar}``, run every ``config.eval_every`` steps
        and at the end; lower-is-better is not assumed.
      workdir: where to keep ``metrics.jsonl``, ``config.json`` and Orbax checkpoints
        (every ``config.checkpoint_every`` steps and at the end). None keeps nothing.
      resume: continue the run in ``workdir`` from its latest checkpoint (if any).
      run_config: what defines the run beyond ``config`` (model, task, sizes), stored with the
        checkpoints and compared on resume.
      progress: show a progress bar (tqdm); None shows it only on a terminal.
      description: the progress bar's label.

    Returns:
      A :class:`FitResult`.

    Raises:
      ValueError: a batch not divisible by the device count; more devices asked for than
        exist; ``resume`` without ``workdir``; a ``workdir`` that holds another run.
      FloatingPointError: the training loss became NaN or infinite.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"`config` must be a TrainConfig, got {type(config).__name__}.")
    if resume and workdir is None:
        raise ValueError("`resume=True` needs a `workdir` to resume from.")
    start_time = time.perf_counter()
    mesh = data_parallel_mesh(config.num_devices)
    replicated = NamedSharding(mesh, PartitionSpec())
    data_key, step_key = jax.random.split(jax.random.key(config.seed))
    batch_sharding = _batch_sharding(batch_fn, data_key, mesh)
    optimizer = make_optimizer(config)

    # optax mixes integer step counts with floats; trace under standard promotion whatever
    # the caller's setting (the library's own code never relies on promotion).
    with jax.numpy_dtype_promotion("standard"):
        opt_state = optimizer.init(params)
        # may_alias=False: the update donates its inputs on accelerators, which must not free
        # the caller's own `params`.
        params, opt_state = jax.device_put((params, opt_state), replicated, may_alias=False)

        def update(params, opt_state, step):
            batch = jax.lax.with_sharding_constraint(batch_fn(jax.random.fold_in(data_key, step)), batch_sharding)
            grad_fn = jax.value_and_grad(lambda p: _split_loss(loss_fn(p, batch, jax.random.fold_in(step_key, step))),
                                         has_aux=True)
            (loss, metrics), grads = grad_fn(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            return params, opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), **metrics}

        donate = () if jax.default_backend() == "cpu" else (0, 1)  # saves a copy of the state on accelerators
        update = jax.jit(update, donate_argnums=donate)

        log = MetricsLog(pathlib.Path(workdir) / "metrics.jsonl") if workdir is not None else None
        checkpointer = None
        start = 0
        if workdir is not None:
            run = {"train": config.to_dict(), **(run_config or {})}
            checkpointer = Checkpointer(workdir, run, resume=resume)
            latest = checkpointer.latest_step()
            if resume and latest is not None:
                state = checkpointer.restore(latest, {"params": params, "opt_state": opt_state})
                params, opt_state, start = state["params"], state["opt_state"], latest
            log.truncate_after(start)

        try:
            params, opt_state, history, final_eval = _run(
                update, params, opt_state, start, config, eval_fn, log, checkpointer, progress, description)
        finally:
            if checkpointer is not None:
                checkpointer.close()
    return FitResult(params, opt_state, history, final_eval, time.perf_counter() - start_time, start)


def _run(update, params, opt_state, start, config, eval_fn, log, checkpointer, progress, description):
    from tqdm import tqdm  # quiet (disable=None) when stderr is not a terminal

    history: list[dict] = []
    window: list[Mapping[str, Array]] = []
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

    def check_finite(done):  # before logging and before every checkpoint: never save NaNs
        bad = [float(m["loss"]) for m in window if not math.isfinite(float(m["loss"]))]
        if bad:
            raise FloatingPointError(f"the training loss became {bad[0]} by step {done}; "
                                     "lower the learning rate or clip the gradients.")

    with tqdm(total=config.steps, initial=start, desc=description, disable=None if progress is None else not progress,
              dynamic_ncols=True, leave=False) as bar:
        for step in range(start, config.steps):
            params, opt_state, metrics = update(params, opt_state, step)
            window.append(metrics)
            done = step + 1
            if done % config.log_every == 0 or done == config.steps:
                check_finite(done)
                means = {k: float(jnp.mean(jnp.stack([m[k] for m in window]))) for k in window[0]}
                window.clear()
                record({"step": done, **means, "seconds": time.perf_counter() - t0})
                bar.set_postfix(loss=f"{means['loss']:.4g}")
            if eval_fn is not None and config.eval_every and done % config.eval_every == 0 and done < config.steps:
                evaluate(done)
            if checkpointer is not None and config.checkpoint_every and done % config.checkpoint_every == 0:
                check_finite(done)
                checkpointer.save(done, {"params": params, "opt_state": opt_state})
            bar.update(1)
    if eval_fn is not None:  # a resumed run that was already complete does not log it twice
        final_eval = evaluate(config.steps, log_it=start < config.steps)
    if checkpointer is not None and checkpointer.latest_step() != config.steps:
        checkpointer.save(config.steps, {"params": params, "opt_state": opt_state})
    return params, opt_state, history, final_eval
