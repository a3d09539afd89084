"""The alignment tax's probes on the held-out corpus: the HellaSwag-like continuation probe and the blocks'
losses."""

import hashlib

import numpy as np
import torch

from instructgpt.evaluation.probes import block_nlls, continuation_items

DOCS = [
    "A short story\nNalas was a fisher. One day Nalas met a cat. They were happy.",
    "Farbren\nThe Farbren is a creature. It walks on eight legs. It is white in colour.",
    "Review by gobok12\nI bought Staplus at the market. It was awful.\nRating: 1 star",
    "Did you know?\nThe Dragros walks on two legs. It eats only fish.",
    "Title only",                                   # no sentence boundary inside a line: no item
    "Thread\nWhat do they eat?\nReply: No idea.",   # boundaries only at line ends: no item
]


def test_each_item_is_its_document_cut_at_a_sentence_with_the_true_next_sentence():
    items = continuation_items(DOCS, 10, seed=0, max_length_gap=40)
    assert sorted(it.doc for it in items) == [0, 1, 2, 3]          # one per document that has a cut
    for it in items:
        true = it.candidates[it.answer]
        assert DOCS[it.doc].startswith(it.prompt + true)          # the document goes on with it
        assert it.prompt[-1] in ".!?" and true.startswith(" ") and true[1:2].isupper()
        assert len(it.candidates) == 4 and len(set(it.candidates)) == 4
        for j, c in enumerate(it.candidates):
            if j != it.answer:                                    # distractors: other documents' sentences
                assert c[1:] not in DOCS[it.doc] and any(c[1:] in d for d in DOCS)


def test_distractors_are_near_the_true_sentence_in_length():
    items = continuation_items(DOCS * 3, 12, seed=1, max_length_gap=6)
    assert items
    for it in items:
        true = it.candidates[it.answer]
        assert all(abs(len(c) - len(true)) <= 6 for c in it.candidates)


def test_seeded_and_capped():
    a, b, c = (continuation_items(DOCS * 5, 8, seed=s, max_length_gap=40) for s in (0, 0, 3))
    assert a == b and a != c
    assert len(a) == 8 and len({it.doc for it in a}) == 8
    assert continuation_items(DOCS, 0) == []


class _Reading(list):
    """Documents that count how many of them were read."""

    read = 0

    def __iter__(self):
        for d in super().__iter__():
            self.read += 1
            yield d


def test_the_blocks_losses_read_only_the_documents_that_fill_the_blocks(tmp_path, monkeypatch):
    """The whole held-out corpus was tokenized and packed to keep its first max_tokens; the documents are read
    only until they fill those blocks now, and the blocks, their ids and their losses are the same."""
    from instructgpt import lm
    from instructgpt.evaluation.config import EvalConfig
    from instructgpt.evaluation.policies import ModelPool, ModelSpec, PolicyRunner
    from instructgpt.evaluation.scoring import continuation_logprobs
    from tests.conftest import toy_corpus

    from .chat_models import chatml_model
    cfg = EvalConfig(run_dir="-", device="cpu", max_new_tokens=4, temperature=0.0, seed=0, n_prompts=0)
    runner = PolicyRunner(ModelSpec("sft", "sft", str(chatml_model(tmp_path / "m"))), cfg,
                          ModelPool(torch.device("cpu")))
    monkeypatch.setattr(lm, "TOKENIZE_CHARS", 200)
    docs = _Reading(toy_corpus(300, seed=2))
    out = block_nlls(runner, docs, max_tokens=5 * 32 + 7, seq_len=32)
    assert 0 < docs.read < 100
    rows = [r.tolist() for r in lm.pack_blocks(runner.tokenizer, list(docs), 32)[:5]]  # what was packed before
    lps = continuation_logprobs(runner.model, [r[:1] for r in rows], [r[1:] for r in rows], runner.pad,
                                max_rows=cfg.batch_size)
    assert out.values == [-float(lp.mean()) for lp in lps]
    assert out.groups == [f"block-{i}-{hashlib.blake2b(np.asarray(r, dtype=np.int64).tobytes(), digest_size=6).hexdigest()}"
                          for i, r in enumerate(rows)]
