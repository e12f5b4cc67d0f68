"""A character language model's training step: ours against PyTorch's, same model, same weights.

One optimiser step of ``experiments/char_lm.py``'s model — embedding -> ``--layers`` cells of
size ``--hidden`` -> readout, mean cross-entropy, global-norm clipping at 1, Adam — on a
``[--batch, --chunk]`` batch of token ids, timed in one process:

- ``lstm_jax <impl>``: ``value_and_grad`` of ``LanguageModel.loss`` and ``optax`` Adam in one
  jitted step, the cells' layers built with ``impl=<impl>`` (``auto``: what the library picks,
  for the LSTM on the CPU the native C++ form where it is built; ``onednn``: oneDNN's
  primitive; ``fused``: the XLA fused form);
- ``torch``: the PyTorch twin (``experiments/torch_char_lm.py``'s ``CharLM`` built from the same
  weights), forward, ``backward``, ``clip_grad_norm_``, ``torch.optim.Adam.step``.

Median of ``--repeats`` steps after warm-up, the implementations interleaved in rounds as in
``experiments/benchmark.py`` (``time_interleaved``). The batch carries no document boundaries
(``resets``): the PyTorch twin runs a batch with them in pieces (``nn.LSTM`` has no per-row
reset), and the oneDNN form takes none (the native form does).

    JAX_PLATFORMS=cpu python experiments/lm_step_benchmark.py                 # 2 x LSTM 256, B=32, T=128
    JAX_PLATFORMS=cpu python experiments/lm_step_benchmark.py --cell gru
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lstm_jax as lj
from lstm_jax.train import write_json

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # the sibling scripts
from benchmark import time_interleaved  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cell", default="lstm", choices=["lstm", "gru"])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--vocab", type=int, default=65, help="tokens (the plays have 65-odd characters)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--impls", default="auto,fused", help="comma-separated impl= values for our layers")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default="results/lm_step_benchmark.json")
    return p.parse_args(argv)


def build_lm(args, impl: str):
    make = {"lstm": lj.lstm, "gru": lj.gru}[args.cell]
    body = lj.stack([lj.layer(make(args.hidden), impl=impl) for _ in range(args.layers)])
    return lj.language_model(body, args.vocab, embed_size=args.embed)


def ours(args, impl: str, params, tokens, targets):
    """A blocking training step of ours: ``() -> loss``."""
    lm = build_lm(args, impl)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    state = {"params": params, "opt": optimizer.init(params)}

    @jax.jit
    def step(params, opt, tokens, targets):
        loss, grads = jax.value_and_grad(lambda p: lm.loss(p, tokens, targets)[0])(params)
        with jax.numpy_dtype_promotion("standard"):  # optax mixes its int step count with floats
            updates, opt = optimizer.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    def run():
        state["params"], state["opt"], loss = step(state["params"], state["opt"], tokens, targets)
        return float(loss)

    return run


def torch_step(args, lm, params, tokens, targets):
    """The PyTorch twin's blocking training step: ``() -> loss``."""
    import torch
    import torch.nn.functional as F

    from torch_char_lm import CharLM

    model = CharLM(lm, params)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    inputs = torch.from_numpy(np.array(tokens)).long()  # a writable copy
    labels = torch.from_numpy(np.array(targets)).long().reshape(-1)
    no_resets = np.zeros(tokens.shape, bool)

    def run():
        logits, _ = model(inputs, model.initial_state(args.batch), no_resets)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss.item()

    return run


def main(argv=None):
    args = parse_args(argv)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, args.vocab, (args.batch, args.chunk)), jnp.int32)
    targets = jnp.asarray(rng.integers(0, args.vocab, (args.batch, args.chunk)), jnp.int32)
    lm = build_lm(args, "auto")
    params = lm.init(jax.random.key(0))
    steps = {f"lstm_jax {impl}": ours(args, impl, params, tokens, targets) for impl in args.impls.split(",")}
    try:
        steps["torch"] = torch_step(args, lm, params, tokens, targets)
    except ImportError as e:
        print(f"torch: skipped ({e})")
    first = {name: run() for name, run in steps.items()}  # compile; the same weights give the same loss
    print(f"{args.layers} x {args.cell.upper()} {args.hidden}, B={args.batch}, T={args.chunk}, V={args.vocab}; "
          f"first-step losses: { {k: round(v, 5) for k, v in first.items()} }", flush=True)
    timings = time_interleaved(list(steps.values()), args.repeats, args.warmup)
    times = {name: t["runs_ms"] for name, t in zip(steps, timings)}
    ref = statistics.median(times[next(iter(steps))])
    rows = []
    print("| implementation | step (ms) | ratio | chars/s |\n|---|---:|---:|---:|")
    for name, runs in times.items():
        ms = statistics.median(runs)
        rows.append(dict(impl=name, median_ms=ms, ratio=ms / ref, chars_per_s=args.batch * args.chunk / ms * 1e3,
                         runs_ms=runs, first_loss=first[name]))
        print(f"| {name} | {ms:.1f} | {ms / ref:.2f} | {args.batch * args.chunk / ms * 1e3:,.0f} |")
    print(f"\nratio = time / {next(iter(steps))}'s: above 1 means that one is faster.")
    write_json(args.out, dict(args=vars(args), rows=rows))
    return rows


if __name__ == "__main__":
    main()
