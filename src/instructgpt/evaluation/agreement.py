"""Inter-labeler agreement, measured the way the paper reports it.

Several labelers rank the same K responses to a prompt. For every two
labelers and every response pair both ranked strictly (no tie), they agree if
they order the pair the same way; agreement is the share of such pairs that
agree, per kind of labeler pair (training-training, training-heldout,
heldout-heldout), with a 95% interval bootstrapped over prompts
(:func:`~instructgpt.evaluation.stats.pairwise_agreement`).

This one measure gives every agreement row of the report: on the models'
answers to the test prompts (:func:`answer_agreement`) and, for a pipeline
run, on its RM comparison sets (:func:`comparison_agreement`). The paper:
72.6 +- 1.5% among training labelers, 77.3 +- 1.3% with held-out labelers.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence

from ..data import Prompt, Ranking
from .stats import Estimate, pairwise_agreement

#: Row name -> (first labeler held out?, second labeler held out?), sorted.
LABELER_PAIRS = {"training-training": (False, False), "training-heldout": (False, True),
                 "heldout-heldout": (True, True)}


def pair_labels(rankings: Sequence[Ranking]) -> list[tuple[Hashable, Hashable, int]]:
    """Every strictly ordered response pair of every ranking as (item, labeler, outcome).

    item = (prompt_id, i, j) with response indices i < j; outcome 1 if i is
    ranked above j, else 0. Tied pairs give nothing (Ranking.pairs()).
    """
    out = []
    for r in rankings:
        for winner, loser in r.pairs():
            i, j = min(winner, loser), max(winner, loser)
            out.append(((r.prompt_id, i, j), r.labeler_id, int(winner == i)))
    return out


def agreement_of_rankings(rankings: Sequence[Ranking], heldout_ids: set[str], seed: int = 0,
                          label: str = "") -> dict[str, Estimate]:
    """Agreement per kind of labeler pair among rankings of the same prompts' responses.

    heldout_ids: ids of the held-out labelers (the others are training labelers).
    label: appended to each row name, e.g. "training-training (RM comparisons)".
    Kinds with no pair of labelers are left out.
    """
    labels = pair_labels(rankings)
    out: dict[str, Estimate] = {}
    for name, kinds in LABELER_PAIRS.items():
        def keep(a, b, kinds=kinds) -> bool:
            return tuple(sorted((a in heldout_ids, b in heldout_ids))) == kinds
        try:
            est = pairwise_agreement(labels, seed=seed, group_of=lambda item: item[0], keep_pair=keep)
        except ValueError:  # no pair of this kind
            continue
        out[f"{name} ({label})" if label else name] = est
    return out


def panel_rankings(panel, world, prompts: Sequence[Prompt], responses_per_prompt: Sequence[list[str]],
                   per_prompt_train: int = 3, per_prompt_heldout: int = 3, seed: int = 0) -> list[Ranking]:
    """Each prompt's responses ranked by ``per_prompt_train`` training and ``per_prompt_heldout``
    held-out labelers of the panel, drawn at random (seeded)."""
    rng = random.Random(f"agreement:{seed}")
    out = []
    for prompt, responses in zip(prompts, responses_per_prompt):
        labs = rng.sample(panel.training_labelers, per_prompt_train) + rng.sample(
            panel.heldout_labelers, per_prompt_heldout)
        out += [lab.rank(prompt, responses, rng, world) for lab in labs]
    return out


def panel_agreement(panel, world, prompts: Sequence[Prompt], responses_per_prompt: Sequence[list[str]],
                    seed: int = 0, label: str = "") -> dict[str, Estimate]:
    """Agreement of the panel's labelers ranking ``responses_per_prompt`` (see :func:`panel_rankings`)."""
    rankings = panel_rankings(panel, world, prompts, responses_per_prompt, seed=seed)
    return agreement_of_rankings(rankings, {lab.id for lab in panel.heldout_labelers}, seed, label)


def answer_agreement(panel, world, prompts: Sequence[Prompt], responses_by_model: dict[str, Sequence[str]],
                     seed: int = 0, max_prompts: int = 60,
                     basis: dict[str, str] | None = None) -> dict[str, Estimate]:
    """Agreement on the models' answers: each of the first ``max_prompts`` prompts with one
    answer per model (at most 9 models) is ranked by 3 training and 3 held-out labelers.

    basis: if given, filled with row name -> what the row rests on ("60 of 626 test prompts (the
    first 60), 6 answers each ..."): the pairs count (Estimate.n) alone does not say how many prompts."""
    names = list(responses_by_model)[:9]
    if len(names) < 2 or not prompts:
        return {}
    chosen = list(prompts[:max_prompts])
    responses = [[str(responses_by_model[n][i]) or "(empty)" for n in names] for i in range(len(chosen))]
    out = panel_agreement(panel, world, chosen, responses, seed)
    if basis is not None:
        first = f" (the first {len(chosen)})" if len(chosen) < len(prompts) else ""
        basis.update({k: f"{len(chosen)} of {len(prompts)} test prompts{first}, {len(names)} answers each, "
                         f"ranked by 3 training and 3 held-out labelers" for k in out})
    return out


def comparison_agreement(panel, world, prompts: Sequence[Prompt], rankings: Sequence[Ranking],
                         seed: int = 0, limit: int = 200,
                         basis: dict[str, str] | None = None) -> dict[str, Estimate]:
    """Agreement on the responses of RM comparison sets (the first ``limit`` rankings whose
    prompt is in ``prompts``), re-ranked by the panel; rows named "... (RM comparisons)".
    basis: as for :func:`answer_agreement` ("200 of 2043 RM rankings (the first 200) ...")."""
    by_id = {p.id: p for p in prompts}
    matching = [r for r in rankings if r.prompt_id in by_id]
    rows = matching[:limit]
    if not rows:
        return {}
    out = panel_agreement(panel, world, [by_id[r.prompt_id] for r in rows], [list(r.responses) for r in rows],
                          seed, label="RM comparisons")
    if basis is not None:
        first = f" (the first {len(rows)})" if len(rows) < len(matching) else ""
        answers = sum(len(r.responses) for r in rows) / len(rows)
        basis.update({k: f"{len(rows)} of {len(matching)} RM rankings{first}, {answers:.1f} answers each, "
                         f"re-ranked by 3 training and 3 held-out labelers" for k in out})
    return out
