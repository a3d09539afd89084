"""SFT and reward-model stages end to end on a tiny GPT-2, and kill-and-resume equivalence."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import cut_at, repeat_demos, write_jsonl, yes_rankings
from instructgpt import config
from instructgpt.data import DataError
from instructgpt.checkpoint import CheckpointError, latest_good_checkpoint, list_checkpoints, verify_checkpoint
from instructgpt.generation import generate
from instructgpt.models import load_policy
from instructgpt.reward_model import RewardModel
from instructgpt.rm import RMConfig, train_rm
from instructgpt.sft import SFTConfig, train_sft
from instructgpt.training import lr_multiplier


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("sftdata")
    return write_jsonl(d / "train.jsonl", repeat_demos(160, 1)), write_jsonl(d / "valid.jsonl", repeat_demos(32, 2))


@pytest.fixture(scope="module")
def rm_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("rmdata")
    return write_jsonl(d / "train.jsonl", yes_rankings(160, 1)), write_jsonl(d / "valid.jsonl", yes_rankings(40, 2))


def sft_cfg(model, data, out, **kw) -> SFTConfig:
    base = dict(model=str(model), train=str(data[0]), valid=str(data[1]), out_dir=str(out), lr=3e-3,
                epochs=2, batch_size=16, micro_batch_size=8, warmup_steps=2, dropout=0.0, progress=False)
    base.update(kw)
    return config.from_dict(SFTConfig, base)


def test_cosine_schedule_ends_at_ten_percent_on_the_last_step():
    """Steps are 0-based: of 101 steps, step 100 is the last. It reached the floor one step too late
    (step 101, never taken): the last step ran at 0.10027 of the peak, and the last of 5 steps at 0.325."""
    assert lr_multiplier(0, 101, 10, 0.1) == pytest.approx(0.1)   # warmup starts at 1/warmup
    assert lr_multiplier(9, 101, 10, 0.1) == pytest.approx(1.0)
    assert lr_multiplier(10, 101, 10, 0.1) == pytest.approx(1.0)
    assert lr_multiplier(55, 101, 10, 0.1) == pytest.approx(0.55)  # halfway through the decay: 45 of 90
    assert lr_multiplier(100, 101, 10, 0.1) == 0.1
    assert lr_multiplier(100, 101, 0, 0.1) == 0.1
    assert lr_multiplier(50, 101, 0, 0.1) == pytest.approx(0.55)
    assert lr_multiplier(0, 1, 0, 0.1) == 1.0  # a single step runs at the peak


def test_logged_lr_is_the_one_the_steps_update_used(tmp_path, tiny_gpt2, sft_data, monkeypatch):
    """sft/lr at step n was the lr of step n + 1 (read after the scheduler's step): half the peak at step 1 of a
    2-step warmup showed as the peak, and the last step never showed the lr it used."""
    used = []
    step = torch.optim.AdamW.step

    def recording(self, *a, **k):
        used.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)
    monkeypatch.setattr(torch.optim.AdamW, "step", recording)
    out = tmp_path / "sft"
    train_sft(sft_cfg(tiny_gpt2, sft_data, out, epochs=1, max_steps=5, valid=""))
    logged = [r["sft/lr"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "sft/lr" in r]
    assert logged == pytest.approx(used) and len(logged) == 5
    # warmup_steps=2: half the peak, then the peak; then cosine decay to 10% at the last of the 5 steps
    assert logged == pytest.approx([1.5e-3, 3e-3, 3e-3, 0.55 * 3e-3, 0.1 * 3e-3])


def test_an_epoch_end_without_validation_data_writes_no_empty_metrics_row(tmp_path, tiny_gpt2, sft_data):
    """Without valid= each epoch's end wrote {"step": n, "time": t} after step n's row: its step twice."""
    out = tmp_path / "sft"
    train_sft(sft_cfg(tiny_gpt2, sft_data, out, epochs=2, batch_size=80, micro_batch_size=80, valid=""))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all("sft/loss" in r for r in rows)


def test_sft_lowers_validation_loss_and_changes_every_parameter(tmp_path, tiny_gpt2, sft_data):
    before = {k: v.clone() for k, v in load_policy(tiny_gpt2).state_dict().items()}
    result = train_sft(sft_cfg(tiny_gpt2, sft_data, tmp_path / "sft", epochs=3))
    losses = [h["sft/val_loss"] for h in result.fit.history]
    assert losses[-1] < losses[0] * 0.8, losses
    after = AutoModelForCausalLM.from_pretrained(str(tmp_path / "sft")).state_dict()
    unchanged = [k for k, v in before.items() if torch.equal(v, after[k]) and v.dtype.is_floating_point
                 and "attn.bias" not in k and "masked_bias" not in k]
    assert not unchanged, unchanged
    info = json.loads((tmp_path / "sft" / "instructgpt.json").read_text())
    assert info["selected_by"] == "lowest validation loss"
    assert info["instructgpt_version"] and info["config"]["lr"] == 3e-3
    assert (tmp_path / "sft" / "config.resolved.json").exists()
    rows = [json.loads(l) for l in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert any("sft/loss" in r for r in rows) and any("sft/val_loss" in r for r in rows)


def test_saved_sft_model_round_trips_through_plain_transformers(tmp_path, tiny_gpt2, sft_data):
    train_sft(sft_cfg(tiny_gpt2, sft_data, tmp_path / "sft", epochs=1))
    ours = load_policy(tmp_path / "sft")
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "sft"))
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "sft"))
    prompt = [tok("repeat: red cat\n")["input_ids"]]
    a = generate(ours, prompt, 8, tok.eos_token_id, tok.pad_token_id, temperature=0).responses
    b = generate(plain, prompt, 8, tok.eos_token_id, tok.pad_token_id, temperature=0).responses
    ids = torch.tensor(prompt)
    hf = plain.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
    assert a == b
    assert hf[:len(a[0])] == a[0]


def test_sft_kill_and_resume_gives_the_same_weights(tmp_path, tiny_gpt2, sft_data):
    train_sft(sft_cfg(tiny_gpt2, sft_data, tmp_path / "full", dropout=0.1, save_every=3))
    cfg = sft_cfg(tiny_gpt2, sft_data, tmp_path / "cut", dropout=0.1, save_every=3)
    import instructgpt.sft as sft_mod
    cut_at(7, sft_mod, train_sft, cfg)  # the last checkpoint is step 6: one step of work is lost and redone
    cfg.resume = True
    resumed = train_sft(cfg)
    assert resumed.fit.resumed_from.endswith("step-0000006")
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    steps = [json.loads(l)["step"] for l in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
             if "sft/loss" in l]
    assert steps == sorted(set(steps))  # no step logged twice after the resume


def test_sft_killed_writing_an_epoch_end_checkpoint_logs_that_epochs_validation_once(tmp_path, tiny_gpt2, sft_data,
                                                                                   monkeypatch):
    """With save_every landing on an epoch's last step, that step was checkpointed before the epoch's evaluation
    too: killed after the evaluation was logged (while the epoch-end checkpoint was written), the resume from the
    step's checkpoint evaluated and logged the epoch again (sft/val_loss twice at that step)."""
    from instructgpt import training
    from instructgpt.training import StopTraining
    out = tmp_path / "sft"
    cfg = sft_cfg(tiny_gpt2, sft_data, out, save_every=10)   # 160 demos / 16: 10 steps per epoch
    save = training._Checkpoints.save

    def killed_after_the_evaluation(self, state):
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        if any("sft/val_loss" in r for r in rows):
            raise StopTraining
        return save(self, state)
    monkeypatch.setattr(training._Checkpoints, "save", killed_after_the_evaluation)
    with pytest.raises(StopTraining):
        train_sft(cfg)
    monkeypatch.setattr(training._Checkpoints, "save", save)
    cfg.resume = True
    train_sft(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "sft/val_loss" in r] == [10, 20]
    assert [r["step"] for r in rows if "sft/loss" in r] == list(range(1, 21))


@pytest.mark.slow
def test_sft_sigkill_mid_run_then_resume(tmp_path, tiny_gpt2, sft_data):
    """A real kill of the CLI process; the resumed run ends with the uninterrupted run's weights.
    Slow (38 s: three processes): the default suite kills ``instructgpt run`` mid-SFT and resumes it to the
    same weights (tests/test_run_resume.py), and resumes SFT in process above."""
    args = [sys.executable, "-m", "instructgpt.cli", "sft", f"model={tiny_gpt2}", f"train={sft_data[0]}",
            f"valid={sft_data[1]}", "lr=3e-3", "epochs=3", "batch_size=8", "micro_batch_size=8",
            "dropout=0.1", "save_every=2", "progress=false"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(args + [f"out_dir={tmp_path / 'full'}"], check=True, env=env, capture_output=True)
    proc = subprocess.Popen(args + [f"out_dir={tmp_path / 'cut'}"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list_checkpoints(tmp_path / "cut" / "checkpoints")) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest_good_checkpoint(tmp_path / "cut" / "checkpoints") is not None
    subprocess.run(args + [f"out_dir={tmp_path / 'cut'}", "resume=true"], check=True, env=env, capture_output=True)
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_corrupt_checkpoint_is_named_and_previous_one_used(tmp_path, tiny_gpt2, sft_data):
    cfg = sft_cfg(tiny_gpt2, sft_data, tmp_path / "run", epochs=1, save_every=2, keep_checkpoints=3)
    train_sft(cfg)
    folders = list_checkpoints(tmp_path / "run" / "checkpoints")
    newest = folders[-1]
    blob = newest / "model.safetensors"
    blob.write_bytes(blob.read_bytes()[:-7] + b"garbage")
    with pytest.raises(CheckpointError, match="model.safetensors: corrupt"):
        verify_checkpoint(newest)
    with pytest.warns(UserWarning, match=newest.name):
        assert latest_good_checkpoint(tmp_path / "run" / "checkpoints") == folders[-2]
    (folders[-2] / "manifest.json").unlink()  # a partial write: no manifest
    with pytest.warns(UserWarning, match="partial checkpoint"):
        assert latest_good_checkpoint(tmp_path / "run" / "checkpoints") == folders[-3]


def rm_cfg(model, data, out, **kw) -> RMConfig:
    base = dict(model=str(model), train=str(data[0]), valid=str(data[1]), out_dir=str(out), lr=2e-3,
                epochs=3, batch_size=16, micro_batch_size=8, warmup_steps=2, progress=False)
    base.update(kw)
    return config.from_dict(RMConfig, base)


def test_rm_learns_rankings_and_normalises_bias(tmp_path, tiny_gpt2, rm_data):
    before = RewardModel.from_policy(tiny_gpt2)
    before_sd = {k: v.clone() for k, v in before.named_parameters()}
    result = train_rm(rm_cfg(tiny_gpt2, rm_data, tmp_path / "rm"))
    assert result.val_accuracy > 0.75, result.val_accuracy
    rm = RewardModel.from_pretrained(tmp_path / "rm")
    after = dict(rm.named_parameters())
    unchanged = [k for k, v in before_sd.items() if torch.equal(v, after[k])]
    assert not unchanged, unchanged
    assert abs(float(rm.reward_bias) - result.reward_bias) < 1e-6
    # the best-ranked training responses now score mean 0
    from instructgpt.batching import RecordEncoder
    from instructgpt.chat import ChatFormat
    from instructgpt.data import load_rankings
    from instructgpt.rm import score_sequences
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "rm"))
    encoder = RecordEncoder(ChatFormat.load(tok), None, 128, max_seq_len=256)
    seqs = [encoder.pair(r.prompt, r.responses[i]).ids
            for r in load_rankings(rm_data[0]) for i in r.ranking[0]]
    assert abs(score_sequences(rm, seqs, tok.pad_token_id, "cpu").mean().item()) < 1e-4


def test_rm_counts_the_responses_it_cut_to_max_seq_len(tmp_path, tiny_gpt2, capsys):
    long, short = " ".join(["yes"] * 60), "no"  # 60 words cannot fit 32 tokens; "no" fits
    rows = [{"prompt": f"say {w}\n", "responses": [long, short, long + " red", short + " blue"],
             "ranking": [[0], [2], [1, 3]]} for w in ("red", "blue", "green")]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    train_rm(config.from_dict(RMConfig, dict(model=str(tiny_gpt2), train=str(train), out_dir=str(tmp_path / "rm"),
                                             max_seq_len=32, epochs=1, batch_size=3, micro_batch_size=3,
                                             progress=False)))
    info = json.loads((tmp_path / "rm" / "instructgpt.json").read_text())
    assert info["responses_truncated"] == 6 and info["train_pairs"] == 3 * 5  # ties are not pairs
    assert ("rm: 6 of 12 responses cut to fit max_seq_len=32 (prompt + response tokens): they lose their end and "
            f"<|endoftext|>, so they are ranked by their first part only (raise max_seq_len to keep them whole); "
            f"cut: {train}:1, {train}:2, {train}:3\n") in capsys.readouterr().out


def test_sft_says_how_many_responses_it_cut_to_max_seq_len(tmp_path, tiny_gpt2, capsys):
    """Cut demonstrations lose their EOS: the model is not taught to end them, which the run must say,
    not only record in instructgpt.json."""
    rows = [{"prompt": "say yes\n", "response": " ".join(["yes"] * 20)}, {"prompt": "say no\n", "response": "no"}]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    base = dict(model=str(tiny_gpt2), train=str(train), epochs=1, batch_size=2, progress=False)
    train_sft(config.from_dict(SFTConfig, {**base, "out_dir": str(tmp_path / "cut"), "max_seq_len": 16}))
    out = capsys.readouterr().out
    assert json.loads((tmp_path / "cut" / "instructgpt.json").read_text())["responses_truncated"] == 1
    assert ("sft: 1 of 2 responses cut to fit max_seq_len=16 (prompt + response tokens): they lose their end and "
            "<|endoftext|>, so the model is not trained to end those replies (raise max_seq_len to keep them "
            f"whole); cut: {train}:1\n") in out  # names the records, not only their count
    train_sft(config.from_dict(SFTConfig, {**base, "out_dir": str(tmp_path / "whole"), "max_seq_len": 0}))
    assert "responses cut" not in capsys.readouterr().out


def test_rm_kill_and_resume_gives_the_same_weights(tmp_path, tiny_gpt2, rm_data):
    train_rm(rm_cfg(tiny_gpt2, rm_data, tmp_path / "full", epochs=1, save_every=2, dropout=0.1))
    cfg = rm_cfg(tiny_gpt2, rm_data, tmp_path / "cut", epochs=1, save_every=2, dropout=0.1)
    import instructgpt.rm as rm_mod
    cut_at(5, rm_mod, train_rm, cfg)
    cfg.resume = True
    train_rm(cfg)
    a = RewardModel.from_pretrained(tmp_path / "full").state_dict()
    b = RewardModel.from_pretrained(tmp_path / "cut").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_sft_selects_by_reward_model_score(tmp_path, tiny_gpt2, sft_data, rm_data):
    train_rm(rm_cfg(tiny_gpt2, rm_data, tmp_path / "rm", epochs=1))
    result = train_sft(sft_cfg(tiny_gpt2, sft_data, tmp_path / "sft", reward_model=str(tmp_path / "rm"),
                               select_prompts=8, max_new_tokens=6))
    scores = [h["sft/val_rm_score"] for h in result.fit.history]
    assert result.fit.best_epoch == max(range(len(scores)), key=scores.__getitem__)
    info = json.loads((tmp_path / "sft" / "instructgpt.json").read_text())
    assert info["selected_by"].startswith("highest mean reward-model score")


def test_an_empty_reference_file_is_an_error_before_the_model_loads(tmp_path, tiny_gpt2, rm_data, monkeypatch):
    """It used to train, save reward_bias = NaN (the mean of no scores) and exit 0; the evaluation then
    scored every policy NaN and reported win rate 0."""
    import instructgpt.rm as rm_mod
    (tmp_path / "empty.jsonl").write_text("")
    loaded = []
    monkeypatch.setattr(rm_mod, "trained_reward_model", lambda *a, **k: loaded.append(1))
    with pytest.raises(DataError, match="empty.jsonl: reference: no demonstrations"):
        train_rm(rm_cfg(tiny_gpt2, rm_data, tmp_path / "rm", reference=str(tmp_path / "empty.jsonl")))
    assert not loaded and not (tmp_path / "rm").exists()


def test_a_reward_model_that_scores_its_reference_nan_is_not_saved(tmp_path, tiny_gpt2, rm_data, monkeypatch):
    import instructgpt.rm as rm_mod
    monkeypatch.setattr(rm_mod, "score_sequences", lambda model, seqs, *a, **k: torch.full((len(seqs),), float("nan")))
    with pytest.raises(FloatingPointError, match="diverged model.*nothing saved"):
        train_rm(rm_cfg(tiny_gpt2, rm_data, tmp_path / "rm", epochs=1, max_steps=2, save_every=2))
    assert not (tmp_path / "rm" / "model.safetensors").exists()
    assert list_checkpoints(tmp_path / "rm" / "checkpoints")  # the training itself is kept for a resume


def test_resume_with_a_changed_learning_rate_is_refused_and_writes_nothing(tmp_path, tiny_gpt2, sft_data):
    """The scheduler's saved state keeps the old base rate: resuming with another lr trained at the old one
    while config.resolved.json recorded the new one."""
    out = tmp_path / "sft"
    cfg = sft_cfg(tiny_gpt2, sft_data, out, epochs=1, save_every=2)
    import instructgpt.sft as sft_mod
    cut_at(3, sft_mod, train_sft, cfg)
    state = json.loads((out / "checkpoints" / "step-0000002" / "state.json").read_text())
    assert state["config"]["lr"] == 3e-3 and "device" not in state["config"]
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    changed = sft_cfg(tiny_gpt2, sft_data, out, epochs=1, save_every=2, lr=1e-3, warmup_steps=0, resume=True)
    with pytest.raises(config.ConfigError) as e:
        train_sft(changed)
    assert "--resume with changed options: lr 0.003 -> 0.001; warmup_steps 2 -> 0" in str(e.value)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # runtime options (device, progress, checkpoint cadence) may change; the run then resumes
    same = sft_cfg(tiny_gpt2, sft_data, out, epochs=1, save_every=4, device="cpu", resume=True)
    assert train_sft(same).fit.resumed_from.endswith("step-0000002")


def test_resume_on_a_base_model_replaced_in_place_is_refused(tmp_path, tiny_gpt2, sft_data):
    """The checkpoint continues training of the old base: a resume whose `model` folder now holds other weights
    is refused naming the option and the file; a copy of the same folder elsewhere resumes."""
    base, out = tmp_path / "base", tmp_path / "sft"
    shutil.copytree(tiny_gpt2, base)
    cfg = sft_cfg(str(base), sft_data, out, epochs=1, save_every=2)
    import instructgpt.sft as sft_mod
    cut_at(3, sft_mod, train_sft, cfg)
    state = json.loads((out / "checkpoints" / "step-0000002" / "state.json").read_text())
    assert "model.safetensors" in state["inputs"]["model"] and "out_dir" not in state["inputs"]
    weights = base / "model.safetensors"
    original = weights.read_bytes()
    tensors = load_file(weights)
    save_file({k: v + 0.01 for k, v in tensors.items()}, weights, metadata={"format": "pt"})
    with pytest.raises(config.ConfigError, match=r"--resume with inputs that hold other files than when the "
                                                 r"checkpoint was made: model \(.*base\): model\.safetensors\."):
        train_sft(sft_cfg(str(base), sft_data, out, epochs=1, save_every=2, resume=True))
    weights.write_bytes(original)
    moved = tmp_path / "moved"
    shutil.move(base, moved)
    assert train_sft(sft_cfg(str(moved), sft_data, out, epochs=1, save_every=2, resume=True)
                     ).fit.resumed_from.endswith("step-0000002")


def test_max_steps_ending_inside_an_epoch_evaluates_selects_and_checkpoints_those_weights(tmp_path, tiny_gpt2,
                                                                                         sft_data, capsys):
    """max_steps=13 on 10 steps an epoch: the 3 steps of epoch 1 were trained, then thrown away unseen
    (epoch 0 kept: the selection never evaluated them), and no checkpoint held them, so --resume of the
    finished run trained again from step 10. Inside the first epoch nothing was evaluated at all."""
    import torch
    out = tmp_path / "sft"
    result = train_sft(sft_cfg(tiny_gpt2, sft_data, out, max_steps=13, save_every=4))
    history = result.fit.history
    assert [h["epoch"] for h in history] == [0, 1] and history[1]["ended_at_step"] == 13
    assert history[1]["sft/val_loss"] < history[0]["sft/val_loss"]  # the partial epoch is measured, and better
    assert result.fit.best_epoch == 1 and result.val_loss == history[1]["sft/val_loss"]
    assert "sft: kept epoch 1, ended by max_steps=13 at step 13 (lowest validation loss)" in capsys.readouterr().out
    steps = sorted(p.name for p in (out / "checkpoints").glob("step-*"))
    assert steps[-1] == "step-0000013"
    first = AutoModelForCausalLM.from_pretrained(str(out)).state_dict()
    again = train_sft(sft_cfg(tiny_gpt2, sft_data, tmp_path / "sft", max_steps=13, save_every=4, resume=True))
    assert again.fit.resumed_from.endswith("step-0000013") and again.fit.history == history
    assert all(torch.equal(v, first[k]) for k, v in AutoModelForCausalLM.from_pretrained(str(out)).state_dict().items())
    # inside the first epoch: epoch 0's weights after step 1 are evaluated too
    one = train_sft(sft_cfg(tiny_gpt2, sft_data, tmp_path / "one", max_steps=1))
    assert one.fit.history[0]["ended_at_step"] == 1 and one.val_loss is not None
    info = json.loads((tmp_path / "one" / "instructgpt.json").read_text())
    assert info["selected_by"] == "lowest validation loss" and info["selected_epoch"] == 0


def test_sft_result_gives_the_validation_loss_of_the_kept_epoch(tmp_path, tiny_gpt2, monkeypatch):
    """Selected by validation loss, epoch 1 of 3 is kept: the result (and the run's stage summary)
    gives its loss, not the last epoch's."""
    import instructgpt.sft as sft
    losses = iter([3.0, 1.0, 2.0])
    monkeypatch.setattr(sft, "mean_lm_loss", lambda *a, **k: next(losses))
    data = write_jsonl(tmp_path / "train.jsonl", repeat_demos(4, 1)), write_jsonl(tmp_path / "valid.jsonl", repeat_demos(2, 2))
    result = train_sft(sft_cfg(tiny_gpt2, data, tmp_path / "sft", epochs=3, batch_size=4, micro_batch_size=4))
    assert result.fit.best_epoch == 1
    assert result.val_loss == 1.0


def test_sft_learns_the_earlier_replies_of_conversations_unless_told_to_train_the_last_only(tmp_path, tiny_gpt2):
    # every conversation: a 'repeat' exchange, then "say yes" -> "yes"; only loss_turns=all learns to repeat
    def conversations(rows):
        return [{"messages": [{"role": "user", "content": r["prompt"].strip()},
                              {"role": "assistant", "content": r["response"]},
                              {"role": "user", "content": "say yes"}, {"role": "assistant", "content": "yes"}]}
                for r in rows]
    train = write_jsonl(tmp_path / "train.jsonl", conversations(repeat_demos(96, 1)))
    repeats = write_jsonl(tmp_path / "repeats.jsonl",  # the first exchange alone: the loss on its reply
                          [{"messages": [{"role": "user", "content": r["prompt"].strip()},
                                         {"role": "assistant", "content": r["response"]}]} for r in repeat_demos(32, 2)])
    losses = {}
    for turns in ("all", "last"):
        result = train_sft(sft_cfg(tiny_gpt2, (train, repeats), tmp_path / turns, epochs=2, lr=1e-2,
                                    loss_turns=turns))
        losses[turns] = result.val_loss
    assert losses["all"] < 0.85 * losses["last"], losses
    with pytest.raises(config.ConfigError, match="loss_turns: must be one of all, last, got 'first'"):
        sft_cfg(tiny_gpt2, (train, repeats), tmp_path / "x", loss_turns="first")


@pytest.mark.parametrize("stage", ["sft", "rm valid", "rm reference"])
def test_a_bad_record_in_a_second_data_file_is_named_before_any_record_is_tokenized(tmp_path, tiny_gpt2, sft_data,
                                                                                    rm_data, monkeypatch, stage):
    """valid= (and the reward model's reference=) were read only after every training record was tokenized:
    with a large train file, a typo at line 2 of the validation file stopped the run minutes in."""
    from instructgpt.batching import RecordEncoder
    tokenized = []
    pair = RecordEncoder.pair
    monkeypatch.setattr(RecordEncoder, "pair", lambda self, *a, **kw: tokenized.append(1) or pair(self, *a, **kw))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "say yes", "response": "yes"}\n{"prompt": "say yes", "response": ""}\n')
    if stage == "sft":
        run, cfg = train_sft, sft_cfg(tiny_gpt2, (sft_data[0], bad), tmp_path / "out")
    elif stage == "rm valid":
        bad.write_text('{"prompt": "say", "responses": ["yes", "no"], "ranking": [0, 1]}\n'
                       '{"prompt": "say", "responses": ["yes", "no"], "ranking": [0, 0]}\n')
        run, cfg = train_rm, rm_cfg(tiny_gpt2, (rm_data[0], bad), tmp_path / "out")
    else:
        run, cfg = train_rm, rm_cfg(tiny_gpt2, rm_data, tmp_path / "out", reference=str(bad))
    with pytest.raises(DataError, match=f"^{bad}:2: "):
        run(cfg)
    assert tokenized == []


def test_the_responses_of_a_ranking_hold_their_prompt_tokens_once(tiny_gpt2):
    """Each of a ranking's K responses kept its own copy of the prompt's token ids: nine copies of every prompt
    of a K=9 ranking in memory. The tokens are unchanged."""
    from instructgpt.batching import RecordEncoder
    from instructgpt.chat import ChatFormat, prompt_input
    from instructgpt.data import parse_ranking
    from instructgpt.rm import encode_rankings
    encoder = RecordEncoder(ChatFormat.load(AutoTokenizer.from_pretrained(str(tiny_gpt2))), None, 128,
                            max_seq_len=256)
    ranking = parse_ranking({"prompt": "count one two three", "responses": [f"four {w}" for w in WORDS_9],
                             "ranking": [[0, 1], [2], [3, 4, 5, 6, 7], [8]]}, "r.jsonl:1")
    (encoded,) = encode_rankings([ranking], encoder)
    assert len({id(e.prompt_ids) for e in encoded.responses}) == 1
    assert [e.ids for e in encoded.responses] == [encoder.pair(prompt_input(ranking), resp).ids
                                                  for resp in ranking.responses]
    assert len(encoded.pairs) == 2 * 7 + 1 * 6 + 5 * 1  # C(9,2) = 36 less the 11 tied pairs


def test_encoded_token_ids_take_four_bytes_each(tiny_gpt2):
    """Token ids were Python lists, 36 bytes an id above 256 (a pointer and an int object): about 3.4 GB for the
    paper's 33k K=9 rankings. They are held as 4-byte ids now; ``ids`` is still a list, the tokens unchanged."""
    import tracemalloc
    from instructgpt.batching import Encoded, RecordEncoder
    from instructgpt.chat import ChatFormat, prompt_input
    from instructgpt.data import parse_ranking
    from instructgpt.rm import encode_rankings
    tracemalloc.start()
    held = [Encoded(list(range(1000, 1050)), list(range(2000 + i, 2200 + i))) for i in range(100)]
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert size / (100 * 250) < 8  # the arrays and the Encoded objects; a list and its ints: 36 and more
    assert (held[0].prompt_ids.itemsize, held[1].response_ids[:2].tolist(), held[0].ids[49:51]) == (4, [2001, 2002],
                                                                                                 [1049, 2000])
    encoder = RecordEncoder(ChatFormat.load(AutoTokenizer.from_pretrained(str(tiny_gpt2))), None, 128,
                            max_seq_len=256)
    ranking = parse_ranking({"prompt": "count one two three", "responses": [f"four {w}" for w in WORDS_9],
                             "ranking": list(range(9))}, "r.jsonl:1")
    (encoded,) = encode_rankings([ranking], encoder)
    p, r = encoder.fmt.encode(prompt_input(ranking), ranking.responses[0], "")
    assert encoded.responses[0].ids == list(p) + list(r) and isinstance(encoded.responses[0].ids, list)


def test_an_encoded_ranking_holds_little_besides_its_token_ids(tiny_gpt2):
    """3,000 K=9 rankings of the built-in world took some 5.8 KB each once tokenized, for 580 bytes of ids: each
    of their 36 (winner, loser) pairs was a tuple of its own (2 KB a ranking) and each response an Encoded with a
    __dict__. The pairs are tuples shared by every ranking and Encoded has slots now; ids and pairs unchanged."""
    import gc
    import random
    import tracemalloc

    from instructgpt.batching import RecordEncoder
    from instructgpt.chat import ChatFormat
    from instructgpt.data import parse_ranking
    from instructgpt.rm import encode_rankings
    encoder = RecordEncoder(ChatFormat.load(AutoTokenizer.from_pretrained(str(tiny_gpt2))), None, 128,
                            max_seq_len=256)
    rng = random.Random(0)
    rankings = [parse_ranking({"prompt": f"count {' '.join(rng.sample(WORDS_9, 3))}",
                               "responses": [f"four {w}" for w in rng.sample(WORDS_9, 9)],
                               "ranking": rng.sample(range(9), 9)}, f"r.jsonl:{i + 1}") for i in range(300)]
    gc.collect()
    tracemalloc.start()
    try:
        encoded = encode_rankings(rankings, encoder)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    ids = 4 * sum(len(r.responses[0].prompt_ids) + sum(len(e.response_ids) for e in r.responses)
                  for r in encoded) // len(encoded)
    assert [(r.pairs, [e.ids for e in r.responses]) for r in encoded[:5]] == [
        (x.pairs(), [encoder.pair(x.prompt, resp, x.source).ids for resp in x.responses]) for x in rankings[:5]]
    assert held / len(encoded) < 3000 + ids, f"{held / len(encoded):.0f} bytes a ranking, {ids} of them ids"


def test_the_reward_models_reference_set_reuses_the_training_rankings_tokens(tiny_gpt2):
    """Without reference=, the best-ranked training responses (whose mean reward is set to 0) were tokenized a
    second time after every ranking had been: the same ids, again. They are now the encoded rankings' own."""
    from instructgpt.batching import RecordEncoder
    from instructgpt.chat import ChatFormat, prompt_input
    from instructgpt.data import parse_ranking
    from instructgpt.rm import encode_rankings, reference_sequences
    encoder = RecordEncoder(ChatFormat.load(AutoTokenizer.from_pretrained(str(tiny_gpt2))), None, 128,
                            max_seq_len=256)
    train = [parse_ranking({"prompt": f"count {w}", "responses": [f"{w} {v}" for v in WORDS_9[:4]],
                            "ranking": [[2, 0], [1], [3]]}, f"r.jsonl:{i + 1}") for i, w in enumerate(WORDS_9)]
    train_enc = encode_rankings(train, encoder)
    expected = [encoder.pair(prompt_input(r), r.responses[i], r.source).ids for r in train for i in (2, 0)]
    encoder.pair = None  # not called again
    refs, where = reference_sequences(config.from_dict(RMConfig, {"model": "m", "train": "t", "out_dir": "o"}), encoder, train,
                                      train_enc, None)
    assert [e.ids for e in refs] == expected and where == "best-ranked responses of the training rankings"
    assert all(e is enc.responses[i] for e, (enc, i) in zip(refs, [(enc, i) for enc in train_enc for i in (2, 0)]))


def test_reward_model_training_holds_the_token_ids_of_its_rankings_not_their_records(tmp_path, tiny_gpt2, rm_data,
                                                                                     monkeypatch):
    """train_rm kept the rankings' records (prompt and response texts, some 2.5 KB a K=9 ranking of the world)
    and the reference responses as lists of ids (1 KB a ranking) through training, when the encoded rankings
    hold all that training reads: the records are gone before fit, and the reference is the encoded
    responses themselves."""
    import gc
    import weakref

    import instructgpt.rm as rm
    records = []
    load_rankings, fit = rm.load_rankings, rm.fit

    def load(*args, **kw):
        out = load_rankings(*args, **kw)
        records.extend(weakref.ref(r) for r in out)
        return out

    def fit_checking(*args, **kw):
        gc.collect()
        assert records and all(r() is None for r in records), sum(r() is not None for r in records)
        return fit(*args, **kw)

    monkeypatch.setattr(rm, "load_rankings", load)
    monkeypatch.setattr(rm, "fit", fit_checking)
    result = train_rm(rm_cfg(tiny_gpt2, rm_data, tmp_path / "rm", epochs=1))
    assert result.fit.steps > 0


def test_rankings_are_tokenized_in_batch_calls_with_the_same_ids(tiny_gpt2, monkeypatch):
    """Each of a ranking's K responses cost some four tokenizer calls of one text (its prompt's text among
    them every time); a chunk of rankings is now tokenized in two batch calls, with the same ids."""
    import instructgpt.rm as rm
    from instructgpt.batching import RecordEncoder
    from instructgpt.chat import ChatFormat, prompt_input
    from instructgpt.data import parse_ranking
    from tests.test_chat import _CountingTokenizer
    tok = AutoTokenizer.from_pretrained(str(tiny_gpt2))
    encoder = RecordEncoder(ChatFormat.load(tok), None, 128, max_seq_len=256)
    rankings = [parse_ranking({"prompt": f"count {w}" if i % 3 else f"count {w}\n", "ranking": [[0], [2, 1], [3]],
                               "responses": [f" {w} {v}" for v in WORDS_9[i % 5:i % 5 + 4]]}, f"r.jsonl:{i + 1}")
                for i, w in enumerate(WORDS_9)]
    expected = [[encoder.pair(prompt_input(r), resp, r.source) for resp in r.responses] for r in rankings]
    monkeypatch.setattr(rm, "_ENCODE_CHUNK", 4, raising=False)  # three chunks
    encoder.fmt.tokenizer = counting = _CountingTokenizer(tok)
    encoded = rm.encode_rankings(rankings, encoder)
    assert [e.responses for e in encoded] == expected and counting.calls == 3 * 2


WORDS_9 = ("red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "fish")
