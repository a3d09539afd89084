"""The options a checkpoint was trained with, and the check that ``--resume`` continues that training.

A checkpoint's optimizer and learning-rate schedule were made from its stage's options: resuming with
another ``lr`` kept the old schedule (the scheduler's saved state holds the old base rate) while
``config.resolved.json`` recorded the new one. So every checkpoint stores its options, and a resume whose
options differ is refused before anything is written, naming each change. Free to change: the options that
cannot change the numbers (``stage_keys.RUNTIME_OPTIONS``: device, progress bars, checkpoint cadence ...),
``sharding`` (checkpoints hold full tensors that resume sharded or not), and which path a file or folder
option names (a moved run folder resumes; the pipeline's stage keys check what those paths hold), and what a
config class lists in ``resume_may_change`` (PPO's ``iterations``: its learning rate does not depend on them,
so a run continues for more). Setting or clearing a path option is a change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from . import config as config_mod
from .checkpoint import list_checkpoints
from .stage_keys import RUNTIME_OPTIONS

FREE_ON_RESUME = RUNTIME_OPTIONS | {"sharding"}
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


def check_resume(cfg: Any) -> None:
    """With ``cfg.resume``, a ConfigError naming every option that differs from those of the newest checkpoint
    in ``cfg.out_dir/checkpoints`` (checkpoints of older versions stored none: nothing to compare)."""
    if not getattr(cfg, "resume", False):
        return
    folders = [f for f in list_checkpoints(Path(cfg.out_dir) / "checkpoints") if (f / "state.json").is_file()]
    if not folders:
        return
    try:
        saved = json.loads((folders[-1] / "state.json").read_text()).get("config")
    except (OSError, json.JSONDecodeError):
        return  # a damaged newest checkpoint: resume skips it with its own warning
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
