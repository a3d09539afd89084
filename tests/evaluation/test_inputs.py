"""The evaluation's test-prompt sample: stratified by use case, seeded, in file order."""

from collections import Counter

from instructgpt.data import Prompt
from instructgpt.evaluation.inputs import stratified_sample


def prompts(counts: dict[str, int]) -> list[Prompt]:
    out = []
    for uc, k in counts.items():
        out += [Prompt(id=f"{uc}-{i}", text=f"{uc} {i}", user_id=f"u{i % 7}", use_case=uc) for i in range(k)]
    # interleave the use cases the way a real file mixes them
    return sorted(out, key=lambda p: (int(p.id.split("-")[1]), p.use_case))


def test_each_use_case_gets_its_exact_share_for_every_seed():
    pool = prompts({"generation": 70, "closed_qa": 20, "summarization": 10})
    for seed in range(8):  # a simple random draw of 30 gives closed_qa 6 only ~1 time in 5
        got = Counter(p.use_case for p in stratified_sample(pool, 30, seed))
        assert got == {"generation": 21, "closed_qa": 6, "summarization": 3}, (seed, got)


def test_remainders_go_to_the_largest_fractions_then_by_name():
    # n=5 of 5/3/2: exact shares 2.5, 1.5, 1.0 -> floors 2, 1, 1 (4); the one left goes to the
    # largest remainder, a tie of 0.5 between "a" and "b" broken by name -> a=3, b=1, c=1
    pool = prompts({"b": 3, "a": 5, "c": 2})
    assert Counter(p.use_case for p in stratified_sample(pool, 5)) == {"a": 3, "b": 1, "c": 1}
    # n=7 of 6/3/1: 4.2, 2.1, 0.7 -> floors 4, 2, 0; the remainder goes to c (0.7)
    pool = prompts({"a": 6, "b": 3, "c": 1})
    assert Counter(p.use_case for p in stratified_sample(pool, 7)) == {"a": 4, "b": 2, "c": 1}


def test_the_sample_is_seeded_and_keeps_file_order():
    pool = prompts({"generation": 40, "open_qa": 30, "extract": 9})
    a, b, c = (stratified_sample(pool, 20, s) for s in (0, 0, 1))
    assert [p.id for p in a] == [p.id for p in b]
    assert [p.id for p in a] != [p.id for p in c]
    order = {p.id: i for i, p in enumerate(pool)}
    assert [order[p.id] for p in a] == sorted(order[p.id] for p in a)
    assert len({p.id for p in a}) == 20


def test_zero_or_too_many_means_every_prompt():
    pool = prompts({"generation": 4, "closed_qa": 2})
    assert stratified_sample(pool, 0) == pool
    assert stratified_sample(pool, 6) == pool
    assert stratified_sample(pool, 60) == pool
