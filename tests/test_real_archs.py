"""Tiny random GPT-2, Llama, Qwen2 and Mistral models through sft -> rm -> ppo-ptx.

What each architecture must get right, beyond "it runs":
  - SFT with dropout 0.2 leaves the saved config with the base model's own dropout values;
  - the first PPO update is on-policy: its log-probs equal the rollout's (dropout off everywhere,
    including the attention dropout Llama/Qwen2/Mistral read from their config in train mode);
  - every dropout the architecture has (modules, attention attributes, config fields) follows
    ``set_dropout``, and nothing else changes;
  - the reward-model folder loads as ``AutoModelForSequenceClassification`` with the same scores
    (GPT-2: exact, the constant folded into ln_f's bias) or our scores minus ``config.reward_offset``
    (RMSNorm bodies, which have no bias after the last layer).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from tests.conftest import WORDS, make_model, repeat_demos, toy_corpus, write_jsonl, yes_rankings
from instructgpt import config
from instructgpt.batching import pad
from instructgpt.dropout import dropout_disabled, dropout_settings, set_dropout
from instructgpt.models import load_policy, load_tokenizer
from instructgpt.reward_model import RewardInteropWarning, RewardModel
from instructgpt.ppo import PPOConfig, PPOTrainer, train_ppo
from instructgpt.rm import RMConfig, train_rm
from instructgpt.sft import SFTConfig, train_sft

pytestmark = pytest.mark.filterwarnings("ignore::instructgpt.reward_model.RewardInteropWarning")  # tested where meant

ARCHS = ["gpt2", "llama", "qwen2", "mistral"]
LLAMA_FAMILY = ["llama", "qwen2", "mistral"]
SFT_DROPOUT = 0.2
# The first minibatch of the first PPO epoch recomputes the rollout's log-probs in train mode, on
# the same rows in another order. Measured on CPU (fp32, 2 threads) for all four architectures:
# max |log ratio| = 0 exactly (ratio 1, approx_kl 0). The bound leaves room for other BLAS blockings;
# the dropout this guards against moves it by 3e-2 to 5e-2 on these tiny models.
ON_POLICY_LOG_RATIO = 1e-6


@dataclass
class Stages:
    arch: str
    root: Path
    base: Path
    sft: Path
    rm: Path


@pytest.fixture(scope="module", params=ARCHS)
def stages(request, tmp_path_factory, tokenizer_dir) -> Stages:
    """A tiny base model of one architecture, SFT on it (dropout 0.2), an RM on the SFT model (dropout 0.1)."""
    arch = request.param
    d = tmp_path_factory.mktemp(f"stages-{arch}")
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    base = make_model(d / "base", arch, tokenizer=tok)
    write_jsonl(d / "demos.jsonl", repeat_demos(48, 1))
    write_jsonl(d / "rankings.jsonl", yes_rankings(24, 1))
    rng = random.Random(4)
    write_jsonl(d / "prompts.jsonl", [{"id": str(i), "text": f"say {rng.choice(WORDS)}\n", "user_id": f"u{i}",
                                       "use_case": "generation"} for i in range(16)])
    (d / "pretrain.txt").write_text("\n\n".join(toy_corpus(60, seed=5)))
    train_sft(config.from_dict(SFTConfig, dict(
        model=str(base), train=str(d / "demos.jsonl"), out_dir=str(d / "sft"), epochs=1, batch_size=8,
        lr=1e-3, warmup_steps=1, dropout=SFT_DROPOUT, progress=False)))
    train_rm(config.from_dict(RMConfig, dict(
        model=str(d / "sft"), train=str(d / "rankings.jsonl"), out_dir=str(d / "rm"), epochs=1, batch_size=8,
        micro_batch_size=8, lr=1e-3, warmup_steps=1, dropout=0.1, progress=False)))
    return Stages(arch, d, base, d / "sft", d / "rm")


def ppo_config(s: Stages, out: Path, **kw) -> PPOConfig:
    base = dict(policy=str(s.sft), reward_model=str(s.rm), prompts=str(s.root / "prompts.jsonl"),
                pretrain_data=str(s.root / "pretrain.txt"), ptx_coef=1.0, ptx_seq_len=16, ptx_token_ratio=1.0,
                out_dir=str(out), iterations=1, batch_size=8, minibatch_size=8, ppo_epochs=1, lr=1e-4,
                max_new_tokens=8, save_every=0, progress=False, seed=1)
    base.update(kw)
    return config.from_dict(PPOConfig, base)


def config_dropout(folder: Path) -> dict[str, float]:
    cfg = json.loads((folder / "config.json").read_text())
    return {k: v for k, v in cfg.items() if ("dropout" in k or "pdrop" in k) and isinstance(v, (int, float))}


# ----------------------------------------------------------------------------- sft -> rm -> ppo-ptx

def test_first_ppo_ptx_update_is_on_policy_after_sft_with_dropout(stages, tmp_path):
    """One PPO-ptx iteration, one epoch, one minibatch: the update's log-probs are the rollout's.

    Before the fix, Llama-family attention applied SFT's attention_dropout (0.2, from the saved
    config) in learn()'s train mode: here approx_kl ~1e-4 and ratio_max 1.02-1.04 (on SmolLM2:
    approx_kl 3.77, clipfrac 0.5).
    """
    result = train_ppo(ppo_config(stages, tmp_path / "ppo"))
    m = result.history[0]
    assert m["ppo/response_length"] > 0
    assert m["ppo/clipfrac"] == 0.0, m
    assert m["ppo/approx_kl"] <= 0.5 * ON_POLICY_LOG_RATIO ** 2, m
    assert abs(m["ppo/ratio_max"] - 1.0) <= ON_POLICY_LOG_RATIO, m
    assert m["ppo/ptx_loss"] > 0
    # every folder PPO writes keeps the base model's dropout values
    for sub in ("", "policy_raw", "value_model"):
        assert config_dropout(tmp_path / "ppo" / sub) == config_dropout(stages.base), sub


def test_first_rloo_update_is_on_policy_and_no_value_model_is_loaded_or_saved(stages, tmp_path):
    """RLOO PPO-ptx (2 prompts x 4 responses) on each architecture: the same on-policy first update,
    the response groups scored apart, and only policy folders written, with the base model's dropout."""
    cfg = ppo_config(stages, tmp_path / "rloo", advantage_estimator="rloo", samples_per_prompt=4)
    trainer = PPOTrainer(cfg)
    assert trainer.value is None and trainer.trained == [trainer.policy]
    indices = trainer.next_prompts()
    assert indices[:4] == [indices[0]] * 4 and indices[4:] == [indices[4]] * 4 and indices[0] != indices[4]
    result = train_ppo(cfg)
    m = result.history[0]
    assert m["ppo/clipfrac"] == 0.0 and abs(m["ppo/ratio_max"] - 1.0) <= ON_POLICY_LOG_RATIO, m
    assert m["ppo/ptx_loss"] > 0 and "ppo/vf_loss" not in m
    assert not (tmp_path / "rloo" / "value_model").exists()
    for sub in ("", "policy_raw"):
        assert config_dropout(tmp_path / "rloo" / sub) == config_dropout(stages.base), sub


def test_sft_and_rm_folders_keep_the_base_models_dropout(stages):
    """SFT trained with dropout 0.2 and the RM with 0.1; neither value is written into the saved configs."""
    base = config_dropout(stages.base)
    assert base, "the base config names its dropout fields"
    assert config_dropout(stages.sft) == base
    assert config_dropout(stages.rm) == base
    assert SFT_DROPOUT not in base.values()


def test_ppo_turns_off_dropout_in_every_model_it_runs(stages, tmp_path):
    trainer = PPOTrainer(ppo_config(stages, tmp_path / "ppo", ema=True))
    models = {"policy": trainer.policy, "reference": trainer.ref, "reward": trainer.reward_model,
              "value": trainer.value, "ema": trainer.ema_model}
    for name, m in models.items():
        assert [s for s in dropout_settings(m) if s[2] != 0.0] == [], name
        assert_train_mode_is_deterministic(m)
    shared = PPOTrainer(ppo_config(stages, tmp_path / "shared", value_model="shared", ema=False))
    assert [s for s in dropout_settings(shared.policy) if s[2] != 0.0] == []   # the value head's trunk


def assert_train_mode_is_deterministic(model: nn.Module) -> None:
    ids = torch.randint(3, 100, (2, 10))
    mask = torch.ones_like(ids)
    model.train()
    with torch.no_grad():
        out = [model(ids, mask) if isinstance(model, RewardModel) else model(input_ids=ids, attention_mask=mask).logits
               for _ in range(2)]
    torch.testing.assert_close(out[0], out[1], atol=0, rtol=0)


# ----------------------------------------------------------------------------- the dropout mechanism

def expected_dropout_places(model: nn.Module, arch: str) -> list[tuple[object, str]]:
    """Where each architecture keeps its dropout probabilities, listed by hand (not by the code under test)."""
    places = [(m, "p") for m in model.modules() if isinstance(m, nn.Dropout)]
    cfg = model.config
    if arch == "gpt2":
        assert len(places) == 1 + 3 * cfg.n_layer            # embd + (attn, resid, mlp) per block
        places += [(cfg, k) for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout")]
    else:
        attention = [m for m in model.modules() if type(m).__name__.endswith("Attention")]
        assert len(attention) == cfg.num_hidden_layers
        places += [(m, "attention_dropout") for m in attention] + [(cfg, "attention_dropout")]
    return places


def non_dropout_floats(model: nn.Module) -> dict:
    """Every float attribute of every module and of the config, dropout ones excluded."""
    out = {}
    for name, m in list(model.named_modules()) + [("config", model.config)]:
        for k, v in vars(m).items():
            if isinstance(v, float) and "drop" not in k:
                out[f"{name}.{k}"] = v
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_set_dropout_reaches_modules_attention_attributes_and_config(tmp_path, tokenizer_dir, arch):
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    folder = make_model(tmp_path / arch, arch, tokenizer=tok)
    as_saved = config_dropout(folder)
    model = load_policy(folder, dropout=0.3)
    places = expected_dropout_places(model, arch)
    assert all(getattr(owner, k) == 0.3 for owner, k in places)
    others = non_dropout_floats(model)

    ids = torch.randint(3, 100, (2, 12))
    model.train()
    with torch.no_grad():
        noisy = [model(input_ids=ids).logits for _ in range(2)]
    assert not torch.equal(noisy[0], noisy[1])                  # dropout 0.3 is live in train mode

    with dropout_disabled(model):
        assert all(getattr(owner, k) == 0.0 for owner, k in places)
        with torch.no_grad():
            train_out = model(input_ids=ids).logits
            model.eval()
            eval_out = model(input_ids=ids).logits
            model.train()
        torch.testing.assert_close(train_out, eval_out, atol=0, rtol=0)
    assert all(getattr(owner, k) == 0.3 for owner, k in places)   # restored after the block
    assert non_dropout_floats(model) == others                    # nothing else was touched

    set_dropout(model, 0.0)
    assert all(getattr(owner, k) == 0.0 for owner, k in places)
    model.save_pretrained(tmp_path / "plain-save")                # HF's own save: the live (zero) values
    from instructgpt import sharding
    sharding.save_pretrained(model, tmp_path / "stage-save")      # a stage's save: the values as loaded
    assert config_dropout(tmp_path / "stage-save") == as_saved
    assert all(v == 0.0 for v in config_dropout(tmp_path / "plain-save").values())


def test_load_policy_keeps_checkpoint_dropout_only_when_asked(tmp_path, tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    folder = make_model(tmp_path / "llama", "llama", tokenizer=tok)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["attention_dropout"] = 0.25
    (folder / "config.json").write_text(json.dumps(cfg))
    kept = load_policy(folder, dropout=None)
    assert {m.attention_dropout for m in kept.modules() if hasattr(m, "attention_dropout")} == {0.25}
    off = load_policy(folder)
    assert {m.attention_dropout for m in off.modules() if hasattr(m, "attention_dropout")} == {0.0}
    rm = RewardModel.from_policy(folder)
    assert [s for s in dropout_settings(rm) if s[2] != 0.0] == []


# ----------------------------------------------------------------------------- reward-model interop

def scored_batch(tok):
    """Right-padded prompt+response+EOS rows of different lengths, padded with the RM folder's pad token."""
    seqs = [[5, 6, 7, 8, 9, 10, tok.eos_token_id], [11, 12, tok.eos_token_id], [13, 14, 15, 16, tok.eos_token_id]]
    return pad(seqs, tok.pad_token_id, "right")


def test_reward_model_folder_loads_as_sequence_classification(stages):
    tok = load_tokenizer(stages.rm)
    assert tok.pad_token_id != tok.eos_token_id
    cfg = AutoConfig.from_pretrained(str(stages.rm))
    assert cfg.architectures == [f"{type(AutoModelForSequenceClassification.from_config(cfg)).__name__}"]
    assert cfg.num_labels == 1 and cfg.pad_token_id == tok.pad_token_id
    ours = RewardModel.from_pretrained(stages.rm).eval()
    theirs = AutoModelForSequenceClassification.from_pretrained(str(stages.rm)).eval()
    torch.testing.assert_close(theirs.score.weight, ours.head.weight, atol=0, rtol=0)  # the trained head, not noise
    ids, mask = scored_batch(tok)
    with torch.no_grad():
        r_ours = ours(ids, mask)
        r_theirs = theirs(input_ids=ids, attention_mask=mask).logits[:, 0]
    meta = json.loads((stages.rm / "reward_model.json").read_text())
    constant = ours.head.bias.detach().item() + ours.reward_bias.item()
    assert abs(constant) > 1e-3                                  # the RM was normalised: there is a constant
    if stages.arch == "gpt2":                                    # folded into ln_f.bias: exact
        assert meta["sequence_classification"]["exact"] and cfg.reward_offset == 0.0
        torch.testing.assert_close(r_theirs, r_ours, atol=2e-6, rtol=0)
    else:                                                        # RMSNorm: off by the declared constant
        assert not meta["sequence_classification"]["exact"]
        assert cfg.reward_offset == pytest.approx(constant, abs=1e-7)
        torch.testing.assert_close(r_theirs + cfg.reward_offset, r_ours, atol=2e-6, rtol=0)
        with pytest.warns(RewardInteropWarning, match="reward_offset"):
            ours.save_pretrained(stages.root / "rm-again", tok)


def test_rm_folder_round_trip_keeps_rewards_and_values(stages, tmp_path):
    rm = RewardModel.from_pretrained(stages.rm).eval()
    rm.save_pretrained(tmp_path / "again", load_tokenizer(stages.rm))
    back = RewardModel.from_pretrained(tmp_path / "again").eval()
    ids, mask = scored_batch(load_tokenizer(stages.rm))
    with torch.no_grad():
        torch.testing.assert_close(back(ids, mask), rm(ids, mask), atol=1e-6, rtol=0)
        torch.testing.assert_close(back.values(ids, mask), rm.values(ids, mask), atol=1e-6, rtol=0)
    assert float(back.reward_bias) == float(rm.reward_bias)
    assert back.head.bias.detach().item() == rm.head.bias.detach().item()
