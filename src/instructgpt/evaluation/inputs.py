"""What an evaluation reads from a run folder, all of it named by :class:`~instructgpt.run_folder.RunFolder`.

The pipeline hands ``instructgpt eval`` nothing but the run folder, so a later
``instructgpt eval run_dir=X`` reads exactly what the run's own evaluation read:

====================================================  =========================================
run_config.json                                       the run's eval settings (seed, prompts ...)
world/                                                labeler panel, knowledge base, probes,
                                                      SFT demonstrations, held-out corpus
data/prompts_test.jsonl                               the test prompts
models/{base,sft,ppo,ppo_ptx,flan ...}/, models/rm/   the policies and the reward model
models/round<r>/{rm,ppo,ppo_ptx}/stage.json           each round's RM accuracy and PPO outcome
data/prompts_rm_train.jsonl, data/rankings_r1/        the RM comparisons (labeler agreement)
models/ppo*/metrics.jsonl (and per round)             PPO training curves
====================================================  =========================================
"""

from __future__ import annotations

import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError
from ..data import Prompt, Ranking, load_prompts, load_rankings
from ..records import read_metrics
from ..run_folder import RunFolder
from ..world import WorldData
from .config import EvalConfig
from .policies import PROMPTED, ModelSpec, discover_models, expected_policies

#: Metric keys of PPO metrics.jsonl kept as training curves.
CURVE_KEYS = ("ppo/score", "ppo/kl", "ppo/response_length", "ppo/kl_coef", "ppo/ptx_loss",
              "ppo/entropy", "ppo/eos_fraction")


@dataclass
class EvalInputs:
    """Everything an evaluation works from (besides the models' weights)."""
    world: WorldData
    prompts: list[Prompt]                 # the test prompts evaluated
    specs: dict[str, ModelSpec]           # the policies, in report order
    demos: list[tuple[str, str]]          # few-shot (prompt, demonstration) pairs of base_prompted
    reward_model: Path | None             # models/rm, if the run has one
    round_summaries: dict[str, str]       # "round r" -> its RM and PPO outcome, in words
    rm_prompts: list[Prompt]              # the RM training prompts ...
    rm_rankings: list[Ranking]            # ... and the first round's rankings of them
    training_curves: dict[str, list[dict[str, float]]]
    missing: list[str] = field(default_factory=list)  # policies the run makes that are not there


def read_inputs(cfg: EvalConfig, run: RunFolder) -> EvalInputs:
    """The inputs of evaluating ``run`` with ``cfg`` (its options resolved)."""
    if not run.root.is_dir():
        raise FileNotFoundError(f"{run.root}: run folder not found")
    if not run.world.is_dir() and not run.run_config.is_file():
        raise FileNotFoundError(f"{run.root}: not a folder of 'instructgpt run' (no world/, no run_config.json); "
                                f"to evaluate models of your own, give prompts=FILE models=name=PATH,...")
    world = run.load_world()
    specs = discover_models(run.root, cfg.models, cfg.few_shot)
    missing = [name for name in expected_policies(run) if name not in specs]
    if missing:
        print(f"eval: warning: {', '.join(str(run.model(n)) for n in missing)}: missing, though the run's options "
              f"make {'it' if len(missing) == 1 else 'them'} (an unfinished run?); evaluating the models found, "
              f"and the report says so", file=sys.stderr, flush=True)
    if cfg.baseline not in specs:
        raise ConfigError(f"baseline: {cfg.baseline!r} is not among the models found "
                          f"({', '.join(specs) or 'none'}) in {run.models}")
    demos = few_shot_demos(world, cfg.few_shot, cfg.seed)
    if not demos:
        specs.pop(PROMPTED, None)
    rm = Path(cfg.reward_model) if cfg.reward_model else run.model("rm")
    if cfg.reward_model and not (rm / "reward_model.json").is_file():
        raise ConfigError(f"reward_model: {rm}: not a reward-model folder (no reward_model.json)")
    rounds = run_rounds(run)
    curves = training_curves(run.root)
    if len(rounds) > 1:  # every round's curves as well as the last round's
        curves.update(training_curves(run.root, {f"{name}_r{r}": run.round_model(r, name)
                                                 for r in rounds for name in ("ppo", "ppo_ptx")}))
    rm_prompts, rm_rankings = comparison_sets(run)
    return EvalInputs(world=world, prompts=load_test_prompts(run.root, cfg.n_prompts, cfg.seed), specs=specs,
                      demos=demos, reward_model=rm if (rm / "reward_model.json").is_file() else None,
                      round_summaries=round_summaries(run, rounds), rm_prompts=rm_prompts, rm_rankings=rm_rankings,
                      training_curves=curves, missing=missing)


def load_test_prompts(run_dir: str | Path, n: int, seed: int = 0) -> list[Prompt]:
    """A seeded sample of ``n`` curated test prompts, stratified by use case (all if n is 0 or
    more than there are), in file order."""
    path = RunFolder(run_dir).test_prompts
    if not path.is_file():
        raise FileNotFoundError(f"{path}: test prompts not found")
    prompts = [p for p in load_prompts(path) if p.split in (None, "test")]
    if not prompts:
        raise FileNotFoundError(f"{path}: no test prompts")
    return stratified_sample(prompts, n, seed)


def stratified_sample(prompts: list[Prompt], n: int, seed: int = 0) -> list[Prompt]:
    """``n`` of ``prompts`` (all if n is 0 or more than there are), in their order, each use case
    taking its share of the sample: ``n * count / total`` rounded by largest remainder.

    Proportional allocation keeps every statistic an unweighted mean over the sample while a
    rare use case (the closed-domain tasks behind the hallucination claim are ~15% of prompts)
    can never be under-drawn by chance; within a use case the draw is seeded by its name."""
    if not n or n >= len(prompts):
        return list(prompts)
    by_case: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        by_case.setdefault(p.use_case, []).append(i)
    exact = {uc: n * len(idx) / len(prompts) for uc, idx in by_case.items()}
    quota = {uc: math.floor(x) for uc, x in exact.items()}
    by_remainder = sorted(exact, key=lambda uc: (-(exact[uc] - quota[uc]), uc))
    for uc in by_remainder[:n - sum(quota.values())]:
        quota[uc] += 1
    keep = set()
    for uc, idx in by_case.items():
        keep.update(random.Random(f"eval-prompts:{seed}:{uc}").sample(idx, quota[uc]))
    return [p for i, p in enumerate(prompts) if i in keep]


def few_shot_demos(world_data: WorldData, k: int, seed: int = 0, max_chars: int = 300) -> list[tuple[str, str]]:
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
        folders = {f.name: f for f in sorted(RunFolder(run_dir).models.glob("ppo*"))}
    for name, folder in folders.items():
        rows = []
        for r in read_metrics(Path(folder) / "metrics.jsonl"):
            row = {k: float(v) for k, v in r.items()
                   if (k in CURVE_KEYS or k == "step") and isinstance(v, (int, float))
                   and math.isfinite(float(v))}
            if len(row) > 1:
                rows.append(row)
        if rows:
            out[name] = rows
    return out


def run_rounds(run: RunFolder) -> list[int]:
    """The rounds of the run: 1..rounds of its run_config.json, else the round folders found."""
    config = run.read_run_config() or {}
    if isinstance(config.get("rounds"), int):
        return [r for r in range(1, config["rounds"] + 1) if run.round(r).is_dir()]
    return run.rounds()


#: PPO iterations whose mean the round summaries give (one iteration's batch is a few dozen prompts).
LAST_ITERATIONS = 10


def round_summaries(run: RunFolder, rounds: list[int]) -> dict[str, str]:
    """"round r" -> "RM on N rankings, validation accuracy A; ppo: RM score S and KL K, means of the last 10
    of 30 iterations; ...", from the stage markers of the round's RM and PPO stages and their metrics.jsonl
    (rounds not finished are left out)."""
    out = {}
    for r in rounds:
        rm = (run.read_marker(run.round_model(r, "rm")) or {}).get("summary")
        if not rm:
            continue
        acc = rm.get("val_accuracy")
        line = f"RM on {rm.get('rankings')} rankings, validation accuracy " + \
            (f"{acc:.3f}" if acc is not None else "n/a")
        for name in ("ppo", "ppo_ptx"):
            folder = run.round_model(r, name)
            if ((run.read_marker(folder) or {}).get("summary") or {}).get("ppo/score") is None:
                continue
            rows = [m for m in read_metrics(folder / "metrics.jsonl") if "ppo/score" in m and "ppo/kl" in m]
            last = rows[-LAST_ITERATIONS:]
            if last:
                score, kl = (sum(m[k] for m in last) / len(last) for k in ("ppo/score", "ppo/kl"))
                line += (f"; {name}: RM score {score:.3f} and KL {kl:.3f}, means of the last {len(last)} of "
                         f"{len(rows)} iterations")
        out[f"round {r}"] = line
    return out


def comparison_sets(run: RunFolder) -> tuple[list[Prompt], list[Ranking]]:
    """The RM training prompts and the first round's rankings of them (empty if the run has none)."""
    prompts_file, rankings_file = run.prompts("rm", "train"), run.rankings_file(1, "train")
    if not (prompts_file.is_file() and rankings_file.is_file()):
        return [], []
    return load_prompts(prompts_file), load_rankings(rankings_file)
