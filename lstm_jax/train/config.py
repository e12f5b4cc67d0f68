"""Training configuration and the Optax optimiser it describes."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import optax

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("constant", "cosine", "warmup_cosine")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What :func:`lstm_jax.train.fit` needs besides the model and the data.

    Attributes:
      steps: number of optimiser updates.
      learning_rate: peak learning rate.
      optimizer: one of :data:`OPTIMIZERS` (``"sgd"`` uses momentum 0.9).
      schedule: ``"constant"``, ``"cosine"`` (decay to 0 over ``steps``) or
        ``"warmup_cosine"`` (linear warm-up over ``warmup_steps``, then cosine decay).
      warmup_steps: warm-up length for ``"warmup_cosine"``.
      clip_norm: global-norm gradient clipping threshold (Pascanu et al. 2013); None for none.
      weight_decay: decoupled weight decay for ``"adamw"``.
      log_every: steps between logged training metrics (averaged over the interval).
      eval_every: steps between evaluations (0: only at the end).
      checkpoint_every: steps between checkpoints (0: only at the end); needs a ``workdir``.
      seed: seeds the data stream and the per-step keys (parameters are initialised by the
        caller, who owns their key).
      num_devices: how many local devices to shard the batch over (None: all of them).
    """

    steps: int = 1000
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    schedule: str = "constant"
    warmup_steps: int = 0
    clip_norm: float | None = 1.0
    weight_decay: float = 1e-4
    log_every: int = 100
    eval_every: int = 0
    checkpoint_every: int = 0
    seed: int = 0
    num_devices: int | None = None

    def __post_init__(self):
        def check_int(name, minimum):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ValueError(f"TrainConfig.{name} must be an int >= {minimum}, got {v!r}.")

        check_int("steps", 1)
        check_int("log_every", 1)
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "seed"):
            check_int(name, 0)
        if self.num_devices is not None:
            check_int("num_devices", 1)
        def check_number(name, positive):
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            if not ok or not (v > 0 if positive else v >= 0):
                raise ValueError(f"TrainConfig.{name} must be a {'positive' if positive else 'non-negative'} "
                                 f"finite number, got {v!r}.")

        check_number("learning_rate", positive=True)
        if self.clip_norm is not None:
            check_number("clip_norm", positive=True)
        check_number("weight_decay", positive=False)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainConfig.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}.")
        if self.schedule == "warmup_cosine" and not 0 < self.warmup_steps < self.steps:
            raise ValueError(f"TrainConfig.warmup_steps must lie in (0, steps={self.steps}) for "
                             f"schedule 'warmup_cosine', got {self.warmup_steps}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
    """The schedule ``config`` describes, as a function of the step."""
    lr, steps = config.learning_rate, config.steps
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(lr, steps)
    if config.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, config.warmup_steps, steps)
    return optax.constant_schedule(lr)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping (if any), then the optimiser with its learning-rate schedule."""
    schedule = learning_rate_schedule(config)
    base = {
        "adam": lambda: optax.adam(schedule),
        "adamw": lambda: optax.adamw(schedule, weight_decay=config.weight_decay),
        "sgd": lambda: optax.sgd(schedule, momentum=0.9),
        "rmsprop": lambda: optax.rmsprop(schedule),
    }[config.optimizer]()
    if config.clip_norm is None:
        return base
    return optax.chain(optax.clip_by_global_norm(config.clip_norm), base)
