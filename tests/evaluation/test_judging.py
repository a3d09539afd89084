"""Simulated judging and real-label comparisons on hand-made inputs and the simulated panel."""

from __future__ import annotations

import random

import pytest

from instructgpt.data import Prompt, Ranking
from instructgpt.evaluation.human_labels import as_answers, label_comparisons
from instructgpt.evaluation.judging import checkable, judge


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

    def draw_judge(self, rng, heldout=True, exclude=()):
        panel = self

        class _Judge:
            id = f"J{len(exclude)}"

            def compare(self, prompt, a, b, rng, world=None):
                return panel.compare(prompt, a, b, rng, heldout, world)
        return _Judge()


def _prompts(use_cases):
    return [Prompt(id=f"p{i}", text=f"Q{i}\n", user_id="u", use_case=uc) for i, uc in enumerate(use_cases)]


def test_judge_ties_and_use_cases_on_hand_made_inputs():
    prompts = _prompts(["chat", "chat", "chat", "chat", "closed_qa", "closed_qa"])
    responses = {
        "sft": ["bad", "good", "meh", "good", "bad", "bad"],
        "m": ["good", "bad", "meh-too", "good", "good", "good"],
    }
    j = judge(prompts, responses, "sft", _StubPanel(), world=None, seed=0)
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
    assert all(checkable(p) for p in prompts) and not checkable(_prompts(["chat"])[0])
    good = [solve(p, random.Random(i), data.world) for i, p in enumerate(prompts)]
    bad = ["I do not know." for _ in prompts]
    j = judge(prompts, {"sft": bad, "good": good}, "sft", data.panel, data.world, seed=1)
    assert j["good"].win_rate["heldout"].low > 0.6
    again = judge(prompts, {"sft": bad, "good": good}, "sft", data.panel, data.world, seed=1)
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
    comps = label_comparisons(rankings, prompts, as_answers(responses), "sft")
    assert [(c.prompt_id, c.outcome) for c in comps["ppo"]] == [("p0", 1.0), ("p1", 0.5)]
    assert [(c.prompt_id, c.outcome) for c in comps["base"]] == [("p0", 0.0), ("p1", 0.0), ("p2", 1.0)]
    assert comps["ppo"][0].labelers == "human" and comps["ppo"][0].labeler_id == "H1"
    assert comps["ppo"][1].use_case == "extract"


def test_several_judgements_per_pair_average_out_labeler_noise(run):
    """judgements=n: n fresh labelers per (prompt, pair), same prompt id (one bootstrap cluster); a pair
    of answers near the labelers' noise gets a win rate nearer its expected value, with a narrower CI."""
    from instructgpt.world import solve
    _, data = run
    prompts = data.prompts["ppo"][:40]
    good = [solve(p, random.Random(i), data.world) for i, p in enumerate(prompts)]
    wordy = [g + " It was a very long and busy day for everyone in the whole land." for g in good]
    one = judge(prompts, {"sft": wordy, "m": good}, "sft", data.panel, data.world, seed=2)
    five = judge(prompts, {"sft": wordy, "m": good}, "sft", data.panel, data.world, seed=2, judgements=5)
    comps = [c for c in five["m"].comparisons if c.labelers == "heldout"]
    assert len(comps) == 5 * len(prompts) and len({c.prompt_id for c in comps}) == len(prompts)
    assert len({c.outcome for c in comps if c.prompt_id == prompts[0].id}) >= 1
    w1, w5 = one["m"].win_rate["heldout"], five["m"].win_rate["heldout"]
    assert w5.n == len(comps)
    assert (w5.high - w5.low) < (w1.high - w1.low)
    # the first judgement of each pair is the one a single-judgement evaluation makes
    assert [c.outcome for c in five["m"].comparisons if c.labelers == "training"][::5] == \
        [c.outcome for c in one["m"].comparisons if c.labelers == "training"]


def test_head_to_head_pairs_are_judged_directly():
    prompts = _prompts(["chat"] * 4)
    responses = {"sft": ["good", "bad", "bad", "bad"], "a": ["good", "good", "bad", "x"],
                 "b": ["bad", "bad", "good", "y"]}
    j = judge(prompts, responses, "sft", _StubPanel(), world=None, seed=0, judgements=2, head_to_head=[("a", "b")])
    direct = [c for c in j["a"].comparisons if c.opponent == "b" and c.labelers == "training"]
    assert [c.outcome for c in direct] == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.5, 0.5]
    assert all(c.opponent is None for c in j["b"].comparisons)
    # the win rate against the baseline ignores the head-to-head comparisons
    assert j["a"].win_rate["training"].value == pytest.approx((0.5 + 1 + 0.5 + 0.5) / 4)


def test_head_to_head_pairs_of_the_claims():
    from instructgpt.evaluation.claims import head_to_head_pairs
    kinds = {"base": "base", "base_large": "base", "base_prompted": "base_prompted", "sft": "sft", "ppo": "ppo",
             "ppo_ptx": "ppo_ptx", "flan": "flan"}
    assert head_to_head_pairs(kinds) == [
        ("ppo", "base_prompted"), ("ppo_ptx", "base_prompted"), ("base_prompted", "base"),
        ("base_prompted", "base_large"), ("ppo_ptx", "base"), ("ppo_ptx", "base_large"), ("ppo_ptx", "flan")]


def test_oracle_rates_from_the_world_checkers_beside_the_flags(run):
    """true_fails_to_follow / true_hallucination: the checkers' verdicts, no labeler noise."""
    from instructgpt.world import check, solve
    from instructgpt.world.tasks import CLOSED_DOMAIN
    _, data = run
    prompts = data.prompts["ppo"][:40]
    good = [solve(p, random.Random(i), data.world) for i, p in enumerate(prompts)]
    bad = ["I do not know." for _ in prompts]
    j = judge(prompts, {"sft": bad, "good": good}, "sft", data.panel, data.world, seed=1)
    truth = [not check(p, r, data.world).follows_instruction for p, r in zip(prompts, bad)]
    assert j["sft"].metadata["true_fails_to_follow"].value == pytest.approx(sum(truth) / len(truth))
    assert j["good"].metadata["true_fails_to_follow"].value == 0.0
    closed = [p for p in prompts if p.use_case in CLOSED_DOMAIN]
    assert j["good"].metadata["true_hallucination"].n == len(closed)


def test_the_judges_of_one_comparison_are_distinct_labelers(run):
    """Drawing with replacement gave fewer than 3 distinct labelers for 186 of 626 held-out triples (a
    pool of 10); now the 3 judgements of a pair are by 3 labelers, seeded, the first one unchanged."""
    from instructgpt.world import solve
    _, data = run
    prompts = data.prompts["ppo"][:60]
    good = [solve(p, random.Random(i), data.world) for i, p in enumerate(prompts)]
    other = [solve(p, random.Random(100 + i), data.world) + " Yes." for i, p in enumerate(prompts)]
    answers = {"sft": other, "m": good}
    three = judge(prompts, answers, "sft", data.panel, data.world, seed=1, judgements=3)
    for group in ("heldout", "training"):
        by_prompt = {}
        for c in three["m"].comparisons:
            if c.labelers == group and c.labeler_id is not None:
                by_prompt.setdefault(c.prompt_id, []).append(c.labeler_id)
        assert by_prompt and all(len(ids) == 3 == len(set(ids)) for ids in by_prompt.values()), group
    again = judge(prompts, answers, "sft", data.panel, data.world, seed=1, judgements=3)
    assert again["m"].comparisons == three["m"].comparisons
    one = judge(prompts, answers, "sft", data.panel, data.world, seed=1)
    assert [c for c in three["m"].comparisons][::3] == one["m"].comparisons
    with pytest.raises(ValueError, match="the panel has 10"):
        judge(prompts, answers, "sft", data.panel, data.world, seed=1,
              judgements=len(data.panel.heldout_labelers) + 1)
