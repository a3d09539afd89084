"""Other toolkits' conversation shapes read as ours: ShareGPT, Alpaca, Anthropic HH-RLHF."""

from __future__ import annotations

import json
import re

import pytest

from instructgpt.data import (
    DataError, load_demonstrations, load_rankings, parse_demonstration, parse_prompt, parse_ranking, to_record,
)
from instructgpt.other_formats import hh_messages, sharegpt_messages

USER = {"role": "user", "content": "Sky colour?"}
BLUE = {"role": "assistant", "content": "Blue."}


def test_sharegpt_speakers_become_our_roles():
    value = [{"from": "human", "value": "Sky colour?"}, {"from": "gpt", "value": "Blue."},
             {"from": "Human", "value": "Sure?"}, {"role": "assistant", "content": "Yes."}]
    assert sharegpt_messages(value, "Be brief.", "s:1", "conversations") == [
        {"role": "system", "content": "Be brief."}, USER, BLUE,
        {"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "Yes."}]
    with pytest.raises(DataError, match=r"^s:1: conversations: message 1 is from 'observation', which is not a chat"):
        sharegpt_messages([{"from": "human", "value": "Q"}, {"from": "observation", "value": "x"}], None, "s:1",
                          "conversations")


def test_hh_transcript_splits_into_turns():
    text = "\n\nHuman: Sky colour?\n\nAssistant: Blue.\n\nHuman: Sure?\n\nAssistant:  Yes, blue.\n"
    assert hh_messages(text, "h:1", "chosen") == [USER, BLUE, {"role": "user", "content": "Sure?"},
                                                  {"role": "assistant", "content": "Yes, blue."}]
    with pytest.raises(DataError, match=r'^h:1: rejected: an HH transcript .* no "Assistant:" turn'):
        hh_messages("Human: hello", "h:1", "rejected")


def test_sharegpt_demonstration_and_prompt_are_read_as_messages():
    row = {"conversations": [{"from": "human", "value": "Sky colour?"}, {"from": "gpt", "value": "Blue."}],
           "system": "Be brief.", "source": "vicuna"}
    demo = parse_demonstration(row, "d:1")
    system = {"role": "system", "content": "Be brief."}
    assert (demo.turns, demo.response, demo.meta) == ([system, USER], "Blue.", {"source": "vicuna"})
    assert demo.prompt == "System: Be brief.\n\nUser: Sky colour?\n\nAssistant:"
    # written back in our form, which reads back the same
    assert to_record(demo) == {"messages": [system, USER, {"role": "assistant", "content": "Blue."}],
                               "source": "vicuna"}
    assert parse_demonstration(to_record(demo), "d:2").turns == demo.turns
    prompt = parse_prompt({"id": "p1", "user_id": "u1", "conversations": [{"from": "human", "value": "Sky colour?"}]},
                          "p:1")
    assert prompt.turns == [USER]


def test_sharegpt_preference_row_llama_factory():
    row = {"conversations": [{"from": "human", "value": "Sky colour?"}],
           "chosen": {"from": "gpt", "value": "Blue."}, "rejected": {"from": "gpt", "value": "Green."}}
    r = parse_ranking(row, "r:1")
    assert (r.turns, r.responses, r.ranking) == ([USER], ["Blue.", "Green."], [[0], [1]])
    kwise = parse_ranking({"conversations": [{"from": "human", "value": "Sky colour?"}],
                           "responses": ["a", "b", "c"], "ranking": [2, 0, 1]}, "r:2")
    assert kwise.turns == [USER] and kwise.ranking == [[2], [0], [1]]


def test_hh_rlhf_row_is_a_pair_with_the_shared_turns_as_prompt(tmp_path):
    earlier = "\n\nHuman: Sky colour?\n\nAssistant: Blue.\n\nHuman: Sure?"
    rows = [{"chosen": earlier + "\n\nAssistant: Yes, blue.", "rejected": earlier + "\n\nAssistant: No, green."}]
    path = tmp_path / "hh.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in rows))
    (r,) = load_rankings(path)
    assert r.turns == [USER, BLUE, {"role": "user", "content": "Sure?"}]
    assert (r.responses, r.ranking) == (["Yes, blue.", "No, green."], [[0], [1]])
    assert r.prompt == "User: Sky colour?\n\nAssistant: Blue.\n\nUser: Sure?\n\nAssistant:"


@pytest.mark.parametrize("row, message", [
    # the two sides must share the dialogue before the reply
    ({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello.", "rejected": "\n\nHuman: Yo\n\nAssistant: Hey."},
     r"rejected: its earlier turns differ from those of `chosen`"),
    # HH rows whose last reply is empty (there are some in the public set)
    ({"chosen": "\n\nHuman: Hi\n\nAssistant:", "rejected": "\n\nHuman: Hi\n\nAssistant: Hey."},
     r"chosen: message 1 \(assistant\) content is empty"),
    ({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello.", "rejected": "Hey."},
     r'rejected: an HH transcript .* no "Assistant:" turn'),
])
def test_bad_hh_rows_name_the_side(tmp_path, row, message):
    path = tmp_path / "hh.jsonl"
    good = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello.", "rejected": "\n\nHuman: Hi\n\nAssistant: Hey."}
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=rf"hh.jsonl:2: {message}"):
        load_rankings(path)


def test_a_plain_text_pair_with_a_prompt_is_not_read_as_hh():
    r = parse_ranking({"prompt": "Quote the dialogue.", "chosen": "Human: hi\n\nAssistant: hello", "rejected": "no"},
                      "r:1")
    assert r.responses == ["Human: hi\n\nAssistant: hello", "no"] and r.turns is None


def test_alpaca_demonstrations(tmp_path):
    rows = [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
            {"instruction": "Name a colour.", "input": "", "output": "Blue."},
            {"instruction": "And 3 squared?", "output": "9", "system": "Math tutor.", "history": [["2 squared?", "4"]]}]
    path = tmp_path / "alpaca.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in rows))
    with_input, plain, chat = load_demonstrations(path)
    assert (with_input.prompt, with_input.response, with_input.turns) == ("Add the numbers.\n\n2 and 3", "5", None)
    assert (plain.prompt, plain.turns, plain.meta) == ("Name a colour.", None, {})
    assert chat.turns == [{"role": "system", "content": "Math tutor."}, {"role": "user", "content": "2 squared?"},
                          {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3 squared?"}]
    assert chat.response == "9"


@pytest.mark.parametrize("row, field, words", [
    ({"instruction": "Q?"}, "output", "expected a string, got null"),
    ({"instruction": "Q?", "output": " "}, "output", "empty"),
    ({"instruction": "Q?", "output": "A.", "history": [["only the question"]]}, "history", "entry 0 is not"),
    ({"instruction": "Q?", "output": "A.", "response": "A."}, "response", "not both"),
    ({"conversations": [{"from": "human", "value": "Q"}],
      "messages": [USER, BLUE]}, "conversations", "not both"),
    ({"conversations": [{"from": "human", "value": "Q"}, {"from": "human", "value": "A"}]}, "conversations",
     "the last message must be the assistant's reply"),
    ({"conversations": [{"from": "human", "value": "Q"}, {"from": "function_call", "value": "f()"}]},
     "conversations", "not a chat turn"),
])
def test_bad_rows_of_other_formats_name_the_field(row, field, words):
    with pytest.raises(DataError) as info:
        parse_demonstration(row, "d:7")
    assert str(info.value).startswith(f"d:7: {field}: ") and words in str(info.value)


@pytest.mark.parametrize("row, message", [
    ({"conversations": [{"from": "human", "value": "  "}, {"from": "gpt", "value": "A"}], "system": "Be brief."},
     r"conversations: message 0 \(user\) content is empty"),
    ({"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": 5}], "system": "Be brief."},
     r"conversations: message 1 \(assistant\) content must be a string"),
    ({"conversations": [{"from": "system", "value": "S1"}, {"from": "human", "value": "Q"},
                        {"from": "gpt", "value": "A"}], "system": "S2"},
     r"conversations: message 0 is a system message and the row also has a top-level `system`"),
])
def test_sharegpt_errors_count_messages_as_the_file_does(tmp_path, row, message):
    """The top-level system text was put first before the messages were checked, so every error named the
    message after the one at fault (conversations[0] was "message 1")."""
    path = tmp_path / "sg.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:1: {message}"):
        load_demonstrations(path)


def test_messages_with_a_top_level_system_keep_it_as_the_first_turn():
    """LLaMA-Factory's sharegpt layout with role/content tags (`messages` and `system` columns): the system
    prompt went into the record's extra fields, and the model trained without it."""
    conv = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}]
    demo = parse_demonstration({"messages": conv, "system": "Answer in French."}, "d:1")
    assert demo.turns == [{"role": "system", "content": "Answer in French."}, conv[0]] and demo.meta == {}
    prompt = parse_prompt({"id": 1, "user_id": "u", "messages": conv[:1], "system": "Answer in French."}, "p:1")
    assert prompt.turns == demo.turns and prompt.text == "System: Answer in French.\n\nUser: Q1\n\nAssistant:"
    with pytest.raises(DataError, match=r"^d:2: messages: message 0 is a system message and the row also has"):
        parse_demonstration({"messages": [{"role": "system", "content": "S"}, *conv], "system": "T"}, "d:2")


@pytest.mark.parametrize("row, parse", [
    ({"prompt": "Q1", "response": "A1"}, "demonstration"),            # TRL prompt/completion, OpenOrca renamed
    ({"prompt_id": "p1", "response": "A1"}, "demonstration"),
    ({"prompt": [{"role": "user", "content": "Q1"}], "chosen": "A", "rejected": "B"}, "ranking"),
    ({"prompt": "Q1", "responses": ["A", "B"], "ranking": [0, 1]}, "ranking"),
    ({"id": "p1", "user_id": "u", "text": "Q1"}, "prompt"),
])
def test_a_top_level_system_text_where_it_is_not_read_is_an_error(row, parse):
    """A top-level `system` is read next to messages and conversations; next to a text prompt (OpenOrca's
    system_prompt/question/response renamed) it went into the extra fields, and the model never saw it."""
    prompts = [parse_prompt({"id": "p1", "user_id": "u", "text": "Q1"}, "p:1")]
    fn = {"demonstration": lambda r, src: parse_demonstration(r, src, prompts),
          "ranking": lambda r, src: parse_ranking(r, src, prompts), "prompt": parse_prompt}[parse]
    with pytest.raises(DataError, match=r"^r:3: system: a top-level system text is read next to `messages`"):
        fn({**row, "system": "Answer in French."}, "r:3")
    fn(row, "r:3")  # without it, the same row reads


def test_llama_factory_alpaca_preference_rows_take_the_instruction_as_the_prompt():
    """LLaMA-Factory's alpaca preference layout: instruction (+ input, system, history) and chosen/rejected
    replies; it used to be 'prompt: missing'."""
    row = {"instruction": "Add the numbers.", "input": "2 and 3", "chosen": "5", "rejected": "6"}
    r = parse_ranking(row, "r:1")
    assert (r.prompt, r.turns, r.responses, r.ranking, r.meta) == ("Add the numbers.\n\n2 and 3", None,
                                                                   ["5", "6"], [[0], [1]], {})
    chat = parse_ranking({**row, "system": "Be exact.", "history": [["1 and 1?", "2"]], "note": "kept"}, "r:2")
    assert chat.turns == [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "1 and 1?"},
                          {"role": "assistant", "content": "2"}, {"role": "user", "content": "Add the numbers.\n\n2 and 3"}]
    assert chat.meta == {"note": "kept"}
    kwise = parse_ranking({"instruction": "Pick.", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]}, "r:3")
    assert (kwise.prompt, kwise.ranking) == ("Pick.", [[2], [0], [1]])
    with pytest.raises(DataError, match=r"^r:4: instruction: give either `prompt` or Alpaca's `instruction`"):
        parse_ranking({**row, "prompt": "Add."}, "r:4")
    with pytest.raises(DataError, match=r"^r:5: chosen: with Alpaca's `instruction` as the prompt"):
        parse_ranking({"instruction": "Q", "chosen": [{"role": "user", "content": "Q"}, {"role": "assistant",
                       "content": "A"}], "rejected": [{"role": "user", "content": "Q"},
                                                     {"role": "assistant", "content": "B"}]}, "r:5")


def test_an_implicit_prompt_pair_of_plain_texts_is_named_as_such():
    """TRL's implicit-prompt standard rows ({chosen, rejected} as plain texts) have no mark where the prompt
    ends; the error says so instead of a bare 'prompt: missing'."""
    with pytest.raises(DataError, match=r"^r:1: prompt: missing: `chosen` and `rejected` are plain texts and no "
                                        r"`prompt` says where the prompt ends \(TRL's implicit-prompt"):
        parse_ranking({"chosen": "The sky is blue.", "rejected": "The sky is green."}, "r:1")
