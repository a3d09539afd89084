"""``instructgpt eval``: run the policies of a run folder and measure them the way the paper does.

One evaluation, in order (:func:`run_eval`):

1. read the run folder (:mod:`.inputs`): the run's settings, its world, the
   test prompts, the policies, the reward model, each round's outcome;
2. every policy (plus the virtual ``base_prompted``) answers the test prompts
   and the probes once (:func:`run_policy`); the likelihood probes (bias,
   cloze, held-out perplexity) are scored on the same weights;
3. KL to the SFT policy and reward-model score of each policy's own answers
   (:func:`score_policy`);
4. the simulated labelers judge the answers (:mod:`.judging`) and their
   agreement is measured (:mod:`.agreement`), on the answers and on the run's
   RM comparisons; the reward model's accuracy against the labelers' ceiling
   (:mod:`.rm_accuracy`) and what its pick of the SFT policy's answers is
   worth (:mod:`.best_of_n`);
5. one :class:`~instructgpt.evaluation.results.ModelResult` per policy
   (:func:`build_model_result`), the claims checked, and everything written:
   ``out_dir/results.json``, ``label_tasks.jsonl``, ``timings.json`` (and
   ``human_labels.json`` with ``labels``); ``report.{md,html}`` in the run
   folder, or in ``out_dir`` when it is given (the run's own report is then
   left alone).

Everything is deterministic for a given ``seed``; the pipeline's eval stage
is this function on the run folder, so ``instructgpt eval run_dir=X`` writes
the same results and report as the run did.

Where the numbers go in :class:`~instructgpt.evaluation.results.ModelResult`:
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
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ConfigError
from ..data import Prompt
from ..models import load_tokenizer, pick_device
from ..reward_model import RewardModel
from ..run_folder import RunFolder
from .agreement import answer_agreement, comparison_agreement
from .best_of_n import best_of_n
from .claims import check_claims, head_to_head_pairs
from .config import EvalConfig
from .harness import harness_scores, task_manager
from .human_labels import TASK_K_MAX, add_human_labels, read_labels, task_models, write_label_tasks
from .inputs import EvalInputs, read_inputs
from .judging import Judgement, checkable, judge
from .policies import PROMPTED, ModelPool, ModelSpec, PolicyRunner, generate_responses
from .probes import (bias_entropies, block_nlls, cloze_correct, continuation_items, perplexity_estimate,
                     toxicity_scores, truth_scores)
from .report import write_report
from .results import EvalResults, ModelResult, SampleOutput, Samples
from .rm_accuracy import rm_accuracy_tables
from .scoring import policy_kl, policy_reward, rm_scorer
from .stats import Estimate, mean_estimate, rate

__all__ = ["EvalConfig", "run_eval"]


# ----------------------------------------------------------------------------- one policy

@dataclass
class PolicyOutputs:
    """Everything one policy produced: answers and per-item probe values."""
    responses: list[str]
    truth: list[str]
    toxicity: list[str]
    bias: list[float] | None = None
    cloze: list[float] | None = None
    continuation: list[float] | None = None      # 0/1 per continuation item (HellaSwag-like)
    nlls: Samples | None = None                   # next-token loss per held-out block
    kl: list[float] | None = None
    reward: list[float] | None = None
    harness: dict[str, Estimate] | None = None   # lm-eval task scores (lm_eval_tasks)


def run_policy(spec: ModelSpec, cfg: EvalConfig, pool: ModelPool, prompts: Sequence[Prompt], world_data,
               demos: Sequence[tuple[str, str]], reuse: PolicyOutputs | None = None,
               manager=None) -> PolicyOutputs:
    """Answers to the test prompts and probes, the likelihood-based probes, and the lm-eval tasks
    (``manager``: an lm-eval TaskManager, when ``cfg.lm_eval_tasks`` asks for them).

    ``reuse``: outputs of the same weights (base for base_prompted), whose
    likelihood probes (bias, cloze, continuation, perplexity, lm-eval) are taken as they are.
    """
    runner = PolicyRunner(spec, cfg, pool, demos)
    probes = world_data.probes
    short = replace(cfg, max_new_tokens=min(cfg.max_new_tokens, cfg.toxicity_tokens))
    out = PolicyOutputs(
        responses=list(generate_responses(spec, prompts, cfg, runner=runner)),
        truth=list(generate_responses(spec, [t.prompt for t in probes.truth], cfg, runner=runner)),
        toxicity=list(runner.sample([t.prompt for t in probes.toxicity], short, continuation=True)),
    )
    if reuse is not None:
        out.bias, out.cloze, out.nlls, out.harness = reuse.bias, reuse.cloze, reuse.nlls, reuse.harness
        out.continuation = reuse.continuation
    else:
        if manager is not None:
            out.harness = harness_scores(runner.model, runner.tokenizer, cfg.lm_eval_tasks, manager,
                                         cfg.lm_eval_limit, cfg.batch_size, cfg.seed, runner.context.positions)
        out.bias = bias_entropies(runner, probes.bias) if probes.bias else None
        out.cloze = cloze_correct(runner, probes.cloze) if probes.cloze else None
        out.nlls = block_nlls(runner, world_data.heldout_corpus, cfg.heldout_tokens) \
            if world_data.heldout_corpus and cfg.heldout_tokens else None
        items = continuation_items(world_data.heldout_corpus or [], cfg.continuation_items, cfg.seed)
        out.continuation = cloze_correct(runner, items) if items else None
    return out


def score_policy(spec: ModelSpec, out: PolicyOutputs, cfg: EvalConfig, pool: ModelPool, demos, prompts,
                 ref_spec: ModelSpec | None, rm: RewardModel | None, rm_tokenizer) -> None:
    """Fill ``out.kl`` (to the SFT reference, on the policy's own answers) and ``out.reward`` (RM score)."""
    runner = PolicyRunner(spec, cfg, pool, demos)
    if ref_spec is not None:
        if spec.path == ref_spec.path and not spec.prompted:
            out.kl = [0.0] * len(prompts)
        else:
            out.kl = policy_kl(runner, PolicyRunner(ref_spec, cfg, pool), prompts, out.responses, cfg.temperature)
    if rm is not None:
        with torch.no_grad():
            out.reward = policy_reward(runner, rm, rm_tokenizer, prompts, out.responses, cfg.batch_size)


def build_model_result(spec: ModelSpec, outputs: PolicyOutputs, judgement: Judgement, world_data,
                       prompts: Sequence[Prompt], seed: int = 0) -> ModelResult:
    """The ModelResult of one policy from its outputs and the labelers' judgement."""
    ids = [p.id for p in prompts]
    probes = world_data.probes
    m = ModelResult(spec.name, spec.kind, spec.n_params, win_rate=dict(judgement.win_rate),
                    use_case_win_rates=dict(judgement.use_case_win_rates), likert=judgement.likert,
                    metadata=dict(judgement.metadata), comparisons=list(judgement.comparisons),
                    raw=dict(judgement.raw))
    m.benchmarks.update(truth_scores(probes.truth, outputs.truth))
    m.benchmarks.update(toxicity_scores(probes.toxicity, outputs.toxicity, seed))
    if outputs.bias:
        m.benchmarks["bias_entropy"] = mean_estimate(outputs.bias, seed=seed)
    if outputs.reward is not None:
        m.benchmarks["reward_model_score"] = mean_estimate(outputs.reward, ids, seed, "bootstrap-prompts")
    if outputs.kl is not None:
        m.benchmarks["kl_to_sft"] = mean_estimate(outputs.kl, ids, seed, "bootstrap-prompts")
    if outputs.cloze:
        m.pretraining["cloze_accuracy"] = rate(outputs.cloze)
        m.raw["cloze_accuracy"] = Samples(list(outputs.cloze), [f"cloze-{i}" for i in range(len(outputs.cloze))])
    if outputs.continuation:
        m.pretraining["continuation_accuracy"] = rate(outputs.continuation)
        m.raw["continuation_accuracy"] = Samples(list(outputs.continuation),
                                                 [f"continuation-{i}" for i in range(len(outputs.continuation))])
    if outputs.nlls is not None and outputs.nlls.values:
        m.pretraining["perplexity"] = perplexity_estimate(np.asarray(outputs.nlls.values), seed)
        m.raw["nll"] = outputs.nlls
    m.pretraining.update(outputs.harness or {})
    return m


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


# ----------------------------------------------------------------------------- the evaluation

class _Laps:
    """Wall time per named step (timings.json)."""

    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self.last, 3)
        self.last = now

    def restart(self) -> None:
        self.last = time.perf_counter()


def sft_best_of_n(sft: ModelSpec, cfg: EvalConfig, pool: ModelPool, demos, prompts: Sequence[Prompt],
                  rm: RewardModel, rm_tokenizer, world_data) -> dict:
    """The SFT policy samples ``cfg.best_of_n`` answers per prompt; :func:`.best_of_n.best_of_n` of them."""
    runner = PolicyRunner(sft, cfg, pool, demos)
    # each prompt's random stream is seeded by the prompt (PolicyRunner.sample): answer j comes from seed + j
    draws = [runner.sample(prompts, replace(cfg, seed=cfg.seed + j)) for j in range(cfg.best_of_n)]
    answers = [list(per_prompt) for per_prompt in zip(*draws)]
    return best_of_n(prompts, answers, rm_scorer(rm, rm_tokenizer, cfg.batch_size), world_data.panel,
                     world_data.world, cfg.seed)


def save_results_and_report(results: EvalResults, cfg: EvalConfig, out_dir: Path, laps: _Laps) -> Path:
    """results.json (first, so a report failure loses nothing), the report, the total time and
    timings.json; returns the HTML report's path."""
    results.save(out_dir / "results.json")
    laps("assemble")
    _, html_path = write_report(results, cfg.report_dir)
    laps("report")
    results.meta["eval_seconds"] = round(time.perf_counter() - laps.start, 2)
    results.save(out_dir / "results.json")
    (out_dir / "timings.json").write_text(json.dumps(laps.seconds, indent=1) + "\n")
    return html_path


def _check_judges(judgements: int, panel) -> None:
    """Each comparison is judged by distinct labelers of each group: asking for more than the smaller group
    holds is an error before any model answers."""
    smallest = min(len(panel.training_labelers), len(panel.heldout_labelers))
    if judgements > smallest:
        raise ConfigError(f"judgements: {judgements} distinct labelers per comparison, but the world's panel has "
                          f"{len(panel.heldout_labelers)} held-out and {len(panel.training_labelers)} training "
                          f"labelers (at most {smallest})")


def run_eval(cfg: EvalConfig) -> EvalResults:
    """Evaluate every policy of ``cfg.run_dir`` (or, with ``cfg.prompts``, the given models on your
    own prompts: :func:`~instructgpt.evaluation.own_prompts.run_prompts_eval`); write results.json and the report."""
    if cfg.prompts:
        from .own_prompts import run_prompts_eval
        return run_prompts_eval(cfg)
    laps = _Laps()
    run = RunFolder(cfg.run_dir)
    cfg = cfg.with_run_defaults(run.read_run_config())
    inputs = read_inputs(cfg, run)
    labels = read_labels(cfg.labels, inputs.prompts) if cfg.labels else None  # a bad file stops us before any work
    _check_judges(cfg.judgements, inputs.world.panel)
    manager = task_manager(cfg.lm_eval_tasks, cfg.lm_eval_include) if cfg.lm_eval_tasks else None
    out_dir = cfg.out_path
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    laps("setup")

    # 2-3. every policy answers and is scored
    specs, prompts, world_data = inputs.specs, inputs.prompts, inputs.world
    pool = ModelPool(pick_device(cfg.device))
    ref_spec = specs[cfg.baseline] if specs[cfg.baseline].kind == "sft" else \
        next((s for s in specs.values() if s.kind == "sft" and not s.prompted), None)
    if ref_spec is not None:
        pool.pinned.add(ref_spec.path)
    rm = rm_tokenizer = None
    if inputs.reward_model is not None:
        rm = RewardModel.from_pretrained(inputs.reward_model, pool.device).eval()
        rm_tokenizer = load_tokenizer(inputs.reward_model)
    outputs: dict[str, PolicyOutputs] = {}
    for name, spec in specs.items():
        laps.restart()
        reuse = next((outputs[o.name] for o in specs.values()
                      if o.name in outputs and o.path == spec.path and not o.prompted), None)
        outputs[name] = out = run_policy(spec, cfg, pool, prompts, world_data, inputs.demos, reuse, manager)
        laps(f"generate+probes:{name}")
        score_policy(spec, out, cfg, pool, inputs.demos, prompts, ref_spec, rm, rm_tokenizer)
        laps(f"kl+reward:{name}")

    # 4. the simulated labelers judge (only prompts of the world's tasks: they have a checker)
    responses = {n: o.responses for n, o in outputs.items()}
    keep = [i for i, p in enumerate(prompts) if checkable(p)]
    judged = [prompts[i] for i in keep]
    judged_responses = {n: [r[i] for i in keep] for n, r in responses.items()}
    panel, world = world_data.panel, world_data.world
    pairs = head_to_head_pairs({n: s.kind for n, s in specs.items()})
    judgements = judge(judged, judged_responses, cfg.baseline, panel, world, cfg.seed, cfg.judgements, pairs) \
        if judged else {n: Judgement() for n in specs}
    laps("judge")
    agreement, agreement_basis = _agreement(inputs, judged, judged_responses, cfg.seed)
    laps("agreement")
    rm_accuracy = {}
    if rm is not None and judged:
        policies = {n: judged_responses[n] for n, s in specs.items() if s.kind in ("sft", "ppo", "ppo_ptx")}
        rm_accuracy = rm_accuracy_tables(rm, rm_tokenizer, judged, policies, panel, world, cfg.seed, cfg.batch_size)
    laps("rm_accuracy")
    best_of = {"best_of_n": sft_best_of_n(ref_spec, cfg, pool, inputs.demos, judged, rm, rm_tokenizer, world_data)} \
        if rm is not None and judged and ref_spec is not None and cfg.best_of_n > 1 else {}
    laps("best_of_n")

    # 5. results, claims, files
    models = [build_model_result(specs[n], outputs[n], judgements[n], world_data, prompts, cfg.seed)
              for n in specs]
    n_tasks = write_label_tasks(out_dir / "label_tasks.jsonl", prompts, responses, cfg.baseline, cfg.seed)
    meta = {**run_meta(cfg, run, out_dir, inputs, ref_spec, n_tasks, n_judged=len(judged)),
            **inputs.round_summaries, **rm_accuracy, **best_of,
            **({"agreement_basis": agreement_basis} if agreement_basis else {})}
    if labels is not None:
        n_rankings, n_models = add_human_labels(models, labels, prompts, responses, cfg.baseline, cfg.seed,
                                                out_dir / "human_labels.json")
        meta["human_labels"] = (f"{cfg.labels}: {n_rankings} rankings -> win_rate['human'] of {n_models} models; "
                                f"per use case in {_short(out_dir / 'human_labels.json', run)}")
    results = EvalResults(models=models, baseline=cfg.baseline, agreement=agreement,
                          training_curves=inputs.training_curves, samples=pick_samples(prompts, responses),
                          meta=meta)
    results.meta["claims"] = {c.id: c.verdict for c in check_claims(results)}
    html_path = save_results_and_report(results, cfg, out_dir, laps)
    print(f"eval: {len(models)} models on {len(prompts)} prompts in {results.meta['eval_seconds']:.1f}s "
          f"-> {out_dir / 'results.json'}, {html_path}")
    return results


def _agreement(inputs: EvalInputs, judged: list[Prompt], judged_responses: dict[str, list[str]],
               seed: int) -> tuple[dict[str, Estimate], dict[str, str]]:
    """Inter-labeler agreement on the judged answers and on the RM's rankings, and for each row the
    prompts or rankings it rests on (results.json meta)."""
    basis: dict[str, str] = {}
    panel, world = inputs.world.panel, inputs.world.world
    rows = answer_agreement(panel, world, judged, judged_responses, seed, basis=basis)
    rows.update(comparison_agreement(panel, world, inputs.rm_prompts, inputs.rm_rankings, seed, basis=basis))
    return rows, basis


def _short(path: str | Path, run: RunFolder) -> str:
    """``path`` relative to the run folder when it is inside it."""
    try:
        return str(Path(path).resolve().relative_to(run.root.resolve()))
    except ValueError:
        return str(path)


def _left_out(specs: dict[str, ModelSpec], cfg: EvalConfig) -> str:
    """What the label tasks leave out: a task ranks at most TASK_K_MAX answers."""
    left = [n for n in specs if n not in task_models(list(specs), cfg.baseline)]
    return (f"; {', '.join(left)} left out: a task ranks at most {TASK_K_MAX} answers, one per model"
            if left else "")


def run_meta(cfg: EvalConfig, run: RunFolder, out_dir: Path, inputs: EvalInputs, ref_spec: ModelSpec | None,
             n_tasks: int, n_judged: int) -> dict[str, Any]:
    """The report's run table: what was evaluated, how, and what was left out."""
    wc, specs = inputs.world.config, inputs.specs
    meta: dict[str, Any] = {
        "run_dir": str(run.root), "test_prompts": len(inputs.prompts), "temperature": cfg.temperature,
        "max_new_tokens": cfg.max_new_tokens, "few_shot": len(inputs.demos), "seed": cfg.seed,
        "models": {n: _short(s.path, run) + (" + few-shot prefix" if s.prompted else "") for n, s in specs.items()},
        "reward_model": _short(inputs.reward_model, run) if inputs.reward_model else "not found",
        "kl": f"to {ref_spec.name}, on each policy's own answers, log-probs at the sampling temperature"
              if ref_spec else "not measured (no SFT model)",
        "world": f"{_short(run.world, run)}/ (seed {wc.seed}, scale {wc.scale:g})",
        "label_tasks": f"{_short(out_dir / 'label_tasks.jsonl', run)} ({n_tasks} ranking tasks)" + _left_out(specs, cfg),
        "judges": f"simulated labelers: {cfg.judgements} distinct training and {cfg.judgements} distinct held-out "
                  "labeler(s) per comparison (drawn without replacement); Likert and flags by the prompt's "
                  "held-out labeler",
        "likelihood probes of base_prompted": "those of base (same weights)" if PROMPTED in specs else "n/a",
    }
    if inputs.missing:
        meta["missing models"] = (f"{', '.join(inputs.missing)}: the run's options make them, but their folders are "
                                  f"not there (an unfinished run?); not evaluated")
    if cfg.lm_eval_tasks:
        meta["lm_eval"] = (f"tasks {', '.join(cfg.lm_eval_tasks)}" + (f" (limit {cfg.lm_eval_limit})"
                           if cfg.lm_eval_limit else "") + "; plain-text prompts, no chat template")
    if n_judged < len(inputs.prompts):
        meta["not judged"] = (f"{len(inputs.prompts) - n_judged} test prompts are not tasks of the simulated "
                              f"world (no checker); only real labels can judge them")
    return meta
