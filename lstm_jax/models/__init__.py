"""Task models built from layers: :func:`readout` (a layer and a linear readout) and
:func:`seq2seq` (an encoder and an attention decoder)."""

from lstm_jax.models.readout import Model, ReadoutParams, readout
from lstm_jax.models.seq2seq import Seq2Seq, Seq2SeqParams, seq2seq

__all__ = ["Model", "ReadoutParams", "Seq2Seq", "Seq2SeqParams", "readout", "seq2seq"]
