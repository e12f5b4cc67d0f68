"""Shared test helpers (tests/ is on sys.path under pytest, like reference.py)."""

import chex
import jax
import numpy as np


def assert_trees_close(actual, expected, *, rtol=1e-12, atol=1e-12, same_dtype=False):
    """Same pytree structure and shapes (and dtypes if asked), values close in float64."""
    chex.assert_trees_all_equal_structs(actual, expected)
    if same_dtype:
        chex.assert_trees_all_equal_dtypes(actual, expected)
    as_f64 = lambda t: jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), t)
    chex.assert_trees_all_close(as_f64(actual), as_f64(expected), rtol=rtol, atol=atol)
