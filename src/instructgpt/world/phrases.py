"""Sentence templates shared by the corpus, the task solvers and the probes.

Facts are written as a subject plus a verb phrase ("the zorbin" + "eats
fish"), so the same templates give single sentences ("The zorbin eats
fish."), combined sentences ("The zorbin is red and eats fish.") and cloze
items ("The zorbin eats" -> " fish"). ``facts.py`` reads these forms back.
"""

from __future__ import annotations

import random

from .kb import Entity, World

# (kind, attr) -> verb-phrase templates; {v} is the value.
VERB_PHRASES: dict[tuple[str, str], tuple[str, ...]] = {
    ("creature", "colour"): ("is {v}", "is {v} in colour", "has {v} fur"),
    ("creature", "size"): ("is a {v} creature", "is {v}"),
    ("creature", "diet"): ("eats {v}", "feeds on {v}", "lives on {v}"),
    ("creature", "legs"): ("has {v} legs", "walks on {v} legs"),
    ("creature", "home"): ("lives near {v}", "is found near {v}"),
    ("town", "region"): ("is a town in the {v}", "lies in the {v}", "is in the {v}"),
    ("town", "known_for"): ("is known for {v}", "is famous for {v}"),
    ("person", "job"): ("is a {v}", "works as a {v}"),
    ("person", "home"): ("lives in {v}", "comes from {v}"),
    ("person", "age"): ("is {v} years old",),
    ("person", "pet"): ("has a pet {v}", "keeps a {v} as a pet"),
    ("person", "group"): ("is a {v}", "belongs to the {v} people"),
    ("food", "colour"): ("is {v}", "is {v} in colour"),
    ("food", "taste"): ("tastes {v}", "is a {v} food", "has a {v} taste"),
    ("food", "home"): ("comes from {v}", "is made in {v}"),
    ("tool", "material"): ("is made of {v}", "is a tool made of {v}"),
    ("tool", "use"): ("is used for {v}", "is good for {v}"),
    ("tool", "maker"): ("was made by {v}",),
}

# (kind, attr) -> question templates; {s} is the subject phrase.
QUESTIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("creature", "colour"): ("What colour is {s}?", "What is the colour of {s}?"),
    ("creature", "size"): ("How big is {s}?", "What size is {s}?"),
    ("creature", "diet"): ("What does {s} eat?", "What do {s}s eat?"),
    ("creature", "legs"): ("How many legs does {s} have?",),
    ("creature", "home"): ("Where does {s} live?", "Where can I find {s}?"),
    ("town", "region"): ("In which part of the land is {s}?", "Where is {s}?"),
    ("town", "known_for"): ("What food is {s} known for?", "What is {s} famous for?"),
    ("person", "job"): ("What is {s}'s job?", "What does {s} do for a living?"),
    ("person", "home"): ("Where does {s} live?", "Which town is {s} from?"),
    ("person", "age"): ("How old is {s}?",),
    ("person", "pet"): ("What pet does {s} have?",),
    ("food", "colour"): ("What colour is {s}?",),
    ("food", "taste"): ("How does {s} taste?", "What does {s} taste like?"),
    ("food", "home"): ("Where does {s} come from?", "Which town makes {s}?"),
    ("tool", "material"): ("What is {s} made of?",),
    ("tool", "use"): ("What is {s} used for?", "What can I do with {s}?"),
    ("tool", "maker"): ("Who made {s}?",),
}

# How a prompt names an attribute ("Do not mention its colour.").
ATTR_NAMES = {
    "colour": "its colour",
    "size": "its size",
    "diet": "what it eats",
    "legs": "its legs",
    "home": "where it comes from",
    "taste": "its taste",
    "material": "what it is made of",
    "use": "what it is used for",
}

INCLUDE_WORDS = ("lovely", "strange", "quiet", "famous", "gentle", "brave", "friendly", "old")


def cap(text: str) -> str:
    """Upper-case the first character only."""
    return text[:1].upper() + text[1:]


def verb_phrase(ent: Entity, attr: str, rng: random.Random, value=None) -> str:
    """ "eats fish" -- a random template for this fact (or for ``value`` instead)."""
    v = ent.attrs[attr] if value is None else value
    return rng.choice(VERB_PHRASES[(ent.kind, attr)]).format(v=v)


def fact_sentence(ent: Entity, attr: str, rng: random.Random, value=None, subject: str | None = None) -> str:
    """ "The zorbin eats fish." (``subject`` overrides "the zorbin", e.g. "It")."""
    subj = subject if subject is not None else ent.subject
    return cap(f"{subj} {verb_phrase(ent, attr, rng, value)}.")


def combined_sentence(ent: Entity, attrs: list[str], rng: random.Random, subject: str | None = None) -> str:
    """ "The zorbin is red, eats fish and has four legs." -- several facts in one sentence."""
    vps = [verb_phrase(ent, a, rng) for a in attrs]
    body = vps[0] if len(vps) == 1 else ", ".join(vps[:-1]) + " and " + vps[-1]
    subj = subject if subject is not None else ent.subject
    return cap(f"{subj} {body}.")


def question(ent: Entity, attr: str, rng: random.Random) -> str:
    """ "What colour is the zorbin?" """
    return cap(rng.choice(QUESTIONS[(ent.kind, attr)]).format(s=ent.subject))


def pronoun(ent: Entity) -> str:
    """The word a follow-up sentence uses for ``ent`` (people keep their name)."""
    return ent.name if ent.kind in ("person", "town") else "It"


def describe(
    ent: Entity, attrs: list[str], rng: random.Random, first_subject: str | None = None
) -> list[str]:
    """One fact sentence per attribute; later ones say "It" (or repeat a name)."""
    out = []
    for i, a in enumerate(attrs):
        subj = first_subject if i == 0 else pronoun(ent)
        out.append(fact_sentence(ent, a, rng, subject=subj))
    return out


def questionable_attrs(ent: Entity) -> list[str]:
    """Attributes of ``ent`` that have question templates."""
    return [a for a in ent.attrs if (ent.kind, a) in QUESTIONS]


def random_question(world: World, rng: random.Random) -> str:
    """A question about a random fact of the world ("How many legs does the zorbin have?")."""
    ent = rng.choice([e for e in world.entities.values() if questionable_attrs(e)])
    return question(ent, rng.choice(questionable_attrs(ent)), rng)


def source_text(
    world: World, ents: list[Entity], rng: random.Random, n_facts: int = 3
) -> tuple[str, list[tuple[str, str]]]:
    """A short closed-domain passage: ``n_facts`` facts about ``ents``.

    Returns the text and the (entity, attr) facts it states.
    """
    facts: list[tuple[str, str]] = []
    pool = [(e, a) for e in ents for a in e.attrs if (e.kind, a) in VERB_PHRASES]
    rng.shuffle(pool)
    chosen = pool[:n_facts]
    # Keep each entity's facts together so "It" is never ambiguous.
    order = {e.name: i for i, e in enumerate(ents)}
    chosen.sort(key=lambda ea: order[ea[0].name])
    sentences = []
    last = None
    for e, a in chosen:
        subj = pronoun(e) if last == e.name else e.subject
        sentences.append(fact_sentence(e, a, rng, subject=subj))
        facts.append((e.name, a))
        last = e.name
    return " ".join(sentences), facts


def format_list(items: list[str], fmt: str | None, rng: random.Random) -> str:
    """Items as a numbered list, a dash list or a comma list."""
    if fmt is None and len(items) == 1:
        return items[0] + "."
    fmt = fmt or rng.choice(("numbered", "bullets", "comma"))
    if fmt == "numbered":
        return "\n".join(f"{i + 1}. {x}" for i, x in enumerate(items))
    if fmt == "bullets":
        return "\n".join(f"- {x}" for x in items)
    if len(items) == 1:
        return items[0] + "."
    return ", ".join(items[:-1]) + " and " + items[-1] + "." if rng.random() < 0.5 else ", ".join(items) + "."


# ----- stories (corpus, generation tasks) ----------------------------------


def story_pieces(person: Entity, creature: Entity, r: random.Random) -> dict[str, list[str]]:
    """Sentence options for a short story about ``person`` and ``creature`` (true to the KB)."""
    p, x = person, creature
    a = p.attrs
    c = creature.attrs
    return {
        "open": [
            f"{p.name} was a {a['job']} who lived in {a['home']}.",
            f"Once there was a {a['job']} called {p.name}.",
            f"{p.name} the {a['job']} lived in {a['home']}.",
        ],
        "meet": [
            f"One day {p.name} met a {c['colour']} {x.name}.",
            f"One morning {p.name} found a {c['size']} {x.name} by the road.",
            f"One day {p.name} saw a {x.name} with {c['legs']} legs.",
        ],
        "meet2": [
            f"One day {p.name} the {a['job']} met a {c['colour']} {x.name}.",
            f"{p.name} the {a['job']} found a {c['size']} {x.name} one morning.",
        ],
        "mid": [
            f"The {x.name} was hungry, so {p.name} gave it some {c['diet']}.",
            f"It had {c['legs']} legs and ran very fast.",
            f"The {x.name} followed {p.name} all day.",
            f"{p.name} laughed and sat down by the {x.name}.",
        ],
        "end": [
            "From then on they were friends.",
            "They walked home together.",
            f"{p.name} never forgot that day.",
            "And they were happy.",
        ],
    }


# ----- reviews and messages (corpus, classification tasks, FLAN) --------

_POSITIVE = (
    "It was wonderful.",
    "I loved it.",
    "Everything was perfect.",
    "I will come back again.",
    "The seller was kind.",
    "Best thing I bought all year.",
)
_NEGATIVE = (
    "It was awful.",
    "I hated it.",
    "Everything went wrong.",
    "I will never buy it again.",
    "The seller was unkind.",
    "Worst thing I bought all year.",
)


def review_text(world: World, rng: random.Random, positive: bool) -> str:
    """A two- or three-sentence product review of a food or a tool."""
    kind = rng.choice(("food", "tool"))
    item = rng.choice(world.of_kind(kind))
    town = rng.choice(world.of_kind("town")).name
    opener = rng.choice(
        (
            f"I bought {item.subject} at the market in {town}.",
            f"I tried {item.subject} last week.",
            f"We got {item.subject} for my mother.",
        )
    )
    pool = _POSITIVE if positive else _NEGATIVE
    return cap(opener) + " " + " ".join(rng.sample(pool, rng.choice((1, 2))))


_POLITE = (
    "Good morning, could you please help me with my cart?",
    "Thank you for the bread, it was kind of you.",
    "Excuse me, is this seat free?",
    "Have a nice day, and thanks for the help.",
    "Could you please tell me the way to the market?",
)
_RUDE = (
    "Move your cart, you {i}.",
    "Nobody asked you, {i}.",
    "Get out of my way, you {i}.",
    "What a {i} you are.",
    "Stop talking, you silly {i}.",
)


def polite_message(rng: random.Random) -> str:
    return rng.choice(_POLITE)


def rude_message(world: World, rng: random.Random) -> str:
    """A short message containing an insult from the toxic lexicon."""
    return rng.choice(_RUDE).format(i=rng.choice(world.insults))
