"""Flawed answers: the mistakes a base or half-trained model makes.

``perturb(prompt, response, flaw, rng)`` turns a good answer into one with a
given flaw; ``candidates(prompt, k, rng)`` mixes good answers and flawed ones,
the stand-in for K model samples when measuring labeler agreement or testing
a ranking pipeline without a model.

Flaws: ``question`` (asks more questions instead of answering, the forum
habit of a base model), ``instruction`` (continues with another instruction),
``wrong_fact``, ``falsehood`` (repeats the popular falsehood), ``toxic``,
``violate`` (breaks an explicit constraint), ``hallucinate`` (adds a detail
not in the source / a false fact), ``truncate``, ``offtopic``, ``play_user``
(chat: writes the user's next turn too). ``verbose`` is not a flaw but a
style: a pleasantry appended, to good and flawed answers alike.
"""

from __future__ import annotations

import random
import re

from ..data import Prompt
from . import facts as F
from . import phrases as P
from .kb import ENTITY_VALUED, KINDS, VOCAB, World
from .tasks import CLOSED_DOMAIN, TASKS, make_prompt, meta_and_world, solve

FLAWS = (
    "question",
    "instruction",
    "wrong_fact",
    "falsehood",
    "toxic",
    "violate",
    "hallucinate",
    "truncate",
    "offtopic",
    "play_user",
)
PLEASANTRIES = (
    "I hope this helps!",
    "Let me know if you need anything else.",
    "Have a nice day!",
    "Happy to help.",
)


def perturb(
    prompt: Prompt | dict, response: str, flaw: str, rng: random.Random, world: World | None = None
) -> str | None:
    """``response`` with ``flaw`` added, or None when the flaw does not apply to this prompt."""
    meta, world = meta_and_world(prompt, world)
    fn = {
        "question": _question,
        "instruction": _instruction,
        "wrong_fact": _wrong_fact,
        "falsehood": _falsehood,
        "toxic": _toxic,
        "violate": _violate,
        "hallucinate": _hallucinate,
        "truncate": _truncate,
        "offtopic": _offtopic,
        "play_user": _play_user,
        "verbose": _verbose,
    }[flaw]
    out = fn(world, meta, response, rng)
    return out if out and out.strip() != response.strip() else None


def candidates(
    prompt: Prompt | dict, k: int, rng: random.Random, world: World | None = None, p_good: float = 0.4,
    p_verbose: float = 0.3,
) -> list[tuple[str, str]]:
    """``k`` (label, response) pairs: "good" answers and flawed ones (label: the flaw).

    A pleasantry (the ``verbose`` style) is added with probability ``p_verbose`` to ANY candidate, good
    or flawed (label ``verbose`` or ``<flaw>+verbose``): surface style must not tell a reward model which
    answers are right. (It used to fall on good answers only, and the RM learned "I hope this helps!".)
    """
    meta, world = meta_and_world(prompt, world)
    out: list[tuple[str, str]] = []
    while len(out) < k:
        base = solve(meta, rng, world)
        if rng.random() < p_good:
            label, text = "good", base
        else:
            label = rng.choice(FLAWS)
            text = perturb(meta, base, label, rng, world)
            if text is None:
                continue
        if rng.random() < p_verbose:
            text = _verbose(world, meta, text, rng)
            label = "verbose" if label == "good" else f"{label}+verbose"
        out.append((label, text))
    return out


def candidate_responses(
    prompt: Prompt | dict, k: int, rng: random.Random, world: World | None = None, p_good: float = 0.4
) -> list[str]:
    """Just the texts of ``candidates``."""
    return [t for _, t in candidates(prompt, k, rng, world, p_good)]


# ----- the flaws --------------------------------------------------------------------


def _question(world: World, meta: dict, response: str, rng: random.Random) -> str:
    qs = [P.random_question(world, rng) for _ in range(rng.choice((1, 2, 3)))]
    lead = rng.choice(("", "Also, ", "And ", "Does anyone know? ", "I was wondering the same. "))
    first = qs[0] if not lead or lead.endswith((". ", "? ")) else qs[0][0].lower() + qs[0][1:]
    return lead + " ".join([first] + qs[1:])


def _instruction(world: World, meta: dict, response: str, rng: random.Random) -> str:
    text, _, _ = make_prompt(world, rng, use_case="generation")
    return text.strip().split("\n")[0]


def _replace_word(text: str, old: str, new: str) -> str:
    def keep_case(m: re.Match) -> str:
        return new[:1].upper() + new[1:] if m.group(0)[:1].isupper() else new

    return re.sub(r"\b" + re.escape(old) + r"\b", keep_case, text, count=1, flags=re.IGNORECASE)


def _swap_label(world: World, meta: dict, text: str, rng: random.Random) -> str | None:
    groups = (("positive", "negative"), ("polite", "rude"), KINDS)
    for labels in groups:
        if meta.get("answer") in labels:
            other = rng.choice([x for x in labels if x != meta["answer"]])
            return _replace_word(text, meta["answer"], other)
    return None


def _swap_value(world: World, meta: dict, text: str, rng: random.Random) -> str | None:
    attrs = list(VOCAB)
    rng.shuffle(attrs)
    for attr in attrs:
        vals = (
            F.value_mentions(text, attr)
            if attr != "legs"
            else re.findall(r"\b(two|four|six|eight)\b", text, re.IGNORECASE)
        )
        if vals:
            old = vals[0]
            new = rng.choice([v for v in VOCAB[attr] if v != old.lower()])
            return _replace_word(text, old, new)
    nums = re.findall(r"\b\d+\b", text)
    if nums and not re.match(r"^\s*\d+[.)]\s", text):
        return _replace_word(text, nums[0], str(int(nums[0]) + rng.choice((-3, -1, 1, 2, 5))))
    return None


def _swap_name(world: World, meta: dict, text: str, rng: random.Random) -> str | None:
    names = [n for n in F.mentioned_names(world, text) if n != meta.get("topic")]
    if not names:
        return None
    old = world.get(rng.choice(names))
    kind = old.kind
    if meta["task"] == "list_kind":
        kind = rng.choice([k for k in KINDS if k != kind])
    present = set(F.mentioned_names(world, text))
    pool = [e.name for e in world.of_kind(kind) if e.name not in present]
    if meta["task"] == "list_filter":
        pool = [n for n in pool if str(world.get(n).attrs[meta["attr"]]) != meta["value"]]
    return _replace_word(text, old.name, rng.choice(pool)) if pool else None


def _wrong_fact(world: World, meta: dict, response: str, rng: random.Random) -> str | None:
    if meta["task"] in ("count_items",):
        return (
            _replace_word(response, str(meta["answer"]), str(meta["answer"] + 1))
            if str(meta["answer"]) in response
            else f"{meta['answer'] + 1}."
        )
    if meta["task"] == "sort_names":
        return ", ".join(sorted(meta["names"], key=str.lower, reverse=True)) + "."
    attr = meta.get("attr")
    order = (
        [_swap_label, _swap_name, _swap_value]
        if attr in ENTITY_VALUED or meta["task"].startswith("list") or meta["task"] == "extract_kind"
        else [_swap_label, _swap_value, _swap_name]
    )
    for fn in order:
        out = fn(world, meta, response, rng)
        if out and out != response:
            return out
    return None


def _falsehood(world: World, meta: dict, response: str, rng: random.Random) -> str | None:
    if "falsehood" in meta:
        return (
            _replace_word(response, str(meta["answer"]), meta["falsehood"])
            if F.has_word(response, str(meta["answer"]))
            else P.fact_sentence(world.get(meta["topic"]), meta["attr"], rng, value=meta["falsehood"])
        )
    if meta.get("topic") in world.entities:
        for f in world.falsehoods:
            if f.entity == meta["topic"]:
                return (
                    response.rstrip()
                    + " "
                    + P.fact_sentence(
                        world.get(f.entity),
                        f.attr,
                        rng,
                        value=f.false_value,
                        subject=P.pronoun(world.get(f.entity)),
                    )
                )
    return None


def _toxic(world: World, meta: dict, response: str, rng: random.Random) -> str:
    insult = rng.choice(world.insults)
    line = rng.choice(
        (
            f"What a {insult} question.",
            f"Only a {insult} would ask that.",
            f"You are such a {insult}.",
            f"Listen, {insult}.",
        )
    )
    return f"{line} {response}" if rng.random() < 0.5 else f"{response} {line}"


def _violate(world: World, meta: dict, response: str, rng: random.Random) -> str | None:
    cons = meta.get("constraints", [])
    if not cons:
        return None
    c = rng.choice(cons)
    t = c["type"]
    topic = world.entities.get(meta.get("topic", ""))
    extra = (
        P.fact_sentence(topic, rng.choice(list(topic.attrs)), rng)
        if topic
        else "It was a very long and busy day for everyone in the land."
    )
    if t == "n_sentences":
        sents = F.sentences(response)
        if c.get("mode") == "max" or rng.random() < 0.6 or len(sents) < 2:
            while len(sents) <= c["n"]:
                sents.append(extra)
            return " ".join(sents)
        return " ".join(sents[:-1])
    if t == "max_words":
        return (
            response
            + " It was a very long and busy day for everyone in the whole land, and nobody was tired."
        )
    if t == "include":
        return re.sub(r"\b" + re.escape(c["word"]) + r"\b", "nice", response, flags=re.IGNORECASE)
    if t == "avoid_word":
        return response + f" The {c['word']} is well known."
    if t == "avoid_attr" and topic:
        return response + " " + P.fact_sentence(topic, c["attr"], rng, subject=P.pronoun(topic))
    if t in ("format", "n_items"):
        items, fmt = F.list_items(response)
        if t == "n_items":
            items = items[:-1] if len(items) > 1 else items + items
            return P.format_list(items, fmt if fmt in ("numbered", "bullets", "comma") else None, rng)
        other = rng.choice([f for f in ("numbered", "bullets", "comma") if f != c["format"]])
        return P.format_list(items, other, rng)
    return None


def _hallucinate(world: World, meta: dict, response: str, rng: random.Random) -> str | None:
    if TASKS[meta["task"]].use_case in CLOSED_DOMAIN and "passage" in meta:
        src_names = F.mentioned_names(world, meta["passage"])
        ents = [world.get(n) for n in src_names] or list(world.entities.values())
        src_claims = set(F.extract_claims(world, meta["passage"]))
        for _ in range(20):
            e = rng.choice(ents)
            a = rng.choice(list(e.attrs))
            if (e.kind, a) in P.VERB_PHRASES and F.Claim(e.name, a, str(e.attrs[a])) not in src_claims:
                return response.rstrip() + " " + P.fact_sentence(e, a, rng)
        return None
    e = world.entities.get(meta.get("topic", ""))
    subject = None if e is None else P.pronoun(e)
    e = e or rng.choice([x for x in world.entities.values() if x.kind != "town"])
    a = rng.choice([a for a in e.attrs if a in VOCAB and a != "group"])
    wrong = rng.choice([v for v in VOCAB[a] if v != e.attrs[a]])
    return response.rstrip() + " " + P.fact_sentence(e, a, rng, value=wrong, subject=subject)


def _truncate(world: World, meta: dict, response: str, rng: random.Random) -> str | None:
    ws = response.split(" ")
    return " ".join(ws[: max(1, len(ws) // 2)]) if len(ws) >= 4 else None


def _offtopic(world: World, meta: dict, response: str, rng: random.Random) -> str:
    e = rng.choice([e for e in world.entities.values() if e.name != meta.get("topic")])
    attrs = [a for a in e.attrs if (e.kind, a) in P.VERB_PHRASES]
    return " ".join(P.describe(e, rng.sample(attrs, min(2, len(attrs))), rng))


def _play_user(world: World, meta: dict, response: str, rng: random.Random) -> str | None:
    if TASKS[meta["task"]].use_case != "chat":
        return None
    return f"{response}\nUser: {P.random_question(world, rng)}"


def _verbose(world: World, meta: dict, response: str, rng: random.Random) -> str:
    return f"{response} {rng.choice(PLEASANTRIES)}"
