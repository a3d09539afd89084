"""``--resume`` continues the training a checkpoint was made by: changed options are refused, naming each;
runtime options, sharding and moved paths are not changes."""

import json
import shutil
from pathlib import Path

import pytest

from instructgpt import config
from instructgpt.config import ConfigError
from instructgpt.ppo_config import PPOConfig
from instructgpt.resume_check import PATH, check_resume, checkpoint_record, remembered


def ppo(out, **kw):
    base = dict(policy=str(out / "sft"), prompts=str(out / "p.jsonl"), reward_model=str(out / "rm"),
                out_dir=str(out / "ppo"), resume=True)
    return config.from_dict(PPOConfig, {**base, **kw})


def checkpoint_of(cfg, step=5):
    folder = Path(cfg.out_dir) / "checkpoints" / f"step-{step:07d}"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps({"iteration": step, "config": remembered(cfg)}))


def test_a_changed_option_is_named_with_both_values(tmp_path):
    checkpoint_of(ppo(tmp_path))
    with pytest.raises(ConfigError, match=r"step-0000005: --resume with changed options: cliprange 0.2 -> 0.1; "
                                          r"kl_coef 0.02 -> 0.05\. The checkpoint's optimizer"):
        check_resume(ppo(tmp_path, kl_coef=0.05, cliprange=0.1))


def test_runtime_options_sharding_moved_paths_and_more_ppo_iterations_may_change(tmp_path):
    checkpoint_of(ppo(tmp_path))
    check_resume(ppo(tmp_path, device="cpu", progress=False, save_every=1, keep_checkpoints=5, sharding="full",
                     policy="/elsewhere/sft", prompts="/elsewhere/p.jsonl"))
    check_resume(ppo(tmp_path, iterations=40))  # PPO's learning rate does not depend on them: a run continues
    check_resume(ppo(tmp_path, compile="off", attn_implementation="eager"))  # kernels, as another device's are
    assert remembered(ppo(tmp_path))["policy"] == PATH and "device" not in remembered(ppo(tmp_path))


def test_setting_a_path_option_that_was_empty_is_a_change(tmp_path):
    checkpoint_of(ppo(tmp_path))
    with pytest.raises(ConfigError, match="pretrain_data '' -> '<a path>'; ptx_coef 0.0 -> 1.0"):
        check_resume(ppo(tmp_path, ptx_coef=1.0, pretrain_data=str(tmp_path / "c.txt")))


def test_without_resume_or_a_remembered_config_there_is_nothing_to_check(tmp_path):
    checkpoint_of(ppo(tmp_path))
    check_resume(ppo(tmp_path, kl_coef=0.05, resume=False))  # starting over is always allowed
    older = tmp_path / "old"
    (older / "ppo" / "checkpoints" / "step-0000001").mkdir(parents=True)
    (older / "ppo" / "checkpoints" / "step-0000001" / "state.json").write_text('{"iteration": 1}')
    check_resume(ppo(older, kl_coef=0.05))  # a checkpoint of an older version remembers no options


def test_inputs_that_hold_other_files_are_refused_and_moved_ones_are_not(tmp_path):
    sft = tmp_path / "sft"
    sft.mkdir()
    (sft / "config.json").write_text("{}")
    (sft / "model.safetensors").write_bytes(bytes(range(256)) * 1024)  # 256 KiB: both ends are sampled
    (tmp_path / "p.jsonl").write_text("{}\n")
    folder = Path(ppo(tmp_path).out_dir) / "checkpoints" / "step-0000005"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps({"iteration": 5, **checkpoint_record(ppo(tmp_path))}))
    assert set(json.loads((folder / "state.json").read_text())["inputs"]) == {"policy", "prompts"}
    moved = tmp_path / "elsewhere"
    shutil.copytree(sft, moved)
    check_resume(ppo(tmp_path, policy=str(moved)))  # a copy holds the same files
    data = bytearray((sft / "model.safetensors").read_bytes())
    data[-1] ^= 1  # the last byte of the weights
    (sft / "model.safetensors").write_bytes(bytes(data))
    (sft / "extra.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"inputs that hold other files than when the checkpoint was made: "
                                          r"policy \(.*sft\): extra\.bin, model\.safetensors\. The checkpoint"):
        check_resume(ppo(tmp_path))


def test_a_lock_file_in_an_input_folder_is_not_a_change_of_its_files(tmp_path):
    """A run holds run.lock in every stage folder it reads (their pid and start time differ run to run): a run
    killed during SFT and run again was refused, 'model (.../models/base): run.lock'."""
    from instructgpt.resume_check import fingerprint
    from instructgpt.stage_keys import InputHasher
    model = tmp_path / "base"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    before, digest = fingerprint(model), InputHasher().digest(model)
    (model / "run.lock").write_text('{"pid": 12345}\n')
    assert fingerprint(model) == before and InputHasher().digest(model) == digest
    (model / "model.safetensors").write_bytes(b"other weights")
    assert fingerprint(model) != before and InputHasher().digest(model) != digest
