"""compile=: which models and steps get torch.compile, and that compiled code computes the same thing.

The fast tests check the plumbing (compilation is lazy: nothing is compiled until a call); the ones that
run inductor take minutes on a CPU and are marked slow."""

import copy

import pytest
import torch

from instructgpt import compile as compile_mod
from instructgpt import config
from instructgpt.generation import generate
from instructgpt.models import load_policy, trained_policy
from instructgpt.sft import SFTConfig


def test_auto_compiles_on_cuda_only_and_bad_modes_are_refused():
    assert compile_mod.resolve("auto", "cuda:0") and not compile_mod.resolve("auto", "cpu")
    assert compile_mod.resolve("on", "cpu") and not compile_mod.resolve("off", "cuda")
    with pytest.raises(ValueError, match="compile"):
        compile_mod.resolve("yes", "cpu")
    with pytest.raises(config.ConfigError, match="compile"):
        config.from_dict(SFTConfig, dict(model="m", train="t.jsonl", out_dir="o", compile="always")).validate()


@pytest.mark.parametrize("mode, compiled", [("on", True), ("off", False), ("auto", False)])  # auto: CPU here
def test_trained_models_get_their_blocks_compiled_when_asked(tiny_gpt2, mode, compiled):
    cfg = config.from_dict(SFTConfig, dict(model=str(tiny_gpt2), train="t.jsonl", out_dir="o", compile=mode))
    model = trained_policy(str(tiny_gpt2), "cpu", cfg)
    blocks = [m for m in model.modules() if type(m).__name__ == "GPT2Block"]
    assert len(blocks) == 2
    assert all((b._compiled_call_impl is not None) == compiled for b in blocks)
    assert compile_mod.is_compiled(model) == compiled
    # the state dict (checkpoints) does not change with compilation
    assert list(model.state_dict()) == list(load_policy(str(tiny_gpt2), "cpu").state_dict())


@pytest.mark.parametrize("mode, compiled", [("on", ["GPT2LMHeadModel"]), ("off", []), ("auto", [])])  # auto: CPU
def test_pretraining_compiles_its_model_when_asked(tmp_path, tokenizer_dir, monkeypatch, mode, compiled):
    """instructgpt pretrain compile=on trained an eager model: pretrain builds its model itself, not through
    trained_policy, and never read the option."""
    from tests.conftest import toy_corpus
    from instructgpt.pretrain import PretrainConfig, train_pretrain
    calls = []
    monkeypatch.setattr(compile_mod, "compile_blocks", lambda m: calls.append(type(m).__name__) or 0)  # no inductor
    (tmp_path / "corpus.txt").write_text("\n\n".join(toy_corpus(60)))
    train_pretrain(config.from_dict(PretrainConfig, dict(
        corpus=str(tmp_path / "corpus.txt"), tokenizer=str(tokenizer_dir), out_dir=str(tmp_path / "pre"), n_layer=1,
        n_embd=32, n_head=2, seq_len=32, max_steps=1, progress=False, device="cpu", compile=mode)))
    assert calls == compiled


@pytest.mark.slow
def test_compiled_blocks_give_the_same_loss_and_gradients(tiny_gpt2):
    eager = load_policy(str(tiny_gpt2), "cpu").train()
    compiled = copy.deepcopy(eager)
    assert compile_mod.compile_blocks(compiled) == 2
    ids = torch.randint(3, 100, (4, 12), generator=torch.Generator().manual_seed(0))
    losses = []
    for m in (eager, compiled):
        out = m(input_ids=ids, labels=ids)
        out.loss.backward()
        losses.append(out.loss.detach())
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    for a, b in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_compiled_decode_step_samples_the_same_tokens(tiny_gpt2):
    model = load_policy(str(tiny_gpt2), "cpu").eval()
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    for temperature in (0.0, 0.8):
        runs = [generate(model, prompts, 10, 0, 1, temperature=temperature,
                         generator=torch.Generator().manual_seed(4), compile=c).responses for c in (False, True)]
        assert runs[0] == runs[1]
    assert model._compiled_lean_decoder is not None  # compiled once, reused by the next call
