"""Chat messages: the ``[{"role", "content"}]`` lists every record format reads (``messages``, TRL's
conversational ``prompt``/``chosen``/``rejected``, ShareGPT's ``conversations``), their checks, and their
plain transcript (what a model without a chat template is prompted with). Errors name the record's
``file:line`` and the field the messages came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .jsonl import fail, json_type
from .other_formats import sharegpt_messages, with_system

ROLES = ("system", "user", "assistant")
Turns = list[dict[str, Any]]  # chat messages [{"role", "content"}, ...]

_ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


def check_messages(messages: Any, source: str, name: str) -> list[dict[str, Any]]:
    """Validate a list of ``{"role", "content"}`` messages."""
    if not isinstance(messages, list) or not messages:
        fail(source, name, f"expected a non-empty array of {{role, content}} messages, got {json_type(messages)}"
              + (" (empty)" if messages == [] else ""))
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            fail(source, name, f"message {i} is {json_type(m)}, expected an object with role and content")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            fail(source, name, f"message {i} has unknown role {role!r} (expected system, user or assistant)")
        if role == "system" and i != 0:
            fail(source, name, f"message {i}: a system message may only come first")
        if not isinstance(content, str):
            fail(source, name, f"message {i} ({role}) content must be a string, got {json_type(content)}")
        if not content.strip():
            fail(source, name, f"message {i} ({role}) content is empty")
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
    return transcript(check_messages(messages, source, "messages"))


def transcript(messages: list[dict[str, Any]]) -> str:
    """:func:`render_messages` of messages already checked (under the field they came from)."""
    parts = [f"{_ROLE_NAMES[m['role']]}: {m['content'].strip()}" for m in messages]
    if messages[-1]["role"] != "assistant":
        parts.append("Assistant:")
    return "\n\n".join(parts)


def prompt_from_messages(messages: list[dict[str, Any]], source: str, name: str) -> tuple[str, Turns]:
    """(plain transcript, turns) of the prompt turns of a conversation; they must include a user turn
    and end with one (the reply follows it: a prompt ending with the assistant's turn would have the
    reply glued onto that turn in the plain transcript)."""
    if not messages:
        fail(source, name, "no turns before the assistant reply, so there is no prompt")
    check_messages(messages, source, name)
    if not any(m["role"] == "user" for m in messages):
        fail(source, name, "the prompt turns have no user message")
    if messages[-1]["role"] != "user":
        fail(source, name, f"the prompt's last turn is {messages[-1]['role']!r}; a prompt's turns end with "
                           f"the user's turn that the reply answers")
    turns = [dict(m) for m in messages]
    return transcript(turns), turns


def conversation(obj: Mapping[str, Any], source: str) -> tuple[str, list[dict[str, Any]] | None]:
    """(field, messages) of a record's conversation: ``messages``, or ShareGPT's ``conversations``
    read as messages (:func:`.other_formats.sharegpt_messages`), either after a top-level ``system`` text
    when there is one; ``("messages", None)`` when neither."""
    if obj.get("conversations") is None:
        messages = obj.get("messages")
        if messages is None or obj.get("system") is None:
            return "messages", messages
        # LLaMA-Factory's sharegpt layout with role/content tags: `messages` and a top-level `system` text
        check_messages(messages, source, "messages")
        return "messages", with_system(messages, obj["system"], source, "messages")
    if obj.get("messages") is not None:
        fail(source, "conversations", "give either `messages` or ShareGPT's `conversations`, not both")
    messages = sharegpt_messages(obj["conversations"], None, source, "conversations")
    check_messages(messages, source, "conversations")  # before the system text goes first: "message i" is the file's
    return "conversations", with_system(messages, obj.get("system"), source, "conversations")


def assistant_reply(value: Any, source: str, name: str) -> tuple[str, list[dict[str, Any]]]:
    """(reply, earlier turns) from a conversation whose last message is the assistant's."""
    messages = check_messages(value, source, name)
    if messages[-1]["role"] != "assistant":
        fail(source, name, f"the last message must be the assistant's reply, got role {messages[-1]['role']!r}")
    if len(messages) > 1 and messages[-2]["role"] == "assistant":
        fail(source, name, f"messages {len(messages) - 2} and {len(messages) - 1} are both the assistant's: "
                           f"the reply (the last message) must follow a user turn")
    return messages[-1]["content"], messages[:-1]


