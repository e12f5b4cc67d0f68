"""Learning is tested, not assumed: the Elman RNN, the LSTM and its variants, the GRU and the
MUTs train with Optax on a small delayed-recall task (through ``lstm_jax.models.readout``) and
their held-out loss must fall well below the no-memory baseline. (The other families' learning
runs live in their own test files: test_minimal, test_xlstm, test_clockwork, ...)

Task: inputs x ~ N(0, 1) of shape [B, T, I]; the target at step t is x[t - LAG, 0] (zero for
t < LAG). A model without memory can do no better than predicting 0, an MSE of about
(T - LAG) / T ≈ 0.83; the bound asks for a tenth of that.
"""

import functools

import jax
import jax.numpy as jnp
import pytest

import helpers  # tests/helpers.py
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


delayed_recall = functools.partial(helpers.delayed_recall, T=T, I=I, lag=LAG, dtype=jnp.float32)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_cell_learns_delayed_recall(name):
    model = readout(CELLS[name](), 1, at="every")
    params = model.init(jax.random.key(0), I, dtype=jnp.float32)
    params, losses = helpers.train_with_optax(model, params, delayed_recall, steps=STEPS, batch=B)
    test_loss = float(helpers.mse_loss(model)(params, *delayed_recall(jax.random.key(2), 256)))
    assert float(losses[0]) > 0.5 * BASELINE  # it starts out knowing nothing
    assert test_loss < BOUND, f"{name}: held-out MSE {test_loss:.3f} not below {BOUND:.3f}"
