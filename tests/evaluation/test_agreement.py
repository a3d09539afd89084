"""Inter-labeler agreement: one measure (pairs ordered alike, bootstrap over prompts) for every row."""

from __future__ import annotations

import random

import pytest

from instructgpt.data import Ranking
from instructgpt.evaluation.agreement import agreement_of_rankings, pair_labels, panel_agreement
from instructgpt.world import Panel, World, candidate_responses, generate_prompts


def _r(prompt_id, labeler, ranking, k=3):
    return Ranking(prompt="?", responses=[f"r{i}" for i in range(k)], ranking=ranking, labeler_id=labeler,
                   prompt_id=prompt_id)


def test_agreement_on_hand_made_rankings():
    rankings = [
        _r("p", "T1", [[0], [1], [2]]),   # pairs (0,1) (0,2) (1,2): 0 above 1, 0 above 2, 1 above 2
        _r("p", "T2", [[1], [0], [2]]),   # 1 above 0, 0 above 2, 1 above 2
        _r("p", "H1", [[0, 1], [2]]),     # (0,1) tied: no label; 0 above 2, 1 above 2
        _r("q", "T1", [[0], [1]], k=2),
        _r("q", "T2", [[1], [0]], k=2),
    ]
    assert sorted(pair_labels(rankings[2:3])) == [(("p", 0, 2), "H1", 1), (("p", 1, 2), "H1", 1)]
    a = agreement_of_rankings(rankings, heldout_ids={"H1"}, seed=0)
    # training-training: on p, T1-T2 agree on (0,2) and (1,2), not (0,1); on q they disagree -> 2 of 4
    tt = a["training-training"]
    assert (tt.value, tt.n, tt.method) == (0.5, 4, "bootstrap-prompts")
    # the interval resamples prompts, not pairs: a replicate is p twice (2/3), q twice (0) or both (1/2)
    assert 0.0 <= tt.low <= tt.value <= tt.high <= 2 / 3 + 1e-9
    # training-heldout: T1-H1 and T2-H1 agree on (0,2) and (1,2); the tied pair counts for no one
    th = a["training-heldout"]
    assert (th.value, th.n) == (1.0, 4)
    assert "heldout-heldout" not in a  # one held-out labeler: no pair
    labelled = agreement_of_rankings(rankings, {"H1"}, label="RM comparisons")
    assert set(labelled) == {"training-training (RM comparisons)", "training-heldout (RM comparisons)"}
    assert labelled["training-training (RM comparisons)"] == tt


def test_agreement_is_near_the_papers():
    world = World.generate(0)
    panel = Panel(seed=0)
    prompts = generate_prompts(world, 400, seed=11)
    rng = random.Random(3)
    subset = prompts[:150]
    responses = [candidate_responses(p, rng.randint(4, 9), rng, world) for p in subset]
    est = panel_agreement(panel, world, subset, responses, seed=0)
    a = {k: e.value for k, e in est.items()}
    assert 0.65 <= a["training-training"] <= 0.80, a
    assert 0.70 <= a["heldout-heldout"] <= 0.85, a
    assert a["heldout-heldout"] > a["training-training"]
    assert min(e.n for e in est.values()) > 1000
    for e in est.values():
        assert e.method == "bootstrap-prompts" and e.low < e.value < e.high
        assert e.high - e.low < 0.1  # 150 prompts: a few points either side


def test_the_same_labels_give_the_same_agreement():
    world = World.generate(0)
    panel = Panel(seed=0)
    prompts = generate_prompts(world, 20, seed=2)
    rng = random.Random(0)
    responses = [candidate_responses(p, 5, rng, world) for p in prompts]
    first = panel_agreement(panel, world, prompts, responses, seed=4)
    assert panel_agreement(panel, world, prompts, responses, seed=4) == first
    assert panel_agreement(panel, world, prompts, responses, seed=5) != first
    with pytest.raises(ValueError):  # the measure needs two labelers on one item
        from instructgpt.evaluation.stats import pairwise_agreement
        pairwise_agreement([(("p", 0, 1), "T1", 1)])


def test_agreement_rows_say_how_many_prompts_and_rankings_they_rest_on():
    """The pairs count alone hid that the answer rows use the first 60 test prompts and the RM rows
    the first 200 rankings; ``basis`` names them (run.py stores it in results.json's meta)."""
    from instructgpt.evaluation.agreement import answer_agreement, comparison_agreement
    world = World.generate(0)
    panel = Panel(seed=0)
    prompts = generate_prompts(world, 12, seed=2)
    rng = random.Random(0)
    answers = {f"m{j}": [candidate_responses(p, 1, rng, world)[0] for p in prompts] for j in range(4)}
    basis: dict[str, str] = {}
    rows = answer_agreement(panel, world, prompts, answers, 0, max_prompts=5, basis=basis)
    assert set(basis) == set(rows) and rows
    assert all(v.startswith("5 of 12 test prompts (the first 5), 4 answers each") for v in basis.values())
    rankings = [_r(p.id, "T1", [[0], [1], [2], [3]], k=4) for p in prompts]
    basis = {}
    rows = comparison_agreement(panel, world, prompts, rankings, 0, limit=8, basis=basis)
    assert set(basis) == set(rows) and all(k.endswith("(RM comparisons)") for k in rows)
    assert all(v.startswith("8 of 12 RM rankings (the first 8), 4.0 answers each") for v in basis.values())
    basis = {}
    comparison_agreement(panel, world, prompts, rankings, 0, limit=200, basis=basis)
    assert all(v.startswith("12 of 12 RM rankings, ") for v in basis.values())
