"""Checkpoints that survive a kill: written to a temp folder, verified, then renamed.

A checkpoint folder ``checkpoints/step-000120/`` holds ``model.safetensors``
(every trainable module's weights by name; for a LoRA model only the adapters,
heads and buffers: its frozen base is the base model's), ``optim.pt`` (optimizer,
scheduler, extra state), ``state.json`` (loop position, RNG states as
lists, anything the stage adds) and, written last, ``manifest.json`` with the
SHA-256 of every file. A folder without a manifest, or whose files do not
match it, is partial or corrupt: it is named in the error, skipped, and the
previous good checkpoint is used. Only a completed folder is ever renamed
into place, so a kill mid-write leaves the earlier checkpoints untouched.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .jsonl import fsync_dir


class CheckpointError(RuntimeError):
    """A checkpoint that is partial, corrupt or does not fit the run."""


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # A checkpoint from a node with more GPUs restores the states of the devices this one has.
        for i, s in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)


def module_tensors(modules: dict[str, torch.nn.Module | dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """{"policy": m, ...} -> flat {"policy.layer.weight": tensor} (shared storage de-duplicated).

    A value may also be a ready state dict of full tensors (a sharded model's
    ``sharding.full_state_dict``), stored the same way.
    """
    from .lora import frozen_parameter_names
    out: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        seen: dict[int, str] = {}
        sd = module if isinstance(module, dict) else module.state_dict(keep_vars=False)
        frozen = set() if isinstance(module, dict) else frozen_parameter_names(module)
        for key, t in sd.items():
            if key in frozen:
                continue  # a LoRA model's frozen base: loaded again from the base model on resume
            ptr = t.data_ptr()
            if ptr in seen and t.numel() > 0:
                continue  # tied weights (e.g. GPT-2 lm_head = wte) are stored once
            seen[ptr] = key
            out[f"{name}.{key}"] = t.detach().cpu().contiguous()
    return out


def load_module_tensors(modules: dict[str, torch.nn.Module], tensors: dict[str, torch.Tensor], where: str) -> None:
    from .lora import frozen_parameter_names
    from .sharding import is_sharded, load_full_state_dict
    for name, module in modules.items():
        prefix = f"{name}."
        sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if is_sharded(module):  # each rank keeps its shard of the full tensors; tied keys are filled in
            missing, unexpected = load_full_state_dict(module, sd, strict=False)
        else:
            missing, unexpected = module.load_state_dict(sd, strict=False)
        # Missing keys are allowed only for tied weights that share storage with a loaded key, and for
        # the frozen base weights of a LoRA model (never stored).
        tied = {k for k in missing if _is_tied(module, k, sd)} | frozen_parameter_names(module)
        bad = [k for k in missing if k not in tied]
        if bad or unexpected:
            raise CheckpointError(f"{where}: {name}: weights do not fit the model "
                                  f"(missing {bad[:3]}, unexpected {list(unexpected)[:3]})")


def _is_tied(module: torch.nn.Module, key: str, loaded: dict) -> bool:
    sd = module.state_dict()
    return any(sd[key].data_ptr() == sd[k].data_ptr() for k in loaded if k in sd)


def save_checkpoint(folder: str | Path, modules: dict[str, torch.nn.Module], objects: dict[str, Any],
                    state: dict[str, Any]) -> Path:
    """Write a checkpoint atomically. ``objects`` (optimizer, scheduler states...) go to optim.pt.

    A write that fails (disk full, quota, I/O error) removes its temp folder and raises
    CheckpointError naming the checkpoints left intact; nothing existing is touched."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
    try:
        return _write_checkpoint(folder, tmp, modules, objects, state)
    except Exception as e:
        full = _disk_full(e, folder.parent)  # before the cleanup gives the space back
        shutil.rmtree(tmp, ignore_errors=True)
        if not (full or isinstance(e, OSError)):
            raise
        kept = ", ".join(p.name for p in list_checkpoints(folder.parent)) or "none yet"
        raise CheckpointError(f"{folder}: could not write the checkpoint ({'disk full' if full else 'write failed'}: "
                              f"{e}); the previous checkpoints are intact ({kept}); free space and run again "
                              f"to continue from the last one") from e


def _disk_full(error: Exception, where: Path) -> bool:
    """Did ``error`` come from a full disk? safetensors and torch.save wrap ENOSPC in their own errors
    (torch's says only "unexpected pos"), so the free space is asked too."""
    if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return True
    if any(s in str(error) for s in ("No space left", "os error 28", "Disk quota")):
        return True
    try:
        return shutil.disk_usage(where).free < (1 << 20)
    except OSError:
        return False


def _write_checkpoint(folder: Path, tmp: Path, modules, objects, state) -> Path:
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(module_tensors(modules), str(tmp / "model.safetensors"))
    torch.save({"objects": objects, "rng": rng_state()}, tmp / "optim.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2, default=float) + "\n")
    files = ["model.safetensors", "optim.pt", "state.json"]
    for name in files:
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())
    manifest = {name: sha256_file(tmp / name) for name in files}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    fsync_dir(tmp)
    if folder.exists():
        old = folder.parent / f".old-{folder.name}-{os.getpid()}"
        folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old)
    else:
        tmp.rename(folder)
    fsync_dir(folder.parent)
    return folder


def verify_checkpoint(folder: str | Path) -> None:
    """Raise CheckpointError naming the file when the folder is partial or corrupt."""
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise CheckpointError(f"{folder}: partial checkpoint (no manifest.json)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        raise CheckpointError(f"{manifest_path}: corrupt manifest") from None
    for name, digest in manifest.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing from checkpoint")
        if sha256_file(path) != digest:
            raise CheckpointError(f"{path}: corrupt (checksum does not match the manifest)")


def list_checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint folders under ``root`` (``step-NNNNNN``), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))


def latest_good_checkpoint(root: str | Path) -> Path | None:
    """The newest checkpoint that verifies and can be resumed (weights-only ones, see ``retain``, cannot);
    bad newer ones are named in a warning and skipped."""
    for folder in reversed(list_checkpoints(root)):
        try:
            verify_checkpoint(folder)
            if not (folder / "optim.pt").is_file():
                continue  # weights only: kept for inspection, not for resume
            return folder
        except CheckpointError as e:
            warnings.warn(f"skipping bad checkpoint: {e}", stacklevel=2)
    return None


def load_checkpoint(folder: str | Path, modules: dict[str, torch.nn.Module]) -> tuple[dict, dict]:
    """Verify, load weights into ``modules``, restore RNG; return (objects, state)."""
    folder = Path(folder)
    verify_checkpoint(folder)
    load_module_tensors(modules, load_file(str(folder / "model.safetensors")), str(folder))
    blob = load_objects(folder / "optim.pt")
    set_rng_state(blob["rng"])
    state = json.loads((folder / "state.json").read_text())
    return blob["objects"], state


# What optim.pt holds besides tensors and plain containers: numpy's RNG state (a uint32 ndarray).
NUMPY_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_objects(path: Path) -> dict[str, Any]:
    """optim.pt with torch's weights-only unpickler: a checkpoint folder from someone else
    cannot run code on resume. Anything but tensors, numbers, strings, containers and numpy
    arrays is a CheckpointError naming the file."""
    try:
        with torch.serialization.safe_globals(NUMPY_GLOBALS):
            return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: holds objects other than tensors, numbers and arrays, refused "
                              f"(not unpickled): {_unpickler_reason(e)}") from None


def _unpickler_reason(error: Exception) -> str:
    """The line of torch's weights-only error that names what was refused."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "but got" in line]
    return (named or lines or ["unknown"])[0]


def prune_checkpoints(root: str | Path, keep: int) -> None:
    """Keep the newest ``keep`` good checkpoints; remove older ones and stray temp folders (a checkpoint
    half-written, or one being replaced, when an earlier process was killed: up to a checkpoint's size each)."""
    folders = list_checkpoints(root)
    for folder in folders[:-keep] if keep > 0 else []:
        shutil.rmtree(folder, ignore_errors=True)
    for stray in _stray_temp_folders(Path(root)):
        shutil.rmtree(stray, ignore_errors=True)


def _stray_temp_folders(root: Path) -> list[Path]:
    """``.tmp-<name>-<pid>`` / ``.old-<name>-<pid>`` folders of :func:`save_checkpoint` left by another process."""
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.is_dir() and p.name.startswith((".tmp-", ".old-"))
            and not p.name.endswith(f"-{os.getpid()}")]


def clear_checkpoints(root: str | Path) -> list[str]:
    """Empty ``root`` (a stage's checkpoints/ folder) for a run that starts from step 0: an earlier run's
    checkpoints there, kept, outnumber this run's (its own were pruned in their favour as soon as written) and
    a later --resume would continue the earlier run. Returns the names of the checkpoints removed."""
    root = Path(root)
    if not root.is_dir():
        return []
    removed = [p.name for p in list_checkpoints(root)]
    shutil.rmtree(root)
    return removed


def retain(root: str | Path, keep: int, keep_optimizer: bool) -> None:
    """What a finished stage keeps of ``root`` (its checkpoints/ folder): the newest ``keep``
    checkpoints, with their optimizer state (optim.pt) only when ``keep_optimizer``; everything
    else (older checkpoints, the kept-best copy, temp folders) is deleted, ``root`` too when empty."""
    root = Path(root)
    if not root.is_dir():
        return
    kept = list_checkpoints(root)[-keep:] if keep > 0 else []
    for path in root.iterdir():
        if path not in kept:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    for folder in kept if not keep_optimizer else []:
        strip_optimizer(folder)
    if not any(root.iterdir()):
        root.rmdir()


def strip_optimizer(folder: str | Path) -> None:
    """Drop optim.pt (optimizer, scheduler and RNG states) from a checkpoint: its weights and state.json
    stay verifiable, but it can no longer be resumed."""
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not (folder / "optim.pt").is_file() or not manifest_path.is_file():
        return
    manifest = json.loads(manifest_path.read_text())
    manifest.pop("optim.pt", None)
    tmp = folder / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, manifest_path)  # the manifest first: a kill in between leaves a valid weights-only folder
    (folder / "optim.pt").unlink()
