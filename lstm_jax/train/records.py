"""What a run leaves on disk besides checkpoints: JSON results and a JSONL metrics log.

Files are never left half-written: JSON goes to a temporary file in the same directory and
is renamed over the target (``os.replace`` is atomic on POSIX); the JSONL log is appended a
whole line at a time and, on resume, cut back to the restored step.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import tempfile
from typing import Any, Callable, Iterable, Mapping


def to_jsonable(value: Any) -> Any:
    """Scalars (including 0-d arrays) to floats/ints/bools; NaN and inf to strings JSON accepts."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
    """Writes ``text`` atomically: a reader sees the old file or the new one, never a torn one."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are meant to be read
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, data: Any) -> pathlib.Path:
    """Writes ``data`` as indented JSON, atomically (see :func:`write_text`)."""
    return write_text(path, json.dumps(to_jsonable(data), indent=2) + "\n")


class MetricsLog:
    """An append-only JSONL file of ``{"step": ..., name: value, ...}`` records."""

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """Drops records past ``step`` (and any torn last line), for a resumed run."""
        self.keep(lambda record: record.get("step", 0) <= step)

    def keep(self, predicate: Callable[[dict], bool]) -> None:
        """Keeps only the records for which ``predicate`` holds (and drops any torn last line)."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line torn by a kill
                continue
            if predicate(record):
                kept.append(line + "\n")
        write_text(self.path, "".join(kept))

    def append(self, record: Mapping[str, Any]) -> None:
        """Appends one record as one line (flushed on close)."""
        with self.path.open("a") as f:
            f.write(json.dumps(to_jsonable(record)) + "\n")

    def read(self) -> list[dict]:
        """All records, oldest first."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def markdown_table(rows: Iterable[Mapping[str, Any]], columns: Mapping[str, str]) -> str:
    """A Markdown table: ``columns`` maps each row key to its header; floats get 4 significant digits."""
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else ("yes" if v is True else "no" if v is False else str(v))
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"
