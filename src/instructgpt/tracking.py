"""Experiment trackers: TensorBoard, Weights & Biases, Trackio, MLflow (``report_to=``).

``metrics.jsonl`` stays the source of truth; trackers get a copy of every row
``records.MetricsLog`` writes, under the same names (``sft/loss``, ``ppo/kl``,
``time/generate`` ...) and the same step, plus the resolved config once. Each
tracker is an optional package (``pip install 'instructgpt[track]'`` brings
TensorBoard, W&B and MLflow; Trackio is its own extra); naming one that is not
installed is a config error naming the pip command.

Where each one writes (a run is named ``<stage>-<out_dir name>`` unless
``run_name`` is set):

  tensorboard  out_dir/tensorboard/ (event files; ``tensorboard --logdir out_dir``)
  wandb        project $WANDB_PROJECT (default instructgpt); files under out_dir/wandb/;
               WANDB_MODE=offline works without a network (``wandb sync`` later)
  trackio      project $TRACKIO_PROJECT (default instructgpt), its local store
               ($TRACKIO_DIR, default ~/.cache/huggingface/trackio); ``trackio show``
  mlflow       $MLFLOW_TRACKING_URI, else a SQLite store mlflow.db in ``tracking_store`` (default
               out_dir; ``instructgpt run``: the run folder, one store for every stage); experiment
               $MLFLOW_EXPERIMENT_NAME (default instructgpt); ``mlflow ui --backend-store-uri ...``

A tracker that fails while the run goes on (its server unreachable ...) is dropped with a
warning: metrics.jsonl still has every row. One that cannot start (first row) is an error.

A stage's tracker runs end with its outcome: finished, failed (an error, or a process that
ended before the stage did) or killed (stopped by Ctrl-C/SIGTERM): MLflow's run status
FINISHED/FAILED/KILLED, W&B's exit code 0/1/128+signal.

On resume the trackers are started after the checkpoint is read: TensorBoard
drops its events from the checkpoint's step on (``purge_step``) and writes that
step's rows again from metrics.jsonl (a summary row logged there after training
is dropped and logged again by the resumed run); W&B, Trackio and MLflow start a
new run that continues at that step.
Only the main process of a multi-process run reports.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ConfigError, opt

TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow")
# tracker -> (module to import, pip command)
_PACKAGES = {"tensorboard": ("tensorboard", "pip install 'instructgpt[track]'"),
             "wandb": ("wandb", "pip install 'instructgpt[track]'"),
             "mlflow": ("mlflow", "pip install 'instructgpt[track]'"),
             "trackio": ("trackio", "pip install 'instructgpt[trackio]'")}
PROJECT = "instructgpt"


@dataclass
class TrackingOptions:
    """Experiment tracking, besides metrics.jsonl."""
    report_to: str = opt("none", "Experiment trackers that also get every metric and the resolved config "
                                 "(comma list): none, tensorboard, wandb, trackio, mlflow. metrics.jsonl is always "
                                 "written. Needs pip install 'instructgpt[track]' (trackio: [trackio]).")
    run_name: str = opt("", "Run name in the trackers (empty = <stage>-<out_dir folder name>).")
    tracking_store: str = opt("", "Folder of MLflow's SQLite store (mlflow.db) when MLFLOW_TRACKING_URI is not set "
                                  "(empty = out_dir). 'instructgpt run' gives its run folder: one store, every stage.")

    def validate_tracking(self) -> None:
        parse_report_to(self.report_to)


def parse_report_to(value: str) -> list[str]:
    """``"tensorboard,wandb"`` -> ["tensorboard", "wandb"]; ``none``/empty -> []; unknown or missing -> ConfigError."""
    names = [v.strip().lower() for v in str(value).split(",") if v.strip()]
    if names == ["none"] or not names:
        return []
    if "none" in names:
        raise ConfigError(f"report_to: none means no tracker; it cannot be listed with trackers ({value!r}): "
                          f"name only the trackers, or none alone")
    out = []
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"report_to: {name!r} is not one of none, {', '.join(TRACKERS)}")
        module, pip = _PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"report_to: {name} needs the {module} package, which is not installed: {pip}")
        if name not in out:
            out.append(name)
    return out


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric entries (trackers take scalars; metrics.jsonl keeps everything)."""
    out = {}
    for k, v in metrics.items():
        if hasattr(v, "item"):
            v = v.item()
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
    return out


def flat_config(config: dict[str, Any]) -> dict[str, str | float | int | bool]:
    """Config values as tracker parameters: scalars as they are, lists and dicts as JSON text."""
    return {k: v if isinstance(v, (str, int, float, bool)) else json.dumps(v) for k, v in config.items()}


# ----------------------------------------------------------------------------- the trackers

class _TensorBoard:
    def __init__(self, run: "Run"):
        from torch.utils.tensorboard import SummaryWriter
        # on resume, events from the checkpoint's step on (logged before the kill) are dropped and the rows
        # metrics.jsonl keeps at that step written again
        self.writer = SummaryWriter(log_dir=str(run.out_dir / "tensorboard"), purge_step=run.resume_step, flush_secs=10)
        if not run.resume_step:  # a resumed run keeps the config its first start wrote (the same options)
            self.writer.add_text("config", "```\n" + json.dumps(run.config, indent=2, default=str) + "\n```", 0)
        for row in run.resume_rows:
            self.log(run.resume_step, _numbers(row))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)

    def close(self, outcome: "Outcome") -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, run: "Run"):
        import wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", PROJECT), name=run.name, dir=str(run.out_dir),
                              config=run.config, job_type=run.stage, reinit="create_new")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def close(self, outcome: "Outcome") -> None:
        self.run.finish(exit_code=outcome.exit_code)


class _Trackio:
    def __init__(self, run: "Run"):
        import trackio
        self.trackio = trackio
        trackio.init(project=os.environ.get("TRACKIO_PROJECT", PROJECT), name=run.name, config=run.config)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.trackio.log(metrics, step=step)

    def close(self, outcome: "Outcome") -> None:
        self.trackio.finish()


class _MLflow:
    def __init__(self, run: "Run"):
        import mlflow
        self.mlflow = mlflow
        store = Path(run.config.get("tracking_store") or run.out_dir)
        store.mkdir(parents=True, exist_ok=True)
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(store / 'mlflow.db').resolve()}"
        self.client = mlflow.MlflowClient(uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT)
        found = self.client.get_experiment_by_name(name)
        experiment = found.experiment_id if found else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment, run_name=run.name, tags={"stage": run.stage}).info.run_id
        params = [mlflow.entities.Param(k, str(v)[:6000]) for k, v in flat_config(run.config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per call
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, step: int, metrics: dict[str, float]) -> None:
        import time
        now = int(time.time() * 1000)
        batch = [self.mlflow.entities.Metric(k, v, now, step) for k, v in metrics.items() if math.isfinite(v)]
        self.client.log_batch(self.run_id, metrics=batch)

    def close(self, outcome: "Outcome") -> None:
        self.client.set_terminated(self.run_id, status=outcome.status)


@dataclass(frozen=True)
class Outcome:
    """How a stage's tracker runs end: MLflow's status and W&B's exit code."""
    status: str
    exit_code: int

    @classmethod
    def of(cls, error: BaseException | None) -> "Outcome":
        """Finished without an error, killed by a stop (Ctrl-C, SIGTERM), failed otherwise."""
        from .interrupt import Stopped
        if error is None:
            return FINISHED
        if isinstance(error, Stopped):
            return cls("KILLED", 128 + error.signum)
        if isinstance(error, KeyboardInterrupt):
            return cls("KILLED", 130)
        return FAILED


FINISHED, FAILED = Outcome("FINISHED", 0), Outcome("FAILED", 1)

_CLASSES = {"tensorboard": _TensorBoard, "wandb": _Wandb, "trackio": _Trackio, "mlflow": _MLflow}


class Run:
    """The trackers of one stage run, started on the first metrics row (after a resume is known)."""

    def __init__(self, names: list[str], stage: str, out_dir: str | Path, config: dict[str, Any],
                 name: str = ""):
        self.names, self.stage, self.out_dir = names, stage, Path(out_dir)
        self.config = config
        self.name = name or f"{stage}-{self.out_dir.resolve().name}"
        self.resume_step: int | None = None
        self.resume_rows: list[dict[str, Any]] = []
        self.trackers: list | None = None
        atexit.register(self.close, FAILED)  # still open at exit: the process ended before the stage did

    def resume_at(self, step: int, rows: list[dict[str, Any]]) -> None:
        """The run goes on from ``step`` (0: from the start), where metrics.jsonl keeps ``rows``."""
        self.resume_step, self.resume_rows = step, rows

    def start(self) -> None:
        """Start every tracker's run; one that cannot start is a ConfigError naming it (the runs of those
        started before it end as failed)."""
        if self.trackers is not None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.trackers = []
        for name in self.names:
            try:
                self.trackers.append(_CLASSES[name](self))
            except Exception as e:
                self.close(FAILED)
                reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise ConfigError(f"report_to: {name} could not start its run for {self.out_dir} "
                                  f"({type(e).__name__}: {reason}); fix it or leave {name} out of report_to "
                                  f"(metrics.jsonl is written either way)") from e

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        values = _numbers(metrics)
        if not values:
            return
        self.start()
        for t in list(self.trackers):
            try:
                t.log(step, values)
            except Exception as e:  # an outage of a tracker (its server, its disk) must not end the training
                self.trackers.remove(t)
                _warn_failed(t, f"at step {step}", e, "it gets no further metrics")

    def close(self, outcome: Outcome = FINISHED) -> None:
        for t in self.trackers or []:
            try:
                t.close(outcome)
            except Exception as e:
                _warn_failed(t, "while closing its run", e, "its last metrics may be missing there")
        self.trackers = []


def _warn_failed(tracker, when: str, error: Exception, consequence: str) -> None:
    name = next(n for n, cls in _CLASSES.items() if isinstance(tracker, cls))
    warnings.warn(f"report_to: {name} failed {when} ({type(error).__name__}: {error}); {consequence}, the run "
                  f"goes on (metrics.jsonl has every row)", stacklevel=3)


def open_run(cfg: Any, stage: str, out_dir: str | Path) -> Run | None:
    """The trackers ``cfg.report_to`` names for this stage, or None (none asked for, or not the main process)."""
    from . import config as config_mod
    from . import distributed as dist
    names = parse_report_to(getattr(cfg, "report_to", "none"))
    if not names or not dist.is_main():
        return None
    return Run(names, stage, out_dir, config_mod.to_dict(cfg), getattr(cfg, "run_name", ""))
