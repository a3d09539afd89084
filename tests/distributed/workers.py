"""What the ranks run, and the configs the single-process references share with them.

The same config builders are used by the multi-process jobs (through
``harness.run_ranks``) and by the single-process reference runs in the tests,
so the only difference between the two is the number of processes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from instructgpt import config
from instructgpt import distributed as dist
from instructgpt import sharding
from instructgpt.backends import BuiltinBackend
from instructgpt.generation import Generation, generate
from instructgpt.models import load_policy
from instructgpt.ppo import PPOConfig, PPOTrainer, Rollout, train_ppo
from instructgpt.rm import RMConfig, train_rm
from instructgpt.sft import SFTConfig, train_sft
from instructgpt.unembedding import logits_at


# ----------------------------------------------------------------------------- configs

def sft_config(data: dict, out, **kw) -> SFTConfig:
    """33 demonstrations in batches of 8: the last batch of each epoch has one example,
    so with two ranks rank 1 has nothing to do on that step."""
    base = dict(model=data["model"], train=data["sft_train"], valid=data["sft_valid"], out_dir=str(out), lr=3e-3,
                epochs=2, batch_size=8, micro_batch_size=3, warmup_steps=2, dropout=0.0, progress=False,
                save_every=3, keep_checkpoints=10, precision="fp32")
    base.update(kw)
    return config.from_dict(SFTConfig, base)


def rm_config(data: dict, out, **kw) -> RMConfig:
    """20 rankings in batches of 7 (7, 7, 6), 3 per forward pass: on two ranks the shares are 4/3, so
    rank 0 makes two passes and rank 1 one (sharded, rank 1 pads with a zero-weight pass)."""
    base = dict(model=data["model"], train=data["rm_train"], valid=data["rm_valid"], out_dir=str(out), lr=2e-3,
                epochs=2, batch_size=7, micro_batch_size=3, warmup_steps=1, dropout=0.0, progress=False,
                save_every=2, keep_checkpoints=10, precision="fp32")
    base.update(kw)
    return config.from_dict(RMConfig, base)


def ppo_config(data: dict, out, **kw) -> PPOConfig:
    """Greedy sampling and a programmatic reward: a deterministic PPO-ptx run.

    6 episodes per iteration in minibatches of 2 drawn from the global batch,
    so some minibatches have no episode on one of two ranks."""
    base = dict(policy=data["policy"], reward_fn="tests.ppo_rewards:count_e", prompts=data["prompts"],
                out_dir=str(out), iterations=3, batch_size=6, minibatch_size=2, ppo_epochs=2, lr=1e-3,
                warmup_iterations=1, max_new_tokens=6, temperature=0.0, kl_coef=0.05, adaptive_kl=True,
                target_kl=0.5, ema=True, pretrain_data=data["corpus"], ptx_coef=0.5, ptx_seq_len=16,
                ptx_token_ratio=1.0, save_every=2, keep_checkpoints=5, progress=False, log_samples=2,
                precision="fp32", generation_backend="builtin")
    base.update(kw)
    return config.from_dict(PPOConfig, base)


# ----------------------------------------------------------------------------- jobs (run on every rank)

def session(jobs: list[tuple[str, dict]]) -> None:
    """Run several jobs one after the other in one process group (spawning is the slow part)."""
    dist.init_from_env(torch.device("cpu"))
    assert dist.world_size() > 1
    for name, kwargs in jobs:
        globals()[name](**kwargs)
        dist.barrier()


def sft_job(data: dict, out: str, **kw) -> None:
    result = train_sft(sft_config(data, out, **kw))
    _record_fit(out, result.fit)


def rm_job(data: dict, out: str, **kw) -> None:
    _record_fit(out, train_rm(rm_config(data, out, **kw)).fit)


def _record_fit(out: str, fit) -> None:
    """How each rank trained, next to (not in) the output folder, whose files the tests compare."""
    Path(f"{out}.rank{dist.rank()}.json").write_text(json.dumps({"sharding": fit.sharding, "steps": fit.steps}))


def sharding_api_job(data: dict, out: str, mode: str) -> None:
    """The sharding API under real ranks: full state dicts, the unsharded context (with a different
    number of forward passes per rank), sharded forward passes, optimizer-state and weight round trips."""
    r = dist.rank()
    result: dict = {}
    model = load_policy(data["model"]).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])
    with torch.no_grad():
        want = model(input_ids=ids).logits
    want_sd = {k: v.clone() for k, v in model.state_dict().items()}
    want_gen = generate(model, [[5, 6, 7], [8, 9]], 5, 0, 1, temperature=0.0).responses
    blocks = sharding.transformer_blocks(model)
    result["sharded"] = sharding.shard_model(model, mode)
    result["blocks"] = len(blocks)
    result["class"] = type(model).__name__
    result["param_type"] = type(model.transformer.h[0].attn.c_attn.weight).__name__

    def diff(a, b):
        return float((a - b).abs().max())

    with sharding.unsharded(model):
        got = [model(input_ids=ids).logits for _ in range(3 if r == 0 else 1)]  # no collectives inside
        gen = generate(model, [[5, 6, 7], [8, 9]], 5 if r == 0 else 3, 0, 1, temperature=0.0).responses
    result["unsharded_logits_diff"] = max(diff(g, want) for g in got)
    result["unsharded_generation_same"] = gen == (want_gen if r == 0 else [x[:3] for x in want_gen])
    result["param_type_after"] = type(model.transformer.h[0].attn.c_attn.weight).__name__
    with torch.no_grad():
        result["sharded_logits_diff"] = diff(model(input_ids=ids).logits, want)  # collective forward
    # the last block at the read positions only (last_block.py), inside FSDP2's gather of its weights
    reads = torch.zeros_like(ids, dtype=torch.bool)
    reads[:, 3:5] = True
    seen = []
    hook = model.transformer.h[-1].ln_2.register_forward_hook(lambda m, a, o: seen.append(list(a[0].shape)))
    with torch.no_grad():
        result["logits_at_diff"] = diff(logits_at(model, reads, input_ids=ids), want[reads])
    hook.remove()
    result["last_block_mlp_rows"] = [shape[1] for shape in seen]
    sd = sharding.full_state_dict(model)
    result["full_state_dict_keys_same"] = sorted(sd) == sorted(want_sd)
    result["full_state_dict_diff"] = max(diff(sd[k], want_sd[k]) for k in want_sd)
    result["tied"] = sd["lm_head.weight"].data_ptr() == sd["transformer.wte.weight"].data_ptr()
    result["rank0_only_empty_elsewhere"] = (sharding.full_state_dict(model, rank0_only=True) == {}) == (r != 0)

    # one training step, then round trips of the optimizer state and the weights through full tensors
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    model(input_ids=ids[r:r + 1], labels=ids[r:r + 1]).loss.backward()
    result["grad_norm"] = float(sharding.clip_grad_norm_(model, 1.0))
    optimizer.step()
    full_opt = sharding.optimizer_state_dict(optimizer, rank0_only=False)
    trained = sharding.full_state_dict(model)
    sharding.load_full_state_dict(model, {k: v for k, v in want_sd.items() if k != "lm_head.weight"})
    result["reloaded_diff"] = max(diff(v, want_sd[k]) for k, v in sharding.full_state_dict(model).items())
    optimizer.state.clear()
    sharding.load_optimizer_state_dict(optimizer, full_opt)
    again = sharding.optimizer_state_dict(optimizer, rank0_only=False)
    result["optimizer_roundtrip_diff"] = max(diff(again["state"][i][k], v) for i, s in full_opt["state"].items()
                                             for k, v in s.items())
    torch.save({"optimizer": full_opt, "trained": trained}, Path(out, f"api-{mode}-rank{r}.pt"))
    Path(out, f"api-{mode}-rank{r}.json").write_text(json.dumps(result))


def ppo_job(data: dict, out: str, **kw) -> None:
    train_ppo(ppo_config(data, out, **kw))


def collectives_job(out: str) -> None:
    """Exercise the helpers with deliberately unequal ranks; each rank writes what it ended with."""
    r = dist.rank()
    torch.manual_seed(100 + r)                        # different on purpose: broadcast_module must fix it
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2), torch.nn.Linear(2, 2))
    dist.broadcast_module(model)
    x = torch.full((1, 3), float(r + 1))
    if r == 0:                                         # rank 0 uses layers 0 and 1; rank 1 no layer at all
        model[1](model[0](x)).sum().backward()
    dist.all_reduce_gradients(model, bucket_numel=5)   # several buckets
    sums = dist.reduce_sums({"a": 1.0, "b": 2.0} if r == 0 else {"c": 3.0})
    peak = dist.all_reduce_max(torch.tensor(float(r + 7))).item()
    result = {"weights": [p.detach().tolist() for p in model.parameters()],
              "grads": [None if p.grad is None else p.grad.tolist() for p in model.parameters()],
              "sums": sums, "max": peak, "positions": dist.local_positions([5, 0, 3, 2]),
              "gathered": dist.gather_shards(torch.tensor(dist.shard([10.0, 11.0, 12.0, 13.0, 14.0])), 5).tolist()}
    Path(out, f"collectives-rank{r}.json").write_text(json.dumps(result))


def rloo_rollout() -> Rollout:
    """A fixed batch of 8 episodes (2 prompts x 4 responses, 5 response tokens at most) for the RLOO
    advantages: scores, log-probs, reference log-probs and response lengths are set, the rest is unused."""
    g = torch.Generator().manual_seed(7)
    lengths = torch.tensor([5, 3, 1, 4, 2, 5, 5, 0])
    mask = (torch.arange(5)[None] < lengths[:, None]).float()                       # (8, 5)
    logprobs = -torch.rand(8, 5, generator=g) * mask
    ref_logprobs = -torch.rand(8, 5, generator=g) * mask
    ids = torch.zeros(8, 7, dtype=torch.long)
    return Rollout(ids, torch.ones_like(ids), 2, mask, logprobs, ref_logprobs, torch.zeros_like(mask),
                   torch.randn(8, generator=g), torch.ones(8, dtype=torch.bool), torch.zeros(8))


def rloo_config(data: dict, out) -> PPOConfig:
    return ppo_config(data, out, advantage_estimator="rloo", samples_per_prompt=4, batch_size=8, minibatch_size=4,
                      adaptive_kl=False, target_kl=PPOConfig.target_kl, temperature=1.0)


def rloo_advantages_job(data: dict, out: str) -> None:
    """RLOO's advantages of this rank's strided share of ``rloo_rollout`` (each group of 4 spans both ranks)."""
    trainer = PPOTrainer(rloo_config(data, Path(out) / "rloo"))
    full = rloo_rollout()
    ro = Rollout(*(dist.shard(getattr(full, f)) if isinstance(getattr(full, f), torch.Tensor) else getattr(full, f)
                   for f in ("input_ids", "attention_mask", "P", "mask", "logprobs", "ref_logprobs", "values",
                             "scores", "ended", "penalties")))
    trainer.compute_advantages(ro)
    torch.save({"advantages": ro.advantages, "returns": ro.returns}, Path(out, f"rloo-rank{dist.rank()}.pt"))


# ----------------------------------------------------------------------------- test hooks

def eos_on_last_rank(ctx):
    """A generation backend (``generation_backend=tests.distributed.workers:eos_on_last_rank``)
    under which the last rank's responses are all EOS at the first token."""
    return _EOSOnLastRank(BuiltinBackend(ctx))


class _EOSOnLastRank:
    name = "eos-on-last-rank"

    def __init__(self, inner: BuiltinBackend):
        self.inner = inner

    def generate(self, prompts, sampling, generator=None) -> Generation:
        if dist.rank() == dist.world_size() - 1:
            return Generation([[sampling.eos_id] for _ in prompts], [True] * len(prompts))
        return self.inner.generate(prompts, sampling, generator)

    def sync_weights(self, model) -> None:
        self.inner.sync_weights(model)


def failing_job(fail_rank: int) -> None:
    """One rank raises while the other waits for it in a collective."""
    dist.init_from_env(torch.device("cpu"))
    if dist.rank() == fail_rank:
        raise RuntimeError(f"rank {fail_rank} failed on purpose")
    dist.barrier()
