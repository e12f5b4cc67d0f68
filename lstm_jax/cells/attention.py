r"""Attention over a memory, and the attention decoder: an LSTM cell that reads it at every step.

The "next step" after the LSTM: instead of squeezing a whole source sequence into one
fixed-size vector, a decoder looks back at every encoder output ("the memory") at every step
and takes a weighted average of it, the *context*. Two families of score functions:

* :func:`additive_attention` (Bahdanau, Cho & Bengio 2015): a one-hidden-layer MLP,
  :math:`e_j = v^\top \tanh(W_s s + W_h h_j)`;
* :func:`multiplicative_attention` (Luong, Pham & Manning 2015): ``"dot"``
  :math:`e_j = s^\top h_j` and ``"general"`` :math:`e_j = s^\top W h_j`, optionally divided
  by :math:`\sqrt{K}` (Vaswani et al. 2017's scaling).

Each is an :class:`Attention`: a frozen, hashable config plus pure functions, like a
:class:`~lstm_jax.Cell`. The memory-side projection (:math:`W_h h_j`, :math:`W h_j`) does not
depend on the query, so it is done once per memory (:meth:`Attention.precompute`, an
:class:`AttentionMemory`) and a decoder step only pays for the query side: the same hoisting
that :func:`lstm_jax.unroll` does for the input projection.

:func:`attention_decoder` is a :class:`~lstm_jax.Cell`: an LSTM whose every step reads a
context vector, in Bahdanau's arrangement (context from the previous state, fed into the LSTM)
or Luong's (context from the current state, combined into an attentional state, optionally
fed back: "input feeding"). Its memory rides in the carry (precomputed once by ``init_carry``
and unchanged by every step), and each step outputs a :class:`DecoderOutput` ``(y, weights)``,
so the library's evaluator runs it like any other cell::

    dec = lj.attention_decoder(H, "additive", memory_size=D)
    params = dec.init(key, I)                                      # I: the decoder's input size
    carry = dec.init_carry(params, memory=enc, memory_mask=mask)   # enc [..., S, D], mask [..., S] bool
    ys, carry = lj.unroll(dec, params, xs, carry, lengths=lengths) # xs [..., T, I], lengths [...]
    ys.y          # [..., T, O]  attentional states h~_t (put a vocabulary readout on top)
    ys.weights    # [..., T, S]  attention weights (zero where masked and past each length)
    carry.memory  # the AttentionMemory, as init_carry made it

    carry, out = dec.step(params, carry, x_t)  # greedy decoding, one step: x_t [..., I],
                                               # out.y [..., O], out.weights [..., S]

Without a memory, ``init_carry`` gives an empty one (``S = 0``): a decoder with nothing to
attend to, whose context is zero. :func:`lstm_jax.seq2seq` puts an encoder, this decoder and
embeddings together.

Shapes: ``...`` is any leading batch shape (including none), ``S`` the memory length, ``D``
the memory size, ``Q`` the query size, ``K`` the key size, ``A`` the additive attention size,
``T`` the number of decoder steps, ``I`` the decoder's input size, ``H`` its hidden size,
``O`` its output size. Masks are boolean, ``True`` = attend.

Masking: masked positions get *exactly* zero weight, the others sum to one; a row with every
position masked (or an empty memory) gets all-zero weights and a zero context (never NaN),
in values and in gradients.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from lstm_jax import _checks
from lstm_jax import initializers as inits
from lstm_jax.cell import Cell, CellConfig, compared_by_config
from lstm_jax.cells.base import initializer, make_cell, or_default, set_fields
from lstm_jax.cells.lstm import LSTMParams, LSTMState, lstm
from lstm_jax.ops import masked_softmax

Array = jax.Array

_ATTENTIONS = ("additive", "dot", "general")
_STYLES = ("luong", "bahdanau")


# ----------------------------------------------------------------------------- parameters


class AdditiveParams(NamedTuple):
    """Additive (Bahdanau) attention parameters; weights ``[in, out]``."""

    w_query: Array  # [Q, A]  W_s^T: query -> attention space
    w_memory: Array  # [D, A] W_h^T: memory -> attention space (hoisted into the keys)
    v: Array  # [A]           scoring vector


class MultiplicativeParams(NamedTuple):
    """Multiplicative (Luong) attention parameters."""

    w_memory: Array | None  # [D, Q]  W^T for "general" (hoisted into the keys); None for "dot"


class AttentionMemory(NamedTuple):
    """A memory with its query-independent projection done once (:meth:`Attention.precompute`)."""

    values: Array  # [..., S, D]  h_j, averaged into the context (masked rows zeroed)
    keys: Array  # [..., S, K]    the memory side of the score: h_j W_h^T (K = A), h_j W^T (K = Q) or h_j (K = D)
    mask: Array  # [..., S] bool  True = attend (all True when no mask was given)


# ------------------------------------------------------------------------------- configs


class AttentionConfig:
    """Base of the attention mechanisms' hyper-parameters: a frozen, hashable dataclass whose
    ``repr`` is its constructor call (first field positional, then the non-default ones)."""

    constructor: ClassVar[str] = "attention"

    def build(self) -> "Attention":
        """The :class:`Attention` this config describes."""
        raise NotImplementedError

    def __repr__(self) -> str:
        first, *rest = dataclasses.fields(self)
        parts = [repr(getattr(self, first.name))] + [
            f"{f.name}={getattr(self, f.name)!r}" for f in rest if getattr(self, f.name) != f.default]
        return f"{self.constructor}({', '.join(parts)})"


@dataclasses.dataclass(frozen=True, repr=False)
class AdditiveAttentionConfig(AttentionConfig):
    """Hyper-parameters of :func:`additive_attention`."""

    constructor = "additive_attention"
    attention_size: int
    kernel_init: inits.Initializer | None = None

    def __post_init__(self):
        set_fields(self, attention_size=_checks.positive_int("attention_size", self.attention_size),
                   kernel_init=initializer("kernel_init", self.kernel_init))

    def build(self) -> "Attention":
        return _additive(self)


@dataclasses.dataclass(frozen=True, repr=False)
class MultiplicativeAttentionConfig(AttentionConfig):
    """Hyper-parameters of :func:`multiplicative_attention`."""

    constructor = "multiplicative_attention"
    form: str = "general"
    scale: bool = False
    kernel_init: inits.Initializer | None = None

    def __post_init__(self):
        set_fields(self, form=_checks.choice("form", self.form, ("dot", "general")),
                   scale=_checks.boolean("scale", self.scale),
                   kernel_init=initializer("kernel_init", self.kernel_init))

    def build(self) -> "Attention":
        return _multiplicative(self)


# ------------------------------------------------------------------------------ Attention


@compared_by_config
class Attention(NamedTuple):
    """An attention mechanism: its config plus pure functions over params, queries and keys.

    Attentions are equal (and hash equally) exactly when their configs are, and ``repr``
    comes from the config. The fields are equations (no argument checks: the decoder calls
    them inside its scan); the methods :meth:`precompute`, :meth:`score` and :meth:`apply`
    check their arguments and are what users call.

    Attributes:
      config: :class:`AdditiveAttentionConfig` or :class:`MultiplicativeAttentionConfig`.
      init: ``init(key, query_size, memory_size, *, dtype=jnp.float32) -> params``.
      keys: ``keys(params, values[..., S, D]) -> [..., S, K]``: the memory side of the score.
      scores: ``scores(params, query[..., Q], keys[..., S, K]) -> e[..., S]``: raw scores.
    """

    config: AttentionConfig
    init: Callable[..., Any]
    keys: Callable[..., Array]
    scores: Callable[..., Array]

    def precompute(self, params: Any, memory: Array, mask: Array | None = None) -> AttentionMemory:
        """The memory's query-independent projection, once per memory.

        Args:
          params: this attention's params.
          memory: ``[..., S, D]``.
          mask: ``[..., S]`` bool (True = attend) or None (attend everywhere). Masked rows of
            the memory are zeroed first, so padding that is not even finite (NaN, inf) cannot
            reach the outputs or the gradients.

        Returns:
          An :class:`AttentionMemory`.
        """
        _, D, dtype = _made_for(self, params)
        shape = _check_memory("memory", memory, D, dtype, "the memory size the parameters were made for")
        _check_mask("mask", mask, shape)
        return _precompute(self, params, memory, mask)

    def score(self, params: Any, query: Array, memory: AttentionMemory) -> Array:
        """``e[..., S]``: the raw scores of ``query [..., Q]`` against a precomputed memory
        (masked positions included; :meth:`apply` leaves them out)."""
        _check_query(self, params, query, memory)
        return self.scores(params, query, memory.keys)

    def apply(self, params: Any, query: Array, memory: Array | AttentionMemory,
              mask: Array | None = None) -> tuple[Array, Array]:
        r"""Attends from ``query`` over ``memory``.

        .. math::

            \alpha = \operatorname{softmax}_{\text{unmasked}}(e), \qquad c = \sum_j \alpha_j h_j

        Args:
          params: this attention's params.
          query: ``[..., Q]``.
          memory: ``[..., S, D]``, or an :class:`AttentionMemory` (which carries its mask).
          mask: ``[..., S]`` bool for a raw ``memory``; None (attend everywhere) otherwise.

        Returns:
          ``(context [..., D], weights [..., S])``.
        """
        if isinstance(memory, AttentionMemory):
            if mask is not None:
                raise ValueError("`mask` must be None when `memory` is an AttentionMemory: it carries its "
                                 "own mask (pass the mask to `precompute`).")
        else:
            memory = self.precompute(params, memory, mask)
        _check_query(self, params, query, memory)
        return _attend(self, params, query, memory)



def _precompute(attention: Attention, params: Any, memory: Array, mask: Array | None) -> AttentionMemory:
    """:meth:`Attention.precompute` without checks."""
    memory = jnp.asarray(memory)
    if mask is None:
        mask = jnp.ones(memory.shape[:-1], jnp.bool_)
    else:  # where, not a product: 0 * NaN would be NaN
        mask = jnp.asarray(mask)
        memory = jnp.where(mask[..., None], memory, jnp.zeros_like(memory))
    return AttentionMemory(values=memory, keys=attention.keys(params, memory), mask=mask)


def _attend(attention: Attention, params: Any, query: Array, memory: AttentionMemory) -> tuple[Array, Array]:
    """``(context [..., D], weights [..., S])`` without checks."""
    weights = masked_softmax(attention.scores(params, query, memory.keys), memory.mask)  # [..., S]
    return jnp.einsum("...s,...sd->...d", weights, memory.values), weights  # context [..., D]


# ------------------------------------------------------------------------------- checks


def _made_for(attention: Attention, params: Any) -> tuple[int | None, int | None, Any]:
    """``(Q, D, dtype)`` that ``params`` were made for (None where any fits: dot attention
    has no params), after checking them against ``attention.init``."""
    config = attention.config
    cls = AdditiveParams if isinstance(config, AdditiveAttentionConfig) else MultiplicativeParams
    if not isinstance(params, cls):
        raise TypeError(f"`params` must be {cls.__name__} (from this attention's init), got "
                        f"{type(params).__name__}.")
    if cls is MultiplicativeParams and (params.w_memory is None) != (config.form == "dot"):
        raise ValueError(f"`params` were made for {'general' if config.form == 'dot' else 'dot'} attention, "
                         f"not {config.form!r}.")
    if cls is MultiplicativeParams and config.form == "dot":
        return None, None, None
    first = lambda a, axis: jnp.shape(a)[axis] if jnp.ndim(a) > axis else 1  # a broken leaf: tree_like names it
    if cls is AdditiveParams:
        Q, D = first(params.w_query, 0), first(params.w_memory, 0)
    else:
        Q, D = first(params.w_memory, 1), first(params.w_memory, 0)
    dtype = jnp.dtype(jax.tree_util.tree_leaves(params)[0].dtype)
    _checks.tree_like("params", params, _attention_shapes(attention, Q, D, dtype), repr(attention))
    return Q, D, dtype


@functools.lru_cache(maxsize=256)
def _attention_shapes(attention: Attention, Q: int, D: int, dtype: Any) -> Any:
    return jax.eval_shape(lambda k: attention.init(k, Q, D, dtype=dtype), jax.random.key(0))


def _check_memory(name: str, memory: Any, size: int | None, dtype: Any | None, what: str) -> tuple[int, ...]:
    """Checks ``memory [..., S, D]`` (``D == size`` and ``dtype`` unless None); returns its shape."""
    shape = tuple(jnp.shape(memory))
    if len(shape) < 2:
        raise ValueError(f"`{name}` must have shape [..., S, D] (at least 2 axes), got shape {shape}.")
    if size is not None and shape[-1] != size:
        raise ValueError(f"`{name}` must have last axis {size} ({what}), got shape {shape}.")
    got = jnp.result_type(memory)
    if dtype is None and not jnp.issubdtype(got, jnp.floating):
        raise TypeError(f"`{name}` must be floating, got dtype {got}.")
    if dtype is not None and got != jnp.dtype(dtype):
        raise TypeError(f"`{name}` has dtype {got} but the parameters are {jnp.dtype(dtype)}; cast one of "
                        f"them (e.g. `{name}.astype(jnp.{jnp.dtype(dtype).name})`).")
    return shape


def _check_mask(name: str, mask: Any, memory_shape: tuple[int, ...]) -> None:
    if mask is None:
        return
    got = jnp.result_type(mask)
    if got != jnp.bool_:
        raise TypeError(f"`{name}` must be a boolean array (True = attend), got dtype {got}; "
                        f"e.g. `jnp.arange(S) < lengths[..., None]`.")
    if tuple(jnp.shape(mask)) != memory_shape[:-1]:
        raise ValueError(f"`{name}` must have shape {memory_shape[:-1]} (the [..., S] of `memory`, "
                         f"shape {memory_shape}), got {tuple(jnp.shape(mask))}.")


def _check_query(attention: Attention, params: Any, query: Any, memory: Any) -> None:
    """Checks params, ``memory`` (an :class:`AttentionMemory`) and ``query [..., Q]``."""
    Q, _, dtype = _made_for(attention, params)
    if not isinstance(memory, AttentionMemory):
        raise TypeError(f"`memory` must be an AttentionMemory (from `precompute`), got {type(memory).__name__}.")
    if Q is None:  # dot attention: the query meets the memory rows themselves
        Q, dtype, what = memory.keys.shape[-1], memory.keys.dtype, "dot attention needs query size == memory size"
    else:
        what = "the query size the parameters were made for"
    shape = tuple(jnp.shape(query))
    if len(shape) < 1:
        raise ValueError(f"`query` must have shape [..., Q] with Q={Q}, got a scalar.")
    if shape[-1] != Q:
        raise ValueError(f"`query` must have last axis {Q} ({what}), got shape {shape}.")
    got = jnp.result_type(query)
    if got != jnp.dtype(dtype):
        raise TypeError(f"`query` has dtype {got} but the parameters are {jnp.dtype(dtype)}; cast one of "
                        f"them (e.g. `query.astype(jnp.{jnp.dtype(dtype).name})`).")
    mem_batch = tuple(jnp.shape(memory.values))[:-2]
    if shape[:-1] != mem_batch:
        raise ValueError(f"`query` must have the memory's batch shape {mem_batch} in front of Q (query "
                         f"[..., Q], memory [..., S, D]), got shape {shape}.")


def _check_init(key: Any, query_size: Any, memory_size: Any, dtype: Any) -> tuple[int, int, Any]:
    _checks.prng_key("key", key)
    return (_checks.positive_int("query_size", query_size), _checks.positive_int("memory_size", memory_size),
            _checks.floating_dtype("dtype", dtype))


# ------------------------------------------------------------------------------ additive


def additive_attention(attention_size: int, *, kernel_init: inits.Initializer | None = None) -> Attention:
    r"""Additive ("concat", MLP) attention of Bahdanau, Cho & Bengio 2015.

    For a query :math:`s` (the decoder state) and memory rows :math:`h_j`:

    .. math::

        e_j &= v^\top \tanh(W_s s + W_h h_j) \\
        \alpha_j &= \frac{\exp e_j}{\sum_{k \text{ unmasked}} \exp e_k} \quad (0 \text{ where masked}) \\
        c &= \sum_j \alpha_j h_j

    (the paper's :math:`W_a, U_a, v_a`; no bias, as in the paper). Stored ``[in, out]``:
    ``w_query`` is :math:`W_s^\top` ``[Q, A]``, ``w_memory`` is :math:`W_h^\top` ``[D, A]``.
    The keys are :math:`h_j W_h^\top` ``[..., S, A]``, computed once per memory, so a step
    costs one ``[Q, A]`` matmul plus ``S·A`` tanh. Luong's ``"concat"`` score
    :math:`v^\top \tanh(W[s; h_j])` is the same function.

    Args:
      attention_size: ``A``, the width of the hidden layer.
      kernel_init: initialiser for ``w_query``, ``w_memory`` and ``v`` (as ``[A, 1]``);
        default Glorot uniform.

    Returns:
      An :class:`Attention` with :class:`AdditiveAttentionConfig` and
      :class:`AdditiveParams`; keys are ``[..., S, A]``.

    Raises:
      ValueError: a non-positive ``attention_size``.
      TypeError: a ``kernel_init`` that is not a hashable callable.
    """
    return AdditiveAttentionConfig(attention_size, kernel_init=kernel_init).build()


def _additive(config: AdditiveAttentionConfig) -> Attention:
    A = config.attention_size
    kernel_init = or_default(config.kernel_init, inits.glorot_uniform)

    def init(key, query_size, memory_size, *, dtype=jnp.float32):
        Q, D, dtype = _check_init(key, query_size, memory_size, dtype)
        kq, km, kv = jax.random.split(key, 3)
        return AdditiveParams(w_query=kernel_init(kq, (Q, A), dtype), w_memory=kernel_init(km, (D, A), dtype),
                              v=kernel_init(kv, (A, 1), dtype)[:, 0])

    def keys(params, values):
        return values @ params.w_memory  # [..., S, A]

    def scores(params, query, keys):
        pq = query @ params.w_query  # [..., A]
        return jnp.tanh(keys + pq[..., None, :]) @ params.v  # [..., S]

    return Attention(config=config, init=init, keys=keys, scores=scores)


# ------------------------------------------------------------------------ multiplicative


def multiplicative_attention(form: str = "general", *, scale: bool = False,
                             kernel_init: inits.Initializer | None = None) -> Attention:
    r"""Multiplicative attention of Luong, Pham & Manning 2015 (``"dot"`` and ``"general"``).

    .. math::

        e_j = \begin{cases} s^\top h_j & \text{dot} \\ s^\top W h_j & \text{general} \end{cases}
        \;(\,/\sqrt{K} \text{ with } \texttt{scale}), \qquad
        \alpha = \operatorname{softmax}_{\text{unmasked}}(e), \qquad c = \sum_j \alpha_j h_j

    ``"dot"`` has no parameters and needs ``Q == D``; its keys are the memory rows. ``"general"``
    stores ``w_memory`` :math:`= W^\top` ``[D, Q]``; its keys :math:`k_j = h_j W^\top`
    ``[..., S, Q]`` are computed once per memory, so a step is one ``[S, Q]`` matrix–vector
    product. ``scale`` divides by :math:`\sqrt{K}`, ``K`` the key size (``Q``), as in
    Vaswani et al. 2017's scaled dot-product attention; Luong et al. do not scale.

    Args:
      form: ``"dot"`` or ``"general"``.
      scale: divide the scores by ``sqrt(K)``.
      kernel_init: initialiser for ``w_memory`` (default Glorot uniform).

    Returns:
      An :class:`Attention` with :class:`MultiplicativeAttentionConfig` and
      :class:`MultiplicativeParams`.

    Raises:
      ValueError: an unknown ``form``; ``init`` of ``"dot"`` with ``query_size != memory_size``.
      TypeError: a ``scale`` that is not a bool; a ``kernel_init`` that is not a hashable callable.
    """
    return MultiplicativeAttentionConfig(form, scale=scale, kernel_init=kernel_init).build()


def _multiplicative(config: MultiplicativeAttentionConfig) -> Attention:
    dot = config.form == "dot"
    kernel_init = or_default(config.kernel_init, inits.glorot_uniform)

    def init(key, query_size, memory_size, *, dtype=jnp.float32):
        Q, D, dtype = _check_init(key, query_size, memory_size, dtype)
        if dot:
            if Q != D:
                raise ValueError(f"dot attention needs `query_size` == `memory_size`, got {Q} and {D}; "
                                 "use form='general' (or additive attention) for different sizes.")
            return MultiplicativeParams(w_memory=None)
        return MultiplicativeParams(w_memory=kernel_init(key, (D, Q), dtype))

    def keys(params, values):
        return values if dot else values @ params.w_memory  # [..., S, K]

    def scores(params, query, keys):
        e = jnp.einsum("...k,...sk->...s", query, keys)  # [..., S]
        return e * (1.0 / math.sqrt(keys.shape[-1])) if config.scale else e

    return Attention(config=config, init=init, keys=keys, scores=scores)


# ------------------------------------------------------------------------------ decoder


class AttentionDecoderParams(NamedTuple):
    """Attention decoder parameters; weights ``[in, out]``, LSTM gate order ``(i, f, g, o)``."""

    lstm: LSTMParams  # the LSTM over x_t: w_x [I, 4H], w_h [H, 4H], b [4H]
    w_feed: Array | None  # [F, 4H] the LSTM's kernel for its extra input: ctx_t (Bahdanau, F = D),
    #                       h~_{t-1} (Luong with input feeding, F = O); None for Luong without
    attention: Any  # AdditiveParams | MultiplicativeParams, query size H, memory size D
    w_c: Array  # [D + H, O]  attentional layer W_c^T on [ctx_t; h_t]


class AttentionDecoderState(NamedTuple):
    """Attention decoder carry. ``memory`` is read by every step and changed by none."""

    lstm: LSTMState  # hidden [..., H], cell [..., H]
    attentional: Array | None  # [..., O] h~_{t-1}, fed back by Luong's input feeding; else None
    memory: AttentionMemory  # values [..., S, D], keys [..., S, K], mask [..., S] (S = 0: no memory)


class DecoderOutput(NamedTuple):
    """What one decoder step outputs (through :func:`lstm_jax.unroll`: ``[..., T, *]``)."""

    y: Array  # [..., O]  the attentional state h~_t
    weights: Array  # [..., S]  the attention weights alpha_t (exactly 0 at masked positions)


@dataclasses.dataclass(frozen=True, repr=False)
class AttentionDecoderConfig(CellConfig):
    """Hyper-parameters of :func:`attention_decoder` (see there).

    Normalised on creation: ``attention`` becomes an :class:`Attention` (``attention_size``,
    ``scale`` and ``kernel_init`` configure one given by name and are then folded into it),
    ``input_feeding`` a bool and ``output_size`` an int, so equal decoders have equal configs.
    """

    constructor = "attention_decoder"
    hidden_size: int
    memory_size: int
    attention: Any = "additive"
    style: str = "luong"
    input_feeding: bool | None = None
    attention_size: int | None = None
    scale: bool = False
    output_size: int | None = None  # the field replaces CellConfig's property: O
    forget_bias: float = 1.0
    kernel_init: inits.Initializer | None = None

    def __post_init__(self):
        H = _checks.positive_int("hidden_size", self.hidden_size)
        D = _checks.positive_int("memory_size", self.memory_size)
        style = _checks.choice("style", self.style, _STYLES)
        O = H if self.output_size is None else _checks.positive_int("output_size", self.output_size)
        feeding = self.input_feeding
        if feeding is not None:
            feeding = _checks.boolean("input_feeding", feeding)
        if style == "bahdanau" and feeding:
            raise ValueError("`input_feeding` applies to style='luong' only: Bahdanau's LSTM already "
                             "reads the context at every step.")
        kernel_init = initializer("kernel_init", self.kernel_init)
        attention = self.attention
        if isinstance(attention, Attention):
            if self.attention_size is not None or self.scale:
                raise ValueError("`attention_size` and `scale` configure an attention given by name; an "
                                 f"Attention object ({attention!r}) is already configured.")
        else:
            _checks.choice("attention", attention, _ATTENTIONS)
            if attention == "additive":
                if self.scale:
                    raise ValueError("`scale` applies to 'dot' and 'general' attention, not 'additive'.")
                A = H if self.attention_size is None else self.attention_size
                attention = additive_attention(A, kernel_init=kernel_init)
            else:
                if self.attention_size is not None:
                    raise ValueError(f"`attention_size` applies to 'additive' attention, not {attention!r}.")
                attention = multiplicative_attention(attention, scale=self.scale, kernel_init=kernel_init)
        if getattr(attention.config, "form", None) == "dot" and D != H:
            raise ValueError(f"dot attention needs `memory_size` == `hidden_size` (the query is h_t), got "
                             f"{D} and {H}; use 'general' or 'additive' attention for different sizes.")
        set_fields(self, hidden_size=H, memory_size=D, attention=attention, style=style,
                   input_feeding=style == "luong" and feeding is not False, attention_size=None, scale=False,
                   output_size=O, forget_bias=_checks.number("forget_bias", self.forget_bias),
                   kernel_init=kernel_init)

    def build(self) -> Cell:
        return _decoder_cell(self)


def attention_decoder(
    hidden_size: int,
    attention: str | Attention = "additive",
    *,
    memory_size: int,
    style: str = "luong",
    input_feeding: bool | None = None,
    attention_size: int | None = None,
    scale: bool = False,
    output_size: int | None = None,
    forget_bias: float = 1.0,
    kernel_init: inits.Initializer | None = None,
) -> Cell:
    r"""An LSTM decoder cell that reads a context vector from a memory at every step.

    With :math:`x_t` the step's input (the previous target's embedding under teacher
    forcing), :math:`(h_t, c^{\text{cell}}_t) = \mathrm{LSTM}(\cdot)` the
    :func:`lstm_jax.lstm` cell (gate order ``i, f, g, o``), :math:`\mathrm{attend}` the
    attention (:math:`\mathrm{ctx}_t = \sum_j \alpha_{tj} h^{\text{mem}}_j`) and
    :math:`[a; b]` concatenation:

    ``style="luong"`` (Luong et al. 2015, sec. 3; context from the *current* state):

    .. math::

        h_t &= \mathrm{LSTM}([x_t; \tilde h_{t-1}],\ h_{t-1}) \quad
              (\text{input feeding; } \mathrm{LSTM}(x_t, h_{t-1}) \text{ without}) \\
        \mathrm{ctx}_t, \alpha_t &= \mathrm{attend}(h_t, \text{memory}) \\
        \tilde h_t &= \tanh([\mathrm{ctx}_t; h_t]\, W_c), \qquad y_t = \tilde h_t

    ``style="bahdanau"`` (Bahdanau et al. 2015; context from the *previous* state, fed in):

    .. math::

        \mathrm{ctx}_t, \alpha_t &= \mathrm{attend}(h_{t-1}, \text{memory}) \\
        h_t &= \mathrm{LSTM}([x_t; \mathrm{ctx}_t],\ h_{t-1}) \\
        \tilde h_t &= \tanh([\mathrm{ctx}_t; h_t]\, W_c), \qquad y_t = \tilde h_t

    The LSTM's kernel on the concatenated input is stored split: ``lstm.w_x`` ``[I, 4H]``
    for :math:`x_t` (``project``: all steps at once before the scan) and ``w_feed``
    ``[F, 4H]`` for the part only known inside the loop (:math:`\tilde h_{t-1}` or
    :math:`\mathrm{ctx}_t`); :math:`[x; f] W = x W_x + f W_{feed}`. The LSTM update itself
    is the :func:`lstm_jax.lstm` cell's ``recur``.

    The memory is part of the carry (:class:`AttentionDecoderState`): ``init_carry(params,
    batch_shape=(), *, memory=None, memory_mask=None)`` projects ``memory [..., S, D]`` once
    (:class:`AttentionMemory`: masked rows zeroed, the attention's keys, the mask) and takes
    the batch shape from it; every step reads it and passes it on unchanged. Without a
    memory the carry holds an empty one (``S = 0``, zero context); as a template for the
    library's carry checks (``init_carry(params, batch_shape)``), its size-0 axis accepts a
    memory of any length. See the module docstring for the ``lj.unroll`` pattern. With
    ``resets``, pass ``reset_to`` (e.g. the initial carry): the default, ``init_carry(params,
    batch_shape)``, has no memory.

    Bahdanau's own readout is a maxout layer over :math:`(s_{t-1}, E y_{t-1}, \mathrm{ctx}_t)`
    and his recurrent unit a GRU; here both styles end in Luong's attentional layer
    :math:`\tilde h_t` so they share one output contract (``O`` wide, put a linear vocabulary
    readout on top), and the recurrent unit is the library's LSTM.

    Args:
      hidden_size: ``H``, the LSTM's size (also the attention's query size).
      attention: ``"additive"`` (:func:`additive_attention`), ``"dot"`` or ``"general"``
        (:func:`multiplicative_attention`), or an :class:`Attention`. ``"dot"`` needs
        ``memory_size == hidden_size``.
      memory_size: ``D``, the size of the memory's rows (the encoder's output size).
      style: ``"luong"`` or ``"bahdanau"``.
      input_feeding: Luong's input feeding (default True for ``"luong"``); must be left
        unset (or False) for ``"bahdanau"``, whose LSTM already reads the context.
      attention_size: ``A`` for additive attention given by name (default ``H``).
      scale: divide multiplicative scores by ``sqrt(K)`` (attention given by name).
      output_size: ``O``, the width of :math:`\tilde h_t` (default ``H``).
      forget_bias: the LSTM's initial forget-gate bias.
      kernel_init: initialiser for ``w_feed`` (per gate block), ``w_c`` and the weights of
        an attention given by name (default Glorot uniform).

    Returns:
      A :class:`~lstm_jax.Cell` with :class:`AttentionDecoderConfig`,
      :class:`AttentionDecoderParams` and :class:`AttentionDecoderState`;
      ``project(params, xs[..., I]) -> [..., 4H]``; ``y_t`` is a :class:`DecoderOutput`
      ``(y [..., O], weights [..., S])``; gates those of the LSTM (``input``, ``forget``,
      ``candidate``, ``output``, ``cell``, ``hidden``).

    Raises:
      ValueError: a non-positive size; an unknown ``style`` or ``attention``; ``input_feeding``
        with ``"bahdanau"``; ``attention_size`` or ``scale`` with an :class:`Attention` or an
        attention they do not apply to; ``"dot"`` with ``memory_size != hidden_size``.
        ``init_carry``: a ``memory`` or ``memory_mask`` of the wrong shape, a ``batch_shape``
        other than the memory's, a ``memory_mask`` without ``memory``.
      TypeError: a non-bool ``input_feeding``; ``init_carry``: a ``memory`` of another dtype
        than the params, a non-bool ``memory_mask``.
    """
    return AttentionDecoderConfig(
        hidden_size, memory_size, attention=attention, style=style, input_feeding=input_feeding,
        attention_size=attention_size, scale=scale, output_size=output_size, forget_bias=forget_bias,
        kernel_init=kernel_init).build()


def _decoder_cell(config: AttentionDecoderConfig) -> Cell:
    H, D, O = config.hidden_size, config.memory_size, config.output_size
    attention, feeding, bahdanau = config.attention, config.input_feeding, config.style == "bahdanau"
    cell = lstm(H, forget_bias=config.forget_bias)
    kernel_init = or_default(config.kernel_init, inits.glorot_uniform)
    F = D if bahdanau else (O if feeding else None)

    def init(key, input_size, dtype):
        kl, kf, ka, kc = jax.random.split(key, 4)
        return AttentionDecoderParams(
            lstm=cell.init(kl, input_size, dtype=dtype),
            w_feed=None if F is None else inits.init_blocks(kernel_init, kf, F, H, 4, dtype),
            attention=attention.init(ka, H, D, dtype=dtype),
            w_c=kernel_init(kc, (D + H, O), dtype))

    def init_carry(params, batch_shape, *, memory=None, memory_mask=None):
        dtype = params.w_c.dtype
        if memory is None:
            if memory_mask is not None:
                raise ValueError("`memory_mask` masks `memory`; pass `memory` with it.")
            memory = jnp.zeros(batch_shape + (0, D), dtype)  # nothing to attend to
        else:
            shape = _check_memory("memory", memory, D, dtype, "the decoder's memory_size")
            _check_mask("memory_mask", memory_mask, shape)
            if batch_shape and batch_shape != shape[:-2]:
                raise ValueError(f"`batch_shape` {batch_shape} differs from the batch shape {shape[:-2]} of "
                                 f"`memory` (shape {shape}); leave it out: the memory sets it.")
            batch_shape = shape[:-2]
        return AttentionDecoderState(
            lstm=cell.init_carry(params.lstm, batch_shape),
            attentional=jnp.zeros(batch_shape + (O,), dtype) if feeding else None,
            memory=_precompute(attention, params.attention, memory, memory_mask))

    def project(params, xs):
        return cell.project(params.lstm, xs)  # [..., 4H]

    def recur(params, carry, px, *, aux=False):
        memory = carry.memory
        if bahdanau:
            context, weights = _attend(attention, params.attention, carry.lstm.hidden, memory)  # from h_{t-1}
            out = cell.recur(params.lstm, carry.lstm, px + context @ params.w_feed, aux=aux)
        else:
            if feeding:
                px = px + carry.attentional @ params.w_feed
            out = cell.recur(params.lstm, carry.lstm, px, aux=aux)
            context, weights = _attend(attention, params.attention, out[1], memory)  # from h_t
        state, h = out[0], out[1]
        y = jnp.tanh(jnp.concatenate([context, h], axis=-1) @ params.w_c)  # [..., O]
        new = AttentionDecoderState(lstm=state, attentional=y if feeding else None, memory=memory)
        output = DecoderOutput(y=y, weights=weights)
        return (new, output, out[2]) if aux else (new, output)

    return make_cell(config, init=init, init_carry=init_carry, project=project, recur=recur)
