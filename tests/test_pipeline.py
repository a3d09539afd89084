"""``instructgpt run`` end to end: a scaled-down run in the default suite, a medium one marked slow."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from instructgpt import config
from instructgpt.pipeline import RunConfig, run_pipeline

TINY = dict(scale=0.004, corpus_docs=500, vocab_size=768, pretrain_epochs=1, sft_epochs=2, rm_epochs=1,
            ppo_iterations=2, ppo_batch=8, ppo_minibatch=8, max_new_tokens=16, eval_prompts=16)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cfg = config.from_dict(RunConfig, dict(runs_dir=str(root), name="t", **TINY))
    result = run_pipeline(cfg)
    return cfg, result


def test_scaled_down_run_leaves_every_stage(tiny_run):
    cfg, result = tiny_run
    run = cfg.run_dir
    for path in ["world/config.json", "tokenizer/tokenizer.json", "data/prompts_sft_train.jsonl",
                 "data/prompts_test.jsonl", "data/sft_train.jsonl", "data/flan_train.jsonl",
                 "data/rankings_r1/train.jsonl", "data/corpus_train.jsonl",
                 "models/base/model.safetensors", "models/sft/model.safetensors", "models/flan/model.safetensors",
                 "models/round1/rm/reward_model.json", "models/round1/ppo/model.safetensors",
                 "models/round1/ppo_ptx/model.safetensors", "models/ppo_ptx/value_model/reward_model.json",
                 "eval/results.json", "report.html", "report.md"]:
        assert (run / path).exists(), path
    for stage in ("world", "base", "sft", "flan", "rankings_r1", "rm_r1", "ppo_r1", "ppo_ptx_r1", "eval"):
        assert stage in result.stages
    info = json.loads((run / "models/round1/ppo_ptx/instructgpt.json").read_text())
    assert info["stage"] == "ppo-ptx" and info["config"]["ptx_coef"] > 0
    assert info["config"]["reference"].endswith("models/sft")
    rankings = [json.loads(l) for l in (run / "data/rankings_r1/train.jsonl").read_text().splitlines()]
    assert all(cfg.k_min <= len(r["responses"]) <= cfg.k_max for r in rankings)
    assert all(r["labeler_id"].startswith("T") for r in rankings)  # training labelers only
    results = json.loads((run / "eval/results.json").read_text())
    names = {m["name"] for m in results["models"]}
    assert {"base", "sft", "ppo", "ppo_ptx"} <= names


def test_curation_split_keeps_users_apart(tiny_run):
    cfg, _ = tiny_run
    users = {}
    for split in ("train", "valid", "test"):
        for line in (cfg.run_dir / f"data/prompts_rm_{split}.jsonl").read_text().splitlines():
            users.setdefault(json.loads(line)["user_id"], set()).add(split)
    assert users and all(len(s) == 1 for s in users.values())


def test_second_run_reuses_finished_stages(tiny_run):
    cfg, first = tiny_run
    again = run_pipeline(cfg)
    for name, info in again.stages.items():
        assert info["key"] == first.stages[name]["key"], name
        assert info["seconds"] == first.stages[name]["seconds"], name  # not re-run
    changed = config.from_dict(RunConfig, dict(runs_dir=cfg.runs_dir, name="t", evaluate=False,
                                               **{**TINY, "ppo_iterations": 3}))
    third = run_pipeline(changed)
    assert third.stages["sft"]["key"] == first.stages["sft"]["key"]
    assert third.stages["ppo_r1"]["key"] != first.stages["ppo_r1"]["key"]


def test_cli_run_help_lists_options():
    out = subprocess.run([sys.executable, "-m", "instructgpt.cli", "run", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for option in ("scale", "rounds", "base_model", "ptx_coef", "kl_coef", "--rounds", "--base-model"):
        assert option in out.stdout


@pytest.mark.slow
def test_medium_run_base_continues_and_sft_follows(tmp_path):
    """The paper's starting point and step 1, measured by the checkers on held-out prompts:
    the base model mostly fails to follow instructions; SFT raises the pass rate clearly."""
    cfg = config.from_dict(RunConfig, dict(runs_dir=str(tmp_path), name="m", ppo_iterations=4, flan=False,
                                           eval_prompts=300))
    run_pipeline(cfg)
    results = json.loads((cfg.run_dir / "eval/results.json").read_text())
    by_name = {m["name"]: m for m in results["models"]}
    fails = {n: by_name[n]["metadata"]["fails_to_follow"] for n in ("base", "sft")}
    assert fails["base"]["low"] > fails["sft"]["high"], fails
    assert fails["base"]["value"] > 0.5, fails


@pytest.mark.slow
def test_rounds_iterate_rm_and_ppo(tmp_path):
    cfg = config.from_dict(RunConfig, dict(runs_dir=str(tmp_path), name="r", rounds=2, evaluate=False, **TINY))
    result = run_pipeline(cfg)
    assert {"rankings_r2", "rm_r2", "ppo_r2", "ppo_ptx_r2"} <= set(result.stages)
    assert result.stages["rm_r2"]["summary"]["rankings"] > result.stages["rm_r1"]["summary"]["rankings"]
    info = json.loads((cfg.run_dir / "models/round2/ppo/instructgpt.json").read_text())
    assert info["config"]["policy"].endswith("round1/ppo")
