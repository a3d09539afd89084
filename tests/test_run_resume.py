"""``instructgpt run`` survives kills, signals and a second run on the same folder: real processes,
real signals, and the resumed run ends with the uninterrupted run's weights, bit for bit.

Every stage is deterministic on CPU given its checkpoint (weights, optimizer, scheduler, data
position, RNG states, EMA, KL controller), so the comparison is exact (torch.equal), not a tolerance.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from instructgpt.checkpoint import list_checkpoints

OPTIONS = ["scale=0.001", "sft_prompts=0", "corpus_docs=150", "vocab_size=512", "pretrain_epochs=1", "sft_epochs=3",
           "rm_epochs=1", "ppo_iterations=3", "ppo_batch=4", "ppo_minibatch=4", "max_new_tokens=8", "flan=false",
           "evaluate=false", "progress=true"]
EVERY_STEP = "checkpoint_minutes=0.0001"  # a checkpoint at every step: kills land between them
WEIGHTS = ["models/sft/model.safetensors", "models/round1/rm/model.safetensors",
           "models/round1/ppo/model.safetensors", "models/round1/ppo/value_model/model.safetensors",
           "models/round1/ppo_ptx/model.safetensors", "models/round1/ppo_ptx/value_model/model.safetensors"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(
    [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}


class Run:
    """One ``instructgpt run`` process with its output in a file."""

    def __init__(self, runs: Path, name: str, log: Path, *extra: str, checkpoints: str = EVERY_STEP):
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "instructgpt.cli", "run", *OPTIONS, checkpoints, *extra,
                                      f"runs_dir={runs}", f"name={name}"], env=ENV, stdout=open(log, "w"),
                                     stderr=subprocess.STDOUT)

    @property
    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, what: str, condition, timeout: float = 400) -> None:
        deadline = time.time() + timeout
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"the run ended (exit {self.proc.returncode}) before {what}:\n{self.output}")
            if time.time() > deadline:
                self.proc.kill()
                pytest.fail(f"timed out waiting for {what}:\n{self.output}")
            time.sleep(0.02)

    def finish(self, timeout: float = 600) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"the run did not end:\n{self.output}")


def _unfinished_with_checkpoint(stage: Path):
    return lambda: bool(list_checkpoints(stage / "checkpoints")) and not (stage / "stage.json").exists()


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, checkpointing only as often as by default (a runtime option: the
    interrupted runs, which checkpoint at every step, must still end with its weights)."""
    root = tmp_path_factory.mktemp("ref")
    run = Run(root, "r", root / "log.txt", checkpoints="checkpoint_minutes=10")
    assert run.finish() == 0, run.output
    return root / "r", run.output


def _fresh_copy(reference: Path, dest: Path) -> Path:
    """A run folder holding the reference's world and base model (reused by key): the tests interrupt the
    stages after them."""
    for part in ("world", "data", "tokenizer", "models/base"):
        shutil.copytree(reference / part, dest / part, ignore=shutil.ignore_patterns("rankings_r*"))
    return dest


def _same_weights(a: Path, b: Path) -> None:
    for rel in WEIGHTS:
        x, y = load_file(str(a / rel)), load_file(str(b / rel))
        assert x.keys() == y.keys(), rel
        different = [k for k in x if not torch.equal(x[k], y[k])]
        assert not different, (rel, different[:3])


def test_kills_signals_and_a_second_run_then_the_same_weights(reference, tmp_path):
    ref, ref_output = reference
    folder = _fresh_copy(ref, tmp_path / "runs" / "c")
    runs, sft, ppo, ptx = tmp_path / "runs", folder / "models/sft", folder / "models/round1/ppo", \
        folder / "models/round1/ppo_ptx"

    # 1. kill -9 in the middle of SFT, after its first checkpoint
    first = Run(runs, "c", tmp_path / "1.txt")
    first.wait_for("an SFT checkpoint", _unfinished_with_checkpoint(sft))
    first.proc.send_signal(signal.SIGKILL)
    first.finish()
    assert (sft / "stage.partial.json").is_file() and (folder / "run.lock").is_file()
    assert "[1/7] world: reused" in first.output and "[2/7] base: reused" in first.output
    partial = json.loads((sft / "stage.partial.json").read_text())  # as if other code had started SFT
    (sft / "stage.partial.json").write_text(json.dumps({**partial, "code": "0123456789abcdef"}))

    # 2. the rerun takes over the dead run's lock and resumes SFT; a second run meanwhile is refused;
    #    Ctrl-C in PPO stops at the end of the iteration with a checkpoint
    second = Run(runs, "c", tmp_path / "2.txt")
    second.wait_for("the lock", lambda: f'"pid": {second.proc.pid}' in _read(folder / "run.lock"))
    intruder = Run(runs, "c", tmp_path / "2b.txt")
    assert intruder.finish() == 73
    assert f"is in use by another instructgpt run (pid {second.proc.pid} on host" in intruder.output
    second.wait_for("a PPO iteration", lambda: _lines(ppo / "metrics.jsonl") >= 1)
    second.proc.send_signal(signal.SIGINT)
    assert second.finish() == 75, second.output
    out = second.output
    assert "taking over the lock of a run that is no longer running (pid" in out
    assert re.search(r"\[3/7\] sft: resuming from .*step-\d+ \(interrupted earlier; options unchanged\): written "
                     r"by code 0123456789abcdef, this is code [0-9a-f]{16}; .* so it continues", out), out
    stopped = re.search(r"stopped by SIGINT during ppo_r1 at ppo iteration (\d)/3; checkpoint written: (\S+?);", out)
    assert stopped, out
    assert Path(stopped.group(2)).name == f"step-{int(stopped.group(1)):07d}" and Path(stopped.group(2)).is_dir()
    assert "run the same command again to continue" in out and not (ppo / "stage.json").exists()

    # 3. resume PPO; kill -9 in the middle of PPO-ptx
    third = Run(runs, "c", tmp_path / "3.txt")
    third.wait_for("a PPO-ptx checkpoint", _unfinished_with_checkpoint(ptx))
    third.proc.send_signal(signal.SIGKILL)
    third.finish()
    assert re.search(rf"ppo_r1: resuming from .*step-{int(stopped.group(1)):07d}", third.output), third.output

    # 4. SIGTERM twice: the second one exits at once, without waiting for the safe point
    fourth = Run(runs, "c", tmp_path / "4.txt")
    fourth.wait_for("PPO-ptx resumed", lambda: "ppo_ptx_r1: resuming from" in fourth.output)
    logged = _lines(ptx / "metrics.jsonl")
    fourth.wait_for("a new PPO-ptx iteration", lambda: _lines(ptx / "metrics.jsonl") > logged)
    fourth.proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    fourth.proc.send_signal(signal.SIGTERM)
    assert fourth.finish() == 128 + signal.SIGTERM, fourth.output
    assert "second signal (SIGTERM): exiting now" in fourth.output

    # 5. the last run finishes; every model is the uninterrupted run's, bit for bit
    fifth = Run(runs, "c", tmp_path / "5.txt")
    assert fifth.finish() == 0, fifth.output
    assert "ppo_ptx_r1: resuming from" in fifth.output
    _same_weights(ref, folder)
    assert not list(folder.rglob("checkpoints")) and not (folder / "run.lock").exists()
    for output in (ref_output, first.output, second.output, fifth.output):  # a readable log, not a terminal's
        assert "\r" not in output
        labels = [(int(i), int(n)) for i, n in re.findall(r"\[(\d+)/(\d+)\]", output)]
        assert labels and all(1 <= i <= n == 7 for i, n in labels)
    assert re.search(r"elapsed .*, about .* left \(\d stages? to go\)", ref_output), ref_output
    assert re.search(r"sft: \d+/\d+ steps \(100%\)", ref_output)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


@pytest.mark.slow
def test_ctrl_c_in_sft_and_sigterm_in_a_stage_without_checkpoints(reference, tmp_path):
    """Ctrl-C mid-SFT stops after the step with a checkpoint; SIGTERM while rankings are sampled (no
    checkpoints there) stops at once and the stage starts over; the end is the reference's."""
    ref, _ = reference
    folder = _fresh_copy(ref, tmp_path / "runs" / "s")
    runs, sft = tmp_path / "runs", folder / "models/sft"
    first = Run(runs, "s", tmp_path / "1.txt")
    first.wait_for("an SFT step", lambda: _lines(sft / "metrics.jsonl") >= 1)
    first.proc.send_signal(signal.SIGINT)
    assert first.finish() == 75, first.output
    assert re.search(r"stopped by SIGINT during sft (at sft step|after sft epoch) \d/3; checkpoint written",
                     first.output)
    second = Run(runs, "s", tmp_path / "2.txt")
    second.wait_for("the rankings stage", lambda: (folder / "data/rankings_r1/stage.partial.json").exists())
    second.proc.send_signal(signal.SIGTERM)
    assert second.finish() == 75, second.output
    assert "stopped by SIGTERM during rankings_r1" in second.output
    assert "sft: resuming from" in second.output
    third = Run(runs, "s", tmp_path / "3.txt")
    assert third.finish() == 0, third.output
    assert "rankings_r1: running ... (interrupted earlier; this stage has no checkpoints: starting over)" \
        in third.output
    _same_weights(ref, folder)


@pytest.mark.slow
def test_kill_mid_ppo_then_changed_options_start_the_stage_over(reference, tmp_path):
    """An interrupted stage whose options changed meanwhile is not resumed: it starts over."""
    ref, _ = reference
    folder = _fresh_copy(ref, tmp_path / "runs" / "o")
    runs, ppo = tmp_path / "runs", folder / "models/round1/ppo"
    first = Run(runs, "o", tmp_path / "1.txt")
    first.wait_for("a PPO checkpoint", _unfinished_with_checkpoint(ppo))
    first.proc.send_signal(signal.SIGKILL)
    first.finish()
    second = Run(runs, "o", tmp_path / "2.txt", "kl_coef=0.05")
    assert second.finish() == 0, second.output
    assert "ppo_r1: running ... (its options or inputs changed: starting over)" in second.output
    info = json.loads((ppo / "stage.json").read_text())
    assert info["resumed_from"] is None
