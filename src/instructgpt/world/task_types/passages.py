"""The source passage of a closed-domain task (rewrite, summarization, extract, closed QA).

The passage is part of the prompt and is kept in ``meta["passage"]``. A
response hallucinates when it states a fact, a name or a value that the
passage does not contain, even a true one (the paper's closed-domain
hallucination): ``unsupported`` lists them.
"""

from __future__ import annotations

import random

from .. import facts as F
from .. import phrases as P
from ..kb import VOCAB, World

_CHECKED_VALUES = tuple(VOCAB) + ("age",)


def pick_source(
    world: World,
    rng: random.Random,
    n_ents: int = 1,
    n_facts: int = 3,
    kinds=("creature", "person", "food", "tool"),
):
    """(entities, passage text, stated facts) for a closed-domain prompt."""
    ents = []
    while len(ents) < n_ents:
        e = rng.choice(world.of_kind(rng.choice(kinds)))
        if e not in ents:
            ents.append(e)
    text, facts = P.source_text(world, ents, rng, n_facts)
    return ents, text, facts


def unsupported(world: World, source: str, response: str, topic: str | None = None) -> list[str]:
    """What ``response`` states that ``source`` does not: claims, names, values."""
    body = " ".join(F.sentences(response))  # list markers are not numbers
    src_claims = set(F.extract_claims(world, source))
    out = [
        f"claim {c.entity}.{c.attr}={c.value}"
        for c in F.extract_claims(world, body, topic)
        if c not in src_claims
    ]
    src_names = set(F.mentioned_names(world, source))
    out += [f"name {n}" for n in F.mentioned_names(world, body) if n not in src_names]
    for attr in _CHECKED_VALUES:
        src_vals = set(F.value_mentions(source, attr))
        out += [f"value {v}" for v in set(F.value_mentions(body, attr)) - src_vals]
    return sorted(set(out))
