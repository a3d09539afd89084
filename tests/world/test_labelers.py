import random

import pytest

from instructgpt.data import FLAGS
from instructgpt.world import (
    Panel,
    candidate_responses,
    check,
    generate_prompts,
    perturb,
    solve,
)


@pytest.fixture(scope="module")
def panel():
    return Panel(seed=0)


@pytest.fixture(scope="module")
def prompts(world):
    return generate_prompts(world, 400, seed=11)


def test_panel_is_deterministic_and_held_out_labelers_differ(panel):
    again, other = Panel(seed=0), Panel(seed=1)
    assert [vars(x) for x in again.labelers] == [vars(x) for x in panel.labelers]
    assert [vars(x) for x in other.labelers] != [vars(x) for x in panel.labelers]
    assert len(panel.training_labelers) == 40 and len(panel.heldout_labelers) == 10
    train_ids = {x.id for x in panel.training_labelers}
    assert train_ids.isdisjoint(x.id for x in panel.heldout_labelers)
    assert all(x.heldout for x in panel.heldout_labelers) and not any(
        x.heldout for x in panel.training_labelers
    )
    mean = lambda labs, a: sum(getattr(x, a) for x in labs) / len(labs)
    assert mean(panel.heldout_labelers, "w_truth") > mean(panel.training_labelers, "w_truth")
    assert len({round(x.len_pref, 3) for x in panel.training_labelers}) == 40  # individual styles


def test_demonstrations_pass_the_checker(panel, prompts):
    demos = panel.write_demonstrations(prompts[:150], seed=0)
    assert demos == panel.write_demonstrations(prompts[:150], seed=0)
    by_id = {p.id: p for p in prompts}
    for d in demos:
        assert d.labeler_id.startswith("T") and d.prompt == by_id[d.prompt_id].text
        assert check(by_id[d.prompt_id], d.response).passed, d


def test_ranking_structure(panel, prompts):
    rng = random.Random(0)
    for p in prompts[:60]:
        k = rng.randint(4, 9)
        responses = candidate_responses(p, k, rng)
        r = panel.rank(p, responses, rng)
        assert r.k == k and sorted(i for g in r.ranking for i in g) == list(range(k))
        assert len(r.likert) == k and all(1 <= x <= 7 for x in r.likert)
        assert len(r.flags) == k and all(f in FLAGS for fs in r.flags for f in fs)
        assert r.prompt == p.text and r.prompt_id == p.id and r.labeler_id.startswith("T")
    with pytest.raises(ValueError):
        panel.rank(prompts[0], ["only one"], rng)


def test_rankings_are_deterministic_per_rng(panel, prompts):
    p = prompts[0]
    responses = candidate_responses(p, 6, random.Random(1))
    a = panel.rank(p, responses, random.Random(2))
    b = panel.rank(p, responses, random.Random(2))
    assert a == b


def test_labelers_prefer_correct_constraint_following_answers(panel, prompts):
    rng = random.Random(0)
    wins = []
    flags_ok = 0
    for p in prompts:
        good = solve(p, rng)
        flaw = rng.choice(("wrong_fact", "violate", "question", "hallucinate", "toxic", "falsehood"))
        bad = perturb(p, good, flaw, rng)
        if bad is None or check(p, bad).passed:
            continue
        lab = rng.choice(panel.training_labelers)
        wins.append(lab.compare(p, good, bad, rng))
        ranking = lab.rank(p, [good, bad, good + " Thanks.", bad], rng)
        flags_ok += bool(ranking.flags[1]) and not ranking.flags[0]
    assert len(wins) > 200
    assert sum(wins) / len(wins) > 0.85
    assert flags_ok / len(wins) > 0.7


def test_pleasantries_fall_on_good_and_flawed_candidates_alike():
    """Issue 13: the "verbose" style (a pleasantry) used to be added to correct candidates only, so a
    response with one was top-ranked 39% of the time vs 17% without and the RM learned "I hope this
    helps!". Now it is independent of quality: it must not raise a candidate's chance to be ranked first."""
    import random

    from instructgpt.world import build_datasets, candidates
    from instructgpt.world.flaws import PLEASANTRIES
    data = build_datasets(seed=0, scale=0.01, corpus_docs=10, heldout_docs=5)
    rng = random.Random(1)
    top = {True: [0, 0], False: [0, 0]}
    flawed_verbose = 0
    for p in data.prompts["rm"]:
        cands = candidates(p, rng.randint(4, 6), rng, data.world)
        flawed_verbose += sum(label.endswith("+verbose") for label, _ in cands)
        texts = [t for _, t in cands]
        best = set(data.panel.rank(p, texts, rng, world=data.world).ranking[0])
        for i, t in enumerate(texts):
            polite = any(t.endswith(x) for x in PLEASANTRIES)
            top[polite][0] += i in best
            top[polite][1] += 1
    assert flawed_verbose > 50
    assert top[True][0] / top[True][1] < top[False][0] / top[False][1] + 0.03, top


def test_judges_of_one_comparison_are_distinct_labelers(panel):
    """draw_judge with the ids already drawn excluded: a draw without replacement; the first draw is
    rng.choice(pool) as before; more judges than labelers is an error, not a silent repeat."""
    for heldout, size in ((True, 10), (False, 40)):
        drawn = []
        for j in range(size):
            drawn.append(panel.draw_judge(random.Random(f"c:{j}"), heldout, exclude=drawn).id)
        assert len(set(drawn)) == size
        with pytest.raises(ValueError, match=f"has {size}"):
            panel.draw_judge(random.Random(0), heldout, exclude=drawn)
    pool = panel.heldout_labelers
    assert panel.draw_judge(random.Random(5)).id == random.Random(5).choice(pool).id
    # over many comparisons of 3 held-out judgements, never a repeated labeler
    for k in range(300):
        ids = []
        for j in range(3):
            ids.append(panel.draw_judge(random.Random(f"x:{k}:{j}"), True, exclude=ids).id)
        assert len(set(ids)) == 3


def test_identical_answers_are_tied_and_scored_alike(panel, prompts):
    # Before, each copy of an answer drew its own noise: 265 of the default run's 20,330 training pairs
    # compared an answer with a copy of itself ranked apart, and a judge preferred one of two identical answers.
    rng = random.Random(5)
    separated = 0
    for p in prompts[:80]:
        a, b, c = candidate_responses(p, 3, rng)
        r = panel.rank(p, [a, b, a, c, a], rng)
        group_of = {i: g for g in r.ranking for i in g}
        assert group_of[0] is group_of[2] is group_of[4], r.ranking
        assert r.likert[0] == r.likert[2] == r.likert[4] and r.flags[0] == r.flags[2] == r.flags[4]
        separated += group_of[1] is not group_of[0]
        for judge in panel.training_labelers[:3]:
            assert judge.compare(p, a, a, rng) == 0.5
    assert separated > 40  # distinct answers are still ranked apart
