"""Checkpoints with Orbax, bound to the configuration that wrote them.

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a
run killed mid-save leaves the previous checkpoint intact and the torn one is ignored.
The run's configuration is stored next to the checkpoints (``config.json``); resuming from a
directory written by a different configuration is refused, naming the differences.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Mapping

import jax

from lstm_jax.train.records import to_jsonable, write_json


def _normalise(config: Mapping[str, Any]) -> dict:
    return json.loads(json.dumps(to_jsonable(config)))


class Checkpointer:
    """Saves and restores ``{"params": ..., "opt_state": ...}`` under ``directory``.

    Args:
      directory: the run's directory (created if missing): ``config.json`` and
        ``checkpoints/<step>/``.
      run_config: everything that defines the run (JSON-serialisable); compared on resume.
      resume: continue the run found in ``directory``. Without it, a directory that already
        holds checkpoints is refused rather than overwritten.
      max_to_keep: how many recent checkpoints to keep.

    Raises:
      ValueError: ``directory`` holds a run but ``resume`` is false, or it was written by a
        different ``run_config``.
    """

    def __init__(self, directory, run_config: Mapping[str, Any], *, resume: bool, max_to_keep: int = 2):
        import orbax.checkpoint as ocp  # imported here: only runs that checkpoint pay for it

        self._ocp = ocp
        self.directory = pathlib.Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        config = _normalise(run_config)
        config_path = self.directory / "config.json"
        self._manager = ocp.CheckpointManager(
            self.directory / "checkpoints", options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep))
        latest = self._manager.latest_step()
        if latest is not None and not resume:
            self._manager.close()
            raise ValueError(f"`workdir` {str(self.directory)!r} already holds a run (checkpoint at step "
                             f"{latest}); resume it (resume=True, --resume) or choose "
                             "another directory.")
        if resume and config_path.exists():
            saved = json.loads(config_path.read_text())
            if saved != config:
                keys = sorted(k for k in saved.keys() | config.keys() if saved.get(k) != config.get(k))
                diffs = ", ".join(f"{k}: {saved.get(k)!r} there, {config.get(k)!r} now" for k in keys)
                self._manager.close()
                raise ValueError(f"cannot resume from {str(self.directory)!r}: it was written by a "
                                 f"different configuration ({diffs}).")
        write_json(config_path, config)

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any) -> None:
        """Saves ``state`` (a pytree of arrays) as the checkpoint of ``step`` (asynchronously)."""
        self._manager.save(step, args=self._ocp.args.StandardSave(state), force=True)

    def restore(self, step: int, like: Any) -> Any:
        """The state saved at ``step``, with the structure, dtypes and shardings of ``like``."""
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
        return self._manager.restore(step, args=self._ocp.args.StandardRestore(abstract))

    def close(self) -> None:
        """Waits for pending (asynchronous) saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
