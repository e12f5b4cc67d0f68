"""Float64 NumPy reference implementations of every cell, written from the papers' equations.

Nothing here imports ``lstm_jax`` or ``jax``. Each reference steps a batch through a plain
Python ``for t in range(T)`` loop and takes *unfused, per-gate* weights in a dict, so it is
independent of the library's fused layout. Weights are ``[in, out]`` (``x @ W``).

Every function has the signature ``ref(p, xs, state=None, **options) -> (ys, state, acts)``:

* ``p``: per-gate weights (keys listed in each docstring);
* ``xs``: ``[B, T, I]`` inputs;
* ``state``: initial state as a dict (zeros when None), e.g. ``{"h": [B, H]}``;
* ``ys``: ``[B, T, O]`` outputs; ``state``: the final state, same keys as the input one;
* ``acts``: per-step activations by name, each ``[B, T, H]`` (gates, ``cell``, ``hidden``).
"""

from __future__ import annotations

import numpy as np


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


ACTIVATIONS = {
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0.0),
    "sigmoid": sigmoid,
    "identity": lambda z: z,
}


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def _stack_acts(steps: list[dict]) -> dict:
    """[{name: [B, H]}] * T -> {name: [B, T, H]}."""
    return {k: np.stack([s[k] for s in steps], axis=1) for k in steps[0]}


def rnn(p, xs, state=None, *, activation="tanh"):
    """Elman RNN: ``h_t = phi(x_t W_x + h_{t-1} W_h + b)``.

    ``p``: ``W_x [I, H]``, ``W_h [H, H]``, ``b [H]``. State ``{"h": [B, H]}``.
    """
    p = {k: _f64(v) for k, v in p.items()}
    xs = _f64(xs)
    B, T, _ = xs.shape
    phi = ACTIVATIONS[activation]
    h = np.zeros((B, p["W_h"].shape[0])) if state is None else _f64(state["h"])
    ys, steps = [], []
    for t in range(T):
        h = phi(xs[:, t] @ p["W_x"] + h @ p["W_h"] + p["b"])
        ys.append(h)
        steps.append({"hidden": h})
    return np.stack(ys, axis=1), {"h": h}, _stack_acts(steps)


def lstm(p, xs, state=None, *, peephole=False, coupled=False, input_gate=True, forget_gate=True,
         output_gate=True, input_activation="tanh", output_activation="tanh",
         full_gate_recurrence=False, proj_size=None, layer_norm=False, derivative_clip=None):
    """LSTM with forget gate (Gers et al. 2000) and the variants of Greff et al. 2015.

    For each gate ``k`` in ``i`` (input), ``f`` (forget), ``g`` (candidate), ``o`` (output)
    that has weights of its own::

        pre_k = x_t W_xk + h_{t-1} W_hk + b_k  [+ sum_s a^s_{t-1} R_sk   (FGR, k != g)]
        f_t = sigma(pre_f + p_f * c_{t-1})          (1 without a forget gate, NFG)
        i_t = sigma(pre_i + p_i * c_{t-1})          (1 - f_t if coupled, CIFG; 1 for NIG)
        c_t = f_t * c_{t-1} + i_t * g(pre_g)        (g: input activation; identity = NIAF)
        o_t = sigma(pre_o + p_o * c_t)              (1 without an output gate, NOG)
        h_t = o_t * h(c_t)   [@ W_proj]             (h: output activation; identity = NOAF)

    Peephole terms (Gers & Schmidhuber 2000) are there only with ``peephole``. With
    ``full_gate_recurrence`` (Greff's FGR) every sigmoid gate ``k`` with weights of its own
    also receives ``a^s_{t-1} R_sk`` from every such gate ``s``'s previous activation (a
    coupled input gate has no weights of its own, so it is neither a source nor a target).
    With ``proj_size`` (Sak et al. 2014) ``h_t`` is projected to ``P`` and fed back.
    With ``layer_norm`` (Ba et al. 2016) the input terms ``x_t W_xk`` of all blocks, taken
    together in (i, f, g, o) order, are normalised to zero mean and unit variance and scaled
    by ``a_xk``; the recurrent terms likewise with ``a_hk``; and ``h(c_t)`` becomes
    ``h(a_c * norm(c_t) + b_c)`` (the carried ``c_t`` itself is not normalised).
    ``derivative_clip`` changes only gradients, so the reference ignores it.

    ``p``: ``W_xk [I, H]``, ``W_hk [O, H]``, ``b_k [H]`` for the gates with weights; ``p_i``,
    ``p_f``, ``p_o [H]`` with peepholes; ``R_sk [H, H]`` with FGR; ``W_proj [H, P]``.
    State ``{"h": [B, O], "c": [B, H]}`` plus ``"prev": {k: [B, H]}`` with FGR.
    Activations: ``input`` (also when coupled), ``forget``, ``candidate``, ``output`` when
    present, and ``cell``, ``hidden``.
    """
    del derivative_clip
    p = {k: _f64(v) for k, v in p.items()}
    xs = _f64(xs)
    B, T, _ = xs.shape
    H = p["b_g"].shape[0]
    O = proj_size or H
    act_in, act_out = ACTIVATIONS[input_activation], ACTIVATIONS[output_activation]
    own = [k for k, on in (("i", input_gate and not coupled), ("f", forget_gate), ("o", output_gate)) if on]
    blocks = [k for k in "ifgo" if k == "g" or k in own]

    def normed(terms, gain):  # LN over the concatenation of all blocks' terms
        z = np.concatenate([terms[k] for k in blocks], axis=-1)
        z = (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + 1e-5)
        return {k: z[:, j * H:(j + 1) * H] * p[f"{gain}{k}"] for j, k in enumerate(blocks)}
    if state is None:
        state = {"h": np.zeros((B, O)), "c": np.zeros((B, H))}
        if full_gate_recurrence:
            state["prev"] = {k: np.zeros((B, H)) for k in own}
    h, c = _f64(state["h"]), _f64(state["c"])
    prev = {k: _f64(v) for k, v in state.get("prev", {}).items()}
    ys, steps = [], []
    for t in range(T):
        x = xs[:, t]

        zx = {k: x @ p[f"W_x{k}"] for k in blocks}
        zh = {k: h @ p[f"W_h{k}"] for k in blocks}
        if layer_norm:
            zx, zh = normed(zx, "a_x"), normed(zh, "a_h")

        def pre(k):
            z = zx[k] + zh[k] + p[f"b_{k}"]
            if full_gate_recurrence and k != "g":
                for s in own:
                    z = z + prev[s] @ p[f"R_{s}{k}"]
            return z

        acts = {}
        c_prev = c
        if forget_gate:
            f = acts["forget"] = sigmoid(pre("f") + (p["p_f"] * c_prev if peephole else 0.0))
        else:
            f = np.ones((B, H))
        if coupled:
            i = acts["input"] = 1.0 - f
        elif input_gate:
            i = acts["input"] = sigmoid(pre("i") + (p["p_i"] * c_prev if peephole else 0.0))
        else:
            i = np.ones((B, H))
        g = acts["candidate"] = act_in(pre("g"))
        c = f * c_prev + i * g
        if output_gate:
            o = acts["output"] = sigmoid(pre("o") + (p["p_o"] * c if peephole else 0.0))
        else:
            o = np.ones((B, H))
        if layer_norm:
            c_n = (c - c.mean(-1, keepdims=True)) / np.sqrt(c.var(-1, keepdims=True) + 1e-5)
            m = o * act_out(p["a_c"] * c_n + p["b_c"])
        else:
            m = o * act_out(c)
        h = m @ p["W_proj"] if proj_size else m
        if full_gate_recurrence:
            prev = {k: {"i": i, "f": f, "o": o}[k] for k in own}
        ys.append(h)
        steps.append(dict(acts, cell=c, hidden=h))
    final = {"h": h, "c": c}
    if full_gate_recurrence:
        final["prev"] = prev
    return np.stack(ys, axis=1), final, _stack_acts(steps)


def gru(p, xs, state=None, *, reset_after=True):
    """GRU (Cho et al. 2014)::

        r_t = sigma(x_t W_xr + h_{t-1} W_hr + b_r)
        z_t = sigma(x_t W_xz + h_{t-1} W_hz + b_z)
        n_t = tanh(x_t W_xn + b_n + r_t * (h_{t-1} W_hn + b_hn))   (reset_after, PyTorch)
        n_t = tanh(x_t W_xn + b_n + (r_t * h_{t-1}) W_hn)          (the paper)
        h_t = (1 - z_t) * n_t + z_t * h_{t-1}

    ``p``: ``W_x{r,z,n} [I, H]``, ``W_h{r,z,n} [H, H]``, ``b_{r,z,n} [H]``, ``b_hn [H]``
    (reset_after only). State ``{"h": [B, H]}``.
    """
    p = {k: _f64(v) for k, v in p.items()}
    xs = _f64(xs)
    B, T, _ = xs.shape
    h = np.zeros((B, p["b_n"].shape[0])) if state is None else _f64(state["h"])
    ys, steps = [], []
    for t in range(T):
        x = xs[:, t]
        r = sigmoid(x @ p["W_xr"] + h @ p["W_hr"] + p["b_r"])
        z = sigmoid(x @ p["W_xz"] + h @ p["W_hz"] + p["b_z"])
        if reset_after:
            n = np.tanh(x @ p["W_xn"] + p["b_n"] + r * (h @ p["W_hn"] + p["b_hn"]))
        else:
            n = np.tanh(x @ p["W_xn"] + p["b_n"] + (r * h) @ p["W_hn"])
        h = (1.0 - z) * n + z * h
        ys.append(h)
        steps.append({"reset": r, "update": z, "candidate": n, "hidden": h})
    return np.stack(ys, axis=1), {"h": h}, _stack_acts(steps)


def _mut(update, reset, candidate_input, p, xs, state):
    """The loop shared by MUT1-3: ``h_t = tanh((r * h) W_hh + cand_in(x) + b_h) * z + h * (1 - z)``."""
    p = {k: _f64(v) for k, v in p.items()}
    xs = _f64(xs)
    B, T, _ = xs.shape
    h = np.zeros((B, p["W_hh"].shape[0])) if state is None else _f64(state["h"])
    ys, steps = [], []
    for t in range(T):
        x = xs[:, t]
        z = sigmoid(update(p, x, h) + p["b_z"])
        r = sigmoid(reset(p, x) + h @ p["W_hr"] + p["b_r"])
        n = np.tanh((r * h) @ p["W_hh"] + candidate_input(p, x) + p["b_h"])
        h = n * z + h * (1.0 - z)
        ys.append(h)
        steps.append({"update": z, "reset": r, "candidate": n, "hidden": h})
    return np.stack(ys, axis=1), {"h": h}, _stack_acts(steps)


def mut1(p, xs, state=None):
    """MUT1 (Jozefowicz et al. 2015)::

        z = sigma(x W_xz + b_z)
        r = sigma(x W_xr + h W_hr + b_r)
        h' = tanh((r * h) W_hh + tanh(x) + b_h) * z + h * (1 - z)

    ``p``: ``W_xz, W_xr [I, H]``, ``W_hr, W_hh [H, H]``, ``b_z, b_r, b_h [H]``.
    """
    return _mut(lambda p, x, h: x @ p["W_xz"], lambda p, x: x @ p["W_xr"],
                lambda p, x: np.tanh(x), p, xs, state)


def mut2(p, xs, state=None):
    """MUT2 (Jozefowicz et al. 2015)::

        z = sigma(x W_xz + h W_hz + b_z)
        r = sigma(x + h W_hr + b_r)
        h' = tanh((r * h) W_hh + x W_xh + b_h) * z + h * (1 - z)

    ``p``: ``W_xz, W_xh [I, H]``, ``W_hz, W_hr, W_hh [H, H]``, ``b_z, b_r, b_h [H]``.
    """
    return _mut(lambda p, x, h: x @ p["W_xz"] + h @ p["W_hz"], lambda p, x: x,
                lambda p, x: x @ p["W_xh"], p, xs, state)


def mut3(p, xs, state=None):
    """MUT3 (Jozefowicz et al. 2015)::

        z = sigma(x W_xz + tanh(h) W_hz + b_z)
        r = sigma(x W_xr + h W_hr + b_r)
        h' = tanh((r * h) W_hh + x W_xh + b_h) * z + h * (1 - z)

    ``p``: ``W_xz, W_xr, W_xh [I, H]``, ``W_hz, W_hr, W_hh [H, H]``, ``b_z, b_r, b_h [H]``.
    """
    return _mut(lambda p, x, h: x @ p["W_xz"] + np.tanh(h) @ p["W_hz"], lambda p, x: x @ p["W_xr"],
                lambda p, x: x @ p["W_xh"], p, xs, state)
