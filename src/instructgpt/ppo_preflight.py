"""What PPO checks of its inputs before any model loads: each mismatch that would otherwise surface
after the models loaded and a rollout ran (or never, as numbers of nonsense) is a ConfigError here.

- the reward model reads the policy's token ids in the policy's chat format;
- the KL reference reads them too (same vocabulary);
- PPO-ptx's pretraining blocks fit the policy's positions.
"""

from __future__ import annotations

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
