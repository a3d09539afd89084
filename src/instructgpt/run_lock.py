"""One ``instructgpt run`` per run folder at a time.

The lock is the file ``run.lock`` in the run folder, held with ``flock`` for as
long as the run works on the folder; the file says who holds it (pid, host,
start time, command). The operating system drops an ``flock`` when its process
dies, however it dies (``kill -9``, a crash, a reboot), so a lock file left
behind by a dead run is stale by construction: the next run takes it over and
says whose it was. A second run while the first is alive gets
:class:`RunLockedError` naming the holder.

A stage run on its own (``instructgpt sft out_dir=...``) holds ``run.lock`` in its
output folder the same way: two stages writing one folder at once would mix their
checkpoints, metrics and config records.

``flock`` works across processes of one machine and, on Linux NFSv4 and most
cluster file systems, across machines.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

#: The lock file's name, in a run folder and in a stage's out_dir.
LOCK_NAME = "run.lock"

#: Exit code when the run folder is in use by another run (EX_CANTCREAT).
LOCKED_EXIT = 73


class RunLockedError(RuntimeError):
    """Another live process holds the run folder."""

    def __init__(self, path: Path, holder: dict, option: str = "name"):
        self.path, self.holder = path, holder
        super().__init__(f"{path.parent} is in use by another instructgpt run ({describe(holder)}); "
                         f"wait for it to finish, stop it, or use another {option}= (lock file: {path})")


class LockUnsupportedError(RuntimeError):
    """The run folder's file system refuses file locks (ENOLCK, EOPNOTSUPP...)."""

    def __init__(self, path: Path, error: OSError):
        self.path = path
        super().__init__(f"{path}: cannot lock ({error.strerror or error}): the file system of {path.parent} does "
                         f"not support file locks, which keep two runs from writing one folder at once; put it on "
                         f"a file system that does (a local disk, NFSv4, a cluster file system with locking on)")


def describe(holder: dict) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {when}"


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return {}


class RunLock:
    """``with RunLock(run_folder.lock):`` holds the folder; ``took_over`` describes a stale lock replaced.
    ``option`` names what the error tells the second run to change (``name`` of a run, a stage's ``out_dir``)."""

    def __init__(self, path: str | Path, option: str = "name"):
        self.path, self.option = Path(path), option
        self.fd: int | None = None
        self.took_over: dict | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunLockedError(self.path, _read(self.path), self.option) from None
            except OSError as e:
                os.close(fd)
                raise LockUnsupportedError(self.path, e) from None
            # The file may have been removed (a run releasing it) between open and flock: then
            # this lock is on a deleted file; start again on the path's current file.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            break
        previous = _read(self.path)
        if previous.get("pid") is not None:  # written by a process that died holding it
            self.took_over = previous
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink()  # while still holding the flock: nobody can have taken it meanwhile
        except FileNotFoundError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
