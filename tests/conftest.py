"""Strict test settings (after equinox): float64 available for reference comparisons, and
no implicit dtype promotion, so a silent float32 -> float64 (or bf16 -> f32) mix in the
library fails loudly. Tests therefore name every dtype explicitly. And XLA's CPU code is
compiled without LLVM's optimisation passes, for the suite's speed (below)."""

import os

# Most of the suite's time is XLA compiling small programs, and at test sizes LLVM's optimisation
# of the generated CPU code costs more than it saves: without it the suite ran ~30% faster
# (2026-12-04, README "Tests"), every test passing at the same tolerances. Subprocesses (the
# notebooks' kernels, the scripts run end to end) inherit it. A level given by the caller wins.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
