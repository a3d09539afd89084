"""PPO and PPO-ptx end to end on a tiny model."""

import json
import random

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import WORDS, toy_corpus, write_jsonl
from instructgpt import config
from instructgpt.config import ConfigError
from instructgpt.batching import Encoded
from instructgpt.models import load_policy, load_tokenizer
from instructgpt.lm import load_corpus, pack_blocks
from instructgpt.ppo import PPOConfig, PPOGuardError, train_ppo
from instructgpt.sft import SFTConfig, mean_lm_loss, train_sft


@pytest.fixture(scope="module")
def sft_policy(tmp_path_factory, tiny_gpt2):
    """The tiny GPT-2 after a little SFT on short lists of words."""
    d = tmp_path_factory.mktemp("ppo_sft")
    rng = random.Random(3)
    rows = []
    for _ in range(200):
        words = " ".join(rng.choice(WORDS[:8]) for _ in range(rng.randint(2, 5)))
        rows.append({"prompt": f"say {rng.choice(WORDS[8:16])}\n", "response": words})
    write_jsonl(d / "demos.jsonl", rows)
    cfg = config.from_dict(SFTConfig, dict(model=str(tiny_gpt2), train=str(d / "demos.jsonl"), out_dir=str(d / "sft"),
                                           lr=3e-3, epochs=3, batch_size=16, dropout=0.0, progress=False))
    train_sft(cfg)
    prompts = [{"id": str(i), "text": f"say {w}\n", "user_id": f"u{i % 5}", "use_case": "generation"}
               for i, w in enumerate(WORDS[8:16] * 4)]
    write_jsonl(d / "prompts.jsonl", prompts)
    (d / "pretrain.txt").write_text("\n\n".join(toy_corpus(300, seed=5)))
    (d / "heldout.txt").write_text("\n\n".join(toy_corpus(60, seed=6)))
    return d


def ppo_cfg(d, out, **kw) -> PPOConfig:
    base = dict(policy=str(d / "sft"), reward_fn="tests.ppo_rewards:count_e", prompts=str(d / "prompts.jsonl"),
                out_dir=str(out), iterations=30, batch_size=16, minibatch_size=8, ppo_epochs=2, lr=2e-3,
                warmup_iterations=2, max_new_tokens=8, kl_coef=0.02, progress=False, ema=False, save_every=0)
    base.update(kw)
    return config.from_dict(PPOConfig, base)


def mean(xs):
    return sum(xs) / len(xs)


def assert_cut_run_resumes_to_the_same_files(d, tmp_path, common: dict, cut_at: int, files: tuple[str, ...]) -> None:
    """A run cut (KeyboardInterrupt) after iteration ``cut_at`` and resumed ends with the tensors of the
    uninterrupted run in ``tmp_path / "full"``."""
    def crash(iteration):
        if iteration == cut_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_ppo(ppo_cfg(d, tmp_path / "cut", **common), on_iteration=crash)
    changed = {**common, "kl_coef": common.get("kl_coef", 0.02) * 2}
    with pytest.raises(ConfigError, match="--resume with changed options: kl_coef"):  # the checkpoint's options
        train_ppo(ppo_cfg(d, tmp_path / "cut", resume=True, **changed))
    train_ppo(ppo_cfg(d, tmp_path / "cut", resume=True, **common))
    for sub in files:
        a, b = load_file(str(tmp_path / "full" / sub)), load_file(str(tmp_path / "cut" / sub))
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_ppo_raises_programmatic_reward_with_bounded_kl(tmp_path, sft_policy):
    result = train_ppo(ppo_cfg(sft_policy, tmp_path / "ppo"))
    scores = [h["ppo/score"] for h in result.history]
    kls = [h["ppo/kl"] for h in result.history]
    assert mean(scores[-5:]) > mean(scores[:5]) + 0.5, scores
    assert max(kls) < 20.0, kls
    for key in ("ppo/entropy", "ppo/clipfrac", "ppo/approx_kl", "ppo/vf_loss", "ppo/explained_variance",
                "ppo/response_length", "ppo/eos_fraction", "time/generate", "time/learn", "time/score"):
        assert key in result.history[-1]
    samples = [json.loads(l) for l in (tmp_path / "ppo" / "samples.jsonl").read_text().splitlines()]
    assert samples and {"prompt", "response", "score"} <= set(samples[0])
    assert (tmp_path / "ppo" / "value_model" / "reward_model.json").exists()
    load_policy(tmp_path / "ppo")  # the final policy is a plain HF folder


def test_larger_kl_coef_ends_with_smaller_kl(tmp_path, sft_policy):
    low = train_ppo(ppo_cfg(sft_policy, tmp_path / "low", iterations=20, kl_coef=0.0))
    high = train_ppo(ppo_cfg(sft_policy, tmp_path / "high", iterations=20, kl_coef=1.0))
    kl_low = mean([h["ppo/kl"] for h in low.history[-5:]])
    kl_high = mean([h["ppo/kl"] for h in high.history[-5:]])
    assert kl_high < kl_low, (kl_low, kl_high)


def test_ppo_ptx_keeps_pretraining_loss_lower(tmp_path, sft_policy):
    d = sft_policy
    tok = load_tokenizer(d / "sft")
    heldout = [Encoded([], row.tolist()) for row in pack_blocks(tok, load_corpus(d / "heldout.txt"), 32)]
    train_ppo(ppo_cfg(d, tmp_path / "ppo", iterations=12, ptx_coef=0.0))
    train_ppo(ppo_cfg(d, tmp_path / "ptx", iterations=12, ptx_coef=1.0, pretrain_data=str(d / "pretrain.txt"),
                      ptx_seq_len=32, ptx_token_ratio=2.0))
    loss = {name: mean_lm_loss(load_policy(tmp_path / name), heldout, tok.pad_token_id, "cpu", response_only=False)
            for name in ("ppo", "ptx")}
    assert loss["ptx"] < loss["ppo"], loss


def test_the_ptx_loss_is_the_next_token_nll_of_its_blocks_and_unembeds_their_predicting_positions(tmp_path,
                                                                                                    sft_policy):
    """PPO-ptx's pretraining term: ptx_coef x the mean next-token NLL of the blocks drawn, with the
    gradients of the full forward; the unembedding runs at each block's seq_len - 1 predicting
    positions (it ran at all seq_len, and the loss's gradient was scattered into a (B, T, V) zero tensor)."""
    from instructgpt.ppo import PPOTrainer
    trainer = PPOTrainer(ppo_cfg(sft_policy, tmp_path / "ptx", ptx_coef=0.5, pretrain_data=str(sft_policy / "pretrain.txt"),
                                 ptx_seq_len=16, ptx_token_ratio=1.0))
    drawn, next_blocks = [], trainer.ptx.next
    trainer.ptx.next = lambda n: drawn.append(next_blocks(n)) or drawn[-1]
    seen = []
    trainer.policy.get_output_embeddings().register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape)))
    trainer.policy.train()
    loss, nonfinite = trainer._ptx_backward(rl_tokens=40.0)               # ceil(1.0 x 40 / 16) = 3 blocks
    grads = [p.grad.clone() for p in trainer.policy.parameters()]

    ids = torch.stack(list(drawn[0]))                                       # (3, 16)
    assert ids.shape == (3, 16) and nonfinite == 0.0
    assert seen == [(1, 3 * 15, trainer.policy.config.vocab_size)]          # not (3, 16, V)
    trainer.policy.zero_grad(set_to_none=True)
    logits = trainer.policy(input_ids=ids).logits                           # (3, 16, V)
    want = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    (0.5 * want).backward()
    assert loss == pytest.approx(want.item(), rel=1e-5)
    for p, g in zip(trainer.policy.parameters(), grads):
        torch.testing.assert_close(g, p.grad, atol=1e-6, rtol=1e-4)


def test_ptx_blocks_longer_than_the_policy_context_are_a_config_error(tmp_path, sft_policy, monkeypatch):
    """The tiny GPT-2 has 128 positions: 200-token pretraining blocks are refused before any model loads
    (they were an IndexError in the embedding after the first rollout)."""
    import instructgpt.ppo as ppo
    monkeypatch.setattr(ppo, "trained_policy", lambda *a, **k: pytest.fail("a model was loaded"))
    cfg = ppo_cfg(sft_policy, tmp_path / "ppo", iterations=1, ptx_coef=1.0,
                  pretrain_data=str(sft_policy / "pretrain.txt"), ptx_seq_len=200)
    with pytest.raises(ConfigError, match=r"ptx_seq_len: 200 tokens per pretraining block, over the policy's 128 "
                                          r"positions \(max_position_embeddings in the model config\)"):
        train_ppo(cfg)


def test_a_reference_with_another_vocabulary_is_a_config_error(tmp_path, sft_policy, monkeypatch):
    """The KL reference scores the policy's token ids: one reading another vocabulary gave a KL of
    nonsense without a word; now refused before any model loads."""
    import instructgpt.ppo as ppo
    from tests.conftest import make_model, make_tokenizer
    other = make_model(tmp_path / "other", "gpt2", tokenizer=make_tokenizer(tmp_path / "tok", vocab_size=300))
    monkeypatch.setattr(ppo, "trained_policy", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(ConfigError, match=r"reference: .*other reads another vocabulary \(300 tokens\) than the "
                                          r"policy .*sft \(258\)"):
        train_ppo(ppo_cfg(sft_policy, tmp_path / "ppo", iterations=1, reference=str(other)))


def test_ppo_kill_and_resume_gives_the_same_weights(tmp_path, sft_policy):
    common = dict(iterations=6, save_every=2, ema=True, adaptive_kl=True, target_kl=1.0,
                  pretrain_data=str(sft_policy / "pretrain.txt"), ptx_coef=0.5, ptx_seq_len=32, ptx_token_ratio=1.0)
    train_ppo(ppo_cfg(sft_policy, tmp_path / "full", **common))
    assert_cut_run_resumes_to_the_same_files(sft_policy, tmp_path, common, 5, (
        "model.safetensors", "policy_raw/model.safetensors", "value_model/model.safetensors"))
    its = [json.loads(l)["step"] for l in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert its == [1, 2, 3, 4, 5, 6]


def test_diverging_update_stops_with_a_clear_error(tmp_path, sft_policy):
    with pytest.raises(PPOGuardError, match="ratio"):
        train_ppo(ppo_cfg(sft_policy, tmp_path / "bad", iterations=3, lr=5.0, ratio_guard=1.5, save_every=1))


def test_sample_writes_k_distinct_responses_as_ranking_tasks(tmp_path, sft_policy):
    from instructgpt.sample import SampleConfig, run_sample
    out = tmp_path / "tasks.jsonl"
    cfg = config.from_dict(SampleConfig, dict(policy=str(sft_policy / "sft"), prompts=str(sft_policy / "prompts.jsonl"),
                                              out=str(out), k=5, limit=6, max_new_tokens=8))
    result = run_sample(cfg)
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(rows) == 6 and all(len(r["responses"]) == 5 for r in rows)
    assert result["duplicated"] == sum(len(set(" ".join(x.split()) for x in r["responses"])) < 5 for r in rows)
    assert all(r["prompt_id"] and r["prompt"].startswith("say ") for r in rows)
    assert all("split" not in r for r in rows)  # the prompts carry none
    # prompts with a split: each task carries it, so the labeling app exports valid/test apart from train
    split_prompts = write_jsonl(tmp_path / "split.jsonl", [
        {"id": f"s{i}", "text": f"say {w}\n", "user_id": f"u{i}", "split": ("train", "valid")[i % 2]}
        for i, w in enumerate(["red", "blue", "green", "cat"])])
    run_sample(config.from_dict(SampleConfig, dict(policy=str(sft_policy / "sft"), prompts=str(split_prompts),
                                                   out=str(out), k=4, max_new_tokens=4)))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["split"] for r in rows] == ["train", "valid", "train", "valid"]


def test_response_logits_match_the_full_forward(tiny_gpt2):
    from instructgpt.models import position_ids_from_mask
    from instructgpt.ppo_forward import response_logits
    model = load_policy(tiny_gpt2).eval()
    ids = torch.randint(3, 100, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # a left-padded prompt
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
        torch.testing.assert_close(response_logits(model, ids, mask, 5), full[:, 4:-1])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_the_unembedding_runs_at_the_response_predicting_columns_only(tmp_path, arch):
    """PPO's passes unembed the R columns that predicted response tokens, not R + 1 (whose last one a
    slice then dropped, zero-filling and copying a (B, R + 1, V) gradient in every backward pass)."""
    from instructgpt.ppo_forward import ValueHead, response_logits, response_logits_and_values
    from tests.conftest import make_model
    model = load_policy(make_model(tmp_path / arch, arch)).train()
    seen = []

    def unembedding(module, args, out):
        seen.append(tuple(args[0].shape))
        out.register_hook(lambda g: seen.append(("grad",) + tuple(g.shape)))
    model.get_output_embeddings().register_forward_hook(unembedding)
    ids = torch.randint(3, 100, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    head = ValueHead(model.config.hidden_size)
    response_logits(model, ids, mask, 5).sum().backward()
    response_logits_and_values(model, head, ids, mask, 5)[0].sum().backward()
    H, V = model.config.hidden_size, model.config.vocab_size
    assert seen == [(3, 7, H), ("grad", 3, 7, V)] * 2


def test_value_model_from_the_reward_model_predicts_normalised_scores(tiny_gpt2):
    """The value model starts as the reward model: read at the last real token it gives the score PPO's
    returns hold, normalising bias included (not the bare head output, off by reward_bias)."""
    from instructgpt.models import last_token_index
    from instructgpt.reward_model import RewardModel
    rm = RewardModel.from_policy(tiny_gpt2).eval()
    with torch.no_grad():
        rm.head.bias.fill_(0.5)
        rm.reward_bias.fill_(-3.0)
    ids = torch.randint(3, 100, (3, 10))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # a left-padded prompt
    mask[1, 7:] = 0  # a right-padded response
    with torch.no_grad():
        values = rm.values(ids, mask)
        scores = rm(ids, mask)
    torch.testing.assert_close(values[torch.arange(3), last_token_index(mask)], scores)


def test_ppo_entropy_is_that_of_the_sampling_distribution(tmp_path, tiny_gpt2, monkeypatch):
    """ppo/entropy at temperature 0.5 is the entropy of softmax(logits / 0.5), the distribution the
    responses were sampled from (and the log-probs are read from), over real response tokens."""
    from instructgpt.ppo import PPOTrainer
    prompts = [{"id": str(i), "text": f"say {w}\n", "user_id": f"u{i}", "use_case": "generation"}
               for i, w in enumerate(WORDS[:4])]
    write_jsonl(tmp_path / "prompts.jsonl", prompts)
    cfg = config.from_dict(PPOConfig, dict(policy=str(tiny_gpt2), reward_fn="tests.ppo_rewards:count_e",
                                           prompts=str(tmp_path / "prompts.jsonl"), out_dir=str(tmp_path / "ppo"),
                                           batch_size=4, minibatch_size=4, max_new_tokens=5, temperature=0.5,
                                           progress=False, generation_backend="builtin"))
    trainer = PPOTrainer(cfg)
    ro, _ = trainer.rollout(trainer.next_prompts())
    ro.mask[0, 2:] = 0  # a shorter response: its padding does not count
    trainer.compute_advantages(ro)
    with torch.no_grad():
        logits, _ = trainer.logits_and_values(ro.input_ids, ro.attention_mask, ro.P)
        logp = torch.log_softmax(logits / 0.5, -1)
        expected = ((-(logp.exp() * logp).sum(-1)) * ro.mask).sum() / ro.mask.sum()
    for m in trainer.trained:
        m.train()
    calls = []
    log_softmax = torch.log_softmax
    monkeypatch.setattr(torch, "log_softmax", lambda *a, **k: calls.append(1) or log_softmax(*a, **k))
    stats = trainer.minibatch_step(ro, [0, 1, 2, 3])
    assert stats["ppo/entropy"] == pytest.approx(expected.item(), rel=1e-5)
    assert len(calls) == 1  # the entropy reads the loss's log-softmax: one pass over (B, R, V), not two


def test_the_no_eos_penalty_enters_the_returns_and_ppo_score_stays_the_reward_models(tmp_path, tiny_gpt2):
    """no_eos_penalty=-2 lowers the return of every response cut at max_new_tokens by 2, and only
    those; ppo/score (and samples.jsonl) keep the reward's own score (before, the penalty was
    folded into it, so a run with the penalty on could not be compared with one without)."""
    from instructgpt.ppo import PPOTrainer
    prompts = [{"id": str(i), "text": f"say {w}\n", "user_id": f"u{i}", "use_case": "generation"}
               for i, w in enumerate(WORDS[:8])]
    write_jsonl(tmp_path / "prompts.jsonl", prompts)
    cfg = config.from_dict(PPOConfig, dict(policy=str(tiny_gpt2), reward_fn="tests.ppo_rewards:count_e",
                                           prompts=str(tmp_path / "prompts.jsonl"), out_dir=str(tmp_path / "ppo"),
                                           batch_size=8, minibatch_size=8, max_new_tokens=3, kl_coef=0.0, lam=1.0,
                                           no_eos_penalty=-2.0, progress=False, generation_backend="builtin"))
    trainer = PPOTrainer(cfg)
    ro, _ = trainer.rollout(trainer.next_prompts())
    ro.ended[:2] = True  # both kinds of response in the batch, whatever the tiny model sampled
    ro.penalties = -2.0 * (~ro.ended).float()
    trainer.compute_advantages(ro)
    # gamma = lam = 1 and no KL: the return of a response's first token is its whole reward
    torch.testing.assert_close(ro.returns[:, 0], ro.scores + torch.where(ro.ended, 0.0, -2.0))
    assert trainer.rollout_metrics(ro)["ppo/score"] == pytest.approx(ro.scores.mean().item())
    fresh, _ = trainer.rollout(trainer.next_prompts())
    assert (~fresh.ended).any()
    torch.testing.assert_close(fresh.penalties, -2.0 * (~fresh.ended).float())
    assert fresh.scores.tolist() == [float(r.count("e")) for r in fresh.responses]


@pytest.mark.parametrize("fn, message", [("batch_mean", r"returned 1 scores for 4 responses"),
                                         ("nan_for_empty", r"returned nan for response 0")])
def test_a_reward_fn_must_give_one_finite_score_per_response(tmp_path, tiny_gpt2, fn, message):
    """A reward_fn returning one number for the batch was broadcast to every response (and ppo/score
    divided it by the batch size); a NaN surfaced later as a 'diverged update'. Both name reward_fn."""
    from instructgpt.ppo import PPOTrainer
    prompts = [{"id": str(i), "text": f"say {w}\n", "user_id": f"u{i}", "use_case": "generation"}
               for i, w in enumerate(WORDS[:4])]
    write_jsonl(tmp_path / "prompts.jsonl", prompts)
    cfg = config.from_dict(PPOConfig, dict(policy=str(tiny_gpt2), reward_fn=f"tests.ppo_rewards:{fn}",
                                           prompts=str(tmp_path / "prompts.jsonl"), out_dir=str(tmp_path / "ppo"),
                                           batch_size=4, minibatch_size=4, max_new_tokens=3, progress=False,
                                           generation_backend="builtin"))
    trainer = PPOTrainer(cfg)
    with pytest.raises(ValueError, match=rf"reward_fn: tests.ppo_rewards:{fn} {message}"):
        trainer.rollout(trainer.next_prompts())


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_shared_trunk_logits_match_the_policy_and_values_read_its_hidden_states(tmp_path, arch):
    from instructgpt.models import position_ids_from_mask
    from instructgpt.ppo_forward import ValueHead, response_logits, response_logits_and_values, shared_head_values
    from tests.conftest import make_model
    model = load_policy(make_model(tmp_path / arch, arch)).eval()
    head = ValueHead(model.config.hidden_size)
    ids = torch.randint(3, 100, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with torch.no_grad():
        logits, values = response_logits_and_values(model, head, ids, mask, 5)
        torch.testing.assert_close(logits, response_logits(model, ids, mask, 5))
        hidden = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                       output_hidden_states=True).hidden_states[-1]
        want = hidden[:, 4:-1] @ head.head.weight[0] + head.head.bias
        torch.testing.assert_close(values, want, atol=1e-5, rtol=1e-4)
    # the value warm-up's pass: the same values, with gradients for the head and none for the trunk
    frozen_trunk = shared_head_values(model, head, ids, mask, 5)
    torch.testing.assert_close(frozen_trunk, values)
    frozen_trunk.sum().backward()
    assert head.head.weight.grad is not None and all(p.grad is None for p in model.parameters())


def test_shared_value_head_learns_and_resumes(tmp_path, sft_policy):
    common = dict(value_model="shared", iterations=20, save_every=5, ema=True)
    result = train_ppo(ppo_cfg(sft_policy, tmp_path / "full", **common))
    scores = [h["ppo/score"] for h in result.history]
    ev = [h["ppo/explained_variance"] for h in result.history]
    assert mean(scores[-5:]) > mean(scores[:5]) + 0.5, scores
    assert mean(ev[-5:]) > mean(ev[:3]), ev  # the fresh head learns to predict returns
    out = tmp_path / "full"
    assert (out / "value_head.safetensors").exists() and not (out / "value_model").exists()
    assert_cut_run_resumes_to_the_same_files(sft_policy, tmp_path, common, 12, (
        "model.safetensors", "policy_raw/model.safetensors", "value_head.safetensors"))


def test_rloo_raises_the_reward_without_a_value_model_and_resumes(tmp_path, sft_policy):
    """advantage_estimator=rloo: 4 responses per prompt, each judged against the other 3; no value model is
    trained, saved or checkpointed, and a cut run resumes to the same weights."""
    common = dict(advantage_estimator="rloo", samples_per_prompt=4, iterations=20, save_every=5, ema=True)
    result = train_ppo(ppo_cfg(sft_policy, tmp_path / "full", **common))
    scores = [h["ppo/score"] for h in result.history]
    assert mean(scores[-5:]) > mean(scores[:5]) + 0.5, scores
    assert not {"ppo/vf_loss", "ppo/explained_variance"} & result.history[-1].keys()
    out = tmp_path / "full"
    assert not (out / "value_model").exists() and not (out / "value_head.safetensors").exists()
    assert json.loads((out / "instructgpt.json").read_text())["parameters"]["value"] == "none (rloo)"
    saved = load_file(str(out / "checkpoints" / "step-0000020" / "model.safetensors"))
    assert any(k.startswith("policy.") for k in saved) and not any(k.startswith("value.") for k in saved)
    assert_cut_run_resumes_to_the_same_files(sft_policy, tmp_path, common, 12, (
        "model.safetensors", "policy_raw/model.safetensors"))


def test_a_diverged_update_exits_2_with_its_message(tmp_path, sft_policy, capsys):
    """The guard's error reached the user as a traceback with exit code 1; the CLI promises 2 and a message."""
    from instructgpt.cli import main
    d = sft_policy
    args = ["ppo", f"policy={d / 'sft'}", "reward_fn=tests.ppo_rewards:count_e", f"prompts={d / 'prompts.jsonl'}",
            f"out_dir={tmp_path / 'ppo'}", "iterations=6", "batch_size=16", "minibatch_size=8", "ppo_epochs=2",
            "lr=0.05", "warmup_iterations=0", "max_new_tokens=8", "save_every=1", "progress=false", "ema=false",
            "ratio_guard=1.01"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "instructgpt ppo: error: ppo iteration" in err and "exceeds ratio_guard=1.01" in err
    assert "Traceback" not in err


def test_the_prompt_order_is_drawn_once_per_epoch_not_once_per_episode(monkeypatch):
    """next_prompts drew a permutation of every prompt for each episode: with a million prompts an epoch of
    PPO spent days permuting. The order is the same: epoch e's is permutation(n) of default_rng([seed, e])."""
    import types

    import numpy as np

    from instructgpt.ppo import PPOTrainer
    draws = []
    rng = np.random.default_rng
    monkeypatch.setattr(np.random, "default_rng", lambda seed: draws.append(seed) or rng(seed))
    trainer = object.__new__(PPOTrainer)
    trainer.cfg = types.SimpleNamespace(samples_per_prompt=2, batch_size=8, seed=3)
    trainer.prompt_ids, trainer.prompt_position, trainer.epoch_order = [[1]] * 10, 0, None
    got = [i for _ in range(5) for i in trainer.next_prompts()]  # 20 prompts: epochs 0 and 1
    expected = [int(i) for e in (0, 1) for i in rng([3, e]).permutation(10)]
    assert got == [i for i in expected for _ in range(2)]
    assert draws == [[3, 0], [3, 1]]
