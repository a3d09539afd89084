"""The options a checkpoint was trained with, and the check that ``--resume`` continues that training.

A checkpoint's optimizer and learning-rate schedule were made from its stage's options: resuming with
another ``lr`` kept the old schedule (the scheduler's saved state holds the old base rate) while
``config.resolved.json`` recorded the new one. So every checkpoint stores its options, and a resume whose
options differ is refused before anything is written, naming each change. Free to change: the options that
cannot change the numbers (``stage_keys.RUNTIME_OPTIONS``: device, progress bars, checkpoint cadence ...),
``sharding`` (checkpoints hold full tensors that resume sharded or not), ``gradient_checkpointing`` (the
same gradients, dropout's included: what a run killed by running out of memory resumes with), the kernels
(``compile``, ``attn_implementation``: the same functions to float rounding, as on another device), which path a
file or folder option names (a moved run folder resumes; the pipeline's stage keys check what those paths
hold), and what a config class lists in ``resume_may_change`` (PPO's ``iterations``: its learning rate does not depend on them,
so a run continues for more). Setting or clearing a path option is a change.

What a path option names must still hold what it held: a resume on another base model (its folder replaced
in place, say) would continue adapters or a KL reference that belong to the old one. So every checkpoint also
stores a fingerprint of each input file or folder (``input_fingerprints``: each file's relative path, size
and the bytes of its first and last 64 KiB, cheap for any model size), and a resume whose inputs hold other
files is refused naming the option and the files. A moved or copied input has the same fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from . import config as config_mod
from .checkpoint import list_checkpoints
from .run_lock import LOCK_NAME
from .stage_keys import RUNTIME_OPTIONS

FREE_ON_RESUME = RUNTIME_OPTIONS | {"sharding", "gradient_checkpointing", "compile", "attn_implementation"}
PATH = "<a path>"  # what a checkpoint remembers of an option naming a file or folder


def remembered(cfg: Any) -> dict[str, Any]:
    """The options of ``cfg`` a resume must keep, as JSON values (paths as ``PATH``)."""
    def value(v: Any) -> Any:
        if isinstance(v, str) and v and ("/" in v or os.sep in v or Path(v).exists()):
            return PATH
        return v
    free = FREE_ON_RESUME | set(getattr(cfg, "resume_may_change", ()))
    kept = {k: value(v) for k, v in config_mod.to_dict(cfg).items() if k not in free}
    return json.loads(json.dumps(kept, default=str))


SAMPLE = 64 << 10  # bytes read from each end of a file for its fingerprint


def _file_print(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(SAMPLE))
        if size > 2 * SAMPLE:
            f.seek(size - SAMPLE)
            h.update(f.read(SAMPLE))
    return h.hexdigest()[:16]


def fingerprint(path: Path) -> dict[str, str]:
    """{relative path: fingerprint} of a file, or of every file in a folder (hidden ones and lock files left
    out: a run holds the lock of every stage folder it reads, and the file says who holds it)."""
    if path.is_file():
        return {path.name: _file_print(path)}
    return {f.relative_to(path).as_posix(): _file_print(f) for f in sorted(path.rglob("*"))
            if f.is_file() and f.name != LOCK_NAME
            and not any(part.startswith(".") for part in f.relative_to(path).parts)}


def input_fingerprints(cfg: Any) -> dict[str, dict[str, str]]:
    """{option: fingerprint} of the options naming an existing input file or folder (not ``out_dir``, nor a
    folder holding it, where the checkpoints themselves are written)."""
    out = Path(getattr(cfg, "out_dir", "") or ".").resolve()
    prints = {}
    for key, value in config_mod.to_dict(cfg).items():
        if key in FREE_ON_RESUME or key == "out_dir" or not isinstance(value, str) or not value:
            continue
        path = Path(value)
        if not path.exists() or path.resolve() == out or path.resolve() in out.parents:
            continue
        prints[key] = fingerprint(path)
    return prints


def checkpoint_record(cfg: Any) -> dict[str, Any]:
    """What a checkpoint's state.json keeps for :func:`check_resume`: the options and the inputs' fingerprints."""
    return {"config": remembered(cfg), "inputs": input_fingerprints(cfg)}


def _changed_inputs(saved: dict[str, dict[str, str]], cfg: Any) -> list[str]:
    now = input_fingerprints(cfg)
    changes = []
    for key in sorted(set(saved) & set(now)):
        if saved[key] != now[key]:
            files = sorted(f for f in set(saved[key]) | set(now[key]) if saved[key].get(f) != now[key].get(f))
            shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
            changes.append(f"{key} ({getattr(cfg, key)}): {shown}")
    return changes


def check_resume(cfg: Any) -> None:
    """With ``cfg.resume``, a ConfigError naming every option that differs from those of the newest checkpoint
    in ``cfg.out_dir/checkpoints`` (checkpoints of older versions stored none: nothing to compare)."""
    if not getattr(cfg, "resume", False):
        return
    folders = [f for f in list_checkpoints(Path(cfg.out_dir) / "checkpoints") if (f / "state.json").is_file()]
    if not folders:
        return
    try:
        state = json.loads((folders[-1] / "state.json").read_text())
    except (OSError, json.JSONDecodeError):
        return  # a damaged newest checkpoint: resume skips it with its own warning
    saved = state.get("config")
    if saved is None:
        return
    now = remembered(cfg)
    unset = "(not set)"
    changed = [f"{k} {saved.get(k, unset)!r} -> {now.get(k, unset)!r}" for k in sorted(set(saved) | set(now))
               if saved.get(k, unset) != now.get(k, unset)]
    if changed:
        raise config_mod.ConfigError(
            f"{folders[-1]}: --resume with changed options: {'; '.join(changed)}. The checkpoint's optimizer and "
            f"learning-rate schedule were made with the old values; resume with them, or start over without "
            f"--resume (or in another out_dir)")
    changed_inputs = _changed_inputs(state.get("inputs") or {}, cfg)
    if changed_inputs:
        raise config_mod.ConfigError(
            f"{folders[-1]}: --resume with inputs that hold other files than when the checkpoint was made: "
            f"{'; '.join(changed_inputs)}. The checkpoint continues training on the old ones (its adapters, KL "
            f"reference and data order belong to them); restore them, or start over without --resume (or in "
            f"another out_dir)")
