"""Two processes (gloo, CPU) against one: same weights, no hangs, checkpoints portable across world sizes.

The 2-rank runs happen once, in the session fixture ``two_ranks``; each test
compares their output with a single-process run of the same config.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from instructgpt.models import load_policy
from instructgpt.ppo import PPOTrainer, train_ppo
from instructgpt.records import read_metrics
from instructgpt.sft import train_sft
from tests.distributed.harness import one_thread
from tests.distributed.workers import ppo_config, rloo_config, rloo_rollout, sft_config

ATOL, RTOL = 1e-5, 1e-4   # float summation order differs between 1 and 2 processes, nothing else


def assert_same_tensors(a_path: Path, b_path: Path, skip: set[str] = frozenset(), key_biases: bool = True) -> None:
    """``key_biases=False``: GPT-2's key biases (the middle third of ``attn.c_attn.bias``) are compared with
    the tolerance of their size. Adding a bias to every key adds the same number to each score of a query,
    which the softmax ignores: their gradient is zero in exact arithmetic, and AdamW turns the float noise
    of two summation orders into steps of up to ~1e-5 in a few steps (the query and value thirds agree to
    1e-8)."""
    a, b = load_file(str(a_path)), load_file(str(b_path))
    assert a.keys() == b.keys()
    for k in sorted(a.keys() - skip):
        x, y = a[k], b[k]
        if not key_biases and k.endswith("attn.c_attn.bias"):
            third = len(x) // 3
            torch.testing.assert_close(x[third:2 * third], y[third:2 * third], atol=1e-4, rtol=0,
                                       msg=lambda m: f"{a_path.name}: {k} (keys): {m}")
            x, y = torch.cat([x[:third], x[2 * third:]]), torch.cat([y[:third], y[2 * third:]])
        torch.testing.assert_close(x, y, atol=ATOL, rtol=RTOL, msg=lambda m: f"{a_path.name}: {k}: {m}")


PPO_FILES = ("model.safetensors", "policy_raw/model.safetensors", "value_model/model.safetensors",
             "value_model/reward_head.safetensors")


def resume_from(checkpoint: Path, out: Path) -> None:
    """A fresh output folder holding only ``checkpoint`` (as if the run had stopped right after it)."""
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(checkpoint, out / "checkpoints" / checkpoint.name)


# ----------------------------------------------------------------------------- helpers under real ranks

def test_collectives_treat_missing_gradients_as_zeros_and_agree(two_ranks):
    r0, r1 = (json.loads((two_ranks / f"collectives-rank{r}.json").read_text()) for r in (0, 1))
    assert r0["weights"] == r1["weights"]                      # broadcast_module
    assert r0["grads"] == r1["grads"]                          # rank 1 had no grads: zeros were reduced
    assert r0["grads"][0] is not None and r0["grads"][4] is None  # unused everywhere: stays None
    assert r0["sums"] == r1["sums"] == {"a": 1.0, "b": 2.0, "c": 3.0}
    assert r0["max"] == r1["max"] == 8.0
    assert r0["positions"] == [0, 1] and r1["positions"] == [2, 1]   # globals 0, 2 | 5, 3 on ranks 0 | 1
    assert r0["gathered"] == r1["gathered"] == [10.0, 11.0, 12.0, 13.0, 14.0]  # shares of 3 | 2, back in order


def test_rloo_advantages_of_two_ranks_are_those_of_one(two_ranks, dist_data, tmp_path):
    """Each rank holds half of every prompt's 4 responses (strided shares): the leave-one-out baselines and the
    whitening must see the whole batch, as one process does."""
    with one_thread():
        trainer = PPOTrainer(rloo_config(dist_data, tmp_path / "rloo"))
    full = rloo_rollout()
    trainer.compute_advantages(full)
    for r in (0, 1):
        got = torch.load(two_ranks / f"rloo-rank{r}.pt")
        torch.testing.assert_close(got["advantages"], full.advantages[r::2])
        torch.testing.assert_close(got["returns"], full.returns[r::2])
    assert full.advantages.abs().sum() > 0


def test_rloo_on_two_ranks_trains_without_a_value_model(two_ranks):
    rows = read_metrics(two_ranks / "rloo" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and all("ppo/vf_loss" not in r for r in rows)
    assert not (two_ranks / "rloo" / "value_model").exists()
    load_policy(two_ranks / "rloo")


# ----------------------------------------------------------------------------- supervised

def test_sft_two_ranks_give_the_weights_of_one(two_ranks, sft_one_rank):
    assert_same_tensors(two_ranks / "sft" / "model.safetensors", sft_one_rank / "model.safetensors")
    two = [r for r in read_metrics(two_ranks / "sft" / "metrics.jsonl") if "sft/loss" in r]
    one = [r for r in read_metrics(sft_one_rank / "metrics.jsonl") if "sft/loss" in r]
    assert [r["step"] for r in two] == list(range(1, 11))    # logged once per step (rank 0 only)
    for a, b in zip(two, one):                                 # reduced over ranks = the global batch loss
        assert a["sft/loss"] == pytest.approx(b["sft/loss"], rel=1e-4)


def test_sft_checkpoint_written_by_two_ranks_resumes_on_one(tmp_path, two_ranks, sft_one_rank, dist_data):
    resume_from(two_ranks / "sft" / "checkpoints" / "step-0000003", tmp_path / "sft")
    with one_thread():
        result = train_sft(sft_config(dist_data, tmp_path / "sft", resume=True))
    assert result.fit.resumed_from.endswith("step-0000003")
    assert_same_tensors(tmp_path / "sft" / "model.safetensors", sft_one_rank / "model.safetensors")


# ----------------------------------------------------------------------------- PPO

def test_ppo_two_ranks_give_the_weights_of_one(two_ranks, ppo_one_rank):
    for f in PPO_FILES:
        assert_same_tensors(two_ranks / "ppo" / f, ppo_one_rank / f)
    two, one = read_metrics(two_ranks / "ppo" / "metrics.jsonl"), read_metrics(ppo_one_rank / "metrics.jsonl")
    assert [r["step"] for r in two] == [1, 2, 3]
    for a, b in zip(two, one):
        for k in ("ppo/score", "ppo/kl", "ppo/response_length", "ppo/pg_loss", "ppo/ptx_loss", "ppo/kl_coef",
                  "ppo/explained_variance"):
            assert a[k] == pytest.approx(b[k], rel=1e-3, abs=1e-5), k


def test_ppo_samples_of_two_ranks_are_the_first_episodes_of_the_global_batch(two_ranks, ppo_one_rank):
    """samples.jsonl holds the global batch's first log_samples episodes, gathered from both ranks (rank 0's
    share alone would be episodes 0, 2, ... and at most half of the batch)."""
    def rows(out: Path) -> list[tuple]:
        return [(r["step"], r["prompt"], r["response"], r["ended"]) for r in read_metrics(out / "samples.jsonl")]
    one = rows(ppo_one_rank)
    assert len(one) == 3 * 2                                  # 3 iterations x log_samples=2
    assert rows(two_ranks / "ppo") == one


def test_ppo_checkpoint_written_by_two_ranks_resumes_on_one(tmp_path, two_ranks, ppo_one_rank, dist_data):
    resume_from(two_ranks / "ppo" / "checkpoints" / "step-0000002", tmp_path / "ppo")
    with one_thread():
        result = train_ppo(ppo_config(dist_data, tmp_path / "ppo", resume=True))
    assert [h["iteration"] for h in result.history] == [3]
    for f in PPO_FILES:
        assert_same_tensors(tmp_path / "ppo" / f, ppo_one_rank / f)


def test_ppo_finishes_when_one_rank_has_only_eos_and_minibatches_skip_ranks(two_ranks):
    """Rank 1's responses are all EOS at the first token, batches split 3/2, and every minibatch holds
    one episode, so one rank has nothing to learn from at each step (also no PPO-ptx block)."""
    out = two_ranks / "ppo_eos"
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["ppo/eos_fraction"] >= 2 / 5 for r in rows)
    assert all(torch.isfinite(torch.tensor(r["ppo/pg_loss"])) for r in rows)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000001", "step-0000002"]
    load_policy(out)
