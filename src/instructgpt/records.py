"""What a run leaves behind besides weights: metrics as JSON lines, config and version."""

from __future__ import annotations

import contextlib
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch

from . import __version__
from . import config as config_mod


class MetricsLog:
    """Append-only ``metrics.jsonl``; each line is {"step": n, "time": t, "sft/loss": ...}.

    On resume, lines for steps after the checkpoint are dropped first, so the
    log of a resumed run reads like that of an uninterrupted one. A stage that
    logs a summary once training is over (at the last step, after the last
    checkpoint) names a metric of that row in ``after_training``: such rows are
    dropped too, as the resumed run logs them again. ``trackers``
    (``tracking.Run``, from ``report_to``) get every row too, under the same
    names; ``close()`` ends their runs.
    """

    def __init__(self, path: str | Path, enabled: bool = True, trackers=None, after_training: tuple[str, ...] = ()):
        self.path = Path(path)
        self.enabled = enabled
        self.trackers = trackers if enabled else None
        self.after_training = after_training

    def truncate_after(self, step: int) -> None:
        """Drop the rows a run from checkpoint ``step`` logs again; the trackers restart at ``step`` with the
        rows kept there."""
        kept: list[str] = []
        if self.enabled and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if _row_step(line, step + 1) <= step and not self._after_training(line)]
            self.path.write_text("".join(line + "\n" for line in kept))
        if self.trackers is not None:
            self.trackers.resume_at(step, [_row_values(line) for line in kept if _row_step(line, -1) == step])

    def _after_training(self, line: str) -> bool:
        return any(name in self.after_training for name in json.loads(line))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled or not metrics:  # nothing to say (an epoch end without validation data)
            return
        row = {"step": step, "time": round(time.time(), 3)}
        for k, v in metrics.items():
            if isinstance(v, torch.Tensor):
                v = v.item()
            if isinstance(v, float) and not math.isfinite(v):
                v = str(v)
            row[k] = v
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.trackers is not None:
            self.trackers.log(step, metrics)

    def close(self, error: BaseException | None = None) -> None:
        """Close the trackers (once), their runs marked finished, or failed/killed by ``error``."""
        if self.trackers is not None:
            from .tracking import Outcome
            self.trackers.close(Outcome.of(error))
            self.trackers = None

    @contextlib.contextmanager
    def closed_on_error(self):
        """Closes the trackers if the block raises, their runs marked failed, or killed by a stop."""
        try:
            yield self
        except BaseException as e:
            self.close(e)
            raise


def _row_step(line: str, torn: int) -> int:
    """The step of a metrics line; ``torn`` for an empty line or one cut short (a full disk or a crash
    stopped its write): such a line was being written after the last checkpoint and is dropped on resume."""
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError):
        return torn


def _row_values(line: str) -> dict[str, Any]:
    """The metrics of a metrics line as they were logged (non-finite values, written as strings, back as floats)."""
    row = json.loads(line)
    return {k: _logged_value(v) for k, v in row.items() if k not in ("step", "time")}


def _logged_value(v: Any) -> Any:
    return float(v) if v in ("nan", "inf", "-inf") else v


def open_metrics(out_dir: str | Path, stage: str, cfg: Any, after_training: tuple[str, ...] = ()) -> MetricsLog:
    """A stage's ``metrics.jsonl`` (written by the main process) with the trackers of ``cfg.report_to``;
    ``after_training``: see ``MetricsLog``."""
    from . import distributed as dist
    from .tracking import open_run
    return MetricsLog(Path(out_dir) / "metrics.jsonl", enabled=dist.is_main(), trackers=open_run(cfg, stage, out_dir),
                      after_training=after_training)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def logged_history(path: str | Path, step_key: str) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl as a training loop's history, ``{step_key: n, metric: value ...}`` (what a
    resumed loop did not run itself; non-finite values, logged as strings, back as floats)."""
    return [{step_key: row["step"], **{k: _logged_value(v) for k, v in row.items() if k not in ("step", "time")}}
            for row in read_metrics(path)]


def write_run_info(out_dir: str | Path, stage: str, cfg: Any, extra: dict | None = None) -> None:
    """``config.resolved.json`` (what ran) and ``instructgpt.json`` (stage, version, environment)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_mod.save(cfg, out_dir / "config.resolved.json")
    info = {
        "stage": stage,
        "instructgpt_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "config": config_mod.to_dict(cfg),
        **({"resolved": resolved} if (resolved := resolved_precision(cfg)) else {}),
        **(extra or {}),
    }
    (out_dir / "instructgpt.json").write_text(json.dumps(info, indent=2, default=str) + "\n")


def resolved_precision(cfg: Any) -> dict[str, str]:
    """What ``device``, ``precision`` and ``dtype`` (``auto`` by default: another value on another machine)
    resolved to where the stage ran: the device, the autocast of forward passes and the dtype of frozen
    weights; {} for a config without them."""
    if not (hasattr(cfg, "device") and hasattr(cfg, "precision")):
        return {}
    from . import distributed as dist
    from .models import DTYPES, pick_device, resolve_dtype
    device = pick_device(cfg.device)
    autocast = dist.resolve_precision(cfg.precision, device)
    out = {"device": str(device), "autocast": "bf16" if autocast == torch.bfloat16 else "off (fp32)"}
    if hasattr(cfg, "dtype"):
        out["frozen_dtype"] = {v: k for k, v in DTYPES.items()}[resolve_dtype(cfg.dtype, device)]
    return out


def update_run_info(out_dir: str | Path, **fields: Any) -> None:
    path = Path(out_dir) / "instructgpt.json"
    info = json.loads(path.read_text()) if path.exists() else {}
    info.update(fields)
    path.write_text(json.dumps(info, indent=2, default=str) + "\n")
