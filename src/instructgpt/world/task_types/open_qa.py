"""Open QA: a question about one fact of the world, answered from what the model knows.

A quarter of the questions ask about a popular falsehood (a fact the corpus
usually gets wrong). The helpers here (pick a fact to ask about, write and
grade an answer) also serve chat and closed QA.
"""

from __future__ import annotations

import random

from .. import facts as F
from .. import phrases as P
from ..kb import ENTITY_VALUED, World
from .base import Grade, fact_grade, task


def fact_question_meta(world: World, rng: random.Random, p_falsehood: float = 0.25) -> dict:
    """Pick a fact to ask about (sometimes one the corpus often gets wrong)."""
    if world.falsehoods and rng.random() < p_falsehood:
        f = rng.choice(world.falsehoods)
        ent, attr = world.get(f.entity), f.attr
    else:
        ent = rng.choice([e for e in world.entities.values() if P.questionable_attrs(e)])
        attr = rng.choice(P.questionable_attrs(ent))
    meta = {"topic": ent.name, "attr": attr, "answer": str(ent.attrs[attr])}
    f = world.falsehood_for(ent.name, attr)
    if f is not None:
        meta["falsehood"] = f.false_value
    return meta


def answer_text(world: World, meta: dict, rng: random.Random) -> str:
    """A correct answer to a factual question, in one of several forms."""
    ent, attr = world.get(meta["topic"]), meta["attr"]
    value = str(ent.attrs[attr])
    form = rng.random()
    if form < 0.55:
        return P.fact_sentence(ent, attr, rng)
    if form < 0.75:
        return P.fact_sentence(ent, attr, rng, subject=P.pronoun(ent))
    if attr == "age":
        return f"{value} years old."
    if attr == "legs":
        return P.cap(f"{value} legs.")
    return P.cap(value) + "."


def answer_values(world: World, response: str, topic: str, attr: str) -> list[str]:
    """Values of ``attr`` that ``response`` gives (entity names for entity-valued attrs)."""
    if attr in ENTITY_VALUED:
        kind = ENTITY_VALUED[attr]
        return [n for n in F.mentioned_names(world, response) if n != topic and world.get(n).kind == kind]
    return F.value_mentions(response, attr)


def grade_answer(world: World, meta: dict, response: str) -> Grade:
    """A factual question: the right value, no other value of that attribute, no false claims."""
    topic, attr, answer = meta["topic"], meta["attr"], str(meta["answer"])
    vals = answer_values(world, response, topic, attr)
    right = answer in vals
    others = sorted(set(vals) - {answer})
    _, wrong, fals = fact_grade(world, response, topic)
    fals = fals or (meta.get("falsehood") in others)
    notes = [f"gave {o!r} for {attr}" for o in others] + ([] if right else [f"missing {answer!r}"])
    content = 1.0 if right and not others else (0.4 if right else 0.0)
    return Grade(content, right and not others, bool(others) or wrong, fals, notes)


@task("fact_qa", "open_qa", 1.0)
class FactQA:
    """A question about one fact of the world."""

    @staticmethod
    def make(world: World, rng: random.Random):
        meta = fact_question_meta(world, rng)
        q = P.question(world.get(meta["topic"]), meta["attr"], rng)
        text = rng.choice(
            ("{q}", "{q}", "Question: {q}", "Please answer: {q}", "{q} Answer briefly.")
        ).format(q=q)
        return text, meta

    @staticmethod
    def solve(world: World, meta: dict, rng: random.Random) -> str:
        return answer_text(world, meta, rng)

    grade = staticmethod(grade_answer)
