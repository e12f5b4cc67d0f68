"""xLSTM cells (Beck et al. 2024): the sLSTM and the mLSTM, with the mLSTM's parallel form.

Both cells replace the sigmoid input gate of the LSTM by an exponential one, ``i_t =
exp(\\tilde i_t)``, and keep the sums it feeds finite with a *stabiliser state* ``m_t``, a
running maximum of the log gate values: every stored quantity (cell, normaliser, matrix
memory) is kept multiplied by ``exp(-m_t)``. The outputs are ratios of two such quantities,
so the factor cancels and the stabilised cell computes *exactly* the unstabilised equations
while no gate's ``exp`` ever sees a positive argument. (This exponential gating is why the
cells do not use :func:`lstm_jax.ops.lstm_update`, whose gates are sigmoids.)

* :func:`slstm`: scalar memory with a normaliser and memory mixing through a block-diagonal
  (multi-head) recurrent matrix.
* :func:`mlstm`: a ``[Dk, Dv]`` matrix memory per head written with the covariance rule
  ``C_t = f_t C_{t-1} + i_t v_t k_t^T``; no hidden-to-hidden recurrence, so ``project``
  computes every query, key, value and gate for all steps at once, and its form
  ``"parallel"`` (``lstm_jax.unroll(cell, params, xs, impl="parallel")``) computes every
  output at once in the quadratic, attention-like form: the same outputs and final carry
  as the scan.

Reference: M. Beck, K. Pöppel, M. Spanring, A. Auer, O. Prudnikova, M. Kopp, G. Klambauer,
J. Brandstetter, S. Hochreiter, "xLSTM: Extended Long Short-Term Memory", NeurIPS 2024,
arXiv:2405.04517 (sLSTM and its stabilisation: Sec. 2.2; mLSTM: Sec. 2.3; the stabilised
and the parallel mLSTM: the appendix). Where the paper leaves a detail open (the first step
from the zero state), we follow the official code (github.com/NX-AI/xlstm) and say so.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax import _checks
from lstm_jax import initializers as inits
from lstm_jax.cell import Cell, CellConfig, SequenceForm
from lstm_jax.cells.base import initializer, make_cell, or_default, set_fields

Array = jax.Array

# sLSTM: fused gate blocks along the last axis of w_x and b (each [H]) and of every head's
# recurrent block w_h[k] (each [Dh]); the official code's order (i, f, z, o).
SLSTM_GATE_ORDER = ("input", "forget", "candidate", "output")
# mLSTM: fused blocks along the last axis of w_x and b: (q, k, v, o) of width H each, then
# the per-head scalar gates (i, f) of width NH each.
MLSTM_BLOCK_ORDER = ("query", "key", "value", "output", "input", "forget")
FORGET_GATES = ("sigmoid", "exp")
DEFAULT_FORGET_BIAS = {"sigmoid": 1.0, "exp": 0.0}


class SLSTMParams(NamedTuple):
    """sLSTM parameters (weights ``[in, out]``); ``Dh = H / NH`` units per head."""

    w_x: Array  # [I, 4*H]  input kernel, blocks (i, f, z, o) of [I, H]
    w_h: Array  # [NH, Dh, 4*Dh]  head k's recurrent block: h_{t-1}[head k] -> (i, f, z, o)[head k]
    b: Array  # [4*H]  bias, blocks (i, f, z, o)


class SLSTMState(NamedTuple):
    """sLSTM carry. ``cell`` and ``normalizer`` are stored stabilised (times ``exp(-m_t)``)."""

    hidden: Array  # [..., H]  h_t
    cell: Array  # [..., H]  c_t
    normalizer: Array  # [..., H]  n_t
    stabilizer: Array  # [..., H]  m_t


class MLSTMParams(NamedTuple):
    """mLSTM parameters (weights ``[in, out]``); ``Dh = H / NH`` = key size = value size."""

    w_x: Array  # [I, 4*H + 2*NH]  blocks (q, k, v, o) of [I, H], then (i, f) of [I, NH]
    b: Array  # [4*H + 2*NH]  same blocks


class MLSTMState(NamedTuple):
    """mLSTM carry, stored stabilised (times ``exp(-m_t)``) and flattened per example.

    Every leaf is ``[..., n]`` (like every other carry, so that :func:`lstm_jax.unroll` can
    mask it with ``lengths``); ``matrix.reshape(*batch, NH, Dh, Dh)`` gives ``C_t^T`` per head
    (``[Dk, Dv]``: row ``a`` is key unit ``a``), ``normalizer.reshape(*batch, NH, Dh)`` gives
    ``n_t`` per head.
    """

    matrix: Array  # [..., NH*Dh*Dh]  C_t^T, [NH, Dk, Dv] flattened
    normalizer: Array  # [..., NH*Dh]  n_t, [NH, Dk] flattened
    stabilizer: Array  # [..., NH]  m_t


# ------------------------------------------------------------------------------------ configs

@dataclasses.dataclass(frozen=True, repr=False)
class _XLSTMConfig(CellConfig):
    """What the sLSTM and mLSTM configs share: heads, the forget gate and the input-side
    initialisers (checked here)."""

    hidden_size: int
    num_heads: int = 1
    forget_gate: str = "sigmoid"
    forget_bias: float | None = None
    kernel_init: inits.Initializer | None = None
    bias_init: inits.Initializer | None = None

    def __post_init__(self):
        H = _checks.positive_int("hidden_size", self.hidden_size)
        NH = _checks.positive_int("num_heads", self.num_heads)
        if H % NH:
            raise ValueError(f"`hidden_size` ({H}) must be divisible by `num_heads` ({NH}).")
        forget_bias = self.forget_bias
        if forget_bias is not None:
            if isinstance(forget_bias, bool) or not isinstance(forget_bias, (int, float, np.floating, np.integer)):
                raise TypeError(f"`forget_bias` must be a number or None, got {forget_bias!r}.")
            forget_bias = float(forget_bias)
        set_fields(self, hidden_size=H, num_heads=NH, forget_bias=forget_bias,
                   forget_gate=_checks.choice("forget_gate", self.forget_gate, FORGET_GATES),
                   kernel_init=initializer("kernel_init", self.kernel_init),
                   bias_init=initializer("bias_init", self.bias_init))

    @property
    def head_size(self) -> int:
        """``Dh = H / NH``."""
        return self.hidden_size // self.num_heads

    @property
    def initial_forget_bias(self) -> float:
        """``forget_bias``, or the forget gate's default (1.0 sigmoid, 0.0 exponential)."""
        return DEFAULT_FORGET_BIAS[self.forget_gate] if self.forget_bias is None else self.forget_bias


@dataclasses.dataclass(frozen=True, repr=False)
class SLSTMConfig(_XLSTMConfig):
    """Hyper-parameters of :func:`slstm` (see there)."""

    constructor = "slstm"
    recurrent_init: inits.Initializer | None = None

    def __post_init__(self):
        super().__post_init__()
        set_fields(self, recurrent_init=initializer("recurrent_init", self.recurrent_init))

    def build(self) -> Cell:
        return _slstm_cell(self)


@dataclasses.dataclass(frozen=True, repr=False)
class MLSTMConfig(_XLSTMConfig):
    """Hyper-parameters of :func:`mlstm` (see there)."""

    constructor = "mlstm"

    def build(self) -> Cell:
        return _mlstm_cell(self)


def _log_forget(kind: str, pre: Array) -> Array:
    """``log f_t``: ``log sigmoid(f~)`` (computed stably) or ``f~`` for the exponential gate."""
    return jax.nn.log_sigmoid(pre) if kind == "sigmoid" else pre


# ------------------------------------------------------------------------------------ sLSTM

def slstm(
    hidden_size: int,
    *,
    num_heads: int = 1,
    forget_gate: str = "sigmoid",
    forget_bias: float | None = None,
    kernel_init: inits.Initializer | None = None,
    recurrent_init: inits.Initializer | None = None,
    bias_init: inits.Initializer | None = None,
) -> Cell:
    r"""sLSTM: scalar memory, exponential gating, block-diagonal memory mixing (xLSTM).

    Pre-activations read the input and the previous hidden state; the recurrent matrices
    ``R`` are block-diagonal with ``NH`` blocks of ``Dh = H / NH`` units (heads), so memory
    mixes only within a head:

    .. math::

        \tilde\imath_t, \tilde f_t, \tilde z_t, \tilde o_t
            &= x_t W_{x\{i,f,z,o\}} + h_{t-1} R_{\{i,f,z,o\}} + b_{\{i,f,z,o\}} \\
        z_t = \tanh(\tilde z_t), \quad o_t &= \sigma(\tilde o_t), \quad
        \log i_t = \tilde\imath_t, \quad
        \log f_t = \log\sigma(\tilde f_t) \ (\text{or } \tilde f_t) \\
        c_t = f_t c_{t-1} + i_t z_t, \quad n_t &= f_t n_{t-1} + i_t, \quad
        h_t = o_t \odot c_t / n_t

    computed in the paper's stabilised form (Sec. 2.2): with the stabiliser state ``m``,

    .. math::

        m_t &= \max(\log f_t + m_{t-1}, \ \log i_t) \\
        i'_t &= \exp(\log i_t - m_t), \quad f'_t = \exp(\log f_t + m_{t-1} - m_t) \\
        c_t &= f'_t c_{t-1} + i'_t z_t, \quad n_t = f'_t n_{t-1} + i'_t, \quad
        h_t = o_t \odot c_t / n_t

    Both exponents are ``<= 0`` and one of them is ``0``, so ``i'_t, f'_t \in [0, 1]``; the
    stored ``c_t, n_t`` are the paper's times ``\exp(-m_t)``, and ``h_t`` is unchanged.

    **Initial state and the first step.** ``init_carry`` is all zeros, as in the paper and
    the official code (``h_0 = c_0 = n_0 = m_0 = 0``). A unit whose normaliser is exactly
    zero holds no memory, and for it the step sets ``m_t = \log i_t`` and ``f'_t = 0`` (the
    official code's first-step rule ``m_1 = \tilde\imath_1``, applied per unit, with the
    ``0 \cdot c_{t-1}`` term dropped instead of computed): then ``i'_t = 1`` and ``n_t = 1``,
    so the first step never divides ``0 / 0`` however negative the input gate is (the plain
    ``\max`` rule would underflow ``i'_1`` to 0 once ``\tilde\imath_1 < \log f_1 - 87`` in
    float32). Afterwards ``n_t \ge \min(n_{t-1}, 1)`` (one of ``i'_t, f'_t`` is exactly 1),
    so from the zero state ``n_t \ge 1`` at every step and ``|c_t / n_t| \le 1``.

    Args:
      hidden_size: ``H``.
      num_heads: ``NH``, the number of diagonal blocks of the recurrent matrices; must
        divide ``H``. ``NH = 1`` is a dense recurrence, ``NH = H`` a diagonal one.
      forget_gate: ``"sigmoid"`` (default; the official code's choice) or ``"exp"``
        (``f_t = \exp(\tilde f_t)``); the paper allows both.
      forget_bias: added to the forget block of the initial bias (default 1.0 for the
        sigmoid gate, 0.0, i.e. ``f = 1``, for the exponential one).
      kernel_init: initialiser of each ``[I, H]`` input block (default Glorot uniform).
      recurrent_init: initialiser of each head's ``[Dh, Dh]`` block per gate (default
        orthogonal).
      bias_init: initialiser of each ``[H]`` bias block (default zeros).

    Returns:
      A :class:`~lstm_jax.Cell` with :class:`SLSTMConfig`, :class:`SLSTMParams` and
      :class:`SLSTMState`; ``project(params, xs[..., I]) -> [..., 4*H]`` (blocks ``i, f, z,
      o``); ``y_t = h_t [..., H]``. Its gates are ``input`` = ``i'_t``, ``forget`` = ``f'_t``
      (the stabilised gates), ``candidate`` = ``z_t``, ``output`` = ``o_t``, and ``cell``,
      ``normalizer``, ``stabilizer``, ``hidden``.

    Raises:
      ValueError: ``hidden_size``/``num_heads`` not positive ints, or ``hidden_size`` not
        divisible by ``num_heads``; an unknown ``forget_gate``.
      TypeError: a ``forget_bias`` that is not a number or None.
    """
    return SLSTMConfig(hidden_size, num_heads=num_heads, forget_gate=forget_gate, forget_bias=forget_bias,
                       kernel_init=kernel_init, recurrent_init=recurrent_init, bias_init=bias_init).build()


def _slstm_cell(config: SLSTMConfig) -> Cell:
    H, NH, Dh = config.hidden_size, config.num_heads, config.head_size
    forget_gate = config.forget_gate
    kernel_init = or_default(config.kernel_init, inits.glorot_uniform)
    recurrent_init = or_default(config.recurrent_init, inits.orthogonal)
    bias_init = or_default(config.bias_init, lambda: inits.zeros)

    def init(key, input_size, dtype):
        kx, kh, kb = jax.random.split(key, 3)
        b = inits.init_blocks(bias_init, kb, None, H, 4, dtype)
        b = b.at[H:2 * H].add(jnp.asarray(config.initial_forget_bias, dtype))
        w_h = jnp.stack([inits.init_blocks(recurrent_init, k, Dh, Dh, 4, dtype)
                         for k in jax.random.split(kh, NH)])
        return SLSTMParams(w_x=inits.init_blocks(kernel_init, kx, input_size, H, 4, dtype), w_h=w_h, b=b)

    def init_carry(params, batch_shape):
        zeros = jnp.zeros(batch_shape + (H,), params.w_x.dtype)
        return SLSTMState(hidden=zeros, cell=zeros, normalizer=zeros, stabilizer=zeros)

    def project(params, xs):
        return xs @ params.w_x + params.b

    def recur(params, carry, px, *, aux=False):
        batch = carry.hidden.shape[:-1]
        rec = jnp.einsum("...kd,kde->...ke", carry.hidden.reshape(batch + (NH, Dh)), params.w_h)
        # [..., NH, (i, f, z, o), Dh] -> [..., (i, f, z, o), NH, Dh]: the layout of px
        rec = jnp.swapaxes(rec.reshape(batch + (NH, 4, Dh)), -3, -2).reshape(batch + (4 * H,))
        i_pre, f_pre, z_pre, o_pre = jnp.split(px + rec, 4, axis=-1)
        log_f_plus_m = _log_forget(forget_gate, f_pre) + carry.stabilizer
        empty = carry.normalizer == 0  # no memory yet: start the stabiliser at log i_t
        m = jnp.where(empty, i_pre, jnp.maximum(log_f_plus_m, i_pre))
        i = jnp.exp(i_pre - m)
        f = jnp.where(empty, 0.0, jnp.exp(jnp.where(empty, 0.0, log_f_plus_m - m)))
        z, o = jnp.tanh(z_pre), jax.nn.sigmoid(o_pre)
        c = f * carry.cell + i * z
        n = f * carry.normalizer + i
        h = o * (c / n)
        new = SLSTMState(hidden=h, cell=c, normalizer=n, stabilizer=m)
        if not aux:
            return new, h
        return new, h, {"input": i, "forget": f, "candidate": z, "output": o, "cell": c,
                        "normalizer": n, "stabilizer": m, "hidden": h}

    return make_cell(config, init=init, init_carry=init_carry, project=project, recur=recur)


# ------------------------------------------------------------------------------------ mLSTM

def _split_mlstm(px: Array, H: int, NH: int):
    """``px[..., 4H + 2NH]`` -> ``q, k, v [..., NH, Dh]``, ``o~ [..., H]``, ``i~, f~ [..., NH]``."""
    heads = lambda a: a.reshape(a.shape[:-1] + (NH, H // NH))
    q, k, v, o_pre = (px[..., j * H:(j + 1) * H] for j in range(4))
    return heads(q), heads(k), heads(v), o_pre, px[..., 4 * H:4 * H + NH], px[..., 4 * H + NH:]


def mlstm(
    hidden_size: int,
    *,
    num_heads: int = 1,
    forget_gate: str = "sigmoid",
    forget_bias: float | None = None,
    kernel_init: inits.Initializer | None = None,
    bias_init: inits.Initializer | None = None,
) -> Cell:
    r"""mLSTM: a matrix memory per head with the covariance update rule (xLSTM).

    Each of the ``NH`` heads has ``Dh = H / NH`` units, a ``[Dh, Dh]`` matrix memory, and
    *scalar* exponential input and forget gates; queries, keys, values and gates depend on
    the input only (paper Sec. 2.3; ``d = Dh``):

    .. math::

        q_t = x_t W_q + b_q, \quad k_t &= x_t W_k / \sqrt{d} + b_k, \quad
        v_t = x_t W_v + b_v, \quad o_t = \sigma(x_t W_o + b_o) \\
        \log i_t = x_t w_i + b_i, \quad
        \log f_t &= \log\sigma(x_t w_f + b_f) \ (\text{or } x_t w_f + b_f) \\
        C_t = f_t C_{t-1} + i_t v_t k_t^\top, \quad n_t &= f_t n_{t-1} + i_t k_t, \quad
        h_t = o_t \odot \frac{C_t q_t}{\max(|n_t^\top q_t|, 1)}

    computed in the stabilised form of the paper's appendix (as in the official code):

    .. math::

        m_t &= \max(\log f_t + m_{t-1}, \ \log i_t), \quad
        i'_t = \exp(\log i_t - m_t), \quad f'_t = \exp(\log f_t + m_{t-1} - m_t) \\
        C_t &= f'_t C_{t-1} + i'_t v_t k_t^\top, \quad n_t = f'_t n_{t-1} + i'_t k_t, \quad
        h_t = o_t \odot \frac{C_t q_t}{\max(|n_t^\top q_t|, \ \exp(-m_t))}

    The stored ``C_t, n_t`` are the paper's times ``\exp(-m_t)``; numerator and denominator
    carry the same factor, so ``h_t`` is exactly the unstabilised value.

    **Initial state.** ``init_carry`` is all zeros, as in the official code. A head whose
    memory is exactly zero (``C_{t-1} = 0`` and ``n_{t-1} = 0``: it stores nothing, so any
    ``m_{t-1}`` describes it) gets ``m_t = \log i_t`` and ``f'_t = 0``, as if ``m_0 =
    -\infty``. This is the stabiliser of the paper's parallel form (``m_t = \max_s \tilde
    D_{ts}``), which the parallel form therefore matches exactly, and it keeps the first
    write from underflowing: with ``m_0 = 0`` and the plain ``\max``, an exponential forget
    gate with ``\log f_1 \gg \log i_1`` (say ``\tilde f_1 = 100``) would give ``i'_1 =
    \exp(\log i_1 - \log f_1) = 0`` in float32 and lose it. (The sLSTM uses the same rule.)

    **Range.** ``m_t \ge \log i_t`` at every step. The denominator's ``\exp(-m_t)`` is
    capped at ``e^{44}`` (float32/bfloat16; ``e^{355}`` in float64) so that it and its square
    stay finite: for ``m_t < -44`` (input-gate pre-activations below -44) ``h_t`` is then
    ``|C_t q_t| e^{-44}`` instead of the still smaller exact value, an absolute difference
    below ``10^{-19} |C_t q_t|``. At the other end, when ``\exp(-m_t)`` underflows (``m_t
    \gtrsim 87`` in float32/bfloat16, 708 in float64) the unstabilised lower bound ``1`` is
    lost and the denominator is clamped at the dtype's smallest normal number, so outputs
    stay finite (0 for a query orthogonal to ``n_t``); gradients through that clamp are not.
    Everywhere else the stabilised and unstabilised equations agree to float rounding.

    **Parallel form** (the paper's appendix, extended to a nonzero initial state and to
    resets). Per head, let step ``t`` belong to the segment that starts at step ``r_t`` (0,
    or the last reset at or before ``t``) from the state ``(C^0, n^0, m^0)`` (the initial
    carry, or the reset carry). With the log-gate matrix and the start column

    .. math::

        \tilde D_{ts} &= \textstyle\sum_{s < u \le t} \log f_u + \log i_s
            \quad (r_t \le s \le t), \qquad -\infty \quad \text{(otherwise)} \\
        G_t &= \textstyle\sum_{r_t \le u \le t} \log f_u + m^0
            \quad (-\infty \text{ if } C^0 = 0 \text{ and } n^0 = 0) \\
        m_t &= \max\big(G_t, \ \max_s \tilde D_{ts}\big), \qquad
        D'_{ts} = \exp(\tilde D_{ts} - m_t), \quad g_t = \exp(G_t - m_t), \quad
        \tilde C_{ts} = (q_t^\top k_s) \, D'_{ts} \\
        h_t &= o_t \odot \frac{\sum_s \tilde C_{ts} v_s + g_t \, C^{0\top} q_t}
                               {\max(|\sum_s \tilde C_{ts} + g_t \, n^{0\top} q_t|, \ \exp(-m_t))}

    every step is computed at once; ``m_t`` is exactly the recurrent stabiliser, so the
    final carry (``C = g_T C^0 + \sum_s D'_{Ts} v_s k_s^\top``, likewise ``n``, and ``m_T``)
    equals the scan's too. From the zero state without resets this is the paper's form. The
    segment sums are sums over masked ``[T, T]`` matrices, not differences ``F_t - F_s`` of
    cumulative sums, so long sequences lose no precision to cancellation. Steps past a
    sequence's length get ``\log f = 0`` and ``\log i = -\infty``: the carry passes through
    (an empty state that has seen no valid step keeps its ``m^0``).
    It costs ``O(T^2 (NH + H))`` time and ``O(T^2 NH)`` memory per sequence against the
    scan's ``T`` sequential steps of ``O(H Dh)``: for training on short to moderate ``T``;
    the scan for long sequences and step-by-step generation.

    Layout: ``C_t`` is stored transposed, ``[Dk, Dv]`` per head (``\sum i' k v^\top``, the
    official code's layout), so the read-out is ``q_t^\top C_t``; see :class:`MLSTMState`.
    The bias ``b_k`` is not scaled by ``1/\sqrt d`` (as the paper writes ``k_t``).

    Args:
      hidden_size: ``H`` (= ``NH * Dh``; key, value and output size).
      num_heads: ``NH``; must divide ``H``.
      forget_gate: ``"sigmoid"`` (default; the official code's) or ``"exp"``.
      forget_bias: added to the forget block of the initial bias (default 1.0 for the
        sigmoid gate, 0.0 for the exponential one).
      kernel_init: initialiser of each input block, ``[I, H]`` for ``q, k, v, o`` and
        ``[I, NH]`` for ``i, f`` (default Glorot uniform).
      bias_init: initialiser of each bias block (default zeros).

    Returns:
      A :class:`~lstm_jax.Cell` with :class:`MLSTMConfig`, :class:`MLSTMParams` and
      :class:`MLSTMState`; ``project(params, xs[..., I]) -> [..., 4*H + 2*NH]`` (``q, k, v,
      \tilde o`` then ``\log i, \tilde f``; ``k`` already scaled); ``y_t = h_t [..., H]``.
      Its gates are ``input`` = ``i'_t`` and ``forget`` = ``f'_t`` (each head's scalar
      repeated over its ``Dh`` units), ``output`` = ``o_t`` and ``hidden``. Its form
      ``"parallel"`` (``unroll(..., impl="parallel")``; opt-in) runs the whole sequence in
      the quadratic form above, with ``lengths``, ``reverse`` and ``resets``.

    Raises:
      ValueError: ``hidden_size``/``num_heads`` not positive ints, or ``hidden_size`` not
        divisible by ``num_heads``; an unknown ``forget_gate``.
      TypeError: a ``forget_bias`` that is not a number or None.
    """
    return MLSTMConfig(hidden_size, num_heads=num_heads, forget_gate=forget_gate, forget_bias=forget_bias,
                       kernel_init=kernel_init, bias_init=bias_init).build()


def _mlstm_cell(config: MLSTMConfig) -> Cell:
    H, NH, Dh = config.hidden_size, config.num_heads, config.head_size
    forget_gate = config.forget_gate
    kernel_init = or_default(config.kernel_init, inits.glorot_uniform)
    bias_init = or_default(config.bias_init, lambda: inits.zeros)
    P = 4 * H + 2 * NH
    k_scale = np.ones((P,))
    k_scale[H:2 * H] = 1.0 / math.sqrt(Dh)

    def init(key, input_size, dtype):
        kx, kg, kb, kc = jax.random.split(key, 4)
        w_x = jnp.concatenate([inits.init_blocks(kernel_init, kx, input_size, H, 4, dtype),
                               inits.init_blocks(kernel_init, kg, input_size, NH, 2, dtype)], axis=-1)
        b = jnp.concatenate([inits.init_blocks(bias_init, kb, None, H, 4, dtype),
                             inits.init_blocks(bias_init, kc, None, NH, 2, dtype)])
        b = b.at[4 * H + NH:].add(jnp.asarray(config.initial_forget_bias, dtype))
        return MLSTMParams(w_x=w_x, b=b)

    def init_carry(params, batch_shape):
        zeros = lambda n: jnp.zeros(batch_shape + (n,), params.w_x.dtype)
        return MLSTMState(matrix=zeros(NH * Dh * Dh), normalizer=zeros(NH * Dh), stabilizer=zeros(NH))

    def project(params, xs):
        return (xs @ params.w_x) * jnp.asarray(k_scale, params.w_x.dtype) + params.b

    def recur(params, carry, px, *, aux=False):
        del params
        batch = carry.stabilizer.shape[:-1]
        q, k, v, o_pre, i_pre, f_pre = _split_mlstm(px, H, NH)
        C = carry.matrix.reshape(batch + (NH, Dh, Dh))
        n = carry.normalizer.reshape(batch + (NH, Dh))
        log_f_plus_m = _log_forget(forget_gate, f_pre) + carry.stabilizer  # [..., NH]
        empty = _empty(C, n)  # [..., NH] nothing stored
        m = jnp.where(empty, i_pre, jnp.maximum(log_f_plus_m, i_pre))
        i = jnp.exp(i_pre - m)
        f = jnp.where(empty, 0.0, jnp.exp(jnp.where(empty, 0.0, log_f_plus_m - m)))
        C = f[..., None, None] * C + i[..., None, None] * (k[..., :, None] * v[..., None, :])
        n = f[..., None] * n + i[..., None] * k
        num = jnp.einsum("...kd,...kde->...ke", q, C)  # q^T C  [..., NH, Dv]
        den = _denominator(jnp.sum(q * n, axis=-1), m)  # [..., NH]
        h = jax.nn.sigmoid(o_pre) * (num / den[..., None]).reshape(batch + (H,))
        new = MLSTMState(matrix=C.reshape(batch + (NH * Dh * Dh,)),
                         normalizer=n.reshape(batch + (NH * Dh,)), stabilizer=m)
        if not aux:
            return new, h
        per_unit = lambda g: jnp.repeat(g, Dh, axis=-1)
        return new, h, {"input": per_unit(i), "forget": per_unit(f), "output": jax.nn.sigmoid(o_pre),
                        "hidden": h}

    def parallel(params, xs, carry, *, valid, resets, unroll):
        del unroll  # no sequential loop
        px = jnp.swapaxes(project(params, xs), 0, 1)  # [B, T, P]: batch first inside
        ys, final = _mlstm_parallel(
            px, carry, None if valid is None else valid.T, None if resets is None else resets.where.T,
            None if resets is None else resets.carry, H=H, NH=NH, forget_gate=forget_gate)
        return jnp.swapaxes(ys, 0, 1), final

    forms = {"parallel": SequenceForm(parallel, lengths=True, resets=True, auto=False,
                                      note="quadratic (attention-like) parallel form of the paper's appendix")}
    return make_cell(config, init=init, init_carry=init_carry, project=project, recur=recur, forms=forms)


def _empty(C: Array, n: Array) -> Array:
    """``[..., NH]``: heads whose memory ``C [..., NH, Dk, Dv]``, ``n [..., NH, Dk]`` is exactly zero."""
    return jnp.all(n == 0, axis=-1) & jnp.all(C == 0, axis=(-2, -1))


def _denominator(qn: Array, m: Array) -> Array:
    """``max(|n^T q|, exp(-m))`` with ``exp(-m)`` kept finite and the result nonzero.

    ``exp(-m)`` is capped at ``sqrt(max)`` of the dtype (``e^44`` in float32/bfloat16,
    ``e^355`` in float64) so that neither it nor its square (in the gradient) overflows, and
    the result is at least the smallest normal number.
    """
    info = jnp.finfo(qn.dtype)
    cap = 0.5 * math.log(float(info.max))
    return jnp.maximum(jnp.maximum(jnp.abs(qn), jnp.exp(jnp.minimum(-m, cap))), float(info.tiny))


def _mlstm_parallel(px, carry, valid, flags, reset_carry, *, H, NH, forget_gate):
    r"""The mLSTM's parallel form (the equations are in :func:`mlstm`'s docstring).

    Args:
      px: ``[B, T, 4H + 2NH]`` projected inputs, in reading order.
      carry: :class:`MLSTMState` with leaves ``[B, *]``, the state before step 0.
      valid: ``[B, T]`` bool or None: invalid steps keep the state and output zeros.
      flags: ``[B, T]`` bool or None: a flagged step starts a segment from ``reset_carry``
        (an :class:`MLSTMState` with leaves ``[B, *]``).

    Returns:
      ``(ys [B, T, H], final MLSTMState [B, *])``.
    """
    B, T = px.shape[:2]
    Dh = H // NH
    q, k, v, o_pre, log_i, f_pre = _split_mlstm(px, H, NH)  # q, k, v [B, T, NH, Dh]; gates [B, T, NH]
    log_f = _log_forget(forget_gate, f_pre)
    if valid is not None:  # invalid steps: f = 1, i = 0, so the state passes through
        log_f = jnp.where(valid[..., None], log_f, 0.0)
        log_i = jnp.where(valid[..., None], log_i, -jnp.inf)
    log_f, log_i = jnp.swapaxes(log_f, -1, -2), jnp.swapaxes(log_i, -1, -2)  # [B, NH, T]
    t_idx, s_idx = np.arange(T)[:, None], np.arange(T)[None, :]
    same = t_idx >= s_idx  # s reaches t: s <= t, and no reset in (s, t]
    starts = [(carry, None)]  # the states segments start from, and the steps that see each
    if flags is not None:
        segment = jnp.cumsum(flags.astype(jnp.int32), axis=-1)  # [B, T]: resets so far
        same = (same & (segment[:, :, None] == segment[:, None, :]))[:, None]  # [B, 1, T, T]
        starts = [(carry, segment == 0), (reset_carry, segment > 0)]
    # sum_{s < u <= t} log f_u as a cumulative sum down a masked matrix (no F_t - F_s cancellation)
    seg = jnp.cumsum(jnp.where(t_idx > s_idx, log_f[..., :, None], 0.0), axis=-2)  # [B, NH, T, T]
    log_d = jnp.where(same, seg + log_i[..., None, :], -jnp.inf)
    log_f_run = jnp.sum(jnp.where(same, log_f[..., None, :], 0.0), axis=-1)  # [B, NH, T]: sum_{r_t <= u <= t}

    columns = []  # per start state: G_t [B, NH, T] (-inf at steps of other segments), C^0, n^0
    for state, sees in starts:
        C0, n0 = state.matrix.reshape(B, NH, Dh, Dh), state.normalizer.reshape(B, NH, Dh)
        off = _empty(C0, n0)[..., None]  # an empty state carries nothing on
        if sees is not None:
            off = off | ~sees[:, None, :]
        columns.append((jnp.where(off, -jnp.inf, log_f_run + state.stabilizer[..., None]), C0, n0))
    m = jnp.max(log_d, axis=-1)  # [B, NH, T]
    for log_g, _, _ in columns:
        m = jnp.maximum(m, log_g)
    # nothing at all yet (an empty initial state, no valid step): the stabiliser stays; a reset
    # segment always has its valid first step
    m = jnp.where(m == -jnp.inf, carry.stabilizer[..., None], m)
    d = jnp.exp(log_d - m[..., None])
    c_mat = jnp.einsum("btkd,bskd->bkts", q, k) * d  # [B, NH, T, T]
    num = jnp.einsum("bkts,bskd->btkd", c_mat, v)  # [B, T, NH, Dv]
    qn = jnp.sum(c_mat, axis=-1)  # [B, NH, T]
    C = jnp.einsum("bks,bskd,bske->bkde", d[..., -1, :], k, v)  # the state after the last step
    n = jnp.einsum("bks,bskd->bkd", d[..., -1, :], k)
    for log_g, C0, n0 in columns:  # the start states, decayed
        g = jnp.exp(log_g - m)  # [B, NH, T]
        num = num + jnp.swapaxes(g, -1, -2)[..., None] * jnp.einsum("btkd,bkde->btke", q, C0)
        qn = qn + g * jnp.einsum("btkd,bkd->bkt", q, n0)
        C = C + g[..., -1, None, None] * C0
        n = n + g[..., -1, None] * n0
    den = jnp.swapaxes(_denominator(qn, m), -1, -2)  # [B, T, NH]
    ys = jax.nn.sigmoid(o_pre) * (num / den[..., None]).reshape(B, T, H)
    if valid is not None:
        ys = jnp.where(valid[..., None], ys, jnp.zeros_like(ys))
    final = MLSTMState(matrix=C.reshape(B, NH * Dh * Dh), normalizer=n.reshape(B, NH * Dh), stabilizer=m[..., -1])
    return ys, final
