"""Numerics of our GPU paths on a GPU: every form of the LSTM and GRU against the generic scan.

The unit tests run on the CPU (the Pallas kernels in interpret mode, the cuDNN form not at
all); this script is the check that needs the accelerator. For each cell, dtype, size and
form it computes, on the same random parameters, inputs and initial carry:

- the reference: the generic scan (``impl="scan"``) in float32 with full-precision matmuls
  (bfloat16 cases: on the float32 upcast of the same bfloat16 values);
- the form at full matmul precision (float32 only): must match to float32 rounding;
- the form at the default precision (TF32 matmuls on Hopper in float32; bfloat16 arithmetic):
  the error a user actually gets;

each as ``‖ours − ref‖ / ‖ref‖`` over the outputs and, worst over leaves, the gradients of
``sum(r · ys) + sum(r_h · h_T) + sum(r_c · c_T)`` with respect to the parameters, the inputs
and the initial carry. The first call's time (compile + run) is reported too: it is where a
Pallas/Triton kernel that does not fit shows up.

    python experiments/gpu_check.py --out results/gpu_check.json
    JAX_PLATFORMS=cpu python experiments/gpu_check.py --sizes 3x7x8   # the same on the CPU (smoke)
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import lstm_jax as lj
from lstm_jax.train import write_json

CELLS = {"lstm": lj.lstm, "gru": lj.gru}
# (form, unroll, reverse) per cell (the benchmark checks the unrolled forms' outputs too).
VARIANTS = {"lstm": [("fused", 1, False), ("fused", 1, True), ("pallas", 1, False)],
            "gru": [("fused", 1, False), ("fused", 1, True)]}
# Pass marks for the relative errors: float32 rounding at full precision; TF32 (10-bit
# mantissa) or bfloat16 (8-bit) matmuls compounded over T steps at the default precision.
TOL = {("float32", "highest"): 1e-4, ("float32", "default"): 2e-2, ("bfloat16", "default"): 1e-1}


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def worst(tree_a, tree_b) -> float:
    return max(rel(a, b) for a, b in zip(jax.tree_util.tree_leaves(tree_a), jax.tree_util.tree_leaves(tree_b)))


def problem(cell, B, T, H, dtype, seed):
    """Random params, inputs ``[B, T, H]``, a non-zero initial carry and the loss weights."""
    k_params, k_xs, k_carry, k_weights = jax.random.split(jax.random.key(seed), 4)
    params = cell.init(k_params, H, dtype=dtype)
    xs = jax.random.normal(k_xs, (B, T, H), dtype)
    zero = cell.init_carry(params, (B,))
    leaves, tree = jax.tree_util.tree_flatten(zero)
    keys = jax.random.split(k_carry, len(leaves))
    carry = tree.unflatten([(0.5 * jax.random.normal(k, a.shape)).astype(a.dtype) for k, a in zip(keys, leaves)])
    return params, xs, carry, jax.random.normal(k_weights, (B, T, H), jnp.float32)


def evaluate(cell, impl, unroll, reverse, params, xs, carry, weights):
    """(ys, grads w.r.t. (params, xs, carry)) as float32 NumPy, through ``lj.unroll``."""

    def loss(params, xs, carry):
        ys, last = lj.unroll(cell, params, xs, carry, impl=impl, unroll=unroll, reverse=reverse)
        last_sum = sum(jnp.sum(leaf.astype(jnp.float32) * (k + 1.0))
                       for k, leaf in enumerate(jax.tree_util.tree_leaves(last)))
        return jnp.sum(ys.astype(jnp.float32) * weights) + last_sum, ys

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
    (_, ys), grads = jax.block_until_ready(fn(params, xs, carry))
    to32 = lambda t: jax.tree_util.tree_map(lambda a: np.asarray(a.astype(jnp.float32)), t)
    return to32(ys), to32(grads)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="5x37x40,16x64x128,8x50x256", help="comma-separated BxTxH (I = H)")
    p.add_argument("--cells", default="lstm,gru")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--forms", default=None, help="comma-separated: check only these (default all of VARIANTS)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/gpu_check.json")
    args = p.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); jax {jax.__version__}", flush=True)

    rows = []
    for cell_name in args.cells.split(","):
        for dtype_name in args.dtypes.split(","):
            dtype = jnp.dtype(dtype_name)
            for B, T, H in sizes:
                cell = CELLS[cell_name](H)
                params, xs, carry, weights = problem(cell, B, T, H, dtype, args.seed)
                up = lambda t: jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), t)
                refs = {}
                for impl, unroll, reverse in VARIANTS[cell_name]:
                    if args.forms and impl not in args.forms.split(","):
                        continue
                    row = dict(cell=cell_name, dtype=dtype_name, B=B, T=T, H=H, impl=impl, unroll=unroll,
                               reverse=reverse)
                    try:
                        if reverse not in refs:
                            with jax.default_matmul_precision("highest"):
                                refs[reverse] = evaluate(cell, "scan", 1, reverse, up(params), up(xs), up(carry),
                                                         weights)
                        ref_ys, ref_grads = refs[reverse]
                        precisions = ("highest", "default") if dtype_name == "float32" else ("default",)
                        for precision in precisions:
                            start = time.perf_counter()
                            with jax.default_matmul_precision(None if precision == "default" else precision):
                                ys, grads = evaluate(cell, impl, unroll, reverse, params, xs, carry, weights)
                            tol = TOL[(dtype_name, precision)]
                            errs = dict(ys=rel(ys, ref_ys), d_params=worst(grads[0], ref_grads[0]),
                                        d_xs=rel(grads[1], ref_grads[1]), d_carry=worst(grads[2], ref_grads[2]))
                            row[precision] = dict(errs, first_call_s=time.perf_counter() - start, tol=tol,
                                                  ok=bool(max(errs.values()) <= tol and np.isfinite(list(errs.values())).all()))
                    except Exception as e:  # a form that refuses or fails here: recorded, not fatal
                        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
                    rows.append(row)
                    print(line(row), flush=True)
                    write_json(args.out, dict(device=str(jax.devices()[0].device_kind), jax=jax.__version__,
                                              rows=rows))
    failed = [r for r in rows if any(not r[k]["ok"] for k in ("highest", "default") if k in r)]
    errors = sum("error" in r for r in rows)
    print(f"\n{len(rows)} cases, {len(failed)} beyond tolerance, {errors} refused or failed; wrote {args.out}")
    return 1 if failed or errors else 0


def line(r) -> str:
    head = f"{r['cell']} {r['dtype']:8s} {r['B']}x{r['T']}x{r['H']:<4d} {r['impl']:6s} u{r['unroll']}{' rev' if r['reverse'] else '    '}"
    if "error" in r:
        return f"{head}  -- {r['error']}"
    parts = []
    for k in ("highest", "default"):
        if k in r:
            e = r[k]
            parts.append(f"{k}: ys {e['ys']:.1e} dp {e['d_params']:.1e} dx {e['d_xs']:.1e} dc {e['d_carry']:.1e} "
                         f"{'ok' if e['ok'] else 'FAIL'} ({e['first_call_s']:.1f} s)")
    return f"{head}  " + " | ".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
