"""Weight sharding with PyTorch FSDP2 (``torch.distributed.fsdp.fully_shard``).

Without sharding every rank holds a full replica of the model, its gradients
and its AdamW states (``distributed.py``). With sharding each of N ranks keeps
1/N of every parameter, gradient and optimizer state and gathers a layer's
full weights only while it computes with them:

- ``full`` (ZeRO-3-like, FSDP ``FULL_SHARD``): a transformer block's weights
  are gathered for its forward pass, freed, and gathered again for its
  backward pass. Least memory; two all-gathers per block per micro-batch.
- ``grad_op`` (ZeRO-2-like, FSDP ``SHARD_GRAD_OP``): the gathered weights are
  kept from the forward to the backward pass (``reshard_after_forward=False``)
  and freed after it. One all-gather per block per micro-batch; the full
  weights are resident during a forward/backward pass.
- ``none``: the replicated data parallelism of ``distributed.py`` (default
  behaviour without a launcher that asks for sharding).
- ``auto``: what ``accelerate launch`` asked for (``resolve_mode``).

What stays the same as without sharding, so that a sharded run computes the
single-process update (up to float summation order):

- Gradients are **summed** over ranks, never averaged: the losses are already
  divided by the *global* token/ranking count. FSDP2 averages by default; we
  set a divide factor of 1 and ask for plain SUM collectives
  (``set_force_sum_reduction_for_comms``), which every backend has (the
  default path would use ``PREMUL_SUM``/``AVG``, which gloo lacks).
- Every rank runs the same number of forward and backward passes (FSDP's
  collectives run inside them); ``padded_passes`` pads ranks with fewer
  micro-batches with zero-weighted ones (``training._train_step`` and PPO).
- Checkpoints and model folders hold **full** (unsharded) tensors, gathered
  with ``full_state_dict`` and written by rank 0: the same files as a
  single-process run, loadable by ``models.load_policy`` /
  ``RewardModel.from_pretrained``, and resumable on any number of ranks,
  sharded or not. Optimizer states are saved in the format of a
  single-process ``torch.optim`` state dict (``optimizer_state_dict``).

API (each function is a no-op or the plain PyTorch call for an unsharded
model, so a loop can call them unconditionally):

==============================================  =====================================================
``resolve_mode(requested)``                      ``auto``/``none``/``full``/``grad_op`` -> the mode
``shard_model(model, mode)``                     shard blocks then the root; True if sharded
``is_sharded(model)``                            is ``model`` an FSDP2 module
``full_state_dict(model, rank0_only=False)``     full CPU tensors (collective when sharded)
``load_full_state_dict(model, state_dict)``      load full tensors into a sharded or plain model
``save_pretrained(model, folder, ...)``          HF folder written by rank 0 (call on every rank)
``optimizer_state_dict(optimizer)``              full, single-process-format optimizer state
``load_optimizer_state_dict(optimizer, state)``  the inverse, on any number of ranks
``clip_grad_norm_(model, max_norm)``             global norm over sharded grads, as a plain tensor
``padded_passes(chunks, filler, sharded)``       (micro-batch, real?) with as many passes on every rank
``sum_gradients(*models)``                       gradients summed over ranks (FSDP did it if sharded)
``checkpoint_tensors(modules)``                  what a checkpoint stores per module (gathered if sharded)
``unsharded(model)``                             context: gather once, run local no-grad forwards
``transformer_blocks(model)``                    the blocks that become FSDP units
``sharding_mode(model)``, ``used()``             how a model / this process was sharded
==============================================  =====================================================

A process that sharded a model should end with ``distributed.exit_now``
after its work (the CLI does): see there for the teardown abort it avoids.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
import torch.nn as nn

from . import distributed as dist

MODES = ("auto", "none", "full", "grad_op")

_used = False  # set once this process has sharded a model (see distributed.exit_now)

_TRUE = ("1", "true", "yes", "on")


# ----------------------------------------------------------------------------- choosing the mode

def resolve_mode(requested: str, env: Mapping[str, str] | None = None, warn: bool = True) -> str:
    """The sharding mode to use: ``none``, ``full`` or ``grad_op``.

    ``none``/``full``/``grad_op`` are returned as they are (a launcher that asked
    for sharding is then overridden, with a warning when ``requested`` is none).
    ``auto`` reads what ``accelerate launch`` exports (``env`` defaults to
    ``os.environ``):

    - ``ACCELERATE_USE_FSDP=true`` (an FSDP config): FSDP version 2 ->
      ``FSDP_RESHARD_AFTER_FORWARD`` true -> ``full``, false -> ``grad_op``;
      version 1 -> ``FSDP_SHARDING_STRATEGY`` (or a strategy name in
      ``FSDP_RESHARD_AFTER_FORWARD``) FULL_SHARD -> ``full``, SHARD_GRAD_OP ->
      ``grad_op``, NO_SHARD -> ``none``, HYBRID_SHARD(_ZERO2) -> ``full``
      (``grad_op``) over all ranks, with a warning (hybrid sharding is not
      implemented). Either way PyTorch FSDP2 does the sharding.
    - ``ACCELERATE_USE_DEEPSPEED=true`` (a DeepSpeed config): no DeepSpeed
      engine is used; the ZeRO stage (``ACCELERATE_DEEPSPEED_ZERO_STAGE``, or
      ``zero_optimization.stage`` of ``ACCELERATE_DEEPSPEED_CONFIG_FILE``) maps
      to FSDP2: 3 -> ``full``, 1 or 2 -> ``grad_op``, 0 -> ``none``; unknown ->
      ``grad_op`` (accelerate's default stage is 2). A warning says so.
    - neither: ``none``.

    Launcher settings this package does not implement (parameter/optimizer
    CPU offload, activation checkpointing, rank-0-only loading) are named in
    a warning. Warnings
    are issued on rank 0 only.
    """
    env = os.environ if env is None else env
    if requested not in MODES:
        raise ValueError(f"sharding: {requested!r} is not one of {', '.join(MODES)}")
    notes: list[str] = []
    fsdp = env.get("ACCELERATE_USE_FSDP", "").lower() in _TRUE
    deepspeed = env.get("ACCELERATE_USE_DEEPSPEED", "").lower() in _TRUE
    if requested != "auto":
        if requested == "none" and (fsdp or deepspeed):
            which = "ACCELERATE_USE_FSDP" if fsdp else "ACCELERATE_USE_DEEPSPEED"
            notes.append(f"{which} is set by the launcher but sharding=none: every rank keeps a full replica")
        mode = requested
    elif fsdp:
        mode = _fsdp_mode(env, notes)
        if env.get("FSDP_OFFLOAD_PARAMS", "").lower() in _TRUE:
            notes.append("fsdp_offload_params is not implemented here: parameters stay on the device")
        if env.get("FSDP_ACTIVATION_CHECKPOINTING", "").lower() in _TRUE:
            notes.append("fsdp_activation_checkpointing is not read here: set gradient_checkpointing=true")
        if env.get("FSDP_CPU_RAM_EFFICIENT_LOADING", "").lower() in _TRUE:
            notes.append("fsdp_cpu_ram_efficient_loading is not implemented here: every rank loads the full "
                         "model, then rank 0's weights are broadcast and sharded")
    elif deepspeed:
        mode = _deepspeed_mode(env, notes)
    else:
        mode = "none"
    if warn and notes and dist.is_main():
        for note in notes:
            warnings.warn(f"sharding: {note} (docs/scaling.md)", stacklevel=2)
    return mode


def _fsdp_mode(env: Mapping[str, str], notes: list[str]) -> str:
    version = env.get("FSDP_VERSION", "2").strip() or "2"
    reshard = env.get("FSDP_RESHARD_AFTER_FORWARD", "").strip()
    if version == "2" and reshard.lower() in _TRUE + ("0", "false", "no", "off"):
        return "full" if reshard.lower() in _TRUE else "grad_op"
    if version == "2" and not reshard:
        return "full"                               # accelerate's FSDP2 default: reshard after forward
    # FSDP1 names a strategy (in FSDP_RESHARD_AFTER_FORWARD or FSDP_SHARDING_STRATEGY), by name or number
    strategies = ["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD", "HYBRID_SHARD_ZERO2"]
    raw = reshard if reshard.upper() in strategies or reshard.isdecimal() else env.get("FSDP_SHARDING_STRATEGY", "FULL_SHARD")
    name = raw.strip().upper()
    if name.isdecimal() and 1 <= int(name) <= len(strategies):
        name = strategies[int(name) - 1]
    if name.startswith("HYBRID_SHARD"):
        mode = "grad_op" if name.endswith("ZERO2") else "full"
        notes.append(f"{name} (shard within a node, replicate across nodes) is not implemented: "
                     f"sharding over all ranks instead (sharding={mode})")
        return mode
    mapping = {"FULL_SHARD": "full", "SHARD_GRAD_OP": "grad_op", "NO_SHARD": "none"}
    if name not in mapping:
        notes.append(f"unknown FSDP sharding strategy {raw!r}: using sharding=full")
        return "full"
    return mapping[name]


def _deepspeed_mode(env: Mapping[str, str], notes: list[str]) -> str:
    stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "").strip()
    if not stage and env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"):
        try:
            stage = str(json.loads(Path(env["ACCELERATE_DEEPSPEED_CONFIG_FILE"]).read_text())
                        .get("zero_optimization", {}).get("stage", ""))
        except (OSError, ValueError, AttributeError):
            stage = ""
    mapping = {"0": "none", "1": "grad_op", "2": "grad_op", "3": "full"}
    mode = mapping.get(stage, "grad_op")
    what = f"ZeRO stage {stage}" if stage in mapping else "an unknown ZeRO stage (accelerate's default is 2)"
    notes.append(f"ACCELERATE_USE_DEEPSPEED: DeepSpeed itself is not used; {what} is run as PyTorch FSDP2 "
                 f"sharding={mode}")
    for key in ("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE"):
        if env.get(key, "none").lower() not in ("", "none"):
            notes.append(f"{key}={env[key]} is not implemented here: nothing is offloaded")
    return mode


# ----------------------------------------------------------------------------- sharding a model

def is_sharded(model: nn.Module) -> bool:
    """True when ``model`` has been sharded by ``shard_model`` (an FSDP2 root module)."""
    from torch.distributed.fsdp import FSDPModule
    return isinstance(model, FSDPModule)


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a transformer: the children of its largest ``nn.ModuleList``.

    That is ``transformer.h`` of GPT-2, ``model.layers`` of Llama/Qwen2, and
    ``backbone.h``/``backbone.layers`` of a ``RewardModel`` built on either,
    found without naming the architecture. Empty when there is no ModuleList
    (the model is then sharded as one unit).
    """
    best: list[nn.Module] = []
    best_size = 0
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            size = sum(p.numel() for p in module.parameters())
            if size > best_size:
                best, best_size = list(module), size
    return best


def shard_model(model: nn.Module, mode: str) -> bool:
    """Shard ``model`` in place across all ranks; returns whether it is now sharded.

    Each transformer block (``transformer_blocks``) becomes its own FSDP unit,
    then the root takes the remaining parameters (embeddings, final norm,
    LM or scalar head; tied embeddings stay tied). ``mode`` is ``none``,
    ``full`` or ``grad_op`` (resolve ``auto`` first with ``resolve_mode``).
    A no-op returning False for ``none`` or a single process.

    Call after the starting weights agree on every rank
    (``distributed.broadcast_module``) and **before** creating the optimizer:
    the parameters are replaced by sharded ``DTensor`` parameters. Gradients
    are summed over ranks (not averaged), matching the globally normalised
    losses of this package.
    """
    if mode not in ("none", "full", "grad_op"):
        raise ValueError(f"sharding: {mode!r} is not one of none, full, grad_op (resolve 'auto' first)")
    if mode == "none" or dist.world_size() <= 1:
        return False
    if is_sharded(model):
        return True
    from .lora import refuse_sharding
    refuse_sharding(model)  # FSDP2 + LoRA adapters: a clear error (docs/scaling.md)
    from torch.distributed.fsdp import FSDPModule, fully_shard
    reshard = mode == "full"
    for block in transformer_blocks(model):
        fully_shard(block, reshard_after_forward=reshard)
    # The root's parameters are used first in forward and last in backward: keeping them gathered in
    # between saves an all-gather and is what FSDP does by default for the root.
    fully_shard(model, reshard_after_forward=False)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)          # sum, do not average: losses are globally normalised
            m.set_force_sum_reduction_for_comms(True)  # plain SUM (gloo has no PREMUL_SUM/AVG)
    model._instructgpt_sharding = mode  # type: ignore[attr-defined]
    global _used
    _used = True
    return True


def used() -> bool:
    """Whether this process has sharded a model (it should then end with ``distributed.exit_now``)."""
    return _used


def sharding_mode(model: nn.Module) -> str:
    """``full`` or ``grad_op`` for a model sharded by ``shard_model``, else ``none``."""
    return getattr(model, "_instructgpt_sharding", "none") if is_sharded(model) else "none"


def _fsdp_modules(model: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def unsharded(model: nn.Module) -> Iterator[nn.Module]:
    """Gather ``model``'s full weights once, run no-grad forward passes locally, then reshard.

    For generation and evaluation: inside the context the model's parameters
    are ordinary full tensors on every rank and forward passes make **no
    collective calls**, so ranks may run different numbers of them (sampling
    that stops at different lengths, different prompts). Gradients are off
    inside. On exit the weights are freed again (every rank must enter and
    leave the context together: entering is an all-gather). Costs one full
    copy of the weights per rank while open. A no-op (apart from
    ``torch.no_grad``) for an unsharded model.

    Do not call ``state_dict()``/``save_pretrained`` inside (FSDP reshards for
    those); use ``full_state_dict`` outside.
    """
    if not is_sharded(model):
        with torch.no_grad():
            yield model
        return
    modules = _fsdp_modules(model)
    for m in modules:
        m.set_reshard_after_forward(False, recurse=False)
    try:
        for m in modules:
            m.unshard()
        with torch.no_grad():
            yield model
    finally:
        reshard = sharding_mode(model) == "full"
        for m in modules:
            m.reshard()
            # restore what shard_model set: the blocks per mode, the root never
            m.set_reshard_after_forward(reshard and m is not model, recurse=False)


# ----------------------------------------------------------------------------- state dicts

def full_state_dict(model: nn.Module, rank0_only: bool = False) -> dict[str, torch.Tensor]:
    """The model's full (unsharded) state dict as detached CPU tensors.

    For a sharded model this is a collective: every rank must call it. Each
    tensor is gathered and moved to the CPU one at a time (at most one full
    tensor on the device). With ``rank0_only`` the other ranks take part in the
    gathers but return ``{}`` (no CPU copy there). The tensors are copies (later
    training does not change them), unsharded model included. Tied parameters (GPT-2's
    ``lm_head.weight`` = ``transformer.wte.weight``) are one tensor under both
    keys, as in ``model.state_dict()``, so ``save_pretrained`` and checkpoints
    store them once, as a single-process run does.
    """
    from torch.distributed.tensor import DTensor
    keep = not rank0_only or dist.is_main()
    out: dict[str, torch.Tensor] = {}
    done: dict[int, torch.Tensor | None] = {}
    for key, value in model.state_dict(keep_vars=True).items():
        if id(value) not in done:
            t = value.detach()
            if isinstance(t, DTensor):
                t = t.full_tensor()                    # a new tensor: the all-gather of the shards
                done[id(value)] = t.cpu() if keep else None
            else:
                done[id(value)] = t.to("cpu", copy=True) if keep else None
        if keep:
            out[key] = done[id(value)]
    return out


def load_full_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                         strict: bool = True) -> tuple[list[str], list[str]]:
    """Load full (unsharded) tensors into ``model``, sharded or not; returns (missing, unexpected) keys.

    Every rank passes the same full tensors (e.g. each read the same
    checkpoint file) and keeps its own shard. A key missing from
    ``state_dict`` whose parameter is tied to a present key (GPT-2's
    ``lm_head.weight``) is not reported missing. With ``strict`` other missing
    or unexpected keys raise ``RuntimeError``.
    """
    params = model.state_dict(keep_vars=True)
    sd = dict(state_dict)
    by_id: dict[int, list[str]] = {}
    for k, v in params.items():
        by_id.setdefault(id(v), []).append(k)
    for names in by_id.values():  # fill tied keys from their present twin
        present = [n for n in names if n in sd]
        for n in names:
            if n not in sd and present:
                sd[n] = sd[present[0]]
    missing = [k for k in params if k not in sd]
    unexpected = [k for k in sd if k not in params]
    if strict and (missing or unexpected):
        raise RuntimeError(f"state dict does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    sd = {k: v for k, v in sd.items() if k in params}
    if not is_sharded(model):
        model.load_state_dict(sd, strict=False)
        return missing, unexpected
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=True, strict=False))
    return missing, unexpected


def save_pretrained(model: nn.Module, folder: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
    """``model.save_pretrained(folder, ...)`` by rank 0, with full weights when ``model`` is sharded.

    Call on **every** rank (gathering the weights is a collective); only rank 0
    writes, and no barrier is made. For a sharded model the gathered state dict
    is passed as ``state_dict=`` to the model's own ``save_pretrained`` (a
    Hugging Face model or ``RewardModel``), so the folder is the one a
    single-process run writes: same file names, tied weights stored once,
    ``architectures`` without FSDP's class-name prefix, and the config's dropout
    fields as the model was loaded (``dropout.dropout_as_loaded``).
    """
    from .dropout import dropout_as_loaded
    state = full_state_dict(model, rank0_only=True) if is_sharded(model) else None
    if dist.is_main():
        with dropout_as_loaded(model):  # the config's dropout as loaded, not the stage's training value
            if state is None:
                model.save_pretrained(folder, *args, **kwargs)
            else:
                model.save_pretrained(folder, *args, state_dict=state, **kwargs)


# ----------------------------------------------------------------------------- optimizer

def _optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Parameters in the order ``optimizer.state_dict()`` numbers them."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def optimizer_state_dict(optimizer: torch.optim.Optimizer, rank0_only: bool = True) -> dict[str, Any]:
    """The optimizer's state in the format of a single-process ``optimizer.state_dict()``.

    For an optimizer over an unsharded model this *is* ``optimizer.state_dict()``.
    Over sharded parameters every per-parameter state tensor (AdamW's
    ``exp_avg``, ``exp_avg_sq``) is gathered to its full shape on the CPU
    (collective: call on every rank); with ``rank0_only`` (default) the other
    ranks return ``{}``. The result loads with ``load_optimizer_state_dict``
    on any number of ranks, sharded or not, and with plain
    ``optimizer.load_state_dict`` in a single process.
    """
    from torch.distributed.tensor import DTensor
    params = _optimizer_params(optimizer)
    if not any(isinstance(p, DTensor) for p in params):
        return optimizer.state_dict()
    sd = optimizer.state_dict()
    keep = not rank0_only or dist.is_main()
    state: dict[int, dict[str, Any]] = {}
    for pid in sorted(sd["state"]):  # same order on every rank: the collectives line up
        entry = {}
        for name, value in sd["state"][pid].items():
            if isinstance(value, DTensor):
                value = value.full_tensor()
            entry[name] = value.detach().cpu() if isinstance(value, torch.Tensor) else value
        state[pid] = entry
    return {"state": state, "param_groups": sd["param_groups"]} if keep else {}


_KERNEL_FLAGS = ("foreach", "fused", "capturable", "differentiable")


def load_optimizer_state_dict(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> None:
    """Load a full (single-process format) optimizer state into ``optimizer``, sharded or not.

    Every rank passes the same full state (from ``optimizer_state_dict`` or a
    single-process ``optimizer.state_dict()``); over sharded parameters each
    rank keeps its own shard of every state tensor (no communication). The
    optimizer keeps its own kernel choice (``fused``/``foreach``...): a
    checkpoint of a fused single-process AdamW resumes on sharded parameters
    with the multi-tensor kernel and vice versa.
    """
    from torch.distributed.tensor import DTensor, distribute_tensor
    groups = [{**saved, **{k: current[k] for k in _KERNEL_FLAGS if k in current}}
              for saved, current in zip(state_dict["param_groups"], optimizer.param_groups)]
    state_dict = {**state_dict, "param_groups": groups}
    params = _optimizer_params(optimizer)
    if not any(isinstance(p, DTensor) for p in params):
        optimizer.load_state_dict(state_dict)
        return
    state: dict[int, dict[str, Any]] = {}
    for pid, entry in state_dict["state"].items():
        p = params[int(pid)]
        new = {}
        for name, value in entry.items():
            if isinstance(p, DTensor) and isinstance(value, torch.Tensor) and value.shape == p.shape \
                    and value.dim() > 0:
                value = distribute_tensor(value.to(device=p.device, dtype=p.dtype), p.device_mesh, p.placements,
                                          src_data_rank=None)
            new[name] = value
        state[pid] = new
    optimizer.load_state_dict({"state": state, "param_groups": state_dict["param_groups"]})


# ----------------------------------------------------------------------------- data-parallel steps

def padded_passes(chunks: list, filler: Any, sharded: bool) -> list[tuple[Any, bool]]:
    """(micro-batch, is_real) pairs for one optimizer step of this rank.

    Sharded, FSDP's collectives run inside forward and backward, so every rank makes as many passes
    as the busiest one: the others add passes over ``filler``, which the caller weights by 0.
    Unsharded, a rank makes only its own passes (possibly none; its gradients then count as zeros).
    """
    n = len(chunks)
    if sharded:
        n = int(dist.all_reduce_max(torch.tensor(float(n))).item())
    return [(chunks[i], True) if i < len(chunks) else (filler, False) for i in range(n)]


def sum_gradients(*models: nn.Module) -> None:
    """Sum each model's gradients over ranks; a sharded model's were summed (reduce-scatter) during
    its backward pass already. No-op in a single process."""
    for model in models:
        if not is_sharded(model):
            dist.all_reduce_gradients(model)


def checkpoint_tensors(modules: Mapping[str, nn.Module]) -> dict[str, Any]:
    """What ``checkpoint.save_checkpoint`` writes for each named module: a sharded module's full state
    dict (gathering is a collective: every rank calls this; rank 0 keeps the tensors), else the
    module itself."""
    return {name: full_state_dict(m, rank0_only=True) if is_sharded(m) else m for name, m in modules.items()}


# ----------------------------------------------------------------------------- gradients

def clip_grad_norm_(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip the gradients of ``model`` to a global norm of ``max_norm`` (``inf`` = only measure).

    The norm is over all ranks' shards when ``model`` is sharded (DTensor
    gradients), i.e. the norm a single process would compute; returned as a
    plain 0-dim tensor on every rank. Exactly
    ``torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)`` otherwise.
    """
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if is_sharded(model):
        from torch.distributed.tensor import DTensor
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
    return norm
