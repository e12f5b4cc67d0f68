r"""Attention over a sequence, and an LSTM decoder that reads it at every step.

The "next step" after the LSTM: instead of squeezing a whole source sequence into one
fixed-size vector, a decoder looks back at every encoder output ("the memory") at every step
and takes a weighted average of it, the *context*. Two families of score functions:

* :func:`additive_attention` (Bahdanau, Cho & Bengio 2015): a one-hidden-layer MLP,
  :math:`e_j = v^\top \tanh(W_s s + W_h h_j)`;
* :func:`multiplicative_attention` (Luong, Pham & Manning 2015): ``"dot"``
  :math:`e_j = s^\top h_j` and ``"general"`` :math:`e_j = s^\top W h_j`, optionally divided
  by :math:`\sqrt{K}` (Vaswani et al. 2017's scaling).

Each is an :class:`Attention`, a NamedTuple of pure functions like a
:class:`~lstm_jax.Cell`. The memory-side projection (:math:`W_h h_j`, :math:`W h_j`) does not
depend on the query, so ``precompute`` does it once per sequence and a decoder loop only pays
for the query side: the same hoisting that :func:`lstm_jax.unroll` does for the input
projection.

:func:`attention_decoder` is an LSTM whose every step reads a context vector, in Bahdanau's
arrangement (context from the previous state, fed into the LSTM) or Luong's (context from the
current state, combined into an attentional state, optionally fed back: "input feeding").
:func:`seq2seq` glues a bidirectional LSTM encoder, the decoder and embeddings into a tiny
translation model (teacher-forced ``apply`` and greedy ``greedy``).

Shapes: ``...`` is any leading batch shape (including none), ``S`` the memory length, ``D``
the memory size, ``Q`` the query size, ``A`` the additive attention size, ``T`` the number
of decoder steps, ``H`` the decoder's hidden size, ``O`` its output size. Masks are boolean,
``True`` = attend.

Masking: masked positions get *exactly* zero weight, the others sum to one; a row with every
position masked gets all-zero weights and a zero context (never NaN), in values and in
gradients.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from lstm_jax import _checks
from lstm_jax import initializers as inits
from lstm_jax.cell import make_cell
from lstm_jax.cells.lstm import LSTMParams, LSTMState, lstm
from lstm_jax.layers import Layer, bidirectional, layer
from lstm_jax.unroll import unroll

Array = jax.Array


# ----------------------------------------------------------------------------- parameters


class AdditiveParams(NamedTuple):
    """Additive (Bahdanau) attention parameters; weights ``[in, out]``."""

    w_query: Array  # [Q, A]  W_s^T: query -> attention space
    w_memory: Array  # [D, A] W_h^T: memory -> attention space (hoisted by ``precompute``)
    v: Array  # [A]           scoring vector


class MultiplicativeParams(NamedTuple):
    """Multiplicative (Luong) attention parameters."""

    w_memory: Array | None  # [D, Q]  W^T for "general" (hoisted by ``precompute``); None for "dot"


class AttentionMemory(NamedTuple):
    """A memory with its query-independent projection done once (``Attention.precompute``)."""

    values: Array  # [..., S, D]  h_j, averaged into the context (masked rows zeroed if a mask was given)
    keys: Array  # [..., S, K]    the memory side of the score: h_j W_h^T (K = A), h_j W^T (K = Q) or h_j (K = D)


class Attention(NamedTuple):
    """An attention mechanism: pure functions plus the hyper-parameters they close over.

    Attributes:
      init: ``init(key, query_size, memory_size, *, dtype=jnp.float32) -> params``.
      precompute: ``precompute(params, memory[..., S, D], mask[..., S]=None) ->``
        :class:`AttentionMemory`: the memory-side projection, once per memory. With a mask,
        masked rows of the memory are zeroed first, so padding that is not even finite
        (NaN, inf) cannot reach the outputs or the gradients.
      score: ``score(params, query[..., Q], memory: AttentionMemory) -> e[..., S]``: the raw,
        unmasked scores.
      apply: ``apply(params, query[..., Q], memory, mask[..., S]=None) -> (context[..., D],
        weights[..., S])`` where ``memory`` is a ``[..., S, D]`` array or an
        :class:`AttentionMemory`.
      name: ``"additive"``, ``"dot"`` or ``"general"``.
      options: the constructor's keyword arguments.
    """

    init: Callable[..., Any]
    precompute: Callable[..., AttentionMemory]
    score: Callable[..., Array]
    apply: Callable[..., tuple[Array, Array]]
    name: str
    options: Mapping[str, Any]

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        ctor = "additive_attention" if self.name == "additive" else "multiplicative_attention"
        return f"{ctor}({opts})"


# ------------------------------------------------------------------------------- checks


def _check_memory(name: str, memory: Any, size: int | None, dtype: Any | None) -> tuple[int, ...]:
    shape = tuple(jnp.shape(memory))
    if len(shape) < 2:
        raise ValueError(f"`{name}` must have shape [..., S, D] (at least 2 axes), got shape {shape}.")
    if size is not None and shape[-1] != size:
        raise ValueError(f"`{name}` must have last axis {size} (the memory size the parameters were made "
                         f"for), got shape {shape}.")
    got = jnp.result_type(memory)
    if dtype is not None and got != jnp.dtype(dtype):
        raise TypeError(f"`{name}` has dtype {got} but the parameters are {jnp.dtype(dtype)}; cast one of "
                        f"them (e.g. `{name}.astype(jnp.{jnp.dtype(dtype).name})`).")
    return shape


def _check_mask(name: str, mask: Any, memory_shape: tuple[int, ...], memory_name: str = "memory") -> None:
    if mask is None:
        return
    got = jnp.result_type(mask)
    if got != jnp.bool_:
        raise TypeError(f"`{name}` must be a boolean array (True = attend), got dtype {got}; "
                        f"e.g. `jnp.arange(S) < lengths[..., None]`.")
    if tuple(jnp.shape(mask)) != memory_shape[:-1]:
        raise ValueError(f"`{name}` must have shape {memory_shape[:-1]} (the [..., S] of `{memory_name}`, "
                         f"shape {memory_shape}), got {tuple(jnp.shape(mask))}.")


def _check_query(query: Any, size: int, dtype: Any, memory: AttentionMemory, what: str) -> None:
    shape = tuple(jnp.shape(query))
    if len(shape) < 1:
        raise ValueError(f"`query` must have shape [..., Q] with Q={size}, got a scalar.")
    if shape[-1] != size:
        raise ValueError(f"`query` must have last axis {size} ({what}), got shape {shape}.")
    got = jnp.result_type(query)
    if got != jnp.dtype(dtype):
        raise TypeError(f"`query` has dtype {got} but the parameters are {jnp.dtype(dtype)}; cast one of "
                        f"them (e.g. `query.astype(jnp.{jnp.dtype(dtype).name})`).")
    mem_batch = tuple(jnp.shape(memory.values))[:-2]
    if shape[:-1] != mem_batch:
        raise ValueError(f"`query` must have the memory's batch shape {mem_batch} in front of Q (query "
                         f"[..., Q], memory [..., S, D]), got shape {shape}.")


def _as_memory(precompute, params, memory, mask) -> AttentionMemory:
    if isinstance(memory, AttentionMemory):
        _check_mask("mask", mask, tuple(jnp.shape(memory.values)))
        return memory
    return precompute(params, memory, mask)


# ------------------------------------------------------------------------------ softmax


def masked_softmax(scores: Array, mask: Array | None = None) -> Array:
    r"""Softmax over the last axis that gives masked positions exactly zero weight.

    .. math::

        \alpha_j = \frac{m_j \exp(e_j - \max_{k: m_k} e_k)}{\sum_k m_k \exp(e_k - \max_{k: m_k} e_k)}

    Masked scores are replaced (``jnp.where``) before the exponential, so neither they nor
    their gradients can overflow, and the exponentials are zeroed with a second ``where``.
    A row with every position masked gets all-zero weights (its denominator is 0 and is
    replaced by 1), with zero gradients, never NaN.

    Args:
      scores: ``[..., S]`` floating scores.
      mask: ``[..., S]`` boolean, ``True`` = attend; None attends everywhere.

    Returns:
      ``[..., S]`` weights in ``scores``' dtype.
    """
    if mask is None:
        return jax.nn.softmax(scores, axis=-1)
    fill = jnp.finfo(jnp.result_type(scores)).min  # the "-inf-like" score of a masked position
    top = jax.lax.stop_gradient(jnp.max(jnp.where(mask, scores, fill), axis=-1, keepdims=True))
    e = jnp.where(mask, jnp.exp(jnp.where(mask, scores, top) - top), jnp.zeros_like(scores))
    total = jnp.sum(e, axis=-1, keepdims=True)  # >= 1 unless every position is masked
    return e / jnp.where(total > 0, total, jnp.ones_like(total))


def _attend(score_fn, params, query, memory: AttentionMemory, mask):
    weights = masked_softmax(score_fn(params, query, memory), mask)  # [..., S]
    context = jnp.einsum("...s,...sd->...d", weights, memory.values)  # [..., D]
    return context, weights


def _zero_masked(memory: Array, mask: Array | None) -> Array:
    if mask is None:
        return memory
    return jnp.where(mask[..., None], memory, jnp.zeros_like(memory))


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
    ``precompute`` hoists :math:`h_j W_h^\top` ``[..., S, A]``, so a step costs one
    ``[Q, A]`` matmul plus ``S·A`` tanh. Luong's ``"concat"`` score
    :math:`v^\top \tanh(W[s; h_j])` is the same function.

    Args:
      attention_size: ``A``, the width of the hidden layer.
      kernel_init: initialiser for ``w_query``, ``w_memory`` and ``v`` (as ``[A, 1]``);
        default Glorot uniform.

    Returns:
      An :class:`Attention` with :class:`AdditiveParams`; keys are ``[..., S, A]``.
    """
    A = _checks.positive_int("attention_size", attention_size)
    kernel_init = kernel_init or inits.glorot_uniform()

    def init(key, query_size, memory_size, *, dtype=jnp.float32):
        Q = _checks.positive_int("query_size", query_size)
        D = _checks.positive_int("memory_size", memory_size)
        dtype = _checks.floating_dtype("dtype", dtype)
        kq, km, kv = jax.random.split(key, 3)
        return AdditiveParams(w_query=kernel_init(kq, (Q, A), dtype), w_memory=kernel_init(km, (D, A), dtype),
                              v=kernel_init(kv, (A, 1), dtype)[:, 0])

    def check_params(params):
        _checks.params_of(params, AdditiveParams, "w_memory", A)

    def precompute(params, memory, mask=None):
        check_params(params)
        shape = _check_memory("memory", memory, params.w_memory.shape[0], params.w_memory.dtype)
        _check_mask("mask", mask, shape)
        memory = _zero_masked(memory, mask)
        return AttentionMemory(values=memory, keys=memory @ params.w_memory)  # keys [..., S, A]

    def score(params, query, memory):
        check_params(params)
        _check_query(query, params.w_query.shape[0], params.w_query.dtype, memory,
                     "the query size the parameters were made for")
        pq = query @ params.w_query  # [..., A]
        return jnp.tanh(memory.keys + pq[..., None, :]) @ params.v  # [..., S]

    def apply(params, query, memory, mask=None):
        check_params(params)
        return _attend(score, params, query, _as_memory(precompute, params, memory, mask), mask)

    return Attention(init=init, precompute=precompute, score=score, apply=apply, name="additive",
                     options=dict(attention_size=A))


# ------------------------------------------------------------------------ multiplicative


def multiplicative_attention(form: str = "general", *, scale: bool = False,
                             kernel_init: inits.Initializer | None = None) -> Attention:
    r"""Multiplicative attention of Luong, Pham & Manning 2015 (``"dot"`` and ``"general"``).

    .. math::

        e_j = \begin{cases} s^\top h_j & \text{dot} \\ s^\top W h_j & \text{general} \end{cases}
        \;(\,/\sqrt{K} \text{ with } \texttt{scale}), \qquad
        \alpha = \operatorname{softmax}_{\text{unmasked}}(e), \qquad c = \sum_j \alpha_j h_j

    ``"dot"`` has no parameters and needs ``Q == D``. ``"general"`` stores
    ``w_memory`` :math:`= W^\top` ``[D, Q]``; ``precompute`` hoists the keys
    :math:`k_j = h_j W^\top` ``[..., S, Q]``, so a step is one ``[S, Q]`` matrix–vector
    product. ``scale`` divides by :math:`\sqrt{K}`, ``K`` the key size (``Q``), as in
    Vaswani et al. 2017's scaled dot-product attention; Luong et al. do not scale.

    Args:
      form: ``"dot"`` or ``"general"``.
      scale: divide the scores by ``sqrt(K)``.
      kernel_init: initialiser for ``w_memory`` (default Glorot uniform).

    Returns:
      An :class:`Attention` with :class:`MultiplicativeParams`.
    """
    _checks.choice("form", form, ("dot", "general"))
    kernel_init = kernel_init or inits.glorot_uniform()

    def init(key, query_size, memory_size, *, dtype=jnp.float32):
        Q = _checks.positive_int("query_size", query_size)
        D = _checks.positive_int("memory_size", memory_size)
        dtype = _checks.floating_dtype("dtype", dtype)
        if form == "dot":
            if Q != D:
                raise ValueError(f"dot attention needs `query_size` == `memory_size`, got {Q} and {D}; "
                                 "use form='general' (or additive attention) for different sizes.")
            return MultiplicativeParams(w_memory=None)
        return MultiplicativeParams(w_memory=kernel_init(key, (D, Q), dtype))

    def check_params(params):
        if not isinstance(params, MultiplicativeParams):
            raise TypeError(f"`params` must be MultiplicativeParams (from this attention's init), "
                            f"got {type(params).__name__}.")
        if (params.w_memory is None) != (form == "dot"):
            raise ValueError(f"`params` were made for {'general' if form == 'dot' else 'dot'} attention, "
                             f"not {form!r}.")

    def precompute(params, memory, mask=None):
        check_params(params)
        w = params.w_memory
        shape = _check_memory("memory", memory, None if w is None else w.shape[0], None if w is None else w.dtype)
        if not jnp.issubdtype(jnp.result_type(memory), jnp.floating):
            raise TypeError(f"`memory` must be floating, got dtype {jnp.result_type(memory)}.")
        _check_mask("mask", mask, shape)
        memory = _zero_masked(memory, mask)
        return AttentionMemory(values=memory, keys=memory if w is None else memory @ w)  # keys [..., S, K]

    def score(params, query, memory):
        check_params(params)
        K = memory.keys.shape[-1]
        what = ("dot attention needs query size == memory size" if form == "dot"
                else "the query size the parameters were made for")
        _check_query(query, K, jnp.result_type(memory.keys), memory, what)
        e = jnp.einsum("...k,...sk->...s", query, memory.keys)  # [..., S]
        return e * (1.0 / math.sqrt(K)) if scale else e

    def apply(params, query, memory, mask=None):
        check_params(params)
        return _attend(score, params, query, _as_memory(precompute, params, memory, mask), mask)

    return Attention(init=init, precompute=precompute, score=score, apply=apply, name=form,
                     options=dict(form=form, scale=scale))


# ------------------------------------------------------------------------------ decoder


class AttentionDecoderParams(NamedTuple):
    """Attention decoder parameters; weights ``[in, out]``, LSTM gate order ``(i, f, g, o)``."""

    lstm: LSTMParams  # the LSTM over x_t: w_x [I, 4H], w_h [H, 4H], b [4H]
    w_feed: Array | None  # [F, 4H] the LSTM's kernel for its extra input: c_t (Bahdanau, F = D),
    #                       h~_{t-1} (Luong with input feeding, F = O); None for Luong without
    attention: Any  # AdditiveParams | MultiplicativeParams, query size H, memory size D
    w_c: Array  # [D + H, O]  attentional layer W_c^T on [c_t; h_t]


class AttentionDecoderState(NamedTuple):
    """Attention decoder carry."""

    lstm: LSTMState  # hidden [..., H], cell [..., H]
    attentional: Array | None  # [..., O] h~_{t-1}, fed back by Luong's input feeding; else None


class AttentionDecoder(NamedTuple):
    """An LSTM decoder that attends over a memory at every step.

    Attributes:
      init: ``init(key, input_size, memory_size, *, dtype=jnp.float32) -> params``.
      init_carry: ``init_carry(params, batch_shape=()) -> carry`` of zeros.
      precompute: ``precompute(params, memory[..., S, D], memory_mask[..., S]=None) ->``
        :class:`AttentionMemory` (masked rows zeroed, memory side projected), once per memory.
      step: ``step(params, carry, x[..., I], memory, memory_mask=None) -> (carry, y[..., O],
        weights[..., S])``, one step; ``memory`` raw or precomputed (for greedy decoding).
      apply: ``apply(params, xs[..., T, I], memory[..., S, D], memory_mask[..., S]=None,
        carry=None, *, lengths=None) -> (ys[..., T, O], carry, weights[..., T, S])``: teacher
        forcing, one ``lax.scan`` (:func:`lstm_jax.unroll`) with the memory projected before it.
      attention: the :class:`Attention` used.
      hidden_size: ``H``.
      output_size: ``O``.
      name: ``"attention_decoder"``.
      options: the constructor's keyword arguments.
    """

    init: Callable[..., AttentionDecoderParams]
    init_carry: Callable[..., AttentionDecoderState]
    precompute: Callable[..., AttentionMemory]
    step: Callable[..., tuple[AttentionDecoderState, Array, Array]]
    apply: Callable[..., tuple[Array, AttentionDecoderState, Array]]
    attention: Attention
    hidden_size: int
    output_size: int
    name: str
    options: Mapping[str, Any]

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{self.name}({opts})"


class _Bound(NamedTuple):
    """What the scan body reads: the decoder's params and the precomputed memory and mask."""

    decoder: AttentionDecoderParams
    memory: AttentionMemory
    mask: Array | None


def _no_init(*args, **kwargs):
    raise TypeError("the bound attention decoder cell has no init; use AttentionDecoder.init.")


ATTENTIONS = ("additive", "dot", "general")


def attention_decoder(
    hidden_size: int,
    attention: str | Attention = "additive",
    *,
    style: str = "luong",
    input_feeding: bool | None = None,
    attention_size: int | None = None,
    scale: bool = False,
    output_size: int | None = None,
    forget_bias: float = 1.0,
    kernel_init: inits.Initializer | None = None,
) -> AttentionDecoder:
    r"""An LSTM decoder that reads a context vector from a memory at every step.

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
    for :math:`x_t` (projected for all steps at once before the scan) and ``w_feed``
    ``[F, 4H]`` for the part only known inside the loop (:math:`\tilde h_{t-1}` or
    :math:`\mathrm{ctx}_t`); :math:`[x; f] W = x W_x + f W_{feed}`. The memory-side
    projection of the attention is done once, before the scan.

    Bahdanau's own readout is a maxout layer over :math:`(s_{t-1}, E y_{t-1}, \mathrm{ctx}_t)`
    and his recurrent unit a GRU; here both styles end in Luong's attentional layer
    :math:`\tilde h_t` so they share one output contract (``O`` wide, put a linear vocabulary
    readout on top), and the recurrent unit is the library's LSTM.

    Args:
      hidden_size: ``H``, the LSTM's size (also the attention's query size).
      attention: ``"additive"`` (:func:`additive_attention`), ``"dot"`` or ``"general"``
        (:func:`multiplicative_attention`), or an :class:`Attention`. ``"dot"`` needs the
        memory size ``D == H``.
      style: ``"luong"`` or ``"bahdanau"``.
      input_feeding: Luong's input feeding (default True for ``"luong"``); must be left
        unset (or False) for ``"bahdanau"``, whose LSTM already reads the context.
      attention_size: ``A`` for additive attention (default ``H``).
      scale: divide multiplicative scores by ``sqrt(K)``.
      output_size: ``O``, the width of :math:`\tilde h_t` (default ``H``).
      forget_bias: the LSTM's initial forget-gate bias.
      kernel_init: initialiser for ``w_feed`` (per gate block), ``w_c`` and the attention's
        weights (default Glorot uniform).

    Returns:
      An :class:`AttentionDecoder` with :class:`AttentionDecoderParams` and
      :class:`AttentionDecoderState`.
    """
    H = _checks.positive_int("hidden_size", hidden_size)
    _checks.choice("style", style, ("luong", "bahdanau"))
    O = H if output_size is None else _checks.positive_int("output_size", output_size)
    if style == "bahdanau" and input_feeding:
        raise ValueError("`input_feeding` applies to style='luong' only: Bahdanau's LSTM already "
                         "reads the context at every step.")
    feeding = style == "luong" and (input_feeding is None or bool(input_feeding))
    kernel_init = kernel_init or inits.glorot_uniform()
    if isinstance(attention, Attention):
        if attention_size is not None or scale:
            raise ValueError("`attention_size` and `scale` configure an attention given by name; an "
                             f"Attention object ({attention!r}) is already configured.")
        attn = attention
    else:
        _checks.choice("attention", attention, ATTENTIONS)
        if attention == "additive":
            A = H if attention_size is None else _checks.positive_int("attention_size", attention_size)
            attn = additive_attention(A, kernel_init=kernel_init)
        else:
            attn = multiplicative_attention(attention, scale=scale, kernel_init=kernel_init)
    cell = lstm(H, forget_bias=forget_bias)
    options = dict(hidden_size=H, attention=attn.name, style=style, input_feeding=feeding,
                   attention_options=dict(attn.options), output_size=O, forget_bias=forget_bias)

    def check_params(params):
        if not isinstance(params, AttentionDecoderParams):
            raise TypeError(f"`params` must be AttentionDecoderParams (from this decoder's init), "
                            f"got {type(params).__name__}.")
        got = tuple(jnp.shape(params.w_c))
        if len(got) != 2 or got[0] <= H or got[1] != O or (params.w_feed is None) == (style == "bahdanau" or feeding):
            raise ValueError(f"`params` do not fit this decoder (H={H}, O={O}, style={style!r}, "
                             f"input_feeding={feeding}); `params.w_c` has shape {got}. Were they made by "
                             "another decoder?")

    def memory_size_of(params):
        return params.w_c.shape[0] - H  # w_c is [D + H, O]

    def init(key, input_size, memory_size, *, dtype=jnp.float32):
        I = _checks.positive_int("input_size", input_size)
        D = _checks.positive_int("memory_size", memory_size)
        dtype = _checks.floating_dtype("dtype", dtype)
        kl, kf, ka, kc = jax.random.split(key, 4)
        F = D if style == "bahdanau" else (O if feeding else None)
        return AttentionDecoderParams(
            lstm=cell.init(kl, I, dtype=dtype),
            w_feed=None if F is None else inits.init_blocks(kernel_init, kf, F, H, 4, dtype),
            attention=attn.init(ka, H, D, dtype=dtype),
            w_c=kernel_init(kc, (D + H, O), dtype),
        )

    def init_carry(params, batch_shape=()):
        check_params(params)
        batch_shape = _checks.batch_shape(batch_shape)
        dtype = params.w_c.dtype
        return AttentionDecoderState(lstm=cell.init_carry(params.lstm, batch_shape),
                                     attentional=jnp.zeros(batch_shape + (O,), dtype) if feeding else None)

    def precompute(params, memory, memory_mask=None):
        check_params(params)
        shape = _check_memory("memory", memory, memory_size_of(params), params.w_c.dtype)
        _check_mask("memory_mask", memory_mask, shape)
        return attn.precompute(params.attention, memory, memory_mask)

    def recur(params, carry, px, memory, mask):
        state = carry.lstm
        if style == "bahdanau":
            context, weights = attn.apply(params.attention, state.hidden, memory, mask)  # from h_{t-1}
            state, h = cell.recur(params.lstm, state, px + context @ params.w_feed)
        else:
            if feeding:
                px = px + carry.attentional @ params.w_feed
            state, h = cell.recur(params.lstm, state, px)
            context, weights = attn.apply(params.attention, h, memory, mask)  # from h_t
        y = jnp.tanh(jnp.concatenate([context, h], axis=-1) @ params.w_c)  # [..., O]
        return AttentionDecoderState(lstm=state, attentional=y if feeding else None), y, weights

    def bound_memory(params, memory, memory_mask):
        if isinstance(memory, AttentionMemory):
            _check_mask("memory_mask", memory_mask, tuple(jnp.shape(memory.values)))
            return memory
        return precompute(params, memory, memory_mask)

    def step(params, carry, x, memory, memory_mask=None):
        check_params(params)
        if not isinstance(carry, AttentionDecoderState):
            raise TypeError(f"`carry` must be an AttentionDecoderState (see `init_carry`), got "
                            f"{type(carry).__name__}.")
        memory = bound_memory(params, memory, memory_mask)
        return recur(params, carry, cell.project(params.lstm, x), memory, memory_mask)

    def bound_recur(bound, carry, px, with_gates):
        carry, y, weights = recur(bound.decoder, carry, px, bound.memory, bound.mask)
        return (carry, y, {"attention": weights}) if with_gates else (carry, y)

    bound_cell = make_cell(
        name="attention_decoder", options=options, hidden_size=H, output_size=O, init=_no_init,
        init_carry=lambda bound, batch_shape=(): init_carry(bound.decoder, batch_shape),
        project=lambda bound, xs: cell.project(bound.decoder.lstm, xs), recur_impl=bound_recur)

    def apply(params, xs, memory, memory_mask=None, carry=None, *, lengths=None):
        check_params(params)
        xs_shape = tuple(jnp.shape(xs))
        if len(xs_shape) < 2:
            raise ValueError(f"`xs` must have shape [..., T, I] (at least 2 axes), got shape {xs_shape}.")
        mem = bound_memory(params, memory, memory_mask)
        mem_batch = tuple(jnp.shape(mem.values))[:-2]
        if mem_batch != xs_shape[:-2]:
            raise ValueError(f"`memory` must have the batch shape of `xs` {xs_shape[:-2]} in front of "
                             f"[S, D], got shape {tuple(jnp.shape(mem.values))}.")
        ys, carry, aux = unroll(bound_cell, _Bound(params, mem, memory_mask), xs, carry, lengths=lengths,
                                return_gates=True)
        return ys, carry, aux.gates["attention"]

    return AttentionDecoder(init=init, init_carry=init_carry, precompute=precompute, step=step,
                            apply=apply, attention=attn, hidden_size=H, output_size=O,
                            name="attention_decoder", options=options)


# ------------------------------------------------------------------------------ seq2seq


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
      decoder: the :class:`AttentionDecoder`.
      vocab_size: ``V``.
    """

    init: Callable[..., Seq2SeqParams]
    encode: Callable[..., tuple[Array, Array]]
    apply: Callable[..., tuple[Array, Array]]
    greedy: Callable[..., tuple[Array, Array]]
    encoder: Layer
    decoder: AttentionDecoder
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
    r"""A tiny attention encoder–decoder over tokens ``0 .. V-1`` (for tests and demos).

    .. math::

        \text{memory} &= \mathrm{BiLSTM}(E_{src}[\text{src}]) \quad [\ldots, S, 2H]
            \;(\text{or an LSTM}, [\ldots, S, H]) \\
        y_t, \alpha_t &= \mathrm{decoder}(E_{tgt}[\text{tgt\_in}_t], \text{memory}) \\
        \text{logits}_t &= y_t W_{out} + b_{out}

    Source positions at or past ``src_lengths`` are masked out of the attention (the
    bidirectional encoder reads each sequence within its length). The decoder starts from
    a zero carry: all it knows about the source comes through attention. Token ids are not
    reserved; the caller picks its padding and start tokens.

    Args:
      vocab_size: ``V``, shared by source and target.
      embed_size: ``E``.
      hidden_size: ``H`` of the decoder and of each encoder direction.
      attention: ``"additive"``, ``"dot"`` (needs a unidirectional encoder) or ``"general"``.
      style: the decoder's ``"luong"`` or ``"bahdanau"``.
      input_feeding: see :func:`attention_decoder`.
      bidirectional_encoder: a bidirectional (concat) LSTM encoder, else a forward LSTM.

    Returns:
      A :class:`Seq2Seq`.
    """
    V = _checks.positive_int("vocab_size", vocab_size)
    E = _checks.positive_int("embed_size", embed_size)
    H = _checks.positive_int("hidden_size", hidden_size)
    encoder = bidirectional(lstm(H), lstm(H)) if bidirectional_encoder else layer(lstm(H))
    decoder = attention_decoder(H, attention, style=style, input_feeding=input_feeding)

    def init(key, *, dtype=jnp.float32):
        dtype = _checks.floating_dtype("dtype", dtype)
        ks, kt, ke, kd, ko = jax.random.split(key, 5)
        embed = jax.nn.initializers.normal(1.0)
        return Seq2SeqParams(
            src_embed=embed(ks, (V, E), dtype), tgt_embed=embed(kt, (V, E), dtype),
            encoder=encoder.init(ke, E, dtype=dtype),
            decoder=decoder.init(kd, E, encoder.output_size, dtype=dtype),
            w_out=jax.nn.initializers.lecun_normal()(ko, (decoder.output_size, V), dtype),
            b_out=jnp.zeros((V,), dtype))

    def encode(params, src, src_lengths):
        _check_tokens("src", src, V)
        src_lengths = jnp.asarray(src_lengths)
        memory, _ = encoder.apply(params.encoder, params.src_embed[src], lengths=src_lengths)  # [..., S, D]
        S = jnp.shape(src)[-1]
        mask = jnp.arange(S, dtype=jnp.int32) < jnp.asarray(src_lengths).astype(jnp.int32)[..., None]  # [..., S]
        return memory, mask

    def apply(params, src, src_lengths, tgt_in, *, tgt_lengths=None):
        _check_tokens("tgt_in", tgt_in, V)
        memory, mask = encode(params, src, src_lengths)
        ys, _, weights = decoder.apply(params.decoder, params.tgt_embed[tgt_in], memory, mask,
                                       lengths=tgt_lengths)
        return ys @ params.w_out + params.b_out, weights

    def greedy(params, src, src_lengths, start_token, num_steps):
        n = _checks.positive_int("num_steps", num_steps)
        memory, mask = encode(params, src, src_lengths)
        mem = decoder.precompute(params.decoder, memory, mask)
        batch_shape = tuple(jnp.shape(src))[:-1]
        token = jnp.full(batch_shape, start_token, jnp.int32)

        def body(carry, _):
            state, token = carry
            state, y, weights = decoder.step(params.decoder, state, params.tgt_embed[token], mem, mask)
            token = jnp.argmax(y @ params.w_out + params.b_out, axis=-1).astype(jnp.int32)
            return (state, token), (token, weights)

        init_state = decoder.init_carry(params.decoder, batch_shape)
        _, (tokens, weights) = jax.lax.scan(body, (init_state, token), None, length=n)
        return jnp.moveaxis(tokens, 0, -1), jnp.moveaxis(weights, 0, -2)

    return Seq2Seq(init=init, encode=encode, apply=apply, greedy=greedy, encoder=encoder,
                   decoder=decoder, vocab_size=V)
