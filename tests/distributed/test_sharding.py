"""Weight sharding (FSDP2, ``sharding.py``): 2 sharded ranks (gloo, CPU) against 1 unsharded process.

The 2-rank runs happen once, in the session fixture ``sharded_ranks``: SFT and
the reward model in both sharded modes, a sharded resume of a single-process
checkpoint, and the sharding API itself. Each test compares their output with
a single-process run of the same config (``sft_one_rank``, ``rm_one_rank``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from instructgpt import config, sharding
from instructgpt.config import ConfigError
from instructgpt.models import load_policy, load_tokenizer
from instructgpt.reward_model import RewardModel
from instructgpt.records import read_metrics
from instructgpt.rm import score_sequences, train_rm
from instructgpt.sft import SFTConfig, train_sft
from tests.distributed.harness import one_thread, run_ranks
from tests.distributed.test_data_parallel import assert_same_tensors, resume_from
from tests.distributed.workers import rm_config, sft_config

MODES = ("full", "grad_op")


@pytest.fixture(scope="session")
def rm_one_rank(tmp_path_factory, dist_data) -> Path:
    out = tmp_path_factory.mktemp("rm1") / "rm"
    with one_thread():
        train_rm(rm_config(dist_data, out))
    return out


@pytest.fixture(scope="session")
def sharded_ranks(tmp_path_factory, dist_data, sft_one_rank) -> Path:
    """Output folder of one 2-process session of sharded jobs."""
    root = tmp_path_factory.mktemp("sharded")
    resume_from(sft_one_rank / "checkpoints" / "step-0000003", root / "sft_resumed")
    jobs = [("sharding_api_job", {"data": dist_data, "out": str(root), "mode": mode}) for mode in MODES]
    jobs += [("sft_job", {"data": dist_data, "out": str(root / f"sft_{mode}"), "sharding": mode}) for mode in MODES]
    jobs += [("rm_job", {"data": dist_data, "out": str(root / f"rm_{mode}"), "sharding": mode}) for mode in MODES]
    jobs += [("sft_job", {"data": dist_data, "out": str(root / "sft_resumed"), "sharding": "full", "resume": True})]
    run_ranks("tests.distributed.workers:session", 2, jobs=jobs)
    return root


def folder_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def assert_trained_sharded(out: Path, mode: str) -> None:
    for r in (0, 1):
        assert json.loads(Path(f"{out}.rank{r}.json").read_text())["sharding"] == mode


# ----------------------------------------------------------------------------- supervised stages

@pytest.mark.parametrize("mode", MODES)
def test_sharded_sft_gives_the_weights_and_folder_of_one_process(sharded_ranks, sft_one_rank, mode):
    """33 examples in batches of 8: at the last step of each epoch rank 1 has no example and makes a
    zero-weight pass. Per-epoch validation picks the kept epoch ("best" checkpoint) in both runs."""
    out = sharded_ranks / f"sft_{mode}"
    assert_trained_sharded(out, mode)
    assert_same_tensors(out / "model.safetensors", sft_one_rank / "model.safetensors")  # same keys: tie stored once
    assert folder_files(out) == folder_files(sft_one_rank)
    assert json.loads((out / "config.json").read_text()) == json.loads((sft_one_rank / "config.json").read_text())
    two = [r for r in read_metrics(out / "metrics.jsonl") if "sft/loss" in r]
    one = [r for r in read_metrics(sft_one_rank / "metrics.jsonl") if "sft/loss" in r]
    assert [r["step"] for r in two] == list(range(1, 11))
    for a, b in zip(two, one):
        assert a["sft/loss"] == pytest.approx(b["sft/loss"], rel=1e-4)
        assert a["sft/grad_norm"] == pytest.approx(b["sft/grad_norm"], rel=1e-4)   # global norm of sharded grads
    vals = [[r["sft/val_loss"] for r in read_metrics(f / "metrics.jsonl") if "sft/val_loss" in r]
            for f in (out, sft_one_rank)]
    assert vals[0] == pytest.approx(vals[1], rel=1e-4)
    info = [json.loads((f / "instructgpt.json").read_text()) for f in (out, sft_one_rank)]
    assert info[0]["selected_epoch"] == info[1]["selected_epoch"]
    # checkpoints hold full tensors, as a single-process run writes them
    assert_same_tensors(out / "checkpoints" / "step-0000003" / "model.safetensors",
                        sft_one_rank / "checkpoints" / "step-0000003" / "model.safetensors")
    load_policy(out)


@pytest.mark.parametrize("mode", MODES)
def test_sharded_rm_gives_the_rewards_of_one_process(sharded_ranks, rm_one_rank, dist_data, mode):
    """Batches of 7 rankings split 4/3: rank 0 makes two forward passes per step, rank 1 one real and
    one zero-weight pass. Per-epoch validation keeps the best epoch; the reward bias is set after."""
    out = sharded_ranks / f"rm_{mode}"
    assert_trained_sharded(out, mode)
    assert folder_files(out) == folder_files(rm_one_rank)
    # ln_f.bias (saved as transformer.ln_f.bias, with the reward constant folded in) shifts every reward
    # equally, which cancels in r_w - r_l: its gradient is zero in exact
    # arithmetic and AdamW turns float noise into lr-sized steps (see test_launchers.py); so do the key biases
    assert_same_tensors(out / "model.safetensors", rm_one_rank / "model.safetensors", skip={"transformer.ln_f.bias"},
                        key_biases=False)
    two, one = RewardModel.from_pretrained(out), RewardModel.from_pretrained(rm_one_rank)
    torch.testing.assert_close(two.head.weight, one.head.weight, atol=1e-5, rtol=1e-4)
    tok = load_tokenizer(dist_data["model"])
    seqs = [tok(f"say {w}\nyes no yes")["input_ids"] for w in ("cat", "dog", "sun", "moon")]
    torch.testing.assert_close(score_sequences(two, seqs, tok.pad_token_id, "cpu"),
                               score_sequences(one, seqs, tok.pad_token_id, "cpu"), atol=1e-4, rtol=1e-4)
    rows = [[r for r in read_metrics(f / "metrics.jsonl") if "rm/loss" in r] for f in (out, rm_one_rank)]
    assert [r["step"] for r in rows[0]] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(*rows):
        assert a["rm/loss"] == pytest.approx(b["rm/loss"], rel=1e-4)
        assert a["rm/accuracy"] == pytest.approx(b["rm/accuracy"])
    info = [json.loads((f / "instructgpt.json").read_text()) for f in (out, rm_one_rank)]
    assert info[0]["selected_epoch"] == info[1]["selected_epoch"]
    assert info[0]["rm/kept_val_accuracy"] == pytest.approx(info[1]["rm/kept_val_accuracy"])


def test_checkpoint_written_by_sharded_ranks_resumes_on_one_unsharded_process(tmp_path, sharded_ranks,
                                                                                sft_one_rank, dist_data):
    resume_from(sharded_ranks / "sft_full" / "checkpoints" / "step-0000003", tmp_path / "sft")
    with one_thread():
        result = train_sft(sft_config(dist_data, tmp_path / "sft", resume=True))
    assert result.fit.resumed_from.endswith("step-0000003")
    assert result.fit.sharding == "none"
    assert_same_tensors(tmp_path / "sft" / "model.safetensors", sft_one_rank / "model.safetensors")


def test_checkpoint_written_by_one_process_resumes_on_sharded_ranks(sharded_ranks, sft_one_rank):
    out = sharded_ranks / "sft_resumed"
    assert_trained_sharded(out, "full")
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "sft/loss" in r] == list(range(4, 11))
    assert_same_tensors(out / "model.safetensors", sft_one_rank / "model.safetensors")


# ----------------------------------------------------------------------------- the API under real ranks

@pytest.mark.parametrize("mode", MODES)
def test_sharding_api_under_two_ranks(sharded_ranks, dist_data, mode):
    r0, r1 = (json.loads((sharded_ranks / f"api-{mode}-rank{r}.json").read_text()) for r in (0, 1))
    for r in (r0, r1):
        assert r["sharded"] and r["blocks"] == 2 and r["class"] == "FSDPGPT2LMHeadModel"
        assert r["param_type"] == "DTensor" and r["param_type_after"] == "DTensor"   # resharded on exit
        assert r["unsharded_logits_diff"] < 1e-5         # rank 0 made 3 passes, rank 1 one: no collective
        assert r["unsharded_generation_same"]
        assert r["sharded_logits_diff"] < 1e-5
        assert r["logits_at_diff"] < 1e-5 and r["last_block_mlp_rows"] == [2]   # 2 of 6 positions
        assert r["full_state_dict_keys_same"] and r["full_state_dict_diff"] == 0.0 and r["tied"]
        assert r["rank0_only_empty_elsewhere"]
        assert r["reloaded_diff"] == 0.0 and r["optimizer_roundtrip_diff"] == 0.0
    assert r0["grad_norm"] == r1["grad_norm"]

    # the same step in one process: summed gradient of both ranks' examples
    model = load_policy(dist_data["model"])
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for i in range(2):
        model(input_ids=ids[i:i + 1], labels=ids[i:i + 1]).loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    assert r0["grad_norm"] == pytest.approx(norm.item(), rel=1e-5)
    saved = torch.load(sharded_ranks / f"api-{mode}-rank1.pt", weights_only=False)
    want = optimizer.state_dict()
    assert saved["optimizer"]["param_groups"] == want["param_groups"]   # the single-process format
    for i, s in want["state"].items():
        for k, v in s.items():
            torch.testing.assert_close(saved["optimizer"]["state"][i][k], v, atol=1e-6, rtol=1e-5)
    for k, v in model.state_dict().items():  # AdamW's first step turns float noise in tiny gradients into
        torch.testing.assert_close(saved["trained"][k], v, atol=1e-4, rtol=1e-4)  # steps up to lr x noise/eps
    optimizer.load_state_dict(saved["optimizer"])                        # loads in one process as it is


# ----------------------------------------------------------------------------- single process

@pytest.mark.parametrize("env, expected, warns", [
    ({}, "none", None),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "true",
      "FSDP_SHARDING_STRATEGY": "FULL_SHARD"}, "full", None),                  # what accelerate exports (FSDP2)
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "false",
      "FSDP_SHARDING_STRATEGY": "FULL_SHARD"}, "grad_op", None),
    ({"ACCELERATE_USE_FSDP": "true"}, "full", None),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "FSDP_SHARDING_STRATEGY": "SHARD_GRAD_OP"}, "grad_op", None),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "FSDP_SHARDING_STRATEGY": "2"}, "grad_op", None),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "FSDP_SHARDING_STRATEGY": "\u00b2"}, "full", "unknown"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "FSDP_RESHARD_AFTER_FORWARD": "\u00b2",
      "FSDP_SHARDING_STRATEGY": "SHARD_GRAD_OP"}, "grad_op", None),   # '²' is no strategy number (int() raised)
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "FSDP_RESHARD_AFTER_FORWARD": "NO_SHARD",
      "FSDP_SHARDING_STRATEGY": "FULL_SHARD"}, "none", None),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "FSDP_SHARDING_STRATEGY": "HYBRID_SHARD"}, "full",
     "not implemented"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_ACTIVATION_CHECKPOINTING": "true"}, "full", "activation_checkpointing"),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "full", "DeepSpeed itself"),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, "grad_op", "ZeRO stage 2"),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "0"}, "none", "DeepSpeed itself"),
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, "grad_op", "unknown ZeRO stage"),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
      "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu"}, "full", "nothing is offloaded"),
])
def test_auto_reads_the_launchers_environment(env, expected, warns):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert sharding.resolve_mode("auto", env) == expected
    messages = " | ".join(str(w.message) for w in caught)
    assert (not caught) if warns is None else (warns in messages), messages


def test_deepspeed_stage_from_its_config_file(tmp_path):
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    env = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(tmp_path / "ds.json")}
    with pytest.warns(UserWarning, match="ZeRO stage 3"):
        assert sharding.resolve_mode("auto", env) == "full"


def test_explicit_modes_win_and_none_says_the_launcher_is_overridden():
    assert sharding.resolve_mode("grad_op", {}) == "grad_op"
    assert sharding.resolve_mode("full", {"ACCELERATE_USE_DEEPSPEED": "true"}) == "full"
    with pytest.warns(UserWarning, match="sharding=none"):
        assert sharding.resolve_mode("none", {"ACCELERATE_USE_FSDP": "true"}) == "none"
    with pytest.raises(ValueError, match="sharding"):
        sharding.resolve_mode("zero3", {})
    with pytest.raises(ConfigError, match="sharding"):
        config.from_dict(SFTConfig, dict(model="m", train="t", out_dir="o", sharding="zero3"))


def test_transformer_blocks_are_found_for_every_architecture(tmp_path, tokenizer_dir):
    from transformers import AutoTokenizer
    from tests.conftest import make_model
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    for arch in ("gpt2", "llama", "qwen2"):
        folder = make_model(tmp_path / arch, arch, tokenizer=tok, layers=3)
        policy = load_policy(folder)
        blocks = sharding.transformer_blocks(policy)
        inner = policy.transformer.h if arch == "gpt2" else policy.model.layers
        assert blocks == list(inner), arch
        reward = RewardModel.from_policy(folder)
        inner = reward.backbone.h if arch == "gpt2" else reward.backbone.layers
        assert sharding.transformer_blocks(reward) == list(inner), arch


def test_sharding_is_a_no_op_on_one_process(dist_data):
    model = load_policy(dist_data["model"])
    for mode in ("none", "full", "grad_op"):
        assert sharding.shard_model(model, mode) is False
    assert not sharding.is_sharded(model)
    sd = sharding.full_state_dict(model)
    assert sd["lm_head.weight"].data_ptr() == sd["transformer.wte.weight"].data_ptr()     # tie kept
    assert sd["lm_head.weight"].data_ptr() != model.lm_head.weight.data_ptr()              # a copy
    optimizer = torch.optim.AdamW(model.parameters())
    assert sharding.optimizer_state_dict(optimizer) == optimizer.state_dict()
    fused = torch.optim.AdamW(model.parameters(), fused=True)   # a checkpoint of another kernel loads,
    sharding.load_optimizer_state_dict(fused, optimizer.state_dict())  # the optimizer keeps its own
    assert fused.param_groups[0]["fused"] is True and not fused.param_groups[0]["foreach"]
    with sharding.unsharded(model):
        assert not torch.is_grad_enabled()
    missing, unexpected = sharding.load_full_state_dict(model, {k: v for k, v in sd.items() if k != "lm_head.weight"})
    assert missing == [] and unexpected == []
    with pytest.raises(RuntimeError, match="missing"):
        sharding.load_full_state_dict(model, {"transformer.wte.weight": sd["transformer.wte.weight"]})
