"""The long-lag task generators and their evaluation protocols, checked by decoding batches in
NumPy and by scoring the memoryless predictors the baselines describe."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax.data import (
    ADDING_BASELINE_MSE,
    TASKS,
    adding_problem,
    adding_problem_1997,
    copy_memory,
    copy_memory_baseline,
    get_task,
    temporal_order,
)
from lstm_jax.data.synthetic import COPY_BLANK, COPY_DELIMITER, ORDER_SYMBOLS

KEY = jax.random.key(0)


def test_every_task_samples_what_it_declares():
    for name, task in TASKS.items():
        batch = task.sample(KEY, 3, 40)
        assert batch.xs.shape[0] == 3 and batch.xs.shape[-1] == task.input_size, name
        assert batch.lengths.shape == (3,) and batch.lengths.dtype == jnp.int32, name
        assert int(batch.lengths.max()) <= batch.xs.shape[1], name
        assert task.readout_at in ("last", "every")
        assert task.baseline(40) > 0 and task.criterion and task.paper


# ------------------------------------------------------------------------ adding (uRNN)

def test_adding_problem_markers_and_targets():
    xs, ys, lengths = adding_problem(KEY, 64, 21, dtype=jnp.float64)
    xs, ys = np.asarray(xs), np.asarray(ys)
    assert xs.shape == (64, 21, 2) and ys.shape == (64,) and (np.asarray(lengths) == 21).all()
    values, markers = xs[..., 0], xs[..., 1]
    assert set(np.unique(markers)) == {0.0, 1.0}
    half = 21 // 2
    assert (markers[:, :half].sum(1) == 1).all() and (markers[:, half:].sum(1) == 1).all()
    assert ((values >= 0) & (values < 1)).all()
    np.testing.assert_allclose(ys, (values * markers).sum(1), rtol=0, atol=1e-15)


def test_adding_problem_baseline_is_predicting_one():
    batch = adding_problem(jax.random.key(1), 200_000, 4, dtype=jnp.float64)
    task = get_task("adding")
    mse = float(task.loss(jnp.ones((200_000, 1), jnp.float64), batch))
    assert abs(mse - ADDING_BASELINE_MSE) < 3e-3
    assert task.baseline(100) == pytest.approx(0.1667, abs=1e-4)
    assert task.solved({"mse": 0.01}) and not task.solved({"mse": 0.02})


# ------------------------------------------------------------------------ adding (1997)

def test_adding_1997_follows_experiment_4():
    T, B = 40, 500
    xs, ys, lengths = map(np.asarray, adding_problem_1997(KEY, B, T, dtype=jnp.float64))
    assert xs.shape == (B, T + T // 10, 2)
    assert lengths.min() >= T and lengths.max() <= T + T // 10 and len(np.unique(lengths)) > 1
    for b in range(B):
        n = lengths[b]
        values, markers = xs[b, :n, 0], xs[b, :n, 1]
        assert (xs[b, n:] == 0).all()  # padding
        marked = np.flatnonzero(markers == 1)
        assert len(marked) == 2 and marked[0] < 10 and marked[1] < T // 2  # X1 in the first ten, X2 in the first half
        assert markers[n - 1] == -1 and (markers[0] == -1 or 0 in marked)
        assert set(np.flatnonzero(markers == 0)) == set(range(1, n - 1)) - set(marked)
        if 0 in marked:
            assert values[0] == 0.0  # "we set X1 to zero"
        assert -1 <= values.min() and values.max() < 1
        np.testing.assert_allclose(ys[b], 0.5 + values[marked].sum() / 4, atol=1e-15)


def test_adding_1997_criterion_and_baseline():
    task = get_task("adding_1997")
    batch = adding_problem_1997(jax.random.key(3), 100_000, 30, dtype=jnp.float64)
    constant = task.evaluate(jnp.full((100_000, 1), 0.5, jnp.float64), batch)
    assert abs(float(constant["error_rate"]) - task.baseline(30)) < 0.005  # the analytic chance level
    targets = batch.targets[:4, None]
    offsets = jnp.array([[0.039], [-0.039], [0.041], [0.0]], jnp.float64)
    m = task.evaluate(targets + offsets, batch._replace(targets=batch.targets[:4]))
    assert float(m["error_rate"]) == 0.25  # only |error| = 0.041 counts as wrong
    assert task.solved({"error_rate": 0.01}) and not task.solved({"error_rate": 0.011})


# --------------------------------------------------------------------------- copy memory

def test_copy_memory_layout():
    T = 7
    xs, targets, lengths = map(np.asarray, copy_memory(KEY, 5, T, dtype=jnp.float64))
    assert xs.shape == (5, T + 20, 10) and targets.shape == (5, T + 20) and (lengths == T + 20).all()
    assert (xs.sum(-1) == 1).all()  # one-hot
    symbols = xs.argmax(-1)
    data = symbols[:, :10]
    assert data.max() < 8
    assert (symbols[:, 10:10 + T - 1] == COPY_BLANK).all()
    assert (symbols[:, 10 + T - 1] == COPY_DELIMITER).all()
    assert (symbols[:, 10 + T:] == COPY_BLANK).all()
    assert (targets[:, :T + 10] == COPY_BLANK).all() and (targets[:, T + 10:] == data).all()


def test_copy_memory_baseline_is_the_memoryless_strategy():
    T = 30
    task = get_task("copy")
    batch = copy_memory(KEY, 8, T, dtype=jnp.float64)
    # blanks with certainty for T + 10 steps, then a uniform guess among the 8 data symbols
    blank = jnp.where(jnp.arange(10) == COPY_BLANK, 0.0, -1e9)
    guess = jnp.where(jnp.arange(10) < 8, 0.0, -1e9)
    logits = jnp.concatenate([jnp.tile(blank, (8, T + 10, 1)), jnp.tile(guess, (8, 10, 1))], axis=1)
    assert float(task.loss(logits, batch)) == pytest.approx(copy_memory_baseline(T), rel=1e-9)
    assert copy_memory_baseline(T) == pytest.approx(10 * math.log(8) / (T + 20))
    perfect = task.evaluate(jax.nn.one_hot(batch.targets, 10, dtype=jnp.float64) * 50, batch)
    assert float(perfect["recall_accuracy"]) == 1.0 and task.solved(perfect)


# ------------------------------------------------------------------------ temporal order

@pytest.mark.parametrize("num_relevant", [2, 3])
def test_temporal_order_follows_experiment_6(num_relevant):
    T, B = 100, 300
    xs, targets, lengths = map(np.asarray, temporal_order(KEY, B, T, num_relevant=num_relevant, dtype=jnp.float64))
    windows = {2: [(10, 20), (50, 60)], 3: [(10, 20), (33, 43), (66, 76)]}[num_relevant]  # the paper's
    assert xs.shape == (B, 110, len(ORDER_SYMBOLS)) and lengths.min() >= 100 and lengths.max() <= 110
    E, B_, X, Y = (ORDER_SYMBOLS.index(s) for s in "EBXY")
    for b in range(B):
        n = lengths[b]
        assert (xs[b, n:] == 0).all() and (xs[b, :n].sum(-1) == 1).all()
        symbols = xs[b, :n].argmax(-1)
        assert symbols[0] == E and symbols[n - 1] == B_
        relevant = np.flatnonzero((symbols == X) | (symbols == Y))
        assert len(relevant) == num_relevant
        assert all(lo <= t <= hi for t, (lo, hi) in zip(relevant, windows))
        assert set(symbols[1:n - 1]) - {X, Y} <= {2, 3, 4, 5}  # a, b, c, d
        bits = [int(symbols[t] == Y) for t in relevant]
        assert targets[b] == int("".join(map(str, bits)), 2)  # XX -> 0, XY -> 1, YX -> 2, YY -> 3
    assert set(np.unique(targets)) == set(range(2 ** num_relevant))


def test_temporal_order_criterion():
    task = get_task("temporal_order_6a")
    batch = temporal_order(KEY, 2, 20, dtype=jnp.float64)
    logit = lambda p: np.log([p, (1 - p) / 3, (1 - p) / 3, (1 - p) / 3])
    preds = jnp.asarray(np.stack([np.roll(logit(0.75), t) for t in np.asarray(batch.targets)]))
    assert float(task.evaluate(preds, batch)["error_rate"]) == 0.0  # every unit within 0.3
    preds = jnp.asarray(np.stack([np.roll(logit(0.65), t) for t in np.asarray(batch.targets)]))
    m = task.evaluate(preds, batch)
    assert float(m["error_rate"]) == 1.0 and float(m["accuracy"]) == 1.0  # right by argmax, wrong by 1997's rule
    assert task.baseline(100) == 0.75 and get_task("temporal_order_6b").baseline(100) == 0.875


# ---------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("fn, kwargs, match", [
    (adding_problem, dict(length=1), "`length` must be at least 2"),
    (adding_problem, dict(batch_size=0), "`batch_size` must be a positive int"),
    (adding_problem, dict(length=2.5), "`length` must be a positive int"),
    (adding_problem_1997, dict(length=20), "`length` must be at least 22"),
    (temporal_order, dict(length=5), "`length` must be at least 10"),
    (temporal_order, dict(num_relevant=4), r"`num_relevant` must be 2 \(Experiment 6a\) or 3 \(6b\), got 4"),
    (copy_memory, dict(length=0), "`length` must be a positive int"),
    (temporal_order, dict(num_relevant=2.0), r"`num_relevant` must be 2 \(Experiment 6a\) or 3 \(6b\), got 2.0"),
    (adding_problem, dict(dtype=jnp.int32), "`dtype` must be a floating dtype"),
])
def test_generator_errors(fn, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fn(KEY, **(dict(batch_size=2, length=30) | kwargs))


def test_unknown_task():
    with pytest.raises(ValueError, match=r"`task` must be one of \['adding', 'adding_1997', 'copy'"):
        get_task("adding1997")
