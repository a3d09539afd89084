"""Stopping cleanly on SIGTERM (what schedulers send before preemption) and Ctrl-C (SIGINT).

While ``handle_signals()`` is active, the first SIGTERM or SIGINT

* inside a training loop that checkpoints (``with safe_points():`` around it)
  only sets a flag: the loop checks ``stop_requested()`` after every optimizer
  step or PPO iteration (its safe points), writes a checkpoint there and
  calls ``stop(...)``, which raises :class:`Stopped`;
* anywhere else (world generation, sampling rankings, evaluation, loading
  models, final saves) raises :class:`Stopped` at once: there is nothing to
  checkpoint, and the unfinished stage is done again (or continued from the
  checkpoints its loop wrote) by the next run.

A second signal exits at once (exit code 128 + signal number) without
waiting for the safe point; checkpoints already on disk stay valid (they are
written atomically). The CLI turns :class:`Stopped` into a message and exit
code ``STOPPED_EXIT``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path

#: Exit code of a run stopped by a signal after writing what it could (EX_TEMPFAIL: run it again).
STOPPED_EXIT = 75
SIGNALS = (signal.SIGINT, signal.SIGTERM)

_requested: int | None = None   # the signal of a pending stop
_safe_depth = 0                 # > 0 inside a loop with safe points
_installed = False


class Stopped(BaseException):
    """The run stopped on a signal; ``checkpoint`` is what was written at the safe point (if any).

    A ``BaseException``, like ``KeyboardInterrupt``: raised from a signal handler it can land inside any
    ``except Exception`` (a tokenizer loader turning errors into "cannot load tokenizer", a library's
    own fallbacks), which must not swallow or relabel a stop."""

    def __init__(self, signum: int, where: str = "", checkpoint: str | Path | None = None):
        self.signum = signum
        self.where = where
        self.checkpoint = str(checkpoint) if checkpoint else None
        super().__init__(self.describe())

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    def describe(self) -> str:
        text = f"stopped by {self.signal_name}"
        if self.where:
            text += f" {self.where}"
        if self.checkpoint:
            text += f"; checkpoint written: {self.checkpoint}"
        return text


def _handler(signum: int, frame) -> None:
    global _requested
    name = signal.Signals(signum).name
    if _requested is not None:
        print(f"\ninstructgpt: second signal ({name}): exiting now; checkpoints already written are kept",
              file=sys.stderr, flush=True)
        os._exit(128 + signum)
    _requested = signum
    if _safe_depth == 0:
        raise Stopped(signum)
    print(f"\ninstructgpt: {name} received: stopping after the current step with a checkpoint "
          f"(send it again to exit at once)", file=sys.stderr, flush=True)


@contextlib.contextmanager
def handle_signals():
    """Install the handlers for SIGINT and SIGTERM (main thread only), restore the previous ones after."""
    global _requested, _installed
    import threading
    if threading.current_thread() is not threading.main_thread() or _installed:
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _requested, _installed = None, True
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _requested, _installed = None, False


@contextlib.contextmanager
def safe_points():
    """Mark a loop that checkpoints at its safe points: a first signal then waits for the next one."""
    global _safe_depth
    _safe_depth += 1
    try:
        yield
    finally:
        _safe_depth -= 1


def stop_requested() -> bool:
    """True once a stop was requested (on any rank, when several processes train together)."""
    from . import distributed as dist
    pending = _requested is not None
    if dist.world_size() > 1:  # all ranks stop at the same step, or none does
        import torch
        pending = bool(dist.all_reduce_max(torch.tensor(float(pending))).item())
    return pending


def stop(where: str, checkpoint: str | Path | None) -> None:
    """Raise :class:`Stopped` at a safe point after its checkpoint was written."""
    raise Stopped(_requested if _requested is not None else signal.SIGTERM, where, checkpoint)


def request_stop(signum: int = signal.SIGTERM) -> None:
    """What the first signal does, callable directly (tests, and hosts that catch signals themselves)."""
    global _requested
    _requested = signum


def clear() -> None:
    global _requested
    _requested = None
