"""RM accuracy by pair type against the labelers' noiseless ceiling (instructgpt.evaluation.rm_accuracy)."""

from __future__ import annotations

import random

import pytest

from instructgpt.evaluation.rm_accuracy import PAIR_TYPES, rm_pair_accuracy
from instructgpt.world import build_datasets, candidate_responses, solve


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
    assert set(out) == set(PAIR_TYPES)
    for kind, v in out.items():
        assert v["pairs"] > 10
        assert v["rm"].value == pytest.approx(v["ceiling"].value), kind
        assert 0.6 < v["ceiling"].value < 1.0  # labeler noise: the ceiling is below 1


def test_an_rm_that_likes_length_falls_below_the_ceiling(world):
    prompts = world.prompts["rm"][:60]
    out = rm_pair_accuracy(prompts, _policies(world, prompts), lambda ps, ts: [float(len(t)) for t in ts],
                           world.panel, world.world, seed=1)
    ceiling = sum(v["ceiling"].value * v["pairs"] for v in out.values()) / sum(v["pairs"] for v in out.values())
    rm = sum(v["rm"].value * v["pairs"] for v in out.values()) / sum(v["pairs"] for v in out.values())
    assert rm < ceiling - 0.1
