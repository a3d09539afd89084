"""Fixtures of the multi-process tests: tiny data, and one 2-rank session that runs every job once."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.conftest import WORDS, repeat_demos, toy_corpus, write_jsonl, yes_rankings
from tests.distributed.harness import one_thread, run_ranks


@pytest.fixture(scope="session")
def dist_data(tmp_path_factory, tiny_gpt2) -> dict:
    """Paths of a tiny GPT-2 (2 layers, width 32) and small data sets for every stage."""
    d = tmp_path_factory.mktemp("dist_data")
    prompts = [{"id": str(i), "text": f"say {w}\n", "user_id": f"u{i % 3}", "use_case": "generation"}
               for i, w in enumerate(WORDS[8:16])]
    (d / "corpus.txt").write_text("\n\n".join(toy_corpus(120, seed=5)))
    model = no_dropout_copy(tiny_gpt2, d / "model")
    return {
        "model": str(model),
        "policy": str(quick_sft_policy(model, d)),
        "sft_train": str(write_jsonl(d / "sft_train.jsonl", repeat_demos(33, 1))),
        "sft_valid": str(write_jsonl(d / "sft_valid.jsonl", repeat_demos(8, 2))),
        "rm_train": str(write_jsonl(d / "rm_train.jsonl", yes_rankings(20, 1))),
        "rm_valid": str(write_jsonl(d / "rm_valid.jsonl", yes_rankings(6, 2))),
        "prompts": str(write_jsonl(d / "prompts.jsonl", prompts)),
        "corpus": str(d / "corpus.txt"),
    }


def quick_sft_policy(model: Path, d: Path) -> Path:
    """A few SFT steps on 'say X' -> a few words, so greedy responses are words (often with an 'e')
    rather than the special tokens a random model repeats: the PPO reward then varies."""
    from instructgpt import config
    from instructgpt.sft import SFTConfig, train_sft
    rng = random.Random(3)
    rows = [{"prompt": f"say {rng.choice(WORDS[8:16])}\n",
             "response": " ".join(rng.choice(WORDS[:8]) for _ in range(rng.randint(2, 4)))} for _ in range(96)]
    write_jsonl(d / "policy_demos.jsonl", rows)
    cfg = config.from_dict(SFTConfig, dict(model=str(model), train=str(d / "policy_demos.jsonl"), out_dir=str(d / "policy"),
                                           lr=3e-3, epochs=2, batch_size=8, dropout=0.0, progress=False, precision="fp32"))
    with one_thread():
        train_sft(cfg)
    return d / "policy"


def no_dropout_copy(model_dir: Path, out: Path) -> Path:
    """The tiny GPT-2 with every dropout off, attention dropout included (stages' ``dropout=0``
    sets only residual and embedding dropout), so runs are deterministic."""
    from transformers import AutoTokenizer, GPT2LMHeadModel
    model = GPT2LMHeadModel.from_pretrained(str(model_dir))
    model.config.update({"attn_pdrop": 0.0, "resid_pdrop": 0.0, "embd_pdrop": 0.0})
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def sft_one_rank(tmp_path_factory, dist_data) -> Path:
    """The single-process SFT run every multi-process SFT run (replicated or sharded) is compared with."""
    from tests.distributed.workers import sft_config
    from instructgpt.sft import train_sft
    out = tmp_path_factory.mktemp("sft1") / "sft"
    with one_thread():
        train_sft(sft_config(dist_data, out))
    return out


@pytest.fixture(scope="session")
def ppo_one_rank(tmp_path_factory, dist_data) -> Path:
    """The single-process PPO-ptx run every multi-process PPO run (replicated or sharded) is compared with."""
    from tests.distributed.workers import ppo_config
    from instructgpt.ppo import train_ppo
    out = tmp_path_factory.mktemp("ppo1") / "ppo"
    with one_thread():
        train_ppo(ppo_config(dist_data, out))
    return out


@pytest.fixture(scope="session")
def two_ranks(tmp_path_factory, dist_data) -> Path:
    """Output folder of one 2-process session: collectives, SFT, deterministic PPO-ptx, PPO with a
    rank whose responses are all EOS at the first token and minibatches of one episode, and RLOO (its
    advantages on a fixed batch, and a run)."""
    root = tmp_path_factory.mktemp("two_ranks")
    jobs = [
        ("collectives_job", {"out": str(root)}),
        ("sft_job", {"data": dist_data, "out": str(root / "sft")}),
        ("ppo_job", {"data": dist_data, "out": str(root / "ppo")}),
        ("ppo_job", {"data": dist_data, "out": str(root / "ppo_eos"), "batch_size": 5, "minibatch_size": 1,
                     "ppo_epochs": 1, "iterations": 2, "temperature": 1.0, "save_every": 1,
                     "generation_backend": "tests.distributed.workers:eos_on_last_rank"}),
        ("rloo_advantages_job", {"data": dist_data, "out": str(root)}),
        ("ppo_job", {"data": dist_data, "out": str(root / "rloo"), "advantage_estimator": "rloo",
                     "samples_per_prompt": 2, "temperature": 1.0}),
    ]
    run_ranks("tests.distributed.workers:session", 2, jobs=jobs)
    return root
