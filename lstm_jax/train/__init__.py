"""Training toolkit: an Optax loop around one jitted, data-parallel update, with progress,
metrics logs, Orbax checkpoints and exact resume; data from a traced ``batch_fn(key)`` or a
host batch source, stateful (truncated-BPTT) training, one or several processes.

    config = TrainConfig(steps=2000, learning_rate=1e-2, clip_norm=1.0, eval_every=500)
    result = fit(loss_fn, params, batch_fn, config, eval_fn=eval_fn, workdir="runs/a", resume=True)
    result = fit(loss_fn, params, source, config, carry=layer.init_carry(params, (B,)))  # TBPTT
"""

from lstm_jax.train.checkpoint import Checkpointer, StateMismatchError
from lstm_jax.train.config import OPTIMIZERS, SCHEDULES, TrainConfig, learning_rate_schedule, make_optimizer
from lstm_jax.train.lock import WorkdirInUseError, WorkdirLock
from lstm_jax.train.loop import FitResult, data_parallel_mesh, fit
from lstm_jax.train.records import MetricsLog, markdown_table, write_json, write_text

__all__ = ["Checkpointer", "FitResult", "MetricsLog", "OPTIMIZERS", "SCHEDULES", "StateMismatchError",
           "TrainConfig", "WorkdirInUseError", "WorkdirLock", "data_parallel_mesh", "fit", "learning_rate_schedule",
           "make_optimizer", "markdown_table", "write_json", "write_text"]
