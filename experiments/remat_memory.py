"""Memory of training over very long sequences: the plain scan vs chunked rematerialisation.

Compiles the gradient of ``sum(ys)`` w.r.t. params and inputs of one LSTM layer over T steps
twice, both with the generic scan: ``unroll(..., impl="scan")`` (not the fused form that
``impl="auto"`` would pick, so the two differ only in rematerialisation) and
``unroll(..., remat_chunk=K)`` (which always takes the generic scan), and reports XLA's
own memory analysis of each compiled program (temporary buffers, arguments, outputs: what
peak device memory is made of); then runs the rematerialised one for real, to show it fits.

    python experiments/remat_memory.py                        # T=100,000, B=8, H=I=256, K=sqrt(T)
    python experiments/remat_memory.py --length 20000 --run-plain
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp

import lstm_jax as lj
from lstm_jax.train import markdown_table, write_json


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=100_000, help="T")
    p.add_argument("--batch", type=int, default=8, help="B")
    p.add_argument("--hidden", type=int, default=256, help="H (= I)")
    p.add_argument("--chunk", type=int, default=None, help="remat_chunk K (default round(sqrt(T)))")
    p.add_argument("--run-plain", action="store_true", help="also run the plain scan (may not fit)")
    p.add_argument("--out", default="results/remat_memory.json")
    args = p.parse_args(argv)
    args.chunk = args.chunk or max(1, round(math.sqrt(args.length)))
    return args


def main(argv=None):
    args = parse_args(argv)
    T, B, H = args.length, args.batch, args.hidden
    cell = lj.lstm(H)
    params = cell.init(jax.random.key(0), H)
    xs = jax.random.normal(jax.random.key(1), (B, T, H), jnp.float32)  # [B, T, I]
    rows = []
    for name, chunk in (("plain scan", None), (f"remat_chunk={args.chunk}", args.chunk)):
        run = lambda p, x: lj.unroll(cell, p, x, remat_chunk=chunk, impl="scan")[0]
        grad = jax.jit(jax.grad(lambda p, x: jnp.sum(run(p, x)), argnums=(0, 1)))
        t0 = time.perf_counter()
        compiled = grad.lower(params, xs).compile()
        m = compiled.memory_analysis()
        row = dict(method=name, temp_gb=m.temp_size_in_bytes / 1e9, arguments_gb=m.argument_size_in_bytes / 1e9,
                   outputs_gb=m.output_size_in_bytes / 1e9, compile_s=time.perf_counter() - t0)
        row["total_gb"] = row["temp_gb"] + row["arguments_gb"] + row["outputs_gb"]
        if chunk is not None or args.run_plain:
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(params, xs))
            row["run_s"] = time.perf_counter() - t0
        rows.append(row)
        print(f"{name}: {row['total_gb']:.2f} GB", flush=True)
    rows[1]["saving"] = f"{rows[0]['total_gb'] / rows[1]['total_gb']:.1f}x less"
    table = markdown_table(rows, {"method": "method", "temp_gb": "temporaries (GB)", "arguments_gb": "arguments (GB)",
                                  "outputs_gb": "outputs (GB)", "total_gb": "total (GB)", "run_s": "fwd+bwd run (s)",
                                  "saving": "saving"})
    print(f"\nLSTM, T={T}, B={B}, H=I={H}, float32, {jax.devices()[0].platform}\n\n{table}")
    write_json(args.out, dict(args=vars(args), device=str(jax.devices()[0]), jax=jax.__version__, results=rows))
    return rows


if __name__ == "__main__":
    main()
