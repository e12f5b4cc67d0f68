"""The long-time-lag tasks as experiments use them: data, loss, metrics, baseline, criterion.

A :class:`Task` keeps in one place everything an experiment must know about a task, so the
scripts stay generic::

    task = TASKS["adding"]
    batch = task.sample(key, 64, 100)                    # Batch(xs, targets, lengths)
    model = readout(lj.lstm(128), task.output_size, at=task.readout_at)   # lstm_jax.models.readout
    params = model.init(key, task.input_size)
    preds = model.apply(params, batch.xs, lengths=batch.lengths)
    loss = task.loss(preds, batch)
    metrics = task.evaluate(preds, batch)                # {"mse": ..., ...}
    task.solved(metrics), task.baseline(100)

The headline metric (``task.metric``) is the one compared with ``task.baseline(T)``, the
score of the best predictor that remembers nothing.
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lstm_jax.data import synthetic
from lstm_jax.data.synthetic import Batch

Array = jax.Array


class Task(NamedTuple):
    """A sequence task with its evaluation protocol.

    Attributes:
      name: the key in :data:`TASKS`.
      sample: ``sample(key, batch_size, length) -> Batch``.
      input_size: ``I`` of ``Batch.xs``.
      output_size: ``K``, the model's output size.
      readout_at: ``"last"`` (one prediction at each sequence's last step, ``[B, K]``) or
        ``"every"`` (one per step, ``[B, T, K]``), as :func:`lstm_jax.models.readout` takes it.
      loss: ``loss(preds, batch) -> scalar`` training loss.
      evaluate: ``evaluate(preds, batch) -> {name: scalar}``, including ``metric``.
      metric: the headline metric's name; lower is better.
      baseline: ``baseline(T) -> float``, the headline metric of the best memoryless predictor.
      solved: ``solved(metrics) -> bool``.
      criterion: ``solved``'s rule in words, with where it comes from.
      paper: where the task comes from.
    """

    name: str
    sample: Callable[..., Batch]
    input_size: int
    output_size: int
    readout_at: str
    loss: Callable[[Array, Batch], Array]
    evaluate: Callable[[Array, Batch], dict]
    metric: str
    baseline: Callable[[int], float]
    solved: Callable[[Mapping[str, float]], bool]
    criterion: str
    paper: str


# ---------------------------------------------------------------------- adding (uRNN form)

def _regression_loss(preds, batch):
    return jnp.mean((preds[..., 0] - batch.targets) ** 2)


def _adding_metrics(preds, batch):
    return {"mse": _regression_loss(preds, batch)}


# ------------------------------------------------------------------- adding (1997 form)

# The 1997 criterion: a sequence is processed correctly when |error| < 0.04.
ADDING_1997_TOLERANCE = 0.04


def _adding_1997_chance() -> float:
    """Fraction of sequences the constant prediction 0.5 gets right: ``P(|X1 + X2| < 0.16)``.

    ``X1 + X2`` (each ``U(-1, 1)``) has the triangular density ``(2 - |s|) / 4``; with
    probability 1/10 the first pair is marked and ``X1 = 0``, leaving ``X2`` alone.
    """
    a = 4 * ADDING_1997_TOLERANCE
    both = (2 * a - a * a / 2) / 2  # 2 * integral_0^a (2 - s) / 4 ds
    return 0.9 * both + 0.1 * a


def _adding_1997_metrics(preds, batch):
    err = jnp.abs(preds[..., 0] - batch.targets)
    wrong = jnp.mean(err >= ADDING_1997_TOLERANCE)
    return {"error_rate": wrong, "mse": jnp.mean(err ** 2), "max_abs_error": jnp.max(err)}


# ------------------------------------------------------------------------- copy memory

def _copy_loss(preds, batch):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(preds, batch.targets))


def _copy_metrics(preds, batch):
    recalled = preds[:, -10:].argmax(-1).astype(batch.targets.dtype) == batch.targets[:, -10:]
    return {"cross_entropy": _copy_loss(preds, batch), "recall_accuracy": jnp.mean(recalled)}


# ---------------------------------------------------------------------- temporal order

# The 1997 criterion: a sequence is classified correctly when every output unit's absolute
# error is below 0.3; with softmax outputs that is: p(true class) > 0.7.
ORDER_TOLERANCE = 0.3


def _classification_loss(preds, batch):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(preds, batch.targets))


def _order_metrics(preds, batch):
    probs = jax.nn.softmax(preds.astype(jnp.float32), axis=-1)
    onehot = jax.nn.one_hot(batch.targets, preds.shape[-1], dtype=jnp.float32)
    correct = jnp.all(jnp.abs(probs - onehot) < ORDER_TOLERANCE, axis=-1)
    return {"error_rate": jnp.mean(~correct), "cross_entropy": _classification_loss(preds, batch),
            "accuracy": jnp.mean(preds.argmax(-1).astype(batch.targets.dtype) == batch.targets)}


def _temporal_order_task(name, num_relevant, experiment):
    classes = 2 ** num_relevant
    return Task(
        name=name,
        sample=functools.partial(synthetic.temporal_order, num_relevant=num_relevant),
        input_size=len(synthetic.ORDER_SYMBOLS), output_size=classes, readout_at="last",
        loss=_classification_loss, evaluate=_order_metrics, metric="error_rate",
        baseline=lambda T: 1.0 - 1.0 / classes,
        solved=lambda m: m["error_rate"] <= 0.01,
        criterion=(f"at most 1% of test sequences wrong, a sequence being right when every output "
                   f"unit's |error| < {ORDER_TOLERANCE} (Hochreiter & Schmidhuber 1997)"),
        paper=f"Hochreiter & Schmidhuber 1997, Experiment {experiment}",
    )


TASKS: dict[str, Task] = {
    "adding": Task(
        name="adding", sample=synthetic.adding_problem, input_size=2, output_size=1,
        readout_at="last", loss=_regression_loss, evaluate=_adding_metrics, metric="mse",
        baseline=lambda T: synthetic.ADDING_BASELINE_MSE,
        solved=lambda m: m["mse"] < 0.1 * synthetic.ADDING_BASELINE_MSE,
        criterion="test MSE below a tenth of the baseline 0.167 (ours; the paper compares with the baseline)",
        paper="Arjovsky, Shah & Bengio 2016 (uRNN form)",
    ),
    "adding_1997": Task(
        name="adding_1997", sample=synthetic.adding_problem_1997, input_size=2, output_size=1,
        readout_at="last", loss=_regression_loss, evaluate=_adding_1997_metrics,
        metric="error_rate", baseline=lambda T: 1.0 - _adding_1997_chance(),
        solved=lambda m: m["error_rate"] <= 0.01,
        criterion=(f"at most 1% of test sequences with |error| >= {ADDING_1997_TOLERANCE} "
                   "(Hochreiter & Schmidhuber 1997; their runs had at most 0.12% wrong)"),
        paper="Hochreiter & Schmidhuber 1997, Experiment 4",
    ),
    "copy": Task(
        name="copy", sample=synthetic.copy_memory, input_size=10, output_size=10,
        readout_at="every", loss=_copy_loss, evaluate=_copy_metrics, metric="cross_entropy",
        baseline=synthetic.copy_memory_baseline,
        solved=lambda m: m["recall_accuracy"] >= 0.99,
        criterion="at least 99% of the ten recalled symbols right (ours; the paper compares with the baseline)",
        paper="Arjovsky, Shah & Bengio 2016 (uRNN form)",
    ),
    "temporal_order_6a": _temporal_order_task("temporal_order_6a", 2, "6a"),
    "temporal_order_6b": _temporal_order_task("temporal_order_6b", 3, "6b"),
}


def get_task(name: str) -> Task:
    """The :class:`Task` called ``name``; a ``ValueError`` lists the choices otherwise."""
    if name not in TASKS:
        raise ValueError(f"`task` must be one of {sorted(TASKS)}, got {name!r}.")
    return TASKS[name]


__all__ = ["ADDING_1997_TOLERANCE", "ORDER_TOLERANCE", "TASKS", "Task", "get_task"]
