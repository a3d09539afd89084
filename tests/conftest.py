"""Shared fixtures: a tiny BPE tokenizer, tiny random models of three architectures, toy data sets.

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


def make_tokenizer(folder: Path, vocab_size: int = 200):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(toy_corpus() + [": \n"], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<|pad|>", model_max_length=128)
    fast.save_pretrained(str(folder))
    return fast


def make_model(folder: Path, arch: str = "gpt2", vocab_size: int = 200, width: int = 32, layers: int = 2,
               seed: int = 0, tokenizer=None) -> Path:
    """A tiny random causal LM of ``arch`` saved as a Hugging Face folder (with the tokenizer)."""
    from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)
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
