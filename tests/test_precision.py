"""Memory and precision options: gradient checkpointing, attention kernels, dtype of frozen models, autocast coverage."""

import pytest
import torch
from transformers import AutoTokenizer

from tests.conftest import cut_at, make_model, repeat_demos, write_jsonl, yes_rankings
from instructgpt import config
from instructgpt.config import ConfigError
from instructgpt.models import check_attn_implementation, enable_gradient_checkpointing, load_policy, resolve_dtype
from instructgpt.reward_model import RewardModel
from instructgpt.sft import SFTConfig, train_sft


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    return {arch: make_model(tmp_path_factory.mktemp(arch), arch, tokenizer=tok) for arch in ("gpt2", "llama")}


def grads(model, ids, mask, reward: bool = False) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(ids, mask).sum() if reward else model(input_ids=ids, attention_mask=mask).logits.pow(2).mean()
    out.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_gradient_checkpointing_gives_the_same_gradients(models, arch):
    ids = torch.randint(3, 150, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # a left-padded row
    plain, ckpt = load_policy(models[arch]), load_policy(models[arch])
    enable_gradient_checkpointing(ckpt)
    calls = []
    mlp = (ckpt.transformer.h if arch == "gpt2" else ckpt.model.layers)[0].mlp
    forward = mlp.forward
    mlp.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)  # (module hooks do not see the recompute)
    a, b = grads(plain, ids, mask), grads(ckpt, ids, mask)
    assert len(calls) == 2  # the block's MLP ran twice: forward, then recomputed in backward
    assert a.keys() == b.keys() and len(a) > 5
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    # the reward model's body too
    rm_plain, rm_ckpt = RewardModel.from_policy(models[arch]), RewardModel.from_policy(models[arch])
    rm_ckpt.head.load_state_dict(rm_plain.head.state_dict())
    enable_gradient_checkpointing(rm_ckpt)
    a, b = grads(rm_plain, ids, mask, reward=True), grads(rm_ckpt, ids, mask, reward=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_sft_with_gradient_checkpointing_trains_the_same_weights(tmp_path, models):
    d = tmp_path
    write_jsonl(d / "t.jsonl", repeat_demos(32, 1))
    outs = {}
    for gc in (False, True):
        cfg = config.from_dict(SFTConfig, dict(model=str(models["llama"]), train=str(d / "t.jsonl"),
                                               out_dir=str(d / f"gc{gc}"), lr=1e-3, epochs=1, batch_size=8,
                                               dropout=0.0, progress=False, gradient_checkpointing=gc))
        train_sft(cfg)
        outs[gc] = load_policy(d / f"gc{gc}").state_dict()
    changed = [k for k in outs[False] if not torch.equal(outs[False][k], load_policy(models["llama"]).state_dict()[k])]
    assert changed
    for k in outs[False]:
        torch.testing.assert_close(outs[False][k], outs[True][k], atol=1e-5, rtol=1e-4)


def test_a_run_resumes_with_gradient_checkpointing_turned_on(tmp_path, models):
    """The fix for a run killed by running out of memory: resume it with checkpointing; the same weights."""
    from instructgpt import sft
    write_jsonl(tmp_path / "t.jsonl", repeat_demos(16, 1))
    base = dict(model=str(models["llama"]), train=str(tmp_path / "t.jsonl"), lr=1e-3, epochs=2, batch_size=4,
                save_every=1, dropout=0.1, progress=False)
    train_sft(config.from_dict(SFTConfig, dict(base, out_dir=str(tmp_path / "whole"))))
    cut_at(3, sft, train_sft, config.from_dict(SFTConfig, dict(base, out_dir=str(tmp_path / "cut"))))
    train_sft(config.from_dict(SFTConfig, dict(base, out_dir=str(tmp_path / "cut"), resume=True,
                                               gradient_checkpointing=True)))
    whole, resumed = load_policy(tmp_path / "whole").state_dict(), load_policy(tmp_path / "cut").state_dict()
    for k in whole:
        torch.testing.assert_close(whole[k], resumed[k], atol=1e-6, rtol=1e-5)


def test_instructgpt_json_says_what_auto_precision_and_dtype_resolved_to(tmp_path, models, monkeypatch):
    """precision=auto and dtype=auto are bf16 or fp32 by machine and launcher: the folder says which ran."""
    import json
    write_jsonl(tmp_path / "t.jsonl", repeat_demos(8, 1))
    base = dict(model=str(models["gpt2"]), train=str(tmp_path / "t.jsonl"), batch_size=8, progress=False)
    train_sft(config.from_dict(SFTConfig, dict(base, out_dir=str(tmp_path / "cpu"))))
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what accelerate launch --mixed_precision bf16 sets
    train_sft(config.from_dict(SFTConfig, dict(base, out_dir=str(tmp_path / "launched"), dtype="bf16", lora_r=4)))
    runs = {name: json.loads((tmp_path / name / "instructgpt.json").read_text()) for name in ("cpu", "launched")}
    assert runs["cpu"]["config"]["precision"] == runs["launched"]["config"]["precision"] == "auto"
    assert runs["cpu"]["resolved"] == {"device": "cpu", "autocast": "off (fp32)", "frozen_dtype": "fp32"}
    assert runs["launched"]["resolved"] == {"device": "cpu", "autocast": "bf16", "frozen_dtype": "bf16"}


def test_attn_implementation_is_applied_and_kernels_agree(models):
    ids = torch.randint(3, 150, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    for arch in ("gpt2", "llama"):
        eager = load_policy(models[arch], attn_implementation="eager")
        sdpa = load_policy(models[arch], attn_implementation="sdpa")
        assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
        with torch.no_grad():
            a = eager(input_ids=ids, attention_mask=mask).logits[mask.bool()]
            b = sdpa(input_ids=ids, attention_mask=mask).logits[mask.bool()]
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        rm = RewardModel.from_policy(models[arch], attn_implementation="eager")
        assert rm.backbone.config._attn_implementation == "eager"


def test_flash_attention_without_cuda_is_a_clear_error(models, tmp_path):
    with pytest.raises(ConfigError, match="flash_attention_2 runs on CUDA GPUs only; this run's device is cpu"):
        check_attn_implementation("flash_attention_2", "cpu")
    with pytest.raises(ConfigError, match="flash_attention_2 runs on CUDA"):
        load_policy(models["gpt2"], attn_implementation="flash_attention_2")
    with pytest.raises(ConfigError, match="attn_implementation: 'fast' is not one of"):
        config.from_dict(SFTConfig, dict(model="m", train="t", out_dir="o", attn_implementation="fast"))
    assert check_attn_implementation("auto", "cpu") is None


def test_dtype_puts_frozen_models_in_bf16_and_keeps_trained_ones_fp32(tmp_path, models, capsys):
    from instructgpt.ppo import PPOConfig, PPOTrainer, train_ppo
    from instructgpt.rm import RMConfig, train_rm
    assert resolve_dtype("auto", "cpu") == torch.float32  # CPU: fp32 is the fast path
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(ConfigError, match="dtype: 'fp8' is not one of"):
        config.from_dict(SFTConfig, dict(model="m", train="t", out_dir="o", dtype="fp8"))
    write_jsonl(tmp_path / "rm.jsonl", yes_rankings(8, 1))
    write_jsonl(tmp_path / "p.jsonl", [{"id": str(i), "text": f"say {i}\n", "user_id": "u"} for i in range(4)])
    train_rm(config.from_dict(RMConfig, dict(model=str(models["llama"]), train=str(tmp_path / "rm.jsonl"),
                                             out_dir=str(tmp_path / "rm"), batch_size=8, progress=False)))
    cfg = config.from_dict(PPOConfig, dict(policy=str(models["llama"]), reward_model=str(tmp_path / "rm"),
                                           prompts=str(tmp_path / "p.jsonl"), out_dir=str(tmp_path / "ppo"),
                                           iterations=1, batch_size=4, minibatch_size=4, max_new_tokens=4,
                                           progress=False, dtype="bf16"))
    capsys.readouterr()
    trainer = PPOTrainer(cfg)
    # the policy's own weights rounded to bf16: PPO says the KL no longer starts at 0
    assert "ppo: note: the KL reference is the policy's starting weights in bfloat16 (dtype=bf16)" in \
        capsys.readouterr().out
    assert {p.dtype for p in trainer.ref.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in trainer.reward_model.backbone.parameters()} == {torch.bfloat16}
    assert trainer.reward_model.head.weight.dtype == torch.float32  # head and bias stay fp32
    assert {p.dtype for p in trainer.policy.parameters()} == {torch.float32}
    assert {p.dtype for p in trainer.value.parameters()} == {torch.float32}
    fp32 = RewardModel.from_pretrained(tmp_path / "rm")
    ids = torch.randint(3, 150, (2, 8))
    mask = torch.ones_like(ids)
    torch.testing.assert_close(trainer.reward_model(ids, mask).float(), fp32(ids, mask), atol=0.05, rtol=0.05)
    result = train_ppo(cfg)
    assert abs(result.history[0]["ppo/kl"]) < 0.5  # bf16 reference: rounding, not a different model


def test_bf16_autocast_covers_every_trained_forward(tmp_path, models, monkeypatch):
    """precision=bf16: the training forward passes of SFT, RM and PPO run under autocast (weights stay fp32;
    the scalar heads read the bf16 body in fp32)."""
    from instructgpt.ppo import PPOConfig, train_ppo
    from instructgpt.rm import RMConfig, train_rm
    seen: list[tuple[str, torch.dtype]] = []
    real_linear = torch.nn.functional.linear

    def spy(x, w, b=None):
        out = real_linear(x, w, b)
        if torch.is_grad_enabled() and w.shape[0] > 1:  # the scalar reward/value heads run in fp32 on purpose
            seen.append((stage, out.dtype))
        return out
    monkeypatch.setattr(torch.nn.functional, "linear", spy)
    write_jsonl(tmp_path / "t.jsonl", repeat_demos(8, 1))
    write_jsonl(tmp_path / "rm.jsonl", yes_rankings(4, 1))
    write_jsonl(tmp_path / "p.jsonl", [{"id": str(i), "text": f"say {i}\n", "user_id": "u"} for i in range(4)])
    m = str(models["llama"])
    stage = "sft"
    train_sft(config.from_dict(SFTConfig, dict(model=m, train=str(tmp_path / "t.jsonl"), out_dir=str(tmp_path / "s"),
                                               batch_size=8, progress=False, precision="bf16")))
    stage = "rm"
    train_rm(config.from_dict(RMConfig, dict(model=m, train=str(tmp_path / "rm.jsonl"), out_dir=str(tmp_path / "r"),
                                             batch_size=4, progress=False, precision="bf16")))
    stage = "ppo"
    train_ppo(config.from_dict(PPOConfig, dict(policy=m, reward_fn="tests.ppo_rewards:count_e",
                                               prompts=str(tmp_path / "p.jsonl"), out_dir=str(tmp_path / "p"),
                                               iterations=1, batch_size=4, minibatch_size=4, max_new_tokens=4,
                                               progress=False, precision="bf16")))
    for name in ("sft", "rm", "ppo"):
        dtypes = {d for s, d in seen if s == name}
        assert dtypes == {torch.bfloat16}, (name, dtypes)


def test_reward_and_value_heads_stay_fp32_under_bf16_autocast(models):
    """precision=bf16: the body runs in bf16, but the scalar heads read its output in fp32 (autocast would
    otherwise round every reward and value to bf16: steps of 1/64 at a score of 3)."""
    from instructgpt import distributed as dist
    from instructgpt.ppo_forward import ValueHead
    rm = RewardModel.from_policy(models["llama"]).eval()
    rm.reward_bias.fill_(3.3)
    hidden = []
    rm.backbone.register_forward_hook(lambda m, a, out: hidden.append(out.last_hidden_state))
    ids = torch.randint(3, 150, (4, 9))
    mask = torch.ones_like(ids)
    with torch.no_grad(), dist.autocast("cpu", torch.bfloat16):
        scores, values = rm(ids, mask), rm.values(ids, mask)
    for out, h in ((scores, hidden[0][:, -1]), (values, hidden[1])):
        assert out.dtype == torch.float32
        expected = h.float() @ rm.head.weight[0] + rm.head.bias[0] + 3.3  # the fp32 head on the bf16 body's output
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-6)
    head, h = ValueHead(32), torch.randn(2, 5, 32) * 4  # value_model=shared
    with torch.no_grad():
        expected = head.head(h).squeeze(-1)
        with dist.autocast("cpu", torch.bfloat16):
            torch.testing.assert_close(head(h), expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("launcher", ["fp16", "FP8"])
def test_precision_auto_under_a_launcher_asking_for_fp16_is_a_clear_error(monkeypatch, launcher):
    """accelerate launch --mixed_precision fp16 (V100/T4 configs): not silently bf16 or fp32 instead."""
    from instructgpt import distributed as dist
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launcher)
    base = dict(model="m", train="t", out_dir="o")
    with pytest.raises(ConfigError, match=f"precision: auto follows accelerate launch, which asked for mixed "
                                          f"precision '{launcher.lower()}'.*set precision=bf16 or precision=fp32"):
        config.from_dict(SFTConfig, base)
    with pytest.raises(ValueError, match="only bf16 and no are supported"):
        dist.resolve_precision("auto", torch.device("cpu"))
    assert config.from_dict(SFTConfig, dict(base, precision="fp32")).precision == "fp32"  # an explicit choice wins
    for asked, dtype in (("bf16", torch.bfloat16), ("no", None)):
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", asked)
        config.from_dict(SFTConfig, base)
        assert dist.resolve_precision("auto", torch.device("cpu")) == dtype


def overflowing_fp16_reward_model(folder, policy):
    """A reward model whose activations leave fp16's range (beyond 65504); in fp32 its RMSNorm makes it harmless."""
    from instructgpt.models import load_tokenizer
    rm = RewardModel.from_policy(policy)
    with torch.no_grad():
        rm.backbone.embed_tokens.weight.mul_(1e7)
    rm.save_pretrained(folder, load_tokenizer(policy))
    return folder


def test_a_frozen_model_overflowing_fp16_stops_ppo_naming_it_and_dtype(tmp_path, models):
    """dtype=fp16: a reward model whose activations leave fp16's range (Gemma, T5 do) scores NaN; PPO says so
    before its update, instead of 'loss is not finite; try a lower lr'."""
    from instructgpt.ppo import PPOConfig, PPOGuardError, train_ppo
    overflowing_fp16_reward_model(tmp_path / "rm", models["llama"])
    write_jsonl(tmp_path / "p.jsonl", [{"id": str(i), "text": f"say {i}\n", "user_id": "u"} for i in range(4)])
    base = dict(policy=str(models["llama"]), reward_model=str(tmp_path / "rm"), prompts=str(tmp_path / "p.jsonl"),
                iterations=1, batch_size=4, minibatch_size=4, max_new_tokens=3, progress=False)
    assert torch.isfinite(torch.tensor(train_ppo(config.from_dict(PPOConfig, dict(
        base, out_dir=str(tmp_path / "fp32")))).history[0]["ppo/score"]))
    with pytest.raises(PPOGuardError, match=r"ppo iteration 0: not finite in the rollout: reward model scores \(4\); "
                                            r"stopping before any update .* dtype=fp16 puts the frozen models"):
        train_ppo(config.from_dict(PPOConfig, dict(base, out_dir=str(tmp_path / "fp16"), dtype="fp16")))


def test_sft_selection_by_a_reward_model_scoring_nan_is_an_error_not_the_first_epoch(tmp_path, models):
    """A NaN never beats another score: SFT kept epoch 0 'by the highest mean reward-model score' (nan)."""
    write_jsonl(tmp_path / "t.jsonl", repeat_demos(8, 1))
    cfg = config.from_dict(SFTConfig, dict(model=str(models["llama"]), train=str(tmp_path / "t.jsonl"),
                                           out_dir=str(tmp_path / "sft"), epochs=2, batch_size=8, progress=False,
                                           reward_model=str(overflowing_fp16_reward_model(tmp_path / "rm", models["llama"])),
                                           dtype="fp16", select_prompts=2, max_new_tokens=3))
    with pytest.raises(FloatingPointError, match=r"sft: the reward model .*/rm scored epoch 0's samples nan "
                                                 r"\(checkpoint selection .*dtype=fp16 loads it in fp16"):
        train_sft(cfg)


def test_lora_on_a_base_overflowing_fp16_names_dtype_not_only_the_lr(tmp_path, models):
    """LoRA with dtype=fp16: a base whose activations pass 65504 gives a NaN gradient at the first step; the
    error names the fp16 base (lowering lr, all it said, cannot help)."""
    from transformers import AutoModelForCausalLM
    from instructgpt.models import load_tokenizer
    base = AutoModelForCausalLM.from_pretrained(str(models["llama"]))
    with torch.no_grad():
        base.model.embed_tokens.weight.mul_(1e7)  # harmless in fp32 (RMSNorm), beyond fp16's range
    base.save_pretrained(tmp_path / "base")
    load_tokenizer(models["llama"]).save_pretrained(tmp_path / "base")
    write_jsonl(tmp_path / "t.jsonl", repeat_demos(8, 1))
    cfg = dict(model=str(tmp_path / "base"), train=str(tmp_path / "t.jsonl"), epochs=1, batch_size=8, progress=False,
               lora_r=4)
    train_sft(config.from_dict(SFTConfig, dict(cfg, out_dir=str(tmp_path / "fp32"))))
    with pytest.raises(FloatingPointError, match=r"sft: gradient norm is nan \(the frozen base is in fp16 "
                                                 r"\(dtype=fp16\), whose range ends at 65504: use dtype=bf16 or fp32"):
        train_sft(config.from_dict(SFTConfig, dict(cfg, out_dir=str(tmp_path / "fp16"), dtype="fp16")))
