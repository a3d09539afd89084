"""The reward model: a causal LM's transformer body plus a scalar head, and its folders.

The body is ``AutoModel`` (the unembedding removed); the reward of a sequence
is the head's output at its last real token (EOS) plus ``reward_bias``, the
offset set after training so that reference responses score mean 0. The value
model of PPO is the same class, initialised from the reward model, read at
every token instead of the last (``values``, bias included: the returns are
made of the normalised scores).

Reward-model folders (``format`` instructgpt-reward-model, version 2) are
``transformers.AutoModelForSequenceClassification`` checkpoints (num_labels=1):
  - config.json + model.safetensors: the body under the class's prefix
    (``transformer.`` for GPT-2, ``model.`` for Llama/Qwen2/Mistral) and the
    head's weight as ``score.weight``; ``pad_token_id`` is a token other than
    EOS, because that class reads the rightmost token that is not padding;
    ``reward_offset``: what to add to that class's score to get our reward
    (0.0 when exact);
  - ``reward_head.safetensors``: ``weight`` (1, hidden) and ``bias`` (1,) of the head;
  - ``reward_model.json``: format, version, hidden size, ``reward_bias``, how the
    constant (head bias + reward_bias) was stored (``sequence_classification``);
  - the tokenizer (with the same pad token and the chat template).
Stock ``score`` heads have no bias. Where the body ends in a LayerNorm with a
bias (GPT-2's ``ln_f``) the constant is folded into that bias along the head's
direction, and the sequence-classification score equals our reward (float
rounding). Where it ends in an RMSNorm (Llama, Qwen2, Mistral) nothing after
the last layer has a bias, so that score is our reward minus the constant, for
every input: ``config.reward_offset`` holds it and saving warns
(``RewardInteropWarning``). ``RewardModel.from_pretrained(folder)`` reads
both versions (version 1: the body alone + reward_head.safetensors).

A reward model trained with LoRA is saved as its body's adapter +
``reward_head.safetensors`` + ``reward_model.json`` (``adapter``: the base and
its kind); ``from_pretrained`` merges the adapter into its base's body.

How bodies are loaded (folders, GGUF files, adapter folders, dtypes, dropout)
is ``models.py``'s; this file only adds the head and the folder format.
"""

from __future__ import annotations

import copy
import json
import math
import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from . import compile as compile_mod
from . import lora
from .batching import pad
from .config import ConfigError
from .dropout import dropout_as_loaded, restore_dropout, set_dropout
from .last_block import columns_from, last_block_at
from .models import (ModelLoadError, check_attn_implementation, enable_gradient_checkpointing, fuse_activations,
                     last_token_index, load_pretrained, load_tokenizer, position_ids_from_mask, resolve_dtype,
                     same_vocab)

REWARD_FORMAT = "instructgpt-reward-model"
REWARD_FORMAT_VERSION = 2


class RewardInteropWarning(UserWarning):
    """A reward-model folder whose ``AutoModelForSequenceClassification`` score is not exactly our reward."""


def fp32_head(head: nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    """(..., H) hidden states of any dtype (a bf16/4-bit body, bf16 autocast) -> (...) fp32 outputs of a
    scalar head. Autocast is off here: under precision=bf16 it would run the fp32 head in bf16 and round
    every reward and value to bf16 (steps of 1/64 at a score of 3: reward differences, accuracy ties,
    PPO's scores, values and advantages all read the rounding)."""
    with torch.autocast(hidden.device.type, enabled=False):
        return head(hidden.to(head.weight.dtype)).squeeze(-1)


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

    def values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, start: int = 0) -> torch.Tensor:
        """(B, T) -> (B, T - start) rewards read at every position from ``start`` on (the value function's
        use): head output plus ``reward_bias``, so a value model initialised from the reward model predicts
        on the scale of the normalised scores PPO's returns are made of (at the last real token, ``values``
        equals ``forward``). The last block runs at those positions only (``last_block.py``)."""
        hidden = self._hidden(input_ids, attention_mask, columns_from(start, attention_mask))[:, start:]  # (B, T-start, H)
        return fp32_head(self.head, hidden) + self.reward_bias                                          # (B, T-start)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B,) normalised rewards read at each row's last real token (the last block runs there
        only)."""
        batch = torch.arange(input_ids.shape[0], device=input_ids.device)
        last = last_token_index(attention_mask)                                                         # (B,)
        h_last = self._hidden(input_ids, attention_mask, last.unsqueeze(1))[batch, last]               # (B, H)
        return fp32_head(self.head, h_last) + self.reward_bias                                          # (B,)

    def _hidden(self, input_ids, attention_mask, rows: torch.Tensor | None) -> torch.Tensor:
        """(B, T) -> (B, T, H) final hidden states, the model's own at the positions ``rows`` (B, n)."""
        with last_block_at(self.backbone, rows, attention_mask):
            return self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                                 position_ids=position_ids_from_mask(attention_mask)).last_hidden_state

    @torch.no_grad()
    def score(self, sequences: list[list[int]], pad_id: int, batch_size: int = 32,
              device: torch.device | str | None = None) -> torch.Tensor:
        """(N,) float32 rewards (on the CPU) of token sequences, each a prompt + response ending with its
        end token: right-padded batches of similar length, in eval mode without dropout (the mode and
        the dropout settings are restored). The one batch scorer of the RM stage (its bias), SFT's
        checkpoint selection and the evaluation. Every process of a sharded model runs the same batches."""
        device = device if device is not None else next(self.parameters()).device
        was_training = self.training
        self.eval()
        dropout = set_dropout(self, 0.0)
        seqs = [list(s) for s in sequences]
        out = torch.zeros(len(seqs))
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # little padding per batch
        try:
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                ids, mask = pad([seqs[i] for i in idx], pad_id, "right")
                out[idx] = self(ids.to(device), mask.to(device)).float().cpu()
        finally:
            restore_dropout(dropout)
            self.train(was_training)
        return out

    # ---- construction and persistence

    @classmethod
    def from_policy(cls, spec: str | os.PathLike, device: torch.device | str = "cpu",
                    dropout: float | None = 0.0, dtype: torch.dtype = torch.float32,
                    attn_implementation: str | None = None, load_in_4bit: bool = False) -> RewardModel:
        """A fresh reward model from a causal LM (the SFT model, a folder, GGUF or adapter folder): body
        kept, unembedding dropped. The head is fp32 whatever ``dtype``/``load_in_4bit`` make the body.

        ``dropout`` as in ``load_policy`` (default 0: off). A reward-model folder is refused: its body
        would load without its trained head, and for GPT-2-style bodies with the reward's constant folded
        into the final LayerNorm (see "reward-model folders for other tools")."""
        if (Path(spec) / "reward_model.json").is_file():
            raise ModelLoadError(f"{spec}: a reward model folder (it has reward_model.json), not a causal LM: a "
                                 f"new reward model starts from one (e.g. the run's models/sft) with a fresh head; "
                                 f"this folder's trained head would be dropped. Load a trained reward model with "
                                 f"RewardModel.from_pretrained")
        attn_implementation = check_attn_implementation(attn_implementation, device)
        body = load_pretrained(AutoModel, spec, dropout, "model body", dtype, attn_implementation, load_in_4bit,
                                device)
        model = cls(body)
        if load_in_4bit:  # the body is on the device already (bitsandbytes); .to() would refuse
            return _head_to(model, device)
        return _head_to(model.to(device), device)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: torch.device | str = "cpu",
                        dropout: float | None = 0.0, dtype: torch.dtype = torch.float32,
                        attn_implementation: str | None = None) -> RewardModel:
        """Load a reward-model folder (format version 1 or 2, or a LoRA adapter folder; see the module
        docstring), its weights in ``dtype``."""
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
        attn_implementation = check_attn_implementation(attn_implementation, device)
        interop = meta.get("sequence_classification") or {}  # absent in version 1 and in adapter folders
        try:
            if meta.get("adapter"):  # the base's body (a causal LM's, or another reward model's), adapter merged
                body = lora.merged(lora.load_adapter(_reward_base_body(folder, attn_implementation), folder))
            else:  # version 2: AutoModel takes the body out of the sequence-classification checkpoint
                extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
                body = fuse_activations(AutoModel.from_pretrained(str(folder), dtype=torch.float32, **extra))
            head = load_file(str(folder / meta.get("head_file", "reward_head.safetensors")))
            model = cls(body, reward_bias=meta.get("reward_bias", 0.0))
            model.head.load_state_dict({"weight": head["weight"], "bias": head["bias"]})
            if interop.get("folded_into"):  # take the constant back out of the LayerNorm bias: the head holds it
                with torch.no_grad():
                    body.get_parameter(interop["folded_into"]).sub_(
                        _fold_vector(head["weight"], interop["folded_offset"]))
        except ModelLoadError:
            raise
        except Exception as e:  # safetensors raises its own error types for truncated files
            raise ModelLoadError(f"{folder}: cannot load reward model: {e}") from e
        if dropout is not None:
            set_dropout(model, dropout)
        return _head_to(model.to(device=device, dtype=dtype), device)

    def save_pretrained(self, folder: str | os.PathLike, tokenizer=None, extra: dict | None = None,
                        state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Write the folder described in the module docstring.

        ``state_dict``: full tensors to write instead of the live ones (a sharded
        model's ``sharding.full_state_dict``; keys ``backbone.*``, ``head.*``,
        ``reward_bias``). The live model is never changed.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if lora.has_adapters(self.backbone):
            self._save_adapter(folder, tokenizer, extra)
            return
        state = state_dict if state_dict is not None else self.state_dict()
        body = {k[len("backbone."):]: v.detach().cpu() for k, v in state.items() if k.startswith("backbone.")}
        head = {k[len("head."):]: v.detach().cpu().contiguous() for k, v in state.items() if k.startswith("head.")}
        reward_bias = float(state.get("reward_bias", self.reward_bias))
        with dropout_as_loaded(self):  # the config as loaded: a stage's dropout does not leak into it
            config = copy.deepcopy(self.config)
        if tokenizer is not None:
            tokenizer = reward_tokenizer(tokenizer)
        interop = _write_sequence_classification(folder, self.backbone, config, body, head, reward_bias, tokenizer)
        end = sequence_end_token(tokenizer)
        if end is not None:
            interop["end_token"] = end
        save_file(head, str(folder / "reward_head.safetensors"))
        _write_meta(folder, tokenizer, config.hidden_size, reward_bias, extra, sequence_classification=interop,
                    how_to_load="instructgpt.reward_model.RewardModel.from_pretrained(folder): reward = head(h_last) "
                                "+ reward_bias, h_last = the body's last hidden state at the last real token, the "
                                f"end token ({end or 'EOS'}). Also transformers.AutoModelForSequenceClassification"
                                ".from_pretrained(folder): reward = logits[:, 0] + config.reward_offset, on "
                                "right-padded input_ids padded with config.pad_token_id. A sequence is the prompt "
                                "as the model read it (the tokenizer's chat template with the generation prompt, "
                                "or the prompt text ending with a newline), the response and the end token "
                                f"{end or 'EOS'}: with a chat template that is its end-of-turn token, and what the "
                                "template writes after it (apply_chat_template of the whole conversation) is not "
                                "part of the sequence.")

    def _save_adapter(self, folder: Path, tokenizer, extra: dict | None) -> None:
        """A LoRA reward model: the body's adapter (peft files), the head and reward_model.json."""
        lora.save_adapter(self.backbone, folder)
        head = {k: v.detach().float().cpu().contiguous() for k, v in self.head.state_dict().items()}
        save_file(head, str(folder / "reward_head.safetensors"))
        base = lora.adapter_base(folder)
        kind = "reward_model" if (Path(base) / "reward_model.json").is_file() else "causal_lm"
        _write_meta(folder, tokenizer, self.config.hidden_size, float(self.reward_bias), extra,
                    adapter={"base_model": base, "base_kind": kind}, sequence_classification=None,
                    how_to_load="instructgpt.reward_model.RewardModel.from_pretrained(folder). With peft: body = "
                                f"PeftModel.from_pretrained({_ADAPTER_BODY[kind]}, folder) (base = "
                                "adapter_config.json base_model_name_or_path; for an adapter or GGUF base load it "
                                "as instructgpt does); reward = head(h_last) + reward_bias at the last real token. "
                                "Write a folder other tools load as AutoModelForSequenceClassification with "
                                "merge_lora=true.")


# The body a reward model's adapter applies to, per base kind (how_to_load): a reward-model folder's own
# weights hold the reward constant folded into the final norm (AutoModel would read it with it), so its
# body is RewardModel's, which takes the constant back out.
_ADAPTER_BODY = {"causal_lm": "AutoModel.from_pretrained(base)",
                 "reward_model": "instructgpt.reward_model.RewardModel.from_pretrained(base, dropout=None).backbone"}


def check_scores_policy_tokens(folder: str, policy_tokenizer, fmt, option: str = "reward_model") -> None:
    """A reward model that scores a policy's token ids as they are (PPO's rollouts, SFT's checkpoint
    selection) must read the policy's vocabulary: another one is a ConfigError, since every score would
    be of other words. Another prompt format (``fmt``, a ``chat.ChatFormat``) only warns."""
    try:
        rm_tokenizer = load_tokenizer(folder)
    except ModelLoadError:
        return  # a reward model folder without a tokenizer: nothing to compare
    if not reads_policy_tokens(rm_tokenizer, policy_tokenizer):
        raise ConfigError(f"{option}: {folder} reads another vocabulary ({len(rm_tokenizer)} tokens) than the policy "
                          f"({len(policy_tokenizer)}): it would score the policy's token ids as other words; "
                          f"train the reward model from this policy's family")
    trained_with = rm_tokenizer.chat_template
    if (trained_with or None) == fmt.template:
        return
    if fmt.template is None:
        how = "with a chat template, but the policy writes plain text"
    elif not trained_with:
        how = "on plain text, but the policy uses a chat template"
    else:
        how = "with another chat template than the policy's"
    warnings.warn(f"{option}: {folder} was trained {how} ({fmt.describe()}); it scores the policy's tokens "
                  f"as they are, so its scores may mean little (set chat_template to match)", stacklevel=3)


def reads_policy_tokens(rm_tokenizer, policy_tokenizer) -> bool:
    """True if a reward model whose folder holds ``rm_tokenizer`` reads the policy's token ids as the same
    words: the same vocabulary, or that vocabulary plus the ``<|pad|>`` that ``reward_tokenizer`` appended
    (a policy whose pad token is EOS and that has no other token to pad with, e.g. GPT-2's)."""
    if same_vocab(policy_tokenizer, rm_tokenizer):
        return True
    vocab = dict(rm_tokenizer.get_vocab())
    added = vocab.pop(_PAD_CANDIDATE, None)
    return (added is not None and rm_tokenizer.pad_token == _PAD_CANDIDATE and added == len(policy_tokenizer)
            and len(rm_tokenizer) == added + 1 and vocab == policy_tokenizer.get_vocab())


def _write_meta(folder: Path, tokenizer, hidden_size: int, reward_bias: float, extra: dict | None,
                **fields) -> None:
    """reward_model.json (format, version, sizes, ``fields`` in order, then ``extra``) and the tokenizer."""
    meta = {"format": REWARD_FORMAT, "version": REWARD_FORMAT_VERSION, "hidden_size": int(hidden_size),
            "reward_bias": reward_bias, "head_file": "reward_head.safetensors", **fields, **(extra or {})}
    (folder / "reward_model.json").write_text(json.dumps(meta, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))


def trained_reward_model(spec: str | os.PathLike, device: torch.device | str, cfg, dropout: float | None = 0.0,
                         from_reward_model: bool = False) -> RewardModel:
    """The reward (or value) model a stage trains: from a causal LM (``RewardModel.from_policy``) or, with
    ``from_reward_model``, from a reward-model folder; as ``trained_policy`` for LoRA and checkpointing
    (the adapters go on the body; the scalar head is always fully trained, in fp32)."""
    use_lora = getattr(cfg, "lora_r", 0) > 0
    dtype = resolve_dtype(cfg.dtype, device) if use_lora else torch.float32
    if from_reward_model:
        model = RewardModel.from_pretrained(spec, device, dropout, dtype=dtype,
                                            attn_implementation=cfg.attn_implementation)
    else:
        model = RewardModel.from_policy(spec, device, dropout, dtype=dtype, attn_implementation=cfg.attn_implementation,
                                        load_in_4bit=use_lora and cfg.load_in_4bit)
    if use_lora:
        model.backbone = lora.add_adapters(model.backbone, cfg, base=spec)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if compile_mod.resolve(getattr(cfg, "compile", "off"), device):
        compile_mod.compile_blocks(model)
    return model


def _head_to(model: RewardModel, device) -> RewardModel:
    """The head and reward bias in fp32 on ``device`` (the body may be bf16 or 4-bit)."""
    model.head.to(device=device, dtype=torch.float32)
    model.reward_bias = model.reward_bias.to(device=device, dtype=torch.float32)
    return model


def _reward_base_body(folder: Path, attn_implementation: str | None) -> nn.Module:
    """The body a reward model's adapter applies to: its base reward model's (a value model trained on an
    RM), or the body of its base causal LM; fp32, dropout as loaded."""
    base = lora.adapter_base(folder)
    if (Path(base) / "reward_model.json").is_file():
        return RewardModel.from_pretrained(base, dropout=None, attn_implementation=attn_implementation).backbone
    try:
        return load_pretrained(AutoModel, base, None, "model body", attn_implementation=attn_implementation)
    except ModelLoadError as e:
        raise ModelLoadError(f"{folder}: its base model (adapter_config.json base_model_name_or_path) "
                             f"cannot be loaded: {e}") from e


# ----------------------------------------------------------------------------- reward-model folders for other tools
#
# transformers' ``XForSequenceClassification`` reads ``score(h)`` (no bias) at the
# rightmost token that is not ``config.pad_token_id``. Our reward is
# head.weight . h + head.bias + reward_bias at the last real token (EOS). So the
# folder gets: ``score.weight`` = head.weight; a pad token other than EOS; and the
# constant c = head.bias + reward_bias either folded into the body (exact) or
# declared as ``config.reward_offset`` (the score is then our reward - c).

_FINAL_NORMS = ("ln_f", "final_layer_norm", "final_layernorm", "norm_f", "norm")
_PAD_CANDIDATE = "<|pad|>"


def _sequence_classification_class(config):
    """transformers' ``XForSequenceClassification`` for this config's model type, or None."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    name = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.get(config.model_type)
    return getattr(transformers, name, None) if name else None


def _foldable_bias(backbone: nn.Module) -> str | None:
    """Name of the bias of the body's final LayerNorm, which can absorb a constant; None for RMSNorm bodies.

    The last hidden state is that norm's output, gamma * n(x) + beta, so adding
    c * w / |w|^2 to beta adds exactly c to w . h for every input. An RMSNorm
    (Llama, Qwen2, Mistral) has no beta and nothing after it has a bias.
    """
    for name in _FINAL_NORMS:
        try:
            norm = backbone.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(norm, nn.LayerNorm) and norm.bias is not None:
            return f"{name}.bias"
        return None
    return None


def _fold_vector(weight: torch.Tensor, offset: float) -> torch.Tensor:
    """(1, H) head weight -> (H,) vector v with weight . v = offset (v = offset * w / |w|^2)."""
    w = weight.detach().float().cpu()[0]
    return offset * (w / w.dot(w))


def reward_tokenizer(tokenizer):
    """A copy of ``tokenizer`` whose pad token is none of the tokens a scored sequence ends with (left
    unchanged when it already is not one of them).

    Sequence-classification heads read the rightmost token that is not the pad
    token; with pad = EOS (SmolLM2, GPT-2, many Llamas), or pad = the chat
    template's end-of-turn token (``<|im_end|>`` with EOS ``<|endoftext|>``), they
    would read the token before it, not the end token where our reward is read.
    The replacement is the first of: the unknown token, the BOS token, a new
    ``<|pad|>`` token (GPT-2-style vocabularies with one special token).
    """
    tok = copy.deepcopy(tokenizer)
    ends = sequence_end_ids(tok)
    if tok.pad_token_id is not None and tok.pad_token_id not in ends:
        return tok
    for candidate in (tok.unk_token, tok.bos_token):
        if candidate is not None and tok.convert_tokens_to_ids(candidate) not in ends:
            tok.pad_token = candidate
            return tok
    tok.add_special_tokens({"pad_token": _PAD_CANDIDATE})
    return tok


def sequence_end_ids(tokenizer) -> set[int]:
    """The ids a scored sequence ends with: EOS, and the end-of-turn token of the tokenizer's chat template
    (the format the reward model was trained with, ``ChatFormat.apply_to``)."""
    return {tokenizer.eos_token_id, *_scored_format(tokenizer).stop_ids}


def sequence_end_token(tokenizer) -> str | None:
    """The token the reward is read at (the chat template's end-of-turn token, else EOS); None without a
    tokenizer."""
    if tokenizer is None:
        return None
    fmt = _scored_format(tokenizer)
    return fmt.token(fmt.end_id)


def _scored_format(tokenizer):
    """The ``ChatFormat`` of the tokenizer's own chat template (plain text without one)."""
    from .chat import ChatFormat
    try:
        return ChatFormat.load(tokenizer, "auto")
    except ConfigError:  # a template with no end-of-turn token: its sequences end with EOS
        return ChatFormat(tokenizer)


def _write_sequence_classification(folder: Path, backbone: nn.Module, config, body: dict, head: dict,
                                   reward_bias: float, tokenizer) -> dict:
    """Write config.json + weights as an ``AutoModelForSequenceClassification`` checkpoint; returns how."""
    offset = float(head["bias"].item()) + reward_bias  # the constant the bias-free score lacks
    pad_id = tokenizer.pad_token_id if tokenizer is not None else config.pad_token_id
    if pad_id is not None:
        embeddings = next(n for n, m in backbone.named_modules() if m is backbone.get_input_embeddings())
        table = body[f"{embeddings}.weight"]                                   # (V, H)
        if pad_id >= table.shape[0]:  # a new pad token: one more row (never read: padding is masked)
            body[f"{embeddings}.weight"] = torch.cat([table, table.mean(0, keepdim=True)], 0)
            config.vocab_size = table.shape[0] + 1
        config.pad_token_id = pad_id
    cls = _sequence_classification_class(config)
    if cls is None:  # no such class for this architecture: the body alone (format version 1 layout)
        with torch.device("meta"):
            shell = AutoModel.from_config(config)
        shell.save_pretrained(str(folder), state_dict=dict(body))
        warnings.warn(f"{folder}: transformers has no AutoModelForSequenceClassification for "
                      f"{config.model_type!r}; only instructgpt.reward_model.RewardModel.from_pretrained reads this "
                      f"reward model's head", RewardInteropWarning, stacklevel=3)
        return {"class": None, "exact": False, "pad_token_id": pad_id}
    weight = head["weight"].float()                                             # (1, H)
    folded = _foldable_bias(backbone) if bool(weight.abs().sum() > 0) else None
    if folded:
        body[folded] = body[folded] + _fold_vector(weight, offset)
    config.architectures = [cls.__name__]
    config.num_labels = 1
    config.reward_offset = 0.0 if folded else offset
    config.reward_offset_note = (
        "instructgpt reward = logits[:, 0] + reward_offset, read at the last token that is not pad_token_id "
        "of right-padded input: the end token (EOS, or the chat template's end-of-turn token: end_token in "
        "reward_model.json); " +
        ("exact: the reward's constant is folded into the final LayerNorm's bias" if folded else
         "this architecture has no bias after its last layer, so the constant (head bias + reward_bias) "
         "cannot be inside the model: score differences and rankings are exact, scores are off by it"))
    weights = {f"{cls.base_model_prefix}.{k}": v for k, v in body.items()}
    weights["score.weight"] = weight
    with torch.device("meta"):  # a shell: only its class, config and names are used; tensors come from ``weights``
        shell = cls(config)
    shell.save_pretrained(str(folder), state_dict=weights)
    if pad_id is None or (tokenizer is not None and pad_id in sequence_end_ids(tokenizer)):
        warnings.warn(f"{folder}: pad_token_id is {pad_id} (EOS, the end-of-turn token or none): {cls.__name__} "
                      f"cannot find the last real token of padded batches", RewardInteropWarning, stacklevel=3)
    if not folded:
        warnings.warn(f"{folder}: {cls.__name__} reads this {config.model_type} reward model without its constant "
                      f"(no bias after the last layer can hold it): reward = score + config.reward_offset "
                      f"({offset:+.6g}). Score differences and rankings are exact.",
                      RewardInteropWarning, stacklevel=3)
    return {"class": cls.__name__, "exact": bool(folded), "score_offset": config.reward_offset,
            "folded_into": folded, "folded_offset": offset if folded else 0.0, "pad_token_id": pad_id}
