"""The CLI, unchanged, under the real launchers: ``torchrun`` and ``accelerate launch`` (2 CPU processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from instructgpt import config
from instructgpt.models import load_tokenizer
from instructgpt.reward_model import RewardModel
from instructgpt.pretrain import PretrainConfig, train_pretrain
from instructgpt.records import read_metrics
from instructgpt.rm import RMConfig, score_sequences, train_rm
from instructgpt.sft import SFTConfig, train_sft
from tests.distributed.harness import free_port, one_thread
from tests.distributed.test_data_parallel import assert_same_tensors

REPO = Path(__file__).resolve().parents[2]


def launch(cmd: list[str], timeout: float = 180.0) -> str:
    """Run a launcher command in its own session; returns its stdout, fails on a non-zero exit or a hang."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    # A session of its own, so that a hang can be ended with the launcher's workers included.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        raise AssertionError(f"{' '.join(cmd[:6])}...: no exit within {timeout:.0f}s (a hang?)\n{err[-4000:]}")
    assert proc.returncode == 0, f"{' '.join(cmd[:6])}...: exit {proc.returncode}\n{err[-4000:]}"
    return out


def overrides(options: dict) -> list[str]:
    return [f"{k}={v}" for k, v in options.items()]


def test_pretrain_under_torchrun_matches_one_process(tmp_path, dist_data):
    opts = dict(corpus=dist_data["corpus"], tokenizer=dist_data["model"], n_layer=2, n_embd=32, n_head=2,
                seq_len=32, batch_size=6, micro_batch_size=2, max_steps=3, warmup_steps=1, progress="false",
                precision="fp32")
    launch([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
            "-m", "instructgpt.cli", "pretrain", *overrides({**opts, "out_dir": tmp_path / "two"})])
    with one_thread():
        train_pretrain(config.from_dict(PretrainConfig, {**opts, "progress": False, "out_dir": str(tmp_path / "one")}))
    assert_same_tensors(tmp_path / "two" / "model.safetensors", tmp_path / "one" / "model.safetensors")
    assert [r["step"] for r in read_metrics(tmp_path / "two" / "metrics.jsonl")] == [1, 2, 3]


def test_rm_under_accelerate_launch_with_the_example_config_matches_one_process(tmp_path, dist_data):
    """examples/accelerate/ddp_1node_8gpu.yaml, resized to 2 processes and fp32 for this CPU machine."""
    pytest.importorskip("accelerate")
    opts = dict(model=dist_data["model"], train=dist_data["rm_train"], batch_size=8, micro_batch_size=3,
                epochs=1, warmup_steps=1, lr=2e-3, dropout=0.0, progress="false", precision="auto")
    launch([sys.executable, "-m", "accelerate.commands.launch",
            "--config_file", str(REPO / "examples" / "accelerate" / "ddp_1node_8gpu.yaml"),
            "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(free_port()),
            "-m", "instructgpt.cli", "rm", *overrides({**opts, "out_dir": tmp_path / "two"})])
    with one_thread():
        train_rm(config.from_dict(RMConfig, {**opts, "progress": False, "out_dir": str(tmp_path / "one")}))
    # ln_f.bias and the head's bias shift every reward equally, which cancels in r_w - r_l: their
    # gradient is zero in exact arithmetic, so AdamW turns float noise into lr-sized steps there.
    # Every other tensor must match, and so must the normalised rewards (the bias absorbs the shift).
    assert_same_tensors(tmp_path / "two" / "model.safetensors", tmp_path / "one" / "model.safetensors",
                        skip={"transformer.ln_f.bias"})
    two, one = (RewardModel.from_pretrained(tmp_path / name) for name in ("two", "one"))
    torch.testing.assert_close(two.head.weight, one.head.weight, atol=1e-5, rtol=1e-4)
    tok = load_tokenizer(dist_data["model"])
    seqs = [tok(f"say {w}\nyes no yes")["input_ids"] for w in ("cat", "dog", "sun", "moon")]
    torch.testing.assert_close(score_sequences(two, seqs, tok.pad_token_id, "cpu"),
                               score_sequences(one, seqs, tok.pad_token_id, "cpu"), atol=1e-4, rtol=1e-4)
    assert [r["step"] for r in read_metrics(tmp_path / "two" / "metrics.jsonl") if "rm/loss" in r] == [1, 2, 3]


def test_sft_under_accelerate_launch_with_the_fsdp_config_shards_and_matches_one_process(tmp_path, dist_data):
    """examples/accelerate/fsdp_1node_8gpu.yaml, resized to 2 processes and fp32: sharding=auto (the
    default) reads accelerate's FSDP environment and trains with FSDP2 full sharding."""
    pytest.importorskip("accelerate")
    opts = dict(model=dist_data["model"], train=dist_data["sft_train"], valid=dist_data["sft_valid"], batch_size=8,
                micro_batch_size=3, epochs=1, warmup_steps=1, lr=3e-3, dropout=0.0, progress="false",
                precision="auto")
    out = launch([sys.executable, "-m", "accelerate.commands.launch",
                  "--config_file", str(REPO / "examples" / "accelerate" / "fsdp_1node_8gpu.yaml"),
                  "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(free_port()),
                  "-m", "instructgpt.cli", "sft", *overrides({**opts, "out_dir": tmp_path / "two"})])
    assert "sft: sharding=full (FSDP2) over 2 ranks" in out
    with one_thread():
        train_sft(config.from_dict(SFTConfig, {**opts, "progress": False, "out_dir": str(tmp_path / "one")}))
    assert_same_tensors(tmp_path / "two" / "model.safetensors", tmp_path / "one" / "model.safetensors")
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert [r["step"] for r in read_metrics(tmp_path / "two" / "metrics.jsonl") if "sft/loss" in r] == [1, 2, 3, 4, 5]
