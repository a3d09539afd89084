"""FLAN / T0-style baselines: public-NLP-style instruction data about the world.

Classification, multiple-choice QA, extractive QA, entailment, yes/no QA and
headline templates with terse answers ("yes", "red", "creature"), as in the
public collections the paper fine-tuned GPT-3 on. ``style="flan"`` and
``style="t0"`` differ only in their template wording. Prompts follow the
same convention as ``tasks`` (text ends with a newline).
"""

from __future__ import annotations

import random

from ..data import Demonstration
from . import phrases as P
from .kb import VOCAB, World

_WORDINGS = {
    "mc_qa": {
        "flan": "Question: {q}\nOptions: {opts}\nAnswer:",
        "t0": "Pick the correct answer to the question.\n{q}\nChoices: {opts}",
    },
    "entail": {
        "flan": "Premise: {a}\nHypothesis: {b}\nDoes the premise entail the hypothesis? Yes or no?",
        "t0": 'Given that "{a}" Is it true that "{b}"? yes or no',
    },
    "sentiment": {
        "flan": "Review: {r}\nIs this review positive or negative?",
        "t0": "{r}\nDid the writer like the product? positive or negative",
    },
    "category": {
        "flan": "Word: {w}\nCategory (creature, town, person, food, tool):",
        "t0": 'What type of thing is "{w}"? creature, town, person, food or tool',
    },
    "squad": {
        "flan": "Context: {c}\nQuestion: {q}\nAnswer:",
        "t0": "Read the passage and answer with a word.\n{c}\n{q}",
    },
    "boolq": {
        "flan": "{c}\nQuestion: {q}\nAnswer yes or no:",
        "t0": "Passage: {c}\nAfter reading the passage, {q} yes or no",
    },
    "headline": {"flan": "Article: {c}\nTitle:", "t0": "Give a title to this text.\n{c}"},
    "rude": {
        "flan": "Message: {m}\nIs the message rude? yes or no",
        "t0": "Is the following text rude? {m} yes or no",
    },
}


def _fact(world: World, rng: random.Random):
    ent = rng.choice([e for e in world.entities.values() if any(a in VOCAB for a in e.attrs)])
    attr = rng.choice(
        [a for a in ent.attrs if a in VOCAB and a != "group"] or [a for a in ent.attrs if a in VOCAB]
    )
    return ent, attr


def _mc_qa(world, rng, style):
    ent, attr = _fact(world, rng)
    if (ent.kind, attr) not in P.QUESTIONS:
        return _category(world, rng, style)
    true = str(ent.attrs[attr])
    opts = [true] + rng.sample([v for v in VOCAB[attr] if v != true], 2)
    rng.shuffle(opts)
    return _WORDINGS["mc_qa"][style].format(q=P.question(ent, attr, rng), opts=", ".join(opts)), true


def _entail(world, rng, style):
    ent, attr = _fact(world, rng)
    a = P.fact_sentence(ent, attr, rng)
    same = rng.random() < 0.5
    value = None if same else rng.choice([v for v in VOCAB[attr] if v != ent.attrs[attr]])
    b = P.fact_sentence(ent, attr, rng, value=value)
    return _WORDINGS["entail"][style].format(a=a, b=b), "yes" if same else "no"


def _sentiment(world, rng, style):
    pos = rng.random() < 0.5
    return _WORDINGS["sentiment"][style].format(
        r=P.review_text(world, rng, pos)
    ), "positive" if pos else "negative"


def _category(world, rng, style):
    ent = rng.choice(list(world.entities.values()))
    return _WORDINGS["category"][style].format(w=ent.name), ent.kind


def _squad(world, rng, style):
    ent = rng.choice([e for e in world.entities.values() if P.questionable_attrs(e)])
    text, facts = P.source_text(world, [ent], rng, 3)
    asked = [a for n, a in facts if (ent.kind, a) in P.QUESTIONS]
    if not asked:
        return _category(world, rng, style)
    attr = rng.choice(asked)
    return _WORDINGS["squad"][style].format(c=text, q=P.question(ent, attr, rng)), str(ent.attrs[attr])


def _boolq(world, rng, style):
    ent, attr = _fact(world, rng)
    text, _ = P.source_text(world, [ent], rng, 2)
    truth = rng.random() < 0.5
    value = ent.attrs[attr] if truth else rng.choice([v for v in VOCAB[attr] if v != ent.attrs[attr]])
    q = f"is it true that {ent.subject} {P.verb_phrase(ent, attr, rng, value=value)}?"
    answer = "yes" if truth else "no"
    return _WORDINGS["boolq"][style].format(c=text + " " + P.fact_sentence(ent, attr, rng), q=q), answer


def _headline(world, rng, style):
    ent = rng.choice([e for e in world.entities.values() if e.kind != "town"])
    text, _ = P.source_text(world, [ent], rng, 2)
    return _WORDINGS["headline"][style].format(c=text), P.cap(ent.subject)


def _rude(world, rng, style):
    rude = rng.random() < 0.5
    msg = P.rude_message(world, rng) if rude else P.polite_message(rng)
    return _WORDINGS["rude"][style].format(m=msg), "yes" if rude else "no"


TEMPLATES = {
    "mc_qa": _mc_qa,
    "entail": _entail,
    "sentiment": _sentiment,
    "category": _category,
    "squad": _squad,
    "boolq": _boolq,
    "headline": _headline,
    "rude": _rude,
}


def build_flan(world: World, n: int, seed: int, style: str = "flan") -> list[Demonstration]:
    """``n`` terse public-NLP-style demonstrations (``style``: "flan" or "t0")."""
    if style not in ("flan", "t0"):
        raise ValueError(f"style must be 'flan' or 't0', got {style!r}")
    rng = random.Random(f"{style}:{seed}")
    out = []
    names = list(TEMPLATES)
    for i in range(n):
        prompt, answer = TEMPLATES[rng.choice(names)](world, rng, style)
        pid = f"{style}-{i:06d}"
        out.append(
            Demonstration(
                prompt=prompt.rstrip() + "\n",
                response=answer,
                labeler_id=style,
                prompt_id=pid,
                source=f"world:{pid}",
            )
        )
    return out


__all__ = ["TEMPLATES", "build_flan"]
