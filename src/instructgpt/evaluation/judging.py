"""Simulated human judgements of the models' answers to the test prompts.

Per prompt, a held-out and a training labeler of the world's panel compare
each model's answer with the baseline's (ties count half) -> win rates with
95% intervals (bootstrap over prompts), overall and per use case; the held-out
labeler assigned to the prompt gives each answer a 1-7 Likert score and
metadata flags (hallucination counted on closed-domain prompts only).
Judgements are seeded per (seed, group, model, prompt): the same answers get
the same verdicts in every evaluation.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..data import Prompt
from ..world.tasks import CLOSED_DOMAIN, TASKS
from .results import Comparison, Samples
from .stats import Estimate, likert_mean, rate, win_rate, win_rates_by

#: Metadata flags measured on the test prompts (hallucination: closed domain only).
METADATA_FLAGS = ("fails_to_follow", "violates_constraint", "hallucination",
                  "inappropriate_for_customer_assistant")
#: The same behaviours by the world's checkers, without labeler noise (the oracle beside the labelers'
#: flags): "true_" + flag.
ORACLE_FLAGS = ("fails_to_follow", "hallucination")


@dataclass
class Judgement:
    """What the simulated labelers said about one model's answers to the test prompts."""
    comparisons: list[Comparison] = field(default_factory=list)
    win_rate: dict[str, Estimate] = field(default_factory=dict)
    use_case_win_rates: dict[str, Estimate] = field(default_factory=dict)
    likert: Estimate | None = None
    metadata: dict[str, Estimate] = field(default_factory=dict)
    raw: dict[str, Samples] = field(default_factory=dict)


def normalized(text: str) -> str:
    """Whitespace-normalised text (two answers equal up to spacing are the same answer)."""
    return " ".join(str(text).split())


def _rng(*parts: Any) -> random.Random:
    return random.Random(":".join(str(p) for p in parts))


def checkable(prompt: Prompt) -> bool:
    """True if the world's checker (and so the simulated labelers) can judge answers to ``prompt``."""
    return isinstance(prompt.meta, dict) and prompt.meta.get("task") in TASKS


def closed_domain_use_cases() -> tuple[str, ...]:
    return tuple(CLOSED_DOMAIN)


def compare_outcomes(prompts: Sequence[Prompt], responses: Sequence[str], baseline: Sequence[str],
                     panel, world, group: str, name: str, seed: int = 0, judgements: int = 1,
                     opponent: str | None = None) -> list[Comparison]:
    """``judgements`` Comparisons per prompt: ``responses[i]`` against ``baseline[i]`` (the answers of
    ``opponent``; None = the baseline), each judged by a labeler of ``group`` ("training" /
    "heldout"). The judges of one comparison are distinct labelers, drawn without replacement
    (``panel.draw_judge``; seeded per judgement, the first draw is the one a single judgement makes);
    asking for more judgements than the group has labelers is a ValueError. Each Comparison records
    its labeler's id. Identical answers are a tie without asking. Several judgements of one pair share
    its prompt id, so the intervals count them as one cluster: they shrink the labelers' noise, not
    the prompts' spread."""
    pool = getattr(panel, "heldout_labelers" if group == "heldout" else "training_labelers", None)
    if pool is not None and judgements > len(pool):
        raise ValueError(f"judgements={judgements} distinct {group} labelers per comparison, but the panel "
                         f"has {len(pool)}")
    out = []
    tag = name if opponent is None else f"{name}|{opponent}"
    for p, a, b in zip(prompts, responses, baseline):
        drawn: list[str] = []
        for j in range(judgements):
            if normalized(a) == normalized(b):
                outcome, lab_id = 0.5, None
            else:
                rng = _rng("compare", seed, group, tag, p.id) if j == 0 else _rng("compare", seed, group, tag, p.id, j)
                lab = panel.draw_judge(rng, heldout=group == "heldout", exclude=drawn)
                drawn.append(lab.id)
                outcome, lab_id = float(lab.compare(p, a, b, rng, world)), lab.id
            out.append(Comparison(p.id, outcome, group, p.use_case, opponent, lab_id))
    return out


def judge(prompts: Sequence[Prompt], responses_by_model: dict[str, Sequence[str]], baseline: str,
          panel, world, seed: int = 0, judgements: int = 1,
          head_to_head: Sequence[tuple[str, str]] = ()) -> dict[str, Judgement]:
    """Win rates, Likert means and metadata rates of every model from simulated labelers.

    For each model other than ``baseline`` and each prompt, a held-out and a
    training labeler compare its answer with the baseline's (1 win, 0 loss,
    0.5 tie) -> win rates with 95% intervals bootstrapped over prompts,
    overall per labeler group and per use case (training labelers). For every
    model (baseline included) the held-out labeler assigned to each prompt
    gives a 1-7 Likert score and metadata flags; "hallucination" is counted on
    closed-domain prompts only.
    """
    if baseline not in responses_by_model:
        raise ValueError(f"baseline {baseline!r} has no responses")
    closed = closed_domain_use_cases()
    ids = [p.id for p in prompts]
    out: dict[str, Judgement] = {}
    for name, responses in responses_by_model.items():
        if len(responses) != len(prompts):
            raise ValueError(f"{name}: {len(responses)} responses for {len(prompts)} prompts")
        j = Judgement()
        if name != baseline:
            for group in ("training", "heldout"):
                comps = compare_outcomes(prompts, responses, responses_by_model[baseline], panel, world,
                                         group, name, seed, judgements)
                j.comparisons += comps
                j.win_rate[group] = win_rate([c.outcome for c in comps], [c.prompt_id for c in comps], seed=seed)
            train = [c for c in j.comparisons if c.labelers == "training"]
            j.use_case_win_rates = win_rates_by([c.outcome for c in train], [c.use_case for c in train],
                                                [c.prompt_id for c in train], seed=seed)
        likerts, flags, truths = [], [], []
        for p, r in zip(prompts, responses):
            lab = panel.assign(p.id, heldout=True)
            rng = _rng("label", seed, name, p.id)
            verdict = lab.verdict(p, r, world)
            likerts.append(lab.likert(verdict, rng))
            flags.append(set(lab.flags(verdict, r, rng)))
            if hasattr(verdict, "follows_instruction"):  # a checker's verdict (not a stub's)
                truths.append({"true_fails_to_follow": not verdict.follows_instruction,
                               "true_hallucination": bool(verdict.hallucinated or verdict.repeats_falsehood)})
        if prompts:
            j.likert = likert_mean(likerts, ids, seed=seed)
        for flag in METADATA_FLAGS:
            keep = [i for i, p in enumerate(prompts) if flag != "hallucination" or p.use_case in closed]
            if not keep:
                continue
            values = [float(flag in flags[i]) for i in keep]
            groups = [ids[i] for i in keep]
            j.metadata[flag] = rate(values, groups, seed=seed)
            j.raw[flag] = Samples(values, groups)
            if flag in ORACLE_FLAGS and len(truths) == len(prompts):
                key = f"true_{flag}"
                truth = [float(truths[i][key]) for i in keep]
                j.metadata[key] = rate(truth, groups, seed=seed)
                j.raw[key] = Samples(truth, groups)
        out[name] = j
    for a, b in head_to_head:
        if a in out and b in responses_by_model and a != b:
            for group in ("training", "heldout"):
                out[a].comparisons += compare_outcomes(prompts, responses_by_model[a], responses_by_model[b], panel,
                                                       world, group, a, seed, judgements, opponent=b)
    return out
