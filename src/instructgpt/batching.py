"""Records to token ids under a stage's limits, and padding them into tensors.

``chat.ChatFormat`` decides how a prompt and a response become ids (chat
template or plain text); ``RecordEncoder`` applies what must fit:

- ``max_prompt_tokens``: a longer prompt is an error naming its record;
- ``max_seq_len`` (training): prompt + response; a longer response is cut (and
  marked ``truncated``, so it no longer ends with the end-of-turn token);
- the model's positions (``ModelContext``): prompt + ``max_new_tokens`` for
  generation, prompt + (cut) response for training, must fit, else an error
  names the record and the numbers.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .chat import CHAT_TEMPLATE_HELP, ChatFormat, PromptInput
from .config import ConfigError, opt
from .data import DataError

_NAMED_RECORDS = 3  # records a note about many names before "and N more"
_POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")


@dataclass
class TrainingSequenceOptions:
    """What a supervised stage (SFT, RM) reads besides its records: how they become token ids, and dropout."""
    prompts: str = opt("", "Prompts JSONL resolving prompt_id references (optional).")
    dropout: float = opt(0.0, "Dropout while training: every dropout the architecture has (0 = off; the saved "
                              "config keeps the base model's own values).")
    max_prompt_tokens: int = opt(128, "Longer prompts are an error naming the record.")
    max_seq_len: int = opt(256, "Prompt + response tokens; longer responses are cut (counted in the log).")
    chat_template: str = opt("auto", CHAT_TEMPLATE_HELP)

    def validate_sequence_options(self) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout: must be in [0, 1) (0 = off), got {self.dropout}")
        if self.max_prompt_tokens < 1 or self.max_seq_len < 0:
            raise ConfigError(f"max_prompt_tokens, max_seq_len: must be >= 1 and >= 0 (0 = no limit), got "
                              f"{self.max_prompt_tokens}, {self.max_seq_len}")


def compact(ids: Sequence[int]) -> array:
    """Token ids as 4 bytes each (``array('i')``), not a list's 36 (a pointer and an int object per id above
    256): a training set is held whole in memory, and the paper's 33k K=9 rankings are some 10^8 tokens."""
    return ids if isinstance(ids, array) and ids.typecode == "i" else array("i", ids)


@dataclass(slots=True)
class Encoded:
    """One prompt + response as token ids; ``response_ids`` ends with the end token unless truncated.
    Both are held compact (:func:`compact`), in an object without a ``__dict__`` (a training set holds one per
    response); ``ids`` is a list. ``reply_spans``: [start, end) positions of
    earlier assistant replies inside ``prompt_ids`` that the next-token loss counts too (multi-turn SFT with
    ``loss_turns=all``)."""
    prompt_ids: Sequence[int]
    response_ids: Sequence[int]
    source: str = ""
    truncated: bool = False
    reply_spans: tuple[tuple[int, int], ...] = ()

    def __post_init__(self):
        self.prompt_ids, self.response_ids = compact(self.prompt_ids), compact(self.response_ids)

    @property
    def ids(self) -> list[int]:
        """Prompt + response ids (a new list)."""
        return self.prompt_ids.tolist() + self.response_ids.tolist()


@dataclass
class ModelContext:
    """How many positions a model attends over (None = unknown: nothing is checked) and where that comes from."""
    positions: int | None
    origin: str = "unknown"

    @classmethod
    def of(cls, config, tokenizer=None) -> "ModelContext":
        """From a model config (``max_position_embeddings``, ``n_positions``, ...); the tokenizer's
        ``model_max_length`` only when the config has none (tokenizers often hold a placeholder)."""
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        for key in _POSITION_KEYS:
            value = getattr(text_config, key, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return cls(value, f"{key} in the model config")
        limit = getattr(tokenizer, "model_max_length", None)
        if isinstance(limit, int) and 0 < limit < 10 ** 8:
            return cls(limit, "model_max_length of the tokenizer")
        return cls(None)

    @classmethod
    def of_model(cls, spec, tokenizer=None) -> "ModelContext":
        """From a model folder, .gguf file or alias, reading its config only (before loading weights)."""
        import transformers

        from . import lora
        from .models import resolve_source
        src = resolve_source(spec)
        if src.adapter:  # a LoRA adapter folder has the positions of the model it adapts
            return cls.of_model(lora.adapter_base(src.folder), tokenizer)
        try:
            config = transformers.AutoConfig.from_pretrained(src.folder, **src.kwargs())
        except (OSError, ValueError) as e:
            return cls(None, f"unknown (config unreadable: {e})")
        return cls.of(config, tokenizer)

    def describe(self) -> str:
        return f"{self.positions} positions ({self.origin})" if self.positions else "unknown context length"


class RecordEncoder:
    """Prompts and (prompt, response) pairs to ids, in one stage's format and limits.

    ``max_seq_len`` is for pairs (training), ``max_new_tokens`` for prompts
    that will be sampled from; 0 leaves that limit out.
    """

    def __init__(self, fmt: ChatFormat, context: ModelContext | None, max_prompt_tokens: int,
                 max_seq_len: int = 0, max_new_tokens: int = 0):
        self.fmt = fmt
        self.context = context or ModelContext(None)
        self.max_prompt_tokens, self.max_seq_len, self.max_new_tokens = max_prompt_tokens, max_seq_len, max_new_tokens

    def prompt(self, prompt: PromptInput, source: str = "") -> list[int]:
        """Prompt ids; an over-long prompt, or one that leaves no room for ``max_new_tokens``, is an error."""
        ids = self.fmt.prompt_ids(prompt, source)
        self._check_prompt(ids, source)
        n, positions = len(ids), self.context.positions
        if self.max_new_tokens and positions and n + self.max_new_tokens > positions:
            raise DataError(f"{source or '<prompt>'}: prompt: {n} tokens + max_new_tokens={self.max_new_tokens} "
                            f"= {n + self.max_new_tokens}, over the model's {self.context.describe()} "
                            f"(shorten the prompt or lower max_new_tokens)")
        return ids

    def pair(self, prompt: PromptInput, response: str, source: str = "", earlier_replies: bool = False) -> Encoded:
        """Prompt + response ids; a response that does not fit ``max_seq_len`` is cut (and marked).
        ``earlier_replies``: mark the prompt's own assistant turns as trained too (``Encoded.reply_spans``)."""
        p, r = self.fmt.encode(prompt, response, source)
        self._check_prompt(p, source)
        truncated = False
        if self.max_seq_len:
            room = self.max_seq_len - len(p)
            if room < 1:
                raise DataError(f"{source}: prompt: {len(p)} tokens leave no room for a response in "
                                f"max_seq_len={self.max_seq_len}")
            truncated = len(r) > room
            r = r[:room]
        positions = self.context.positions
        if positions and len(p) + len(r) > positions:
            raise DataError(f"{source}: sequence: {len(p) + len(r)} tokens (prompt {len(p)} + response {len(r)}), "
                            f"over the model's {self.context.describe()} "
                            f"(set max_seq_len to {positions} or less)")
        spans = tuple(self.fmt.reply_spans(prompt, p, source)) if earlier_replies else ()
        return Encoded(p, r, source, truncated, spans)

    def _check_prompt(self, ids: list[int], source: str) -> None:
        if len(ids) > self.max_prompt_tokens:
            raise DataError(f"{source or '<prompt>'}: prompt: {len(ids)} tokens, over the limit of "
                            f"{self.max_prompt_tokens} (raise max_prompt_tokens or shorten the prompt)")


def truncation_note(stage: str, examples: Sequence[Encoded], max_seq_len: int, fmt: ChatFormat,
                    what: str) -> str | None:
    """The line a training stage prints when ``max_seq_len`` cut some of its responses (None when none was),
    naming the first records cut; ``what`` says what the cut changes in that stage."""
    cut = [e for e in examples if e.truncated]
    if not cut:
        return None
    records = list(dict.fromkeys(e.source for e in cut if e.source))
    named = ", ".join(records[:_NAMED_RECORDS]) + (f" and {len(records) - _NAMED_RECORDS} more"
                                                   if len(records) > _NAMED_RECORDS else "")
    return (f"{stage}: {len(cut)} of {len(examples)} responses cut to fit max_seq_len={max_seq_len} (prompt + "
            f"response tokens): they lose their end and {fmt.token(fmt.end_id)}, so {what} (raise max_seq_len "
            f"to keep them whole)" + (f"; cut: {named}" if named else ""))


def pad(seqs: list[list[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Lists of ids -> (B, T) ids and (B, T) attention mask, padded on ``side``."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        if side == "right":
            ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, :len(s)] = 1
        else:
            ids[i, T - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, T - len(s):] = 1
    return ids, mask


def collate_lm(examples: list[Encoded], pad_id: int, response_only: bool = True) -> dict[str, torch.Tensor]:
    """Right-padded batch with ``loss_mask`` (B, T): 1 on response tokens and the prompt's ``reply_spans``
    (or on all real tokens)."""
    ids, mask = pad([e.ids for e in examples], pad_id, "right")
    loss_mask = torch.zeros_like(mask)
    for i, e in enumerate(examples):
        start = len(e.prompt_ids) if response_only else 0
        loss_mask[i, start:len(e.ids)] = 1
        for a, b in e.reply_spans if response_only else ():
            loss_mask[i, a:b] = 1
    return {"input_ids": ids, "attention_mask": mask, "loss_mask": loss_mask}


def collate_rankings(rankings: list[list[Encoded]], pairs: list[list[tuple[int, int]]],
                     pad_id: int) -> dict[str, torch.Tensor]:
    """A batch of rankings: every response once, plus the index tensors of all their pairs.

    rankings[g] holds the K_g encoded responses of ranking g; pairs[g] its
    (winner, loser) pairs as indices into that ranking. Returns input_ids and
    attention_mask (N, T) with N = sum K_g, and winners, losers, pair_group (P,).
    """
    flat, winners, losers, group = [], [], [], []
    for g, (encoded, ps) in enumerate(zip(rankings, pairs)):
        offset = len(flat)
        flat.extend(e.ids for e in encoded)
        for w, l in ps:
            winners.append(offset + w)
            losers.append(offset + l)
            group.append(g)
    ids, mask = pad(flat, pad_id, "right")
    as_long = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
    return {"input_ids": ids, "attention_mask": mask, "winners": as_long(winners),
            "losers": as_long(losers), "pair_group": as_long(group)}
