"""Benchmark: minGRU/minLSTM's generic scan vs their parallel form, both through ``lstm_jax.unroll``.

``lj.unroll(cell, params, xs, impl="scan")`` (one sequential ``lax.scan`` of the step) against
``lj.unroll(cell, params, xs, impl="parallel")`` (the associative scan over time,
``lstm_jax.kernels.linear_scan``). Times forward+backward (the gradient of ``sum(ys)`` w.r.t.
params and inputs) in one process, after jit compile and warm-up, as the median of
``--repeats`` runs with ``block_until_ready``; prints a Markdown table with the speed-up
(scan time / parallel time) and writes JSON.
A benchmark, not a test. Sizes: ``B`` sequences of ``T`` steps, ``I = H`` by default.

    python experiments/parallel_scan_benchmark.py                       # T = 256 .. 16384
    python experiments/parallel_scan_benchmark.py --lengths 256,1024 --batch 4 --hidden 32 --repeats 10
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp

import lstm_jax as lj

CELLS = {"min_gru": lj.min_gru, "min_lstm": lj.min_lstm}
IMPLS = ("scan", "parallel")  # unroll's impl: the generic scan, the cell's "parallel" form


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="256,512,1024,2048,4096,8192,16384", help="comma-separated T")
    p.add_argument("--cells", default="min_gru,min_lstm", help=f"comma-separated, from {sorted(CELLS)}")
    p.add_argument("--batch", type=int, default=8, help="B")
    p.add_argument("--hidden", type=int, default=64, help="H")
    p.add_argument("--input-size", type=int, default=None, help="I (default H)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float64"])
    p.add_argument("--repeats", type=int, default=10, help="timed runs per entry (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs after compiling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/parallel_scan_benchmark.json")
    args = p.parse_args(argv)
    args.lengths = [int(t) for t in args.lengths.split(",")]
    args.cells = args.cells.split(",")
    unknown = [c for c in args.cells if c not in CELLS]
    if unknown:
        p.error(f"--cells: unknown {unknown}; choose from {sorted(CELLS)}")
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    args.input_size = args.input_size or args.hidden
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    return args


def time_one(cell, impl, params, xs, args):
    """(compile seconds, median seconds of fwd+bwd, all timed runs)."""

    def loss(params, xs):
        ys, _ = lj.unroll(cell, params, xs, impl=impl)  # [B, T, H]
        return jnp.sum(ys)

    start = time.perf_counter()
    step = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, xs).compile()
    compile_s = time.perf_counter() - start
    for _ in range(args.warmup):
        jax.block_until_ready(step(params, xs))
    runs = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(params, xs))
        runs.append(time.perf_counter() - start)
    return compile_s, statistics.median(runs), runs


def main(argv=None):
    args = parse_args(argv)
    dtype = jnp.dtype(args.dtype)
    B, H, I = args.batch, args.hidden, args.input_size
    device = jax.devices()[0]
    print(f"device: {device.platform} ({device.device_kind}), {platform.processor() or platform.machine()}; "
          f"B={B}, H={H}, I={I}, {args.dtype}; fwd+bwd, median of {args.repeats} runs", flush=True)

    rows = []
    for name in args.cells:
        cell = CELLS[name](H)
        params = cell.init(jax.random.key(args.seed), I, dtype=dtype)
        for T in args.lengths:
            xs = jax.random.normal(jax.random.key(args.seed + T), (B, T, I), dtype)  # [B, T, I]
            row = {"cell": name, "T": T, "B": B, "H": H, "I": I, "dtype": args.dtype}
            for impl in IMPLS:
                compile_s, median_s, runs = time_one(cell, impl, params, xs, args)
                row[impl] = {"median_ms": 1e3 * median_s, "compile_s": compile_s,
                             "runs_ms": [1e3 * r for r in runs]}
            row["speedup"] = row["scan"]["median_ms"] / row["parallel"]["median_ms"]
            rows.append(row)
            print(f"  {name} T={T}: scan {row['scan']['median_ms']:.2f} ms, "
                  f"parallel {row['parallel']['median_ms']:.2f} ms", flush=True)

    print()
    print("| cell | T | scan fwd+bwd (ms) | parallel fwd+bwd (ms) | speed-up (scan / parallel) "
          "| compile scan / parallel (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['cell']} | {r['T']} | {r['scan']['median_ms']:.2f} | "
              f"{r['parallel']['median_ms']:.2f} | {r['speedup']:.2f}x | "
              f"{r['scan']['compile_s']:.1f} / {r['parallel']['compile_s']:.1f} |")

    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": f"{device.platform} ({device.device_kind})", "jax": jax.__version__,
            "processor": platform.processor() or platform.machine(), "repeats": args.repeats,
            "warmup": args.warmup, "measure": "jit(grad(sum(unroll(impl=...)[0])) w.r.t. (params, xs)), median"}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
