"""Cells by name, for experiment scripts and configuration files."""

from __future__ import annotations

import functools
from typing import Any, Callable

from lstm_jax.cell import Cell
from lstm_jax.cells.clockwork import clockwork
from lstm_jax.cells.gru import gru
from lstm_jax.cells.lstm import GREFF_VARIANTS, greff_variant, lstm
from lstm_jax.cells.minimal import min_gru, min_lstm
from lstm_jax.cells.mut import mut1, mut2, mut3
from lstm_jax.cells.rnn import rnn
from lstm_jax.cells.xlstm import mlstm, slstm

# name -> constructor(hidden_size, **options). Greff et al.'s variants are "lstm_<variant>"
# (e.g. "lstm_CIFG"); "rnn_relu" is the ReLU Elman RNN.
CELL_CONSTRUCTORS: dict[str, Callable[..., Cell]] = {
    "rnn": rnn,
    "rnn_relu": functools.partial(rnn, activation="relu"),
    "lstm": lstm,
    "gru": gru,
    "mut1": mut1,
    "mut2": mut2,
    "mut3": mut3,
    "min_gru": min_gru,
    "min_lstm": min_lstm,
    "slstm": slstm,
    "mlstm": mlstm,
    "clockwork": functools.partial(clockwork, num_modules=4),  # periods 1, 2, 4, 8
    **{f"lstm_{v}": functools.partial(greff_variant, v) for v in GREFF_VARIANTS},
}


def cell_by_name(name: str, hidden_size: int, **options: Any) -> Cell:
    """The cell called ``name`` (a key of :data:`CELL_CONSTRUCTORS`) with ``hidden_size``.

    Args:
      name: e.g. ``"lstm"``, ``"gru"``, ``"rnn"``, ``"lstm_CIFG"``.
      hidden_size: ``H``.
      **options: further constructor keywords (e.g. ``derivative_clip`` for LSTMs).

    Returns:
      The :class:`~lstm_jax.Cell`, equal to the one its constructor builds (cells compare by
      config: ``cell_by_name("lstm_CIFG", 8) == greff_variant("CIFG", 8)``).

    Raises:
      ValueError: an unknown name, or an option the cell does not take.
    """
    if name not in CELL_CONSTRUCTORS:
        raise ValueError(f"unknown cell name {name!r}; choose from {sorted(CELL_CONSTRUCTORS)}.")
    make = CELL_CONSTRUCTORS[name]
    fixed = sorted(set(options) & set(getattr(make, "keywords", {})))
    if fixed:  # a preset's own choices (e.g. "rnn_relu"'s activation) are not overridable
        raise ValueError(f"cell {name!r} fixes {fixed} itself; use its base cell to choose them.")
    try:
        return make(hidden_size, **options)
    except TypeError as e:
        if "unexpected keyword" not in str(e):
            raise
        raise ValueError(f"cell {name!r} does not take that option: {e}") from None
