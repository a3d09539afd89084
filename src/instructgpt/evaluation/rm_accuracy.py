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
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from ..data import Prompt
from ..world import candidate_responses
from .stats import Estimate, win_rate

PAIR_TYPES = ("world-vs-world", "world-vs-policy", "policy-vs-policy")


def _pair_type(a: str, b: str) -> str:
    kinds = {a, b}
    if kinds == {"world"}:
        return "world-vs-world"
    return "policy-vs-policy" if kinds == {"policy"} else "world-vs-policy"


def rm_pair_accuracy(prompts: Sequence[Prompt], answers: dict[str, Sequence[str]],
                     score: Callable[[list[Prompt], list[str]], list[float]], panel, world, seed: int = 0,
                     n_world: int = 2) -> dict[str, dict[str, Estimate | int]]:
    """{pair type: {"rm": accuracy, "ceiling": noiseless labeler accuracy, "pairs": n}} (see the module).

    answers: {policy name: one answer per prompt}; score(prompts, texts) -> the RM's scores.
    """
    rows: list[tuple[Prompt, str, str]] = []          # (prompt, kind, text)
    per_prompt: list[list[int]] = []
    for i, p in enumerate(prompts):
        rng = random.Random(f"rm-accuracy:{seed}:{p.id}")
        items = [("world", t) for t in candidate_responses(p, n_world, rng, world)]
        items += [("policy", str(a[i])) for a in answers.values()]
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
    values: dict[str, tuple[list[float], list[float], list[str]]] = {t: ([], [], []) for t in PAIR_TYPES}
    for p, idx in zip(prompts, per_prompt):
        lab = panel.assign(p.id)
        texts = [rows[i][2] for i in idx]
        rng = random.Random(f"rm-accuracy-judge:{seed}:{p.id}")
        noisy = lab.utilities(p, texts, rng, world)
        clean = [lab.base_utility(lab.verdict(p, t, world), t) for t in texts]
        for a in range(len(idx)):
            for b in range(a + 1, len(idx)):
                if abs(noisy[a] - noisy[b]) <= lab.tie_threshold:
                    continue  # the labeler ties them: no comparison
                sign = 1.0 if noisy[a] > noisy[b] else -1.0
                ra, rb = scores[idx[a]], scores[idx[b]]
                rm_right = 0.5 if ra == rb else float((ra - rb) * sign > 0)
                ceiling_right = 0.5 if clean[a] == clean[b] else float((clean[a] - clean[b]) * sign > 0)
                kind = _pair_type(rows[idx[a]][1], rows[idx[b]][1])
                values[kind][0].append(rm_right)
                values[kind][1].append(ceiling_right)
                values[kind][2].append(p.id)
    out: dict[str, dict[str, Estimate | int]] = {}
    for kind, (rm_v, ceil_v, groups) in values.items():
        if rm_v:
            out[kind] = {"rm": win_rate(rm_v, groups, seed=seed), "ceiling": win_rate(ceil_v, groups, seed=seed),
                         "pairs": len(rm_v)}
    return out
