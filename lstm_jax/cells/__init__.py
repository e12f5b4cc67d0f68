"""Recurrent cells: one module per family, each building a :class:`~lstm_jax.Cell` from a
frozen config; :mod:`lstm_jax.cells.registry` finds them by name."""

from lstm_jax.cells.attention import (
    AdditiveAttentionConfig,
    AdditiveParams,
    Attention,
    AttentionDecoderConfig,
    AttentionDecoderParams,
    AttentionDecoderState,
    AttentionMemory,
    DecoderOutput,
    MultiplicativeAttentionConfig,
    MultiplicativeParams,
    additive_attention,
    attention_decoder,
    multiplicative_attention,
)
from lstm_jax.cells.clockwork import ClockworkConfig, ClockworkParams, ClockworkState, clockwork, clockwork_mask, exponential_periods
from lstm_jax.cells.depth_gated import DepthGatedInput, DepthGatedLSTMConfig, DepthGatedLSTMParams, depth_gated_lstm
from lstm_jax.cells.grid import (
    GridLSTMConfig,
    GridLSTMInput,
    GridLSTMParams,
    GridLSTMState,
    GridLSTMTransform,
    GridTransfer,
    grid_block,
    grid_lstm,
    init_grid_block,
)
from lstm_jax.cells.gru import GRUConfig, GRUParams, GRUState, gru
from lstm_jax.cells.lstm import GREFF_VARIANTS, LSTMConfig, LSTMParams, LSTMState, greff_variant, lstm
from lstm_jax.cells.minimal import MinGRUConfig, MinGRUParams, MinimalState, MinLSTMConfig, MinLSTMParams, min_gru, min_lstm
from lstm_jax.cells.mut import MUTConfig, MUTParams, mut1, mut2, mut3
from lstm_jax.cells.registry import CELL_CONSTRUCTORS, cell_by_name
from lstm_jax.cells.rnn import RNNConfig, RNNParams, RNNState, rnn
from lstm_jax.cells.xlstm import MLSTMConfig, MLSTMParams, MLSTMState, SLSTMConfig, SLSTMParams, SLSTMState, mlstm, slstm

__all__ = [  # sorted
    "AdditiveAttentionConfig", "AdditiveParams", "Attention", "AttentionDecoderConfig",
    "AttentionDecoderParams", "AttentionDecoderState", "AttentionMemory", "CELL_CONSTRUCTORS",
    "ClockworkConfig", "ClockworkParams", "ClockworkState", "DecoderOutput", "DepthGatedInput",
    "DepthGatedLSTMConfig", "DepthGatedLSTMParams", "GREFF_VARIANTS", "GRUConfig", "GRUParams", "GRUState",
    "GridLSTMConfig", "GridLSTMInput", "GridLSTMParams", "GridLSTMState", "GridLSTMTransform", "GridTransfer",
    "LSTMConfig", "LSTMParams", "LSTMState", "MLSTMConfig", "MLSTMParams", "MLSTMState", "MUTConfig",
    "MUTParams", "MinGRUConfig", "MinGRUParams", "MinLSTMConfig", "MinLSTMParams", "MinimalState",
    "MultiplicativeAttentionConfig", "MultiplicativeParams", "RNNConfig", "RNNParams", "RNNState",
    "SLSTMConfig", "SLSTMParams", "SLSTMState", "additive_attention", "attention_decoder", "cell_by_name",
    "clockwork", "clockwork_mask", "depth_gated_lstm", "exponential_periods", "greff_variant", "grid_block",
    "grid_lstm", "gru", "init_grid_block", "lstm", "min_gru", "min_lstm", "mlstm", "multiplicative_attention",
    "mut1", "mut2", "mut3", "rnn", "slstm",
]
