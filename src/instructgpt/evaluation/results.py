"""The evaluation results: what was measured, as data, and its JSON form.

One evaluation is an :class:`EvalResults`; ``instructgpt eval`` writes it to
``results.json`` (:meth:`EvalResults.save`), and the claims check and the
report read it back (:meth:`EvalResults.load`), so a report can be re-rendered
without running any model.

* :class:`EvalResults` - one evaluation: the models, the baseline name,
  inter-labeler agreement, training curves, sample outputs, free-form meta.
* :class:`ModelResult` - one evaluated model: its kind and size, summary
  :class:`~instructgpt.evaluation.stats.Estimate` s (win rates against the
  baseline, Likert mean, metadata rates, public-benchmark scores, held-out
  pretraining perplexity / cloze accuracy) and optional raw data for paired
  tests (:class:`Comparison` s and :class:`Samples`).
* :class:`SampleOutput` - one prompt with each model's answer.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from .stats import Estimate, win_rate, win_rates_by

# ----------------------------------------------------------------------------- vocabulary

#: Kinds of evaluated model. "base" = pretrained LM (GPT-3 in the paper);
#: "base_prompted" = the same with a few-shot instruction-following prefix;
#: "sft" = supervised fine-tuned; "ppo" = RLHF without pretraining mix;
#: "ppo_ptx" = RLHF with pretraining mix (InstructGPT); "flan" / "t0" = base
#: fine-tuned on the FLAN / T0 public instruction data sets; "other" = any
#: model of yours evaluated on your own prompts (``instructgpt eval prompts=``).
MODEL_KINDS = ("base", "base_prompted", "sft", "ppo", "ppo_ptx", "flan", "t0", "other")

#: Who judged a comparison: the labelers who produced the training data, or
#: held-out labelers who never did (and "human": real labels from the labeling app).
LABELER_GROUPS = ("training", "heldout")

#: Every judge a comparison can come from, in report order, with its name in the report:
#: the simulated labelers of the world, people (the labeling app's export), and the
#: automatic judges of ``instructgpt eval prompts=`` (evaluation.judges).
JUDGES = {"training": "training labelers", "heldout": "held-out labelers", "human": "people (labeling app)",
          "reward_model": "reward model", "judge_model": "judge model"}

#: What an evaluation was run on: a run of the built-in world, or your own prompts.
MODES = ("world", "prompts")

#: Pretraining metrics where lower is better (all others: higher is better).
LOWER_IS_BETTER = ("perplexity", "nll", "toxicity")


def lower_is_better(metric: str) -> bool:
    """True for metrics such as perplexity or toxicity where smaller is better."""
    return any(metric.startswith(m) for m in LOWER_IS_BETTER)


def _est_dict(d: dict[str, Estimate]) -> dict[str, Any]:
    return {k: v.to_dict() for k, v in d.items()}


def _est_load(d: dict[str, Any] | None) -> dict[str, Estimate]:
    return {k: Estimate.from_dict(v) for k, v in (d or {}).items()}


# ----------------------------------------------------------------------------- data model

@dataclass
class Comparison:
    """One pairwise judgement: this model's answer against an opponent's on one prompt.

    prompt_id: id of the prompt (comparisons sharing it are bootstrapped together).
    outcome: from this model's side: 1 win, 0 loss, 0.5 tie.
    labelers: who judged: a key of JUDGES ("training", "heldout", "human", "reward_model", "judge_model").
    use_case: one of instructgpt.data.USE_CASES.
    opponent: name of the opponent model; None means the results' baseline (SFT).
    labeler_id: who judged (optional; for agreement and audits).
    """

    prompt_id: str
    outcome: float
    labelers: str = "training"
    use_case: str = "other"
    opponent: str | None = None
    labeler_id: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Comparison:
        return cls(**d)


@dataclass
class Samples:
    """Raw per-sample values of a mean-type metric, with the prompt of each.

    values: shape (n,), e.g. 0/1 hallucination flags or 0/1 cloze correctness;
        their mean must be the metric (so do not put perplexities here).
    groups: shape (n,), prompt or document id per value; two models' samples
        are matched by these ids for paired bootstrap differences.
    """

    values: list[float]
    groups: list[str]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Samples:
        return cls(values=[float(v) for v in d["values"]], groups=[str(g) for g in d["groups"]])


@dataclass
class ModelResult:
    """Everything measured for one model. Every field but name and kind is optional.

    name: unique label, e.g. "ppo_ptx-1.3b".
    kind: one of MODEL_KINDS.
    n_params: parameter count (for by-size plots and the small-vs-large claim).
    win_rate: labeler group ("training"/"heldout") -> win rate vs the baseline.
    use_case_win_rates: use case -> win rate vs the baseline (training labelers).
    likert: mean 1-7 overall quality score.
    metadata: flag (instructgpt.data.FLAGS) -> fraction of responses flagged.
        "hallucination" is measured on closed-domain prompts only (closed QA,
        summarisation, extraction...), as in the paper.
    benchmarks: public NLP evaluations, e.g. "truthfulqa_truthful",
        "truthfulqa_truthful_informative", "toxicity_plain",
        "toxicity_respectful", "winogender_entropy", "crows_pairs_entropy"
        (any key is shown; entropies are in bits).
    pretraining: held-out pretraining performance: "perplexity" (lower is
        better), "cloze_accuracy" (higher is better), other task scores.
    comparisons: raw judgements; when present, win rates missing above are
        computed from them and claims use paired bootstraps over prompts.
    judge_use_case_win_rates: judge (a key of JUDGES) -> use case -> win rate
        vs the baseline, for judges other than the training labelers.
    raw: metric name (a key of metadata or pretraining) -> raw Samples, used
        for paired bootstrap differences between models.
    """

    name: str
    kind: str
    n_params: int | None = None
    win_rate: dict[str, Estimate] = field(default_factory=dict)
    use_case_win_rates: dict[str, Estimate] = field(default_factory=dict)
    likert: Estimate | None = None
    metadata: dict[str, Estimate] = field(default_factory=dict)
    benchmarks: dict[str, Estimate] = field(default_factory=dict)
    pretraining: dict[str, Estimate] = field(default_factory=dict)
    comparisons: list[Comparison] = field(default_factory=list)
    judge_use_case_win_rates: dict[str, dict[str, Estimate]] = field(default_factory=dict)
    raw: dict[str, Samples] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"model {self.name!r}: kind {self.kind!r} not in {MODEL_KINDS}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "n_params": self.n_params,
            "win_rate": _est_dict(self.win_rate),
            "use_case_win_rates": _est_dict(self.use_case_win_rates),
            "likert": None if self.likert is None else self.likert.to_dict(),
            "metadata": _est_dict(self.metadata),
            "benchmarks": _est_dict(self.benchmarks),
            "pretraining": _est_dict(self.pretraining),
            "comparisons": [vars(c).copy() for c in self.comparisons],
            **({"judge_use_case_win_rates": {j: _est_dict(v) for j, v in self.judge_use_case_win_rates.items()}}
               if self.judge_use_case_win_rates else {}),
            "raw": {k: vars(s).copy() for k, s in self.raw.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelResult:
        return cls(
            name=d["name"], kind=d["kind"], n_params=d.get("n_params"),
            win_rate=_est_load(d.get("win_rate")),
            use_case_win_rates=_est_load(d.get("use_case_win_rates")),
            likert=None if d.get("likert") is None else Estimate.from_dict(d["likert"]),
            metadata=_est_load(d.get("metadata")),
            benchmarks=_est_load(d.get("benchmarks")),
            pretraining=_est_load(d.get("pretraining")),
            comparisons=[Comparison.from_dict(c) for c in d.get("comparisons", [])],
            judge_use_case_win_rates={j: _est_load(v) for j, v in d.get("judge_use_case_win_rates", {}).items()},
            raw={k: Samples.from_dict(v) for k, v in d.get("raw", {}).items()},
        )


@dataclass
class SampleOutput:
    """One prompt shown side by side: prompt text and each model's answer (raw, unescaped)."""

    prompt_id: str
    prompt: str
    use_case: str = "other"
    outputs: dict[str, str] = field(default_factory=dict)  # model name -> answer

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SampleOutput:
        return cls(**d)


@dataclass
class EvalResults:
    """One evaluation run, the input of :func:`check_claims` and of the report.

    models: evaluated models (names unique).
    baseline: name of the model all win rates are measured against (SFT in
        the paper); it need not be in ``models``.
    agreement: inter-labeler agreement, e.g. "training-training",
        "training-heldout" -> Estimate (see evaluation.agreement).
    training_curves: run name (e.g. "ppo", "ppo_ptx", "sft", "rm") -> list of
        per-step metric dicts such as {"step": 10, "ppo/score": 0.3, "ppo/kl": 1.2}.
    samples: side-by-side outputs for the report.
    meta: free-form run information (run id, date, config path...), shown as-is.
    mode: "world" (a run of the built-in world: simulated labelers, probes,
        claims) or "prompts" (your own prompts and judges; the sections that
        need the world are left out of the report).
    """

    models: list[ModelResult] = field(default_factory=list)
    baseline: str = "sft"
    agreement: dict[str, Estimate] = field(default_factory=dict)
    training_curves: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    samples: list[SampleOutput] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    mode: str = "world"
    schema_version: int = 1

    def __post_init__(self):
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique: {names}")
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} not in {MODES}")

    # -- serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version, "baseline": self.baseline,
            "models": [m.to_dict() for m in self.models],
            "agreement": _est_dict(self.agreement),
            "training_curves": self.training_curves,
            "samples": [vars(s).copy() for s in self.samples],
            "meta": self.meta,
            **({"mode": self.mode} if self.mode != "world" else {}),
        }

    def to_json(self, indent: int | None = 1) -> str:
        """JSON text (NaN written as null)."""
        return json.dumps(_finite(self.to_dict()), indent=indent, allow_nan=False,
                          default=_json_default)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalResults:
        return cls(
            models=[ModelResult.from_dict(m) for m in d.get("models", [])],
            baseline=d.get("baseline", "sft"),
            agreement=_est_load(d.get("agreement")),
            training_curves=d.get("training_curves", {}),
            samples=[SampleOutput.from_dict(s) for s in d.get("samples", [])],
            meta=d.get("meta", {}),
            mode=d.get("mode", "world"),
            schema_version=d.get("schema_version", 1),
        )

    @classmethod
    def from_json(cls, text: str) -> EvalResults:
        return cls.from_dict(json.loads(text))

    def save(self, path) -> None:
        """Write ``to_json()`` to ``path`` (results.json)."""
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path) -> EvalResults:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    # -- look-ups
    def model(self, name: str) -> ModelResult | None:
        """The model called ``name``, or None."""
        return next((m for m in self.models if m.name == name), None)

    def of_kind(self, kind: str) -> list[ModelResult]:
        """Models of one kind, smallest first (unknown sizes first)."""
        return sorted((m for m in self.models if m.kind == kind),
                      key=lambda m: -1 if m.n_params is None else m.n_params)

    def comparisons(self, name: str, opponent: str | None = None,
                    labelers: str = "training") -> list[Comparison]:
        """Raw comparisons of model ``name`` against ``opponent`` (None = baseline),
        including the opponent's comparisons against ``name`` with outcomes flipped."""
        opp = self.baseline if opponent is None else opponent
        out = [c for m in [self.model(name)] if m for c in m.comparisons
               if c.labelers == labelers and (c.opponent or self.baseline) == opp]
        other = self.model(opp)
        if other is not None:
            out += [Comparison(c.prompt_id, 1.0 - c.outcome, c.labelers, c.use_case, name,
                               c.labeler_id)
                    for c in other.comparisons
                    if c.labelers == labelers and (c.opponent or self.baseline) == name]
        return out

    def win_rate(self, name: str, labelers: str = "training") -> Estimate | None:
        """Win rate of ``name`` vs the baseline: stored, else from raw comparisons, else None."""
        m = self.model(name)
        if m is not None and labelers in m.win_rate:
            return m.win_rate[labelers]
        comps = self.comparisons(name, None, labelers)
        if not comps:
            return None
        return win_rate([c.outcome for c in comps], [c.prompt_id for c in comps])

    def use_case_win_rates(self, name: str, labelers: str = "training") -> dict[str, Estimate]:
        """Per-use-case win rates vs the baseline by one judge (default: training labelers): stored or computed."""
        m = self.model(name)
        if m is not None and labelers == "training" and m.use_case_win_rates:
            return m.use_case_win_rates
        if m is not None and m.judge_use_case_win_rates.get(labelers):
            return m.judge_use_case_win_rates[labelers]
        comps = self.comparisons(name, None, labelers)
        if not comps:
            return {}
        return win_rates_by([c.outcome for c in comps], [c.use_case for c in comps],
                            [c.prompt_id for c in comps])


def _finite(obj):
    """Copy of a JSON-like tree with NaN / infinite floats replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return _finite(obj.tolist())
    return obj


def _json_default(obj):
    """Paths and other simple objects in ``meta`` are written as strings."""
    if isinstance(obj, PurePath):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
