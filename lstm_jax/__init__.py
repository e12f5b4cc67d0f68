"""lstm_jax: every classic recurrent cell as pure JAX functions, unrolled with one scan.

Quick start::

    import jax, jax.numpy as jnp, lstm_jax as lj
    cell = lj.lstm(64)
    params = cell.init(jax.random.key(0), input_size=8)
    ys, carry = lj.unroll(cell, params, jnp.ones((4, 100, 8)))   # ys: [4, 100, 64]
"""

from lstm_jax import initializers
from lstm_jax.attention import (
    AdditiveParams,
    Attention,
    AttentionDecoder,
    AttentionDecoderParams,
    AttentionDecoderState,
    AttentionMemory,
    MultiplicativeParams,
    Seq2Seq,
    Seq2SeqParams,
    additive_attention,
    attention_decoder,
    masked_softmax,
    multiplicative_attention,
    seq2seq,
)
from lstm_jax.cell import Cell
from lstm_jax.cells import (
    GREFF_VARIANTS,
    ClockworkParams,
    ClockworkState,
    GRUParams,
    GRUState,
    LSTMParams,
    LinearRecurrentCell,
    LSTMState,
    MinGRUParams,
    MinimalState,
    MinLSTMParams,
    MLSTMParams,
    MLSTMState,
    MUTParams,
    RNNParams,
    RNNState,
    SLSTMParams,
    SLSTMState,
    cell_by_name,
    clockwork,
    greff_variant,
    gru,
    lstm,
    min_gru,
    min_lstm,
    mlstm,
    mlstm_parallel,
    mut1,
    mut2,
    mut3,
    rnn,
    slstm,
)
from lstm_jax.depth_gated import DepthGatedLSTMParams, depth_gated_lstm, depth_gated_lstm_cell
from lstm_jax.grid import (
    GridLSTMInput,
    GridLSTMParams,
    GridLSTMState,
    GridLSTMTransform,
    GridTransfer,
    grid_block,
    grid_lstm,
    grid_lstm_cell,
    init_grid_block,
)
from lstm_jax.layers import (
    BidirectionalCarry,
    BidirectionalParams,
    Layer,
    bidirectional,
    layer,
    stack,
)
from lstm_jax.parallel import has_parallel_form, linear_scan, parallel_layer, parallel_unroll
from lstm_jax.unroll import UnrollAux, reverse_within_lengths, unroll

__version__ = "0.1.0"

__all__ = [
    "LinearRecurrentCell", "MinGRUParams", "MinLSTMParams", "MinimalState", "has_parallel_form",
    "linear_scan", "min_gru", "min_lstm", "parallel_layer", "parallel_unroll",
    "MLSTMParams", "MLSTMState", "SLSTMParams", "SLSTMState", "mlstm", "mlstm_parallel", "slstm",
    "AdditiveParams", "Attention", "AttentionDecoder", "AttentionDecoderParams", "AttentionDecoderState",
    "AttentionMemory", "MultiplicativeParams", "Seq2Seq", "Seq2SeqParams", "additive_attention",
    "attention_decoder", "masked_softmax", "multiplicative_attention", "seq2seq",
    "BidirectionalCarry", "BidirectionalParams", "Cell", "ClockworkParams", "ClockworkState",
    "DepthGatedLSTMParams", "GREFF_VARIANTS", "GridLSTMInput", "GridLSTMParams", "GridLSTMState",
    "GridLSTMTransform", "GridTransfer", "GRUParams", "GRUState",
    "LSTMParams", "LSTMState", "Layer", "MUTParams", "RNNParams", "RNNState", "UnrollAux",
    "bidirectional", "cell_by_name", "clockwork", "depth_gated_lstm", "depth_gated_lstm_cell", "greff_variant",
    "grid_block", "grid_lstm", "grid_lstm_cell", "init_grid_block", "gru", "initializers", "layer", "lstm", "mut1", "mut2",
    "mut3", "reverse_within_lengths", "rnn", "stack", "unroll",
]
