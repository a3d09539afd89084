"""Closed-domain tasks: rewrite, summarization, extract, closed QA.

The source passage is part of the prompt and is kept in ``meta["passage"]``.
A response hallucinates when it states a fact, a name or a value that the
source does not contain, even a true one (the paper's closed-domain
hallucination).
"""

from __future__ import annotations

import difflib
import random
import re

from . import claims as C
from . import phrases as P
from .kb import KIND_PLURALS, VOCAB, World, make_name
from .taskbase import Grade, task
from .tasks_open import (
    add_constraints,
    answer_text,
    format_constraint,
    format_list,
    grade_answer,
    with_constraints,
)

_CHECKED_VALUES = tuple(VOCAB) + ("age",)


def unsupported(
    world: World, source: str, response: str, topic: str | None = None, extra_names: tuple[str, ...] = ()
) -> list[str]:
    """What ``response`` states that ``source`` does not: claims, names, values."""
    body = " ".join(C.sentences(response))  # list markers are not numbers
    src_claims = set(C.extract_claims(world, source))
    out = [
        f"claim {c.entity}.{c.attr}={c.value}"
        for c in C.extract_claims(world, body, topic)
        if c not in src_claims
    ]
    src_names = set(C.mentioned_names(world, source)) | set(extra_names)
    out += [f"name {n}" for n in C.mentioned_names(world, body) if n not in src_names]
    for attr in _CHECKED_VALUES:
        src_vals = set(C.value_mentions(source, attr))
        out += [f"value {v}" for v in set(C.value_mentions(body, attr)) - src_vals]
    return sorted(set(out))


def pick_source(
    world: World,
    rng: random.Random,
    n_ents: int = 1,
    n_facts: int = 3,
    kinds=("creature", "person", "food", "tool"),
):
    """(entities, passage text, stated facts) for a closed-domain prompt."""
    ents = []
    while len(ents) < n_ents:
        e = rng.choice(world.of_kind(rng.choice(kinds)))
        if e not in ents:
            ents.append(e)
    text, facts = P.source_text(world, ents, rng, n_facts)
    return ents, text, facts


# ----- closed QA ----------------------------------------------------------------

NOT_SAID = (
    "the text does not say",
    "the text doesn't say",
    "the text does not mention",
    "not in the text",
    "the text does not tell",
)


@task("closed_qa", "closed_qa", 1.0)
class ClosedQA:
    """Answer a question from a passage; sometimes the passage does not say."""

    @staticmethod
    def make(world: World, rng: random.Random):
        ents, src, facts = pick_source(world, rng, rng.choice((1, 1, 2)), 3)
        stated = [(n, a) for n, a in facts if (world.get(n).kind, a) in P.QUESTIONS]
        unstated = [(e.name, a) for e in ents for a in P.questionable_attrs(e) if (e.name, a) not in facts]
        answerable = not unstated or (stated and rng.random() < 0.8)
        name, attr = rng.choice(stated if answerable else unstated)
        q = P.question(world.get(name), attr, rng)
        text = rng.choice(
            (
                "Answer the question using only the text below.\nText: {s}\nQuestion: {q}",
                "Read the text and answer the question.\n{s}\nQ: {q}",
                "{s}\nBased on the text above, {ql}",
            )
        ).format(s=src, q=q, ql=q[0].lower() + q[1:])
        meta = {"passage": src, "topic": name, "attr": attr, "answerable": answerable}
        if answerable:
            meta["answer"] = str(world.fact(name, attr))
        return text, meta

    @staticmethod
    def solve(world: World, meta: dict, rng: random.Random) -> str:
        if meta["answerable"]:
            return answer_text(world, meta, rng)
        return rng.choice(
            (
                "The text does not say.",
                "The text does not mention it.",
                "The text does not tell us.",
                "Sorry, the text does not say.",
            )
        )

    @staticmethod
    def grade(world: World, meta: dict, response: str) -> Grade:
        extra = unsupported(world, meta["passage"], response, meta["topic"])
        if meta["answerable"]:
            g = grade_answer(world, meta, response)
            g.hallucinated = g.hallucinated or bool(extra)
            g.notes += extra
            return g
        says_not = any(p in response.lower() for p in NOT_SAID)
        return Grade(
            1.0 if says_not and not extra else (0.3 if says_not else 0.0),
            says_not,
            bool(extra),
            False,
            extra or ([] if says_not else ["should say the text does not say"]),
        )


# ----- summarization ------------------------------------------------------------


@task("summarize", "summarization", 1.0)
class Summarize:
    """Summarize a passage about one entity, shorter than the passage."""

    @staticmethod
    def make(world: World, rng: random.Random):
        ents, src, facts = pick_source(
            world, rng, 1, rng.choice((3, 4)), kinds=("creature", "person", "food")
        )
        n = rng.choice((1, 1, 2))
        meta = {"passage": src, "topic": ents[0].name, "facts": [list(f) for f in facts], "constraints": []}
        form = rng.random()
        if form < 0.7:
            meta["constraints"].append({"type": "n_sentences", "n": n, "mode": "max", "implicit": True})
            lead = (
                "Summarize this text in one sentence."
                if n == 1
                else "Summarize this text in at most two sentences."
            )
            text = rng.choice((f"{lead}\n{src}", f"{src}\n{lead}"))
        else:
            text = rng.choice((f"{src}\nTL;DR:", f"Give a short summary of this text.\n{src}"))
        return text, meta

    @staticmethod
    def solve(world: World, meta: dict, rng: random.Random) -> str:
        ent = world.get(meta["topic"])
        attrs = [a for _, a in meta["facts"]]
        n_sent = next((c["n"] for c in meta["constraints"] if c["type"] == "n_sentences"), 1)
        limit = C.word_count(meta["passage"])
        for _ in range(30):
            rng.shuffle(attrs)
            k = min(len(attrs), rng.choice((2, 2, 3)) if len(attrs) > 3 else 2)
            if n_sent >= 2 and k >= 3 and rng.random() < 0.5:
                text = (
                    P.combined_sentence(ent, attrs[:2], rng)
                    + " "
                    + P.fact_sentence(ent, attrs[2], rng, subject=P.pronoun(ent))
                )
            else:
                text = P.combined_sentence(ent, attrs[:k], rng)
            if C.word_count(text) < limit:
                return text
        return P.fact_sentence(ent, attrs[0], rng)

    @staticmethod
    def grade(world: World, meta: dict, response: str) -> Grade:
        topic, src = meta["topic"], meta["passage"]
        extra = unsupported(world, src, response, topic)
        src_claims = set(C.extract_claims(world, src))
        covered = {c for c in C.extract_claims(world, response, topic) if c in src_claims}
        shorter = C.word_count(response) < C.word_count(src)
        names = C.mentioned_names(world, response)
        content = min(1.0, len(covered) / 2) * (1.0 if shorter else 0.4) * (1.0 if topic in names else 0.6)
        notes = (
            extra
            + ([] if shorter else ["not shorter than the text"])
            + ([] if covered else ["covers nothing"])
        )
        return Grade(content, bool(covered) and shorter and topic in names, bool(extra), False, notes)


# ----- extract ------------------------------------------------------------------


@task("extract_kind", "extract", 1.0)
class ExtractKind:
    """List the names of one kind that a passage mentions."""

    @staticmethod
    def make(world: World, rng: random.Random):
        _, src, _ = pick_source(world, rng, 2, rng.choice((2, 3)))
        present = C.mentioned_names(world, src)
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
        return format_list(list(meta["expected"]), format_constraint(meta), rng)

    @staticmethod
    def grade(world: World, meta: dict, response: str) -> Grade:
        expected, src_names = set(meta["expected"]), set(C.mentioned_names(world, meta["passage"]))
        found = set(C.mentioned_names(world, response))
        right, wrong_kind, new = found & expected, found & (src_names - expected), found - src_names
        content = max(0.0, len(right) / len(expected) - 0.25 * len(wrong_kind) - 0.5 * len(new))
        extra = [x for x in unsupported(world, meta["passage"], response) if not x.startswith("name ")]
        notes = [f"wrong kind: {n}" for n in sorted(wrong_kind)] + [f"not in text: {n}" for n in sorted(new)]
        notes += [f"missing: {n}" for n in sorted(expected - found)] + extra
        return Grade(content, right == expected and not wrong_kind, bool(new or extra), False, notes)


# ----- rewrite --------------------------------------------------------------------


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
        return format_list(items, format_constraint(meta), rng)

    @staticmethod
    def grade(world: World, meta: dict, response: str) -> Grade:
        src = meta["passage"]
        extra = unsupported(world, src, response)
        src_claims = set(C.extract_claims(world, src))
        covered = {c for c in C.extract_claims(world, response) if c in src_claims}
        items, fmt = C.list_items(response)
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
        target = [w.lower() for w in C.words(RewriteReplace.expected(meta))]
        got = [w.lower() for w in C.words(response)]
        ratio = difflib.SequenceMatcher(None, target, got).ratio()
        has_new, has_old = C.has_word(response, meta["new"]), C.has_word(response, meta["old"])
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
        keeps = any(C.has_word(response, k) for k in keys)
        polite = any(m in response.lower() for m in _POLITE_MARKERS)
        clean = not C.contains_insult(response)
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
