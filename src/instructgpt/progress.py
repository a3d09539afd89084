"""Progress of a long loop: a tqdm bar on a terminal, plain timed lines in a log.

``progress_bar(total, desc, enabled)`` returns a tqdm bar when stderr is a
terminal. When it is not (a log file, a pipe, a cluster job's output) carriage
returns would fill the log with redrawn bars, so it returns
:class:`LogProgress` instead: one readable line at most every ``interval``
seconds, and one when the loop ends::

    sft: 120/400 steps (30%), 1.85 s/step, 8.6 min left  loss=2.31

Both show the time left of the loop from its own measured rate.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def format_seconds(seconds: float) -> str:
    """``42s``, ``8.6 min``, ``2.3 h``."""
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class LogProgress:
    """The parts of tqdm's interface the training loops use, printed as occasional lines."""

    def __init__(self, total: int, initial: int = 0, desc: str = "", unit: str = "step",
                 interval: float = 30.0, stream: TextIO | None = None, clock=time.monotonic):
        self.total, self.n, self.desc, self.unit = total, initial, desc, unit
        self.interval, self.stream, self.clock = interval, stream, clock
        self.start_n, self.start = initial, clock()
        self.last_print, self.printed_n = self.start, initial
        self.postfix = ""
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.clock() - self.last_print >= self.interval:
            self._print()

    def set_postfix(self, values: dict[str, Any] | None = None, **kwargs: Any) -> None:
        values = {**(values or {}), **kwargs}
        self.postfix = "  ".join(f"{k}={v}" for k, v in values.items())

    def line(self) -> str:
        """The current progress line (rate and time left from the steps done since this loop started)."""
        done, elapsed = self.n - self.start_n, self.clock() - self.start
        text = f"{self.desc}: {self.n}/{self.total} {self.unit}s"
        if self.total:
            text += f" ({100 * self.n / self.total:.0f}%)"
        if done > 0 and elapsed > 0:
            per = elapsed / done
            text += f", {per:.3g} s/{self.unit}"
            if self.n < self.total:
                text += f", {format_seconds(per * (self.total - self.n))} left"
            else:
                text += f", {format_seconds(elapsed)} in all"
        if self.postfix:
            text += f"  {self.postfix}"
        return text

    def _print(self) -> None:
        print("    " + self.line(), file=self.stream or sys.stderr, flush=True)
        self.last_print, self.printed_n = self.clock(), self.n

    def close(self) -> None:
        if not self.closed and self.n > self.printed_n:
            self._print()
        self.closed = True


def progress_bar(total: int, desc: str, enabled: bool = True, initial: int = 0, unit: str = "step",
                 interval: float = 30.0):
    """A tqdm bar on a terminal, :class:`LogProgress` otherwise, or a silent bar when not ``enabled``."""
    from tqdm.auto import tqdm
    if enabled and not _is_terminal(sys.stderr):
        return LogProgress(total, initial, desc, unit, interval)
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True,
                mininterval=1.0)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
