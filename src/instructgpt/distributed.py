"""Process-group helpers: everything is a no-op on a single process.

Under ``torchrun`` or ``accelerate launch`` (RANK / WORLD_SIZE set) the group
is initialised with NCCL on CUDA and gloo on CPU. The training loops do plain
data parallelism with a full replica of every model on each rank:

- each rank takes a strided share (``shard``) of every *global* batch;
- losses are normalised by global counts (tokens, rankings), so summing the
  ranks' gradients (``all_reduce_gradients``) gives exactly the gradient one
  process would compute on the whole batch;
- every rank makes the same sequence of collective calls whatever its data
  (an empty share, an all-EOS rollout, no episode in a minibatch), so no rank
  can wait for another forever;
- metrics are reduced across ranks before rank 0 logs them; only rank 0
  writes files, followed by a barrier.

Collectives accept CPU tensors under any backend: under NCCL they are copied to
the current CUDA device and back.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
import sys
import warnings
from typing import Any, Iterable

import torch
import torch.distributed as dist

# Accelerate sets these when its config asks for sharded training. The supervised stages
# shard (sharding.py); a stage that does not warns that they are ignored (docs/scaling.md).
_SHARDING_ENV = ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED")

# Gradients are all-reduced in buckets of at most this many elements, so the
# temporary buffer stays small next to the model (DDP uses 25 MB buckets).
GRAD_BUCKET_NUMEL = 1 << 23


# ----------------------------------------------------------------------------- the group

def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_from_env(device: torch.device, shards: bool = False) -> None:
    """Join the process group when launched by torchrun/accelerate; no-op otherwise.

    On CUDA the process is pinned to ``cuda:LOCAL_RANK`` first, so that
    ``device="auto"``/``"cuda"`` mean this rank's own GPU. A stage that can
    shard its models (``shards=True``: the supervised stages, through
    ``sharding.resolve_mode``) handles the launcher's FSDP/DeepSpeed request
    itself; for the others a warning says it is ignored.
    """
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    if device.type == "cuda":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    atexit.register(_destroy)
    if not shards:
        _warn_about_ignored_sharding()


def _destroy() -> None:
    if is_distributed():
        dist.destroy_process_group()


def exit_now(code: int = 0):
    """End the process at once after a finished run: flush, then ``os._exit(code)``.

    Used after runs that sharded a model (FSDP2/DTensor): interpreter teardown
    can then abort the process (std::terminate, SIGABRT) after all work is
    done, in a few percent of 2-rank gloo runs. A collective issued during
    ``backward()`` carries autograd's thread-local Python object (the stashed
    ``contextvars`` context), so the gloo worker thread that releases it needs
    the GIL; DTensor's caches keep the process group and its threads alive
    until teardown, and a thread that asks for the GIL during teardown is
    terminated. Skipping teardown avoids that; nothing is lost once outputs
    are written (files are closed, stdio and logging flushed here). The group
    is not destroyed either: ``destroy_process_group`` joins the same threads
    and can block forever (pytorch/pytorch#75097; the likely cause of one CI
    hang of the 2-rank sharded tests), and ``os._exit`` closes its sockets
    anyway.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def _warn_about_ignored_sharding() -> None:
    asked = [k for k in _SHARDING_ENV if os.environ.get(k, "").lower() in ("1", "true", "yes")]
    if asked and is_main():
        warnings.warn(f"{', '.join(asked)} set by the launcher: this stage replicates every model on each rank "
                      f"(data parallelism) and does not shard weights, gradients or optimizer states (the "
                      f"supervised stages do: sharding=auto); see docs/scaling.md", stacklevel=3)


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


# ----------------------------------------------------------------------------- collectives

def _comm_device() -> torch.device:
    """Where collective buffers must live: the current GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(t: torch.Tensor, op) -> torch.Tensor:
    if not is_distributed():
        return t
    dev = _comm_device()
    if t.device == dev:
        dist.all_reduce(t, op=op)
    else:
        buf = t.to(dev)
        dist.all_reduce(buf, op=op)
        t.copy_(buf)
    return t


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place, returned for chaining)."""
    return _all_reduce(t, dist.ReduceOp.SUM)


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Maximum over ranks (in place, returned for chaining)."""
    return _all_reduce(t, dist.ReduceOp.MAX)


def reduce_sums(sums: dict[str, float]) -> dict[str, float]:
    """Sum a dict of floats over ranks; a key missing on some rank counts as 0 there.

    The key sets are gathered first, so a rank that saw no data (and so has no
    keys) still makes the same collective calls as the others.
    """
    if not is_distributed():
        return dict(sums)
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, sorted(sums))
    keys = sorted(set().union(*gathered))
    values = all_reduce_sum(torch.tensor([float(sums.get(k, 0.0)) for k in keys], dtype=torch.float64))
    return dict(zip(keys, values.tolist()))


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (pickled), in rank order, on every rank; one process: ``[obj]``."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@torch.no_grad()
def broadcast_module(model: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (as DDP does at start)."""
    if not is_distributed():
        return
    dev = _comm_device()
    for t in list(model.parameters()) + list(model.buffers()):
        buf = t.data if t.device == dev else t.data.to(dev)
        dist.broadcast(buf, src=src)
        if buf is not t.data:
            t.data.copy_(buf)


@torch.no_grad()
def all_reduce_gradients(model: torch.nn.Module, bucket_numel: int = GRAD_BUCKET_NUMEL) -> None:
    """Sum the gradients of ``model``'s trainable parameters over ranks.

    A parameter whose ``grad`` is None on this rank (it took part in no
    forward pass here: an empty share of the batch) counts as zeros, so every
    rank reduces the same buffers. A parameter that has no gradient on any rank
    keeps ``grad = None``, as it would in a single process (AdamW skips it).
    """
    if not is_distributed():
        return
    params = [p for p in model.parameters() if p.requires_grad]
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.float32)
    all_reduce_sum(present)
    live = []
    for p, n in zip(params, present.tolist()):
        if n > 0:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            live.append(p)
    for bucket in _buckets(live, bucket_numel):
        flat = torch.cat([p.grad.reshape(-1) for p in bucket])
        all_reduce_sum(flat)
        offset = 0
        for p in bucket:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n


def _buckets(params: list[torch.nn.Parameter], bucket_numel: int) -> Iterable[list[torch.nn.Parameter]]:
    """Consecutive groups of parameters of one dtype and device, each at most ``bucket_numel`` elements
    (a single larger parameter gets a bucket of its own)."""
    bucket: list[torch.nn.Parameter] = []
    size = 0
    for p in params:
        fits = bucket and size + p.numel() <= bucket_numel
        same = bucket and p.grad.dtype == bucket[0].grad.dtype and p.grad.device == bucket[0].grad.device
        if bucket and not (fits and same):
            yield bucket
            bucket, size = [], 0
        bucket.append(p)
        size += p.numel()
    if bucket:
        yield bucket


# ----------------------------------------------------------------------------- data

def shard(items: list, r: int | None = None, n: int | None = None) -> list:
    """This rank's share of ``items`` (strided, so shares differ by at most one)."""
    r = rank() if r is None else r
    n = world_size() if n is None else n
    return items[r::n]


def local_positions(global_indices: Iterable[int], r: int | None = None, n: int | None = None) -> list[int]:
    """Which of this rank's items (positions in its ``shard``) are among ``global_indices``.

    With the strided ``shard``, global item g lives on rank g % n at position
    g // n. Order follows ``global_indices``; the list may be empty.
    """
    r = rank() if r is None else r
    n = world_size() if n is None else n
    return [int(g) // n for g in global_indices if int(g) % n == r]


def gather_shards(local: torch.Tensor, total: int) -> torch.Tensor:
    """The inverse of ``shard`` for a tensor: the whole (total, ...) tensor, as fp64 on the CPU, from
    every rank's strided share (a sum over ranks of zero-filled copies; one process: ``local``)."""
    whole = torch.zeros((total, *local.shape[1:]), dtype=torch.float64)
    whole[rank()::world_size()] = local.detach().double().cpu()
    return all_reduce_sum(whole)


def rank_seed(seed: int, *salt: int, r: int | None = None) -> int:
    """A 63-bit seed that differs per rank and per ``salt`` (e.g. the step), stable across runs."""
    r = rank() if r is None else r
    digest = hashlib.sha256(repr((int(seed), r) + tuple(int(s) for s in salt)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# ----------------------------------------------------------------------------- precision

PRECISIONS = ("auto", "fp32", "bf16")
#: What ``accelerate launch --mixed_precision`` may ask ``precision=auto`` for ("" = not asked).
LAUNCHER_PRECISIONS = ("", "bf16", "no")


def launcher_precision() -> str:
    """The mixed precision ``accelerate launch`` asked for (ACCELERATE_MIXED_PRECISION), lower case; "" if none."""
    return os.environ.get("ACCELERATE_MIXED_PRECISION", "").strip().lower()


def check_launcher_precision(precision: str) -> None:
    """``precision=auto`` under a launcher that asked for a mixed precision this package does not run (fp16,
    fp8): a ValueError saying so, instead of silently running bf16 or fp32 in its place."""
    launcher = launcher_precision()
    if precision == "auto" and launcher not in LAUNCHER_PRECISIONS:
        raise ValueError(f"precision: auto follows accelerate launch, which asked for mixed precision {launcher!r} "
                         f"(ACCELERATE_MIXED_PRECISION); only bf16 and no are supported (fp16 needs loss scaling, "
                         f"which is not offered): launch with --mixed_precision bf16 or no, or set precision=bf16 "
                         f"or precision=fp32")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means plain fp32.

    ``auto``: what ``accelerate launch`` asked for (ACCELERATE_MIXED_PRECISION
    = bf16 / no), else bf16 on a CUDA device that supports it, else fp32 (CPU).
    Weights, gradients and optimizer states stay fp32 in every case.
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    check_launcher_precision(precision)
    launcher = launcher_precision()
    if launcher == "bf16":
        return torch.bfloat16
    if launcher == "no":
        return None
    if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``device``'s type, or a no-op context for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
