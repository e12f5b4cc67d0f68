"""Where :func:`lstm_jax.train.fit` gets its batches: a traced ``batch_fn(key)`` or a host
batch source, and how host arrays become global arrays sharded over the ``"data"`` mesh axis.

A **host batch source** is random-access by training step: ``source[step]`` returns the
*global* batch of that step (a pytree of NumPy arrays, the batch on the leading axis) for any
``step >= 0``, epochs wrapping inside the source; ``source.steps_per_epoch`` and
``source.batch_size`` are ints. Because the data position is a pure function of the step, a
resumed run reads exactly the batches an uninterrupted one would, with no iterator state to
save (the protocol is :class:`lstm_jax.data.batches.BatchSource`;
:class:`~lstm_jax.data.batches.ArrayBatches` and ``StreamBatches`` follow it).

Under several processes (``jax.distributed``) every process reads the same global batch and
keeps its own rows: process ``p`` of ``P`` gets rows ``[p B / P, (p + 1) B / P)``, the rows its
devices hold in the mesh.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import NamedSharding

from lstm_jax.data.batches import BatchSource


def is_batch_source(data: Any) -> bool:
    """Whether ``data`` follows the host-data protocol (rather than being a ``batch_fn``)."""
    return isinstance(data, BatchSource)


def process_rows(sharding: NamedSharding, batch_size: int) -> slice:
    """The rows of a ``[batch_size, ...]`` array that this process's devices hold under ``sharding``.

    Raises:
      ValueError: ``batch_size`` is not divisible by the number of devices in the mesh.
    """
    n = sharding.mesh.devices.size
    if batch_size % n:
        raise ValueError(f"the batch size ({batch_size}) must be divisible by the number of devices ({n}) "
                         "to shard it.")
    spans = [index[0].indices(batch_size) for index in sharding.addressable_devices_indices_map((batch_size,)).values()]
    lo, hi = min(s[0] for s in spans), max(s[1] for s in spans)
    assert (hi - lo) * jax.process_count() == batch_size, "the mesh must give each process contiguous rows"
    return slice(lo, hi)


def to_global(tree: Any, sharding: NamedSharding, rows: slice | None) -> Any:
    """Host values (the same in every process) as global arrays: ``rows`` of the leading axis of
    each leaf are this process's part (None: the whole value, for a replicated ``sharding``)."""
    def place(leaf):
        leaf = np.asarray(leaf)
        return jax.make_array_from_process_local_data(sharding, leaf if rows is None else leaf[rows], leaf.shape)

    return jax.tree.map(place, tree)


def check_leading_axis(tree: Any, batch_size: int, what: str) -> None:
    """Every leaf of ``tree`` must have the global batch ``batch_size`` on its leading axis."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        shape = tuple(np.shape(leaf))
        if not shape or shape[0] != batch_size:
            name = jax.tree_util.keystr(path, simple=True, separator=".") or "the value"
            raise ValueError(f"every leaf of {what} must have the global batch ({batch_size}) on its leading "
                             f"axis; {name} has shape {shape}.")


class TracedFeed:
    """``batch_fn(key)``, traced inside the update with the key ``fold_in(data_key, step)``."""

    host = False

    def __init__(self, batch_fn: Callable[[jax.Array], Any], data_key: jax.Array, sharding: NamedSharding):
        self.batch_fn, self.data_key, self.sharding = batch_fn, data_key, sharding
        try:
            shapes = jax.eval_shape(batch_fn, data_key)
        except jax.errors.TracerArrayConversionError as e:
            raise TypeError("batch_fn is traced by JAX inside the update, so it must be written in jax.numpy "
                            "from its key; for NumPy data pass a host batch source instead (`source[step] -> "
                            "batch`, e.g. lstm_jax.data.batches.ArrayBatches).") from e
        leaves = jax.tree.leaves(shapes)
        self.batch_size = leaves[0].shape[0] if leaves and leaves[0].ndim else 0
        n = sharding.mesh.devices.size
        for leaf in leaves:
            if leaf.ndim == 0 or leaf.shape[0] % n:
                raise ValueError(f"the batch size must be divisible by the number of devices ({n}) to shard "
                                 f"it; batch_fn gives an array of shape {tuple(leaf.shape)}.")

    def describe(self) -> None:
        return None  # the stream is defined by config.seed, already in the run's configuration

    def epoch(self, done: int) -> None:
        return None

    def get(self, step: int) -> None:
        return None  # drawn inside the update

    def in_update(self, batch: Any, step: jax.Array) -> Any:
        batch = self.batch_fn(jax.random.fold_in(self.data_key, step))
        return jax.lax.with_sharding_constraint(batch, jax.tree.map(lambda _: self.sharding, batch))

    def close(self) -> None:
        pass


class HostFeed:
    """Reads ``source[step]`` on the host, keeps this process's rows and makes the global array.

    With ``prefetch``, the batch of step ``s + 1`` is read and placed by one background thread
    while the device runs step ``s``.
    """

    host = True

    def __init__(self, source: Any, sharding: NamedSharding, end: int, *, prefetch: bool = True):
        self.source, self.sharding, self.end = source, sharding, end
        for name in ("batch_size", "steps_per_epoch"):
            v = getattr(source, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"the batch source's `{name}` must be a positive int, got {v!r}.")
        self.batch_size, self.steps_per_epoch = int(source.batch_size), int(source.steps_per_epoch)
        self.rows = process_rows(sharding, self.batch_size)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, "lstm_jax-prefetch") if prefetch else None
        self._next: tuple[int, concurrent.futures.Future] | None = None

    def describe(self) -> dict:
        """What defines the data stream, stored with the run's configuration and compared on resume."""
        return {"type": type(self.source).__qualname__, "batch_size": self.batch_size,
                "steps_per_epoch": self.steps_per_epoch}

    def epoch(self, done: int) -> float:
        """Epochs completed after ``done`` steps (1.5: halfway through the second epoch)."""
        return done / self.steps_per_epoch

    def load(self, step: int) -> Any:
        """The global batch of ``step`` as global arrays (this process supplying its rows)."""
        batch = self.source[step]
        check_leading_axis(batch, self.batch_size, f"the batch source's batch (step {step})")
        return to_global(batch, self.sharding, self.rows)

    def get(self, step: int) -> Any:
        if self._next is not None and self._next[0] == step:
            batch = self._next[1].result()
        else:
            batch = self.load(step)
        self._next = None
        if self._pool is not None and step + 1 < self.end:
            self._next = (step + 1, self._pool.submit(self.load, step + 1))
        return batch

    def in_update(self, batch: Any, step: jax.Array) -> Any:
        return batch

    def close(self) -> None:
        if self._pool is not None:
            if self._next is not None:
                self._next[1].cancel()
            self._pool.shutdown(wait=True)
            self._next = None
