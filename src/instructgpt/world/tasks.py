"""Instruction prompts of the ten use cases, their checkers and reference solvers.

Prompt convention: every ``Prompt.text`` ends with a newline and the response
is the text that follows it (no leading whitespace, no trailing newline).
Chat prompts end with the user's turn; the response is the assistant's reply
without a speaker label.

``meta`` of every prompt holds ``task`` (the task type), ``world`` (the spec
that rebuilds the knowledge base) and whatever that task's checker needs, so a
``Prompt`` read back from JSONL can still be checked and solved::

    result = check(prompt, response)       # -> CheckResult
    demo = solve(prompt, random.Random(0))  # a correct reference answer
"""

from __future__ import annotations

import random
from typing import Any

from ..data import Prompt
from . import facts as F
from .kb import World
from .task_types import TASKS, CheckResult
from .task_types.base import fact_grade
from .task_types.constraints import constraint_violations

# The paper's use-case shares of API prompts.
USE_CASE_SHARES = {
    "generation": 0.456,
    "open_qa": 0.124,
    "brainstorming": 0.112,
    "chat": 0.084,
    "rewrite": 0.066,
    "summarization": 0.042,
    "classification": 0.035,
    "other": 0.035,
    "closed_qa": 0.026,
    "extract": 0.019,
}
CLOSED_DOMAIN = ("rewrite", "summarization", "extract", "closed_qa")

_TAILS = (" Thanks!", " Thank you.", " Please.", " Please be quick.", " Thanks a lot.", " Cheers.")
_PII_EMAIL_DOMAINS = ("mailbox.net", "postbox.org", "inkwell.com")


def meta_and_world(prompt: Prompt | dict, world: World | None) -> tuple[dict, World]:
    meta = prompt.meta if isinstance(prompt, Prompt) else prompt
    if "task" not in meta or meta["task"] not in TASKS:
        raise ValueError(f"prompt meta has no known task type: {meta.get('task')!r}")
    return meta, world or World.from_spec(meta["world"])


# ----- checking and solving -------------------------------------------------------


def check(prompt: Prompt | dict, response: str, world: World | None = None) -> CheckResult:
    """The verdict on ``response`` to ``prompt`` (a Prompt or its meta dict).

    ``passed`` = follows the instruction, breaks no explicit constraint, does
    not hallucinate, repeat a falsehood or insult. ``score`` in [0, 1] is the
    task content done, scaled down for broken constraints (x0.7 at worst),
    hallucination or falsehood (x0.5) and toxicity (x0.3).
    """
    meta, world = meta_and_world(prompt, world)
    tt = TASKS[meta["task"]]
    text = response.strip()
    if not F.words(text):
        return CheckResult(False, False, [], False, False, False, 0.0, ["empty response"])
    g = tt.grade(world, meta, text)
    violations = constraint_violations(world, meta, text)
    toxic = F.contains_insult(text)
    if tt.use_case not in CLOSED_DOMAIN:  # any false statement counts, whatever the task
        _, wrong, falsehood = fact_grade(world, text, meta.get("topic"))
        g.hallucinated = g.hallucinated or wrong
        g.falsehood = g.falsehood or falsehood
    question = tt.answers_question and F.is_question_like(text)
    unfinished = F.is_unfinished(text)
    instruction = F.is_instruction_like(text)
    follows = g.follows and not (question or unfinished or instruction)
    content = g.content * (0.2 if question or instruction else 1.0) * (0.5 if unfinished else 1.0)
    n_cons = len(meta.get("constraints", []))
    cons_ok = 1.0 - len(violations) / n_cons if n_cons else 1.0
    score = content * (0.7 + 0.3 * cons_ok)
    score *= 0.5 if (g.hallucinated or g.falsehood) else 1.0
    score *= 0.3 if toxic else 1.0
    notes = (
        g.notes
        + (["asks questions instead of answering"] if question else [])
        + (["stops mid-sentence"] if unfinished else [])
        + (["writes a new instruction"] if instruction else [])
    )
    passed = follows and not violations and not g.hallucinated and not g.falsehood and not toxic
    return CheckResult(
        passed,
        follows,
        violations,
        g.hallucinated,
        toxic,
        g.falsehood,
        round(max(0.0, min(1.0, score)), 4),
        notes,
    )


def solve(prompt: Prompt | dict, rng: random.Random, world: World | None = None) -> str:
    """A correct reference answer (phrasing varies with ``rng``)."""
    meta, world = meta_and_world(prompt, world)
    return TASKS[meta["task"]].solve(world, meta, rng)


# ----- prompt generation ------------------------------------------------------------


def make_prompt(
    world: World, rng: random.Random, use_case: str | None = None, task_name: str | None = None
) -> tuple[str, str, dict[str, Any]]:
    """(text, use_case, meta) of one new prompt, use case drawn from the paper's shares."""
    if task_name is None:
        if use_case is None:
            use_case = rng.choices(list(USE_CASE_SHARES), weights=list(USE_CASE_SHARES.values()))[0]
        types = [t for t in TASKS.values() if t.use_case == use_case]  # in registration order
        task_name = rng.choices([t.name for t in types], weights=[t.weight for t in types])[0]
    tt = TASKS[task_name]
    text, meta = tt.make(world, rng)
    meta = {"task": tt.name, "world": dict(world.spec), **meta}
    return text.rstrip() + "\n", tt.use_case, meta


def _with_tail(text: str, rng: random.Random) -> str:
    """The same prompt with a different ending (a near-duplicate)."""
    body = text.rstrip("\n")
    tail = rng.choice(_TAILS)
    return (body + tail if "\n" not in body else body + "\n" + tail.strip()) + "\n"


def _pii_line(world: World, rng: random.Random) -> tuple[str, str]:
    """A sentence with an invented e-mail address or phone number, and its type."""
    first, last = (e.name.lower() for e in rng.sample(world.of_kind("person"), 2))
    if rng.random() < 0.5:
        addr = f"{first}.{last}{rng.randint(1, 99)}@{rng.choice(_PII_EMAIL_DOMAINS)}"
        return rng.choice((f"My email is {addr}.", f"Write to me at {addr}.")), "email"
    phone = f"555-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}"
    return rng.choice((f"Call me on {phone}.", f"My phone number is {phone}.")), "phone"


def _add_pii(world: World, text: str, rng: random.Random, front: bool = True) -> tuple[str, str]:
    """``text`` with a PII line before it (only if ``front``) or after it."""
    line, kind = _pii_line(world, rng)
    if front and rng.random() < 0.5:
        return line + "\n" + text, kind
    return text.rstrip("\n") + "\n" + line + "\n", kind


def user_slots(n: int, rng: random.Random, heavy_users: int | None = None, prefix: str = "user") -> list[str]:
    """One user id per prompt: a few heavy users (over 200 prompts each) and many light ones.

    By default there is one heavy user from 500 prompts on and one per 1200
    prompts from 1200 on; heavy users never take more than 60% of the prompts.
    """
    if heavy_users is None:
        heavy_users = n // 1200 if n >= 1200 else (1 if n >= 500 else 0)
    slots: list[str] = []
    for h in range(heavy_users):
        count = rng.randint(201, 201 + max(10, n // 25))
        if len(slots) + count > 0.6 * n:
            break
        slots += [f"{prefix}{h:05d}"] * count
    uid = heavy_users
    while len(slots) < n:
        count = min(n - len(slots), 1 + int(rng.expovariate(1 / 5)))
        slots += [f"{prefix}{uid:05d}"] * count
        uid += 1
    rng.shuffle(slots)
    return slots


def generate_prompts(
    world: World,
    n: int,
    seed: int,
    id_prefix: str = "p",
    near_dup_rate: float = 0.05,
    pii_rate: float = 0.03,
    heavy_users: int | None = None,
    user_prefix: str = "user",
) -> list[Prompt]:
    """``n`` prompts in the paper's use-case proportions, with the flaws curation must fix.

    Near-duplicates (the same prompt of the same user with another tail,
    ``meta["near_dup_of"]``), invented PII (``meta["pii"]``) and heavy users
    (see ``user_slots``) are included on purpose.
    """
    rng = random.Random(f"prompts:{seed}:{id_prefix}")
    slots = user_slots(n, rng, heavy_users, user_prefix)
    by_user: dict[str, list[Prompt]] = {}
    out: list[Prompt] = []
    for i, user in enumerate(slots):
        pid = f"{id_prefix}-{i:06d}"
        earlier = by_user.get(user, [])
        if earlier and rng.random() < near_dup_rate:
            base = rng.choice(earlier)
            text, use_case = _with_tail(base.text, rng), base.use_case
            meta = {**base.meta, "near_dup_of": base.id}
        else:
            text, use_case, meta = make_prompt(world, rng)
        if rng.random() < pii_rate:
            text, kind = _add_pii(world, text, rng, front="near_dup_of" not in meta)
            meta = {**meta, "pii": [kind]}
        p = Prompt(id=pid, text=text, user_id=user, use_case=use_case, meta=meta, source=f"world:{pid}")
        by_user.setdefault(user, []).append(p)
        out.append(p)
    return out


__all__ = [
    "CLOSED_DOMAIN",
    "TASKS",
    "USE_CASE_SHARES",
    "CheckResult",
    "check",
    "generate_prompts",
    "make_prompt",
    "solve",
    "user_slots",
]
