r"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?", arXiv:2410.01201).

Both cells drop every ``h_{t-1}`` from the gates and the candidate, so the recurrence is
*linear in the carry*:

.. math::

    h_t = a_t \odot h_{t-1} + b_t, \qquad a_t \in (0, 1),

with ``a_t`` and ``b_t`` functions of ``x_t`` alone. :func:`lstm_jax.unroll` runs them step by
step like any other cell; :func:`lstm_jax.parallel.parallel_unroll` evaluates all steps at
once with an associative scan. The cells expose the coefficients it needs through
:meth:`LinearRecurrentCell.linear_recurrence`: ``(log a_t, b_t)`` from the projected inputs.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from lstm_jax import _checks
from lstm_jax import initializers as inits
from lstm_jax.cell import Cell, make_cell, split_blocks

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


CANDIDATE_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {"g": g, "identity": lambda x: x}


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


class LinearRecurrentCell(Cell):
    """A :class:`~lstm_jax.Cell` whose recurrence is linear in its one-array carry.

    Adds :meth:`linear_recurrence`, the contract :func:`lstm_jax.parallel.parallel_unroll`
    relies on: for every ``px`` from ``project``,
    ``recur(params, State(h), px) == (State(exp(log_a) * h + b), exp(log_a) * h + b)``.
    """

    __slots__ = ()

    def linear_recurrence(self, params, px: Array) -> tuple[Array, Array]:
        """``(log a, b)``, each ``[..., H]``, from projected inputs ``px`` (any leading axes).

        ``log a`` is computed directly in log space (``-softplus``), so it stays exact where
        ``a`` itself would round to 0 or 1.
        """
        act = CANDIDATE_ACTIVATIONS[self.options["candidate_activation"]]
        if self.name == "min_gru":
            return _min_gru_coefficients(px, act)
        return _min_lstm_coefficients(px, act, self.options["normalize"])


def _min_gru_coefficients(px, act):
    k_z, k_h = split_blocks(px, MIN_GRU_BLOCKS).values()
    log_a = -jax.nn.softplus(k_z)  # log(1 - z)
    return log_a, jax.nn.sigmoid(k_z) * act(k_h)  # b = z * h~


def _min_lstm_coefficients(px, act, normalize):
    k_f, k_i, k_h = split_blocks(px, MIN_LSTM_BLOCKS).values()
    if not normalize:
        return -jax.nn.softplus(-k_f), jax.nn.sigmoid(k_i) * act(k_h)  # (log f, i * h~)
    # d = log i - log f, so f' = f / (f + i) = sigma(-d) and i' = sigma(d) (the paper's App. B)
    d = jax.nn.softplus(-k_f) - jax.nn.softplus(-k_i)
    return -jax.nn.softplus(d), jax.nn.sigmoid(d) * act(k_h)


def _as_linear_cell(cell: Cell) -> LinearRecurrentCell:
    return LinearRecurrentCell(*cell)


def _check_activation(candidate_activation):
    return _checks.choice("candidate_activation", candidate_activation, tuple(CANDIDATE_ACTIVATIONS))


def min_gru(
    hidden_size: int,
    *,
    candidate_activation: str = "g",
    kernel_init: inits.Initializer | None = None,
    bias_init: inits.Initializer | None = None,
) -> LinearRecurrentCell:
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
    initial state is used as given (not passed through ``g``): our parallel mode does not
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
      A :class:`LinearRecurrentCell` with :class:`MinGRUParams` and :class:`MinimalState`;
      ``project(params, xs[..., I]) -> [..., 2H]``; ``y_t = h_t [..., H]``; gates
      ``update`` (``z_t``), ``candidate`` (``\tilde h_t``), ``hidden``.
    """
    H = _checks.positive_int("hidden_size", hidden_size)
    act = CANDIDATE_ACTIVATIONS[_check_activation(candidate_activation)]
    kernel_init = kernel_init or inits.glorot_uniform()
    bias_init = bias_init or inits.zeros

    def init(key, input_size, *, dtype=jnp.float32):
        input_size = _checks.positive_int("input_size", input_size)
        dtype = _checks.floating_dtype("dtype", dtype)
        kx, kb = jax.random.split(key)
        return MinGRUParams(w_x=inits.init_blocks(kernel_init, kx, input_size, H, 2, dtype),
                            b=inits.init_blocks(bias_init, kb, None, H, 2, dtype))

    def init_carry(params, batch_shape=()):
        _checks.params_of(params, MinGRUParams, "w_x", 2 * H)
        return MinimalState(hidden=jnp.zeros(_checks.batch_shape(batch_shape) + (H,), params.w_x.dtype))

    def project(params, xs):
        _checks.params_of(params, MinGRUParams, "w_x", 2 * H)
        _checks.features("xs", xs, params.w_x.shape[0], params.w_x.dtype)
        return xs @ params.w_x + params.b

    def recur_impl(params, carry, px, with_gates):
        del params  # everything input-dependent is in px
        k_z, k_h = split_blocks(px, MIN_GRU_BLOCKS).values()
        z = jax.nn.sigmoid(k_z)
        h_tilde = act(k_h)
        h = (1.0 - z) * carry.hidden + z * h_tilde
        if with_gates:
            return MinimalState(h), h, {"update": z, "candidate": h_tilde, "hidden": h}
        return MinimalState(h), h

    return _as_linear_cell(make_cell(
        name="min_gru", options=dict(hidden_size=H, candidate_activation=candidate_activation),
        hidden_size=H, output_size=H, init=init, init_carry=init_carry, project=project,
        recur_impl=recur_impl))


def min_lstm(
    hidden_size: int,
    *,
    candidate_activation: str = "g",
    normalize: bool = True,
    forget_bias: float = 0.0,
    kernel_init: inits.Initializer | None = None,
    bias_init: inits.Initializer | None = None,
) -> LinearRecurrentCell:
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
      A :class:`LinearRecurrentCell` with :class:`MinLSTMParams` and :class:`MinimalState`;
      ``project(params, xs[..., I]) -> [..., 3H]``; ``y_t = h_t [..., H]``; gates
      ``forget`` and ``input`` (the normalised ``f'_t, i'_t`` when ``normalize``),
      ``candidate`` (``\tilde h_t``), ``hidden``.
    """
    H = _checks.positive_int("hidden_size", hidden_size)
    act = CANDIDATE_ACTIVATIONS[_check_activation(candidate_activation)]
    if not isinstance(normalize, bool):
        raise TypeError(f"`normalize` must be a bool, got {normalize!r}.")
    kernel_init = kernel_init or inits.glorot_uniform()
    bias_init = bias_init or inits.zeros

    def init(key, input_size, *, dtype=jnp.float32):
        input_size = _checks.positive_int("input_size", input_size)
        dtype = _checks.floating_dtype("dtype", dtype)
        kx, kb = jax.random.split(key)
        b = inits.init_blocks(bias_init, kb, None, H, 3, dtype)
        return MinLSTMParams(w_x=inits.init_blocks(kernel_init, kx, input_size, H, 3, dtype),
                             b=b.at[:H].add(jnp.asarray(forget_bias, dtype)))

    def init_carry(params, batch_shape=()):
        _checks.params_of(params, MinLSTMParams, "w_x", 3 * H)
        return MinimalState(hidden=jnp.zeros(_checks.batch_shape(batch_shape) + (H,), params.w_x.dtype))

    def project(params, xs):
        _checks.params_of(params, MinLSTMParams, "w_x", 3 * H)
        _checks.features("xs", xs, params.w_x.shape[0], params.w_x.dtype)
        return xs @ params.w_x + params.b

    def recur_impl(params, carry, px, with_gates):
        del params  # everything input-dependent is in px
        k_f, k_i, k_h = split_blocks(px, MIN_LSTM_BLOCKS).values()
        if normalize:  # f / (f + i) = sigma(-d), i / (f + i) = sigma(d) with d = log i - log f;
            # the same values, but no 0 / 0 where both sigmoids underflow
            d = jax.nn.softplus(-k_f) - jax.nn.softplus(-k_i)
            f, i = jax.nn.sigmoid(-d), jax.nn.sigmoid(d)
        else:
            f, i = jax.nn.sigmoid(k_f), jax.nn.sigmoid(k_i)
        h_tilde = act(k_h)
        h = f * carry.hidden + i * h_tilde
        if with_gates:
            return MinimalState(h), h, {"forget": f, "input": i, "candidate": h_tilde, "hidden": h}
        return MinimalState(h), h

    options = dict(hidden_size=H, candidate_activation=candidate_activation, normalize=normalize,
                   forget_bias=forget_bias)
    return _as_linear_cell(make_cell(
        name="min_lstm", options=options, hidden_size=H, output_size=H, init=init,
        init_carry=init_carry, project=project, recur_impl=recur_impl))
