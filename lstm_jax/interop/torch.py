r"""PyTorch interop: ``torch.nn.RNN``/``LSTM``/``GRU`` to and from lstm_jax stacks.

PyTorch is imported lazily, inside the functions that need it: importing this module (and
using lstm_jax) never requires PyTorch.

Structure. A PyTorch module with ``num_layers = L`` and ``D`` directions (2 if
``bidirectional``) becomes ``stack([l_0, ..., l_{L-1}], dropout_rate=module.dropout,
time_major=not batch_first)`` where each ``l_k`` is ``layer(cell)`` (``D = 1``) or
``bidirectional(cell, cell, merge="concat")`` (``D = 2``; PyTorch concatenates the forward
and backward outputs in that order). A one-layer module is a stack of one layer too, so the
params are always a tuple with one entry per layer: ``params[k]`` is the cell's params, or
``BidirectionalParams(forward, backward)``.

Weights. PyTorch stores ``weight_ih_l{k}[_reverse]`` as ``[G*H, I]`` and multiplies from the
left; lstm_jax stores ``[I, G*H]`` and multiplies from the right, with the same gate order
(LSTM ``(i, f, g, o)``, GRU ``(r, z, n)``). For layer ``k`` and direction suffix ``s``
(``""`` or ``"_reverse"``):

=================  ==========================================================================
ours               PyTorch
=================  ==========================================================================
``w_x [I, G*H]``   ``weight_ih_l{k}{s}.T``
``w_h [O, G*H]``   ``weight_hh_l{k}{s}.T`` (``O = proj_size`` for a projected LSTM, else ``H``)
``b [G*H]``        ``bias_ih_l{k}{s} + bias_hh_l{k}{s}`` (RNN, LSTM)
``b [3H]``         ``bias_ih_l{k}{s} + concat(b_hr, b_hz, 0)`` (GRU; ``b_hh = (b_hr, b_hz, b_hn)``)
``b_hn [H]``       ``bias_hh_l{k}{s}[2H:]`` (GRU: the bias inside ``r * (h W_hn + b_hn)``)
``w_proj [H, P]``  ``weight_hr_l{k}{s}.T`` (LSTM with ``proj_size = P``)
=================  ==========================================================================

A module built with ``bias=False`` gives zero biases. :func:`to_torch` goes back the other
way, putting all of ``b`` into ``bias_ih`` and zeros into ``bias_hh`` (for a GRU, ``b_hn``
fills the ``n`` block of ``bias_hh``), which computes the same function.

States. PyTorch's ``h_n`` is ``[L*D, B, O]`` and ``c_n`` is ``[L*D, B, H]``, indexed by
``k * D + d`` (``d = 1`` backward). Ours is a tuple over layers of ``LSTMState``/``GRUState``/
``RNNState``, or ``BidirectionalCarry(forward, backward)`` of those.
:func:`carry_from_torch` and :func:`carry_to_torch` convert between the two.

Example::

    module = torch.nn.LSTM(8, 16, num_layers=2, bidirectional=True, batch_first=True)
    layer, params = from_torch(module)
    ys, carry = layer.apply(params, xs)          # == module(torch.from_numpy(xs))
    h_n, c_n = carry_to_torch(carry)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from lstm_jax.cell import Cell
from lstm_jax.cells.gru import GRUConfig, GRUParams, GRUState
from lstm_jax.cells.lstm import LSTMConfig, LSTMParams, LSTMState
from lstm_jax.cells.mut import MUTConfig
from lstm_jax.cells.rnn import RNNConfig, RNNParams, RNNState
from lstm_jax.layers import (BidirectionalCarry, BidirectionalConfig, BidirectionalParams, Layer, LayerConfig,
                             StackConfig, bidirectional, layer as make_layer, stack)

_MODES = ("RNN_TANH", "RNN_RELU", "LSTM", "GRU")
# LSTMConfig fields PyTorch cannot express: (field, the value PyTorch has, what it lacks).
_LSTM_FIXED = (
    ("peephole", False, "peepholes"),
    ("coupled", False, "coupled input-forget gates (CIFG)"),
    ("input_gate", True, "LSTMs without an input gate"),
    ("forget_gate", True, "LSTMs without a forget gate"),
    ("output_gate", True, "LSTMs without an output gate"),
    ("input_activation", "tanh", "input activations other than tanh"),
    ("output_activation", "tanh", "output activations other than tanh"),
    ("full_gate_recurrence", False, "full gate recurrence"),
    ("layer_norm", False, "layer normalisation"),
)


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - exercised in a subprocess
        raise ImportError("lstm_jax.interop.torch needs PyTorch for this function; "
                          "install it (e.g. `pip install torch`).") from e
    return torch


def _jax_dtype(torch_dtype):
    torch = _torch()
    table = {torch.float16: jnp.float16, torch.bfloat16: jnp.bfloat16,
             torch.float32: jnp.float32, torch.float64: jnp.float64}
    if torch_dtype not in table:
        raise TypeError(f"PyTorch dtype {torch_dtype} has no lstm_jax equivalent; use a floating dtype.")
    return table[torch_dtype]


def _torch_dtype(jax_dtype):
    torch = _torch()
    table = {"float16": torch.float16, "bfloat16": torch.bfloat16,
             "float32": torch.float32, "float64": torch.float64}
    name = jnp.dtype(jax_dtype).name
    if name not in table:
        raise TypeError(f"dtype {name} has no PyTorch equivalent; use a floating dtype.")
    return table[name]


def _np(t) -> np.ndarray:
    """A float64 NumPy copy of a tensor (exact for every floating dtype)."""
    return t.detach().cpu().to(dtype=_torch().float64).numpy()


def _to_jax(x, name: str):
    """A JAX array from a tensor (keeping its dtype) or anything ``jnp.asarray`` takes."""
    if hasattr(x, "detach"):  # a torch.Tensor
        return jnp.asarray(_np(x), _jax_dtype(x.dtype))
    if not hasattr(x, "shape") and not isinstance(x, (list, tuple)):
        raise TypeError(f"`{name}` must be an array or a torch.Tensor, got {type(x).__name__}.")
    return jnp.asarray(x)


def _to_tensor(x, dtype=None):
    x = jnp.asarray(x)
    dtype = dtype or _torch_dtype(x.dtype)
    return _torch().from_numpy(np.array(x, dtype=np.float64)).to(dtype)


def _suffix(k: int, d: int) -> str:
    return f"_l{k}" + ("_reverse" if d else "")


# --------------------------------------------------------------------------- from_torch


def _cell_for(module) -> Cell:
    H = module.hidden_size
    if module.mode == "LSTM":  # forget_bias only initialises; the converted biases are PyTorch's
        return LSTMConfig(H, forget_bias=0.0, proj_size=module.proj_size or None).build()
    if module.mode == "GRU":
        return GRUConfig(H, reset_after=True).build()
    return RNNConfig(H, activation="tanh" if module.mode == "RNN_TANH" else "relu").build()


def _params_for(module, k: int, d: int, dtype):
    """One direction of one layer: PyTorch's tensors mapped to our params NamedTuple."""
    s = _suffix(k, d)
    get = lambda name: _np(getattr(module, name + s))
    w_x, w_h = get("weight_ih").T, get("weight_hh").T
    gh = w_x.shape[1]
    b_ih, b_hh = (get("bias_ih"), get("bias_hh")) if module.bias else (np.zeros(gh), np.zeros(gh))
    cast = lambda a: jnp.asarray(a, dtype)
    if module.mode == "GRU":
        H = gh // 3
        b = b_ih + np.concatenate([b_hh[:2 * H], np.zeros(H)])
        return GRUParams(w_x=cast(w_x), w_h=cast(w_h), b=cast(b), b_hn=cast(b_hh[2 * H:]))
    if module.mode == "LSTM":
        w_proj = cast(get("weight_hr").T) if module.proj_size else None
        return LSTMParams(w_x=cast(w_x), w_h=cast(w_h), b=cast(b_ih + b_hh), w_proj=w_proj)
    return RNNParams(w_x=cast(w_x), w_h=cast(w_h), b=cast(b_ih + b_hh))


def from_torch(module) -> tuple[Layer, tuple]:
    """Converts a ``torch.nn.RNN``, ``nn.LSTM`` (including ``proj_size``) or ``nn.GRU``.

    Args:
      module: the PyTorch module, any ``num_layers``, ``bidirectional``, ``batch_first``,
        ``bias`` and ``dropout``, on any device, in float16/bfloat16/float32/float64.

    Returns:
      ``(layer, params)``: ``layer`` is an lstm_jax ``stack`` of ``num_layers`` layers (one
      layer is still a stack of one), each ``layer(cell)`` or ``bidirectional(cell, cell,
      merge="concat")``, with ``time_major = not batch_first`` and ``dropout_rate =
      module.dropout`` (applied only when ``apply`` gets a ``key``, i.e. ``module.train()``).
      ``params`` is a tuple with one entry per layer (the cell's params, or
      ``BidirectionalParams``), in the module's dtype (float64 needs ``jax_enable_x64``).
      ``layer.apply(params, xs)`` with ``xs`` ``[B, T, I]`` (``[T, B, I]`` if not
      ``batch_first``) returns ``ys`` ``[B, T, D*O]`` equal to the module's output, and a
      carry that :func:`carry_to_torch` turns into its ``h_n`` (and ``c_n``).

    Raises:
      TypeError: ``module`` is not an ``nn.RNN``/``nn.LSTM``/``nn.GRU`` (cells such as
        ``nn.LSTMCell`` included), or has a non-floating dtype.
    """
    torch = _torch()
    if not isinstance(module, torch.nn.RNNBase) or getattr(module, "mode", None) not in _MODES:
        raise TypeError("`module` must be a torch.nn.RNN, torch.nn.LSTM or torch.nn.GRU, "
                        f"got {type(module).__name__}.")
    dtype = _jax_dtype(module.weight_ih_l0.dtype)
    cell, tm = _cell_for(module), not module.batch_first
    D = 2 if module.bidirectional else 1
    layers, params = [], []
    for k in range(module.num_layers):
        if D == 2:
            layers.append(bidirectional(cell, cell, merge="concat", time_major=tm))
            params.append(BidirectionalParams(_params_for(module, k, 0, dtype),
                                              _params_for(module, k, 1, dtype)))
        else:
            layers.append(make_layer(cell, time_major=tm))
            params.append(_params_for(module, k, 0, dtype))
    return stack(layers, dropout_rate=float(module.dropout), time_major=tm), tuple(params)


# --------------------------------------------------------------------------- states


def _layer_cells(layer: Layer) -> list[tuple[Layer, list[Cell]]]:
    """``[(sub_layer, [cell] or [forward_cell, backward_cell])]`` for each layer of a stack."""
    match layer:
        case Layer(config=StackConfig(layers=layers)):
            pass
        case _:
            got = repr(layer) if isinstance(layer, Layer) else f"a {type(layer).__name__}"
            raise ValueError("`layer` must be a stack (as returned by from_torch or lstm_jax.stack; wrap a "
                             f"single layer as stack([layer])), got {got}.")
    out = []
    for k, sub in enumerate(layers):
        match sub.config:
            case LayerConfig(cell=cell):
                out.append((sub, [cell]))
            case BidirectionalConfig(forward=Layer(config=LayerConfig(cell=fwd)),
                                     backward=Layer(config=LayerConfig(cell=bwd))):
                out.append((sub, [fwd, bwd]))
            case _:
                raise ValueError(f"`layer.config.layers[{k}]` must be a single-cell layer or a bidirectional pair "
                                 f"of them (PyTorch has nothing else), got {sub!r} "
                                 "(nested stacks are not supported).")
    return out


def _state_type(cell: Cell) -> type | None:
    """The carry NamedTuple that PyTorch's ``h_n`` (and ``c_n``) hold for ``cell``, if any."""
    match cell.config:
        case LSTMConfig(full_gate_recurrence=False):
            return LSTMState
        case GRUConfig() | MUTConfig():
            return GRUState
        case RNNConfig():
            return RNNState
    return None


def carry_from_torch(layer: Layer, h0, c0=None) -> tuple:
    """PyTorch's initial/final states as the carry of a stack (e.g. from :func:`from_torch`).

    Args:
      layer: a ``stack`` of single-cell layers and/or ``bidirectional`` pairs of them (read
        from ``layer.config``), with ``L*D`` directions in all.
      h0: ``[L*D, ..., O]`` hidden states (``O`` = ``proj_size`` for a projected LSTM), a
        ``torch.Tensor`` (its dtype is kept) or an array; ``...`` is the batch shape
        (``[B]`` or none). Index ``k * D + d``: layer ``k``, direction ``d`` (1 = backward).
      c0: ``[L*D, ..., H]`` cell states; required for LSTMs and only for them.

    Returns:
      A tuple over layers of ``LSTMState(hidden, cell)``, ``GRUState(hidden)`` or
      ``RNNState(hidden)``, or ``BidirectionalCarry(forward, backward)`` of those, each leaf
      ``[..., n]``: pass it as ``layer.apply(params, xs, carry)``.

    Raises:
      ValueError: ``layer`` is not such a stack; it mixes LSTM and non-LSTM cells or holds a
        cell without a PyTorch-like state; ``h0``/``c0`` have the wrong shape; ``c0`` missing
        for an LSTM or given for another cell.
    """
    layers = _layer_cells(layer)
    cells = [c for _, cs in layers for c in cs]
    states = [_state_type(c) for c in cells]
    for c, state_type in zip(cells, states):
        if state_type is None:
            raise ValueError(f"cell {c!r} has a state PyTorch cannot express (only rnn, gru, mut and lstm "
                             "cells without full gate recurrence).")
    is_lstm = {state_type is LSTMState for state_type in states}
    if len(is_lstm) != 1:
        raise ValueError("`layer` mixes LSTM and non-LSTM cells, whose states PyTorch cannot hold in one h0/c0.")
    is_lstm = is_lstm.pop()
    h0 = _to_jax(h0, "h0")
    if h0.ndim < 2 or h0.shape[0] != len(cells):
        raise ValueError(f"`h0` must have shape [{len(cells)}, ..., O] (num_layers * num_directions first), "
                         f"got {tuple(h0.shape)}.")
    if is_lstm != (c0 is not None):
        raise ValueError("`c0` is required for LSTM cells and only for them"
                         + (", got None." if is_lstm else "."))
    if is_lstm:
        c0 = _to_jax(c0, "c0")
        if c0.shape[:-1] != h0.shape[:-1]:
            raise ValueError(f"`c0` must have shape [{len(cells)}, {', '.join(map(str, h0.shape[1:-1]))}"
                             f"{', ' if h0.ndim > 2 else ''}H] (like `h0` but for the last axis), "
                             f"got {tuple(c0.shape)}.")
    for i, c in enumerate(cells):
        if h0.shape[-1] != c.output_size or (is_lstm and c0.shape[-1] != c.hidden_size):
            raise ValueError(f"direction {i} ({c!r}) needs `h0[{i}]` of size {c.output_size}"
                             + (f" and `c0[{i}]` of size {c.hidden_size}" if is_lstm else "")
                             + f", got {h0.shape[-1]}" + (f" and {c0.shape[-1]}." if is_lstm else "."))

    def state(i):
        return LSTMState(hidden=h0[i], cell=c0[i]) if is_lstm else states[i](h0[i])

    carry, i = [], 0
    for _, cs in layers:
        parts = [state(i + d) for d in range(len(cs))]
        carry.append(parts[0] if len(cs) == 1 else BidirectionalCarry(*parts))
        i += len(cs)
    return tuple(carry)


def carry_to_torch(carry):
    """Our carry as PyTorch's final state (what ``module(xs)`` returns second).

    Args:
      carry: a tuple over layers of ``LSTMState``/``GRUState``/``RNNState`` (leaves
        ``[..., n]``) or ``BidirectionalCarry(forward, backward)`` of those, as returned by
        ``apply`` of a stack; a single (non-tuple) state is taken as a one-layer stack.

    Returns:
      For LSTMs ``(h_n, c_n)`` with ``h_n`` ``[L*D, ..., O]`` and ``c_n`` ``[L*D, ..., H]``;
      otherwise ``h_n`` ``[L*D, ..., H]``: CPU ``torch.Tensor`` objects in the carry's dtype,
      index ``k * D + d`` (``d = 1`` backward).

    Raises:
      ValueError: an entry is not one of those states, LSTM states are mixed with others,
        the states differ in shape, or an LSTM state carries gates (full gate recurrence).
    """
    torch = _torch()
    if isinstance(carry, (LSTMState, GRUState, RNNState, BidirectionalCarry)):
        carry = (carry,)
    if not isinstance(carry, (tuple, list)) or not carry:
        raise ValueError(f"`carry` must be a non-empty tuple over layers, got {type(carry).__name__}.")
    states = []
    for k, entry in enumerate(carry):
        parts = tuple(entry) if isinstance(entry, BidirectionalCarry) else (entry,)
        for s in parts:
            if not isinstance(s, (LSTMState, GRUState, RNNState)):
                raise ValueError(f"`carry[{k}]` must be an LSTMState, GRUState, RNNState or BidirectionalCarry "
                                 f"of them, got {type(s).__name__}.")
            if isinstance(s, LSTMState) and s.gates is not None:
                raise ValueError(f"`carry[{k}]` carries gate activations (full gate recurrence), "
                                 "which PyTorch has no place for.")
            states.append(s)
    kinds = {isinstance(s, LSTMState) for s in states}
    if len(kinds) != 1:
        raise ValueError("`carry` mixes LSTM states with others; PyTorch holds one kind of state.")
    fields = ("hidden", "cell") if kinds.pop() else ("hidden",)
    out = []
    for f in fields:
        leaves = [getattr(s, f) for s in states]
        shapes = {tuple(jnp.shape(x)) for x in leaves}
        if len(shapes) != 1:
            raise ValueError(f"`carry` {f} states differ in shape ({sorted(shapes)}); PyTorch stacks them "
                             "into one tensor, so all layers need one size.")
        out.append(torch.stack([_to_tensor(x) for x in leaves]))
    return tuple(out) if len(out) == 2 else out[0]


# --------------------------------------------------------------------------- to_torch


class _TorchSignature(NamedTuple):
    """What a cell is in PyTorch's terms."""

    mode: str  # RNNBase.mode: "RNN_TANH", "RNN_RELU", "LSTM" or "GRU"
    hidden_size: int
    proj_size: int  # 0: none
    params: type  # our params NamedTuple for that mode


def _torch_signature(cell: Cell, where: str) -> _TorchSignature:
    """The PyTorch module computing ``cell``, or a ValueError naming what PyTorch lacks."""
    match cell.config:
        case RNNConfig(hidden_size=H, activation=activation):
            return _TorchSignature("RNN_TANH" if activation == "tanh" else "RNN_RELU", H, 0, RNNParams)
        case GRUConfig(reset_after=False):
            raise ValueError(f"{where}: PyTorch's nn.GRU applies the reset gate after the matmul; "
                             f"GRU reset_after=False is not supported ({cell!r}).")
        case GRUConfig(hidden_size=H):
            return _TorchSignature("GRU", H, 0, GRUParams)
        case LSTMConfig(hidden_size=H, proj_size=proj_size) as config:
            for option, value, what in _LSTM_FIXED:
                if getattr(config, option) != value:
                    raise ValueError(f"{where}: PyTorch's nn.LSTM has no {what} "
                                     f"({option}={getattr(config, option)!r} in {cell!r}).")
            return _TorchSignature("LSTM", H, proj_size or 0, LSTMParams)
    raise ValueError(f"{where}: cell {cell.config.constructor!r} has no PyTorch equivalent (only rnn, lstm "
                     f"and gru cells convert; got {cell!r}).")


def _torch_tensors(p) -> dict[str, Any]:
    """Our params of one direction as ``{torch name prefix: array in PyTorch's layout}``."""
    gh = p.w_x.shape[1]
    out = {"weight_ih": p.w_x.T, "weight_hh": p.w_h.T, "bias_ih": p.b,
           "bias_hh": jnp.zeros((gh,), p.b.dtype)}
    match p:
        case GRUParams(b_hn=b_hn):
            out["bias_hh"] = out["bias_hh"].at[2 * gh // 3:].set(b_hn)
        case LSTMParams(w_proj=w_proj) if w_proj is not None:
            out["weight_hr"] = w_proj.T
    return out


def to_torch(layer: Layer, params):
    """Builds the ``torch.nn.RNN``/``nn.LSTM``/``nn.GRU`` that computes ``layer.apply(params, .)``.

    Args:
      layer: a ``stack`` (from :func:`from_torch` or ``lstm_jax.stack``) of ``L`` layers that
        are all ``layer(cell)`` or all ``bidirectional(cell, cell, merge="concat")``, with one
        cell type and size throughout: ``rnn`` (tanh/relu), ``gru`` (``reset_after=True``) or
        ``lstm`` (no peepholes, all gates, tanh activations, no full gate recurrence;
        ``proj_size`` allowed).
      params: its params: a tuple of ``L`` per-layer params (``BidirectionalParams`` for
        bidirectional layers), any floating dtype.

    Returns:
      A module on the CPU in the params' dtype, with ``num_layers = L``, ``bidirectional =
      (D == 2)``, ``batch_first = not layer.time_major``, ``dropout = dropout_rate`` and
      ``bias=True``; all of ``b`` sits in ``bias_ih`` and ``bias_hh`` is zero (for a GRU
      ``bias_hh[2H:] = b_hn``). ``module(xs)[0]`` equals ``layer.apply(params, xs)[0]``
      (``[B, T, D*O]``, or ``[T, B, D*O]`` time-major).

    Raises:
      ValueError: anything PyTorch cannot express: a non-stack layer, a reverse-only layer,
        a merge other than "concat", mixed directions, cells of different types or sizes, a
        cell option PyTorch lacks (peepholes, coupled gates, GRU ``reset_after=False``, ...),
        or params not matching the layer.
    """
    torch = _torch()
    layers = _layer_cells(layer)
    signatures, dirs = [], set()
    for k, (sub, cells) in enumerate(layers):
        match sub.config:
            case BidirectionalConfig(merge=merge) if merge != "concat":
                raise ValueError(f"layers[{k}]: PyTorch concatenates both directions; merge={merge!r} is "
                                 "not supported (use merge='concat').")
            case LayerConfig(reverse=True):
                raise ValueError(f"layers[{k}]: a reverse-only layer is not supported (PyTorch reads "
                                 "backwards only inside a bidirectional layer).")
        parts = [sub] if len(cells) == 1 else [sub.config.forward, sub.config.backward]
        if any(part.config.learn_initial_carry for part in parts):
            raise ValueError(f"layers[{k}]: a learned initial carry is not supported (PyTorch starts "
                             "from zeros or from the h0/c0 it is given).")
        dirs.add(len(cells))
        for d, c in enumerate(cells):
            signatures.append(_torch_signature(c, f"layers[{k}]" + (".backward" if d else "")))
    if len(dirs) != 1:
        raise ValueError("mixed directions are not supported: PyTorch layers are all bidirectional or all "
                         "unidirectional.")
    if len({s.mode for s in signatures}) != 1:
        raise ValueError(f"layers of different types are not supported: {sorted({s.mode for s in signatures})}.")
    sizes = {(s.hidden_size, s.proj_size) for s in signatures}
    if len(sizes) != 1:
        raise ValueError(f"layers of different sizes are not supported: (hidden_size, proj_size) = {sorted(sizes)}.")
    mode, H, P, expected = signatures[0]
    D = dirs.pop()
    if not isinstance(params, (tuple, list)) or len(params) != len(layers):
        raise ValueError(f"`params` must be a tuple of {len(layers)} per-layer params, got "
                         f"{type(params).__name__}.")
    per_direction = []
    for k, p in enumerate(params):
        if D == 2 and not isinstance(p, BidirectionalParams):
            raise ValueError(f"`params[{k}]` must be BidirectionalParams, got {type(p).__name__}.")
        for d, pd in enumerate((p.forward, p.backward) if D == 2 else (p,)):
            if not isinstance(pd, expected):
                raise ValueError(f"`params` for layers[{k}]{'.backward' if d else ''} must be "
                                 f"{expected.__name__}, got {type(pd).__name__}.")
            per_direction.append((k, d, pd))

    first = per_direction[0][2]
    dtypes = {jnp.dtype(x.dtype) for *_, pd in per_direction for x in (pd.w_x, pd.w_h, pd.b)}
    if len(dtypes) != 1:
        raise ValueError(f"`params` mix dtypes {sorted(str(d) for d in dtypes)}.")
    cls = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU}.get(mode, torch.nn.RNN)
    kwargs = dict(proj_size=P) if mode == "LSTM" else {}
    if mode.startswith("RNN"):
        kwargs = dict(nonlinearity="tanh" if mode == "RNN_TANH" else "relu")
    module = cls(int(first.w_x.shape[0]), H, num_layers=len(layers), bias=True,
                 batch_first=not layer.time_major, dropout=float(layer.config.dropout_rate),
                 bidirectional=D == 2, dtype=_torch_dtype(dtypes.pop()), **kwargs)
    with torch.no_grad():
        for k, d, pd in per_direction:
            for prefix, value in _torch_tensors(pd).items():
                target = getattr(module, prefix + _suffix(k, d))
                if tuple(value.shape) != tuple(target.shape):
                    raise ValueError(f"`params` for layers[{k}]{'.backward' if d else ''} give {prefix} "
                                     f"shape {tuple(value.shape)}, but PyTorch needs {tuple(target.shape)} "
                                     "(layer input sizes must chain).")
                target.copy_(_to_tensor(value, target.dtype))
    return module
