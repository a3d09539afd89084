"""The claims check decides from intervals and can fail."""

import math

import numpy as np
import pytest

from instructgpt.evaluation import (VERDICTS, Comparison, Estimate, EvalResults, ModelResult,
                                    check_claims)
from instructgpt.evaluation.claims import (INCONCLUSIVE, NOT_MEASURED, NOT_REPRODUCED,
                                           REPRODUCED, claim_a, claim_b, claim_c, claim_d,
                                           claim_e, claim_f, claim_g, combine, decide_greater, metric_gap,
                                           decide_within)

from . import est, make_model, make_results, simulated_comparisons


def _policy_only(win: Estimate, **kw) -> EvalResults:
    return EvalResults([ModelResult("ppo_ptx", "ppo_ptx", win_rate={"training": win}, **kw)])


# ----------------------------------------------------------------------------- decision rules

def test_decide_greater_three_ways():
    assert decide_greater(Estimate(0.8, 0.75, 0.85, 100, "g"), 0.5) == REPRODUCED
    assert decide_greater(Estimate(0.3, 0.25, 0.35, 100, "g"), 0.5) == NOT_REPRODUCED
    assert decide_greater(Estimate(0.52, 0.45, 0.59, 100, "g"), 0.5) == INCONCLUSIVE
    assert decide_greater(Estimate(0.6, 0.5, 0.7, 100, "g"), 0.5) == INCONCLUSIVE  # touches
    assert decide_greater(None, 0.5) == NOT_MEASURED
    nan = float("nan")
    assert decide_greater(Estimate(nan, nan, nan, 0, "g"), 0.5) == INCONCLUSIVE


def test_decide_within_band():
    assert decide_within(Estimate(0.0, -0.05, 0.05, 1, "g"), -0.1, 0.1) == REPRODUCED
    assert decide_within(Estimate(0.3, 0.2, 0.4, 1, "g"), -0.1, 0.1) == NOT_REPRODUCED
    assert decide_within(Estimate(-0.3, -0.4, -0.2, 1, "g"), -0.1, 0.1) == NOT_REPRODUCED
    assert decide_within(Estimate(0.08, 0.0, 0.16, 1, "g"), -0.1, 0.1) == INCONCLUSIVE


def test_combine():
    assert combine([REPRODUCED, REPRODUCED]) == REPRODUCED
    assert combine([REPRODUCED, INCONCLUSIVE]) == INCONCLUSIVE
    assert combine([INCONCLUSIVE, NOT_MEASURED]) == NOT_MEASURED
    assert combine([REPRODUCED, NOT_MEASURED, NOT_REPRODUCED]) == NOT_REPRODUCED
    assert combine([]) == NOT_MEASURED


# ----------------------------------------------------------------------------- claim (a)

def test_claim_a_from_given_intervals():
    assert claim_a(_policy_only(Estimate(0.8, 0.75, 0.85, 300, "g"))).verdict == REPRODUCED
    assert claim_a(_policy_only(Estimate(0.3, 0.25, 0.35, 300, "g"))).verdict == NOT_REPRODUCED
    assert claim_a(_policy_only(Estimate(0.52, 0.45, 0.59, 300, "g"))).verdict == INCONCLUSIVE
    assert claim_a(EvalResults()).verdict == NOT_MEASURED


def test_claim_a_on_one_or_three_prompts_won_every_time_is_inconclusive():
    """A prompt bootstrap gave [1, 1] and "reproduced" for these; a few prompts cannot show it."""
    rng = np.random.default_rng(0)
    for n_prompts, per_prompt in ((1, 9), (3, 3)):
        comps = simulated_comparisons(1.0, n_prompts, per_prompt, rng, p_tie=0.0)
        row = claim_a(EvalResults([ModelResult("ppo_ptx", "ppo_ptx", comparisons=comps)]))
        assert row.effect.value == 1.0 and row.verdict == INCONCLUSIVE, (n_prompts, row.effect)


@pytest.mark.parametrize("p_win, verdict", [(0.25, NOT_REPRODUCED), (0.8, REPRODUCED)])
def test_claim_a_from_raw_comparisons(p_win, verdict):
    rng = np.random.default_rng(1)
    comps = simulated_comparisons(p_win, 150, 2, rng)
    res = EvalResults([ModelResult("ppo_ptx", "ppo_ptx", comparisons=comps)])
    row = claim_a(res)
    assert row.verdict == verdict
    assert row.effect.method == "wilson-prompts"
    assert row.effect.n == 300


def test_deliberately_worse_policy_fails_the_whole_check():
    good = {c.id: c.verdict for c in check_claims(make_results(policy_win=0.85))}
    bad = {c.id: c.verdict for c in check_claims(make_results(policy_win=0.15))}
    assert good["a"] == REPRODUCED and bad["a"] == NOT_REPRODUCED
    assert good["b"] == REPRODUCED and bad["b"] == NOT_REPRODUCED
    assert good["g"] == REPRODUCED and bad["g"] == NOT_REPRODUCED
    assert bad["c"] == NOT_REPRODUCED  # PPO-ptx below the prompted base


# ----------------------------------------------------------------------------- other claims

def test_full_synthetic_run_verdicts():
    rows = check_claims(make_results())
    assert [r.id for r in rows] == list("abcdefg")
    assert all(r.verdict in VERDICTS for r in rows)
    v = {r.id: r.verdict for r in rows}
    assert v["a"] == v["b"] == v["c"] == v["e"] == v["f"] == v["g"] == REPRODUCED
    c = rows[2]
    assert [link.id for link in c.links] == ["c1", "c2", "c3"]
    assert all(link.effect.method == "bootstrap-prompts-diff" for link in c.links)


def test_claim_b_needs_a_larger_base():
    res = make_results(with_large_base=False)
    assert claim_b(res).verdict == NOT_MEASURED


def test_claim_b_uses_head_to_head_when_present():
    rng = np.random.default_rng(2)
    small = ModelResult("ppo_ptx", "ppo_ptx", 100,
                        comparisons=simulated_comparisons(0.2, 100, 1, rng, opponent="big"))
    big = ModelResult("big", "base", 1000, win_rate={"training": est(0.1)})
    row = claim_b(EvalResults([small, big]))
    assert row.null == 0.5 and "head to head" in row.measured
    assert row.rule == "CI of the head-to-head win rate entirely above / below 0.5"
    assert row.verdict == NOT_REPRODUCED


def test_each_preference_link_states_the_rule_it_was_decided_by():
    """A link decided head to head says null 0.5; one decided by two win rates against the
    baseline says a gap with null 0 (the report printed the gap rule for head-to-head links)."""
    rng = np.random.default_rng(4)
    models = [make_model(n, n, p, rng) for n, p in (("base", 0.2), ("base_prompted", 0.3),
                                                    ("ppo", 0.7), ("ppo_ptx", 0.7))]
    models[2].comparisons += simulated_comparisons(0.8, 100, 1, rng, opponent="base_prompted")
    links = {link.id: link for link in claim_c(EvalResults(models)).links}
    assert (links["c1"].null, links["c1"].rule) == (0.5, "CI of the head-to-head win rate entirely above / below 0.5")
    for cid in ("c2", "c3"):
        assert (links[cid].null, links[cid].rule) == (0.0, "CI of the win-rate gap entirely above / below 0")


def test_claim_c_reversed_link_fails():
    rng = np.random.default_rng(3)
    res = EvalResults([
        make_model("base", "base", 0.6, rng),          # base better than prompted: reversed
        make_model("prompted", "base_prompted", 0.3, rng),
        make_model("ppo", "ppo", 0.8, rng),
        make_model("ppo_ptx", "ppo_ptx", 0.8, rng),
    ])
    row = claim_c(res)
    assert row.verdict == NOT_REPRODUCED
    assert {link.id: link.verdict for link in row.links}["c3"] == NOT_REPRODUCED


def test_claim_c_missing_model_is_not_measured():
    res = EvalResults([ModelResult("ppo_ptx", "ppo_ptx", win_rate={"training": est(0.8)}),
                       ModelResult("base", "base", win_rate={"training": est(0.2)})])
    row = claim_c(res)
    assert row.verdict == NOT_MEASURED
    assert [link.verdict for link in row.links] == [NOT_MEASURED] * 3


def test_claim_d_tolerance_band():
    def run(heldout):
        return claim_d(EvalResults([ModelResult(
            "ppo_ptx", "ppo_ptx", win_rate={"training": est(0.70, 0.02), "heldout": heldout})]))
    assert run(est(0.72, 0.02)).verdict == REPRODUCED
    assert run(est(0.40, 0.02)).verdict == NOT_REPRODUCED
    assert run(est(0.78, 0.05)).verdict == INCONCLUSIVE
    assert claim_d(_policy_only(est(0.7))).verdict == NOT_MEASURED


def test_claim_d_from_raw_comparisons_uses_prompt_bootstrap():
    rng = np.random.default_rng(4)
    comps = simulated_comparisons(0.7, 400, 1, rng) + \
        simulated_comparisons(0.7, 400, 1, rng, labelers="heldout")
    row = claim_d(EvalResults([ModelResult("ppo_ptx", "ppo_ptx", comparisons=comps)]))
    assert row.effect.method == "bootstrap-prompts-diff"
    assert row.verdict == REPRODUCED


def test_claim_e_hallucination():
    def run(pol_rate, base_rate):
        return claim_e(EvalResults([
            ModelResult("p", "ppo_ptx", metadata={"hallucination": est(pol_rate, 0.04)}),
            ModelResult("b", "base", metadata={"hallucination": est(base_rate, 0.04)})]))
    assert run(0.21, 0.41).verdict == REPRODUCED
    assert run(0.41, 0.21).verdict == NOT_REPRODUCED
    assert run(0.30, 0.32).verdict == INCONCLUSIVE
    assert run(0.3, 0.3).effect.method == "normal-approx"


def test_claim_e_paired_when_raw_samples_exist():
    row = claim_e(make_results())
    assert row.effect.method == "bootstrap-prompts-diff"
    assert row.effect.value > 0


def test_claim_f_alignment_tax():
    def run(ppl_ptx, ppl_ppo, cont_ptx=None, cont_ppo=None, cloze=(0.2, 0.9), base=(10.0, 0.9), sft=None):
        pt = lambda p, c, z: {"perplexity": est(p, 0.2), "cloze_accuracy": est(z, 0.01),  # noqa: E731
                              **({} if c is None else {"continuation_accuracy": est(c, 0.01)})}
        models = [ModelResult("x", "ppo_ptx", pretraining=pt(ppl_ptx, cont_ptx, cloze[0])),
                  ModelResult("y", "ppo", pretraining=pt(ppl_ppo, cont_ppo, cloze[1]))]
        if base is not None:
            models.append(ModelResult("b", "base", pretraining=pt(base[0], None if cont_ppo is None else base[1],
                                                                  0.99)))
        if sft is not None:
            models.append(ModelResult("s", "sft", pretraining=pt(sft[0], None if cont_ppo is None else sft[1], 0.99)))
        return claim_f(EvalResults(models))
    assert run(19.0, 25.0).verdict == REPRODUCED
    assert run(25.0, 19.0).verdict == NOT_REPRODUCED
    assert run(19.0, 25.0, 0.40, 0.50).verdict == NOT_REPRODUCED  # continuation link reversed
    assert run(19.0, 25.0, 0.50, 0.40).verdict == REPRODUCED
    # both links of the paper: PPO pays a tax against the base (f1, f2), PPO-ptx pays less (f3, f4);
    # the fact cloze (here far worse for PPO-ptx) is reported, not a link
    links = run(19.0, 25.0, 0.50, 0.40).links
    assert [link.id for link in links] == ["f1", "f2", "f3", "f4"]
    assert ["(the tax)" in link.statement for link in links] == [True, True, False, False]
    assert "continuation_accuracy" in links[1].statement and "continuation_accuracy" in links[3].statement
    assert links[0].effect.value == pytest.approx(15.0) and links[1].effect.value == pytest.approx(0.5)
    assert run(19.0, 19.1).verdict == INCONCLUSIVE
    assert claim_f(_policy_only(est(0.8))).verdict == NOT_MEASURED


def test_claim_f_needs_a_tax_against_the_base():
    """PPO-ptx better than PPO is not enough: with PPO no worse than the base there is no tax to reduce."""
    def run(base_ppl, base_cont=0.45, **kw):
        pt = lambda p, c: {"perplexity": est(p, 0.2), "continuation_accuracy": est(c, 0.01)}  # noqa: E731
        models = [ModelResult("x", "ppo_ptx", pretraining=pt(19.0, 0.5)),
                  ModelResult("y", "ppo", pretraining=pt(25.0, 0.4))]
        if base_ppl is not None:
            models.append(ModelResult("b", "base", pretraining=pt(base_ppl, base_cont)))
        models += [ModelResult("s", "sft", pretraining=pt(*kw["sft"]))] if "sft" in kw else []
        return claim_f(EvalResults(models))
    assert run(30.0, 0.35).verdict == NOT_REPRODUCED  # the base is worse than PPO: no tax
    row = run(30.0, 0.35)
    assert [link.verdict for link in row.links] == [NOT_REPRODUCED, NOT_REPRODUCED, REPRODUCED, REPRODUCED]
    assert run(25.1, 0.45).verdict == INCONCLUSIVE  # perplexity tax within noise
    missing = run(None)
    assert missing.verdict == NOT_MEASURED and missing.links[0].verdict == NOT_MEASURED
    # where the tax arises, next to the tax links: here SFT already carries it
    row = run(10.0, 0.9, sft=(24.8, 0.41))
    assert row.verdict == REPRODUCED
    assert "where it arises: y vs s: +0.200 [" in row.links[0].measured
    assert "s vs b: +14.800 [" in row.links[0].measured
    assert "y vs s: +0.010 [" in row.links[1].measured


def test_deliberately_worse_rlhf_policies_fail_claim_f():
    """A PPO-ptx that loses more held-out performance than PPO: "not reproduced", whatever the tax."""
    good = claim_f(make_results())
    rng = np.random.default_rng(0)
    bad = make_results()
    bad.models = [m for m in bad.models if m.kind != "ppo_ptx"] + [
        make_model("ppo_ptx", "ppo_ptx", 0.8, rng, ppl=40.0)]
    assert good.verdict == REPRODUCED and claim_f(bad).verdict == NOT_REPRODUCED


def test_claim_c_says_the_sft_step_is_claim_a():
    row = claim_c(make_results())
    assert "SFT < PPO-ptx step is claim a" in row.statement and "not tested" in row.statement
    assert [link.id for link in row.links] == ["c1", "c2", "c3"]  # no new link


def test_claim_g_not_measured_without_flan():
    assert claim_g(make_results(with_flan=False)).verdict == NOT_MEASURED
    res = make_results()
    res.models.append(ModelResult("t0", "t0", 125_000_000, win_rate={"training": est(0.9)}))
    row = claim_g(res)
    assert [link.id for link in row.links] == ["g1", "g2"]
    assert row.verdict == NOT_REPRODUCED  # T0 is better than PPO-ptx here


# ----------------------------------------------------------------------------- data model

def test_json_round_trip_preserves_results_and_verdicts():
    res = make_results()
    text = res.to_json()
    back = EvalResults.from_json(text)
    assert back == res
    assert [c.to_dict() for c in check_claims(back)] == [c.to_dict() for c in check_claims(res)]


def test_json_writes_nan_as_null(tmp_path):
    res = make_results()
    res.training_curves["ppo"][0]["ppo/score"] = float("nan")
    res.models[0].metadata["hallucination"] = Estimate(float("nan"), float("nan"),
                                                       float("nan"), 0, "given")
    path = tmp_path / "results.json"
    res.save(path)
    assert "NaN" not in path.read_text()
    back = EvalResults.load(path)
    assert back.training_curves["ppo"][0]["ppo/score"] is None


def test_data_model_validation():
    with pytest.raises(ValueError):
        ModelResult("m", "gpt4")
    with pytest.raises(ValueError):
        EvalResults([ModelResult("m", "sft"), ModelResult("m", "ppo")])


def test_opponent_comparisons_are_flipped():
    a = ModelResult("a", "ppo_ptx", comparisons=[Comparison("p", 1.0, opponent="b")])
    b = ModelResult("b", "flan", comparisons=[Comparison("q", 1.0, opponent="a")])
    comps = EvalResults([a, b]).comparisons("a", "b")
    assert sorted(c.outcome for c in comps) == [0.0, 1.0]


def test_the_perplexity_gap_pairs_the_held_out_blocks_both_models_read():
    """Two models whose losses move together block by block: their perplexities differ clearly,
    though each one's interval (over blocks that differ a lot) overlaps the other's."""
    rng = np.random.default_rng(0)
    blocks = rng.normal(3.0, 0.5, 96)                       # per-block loss of the better model
    worse = blocks + 0.05 + rng.normal(0, 0.01, 96)         # the same blocks, a little worse each
    ids = [f"block-{i}-h" for i in range(96)]

    def model(name, kind, nlls, groups):
        from instructgpt.evaluation.probes import perplexity_estimate
        from instructgpt.evaluation.results import Samples
        return ModelResult(name, kind, pretraining={"perplexity": perplexity_estimate(np.asarray(nlls))},
                           raw={"nll": Samples(list(nlls), groups)})

    a, b = model("ptx", "ppo_ptx", blocks, ids), model("ppo", "ppo", worse, ids)
    gap = metric_gap(a, b, "pretraining", "perplexity")
    assert gap.value == pytest.approx(math.exp(worse.mean()) - math.exp(blocks.mean()))
    assert gap.method == "bootstrap-prompts-diff" and gap.low > 0
    # each model's own interval spans the other's value: unpaired, the gap would be within noise
    assert a.pretraining["perplexity"].high > b.pretraining["perplexity"].value
    # blocks of another tokenizer (other hashes) do not pair: the normal approximation, inconclusive
    other = model("ppo", "ppo", worse, [f"block-{i}-other" for i in range(96)])
    unpaired = metric_gap(a, other, "pretraining", "perplexity")
    assert unpaired.method == "normal-approx" and unpaired.low < 0 < unpaired.high
