"""Pretraining text: loading, packing into fixed blocks, and the ``pretrain`` stage.

Corpus format (used by ``pretrain`` and by PPO-ptx's ``pretrain_data``):
a ``.txt`` file whose documents are separated by blank lines, or a ``.jsonl``
file with one ``{"text": ...}`` object per line. Documents are tokenised,
joined with EOS between them, and cut into blocks of ``seq_len`` tokens (the
tail shorter than a block is dropped and counted). Every token of a block is
a target.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from . import distributed as dist
from . import sharding
from .batching import Encoded
from .config import ConfigError, opt
from .data import DataError
from .models import (ModelOptions, check_attn_implementation, enable_gradient_checkpointing, fuse_activations,
                     load_tokenizer, pick_device)
from .records import open_metrics, update_run_info, write_run_info
from .training import TrainConfig, fit


def load_corpus(path: str | Path) -> list[str]:
    """Documents of a .txt (blank-line separated) or .jsonl ({"text": ...}) corpus."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.suffix == ".jsonl":
        docs = []
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{i}: json: {e.msg}") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or not obj["text"].strip():
                raise DataError(f"{path}:{i}: text: expected a non-empty string")
            docs.append(obj["text"])
        return docs
    return [d.strip() for d in path.read_text().split("\n\n") if d.strip()]


def pack_blocks(tokenizer, docs: list[str], seq_len: int) -> torch.Tensor:
    """Tokenise, join with EOS, cut into (N, seq_len) blocks."""
    stream: list[int] = []
    for d in docs:
        stream.extend(tokenizer(d, add_special_tokens=False)["input_ids"])
        stream.append(tokenizer.eos_token_id)
    n = len(stream) // seq_len
    if n == 0:
        raise DataError(f"corpus: {len(stream)} tokens, fewer than one block of seq_len={seq_len}")
    return torch.tensor(stream[:n * seq_len], dtype=torch.long).view(n, seq_len)


class BlockStream:
    """Endless, seeded pass over packed blocks; ``position`` is saved for resume."""

    def __init__(self, blocks: torch.Tensor, seed: int):
        self.blocks, self.seed, self.position = blocks, seed, 0

    def _order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(len(self.blocks), generator=torch.Generator().manual_seed(self.seed * 1000003 + epoch))

    def next(self, n: int) -> torch.Tensor:
        """The next ``n`` blocks (B, seq_len)."""
        out = []
        while len(out) < n:
            epoch, i = divmod(self.position, len(self.blocks))
            out.append(self.blocks[self._order(epoch)[i]])
            self.position += 1
        return torch.stack(out)


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
        if not self.corpus or not self.tokenizer:
            raise ConfigError("corpus, tokenizer: both required")
        if self.size not in SIZES:
            raise ConfigError(f"size: {self.size!r} is not one of {sorted(SIZES)}")


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
    from .sft import LMTask, mean_lm_loss

    device = pick_device(cfg.device)
    dist.init_from_env(device, shards=True)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.tokenizer)
    blocks = pack_blocks(tokenizer, load_corpus(cfg.corpus), cfg.seq_len)
    examples = [Encoded([], row.tolist()) for row in blocks]
    valid = []
    if cfg.valid_corpus:
        valid = [Encoded([], row.tolist()) for row in pack_blocks(tokenizer, load_corpus(cfg.valid_corpus), cfg.seq_len)]
    config = gpt2_config(cfg, tokenizer)
    attn = check_attn_implementation(cfg.attn_implementation, device)
    if attn:
        config._attn_implementation = attn
    model = fuse_activations(GPT2LMHeadModel(config)).to(device)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    out = Path(cfg.out_dir)
    if dist.is_main():
        write_run_info(out, "pretrain", cfg, {"blocks": len(examples), "tokens": len(examples) * cfg.seq_len,
                                              "parameters": sum(p.numel() for p in model.parameters())})

    def evaluate(m, epoch):
        return {"pretrain/val_loss": mean_lm_loss(m, valid, tokenizer.pad_token_id, device, response_only=False)} if valid else {}

    log = open_metrics(out, "pretrain", cfg)
    result = fit(model, LMTask(examples, tokenizer.pad_token_id, response_only=False, prefix="pretrain"), cfg, device,
                 evaluate, None, log=log)
    sharding.save_pretrained(model, str(out))  # every rank: gathers a sharded model
    if dist.is_main():
        log.close()
        tokenizer.save_pretrained(str(out))
        update_run_info(out, history=result.history)
    dist.barrier()
    return result
