"""Data for experiments: synthetic long-lag tasks generated on the fly from a PRNG key."""

from lstm_jax.data.synthetic import ADDING_BASELINE_MSE, adding_problem

__all__ = ["ADDING_BASELINE_MSE", "adding_problem"]
