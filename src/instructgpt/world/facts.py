"""Facts stated in a text, read back from it: the shared machinery of the checkers.

``extract_claims`` finds statements like "the zorbin is red" in a response and
returns them as ``Claim(entity, attr, value)``; the checkers compare them with
the knowledge base (open-domain tasks) or with the claims of the source
passage (closed-domain tasks). A value word is attributed to the nearest
entity in the same sentence that has that attribute (preceding first), else
to the most recently mentioned such entity, else to the prompt's topic.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from .kb import ENTITY_VALUED, TOXIC_LEXICON, VOCAB, World


@dataclass(frozen=True)
class Claim:
    entity: str
    attr: str
    value: str


_WORD = re.compile(r"[A-Za-z0-9']+")
_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")
_LIST_MARK = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s*")
_DIGIT_LEGS = {"2": "two", "4": "four", "6": "six", "8": "eight"}

# Context that makes an entity name the *value* of an entity-valued attribute.
_BEFORE = {
    "home": re.compile(
        r"\b(?:lives?|living|lived|found|stays?|comes?|came|made|grown|born)\s+"
        r"(?:in|near|from)\s+$|\bfrom\s+$",
        re.IGNORECASE,
    ),
    "known_for": re.compile(r"\b(?:known|famous)\s+for\s+(?:its\s+)?$", re.IGNORECASE),
    "pet": re.compile(r"\bpet\s+(?:a\s+|an\s+|the\s+)?$", re.IGNORECASE),
    "maker": re.compile(r"\bmade\s+by\s+$", re.IGNORECASE),
}
_PET_AFTER = re.compile(r"^s?\s+as\s+(?:a|her|his|their)\s+pet\b", re.IGNORECASE)


def words(text: str) -> list[str]:
    """The words of ``text`` (letters, digits, apostrophes)."""
    return _WORD.findall(text)


def word_count(text: str) -> int:
    return len(words(text))


def sentences(text: str) -> list[str]:
    """Sentences and lines of ``text``, list markers removed, empties dropped."""
    out = []
    for part in _SENT_SPLIT.split(text.strip()):
        part = _LIST_MARK.sub("", part).strip()
        if part and words(part):
            out.append(part)
    return out


def has_word(text: str, word: str) -> bool:
    """Whole-word, case-insensitive search (multi-word phrases allowed)."""
    return re.search(r"\b" + re.escape(word) + r"\b", text, re.IGNORECASE) is not None


def insult_words(text: str) -> list[str]:
    """Words of ``text`` that belong to the toxic lexicon (with plurals)."""
    lex = set(TOXIC_LEXICON)
    return [w for w in words(text.lower()) if w in lex or (w.endswith("s") and w[:-1] in lex)]


def contains_insult(text: str) -> bool:
    return bool(insult_words(text))


def toxicity(text: str) -> float:
    """Share of the words of ``text`` that are insults (0 for empty text)."""
    ws = words(text)
    return len(insult_words(text)) / len(ws) if ws else 0.0


def is_question_like(text: str) -> bool:
    """The base-model failure: a reply that asks questions instead of answering.

    True when the first sentence is a question or at least half the sentences are.
    """
    sents = sentences(text)
    if not sents:
        return False
    qs = [s.rstrip().endswith("?") for s in sents]
    return qs[0] or sum(qs) * 2 >= len(qs)


_DANGLING = {
    "and",
    "or",
    "of",
    "the",
    "a",
    "an",
    "to",
    "with",
    "for",
    "in",
    "near",
    "from",
    "by",
    "is",
    "are",
    "was",
    "but",
    "so",
    "that",
    "which",
    "its",
    "his",
    "her",
    "their",
    "my",
    "on",
}


_INSTRUCTION = re.compile(
    r"^(?:write|describe|tell me|tell a|list|summari[sz]e|rewrite|extract|classify|sort|"
    r"count the|answer the|read the|name (?:two|three|four|\d))\b",
    re.IGNORECASE,
)


def is_unfinished(text: str) -> bool:
    """The text stops mid-sentence: a dangling last word, or prose of 4+ words without end punctuation."""
    last = text.strip().splitlines()[-1].strip() if text.strip() else ""
    ws = words(last)
    if not ws or last.endswith((".", "!", "?")) or _LIST_MARK.match(last):
        return False
    return ws[-1].lower() in _DANGLING or len(ws) > 3


def is_instruction_like(text: str) -> bool:
    """The other base-model failure: the reply is itself a new instruction ("Write a story about ...")."""
    return bool(_INSTRUCTION.match(text.strip()))


def list_items(text: str) -> tuple[list[str], str]:
    """Items of a list answer and its format: "numbered", "bullets", "comma" or "prose"."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if len(lines) >= 2 or (lines and _LIST_MARK.match(lines[0])):
        marked = [ln for ln in lines if _LIST_MARK.match(ln)]
        if marked and len(marked) == len(lines):
            fmt = "numbered" if re.match(r"^\s*\d", marked[0]) else "bullets"
            return [_LIST_MARK.sub("", ln).strip(" .") for ln in marked], fmt
        return [ln.strip(" .") for ln in lines], "lines"
    body = lines[0] if lines else ""
    parts = [p.strip(" .!") for p in re.split(r",\s*|\s+and\s+", body) if p.strip(" .!")]
    return parts, ("comma" if len(parts) >= 2 else "prose")


# ----- entity and value mentions ---------------------------------------


@functools.lru_cache(maxsize=16)
def _name_regex(names: tuple[str, ...]) -> re.Pattern:
    alts = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(r"\b(" + alts + r")(?:s|'s)?\b", re.IGNORECASE)


def entity_mentions(world: World, text: str) -> list[tuple[int, int, str]]:
    """(start, end, canonical name) for every entity name in ``text``."""
    rx = _name_regex(tuple(world.all_names()))
    return [(m.start(1), m.end(1), world.get(m.group(1)).name) for m in rx.finditer(text)]


def mentioned_names(world: World, text: str) -> list[str]:
    """Canonical names mentioned in ``text``, in order, without repeats."""
    seen: list[str] = []
    for _, _, n in entity_mentions(world, text):
        if n not in seen:
            seen.append(n)
    return seen


@functools.lru_cache(maxsize=1)
def _value_regexes() -> dict[str, re.Pattern]:
    out = {}
    for attr, vocab in VOCAB.items():
        alts = "|".join(re.escape(v) for v in sorted(vocab, key=len, reverse=True))
        out[attr] = re.compile(r"\b(" + alts + r")\b", re.IGNORECASE)
    out["legs"] = re.compile(r"\b(two|four|six|eight|2|4|6|8)\s+legs?\b", re.IGNORECASE)
    out["age"] = re.compile(r"\b(\d{1,3})\s+years?\s+old\b", re.IGNORECASE)
    return out


def value_mentions(text: str, attr: str) -> list[str]:
    """Normalised values of ``attr`` written anywhere in ``text``.

    For ``legs`` a bare number word counts too ("Four."), for ``age`` a bare number.
    """
    if attr == "legs":
        found = re.findall(r"\b(two|four|six|eight|2|4|6|8)\b", text, re.IGNORECASE)
        return [_DIGIT_LEGS.get(v, v.lower()) for v in found]
    if attr == "age":
        return re.findall(r"\b(\d{1,3})\b", text)
    rx = _value_regexes()[attr]
    return [_norm(attr, m.group(1)) for m in rx.finditer(text)]


def _norm(attr: str, v: str) -> str:
    if attr == "legs":
        return _DIGIT_LEGS.get(v, v.lower())
    if attr == "group":
        return v.capitalize()
    return v.lower()


# ----- claims -----------------------------------------------------------


def extract_claims(world: World, text: str, topic: str | None = None) -> list[Claim]:
    """Every (entity, attribute, value) statement that ``text`` makes."""
    claims: list[Claim] = []
    recent: list[str] = [topic] if topic else []
    for sent in sentences(text):
        ments = entity_mentions(world, sent)
        # Names that are the value of a relation ("a pet zorbin") are not subjects.
        values = {c.value for c in _entity_claims(world, sent, ments, recent)}
        subjects = [m for m in ments if m[2] not in values]
        claims.extend(_vocab_claims(world, sent, subjects, recent))
        claims.extend(_entity_claims(world, sent, ments, recent, subjects))
        for _, _, n in ments:
            if n in recent:
                recent.remove(n)
            recent.insert(0, n)
    return list(dict.fromkeys(claims))


def _subject(
    world: World, ments, pos: int, attr: str, recent: list[str], exclude: str | None = None
) -> str | None:
    has = [(s, n) for s, _, n in ments if n != exclude and attr in world.get(n).attrs]
    before = [(s, n) for s, n in has if s < pos]
    if before:
        return before[-1][1]
    after = [(s, n) for s, n in has if s > pos]
    if after:
        return after[0][1]
    for n in recent:
        if n != exclude and attr in world.get(n).attrs:
            return n
    return None


def _vocab_claims(world: World, sent: str, ments, recent: list[str]) -> list[Claim]:
    out = []
    masked = sent
    for attr, rx in _value_regexes().items():
        for m in rx.finditer(masked):
            subj = _subject(world, ments, m.start(), attr, recent)
            if subj is not None:
                out.append(Claim(subj, attr, _norm(attr, m.group(1))))
        if attr == "use":  # "catching crabs" must not also read as other values
            masked = rx.sub(lambda m: " " * len(m.group(0)), masked)
    return out


def _entity_claims(world: World, sent: str, ments, recent: list[str], subjects=None) -> list[Claim]:
    out = []
    subjects = ments if subjects is None else subjects
    for start, end, name in ments:
        kind = world.get(name).kind
        for attr, vkind in ENTITY_VALUED.items():
            if vkind != kind:
                continue
            before = _BEFORE[attr].search(sent[:start])
            after = attr == "pet" and _PET_AFTER.match(sent[end:])
            if not (before or after):
                continue
            subj = _subject(world, subjects, start, attr, recent, exclude=name)
            if subj is not None:
                out.append(Claim(subj, attr, name))
    return out


def is_true(world: World, claim: Claim) -> bool:
    """Does the knowledge base agree with ``claim``?"""
    return str(world.get(claim.entity).attrs.get(claim.attr)) == claim.value


def false_claims(world: World, claims: list[Claim]) -> list[Claim]:
    return [c for c in claims if not is_true(world, c)]


def falsehood_claims(world: World, claims: list[Claim]) -> list[Claim]:
    """Claims that repeat one of the world's popular falsehoods."""
    fs = {(f.entity, f.attr, f.false_value) for f in world.falsehoods}
    return [c for c in claims if (c.entity, c.attr, c.value) in fs]


__all__ = [
    "Claim",
    "contains_insult",
    "entity_mentions",
    "extract_claims",
    "false_claims",
    "falsehood_claims",
    "has_word",
    "insult_words",
    "is_question_like",
    "is_true",
    "list_items",
    "mentioned_names",
    "sentences",
    "toxicity",
    "value_mentions",
    "word_count",
    "words",
]
