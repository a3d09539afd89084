"""Saving and restoring a PPO run: resumable checkpoints of the trainer, and the final folders.

A checkpoint (``out_dir/checkpoints/step-N``) holds full tensors of the policy, the
value model (or shared head) and the EMA, the optimizer, the KL controller, the
sampling generator and the positions in the prompt and pretraining streams, so a
resumed run continues the same iterations. The final folders are plain Hugging
Face folders (or LoRA adapter folders): the EMA policy in ``out_dir``, the raw
policy in ``policy_raw/``, the value model in ``value_model/`` (or
``value_head.safetensors`` for a shared head).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file

from . import checkpoint as ckpt
from . import distributed as dist
from . import lora
from . import sharding
from .resume_check import checkpoint_record

if TYPE_CHECKING:
    from .ppo import PPOTrainer


def modules(trainer: PPOTrainer) -> dict[str, torch.nn.Module]:
    """The trainer's models by checkpoint name: the policy, the value model or head, the EMA."""
    mods = {"policy": trainer.policy}
    if trainer.value is not None:
        mods["value"] = trainer.value
    if trainer.ema_model is not None:
        mods["ema"] = trainer.ema_model
    return mods


def save_checkpoint(trainer: PPOTrainer) -> Path:
    """Full (unsharded) tensors written by rank 0; every rank calls it (gathering is collective)."""
    tensors = sharding.checkpoint_tensors(modules(trainer))
    optim_state = sharding.optimizer_state_dict(trainer.optimizer, rank0_only=True)
    if dist.is_main():
        root = Path(trainer.cfg.out_dir) / "checkpoints"
        objects = {"optimizer": optim_state, "kl_ctl": trainer.kl_ctl.state_dict(),
                   "generator": trainer.generator.get_state(),
                   "ptx_position": trainer.ptx.position if trainer.ptx else 0}
        state = {"iteration": trainer.iteration, "prompt_position": trainer.prompt_position,
                 "ema_updates": trainer.ema_updates, **checkpoint_record(trainer.cfg)}
        ckpt.save_checkpoint(root / f"step-{trainer.iteration:07d}", tensors, objects, state)
        ckpt.prune_checkpoints(root, trainer.cfg.keep_checkpoints)
    dist.barrier()
    return Path(trainer.cfg.out_dir) / "checkpoints" / f"step-{trainer.iteration:07d}"


def load_checkpoint(trainer: PPOTrainer, folder: Path) -> None:
    """Restore the trainer's weights, optimizer, KL controller, sampling generator and stream positions."""
    objects, state = ckpt.load_checkpoint(folder, modules(trainer))  # full tensors: any ranks, sharded or not
    sharding.load_optimizer_state_dict(trainer.optimizer, objects["optimizer"])
    trainer.kl_ctl.load_state_dict(objects["kl_ctl"])
    trainer.generator.set_state(objects["generator"])
    if dist.rank() > 0:  # the checkpoint holds rank 0's stream; the others fork their own from it
        trainer.generator.manual_seed(dist.rank_seed(trainer.cfg.seed, state["iteration"]))
    if trainer.ptx is not None:
        trainer.ptx.position = objects["ptx_position"]
    trainer.iteration = state["iteration"]
    trainer.prompt_position = state["prompt_position"]
    trainer.ema_updates = state["ema_updates"]


def save_final(trainer: PPOTrainer) -> None:
    """Plain HF folders written by rank 0; every rank calls it (sharded weights are gathered)."""
    out = Path(trainer.cfg.out_dir)
    if lora.has_adapters(trainer.policy):
        if dist.is_main():
            _save_lora_final(trainer, out)
        return
    final = trainer.ema_model if trainer.ema_model is not None else trainer.policy
    sharding.save_pretrained(final, str(out))
    if trainer.ema_model is not None:
        sharding.save_pretrained(trainer.policy, str(out / "policy_raw"))
    if trainer.value is not None and not trainer.shared:
        sharding.save_pretrained(trainer.value, out / "value_model", trainer.tokenizer)
    if dist.is_main():
        trainer.tokenizer.save_pretrained(str(out))
        trainer.format.save_generation_config(out)
        if trainer.ema_model is not None:
            trainer.tokenizer.save_pretrained(str(out / "policy_raw"))
            trainer.format.save_generation_config(out / "policy_raw")
        if trainer.shared and trainer.value is not None:
            _save_value_head(trainer, out)


def _save_lora_final(trainer: PPOTrainer, out: Path) -> None:
    """Adapter folders: the policy (EMA adapters) in out_dir, policy_raw/, value_model/ (or
    value_head.safetensors); merged plain folders instead with ``merge_lora`` (adapters in adapter/)."""
    merge, tok = trainer.cfg.merge_lora, trainer.tokenizer
    if trainer.ema_model is not None:
        with trainer.ema_model.swapped_into(trainer.policy):
            lora.save_policy(trainer.policy, out, tok, merge)
        lora.save_policy(trainer.policy, out / "policy_raw", tok, merge)
    else:
        lora.save_policy(trainer.policy, out, tok, merge)
    for folder in (out, out / "policy_raw"):  # plain (merged) or adapter folders
        trainer.format.save_generation_config(folder)
    if trainer.value is None:
        return
    if trainer.shared:
        _save_value_head(trainer, out)
    else:
        lora.save_reward_model(trainer.value, out / "value_model", tok, merge)


def _save_value_head(trainer: PPOTrainer, out: Path) -> None:
    """``value_model=shared``: the head sits on policy_raw's trunk (or the saved policy's, without EMA)."""
    save_file({k: v.contiguous() for k, v in trainer.value.state_dict().items()}, str(out / "value_head.safetensors"))
