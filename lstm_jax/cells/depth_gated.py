"""The depth-gated LSTM (Yao, Cohn, Vylomova, Duh & Dyer 2015): a stack of LSTM layers whose
memory cells are linked across depth through a learned gate, run with one scan over time.

Layer ``ℓ + 1`` at time ``t`` needs the memory cell ``c_t^ℓ`` of layer ``ℓ`` at the *same*
time step, so the layers cannot be unrolled one after another as :func:`lstm_jax.stack`
does. Instead one composite :class:`~lstm_jax.Cell` steps every layer bottom-up inside a
single ``lax.scan`` (:func:`lstm_jax.unroll`), which gives ``lengths``, ``resets``,
``reverse`` and ``time_major`` for free: ``lj.layer(lj.depth_gated_lstm(64, 3))``.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lstm_jax import _checks
from lstm_jax import initializers as inits
from lstm_jax.cell import Cell, CellConfig
from lstm_jax.cells.base import initializer, make_cell, or_default, set_fields
from lstm_jax.cells.lstm import GATE_ORDER, LSTMState
from lstm_jax.ops import lstm_update, split_blocks

Array = jax.Array


class DepthGatedLSTMParams(NamedTuple):
    """One layer's parameters (weights ``[in, out]``). A depth-gated LSTM's params are a
    tuple of these, bottom layer first. ``G = 4`` for layer 0, ``5`` for the layers above.

    Layer 0 has no lower cell, so no depth gate: its ``depth_*`` fields are None and its
    ``w_x``, ``w_h``, ``b`` and peepholes are exactly those of :func:`lstm_jax.lstm`.
    """

    w_x: Array  # [I_l, G*H]  input kernel, blocks (i, f, g, o[, d]); I_l = I for layer 0, else H
    w_h: Array  # [H, 4*H]    recurrent kernel, blocks (i, f, g, o)
    b: Array  # [G*H]         bias, blocks (i, f, g, o[, d])
    peephole_i: Array | None = None  # [H]  (peephole=True) input gate looks at c_{t-1}
    peephole_f: Array | None = None  # [H]  (peephole=True) forget gate looks at c_{t-1}
    peephole_o: Array | None = None  # [H]  (peephole=True) output gate looks at c_t
    depth_cell: Array | None = None  # [H]  w_cd: this layer's c_{t-1} -> depth gate (layers >= 1)
    depth_lower: Array | None = None  # [H] w_ld: the lower layer's c_t -> depth gate (layers >= 1)


class DepthGatedInput(NamedTuple):
    """Inputs together with the dropout masks between depth levels (what ``noise`` draws).

    Both leaves share the leading axes (``[..., T]`` over a sequence), so the masks ride
    along the time axis through :func:`lstm_jax.unroll`, ``lengths`` and ``reverse``.
    """

    x: Array  # [..., I]
    masks: Array  # [..., (L-1)*H]  the mask of layer ℓ >= 1 is [..., (ℓ-1)*H:ℓ*H], in x's dtype


@dataclasses.dataclass(frozen=True, repr=False)
class DepthGatedLSTMConfig(CellConfig):
    """Hyper-parameters of :func:`depth_gated_lstm` (see there)."""

    constructor = "depth_gated_lstm"
    hidden_size: int
    num_layers: int
    forget_bias: float = 1.0
    depth_bias: float = 0.0
    peephole: bool = False
    dropout_rate: float = 0.0
    kernel_init: inits.Initializer | None = None
    recurrent_init: inits.Initializer | None = None
    bias_init: inits.Initializer | None = None

    def __post_init__(self):
        set_fields(self, hidden_size=_checks.positive_int("hidden_size", self.hidden_size),
                   num_layers=_checks.positive_int("num_layers", self.num_layers),
                   forget_bias=_checks.number("forget_bias", self.forget_bias),
                   depth_bias=_checks.number("depth_bias", self.depth_bias),
                   peephole=_checks.boolean("peephole", self.peephole),
                   dropout_rate=_checks.rate("dropout_rate", self.dropout_rate),
                   kernel_init=initializer("kernel_init", self.kernel_init),
                   recurrent_init=initializer("recurrent_init", self.recurrent_init),
                   bias_init=initializer("bias_init", self.bias_init))

    def build(self) -> Cell:
        return _depth_gated_cell(self)


def depth_gated_lstm(
    hidden_size: int,
    num_layers: int,
    *,
    forget_bias: float = 1.0,
    depth_bias: float = 0.0,
    peephole: bool = False,
    dropout_rate: float = 0.0,
    kernel_init: inits.Initializer | None = None,
    recurrent_init: inits.Initializer | None = None,
    bias_init: inits.Initializer | None = None,
) -> Cell:
    r"""A whole depth-gated LSTM stack as one :class:`~lstm_jax.Cell` (Yao et al. 2015).

    Each step runs the ``L`` layers bottom-up. Layer ``ℓ`` (``ℓ = 0`` at the bottom) reads
    ``x^0_t = x_t`` or ``x^ℓ_t = m^{ℓ-1}_t \odot h^{ℓ-1}_t`` (``m`` the dropout mask, see
    below; 1 without dropout) and computes, with ``\sigma`` the logistic sigmoid and
    ``\odot`` the elementwise product:

    .. math::

        i^ℓ_t &= \sigma(x^ℓ_t W^ℓ_{xi} + h^ℓ_{t-1} W^ℓ_{hi} + p^ℓ_i \odot c^ℓ_{t-1} + b^ℓ_i) \\
        f^ℓ_t &= \sigma(x^ℓ_t W^ℓ_{xf} + h^ℓ_{t-1} W^ℓ_{hf} + p^ℓ_f \odot c^ℓ_{t-1} + b^ℓ_f) \\
        \tilde c^ℓ_t &= \tanh(x^ℓ_t W^ℓ_{xg} + h^ℓ_{t-1} W^ℓ_{hg} + b^ℓ_g) \\
        d^ℓ_t &= \sigma(x^ℓ_t W^ℓ_{xd} + w^ℓ_{cd} \odot c^ℓ_{t-1}
                 + w^ℓ_{ld} \odot c^{ℓ-1}_t + b^ℓ_d) \qquad (ℓ \ge 1) \\
        c^ℓ_t &= d^ℓ_t \odot c^{ℓ-1}_t + f^ℓ_t \odot c^ℓ_{t-1} + i^ℓ_t \odot \tilde c^ℓ_t \\
        o^ℓ_t &= \sigma(x^ℓ_t W^ℓ_{xo} + h^ℓ_{t-1} W^ℓ_{ho} + p^ℓ_o \odot c^ℓ_t + b^ℓ_o) \\
        h^ℓ_t &= o^ℓ_t \odot \tanh(c^ℓ_t)

    and ``y_t = h^{L-1}_t``: each layer is :func:`lstm_jax.ops.lstm_update` with the depth
    term ``d^ℓ_t \odot c^{ℓ-1}_t`` as its ``cell_input``. The depth gate ``d`` is the
    paper's: a full weight on the layer's input, and *diagonal* weights on its own previous
    cell and on the lower layer's current cell. It opens a gated linear path for the memory
    cells across depth, as the forget gate does across time.

    Layer 0 has no lower cell, so its depth term (and depth gate) is absent: it is exactly
    :func:`lstm_jax.lstm` (with the same ``peephole`` option), and ``num_layers=1`` *is* an
    LSTM. All layers share ``H`` (the depth path adds ``c^{ℓ-1}`` to ``c^ℓ``).

    Peepholes ``p`` (Gers & Schmidhuber 2000) are in the paper's gate equations; here they
    are diagonal and optional (``peephole=True``), off by default like :func:`lstm_jax.lstm`,
    so the layers without them are plain PyTorch-style LSTM layers.

    **Dropout** (Zaremba et al. 2014, as in :func:`lstm_jax.stack`) applies to the hidden
    output passed from one layer to the next (the mask ``m^{ℓ-1}_t`` above), never to the
    recurrent ``h``, to the depth path ``c^{ℓ-1}_t`` or to the cell's output. The cell's
    ``noise(key, xs)`` draws the masks and returns ``DepthGatedInput(xs, masks)``;
    ``lj.layer(cell).apply(params, xs, key=key)`` calls it, so dropout is on exactly when
    ``apply`` gets a ``key`` (never in ``step``). For reproducibility the masks are
    ``jax.random.bernoulli(key, 1 - dropout_rate, xs.shape[:-1] + ((L - 1) * H,))`` scaled
    by ``1 / (1 - dropout_rate)`` in ``xs``' dtype: a fresh one per step and sequence, laid
    out like ``xs`` (layer ``ℓ``'s mask is ``[..., (ℓ-1)*H:ℓ*H]``). Inputs that already are a
    :class:`DepthGatedInput` keep their masks. With ``dropout_rate=0`` or one layer the cell
    has no ``noise``.

    Layout: ``w_x`` blocks ``(i, f, g, o)`` plus ``d`` above layer 0 (input and depth-gate
    kernels fused, one matmul per layer); ``w_h`` blocks ``(i, f, g, o)`` (the depth gate
    has no ``h_{t-1}`` term). ``project`` is layer 0's input projection, hoisted out of the
    scan; the upper layers' input projections read ``h^{ℓ-1}_t`` and run inside the step.

    Args:
      hidden_size: ``H``, the number of cells in every layer.
      num_layers: ``L``.
      forget_bias: added to every forget gate's initial bias (default 1.0).
      depth_bias: added to every depth gate's initial bias (default 0.0, so ``d ≈ 0.5`` at
        first when the depth weights start at zero).
      peephole: add diagonal peepholes ``p_i, p_f, p_o`` to every layer (initialised to zero).
      dropout_rate: in ``[0, 1)``; the probability of zeroing each entry passed between layers.
      kernel_init: initialiser for each ``[I_ℓ, H]`` block of ``w_x`` (default Glorot uniform).
      recurrent_init: initialiser for each ``[H, H]`` block of ``w_h`` (default orthogonal).
      bias_init: initialiser for each ``[H]`` bias block (default zeros). The diagonal
        depth weights ``w_cd``, ``w_ld`` start at zero.

    Returns:
      A :class:`~lstm_jax.Cell` with :class:`DepthGatedLSTMConfig`; its params are a tuple of
      :class:`DepthGatedLSTMParams` and its carry a tuple of :class:`~lstm_jax.LSTMState`
      (``hidden``, ``cell``), one per layer, bottom first (the carry layout of
      ``stack([lstm(H)] * L)``). ``project(params, xs)`` takes ``xs [..., I]`` or a
      :class:`DepthGatedInput` and returns ``(xs W^0_x + b^0 [..., 4H], masks [..., L-1, H]
      or None)``; ``y_t = h^{L-1}_t [..., H]``; gates ``input_ℓ``, ``forget_ℓ``,
      ``candidate_ℓ``, ``output_ℓ``, ``cell_ℓ``, ``hidden_ℓ`` for every layer and ``depth_ℓ``
      for ``ℓ >= 1``.

    Raises:
      ValueError: a non-positive ``hidden_size`` or ``num_layers``; a ``dropout_rate``
        outside ``[0, 1)``; a bias that is not a finite number.
      TypeError: a ``peephole`` that is not a bool; an initialiser that is not a hashable
        callable.
    """
    return DepthGatedLSTMConfig(
        hidden_size, num_layers, forget_bias=forget_bias, depth_bias=depth_bias, peephole=peephole,
        dropout_rate=dropout_rate, kernel_init=kernel_init, recurrent_init=recurrent_init,
        bias_init=bias_init).build()


def _depth_gated_cell(config: DepthGatedLSTMConfig) -> Cell:
    H, L, rate = config.hidden_size, config.num_layers, config.dropout_rate
    kernel_init = or_default(config.kernel_init, inits.glorot_uniform)
    recurrent_init = or_default(config.recurrent_init, inits.orthogonal)
    bias_init = or_default(config.bias_init, lambda: inits.zeros)

    def init(key, input_size, dtype):
        out = []
        for n, k in enumerate(jax.random.split(key, L)):
            G = 4 if n == 0 else 5
            kx, kh, kb = jax.random.split(k, 3)
            b = inits.init_blocks(bias_init, kb, None, H, G, dtype)
            b = b.at[H:2 * H].add(jnp.asarray(config.forget_bias, dtype))
            if n > 0:
                b = b.at[4 * H:].add(jnp.asarray(config.depth_bias, dtype))
            zeros = jnp.zeros((H,), dtype)
            out.append(DepthGatedLSTMParams(
                w_x=inits.init_blocks(kernel_init, kx, input_size if n == 0 else H, H, G, dtype),
                w_h=inits.init_blocks(recurrent_init, kh, H, H, 4, dtype),
                b=b,
                peephole_i=zeros if config.peephole else None,
                peephole_f=zeros if config.peephole else None,
                peephole_o=zeros if config.peephole else None,
                depth_cell=zeros if n > 0 else None,
                depth_lower=zeros if n > 0 else None,
            ))
        return tuple(out)

    def init_carry(params, batch_shape):
        zeros = jnp.zeros(batch_shape + (H,), params[0].w_h.dtype)
        return tuple(LSTMState(hidden=zeros, cell=zeros) for _ in range(L))

    def project(params, xs):
        x, masks = (xs.x, xs.masks) if isinstance(xs, DepthGatedInput) else (xs, None)
        if masks is not None:
            masks = masks.reshape(masks.shape[:-1] + (L - 1, H))  # [..., L-1, H]
        return x @ params[0].w_x + params[0].b, masks

    def recur(params, carry, px, *, aux=False):
        px, masks = px
        new, seen = [], {}
        h_low = c_low = None
        for n, (p, state) in enumerate(zip(params, carry)):
            if n == 0:
                z = px  # [..., 4H], projected before the scan
            else:
                x = h_low if masks is None else h_low * masks[..., n - 1, :]  # dropout between layers
                z = x @ p.w_x + p.b  # [..., 5H]
            pre = split_blocks(z[..., :4 * H] + state.hidden @ p.w_h, GATE_ORDER)
            depth = None
            if n > 0:
                d = jax.nn.sigmoid(z[..., 4 * H:] + p.depth_cell * state.cell + p.depth_lower * c_low)
                depth = d * c_low
            h, c, acts = lstm_update(pre["input"], pre["forget"], pre["candidate"], pre["output"], state.cell,
                                     peephole_i=p.peephole_i, peephole_f=p.peephole_f, peephole_o=p.peephole_o,
                                     cell_input=depth)
            new.append(LSTMState(hidden=h, cell=c))
            if aux:
                acts.update(cell=c, hidden=h, **({"depth": d} if n > 0 else {}))
                seen.update({f"{k}_{n}": v for k, v in acts.items()})
            h_low, c_low = h, c
        return (tuple(new), h_low, seen) if aux else (tuple(new), h_low)

    def noise(key, xs):
        if isinstance(xs, DepthGatedInput):
            return xs
        keep = jax.random.bernoulli(key, 1.0 - rate, xs.shape[:-1] + ((L - 1) * H,))
        scale = jnp.asarray(1.0 / (1.0 - rate), xs.dtype)
        return DepthGatedInput(xs, jnp.where(keep, scale, jnp.zeros((), xs.dtype)))

    return make_cell(config, init=init, init_carry=init_carry, project=project, recur=recur,
                     noise=noise if rate > 0.0 and L > 1 else None)
