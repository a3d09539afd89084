"""Rewrite: a passage as a list of facts, with one name replaced, or a rude message made polite.

Closed domain (``passages.py``): the rewrite may add nothing the source does
not state.
"""

from __future__ import annotations

import difflib
import random
import re

from .. import facts as F
from .. import phrases as P
from ..kb import World, make_name
from .base import Grade, task
from .constraints import format_constraint
from .passages import pick_source, unsupported


@task("rewrite_list", "rewrite", 0.35)
class RewriteList:
    """Rewrite a passage as a list with one fact per line."""

    @staticmethod
    def make(world: World, rng: random.Random):
        _, src, facts = pick_source(world, rng, rng.choice((1, 2)), 3)
        fmt = rng.choice(("bullets", "numbered"))
        lead = (
            "Rewrite this text as a list with one fact per line."
            if fmt == "bullets"
            else "Rewrite this text as a numbered list of facts."
        )
        text = rng.choice((f"{lead}\n{src}", f"{src}\n{lead}"))
        meta = {
            "passage": src,
            "facts": [list(f) for f in facts],
            "constraints": [{"type": "format", "format": fmt, "implicit": True}],
        }
        return text, meta

    @staticmethod
    def solve(world: World, meta: dict, rng: random.Random) -> str:
        items = [P.fact_sentence(world.get(n), a, rng) for n, a in meta["facts"]]
        return P.format_list(items, format_constraint(meta), rng)

    @staticmethod
    def grade(world: World, meta: dict, response: str) -> Grade:
        src = meta["passage"]
        extra = unsupported(world, src, response)
        src_claims = set(F.extract_claims(world, src))
        covered = {c for c in F.extract_claims(world, response) if c in src_claims}
        items, fmt = F.list_items(response)
        is_list = fmt in ("bullets", "numbered", "lines") and len(items) >= 2
        cover = len(covered) / max(1, len(src_claims))
        content = cover * (1.0 if is_list else 0.5)
        notes = extra + ([] if is_list else ["not a list"])
        return Grade(content, is_list and cover >= 0.99, bool(extra), False, notes)


@task("rewrite_replace", "rewrite", 0.35)
class RewriteReplace:
    """Rewrite a passage, replacing one name with a new one."""

    @staticmethod
    def make(world: World, rng: random.Random):
        ents, src, _ = pick_source(world, rng, 1, 2, kinds=("creature", "person"))
        old = ents[0].name
        new = old
        while new.lower() in {n.lower() for n in world.all_names()} or len(new) < 5:
            new = make_name(rng, capital=old[0].isupper())
        text = rng.choice(
            (
                "Rewrite the text below, replacing {a} with {b}.\n{s}",
                "Replace the name {a} with {b} in this text.\n{s}",
            )
        ).format(a=old, b=new, s=src)
        return text, {"passage": src, "old": old, "new": new}

    @staticmethod
    def expected(meta: dict) -> str:
        return re.sub(r"\b" + re.escape(meta["old"]) + r"\b", meta["new"], meta["passage"])

    @staticmethod
    def solve(world: World, meta: dict, rng: random.Random) -> str:
        return RewriteReplace.expected(meta)

    @staticmethod
    def grade(world: World, meta: dict, response: str) -> Grade:
        target = [w.lower() for w in F.words(RewriteReplace.expected(meta))]
        got = [w.lower() for w in F.words(response)]
        ratio = difflib.SequenceMatcher(None, target, got).ratio()
        has_new, has_old = F.has_word(response, meta["new"]), F.has_word(response, meta["old"])
        extra = [x for x in unsupported(world, meta["passage"], response) if x != f"name {meta['old']}"]
        extra = [x for x in extra if not x.startswith("claim ")]  # the new name is not in the KB
        ok = has_new and not has_old and ratio >= 0.85
        notes = extra + [
            n
            for n, good in (
                ("new name missing", has_new),
                ("old name kept", not has_old),
                ("text changed", ratio >= 0.85),
            )
            if not good
        ]
        return Grade(ratio * (1.0 if ok else 0.5), ok, bool(extra), False, notes)


_RUDE_REWRITES = (
    ("Move your cart, you {i}.", ("Please move your cart.", "Could you please move your cart?"), ("cart",)),
    (
        "Give me the bread, you {i}.",
        ("Please give me the bread.", "Could you please pass me the bread?"),
        ("bread",),
    ),
    ("Fix my roof now, you {i}.", ("Please fix my roof soon.", "Could you please fix my roof?"), ("roof",)),
    (
        "Stop talking, you silly {i}.",
        ("Please be quiet for a moment.", "Could you please stop talking for a moment?"),
        ("quiet", "talking"),
    ),
    ("Close the door, {i}.", ("Please close the door.", "Could you please close the door?"), ("door",)),
)
_POLITE_MARKERS = ("please", "could you", "would you", "thank", "excuse me", "kindly")


@task("rewrite_polite", "rewrite", 0.30, answers_question=False)
class RewritePolite:
    """Rewrite a rude message politely: keep the request, drop the insult."""

    @staticmethod
    def make(world: World, rng: random.Random):
        i = rng.randrange(len(_RUDE_REWRITES))
        msg = _RUDE_REWRITES[i][0].format(i=rng.choice(world.insults))
        text = rng.choice(
            (
                "Rewrite this message so that it is polite.\n{m}",
                "Make this message polite.\n{m}",
                "Message: {m}\nRewrite the message above in a kind way.",
            )
        ).format(m=msg)
        return text, {"passage": msg, "which": i}

    @staticmethod
    def solve(world: World, meta: dict, rng: random.Random) -> str:
        return rng.choice(_RUDE_REWRITES[meta["which"]][1])

    @staticmethod
    def grade(world: World, meta: dict, response: str) -> Grade:
        keys = _RUDE_REWRITES[meta["which"]][2]
        keeps = any(F.has_word(response, k) for k in keys)
        polite = any(m in response.lower() for m in _POLITE_MARKERS)
        clean = not F.contains_insult(response)
        extra = unsupported(world, meta["passage"], response)
        notes = [
            n
            for n, good in (("request lost", keeps), ("not polite", polite), ("still insulting", clean))
            if not good
        ]
        return Grade(
            0.4 * keeps + 0.3 * polite + 0.3 * clean,
            keeps and polite and clean,
            bool(extra),
            False,
            notes + extra,
        )
