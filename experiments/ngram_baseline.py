"""The n-gram yardstick for the character language models: interpolated Kneser-Ney.

A character n-gram model with modified Kneser-Ney smoothing (Chen & Goodman 1998, the
interpolated form), counted on the training split of the same corpus the LSTMs train on and
scored on the same validation and test characters, in bits per character. Karpathy, Johnson
& Fei-Fei 2015 ("Visualizing and understanding recurrent networks") measured their LSTMs
against such n-grams.

    python experiments/ngram_baseline.py                       # orders 1-7 on the Shakespeare plays (~1 min)
    python experiments/ngram_baseline.py --orders 3,5 --text-file input.txt

The model of order ``n`` predicts ``w`` from the ``n - 1`` characters before it, ``h``; ``h'``
is ``h`` without its first character. With adjusted counts ``a(hw)``:

    P_n(w | h) = (a(hw) - D(a(hw))) / A(h)  +  gamma(h) * P_{n-1}(w | h'),
    A(h) = sum_w a(hw),    gamma(h) = sum_w D(a(hw)) / A(h),

and ``P_n(w | h) = P_{n-1}(w | h')`` for a context never seen (``A(h) = 0``). At the highest
order ``a`` is the raw count ``c(hw)``; at every lower order it is the continuation count
``N1+(. hw)``, the number of distinct characters seen before ``hw``; below order 1 is the
uniform distribution over the closed vocabulary (the corpus's characters), so every
character has a probability > 0. ``D(0) = 0``, ``D(1) = D1``, ``D(2) = D2``, ``D(a >= 3) =
D3+``, estimated per order and per kind of count from its counts of counts ``n_r`` (the
number of n-grams seen exactly ``r`` times): ``Y = n1 / (n1 + 2 n2)``, ``D_r = r - (r + 1) Y
n_{r+1} / n_r``. A single ``discount`` instead gives plain interpolated Kneser-Ney (one ``D``
everywhere; the tests compute it by hand). Each distribution sums to 1 over the vocabulary.

Documents (plays) are counted separately and no context reaches back past the start of the
document its last character belongs to, as the LSTMs' state is reset there; so the
characters right after a document start are predicted by the lower orders, the highest of
them with raw counts. The splits are scored on exactly the targets the LSTMs are scored on:
every character but the first of each split.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import pathlib
import platform
import sys
import time
from typing import Sequence

import numpy as np

from lstm_jax.data import Corpus, shakespeare, text_file
from lstm_jax.train import markdown_table, write_json, write_text


@dataclasses.dataclass(frozen=True)
class Table:
    """The adjusted counts of one order and kind (raw or continuation), sorted for look-ups.

    An n-gram ``x_0 .. x_{k-1}`` is the integer ``sum_j x_j V^(k-1-j)`` (the last character
    in the lowest digit), so its context is ``code // V`` and the n-grams of one context are
    contiguous in sorted order.
    """

    grams: np.ndarray  # int64 [G], sorted: the n-grams with a(hw) > 0
    counts: np.ndarray  # int64 [G]: a(hw)
    contexts: np.ndarray  # int64 [C], sorted: the contexts h among them
    totals: np.ndarray  # int64 [C]: A(h)
    discounted: np.ndarray  # float64 [C]: sum_w D(a(hw)), the mass handed to the lower order
    discounts: np.ndarray  # float64 [4]: D(0) = 0, D1, D2, D3+


def _discounts(counts: np.ndarray, discount: float | None) -> np.ndarray:
    """``[0, D1, D2, D3+]``: Chen & Goodman's estimates, or one given ``discount``."""
    if discount is not None:
        return np.array([0.0, discount, discount, discount])
    n = [np.count_nonzero(counts == r) for r in range(1, 5)]
    if min(n) == 0:  # a text too small for the estimate
        return np.array([0.0, 0.5, 0.5, 0.5])
    y = n[0] / (n[0] + 2 * n[1])
    return np.array([0.0] + [np.clip(r - (r + 1) * y * n[r] / n[r - 1], 0.05, r) for r in (1, 2, 3)])


def _table(grams: np.ndarray, counts: np.ndarray, vocab_size: int, discount: float | None) -> Table:
    discounts = _discounts(counts, discount)
    contexts, starts = np.unique(grams // vocab_size, return_index=True)
    if len(grams):
        totals = np.add.reduceat(counts, starts)
        discounted = np.add.reduceat(discounts[np.minimum(counts, 3)], starts)
    else:
        totals, discounted = np.zeros(0, np.int64), np.zeros(0)
    return Table(grams, counts, contexts, totals, discounted, discounts)


def _codes(document: np.ndarray, k: int, vocab_size: int) -> np.ndarray:
    """The codes of the ``len - k + 1`` k-grams of one document."""
    n = len(document) - k + 1
    codes = np.zeros(max(n, 0), np.int64)
    for j in range(k):
        codes = codes * vocab_size + document[j:j + n]
    return codes


@dataclasses.dataclass(frozen=True)
class KneserNey:
    """Counts for interpolated (modified) Kneser-Ney models of every order up to ``max_order``."""

    max_order: int
    vocab_size: int
    raw: tuple[Table, ...]  # raw[k - 1]: raw counts c(hw) of order k
    continuation: tuple[Table, ...]  # continuation[k - 1]: N1+(. hw) of order k (k < max_order)

    @classmethod
    def fit(cls, documents: Sequence[np.ndarray], max_order: int, vocab_size: int, *,
            discount: float | None = None) -> KneserNey:
        """Counts the n-grams of ``documents`` (int id arrays; no n-gram crosses two of them).

        Args:
          documents: the training text, one int array of ids in ``[0, vocab_size)`` per document.
          max_order: the longest n-gram counted; models of every order up to it can be scored.
          vocab_size: ``V``, the closed vocabulary; ``V ** max_order`` must fit in int64.
          discount: None: modified Kneser-Ney's estimated discounts; a number in ``(0, 1]``:
            that one discount everywhere (plain interpolated Kneser-Ney).
        """
        if not 1 <= max_order or vocab_size ** max_order >= 2 ** 63:
            raise ValueError(f"`max_order` must be >= 1 with vocab_size ** max_order < 2 ** 63, got {max_order} "
                             f"(vocab_size {vocab_size}).")
        if discount is not None and not 0 < discount <= 1:
            raise ValueError(f"`discount` must lie in (0, 1], got {discount}.")
        documents = [np.asarray(d, np.int64) for d in documents]
        raw, continuation = [], []
        for k in range(1, max_order + 1):
            grams, counts = np.unique(np.concatenate([_codes(d, k, vocab_size) for d in documents]),
                                      return_counts=True)
            raw.append(_table(grams, counts, vocab_size, discount))
            if k > 1:  # the distinct k-grams' suffixes: the (k-1)-grams' continuation counts
                suffixes, counts = np.unique(grams % vocab_size ** (k - 1), return_counts=True)
                continuation.append(_table(suffixes, counts, vocab_size, discount))
        return cls(max_order, vocab_size, tuple(raw), tuple(continuation))

    def _check_order(self, order: int) -> int:
        if not 1 <= order <= self.max_order:
            raise ValueError(f"`order` must lie in [1, {self.max_order}] (the orders counted), got {order}.")
        return order

    def probabilities(self, history: np.ndarray, available: np.ndarray, targets: np.ndarray,
                      order: int) -> np.ndarray:
        """``P(target | context)`` for a batch of queries, float64 ``[N]``.

        Args:
          history: int ``[N, order - 1]``: the characters before each target, the last one
            nearest; only the last ``available`` of each row are read.
          available: int ``[N]``: how many characters of context each query has (the highest
            order used is ``min(order, available + 1)``).
          targets: int ``[N]``.
          order: the model's order ``n``.
        """
        order = self._check_order(order)
        V = self.vocab_size
        top = np.minimum(order, np.asarray(available) + 1)
        targets = np.asarray(targets, np.int64)
        history = np.asarray(history, np.int64).reshape(len(targets), order - 1)
        result = np.zeros(len(targets))
        lower = np.full(len(targets), 1.0 / V)  # P_{k-1}(w | h') with continuation counts
        context = np.zeros(len(targets), np.int64)  # the code of the last k - 1 characters
        for k in range(1, order + 1):
            if k > 1:
                context = context + history[:, order - k] * V ** (k - 2)
            here = top == k  # queries whose highest order is k: raw counts
            result[here] = _interpolate(self.raw[k - 1], context[here], targets[here], lower[here], V)
            if k < order:
                lower = _interpolate(self.continuation[k - 1], context, targets, lower, V)
        return result

    def distribution(self, context: Sequence[int], order: int) -> np.ndarray:
        """``P(. | context)`` over the vocabulary, float64 ``[V]`` (``context``: the ids before)."""
        order = self._check_order(order)
        V = self.vocab_size
        context = np.asarray(context, np.int64)[len(context) - (order - 1):] if order > 1 else np.zeros(0, np.int64)
        history = np.zeros(order - 1, np.int64)
        history[order - 1 - len(context):] = context
        return self.probabilities(np.tile(history, (V, 1)), np.full(V, len(context)), np.arange(V), order)

    def log2_probabilities(self, tokens: np.ndarray, document_starts: np.ndarray, order: int) -> np.ndarray:
        """``log2 P(tokens[i] | before)`` for ``i = 1 .. N - 1``, float64 ``[N - 1]``: the context
        of ``tokens[i]`` reaches back at most to the start of the document of ``tokens[i - 1]``."""
        order = self._check_order(order)
        tokens = np.asarray(tokens, np.int64)
        N = len(tokens)
        padded = np.concatenate([np.zeros(order - 1, np.int64), tokens])
        # history[i - 1, j] = tokens[i - (order - 1) + j]: the order - 1 characters before tokens[i]
        history = np.stack([padded[j:j + N - 1] for j in range(1, order)], axis=1) if order > 1 else None
        index = np.arange(N)
        start = np.maximum.accumulate(np.where(document_starts, index, 0))  # each token's document start
        available = np.arange(1, N) - start[:-1]
        history = np.zeros((N - 1, 0), np.int64) if history is None else history
        return np.log2(self.probabilities(history, available, tokens[1:], order))


def _interpolate(table: Table, context: np.ndarray, targets: np.ndarray, lower: np.ndarray, V: int) -> np.ndarray:
    """One order of the recursion: ``(a - D(a) + sum_w D(a(hw)) * lower) / A(h)``, or ``lower``
    where ``h`` was never seen."""
    def find(sorted_codes, codes):
        if not len(sorted_codes):
            return np.zeros(len(codes), np.int64), np.zeros(len(codes), bool)
        i = np.minimum(np.searchsorted(sorted_codes, codes), len(sorted_codes) - 1)
        return i, sorted_codes[i] == codes

    i, known = find(table.grams, context * V + targets)
    a = np.where(known, table.counts[i], 0)
    j, seen = find(table.contexts, context)
    if not seen.any():
        return lower
    total = np.where(seen, table.totals[j], 1)
    smoothed = (a - table.discounts[np.minimum(a, 3)] + table.discounted[j] * lower) / total
    return np.where(seen, smoothed, lower)


def documents_of(tokens: np.ndarray, document_starts: np.ndarray) -> list[np.ndarray]:
    """A split's ids cut at its document starts."""
    cuts = np.flatnonzero(document_starts)
    return [d for d in np.split(np.asarray(tokens), cuts[cuts > 0]) if len(d)]


def evaluate(corpus: Corpus, orders: Sequence[int]) -> list[dict]:
    """Bits per character of the models of ``orders`` on the validation and test splits: one
    row per order, ``{"model", "order", "valid_bpc", "test_bpc", "seconds"}``."""
    t0 = time.perf_counter()
    model = KneserNey.fit(documents_of(corpus.train, corpus.document_starts["train"]), max(orders),
                          corpus.vocab.size)
    counted = time.perf_counter() - t0
    rows = []
    for order in orders:
        t0 = time.perf_counter()
        bpc = {split: float(-np.mean(model.log2_probabilities(getattr(corpus, split), corpus.document_starts[split],
                                                              order)))
               for split in ("valid", "test")}
        rows.append(dict(model=f"{order}-gram KN", order=order, valid_bpc=bpc["valid"], test_bpc=bpc["test"],
                         seconds=counted + time.perf_counter() - t0))
    return rows


COLUMNS = {"model": "model", "valid_bpc": "valid bpc", "test_bpc": "test bpc", "seconds": "seconds"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--orders", default="1,2,3,4,5,6,7", help="comma-separated n-gram orders (default 1-7)")
    p.add_argument("--text-file", default=None, help="a UTF-8 text file split 90/5/5 (default: the Shakespeare plays)")
    p.add_argument("--out", default="results/ngram_baseline", help="output directory")
    args = p.parse_args(argv)
    try:
        args.orders = [int(n) for n in args.orders.split(",")]
    except ValueError:
        p.error(f"--orders must be comma-separated integers, got {args.orders!r}")
    if any(n < 1 or n > 10 for n in args.orders):
        p.error(f"--orders must lie in [1, 10], got {args.orders}")
    return args


def main(argv=None):
    args = parse_args(argv)
    corpus = text_file(args.text_file) if args.text_file else shakespeare()
    print(corpus, flush=True)
    rows = evaluate(corpus, args.orders)
    table = markdown_table(rows, COLUMNS)
    print(table)
    out = pathlib.Path(args.out)
    meta = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                command=" ".join([pathlib.Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
                corpus=repr(corpus), machine=platform.machine())
    write_json(out / "results.json", dict(meta=meta, results=rows))
    write_text(out / "results.md", table)
    return rows


if __name__ == "__main__":
    main()
