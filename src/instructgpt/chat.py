"""How prompts and responses become token ids: through a chat template, or as plain text.

Every stage (sft, rm, sample, ppo, eval) turns records into ids here and only
here, so the text a model is trained on is the text it is later prompted with.

``ChatFormat.load(tokenizer, option)`` with ``option`` (the stages' ``chat_template=``):

- ``auto``: the tokenizer's own chat template when it has one, else plain text;
- ``none``: plain text even when the tokenizer has a template;
- a path: the Jinja chat template in that file.

With a template, the prompt is the conversation rendered with the generation
prompt (a text prompt is one user message), and the response is the assistant
turn that follows, up to and including the template's end-of-turn token (the
first special token the template writes after the reply: ``<|im_end|>`` for
ChatML, ``<|eot_id|>`` for Llama 3). The response ids are cut from the
rendering of the whole conversation, so prompt ids + response ids are exactly
the template's tokens for it up to that end-of-turn token (what follows it,
such as ChatML's newline, is never generated and is left out). A template that
renders earlier turns differently once a reply follows breaks that property and
is an error naming the record. The template's text is tokenised without adding
special tokens (the template writes its own BOS, if any), and message contents
are tokenised as plain text: a literal ``<|im_end|>`` inside a reply cannot end
the turn.

Without a template (plain text)::

    text prompt:      "{prompt}\\n" "{response}" EOS       (no newline added when the prompt ends with one)
    messages prompt:  "User: {content}\\n\\nAssistant:" " {response}" EOS

The prompt is tokenised with the special tokens the tokenizer puts before a text
(BOS), not with an EOS it would append (``add_eos_token``);
the response's ids are those it gets after its prompt in one text, so a
SentencePiece tokenizer gives a reply's first word no word-start marker after
the newline, as in the text the model was pretrained on (the response alone
where prompt and response would merge across the boundary, so the boundary is
always exact). An empty response is the end token alone (EOS, or the end-of-turn token
with a template): what a model that stops at once produced.

Generation stops at any of ``stop_ids``: the end-of-turn token and EOS.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from .config import ConfigError
from .data import DataError, render_messages

Conversation = list[dict[str, str]]
PromptInput = str | Conversation          # a prompt's text, or its chat turns

CHAT_TEMPLATE_HELP = ("auto (the tokenizer's chat template when it has one, else plain text), none (plain text: "
                      "prompt, newline, response, EOS), or a Jinja chat-template file.")
_PROBE = "Probe reply 42."                # a reply whose text any template keeps as is
#: The day a template that dates its prompts (Llama 3.1's and 3.2's "Today Date:", Mistral Small's and Granite's
#: system prompts, all through transformers' strftime_now) is rendered on: one fixed day (the one Llama's
#: templates fall back to), so a prompt's tokens do not depend on the day a stage runs: SFT, the reward model,
#: PPO and the evaluation read the same ones, and a run repeated reads what it read before.
TEMPLATE_DATE = datetime(2024, 7, 26)
_DIRECTIVES = [f"%-{c}" for c in "dmHIMSj"] + [f"%{c}" for c in "aAwdbBmyYHIpMSfzZjUWcxXGuV"]


def dated_on_template_date(template: str) -> str:
    """``template`` with ``strftime_now`` (the clock transformers gives templates) reading :data:`TEMPLATE_DATE`:
    a macro of that name, defined first, shadows it. Templates that do not read the clock are left as they are."""
    if "strftime_now" not in template:
        return template
    body = "(format | replace('%%', '\\x00')"
    for d in _DIRECTIVES:
        body += f" | replace({d!r}, {TEMPLATE_DATE.strftime(d)!r})"
    body += " | replace('\\x00', '%'))"
    # the newline after the macro is the one trim_blocks removes, so the template's own first line stays as it was
    return "{% macro strftime_now(format) %}{{ " + body + " }}{% endmacro %}\n" + template


def prompt_input(record: Any) -> PromptInput:
    """What to render for a Prompt, Demonstration or Ranking: its chat turns when it has them, else its text."""
    turns = getattr(record, "turns", None)
    if turns:
        return turns
    text = getattr(record, "text", None)
    return text if text is not None else record.prompt


def as_conversation(prompt: PromptInput) -> Conversation:
    """Chat turns of a prompt: a text prompt is one user message."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


class ChatFormat:
    """Renders prompts and responses of one tokenizer, with or without a chat template.

    ``template`` is None for plain text. ``end_id`` ends every response
    (end-of-turn token, or EOS for plain text); ``stop_ids`` are the tokens
    that stop generation (``end_id`` first, then EOS when different).
    """

    def __init__(self, tokenizer, template: str | None = None, origin: str = "none"):
        self.tokenizer = tokenizer
        self.template = template
        self.origin = origin                      # "tokenizer", a file path, or "none"
        self._dated_template = dated_on_template_date(template) if template is not None else None
        self.eos_id: int = tokenizer.eos_token_id
        self._special = special_ids(tokenizer)
        self.end_id = self._find_end_of_turn() if template is not None else self.eos_id
        self.stop_ids: tuple[int, ...] = tuple(dict.fromkeys([self.end_id, self.eos_id]))
        self._cache: tuple[str, list[int]] | None = None  # last rendered prompt (K responses share it)
        self._ahead: dict[tuple[str, bool], list[int]] = {}  # (text, special tokens) -> ids, by tokenized_ahead

    @classmethod
    def load(cls, tokenizer, option: str = "auto") -> "ChatFormat":
        """The format that ``chat_template=option`` asks for (see the module docstring)."""
        option = (option or "auto").strip()
        if option == "none":
            return cls(tokenizer)
        if option == "auto":
            template = tokenizer.chat_template
            if isinstance(template, dict):  # several named templates: the default one
                template = template.get("default")
            return cls(tokenizer, template, "tokenizer") if template else cls(tokenizer)
        path = Path(option)
        if not path.is_file():
            raise ConfigError(f"chat_template: {option}: not auto, none or an existing template file")
        try:
            template = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"chat_template: {option}: cannot read: {e}") from None
        if not template.strip():
            raise ConfigError(f"chat_template: {option}: empty file")
        return cls(tokenizer, template, str(path))

    # ---- what it is

    @property
    def uses_template(self) -> bool:
        return self.template is not None

    def describe(self) -> str:
        """One line for logs and instructgpt.json."""
        if self.template is None:
            return "plain text (prompt, newline, response, EOS)"
        where = "the tokenizer's chat template" if self.origin == "tokenizer" else f"chat template {self.origin}"
        return f"{where}; responses end with {self.token(self.end_id)}"

    def token(self, token_id: int) -> str:
        return str(self.tokenizer.convert_ids_to_tokens(token_id))

    def apply_to(self, tokenizer) -> None:
        """Give ``tokenizer`` this format's template (None for plain text) before saving it,
        so that later stages with ``chat_template=auto`` use the format this one trained with."""
        tokenizer.chat_template = self.template

    def save_generation_config(self, folder: str | Path) -> None:
        """Make the policy folder's ``generation_config.json`` stop where this format's responses end.

        A template's end-of-turn token (Gemma's ``<end_of_turn>``, Llama 3's ``<|eot_id|>``, ChatML put on a
        base model) is often not the base model's EOS: the model is trained to end its replies with it,
        and transformers' ``generate`` stops only at ``eos_token_id``. The stop ids are added to it (those
        already there are kept, in their order). A LoRA adapter folder has no ``config.json``: its
        ``generation_config.json`` (the base's, written by ``lora.save_policy``) gets the stops. The file is edited as JSON, everything else in it kept as it is: transformers refuses to save
        a loaded config it finds inconsistent once it was changed (``temperature`` without ``do_sample``, as
        many published configs have), though it saves it back unchanged."""
        from transformers import GenerationConfig
        folder = Path(folder)
        path = folder / "generation_config.json"
        if not (folder / "config.json").is_file() and not path.is_file():
            return
        if not path.is_file():  # start from the model config's token ids
            GenerationConfig.from_model_config(_model_config(folder)).save_pretrained(str(folder))
        gen = json.loads(path.read_text())
        eos = gen.get("eos_token_id")
        have = [] if eos is None else [int(i) for i in (eos if isinstance(eos, (list, tuple)) else [eos])]
        missing = [i for i in self.stop_ids if i not in have]
        if missing:
            gen["eos_token_id"] = have + missing
            path.write_text(json.dumps(gen, indent=2, sort_keys=True) + "\n")

    # ---- rendering

    def render_prompt(self, prompt: PromptInput) -> str:
        """The text the model sees before its reply (for display; ids come from ``prompt_ids``)."""
        if self.template is not None:
            return self._render(as_conversation(prompt), True, tokenize=False)
        return self._plain_prompt(prompt)

    def prompt_ids(self, prompt: PromptInput, source: str = "") -> list[int]:
        """Ids of the prompt, ending where the response begins (the generation prompt with a template)."""
        where = source or "<prompt>"
        if not prompt or (isinstance(prompt, str) and not prompt.strip()):
            raise DataError(f"{where}: prompt: empty")
        if self.template is not None:
            key = json.dumps(prompt)
            if self._cache is None or self._cache[0] != key:
                self._cache = (key, self._render(as_conversation(prompt), True, source=where))
            ids = list(self._cache[1])
        else:
            ids = self.text_ids(self._plain_prompt(prompt, where))
        if not ids:
            raise DataError(f"{where}: prompt: empty after tokenisation")
        bos = self.tokenizer.bos_token_id
        if bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos:
            raise DataError(f"{where}: prompt: starts with BOS twice ({self.token(bos)}); the chat template "
                            f"writes a BOS and another is added")
        return ids

    def encode(self, prompt: PromptInput, response: str, source: str = "",
               field: str = "response") -> tuple[list[int], list[int]]:
        """(prompt ids, response ids); the response ids end with ``end_id``. No length limits here.
        ``field`` names the reply in errors (an earlier assistant turn, for :meth:`reply_spans`)."""
        where = source or "<record>"
        p = self.prompt_ids(prompt, where)
        if self.template is None:
            return p, self._plain_response(prompt, response)
        full = self._render(as_conversation(prompt) + [{"role": "assistant", "content": response}], False,
                            source=where)
        if full[:len(p)] != p:
            i = next((j for j, (a, b) in enumerate(zip(full, p)) if a != b), min(len(full), len(p)))
            lead = response[:len(response) - len(response.lstrip())]
            if lead and i >= len(p) - 1:  # the generation prompt's last token is what changed
                raise DataError(
                    f"{where}: {field}: starts with whitespace ({lead!r}) that the tokenizer joins with the "
                    f"end of the generation prompt ({self._show(p[i:])} becomes {self._show(full[i:i + 1])}), "
                    f"so no prompt/response boundary falls between them; remove the reply's leading whitespace")
            raise DataError(
                f"{where}: chat template: the conversation rendered with the reply does not begin with the "
                f"rendered prompt (first difference at token {i} of {len(p)}: "
                f"{self._show(full[i:i + 3])} instead of {self._show(p[i:i + 3])}); the template changes "
                f"earlier turns once a reply follows, or the reply merges with the generation prompt, "
                f"so the prompt/response boundary would be wrong")
        rest = full[len(p):]
        if self.end_id not in rest:
            raise DataError(f"{where}: chat template: the assistant turn has no end-of-turn token "
                            f"{self.token(self.end_id)}")
        return p, rest[:rest.index(self.end_id) + 1]

    def reply_spans(self, prompt: PromptInput, prompt_ids: list[int], source: str = "") -> list[tuple[int, int]]:
        """[start, end) positions in ``prompt_ids`` (the ids of ``prompt``) of each assistant reply among a
        multi-turn prompt's turns that follow a user turn: what SFT trains on besides the last reply
        (``loss_turns=all``).

        A reply's ids are what :meth:`encode` gives its turns up to it: with a template, the reply and
        its end-of-turn token; in plain text its words alone (the transcript goes on to the next turn,
        with no EOS). Those ids must be where the whole prompt has them: a template that renders an
        earlier reply differently once later turns follow (one that drops earlier reasoning, say), or a
        tokenizer that merges a reply's last word with the next turn, is an error naming the record."""
        if isinstance(prompt, str):
            return []
        where = source or "<record>"
        spans = []
        for i, turn in enumerate(prompt):
            if turn["role"] != "assistant" or not any(m["role"] == "user" for m in prompt[:i]):
                continue  # a greeting before the user's first turn answers nothing: context, like a system turn
            if self.template is None:  # the transcript's words (stripped, as it writes them); EOS ends the last reply only
                before, reply = self.encode(prompt[:i], turn["content"].strip(), where)
                reply = reply[:-1]
            else:
                try:
                    before, reply = self.encode(prompt[:i], turn["content"], where, field=f"assistant turn {i}")
                except DataError as e:
                    raise DataError(f"{e}; or set loss_turns=last to train on the last reply only (this turn "
                                    f"then stays context, as written)") from None
            start, end = len(before), len(before) + len(reply)
            if prompt_ids[:end] != before + reply:
                raise DataError(
                    f"{where}: assistant turn {i}: its tokens in the whole conversation differ from those of "
                    f"the conversation up to it ({self._show(reply[:3])}... at token {start}), so it cannot be "
                    f"trained as a reply; set loss_turns=last to train on the last reply only")
            spans.append((start, end))
        return spans

    @contextmanager
    def tokenized_ahead(self, pairs: Sequence[tuple[PromptInput, str]]) -> Iterator[None]:
        """Within the block, :meth:`encode` of these plain-text (prompt, response) pairs reads their texts'
        ids from two batch calls of the tokenizer made here (texts with and without its special tokens), not
        from some four calls a pair: the same ids, each text tokenized once. A chat template is rendered a
        conversation at a time as before; a pair whose prompt is malformed is left to :meth:`encode` to name."""
        if self.template is None:
            plain: set[str] = set()
            special: set[str] = set()
            for prompt, response in pairs:
                self._plain_texts(prompt, response, plain, special)
            self._tokenize_batch(plain, special_tokens=False)
            self._tokenize_batch(special, special_tokens=True)
        try:
            yield
        finally:
            self._ahead.clear()

    # ---- internals

    def _plain_texts(self, prompt: PromptInput, response: str, plain: set[str], special: set[str]) -> None:
        """Add the texts that encoding (prompt, response) in plain text tokenizes (see _plain_response)."""
        try:
            text = self._plain_prompt(prompt)
        except DataError:
            return
        special.add(text)
        plain.add(text)
        if response and isinstance(prompt, str):
            plain.add(text + response)
        elif response:
            plain.update(("a", "a " + response))

    def _tokenize_batch(self, texts: set[str], special_tokens: bool) -> None:
        if texts:
            texts = list(texts)
            ids = self.tokenizer(texts, add_special_tokens=special_tokens, split_special_tokens=True)["input_ids"]
            self._ahead.update(((text, special_tokens), list(i)) for text, i in zip(texts, ids, strict=True))

    def _tokenize(self, text: str, special_tokens: bool) -> list[int]:
        ahead = self._ahead.get((text, special_tokens))
        if ahead is not None:
            return list(ahead)
        return self.tokenizer(text, add_special_tokens=special_tokens, split_special_tokens=True)["input_ids"]

    def _plain_prompt(self, prompt: PromptInput, source: str = "<prompt>") -> str:
        if isinstance(prompt, str):
            return prompt if prompt.endswith("\n") else prompt + "\n"
        return render_messages(list(prompt), source=source)  # ends with the "Assistant:" cue

    def text_ids(self, text: str) -> list[int]:
        """Ids of a text the model reads from its start (a plain-text prompt): with the special tokens the
        tokenizer puts before a text (BOS), not with one it appends (the EOS of a tokenizer with
        ``add_eos_token``: the response, or the model's continuation, follows the text, not a document end).
        Special-token strings in the text are text."""
        bare = self._ids(text)
        full = self._tokenize(text, special_tokens=True)
        for start in range(len(full) - len(bare) + 1):
            if full[start:start + len(bare)] == bare:
                return full[:start + len(bare)]
        return full

    def continuation_ids(self, text: str) -> list[int]:
        """Ids of ``text`` where it continues a line: " blue" after "The sky is" is one word with its
        space on every tokenizer, also on those (such as the world's, or SentencePiece ones) that mark
        the start of a text as a word start and would give " blue" alone a stray space token."""
        return self._ids_after("a", text)

    def _ids_after(self, before: str, text: str) -> list[int]:
        """Ids of ``text`` as they fall when it follows ``before`` in one text, as the model read text
        in pretraining; ``text`` alone when the two merge across the boundary."""
        head = self._ids(before)
        ids = self._ids(before + text)
        return ids[len(head):] if ids[:len(head)] == head else self._ids(text)

    def _ids(self, text: str) -> list[int]:
        return self._tokenize(text, special_tokens=False)

    def _plain_response(self, prompt: PromptInput, response: str) -> list[int]:
        if not response:
            return [self.end_id]
        if isinstance(prompt, str):  # the reply starts a line of its own: "red" after "\n", not "▁red"
            return self._ids_after(self._plain_prompt(prompt), response) + [self.end_id]
        return self.continuation_ids(" " + response) + [self.end_id]  # "Assistant: reply", as in earlier turns

    def _render(self, conversation: Conversation, generation_prompt: bool, tokenize: bool = True,
                source: str = "<prompt>"):
        if tokenize:
            _check_no_control_markers(conversation, source)
        try:
            out = self.tokenizer.apply_chat_template(
                conversation, chat_template=self._dated_template, add_generation_prompt=generation_prompt,
                tokenize=tokenize, return_dict=tokenize, sanitize_control_tokens=tokenize)
        except Exception as e:  # jinja's TemplateError, raise_exception() in templates, missing variables
            raise DataError(f"{source}: chat template: cannot render this conversation: {e}") from None
        return list(out["input_ids"]) if tokenize else out

    def _show(self, ids: Sequence[int]) -> str:
        return repr("".join(self.token(i) for i in ids))

    def _find_end_of_turn(self) -> int:
        """The first special token the template writes after an assistant reply."""
        conv = [{"role": "user", "content": "Hi"}]
        origin = "the tokenizer's" if self.origin == "tokenizer" else self.origin
        try:
            prompt = self._render(conv, True, tokenize=False)
            full = self._render(conv + [{"role": "assistant", "content": _PROBE}], False, tokenize=False)
        except DataError as e:
            raise ConfigError(f"chat_template: {origin}: {str(e).split(': ', 1)[1]}") from None
        if not full.startswith(prompt):
            raise ConfigError(f"chat_template: {origin}: a conversation rendered with a reply does not begin "
                              f"with the rendered prompt, so the reply cannot be separated from its prompt")
        turn = full[len(prompt):]
        at = turn.find(_PROBE)
        if at < 0:
            raise ConfigError(f"chat_template: {origin}: the assistant's reply does not appear verbatim in "
                              f"the rendering ({turn!r})")
        if turn[:at].strip():
            raise ConfigError(f"chat_template: {origin}: {turn[:at]!r} is written before the reply but not by "
                              f"the generation prompt (does the template handle add_generation_prompt?)")
        after = self.tokenizer(turn[at + len(_PROBE):], add_special_tokens=False)["input_ids"]
        for i in after:
            if i in self._special:
                return i
        raise ConfigError(f"chat_template: {origin}: no special token follows the assistant's reply "
                          f"({turn[at + len(_PROBE):]!r}), so a response could not end; end turns with a "
                          f"special token such as {{{{ eos_token }}}}")


#: Private-use characters transformers wraps around special-token text in messages (sanitize_control_tokens)
#: and deletes from every message before rendering.
_CONTROL_MARKERS = ("\U000f0000", "\U000f0001")


def _check_no_control_markers(conversation: Conversation, source: str) -> None:
    """A message holding one of :data:`_CONTROL_MARKERS` is an error naming it: the template's tokens would be
    those of the text without it (kept as written in plain text, silently changed with a template)."""
    for i, m in enumerate(conversation):
        found = [f"U+{ord(c):05X}" for c in _CONTROL_MARKERS if c in m["content"]]
        if found:
            raise DataError(f"{source}: message {i} ({m['role']}): holds {' and '.join(found)}, private-use "
                            f"characters transformers' chat templates use to mark special-token text and delete "
                            f"from messages, so the model would read the text without them; remove them (or use "
                            f"chat_template=none)")


def _model_config(folder: Path):
    from transformers import AutoConfig
    return AutoConfig.from_pretrained(str(folder))


def special_ids(tokenizer) -> set[int]:
    """Ids of special tokens: the named ones and added tokens marked special (e.g. <|eot_id|>)."""
    ids = set(tokenizer.all_special_ids)
    for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return ids
