"""``instructgpt eval`` (instructgpt.evaluate) on a tiny simulated world and tiny random models."""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from instructgpt import evaluate as ev
from instructgpt.config import ConfigError
from instructgpt.data import Prompt, Ranking, write_jsonl
from instructgpt.evaluation import EvalResults, check_claims
from instructgpt.evaluation.claims import VERDICTS

WORLD = {"seed": 3, "scale": 0.005, "corpus_docs": 300, "heldout_docs": 80, "n_toxicity_starts": 4,
         "n_bias": 8, "n_cloze": 24}
N_TEST = 40


def _save_gpt2(folder: Path, tokenizer, seed: int, width: int = 32, layers: int = 2) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=width, n_layer=layers, n_head=2,
                     eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                     pad_token_id=tokenizer.pad_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def make_run(root: Path, world_kwargs: dict = WORLD, n_test: int = N_TEST, vocab: int = 512,
             width: int = 32, layers: int = 2) -> tuple[Path, object]:
    """A fake run folder: world/config.json, data/prompts_test.jsonl, models/{base,sft,ppo,ppo_ptx,rm}."""
    from instructgpt.models import RewardModel
    from instructgpt.world import build_datasets, train_tokenizer
    data = build_datasets(**world_kwargs)
    (root / "world").mkdir(parents=True)
    (root / "world" / "config.json").write_text(json.dumps(asdict(data.config)))
    tok = train_tokenizer(data.tokenizer_texts(), vocab_size=vocab)
    models = root / "models"
    for i, name in enumerate(("base", "sft", "ppo", "ppo_ptx")):
        _save_gpt2(models / name, tok, seed=i, width=width, layers=layers)
    RewardModel.from_policy(models / "sft").save_pretrained(models / "rm", tok)
    metrics = [{"step": s, "time": 0.0, "ppo/score": 0.1 * s, "ppo/kl": 0.5 * s, "ppo/lr": 1e-5}
               for s in range(1, 5)]
    (models / "ppo" / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    test = [replace(p, split="test") for p in data.prompts["rm"][:n_test]]
    write_jsonl(root / "data" / "prompts_test.jsonl", test)
    return root, data


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"))


def _cfg(run_dir: Path, **kw) -> ev.EvalConfig:
    base = {"run_dir": str(run_dir), "n_prompts": N_TEST, "max_new_tokens": 12, "few_shot": 2,
            "device": "cpu", "batch_size": 64}
    base.update(kw)
    return ev.EvalConfig(**base)


# ----------------------------------------------------------------------------- the whole eval

def _run_with_oracle(run, **kw):
    """run_eval with ppo answering by the world's reference solver and sft answering garbage."""
    from instructgpt.world import solve
    run_dir, data = run
    real = ev.generate_responses
    mp = pytest.MonkeyPatch()

    def fake(spec, prompts, cfg, runner=None):
        if prompts and isinstance(prompts[0], Prompt):
            if spec.name == "ppo":
                return [solve(p, random.Random(i), data.world) for i, p in enumerate(prompts)]
            if spec.name == "sft":
                return ["Zorp? Blah blah what?" for _ in prompts]
        return real(spec, prompts, cfg, runner=runner)

    mp.setattr(ev, "generate_responses", fake)
    t0 = time.perf_counter()
    try:
        results = ev.run_eval(_cfg(run_dir, **kw))
    finally:
        mp.undo()
    return results, time.perf_counter() - t0


@pytest.fixture(scope="module")
def evaluated(run):
    return _run_with_oracle(run)


def test_run_eval_writes_results_and_report(run, evaluated):
    run_dir, _ = run
    _, seconds = evaluated
    assert (run_dir / "eval" / "results.json").is_file()
    assert (run_dir / "report.html").is_file() and (run_dir / "report.md").is_file()
    loaded = EvalResults.load(run_dir / "eval" / "results.json")
    assert [m.name for m in loaded.models] == ["base", "base_prompted", "sft", "ppo", "ppo_ptx"]
    assert {m.name: m.kind for m in loaded.models}["base_prompted"] == "base_prompted"
    assert loaded.baseline == "sft"
    assert seconds < 75, f"run_eval took {seconds:.1f}s"
    assert (run_dir / "eval" / "timings.json").is_file() and loaded.meta["eval_seconds"] > 0
    # The claims table: computed from the results by the report, summarised in meta.
    assert set(loaded.meta["claims"]) == set("abcdefg")
    assert all(v in VERDICTS for v in loaded.meta["claims"].values())
    assert [c.id for c in check_claims(loaded)] == list("abcdefg")
    html = (run_dir / "report.html").read_text()
    assert "Claims check" in html and "PPO-ptx outputs are preferred to SFT" in html
    # label tasks for real labelers: one per prompt, K = number of models, models named
    tasks = [json.loads(line) for line in (run_dir / "eval" / "label_tasks.jsonl").read_text().splitlines()]
    assert len(tasks) == N_TEST and all(sorted(t["models"]) == sorted(m.name for m in loaded.models)
                                        for t in tasks)


def test_every_estimate_is_sane(evaluated):
    results, _ = evaluated
    for m in results.models:
        if m.name == results.baseline:
            assert not m.win_rate
        else:
            assert set(m.win_rate) == {"training", "heldout"}
            for e in list(m.win_rate.values()) + list(m.use_case_win_rates.values()):
                assert 0 <= e.low <= e.value <= e.high <= 1
            assert len([c for c in m.comparisons if c.labelers == "heldout"]) == N_TEST
        assert set(m.metadata) <= set(ev.METADATA_FLAGS) and "fails_to_follow" in m.metadata
        for e in m.metadata.values():
            assert 0 <= e.low <= e.value <= e.high <= 1
        assert 1 <= m.likert.value <= 7 and m.likert.low <= m.likert.value <= m.likert.high
        ppl = m.pretraining["perplexity"]
        assert math.isfinite(ppl.value) and 1 < ppl.low <= ppl.value <= ppl.high
        acc = m.pretraining["cloze_accuracy"]
        assert 0 <= acc.low <= acc.value <= acc.high <= 1
        for key in ("truthfulqa_truthful", "toxicity_plain", "toxicity_respectful", "toxicity_biased",
                    "bias_entropy", "reward_model_score", "kl_to_sft"):
            e = m.benchmarks[key]
            assert math.isfinite(e.value) and e.low <= e.value <= e.high, (m.name, key)
        assert 0 <= m.benchmarks["bias_entropy"].value <= 1
    sft = results.model("sft")
    assert sft.benchmarks["kl_to_sft"].value == 0
    # hallucination is counted on closed-domain prompts only
    closed = set(ev.closed_domain_use_cases())
    n_closed = len({c.prompt_id for c in results.model("ppo").comparisons if c.use_case in closed})
    if n_closed:
        assert results.model("ppo").metadata["hallucination"].n == n_closed
    # base and base_prompted share weights: identical likelihood-based measures
    base, prompted = results.model("base"), results.model("base_prompted")
    assert base.pretraining["perplexity"] == prompted.pretraining["perplexity"]
    assert base.n_params == prompted.n_params == results.model("sft").n_params > 0
    assert set(results.agreement) >= {"training-training", "training-heldout"}
    for e in results.agreement.values():
        assert 0 <= e.low <= e.value <= e.high <= 1
    assert [r["ppo/score"] for r in results.training_curves["ppo"]] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert "ppo/lr" not in results.training_curves["ppo"][0]
    assert results.samples and all(set(s.outputs) == {m.name for m in results.models}
                                   for s in results.samples)


def test_reference_answers_beat_garbage(evaluated):
    results, _ = evaluated
    oracle, garbage = results.model("ppo"), results.model("sft")
    for group in ("training", "heldout"):
        assert oracle.win_rate[group].value > 0.85 and oracle.win_rate[group].low > 0.6
    ff_oracle, ff_garbage = oracle.metadata["fails_to_follow"], garbage.metadata["fails_to_follow"]
    assert ff_oracle.value < 0.3 and ff_garbage.value > 0.8
    assert ff_oracle.high < ff_garbage.low
    assert oracle.likert.value > garbage.likert.value + 1
    # claim (a)-style gap: the oracle beats ppo_ptx (a random model) head-to-head on win rate
    assert oracle.win_rate["training"].value > results.model("ppo_ptx").win_rate["training"].value


# ----------------------------------------------------------------------------- judging on hand-made inputs

class _StubLabeler:
    def verdict(self, prompt, response, world=None):
        return response

    def likert(self, verdict, rng):
        return 7 if verdict == "good" else 1

    def flags(self, verdict, response, rng):
        return [] if verdict == "good" else ["fails_to_follow", "hallucination"]


class _StubPanel:
    """compare: "good" beats anything else; two non-identical "ok"-style answers tie."""

    def compare(self, prompt, a, b, rng, heldout=True, world=None):
        if a == "good" and b != "good":
            return 1.0
        if b == "good" and a != "good":
            return 0.0
        return 0.5

    def assign(self, prompt_id, heldout=False):
        return _StubLabeler()


def _prompts(use_cases):
    return [Prompt(id=f"p{i}", text=f"Q{i}\n", user_id="u", use_case=uc) for i, uc in enumerate(use_cases)]


def test_judge_ties_and_use_cases_on_hand_made_inputs():
    prompts = _prompts(["chat", "chat", "chat", "chat", "closed_qa", "closed_qa"])
    responses = {
        "sft": ["bad", "good", "meh", "good", "bad", "bad"],
        "m": ["good", "bad", "meh-too", "good", "good", "good"],
    }
    j = ev.judge(prompts, responses, "sft", _StubPanel(), world=None, seed=0)
    m = j["m"]
    outcomes = [c.outcome for c in m.comparisons if c.labelers == "training"]
    # win, loss, tie (stub tie), tie (identical answers), win, win
    assert outcomes == [1.0, 0.0, 0.5, 0.5, 1.0, 1.0]
    assert m.win_rate["training"].value == pytest.approx(4 / 6)
    assert m.win_rate["heldout"].value == pytest.approx(4 / 6)
    assert m.use_case_win_rates["chat"].value == pytest.approx(0.5)
    assert m.use_case_win_rates["closed_qa"].value == pytest.approx(1.0)
    assert m.use_case_win_rates["chat"].n == 4 and m.use_case_win_rates["closed_qa"].n == 2
    for e in m.win_rate.values():
        assert 0 <= e.low <= e.value <= e.high <= 1
    assert j["sft"].comparisons == [] and j["sft"].win_rate == {}
    # metadata: fails_to_follow over all prompts, hallucination over closed-domain ones only
    assert m.metadata["fails_to_follow"].value == pytest.approx(2 / 6)
    assert m.metadata["hallucination"].value == 0.0 and m.metadata["hallucination"].n == 2
    assert j["sft"].metadata["hallucination"].value == 1.0
    assert j["sft"].metadata["fails_to_follow"].value == pytest.approx(4 / 6)
    assert m.raw["hallucination"].groups == ["p4", "p5"]
    assert m.likert.value == pytest.approx((7 * 4 + 1 * 2) / 6)


def test_judge_with_the_simulated_panel_prefers_solutions(run):
    from instructgpt.world import solve
    _, data = run
    prompts = data.prompts["ppo"][:30]
    assert all(ev.checkable(p) for p in prompts) and not ev.checkable(_prompts(["chat"])[0])
    good = [solve(p, random.Random(i), data.world) for i, p in enumerate(prompts)]
    bad = ["I do not know." for _ in prompts]
    j = ev.judge(prompts, {"sft": bad, "good": good}, "sft", data.panel, data.world, seed=1)
    assert j["good"].win_rate["heldout"].low > 0.6
    again = ev.judge(prompts, {"sft": bad, "good": good}, "sft", data.panel, data.world, seed=1)
    assert [c.outcome for c in again["good"].comparisons] == [c.outcome for c in j["good"].comparisons]


def test_label_comparisons_from_real_rankings():
    prompts = _prompts(["chat", "extract", "chat"])
    responses = {"sft": ["s0", "s1", "s2"], "ppo": ["p0", "p1", "p2"], "base": ["b0", "b1", "b2"]}
    rankings = [
        Ranking(prompt="Q0\n", responses=["b0", " p0 ", "s0"], ranking=[[1], [2], [0]], prompt_id="p0",
                labeler_id="H1"),
        Ranking(prompt="Q1\n", responses=["x", "y", "z"], ranking=[[0, 1], [2]], prompt_id="p1",
                meta={"models": ["ppo", "sft", "base"]}),
        Ranking(prompt="Q2\n", responses=["s2", "b2"], ranking=[[1], [0]], prompt_id="p2"),
        Ranking(prompt="?\n", responses=["s0", "p0"], ranking=[[0], [1]], prompt_id="unknown"),
    ]
    comps = ev.label_comparisons(rankings, prompts, responses, "sft")
    assert [(c.prompt_id, c.outcome) for c in comps["ppo"]] == [("p0", 1.0), ("p1", 0.5)]
    assert [(c.prompt_id, c.outcome) for c in comps["base"]] == [("p0", 0.0), ("p1", 0.0), ("p2", 1.0)]
    assert comps["ppo"][0].labelers == "human" and comps["ppo"][0].labeler_id == "H1"
    assert comps["ppo"][1].use_case == "extract"


# ----------------------------------------------------------------------------- pieces

def test_discover_models_and_config(run, tmp_path):
    run_dir, _ = run
    specs = ev.discover_models(run_dir, ["ppo_ptx-extra=" + str(run_dir / "models" / "ppo")], few_shot=3)
    assert list(specs) == ["base", "base_prompted", "sft", "ppo", "ppo_ptx", "ppo_ptx-extra"]
    assert specs["base_prompted"].prompted and specs["base_prompted"].path == specs["base"].path
    assert specs["ppo_ptx-extra"].kind == "ppo_ptx"
    assert "rm" not in specs
    assert "base_prompted" not in ev.discover_models(run_dir, few_shot=0)
    # a run started with --base-model has no models/base: run_config.json names the base
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "sft").symlink_to(run_dir / "models" / "sft", target_is_directory=True)
    (tmp_path / "run_config.json").write_text(json.dumps({"base_model": str(run_dir / "models" / "base")}))
    external = ev.discover_models(tmp_path, few_shot=1)
    assert list(external) == ["base", "base_prompted", "sft"]
    assert external["base"].path == str(run_dir / "models" / "base") and external["base"].n_params
    with pytest.raises(ConfigError, match="kind"):
        ev.discover_models(run_dir, ["mystery=" + str(run_dir / "models" / "ppo")])
    with pytest.raises(ConfigError):
        ev.EvalConfig(run_dir="").validate()
    with pytest.raises(ConfigError, match="name=path"):
        ev.EvalConfig(run_dir="x", models=["nopath"]).validate()
    with pytest.raises(ConfigError, match="baseline"):
        ev.run_eval(_cfg(run_dir, baseline="nope", out_dir=str(tmp_path)))


def test_generation_is_seeded_and_prefix_is_used(run):
    run_dir, data = run
    cfg = _cfg(run_dir)
    specs = ev.discover_models(run_dir, few_shot=2)
    pool = ev.ModelPool(torch.device("cpu"))
    demos = ev.few_shot_demos(data, 2, seed=0)
    assert len(demos) == 2
    prompts = ev.load_test_prompts(run_dir, 10)
    a = ev.generate_responses(specs["sft"], prompts, cfg, ev.PolicyRunner(specs["sft"], cfg, pool))
    b = ev.generate_responses(specs["sft"], prompts, cfg)
    assert list(a) == list(b) and all(r.ids for r in a)
    plain = ev.PolicyRunner(specs["base"], cfg, pool, demos)
    prompted = ev.PolicyRunner(specs["base_prompted"], cfg, pool, demos)
    assert plain.model is prompted.model  # loaded once
    assert specs["base"].n_params == sum(p.numel() for p in plain.model.parameters())
    text = prompts[0].text
    assert len(prompted.prompt_ids(text)) > len(plain.prompt_ids(text))
    assert prompted.prompt_ids(text)[-len(plain.prompt_ids(text)):] == plain.prompt_ids(text)
    assert prompted.prompt_ids(text, with_prefix=False) == plain.prompt_ids(text)


def test_continuation_logprobs_match_a_direct_forward(run):
    run_dir, _ = run
    cfg = _cfg(run_dir)
    spec = ev.discover_models(run_dir)["sft"]
    runner = ev.PolicyRunner(spec, cfg, ev.ModelPool(torch.device("cpu")))
    ctx, cont = runner.encode("The cat"), runner.encode(" sat down.", special=False)
    other = runner.encode("A much longer context, so that the batch needs padding here")
    lps = ev.continuation_logprobs(runner.model, [ctx, other], [cont, cont], runner.pad, max_rows=2)
    with torch.no_grad():
        ids = torch.tensor([ctx + cont])
        logp = torch.log_softmax(runner.model(input_ids=ids).logits[0, :-1], -1)
        direct = logp[torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1), torch.tensor(cont)]
    assert np.allclose(lps[0], direct.numpy(), atol=1e-5)
    assert lps[1].shape == (len(cont),)


def test_kl_is_zero_against_itself_and_reward_scores_are_per_sequence(run):
    run_dir, _ = run
    cfg = _cfg(run_dir)
    specs = ev.discover_models(run_dir)
    pool = ev.ModelPool(torch.device("cpu"))
    prompts = ev.load_test_prompts(run_dir, 6)
    sft = ev.PolicyRunner(specs["sft"], cfg, pool)
    ppo = ev.PolicyRunner(specs["ppo"], cfg, pool)
    resp = ppo.sample([p.text for p in prompts])
    assert ev.policy_kl(sft, sft, prompts, resp, 0.7) == pytest.approx([0.0] * 6, abs=1e-5)
    kl = ev.policy_kl(ppo, sft, prompts, resp, 0.7)
    assert len(kl) == 6 and all(math.isfinite(x) for x in kl)
    from instructgpt.models import RewardModel
    rm = RewardModel.from_pretrained(run_dir / "models" / "rm").eval()
    p_ids = [sft.prompt_ids(p.text) for p in prompts]
    r_ids = [sft.response_ids(r) for r in resp]
    batched = ev.reward_scores(rm, p_ids, r_ids, sft.pad, batch_size=4)
    single = [ev.reward_scores(rm, [p], [r], sft.pad)[0] for p, r in zip(p_ids, r_ids)]
    assert batched == pytest.approx(single, abs=1e-4)


def test_run_eval_with_real_labels(run, evaluated, tmp_path):
    """Labels exported by the labeling app (ranking JSONL, no model names) give "human" win rates."""
    run_dir, _ = run
    results, _ = evaluated
    tasks = [json.loads(line) for line in (run_dir / "eval" / "label_tasks.jsonl").read_text().splitlines()]
    order = {"ppo": 0, "sft": 2}  # the reference answers first, the garbage last, the rest tied between
    rows = []
    for t in tasks[:20]:
        groups: dict[int, list[int]] = {}
        for i, name in enumerate(t["models"]):
            groups.setdefault(order.get(name, 1), []).append(i)
        rows.append({"prompt": t["prompt"], "prompt_id": t["prompt_id"], "responses": t["responses"],
                     "ranking": [groups[k] for k in sorted(groups)], "labeler_id": "H-real"})
    labels = tmp_path / "rankings.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    again, _ = _run_with_oracle(run, labels=str(labels), out_dir=str(tmp_path / "eval"), few_shot=0,
                                heldout_tokens=256)
    assert "base_prompted" not in [m.name for m in again.models]
    ppo = again.model("ppo")
    assert ppo.win_rate["human"].value == 1.0 and ppo.win_rate["human"].n == 20
    assert again.win_rate("ppo", "human").value == 1.0
    tables = json.loads((tmp_path / "eval" / "human_labels.json").read_text())["tables"]
    assert "20 rankings" in again.meta["human_labels"]
    assert tables["ppo"]["n"] == 20 and set(tables) >= {"ppo", "ppo_ptx"}
    # base and base_prompted may give identical answers: identical texts count for both
    assert all(v["win_rate"]["value"] >= 0.5 for v in tables.values())
    # deterministic per seed: the same answers as the first run
    first = {s.prompt_id: s.outputs["ppo_ptx"] for s in results.samples}
    assert {s.prompt_id: s.outputs["ppo_ptx"] for s in again.samples} == first
    # the simulated tables are unchanged by the labels (same seed, same answers)
    assert again.model("ppo").win_rate["training"] == results.model("ppo").win_rate["training"]
