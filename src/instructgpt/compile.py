"""``compile=``: torch.compile (inductor) for the hot paths, on where it pays.

Two places use it:

- training forward/backward of every stage (SFT, RM, PPO's policy and value
  model, pretraining): each transformer block is compiled in place
  (``block.compile()``, "regional" compilation). One compiled block serves every
  layer, so compile time is that of one block rather than the whole model, the
  state dict keys do not change (checkpoints stay interchangeable) and FSDP2's
  per-block hooks stay outside the compiled code;
- the lean decode step (``fast_decode.LeanDecoder``): one compiled function per
  architecture with dynamic shapes (the cache length grows by one per step).

    mode = resolve(cfg.compile, device)      # "on" / "off" / "auto" -> bool
    compile_blocks(model) if mode else None

``auto`` (the default) compiles on CUDA (one process) and not on a CPU: on the 2-core CPU this
package is benchmarked on, inductor's compile time (minutes under load) is not
repaid at the sizes a CPU trains (see bench/README.md for the A/B figures).
Compiled code computes the same function; inductor may fuse and reorder floating
point operations, so results agree with eager to float tolerance, not bit for bit.
"""

from __future__ import annotations

import torch

from . import distributed as dist

MODES = ("auto", "on", "off")


def resolve(mode: str, device: torch.device | str) -> bool:
    """Whether to compile: ``on``/``off`` as said; ``auto`` on a CUDA device of a single-process run
    (several processes may shard the blocks with FSDP after loading: compile there only when asked)."""
    if mode not in MODES:
        raise ValueError(f"compile: {mode!r} is not one of {', '.join(MODES)}")
    if mode == "auto":
        return torch.device(device).type == "cuda" and dist.world_size() == 1
    return mode == "on"


def block_types(model: torch.nn.Module) -> set[str]:
    """Class names of the model's repeated transformer blocks (transformers' ``_no_split_modules``)."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    return names


def compile_blocks(model: torch.nn.Module) -> int:
    """Compile each transformer block of ``model`` in place; returns how many were compiled (0 when the
    model declares no block type, e.g. a custom module: it then runs eagerly)."""
    names = block_types(model)
    n = 0
    for m in model.modules():
        if type(m).__name__ in names and not getattr(m, "_compiled_call_impl", None):
            m.compile()
            n += 1
    return n


def is_compiled(model: torch.nn.Module) -> bool:
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())


def compile_function(fn):
    """A compiled version of a decode-step function (shapes change every step: dynamic)."""
    return torch.compile(fn, dynamic=True)
