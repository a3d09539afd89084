"""How well the reward model ranks what PPO will show it, against the labelers' own ceiling.

On each checkable test prompt a set of answers is ranked by the training labeler
assigned to it (noisy utilities, as in the rankings the RM learned from): two
of the world's candidates (good or flawed, with or without a pleasantry) and
the answers of the trained policies (SFT, PPO, PPO-ptx). For every pair the
labeler orders strictly:

* the reward model is right if it scores the preferred answer higher (a tie
  of its scores counts half);
* the ceiling is right if the labeler's NOISELESS utility orders the pair the
  same way: no model of this labeler can do better on average.

Pairs by type: ``world-vs-world`` (both candidates of the world),
``world-vs-policy``, ``policy-vs-policy`` (two policies' answers, what PPO's
reward differences rest on). Test prompts are held out from RM training, so
this is the RM's accuracy where PPO needs it, not on its own training data.

The same pairs by what separates them (:func:`separating_criterion`, the first
of the checker's verdicts on which the two answers differ): following the
instruction, truthfulness, harm, constraints, the helpfulness score, or
nothing but length and labeler noise. An RM can match the ceiling overall and
still be blind to one criterion, e.g. rank a hallucinated answer above a true
one; PPO then learns exactly that blindness.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from ..data import Prompt
from ..world import candidate_responses
from ..world.task_types.base import CheckResult
from .stats import Estimate, win_rate

PAIR_TYPES = ("world-vs-world", "world-vs-policy", "policy-vs-policy")
#: What can separate two answers, in the order :func:`separating_criterion` tries them.
CRITERIA = ("follows the instruction", "truthfulness", "harm", "constraints", "helpfulness score",
            "length and noise only")


def separating_criterion(a: CheckResult, b: CheckResult) -> str:
    """The first criterion (of :data:`CRITERIA`) on which the checker's verdicts ``a`` and ``b`` differ."""
    if a.follows_instruction != b.follows_instruction:
        return CRITERIA[0]
    if (a.hallucinated or a.repeats_falsehood) != (b.hallucinated or b.repeats_falsehood):
        return CRITERIA[1]
    if a.toxic != b.toxic:
        return CRITERIA[2]
    if len(a.constraint_violations) != len(b.constraint_violations):
        return CRITERIA[3]
    return CRITERIA[4] if a.score != b.score else CRITERIA[5]


def _pair_type(a: str, b: str) -> str:
    kinds = {a, b}
    if kinds == {"world"}:
        return "world-vs-world"
    return "policy-vs-policy" if kinds == {"policy"} else "world-vs-policy"


def rm_pair_accuracy(prompts: Sequence[Prompt], answers: dict[str, Sequence[str]],
                     score: Callable[[list[Prompt], list[str]], list[float]], panel, world, seed: int = 0,
                     n_world: int = 2) -> dict[str, dict[str, dict[str, Estimate | int]]]:
    """{"pair type": {type: row}, "criterion": {criterion: row}}, each row {"rm": accuracy, "ceiling":
    noiseless labeler accuracy, "pairs": n} (see the module); groups without pairs are left out.

    answers: {policy name: one answer per prompt}; score(prompts, texts) -> the RM's scores.
    """
    rows: list[tuple[Prompt, str, str]] = []          # (prompt, kind, text)
    per_prompt: list[list[int]] = []
    for i, p in enumerate(prompts):
        rng = random.Random(f"rm-accuracy:{seed}:{p.id}")
        items = [("world", t) for t in candidate_responses(p, n_world, rng, world)]
        items += [("policy", a[i]) for a in answers.values()]  # a Response as sampled: cut or ended
        seen, idx = set(), []
        for kind, text in items:
            key = " ".join(text.split())
            if key in seen:
                continue
            seen.add(key)
            idx.append(len(rows))
            rows.append((p, kind, text))
        per_prompt.append(idx)
    scores = score([r[0] for r in rows], [r[2] for r in rows]) if rows else []
    groups = {"pair type": PAIR_TYPES, "criterion": CRITERIA}
    values = {g: {name: ([], [], []) for name in names} for g, names in groups.items()}  # rm, ceiling, prompt ids
    for p, idx in zip(prompts, per_prompt):
        lab = panel.assign(p.id)
        texts = [rows[i][2] for i in idx]
        rng = random.Random(f"rm-accuracy-judge:{seed}:{p.id}")
        noisy = lab.utilities(p, texts, rng, world)
        verdicts = [lab.verdict(p, t, world) for t in texts]
        clean = [lab.base_utility(v, t) for v, t in zip(verdicts, texts)]
        for a in range(len(idx)):
            for b in range(a + 1, len(idx)):
                if abs(noisy[a] - noisy[b]) <= lab.tie_threshold:
                    continue  # the labeler ties them: no comparison
                sign = 1.0 if noisy[a] > noisy[b] else -1.0
                ra, rb = scores[idx[a]], scores[idx[b]]
                rm_right = 0.5 if ra == rb else float((ra - rb) * sign > 0)
                ceiling_right = 0.5 if clean[a] == clean[b] else float((clean[a] - clean[b]) * sign > 0)
                for g, name in (("pair type", _pair_type(rows[idx[a]][1], rows[idx[b]][1])),
                                ("criterion", separating_criterion(verdicts[a], verdicts[b]))):
                    for column, value in zip(values[g][name], (rm_right, ceiling_right, p.id)):
                        column.append(value)
    return {g: {name: {"rm": win_rate(rm_v, ids, seed=seed), "ceiling": win_rate(ceil_v, ids, seed=seed),
                       "pairs": len(rm_v)}
                for name, (rm_v, ceil_v, ids) in rows_of.items() if rm_v}
            for g, rows_of in values.items()}


def rm_accuracy_tables(rm, rm_tokenizer, prompts: Sequence[Prompt], answers: dict[str, Sequence[str]], panel,
                       world, seed: int = 0, batch_size: int = 64) -> dict[str, dict]:
    """results.json's ``rm_accuracy`` (by pair type) and ``rm_accuracy_by_criterion``: the reward
    model ``rm`` (with its tokenizer) scored by :func:`rm_pair_accuracy`; each row
    {policy group name: {"rm", "ceiling": Estimate dicts, "pairs": n}}."""
    from .scoring import rm_scorer
    by_group = rm_pair_accuracy(prompts, answers, rm_scorer(rm, rm_tokenizer, batch_size), panel, world, seed)
    return {key: {name: {"rm": v["rm"].to_dict(), "ceiling": v["ceiling"].to_dict(), "pairs": v["pairs"]}
                  for name, v in by_group[group].items()}
            for key, group in (("rm_accuracy", "pair type"), ("rm_accuracy_by_criterion", "criterion"))}
