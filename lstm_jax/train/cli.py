"""The command-line flags every training experiment shares, and the TrainConfig they make.

An experiment script declares its own flags (model, data, sizes) and these::

    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int); p.add_argument("--lr", type=float)   # the script's own
    add_run_arguments(p, out="results/my_experiment")
    args = p.parse_args(argv)
    fill_defaults(args, FULL if args.full else DEFAULTS)
    config = train_config(args)
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys
from types import ModuleType
from typing import Any, Mapping

from lstm_jax.train.config import SCHEDULES, TrainConfig


def add_run_arguments(parser: argparse.ArgumentParser, *, out: str) -> None:
    """Adds ``--schedule --warmup-steps --clip --checkpoint-every --num-devices --seed --out
    --resume --progress`` (``--schedule`` defaults to None: give it in the script's defaults)."""
    parser.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule")
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--clip", type=float, default=1.0, help="global-norm gradient clipping (0: none)")
    parser.add_argument("--checkpoint-every", type=int, default=1000)
    parser.add_argument("--num-devices", type=int, default=None, help="devices to shard the batch over (default all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=out, help=f"output directory (default {out})")
    parser.add_argument("--resume", action="store_true", help="continue the runs found in --out")
    parser.add_argument("--progress", type=int, default=None, metavar="N",
                        help="when stderr is not a terminal, a progress line every N steps (default: every "
                             "metrics interval, steps/20); on a terminal, a progress bar")


def fill_defaults(args: argparse.Namespace, defaults: Mapping[str, Any]) -> argparse.Namespace:
    """Each flag left unset (None) takes its value from ``defaults`` (e.g. the CPU or the full size)."""
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of ``args``: ``steps``, ``lr``, ``eval_every`` (0 if absent) and the run
    arguments; metrics every ``steps / 20`` steps."""
    return TrainConfig(steps=args.steps, learning_rate=args.lr, schedule=args.schedule,
                       warmup_steps=args.warmup_steps, clip_norm=args.clip or None,
                       log_every=max(1, args.steps // 20), eval_every=getattr(args, "eval_every", 0),
                       checkpoint_every=args.checkpoint_every, seed=args.seed, num_devices=args.num_devices)


def load_script(path: str | pathlib.Path) -> ModuleType:
    """The Python script at ``path`` (e.g. another of ``experiments/``, which is not a package)
    as the module ``experiments_<stem>``, executed once and registered in ``sys.modules`` (as
    its dataclasses and pickling need)."""
    path = pathlib.Path(path)
    key = f"experiments_{path.stem}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, path)
        module = sys.modules[key] = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[key]
            raise
    return sys.modules[key]
