"""Classification: give the right label (review sentiment, kind of thing, politeness)."""

from __future__ import annotations

import random

from .. import facts as F
from .. import phrases as P
from ..kb import KINDS, World
from .base import Grade, task


def grade_label(response: str, answer: str, labels: tuple[str, ...]) -> Grade:
    """A classification answer: the right label and no other label."""
    said = {lab for lab in labels if F.has_word(response, lab)}
    right = answer in said
    content = 1.0 if said == {answer} else (0.3 if right else 0.0)
    return Grade(content, said == {answer}, False, False, [] if right else [f"label {answer!r} missing"])


def label_answer(label: str, thing: str, rng: random.Random) -> str:
    return rng.choice((P.cap(label) + ".", f"The {thing} is {label}.", f"It is {label}.", P.cap(label)))


@task("sentiment", "classification", 0.4)
class Sentiment:
    """Is this review positive or negative?"""

    LABELS = ("positive", "negative")

    @staticmethod
    def make(world: World, rng: random.Random):
        positive = rng.random() < 0.5
        review = P.review_text(world, rng, positive)
        text = rng.choice(
            (
                "Is this review positive or negative?\nReview: {r}",
                "Classify the sentiment of this review as positive or negative.\n{r}",
                "Review: {r}\nIs the review above positive or negative?",
            )
        ).format(r=review)
        return text, {"answer": "positive" if positive else "negative"}

    @staticmethod
    def solve(world: World, meta: dict, rng: random.Random) -> str:
        return label_answer(meta["answer"], "review", rng)

    @staticmethod
    def grade(world: World, meta: dict, response: str) -> Grade:
        return grade_label(response, meta["answer"], Sentiment.LABELS)


@task("kind", "classification", 0.3)
class KindOf:
    """What kind of thing is X?"""

    @staticmethod
    def make(world: World, rng: random.Random):
        ent = rng.choice(list(world.entities.values()))
        text = rng.choice(
            (
                "Is {n} a creature, a town, a person, a food or a tool?",
                "Which kind of thing is {n}: creature, town, person, food or tool?",
            )
        ).format(n=ent.name)
        return text, {"topic": ent.name, "answer": ent.kind}

    @staticmethod
    def solve(world: World, meta: dict, rng: random.Random) -> str:
        n, k = meta["topic"], meta["answer"]
        art = "an" if k[0] in "aeiou" else "a"
        return rng.choice((f"{P.cap(n)} is {art} {k}.", f"It is {art} {k}.", P.cap(k) + "."))

    @staticmethod
    def grade(world: World, meta: dict, response: str) -> Grade:
        return grade_label(response, meta["answer"], KINDS)


@task("politeness", "classification", 0.3)
class Politeness:
    """Is this message polite or rude? (The rude ones contain an insult.)"""

    LABELS = ("polite", "rude")

    @staticmethod
    def make(world: World, rng: random.Random):
        rude = rng.random() < 0.5
        msg = P.rude_message(world, rng) if rude else P.polite_message(rng)
        text = rng.choice(
            (
                "Is this message polite or rude?\nMessage: {m}",
                "Message: {m}\nIs the message above polite or rude?",
            )
        ).format(m=msg)
        return text, {"answer": "rude" if rude else "polite"}

    @staticmethod
    def solve(world: World, meta: dict, rng: random.Random) -> str:
        return label_answer(meta["answer"], "message", rng)

    @staticmethod
    def grade(world: World, meta: dict, response: str) -> Grade:
        return grade_label(response, meta["answer"], Politeness.LABELS)
