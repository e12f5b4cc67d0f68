r"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?", arXiv:2410.01201).

Both cells drop every ``h_{t-1}`` from the gates and the candidate, so the recurrence is
*linear in the carry*:

.. math::

    h_t = a_t \odot h_{t-1} + b_t, \qquad a_t \in (0, 1),

with ``a_t`` and ``b_t`` functions of ``x_t`` alone. :func:`lstm_jax.unroll` runs them step by
step like any other cell; their ``"parallel"`` form (``unroll(..., impl="parallel")``)
evaluates all steps at once with an associative scan over the coefficients ``(log a_t, b_t)``
that the configs' ``linear_recurrence`` computes from the projected inputs
(:mod:`lstm_jax.kernels.linear_scan` explains the numerics).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from lstm_jax import _checks
from lstm_jax import initializers as inits
from lstm_jax.cell import Cell, CellConfig, SequenceForm
from lstm_jax.cells.base import initializer, make_cell, or_default, set_fields
from lstm_jax.kernels import linear_scan
from lstm_jax.ops import ACTIVATIONS, lstm_update, split_blocks

Array = jax.Array

MIN_GRU_BLOCKS = ("update", "candidate")  # (z, h~) order of project's output
MIN_LSTM_BLOCKS = ("forget", "input", "candidate")  # (f, i, h~) order of project's output


def g(x: Array) -> Array:
    r"""The paper's positive activation for its log-space version (Feng et al. 2024, App. B).

    .. math::

        g(x) = \begin{cases} x + \tfrac12 & x \ge 0 \\ \sigma(x) & x < 0 \end{cases}

    Continuous, increasing and strictly positive (so ``log g`` exists), linear for
    ``x >= 0``.
    """
    return jnp.where(x >= 0, x + 0.5, jax.nn.sigmoid(x))


CANDIDATE_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {"g": g, "identity": ACTIVATIONS["identity"]}


class MinGRUParams(NamedTuple):
    """minGRU parameters (weights ``[in, out]``, blocks in ``MIN_GRU_BLOCKS`` order)."""

    w_x: Array  # [I, 2H]  input kernel, blocks (z, h~)
    b: Array  # [2H]       bias, blocks (z, h~)


class MinLSTMParams(NamedTuple):
    """minLSTM parameters (weights ``[in, out]``, blocks in ``MIN_LSTM_BLOCKS`` order)."""

    w_x: Array  # [I, 3H]  input kernel, blocks (f, i, h~)
    b: Array  # [3H]       bias, blocks (f, i, h~)


class MinimalState(NamedTuple):
    """Carry of minGRU and minLSTM: the hidden state only (it is also the output)."""

    hidden: Array  # [..., H]


@dataclasses.dataclass(frozen=True, repr=False)
class MinGRUConfig(CellConfig):
    """Hyper-parameters of :func:`min_gru` (see there)."""

    constructor = "min_gru"
    hidden_size: int
    candidate_activation: str = "g"
    kernel_init: inits.Initializer | None = None
    bias_init: inits.Initializer | None = None

    def __post_init__(self):
        set_fields(self, hidden_size=_checks.positive_int("hidden_size", self.hidden_size),
                   candidate_activation=_check_activation(self.candidate_activation),
                   kernel_init=initializer("kernel_init", self.kernel_init),
                   bias_init=initializer("bias_init", self.bias_init))

    def linear_recurrence(self, px: Array) -> tuple[Array, Array]:
        """``(log a, b)``, each ``[..., H]``, from projected inputs ``px [..., 2H]``: ``log a =
        log(1 - z) = -softplus(k_z)`` (exact where ``a`` would round to 0 or 1) and ``b = z
        h~``, so that ``recur`` maps ``h`` to ``exp(log a) h + b``."""
        k_z, k_h = split_blocks(px, MIN_GRU_BLOCKS).values()
        return -jax.nn.softplus(k_z), jax.nn.sigmoid(k_z) * CANDIDATE_ACTIVATIONS[self.candidate_activation](k_h)

    def build(self) -> Cell:
        return _min_gru_cell(self)


@dataclasses.dataclass(frozen=True, repr=False)
class MinLSTMConfig(CellConfig):
    """Hyper-parameters of :func:`min_lstm` (see there)."""

    constructor = "min_lstm"
    hidden_size: int
    candidate_activation: str = "g"
    normalize: bool = True
    forget_bias: float = 0.0
    kernel_init: inits.Initializer | None = None
    bias_init: inits.Initializer | None = None

    def __post_init__(self):
        set_fields(self, hidden_size=_checks.positive_int("hidden_size", self.hidden_size),
                   candidate_activation=_check_activation(self.candidate_activation),
                   normalize=_checks.boolean("normalize", self.normalize),
                   forget_bias=_checks.number("forget_bias", self.forget_bias),
                   kernel_init=initializer("kernel_init", self.kernel_init),
                   bias_init=initializer("bias_init", self.bias_init))

    def _gate_preactivations(self, px: Array) -> tuple[Array, Array, Array]:
        r"""``(z_f, z_i, k_h)``: the pre-activations whose sigmoids are the gates ``f'_t, i'_t``
        the step uses, and the candidate's. Normalised, ``f / (f + i) = \sigma(-d)`` and ``i /
        (f + i) = \sigma(d)`` with ``d = \log i - \log f`` (the paper's App. B): the same
        values, with no ``0 / 0`` where both sigmoids underflow."""
        k_f, k_i, k_h = split_blocks(px, MIN_LSTM_BLOCKS).values()
        if not self.normalize:
            return k_f, k_i, k_h
        d = jax.nn.softplus(-k_f) - jax.nn.softplus(-k_i)
        return -d, d, k_h

    def linear_recurrence(self, px: Array) -> tuple[Array, Array]:
        """``(log a, b)``, each ``[..., H]``, from projected inputs ``px [..., 3H]``: ``log a =
        log f'`` computed as ``-softplus(-z_f)`` (exact where ``a`` would round to 0 or 1) and
        ``b = i' h~``, so that ``recur`` maps ``h`` to ``exp(log a) h + b``."""
        z_f, z_i, k_h = self._gate_preactivations(px)
        return -jax.nn.softplus(-z_f), jax.nn.sigmoid(z_i) * CANDIDATE_ACTIVATIONS[self.candidate_activation](k_h)

    def build(self) -> Cell:
        return _min_lstm_cell(self)


def _check_activation(candidate_activation):
    return _checks.choice("candidate_activation", candidate_activation, tuple(CANDIDATE_ACTIVATIONS))


def min_gru(
    hidden_size: int,
    *,
    candidate_activation: str = "g",
    kernel_init: inits.Initializer | None = None,
    bias_init: inits.Initializer | None = None,
) -> Cell:
    r"""minGRU (Feng et al. 2024, Sec. 3.1): a GRU whose update gate and candidate read only
    ``x_t``, with no reset gate.

    .. math::

        z_t &= \sigma(x_t W_{xz} + b_z) \\
        \tilde h_t &= \phi(x_t W_{xh} + b_h) \\
        h_t &= (1 - z_t) \odot h_{t-1} + z_t \odot \tilde h_t

    so ``a_t = 1 - z_t`` and ``b_t = z_t \odot \tilde h_t`` in ``h_t = a_t h_{t-1} + b_t``.
    ``\phi`` is the paper's :func:`g` by default (the activation of its log-space version,
    App. B, which its experiments use: ``\tilde h_t > 0``); ``"identity"`` gives the
    main-text equations, ``\tilde h_t = x_t W_{xh} + b_h``. Unlike the paper's code, the
    initial state is used as given (not passed through ``g``): our parallel form does not
    need positive values.

    Blocks along the fused axis: ``(z, \tilde h)``. The gate ``z_t`` is the *update* gate of
    :func:`lstm_jax.gru` with the opposite convention (there ``z_t`` keeps ``h_{t-1}``; here,
    as in the paper, ``z_t`` writes ``\tilde h_t``).

    Args:
      hidden_size: ``H``.
      candidate_activation: ``\phi``, ``"g"`` (default) or ``"identity"``.
      kernel_init: initialiser for each ``[I, H]`` block (default Glorot uniform).
      bias_init: initialiser for each ``[H]`` bias block (default zeros).

    Returns:
      A :class:`~lstm_jax.Cell` with :class:`MinGRUConfig`, :class:`MinGRUParams` and
      :class:`MinimalState`; ``project(params, xs[..., I]) -> [..., 2H]``; ``y_t = h_t
      [..., H]``; gates ``update`` (``z_t``), ``candidate`` (``\tilde h_t``), ``hidden``. Its
      form ``"parallel"`` (``unroll(..., impl="parallel")``; opt-in) is an associative scan
      over time (:mod:`lstm_jax.kernels.linear_scan`): depth ``O(log T)`` instead of ``O(T)``
      for about twice the work, made for accelerators (on a small CPU the sequential scan
      mostly wins, see ``experiments/parallel_scan_benchmark.py``); reverse-mode gradients
      only.

    Raises:
      ValueError: a non-positive ``hidden_size``; an unknown ``candidate_activation``.
    """
    return MinGRUConfig(hidden_size, candidate_activation=candidate_activation, kernel_init=kernel_init,
                        bias_init=bias_init).build()


def min_lstm(
    hidden_size: int,
    *,
    candidate_activation: str = "g",
    normalize: bool = True,
    forget_bias: float = 0.0,
    kernel_init: inits.Initializer | None = None,
    bias_init: inits.Initializer | None = None,
) -> Cell:
    r"""minLSTM (Feng et al. 2024, Sec. 3.2): an LSTM without output gate, cell/hidden split
    or ``h_{t-1}`` in its gates, with length-independent (normalised) gates.

    .. math::

        f_t &= \sigma(x_t W_{xf} + b_f), \qquad i_t = \sigma(x_t W_{xi} + b_i) \\
        f'_t &= \frac{f_t}{f_t + i_t}, \qquad i'_t = \frac{i_t}{f_t + i_t} \\
        \tilde h_t &= \phi(x_t W_{xh} + b_h) \\
        h_t &= f'_t \odot h_{t-1} + i'_t \odot \tilde h_t

    so ``a_t = f'_t`` and ``b_t = i'_t \odot \tilde h_t``. Because ``f'_t + i'_t = 1``,
    ``h_t`` is a convex combination of ``h_{t-1}`` and ``\tilde h_t``, so its scale does
    not grow with the sequence length (the paper's Sec. 3.2.3). ``normalize=False`` keeps
    the raw gates (``h_t = f_t h_{t-1} + i_t \tilde h_t``), the paper's intermediate step.
    ``\phi`` is the paper's :func:`g` by default (its log-space version, App. B);
    ``"identity"`` gives the main-text equations. The initial state is used as given.
    The step is the shared LSTM update (:func:`lstm_jax.ops.lstm_update`) with the hidden
    state as the cell state, no output gate and the identity output activation.

    Blocks along the fused axis: ``(f, i, \tilde h)``.

    Args:
      hidden_size: ``H``.
      candidate_activation: ``\phi``, ``"g"`` (default) or ``"identity"``.
      normalize: use ``f'_t, i'_t`` (default, the paper's minLSTM) or the raw ``f_t, i_t``.
      forget_bias: added to the forget block's initial bias (default 0.0: the paper
        initialises its linear layers without one). An initial value only.
      kernel_init: initialiser for each ``[I, H]`` block (default Glorot uniform).
      bias_init: initialiser for each ``[H]`` bias block (default zeros).

    Returns:
      A :class:`~lstm_jax.Cell` with :class:`MinLSTMConfig`, :class:`MinLSTMParams` and
      :class:`MinimalState`; ``project(params, xs[..., I]) -> [..., 3H]``; ``y_t = h_t
      [..., H]``; gates ``forget`` and ``input`` (the normalised ``f'_t, i'_t`` when
      ``normalize``), ``candidate`` (``\tilde h_t``), ``hidden``. Its form ``"parallel"`` is
      the associative scan described in :func:`min_gru`.

    Raises:
      ValueError: a non-positive ``hidden_size``; an unknown ``candidate_activation``; a
        ``forget_bias`` that is not a finite number.
      TypeError: a ``normalize`` that is not a bool.
    """
    return MinLSTMConfig(hidden_size, candidate_activation=candidate_activation, normalize=normalize,
                         forget_bias=forget_bias, kernel_init=kernel_init, bias_init=bias_init).build()


def _minimal_cell(config, params_type, blocks, step, init_bias=lambda b: b) -> Cell:
    """The parts minGRU and minLSTM share: input-only projections, a one-array carry and the
    ``"parallel"`` form over ``config.linear_recurrence``."""
    H, G = config.hidden_size, len(blocks)
    kernel_init = or_default(config.kernel_init, inits.glorot_uniform)
    bias_init = or_default(config.bias_init, lambda: inits.zeros)

    def init(key, input_size, dtype):
        kx, kb = jax.random.split(key)
        return params_type(w_x=inits.init_blocks(kernel_init, kx, input_size, H, G, dtype),
                           b=init_bias(inits.init_blocks(bias_init, kb, None, H, G, dtype)))

    def init_carry(params, batch_shape):
        return MinimalState(hidden=jnp.zeros(batch_shape + (H,), params.w_x.dtype))

    def project(params, xs):
        return xs @ params.w_x + params.b

    def recur(params, carry, px, *, aux=False):
        del params  # everything input-dependent is in px
        h, gates = step(carry.hidden, px)
        return (MinimalState(h), h, dict(gates, hidden=h)) if aux else (MinimalState(h), h)

    def parallel(params, xs, carry, *, valid, resets, unroll):
        del unroll  # no sequential loop
        log_a, b = config.linear_recurrence(project(params, xs))  # [T, B, H] each
        flags, h_reset = (None, None) if resets is None else (resets.where, resets.carry.hidden)
        hs, h = linear_scan.linear_recurrence(log_a, b, carry.hidden, valid=valid, flags=flags,
                                              h_reset=h_reset)
        return hs, MinimalState(h)

    forms = {"parallel": SequenceForm(parallel, lengths=True, resets=True, auto=False,
                                      note="associative scan over time (lstm_jax.kernels.linear_scan)")}
    return make_cell(config, init=init, init_carry=init_carry, project=project, recur=recur, forms=forms)


def _min_gru_cell(config: MinGRUConfig) -> Cell:
    act = CANDIDATE_ACTIVATIONS[config.candidate_activation]

    def step(h_prev, px):
        k_z, k_h = split_blocks(px, MIN_GRU_BLOCKS).values()
        z, h_tilde = jax.nn.sigmoid(k_z), act(k_h)
        return (1.0 - z) * h_prev + z * h_tilde, {"update": z, "candidate": h_tilde}

    return _minimal_cell(config, MinGRUParams, MIN_GRU_BLOCKS, step)


def _min_lstm_cell(config: MinLSTMConfig) -> Cell:
    act = CANDIDATE_ACTIVATIONS[config.candidate_activation]
    H = config.hidden_size

    def step(h_prev, px):
        z_f, z_i, k_h = config._gate_preactivations(px)
        h, _, gates = lstm_update(z_i, z_f, k_h, None, h_prev, input_activation=act,
                                  output_activation=ACTIVATIONS["identity"])
        return h, gates  # forget, input, candidate

    return _minimal_cell(config, MinLSTMParams, MIN_LSTM_BLOCKS, step,
                         init_bias=lambda b: b.at[:H].add(jnp.asarray(config.forget_bias, b.dtype)))
