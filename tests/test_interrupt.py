"""A stop request (SIGTERM, Ctrl-C) is honoured at the next safe point of a training loop, with a
checkpoint from which --resume continues exactly; outside such loops it stops at once."""

import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import repeat_demos, write_jsonl
from tests.test_ppo import ppo_cfg, sft_policy  # noqa: F401 (a fixture)
from instructgpt import config, interrupt
from instructgpt.checkpoint import latest_good_checkpoint


def test_first_signal_waits_for_a_safe_point_outside_them_it_stops_at_once():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)  # SIG_IGN in a background job
    with interrupt.handle_signals():
        with interrupt.safe_points():
            os.kill(os.getpid(), signal.SIGTERM)
            assert interrupt.stop_requested()  # flagged, nothing raised: the loop decides where to stop
            with pytest.raises(interrupt.Stopped) as e:
                interrupt.stop("at step 3/9", "ck/step-0000003")
        assert e.value.describe() == "stopped by SIGTERM at step 3/9; checkpoint written: ck/step-0000003"
    assert not interrupt.stop_requested()  # the handlers are gone and the request with them
    with interrupt.handle_signals():
        with pytest.raises(interrupt.Stopped) as e:
            os.kill(os.getpid(), signal.SIGINT)  # not in a loop with checkpoints: at once
        assert e.value.signum == signal.SIGINT and e.value.checkpoint is None
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # restored as found


def test_a_stop_inside_a_broad_except_is_not_relabelled():
    """SIGTERM landed while a stage loaded its tokenizer, whose loader turns any Exception into "cannot
    load tokenizer": the run exited 2 with an error instead of 75 with its stop (slow resume test)."""
    from instructgpt.models import ModelLoadError

    def load():
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler raises here, outside a safe-point loop
        except Exception as e:  # noqa: BLE001 (what loaders do)
            raise ModelLoadError(f"cannot load tokenizer: {e}") from e

    with interrupt.handle_signals():
        with pytest.raises(interrupt.Stopped) as e:
            load()
    assert e.value.signum == signal.SIGTERM


def _same(a, b):
    x, y = load_file(str(a)), load_file(str(b))
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_sft_stops_at_the_next_step_with_a_checkpoint_and_resumes_exactly(tmp_path, tiny_gpt2):
    import instructgpt.sft as sft_mod
    from instructgpt.sft import SFTConfig, train_sft
    data = write_jsonl(tmp_path / "train.jsonl", repeat_demos(48, 1))
    common = dict(model=str(tiny_gpt2), train=str(data), epochs=2, batch_size=8, micro_batch_size=8, dropout=0.1,
                  lr=3e-3, progress=False)  # no periodic checkpoints: only the epoch ends and the stop
    train_sft(config.from_dict(SFTConfig, dict(out_dir=str(tmp_path / "full"), **common)))
    cfg = config.from_dict(SFTConfig, dict(out_dir=str(tmp_path / "cut"), **common))
    original = sft_mod.fit
    sft_mod.fit = lambda *a, **k: original(*a, **k, on_step=lambda s: s == 3 and interrupt.request_stop())
    try:
        with interrupt.safe_points(), pytest.raises(interrupt.Stopped) as e:
            train_sft(cfg)
    finally:
        sft_mod.fit = original
        interrupt.clear()
    assert e.value.where == "at sft step 4/12" and e.value.checkpoint.endswith("step-0000004")
    assert latest_good_checkpoint(tmp_path / "cut/checkpoints").name == "step-0000004"
    cfg.resume = True
    assert train_sft(cfg).fit.resumed_from.endswith("step-0000004")
    _same(tmp_path / "full/model.safetensors", tmp_path / "cut/model.safetensors")


def _ppo_stopped_in_iteration_3(cfg) -> interrupt.Stopped:
    """PPO with a Ctrl-C during its 3rd iteration: the stop it ends with."""
    from instructgpt.ppo import train_ppo
    try:
        with pytest.raises(interrupt.Stopped) as e:
            train_ppo(cfg, on_iteration=lambda i: i == 2 and interrupt.request_stop(signal.SIGINT))
    finally:
        interrupt.clear()
    return e.value


def test_ppo_stops_after_the_iteration_with_a_checkpoint_and_resumes_exactly(tmp_path, sft_policy):  # noqa: F811
    from instructgpt.ppo import train_ppo
    common = dict(iterations=5, save_every=0, ema=True, adaptive_kl=True, target_kl=1.0,
                  pretrain_data=str(sft_policy / "pretrain.txt"), ptx_coef=0.5, ptx_seq_len=32, ptx_token_ratio=1.0)
    train_ppo(ppo_cfg(sft_policy, tmp_path / "full", **common))
    stopped = _ppo_stopped_in_iteration_3(ppo_cfg(sft_policy, tmp_path / "cut", **common))
    assert stopped.signal_name == "SIGINT" and stopped.where == "at ppo-ptx iteration 3/5"
    train_ppo(ppo_cfg(sft_policy, tmp_path / "cut", resume=True, **common))
    for sub in ("model.safetensors", "policy_raw/model.safetensors", "value_model/model.safetensors"):
        _same(tmp_path / "full" / sub, tmp_path / "cut" / sub)


def test_ppo_stopped_in_its_last_iteration_reports_its_history_after_the_resume(tmp_path, sft_policy):  # noqa: F811
    """A stop during the last iteration checkpoints at iteration == iterations; the resumed run, with no iteration
    left, returned an empty history: the pipeline's stage summary had no ppo/score (the report's round summary
    left PPO out) and instructgpt.json's "final" was {}."""
    import json
    from instructgpt.ppo import train_ppo
    common = dict(iterations=3, batch_size=8, minibatch_size=8, ppo_epochs=1, save_every=0)
    full = train_ppo(ppo_cfg(sft_policy, tmp_path / "full", **common))
    assert _ppo_stopped_in_iteration_3(ppo_cfg(sft_policy, tmp_path / "cut", **common)).where == "at ppo iteration 3/3"
    resumed = train_ppo(ppo_cfg(sft_policy, tmp_path / "cut", resume=True, **common))
    numbers = [{k: v for k, v in h.items() if not k.startswith("time/")} for h in full.history]
    assert [{k: v for k, v in h.items() if not k.startswith("time/")} for h in resumed.history] == numbers
    final = json.loads((tmp_path / "cut/instructgpt.json").read_text())["final"]
    assert final["iteration"] == 3 and final["ppo/score"] == full.history[-1]["ppo/score"]


def test_ppo_checkpoints_at_its_end_so_a_resume_with_more_iterations_continues(tmp_path, sft_policy):  # noqa: F811
    """save_every=0 said "only at the end" but wrote no checkpoint at all (nor did save_every=5 after 7
    iterations at the 7th): --resume with more iterations (an option a resume may change) started over from 0."""
    import json
    from instructgpt.checkpoint import latest_good_checkpoint
    from instructgpt.ppo import train_ppo
    common = dict(batch_size=8, minibatch_size=8, ppo_epochs=1, save_every=0)
    train_ppo(ppo_cfg(sft_policy, tmp_path / "ppo", iterations=2, **common))
    assert latest_good_checkpoint(tmp_path / "ppo/checkpoints").name == "step-0000002"
    assert train_ppo(ppo_cfg(sft_policy, tmp_path / "ppo", iterations=3, resume=True, **common)).iterations == 3
    assert json.loads((tmp_path / "ppo/instructgpt.json").read_text())["resumed_at_iteration"] == 2
