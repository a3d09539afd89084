"""LoRA and QLoRA adapters through ``peft`` (the optional extra ``pip install 'instructgpt[lora]'``).

With ``lora_r`` > 0 a stage freezes the model's weights and trains low-rank
adapters on ``lora_target_modules`` (the attention and MLP projections by
default); the reward and value models also train their full scalar head.

An adapter folder is what ``peft`` writes, plus our bookkeeping:

  adapter_config.json        peft's LoraConfig; ``base_model_name_or_path`` is the model the
                             adapter was trained on, exactly as the stage was given it (a folder
                             as an absolute path, a .gguf file, the alias ``smollm2``, or another
                             adapter folder, whose own base is then loaded first)
  adapter_model.safetensors  the adapter weights
  tokenizer files            as in every folder a stage writes

``peft.PeftModel.from_pretrained(base, folder)`` loads it onto the base model
(for a causal LM: ``AutoModelForCausalLM``; for a reward model's body:
``AutoModel``, see ``reward_model.RewardModel``); a base that is itself an
adapter folder must be loaded merged first (peft's ``AutoPeftModel`` would
replace its adapter by this one: docs/real-models.md). Every loader of this package
(``models.load_policy``, ``RewardModel.from_policy/from_pretrained``) reads an
adapter folder transparently: it loads the recorded base, applies the adapter
and merges it. ``merge_lora=true`` makes a stage write the merged weights as a
plain folder (the adapter then goes to ``out_dir/adapter/``).

QLoRA (``load_in_4bit=true``): the frozen base is loaded in 4-bit NF4 by
bitsandbytes (compute in bf16), the adapters train in fp32. It needs CUDA.

Sharding: LoRA runs with replicated data parallelism (``sharding=none``);
FSDP2 sharding of a model with adapters is refused (``refuse_sharding``):
the adapters are ~1% of the weights, so sharding would save little beyond
what ``dtype=bf16`` / ``load_in_4bit`` save on the frozen base.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .config import ConfigError, changed_from_default, opt

PIP_HINT = "pip install 'instructgpt[lora]'"
QLORA_PIP_HINT = "pip install 'instructgpt[qlora]'"
ADAPTER_CONFIG = "adapter_config.json"

# Default target modules per architecture (model_type): every projection of attention and MLP.
# GPT-2's c_proj names both the attention output and the MLP output projection.
_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEFAULT_TARGETS: dict[str, list[str]] = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": _LLAMA_LIKE, "qwen2": _LLAMA_LIKE, "qwen3": _LLAMA_LIKE, "mistral": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE, "gemma2": _LLAMA_LIKE, "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
}
_CONV1D_ARCHS = ("gpt2",)  # weights stored (in, out): peft needs fan_in_fan_out


@dataclass
class LoraOptions:
    """LoRA / QLoRA options shared by SFT, RM and PPO."""
    lora_r: int = opt(0, "LoRA rank (0 = off: full fine-tuning). With r > 0 the model's weights are frozen and "
                         "low-rank adapters are trained (plus the full scalar head of reward and value models); "
                         "folders are saved as peft adapters. Needs: " + PIP_HINT)
    lora_alpha: float = opt(16.0, "LoRA scaling: the update is (lora_alpha / lora_r) * B A.")
    lora_dropout: float = opt(0.05, "Dropout on the adapters' input while training (PPO turns it off like "
                                    "every other dropout).")
    lora_target_modules: list[str] = opt([], "Module names that get adapters (comma list; empty = per "
                                             "architecture: GPT-2 c_attn,c_proj,c_fc; Llama/Qwen2/Mistral "
                                             "q,k,v,o,gate,up,down projections; others every linear layer "
                                             "but the output).")
    merge_lora: bool = opt(False, "Write the merged weights: out_dir becomes a plain Hugging Face folder "
                                  "(any tool loads it) and the adapter goes to out_dir/adapter/.")
    load_in_4bit: bool = opt(False, "QLoRA: load the frozen base in 4-bit NF4 (bitsandbytes, bf16 compute). "
                                    "Needs lora_r > 0, a CUDA GPU and " + QLORA_PIP_HINT + "; the base must be "
                                    "a plain model folder (not .gguf, not an adapter folder).")

    def validate_lora(self) -> None:
        if self.lora_r < 0:
            raise ConfigError(f"lora_r: must be >= 0 (0 = full fine-tuning), got {self.lora_r}")
        if self.lora_r == 0:
            if self.load_in_4bit:
                raise ConfigError("load_in_4bit: needs lora_r > 0 (a 4-bit base cannot be fine-tuned itself; "
                                  "QLoRA trains adapters on it)")
            if self.merge_lora:
                raise ConfigError("merge_lora: needs lora_r > 0 (without LoRA the folder is already merged)")
            self.check_no_adapter_options()
            return
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout: must be in [0, 1), got {self.lora_dropout}")
        if self.lora_alpha <= 0:
            raise ConfigError(f"lora_alpha: must be > 0, got {self.lora_alpha}")
        require_peft("lora_r")

    def check_no_adapter_options(self) -> None:
        """Without adapters (lora_r=0) the options that shape them do nothing: set, they are an error."""
        unused = changed_from_default(self, ADAPTER_OPTIONS)
        if unused:
            raise ConfigError(f"{', '.join(k.split('=')[0] for k in unused)}: lora_r=0 trains every weight and adds "
                              f"no adapters, so {', '.join(unused)} would do nothing; set lora_r > 0 (LoRA) or "
                              f"leave {'it' if len(unused) == 1 else 'them'} at the default")


#: what only the adapters read: set with lora_r=0, they are a config error
ADAPTER_OPTIONS = ("lora_alpha", "lora_dropout", "lora_target_modules")


# ----------------------------------------------------------------------------- availability

def require_peft(what: str = "lora_r") -> None:
    if importlib.util.find_spec("peft") is None:
        raise ConfigError(f"{what}: LoRA needs the peft package, which is not installed: {PIP_HINT}")


def check_4bit(device: torch.device, spec: str | os.PathLike) -> None:
    """Clear errors for QLoRA where it cannot run: no CUDA, no bitsandbytes, a base that is not a plain folder."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise ConfigError(f"load_in_4bit: 4-bit QLoRA needs a CUDA GPU (bitsandbytes' 4-bit layers train on CUDA); "
                          f"this run's device is {device}. On a CPU use lora_r without load_in_4bit (the frozen "
                          f"base stays fp32)")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"load_in_4bit: needs the bitsandbytes package, which is not installed: {QLORA_PIP_HINT}")
    path = Path(str(spec))
    if path.suffix == ".gguf" or str(spec) == "smollm2" or is_adapter_folder(path):
        raise ConfigError(f"load_in_4bit: {spec}: 4-bit loading needs a plain model folder (config.json + weights); "
                          f"run the stage that wrote it with merge_lora=true, or load this model once and save it")


def quantization_config(compute_dtype: torch.dtype):
    """bitsandbytes NF4 with double quantization (the QLoRA paper's settings)."""
    from transformers import BitsAndBytesConfig
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


# ----------------------------------------------------------------------------- adding adapters

def target_modules(config, requested: list[str] | None = None) -> list[str] | str:
    """The requested names, else the architecture's default, else peft's ``all-linear``."""
    if requested:
        return list(requested)
    return list(DEFAULT_TARGETS.get(getattr(config, "model_type", ""), [])) or "all-linear"


def add_adapters(model: nn.Module, opts: LoraOptions, base: str | os.PathLike) -> nn.Module:
    """``model`` (a causal LM or a transformer body) frozen, with fresh LoRA adapters: a ``peft.PeftModel``.

    ``base`` is recorded as the adapter's ``base_model_name_or_path`` (how a
    later stage finds the weights the adapter applies to). A 4-bit model is
    prepared for training first (norms in fp32, input gradients enabled).
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    if getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(r=opts.lora_r, lora_alpha=opts.lora_alpha, lora_dropout=opts.lora_dropout,
                        target_modules=target_modules(model.config, opts.lora_target_modules),
                        fan_in_fan_out=getattr(model.config, "model_type", "") in _CONV1D_ARCHS,
                        bias="none")
    try:
        with _quiet():
            wrapped = get_peft_model(model, config)
    except ValueError as e:  # target modules not found in the model
        raise ConfigError(f"lora_target_modules: {e}") from None
    # peft records the loaded model's own path, which for a merged adapter or a GGUF file is not a
    # loadable spec: record what the stage was given instead
    for c in wrapped.peft_config.values():
        c.base_model_name_or_path = base_spec(base)
    return wrapped


@contextlib.contextmanager
def _quiet():
    """peft asks transformers a deprecated question (``is_gradient_checkpointing``): not the user's concern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def base_spec(spec: str | os.PathLike) -> str:
    """How a base is recorded: the alias as is, paths absolute (a stage's cwd is not the next one's)."""
    spec = str(spec)
    from .models import SMOLLM2_ALIAS
    return spec if spec == SMOLLM2_ALIAS else os.path.abspath(spec)


def same_model(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two model specs name the same weights (paths compared after resolving links)."""
    a, b = str(a), str(b)
    if a == b:
        return True
    return os.path.exists(a) and os.path.exists(b) and os.path.realpath(a) == os.path.realpath(b)


# ----------------------------------------------------------------------------- adapter folders

def is_adapter_folder(path: str | os.PathLike) -> bool:
    return (Path(str(path)) / ADAPTER_CONFIG).is_file()


def adapter_base(folder: str | os.PathLike) -> str:
    """The base model an adapter folder was trained on (``base_model_name_or_path``)."""
    path = Path(folder) / ADAPTER_CONFIG
    try:
        base = json.loads(path.read_text()).get("base_model_name_or_path")
    except json.JSONDecodeError as e:
        from .models import ModelLoadError
        raise ModelLoadError(f"{path}: corrupt: {e}") from None
    if not base:
        from .models import ModelLoadError
        raise ModelLoadError(f"{path}: base_model_name_or_path: missing (the adapter's base model is unknown)")
    return base


def load_adapter(model: nn.Module, folder: str | os.PathLike, trainable: bool = False) -> nn.Module:
    """``peft.PeftModel.from_pretrained(model, folder)``; errors name the folder."""
    from .models import ModelLoadError
    if importlib.util.find_spec("peft") is None:
        raise ModelLoadError(f"{folder}: a LoRA adapter folder ({ADAPTER_CONFIG}); loading it needs peft: {PIP_HINT}")
    from peft import PeftModel
    try:
        with _quiet():
            return PeftModel.from_pretrained(model, str(folder), is_trainable=trainable)
    except Exception as e:  # shapes that do not fit, missing or corrupt files
        raise ModelLoadError(f"{folder}: cannot load the LoRA adapter onto its base "
                             f"({adapter_base(folder)}): {e}") from e


def merged(model: nn.Module) -> nn.Module:
    """The plain model with the adapters' updates added into its weights (``merge_and_unload``)."""
    if not has_adapters(model):
        return model
    with _quiet():
        return model.merge_and_unload()


def save_adapter(model: nn.Module, folder: str | os.PathLike) -> None:
    """adapter_config.json + adapter_model.safetensors (the trainable weights only)."""
    with _quiet():
        model.save_pretrained(str(folder), save_embedding_layers=False)  # embeddings are never adapted here
    readme = Path(folder) / "README.md"  # peft's model-card template: not ours to publish
    if readme.is_file():
        readme.unlink()


def save_policy(model: nn.Module, folder: str | os.PathLike, tokenizer, merge: bool = False) -> None:
    """A LoRA policy's folder: the adapter (+ tokenizer); with ``merge`` the merged weights as a plain
    folder and the adapter in ``folder/adapter``. The merge reloads the base in fp32 from disk (also
    after QLoRA, whose 4-bit base cannot hold a merged update)."""
    folder = Path(folder)
    adapter_dir = folder / "adapter" if merge else folder
    save_adapter(model, adapter_dir)
    tokenizer.save_pretrained(str(adapter_dir))
    gen = getattr(model, "generation_config", None)  # the base's; ChatFormat.save_generation_config adds the stops
    if gen is not None:  # peft does not read it: docs/real-models.md says how to load it with the adapter
        (adapter_dir / "generation_config.json").write_text(gen.to_json_string(use_diff=True))
    if merge:
        from .models import load_policy
        load_policy(adapter_dir, "cpu", dropout=None).save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))


def save_reward_model(model: nn.Module, folder: str | os.PathLike, tokenizer, merge: bool = False,
                      extra: dict | None = None) -> None:
    """A LoRA reward or value model's folder (``RewardModel.save_pretrained`` of its adapter); with
    ``merge`` a full reward-model folder (loadable as AutoModelForSequenceClassification) and the
    adapter folder in ``folder/adapter``."""
    folder = Path(folder)
    adapter_dir = folder / "adapter" if merge else folder
    model.save_pretrained(adapter_dir, tokenizer, extra=extra)
    if merge:
        from .reward_model import RewardModel
        RewardModel.from_pretrained(adapter_dir, dropout=None).save_pretrained(folder, tokenizer, extra=extra)


# ----------------------------------------------------------------------------- models with adapters

def has_adapters(model: nn.Module | None) -> bool:
    """Whether ``model`` is or contains a ``peft`` model."""
    if model is None or importlib.util.find_spec("peft") is None:
        return False
    from peft import PeftModel
    return any(isinstance(m, PeftModel) for m in model.modules())


def peft_model(model: nn.Module):
    """The ``PeftModel`` inside ``model`` (itself, or a reward model's body)."""
    from peft import PeftModel
    return next(m for m in model.modules() if isinstance(m, PeftModel))


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """The base model's function inside the block (PPO's KL reference): every adapter off."""
    with peft_model(model).disable_adapter():
        yield model


def frozen_parameter_names(model: nn.Module) -> set[str]:
    """State-dict names of the frozen parameters of a model with adapters (the base weights); empty otherwise.

    Checkpoints leave them out (they are the base model's, loaded again on resume)."""
    if not has_adapters(model):
        return set()
    return {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}


class AdapterShadow(nn.Module):
    """Copies of a model's trainable tensors (an EMA of the adapters and heads, not of the frozen base).

    ``tensors()`` are in the order of ``trainable(model)``; ``swapped_into(model)``
    puts them in place of the live values inside a ``with`` block (to save the EMA).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        for name, p in trainable(model):
            self.register_buffer(name.replace(".", "__"), p.detach().clone())

    def tensors(self) -> list[torch.Tensor]:
        return list(self.buffers())

    @contextlib.contextmanager
    def swapped_into(self, model: nn.Module):
        params = [p for _, p in trainable(model)]
        live = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, t in zip(params, self.tensors()):
                p.copy_(t)
        try:
            yield model
        finally:
            with torch.no_grad():
                for p, t in zip(params, live):
                    p.copy_(t)


def trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def refuse_sharding(model: nn.Module) -> None:
    """FSDP2 sharding of a model with adapters is not supported: a clear error instead."""
    if has_adapters(model):
        raise ConfigError("sharding: FSDP2 sharding (full/grad_op) of a LoRA model is not supported: use "
                          "sharding=none (replicated data parallelism: the adapters and their AdamW states are "
                          "~1% of the model; dtype=bf16 or load_in_4bit shrink the frozen base), or full "
                          "fine-tuning (lora_r=0) with sharding. See docs/scaling.md")


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """{"trainable": n, "total": n} (tied weights counted once)."""
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad), "total": total}
