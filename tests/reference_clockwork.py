"""Float64 NumPy reference of the Clockwork RNN (Koutník et al. 2014), from the paper's
equations, module by module in a plain Python loop. Nothing here imports ``lstm_jax`` or
``jax``, and nothing here uses a mask: the connectivity is the paper's rule, written as a
condition on the two modules' periods.
"""

from __future__ import annotations

import numpy as np

ACTIVATIONS = {
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0.0),
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
    "identity": lambda z: z,
}


def clockwork(W_x, W_h, b, periods, xs, h0=None, step0=None, *, activation="tanh"):
    """Clockwork RNN over ``xs [B, T, I]``.

    Module ``i`` holds units ``[i*k, (i+1)*k)`` and has period ``periods[i]`` (the periods
    given in the order the units are laid out). At step ``t`` (counting from ``step0[b]`` for
    sequence ``b``), every module with ``t mod T_i == 0`` computes::

        h_i = phi(x_t W_x[:, i] + b_i + sum_{j: j == i or T_j > T_i} h_j(t-1) W_h[j, i])

    (blocks of the ``[in, out]`` matrices), and every other module keeps ``h_i(t-1)``.

    Returns:
      ``(ys [B, T, H], h [B, H], steps [B])`` where ``steps = step0 + T`` (not wrapped).
    """
    W_x, W_h, b, xs = (np.asarray(a, np.float64) for a in (W_x, W_h, b, xs))
    B, T, _ = xs.shape
    H = W_h.shape[0]
    g = len(periods)
    k = H // g
    blk = lambda i: slice(i * k, (i + 1) * k)
    phi = ACTIVATIONS[activation]
    h = np.zeros((B, H)) if h0 is None else np.asarray(h0, np.float64).copy()
    t0 = np.zeros((B,), np.int64) if step0 is None else np.asarray(step0, np.int64)
    ys = []
    for t in range(T):
        h_new = h.copy()
        for i in range(g):
            fires = (t0 + t) % periods[i] == 0  # [B]
            z = xs[:, t] @ W_x[:, blk(i)] + b[blk(i)]
            for j in range(g):
                if j == i or periods[j] > periods[i]:
                    z = z + h[:, blk(j)] @ W_h[blk(j), blk(i)]
            h_new[fires, blk(i)] = phi(z)[fires]
        h = h_new
        ys.append(h)
    return (np.stack(ys, axis=1) if ys else np.zeros((B, 0, H))), h, t0 + T
