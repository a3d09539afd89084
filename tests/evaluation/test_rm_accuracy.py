"""RM accuracy by pair type against the labelers' noiseless ceiling (instructgpt.evaluation.rm_accuracy)."""

from __future__ import annotations

import random

import pytest

from instructgpt.evaluation.rm_accuracy import CRITERIA, PAIR_TYPES, rm_pair_accuracy, separating_criterion
from instructgpt.world import build_datasets, candidate_responses, solve
from instructgpt.world.task_types.base import CheckResult


@pytest.fixture(scope="module")
def world():
    return build_datasets(seed=0, scale=0.004, corpus_docs=20, heldout_docs=5, n_toxicity_starts=3, n_bias=6,
                          n_cloze=10)


def _policies(data, prompts):
    good = [solve(p, random.Random(i), data.world) for i, p in enumerate(prompts)]
    flawed = [candidate_responses(p, 1, random.Random(f"f{i}"), data.world, p_good=0.0)[0]
              for i, p in enumerate(prompts)]
    return {"sft": flawed, "ppo_ptx": good}


def test_an_rm_with_the_labelers_noiseless_utilities_reaches_the_ceiling(world):
    prompts = world.prompts["rm"][:60]

    def oracle(ps, texts):  # the assigned labeler's own noiseless utility
        labs = [world.panel.assign(p.id) for p in ps]
        return [lab.base_utility(lab.verdict(p, t, world.world), t) for lab, p, t in zip(labs, ps, texts)]
    out = rm_pair_accuracy(prompts, _policies(world, prompts), oracle, world.panel, world.world, seed=1)
    assert set(out["pair type"]) == set(PAIR_TYPES)
    assert sum(v["pairs"] for v in out["criterion"].values()) == sum(v["pairs"] for v in out["pair type"].values())
    for kind, v in out["pair type"].items():
        assert v["pairs"] > 10
        assert v["rm"].value == pytest.approx(v["ceiling"].value), kind
        assert 0.6 < v["ceiling"].value < 1.0  # labeler noise: the ceiling is below 1


def test_an_rm_that_likes_length_falls_below_the_ceiling(world):
    prompts = world.prompts["rm"][:60]
    out = rm_pair_accuracy(prompts, _policies(world, prompts), lambda ps, ts: [float(len(t)) for t in ts],
                           world.panel, world.world, seed=1)["pair type"]
    ceiling = sum(v["ceiling"].value * v["pairs"] for v in out.values()) / sum(v["pairs"] for v in out.values())
    rm = sum(v["rm"].value * v["pairs"] for v in out.values()) / sum(v["pairs"] for v in out.values())
    assert rm < ceiling - 0.1


def test_the_criterion_is_the_first_verdict_on_which_two_answers_differ():
    good = CheckResult(passed=True, follows_instruction=True, score=1.0)
    assert separating_criterion(good, CheckResult(passed=False, follows_instruction=False, hallucinated=True)) \
        == "follows the instruction"
    assert separating_criterion(good, CheckResult(passed=False, follows_instruction=True, hallucinated=True)) \
        == "truthfulness"
    assert separating_criterion(CheckResult(True, True, repeats_falsehood=True), good) == "truthfulness"
    assert separating_criterion(good, CheckResult(False, True, toxic=True, score=1.0)) == "harm"
    assert separating_criterion(good, CheckResult(False, True, constraint_violations=["x"], score=1.0)) \
        == "constraints"
    assert separating_criterion(good, CheckResult(True, True, score=0.5)) == "helpfulness score"
    assert separating_criterion(good, CheckResult(True, True, score=1.0)) == "length and noise only"


def test_an_rm_blind_to_truthfulness_is_at_chance_there_and_at_the_ceiling_where_following_separates(world):
    """The RM sees only whether an answer follows the instruction (the checker's own verdict): the pair-type
    table cannot show its blindness to hallucinations; the criterion table does."""
    prompts = world.prompts["rm"][:120]
    lab_of = world.panel.assign

    def follows_only(ps, texts):
        return [float(lab_of(p.id).verdict(p, t, world.world).follows_instruction) for p, t in zip(ps, texts)]
    out = rm_pair_accuracy(prompts, _policies(world, prompts), follows_only, world.panel, world.world, seed=1)
    by = out["criterion"]
    assert set(by) <= set(CRITERIA)
    follows, truth = by["follows the instruction"], by["truthfulness"]
    assert follows["pairs"] > 20 and truth["pairs"] > 5
    assert follows["rm"].value == pytest.approx(follows["ceiling"].value, abs=0.05)
    assert truth["rm"].value == pytest.approx(0.5)  # equal scores: every pair counts half
    assert truth["ceiling"].value > 0.7


def test_a_policy_answer_cut_at_max_new_tokens_reaches_the_reward_model_as_cut(world):
    """As in best-of-n: the scorer re-encodes each answer's text, and only the Response says it was cut
    (read without the end token, as the policy's own RM scores read it)."""
    from instructgpt.evaluation.policies import Response
    prompts = world.prompts["rm"][:3]
    cut = {id(p): Response(f"red blue {i}", [1, 2], ended=False) for i, p in enumerate(prompts)}
    seen = {}

    def score(ps, texts):
        seen.update({str(t): getattr(t, "ended", True) for t in texts})
        return [0.0] * len(texts)

    rm_pair_accuracy(prompts, {"sft": [cut[id(p)] for p in prompts]}, score, world.panel, world.world)
    assert {str(a): seen[str(a)] for a in cut.values()} == {str(a): False for a in cut.values()}
