"""Brainstorming: name a few entities of a kind, or a few that share a property.

An answer is a list; each item should name one distinct fitting entity.
"""

from __future__ import annotations

import random

from .. import facts as F
from .. import phrases as P
from ..kb import KIND_PLURALS, KINDS, World
from .base import Grade, task
from .constraints import (
    add_constraints,
    format_constraint,
    number_word,
    with_constraints,
)


def grade_items(world: World, meta: dict, response: str, good_names: set[str]) -> Grade:
    """A list answer: each item should name one distinct entity from ``good_names``."""
    items, _ = F.list_items(response)
    good, notes, halluc = set(), [], False
    for item in items:
        names = F.mentioned_names(world, item)
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
        return P.format_list(names, format_constraint(meta), rng)

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
        return P.format_list(
            rng.sample(ListFilter.matching(world, meta), meta["n"]), format_constraint(meta), rng
        )

    @staticmethod
    def grade(world: World, meta: dict, response: str) -> Grade:
        return grade_items(world, meta, response, set(ListFilter.matching(world, meta)))
