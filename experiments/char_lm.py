"""Character language models on the Shakespeare plays, with an n-gram and a PyTorch yardstick.

Trains one character-level language model per cell (embedding -> stacked cells -> softmax,
``lstm_jax.models.language_model``) with truncated backpropagation through time: the training
plays as ``--batch`` contiguous streams read ``--chunk`` characters per step, the state handed
from one step to the next (``StreamBatches`` + ``fit(carry=...)``, Zaremba et al. 2014) and
restarted at the start of every play. Reports per model the bits per character on the
validation and test plays and on the first ``--train-eval-chars`` training characters (the
state handed on chunk after chunk through the whole split, no dropout: ``eval_layout``), the
training speed (characters per second of ``fit``'s wall time less its evaluations; JAX's
compilation included) and the wall time; the validation learning curve; samples at several
temperatures from a fixed prompt and key. Two yardsticks on the same split: ``torch_<cell>``
in ``--models`` trains the same model in PyTorch (``nn.Embedding`` + ``nn.LSTM`` +
``nn.Linear``, the same initial weights converted with ``lstm_jax.interop.torch``, the same
batches in the same order, Adam with the same schedule and clipping:
``experiments/torch_char_lm.py``), and an interpolated Kneser-Ney n-gram model of each order
in ``--ngram-orders`` (``experiments/ngram_baseline.py``). Writes ``results.json``,
``results.md`` and ``results.png`` (validation bits per character vs step, the best n-gram
as a line) to ``--out``, and each trained model to ``models/<name>.npz``
(``lstm_jax.io.load`` reads it back, e.g. to sample from it).

    python experiments/char_lm.py                    # CPU size: 1 x 256, 1000 steps per model (~3.5 min, 2 cores)
    python experiments/char_lm.py --full             # 2 x 512, dropout 0.5, ~80 epochs (an accelerator)
    python experiments/char_lm.py --models lstm,torch_lstm --hidden 512 --steps 4000 --schedule cosine --lr 3e-3
    python experiments/char_lm.py --models lstm,lstm_CIFG,min_gru --resume --progress 100
    python experiments/char_lm.py --text-file input.txt --prompt "First Citizen:"   # e.g. tiny-shakespeare

Reads top to bottom: arguments, the evaluation layout, then per model: the model, training
(``lstm_jax.train.fit``), evaluation and samples (or the PyTorch twin); then the report.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import pathlib
import platform
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import lstm_jax as lj
from lstm_jax.cells.registry import CELL_CONSTRUCTORS, cell_by_name
from lstm_jax.data import Corpus, StreamBatches, shakespeare, text_file
from lstm_jax.io import save as save_model
from lstm_jax.models import generate, language_model
from lstm_jax.models.language_model import at_least_float32
from lstm_jax.train import data_parallel_mesh, fit, markdown_table, write_json, write_text
from lstm_jax.train.cli import add_run_arguments, fill_defaults, load_script, train_config

TORCH_CELLS = ("rnn", "gru", "lstm")  # "torch_<cell>": the same model in PyTorch (nn.RNN / nn.GRU / nn.LSTM)
DEFAULTS = dict(models="lstm,gru,rnn,torch_lstm", layers=1, hidden=256, embed=64, batch=32, chunk=100,
                steps=1000, lr=5e-3, schedule="constant", dropout=0.0, eval_every=200, train_eval_chars=500_000)
# For an accelerator (2 x 512 with dropout, as Zaremba et al.'s medium model; ~80 epochs of 384
# steps). The PyTorch twin then needs a CUDA build of torch: drop it with --models otherwise.
FULL = dict(models="lstm,gru,rnn,torch_lstm", layers=2, hidden=512, embed=128, batch=64, chunk=150,
            steps=30000, lr=2e-3, schedule="cosine", dropout=0.5, eval_every=1000, train_eval_chars=0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help=f"the accelerator size: {FULL} (flags given override it)")
    p.add_argument("--models", help=f"comma-separated: cell names from {sorted(CELL_CONSTRUCTORS)}, or torch_<cell> "
                                    f"for <cell> in {TORCH_CELLS} (default {DEFAULTS['models']})")
    p.add_argument("--layers", type=int, help=f"stacked layers (default {DEFAULTS['layers']})")
    p.add_argument("--hidden", type=int, help=f"hidden size H of every layer (default {DEFAULTS['hidden']})")
    p.add_argument("--embed", type=int, help=f"embedding size E (default {DEFAULTS['embed']})")
    p.add_argument("--batch", type=int, help=f"streams read in parallel (default {DEFAULTS['batch']})")
    p.add_argument("--chunk", type=int, help=f"characters per step: the truncation length (default "
                                             f"{DEFAULTS['chunk']})")
    p.add_argument("--steps", type=int, help=f"optimiser steps per model (default {DEFAULTS['steps']})")
    p.add_argument("--lr", type=float, help=f"Adam learning rate (default {DEFAULTS['lr']})")
    p.add_argument("--dropout", type=float, help="dropout between the layers and before the readout "
                                                 f"(default {DEFAULTS['dropout']})")
    p.add_argument("--eval-every", type=int, help="steps between evaluations of the validation split "
                                                  f"(default {DEFAULTS['eval_every']})")
    p.add_argument("--eval-batch", type=int, default=64, help="rows the evaluated splits are cut into")
    p.add_argument("--eval-chunk", type=int, default=200, help="characters per evaluation step")
    p.add_argument("--burn-in", type=int, default=200,
                   help="characters each evaluation row reads before its first scored one")
    p.add_argument("--train-eval-chars", type=int,
                   help="training bits per character on the first N training characters (0: all; default "
                        f"{DEFAULTS['train_eval_chars']})")
    p.add_argument("--ngram-orders", default="1,2,3,4,5,6,7", help="Kneser-Ney n-gram orders ('' for none)")
    p.add_argument("--prompt", default="ROMEO:\n", help="the samples' prompt")
    p.add_argument("--temperatures", default="0.5,0.8,1.0",
                   help="comma-separated sampling temperatures, 0 for greedy ('' for no samples)")
    p.add_argument("--sample-length", type=int, default=400, help="characters per sample")
    p.add_argument("--text-file", default=None, help="train on a UTF-8 text file split 90/5/5 instead of the plays")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    add_run_arguments(p, out="results/char_lm")
    args = p.parse_args(argv)
    fill_defaults(args, FULL if args.full else DEFAULTS)
    args.models = args.models.split(",")
    try:
        args.ngram_orders = [int(n) for n in args.ngram_orders.split(",") if n.strip()]
        args.temperatures = [float(t) for t in args.temperatures.split(",") if t.strip()]
    except ValueError:
        p.error(f"--ngram-orders and --temperatures must be comma-separated numbers, got "
                f"{args.ngram_orders!r} and {args.temperatures!r}")
    unknown = [n for n in args.models if n not in CELL_CONSTRUCTORS and n.removeprefix("torch_") not in TORCH_CELLS]
    if unknown:
        p.error(f"--models: unknown {unknown}; choose from {sorted(CELL_CONSTRUCTORS)} or "
                f"{['torch_' + c for c in TORCH_CELLS]}")
    positive = ("layers", "hidden", "embed", "batch", "chunk", "steps", "eval_batch", "eval_chunk", "sample_length")
    for flag in positive + (("progress",) if args.progress is not None else ()):
        if getattr(args, flag) <= 0:
            p.error(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    for flag in ("eval_every", "burn_in", "train_eval_chars"):
        if getattr(args, flag) < 0:
            p.error(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")
    if any(n < 1 or n > 10 for n in args.ngram_orders):
        p.error(f"--ngram-orders must lie in [1, 10], got {args.ngram_orders}")
    if any(t < 0 for t in args.temperatures):
        p.error(f"--temperatures must be >= 0, got {args.temperatures}")
    if not args.prompt:
        p.error("--prompt must not be empty")
    # Everything a run would refuse is refused now, before anything trains.
    try:
        train_config(args)
        devices = data_parallel_mesh(args.num_devices).devices.size
        if args.batch % devices:
            raise ValueError(f"--batch ({args.batch}) must be divisible by the number of devices ({devices}).")
        for name in args.models:
            build_model(name.removeprefix("torch_"), 2, args)
    except (TypeError, ValueError) as e:
        p.error(str(e))
    return args


def build_model(cell_name: str, vocab_size: int, args):
    """The language model: embedding (E) -> ``--layers`` cells of size H -> dropout -> readout."""
    body = lj.stack([cell_by_name(cell_name, args.hidden) for _ in range(args.layers)], dropout_rate=args.dropout)
    return language_model(body, vocab_size, embed_size=args.embed, dropout_rate=args.dropout)


def initial_params(lm, args):
    """The same initial weights for a cell's JAX run and its PyTorch twin."""
    return lm.init(jax.random.fold_in(jax.random.key(args.seed), 1), dtype=jnp.dtype(args.dtype))


# ---------------------------------------------------------------------------- evaluation

class EvalLayout(NamedTuple):
    """One split laid out so that every target is scored exactly once, ``[C, B, L]`` each:
    ``C`` chunks of ``B`` rows of ``L`` characters, read chunk after chunk with the state handed on."""

    inputs: np.ndarray  # int32: the characters read
    targets: np.ndarray  # int32: the next characters
    scored: np.ndarray  # bool: True where the target counts
    resets: np.ndarray  # bool: the state restarts before reading (a row's start, a document start)


def eval_layout(tokens: np.ndarray, document_starts: np.ndarray, batch: int, chunk: int, burn_in: int) -> EvalLayout:
    """The ``N - 1`` targets ``tokens[1:]`` cut into ``B`` consecutive rows of ``S = ceil((N - 1) / B)``.

    Row ``b`` scores the targets of positions ``[b S, (b + 1) S)`` and, but for the first row,
    starts reading ``burn_in`` characters earlier, from a fresh state, so that its first scored
    character already has that much context; a document start inside a row restarts the state
    as in training. The rows are padded at the end to ``C = ceil(width / L)`` chunks (padding
    not scored). With one row this is a single pass over the split.
    """
    n = len(tokens) - 1
    B = min(batch, n)
    S = -(-n // B)
    first = np.arange(B) * S  # each row's first scored position
    begin = np.maximum(first - burn_in, 0)
    C = -(-(S + burn_in) // chunk)
    pos = begin[:, None] + np.arange(C * chunk)  # [B, W] the input positions read
    inside = np.minimum(pos, n - 1)
    scored = (pos >= first[:, None]) & (pos < first[:, None] + S) & (pos < n)
    resets = np.asarray(document_starts)[inside] | (np.arange(C * chunk) == 0)
    tokens = np.asarray(tokens, np.int32)
    to_chunks = lambda a: np.ascontiguousarray(a.reshape(B, C, chunk).swapaxes(0, 1))
    return EvalLayout(to_chunks(tokens[inside]), to_chunks(tokens[inside + 1]), to_chunks(scored), to_chunks(resets))


def layouts(corpus: Corpus, args) -> dict[str, EvalLayout]:
    """The evaluated splits: validation, test, and the first ``--train-eval-chars`` of training."""
    limit = args.train_eval_chars or len(corpus.train)
    cut = {"train": slice(0, limit), "valid": slice(None), "test": slice(None)}
    return {split: eval_layout(getattr(corpus, split)[cut[split]], corpus.document_starts[split][cut[split]],
                               args.eval_batch, args.eval_chunk, args.burn_in) for split in cut}


def evaluator(lm, layout: EvalLayout):
    """``params -> bits per character`` over a split: one jitted scan over its chunks, no dropout."""
    data = EvalLayout(*map(jnp.asarray, layout))
    count = int(layout.scored.sum())

    @jax.jit
    def total_nats(params, data):
        def one_chunk(carry, chunk):
            logits, carry = lm.apply(params, chunk.inputs, carry, resets=chunk.resets)
            logp = jax.nn.log_softmax(logits.astype(at_least_float32(logits.dtype)), axis=-1)
            nll = -jnp.take_along_axis(logp, chunk.targets[..., None], axis=-1)[..., 0]
            return carry, jnp.sum(jnp.where(chunk.scored, nll, jnp.zeros_like(nll)))

        _, sums = jax.lax.scan(one_chunk, lm.init_carry(params, data.inputs.shape[1:2]), data)
        return jnp.sum(sums)

    return lambda params: float(total_nats(params, data)) / count / math.log(2)


# ---------------------------------------------------------------------------- one model

def run_jax(name: str, corpus: Corpus, evals: dict[str, EvalLayout], args) -> dict:
    """Trains one model with ``fit``; returns its row, learning curve and samples."""
    t0 = time.perf_counter()
    V = corpus.vocab.size
    lm = build_model(name, V, args)
    params = initial_params(lm, args)
    source = StreamBatches(corpus.train, args.batch, args.chunk, document_starts=corpus.document_starts["train"])
    bpc = {split: evaluator(lm, layout) for split, layout in evals.items()}
    eval_seconds = [0.0]

    def eval_fn(params):
        start = time.perf_counter()
        metrics = {"valid_bpc": bpc["valid"](params)}
        eval_seconds[0] += time.perf_counter() - start
        return metrics

    config = train_config(args)
    workdir = pathlib.Path(args.out) / "runs" / name
    run = dict(model=name, **run_settings(args), corpus=repr(corpus))
    curve = [(0, bpc["valid"](params))]  # the untrained model, for the curve
    result = fit(lm.stream_loss, params, source, config, carry=lm.init_carry(params, (args.batch,)), eval_fn=eval_fn,
                 workdir=workdir, resume=args.resume, run_config=run, progress=args.progress,
                 description=f"char LM {name}")
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    curve += [(r["step"], r["eval/valid_bpc"]) for r in records if "eval/valid_bpc" in r]
    speed = train_speed(workdir, trained=(args.steps - result.start_step) * args.batch * args.chunk,
                        seconds=result.seconds - eval_seconds[0])
    params = result.params
    (pathlib.Path(args.out) / "models").mkdir(parents=True, exist_ok=True)
    save_model(pathlib.Path(args.out) / "models" / f"{name}.npz", lm, params)
    row = dict(model=name, parameters=parameter_count(params), train_bpc=bpc["train"](params),
               valid_bpc=result.final_eval["valid_bpc"], test_bpc=bpc["test"](params), steps=args.steps,
               epochs=args.steps / source.steps_per_epoch,
               resumed_from=result.start_step, **speed)
    samples = {str(t): sample(lm, params, corpus, t, args) for t in args.temperatures}
    return dict(row=dict(row, seconds=time.perf_counter() - t0), curve=curve, samples=samples)


def train_speed(workdir: pathlib.Path, trained: int, seconds: float) -> dict:
    """``{"tokens_per_second", "train_seconds"}`` of the training done in this call, saved in
    ``workdir``; a run resumed with nothing left to train reports the speed saved before."""
    path = workdir / "speed.json"
    if trained == 0 and path.exists():
        return json.loads(path.read_text())
    speed = dict(tokens_per_second=round(trained / seconds) if trained else 0, train_seconds=seconds)
    write_json(path, speed)
    return speed


def run_settings(args) -> dict:
    """What defines a model's run besides its name and the TrainConfig (compared on resume)."""
    keys = ("layers", "hidden", "embed", "batch", "chunk", "dropout", "dtype", "eval_batch", "eval_chunk", "burn_in")
    return {k: getattr(args, k) for k in keys}


def parameter_count(params) -> int:
    return int(sum(np.size(x) for x in jax.tree.leaves(params)))


def sample(lm, params, corpus: Corpus, temperature: float, args) -> str:
    """The prompt and ``--sample-length`` characters drawn at ``temperature`` (0: greedy), key fixed."""
    prompt = corpus.vocab.encode(args.prompt)
    tokens, _ = generate(lm, params, jax.random.key(args.seed), prompt, args.sample_length, temperature=temperature)
    return args.prompt + corpus.vocab.decode(np.asarray(tokens))


def _sibling(name: str):
    """Another script of experiments/ (not a package), imported by path."""
    return load_script(pathlib.Path(__file__).with_name(f"{name}.py"))


def run_torch(name: str, corpus: Corpus, evals: dict[str, EvalLayout], args) -> dict:
    """The JAX model ``name[6:]``, same weights, batches, optimiser and clipping, trained in PyTorch."""
    torch_char_lm = _sibling("torch_char_lm")  # imports torch
    t0 = time.perf_counter()
    cell_name = name.removeprefix("torch_")
    lm = build_model(cell_name, corpus.vocab.size, args)
    params = initial_params(lm, args)
    source = StreamBatches(corpus.train, args.batch, args.chunk, document_starts=corpus.document_starts["train"])
    workdir = pathlib.Path(args.out) / "runs" / name
    run = dict(model=name, **run_settings(args), corpus=repr(corpus), train=train_config(args).to_dict())
    done = torch_char_lm.finished_run(workdir, run, args.resume)
    if done is not None:
        return done
    result = torch_char_lm.train(lm, params, source, train_config(args), evals, eval_every=args.eval_every,
                                 progress=args.progress, description=f"char LM {name}")
    row = dict(model=name, parameters=parameter_count(params), train_bpc=result["bpc"]["train"],
               valid_bpc=result["bpc"]["valid"], test_bpc=result["bpc"]["test"], steps=args.steps,
               epochs=args.steps / source.steps_per_epoch,
               tokens_per_second=round(args.steps * args.batch * args.chunk / result["train_seconds"]),
               train_seconds=result["train_seconds"], resumed_from=0, seconds=time.perf_counter() - t0)
    out = dict(row=row, curve=result["curve"], samples={}, losses=result["losses"])
    torch_char_lm.save_run(workdir, run, out)
    return out


# ---------------------------------------------------------------------------- report

def agreement(curves: dict) -> dict:
    """For each PyTorch twin: its validation curve against the JAX model's, step by step."""
    out = {}
    for name, curve in curves.items():
        twin = name.removeprefix("torch_")
        if name.startswith("torch_") and twin in curves:
            ours = dict(curves[twin])
            diffs = [(step, value - ours[step]) for step, value in curve if step in ours]
            out[name] = dict(versus=twin, max_abs_diff=max(abs(d) for _, d in diffs), differences=diffs)
    return out


def plot(curves: dict, ngram_rows: list[dict], path: pathlib.Path) -> None:
    """Validation bits per character vs training step, per model; the best n-gram as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = {}
    for name, curve in curves.items():
        twin = name.removeprefix("torch_")
        style = dict(linestyle="--", marker="x", color=colors.get(twin)) if name.startswith("torch_") else \
            dict(marker="o", markersize=3)
        line, = ax.plot(*zip(*curve[1:] or curve), label=name.replace("torch_", "PyTorch "), **style)
        colors.setdefault(name, line.get_color())
    if ngram_rows:
        best = min(ngram_rows, key=lambda r: r["valid_bpc"])
        ax.axhline(best["valid_bpc"], color="k", linestyle=":", label=f"{best['model']} (best n-gram)")
    ax.set_xlabel("training step")
    ax.set_ylabel("validation bits per character")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


COLUMNS = {"model": "model", "parameters": "parameters", "train_bpc": "train bpc", "valid_bpc": "valid bpc",
           "test_bpc": "test bpc", "steps": "steps", "epochs": "epochs", "tokens_per_second": "tokens/s",
           "seconds": "seconds"}


def report(rows, ngram_rows, agree, samples, args) -> str:
    lines = [markdown_table(rows + ngram_rows, COLUMNS)]
    for name, a in agree.items():
        lines.append(f"{name} vs {a['versus']}: validation curves differ by at most {a['max_abs_diff']:.4f} bits "
                     f"per character over {len(a['differences'])} evaluations.\n")
    for name, by_temperature in samples.items():
        for t, text in by_temperature.items():
            lines.append(f"**{name}, temperature {t}:**\n\n```\n{text}\n```\n")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    out = pathlib.Path(args.out)
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    corpus = text_file(args.text_file) if args.text_file else shakespeare()
    try:
        corpus.vocab.encode(args.prompt)
    except ValueError as e:
        raise ValueError(f"--prompt: {e}") from None
    print(f"devices: {jax.devices()}; {corpus}; models {args.models}, {args.layers} x {args.hidden}, "
          f"batch {args.batch} x {args.chunk} characters, {args.steps} steps", flush=True)
    t0 = time.perf_counter()
    ngram_rows = _sibling("ngram_baseline").evaluate(corpus, args.ngram_orders) if args.ngram_orders else []
    for r in ngram_rows:
        print(f"{r['model']:12s} valid {r['valid_bpc']:.3f} test {r['test_bpc']:.3f} bpc", flush=True)
    evals = layouts(corpus, args)
    rows, curves, samples = [], {}, {}
    for name in args.models:
        run = (run_torch if name.startswith("torch_") else run_jax)(name, corpus, evals, args)
        rows.append(run["row"])
        curves[name], samples[name] = run["curve"], run["samples"]
        r = run["row"]
        print(f"{name:12s} train {r['train_bpc']:.3f} valid {r['valid_bpc']:.3f} test {r['test_bpc']:.3f} bpc, "
              f"{r['tokens_per_second']:,.0f} tokens/s [{r['seconds']:.0f} s]", flush=True)
    samples = {k: v for k, v in samples.items() if v}
    agree = agreement(curves)
    text = report(rows, ngram_rows, agree, samples, args)
    print("\n" + text)
    meta = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                command=" ".join([pathlib.Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
                jax=jax.__version__, devices=[str(d) for d in jax.devices()], machine=platform.machine(),
                corpus=repr(corpus), total_seconds=time.perf_counter() - t0, args=vars(args))
    write_json(out / "results.json", dict(meta=meta, results=rows, ngram=ngram_rows, curves=curves,
                                          agreement=agree, samples=samples))
    write_text(out / "results.md", text)
    plot(curves, ngram_rows, out / "results.png")
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'results.png'}")
    return dict(results=rows, ngram=ngram_rows, curves=curves, agreement=agree, samples=samples)


if __name__ == "__main__":
    main()
