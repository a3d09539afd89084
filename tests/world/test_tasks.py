import collections
import random
import re

import pytest

from instructgpt.data import Prompt, load_prompts, write_jsonl
from instructgpt.world import (
    USE_CASE_SHARES,
    check,
    generate_prompts,
    make_prompt,
    solve,
)
from instructgpt.world import phrases as P
from instructgpt.world.kb import VOCAB
from instructgpt.world.tasks import TASKS


def prompt_of(world, task, seed=0, pred=lambda m: True):
    """A prompt of one task type whose meta satisfies ``pred``."""
    rng = random.Random(f"{task}:{seed}")
    for i in range(500):
        text, use_case, meta = make_prompt(world, rng, task_name=task)
        if pred(meta):
            return Prompt(id=f"t-{task}-{i}", text=text, user_id="u", use_case=use_case, meta=meta)
    raise AssertionError(f"no {task} prompt satisfies the predicate")


def wrong_value(world, name, attr):
    true = str(world.fact(name, attr))
    return next(v for v in VOCAB[attr] if v != true)


def first_vocab_attr(ent):
    return next(a for a in ent.attrs if a in VOCAB and a != "group")


# ----- the prompt distribution ---------------------------------------------------------


@pytest.fixture(scope="module")
def prompts(world):
    return generate_prompts(world, 3000, seed=1)


def test_every_prompt_ends_with_newline_and_has_a_task(prompts):
    for p in prompts:
        assert p.text.endswith("\n") and not p.text.endswith("\n\n")
        assert p.meta["task"] in TASKS and p.use_case == TASKS[p.meta["task"]].use_case


def test_use_case_proportions(prompts):
    counts = collections.Counter(p.use_case for p in prompts)
    for uc, share in USE_CASE_SHARES.items():
        assert abs(counts[uc] / len(prompts) - share) < 0.025 + 0.2 * share, uc


def test_heavy_users_near_duplicates_and_pii(prompts):
    per_user = collections.Counter(p.user_id for p in prompts)
    assert sum(1 for c in per_user.values() if c > 200) >= 2
    assert len(per_user) > 300
    dups = [p for p in prompts if "near_dup_of" in p.meta]
    assert 0.02 < len(dups) / len(prompts) < 0.10
    by_id = {p.id: p for p in prompts}
    for d in dups[:50]:
        base = by_id[d.meta["near_dup_of"]].text
        prefix = 0
        while prefix < min(len(base), len(d.text)) and base[prefix] == d.text[prefix]:
            prefix += 1
        assert d.text != base and prefix >= 0.6 * len(base.rstrip())
    pii = [p for p in prompts if "pii" in p.meta]
    assert 0.01 < len(pii) / len(prompts) < 0.06
    rx = re.compile(r"[\w.]+@[\w.]+\.\w+|\b555-\d{3}-\d{4}\b")
    assert all(rx.search(p.text) for p in pii)
    assert all(("pii" in p.meta) == bool(rx.search(p.text)) for p in prompts)


def test_prompts_are_deterministic(world, prompts):
    again = generate_prompts(world, 3000, seed=1)
    assert [(p.id, p.text, p.user_id, p.meta) for p in again] == [
        (p.id, p.text, p.user_id, p.meta) for p in prompts
    ]
    other = generate_prompts(world, 300, seed=2)
    assert [p.text for p in other] != [p.text for p in prompts[:300]]


def test_solve_is_deterministic_per_rng(prompts):
    for p in prompts[:100]:
        assert solve(p, random.Random(5)) == solve(p, random.Random(5))


# ----- reference solvers pass their checkers ---------------------------------------------


@pytest.mark.parametrize("task", sorted(TASKS))
def test_solver_passes_checker(world, task):
    rng = random.Random(task)
    answers = set()
    for i in range(60):
        text, _, meta = make_prompt(world, rng, task_name=task)
        answer = solve(meta, rng)
        result = check(meta, answer)
        assert result.passed, (text, answer, result)
        assert result.score > 0.9
        answers.add(answer)
    assert len(answers) >= 6  # phrasing (and content) vary


def test_prompt_round_trips_through_jsonl_and_still_checks(world, prompts, tmp_path):
    write_jsonl(tmp_path / "p.jsonl", prompts[:200])
    back = load_prompts(tmp_path / "p.jsonl")
    for p, q in zip(prompts[:200], back):
        assert q.meta == p.meta and q.text == p.text
        answer = solve(q, random.Random(0))
        assert check(q, answer).passed


# ----- checkers reject wrong answers --------------------------------------------------------

QUESTION = "Does anyone know what the zorbin eats? Also, where does it live?"


@pytest.mark.parametrize("task", sorted(TASKS))
def test_question_instead_of_answer_fails(world, task):
    p = prompt_of(world, task)
    text = QUESTION.replace("zorbin", world.of_kind("creature")[0].name)
    r = check(p, text)
    assert not r.passed and not r.follows_instruction


@pytest.mark.parametrize("task", sorted(TASKS))
def test_new_instruction_instead_of_answer_fails(world, task):
    p = prompt_of(world, task)
    r = check(p, f"Write a short story about {world.of_kind('person')[0].name} and a creature.")
    assert not r.passed


def test_empty_answer_fails(world):
    r = check(prompt_of(world, "fact_qa"), "   ")
    assert not r.passed and r.score == 0


def test_wrong_fact_in_qa(world):
    p = prompt_of(world, "fact_qa", pred=lambda m: m["attr"] in VOCAB)
    ent = world.get(p.meta["topic"])
    bad = P.fact_sentence(
        ent, p.meta["attr"], random.Random(0), value=wrong_value(world, ent.name, p.meta["attr"])
    )
    r = check(p, bad)
    assert not r.passed and r.hallucinated and r.score < 0.5
    good = P.fact_sentence(ent, p.meta["attr"], random.Random(0))
    assert check(p, good).passed


def test_repeating_the_popular_falsehood(world):
    p = prompt_of(world, "fact_qa", pred=lambda m: "falsehood" in m)
    ent = world.get(p.meta["topic"])
    r = check(p, P.fact_sentence(ent, p.meta["attr"], random.Random(0), value=p.meta["falsehood"]))
    assert r.repeats_falsehood and not r.passed


def test_wrong_entity_valued_answer(world):
    p = prompt_of(world, "fact_qa", pred=lambda m: m["attr"] == "home")
    true = p.meta["answer"]
    other = next(t.name for t in world.of_kind("town") if t.name != true)
    r = check(p, f"It lives near {other}." if world.get(p.meta["topic"]).kind == "creature" else f"{other}.")
    assert not r.passed


def test_describe_wrong_fact_and_violated_constraints(world):
    p = prompt_of(world, "describe", pred=lambda m: not m.get("constraints"))
    ent = world.get(p.meta["topic"])
    attr = first_vocab_attr(ent)
    r = check(p, P.fact_sentence(ent, attr, random.Random(0), value=wrong_value(world, ent.name, attr)))
    assert r.hallucinated and not r.passed

    p = prompt_of(
        world, "describe", pred=lambda m: any(c["type"] == "max_words" for c in m.get("constraints", []))
    )
    long = (
        solve(p, random.Random(0))
        + " It is known all over the land by young and old people alike, every single day."
    )
    r = check(p, long)
    assert any(v.startswith("max_words") for v in r.constraint_violations) and not r.passed

    p = prompt_of(
        world, "describe", pred=lambda m: any(c["type"] == "include" for c in m.get("constraints", []))
    )
    word = next(c["word"] for c in p.meta["constraints"] if c["type"] == "include")
    no_word = re.sub(r"\b" + word + r"\b", "nice", solve(p, random.Random(0)))
    assert f"include:{word}" in check(p, no_word).constraint_violations

    p = prompt_of(
        world, "describe", pred=lambda m: any(c["type"] == "avoid_attr" for c in m.get("constraints", []))
    )
    attr = next(c["attr"] for c in p.meta["constraints"] if c["type"] == "avoid_attr")
    ent = world.get(p.meta["topic"])
    said = solve(p, random.Random(0)) + " " + P.fact_sentence(ent, attr, random.Random(0), subject="It")
    assert f"avoid_attr:{attr}" in check(p, said).constraint_violations

    p = prompt_of(
        world, "describe", pred=lambda m: any(c["type"] == "avoid_word" for c in m.get("constraints", []))
    )
    ent = world.get(p.meta["topic"])
    assert not check(p, P.fact_sentence(ent, first_vocab_attr(ent), random.Random(0))).passed


def test_sentence_count_constraint(world):
    p = prompt_of(
        world, "story", pred=lambda m: any(c["type"] == "n_sentences" for c in m.get("constraints", []))
    )
    n = next(c["n"] for c in p.meta["constraints"] if c["type"] == "n_sentences")
    good = solve(p, random.Random(0))
    assert check(p, good).passed
    r = check(p, good + " They laughed a lot.")
    assert f"n_sentences:{n}" in r.constraint_violations and not r.passed


def test_story_note_and_ad_failures(world):
    p = prompt_of(world, "story")
    person = world.get(p.meta["topic"])
    assert not check(p, f"{person.name} was happy all day. The end.").passed  # the creature is missing
    wrong_job = wrong_value(world, person.name, "job")
    creature = p.meta["other"]
    r = check(p, f"{person.name} the {wrong_job} met the {creature}. They became friends.")
    assert r.hallucinated and not r.passed

    p = prompt_of(world, "note")
    assert not check(p, f"Dear {p.meta['topic']}, see you soon.").passed  # the town is missing

    p = prompt_of(world, "ad", pred=lambda m: world.get(m["topic"]).kind == "food")
    ent = world.get(p.meta["topic"])
    assert not check(p, "Buy it now, it is the best!").passed
    bad_taste = wrong_value(world, ent.name, "taste")
    r = check(p, f"Try {ent.name}, the {bad_taste} treat everyone loves!")
    assert r.hallucinated and not r.passed


def test_chat_failures(world):
    p = prompt_of(world, "chat_qa", pred=lambda m: m["attr"] in VOCAB)
    good = solve(p, random.Random(0))
    assert check(p, "Assistant: " + good).passed
    r = check(p, good + "\nUser: Thanks! And what do you eat?")
    assert not r.follows_instruction
    p = prompt_of(world, "chat_rude")
    r = check(p, solve(p, random.Random(0)) + f" Now go away, you {world.insults[0]}.")
    assert r.toxic and not r.passed and r.score < 0.4
    p = prompt_of(world, "chat_greet")
    assert not check(p, "What is your job?").passed
    assert not check(p, "Hello there!").passed  # the name is missing


def test_list_failures(world):
    p = prompt_of(world, "list_kind", pred=lambda m: m["n"] >= 3)
    wrong_kind = next(k for k in ("town", "food") if k != p.meta["kind"])
    names = [e.name for e in world.of_kind(wrong_kind)[: p.meta["n"]]]
    assert not check(p, ", ".join(names) + ".").passed
    right = [e.name for e in world.of_kind(p.meta["kind"])[: p.meta["n"] - 1]]
    r = check(p, ", ".join(right) + ".")
    assert any(v.startswith("n_items") for v in r.constraint_violations)
    assert not check(p, "Zibble, Wompet and Frax.").passed  # made-up names

    p = prompt_of(world, "list_filter")
    misfit = [
        e.name for e in world.of_kind(p.meta["kind"]) if str(e.attrs[p.meta["attr"]]) != p.meta["value"]
    ]
    r = check(p, ", ".join(misfit[: p.meta["n"]]) + ".")
    assert not r.passed and r.hallucinated

    p = prompt_of(
        world,
        "list_kind",
        pred=lambda m: any(c["type"] == "format" and c["format"] == "numbered" for c in m["constraints"]),
    )
    names = [e.name for e in world.of_kind(p.meta["kind"])[: p.meta["n"]]]
    assert "format:numbered" in check(p, "\n".join(f"- {n}" for n in names)).constraint_violations


def test_classification_and_other_failures(world):
    for task, flip in (
        ("sentiment", {"positive": "negative", "negative": "positive"}),
        ("politeness", {"polite": "rude", "rude": "polite"}),
    ):
        p = prompt_of(world, task)
        assert not check(p, flip[p.meta["answer"]].capitalize() + ".").passed
        assert not check(p, "It is positive or negative, polite or rude.").passed
    p = prompt_of(world, "kind")
    wrong = next(k for k in ("creature", "town", "person") if k != p.meta["answer"])
    assert not check(p, f"It is a {wrong}.").passed
    p = prompt_of(world, "sort_names")
    assert not check(p, ", ".join(sorted(p.meta["names"], key=str.lower, reverse=True)) + ".").passed
    p = prompt_of(world, "count_items")
    assert not check(p, f"There are {p.meta['answer'] + 1} names.").passed


def test_closed_qa_hallucination(world):
    p = prompt_of(world, "closed_qa", pred=lambda m: m["answerable"] and m["attr"] in VOCAB)
    ent = world.get(p.meta["topic"])
    r = check(
        p,
        P.fact_sentence(
            ent, p.meta["attr"], random.Random(0), value=wrong_value(world, ent.name, p.meta["attr"])
        ),
    )
    assert r.hallucinated and not r.passed
    # Unanswerable from the text: stating the (true!) value is a closed-domain hallucination.
    p = prompt_of(world, "closed_qa", pred=lambda m: not m["answerable"])
    ent = world.get(p.meta["topic"])
    r = check(p, P.fact_sentence(ent, p.meta["attr"], random.Random(0)))
    assert r.hallucinated and not r.passed
    assert check(p, "The text does not say.").passed


def test_summary_hallucination_and_length(world):
    p = prompt_of(world, "summarize")
    ent = world.get(p.meta["topic"])
    stated = {a for _, a in p.meta["facts"]}
    unstated = next(a for a in ent.attrs if a not in stated and (ent.kind, a) in P.VERB_PHRASES)
    good = solve(p, random.Random(0))
    r = check(p, good[:-1] + " and " + P.verb_phrase(ent, unstated, random.Random(0)) + ".")
    assert r.hallucinated and not r.passed  # true in the world, but not in the text
    r = check(p, p.meta["passage"] + " " + p.meta["passage"])
    assert not r.passed


def test_extract_and_rewrite_failures(world):
    p = prompt_of(world, "extract_kind")
    outsider = next(e.name for e in world.of_kind(p.meta["kind"]) if e.name not in p.meta["passage"])
    r = check(p, ", ".join(p.meta["expected"] + [outsider]) + ".")
    assert r.hallucinated and not r.passed
    p = prompt_of(world, "extract_kind", pred=lambda m: len(m["expected"]) >= 2)
    assert not check(p, p.meta["expected"][0] + ".").passed

    p = prompt_of(world, "rewrite_list")
    assert not check(p, p.meta["passage"]).passed  # not a list
    extra = next(e for e in world.of_kind("creature") if e.name not in p.meta["passage"])
    listed = solve(p, random.Random(0)) + "\n- " + P.fact_sentence(extra, "colour", random.Random(0))
    assert check(p, listed).hallucinated

    p = prompt_of(world, "rewrite_replace")
    assert not check(p, p.meta["passage"]).passed  # the old name is still there
    assert check(p, solve(p, random.Random(0))).passed

    p = prompt_of(world, "rewrite_polite")
    r = check(p, p.meta["passage"])
    assert r.toxic and not r.passed
