"""Learning is tested, not assumed: every cell family trains with Optax on a small
delayed-recall task and its held-out loss must fall well below the no-memory baseline.

Task: inputs x ~ N(0, 1) of shape [B, T, I]; the target at step t is x[t - LAG, 0] (zero for
t < LAG). A model without memory can do no better than predicting 0, an MSE of about
(T - LAG) / T ≈ 0.83; the bound asks for a tenth of that.
"""

import jax
import jax.numpy as jnp
import optax
import pytest

import lstm_jax as lj
from lstm_jax.models import readout

B, T, I, H, LAG, STEPS = 32, 12, 16, 16, 2, 600
BASELINE = (T - LAG) / T
BOUND = 0.1 * BASELINE

CELLS = {
    "rnn": lambda: lj.rnn(H),
    "lstm": lambda: lj.lstm(H),
    "lstm_peephole_proj": lambda: lj.lstm(H, peephole=True, proj_size=8),
    "lstm_cifg": lambda: lj.greff_variant("CIFG", H),
    "lstm_fgr": lambda: lj.greff_variant("FGR", H),
    "gru": lambda: lj.gru(H),
    "gru_paper": lambda: lj.gru(H, reset_after=False),
    "mut1": lambda: lj.mut1(H),  # MUT1/MUT2 need input_size == hidden_size (I == H here)
    "mut2": lambda: lj.mut2(H),
    "mut3": lambda: lj.mut3(H),
}


def delayed_recall(key, batch):
    xs = jax.random.normal(key, (batch, T, I), jnp.float32)
    ys = jnp.pad(xs[:, :-LAG, :1], ((0, 0), (LAG, 0), (0, 0)))  # [B, T, 1]
    return xs, ys


@pytest.mark.parametrize("name", sorted(CELLS))
def test_cell_learns_delayed_recall(name):
    model = readout(CELLS[name](), 1, at="every")
    params = model.init(jax.random.key(0), I, dtype=jnp.float32)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))

    def loss_fn(params, xs, ys):
        return jnp.mean((model.apply(params, xs) - ys) ** 2)

    def update(carry, key):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, *delayed_recall(key, B))
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    keys = jax.random.split(jax.random.key(1), STEPS)
    with jax.numpy_dtype_promotion("standard"):  # optax's bias correction mixes int and float
        (params, _), losses = jax.jit(lambda c: jax.lax.scan(update, c, keys))((params, opt.init(params)))
    test_loss = float(loss_fn(params, *delayed_recall(jax.random.key(2), 256)))
    assert float(losses[0]) > 0.5 * BASELINE  # it starts out knowing nothing
    assert test_loss < BOUND, f"{name}: held-out MSE {test_loss:.3f} not below {BOUND:.3f}"
