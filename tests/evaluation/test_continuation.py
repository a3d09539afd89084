"""The HellaSwag-like continuation probe built from the held-out corpus (the alignment tax)."""

from instructgpt.evaluation.probes import continuation_items

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
