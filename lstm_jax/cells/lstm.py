"""The LSTM (Hochreiter & Schmidhuber 1997; forget gate: Gers et al. 2000) and its variants."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lstm_jax import _checks
from lstm_jax import initializers as inits
from lstm_jax.cell import Cell, CellConfig, SequenceForm
from lstm_jax.cells.base import initializer, make_cell, or_default, set_fields
from lstm_jax.kernels import fused_rnn, native_rnn, onednn_rnn
from lstm_jax.ops import ACTIVATIONS, clip_gradient, lstm_update, split_blocks
from lstm_jax.ops import layer_norm as layer_norm_fn

Array = jax.Array

# Fused gate order along the last axis of w_x, w_h and b: PyTorch's (i, f, g, o), with the
# blocks of switched-off gates left out.
GATE_ORDER = ("input", "forget", "candidate", "output")
SIGMOID_GATES = ("input", "forget", "output")


class LSTMParams(NamedTuple):
    """LSTM parameters; ``G`` is the number of gate blocks present (4 for the vanilla LSTM).

    Weights are ``[in, out]`` (``x @ w``); PyTorch stores the transpose.
    """

    w_x: Array  # [I, G*H]   input kernel, blocks in GATE_ORDER
    w_h: Array  # [O, G*H]   recurrent kernel (O = proj_size or H)
    b: Array  # [G*H]        bias (PyTorch's b_ih + b_hh)
    peephole_i: Array | None = None  # [H]  input gate looks at c_{t-1}
    peephole_f: Array | None = None  # [H]  forget gate looks at c_{t-1}
    peephole_o: Array | None = None  # [H]  output gate looks at c_t
    w_gates: Array | None = None  # [S*H, S*H] previous sigmoid gates -> sigmoid gates (FGR)
    w_proj: Array | None = None  # [H, P]  recurrent projection (proj_size)
    ln_x_gain: Array | None = None  # [G*H]  layer norm of x W_x (layer_norm)
    ln_h_gain: Array | None = None  # [G*H]  layer norm of h W_h
    ln_c_gain: Array | None = None  # [H]    layer norm of c_t before the output activation
    ln_c_bias: Array | None = None  # [H]


class LSTMState(NamedTuple):
    """LSTM carry. ``gates`` is only used with ``full_gate_recurrence``."""

    hidden: Array  # [..., O]  h_t (the projected output when proj_size is set)
    cell: Array  # [..., H]    c_t, the "conveyor belt"
    gates: Array | None = None  # [..., S*H] previous sigmoid gate activations (FGR only)


# Greff et al. 2015, "LSTM: A Search Space Odyssey": their vanilla LSTM has peepholes, and
# each of the eight variants changes one thing.
GREFF_VARIANTS: dict[str, dict[str, Any]] = {
    "V": dict(peephole=True),
    "NIG": dict(peephole=True, input_gate=False),
    "NFG": dict(peephole=True, forget_gate=False),
    "NOG": dict(peephole=True, output_gate=False),
    "NIAF": dict(peephole=True, input_activation="identity"),
    "NOAF": dict(peephole=True, output_activation="identity"),
    "NP": dict(peephole=False),
    "CIFG": dict(peephole=True, coupled=True),
    "FGR": dict(peephole=True, full_gate_recurrence=True),
}


@dataclasses.dataclass(frozen=True, repr=False)
class LSTMConfig(CellConfig):
    """Hyper-parameters of :func:`lstm` (see there for their meaning)."""

    constructor = "lstm"
    hidden_size: int
    forget_bias: float = 1.0
    peephole: bool = False
    coupled: bool = False
    input_gate: bool = True
    forget_gate: bool = True
    output_gate: bool = True
    input_activation: str = "tanh"
    output_activation: str = "tanh"
    full_gate_recurrence: bool = False
    proj_size: int | None = None
    layer_norm: bool = False
    derivative_clip: float | None = None
    kernel_init: inits.Initializer | None = None
    recurrent_init: inits.Initializer | None = None
    bias_init: inits.Initializer | None = None

    def __post_init__(self):
        H = _checks.positive_int("hidden_size", self.hidden_size)
        proj = self.proj_size
        if proj is not None:
            proj = _checks.positive_int("proj_size", proj)
            if proj >= H:
                raise ValueError(f"`proj_size` must be smaller than `hidden_size` ({H}), got {proj}.")
        flags = {n: _checks.boolean(n, getattr(self, n)) for n in (
            "peephole", "coupled", "input_gate", "forget_gate", "output_gate", "full_gate_recurrence", "layer_norm")}
        if flags["coupled"] and not (flags["input_gate"] and flags["forget_gate"]):
            raise ValueError("`coupled=True` derives the input gate from the forget gate; it needs "
                             "`input_gate=True` and `forget_gate=True`.")
        if flags["full_gate_recurrence"] and not (flags["input_gate"] or flags["forget_gate"] or flags["output_gate"]):
            raise ValueError("`full_gate_recurrence=True` needs at least one sigmoid gate.")
        set_fields(self, hidden_size=H, proj_size=proj, **flags,
                   forget_bias=_checks.number("forget_bias", self.forget_bias),
                   input_activation=_checks.choice("input_activation", self.input_activation, ACTIVATIONS),
                   output_activation=_checks.choice("output_activation", self.output_activation, ACTIVATIONS),
                   derivative_clip=_checks.number("derivative_clip", self.derivative_clip, positive=True,
                                                  optional=True),
                   kernel_init=initializer("kernel_init", self.kernel_init),
                   recurrent_init=initializer("recurrent_init", self.recurrent_init),
                   bias_init=initializer("bias_init", self.bias_init))

    @property
    def output_size(self) -> int:
        return self.proj_size or self.hidden_size

    @property
    def gate_names(self) -> tuple[str, ...]:
        """The gate blocks along the fused axis, in :data:`GATE_ORDER`."""
        present = {"input": self.input_gate and not self.coupled, "forget": self.forget_gate,
                   "candidate": True, "output": self.output_gate}
        return tuple(n for n in GATE_ORDER if present[n])

    @property
    def vanilla(self) -> bool:
        """The cell of the article: four gates, tanh, nothing else (what the kernels compute)."""
        return self.gate_names == GATE_ORDER and not (
            self.peephole or self.full_gate_recurrence or self.proj_size or self.layer_norm
            or self.derivative_clip is not None) and self.input_activation == self.output_activation == "tanh"

    def build(self) -> Cell:
        return _lstm_cell(self)


def lstm(
    hidden_size: int,
    *,
    forget_bias: float = 1.0,
    peephole: bool = False,
    coupled: bool = False,
    input_gate: bool = True,
    forget_gate: bool = True,
    output_gate: bool = True,
    input_activation: str = "tanh",
    output_activation: str = "tanh",
    full_gate_recurrence: bool = False,
    proj_size: int | None = None,
    layer_norm: bool = False,
    derivative_clip: float | None = None,
    kernel_init: inits.Initializer | None = None,
    recurrent_init: inits.Initializer | None = None,
    bias_init: inits.Initializer | None = None,
) -> Cell:
    r"""Long short-term memory cell with forget gate and the variants of Greff et al. 2015.

    With ``g`` the input activation and ``h`` the output activation (both ``tanh`` by
    default), ``\sigma`` the logistic sigmoid and ``\odot`` the elementwise product:

    .. math::

        f_t &= \sigma(x_t W_{xf} + h_{t-1} W_{hf} + p_f \odot c_{t-1} + b_f) \\
        i_t &= \sigma(x_t W_{xi} + h_{t-1} W_{hi} + p_i \odot c_{t-1} + b_i) \\
        \tilde c_t &= g(x_t W_{xg} + h_{t-1} W_{hg} + b_g) \\
        c_t &= f_t \odot c_{t-1} + i_t \odot \tilde c_t \\
        o_t &= \sigma(x_t W_{xo} + h_{t-1} W_{ho} + p_o \odot c_t + b_o) \\
        m_t &= o_t \odot h(c_t), \qquad h_t = m_t \; (\text{or } m_t W_{proj})

    The article's order: the forget gate decides what to drop from the cell state, the
    input gate and the candidate layer what to write, and the output gate what to show.
    Peephole terms ``p`` are present only with ``peephole=True`` (diagonal weights: the
    input and forget gates see ``c_{t-1}``, the output gate sees ``c_t``, as in Gers &
    Schmidhuber 2000).

    With ``layer_norm=True`` (Ba et al. 2016) the input and recurrent contributions are
    normalised separately over all ``G*H`` pre-activations, as in the paper's equations, and
    the cell state is normalised before the output activation:

    .. math::

        z_t = \mathrm{LN}(x_t W_x; \alpha_x) + \mathrm{LN}(h_{t-1} W_h; \alpha_h) + b,
        \qquad m_t = o_t \odot h(\mathrm{LN}(c_t; \alpha_c, \beta_c))

    (the paper's two gate biases ``\beta`` are folded into ``b``, which is equivalent).

    Gate order along the fused axis is PyTorch's ``(i, f, g, o)``; blocks of gates that are
    switched off are omitted, so ``G`` (the number of blocks) is 4 for the vanilla cell.

    Args:
      hidden_size: ``H``, the number of cells.
      forget_bias: added to the forget gate's initial bias (default 1.0, Jozefowicz et al.
        2015). It is an initial value, not a constant in the equations, so parameters
        converted from PyTorch reproduce PyTorch exactly.
      peephole: add diagonal peephole weights ``p_i, p_f, p_o`` (initialised to zero).
      coupled: CIFG, the coupled input–forget gate: ``i_t = 1 - f_t`` (no input gate block).
      input_gate: ``False`` fixes ``i_t = 1`` (Greff's NIG).
      forget_gate: ``False`` fixes ``f_t = 1`` (Greff's NFG; the 1997 LSTM).
      output_gate: ``False`` fixes ``o_t = 1`` (Greff's NOG).
      input_activation: ``g``, one of ``"tanh"``, ``"identity"`` (NIAF), ``"relu"``, ``"sigmoid"``.
      output_activation: ``h``, same choices (``"identity"`` is Greff's NOAF).
      full_gate_recurrence: the sigmoid gates also receive the previous step's sigmoid gate
        activations through ``w_gates`` (Greff's FGR); the carry then holds them.
      proj_size: ``P``; if set, ``h_t = m_t W_{proj}`` has size ``P`` (Sak et al. 2014;
        PyTorch's ``proj_size``), and the recurrent kernel reads ``h_{t-1}`` of size ``P``.
      layer_norm: layer-normalised LSTM (Ba et al. 2016); gains start at 1, ``\beta_c`` at 0.
      derivative_clip: if set, the gradient flowing into every gate pre-activation is clipped
        to ``[-derivative_clip, derivative_clip]`` at each step (Graves 2013's derivative
        clipping); the forward pass is unchanged.
      kernel_init: initialiser for each ``[I, H]`` input block (default Glorot uniform).
      recurrent_init: initialiser for each ``[O, H]`` recurrent block (default orthogonal).
      bias_init: initialiser for each ``[H]`` bias block (default zeros); ``forget_bias`` is
        added to the forget block.

    Returns:
      A :class:`~lstm_jax.Cell` with :class:`LSTMConfig`, :class:`LSTMParams` and
      :class:`LSTMState`. ``project(params, xs[..., I]) -> [..., G*H]``; ``recur`` returns
      ``y_t = h_t [..., O]``; gates ``input``, ``forget``, ``candidate``, ``output`` (those
      present), ``cell``, ``hidden``. The vanilla cell (no option but ``forget_bias`` and the
      initialisers) has the forms ``"native"`` (the recurrence as C++,
      :mod:`lstm_jax.kernels.native_rnn`; picked by ``impl="auto"`` on the CPU for float32
      without ``lengths`` (``resets`` it takes) from hidden size 128 on, when the extension
      is built), ``"onednn"`` (oneDNN's LSTM primitive, :mod:`lstm_jax.kernels.onednn_rnn`;
      picked by ``"auto"`` for float32 without ``lengths`` or ``resets`` from batch 8 and
      hidden size 128 on where ``"native"`` is not built), ``"fused"`` (a
      hand-written backward pass, :mod:`lstm_jax.kernels.fused_rnn`; picked by
      ``impl="auto"`` everywhere else) and ``"pallas"`` (the
      recurrence as Pallas kernels, :mod:`lstm_jax.kernels.pallas_lstm`; opt-in, no
      ``lengths`` or ``resets``; on a GPU only while ``W_h`` fits shared memory: float32
      up to H = 64, bfloat16 up to 128; its GPU speed is unmeasured).

    Raises:
      ValueError: a non-positive ``hidden_size`` or ``proj_size >= hidden_size``; an unknown
        activation; ``coupled`` without both gates; ``full_gate_recurrence`` without a sigmoid
        gate; a ``derivative_clip`` that is not a positive number.
    """
    return LSTMConfig(
        hidden_size, forget_bias=forget_bias, peephole=peephole, coupled=coupled, input_gate=input_gate,
        forget_gate=forget_gate, output_gate=output_gate, input_activation=input_activation,
        output_activation=output_activation, full_gate_recurrence=full_gate_recurrence, proj_size=proj_size,
        layer_norm=layer_norm, derivative_clip=derivative_clip, kernel_init=kernel_init,
        recurrent_init=recurrent_init, bias_init=bias_init).build()


def _lstm_cell(config: LSTMConfig) -> Cell:
    H, O = config.hidden_size, config.output_size
    names = config.gate_names
    sigmoid_names = tuple(n for n in names if n in SIGMOID_GATES)
    G, S = len(names), len(sigmoid_names)
    act_in, act_out = ACTIVATIONS[config.input_activation], ACTIVATIONS[config.output_activation]
    peephole, layer_norm, fgr = config.peephole, config.layer_norm, config.full_gate_recurrence
    kernel_init = or_default(config.kernel_init, inits.glorot_uniform)
    recurrent_init = or_default(config.recurrent_init, inits.orthogonal)
    bias_init = or_default(config.bias_init, lambda: inits.zeros)
    clip = (lambda z: z) if config.derivative_clip is None else \
        (lambda z: clip_gradient(z, config.derivative_clip))

    def init(key, input_size, dtype):
        kx, kh, kb, kg, kp = jax.random.split(key, 5)
        b = inits.init_blocks(bias_init, kb, None, H, G, dtype)
        if config.forget_gate:
            f = names.index("forget")
            b = b.at[f * H:(f + 1) * H].add(jnp.asarray(config.forget_bias, dtype))
        zeros_h = jnp.zeros((H,), dtype)
        ones = lambda n: jnp.ones((n,), dtype) if layer_norm else None
        return LSTMParams(
            w_x=inits.init_blocks(kernel_init, kx, input_size, H, G, dtype),
            w_h=inits.init_blocks(recurrent_init, kh, O, H, G, dtype),
            b=b,
            peephole_i=zeros_h if peephole and "input" in names else None,
            peephole_f=zeros_h if peephole and config.forget_gate else None,
            peephole_o=zeros_h if peephole and config.output_gate else None,
            w_gates=inits.init_blocks(recurrent_init, kg, S * H, H, S, dtype) if fgr else None,
            w_proj=kernel_init(kp, (H, O), dtype) if config.proj_size else None,
            ln_x_gain=ones(G * H), ln_h_gain=ones(G * H), ln_c_gain=ones(H),
            ln_c_bias=zeros_h if layer_norm else None,
        )

    def init_carry(params, batch_shape):
        zeros = lambda n: jnp.zeros(batch_shape + (n,), params.w_h.dtype)
        return LSTMState(hidden=zeros(O), cell=zeros(H), gates=zeros(S * H) if fgr else None)

    def project(params, xs):
        if layer_norm:
            return layer_norm_fn(xs @ params.w_x, params.ln_x_gain) + params.b
        return xs @ params.w_x + params.b

    def recur(params, carry, px, *, aux=False):
        rec = carry.hidden @ params.w_h
        if layer_norm:
            rec = layer_norm_fn(rec, params.ln_h_gain)
        pre = split_blocks(px + rec, names)
        if fgr:
            from_gates = split_blocks(carry.gates @ params.w_gates, sigmoid_names)
            pre = {n: pre[n] + from_gates[n] if n in from_gates else pre[n] for n in pre}
        m, c, gates = lstm_update(
            pre.get("input"), pre.get("forget"), pre["candidate"], pre.get("output"), carry.cell,
            peephole_i=params.peephole_i, peephole_f=params.peephole_f, peephole_o=params.peephole_o,
            coupled=config.coupled, input_activation=act_in, output_activation=act_out, clip=clip,
            cell_output=(lambda c: layer_norm_fn(c, params.ln_c_gain, params.ln_c_bias)) if layer_norm
            else (lambda c: c))
        h = m if params.w_proj is None else m @ params.w_proj
        new = LSTMState(hidden=h, cell=c,
                        gates=jnp.concatenate([gates[n] for n in sigmoid_names], axis=-1) if fgr else None)
        return (new, h, dict(gates, cell=c, hidden=h)) if aux else (new, h)

    forms = {}
    if config.vanilla:
        forms = {"native": SequenceForm(_native_run, lengths=False, auto=native_rnn.preferred,
                                        refuses=native_rnn.refusal,
                                        note="hand-written C++ recurrence on the CPU (lstm_jax.kernels.native_rnn)"),
                 "onednn": SequenceForm(_onednn_run, lengths=False, resets=False, auto=onednn_rnn.preferred,
                                        refuses=onednn_rnn.refusal,
                                        note="oneDNN's LSTM primitive on the CPU (lstm_jax.kernels.onednn_rnn)"),
                 "fused": SequenceForm(_fused_run("xla"), auto=True,
                                       note="hand-written backward pass (lstm_jax.kernels.fused_rnn)"),
                 "pallas": SequenceForm(_fused_run("pallas"), lengths=False, resets=False,
                                        refuses=_pallas_refusal,
                                        note="Pallas recurrence kernels (lstm_jax.kernels.pallas_lstm)")}
    return make_cell(config, init=init, init_carry=init_carry, project=project, recur=recur, forms=forms)


def _fused_run(kernel: str):
    """The ``"fused"``/``"pallas"`` form of the vanilla LSTM (see :class:`~lstm_jax.SequenceForm`)."""

    def run(params, xs, carry, *, valid, resets, unroll):
        flags, (hr, cr) = (None, (None, None)) if resets is None else (resets.where, resets.carry[:2])
        ys, (h, c) = fused_rnn.lstm_layer(params.w_x, params.w_h, params.b, xs, carry.hidden, carry.cell, valid,
                                          flags, hr, cr, unroll, fused_rnn.hoist_projection(), kernel)
        return ys, LSTMState(hidden=h, cell=c)

    return run


def _pallas_refusal(params, xs, carry):
    from lstm_jax.kernels import pallas_lstm  # Pallas is imported only when the form is asked about

    return pallas_lstm.refusal(params, xs, carry)


def _native_run(params, xs, carry, *, valid, resets, unroll):
    """The ``"native"`` form of the vanilla LSTM (no lengths mask: ``valid`` is None)."""
    flags, (hr, cr) = (None, (None, None)) if resets is None else (resets.where, resets.carry[:2])
    ys, (h, c) = native_rnn.lstm_layer(params.w_x, params.w_h, params.b, xs, carry.hidden, carry.cell, flags, hr, cr)
    return ys, LSTMState(hidden=h, cell=c)


def _onednn_run(params, xs, carry, *, valid, resets, unroll):
    """The ``"onednn"`` form of the vanilla LSTM (no masks: ``valid`` and ``resets`` are None)."""
    ys, (h, c) = onednn_rnn.lstm_layer(params.w_x, params.w_h, params.b, xs, carry.hidden, carry.cell)
    return ys, LSTMState(hidden=h, cell=c)


def greff_variant(name: str, hidden_size: int, **overrides: Any) -> Cell:
    """One of the nine LSTMs compared by Greff et al. 2015, by its short name.

    Args:
      name: a key of :data:`GREFF_VARIANTS`: ``V`` (vanilla, with peepholes), ``NIG``,
        ``NFG``, ``NOG`` (no input/forget/output gate), ``NIAF``, ``NOAF`` (no input/output
        activation), ``NP`` (no peepholes), ``CIFG`` (coupled gates), ``FGR`` (full gate
        recurrence).
      hidden_size: ``H``.
      **overrides: further :func:`lstm` keyword arguments (e.g. ``forget_bias``).

    Returns:
      The :class:`~lstm_jax.Cell`.
    """
    _checks.choice("name", name, GREFF_VARIANTS)
    return lstm(hidden_size, **{**GREFF_VARIANTS[name], **overrides})
