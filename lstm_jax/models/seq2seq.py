r"""A tiny attention encoder–decoder over integer tokens (for tests and demos).

The encoder is a :func:`lstm_jax.bidirectional` (or forward) LSTM layer, the decoder the
:func:`lstm_jax.attention_decoder` cell with the encoder's outputs in its carry::

    memory, mask = model.encode(params, src, src_lengths)     # [..., S, D], [..., S]
    carry = decoder.init_carry(params.decoder, memory=memory, memory_mask=mask)
    ys, _ = lj.unroll(decoder, params.decoder, embed(tgt_in), carry, lengths=tgt_lengths)
    logits = ys.y @ w_out + b_out                               # [..., T, V]; ys.weights [..., T, S]
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from lstm_jax import _checks
from lstm_jax.cell import Cell
from lstm_jax.cells.attention import AttentionDecoderParams, attention_decoder
from lstm_jax.cells.lstm import lstm
from lstm_jax.layers import Layer, bidirectional, layer
from lstm_jax.unroll import unroll

Array = jax.Array


class Seq2SeqParams(NamedTuple):
    """Parameters of :func:`seq2seq`."""

    src_embed: Array  # [V, E]
    tgt_embed: Array  # [V, E]
    encoder: Any  # BidirectionalParams (two LSTMParams) or LSTMParams
    decoder: AttentionDecoderParams  # input size E, memory size D (2H bidirectional, H otherwise)
    w_out: Array  # [O, V]
    b_out: Array  # [V]


class Seq2Seq(NamedTuple):
    """A tiny attention sequence-to-sequence model over integer tokens.

    Attributes:
      init: ``init(key, *, dtype=jnp.float32) -> Seq2SeqParams``.
      encode: ``encode(params, src[..., S], src_lengths[...]) -> (memory[..., S, D],
        mask[..., S])``.
      apply: ``apply(params, src, src_lengths, tgt_in[..., T], *, tgt_lengths=None) ->
        (logits[..., T, V], weights[..., T, S])`` with teacher forcing: ``tgt_in`` is the
        target shifted right behind a start token.
      greedy: ``greedy(params, src, src_lengths, start_token, num_steps) -> (tokens[..., T]
        int32, weights[..., T, S])``: feeds back its own argmax.
      encoder: the encoder :class:`~lstm_jax.Layer`.
      decoder: the decoder :class:`~lstm_jax.Cell` (:func:`~lstm_jax.attention_decoder`).
      vocab_size: ``V``.
    """

    init: Callable[..., Seq2SeqParams]
    encode: Callable[..., tuple[Array, Array]]
    apply: Callable[..., tuple[Array, Array]]
    greedy: Callable[..., tuple[Array, Array]]
    encoder: Layer
    decoder: Cell
    vocab_size: int


def _check_tokens(name: str, tokens: Any, vocab_size: int) -> None:
    if not jnp.issubdtype(jnp.result_type(tokens), jnp.integer):
        raise TypeError(f"`{name}` must be integer token ids in [0, {vocab_size}), got dtype "
                        f"{jnp.result_type(tokens)}.")
    if jnp.ndim(tokens) < 1:
        raise ValueError(f"`{name}` must have shape [..., L] (at least 1 axis), got a scalar.")


def seq2seq(
    vocab_size: int,
    *,
    embed_size: int = 16,
    hidden_size: int = 32,
    attention: str = "additive",
    style: str = "luong",
    input_feeding: bool | None = None,
    bidirectional_encoder: bool = True,
) -> Seq2Seq:
    r"""A tiny attention encoder–decoder over tokens ``0 .. V-1``.

    .. math::

        \text{memory} &= \mathrm{BiLSTM}(E_{src}[\text{src}]) \quad [\ldots, S, 2H]
            \;(\text{or an LSTM}, [\ldots, S, H]) \\
        y_t, \alpha_t &= \mathrm{decoder}(E_{tgt}[\text{tgt\_in}_t], \text{memory}) \\
        \text{logits}_t &= y_t W_{out} + b_{out}

    Source positions at or past ``src_lengths`` are masked out of the attention (the
    bidirectional encoder reads each sequence within its length). The decoder's LSTM starts
    from zeros: all it knows about the source comes through attention. Teacher-forced
    ``apply`` is one :func:`lstm_jax.unroll` of the decoder with the memory in its carry;
    ``greedy`` a ``lax.scan`` of the decoder's ``step``. Token ids are not reserved; the
    caller picks its padding and start tokens.

    Args:
      vocab_size: ``V``, shared by source and target.
      embed_size: ``E``.
      hidden_size: ``H`` of the decoder and of each encoder direction.
      attention: ``"additive"``, ``"dot"`` (needs a unidirectional encoder: ``D == H``) or
        ``"general"``.
      style: the decoder's ``"luong"`` or ``"bahdanau"``.
      input_feeding: see :func:`~lstm_jax.attention_decoder`.
      bidirectional_encoder: a bidirectional (concat) LSTM encoder, else a forward LSTM.

    Returns:
      A :class:`Seq2Seq`.

    Raises:
      ValueError: a non-positive size; the decoder's errors (see
        :func:`~lstm_jax.attention_decoder`).
    """
    V = _checks.positive_int("vocab_size", vocab_size)
    E = _checks.positive_int("embed_size", embed_size)
    H = _checks.positive_int("hidden_size", hidden_size)
    encoder = bidirectional(lstm(H), lstm(H)) if bidirectional_encoder else layer(lstm(H))
    decoder = attention_decoder(H, attention, memory_size=encoder.output_size, style=style,
                                input_feeding=input_feeding)

    def init(key, *, dtype=jnp.float32):
        dtype = _checks.floating_dtype("dtype", dtype)
        ks, kt, ke, kd, ko = jax.random.split(key, 5)
        embed = jax.nn.initializers.normal(1.0)
        return Seq2SeqParams(
            src_embed=embed(ks, (V, E), dtype), tgt_embed=embed(kt, (V, E), dtype),
            encoder=encoder.init(ke, E, dtype=dtype), decoder=decoder.init(kd, E, dtype=dtype),
            w_out=jax.nn.initializers.lecun_normal()(ko, (decoder.output_size, V), dtype),
            b_out=jnp.zeros((V,), dtype))

    def encode(params, src, src_lengths):
        _check_tokens("src", src, V)
        src_lengths = jnp.asarray(src_lengths)
        memory, _ = encoder.apply(params.encoder, params.src_embed[src], lengths=src_lengths)  # [..., S, D]
        S = jnp.shape(src)[-1]
        mask = jnp.arange(S, dtype=jnp.int32) < src_lengths.astype(jnp.int32)[..., None]  # [..., S]
        return memory, mask

    def decoder_carry(params, src, src_lengths):
        memory, mask = encode(params, src, src_lengths)
        return decoder.init_carry(params.decoder, memory=memory, memory_mask=mask)

    def apply(params, src, src_lengths, tgt_in, *, tgt_lengths=None):
        _check_tokens("tgt_in", tgt_in, V)
        carry = decoder_carry(params, src, src_lengths)
        ys, _ = unroll(decoder, params.decoder, params.tgt_embed[tgt_in], carry, lengths=tgt_lengths)
        return ys.y @ params.w_out + params.b_out, ys.weights

    def greedy(params, src, src_lengths, start_token, num_steps):
        n = _checks.positive_int("num_steps", num_steps)
        carry = decoder_carry(params, src, src_lengths)
        token = jnp.full(jnp.shape(src)[:-1], start_token, jnp.int32)

        def body(state, _):
            carry, token = state
            carry, out = decoder.step(params.decoder, carry, params.tgt_embed[token])
            token = jnp.argmax(out.y @ params.w_out + params.b_out, axis=-1).astype(jnp.int32)
            return (carry, token), (token, out.weights)

        _, (tokens, weights) = jax.lax.scan(body, (carry, token), None, length=n)
        return jnp.moveaxis(tokens, 0, -1), jnp.moveaxis(weights, 0, -2)

    return Seq2Seq(init=init, encode=encode, apply=apply, greedy=greedy, encoder=encoder,
                   decoder=decoder, vocab_size=V)
