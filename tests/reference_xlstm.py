"""Float64 NumPy references for the xLSTM cells (Beck et al. 2024, arXiv:2405.04517).

Nothing here imports ``lstm_jax`` or ``jax``. Like ``tests/reference.py``, each reference
steps a batch through a plain Python loop over time (and over heads), takes *unfused* per-gate
weights in a dict (``[in, out]``, ``x @ W``) and returns ``(ys, state, acts)``.

The matrix memory is kept in the paper's orientation, ``C [B, NH, Dv, Dk]`` with
``C_t = f C_{t-1} + i v k^T`` and read-out ``C q``; the library stores its transpose.

``stabilized=False`` runs the equations as first written (Secs. 2.2 and 2.3): the true
exponential gates, true cell/normaliser/matrix states, no ``m``. ``stabilized=True`` runs the
stabilised equations (Sec. 2.2 and the appendix); those states are the true ones times
``exp(-m_t)``.
"""

from __future__ import annotations

import numpy as np


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def log_sigmoid(z):
    return -np.logaddexp(0.0, -z)


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def _stack(steps):
    return {k: np.stack([s[k] for s in steps], axis=1) for k in steps[0]} if steps else {}


def _outputs(ys, B, H):
    return np.stack(ys, axis=1) if ys else np.zeros((B, 0, H))


def slstm(p, xs, state=None, *, num_heads=1, forget_gate="sigmoid", stabilized=True):
    """sLSTM (paper Sec. 2.2), ``z = tanh``, block-diagonal recurrence::

        pre_g = x W_xg + h_{t-1} R_g + b_g          R_g = blockdiag(R_g[0], ..., R_g[NH-1])
        z = tanh(pre_z), o = sigma(pre_o)
        log i = pre_i,  log f = log sigma(pre_f)   (or pre_f for the exponential forget gate)
        unstabilised:   c = f c + i z,  n = f n + i,  h = o c / n
        stabilised:     m = max(log f + m_{t-1}, log i)   (m = log i where n_{t-1} == 0)
                        i' = exp(log i - m),  f' = exp(log f + m_{t-1} - m)   (0 where n_{t-1} == 0)
                        c = f' c + i' z,  n = f' n + i',  h = o c / n

    The ``n_{t-1} == 0`` rule is the official code's first step (``m_1 = log i_1``); a unit
    with ``n = 0`` holds no memory, so ``f'`` only ever multiplies zeros there.

    ``p``: ``W_x{i,f,z,o} [I, H]``, ``R_{i,f,z,o} [NH, Dh, Dh]`` (head ``k`` maps units
    ``k*Dh:(k+1)*Dh`` of ``h_{t-1}`` to the same units), ``b_{i,f,z,o} [H]``.
    State ``{"h", "c", "n", "m"}``, each ``[B, H]`` (zeros when None).
    """
    p = {k: _f64(v) for k, v in p.items()}
    xs = _f64(xs)
    B, T, _ = xs.shape
    H = p["b_i"].shape[0]
    Dh = H // num_heads
    if state is None:
        state = {k: np.zeros((B, H)) for k in "hcnm"}
    h, c, n, m = (_f64(state[k]).copy() for k in "hcnm")
    ys, steps = [], []
    for t in range(T):
        x = xs[:, t]
        pre = {}
        for g in "ifzo":
            r = np.zeros((B, H))
            for k in range(num_heads):
                u = slice(k * Dh, (k + 1) * Dh)
                r[:, u] = h[:, u] @ p[f"R_{g}"][k]
            pre[g] = x @ p[f"W_x{g}"] + r + p[f"b_{g}"]
        z, o = np.tanh(pre["z"]), sigmoid(pre["o"])
        log_i = pre["i"]
        log_f = log_sigmoid(pre["f"]) if forget_gate == "sigmoid" else pre["f"]
        if stabilized:
            empty = n == 0
            m_new = np.where(empty, log_i, np.maximum(log_f + m, log_i))
            i = np.exp(log_i - m_new)
            f = np.where(empty, 0.0, np.exp(np.where(empty, 0.0, log_f + m - m_new)))
            m = m_new
        else:
            i, f = np.exp(log_i), np.exp(log_f)
        c = f * c + i * z
        n = f * n + i
        h = o * c / n
        ys.append(h)
        steps.append({"input": i, "forget": f, "candidate": z, "output": o, "cell": c,
                      "normalizer": n, "stabilizer": m.copy(), "hidden": h})
    return _outputs(ys, B, H), {"h": h, "c": c, "n": n, "m": m}, _stack(steps)


def mlstm(p, xs, state=None, *, num_heads=1, forget_gate="sigmoid", stabilized=True):
    """mLSTM (paper Sec. 2.3 and the stabilised form of its appendix), per head ``k``::

        q = x W_q + b_q,  k = x W_k / sqrt(Dh) + b_k,  v = x W_v + b_v,  o = sigma(x W_o + b_o)
        log i = x w_i + b_i,  log f = log sigma(x w_f + b_f)  (or x w_f + b_f)      (scalars)
        unstabilised:   C = f C + i v k^T,  n = f n + i k,  h = o * C q / max(|n.q|, 1)
        stabilised:     m = max(log f + m_{t-1}, log i)   (m = log i where C = 0 and n = 0)
                        i' = exp(log i - m),  f' = exp(log f + m_{t-1} - m)   (0 where C = n = 0)
                        C = f' C + i' v k^T,  n = f' n + i' k,  h = o * C q / max(|n.q|, exp(-m))

    ``p``: ``W_{q,k,v,o} [I, H]``, ``b_{q,k,v,o} [H]`` (head ``k`` uses columns
    ``k*Dh:(k+1)*Dh``), ``w_i, w_f [I, NH]``, ``b_i, b_f [NH]``.
    State ``{"C": [B, NH, Dv, Dk], "n": [B, NH, Dk], "m": [B, NH]}`` (zeros when None).
    Activations (each ``[B, T, H]``; the scalar gates repeated over a head's units):
    ``input``, ``forget`` (``i'``, ``f'`` when stabilised), ``output``, ``hidden``.
    """
    p = {k: _f64(v) for k, v in p.items()}
    xs = _f64(xs)
    B, T, _ = xs.shape
    H = p["b_q"].shape[0]
    NH, Dh = num_heads, H // num_heads
    if state is None:
        state = {"C": np.zeros((B, NH, Dh, Dh)), "n": np.zeros((B, NH, Dh)), "m": np.zeros((B, NH))}
    C, n, m = (_f64(state[k]).copy() for k in ("C", "n", "m"))
    ys, steps = [], []
    for t in range(T):
        x = xs[:, t]
        h = np.zeros((B, H))
        acts = {"input": np.zeros((B, H)), "forget": np.zeros((B, H))}
        o = sigmoid(x @ p["W_o"] + p["b_o"])
        for hd in range(NH):
            u = slice(hd * Dh, (hd + 1) * Dh)
            q = x @ p["W_q"][:, u] + p["b_q"][u]
            k = x @ p["W_k"][:, u] / np.sqrt(Dh) + p["b_k"][u]
            v = x @ p["W_v"][:, u] + p["b_v"][u]
            log_i = x @ p["w_i"][:, hd] + p["b_i"][hd]  # [B]
            f_pre = x @ p["w_f"][:, hd] + p["b_f"][hd]
            log_f = log_sigmoid(f_pre) if forget_gate == "sigmoid" else f_pre
            if stabilized:
                empty = np.all(n[:, hd] == 0, axis=-1) & np.all(C[:, hd] == 0, axis=(-2, -1))
                m_new = np.where(empty, log_i, np.maximum(log_f + m[:, hd], log_i))
                i = np.exp(log_i - m_new)
                f = np.where(empty, 0.0, np.exp(np.where(empty, 0.0, log_f + m[:, hd] - m_new)))
                m[:, hd] = m_new
                floor = np.exp(-m_new)
            else:
                i, f = np.exp(log_i), np.exp(log_f)
                floor = np.ones(B)
            C[:, hd] = f[:, None, None] * C[:, hd] + i[:, None, None] * v[:, :, None] * k[:, None, :]
            n[:, hd] = f[:, None] * n[:, hd] + i[:, None] * k
            num = np.einsum("bvk,bk->bv", C[:, hd], q)
            den = np.maximum(np.abs(np.sum(n[:, hd] * q, axis=-1)), floor)
            h[:, u] = o[:, u] * num / den[:, None]
            acts["input"][:, u] = i[:, None]
            acts["forget"][:, u] = f[:, None]
        ys.append(h)
        steps.append(dict(acts, output=o, hidden=h))
    return _outputs(ys, B, H), {"C": C, "n": n, "m": m}, _stack(steps)


def mlstm_parallel(p, xs, *, num_heads=1, forget_gate="sigmoid"):
    """The mLSTM's parallel form from a zero state (the paper's appendix), per head::

        F_t = sum_{r<=t} log f_r,   D~_ts = F_t - F_s + log i_s  (s <= t),  -inf  (s > t)
        m_t = max_s D~_ts,   D'_ts = exp(D~_ts - m_t),   C~_ts = (q_t . k_s) D'_ts
        h_t = o_t * sum_s C~_ts v_s / max(|sum_s C~_ts|, exp(-m_t))

    written with explicit double loops over ``t`` and ``s``. Returns ``ys [B, T, H]``.
    """
    p = {k: _f64(v) for k, v in p.items()}
    xs = _f64(xs)
    B, T, _ = xs.shape
    H = p["b_q"].shape[0]
    NH, Dh = num_heads, H // num_heads
    ys = np.zeros((B, T, H))
    o = sigmoid(xs @ p["W_o"] + p["b_o"])
    for hd in range(NH):
        u = slice(hd * Dh, (hd + 1) * Dh)
        q = xs @ p["W_q"][:, u] + p["b_q"][u]  # [B, T, Dh]
        k = xs @ p["W_k"][:, u] / np.sqrt(Dh) + p["b_k"][u]
        v = xs @ p["W_v"][:, u] + p["b_v"][u]
        log_i = xs @ p["w_i"][:, hd] + p["b_i"][hd]  # [B, T]
        f_pre = xs @ p["w_f"][:, hd] + p["b_f"][hd]
        log_f = log_sigmoid(f_pre) if forget_gate == "sigmoid" else f_pre
        F = np.cumsum(log_f, axis=1)
        for t in range(T):
            log_d = np.stack([F[:, t] - F[:, s] + log_i[:, s] for s in range(t + 1)], axis=1)  # [B, t+1]
            m = log_d.max(axis=1)
            d = np.exp(log_d - m[:, None])
            c_row = np.einsum("bd,bsd->bs", q[:, t], k[:, :t + 1]) * d
            den = np.maximum(np.abs(c_row.sum(axis=1)), np.exp(-m))
            ys[:, t, u] = o[:, t, u] * np.einsum("bs,bsd->bd", c_row, v[:, :t + 1]) / den[:, None]
    return ys
