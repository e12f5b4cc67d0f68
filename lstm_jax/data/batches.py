"""Host-side batch sources, random-access by training step.

A *batch source* is what :func:`lstm_jax.train.fit` reads host data from (the
:class:`BatchSource` protocol):

* ``source[step]`` is the **global** batch for training step ``step >= 0``: a pytree (a
  NamedTuple) of NumPy arrays with the batch on the leading axis;
* ``source.steps_per_epoch`` is the number of steps in one pass over the data; epochs wrap
  around: step ``s`` is batch ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``;
* ``source.batch_size`` is the leading size.

The data position is a pure function of the step, so a run resumed at step ``k`` reads
exactly the batches it would have read, with no iterator state to checkpoint. A source is
not iterable (``source[step]`` never runs out); ``source.epoch(e)`` iterates over one epoch.

Two sources:

* :class:`ArrayBatches`: examples along the leading axis of arrays already in memory,
  reshuffled each epoch from ``(seed, epoch)``.
* :class:`StreamBatches`: one long token sequence cut into contiguous streams for truncated
  backpropagation through time (Zaremba et al. 2014), row ``b`` of step ``k + 1``
  continuing row ``b`` of step ``k``.
"""

from __future__ import annotations

from typing import Any, Iterator, NamedTuple, Protocol, runtime_checkable

import jax
import numpy as np

from lstm_jax import _checks


@runtime_checkable
class BatchSource(Protocol):
    """What :func:`lstm_jax.train.fit` reads host data from (see the module docstring)."""

    batch_size: int
    steps_per_epoch: int

    def __getitem__(self, step: int) -> Any: ...


def _step(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int, got {value!r}.")
    if value < 0:
        raise ValueError(f"`{name}` must be >= 0, got {value}.")
    return int(value)


class _Source:
    """What both sources share: step -> (epoch, batch in epoch), one epoch's iteration."""

    batch_size: int
    steps_per_epoch: int

    def position(self, step: int) -> tuple[int, int]:
        """``(epoch, k)``: step ``step`` reads batch ``k`` of epoch ``epoch``."""
        return divmod(_step("step", step), self.steps_per_epoch)

    def epoch(self, epoch: int) -> Iterator:
        """The batches of epoch ``epoch`` in order, ``steps_per_epoch`` of them."""
        start = _step("epoch", epoch) * self.steps_per_epoch
        return (self[start + k] for k in range(self.steps_per_epoch))

    def __iter__(self):
        raise TypeError(f"A {type(self).__name__} is read by step, `source[step]`, for any step >= 0; "
                        "iterate over one epoch with `source.epoch(e)`.")


# ------------------------------------------------------------------------ ArrayBatches

class ArrayBatches(_Source):
    """Batches of examples held in memory, shuffled afresh each epoch.

    The examples are the leading axis of every leaf of ``arrays`` (e.g.
    ``Batch(xs [N, T, I], targets [N], lengths [N])``). Epoch ``e`` visits them in the order
    ``perm = np.random.default_rng([seed, e]).permutation(N)`` (NumPy's ``Generator``
    seeded with the pair: the same order on every machine with one NumPy version), and
    step ``k`` of the epoch is the rows ``perm[k*B:(k+1)*B]``; ``shuffle=False`` keeps the
    order ``0 .. N-1``. Each epoch's permutation is computed once and kept while the steps
    stay in that epoch.

    Args:
      arrays: a pytree of arrays (NumPy or JAX; read once into NumPy), all with the same
        leading size ``N``.
      batch_size: ``B``, at most ``N``.
      shuffle: reshuffle each epoch (else the stored order).
      seed: a non-negative int; with ``shuffle``, it and the epoch fix the order.
      drop_remainder: True: ``steps_per_epoch = N // B`` and every batch has ``B`` rows
        (the ``N % B`` examples left over in an epoch are skipped in that epoch, other ones
        in the next, as the order changes); what :func:`lstm_jax.train.fit` needs. False:
        ``ceil(N / B)`` steps, the last one holding the ``N % B`` rows left: for evaluation
        passes that must see every example exactly once.

    Returns (``source[step]``):
      The pytree of ``arrays`` with each leaf's rows of that batch, ``[B, ...]``.
    """

    def __init__(self, arrays: Any, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 drop_remainder: bool = True):
        leaves, self._treedef = jax.tree_util.tree_flatten(arrays)
        if not leaves:
            raise ValueError("`arrays` must hold at least one array.")
        self._leaves = [np.asarray(leaf) for leaf in leaves]
        sizes = {leaf.shape[0] if leaf.ndim else None for leaf in self._leaves}
        if None in sizes or len(sizes) != 1:
            shapes = [leaf.shape for leaf in self._leaves]
            raise ValueError(f"`arrays` must all have the same leading size N (the examples), got shapes {shapes}.")
        self.num_examples = sizes.pop()
        self.batch_size = _checks.positive_int("batch_size", batch_size)
        if self.batch_size > self.num_examples:
            raise ValueError(f"`batch_size` ({self.batch_size}) is larger than the number of examples "
                             f"N = {self.num_examples} in `arrays`.")
        self.shuffle = _checks.boolean("shuffle", shuffle)
        self.drop_remainder = _checks.boolean("drop_remainder", drop_remainder)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"`seed` must be a non-negative int, got {seed!r}.")
        self.seed = int(seed)
        whole, rest = divmod(self.num_examples, self.batch_size)
        self.steps_per_epoch = whole + (rest > 0 and not self.drop_remainder)
        self._order = (None, None)  # (epoch, its permutation): the current epoch's, kept

    def permutation(self, epoch: int) -> np.ndarray:
        """The order in which epoch ``epoch`` visits the examples, int ``[N]``."""
        epoch = _step("epoch", epoch)
        cached_epoch, perm = self._order
        if cached_epoch != epoch:
            if self.shuffle:
                perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
            else:
                perm = np.arange(self.num_examples)
            self._order = (epoch, perm)  # one assignment: a reader in another thread sees a whole pair
        return perm

    def __getitem__(self, step: int):
        epoch, k = self.position(step)
        rows = self.permutation(epoch)[k * self.batch_size:(k + 1) * self.batch_size]
        return jax.tree_util.tree_unflatten(self._treedef, [leaf[rows] for leaf in self._leaves])

    def __repr__(self) -> str:
        return (f"ArrayBatches(N={self.num_examples}, batch_size={self.batch_size}, steps_per_epoch="
                f"{self.steps_per_epoch}, shuffle={self.shuffle}, seed={self.seed}, "
                f"drop_remainder={self.drop_remainder})")


# ----------------------------------------------------------------------- StreamBatches

class TextChunk(NamedTuple):
    """One step of truncated BPTT over token streams."""

    inputs: np.ndarray  # int32 [B, L]: the tokens read
    targets: np.ndarray  # int32 [B, L]: the next tokens, to be predicted
    resets: np.ndarray  # bool [B, L]: True where the recurrent state restarts before reading


class StreamBatches(_Source):
    """A token sequence as ``B`` contiguous streams read ``L`` tokens per step (truncated BPTT).

    The layout of Zaremba, Sutskever & Vinyals 2014 ("Recurrent neural network
    regularization"): the tokens ``[N]`` are cut into ``B`` streams of ``S = (N - 1) // B``
    tokens (so that every position has a next token), one per batch row, and each step reads
    the next ``L`` tokens of every stream. With ``N = 25`` tokens, ``B = 3``, ``L = 3``
    (``S = 8``, two steps per epoch; the last ``S % L = 2`` tokens of each stream and the
    ``N - B*S = 1`` last token are read only as targets or not at all)::

        token index    step 0     step 1     unused
        row 0:        0  1  2    3  4  5     6  7
        row 1:        8  9 10   11 12 13    14 15
        row 2:       16 17 18   19 20 21    22 23

        step 1: inputs  [[3 4 5], [11 12 13], [19 20 21]]
                targets [[4 5 6], [12 13 14], [20 21 22]]   (the inputs' next tokens)

    Row ``b`` of step ``k + 1`` continues row ``b`` of step ``k``, so a training loop carries
    each row's recurrent state from one step to the next (under ``stop_gradient``). The
    state restarts where ``resets`` is True: at the first position of every row at the first
    step of each epoch (each epoch reads the same streams again from their starts), and at
    every token that ``document_starts`` marks as the first of a document (a play), so that
    no state flows from one document into the next. Every epoch is the same; there is no
    randomness.

    Args:
      tokens: integer ``[N]`` token ids (NumPy or JAX), non-negative and below ``2**31``.
      batch_size: ``B``, the number of streams; ``N >= B + 1``.
      chunk_length: ``L``, the tokens per step; at most ``S``.
      document_starts: optional bool ``[N]``, True at the first token of each document
        (:attr:`lstm_jax.data.Corpus.document_starts`).

    Returns (``source[step]``):
      :class:`TextChunk` ``(inputs int32 [B, L], targets int32 [B, L], resets bool [B, L])``.
    """

    def __init__(self, tokens: Any, batch_size: int, chunk_length: int, *, document_starts: Any = None):
        tokens = np.asarray(tokens)
        if not np.issubdtype(tokens.dtype, np.integer):
            raise TypeError(f"`tokens` must be integer token ids, got dtype {tokens.dtype}.")
        if tokens.ndim != 1:
            raise ValueError(f"`tokens` must be one sequence [N], got shape {tokens.shape}.")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= 2 ** 31):
            raise ValueError(f"`tokens` must lie in [0, 2**31), got values in [{tokens.min()}, {tokens.max()}].")
        N = len(tokens)
        B = self.batch_size = _checks.positive_int("batch_size", batch_size)
        L = self.chunk_length = _checks.positive_int("chunk_length", chunk_length)
        S = self.stream_length = (N - 1) // B if N else 0
        if S < 1:
            raise ValueError(f"`batch_size` ({B}) is too large for {N} tokens: each of the B streams needs at "
                             f"least one token and its next one (N >= B + 1).")
        if L > S:
            raise ValueError(f"`chunk_length` ({L}) is longer than a stream: {N} tokens in {B} streams give "
                             f"S = (N - 1) // B = {S} tokens each.")
        if document_starts is None:
            starts = np.zeros(N, bool)
        else:
            starts = np.asarray(document_starts)
            if starts.dtype != np.bool_ or starts.shape != (N,):
                raise ValueError(f"`document_starts` must be a bool array of shape [N] = ({N},) like `tokens`, "
                                 f"got {starts.dtype} {starts.shape}.")
        self.steps_per_epoch = S // L
        ids = tokens[:B * S + 1].astype(np.int32)
        self._inputs, self._targets = ids[:-1].reshape(B, S), ids[1:].reshape(B, S)  # two views of one array
        self._resets = starts[:B * S].reshape(B, S).copy()
        self._resets[:, 0] = True  # every stream starts from the initial state

    def __getitem__(self, step: int) -> TextChunk:
        _, k = self.position(step)
        span = slice(k * self.chunk_length, (k + 1) * self.chunk_length)
        return TextChunk(*(np.ascontiguousarray(a[:, span]) for a in (self._inputs, self._targets, self._resets)))

    def __repr__(self) -> str:
        return (f"StreamBatches(batch_size={self.batch_size}, chunk_length={self.chunk_length}, "
                f"stream_length={self.stream_length}, steps_per_epoch={self.steps_per_epoch})")
