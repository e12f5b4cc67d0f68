r"""A token language model: embedding, any forward layer, dropout, softmax readout.

.. math::

    x_t = E[\text{token}_t] \in \mathbb{R}^{E}, \qquad
    y_t, c_t = \text{body}(x_t, c_{t-1}) \in \mathbb{R}^{O}, \qquad
    \text{logits}_t = \text{dropout}(y_t)\, W_{out} + b_{out} \in \mathbb{R}^{V}

(with tied embeddings, Press & Wolf 2017 and Inan et al. 2017: :math:`W_{out} = E^\top`, which
needs :math:`O = E`). The model predicts token :math:`t + 1` from tokens :math:`\le t`, so its
body must read forwards (no reversed or bidirectional layer). A :class:`LanguageModel` compares
and hashes by its :class:`LanguageModelConfig`, so it can be a ``jax.jit`` static argument;
:func:`lstm_jax.generate` samples from it and :func:`lstm_jax.save` stores it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax import _checks
from lstm_jax.cell import Cell, compared_by_config
from lstm_jax.layers import BidirectionalConfig, Layer, LayerConfig, StackConfig, dropout, layer

Array = jax.Array


class LanguageModelParams(NamedTuple):
    """Parameters of :func:`language_model`."""

    embed: Array  # [V, E]   token embeddings (also the readout, transposed, when tied)
    body: Any  # the body layer's params (input size E)
    w_out: Array | None  # [O, V]  readout kernel; None with tied embeddings
    b_out: Array  # [V]     readout bias


@dataclasses.dataclass(frozen=True)
class LanguageModelConfig:
    """Hyper-parameters of :func:`language_model` (``embed_size`` resolved to an int)."""

    body: Layer
    vocab_size: int
    embed_size: int
    dropout_rate: float = 0.0
    tie_embeddings: bool = False

    @property
    def output_size(self) -> int:
        """``V``: the size of the logits."""
        return self.vocab_size

    def __repr__(self) -> str:
        parts = [repr(self.body), repr(self.vocab_size), f"embed_size={self.embed_size}"]
        parts += [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)[3:]
                  if getattr(self, f.name) != f.default]
        return f"language_model({', '.join(parts)})"


@compared_by_config
class LanguageModel(NamedTuple):
    """A token language model: what :func:`language_model` returns.

    Attributes:
      config: the :class:`LanguageModelConfig`; models are equal (and hash equally) exactly
        when their configs are.
      init: ``init(key, *, dtype=jnp.float32) -> LanguageModelParams``.
      init_carry: ``init_carry(params, batch_shape=()) -> carry``: the body's initial carry.
      apply: ``apply(params, tokens[..., T], carry=None, *, lengths=None, resets=None,
        key=None, return_gates=False) -> (logits[..., T, V], carry)`` (``(logits, carry,
        gates)`` with ``return_gates``).
      step: ``step(params, carry, token[...], *, return_gates=False) -> (carry,
        logits[..., V])`` (``(carry, logits, gates)`` with ``return_gates``).
      loss: ``loss(params, tokens, targets, carry=None, *, lengths=None, resets=None,
        key=None) -> (nats, (carry, metrics))``.
      stream_loss: ``stream_loss(params, batch, key, carry) -> (nats, metrics, carry)``:
        :func:`lstm_jax.train.fit`'s stateful loss over a ``TextChunk`` (truncated BPTT).
    """

    config: LanguageModelConfig
    init: Callable[..., LanguageModelParams]
    init_carry: Callable[..., Any]
    apply: Callable[..., tuple]
    step: Callable[..., tuple]
    loss: Callable[..., tuple]
    stream_loss: Callable[..., tuple]

    @property
    def body(self) -> Layer:
        return self.config.body

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def embed_size(self) -> int:
        return self.config.embed_size


def _backward_part(body: Layer) -> str | None:
    """The first part of ``body`` that reads its sequence backwards, or None."""
    config = body.config
    if isinstance(config, BidirectionalConfig):
        return repr(body)
    if isinstance(config, StackConfig):
        return next((p for p in map(_backward_part, config.layers) if p is not None), None)
    return repr(body) if isinstance(config, LayerConfig) and config.reverse else None


def _check_tokens(name: str, tokens: Any, vocab_size: int) -> Array:
    """``tokens`` as an integer array with at least one axis (``[..., T]``)."""
    tokens = jnp.asarray(tokens)
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise TypeError(f"`{name}` must be integer token ids in [0, {vocab_size}), got dtype {tokens.dtype}.")
    if tokens.ndim < 1:
        raise ValueError(f"`{name}` must have shape [..., T] (at least 1 axis), got a scalar.")
    return tokens


def _check_range(name: str, tokens: Array, vocab_size: int, valid: Array | None = None) -> None:
    """Concrete tokens (outside ``jit``; where ``valid``) must lie in ``[0, V)``. Traced ones
    cannot be read: there an id outside gives a NaN embedding (:func:`_embed`), so NaN logits."""
    if not (_checks.is_concrete(tokens) and (valid is None or _checks.is_concrete(valid)) and tokens.size):
        return
    values = np.asarray(tokens) if valid is None else np.asarray(tokens)[np.asarray(valid)]  # on the host
    if values.size and (values.min() < 0 or values.max() >= vocab_size):
        raise ValueError(f"`{name}` must lie in [0, {vocab_size}) (the vocabulary), got values in "
                         f"[{values.min()}, {values.max()}].")


def at_least_float32(dtype: Any) -> jnp.dtype:
    """``dtype``, or float32 for a narrower float (bfloat16 logits: softmax in float32)."""
    return jnp.dtype(jnp.float32) if jnp.finfo(dtype).bits < 32 else jnp.dtype(dtype)


def _embed(embed: Array, tokens: Array) -> Array:
    """``embed[tokens]``; ids outside ``[0, V)`` (negative ones too) give NaN rows."""
    V = embed.shape[0]
    ids = jnp.where((tokens >= 0) & (tokens < V), tokens, V)
    return jnp.take(embed, ids, axis=0, mode="fill", fill_value=jnp.nan)


def language_model(
    body: Cell | Layer,
    vocab_size: int,
    *,
    embed_size: int | None = None,
    dropout_rate: float = 0.0,
    tie_embeddings: bool = False,
) -> LanguageModel:
    r"""A language model over tokens ``0 .. V-1``: embedding → ``body`` → dropout → readout.

    .. math::

        \text{logits}_t = \text{dropout}(\text{body}(E[\text{tokens}])_t)\, W_{out} + b_{out}
        \quad (W_{out} = E^\top \text{ with } \texttt{tie\_embeddings})

    The loss is the mean negative log-likelihood of the targets, in nats per token, over the
    valid positions (``t < lengths``); ``bits_per_token`` is the same divided by
    :math:`\ln 2`. Dropout (on the body's outputs, before the readout; a stack's
    ``dropout_rate`` also acts between its layers) is active only when ``apply``/``loss`` get
    a ``key``; ``step`` never drops. Initialisation: ``E ~ N(0, 1)`` (as PyTorch's
    ``nn.Embedding``), ``W_out`` Lecun-normal, ``b_out = 0``, the body its own.

    Args:
      body: a cell (wrapped with :func:`~lstm_jax.layer`) or a forward, batch-first layer
        (e.g. a :func:`~lstm_jax.stack` of any cells) over ``[..., T, E]``.
      vocab_size: ``V``.
      embed_size: ``E``; default the body's output size ``O`` (which tying requires).
      dropout_rate: probability of zeroing each entry of the body's outputs (with a key).
      tie_embeddings: use the embedding matrix as the readout, ``logits = y E^T + b``.

    Returns:
      A :class:`LanguageModel` with :class:`LanguageModelParams` ``(embed [V, E], body,
      w_out [O, V] or None, b_out [V])``. ``apply(params, tokens[..., T], carry=None, *,
      lengths=None, resets=None, key=None, return_gates=False) -> (logits[..., T, V],
      carry)`` passes ``lengths`` (positions at or past a length give the bias as logits and
      keep the carry) and ``resets`` (``[..., T]`` bool: the carry restarts before a flagged
      token) to the body; ``step(params, carry, token[...]) -> (carry, logits[..., V])`` is
      one step of the same computation (equal to ``apply`` position by position);
      ``loss(params, tokens, targets, carry=None, *, lengths=None, resets=None, key=None)
      -> (nats, (carry, metrics))`` with ``metrics = {"bits_per_token", "accuracy",
      "tokens"}`` (accuracy of the argmax; ``tokens`` the number of valid positions), the
      log-softmax in at least float32; ``stream_loss(params, batch, key, carry) -> (nats,
      metrics, carry)`` is ``loss`` on a ``TextChunk`` (``inputs``, ``targets``, ``resets``;
      a ``lengths`` field too if the batch has one), the loss :func:`lstm_jax.train.fit`
      takes for truncated BPTT with ``carry=lm.init_carry(params, (B,))``.

    Raises:
      TypeError: ``body`` is neither a cell nor a layer; ``tie_embeddings`` not a bool.
      ValueError: a reversed, bidirectional or time-major body; a non-positive size; a
        dropout rate outside ``[0, 1)``; ``tie_embeddings`` with ``embed_size`` != ``O``.
    """
    body = layer(body) if isinstance(body, Cell) else body
    if not isinstance(body, Layer):
        raise TypeError(f"`body` must be a Cell or a Layer, got {type(body).__name__}.")
    if body.time_major:
        raise ValueError("`body` must be batch-first (time_major=False).")
    backward = _backward_part(body)
    if backward is not None:
        raise ValueError(f"`body` must read forwards: a language model predicts each token from the ones "
                         f"before it, but {backward} reads the sequence backwards (it would see the future).")
    V = _checks.positive_int("vocab_size", vocab_size)
    O = body.output_size
    tied = _checks.boolean("tie_embeddings", tie_embeddings)
    E = O if embed_size is None else _checks.positive_int("embed_size", embed_size)
    if tied and E != O:
        raise ValueError(f"`tie_embeddings=True` reads the logits as y E^T, so it needs `embed_size` equal to the "
                         f"body's output size ({O}), got {E}.")
    rate = _checks.rate("dropout_rate", dropout_rate)
    config = LanguageModelConfig(body, V, E, rate, tied)

    def init(key, *, dtype=jnp.float32):
        dtype = _checks.floating_dtype("dtype", dtype)
        ke, kb, ko = jax.random.split(_checks.prng_key("key", key), 3)
        return LanguageModelParams(
            embed=jax.random.normal(ke, (V, E), dtype),
            body=body.init(kb, E, dtype=dtype),
            w_out=None if tied else jax.nn.initializers.lecun_normal()(ko, (O, V), dtype),
            b_out=jnp.zeros((V,), dtype))

    def check(params):
        if not isinstance(params, LanguageModelParams):
            raise TypeError(f"`params` must be LanguageModelParams (from this model's init), got "
                            f"{type(params).__name__}.")
        dtype = getattr(params.embed, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"`params.embed` must be a floating array [V, E], got {params.embed!r:.80}.")
        _checks.tree_like("params", params, _param_shapes(model, jnp.dtype(dtype)), f"{model!r}.init")

    def logits_of(params, ys):
        w = params.embed.T if tied else params.w_out
        return ys @ w + params.b_out

    def init_carry(params, batch_shape=()):
        check(params)
        return body.init_carry(params.body, batch_shape)

    def apply(params, tokens, carry=None, *, lengths=None, resets=None, key=None, return_gates=False):
        check(params)
        tokens = _check_tokens("tokens", tokens, V)
        _check_range("tokens", tokens, V)
        k_body, k_drop = (None, None) if key is None else jax.random.split(_checks.prng_key("key", key))
        out = body.apply(params.body, _embed(params.embed, tokens), carry, lengths=lengths, resets=resets,
                         key=k_body, return_gates=return_gates)
        ys = out[0]  # [..., T, O]
        if key is not None and rate > 0.0:
            ys = dropout(k_drop, ys, rate)
        logits = logits_of(params, ys)
        return (logits, out[1], out[2]) if return_gates else (logits, out[1])

    def step(params, carry, token, *, return_gates=False):
        check(params)
        token = jnp.asarray(token)
        if not jnp.issubdtype(token.dtype, jnp.integer):
            raise TypeError(f"`token` must be integer token ids in [0, {V}), got dtype {token.dtype}.")
        _check_range("token", token, V)
        out = body.step(params.body, carry, _embed(params.embed, token), return_gates=return_gates)
        logits = logits_of(params, out[1])
        return (out[0], logits, out[2]) if return_gates else (out[0], logits)

    def loss(params, tokens, targets, carry=None, *, lengths=None, resets=None, key=None):
        tokens = _check_tokens("tokens", tokens, V)
        targets = _check_tokens("targets", targets, V)
        if targets.shape != tokens.shape:
            raise ValueError(f"`targets` must have the shape of `tokens` {tuple(tokens.shape)}, got "
                             f"{tuple(targets.shape)}.")
        logits, carry = apply(params, tokens, carry, lengths=lengths, resets=resets, key=key)
        T = tokens.shape[-1]
        valid = jnp.ones(tokens.shape, bool) if lengths is None else \
            jnp.arange(T, dtype=jnp.int32) < jnp.asarray(lengths).astype(jnp.int32)[..., None]
        _check_range("targets", targets, V, valid)
        work = at_least_float32(logits.dtype)
        logp = jax.nn.log_softmax(logits.astype(work), axis=-1)
        ids = jnp.where((targets >= 0) & (targets < V), targets, V)  # out of range: NaN (loud)
        nll = -jnp.take_along_axis(logp, ids[..., None], axis=-1, mode="fill", fill_value=jnp.nan)[..., 0]
        count = jnp.sum(valid).astype(work)
        nats = jnp.sum(jnp.where(valid, nll, jnp.zeros((), work))) / jnp.maximum(count, jnp.ones((), work))
        hits = jnp.sum(valid & (jnp.argmax(logits, axis=-1).astype(targets.dtype) == targets)).astype(work)
        metrics = {"bits_per_token": nats / jnp.asarray(math.log(2.0), work),
                   "accuracy": hits / jnp.maximum(count, jnp.ones((), work)), "tokens": count}
        return nats, (carry, metrics)

    def stream_loss(params, batch, key, carry):
        nats, (carry, metrics) = loss(params, batch.inputs, batch.targets, carry, resets=batch.resets,
                                      lengths=getattr(batch, "lengths", None), key=key)
        return nats, metrics, carry

    model = LanguageModel(config=config, init=init, init_carry=init_carry, apply=apply, step=step, loss=loss,
                          stream_loss=stream_loss)
    return model


@functools.lru_cache(maxsize=256)
def _param_shapes(model: LanguageModel, dtype: jnp.dtype) -> LanguageModelParams:
    """``jax.eval_shape`` of ``model.init`` at ``dtype`` (cached: models hash by config)."""
    return jax.eval_shape(lambda k: model.init(k, dtype=dtype), jax.random.key(0))
