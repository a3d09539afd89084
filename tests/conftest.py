"""Shared fixtures: a tiny BPE tokenizer, tiny random models of four architectures (and a GGUF file), toy data sets.

Everything is built inside the tests; nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, os.cpu_count() or 1))

WORDS = ("yes no red blue green cat dog sun moon tree fish bird apple stone river hill "
         "repeat say count the a one two three four five six seven eight nine").split()


def toy_corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


def make_tokenizer(folder: Path, vocab_size: int = 200, chat_tokens: bool = False):
    """A byte-level BPE tokenizer; ``chat_tokens`` adds ChatML's ``<|im_start|>``/``<|im_end|>`` as special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|pad|>"] + (["<|im_start|>", "<|im_end|>"] if chat_tokens else [])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(toy_corpus() + [": \n"], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<|pad|>", model_max_length=128,
                                   additional_special_tokens=specials[2:] or None)
    fast.save_pretrained(str(folder))
    return fast


def make_model(folder: Path, arch: str = "gpt2", vocab_size: int = 200, width: int = 32, layers: int = 2,
               seed: int = 0, tokenizer=None) -> Path:
    """A tiny random causal LM of ``arch`` saved as a Hugging Face folder (with the tokenizer)."""
    from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig,
                              MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)
    torch.manual_seed(seed)
    tokenizer = tokenizer or make_tokenizer(folder, vocab_size)
    common = dict(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                  bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_positions=128, n_embd=width, n_layer=layers, n_head=2, **common))
    elif arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                                             num_attention_heads=2, num_key_value_heads=1,
                                             max_position_embeddings=128, **common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                                             num_attention_heads=2, num_key_value_heads=1,
                                             max_position_embeddings=128, **common))
    elif arch == "mistral":
        model = MistralForCausalLM(MistralConfig(hidden_size=width, intermediate_size=2 * width,
                                                 num_hidden_layers=layers, num_attention_heads=2,
                                                 num_key_value_heads=1, max_position_embeddings=128,
                                                 sliding_window=64, **common))
    else:
        raise ValueError(arch)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    make_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory, tokenizer_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    return make_model(tmp_path_factory.mktemp("gpt2"), "gpt2", tokenizer=tok)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def repeat_demos(n: int, seed: int) -> list[dict]:
    """'repeat: w1 w2 w3' -> 'w1 w2 w3': learnable by a tiny model."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = " ".join(rng.choice(WORDS[:16]) for _ in range(rng.randint(2, 4)))
        rows.append({"prompt": f"repeat: {words}\n", "response": words, "labeler_id": f"l{i % 3}"})
    return rows


def yes_rankings(n: int, seed: int, k: int = 4) -> list[dict]:
    """K responses of yes/no words, ranked by how many 'yes' they hold (ties when equal)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        responses, counts = [], []
        while len(set(counts)) < 2:
            responses, counts = [], []
            for _ in range(k):
                words = [rng.choice(["yes", "no", "red", "blue"]) for _ in range(6)]
                responses.append(" ".join(words))
                counts.append(words.count("yes"))
        levels = sorted(set(counts), reverse=True)
        ranking = [[j for j in range(k) if counts[j] == c] for c in levels]
        rows.append({"prompt": f"say {rng.choice(WORDS)}\n", "responses": responses, "ranking": ranking})
    return rows


CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def write_llama_gguf(path: Path, model_folder: Path, chat_template: str | None = CHATML, quantize: bool = True) -> Path:
    """Write the tiny Llama in ``model_folder`` (and its byte-level BPE tokenizer) as a GGUF file.

    Laid out as llama.cpp's converter does: llama.cpp tensor names, the query and
    key rows permuted per head (transformers undoes it on load), 2-D weights in
    Q8_0 blocks when ``quantize`` (norms stay F32), the tokenizer as ``gpt2``
    (byte-level BPE) tokens, types and merges, and the chat template.
    """
    import gguf
    from safetensors.torch import load_file
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(model_folder))
    tok = json.loads((model_folder / "tokenizer.json").read_text())
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    added = {t["id"]: t["content"] for t in tok["added_tokens"]}
    tokens = [added.get(i, t) for t, i in vocab]
    for i, t in added.items():  # added tokens past the BPE vocabulary
        if i >= len(tokens):
            tokens.append(t)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    types = [gguf.TokenType.CONTROL if i in added else gguf.TokenType.NORMAL for i in range(len(tokens))]

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama-test")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quantize else gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    if merges:
        w.add_token_merges(merges)
    else:  # a vocabulary of single bytes: transformers derives (no) merges from scores
        w.add_token_scores([0.0] * len(tokens))
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)
    w.add_pad_token_id(cfg.pad_token_id)
    w.add_add_bos_token(False)
    if chat_template:
        w.add_chat_template(chat_template)

    def permute(t: torch.Tensor, heads: int) -> torch.Tensor:  # llama.cpp's row order for rotary halves
        return t.reshape(heads, 2, t.shape[0] // heads // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
                 "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down"}
    for name, t in load_file(str(model_folder / "model.safetensors")).items():
        if name.startswith("model.layers."):
            i, rest = name[len("model.layers."):].split(".", 1)
            module, kind = rest.rsplit(".", 1)
            if module == "self_attn.q_proj":
                t = permute(t, cfg.num_attention_heads)
            elif module == "self_attn.k_proj":
                t = permute(t, cfg.num_key_value_heads)
            gname = f"blk.{i}.{per_layer[module]}.{kind}"
        else:
            gname = names[name]
        array = t.float().numpy()
        if quantize and array.ndim == 2:
            w.add_tensor(gname, gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(gname, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def cut_at(step: int, stage_module, train, cfg) -> None:
    """``train(cfg)`` stopped as a kill would stop it, when optimizer step ``step`` is done."""
    from instructgpt.training import StopTraining
    original_fit = stage_module.fit

    def crash(s):
        if s == step:
            raise StopTraining

    stage_module.fit = lambda *a, **k: original_fit(*a, **k, on_step=crash)
    try:
        with pytest.raises(StopTraining):
            train(cfg)
    finally:
        stage_module.fit = original_fit
