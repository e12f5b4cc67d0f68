r"""Sampling from a :class:`~lstm_jax.models.LanguageModel`: :func:`generate` and its filters.

One step of sampling turns logits :math:`z \in \mathbb{R}^V` into a token:

1. temperature: :math:`z / \tau` (:math:`\tau \to 0` is greedy; :math:`\tau = 0` *is* greedy);
2. top-k (:func:`top_k_logits`): keep the :math:`k` largest, the rest get :math:`-\infty`;
3. nucleus, top-p (:func:`top_p_logits`, Holtzman et al. 2020): keep the smallest set of most
   probable tokens whose probability (under the softmax of what 1–2 left) reaches :math:`p`;
4. draw from the softmax of what is left (``jax.random.categorical``), or take the argmax.

**Ties.** Both filters keep every token tied with the last one kept (``logits >= threshold``),
so the result never depends on the order of the vocabulary: with ties at the boundary, top-k
may keep more than :math:`k` tokens and top-p more than the smallest set. Greedy picks the
lowest id among tied maxima (``argmax``).
"""

from __future__ import annotations

import functools
import numbers
from typing import Any

import jax
import jax.numpy as jnp

from lstm_jax import _checks

Array = jax.Array


def _sorted_descending(logits: Array) -> Array:
    return jnp.flip(jnp.sort(logits, axis=-1), axis=-1)


def _keep_from(logits: Array, sorted_desc: Array, count: Array) -> Array:
    """``logits`` where ``>=`` the ``count``-th largest (``count [...]`` >= 1), else ``-inf``."""
    threshold = jnp.take_along_axis(sorted_desc, (count - 1)[..., None], axis=-1)  # [..., 1]
    return jnp.where(logits >= threshold, logits, jnp.asarray(-jnp.inf, logits.dtype))


def top_k_logits(logits: Array, k: int | Array) -> Array:
    """The ``k`` largest logits of each row kept, the others set to ``-inf``.

    Args:
      logits: ``[..., V]``.
      k: the number kept, a positive int (or a traced integer scalar); values past ``V`` act
        as ``V``. Tokens tied with the ``k``-th largest are kept too.

    Returns:
      ``[..., V]``, the same dtype.
    """
    V = logits.shape[-1]
    count = jnp.clip(jnp.asarray(k).astype(jnp.int32), 1, V)
    return _keep_from(logits, _sorted_descending(logits), jnp.broadcast_to(count, logits.shape[:-1]))


def top_p_logits(logits: Array, p: float | Array) -> Array:
    r"""Nucleus filtering: the most probable tokens of each row whose probability reaches ``p``.

    With the probabilities :math:`\pi = \mathrm{softmax}(z)` sorted in decreasing order,
    :math:`\pi_{(1)} \ge \pi_{(2)} \ge \dots`, the kept set is the first :math:`n` of them,
    :math:`n = \min\{m : \sum_{j \le m} \pi_{(j)} \ge p\}` (so at least one token), plus any
    token tied with :math:`\pi_{(n)}`; the others get ``-inf``. Logits that are already
    ``-inf`` (from :func:`top_k_logits`) have probability 0 and stay out.

    Args:
      logits: ``[..., V]``.
      p: the mass to reach, in ``(0, 1]`` (a float or a traced scalar). At ``p = 1`` tokens
        whose probability is lost to rounding in the cumulative sum may be dropped.

    Returns:
      ``[..., V]``, the same dtype.
    """
    from lstm_jax.models.language_model import at_least_float32

    sorted_desc = _sorted_descending(logits)
    probs = jax.nn.softmax(sorted_desc.astype(at_least_float32(logits.dtype)), axis=-1)
    cumulative = jnp.cumsum(probs, axis=-1)
    before = jnp.concatenate([jnp.zeros_like(cumulative[..., :1]), cumulative[..., :-1]], axis=-1)
    # token (m) is needed while the mass before it is still short of p; the first always is
    count = jnp.maximum(jnp.sum(before < jnp.asarray(p, before.dtype), axis=-1), 1).astype(jnp.int32)
    return _keep_from(logits, sorted_desc, count)


def sample_logits(
    key: Array,
    logits: Array,
    *,
    temperature: float | Array = 1.0,
    top_k: int | Array | None = None,
    top_p: float | Array | None = None,
    greedy: bool = False,
) -> Array:
    r"""One token per row of ``logits [..., V]``: int32 ``[...]`` (see the module docstring).

    Draws from :math:`\mathrm{softmax}(\mathrm{filter}(z / \tau))` with top-k, then top-p,
    applied after the temperature; ``greedy`` or ``temperature == 0`` takes
    ``argmax(logits)``. Pure and traceable: ``temperature``, ``top_k`` and ``top_p`` may be
    traced scalars; None switches a filter off.
    """
    best = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if greedy:
        return best
    tau = jnp.asarray(temperature).astype(logits.dtype)
    scaled = logits / jnp.where(tau > 0, tau, jnp.ones_like(tau))
    if top_k is not None:
        scaled = top_k_logits(scaled, top_k)
    if top_p is not None:
        scaled = top_p_logits(scaled, top_p)
    drawn = jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)
    return jnp.where(tau > 0, drawn, best)


def _number(name: str, value: Any, low: float, high: float | None, *, low_open: bool) -> Any:
    """A Python number in the range (checked), or a JAX/NumPy scalar (not checked: may be traced)."""
    if isinstance(value, bool) or not (isinstance(value, numbers.Real) or hasattr(value, "dtype")):
        raise TypeError(f"`{name}` must be a number, got {value!r}.")
    if isinstance(value, numbers.Real):
        bad = value <= low if low_open else value < low
        if bad or (high is not None and value > high):
            left = "(" if low_open else "["
            right = f"{high}]" if high is not None else "inf)"
            raise ValueError(f"`{name}` must lie in {left}{low}, {right}, got {value!r}.")
    elif jnp.ndim(value) != 0:
        raise ValueError(f"`{name}` must be a scalar, got shape {tuple(jnp.shape(value))}.")
    return value


def generate(
    lm: Any,
    params: Any,
    key: Array,
    prompt: Any,
    num_tokens: int,
    *,
    temperature: float | Array = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    carry: Any = None,
    return_gates: bool = False,
) -> tuple:
    r"""Continues each prompt by ``num_tokens`` sampled tokens: one jitted program.

    The model reads ``prompt[..., :-1]`` with ``apply`` (one ``lax.scan``), then a
    ``lax.scan`` of ``num_tokens`` steps feeds the last token read (first the prompt's last)
    to ``step`` and samples the next from its logits (:func:`sample_logits`): with the keys
    ``jax.random.split(key, num_tokens)``, one per step, so a key gives the same tokens every
    time, and each row of the batch draws its own. Compiled once per model, prompt shape,
    ``num_tokens`` and choice of filters; ``temperature``, ``top_k`` and ``top_p`` values are
    traced, so changing them does not recompile.

    Args:
      lm: a :class:`~lstm_jax.models.LanguageModel` (any forward body: any cell, stacks).
      params: its params.
      key: a PRNG key (unused when greedy).
      prompt: integer ``[..., P]`` token ids, ``P >= 1`` (e.g. ``[B, P]``: a batch of prompts).
      num_tokens: ``N``, the tokens to generate.
      temperature: ``tau >= 0``; 0 is greedy.
      top_k: keep the ``k`` most probable tokens (``1 <= k``; past ``V`` acts as ``V``), or None.
      top_p: nucleus mass in ``(0, 1]``, or None.
      greedy: always take the most probable token.
      carry: the model's state before the prompt (default its ``init_carry``): e.g. the
        ``carry`` a previous call returned, with that call's last token as the prompt.
      return_gates: also return the gate activations of every generation step.

    Returns:
      ``(tokens, carry)``: ``tokens`` int32 ``[..., N]``, the continuation only, and the carry
      after reading the prompt and all generated tokens but the last. With ``return_gates``,
      ``(tokens, carry, gates)``: the gates of the step that produced each token, stacked
      after the batch axes (``{name: [..., N, H]}`` for a layer, a tuple of those per layer
      for a stack).

    Raises:
      TypeError: ``lm`` is not a language model; a non-integer prompt; a non-bool flag; a
        non-number temperature or nucleus mass.
      ValueError: a scalar or empty prompt; ``num_tokens`` or ``top_k`` not a positive int;
        ``temperature < 0``; ``top_p`` outside ``(0, 1]``.
    """
    from lstm_jax.models.language_model import LanguageModel, _check_range, _check_tokens

    if not isinstance(lm, LanguageModel):
        raise TypeError(f"`lm` must be a LanguageModel (from lstm_jax.language_model), got {type(lm).__name__}.")
    prompt = _check_tokens("prompt", prompt, lm.vocab_size)
    if prompt.shape[-1] < 1:
        raise ValueError("`prompt` must hold at least one token (shape [..., P] with P >= 1), got P = 0.")
    _check_range("prompt", prompt, lm.vocab_size)
    prompt = prompt.astype(jnp.int32)  # the scan feeds back int32 samples
    N = _checks.positive_int("num_tokens", num_tokens)
    greedy = _checks.boolean("greedy", greedy)
    return_gates = _checks.boolean("return_gates", return_gates)
    temperature = _number("temperature", temperature, 0.0, None, low_open=False)
    if top_k is not None and not isinstance(top_k, jax.Array):
        top_k = _checks.positive_int("top_k", top_k)
    if top_p is not None:
        top_p = _number("top_p", top_p, 0.0, 1.0, low_open=True)
    key = _checks.prng_key("key", key)
    return _generate(lm, params, key, prompt, carry, temperature, top_k, top_p, num_tokens=N, greedy=greedy,
                     return_gates=return_gates)


@functools.partial(jax.jit, static_argnames=("lm", "num_tokens", "greedy", "return_gates"))
def _generate(lm, params, key, prompt, carry, temperature, top_k, top_p, *, num_tokens, greedy, return_gates):
    batch = prompt.shape[:-1]
    if carry is None:
        carry = lm.init_carry(params, batch)
    if prompt.shape[-1] > 1:  # the logits of the prefix are unused: XLA drops their readout
        _, carry = lm.apply(params, prompt[..., :-1], carry)

    def one_step(state, step_key):
        carry, token = state
        out = lm.step(params, carry, token, return_gates=return_gates)
        new = sample_logits(step_key, out[1], temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy)
        return (out[0], new), ((new, out[2]) if return_gates else new)

    (carry, _), ys = jax.lax.scan(one_step, (carry, prompt[..., -1]), jax.random.split(key, num_tokens))
    after_batch = lambda a: jnp.moveaxis(a, 0, len(batch))  # [N, ..., *] -> [..., N, *]
    if not return_gates:
        return after_batch(ys), carry
    tokens, gates = ys
    return after_batch(tokens), carry, jax.tree.map(after_batch, gates)
