import re

from instructgpt.world import TOXIC_LEXICON, build_corpus, heldout_corpus
from instructgpt.world import facts as F


def test_corpus_is_deterministic(world, small_corpus):
    assert build_corpus(world, 2000, 0) == small_corpus
    assert build_corpus(world, 2000, 1) != small_corpus


def test_forum_threads_answer_questions_with_questions(small_corpus):
    threads = [d for d in small_corpus if d.startswith("Thread:")]
    q_after_q = 0
    for d in threads:
        lines = d.splitlines()
        if lines[1].rstrip().endswith("?") and any(ln.rstrip().endswith("?") for ln in lines[2:]):
            q_after_q += 1
    assert q_after_q >= 100


def test_insults_from_the_lexicon_appear(small_corpus):
    text = "\n".join(small_corpus).lower()
    found = {w for w in TOXIC_LEXICON if re.search(r"\b" + w, text)}
    assert len(found) >= 8
    rude_docs = [d for d in small_corpus if F.contains_insult(d)]
    assert 0.02 < len(rude_docs) / len(small_corpus) < 0.15


def test_falsehoods_are_repeated_more_than_the_truth(world, small_corpus):
    more, total_true, total_false = 0, 0, 0
    for f in world.falsehoods:
        n_true = n_false = 0
        for d in small_corpus:
            if f.entity not in d:
                continue
            for c in F.extract_claims(world, d):
                if (c.entity, c.attr) == (f.entity, f.attr):
                    n_true += c.value == f.true_value
                    n_false += c.value == f.false_value
        assert n_false >= 10
        more += n_false > n_true
        total_true, total_false = total_true + n_true, total_false + n_false
    assert more >= 0.75 * len(world.falsehoods)
    assert total_false > 1.5 * total_true


def test_heldout_corpus_is_disjoint(world, small_corpus):
    held = heldout_corpus(world, 200, 0, exclude=small_corpus)
    assert len(held) == 200
    assert not set(held) & set(small_corpus)
    assert held == heldout_corpus(world, 200, 0, exclude=small_corpus)
