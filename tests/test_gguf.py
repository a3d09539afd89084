"""GGUF files: dequantized into plain trainable models that save, with their tokenizer and chat template.

The GGUF file is written inside the test (``conftest.write_llama_gguf``, with the
``gguf`` package pinned in pyproject): a tiny Llama whose matrices are stored in
Q8_0 blocks, as llama.cpp's converter lays them out.
"""

from __future__ import annotations

import json

import gguf
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import CHATML, make_model, make_tokenizer, repeat_demos, write_jsonl, write_llama_gguf
from instructgpt import cli, config
from instructgpt.models import ModelLoadError, load_policy, load_tokenizer, resolve_source
from instructgpt.reward_model import RewardModel
from instructgpt.sft import SFTConfig, train_sft


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf")
    # with BPE merges, like a real vocabulary, and ChatML's turn tokens as specials (the file carries CHATML)
    tok = make_tokenizer(d / "hf", vocab_size=320, chat_tokens=True)
    make_model(d / "hf", "llama", tokenizer=tok)
    return write_llama_gguf(d / "tiny-llama.Q8_0.gguf", d / "hf"), d / "hf"


def q8_round_trip(t: torch.Tensor) -> torch.Tensor:
    q = gguf.GGMLQuantizationType.Q8_0
    return torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(t.numpy(), q), q))


def test_gguf_loads_as_a_plain_fp32_model_with_its_tokenizer(tiny_gguf):
    path, hf = tiny_gguf
    model = load_policy(path)
    assert getattr(model, "hf_quantizer", None) is None and not model.is_quantized
    assert "quantization_config" not in model.config.to_dict()
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())
    # the weights are the file's blocks dequantized (query/key rows un-permuted by transformers)
    original = load_file(str(hf / "model.safetensors"))
    loaded = model.state_dict()
    for k, v in original.items():
        want = q8_round_trip(v) if v.ndim == 2 else v
        torch.testing.assert_close(loaded[k], want, atol=0, rtol=0, msg=k)
    tok, hf_tok = load_tokenizer(path), load_tokenizer(hf)
    text = "repeat: red cat blue\nsay yes"
    assert tok(text)["input_ids"] == hf_tok(text)["input_ids"]
    assert tok.chat_template == CHATML and tok.eos_token_id == hf_tok.eos_token_id


def test_sft_from_gguf_saves_and_reloads(tmp_path, tiny_gguf):
    """Failed before with 'The model is quantized with gguf and is not serializable' at the end of SFT."""
    path, _ = tiny_gguf
    write_jsonl(tmp_path / "demos.jsonl", repeat_demos(16, 0))
    train_sft(config.from_dict(SFTConfig, dict(model=str(path), train=str(tmp_path / "demos.jsonl"),
                                               out_dir=str(tmp_path / "sft"), epochs=1, batch_size=8, lr=1e-3,
                                               warmup_steps=1, progress=False)))
    cfg = json.loads((tmp_path / "sft" / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["attention_dropout"] == 0.0   # SFT's 0.2 not leaked
    trained = load_policy(tmp_path / "sft")
    before = load_policy(path).state_dict()
    changed = [k for k, v in trained.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) == len(before)                                             # every tensor trained
    assert load_tokenizer(tmp_path / "sft").chat_template == CHATML                # template saved with it
    # saved again from the reloaded folder: a plain folder, bit for bit the same weights
    trained.save_pretrained(tmp_path / "again")
    again = load_file(str(tmp_path / "again" / "model.safetensors"))
    for k, v in load_file(str(tmp_path / "sft" / "model.safetensors")).items():
        assert torch.equal(again[k], v), k


def test_reward_model_from_gguf_saves_and_reloads(tmp_path, tiny_gguf):
    path, _ = tiny_gguf
    tok = load_tokenizer(path)
    rm = RewardModel.from_policy(path).eval()
    with pytest.warns(UserWarning):                               # RMSNorm: score = reward - offset (see models)
        rm.save_pretrained(tmp_path / "rm", tok)
    back = RewardModel.from_pretrained(tmp_path / "rm").eval()
    ids = torch.tensor([[5, 6, 7, tok.eos_token_id]])
    with torch.no_grad():
        torch.testing.assert_close(back(ids, torch.ones_like(ids)), rm(ids, torch.ones_like(ids)), atol=0, rtol=0)
    assert load_tokenizer(tmp_path / "rm").chat_template == CHATML


def test_a_file_named_gguf_that_is_not_gguf_is_a_clean_error(tmp_path, capsys):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"<html>404 Not Found</html>" + bytes(64))
    with pytest.raises(ModelLoadError, match="model.gguf: not a GGUF file"):
        resolve_source(bad)
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        load_tokenizer(bad)
    write_jsonl(tmp_path / "demos.jsonl", repeat_demos(4, 0))
    rc = cli.main(["sft", f"model={bad}", f"train={tmp_path / 'demos.jsonl'}", f"out_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("instructgpt sft: error: ") and str(bad) in err and "not a GGUF file" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_truncated_gguf_is_a_clean_error(tmp_path, tiny_gguf):
    path, _ = tiny_gguf
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ModelLoadError, match="cut.gguf"):
        load_policy(cut)


def test_a_gguf_file_counts_its_parameters_for_the_report(tiny_gguf, tmp_path):
    """The evaluation's report sizes a GGUF policy from its tensors (it printed '? parameters')."""
    from instructgpt.evaluation.policies import count_params_on_disk
    path, hf = tiny_gguf
    n_hf = sum(p.numel() for p in load_policy(str(hf)).parameters())
    assert count_params_on_disk(path) == count_params_on_disk(hf) == n_hf
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(path.read_bytes()[:4096])
    with pytest.raises(ModelLoadError, match="damaged.gguf: cannot read the GGUF tensors"):
        count_params_on_disk(damaged)
