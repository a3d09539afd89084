"""Dropout in every place an architecture keeps it.

An architecture keeps its dropout probabilities in up to three places, and a
forward pass in train mode is deterministic only when all of them are 0:
  - ``nn.Dropout`` modules (GPT-2's attention, residual and embedding dropout): ``p``;
  - float attributes read at forward time: Llama, Qwen2 and Mistral attention copy
    ``config.attention_dropout`` to ``self.attention_dropout`` and apply it whenever
    the module is in train mode (``nn.MultiheadAttention`` keeps ``self.dropout``);
  - config fields (``attention_dropout``, ``resid_pdrop``, ``hidden_dropout``, ...): some
    architectures read ``self.config.<field>`` at forward time (GPT-Neo, Persimmon), and
    anything built from the config later inherits them.
``set_dropout`` sets all three; the config values a model had before its first
``set_dropout`` are remembered, and ``dropout_as_loaded`` puts them back while a
folder is written, so a stage's training dropout never leaks into a saved config.
"""

from __future__ import annotations

import contextlib
import re

import torch.nn as nn

_DROPOUT_NAME = re.compile(r"dropout|pdrop|drop_prob|layerdrop|drop_path")
_AS_LOADED = "_instructgpt_dropout_as_loaded"  # module attribute: [(config, {field: value as loaded})]

DropoutSettings = list  # [(owner, attribute, value)]: every dropout probability of a model


def _is_probability(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def _is_dropout_field(name: str, value) -> bool:
    return not name.startswith("_") and bool(_DROPOUT_NAME.search(name)) and _is_probability(value)


def _configs(model: nn.Module) -> list:
    """Every Hugging Face config object reachable from ``model``'s modules (sub-configs included), once."""
    from transformers import PretrainedConfig
    found: dict[int, object] = {}

    def visit(cfg):
        if isinstance(cfg, PretrainedConfig) and id(cfg) not in found:
            found[id(cfg)] = cfg
            for value in vars(cfg).values():
                visit(value)

    for m in model.modules():
        visit(m.__dict__.get("config"))
    if hasattr(model, "config"):  # RewardModel.config is a property
        visit(model.config)
    return list(found.values())


def dropout_settings(model: nn.Module) -> DropoutSettings:
    """Every dropout probability of ``model`` as (owner, attribute, value): modules, attributes, config fields."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            out.append((m, "p", m.p))
        for name, value in vars(m).items():
            if _is_dropout_field(name, value):
                out.append((m, name, value))
    for cfg in _configs(model):
        for name, value in vars(cfg).items():
            if _is_dropout_field(name, value):
                out.append((cfg, name, value))
    return out


def _remember_config_dropout(model: nn.Module) -> None:
    """Record the config dropout values of configs seen for the first time (once per config object)."""
    known = {id(cfg) for m in model.modules() for cfg, _ in m.__dict__.get(_AS_LOADED, ())}
    new = [(cfg, {k: v for k, v in vars(cfg).items() if _is_dropout_field(k, v)})
           for cfg in _configs(model) if id(cfg) not in known]
    if new:
        model.__dict__[_AS_LOADED] = model.__dict__.get(_AS_LOADED, []) + new


def set_dropout(model: nn.Module, p: float) -> DropoutSettings:
    """Set every dropout probability of ``model`` to ``p`` (0 turns dropout off); returns the previous settings.

    Applies to ``nn.Dropout`` modules, dropout attributes of modules and config
    fields alike (see above), so it holds in train mode too. ``restore_dropout``
    undoes it.
    """
    _remember_config_dropout(model)
    before = dropout_settings(model)
    for owner, name, _ in before:
        setattr(owner, name, float(p))
    return before


def restore_dropout(settings: DropoutSettings) -> None:
    """Put back what ``set_dropout`` (or ``dropout_settings``) recorded."""
    for owner, name, value in settings:
        setattr(owner, name, value)


@contextlib.contextmanager
def dropout_disabled(model: nn.Module):
    """Every dropout of ``model`` off inside the block (scoring, evaluation); restored after."""
    before = set_dropout(model, 0.0)
    try:
        yield model
    finally:
        restore_dropout(before)


@contextlib.contextmanager
def dropout_as_loaded(model: nn.Module):
    """The config dropout fields as they were loaded, inside the block (around ``save_pretrained``)."""
    records = [r for m in model.modules() for r in m.__dict__.get(_AS_LOADED, ())]
    current = [(cfg, name, getattr(cfg, name)) for cfg, fields in records for name in fields]
    try:
        for cfg, fields in records:
            for name, value in fields.items():
                setattr(cfg, name, value)
        yield model
    finally:
        restore_dropout(current)
