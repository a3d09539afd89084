"""PPO's learning step: its statistics come back in one host sync per minibatch, whatever the micro-batching."""

import gc
import math
import sys
import weakref

import pytest
import torch

from tests.conftest import make_model, write_jsonl
from instructgpt import config
from instructgpt.ppo import PPOConfig, PPOGuardError, PPOTrainer


@pytest.fixture
def trainer(tmp_path, tiny_gpt2):
    write_jsonl(tmp_path / "prompts.jsonl", [{"id": str(i), "text": f"say {i}\n", "user_id": "u"} for i in range(8)])

    def make(**kw) -> PPOTrainer:
        cfg = config.from_dict(PPOConfig, dict(policy=str(tiny_gpt2), reward_fn="tests.ppo_rewards:count_e",
                                               prompts=str(tmp_path / "prompts.jsonl"), out_dir=str(tmp_path / "out"),
                                               **{"batch_size": 8, "minibatch_size": 8, "ppo_epochs": 1,
                                                  "max_new_tokens": 6, "progress": False, "ema": False, "seed": 3,
                                                  **kw}))
        t = PPOTrainer(cfg)
        ro, _ = t.rollout(t.next_prompts())
        t.compute_advantages(ro)
        for m in t.trained:
            m.train()
        return t, ro
    return make


class SyncCounter:
    """Counts our package's calls that copy a tensor's value to the host (.item, .tolist, float(), bool(),
    int()); transformers' own (its attention-mask checks, two per forward pass) are not ours to remove."""

    NAMES = ("item", "tolist", "__float__", "__bool__", "__int__")

    def __init__(self, monkeypatch):
        self.n = 0
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)

            def counted(t, *a, _original=original, **kw):
                self.n += "instructgpt" in sys._getframe(1).f_code.co_filename
                return _original(t, *a, **kw)
            monkeypatch.setattr(torch.Tensor, name, counted)


def test_minibatch_statistics_take_a_fixed_number_of_host_syncs(trainer, monkeypatch):
    t, ro = trainer(micro_batch_size=1)                     # 8 micro-batches of one episode
    counter = SyncCounter(monkeypatch)
    stats = t.minibatch_step(ro, list(range(8)))
    # one for the token counts, one for the statistics, one for ratio_max's reduction; the code before
    # issue 17 made 8 per micro-batch (64 here)
    assert counter.n <= 4, counter.n
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())


def test_micro_batching_gives_the_same_statistics_and_update(trainer):
    """The one-sync bookkeeping weights each micro-batch by its token share: 8 passes of 1 episode give the
    statistics and the weights of one pass of 8."""
    (a, ro_a), (b, ro_b) = trainer(micro_batch_size=1), trainer(micro_batch_size=0)
    assert torch.equal(ro_a.input_ids, ro_b.input_ids)
    sa, sb = a.minibatch_step(ro_a, list(range(8))), b.minibatch_step(ro_b, list(range(8)))
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k] == pytest.approx(sb[k], rel=1e-4, abs=1e-6), k
    assert sa["ppo/ratio_max"] == pytest.approx(1.0, abs=1e-4)  # first step from the rollout's weights
    for pa, pb in zip(a.policy.parameters(), b.policy.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-6)


def record_minibatch_steps(monkeypatch) -> list[dict[str, float]]:
    """The statistics each ``minibatch_step`` returns from now on, in order."""
    seen = []
    step = PPOTrainer.minibatch_step

    def recording(self, *a):
        seen.append(step(self, *a))
        return seen[-1]
    monkeypatch.setattr(PPOTrainer, "minibatch_step", recording)
    return seen


def test_an_iterations_ratio_max_is_the_largest_of_its_minibatches_the_rest_their_mean(trainer, monkeypatch):
    """ppo/ratio_max was averaged over the iteration's minibatches like the losses: below the ratio the
    guard saw (1.18 for a largest 1.35 in one run)."""
    t, ro = trainer(minibatch_size=4, ppo_epochs=2, lr=1e-2)
    seen = record_minibatch_steps(monkeypatch)
    stats = t.learn(ro)
    assert len(seen) == 4 and len({s["ppo/ratio_max"] for s in seen}) > 1
    assert stats["ppo/ratio_max"] == max(s["ppo/ratio_max"] for s in seen)
    assert stats["ppo/approx_kl"] == pytest.approx(sum(s["ppo/approx_kl"] for s in seen) / 4)


@pytest.mark.parametrize("value_model", ["separate", "shared"])
def test_value_warmup_trains_the_value_function_alone(tmp_path, tiny_gpt2, value_model):
    """value_warmup_iterations=2: two iterations step the value function only (the policy, its EMA and the
    policy's learning-rate warm-up wait); the third trains both."""
    write_jsonl(tmp_path / "prompts.jsonl", [{"id": str(i), "text": f"say {i}\n", "user_id": "u"} for i in range(8)])
    cfg = config.from_dict(PPOConfig, dict(policy=str(tiny_gpt2), reward_fn="tests.ppo_rewards:count_e",
                                           prompts=str(tmp_path / "prompts.jsonl"), out_dir=str(tmp_path / "out"),
                                           batch_size=8, minibatch_size=4, ppo_epochs=1, max_new_tokens=6, lr=1e-3,
                                           warmup_iterations=2, iterations=4, value_warmup_iterations=2,
                                           value_model=value_model, adaptive_kl=True, kl_horizon=16,
                                           progress=False, seed=3))
    t = PPOTrainer(cfg)
    snapshot = lambda m: {k: v.clone() for k, v in m.state_dict().items()}  # noqa: E731
    policy0, ema0, value0 = snapshot(t.policy), snapshot(t.ema_model), snapshot(t.value)
    rows, value_lrs = [], []
    for _ in range(2):
        rows.append(t.step()[0])
        value_lrs.append(t.optimizer.param_groups[1]["lr"])
    for name, tensor in snapshot(t.policy).items():
        assert torch.equal(tensor, policy0[name]), name
    for name, tensor in snapshot(t.ema_model).items():
        assert torch.equal(tensor, ema0[name]), name
    assert t.ema_updates == 0
    assert t.kl_ctl.value == cfg.kl_coef  # the adaptive KL controller waits for the policy too
    assert any(not torch.equal(v, value0[k]) for k, v in snapshot(t.value).items())
    for row in rows:
        assert row["ppo/policy_frozen"] == 1.0 and row["ppo/vf_loss"] > 0
        assert not {"ppo/pg_loss", "ppo/entropy", "ppo/clipfrac", "ppo/approx_kl"} & row.keys()
    # the value's learning rate warms up from the start (1e-3 x 0.1, then x (0.1 + 0.9 / 2)); the policy's waits
    assert value_lrs == pytest.approx([1e-4, 5.5e-4])
    assert [r["ppo/lr"] for r in rows] == pytest.approx([1e-4, 1e-4])
    row = t.step()[0]
    assert row["ppo/lr"] == pytest.approx(1e-4) and t.optimizer.param_groups[1]["lr"] == pytest.approx(1e-3)
    assert "ppo/policy_frozen" not in row and "ppo/entropy" in row
    assert any(not torch.equal(v, policy0[k]) for k, v in snapshot(t.policy).items())
    assert t.ema_updates == 2  # two minibatches of 4
    assert t.kl_ctl.value != cfg.kl_coef


def test_value_warmup_must_leave_iterations_for_the_policy(tmp_path):
    with pytest.raises(config.ConfigError, match="value_warmup_iterations: must be in \\[0, iterations=5\\)"):
        config.from_dict(PPOConfig, dict(policy="p", reward_fn="m:f", prompts="p.jsonl", out_dir=str(tmp_path),
                                         iterations=5, value_warmup_iterations=5))


def test_rloo_samples_each_prompt_k_times_and_judges_each_response_by_the_others(trainer):
    """advantage_estimator=rloo, samples_per_prompt=4: 8 episodes are 2 prompts x 4 responses; a response's
    advantage is its return (score - kl_coef x summed KL) minus the mean return of the other 3, on each of its
    tokens, whitened; there is no value model, loss or statistic."""
    t, ro = trainer(advantage_estimator="rloo", samples_per_prompt=4, kl_coef=0.1, temperature=1.0)
    assert ro.prompts[:4] == [ro.prompts[0]] * 4 and ro.prompts[4:] == [ro.prompts[4]] * 4
    assert ro.prompts[0] != ro.prompts[4] and t.prompt_position == 2
    assert t.value is None and t.trained == [t.policy] and len(t.optimizer.param_groups) == 1
    # scores and a reference that disagrees with the policy, chosen here so every term counts
    ro.scores = torch.tensor([1.0, 0.0, 2.0, 0.0, 3.0, 3.0, 1.0, 0.0])
    ro.ref_logprobs = ro.logprobs - 0.3 * torch.arange(8.0)[:, None] * ro.mask
    t.compute_advantages(ro)
    returns = ro.scores - 0.1 * 0.3 * torch.arange(8.0) * ro.mask.sum(-1)
    groups = returns.view(2, 4)
    adv = (groups - (groups.sum(-1, keepdim=True) - groups) / 3).view(-1)
    real = ro.mask.bool()
    per_token = adv[:, None].expand_as(ro.mask)[real]
    torch.testing.assert_close(ro.advantages[real], (per_token - per_token.mean()) / per_token.std())
    assert (ro.advantages[~real] == 0).all()
    before = [p.clone() for p in t.policy.parameters()]
    stats = t.minibatch_step(ro, list(range(8)))
    assert not {"ppo/vf_loss", "ppo/vf_clipfrac"} & stats.keys() and math.isfinite(stats["ppo/pg_loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, t.policy.parameters()))


@pytest.mark.parametrize("options, message", [
    (dict(advantage_estimator="rloo"), "rloo needs samples_per_prompt >= 2"),
    (dict(samples_per_prompt=3), "samples_per_prompt: must be >= 1 and divide batch_size=8, got 3"),
    (dict(advantage_estimator="rloo", samples_per_prompt=2, value_warmup_iterations=1), "no value function"),
    (dict(advantage_estimator="grpo"), "'grpo' is not gae or rloo"),
    (dict(advantage_estimator="rloo", samples_per_prompt=2, value_model="shared"),
     r"^value_model: rloo has no value function and no GAE, so value_model='shared' would do nothing; leave it at"),
    (dict(advantage_estimator="rloo", samples_per_prompt=2, vf_coef=0.5, lam=0.9),
     r"^vf_coef, lam: rloo .* so vf_coef=0.5, lam=0.9 would do nothing; leave them at the default"),
])
def test_rloo_options_are_checked(tmp_path, options, message):
    with pytest.raises(config.ConfigError, match=message):
        config.from_dict(PPOConfig, dict(policy="p", reward_fn="m:f", prompts="p.jsonl", out_dir=str(tmp_path),
                                         batch_size=8, minibatch_size=4, **options))


# ---------------------------------------------------------------- the rollout's pass reused by the first step

def ppo_trainer(tmp_path, policy, **kw) -> PPOTrainer:
    """A trainer on 8 prompts, 8 episodes an iteration, one epoch of one minibatch unless ``kw`` says more."""
    tmp_path.mkdir(exist_ok=True)
    write_jsonl(tmp_path / "prompts.jsonl", [{"id": str(i), "text": f"say {i}\n", "user_id": "u"} for i in range(8)])
    return PPOTrainer(config.from_dict(PPOConfig, dict(
        policy=str(policy), reward_fn="tests.ppo_rewards:distinct_characters", prompts=str(tmp_path / "prompts.jsonl"),
        out_dir=str(tmp_path / "out"), **{"batch_size": 8, "minibatch_size": 8, "ppo_epochs": 1, "max_new_tokens": 6,
                                          "temperature": 1.0, "lr": 1e-3, "warmup_iterations": 0, "progress": False,
                                          "ema": False, "seed": 3, **kw})))


def without_reuse(monkeypatch) -> None:
    """Every update pass recomputed: the rollout keeps no pass (its arithmetic before the reuse)."""
    monkeypatch.setattr(PPOTrainer, "kept_positions", lambda self, n: [])


@pytest.mark.parametrize("options", [
    dict(ppo_epochs=2),                                           # the separate value model
    dict(value_model="shared", ppo_epochs=2),
    dict(advantage_estimator="rloo", samples_per_prompt=4, ppo_epochs=2),
    dict(micro_batch_size=3, ppo_epochs=2),                       # passes of 3, 3, 2: the first is kept
    dict(minibatch_size=4, ppo_epochs=2),
    dict(value_warmup_iterations=1, iterations=2, ppo_epochs=2),  # the value warm-up: the value model alone
    dict(value_warmup_iterations=1, iterations=2, value_model="shared", ppo_epochs=2),
    dict(gradient_checkpointing=True, ppo_epochs=2),
    dict(precision="bf16", ppo_epochs=2),                         # autocast
], ids=["separate", "shared", "rloo", "micro", "minibatches", "warmup", "warmup-shared", "checkpointing", "bf16"])
def test_reusing_the_rollouts_pass_gives_the_same_update_and_statistics(tmp_path, tiny_gpt2, monkeypatch, options):
    """The first step's forward pass, made by the rollout with autograd and kept, gives the weights and the
    logged statistics of an iteration that recomputes it."""
    reused = ppo_trainer(tmp_path / "a", tiny_gpt2, **options)
    start = [[p.detach().clone() for p in m.parameters()] for m in reused.trained]
    metrics_a, ro_a = reused.step()
    without_reuse(monkeypatch)
    again = ppo_trainer(tmp_path / "b", tiny_gpt2, **options)
    metrics_b, ro_b = again.step()
    assert torch.equal(ro_a.input_ids, ro_b.input_ids) and ro_a.kept is None
    assert {k for k in metrics_a if not k.startswith("time/")} == {k for k in metrics_b if not k.startswith("time/")}
    for k in metrics_a:
        if not k.startswith("time/"):
            assert metrics_a[k] == pytest.approx(metrics_b[k], rel=1e-5, abs=1e-7), k
    moved = []
    for m_a, m_b, m_0 in zip(reused.trained, again.trained, start):
        for pa, pb in zip(m_a.parameters(), m_b.parameters()):
            torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-7)
        moved.append(any(not torch.equal(pa, p0) for pa, p0 in zip(m_a.parameters(), m_0)))
    # the comparison is of an update: of the policy (not in the warm-up) and of the value function
    assert moved == [not options.get("value_warmup_iterations")] + [True] * (len(moved) - 1)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("value_model", ["separate", "shared"])
def test_reusing_the_rollouts_pass_on_llama_and_qwen2(tmp_path, tokenizer_dir, monkeypatch, arch, value_model):
    """The kept pass on the Llama family (rotary positions, grouped-query attention, RMSNorm): the same update
    as recomputing it, and one minibatch fewer through the policy."""
    from transformers import AutoTokenizer
    policy = make_model(tmp_path / arch, arch, tokenizer=AutoTokenizer.from_pretrained(str(tokenizer_dir)))
    reused = ppo_trainer(tmp_path / "a", policy, value_model=value_model, minibatch_size=4, ppo_epochs=2)
    counted = EpisodeCounter(reused.policy)
    generate = reused.backend.generate

    def sample(*a, **kw):  # sampling's passes are not counted
        out = generate(*a, **kw)
        counted.with_grad = counted.without_grad = 0
        return out
    reused.backend.generate = sample
    reused.step()
    assert (counted.with_grad, counted.without_grad) == (4 + 12, 4)  # 8 without autograd when recomputed
    without_reuse(monkeypatch)
    again = ppo_trainer(tmp_path / "b", policy, value_model=value_model, minibatch_size=4, ppo_epochs=2)
    again.step()
    for m_a, m_b in zip(reused.trained, again.trained):
        for pa, pb in zip(m_a.parameters(), m_b.parameters()):
            torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-7)


class EpisodeCounter:
    """Episodes through ``module``'s forward pass (a forward pre-hook), by whether autograd was on."""

    def __init__(self, module: torch.nn.Module):
        self.with_grad = self.without_grad = 0
        module.register_forward_pre_hook(self.count, with_kwargs=True)

    def count(self, module, args, kwargs):
        n = (kwargs.get("input_ids") if "input_ids" in kwargs else args[0]).shape[0]
        if torch.is_grad_enabled():
            self.with_grad += n
        else:
            self.without_grad += n


@pytest.mark.parametrize("value_model", ["separate", "shared"])
def test_an_iteration_forwards_one_minibatch_fewer_episodes(tmp_path, tiny_gpt2, value_model):
    """8 episodes, minibatches of 4, 2 epochs: the rollout scores 8 episodes (4 of them, the first minibatch,
    with autograd), the update forwards 4 x 4 less the 4 it reuses: 20 through the policy, not 24, and as
    many through the value model."""
    t = ppo_trainer(tmp_path, tiny_gpt2, minibatch_size=4, ppo_epochs=2, value_model=value_model)
    counted = [EpisodeCounter(t.policy)] + ([EpisodeCounter(t.value.backbone)] if value_model == "separate" else [])
    generate = t.backend.generate

    def sample(*a, **kw):  # sampling's passes are not counted
        out = generate(*a, **kw)
        for c in counted:
            c.with_grad = c.without_grad = 0
        return out
    t.backend.generate = sample
    t.step()
    for c in counted:
        assert (c.with_grad, c.without_grad) == (4 + 12, 4), (c.with_grad, c.without_grad)


def test_the_first_step_starts_from_a_ratio_of_exactly_one(tmp_path, tiny_gpt2, monkeypatch):
    """The first minibatch's log-probs are the rollout's own (one pass), so its ratio is exactly 1: no
    clipping and no KL from the forward pass being repeated on another batch shape."""
    t = ppo_trainer(tmp_path, tiny_gpt2, minibatch_size=2, ppo_epochs=1)
    seen = record_minibatch_steps(monkeypatch)
    t.step()
    assert len(seen) == 4
    assert (seen[0]["ppo/ratio_max"], seen[0]["ppo/approx_kl"], seen[0]["ppo/clipfrac"]) == (1.0, 0.0, 0.0)


@pytest.mark.parametrize("stage, error", [("_check_rollout", PPOGuardError), ("compute_advantages", KeyboardInterrupt)])
def test_a_kept_pass_is_released_when_the_iteration_stops_before_learning(tmp_path, tiny_gpt2, monkeypatch, stage,
                                                                          error):
    """A guard or an interrupt between the rollout and the update: the kept pass's graph is not held by the
    error's traceback (the iteration's frames) until the next iteration."""
    t = ppo_trainer(tmp_path, tiny_gpt2)
    kept = []
    policy_pass = PPOTrainer._policy_pass

    def recording(self, *a):
        out = policy_pass(self, *a)
        kept.append(weakref.ref(out[2].logits))
        return out

    def stopping(self, ro):
        raise error("stop")
    monkeypatch.setattr(PPOTrainer, "_policy_pass", recording)
    monkeypatch.setattr(PPOTrainer, stage, stopping)
    with pytest.raises(error) as stopped:
        t.step()
    gc.collect()
    assert stopped.traceback and len(kept) == 1 and kept[0]() is None
