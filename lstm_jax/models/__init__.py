"""Task models built from layers: :func:`readout` (a layer and a linear readout) and
:func:`seq2seq` (an encoder and an attention decoder)."""

from lstm_jax.models.readout import Model, ReadoutParams, readout

try:  # TRANSITIONAL: seq2seq is being ported by another helper; the lead makes this a plain import.
    from lstm_jax.models.seq2seq import Seq2Seq, Seq2SeqParams, seq2seq
except ImportError:
    pass
