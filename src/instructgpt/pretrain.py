"""The ``pretrain`` stage: a small GPT-2 trained from scratch on packed blocks of a corpus.

The corpus format, the packing into fixed blocks and the next-token task are
in ``lm.py`` (PPO-ptx and the evaluation read corpora the same way).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from . import compile as compile_mod
from . import distributed as dist
from . import sharding
from .config import ConfigError, opt
from .lm import BlockTask, corpus_documents, mean_task_loss, pack_blocks
from .models import (ModelOptions, check_attn_implementation, enable_gradient_checkpointing, fuse_activations,
                     load_tokenizer, pick_device)
from .records import open_metrics, update_run_info, write_run_info
from .resume_check import check_resume
from .training import TrainConfig, fit


# ----------------------------------------------------------------------------- the stage

@dataclass
class PretrainConfig(ModelOptions, TrainConfig):
    """Pretraining a GPT-style model from scratch (``instructgpt pretrain``)."""
    corpus: str = opt("", "Training corpus (.txt with blank-line separated documents, or .jsonl with 'text').")
    valid_corpus: str = opt("", "Held-out corpus for validation loss (optional).")
    tokenizer: str = opt("", "Tokenizer folder (e.g. made by the built-in world).")
    size: str = opt("tiny", "tiny (4 layers, width 256, 4 heads) or large (8 layers, width 512, 8 heads; ~8x the compute).")
    n_layer: int = opt(0, "Override the number of layers (0 = from size).")
    n_embd: int = opt(0, "Override the width (0 = from size).")
    n_head: int = opt(0, "Override the number of heads (0 = from size).")
    seq_len: int = opt(256, "Block length in tokens (also the model's context length).")
    dropout: float = opt(0.0, "Residual/embedding/attention dropout.")
    lr: float = opt(1e-3, "Peak learning rate.")
    warmup_steps: int = opt(20, "Linear warmup steps.")
    batch_size: int = opt(16, "Blocks per optimizer step.")
    micro_batch_size: int = opt(16, "Blocks per forward pass.")
    weight_decay: float = opt(0.1, "AdamW weight decay on matrices.")

    def validate(self) -> None:
        super().validate()
        self.validate_model_options()
        self.refuse_dtype_without_frozen_weights(False, "pretrain", "pretraining has none")
        if not self.corpus or not self.tokenizer:
            raise ConfigError("corpus, tokenizer: both required")
        if self.size not in SIZES:
            raise ConfigError(f"size: {self.size!r} is not one of {sorted(SIZES)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout: must be in [0, 1) (0 = off), got {self.dropout}")
        if self.seq_len < 2 or min(self.n_layer, self.n_embd, self.n_head) < 0:
            raise ConfigError(f"seq_len: must be >= 2 and n_layer, n_embd, n_head >= 0 (0 = from size), got "
                              f"{self.seq_len}, {self.n_layer}, {self.n_embd}, {self.n_head}")
        _, width, heads = SIZES[self.size]
        if (self.n_embd or width) % (self.n_head or heads):
            raise ConfigError(f"n_embd, n_head: the width ({self.n_embd or width}) must be a multiple of the number "
                              f"of heads ({self.n_head or heads})")


SIZES = {"tiny": (4, 256, 4), "large": (8, 512, 8)}


def gpt2_config(cfg: PretrainConfig, tokenizer):
    from transformers import GPT2Config
    layers, width, heads = SIZES[cfg.size]
    return GPT2Config(vocab_size=len(tokenizer), n_positions=cfg.seq_len, n_embd=cfg.n_embd or width,
                      n_layer=cfg.n_layer or layers, n_head=cfg.n_head or heads,
                      resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)


def train_pretrain(cfg: PretrainConfig):
    """Train a fresh GPT-2-style model on ``cfg.corpus``; saved as a Hugging Face folder."""
    from transformers import GPT2LMHeadModel

    check_resume(cfg)  # a resume with changed options: refused before anything loads or is written
    device = pick_device(cfg.device)
    dist.init_from_env(device, shards=True)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.tokenizer)
    blocks = pack_blocks(tokenizer, corpus_documents(cfg.corpus), cfg.seq_len, cfg.corpus)
    valid = None
    if cfg.valid_corpus:
        valid = BlockTask(pack_blocks(tokenizer, corpus_documents(cfg.valid_corpus), cfg.seq_len, cfg.valid_corpus))
    config = gpt2_config(cfg, tokenizer)
    attn = check_attn_implementation(cfg.attn_implementation, device)
    if attn:
        config._attn_implementation = attn
    model = fuse_activations(GPT2LMHeadModel(config)).to(device)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if compile_mod.resolve(cfg.compile, device):  # as trained_policy does for the other stages
        compile_mod.compile_blocks(model)
    out = Path(cfg.out_dir)
    if dist.is_main():
        write_run_info(out, "pretrain", cfg, {"blocks": len(blocks), "tokens": blocks.numel(),
                                              "parameters": sum(p.numel() for p in model.parameters())})

    def evaluate(m, epoch):
        return {"pretrain/val_loss": mean_task_loss(m, valid, device)} if valid is not None else {}

    log = open_metrics(out, "pretrain", cfg)
    result = fit(model, BlockTask(blocks), cfg, device, evaluate, None, log=log)
    sharding.save_pretrained(model, str(out))  # every rank: gathers a sharded model
    if dist.is_main():
        log.close()
        tokenizer.save_pretrained(str(out))
        update_run_info(out, history=result.history)
    dist.barrier()
    return result
