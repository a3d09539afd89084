"""Explicit constraints of a prompt: drawn by ``make``, stated in the prompt, kept by ``solve``, checked.

``meta["constraints"]`` is a list of dicts with a ``type``: an exact or
maximum sentence count (``n_sentences``), a word limit (``max_words``), a word
to include or avoid, an attribute not to mention (``avoid_attr``), a list
format and an item count (``n_items``). A constraint with ``implicit`` is
checked but not stated in the prompt (the instruction already says it).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from .. import facts as F
from ..kb import World
from ..phrases import ATTR_NAMES

_NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


def number_word(n: int) -> str:
    return _NUMBER_WORDS.get(n, str(n))


# ----- drawing and stating them ----------------------------------------------


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


def constraint_text(c: dict[str, Any], rng: random.Random) -> str:
    """How a prompt states constraint ``c``."""
    t = c["type"]
    if t == "n_sentences":
        n = number_word(c["n"])
        if c.get("mode") == "max":
            return rng.choice((f"Use at most {n} sentences.", f"Answer in no more than {n} sentences."))
        return rng.choice((f"Use exactly {n} sentences.", f"Write it in {n} sentences."))
    if t == "max_words":
        return rng.choice((f"Use at most {c['n']} words.", f"Keep it under {c['n']} words."))
    if t == "include":
        return rng.choice((f'Include the word "{c["word"]}".', f'Use the word "{c["word"]}".'))
    if t == "avoid_word":
        return rng.choice((f'Do not use the word "{c["word"]}".', f'Avoid the word "{c["word"]}".'))
    if t == "avoid_attr":
        return f"Do not mention {ATTR_NAMES[c['attr']]}."
    if t == "format":
        return {
            "numbered": "Write them as a numbered list.",
            "bullets": "Use a list with dashes.",
            "comma": "Separate them with commas.",
        }[c["format"]]
    raise ValueError(f"unknown constraint type {t!r}")


def with_constraints(text: str, meta: dict, rng: random.Random) -> str:
    """The instruction followed by the sentences stating its explicit constraints."""
    parts = [text] + [constraint_text(c, rng) for c in meta.get("constraints", []) if not c.get("implicit")]
    return " ".join(parts)


def format_constraint(meta: dict) -> str | None:
    """The list format ``meta`` asks for, if any."""
    for c in meta.get("constraints", []):
        if c["type"] == "format":
            return c["format"]
    return None


# ----- checking and keeping them ---------------------------------------------


def constraint_violations(world: World, meta: dict, response: str) -> list[str]:
    """Names of the explicit constraints in ``meta["constraints"]`` that ``response`` breaks."""
    out = []
    for c in meta.get("constraints", []):
        if not _satisfied(world, meta, c, response):
            out.append(_label(c))
    return out


def _label(c: dict) -> str:
    t = c["type"]
    extra = c.get("n", c.get("word", c.get("attr", c.get("format"))))
    return f"{t}:{extra}" if extra is not None else t


def _satisfied(world: World, meta: dict, c: dict, response: str) -> bool:
    t = c["type"]
    if t == "n_sentences":
        n = len(F.sentences(response))
        return n <= c["n"] if c.get("mode") == "max" else n == c["n"]
    if t == "max_words":
        return F.word_count(response) <= c["n"]
    if t == "include":
        return F.has_word(response, c["word"])
    if t == "avoid_word":
        return not F.has_word(response, c["word"]) and not F.has_word(response, c["word"] + "s")
    if t == "avoid_attr":
        topic = meta.get("topic")
        return not any(
            cl.attr == c["attr"] and cl.entity == topic for cl in F.extract_claims(world, response, topic)
        )
    if t == "format":
        return F.list_items(response)[1] == c["format"]
    if t == "n_items":
        return len(F.list_items(response)[0]) == c["n"]
    raise ValueError(f"unknown constraint type {t!r}")


def satisfying(
    world: World, meta: dict, draw: Callable[[random.Random], str], rng: random.Random, tries: int = 40
) -> str:
    """Draw candidate answers until one meets every constraint (else the last one)."""
    text = ""
    for _ in range(tries):
        text = draw(rng)
        if not constraint_violations(world, meta, text):
            return text
    return text
