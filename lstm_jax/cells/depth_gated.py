"""The depth-gated LSTM (Yao, Cohn, Vylomova, Duh & Dyer 2015): a stack of LSTM layers whose
memory cells are linked across depth through a learned gate, run with one scan over time.

Layer ``ℓ + 1`` at time ``t`` needs the memory cell ``c_t^ℓ`` of layer ``ℓ`` at the *same*
time step, so the layers cannot be unrolled one after another as :func:`lstm_jax.stack`
does. Instead one composite :class:`~lstm_jax.Cell` steps every layer bottom-up inside a
single ``lax.scan`` (:func:`lstm_jax.unroll`), which gives ``lengths``, ``reverse`` and
``time_major`` for free; :func:`depth_gated_lstm` wraps it as a :class:`~lstm_jax.Layer`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lstm_jax import _checks
from lstm_jax import initializers as inits
from lstm_jax.cell import Cell, make_cell, split_blocks
from lstm_jax.cells.lstm import LSTMState
from lstm_jax.layers import Layer
from lstm_jax.unroll import unroll as _unroll

Array = jax.Array

GATE_ORDER = ("input", "forget", "candidate", "output")  # blocks of w_h; w_x adds "depth" above layer 0


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


def _check_params(params, L: int, H: int) -> None:
    plain = isinstance(params, tuple) and not hasattr(params, "_fields")  # not a NamedTuple
    if not plain or len(params) != L:
        got = f"a tuple of length {len(params)}" if plain else type(params).__name__
        raise TypeError(f"`params` must be a tuple of {L} DepthGatedLSTMParams (one per layer, from this "
                        f"cell's init), got {got}.")
    for n, p in enumerate(params):
        if not isinstance(p, DepthGatedLSTMParams):
            raise TypeError(f"`params[{n}]` must be DepthGatedLSTMParams (from this cell's init), got "
                            f"{type(p).__name__}.")
        G = 4 if n == 0 else 5
        if jnp.shape(p.w_h) != (H, 4 * H) or jnp.shape(p.b) != (G * H,):
            raise ValueError(f"`params[{n}]` must have w_h of shape {(H, 4 * H)} and b of shape {(G * H,)} "
                             f"for this cell, got {tuple(jnp.shape(p.w_h))} and {tuple(jnp.shape(p.b))}; "
                             "were the params made by a cell of another size or depth?")


def _depth_gated_cell(H: int, L: int, forget_bias: float, depth_bias: float, peephole: bool,
                      kernel_init, recurrent_init, bias_init, with_masks: bool) -> Cell:
    """The composite cell; ``with_masks`` makes ``project`` read dropout masks appended to
    the input features (``[..., I + (L-1)*H]``) and feed them to ``recur`` by time step."""
    options = dict(hidden_size=H, num_layers=L, forget_bias=forget_bias, depth_bias=depth_bias,
                   peephole=peephole)

    def init(key, input_size, *, dtype=jnp.float32):
        input_size = _checks.positive_int("input_size", input_size)
        dtype = _checks.floating_dtype("dtype", dtype)
        out = []
        for n, k in enumerate(jax.random.split(key, L)):
            G = 4 if n == 0 else 5
            kx, kh, kb = jax.random.split(k, 3)
            b = inits.init_blocks(bias_init, kb, None, H, G, dtype)
            b = b.at[H:2 * H].add(jnp.asarray(forget_bias, dtype))
            if n > 0:
                b = b.at[4 * H:].add(jnp.asarray(depth_bias, dtype))
            zeros = jnp.zeros((H,), dtype)
            out.append(DepthGatedLSTMParams(
                w_x=inits.init_blocks(kernel_init, kx, input_size if n == 0 else H, H, G, dtype),
                w_h=inits.init_blocks(recurrent_init, kh, H, H, 4, dtype),
                b=b,
                peephole_i=zeros if peephole else None,
                peephole_f=zeros if peephole else None,
                peephole_o=zeros if peephole else None,
                depth_cell=zeros if n > 0 else None,
                depth_lower=zeros if n > 0 else None,
            ))
        return tuple(out)

    def init_carry(params, batch_shape=()):
        _check_params(params, L, H)
        dtype, batch_shape = params[0].w_h.dtype, _checks.batch_shape(batch_shape)
        zeros = jnp.zeros(batch_shape + (H,), dtype)
        return tuple(LSTMState(hidden=zeros, cell=zeros) for _ in range(L))

    def project(params, xs):
        _check_params(params, L, H)
        p0 = params[0]
        I = p0.w_x.shape[0]
        if not with_masks:
            _checks.features("xs", xs, I, p0.w_x.dtype)
            return xs @ p0.w_x + p0.b  # [..., 4H]
        _checks.features("xs", xs, I + (L - 1) * H, p0.w_x.dtype)  # inputs ++ masks (internal)
        masks = xs[..., I:].reshape(xs.shape[:-1] + (L - 1, H))  # [..., L-1, H]
        return xs[..., :I] @ p0.w_x + p0.b, masks

    def recur_impl(params, carry, px, with_gates):
        px, masks = px if with_masks else (px, None)
        new, seen = [], {}
        h_low = c_low = None
        for n, (p, state) in enumerate(zip(params, carry)):
            if n == 0:
                pre_x = px  # [..., 4H], projected before the scan
            else:
                x = h_low if masks is None else h_low * masks[..., n - 1, :]  # dropout between layers
                pre_x = x @ p.w_x + p.b  # [..., 5H]
            c_prev = state.cell
            pre = split_blocks(pre_x[..., :4 * H] + state.hidden @ p.w_h, GATE_ORDER)
            peep = lambda w, c: 0.0 if w is None else w * c
            i = jax.nn.sigmoid(pre["input"] + peep(p.peephole_i, c_prev))
            f = jax.nn.sigmoid(pre["forget"] + peep(p.peephole_f, c_prev))
            g = jnp.tanh(pre["candidate"])
            c = f * c_prev + i * g
            if n > 0:
                d = jax.nn.sigmoid(pre_x[..., 4 * H:] + p.depth_cell * c_prev + p.depth_lower * c_low)
                c = d * c_low + c
            o = jax.nn.sigmoid(pre["output"] + peep(p.peephole_o, c))
            h = o * jnp.tanh(c)
            new.append(LSTMState(hidden=h, cell=c))
            if with_gates:
                acts = dict(input=i, forget=f, candidate=g, output=o, cell=c, hidden=h)
                if n > 0:
                    acts["depth"] = d
                seen.update({f"{k}_{n}": v for k, v in acts.items()})
            h_low, c_low = h, c
        if with_gates:
            return tuple(new), h_low, seen
        return tuple(new), h_low

    return make_cell(name="depth_gated_lstm", options=options, hidden_size=H, output_size=H, init=init,
                     init_carry=init_carry, project=project, recur_impl=recur_impl)


def _config(hidden_size, num_layers, kernel_init, recurrent_init, bias_init):
    H = _checks.positive_int("hidden_size", hidden_size)
    L = _checks.positive_int("num_layers", num_layers)
    return (H, L, kernel_init or inits.glorot_uniform(), recurrent_init or inits.orthogonal(),
            bias_init or inits.zeros)


def depth_gated_lstm_cell(
    hidden_size: int,
    num_layers: int,
    *,
    forget_bias: float = 1.0,
    depth_bias: float = 0.0,
    peephole: bool = False,
    kernel_init: inits.Initializer | None = None,
    recurrent_init: inits.Initializer | None = None,
    bias_init: inits.Initializer | None = None,
) -> Cell:
    r"""A whole depth-gated LSTM stack as one :class:`~lstm_jax.Cell` (Yao et al. 2015).

    Each step runs the ``L`` layers bottom-up. Layer ``ℓ`` (``ℓ = 0`` at the bottom) reads
    ``x^0_t = x_t`` or ``x^ℓ_t = h^{ℓ-1}_t`` and computes, with ``\sigma`` the logistic
    sigmoid and ``\odot`` the elementwise product:

    .. math::

        i^ℓ_t &= \sigma(x^ℓ_t W^ℓ_{xi} + h^ℓ_{t-1} W^ℓ_{hi} + p^ℓ_i \odot c^ℓ_{t-1} + b^ℓ_i) \\
        f^ℓ_t &= \sigma(x^ℓ_t W^ℓ_{xf} + h^ℓ_{t-1} W^ℓ_{hf} + p^ℓ_f \odot c^ℓ_{t-1} + b^ℓ_f) \\
        \tilde c^ℓ_t &= \tanh(x^ℓ_t W^ℓ_{xg} + h^ℓ_{t-1} W^ℓ_{hg} + b^ℓ_g) \\
        d^ℓ_t &= \sigma(x^ℓ_t W^ℓ_{xd} + w^ℓ_{cd} \odot c^ℓ_{t-1}
                 + w^ℓ_{ld} \odot c^{ℓ-1}_t + b^ℓ_d) \qquad (ℓ \ge 1) \\
        c^ℓ_t &= d^ℓ_t \odot c^{ℓ-1}_t + f^ℓ_t \odot c^ℓ_{t-1} + i^ℓ_t \odot \tilde c^ℓ_t \\
        o^ℓ_t &= \sigma(x^ℓ_t W^ℓ_{xo} + h^ℓ_{t-1} W^ℓ_{ho} + p^ℓ_o \odot c^ℓ_t + b^ℓ_o) \\
        h^ℓ_t &= o^ℓ_t \odot \tanh(c^ℓ_t)

    and ``y_t = h^{L-1}_t``. The depth gate ``d`` is the paper's: a full weight on the layer's
    input, and *diagonal* weights on its own previous cell and on the lower layer's current
    cell. It opens a gated linear path for the memory cells across depth, as the forget gate
    does across time.

    Layer 0 has no lower cell, so its depth term (and depth gate) is absent: it is exactly
    :func:`lstm_jax.lstm` (with the same ``peephole`` option), and ``num_layers=1`` *is* an
    LSTM. All layers share ``H`` (the depth path adds ``c^{ℓ-1}`` to ``c^ℓ``).

    Peepholes ``p`` (Gers & Schmidhuber 2000) are in the paper's gate equations; here they
    are diagonal and optional (``peephole=True``), off by default like :func:`lstm_jax.lstm`,
    so the layers without them are plain PyTorch-style LSTM layers.

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
      kernel_init: initialiser for each ``[I_ℓ, H]`` block of ``w_x`` (default Glorot uniform).
      recurrent_init: initialiser for each ``[H, H]`` block of ``w_h`` (default orthogonal).
      bias_init: initialiser for each ``[H]`` bias block (default zeros). The diagonal
        depth weights ``w_cd``, ``w_ld`` start at zero.

    Returns:
      A :class:`~lstm_jax.Cell` whose params are a tuple of :class:`DepthGatedLSTMParams` and
      whose carry is a tuple of :class:`~lstm_jax.LSTMState` (``hidden``, ``cell``), one per
      layer, bottom first (the carry layout of ``stack([lstm(H)] * L)``);
      ``project(params, xs[..., I]) -> [..., 4H]``; ``y_t = h^{L-1}_t [..., H]``.
      ``recur_with_gates`` reports ``input_ℓ``, ``forget_ℓ``, ``candidate_ℓ``, ``output_ℓ``,
      ``cell_ℓ``, ``hidden_ℓ`` for every layer and ``depth_ℓ`` for ``ℓ >= 1``.
    """
    H, L, ki, ri, bi = _config(hidden_size, num_layers, kernel_init, recurrent_init, bias_init)
    return _depth_gated_cell(H, L, forget_bias, depth_bias, peephole, ki, ri, bi, with_masks=False)


def depth_gated_lstm(
    hidden_size: int,
    num_layers: int,
    *,
    forget_bias: float = 1.0,
    depth_bias: float = 0.0,
    peephole: bool = False,
    dropout_rate: float = 0.0,
    reverse: bool = False,
    time_major: bool = False,
    unroll: int | bool = 1,
    kernel_init: inits.Initializer | None = None,
    recurrent_init: inits.Initializer | None = None,
    bias_init: inits.Initializer | None = None,
) -> Layer:
    r"""A depth-gated LSTM (Yao et al. 2015) as a sequence :class:`~lstm_jax.Layer`.

    The maths is :func:`depth_gated_lstm_cell`'s; this wraps it in one :func:`lstm_jax.unroll`
    (a single ``lax.scan`` over time for all layers), so it works wherever
    :func:`lstm_jax.stack` does, including inside a ``stack`` or a ``bidirectional``.

    Dropout (Zaremba et al. 2014, as in :func:`lstm_jax.stack`) applies to the hidden output
    passed from one layer to the next, ``x^ℓ_t = m^{ℓ-1}_t \odot h^{ℓ-1}_t`` (``ℓ >= 1``),
    never to the recurrent ``h``, to the depth path ``c^{ℓ-1}_t`` or to the layer's
    output. It needs ``key`` in ``apply``: without one the layer is deterministic
    (evaluation mode). The masks, for reproducibility, are
    ``jax.random.bernoulli(key, 1 - dropout_rate, xs.shape[:-1] + ((L - 1) * H,))`` scaled by
    ``1 / (1 - dropout_rate)``, a fresh one per step and sequence, laid out like ``xs``
    (layer ``ℓ``'s mask is ``[..., (ℓ-1)*H:ℓ*H]``).

    Args:
      hidden_size: ``H``.
      num_layers: ``L``.
      forget_bias, depth_bias, peephole, kernel_init, recurrent_init, bias_init: as in
        :func:`depth_gated_lstm_cell`.
      dropout_rate: in ``[0, 1)``; the probability of zeroing each entry between layers.
      reverse: read each sequence backwards (within its length when ``lengths`` is given).
      time_major: ``xs`` is ``[T, ..., I]`` instead of ``[..., T, I]``.
      unroll: ``lax.scan`` unroll factor.

    Returns:
      A :class:`~lstm_jax.Layer`: ``init(key, input_size, *, dtype)`` gives a tuple of
      :class:`DepthGatedLSTMParams`; ``apply(params, xs[..., T, I], carry=None, *,
      lengths=None, key=None) -> (ys[..., T, H], carry)`` with the carry a tuple of
      :class:`~lstm_jax.LSTMState`, one per layer; ``spec["kind"] == "depth_gated_lstm"`` and
      ``spec["cell"]`` is the :func:`depth_gated_lstm_cell`.
    """
    H, L, ki, ri, bi = _config(hidden_size, num_layers, kernel_init, recurrent_init, bias_init)
    if isinstance(dropout_rate, bool) or not isinstance(dropout_rate, (int, float)) \
            or not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"`dropout_rate` must lie in [0, 1), got {dropout_rate!r}.")
    cell = _depth_gated_cell(H, L, forget_bias, depth_bias, peephole, ki, ri, bi, with_masks=False)
    masked = _depth_gated_cell(H, L, forget_bias, depth_bias, peephole, ki, ri, bi, with_masks=True)
    use_dropout = dropout_rate > 0.0 and L > 1

    def apply(params, xs, carry=None, *, lengths=None, key=None):
        kw = dict(lengths=lengths, reverse=reverse, time_major=time_major, unroll=unroll)
        if not use_dropout or key is None or jnp.ndim(xs) < 2:
            return _unroll(cell, params, xs, carry, **kw)
        jax.eval_shape(cell.project, params, xs)  # the user's xs, checked before the masks join it
        keep = jax.random.bernoulli(key, 1.0 - dropout_rate, xs.shape[:-1] + ((L - 1) * H,))
        scale = jnp.asarray(1.0 / (1.0 - dropout_rate), xs.dtype)
        masks = jnp.where(keep, scale, jnp.zeros((), xs.dtype))  # [..., T, (L-1)*H]
        return _unroll(masked, params, jnp.concatenate([xs, masks], axis=-1), carry, **kw)

    return Layer(init=cell.init, apply=apply, init_carry=cell.init_carry, output_size=H,
                 reverse=reverse, time_major=time_major,
                 spec={"kind": "depth_gated_lstm", "cell": cell, "num_layers": L,
                       "dropout_rate": dropout_rate, "unroll": unroll})
