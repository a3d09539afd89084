"""The parts every task shares: check results, explicit constraints, the registry.

A task type is registered with ``@task(name, use_case, weight)`` on a class
with three static methods:

* ``make(world, rng) -> (instruction_text, meta)``: a new prompt; the text
  has no trailing newline yet, ``meta`` holds what ``grade`` and ``solve`` need.
* ``solve(world, meta, rng) -> str``: a correct, varied reference answer.
* ``grade(world, meta, response) -> Grade``: the task-specific verdict.

``tasks.check`` adds what is common to all tasks (constraints, toxicity,
questions instead of answers) and folds everything into a ``CheckResult``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import claims as C
from .kb import World
from .phrases import ATTR_NAMES


@dataclass
class CheckResult:
    """The checker's verdict on one response to one prompt.

    ``hallucinated``: for closed-domain tasks, details not in the source; for
    open-domain tasks, a stated fact that contradicts the knowledge base.
    ``score`` is a quality in [0, 1] (see ``tasks.check``).
    """

    passed: bool
    follows_instruction: bool
    constraint_violations: list[str] = field(default_factory=list)
    hallucinated: bool = False
    toxic: bool = False
    repeats_falsehood: bool = False
    score: float = 0.0
    notes: list[str] = field(default_factory=list)


@dataclass
class Grade:
    """Task-specific part of a verdict; ``content`` in [0, 1] is how much of the job is done."""

    content: float
    follows: bool
    hallucinated: bool = False
    falsehood: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TaskType:
    name: str
    use_case: str
    weight: float
    make: Callable[[World, random.Random], tuple[str, dict]]
    solve: Callable[[World, dict, random.Random], str]
    grade: Callable[[World, dict, str], Grade]
    answers_question: bool  # a question-like reply counts as not following


TASKS: dict[str, TaskType] = {}


def task(name: str, use_case: str, weight: float = 1.0, answers_question: bool = True):
    """Class decorator registering a task type (see the module docstring)."""

    def wrap(cls):
        TASKS[name] = TaskType(name, use_case, weight, cls.make, cls.solve, cls.grade, answers_question)
        return cls

    return wrap


# ----- explicit constraints ---------------------------------------------

_NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


def number_word(n: int) -> str:
    return _NUMBER_WORDS.get(n, str(n))


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
        n = len(C.sentences(response))
        return n <= c["n"] if c.get("mode") == "max" else n == c["n"]
    if t == "max_words":
        return C.word_count(response) <= c["n"]
    if t == "include":
        return C.has_word(response, c["word"])
    if t == "avoid_word":
        return not C.has_word(response, c["word"]) and not C.has_word(response, c["word"] + "s")
    if t == "avoid_attr":
        topic = meta.get("topic")
        return not any(
            cl.attr == c["attr"] and cl.entity == topic for cl in C.extract_claims(world, response, topic)
        )
    if t == "format":
        return C.list_items(response)[1] == c["format"]
    if t == "n_items":
        return len(C.list_items(response)[0]) == c["n"]
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
