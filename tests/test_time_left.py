"""Time left from measured rates (hand-computed cases), the work of each kind of stage, and the
progress log when output is not a terminal."""

import io
import sys

import pytest

from instructgpt import time_left as tl
from instructgpt.progress import LogProgress, format_seconds, progress_bar
from instructgpt.time_left import TimeLeft, Work


def test_nothing_measured_means_no_estimate():
    t = TimeLeft()
    assert t.estimate([Work("sft", "sft", 100.0)]) is None
    assert t.estimate([]) == 0.0


def test_a_kind_uses_its_own_rate_else_the_pooled_rate():
    t = TimeLeft()
    t.record("pretrain", 1000, 50)              # 0.05 s per unit
    assert t.estimate([Work("sft", "sft", 200)]) == pytest.approx(10.0)    # pooled = pretrain's 0.05
    t.record("sft", 100, 20)                    # 0.2 s per unit
    # sft at its own 0.2; ppo (never run) at the pooled (50 + 20) / (1000 + 100)
    assert t.rate("ppo") == pytest.approx(70 / 1100)
    assert t.estimate([Work("flan", "sft", 50), Work("ppo_r1", "ppo", 400)]) == pytest.approx(10 + 400 * 70 / 1100)
    t.record("sft", 100, 40)                    # a second sft-kind stage: (20 + 40) / 200 = 0.3
    assert t.rate("sft") == pytest.approx(0.3)


def test_world_time_never_stands_in_for_training():
    t = TimeLeft()
    t.record("world", 1.0, 3.0)
    assert t.estimate([Work("world", "world", 2.0)]) == pytest.approx(6.0)
    assert t.estimate([Work("sft", "sft", 10.0)]) is None  # not comparable work: no estimate yet
    t.record("sft", 10, 5)
    assert t.estimate([Work("ppo", "ppo", 10.0)]) == pytest.approx(5.0)


def test_unknown_work_or_empty_measurements_give_no_estimate():
    t = TimeLeft()
    t.record("sft", None, 5)
    t.record("sft", 0, 5)
    assert t.rate("sft") is None
    t.record("sft", 10, 5)
    assert t.estimate([Work("rm_r1", "rm", None)]) is None


def test_work_of_each_kind_by_hand():
    # 4 characters a token; training 3 passes, scoring 1, sampling 3 per new token
    assert tl.lm_training(train_chars=400, epochs=2, valid_chars=40) == pytest.approx(2 * (3 * 100 + 10))
    assert tl.lm_training(400, 1, 0, size=8) == pytest.approx(8 * 300)
    assert tl.sampling(10, prompt_chars=40, new_tokens=8) == pytest.approx(10 * (10 + 3 * 8))
    assert tl.rm_training(rankings=5, k=4, sequence_chars=80, epochs=2, reference_chars=40) == \
        pytest.approx(2 * 3 * 5 * 4 * 20 + 10)
    # per episode: sample 8 tokens (24) + 4 models score 18 tokens (72) + 4 epochs x 2 models x 3 x 18 (432)
    # + ptx: 4 epochs x 3 x (1 x 8 tokens) (96) = 624; 2 iterations x 4 episodes
    assert tl.ppo(2, 4, prompt_chars=40, new_tokens=8, ppo_epochs=4, ptx_token_ratio=1.0) == pytest.approx(8 * 624)
    assert tl.ppo(2, 4, 40, 8, 4) == pytest.approx(8 * 528)
    # RLOO, no value model: 24 + 3 models x 18 (54) + 4 epochs x 1 model x 3 x 18 (216) = 294
    assert tl.ppo(2, 4, 40, 8, 4, value_model=False) == pytest.approx(8 * 294)
    # best of 4: 4 x 10 answers sampled (10 + 3 x 8 each) and scored by the RM (10 + 8 each)
    assert tl.best_of_n(4, 10, prompt_chars=40, new_tokens=8) == pytest.approx(40 * 34 + 40 * 18)


def test_text_stats_counts_characters_of_fields(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"prompt": "abcd", "response": "ef"}\n\n{"prompt": "g", "responses": ["hi", "jkl"]}\n')
    stats = tl.TextStats()
    assert stats.chars(f, ("prompt", "response")) == (2, 7)
    assert stats.chars(f, ("responses",)) == (2, 5)
    assert stats.mean(f, ("prompt",)) == pytest.approx(2.5)
    assert stats.chars(tmp_path / "missing.jsonl", ("prompt",)) == (0, 0)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_log_progress_prints_timed_lines_with_time_left():
    clock, out = Clock(), io.StringIO()
    bar = LogProgress(10, desc="sft", interval=30, stream=out, clock=clock)
    for _ in range(3):
        clock.now += 10
        bar.update(1)
        bar.set_postfix({"loss": "2.5"})
    # the third step is at 30 s: 10 s a step, 7 steps left = 70 s
    assert out.getvalue() == "    sft: 3/10 steps (30%), 10 s/step, 1.2 min left  loss=2.5\n"
    clock.now += 5
    bar.update(1)  # 5 s after the last line: nothing printed
    assert out.getvalue().count("\n") == 1
    for _ in range(6):
        clock.now += 10
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[-1] == "    sft: 10/10 steps (100%), 9.5 s/step, 1.6 min in all  loss=2.5"
    assert "\r" not in out.getvalue()
    bar.close()  # closing twice prints nothing more
    assert out.getvalue().splitlines() == lines


def test_log_progress_after_a_resume_times_only_its_own_steps():
    clock, out = Clock(), io.StringIO()
    bar = LogProgress(100, initial=90, desc="ppo", unit="iteration", interval=0, stream=out, clock=clock)
    clock.now = 20
    bar.update(2)
    assert out.getvalue().strip() == "ppo: 92/100 iterations (92%), 10 s/iteration, 1.3 min left"


def test_format_seconds():
    assert [format_seconds(s) for s in (4.2, 59, 90, 3599, 7200)] == ["4s", "59s", "1.5 min", "60.0 min", "2.0 h"]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_is_tqdm_on_a_terminal_and_lines_otherwise(monkeypatch):
    from tqdm.auto import tqdm
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert isinstance(progress_bar(5, "sft"), LogProgress)
    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = progress_bar(5, "sft")
    assert isinstance(bar, tqdm) and not isinstance(bar, LogProgress)
    bar.close()
    quiet = progress_bar(5, "sft", enabled=False)
    assert getattr(quiet, "disable", False)


def test_a_training_stage_logs_readable_lines_when_not_on_a_terminal(tmp_path, tiny_gpt2, capsys):
    from instructgpt import config
    from instructgpt.sft import SFTConfig, train_sft
    from tests.conftest import repeat_demos, write_jsonl
    train = write_jsonl(tmp_path / "train.jsonl", repeat_demos(40, 1))
    cfg = config.from_dict(SFTConfig, dict(model=str(tiny_gpt2), train=str(train), out_dir=str(tmp_path / "o"),
                                           epochs=2, batch_size=8, micro_batch_size=8, progress=True))
    result = train_sft(cfg)
    err = capsys.readouterr().err
    assert "\r" not in err
    final = [line for line in err.splitlines() if line.strip().startswith("sft: ")]
    assert final and final[-1].strip().startswith(f"sft: {result.fit.steps}/{result.fit.steps} steps (100%)")
    assert "in all" in final[-1] and "loss=" in final[-1]
