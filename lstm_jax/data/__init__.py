"""Data for experiments: synthetic long-lag tasks generated on the fly from a PRNG key, and
the tasks' evaluation protocols (:mod:`lstm_jax.data.tasks`)."""

from lstm_jax.data.synthetic import (
    ADDING_BASELINE_MSE,
    Batch,
    adding_problem,
    adding_problem_1997,
    copy_memory,
    copy_memory_baseline,
    temporal_order,
)
from lstm_jax.data.tasks import TASKS, Task, get_task

__all__ = ["ADDING_BASELINE_MSE", "Batch", "TASKS", "Task", "adding_problem", "adding_problem_1997",
           "copy_memory", "copy_memory_baseline", "get_task", "temporal_order"]
