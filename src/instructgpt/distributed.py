"""Process-group helpers: everything is a no-op on a single process.

Under ``torchrun`` or ``accelerate launch`` (RANK / WORLD_SIZE set) the group
is initialised with NCCL on CUDA and gloo on CPU. Gradients are summed across
ranks by ``all_reduce_gradients``; losses are normalised by global counts
(tokens, rankings) so N processes compute exactly what one would.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_from_env(device: torch.device) -> None:
    """Join the process group when launched by torchrun/accelerate; no-op otherwise."""
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place, returned for chaining)."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_gradients(model: torch.nn.Module) -> None:
    """Sum gradients over ranks, one flat buffer per call."""
    if not is_distributed():
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def shard(items: list, r: int | None = None, n: int | None = None) -> list:
    """This rank's share of ``items`` (strided, so shares differ by at most one)."""
    r = rank() if r is None else r
    n = world_size() if n is None else n
    return items[r::n]
