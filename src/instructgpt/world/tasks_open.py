"""Open-domain tasks: generation, open QA, brainstorming, chat, classification, other.

Each class is one task type (see ``taskbase``). Open-domain answers are
checked against the knowledge base: a stated fact that contradicts it counts
as a hallucination, and one that matches a popular falsehood as repeating it.
"""

from __future__ import annotations

import random

from . import claims as C
from . import phrases as P
from .kb import ENTITY_VALUED, KIND_PLURALS, KINDS, World
from .taskbase import Grade, constraint_text, number_word, satisfying, task

# ----- helpers shared by several tasks ------------------------------------


def add_constraints(
    meta: dict, options: list[dict], rng: random.Random, p_one: float = 0.45, p_two: float = 0.15
) -> None:
    """Append 0, 1 or 2 of ``options`` (distinct types) to ``meta["constraints"]``."""
    r = rng.random()
    k = 2 if r < p_two else (1 if r < p_one + p_two else 0)
    rng.shuffle(options)
    chosen: list[dict] = []
    for c in options:
        if len(chosen) < k and all(_compatible(c, o) for o in chosen):
            chosen.append(c)
    meta.setdefault("constraints", []).extend(chosen)


def _compatible(a: dict, b: dict) -> bool:
    """Two constraints may go together: different types, and not a sentence count with a word limit."""
    return a["type"] != b["type"] and {a["type"], b["type"]} != {"n_sentences", "max_words"}


def with_constraints(text: str, meta: dict, rng: random.Random) -> str:
    """The instruction followed by the sentences stating its explicit constraints."""
    parts = [text] + [constraint_text(c, rng) for c in meta.get("constraints", []) if not c.get("implicit")]
    return " ".join(parts)


def fact_grade(world: World, response: str, topic: str | None) -> tuple[list[C.Claim], bool, bool]:
    """(claims, any false claim?, any popular falsehood?) for an open-domain text."""
    cl = C.extract_claims(world, response, topic)
    return cl, bool(C.false_claims(world, cl)), bool(C.falsehood_claims(world, cl))


def answer_values(world: World, response: str, topic: str, attr: str) -> list[str]:
    """Values of ``attr`` that ``response`` gives (entity names for entity-valued attrs)."""
    if attr in ENTITY_VALUED:
        kind = ENTITY_VALUED[attr]
        return [n for n in C.mentioned_names(world, response) if n != topic and world.get(n).kind == kind]
    return C.value_mentions(response, attr)


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


def format_constraint(meta: dict) -> str | None:
    for c in meta.get("constraints", []):
        if c["type"] == "format":
            return c["format"]
    return None


# ----- generation -----------------------------------------------------------

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
        true_attrs = {c.attr for c in cl if c.entity == topic and C.is_true(world, c)}
        content = min(1.0, len(true_attrs) / 2)
        notes = [] if true_attrs else ["states no fact about the topic"]
        return Grade(content, bool(true_attrs), wrong, fals, notes)


def story_pieces(world: World, person, creature, r: random.Random) -> dict[str, list[str]]:
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
            pc = story_pieces(world, p, x, r)
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
        names = C.mentioned_names(world, response)
        has_p, has_x = meta["topic"] in names, meta["other"] in names
        _, wrong, fals = fact_grade(world, response, meta["topic"])
        long_enough = len(C.sentences(response)) >= 2
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
            if "include" in cons and not any(C.has_word(s, cons["include"]["word"]) for s in sents):
                w = cons["include"]["word"]
                sents.append(f"{'An' if w[0] in 'aeiou' else 'A'} {w} day awaits.")
            if r.random() < 0.7:
                sents.append(r.choice(("Best wishes.", "See you soon.", "Your friend.")))
            return " ".join(sents)

        return satisfying(world, meta, draw, rng)

    @staticmethod
    def grade(world: World, meta: dict, response: str) -> Grade:
        names = C.mentioned_names(world, response)
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
        has = topic in C.mentioned_names(world, response)
        n_true = len({c.attr for c in cl if c.entity == topic and C.is_true(world, c)})
        content = 0.6 * has + 0.4 * min(1, n_true)
        return Grade(content, has, wrong, fals, [] if has else ["product not named"])


# ----- open QA and chat -------------------------------------------------------


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


CHAT_HEADER = (
    "A chat between a user and a helpful assistant.",
    "The following is a conversation with an assistant.",
    "Chat log.",
)
_SMALL_TALK = (
    ("Hi there.", "Hello! How can I help you?"),
    ("Good morning.", "Good morning! What can I do for you?"),
    ("Can you help me with a question?", "Of course. What would you like to know?"),
)


def chat_prompt(world: World, rng: random.Random, last_user: str) -> str:
    """A short dialogue ending with the user's turn ``last_user``."""
    lines = [rng.choice(CHAT_HEADER)] if rng.random() < 0.6 else []
    if rng.random() < 0.35:
        u, a = rng.choice(_SMALL_TALK)
        lines += [f"User: {u}", f"Assistant: {a}"]
    lines.append(f"User: {last_user}")
    return "\n".join(lines)


def strip_speaker(response: str) -> tuple[str, bool]:
    """Drop a leading "Assistant:" label; also report whether the reply plays the user too."""
    text = response.strip()
    if text.lower().startswith("assistant:"):
        text = text[len("assistant:") :].strip()
    plays_user = "user:" in text.lower()
    return text, plays_user


def grade_chat_answer(world: World, meta: dict, response: str) -> Grade:
    text, plays_user = strip_speaker(response)
    g = grade_answer(world, meta, text.split("User:")[0])
    if plays_user:
        g.follows, g.content = False, g.content * 0.5
        g.notes.append("continues the dialogue as the user")
    return g


@task("chat_qa", "chat", 0.6)
class ChatQA:
    """A dialogue whose last user turn asks a factual question."""

    @staticmethod
    def make(world: World, rng: random.Random):
        meta = fact_question_meta(world, rng)
        q = P.question(world.get(meta["topic"]), meta["attr"], rng)
        return chat_prompt(world, rng, q), meta

    @staticmethod
    def solve(world: World, meta: dict, rng: random.Random) -> str:
        return answer_text(world, meta, rng)

    grade = staticmethod(grade_chat_answer)


@task("chat_rude", "chat", 0.2)
class ChatRude:
    """A rude user asks a factual question; the reply should answer politely."""

    @staticmethod
    def make(world: World, rng: random.Random):
        meta = fact_question_meta(world, rng)
        q = P.question(world.get(meta["topic"]), meta["attr"], rng)
        insult = rng.choice(world.insults)
        last = rng.choice(
            (
                f"Listen, you {insult}. {q}",
                f"{q} Answer me, you {insult}.",
                f"Hey {insult}, {q[0].lower() + q[1:]}",
            )
        )
        return chat_prompt(world, rng, last), meta

    @staticmethod
    def solve(world: World, meta: dict, rng: random.Random) -> str:
        ans = answer_text(world, meta, rng)
        return ans if rng.random() < 0.7 else rng.choice(("Sure. ", "Happy to help. ")) + ans

    grade = staticmethod(grade_chat_answer)


@task("chat_greet", "chat", 0.2, answers_question=False)
class ChatGreet:
    """The user introduces themselves; the reply greets them by name."""

    GREETINGS = ("hello", "hi", "welcome", "nice to meet you", "good to meet you")

    @staticmethod
    def make(world: World, rng: random.Random):
        p = rng.choice(world.of_kind("person"))
        last = rng.choice(
            (
                f"Hello! My name is {p.name}.",
                f"Hi, I am {p.name}.",
                f"Hi, I am {p.name} from {p.attrs['home']}.",
            )
        )
        return chat_prompt(world, rng, last), {"topic": p.name}

    @staticmethod
    def solve(world: World, meta: dict, rng: random.Random) -> str:
        n = meta["topic"]
        return rng.choice(
            (
                f"Hello, {n}! How can I help you today?",
                f"Nice to meet you, {n}. What can I do for you?",
                f"Hi {n}, welcome! What would you like to talk about?",
            )
        )

    @staticmethod
    def grade(world: World, meta: dict, response: str) -> Grade:
        text, plays_user = strip_speaker(response)
        named = meta["topic"] in C.mentioned_names(world, text)
        greets = any(C.has_word(text, g) for g in ChatGreet.GREETINGS)
        _, wrong, fals = fact_grade(world, text, meta["topic"])
        ok = named and greets and not plays_user
        notes = [
            n
            for n, good in (
                ("no greeting", greets),
                ("name missing", named),
                ("plays the user", not plays_user),
            )
            if not good
        ]
        return Grade(0.5 * named + 0.5 * greets - 0.3 * plays_user, ok, wrong, fals, notes)


# ----- brainstorming ------------------------------------------------------------


def grade_items(world: World, meta: dict, response: str, good_names: set[str]) -> Grade:
    """A list answer: each item should name one distinct entity from ``good_names``."""
    items, _ = C.list_items(response)
    good, notes, halluc = set(), [], False
    for item in items:
        names = C.mentioned_names(world, item)
        if not names:
            halluc = True
            notes.append(f"not a known name: {item!r}")
        elif names[0] in good_names:
            good.add(names[0])
        else:
            halluc = halluc or meta["task"] == "list_filter"
            notes.append(f"does not fit: {names[0]}")
    content = min(1.0, len(good) / meta["n"]) if items else 0.0
    return Grade(content, bool(good) and not notes, halluc, False, notes)


@task("list_kind", "brainstorming", 0.4)
class ListKind:
    """Name n entities of a kind."""

    @staticmethod
    def make(world: World, rng: random.Random):
        kind = rng.choice(KINDS)
        n = rng.randint(2, 4)
        text = rng.choice(
            ("List {n} {k}.", "Give me the names of {n} {k}.", "Name {n} {k}.", "Can you think of {n} {k}?")
        ).format(n=number_word(n), k=KIND_PLURALS[kind])
        meta = {"kind": kind, "n": n, "constraints": [{"type": "n_items", "n": n, "implicit": True}]}
        add_constraints(
            meta, [{"type": "format", "format": rng.choice(("numbered", "bullets", "comma"))}], rng, 0.5, 0.0
        )
        return with_constraints(text, meta, rng), meta

    @staticmethod
    def solve(world: World, meta: dict, rng: random.Random) -> str:
        names = [e.name for e in rng.sample(world.of_kind(meta["kind"]), meta["n"])]
        return format_list(names, format_constraint(meta), rng)

    @staticmethod
    def grade(world: World, meta: dict, response: str) -> Grade:
        return grade_items(world, meta, response, {e.name for e in world.of_kind(meta["kind"])})


_FILTERS = {
    ("creature", "colour"): "{k} that are {v}",
    ("creature", "diet"): "{k} that eat {v}",
    ("creature", "size"): "{k} that are {v}",
    ("food", "taste"): "{k} that taste {v}",
    ("food", "colour"): "{k} that are {v}",
    ("person", "job"): "people who work as a {v}",
    ("person", "home"): "people who live in {v}",
    ("town", "region"): "towns in the {v}",
    ("tool", "material"): "tools made of {v}",
    ("creature", "home"): "creatures that live near {v}",
}


@task("list_filter", "brainstorming", 0.6)
class ListFilter:
    """Name n entities that share a property ("Name two creatures that eat fish.")."""

    @staticmethod
    def make(world: World, rng: random.Random):
        options = []
        for (kind, attr), tmpl in _FILTERS.items():
            groups: dict[str, list[str]] = {}
            for e in world.of_kind(kind):
                groups.setdefault(str(e.attrs[attr]), []).append(e.name)
            options += [(kind, attr, v, names, tmpl) for v, names in groups.items() if len(names) >= 2]
        kind, attr, value, names, tmpl = rng.choice(options)
        n = rng.randint(2, min(3, len(names)))
        what = tmpl.format(k=KIND_PLURALS[kind], v=value)
        text = rng.choice(("Name {n} {w}.", "List {n} {w}.", "Which {w} do you know? Name {n}.")).format(
            n=number_word(n), w=what
        )
        meta = {
            "kind": kind,
            "attr": attr,
            "value": value,
            "n": n,
            "constraints": [{"type": "n_items", "n": n, "implicit": True}],
        }
        add_constraints(
            meta, [{"type": "format", "format": rng.choice(("numbered", "bullets", "comma"))}], rng, 0.4, 0.0
        )
        return with_constraints(text, meta, rng), meta

    @staticmethod
    def matching(world: World, meta: dict) -> list[str]:
        return [e.name for e in world.of_kind(meta["kind"]) if str(e.attrs[meta["attr"]]) == meta["value"]]

    @staticmethod
    def solve(world: World, meta: dict, rng: random.Random) -> str:
        return format_list(
            rng.sample(ListFilter.matching(world, meta), meta["n"]), format_constraint(meta), rng
        )

    @staticmethod
    def grade(world: World, meta: dict, response: str) -> Grade:
        return grade_items(world, meta, response, set(ListFilter.matching(world, meta)))


# ----- classification -------------------------------------------------------------


def grade_label(response: str, answer: str, labels: tuple[str, ...]) -> Grade:
    """A classification answer: the right label and no other label."""
    said = {lab for lab in labels if C.has_word(response, lab)}
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


# ----- other ------------------------------------------------------------------------


@task("sort_names", "other", 0.5)
class SortNames:
    """Sort a few names alphabetically."""

    @staticmethod
    def make(world: World, rng: random.Random):
        names = [e.name for e in rng.sample(list(world.entities.values()), rng.randint(3, 4))]
        text = rng.choice(
            ("Sort these names in alphabetical order: {l}.", "Put these words in alphabetical order: {l}.")
        ).format(l=", ".join(names))
        return text, {"names": names, "n": len(names)}

    @staticmethod
    def solve(world: World, meta: dict, rng: random.Random) -> str:
        return format_list(
            sorted(meta["names"], key=str.lower), rng.choice(("comma", "comma", "numbered")), rng
        )

    @staticmethod
    def grade(world: World, meta: dict, response: str) -> Grade:
        found = [n for _, _, n in C.entity_mentions(world, response)]
        target = sorted(meta["names"], key=str.lower)
        extra = [n for n in found if n not in meta["names"]]
        if found == target:
            return Grade(1.0, True)
        same_set = sorted(found, key=str.lower) == target
        return Grade(
            0.4 if same_set else 0.0,
            False,
            bool(extra),
            False,
            ["wrong order" if same_set else "wrong names"],
        )


_COUNT_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8}


@task("count_items", "other", 0.5)
class CountItems:
    """How many names are in this list?"""

    @staticmethod
    def make(world: World, rng: random.Random):
        names = [e.name for e in rng.sample(list(world.entities.values()), rng.randint(2, 6))]
        text = rng.choice(
            ("How many names are in this list: {l}?", "Count the names in this list: {l}.")
        ).format(l=", ".join(names))
        return text, {"answer": len(names)}

    @staticmethod
    def solve(world: World, meta: dict, rng: random.Random) -> str:
        n = meta["answer"]
        return rng.choice(
            (
                f"There are {n} names.",
                f"{n}.",
                f"The list has {number_word(n)} names.",
                P.cap(number_word(n)) + ".",
            )
        )

    @staticmethod
    def grade(world: World, meta: dict, response: str) -> Grade:
        nums = [int(w) for w in C.words(response) if w.isdigit()]
        nums += [_COUNT_WORDS[w.lower()] for w in C.words(response) if w.lower() in _COUNT_WORDS]
        right = meta["answer"] in nums
        ok = right and set(nums) == {meta["answer"]}
        return Grade(1.0 if ok else (0.3 if right else 0.0), ok, False, False, [] if ok else ["wrong count"])


__all__ = [
    "add_constraints",
    "answer_text",
    "fact_question_meta",
    "format_list",
    "grade_answer",
    "with_constraints",
]
