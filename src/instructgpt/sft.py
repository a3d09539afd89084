"""Step 1: supervised fine-tuning on labeler demonstrations.

Loss on response tokens only (the prompt is context), token mean over each
global batch. The kept checkpoint is the epoch whose sampled responses to
validation prompts get the highest mean reward-model score when a reward
model is given (the paper's rule: validation loss overfits after one epoch
while RM score keeps improving), else the epoch with the lowest validation
loss, else the last epoch. The choice is logged and stored in instructgpt.json.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from . import distributed as dist
from . import lora
from . import sharding
from .batching import Encoded, ModelContext, RecordEncoder, TrainingSequenceOptions, truncation_note
from .chat import ChatFormat, prompt_input
from .config import ConfigError, changed_from_default, opt
from .data import DataError, Demonstration, load_demonstrations, load_prompts
from .generation import generate
from .lora import LoraOptions
from .lm import LMTask, mean_lm_loss
from .models import ModelOptions, load_tokenizer, pick_device, resolve_dtype, trained_policy
from .reward_model import RewardModel, check_scores_policy_tokens
from .records import open_metrics, update_run_info, write_run_info
from .resume_check import check_resume
from .training import FitResult, TrainConfig, fit


LOSS_TURNS = ("all", "last")


@dataclass
class SFTConfig(TrainingSequenceOptions, LoraOptions, ModelOptions, TrainConfig):
    """Supervised fine-tuning (``instructgpt sft``)."""
    model: str = opt("", "Model to fine-tune: a folder, a .gguf file, or 'smollm2'.")
    train: str = opt("", "Demonstrations JSONL (prompt or prompt_id, response).")
    valid: str = opt("", "Validation demonstrations JSONL (optional; gives sft/val_loss).")
    reward_model: str = opt("", "Reward-model folder: keep the epoch whose responses to validation prompts score highest.")
    select_prompts: int = opt(64, "Validation prompts sampled and scored per epoch when a reward model is given.")
    max_new_tokens: int = opt(64, "Response length limit when sampling for checkpoint selection.")
    dropout: float = opt(0.2, "Dropout during SFT (paper: 0.2 residual): every dropout the architecture has "
                              "(0 = off). The saved config keeps the base model's own values.")
    lr: float = opt(1e-4, "Peak learning rate (paper: 9.65e-6 for 1.3B; tiny models want more).")
    loss_turns: str = opt("all", "Which assistant turns of a demonstration given as a whole conversation (messages, "
                                 "ShareGPT conversations, Alpaca history) the loss counts: all (every reply, each "
                                 "with its end of turn; as TRL's assistant_only_loss and LLaMA-Factory do) or last "
                                 "(the final reply; earlier ones are context only). A reply to a prompt (prompt/"
                                 "response or prompt/completion rows, the labeling app's export) trains alone.")

    def validate(self) -> None:
        super().validate()
        if self.loss_turns not in LOSS_TURNS:
            raise ConfigError(f"loss_turns: must be one of {', '.join(LOSS_TURNS)}, got {self.loss_turns!r}")
        self.validate_model_options()
        self.validate_lora()
        self.validate_sequence_options()
        self.refuse_dtype_without_frozen_weights(bool(self.reward_model) or self.lora_r > 0,
                                                 "sft without reward_model or LoRA",
                                                 "the selection's reward_model, the base under LoRA, lora_r > 0")
        if self.select_prompts < 1 or self.max_new_tokens < 1:
            raise ConfigError(f"select_prompts, max_new_tokens: must be >= 1, got {self.select_prompts}, "
                              f"{self.max_new_tokens}")
        if not self.reward_model:
            self.check_no_selection_options()
        if not self.model:
            raise ConfigError("model: required (folder, .gguf file or 'smollm2')")
        if not self.train:
            raise ConfigError("train: required (demonstrations JSONL)")

    def check_no_selection_options(self) -> None:
        """select_prompts and max_new_tokens size the reward model's checkpoint selection: without one, an error."""
        unused = changed_from_default(self, SELECTION_ONLY)
        if unused:
            raise ConfigError(f"{', '.join(k.split('=')[0] for k in unused)}: only read when reward_model= picks the "
                              f"kept epoch by sampling, so {', '.join(unused)} would do nothing without it; give "
                              f"reward_model or leave {'it' if len(unused) == 1 else 'them'} out")


#: what only the reward-model checkpoint selection reads
SELECTION_ONLY = ("select_prompts", "max_new_tokens")


@dataclass
class SFTResult:
    out_dir: str
    fit: FitResult
    selected_by: str
    val_loss: float | None  # of the kept (selected) epoch


def encode_demonstrations(demos: list[Demonstration], encoder: RecordEncoder,
                          loss_turns: str = "all") -> tuple[list[Encoded], int]:
    """Encode all demonstrations (a whole conversation's earlier replies marked for the loss too under
    ``loss_turns=all``); returns (examples, how many responses were cut to fit)."""
    encoded = []
    for start in range(0, len(demos), _ENCODE_CHUNK):
        chunk = demos[start:start + _ENCODE_CHUNK]
        with encoder.fmt.tokenized_ahead([(prompt_input(d), d.response) for d in chunk]):
            encoded += [encoder.pair(prompt_input(d), d.response, d.source,
                                     earlier_replies=loss_turns == "all" and d.conversation) for d in chunk]
    return encoded, sum(e.truncated for e in encoded)


_ENCODE_CHUNK = 256  # demonstrations whose texts go to the tokenizer in one batch call (kept small: see rm.py's)


@torch.no_grad()
def mean_reward_of_samples(policy, reward_model: RewardModel, prompt_ids: list[list[int]], fmt: ChatFormat,
                           max_new_tokens: int, seed: int, batch_size: int = 32) -> float:
    """Sample one response per prompt (temperature 1, fixed seed) and average the RM scores."""
    device = next(policy.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    pad_id = fmt.tokenizer.pad_token_id
    gen = generate(policy, prompt_ids, max_new_tokens, fmt.stop_ids, pad_id, generator=g, batch_size=batch_size)
    seqs = [p + r for p, r in zip(prompt_ids, gen.responses)]
    return reward_model.score(seqs, pad_id, batch_size).mean().item()


def finite_selection_score(score: float, epoch: int, cfg: SFTConfig, device: torch.device) -> float:
    """``score`` (the selection reward model's mean on an epoch's samples), or a FloatingPointError when it is
    not finite: a NaN never beats another score, so the first epoch would be kept 'by the highest score'."""
    if math.isfinite(score):
        return score
    cause = (f"dtype={cfg.dtype} loads it in fp16, whose range ends at 65504: use dtype=bf16 or fp32"
             if resolve_dtype(cfg.dtype, device) == torch.float16 else "check the reward model's weights")
    raise FloatingPointError(f"sft: the reward model {cfg.reward_model} scored epoch {epoch}'s samples {score} "
                             f"(checkpoint selection cannot compare epochs by it); {cause}")


def train_sft(cfg: SFTConfig) -> SFTResult:
    """Fine-tune ``cfg.model`` on ``cfg.train``; the selected epoch is saved to ``cfg.out_dir``."""
    check_resume(cfg)  # a resume with changed options: refused before anything loads or is written
    device = pick_device(cfg.device)
    dist.init_from_env(device, shards=True)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model)
    fmt = ChatFormat.load(tokenizer, cfg.chat_template)
    fmt.apply_to(tokenizer)  # the saved tokenizer carries the format trained with (chat_template=auto later)
    encoder = RecordEncoder(fmt, ModelContext.of_model(cfg.model, tokenizer), cfg.max_prompt_tokens,
                            max_seq_len=cfg.max_seq_len, max_new_tokens=cfg.max_new_tokens)
    prompts = {p.id: p for p in load_prompts(cfg.prompts)} if cfg.prompts else None
    train_demos = load_demonstrations(cfg.train, prompts)
    if not train_demos:
        raise DataError(f"{cfg.train}: no demonstrations")
    valid_demos = load_demonstrations(cfg.valid, prompts) if cfg.valid else []  # its errors before tokenizing
    if cfg.reward_model:  # it scores this model's samples as token ids: checked before any tokenizing
        check_scores_policy_tokens(cfg.reward_model, tokenizer, fmt)
    train_ex, cut = encode_demonstrations(train_demos, encoder, cfg.loss_turns)
    valid_ex, _ = encode_demonstrations(valid_demos, encoder, cfg.loss_turns)

    model = trained_policy(cfg.model, device, cfg, dropout=cfg.dropout)
    out = Path(cfg.out_dir)
    note = truncation_note("sft", train_ex, cfg.max_seq_len, fmt,
                           "the model is not trained to end those replies")
    if note and dist.is_main():
        print(note, flush=True)
    if dist.is_main():
        write_run_info(out, "sft", cfg, {"train_examples": len(train_ex), "responses_truncated": cut,
                                         "format": fmt.describe(), "parameters": lora.parameter_counts(model)})
    log = open_metrics(out, "sft", cfg)

    reward_model = RewardModel.from_pretrained(
        cfg.reward_model, device, dtype=resolve_dtype(cfg.dtype, device),
        attn_implementation=cfg.attn_implementation).eval() if cfg.reward_model else None
    select_prompts = _selection_prompts(valid_demos or train_demos, encoder, cfg) if reward_model else []

    def evaluate(m, epoch: int) -> dict[str, float]:
        metrics = {}
        if valid_ex:
            metrics["sft/val_loss"] = mean_lm_loss(m, valid_ex, tokenizer.pad_token_id, device)
        if reward_model is not None:
            metrics["sft/val_rm_score"] = finite_selection_score(mean_reward_of_samples(
                m, reward_model, select_prompts, fmt, cfg.max_new_tokens, cfg.seed), epoch, cfg, device)
        return metrics

    if reward_model is not None:
        select, selected_by = ("sft/val_rm_score", "max"), "highest mean reward-model score on validation prompts"
    elif valid_ex:
        select, selected_by = ("sft/val_loss", "min"), "lowest validation loss"
    else:
        select, selected_by = None, "last epoch, no validation data"
    result = fit(model, LMTask(train_ex, tokenizer.pad_token_id), cfg, device, evaluate, select, log=log)
    kept_epoch = result.best_epoch if result.best_epoch is not None else result.last_epoch
    ended = (f", ended by max_steps={cfg.max_steps} at step {result.steps}"
             if result.ended_inside_epoch and kept_epoch == result.epochs_run else "")
    kept = f"epoch {kept_epoch}{ended} ({selected_by})"

    if lora.has_adapters(model):  # the adapter (and with merge_lora the merged folder); never sharded
        if dist.is_main():
            lora.save_policy(model, out, tokenizer, merge=cfg.merge_lora)
    else:
        sharding.save_pretrained(model, str(out), safe_serialization=True)  # every rank: gathers a sharded model
    if dist.is_main():
        tokenizer.save_pretrained(str(out))
        fmt.save_generation_config(out)  # transformers' generate stops at the end of turn, as ours does
        log.close()
        update_run_info(out, selected_epoch=result.best_epoch, selected_by=selected_by,
                        selection_score=result.best_score, history=result.history)
        print(f"sft: kept {kept}; saved to {out}")
    dist.barrier()
    return SFTResult(str(out), result, selected_by, _kept_val_loss(result))


def _kept_val_loss(result: FitResult) -> float | None:
    """The validation loss of the kept weights: the selected epoch's, else the last epoch's."""
    if not result.history:
        return None
    kept = next((h for h in result.history if h["epoch"] == result.best_epoch), result.history[-1])
    return kept.get("sft/val_loss")


def _selection_prompts(demos: list[Demonstration], encoder: RecordEncoder, cfg: SFTConfig) -> list[list[int]]:
    seen, out = set(), []
    for d in demos:
        if d.prompt not in seen:
            seen.add(d.prompt)
            out.append(encoder.prompt(prompt_input(d), d.source))
        if len(out) >= cfg.select_prompts:
            break
    return out
