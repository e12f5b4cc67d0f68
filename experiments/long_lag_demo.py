"""Demo: an LSTM learns the adding problem where a vanilla RNN stays at the baseline.

Reads top to bottom: arguments, data, models, one jitted Optax update, the loop, results.
Default size runs in a couple of minutes on a 2-core CPU:

    python experiments/long_lag_demo.py                 # T=50, rnn vs lstm
    python experiments/long_lag_demo.py --length 200 --steps 3000 --models rnn,lstm,gru
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import optax

import lstm_jax as lj
from lstm_jax.data import ADDING_BASELINE_MSE, adding_problem
from lstm_jax.models import readout

CELLS = {"rnn": lj.rnn, "lstm": lj.lstm, "gru": lj.gru, "mut1": lj.mut1, "mut2": lj.mut2, "mut3": lj.mut3}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=100, help="sequence length T")
    p.add_argument("--models", default="rnn,lstm", help=f"comma-separated, from {sorted(CELLS)}")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--clip", type=float, default=1.0, help="global-norm gradient clipping")
    p.add_argument("--test-size", type=int, default=2560)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/long_lag_demo.json")
    args = p.parse_args(argv)
    args.models = args.models.split(",")
    unknown = [m for m in args.models if m not in CELLS]
    if unknown:
        p.error(f"--models: unknown {unknown}; choose from {sorted(CELLS)}")
    return args


def train(name, args):
    model = readout(CELLS[name](args.hidden), 1)
    key = jax.random.key(args.seed)
    params = model.init(key, 2)  # the adding problem has 2 input channels
    opt = optax.chain(optax.clip_by_global_norm(args.clip), optax.adam(args.lr))
    opt_state = opt.init(params)

    def loss_fn(params, xs, ys):  # xs [B, T, 2], ys [B]
        return jnp.mean((model.apply(params, xs)[:, 0] - ys) ** 2)

    @jax.jit
    def update(params, opt_state, key):
        xs, ys = adding_problem(key, args.batch, args.length)
        loss, grads = jax.value_and_grad(loss_fn)(params, xs, ys)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    start = time.perf_counter()
    for step in range(args.steps):
        params, opt_state, loss = update(params, opt_state, jax.random.fold_in(key, step + 1))
        if (step + 1) % max(1, args.steps // 5) == 0:
            print(f"  {name:5s} step {step + 1:5d}  train MSE {float(loss):.4f}", flush=True)
    xs, ys = adding_problem(jax.random.key(10_000 + args.seed), args.test_size, args.length)
    test_mse = float(jax.jit(loss_fn)(params, xs, ys))
    return {"model": name, "length": args.length, "test_mse": test_mse,
            "baseline_mse": ADDING_BASELINE_MSE, "ratio_to_baseline": test_mse / ADDING_BASELINE_MSE,
            "steps": args.steps, "seconds": time.perf_counter() - start}


def main(argv=None):
    args = parse_args(argv)
    print(f"adding problem, T={args.length}; baseline MSE {ADDING_BASELINE_MSE:.4f} (always predict 1)")
    results = [train(name, args) for name in args.models]
    print(f"\n| model | T | test MSE | / baseline | steps | seconds |\n|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['length']} | {r['test_mse']:.4f} | {r['ratio_to_baseline']:.3f} "
              f"| {r['steps']} | {r['seconds']:.0f} |")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    print(f"\nwrote {out}")
    return results


if __name__ == "__main__":
    main()
