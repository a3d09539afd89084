"""What a finished stage keeps on disk, and checkpoints that survive a full disk."""

import errno
import json
import os
import shutil
import subprocess
import uuid

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import repeat_demos, write_jsonl
from instructgpt import checkpoint as ckpt
from instructgpt import config
from instructgpt.checkpoint import (CheckpointError, latest_good_checkpoint, list_checkpoints, retain,
                                    save_checkpoint, verify_checkpoint)


def _save(root, step, n=1000):
    model = torch.nn.Linear(n, 1)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, n)).sum().backward()
    opt.step()
    return save_checkpoint(root / f"step-{step:07d}", {"model": model}, {"optimizer": opt.state_dict()},
                           {"global_step": step})


def test_retain_keeps_the_newest_and_drops_optimizer_state(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        _save(root, step)
    save_checkpoint(root / "best", {"model": torch.nn.Linear(3, 1)}, {}, {"epoch": 0})
    (root / ".tmp-step-0000004-123").mkdir()  # a write killed half way
    retain(root, keep=2, keep_optimizer=True)
    assert sorted(p.name for p in root.iterdir()) == ["step-0000002", "step-0000003"]
    assert latest_good_checkpoint(root).name == "step-0000003"
    retain(root, keep=1, keep_optimizer=False)
    (kept,) = list(root.iterdir())
    assert kept.name == "step-0000003" and not (kept / "optim.pt").exists()
    verify_checkpoint(kept)  # weights and state still verify against the manifest
    assert set(load_file(str(kept / "model.safetensors"))) == {"model.weight", "model.bias"}
    assert latest_good_checkpoint(root) is None  # but a weights-only checkpoint is not resumed from
    retain(root, keep=0, keep_optimizer=False)
    assert not root.exists()
    retain(root, keep=0, keep_optimizer=False)  # nothing there: nothing to do


def test_a_training_stage_without_keep_optimizer_leaves_weights_only(tmp_path, tiny_gpt2):
    from instructgpt.sft import SFTConfig, train_sft
    data = write_jsonl(tmp_path / "train.jsonl", repeat_demos(32, 1))
    valid = write_jsonl(tmp_path / "valid.jsonl", repeat_demos(8, 2))
    cfg = config.from_dict(SFTConfig, dict(model=str(tiny_gpt2), train=str(data), valid=str(valid),
                                           out_dir=str(tmp_path / "o"), epochs=3, batch_size=8, micro_batch_size=8,
                                           progress=False, keep_checkpoints=1, keep_optimizer=False))
    train_sft(cfg)
    kept = list((tmp_path / "o/checkpoints").iterdir())
    assert [p.name for p in kept] == ["step-0000012"]  # the kept-best copy is gone too
    assert sorted(p.name for p in kept[0].iterdir()) == ["manifest.json", "model.safetensors", "state.json"]


def test_disk_full_while_saving_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    first = _save(root, 1)
    before = {p.name: p.read_bytes() for p in first.iterdir()}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ckpt, "save_file", full)
    with pytest.raises(CheckpointError, match=r"step-0000002: could not write the checkpoint \(disk full.*"
                                              r"previous checkpoints are intact \(step-0000001\)"):
        _save(root, 2)
    assert sorted(p.name for p in root.iterdir()) == ["step-0000001"]  # no temp folder left behind
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    verify_checkpoint(first)


def test_disk_full_seen_through_torch_saves_vague_error(tmp_path, monkeypatch):
    """torch.save says only 'unexpected pos' when the disk fills: the free space tells."""
    root = tmp_path / "checkpoints"
    _save(root, 1)

    def vague(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    monkeypatch.setattr(ckpt.torch, "save", vague)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100, 100, 0))
    with pytest.raises(CheckpointError, match="disk full"):
        _save(root, 2)
    assert [p.name for p in root.iterdir()] == ["step-0000001"]


def test_a_bug_while_saving_is_not_reported_as_a_full_disk(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"

    def bug(*args, **kwargs):
        raise ValueError("not a tensor")
    monkeypatch.setattr(ckpt, "save_file", bug)
    with pytest.raises(ValueError, match="not a tensor"):
        _save(root, 1)
    assert list(root.iterdir()) == []


@pytest.fixture
def small_filesystem(tmp_path):
    """A 6 MB tmpfs (needs root; skipped elsewhere)."""
    mount = tmp_path / f"fs-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(mount, leave: int):
    """Fill the file system until ``leave`` bytes are free."""
    free = shutil.disk_usage(mount).free
    with open(mount / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))
        f.flush()
        os.fsync(f.fileno())


def test_a_really_full_disk_mid_sft_then_resume_gives_the_same_weights(tmp_path, tiny_gpt2, small_filesystem):
    """SFT on a 6 MB file system that fills up after its first checkpoint: the stage stops with a
    clear error, the checkpoint stays good; with space freed, --resume ends where an uninterrupted run does."""
    import instructgpt.sft as sft_mod
    from instructgpt.sft import SFTConfig, train_sft
    data = write_jsonl(tmp_path / "train.jsonl", repeat_demos(48, 1))
    common = dict(model=str(tiny_gpt2), train=str(data), epochs=2, batch_size=8, micro_batch_size=8, dropout=0.1,
                  lr=3e-3, save_every=2, keep_checkpoints=1, progress=False)
    train_sft(config.from_dict(SFTConfig, dict(out_dir=str(tmp_path / "full"), **common)))
    out = small_filesystem / "sft"
    cfg = config.from_dict(SFTConfig, dict(out_dir=str(out), **common))

    def fill_after_first_checkpoint(step):
        if step == 2:
            _fill(small_filesystem, leave=64 << 10)
    original = sft_mod.fit
    sft_mod.fit = lambda *a, **k: original(*a, **k, on_step=fill_after_first_checkpoint)
    try:
        with pytest.raises(CheckpointError, match=r"step-0000004: could not write the checkpoint \(disk full.*"
                                                  r"intact \(step-0000002\)"):
            train_sft(cfg)
    finally:
        sft_mod.fit = original
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-0000002"]
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    verify_checkpoint(out / "checkpoints/step-0000002")
    (small_filesystem / "filler").unlink()
    cfg.resume = True
    resumed = train_sft(cfg)
    assert resumed.fit.resumed_from.endswith("step-0000002")
    a, b = load_file(str(tmp_path / "full/model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_drops_a_metrics_line_cut_short_by_a_full_disk(tmp_path):
    """A full disk (or a crash) mid-write leaves metrics.jsonl's last line cut short; the resume that
    follows once there is space crashed on it (JSONDecodeError) instead of continuing from its checkpoint."""
    from instructgpt.records import MetricsLog, read_metrics
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in (1, 2, 3):
        log.log(step, {"sft/loss": 1.0 / step})
    with open(log.path, "a") as f:
        f.write('{"step": 4, "time": 17')  # the disk had no room for the rest
    log.truncate_after(2)
    assert [row["step"] for row in read_metrics(log.path)] == [1, 2]
    log.log(3, {"sft/loss": 0.5})
    assert [row["step"] for row in read_metrics(log.path)] == [1, 2, 3]


def test_a_run_that_starts_over_in_an_earlier_runs_out_dir_keeps_its_own_checkpoints_and_metrics(tmp_path, tiny_gpt2):
    """Without --resume, an earlier run's checkpoints in out_dir (higher step numbers) were kept and this run's
    pruned as soon as written: a stop named a checkpoint that no longer existed and --resume continued (or was
    refused on) the earlier run; its metrics rows were appended to the earlier run's."""
    import instructgpt.sft as sft_mod
    from instructgpt import interrupt
    from instructgpt.records import read_metrics
    from instructgpt.sft import SFTConfig, train_sft
    data = write_jsonl(tmp_path / "train.jsonl", repeat_demos(48, 1))
    common = dict(model=str(tiny_gpt2), train=str(data), out_dir=str(tmp_path / "sft"), epochs=2, batch_size=8,
                  micro_batch_size=8, save_every=2, progress=False)
    train_sft(config.from_dict(SFTConfig, dict(lr=3e-3, **common)))
    assert [p.name for p in list_checkpoints(tmp_path / "sft/checkpoints")] == ["step-0000010", "step-0000012"]
    cfg = config.from_dict(SFTConfig, dict(lr=1e-3, **common))
    original = sft_mod.fit
    sft_mod.fit = lambda *a, **k: original(*a, **k, on_step=lambda s: s == 3 and interrupt.request_stop())
    try:
        with pytest.raises(interrupt.Stopped) as e:
            train_sft(cfg)
    finally:
        sft_mod.fit = original
        interrupt.clear()
    assert e.value.checkpoint.endswith("step-0000004")
    assert [p.name for p in list_checkpoints(tmp_path / "sft/checkpoints")] == ["step-0000002", "step-0000004"]
    assert [row["step"] for row in read_metrics(tmp_path / "sft/metrics.jsonl")] == [1, 2, 3, 4]
    cfg.resume = True
    assert train_sft(cfg).fit.resumed_from.endswith("step-0000004")


def test_a_checkpoint_half_written_by_a_killed_process_is_pruned_by_the_next_save(tmp_path):
    """kill -9 (or a second Ctrl-C) mid-write leaves .tmp-step-N-<pid>, up to a checkpoint's size; prune said it
    removed stray temp folders but kept them until the stage finished (past "only the 2 newest checkpoints")."""
    from instructgpt.checkpoint import prune_checkpoints
    root = tmp_path / "checkpoints"
    _save(root, 1)
    for stray in (".tmp-step-0000002-999999999", ".old-step-0000001-999999999"):  # another, dead, process's
        (root / stray).mkdir()
        (root / stray / "model.safetensors").write_bytes(b"\0" * 1000)
    _save(root, 3)
    prune_checkpoints(root, 2)
    assert sorted(p.name for p in root.iterdir()) == ["step-0000001", "step-0000003"]


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("exit 0",))


def test_resuming_a_checkpoint_whose_optim_pt_holds_code_refuses_it_without_running_it(tmp_path, monkeypatch):
    folder = _save(tmp_path, 1, n=3)
    model = torch.nn.Linear(3, 1)
    objects, state = ckpt.load_checkpoint(folder, {"model": model})  # a real one loads weights-only
    assert state["global_step"] == 1 and objects["optimizer"]["state"]
    torch.save({"objects": {"x": _RunsCode()}, "rng": ckpt.rng_state()}, folder / "optim.pt")
    ran = []
    monkeypatch.setattr(os, "system", lambda cmd: ran.append(cmd))
    manifest = {n: ckpt.sha256_file(folder / n) for n in ("model.safetensors", "optim.pt", "state.json")}
    (folder / "manifest.json").write_text(json.dumps(manifest))  # a stranger's folder verifies
    with pytest.raises(CheckpointError, match=r"optim.pt: holds objects other than tensors.*system"):
        ckpt.load_checkpoint(folder, {"model": model})
    assert ran == []
