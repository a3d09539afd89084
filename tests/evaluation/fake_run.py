"""A fake run folder for the evaluation tests: a tiny simulated world and tiny random models."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from instructgpt.data import write_jsonl
from instructgpt.evaluation.config import EvalConfig

WORLD = {"seed": 3, "scale": 0.005, "corpus_docs": 300, "heldout_docs": 80, "n_toxicity_starts": 4,
         "n_bias": 8, "n_cloze": 24}
N_TEST = 40


def _save_gpt2(folder: Path, tokenizer, seed: int, width: int = 32, layers: int = 2) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=width, n_layer=layers, n_head=2,
                     eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                     pad_token_id=tokenizer.pad_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def make_run(root: Path, world_kwargs: dict = WORLD, n_test: int = N_TEST, vocab: int = 512,
             width: int = 32, layers: int = 2) -> tuple[Path, object]:
    """A fake run folder: world/ (saved in full), data/prompts_test.jsonl, models/{base,sft,ppo,ppo_ptx,rm}."""
    from instructgpt.reward_model import RewardModel
    from instructgpt.world import build_datasets, train_tokenizer
    data = build_datasets(**world_kwargs)
    data.save(root / "world")
    tok = train_tokenizer(data.tokenizer_texts(), vocab_size=vocab)
    models = root / "models"
    for i, name in enumerate(("base", "sft", "ppo", "ppo_ptx")):
        _save_gpt2(models / name, tok, seed=i, width=width, layers=layers)
    RewardModel.from_policy(models / "sft").save_pretrained(models / "rm", tok)
    metrics = [{"step": s, "time": 0.0, "ppo/score": 0.1 * s, "ppo/kl": 0.5 * s, "ppo/lr": 1e-5}
               for s in range(1, 5)]
    (models / "ppo" / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    test = [replace(p, split="test") for p in data.prompts["rm"][:n_test]]
    write_jsonl(root / "data" / "prompts_test.jsonl", test)
    return root, data


def eval_config(run_dir: Path, **kw) -> EvalConfig:
    base = {"run_dir": str(run_dir), "n_prompts": N_TEST, "max_new_tokens": 12, "few_shot": 2,
            "device": "cpu", "batch_size": 64, "seed": 0}
    base.update(kw)
    return EvalConfig(**base)
