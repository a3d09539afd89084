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
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(toy_corpus() + [": \n", "user assistant system Which response is better? A B"],
                            trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                  pad_token="<|pad|>", model_max_length=128)
    tok.chat_template = template
    return tok


def chatml_model(folder: Path, arch: str = "gpt2", seed: int = 0, template: str | None = CHATML,
                 positions: int = 128) -> Path:
    """A tiny random causal LM of ``arch`` whose saved tokenizer carries ``template`` (a GPT-2 with
    ``positions`` positions: judge prompts need more than 128)."""
    tokenizer = chatml_tokenizer(template)
    if arch != "gpt2" or positions == 128:
        return make_model(folder, arch, seed=seed, tokenizer=tokenizer)
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=positions, n_embd=32, n_layer=2, n_head=2,
                               eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                               pad_token_id=tokenizer.pad_token_id)).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


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


def token_of(tok, word: str) -> int:
    """The id of ``word`` as one token (the test's vocabulary must hold it whole)."""
    ids = tok(word, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, (word, ids)
    return ids[0]


def last_token_reward_model(policy: Path, folder: Path, tok, liked: int, disliked: int) -> Path:
    """A GPT-2 reward model whose score is +4 when the sequence ends with token ``liked``, -4 with
    ``disliked`` (the blocks add nothing, positions are zeroed, the head reads one dimension)."""
    from instructgpt.reward_model import RewardModel
    rm = RewardModel.from_policy(policy)
    body = rm.backbone
    with torch.no_grad():
        for block in body.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight.zero_()
                proj.bias.zero_()
        body.wpe.weight.zero_()
        width = body.wte.weight.shape[1]
        for token, sign in ((liked, 1.0), (disliked, -1.0)):
            body.wte.weight[token].zero_()
            body.wte.weight[token, 0], body.wte.weight[token, 1] = sign, -sign   # LayerNorm -> +-sqrt(width/2)
        rm.head.weight.zero_()
        rm.head.weight[0, 0] = 4.0 / (width / 2) ** 0.5
        rm.head.bias.zero_()
    rm.save_pretrained(folder, tok)
    return folder
