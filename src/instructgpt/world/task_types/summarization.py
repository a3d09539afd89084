"""Summarization: a passage about one entity, summarized shorter than itself.

Closed domain (``passages.py``): a detail the passage does not state is a
hallucination, even when it is true.
"""

from __future__ import annotations

import random

from .. import facts as F
from .. import phrases as P
from ..kb import World
from .base import Grade, task
from .passages import pick_source, unsupported


@task("summarize", "summarization", 1.0)
class Summarize:
    """Summarize a passage about one entity, shorter than the passage."""

    @staticmethod
    def make(world: World, rng: random.Random):
        ents, src, facts = pick_source(
            world, rng, 1, rng.choice((3, 4)), kinds=("creature", "person", "food")
        )
        n = rng.choice((1, 1, 2))
        meta = {"passage": src, "topic": ents[0].name, "facts": [list(f) for f in facts], "constraints": []}
        form = rng.random()
        if form < 0.7:
            meta["constraints"].append({"type": "n_sentences", "n": n, "mode": "max", "implicit": True})
            lead = (
                "Summarize this text in one sentence."
                if n == 1
                else "Summarize this text in at most two sentences."
            )
            text = rng.choice((f"{lead}\n{src}", f"{src}\n{lead}"))
        else:
            text = rng.choice((f"{src}\nTL;DR:", f"Give a short summary of this text.\n{src}"))
        return text, meta

    @staticmethod
    def solve(world: World, meta: dict, rng: random.Random) -> str:
        ent = world.get(meta["topic"])
        attrs = [a for _, a in meta["facts"]]
        n_sent = next((c["n"] for c in meta["constraints"] if c["type"] == "n_sentences"), 1)
        limit = F.word_count(meta["passage"])
        for _ in range(30):
            rng.shuffle(attrs)
            k = min(len(attrs), rng.choice((2, 2, 3)) if len(attrs) > 3 else 2)
            if n_sent >= 2 and k >= 3 and rng.random() < 0.5:
                text = (
                    P.combined_sentence(ent, attrs[:2], rng)
                    + " "
                    + P.fact_sentence(ent, attrs[2], rng, subject=P.pronoun(ent))
                )
            else:
                text = P.combined_sentence(ent, attrs[:k], rng)
            if F.word_count(text) < limit:
                return text
        return P.fact_sentence(ent, attrs[0], rng)

    @staticmethod
    def grade(world: World, meta: dict, response: str) -> Grade:
        topic, src = meta["topic"], meta["passage"]
        extra = unsupported(world, src, response, topic)
        src_claims = set(F.extract_claims(world, src))
        covered = {c for c in F.extract_claims(world, response, topic) if c in src_claims}
        shorter = F.word_count(response) < F.word_count(src)
        names = F.mentioned_names(world, response)
        content = min(1.0, len(covered) / 2) * (1.0 if shorter else 0.4) * (1.0 if topic in names else 0.6)
        notes = (
            extra
            + ([] if shorter else ["not shorter than the text"])
            + ([] if covered else ["covers nothing"])
        )
        return Grade(content, bool(covered) and shorter and topic in names, bool(extra), False, notes)
