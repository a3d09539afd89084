"""Automatic judges of two answers to one prompt: a reward model, and a judge model asked in both orders.

Every judge turns (prompt, a model's answer, the baseline's answer) into an
*outcome* from the model's side: 1 win, 0 loss, 0.5 tie (the convention of
:mod:`.stats`). Identical answers (up to whitespace) are a tie without asking.

* :func:`reward_model_outcomes`: the answer the reward model scores higher
  wins; equal scores tie.
* :class:`JudgeModel`: a causal LM reads :data:`JUDGE_PROMPT` (rendered through
  its own chat template by :class:`~instructgpt.chat.ChatFormat`) and its
  next-token probabilities of the letters "A" and "B" give the verdict: the
  letter with the higher probability, which is its greedy choice between the
  two. :func:`pairwise_outcomes` asks every pair in both orders (the model's
  answer first as A, then as B): a judge that prefers the same answer both
  times decides the comparison, a judge that changes its mind with the order
  (position bias) gives a tie. So a judge that always says "A" gives 100% ties
  and a win rate of exactly 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from ..batching import ModelContext, pad
from ..chat import ChatFormat
from ..data import DataError, Prompt
from ..models import position_ids_from_mask
from .judging import normalized

#: The judge model's instructions; {request}, {a} and {b} are filled in (see docs/evaluation.md).
JUDGE_PROMPT = """\
You are comparing two responses of AI assistants to the same request. Decide which response is better.
A better response does what the request asks and respects every constraint it states; it is helpful, \
truthful (it makes nothing up) and harmless; and it is no longer than it needs to be.
The order in which the responses are shown does not matter, and neither does their length for its own sake.

[Request]
{request}

[Response A]
{a}

[Response B]
{b}

Which response is better? Answer with a single letter: A or B."""

#: How an empty answer is shown to the judge model (it is scored as the end token alone elsewhere).
EMPTY_ANSWER = "(empty response)"


# ----------------------------------------------------------------------------- outcomes

def reward_model_outcomes(model_scores: Sequence[float], baseline_scores: Sequence[float],
                          model_answers: Sequence[str], baseline_answers: Sequence[str]) -> list[float]:
    """Per prompt: 1 if the reward model scores the model's answer higher than the baseline's,
    0 if lower, 0.5 if equal or if the two answers are the same text."""
    out = []
    for s, b, a_text, b_text in zip(model_scores, baseline_scores, model_answers, baseline_answers):
        if normalized(a_text) == normalized(b_text) or s == b:
            out.append(0.5)
        else:
            out.append(1.0 if s > b else 0.0)
    return out


class PairJudge(Protocol):
    """Anything that reads (request, answer A, answer B) and says how likely A is the better one."""

    def prob_a(self, requests: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> list[float]:
        """P(A is better) per pair, in [0, 1]; 0.5 means no preference."""
        ...


@dataclass
class PairVerdicts:
    """A judge's verdicts on the pairs (model answer, baseline answer), asked in both orders.

    model_first / model_second: P(the model's answer is better) with the model's answer
    shown as A / as B; None where the answers are identical (not asked).
    """
    model_first: list[float | None]
    model_second: list[float | None]

    @property
    def outcomes(self) -> list[float]:
        """1 where both orders prefer the model's answer, 0 where both prefer the baseline's,
        0.5 where the orders disagree, a probability is exactly 0.5, or the answers are identical."""
        out = []
        for p, q in zip(self.model_first, self.model_second):
            if p is None or q is None:
                out.append(0.5)
                continue
            first, second = _side(p), _side(q)
            out.append(first if first == second else 0.5)
        return out

    @property
    def preference(self) -> list[float]:
        """P(the model's answer is better), averaged over the two orders (0.5 for identical answers)."""
        return [0.5 if p is None or q is None else (p + q) / 2 for p, q in zip(self.model_first, self.model_second)]

    @property
    def consistent(self) -> list[bool]:
        """Per asked pair: True when both orders prefer the same answer (identical answers left out)."""
        return [_side(p) == _side(q) != 0.5 for p, q in zip(self.model_first, self.model_second)
                if p is not None and q is not None]

    @property
    def first_position(self) -> list[float]:
        """Per asked verdict (both orders): 1 when the judge preferred the answer shown as A."""
        out = []
        for p, q in zip(self.model_first, self.model_second):
            if p is not None and q is not None:
                out += [float(p > 0.5), float(1 - q > 0.5)]
        return out


def _side(p: float) -> float:
    return 1.0 if p > 0.5 else 0.0 if p < 0.5 else 0.5


def pairwise_outcomes(judge: PairJudge, prompts: Sequence[Prompt], model_answers: Sequence[str],
                      baseline_answers: Sequence[str]) -> PairVerdicts:
    """Ask ``judge`` about every (model answer, baseline answer) pair in both orders."""
    ask = [i for i, (a, b) in enumerate(zip(model_answers, baseline_answers)) if normalized(a) != normalized(b)]
    reqs = [prompts[i] for i in ask]
    mine, base = [str(model_answers[i]) for i in ask], [str(baseline_answers[i]) for i in ask]
    first = judge.prob_a(reqs, mine, base) if ask else []                       # the model's answer as A
    second = [1.0 - p for p in judge.prob_a(reqs, base, mine)] if ask else []  # ... and as B
    model_first: list[float | None] = [None] * len(prompts)
    model_second: list[float | None] = [None] * len(prompts)
    for j, i in enumerate(ask):
        model_first[i], model_second[i] = first[j], second[j]
    return PairVerdicts(model_first, model_second)


# ----------------------------------------------------------------------------- the judge model

def judge_request(prompt: Prompt, a: str, b: str) -> str:
    """The judge prompt for one pair (empty answers shown as EMPTY_ANSWER)."""
    return JUDGE_PROMPT.format(request=prompt.text.strip(), a=str(a).strip() or EMPTY_ANSWER,
                               b=str(b).strip() or EMPTY_ANSWER)


def judge_prompt_ids(fmt: ChatFormat, context: ModelContext, prompt: Prompt, a: str, b: str) -> list[int]:
    """The judge prompt of one pair in the judge's format; longer than its context is an error naming the prompt."""
    ids = fmt.prompt_ids(judge_request(prompt, a, b), prompt.source or prompt.id)
    if context.positions and len(ids) >= context.positions:
        answers = "and both answers" if str(a).strip() or str(b).strip() else "with empty answers"
        raise DataError(f"judge_model: {prompt.source or prompt.id}: the judge prompt (request {answers}) "
                        f"is {len(ids)} tokens, over the judge's {context.describe()}; lower "
                        f"max_new_tokens or use a judge with a longer context")
    return ids


def check_judge_context(judge: str, tokenizer, prompts: Sequence[Prompt]) -> None:
    """Before any model answers: every prompt's judge prompt, with empty answers, must fit the judge's
    context (read from its config, weights not loaded). Its answers are checked when judged."""
    fmt, context = ChatFormat.load(tokenizer, "auto"), ModelContext.of_model(judge, tokenizer)
    for p in prompts:
        judge_prompt_ids(fmt, context, p, "", "")


class JudgeModel:
    """A causal LM as a pairwise judge: P(A) vs P(B) for its first reply token.

    The request and both answers are written into :data:`JUDGE_PROMPT`, which is
    sent as one user message through the judge's own chat format (``ChatFormat``
    with ``chat_template`` "auto": its tokenizer's template, else plain text).
    The letters' ids are the first reply token of the replies "A" and "B" in
    that format. P(A is better) = p(A) / (p(A) + p(B)) at the reply's first position.
    """

    def __init__(self, model, tokenizer, chat_template: str = "auto", batch_size: int = 16, name: str = "judge"):
        self.model, self.tokenizer, self.batch_size, self.name = model, tokenizer, batch_size, name
        self.fmt = ChatFormat.load(tokenizer, chat_template)
        self.context = ModelContext.of(model.config, tokenizer)
        probe = judge_request(Prompt("-", "?", "-"), "x", "y")
        self.letter_ids = (self.fmt.encode(probe, "A")[1][0], self.fmt.encode(probe, "B")[1][0])
        if self.letter_ids[0] == self.letter_ids[1]:
            raise DataError(f"judge_model: {name}: the replies 'A' and 'B' begin with the same token")

    def describe(self) -> str:
        a, b = (self.fmt.token(i) for i in self.letter_ids)
        return f"{self.name}: {self.fmt.describe()}; verdict tokens {a!r} / {b!r}"

    def request_ids(self, prompt: Prompt, a: str, b: str) -> list[int]:
        """The judge's prompt ids for one pair; longer than the judge's context is an error naming the prompt."""
        return judge_prompt_ids(self.fmt, self.context, prompt, a, b)

    @torch.no_grad()
    def prob_a(self, requests: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> list[float]:
        seqs = [self.request_ids(p, x, y) for p, x, y in zip(requests, a, b)]
        device = next(self.model.parameters()).device
        letters = torch.tensor(self.letter_ids, device=device)
        out: list[float] = [0.5] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            ids, mask = pad([seqs[i] for i in idx], self.tokenizer.pad_token_id, "left")
            ids, mask = ids.to(device), mask.to(device)
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                                logits_to_keep=1).logits[:, -1].float()      # (B, V)
            pair = torch.log_softmax(logits, -1)[:, letters]                  # (B, 2) log p(A), log p(B)
            p_a = torch.softmax(pair, -1)[:, 0].cpu().tolist()                # p(A) / (p(A) + p(B))
            for i, p in zip(idx, p_a):
                out[i] = float(p) if math.isfinite(p) else 0.5
        return out
