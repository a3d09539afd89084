"""``instructgpt eval prompts=FILE models=a=PATH,b=PATH baseline=a``: any models on your own prompts.

No built-in world is needed. In order (:func:`run_prompts_eval`):

1. read the prompts (``data.load_prompts``: text or chat messages, ``use_case``
   when given) and the models (``models=``, plus the policies of ``run_dir``
   when it is given);
2. every model answers every prompt once, through its own chat format
   (``chat_template=``), with the same seed; the answers' lengths are counted,
   and their KL to the baseline measured when the tokenizers match. Each model's answers are saved
   in ``out_dir/answers/`` as soon as it has given them, and a rerun with the same models, prompts and
   sampling options reads them back (:mod:`.saved_answers`);
3. the chosen judges (``judges=``, default: each whose input is given) compare
   each model's answer with the baseline's on every prompt:

   * ``reward_model``: a reward-model folder scores both (in the chat format
     its tokenizer carries);
   * ``judge_model``: a causal LM reads both in both orders
     (:mod:`.judges`; position bias becomes ties);
   * ``people``: ``label_tasks.jsonl`` for the labeling app (each task holds
     at least 4 answers: with fewer models, each gives several), and with
     ``labels=`` the app's export read back (:mod:`.human_labels`);

   -> win rates against the baseline with 95% bootstrap intervals over
   prompts, overall and per use case (when the prompts carry use cases);
4. with ``lm_eval_tasks=``, the lm-evaluation-harness tasks on every model
   (:mod:`.harness`: the alignment tax);
5. ``results.json``, ``timings.json``, the label tasks and the report
   (``report.md``, ``report.html``) in ``out_dir`` (default: ``<prompts>-eval/``
   beside the prompts file). The report leaves out what needs the world
   (simulated labelers, probes, the paper's claims).

Where the numbers go in :class:`~instructgpt.evaluation.results.ModelResult`:
``win_rate[judge]`` and ``judge_use_case_win_rates[judge]`` (judge:
``reward_model``, ``judge_model``, ``human``), ``likert`` and ``metadata`` (from
people's labels), ``benchmarks``: ``reward_model_score``, ``kl_to_baseline``
(nats per answer), ``response_tokens``, ``response_chars``, ``stopped``
(share of answers that ended before ``max_new_tokens``),
``judge_model_preference`` (P(better) averaged over both orders),
``judge_model_consistency`` (share of pairs judged the same in both orders);
``pretraining``: ``lm_eval:<task>:<metric>``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..batching import ModelContext, RecordEncoder
from ..config import ConfigError
from ..data import DataError, Prompt, load_prompts
from ..models import ModelLoadError, load_tokenizer, pick_device
from ..reward_model import RewardModel
from ..run_folder import RunFolder
from .config import EvalConfig
from .harness import harness_scores, task_manager
from .human_labels import (TASK_K_MAX, TASK_K_MIN, LabelFile, answers_in_labels, as_answers, people_judgement,
                           read_labels, samples_per_model, warn_all_stale, write_label_tasks)
from .inputs import stratified_sample
from .judges import JudgeModel, check_judge_context, pairwise_outcomes, reward_model_outcomes
from .policies import (NO_PROMPT_LIMIT, ModelPool, ModelSpec, PolicyRunner, Response, count_params_on_disk,
                       discover_models, extra_model, kind_of, request_input)
from .results import JUDGES, Comparison, EvalResults, ModelResult
from .saved_answers import FOLDER as ANSWERS
from .saved_answers import answers_key, load_answers, save_answers
from .scoring import policy_kl, policy_reward
from .stats import Estimate, mean_estimate, rate, share, win_rate, win_rates_by

# ----------------------------------------------------------------------------- inputs


def load_own_prompts(path: str, n: int = 0, seed: int = 0) -> list[Prompt]:
    """The prompts of ``path`` (every split), or a seeded sample of ``n`` of them stratified by use
    case (``inputs.stratified_sample``), in file order."""
    if not Path(path).is_file():
        what = "a folder, not a prompts JSONL" if Path(path).is_dir() else "not found"
        raise FileNotFoundError(f"prompts: {path}: {what}")
    prompts = load_prompts(path)
    if not prompts:
        raise ConfigError(f"prompts: {path}: no prompts")
    return stratified_sample(prompts, n, seed)


def own_models(cfg: EvalConfig) -> dict[str, ModelSpec]:
    """name -> ModelSpec: the policies of ``run_dir`` (when given) and every ``name=path`` of ``models``.
    A name that tells no kind (``kind_of``) is of kind "other"."""
    specs = discover_models(cfg.run_dir, few_shot=0) if cfg.run_dir else {}
    for item in cfg.models:
        name, path = extra_model(item, specs)
        try:
            kind = kind_of(name, path)
        except ConfigError:
            kind = "other"
        specs[name] = ModelSpec(name, kind, path, count_params_on_disk(path))
    if cfg.baseline not in specs:
        raise ConfigError(f"baseline: {cfg.baseline!r} is not one of the models ({', '.join(specs) or 'none'}); "
                          f"give it in models=NAME=PATH or choose baseline=NAME")
    if len(specs) < 2:
        raise ConfigError(f"models: only {cfg.baseline!r}; win rates need at least one other model to compare "
                          f"with the baseline")
    return specs


def reward_model_path(cfg: EvalConfig) -> str:
    """``reward_model=``, else the run's models/rm when run_dir holds one, else ""."""
    if cfg.reward_model:
        if not (Path(cfg.reward_model) / "reward_model.json").is_file():
            raise ConfigError(f"reward_model: {cfg.reward_model}: not a reward-model folder (no reward_model.json; "
                              f"'instructgpt rm' writes one)")
        return cfg.reward_model
    if cfg.run_dir and (RunFolder(cfg.run_dir).model("rm") / "reward_model.json").is_file():
        return str(RunFolder(cfg.run_dir).model("rm"))
    return ""


def chosen_judges(cfg: EvalConfig, rm_path: str) -> list[str]:
    """The judges to run: ``judges=`` (each checked for its input), else each whose input is given."""
    given = {"reward_model": rm_path, "judge_model": cfg.judge_model, "people": cfg.labels}
    if not cfg.judges:
        return [j for j, v in given.items() if v]
    for j in cfg.judges:
        if j == "reward_model" and not rm_path:
            raise ConfigError("judges: reward_model needs reward_model=PATH (a folder of 'instructgpt rm')")
        if j == "judge_model" and not cfg.judge_model:
            raise ConfigError("judges: judge_model needs judge_model=PATH (a causal LM folder, .gguf file or smollm2)")
    return list(dict.fromkeys(cfg.judges))


def check_people_can_rank(judges: list[str], specs: dict[str, ModelSpec], temperature: float) -> None:
    """People rank every model's answer in one labeling task, which holds at most TASK_K_MAX answers:
    more models is an error before any model answers (a task would leave the last ones out). With fewer
    models than a task's TASK_K_MIN answers each model answers several times, which greedy decoding
    (temperature=0) makes copies of one answer: a warning (people rank the copies, ties)."""
    if "people" not in judges:
        return
    if len(specs) > TASK_K_MAX:
        raise ConfigError(f"judges: people: {len(specs)} models ({', '.join(specs)}), but a labeling task ranks at "
                          f"most {TASK_K_MAX} answers; give people at most {TASK_K_MAX} models, or leave people out "
                          f"(judges=reward_model,judge_model)")
    per_model = samples_per_model(len(specs))
    if temperature == 0 and per_model > 1:
        print(f"warning: temperature=0 with judges=people and {len(specs)} models: a labeling task holds at least "
              f"{TASK_K_MIN} answers, so each model answers {per_model} times, and greedy decoding gives {per_model} "
              f"copies of one answer for people to rank (sample with temperature > 0, or give people at least "
              f"{TASK_K_MIN} models)", file=sys.stderr, flush=True)


def check_prompts_fit(specs: dict[str, ModelSpec], cfg: EvalConfig, pool: ModelPool, prompts: Sequence[Prompt]) -> None:
    """Before any model loads: every prompt in each model's format, plus ``max_new_tokens``, must fit that
    model's context (its config read, not its weights); an error names the model and the record."""
    for name, spec in specs.items():
        try:
            context = ModelContext.of_model(spec.path, pool.tokenizer(spec.path))
            encoder = RecordEncoder(pool.format(spec.path, cfg.chat_template), context, NO_PROMPT_LIMIT,
                                    max_new_tokens=cfg.max_new_tokens)
            for p in prompts:
                encoder.prompt(request_input(p), p.source)
        except (DataError, ModelLoadError) as e:
            raise type(e)(f"models: {name}: {e}") from None


# ----------------------------------------------------------------------------- one model's answers

@dataclass
class Answers:
    """One model's answers and what is measured on them alone."""
    responses: list[Response]
    format: str = ""                                                # how it was asked (ChatFormat.describe)
    samples: list[list[Response]] = field(default_factory=list)   # further answers for the label tasks
    kl: list[float] | None = None
    reward: list[float] | None = None
    harness: dict[str, Estimate] = field(default_factory=dict)


def answer(spec: ModelSpec, cfg: EvalConfig, pool: ModelPool, prompts: Sequence[Prompt], base: PolicyRunner | None,
           rm: RewardModel | None, rm_tokenizer, n_samples: int, manager, out_dir: Path) -> Answers:
    """``spec``'s answers (and ``n_samples`` further ones, other seeds: :func:`sampled_answers`), their KL to the
    baseline (``base``; None: this is the baseline), reward-model scores and lm-eval scores."""
    runner = PolicyRunner(spec, cfg, pool)
    out = sampled_answers(spec, runner, cfg, prompts, n_samples, out_dir)
    if base is None:
        out.kl = [0.0] * len(prompts)
    else:
        out.kl = policy_kl(runner, base, prompts, out.responses, cfg.temperature)
    if rm is not None:
        with torch.no_grad():
            out.reward = policy_reward(runner, rm, rm_tokenizer, prompts, out.responses, cfg.batch_size)
    if manager is not None:
        out.harness = harness_scores(runner.model, runner.tokenizer, cfg.lm_eval_tasks, manager, cfg.lm_eval_limit,
                                     cfg.batch_size, cfg.seed, runner.context.positions)
    return out


def sampled_answers(spec: ModelSpec, runner: PolicyRunner, cfg: EvalConfig, prompts: Sequence[Prompt],
                    n_samples: int, out_dir: Path) -> Answers:
    """The answers ``runner`` samples, saved in out_dir/answers/ at once; those an earlier evaluation saved
    under the same key when ``cfg.reuse_answers`` (:mod:`.saved_answers`)."""
    options = {"temperature": cfg.temperature, "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed,
               "batch_size": cfg.batch_size, "further_samples": n_samples}
    key = answers_key(spec.path, runner.fmt.template, prompts, options, torch.device(runner.device).type)
    saved = load_answers(out_dir, spec.name, key) if cfg.reuse_answers else None
    if saved is not None:
        responses, samples, asked_with = saved
        print(f"eval: {spec.name}: answers reused from {out_dir / ANSWERS / spec.name}.json (same model files, "
              f"prompts and sampling options; reuse_answers=false samples them again)", flush=True)
        return Answers(responses, asked_with, samples)
    out = Answers(runner.sample(prompts), runner.fmt.describe())
    out.samples = [runner.sample(prompts, replace(cfg, seed=cfg.seed + 1 + s)) for s in range(n_samples)]
    save_answers(out_dir, spec.name, key, out.responses, out.samples, out.format)
    return out


def length_estimates(responses: Sequence[Response], ids: Sequence[str], seed: int) -> dict[str, Estimate]:
    """Mean answer length in tokens (without the stop token) and characters, and the share that stopped."""
    tokens = [len(r.ids or []) - int(bool(r.ended and r.ids)) for r in responses]
    return {"response_tokens": mean_estimate(tokens, ids, seed, "bootstrap-prompts"),
            "response_chars": mean_estimate([len(str(r)) for r in responses], ids, seed, "bootstrap-prompts"),
            "stopped": rate([bool(r.ended) for r in responses], ids, seed=seed)}


# ----------------------------------------------------------------------------- judging

def add_judge(m: ModelResult, judge: str, outcomes: Sequence[float], prompts: Sequence[Prompt], seed: int = 0,
              judge_id: str | None = None, by_use_case: bool = True) -> None:
    """One judge's outcomes (one per prompt, or per comparison) -> win rate, per-use-case win rates
    and the raw comparisons of ``m``."""
    comps = [Comparison(p.id, float(o), judge, p.use_case, labeler_id=judge_id) for p, o in zip(prompts, outcomes)]
    add_comparisons(m, judge, comps, seed, by_use_case)


def add_comparisons(m: ModelResult, judge: str, comps: Sequence[Comparison], seed: int, by_use_case: bool) -> None:
    if not comps:
        return
    outcomes, groups = [c.outcome for c in comps], [c.prompt_id for c in comps]
    m.comparisons += list(comps)
    m.win_rate[judge] = win_rate(outcomes, groups, seed=seed)
    if by_use_case:
        m.judge_use_case_win_rates[judge] = win_rates_by(outcomes, [c.use_case for c in comps], groups, seed=seed)


# ----------------------------------------------------------------------------- the evaluation

def run_prompts_eval(cfg: EvalConfig) -> EvalResults:
    """Evaluate ``cfg.models`` (and run_dir's policies) on ``cfg.prompts``; write results.json and the report."""
    from .run import _Laps, pick_samples, save_results_and_report  # the shared pieces of the world's evaluation
    laps = _Laps()
    run = RunFolder(cfg.run_dir) if cfg.run_dir else None
    cfg = cfg.with_run_defaults(run.read_run_config() if run else None)
    prompts = load_own_prompts(cfg.prompts, cfg.n_prompts, cfg.seed)
    specs = own_models(cfg)
    rm_path = reward_model_path(cfg)
    judges = chosen_judges(cfg, rm_path)
    check_people_can_rank(judges, specs, cfg.temperature)
    labels = read_labels(cfg.labels, prompts) if cfg.labels else None
    manager = task_manager(cfg.lm_eval_tasks, cfg.lm_eval_include) if cfg.lm_eval_tasks else None
    pool = ModelPool(pick_device(cfg.device))
    check_prompts_fit(specs, cfg, pool, prompts)
    if "judge_model" in judges:  # a wrong judge, or one too short for its instructions: fail before any answer
        try:
            check_judge_context(cfg.judge_model, pool.tokenizer(cfg.judge_model), prompts)
        except ModelLoadError as e:
            raise ConfigError(f"judge_model: {e}") from None
    out_dir = cfg.out_path
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    laps("setup")

    base_spec = specs[cfg.baseline]
    pool.pinned.add(base_spec.path)
    rm = rm_tokenizer = None
    if "reward_model" in judges:
        rm = RewardModel.from_pretrained(rm_path, pool.device).eval()
        rm_tokenizer = load_tokenizer(rm_path)
    # each model answers as often as a task needs, and as often as the labels' tasks had it answer (their
    # tags name each answer: an evaluation with more models than the labelled one must still match them)
    per_model = max(samples_per_model(len(specs)), answers_in_labels(labels) if labels else 1)
    n_samples = per_model - 1 if "people" in judges else 0
    order = [cfg.baseline] + [n for n in specs if n != cfg.baseline]
    answers: dict[str, Answers] = {}
    for name in order:
        laps.restart()
        base = None if name == cfg.baseline else PolicyRunner(base_spec, cfg, pool)
        answers[name] = answer(specs[name], cfg, pool, prompts, base, rm, rm_tokenizer, n_samples, manager, out_dir)
        laps(f"answer:{name}")
    del rm

    ids = [p.id for p in prompts]
    by_use_case = len({p.use_case for p in prompts}) > 1 or any(p.use_case != "other" for p in prompts)
    models = {n: _measured_alone(ModelResult(n, specs[n].kind, specs[n].n_params), answers[n], ids, cfg.seed)
              for n in specs}
    texts = {n: [str(r) for r in a.responses] for n, a in answers.items()}
    others = [n for n in specs if n != cfg.baseline]
    base_answers = answers[cfg.baseline]
    meta_judges: dict[str, str] = {}

    if "reward_model" in judges:
        for n in others:
            add_judge(models[n], "reward_model", reward_model_outcomes(
                answers[n].reward, base_answers.reward, texts[n], texts[cfg.baseline]), prompts, cfg.seed,
                "reward_model", by_use_case)
        meta_judges["reward_model"] = f"{rm_path}: the answer it scores higher wins; equal scores tie"
        laps("judge:reward_model")

    if "judge_model" in judges:
        meta_judges["judge_model"] = _judge_by_model(cfg, pool, prompts, texts, models, others, by_use_case)
        laps("judge:judge_model")

    if "people" in judges:
        samples = {n: [[str(r) for r in s] for s in a.samples] for n, a in answers.items()}
        meta_judges["people"] = _judge_by_people(cfg, out_dir, prompts, texts, samples, n_samples > 0, labels,
                                                 models, others, by_use_case)
        laps("judge:people")

    results = EvalResults(models=[models[n] for n in specs], baseline=cfg.baseline,
                          samples=pick_samples(prompts, texts), mode="prompts",
                          meta=prompts_meta(cfg, prompts, specs, judges, meta_judges, answers))
    html_path = save_results_and_report(results, cfg, out_dir, laps)
    print(f"eval: {len(specs)} models on {len(prompts)} prompts ({', '.join(judges) or 'no judge'}) in "
          f"{results.meta['eval_seconds']:.1f}s -> {out_dir / 'results.json'}, {html_path}")
    return results


def _measured_alone(m: ModelResult, a: Answers, ids: list[str], seed: int) -> ModelResult:
    """``m`` with what its answers alone give: their lengths, reward-model scores, KL to the baseline and
    lm-eval scores."""
    m.benchmarks.update(length_estimates(a.responses, ids, seed))
    if a.reward is not None:
        m.benchmarks["reward_model_score"] = mean_estimate(a.reward, ids, seed, "bootstrap-prompts")
    if a.kl is not None:
        m.benchmarks["kl_to_baseline"] = mean_estimate(a.kl, ids, seed, "bootstrap-prompts")
    m.pretraining.update(a.harness)
    return m


def _judge_by_model(cfg: EvalConfig, pool: ModelPool, prompts: list[Prompt], texts: dict[str, list[str]],
                    models: dict[str, ModelResult], others: list[str], by_use_case: bool) -> str:
    """The judge model compares each of ``others`` with the baseline (both orders); win rates,
    preference and consistency go into ``models``; returns its line of results.json's meta."""
    judge = JudgeModel(pool.model(cfg.judge_model), pool.tokenizer(cfg.judge_model), "auto",
                       max(1, cfg.batch_size // 4), cfg.judge_model)
    ids = [p.id for p in prompts]
    first: list[float] = []
    for n in others:
        verdicts = pairwise_outcomes(judge, prompts, texts[n], texts[cfg.baseline])
        add_judge(models[n], "judge_model", verdicts.outcomes, prompts, cfg.seed, "judge_model", by_use_case)
        # a mean of probabilities in [0, 1]: a proportion's Wilson interval over the prompts, not a bootstrap
        models[n].benchmarks["judge_model_preference"] = share(verdicts.preference, ids, seed=cfg.seed)
        if verdicts.consistent:
            models[n].benchmarks["judge_model_consistency"] = rate(verdicts.consistent)
        first += verdicts.first_position
    return (f"{judge.describe()}; each pair asked in both orders, a verdict that changes with the order is a "
            f"tie" + (f"; it chose the answer shown first in {100 * sum(first) / len(first):.1f}% of "
                      f"{len(first)} verdicts" if first else ""))


def _judge_by_people(cfg: EvalConfig, out_dir: Path, prompts: list[Prompt], texts: dict[str, list[str]],
                     samples: dict[str, list[list[str]]], with_samples: bool, labels,
                     models: dict[str, ModelResult], others: list[str], by_use_case: bool) -> str:
    """Writes the labeling tasks (label_tasks.jsonl; ``with_samples``: each model's extra ``samples``
    too, for rankings of K answers); with people's ``labels``, their win rates, Likert scores and
    flags go into ``models``. Returns the people's line of results.json's meta."""
    n_tasks = write_label_tasks(out_dir / "label_tasks.jsonl", prompts, texts, cfg.baseline, cfg.seed,
                                samples if with_samples else None)
    if labels is not None:
        people = people_judgement(labels, prompts, as_answers(texts, samples), cfg.baseline, cfg.seed)
        if labels.stale == len(labels.rankings):
            warn_all_stale(labels)
        for n in others:
            add_comparisons(models[n], "human", people.comparisons.get(n, []), cfg.seed, by_use_case)
        for n, m in models.items():
            m.likert = people.likert.get(n)
            m.metadata.update(people.flags.get(n, {}))
    return people_meta(out_dir, n_tasks, labels)


def people_meta(out_dir: Path, n_tasks: int, labels: LabelFile | None) -> str:
    text = (f"{out_dir / 'label_tasks.jsonl'}: {n_tasks} ranking tasks (instructgpt label import --kind rank ...; "
            f"after labeling, instructgpt label export --out DIR and rerun with labels=DIR)")
    return text if labels is None else f"{labels.describe()}; tasks: {text}"


def prompts_meta(cfg: EvalConfig, prompts: Sequence[Prompt], specs: dict[str, ModelSpec], judges: list[str],
                 meta_judges: dict[str, str], answers: dict[str, Answers]) -> dict[str, Any]:
    """The report's run table for an evaluation on your own prompts."""
    use_cases = sorted({p.use_case for p in prompts})
    no_kl = [n for n, a in answers.items() if a.kl is None]
    meta: dict[str, Any] = {
        "prompts": f"{cfg.prompts} ({len(prompts)} prompts; use cases: {', '.join(use_cases)})",
        "models": {n: s.path for n, s in specs.items()},
        "temperature": cfg.temperature, "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed,
        "batch_size": cfg.batch_size,   # the sampled answers depend on how the prompts are batched
        "chat_template": cfg.chat_template,
        "asked with": {n: a.format for n, a in answers.items()},
        "judges": ", ".join(JUDGES[j if j != "people" else "human"] for j in judges) or
                  "none (give reward_model=, judge_model= or judges=people)",
        **{f"judge: {JUDGES[j if j != 'people' else 'human']}": v for j, v in meta_judges.items()},
        "kl": f"to {cfg.baseline}, on each model's own answers, log-probs at the sampling temperature"
              + (f"; not measured for {', '.join(no_kl)} (another tokenizer)" if no_kl else ""),
    }
    if cfg.lm_eval_tasks:
        meta["lm_eval"] = (f"tasks {', '.join(cfg.lm_eval_tasks)}" + (f" (limit {cfg.lm_eval_limit})"
                           if cfg.lm_eval_limit else "") + "; plain-text prompts, no chat template")
    meta["not measured"] = ("simulated labelers, truthfulness/toxicity/bias probes and the paper's claims: "
                            "they need the built-in world (instructgpt eval run_dir=RUN)")
    return meta
