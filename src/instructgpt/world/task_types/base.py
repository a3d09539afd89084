"""What every task type shares: the registry, the task-specific grade and the checker's verdict.

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

from .. import facts as F
from ..kb import World


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


#: Every task type by name, in registration order (within a use case, the order
#: of ``make_prompt``'s weighted draw: reordering changes every generated prompt).
TASKS: dict[str, TaskType] = {}


def task(name: str, use_case: str, weight: float = 1.0, answers_question: bool = True):
    """Class decorator registering a task type (see the module docstring)."""

    def wrap(cls):
        TASKS[name] = TaskType(name, use_case, weight, cls.make, cls.solve, cls.grade, answers_question)
        return cls

    return wrap


def fact_grade(world: World, response: str, topic: str | None) -> tuple[list[F.Claim], bool, bool]:
    """(claims, any false claim?, any popular falsehood?) for an open-domain text."""
    cl = F.extract_claims(world, response, topic)
    return cl, bool(F.false_claims(world, cl)), bool(F.falsehood_claims(world, cl))
