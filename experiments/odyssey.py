"""Which LSTM variant is best? Random search per variant, as in Greff et al. 2015.

"LSTM: A search space odyssey" (Greff, Srivastava, Koutnik, Steunebrink & Schmidhuber 2015)
compares the vanilla LSTM (with peepholes) against eight variants that each change one thing,
by random search over the hyper-parameters of every variant on every dataset, and reports the
test error of the best 10% of trials (by validation error) as box plots, Welch's t-test of
each variant's best 10% against vanilla's, and fANOVA importances of the hyper-parameters.
Here: per (dataset, variant) one Optuna study (``RandomSampler``, each trial's draws a function
of ``--seed`` and the trial number), kept in an Optuna storage (SQLite by default) so that a
study resumes (``--resume`` runs only the missing trials) and several worker processes share it
(``--workers``). Jozefowicz, Zaremba & Sutskever 2015 ("An empirical exploration of recurrent
network architectures"): ``--jozefowicz`` adds the LSTM with forget-gate bias 0 and 1 against
the GRU at fixed hyper-parameters over ``--seeds`` seeds.

Datasets: ``chorales`` (Bach chorales as piano rolls, ``lstm_jax.data.music``; not the JSB split: next-frame
prediction, a cell then a linear map to 88 logits at every step; metric: test frame NLL in
nats, summed over the 88 keys, mean over frames) and ``text`` (a Shakespeare character language
model on a slice of the corpus with truncated BPTT; metric: test bits per character).

Search space per trial (Greff et al.'s, with Adam for their SGD with Nesterov momentum, whose
momentum our TrainConfig fixes): learning rate log-uniform in ``--lr-range``, hidden size
log-uniform (integer) in ``--hidden-range``, std of Gaussian noise added to the inputs (the
embedding for text) uniform in ``[0, --max-noise]``.

    python experiments/odyssey.py                      # CPU size (~10 min, 2 cores)
    python experiments/odyssey.py --full --workers 4   # an accelerator
    python experiments/odyssey.py --datasets text --variants lstm_V,lstm_CIFG,gru --trials 20 --resume
    python experiments/odyssey.py --analyse-only --out results/odyssey
    python experiments/odyssey.py --variants '' --jozefowicz --seeds 5

Writes ``results.json``, ``results.md`` and ``results.png`` (box plots of the best trials' test
metric per variant) to ``--out``, and the ``--jozefowicz`` runs to ``<out>/jozefowicz/``; the
studies live in ``--storage`` (default ``sqlite:///<out>/odyssey.db``). Every variant's trial
``n`` draws the same hyper-parameters and seed (common random numbers: the comparison is paired).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import time
import warnings
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax.cells.lstm import GREFF_VARIANTS
from lstm_jax.cells.registry import CELL_CONSTRUCTORS, cell_by_name
from lstm_jax.data import ArrayBatches, StreamBatches, shakespeare, text_file
from lstm_jax.models import language_model, readout
from lstm_jax.train import OPTIMIZERS, fit, markdown_table, write_json, write_text
from lstm_jax.train.cli import add_run_arguments, fill_defaults, load_script, train_config

DATASETS = ("chorales", "text")
VARIANTS = tuple(f"lstm_{v}" for v in GREFF_VARIANTS) + ("gru", "mut1", "mut2", "mut3", "rnn")
METRICS = {"chorales": "frame NLL (nats)", "text": "bits per character"}
# MUT1 and MUT2 add the raw input to a hidden-sized pre-activation (input size must be H): the
# text model's embedding is then H wide, and the chorales' 88 keys pass through a linear map to H.
SQUARE_INPUT = ("mut1", "mut2")
JOZEFOWICZ_MODELS = ("lstm_fb0", "lstm_fb1", "gru")

DEFAULTS = dict(datasets="chorales,text", variants=",".join(VARIANTS), trials=10, steps=200, batch=16,
                lr_range="1e-4,1e-1", hidden_range="16,64", max_noise=1.0, text_chars=40_000,
                eval_chars=8_000, chunk=50, embed=32, max_frames=64, schedule="constant",
                joz_lr=1e-2, joz_hidden=32, joz_noise=0.0, seeds=2)
# Greff et al.'s budget is ~200 trials per variant and dataset; 100 on an accelerator.
FULL = dict(datasets="chorales,text", variants=",".join(VARIANTS), trials=100, steps=3000, batch=32,
            lr_range="1e-4,1e-1", hidden_range="32,512", max_noise=1.0, text_chars=1_000_000,
            eval_chars=100_000, chunk=100, embed=64, max_frames=0, schedule="constant",
            joz_lr=3e-3, joz_hidden=256, joz_noise=0.0, seeds=5)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help=f"the accelerator size: {FULL} (flags given override it)")
    p.add_argument("--datasets", help=f"comma-separated, from {DATASETS} (default {DEFAULTS['datasets']})")
    p.add_argument("--variants", help="comma-separated cell names from the registry ('' for none; default: "
                                      "Greff's nine lstm_<V> presets, gru, mut1-3, rnn)")
    p.add_argument("--reference", default="lstm_V", help="the variant the others are t-tested against "
                                                         "(Greff's vanilla LSTM, with peepholes)")
    p.add_argument("--trials", type=int, help=f"trials per (dataset, variant) study (default {DEFAULTS['trials']})")
    p.add_argument("--steps", type=int, help=f"optimiser steps per trial (default {DEFAULTS['steps']})")
    p.add_argument("--batch", type=int, help=f"sequences (text: streams) per step (default {DEFAULTS['batch']})")
    p.add_argument("--optimizer", default="adam", choices=OPTIMIZERS, help="the optimiser (sgd: momentum 0.9)")
    p.add_argument("--lr-range", help=f"log-uniform learning-rate range lo,hi (default {DEFAULTS['lr_range']})")
    p.add_argument("--hidden-range", help="log-uniform hidden-size range lo,hi (integers; default "
                                          f"{DEFAULTS['hidden_range']})")
    p.add_argument("--max-noise", type=float, help="input noise std drawn uniformly in [0, max] (default "
                                                   f"{DEFAULTS['max_noise']})")
    p.add_argument("--text-chars", type=int, help=f"training characters (default {DEFAULTS['text_chars']})")
    p.add_argument("--eval-chars", type=int, help="validation and test characters each (default "
                                                  f"{DEFAULTS['eval_chars']})")
    p.add_argument("--chunk", type=int, help=f"text: characters per step (default {DEFAULTS['chunk']})")
    p.add_argument("--embed", type=int, help=f"text: embedding size (default {DEFAULTS['embed']})")
    p.add_argument("--text-file", default=None, help="text: a UTF-8 file split 90/5/5 instead of the plays")
    p.add_argument("--max-frames", type=int, help="chorales: frames kept per chorale (0: all; default "
                                                  f"{DEFAULTS['max_frames']})")
    p.add_argument("--storage", default=None, help="an Optuna storage URL (default sqlite:///<out>/odyssey.db), "
                                                   "or a file path: an Optuna JournalFileBackend log")
    p.add_argument("--workers", type=int, default=1, help="worker processes sharing each study via the storage")
    p.add_argument("--analyse-only", action="store_true", help="only read the studies and write the report")
    p.add_argument("--top-fraction", type=float, default=0.1, help="the best trials compared (Greff: 10%%; at "
                                                                   "least 2 trials, for the t-test)")
    p.add_argument("--fanova-min", type=int, default=10, help="completed trials a study needs for fANOVA")
    p.add_argument("--jozefowicz", action="store_true", help="also LSTM forget bias 0 vs 1 vs GRU")
    p.add_argument("--seeds", type=int, help=f"--jozefowicz: seeds per model (default {DEFAULTS['seeds']})")
    p.add_argument("--joz-lr", type=float, help="--jozefowicz: learning rate")
    p.add_argument("--joz-hidden", type=int, help="--jozefowicz: hidden size")
    p.add_argument("--joz-noise", type=float, help="--jozefowicz: input noise std")
    p.add_argument("--worker-plan", default=None, help=argparse.SUPPRESS)  # internal: a worker process's plan
    add_run_arguments(p, out="results/odyssey")
    args = p.parse_args(argv)
    fill_defaults(args, FULL if args.full else DEFAULTS)
    args.lr = 1e-3  # a placeholder for train_config's checks; each trial sets its own
    args.datasets = [d for d in args.datasets.split(",") if d]
    args.variants = [v for v in args.variants.split(",") if v]
    for flag, names, known in (("--datasets", args.datasets, DATASETS), ("--variants", args.variants,
                                                                         CELL_CONSTRUCTORS)):
        unknown = [n for n in names if n not in known]
        if unknown:
            p.error(f"{flag}: unknown {unknown}; choose from {sorted(known)}")
    if not args.datasets:
        p.error("--datasets must name at least one dataset")
    if args.reference not in CELL_CONSTRUCTORS:
        p.error(f"--reference: unknown {args.reference!r}; choose from {sorted(CELL_CONSTRUCTORS)}")
    try:
        args.lr_range = parse_range(args.lr_range, float)
        args.hidden_range = parse_range(args.hidden_range, int)
    except ValueError as e:
        p.error(str(e))
    positive = ["trials", "steps", "batch", "text_chars", "eval_chars", "chunk", "embed", "workers", "seeds",
                "joz_hidden", "fanova_min"]
    for flag in positive + (["progress"] if args.progress is not None else []):
        if getattr(args, flag) <= 0:
            p.error(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    for flag in ("max_noise", "joz_noise", "max_frames"):
        if getattr(args, flag) < 0:
            p.error(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")
    if not 0 < args.top_fraction <= 1:
        p.error(f"--top-fraction must lie in (0, 1], got {args.top_fraction}")
    if not args.joz_lr > 0:
        p.error(f"--joz-lr must be positive, got {args.joz_lr}")
    args.storage = args.storage or f"sqlite:///{pathlib.Path(args.out).resolve() / 'odyssey.db'}"
    try:
        train_config(args)
        for name in args.variants:
            cell_by_name(name, args.hidden_range[0])
    except (TypeError, ValueError) as e:
        p.error(str(e))
    return args


def parse_range(text, kind) -> tuple:
    """``"lo,hi"`` as two positive numbers with lo <= hi."""
    try:
        lo, hi = (kind(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"a range must be two comma-separated {kind.__name__}s lo,hi, got {text!r}") from None
    if not 0 < lo <= hi:
        raise ValueError(f"a range lo,hi needs 0 < lo <= hi, got {text!r}")
    return lo, hi


# ---------------------------------------------------------------------------- datasets

def _sibling(name: str):
    """Another script of experiments/ (not a package), imported by path."""
    return load_script(pathlib.Path(__file__).with_name(f"{name}.py"))


_DATA: dict = {}


def load_data(name: str, args):
    """The dataset's arrays (read once per process)."""
    if name not in _DATA:
        if name == "chorales":
            from lstm_jax.data import music

            rolls = music.bach_chorales()
            _DATA[name] = {split: music.padded(getattr(rolls, split), max_length=args.max_frames or None)
                           for split in ("train", "valid", "test")}
        else:
            corpus = text_file(args.text_file) if args.text_file else shakespeare()
            char_lm = _sibling("char_lm")
            layouts = {s: char_lm.eval_layout(getattr(corpus, s)[:args.eval_chars],
                                              corpus.document_starts[s][:args.eval_chars], 64, 200, 100)
                       for s in ("valid", "test")}
            n = args.text_chars
            _DATA[name] = dict(vocab=corpus.vocab.size, train=corpus.train[:n],
                               starts=corpus.document_starts["train"][:n], layouts=layouts)
    return _DATA[name]


def train_once(dataset: str, cell_name: str, hp: dict, args, seed: int, **cell_options) -> dict:
    """Trains one model with hyper-parameters ``hp`` (learning_rate, hidden_size, input_noise);
    returns ``{"valid", "test", "seconds"}``. Raises FloatingPointError if training diverges."""
    data = load_data(dataset, args)
    cell = cell_by_name(cell_name, hp["hidden_size"], **cell_options)
    noise = float(hp["input_noise"])
    H = hp["hidden_size"]
    square = cell_name in SQUARE_INPUT
    key = jax.random.key(seed)
    config = train_config(argparse.Namespace(**{**vars(args), "lr": hp["learning_rate"], "seed": seed,
                                                "checkpoint_every": 0}))
    config = type(config)(**{**config.to_dict(), "optimizer": args.optimizer})
    if dataset == "chorales":
        from lstm_jax.data.music import frame_nll

        model = readout(cell, 88, at="every")
        k_model, k_in = jax.random.split(jax.random.fold_in(key, 1))
        if square:  # a linear map from the 88 keys to the H inputs these cells need
            params = (model.init(k_model, H), jax.nn.initializers.lecun_normal()(k_in, (88, H), jnp.float32))
        else:
            params = (model.init(k_model, 88),)

        def nll(params, rolls, lengths, noise_key=None):
            x = rolls.astype(jnp.float32)
            inputs = x[:, :-1]
            if noise_key is not None and noise > 0:
                inputs = inputs + noise * jax.random.normal(noise_key, inputs.shape, inputs.dtype)
            steps = jnp.maximum(lengths.astype(jnp.int32) - 1, 0)
            if square:
                inputs = inputs @ params[1]
            return frame_nll(model.apply(params[0], inputs, lengths=steps), x[:, 1:], steps)

        source = ArrayBatches(data["train"], args.batch, seed=seed)
        loss_fn = lambda params, batch, k: nll(params, *batch, noise_key=k)
        evaluate = jax.jit(lambda params, split: nll(params, *split))
        metric = lambda params, split: float(evaluate(params, tuple(map(jnp.asarray, data[split]))))
        carry = None
    else:
        lm = language_model(cell, data["vocab"], embed_size=H if square else args.embed)
        params = lm.init(jax.random.fold_in(key, 1))

        def loss_fn(params, batch, k, carry):  # lm.stream_loss with Gaussian noise on the embedding
            x = jnp.take(params.embed, batch.inputs, axis=0)
            if noise > 0:
                x = x + noise * jax.random.normal(k, x.shape, x.dtype)
            ys, carry = lm.body.apply(params.body, x, carry, resets=batch.resets)[:2]
            logits = ys @ params.w_out + params.b_out
            logp = jax.nn.log_softmax(logits, axis=-1)
            nats = -jnp.mean(jnp.take_along_axis(logp, batch.targets[..., None], axis=-1))
            return nats, {"bits_per_char": nats / math.log(2)}, carry

        source = StreamBatches(data["train"], args.batch, args.chunk, document_starts=data["starts"])
        carry = lm.init_carry(params, (args.batch,))
        total_nats = jax.jit(char_lm_total_nats(lm))  # one compilation for both splits (same shapes)
        layouts = {s: type(layout)(*map(jnp.asarray, layout)) for s, layout in data["layouts"].items()}
        metric = lambda params, split: float(total_nats(params, layouts[split])) / \
            int(data["layouts"][split].scored.sum()) / math.log(2)
    t0 = time.perf_counter()
    result = fit(loss_fn, params, source, config, carry=carry, progress=False)
    valid, test = metric(result.params, "valid"), metric(result.params, "test")
    if not (math.isfinite(valid) and math.isfinite(test)):
        raise FloatingPointError(f"the evaluated metric is not finite (valid {valid}, test {test})")
    return dict(valid=valid, test=test, seconds=time.perf_counter() - t0)


def char_lm_total_nats(lm):
    """``(params, layout) -> summed nats`` of the scored targets of a char_lm ``EvalLayout``: the
    state handed on chunk after chunk, no noise (experiments/char_lm.py's evaluator)."""
    def total_nats(params, data):
        def one_chunk(carry, chunk):
            logits, carry = lm.apply(params, chunk.inputs, carry, resets=chunk.resets)
            logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
            nll = -jnp.take_along_axis(logp, chunk.targets[..., None], axis=-1)[..., 0]
            return carry, jnp.sum(jnp.where(chunk.scored, nll, jnp.zeros_like(nll)))

        _, sums = jax.lax.scan(one_chunk, lm.init_carry(params, data.inputs.shape[1:2]), data)
        return jnp.sum(sums)

    return total_nats


# ---------------------------------------------------------------------------- studies

def optuna_modules():
    """Optuna, imported on use (the ``study`` extra)."""
    try:
        import optuna
    except ModuleNotFoundError:
        raise ModuleNotFoundError("experiments/odyssey.py needs Optuna: pip install 'lstm_jax[study]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def make_sampler(seed: int):
    """Random search whose draws for trial ``n`` depend only on ``(seed, n)``: resumed studies and
    concurrent workers never repeat a configuration (a shared RandomSampler seed would)."""
    optuna = optuna_modules()
    from optuna.distributions import FloatDistribution, IntDistribution

    class TrialSeededRandomSampler(optuna.samplers.RandomSampler):
        def sample_independent(self, study, trial, name, dist):
            rng = np.random.default_rng([seed, trial.number, zlib.crc32(name.encode())])
            if isinstance(dist, FloatDistribution) and dist.step is None:
                if dist.log:
                    return float(math.exp(rng.uniform(math.log(dist.low), math.log(dist.high))))
                return float(rng.uniform(dist.low, dist.high))
            if isinstance(dist, IntDistribution) and dist.step == 1:  # as Optuna: widen by 0.5, round
                lo, hi = dist.low - 0.5, dist.high + 0.5
                u = math.exp(rng.uniform(math.log(lo), math.log(hi))) if dist.log else rng.uniform(lo, hi)
                return int(min(max(round(u), dist.low), dist.high))
            return super().sample_independent(study, trial, name, dist)

    return TrialSeededRandomSampler(seed)


def make_storage(spec: str):
    """An Optuna storage: a database URL (SQLite waits up to 60 s for a lock), else a journal file."""
    optuna = optuna_modules()
    if "://" not in spec:
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(spec)))
    kwargs = {"connect_args": {"timeout": 60}} if spec.startswith("sqlite") else {}
    if spec.startswith("sqlite:///"):
        pathlib.Path(spec.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(spec, engine_kwargs=kwargs)


def study_name(dataset: str, variant: str) -> str:
    return f"odyssey/{dataset}/{variant}"


def study_settings(dataset: str, variant: str, args) -> dict:
    """What defines a study's trials (compared on resume); ``--trials`` may grow."""
    keys = ["steps", "batch", "optimizer", "lr_range", "hidden_range", "max_noise", "schedule", "warmup_steps",
            "clip", "seed"]
    keys += {"text": ["text_chars", "eval_chars", "chunk", "embed", "text_file"], "chorales": ["max_frames"]}[dataset]
    return json.loads(json.dumps(dict(dataset=dataset, variant=variant, **{k: getattr(args, k) for k in keys})))


def objective(dataset: str, variant: str, args, worker: int):
    optuna = optuna_modules()

    def run(trial):
        hp = dict(learning_rate=trial.suggest_float("learning_rate", *args.lr_range, log=True),
                  hidden_size=trial.suggest_int("hidden_size", *args.hidden_range, log=True),
                  input_noise=trial.suggest_float("input_noise", 0.0, args.max_noise))
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("worker", worker)
        try:
            r = train_once(dataset, variant, hp, args, seed=args.seed * 100_003 + trial.number)
        except FloatingPointError as e:  # diverged: a pruned trial, kept in the record
            trial.set_user_attr("diverged", str(e)[:500])
            print(f"  {dataset} {variant} trial {trial.number}: diverged ({hp})", flush=True)
            raise optuna.TrialPruned(f"diverged: {e}") from None
        trial.set_user_attr("test", r["test"])
        trial.set_user_attr("seconds", r["seconds"])
        print(f"  {dataset} {variant} trial {trial.number}: valid {r['valid']:.4f} test {r['test']:.4f} "
              f"lr {hp['learning_rate']:.2g} H {hp['hidden_size']} noise {hp['input_noise']:.2f} "
              f"[{r['seconds']:.1f} s, pid {os.getpid()}]", flush=True)
        return r["valid"]

    return run


FINISHED = ("COMPLETE", "FAIL", "PRUNED")


def prepare_study(storage, dataset: str, variant: str, args) -> int:
    """Creates or checks the study; returns how many trials are still to run."""
    optuna = optuna_modules()
    name, settings = study_name(dataset, variant), study_settings(dataset, variant, args)
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize", load_if_exists=True)
    trials = study.get_trials(deepcopy=False)
    old = study.user_attrs.get("settings")
    if trials and not args.resume:
        raise ValueError(f"study {name!r} in {args.storage} already holds {len(trials)} trials; pass --resume to "
                         "continue it (or choose another --out / --storage).")
    if old is not None and old != settings:
        diff = ", ".join(f"{k}: {old.get(k)!r} there, {settings.get(k)!r} now" for k in settings
                         if old.get(k) != settings.get(k))
        raise ValueError(f"study {name!r} was run with a different configuration ({diff}).")
    study.set_user_attr("settings", settings)
    for t in trials:  # a killed run's trials stay RUNNING: they are closed as failed
        if t.state == optuna.trial.TrialState.RUNNING:
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            print(f"  {name}: trial {t.number} was left running (a killed run): marked failed", flush=True)
    done = sum(t.state.name in FINISHED for t in study.get_trials(deepcopy=False))
    return max(0, args.trials - done)


def run_plan(plan: dict, args, worker: int) -> None:
    """Runs ``plan[name]`` more trials of each study (in this process)."""
    optuna = optuna_modules()
    storage = make_storage(args.storage)
    states = tuple(getattr(optuna.trial.TrialState, s) for s in FINISHED + ("RUNNING",))
    for name, count in plan.items():
        if count <= 0:
            continue
        _, dataset, variant = name.split("/")
        study = optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(args.seed))
        study.optimize(objective(dataset, variant, args, worker), n_trials=count, catch=(),
                       callbacks=[optuna.study.MaxTrialsCallback(args.trials, states=states)])


def run_studies(args, argv) -> None:
    """Every (dataset, variant) study topped up to ``--trials`` trials, by ``--workers`` processes."""
    storage = make_storage(args.storage)
    remaining = {study_name(d, v): prepare_study(storage, d, v, args) for d in args.datasets for v in args.variants}
    total = sum(remaining.values())
    print(f"{total} trials to run over {len(remaining)} studies in {args.storage}", flush=True)
    if total == 0:
        return
    if args.workers == 1:
        run_plan(remaining, args, worker=0)
        return
    # Each worker takes an exact share of every study's missing trials: N in all, never W x N.
    plans = [{name: n // args.workers + (w < n % args.workers) for name, n in remaining.items()}
             for w in range(args.workers)]
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    argv = list(sys.argv[1:] if argv is None else argv)
    procs = []
    for w, plan in enumerate(plans):
        path = out / f"worker{w}.json"
        write_json(path, dict(worker=w, plan=plan))
        procs.append(subprocess.Popen([sys.executable, str(pathlib.Path(__file__).resolve()), *argv, "--resume",
                                       "--storage", args.storage, "--worker-plan", str(path)]))
    codes = [p.wait() for p in procs]
    if any(codes):
        raise RuntimeError(f"worker processes failed with exit codes {codes}")


def worker_main(args) -> None:
    spec = json.loads(pathlib.Path(args.worker_plan).read_text())
    run_plan(spec["plan"], args, worker=spec["worker"])


# ---------------------------------------------------------------------------- analysis

def top_trials(values, tests, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The best ``max(2, ceil(fraction * n))`` trials by validation value (at most n): their
    indices (best first) and test metrics (Greff et al.: test errors of the best 10% by validation)."""
    values = np.asarray(values, np.float64)
    n = len(values)
    k = min(n, max(2, math.ceil(fraction * n - 1e-9)))
    order = np.argsort(values, kind="stable")[:k]
    return order, np.asarray(tests, np.float64)[order]


def welch(a, b) -> dict | None:
    """Welch's t-test (unequal variances) of samples ``a`` against ``b``; None with fewer than 2 each."""
    from scipy import stats

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        return None
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # identical samples: t is NaN, reported as such
        t, p = stats.ttest_ind(a, b, equal_var=False)
    t, p = float(t), float(p)
    return dict(t=t if math.isfinite(t) else None, p=p if math.isfinite(p) else None)


def importances(study, args) -> tuple[dict | None, str | None]:
    """fANOVA importances of the hyper-parameters, or None and why not."""
    optuna = optuna_modules()
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < args.fanova_min:
        return None, f"{len(complete)} completed trials < --fanova-min {args.fanova_min}"
    try:
        found = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=args.seed))
    except (RuntimeError, ValueError) as e:  # e.g. a search space of one point
        return None, f"fANOVA failed: {e}"
    return {k: float(v) for k, v in found.items()}, None


def analyse(args) -> dict:
    """Per dataset and variant: the trials, best, median, the best trials' test metrics, Welch's
    t-test against ``--reference`` and fANOVA importances."""
    optuna = optuna_modules()
    storage = make_storage(args.storage)
    existing = set(optuna.get_all_study_names(storage))
    out = {}
    for dataset in args.datasets:
        rows = {}
        for variant in args.variants:
            name = study_name(dataset, variant)
            if name not in existing:
                rows[variant] = dict(variant=variant, note="no study")
                continue
            study = optuna.load_study(study_name=name, storage=storage)
            trials = study.get_trials(deepcopy=False)
            done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
            row = dict(variant=variant, trials=len(trials), complete=len(done),
                       diverged=sum("diverged" in t.user_attrs for t in trials),
                       failed=sum(t.state == optuna.trial.TrialState.FAIL for t in trials))
            if done:
                values = [t.value for t in done]
                tests = [t.user_attrs["test"] for t in done]
                order, top = top_trials(values, tests, args.top_fraction)
                best = done[int(order[0])]
                row.update(best_valid=best.value, best_test=best.user_attrs["test"], best_params=best.params,
                           best_trial=best.number, median_test=float(np.median(tests)),
                           top_trials=[done[int(i)].number for i in order], top_test=top.tolist(),
                           top_mean=float(np.mean(top)))
            row["importances"], row["importance_note"] = importances(study, args) if done else (None, "no trials")
            rows[variant] = row
        ref = rows.get(args.reference, {})
        for variant, row in rows.items():
            if "top_test" in row and variant != args.reference:
                row["welch_vs_reference"] = welch(row["top_test"], ref.get("top_test", []))
        out[dataset] = dict(metric=METRICS[dataset], reference=args.reference, variants=list(rows.values()))
    return out


def plot(analysis: dict, path: pathlib.Path, reference: str) -> None:
    """Greff et al.'s Fig. 3: box plots of the best trials' test metric per variant, per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(analysis)
    width = max(5.0, 0.45 * max(len(a["variants"]) for a in analysis.values()) + 1.5)
    fig, axes = plt.subplots(1, n, figsize=(width * n, 4.4), squeeze=False)
    for ax, (dataset, a) in zip(axes.flat, analysis.items()):
        rows = [r for r in a["variants"] if r.get("top_test")]
        if not rows:
            ax.text(0.5, 0.5, "no completed trials", ha="center", va="center", transform=ax.transAxes)
        else:
            bp = ax.boxplot([r["top_test"] for r in rows], patch_artist=True)
            ax.set_xticks(range(1, len(rows) + 1), [r["variant"].removeprefix("lstm_") for r in rows], rotation=60)
            for patch, r in zip(bp["boxes"], rows):
                p = (r.get("welch_vs_reference") or {}).get("p")
                significant = p is not None and p < 0.05
                patch.set_facecolor("tab:orange" if r["variant"] == reference else
                                    "tab:red" if significant else "tab:blue")
                patch.set_alpha(0.6)
        ax.set_title(f"{dataset}: best trials (orange: {reference}; red: p < 0.05)", fontsize=9)
        ax.set_ylabel(f"test {a['metric']}")
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- Jozefowicz

def jozefowicz(args) -> list[dict]:
    """LSTM with forget-gate bias 0 and 1 and the GRU at fixed hyper-parameters, ``--seeds`` seeds each;
    every run is saved under ``<out>/jozefowicz/`` and reused with ``--resume``."""
    hp = dict(learning_rate=args.joz_lr, hidden_size=args.joz_hidden, input_noise=args.joz_noise)
    folder = pathlib.Path(args.out) / "jozefowicz"
    rows = []
    for dataset in args.datasets:
        for model in JOZEFOWICZ_MODELS:
            cell, options = ("gru", {}) if model == "gru" else ("lstm", {"forget_bias": float(model[-1])})
            runs = []
            for s in range(args.seeds):
                path = folder / f"{dataset}_{model}_seed{s}.json"
                settings = dict(hp, **study_settings(dataset, model, args), run_seed=s)
                if args.resume and path.exists() and json.loads(path.read_text())["settings"] == settings:
                    runs.append(json.loads(path.read_text())["result"])
                    continue
                try:
                    r = train_once(dataset, cell, hp, args, seed=10_000 + s, **options)
                except FloatingPointError as e:
                    r = dict(valid=None, test=None, seconds=None, diverged=str(e)[:300])
                write_json(path, dict(settings=settings, result=r))
                runs.append(r)
            tests = [r["test"] for r in runs if r["test"] is not None]
            rows.append(dict(dataset=dataset, model=model, seeds=args.seeds, diverged=args.seeds - len(tests),
                             test_mean=float(np.mean(tests)) if tests else None,
                             test_std=float(np.std(tests, ddof=1)) if len(tests) > 1 else None, tests=tests))
            print(f"jozefowicz {dataset} {model}: test {rows[-1]['test_mean']} over {len(tests)} seeds", flush=True)
    return rows


# ---------------------------------------------------------------------------- report

def fmt(x, digits=4):
    return "-" if x is None else f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def report(analysis: dict, joz: list[dict], args) -> str:
    lines = []
    for dataset, a in analysis.items():
        lines.append(f"## {dataset}: test {a['metric']}\n")
        rows = []
        for r in a["variants"]:
            w = r.get("welch_vs_reference")
            imp = r.get("importances")
            rows.append(dict(variant=r["variant"], trials=r.get("trials", 0), diverged=r.get("diverged", 0),
                             best_valid=fmt(r.get("best_valid")), best_test=fmt(r.get("best_test")),
                             median_test=fmt(r.get("median_test")),
                             top=f"{fmt(r.get('top_mean'))} (n={len(r.get('top_test', []))})",
                             p="ref" if r["variant"] == a["reference"] else fmt((w or {}).get("p"), 3),
                             importance=", ".join(f"{k} {v:.2f}" for k, v in imp.items()) if imp else
                             (r.get("importance_note") or r.get("note") or "-")))
        lines.append(markdown_table(rows, {"variant": "variant", "trials": "trials", "diverged": "diverged",
                                           "best_valid": "best valid", "best_test": "test of best",
                                           "median_test": "median test", "top": "best trials' mean test",
                                           "p": f"Welch p vs {a['reference']}", "importance": "fANOVA"}))
    if joz:
        lines.append(f"## Jozefowicz et al.: forget-gate bias (lr {args.joz_lr}, H {args.joz_hidden}, noise "
                     f"{args.joz_noise}, {args.seeds} seeds)\n")
        lines.append(markdown_table([dict(r, test_mean=fmt(r["test_mean"]), test_std=fmt(r["test_std"]))
                                     for r in joz],
                                    {"dataset": "dataset", "model": "model", "seeds": "seeds",
                                     "diverged": "diverged", "test_mean": "test mean", "test_std": "test std"}))
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.worker_plan:
        return worker_main(args)
    out = pathlib.Path(args.out)
    t0 = time.perf_counter()
    print(f"devices: {jax.devices()}; datasets {args.datasets}, {len(args.variants)} variants x {args.trials} "
          f"trials, {args.steps} steps, {args.workers} worker(s); storage {args.storage}", flush=True)
    if not args.analyse_only and args.variants:
        run_studies(args, argv)
    joz = []
    if args.jozefowicz:
        joz = jozefowicz(args) if not args.analyse_only else \
            [r for r in json.loads((out / "results.json").read_text()).get("jozefowicz", [])] \
            if (out / "results.json").exists() else []
    analysis = analyse(args) if args.variants else {}
    text = report(analysis, joz, args)
    print("\n" + text)
    meta = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                command=" ".join([pathlib.Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
                jax=jax.__version__, devices=[str(d) for d in jax.devices()], machine=platform.machine(),
                seconds=time.perf_counter() - t0, args=vars(args))
    write_json(out / "results.json", dict(meta=meta, studies=analysis, jozefowicz=joz))
    write_text(out / "results.md", text)
    if analysis:
        plot(analysis, out / "results.png", args.reference)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}" + (f", {out / 'results.png'}" if analysis else ""))
    return dict(studies=analysis, jozefowicz=joz)


if __name__ == "__main__":
    main()
