"""Tiny models whose tokenizer carries a ChatML template (the format of SmolLM2 and Qwen), built in the tests."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.conftest import CHATML, make_model, toy_corpus

SPECIAL = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]


def chatml_tokenizer(template: str | None = CHATML):
    """A byte-level BPE with ChatML's special tokens; EOS is <|endoftext|>, turns end with <|im_end|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(toy_corpus() + [": \n", "user assistant system Which response is better? A B"],
                            trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                  pad_token="<|pad|>", model_max_length=128)
    tok.chat_template = template
    return tok


def chatml_model(folder: Path, arch: str = "gpt2", seed: int = 0, template: str | None = CHATML) -> Path:
    """A tiny random causal LM of ``arch`` whose saved tokenizer carries ``template``."""
    return make_model(folder, arch, seed=seed, tokenizer=chatml_tokenizer(template))


def force_token(folder: Path, token_id: int, margin: float = 10.0) -> Path:
    """Make a tiny GPT-2 put (almost) all probability on ``token_id`` at every position."""
    from transformers import GPT2LMHeadModel
    model = GPT2LMHeadModel.from_pretrained(str(folder))
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        model.transformer.wte.weight[:, 0] = 0.0
        model.transformer.wte.weight[token_id, 0] = margin
    model.save_pretrained(str(folder))
    return folder
