"""Closed QA: answer a question from a passage; a fifth of the passages do not say.

Closed domain (``passages.py``): anything the passage does not state is a
hallucination, even when it is true.
"""

from __future__ import annotations

import random

from .. import phrases as P
from ..kb import World
from .base import Grade, task
from .open_qa import answer_text, grade_answer
from .passages import pick_source, unsupported

NOT_SAID = (
    "the text does not say",
    "the text doesn't say",
    "the text does not mention",
    "not in the text",
    "the text does not tell",
)


@task("closed_qa", "closed_qa", 1.0)
class ClosedQA:
    """Answer a question from a passage; sometimes the passage does not say."""

    @staticmethod
    def make(world: World, rng: random.Random):
        ents, src, facts = pick_source(world, rng, rng.choice((1, 1, 2)), 3)
        stated = [(n, a) for n, a in facts if (world.get(n).kind, a) in P.QUESTIONS]
        unstated = [(e.name, a) for e in ents for a in P.questionable_attrs(e) if (e.name, a) not in facts]
        answerable = not unstated or (stated and rng.random() < 0.8)
        name, attr = rng.choice(stated if answerable else unstated)
        q = P.question(world.get(name), attr, rng)
        text = rng.choice(
            (
                "Answer the question using only the text below.\nText: {s}\nQuestion: {q}",
                "Read the text and answer the question.\n{s}\nQ: {q}",
                "{s}\nBased on the text above, {ql}",
            )
        ).format(s=src, q=q, ql=q[0].lower() + q[1:])
        meta = {"passage": src, "topic": name, "attr": attr, "answerable": answerable}
        if answerable:
            meta["answer"] = str(world.fact(name, attr))
        return text, meta

    @staticmethod
    def solve(world: World, meta: dict, rng: random.Random) -> str:
        if meta["answerable"]:
            return answer_text(world, meta, rng)
        return rng.choice(
            (
                "The text does not say.",
                "The text does not mention it.",
                "The text does not tell us.",
                "Sorry, the text does not say.",
            )
        )

    @staticmethod
    def grade(world: World, meta: dict, response: str) -> Grade:
        extra = unsupported(world, meta["passage"], response, meta["topic"])
        if meta["answerable"]:
            g = grade_answer(world, meta, response)
            g.hallucinated = g.hallucinated or bool(extra)
            g.notes += extra
            return g
        says_not = any(p in response.lower() for p in NOT_SAID)
        return Grade(
            1.0 if says_not and not extra else (0.3 if says_not else 0.0),
            says_not,
            bool(extra),
            False,
            extra or ([] if says_not else ["should say the text does not say"]),
        )
