"""Generation backends for PPO rollouts: one interface, the built-in sampler or vLLM.

A backend turns prompts (token ids) into sampled responses (a
``generation.Generation``: token ids ending with EOS when the model stopped)
and is told about new policy weights after every PPO update:

    backend.generate(prompts, sampling, generator) -> Generation
    backend.sync_weights(policy)

Only the sampled tokens come from the backend; PPO recomputes every
log-probability with its own forward pass, so a backend never changes the
learning rule, only where and how fast tokens are drawn.

``generation_backend`` (PPOConfig) picks one:

- ``builtin``: ``generation.generate`` (KV cache, whole batch at once) on the
  live policy; syncing is free because it reads the training weights.
- ``vllm``: a vLLM engine per rank, on that rank's GPU, holding its own copy of
  the policy; ``sync_weights`` loads the updated weights into it in place.
  Needs the ``vllm`` package and a CUDA device; otherwise the built-in
  generator is used (with a warning, since it was asked for).
- ``auto`` (default): vLLM when it is installed and the run is on CUDA, else
  the built-in generator.
- ``module:factory``: any callable taking a ``BackendContext`` and returning a
  backend (tests use this to force particular responses).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Protocol

import torch

from . import compile as compile_mod
from . import distributed as dist
from .generation import Generation, generate, stop_ids

BACKENDS = ("auto", "builtin", "vllm")


@dataclass
class Sampling:
    """How to sample one response per prompt."""
    max_new_tokens: int
    eos_id: int                  # the token that ends a response (a chat template's end of turn, else EOS)
    pad_id: int
    temperature: float = 1.0     # 0 = greedy
    top_k: int = 0               # 0 = off
    top_p: float = 1.0           # 1 = off
    min_new_tokens: int = 0      # no stop token can be sampled before this many tokens
    stop_ids: tuple[int, ...] = ()  # further tokens that end a response (EOS, when eos_id is an end of turn)

    def stops(self) -> list[int]:
        """Every token that ends a response, ``eos_id`` first."""
        return list(dict.fromkeys([self.eos_id, *self.stop_ids]))


@dataclass
class BackendContext:
    """What a backend may need to build itself."""
    model: torch.nn.Module               # the live policy (trained in place)
    model_path: str                      # folder the policy was loaded from (engines load their own copy)
    device: torch.device
    dtype: torch.dtype | None = None     # autocast dtype of forward passes (None = fp32)
    seed: int = 0
    gpu_memory_utilization: float = 0.3  # vLLM: share of this GPU for its weights and KV cache


class GenerationBackend(Protocol):
    name: str

    def generate(self, prompts: list[list[int]], sampling: Sampling,
                 generator: torch.Generator | None = None) -> Generation: ...

    def sync_weights(self, model: torch.nn.Module) -> None: ...


# ----------------------------------------------------------------------------- built-in

class BuiltinBackend:
    """``generation.generate`` on the live policy (KV cache, batched)."""

    name = "builtin"

    def __init__(self, ctx: BackendContext):
        self.model, self.device, self.dtype = ctx.model, ctx.device, ctx.dtype

    def generate(self, prompts: list[list[int]], sampling: Sampling,
                 generator: torch.Generator | None = None) -> Generation:
        with dist.autocast(self.device, self.dtype):
            return generate(self.model, prompts, sampling.max_new_tokens, sampling.stops(), sampling.pad_id,
                            sampling.temperature, sampling.top_k, sampling.top_p, generator,
                            min_new_tokens=sampling.min_new_tokens,
                            compile=compile_mod.is_compiled(self.model))  # compile= asked for: the decode step too

    def sync_weights(self, model: torch.nn.Module) -> None:
        self.model = model  # the same tensors the optimizer updates: nothing to copy


# ----------------------------------------------------------------------------- vLLM

class VLLMBackend:
    """A vLLM engine in this process, on this rank's GPU, with the policy's weights loaded after each update.

    Not exercised on a GPU by this package's tests (they run on CPU, where vLLM
    is not usable); the conversion of requests and outputs is tested against a
    stand-in module.
    """

    name = "vllm"

    def __init__(self, ctx: BackendContext):
        # The engine must run in this process for its model to be reachable by sync_weights.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        import vllm
        self.vllm = vllm
        self.llm = vllm.LLM(model=ctx.model_path, tokenizer=ctx.model_path, seed=ctx.seed,
                            dtype="bfloat16" if ctx.dtype == torch.bfloat16 else "float32",
                            gpu_memory_utilization=ctx.gpu_memory_utilization, enable_prefix_caching=True)
        self.sync_weights(ctx.model)  # the live policy may already differ from the folder (resume)

    def generate(self, prompts: list[list[int]], sampling: Sampling,
                 generator: torch.Generator | None = None) -> Generation:
        params = [self.vllm.SamplingParams(**vllm_sampling_kwargs(sampling, seed))
                  for seed in _draw_seeds(generator, len(prompts))]
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        return generation_from_vllm(outputs, sampling.stops())

    def sync_weights(self, model: torch.nn.Module) -> None:
        engine_model = _engine_model(self.llm)
        engine_model.load_weights((name, t.detach()) for name, t in model.state_dict().items())
        reset = getattr(self.llm, "reset_prefix_cache", None)
        if reset is not None:
            reset()  # cached prompt activations belong to the old weights


def vllm_sampling_kwargs(s: Sampling, seed: int | None) -> dict[str, Any]:
    """``vllm.SamplingParams`` arguments equivalent to ``s`` (its stop tokens are the only ones)."""
    kw: dict[str, Any] = dict(n=1, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_new_tokens,
                              stop_token_ids=s.stops(), ignore_eos=False, seed=seed)
    if s.top_k > 0:
        kw["top_k"] = s.top_k
    if s.min_new_tokens > 0:
        kw["min_tokens"] = s.min_new_tokens
    return kw


def generation_from_vllm(outputs: Iterable[Any], eos_id: int | list[int]) -> Generation:
    """vLLM ``RequestOutput``s -> ``Generation`` with the built-in sampler's conventions:
    a response that stopped ends with its stop token (``eos_id``, or one of a list; the
    first if vLLM left it out) and nothing after it."""
    stops = stop_ids(eos_id)
    responses, ended = [], []
    for out in outputs:
        choice = out.outputs[0]
        ids = list(choice.token_ids)
        cut = next((j + 1 for j, t in enumerate(ids) if t in stops), None)
        if cut is not None:
            ids = ids[:cut]
        elif choice.finish_reason == "stop":
            reason = getattr(choice, "stop_reason", None)  # vLLM: the stop token id that ended it
            ids.append(reason if reason in stops else stops[0])
        responses.append(ids)
        ended.append(bool(ids) and ids[-1] in stops)
    return Generation(responses, ended)


def _draw_seeds(generator: torch.Generator | None, n: int) -> list[int | None]:
    """One seed per request from the rank's generator, so vLLM sampling is reproducible too."""
    if generator is None:
        return [None] * n
    return torch.randint(0, 2 ** 31 - 1, (n,), generator=generator, device=generator.device).tolist()


def _engine_model(llm: Any) -> torch.nn.Module:
    """The ``nn.Module`` inside an in-process vLLM engine (V1 first, then the older V0 layout)."""
    for path in ("llm_engine.model_executor.driver_worker.worker.model_runner.model",
                 "llm_engine.model_executor.driver_worker.model_runner.model"):
        obj = llm
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if hasattr(obj, "load_weights"):
            return obj
    raise RuntimeError("vllm: cannot reach the engine's model to load new weights (this vLLM version keeps it "
                       "in another process; set VLLM_ENABLE_V1_MULTIPROCESSING=0 or use generation_backend=builtin)")


# ----------------------------------------------------------------------------- selection

def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def choose_backend(requested: str, device: torch.device) -> tuple[str, str | None]:
    """(backend to use, why an explicit ``vllm`` request could not be honoured, or None)."""
    if ":" in requested or requested == "builtin":
        return requested, None
    if requested not in BACKENDS:
        raise ValueError(f"generation_backend: {requested!r} is not one of {', '.join(BACKENDS)} or module:factory")
    if not vllm_available():
        why = "the vllm package is not installed"
    elif torch.device(device).type != "cuda":
        why = f"vLLM needs a CUDA device (this run is on {torch.device(device).type})"
    else:
        return "vllm", None
    return "builtin", (why if requested == "vllm" else None)


def make_backend(requested: str, ctx: BackendContext) -> GenerationBackend:
    """Build the backend ``requested`` names, falling back to the built-in generator when vLLM cannot run."""
    name, why = choose_backend(requested, ctx.device)
    if why:
        warnings.warn(f"generation_backend=vllm: {why}; using the built-in generator", stacklevel=2)
    if ":" in name:
        return _load_factory(name)(ctx)
    if name == "vllm":
        try:
            return VLLMBackend(ctx)
        except Exception as e:  # a broken install must not stop a run that did not insist on vLLM
            if requested == "vllm":
                raise
            warnings.warn(f"generation_backend=auto: vLLM failed to start ({e}); using the built-in generator",
                          stacklevel=2)
    return BuiltinBackend(ctx)


def _load_factory(spec: str):
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"generation_backend: cannot load {spec!r}: {e}") from None
