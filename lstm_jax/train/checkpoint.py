"""Checkpoints with Orbax, bound to the configuration that wrote them.

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a
run killed mid-save leaves the previous checkpoint intact and the torn one is ignored (and
removed by the next run: the workdir lock guarantees it is nobody else's). A checkpoint that
is damaged afterwards (metadata deleted, step directory emptied, a file truncated) is moved to
``corrupt_checkpoints/`` with a warning and the newest intact one is used instead.

The run's configuration is stored next to the checkpoints (``config.json``); resuming from a
directory written by a different configuration is refused, naming the keys that differ, and a
checkpoint whose arrays do not fit the current state is refused naming the arrays and shapes.

Each checkpoint holds two items: ``state`` (a pytree of arrays: params, optimiser state, carry)
and ``log`` (JSON: the training metrics of the steps since the last metrics record, so that a
resumed run writes the same records as an uninterrupted one).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import warnings
from typing import Any, Iterable, Mapping

import jax

from lstm_jax.train.records import to_jsonable, write_json

_ABSENT = object()


class StateMismatchError(ValueError):
    """A checkpoint's arrays do not fit the current state (a different model or carry)."""


def _normalise(config: Mapping[str, Any]) -> dict:
    return json.loads(json.dumps(to_jsonable(config)))


def _show(value: Any) -> str:
    return "absent" if value is _ABSENT else repr(value)


def config_differences(saved: Mapping, now: Mapping, ignore: Iterable[str] = (), prefix: str = "") -> list[str]:
    """``"key.path: <saved> there, <now> now"`` for each leaf where two nested dicts differ."""
    out = []
    for key in sorted(saved.keys() | now.keys()):
        a, b, path = saved.get(key, _ABSENT), now.get(key, _ABSENT), prefix + key
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, ignore, path + ".")
        elif a != b and path not in ignore:
            out.append(f"{path}: {_show(a)} there, {_show(b)} now")
    return out


def _flat(tree: Any) -> dict[str, Any]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path, simple=True, separator="."): leaf for path, leaf in leaves}


def state_differences(saved_metadata: Any, like: Any, limit: int = 6) -> list[str]:
    """How arrays in a checkpoint (Orbax metadata) differ from ``like``: key paths, shapes, dtypes."""
    saved, now = _flat(saved_metadata), _flat(like)
    found = [(k, f"{k} is not in the checkpoint") for k in now if k not in saved]
    found += [(k, f"{k} is in the checkpoint but not in the current state") for k in saved if k not in now]
    for k in now.keys() & saved.keys():
        a = (tuple(saved[k].shape), jax.numpy.dtype(saved[k].dtype).name)
        b = (tuple(now[k].shape), jax.numpy.dtype(now[k].dtype).name)
        if a != b:
            found.append((k, f"{k} has shape {a[0]} {a[1]} there, {b[0]} {b[1]} now"))
    first = {"params": 0, "carry": 1}  # what a reader changed; the optimiser state only follows the params
    out = [line for _, line in sorted(found, key=lambda kl: (first.get(kl[0].split(".", 1)[0], 2), kl[0]))]
    return out if len(out) <= limit else out[:limit] + [f"and {len(out) - limit} more"]


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


class Checkpointer:
    """Saves and restores ``{"state": pytree, "log": json}`` under ``directory``.

    Args:
      directory: the run's directory (created if missing): ``config.json`` and
        ``checkpoints/<step>/``.
      run_config: everything that defines the run (JSON-serialisable); compared on resume.
      resume: continue the run found in ``directory``. Without it, a directory that already
        holds checkpoints is refused rather than overwritten.
      max_to_keep: how many recent checkpoints to keep.
      may_change: dotted key paths of ``run_config`` that may differ on resume (fit lets
        ``train.steps`` grow to extend a run); :attr:`saved_config` has the old values.

    Raises:
      ValueError: ``directory`` holds a run but ``resume`` is false; it was written by a
        different ``run_config`` (naming the keys that differ); its ``config.json`` is corrupt.

    The directory is assumed to be this run's alone (:func:`~lstm_jax.train.fit` holds a
    :class:`~lstm_jax.train.WorkdirLock` on it): opening it removes torn temporary saves.
    """

    def __init__(self, directory, run_config: Mapping[str, Any], *, resume: bool, max_to_keep: int = 2,
                 may_change: Iterable[str] = ()):
        import orbax.checkpoint as ocp  # imported here: only runs that checkpoint pay for it

        self._ocp = ocp
        self.directory = pathlib.Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config = _normalise(run_config)
        self._config_path = self.directory / "config.json"
        self._max_to_keep = max_to_keep
        self._manager = self._open()
        latest = self._manager.latest_step()
        self.saved_config: dict | None = None
        try:
            if latest is not None and not resume:
                raise ValueError(f"`workdir` {str(self.directory)!r} already holds a run (checkpoint at step "
                                 f"{latest}); resume it (resume=True, --resume) or choose another directory.")
            if resume and self._config_path.exists():
                self.saved_config = self._read_config()
                diffs = config_differences(self.saved_config, self.config, ignore=may_change)
                if diffs:
                    raise ValueError(f"cannot resume from {str(self.directory)!r}: it was written by a "
                                     f"different configuration ({'; '.join(diffs)}).")
        except BaseException:
            self._manager.close()
            raise

    def _open(self):
        ocp = self._ocp
        # cleanup_tmp_directories: a save torn by a kill is removed; safe because the workdir is locked.
        options = ocp.CheckpointManagerOptions(max_to_keep=self._max_to_keep, cleanup_tmp_directories=True)
        handlers = {"state": ocp.StandardCheckpointHandler(), "log": ocp.JsonCheckpointHandler()}
        return ocp.CheckpointManager(self.directory / "checkpoints", options=options, item_handlers=handlers)

    def _read_config(self) -> dict:
        try:
            saved = json.loads(self._config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot resume from {str(self.directory)!r}: its config.json, which records the "
                             f"run's configuration, is corrupt ({e}); restore it, or start a new workdir.") from None
        if not isinstance(saved, dict):
            raise ValueError(f"cannot resume from {str(self.directory)!r}: its config.json, which records the "
                             f"run's configuration, is corrupt (not a JSON object); restore it, or start a new "
                             "workdir.")
        return saved

    def write_config(self) -> None:
        """Records ``run_config`` as the run's configuration (process 0 writes it)."""
        _sync("lstm_jax.train: config read")  # nobody may still be reading the old one
        if jax.process_index() == 0:
            write_json(self._config_path, self.config)

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any, log: Any = None) -> None:
        """Saves ``state`` (a pytree of arrays) and ``log`` (JSON) as the checkpoint of ``step``
        (asynchronously)."""
        args = self._ocp.args.Composite(state=self._ocp.args.StandardSave(state),
                                        log=self._ocp.args.JsonSave(log if log is not None else {}))
        self._manager.save(step, args=args, force=True)

    def restore(self, step: int, like: Any) -> tuple[Any, Any]:
        """``(state, log)`` saved at ``step``, ``state`` with the structure, dtypes and shardings of
        ``like``.

        Raises:
          StateMismatchError: the checkpoint's arrays do not fit ``like`` (naming them and their shapes).
          Exception: whatever Orbax raises for an unreadable checkpoint.
        """
        metadata = self._manager.item_metadata(step)["state"]
        if metadata is None:
            raise FileNotFoundError("its metadata is missing")
        diffs = state_differences(metadata.tree, like)
        if diffs:
            raise StateMismatchError(f"cannot resume from {str(self.directory)!r}: the checkpoint at step {step} "
                                     f"does not fit the current state ({'; '.join(diffs)}).")
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
        args = self._ocp.args.Composite(state=self._ocp.args.StandardRestore(abstract),
                                        log=self._ocp.args.JsonRestore())
        restored = self._manager.restore(step, args=args)
        return restored["state"], restored["log"]

    def restore_latest(self, like: Any) -> tuple[int, Any, Any] | None:
        """``(step, state, log)`` of the newest readable checkpoint, or None when there is none.

        An unreadable checkpoint is moved to ``corrupt_checkpoints/`` with a warning naming its
        step, and the previous one is tried.

        Raises:
          StateMismatchError: a checkpoint does not fit ``like``.
          ValueError: every checkpoint is unreadable.
        """
        steps = sorted(self._manager.all_steps(), reverse=True)
        bad, found = [], None
        for step in steps:
            try:
                state, log = self.restore(step, like)
            except StateMismatchError:
                raise
            except Exception as e:  # noqa: BLE001 - Orbax/TensorStore/JSON errors of a damaged checkpoint
                first_line = (str(e).strip().splitlines() or [""])[0][:200]
                warnings.warn(f"the checkpoint at step {step} in {str(self.directory)!r} is unreadable "
                              f"({type(e).__name__}: {first_line}); it is moved to corrupt_checkpoints/ and "
                              "the previous checkpoint is tried.", RuntimeWarning, stacklevel=2)
            else:
                found = (step, state, log)
                break
            bad.append(step)
        if bad:
            self._set_aside(bad)
        if found is None and steps:
            raise ValueError(f"cannot resume from {str(self.directory)!r}: none of its checkpoints (steps "
                             f"{sorted(steps)}) is readable; they are in corrupt_checkpoints/.")
        return found

    def _set_aside(self, steps: list[int]) -> None:
        self._manager.close()
        _sync("lstm_jax.train: corrupt checkpoints found")
        if jax.process_index() == 0:
            target = self.directory / "corrupt_checkpoints"
            target.mkdir(exist_ok=True)
            for step in steps:
                name, n = str(step), 1
                while (target / name).exists():
                    name, n = f"{step}.{n}", n + 1
                shutil.move(str(self.directory / "checkpoints" / str(step)), str(target / name))
        _sync("lstm_jax.train: corrupt checkpoints moved")
        self._manager = self._open()

    def close(self) -> None:
        """Waits for pending (asynchronous) saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
