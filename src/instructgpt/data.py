"""Record types and JSONL formats: prompts, demonstrations, rankings.

Every record remembers ``source`` ("file:line") so that any later error
(an over-long prompt at tokenisation, say) can name the record it is about.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

USE_CASES = (
    "generation", "open_qa", "brainstorming", "chat", "rewrite",
    "summarization", "classification", "extract", "closed_qa", "other",
)

# The paper's metadata flags (plus explicit-constraint violations, which its
# evaluation also reports).
FLAGS = (
    "fails_to_follow", "violates_constraint", "hallucination",
    "inappropriate_for_customer_assistant", "sexual", "violent",
    "encourages_harm", "denigrates_protected_class", "harmful_advice",
    "moral_judgement",
)

SPLITS = ("train", "valid", "test")


class DataError(ValueError):
    """A malformed record: the message reads ``file:line: field: what is wrong``."""


@dataclass
class Prompt:
    id: str
    text: str
    user_id: str
    use_case: str = "other"
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # extra fields, kept verbatim
    source: str = ""


@dataclass
class Demonstration:
    prompt: str
    response: str
    labeler_id: str | None = None
    prompt_id: str | None = None
    source: str = ""


@dataclass
class Ranking:
    prompt: str
    responses: list[str]
    ranking: list[list[int]]            # ordered groups of response indices, best first; a group = a tie
    likert: list[int] | None = None     # one 1-7 score per response
    flags: list[list[str]] | None = None  # per response, names from FLAGS
    labeler_id: str | None = None
    prompt_id: str | None = None
    comment: str | None = None
    source: str = ""

    @property
    def k(self) -> int:
        return len(self.responses)

    def pairs(self) -> list[tuple[int, int]]:
        """All (winner, loser) index pairs implied by the ranking; ties give none."""
        out = []
        for gi, group in enumerate(self.ranking):
            for lower in self.ranking[gi + 1:]:
                out.extend((w, l) for w in group for l in lower)
        return out
