"""Best-of-m answers picked by the RM or by the labelers' noiseless utility (instructgpt.evaluation.best_of_n)."""

from __future__ import annotations

import random

import pytest

from instructgpt.evaluation.best_of_n import best_of_n, candidate_sizes
from instructgpt.world import build_datasets, candidate_responses, check, solve
from instructgpt.world.oracle import noiseless_utility


@pytest.fixture(scope="module")
def world():
    return build_datasets(seed=0, scale=0.004, corpus_docs=20, heldout_docs=5, n_toxicity_starts=3, n_bias=6,
                          n_cloze=10)


@pytest.fixture(scope="module")
def answer_sets(world):
    """40 prompts, each with [flawed, flawed, good, flawed]: the good answer third."""
    prompts = world.prompts["rm"][:40]
    sets = []
    for i, p in enumerate(prompts):
        flawed = candidate_responses(p, 3, random.Random(f"f{i}"), world.world, p_good=0.0)
        sets.append([flawed[0], flawed[1], solve(p, random.Random(i), world.world), flawed[2]])
    return prompts, sets


def follow_rate(prompts, texts, world) -> float:
    return sum(check(p, t, world.world).follows_instruction for p, t in zip(prompts, texts)) / len(prompts)


def oracle_score(world):
    return lambda ps, ts: [noiseless_utility(world.panel.training_labelers, p, t, world.world) for p, t in zip(ps, ts)]


def test_candidate_sizes_double_up_to_n():
    assert candidate_sizes(1) == [1]
    assert candidate_sizes(4) == [1, 2, 4]
    assert candidate_sizes(6) == [1, 2, 4, 6]


def test_the_oracle_finds_the_good_answer_once_it_is_a_candidate(world, answer_sets):
    prompts, sets = answer_sets
    first = [s[0] for s in sets]
    out = best_of_n(prompts, sets, lambda ps, ts: [0.0] * len(ts), world.panel, world.world, seed=1)
    assert list(out) == ["1", "2", "4"]
    # m = 1 is the first answer for both pickers: its follow rate and mean utility, by hand
    utility_first = sum(oracle_score(world)(prompts, first)) / len(prompts)
    for picker in ("rm", "oracle"):
        assert out["1"][picker]["true_follow"]["value"] == pytest.approx(follow_rate(prompts, first, world))
        assert out["1"][picker]["utility"]["value"] == pytest.approx(utility_first)
    assert out["1"]["oracle"]["true_follow"]["value"] < 0.9
    # with the good answer among the 4, the oracle follows everywhere; a constant RM keeps the first answer
    assert out["4"]["oracle"]["true_follow"]["value"] == 1.0
    assert out["4"]["oracle"]["utility"]["value"] > utility_first + 0.3
    assert out["4"]["rm"] == out["1"]["rm"] and out["2"]["rm"] == out["1"]["rm"]
    est = out["4"]["oracle"]["utility"]
    assert est["low"] <= est["value"] <= est["high"] and est["n"] == len(prompts)


def test_an_rm_that_is_the_oracle_picks_as_it_does_and_a_reversed_one_does_worse(world, answer_sets):
    prompts, sets = answer_sets
    oracle = oracle_score(world)
    same = best_of_n(prompts, sets, oracle, world.panel, world.world, seed=1)
    assert all(same[m]["rm"] == same[m]["oracle"] for m in same)
    reversed_rm = best_of_n(prompts, sets, lambda ps, ts: [-u for u in oracle(ps, ts)], world.panel, world.world)
    assert reversed_rm["4"]["rm"]["utility"]["value"] < reversed_rm["1"]["rm"]["utility"]["value"]


def test_answer_sets_must_match_the_prompts(world, answer_sets):
    prompts, sets = answer_sets
    with pytest.raises(ValueError, match="39 answer sets for 40 prompts"):
        best_of_n(prompts, sets[:39], lambda ps, ts: [0.0] * len(ts), world.panel, world.world)
    with pytest.raises(ValueError, match="the same number of answers"):
        best_of_n(prompts, [sets[0][:3]] + sets[1:], lambda ps, ts: [0.0] * len(ts), world.panel, world.world)


def test_an_answer_cut_at_max_new_tokens_reaches_the_reward_model_as_cut(world):
    """The scorer re-encodes each answer's text; only a Response says the answer was cut (no end token).
    Handed its text alone, a cut answer was scored as finished, unlike the same answer's RM score column."""
    from instructgpt.evaluation.policies import Response
    prompts = world.prompts["rm"][:2]
    sets = [[Response("red blue", [1, 2], ended=False), Response("red", [1], ended=True)] for _ in prompts]
    seen = []

    def score(ps, texts):
        seen.extend(getattr(t, "ended", True) for t in texts)
        return [0.0] * len(texts)

    best_of_n(prompts, sets, score, world.panel, world.world)
    assert seen == [False, True] * len(prompts)
