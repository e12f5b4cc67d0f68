"""The Clockwork RNN (Koutník, Greff, Gomez & Schmidhuber 2014)."""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax import _checks
from lstm_jax import initializers as inits
from lstm_jax.cell import Cell, CellConfig
from lstm_jax.cells.base import initializer, make_cell, or_default, set_fields
from lstm_jax.ops import ACTIVATIONS

Array = jax.Array

_INT32_MAX = int(np.iinfo(np.int32).max)


class ClockworkParams(NamedTuple):
    """Clockwork RNN parameters (weights ``[in, out]``).

    ``w_h`` is stored dense, but only the entries where :func:`clockwork_mask` is true are
    ever used: the others are replaced by zeros in the forward pass, so they get exactly zero
    gradient. ``init`` also sets them to zero, so ``w_h`` shows the structure.
    """

    w_x: Array  # [I, H]  input kernel (dense: every module sees the input)
    w_h: Array  # [H, H]  recurrent kernel, masked by clockwork_mask (block-lower-triangular)
    b: Array  # [H]


class ClockworkState(NamedTuple):
    """Clockwork RNN carry.

    ``step`` counts the steps taken, modulo the least common multiple of the periods (all the
    schedule needs, and it cannot overflow). It has a trailing axis of 1, so that like every
    other carry leaf it is the batch shape followed by a feature axis.
    """

    hidden: Array  # [..., H]  h_t, modules side by side, fastest first
    step: Array  # [..., 1]    int32, index of the next step (0 for a fresh carry)


def exponential_periods(num_modules: int) -> tuple[int, ...]:
    """The paper's default clock periods ``(1, 2, 4, ..., 2**(g-1))`` for ``g = num_modules``."""
    g = _checks.positive_int("num_modules", num_modules)
    return tuple(2 ** n for n in range(g))


def clockwork_mask(hidden_size: int, periods: Sequence[int]) -> np.ndarray:
    """Which recurrent weights a Clockwork RNN uses, in the ``[in, out]`` layout of ``w_h``.

    Unit ``u`` belongs to module ``u // k`` with ``k = hidden_size // len(periods)``.
    ``mask[u, v]`` (from unit ``u`` at ``t-1`` to unit ``v`` at ``t``) is true when ``u`` and
    ``v`` are in the same module, or ``u``'s module is strictly slower (larger period) than
    ``v``'s. With the periods sorted in increasing order (as :func:`clockwork` does) and all
    distinct, this is the paper's block-upper-triangular ``W_H`` transposed: block-*lower*
    triangular here, source module (row block) ``j`` >= target module (column block) ``i``.

    Args:
      hidden_size: ``H``, divisible by the number of modules.
      periods: one positive int per module.

    Returns:
      A NumPy bool array ``[H, H]``.
    """
    periods = np.asarray(periods, np.int64)
    g = len(periods)
    k = hidden_size // g
    module = np.arange(hidden_size) // k  # [H]
    src, dst = module[:, None], module[None, :]
    return (src == dst) | (periods[src] > periods[dst])


@dataclasses.dataclass(frozen=True, repr=False)
class ClockworkConfig(CellConfig):
    """Hyper-parameters of :func:`clockwork` (see there); ``periods`` is the sorted tuple of
    clock periods, one per module, fastest first."""

    constructor = "clockwork"
    hidden_size: int
    periods: tuple[int, ...]
    activation: str = "tanh"
    kernel_init: inits.Initializer | None = None
    recurrent_init: inits.Initializer | None = None
    bias_init: inits.Initializer | None = None

    def __post_init__(self):
        H = _checks.positive_int("hidden_size", self.hidden_size)
        periods = self.periods
        if isinstance(periods, (str, bytes)) or not isinstance(periods, Sequence) or not periods:
            raise ValueError(f"`periods` must be a non-empty list of positive ints, got {periods!r}.")
        periods = tuple(sorted(_checks.positive_int(f"periods[{n}]", p) for n, p in enumerate(periods)))
        if H % len(periods):
            raise ValueError(f"`hidden_size` ({H}) must be divisible by the number of modules ({len(periods)}).")
        set_fields(self, hidden_size=H, periods=periods,
                   activation=_checks.choice("activation", self.activation, ACTIVATIONS),
                   kernel_init=initializer("kernel_init", self.kernel_init),
                   recurrent_init=initializer("recurrent_init", self.recurrent_init),
                   bias_init=initializer("bias_init", self.bias_init))

    def build(self) -> Cell:
        return _clockwork_cell(self)


def clockwork(
    hidden_size: int,
    *,
    periods: Sequence[int] | None = None,
    num_modules: int | None = None,
    activation: str = "tanh",
    kernel_init: inits.Initializer | None = None,
    recurrent_init: inits.Initializer | None = None,
    bias_init: inits.Initializer | None = None,
) -> Cell:
    r"""Clockwork RNN (Koutník et al. 2014): an Elman RNN whose units tick at different rates.

    The ``H`` hidden units are split into ``g`` modules of ``k = H / g`` units; module ``i``
    has clock period ``T_i``. With ``t`` the step index (0 for the first step),
    ``\mathcal{A}_t = \{i : t \bmod T_i = 0\}`` the modules active at step ``t``,
    ``h^{(i)}`` module ``i``'s units and ``W^{(j, i)}`` the ``[k, k]`` block of ``W_h`` from
    module ``j`` to module ``i``:

    .. math::

        h^{(i)}_t = \begin{cases}
            \phi\big(x_t W_x^{(i)} + \sum_{j \to i} h^{(j)}_{t-1} W_h^{(j, i)} + b^{(i)}\big)
                & i \in \mathcal{A}_t \\
            h^{(i)}_{t-1} & \text{otherwise}
        \end{cases}

    where ``j \to i`` ranges over ``j = i`` and every module with ``T_j > T_i``: recurrent
    connections run within a module and from slower modules to faster ones only. Inactive
    modules keep their state exactly. Input connections are dense. ``y_t = h_t``; the
    paper's output layer is left to a readout on top.

    Conventions:

    * Modules are sorted by increasing period: module 0 (units ``[0, k)``) is the fastest.
      With weights ``[in, out]`` (``h_{t-1} @ W_h``) the used part of ``W_h`` is therefore
      **block-lower-triangular** (row block = source ``j`` >= column block = target ``i``);
      the paper writes ``W_H y`` and calls the same matrix block-upper-triangular.
    * The structure is *enforced*: the forward pass uses
      ``where(clockwork_mask(H, periods), W_h, 0)``, so the other entries of ``params.w_h``
      get zero gradient and never change under a gradient-based optimiser without weight
      decay (and with decay they start at zero and stay there).
    * The step counter lives in the carry (:class:`ClockworkState`), so the cell works under
      ``scan``, ``jit``, ``vmap`` and with ``lengths`` (padded steps freeze the counter with
      the rest of the carry). A fresh carry starts at ``t = 0``, where every module fires;
      pass a carry with another ``step`` to shift the phase. Read with ``reverse`` (an
      option of :func:`lstm_jax.unroll` and :func:`lstm_jax.layer`), the count starts at
      the first step *read* (the last one, or each sequence's last valid one with
      ``lengths``). A reset (``resets``) restores the initial carry, counter included, so
      every segment starts at ``t = 0``.
    * Modules with equal periods are not connected to each other (the paper's rule
      "``i`` receives from ``j`` only if ``T_i < T_j``", applied literally), so the
      connectivity does not depend on how ties are ordered.

    Cost: this implementation computes every module at every step and selects with
    ``where``, so a step costs as much as an Elman RNN of size ``H``; the paper's speed-up
    from skipping inactive modules is not realised (it does not pay under ``jit`` on SIMD
    hardware for small ``k``). Likewise ``w_h`` is stored dense: the paper's saving in
    parameters is a saving in *used* weights, not in memory.

    Args:
      hidden_size: ``H``, divisible by the number of modules.
      periods: one positive int per module, in any order (they are sorted). Default: the
        paper's exponential ``(1, 2, 4, ..., 2**(g-1))`` with ``g = num_modules``.
      num_modules: ``g``; required when ``periods`` is not given, and must equal
        ``len(periods)`` when both are.
      activation: ``\phi``, one of ``"tanh"`` (the paper's), ``"relu"``, ``"sigmoid"``,
        ``"identity"``.
      kernel_init: input kernel initialiser for ``[I, H]`` (default Glorot uniform).
      recurrent_init: initialiser for the full ``[H, H]`` (default orthogonal), whose unused
        entries are then set to zero.
      bias_init: bias initialiser (default zeros).

    Returns:
      A :class:`~lstm_jax.Cell` with :class:`ClockworkConfig` (which holds the sorted
      ``periods``), :class:`ClockworkParams` and :class:`ClockworkState`;
      ``project(params, xs[..., I]) -> [..., H]``; ``y_t = h_t [..., H]``; gates
      ``"candidate"`` (the update every module would make), ``"active"`` (1 where the module
      fired, else 0) and ``"hidden"``.

    Raises:
      ValueError: neither or inconsistent ``periods``/``num_modules``; a period that is not a
        positive int; ``hidden_size`` not divisible by the number of modules; an unknown
        ``activation``.
      TypeError: an initialiser that is not a hashable callable.
    """
    if periods is None:
        if num_modules is None:
            raise ValueError("Pass `periods` (one clock period per module) or `num_modules` "
                             "(for the exponential periods 1, 2, 4, ...); got neither.")
        periods = exponential_periods(num_modules)
    elif num_modules is not None:
        g = _checks.positive_int("num_modules", num_modules)
        if isinstance(periods, Sequence) and not isinstance(periods, (str, bytes)) and g != len(periods):
            raise ValueError(f"`num_modules` ({g}) must equal len(`periods`) ({len(periods)}); "
                             "pass only one of them.")
    return ClockworkConfig(hidden_size, periods, activation=activation, kernel_init=kernel_init,
                           recurrent_init=recurrent_init, bias_init=bias_init).build()


def _clockwork_cell(config: ClockworkConfig) -> Cell:
    H, periods = config.hidden_size, config.periods
    k = H // len(periods)
    act = ACTIVATIONS[config.activation]
    kernel_init = or_default(config.kernel_init, inits.glorot_uniform)
    recurrent_init = or_default(config.recurrent_init, inits.orthogonal)
    bias_init = or_default(config.bias_init, lambda: inits.zeros)
    mask = clockwork_mask(H, periods)  # [H, H] bool, a constant
    unit_periods = np.repeat(np.asarray(periods, np.int32), k)  # [H]
    lcm = math.lcm(*periods)
    wrap = lcm if lcm <= _INT32_MAX else None  # an lcm past int32 is never reached: count on

    def init(key, input_size, dtype):
        kx, kh, kb = jax.random.split(key, 3)
        w_h = recurrent_init(kh, (H, H), dtype)
        return ClockworkParams(w_x=kernel_init(kx, (input_size, H), dtype),
                               w_h=jnp.where(mask, w_h, jnp.zeros((), dtype)),
                               b=bias_init(kb, (H,), dtype))

    def init_carry(params, batch_shape):
        return ClockworkState(hidden=jnp.zeros(batch_shape + (H,), params.w_h.dtype),
                              step=jnp.zeros(batch_shape + (1,), jnp.int32))

    def project(params, xs):
        return xs @ params.w_x + params.b

    def recur(params, carry, px, *, aux=False):
        h_prev, step = carry.hidden, carry.step
        w_h = jnp.where(mask, params.w_h, jnp.zeros((), params.w_h.dtype))  # unused entries: no gradient
        cand = act(px + h_prev @ w_h)  # [..., H]
        active = (step % unit_periods) == 0  # [..., 1] % [H] -> [..., H]
        h = jnp.where(active, cand, h_prev)
        nxt = step + 1
        new = ClockworkState(hidden=h, step=nxt % wrap if wrap is not None else nxt)
        if aux:
            return new, h, {"candidate": cand, "active": active.astype(h.dtype), "hidden": h}
        return new, h

    return make_cell(config, init=init, init_carry=init_carry, project=project, recur=recur)
