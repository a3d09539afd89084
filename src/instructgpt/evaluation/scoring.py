"""Scoring token sequences: log-probs of continuations, KL to the SFT policy, reward-model scores.

All three take token ids (from :class:`~instructgpt.evaluation.policies.PolicyRunner`,
or the reward model's own :class:`~instructgpt.chat.ChatFormat`) and batch by
length so that little padding is computed.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..batching import ModelContext, RecordEncoder, pad
from ..chat import ChatFormat
from ..data import Prompt
from ..losses import token_logprobs
from ..models import position_ids_from_mask, same_vocab
from ..reward_model import RewardModel, reads_policy_tokens
from .policies import NO_PROMPT_LIMIT, PolicyRunner, request_input

#: Token budget (batch x length x vocabulary) of one scoring forward pass.
LOGIT_BUDGET = 1 << 25


def _batches(lengths: Sequence[int], vocab: int, max_rows: int):
    """Index lists in order of length, each within LOGIT_BUDGET cells and max_rows rows."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batch: list[int] = []
    for i in order:
        if batch and ((len(batch) + 1) * lengths[i] * vocab > LOGIT_BUDGET or len(batch) >= max_rows):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def _vocab_size(model) -> int:
    """Rows of the model's output embedding (its logits' width)."""
    emb = model.get_output_embeddings()
    return int(emb.weight.shape[0]) if emb is not None else int(model.config.vocab_size)


def _accepts_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@torch.no_grad()
def continuation_logprobs(model, contexts: Sequence[list[int]], continuations: Sequence[list[int]],
                          pad_id: int, temperature: float = 1.0, max_rows: int = 64
                          ) -> list[np.ndarray]:
    """log p(continuation tokens | context), one array per pair (shape (len(continuation),)).

    Contexts must be non-empty. Logits are divided by ``temperature`` (as when
    sampling). Rows are left-padded so that every continuation ends in the last
    column; only the logits over the longest continuation of a batch are
    computed (``logits_to_keep``) when the model supports it.
    """
    if len(contexts) != len(continuations):
        raise ValueError("contexts and continuations differ in length")
    if any(not c for c in contexts):
        raise ValueError("every context needs at least one token")
    seqs = [list(c) + list(r) for c, r in zip(contexts, continuations)]
    vocab = _vocab_size(model)
    keep_ok = _accepts_logits_to_keep(model)
    device = next(model.parameters()).device
    out: list[np.ndarray | None] = [None] * len(seqs)
    for idx in _batches([len(s) for s in seqs], vocab, max_rows):
        ids, mask = pad([seqs[i] for i in idx], pad_id, "left")
        ids, mask = ids.to(device), mask.to(device)
        n_keep = max(len(continuations[i]) for i in idx) + 1  # logits predicting the continuations
        if n_keep <= 1:
            for i in idx:
                out[i] = np.zeros(0, dtype=np.float32)
            continue
        kwargs = {"logits_to_keep": n_keep} if keep_ok else {}
        logits = model(input_ids=ids, attention_mask=mask,
                       position_ids=position_ids_from_mask(mask), **kwargs).logits
        logits = logits[:, -n_keep:-1]                                   # (B, n_keep - 1, V)
        lp = token_logprobs(logits, ids[:, -(n_keep - 1):], temperature).float().cpu().numpy()
        for row, i in enumerate(idx):
            c = len(continuations[i])
            out[i] = lp[row, lp.shape[1] - c:] if c else np.zeros(0, dtype=np.float32)
    return out  # type: ignore[return-value]


def _cache_rows(cache, rows: torch.Tensor):
    """A transformers cache holding the given rows of ``cache`` (which stays as it is)."""
    picked = copy.copy(cache)
    picked.layers = [copy.copy(layer) for layer in cache.layers]
    picked.reorder_cache(rows)                  # index_select into the copies' own tensors
    return picked


def _context_batches(groups: Sequence[tuple[list[int], list[int]]], vocab: int, max_rows: int):
    """Index lists into ``groups`` ((context, its continuations' indices)) in order of context
    length: each batch's continuation rows within max_rows (one group at least) and their logits
    within LOGIT_BUDGET cells."""
    order = sorted(range(len(groups)), key=lambda g: len(groups[g][0]))
    batch: list[int] = []
    rows = 0
    for g in order:
        n = len(groups[g][1])
        if batch and (rows + n > max_rows or (rows + n) * len(groups[g][0]) * vocab > LOGIT_BUDGET):
            yield batch
            batch, rows = [], 0
        batch.append(g)
        rows += n
    if batch:
        yield batch


@torch.no_grad()
def shared_context_logprobs(model, contexts: Sequence[list[int]], continuations: Sequence[list[int]],
                            pad_id: int, temperature: float = 1.0, max_rows: int = 64) -> list[np.ndarray]:
    """What :func:`continuation_logprobs` returns, with one forward pass per distinct context.

    Multiple-choice probes score several candidates after the same text (a continuation
    item's context is a document, its four candidates a sentence each): the context runs
    once, left-padded, with the key/value cache on; its candidates then run right-padded
    behind their context's cache rows, in passes of similar-length candidates. The first
    candidate token is scored from the context's last logits. Models without a
    transformers cache (``past_key_values`` with ``reorder_cache``) take :func:`continuation_logprobs`.
    """
    if len(contexts) != len(continuations):
        raise ValueError("contexts and continuations differ in length")
    if any(not c for c in contexts):
        raise ValueError("every context needs at least one token")
    by_context: dict[tuple[int, ...], list[int]] = {}
    for i, c in enumerate(contexts):
        by_context.setdefault(tuple(c), []).append(i)
    if len(by_context) == len(contexts):
        return continuation_logprobs(model, contexts, continuations, pad_id, temperature, max_rows)
    groups = [(list(c), idx) for c, idx in by_context.items()]
    vocab = _vocab_size(model)
    keep = {"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}
    device = next(model.parameters()).device
    out: list[np.ndarray | None] = [None] * len(contexts)
    for batch in _context_batches(groups, vocab, max(1, max_rows)):
        ids, mask = pad([groups[g][0] for g in batch], pad_id, "left")           # (Bc, Tc)
        ids, mask = ids.to(device), mask.to(device)
        first = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                      use_cache=True, **keep)
        rows = [i for g in batch for i in groups[g][1]]
        cache = getattr(first, "past_key_values", None)
        if not hasattr(cache, "reorder_cache") or not hasattr(cache, "layers"):  # no transformers cache
            for i, lp in zip(rows, continuation_logprobs(model, [contexts[i] for i in rows],
                                                         [continuations[i] for i in rows], pad_id, temperature,
                                                         max_rows)):
                out[i] = lp
            continue
        owner = [b for b, g in enumerate(batch) for _ in groups[g][1]]          # row -> its context
        last = first.logits[:, -1]                                               # (Bc, V)
        lengths = mask.sum(1)                                                    # (Bc,)
        # candidates in passes of similar length (little padding), each within LOGIT_BUDGET
        for chunk in _batches([max(1, len(continuations[i])) for i in rows], vocab, max(1, max_rows // 4)):
            conts = [continuations[rows[r]] for r in chunk]
            if not any(conts):
                for r in chunk:
                    out[rows[r]] = np.zeros(0, dtype=np.float32)
                continue
            ctx = torch.tensor([owner[r] for r in chunk], device=device)         # (Br,)
            cont, cmask = pad([c or [pad_id] for c in conts], pad_id, "right")   # (Br, Tr)
            cont, cmask = cont.to(device), cmask.to(device)
            full = torch.cat([mask[ctx], cmask], dim=1)                          # (Br, Tc + Tr)
            positions = lengths[ctx, None] + torch.arange(cont.shape[1], device=device)  # (Br, Tr)
            logits = model(input_ids=cont, attention_mask=full, position_ids=positions,
                           past_key_values=_cache_rows(cache, ctx), use_cache=False).logits  # (Br, Tr, V)
            logits = torch.cat([last[ctx, None], logits[:, :-1]], dim=1)         # predicting cont[:, j]
            lp = token_logprobs(logits, cont, temperature).float().cpu().numpy()  # (Br, Tr)
            for row, r in enumerate(chunk):
                out[rows[r]] = lp[row, :len(conts[row])]
    return out  # type: ignore[return-value]


def policy_kl(runner: PolicyRunner, ref: PolicyRunner, prompts: Sequence[Prompt],
              responses: Sequence[str], temperature: float) -> list[float] | None:
    """Per prompt: sum over answer tokens of log p_policy - log p_sft on the policy's own answers.

    Both log-probs use the sampling temperature (so the samples come from the
    distribution whose KL is estimated). None if the tokenizers differ.
    """
    if not same_vocab(runner.tokenizer, ref.tokenizer):
        return None
    temp = temperature if temperature > 0 else 1.0
    resp = [runner.response_ids(p, r) for p, r in zip(prompts, responses)]
    keep = [i for i, r in enumerate(resp) if r]
    if not keep:
        return None
    pol = continuation_logprobs(runner.model, [runner.prompt_ids(prompts[i]) for i in keep],
                                [resp[i] for i in keep], runner.pad, temp, runner.cfg.batch_size)
    sft = continuation_logprobs(ref.model, [ref.prompt_ids(prompts[i]) for i in keep],
                                [resp[i] for i in keep], ref.pad, temp, ref.cfg.batch_size)
    kl = [0.0] * len(prompts)
    for j, i in enumerate(keep):
        kl[i] = float(pol[j].sum() - sft[j].sum())
    return kl


def reward_scores(rm: RewardModel, sequences: Sequence[list[int]], pad_id: int, batch_size: int = 64) -> list[float]:
    """Reward-model score of each prompt + response token sequence (``RewardModel.score``)."""
    return rm.score(list(sequences), pad_id, batch_size).tolist()


def reward_model_sequences(rm: RewardModel, rm_tokenizer, prompts: Sequence[Prompt],
                           responses: Sequence[str], fmt: ChatFormat | None = None) -> list[list[int]]:
    """Each (prompt, answer) as the reward model reads it: in its own format (the chat template its
    folder's tokenizer carries, the one it was trained with; ``fmt`` to give another), the answer's
    text encoded as a reply ("" is the end token alone). An answer cut at max_new_tokens (a
    :class:`~instructgpt.evaluation.policies.Response` that did not end) is read without the end
    token, as its sampled ids would be. A sequence longer than the reward model's positions is an
    error naming the prompt."""
    fmt = fmt or ChatFormat.load(rm_tokenizer, "auto")
    encoder = RecordEncoder(fmt, ModelContext.of(rm.config, rm_tokenizer), NO_PROMPT_LIMIT)
    out = []
    for p, r in zip(prompts, responses):
        ids = encoder.pair(request_input(p), str(r), p.source).ids
        cut = not getattr(r, "ended", True) and str(r) and ids[-1:] == [fmt.end_id]
        out.append(ids[:-1] if cut else ids)
    return out


def rm_scorer(rm: RewardModel, rm_tokenizer, batch_size: int = 64) -> Callable[[list[Prompt], list[str]], list[float]]:
    """``score(prompts, answers) -> scores`` of the reward model ``rm`` (read with its own tokenizer)."""
    def score(prompts: list[Prompt], answers: list[str]) -> list[float]:
        with torch.no_grad():
            sequences = reward_model_sequences(rm, rm_tokenizer, prompts, answers)
            return reward_scores(rm, sequences, rm_tokenizer.pad_token_id, batch_size)
    return score


def policy_reward(runner: PolicyRunner, rm: RewardModel, rm_tokenizer, prompts: Sequence[Prompt],
                  responses: Sequence[str], batch_size: int) -> list[float]:
    """The reward model's score of each answer of ``runner``'s policy.

    When the policy writes exactly what the reward model reads (same vocabulary, same chat
    format) the sampled ids are scored as they are; otherwise the answers' texts are encoded
    again in the reward model's own format (:func:`reward_model_sequences`). So is a prompted
    plain-text base's answer: it ends at its line's newline token, not at the end token the
    reward is read at.
    """
    rm_fmt = ChatFormat.load(rm_tokenizer, "auto")
    same_format = reads_policy_tokens(rm_tokenizer, runner.tokenizer) and rm_fmt.template == runner.fmt.template
    if same_format and not runner.line_answers:
        seqs = [runner.prompt_ids(p, with_prefix=False) + runner.response_ids(p, r)
                for p, r in zip(prompts, responses)]
    else:
        seqs = reward_model_sequences(rm, rm_tokenizer, prompts, responses, rm_fmt)
    return reward_scores(rm, seqs, rm_tokenizer.pad_token_id, batch_size)
