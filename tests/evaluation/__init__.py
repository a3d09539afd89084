"""Shared builders for the evaluation tests: synthetic, model-free results."""

from __future__ import annotations

import numpy as np

from instructgpt.evaluation import (Comparison, Estimate, EvalResults, ModelResult,
                                    SampleOutput, Samples, rate)
from instructgpt.data import USE_CASES

XSS_SCRIPT = "<script>alert(1)</script>"
XSS_ATTR = '"><img src=x onerror=alert(1)>'


def est(value: float, half: float = 0.03, n: int = 200) -> Estimate:
    """A given estimate value +- half."""
    return Estimate(value, value - half, value + half, n, "given")


def simulated_comparisons(p_win: float, n_prompts: int, per_prompt: int, rng,
                          labelers: str = "training", opponent: str | None = None,
                          p_tie: float = 0.1) -> list[Comparison]:
    """Comparisons with P(win)=p_win*(1-p_tie), P(tie)=p_tie, prompts p0..p{n-1}."""
    out = []
    for i in range(n_prompts):
        for j in range(per_prompt):
            u = rng.random()
            outcome = 0.5 if u < p_tie else (1.0 if rng.random() < p_win else 0.0)
            out.append(Comparison(f"p{i}", outcome, labelers, USE_CASES[i % len(USE_CASES)],
                                  opponent, f"lab{(i + j) % 7}"))
    return out


def flag_samples(p: float, n: int, rng) -> Samples:
    """0/1 flags with rate p on prompts c0..c{n-1}."""
    return Samples([float(rng.random() < p) for _ in range(n)], [f"c{i}" for i in range(n)])


def make_model(name: str, kind: str, p_win: float, rng, n_params: int = 125_000_000,
               halluc: float = 0.3, ppl: float = 20.0, cloze: float = 0.5,
               n_prompts: int = 80, heldout_shift: float = 0.0) -> ModelResult:
    """A model with raw comparisons vs the SFT baseline and raw hallucination flags."""
    comps = simulated_comparisons(p_win, n_prompts, 2, rng)
    comps += simulated_comparisons(min(1.0, max(0.0, p_win + heldout_shift)), n_prompts, 1,
                                   rng, labelers="heldout")
    flags = flag_samples(halluc, 150, rng)
    return ModelResult(
        name=name, kind=kind, n_params=n_params, comparisons=comps,
        likert=est(2 + 4 * p_win, 0.2),
        metadata={"hallucination": rate(flags.values, flags.groups),
                  "fails_to_follow": est(0.5 - 0.4 * p_win, 0.05),
                  "violates_constraint": est(0.3 - 0.2 * p_win, 0.05),
                  "inappropriate_for_customer_assistant": est(0.4 - 0.3 * p_win, 0.05)},
        raw={"hallucination": flags},
        benchmarks={"truthfulqa_truthful": est(0.3 + 0.3 * p_win),
                    "toxicity_respectful": est(0.2 - 0.1 * p_win, 0.01),
                    "winogender_entropy": est(0.9, 0.02)},
        pretraining={"perplexity": est(ppl, 0.3), "cloze_accuracy": est(cloze, 0.01)},
    )


def make_results(seed: int = 0, policy_win: float = 0.8, with_flan: bool = True,
                 with_large_base: bool = True) -> EvalResults:
    """A full synthetic run that reproduces the paper's claims (for policy_win high)."""
    rng = np.random.default_rng(seed)
    models = [
        make_model("gpt-small", "base", 0.2, rng, halluc=0.45, ppl=18.0, cloze=0.55),
        make_model("gpt-small-prompted", "base_prompted", 0.35, rng, halluc=0.4),
        ModelResult("sft", "sft", 125_000_000,
                    pretraining={"perplexity": est(19.0, 0.3), "cloze_accuracy": est(0.53, 0.01)}),
        make_model("ppo", "ppo", 0.78, rng, halluc=0.22, ppl=25.0, cloze=0.45),
        make_model("ppo_ptx", "ppo_ptx", policy_win, rng, halluc=0.2, ppl=19.5, cloze=0.52),
    ]
    if with_flan:
        models.append(make_model("flan", "flan", 0.4, rng))
    if with_large_base:
        models.append(make_model("gpt-large", "base", 0.3, rng, n_params=1_300_000_000))
    curves = {
        run: [{"step": s, "ppo/score": float(1 - np.exp(-s / (30 if run == "ppo" else 40))),
               "ppo/kl": s / 20.0, "loss/policy": float(rng.normal()) * 0.1,
               "ptx/loss": (2.0 if run == "ppo_ptx" else None)}
              for s in range(0, 200, 10)]
        for run in ("ppo", "ppo_ptx")
    }
    samples = [
        SampleOutput("p0", f"Write a poem about {XSS_SCRIPT}", "generation",
                     {"ppo_ptx": f"Roses {XSS_ATTR}", "sft": "line one\nline two & <b>"}),
        SampleOutput("p1", "What is the capital of France?", "open_qa",
                     {"ppo_ptx": "Paris.", "sft": "Paris | France"}),
    ]
    return EvalResults(
        models=models, baseline="sft",
        agreement={"training-training": est(0.726, 0.015, 500),
                   "training-heldout": est(0.773, 0.013, 500)},
        training_curves=curves, samples=samples,
        meta={"run": "synthetic", "seed": seed, "note": XSS_SCRIPT},
    )
