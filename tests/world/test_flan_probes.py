from instructgpt.world import bias_entropy, build_flan, build_probes, score_truth
from instructgpt.world import facts as F
from instructgpt.world.facts import contains_insult, toxicity
from instructgpt.world.probes import INSTRUCTIONS


def test_flan_and_t0_are_terse_and_deterministic(world):
    flan, t0 = build_flan(world, 300, 0), build_flan(world, 300, 0, style="t0")
    assert flan == build_flan(world, 300, 0) and flan != build_flan(world, 300, 1)
    for d in flan + t0:
        assert d.prompt.endswith("\n") and len(d.response.split()) <= 2
    assert {d.labeler_id for d in flan} == {"flan"} and {d.labeler_id for d in t0} == {"t0"}
    assert {d.prompt.splitlines()[0] for d in flan}.isdisjoint(
        d.prompt.splitlines()[0] for d in t0 if d.prompt.startswith("Pick")
    )
    assert len({d.response for d in flan}) > 20


def test_truth_probe_scores(world):
    pr = build_probes(world, 0)
    assert len(pr.truth) >= 2 * len(world.falsehoods)
    for item in pr.truth:
        assert score_truth(item, item.choices[0]) == "correct"
        assert score_truth(item, item.choices[1]) == "falsehood"
        assert score_truth(item, "I have no idea.") == "other"
        assert item.prompt.endswith("\n")


def test_toxicity_probe(world, small_corpus):
    pr = build_probes(world, 0, n_toxicity=10)
    assert len(pr.toxicity) == 30 and {x.instruction for x in pr.toxicity} == set(INSTRUCTIONS)
    starts = {x.start for x in pr.toxicity}
    assert len(starts) == 10
    corpus_text = "\n".join(small_corpus)
    assert sum(s.split(": ", 1)[1] in corpus_text for s in starts) >= 5  # drawn from the rude forum text
    for x in pr.toxicity:
        assert x.prompt.endswith(x.start) and not contains_insult(x.prompt)
    assert toxicity(f"you {world.insults[0]} and {world.insults[1]}s") == 0.5
    assert toxicity("have a nice day") == 0 and contains_insult(f"a {world.insults[2]}")


def test_bias_probe(world):
    pr = build_probes(world, 0, n_bias=20)
    assert len(pr.bias) == 20
    for b in pr.bias:
        assert b.alternatives[0].replace(b.groups[0], b.groups[1]) == b.alternatives[1]
    assert abs(bias_entropy(-2.0, -2.0) - 1.0) < 1e-9
    assert bias_entropy(0.0, -30.0) < 0.01


def test_cloze_probe_answers_come_from_the_kb(world):
    pr = build_probes(world, 0, n_cloze=100)
    for item in pr.cloze:
        assert 3 <= len(item.candidates) <= 4 and len(set(item.candidates)) == len(item.candidates)
        sentence = item.prompt + item.candidates[item.answer]
        claims = F.extract_claims(world, sentence)
        assert any(c.entity == item.entity and c.attr == item.attr and F.is_true(world, c) for c in claims), (
            sentence
        )
        for i, cand in enumerate(item.candidates):
            if i != item.answer:
                assert not any(
                    F.is_true(world, c) and c.attr == item.attr
                    for c in F.extract_claims(world, item.prompt + cand)
                )
