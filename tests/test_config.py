"""Option groups of the stage configs: ``group.option=value`` and the flat ``option=value`` both
work, on the command line and in files; one shared ``runtime`` group; stage keys ignore it."""

import dataclasses
import json

import pytest

from instructgpt import config as config_mod
from instructgpt.config import ConfigError
from instructgpt.ppo import PPOConfig
from instructgpt.pretrain import PretrainConfig
from instructgpt.rm import RMConfig
from instructgpt.runtime import RuntimeOptions
from instructgpt.sft import SFTConfig
from instructgpt.stage_keys import RUNTIME_OPTIONS, StageKeys

REQUIRED = ["policy=p", "prompts=q", "reward_model=r", "out_dir=o"]


def test_ppo_options_come_in_rollout_ppo_ptx_and_runtime_groups():
    groups = config_mod.groups(PPOConfig)
    assert {"cliprange", "vf_coef", "lam", "gamma", "kl_coef", "ppo_epochs", "minibatch_size"} <= set(groups["ppo"])
    assert {"generation_backend", "max_new_tokens", "temperature", "batch_size"} <= set(groups["rollout"])
    assert set(groups["ptx"]) == {"ptx_coef", "ptx_token_ratio", "ptx_seq_len", "pretrain_data"}
    assert {"device", "precision", "sharding", "seed", "resume", "progress", "report_to",
            "save_every"} <= set(groups["runtime"])
    assert "save_every" not in groups[""]  # PPO changes its default (5 iterations), not its group
    assert PPOConfig().save_every == 5 and SFTConfig().save_every == 0
    names = [n for ns in groups.values() for n in ns]
    assert sorted(names) == sorted(f.name for f in dataclasses.fields(PPOConfig))  # each option in one group


def test_dotted_and_flat_overrides_set_the_same_option():
    dotted = config_mod.load(PPOConfig, overrides=[*REQUIRED, "ppo.cliprange=0.1", "runtime.device=cpu",
                                                   "rollout.max_new_tokens=7", "ptx.ptx_token_ratio=4",
                                                   "ptx.ptx_coef=1", "ptx.pretrain_data=c.txt"])
    flat = config_mod.load(PPOConfig, overrides=[*REQUIRED, "cliprange=0.1", "device=cpu", "max_new_tokens=7",
                                                 "ptx_token_ratio=4", "ptx_coef=1", "pretrain_data=c.txt"])
    assert dotted == flat
    assert (dotted.cliprange, dotted.device, dotted.max_new_tokens, dotted.ptx_token_ratio) == (0.1, "cpu", 7, 4.0)
    sft = config_mod.load(SFTConfig, overrides=["model=m", "train=t", "out_dir=o", "optim.lr=0.5", "runtime.seed=3"])
    assert (sft.lr, sft.seed) == (0.5, 3)


@pytest.mark.parametrize("override, message", [
    ("rollout.cliprange=0.1", "no option 'cliprange' in group rollout of PPOConfig (it is ppo.cliprange)"),
    ("ppo.nonsense=1", "no option 'nonsense' in group ppo of PPOConfig (options of ppo: minibatch_size"),
    ("train.cliprange=0.1", "PPOConfig has no option group 'train' (groups: "),
    ("nonsense=1", "nonsense: unknown option for PPOConfig"),
])
def test_a_bad_dotted_override_names_the_key_and_what_exists(override, message):
    with pytest.raises(ConfigError, match=None) as e:
        config_mod.load(PPOConfig, overrides=[*REQUIRED, override])
    assert message in str(e.value)


def test_the_same_option_twice_in_one_file_is_an_error(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"policy": "p", "prompts": "q", "reward_model": "r", "out_dir": "o",
                             "cliprange": 0.3, "ppo": {"cliprange": 0.1}}))
    with pytest.raises(ConfigError, match="cliprange: given twice"):
        config_mod.load(PPOConfig, f)


def test_files_take_group_tables_and_flat_keys_and_overrides_win_either_way(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('policy = "p"\nprompts = "q"\nreward_model = "r"\nout_dir = "o"\ndevice = "cpu"\n'
                 '[ppo]\ncliprange = 0.3\nvf_coef = 0.5\n[runtime]\nseed = 4\n[rm]\nlr = 9.0\n')
    cfg = config_mod.load(PPOConfig, f)
    assert (cfg.cliprange, cfg.vf_coef, cfg.seed, cfg.device, cfg.lr) == (0.3, 0.5, 4, "cpu", PPOConfig().lr)
    cfg = config_mod.load(PPOConfig, f, ["cliprange=0.1", "ppo.vf_coef=0.2", "runtime.device=cuda"])
    assert (cfg.cliprange, cfg.vf_coef, cfg.device) == (0.1, 0.2, "cuda")
    # a stage table holding group tables
    f2 = tmp_path / "run.toml"
    f2.write_text('[ppo]\npolicy = "p"\nprompts = "q"\nreward_model = "r"\nout_dir = "o"\n[ppo.ppo]\nlam = 0.5\n')
    assert config_mod.load(PPOConfig, f2, section="ppo").lam == 0.5


@pytest.mark.parametrize("cls, required", [(PPOConfig, REQUIRED), (SFTConfig, ["model=m", "train=t", "out_dir=o"])])
def test_a_resolved_config_is_still_flat_and_reads_back(tmp_path, cls, required):
    cfg = config_mod.load(cls, overrides=[*required, "runtime.device=cpu", "runtime.seed=5"])
    path = tmp_path / "config.resolved.json"
    config_mod.save(cfg, path)
    saved = json.loads(path.read_text())
    assert saved["device"] == "cpu" and saved["seed"] == 5 and not any(isinstance(v, dict) for v in saved.values())
    assert config_mod.load(cls, path) == cfg


def test_help_shows_each_group_under_its_heading():
    text = config_mod.describe(PPOConfig)
    for group in ("rollout", "ppo", "ptx", "runtime", "model"):
        assert f" [{group}]  (write {group}.NAME=value or NAME=value)" in text
    ppo_block = text.split(" [ppo]")[1].split(" [")[0]
    assert "  cliprange (float, default 0.2)" in ppo_block and "  device (" not in ppo_block
    assert text.index("  policy (str") < text.index(" [rollout]")  # the stage's own options first


def test_every_training_stage_shares_one_runtime_group_kept_out_of_stage_keys(tmp_path):
    runtime = {f.name for f in dataclasses.fields(RuntimeOptions)}
    for cls in (PPOConfig, SFTConfig, RMConfig, PretrainConfig):
        assert issubclass(cls, RuntimeOptions)
        assert set(config_mod.groups(cls)["runtime"]) == runtime
    # what can change the numbers is in the key; everything else of the group is not
    assert runtime - RUNTIME_OPTIONS == {"seed", "precision", "sharding"}
    keys = StageKeys(tmp_path)
    base = config_mod.load(PPOConfig, overrides=REQUIRED)
    moved = config_mod.load(PPOConfig, overrides=[*REQUIRED, "runtime.device=cpu", "runtime.progress=false",
                                                  "runtime.save_every=1", "runtime.report_to=none"])
    assert keys.key("ppo", moved) == keys.key("ppo", base)
    assert keys.key("ppo", config_mod.load(PPOConfig, overrides=[*REQUIRED, "ppo.cliprange=0.1"])) != \
        keys.key("ppo", base)


SFT_REQUIRED = ["model=m", "train=t", "out_dir=o"]
RM_REQUIRED = ["model=m", "train=t", "out_dir=o"]
SAMPLE_REQUIRED = ["policy=p", "prompts=q", "out=o"]


def _stage_configs():
    from instructgpt.sample import SampleConfig
    return {"sft": (SFTConfig, SFT_REQUIRED), "rm": (RMConfig, RM_REQUIRED), "ppo": (PPOConfig, REQUIRED),
            "sample": (SampleConfig, SAMPLE_REQUIRED),
            "pretrain": (PretrainConfig, ["corpus=c", "tokenizer=t", "out_dir=o"])}


@pytest.mark.parametrize("stage,override,named", [
    ("sft", "lr=nan", "lr"), ("sft", "lr=inf", "lr"), ("ppo", "kl_coef=-inf", "kl_coef"),
    ("sft", "dropout=1.5", "dropout"), ("rm", "dropout=1", "dropout"), ("pretrain", "dropout=-0.1", "dropout"),
    ("sft", "device=tpu", "device"), ("ppo", "device=cuda:x", "device"), ("sample", "device=gpu", "device"),
    ("sft", "epochs=0", "epochs"), ("rm", "warmup_steps=-1", "warmup_steps"), ("sft", "adam_beta2=1", "adam_beta2"),
    ("sft", "keep_checkpoints=0", "keep_checkpoints"), ("sft", "select_prompts=0", "select_prompts"),
    ("ppo", "lr=0", "lr"), ("ppo", "lr=-1e-5", "lr"), ("ppo", "cliprange=-0.2", "cliprange"),
    ("ppo", "ptx_coef=-1", "ptx_coef"), ("ppo", "kl_coef=-0.02", "kl_coef"), ("ppo", "top_p=1.5", "top_p"),
    ("ppo", "top_k=50", "top_k=50"), ("ppo", "top_p=0.9", "top_p=0.9"),
    ("ppo", "temperature=-1", "temperature"), ("ppo", "iterations=0", "iterations"),
    ("ppo", "minibatch_size=0", "minibatch_size"), ("ppo", "lam=1.5", "lam"), ("ppo", "ratio_guard=1", "ratio_guard"),
    ("ppo", "min_new_tokens=40", "min_new_tokens"), ("ppo", "reward_fn=nocolon", "reward_fn"),
    ("sample", "temperature=-0.5", "temperature"), ("sample", "top_p=2", "top_p"), ("sample", "limit=-1", "limit"),
    ("sample", "split=dev", "split"), ("sft", "seed=-1", "seed"), ("sample", "seed=99999999999999999999", "seed"),
    ("pretrain", "n_head=3", "n_embd, n_head"),
    ("ppo", "vllm_gpu_memory_utilization=30", "vllm_gpu_memory_utilization"),
    ("ppo", "vllm_gpu_memory_utilization=0", "vllm_gpu_memory_utilization"),
    ("sample", "temperature=0 top_k=5", "top_k"), ("sample", "temperature=0 top_p=0.5", "top_p"),
    ("sft", "select_prompts=8", "select_prompts"), ("sft", "max_new_tokens=16", "max_new_tokens"),
])
def test_an_option_out_of_its_range_is_an_error_naming_it(stage, override, named):
    cls, required = _stage_configs()[stage]
    config_mod.load(cls, overrides=required)  # the required options alone are fine
    with pytest.raises(ConfigError) as e:
        config_mod.load(cls, overrides=[*required, *override.split()])
    assert str(e.value).startswith(f"{named}:") or f" {named}:" in str(e.value) or f"{named}," in str(e.value), e.value


@pytest.mark.parametrize("stage, overrides, shown", [
    ("sft", ["lr=-1"], "lr: must be > 0, got -1.0"),
    ("sft", ["min_lr_ratio=2"], "min_lr_ratio: must be in [0, 1], got 2.0"),
    ("rm", ["micro_batch_size=0"], "batch_size, micro_batch_size: must be >= 1, got 16, 0"),
    ("sft", ["lora_r=-1"], "lora_r: must be >= 0 (0 = full fine-tuning), got -1"),
    ("sft", ["lora_r=4", "lora_dropout=1"], "lora_dropout: must be in [0, 1), got 1.0"),
    ("ppo", ["lora_r=4", "lora_alpha=0"], "lora_alpha: must be > 0, got 0.0"),
    ("ppo", ["ema_decay=1"], "ema_decay: must be in [0, 1), got 1.0"),
    ("run", ["k_min=1"], "k_min, k_max: need 2 <= k_min <= k_max <= 9, got 1, 6"),
    ("run", ["policy_samples=5"], "policy_samples: cannot exceed k_min=4, got 5"),
    ("run", ["rounds=0"], "rounds: must be >= 1, got 0"), ("run", ["scale=0"], "scale: must be > 0, got 0.0"),
    ("run", ["checkpoint_minutes=-1"], "checkpoint_minutes: must be >= 0, got -1.0"),
    ("run", ["keep_checkpoints=-1"], "keep_checkpoints: must be >= 0, got -1"),
])
def test_a_range_error_shows_the_value_given(tmp_path, stage, overrides, shown):
    """Several range errors named the option but not the value (a value from a file or a long command line
    had to be looked up)."""
    from instructgpt.run_config import RunConfig
    cls, required = {**_stage_configs(), "run": (RunConfig, [f"runs_dir={tmp_path}"])}[stage]
    with pytest.raises(ConfigError) as e:
        config_mod.load(cls, overrides=[*required, *overrides])
    assert str(e.value).endswith(shown), e.value


def test_world_range_errors_show_the_value_given():
    from instructgpt.world.datasets import WorldConfig
    with pytest.raises(ConfigError, match=r"^n_labelers, n_heldout_labelers: need at least 2 each, got 1, 10$"):
        WorldConfig(n_labelers=1).validate()
    with pytest.raises(ConfigError, match=r"^pii_rate: must be in \[0, 1\], got 2$"):
        WorldConfig(pii_rate=2).validate()


def test_the_edges_of_each_range_are_accepted():
    cls, required = _stage_configs()["ppo"]
    cfg = config_mod.load(cls, overrides=[*required, "kl_coef=0", "ptx_coef=0", "top_p=1", "temperature=0",
                                          "lam=1", "gamma=0", "iterations=1", "device=cuda:1"])
    assert (cfg.kl_coef, cfg.top_p, cfg.lam, cfg.device) == (0.0, 1.0, 1.0, "cuda:1")
    sft = config_mod.load(SFTConfig, overrides=[*SFT_REQUIRED, "dropout=0", "epochs=1", "device=cpu"])
    assert sft.dropout == 0.0


@pytest.mark.parametrize("stage, override", [("sft", "lora_alpha=32"), ("rm", "lora_dropout=0.1"),
                                             ("ppo", "lora_target_modules=c_attn,c_proj")])
def test_adapter_options_without_lora_are_an_error_not_ignored(stage, override):
    """lora_alpha, lora_dropout and lora_target_modules shape the adapters; with lora_r=0 (full fine-tuning) there
    are none, and the stage trained every weight as if they were not given."""
    cls, required = _stage_configs()[stage]
    name = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{name}: lora_r=0 trains every weight and adds no adapters, so "
                                          rf"{name}=.* would do nothing; set lora_r > 0"):
        config_mod.load(cls, overrides=[*required, override])
    cfg = config_mod.load(cls, overrides=[*required, override, "lora_r=4"])
    assert cfg.lora_r == 4 and getattr(cfg, name) != getattr(cls(), name)


@pytest.mark.parametrize("stage, frozen", [("pretrain", None), ("sft", "reward_model=rm_folder"), ("sft", "lora_r=4"),
                                           ("rm", "lora_r=4")])
def test_dtype_where_nothing_is_frozen_is_an_error_not_ignored(stage, frozen):
    """dtype is the frozen weights' dtype (reference, reward models, the base under LoRA): pretraining, SFT without a
    selection reward model or LoRA, and the RM without LoRA freeze nothing, and ran in fp32 as if it were not given."""
    cls, required = _stage_configs()[stage]
    with pytest.raises(ConfigError, match=r"^dtype: only read for frozen weights .* so dtype='bf16' would do nothing"):
        config_mod.load(cls, overrides=[*required, "dtype=bf16"])
    assert config_mod.load(cls, overrides=[*required, "dtype=fp32"]).dtype == "fp32"  # the default, said aloud
    if frozen:
        assert config_mod.load(cls, overrides=[*required, "dtype=bf16", frozen]).dtype == "bf16"


@pytest.mark.parametrize("overrides, switch", [(["target_kl=3"], "adaptive_kl"), (["kl_horizon=500"], "adaptive_kl"),
                                               (["ema=false", "ema_decay=0.9"], "ema"),
                                               (["ema=false", "ema_warmup=false"], "ema")])
def test_ppo_options_of_a_switched_off_part_are_an_error_not_ignored(overrides, switch):
    """target_kl and kl_horizon are the adaptive KL controller's, ema_decay and ema_warmup the EMA's: with
    adaptive_kl=false (the default) or ema=false PPO ran as if they were not given."""
    name = overrides[-1].split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{name}: only read with {switch}=true, so {name}=.* would do nothing "
                                          rf"with {switch}=false; set {switch}=true"):
        config_mod.load(PPOConfig, overrides=[*REQUIRED, *overrides])
    on = config_mod.load(PPOConfig, overrides=[*REQUIRED, *overrides, f"{switch}=true"])
    assert getattr(on, name) != getattr(PPOConfig(), name)


@pytest.mark.parametrize("override", ["pretrain_data=corpus.txt", "ptx_seq_len=64", "ptx_token_ratio=4"])
def test_ptx_options_without_ptx_coef_are_an_error_not_ignored(override):
    """pretrain_data given without ptx_coef (0 by default) ran plain PPO: the corpus was never read."""
    name = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{name}: only read by PPO-ptx, so {name}=.* would do nothing with "
                                          rf"ptx_coef=0 \(plain PPO\); set ptx_coef > 0"):
        config_mod.load(PPOConfig, overrides=[*REQUIRED, override])
    cfg = config_mod.load(PPOConfig, overrides=[*REQUIRED, override, "ptx_coef=1", "pretrain_data=corpus.txt"])
    assert cfg.ptx_coef == 1.0


def test_a_reward_fn_that_cannot_be_imported_is_a_config_error():
    from instructgpt.reward_fn import load_reward_fn
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module_xyz'"):
        load_reward_fn("no_such_module_xyz:f")
    with pytest.raises(ConfigError, match="module 'math' has no function 'nope'"):
        load_reward_fn("math:nope")
    with pytest.raises(ConfigError, match="not a function"):
        load_reward_fn("math:pi")
    assert load_reward_fn("math:sqrt")(4) == 2.0


def test_config_files_that_would_be_misread_are_errors_naming_the_file(tmp_path):
    from instructgpt.cli import _known_tables
    known = _known_tables()
    assert {"sft", "ppo", "eval", "run", "rollout", "optim", "runtime"} <= known
    both = tmp_path / "both.toml"
    both.write_text('seed = 3\n[sft]\nlr = 0.001\n')  # the [sft] table is read: seed would be dropped silently
    with pytest.raises(ConfigError, match=r"both\.toml: seed: top-level options are not read when the file has a "
                                          r"\[sft\] table"):
        config_mod.load(SFTConfig, both, SFT_REQUIRED, section="sft", known_tables=known)
    typo = tmp_path / "typo.toml"
    typo.write_text('[sfft]\nlr = 0.001\n')
    with pytest.raises(ConfigError, match=r"typo\.toml: \[sfft\]: not a stage or an option group"):
        config_mod.load(SFTConfig, typo, SFT_REQUIRED, section="sft", known_tables=known)
    other = tmp_path / "other.toml"  # tables of other stages and of groups are fine
    other.write_text('[rm]\nlr = 0.5\n[sft]\nlr = 0.001\n[sft.optim]\nepochs = 2\n')
    cfg = config_mod.load(SFTConfig, other, SFT_REQUIRED, section="sft", known_tables=known)
    assert (cfg.lr, cfg.epochs) == (0.001, 2)
    (tmp_path / "folder.toml").mkdir()
    with pytest.raises(ConfigError, match=r"folder\.toml: not a file"):
        config_mod.load(SFTConfig, tmp_path / "folder.toml", SFT_REQUIRED)
    (tmp_path / "latin1.yaml").write_bytes(b"lr: 0.001 # caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not UTF-8 text \(byte 16\)"):
        config_mod.load(SFTConfig, tmp_path / "latin1.yaml", SFT_REQUIRED)


def test_an_option_group_table_beside_the_stage_table_is_an_error_not_dropped(tmp_path):
    """[runtime] or [optim] beside [sft] (or [rollout] beside [ppo]) was skipped silently: the stage ran with
    the defaults of every option in it."""
    from instructgpt.cli import _known_tables
    known = _known_tables()
    f = tmp_path / "beside.toml"
    f.write_text('[sft]\nlr = 0.001\n[runtime]\nseed = 7\n[optim]\nepochs = 3\n')
    with pytest.raises(ConfigError, match=r"beside\.toml: \[runtime\], \[optim\]: top-level options are not read "
                                          r"when the file has a \[sft\] table; move them into it \(as "
                                          r"\[sft\.runtime\], \[sft\.optim\]\)"):
        config_mod.load(SFTConfig, f, SFT_REQUIRED, section="sft", known_tables=known)
    ppo = tmp_path / "ppo.toml"
    ppo.write_text('[ppo]\ncliprange = 0.1\n[rollout]\nbatch_size = 8\n')
    with pytest.raises(ConfigError, match=r"\[rollout\]: top-level options are not read"):
        config_mod.load(PPOConfig, ppo, REQUIRED, section="ppo", known_tables=known)
    inside = tmp_path / "inside.toml"  # where they are read
    inside.write_text('[sft]\nlr = 0.001\n[sft.runtime]\nseed = 7\n[sft.optim]\nepochs = 3\n')
    cfg = config_mod.load(SFTConfig, inside, SFT_REQUIRED, section="sft", known_tables=known)
    assert (cfg.lr, cfg.seed, cfg.epochs) == (0.001, 7, 3)
    no_table = tmp_path / "groups.toml"  # without a [sft] table the group tables are the file's options
    no_table.write_text('[runtime]\nseed = 7\n[optim]\nepochs = 3\n[rm]\nlr = 0.5\n')
    cfg = config_mod.load(SFTConfig, no_table, SFT_REQUIRED, section="sft", known_tables=known)
    assert (cfg.seed, cfg.epochs, cfg.lr) == (7, 3, SFTConfig().lr)


def test_a_boolean_or_a_word_is_not_a_number():
    with pytest.raises(ConfigError, match="batch_size: not a number: True"):
        config_mod.from_dict(SFTConfig, {"model": "m", "train": "t", "out_dir": "o", "batch_size": True})
    with pytest.raises(ConfigError, match="epochs: not an integer: 'two'"):
        config_mod.load(SFTConfig, overrides=[*SFT_REQUIRED, "epochs=two"])
    with pytest.raises(ConfigError, match="lr: not a number: 'fast'"):
        config_mod.load(SFTConfig, overrides=[*SFT_REQUIRED, "lr=fast"])


def test_a_bad_value_names_the_file_or_the_command_line_it_came_from(tmp_path):
    f = tmp_path / "opts.toml"
    f.write_text('[sft]\nepochs = "two"\nlr = 0.001\n')
    with pytest.raises(ConfigError, match=r"opts\.toml: epochs: not an integer: 'two'"):
        config_mod.load(SFTConfig, f, SFT_REQUIRED, section="sft")
    with pytest.raises(ConfigError, match=r"^command line: lr: not a number: 'fast'"):
        config_mod.load(SFTConfig, f, [*SFT_REQUIRED, "epochs=2", "lr=fast"], section="sft")
    group = tmp_path / "group.yaml"  # a value inside an option group table is the file's too
    group.write_text("optim:\n  warmup_steps: many\n")
    with pytest.raises(ConfigError, match=r"group\.yaml: optim\.warmup_steps: not an integer: 'many'"):
        config_mod.load(SFTConfig, group, SFT_REQUIRED)


@pytest.mark.parametrize("stage", ["sample", "eval", "run", "curate"])
def test_one_process_commands_under_a_launcher_are_an_error_before_any_work(tmp_path, monkeypatch, capsys, stage):
    """Under torchrun each rank ran sample, eval, run or curate whole and wrote the same files; now
    they stop with exit 2 and say why, before reading anything. (The training stages take a launcher.)"""
    from instructgpt import cli
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "out.jsonl"
    assert cli.main([stage, f"out={out}"]) == 2
    err = capsys.readouterr().err
    assert f"instructgpt {stage}: error: runs in one process, but WORLD_SIZE=2" in err
    assert "pretrain, sft, rm and ppo take one" in err
    assert not out.exists()
    assert {s.name for s in cli.STAGES if s.launchable} == {"pretrain", "sft", "rm", "ppo"}


def test_the_top_level_help_is_plain_text(capsys):
    from instructgpt.cli import build_parser
    build_parser().print_help()
    out = capsys.readouterr().out
    assert "instructgpt STAGE --help" in out and "``" not in out
