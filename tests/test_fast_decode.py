"""The lean decode step reproduces transformers' own decode step, logits and sampled tokens."""

from __future__ import annotations

import pytest
import torch

from instructgpt.fast_decode import LeanDecoder
from instructgpt.generation import generate
from instructgpt.models import position_ids_from_mask

from .conftest import make_model


def _model(tmp_path, arch: str, **kw):
    from transformers import AutoModelForCausalLM
    folder = make_model(tmp_path / arch, arch, width=64, layers=3, **kw)
    return AutoModelForCausalLM.from_pretrained(str(folder)).eval()


def _prompts(n: int, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 12, (n,), generator=g).tolist()
    return [torch.randint(2, vocab, (t,), generator=g).tolist() for t in lengths]  # ragged: left padding


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_lean_step_logits_match_transformers(tmp_path, arch):
    from instructgpt.batching import pad
    model = _model(tmp_path, arch)
    assert LeanDecoder.create(model) is not None
    ids, mask = pad(_prompts(5, model.config.vocab_size), 1, side="left")
    pos = position_ids_from_mask(mask)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        past = out.past_key_values
        dec = LeanDecoder.create(model)
        dec.start(past, mask, max_new_tokens=6)
        next_pos = mask.sum(-1, keepdim=True)
        hf_mask = mask
        g = torch.Generator().manual_seed(3)
        for _ in range(6):
            tok = torch.randint(2, model.config.vocab_size, (ids.shape[0],), generator=g)
            hf_mask = torch.cat([hf_mask, torch.ones_like(hf_mask[:, :1])], dim=1)
            ref = model(input_ids=tok[:, None], attention_mask=hf_mask, position_ids=next_pos,
                        past_key_values=past, use_cache=True)
            past = ref.past_key_values
            lean = dec.step(tok, next_pos)                                   # (B, V)
            torch.testing.assert_close(lean, ref.logits[:, -1], atol=2e-5, rtol=1e-4)
            next_pos = next_pos + 1
        with pytest.raises(RuntimeError, match="cache is full"):
            dec.step(tok, next_pos)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_lean_generation_samples_the_same_tokens(tmp_path, arch):
    model = _model(tmp_path, arch)
    prompts = _prompts(7, model.config.vocab_size, seed=1)
    runs = {}
    for lean in (False, True):
        g = torch.Generator().manual_seed(0)
        runs[lean] = generate(model, prompts, 12, eos_id=0, pad_id=1, temperature=1.0, generator=g, lean=lean)
    assert runs[True].responses == runs[False].responses
    assert runs[True].ended == runs[False].ended
    greedy = [generate(model, prompts, 12, 0, 1, temperature=0, lean=lean).responses for lean in (False, True)]
    assert greedy[0] == greedy[1]


def test_unsupported_models_fall_back(tmp_path):
    model = _model(tmp_path, "gpt2")
    handle = model.transformer.h[0].register_forward_hook(lambda *a: None)
    assert LeanDecoder.create(model) is None  # hooks (adapters, FSDP) may change the forward pass
    handle.remove()
    model.config.activation_function = "swish"
    assert LeanDecoder.create(model) is None
    assert LeanDecoder.create(torch.nn.Linear(2, 2)) is None


def test_lean_decoder_sees_updated_weights(tmp_path):
    """It reads the live parameter tensors: an optimizer step changes what it computes."""
    model = _model(tmp_path, "gpt2")
    prompts = _prompts(4, model.config.vocab_size, seed=2)
    before = generate(model, prompts, 8, 0, 1, temperature=0).responses
    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.weight.mul_(-3.0)
    after = [generate(model, prompts, 8, 0, 1, temperature=0, lean=lean).responses for lean in (False, True)]
    assert after[0] == after[1]
    assert after[1] != before


@pytest.mark.parametrize("min_new", [0, 4])
def test_checking_for_the_end_every_few_steps_changes_no_response(tmp_path, monkeypatch, min_new):
    """On an accelerator generate reads `done` (a host sync) only every DONE_CHECK_EVERY steps; the rows
    that finished in between are fed pads and cut at their stop token: the same responses."""
    from instructgpt import generation
    model = _model(tmp_path, "gpt2")
    prompts = _prompts(9, model.config.vocab_size, seed=2)
    stops = list(range(3, 40))  # many stop tokens: rows end at scattered steps
    runs = {}
    for every in (1, 8):
        monkeypatch.setitem(generation.DONE_CHECK_EVERY, "cpu", every)
        runs[every] = [generate(model, prompts, 14, stops, 1, temperature=t, generator=torch.Generator().manual_seed(5),
                                min_new_tokens=min_new) for t in (0.0, 1.0)]
    for a, b in zip(runs[1], runs[8]):
        assert a.responses == b.responses and a.ended == b.ended
    assert any(a.ended) and not all(len(r) == 14 for r in runs[1][1].responses)
    assert all(len(r) >= min_new + 1 or not e for r, e in zip(runs[1][1].responses, runs[1][1].ended))


def test_no_host_sync_per_step_before_min_new_tokens(tmp_path, monkeypatch):
    import sys
    model = _model(tmp_path, "gpt2")
    calls = []
    original = torch.Tensor.__bool__

    def counted(t):
        if sys._getframe(1).f_code.co_filename.endswith("generation.py"):
            calls.append(1)
        return original(t)
    monkeypatch.setattr(torch.Tensor, "__bool__", counted)
    out = generate(model, _prompts(4, model.config.vocab_size), 10, 0, 1, temperature=1.0,
                   generator=torch.Generator().manual_seed(0), min_new_tokens=10)
    assert [len(r) for r in out.responses] == [10] * 4
    assert len(calls) <= 2, len(calls)  # the prompt-padding check and the last step (11 before)


def test_row_generators_make_each_answer_independent_of_its_batch(tmp_path):
    from instructgpt.generation import row_generators
    model = _model(tmp_path, "llama")
    prompts = _prompts(9, model.config.vocab_size, seed=4)
    keys = [str(p) for p in prompts]
    whole = generate(model, prompts, 10, 0, 1, generator=row_generators(keys, 7)).responses
    split = generate(model, prompts, 10, 0, 1, generator=row_generators(keys, 7), batch_size=4).responses
    alone = [generate(model, [p], 10, 0, 1, generator=row_generators([k], 7)).responses[0]
             for p, k in zip(prompts[::-1], keys[::-1])][::-1]
    assert whole == split == alone
    # one stream for the batch (what the eval used before): a prompt's answer depends on its batch
    shared = [generate(model, prompts[i:i + 4], 10, 0, 1, generator=torch.Generator().manual_seed(7)).responses
              for i in range(0, 9, 4)]
    assert [r for part in shared for r in part] != generate(
        model, prompts, 10, 0, 1, generator=torch.Generator().manual_seed(7)).responses
    assert generate(model, prompts, 10, 0, 1, generator=row_generators(keys, 8)).responses != whole  # the seed counts
    with pytest.raises(ValueError, match="2 row generators for 9 rows"):
        generate(model, prompts, 10, 0, 1, generator=row_generators(keys[:2], 7))


def test_a_sampled_nul_character_reads_as_the_replacement_character():
    # A token decoding to U+0000 made the whole label_tasks.jsonl (eval) or sample file unimportable:
    # the labeling app refuses text holding NUL (no database text column keeps it).
    from instructgpt.generation import Generation, decode_responses
    from instructgpt.labeling.tasks import check_text

    class Chars:
        def decode(self, ids, skip_special_tokens=True):
            return "".join(map(chr, ids))

    texts = decode_responses(Chars(), Generation([[0x41, 0, 0x42, 5], [0, 0x43]], [True, False]))
    assert texts == ["A\ufffdB", "\ufffdC"]
    assert [check_text(t, "response") for t in texts] == texts
