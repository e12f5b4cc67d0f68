"""Strict test settings (after equinox): float64 available for reference comparisons, and
no implicit dtype promotion, so a silent float32 -> float64 (or bf16 -> f32) mix in the
library fails loudly. Tests therefore name every dtype explicitly."""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
