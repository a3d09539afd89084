"""Logits at chosen positions only (SFT's loss on response tokens): the same numbers as the full
logits, indexed, from an unembedding that ran on those positions alone."""

import pytest
import torch

from instructgpt.batching import Encoded, collate_lm
from instructgpt.lm import LMTask
from instructgpt.losses import next_token_targets, nll_sum
from instructgpt.models import position_ids_from_mask
from instructgpt.unembedding import logits_at

from .conftest import make_model, make_tokenizer


def _inputs(batch):
    return dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=position_ids_from_mask(batch["attention_mask"]))


def _batch(vocab: int):
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(3, vocab, (n,), generator=g).tolist()  # noqa: E731
    # prompts of 1-9 tokens, responses of 1-6: right padding leaves prompts and responses unaligned
    examples = [Encoded(ids(p), ids(r)) for p, r in [(9, 2), (1, 6), (4, 4), (6, 1)]]
    return collate_lm(examples, pad_id=1)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_the_sft_loss_matches_full_logits_and_unembeds_only_the_response_positions(arch, tok, tmp_path):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(make_model(tmp_path, arch, tokenizer=tok)), dtype=torch.float64)
    model.eval()
    batch = _batch(len(tok))
    task = LMTask([], pad_id=1)

    unembedded = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, a, out: unembedded.append(out.shape))
    loss, stats = task.loss(model, batch)
    hook.remove()
    grads = torch.autograd.grad(loss, [p for p in model.parameters()], allow_unused=True)

    full = model(**_inputs(batch)).logits                                      # (B, T, V)
    predicts, targets = next_token_targets(batch["input_ids"], batch["loss_mask"])
    reference, count = nll_sum(full[predicts], targets), len(targets)
    ref_grads = torch.autograd.grad(reference, [p for p in model.parameters()], allow_unused=True)

    n_targets = 2 + 6 + 4 + 1
    assert stats["n"] == count == n_targets
    assert unembedded == [torch.Size([1, n_targets, len(tok)])]               # not (4, 11, V)
    assert batch["input_ids"].shape == (4, 11)
    assert abs(loss.item() - reference.item()) < 1e-10
    for g, r in zip(grads, ref_grads):
        if r is not None:
            assert torch.allclose(g, r, atol=1e-10)
    assert not model.get_output_embeddings()._forward_pre_hooks                # the hook is gone


def test_logits_at_keeps_the_models_own_processing_of_the_logits(tok):
    """Gemma2 soft-caps its logits after the unembedding: the hook feeds the unembedding, the cap still applies."""
    from transformers import Gemma2Config, Gemma2ForCausalLM
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(Gemma2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                           max_position_embeddings=64, final_logit_softcapping=0.5,
                                           pad_token_id=1)).double().eval()
    batch = _batch(len(tok))
    predicts, _ = next_token_targets(batch["input_ids"], batch["loss_mask"])
    picked = logits_at(model, predicts, **_inputs(batch))
    full = model(**_inputs(batch)).logits
    assert picked.shape == (13, len(tok))
    assert torch.allclose(picked, full[predicts], atol=1e-12)
    assert picked.abs().max() <= 0.5                                            # capped


def test_logits_at_through_a_lora_wrapped_model(tok, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(str(make_model(tmp_path, "llama", tokenizer=tok)), dtype=torch.float64)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)).eval()
    batch = _batch(len(tok))
    predicts, _ = next_token_targets(batch["input_ids"], batch["loss_mask"])
    assert torch.allclose(logits_at(model, predicts, **_inputs(batch)), model(**_inputs(batch)).logits[predicts],
                          atol=1e-12)


class _NoHead(torch.nn.Module):
    """A model whose output embedding is not reachable: logits come from its forward as a whole."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Embedding(20, 7)

    def get_output_embeddings(self):
        return None

    def forward(self, input_ids, **_):
        return type("Out", (), {"logits": self.proj(input_ids)})()


def test_logits_at_without_an_output_embedding_indexes_the_full_logits():
    model = _NoHead()
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    positions = torch.tensor([[False, True, True], [True, False, False]])
    assert torch.equal(logits_at(model, positions, input_ids=ids), model.proj(torch.tensor([2, 3, 4])))


def test_positions_that_do_not_match_the_batch_are_an_error_and_leave_no_hook(tok, tmp_path):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(make_model(tmp_path, "gpt2", tokenizer=tok)))
    batch = _batch(len(tok))
    with pytest.raises(RuntimeError, match=r"hidden states \(4, 11, 32\), positions are \(4, 9\)"):
        logits_at(model, torch.ones(4, 9, dtype=torch.bool), **_inputs(batch))
    assert not model.get_output_embeddings()._forward_pre_hooks
