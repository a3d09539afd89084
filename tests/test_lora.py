"""LoRA through peft: SFT, RM and PPO train adapters; adapter folders load everywhere; resume; merge; QLoRA errors."""

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("peft")
from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from tests.conftest import WORDS, cut_at, make_model, make_tokenizer, repeat_demos, write_jsonl, write_llama_gguf, yes_rankings  # noqa: E402
from instructgpt import config, lora  # noqa: E402
from instructgpt.cli import main  # noqa: E402
from instructgpt.config import ConfigError  # noqa: E402
from instructgpt.generation import generate  # noqa: E402
from instructgpt.models import load_policy, load_tokenizer
from instructgpt.reward_model import RewardModel  # noqa: E402
from instructgpt.ppo import PPOConfig, PPOTrainer, train_ppo  # noqa: E402
from instructgpt.rm import RMConfig, train_rm  # noqa: E402
from instructgpt.sft import SFTConfig, train_sft  # noqa: E402

LORA = dict(lora_r=8, lora_alpha=16, lora_dropout=0.0)


@pytest.fixture(scope="module")
def base(tmp_path_factory, tokenizer_dir):
    """A tiny GPT-2 wide enough (128) that adapters on its blocks can learn past its frozen random embeddings
    (at width 32 even full fine-tuning with frozen embeddings barely moves the loss)."""
    from transformers import AutoTokenizer
    return make_model(tmp_path_factory.mktemp("lora_base"), "gpt2", width=128,
                      tokenizer=AutoTokenizer.from_pretrained(str(tokenizer_dir)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("lora_data")
    write_jsonl(d / "sft_train.jsonl", repeat_demos(96, 1))
    write_jsonl(d / "sft_valid.jsonl", repeat_demos(24, 2))
    write_jsonl(d / "rm_train.jsonl", yes_rankings(64, 1))
    write_jsonl(d / "rm_valid.jsonl", yes_rankings(24, 2))
    prompts = [{"id": str(i), "text": f"say {w}\n", "user_id": f"u{i % 5}"} for i, w in enumerate(WORDS[8:16] * 2)]
    write_jsonl(d / "prompts.jsonl", prompts)
    return d


def _options(base: dict, kw: dict) -> dict:
    """``base`` updated with ``kw``; with ``lora_r=0`` in ``kw`` without LORA's adapter options (an error then)."""
    if kw.get("lora_r") == 0:
        base = {k: v for k, v in base.items() if k not in lora.ADAPTER_OPTIONS}
    return {**base, **kw}


def sft_cfg(model, d, out, **kw) -> SFTConfig:
    base = dict(model=str(model), train=str(d / "sft_train.jsonl"), valid=str(d / "sft_valid.jsonl"),
                out_dir=str(out), lr=1e-2, epochs=2, batch_size=16, micro_batch_size=8, dropout=0.0,
                progress=False, **LORA)
    base = _options(base, kw)
    return config.from_dict(SFTConfig, base)


def rm_cfg(model, d, out, **kw) -> RMConfig:
    base = dict(model=str(model), train=str(d / "rm_train.jsonl"), valid=str(d / "rm_valid.jsonl"),
                out_dir=str(out), lr=1e-2, epochs=2, batch_size=8, micro_batch_size=8, progress=False, **LORA)
    base = _options(base, kw)
    return config.from_dict(RMConfig, base)


def ppo_cfg(d, policy, out, **kw) -> PPOConfig:
    base = dict(policy=str(policy), reward_fn="tests.ppo_rewards:count_e", prompts=str(d / "prompts.jsonl"),
                out_dir=str(out), iterations=3, batch_size=8, minibatch_size=4, ppo_epochs=1, lr=1e-2,
                warmup_iterations=0, max_new_tokens=6, progress=False, ema=False, save_every=0, **LORA)
    base = _options(base, kw)
    return config.from_dict(PPOConfig, base)


@pytest.fixture(scope="module")
def sft_adapter(tmp_path_factory, base, data):
    out = tmp_path_factory.mktemp("lora_sft") / "sft"
    result = train_sft(sft_cfg(base, data, out, epochs=3))
    return out, result


@pytest.fixture(scope="module")
def rm_adapter(tmp_path_factory, sft_adapter, data):
    out = tmp_path_factory.mktemp("lora_rm") / "rm"
    result = train_rm(rm_cfg(sft_adapter[0], data, out, epochs=3))
    return out, result


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


IDS = torch.tensor([[5, 17, 40, 3, 99, 12, 8]])


# ----------------------------------------------------------------------------- SFT

def test_sft_lora_trains_adapters_only_and_saves_a_peft_adapter(sft_adapter, base, data):
    from instructgpt.data import load_demonstrations
    from instructgpt.sft import encode_demonstrations, mean_lm_loss
    tiny_gpt2 = base
    out, result = sft_adapter
    tok = load_tokenizer(base)
    from instructgpt.batching import RecordEncoder
    from instructgpt.chat import ChatFormat
    cfg = sft_cfg(base, data, "x")
    encoder = RecordEncoder(ChatFormat.load(tok), None, cfg.max_prompt_tokens, max_seq_len=cfg.max_seq_len)
    valid, _ = encode_demonstrations(load_demonstrations(data / "sft_valid.jsonl"), encoder)
    before = mean_lm_loss(load_policy(base), valid, tok.pad_token_id, "cpu")
    losses = [h["sft/val_loss"] for h in result.fit.history]
    assert losses[-1] < before * 0.92 and losses[-1] < losses[0], (before, losses)
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists()
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(Path(tiny_gpt2).resolve())
    assert sorted(cfg["target_modules"]) == ["c_attn", "c_fc", "c_proj"] and cfg["r"] == 8
    info = json.loads((out / "instructgpt.json").read_text())["parameters"]
    assert 0 < info["trainable"] < info["total"] / 5, info
    # peft's own loader on the plain base gives the function our loader gives (which merges)
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_gpt2)), str(out)).eval()
    ours = load_policy(out)
    assert not lora.has_adapters(ours)
    torch.testing.assert_close(logits(ours, IDS), logits(plain, IDS), atol=1e-5, rtol=1e-5)
    # the adapters did change the function; the base weights did not change
    base = load_policy(tiny_gpt2)
    assert (logits(ours, IDS) - logits(base, IDS)).abs().max() > 1e-3
    with plain.disable_adapter():
        torch.testing.assert_close(logits(plain, IDS), logits(base, IDS))
    # checkpoints hold the adapters only
    ckpt = load_file(str(sorted((out / "checkpoints").glob("step-*"))[-1] / "model.safetensors"))
    assert ckpt and all("lora_" in k for k in ckpt), list(ckpt)[:5]


@pytest.mark.parametrize("arch,expected", [
    ("gpt2", {"c_attn", "c_proj", "c_fc"}),
    ("llama", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
    ("qwen2", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
    ("mistral", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
])
def test_default_target_modules_cover_attention_and_mlp(tmp_path, tokenizer_dir, arch, expected):
    from transformers import AutoTokenizer
    folder = make_model(tmp_path / arch, arch, tokenizer=AutoTokenizer.from_pretrained(str(tokenizer_dir)))
    model = lora.add_adapters(load_policy(folder), config.from_dict(SFTConfig, dict(
        model=str(folder), train="x", out_dir="x", **LORA)), base=folder)
    adapted = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if hasattr(m, "lora_A")
               and "base_layer" in m._modules}
    assert adapted == expected
    n_layers = model.config.num_hidden_layers
    assert sum(1 for _, m in model.named_modules() if "base_layer" in m._modules) == n_layers * (
        4 if arch == "gpt2" else 7)  # GPT-2: c_attn, attention c_proj, c_fc, MLP c_proj
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)


def test_merge_lora_writes_a_plain_folder_with_the_adapters_function(tmp_path, base, data):
    tiny_gpt2 = base
    out = tmp_path / "merged"
    train_sft(sft_cfg(tiny_gpt2, data, out, epochs=1, merge_lora=True))
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert (out / "adapter" / "adapter_config.json").is_file()
    plain = AutoModelForCausalLM.from_pretrained(str(out)).eval()   # any tool reads it, no peft needed
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_gpt2)), str(out / "adapter"))
    torch.testing.assert_close(logits(plain, IDS), logits(adapter.eval(), IDS), atol=1e-5, rtol=1e-5)


def test_sft_lora_kill_and_resume_gives_the_same_adapter(tmp_path, base, data):
    tiny_gpt2 = base
    train_sft(sft_cfg(tiny_gpt2, data, tmp_path / "full", save_every=3, lora_dropout=0.1))
    cfg = sft_cfg(tiny_gpt2, data, tmp_path / "cut", save_every=3, lora_dropout=0.1)
    import instructgpt.sft as sft_mod
    cut_at(8, sft_mod, train_sft, cfg)
    cfg.resume = True
    resumed = train_sft(cfg)
    assert resumed.fit.resumed_from.endswith("step-0000006")
    a = load_file(str(tmp_path / "full" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- RM

def test_rm_lora_from_an_sft_adapter_learns_and_reloads(rm_adapter, sft_adapter, data):
    out, result = rm_adapter
    assert result.val_accuracy > 0.7, result.val_accuracy
    meta = json.loads((out / "reward_model.json").read_text())
    assert meta["adapter"] == {"base_model": str(sft_adapter[0].resolve()), "base_kind": "causal_lm"}
    assert (out / "reward_head.safetensors").is_file() and not (out / "model.safetensors").exists()
    # trained: the head (fully) and the body's adapters; the body's base is the merged SFT model
    rm = RewardModel.from_pretrained(out)
    sft_body = load_policy(sft_adapter[0]).transformer
    body_ids = torch.tensor([[5, 17, 40, 3]])
    rm_hidden = rm.backbone(input_ids=body_ids).last_hidden_state
    assert (rm_hidden - sft_body(input_ids=body_ids).last_hidden_state).abs().max() > 1e-4  # adapters moved it
    # peft's loader on the merged SFT body + the head gives the same rewards as ours
    body = PeftModel.from_pretrained(load_policy(sft_adapter[0]).transformer, str(out)).eval()
    head = load_file(str(out / "reward_head.safetensors"))
    h = body(input_ids=body_ids).last_hidden_state[0, -1]
    expected = h @ head["weight"][0] + head["bias"][0] + meta["reward_bias"]
    torch.testing.assert_close(rm(body_ids, torch.ones_like(body_ids))[0], expected, atol=1e-5, rtol=1e-5)


def test_rm_lora_merged_folder_loads_as_sequence_classification(tmp_path, sft_adapter, data):
    from transformers import AutoModelForSequenceClassification
    out = tmp_path / "rm"
    train_rm(rm_cfg(sft_adapter[0], data, out, epochs=1, merge_lora=True))
    ours = RewardModel.from_pretrained(out)
    adapter = RewardModel.from_pretrained(out / "adapter")
    ids = torch.tensor([[5, 17, 40, 3, 0]])
    mask = torch.ones_like(ids)
    torch.testing.assert_close(ours(ids, mask), adapter(ids, mask), atol=1e-5, rtol=1e-5)
    seq = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    with torch.no_grad():
        score = seq(input_ids=ids, attention_mask=mask).logits[:, 0] + seq.config.reward_offset
    torch.testing.assert_close(score, ours(ids, mask), atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- PPO

def test_ppo_lora_reference_is_the_policy_with_adapters_disabled(tmp_path, sft_adapter, rm_adapter, data):
    cfg = ppo_cfg(data, sft_adapter[0], tmp_path / "ppo", reward_fn="", reward_model=str(rm_adapter[0]),
                  iterations=2, save_every=1, minibatch_size=8)  # one update per iteration
    trainer = PPOTrainer(cfg)
    assert trainer.ref is None and lora.has_adapters(trainer.policy)
    sft = load_policy(sft_adapter[0])
    ids, mask = IDS, torch.ones_like(IDS)
    torch.testing.assert_close(trainer.reference_logits(ids, mask, 3), logits(sft, ids)[:, 2:-1], atol=1e-5,
                               rtol=1e-5)
    # the value model: the reward model's (merged) body + fresh adapters, and its head, all trainable there
    value_trainable = {n for n, p in trainer.value.named_parameters() if p.requires_grad}
    assert {"head.weight", "head.bias"} <= value_trainable
    assert all("lora_" in n or n.startswith("head.") for n in value_trainable)
    result = train_ppo(cfg)
    first = result.history[0]
    assert first["ppo/kl"] == pytest.approx(0.0, abs=1e-6)         # fresh adapters: policy == reference
    assert first["ppo/approx_kl"] == pytest.approx(0.0, abs=1e-6)  # the first update is on-policy
    out = tmp_path / "ppo"
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        str(sft_adapter[0].resolve())
    assert (out / "value_model" / "adapter_config.json").is_file()
    value = RewardModel.from_pretrained(out / "value_model")  # base: the reward model folder
    assert json.loads((out / "value_model" / "reward_model.json").read_text())["adapter"]["base_kind"] == \
        "reward_model"
    assert value(ids, mask).shape == (1,)
    # the trained policy differs from the SFT model; loading its folder needs no peft call by the user
    assert (logits(load_policy(out), ids) - logits(sft, ids)).abs().max() > 1e-4


def test_value_model_on_a_full_reward_model_says_how_peft_loads_its_body(tmp_path, base, data):
    """A LoRA value model's base is the reward-model folder, whose weights hold the reward constant folded
    into the final norm: its how_to_load names RewardModel's body (AutoModel's would score wrong), and that
    recipe gives our value."""
    train_rm(rm_cfg(base, data, tmp_path / "rm", epochs=1, lora_r=0, lr=1e-3))
    assert json.loads((tmp_path / "rm" / "reward_model.json").read_text())["sequence_classification"]["folded_into"]
    train_ppo(ppo_cfg(data, base, tmp_path / "ppo", reward_fn="", reward_model=str(tmp_path / "rm"), iterations=1,
                      batch_size=4, minibatch_size=4))
    folder = tmp_path / "ppo" / "value_model"
    meta = json.loads((folder / "reward_model.json").read_text())
    assert meta["adapter"]["base_kind"] == "reward_model"
    recipe = "RewardModel.from_pretrained(base, dropout=None).backbone"
    assert recipe in meta["how_to_load"] and "AutoModel.from_pretrained(base)" not in meta["how_to_load"]
    body = PeftModel.from_pretrained(RewardModel.from_pretrained(meta["adapter"]["base_model"], dropout=None).backbone,
                                     str(folder)).eval()
    head = load_file(str(folder / "reward_head.safetensors"))
    with torch.no_grad():
        h = body(input_ids=IDS).last_hidden_state[0, -1]
        torch.testing.assert_close(RewardModel.from_pretrained(folder)(IDS, torch.ones_like(IDS))[0],
                                   h @ head["weight"][0] + head["bias"][0] + meta["reward_bias"], atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def full_sft(tmp_path_factory, tiny_gpt2):
    """A fully fine-tuned SFT policy (trained embeddings): LoRA PPO's usual starting point."""
    d = tmp_path_factory.mktemp("lora_full_sft")
    rng = random.Random(3)
    rows = [{"prompt": f"say {rng.choice(WORDS[8:16])}\n",
             "response": " ".join(rng.choice(WORDS[:8]) for _ in range(rng.randint(2, 5)))} for _ in range(200)]
    write_jsonl(d / "demos.jsonl", rows)
    train_sft(config.from_dict(SFTConfig, dict(model=str(tiny_gpt2), train=str(d / "demos.jsonl"),
                                               out_dir=str(d / "sft"), lr=3e-3, epochs=3, batch_size=16,
                                               dropout=0.0, progress=False)))
    return d / "sft"


def test_ppo_lora_update_moves_the_policy_towards_positive_advantages(tmp_path, full_sft, data):
    """One PPO iteration with adapters: log-probs of the batch's tokens rise where the advantage is positive
    and fall where it is negative (sum of A * change > 0), and only adapter weights moved."""
    from instructgpt.losses import token_logprobs
    from instructgpt.ppo_forward import response_logits
    trainer = PPOTrainer(ppo_cfg(data, full_sft, tmp_path / "ppo", batch_size=16, minibatch_size=8, ppo_epochs=2,
                                 lr=2e-2))
    base = {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if not p.requires_grad}
    ro, _ = trainer.rollout(trainer.next_prompts())
    trainer.compute_advantages(ro)
    trainer.learn(ro)
    with torch.no_grad():
        new = token_logprobs(response_logits(trainer.policy, ro.input_ids, ro.attention_mask, ro.P),
                             ro.input_ids[:, ro.P:]) * ro.mask
    gain = (ro.advantages * (new - ro.logprobs) * ro.mask).sum().item()
    assert gain > 0, gain
    assert all(torch.equal(p, base[n]) for n, p in trainer.policy.named_parameters() if n in base)


def test_ppo_lora_reference_cases(tmp_path, sft_adapter, data, base):
    tiny_gpt2 = base
    first = tmp_path / "round1"
    train_ppo(ppo_cfg(data, sft_adapter[0], first, iterations=2))
    # continuing a LoRA PPO policy with reference = its base: its adapter trains on, still one base copy
    trainer = PPOTrainer(ppo_cfg(data, first, tmp_path / "round2", reference=str(sft_adapter[0])))
    assert trainer.ref is None
    saved = load_file(str(first / "adapter_model.safetensors"))
    live = {k.replace(".default", ""): v for k, v in trainer.policy.state_dict().items() if "lora_" in k}
    for k, v in saved.items():
        torch.testing.assert_close(live[k], v)
    torch.testing.assert_close(trainer.reference_logits(IDS, torch.ones_like(IDS), 3),
                               logits(load_policy(sft_adapter[0]), IDS)[:, 2:-1], atol=1e-5, rtol=1e-5)
    # a reference that is not the adapters' base: loaded as its own frozen model
    trainer = PPOTrainer(ppo_cfg(data, first, tmp_path / "round2b", reference=str(tiny_gpt2)))
    assert trainer.ref is not None and not lora.has_adapters(trainer.ref)
    torch.testing.assert_close(trainer.reference_logits(IDS, torch.ones_like(IDS), 3),
                               logits(load_policy(tiny_gpt2), IDS)[:, 2:-1])


def test_a_continued_lora_policy_says_its_adapter_keeps_its_own_settings(tmp_path, sft_adapter, data, capsys):
    """Continuing a LoRA PPO policy trains its adapter with the settings in its folder: another lora_r or
    lora_alpha on the command line reached only the value model's fresh adapters, without a word."""
    first = tmp_path / "round1"
    train_ppo(ppo_cfg(data, sft_adapter[0], first, iterations=1))
    capsys.readouterr()
    r, alpha = LORA["lora_r"], LORA["lora_alpha"]
    PPOTrainer(ppo_cfg(data, first, tmp_path / "same", reference=str(sft_adapter[0])))
    assert "note:" not in capsys.readouterr().out                  # the adapter's own settings: nothing to say
    trainer = PPOTrainer(ppo_cfg(data, first, tmp_path / "other", reference=str(sft_adapter[0]),
                                 lora_r=2 * r, lora_alpha=3.0 * alpha))
    out = capsys.readouterr().out
    assert (f"lora_r={2 * r} (the adapter's: {r}), lora_alpha={3.0 * alpha} (the adapter's: {float(alpha)}) shape the "
            f"value model's fresh adapters only") in out
    assert trainer.policy.peft_config["default"].r == r and trainer.value.backbone.peft_config["default"].r == 2 * r
    PPOTrainer(ppo_cfg(data, first, tmp_path / "rloo", reference=str(sft_adapter[0]), lora_r=2 * r,
                       advantage_estimator="rloo", samples_per_prompt=2))
    assert "lora_r=" in (out := capsys.readouterr().out) and "shape nothing (no separate value model)" in out


def test_ppo_lora_kill_and_resume_gives_the_same_weights(tmp_path, sft_adapter, rm_adapter, data):
    common = dict(iterations=5, save_every=2, ema=True, reward_fn="", reward_model=str(rm_adapter[0]))
    train_ppo(ppo_cfg(data, sft_adapter[0], tmp_path / "full", **common))

    def crash(iteration):
        if iteration == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_ppo(ppo_cfg(data, sft_adapter[0], tmp_path / "cut", **common), on_iteration=crash)
    ckpt = load_file(str(tmp_path / "cut" / "checkpoints" / "step-0000002" / "model.safetensors"))
    assert all("lora_" in k or k.startswith(("value.head.", "value.reward_bias", "ema.")) for k in ckpt)
    train_ppo(ppo_cfg(data, sft_adapter[0], tmp_path / "cut", resume=True, **common))
    for sub in ("adapter_model.safetensors", "policy_raw/adapter_model.safetensors",
                "value_model/adapter_model.safetensors", "value_model/reward_head.safetensors"):
        a, b = load_file(str(tmp_path / "full" / sub)), load_file(str(tmp_path / "cut" / sub))
        assert a.keys() == b.keys() and a
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    # the EMA (out_dir) differs from the raw adapters (policy_raw)
    ema = load_file(str(tmp_path / "full" / "adapter_model.safetensors"))
    raw = load_file(str(tmp_path / "full" / "policy_raw" / "adapter_model.safetensors"))
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)


# ----------------------------------------------------------------------------- loading elsewhere

def test_sample_and_tokenizer_read_an_adapter_folder(tmp_path, sft_adapter, data):
    from instructgpt.sample import SampleConfig, run_sample
    out = tmp_path / "tasks.jsonl"
    run_sample(config.from_dict(SampleConfig, dict(policy=str(sft_adapter[0]), prompts=str(data / "prompts.jsonl"),
                                                    out=str(out), k=2, max_new_tokens=4, limit=3)))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and all(len(r["responses"]) == 2 for r in rows)
    assert load_tokenizer(sft_adapter[0]).eos_token_id is not None


def test_lean_decoding_is_not_used_for_adapter_layers(base):
    tiny_gpt2 = base
    """Sampling from a LoRA model gives the tokens of its real forward (the lean decoder would skip the adapters)."""
    opts = config.from_dict(SFTConfig, dict(model="x", train="x", out_dir="x", lora_r=4, lora_alpha=32))
    model = lora.add_adapters(load_policy(tiny_gpt2), opts, base=tiny_gpt2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    runs = [generate(model, [[5, 6, 7], [8, 9]], 10, 0, 1, generator=torch.Generator().manual_seed(0),
                     lean=lean).responses for lean in (True, False)]
    assert runs[0] == runs[1]


def test_adapter_on_a_gguf_base_records_the_file(tmp_path, data):
    # a GGUF carries ChatML, whose turns must end with a special token: the tokenizer has ChatML's specials
    folder = make_model(tmp_path / "llama", "llama", tokenizer=make_tokenizer(tmp_path / "tok", chat_tokens=True))
    gguf = write_llama_gguf(tmp_path / "tiny.gguf", folder, quantize=False)
    out = tmp_path / "sft"
    train_sft(sft_cfg(gguf, data, out, epochs=1))
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(gguf.resolve())
    ours = load_policy(out)
    base = load_policy(gguf)
    peft_model = PeftModel.from_pretrained(base, str(out)).eval()
    torch.testing.assert_close(logits(ours, IDS), logits(peft_model, IDS), atol=1e-5, rtol=1e-5)


def test_the_smollm2_alias_is_recorded_as_the_alias():
    assert lora.base_spec("smollm2") == "smollm2"
    assert lora.base_spec("some/folder") == str(Path("some/folder").resolve())
    assert lora.same_model("smollm2", "smollm2") and not lora.same_model("smollm2", "other")


def test_missing_base_of_an_adapter_folder_is_named(tmp_path, sft_adapter):
    import shutil
    from instructgpt.models import ModelLoadError
    moved = tmp_path / "adapter"
    shutil.copytree(sft_adapter[0], moved, ignore=shutil.ignore_patterns("checkpoints"))
    cfg = json.loads((moved / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "gone")
    (moved / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=r"adapter.*base model.*gone.*not found"):
        load_policy(moved)


# ----------------------------------------------------------------------------- limits and errors

def test_load_in_4bit_on_cpu_is_a_clear_error(tmp_path, base, data, capsys):
    tiny_gpt2 = base
    with pytest.raises(ConfigError, match="load_in_4bit: 4-bit QLoRA needs a CUDA GPU.*device is cpu"):
        train_sft(sft_cfg(tiny_gpt2, data, tmp_path / "q", load_in_4bit=True, device="cpu"))
    code = main(["sft", f"model={tiny_gpt2}", f"train={data / 'sft_train.jsonl'}", f"out_dir={tmp_path / 'q2'}",
                 "lora_r=4", "load_in_4bit=true", "device=cpu", "progress=false"])
    assert code == 2 and "needs a CUDA GPU" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="load_in_4bit: needs lora_r > 0"):
        sft_cfg(tiny_gpt2, data, tmp_path / "q3", lora_r=0, load_in_4bit=True)
    with pytest.raises(ConfigError, match="merge_lora: needs lora_r > 0"):
        sft_cfg(tiny_gpt2, data, tmp_path / "q4", lora_r=0, merge_lora=True)


def test_missing_peft_is_a_clear_error(monkeypatch, base, data, tmp_path):
    tiny_gpt2 = base
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(ConfigError, match=r"lora_r: LoRA needs the peft package.*pip install 'instructgpt\[lora\]'"):
        sft_cfg(tiny_gpt2, data, tmp_path / "x")


def test_fsdp_sharding_of_a_lora_model_is_refused(monkeypatch, base):
    tiny_gpt2 = base
    from instructgpt import distributed, sharding
    opts = config.from_dict(SFTConfig, dict(model="x", train="x", out_dir="x", **LORA))
    model = lora.add_adapters(load_policy(tiny_gpt2), opts, base=tiny_gpt2)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(ConfigError, match="sharding: FSDP2 sharding .* of a LoRA model is not supported"):
        sharding.shard_model(model, "full")
    assert sharding.shard_model(model, "none") is False


def test_vllm_backend_with_lora_is_refused(data, sft_adapter, tmp_path):
    with pytest.raises(ConfigError, match="generation_backend: vllm"):
        ppo_cfg(data, sft_adapter[0], tmp_path / "v", generation_backend="vllm")


def test_context_of_an_adapter_folder_is_its_base_models(sft_adapter, base):
    """The context check reads the positions of the model an adapter adapts (an adapter
    folder has no config.json: the check must not silently turn off)."""
    from instructgpt.batching import ModelContext
    folder, _ = sft_adapter
    assert not (folder / "config.json").exists()
    assert ModelContext.of_model(folder).positions == ModelContext.of_model(base).positions == 128


def test_ppo_lora_rloo_trains_the_adapters_alone_and_saves_no_value_model(tmp_path, sft_adapter, data):
    """advantage_estimator=rloo under LoRA: the policy's adapters (and their EMA) train, the reference is the
    policy with adapters disabled, and the output holds the policy's adapter folders and no value model."""
    cfg = ppo_cfg(data, sft_adapter[0], tmp_path / "ppo", advantage_estimator="rloo", samples_per_prompt=4,
                  iterations=2, ema=True)
    result = train_ppo(cfg)
    assert "ppo/vf_loss" not in result.history[-1]
    out = tmp_path / "ppo"
    assert (out / "adapter_config.json").is_file() and (out / "policy_raw" / "adapter_config.json").is_file()
    assert not (out / "value_model").exists() and not (out / "value_head.safetensors").exists()
    ids = IDS
    assert (logits(load_policy(out / "policy_raw"), ids) - logits(load_policy(sft_adapter[0]), ids)).abs().max() > 1e-4
