"""The policies an evaluation asks: which ones a run holds, loading them, encoding, sampling.

* :func:`discover_models`: name -> :class:`ModelSpec` for the policies of a run
  folder (models/base, sft, ppo, ppo_ptx, flan ..., plus the virtual
  ``base_prompted``: the base model behind a few-shot prefix of SFT
  demonstrations, the paper's "GPT-3 prompted") and any extra ``name=path``.
* :class:`ModelPool`: loaded weights, tokenizers and chat formats, shared by
  the specs that point at them.
* :class:`PolicyRunner`: a loaded policy with its chat format
  (:class:`~instructgpt.chat.ChatFormat`, ``chat_template=``), its context and
  few-shot prefix. ``PolicyRunner.prompt_ids`` is the one place where the
  evaluation turns a prompt into the ids a model is asked with;
  :meth:`PolicyRunner.sample` answers prompts, seeded, stopping at the
  format's stop tokens.
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

from .. import lora
from ..batching import ModelContext, RecordEncoder
from ..chat import ChatFormat, PromptInput, prompt_input
from ..config import ConfigError
from ..data import DataError, Prompt
from ..generation import decode_responses, generate, row_generators, storable
from ..models import SMOLLM2_ALIAS, ModelLoadError, ModelSource, load_policy, load_tokenizer, pick_device, resolve_source
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
    """Parameters stored in a model folder's safetensors files, or in a ``.gguf`` file (or ``smollm2``);
    None if there are none. A LoRA adapter folder counts its base model's (the merged model the
    evaluation loads), not its adapter weights."""
    if str(folder) == SMOLLM2_ALIAS or Path(folder).suffix == ".gguf":
        return _count_gguf_params(resolve_source(folder))
    if lora.is_adapter_folder(folder):
        base = lora.adapter_base(folder)
        return count_params_on_disk(base) if Path(base).is_dir() else None
    files = sorted(Path(folder).glob("*.safetensors")) if Path(folder).is_dir() else []
    if not files:
        return None
    from safetensors import SafetensorError, safe_open
    total = 0
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():  # noqa: SIM118 (safe_open is not a dict)
                    total += int(np.prod(st.get_slice(key).get_shape()))
        except (SafetensorError, OSError) as e:
            raise ModelLoadError(f"{f}: cannot read the weights ({e}); the file is damaged or incomplete") from None
    return total


def _count_gguf_params(src: ModelSource) -> int | None:
    """Elements of every tensor in a GGUF file (quantized tensors count their dequantized elements);
    None without the ``gguf`` package (loading the model will say it is needed)."""
    try:
        from gguf import GGUFReader
    except ImportError:
        return None
    path = Path(src.folder) / str(src.gguf_file)
    try:
        return sum(int(t.n_elements) for t in GGUFReader(str(path)).tensors)
    except (ValueError, OSError) as e:
        raise ModelLoadError(f"{path}: cannot read the GGUF tensors ({e}); the file is damaged or incomplete") from None


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
        name, path = extra_model(item, specs)
        specs[name] = ModelSpec(name, kind_of(name, path), path, count_params_on_disk(path))
    return specs


def expected_policies(run: RunFolder) -> list[str]:
    """The policy folders the run's options (run_config.json) make, in report order; [] without the file."""
    try:
        options = json.loads(run.run_config.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    made = {"sft", "ppo", "ppo_ptx"}
    if not options.get("base_model"):
        made |= {"base", "base_large"} if options.get("large_base") else {"base"}
    if options.get("flan", True):
        made.add("flan")
    return [name for name in POLICY_FOLDERS if name in made]


def extra_model(item: str, specs: dict[str, ModelSpec]) -> tuple[str, str]:
    """(name, path) of one ``name=path`` of ``models=``: a new name and a loadable model, else a ConfigError."""
    name, _, path = (s.strip() for s in item.partition("="))
    if name in specs:
        raise ConfigError(f"models: {name!r} is already a model of the run")
    try:
        resolve_source(path)
    except ModelLoadError as e:
        raise ConfigError(f"models: {name}: {e}") from None
    return name, path


# ----------------------------------------------------------------------------- loading

class ModelPool:
    """Loaded policies and tokenizers by path; ``pinned`` paths stay, others are evicted beyond ``keep``."""

    def __init__(self, device: torch.device, keep: int = 2):
        self.device, self.keep = device, keep
        self.models: OrderedDict[str, torch.nn.Module] = OrderedDict()
        self.tokenizers: dict[str, Any] = {}
        self.formats: dict[tuple[str, str], ChatFormat] = {}
        self.pinned: set[str] = set()

    def tokenizer(self, path: str):
        if path not in self.tokenizers:
            self.tokenizers[path] = load_tokenizer(path)
        return self.tokenizers[path]

    def format(self, path: str, option: str = "auto") -> ChatFormat:
        """The chat format of the tokenizer at ``path`` under ``chat_template=option``."""
        if (path, option) not in self.formats:
            self.formats[(path, option)] = ChatFormat.load(self.tokenizer(path), option)
        return self.formats[(path, option)]

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


# ----------------------------------------------------------------------------- asking a policy

#: No limit of our own on prompt tokens: the model's positions (prompt + max_new_tokens) are the limit.
NO_PROMPT_LIMIT = 1 << 62


class Response(str):
    """A decoded answer that remembers the sampled token ids (for exact RM scores and KL)."""
    ids: list[int] | None
    ended: bool

    def __new__(cls, text: str, ids: list[int] | None = None, ended: bool = True):
        obj = super().__new__(cls, text)
        obj.ids, obj.ended = ids, ended
        return obj


def request_input(prompt: Prompt | PromptInput) -> PromptInput:
    """What a prompt is rendered from: a Prompt record's chat turns (or text), or the text or turns given."""
    return prompt_input(prompt) if isinstance(prompt, Prompt) else prompt


def _seed_key(prompt: Prompt | PromptInput) -> str:
    """What a prompt's random stream is seeded by: the text or turns it asks (not its place in a list)."""
    return json.dumps(request_input(prompt), sort_keys=True, ensure_ascii=False)


def _source(prompt: Prompt | PromptInput) -> str:
    return prompt.source if isinstance(prompt, Prompt) and prompt.source else ""


class PolicyRunner:
    """A loaded policy with its chat format, its context and (for ``base_prompted``) a few-shot prefix.

    Two kinds of input:

    * requests (test prompts, truthfulness questions): through the policy's
      :class:`~instructgpt.chat.ChatFormat` (``cfg.chat_template``), exactly as
      the training stages render prompts, under the model's context checked by
      :class:`~instructgpt.batching.RecordEncoder` (an over-long prompt is an
      error naming its record; nothing is cut);
    * continuations (toxicity starts, cloze and bias items): text the model
      continues. Plain-text models see the raw text (no separator, no EOS: the
      pretraining distribution); a model with a chat template is asked through
      it, the text as the user's message and each candidate as the reply
      (``fmt.encode``, the same way for every candidate).
    """

    def __init__(self, spec: ModelSpec, cfg: EvalConfig, pool: ModelPool,
                 demos: Sequence[tuple[str, str]] = ()):
        self.spec, self.cfg = spec, cfg
        self.model = pool.model(spec.path)
        self.tokenizer = pool.tokenizer(spec.path)
        self.fmt: ChatFormat = pool.format(spec.path, cfg.chat_template)
        self.context = ModelContext.of(self.model.config, self.tokenizer)
        self.encoder = RecordEncoder(self.fmt, self.context, NO_PROMPT_LIMIT, max_new_tokens=cfg.max_new_tokens)
        self.pad = self.tokenizer.pad_token_id
        positions = self.context.positions
        self.ctx = positions or 2048
        self.budget = max(1, positions - cfg.max_new_tokens) if positions else None  # prompt + prefix tokens
        self.demos: list[list[int]] = []
        #: A plain-text base is prompted the way it read its corpus: demonstrations on lines of ONE
        #: document, not split by EOS (which it learned as the end of a document, so nothing before one
        #: shapes what follows); it answers on a line of its own, so its answer ends at a newline.
        self.line_answers = spec.prompted and not self.fmt.uses_template
        self.stop_ids = list(self.fmt.stop_ids)
        if spec.prompted:  # each demonstration as the format writes a prompt and its reply
            newline = self.fmt.continuation_ids("\n")
            for i, (prompt, reply) in enumerate(demos):
                p_ids, r_ids = self.fmt.encode(prompt, reply, f"few-shot demonstration {i + 1}")
                if self.line_answers and r_ids and r_ids[-1] == self.fmt.end_id:
                    r_ids = r_ids[:-1] + newline
                if self.line_answers:  # one document: only its start has the BOS the tokenizer puts first
                    p_ids = self._without_bos(p_ids)
                self.demos.append(p_ids + r_ids)
            if self.line_answers:
                vocab = len(self.tokenizer)
                self.stop_ids += [i for i in range(vocab) if "\n" in self.tokenizer.decode([i])
                                  and i not in self.stop_ids]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, text: str, special: bool = True) -> list[int]:
        """Plain tokenisation of a text the model reads from its start, special-token strings as text
        (``special``: with the BOS the tokenizer puts first, never an EOS it would append after the text:
        :meth:`~instructgpt.chat.ChatFormat.text_ids`, as a plain-text prompt is tokenised)."""
        if special:
            return self.fmt.text_ids(text)
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    # ---- requests

    def prompt_ids(self, prompt: Prompt | PromptInput, with_prefix: bool = True,
                   max_new_tokens: int | None = None) -> list[int]:
        """The ids the policy is asked ``prompt`` with (the one place requests are encoded), behind
        the few-shot prefix (as many demonstrations as fit the context) for a prompted model.
        The prompt and ``max_new_tokens`` (default: the runner's) must fit the model's positions."""
        encoder = self.encoder
        if max_new_tokens is not None and max_new_tokens != encoder.max_new_tokens:
            encoder = RecordEncoder(self.fmt, self.context, NO_PROMPT_LIMIT, max_new_tokens=max_new_tokens)
        ids = encoder.prompt(request_input(prompt), _source(prompt))
        return self._with_prefix(ids) if with_prefix else ids

    def response_ids(self, prompt: Prompt | PromptInput, response: str) -> list[int]:
        """Token ids of an answer: the sampled ones when known (a :class:`Response`), else the
        answer as the format writes it after ``prompt`` (ending with the end token; "" is that token alone)."""
        ids = getattr(response, "ids", None)
        if ids is not None:
            return list(ids)
        return self.fmt.encode(request_input(prompt), str(response), _source(prompt))[1]

    def _with_prefix(self, ids: list[int]) -> list[int]:
        if not self.spec.prompted:
            return ids
        prefix: list[int] = []
        for demo in self.demos:
            if self.budget is not None and len(prefix) + len(demo) + len(ids) > self.budget:
                break
            prefix += demo
        if self.line_answers and prefix:  # the document's BOS (if any) before the demonstrations, not mid-way
            rest = self._without_bos(ids)
            return ids[:len(ids) - len(rest)] + prefix + rest
        return prefix + ids

    def _without_bos(self, ids: list[int]) -> list[int]:
        """``ids`` without the BOS a plain-text prompt starts with (:meth:`ChatFormat.text_ids`)."""
        bos = self.tokenizer.bos_token_id
        return ids[1:] if bos is not None and ids[:1] == [bos] else ids

    # ---- continuations

    def continuation_prompt_ids(self, text: str, with_prefix: bool = True,
                                max_new_tokens: int | None = None) -> list[int]:
        """Ids of a text the policy is to continue (a chat model: as the user's message)."""
        if self.fmt.uses_template:
            return self.prompt_ids(text, with_prefix, max_new_tokens)
        ids = self.encode(text)
        n, new, positions = len(ids), max_new_tokens or self.cfg.max_new_tokens, self.context.positions
        if positions and n + new > positions:
            raise DataError(f"<probe {text[:40]!r}>: prompt: {n} tokens + max_new_tokens={new} = {n + new}, "
                            f"over the model's {self.context.describe()} (lower max_new_tokens)")
        return self._with_prefix(ids) if with_prefix else ids

    def continuation(self, text: str, candidate: str) -> tuple[list[int], list[int]]:
        """(context ids, candidate ids) for scoring ``candidate`` as the continuation of ``text``
        (no few-shot prefix). Plain text: the raw text and the candidate's own tokens; with a chat
        template: ``fmt.encode(text, candidate)``, the candidate as the reply (leading spaces dropped,
        its end-of-turn token included)."""
        if self.fmt.uses_template:
            return self.fmt.encode(text, candidate.lstrip(), "<probe>")
        return self.encode(text), self.fmt.continuation_ids(candidate)

    # ---- sampling

    def sample(self, prompts: Sequence[Prompt | PromptInput], cfg: EvalConfig | None = None,
               continuation: bool = False) -> list[Response]:
        """One answer per prompt, sampled with the seed, temperature and length limit of ``cfg``
        (default: the runner's); generation stops at the format's stop tokens (end of turn, EOS).
        ``continuation``: the prompts are texts to continue (:meth:`continuation_prompt_ids`)."""
        cfg = cfg or self.cfg
        if not prompts:
            return []
        encode = self.continuation_prompt_ids if continuation else self.prompt_ids
        ids = [encode(p, max_new_tokens=cfg.max_new_tokens) for p in prompts]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # less padding per batch
        # Each prompt its own random stream, from the seed and what it asks: an answer does not depend
        # on the batch size, the order or the other prompts, and every model gets the same stream for it.
        gens = row_generators([_seed_key(prompts[i]) for i in order], cfg.seed, self.device)
        stops = self.stop_ids if self.line_answers and not continuation else list(self.fmt.stop_ids)
        gen = generate(self.model, [ids[i] for i in order], cfg.max_new_tokens, stops,
                       self.pad, cfg.temperature, generator=gens, batch_size=cfg.batch_size)
        if stops is self.stop_ids:  # the answer is its first line (a stop token may carry text before "\n")
            texts_out = [storable(self.tokenizer.decode(r, skip_special_tokens=True)).split("\n")[0].strip()
                         for r in gen.responses]
        else:
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
    return runner.sample(list(prompts), cfg)
