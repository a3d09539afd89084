"""Extract: list the names of one kind that a passage mentions.

Closed domain (``passages.py``): a name that is not in the passage is a
hallucination.
"""

from __future__ import annotations

import random

from .. import facts as F
from .. import phrases as P
from ..kb import KIND_PLURALS, World
from .base import Grade, task
from .constraints import add_constraints, format_constraint, with_constraints
from .passages import pick_source, unsupported


@task("extract_kind", "extract", 1.0)
class ExtractKind:
    """List the names of one kind that a passage mentions."""

    @staticmethod
    def make(world: World, rng: random.Random):
        _, src, _ = pick_source(world, rng, 2, rng.choice((2, 3)))
        present = F.mentioned_names(world, src)
        kind = rng.choice(sorted({world.get(n).kind for n in present}))
        expected = [n for n in present if world.get(n).kind == kind]
        what = "names of the people" if kind == "person" else KIND_PLURALS[kind]
        meta = {"passage": src, "kind": kind, "expected": expected, "constraints": []}
        if len(expected) > 1:
            add_constraints(
                meta,
                [{"type": "format", "format": rng.choice(("numbered", "bullets", "comma"))}],
                rng,
                0.3,
                0.0,
            )
        lead = rng.choice(
            (
                "Extract all the {w} mentioned in this text.",
                "List the {w} that the text mentions.",
                "Which {w} appear in this text?",
            )
        ).format(w=what)
        lead = with_constraints(lead, meta, rng)
        text = f"{lead}\n{src}" if rng.random() < 0.7 else f"Text: {src}\n{lead}"
        return text, meta

    @staticmethod
    def solve(world: World, meta: dict, rng: random.Random) -> str:
        return P.format_list(list(meta["expected"]), format_constraint(meta), rng)

    @staticmethod
    def grade(world: World, meta: dict, response: str) -> Grade:
        expected, src_names = set(meta["expected"]), set(F.mentioned_names(world, meta["passage"]))
        found = set(F.mentioned_names(world, response))
        right, wrong_kind, new = found & expected, found & (src_names - expected), found - src_names
        content = max(0.0, len(right) / len(expected) - 0.25 * len(wrong_kind) - 0.5 * len(new))
        extra = [x for x in unsupported(world, meta["passage"], response) if not x.startswith("name ")]
        notes = [f"wrong kind: {n}" for n in sorted(wrong_kind)] + [f"not in text: {n}" for n in sorted(new)]
        notes += [f"missing: {n}" for n in sorted(expected - found)] + extra
        return Grade(content, right == expected and not wrong_kind, bool(new or extra), False, notes)
