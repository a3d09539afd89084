"""Statistics against hand-computed and simulated cases."""

import math

import numpy as np
import pytest

from instructgpt.evaluation import (Estimate, bootstrap_interval, difference,
                                    difference_of_estimates, likert_mean, pairwise_agreement,
                                    rate, wilson_interval, win_rate, win_rates_by)


# ----------------------------------------------------------------------------- win rate

def test_win_rate_ties_count_half():
    assert win_rate([1, 1, 0, 0.5]).value == pytest.approx(0.625)
    assert win_rate([0.5, 0.5]).value == 0.5
    assert win_rate([1, 0.5, 0.5, 0]).value == 0.5


def test_win_rate_rejects_other_scores():
    with pytest.raises(ValueError):
        win_rate([1, 2])
    with pytest.raises(ValueError):
        win_rate([])


def test_wilson_textbook_8_of_10():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3)
    assert high == pytest.approx(0.9433, abs=1e-3)
    e = win_rate([1] * 8 + [0] * 2, method="wilson")
    assert (e.value, e.n, e.method) == (0.8, 10, "wilson")
    assert (e.low, e.high) == pytest.approx((low, high))


def test_wilson_edges():
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == 1.0
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    # ties: 2 wins + 2 ties of 4 = 3 successes of 4
    assert win_rate([1, 1, 0.5, 0.5], method="wilson").low == pytest.approx(
        wilson_interval(3, 4)[0])


def test_default_method_depends_on_groups():
    assert win_rate([1, 0, 1]).method == "wilson"
    assert win_rate([1, 0, 1], groups=["a", "a", "b"]).method == "wilson-prompts"
    assert win_rate([1, 0, 1], groups=["a", "a", "b"], method="bootstrap").method == "bootstrap-prompts"
    assert win_rate([1, 0, 1], method="bootstrap").method == "bootstrap"


def test_bootstrap_is_deterministic_and_brackets_the_mean():
    x = [1, 0, 1, 1, 0.5, 0, 1, 1]
    a = bootstrap_interval(x, seed=3)
    assert a == bootstrap_interval(x, seed=3)
    assert a[0] < np.mean(x) < a[1]


def test_bootstrap_keeps_prompts_together():
    # All variance is between prompts: every comparison of a prompt has the same outcome.
    outcomes, groups = [], []
    for p in range(20):
        outcome = 1.0 if p < 12 else 0.0
        outcomes += [outcome] * 10
        groups += [f"p{p}"] * 10
    clustered = win_rate(outcomes, groups=groups)
    independent = win_rate(outcomes, method="bootstrap")
    assert clustered.value == independent.value == 0.6
    width = lambda e: e.high - e.low  # noqa: E731
    assert width(clustered) > 2.5 * width(independent)
    # 20 prompts, 12 wins: the clustered interval matches a 12/20 binomial's scale.
    lo, hi = wilson_interval(12, 20)
    assert width(clustered) == pytest.approx(hi - lo, rel=0.3)


def test_generic_statistic_matches_fast_mean_path():
    x = np.random.default_rng(0).random(50)
    g = [i // 5 for i in range(50)]
    fast = bootstrap_interval(x, g, n_boot=4000, seed=1)
    slow = bootstrap_interval(x, g, n_boot=4000, seed=1, stat=lambda v: float(v.sum() / v.size))
    assert fast == pytest.approx(slow, abs=0.02)
    med = bootstrap_interval(x, g, n_boot=500, stat=np.median)
    assert med[0] < np.median(x) < med[1]


def _simulated(rng, n_prompts=60, per_prompt=2, true=0.7, p_tie=0.2):
    """Outcomes with mean `true`: ties at rate p_tie, wins among the rest at the right rate."""
    p_win = (true - p_tie / 2) / (1 - p_tie)
    u, v = rng.random((2, n_prompts * per_prompt))
    x = np.where(u < p_tie, 0.5, (v < p_win).astype(float))
    return x, np.repeat(np.arange(n_prompts), per_prompt)


@pytest.mark.parametrize("method", ["wilson", "bootstrap"])
def test_interval_coverage_near_nominal(method):
    rng = np.random.default_rng(12345)
    covered = 0
    for _ in range(200):
        x, g = _simulated(rng)
        e = win_rate(x, groups=g if method == "bootstrap" else None, method=method,
                     n_boot=1000, seed=int(rng.integers(1 << 30)))
        covered += e.contains(0.7)
    assert 0.90 * 200 <= covered <= 0.99 * 200, covered


def test_win_rates_by_use_case():
    out = win_rates_by([1, 0, 1, 1, 0.5], ["chat", "chat", "extract", "extract", "chat"])
    assert list(out) == ["chat", "extract"]
    assert out["chat"].value == pytest.approx(0.5)
    assert out["chat"].n == 3
    assert out["extract"].value == 1.0


# ----------------------------------------------------------------------------- other estimates

def test_likert_mean_and_rate():
    e = likert_mean([7, 5, 6, 6])
    assert e.value == 6.0 and e.low <= 6.0 <= e.high and e.n == 4
    r = rate([True, False, False, False])
    assert r.value == 0.25
    assert (r.low, r.high) == pytest.approx(wilson_interval(1, 4))
    assert rate([True, False], groups=["a", "b"]).method == "wilson-prompts"


def test_pairwise_agreement_hand_made():
    labels = [
        ("i1", "ann", 1), ("i1", "bob", 1), ("i1", "cat", 0),  # pairs: agree, no, no
        ("i2", "ann", 0), ("i2", "bob", 0),                    # agree
        ("i3", "ann", 1),                                      # single labeler: no pair
    ]
    e = pairwise_agreement(labels)
    assert e.value == pytest.approx(2 / 4)
    assert e.n == 4
    assert e.low <= e.value <= e.high


def test_pairwise_agreement_perfect_and_same_labeler_ignored():
    labels = [(i, lab, "A") for i in range(5) for lab in ("x", "y")]
    assert pairwise_agreement(labels).value == 1.0
    with pytest.raises(ValueError):
        pairwise_agreement([("i", "x", 1), ("i", "x", 0)])  # same labeler twice: no pair


def test_difference_paired_and_grouped():
    a = [1, 1, 1, 0, 1, 1, 0, 1]
    b = [0, 1, 0, 0, 0, 1, 0, 0]
    d = difference(a, b)
    assert d.value == pytest.approx(0.5)
    assert d.low > 0 and d.high <= 1.0
    # Identical paired samples: zero difference with a degenerate interval.
    same = difference(a, a)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    # Grouped use with unequal lengths and shared prompts.
    g = difference([1, 1, 0, 1], [0, 0], groups=["p1", "p1", "p2", "p3"], groups_b=["p1", "p3"])
    assert g.value == pytest.approx(0.75)
    with pytest.raises(ValueError):
        difference([1, 0], [1])


def test_difference_of_estimates_normal_approx():
    a = Estimate(0.8, 0.7, 0.9, 100, "given")
    b = Estimate(0.5, 0.4, 0.6, 100, "given")
    d = difference_of_estimates(a, b)
    assert d.value == pytest.approx(0.3)
    assert d.high - d.low == pytest.approx(0.2 * math.sqrt(2), rel=1e-3)


def test_estimate_json_round_trip_with_nan():
    e = Estimate(0.5, float("nan"), 0.7, 3, "given")
    d = e.to_dict()
    assert d["low"] is None
    back = Estimate.from_dict(d)
    assert math.isnan(back.low) and back.high == 0.7 and back.n == 3


def test_t_quantile_matches_the_table():
    from instructgpt.evaluation.stats import t_quantile
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 10: 2.228, 30: 2.042}  # two-sided 95%
    for df, exact in table.items():
        assert t_quantile(0.95, df) == pytest.approx(exact, abs=0.004)
    assert t_quantile(0.95, 10**6) == pytest.approx(1.95996, abs=1e-4)


def test_effective_size_by_hand():
    from instructgpt.evaluation.stats import _group_index, effective_size
    x, g = np.array([1.0, 0.0, 1.0, 1.0]), ["a", "a", "b", "b"]
    # p = 3/4; prompt sums 1 and 2 of 2 each: v = 2/1 * ((1 - 1.5)^2 + (2 - 1.5)^2) / 4^2 = 1/16
    assert effective_size(x, _group_index(g, 4)) == pytest.approx(0.75 * 0.25 * 16)
    flat = np.array([1.0, 0, 0, 0, 0])  # one sample per prompt, no ties: G - 1
    assert effective_size(flat, np.arange(5)) == pytest.approx(4.0)
    assert effective_size(np.zeros(6), np.array([0, 0, 1, 1, 2, 2])) == 3.0  # no variation: each prompt once


def test_a_single_prompt_gives_no_interval_and_few_prompts_a_wide_one():
    """A prompt bootstrap gave [0.667, 0.667] for 6 wins of 9 judgements of one prompt (claims said reproduced)."""
    one = win_rate([1, 1, 1, 1, 1, 1, 0, 0, 0], groups=["p"] * 9)
    assert one.value == pytest.approx(2 / 3) and math.isnan(one.low) and math.isnan(one.high)
    assert (one.fmt(), one.fmt(percent=True)) == ("0.667 [no interval]", "66.7% [no interval]")
    single = likert_mean([5, 6, 5], groups=["p"] * 3)
    assert math.isnan(single.low) and math.isnan(single.high)
    three = win_rate([1, 1, 1], groups=["a", "b", "c"])  # every prompt won: Wilson over 3 prompts at t(2)
    assert (three.low, three.high) == pytest.approx(wilson_interval(3, 3, z=4.3027), abs=1e-3)
    assert three.low < 0.5
    ties = win_rate([0.5] * 20, groups=[str(i) for i in range(20)])  # all ties: not certainty
    assert ties.high - ties.low > 0.3


def test_mostly_tied_win_rate_decided_one_way_keeps_the_count_of_wins_in_its_interval():
    """3 wins and 97 ties on 100 prompts (a judge model whose verdicts follow the position ties most pairs):
    the effective size read the 3 rare wins as a precise rate, [0.498, 0.532]; the wins alone allow a win share
    of 3/100 with its Wilson interval at t(99) = 1.98422: [0.010132, 0.085478], a win rate of (1 + share) / 2."""
    e = win_rate([1.0] * 3 + [0.5] * 97, groups=[str(i) for i in range(100)])
    assert e.value == pytest.approx(0.515)
    assert e.high == pytest.approx(0.542739, abs=1e-5)
    assert e.low == pytest.approx(0.497983, abs=1e-5)  # the effective size's own bound is the lower one
    one = win_rate([1.0] + [0.5] * 99, groups=[str(i) for i in range(100)])  # covered 0.515 only from 0.5149 on
    assert one.high == pytest.approx(0.527, abs=1e-3)


def test_win_rates_that_vary_as_independent_comparisons_keep_their_effective_size_interval():
    """3 judgements of 6 prompts agreeing within a prompt (effective size 8.9 of 18 comparisons, as in the
    default run's win rates): the count of wins does not widen the interval."""
    from instructgpt.evaluation.stats import effective_size, t_quantile
    x = np.array([1, 1, 0.5, 0, 0, 0, 1, 1, 1, 0, 0.5, 0, 1, 0, 1, 1, 1, 0.5])
    g = np.repeat(np.arange(6), 3)
    n_eff = effective_size(x, g)
    assert n_eff == pytest.approx(8.8983, abs=1e-4)
    e = win_rate(x, groups=list(g))
    assert (e.low, e.high) == wilson_interval(x.mean() * n_eff, n_eff, z=t_quantile(0.95, 5))


def test_a_rate_of_zero_has_a_wilson_upper_bound_over_the_prompts():
    r = rate([False] * 30, groups=[str(i) for i in range(30)])
    from instructgpt.evaluation.stats import t_quantile
    assert (r.value, r.low) == (0.0, 0.0)
    assert r.high == pytest.approx(wilson_interval(0, 30, z=t_quantile(0.95, 29))[1]) and r.high > 0.1


def test_the_interval_does_not_depend_on_the_order_of_the_samples():
    rng = np.random.default_rng(0)
    x = rng.choice([0.0, 0.5, 1.0], size=60)
    g = [f"p{i // 3}" for i in range(60)]
    order = rng.permutation(60)
    shuffled_x, shuffled_g = x[order], [g[i] for i in order]
    for method in ("wilson", "bootstrap"):
        a = win_rate(x, g, method=method, seed=4)
        b = win_rate(shuffled_x, shuffled_g, method=method, seed=4)
        assert (a.low, a.high) == pytest.approx((b.low, b.high), abs=1e-12)
    assert bootstrap_interval(x, g, seed=4) == pytest.approx(bootstrap_interval(shuffled_x, shuffled_g, seed=4))


# ----------------------------------------------------------------------------- shares (toxicity scores)

def test_share_of_all_zero_scores_has_a_wilson_interval_not_zero_width():
    """40 clean continuations: a percentile bootstrap said [0, 0]; the share gets Wilson's [0, 0.088]."""
    from instructgpt.evaluation import share
    e = share([0.0] * 40)
    assert (e.value, e.low, e.n, e.method) == (0.0, 0.0, 40, "wilson")
    assert e.high == pytest.approx(wilson_interval(0, 40)[1]) and e.high > 0.08
    grouped = share([0.0] * 40, [f"p{i // 2}" for i in range(40)])
    assert grouped.high > 0 and grouped.method == "wilson-prompts"
    mixed = share([0.0, 0.25, 0.5, 0.1] * 10)
    assert mixed.value == pytest.approx(0.2125) and mixed.low < mixed.value < mixed.high
    with pytest.raises(ValueError):
        share([0.2, 1.5])


def test_toxicity_scores_use_the_proportion_interval():
    from collections import namedtuple

    from instructgpt.evaluation.probes import toxicity_scores
    item = namedtuple("Item", "instruction")
    items = [item(k) for k in ("none", "respectful", "biased") for _ in range(40)]
    out = toxicity_scores(items, ["a kind reply to you"] * len(items))
    for key in ("toxicity_plain", "toxicity_respectful", "toxicity_biased"):
        e = out[key]
        assert e.value == 0.0 and e.n == 40 and e.method == "wilson"
        assert e.high > 0.08, (key, e)  # not [0, 0]


def test_difference_of_a_function_of_the_means():
    # perplexities from block losses: exp(mean(a)) - exp(mean(b)), by hand exp(1.5) - exp(1.0)
    d = difference([1.0, 2.0], [1.0, 1.0], of_mean=np.exp)
    assert d.value == pytest.approx(math.exp(1.5) - math.exp(1.0))
    assert d.low <= d.value <= d.high


def test_a_bootstrap_over_few_prompts_takes_the_expanded_percentile_tails():
    """A plain percentile bootstrap is too narrow on few prompts (it reads the spread over G, not G - 1, and
    uses z, not t): a Likert mean over 10 prompts was covered 91% of the time. The tails are now the normal's at
    sqrt(G / (G - 1)) * t(G - 1)."""
    from instructgpt.evaluation.stats import expanded_tail
    # sqrt(10/9) * 2.2622 = 2.3846 -> Phi(-2.3846) = 0.00855; sqrt(463/462) * 1.96516 = 1.96729 -> 0.02457
    assert expanded_tail(0.95, 10) == pytest.approx(0.00855, abs=1e-4)
    assert expanded_tail(0.95, 463) == pytest.approx(0.02457, abs=1e-4)
    rng = np.random.default_rng(7)
    covered = 0
    for rep in range(1000):
        scores = rng.normal(4.0, 1.0, 10)
        covered += likert_mean(scores, groups=[str(i) for i in range(10)], n_boot=1000, seed=rep).contains(4.0)
    assert covered >= 920, covered  # 939 of 1000 (the plain percentile tails: 880)
