"""The PyTorch yardstick: char_lm.py's language model, trained in PyTorch from the same start.

``nn.Embedding`` + ``nn.LSTM`` (or ``nn.GRU``, ``nn.RNN``) + dropout + ``nn.Linear``, built
from the JAX model's initial parameters (the recurrent stack converted with
``lstm_jax.interop.torch.to_torch``), trained on the same ``StreamBatches`` in the same order
with the state handed on from step to step (detached) and restarted where the batch's
``resets`` say, with ``torch.optim.Adam`` under the same learning-rate schedule
(``lstm_jax.train.learning_rate_schedule``, step by step) and ``clip_grad_norm_`` at the same
bound, and evaluated on the same layout of the validation and test splits. Where a chunk holds
a reset (an epoch's or a play's start), it is run in pieces, the reset rows' state zeroed
between them: ``nn.LSTM`` has no per-row reset.

    python experiments/torch_char_lm.py                    # char_lm.py --models torch_lstm (all its flags apply)
    python experiments/char_lm.py --models lstm,torch_lstm  # ours and PyTorch's, compared in one report

This module is the only one of the experiments that imports torch; char_lm.py imports it for
the ``torch_<cell>`` models.
"""

from __future__ import annotations

import json
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from lstm_jax.interop.torch import to_torch
from lstm_jax.train import TrainConfig, learning_rate_schedule, write_json
from lstm_jax.train.progress import Progress


class CharLM(torch.nn.Module):
    """``logits = Linear(Dropout(RNN(Embedding(inputs))))``, with the weights of a JAX language model."""

    def __init__(self, lm, params):
        super().__init__()
        embed = torch.from_numpy(np.array(params.embed))
        self.embed = torch.nn.Embedding.from_pretrained(embed, freeze=False)
        self.rnn = to_torch(lm.body, params.body)  # batch-first, dropout between layers as the stack's
        # PyTorch adds two biases where lstm_jax has one (b = b_ih + b_hh; to_torch puts it all in
        # b_ih). Trained, both would move, each by Adam's step: the redundant part of b_hh gets no
        # gradient, so that both models have the same parameters (b_hh's n block is the GRU's b_hn).
        for name, bias in self.rnn.named_parameters():
            if name.startswith("bias_hh"):
                redundant = torch.ones_like(bias)
                if isinstance(self.rnn, torch.nn.GRU):
                    redundant[2 * self.rnn.hidden_size:] = 0
                bias.register_hook(lambda grad, redundant=redundant: grad * (1 - redundant))
        self.dropout = torch.nn.Dropout(lm.config.dropout_rate)
        O, V = params.w_out.shape
        self.out = torch.nn.Linear(O, V, dtype=embed.dtype)
        with torch.no_grad():
            self.out.weight.copy_(torch.from_numpy(np.array(params.w_out.T)))
            self.out.bias.copy_(torch.from_numpy(np.array(params.b_out)))

    def initial_state(self, batch: int) -> tuple:
        """Zeros: ``(h, c)`` for an LSTM, ``(h,)`` otherwise, each ``[layers, batch, H]``."""
        rnn = self.rnn
        h = torch.zeros(rnn.num_layers, batch, rnn.hidden_size, dtype=self.out.weight.dtype,
                        device=self.out.weight.device)
        return (h, torch.zeros_like(h)) if isinstance(rnn, torch.nn.LSTM) else (h,)

    def forward(self, inputs, state: tuple, resets):
        """``inputs`` int ``[B, L]``, ``resets`` bool ``[B, L]`` (NumPy): ``(logits [B, L, V], state)``."""
        xs = self.embed(inputs)
        L = xs.shape[1]
        cuts = sorted({0, *np.flatnonzero(resets.any(axis=0)).tolist()}) + [L]
        outputs = []
        for start, end in zip(cuts[:-1], cuts[1:]):
            keep = torch.from_numpy(~resets[:, start]).to(xs)[None, :, None]  # [1, B, 1]
            state = tuple(s * keep for s in state)
            ys, state = self.rnn(xs[:, start:end], state if len(state) == 2 else state[0])
            state = state if isinstance(state, tuple) else (state,)
            outputs.append(ys)
        return self.out(self.dropout(torch.cat(outputs, dim=1))), state


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def bits_per_character(model: CharLM, layout) -> float:
    """``layout`` (char_lm.EvalLayout, ``[C, B, L]``) read chunk after chunk, the state handed on."""
    was_training = model.training
    model.eval()
    device = model.out.weight.device
    state = model.initial_state(layout.inputs.shape[1])
    total = 0.0
    for inputs, targets, scored, resets in zip(*layout):
        logits, state = model(torch.from_numpy(inputs).long().to(device), state, resets)
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(targets).long().to(device)
                              .reshape(-1), reduction="none")
        total += float((nll * torch.from_numpy(scored).reshape(-1).to(nll)).sum())
    model.train(was_training)
    return total / int(layout.scored.sum()) / math.log(2)


def train(lm, params, source, config: TrainConfig, evals: dict, *, eval_every: int, progress=None,
          description: str = "torch") -> dict:
    """Trains ``CharLM(lm, params)`` as ``fit`` trains ``lm``: same batches, optimiser, schedule, clipping.

    Returns:
      ``{"curve": [(step, valid bpc)], "bpc": {split: bpc}, "losses": [per-step training loss],
      "train_seconds": seconds of training, evaluations excluded}``; the curve starts at step
      0 and has a point every ``eval_every`` steps and at the end.
    """
    torch.manual_seed(config.seed)  # dropout masks (PyTorch's own: they cannot equal JAX's)
    device = _device()
    model = CharLM(lm, params).to(device)
    model.train()
    with jax.numpy_dtype_promotion("standard"):  # optax's schedules mix ints and floats
        rates = np.asarray(jax.vmap(learning_rate_schedule(config))(jnp.arange(config.steps)), np.float64)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(rates[0]))
    curve = [(0, bits_per_character(model, evals["valid"]))]
    state = model.initial_state(source.batch_size)
    losses, eval_seconds, t0 = [], 0.0, time.perf_counter()
    shown = Progress(progress, total=config.steps, start=0, every=config.log_every, description=description)
    try:
        for step in range(config.steps):
            batch = source[step]
            logits, state = model(torch.from_numpy(batch.inputs).long().to(device), state, batch.resets)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                   torch.from_numpy(batch.targets).long().to(device).reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            if config.clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
            for group in optimizer.param_groups:
                group["lr"] = float(rates[step])
            optimizer.step()
            state = tuple(s.detach() for s in state)
            losses.append(loss.item())
            done = step + 1
            shown.update(done, losses[-config.log_every:] if shown.wants_line(done) else ())
            if eval_every and done % eval_every == 0 or done == config.steps:
                start = time.perf_counter()
                curve.append((done, bits_per_character(model, evals["valid"])))
                eval_seconds += time.perf_counter() - start
    finally:
        shown.close()
    train_seconds = time.perf_counter() - t0 - eval_seconds
    bpc = {"valid": curve[-1][1], **{split: bits_per_character(model, evals[split]) for split in ("train", "test")}}
    return dict(curve=curve, bpc=bpc, losses=losses, train_seconds=train_seconds)


def finished_run(workdir: pathlib.Path, run: dict, resume: bool) -> dict | None:
    """A finished run's result saved in ``workdir`` (with ``resume`` and the same configuration),
    else None; a run found without ``resume``, or with another configuration, is refused. An
    unfinished run is not resumed: it starts again (no checkpoints)."""
    path = workdir / "result.json"
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    if not resume:
        raise ValueError(f"{str(workdir)!r} already holds a run; pass --resume to reuse it, or choose another --out.")
    differ = [f"{k}: {saved['run'].get(k)!r} there, {v!r} now" for k, v in run.items() if saved["run"].get(k) != v]
    if differ:
        raise ValueError(f"{str(workdir)!r} holds a run with a different configuration ({'; '.join(differ)}).")
    return saved["result"]


def save_run(workdir: pathlib.Path, run: dict, result: dict) -> None:
    write_json(workdir / "result.json", dict(run=run, result=result))


if __name__ == "__main__":
    import sys

    import char_lm  # run as a script, this directory is on sys.path

    char_lm.main(["--models", "torch_lstm", *sys.argv[1:]])
