"""Recurrent cells: one module per family, each returning a :class:`~lstm_jax.Cell`."""

from lstm_jax.cells.clockwork import ClockworkParams, ClockworkState, clockwork, clockwork_mask, exponential_periods
from lstm_jax.cells.gru import GRUParams, GRUState, gru
from lstm_jax.cells.lstm import GREFF_VARIANTS, LSTMParams, LSTMState, greff_variant, lstm
from lstm_jax.cells.minimal import LinearRecurrentCell, MinGRUParams, MinimalState, MinLSTMParams, min_gru, min_lstm
from lstm_jax.cells.mut import MUTParams, mut1, mut2, mut3
from lstm_jax.cells.registry import CELL_CONSTRUCTORS, cell_by_name
from lstm_jax.cells.rnn import RNNParams, RNNState, rnn
from lstm_jax.cells.xlstm import MLSTMParams, MLSTMState, SLSTMParams, SLSTMState, mlstm, mlstm_parallel, slstm

__all__ = [
    "CELL_CONSTRUCTORS", "ClockworkParams", "ClockworkState", "GREFF_VARIANTS", "GRUParams", "GRUState", "LSTMParams", "LSTMState", "LinearRecurrentCell", "MinGRUParams", "MinLSTMParams", "MinimalState", "MLSTMParams", "MLSTMState", "SLSTMParams", "SLSTMState", "MUTParams",
    "RNNParams", "RNNState", "cell_by_name", "clockwork", "clockwork_mask", "exponential_periods", "greff_variant", "gru", "lstm", "min_gru", "min_lstm", "mlstm", "mlstm_parallel", "slstm", "mut1", "mut2", "mut3", "rnn",
]
