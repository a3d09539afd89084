"""``instructgpt sample``: K responses per prompt from a policy, as ranking tasks for labelers.

Output rows are ``{"prompt", "prompt_id", "use_case", "responses": [K strings], "split"?, "policy"}``
(``policy``: the path the responses were sampled from, so a round's labels say which policy they judged):
the ranking format without ``ranking``, which the labeling app imports and a
labeler (or the simulated panel) completes. A prompt given as chat messages is
written as its messages. Prompts are rendered by ``chat.ChatFormat`` (the
policy's chat template unless ``chat_template`` says otherwise), and a response
ends at the end-of-turn token or EOS.

Responses are made distinct where possible: duplicates (after whitespace
normalisation) and empty responses are resampled up to ``max_tries`` times; the
number still duplicated is reported. An empty response that remains is written
as ``""``: the reward model encodes it as the end token alone, the very
sequence PPO scores when the policy stops at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .batching import ModelContext, RecordEncoder
from .chat import CHAT_TEMPLATE_HELP, ChatFormat, prompt_input
from .config import ConfigError, check_seed, opt
from .data import SPLITS, DataError, Prompt, load_prompts, write_jsonl
from .generation import decode_responses, generate
from .models import load_policy, load_tokenizer, pick_device
from .runtime import check_device


@dataclass
class SampleConfig:
    """Sampling ranking tasks (``instructgpt sample``)."""
    policy: str = opt("", "Policy folder, .gguf file or 'smollm2'.")
    prompts: str = opt("", "Prompts JSONL.")
    out: str = opt("", "Output JSONL of ranking tasks.")
    k: int = opt(4, "Responses per prompt, 2..9. The paper's interface, and `instructgpt label import`, take "
                    "K = 4..9; K = 2 or 3 makes pairwise or three-way rankings for the reward model directly.")
    split: str = opt("", "Only prompts of this split (train, valid, test; empty = all).")
    limit: int = opt(0, "At most this many prompts (0 = all).")
    temperature: float = opt(1.0, "Sampling temperature.")
    top_k: int = opt(0, "Top-k sampling (0 = off).")
    top_p: float = opt(1.0, "Nucleus sampling mass (1 = off).")
    max_new_tokens: int = opt(64, "Response length limit.")
    max_prompt_tokens: int = opt(128, "Longer prompts are an error naming the record.")
    chat_template: str = opt("auto", CHAT_TEMPLATE_HELP)
    max_tries: int = opt(3, "Resampling rounds for duplicate or empty responses.")
    batch_size: int = opt(64, "Sequences per generation batch.")
    seed: int = opt(0, "Sampling seed.")
    device: str = opt("auto", "auto, cpu, cuda ...")

    def validate(self) -> None:
        if not self.policy or not self.prompts or not self.out:
            raise ConfigError("policy, prompts, out: required")
        if not 2 <= self.k <= 9:
            raise ConfigError(f"k: {self.k} is outside 2..9")
        if self.split and self.split not in SPLITS:
            raise ConfigError(f"split: {self.split!r} is not one of {', '.join(SPLITS)} or empty (all)")
        check_device(self.device)
        check_seed(self.seed)
        for name in ("limit", "top_k", "max_tries"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")
        for name in ("max_new_tokens", "max_prompt_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.temperature < 0:
            raise ConfigError(f"temperature: must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p: must be in (0, 1] (1 = off), got {self.top_p}")
        truncated = [f"{k}={v}" for k, v, off in (("top_k", self.top_k, 0), ("top_p", self.top_p, 1.0)) if v != off]
        if self.temperature == 0 and truncated:
            raise ConfigError(f"{', '.join(k.split('=')[0] for k in truncated)}: temperature=0 samples greedily (the "
                              f"likeliest token), so {', '.join(truncated)} would do nothing; set a temperature > 0 "
                              f"or leave {'it' if len(truncated) == 1 else 'them'} at the default")


def _norm(text: str) -> str:
    return " ".join(text.split())


def sample_k(policy, tokenizer, prompts: list[Prompt], cfg: SampleConfig) -> list[list[str]]:
    """K distinct (where possible) decoded responses per prompt ("" for an empty one)."""
    device = next(policy.parameters()).device
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    fmt = ChatFormat.load(tokenizer, cfg.chat_template)
    encoder = RecordEncoder(fmt, ModelContext.of(policy.config, tokenizer), cfg.max_prompt_tokens,
                            max_new_tokens=cfg.max_new_tokens)
    ids = [encoder.prompt(prompt_input(p), p.source) for p in prompts]
    out: list[list[str]] = [[] for _ in prompts]
    for attempt in range(cfg.max_tries + 1):
        need = [(i, cfg.k - len(out[i])) for i in range(len(prompts)) if len(out[i]) < cfg.k]
        if not need:
            break
        flat = [i for i, n in need for _ in range(n)]
        gen = generate(policy, [ids[i] for i in flat], cfg.max_new_tokens, fmt.stop_ids, tokenizer.pad_token_id,
                       cfg.temperature, cfg.top_k, cfg.top_p, g, cfg.batch_size)
        last = attempt == cfg.max_tries
        for i, text in zip(flat, decode_responses(tokenizer, gen)):
            seen = {_norm(t) for t in out[i]}
            if len(out[i]) < cfg.k and (last or (text and _norm(text) not in seen)):
                out[i].append(text)
    return out


def run_sample(cfg: SampleConfig) -> dict:
    prompts = load_prompts(cfg.prompts)
    if cfg.split:
        prompts = [p for p in prompts if p.split == cfg.split]
    if cfg.limit:
        prompts = prompts[:cfg.limit]
    if not prompts:
        raise DataError(f"{cfg.prompts}: no prompts to sample for")
    device = pick_device(cfg.device)
    tokenizer = load_tokenizer(cfg.policy)
    policy = load_policy(cfg.policy, device)
    responses = sample_k(policy, tokenizer, prompts, cfg)
    # the labeling app exports each split to its own files, and keeps "policy" in the task's meta
    rows = [{"prompt": p.turns or p.text, "prompt_id": p.id, "use_case": p.use_case, "responses": r,
             **({"split": p.split} if p.split else {}), "policy": cfg.policy}
            for p, r in zip(prompts, responses)]
    write_jsonl(Path(cfg.out), rows)
    duplicated = sum(len({_norm(x) for x in r}) < len(r) for r in responses)
    empty = sum(x == "" for r in responses for x in r)
    kept = [f"{duplicated} prompts kept a duplicate"] if duplicated else []
    kept += [f'{empty} responses stayed empty (written as "")'] if empty else []
    print(f"sample: {len(rows)} prompts x {cfg.k} responses -> {cfg.out}"
          + (f" ({'; '.join(kept)} after {cfg.max_tries} resampling rounds)" if kept else ""))
    return {"prompts": len(rows), "duplicated": duplicated, "empty": empty, "out": cfg.out}
