"""``instructgpt eval``: run the trained policies and measure them the way the paper does.

Input is a run folder of ``instructgpt run``::

    run_dir/models/{base,base_large,sft,rm,ppo,ppo_ptx,flan,t0}/   (those present)
    run_dir/world/config.json          WorldConfig of the simulated world
    run_dir/data/prompts_test.jsonl    curated test prompts

Every policy (plus the virtual ``base_prompted``: the base model behind a
few-shot prefix of SFT demonstrations, the paper's "GPT-3 prompted") answers
the test prompts and the probes once; everything else is computed from those
samples:

* judgements (:func:`judge`): per prompt, a held-out and a training labeler
  compare each model's answer with the baseline's (ties count half) -> win
  rates with 95% intervals (bootstrap over prompts), overall and per use case;
  a held-out labeler's Likert score and metadata flags per answer
  (hallucination on closed-domain prompts only);
* probes: truthfulness, toxicity under three instructions, bias (entropy of
  the choice between two continuations), cloze accuracy and held-out
  pretraining perplexity (the alignment tax);
* reward-model score and KL to the SFT policy of each policy's answers;
* inter-labeler agreement, PPO training curves (reward vs KL), sample outputs;
* optionally win rates from real labels exported by the labeling app.

The result is an :class:`~instructgpt.evaluation.EvalResults` written to
``out_dir/results.json``; the report goes to ``run_dir/report.{md,html}``.
Also in ``out_dir``: ``label_tasks.jsonl`` (every model's answer per test
prompt as a ranking task for the labeling app, with ``models`` naming each
response), ``timings.json`` and, with ``labels``, ``human_labels.json``.
Everything is deterministic for a given ``seed``.

Where the numbers go in :class:`~instructgpt.evaluation.ModelResult`:
``win_rate["training"|"heldout"]`` (and ``["human"]`` from real labels),
``use_case_win_rates`` (training labelers), ``likert``, ``metadata`` (+ raw
per-prompt flags), ``benchmarks``: ``truthfulqa_truthful``,
``truthfulqa_truthful_informative``, ``truthfulqa_falsehood``,
``toxicity_{plain,respectful,biased}``, ``bias_entropy`` (bits),
``reward_model_score``, ``kl_to_sft`` (nats per answer); ``pretraining``:
``perplexity``, ``cloze_accuracy`` (+ raw per item).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ConfigError, opt
from .data import Prompt, Ranking, load_prompts, load_rankings, write_jsonl
from .evaluation import (
    Comparison,
    EvalResults,
    ModelResult,
    SampleOutput,
    Samples,
    check_claims,
    write_report,
)
from .evaluation.claims import MODEL_KINDS
from .evaluation.stats import (
    Estimate,
    bootstrap_interval,
    likert_mean,
    rate,
    win_rate,
    win_rates_by,
)
from .generation import decode_responses, generate
from .losses import token_logprobs
from .models import (
    ModelLoadError,
    RewardModel,
    load_policy,
    load_tokenizer,
    pick_device,
    position_ids_from_mask,
    resolve_source,
)
from .pretrain import pack_blocks
from .records import read_metrics

#: Model folders looked for under run_dir/models, in report order, with their kind.
KNOWN_MODELS = OrderedDict([("base", "base"), ("base_large", "base"), ("sft", "sft"),
                            ("ppo", "ppo"), ("ppo_ptx", "ppo_ptx"), ("flan", "flan"),
                            ("t0", "t0")])
PROMPTED = "base_prompted"
#: Metadata flags measured on the test prompts (hallucination: closed domain only).
METADATA_FLAGS = ("fails_to_follow", "violates_constraint", "hallucination",
                  "inappropriate_for_customer_assistant")
#: Toxicity probe instruction -> benchmark key suffix.
TOXICITY_KEYS = {"none": "plain", "respectful": "respectful", "biased": "biased"}
#: Token budget (batch x length x vocabulary) of one scoring forward pass.
LOGIT_BUDGET = 1 << 25
#: Metric keys of PPO metrics.jsonl kept as training curves.
CURVE_KEYS = ("ppo/score", "ppo/kl", "ppo/response_length", "ppo/kl_coef", "ppo/ptx_loss",
              "ppo/entropy", "ppo/eos_fraction")


# ----------------------------------------------------------------------------- config

@dataclass
class EvalConfig:
    """Evaluation of a run (``instructgpt eval``)."""
    run_dir: str = opt("", "Run folder of 'instructgpt run' (models/, world/config.json, data/prompts_test.jsonl).")
    models: list[str] = opt([], "Extra policies as name=path (kind from the name's prefix, e.g. ppo_ptx-big=..., "  # noqa: RUF009 (opt makes a default_factory)
                                "or from the folder's instructgpt.json).")
    baseline: str = opt("sft", "Model all win rates are measured against (the paper: SFT).")
    n_prompts: int = opt(120, "Test prompts evaluated (a seeded sample of data/prompts_test.jsonl; 0 = all).")
    temperature: float = opt(0.7, "Sampling temperature of every model (0 = greedy).")
    max_new_tokens: int = opt(48, "Response length limit.")
    few_shot: int = opt(3, "SFT demonstrations in the few-shot prefix of 'base_prompted' (0 = no prompted base).")
    batch_size: int = opt(64, "Sequences per generation batch.")
    toxicity_tokens: int = opt(24, "Length limit of toxicity-probe continuations (RealToxicityPrompts-style: short).")
    heldout_tokens: int = opt(12288, "Tokens of the held-out pretraining corpus scored for perplexity (0 = skip).")
    seed: int = opt(0, "Seed of prompt choice, sampling and simulated judgements (same for every model).")
    device: str = opt("auto", "auto, cpu, cuda ...")
    out_dir: str = opt("", "Where results.json goes (default run_dir/eval).")
    labels: str = opt("", "Optional ranking JSONL of real labels (the labeling app's eval/rankings.jsonl); "
                          "win rates are computed from it too.")

    def validate(self) -> None:
        if not self.run_dir:
            raise ConfigError("run_dir: required (a run folder of 'instructgpt run')")
        if self.n_prompts < 0:
            raise ConfigError(f"n_prompts: must be >= 0, got {self.n_prompts}")
        if self.temperature < 0:
            raise ConfigError(f"temperature: must be >= 0, got {self.temperature}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens: must be >= 1, got {self.max_new_tokens}")
        if self.few_shot < 0:
            raise ConfigError(f"few_shot: must be >= 0, got {self.few_shot}")
        if self.toxicity_tokens < 1:
            raise ConfigError(f"toxicity_tokens: must be >= 1, got {self.toxicity_tokens}")
        if self.heldout_tokens < 0:
            raise ConfigError(f"heldout_tokens: must be >= 0, got {self.heldout_tokens}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: must be >= 1, got {self.batch_size}")
        for item in self.models:
            name, _, path = item.partition("=")
            if not name.strip() or not path.strip():
                raise ConfigError(f"models: {item!r}: expected name=path")

    @property
    def out_path(self) -> Path:
        return Path(self.out_dir) if self.out_dir else Path(self.run_dir) / "eval"


# ----------------------------------------------------------------------------- models

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


def _kind_of(name: str, path: str) -> str:
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


def _external_base(run_dir: str | Path) -> str | None:
    """The ``base_model`` of a run started with --base-model (run_config.json), if loadable."""
    path = Path(run_dir) / "run_config.json"
    if not path.is_file():
        return None
    try:
        spec = json.loads(path.read_text()).get("base_model") or ""
    except json.JSONDecodeError:
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
    models_dir = Path(run_dir) / "models"
    specs: dict[str, ModelSpec] = {}
    for name, kind in KNOWN_MODELS.items():
        folder = models_dir / name
        path = str(folder) if (folder / "config.json").is_file() else None
        if path is None and name == "base":
            path = _external_base(run_dir)
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
        specs[name] = ModelSpec(name, _kind_of(name, path), path, count_params_on_disk(path))
    return specs


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


class Response(str):
    """A decoded answer that remembers the sampled token ids (for exact RM scores and KL)."""
    ids: list[int] | None
    ended: bool

    def __new__(cls, text: str, ids: list[int] | None = None, ended: bool = True):
        obj = super().__new__(cls, text)
        obj.ids, obj.ended = ids, ended
        return obj


class PolicyRunner:
    """A loaded policy with its tokenizer and (for ``base_prompted``) few-shot prefix."""

    def __init__(self, spec: ModelSpec, cfg: EvalConfig, pool: ModelPool,
                 demos: Sequence[tuple[str, str]] = ()):
        self.spec, self.cfg = spec, cfg
        self.model = pool.model(spec.path)
        self.tokenizer = pool.tokenizer(spec.path)
        self.ctx = context_length(self.model)
        self.eos, self.pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        self.demos: list[list[int]] = []
        if spec.prompted:
            for prompt, response in demos:
                ids = self.encode(prompt) + self.encode(response, special=False) + [self.eos]
                self.demos.append(ids)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, text: str, special: bool = True) -> list[int]:
        return self.tokenizer(text, add_special_tokens=special)["input_ids"]

    def prompt_ids(self, text: str, with_prefix: bool = True) -> list[int]:
        """Prompt ids that leave room for the answer (cut from the left if need be), with the
        few-shot prefix (as many demonstrations as fit) for a prompted model."""
        budget = max(1, self.ctx - self.cfg.max_new_tokens)
        ids = self.encode(text)[-budget:]
        if with_prefix and self.spec.prompted:
            prefix: list[int] = []
            for demo in self.demos:
                if len(prefix) + len(demo) + len(ids) > budget:
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

    def response_ids(self, response: str) -> list[int]:
        """Token ids of an answer: the sampled ones when known, else the text + EOS."""
        ids = getattr(response, "ids", None)
        if ids is not None:
            return list(ids)
        return self.encode(response, special=False) + [self.eos]


def generate_responses(spec: ModelSpec, prompts: Sequence[Prompt | str], cfg: EvalConfig,
                       runner: PolicyRunner | None = None) -> list[str]:
    """One sampled answer per prompt (batched; the same seed for every model).

    Returns :class:`Response` strings, which keep the sampled token ids.
    ``runner`` reuses an already loaded model (else the model is loaded here).
    """
    runner = runner or PolicyRunner(spec, cfg, ModelPool(pick_device(cfg.device)))
    return runner.sample([p.text if isinstance(p, Prompt) else p for p in prompts], cfg)


# ----------------------------------------------------------------------------- scoring

def _batches(lengths: Sequence[int], vocab: int, max_rows: int):
    """Index lists in order of length, each within LOGIT_BUDGET cells and max_rows rows."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batch: list[int] = []
    for i in order:
        if batch and ((len(batch) + 1) * lengths[i] * vocab > LOGIT_BUDGET or len(batch) >= max_rows):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def _accepts_logits_to_keep(model) -> bool:
    import inspect
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@torch.no_grad()
def continuation_logprobs(model, contexts: Sequence[list[int]], continuations: Sequence[list[int]],
                          pad_id: int, temperature: float = 1.0, max_rows: int = 64
                          ) -> list[np.ndarray]:
    """log p(continuation tokens | context), one array per pair (shape (len(continuation),)).

    Contexts must be non-empty. Logits are divided by ``temperature`` (as when
    sampling). Rows are left-padded so that every continuation ends in the last
    column; only the logits over the longest continuation of a batch are
    computed (``logits_to_keep``) when the model supports it.
    """
    from .batching import pad
    if len(contexts) != len(continuations):
        raise ValueError("contexts and continuations differ in length")
    if any(not c for c in contexts):
        raise ValueError("every context needs at least one token")
    seqs = [list(c) + list(r) for c, r in zip(contexts, continuations)]
    emb = model.get_output_embeddings()
    vocab = int(emb.weight.shape[0]) if emb is not None else int(model.config.vocab_size)
    keep_ok = _accepts_logits_to_keep(model)
    device = next(model.parameters()).device
    out: list[np.ndarray | None] = [None] * len(seqs)
    for idx in _batches([len(s) for s in seqs], vocab, max_rows):
        ids, mask = pad([seqs[i] for i in idx], pad_id, "left")
        ids, mask = ids.to(device), mask.to(device)
        n_keep = max(len(continuations[i]) for i in idx) + 1  # logits predicting the continuations
        if n_keep <= 1:
            for i in idx:
                out[i] = np.zeros(0, dtype=np.float32)
            continue
        kwargs = {"logits_to_keep": n_keep} if keep_ok else {}
        logits = model(input_ids=ids, attention_mask=mask,
                       position_ids=position_ids_from_mask(mask), **kwargs).logits
        logits = logits[:, -n_keep:-1]                                   # (B, n_keep - 1, V)
        lp = token_logprobs(logits, ids[:, -(n_keep - 1):], temperature).float().cpu().numpy()
        for row, i in enumerate(idx):
            c = len(continuations[i])
            out[i] = lp[row, lp.shape[1] - c:] if c else np.zeros(0, dtype=np.float32)
    return out  # type: ignore[return-value]


def _mean_estimate(values: Sequence[float], groups: Sequence[Any] | None = None, seed: int = 0,
                   method: str = "bootstrap") -> Estimate:
    x = np.asarray(values, dtype=float)
    low, high = bootstrap_interval(x, groups, seed=seed)
    return Estimate(float(x.mean()), low, high, int(x.size), method)


def truth_scores(items, answers: Sequence[str]) -> dict[str, Estimate]:
    """TruthfulQA-style shares (Wilson): truthful (no falsehood), truthful and informative
    (the true value only), and the share repeating the falsehood."""
    from .world import score_truth
    verdicts = [score_truth(item, a) for item, a in zip(items, answers)]
    if not verdicts:
        return {}
    return {"truthfulqa_truthful": rate([v != "falsehood" for v in verdicts]),
            "truthfulqa_truthful_informative": rate([v == "correct" for v in verdicts]),
            "truthfulqa_falsehood": rate([v == "falsehood" for v in verdicts])}


def toxicity_scores(items, completions: Sequence[str], seed: int = 0) -> dict[str, Estimate]:
    """Mean toxicity score of the completions, per instruction (bootstrap over items)."""
    from .world import toxicity
    out = {}
    for instr, key in TOXICITY_KEYS.items():
        vals = [toxicity(c) for it, c in zip(items, completions) if it.instruction == instr]
        if vals:
            out[f"toxicity_{key}"] = _mean_estimate(vals, seed=seed)
    return out


def bias_entropies(runner: PolicyRunner, items) -> list[float]:
    """Entropy (bits) of the model's choice between each item's two continuations."""
    from .world import bias_entropy
    ctxs, conts = [], []
    for it in items:
        c = runner.prompt_ids(it.prompt, with_prefix=False)
        for alt in it.alternatives:
            ctxs.append(c)
            conts.append(runner.encode(alt, special=False))
    lps = continuation_logprobs(runner.model, ctxs, conts, runner.pad, max_rows=runner.cfg.batch_size * 2)
    return [bias_entropy(float(lps[2 * i].sum()), float(lps[2 * i + 1].sum())) for i in range(len(items))]


def cloze_correct(runner: PolicyRunner, items) -> list[float]:
    """1.0 where the candidate with the highest total log-prob is the right one."""
    ctxs, conts, owner = [], [], []
    for k, it in enumerate(items):
        c = runner.prompt_ids(it.prompt, with_prefix=False)
        for cand in it.candidates:
            ctxs.append(c)
            conts.append(runner.encode(cand, special=False))
            owner.append(k)
    lps = continuation_logprobs(runner.model, ctxs, conts, runner.pad, max_rows=runner.cfg.batch_size * 2)
    best: dict[int, tuple[float, int]] = {}
    counter: dict[int, int] = {}
    for k, lp in zip(owner, lps):
        j = counter.get(k, 0)
        counter[k] = j + 1
        total = float(lp.sum())
        if k not in best or total > best[k][0]:
            best[k] = (total, j)
    return [float(best[k][1] == it.answer) for k, it in enumerate(items)]


@torch.no_grad()
def block_nlls(runner: PolicyRunner, docs: Sequence[str], max_tokens: int = 12288,
               seq_len: int = 128) -> np.ndarray:
    """Mean next-token loss of each block of the packed held-out corpus; shape (n_blocks,).

    Blocks of ``seq_len`` tokens (at most the context), the first
    ``max_tokens // seq_len`` of them (at least one).
    """
    seq_len = min(runner.ctx, seq_len)
    blocks = pack_blocks(runner.tokenizer, list(docs), seq_len)[:max(1, max_tokens // seq_len)]
    rows = [b.tolist() for b in blocks]
    lps = continuation_logprobs(runner.model, [r[:1] for r in rows], [r[1:] for r in rows],
                                runner.pad, max_rows=runner.cfg.batch_size)
    return np.array([-float(lp.mean()) for lp in lps])


def perplexity_estimate(nlls: np.ndarray, seed: int = 0) -> Estimate:
    """exp(mean block loss) with a bootstrap-over-blocks interval."""
    low, high = bootstrap_interval(nlls, seed=seed)
    return Estimate(float(math.exp(nlls.mean())), math.exp(low), math.exp(high), int(nlls.size),
                    "bootstrap-blocks")


@torch.no_grad()
def reward_scores(rm: RewardModel, prompt_ids: Sequence[list[int]], response_ids: Sequence[list[int]],
                  pad_id: int, batch_size: int = 64) -> list[float]:
    """Reward-model score of each (prompt, response) token sequence."""
    from .batching import pad
    device = next(rm.parameters()).device
    seqs = [list(p) + list(r) for p, r in zip(prompt_ids, response_ids)]
    out = [0.0] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        ids, mask = pad([seqs[i] for i in idx], pad_id, "right")
        vals = rm(ids.to(device), mask.to(device)).float().cpu().tolist()
        for i, v in zip(idx, vals):
            out[i] = v
    return out


def _same_vocab(a, b) -> bool:
    return a is b or (len(a) == len(b) and a.get_vocab() == b.get_vocab())


# ----------------------------------------------------------------------------- judging

@dataclass
class Judgement:
    """What the simulated labelers said about one model's answers to the test prompts."""
    comparisons: list[Comparison] = field(default_factory=list)
    win_rate: dict[str, Estimate] = field(default_factory=dict)
    use_case_win_rates: dict[str, Estimate] = field(default_factory=dict)
    likert: Estimate | None = None
    metadata: dict[str, Estimate] = field(default_factory=dict)
    raw: dict[str, Samples] = field(default_factory=dict)


def _norm(text: str) -> str:
    return " ".join(str(text).split())


def _rng(*parts: Any) -> random.Random:
    return random.Random(":".join(str(p) for p in parts))


def checkable(prompt: Prompt) -> bool:
    """True if the world's checker (and so the simulated labelers) can judge answers to ``prompt``."""
    from .world.taskbase import TASKS
    return isinstance(prompt.meta, dict) and prompt.meta.get("task") in TASKS


def closed_domain_use_cases() -> tuple[str, ...]:
    from .world.tasks import CLOSED_DOMAIN
    return tuple(CLOSED_DOMAIN)


def compare_outcomes(prompts: Sequence[Prompt], responses: Sequence[str], baseline: Sequence[str],
                     panel, world, group: str, name: str, seed: int = 0) -> list[Comparison]:
    """One Comparison per prompt: ``responses[i]`` against ``baseline[i]`` judged by a labeler
    of ``group`` ("training" / "heldout"). Identical answers are a tie without asking."""
    out = []
    for p, a, b in zip(prompts, responses, baseline):
        if _norm(a) == _norm(b):
            outcome = 0.5
        else:
            outcome = float(panel.compare(p, a, b, _rng("compare", seed, group, name, p.id),
                                          heldout=group == "heldout", world=world))
        out.append(Comparison(p.id, outcome, group, p.use_case))
    return out


def judge(prompts: Sequence[Prompt], responses_by_model: dict[str, Sequence[str]], baseline: str,
          panel, world, seed: int = 0) -> dict[str, Judgement]:
    """Win rates, Likert means and metadata rates of every model from simulated labelers.

    For each model other than ``baseline`` and each prompt, a held-out and a
    training labeler compare its answer with the baseline's (1 win, 0 loss,
    0.5 tie) -> win rates with 95% intervals bootstrapped over prompts,
    overall per labeler group and per use case (training labelers). For every
    model (baseline included) the held-out labeler assigned to each prompt
    gives a 1-7 Likert score and metadata flags; "hallucination" is counted on
    closed-domain prompts only.
    """
    if baseline not in responses_by_model:
        raise ValueError(f"baseline {baseline!r} has no responses")
    closed = closed_domain_use_cases()
    ids = [p.id for p in prompts]
    out: dict[str, Judgement] = {}
    for name, responses in responses_by_model.items():
        if len(responses) != len(prompts):
            raise ValueError(f"{name}: {len(responses)} responses for {len(prompts)} prompts")
        j = Judgement()
        if name != baseline:
            for group in ("training", "heldout"):
                comps = compare_outcomes(prompts, responses, responses_by_model[baseline], panel, world,
                                         group, name, seed)
                j.comparisons += comps
                j.win_rate[group] = win_rate([c.outcome for c in comps], ids, seed=seed)
            train = [c for c in j.comparisons if c.labelers == "training"]
            j.use_case_win_rates = win_rates_by([c.outcome for c in train], [c.use_case for c in train],
                                                [c.prompt_id for c in train], seed=seed)
        likerts, flags = [], []
        for p, r in zip(prompts, responses):
            lab = panel.assign(p.id, heldout=True)
            rng = _rng("label", seed, name, p.id)
            verdict = lab.verdict(p, r, world)
            likerts.append(lab.likert(verdict, rng))
            flags.append(set(lab.flags(verdict, r, rng)))
        if prompts:
            j.likert = likert_mean(likerts, ids, seed=seed)
        for flag in METADATA_FLAGS:
            keep = [i for i, p in enumerate(prompts) if flag != "hallucination" or p.use_case in closed]
            if not keep:
                continue
            values = [float(flag in flags[i]) for i in keep]
            groups = [ids[i] for i in keep]
            j.metadata[flag] = rate(values, groups, seed=seed)
            j.raw[flag] = Samples(values, groups)
        out[name] = j
    return out


def labeler_agreement(panel, prompts: Sequence[Prompt], responses_by_model: dict[str, Sequence[str]],
                      seed: int = 0, max_prompts: int = 60) -> dict[str, Estimate]:
    """Pairwise agreement of simulated labelers ranking the models' answers to each prompt.

    Each prompt's answers (one per model, at most 9) are ranked by 3 training
    and 3 held-out labelers (world.labelers.agreement); the interval
    bootstraps over prompts. Keys: "training-training", "training-heldout",
    "heldout-heldout".
    """
    from .world.labelers import agreement
    names = list(responses_by_model)[:9]
    keys = {"train_train": "training-training", "train_heldout": "training-heldout",
            "heldout_heldout": "heldout-heldout"}
    values: dict[str, list[float]] = {k: [] for k in keys}
    groups: dict[str, list[str]] = {k: [] for k in keys}
    for i, p in enumerate(prompts[:max_prompts]):
        resp = [str(responses_by_model[n][i]) or "(empty)" for n in names]
        if len(resp) < 2:
            continue
        res = agreement(panel, [p], [resp], seed=f"{seed}:{p.id}")
        for k in keys:
            n = int(res[f"n_{k}"])
            if n:
                agree = round(res[k] * n)
                values[k] += [1.0] * agree + [0.0] * (n - agree)
                groups[k] += [p.id] * n
    out = {}
    for k, label in keys.items():
        if values[k]:
            low, high = bootstrap_interval(values[k], groups[k], seed=seed)
            out[label] = Estimate(float(np.mean(values[k])), low, high, len(values[k]),
                                  "bootstrap-prompts")
    return out


# ----------------------------------------------------------------------------- real labels

def label_comparisons(rankings: Sequence[Ranking], prompts: Sequence[Prompt],
                      responses_by_model: dict[str, Sequence[str]], baseline: str,
                      group: str = "human") -> dict[str, list[Comparison]]:
    """Comparisons against the baseline read from real rankings.

    A ranking's responses are matched to models by ``meta["models"]`` when it
    has one per response, else by their text (whitespace-normalised) against
    each model's answer to that prompt. Every ranking that holds both a model's
    and the baseline's answer gives one comparison (same group = tie).
    """
    index = {p.id: i for i, p in enumerate(prompts)}
    by_id = {p.id: p for p in prompts}
    out: dict[str, list[Comparison]] = {n: [] for n in responses_by_model if n != baseline}
    for r in rankings:
        if r.prompt_id not in index:
            continue
        i = index[r.prompt_id]
        owners: list[set[str]] = []
        tagged = r.meta.get("models") if isinstance(r.meta, dict) else None
        if isinstance(tagged, list) and len(tagged) == r.k:
            owners = [{str(t)} for t in tagged]
        else:
            text_to_models: dict[str, set[str]] = {}
            for name, resp in responses_by_model.items():
                text_to_models.setdefault(_norm(resp[i]), set()).add(name)
            owners = [text_to_models.get(_norm(t), set()) for t in r.responses]
        pos = {j: g for g, grp in enumerate(r.ranking) for j in grp}
        base_idx = [j for j, o in enumerate(owners) if baseline in o]
        if not base_idx:
            continue
        b = base_idx[0]
        for name, comps in out.items():
            mine = [j for j, o in enumerate(owners) if name in o]
            if not mine:
                continue
            a = mine[0]
            outcome = 0.5 if pos[a] == pos[b] else float(pos[a] < pos[b])
            comps.append(Comparison(r.prompt_id, outcome, group, by_id[r.prompt_id].use_case,
                                        labeler_id=r.labeler_id))
    return out


def write_label_tasks(path: Path, prompts: Sequence[Prompt], responses_by_model: dict[str, Sequence[str]],
                      baseline: str, seed: int = 0) -> int:
    """Ranking tasks (the labeling app's import format) with every model's answer, shuffled,
    and ``models`` naming the model of each response (baseline first in choice, at most 9)."""
    names = [baseline] + [n for n in responses_by_model if n != baseline][:8]
    rows = []
    for i, p in enumerate(prompts):
        pairs = [(n, str(responses_by_model[n][i]).strip() or "(empty response)") for n in names]
        _rng("tasks", seed, p.id).shuffle(pairs)
        rows.append({"prompt": p.text, "prompt_id": p.id, "use_case": p.use_case,
                     "responses": [t for _, t in pairs], "models": [n for n, _ in pairs]})
    return write_jsonl(path, rows)


# ----------------------------------------------------------------------------- run folder

def load_world(run_dir: str | Path):
    """The run's simulated world, rebuilt from run_dir/world/config.json (deterministic per seed)."""
    from .world import WorldConfig, build_datasets
    path = Path(run_dir) / "world" / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: world config not found (is {run_dir} a run folder?)")
    from dataclasses import fields
    known = {f.name for f in fields(WorldConfig)}
    saved = json.loads(path.read_text())
    return build_datasets(config=WorldConfig(**{k: v for k, v in saved.items() if k in known}))


def load_test_prompts(run_dir: str | Path, n: int, seed: int = 0) -> list[Prompt]:
    """A seeded sample of ``n`` curated test prompts (all if n is 0 or more than there are),
    in file order."""
    path = Path(run_dir) / "data" / "prompts_test.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: test prompts not found")
    prompts = [p for p in load_prompts(path) if p.split in (None, "test")]
    if not prompts:
        raise FileNotFoundError(f"{path}: no test prompts")
    if n and n < len(prompts):
        keep = set(random.Random(f"eval-prompts:{seed}").sample(range(len(prompts)), n))
        prompts = [p for i, p in enumerate(prompts) if i in keep]
    return prompts


def few_shot_demos(world_data, k: int, seed: int = 0, max_chars: int = 300) -> list[tuple[str, str]]:
    """``k`` (prompt, demonstration) pairs of the SFT demonstrations, short ones, varied use cases."""
    if k <= 0:
        return []
    use_case = {p.id: p.use_case for p in world_data.prompts.get("sft", [])}
    demos = [d for d in world_data.sft_demos if len(d.prompt) + len(d.response) <= max_chars] \
        or list(world_data.sft_demos)
    rng = random.Random(f"few-shot:{seed}")
    rng.shuffle(demos)
    chosen, seen = [], set()
    for d in demos:  # one per use case first
        uc = use_case.get(d.prompt_id)
        if uc not in seen:
            chosen.append(d)
            seen.add(uc)
        if len(chosen) == k:
            break
    chosen += [d for d in demos if d not in chosen][:k - len(chosen)]
    return [(d.prompt, d.response) for d in chosen]


def training_curves(run_dir: str | Path, folders: dict[str, Path] | None = None) -> dict[str, list[dict[str, float]]]:
    """Per-iteration PPO metrics (reward, KL ...) of every run_dir/models/ppo*/metrics.jsonl,
    or of the given ``{name: folder}``."""
    out = {}
    if folders is None:
        folders = {f.name: f for f in sorted((Path(run_dir) / "models").glob("ppo*"))}
    for name, folder in folders.items():
        rows = []
        for r in read_metrics(folder / "metrics.jsonl"):
            row = {k: float(v) for k, v in r.items()
                   if (k in CURVE_KEYS or k == "step") and isinstance(v, (int, float))
                   and math.isfinite(float(v))}
            if len(row) > 1:
                rows.append(row)
        if rows:
            out[name] = rows
    return out


def pick_samples(prompts: Sequence[Prompt], responses_by_model: dict[str, Sequence[str]],
                 per_use_case: int = 2) -> list[SampleOutput]:
    """The first ``per_use_case`` prompts of each use case with every model's answer."""
    count: dict[str, int] = {}
    out = []
    for i, p in enumerate(prompts):
        if count.get(p.use_case, 0) >= per_use_case:
            continue
        count[p.use_case] = count.get(p.use_case, 0) + 1
        out.append(SampleOutput(p.id, p.text, p.use_case,
                                {n: str(r[i]) for n, r in responses_by_model.items()}))
    return out


# ----------------------------------------------------------------------------- per-model run

@dataclass
class PolicyOutputs:
    """Everything one policy produced: answers and per-item probe values."""
    responses: list[str]
    truth: list[str]
    toxicity: list[str]
    bias: list[float] | None = None
    cloze: list[float] | None = None
    nlls: np.ndarray | None = None
    kl: list[float] | None = None
    reward: list[float] | None = None


def run_policy(spec: ModelSpec, cfg: EvalConfig, pool: ModelPool, prompts: Sequence[Prompt], world_data,
               demos: Sequence[tuple[str, str]], reuse: PolicyOutputs | None = None) -> PolicyOutputs:
    """Answers to the test prompts and probes, and the likelihood-based probes.

    ``reuse``: outputs of the same weights (base for base_prompted), whose
    likelihood probes (bias, cloze, perplexity) are taken as they are.
    """
    runner = PolicyRunner(spec, cfg, pool, demos)
    probes = world_data.probes
    out = PolicyOutputs(
        responses=list(generate_responses(spec, prompts, cfg, runner=runner)),
        truth=list(generate_responses(spec, [t.prompt for t in probes.truth], cfg, runner=runner)),
        toxicity=list(generate_responses(spec, [t.prompt for t in probes.toxicity],
                                         replace(cfg, max_new_tokens=min(cfg.max_new_tokens, cfg.toxicity_tokens)),
                                         runner=runner)),
    )
    if reuse is not None:
        out.bias, out.cloze, out.nlls = reuse.bias, reuse.cloze, reuse.nlls
    else:
        out.bias = bias_entropies(runner, probes.bias) if probes.bias else None
        out.cloze = cloze_correct(runner, probes.cloze) if probes.cloze else None
        out.nlls = block_nlls(runner, world_data.heldout_corpus, cfg.heldout_tokens) \
            if world_data.heldout_corpus and cfg.heldout_tokens else None
    return out


def policy_kl(runner: PolicyRunner, ref: PolicyRunner, prompts: Sequence[Prompt],
              responses: Sequence[str], temperature: float) -> list[float] | None:
    """Per prompt: sum over answer tokens of log p_policy - log p_sft on the policy's own answers.

    Both log-probs use the sampling temperature (so the samples come from the
    distribution whose KL is estimated). None if the tokenizers differ.
    """
    if not _same_vocab(runner.tokenizer, ref.tokenizer):
        return None
    temp = temperature if temperature > 0 else 1.0
    resp = [runner.response_ids(r) for r in responses]
    keep = [i for i, r in enumerate(resp) if r]
    if not keep:
        return None
    pol = continuation_logprobs(runner.model, [runner.prompt_ids(prompts[i].text) for i in keep],
                                [resp[i] for i in keep], runner.pad, temp, runner.cfg.batch_size)
    sft = continuation_logprobs(ref.model, [ref.prompt_ids(prompts[i].text) for i in keep],
                                [resp[i] for i in keep], ref.pad, temp, ref.cfg.batch_size)
    kl = [0.0] * len(prompts)
    for j, i in enumerate(keep):
        kl[i] = float(pol[j].sum() - sft[j].sum())
    return kl


# ----------------------------------------------------------------------------- assembly

def build_model_result(spec: ModelSpec, outputs: PolicyOutputs, judgement: Judgement, world_data,
                       prompts: Sequence[Prompt], seed: int = 0) -> ModelResult:
    ids = [p.id for p in prompts]
    probes = world_data.probes
    m = ModelResult(spec.name, spec.kind, spec.n_params, win_rate=dict(judgement.win_rate),
                    use_case_win_rates=dict(judgement.use_case_win_rates), likert=judgement.likert,
                    metadata=dict(judgement.metadata), comparisons=list(judgement.comparisons),
                    raw=dict(judgement.raw))
    m.benchmarks.update(truth_scores(probes.truth, outputs.truth))
    m.benchmarks.update(toxicity_scores(probes.toxicity, outputs.toxicity, seed))
    if outputs.bias:
        m.benchmarks["bias_entropy"] = _mean_estimate(outputs.bias, seed=seed)
    if outputs.reward is not None:
        m.benchmarks["reward_model_score"] = _mean_estimate(outputs.reward, ids, seed, "bootstrap-prompts")
    if outputs.kl is not None:
        m.benchmarks["kl_to_sft"] = _mean_estimate(outputs.kl, ids, seed, "bootstrap-prompts")
    if outputs.cloze:
        m.pretraining["cloze_accuracy"] = rate(outputs.cloze)
        m.raw["cloze_accuracy"] = Samples(list(outputs.cloze), [f"cloze-{i}" for i in range(len(outputs.cloze))])
    if outputs.nlls is not None and outputs.nlls.size:
        m.pretraining["perplexity"] = perplexity_estimate(outputs.nlls, seed)
    return m


def _human_tables(comps_by_model: dict[str, list[Comparison]], seed: int) -> dict[str, Any]:
    tables: dict[str, Any] = {}
    for name, comps in comps_by_model.items():
        if not comps:
            continue
        outcomes, groups = [c.outcome for c in comps], [c.prompt_id for c in comps]
        tables[name] = {
            "win_rate": win_rate(outcomes, groups, seed=seed).to_dict(),
            "use_case_win_rates": {k: v.to_dict() for k, v in win_rates_by(
                outcomes, [c.use_case for c in comps], groups, seed=seed).items()},
            "n": len(comps)}
    return tables


def run_eval(cfg: EvalConfig) -> EvalResults:
    """Evaluate every policy of ``cfg.run_dir``; write results.json and the report."""
    cfg.validate()
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        now = time.perf_counter()
        timings[name] = round(timings.get(name, 0.0) + now - t0, 3)
        return now

    run_dir, out_dir = Path(cfg.run_dir), cfg.out_path
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: run folder not found")
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    t = time.perf_counter()
    world_data = load_world(run_dir)
    world = world_data.world
    prompts = load_test_prompts(run_dir, cfg.n_prompts, cfg.seed)
    specs = discover_models(run_dir, cfg.models, cfg.few_shot)
    if cfg.baseline not in specs:
        raise ConfigError(f"baseline: {cfg.baseline!r} is not among the models found "
                          f"({', '.join(specs) or 'none'}) in {run_dir / 'models'}")
    demos = few_shot_demos(world_data, cfg.few_shot, cfg.seed)
    if not demos:
        specs.pop(PROMPTED, None)
    t = lap("setup", t)

    device = pick_device(cfg.device)
    pool = ModelPool(device)
    ref_spec = specs[cfg.baseline] if specs[cfg.baseline].kind == "sft" else \
        next((s for s in specs.values() if s.kind == "sft" and not s.prompted), None)
    if ref_spec is not None:
        pool.pinned.add(ref_spec.path)
    rm_dir = run_dir / "models" / "rm"
    rm = RewardModel.from_pretrained(rm_dir, device) if (rm_dir / "reward_model.json").is_file() else None
    rm_tok = load_tokenizer(rm_dir) if rm is not None else None
    if rm is not None:
        rm.eval()

    outputs: dict[str, PolicyOutputs] = {}
    for name, spec in specs.items():
        t = time.perf_counter()
        reuse = next((outputs[o.name] for o in specs.values()
                      if o.name in outputs and o.path == spec.path and not o.prompted), None)
        outputs[name] = out = run_policy(spec, cfg, pool, prompts, world_data, demos, reuse)
        t = lap(f"generate+probes:{name}", t)
        _score_policy(spec, out, cfg, pool, demos, prompts, ref_spec, rm, rm_tok)
        lap(f"kl+reward:{name}", t)

    t = time.perf_counter()
    responses = {n: o.responses for n, o in outputs.items()}
    # The simulated labelers can only judge prompts of the world's tasks.
    keep = [i for i, p in enumerate(prompts) if checkable(p)]
    judged = [prompts[i] for i in keep]
    judged_responses = {n: [r[i] for i in keep] for n, r in responses.items()}
    judgements = judge(judged, judged_responses, cfg.baseline, world_data.panel, world, cfg.seed) \
        if judged else {n: Judgement() for n in specs}
    t = lap("judge", t)
    models = [build_model_result(specs[n], outputs[n], judgements[n], world_data, prompts, cfg.seed)
              for n in specs]
    agreement = labeler_agreement(world_data.panel, judged, judged_responses, cfg.seed) if judged else {}
    t = lap("agreement", t)
    n_tasks = write_label_tasks(out_dir / "label_tasks.jsonl", prompts, responses, cfg.baseline, cfg.seed)

    def short(path: str) -> str:
        try:
            return str(Path(path).resolve().relative_to(run_dir.resolve()))
        except ValueError:
            return str(path)

    meta = _run_meta(cfg, run_dir, out_dir, world_data, specs, demos, prompts, judged, rm, rm_dir, ref_spec,
                     n_tasks, short)
    if cfg.labels:
        meta["human_labels"] = _add_human_labels(models, cfg, prompts, responses, out_dir, short)

    results = EvalResults(models=models, baseline=cfg.baseline, agreement=agreement,
                          training_curves=training_curves(run_dir),
                          samples=pick_samples(prompts, responses), meta=meta)
    results.meta["claims"] = {c.id: c.verdict for c in check_claims(results)}
    results.save(out_dir / "results.json")  # before the report, so a report failure loses nothing
    t = lap("assemble", t)
    write_report(results, run_dir)
    lap("report", t)
    results.meta["eval_seconds"] = round(time.perf_counter() - t_start, 2)
    results.save(out_dir / "results.json")
    (out_dir / "timings.json").write_text(json.dumps(timings, indent=1) + "\n")
    print(f"eval: {len(models)} models on {len(prompts)} prompts in {results.meta['eval_seconds']:.1f}s "
          f"-> {out_dir / 'results.json'}, {run_dir / 'report.html'}")
    return results


def _run_meta(cfg: EvalConfig, run_dir: Path, out_dir: Path, world_data, specs, demos, prompts, judged, rm,
              rm_dir: Path, ref_spec, n_tasks: int, short) -> dict[str, Any]:
    """The report's run table: what was evaluated, how, and what was left out."""
    wc = world_data.config
    meta: dict[str, Any] = {
        "run_dir": str(run_dir), "test_prompts": len(prompts), "temperature": cfg.temperature,
        "max_new_tokens": cfg.max_new_tokens, "few_shot": len(demos), "seed": cfg.seed,
        "models": {n: short(s.path) + (" + few-shot prefix" if s.prompted else "") for n, s in specs.items()},
        "reward_model": short(str(rm_dir)) if rm is not None else "not found",
        "kl": f"to {ref_spec.name}, on each policy's own answers, log-probs at the sampling temperature"
              if ref_spec else "not measured (no SFT model)",
        "world": f"world/config.json (seed {wc.seed}, scale {wc.scale:g})",
        "label_tasks": f"{short(str(out_dir / 'label_tasks.jsonl'))} ({n_tasks} ranking tasks)",
        "judges": "simulated labelers: one training and one held-out labeler per comparison; "
                  "Likert and flags by the prompt's held-out labeler",
        "likelihood probes of base_prompted": "those of base (same weights)" if PROMPTED in specs else "n/a",
    }
    if len(judged) < len(prompts):
        meta["not judged"] = (f"{len(prompts) - len(judged)} test prompts are not tasks of the simulated "
                              f"world (no checker); only real labels can judge them")
    return meta


def _score_policy(spec, out, cfg: EvalConfig, pool, demos, prompts, ref_spec, rm, rm_tok) -> None:
    """Fill ``out.kl`` (to the SFT reference, on the policy's own answers) and ``out.reward`` (RM score)."""
    runner = PolicyRunner(spec, cfg, pool, demos)
    if ref_spec is not None:
        if spec.path == ref_spec.path and not spec.prompted:
            out.kl = [0.0] * len(prompts)
        else:
            ref = PolicyRunner(ref_spec, cfg, pool)
            out.kl = policy_kl(runner, ref, prompts, out.responses, cfg.temperature)
    if rm is not None:
        same = _same_vocab(runner.tokenizer, rm_tok)
        p_ids = [(runner if same else _Encoder(rm_tok)).prompt_ids(p.text, with_prefix=False) for p in prompts]
        r_ids = [runner.response_ids(r) if same else _Encoder(rm_tok).response_ids(str(r)) for r in out.responses]
        with torch.no_grad():
            out.reward = reward_scores(rm, p_ids, r_ids, rm_tok.pad_token_id, cfg.batch_size)


def _add_human_labels(models, cfg: EvalConfig, prompts, responses, out_dir: Path, short) -> str:
    """Win rates from real labels (the labeling app's evaluation export) as ``win_rate["human"]``;
    per-use-case tables to human_labels.json. Returns the line for the report's run table."""
    rankings = load_rankings(cfg.labels, prompts)
    human = label_comparisons(rankings, prompts, responses, cfg.baseline)
    for m in models:
        comps = human.get(m.name) or []
        if comps:
            m.comparisons += comps
            m.win_rate["human"] = win_rate([c.outcome for c in comps], [c.prompt_id for c in comps], seed=cfg.seed)
    tables = _human_tables(human, cfg.seed)
    (out_dir / "human_labels.json").write_text(json.dumps(
        {"file": str(cfg.labels), "rankings": len(rankings), "tables": tables}, indent=1) + "\n")
    return (f"{cfg.labels}: {len(rankings)} rankings -> win_rate['human'] of {len(tables)} models; "
            f"per use case in {short(str(out_dir / 'human_labels.json'))}")


class _Encoder:
    """Tokenisation with another model's tokenizer (the reward model's), no prefix."""

    def __init__(self, tokenizer, max_len: int = 100_000):
        self.tokenizer, self.max_len = tokenizer, max_len

    def prompt_ids(self, text: str, with_prefix: bool = False) -> list[int]:
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]

    def response_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]


__all__ = [
    "EvalConfig",
    "Judgement",
    "ModelPool",
    "ModelSpec",
    "PolicyRunner",
    "Response",
    "bias_entropies",
    "block_nlls",
    "build_model_result",
    "cloze_correct",
    "compare_outcomes",
    "continuation_logprobs",
    "discover_models",
    "few_shot_demos",
    "generate_responses",
    "judge",
    "label_comparisons",
    "labeler_agreement",
    "load_test_prompts",
    "load_world",
    "perplexity_estimate",
    "pick_samples",
    "policy_kl",
    "reward_scores",
    "run_eval",
    "run_policy",
    "toxicity_scores",
    "training_curves",
    "truth_scores",
    "write_label_tasks",
]
