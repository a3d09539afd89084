"""Step 3: PPO against the reward model, and PPO-ptx (the paper's InstructGPT).

Each iteration is a batch of bandit episodes: sample one response per prompt
(or ``samples_per_prompt``; KV cache, whole batch at once), score it with the
reward model, and learn:

  rollout   policy, reference (frozen SFT), value and reward models each do one
            forward pass over the batch's prompt+response tokens (with
            ``value_model=shared`` the policy's pass also gives the values);
            the policy's and value model's pass over the update's first
            micro-batch is made with autograd and kept, and that step
            uses it instead of a second forward (``KeptPass``; not when
            the models are sharded);
  rewards   per token -kl_coef * KL(policy || reference), plus the RM score
            (with its normalising bias) on the last response token, plus an
            optional fixed penalty when the response hit the length limit;
  learn     GAE (gamma, lam) or RLOO's leave-one-out baseline (no value
            model), whitened advantages, ``ppo_epochs`` passes over
            shuffled minibatches with the clipped policy loss, the clipped
            value loss (``vf_coef``) and, for PPO-ptx, ``ptx_coef`` times the
            next-token loss of pretraining blocks;
  after     an EMA of the policy weights, the KL controller, metrics, samples,
            checkpoints.

The pretraining stream for PPO-ptx: ``pretrain_data`` is a corpus as read by
``instructgpt pretrain`` (.txt documents separated by blank lines, or .jsonl
with "text"), packed into blocks of ``ptx_seq_len`` tokens in a seeded endless
order. Each minibatch step takes ceil(ptx_token_ratio * response tokens of
the minibatch / ptx_seq_len) blocks (paper: 8x as many pretraining tokens as
RL tokens), and its loss is averaged over their tokens.

The options, their groups and their checks are in :mod:`.ppo_config`; what each model
computes at the response positions in :mod:`.ppo_forward`; saving, resuming and the
final folders in :mod:`.ppo_checkpoint`.

Tensor layout of a rollout: ``input_ids`` (B, P + R) = left-padded prompts
(B, P) followed by right-padded responses (B, R); ``mask`` (B, R) marks real
response tokens. Per-token quantities are (B, R): the value at response
position t is read at the token just before it (the state the action was taken
in).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import backends
from . import checkpoint as ckpt
from . import distributed as dist
from . import interrupt
from . import lora
from . import ppo_checkpoint
from . import sharding
from .batching import ModelContext, RecordEncoder, compact, pad
from .chat import ChatFormat, prompt_input
from .config import ConfigError
from .data import DataError, load_prompts
from .dropout import set_dropout
from .generation import decode_responses
from .losses import (AdaptiveKLController, FixedKLController, ema_update, explained_variance, gae, kl_estimate,
                     leave_one_out, masked_mean, policy_loss, shape_rewards, token_logprobs,
                     token_logprobs_and_entropy, value_loss, whiten)
from .lm import BlockStream, corpus_documents, next_token_nll_sum, pack_blocks
from .models import (enable_gradient_checkpointing, load_policy, load_tokenizer, pick_device,
                     resolve_dtype, trained_policy)
from .ppo_forward import (ValueHead, response_logits, response_logits_and_values, response_values,
                          shared_head_values)
from .reward_fn import checked_scores, load_reward_fn
from .reward_model import RewardModel, trained_reward_model
from .ppo_config import PPOConfig
from .ppo_preflight import check_inputs, continued_adapter_note, continues_adapter
from .progress import progress_bar
from .records import MetricsLog, logged_history, open_metrics, update_run_info, write_run_info
from .resume_check import check_resume
from .training import adamw_kernel, start_over


class PPOGuardError(RuntimeError):
    """A NaN/inf loss or an exploding ratio: the run stops, the last good checkpoint is kept."""


@dataclass
class Rollout:
    input_ids: torch.Tensor      # (B, P + R)
    attention_mask: torch.Tensor  # (B, P + R)
    P: int
    mask: torch.Tensor           # (B, R) float, real response tokens
    logprobs: torch.Tensor       # (B, R) policy at sampling time
    ref_logprobs: torch.Tensor   # (B, R)
    values: torch.Tensor         # (B, R) (zeros without a value function: rloo)
    scores: torch.Tensor         # (B,) reward-model (or reward_fn) scores, as the RM gave them
    ended: torch.Tensor          # (B,) bool
    penalties: torch.Tensor      # (B,) no-EOS penalty of each response (zeros when off); reward = score + penalty
    prompts: list[str] = field(default_factory=list)
    responses: list[str] = field(default_factory=list)
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    kept: KeptPass | None = None  # the update's first forward pass, made by the rollout (until used)


@dataclass
class KeptPass:
    """A forward pass the rollout made with autograd over this rank's episodes ``positions`` (in that
    order): the first micro-batch of the update's first minibatch (``PPOTrainer.kept_positions``). That
    step runs on the rollout's weights with dropout off, so its forward would repeat the rollout's
    arithmetic: it uses this one instead, and the old log-probs and values are this pass's, detached."""
    positions: list[int]
    logits: torch.Tensor | None  # (n, R, V) policy logits with their graph (None: the value warm-up)
    values: torch.Tensor | None  # (n, R) fp32 values with their graph (None: rloo)


@dataclass
class PPOResult:
    out_dir: str
    iterations: int
    history: list[dict] = field(default_factory=list)


# ----------------------------------------------------------------------------- the trainer

#: Minibatch statistics an iteration reports the largest of (the others: their mean over its minibatches).
_PEAK_STATS = ("ppo/ratio_max",)


class PPOTrainer:
    """Holds the four models and the optimizer; ``step()`` runs one iteration."""

    def __init__(self, cfg: PPOConfig):
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        dist.init_from_env(self.device, shards=True)
        if cfg.batch_size < dist.world_size():
            raise ConfigError(f"batch_size: {cfg.batch_size} episodes cannot be shared by {dist.world_size()} processes")
        self.dtype = dist.resolve_precision(cfg.precision, self.device)
        self.logprob_temperature = cfg.temperature if cfg.temperature > 0 else 1.0  # greedy: plain log-probs
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.tokenizer = load_tokenizer(cfg.policy)
        self.format = ChatFormat.load(self.tokenizer, cfg.chat_template)
        self.format.apply_to(self.tokenizer)  # saved with the policy
        check_inputs(cfg, self.tokenizer, self.format)  # before any model loads or prompt is tokenized
        self.prompt_texts, self.prompt_ids = self._load_prompts()
        note = continued_adapter_note(cfg)
        if note and dist.is_main():
            print(note, flush=True)
        frozen = resolve_dtype(cfg.dtype, self.device)  # dtype of the frozen reference and reward model
        self.policy, self.ref = self._policy_and_reference(frozen)
        self.reward_model = RewardModel.from_pretrained(
            cfg.reward_model, self.device, dtype=frozen,
            attn_implementation=cfg.attn_implementation).eval().requires_grad_(False) if cfg.reward_model else None
        self.reward_fn = load_reward_fn(cfg.reward_fn) if cfg.reward_fn else None  # validate(): one of the two
        self.shared = cfg.value_model == "shared"
        self.value: torch.nn.Module | None
        if cfg.advantage_estimator == "rloo":
            self.value = None  # the baseline is the prompt's other responses
        elif self.shared:
            self.value = ValueHead(self.policy.config.hidden_size).to(self.device)
        elif cfg.reward_model:
            self.value = trained_reward_model(cfg.reward_model, self.device, cfg, from_reward_model=True)
        else:
            self.value = trained_reward_model(cfg.policy, self.device, cfg)
        # Dropout off in rollouts and updates (learn() runs in train mode): modules, attention
        # attributes and config fields alike, so the first update is exactly on-policy.
        for m in (self.policy, self.ref, self.reward_model, self.value):  # the EMA is a copy of the policy
            if m is not None:
                set_dropout(m, 0.0)
        # the trained models: the policy, and the value model or shared head (none with rloo)
        self.trained = [m for m in (self.policy, self.value) if m is not None]
        for m in self.trained:
            dist.broadcast_module(m)  # identical starting weights on every rank (e.g. a fresh value head)
        self.ema_model = None
        if cfg.ema:  # with LoRA an EMA of the adapters only (the base is frozen)
            self.ema_model = (lora.AdapterShadow(self.policy) if lora.has_adapters(self.policy)
                              else copy.deepcopy(self.policy).requires_grad_(False))
        # Sharding (before the optimizer sees the parameters): the trained models, and the EMA with the
        # policy's placements so its update stays a local elementwise operation on each rank's shard.
        mode = sharding.resolve_mode(cfg.sharding)
        separate_value = self.value is not None and not self.shared
        sharded = [self.policy] + ([self.value] if separate_value else []) + ([self.ema_model] if cfg.ema else [])
        self.sharded = any([sharding.shard_model(m, mode) for m in sharded])
        if self.sharded and dist.is_main():
            print(f"ppo: sharding={mode} (FSDP2) of the policy{', value model' if separate_value else ''}"
                  f"{', EMA' if cfg.ema else ''} over {dist.world_size()} ranks", flush=True)
        if separate_value and sharding.is_sharded(self.value):  # values(): a second entry point, FSDP must gather for it too
            from torch.distributed.fsdp import register_fsdp_forward_method
            register_fsdp_forward_method(self.value, "values")
        groups = [{"params": [p for p in m.parameters() if p.requires_grad], "lr": lr}  # policy, value
                  for m, lr in zip(self.trained, (cfg.lr, cfg.value_lr or cfg.lr))]
        self.optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.0,
                                           **adamw_kernel([p for m in self.trained for p in m.parameters()]))
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.kl_ctl = (AdaptiveKLController(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon) if cfg.adaptive_kl
                       else FixedKLController(cfg.kl_coef))
        self.ptx = None
        if cfg.ptx_coef > 0:
            blocks = pack_blocks(self.tokenizer, corpus_documents(cfg.pretrain_data), cfg.ptx_seq_len,
                                 cfg.pretrain_data)
            self.ptx = BlockStream(blocks, cfg.seed + 1)
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed + dist.rank())
        # a LoRA policy samples with the builtin generator (vLLM would load the plain weights by name)
        backend = "builtin" if lora.has_adapters(self.policy) and cfg.generation_backend == "auto" \
            else cfg.generation_backend
        self.backend = backends.make_backend(backend, backends.BackendContext(
            self.policy, cfg.policy, self.device, self.dtype, cfg.seed + dist.rank(), cfg.vllm_gpu_memory_utilization))
        self.iteration = 0
        self.prompt_position = 0
        self.epoch_order: tuple[int, np.ndarray] | None = None  # (epoch, its prompt order), see next_prompts
        self.ema_updates = 0

    def _policy_and_reference(self, frozen: torch.dtype) -> tuple[torch.nn.Module, torch.nn.Module | None]:
        """The trained policy and the frozen KL reference (None: the policy with its adapters disabled).

        Full fine-tuning: two models, the reference in ``dtype``. LoRA: one copy of the base weights
        when the reference is where the adapters start from, else a separate reference (see PPOConfig)."""
        cfg = self.cfg
        ref_spec = cfg.reference or cfg.policy
        load = {"attn_implementation": cfg.attn_implementation}
        if not cfg.lora_r:
            if frozen != torch.float32 and lora.same_model(ref_spec, cfg.policy) and dist.is_main():
                print(f"ppo: note: the KL reference is the policy's starting weights in {str(frozen)[6:]} "
                      f"(dtype={cfg.dtype}) while the policy trains in fp32: their log-probs differ by rounding, so "
                      f"the KL starts away from 0 (-0.17 to -0.51 per response on SmolLM2-135M) and the penalty "
                      f"reads that floor; dtype=fp32 keeps the reference exact, and LoRA needs no copy", flush=True)
            policy = trained_policy(cfg.policy, self.device, cfg)
            return policy, load_policy(ref_spec, self.device, dtype=frozen, **load).eval().requires_grad_(False)
        if lora.same_model(ref_spec, cfg.policy):  # fresh adapters on the reference (e.g. SFT) weights
            return trained_policy(cfg.policy, self.device, cfg), None
        if continues_adapter(cfg):  # a LoRA PPO policy continued: its adapter, trained further, on the reference
            base = load_policy(ref_spec, self.device, dtype=frozen, load_in_4bit=cfg.load_in_4bit, **load)
            policy = lora.load_adapter(base, cfg.policy, trainable=True)
            if cfg.gradient_checkpointing:
                enable_gradient_checkpointing(policy)
            return policy, None
        if dist.is_main():
            print(f"ppo: reference={ref_spec} is not the base of the LoRA policy {cfg.policy}: loading it as a "
                  f"separate frozen model (the adapters-disabled policy would be a different model)", flush=True)
        policy = trained_policy(cfg.policy, self.device, cfg)
        return policy, load_policy(ref_spec, self.device, dtype=frozen, **load).eval().requires_grad_(False)

    def reference_logits(self, input_ids, attention_mask, P: int) -> torch.Tensor:
        """(B, R, V) logits of the KL reference: its own model, or the policy with its adapters off."""
        if self.ref is not None:
            return response_logits(self.ref, input_ids, attention_mask, P)
        with lora.adapters_disabled(self.policy):
            return response_logits(self.policy, input_ids, attention_mask, P)

    def _load_prompts(self) -> tuple[list[str], list[array]]:
        prompts = load_prompts(self.cfg.prompts)
        if not prompts:
            raise DataError(f"{self.cfg.prompts}: no prompts")
        if any(p.split for p in prompts):
            prompts = [p for p in prompts if p.split in (None, "train")]
        if not prompts:
            raise DataError(f"{self.cfg.prompts}: no training prompts (PPO samples from rows with split=train or "
                            f"no split; every row here has another split)")
        encoder = RecordEncoder(self.format, ModelContext.of_model(self.cfg.policy, self.tokenizer),
                                self.cfg.max_prompt_tokens, max_new_tokens=self.cfg.max_new_tokens)
        ids = [compact(encoder.prompt(prompt_input(p), p.source)) for p in prompts]  # 4 bytes an id: 10^6 prompts
        return [p.text for p in prompts], ids

    # ---- sampling prompts in a seeded order (epochs over the prompt set)

    def next_prompts(self) -> list[int]:
        """Indices of this iteration's episodes' prompts (global batch: each prompt samples_per_prompt
        times in a row), then this rank's share."""
        n, k = len(self.prompt_ids), self.cfg.samples_per_prompt
        out = []
        for _ in range(self.cfg.batch_size // k):
            epoch, i = divmod(self.prompt_position, n)
            out += [int(self._epoch_order(epoch)[i])] * k
            self.prompt_position += 1
        return dist.shard(out)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """The seeded order of the prompts in ``epoch``, drawn once per epoch (not once per episode: with a
        million prompts each draw is a permutation of a million)."""
        if self.epoch_order is None or self.epoch_order[0] != epoch:
            order = np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.prompt_ids))
            self.epoch_order = (epoch, order)
        return self.epoch_order[1]

    # ---- rollout

    @torch.no_grad()
    def rollout(self, indices: list[int]) -> tuple[Rollout, dict[str, float]]:
        """Sample, then score: log-probs, values, reference log-probs and rewards of this rank's episodes.

        Sharded models are gathered once for the whole rollout, so each rank samples
        and scores its own prompts without collectives (ranks may stop at different lengths)."""
        with contextlib.ExitStack() as stack:
            for m in self.trained:
                stack.enter_context(sharding.unsharded(m))
            return self._rollout(indices)

    def _rollout(self, indices: list[int]) -> tuple[Rollout, dict[str, float]]:
        cfg, tok = self.cfg, self.tokenizer
        t0 = time.perf_counter()
        prompts = [list(self.prompt_ids[i]) for i in indices]
        gen = self.backend.generate(prompts, self.sampling(), self.generator)
        t1 = time.perf_counter()
        q_ids, q_mask = pad(prompts, tok.pad_token_id, "left")                        # (B, P)
        r_ids, r_mask = pad([r if r else [self.format.end_id] for r in gen.responses], tok.pad_token_id, "right")
        empty = torch.tensor([len(r) == 0 for r in gen.responses])
        r_mask[empty] = 0                                                              # max_new_tokens = 0 edge
        input_ids = torch.cat([q_ids, r_ids], 1).to(self.device)                      # (B, P+R)
        attn = torch.cat([q_mask, r_mask], 1).to(self.device)
        P = q_ids.shape[1]
        mask = r_mask.to(self.device).float()                                          # (B, R)
        self.policy.eval()
        with self.amp():
            ref_logprobs = token_logprobs(self.reference_logits(input_ids, attn, P), input_ids[:, P:],
                                          self.logprob_temperature)
        ended = torch.tensor(gen.ended, device=self.device)
        texts = decode_responses(tok, gen)
        prompt_texts = [self.prompt_texts[i] for i in indices]
        if self.reward_fn is not None:
            scores = torch.tensor(checked_scores(self.reward_fn, cfg.reward_fn, prompt_texts, texts),
                                  dtype=torch.float32, device=self.device)
        else:
            with self.amp():
                scores = self.reward_model(input_ids, attn).float()
        penalties = cfg.no_eos_penalty * (~ended).float()                              # (B,)
        # last: a kept pass's graph then shares memory with no other model's activations
        logprobs, values, kept = self._policy_pass(input_ids, attn, P)
        t2 = time.perf_counter()
        values = torch.zeros_like(mask) if values is None else values * mask
        ro = Rollout(input_ids, attn, P, mask, logprobs * mask, ref_logprobs * mask, values, scores, ended,
                     penalties, prompt_texts, texts, kept=kept)
        return ro, {"time/generate": t1 - t0, "time/score": t2 - t1}

    def _policy_pass(self, input_ids, attn, P: int) -> tuple[torch.Tensor, torch.Tensor | None, KeptPass | None]:
        """(B, R) log-probs and values (None: rloo) of the rollout's policy and value model, and the
        pass over ``kept_positions`` that made them there, kept for the update (None: no such episodes)."""
        positions = self.kept_positions(input_ids.shape[0])
        temp = self.logprob_temperature
        if not positions:
            with self.amp():
                logits, values = self.logits_and_values(input_ids, attn, P)
                return token_logprobs(logits, input_ids[:, P:], temp), values, None
        others = sorted(set(range(input_ids.shape[0])) - set(positions))
        logprobs = input_ids.new_zeros(input_ids[:, P:].shape, dtype=torch.float32)
        values = None if self.value is None else torch.zeros_like(logprobs)
        if others:
            with self.amp():
                logits, v = self.logits_and_values(input_ids[others], attn[others], P)
                logprobs[others] = token_logprobs(logits, input_ids[others, P:], temp).float()
            if values is not None:
                values[others] = v
            del logits
        logits, v = self._forward_to_keep(input_ids[positions], attn[positions], P)
        # as minibatch_step reads them (outside autocast): that step's ratio is exactly 1
        logprobs[positions] = token_logprobs(logits.detach(), input_ids[positions, P:], temp).float()
        if values is not None:
            values[positions] = v.detach()
        return logprobs, values, KeptPass(positions, None if self.policy_frozen else logits, v)

    def kept_positions(self, n: int) -> list[int]:
        """This rank's episodes whose update forward pass the rollout makes and keeps (``KeptPass``):
        the first micro-batch of epoch 0's first minibatch, the only step whose weights are the
        rollout's. One micro-batch (the whole minibatch when ``micro_batch_size`` is 0), so no more
        activations are held at once than in the update. None when the models are sharded (the
        rollout gathers their weights for itself, outside FSDP's forward and backward) or the rollout
        is not of this iteration's batch (``n`` episodes)."""
        if self.sharded or n != len(dist.shard(range(self.cfg.batch_size))):
            return []
        chunks = self._micro_batches(self._minibatches(0)[0])
        return chunks[0] if chunks else []

    def _forward_to_keep(self, ids, attn, P: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """minibatch_step's forward pass, made in the rollout: the trained models in train mode (as in
        learn(): activation checkpointing, e.g., runs in train mode only), under autocast, with autograd
        for what this iteration trains (the value function alone in the warm-up). (n, R, V) logits,
        (n, R) fp32 values (None: rloo)."""
        for m in self.trained:
            m.train()
        with torch.enable_grad(), self.amp():
            if not self.policy_frozen:
                return self.logits_and_values(ids, attn, P)
            if self.shared:
                return response_logits_and_values(self.policy, self.value, ids, attn, P, trunk_grad=False)
            with torch.no_grad():
                logits = response_logits(self.policy, ids, attn, P)
            return logits, self.values(ids, attn, P)

    def compute_advantages(self, ro: Rollout) -> None:
        cfg = self.cfg
        ro.kl = kl_estimate(ro.logprobs, ro.ref_logprobs, cfg.kl_estimator) * ro.mask
        if cfg.advantage_estimator == "rloo":
            # a response's return, against its prompt's other responses (the groups span ranks' shards)
            returns = ro.scores + ro.penalties - self.kl_ctl.value * ro.kl.sum(-1)          # (b,)
            advantages = leave_one_out(dist.gather_shards(returns, cfg.batch_size), cfg.samples_per_prompt)
            advantages = dist.shard(advantages).to(self.device, torch.float32)               # (b,)
            ro.returns = returns.unsqueeze(-1) * ro.mask                                      # (b, R)
            ro.advantages = whiten(advantages.unsqueeze(-1) * ro.mask, ro.mask)
            return
        rewards = shape_rewards(ro.scores + ro.penalties, ro.kl, ro.mask, self.kl_ctl.value)
        if cfg.whiten_rewards:
            rewards = whiten(rewards, ro.mask, shift_mean=False)
        advantages, ro.returns = gae(rewards, ro.values, ro.mask, cfg.gamma, cfg.lam)
        ro.advantages = whiten(advantages, ro.mask)

    # ---- learning

    @property
    def policy_frozen(self) -> bool:
        """True during the value warm-up: this iteration trains the value function only."""
        return self.iteration < self.cfg.value_warmup_iterations

    def set_lr(self) -> None:
        """Linear warm-up from 1/10 of each group's peak; the policy's starts when it starts training."""
        w = self.cfg.warmup_iterations
        started = (max(0, self.iteration - self.cfg.value_warmup_iterations), self.iteration)  # policy, value
        for g, base, n in zip(self.optimizer.param_groups, self.base_lrs, started):
            g["lr"] = base * (1.0 if w <= 0 else min(1.0, 0.1 + 0.9 * n / w))

    def learn(self, ro: Rollout) -> dict[str, float]:
        cfg = self.cfg
        for m in self.trained:
            m.train()
        sums: dict[str, float] = {}
        steps = 0
        for epoch in range(cfg.ppo_epochs):
            for idx in self._minibatches(epoch):
                stats = self.minibatch_step(ro, idx)
                steps += 1
                for k, v in stats.items():
                    sums[k] = max(sums.get(k, v), v) if k in _PEAK_STATS else sums.get(k, 0.0) + v
        return {k: v if k in _PEAK_STATS else v / max(steps, 1) for k, v in sums.items()}

    def _minibatches(self, epoch: int) -> list[list[int]]:
        """This rank's positions of each minibatch of ``epoch``: minibatches are drawn from the global
        batch, the same on every rank, and each rank works on the episodes it holds (possibly none)."""
        B, mb = self.cfg.batch_size, self.cfg.minibatch_size
        order = np.random.default_rng([self.cfg.seed, self.iteration, epoch, 0]).permutation(B).tolist()
        return [dist.local_positions(order[start:start + mb]) for start in range(0, B, mb)]

    def _micro_batches(self, idx: list[int]) -> list[list[int]]:
        """``idx`` in forward passes of ``micro_batch_size`` episodes (one pass when it is 0)."""
        micro = self.cfg.micro_batch_size or max(len(idx), 1)
        return [idx[s:s + micro] for s in range(0, len(idx), micro)]

    def minibatch_step(self, ro: Rollout, idx: list[int]) -> dict[str, float]:
        """One optimizer step on this rank's episodes ``idx`` of a global minibatch (possibly none).

        Each micro-batch's loss is weighted by its share of the minibatch's
        global token count, so summing gradients over ranks gives the gradient
        of the token mean over the whole minibatch. Every rank makes the same
        collective calls whatever ``idx`` holds, and the guards are checked on
        reduced values, so all ranks stop together or not at all.
        """
        cfg = self.cfg
        train_policy = not self.policy_frozen
        chunks = self._micro_batches(idx)
        # every micro-batch's token count and the global total in one host sync, not one per micro-batch
        counts = torch.stack([ro.mask[c].sum() for c in chunks] + [ro.mask[idx].sum()])
        *chunk_tokens, total_tokens = torch.cat([counts[:-1], dist.all_reduce_sum(counts[-1:].clone())]).tolist()
        stats = {"ppo/pg_loss": 0.0, "ppo/vf_loss": 0.0, "ppo/entropy": 0.0, "ppo/clipfrac": 0.0,
                 "ppo/approx_kl": 0.0, "ppo/vf_clipfrac": 0.0}
        # statistics stay on the device until the minibatch ends (no .item() per micro-batch)
        sums = torch.zeros(len(stats), dtype=torch.float64, device=self.device)
        nonfinite = torch.zeros(1, dtype=torch.float64, device=self.device)
        ratio_max = torch.zeros(1, dtype=torch.float64, device=self.device)
        # a padding pass (sharded only) reuses episode 0 at weight 0
        for n, (j, real) in enumerate(sharding.padded_passes(chunks, [0], self.sharded)):
            ids, mask = ro.input_ids[j], ro.mask[j]
            # token weight of this micro-batch in the global minibatch
            share = chunk_tokens[n] / max(total_tokens, 1.0) if real else 0.0
            logits, v = self._update_forward(ro, j, train_policy)
            if v is None:  # rloo: no value function
                vf, vf_stats = torch.zeros((), device=self.device), {"vf_clipfrac": torch.zeros((), device=self.device)}
            else:
                vf, vf_stats = value_loss(v, ro.values[j], ro.returns[j], mask, cfg.cliprange_value)
            if train_policy:
                # one log-softmax per micro-batch: the entropy statistic reads the one the loss does
                logp, entropy = token_logprobs_and_entropy(logits, ids[:, ro.P:], self.logprob_temperature)
                pg, pg_stats = policy_loss(logp, ro.logprobs[j], ro.advantages[j], mask, cfg.cliprange)
                loss = (pg + cfg.vf_coef * vf) * share
            else:
                loss = cfg.vf_coef * vf * share
            loss.backward()
            if not real:
                continue
            with torch.no_grad():
                nonfinite += (~torch.isfinite(loss.detach())).double()
                if not train_policy:  # the value warm-up: only the value statistics
                    sums[[1, 5]] += torch.stack([vf.detach(), vf_stats["vf_clipfrac"]]).double() * share  # vf_*
                    continue
                ent = masked_mean(entropy, mask)  # of the distribution sampled from
                ratio_max = torch.maximum(ratio_max, pg_stats["ratio_max"].detach().double())
                sums += torch.stack([pg.detach(), vf.detach(), ent, pg_stats["clipfrac"], pg_stats["approx_kl"],
                                     vf_stats["vf_clipfrac"]]).double() * share
        *local, nonfinite, ratio_max = torch.cat([sums, nonfinite, ratio_max]).tolist()  # the one host sync
        if self.ptx is not None and train_policy:
            stats["ppo/ptx_loss"], bad = self._ptx_backward(total_tokens)
            local.append(stats["ppo/ptx_loss"])
            nonfinite += bad
        local.append(nonfinite)
        ro.kept = None  # the weights move now: a kept pass not used by this step never will be
        sharding.sum_gradients(*self.trained)
        reduced = dist.all_reduce_sum(torch.tensor(local, dtype=torch.float64)).tolist()
        ratio_max = dist.all_reduce_max(torch.tensor(ratio_max, dtype=torch.float64)).item()
        self._guard(reduced[-1], ratio_max)
        if cfg.grad_clip > 0:  # global norms, over every rank's shard when sharded
            for m in self.trained:
                sharding.clip_grad_norm_(m, cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        out = dict(zip(stats, reduced[:-1]))
        if self.value is None:
            del out["ppo/vf_loss"], out["ppo/vf_clipfrac"]
        if not train_policy:
            return {"ppo/vf_loss": out["ppo/vf_loss"], "ppo/vf_clipfrac": out["ppo/vf_clipfrac"], "ppo/policy_frozen": 1.0}
        self._update_ema()
        out["ppo/ratio_max"] = ratio_max
        return out

    def _update_forward(self, ro: Rollout, j: list[int], train_policy: bool):
        """Logits (None in the value warm-up) and values (None: rloo) of episodes ``j`` with autograd:
        the rollout's kept pass when it is of these episodes (used once), else a new forward pass."""
        if ro.kept is not None and ro.kept.positions == j:
            kept, ro.kept = ro.kept, None
            return kept.logits, kept.values
        ids, attn = ro.input_ids[j], ro.attention_mask[j]
        with self.amp():
            if train_policy:
                return self.logits_and_values(ids, attn, ro.P)
            return None, self.values(ids, attn, ro.P)

    def _ptx_backward(self, rl_tokens: float) -> tuple[float, float]:
        """PPO-ptx: add ptx_coef x the pretraining next-token loss.

        The minibatch's ceil(ptx_token_ratio * rl_tokens / ptx_seq_len) blocks
        (a global count) are shared among ranks like episodes; returns this
        rank's part of the loss and how many of its losses were not finite.
        """
        cfg = self.cfg
        n_blocks = max(1, math.ceil(cfg.ptx_token_ratio * rl_tokens / cfg.ptx_seq_len))
        every = list(self.ptx.next(n_blocks))
        blocks = dist.shard(every)
        micro = cfg.micro_batch_size or max(len(blocks), 1)
        ones_total = float(n_blocks * (cfg.ptx_seq_len - 1))
        loss_total, nonfinite = 0.0, 0.0
        chunks = [blocks[s:s + micro] for s in range(0, len(blocks), micro)]
        for chunk, real in sharding.padded_passes(chunks, every[:1], self.sharded):
            ids = torch.stack(chunk).to(self.device)
            mask = torch.ones_like(ids)
            with self.amp():
                nll_sum, _ = next_token_nll_sum(self.policy, ids, mask, mask)
            loss = cfg.ptx_coef * nll_sum / ones_total * (1.0 if real else 0.0)
            loss.backward()
            if real:
                nonfinite += float(not torch.isfinite(loss))
                loss_total += nll_sum.item() / ones_total
        return loss_total, nonfinite

    def _guard(self, nonfinite: float, ratio_max: float) -> None:
        """Stop on a NaN/inf loss or an exploding ratio (both reduced over ranks: every rank raises)."""
        if nonfinite > 0:
            raise PPOGuardError(f"ppo iteration {self.iteration}: loss is not finite; stopping "
                                f"(the last good checkpoint in {self.cfg.out_dir}/checkpoints is kept; "
                                f"try a lower lr)")
        if ratio_max > self.cfg.ratio_guard:
            raise PPOGuardError(f"ppo iteration {self.iteration}: probability ratio {ratio_max:.3g} exceeds "
                                f"ratio_guard={self.cfg.ratio_guard}; stopping (the last good checkpoint is kept)")

    def _check_rollout(self, ro: Rollout) -> None:
        """Stop before learning from a rollout whose scores, log-probs or values are not finite, naming which
        (counts reduced over ranks: every rank raises). Frozen models in fp16 (``dtype``) overflow where bf16
        and fp32 do not: the update's loss would only say it is not finite, and blame the learning rate."""
        parts = {"reward model scores": ro.scores, "reference log-probs": ro.ref_logprobs,
                 "policy log-probs": ro.logprobs, "values": ro.values}
        counts = torch.stack([(~torch.isfinite(t)).sum() for t in parts.values()]).double().cpu()
        bad = [f"{name} ({int(n)})" for name, n in zip(parts, dist.all_reduce_sum(counts).tolist()) if n]
        if not bad:
            return
        fp16 = resolve_dtype(self.cfg.dtype, self.device) == torch.float16
        hint = (f"dtype={self.cfg.dtype} puts the frozen models (reference, reward model, the base under LoRA) in "
                f"fp16, whose range ends at 65504: use dtype=bf16 or fp32" if fp16 else
                "check the models' weights (a diverged policy: resume from an earlier checkpoint with a lower lr)")
        raise PPOGuardError(f"ppo iteration {self.iteration}: not finite in the rollout: {', '.join(bad)}; stopping "
                            f"before any update (the last good checkpoint is kept). {hint}")

    def logits_and_values(self, input_ids, attention_mask, P: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, R, V) policy logits and (B, R) fp32 values at the response positions (None: rloo)."""
        if self.value is None:
            return response_logits(self.policy, input_ids, attention_mask, P), None
        if self.shared:
            return response_logits_and_values(self.policy, self.value, input_ids, attention_mask, P)
        return (response_logits(self.policy, input_ids, attention_mask, P),
                response_values(self.value, input_ids, attention_mask, P).float())

    def values(self, input_ids, attention_mask, P: int) -> torch.Tensor:
        """(B, R) fp32 values alone (the value warm-up)."""
        if self.shared:
            return shared_head_values(self.policy, self.value, input_ids, attention_mask, P)
        return response_values(self.value, input_ids, attention_mask, P).float()

    def amp(self):
        """Autocast context for forward passes (``precision``)."""
        return dist.autocast(self.device, self.dtype)

    def sampling(self) -> backends.Sampling:
        cfg, tok = self.cfg, self.tokenizer
        return backends.Sampling(cfg.max_new_tokens, self.format.end_id, tok.pad_token_id, cfg.temperature,
                                 cfg.top_k, cfg.top_p, cfg.min_new_tokens, stop_ids=self.format.stop_ids)

    def _update_ema(self) -> None:
        if self.ema_model is None:
            return
        self.ema_updates += 1
        n = self.ema_updates
        decay = min(self.cfg.ema_decay, (1 + n) / (10 + n)) if self.cfg.ema_warmup else self.cfg.ema_decay
        if isinstance(self.ema_model, lora.AdapterShadow):
            ema_update(self.ema_model.tensors(), [p for _, p in lora.trainable(self.policy)], decay)
        else:
            ema_update(list(self.ema_model.parameters()), list(self.policy.parameters()), decay)

    # ---- one iteration

    def step(self) -> tuple[dict[str, float], Rollout]:
        self.set_lr()
        ro, times = self.rollout(self.next_prompts())
        try:
            self._check_rollout(ro)
            self.compute_advantages(ro)
            t0 = time.perf_counter()
            learn_stats = self.learn(ro)
        finally:
            ro.kept = None  # its graph, if a guard or an interrupt stopped the iteration before learn() used it
        self.backend.sync_weights(self.policy)
        times["time/learn"] = time.perf_counter() - t0
        metrics = {**self.rollout_metrics(ro), **learn_stats, **times}
        if not self.policy_frozen:  # a frozen policy's KL says nothing about kl_coef
            self.kl_ctl.update(metrics["ppo/kl"], self.cfg.batch_size)
        self.iteration += 1
        return metrics, ro

    def rollout_metrics(self, ro: Rollout) -> dict[str, float]:
        """Batch means over all ranks: score, KL per response, length, EOS share, value fit."""
        B = ro.mask.shape[0]
        local = torch.stack([ro.scores.sum(), ro.kl.sum(), ro.mask.sum(), ro.ended.float().sum(),  # one sync, not four
                             ro.mask.new_tensor(float(B))]).double().cpu()
        score, kl, length, ended, n = dist.all_reduce_sum(local).tolist()
        out = {"ppo/score": score / n, "ppo/kl": kl / n, "ppo/response_length": length / n,
               "ppo/eos_fraction": ended / n, "ppo/kl_coef": self.kl_ctl.value, "ppo/lr": self.optimizer.param_groups[0]["lr"]}
        if self.value is not None:
            out["ppo/explained_variance"] = explained_variance(ro.values, ro.returns, ro.mask)
        return out


def train_ppo(cfg: PPOConfig, on_iteration: Callable[[int], None] | None = None) -> PPOResult:
    """Run ``cfg.iterations`` PPO iterations; the final (EMA) policy is saved to ``cfg.out_dir``."""
    check_resume(cfg)  # a resume with changed options: refused before anything loads or is written
    trainer = PPOTrainer(cfg)
    out = Path(cfg.out_dir)
    log = open_metrics(out, "ppo-ptx" if cfg.ptx_coef > 0 else "ppo", cfg)
    found = ckpt.latest_good_checkpoint(out / "checkpoints") if cfg.resume else None
    if found is not None:
        ppo_checkpoint.load_checkpoint(trainer, found)
    else:
        start_over(out / "checkpoints", log, "ppo-ptx" if cfg.ptx_coef > 0 else "ppo")
    log.truncate_after(trainer.iteration)
    MetricsLog(out / "samples.jsonl", enabled=dist.is_main()).truncate_after(trainer.iteration)
    # a resumed run's iterations before its checkpoint (the main process's file: the others' result is not written)
    history = logged_history(log.path, "iteration") if dist.is_main() else []
    if dist.is_main():
        write_run_info(out, "ppo-ptx" if cfg.ptx_coef > 0 else "ppo", cfg,
                       {"prompts": len(trainer.prompt_ids), "resumed_at_iteration": trainer.iteration,
                        "sharding": sharding.sharding_mode(trainer.policy), "world_size": dist.world_size(),
                        "format": trainer.format.describe(),
                        "parameters": {"policy": lora.parameter_counts(trainer.policy),
                                       "value": lora.parameter_counts(trainer.value) if trainer.value is not None
                                       else "none (rloo)",
                                       "reference": "policy with adapters disabled" if trainer.ref is None
                                       else lora.parameter_counts(trainer.ref)["total"]}})
    name = "ppo-ptx" if cfg.ptx_coef > 0 else "ppo"
    bar = progress_bar(cfg.iterations, name, cfg.progress and dist.is_main(), trainer.iteration, unit="iteration")
    last_save = time.monotonic()
    # a first SIGTERM / Ctrl-C waits for a safe point
    with interrupt.safe_points(), contextlib.closing(bar), log.closed_on_error():
        while trainer.iteration < cfg.iterations:
            metrics, ro = trainer.step()
            history.append({"iteration": trainer.iteration, **metrics})
            log.log(trainer.iteration, metrics)
            _log_samples(out, trainer.iteration, ro, cfg.log_samples)
            bar.update(1)
            bar.set_postfix(score=f"{metrics['ppo/score']:.3f}", kl=f"{metrics['ppo/kl']:.3f}",
                            len=f"{metrics['ppo/response_length']:.1f}")
            saved = None
            if (cfg.save_every and trainer.iteration % cfg.save_every == 0) or trainer.iteration == cfg.iterations \
                    or (cfg.save_minutes > 0 and time.monotonic() - last_save >= 60 * cfg.save_minutes):
                saved, last_save = ppo_checkpoint.save_checkpoint(trainer), time.monotonic()
            if interrupt.stop_requested():  # a safe point: stop here, with a checkpoint
                interrupt.stop(f"at {name} iteration {trainer.iteration}/{cfg.iterations}",
                               saved or ppo_checkpoint.save_checkpoint(trainer))
            if on_iteration is not None:
                on_iteration(trainer.iteration)
    log.close()
    ppo_checkpoint.save_final(trainer)
    if not cfg.keep_optimizer and dist.is_main():  # training is over: weights-only checkpoints from here on
        ckpt.retain(out / "checkpoints", cfg.keep_checkpoints, keep_optimizer=False)
    if dist.is_main():
        update_run_info(out, iterations=trainer.iteration,
                        final={k: v for k, v in (history[-1] if history else {}).items()})
    dist.barrier()
    return PPOResult(str(out), trainer.iteration, history)


def _log_samples(out: Path, iteration: int, ro: Rollout, n: int) -> None:
    """The iteration's first ``n`` episodes of the global batch (every rank calls it: a collective)."""
    if n <= 0:
        return
    rows = _first_episodes(ro, n)
    if not dist.is_main():
        return
    with open(out / "samples.jsonl", "a") as f:
        for row in rows:
            f.write(json.dumps({"step": iteration, **row}) + "\n")


def _first_episodes(ro: Rollout, n: int) -> list[dict]:
    """Episodes 0..n-1 of the global batch, gathered from the ranks' strided shares (episode g is
    position g // world_size on rank g % world_size)."""
    r, w = dist.rank(), dist.world_size()
    local = {i * w + r: {"prompt": ro.prompts[i], "response": ro.responses[i],
                         "score": round(ro.scores[i].item(), 4), "ended": bool(ro.ended[i])}
             for i in range(len(ro.responses)) if i * w + r < n}
    merged = {g: row for part in dist.all_gather_objects(local) for g, row in part.items()}
    return [merged[g] for g in sorted(merged)]
