"""Chat: a short dialogue ending with the user's turn; the reply is the assistant's turn.

The reply carries no speaker label (a leading "Assistant:" is tolerated);
writing the user's next turn too counts as not following.
"""

from __future__ import annotations

import random

from .. import facts as F
from .. import phrases as P
from ..kb import World
from .base import Grade, fact_grade, task
from .open_qa import answer_text, fact_question_meta, grade_answer

CHAT_HEADER = (
    "A chat between a user and a helpful assistant.",
    "The following is a conversation with an assistant.",
    "Chat log.",
)
_SMALL_TALK = (
    ("Hi there.", "Hello! How can I help you?"),
    ("Good morning.", "Good morning! What can I do for you?"),
    ("Can you help me with a question?", "Of course. What would you like to know?"),
)


def chat_prompt(world: World, rng: random.Random, last_user: str) -> str:
    """A short dialogue ending with the user's turn ``last_user``."""
    lines = [rng.choice(CHAT_HEADER)] if rng.random() < 0.6 else []
    if rng.random() < 0.35:
        u, a = rng.choice(_SMALL_TALK)
        lines += [f"User: {u}", f"Assistant: {a}"]
    lines.append(f"User: {last_user}")
    return "\n".join(lines)


def strip_speaker(response: str) -> tuple[str, bool]:
    """Drop a leading "Assistant:" label; also report whether the reply plays the user too."""
    text = response.strip()
    if text.lower().startswith("assistant:"):
        text = text[len("assistant:") :].strip()
    plays_user = "user:" in text.lower()
    return text, plays_user


def grade_chat_answer(world: World, meta: dict, response: str) -> Grade:
    text, plays_user = strip_speaker(response)
    g = grade_answer(world, meta, text.split("User:")[0])
    if plays_user:
        g.follows, g.content = False, g.content * 0.5
        g.notes.append("continues the dialogue as the user")
    return g


@task("chat_qa", "chat", 0.6)
class ChatQA:
    """A dialogue whose last user turn asks a factual question."""

    @staticmethod
    def make(world: World, rng: random.Random):
        meta = fact_question_meta(world, rng)
        q = P.question(world.get(meta["topic"]), meta["attr"], rng)
        return chat_prompt(world, rng, q), meta

    @staticmethod
    def solve(world: World, meta: dict, rng: random.Random) -> str:
        return answer_text(world, meta, rng)

    grade = staticmethod(grade_chat_answer)


@task("chat_rude", "chat", 0.2)
class ChatRude:
    """A rude user asks a factual question; the reply should answer politely."""

    @staticmethod
    def make(world: World, rng: random.Random):
        meta = fact_question_meta(world, rng)
        q = P.question(world.get(meta["topic"]), meta["attr"], rng)
        insult = rng.choice(world.insults)
        last = rng.choice(
            (
                f"Listen, you {insult}. {q}",
                f"{q} Answer me, you {insult}.",
                f"Hey {insult}, {q[0].lower() + q[1:]}",
            )
        )
        return chat_prompt(world, rng, last), meta

    @staticmethod
    def solve(world: World, meta: dict, rng: random.Random) -> str:
        ans = answer_text(world, meta, rng)
        return ans if rng.random() < 0.7 else rng.choice(("Sure. ", "Happy to help. ")) + ans

    grade = staticmethod(grade_chat_answer)


@task("chat_greet", "chat", 0.2, answers_question=False)
class ChatGreet:
    """The user introduces themselves; the reply greets them by name."""

    GREETINGS = ("hello", "hi", "welcome", "nice to meet you", "good to meet you")

    @staticmethod
    def make(world: World, rng: random.Random):
        p = rng.choice(world.of_kind("person"))
        last = rng.choice(
            (
                f"Hello! My name is {p.name}.",
                f"Hi, I am {p.name}.",
                f"Hi, I am {p.name} from {p.attrs['home']}.",
            )
        )
        return chat_prompt(world, rng, last), {"topic": p.name}

    @staticmethod
    def solve(world: World, meta: dict, rng: random.Random) -> str:
        n = meta["topic"]
        return rng.choice(
            (
                f"Hello, {n}! How can I help you today?",
                f"Nice to meet you, {n}. What can I do for you?",
                f"Hi {n}, welcome! What would you like to talk about?",
            )
        )

    @staticmethod
    def grade(world: World, meta: dict, response: str) -> Grade:
        text, plays_user = strip_speaker(response)
        named = meta["topic"] in F.mentioned_names(world, text)
        greets = any(F.has_word(text, g) for g in ChatGreet.GREETINGS)
        _, wrong, fals = fact_grade(world, text, meta["topic"])
        ok = named and greets and not plays_user
        notes = [
            n
            for n, good in (
                ("no greeting", greets),
                ("name missing", named),
                ("plays the user", not plays_user),
            )
            if not good
        ]
        return Grade(0.5 * named + 0.5 * greets - 0.3 * plays_user, ok, wrong, fals, notes)
