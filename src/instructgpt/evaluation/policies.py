"""The policies an evaluation asks: which ones a run holds, loading them, encoding, sampling.

* :func:`discover_models`: name -> :class:`ModelSpec` for the policies of a run
  folder (models/base, sft, ppo, ppo_ptx, flan ..., plus the virtual
  ``base_prompted``: the base model behind a few-shot prefix of SFT
  demonstrations, the paper's "GPT-3 prompted") and any extra ``name=path``.
* :class:`ModelPool`: loaded weights, shared by the specs that point at them.
* :class:`Encoder`: texts -> token ids for one tokenizer. ``Encoder.prompt_ids``
  is the one place where the evaluation turns a prompt into the ids a model
  is asked with (a chat template would go there).
* :class:`PolicyRunner`: a loaded policy with its encoder (and few-shot
  prefix); :meth:`PolicyRunner.sample` answers prompts, seeded.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ConfigError
from ..data import Prompt
from ..generation import decode_responses, generate
from ..models import ModelLoadError, load_policy, load_tokenizer, pick_device, resolve_source
from ..run_folder import POLICY_FOLDERS, RunFolder
from .config import EvalConfig
from .results import MODEL_KINDS

#: Model folders looked for under run_dir/models, in report order, with their kind.
KNOWN_MODELS = OrderedDict((name, "base" if name == "base_large" else name) for name in POLICY_FOLDERS)
PROMPTED = "base_prompted"


# ----------------------------------------------------------------------------- which policies

@dataclass
class ModelSpec:
    """One policy to evaluate. ``prompted``: ``path`` is the base model, used behind a few-shot prefix."""
    name: str
    kind: str
    path: str
    n_params: int | None = None
    prompted: bool = False


def count_params_on_disk(folder: str | Path) -> int | None:
    """Parameters stored in a model folder's safetensors files (None if there are none)."""
    files = sorted(Path(folder).glob("*.safetensors")) if Path(folder).is_dir() else []
    if not files:
        return None
    from safetensors import safe_open
    total = 0
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():  # noqa: SIM118 (safe_open is not a dict)
                total += int(np.prod(st.get_slice(key).get_shape()))
    return total


def kind_of(name: str, path: str) -> str:
    """Kind from the longest MODEL_KINDS prefix of ``name``, else from the folder's instructgpt.json."""
    low = name.lower()
    for kind in sorted(MODEL_KINDS, key=len, reverse=True):
        if low == kind or low.startswith((kind + "-", kind + "_")):
            return kind
    info = Path(path) / "instructgpt.json"
    if info.is_file():
        try:
            meta = json.loads(info.read_text())
        except json.JSONDecodeError:
            meta = {}
        stage = meta.get("stage")
        if stage == "ppo":
            return "ppo_ptx" if float(meta.get("config", {}).get("ptx_coef", 0) or 0) > 0 else "ppo"
        if stage in ("sft", "pretrain"):
            return "sft" if stage == "sft" else "base"
    raise ConfigError(f"models: {name}={path}: cannot tell its kind; start the name with one of "
                      f"{', '.join(MODEL_KINDS)} (e.g. ppo_ptx-mine={path})")


def external_base(run: RunFolder) -> str | None:
    """The ``base_model`` of a run started with --base-model (run_config.json), if loadable."""
    try:
        spec = (run.read_run_config() or {}).get("base_model") or ""
    except ValueError:  # an unreadable run_config.json
        return None
    if not spec:
        return None
    try:
        resolve_source(spec)
    except ModelLoadError:
        return None
    return spec


def discover_models(run_dir: str | Path, extra: Sequence[str] = (), few_shot: int = 3
                    ) -> dict[str, ModelSpec]:
    """name -> ModelSpec for the policies of a run folder plus ``extra`` "name=path" entries.

    ``base_prompted`` (virtual, the base model with a few-shot prefix) is added
    right after ``base`` when ``few_shot`` > 0. Without models/base, a run
    started with ``--base-model`` uses that model (run_config.json) as the base.
    The reward model is not a policy.
    """
    run = RunFolder(run_dir)
    specs: dict[str, ModelSpec] = {}
    for name, kind in KNOWN_MODELS.items():
        folder = run.model(name)
        path = str(folder) if (folder / "config.json").is_file() else None
        if path is None and name == "base":
            path = external_base(run)
        if path is not None:
            specs[name] = ModelSpec(name, kind, path, count_params_on_disk(path))
            if name == "base" and few_shot > 0:
                specs[PROMPTED] = ModelSpec(PROMPTED, "base_prompted", path,
                                            specs[name].n_params, prompted=True)
    for item in extra:
        name, _, path = (s.strip() for s in item.partition("="))
        if name in specs:
            raise ConfigError(f"models: {name!r} is already a model of the run")
        try:
            resolve_source(path)
        except ModelLoadError as e:
            raise ConfigError(f"models: {name}: {e}") from None
        specs[name] = ModelSpec(name, kind_of(name, path), path, count_params_on_disk(path))
    return specs


# ----------------------------------------------------------------------------- loading

class ModelPool:
    """Loaded policies and tokenizers by path; ``pinned`` paths stay, others are evicted beyond ``keep``."""

    def __init__(self, device: torch.device, keep: int = 2):
        self.device, self.keep = device, keep
        self.models: OrderedDict[str, torch.nn.Module] = OrderedDict()
        self.tokenizers: dict[str, Any] = {}
        self.pinned: set[str] = set()

    def tokenizer(self, path: str):
        if path not in self.tokenizers:
            self.tokenizers[path] = load_tokenizer(path)
        return self.tokenizers[path]

    def model(self, path: str) -> torch.nn.Module:
        if path in self.models:
            self.models.move_to_end(path)
            return self.models[path]
        loose = [p for p in self.models if p not in self.pinned]
        while len(loose) >= self.keep:
            del self.models[loose.pop(0)]
        model = load_policy(path, self.device)
        model.eval()
        self.models[path] = model
        return model


def context_length(model) -> int:
    cfg = model.config
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return 2048


# ----------------------------------------------------------------------------- encoding

class Response(str):
    """A decoded answer that remembers the sampled token ids (for exact RM scores and KL)."""
    ids: list[int] | None
    ended: bool

    def __new__(cls, text: str, ids: list[int] | None = None, ended: bool = True):
        obj = super().__new__(cls, text)
        obj.ids, obj.ended = ids, ended
        return obj


class Encoder:
    """Prompt and answer texts -> token ids with one tokenizer.

    ``budget``: the most prompt tokens kept (a longer prompt is cut from the
    left, keeping its end, so that the answer still fits the context).
    """

    def __init__(self, tokenizer, budget: int | None = None):
        self.tokenizer, self.budget = tokenizer, budget
        self.eos, self.pad = tokenizer.eos_token_id, tokenizer.pad_token_id

    def encode(self, text: str, special: bool = True) -> list[int]:
        """Plain tokenisation (``special``: with the tokenizer's special tokens)."""
        return self.tokenizer(text, add_special_tokens=special)["input_ids"]

    def prompt_ids(self, text: str) -> list[int]:
        """The ids a model is asked ``text`` with: the one place prompts are encoded."""
        ids = self.encode(text)
        return ids[-self.budget:] if self.budget else ids

    def response_ids(self, response: str) -> list[int]:
        """Token ids of an answer: the sampled ones when known (a :class:`Response`), else the text + EOS."""
        ids = getattr(response, "ids", None)
        if ids is not None:
            return list(ids)
        return self.encode(response, special=False) + [self.eos]


# ----------------------------------------------------------------------------- asking a policy

class PolicyRunner(Encoder):
    """A loaded policy with its tokenizer and (for ``base_prompted``) few-shot prefix."""

    def __init__(self, spec: ModelSpec, cfg: EvalConfig, pool: ModelPool,
                 demos: Sequence[tuple[str, str]] = ()):
        self.spec, self.cfg = spec, cfg
        self.model = pool.model(spec.path)
        self.ctx = context_length(self.model)
        super().__init__(pool.tokenizer(spec.path), budget=max(1, self.ctx - cfg.max_new_tokens))
        self.demos: list[list[int]] = []
        if spec.prompted:
            for prompt, response in demos:
                self.demos.append(Encoder.prompt_ids(self, prompt) + self.encode(response, special=False)
                                  + [self.eos])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prompt_ids(self, text: str, with_prefix: bool = True) -> list[int]:
        """The encoded prompt, behind the few-shot prefix (as many demonstrations as fit the
        budget) for a prompted model."""
        ids = super().prompt_ids(text)
        if with_prefix and self.spec.prompted:
            prefix: list[int] = []
            for demo in self.demos:
                if len(prefix) + len(demo) + len(ids) > self.budget:
                    break
                prefix += demo
            ids = prefix + ids
        return ids

    def sample(self, texts: Sequence[str], cfg: EvalConfig | None = None) -> list[Response]:
        """One answer per prompt text, sampled with the seed, temperature and length limit of
        ``cfg`` (default: the runner's)."""
        cfg = cfg or self.cfg
        if not texts:
            return []
        ids = [self.prompt_ids(t) for t in texts]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # less padding per batch
        g = torch.Generator(device=self.device).manual_seed(cfg.seed)
        gen = generate(self.model, [ids[i] for i in order], cfg.max_new_tokens, self.eos,
                       self.pad, cfg.temperature, generator=g, batch_size=cfg.batch_size)
        texts_out = decode_responses(self.tokenizer, gen)
        out: list[Response | None] = [None] * len(ids)
        for j, i in enumerate(order):
            out[i] = Response(texts_out[j], gen.responses[j], gen.ended[j])
        return out  # type: ignore[return-value]


def generate_responses(spec: ModelSpec, prompts: Sequence[Prompt | str], cfg: EvalConfig,
                       runner: PolicyRunner | None = None) -> list[str]:
    """One sampled answer per prompt (batched; the same seed for every model).

    Returns :class:`Response` strings, which keep the sampled token ids.
    ``runner`` reuses an already loaded model (else the model is loaded here).
    """
    runner = runner or PolicyRunner(spec, cfg, ModelPool(pick_device(cfg.device)))
    return runner.sample([p.text if isinstance(p, Prompt) else p for p in prompts], cfg)
