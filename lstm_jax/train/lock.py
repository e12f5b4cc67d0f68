"""One run per working directory: an exclusive lock on ``<workdir>/run.lock``.

The lock is ``flock(2)`` on the file, so the kernel releases it when its holder dies, however
it dies; the file itself records who holds it (pid, host, boot, start time). A run that ends
normally empties the file. A file that still names a holder but is not locked was therefore
left by a run that was killed (or by a machine that rebooted): it is taken over with a
warning naming that run. A second run while the first is alive is refused, naming the first.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import pathlib
import socket
import warnings


class WorkdirInUseError(RuntimeError):
    """Another live run holds the working directory."""


def _boot_id() -> str | None:
    try:
        return pathlib.Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _describe(holder: dict) -> str:
    return (f"pid {holder.get('pid')} on {holder.get('host')!r}, started {holder.get('started')}")


def _why_stale(holder: dict) -> str:
    """Why an unlocked lock file's holder is gone, as far as this machine can tell."""
    if holder.get("host") != socket.gethostname():
        return "its lock is no longer held"
    if holder.get("boot") not in (None, _boot_id()):
        return "it ran before this machine rebooted"
    if isinstance(holder.get("pid"), int) and not _pid_alive(holder["pid"]):
        return "that process no longer exists"
    return "its lock is no longer held"


class WorkdirLock:
    """An exclusive lock on a run directory (a context manager; see the module docstring).

    Raises:
      WorkdirInUseError: on entering, while another live run holds ``directory``.
    """

    def __init__(self, directory: str | os.PathLike):
        self.path = pathlib.Path(directory) / "run.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._read(fd)
                who = _describe(holder) if holder else "a run that is starting"
                raise WorkdirInUseError(
                    f"`workdir` {str(self.path.parent)!r} is in use by another run ({who}); wait for it to "
                    "finish or choose another directory.") from None
            holder = self._read(fd)
            if holder:
                warnings.warn(f"taking over the lock of `workdir` {str(self.path.parent)!r}: the run that held "
                              f"it ({_describe(holder)}) ended without releasing it ({_why_stale(holder)}).",
                              RuntimeWarning, stacklevel=3)
            me = {"pid": os.getpid(), "host": socket.gethostname(), "boot": _boot_id(),
                  "started": datetime.datetime.now().isoformat(timespec="seconds")}
            self._write(fd, json.dumps(me) + "\n")
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Empties the file (a clean end) and unlocks it. The file stays: deleting it would let a
        run that opened it just before lock a file that is no longer the lock."""
        if self._fd is None:
            return
        try:
            self._write(self._fd, "")
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @staticmethod
    def _read(fd: int) -> dict:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 4096).decode(errors="replace").strip()
        if not text:
            return {}
        try:
            holder = json.loads(text)
        except json.JSONDecodeError:
            return {"pid": "?", "host": "?", "started": "?"}  # torn by a kill mid-write
        return holder if isinstance(holder, dict) else {}

    @staticmethod
    def _write(fd: int, text: str) -> None:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, text.encode())
        os.fsync(fd)

    def __enter__(self) -> "WorkdirLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
