"""The ``runtime`` option group every training stage shares (pretrain, SFT, RM, PPO).

Where and how a stage runs, not what it computes: device, numeric precision,
sharding across processes, seed, resuming, progress bars, experiment trackers
and checkpoint cadence. Written ``device=cpu`` or ``runtime.device=cpu``.
Apart from ``seed``, ``precision`` and ``sharding`` (which can change the
numbers), these options stay out of stage keys (``stage_keys.RUNTIME_OPTIONS``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import distributed as dist
from . import sharding
from .config import ConfigError, check_seed, opt
from .tracking import TrackingOptions


@dataclass
class RuntimeOptions(TrackingOptions):
    """Where and how a stage runs (the ``runtime`` group)."""
    group = "runtime"
    seed: int = opt(0, "Seed for initialisation, data order, sampling, minibatches and dropout.")
    device: str = opt("auto", "auto (CUDA if available, else CPU), cpu, cuda, cuda:1 ...")
    precision: str = opt("auto", "auto (bf16 autocast on CUDA where supported, fp32 on CPU), fp32 or bf16 "
                                 "(autocast of forward passes; weights and optimizer states stay fp32).")
    sharding: str = opt("auto", "Under several processes: none (a full replica of the model, its gradients and "
                                "AdamW states on every rank), full (FSDP2, ZeRO-3-like: all three sharded, each "
                                "block's weights gathered for its forward and again for its backward), grad_op "
                                "(ZeRO-2-like: weights kept gathered from forward to backward) or auto (what "
                                "accelerate launch asked for: an FSDP or DeepSpeed config; else none). Same "
                                "results and output folders in every mode; ignored on one process.")
    resume: bool = opt(False, "Continue from the last good checkpoint in out_dir.")
    progress: bool = opt(True, "Show a progress bar.")
    save_every: int = opt(0, "Also checkpoint every this many steps (0 = only at epoch ends).")
    save_minutes: float = opt(0.0, "Also checkpoint when this many minutes have passed since the last "
                                   "checkpoint (0 = off); bounds the work a kill -9 or a preemption loses.")
    keep_checkpoints: int = opt(2, "How many recent checkpoints to keep for resume.")
    keep_optimizer: bool = opt(True, "When training ends, keep the optimizer state in the checkpoints left "
                                     "(false: weights only, about a third of the size, and no --resume "
                                     "from them).")

    def validate_runtime(self) -> None:
        self.validate_tracking()
        if self.precision not in dist.PRECISIONS:
            raise ConfigError(f"precision: {self.precision!r} is not one of {', '.join(dist.PRECISIONS)}")
        try:
            dist.check_launcher_precision(self.precision)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.sharding not in sharding.MODES:
            raise ConfigError(f"sharding: {self.sharding!r} is not one of {', '.join(sharding.MODES)}")
        check_device(self.device)
        check_seed(self.seed)
        for name in ("save_every", "save_minutes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0 (0 = off), got {getattr(self, name)}")
        if self.keep_checkpoints < 1:
            raise ConfigError(f"keep_checkpoints: must be >= 1 (resume needs one), got {self.keep_checkpoints}")


def check_device(name: str) -> None:
    """``auto`` or a device string torch can parse (``cpu``, ``cuda``, ``cuda:1`` ...); else a ConfigError."""
    if name == "auto":
        return
    try:
        torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"device: {name!r} is not auto or a torch device (cpu, cuda, cuda:1 ...)") from None

