"""Record types and JSONL formats: prompts, demonstrations, rankings.

Every record remembers ``source`` ("file:line") so that any later error
(an over-long prompt at tokenisation, say) can name the record it is about.
A prompt given as chat messages keeps its turns (``turns``) next to their
plain transcript (``text``/``prompt``), so that a chat template can render
them natively (``chat.ChatFormat``).

Loading is strict: a malformed record raises :class:`DataError` with a message
shaped ``"{path}:{lineno}: {field}: {what is wrong}"``; nothing is skipped.
Blank lines are allowed and ignored. The lines themselves are read and written by
:mod:`.jsonl` (strict JSON, atomic files). ``docs/data-formats.md`` describes the
formats for users.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

from .jsonl import DataError, as_object, atomic_open, fail, json_type, read_jsonl  # noqa: F401 (re-exported)
from .messages import (ROLES, Turns, assistant_reply, check_messages, conversation,  # noqa: F401 (re-exported)
                       prompt_from_messages, render_messages, transcript)
from .other_formats import (ALPACA_KEYS, alpaca_demonstration, alpaca_prompt, hh_messages, looks_like_hh,
                            sharegpt_messages)

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

MIN_K, MAX_K = 2, 9          # responses per ranking (the paper's K = 4..9, at least a pair)
LIKERT_MIN, LIKERT_MAX = 1, 7



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
    conversation: bool = False                  # given as one whole conversation (``messages``, ShareGPT's
    # ``conversations``, Alpaca's ``history``): its earlier assistant turns are demonstrations too. A reply to a
    # ``prompt`` (TRL's prompt/completion, the labeling app's export) is the only one: the prompt's earlier
    # replies came from elsewhere (a deployed model), not from whoever wrote the demonstration.


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

def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(obj: Mapping[str, Any], key: str, source: str) -> str:
    """A required string that is not empty after stripping (kept verbatim)."""
    value = obj.get(key)
    if value is None:
        fail(source, key, "missing")
    if not isinstance(value, str):
        fail(source, key, f"expected a string, got {json_type(value)}")
    if not value.strip():
        fail(source, key, "empty")
    return value


def _opt_text(obj: Mapping[str, Any], key: str, source: str) -> str | None:
    """An optional string; null or absent gives None."""
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        fail(source, key, f"expected a string, got {json_type(value)}")
    return value


def _opt_id(obj: Mapping[str, Any], key: str, source: str) -> str | None:
    """An optional identifier: a non-empty string or an integer, returned as str."""
    value = obj.get(key)
    if value is None:
        return None
    if _is_int(value):
        return str(value)
    if not isinstance(value, str):
        fail(source, key, f"expected a string or integer id, got {json_type(value)}")
    if not value.strip():
        fail(source, key, "empty")
    return value


def _req_id(obj: Mapping[str, Any], key: str, source: str) -> str:
    value = _opt_id(obj, key, source)
    if value is None:
        fail(source, key, "missing")
    return value


def _meta(obj: Mapping[str, Any], known: Iterable[str], source: str) -> dict[str, Any]:
    """The keys a format does not define, kept verbatim. A top-level ``system`` text is read next to
    ``messages``, ``conversations`` and Alpaca's ``instruction``; anywhere else it would be kept here,
    unseen by the model, so it is an error."""
    known = set(known)
    if obj.get("conversations") is not None or ("messages" in known and obj.get("messages") is not None):
        known |= {"conversations", "system"}  # a top-level system text is read into the turns
    if obj.get("system") is not None and "system" not in known:
        fail(source, "system", "a top-level system text is read next to `messages` or `conversations` (and "
                               "Alpaca's `instruction`), not with a text prompt or `prompt_id`: give the prompt "
                               "as messages, [{\"role\": \"system\", ...}, {\"role\": \"user\", ...}]")
    return {k: v for k, v in obj.items() if k not in known}


def normalize_use_case(value: str) -> str | None:
    """The canonical use case for ``value`` ("Open QA" -> "open_qa"), or None."""
    key = "_".join(value.strip().lower().replace("-", " ").split())
    if key in USE_CASES:
        return key
    return USE_CASE_ALIASES.get(key)


# --------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------

PROMPT_KEYS = ("id", "text", "user_id", "use_case", "split", "messages")


def parse_prompt(obj: Any, source: str) -> Prompt:
    """A :class:`Prompt` from one JSON object (``text``, or chat ``messages``); unknown keys go to ``meta``."""
    obj = as_object(obj, source)
    pid = _req_id(obj, "id", source)
    turns = None
    key, messages = conversation(obj, source)
    if messages is not None:
        if obj.get("text") is not None:
            fail(source, "text", f"give either `text` or `{key}`, not both")
        text, turns = prompt_from_messages(check_messages(messages, source, key), source, key)
    else:
        text = _text(obj, "text", source)
    user_id = _req_id(obj, "user_id", source)
    use_case = "other"
    raw_use_case = _opt_text(obj, "use_case", source)
    if raw_use_case is not None:
        use_case = normalize_use_case(raw_use_case)
        if use_case is None:
            fail(source, "use_case", f"unknown use case {raw_use_case!r} (expected one of {', '.join(USE_CASES)})")
    split = _opt_text(obj, "split", source)
    if split is not None and split not in SPLITS:
        fail(source, "split", f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    return Prompt(id=pid, text=text, user_id=user_id, use_case=use_case, split=split,
                  meta=_meta(obj, PROMPT_KEYS, source), source=source, turns=turns)


def load_prompts(path: str | Path) -> list[Prompt]:
    """All prompts of a JSONL file; a repeated ``id`` is an error naming both lines."""
    prompts: list[Prompt] = []
    first_seen: dict[str, str] = {}
    for source, obj in read_jsonl(path):
        prompt = parse_prompt(obj, source)
        if prompt.id in first_seen:
            fail(source, "id", f"duplicate prompt id {prompt.id!r}, already used at {first_seen[prompt.id]}")
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
                    prompts: PromptIndex | None, name: str = "prompt") -> tuple[str, Turns | None]:
    """(text, turns) of the prompt of a demonstration or ranking.

    The prompt comes from the record itself or from ``prompt_id`` looked up in
    ``prompts`` (turns included). When both are there, they must say the same
    (ignoring surrounding whitespace; a single user turn says its text), and the
    prompts file's form is kept; an id that ``prompts`` does not hold is an
    error. ``name`` is the field the record's prompt came from (``messages``
    for a chat-form demonstration, ``chosen`` for an implicit-prompt pair row).
    """
    if prompt_id is not None and prompts is not None:
        known = prompts.get(prompt_id)
        if known is None:
            fail(source, "prompt_id", f"unknown prompt id {prompt_id!r} (not in the prompts file)")
        if text is None:
            return known.text, known.turns
        if _plain(text, turns) != _plain(known.text, known.turns):
            fail(source, name, f"differs from the text of prompt id {prompt_id!r} ({known.source or 'prompts'})")
        if known.turns or not turns or _is_one_user_turn(turns):
            return known.text, known.turns  # the prompts file's form: its turns, or its text
        return text, turns  # a conversation whose transcript the prompts file holds as text
    if text is None:
        if prompt_id is not None:
            fail(source, "prompt",
                 f"missing: give the prompt text, or a prompts file to resolve prompt_id {prompt_id!r}")
        fail(source, "prompt", "missing: give `prompt` (text or messages) or `prompt_id`")
    return text, turns


def _prompt_value(obj: Mapping[str, Any], source: str) -> tuple[str, Any]:
    """(field, value) of a ranking's or demonstration's prompt: ``prompt`` (text or messages), or
    ShareGPT's ``conversations`` (the prompt turns of a preference row) read as messages."""
    if obj.get("conversations") is None:
        return "prompt", obj.get("prompt")
    if obj.get("prompt") is not None:
        fail(source, "conversations", "give either `prompt` or ShareGPT's `conversations`, not both")
    return conversation(obj, source)


def _is_one_user_turn(turns: Turns | None) -> bool:
    return bool(turns) and len(turns) == 1 and turns[0]["role"] == "user"


def _plain(text: str, turns: Turns | None) -> str:
    """What a prompt says, for comparing its forms: a single user turn is its text, as a text prompt
    is a single user turn to a chat template."""
    return turns[0]["content"].strip() if _is_one_user_turn(turns) else text.strip()


def prompt_field(obj: Mapping[str, Any], source: str) -> tuple[str | None, Turns | None]:
    """(text, turns) of the prompt: ``prompt`` as a string, or a list of chat messages (``prompt``, or
    ShareGPT's ``conversations``) checked as every reader here checks them; (None, None) when absent."""
    key, value = _prompt_value(obj, source)
    if value is not None and obj.get("instruction") is not None:
        fail(source, "instruction", f"give either `{key}` or Alpaca's `instruction`, not both")
    if value is None and obj.get("instruction") is not None:  # LLaMA-Factory's alpaca preference rows
        turns, text = alpaca_prompt(obj, source)
        return (text, None) if turns is None else prompt_from_messages(turns, source, "history")
    if value is None:
        return None, None
    if isinstance(value, list):
        return prompt_from_messages(check_messages(value, source, key), source, key)
    return _text(obj, "prompt", source), None


# --------------------------------------------------------------------------
# Demonstrations
# --------------------------------------------------------------------------

DEMONSTRATION_KEYS = ("prompt", "prompt_id", "response", "completion", "labeler_id", "messages")


def _response(obj: Mapping[str, Any], source: str) -> str:
    """The reply of a ``{prompt, response}`` row, or of TRL's ``{prompt, completion}`` row, whose
    ``completion`` is text or (conversational) a list of exactly one assistant message."""
    completion = obj.get("completion")
    if completion is None:
        if obj.get("response") is None:
            fail(source, "response", 'missing (a demonstration has "response", TRL\'s "completion", '
                                     '"messages" or ShareGPT\'s "conversations" ending with the '
                                     'assistant\'s reply, or Alpaca\'s "instruction" and "output")')
        return _text(obj, "response", source)
    if obj.get("response") is not None:
        fail(source, "completion", "give either `response` or `completion`, not both")
    if not isinstance(completion, list):
        return _text(obj, "completion", source)
    messages = check_messages(completion, source, "completion")
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        roles = ", ".join(m["role"] for m in messages)
        fail(source, "completion", f"expected exactly one assistant message (the reply), got {len(messages)} "
                                   f"({roles}); earlier turns belong in `prompt`")
    return messages[0]["content"]


def _not_unpaired_preference(obj: Mapping[str, Any], source: str) -> None:
    """An error for a reply labelled good or bad (TRL's and LLaMA-Factory's KTO rows: ``label`` or ``kto_tag``
    true/false): as a demonstration, SFT would learn to write the bad ones too."""
    for key in ("label", "kto_tag"):
        if isinstance(obj.get(key), bool):
            fail(source, key, "an unpaired-preference (KTO) row, whose reply is labelled good or bad, not a "
                              "demonstration: SFT would learn to write the replies labelled false too; keep the "
                              f"rows whose {key} is true, without `{key}`")


def parse_demonstration(obj: Any, source: str, prompts: PromptIndex | Iterable[Prompt] | None = None
                        ) -> Demonstration:
    """A :class:`Demonstration` from ``{prompt | prompt_id, response | completion}`` or ``{messages}``.

    In the chat form the last message is the assistant's response and the
    earlier turns are the prompt (kept in ``turns``; ``prompt`` is their
    transcript by :func:`render_messages`).
    """
    obj = as_object(obj, source)
    _not_unpaired_preference(obj, source)
    prompts = _index(prompts)
    prompt_id = _opt_id(obj, "prompt_id", source)
    name, messages = conversation(obj, source)
    if messages is not None:
        for key, pair in (("prompt", "prompt`/`response"), ("response", "prompt`/`response"),
                          ("completion", "prompt`/`completion")):
            if obj.get(key) is not None:
                fail(source, key, f"give either `{name}` or `{pair}`, not both")
        response, earlier = assistant_reply(messages, source, name)
        text, turns = prompt_from_messages(earlier, source, name)
        whole = True
    elif obj.get("instruction") is not None:
        name = "instruction"
        for key in ("prompt", "response", "completion"):
            if obj.get(key) is not None:
                fail(source, key, f"give either Alpaca's `instruction`/`output` or `{key}`, not both")
        turns, text, response = alpaca_demonstration(obj, source)
        if turns is not None:
            text, turns = prompt_from_messages(turns, source, "history")
        whole = True
    else:
        name = "prompt"
        text, turns = prompt_field(obj, source)
        response = _response(obj, source)
        whole = False
    text, turns = _resolve_prompt(text, turns, prompt_id, source, prompts, name)
    return Demonstration(
        prompt=text,
        response=response,
        labeler_id=_opt_id(obj, "labeler_id", source),
        prompt_id=prompt_id,
        source=source,
        meta=_meta(obj, DEMONSTRATION_KEYS + (ALPACA_KEYS if name == "instruction" else ()), source),
        turns=turns,
        conversation=whole and turns is not None,
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
        fail(source, "responses", "missing")
    if not isinstance(value, list):
        fail(source, "responses", f"expected an array of strings, got {json_type(value)}")
    k = len(value)
    if not MIN_K <= k <= MAX_K:
        fail(source, "responses", f"K={k} responses; a ranking needs {MIN_K} to {MAX_K}")
    for i, r in enumerate(value):
        if not isinstance(r, str):
            fail(source, "responses", f"response {i} is {json_type(r)}, expected a string")
        if r and not r.strip():
            fail(source, "responses", f'response {i} is whitespace only (an empty response is written as "")')
    return list(value)


def _ranking_groups(value: Any, k: int, source: str) -> list[list[int]]:
    """Ordered groups of indices, best first, from groups or a flat strict order."""
    if value is None:
        fail(source, "ranking", "missing")
    if not isinstance(value, list) or not value:
        fail(source, "ranking", f"expected a non-empty array like [2, 0, 1] or [[2], [0, 1]], got {json_type(value)}")
    if all(_is_int(v) for v in value):
        groups = [[v] for v in value]
    elif all(isinstance(v, list) for v in value):
        groups = [list(g) for g in value]
    else:
        fail(source, "ranking", "mixes indices and groups; write a flat order like [2, 0, 1] "
                                 "or groups like [[2], [0, 1]]")
    seen: dict[int, int] = {}
    for gi, group in enumerate(groups):
        if not group:
            fail(source, "ranking", f"group {gi} is empty")
        for idx in group:
            if not _is_int(idx):
                fail(source, "ranking", f"group {gi} holds {idx!r}, expected a response index")
            if not 0 <= idx < k:
                fail(source, "ranking", f"index {idx} is out of range for K={k} responses (0..{k - 1})")
            if idx in seen:
                fail(source, "ranking", f"index {idx} appears twice (groups {seen[idx]} and {gi})")
            seen[idx] = gi
    missing = sorted(set(range(k)) - seen.keys())
    if missing:
        fail(source, "ranking", f"index {', '.join(map(str, missing))} missing; "
                                 f"every response 0..{k - 1} must be ranked exactly once")
    if len(groups) < 2:
        fail(source, "ranking", "a single group ties every response, so there is no comparison")
    return groups


def _likert(value: Any, k: int, source: str) -> list[int] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        fail(source, "likert", f"expected an array of {k} integers, got {json_type(value)}")
    if len(value) != k:
        fail(source, "likert", f"{len(value)} scores for K={k} responses")
    scores = []
    for i, s in enumerate(value):
        if isinstance(s, float) and s.is_integer():
            s = int(s)
        if not _is_int(s):
            fail(source, "likert", f"score {i} is {s!r}, expected an integer {LIKERT_MIN}..{LIKERT_MAX}")
        if not LIKERT_MIN <= s <= LIKERT_MAX:
            fail(source, "likert", f"score {i} is {s}, outside {LIKERT_MIN}..{LIKERT_MAX}")
        scores.append(s)
    return scores


def _flags(value: Any, k: int, source: str) -> list[list[str]] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != k:
        got = f"{len(value)} entries" if isinstance(value, list) else json_type(value)
        fail(source, "flags", f"expected an array of {k} lists of flag names (one per response), got {got}")
    out = []
    for i, names in enumerate(value):
        if not isinstance(names, list):
            fail(source, "flags", f"entry {i} is {json_type(names)}, expected an array of flag names")
        for name in names:
            if name not in FLAGS:
                fail(source, "flags", f"unknown flag {name!r} for response {i} (known: {', '.join(FLAGS)})")
        out.append(list(names))
    return out


def _pair_side(obj: Mapping[str, Any], key: str, source: str, hh: bool
               ) -> tuple[str, list[dict[str, Any]]]:
    """(response, prompt turns it carries) for ``chosen``/``rejected``: a string, messages, one
    ShareGPT message (``{"from": "gpt", "value"}``), or with ``hh`` an HH-RLHF text transcript."""
    value = obj.get(key)
    if isinstance(value, dict):
        value = sharegpt_messages([value], None, source, key)
    elif hh:
        value = hh_messages(_text(obj, key, source), source, key)
    if isinstance(value, list):
        return assistant_reply(value, source, key)
    return _text(obj, key, source), []


def _pair_row(obj: Mapping[str, Any], source: str
              ) -> tuple[str | None, Turns | None, list[str], list[list[int]]]:
    """(prompt text, prompt turns, responses, ranking) of a ``{prompt, chosen, rejected}`` row.

    ``prompt`` may be a string or chat messages (TRL's conversational format).
    When ``chosen``/``rejected`` are conversations, the turns before their
    final assistant reply must be the same on both sides. Without ``prompt``
    they are the prompt (TRL's implicit-prompt format); with it they must begin
    by repeating it (its messages exactly, or for a text prompt a user turn
    with that text, as UltraFeedback-binarized writes them), and that repeated
    prefix is read once. ShareGPT preference rows (LLaMA-Factory) give the prompt turns in
    ``conversations`` and each side as one ``{"from": "gpt", "value"}`` message; HH-RLHF rows give
    each side as a whole ``"\n\nHuman: ...\n\nAssistant: ..."`` transcript and no prompt.
    """
    for key in ("responses", "ranking"):
        if obj.get(key) is not None:  # null is the same as absent (union-schema exports)
            fail(source, key, "a chosen/rejected row cannot also have `responses` or `ranking`")
    prompt_key, prompt = _prompt_value(obj, source)
    alpaca = obj.get("instruction") is not None
    hh = prompt is None and obj.get("prompt_id") is None and not alpaca and looks_like_hh(obj.get("chosen"))
    chosen, chosen_turns = _pair_side(obj, "chosen", source, hh)
    rejected, rejected_turns = _pair_side(obj, "rejected", source, hh)
    if chosen_turns != rejected_turns:
        fail(source, "rejected", "its earlier turns differ from those of `chosen` (they must share the prompt)")
    if chosen_turns and alpaca:
        fail(source, "chosen", "with Alpaca's `instruction` as the prompt, `chosen` and `rejected` are the replies "
                               "alone (strings), not conversations")
    if not chosen_turns and prompt is None and obj.get("prompt_id") is None and not alpaca:
        fail(source, "prompt", "missing: `chosen` and `rejected` are plain texts and no `prompt` says where the "
                               "prompt ends (TRL's implicit-prompt standard format); give it in `prompt` and only "
                               "the replies in chosen/rejected, or give them as conversations (messages)")
    if not chosen_turns:
        text, turns = prompt_field(obj, source)
    elif prompt is None:
        text, turns = prompt_from_messages(chosen_turns, source, "chosen")
    else:
        if isinstance(prompt, list):
            given = check_messages(prompt, source, prompt_key)
            repeats = chosen_turns[:len(given)] == given
            what = f"the messages of `{prompt_key}`"
        else:
            given = _text(obj, "prompt", source)
            first = chosen_turns[0]
            repeats = first["role"] == "user" and first["content"].strip() == given.strip()
            what = "a user turn with the text of `prompt`"
        if not repeats:
            fail(source, "chosen", f"its turns before the reply do not begin with {what}; give the prompt "
                                   f"once in `prompt` (chosen/rejected then hold only the reply), or repeat "
                                   f"it exactly at the start of both conversations")
        text, turns = prompt_from_messages(chosen_turns, source, "chosen")
    return text, turns, [chosen, rejected], [[0], [1]]


ALPACA_PROMPT_KEYS = tuple(k for k in ALPACA_KEYS if k != "output")


def parse_ranking(obj: Any, source: str, prompts: PromptIndex | Iterable[Prompt] | None = None) -> Ranking:
    """A :class:`Ranking` from a K-wise ranking row or a chosen/rejected pair row."""
    obj = as_object(obj, source)
    prompts = _index(prompts)
    prompt_id = _opt_id(obj, "prompt_id", source)
    prompt_key = "conversations" if obj.get("conversations") is not None else "prompt"
    if obj.get("chosen") is not None or obj.get("rejected") is not None:
        text, turns, responses, groups = _pair_row(obj, source)
        name = "chosen" if turns and obj.get(prompt_key) is None else prompt_key
    else:
        text, turns = prompt_field(obj, source)
        responses = _responses(obj, source)
        groups = _ranking_groups(obj.get("ranking"), len(responses), source)
        name = prompt_key
    k = len(responses)
    text, turns = _resolve_prompt(text, turns, prompt_id, source, prompts, name)
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
        meta=_meta(obj, RANKING_KEYS + (ALPACA_PROMPT_KEYS if obj.get("instruction") is not None else ()), source),
        turns=turns,
    )


def load_rankings(path: str | Path, prompts: PromptIndex | Iterable[Prompt] | None = None) -> list[Ranking]:
    """All rankings of a JSONL file (``prompt_id`` resolved against ``prompts``)."""
    prompts = _index(prompts)
    return [parse_ranking(obj, source, prompts) for source, obj in read_jsonl(path)]


# --------------------------------------------------------------------------
# Records as JSON objects, and writing them
# --------------------------------------------------------------------------

def _merge_meta(record: dict[str, Any], meta: Mapping[str, Any], source: str) -> dict[str, Any]:
    clash = sorted(set(meta) & set(record))
    if clash:
        fail(source or "<record>", "meta", f"key {clash[0]!r} clashes with a record field")
    record.update(meta)
    return record


def to_record(x: Record) -> dict[str, Any]:
    """The canonical JSON object for a Prompt, Demonstration or Ranking.

    Optional fields that are None are left out, ``source`` is left out, and
    ``meta`` keys are merged back at the top level (as they were read). A
    prompt given as chat messages is written as messages (``messages`` for a
    prompt, ``prompt`` for a demonstration or ranking), so its turns survive;
    a demonstration given as a whole conversation is written as ``messages``,
    so its earlier replies stay demonstrations.
    """
    if isinstance(x, Prompt):
        out = {"id": x.id, "text": None if x.turns else x.text, "messages": x.turns, "user_id": x.user_id,
               "use_case": x.use_case, "split": x.split}
    elif isinstance(x, Demonstration) and x.conversation:
        out = {"prompt_id": x.prompt_id, "messages": x.turns + [{"role": "assistant", "content": x.response}],
               "labeler_id": x.labeler_id}
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
