"""The flagship experiment: LSTMs learn long-term dependencies where a vanilla RNN cannot.

Sweeps tasks x sequence lengths x models, trains each with the same budget, and reports per
(task, T, model) the test metric, the memoryless baseline, whether the task is solved by the
papers' criterion, the steps and the wall time. Writes ``results.json``, ``results.md`` and
``results.png`` (metric vs T per model, with the baseline) to ``--out``.

    python experiments/long_term_deps.py            # CPU size: adding at T = 50, 100, 200 (~5 min, 2 cores)
    python experiments/long_term_deps.py --full     # every task, T up to 1000 (an accelerator)
    python experiments/long_term_deps.py --tasks copy --lengths 100 --models lstm,gru --resume
    python experiments/long_term_deps.py --full --progress 100 > log.txt 2>&1   # a line every 100 steps

Reads top to bottom: arguments, then for each run: task, model, loss, evaluation, training
(``lstm_jax.train.fit``: jitted data-parallel update, clipping, checkpoints), then the report.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import platform
import sys

import jax

from lstm_jax.cells.registry import CELL_CONSTRUCTORS, cell_by_name
from lstm_jax.data import TASKS, get_task
from lstm_jax.models import readout
from lstm_jax.train import data_parallel_mesh, fit, markdown_table, write_json, write_text
from lstm_jax.train.cli import add_run_arguments, fill_defaults, train_config

DEFAULTS = dict(tasks="adding", lengths="50,100,200", models="rnn,lstm,gru", hidden=32, batch=64,
                steps=3000, lr=1e-2, test_size=2560, schedule="constant")
# The sweep for an accelerator: every task, the lengths of Arjovsky et al. and of the 1997 paper.
FULL = dict(tasks=",".join(TASKS), lengths="50,100,200,400,1000", models="rnn,lstm,gru", hidden=128,
            batch=128, steps=10000, lr=1e-3, test_size=2560, schedule="constant")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help=f"the full sweep: {FULL} (flags given override it)")
    p.add_argument("--tasks", help=f"comma-separated, from {sorted(TASKS)} (default {DEFAULTS['tasks']})")
    p.add_argument("--lengths", help=f"comma-separated T values (default {DEFAULTS['lengths']})")
    p.add_argument("--models", help=f"comma-separated cell names, from {sorted(CELL_CONSTRUCTORS)} "
                                    f"(default {DEFAULTS['models']})")
    p.add_argument("--hidden", type=int, help=f"hidden size H (default {DEFAULTS['hidden']})")
    p.add_argument("--batch", type=int, help=f"sequences per step (default {DEFAULTS['batch']})")
    p.add_argument("--steps", type=int, help=f"optimiser steps per run (default {DEFAULTS['steps']})")
    p.add_argument("--lr", type=float, help=f"Adam learning rate (default {DEFAULTS['lr']})")
    p.add_argument("--test-size", type=int, help=f"test sequences (default {DEFAULTS['test_size']})")
    p.add_argument("--derivative-clip", type=float, default=None,
                   help="LSTM derivative clipping bound on the gate pre-activations (Graves 2013)")
    p.add_argument("--eval-every", type=int, default=0, help="steps between test evaluations (0: at the end)")
    add_run_arguments(p, out="results/long_term_deps")
    args = p.parse_args(argv)
    fill_defaults(args, FULL if args.full else DEFAULTS)
    args.tasks, args.models = args.tasks.split(","), args.models.split(",")
    try:
        args.lengths = [int(t) for t in args.lengths.split(",")]
    except ValueError:
        p.error(f"--lengths must be comma-separated integers, got {args.lengths!r}")
    for flag, names, known in (("--tasks", args.tasks, TASKS), ("--models", args.models, CELL_CONSTRUCTORS)):
        unknown = [n for n in names if n not in known]
        if unknown:
            p.error(f"{flag}: unknown {unknown}; choose from {sorted(known)}")
    for flag in ("hidden", "batch", "steps", "test_size") + (("progress",) if args.progress is not None else ()):
        if getattr(args, flag) <= 0:
            p.error(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    if any(t <= 0 for t in args.lengths):
        p.error(f"--lengths must be positive, got {args.lengths}")
    # Everything a run would refuse is refused now, before the sweep trains anything.
    try:
        train_config(args)
        devices = data_parallel_mesh(args.num_devices).devices.size
        if args.batch % devices:
            raise ValueError(f"--batch ({args.batch}) must be divisible by the number of devices ({devices}).")
        for name in args.models:
            cell_by_name(name, args.hidden, **cell_options(name, args))
        for name in args.tasks:
            for length in args.lengths:
                jax.eval_shape(lambda k: get_task(name).sample(k, 1, length), jax.random.key(0))
    except (TypeError, ValueError) as e:
        p.error(str(e))
    return args


def cell_options(model_name: str, args) -> dict:
    """Derivative clipping (Graves 2013) is an LSTM option; other cells train without it."""
    if args.derivative_clip is None or not model_name.startswith("lstm"):
        return {}
    return {"derivative_clip": args.derivative_clip}


def run_one(task_name: str, length: int, model_name: str, args) -> dict:
    """Trains one model on one task at one length; returns its row of the results table."""
    task = get_task(task_name)
    options = cell_options(model_name, args)
    cell = cell_by_name(model_name, args.hidden, **options)
    model = readout(cell, task.output_size, at=task.readout_at)
    key = jax.random.key(args.seed)
    params = model.init(jax.random.fold_in(key, 1), task.input_size)

    def loss_fn(params, batch, key):  # batch.xs [B, T, I]
        del key  # no dropout here
        return task.loss(model.apply(params, batch.xs, lengths=batch.lengths), batch)

    test = task.sample(jax.random.fold_in(key, 2), args.test_size, length)  # never trained on

    @jax.jit
    def eval_fn(params):
        return task.evaluate(model.apply(params, test.xs, lengths=test.lengths), test)

    config = train_config(args)
    run = dict(task=task_name, length=length, model=model_name, hidden=args.hidden, batch=args.batch,
               test_size=args.test_size, derivative_clip=options.get("derivative_clip"))
    workdir = pathlib.Path(args.out) / "runs" / f"{task_name}_T{length}_{model_name}"
    result = fit(loss_fn, params, lambda k: task.sample(k, args.batch, length), config, eval_fn=eval_fn,
                 workdir=workdir, resume=args.resume, run_config=run, progress=args.progress,
                 description=f"{task_name} T={length} {model_name}")
    train_losses = [h["loss"] for h in result.history if "loss" in h]
    metric = result.final_eval[task.metric]
    baseline = task.baseline(length)
    return dict(run, metric_name=task.metric, metric=metric, baseline=baseline,
                ratio_to_baseline=metric / baseline, solved=bool(task.solved(result.final_eval)),
                criterion=task.criterion, steps=args.steps, seconds=result.seconds,
                resumed_from=result.start_step, test_metrics=result.final_eval,
                final_train_loss=train_losses[-1] if train_losses else None)


def plot(rows: list[dict], path: pathlib.Path) -> None:
    """One panel per task: headline metric vs T per model, the baseline dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    ncols = min(3, len(tasks))
    nrows = -(-len(tasks) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(tasks):]:
        ax.set_visible(False)
    for ax, task in zip(axes.flat, tasks):
        sub = [r for r in rows if r["task"] == task]
        lengths = sorted({r["length"] for r in sub})
        for model in dict.fromkeys(r["model"] for r in sub):
            pts = sorted((r["length"], r["metric"]) for r in sub if r["model"] == model)
            ax.plot(*zip(*pts), marker="o", label=model)
        base = {r["length"]: r["baseline"] for r in sub}
        ax.plot(lengths, [base[t] for t in lengths], "k--", marker="_", markersize=14, label="baseline (no memory)")
        metric = sub[0]["metric_name"]
        if metric in ("mse", "cross_entropy"):
            ax.set_yscale("log")
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(t) for t in lengths])
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(f"test {metric.replace('_', ' ')}")
        ax.set_title(task)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


COLUMNS = {"task": "task", "length": "T", "model": "model", "metric_name": "metric", "metric": "test",
           "baseline": "baseline", "ratio_to_baseline": "/ baseline", "solved": "solved",
           "steps": "steps", "seconds": "seconds"}


def main(argv=None):
    args = parse_args(argv)
    out = pathlib.Path(args.out)
    print(f"devices: {jax.devices()}; tasks {args.tasks}, T {args.lengths}, models {args.models}, "
          f"H={args.hidden}, batch {args.batch}, {args.steps} steps", flush=True)
    rows = []
    for task_name in args.tasks:
        for length in args.lengths:
            for model_name in args.models:
                row = run_one(task_name, length, model_name, args)
                rows.append(row)
                print(f"{task_name:18s} T={length:5d} {model_name:6s} test {row['metric_name']} "
                      f"{row['metric']:.4g} (baseline {row['baseline']:.4g}) solved={row['solved']} "
                      f"[{row['seconds']:.0f} s]", flush=True)
    table = markdown_table(rows, COLUMNS)
    print("\n" + table)
    meta = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                command=" ".join([pathlib.Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
                jax=jax.__version__, devices=[str(d) for d in jax.devices()], machine=platform.machine(),
                args={k: v for k, v in vars(args).items()})
    write_json(out / "results.json", dict(meta=meta, results=rows))
    write_text(out / "results.md", table)
    plot(rows, out / "results.png")
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'results.png'}")
    return rows


if __name__ == "__main__":
    main()
