r"""Grid LSTM (Kalchbrenner, Danihelka & Graves 2015): LSTM cells along every axis of a grid.

Two levels, like the rest of the library:

* :func:`grid_block` is the N-dimensional block of the paper as a pure function over lists of
  hidden and memory vectors (one per dimension), with :func:`init_grid_block` for its weights.
* :func:`grid_lstm` is the 2-D Grid LSTM along *time* and *depth* as one composite
  :class:`~lstm_jax.Cell` that carries the time-dimension ``(h, m)`` of every depth level,
  so one ``lax.scan`` (through :func:`lstm_jax.unroll`) runs the whole grid, and
  ``lengths``, ``resets``, ``reverse`` and ``time_major`` behave exactly as for any other
  cell: ``lj.layer(lj.grid_lstm(64, depth=3))``.

Reference: N. Kalchbrenner, I. Danihelka, A. Graves, "Grid Long Short-Term Memory",
ICLR 2016, arXiv:1507.01526.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax import _checks
from lstm_jax import initializers as inits
from lstm_jax.cell import Cell, CellConfig
from lstm_jax.cells.base import initializer, make_cell, or_default, set_fields
from lstm_jax.cells.lstm import GATE_ORDER
from lstm_jax.ops import ACTIVATIONS, lstm_update, split_blocks

Array = jax.Array

# Every LSTM transform fuses its gates along the last axis in lstm_jax.lstm's GATE_ORDER
# (i, f, g, o); the paper's names: i = g^u (input/"update"), f = g^f, g = g^c (candidate), o = g^o.
OUTPUT_FORMS = ("standard", "paper")
TRANSFER_ACTIVATIONS = ("identity", "tanh", "relu")
INPUT_MEMORIES = ("zeros", "project")


# --------------------------------------------------------------------------- the N-D block

class GridLSTMTransform(NamedTuple):
    """The LSTM transform of one dimension of an N-D block (the paper's ``W_i``)."""

    w: Array  # [N*H, 4*H]  gates (i, f, g, o) from H = [h_1; ...; h_N]
    b: Array  # [4*H]


class GridTransfer(NamedTuple):
    """A non-LSTM dimension (paper sec. 3.3): ``h' = alpha(H V + c)``, no memory vector."""

    w: Array  # [N*H, H]  the paper's V
    b: Array  # [H]


def _lstm_transform(tr: GridLSTMTransform, hcat: Array, m: Array, output_form: str):
    z = split_blocks(hcat @ tr.w + tr.b, GATE_ORDER)
    h, m_new, gates = lstm_update(z["input"], z["forget"], z["candidate"], z["output"], m)
    if output_form == "paper":  # eq. 1 as printed, h' = tanh(o * m'), from the same o and m'
        h = jnp.tanh(gates["output"] * m_new)
    return h, m_new, dict(gates, memory=m_new, hidden=h)


def _block(transforms, hidden, memory, priority: int | None, output_form: str,
           transfer: Callable[[Array], Array]):
    """:func:`grid_block`'s equations on checked arguments; returns ``(hidden', memory', gates)``."""
    N = len(transforms)

    def apply(k, hcat):
        tr = transforms[k]
        if isinstance(tr, GridTransfer):
            h = transfer(hcat @ tr.w + tr.b)
            return h, None, {"hidden": h}
        return _lstm_transform(tr, hcat, memory[k], output_form)

    out = [None] * N
    hcat = jnp.concatenate(hidden, axis=-1)  # [..., N*H]
    for k in range(N):
        if k != priority:
            out[k] = apply(k, hcat)
    if priority is not None:  # the priority dimension reads the others' new hidden vectors
        hcat = jnp.concatenate([hidden[k] if k == priority else out[k][0] for k in range(N)], axis=-1)
        out[priority] = apply(priority, hcat)
    return tuple(o[0] for o in out), tuple(o[1] for o in out), tuple(o[2] for o in out)


def grid_block(
    transforms: Sequence[GridLSTMTransform | GridTransfer],
    hidden: Sequence[Array],
    memory: Sequence[Array | None],
    *,
    priority: int | None = None,
    output_form: str = "standard",
    transfer_activation: str = "identity",
    return_gates: bool = False,
):
    r"""One N-dimensional Grid LSTM block (Kalchbrenner et al. 2015, eqs. 1-3).

    The block receives one hidden vector ``h_i [..., H]`` and one memory vector
    ``m_i [..., H]`` per dimension ``i = 1..N``, concatenates the hidden vectors and applies
    one transform per dimension:

    .. math::

        H &= [h_1; h_2; \dots; h_N] \in \mathbb{R}^{N H} \\
        (h'_i, m'_i) &= \mathrm{LSTM}(H, m_i, W_i, b_i), \qquad i = 1, \dots, N

    where :math:`\mathrm{LSTM}(H, m, W, b)` is the paper's eq. (1) with a bias, gates fused
    in the order ``(i, f, g, o)`` (the paper's ``g^u, g^f, g^c, g^o``):

    .. math::

        [z_i, z_f, z_g, z_o] &= H W + b, \qquad W \in \mathbb{R}^{NH \times 4H} \\
        i &= \sigma(z_i), \quad f = \sigma(z_f), \quad g = \tanh(z_g), \quad o = \sigma(z_o) \\
        m' &= f \odot m + i \odot g \\
        h' &= o \odot \tanh(m') \quad (\text{``standard''}) \qquad\text{or}\qquad
        h' = \tanh(o \odot m') \quad (\text{``paper''})

    The paper prints ``h' = tanh(g^o ⊙ m')``; the default ``"standard"`` form is the usual
    LSTM output (and :func:`lstm_jax.lstm`'s), so a 1-D block is exactly an LSTM step. Both
    forms come from :func:`lstm_jax.ops.lstm_update`, the update every LSTM here shares.

    **Tied weights**: pass the same transform for several dimensions (``W_i = W_j``); see
    :func:`init_grid_block` (``tied=True``).

    **Non-LSTM dimensions** (sec. 3.3): a :class:`GridTransfer` in position ``i`` makes
    dimension ``i`` a plain transfer with no memory (its ``memory[i]`` must be ``None`` and
    ``m'_i`` is ``None``):

    .. math::

        h'_i = \alpha(H V_i + c_i), \qquad V_i \in \mathbb{R}^{NH \times H},
        \quad \alpha \in \{\text{identity}, \tanh, \mathrm{relu}\}

    **Priority dimension** (sec. 3.2): with ``priority=p``, the other ``N - 1`` transforms are
    computed first and dimension ``p`` then reads their *new* hidden vectors,
    ``H' = [h'_1; \dots; h_p; \dots; h'_N]`` (its own input ``h_p`` stays in place), and
    ``(h'_p, m'_p) = LSTM(H', m_p, W_p)``.

    Args:
      transforms: ``N`` transforms, one per dimension.
      hidden: ``N`` hidden vectors ``[..., H]`` (same shape and dtype as the weights).
      memory: ``N`` memory vectors ``[..., H]``; ``None`` exactly for non-LSTM dimensions.
      priority: index of the prioritised dimension, or ``None`` (all in parallel).
      output_form: ``"standard"`` (``o * tanh(m')``) or ``"paper"`` (``tanh(o * m')``).
      transfer_activation: ``alpha`` of the non-LSTM dimensions.
      return_gates: also return, per dimension, a dict of activations ``[..., H]``
        (``input, forget, candidate, output, memory, hidden``; only ``hidden`` for a
        non-LSTM dimension).

    Returns:
      ``(hidden', memory')``, tuples of ``N`` entries (``memory'[i]`` is ``None`` for a
      non-LSTM dimension); with ``return_gates``, ``(hidden', memory', gates)``.

    Raises:
      ValueError: mismatched list lengths, shapes or weight sizes, a bad ``priority``, a
        missing or superfluous memory vector, an unknown option.
      TypeError: a transform of the wrong type, or hidden/memory dtypes unlike the weights'.
    """
    _checks.choice("output_form", output_form, OUTPUT_FORMS)
    transfer = ACTIVATIONS[_checks.choice("transfer_activation", transfer_activation, TRANSFER_ACTIVATIONS)]
    transforms, hidden, memory = tuple(transforms), tuple(hidden), tuple(memory)
    N = len(transforms)
    if N == 0:
        raise ValueError("`transforms` must hold one transform per dimension, got none.")
    if len(hidden) != N or len(memory) != N:
        raise ValueError(f"`hidden` and `memory` must each hold N={N} vectors (one per transform), "
                         f"got {len(hidden)} and {len(memory)}.")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, (int, np.integer))
                                 or not 0 <= priority < N):
        raise ValueError(f"`priority` must be None or a dimension index in [0, {N - 1}], got {priority!r}.")
    priority = None if priority is None else int(priority)
    shape = tuple(jnp.shape(hidden[0]))
    if not shape:
        raise ValueError("`hidden[0]` must have shape [..., H], got a scalar.")
    H = shape[-1]
    for k, tr in enumerate(transforms):
        if not isinstance(tr, (GridLSTMTransform, GridTransfer)):
            raise TypeError(f"`transforms[{k}]` must be a GridLSTMTransform or GridTransfer, "
                            f"got {type(tr).__name__}.")
        cols = 4 * H if isinstance(tr, GridLSTMTransform) else H
        if tuple(jnp.shape(tr.w)) != (N * H, cols) or tuple(jnp.shape(tr.b)) != (cols,):
            raise ValueError(f"`transforms[{k}]` must have w of shape {(N * H, cols)} and b of shape "
                             f"{(cols,)} for N={N}, H={H}, got {tuple(jnp.shape(tr.w))} and "
                             f"{tuple(jnp.shape(tr.b))}.")
    dtype = jnp.result_type(transforms[0].w)
    for name, vectors in (("hidden", hidden), ("memory", memory)):
        for k, v in enumerate(vectors):
            if v is None:
                if name == "memory" and isinstance(transforms[k], GridLSTMTransform):
                    raise ValueError(f"`memory[{k}]` must be an array: dimension {k} is an LSTM dimension.")
                if name == "hidden":
                    raise ValueError(f"`hidden[{k}]` must be an array, got None.")
                continue
            if name == "memory" and isinstance(transforms[k], GridTransfer):
                raise ValueError(f"`memory[{k}]` must be None: dimension {k} is a non-LSTM (GridTransfer) "
                                 "dimension without memory.")
            if tuple(jnp.shape(v)) != shape:
                raise ValueError(f"`{name}[{k}]` must have the shape of `hidden[0]` {shape}, "
                                 f"got {tuple(jnp.shape(v))}.")
            if jnp.result_type(v) != dtype:
                raise TypeError(f"`{name}[{k}]` has dtype {jnp.result_type(v)} but the weights are {dtype}.")

    new_h, new_m, gates = _block(transforms, hidden, memory, priority, output_form, transfer)
    return (new_h, new_m, gates) if return_gates else (new_h, new_m)


def _init_lstm_transform(key, num_dims, H, forget_bias, dtype, w_init, b_init) -> GridLSTMTransform:
    # every [H, H] block (one per incoming hidden vector and gate) is its own draw
    kw, kb = jax.random.split(key)
    rows = [inits.init_blocks(w_init, k, H, H, 4, dtype) for k in jax.random.split(kw, num_dims)]
    b = inits.init_blocks(b_init, kb, None, H, 4, dtype)
    b = b.at[H:2 * H].add(jnp.asarray(forget_bias, dtype))
    return GridLSTMTransform(w=jnp.concatenate(rows, axis=0), b=b)


def _init_transfer(key, num_dims, H, dtype, w_init, b_init) -> GridTransfer:
    kw, kb = jax.random.split(key)
    rows = [w_init(k, (H, H), dtype) for k in jax.random.split(kw, num_dims)]
    return GridTransfer(w=jnp.concatenate(rows, axis=0), b=b_init(kb, (H,), dtype))


def init_grid_block(
    key: Array,
    num_dims: int,
    hidden_size: int,
    *,
    lstm_dims: Sequence[bool] | None = None,
    tied: bool = False,
    forget_bias: float = 1.0,
    dtype=jnp.float32,
    kernel_init: inits.Initializer | None = None,
    bias_init: inits.Initializer | None = None,
) -> tuple[GridLSTMTransform | GridTransfer, ...]:
    """Weights for :func:`grid_block`: one transform per dimension.

    Args:
      key: PRNG key.
      num_dims: ``N``.
      hidden_size: ``H``.
      lstm_dims: ``N`` booleans, ``False`` for a non-LSTM dimension (a :class:`GridTransfer`);
        default all ``True``.
      tied: all LSTM dimensions share one transform (the same arrays appear in every LSTM
        position of the returned tuple).
      forget_bias: added to the initial forget-gate bias of every LSTM transform.
      dtype: floating dtype.
      kernel_init: initialiser for each ``[H, H]`` block of every ``W`` and ``V`` (default
        orthogonal: every incoming hidden vector plays the role of a recurrent input).
      bias_init: initialiser for the biases (default zeros).

    Returns:
      A tuple of ``N`` :class:`GridLSTMTransform` / :class:`GridTransfer`.
    """
    N = _checks.positive_int("num_dims", num_dims)
    H = _checks.positive_int("hidden_size", hidden_size)
    dtype = _checks.floating_dtype("dtype", dtype)
    lstm_dims = (True,) * N if lstm_dims is None else tuple(bool(d) for d in lstm_dims)
    if len(lstm_dims) != N:
        raise ValueError(f"`lstm_dims` must hold num_dims={N} booleans, got {len(lstm_dims)}.")
    w_init = or_default(kernel_init, inits.orthogonal)
    b_init = or_default(bias_init, lambda: inits.zeros)
    keys = jax.random.split(key, N)
    shared = _init_lstm_transform(keys[0], N, H, forget_bias, dtype, w_init, b_init) if tied else None
    return tuple(
        (shared if tied else _init_lstm_transform(k, N, H, forget_bias, dtype, w_init, b_init))
        if is_lstm else _init_transfer(k, N, H, dtype, w_init, b_init)
        for k, is_lstm in zip(keys, lstm_dims))


# --------------------------------------------------------------------- the 2-D time x depth cell

class GridLSTMParams(NamedTuple):
    """Parameters of the 2-D (time x depth) Grid LSTM.

    ``L`` is the depth (1 with ``share_levels``). ``D`` is the number of LSTM transforms per
    block: 2 (time, depth), or 1 when they are ``tied`` or the depth dimension is non-LSTM.
    Each LSTM transform reads ``H = [h_time; h_depth]`` (rows ``[:H]`` multiply ``h_time``,
    rows ``[H:]`` multiply ``h_depth``); gate blocks along the last axis are ``(i, f, g, o)``.
    """

    w_in: Array  # [I, H]          input -> depth-0 hidden vector
    b_in: Array  # [H]
    w: Array  # [L, D, 2H, 4H]     LSTM transforms (index 0: time, 1: depth)
    b: Array  # [L, D, 4H]
    w_in_memory: Array | None = None  # [I, H]  input -> depth-0 memory (input_memory="project")
    b_in_memory: Array | None = None  # [H]
    w_transfer: Array | None = None  # [L, 2H, H]  non-LSTM depth dimension V (depth_lstm=False)
    b_transfer: Array | None = None  # [L, H]


class GridLSTMState(NamedTuple):
    """Carry of the 2-D Grid LSTM: the time-dimension vectors of every depth level.

    Level ``l`` occupies ``[..., l*H:(l+1)*H]`` (bottom level first).
    """

    hidden: Array  # [..., depth*H]  h_time of each level
    memory: Array  # [..., depth*H]  m_time of each level


class GridLSTMInput(NamedTuple):
    """What ``project`` hands to each step: the projected depth-0 vectors."""

    hidden: Array  # [..., H]  h_depth entering level 0
    memory: Array | None  # [..., H]  m_depth entering level 0 (input_memory="project")


@dataclasses.dataclass(frozen=True, repr=False)
class GridLSTMConfig(CellConfig):
    """Hyper-parameters of :func:`grid_lstm` (see there). ``depth_activation`` is None for an
    LSTM depth dimension and defaults to ``"identity"`` for a non-LSTM one."""

    constructor = "grid_lstm"
    hidden_size: int
    depth: int
    tied: bool = False
    share_levels: bool = False
    depth_lstm: bool = True
    depth_activation: str | None = None
    priority: bool = True
    input_memory: str = "zeros"
    output_form: str = "standard"
    forget_bias: float = 1.0
    kernel_init: inits.Initializer | None = None
    recurrent_init: inits.Initializer | None = None
    bias_init: inits.Initializer | None = None

    def __post_init__(self):
        H = _checks.positive_int("hidden_size", self.hidden_size)
        L = _checks.positive_int("depth", self.depth)
        flags = {n: _checks.boolean(n, getattr(self, n)) for n in ("tied", "share_levels", "depth_lstm", "priority")}
        input_memory = _checks.choice("input_memory", self.input_memory, INPUT_MEMORIES)
        depth_activation = self.depth_activation
        if flags["depth_lstm"]:
            if depth_activation is not None:
                raise ValueError("`depth_activation` applies to a non-LSTM depth dimension; pass it only "
                                 "with `depth_lstm=False`.")
        else:
            depth_activation = _checks.choice("depth_activation", depth_activation or "identity",
                                              TRANSFER_ACTIVATIONS)
            if flags["tied"]:
                raise ValueError("`tied=True` shares one LSTM transform between the time and depth "
                                 "dimensions; it needs `depth_lstm=True`.")
            if input_memory != "zeros":
                raise ValueError("`input_memory='project'` feeds the depth dimension's memory; it needs "
                                 "`depth_lstm=True`.")
        set_fields(self, hidden_size=H, depth=L, **flags,
                   depth_activation=depth_activation, input_memory=input_memory,
                   output_form=_checks.choice("output_form", self.output_form, OUTPUT_FORMS),
                   forget_bias=_checks.number("forget_bias", self.forget_bias),
                   kernel_init=initializer("kernel_init", self.kernel_init),
                   recurrent_init=initializer("recurrent_init", self.recurrent_init),
                   bias_init=initializer("bias_init", self.bias_init))

    @property
    def num_transforms(self) -> int:
        """``D``, the LSTM transforms per block: 2 (time, depth), 1 when tied or the depth is non-LSTM."""
        return 1 if (self.tied or not self.depth_lstm) else 2

    @property
    def param_levels(self) -> int:
        """How many levels have their own weights: 1 with ``share_levels``, else ``depth``."""
        return 1 if self.share_levels else self.depth

    def build(self) -> Cell:
        return _grid_lstm_cell(self)


def grid_lstm(
    hidden_size: int,
    depth: int,
    *,
    tied: bool = False,
    share_levels: bool = False,
    depth_lstm: bool = True,
    depth_activation: str | None = None,
    priority: bool = True,
    input_memory: str = "zeros",
    output_form: str = "standard",
    forget_bias: float = 1.0,
    kernel_init: inits.Initializer | None = None,
    recurrent_init: inits.Initializer | None = None,
    bias_init: inits.Initializer | None = None,
) -> Cell:
    r"""2-D Grid LSTM along time and depth (Kalchbrenner et al. 2015) as one composite cell.

    At every time step ``t`` the input is projected to the hidden vector entering the bottom
    of the depth dimension (its memory is zero, or a second projection with
    ``input_memory="project"``), then ``depth`` 2-D blocks (:func:`grid_block` with ``N = 2``)
    are applied bottom-up. Block ``l`` receives the time dimension's ``(h^l_{t-1}, m^l_{t-1})``
    from the previous step and the depth dimension's ``(h^{l-1}_t, \mu^{l-1}_t)`` from below:

    .. math::

        h^{-1}_t &= x_t W_{in} + b_{in}, \qquad
        \mu^{-1}_t = 0 \;\; (\text{or } x_t W_{in}^{m} + b_{in}^{m}) \\
        (h^l_t, m^l_t) &= \mathrm{LSTM}([h^l_{t-1}; h^{l-1}_t],\; m^l_{t-1},\; W^l_{time}) \\
        (h^{l}_{\uparrow t}, \mu^l_t) &= \mathrm{LSTM}([h^l_t; h^{l-1}_{\uparrow t}],\;
            \mu^{l-1}_t,\; W^l_{depth}) \qquad (\text{priority}) \\
        y_t &= h^{L-1}_{\uparrow t}

    with :math:`h^{-1}_{\uparrow t} = h^{-1}_t` and :math:`\mathrm{LSTM}` as in
    :func:`grid_block` (gates ``(i, f, g, o)``, ``h' = o * tanh(m')`` by default). The time
    dimension carries ``(h^l, m^l)`` across steps for every level ``l`` (the carry); the
    depth dimension passes ``(h_\uparrow, \mu)`` upward within a step; the output is the top
    block's depth-dimension hidden vector.

    By default the depth dimension is the block's *priority* dimension (paper sec. 3.2): it
    reads the time dimension's new ``h^l_t``, as the dimension whose output is used for the
    prediction. ``priority=False`` computes both transforms in parallel from
    ``[h^l_{t-1}; h^{l-1}_{\uparrow t}]``.

    **Stacked LSTM as a Grid LSTM** (the paper's Fig. 2 and sec. 3.3): with
    ``depth_lstm=False`` the depth dimension has no memory and no gates,
    ``h^l_{\uparrow t} = \alpha([h^l_t; h^{l-1}_{\uparrow t}] V^l + c^l)``. With the identity
    ``alpha``, ``priority=True``, ``V^l = [I; 0]`` and ``c^l = 0`` this *is* a stacked LSTM:
    ``h^l_{\uparrow t} = h^l_t`` is layer ``l``'s output, fed to layer ``l + 1`` as its
    input, and layer ``l`` equals ``lstm_jax.lstm(H)`` with ``w_x = W^l_{time}[H:]``,
    ``w_h = W^l_{time}[:H]``, ``b = b^l_{time}`` (layer 0: ``w_x = W_{in} W^0_{time}[H:]``,
    ``b = b^0_{time} + b_{in} W^0_{time}[H:]``). With learned ``V`` it generalises the stack.

    **Weight sharing**: ``tied=True`` shares one LSTM transform between the time and depth
    dimensions of each block (``W^l_{time} = W^l_{depth}``). ``share_levels=True`` shares
    the block weights across depth levels (the paper's "tied" Grid LSTMs, whose weights are
    shared along the depth dimension). Both can be combined.

    Args:
      hidden_size: ``H`` (the same for both dimensions and every level).
      depth: ``L``, the number of blocks stacked along depth.
      tied: share the time and depth LSTM transforms within each block.
      share_levels: share the block weights across the ``L`` levels.
      depth_lstm: ``False`` makes depth a non-LSTM dimension (a transfer, see above).
      depth_activation: ``alpha`` for a non-LSTM depth: ``"identity"`` (default), ``"tanh"``
        or ``"relu"``; only with ``depth_lstm=False``.
      priority: compute the depth transform after the time transform, reading its output.
      input_memory: ``"zeros"`` or ``"project"``: the memory entering the bottom of the depth
        dimension (only ``"zeros"`` with a non-LSTM depth).
      output_form: ``"standard"`` (``o * tanh(m)``) or ``"paper"`` (``tanh(o * m)``, eq. 1
        as printed).
      forget_bias: added to every LSTM transform's initial forget-gate bias.
      kernel_init: initialiser of the input projections ``[I, H]`` (default Glorot uniform).
      recurrent_init: initialiser of each ``[H, H]`` block of the transforms (default
        orthogonal).
      bias_init: initialiser of every bias (default zeros).

    Returns:
      A :class:`~lstm_jax.Cell` with :class:`GridLSTMConfig`, :class:`GridLSTMParams` and
      :class:`GridLSTMState`; ``project(params, xs[..., I]) -> GridLSTMInput``; ``y_t [..., H]``
      is the top block's depth-dimension hidden vector; gates ``"{time|depth}{l}_{name}"``
      (``name`` in ``input, forget, candidate, output, memory, hidden``; only ``hidden`` for a
      non-LSTM depth dimension) and ``"hidden"`` (the output), each ``[..., H]``.

    Raises:
      ValueError: a non-positive ``hidden_size`` or ``depth``; an unknown ``input_memory``,
        ``output_form`` or ``depth_activation``; ``depth_activation`` with an LSTM depth;
        ``tied`` or ``input_memory="project"`` with a non-LSTM depth; a ``forget_bias`` that is
        not a finite number.
      TypeError: a flag that is not a bool; an initialiser that is not a hashable callable.

    Example::

        grid = lj.layer(lj.grid_lstm(64, depth=3))
        params = grid.init(jax.random.key(0), input_size=8)
        ys, carry = grid.apply(params, xs)   # xs [B, T, 8] -> ys [B, T, 64]

    Note:
      The input projection runs once for all steps before the scan; each step then does two
      matmuls per level (``[..., 2H] x [2H, 4H]`` for each LSTM transform, ``[2H, H]`` for a
      non-LSTM depth), sequentially up the levels.
    """
    return GridLSTMConfig(
        hidden_size, depth, tied=tied, share_levels=share_levels, depth_lstm=depth_lstm,
        depth_activation=depth_activation, priority=priority, input_memory=input_memory, output_form=output_form,
        forget_bias=forget_bias, kernel_init=kernel_init, recurrent_init=recurrent_init, bias_init=bias_init).build()


def _grid_lstm_cell(config: GridLSTMConfig) -> Cell:
    H, L, D, Lp = config.hidden_size, config.depth, config.num_transforms, config.param_levels
    depth_lstm, share_levels = config.depth_lstm, config.share_levels
    priority = 1 if config.priority else None  # the depth dimension, index 1 of each block
    transfer = ACTIVATIONS[config.depth_activation or "identity"]
    kernel_init = or_default(config.kernel_init, inits.glorot_uniform)
    recurrent_init = or_default(config.recurrent_init, inits.orthogonal)
    bias_init = or_default(config.bias_init, lambda: inits.zeros)
    project_memory = config.input_memory == "project"

    def init(key, input_size, dtype):
        k_in, k_mem, k_b_in, k_b_mem, k_blocks = jax.random.split(key, 5)
        levels = [init_grid_block(k, 2, H, lstm_dims=(True, depth_lstm), tied=config.tied,
                                  forget_bias=config.forget_bias, dtype=dtype, kernel_init=recurrent_init,
                                  bias_init=bias_init)
                  for k in jax.random.split(k_blocks, Lp)]
        return GridLSTMParams(
            w_in=kernel_init(k_in, (input_size, H), dtype),
            b_in=bias_init(k_b_in, (H,), dtype),
            w=jnp.stack([jnp.stack([tr.w for tr in block[:D]]) for block in levels]),
            b=jnp.stack([jnp.stack([tr.b for tr in block[:D]]) for block in levels]),
            w_in_memory=kernel_init(k_mem, (input_size, H), dtype) if project_memory else None,
            b_in_memory=bias_init(k_b_mem, (H,), dtype) if project_memory else None,
            w_transfer=None if depth_lstm else jnp.stack([block[1].w for block in levels]),
            b_transfer=None if depth_lstm else jnp.stack([block[1].b for block in levels]),
        )

    def init_carry(params, batch_shape):
        zeros = jnp.zeros(batch_shape + (L * H,), params.w.dtype)
        return GridLSTMState(hidden=zeros, memory=zeros)

    def project(params, xs):
        mem = xs @ params.w_in_memory + params.b_in_memory if project_memory else None
        return GridLSTMInput(hidden=xs @ params.w_in + params.b_in, memory=mem)

    def level_transforms(params, l):
        j = 0 if share_levels else l
        time = GridLSTMTransform(w=params.w[j, 0], b=params.b[j, 0])
        if not depth_lstm:
            return time, GridTransfer(w=params.w_transfer[j], b=params.b_transfer[j])
        return time, GridLSTMTransform(w=params.w[j, D - 1], b=params.b[j, D - 1])

    def recur(params, carry, px, *, aux=False):
        hs = jnp.split(carry.hidden, L, axis=-1)
        ms = jnp.split(carry.memory, L, axis=-1)
        h_d = px.hidden
        m_d = px.memory  # None: zeros (input_memory="zeros"), or no memory (a non-LSTM depth)
        if depth_lstm and m_d is None:
            m_d = jnp.zeros_like(h_d)
        new_hs, new_ms, gates = [], [], {}
        for l in range(L):
            (h_t, h_d), (m_t, m_d), acts = _block(level_transforms(params, l), (hs[l], h_d), (ms[l], m_d),
                                                  priority, config.output_form, transfer)
            new_hs.append(h_t)
            new_ms.append(m_t)
            if aux:
                for dim, a in zip(("time", "depth"), acts):
                    gates.update({f"{dim}{l}_{k}": v for k, v in a.items()})
        new = GridLSTMState(hidden=jnp.concatenate(new_hs, axis=-1), memory=jnp.concatenate(new_ms, axis=-1))
        return (new, h_d, dict(gates, hidden=h_d)) if aux else (new, h_d)

    return make_cell(config, init=init, init_carry=init_carry, project=project, recur=recur)
