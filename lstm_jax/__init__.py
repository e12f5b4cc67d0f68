"""lstm_jax: every classic recurrent cell as pure JAX functions, run by one evaluator.

Quick start::

    import jax, jax.numpy as jnp, lstm_jax as lj
    cell = lj.lstm(64)                                           # a Cell: config + pure functions
    params = cell.init(jax.random.key(0), input_size=8)
    ys, carry = lj.unroll(cell, params, jnp.ones((4, 100, 8)))   # ys: [4, 100, 64]

The pieces: :class:`Cell` (``lstm_jax.cell``), :func:`unroll` (the one evaluator over a
sequence, with its forms), layers (:func:`layer`, :func:`stack`, :func:`bidirectional`),
the cells (:mod:`lstm_jax.cells`, one module per family), kernels (:mod:`lstm_jax.kernels`),
models (:mod:`lstm_jax.models`), and on top: :mod:`lstm_jax.train`, :mod:`lstm_jax.data`,
:mod:`lstm_jax.interop`; Flax NNX / Linen and Equinox modules in :mod:`lstm_jax.nnx`,
:mod:`lstm_jax.linen` and :mod:`lstm_jax.eqx` (``lj.nnx``..., imported on first use).
"""

import importlib as _importlib

from lstm_jax import initializers
from lstm_jax._checks import checked
from lstm_jax.cell import Cell, CellConfig, Resets, SequenceForm
from lstm_jax.cells import (
    GREFF_VARIANTS,
    AdditiveAttentionConfig,
    AdditiveParams,
    Attention,
    AttentionDecoderConfig,
    AttentionDecoderParams,
    AttentionDecoderState,
    AttentionMemory,
    ClockworkConfig,
    ClockworkParams,
    ClockworkState,
    DecoderOutput,
    DepthGatedInput,
    DepthGatedLSTMConfig,
    DepthGatedLSTMParams,
    GridLSTMConfig,
    GridLSTMInput,
    GridLSTMParams,
    GridLSTMState,
    GRUConfig,
    GRUParams,
    GRUState,
    LSTMConfig,
    LSTMParams,
    LSTMState,
    MinGRUConfig,
    MinGRUParams,
    MinimalState,
    MinLSTMConfig,
    MinLSTMParams,
    MLSTMConfig,
    MLSTMParams,
    MLSTMState,
    MultiplicativeAttentionConfig,
    MultiplicativeParams,
    MUTConfig,
    MUTParams,
    RNNConfig,
    RNNParams,
    RNNState,
    SLSTMConfig,
    SLSTMParams,
    SLSTMState,
    additive_attention,
    attention_decoder,
    cell_by_name,
    clockwork,
    depth_gated_lstm,
    greff_variant,
    grid_lstm,
    gru,
    lstm,
    min_gru,
    min_lstm,
    mlstm,
    multiplicative_attention,
    mut1,
    mut2,
    mut3,
    rnn,
    slstm,
)
from lstm_jax.layers import (
    BidirectionalCarry,
    BidirectionalConfig,
    BidirectionalParams,
    Layer,
    LayerConfig,
    LearnedCarryParams,
    StackConfig,
    bidirectional,
    dropout,
    layer,
    stack,
)
from lstm_jax.models import (
    LanguageModel,
    LanguageModelConfig,
    LanguageModelParams,
    generate,
    language_model,
    readout,
    seq2seq,
)
from lstm_jax.io import export_step, load, save
from lstm_jax.ops import masked_softmax
from lstm_jax.unroll import UnrollAux, default_unroll, reverse_within_lengths, unroll

__version__ = "0.2.0"


def __getattr__(name: str):
    """``lj.nnx``, ``lj.linen``, ``lj.eqx``: the Flax NNX, Linen and Equinox modules, imported on
    first use (so that ``import lstm_jax`` needs neither Flax nor Equinox)."""
    if name in ("eqx", "linen", "nnx"):
        return _importlib.import_module(f"lstm_jax.{name}")
    raise AttributeError(f"module 'lstm_jax' has no attribute {name!r}")


__all__ = [  # sorted
    "AdditiveAttentionConfig", "AdditiveParams", "Attention", "AttentionDecoderConfig",
    "AttentionDecoderParams", "AttentionDecoderState", "AttentionMemory", "BidirectionalCarry",
    "BidirectionalConfig", "BidirectionalParams", "Cell", "CellConfig", "ClockworkConfig", "ClockworkParams",
    "ClockworkState", "DecoderOutput", "DepthGatedInput", "DepthGatedLSTMConfig", "DepthGatedLSTMParams",
    "GREFF_VARIANTS", "GRUConfig", "GRUParams", "GRUState", "GridLSTMConfig", "GridLSTMInput", "GridLSTMParams",
    "GridLSTMState", "LSTMConfig", "LSTMParams", "LSTMState", "LanguageModel", "LanguageModelConfig",
    "LanguageModelParams", "Layer", "LayerConfig", "LearnedCarryParams", "MLSTMConfig", "MLSTMParams",
    "MLSTMState", "MUTConfig", "MUTParams", "MinGRUConfig", "MinGRUParams", "MinLSTMConfig", "MinLSTMParams",
    "MinimalState", "MultiplicativeAttentionConfig", "MultiplicativeParams", "RNNConfig", "RNNParams",
    "RNNState", "Resets", "SLSTMConfig", "SLSTMParams", "SLSTMState", "SequenceForm", "StackConfig",
    "UnrollAux", "additive_attention", "attention_decoder", "bidirectional", "cell_by_name", "checked",
    "clockwork", "default_unroll", "depth_gated_lstm", "dropout", "export_step", "generate", "greff_variant",
    "grid_lstm", "gru", "initializers", "language_model", "layer", "load", "lstm", "masked_softmax", "min_gru", "min_lstm", "mlstm",
    "multiplicative_attention", "mut1", "mut2", "mut3", "readout", "reverse_within_lengths", "rnn", "save",
    "seq2seq", "slstm", "stack", "unroll",
]
