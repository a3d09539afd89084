"""What PPO checks of its inputs before any model loads: each mismatch that would otherwise surface
after the models loaded and a rollout ran (or never, as numbers of nonsense) is a ConfigError here.

- the reward model reads the policy's token ids in the policy's chat format;
- the KL reference reads them too (same vocabulary);
- PPO-ptx's pretraining blocks fit the policy's positions;
- (a note, not an error) a LoRA policy continued keeps its adapter's settings, whatever lora_r says.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import lora
from .batching import ModelContext
from .chat import ChatFormat
from .config import ConfigError
from .models import load_tokenizer, same_vocab
from .ppo_config import PPOConfig
from .reward_model import check_scores_policy_tokens


def check_inputs(cfg: PPOConfig, tokenizer, fmt: ChatFormat) -> None:
    """Every check of this module, for the policy's ``tokenizer`` and chat format ``fmt``."""
    check_ptx_seq_len(cfg, tokenizer)
    if cfg.reward_model:
        check_scores_policy_tokens(cfg.reward_model, tokenizer, fmt)
    check_reference_vocab(cfg, tokenizer)


def check_reference_vocab(cfg: PPOConfig, tokenizer) -> None:
    """The KL reference reads the policy's sampled token ids: another vocabulary is a ConfigError (every
    reference log-prob would be of other words, a KL penalty of nonsense)."""
    ref = cfg.reference
    if not ref or lora.same_model(ref, cfg.policy):
        return
    ref_tokenizer = load_tokenizer(ref)
    if not same_vocab(tokenizer, ref_tokenizer):
        raise ConfigError(f"reference: {ref} reads another vocabulary ({len(ref_tokenizer)} tokens) than the "
                          f"policy {cfg.policy} ({len(tokenizer)}): its log-probs of the policy's "
                          f"token ids would be of other words; use the policy's SFT model (or leave it empty)")


def check_ptx_seq_len(cfg: PPOConfig, tokenizer) -> None:
    """PPO-ptx blocks must fit the policy's positions (before any model loads, not at the first step)."""
    if cfg.ptx_coef <= 0:
        return
    context = ModelContext.of_model(cfg.policy, tokenizer)
    if context.positions and cfg.ptx_seq_len > context.positions:
        raise ConfigError(f"ptx_seq_len: {cfg.ptx_seq_len} tokens per pretraining block, over the policy's "
                          f"{context.describe()} (set ptx_seq_len to {context.positions} or less)")


def continues_adapter(cfg: PPOConfig) -> bool:
    """Whether PPO trains the policy folder's own LoRA adapter further (a LoRA PPO policy continued, as in
    round 2 of ``instructgpt run``) rather than fresh adapters: the policy is an adapter folder and the KL
    reference is that adapter's base."""
    ref = cfg.reference or cfg.policy
    return bool(cfg.lora_r) and not lora.same_model(ref, cfg.policy) and lora.is_adapter_folder(cfg.policy) \
        and lora.same_model(lora.adapter_base(cfg.policy), ref)


def continued_adapter_note(cfg: PPOConfig) -> str | None:
    """What a continued adapter does with lora_r / lora_alpha / lora_target_modules that differ from its own
    settings (peft trains it with those, read from its folder): they shape only a separate value model's
    fresh adapters, or nothing. None when they agree or no adapter is continued."""
    if not continues_adapter(cfg):
        return None
    saved = json.loads((Path(cfg.policy) / lora.ADAPTER_CONFIG).read_text())
    pairs = [("lora_r", cfg.lora_r, saved.get("r")), ("lora_alpha", cfg.lora_alpha, saved.get("lora_alpha"))]
    if cfg.lora_target_modules:  # empty = the architecture's default, whatever the adapter holds
        pairs.append(("lora_target_modules", sorted(cfg.lora_target_modules), sorted(saved.get("target_modules") or [])))
    differ = [f"{name}={given!r} (the adapter's: {had!r})" for name, given, had in pairs if given != had]
    if not differ:
        return None
    separate = cfg.advantage_estimator == "gae" and cfg.value_model == "separate"
    reach = "the value model's fresh adapters only" if separate else "nothing (no separate value model)"
    return (f"ppo: note: {cfg.policy} is a LoRA adapter continued with its own settings (reference = its base); "
            f"{', '.join(differ)} shape {reach}. For adapters of other settings on the policy, leave reference "
            f"empty: fresh adapters start from its merged weights")
