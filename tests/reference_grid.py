"""Float64 NumPy reference of the Grid LSTM (Kalchbrenner, Danihelka & Graves 2015), written
from the paper's equations. Nothing here imports ``lstm_jax`` or ``jax``.

Weights are per gate, with the paper's gate names (``u`` input/"update", ``f`` forget, ``c``
candidate, ``o`` output) and ``[in, out]`` layout (``H @ W``), so the reference knows nothing
of the library's fused ``(i, f, g, o)`` layout.

One LSTM transform (eq. 1, plus a bias)::

    g^u = sigma(H W_u + b_u)   g^f = sigma(H W_f + b_f)   g^o = sigma(H W_o + b_o)
    g^c = tanh(H W_c + b_c)
    m'  = g^f * m + g^u * g^c
    h'  = g^o * tanh(m')          ("standard")   or   tanh(g^o * m')   ("paper", as printed)

An N-D block (eq. 3): ``H = [h_1; ...; h_N]`` and ``(h'_i, m'_i) = LSTM(H, m_i, W_i)``; a
non-LSTM dimension (sec. 3.3) has ``h'_i = alpha(H V_i + c_i)`` and no memory; a priority
dimension ``p`` (sec. 3.2) is computed last from ``H' = [h'_1; ..; h_p; ..; h'_N]``.
"""

from __future__ import annotations

import numpy as np


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


TRANSFER = {"identity": lambda z: z, "tanh": np.tanh, "relu": lambda z: np.maximum(z, 0.0)}


def _f64(tree):
    if isinstance(tree, dict):
        return {k: _f64(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_f64(v) for v in tree]
    return np.asarray(tree, np.float64)


def lstm_transform(p, Hv, m, output_form="standard"):
    """``(h', m', acts)`` of one LSTM transform; ``p``: ``W_{u,f,c,o} [NH, H]``, ``b_{u,f,c,o} [H]``."""
    gu = sigmoid(Hv @ p["W_u"] + p["b_u"])
    gf = sigmoid(Hv @ p["W_f"] + p["b_f"])
    go = sigmoid(Hv @ p["W_o"] + p["b_o"])
    gc = np.tanh(Hv @ p["W_c"] + p["b_c"])
    m_new = gf * m + gu * gc
    h_new = go * np.tanh(m_new) if output_form == "standard" else np.tanh(go * m_new)
    acts = {"input": gu, "forget": gf, "candidate": gc, "output": go, "memory": m_new, "hidden": h_new}
    return h_new, m_new, acts


def transfer(p, Hv, activation):
    """Non-LSTM dimension: ``h' = alpha(H V + c)``; ``p``: ``V [NH, H]``, ``c [H]``."""
    return TRANSFER[activation](Hv @ p["V"] + p["c"])


def grid_block(dims, hs, ms, *, priority=None, output_form="standard", transfer_activation="identity"):
    """One N-D block. ``dims``: N dicts, LSTM weights or ``{"V", "c"}`` (non-LSTM); ``hs``, ``ms``:
    N arrays ``[B, H]`` (``ms[i]`` None for a non-LSTM dimension). Returns ``(hs', ms')``."""
    dims, hs = _f64(dims), _f64(hs)
    ms = [None if m is None else _f64(m) for m in ms]
    N = len(dims)
    new_h, new_m = [None] * N, [None] * N

    def one(i, Hv):
        if "V" in dims[i]:
            return transfer(dims[i], Hv, transfer_activation), None
        h, m, _ = lstm_transform(dims[i], Hv, ms[i], output_form)
        return h, m

    Hv = np.concatenate(hs, axis=-1)
    for i in range(N):
        if i != priority:
            new_h[i], new_m[i] = one(i, Hv)
    if priority is not None:
        Hp = np.concatenate([hs[i] if i == priority else new_h[i] for i in range(N)], axis=-1)
        new_h[priority], new_m[priority] = one(priority, Hp)
    return new_h, new_m


def grid_lstm_2d(p, xs, state=None, *, priority=True, depth_lstm=True, depth_activation="identity",
                 output_form="standard"):
    """2-D Grid LSTM along time and depth, stepped in a loop over ``t`` and then over levels ``l``.

    ``p``: ``W_in [I, H]``, ``b_in [H]`` (input -> bottom depth hidden vector), optionally
    ``W_in_m``, ``b_in_m`` (input -> bottom depth memory; else zero), and ``levels``: a list of
    ``{"time": lstm weights, "depth": lstm weights or {"V", "c"}}``. ``xs [B, T, I]``.
    ``state``: ``{"h": [B, L, H], "m": [B, L, H]}`` (time-dimension vectors per level; zeros if None).

    At step ``t``, level ``l`` with time input ``(h[l], m[l])`` and depth input ``(hd, md)``::

        (h[l], m[l]) = LSTM([h[l]; hd], m[l], W_time)
        (hd, md)     = LSTM([h[l]; hd], md, W_depth)   with the NEW h[l] if priority, else the old

    and the output ``y_t`` is ``hd`` after the top level.
    Returns ``(ys [B, T, H], {"h", "m"}, acts)`` with ``acts["{time|depth}{l}_{name}"] [B, T, H]``.
    """
    p = _f64(p)
    xs = _f64(xs)
    B, T, _ = xs.shape
    L, H = len(p["levels"]), p["b_in"].shape[0]
    if state is None:
        state = {"h": np.zeros((B, L, H)), "m": np.zeros((B, L, H))}
    h, m = _f64(state["h"]).copy(), _f64(state["m"]).copy()
    ys, steps = [], []
    for t in range(T):
        x = xs[:, t]
        hd = x @ p["W_in"] + p["b_in"]
        md = x @ p["W_in_m"] + p["b_in_m"] if "W_in_m" in p else np.zeros((B, H))
        acts = {}
        for l in range(L):
            lv = p["levels"][l]
            H_old = np.concatenate([h[:, l], hd], axis=-1)
            h_t, m_t, a = lstm_transform(lv["time"], H_old, m[:, l], output_form)
            acts.update({f"time{l}_{k}": v for k, v in a.items()})
            Hd = np.concatenate([h_t, hd], axis=-1) if priority else H_old
            if depth_lstm:
                hd, md, a = lstm_transform(lv["depth"], Hd, md, output_form)
                acts.update({f"depth{l}_{k}": v for k, v in a.items()})
            else:
                hd = transfer(lv["depth"], Hd, depth_activation)
                acts[f"depth{l}_hidden"] = hd
            h[:, l], m[:, l] = h_t, m_t
        acts["hidden"] = hd
        ys.append(hd)
        steps.append(acts)
    acts = {k: np.stack([s[k] for s in steps], axis=1) for k in steps[0]}
    return np.stack(ys, axis=1), {"h": h, "m": m}, acts
