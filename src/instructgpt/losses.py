"""Losses and the small pieces of PPO arithmetic, as pure functions.

Whitening and explained variance reduce their moments over data-parallel
processes (``distributed.all_reduce_sum``; a no-op on one process).

Shapes: B = sequences, T = tokens, V = vocabulary, N = responses in a batch of
rankings, P = comparison pairs. Masks are 1 on tokens that count.
Names follow the paper and lm-human-preferences: ``kl_coef`` (beta),
``ptx_coef`` (the paper's gamma on the pretraining term), ``cliprange``,
``cliprange_value``, ``gamma`` and ``lam`` (GAE).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import distributed as dist


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits are promoted to fp32 for log-softmax; fp32/fp64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def _global_moments(*xs: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """[sum x, sum x^2] of each masked ``x``, then the token count, summed over every process (fp64)."""
    stats = [m for x in xs for m in ((x * mask).sum(), (x * x * mask).sum())]
    return dist.all_reduce_sum(torch.stack([*stats, mask.sum()]).double()).tolist()


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise the masked entries to unit (unbiased) variance, and zero mean when ``shift_mean``;
    masked-out entries become 0. Mean and variance are over the masked entries of every process, so
    data-parallel ranks whiten their shards as one batch (one process: just these entries)."""
    s, ss, n = _global_moments(x, mask=mask)
    mean = s / max(n, 1.0)
    var = (ss - n * mean * mean) / max(n - 1.0, 1.0)
    out = (x - mean) / math.sqrt(max(var, 0.0) + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


# ----------------------------------------------------------------------------- language modelling

def _tempered_log_softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, T, V) -> (B, T, V) log-softmax of logits / temperature, in fp32 for half-precision logits."""
    if temperature != 1.0:
        logits = logits / temperature
    return torch.log_softmax(_upcast(logits), dim=-1)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(B, T, V) logits, (B, T) targets -> (B, T) log p(target). Logits are divided by the temperature."""
    logp = _tempered_log_softmax(logits, temperature)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def token_logprobs_and_entropy(logits: torch.Tensor, targets: torch.Tensor,
                               temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``token_logprobs`` and, from the same log-softmax, the (B, T) entropy of softmax(logits /
    temperature) (the sampling distribution), without gradient: a statistic, not a loss term."""
    logp = _tempered_log_softmax(logits, temperature)                 # (B, T, V)
    with torch.no_grad():
        entropy = -(logp.exp() * logp).sum(-1)                       # (B, T)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1), entropy


def next_token_targets(input_ids: torch.Tensor, loss_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the logits of a next-token loss are read, and what they predict.

    ``loss_mask`` (B, T) marks the target tokens that count (response tokens in
    SFT, all real tokens in pretraining). Returns ``predicts`` (B, T) bool, True
    at each position whose logits predict a counted token (position t predicts
    input_ids[t+1]), and those ``targets`` (N,) in row-major order.
    """
    counted = loss_mask[:, 1:].bool()                          # (B, T-1)
    predicts = torch.zeros_like(loss_mask, dtype=torch.bool)   # (B, T)
    predicts[:, :-1] = counted
    return predicts, input_ids[:, 1:][counted]                 # (B, T), (N,)


def nll_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed NLL of ``targets`` (N,) under ``logits`` (N, V), computed in at least fp32."""
    return F.cross_entropy(_upcast(logits), targets, reduction="sum")


# ----------------------------------------------------------------------------- reward model

def ranking_loss(rewards: torch.Tensor, winners: torch.Tensor, losers: torch.Tensor,
                 pair_group: torch.Tensor, n_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's RM loss, summed over rankings (divide by the number of rankings for the mean).

    rewards (N,) for every response of every ranking in the batch, each
    response forwarded once; winners, losers, pair_group (P,) index the
    responses of each comparison pair and the ranking it belongs to. Each
    ranking contributes the mean over its pairs of -log sigmoid(r_w - r_l)
    (1/C(K,2) with no ties). Returns (sum over rankings, per-pair losses).
    """
    pair_loss = -F.logsigmoid(rewards[winners] - rewards[losers])                 # (P,)
    per_group = torch.zeros(n_groups, dtype=rewards.dtype, device=rewards.device)
    per_group = per_group.index_add(0, pair_group, pair_loss)
    counts = torch.zeros(n_groups, dtype=rewards.dtype, device=rewards.device)
    counts = counts.index_add(0, pair_group, torch.ones_like(pair_loss))
    return (per_group / counts.clamp(min=1)).sum(), pair_loss


def pairwise_accuracy(rewards: torch.Tensor, winners: torch.Tensor, losers: torch.Tensor) -> torch.Tensor:
    """Share of pairs the reward orders right (equal rewards count half)."""
    diff = rewards[winners] - rewards[losers]
    return ((diff > 0).float() + 0.5 * (diff == 0).float()).mean()


# ----------------------------------------------------------------------------- PPO

def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from samples of pi.

    k1 = log r (unbiased, can be negative), k2 = (log r)^2 / 2,
    k3 = (r^-1 - 1) + log r (unbiased, never negative); r = pi / ref.
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio ** 2
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"kl estimator: unknown {estimator!r} (use k1, k2 or k3)")


def shape_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards: -kl_coef * KL on every response token, the RM score added on the last real one.

    scores (B,), kl (B, T), mask (B, T) response tokens (right-padded) -> (B, T),
    zero on padding.
    """
    rewards = -kl_coef * kl * mask
    last = (mask.long().cumsum(-1) == mask.long().sum(-1, keepdim=True)) & mask.bool()  # (B, T) one-hot of last token
    has_tokens = mask.sum(-1) > 0
    rewards = rewards + last.to(rewards.dtype) * (scores * has_tokens).unsqueeze(-1)
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
        gamma: float = 1.0, lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded responses.

    rewards, values, mask: (B, T). The episode ends after the last real token
    (its next value is 0). Returns (advantages, returns), both (B, T) and zero
    on padding.
    """
    values = values * mask
    rewards = rewards * mask
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def leave_one_out(returns: torch.Tensor, k: int) -> torch.Tensor:
    """RLOO's advantages (Kool et al. 2019; Ahmadian et al. 2024): each return minus the mean of the
    other k - 1 returns of its group. returns (N,), groups of k consecutive entries -> (N,); each
    group's advantages sum to 0."""
    groups = returns.view(-1, k)                                    # (N / k, k)
    baseline = (groups.sum(-1, keepdim=True) - groups) / (k - 1)
    return (groups - baseline).view(-1)


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, cliprange: float = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate, token mean. Returns (loss, stats: clipfrac, approx_kl, ratio_max)."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": masked_mean(0.5 * log_ratio ** 2, mask),
            "ratio_max": (ratio * mask).max(),
        }
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, cliprange_value: float = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss 0.5 * max((v - R)^2, (v_clipped - R)^2), token mean."""
    v_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean((loss_clipped > loss_unclipped).float(), mask)}
    return loss, stats


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var[R - v] / Var[R] over the masked tokens of every process (1 = perfect value function)."""
    s_r, ss_r, s_d, ss_d, n = _global_moments(returns, returns - values, mask=mask)
    var_r = ss_r - s_r * s_r / max(n, 1.0)      # both variances share the 1/(n-1) factor
    var_d = ss_d - s_d * s_d / max(n, 1.0)
    return 1.0 - var_d / max(var_r, 1e-8 * max(n - 1.0, 1.0))


class FixedKLController:
    """A constant ``kl_coef`` (the paper's beta = 0.02)."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


class AdaptiveKLController(FixedKLController):
    """Ziegler et al.'s proportional controller: moves ``kl_coef`` so the KL tracks ``target``.

    error = clip(KL / target - 1, -0.2, 0.2); kl_coef *= 1 + error * n_steps / horizon.
    """

    def __init__(self, kl_coef: float, target: float, horizon: int):
        super().__init__(kl_coef)
        self.target, self.horizon = target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


@torch.no_grad()
def ema_update(ema_params: list[torch.Tensor], params: list[torch.Tensor], decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * param, in place."""
    torch._foreach_mul_(ema_params, decay)
    torch._foreach_add_(ema_params, params, alpha=1.0 - decay)
