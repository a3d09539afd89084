"""The evaluation asks every model through its chat format (instructgpt.chat.ChatFormat), exactly as training did."""

from __future__ import annotations

import pytest
import torch

from instructgpt.data import DataError, Prompt, load_prompts
from instructgpt.evaluation.config import EvalConfig
from instructgpt.evaluation.policies import ModelPool, ModelSpec, PolicyRunner
from instructgpt.evaluation.scoring import policy_reward, reward_model_sequences, reward_scores
from tests.conftest import write_jsonl

from .chat_models import chatml_model, chatml_tokenizer, force_token

QUESTION = "say red blue"


def _cfg(**kw) -> EvalConfig:
    base = dict(run_dir="-", device="cpu", max_new_tokens=6, temperature=0.0, seed=0, n_prompts=0)
    base.update(kw)
    return EvalConfig(**base)


def _runner(folder, **kw) -> PolicyRunner:
    spec = ModelSpec("sft", "sft", str(folder))
    return PolicyRunner(spec, _cfg(**kw), ModelPool(torch.device("cpu")))


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def chat_sft(tmp_path_factory):
    return chatml_model(tmp_path_factory.mktemp("chatml-sft"))


@pytest.fixture(scope="module")
def tok():
    return chatml_tokenizer()


def test_a_chatml_model_is_prompted_through_its_template(chat_sft, tok, tmp_path):
    start, end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    runner = _runner(chat_sft)
    expected = ([start] + _ids(tok, f"user\n{QUESTION}") + [end] + _ids(tok, "\n")
                + [start] + _ids(tok, "assistant\n"))
    assert runner.prompt_ids(Prompt("p1", QUESTION, "u")) == expected
    assert runner.fmt.stop_ids == (end, tok.eos_token_id)
    # a messages record keeps its turns (the system turn too), not its plain transcript
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "m", "user_id": "u", "messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": QUESTION}]}])
    (chat,) = load_prompts(path)
    assert runner.prompt_ids(chat) == ([start] + _ids(tok, "system\nbe brief") + [end] + _ids(tok, "\n")
                                       + expected)
    # the answer's ids follow the prompt: text + end of turn; an empty answer is the end of turn alone
    assert runner.response_ids(chat, "red") == _ids(tok, "red") + [end]
    assert runner.response_ids(chat, "") == [end]
    # chat_template=none: plain text, prompt and newline
    plain = _runner(chat_sft, chat_template="none")
    assert plain.prompt_ids(Prompt("p1", QUESTION, "u")) == tok(QUESTION + "\n")["input_ids"]
    assert plain.fmt.stop_ids == (tok.eos_token_id,)
    # continuations (cloze, bias): the text as the user's turn, the candidate as the reply, end of turn included
    ctx, cont = runner.continuation("the cat is", " red.")
    assert ctx == runner.fmt.prompt_ids("the cat is") and cont == _ids(tok, "red.") + [end]
    assert plain.continuation("the cat is", " red.") == (tok("the cat is")["input_ids"], _ids(tok, " red."))


def test_generation_stops_at_the_end_of_turn(tmp_path, tok):
    end = tok.convert_tokens_to_ids("<|im_end|>")
    folder = force_token(chatml_model(tmp_path / "eot"), end)
    runner = _runner(folder)
    (answer,) = runner.sample([Prompt("p1", QUESTION, "u")])
    assert str(answer) == "" and answer.ids == [end] and answer.ended
    # without the template, the same model never stops (it keeps writing <|im_end|>, which is not EOS)
    (plain,) = _runner(folder, chat_template="none").sample([Prompt("p1", QUESTION, "u")])
    assert plain.ids == [end] * 6 and not plain.ended


def test_an_over_long_prompt_is_an_error_naming_the_record(chat_sft, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "user_id": "u", "text": "hi"},
                                              {"id": "b", "user_id": "u", "text": " ".join(["red blue"] * 70)}])
    runner = _runner(chat_sft, max_new_tokens=16)
    with pytest.raises(DataError, match=rf"^{path}:2: prompt: \d+ tokens \+ max_new_tokens=16 = \d+, over the "
                                        r"model's 128 positions"):
        runner.sample(load_prompts(path))


def test_the_reward_model_reads_answers_in_its_own_format(chat_sft, tok, tmp_path):
    """A plain-text policy's answers are encoded again in the chat format the RM's tokenizer carries."""
    from instructgpt.models import load_tokenizer
    from instructgpt.reward_model import RewardModel
    RewardModel.from_policy(chat_sft).save_pretrained(tmp_path / "rm", tok)
    rm, rm_tok = RewardModel.from_pretrained(tmp_path / "rm").eval(), load_tokenizer(tmp_path / "rm")
    start, end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    prompts = [Prompt("p1", QUESTION, "u"), Prompt("p2", "count one two", "u")]
    answers = ["red blue", ""]
    seqs = reward_model_sequences(rm, rm_tok, prompts, answers)
    assert seqs[0] == ([start] + _ids(tok, f"user\n{QUESTION}") + [end] + _ids(tok, "\n") + [start]
                       + _ids(tok, "assistant\nred blue") + [end])
    assert seqs[1][-2:] == _ids(tok, "assistant\n")[-1:] + [end]  # "" is the end of turn alone
    plain = _runner(chat_sft, chat_template="none")
    sampled = plain.sample(prompts)
    got = policy_reward(plain, rm, rm_tok, prompts, sampled, batch_size=4)
    want = reward_scores(rm, reward_model_sequences(rm, rm_tok, prompts, sampled), rm_tok.pad_token_id)
    assert got == pytest.approx(want, abs=1e-6)
    # same format (the template): the sampled ids are scored as they are
    chat = _runner(chat_sft)
    sampled = chat.sample(prompts)
    exact = [chat.prompt_ids(p) + list(a.ids) for p, a in zip(prompts, sampled)]
    assert policy_reward(chat, rm, rm_tok, prompts, sampled, 4) == pytest.approx(
        reward_scores(rm, exact, rm_tok.pad_token_id), abs=1e-6)


def test_an_answer_cut_at_max_new_tokens_reads_the_same_to_the_reward_model_whatever_the_policys_tokenizer(
        tmp_path, tok):
    """A cut answer has no end token in its sampled ids; encoded again from its text (a policy of another
    format), it must not gain one: the same answer would score as finished for one policy, cut for the other."""
    from instructgpt.models import load_tokenizer
    from instructgpt.reward_model import RewardModel
    from .chat_models import last_token_reward_model, token_of
    red, blue, end = token_of(tok, " red"), token_of(tok, " blue"), tok.convert_tokens_to_ids("<|im_end|>")
    policy = force_token(chatml_model(tmp_path / "red"), red)
    rm_path = last_token_reward_model(chatml_model(tmp_path / "rm_base", seed=2), tmp_path / "rm", tok, red, blue)
    rm, rm_tok = RewardModel.from_pretrained(rm_path).eval(), load_tokenizer(rm_path)
    prompts = [Prompt("p1", QUESTION, "u"), Prompt("p2", "count one two", "u")]
    chat = _runner(policy, max_new_tokens=3)
    sampled = chat.sample(prompts)
    assert [(str(a), a.ended) for a in sampled] == [("red red red", False)] * 2
    with torch.no_grad():
        by_ids = policy_reward(chat, rm, rm_tok, prompts, sampled, 4)
        seqs = reward_model_sequences(rm, rm_tok, prompts, sampled)
        by_text = reward_scores(rm, seqs, rm_tok.pad_token_id)
    assert all(s[-1] == red for s in seqs)            # cut: no end of turn after the answer
    assert by_ids == pytest.approx([4.0, 4.0], abs=1e-3) and by_text == pytest.approx(by_ids, abs=1e-5)
    # a finished answer keeps its end token
    done = reward_model_sequences(rm, rm_tok, prompts[:1], [" red"])[0]
    assert done[-2:] == [red, end]


def test_a_prompted_plain_text_bases_reward_is_read_at_the_end_token_not_at_its_lines_newline(tmp_path):
    """base_prompted answers on a line and stops at a newline token; scored as its sampled ids (the RM's own
    vocabulary and format), the reward was read at that newline, a token the RM was never trained to read
    a reward at. Its answer is now encoded again, ending with the end token, as an SFT answer is."""
    from instructgpt.data import Prompt as P
    from instructgpt.evaluation.policies import ModelPool as Pool
    from instructgpt.evaluation.policies import ModelSpec as Spec
    from instructgpt.models import load_tokenizer
    from instructgpt.reward_model import RewardModel
    from .chat_models import last_token_reward_model, token_of
    plain = chatml_tokenizer(None)
    newline, red = token_of(plain, "\n"), token_of(plain, " red")
    base = force_token(chatml_model(tmp_path / "base", template=None), newline)
    rm_path = last_token_reward_model(chatml_model(tmp_path / "rm_base", seed=2, template=None), tmp_path / "rm",
                                      plain, newline, red)        # +4 read at a newline, 0 at the end token
    runner = PolicyRunner(Spec("base_prompted", "base_prompted", str(base), prompted=True), _cfg(max_new_tokens=4),
                          Pool(torch.device("cpu")), [("say red", "red")])
    prompts = [P("p1", QUESTION, "u"), P("p2", "count one two", "u")]
    answers = runner.sample(prompts)
    assert [(a.ids, a.ended) for a in answers] == [([newline], True)] * 2   # the line ended at once
    rm, rm_tok = RewardModel.from_pretrained(rm_path).eval(), load_tokenizer(rm_path)
    with torch.no_grad():
        got = policy_reward(runner, rm, rm_tok, prompts, answers, 4)
        want = reward_scores(rm, reward_model_sequences(rm, rm_tok, prompts, answers), rm_tok.pad_token_id)
    assert reward_model_sequences(rm, rm_tok, prompts, answers)[0][-1] == plain.eos_token_id
    assert got == pytest.approx(want, abs=1e-6) and got == pytest.approx([0.0, 0.0], abs=0.5)
