"""PPO and PPO-ptx with sharded models (FSDP2) on 2 ranks (gloo, CPU) against 1 unsharded process.

The sharded runs happen once, in the session fixture ``sharded_ppo``. The
deterministic PPO-ptx config of ``workers.ppo_config`` (greedy sampling, a
programmatic reward, minibatches that leave one rank without an episode, EMA,
adaptive KL) must give the single-process weights; a run where one rank's
responses are all EOS and every minibatch holds one episode (so the other rank
makes zero-weight padding passes) must finish; its checkpoint resumes on one
process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from instructgpt.models import load_policy
from instructgpt.ppo import train_ppo
from instructgpt.records import read_metrics
from tests.distributed.harness import one_thread, run_ranks
from tests.distributed.test_data_parallel import PPO_FILES, assert_same_tensors, resume_from
from tests.distributed.workers import ppo_config


@pytest.fixture(scope="session")
def sharded_ppo(tmp_path_factory, dist_data) -> Path:
    root = tmp_path_factory.mktemp("sharded_ppo")
    jobs = [("ppo_job", {"data": dist_data, "out": str(root / "full"), "sharding": "full"}),
            ("ppo_job", {"data": dist_data, "out": str(root / "eos"), "sharding": "grad_op", "batch_size": 5,
                         "minibatch_size": 1, "ppo_epochs": 1, "iterations": 2, "temperature": 1.0,
                         "save_every": 1, "generation_backend": "tests.distributed.workers:eos_on_last_rank"}),
            ("ppo_job", {"data": dist_data, "out": str(root / "shared"), "sharding": "full",
                         "value_model": "shared", "value_warmup_iterations": 1})]
    run_ranks("tests.distributed.workers:session", 2, jobs=jobs)
    return root


def test_sharded_ppo_ptx_gives_the_weights_of_one_process(sharded_ppo, ppo_one_rank):
    info = json.loads((sharded_ppo / "full" / "instructgpt.json").read_text())
    assert (info["sharding"], info["world_size"]) == ("full", 2)
    for f in PPO_FILES:
        assert_same_tensors(sharded_ppo / "full" / f, ppo_one_rank / f)
    two, one = read_metrics(sharded_ppo / "full" / "metrics.jsonl"), read_metrics(ppo_one_rank / "metrics.jsonl")
    assert [r["step"] for r in two] == [1, 2, 3]
    for a, b in zip(two, one):
        for k in ("ppo/score", "ppo/kl", "ppo/pg_loss", "ppo/vf_loss", "ppo/ptx_loss"):
            assert a[k] == pytest.approx(b[k], rel=1e-3, abs=1e-5), k
    # the folders are those of a single-process run: same files, loadable as plain HF folders
    names = lambda d: sorted(p.name for p in d.iterdir() if p.is_file())  # noqa: E731
    assert names(sharded_ppo / "full") == names(ppo_one_rank)
    assert json.loads((sharded_ppo / "full" / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]


def test_sharded_ppo_checkpoint_resumes_on_one_process(tmp_path, sharded_ppo, ppo_one_rank, dist_data):
    resume_from(sharded_ppo / "full" / "checkpoints" / "step-0000002", tmp_path / "ppo")
    with one_thread():
        result = train_ppo(ppo_config(dist_data, tmp_path / "ppo", resume=True))
    assert [h["iteration"] for h in result.history] == [3]
    for f in PPO_FILES:
        assert_same_tensors(tmp_path / "ppo" / f, ppo_one_rank / f)


def test_sharded_ppo_finishes_when_one_rank_only_pads(sharded_ppo):
    out = sharded_ppo / "eos"
    assert json.loads((out / "instructgpt.json").read_text())["sharding"] == "grad_op"
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["ppo/eos_fraction"] >= 2 / 5 for r in rows)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000001", "step-0000002"]
    load_policy(out)


def test_sharded_ppo_with_a_shared_value_head_gives_the_weights_of_one_process(tmp_path, sharded_ppo, dist_data):
    """value_model=shared: the policy is sharded, its small value head replicated (gradients summed). The
    first iteration is a value warm-up: the head learns on the sharded trunk's features, the trunk waits."""
    with one_thread():
        train_ppo(ppo_config(dist_data, tmp_path / "one", value_model="shared", value_warmup_iterations=1))
    for f in ("model.safetensors", "policy_raw/model.safetensors", "value_head.safetensors"):
        assert_same_tensors(sharded_ppo / "shared" / f, tmp_path / "one" / f)
    rows = read_metrics(sharded_ppo / "shared" / "metrics.jsonl")
    assert [r.get("ppo/policy_frozen") for r in rows] == [1.0, None, None]
