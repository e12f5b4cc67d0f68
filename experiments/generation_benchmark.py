"""Generation latency: ``lstm_jax.generate`` per token against the jit floor and PyTorch.

One character-level language model (``language_model(stack([cell] * L), V, embed_size=E)``)
generates ``--tokens`` tokens from a one-token prompt, per batch size, timed after compile as
the median of ``--repeats`` runs (``block_until_ready``), reported as milliseconds per
generated step (a step makes ``B`` tokens). Rows:

- ``generate greedy`` / ``generate T=0.8`` / ``generate top-p 0.9``: :func:`lstm_jax.generate`,
  one jitted program (a ``lax.scan`` of ``lm.step`` and sampling);
- ``jit step, Python loop``: one jitted function (``lm.step`` and the argmax) called once per
  token from Python, the token fed back on the device: what a hand-written loop costs, the
  dispatch floor of stepping from the host;
- ``step compute (scan, no sampling)``: ``lm.step`` ``N`` times in one ``lax.scan`` on a
  fixed token (the logits kept as outputs, so nothing is dropped): the step's own compute,
  the floor of any generation loop on this device;
- ``torch greedy`` / ``torch T=0.8``: PyTorch stepping ``nn.Embedding`` + ``nn.LSTM`` (or
  ``nn.GRU``) + ``nn.Linear`` one token at a time under ``torch.inference_mode``, on the CPU,
  with our weights (``lstm_jax.interop.torch.to_torch``), one intra-op thread by default
  (``--torch-threads``): its first step's logits are checked against ours (max |diff|
  printed) and the greedy sequences compared.

FLOPs per step (matmuls only): ``2·B·[(E+H)·G·H + (L-1)·2H·G·H + H·V]`` (G = 4 LSTM, 3 GRU).

    JAX_PLATFORMS=cpu python experiments/generation_benchmark.py              # small CPU defaults
    python experiments/generation_benchmark.py --hidden 512 --layers 2 --batch 1,64 --tokens 500

Writes the JSON (``--out``) with every timing, the check and the machine.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import lstm_jax as lj
from lstm_jax.models import generate, language_model
from lstm_jax.train import write_json

CELLS = {"lstm": (lj.lstm, 4), "gru": (lj.gru, 3)}  # constructor, gate blocks G


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", default="lstm", help=f"comma-separated, from {sorted(CELLS)}")
    p.add_argument("--vocab", type=int, default=65, help="V (tiny-shakespeare's characters: 65)")
    p.add_argument("--embed", type=int, default=64, help="E")
    p.add_argument("--hidden", type=int, default=128, help="H")
    p.add_argument("--layers", type=int, default=1, help="L, stacked layers")
    p.add_argument("--batch", default="1,16", help="comma-separated batch sizes B")
    p.add_argument("--tokens", type=int, default=200, help="N, steps generated per timed run")
    p.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch rows")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch.set_num_threads (default 1: stepping one token is dispatch-bound, and on a "
                        "shared 2-core machine 2 threads made PyTorch 5-200x slower by contention; 0: torch's "
                        "own default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/generation_benchmark.json", help="JSON output path")
    args = p.parse_args(argv)
    args.cells = args.cells.split(",")
    unknown = [c for c in args.cells if c not in CELLS]
    if unknown:
        p.error(f"--cells: unknown {unknown}; choose from {sorted(CELLS)}")
    try:
        args.batch = [int(b) for b in args.batch.split(",")]
    except ValueError:
        p.error(f"--batch must be comma-separated integers, got {args.batch!r}")
    for name in ("vocab", "embed", "hidden", "layers", "tokens", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be positive, got {getattr(args, name)}")
    if min(args.batch) < 1:
        p.error(f"--batch sizes must be positive, got {args.batch}")
    return args


def median_ms(run: Callable[[], Any], repeats: int) -> dict:
    """``run()`` once to compile and warm up, then ``repeats`` timed runs (ms)."""
    start = time.perf_counter()
    jax.block_until_ready(run())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "runs_ms": times, "first_call_s": first}


def jax_rows(lm, params, B: int, N: int, repeats: int, seed: int) -> list[tuple[str, dict, Any]]:
    """``[(name, timing of N steps, greedy tokens or None)]`` for our implementations."""
    prompt = jnp.zeros((B, 1), jnp.int32)
    key = jax.random.key(seed)
    rows = []
    for name, options in (("generate greedy", dict(greedy=True)), ("generate T=0.8", dict(temperature=0.8)),
                          ("generate top-p 0.9", dict(temperature=0.8, top_p=0.9))):
        run = lambda o=options: generate(lm, params, key, prompt, N, **o)[0]
        rows.append((name, median_ms(run, repeats), run() if options.get("greedy") else None))

    @jax.jit
    def step(params, carry, token):
        carry, logits = lm.step(params, carry, token)
        return carry, jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def python_loop():
        carry, token = lm.init_carry(params, (B,)), prompt[:, 0]
        out = []
        for _ in range(N):
            carry, token = step(params, carry, token)
            out.append(token)
        return jnp.stack(out, 1)

    rows.append(("jit step, Python loop", median_ms(python_loop, repeats), python_loop()))

    # tokens given in advance (not one fixed token, whose embedding and input projection XLA
    # would hoist out of the loop): the step's work without the sampling and its feedback
    fixed = jax.random.randint(jax.random.key(seed + 1), (N, B), 0, lm.vocab_size, jnp.int32)

    @jax.jit
    def compute_only(params, tokens):
        def body(carry, token):
            carry, logits = lm.step(params, carry, token)
            return carry, logits

        return jax.lax.scan(body, lm.init_carry(params, (B,)), tokens)

    rows.append(("step compute (scan, no sampling)", median_ms(lambda: compute_only(params, fixed), repeats), None))
    return rows


def torch_rows(lm, params, B: int, N: int, repeats: int, seed: int) -> tuple[list, dict]:
    """PyTorch stepping the same model; also ``{"max_abs_diff": first-step logits vs ours}``."""
    import torch

    from lstm_jax.interop.torch import to_torch

    rnn = to_torch(lm.body, params.body).eval()
    embed = torch.nn.Embedding(lm.vocab_size, lm.embed_size)
    readout = torch.nn.Linear(lm.body.output_size, lm.vocab_size)
    with torch.no_grad():
        embed.weight.copy_(torch.tensor(np.array(params.embed)))
        readout.weight.copy_(torch.tensor(np.array(params.w_out).T))
        readout.bias.copy_(torch.tensor(np.array(params.b_out)))
    generator = torch.Generator().manual_seed(seed)

    def run(temperature=None):
        with torch.inference_mode():
            token, state, out = torch.zeros(B, dtype=torch.long), None, []
            for _ in range(N):
                ys, state = rnn(embed(token)[:, None, :], state)
                logits = readout(ys[:, 0])
                if temperature is None:
                    token = logits.argmax(-1)
                else:
                    token = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator)[:, 0]
                out.append(token)
            return torch.stack(out, 1)

    def timed(fn):
        start = time.perf_counter()
        fn()  # warm-up
        first = time.perf_counter() - start
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return {"median_ms": statistics.median(times), "min_ms": min(times), "runs_ms": times, "first_call_s": first}

    with torch.inference_mode():
        first, _ = rnn(embed(torch.zeros(B, 1, dtype=torch.long)))
        torch_logits = readout(first[:, 0]).numpy()
    ours = lm.step(params, lm.init_carry(params, (B,)), jnp.zeros((B,), jnp.int32))[1]
    check = {"max_abs_diff": float(np.max(np.abs(torch_logits - np.asarray(ours))))}
    greedy = run().numpy()
    rows = [("torch greedy", timed(run), greedy), ("torch T=0.8", timed(lambda: run(0.8)), None)]
    return rows, check


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def main(argv=None):
    args = parse_args(argv)
    versions = {k: _version(k) for k in ("jax", "jaxlib", "torch", "numpy")}
    use_torch = not args.no_torch and versions["torch"] != "not installed" and jax.default_backend() == "cpu"
    torch_threads = None
    if use_torch:
        import torch

        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)
        torch_threads = torch.get_num_threads()
    device = (f"{jax.devices()[0].device_kind} ({jax.default_backend()}), {os.cpu_count()} CPUs, "
              f"{platform.processor() or platform.machine()}")
    load_start = os.getloadavg()
    print(f"device: {device}; versions: {versions}; torch threads: {torch_threads}")
    print(f"load average at start: {load_start[0]:.2f}; N = {args.tokens} steps per run, median of "
          f"{args.repeats} runs after a compiling/warm-up run", flush=True)

    results, checks = [], []
    for cell_name in args.cells:
        make, G = CELLS[cell_name]
        V, E, H, L = args.vocab, args.embed, args.hidden, args.layers
        lm = language_model(lj.stack([make(H) for _ in range(L)]), V, embed_size=E)
        params = lm.init(jax.random.key(args.seed))
        for B in args.batch:
            flops = 2 * B * ((E + H) * G * H + (L - 1) * 2 * H * G * H + H * V)
            group = dict(cell=cell_name, V=V, E=E, H=H, L=L, B=B, N=args.tokens, flops_per_step=flops)
            print(f"\n{cell_name} V={V} E={E} H={H} L={L} B={B}", flush=True)
            rows = jax_rows(lm, params, B, args.tokens, args.repeats, args.seed)
            if use_torch:
                torch_part, check = torch_rows(lm, params, B, args.tokens, args.repeats, args.seed)
                agree = float(np.mean(np.asarray(rows[0][2]) == torch_part[0][2]))
                check.update(group, greedy_agreement=agree)
                checks.append(check)
                print(f"  torch vs ours: first-step logits max |diff| {check['max_abs_diff']:.2e}; greedy tokens "
                      f"equal at {agree:.0%} of positions", flush=True)
                rows += torch_part
            reference = rows[0][1]["median_ms"]
            for name, timing, _ in rows:
                per_step = timing["median_ms"] / args.tokens
                results.append(dict(group, impl=name, ms_per_step=per_step, tokens_per_s=B / per_step * 1e3,
                                    vs_generate=timing["median_ms"] / reference,
                                    gflops=flops / (per_step * 1e-3) / 1e9, timing=timing))
                print(f"  {name:34s} {per_step * 1e3:9.1f} µs/step   (first call {timing['first_call_s']:.2f} s)",
                      flush=True)

    load_end = os.getloadavg()
    print(f"\nload average at end: {load_end[0]:.2f}\n")
    print("| cell | B | H×L | implementation | µs / step | tokens / s | × generate greedy | GFLOP/s |")
    print("|---|---:|---|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['cell']} | {r['B']} | {r['H']}×{r['L']} | {r['impl']} | {r['ms_per_step'] * 1e3:.1f} | "
              f"{r['tokens_per_s']:,.0f} | {r['vs_generate']:.2f} | {r['gflops']:.2f} |")
    print("\nµs / step: wall time of one generation step (B tokens), median over runs of N steps. "
          "× generate greedy: that row's time / generate greedy's (> 1: generate is faster).")
    out = write_json(args.out, {
        "meta": {"date": datetime.datetime.now().isoformat(timespec="seconds"), "device": device,
                 "versions": versions, "torch_threads": torch_threads, "args": vars(args),
                 "load_average": [load_start[0], load_end[0]]},
        "results": results, "checks": checks})
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
