"""Record types and JSONL formats: prompts, demonstrations, rankings.

Every record remembers ``source`` ("file:line") so that any later error
(an over-long prompt at tokenisation, say) can name the record it is about.
A prompt given as chat messages keeps its turns (``turns``) next to their
plain transcript (``text``/``prompt``), so that a chat template can render
them natively (``chat.ChatFormat``).

Loading is strict: a malformed record raises :class:`DataError` with a message
shaped ``"{path}:{lineno}: {field}: {what is wrong}"``; nothing is skipped.
Blank lines are allowed and ignored. ``docs/data-formats.md`` describes the
formats for users.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

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

# Other spellings of the use cases (after lowercasing and turning spaces and
# dashes into underscores), including the Dolly-15k category names.
USE_CASE_ALIASES = {
    "extraction": "extract",
    "information_extraction": "extract",
    "openqa": "open_qa",
    "general_qa": "open_qa",
    "qa": "open_qa",
    "closedqa": "closed_qa",
    "brainstorm": "brainstorming",
    "summarisation": "summarization",
    "summary": "summarization",
    "summarize": "summarization",
    "summarise": "summarization",
    "rewriting": "rewrite",
    "classify": "classification",
    "creative_writing": "generation",
    "dialogue": "chat",
    "dialog": "chat",
}

ROLES = ("system", "user", "assistant")
MIN_K, MAX_K = 2, 9          # responses per ranking (the paper's K = 4..9, at least a pair)
LIKERT_MIN, LIKERT_MAX = 1, 7


class DataError(ValueError):
    """A malformed record: the message reads ``file:line: field: what is wrong``."""


Turns = list[dict[str, Any]]  # chat messages [{"role", "content"}, ...]


@dataclass
class Prompt:
    id: str
    text: str                                   # the prompt, or the plain transcript of ``turns``
    user_id: str
    use_case: str = "other"
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # extra fields, kept verbatim
    source: str = ""
    turns: Turns | None = None                  # the prompt as chat messages, when given so


@dataclass
class Demonstration:
    prompt: str                                 # the prompt, or the plain transcript of ``turns``
    response: str
    labeler_id: str | None = None
    prompt_id: str | None = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)  # extra fields, kept verbatim
    turns: Turns | None = None                  # the prompt's chat messages (before the reply), when given so


@dataclass
class Ranking:
    prompt: str                                 # the prompt, or the plain transcript of ``turns``
    responses: list[str]                        # "" is an empty response (the model stopped at once)
    ranking: list[list[int]]            # ordered groups of response indices, best first; a group = a tie
    likert: list[int] | None = None     # one 1-7 score per response
    flags: list[list[str]] | None = None  # per response, names from FLAGS
    labeler_id: str | None = None
    prompt_id: str | None = None
    comment: str | None = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)  # extra fields, kept verbatim
    turns: Turns | None = None                  # the prompt's chat messages, when given so

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

    def outcome(self, a: int, b: int) -> float:
        """Response ``a`` against response ``b``: 1.0 ranked above, 0.0 below, 0.5 tied (same group)."""
        group = {j: g for g, members in enumerate(self.ranking) for j in members}
        return 0.5 if group[a] == group[b] else float(group[a] < group[b])


Record = Prompt | Demonstration | Ranking


# --------------------------------------------------------------------------
# Small validation helpers. Each raises DataError("{source}: {field}: ...").
# --------------------------------------------------------------------------

def _fail(source: str, name: str, what: str) -> NoReturn:
    raise DataError(f"{source}: {name}: {what}")


def _jtype(value: Any) -> str:
    """The JSON name of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_object(obj: Any, source: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        _fail(source, "record", f"expected a JSON object, got {_jtype(obj)}")
    return obj


def _text(obj: Mapping[str, Any], key: str, source: str) -> str:
    """A required string that is not empty after stripping (kept verbatim)."""
    value = obj.get(key)
    if value is None:
        _fail(source, key, "missing")
    if not isinstance(value, str):
        _fail(source, key, f"expected a string, got {_jtype(value)}")
    if not value.strip():
        _fail(source, key, "empty")
    return value


def _opt_text(obj: Mapping[str, Any], key: str, source: str) -> str | None:
    """An optional string; null or absent gives None."""
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        _fail(source, key, f"expected a string, got {_jtype(value)}")
    return value


def _opt_id(obj: Mapping[str, Any], key: str, source: str) -> str | None:
    """An optional identifier: a non-empty string or an integer, returned as str."""
    value = obj.get(key)
    if value is None:
        return None
    if _is_int(value):
        return str(value)
    if not isinstance(value, str):
        _fail(source, key, f"expected a string or integer id, got {_jtype(value)}")
    if not value.strip():
        _fail(source, key, "empty")
    return value


def _req_id(obj: Mapping[str, Any], key: str, source: str) -> str:
    value = _opt_id(obj, key, source)
    if value is None:
        _fail(source, key, "missing")
    return value


def _meta(obj: Mapping[str, Any], known: Iterable[str]) -> dict[str, Any]:
    """The keys a format does not define, kept verbatim."""
    known = set(known)
    return {k: v for k, v in obj.items() if k not in known}


def normalize_use_case(value: str) -> str | None:
    """The canonical use case for ``value`` ("Open QA" -> "open_qa"), or None."""
    key = "_".join(value.strip().lower().replace("-", " ").split())
    if key in USE_CASES:
        return key
    return USE_CASE_ALIASES.get(key)


# --------------------------------------------------------------------------
# Chat messages
# --------------------------------------------------------------------------

_ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


def _check_messages(messages: Any, source: str, name: str) -> list[dict[str, Any]]:
    """Validate a list of ``{"role", "content"}`` messages."""
    if not isinstance(messages, list) or not messages:
        _fail(source, name, f"expected a non-empty array of {{role, content}} messages, got {_jtype(messages)}"
              + (" (empty)" if messages == [] else ""))
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            _fail(source, name, f"message {i} is {_jtype(m)}, expected an object with role and content")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            _fail(source, name, f"message {i} has unknown role {role!r} (expected system, user or assistant)")
        if role == "system" and i != 0:
            _fail(source, name, f"message {i}: a system message may only come first")
        if not isinstance(content, str):
            _fail(source, name, f"message {i} ({role}) content must be a string, got {_jtype(content)}")
        if not content.strip():
            _fail(source, name, f"message {i} ({role}) content is empty")
    return messages


def render_messages(messages: list[dict[str, Any]], *, source: str = "<messages>") -> str:
    """A plain transcript of chat messages, ending with the cue for the next reply.

    ``[system, user, assistant, user]`` renders as::

        System: ...

        User: ...

        Assistant: ...

        User: ...

        Assistant:

    The trailing ``Assistant:`` cue is added unless the last message is the
    assistant's. Roles are validated (``system`` may only come first); errors
    name ``source`` (the record's ``file:line`` when called while loading).
    """
    _check_messages(messages, source, "messages")
    parts = [f"{_ROLE_NAMES[m['role']]}: {m['content'].strip()}" for m in messages]
    if messages[-1]["role"] != "assistant":
        parts.append("Assistant:")
    return "\n\n".join(parts)


def _prompt_from_messages(messages: list[dict[str, Any]], source: str, name: str) -> tuple[str, Turns]:
    """(plain transcript, turns) of the prompt turns of a conversation; they must include a user turn."""
    if not messages:
        _fail(source, name, "no turns before the assistant reply, so there is no prompt")
    if not any(m["role"] == "user" for m in messages):
        _fail(source, name, "the prompt turns have no user message")
    turns = [dict(m) for m in messages]
    return render_messages(turns, source=source), turns


def _assistant_reply(value: Any, source: str, name: str) -> tuple[str, list[dict[str, Any]]]:
    """(reply, earlier turns) from a conversation whose last message is the assistant's."""
    messages = _check_messages(value, source, name)
    if messages[-1]["role"] != "assistant":
        _fail(source, name, f"the last message must be the assistant's reply, got role {messages[-1]['role']!r}")
    return messages[-1]["content"], messages[:-1]


# --------------------------------------------------------------------------
# Reading JSONL
# --------------------------------------------------------------------------

def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _decode_line(raw: bytes, source: str) -> Any:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        _fail(source, "json", f"not valid UTF-8 (byte {e.start + 1})")
    try:
        obj = json.loads(line, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
    except json.JSONDecodeError as e:
        _fail(source, "json", f"invalid JSON: {e.msg} (column {e.colno})")
    except ValueError as e:  # from the hooks above
        _fail(source, "json", f"invalid JSON: {e}")
    if _SURROGATE_ESCAPE.search(line):  # only a \uXXXX escape can make one: valid UTF-8 bytes cannot
        field = _lone_surrogate(obj)
        if field is not None:
            _fail(source, field or "json", "a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair): "
                                           "not text any tokenizer or file can hold")
    return obj


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(value: Any, where: str = "") -> str | None:
    """The field (``responses[2]``, ``messages[0].content``; ``""`` for the top level) holding a string with a
    lone surrogate, or None. Escaped pairs (``\\ud83d\\ude00``) decode to one character and pass."""
    if isinstance(value, str):
        return where if _LONE_SURROGATE.search(value) else None
    if isinstance(value, list):
        children = [(f"{where}[{i}]", item) for i, item in enumerate(value)]
    elif isinstance(value, dict):
        if any(_LONE_SURROGATE.search(key) for key in value):
            return f"{where} key".strip()
        children = [(f"{where}.{key}" if where else key, item) for key, item in value.items()]
    else:
        return None
    for inner, item in children:
        found = _lone_surrogate(item, inner)
        if found is not None:
            return found
    return None


def read_jsonl(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(source, object)`` for every non-blank line of a JSONL file.

    ``source`` is ``"{path}:{lineno}"`` (1-based). Invalid JSON, duplicate
    keys, NaN/Infinity and lines that are not JSON objects raise DataError.
    """
    path = str(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found")
    if not os.path.isfile(path):
        raise DataError(f"{path}: not a file")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # UTF-8 byte-order mark
            if not raw.strip():
                continue
            source = f"{path}:{lineno}"
            obj = _decode_line(raw, source)
            yield source, _as_object(obj, source)


# --------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------

PROMPT_KEYS = ("id", "text", "user_id", "use_case", "split", "messages")


def parse_prompt(obj: Any, source: str) -> Prompt:
    """A :class:`Prompt` from one JSON object (``text``, or chat ``messages``); unknown keys go to ``meta``."""
    obj = _as_object(obj, source)
    pid = _req_id(obj, "id", source)
    turns = None
    if obj.get("messages") is not None:
        if obj.get("text") is not None:
            _fail(source, "text", "give either `text` or `messages`, not both")
        text, turns = _prompt_from_messages(_check_messages(obj["messages"], source, "messages"), source, "messages")
    else:
        text = _text(obj, "text", source)
    user_id = _req_id(obj, "user_id", source)
    use_case = "other"
    raw_use_case = _opt_text(obj, "use_case", source)
    if raw_use_case is not None:
        use_case = normalize_use_case(raw_use_case)
        if use_case is None:
            _fail(source, "use_case", f"unknown use case {raw_use_case!r} (expected one of {', '.join(USE_CASES)})")
    split = _opt_text(obj, "split", source)
    if split is not None and split not in SPLITS:
        _fail(source, "split", f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    return Prompt(id=pid, text=text, user_id=user_id, use_case=use_case, split=split,
                  meta=_meta(obj, PROMPT_KEYS), source=source, turns=turns)


def load_prompts(path: str | Path) -> list[Prompt]:
    """All prompts of a JSONL file; a repeated ``id`` is an error naming both lines."""
    prompts: list[Prompt] = []
    first_seen: dict[str, str] = {}
    for source, obj in read_jsonl(path):
        prompt = parse_prompt(obj, source)
        if prompt.id in first_seen:
            _fail(source, "id", f"duplicate prompt id {prompt.id!r}, already used at {first_seen[prompt.id]}")
        first_seen[prompt.id] = source
        prompts.append(prompt)
    return prompts


PromptIndex = Mapping[str, Prompt]


def _index(prompts: PromptIndex | Iterable[Prompt] | None) -> PromptIndex | None:
    """Accept prompts as ``{id: Prompt}`` or as a list of Prompt."""
    if prompts is None or isinstance(prompts, Mapping):
        return prompts
    return {p.id: p for p in prompts}


def _resolve_prompt(text: str | None, turns: Turns | None, prompt_id: str | None, source: str,
                    prompts: PromptIndex | None) -> tuple[str, Turns | None]:
    """(text, turns) of the prompt of a demonstration or ranking.

    The prompt comes from the record itself or from ``prompt_id`` looked up in
    ``prompts`` (turns included). When both are there, the texts must agree
    (ignoring surrounding whitespace); an id that ``prompts`` does not hold is
    an error.
    """
    if prompt_id is not None and prompts is not None:
        known = prompts.get(prompt_id)
        if known is None:
            _fail(source, "prompt_id", f"unknown prompt id {prompt_id!r} (not in the prompts file)")
        if text is None:
            return known.text, known.turns
        if text.strip() != known.text.strip():
            _fail(source, "prompt", f"differs from the text of prompt id {prompt_id!r} ({known.source or 'prompts'})")
        turns = turns or known.turns
    if text is None:
        if prompt_id is not None:
            _fail(source, "prompt", f"missing: give the prompt text, or a prompts file to resolve prompt_id {prompt_id!r}")
        _fail(source, "prompt", "missing: give `prompt` (text or messages) or `prompt_id`")
    return text, turns


def _prompt_field(obj: Mapping[str, Any], source: str) -> tuple[str | None, Turns | None]:
    """(text, turns) of the ``prompt`` key: a string, or a list of chat messages."""
    value = obj.get("prompt")
    if value is None:
        return None, None
    if isinstance(value, list):
        return _prompt_from_messages(_check_messages(value, source, "prompt"), source, "prompt")
    return _text(obj, "prompt", source), None


# --------------------------------------------------------------------------
# Demonstrations
# --------------------------------------------------------------------------

DEMONSTRATION_KEYS = ("prompt", "prompt_id", "response", "labeler_id", "messages")


def parse_demonstration(obj: Any, source: str, prompts: PromptIndex | Iterable[Prompt] | None = None
                        ) -> Demonstration:
    """A :class:`Demonstration` from ``{prompt | prompt_id, response}`` or ``{messages}``.

    In the chat form the last message is the assistant's response and the
    earlier turns are the prompt (kept in ``turns``; ``prompt`` is their
    transcript by :func:`render_messages`).
    """
    obj = _as_object(obj, source)
    prompts = _index(prompts)
    prompt_id = _opt_id(obj, "prompt_id", source)
    if obj.get("messages") is not None:
        for key in ("prompt", "response"):
            if obj.get(key) is not None:
                _fail(source, key, "give either `messages` or `prompt`/`response`, not both")
        response, earlier = _assistant_reply(obj["messages"], source, "messages")
        text, turns = _prompt_from_messages(earlier, source, "messages")
    else:
        text, turns = _prompt_field(obj, source)
        response = _text(obj, "response", source)
    text, turns = _resolve_prompt(text, turns, prompt_id, source, prompts)
    return Demonstration(
        prompt=text,
        response=response,
        labeler_id=_opt_id(obj, "labeler_id", source),
        prompt_id=prompt_id,
        source=source,
        meta=_meta(obj, DEMONSTRATION_KEYS),
        turns=turns,
    )


def load_demonstrations(path: str | Path, prompts: PromptIndex | Iterable[Prompt] | None = None
                        ) -> list[Demonstration]:
    """All demonstrations of a JSONL file (``prompt_id`` resolved against ``prompts``)."""
    prompts = _index(prompts)
    return [parse_demonstration(obj, source, prompts) for source, obj in read_jsonl(path)]


# --------------------------------------------------------------------------
# Rankings
# --------------------------------------------------------------------------

RANKING_KEYS = ("prompt", "prompt_id", "responses", "ranking", "likert", "flags",
                "labeler_id", "comment", "chosen", "rejected")


def _responses(obj: Mapping[str, Any], source: str) -> list[str]:
    value = obj.get("responses")
    if value is None:
        _fail(source, "responses", "missing")
    if not isinstance(value, list):
        _fail(source, "responses", f"expected an array of strings, got {_jtype(value)}")
    k = len(value)
    if not MIN_K <= k <= MAX_K:
        _fail(source, "responses", f"K={k} responses; a ranking needs {MIN_K} to {MAX_K}")
    for i, r in enumerate(value):
        if not isinstance(r, str):
            _fail(source, "responses", f"response {i} is {_jtype(r)}, expected a string")
        if r and not r.strip():
            _fail(source, "responses", f'response {i} is whitespace only (an empty response is written as "")')
    return list(value)


def _ranking_groups(value: Any, k: int, source: str) -> list[list[int]]:
    """Ordered groups of indices, best first, from groups or a flat strict order."""
    if value is None:
        _fail(source, "ranking", "missing")
    if not isinstance(value, list) or not value:
        _fail(source, "ranking", f"expected a non-empty array like [2, 0, 1] or [[2], [0, 1]], got {_jtype(value)}")
    if all(_is_int(v) for v in value):
        groups = [[v] for v in value]
    elif all(isinstance(v, list) for v in value):
        groups = [list(g) for g in value]
    else:
        _fail(source, "ranking", "mixes indices and groups; write a flat order like [2, 0, 1] "
                                 "or groups like [[2], [0, 1]]")
    seen: dict[int, int] = {}
    for gi, group in enumerate(groups):
        if not group:
            _fail(source, "ranking", f"group {gi} is empty")
        for idx in group:
            if not _is_int(idx):
                _fail(source, "ranking", f"group {gi} holds {idx!r}, expected a response index")
            if not 0 <= idx < k:
                _fail(source, "ranking", f"index {idx} is out of range for K={k} responses (0..{k - 1})")
            if idx in seen:
                _fail(source, "ranking", f"index {idx} appears twice (groups {seen[idx]} and {gi})")
            seen[idx] = gi
    missing = sorted(set(range(k)) - seen.keys())
    if missing:
        _fail(source, "ranking", f"index {', '.join(map(str, missing))} missing; "
                                 f"every response 0..{k - 1} must be ranked exactly once")
    if len(groups) < 2:
        _fail(source, "ranking", "a single group ties every response, so there is no comparison")
    return groups


def _likert(value: Any, k: int, source: str) -> list[int] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        _fail(source, "likert", f"expected an array of {k} integers, got {_jtype(value)}")
    if len(value) != k:
        _fail(source, "likert", f"{len(value)} scores for K={k} responses")
    scores = []
    for i, s in enumerate(value):
        if isinstance(s, float) and s.is_integer():
            s = int(s)
        if not _is_int(s):
            _fail(source, "likert", f"score {i} is {s!r}, expected an integer {LIKERT_MIN}..{LIKERT_MAX}")
        if not LIKERT_MIN <= s <= LIKERT_MAX:
            _fail(source, "likert", f"score {i} is {s}, outside {LIKERT_MIN}..{LIKERT_MAX}")
        scores.append(s)
    return scores


def _flags(value: Any, k: int, source: str) -> list[list[str]] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != k:
        got = f"{len(value)} entries" if isinstance(value, list) else _jtype(value)
        _fail(source, "flags", f"expected an array of {k} lists of flag names (one per response), got {got}")
    out = []
    for i, names in enumerate(value):
        if not isinstance(names, list):
            _fail(source, "flags", f"entry {i} is {_jtype(names)}, expected an array of flag names")
        for name in names:
            if name not in FLAGS:
                _fail(source, "flags", f"unknown flag {name!r} for response {i} (known: {', '.join(FLAGS)})")
        out.append(list(names))
    return out


def _pair_side(obj: Mapping[str, Any], key: str, source: str) -> tuple[str, list[dict[str, Any]]]:
    """(response, prompt turns it carries) for ``chosen``/``rejected``: a string or messages."""
    value = obj.get(key)
    if isinstance(value, list):
        return _assistant_reply(value, source, key)
    return _text(obj, key, source), []


def _pair_row(obj: Mapping[str, Any], source: str
              ) -> tuple[str | None, Turns | None, list[str], list[list[int]]]:
    """(prompt text, prompt turns, responses, ranking) of a ``{prompt, chosen, rejected}`` row.

    ``prompt`` may be a string or chat messages (TRL's conversational format).
    When ``chosen``/``rejected`` are conversations, the turns before their
    final assistant reply continue the prompt (TRL's implicit-prompt format)
    and must be the same on both sides.
    """
    for key in ("responses", "ranking"):
        if key in obj:
            _fail(source, key, "a chosen/rejected row cannot also have `responses` or `ranking`")
    chosen, chosen_turns = _pair_side(obj, "chosen", source)
    rejected, rejected_turns = _pair_side(obj, "rejected", source)
    if chosen_turns != rejected_turns:
        _fail(source, "rejected", "its earlier turns differ from those of `chosen` (they must share the prompt)")
    prompt = obj.get("prompt")
    if isinstance(prompt, list):
        text, turns = _prompt_from_messages(_check_messages(prompt, source, "prompt") + chosen_turns, source, "prompt")
    elif chosen_turns:
        if prompt is not None:
            _fail(source, "prompt", "a text prompt cannot be combined with conversational chosen/rejected turns")
        text, turns = _prompt_from_messages(chosen_turns, source, "chosen")
    else:
        text, turns = _prompt_field(obj, source)
    return text, turns, [chosen, rejected], [[0], [1]]


def parse_ranking(obj: Any, source: str, prompts: PromptIndex | Iterable[Prompt] | None = None) -> Ranking:
    """A :class:`Ranking` from a K-wise ranking row or a chosen/rejected pair row."""
    obj = _as_object(obj, source)
    prompts = _index(prompts)
    prompt_id = _opt_id(obj, "prompt_id", source)
    if "chosen" in obj or "rejected" in obj:
        text, turns, responses, groups = _pair_row(obj, source)
    else:
        text, turns = _prompt_field(obj, source)
        responses = _responses(obj, source)
        groups = _ranking_groups(obj.get("ranking"), len(responses), source)
    k = len(responses)
    text, turns = _resolve_prompt(text, turns, prompt_id, source, prompts)
    return Ranking(
        prompt=text,
        responses=responses,
        ranking=groups,
        likert=_likert(obj.get("likert"), k, source),
        flags=_flags(obj.get("flags"), k, source),
        labeler_id=_opt_id(obj, "labeler_id", source),
        prompt_id=prompt_id,
        comment=_opt_text(obj, "comment", source),
        source=source,
        meta=_meta(obj, RANKING_KEYS),
        turns=turns,
    )


def load_rankings(path: str | Path, prompts: PromptIndex | Iterable[Prompt] | None = None) -> list[Ranking]:
    """All rankings of a JSONL file (``prompt_id`` resolved against ``prompts``)."""
    prompts = _index(prompts)
    return [parse_ranking(obj, source, prompts) for source, obj in read_jsonl(path)]


# --------------------------------------------------------------------------
# Writing JSONL
# --------------------------------------------------------------------------

def _merge_meta(record: dict[str, Any], meta: Mapping[str, Any], source: str) -> dict[str, Any]:
    clash = sorted(set(meta) & set(record))
    if clash:
        _fail(source or "<record>", "meta", f"key {clash[0]!r} clashes with a record field")
    record.update(meta)
    return record


def to_record(x: Record) -> dict[str, Any]:
    """The canonical JSON object for a Prompt, Demonstration or Ranking.

    Optional fields that are None are left out, ``source`` is left out, and
    ``meta`` keys are merged back at the top level (as they were read). A
    prompt given as chat messages is written as messages (``messages`` for a
    prompt, ``prompt`` for a demonstration or ranking), so its turns survive.
    """
    if isinstance(x, Prompt):
        out = {"id": x.id, "text": None if x.turns else x.text, "messages": x.turns, "user_id": x.user_id,
               "use_case": x.use_case, "split": x.split}
    elif isinstance(x, Demonstration):
        out = {"prompt_id": x.prompt_id, "prompt": x.turns or x.prompt, "response": x.response,
               "labeler_id": x.labeler_id}
    elif isinstance(x, Ranking):
        out = {"prompt_id": x.prompt_id, "prompt": x.turns or x.prompt, "responses": list(x.responses),
               "ranking": [list(g) for g in x.ranking], "likert": x.likert,
               "flags": x.flags, "labeler_id": x.labeler_id, "comment": x.comment}
    else:
        raise TypeError(f"to_record: expected a Prompt, Demonstration or Ranking, got {type(x).__name__}")
    out = {k: v for k, v in out.items() if v is not None}
    return _merge_meta(out, x.meta, x.source)


@contextmanager
def atomic_open(path: str | Path) -> Iterator[TextIO]:
    """Open ``path`` for writing text so that it is replaced all at once.

    Writes go to a temporary file in the same folder, which is flushed,
    fsynced and then moved over ``path`` with ``os.replace``. If the block
    raises, the temporary file is removed and ``path`` is left untouched.
    Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode follows the umask
    try:
        with open(fd, "w", encoding="utf-8", newline="\n") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (best effort: not every platform allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any] | Record]) -> int:
    """Write dicts or records (via :func:`to_record`) as JSONL, atomically.

    Returns the number of lines written. On any error the previous file, if
    there was one, is left as it was.
    """
    n = 0
    with atomic_open(path) as f:
        for rec in records:
            if is_dataclass(rec):
                rec = to_record(rec)
            elif not isinstance(rec, dict):
                raise TypeError(f"write_jsonl: expected a dict or record, got {type(rec).__name__}")
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n
