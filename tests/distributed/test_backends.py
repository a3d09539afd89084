"""Single-process checks: generation-backend selection and fallback, the vLLM glue (against a
stand-in module: vLLM itself cannot run on this CPU machine), and the precision option."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest
import torch

from instructgpt import backends, config
from instructgpt import distributed as dist
from instructgpt.backends import BackendContext, BuiltinBackend, Sampling, VLLMBackend
from instructgpt.config import ConfigError
from instructgpt.generation import generate
from instructgpt.models import load_policy
from instructgpt.ppo import PPOConfig, PPOTrainer
from instructgpt.sft import train_sft
from tests.distributed.harness import one_thread
from tests.distributed.workers import ppo_config, sft_config

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


# ----------------------------------------------------------------------------- selection

@pytest.mark.parametrize("requested, installed, device, expected, reason", [
    ("builtin", True, CUDA, "builtin", None),
    ("auto", False, CUDA, "builtin", None),
    ("auto", True, CPU, "builtin", None),
    ("auto", True, CUDA, "vllm", None),
    ("vllm", False, CUDA, "builtin", "not installed"),
    ("vllm", True, CPU, "builtin", "CUDA"),
    ("vllm", True, CUDA, "vllm", None),
    ("tests.distributed.workers:eos_on_last_rank", False, CPU, "tests.distributed.workers:eos_on_last_rank", None),
])
def test_backend_choice(monkeypatch, requested, installed, device, expected, reason):
    monkeypatch.setattr(backends, "vllm_available", lambda: installed)
    name, why = backends.choose_backend(requested, device)
    assert name == expected
    assert (why is None) if reason is None else (reason in why)


def test_unknown_backend_is_a_config_error(dist_data):
    with pytest.raises(ValueError, match="generation_backend"):
        backends.choose_backend("fast", CPU)
    with pytest.raises(ConfigError, match="generation_backend"):
        ppo_config(dist_data, "/tmp/unused", generation_backend="fast")


def test_asking_for_vllm_without_it_warns_and_uses_the_builtin_generator(dist_data, tmp_path):
    with one_thread(), pytest.warns(UserWarning, match="built-in generator"):
        trainer = PPOTrainer(ppo_config(dist_data, tmp_path / "ppo", generation_backend="vllm"))
    assert isinstance(trainer.backend, BuiltinBackend)
    assert trainer.logprob_temperature == 1.0  # temperature=0 (greedy): log-probs at temperature 1


def test_builtin_backend_is_the_kv_cache_generator(dist_data):
    model = load_policy(dist_data["model"])
    prompts = [[5, 6, 7], [8, 9]]
    s = Sampling(max_new_tokens=5, eos_id=0, pad_id=1, temperature=0.0)
    got = BuiltinBackend(BackendContext(model, dist_data["model"], CPU)).generate(prompts, s)
    want = generate(model, prompts, 5, 0, 1, temperature=0.0)
    assert got.responses == want.responses and got.ended == want.ended


# ----------------------------------------------------------------------------- vLLM glue, against a stand-in

class FakeLLM:
    """Records what the backend asks of ``vllm.LLM``; answers with canned outputs."""

    def __init__(self, **kwargs):
        self.kwargs, self.loaded, self.resets, self.requests = kwargs, [], 0, None
        model = SimpleNamespace(load_weights=lambda weights: self.loaded.append([name for name, _ in weights]))
        runner = SimpleNamespace(model_runner=SimpleNamespace(model=model))
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=SimpleNamespace(worker=runner)))

    def generate(self, prompts, params, use_tqdm=True):
        self.requests = (prompts, params)
        canned = [([4, 5, 0], "stop"),      # EOS included by vLLM
                  ([6], "stop"),            # EOS left out by vLLM
                  ([7, 8, 9], "length")]    # hit max_tokens
        return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=ids, finish_reason=why)])
                for ids, why in canned[:len(prompts)]]

    def reset_prefix_cache(self):
        self.resets += 1


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM = FakeLLM
    module.SamplingParams = lambda **kw: kw
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(backends, "vllm_available", lambda: True)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    return module


def test_vllm_backend_converts_requests_outputs_and_syncs_weights(fake_vllm, dist_data):
    model = load_policy(dist_data["model"])
    ctx = BackendContext(model, dist_data["model"], CUDA, torch.bfloat16, seed=3, gpu_memory_utilization=0.25)
    backend = backends.make_backend("auto", ctx)           # CUDA + vllm importable: vLLM is chosen
    assert isinstance(backend, VLLMBackend)
    llm = backend.llm
    assert llm.kwargs["dtype"] == "bfloat16" and llm.kwargs["gpu_memory_utilization"] == 0.25
    assert llm.loaded and "lm_head.weight" in llm.loaded[0]  # live weights loaded at start

    s = Sampling(max_new_tokens=3, eos_id=0, pad_id=1, temperature=0.7, top_k=0, top_p=0.9, min_new_tokens=1)
    gen = backend.generate([[10, 11], [12], [13]], s, torch.Generator().manual_seed(0))
    assert gen.responses == [[4, 5, 0], [6, 0], [7, 8, 9]] and gen.ended == [True, True, False]
    prompts, params = llm.requests
    assert prompts == [{"prompt_token_ids": [10, 11]}, {"prompt_token_ids": [12]}, {"prompt_token_ids": [13]}]
    assert all(p["stop_token_ids"] == [0] and p["max_tokens"] == 3 and p["min_tokens"] == 1 for p in params)
    assert "top_k" not in params[0] and params[0]["temperature"] == 0.7
    again = backend.generate([[10, 11], [12], [13]], s, torch.Generator().manual_seed(0))
    assert [p["seed"] for p in llm.requests[1]] == [p["seed"] for p in params]  # seeds follow the generator

    backend.sync_weights(model)                               # after a PPO update
    assert len(llm.loaded) == 2 and llm.resets == 2
    assert again.responses == gen.responses


def test_vllm_that_fails_to_start_falls_back_under_auto_only(fake_vllm, dist_data):
    def broken(**kw):
        raise RuntimeError("no CUDA driver")
    fake_vllm.LLM = broken
    ctx = BackendContext(load_policy(dist_data["model"]), dist_data["model"], CUDA)
    with pytest.warns(UserWarning, match="failed to start"):
        assert isinstance(backends.make_backend("auto", ctx), BuiltinBackend)
    with pytest.raises(RuntimeError, match="no CUDA driver"):
        backends.make_backend("vllm", ctx)


# ----------------------------------------------------------------------------- precision

def test_precision_is_picked_at_run_time(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert dist.resolve_precision("auto", CPU) is None              # fp32 on CPU
    assert dist.resolve_precision("fp32", CUDA) is None
    assert dist.resolve_precision("bf16", CPU) is torch.bfloat16
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")        # accelerate launch --mixed_precision bf16
    assert dist.resolve_precision("auto", CPU) is torch.bfloat16
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert dist.resolve_precision("auto", CUDA) is None
    with pytest.raises(ValueError, match="precision"):
        dist.resolve_precision("fp16", CPU)
    with pytest.raises(ConfigError, match="precision"):
        config.from_dict(PPOConfig, dict(policy="p", prompts="q", out_dir="o", reward_fn="m:f", precision="fp8"))


def test_bf16_autocast_trains_on_cpu_with_fp32_weights(tmp_path, dist_data):
    with one_thread():
        result = train_sft(sft_config(dist_data, tmp_path / "sft", precision="bf16", epochs=1, max_steps=2,
                                      valid=""))
    assert result.fit.steps == 2
    model = load_policy(tmp_path / "sft")
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
