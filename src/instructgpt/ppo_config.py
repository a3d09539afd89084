"""The options of PPO and PPO-ptx (``instructgpt ppo``): one config, in groups.

``rollout`` (sampling each iteration's responses), ``ppo`` (the update: KL-shaped rewards, GAE or
RLOO, the clipped losses, optimizers and the EMA) and ``ptx`` (the pretraining loss of PPO-ptx),
with the shared ``model``, ``lora`` and ``runtime`` groups. :class:`PPOConfig` is all of them in one
flat dataclass; ``validate`` turns every contradiction between them into an error naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import backends
from .chat import CHAT_TEMPLATE_HELP
from .config import ConfigError, changed_from_default, opt
from .lora import LoraOptions
from .models import ModelOptions
from .runtime import RuntimeOptions


@dataclass
class RolloutOptions:
    """Sampling the responses of each iteration (the ``rollout`` group)."""
    group = "rollout"
    batch_size: int = opt(32, "Episodes (prompts) per iteration (paper: 512).")
    max_prompt_tokens: int = opt(128, "Longer prompts are an error naming the record.")
    chat_template: str = opt("auto", CHAT_TEMPLATE_HELP)
    max_new_tokens: int = opt(32, "Response length limit.")
    samples_per_prompt: int = opt(1, "Responses sampled for each prompt of an iteration (k); batch_size counts "
                                     "responses, so an iteration sees batch_size / k prompts (advantage_estimator=rloo "
                                     "needs k >= 2).")
    min_new_tokens: int = opt(0, "No stop token (EOS, end of turn) can be sampled before this many tokens (0 = off).")
    temperature: float = opt(1.0, "Sampling temperature (paper: 1; 0 = greedy); log-probs use the same "
                                  "temperature (1 when greedy).")
    top_k: int = opt(0, "Must stay 0 (off): PPO's ratios and KL are those of the distribution it samples from, "
                        "and top-k would sample from another one than the log-probs read. Use temperature.")
    top_p: float = opt(1.0, "Must stay 1 (off), for the reason given under top_k.")
    generation_backend: str = opt("auto", "Rollout sampler: auto (vLLM when installed and on CUDA, else builtin), "
                                          "builtin (KV-cache generator), vllm, or module:factory.")
    vllm_gpu_memory_utilization: float = opt(0.3, "vLLM: share of each GPU for its policy copy and KV cache.")


@dataclass
class PPOOptions:
    """The PPO update: KL-shaped rewards, GAE, clipped losses, optimizers and the EMA (the ``ppo`` group)."""
    group = "ppo"
    minibatch_size: int = opt(32, "Episodes per optimizer step (paper: 64).")
    micro_batch_size: int = opt(0, "Episodes per forward pass within a minibatch (0 = the whole minibatch).")
    ppo_epochs: int = opt(4, "Passes over each batch of rollouts.")
    lr: float = opt(1e-5, "Policy learning rate (paper: 5e-6 for 1.3B).")
    value_lr: float = opt(0.0, "Value-model learning rate (0 = same as lr).")
    advantage_estimator: str = opt("gae", "gae: per-token advantages from a learned value function (the paper); rloo: "
                                          "a response's return (score - kl_coef x its summed KL) minus the mean "
                                          "return of its prompt's other samples_per_prompt - 1 responses, on each of "
                                          "its tokens, with no value model (RLOO, Ahmadian et al. 2024; setting "
                                          "value_model, value_lr, vf_coef, cliprange_value, gamma, lam or "
                                          "whiten_rewards with it is an error). Both are whitened over the batch.")
    value_model: str = opt("separate", "separate: a value network initialised from the reward model (the paper); "
                                       "shared: a scalar head on the policy's own trunk, one network doing both "
                                       "(about 40% less compute per episode; the value loss then also shapes the "
                                       "policy's features, and the head starts untrained).")
    warmup_iterations: int = opt(10, "Learning rate rises linearly from 1/10 of its peak over this many iterations (paper: 10); "
                                     "the policy's warm-up starts after value_warmup_iterations.")
    value_warmup_iterations: int = opt(0, "The first this many iterations train the value function only: the policy, its "
                                          "EMA and the pretraining loss wait until the values fit the returns (they "
                                          "count towards iterations; 0 = off, as in the paper).")
    grad_clip: float = opt(1.0, "Clip each model's gradient norm to this (0 = off).")
    kl_coef: float = opt(0.02, "beta: weight of the per-token KL penalty to the SFT policy (paper: 0.02).")
    kl_estimator: str = opt("k1", "Per-token KL estimator in the reward: k1 (log ratio), k2 or k3.")
    adaptive_kl: bool = opt(False, "Adapt kl_coef to keep the KL near target_kl (Ziegler et al.).")
    target_kl: float = opt(6.0, "Target KL (nats per response) for the adaptive controller.")
    kl_horizon: int = opt(10000, "Horizon (episodes) of the adaptive controller.")
    cliprange: float = opt(0.2, "PPO ratio clip (paper: 0.2).")
    cliprange_value: float = opt(0.2, "Value clip around the rollout values.")
    vf_coef: float = opt(0.1, "Weight of the value loss.")
    gamma: float = opt(1.0, "GAE discount (not the paper's pretraining gamma: that is ptx_coef).")
    lam: float = opt(0.95, "GAE lambda.")
    whiten_rewards: bool = opt(False, "Scale per-token rewards to unit variance (no mean shift) before GAE.")
    no_eos_penalty: float = opt(0.0, "Added to the score of responses that hit max_new_tokens without EOS (e.g. -1; 0 = off).")
    ratio_guard: float = opt(100.0, "Stop with an error when a probability ratio exceeds this (a diverged update).")
    ema_decay: float = opt(0.992, "Decay of the EMA of policy weights (paper: 0.992).")
    ema: bool = opt(True, "Keep the EMA and save it as the final policy (the raw weights go to policy_raw/).")
    ema_warmup: bool = opt(True, "Use min(ema_decay, (1+n)/(10+n)) after n updates, so short runs are not dominated by the start.")


# what only the value function and GAE read: set under rloo, they are a config error
GAE_ONLY = ("value_model", "value_lr", "vf_coef", "cliprange_value", "gamma", "lam", "whiten_rewards")
# what only the adaptive KL controller reads (adaptive_kl=true), and only the EMA (ema=true): set without it, an error
ADAPTIVE_KL_ONLY = ("target_kl", "kl_horizon")
EMA_ONLY = ("ema_decay", "ema_warmup")


@dataclass
class PtxOptions:
    """PPO-ptx: the pretraining loss mixed into each step (the ``ptx`` group)."""
    group = "ptx"
    ptx_coef: float = opt(0.0, "PPO-ptx: weight of the pretraining loss (the paper's gamma = 27.8; 0 = plain PPO).")
    ptx_token_ratio: float = opt(8.0, "Pretraining tokens per RL response token in each step (paper: 8).")
    ptx_seq_len: int = opt(128, "Block length of the pretraining stream.")
    pretrain_data: str = opt("", "Pretraining corpus for PPO-ptx (.txt or .jsonl with 'text').")


@dataclass
class PPOConfig(LoraOptions, ModelOptions, RuntimeOptions, PtxOptions, PPOOptions, RolloutOptions):
    """PPO and PPO-ptx (``instructgpt ppo``). Names follow the paper and lm-human-preferences.

    With ``lora_r`` > 0 the policy and the value model train adapters (the value model also its
    head) and the KL reference is the policy with its adapters disabled: one copy of the base
    weights. That holds when the reference is the policy's starting point: ``reference`` empty
    or equal to ``policy``, or ``policy`` a LoRA PPO folder whose base is ``reference`` (its
    adapter is trained further). Any other ``reference`` is loaded as a separate frozen model.

    Options come in groups (``rollout``, ``ppo``, ``ptx``, ``runtime``, ``model``) and can be written
    with their group (``ppo.cliprange=0.2``) or without (``cliprange=0.2``).
    """
    resume_may_change = ("iterations", "log_samples")  # --resume may continue a run for more iterations

    policy: str = opt("", "Policy to start from (the SFT folder, or a previous PPO policy to continue).")
    reference: str = opt("", "Frozen reference policy of the KL penalty (default: policy, i.e. the SFT model).")
    reward_model: str = opt("", "Reward-model folder (scores responses; initialises the value function).")
    reward_fn: str = opt("", "Instead of a reward model: 'module:function' taking (prompts, responses) text lists "
                             "and returning scores (programmatic rewards, tests).")
    prompts: str = opt("", "Prompts JSONL (the PPO prompt set; 'split' = train rows are used if splits are present).")
    out_dir: str = opt("", "Output folder: policy (EMA weights), value_model/, metrics.jsonl, samples.jsonl.")
    iterations: int = opt(20, "PPO iterations (each = batch_size episodes).")
    log_samples: int = opt(3, "Episodes written to samples.jsonl per iteration (the first of the global batch, from every rank).")
    save_every: int = opt(5, "Checkpoint every this many iterations (0 = only at the end).")

    def validate(self) -> None:
        self.validate_model_options()
        self.validate_lora()
        self.validate_runtime()
        if self.lora_r and self.generation_backend == "vllm":
            raise ConfigError("generation_backend: vllm does not sample from a LoRA policy here (its weights are "
                              "synced by name from a plain model); use builtin or auto with lora_r > 0")
        if not self.policy or not self.prompts or not self.out_dir:
            raise ConfigError("policy, prompts, out_dir: required")
        if not self.reward_model and not self.reward_fn:
            raise ConfigError("reward_model: required (or reward_fn)")
        self.validate_ranges()
        if not 0 <= self.value_warmup_iterations < self.iterations:
            raise ConfigError(f"value_warmup_iterations: must be in [0, iterations={self.iterations}), "
                              f"got {self.value_warmup_iterations} (no iteration would train the policy)")
        if self.samples_per_prompt < 1 or self.batch_size % self.samples_per_prompt:
            raise ConfigError(f"samples_per_prompt: must be >= 1 and divide batch_size={self.batch_size}, "
                              f"got {self.samples_per_prompt}")
        if self.advantage_estimator not in ("gae", "rloo"):
            raise ConfigError(f"advantage_estimator: {self.advantage_estimator!r} is not gae or rloo")
        if self.advantage_estimator == "rloo" and self.samples_per_prompt < 2:
            raise ConfigError("advantage_estimator: rloo needs samples_per_prompt >= 2 (the baseline of a response "
                              f"is its prompt's other responses), got samples_per_prompt={self.samples_per_prompt}")
        if self.advantage_estimator == "rloo" and self.value_warmup_iterations:
            raise ConfigError("value_warmup_iterations: rloo has no value function to warm up; set it to 0")
        if self.advantage_estimator == "rloo":
            unused = changed_from_default(self, GAE_ONLY)
            if unused:
                raise ConfigError(f"{', '.join(k.split('=')[0] for k in unused)}: rloo has no value function "
                                  f"and no GAE, so {', '.join(unused)} would do nothing; leave "
                                  f"{'it' if len(unused) == 1 else 'them'} at the default or use "
                                  f"advantage_estimator=gae")
        for switch, names in (("adaptive_kl", ADAPTIVE_KL_ONLY), ("ema", EMA_ONLY)):
            self.check_read_only_with(switch, names)
        if self.ptx_coef > 0 and not self.pretrain_data:
            raise ConfigError("pretrain_data: required when ptx_coef > 0 (PPO-ptx)")
        if self.ptx_coef == 0:
            unused = [f"{k}={v!r}" for k, v, off in (("pretrain_data", self.pretrain_data, ""),
                                                     ("ptx_token_ratio", self.ptx_token_ratio,
                                                      PtxOptions.ptx_token_ratio),
                                                     ("ptx_seq_len", self.ptx_seq_len, PtxOptions.ptx_seq_len))
                      if v != off]
            if unused:
                raise ConfigError(f"{', '.join(k.split('=')[0] for k in unused)}: only read by PPO-ptx, so "
                                  f"{', '.join(unused)} would do nothing with ptx_coef=0 (plain PPO); set ptx_coef "
                                  f"> 0 (the paper: 27.8) or leave {'it' if len(unused) == 1 else 'them'} out")
        if self.kl_estimator not in ("k1", "k2", "k3"):
            raise ConfigError(f"kl_estimator: {self.kl_estimator!r} is not k1, k2 or k3")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay: must be in [0, 1), got {self.ema_decay}")
        if self.temperature < 0:
            raise ConfigError(f"temperature: must be >= 0 (0 = greedy), got {self.temperature}")
        if self.value_model not in ("separate", "shared"):
            raise ConfigError(f"value_model: {self.value_model!r} is not separate or shared")
        if self.generation_backend not in backends.BACKENDS and ":" not in self.generation_backend:
            raise ConfigError(f"generation_backend: {self.generation_backend!r} is not one of "
                              f"{', '.join(backends.BACKENDS)} or module:factory")
        if self.reward_fn and ":" not in self.reward_fn:
            raise ConfigError(f"reward_fn: {self.reward_fn!r} is not of the form module:function")

    def check_read_only_with(self, switch: str, names: tuple[str, ...]) -> None:
        """Options ``names`` are read only when the boolean ``switch`` is on: changed from their default while
        it is off, they would do nothing; an error naming them."""
        if getattr(self, switch):
            return
        unused = changed_from_default(self, names)
        if unused:
            raise ConfigError(f"{', '.join(k.split('=')[0] for k in unused)}: only read with {switch}=true, so "
                              f"{', '.join(unused)} would do nothing with {switch}=false; set {switch}=true or "
                              f"leave {'it' if len(unused) == 1 else 'them'} at the default")

    def validate_ranges(self) -> None:
        """Each numeric option inside the range where it means something; the error names it and its value."""
        at_least_one = ("iterations", "batch_size", "minibatch_size", "ppo_epochs", "max_new_tokens",
                        "max_prompt_tokens", "kl_horizon", "ptx_seq_len")
        at_least_zero = ("micro_batch_size", "min_new_tokens", "value_lr", "warmup_iterations",
                         "grad_clip", "kl_coef", "vf_coef", "ptx_coef", "log_samples", "save_every")
        positive = ("lr", "cliprange", "cliprange_value", "target_kl", "ptx_token_ratio")
        for names, ok, rule in ((at_least_one, lambda v: v >= 1, ">= 1"), (at_least_zero, lambda v: v >= 0, ">= 0"),
                                (positive, lambda v: v > 0, "> 0")):
            for name in names:
                if not ok(getattr(self, name)):
                    raise ConfigError(f"{name}: must be {rule}, got {getattr(self, name)}")
        for name in ("gamma", "lam"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name}: must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p: must be in (0, 1] (1 = off), got {self.top_p}")
        if not 0.0 < self.vllm_gpu_memory_utilization <= 1.0:
            raise ConfigError(f"vllm_gpu_memory_utilization: must be in (0, 1] (a share of each GPU), got "
                              f"{self.vllm_gpu_memory_utilization}")
        truncated = [f"{k}={v}" for k, v, off in (("top_k", self.top_k, 0), ("top_p", self.top_p, 1.0)) if v != off]
        if truncated:
            raise ConfigError(f"{', '.join(truncated)}: PPO samples from the policy's whole distribution (at "
                              f"its temperature): its ratios, KL penalty and entropy read the log-probs of that "
                              f"distribution, and a truncated one would make them those of another policy than "
                              f"the one sampled from. Leave top_k=0 and top_p=1; temperature is supported")
        if self.ratio_guard <= 1.0:
            raise ConfigError(f"ratio_guard: must be > 1 (a ratio of 1 is an unchanged policy), got {self.ratio_guard}")
        if self.batch_size % self.minibatch_size:
            raise ConfigError(f"minibatch_size: must divide batch_size={self.batch_size}, got {self.minibatch_size}")
        if self.min_new_tokens > self.max_new_tokens:
            raise ConfigError(f"min_new_tokens: must be <= max_new_tokens={self.max_new_tokens}, got "
                              f"{self.min_new_tokens}")
