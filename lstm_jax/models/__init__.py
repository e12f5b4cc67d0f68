"""Task models built from layers: :func:`readout` (a layer and a linear readout),
:func:`seq2seq` (an encoder and an attention decoder) and :func:`language_model` (a token
language model) with :func:`generate` (sampling from it)."""

from lstm_jax.models.language_model import LanguageModel, LanguageModelConfig, LanguageModelParams, language_model
from lstm_jax.models.readout import Model, ReadoutParams, readout
from lstm_jax.models.sampling import generate, sample_logits, top_k_logits, top_p_logits
from lstm_jax.models.seq2seq import Seq2Seq, Seq2SeqParams, seq2seq

__all__ = [
    "LanguageModel", "LanguageModelConfig", "LanguageModelParams", "Model", "ReadoutParams", "Seq2Seq",
    "Seq2SeqParams", "generate", "language_model", "readout", "sample_logits", "seq2seq", "top_k_logits",
    "top_p_logits",
]
