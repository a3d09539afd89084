"""JSONL loading, validation and writing (instructgpt.data)."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch

from instructgpt.data import (
    DataError, Demonstration, Prompt, Ranking, load_demonstrations, load_prompts, load_rankings,
    parse_demonstration, parse_prompt, parse_ranking, read_jsonl, render_messages, to_record,
    write_jsonl,
)


def write_lines(path, lines):
    """Write raw lines (dicts are dumped as JSON) and return the path as str."""
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))
    return str(path)


PROMPT = {"id": "p1", "text": "Write a poem about otters.", "user_id": "u1", "use_case": "generation"}
RANK = {"prompt": "Q?", "responses": ["a", "b", "c", "d"], "ranking": [[2], [0, 3], [1]]}


def expect_error(load, tmp_path, lines, field, lineno=2, **kw):
    """Loading ``lines`` (after one valid line) raises DataError naming file:line and field."""
    path = write_lines(tmp_path / "data.jsonl", lines)
    with pytest.raises(DataError) as info:
        load(path, **kw)
    msg = str(info.value)
    assert msg.startswith(f"{path}:{lineno}: {field}: "), msg
    return msg


# ---------------------------------------------------------------- malformed input

def test_invalid_json(tmp_path):
    expect_error(load_prompts, tmp_path, [PROMPT, '{"id": "p2", "text": '], "json")


def test_non_object_line(tmp_path):
    msg = expect_error(load_prompts, tmp_path, [PROMPT, '["p2", "text"]'], "record")
    assert "array" in msg


@pytest.mark.parametrize("indent", [4, None])
def test_a_json_array_file_is_named_as_such(tmp_path, indent):
    """Alpaca's alpaca_data.json (a JSON array, pretty-printed) was called invalid JSON ("Expecting value")."""
    path = tmp_path / "alpaca_data.json"
    rows = [{"instruction": "Add.", "input": "2 and 3", "output": "5"}, {"instruction": "Hi", "output": "Hello"}]
    path.write_text(json.dumps(rows, indent=indent), encoding="utf-8-sig")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:1: json: the file is one JSON array .* "
                                        rf"not JSON Lines: write one object per line"):
        load_demonstrations(path)


def test_duplicate_json_key(tmp_path):
    expect_error(load_prompts, tmp_path, [PROMPT, '{"id": "p2", "text": "a", "text": "b", "user_id": "u"}'],
                 "json")


def test_blank_lines_ignored_and_line_numbers_kept(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", ["", PROMPT, "   ", {**PROMPT, "id": "p2"}])
    prompts = load_prompts(path)
    assert [p.source for p in prompts] == [f"{path}:2", f"{path}:4"]


def test_missing_text(tmp_path):
    bad = {k: v for k, v in PROMPT.items() if k != "text"}
    msg = expect_error(load_prompts, tmp_path, [PROMPT, {**bad, "id": "p2"}], "text")
    assert "missing" in msg


def test_blank_text(tmp_path):
    expect_error(load_prompts, tmp_path, [PROMPT, {**PROMPT, "id": "p2", "text": "  \n"}], "text")


def test_missing_user_id(tmp_path):
    bad = {k: v for k, v in PROMPT.items() if k != "user_id"}
    expect_error(load_prompts, tmp_path, [PROMPT, {**bad, "id": "p2"}], "user_id")


def test_unknown_use_case(tmp_path):
    msg = expect_error(load_prompts, tmp_path, [PROMPT, {**PROMPT, "id": "p2", "use_case": "poetry"}], "use_case")
    assert "'poetry'" in msg


def test_unknown_split(tmp_path):
    expect_error(load_prompts, tmp_path, [PROMPT, {**PROMPT, "id": "p2", "split": "dev"}], "split")


def test_duplicate_prompt_id_names_both_lines(tmp_path):
    msg = expect_error(load_prompts, tmp_path, [PROMPT, {**PROMPT, "text": "other"}], "id")
    assert f"{tmp_path / 'data.jsonl'}:1" in msg


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.jsonl")
    with pytest.raises(DataError) as info:
        load_prompts(path)
    assert str(info.value) == f"{path}: file not found"


def test_empty_response(tmp_path):
    good = {"prompt": "Q?", "response": "A."}
    expect_error(load_demonstrations, tmp_path, [good, {"prompt": "Q?", "response": ""}], "response")


def test_demonstration_needs_a_prompt(tmp_path):
    good = {"prompt": "Q?", "response": "A."}
    expect_error(load_demonstrations, tmp_path, [good, {"response": "A."}], "prompt")


def test_unknown_prompt_id(tmp_path):
    prompts = [parse_prompt(PROMPT, "p.jsonl:1")]
    good = {"prompt_id": "p1", "response": "A."}
    msg = expect_error(load_demonstrations, tmp_path, [good, {"prompt_id": "p9", "response": "A."}],
                       "prompt_id", prompts=prompts)
    assert "'p9'" in msg


def test_unknown_prompt_id_in_ranking(tmp_path):
    prompts = {"p1": parse_prompt(PROMPT, "p.jsonl:1")}
    by_id = {k: v for k, v in RANK.items() if k != "prompt"}
    expect_error(load_rankings, tmp_path, [{**by_id, "prompt_id": "p1"}, {**by_id, "prompt_id": 7}],
                 "prompt_id", prompts=prompts)


@pytest.mark.parametrize("k", [1, 10])
def test_k_out_of_range(tmp_path, k):
    bad = {"prompt": "Q?", "responses": [f"r{i}" for i in range(k)], "ranking": list(range(k))}
    msg = expect_error(load_rankings, tmp_path, [RANK, bad], "responses")
    assert f"K={k}" in msg


@pytest.mark.parametrize("ranking, words", [
    ([[2], [0], [1]], "index 3 missing"),
    ([[2], [0, 3], [1, 2]], "index 2 appears twice"),
    ([2, 0, 3, 1, 2], "index 2 appears twice"),
    ([[2], [0, 4], [1, 3]], "index 4 is out of range"),
    ([[-1], [0, 2], [1, 3]], "index -1 is out of range"),
    ([[0, 1, 2, 3]], "single group"),
    ([[2], [], [0, 1, 3]], "group 1 is empty"),
    ([[2], 0, 1, 3], "mixes"),
])
def test_bad_ranking(tmp_path, ranking, words):
    msg = expect_error(load_rankings, tmp_path, [RANK, {**RANK, "ranking": ranking}], "ranking")
    assert words in msg


@pytest.mark.parametrize("likert, words", [
    ([1, 2, 8, 4], "outside 1..7"),
    ([0, 2, 3, 4], "outside 1..7"),
    ([1, 2, 3], "3 scores for K=4"),
    ([1, 2, "3", 4], "expected an integer"),
])
def test_bad_likert(tmp_path, likert, words):
    msg = expect_error(load_rankings, tmp_path, [RANK, {**RANK, "likert": likert}], "likert")
    assert words in msg


def test_unknown_flag(tmp_path):
    flags = [[], ["hallucination"], ["toxic"], []]
    msg = expect_error(load_rankings, tmp_path, [RANK, {**RANK, "flags": flags}], "flags")
    assert "'toxic'" in msg


def test_empty_chosen(tmp_path):
    expect_error(load_rankings, tmp_path, [RANK, {"prompt": "Q?", "chosen": "", "rejected": "b"}], "chosen")


def test_bad_message_role(tmp_path):
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    bad = {"messages": [{"role": "bot", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    msg = expect_error(load_demonstrations, tmp_path, [good, bad], "messages")
    assert "'bot'" in msg


# ---------------------------------------------------------------- valid input

def test_prompt_fields_aliases_and_meta():
    p = parse_prompt({"id": 12, "text": "Extract names.", "user_id": 7, "use_case": "Information Extraction",
                      "split": "test", "lang": "en", "tags": ["x"]}, "f.jsonl:3")
    assert p == Prompt(id="12", text="Extract names.", user_id="7", use_case="extract", split="test",
                       meta={"lang": "en", "tags": ["x"]}, source="f.jsonl:3")
    assert parse_prompt({**PROMPT, "use_case": "open qa"}, "s").use_case == "open_qa"
    assert parse_prompt({**PROMPT, "use_case": "Closed-QA"}, "s").use_case == "closed_qa"
    assert parse_prompt({**PROMPT, "use_case": "extraction"}, "s").use_case == "extract"


def test_grouped_ranking_and_pairs():
    r = parse_ranking(RANK, "r:1")
    assert r.k == 4
    assert r.ranking == [[2], [0, 3], [1]]
    assert sorted(r.pairs()) == sorted([(2, 0), (2, 3), (2, 1), (0, 1), (3, 1)])
    assert len(r.pairs()) == 5
    # the outcome of one response against another: above 1, below 0, same group (a tie) 0.5
    assert (r.outcome(2, 1), r.outcome(1, 2), r.outcome(0, 3), r.outcome(3, 1)) == (1.0, 0.0, 0.5, 1.0)
    assert all(r.outcome(w, l) == 1.0 for w, l in r.pairs())


def test_flat_ranking_is_a_strict_order():
    r = parse_ranking({**RANK, "ranking": [2, 0, 3, 1]}, "r:1")
    assert r.ranking == [[2], [0], [3], [1]]
    assert len(r.pairs()) == 6


def test_ranking_optional_fields():
    obj = {**RANK, "likert": [5, 1, 7, 5], "flags": [[], ["hallucination", "fails_to_follow"], [], []],
           "labeler_id": 3, "comment": "close call", "batch": 4}
    r = parse_ranking(obj, "r:1")
    assert r.likert == [5, 1, 7, 5]
    assert r.flags[1] == ["hallucination", "fails_to_follow"]
    assert (r.labeler_id, r.comment, r.meta) == ("3", "close call", {"batch": 4})


def test_chosen_rejected_row():
    r = parse_ranking({"prompt": "Q?", "chosen": "good", "rejected": "bad"}, "r:1")
    assert (r.prompt, r.responses, r.ranking, r.k) == ("Q?", ["good", "bad"], [[0], [1]], 2)
    assert r.pairs() == [(0, 1)]
    same = parse_ranking({"prompt": "Q?", "chosen": "same", "rejected": "same"}, "r:2")
    assert same.responses == ["same", "same"]


def test_null_pair_or_ranking_keys_are_absent():
    """Union-schema exports (pandas, HF datasets) write null for the other format's keys."""
    k_wise = parse_ranking({**RANK, "chosen": None, "rejected": None}, "r:1")
    assert (k_wise.responses, k_wise.ranking) == (RANK["responses"], RANK["ranking"])
    pair = parse_ranking({"prompt": "Q?", "chosen": "good", "rejected": "bad", "responses": None,
                          "ranking": None}, "r:2")
    assert (pair.responses, pair.ranking) == (["good", "bad"], [[0], [1]])
    with pytest.raises(DataError, match=r"^r:3: chosen: missing$"):
        parse_ranking({"prompt": "Q?", "chosen": None, "rejected": "bad"}, "r:3")


def test_trl_conversational_row():
    obj = {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sky colour?"}],
        "chosen": [{"role": "assistant", "content": "Blue."}],
        "rejected": [{"role": "assistant", "content": "Green."}],
    }
    r = parse_ranking(obj, "r:1")
    assert r.prompt == "System: Be brief.\n\nUser: Sky colour?\n\nAssistant:"
    assert r.responses == ["Blue.", "Green."]
    assert r.ranking == [[0], [1]]


def test_trl_implicit_prompt_row():
    turn = {"role": "user", "content": "Sky colour?"}
    obj = {"chosen": [turn, {"role": "assistant", "content": "Blue."}],
           "rejected": [turn, {"role": "assistant", "content": "Green."}]}
    r = parse_ranking(obj, "r:1")
    assert r.prompt == "User: Sky colour?\n\nAssistant:"
    assert r.responses == ["Blue.", "Green."]


def test_trl_explicit_prompt_repeated_in_chosen_and_rejected_is_read_once():
    turn = {"role": "user", "content": "Sky colour?"}
    blue, green = {"role": "assistant", "content": "Blue."}, {"role": "assistant", "content": "Green."}
    once = parse_ranking({"prompt": [turn], "chosen": [blue], "rejected": [green]}, "r:0")
    repeated = parse_ranking({"prompt": [turn], "chosen": [turn, blue], "rejected": [turn, green]}, "r:1")
    # UltraFeedback-binarized: a text prompt, and conversations that begin with it as the user's turn
    as_text = parse_ranking({"prompt": "Sky colour?", "chosen": [turn, blue], "rejected": [turn, green]}, "r:2")
    for r in (repeated, as_text):
        assert (r.turns, r.prompt, r.responses) == ([turn], once.prompt, ["Blue.", "Green."])
    assert once.prompt == "User: Sky colour?\n\nAssistant:"


@pytest.mark.parametrize("prompt", [
    [{"role": "user", "content": "Sky colour?"}],
    [{"role": "system", "content": "Be terse."}],
    "Sea colour?",
])
def test_chosen_turns_that_do_not_repeat_the_prompt_are_an_error(prompt):
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sea colour?"}]
    obj = {"prompt": prompt, "chosen": turns + [{"role": "assistant", "content": "Blue."}],
           "rejected": turns + [{"role": "assistant", "content": "Green."}]}
    with pytest.raises(DataError, match=r"^r:1: chosen: its turns before the reply do not begin with"):
        parse_ranking(obj, "r:1")


def test_trl_prompt_completion_demonstration():
    text = parse_demonstration({"prompt": "Sky colour?", "completion": "Blue."}, "d:1")
    assert (text.prompt, text.response, text.turns, text.meta) == ("Sky colour?", "Blue.", None, {})
    turn = {"role": "user", "content": "Sky colour?"}
    chat = parse_demonstration({"prompt": [turn], "completion": [{"role": "assistant", "content": "Blue."}]}, "d:2")
    assert (chat.turns, chat.response) == ([turn], "Blue.")
    assert to_record(chat) == {"prompt": [turn], "response": "Blue."}


@pytest.mark.parametrize("row, field, words", [
    ({"prompt": "Q?", "completion": [{"role": "assistant", "content": "A."}, {"role": "user", "content": "B"}]},
     "completion", "exactly one assistant message"),
    ({"prompt": "Q?", "completion": [{"role": "user", "content": "A."}]}, "completion", "exactly one assistant"),
    ({"prompt": "Q?", "completion": ""}, "completion", "empty"),
    ({"prompt": "Q?", "completion": "A.", "response": "A."}, "completion", "not both"),
    ({"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}], "completion": "A."},
     "completion", "not both"),
    # an unknown shape: say what a demonstration has
    ({"question": "Q?", "answer": "A."}, "response",
     'missing (a demonstration has "response", TRL\'s "completion", "messages" or ShareGPT\'s "conversations"'),
])
def test_bad_completion_or_unknown_demonstration_shape(tmp_path, row, field, words):
    msg = expect_error(load_demonstrations, tmp_path, [{"prompt": "Q?", "response": "A."}, row], field)
    assert words in msg


def test_messages_demonstration():
    obj = {"messages": [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Tell a joke."},
        {"role": "assistant", "content": "Why did the otter..."},
    ], "labeler_id": "L1"}
    d = parse_demonstration(obj, "d:1")
    assert d.prompt == ("System: You are helpful.\n\nUser: Hi\n\nAssistant: Hello!\n\n"
                        "User: Tell a joke.\n\nAssistant:")
    assert d.response == "Why did the otter..."
    assert d.labeler_id == "L1"


def test_messages_demonstration_must_end_with_assistant():
    with pytest.raises(DataError, match=r"^d:1: messages: .*assistant"):
        parse_demonstration({"messages": [{"role": "user", "content": "Hi"}]}, "d:1")


USER, ASSISTANT = {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}


@pytest.mark.parametrize("load, row, field", [
    (load_prompts, {"id": "p2", "user_id": "u1", "messages": [USER, ASSISTANT]}, "messages"),
    (load_demonstrations, {"prompt": [USER, ASSISTANT], "response": "How can I help?"}, "prompt"),
    (load_rankings, {"prompt": [USER, ASSISTANT], "chosen": "More.", "rejected": "Less."}, "prompt"),
    (load_rankings, {"prompt": [USER, ASSISTANT], "responses": ["a", "b"], "ranking": [0, 1]}, "prompt"),
])
def test_a_prompt_must_end_with_a_user_turn(tmp_path, load, row, field):
    """Else the plain transcript glues the reply onto the assistant's turn ("Assistant: Hello. More.")."""
    good = {"prompts": PROMPT, "demonstrations": {"prompt": "Q?", "response": "A."}, "rankings": RANK}
    msg = expect_error(load, tmp_path, [good[load.__name__[5:]], row], field)
    assert "the prompt's last turn is 'assistant'" in msg


def test_messages_demonstration_reply_must_follow_a_user_turn():
    with pytest.raises(DataError, match=r"^d:1: messages: messages 1 and 2 are both the assistant's"):
        parse_demonstration({"messages": [USER, ASSISTANT, {"role": "assistant", "content": "Bye."}]}, "d:1")
    with pytest.raises(DataError, match=r"^r:1: chosen: messages 1 and 2 are both the assistant's"):
        parse_ranking({"chosen": [USER, ASSISTANT, ASSISTANT], "rejected": [USER, ASSISTANT, ASSISTANT]}, "r:1")


def test_render_messages_rejects_late_system():
    with pytest.raises(DataError, match="system"):
        render_messages([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}])


def test_prompt_id_resolution():
    prompts = {"p1": parse_prompt(PROMPT, "p:1")}
    d = parse_demonstration({"prompt_id": "p1", "response": "Otters..."}, "d:1", prompts)
    assert (d.prompt, d.prompt_id) == (PROMPT["text"], "p1")
    with pytest.raises(DataError, match=r"^d:2: prompt: differs"):
        parse_demonstration({"prompt_id": "p1", "prompt": "Other", "response": "x"}, "d:2", prompts)


def test_a_differing_prompt_is_named_by_the_field_it_came_from():
    prompts = {"p1": parse_prompt(PROMPT, "p:1")}
    chat = [{"role": "user", "content": "Other"}, {"role": "assistant", "content": "x"}]
    with pytest.raises(DataError, match=r"^d:1: messages: differs from the text of prompt id 'p1'"):
        parse_demonstration({"prompt_id": "p1", "messages": chat}, "d:1", prompts)
    rejected = [chat[0], {"role": "assistant", "content": "y"}]
    with pytest.raises(DataError, match=r"^r:1: chosen: differs from the text of prompt id 'p1'"):
        parse_ranking({"prompt_id": "p1", "chosen": chat, "rejected": rejected}, "r:1", prompts)
    with pytest.raises(DataError, match=r"^r:2: prompt: differs from the text of prompt id 'p1'"):
        parse_ranking({"prompt_id": "p1", "prompt": [chat[0]], "chosen": [chat[1]], "rejected": [rejected[1]]},
                      "r:2", prompts)


def test_read_jsonl_sources(tmp_path):
    path = write_lines(tmp_path / "x.jsonl", [{"a": 1}, "", {"b": 2}])
    assert list(read_jsonl(path)) == [(f"{path}:1", {"a": 1}), (f"{path}:3", {"b": 2})]


def test_a_line_over_the_limit_is_an_error_naming_file_line_and_size(tmp_path):
    """A JSONL line had no size limit: a 1 GB line was read, decoded and parsed whole (some 3 GB) before any
    check. The reader stops on a line over ``max_line_bytes`` naming the file, the line and its size."""
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"a": 1}\n' + b'{"b": "' + b"x" * 2_000 + b'"}\r\n' + b'{"c": 3}\n')
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:2: json: the line is 2,010 bytes, over the "
                                        rf"limit of 1,000 bytes a line \(jsonl\.MAX_LINE_BYTES\)"):
        list(read_jsonl(path, max_line_bytes=1_000))
    last = tmp_path / "last.jsonl"  # the last line, without its newline
    last.write_bytes(b'{"a": 1}\n' + b"y" * 1_001)
    with pytest.raises(DataError, match=r":2: json: the line is 1,001 bytes, over the limit of 1,000 bytes"):
        list(read_jsonl(last, max_line_bytes=1_000))
    exact = tmp_path / "exact.jsonl"  # a line of the limit itself, its newline not counted, is read
    exact.write_bytes(b'{"b": "' + b"x" * 991 + b'"}\n' + b'{"c": 3}')
    assert [source for source, _ in read_jsonl(exact, max_line_bytes=1_000)] == [f"{exact}:1", f"{exact}:2"]


def test_a_line_over_the_limit_is_never_held_whole(tmp_path):
    import tracemalloc
    path = tmp_path / "big.jsonl"
    path.write_bytes(b'{"text": "' + b"x" * 24 * 2**20 + b'"}\n')
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r":1: json: the line is 25,165,836 bytes"):
            list(read_jsonl(path, max_line_bytes=2**20))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20


def test_the_line_limit_is_64_mib_for_every_data_file(tmp_path):
    from instructgpt import jsonl
    assert jsonl.MAX_LINE_BYTES == 64 * 2**20
    path = tmp_path / "p.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"id": "p1", "text": "' + b"x" * (64 * 2**20) + b'", "user_id": "u"}\n')
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:1: json: the line is 67,108,904 bytes, over"):
        load_prompts(path)


def test_to_record_is_canonical():
    p = parse_prompt({**PROMPT, "lang": "en"}, "p:1")
    assert to_record(p) == {**PROMPT, "lang": "en"}
    d = Demonstration(prompt="Q", response="A", source="d:1")
    assert to_record(d) == {"prompt": "Q", "response": "A"}
    r = Ranking(prompt="Q", responses=["a", "b"], ranking=[[1], [0]], comment="ok")
    assert to_record(r) == {"prompt": "Q", "responses": ["a", "b"], "ranking": [[1], [0]], "comment": "ok"}


def strip_source(records):
    return [to_record(x) for x in records]


def test_round_trip(tmp_path):
    prompts = [parse_prompt({**PROMPT, "id": f"p{i}", "split": "train", "lang": "en"}, f"s:{i}") for i in range(3)]
    demos = [parse_demonstration({"prompt_id": "p1", "response": "A", "labeler_id": "L"}, "d:1", prompts),
             parse_demonstration({"prompt": "Q", "response": "é ✓"}, "d:2")]
    ranks = [parse_ranking({**RANK, "likert": [1, 2, 3, 4], "flags": [[], [], ["sexual"], []]}, "r:1"),
             parse_ranking({"prompt": "Q", "chosen": "a", "rejected": "b", "labeler_id": "L"}, "r:2")]

    write_jsonl(tmp_path / "out" / "p.jsonl", prompts)
    write_jsonl(tmp_path / "out" / "d.jsonl", demos)
    write_jsonl(tmp_path / "out" / "r.jsonl", ranks)
    loaded_prompts = load_prompts(tmp_path / "out" / "p.jsonl")
    assert strip_source(loaded_prompts) == strip_source(prompts)
    assert strip_source(load_demonstrations(tmp_path / "out" / "d.jsonl", loaded_prompts)) == strip_source(demos)
    assert strip_source(load_rankings(tmp_path / "out" / "r.jsonl")) == strip_source(ranks)
    # Equal as dataclasses too, once the (new) source lines are set aside.
    assert [p.__class__(**{**p.__dict__, "source": ""}) for p in loaded_prompts] == \
           [p.__class__(**{**p.__dict__, "source": ""}) for p in prompts]


def test_write_jsonl_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "p.jsonl"
    write_jsonl(path, [{"n": 0}])
    before = path.read_bytes()

    real_dumps = json.dumps
    calls = {"n": 0}

    def failing_dumps(obj, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk on fire")
        return real_dumps(obj, *args, **kwargs)

    monkeypatch.setattr(json, "dumps", failing_dumps)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_jsonl(path, [{"n": i} for i in range(5)])
    monkeypatch.undo()

    assert calls["n"] == 3
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["p.jsonl"]  # no temp file left behind


def test_write_jsonl_creates_parents_and_counts(tmp_path):
    path = tmp_path / "a" / "b" / "x.jsonl"
    assert write_jsonl(path, [{"x": 1}, Demonstration(prompt="Q", response="A")]) == 2
    assert path.read_text().splitlines() == ['{"x": 1}', '{"prompt": "Q", "response": "A"}']


# ---------------------------------------------------------------- lone surrogates, corpora

def test_a_lone_surrogate_escape_is_an_error_naming_the_field(tmp_path):
    """JSON may escape half a UTF-16 pair (\\ud800); Python decodes it to a string no tokenizer or UTF-8
    file can hold (it failed later as a TypeError in the chat format, or a UnicodeEncodeError in curate)."""
    good = {"prompt": "Q?", "response": "fine"}
    expect_error(load_demonstrations, tmp_path, [good, '{"prompt": "Q?", "response": "a\\ud800"}'], "response")
    expect_error(load_rankings, tmp_path, [RANK, '{"prompt": "Q?", "responses": ["a", "b\\uDFFF", "c", "d"], '
                                                 '"ranking": [[0], [1], [2], [3]]}'], "responses[1]")
    expect_error(load_prompts, tmp_path, [PROMPT, '{"id": "p2", "messages": [{"role": "user", "content": '
                                                  '"x\\udc00y"}], "user_id": "u"}'], "messages[0].content")


def test_an_escaped_surrogate_pair_is_one_character_and_loads(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", ['{"prompt": "Q?", "response": "ok \\ud83d\\ude00"}'])
    (demo,) = load_demonstrations(path)
    assert demo.response == "ok \U0001F600"


def test_a_corpus_that_is_not_utf8_is_an_error_naming_file_and_line(tmp_path):
    from instructgpt.lm import load_corpus
    (tmp_path / "c.txt").write_bytes(b"first doc\n\nsecond \xff doc\n")
    with pytest.raises(DataError, match=r"c\.txt:3: not valid UTF-8 \(byte 19 of the file\)"):
        load_corpus(tmp_path / "c.txt")
    (tmp_path / "c.jsonl").write_bytes(b'{"text": "one"}\n{"text": "tw\xff"}\n')
    with pytest.raises(DataError, match=r"c\.jsonl:2: json: not valid UTF-8"):
        load_corpus(tmp_path / "c.jsonl")
    (tmp_path / "d.jsonl").write_text('{"text": "one", "text": "two"}\n')  # the strict reader: duplicate keys
    with pytest.raises(DataError, match=r"d\.jsonl:1: json: invalid JSON: duplicate key"):
        load_corpus(tmp_path / "d.jsonl")
    (tmp_path / "ok.txt").write_text("\ufeffone\n\ntwo\n", encoding="utf-8")
    assert load_corpus(tmp_path / "ok.txt") == ["one", "two"]


@pytest.mark.parametrize("row, key", [
    ({"prompt": "The sky is", "completion": " green.", "label": False}, "label"),  # TRL
    ({"prompt": "The sky is", "completion": " blue.", "label": True}, "label"),
    ({"messages": [{"content": "Q", "role": "user"}, {"content": "bad", "role": "assistant"}], "label": False},
     "label"),  # LLaMA-Factory's kto_en_demo
    ({"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "bad"}], "kto_tag": False},
     "kto_tag"),
    ({"instruction": "Q", "input": "", "output": "bad", "kto_tag": False}, "kto_tag"),
])
def test_an_unpaired_preference_row_is_not_a_demonstration(tmp_path, row, key):
    """KTO rows (a reply with a true/false label) loaded as demonstrations: SFT trained on the replies
    labelled false (undesirable), the label kept as an unused extra field."""
    msg = expect_error(load_demonstrations, tmp_path, [row], key, lineno=1)
    assert "unpaired-preference (KTO)" in msg


def test_a_label_that_is_not_a_preference_stays_an_extra_field():
    demo = parse_demonstration({"prompt": "Q", "completion": "A", "label": "math"}, "d:1")
    assert demo.meta == {"label": "math"}


def test_a_corpus_with_windows_line_ends_keeps_its_documents_apart(tmp_path):
    """A CRLF .txt corpus has blank lines "\r\n\r\n", which split("\n\n") never found: every document ran
    into one, with no document end between them."""
    from instructgpt.lm import load_corpus
    body = "First document.\nIts second line.\n\nSecond document.\n \nThird.\n"
    expected = ["First document.\nIts second line.", "Second document.", "Third."]
    for name, newline in (("lf.txt", "\n"), ("crlf.txt", "\r\n"), ("cr.txt", "\r")):
        (tmp_path / name).write_text(body, encoding="utf-8", newline=newline)
        assert load_corpus(tmp_path / name) == expected, name


def test_a_corpus_too_short_for_one_block_names_its_file():
    from instructgpt.lm import pack_blocks

    class Words:
        eos_token, eos_token_id = "<|endoftext|>", 0

        def __call__(self, texts, add_special_tokens=False, split_special_tokens=False):
            return {"input_ids": [[1] * len(t.split()) for t in texts]}

    with pytest.raises(DataError, match=r"^tiny\.txt: 2 documents, 5 tokens: fewer than one block of seq_len=8"):
        pack_blocks(Words(), ["a b", "c"], 8, "tiny.txt")
    assert pack_blocks(Words(), ["a b c d e f g"], 4).tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]


def _whole_file_documents(path) -> list[str]:
    """The documents of a .txt corpus as they were read before streaming: the whole file decoded at once."""
    text = path.read_bytes().decode("utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")
    return [d.strip() for d in re.split(r"\n[^\S\n]*\n", text) if d.strip()]


def test_a_txt_corpus_read_a_chunk_at_a_time_has_the_documents_of_the_whole_file(tmp_path, monkeypatch):
    """Chunks of 1 to 9 bytes cut lines, CRLF pairs, multi-byte characters and the byte-order mark anywhere."""
    import random

    from instructgpt import lm
    rng = random.Random(0)
    atoms = ["a", "bc", " ", "\t", "\n", "\r\n", "\r", "\u3000", "\u2028", "é", "日本", "\x85", "\x0c", "\n \n",
             "\r\n\r\n", "\r\n \r\n", "\ufeff"]
    path = tmp_path / "c.txt"
    for _ in range(1500):
        text = "".join(rng.choice(atoms) for _ in range(rng.randint(0, 60)))
        path.write_bytes(rng.choice((b"", b"\xef\xbb\xbf")) + text.encode())
        monkeypatch.setattr(lm, "READ_BYTES", rng.randint(1, 9))
        assert lm.load_corpus(path) == _whole_file_documents(path), (path.read_bytes(), lm.READ_BYTES)


def test_a_long_document_is_searched_once_not_again_at_every_chunk(tmp_path, monkeypatch):
    """The unfinished document was joined to each new chunk and searched again for a blank line, and the bytes of
    an unfinished line for a line end: quadratic in a document's size (4.2 s for one 64 MB document of lines, 2.6 s
    for one of a single line). Now the blank-line pattern is given each character about once and no line-end
    search in the bytes covers more than a chunk; a blank line across two chunks still ends a document."""
    import sys

    from instructgpt import lm
    lines = "".join(f"line {i} of the first document\r\n" for i in range(400))
    body = lines + " \r\n\r" + "\nsecond " * 100 + "\r\n\t \r\n" + "x" * 5000
    path = tmp_path / "c.txt"
    path.write_bytes(body.encode())
    blank_line = lm._BLANK_LINE

    class Counting:
        def split(self, text):
            searched.append(len(text))
            return blank_line.split(text)

    def profile(frame, event, arg):
        if event == "c_call" and arg.__name__ == "rfind" and isinstance(arg.__self__, (bytes, bytearray)):
            line_searches.append(len(arg.__self__))

    for size in (7, 100):
        searched, line_searches = [], []
        monkeypatch.setattr(lm, "READ_BYTES", size)
        monkeypatch.setattr(lm, "_BLANK_LINE", Counting())
        sys.setprofile(profile)
        try:
            docs = lm.load_corpus(path)
        finally:
            sys.setprofile(None)
            monkeypatch.undo()
        assert docs == _whole_file_documents(path) and len(docs) == 3
        assert sum(searched) < len(body) + 2 * len(searched), size
        assert line_searches and max(line_searches) <= size


def test_a_bad_byte_after_the_byte_order_mark_names_its_own_line_and_byte(tmp_path, monkeypatch):
    """Decoded whole with utf-8-sig, the error's position left out the mark's 3 bytes: line 1, byte 6 here."""
    from instructgpt import lm
    (tmp_path / "c.txt").write_bytes(b"\xef\xbb\xbfab\ncd\xff\n")
    for size in (1, 2, 5, 1 << 20):
        monkeypatch.setattr(lm, "READ_BYTES", size)
        with pytest.raises(DataError, match=r"c\.txt:2: not valid UTF-8 \(byte 9 of the file\)"):
            lm.load_corpus(tmp_path / "c.txt")


@pytest.fixture
def corpus_tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def test_a_streamed_corpus_packs_the_ids_of_one_document_at_a_time(tmp_path, monkeypatch, corpus_tokenizer):
    """Tokenized in batches and held as int32, a .txt (BOM, CRLF, blank lines holding spaces) and a .jsonl corpus
    give the ids of tokenizing each document alone, joined by the document end; batches are taken as long."""
    from tests.conftest import toy_corpus

    from instructgpt import lm
    tok = corpus_tokenizer
    docs = [d.replace(" ", "\r\n", 1) + " <|endoftext|> ünï" if i % 7 == 0 else d
            for i, d in enumerate(toy_corpus(300, seed=3))]
    txt = tmp_path / "c.txt"
    txt.write_bytes(b"\xef\xbb\xbf" + "\r\n \r\n".join(docs).encode() + b"\r\n\t\r\n")
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    end = lm.document_end_id(tok)
    monkeypatch.setattr(lm, "READ_BYTES", 100)
    monkeypatch.setattr(lm, "TOKENIZE_CHARS", 500)
    for path, expected_docs in ((txt, _whole_file_documents(txt)), (jsonl, docs)):
        expected = [i for d in expected_docs
                    for i in tok(d, add_special_tokens=False, split_special_tokens=True)["input_ids"] + [end]]
        blocks = lm.pack_blocks(tok, lm.corpus_documents(path), 16, str(path))
        assert blocks.dtype == torch.int32 and blocks.shape == (len(expected) // 16, 16)
        assert blocks.flatten().tolist() == expected[:blocks.numel()], path.name
    stream = lm.BlockStream(blocks, seed=0)
    taken = stream.next(3)
    assert taken.dtype == torch.long and taken.tolist() == [blocks[int(i)].tolist() for i in stream._order(0)[:3]]


def test_packing_at_most_max_blocks_gives_the_first_blocks_of_the_whole_corpus(monkeypatch, corpus_tokenizer):
    """Any batch size and limit: the blocks are the whole corpus's first ones (all of them when it has fewer)."""
    from tests.conftest import toy_corpus

    from instructgpt import lm
    docs = toy_corpus(200, seed=4)
    whole = lm.pack_blocks(corpus_tokenizer, docs, 16)
    for chars in (1, 50, 1 << 18):
        monkeypatch.setattr(lm, "TOKENIZE_CHARS", chars)
        for max_blocks in (1, 2, 7, len(whole), len(whole) + 5):
            assert torch.equal(lm.pack_blocks(corpus_tokenizer, iter(docs), 16, max_blocks=max_blocks),
                               whole[:max_blocks]), (chars, max_blocks)


def test_packing_a_corpus_holds_its_token_ids_in_some_4_bytes_each(tmp_path, monkeypatch, corpus_tokenizer):
    """The whole file, its text, a list of its documents and a Python list of every id (8-36 bytes a token) were
    held before the blocks were made: 18.8 bytes a token at the peak here (ids below 256 are shared ints), some
    53 for a real vocabulary. Now: the int32 ids (4 bytes, counted twice by tracemalloc while the array grows)
    and a chunk of text and of ids at a time."""
    import tracemalloc

    from tests.conftest import toy_corpus

    from instructgpt import lm
    path = tmp_path / "c.txt"
    path.write_text("\n\n".join(toy_corpus(10000, seed=1)), encoding="utf-8")
    monkeypatch.setattr(lm, "READ_BYTES", 1 << 15)
    monkeypatch.setattr(lm, "TOKENIZE_CHARS", 1 << 15)
    tracemalloc.start()
    try:
        blocks = lm.pack_blocks(corpus_tokenizer, lm.corpus_documents(path), 64, str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert blocks.numel() > 300_000
    assert peak / blocks.numel() < 10, f"{peak / blocks.numel():.1f} bytes a token"


def test_a_block_stream_draws_each_epochs_order_once(monkeypatch):
    """BlockStream drew a permutation of all the blocks for every block it took (PPO-ptx: 13 ms a block of a
    corpus of 383K blocks); each epoch's order is drawn once now: the same blocks in the same order, also
    after a resume that sets the position."""
    from instructgpt import lm
    blocks = torch.arange(15, dtype=torch.int32).view(5, 3)
    draws, randperm = [], torch.randperm
    monkeypatch.setattr(torch, "randperm", lambda *a, **kw: draws.append(a) or randperm(*a, **kw))
    stream = lm.BlockStream(blocks, seed=3)
    taken = torch.cat([stream.next(4), stream.next(7)])  # 11 blocks of epochs 0, 1 and 2
    assert len(draws) == 3
    orders = [randperm(5, generator=torch.Generator().manual_seed(3 * 1000003 + e)) for e in range(3)]
    assert taken.tolist() == [blocks[orders[p // 5][p % 5]].tolist() for p in range(11)]
    resumed = lm.BlockStream(blocks, seed=3)
    resumed.position = 6
    assert torch.equal(resumed.next(5), taken[6:])


def test_pretraining_reads_its_packed_blocks_and_trains_on_the_same_batches(tmp_path, monkeypatch, tokenizer_dir):
    """pretrain copied every block into an Encoded with an array of its own (the corpus's ids held twice, plus an
    object per block); its task reads the packed blocks themselves now, and every batch it trains and validates
    on is the batch those Encoded examples made."""
    from tests.conftest import toy_corpus

    from instructgpt import config, lm, pretrain
    from instructgpt.batching import Encoded, collate_lm
    packed, tasks, batches = [], [], []
    pack_blocks = pretrain.pack_blocks

    def pack(*args, **kw):
        packed.append(pack_blocks(*args, **kw))
        return packed[-1]

    class Recording(lm.BlockTask):
        def __init__(self, blocks):
            super().__init__(blocks)
            tasks.append(self)

        def collate(self, indices):
            batches.append((self, list(indices), super().collate(indices)))
            return batches[-1][2]

    monkeypatch.setattr(pretrain, "pack_blocks", pack)
    monkeypatch.setattr(pretrain, "BlockTask", Recording)
    (tmp_path / "corpus.txt").write_text("\n\n".join(toy_corpus(80, seed=5)))
    (tmp_path / "valid.txt").write_text("\n\n".join(toy_corpus(30, seed=6)))
    pretrain.train_pretrain(config.from_dict(pretrain.PretrainConfig, dict(
        corpus=str(tmp_path / "corpus.txt"), valid_corpus=str(tmp_path / "valid.txt"), tokenizer=str(tokenizer_dir),
        out_dir=str(tmp_path / "pre"), n_layer=1, n_embd=32, n_head=2, seq_len=16, batch_size=4, micro_batch_size=2,
        max_steps=3, progress=False, device="cpu")))
    assert len(packed) == 2 and {id(t.blocks) for t in tasks} == {id(b) for b in packed}  # no copy
    assert {id(t) for t, _, _ in batches} == {id(t) for t in tasks}  # training and validation batches
    for task, indices, batch in batches:
        old = collate_lm([Encoded([], task.blocks[i].tolist()) for i in indices], 0, response_only=False)
        assert batch.keys() == old.keys()
        assert all(torch.equal(batch[k], old[k]) and batch[k].dtype == old[k].dtype for k in old)


def test_a_prompt_id_matches_its_prompt_given_as_text_or_as_one_user_turn():
    text_prompt = parse_prompt(PROMPT, "p:1")
    chat_prompt = parse_prompt({**PROMPT, "id": "p2", "text": None,
                                "messages": [{"role": "user", "content": PROMPT["text"]}]}, "p:2")
    prompts = {"p1": text_prompt, "p2": chat_prompt}
    turn = [{"role": "user", "content": PROMPT["text"]}]
    # the record's other form of the same prompt is accepted, and the prompts file's form is kept
    as_turn = parse_demonstration({"prompt_id": "p1", "prompt": turn, "response": "Otters."}, "d:1", prompts)
    assert (as_turn.prompt, as_turn.turns) == (PROMPT["text"], None)
    as_text = parse_ranking({"prompt_id": "p2", "prompt": PROMPT["text"], "chosen": "a", "rejected": "b"}, "r:1",
                            prompts)
    assert (as_text.prompt, as_text.turns) == (chat_prompt.text, turn)
    # a conversation whose transcript the prompts file holds as text keeps its turns
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    prompts["p3"] = parse_prompt({**PROMPT, "id": "p3", "text": render_messages(chat)}, "p:3")
    kept = parse_demonstration({"prompt_id": "p3", "messages": chat + [{"role": "assistant", "content": "Yo"}]},
                               "d:2", prompts)
    assert kept.turns == chat
    with pytest.raises(DataError, match=r"^d:3: prompt: differs"):
        parse_demonstration({"prompt_id": "p2", "prompt": [{"role": "user", "content": "Other"}], "response": "x"},
                            "d:3", prompts)
