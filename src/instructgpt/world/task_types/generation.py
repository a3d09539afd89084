"""Generation: write something new about the world (descriptions, stories, notes, adverts).

The most common use case (45.6% of the paper's prompts). Answers are open
domain: a stated fact that contradicts the knowledge base is a hallucination.
Prompts often carry explicit constraints (``constraints.py``).
"""

from __future__ import annotations

import random

from .. import facts as F
from .. import phrases as P
from ..kb import World
from .base import Grade, fact_grade, task
from .constraints import add_constraints, satisfying, with_constraints

_FILLERS = ("Many people know about it.", "People often talk about it.", "It is well known in the land.")


@task("describe", "generation", 0.35)
class Describe:
    """Write a short description of an entity, sometimes under constraints."""

    @staticmethod
    def make(world: World, rng: random.Random):
        kind = rng.choice(("creature", "creature", "food", "tool", "person", "town"))
        ent = rng.choice(world.of_kind(kind))
        text = rng.choice(
            (
                "Write a short description of {s}.",
                "Describe {s}.",
                "Tell me about {s}.",
                "Write a few sentences about {s}.",
            )
        ).format(s=ent.subject)
        meta = {"topic": ent.name}
        n_attrs = len(ent.attrs)
        opts = [
            {"type": "n_sentences", "n": rng.randint(2, min(3, n_attrs)), "mode": "exact"},
            {"type": "max_words", "n": rng.choice((15, 20, 25))},
            {"type": "include", "word": rng.choice(P.INCLUDE_WORDS)},
        ]
        avoidable = [a for a in ent.attrs if a in P.ATTR_NAMES]
        if kind in ("creature", "food") and len(avoidable) >= 3:
            opts.append({"type": "avoid_attr", "attr": rng.choice(avoidable)})
        if kind in ("creature", "food", "tool"):
            opts.append({"type": "avoid_word", "word": ent.name})
        add_constraints(meta, opts, rng)
        return P.cap(with_constraints(text, meta, rng)), meta

    @staticmethod
    def solve(world: World, meta: dict, rng: random.Random) -> str:
        ent = world.get(meta["topic"])
        cons = {c["type"]: c for c in meta.get("constraints", [])}

        def draw(r: random.Random) -> str:
            attrs = [a for a in ent.attrs if a != cons.get("avoid_attr", {}).get("attr")]
            r.shuffle(attrs)
            n = cons["n_sentences"]["n"] if "n_sentences" in cons else r.choice((1, 2, 2, 3))
            include = cons.get("include", {}).get("word")
            n_facts = n - 1 if include and n > 1 else n
            first = None
            if "avoid_word" in cons:
                first = "This " + ent.kind
            sents = P.describe(ent, attrs[: max(1, n_facts)], r, first_subject=first)
            if n_facts <= 1 and len(attrs) > 1:  # one sentence still carries two facts
                sents = [P.combined_sentence(ent, attrs[:2], r, subject=first)]
            while len(sents) < n_facts:  # fewer facts than sentences asked for
                sents.append(r.choice(_FILLERS))
            if include:
                word_sent = f"{P.pronoun(ent)} is {include}." if n > 1 else None
                if word_sent:
                    sents.insert(r.randint(1, len(sents)), word_sent)
                else:
                    sents[0] = sents[0][:-1] + f", and it is {include}."
            return " ".join(sents)

        return satisfying(world, meta, draw, rng)

    @staticmethod
    def grade(world: World, meta: dict, response: str) -> Grade:
        topic = meta["topic"]
        cl, wrong, fals = fact_grade(world, response, topic)
        true_attrs = {c.attr for c in cl if c.entity == topic and F.is_true(world, c)}
        content = min(1.0, len(true_attrs) / 2)
        notes = [] if true_attrs else ["states no fact about the topic"]
        return Grade(content, bool(true_attrs), wrong, fals, notes)


@task("story", "generation", 0.30)
class Story:
    """Write a short story about a person and a creature."""

    @staticmethod
    def make(world: World, rng: random.Random):
        p = rng.choice(world.of_kind("person"))
        x = world.get(p.attrs["pet"]) if rng.random() < 0.3 else rng.choice(world.of_kind("creature"))
        text = rng.choice(
            (
                "Write a short story about {p} and {x}.",
                "Tell a short story in which {p} meets {x}.",
                "Write a story for children about {p} and {x}.",
            )
        ).format(p=p.name, x=x.subject)
        meta = {"topic": p.name, "other": x.name}
        opts = [
            {"type": "n_sentences", "n": rng.randint(2, 4), "mode": "exact"},
            {"type": "include", "word": rng.choice(P.INCLUDE_WORDS)},
            {"type": "max_words", "n": rng.choice((25, 30))},
        ]
        add_constraints(meta, opts, rng, p_one=0.4, p_two=0.1)
        return with_constraints(text, meta, rng), meta

    @staticmethod
    def solve(world: World, meta: dict, rng: random.Random) -> str:
        p, x = world.get(meta["topic"]), world.get(meta["other"])
        cons = {c["type"]: c for c in meta.get("constraints", [])}

        def draw(r: random.Random) -> str:
            pc = P.story_pieces(p, x, r)
            n = cons["n_sentences"]["n"] if "n_sentences" in cons else r.choice((2, 3, 3, 4))
            include = cons.get("include", {}).get("word")
            extra = [f"It was a {include} day."] if include else []
            n_story = n - len(extra)
            if n_story <= 2:
                sents = [r.choice(pc["meet2"]), r.choice(pc["end"])][: max(1, n_story)]
            else:
                sents = (
                    [r.choice(pc["open"]), r.choice(pc["meet"])]
                    + r.sample(pc["mid"], n_story - 3)
                    + [r.choice(pc["end"])]
                )
            for s in extra:
                sents.insert(r.randint(1, len(sents)), s)
            return " ".join(sents)

        return satisfying(world, meta, draw, rng)

    @staticmethod
    def grade(world: World, meta: dict, response: str) -> Grade:
        names = F.mentioned_names(world, response)
        has_p, has_x = meta["topic"] in names, meta["other"] in names
        _, wrong, fals = fact_grade(world, response, meta["topic"])
        long_enough = len(F.sentences(response)) >= 2
        content = (0.5 * has_p + 0.5 * has_x) * (1.0 if long_enough else 0.5)
        notes = [
            n
            for n, ok in (
                ("person missing", has_p),
                ("creature missing", has_x),
                ("too short for a story", long_enough),
            )
            if not ok
        ]
        return Grade(content, has_p and has_x and long_enough, wrong, fals, notes)


@task("note", "generation", 0.20, answers_question=False)
class Note:
    """Write a short note inviting a person to a town."""

    @staticmethod
    def make(world: World, rng: random.Random):
        p = rng.choice(world.of_kind("person"))
        t = rng.choice(world.of_kind("town"))
        text = rng.choice(
            (
                "Write a short note inviting {p} to visit {t}.",
                "Write a message to {p} asking them to come to {t}.",
                "Write an invitation for {p} to visit {t}.",
            )
        ).format(p=p.name, t=t.name)
        meta = {"topic": p.name, "other": t.name}
        opts = [
            {"type": "max_words", "n": rng.choice((15, 20, 25))},
            {"type": "include", "word": rng.choice(P.INCLUDE_WORDS)},
        ]
        add_constraints(meta, opts, rng, p_one=0.45, p_two=0.1)
        return with_constraints(text, meta, rng), meta

    @staticmethod
    def solve(world: World, meta: dict, rng: random.Random) -> str:
        p, t = world.get(meta["topic"]), world.get(meta["other"])
        cons = {c["type"]: c for c in meta.get("constraints", [])}

        def draw(r: random.Random) -> str:
            sents = [
                r.choice(
                    (
                        f"Dear {p.name}, please come and visit {t.name}.",
                        f"Hello {p.name}! Would you like to visit {t.name} with me?",
                        f"Dear {p.name}, I would love it if you came to {t.name}.",
                    )
                )
            ]
            if r.random() < 0.6:
                sents.append(
                    r.choice(
                        (
                            f"{t.name} is known for {t.attrs['known_for']}, and we can try it together.",
                            f"We can eat {t.attrs['known_for']} at the market.",
                            "We will have a lovely time.",
                        )
                    )
                )
            if "include" in cons and not any(F.has_word(s, cons["include"]["word"]) for s in sents):
                w = cons["include"]["word"]
                sents.append(f"{'An' if w[0] in 'aeiou' else 'A'} {w} day awaits.")
            if r.random() < 0.7:
                sents.append(r.choice(("Best wishes.", "See you soon.", "Your friend.")))
            return " ".join(sents)

        return satisfying(world, meta, draw, rng)

    @staticmethod
    def grade(world: World, meta: dict, response: str) -> Grade:
        names = F.mentioned_names(world, response)
        has_p, has_t = meta["topic"] in names, meta["other"] in names
        _, wrong, fals = fact_grade(world, response, meta["topic"])
        notes = [n for n, ok in (("person missing", has_p), ("town missing", has_t)) if not ok]
        return Grade(0.5 * has_p + 0.5 * has_t, has_p and has_t, wrong, fals, notes)


@task("ad", "generation", 0.15)
class Advert:
    """Write a one-sentence advertisement for a food or a tool."""

    @staticmethod
    def make(world: World, rng: random.Random):
        ent = rng.choice(world.of_kind(rng.choice(("food", "tool"))))
        text = rng.choice(
            (
                "Write a one-sentence advertisement for {s}.",
                "Write an advert for {s} in one sentence.",
                "Write a single sentence that sells {s}.",
            )
        ).format(s=ent.subject)
        meta = {
            "topic": ent.name,
            "constraints": [{"type": "n_sentences", "n": 1, "mode": "exact", "implicit": True}],
        }
        add_constraints(
            meta, [{"type": "include", "word": rng.choice(P.INCLUDE_WORDS)}], rng, p_one=0.3, p_two=0.0
        )
        return with_constraints(text, meta, rng), meta

    @staticmethod
    def solve(world: World, meta: dict, rng: random.Random) -> str:
        ent = world.get(meta["topic"])
        a = ent.attrs
        include = next((c["word"] for c in meta.get("constraints", []) if c["type"] == "include"), None)
        adj = f"{include} " if include else ""
        if ent.kind == "food":
            options = [
                f"Try {ent.name}, the {adj}{a['taste']} treat from {a['home']}!",
                f"Buy {adj}{ent.name} today, it tastes {a['taste']} and comes from {a['home']}!",
                f"Nothing beats {adj}{ent.name}, the {a['colour']} food everyone loves.",
            ]
        else:
            options = [
                f"Get the {adj}{ent.name}, made of {a['material']} and good for {a['use']}!",
                f"Buy the {adj}{ent.name} today, the best tool for {a['use']}.",
                f"The {adj}{ent.name} is made of {a['material']} and it will last for years!",
            ]
        return P.cap(rng.choice(options))

    @staticmethod
    def grade(world: World, meta: dict, response: str) -> Grade:
        topic = meta["topic"]
        cl, wrong, fals = fact_grade(world, response, topic)
        has = topic in F.mentioned_names(world, response)
        n_true = len({c.attr for c in cl if c.entity == topic and F.is_true(world, c)})
        content = 0.6 * has + 0.4 * min(1, n_true)
        return Grade(content, has, wrong, fals, [] if has else ["product not named"])
