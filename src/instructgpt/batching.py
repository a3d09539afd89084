"""Tokenising records and padding them into tensors.

A training sequence is ``tokens(prompt) + tokens(response) + [EOS]``: prompt and
response are tokenised separately (the prompt with the tokenizer's own special
tokens, e.g. BOS; the response without), so the boundary is exact and the
response mask needs no guessing. Generation uses the same prompt ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data import DataError


@dataclass
class Encoded:
    """One prompt + response as token ids; ``response_ids`` ends with EOS unless truncated."""
    prompt_ids: list[int]
    response_ids: list[int]
    source: str = ""
    truncated: bool = False

    @property
    def ids(self) -> list[int]:
        return self.prompt_ids + self.response_ids


def encode_prompt(tokenizer, text: str, max_prompt_tokens: int, source: str = "") -> list[int]:
    """Prompt ids; an empty or over-long prompt is an error naming its record."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if not ids or not text.strip():
        raise DataError(f"{source or '<prompt>'}: prompt: empty after tokenisation")
    if len(ids) > max_prompt_tokens:
        raise DataError(f"{source or '<prompt>'}: prompt: {len(ids)} tokens, over the limit of "
                        f"{max_prompt_tokens} (raise max_prompt_tokens or shorten the prompt)")
    return ids


def encode_response(tokenizer, text: str, source: str = "") -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise DataError(f"{source or '<response>'}: response: empty after tokenisation")
    return ids + [tokenizer.eos_token_id]


def encode_pair(tokenizer, prompt: str, response: str, max_prompt_tokens: int, max_seq_len: int,
                source: str = "") -> Encoded:
    """Prompt + response + EOS; a response that does not fit ``max_seq_len`` is cut (and marked)."""
    p = encode_prompt(tokenizer, prompt, max_prompt_tokens, source)
    r = encode_response(tokenizer, response, source)
    room = max_seq_len - len(p)
    if room < 1:
        raise DataError(f"{source}: prompt: {len(p)} tokens leave no room for a response in max_seq_len={max_seq_len}")
    truncated = len(r) > room
    return Encoded(p, r[:room], source, truncated)


def pad(seqs: list[list[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Lists of ids -> (B, T) ids and (B, T) attention mask, padded on ``side``."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        if side == "right":
            ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, :len(s)] = 1
        else:
            ids[i, T - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, T - len(s):] = 1
    return ids, mask


def collate_lm(examples: list[Encoded], pad_id: int, response_only: bool = True) -> dict[str, torch.Tensor]:
    """Right-padded batch with ``loss_mask`` (B, T): 1 on response tokens (or all real tokens)."""
    ids, mask = pad([e.ids for e in examples], pad_id, "right")
    loss_mask = torch.zeros_like(mask)
    for i, e in enumerate(examples):
        start = len(e.prompt_ids) if response_only else 0
        loss_mask[i, start:len(e.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "loss_mask": loss_mask}


def collate_rankings(rankings: list[list[Encoded]], pairs: list[list[tuple[int, int]]],
                     pad_id: int) -> dict[str, torch.Tensor]:
    """A batch of rankings: every response once, plus the index tensors of all their pairs.

    rankings[g] holds the K_g encoded responses of ranking g; pairs[g] its
    (winner, loser) pairs as indices into that ranking. Returns input_ids and
    attention_mask (N, T) with N = sum K_g, and winners, losers, pair_group (P,).
    """
    flat, winners, losers, group = [], [], [], []
    for g, (encoded, ps) in enumerate(zip(rankings, pairs)):
        offset = len(flat)
        flat.extend(e.ids for e in encoded)
        for w, l in ps:
            winners.append(offset + w)
            losers.append(offset + l)
            group.append(g)
    ids, mask = pad(flat, pad_id, "right")
    as_long = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
    return {"input_ids": ids, "attention_mask": mask, "winners": as_long(winners),
            "losers": as_long(losers), "pair_group": as_long(group)}
