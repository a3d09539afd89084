"""The run lock: a live holder is named and refused, a dead holder's lock is taken over."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from instructgpt.run_lock import RunLock, RunLockedError

SRC = str(Path(__file__).resolve().parents[1] / "src")
HOLD = ("import sys, time; sys.path.insert(0, sys.argv[2]); from instructgpt.run_lock import RunLock; "
        "lock = RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)")


def _holder(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), SRC], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_holder_is_named_and_a_second_run_refused(tmp_path):
    path = tmp_path / "run" / "run.lock"
    holder = _holder(path)
    try:
        with pytest.raises(RunLockedError) as e:
            RunLock(path).acquire()
        message = str(e.value)
        assert f"pid {holder.pid} on host {socket.gethostname()}, started {time.strftime('%Y-%m-%d')}" in message
        assert "is in use by another instructgpt run" in message and str(path) in message
        assert json.loads(path.read_text())["pid"] == holder.pid  # the holder's record is left alone
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    path = tmp_path / "run.lock"
    holder = _holder(path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert json.loads(path.read_text())["pid"] == holder.pid  # the file survives its holder
    lock = RunLock(path).acquire()
    try:
        assert lock.took_over["pid"] == holder.pid
        assert json.loads(path.read_text())["pid"] == os.getpid()
    finally:
        lock.release()
    assert not path.exists()


def test_a_released_lock_is_free_and_not_reported_as_stale(tmp_path):
    path = tmp_path / "run.lock"
    with RunLock(path) as first:
        assert first.took_over is None
        with pytest.raises(RunLockedError):  # even from the same process: one run per folder
            RunLock(path).acquire()
    with RunLock(path) as again:
        assert again.took_over is None


def test_a_run_folder_on_a_read_only_file_system_is_an_error_not_a_traceback(tmp_path, monkeypatch, capsys):
    """os.open of run.lock on a read-only mount raises OSError(EROFS), not PermissionError: the CLI let it
    through as a traceback (exit 1) where a folder that cannot be written is exit 2 with a message."""
    import errno
    from instructgpt import run_lock
    from instructgpt.cli import main

    def read_only(self):
        raise OSError(errno.EROFS, "Read-only file system", str(self.path))
    monkeypatch.setattr(run_lock.RunLock, "acquire", read_only)
    assert main(["run", f"runs_dir={tmp_path}", "name=r", "scale=0.001", "progress=false"]) == 2
    err = capsys.readouterr().err
    assert "instructgpt run: error: " in err and "run.lock: Read-only file system" in err


def test_a_stage_on_its_own_refuses_an_out_dir_another_stage_is_writing(tmp_path, capsys):
    """Two `instructgpt sft` with one out_dir both ran: the second crashed on a checkpoint the first had
    pruned, after writing its own config records over the first's (the folder's model was the first's)."""
    from instructgpt.cli import main
    from instructgpt.run_lock import LOCKED_EXIT
    out = tmp_path / "out"
    holder = _holder(out / "run.lock")
    try:
        code = main(["sft", f"model={tmp_path / 'model'}", f"train={tmp_path / 'train.jsonl'}", f"out_dir={out}"])
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert code == LOCKED_EXIT
    assert f"instructgpt sft: error: {out} is in use by another instructgpt run (pid {holder.pid}" in err
    assert "use another out_dir=" in err
    assert sorted(p.name for p in out.iterdir()) == ["run.lock"]  # nothing of the second stage was written


def test_a_stage_stopped_by_bad_input_leaves_no_empty_out_dir_behind(tmp_path, capsys):
    """The stage's lock made its out_dir before the stage read its inputs: a typo in train= left an empty folder."""
    from instructgpt.cli import main
    (tmp_path / "kept").mkdir()
    for out in (tmp_path / "new" / "sft", tmp_path / "kept"):
        code = main(["sft", f"model={tmp_path / 'model'}", f"train={tmp_path / 'no_such.jsonl'}", f"out_dir={out}"])
        assert code != 0 and not (out / "run.lock").exists()
    assert "model folder not found" in capsys.readouterr().err
    assert not (tmp_path / "new" / "sft").exists() and (tmp_path / "kept").is_dir()  # a folder it did not make stays



def test_a_run_folder_whose_file_system_refuses_locks_is_an_error_not_a_traceback(tmp_path, monkeypatch, capsys):
    """flock on a mount without lock support (NFS with nolock and no lockd, some FUSE/CIFS mounts) raises
    OSError(ENOLCK): the CLI let it through as a traceback."""
    import errno
    from instructgpt import run_lock
    from instructgpt.cli import main

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(run_lock.fcntl, "flock", no_locks)
    assert main(["run", f"runs_dir={tmp_path}", "name=r", "scale=0.001", "progress=false"]) == 2
    err = capsys.readouterr().err
    assert f"instructgpt run: error: {tmp_path / 'r' / 'run.lock'}: cannot lock (No locks available)" in err
    assert "does not support file locks" in err
