"""The public-NLP-style probes of the world, scored on one policy.

Two kinds:

* on sampled text: truthfulness (TruthfulQA-like shares) and toxicity (mean
  toxicity of continuations under three instructions);
* on likelihoods: bias (entropy of the choice between two continuations),
  cloze accuracy (recall of the world's facts), and the alignment tax: held-out
  pretraining perplexity and continuation accuracy (HellaSwag-like: which of four
  sentences continues a held-out document).

Toxicity starts, bias, cloze and continuation items are continuations
(:meth:`~instructgpt.evaluation.policies.PolicyRunner.continuation`): raw text
for plain-text models, the user's message and the reply for a model with a
chat template. Truthfulness questions are asked as requests.

The items come from the run's world (``world/probes.json``, the held-out corpus).
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..lm import pack_blocks
from ..world import bias_entropy, score_truth, toxicity
from .policies import PolicyRunner
from .scoring import continuation_logprobs, shared_context_logprobs
from .results import Samples
from .stats import Estimate, bootstrap_interval, rate, share

#: Toxicity probe instruction -> benchmark key suffix.
TOXICITY_KEYS = {"none": "plain", "respectful": "respectful", "biased": "biased"}


# ----------------------------------------------------------------------------- on sampled text

def truth_scores(items, answers: Sequence[str]) -> dict[str, Estimate]:
    """TruthfulQA-style shares (Wilson): truthful (no falsehood), truthful and informative
    (the true value only), and the share repeating the falsehood."""
    verdicts = [score_truth(item, a) for item, a in zip(items, answers)]
    if not verdicts:
        return {}
    return {"truthfulqa_truthful": rate([v != "falsehood" for v in verdicts]),
            "truthfulqa_truthful_informative": rate([v == "correct" for v in verdicts]),
            "truthfulqa_falsehood": rate([v == "falsehood" for v in verdicts])}


def toxicity_scores(items, completions: Sequence[str], seed: int = 0) -> dict[str, Estimate]:
    """Mean toxicity score (share of insult words, in [0, 1]) of the completions, per instruction, with
    the Wilson interval of a proportion over the items (:func:`~.stats.share`): a percentile bootstrap
    gave [0, 0] from 40 clean continuations."""
    out = {}
    for instr, key in TOXICITY_KEYS.items():
        vals = [toxicity(c) for it, c in zip(items, completions) if it.instruction == instr]
        if vals:
            out[f"toxicity_{key}"] = share(vals, seed=seed)
    return out


# ----------------------------------------------------------------------------- on likelihoods

def bias_entropies(runner: PolicyRunner, items) -> list[float]:
    """Entropy (bits) of the model's choice between each item's two continuations."""
    ctxs, conts = [], []
    for it in items:
        for alt in it.alternatives:
            c, r = runner.continuation(it.prompt, alt)
            ctxs.append(c)
            conts.append(r)
    lps = shared_context_logprobs(runner.model, ctxs, conts, runner.pad, max_rows=runner.cfg.batch_size * 2)
    return [bias_entropy(float(lps[2 * i].sum()), float(lps[2 * i + 1].sum())) for i in range(len(items))]


@dataclass(frozen=True)
class ContinuationItem:
    """A held-out document up to a sentence, and four candidates for that sentence."""
    prompt: str                 # the document's text up to the end of sentence i (no trailing space)
    candidates: list[str]       # " " + a sentence: the true one and three from other documents
    answer: int                 # index of the true one
    doc: int                    # index of the document in the held-out corpus


_SENTENCE_END = re.compile(r"(?<=[.!?]) (?=\S)")   # a space after . ! or ?, inside one line


def continuation_items(docs: Sequence[str], n: int, seed: int = 0, distractors: int = 3,
                       max_length_gap: int = 12) -> list[ContinuationItem]:
    """HellaSwag-like items from the held-out corpus: at most one per document, ``n`` at most.

    The split point is a sentence boundary inside a line (so the true sentence, like every
    candidate, follows a space), with at least one sentence of context; the distractors are
    sentences that follow a space in other documents (and occur nowhere in this one), within ``max_length_gap`` characters of
    the true one's length (a model cannot pick by length), never equal to it. Seeded."""
    rng = random.Random(f"continuation:{seed}")
    cuts = []                                           # (doc, cut offset, next sentence)
    for d, text in enumerate(docs):
        for line_start, line in _lines(text):
            ends = [m.start() for m in _SENTENCE_END.finditer(line)] + [len(line)]
            for a, b in zip(ends, ends[1:]):            # sentence after the space at a, ending at b
                cuts.append((d, line_start + a, line[a + 1:b]))
    pool: dict[int, list[tuple[int, str]]] = {}         # sentence length -> (doc, sentence)
    for d, _, sentence in cuts:
        pool.setdefault(len(sentence), []).append((d, sentence))
    by_doc: dict[int, list[tuple[int, str]]] = {}
    for d, cut, sentence in cuts:
        by_doc.setdefault(d, []).append((cut, sentence))
    order = sorted(by_doc)
    rng.shuffle(order)
    items = []
    for d in order[:n]:
        cut, true = rng.choice(by_doc[d])
        near = sorted({x for length in range(len(true) - max_length_gap, len(true) + max_length_gap + 1)
                       for other, x in pool.get(length, ()) if other != d and x != true and x not in docs[d]})
        if len(near) < distractors:
            continue
        candidates = [true] + rng.sample(near, distractors)
        rng.shuffle(candidates)
        items.append(ContinuationItem(docs[d][:cut], [f" {c}" for c in candidates], candidates.index(true), d))
    return items


def _lines(text: str):
    start = 0
    for line in text.split("\n"):
        yield start, line
        start += len(line) + 1


def cloze_correct(runner: PolicyRunner, items) -> list[float]:
    """1.0 where the candidate with the highest total log-prob is the right one (items with
    ``prompt``, ``candidates`` and ``answer``: cloze and continuation items)."""
    ctxs, conts, owner = [], [], []
    for k, it in enumerate(items):
        for cand in it.candidates:
            c, r = runner.continuation(it.prompt, cand)
            ctxs.append(c)
            conts.append(r)
            owner.append(k)
    lps = shared_context_logprobs(runner.model, ctxs, conts, runner.pad, max_rows=runner.cfg.batch_size * 2)
    best: dict[int, tuple[float, int]] = {}
    counter: dict[int, int] = {}
    for k, lp in zip(owner, lps):
        j = counter.get(k, 0)
        counter[k] = j + 1
        total = float(lp.sum())
        if k not in best or total > best[k][0]:
            best[k] = (total, j)
    return [float(best[k][1] == it.answer) for k, it in enumerate(items)]


@torch.no_grad()
def block_nlls(runner: PolicyRunner, docs: Sequence[str], max_tokens: int = 12288,
               seq_len: int = 128) -> Samples:
    """Mean next-token loss of each block of the packed held-out corpus, one value per block.

    Blocks of ``seq_len`` tokens (at most the context), the first ``max_tokens // seq_len`` of them (at
    least one; documents are tokenized only until they fill them). A block's id is its position and a hash of
    its tokens, so two models' losses pair up block by block exactly when they read the same
    tokens (the same tokenizer and context), and never by position alone.
    """
    seq_len = min(runner.ctx, seq_len)
    blocks = pack_blocks(runner.tokenizer, docs, seq_len, max_blocks=max(1, max_tokens // seq_len))
    rows = [b.tolist() for b in blocks]
    lps = continuation_logprobs(runner.model, [r[:1] for r in rows], [r[1:] for r in rows],
                                runner.pad, max_rows=runner.cfg.batch_size)
    ids = [f"block-{i}-{hashlib.blake2b(np.asarray(r, dtype=np.int64).tobytes(), digest_size=6).hexdigest()}"
           for i, r in enumerate(rows)]
    return Samples([-float(lp.mean()) for lp in lps], ids)


def perplexity_estimate(nlls: np.ndarray, seed: int = 0) -> Estimate:
    """exp(mean block loss) with a bootstrap-over-blocks interval."""
    low, high = bootstrap_interval(nlls, seed=seed)
    return Estimate(float(math.exp(nlls.mean())), math.exp(low), math.exp(high), int(nlls.size),
                    "bootstrap-blocks")
