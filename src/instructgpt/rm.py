"""Step 2: the reward model, trained on rankings of K responses per prompt.

Each ranking is one batch element: its K responses are forwarded once each,
and its loss is the mean over all its (better, worse) pairs of
-log sigmoid(r_w - r_l) (ties give no pair), as in the paper. After training
the reward is shifted by a stored bias so that reference responses (labeler
demonstrations, or the best-ranked training responses when none are given)
score mean 0.
"""

from __future__ import annotations

import dataclasses

import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from . import distributed as dist
from . import lora
from . import sharding
from .batching import (Encoded, ModelContext, RecordEncoder, TrainingSequenceOptions, collate_rankings,
                       truncation_note)
from .chat import ChatFormat, prompt_input
from .config import ConfigError, opt
from .data import DataError, Demonstration, Ranking, load_demonstrations, load_prompts, load_rankings
from .dropout import restore_dropout, set_dropout
from .losses import pairwise_accuracy, ranking_loss
from .lora import LoraOptions
from .models import ModelOptions, load_tokenizer, pick_device
from .reward_model import RewardModel, trained_reward_model
from .records import open_metrics, update_run_info, write_run_info
from .resume_check import check_resume
from .training import FitResult, TrainConfig, fit


@dataclass
class RMConfig(TrainingSequenceOptions, LoraOptions, ModelOptions, TrainConfig):
    """Reward-model training (``instructgpt rm``)."""
    model: str = opt("", "Model to start from (the SFT folder): its unembedding is replaced by a scalar head.")
    train: str = opt("", "Rankings JSONL (also {prompt, chosen, rejected} rows).")
    valid: str = opt("", "Validation rankings JSONL (gives rm/val_accuracy; keeps the epoch with the lowest val loss).")
    reference: str = opt("", "Demonstrations JSONL whose responses should score mean 0 after training "
                             "(default: the best-ranked response of each training ranking).")
    batch_size: int = opt(16, "Rankings per optimizer step (paper: 64 prompts).")
    micro_batch_size: int = opt(8, "Rankings per forward pass (each holds K responses).")
    lr: float = opt(3e-5, "Peak learning rate (paper: 9e-6 for the 6B RM).")

    def validate(self) -> None:
        super().validate()
        self.validate_model_options()
        self.validate_lora()
        self.validate_sequence_options()
        self.refuse_dtype_without_frozen_weights(self.lora_r > 0, "rm without LoRA", "the base under LoRA, lora_r > 0")
        if not self.model:
            raise ConfigError("model: required (the SFT model folder)")
        if not self.train:
            raise ConfigError("train: required (rankings JSONL)")


@dataclass
class RMResult:
    out_dir: str
    fit: FitResult
    val_accuracy: float | None
    reward_bias: float


@dataclass(slots=True)
class EncodedRanking:
    """A ranking's K responses as token ids and its (winner, loser) pairs (tuples shared by every ranking)."""
    responses: list[Encoded]
    pairs: list[tuple[int, int]]
    source: str


def encode_rankings(rankings: list[Ranking], encoder: RecordEncoder) -> list[EncodedRanking]:
    """Each response after its prompt; the reward is read at its last token (the end of turn)."""
    out = []
    for start in range(0, len(rankings), _ENCODE_CHUNK):
        chunk = rankings[start:start + _ENCODE_CHUNK]
        with encoder.fmt.tokenized_ahead([(prompt_input(r), resp) for r in chunk for resp in r.responses]):
            out += [_encode_ranking(r, encoder) for r in chunk]
    return out


_ENCODE_CHUNK = 32  # rankings whose texts go to the tokenizer in one batch call: as fast as 256, and the batch's
#                      transient lists of ids stay small (256 left 3,000 K=9 rankings at 235 MB of RSS, 32 at 86)


def _encode_ranking(r: Ranking, encoder: RecordEncoder) -> EncodedRanking:
    enc = _share_prompt_ids([encoder.pair(prompt_input(r), resp, r.source) for resp in r.responses])
    pairs = [_PAIRS.setdefault(p, p) for p in r.pairs()]
    if not pairs:
        raise DataError(f"{r.source}: ranking: all responses tied; no comparison to learn from")
    return EncodedRanking(enc, pairs, r.source)


_PAIRS: dict[tuple[int, int], tuple[int, int]] = {}  # each (winner, loser) pair met, held once (at most K*K):
#                                                      a K=9 ranking's 36 pairs were 2 KB of tuples of its own


def _share_prompt_ids(responses: list[Encoded]) -> list[Encoded]:
    """The K responses of a ranking with one list of their prompt's token ids where they are equal (as they
    are unless the tokenizer merged a reply into its prompt), not K copies of it: nine of a K=9 ranking."""
    first = responses[0].prompt_ids
    return [e if e.prompt_ids is first or e.prompt_ids != first else dataclasses.replace(e, prompt_ids=first)
            for e in responses]


class RankingTask:
    """All pairs of one ranking in one batch element; weight = rankings."""

    metric_prefix = "rm"

    def __init__(self, rankings: list[EncodedRanking], pad_id: int):
        self.rankings, self.pad_id = rankings, pad_id
        self.n_examples = len(rankings)

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        rs = [self.rankings[i] for i in indices]
        return collate_rankings([r.responses for r in rs], [r.pairs for r in rs], self.pad_id)

    def weight(self, batch) -> float:
        return float(batch["pair_group"].max().item() + 1) if batch["pair_group"].numel() else 0.0

    def loss(self, model: RewardModel, batch):
        rewards = model(batch["input_ids"], batch["attention_mask"])            # (N,)
        n_groups = int(batch["pair_group"].max().item()) + 1
        loss_sum, pair_loss = ranking_loss(rewards, batch["winners"], batch["losers"], batch["pair_group"], n_groups)
        n_pairs = len(pair_loss)
        with torch.no_grad():
            accuracy = pairwise_accuracy(rewards, batch["winners"], batch["losers"]).item() if n_pairs else 0.0
        correct = accuracy * n_pairs
        return loss_sum, {"loss_sum": loss_sum.item(), "rankings": n_groups,
                          "correct": correct, "pairs": float(n_pairs)}

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        return {"rm/loss": sums["loss_sum"] / max(sums["rankings"], 1.0),
                "rm/accuracy": sums["correct"] / max(sums["pairs"], 1.0)}


@torch.no_grad()
def evaluate_rankings(model: RewardModel, rankings: list[EncodedRanking], pad_id: int, device,
                      batch_size: int = 8) -> dict[str, float]:
    """Mean ranking loss and pairwise accuracy over ``rankings``."""
    was = model.training
    model.eval()
    dropout = set_dropout(model, 0.0)  # scoring without dropout (modules, attention attributes, config)
    task = RankingTask(rankings, pad_id)
    sums: dict[str, float] = {}
    for i in range(0, len(rankings), batch_size):
        batch = {k: v.to(device) for k, v in task.collate(list(range(i, min(i + batch_size, len(rankings))))).items()}
        _, stats = task.loss(model, batch)
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + v
    restore_dropout(dropout)
    model.train(was)
    m = task.summarize(sums)
    return {"rm/val_loss": m["rm/loss"], "rm/val_accuracy": m["rm/accuracy"]}


@torch.no_grad()
def score_sequences(model: RewardModel, seqs: list[list[int]], pad_id: int, device, batch_size: int = 32) -> torch.Tensor:
    """(N,) rewards of token sequences (prompt + response ending with its end token): ``RewardModel.score``."""
    return model.score(seqs, pad_id, batch_size, device)


def load_reference(cfg: RMConfig, prompts) -> list[Demonstration] | None:
    """The demonstrations of ``cfg.reference`` (None without one); an empty file is an error."""
    if not cfg.reference:
        return None
    demos = load_demonstrations(cfg.reference, prompts)
    if not demos:
        raise DataError(f"{cfg.reference}: reference: no demonstrations (the reward is shifted so they score "
                        f"mean 0; give a file with at least one, or leave reference empty to use the "
                        f"best-ranked training responses)")
    return demos


def reference_sequences(cfg: RMConfig, encoder: RecordEncoder, train: list[Ranking], train_enc: list[EncodedRanking],
                        reference: list[Demonstration] | None) -> tuple[list[Encoded], str]:
    """The responses (as token ids) whose mean reward is set to 0, and a description of where they came from.
    Without a reference file they are the best-ranked training responses, the encoded rankings' own."""
    if reference is not None:
        return ([encoder.pair(prompt_input(d), d.response, d.source) for d in reference],
                f"demonstrations in {cfg.reference}")
    return ([enc.responses[i] for r, enc in zip(train, train_enc, strict=True) for i in r.ranking[0]],
            "best-ranked responses of the training rankings")


def encoded_inputs(cfg: RMConfig, encoder: RecordEncoder
                   ) -> tuple[list[EncodedRanking], list[EncodedRanking], list[Encoded], str]:
    """The training and validation rankings and the reference responses as token ids, and where the reference
    came from. Every file is read before any is tokenized (a bad record is named at once); the records
    themselves (their texts) are not kept: training holds the ids only."""
    prompts = {p.id: p for p in load_prompts(cfg.prompts)} if cfg.prompts else None
    train = load_rankings(cfg.train, prompts)
    if not train:
        raise DataError(f"{cfg.train}: no rankings")
    valid = load_rankings(cfg.valid, prompts) if cfg.valid else []
    reference = load_reference(cfg, prompts)
    train_enc, valid_enc = encode_rankings(train, encoder), encode_rankings(valid, encoder)
    refs, ref_desc = reference_sequences(cfg, encoder, train, train_enc, reference)  # before training: errors first
    return train_enc, valid_enc, refs, ref_desc


def train_rm(cfg: RMConfig) -> RMResult:
    """Train a reward model from ``cfg.model`` on ``cfg.train``; saved with its bias to ``cfg.out_dir``."""
    check_resume(cfg)  # a resume with changed options: refused before anything loads or is written
    device = pick_device(cfg.device)
    dist.init_from_env(device, shards=True)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model)
    fmt = ChatFormat.load(tokenizer, cfg.chat_template)
    fmt.apply_to(tokenizer)  # saved with the reward model: scorers render prompts the same way
    encoder = RecordEncoder(fmt, ModelContext.of_model(cfg.model, tokenizer), cfg.max_prompt_tokens,
                            max_seq_len=cfg.max_seq_len)
    train_enc, valid_enc, refs, ref_desc = encoded_inputs(cfg, encoder)

    model = trained_reward_model(cfg.model, device, cfg, dropout=cfg.dropout)
    out = Path(cfg.out_dir)
    cut = sum(e.truncated for r in train_enc for e in r.responses)
    note = truncation_note("rm", [e for r in train_enc for e in r.responses], cfg.max_seq_len, fmt,
                           "they are ranked by their first part only")
    if note and dist.is_main():
        print(note, flush=True)
    if dist.is_main():
        write_run_info(out, "rm", cfg, {"train_rankings": len(train_enc),
                                        "train_pairs": sum(len(r.pairs) for r in train_enc),
                                        "responses_truncated": cut,
                                        "format": fmt.describe(), "parameters": lora.parameter_counts(model)})
    # the row of rm/reward_bias is logged after the last checkpoint: a resume from there logs it again
    log = open_metrics(out, "rm", cfg, after_training=("rm/reward_bias",))

    def evaluate(m, epoch):
        return evaluate_rankings(m, valid_enc, tokenizer.pad_token_id, device) if valid_enc else {}

    select = ("rm/val_loss", "min") if valid_enc else None
    result = fit(model, RankingTask(train_enc, tokenizer.pad_token_id), cfg, device, evaluate, select, log=log)

    with sharding.unsharded(model):  # sharded: weights gathered once, forward passes local to each rank
        model.reward_bias.zero_()
        bias = -score_sequences(model, [e.ids for e in refs], tokenizer.pad_token_id, device).mean().item()
        if not math.isfinite(bias):
            raise FloatingPointError(f"rm: the trained model scores {ref_desc} as {-bias} (a diverged model); "
                                     f"nothing saved to {out} (lower lr; checkpoints are in {out}/checkpoints)")
        model.reward_bias.fill_(bias)
        final = evaluate_rankings(model, valid_enc, tokenizer.pad_token_id, device) if valid_enc else {}
    extra = {"normalised_on": ref_desc, "normalised_count": len(refs)}
    if lora.has_adapters(model):  # the adapter + head (and with merge_lora the merged folder); never sharded
        if dist.is_main():
            lora.save_reward_model(model, out, tokenizer, merge=cfg.merge_lora, extra=extra)
    else:
        sharding.save_pretrained(model, out, tokenizer, extra=extra)  # every rank: gathers a sharded model
    if dist.is_main():
        # the kept epoch's validation under names of its own: rm/val_* are each epoch's (the last one's at
        # this step in metrics.jsonl, and in instructgpt.json's history)
        kept = {k.replace("rm/val_", "rm/kept_val_"): v for k, v in final.items()}
        update_run_info(out, reward_bias=bias, normalised_on=ref_desc, history=result.history,
                        selected_epoch=result.best_epoch, **kept)
        log.log(result.steps, {"rm/reward_bias": bias, **kept})
        log.close()
        acc = final.get("rm/val_accuracy")
        print(f"rm: bias {bias:+.4f} (mean 0 on {ref_desc})"
              + (f"; validation accuracy {acc:.3f}" if acc is not None else "") + f"; saved to {out}")
    dist.barrier()
    return RMResult(str(out), result, final.get("rm/val_accuracy"), bias)
