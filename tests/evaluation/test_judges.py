"""The automatic judges' arithmetic on hand-made cases, and a real (tiny) judge model's prompt and verdicts."""

from __future__ import annotations

import pytest
import torch

from instructgpt.data import Prompt
from instructgpt.evaluation.judges import (EMPTY_ANSWER, JUDGE_PROMPT, JudgeModel, judge_request, pairwise_outcomes,
                                           reward_model_outcomes)
from instructgpt.evaluation.own_prompts import add_judge
from instructgpt.evaluation.results import ModelResult
from instructgpt.evaluation.stats import wilson_interval

from .chat_models import chatml_model, chatml_tokenizer, force_token, token_of


def _prompts(n: int, use_cases=("generation", "open_qa")) -> list[Prompt]:
    return [Prompt(f"p{i}", f"question {i}", "u", use_case=use_cases[i % len(use_cases)]) for i in range(n)]


class KnownJudge:
    """Prefers an answer that says "good"; between two of a kind it has no preference. Records what it was asked."""

    def __init__(self):
        self.asked: list[tuple[str, str]] = []

    def prob_a(self, requests, a, b):
        self.asked += list(zip(a, b))
        return [0.9 if "good" in x and "good" not in y else 0.1 if "good" in y and "good" not in x else 0.5
                for x, y in zip(a, b)]


class AlwaysA:
    """Position bias and nothing else: prefers whatever is shown first."""

    def prob_a(self, requests, a, b):
        return [0.8] * len(a)


def test_known_preferences_give_known_win_rates_and_intervals():
    prompts = _prompts(10)
    model = ["good"] * 6 + ["bad a", "bad b"] + ["meh a", "meh b"]
    base = ["bad"] * 6 + ["good", "good"] + ["meh c", "meh d"]
    judge = KnownJudge()
    verdicts = pairwise_outcomes(judge, prompts, model, base)
    assert verdicts.outcomes == [1.0] * 6 + [0.0] * 2 + [0.5] * 2
    assert verdicts.preference == pytest.approx([0.9] * 6 + [0.1] * 2 + [0.5] * 2)
    # both orders asked: the model's answer as A, then as B
    assert judge.asked[:10] == list(zip(model, base)) and judge.asked[10:] == list(zip(base, model))
    m = ModelResult("ppo", "ppo")
    add_judge(m, "judge_model", verdicts.outcomes, prompts, seed=3)
    est = m.win_rate["judge_model"]
    assert est.value == pytest.approx(0.7) and est.n == 10 and est.method == "wilson-prompts"
    # one outcome per prompt: v = 10/9 * (6 * 0.3^2 + 2 * 0.7^2 + 2 * 0.2^2) / 10^2, effective size 0.21 / v
    n_eff = 0.21 / (10 / 9 * 1.6 / 100)
    assert n_eff == pytest.approx(11.8125)
    assert (est.low, est.high) == pytest.approx(wilson_interval(0.7 * n_eff, n_eff, z=2.2622), abs=2e-4)
    assert 0.35 < est.low < 0.7 < est.high <= 1.0
    by_case = m.judge_use_case_win_rates["judge_model"]
    # generation = even prompts: 1,1,1,0(p6),0.5(p8); open_qa = odd: 1,1,1(p5),0(p7),0.5(p9)
    assert by_case["generation"].value == pytest.approx(3.5 / 5) and by_case["open_qa"].value == pytest.approx(3.5 / 5)
    assert [c.outcome for c in m.comparisons] == verdicts.outcomes and {c.labelers for c in m.comparisons} == {
        "judge_model"}
    # a model that always wins on 10 prompts: not certainty (a prompt bootstrap said [1, 1]) but
    # Wilson over the 10 prompts at t(9) = 2.2622: [10 / (10 + 2.2622^2), 1]
    sure = ModelResult("ppo", "ppo")
    add_judge(sure, "judge_model", pairwise_outcomes(KnownJudge(), prompts, ["good"] * 10, ["bad"] * 10).outcomes,
              prompts)
    assert (sure.win_rate["judge_model"].value, sure.win_rate["judge_model"].high) == (1.0, 1.0)
    assert sure.win_rate["judge_model"].low == pytest.approx(10 / (10 + 2.2622 ** 2), abs=1e-4)


def test_a_judge_that_always_says_a_gives_only_ties():
    prompts = _prompts(8)
    verdicts = pairwise_outcomes(AlwaysA(), prompts, ["good"] * 8, ["bad"] * 8)
    assert verdicts.outcomes == [0.5] * 8
    assert verdicts.consistent == [False] * 8 and verdicts.first_position == [1.0] * 16
    assert verdicts.preference == pytest.approx([0.5] * 8)  # (0.8 + 0.2) / 2
    m = ModelResult("ppo", "ppo")
    add_judge(m, "judge_model", verdicts.outcomes, prompts)
    est = m.win_rate["judge_model"]  # 8 ties: Wilson(4 of 8) at t(7) = 2.3646, symmetric about 0.5
    assert est.value == 0.5 and (est.low, est.high) == pytest.approx(wilson_interval(4, 8, z=2.3646), abs=1e-4)
    assert est.low == pytest.approx(0.1793, abs=1e-4) and est.low + est.high == pytest.approx(1.0)


def test_identical_answers_tie_without_asking():
    judge = KnownJudge()
    verdicts = pairwise_outcomes(judge, _prompts(3), ["same", " same\n", "good"], ["same", "same", "bad"])
    assert verdicts.outcomes == [0.5, 0.5, 1.0] and verdicts.model_first[:2] == [None, None]
    assert judge.asked == [("good", "bad"), ("bad", "good")]
    assert verdicts.consistent == [True]


def test_reward_model_outcomes():
    assert reward_model_outcomes([2.0, -1.0, 0.5, 3.0], [1.0, 0.0, 0.5, 9.0], ["a", "b", "c", "x y"],
                                 ["d", "e", "f", "x  y"]) == [1.0, 0.0, 0.5, 0.5]  # equal scores, same text: ties


@pytest.fixture(scope="module")
def tok():
    return chatml_tokenizer()


@pytest.mark.parametrize("letter", ["A", "B"])
def test_a_tiny_judge_model_is_prompted_through_its_template_and_its_bias_cancels(tmp_path, tok, letter):
    """A judge that always answers the same letter is position bias alone: every comparison is a tie."""
    from instructgpt.models import load_policy, load_tokenizer
    folder = force_token(chatml_model(tmp_path / "judge", positions=1024), token_of(tok, letter))
    judge = JudgeModel(load_policy(folder), load_tokenizer(folder), name="tiny")
    start, end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    assert judge.letter_ids == (token_of(tok, "A"), token_of(tok, "B"))
    p = Prompt("q", "say red", "u")
    text = judge_request(p, "red", "")
    assert text == JUDGE_PROMPT.format(request="say red", a="red", b=EMPTY_ANSWER)
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert judge.request_ids(p, "red", "") == ([start] + enc(f"user\n{text}") + [end] + enc("\n") + [start]
                                                + enc("assistant\n"))
    prompts = _prompts(4)
    probs = judge.prob_a(prompts, ["red"] * 4, ["blue"] * 4)
    assert all((p > 0.99) if letter == "A" else (p < 0.01) for p in probs)
    verdicts = pairwise_outcomes(judge, prompts, ["red"] * 4, ["blue blue"] * 4)
    assert verdicts.outcomes == [0.5] * 4 and not any(verdicts.consistent)


def test_a_judge_prompt_over_the_judges_context_names_the_prompt(tmp_path, tok):
    from instructgpt.data import DataError
    from instructgpt.models import load_policy, load_tokenizer
    folder = chatml_model(tmp_path / "small")  # 128 positions: the judge prompt alone is longer
    judge = JudgeModel(load_policy(folder), load_tokenizer(folder))
    with pytest.raises(DataError, match=r"^judge_model: my.jsonl:4: the judge prompt \(request and both answers\) "
                                        r"is \d+ tokens, over the judge's 128 positions"):
        judge.prob_a([Prompt("q", "hi", "u", source="my.jsonl:4")], ["a"], ["b"])
    assert torch.is_tensor(next(judge.model.parameters()))
