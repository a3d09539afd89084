"""The last transformer block at the read positions only (last_block.py): the model's own outputs and
gradients there, on GPT-2, Llama and Qwen2, through SFT's, PPO's and the reward model's forward passes."""

import pytest
import torch
from transformers import (GPT2Config, GPT2LMHeadModel, GPT2Model, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)

from instructgpt.last_block import columns_from, last_block, last_block_at, query_rows
from instructgpt.dropout import set_dropout
from instructgpt.models import position_ids_from_mask
from instructgpt.ppo_forward import ValueHead, response_logits, response_logits_and_values, response_values
from instructgpt.reward_model import RewardModel
from instructgpt.unembedding import logits_at

V = 50


def make(kind: str):
    """A two-layer model in eval mode (no dropout: outputs comparable exactly)."""
    return _make(kind).eval()


def _make(kind: str):
    torch.manual_seed(0)
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                          bos_token_id=0, eos_token_id=0))
    cfg = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=0)
    return LlamaForCausalLM(LlamaConfig(**cfg)) if kind == "llama" else Qwen2ForCausalLM(Qwen2Config(**cfg))


def mlp_inputs(model) -> list:
    """Shapes of what the last block's MLP reads (its norm's input), recorded from now on."""
    block, kind = last_block(model)
    norm = block.ln_2 if kind == "gpt2" else block.post_attention_layernorm
    seen = []
    norm.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    return seen


def sft_batch():
    """Right-padded rows of 10, 7 and 5 real tokens; reads where response tokens are predicted."""
    ids = torch.randint(1, V, (3, 10))
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 5:] = 0
    reads = torch.zeros(3, 10, dtype=torch.bool)
    reads[0, 4:9] = True
    reads[1, 2:6] = True
    reads[2, 3] = True
    return ids, mask, reads


def test_query_rows_are_the_reads_then_the_first_unread_positions():
    reads = torch.tensor([[False, True, False, True], [True, False, False, False], [False, False, False, False]])
    assert query_rows(reads).tolist() == [[1, 3], [0, 1], [0, 1]]
    assert query_rows(torch.tensor([[True, True], [True, False]])) is None    # a row reads everything
    assert query_rows(torch.zeros(2, 3, dtype=torch.bool)) is None            # nothing read
    assert columns_from(2, torch.ones(2, 4)).tolist() == [[2, 3], [2, 3]]
    assert columns_from(0, torch.ones(2, 4)) is None


@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen2"])
def test_sft_logits_and_gradients_are_the_models_own_with_the_last_block_at_the_reads(kind):
    model = make(kind)
    ids, mask, reads = sft_batch()
    inputs = dict(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask))

    full = model(**inputs).logits[reads]                                       # (N, V)
    (full.logsumexp(-1).sum() - full[:, 7].sum()).backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    seen = mlp_inputs(model)
    got = logits_at(model, reads, **inputs)
    (got.logsumexp(-1).sum() - got[:, 7].sum()).backward()
    assert seen == [(3, 5, 32)]                                                # 5 = the most reads of a row, not 10
    torch.testing.assert_close(got, full, atol=1e-5, rtol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[n], atol=1e-5, rtol=1e-4, msg=n)
    assert "forward" not in last_block(model)[0].__dict__                      # the block is itself again


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_ppo_logits_and_values_at_the_response_columns_are_the_models_own(kind):
    """Left-padded prompts (P = 4) then right-padded responses (R = 3)."""
    policy, P = make(kind), 4
    ids = torch.randint(1, V, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, :2] = 0                                    # a short prompt
    mask[2, :3] = 0
    mask[2, 6] = 0                                     # a response that ended early
    pos = position_ids_from_mask(mask)
    full = policy(input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True)
    head = ValueHead(32)

    seen = mlp_inputs(policy)
    torch.testing.assert_close(response_logits(policy, ids, mask, P), full.logits[:, P - 1:-1], atol=1e-5, rtol=1e-5)
    logits, values = response_logits_and_values(policy, head, ids, mask, P)
    torch.testing.assert_close(logits, full.logits[:, P - 1:-1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(values, head(full.hidden_states[-1][:, P - 1:-1]).float(), atol=1e-5, rtol=1e-5)
    assert seen == [(3, 4, 32)] * 2                    # R + 1 = 4 columns of 7

    body = policy.transformer if kind == "gpt2" else policy.model
    rm = RewardModel(body, reward_bias=0.5).eval()
    hidden = body(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
    torch.testing.assert_close(response_values(rm, ids, mask, P), rm.head(hidden).squeeze(-1)[:, P - 1:-1] + 0.5,
                               atol=1e-5, rtol=1e-5)


def test_the_reward_model_runs_its_last_block_at_each_rows_last_token():
    body = GPT2Model(GPT2Config(vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=4)).eval()
    rm = RewardModel(body, reward_bias=-1.0)
    ids, mask, _ = sft_batch()
    hidden = body(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).last_hidden_state
    want = rm.head(hidden[torch.arange(3), torch.tensor([9, 6, 4])]).squeeze(-1) - 1.0
    seen = mlp_inputs(rm.backbone)
    torch.testing.assert_close(rm(ids, mask), want, atol=1e-5, rtol=1e-5)
    assert seen == [(3, 1, 32)]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_in_training_dropout_masks_and_gradients_are_the_models_own(kind):
    """Every dropout at 0.3 (attention probabilities, residuals, MLP): the rewritten block draws the masks
    of the whole block and keeps the read rows, so a training pass from the same seed gives the model's
    own logits and gradients (a run resumed with gradient checkpointing, which runs the model's own
    block, takes the same steps)."""
    model = make(kind).train()
    set_dropout(model, 0.3)
    ids, mask, reads = sft_batch()
    inputs = dict(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask))
    torch.manual_seed(7)
    full = model(**inputs).logits[reads]
    full.square().mean().backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    seen = mlp_inputs(model)
    torch.manual_seed(7)
    got = logits_at(model, reads, **inputs)
    got.square().mean().backward()
    assert seen == [(3, 5, 32)]
    torch.testing.assert_close(got, full, atol=1e-5, rtol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[n], atol=1e-5, rtol=1e-4, msg=n)
    torch.manual_seed(8)
    assert not torch.allclose(logits_at(model, reads, **inputs), got)          # dropout is on


def test_lora_adapters_of_the_last_block_train_through_it():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(make("llama"), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                                               init_lora_weights=False))
    ids, mask, reads = sft_batch()
    full = model(input_ids=ids, attention_mask=mask).logits[reads]
    full.square().mean().backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    seen = mlp_inputs(model)
    got = logits_at(model, reads, input_ids=ids, attention_mask=mask)
    got.square().mean().backward()
    assert seen == [(3, 5, 32)]
    torch.testing.assert_close(got, full, atol=1e-5, rtol=1e-5)
    for n, g in want.items():
        torch.testing.assert_close(dict(model.named_parameters())[n].grad, g, atol=1e-5, rtol=1e-4, msg=n)


def test_the_model_runs_its_own_last_block_where_it_cannot_be_rewritten():
    ids, mask, reads = sft_batch()

    checkpointed = make("gpt2").train()
    checkpointed.gradient_checkpointing_enable()
    assert last_block(checkpointed) is None                  # the recomputation in backward would call forward again

    hooked = make("gpt2")
    block, _ = last_block(hooked)
    block.forward = block.forward                            # what accelerate's hooks do
    assert last_block(hooked) is None

    windowed = Qwen2ForCausalLM(Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True,
                                            sliding_window=4, max_window_layers=0))
    assert last_block(windowed) is None

    model = make("gpt2")
    seen = mlp_inputs(model)
    logits_at(model, torch.ones_like(reads), input_ids=ids, attention_mask=mask)   # every position read
    assert seen == [(3, 10, 32)]
    with pytest.raises(RuntimeError, match="boom"):
        with last_block_at(model, query_rows(reads), mask):
            raise RuntimeError("boom")
    assert "forward" not in last_block(model)[0].__dict__
