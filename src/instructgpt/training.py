"""The supervised training loop that pretraining, SFT and the reward model share.

A stage supplies a ``Task``: how to collate examples into a micro-batch, how
much each micro-batch weighs (tokens for language modelling, rankings for the
reward model) and its summed loss. ``fit`` does the rest: epochs in a
seeded order, micro-batches summed into one step whose loss is the mean over
the whole global batch (so gradient accumulation and data parallelism change
nothing but speed), AdamW, warmup + cosine decay to ``min_lr_ratio`` of the
peak, gradient clipping, checkpoints every ``save_every`` steps and at each
epoch end, per-epoch evaluation with keep-the-best selection, and resume.

Under several processes the model is either replicated (``sharding=none``:
gradients summed by ``distributed.all_reduce_gradients``) or sharded with
FSDP2 (``full``/``grad_op``, ``sharding.py``). Either way a step computes the
single-process update, and checkpoints hold full tensors that resume on any
number of ranks, sharded or not.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from . import checkpoint as ckpt
from . import distributed as dist
from . import interrupt
from . import sharding
from .config import ConfigError, opt
from .progress import progress_bar
from .records import MetricsLog
from .resume_check import checkpoint_record
from .runtime import RuntimeOptions


@dataclass
class OptimConfig:
    """The optimisation options every supervised stage shares (the ``optim`` group)."""
    group = "optim"
    lr: float = opt(1e-4, "Peak learning rate (AdamW).")
    weight_decay: float = opt(0.0, "AdamW weight decay (not applied to biases and norms).")
    adam_beta2: float = opt(0.95, "AdamW beta2.")
    warmup_steps: int = opt(0, "Linear warmup steps from 0 to the peak learning rate.")
    min_lr_ratio: float = opt(0.1, "Cosine decay ends at this fraction of the peak (paper: 10%).")
    epochs: int = opt(1, "Passes over the training data.")
    batch_size: int = opt(16, "Examples per optimizer step (global, across processes).")
    micro_batch_size: int = opt(16, "Examples per forward pass; batch_size/micro_batch_size = gradient accumulation.")
    grad_clip: float = opt(1.0, "Clip the global gradient norm to this (0 = off).")
    max_steps: int = opt(0, "Stop after this many optimizer steps in total (0 = no limit).")

    def validate_optim(self) -> None:
        if self.batch_size < 1 or self.micro_batch_size < 1:
            raise ConfigError(f"batch_size, micro_batch_size: must be >= 1, got {self.batch_size}, "
                              f"{self.micro_batch_size}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if self.lr <= 0:
            raise ConfigError(f"lr: must be > 0, got {self.lr}")
        if self.epochs < 1:
            raise ConfigError(f"epochs: must be >= 1, got {self.epochs}")
        for name in ("warmup_steps", "max_steps", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.adam_beta2 < 1.0:
            raise ConfigError(f"adam_beta2: must be in (0, 1), got {self.adam_beta2}")


@dataclass
class TrainConfig(RuntimeOptions, OptimConfig):
    """What pretrain, SFT and RM share: an output folder, the ``optim`` and the ``runtime`` groups."""
    out_dir: str = opt("", "Output folder (model, checkpoints, metrics.jsonl).")

    def validate(self) -> None:
        if not self.out_dir:
            raise ConfigError("out_dir: required")
        self.validate_optim()
        self.validate_runtime()


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Of step ``step`` (0-based) of ``total_steps``: linear warmup to 1, then cosine decay from 1 at
    step ``warmup_steps`` to ``min_lr_ratio`` at the last step, ``total_steps - 1``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - 1 - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, beta2: float = 0.95) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, beta2), eps=1e-8, **adamw_kernel(params))


def adamw_kernel(params: list[torch.Tensor]) -> dict[str, bool]:
    """The fused AdamW kernel (one pass over each parameter instead of ~7; the step is 4x faster
    on a CPU) for plain tensors on CPU or CUDA; the multi-tensor path otherwise (sharded DTensors)."""
    plain = all(p.device.type in ("cpu", "cuda") and not hasattr(p, "device_mesh") for p in params)
    return {"fused": True} if plain else {"foreach": True}


class Task(Protocol):
    """What a stage gives ``fit``."""
    n_examples: int
    metric_prefix: str

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]: ...
    def weight(self, batch: dict[str, torch.Tensor]) -> float: ...
    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]: ...


@dataclass
class FitResult:
    steps: int
    epochs_run: int
    best_epoch: int | None
    best_score: float | None
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: str | None = None
    sharding: str = "none"  # how the model was trained: none (replicated or one process), full, grad_op
    ended_inside_epoch: bool = False  # max_steps ended training inside epoch ``epochs_run`` (evaluated as an epoch)

    @property
    def last_epoch(self) -> int:
        """The epoch training ended in (-1 before any step)."""
        return self.epochs_run if self.ended_inside_epoch else self.epochs_run - 1


class StopTraining(Exception):
    """Raised by an ``on_step`` hook to stop early (tests use it to simulate a kill)."""


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    return np.random.default_rng([seed, epoch]).permutation(n).tolist()


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def fit(model: torch.nn.Module, task: Task, cfg: TrainConfig, device: torch.device,
        evaluate: Callable[[torch.nn.Module, int], dict[str, float]] | None = None,
        select: tuple[str, str] | None = None,
        on_step: Callable[[int], None] | None = None,
        log: MetricsLog | None = None) -> FitResult:
    """Train ``model`` on ``task``; returns with the selected (best) weights loaded.

    ``evaluate(model, epoch)`` runs after every epoch; ``select = (metric,
    "max"|"min")`` names the metric that picks the kept epoch. Without it the
    last epoch is kept.

    With ``cfg.sharding`` resolving to ``full``/``grad_op`` under several
    processes, ``model`` is sharded in place (``sharding.shard_model``) and
    stays sharded on return: save it with ``sharding.save_pretrained`` and run
    forward passes either on every rank in step or inside
    ``sharding.unsharded(model)``.
    """
    out = Path(cfg.out_dir)
    ckpt_root = out / "checkpoints"
    log = log or MetricsLog(out / "metrics.jsonl", enabled=dist.is_main())
    steps_per_epoch = math.ceil(task.n_examples / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    dist.broadcast_module(model)  # identical starting weights on every rank (random heads, fresh models)
    sharded = sharding.shard_model(model, sharding.resolve_mode(cfg.sharding))  # before the optimizer sees params
    if sharded and dist.is_main():
        print(f"{task.metric_prefix}: sharding={sharding.sharding_mode(model)} (FSDP2) over {dist.world_size()} ranks",
              flush=True)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, cfg.adam_beta2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, total_steps, cfg.warmup_steps, cfg.min_lr_ratio))
    checkpoints = _Checkpoints(ckpt_root, {"model": model}, optimizer, scheduler, cfg)
    state = {"global_step": 0, "epoch": 0, "step_in_epoch": 0, "best_score": None,
             "best_epoch": None, "history": []}
    resumed_from = None
    if cfg.resume and (found := checkpoints.resume(log)) is not None:
        resumed_from, state = found
    else:
        start_over(ckpt_root, log, task.metric_prefix)
    bar = progress_bar(total_steps, task.metric_prefix, cfg.progress and dist.is_main(), state["global_step"])
    model.train()
    # a first SIGTERM / Ctrl-C waits for a safe point
    with interrupt.safe_points(), contextlib.closing(bar), log.closed_on_error():
        while state["epoch"] < cfg.epochs and state["global_step"] < total_steps:
            order = _epoch_order(task.n_examples, cfg.seed, state["epoch"])
            while state["step_in_epoch"] < steps_per_epoch and state["global_step"] < total_steps:
                s = state["step_in_epoch"]
                if dist.world_size() > 1:  # each rank its own dropout stream, a function of the step
                    torch.manual_seed(dist.rank_seed(cfg.seed, state["global_step"]))
                metrics = _train_step(model, task, order[s * cfg.batch_size:(s + 1) * cfg.batch_size],
                                      cfg, optimizer, scheduler, device)
                state["step_in_epoch"] += 1
                state["global_step"] += 1
                log.log(state["global_step"], metrics)
                bar.update(1)
                bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in metrics.items()
                                 if k.endswith(("loss", "lr", "tokens_per_s", "accuracy"))})
                due = checkpoints.due_after_step(state, steps_per_epoch, total_steps)
                saved = checkpoints.save(state) if due else None
                if interrupt.stop_requested():  # a safe point: stop here, with a checkpoint
                    interrupt.stop(f"at {task.metric_prefix} step {state['global_step']}/{total_steps}",
                                   saved or checkpoints.save(state))
                if on_step is not None:
                    on_step(state["global_step"])
            if state["step_in_epoch"] >= steps_per_epoch:
                _end_epoch(model, evaluate, select, state, log, ckpt_root, device, cfg.precision)
                state["epoch"] += 1
                state["step_in_epoch"] = 0
                saved = checkpoints.save(state)
                if interrupt.stop_requested():
                    interrupt.stop(f"after {task.metric_prefix} epoch {state['epoch']}/{cfg.epochs}", saved)
        if state["step_in_epoch"] and state["global_step"] >= total_steps and not state.get("ended_inside_epoch"):
            # max_steps ended training inside an epoch: the weights it left are evaluated (and may be selected)
            # as an epoch's are, and checkpointed, so a resume of the finished run has nothing to redo
            state["ended_inside_epoch"] = True
            _end_epoch(model, evaluate, select, state, log, ckpt_root, device, cfg.precision)
            checkpoints.save(state)
    if select and state["best_epoch"] is not None and (ckpt_root / "best").exists():
        ckpt.load_checkpoint(ckpt_root / "best", {"model": model})
    if not cfg.keep_optimizer and dist.is_main():  # training is over: weights-only checkpoints from here on
        ckpt.retain(ckpt_root, cfg.keep_checkpoints, keep_optimizer=False)
    return FitResult(state["global_step"], state["epoch"], state["best_epoch"], state["best_score"],
                     state["history"], resumed_from, sharding.sharding_mode(model),
                     bool(state.get("ended_inside_epoch")))


def start_over(ckpt_root: Path, log: MetricsLog, name: str) -> None:
    """A run from step 0 in an out_dir an earlier run wrote: its checkpoints and metrics rows are not this
    run's (every rank calls it)."""
    if dist.is_main():
        removed = ckpt.clear_checkpoints(ckpt_root)
        if removed:
            print(f"{name}: starting from step 0 (no --resume, or nothing to resume): removed the earlier run's "
                  f"checkpoints in {ckpt_root} ({', '.join(removed)})", flush=True)
    log.truncate_after(0)
    dist.barrier()


class _Checkpoints:
    """The checkpoints of one ``fit``: full tensors, optimizer and scheduler state under ``root``
    (resumable on any number of ranks, sharded or not), the newest ``keep_checkpoints`` kept."""

    def __init__(self, root: Path, modules: dict[str, torch.nn.Module], optimizer, scheduler, cfg: TrainConfig):
        self.root, self.modules, self.optimizer, self.scheduler, self.cfg = root, modules, optimizer, scheduler, cfg
        self.last_save = time.monotonic()

    def resume(self, log: MetricsLog) -> tuple[str, dict[str, Any]] | None:
        """Load the newest good checkpoint (weights, optimizer, scheduler) and drop the metrics
        logged after it: (its path, the loop state it saved), or None if there is none."""
        found = ckpt.latest_good_checkpoint(self.root)
        if found is None:
            return None
        objects, state = ckpt.load_checkpoint(found, self.modules)
        state.pop("config", None)  # checked against this run's options before anything was written
        sharding.load_optimizer_state_dict(self.optimizer, objects["optimizer"])
        self.scheduler.load_state_dict(objects["scheduler"])
        log.truncate_after(state["global_step"])
        return str(found), state

    def save(self, state: dict[str, Any]) -> Path:
        """A checkpoint of the loop at ``state`` (a collective when sharded: every rank calls it)."""
        self.last_save = time.monotonic()
        folder = self.root / f"step-{state['global_step']:07d}"
        tensors = sharding.checkpoint_tensors(self.modules)  # rank 0 keeps the full tensors
        optim_state = sharding.optimizer_state_dict(self.optimizer, rank0_only=True)
        if dist.is_main():
            ckpt.save_checkpoint(folder, tensors, {"optimizer": optim_state, "scheduler": self.scheduler.state_dict()},
                                 {**state, **checkpoint_record(self.cfg)})
            ckpt.prune_checkpoints(self.root, self.cfg.keep_checkpoints)
        dist.barrier()
        return folder

    def due_after_step(self, state: dict[str, Any], steps_per_epoch: int, total_steps: int) -> bool:
        """True after a step that save_every or save_minutes asks to checkpoint, except an epoch's last step and
        training's last step: those are checkpointed after the epoch's evaluation (a checkpoint before it would be
        resumed, after a kill while the evaluation is logged or the epoch-end checkpoint written, by evaluating
        and logging that epoch again)."""
        if state["step_in_epoch"] >= steps_per_epoch or state["global_step"] >= total_steps:
            return False
        every = self.cfg.save_every and state["global_step"] % self.cfg.save_every == 0
        minutes = self.cfg.save_minutes > 0 and time.monotonic() - self.last_save >= 60 * self.cfg.save_minutes
        return bool(every or minutes)


def _train_step(model, task: Task, indices: list[int], cfg: TrainConfig, optimizer, scheduler,
                device: torch.device) -> dict[str, float]:
    """One optimizer step over a global batch: micro-batches, global normalisation, clip, step."""
    t0 = time.perf_counter()
    mine = dist.shard(indices)
    micro = [task.collate(mine[i:i + cfg.micro_batch_size]) for i in range(0, len(mine), cfg.micro_batch_size)]
    total = dist.all_reduce_sum(torch.tensor(float(sum(task.weight(b) for b in micro))))
    total = total.clamp(min=1.0).item()
    dtype = dist.resolve_precision(cfg.precision, device)
    # a padding pass (sharded only) reuses a real batch, or the global batch's first example, at weight 0
    filler = micro[-1] if micro else None
    sums: dict[str, float] = {}
    tokens = 0
    for batch, real in sharding.padded_passes(micro, filler, sharding.is_sharded(model)):
        batch = _to(batch if batch is not None else task.collate(indices[:1]), device)
        with dist.autocast(device, dtype):
            loss_sum, stats = task.loss(model, batch)
        ((loss_sum.float() / total) if real else loss_sum.float() * 0.0).backward()
        if not real:
            continue
        tokens += int(batch["attention_mask"].sum())
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    sharding.sum_gradients(model)
    grad_norm = sharding.clip_grad_norm_(model, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    if not torch.isfinite(grad_norm):
        raise FloatingPointError(f"{task.metric_prefix}: gradient norm is {grad_norm.item()} "
                                 f"({_divergence_hint(model)}; the last good checkpoint is kept)")
    lr = scheduler.get_last_lr()[0]  # this step's: scheduler.step() sets the next step's
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    sums = dist.reduce_sums({**sums, "__tokens__": float(tokens)})
    tokens = sums.pop("__tokens__")
    elapsed = time.perf_counter() - t0
    p = task.metric_prefix
    metrics = task.summarize(sums) if hasattr(task, "summarize") else {}
    metrics.update({f"{p}/lr": lr, f"{p}/grad_norm": grad_norm.item(),
                    f"{p}/tokens_per_s": tokens / elapsed})
    return metrics


def _divergence_hint(model) -> str:
    """What a non-finite gradient suggests: a frozen base in fp16 (LoRA with ``dtype=fp16``) overflowing its
    range, else too high a learning rate."""
    if any(p.dtype == torch.float16 for p in model.parameters()):
        return ("the frozen base is in fp16 (dtype=fp16), whose range ends at 65504: use dtype=bf16 or fp32, or a "
                "lower lr")
    return "lower lr"


def _end_epoch(model, evaluate, select, state: dict, log: MetricsLog, ckpt_root: Path, device,
               precision: str = "fp32") -> None:
    if evaluate is None:
        return
    model.eval()
    # sharded: weights gathered once, so each rank's evaluation runs without collectives (any number of passes)
    with sharding.unsharded(model), dist.autocast(device, dist.resolve_precision(precision, device)):
        metrics = evaluate(model, state["epoch"])
    model.train()
    # every rank evaluates; rank 0's numbers decide, so all ranks keep the same best epoch
    metrics = dist.broadcast_object({k: float(v) for k, v in metrics.items()})
    ended = {"ended_at_step": state["global_step"]} if state.get("ended_inside_epoch") else {}
    state["history"].append({"epoch": state["epoch"], **ended, **metrics})
    log.log(state["global_step"], metrics)
    if not select:
        return
    name, mode = select
    score = metrics[name]
    best = state["best_score"]
    if best is None or (score > best if mode == "max" else score < best):
        state["best_score"], state["best_epoch"] = score, state["epoch"]
        sharded = sharding.is_sharded(model)
        tensors = {"model": sharding.full_state_dict(model, rank0_only=True) if sharded else model}
        if dist.is_main():
            ckpt.save_checkpoint(ckpt_root / "best", tensors, {}, {"epoch": state["epoch"], name: score})
        dist.barrier()
