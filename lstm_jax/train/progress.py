"""Progress of a run: a tqdm bar on a terminal, a plain line every N steps elsewhere (a log
file, a batch job, CI), so that a run that is not watched live still says how it goes."""

from __future__ import annotations

import math
import sys
import time
from typing import Sequence


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def check_progress(progress) -> None:
    """``progress`` must be None, a bool or a positive int."""
    ok = progress is None or isinstance(progress, bool) or (isinstance(progress, int) and progress >= 1)
    if not ok:
        raise ValueError(f"`progress` must be None, True, False or a positive int (steps between progress "
                         f"lines), got {progress!r}.")


class Progress:
    """Shows a run's progress on stderr.

    Args:
      progress: False shows nothing; None or True: a tqdm bar when stderr is a terminal, else a
        line every ``every`` steps; an int N: the same with a line every N steps.
      total, start: the last step and the step this call starts from.
      every: the default line interval (the metrics interval).
      description: the label.
    """

    def __init__(self, progress, *, total: int, start: int, every: int, description: str):
        self.total, self.start, self.description = total, start, description
        self.every = every if progress is None or progress is True else progress
        self.bar = self.lines = False
        if progress is not False:
            self.bar, self.lines = (True, False) if sys.stderr.isatty() else (False, True)
        self._tqdm = None
        if self.bar:
            from tqdm import tqdm

            self._tqdm = tqdm(total=total, initial=start, desc=description, dynamic_ncols=True, leave=False)
        self._t0 = time.perf_counter()

    def wants_line(self, done: int) -> bool:
        """Whether step ``done`` ends with a progress line (the caller then gathers its losses)."""
        return self.lines and (done % self.every == 0 or done == self.total)

    def update(self, done: int, losses: Sequence[float] = ()) -> None:
        """After step ``done``; ``losses``: the training losses since the last line (for a line)."""
        if self._tqdm is not None:
            self._tqdm.update(1)
            if losses:
                self._tqdm.set_postfix(loss=f"{math.fsum(losses) / len(losses):.4g}")
        elif self.wants_line(done):
            elapsed = time.perf_counter() - self._t0
            rate = (done - self.start) / elapsed if elapsed > 0 else float("inf")
            eta = (self.total - done) / rate if rate > 0 else 0.0
            loss = f", loss {math.fsum(losses) / len(losses):.4g}" if losses else ""
            print(f"{self.description}: step {done}/{self.total} ({100 * done / self.total:.0f}%){loss}, "
                  f"{rate:.3g} steps/s, {_duration(elapsed)} elapsed, {_duration(eta)} left",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
