"""Two conversation shapes of other toolkits' data, turned into our chat messages.

- **ShareGPT** (Vicuna, SlimOrca, LLaMA-Factory's ``sharegpt`` layout): a
  conversation is ``"conversations": [{"from": "human", "value": "..."},
  {"from": "gpt", "value": "..."}]`` instead of our ``"messages": [{"role",
  "content"}]``. :func:`sharegpt_messages` maps each message's speaker to our
  role (``human``/``user`` -> user, ``gpt``/``assistant``/... -> assistant,
  ``system``) and prepends LLaMA-Factory's top-level ``system`` text.
- **Alpaca** (Stanford Alpaca, LLaMA-Factory's ``alpaca`` layout): a demonstration is
  ``{"instruction", "input", "output"}``. :func:`alpaca_demonstration` gives the
  prompt (the instruction, then the input after a blank line when there is one)
  and the reply; LLaMA-Factory's ``system`` and ``history`` (earlier
  ``[question, answer]`` pairs) become turns before it. Its preference rows have
  ``chosen`` and ``rejected`` instead of ``output`` (:func:`alpaca_prompt`).
- **Anthropic HH-RLHF**: ``chosen`` and ``rejected`` are whole text transcripts,
  ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``, with no separate prompt.
  :func:`hh_messages` splits one into turns.

Both return ``[{"role", "content"}]`` lists that :mod:`.data` then checks by
its own rules (a system message only first, a reply after a user turn, no
empty turn), naming the field they came from.
"""

from __future__ import annotations

import re
from typing import Any

from .jsonl import fail, json_type

SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant",
    "bing": "assistant", "model": "assistant",
    "system": "system",
}


def sharegpt_messages(value: Any, system: Any, source: str, name: str) -> list[dict[str, Any]]:
    """Our messages from ShareGPT's ``conversations`` (``name``), after ``system`` text if given.

    Messages may be ``{"from", "value"}`` or already ``{"role", "content"}``; a
    speaker that is not a chat role (LLaMA-Factory's ``function_call`` and
    ``observation`` tool turns) is an error naming the message.
    """
    if not isinstance(value, list) or not value:
        fail(source, name, f"expected a non-empty array of {{from, value}} messages, got {json_type(value)}"
                           + (" (empty)" if value == [] else ""))
    messages = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            fail(source, name, f"message {i} is {json_type(m)}, expected an object with from and value")
        speaker, text = (m.get("from"), m.get("value")) if "from" in m else (m.get("role"), m.get("content"))
        role = SHAREGPT_ROLES.get(speaker.lower() if isinstance(speaker, str) else speaker)
        if role is None:
            fail(source, name, f"message {i} is from {speaker!r}, which is not a chat turn "
                               f"(known: {', '.join(SHAREGPT_ROLES)})")
        messages.append({"role": role, "content": text})
    return with_system(messages, system, source, name)


def with_system(messages: list[dict[str, Any]], system: Any, source: str, name: str) -> list[dict[str, Any]]:
    """``messages`` after ShareGPT's top-level ``system`` text, when there is one; the conversation may not
    also open with a system message of its own."""
    if system is None:
        return messages
    if not isinstance(system, str):
        fail(source, "system", f"expected the system message's text, got {json_type(system)}")
    if not system.strip():
        return messages
    if messages and isinstance(messages[0], dict) and messages[0].get("role") == "system":
        fail(source, name, "message 0 is a system message and the row also has a top-level `system`: give the "
                           "system prompt once")
    return [{"role": "system", "content": system}] + messages


ALPACA_KEYS = ("instruction", "input", "output", "system", "history")


def alpaca_demonstration(obj: dict[str, Any], source: str) -> tuple[list[dict[str, Any]] | None, str, str]:
    """(earlier turns or None, prompt text, reply) of an Alpaca row: :func:`alpaca_prompt`, and ``output``."""
    turns, prompt = alpaca_prompt(obj, source)
    return turns, prompt, _alpaca_text(obj, "output", True, source)


def alpaca_prompt(obj: dict[str, Any], source: str) -> tuple[list[dict[str, Any]] | None, str]:
    """(turns or None, prompt text) of an Alpaca row's prompt (a demonstration's, or a LLaMA-Factory
    preference row's with ``chosen``/``rejected``): the instruction, then the input after a blank line.

    The turns are None for a row with neither ``system`` nor ``history``, so that a model without
    a chat template sees the plain instruction; otherwise they end with the instruction's user turn.
    """
    instruction, extra = _alpaca_text(obj, "instruction", True, source), _alpaca_text(obj, "input", False, source)
    prompt = f"{instruction.strip()}\n\n{extra.strip()}" if extra.strip() else instruction
    system, history = _alpaca_text(obj, "system", False, source), obj.get("history")
    if not system.strip() and not history:
        return None, prompt
    turns = [{"role": "system", "content": system}] if system.strip() else []
    if history is not None and not isinstance(history, list):
        fail(source, "history", f"expected an array of [question, answer] pairs, got {json_type(history)}")
    for i, pair in enumerate(history or []):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            fail(source, "history", f"entry {i} is not a [question, answer] pair of strings")
        turns += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return turns + [{"role": "user", "content": prompt}], prompt


def _alpaca_text(obj: dict[str, Any], key: str, required: bool, source: str) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        fail(source, key, f"expected a string, got {json_type(value)}")
    if required and not value.strip():
        fail(source, key, "empty")
    return value


_HH_SPEAKER = re.compile(r"\n\n(Human|Assistant):")


def looks_like_hh(text: Any) -> bool:
    """Whether ``text`` is an HH-RLHF transcript: it opens with a ``Human:`` turn (after blank lines)."""
    return isinstance(text, str) and text.lstrip("\n").startswith("Human:")


def hh_messages(text: str, source: str, name: str) -> list[dict[str, Any]]:
    """The turns of an HH-RLHF transcript (``name``): ``Human`` -> user, ``Assistant`` -> assistant.

    ``"\\n\\nHuman: Hi\\n\\nAssistant: Hello"`` gives ``[{"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello"}]``. Each turn's text is stripped of the space after its
    speaker and of surrounding whitespace; a transcript without an ``Assistant:`` turn is an error.
    """
    parts = _HH_SPEAKER.split("\n\n" + text.lstrip("\n"))
    # parts: ["", "Human", " text", "Assistant", " text", ...]
    speakers, texts = parts[1::2], parts[2::2]
    if "Assistant" not in speakers:
        fail(source, name, 'an HH transcript ("Human: ...") with no "Assistant:" turn, so no reply')
    return [{"role": "user" if who == "Human" else "assistant", "content": said.strip()}
            for who, said in zip(speakers, texts)]
