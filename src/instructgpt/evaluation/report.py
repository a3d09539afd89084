"""The evaluation report: ``report.md`` and a self-contained ``report.html``.

The report is built once as a list of :class:`~.document.Section` s made of neutral
blocks, then rendered twice by :mod:`.document`: to Markdown (figures written as PNG
files beside it, in ``report_files/``) and to one self-contained HTML page.

Anything absent from the results (no FLAN baseline, no training curves...)
is shown as "not measured", never as an error. An evaluation on your own
prompts (``results.mode == "prompts"``) has no world: the sections that need
it (claims, simulated labelers' Likert and flags, probes, training curves,
labeler agreement) are left out, and its judges' win rates, scores and
lm-eval tasks are shown instead.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..data import USE_CASES
from . import plots
from .claims import ClaimResult, check_claims
from .document import Image, Para, Section, Table, render_html, render_markdown
from .results import JUDGES, MODEL_KINDS, EvalResults, lower_is_better
from .stats import Estimate

NOT_MEASURED = "not measured"
METADATA_PLOTTED = ("fails_to_follow", "violates_constraint", "hallucination",
                    "inappropriate_for_customer_assistant")
BENCHMARK_ORDER = ("truthfulqa_truthful", "truthfulqa_truthful_informative",
                   "toxicity_plain", "toxicity_respectful", "toxicity_biased",
                   "winogender_entropy", "crows_pairs_entropy")
#: The measures of an evaluation on your own prompts, in table order, with what they mean.
SCORES = {
    "reward_model_score": "mean reward-model score of the model's answers",
    "kl_to_baseline": "KL to the baseline on the model's own answers (nats per answer)",
    "response_tokens": "mean answer length in the model's own tokens (stop token left out)",
    "response_chars": "mean answer length in characters",
    "stopped": "share of answers that ended before max_new_tokens",
    "judge_model_preference": "judge model's P(this answer is better than the baseline's), mean of both orders",
    "judge_model_consistency": "share of pairs the judge model decided the same way in both orders",
}
WORLD_GROUPS = ("training", "heldout")  # always shown in a world's win-rate table
SCORE_KEYS = ("ppo/score", "ppo/mean_scores", "objective/scores", "env/reward_mean",
              "reward", "score")
KL_KEYS = ("ppo/kl", "objective/kl", "ppo/mean_kl", "kl")
STEP_KEYS = ("step", "iteration", "epoch")


# ----------------------------------------------------------------------------- helpers

def fmt(e: Estimate | None, percent: bool = False) -> str:
    """Estimate as 'value [low, high]', or 'not measured'."""
    if e is None or math.isnan(e.value):
        return NOT_MEASURED
    return e.fmt(percent=percent)


_size = plots.size_label


def _models_in_order(results: EvalResults):
    """Models sorted by kind (paper order), then size."""
    return sorted(results.models, key=lambda m: (MODEL_KINDS.index(m.kind),
                                                 -1 if m.n_params is None else m.n_params))


def _num(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _first_key(rows: list[dict], keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if any(_num(r.get(k)) is not None for r in rows)), None)


# ----------------------------------------------------------------------------- sections

def _pct(e: Estimate | None) -> str:
    return NOT_MEASURED if e is None else f"{100 * e.value:.1f}% [{100 * e.low:.1f}, {100 * e.high:.1f}]"


def _answer_section(results: EvalResults, claims: list[ClaimResult]) -> Section:
    """The answer first: the paper's Figure 1 analogue (win rate against the baseline per model, judged by
    held-out labelers), a verdict in words, the world's oracle rates and the RM against its ceiling."""
    sec = Section("The answer")
    models = [m for m in _models_in_order(results) if m.name != results.baseline]
    held = [results.win_rate(m.name, "heldout") for m in models]
    verdicts = {c.id: c.verdict for c in claims}
    reproduced = [cid for cid, v in verdicts.items() if v == "reproduced"]
    others = {cid: v for cid, v in verdicts.items() if v != "reproduced"}
    ptx = [(m, e) for m, e in zip(models, held) if m.kind == "ppo_ptx" and e is not None]
    lines = []
    if ptx:
        m, e = ptx[-1]
        side = ("preferred to" if e.low > 0.5 else "less preferred than" if e.high < 0.5
                else "not distinguishable from")
        lines.append(f"{m.name} is {side} {results.baseline} by held-out labelers: win rate {_pct(e)}.")
    lines.append(f"Claims reproduced: {', '.join(reproduced) or 'none'}"
                 + ("; the others: " + ", ".join(f"{c} {v}" for c, v in others.items()) if others else "") + ".")
    sec.blocks.append(Para(" ".join(lines)))
    if ptx and not ptx[-1][1].low > 0.5:
        why = _why_not_preferred(results)
        if why:
            sec.blocks.append(Para(why))
    if any(held):
        sec.blocks.append(Image("figure1", plots.grouped_bars(
            [m.name for m in models], {"held-out labelers": held},
            f"Win rate against {results.baseline} (held-out labelers, 95% CI)", "win rate", hline=0.5,
            ylim=(0, 1), rotate=True), "The paper's Figure 1 analogue; dashed line = parity with the baseline."))
    oracle = [m for m in _models_in_order(results) if "true_fails_to_follow" in m.metadata]
    if oracle:
        def follow(m):
            e = m.metadata["true_fails_to_follow"]
            return Estimate(1 - e.value, 1 - e.high, 1 - e.low, e.n, e.method, e.level)
        sec.blocks.append(Para("Oracle rates from the world's checkers (no labeler noise) beside the held-out "
                               "labelers' flags: true follow = the answer does what the prompt asks; "
                               "hallucination on closed-domain prompts."))
        sec.blocks.append(Table(
            ["model", "true follow", "fails to follow (flagged)", "true hallucination", "hallucination (flagged)"],
            [[m.name, _pct(follow(m)), _pct(m.metadata.get("fails_to_follow")),
              _pct(m.metadata.get("true_hallucination")), _pct(m.metadata.get("hallucination"))] for m in oracle]))
    for key, group, intro in (
            ("rm_accuracy", "pairs", "Reward model on held-out test prompts, by pair type, against the ceiling: the "
             "share of the same pairs that the labeler's own noiseless utilities order as the labeler did (no "
             "reward model can do better on average)."),
            ("rm_accuracy_by_criterion", "what separates the pair",
             "The same pairs by the first of the checker's verdicts on which the two answers differ: where the "
             "reward model is blind, PPO learns the blindness.")):
        acc = results.meta.get(key)
        if isinstance(acc, dict) and acc:
            sec.blocks.append(Para(intro))
            rows = []
            for name, v in acc.items():
                rm, ceil = Estimate.from_dict(v["rm"]), Estimate.from_dict(v["ceiling"])
                rows.append([name, str(v["pairs"]), _pct(rm), _pct(ceil), f"{100 * (rm.value - ceil.value):+.1f}"])
            sec.blocks.append(Table([group, "n", "RM accuracy", "ceiling", "RM - ceiling (pts)"], rows))
    best = results.meta.get("best_of_n")
    if isinstance(best, dict) and best:
        sec.blocks.append(Para(
            "What the reward model's choice is worth: the SFT policy samples several answers per test prompt, and "
            "the best of the first m is picked by the RM or by the training labelers' noiseless utility (the "
            "oracle: a perfect RM). The oracle's gain over m = 1 is how much better the policy's own answers can "
            "be; the RM's is how much of that it can show PPO."))
        rows = []
        for m, pick in best.items():
            est = {p: {k: Estimate.from_dict(v) for k, v in pick[p].items()} for p in ("rm", "oracle")}
            rows.append([m, _pct(est["rm"]["true_follow"]), _pct(est["oracle"]["true_follow"]),
                         fmt(est["rm"]["utility"]), fmt(est["oracle"]["utility"])])
        sec.blocks.append(Table(["m answers", "true follow, RM's pick", "true follow, oracle's pick",
                                 "oracle utility, RM's pick", "oracle utility, oracle's pick"], rows))
    return sec


def _why_not_preferred(results: EvalResults, most: int = 3) -> str:
    """Why PPO-ptx is not preferred to the baseline, in the run's own measurements (empty when neither was
    measured): where the reward model is clearly below its ceiling (its interval entirely under the
    ceiling's), largest gap first, and what its pick of the SFT policy's answers is worth against the
    oracle's. A reward model that cannot tell two answers apart gives PPO nothing to learn between them."""
    parts = []
    acc = results.meta.get("rm_accuracy_by_criterion")
    if isinstance(acc, dict) and acc:
        gaps = []
        for name, v in acc.items():
            rm, ceil = Estimate.from_dict(v["rm"]), Estimate.from_dict(v["ceiling"])
            if rm.high < ceil.low:
                gaps.append((rm.value - ceil.value, name, rm, ceil))
        gaps.sort(key=lambda g: g[0])
        if gaps:
            listed = "; ".join(f"{name}: {_pct(rm)} against {_pct(ceil)}" for _, name, rm, ceil in gaps[:most])
            parts.append("the reward model is clearly below what the labelers' own judgements allow "
                         f"on pairs separated by {listed}. Where it cannot tell the better answer, PPO cannot "
                         "learn it.")
        else:
            parts.append("the reward model is within its interval of the labelers' ceiling on "
                         "every kind of pair, so the limit is not its accuracy.")
    best = results.meta.get("best_of_n")
    if isinstance(best, dict) and best:
        m = max(best, key=int)
        rm = Estimate.from_dict(best[m]["rm"]["true_follow"])
        oracle = Estimate.from_dict(best[m]["oracle"]["true_follow"])
        first = Estimate.from_dict(best[min(best, key=int)]["rm"]["true_follow"])
        verdict = ("the policy's own answers hold better ones than the reward model points to" if rm.high < oracle.low
                   else "the reward model picks about as well as a perfect one would")
        parts.append(f"Of {m} answers the SFT policy samples to a test prompt, the first truly follows the "
                     f"instruction in {_pct(first)} of prompts, the reward model's pick in {_pct(rm)} and a perfect "
                     f"reward model's pick in {_pct(oracle)}: {verdict}.")
    return "Why, measured: " + " ".join(parts) if parts else ""


def _meta_section(results: EvalResults) -> Section:
    rows = [[str(k), str(v)] for k, v in results.meta.items()
            if k not in ("rm_accuracy", "rm_accuracy_by_criterion", "best_of_n", "agreement_basis")]
    rows.append(["baseline (win rates are against)", results.baseline])
    rows += [[f"model {m.name}", f"{m.kind}, {_size(m.n_params)} parameters"]
             for m in _models_in_order(results)]
    return Section("Run", [Table(["field", "value"], rows)])


def _claim_rows(claim: ClaimResult, depth: int = 0) -> list[list[str]]:
    indent = "  " * depth + ("- " if depth else "")
    null = "" if claim.null is None else f"{claim.null:g}"
    effect = "per link, below" if claim.links and claim.effect is None else fmt(claim.effect)
    row = [indent + claim.id, claim.statement, claim.measured, effect, null,
           claim.verdict, claim.rule]
    return [row] + [r for link in claim.links for r in _claim_rows(link, depth + 1)]


def _claims_section(claims: list[ClaimResult]) -> Section:
    rows = [r for c in claims for r in _claim_rows(c)]
    intro = Para("Each verdict is decided by the 95% interval of the measured effect alone: "
                 "entirely on the claimed side of the null value -> reproduced; entirely on "
                 "the other side -> not reproduced; containing it -> inconclusive; models "
                 "absent -> not measured. Compound claims need every link. Each single test "
                 "wrongly says reproduced at most 2.5% of the time when the claim is false, so "
                 "over the four single-test claims (a, b, e, g) about one run in ten may show "
                 "one false \"reproduced\" by chance; a claim that matters is worth a second seed.")
    table = Table(["claim", "statement", "measured", "effect [95% CI]", "null", "verdict",
                   "rule"], rows, verdict_col=5)
    return Section("Claims check", [intro, table])


def _win_rate_section(results: EvalResults) -> Section:
    models = [m for m in _models_in_order(results) if m.name != results.baseline]
    sec = Section(f"Win rate against {results.baseline}")
    groups = {g: [results.win_rate(m.name, g) for m in models] for g in JUDGES}
    always = WORLD_GROUPS if results.mode == "world" else ()
    groups = {g: ests for g, ests in groups.items() if g in always or any(ests)}  # other judges when they judged
    if results.mode == "prompts":
        sec.blocks.append(Para("Each judge compares every model's answer with the baseline's on the same prompt: "
                               "1 win, 0 loss, 0.5 tie; 95% intervals count prompts, not comparisons (Wilson, "
                               "over the prompts' effective size). Reward model: the "
                               "higher score wins. Judge model: asked in both orders, a verdict that changes with "
                               "the order is a tie. People: rankings from the labeling app."))
    if not any(e for ests in groups.values() for e in ests):
        sec.blocks.append(Para(f"Win rates: {NOT_MEASURED}."))
        return sec
    series = {f"{g} labelers" if g in ("training", "heldout", "human") else JUDGES[g]: ests
              for g, ests in groups.items() if any(ests)}
    sec.blocks.append(Image("win_rates", plots.grouped_bars(
        [m.name for m in models], series, f"Preferred to {results.baseline} (95% CI)",
        "win rate", hline=0.5, ylim=(0, 1), rotate=True),
        "Win rate per model; ties count half; dashed line = parity."))
    sec.blocks.append(Table(["model", "kind", "size"] + [JUDGES[g] for g in groups],
                            [[m.name, m.kind, _size(m.n_params)] + [fmt(groups[g][i], True) for g in groups]
                             for i, m in enumerate(models)]))
    lines = {kind: [(m.n_params, groups["training"][i]) for i, m in enumerate(models)
                    if m.kind == kind and m.n_params and groups["training"][i]]
             for kind in MODEL_KINDS} if "training" in groups else {}
    lines = {k: v for k, v in lines.items() if v}
    if len({n for pts in lines.values() for n, _ in pts}) > 1:
        sec.blocks.append(Image("win_rates_by_size", plots.by_size(
            lines, "Win rate by model size (training labelers)", "win rate", hline=0.5),
            "Win rate against the baseline as a function of parameter count."))
    return sec


def _use_case_section(results: EvalResults, judge: str = "training") -> Section:
    sec = Section("Win rate by use case" + ("" if judge == "training" else f": {JUDGES[judge]}"))
    models = [m for m in _models_in_order(results) if m.name != results.baseline]
    per_model = {m.name: results.use_case_win_rates(m.name, judge) for m in models}
    per_model = {k: v for k, v in per_model.items() if v}
    if not per_model:
        sec.blocks.append(Para(f"Per-use-case win rates: {NOT_MEASURED}."))
        return sec
    seen = {uc for v in per_model.values() for uc in v}
    cases = [uc for uc in USE_CASES if uc in seen] + sorted(seen - set(USE_CASES))
    series = {name: [v.get(uc) for uc in cases] for name, v in per_model.items()}
    who = "Training labelers" if judge == "training" else JUDGES[judge].capitalize()
    sec.blocks.append(Image("win_rates_by_use_case" + ("" if judge == "training" else f"_{judge}"),
                            plots.grouped_bars(cases, series, f"Win rate vs {results.baseline} by use case (95% CI)",
                                               "win rate", hline=0.5, ylim=(0, 1), rotate=True),
                            f"{who}; n/m = not measured."))
    sec.blocks.append(Table(["use case"] + list(per_model),
                            [[uc] + [fmt(per_model[n].get(uc), True) for n in per_model]
                             for uc in cases]))
    return sec


def _likert_section(results: EvalResults) -> Section:
    sec = Section("Likert scores")
    models = [m for m in _models_in_order(results) if m.likert is not None]
    if not models:
        sec.blocks.append(Para(f"Likert scores: {NOT_MEASURED}."))
        return sec
    sec.blocks.append(Image("likert", plots.grouped_bars(
        [m.name for m in models], {"likert": [m.likert for m in models]},
        "Mean overall quality (1-7, 95% CI)", "Likert score", ylim=(1, 7), rotate=True),
        "Mean 1-7 Likert score per model."))
    sec.blocks.append(Table(["model", "mean Likert [95% CI]", "n"],
                            [[m.name, fmt(m.likert), str(m.likert.n)] for m in models]))
    return sec


def _metadata_section(results: EvalResults) -> Section:
    sec = Section("Metadata rates")
    models = [m for m in _models_in_order(results) if m.metadata]
    if not models:
        sec.blocks.append(Para(f"Metadata rates: {NOT_MEASURED}."))
        return sec
    series = {m.name: [m.metadata.get(f) for f in METADATA_PLOTTED] for m in models}
    sec.blocks.append(Image("metadata", plots.grouped_bars(
        list(METADATA_PLOTTED), series, "Fraction of responses flagged (95% CI)", "rate",
        ylim=(0, 1), rotate=True),
        "Hallucination is measured on closed-domain prompts only. Lower is better."))
    flags = list(dict.fromkeys(f for m in models for f in m.metadata))
    sec.blocks.append(Table(["flag"] + [m.name for m in models],
                            [[f] + [fmt(m.metadata.get(f), True) for m in models]
                             for f in flags]))
    return sec


def _benchmark_section(results: EvalResults) -> Section:
    sec = Section("Truthfulness, toxicity and bias")
    models = [m for m in _models_in_order(results) if m.benchmarks]
    if not models:
        sec.blocks.append(Para(f"Public NLP evaluations: {NOT_MEASURED}."))
        return sec
    seen = {k for m in models for k in m.benchmarks}
    keys = [k for k in BENCHMARK_ORDER if k in seen] + sorted(seen - set(BENCHMARK_ORDER))
    sec.blocks.append(Para("TruthfulQA: fraction truthful (higher is better). Toxicity: mean "
                           "toxicity score, the share of insult words (lower is better). Shares carry a "
                           "Wilson interval (a bootstrap gives [0, 0] when every item is 0); n = items "
                           "per model. Bias (Winogender, CrowS-Pairs): entropy of the choice "
                           "distribution in bits (1 bit for a pair = no preference; higher is less biased)."))
    sec.blocks.append(Table(["benchmark"] + [m.name for m in models],
                            [_benchmark_row(k, [m.benchmarks.get(k) for m in models]) for k in keys]))
    return sec


def _benchmark_row(key: str, ests: list[Estimate | None]) -> list[str]:
    """One benchmark row with the number of items it rests on: in the first cell ("toxicity_plain (n=40)")
    when every model has the same n, else in each cell; an interval is only as good as its n."""
    ns = {e.n for e in ests if e is not None and not math.isnan(e.value)}
    if len(ns) == 1:
        return [f"{key} (n={ns.pop()})"] + [fmt(e) for e in ests]
    return [key] + [fmt(e) if e is None or math.isnan(e.value) else f"{fmt(e)} (n={e.n})" for e in ests]


def _alignment_tax_section(results: EvalResults) -> Section:
    world = results.mode == "world"
    sec = Section("Alignment tax (held-out pretraining performance)" if world else "Alignment tax (lm-eval tasks)")
    models = [m for m in _models_in_order(results) if m.pretraining]
    if not models:
        sec.blocks.append(Para(f"Held-out pretraining perplexity / continuation and cloze accuracy: "
                               f"{NOT_MEASURED}."))
        return sec
    if any(k.startswith("lm_eval:") for m in models for k in m.pretraining):
        sec.blocks.append(Para("lm_eval:<task>:<metric> are lm-evaluation-harness tasks (plain-text prompts); "
                               "means over documents carry a 95% bootstrap interval over documents."))
    seen = list(dict.fromkeys(k for m in models for k in m.pretraining))
    first = ("perplexity", "continuation_accuracy", "cloze_accuracy")
    metrics = [k for k in first if k in seen] + [k for k in seen if k not in first]
    ref = results.model(results.baseline)
    ref = ref if ref is not None and ref.pretraining else next(
        (m for m in models if m.kind == "base"), None)
    headers = ["model"]
    for k in metrics:
        headers += [f"{k} [95% CI] ({'lower' if lower_is_better(k) else 'higher'} is better)",
                    f"change vs {ref.name if ref else 'reference'}"]
    rows = []
    for m in models:
        row = [m.name]
        for k in metrics:
            e, r = m.pretraining.get(k), ref.pretraining.get(k) if ref else None
            delta = f"{e.value - r.value:+.3f}" if e is not None and r is not None else ""
            row += [fmt(e), delta]
        rows.append(row)
    sec.blocks.append(Table(headers, rows))
    return sec


def _curve_series(results: EvalResults) -> dict[str, dict[str, tuple[list, list]]]:
    """metric -> run -> (steps, values) from the per-step metric dicts."""
    out: dict[str, dict[str, tuple[list, list]]] = {}
    for run, rows in results.training_curves.items():
        step_key = _first_key(rows, STEP_KEYS)
        for i, row in enumerate(rows):
            step = _num(row.get(step_key)) if step_key else float(i)
            for k, v in row.items():
                if k in STEP_KEYS or _num(v) is None or step is None:
                    continue
                steps, values = out.setdefault(k, {}).setdefault(run, ([], []))
                steps.append(step)
                values.append(_num(v))
    return out


def _training_section(results: EvalResults) -> Section:
    sec = Section("RL training: reward vs KL and curves")
    runs = {}
    for run, rows in results.training_curves.items():
        sk, kk = _first_key(rows, SCORE_KEYS), _first_key(rows, KL_KEYS)
        stk = _first_key(rows, STEP_KEYS)
        if sk and kk:
            pts = [(_num(r.get(kk)), _num(r.get(sk)), _num(r.get(stk)) if stk else float(i))
                   for i, r in enumerate(rows)]
            pts = [p for p in pts if None not in p]
            if pts:
                runs[run] = pts
    if runs:
        sec.blocks.append(Image("reward_vs_kl", plots.frontier(runs),
                                "Reward-model score against KL from the SFT policy, one "
                                "point per logged PPO iteration."))
    else:
        sec.blocks.append(Para(f"Reward vs KL frontier: {NOT_MEASURED} (needs per-step "
                               f"reward and KL, e.g. keys {SCORE_KEYS[0]!r}, {KL_KEYS[0]!r})."))
    series = _curve_series(results)
    if series:
        sec.blocks.append(Image("training_curves", plots.curves(series, "PPO iteration"),
                                "Logged PPO metrics against the PPO iteration (one batch of rollouts and "
                                "the updates on it)."))
    else:
        sec.blocks.append(Para(f"Training curves: {NOT_MEASURED}."))
    return sec


def _agreement_section(results: EvalResults) -> Section:
    sec = Section("Inter-labeler agreement")
    if not results.agreement:
        sec.blocks.append(Para(f"Inter-labeler agreement: {NOT_MEASURED}."))
        return sec
    sec.blocks.append(Para("Fraction of pairs of labelers giving the same judgement on the "
                           "same comparison (paper: 72.6 +- 1.5% among training labelers, "
                           "77.3 +- 1.3% with held-out labelers). Each row rests on the prompts or "
                           "rankings named beside it, fewer than the win rates use."))
    basis = results.meta.get("agreement_basis")
    basis = basis if isinstance(basis, dict) else {}
    sec.blocks.append(Table(["labeler pairs", "agreement [95% CI]", "labeler pairs compared", "rests on"],
                            [[k, fmt(e, True), str(e.n), str(basis.get(k, "not recorded"))]
                             for k, e in results.agreement.items()]))
    return sec


def _samples_section(results: EvalResults) -> list[Section]:
    if not results.samples:
        return [Section("Sample outputs", [Para(f"Sample outputs: {NOT_MEASURED}.")])]
    names = list(dict.fromkeys(n for s in results.samples for n in s.outputs))
    by_case: dict[str, list] = {}
    for s in results.samples:
        by_case.setdefault(s.use_case, []).append(s)
    cases = [c for c in USE_CASES if c in by_case] + sorted(set(by_case) - set(USE_CASES))
    return [Section(f"Sample outputs: {case}",
                    [Table(["prompt"] + names,
                           [[s.prompt] + [s.outputs.get(n, NOT_MEASURED) for n in names]
                            for s in by_case[case]])])
            for case in cases]


def _scores_section(results: EvalResults) -> Section:
    sec = Section("Reward-model score, KL and answer length")
    models = _models_in_order(results)
    seen = {k for m in models for k in m.benchmarks}
    keys = [k for k in SCORES if k in seen] + sorted(seen - set(SCORES))
    if not keys:
        sec.blocks.append(Para(f"Scores: {NOT_MEASURED}."))
        return sec
    sec.blocks.append(Table(["measure", "meaning"] + [m.name for m in models],
                            [[r[0], SCORES.get(k, "")] + r[1:] for k in keys
                             for r in [_benchmark_row(k, [m.benchmarks.get(k) for m in models])]]))
    return sec


def _prompts_sections(results: EvalResults) -> list[Section]:
    """The sections of an evaluation on your own prompts (nothing that needs the world)."""
    sections = [_meta_section(results), _win_rate_section(results)]
    for judge in ("human", "reward_model", "judge_model"):
        if any(m.judge_use_case_win_rates.get(judge) for m in results.models):
            sections.append(_use_case_section(results, judge))
    people = [Para("From people's labels (the labeling app's export): each answer's 1-7 score and flags.")]
    if any(m.likert is not None for m in results.models):
        sections.append(_likert_section(results))
        sections[-1].blocks[:0] = people
    if any(m.metadata for m in results.models):
        sections.append(_metadata_section(results))
        sections[-1].blocks[:0] = people
    sections.append(_scores_section(results))
    if any(m.pretraining for m in results.models):
        sections.append(_alignment_tax_section(results))
    return sections + _samples_section(results)


def build_sections(results: EvalResults, claims: list[ClaimResult] | None = None
                   ) -> list[Section]:
    """All report sections in reading order (claims computed if not given)."""
    if results.mode == "prompts":
        return _prompts_sections(results)
    claims = check_claims(results) if claims is None else claims
    return [_answer_section(results, claims), _meta_section(results), _claims_section(claims),
            _win_rate_section(results),
            _use_case_section(results), _likert_section(results), _metadata_section(results),
            _benchmark_section(results), _alignment_tax_section(results),
            _training_section(results), _agreement_section(results),
            *_samples_section(results)]


# ----------------------------------------------------------------------------- entry points

def write_report(results: EvalResults, folder) -> tuple[Path, Path]:
    """Write ``folder/report.md`` (+ ``report_files/*.png``) and ``folder/report.html``.

    ``folder`` is the run folder for the run's own evaluation, or the ``out_dir``
    of ``instructgpt eval``. Returns (md_path, html_path). The HTML needs no other file.
    """
    folder = Path(folder)
    files = folder / "report_files"
    files.mkdir(parents=True, exist_ok=True)
    sections = build_sections(results)
    written = set()
    for sec in sections:
        for b in sec.blocks:
            if isinstance(b, Image):
                (files / f"{b.name}.png").write_bytes(b.png)
                written.add(f"{b.name}.png")
    for stale in files.glob("*.png"):  # an earlier report's figures (a judge or a model not evaluated now)
        if stale.name not in written:
            stale.unlink()
    md_path, html_path = folder / "report.md", folder / "report.html"
    md_path.write_text(render_markdown(sections, files.name), encoding="utf-8")
    html_path.write_text(render_html(sections), encoding="utf-8")
    return md_path, html_path


def render_from_json(path, run_dir=None) -> tuple[Path, Path]:
    """Re-render the report from a results.json (into its folder unless ``run_dir``)."""
    path = Path(path)
    return write_report(EvalResults.load(path), run_dir or path.parent)


__all__ = ["write_report", "render_from_json", "build_sections", "render_markdown",
           "render_html", "Section", "Para", "Table", "Image"]
