"""Float64 NumPy references for attention and the attention decoder, from the papers' equations.

Nothing here imports ``lstm_jax`` or ``jax``. Matrices are in the papers' orientation (they act
on column vectors: ``W_s s``), the transpose of the library's ``[in, out]`` storage, so the
adapters in the tests also check the documented layout. Masked softmax is done the slow way:
only the unmasked positions enter the sum, one example at a time.

* Bahdanau et al. 2015 (A.1.2): ``e_j = v^T tanh(W_s s + W_h h_j)``.
* Luong et al. 2015 (eq. 8): ``dot: e_j = s^T h_j``; ``general: e_j = s^T W h_j``.
* ``alpha_j = exp(e_j) / sum_{k unmasked} exp(e_k)`` for unmasked ``j``, 0 otherwise;
  ``c = sum_j alpha_j h_j``; a row with nothing unmasked (or an empty memory, ``S = 0``) has
  ``alpha = 0``, ``c = 0``.
* Luong (eqs. 5, input feeding sec. 3.3) and Bahdanau decoders, stepped in a Python loop with
  the LSTM reference of ``tests/reference.py``.
"""

from __future__ import annotations

import numpy as np

import reference as ref  # tests/reference.py


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def additive_score(p, s, memory):
    """``e_j = v^T tanh(W_s s + W_h h_j)``; ``p``: ``W_s [A, Q]``, ``W_h [A, D]``, ``v [A]``;
    ``s [Q]``, ``memory [S, D]`` -> ``[S]``."""
    W_s, W_h, v = _f64(p["W_s"]), _f64(p["W_h"]), _f64(p["v"])
    s, memory = _f64(s), _f64(memory)
    return np.array([v @ np.tanh(W_s @ s + W_h @ h_j) for h_j in memory])


def dot_score(p, s, memory, *, scale=False):
    """``e_j = s^T h_j`` (``/ sqrt(D)`` with ``scale``); ``p`` unused."""
    del p
    s, memory = _f64(s), _f64(memory)
    e = np.array([s @ h_j for h_j in memory])
    return e / np.sqrt(len(s)) if scale else e


def general_score(p, s, memory, *, scale=False):
    """``e_j = s^T W h_j`` (``/ sqrt(Q)`` with ``scale``); ``p``: ``W [Q, D]``."""
    W = _f64(p["W"])
    s, memory = _f64(s), _f64(memory)
    e = np.array([s @ W @ h_j for h_j in memory])
    return e / np.sqrt(len(s)) if scale else e


def attend(score, p, s, memory, mask=None):
    """One example: ``score(p, s [Q], memory [S, D]) -> e [S]``; masked softmax over the
    unmasked positions only; returns ``(context [D], weights [S])``."""
    memory = _f64(memory)
    S, D = memory.shape
    mask = np.ones(S, bool) if mask is None else np.asarray(mask, bool)
    weights = np.zeros(S)
    valid = np.flatnonzero(mask)
    if valid.size == 0:
        return np.zeros(D), weights
    e = score(p, s, memory[valid])  # masked rows never enter the computation
    a = np.exp(e - e.max())
    weights[valid] = a / a.sum()
    context = sum(weights[j] * memory[j] for j in valid)
    return context, weights


def attend_batch(score, p, s, memory, mask=None):
    """``s [B, Q]``, ``memory [B, S, D]``, ``mask [B, S]`` -> ``(context [B, D], weights [B, S])``."""
    out = [attend(score, p, s[b], memory[b], None if mask is None else mask[b]) for b in range(len(s))]
    return np.stack([c for c, _ in out]), np.stack([w for _, w in out])


def attention_decoder(p, xs, memory, mask, *, score, style, input_feeding, state=None):
    """Teacher-forced attention decoder, one Python step at a time.

    Luong (``style="luong"``)::

        h_t = LSTM([x_t; h~_{t-1}], h_{t-1})   (LSTM(x_t, h_{t-1}) without input feeding)
        c_t, alpha_t = attend(h_t)
        h~_t = tanh(W_c [c_t; h_t]),  y_t = h~_t

    Bahdanau (``style="bahdanau"``)::

        c_t, alpha_t = attend(h_{t-1})
        h_t = LSTM([x_t; c_t], h_{t-1})
        h~_t = tanh(W_c [c_t; h_t]),  y_t = h~_t

    ``p``: ``lstm`` (per-gate dict for ``reference.lstm`` on the *concatenated* input),
    ``W_c [O, D + H]``, ``att`` (the score's parameters). ``xs [B, T, I]``, ``memory
    [B, S, D]``, ``mask [B, S]``; ``state``: ``{"h", "c"}`` (``[B, H]``) and ``"att"`` ``[B, O]``
    (input feeding). Returns ``(ys [B, T, O], state, weights [B, T, S])``.
    """
    xs, memory = _f64(xs), _f64(memory)
    B, T, _ = xs.shape
    H = p["lstm"]["b_g"].shape[0]
    W_c = _f64(p["W_c"])
    O = W_c.shape[0]
    state = {} if state is None else dict(state)
    h = _f64(state.get("h", np.zeros((B, H))))
    c = _f64(state.get("c", np.zeros((B, H))))
    att = _f64(state.get("att", np.zeros((B, O))))
    ys, ws = [], []
    for t in range(T):
        x = xs[:, t]
        if style == "bahdanau":
            context, weights = attend_batch(score, p["att"], h, memory, mask)
            inp = np.concatenate([x, context], axis=-1)
        else:
            inp = np.concatenate([x, att], axis=-1) if input_feeding else x
        _, st, _ = ref.lstm(p["lstm"], inp[:, None], {"h": h, "c": c})
        h, c = st["h"], st["c"]
        if style == "luong":
            context, weights = attend_batch(score, p["att"], h, memory, mask)
        att = np.tanh(np.concatenate([context, h], axis=-1) @ W_c.T)
        ys.append(att)
        ws.append(weights)
    final = {"h": h, "c": c}
    if style == "luong" and input_feeding:
        final["att"] = att
    if T == 0:
        return np.zeros((B, 0, O)), final, np.zeros((B, 0, memory.shape[1]))
    return np.stack(ys, axis=1), final, np.stack(ws, axis=1)
