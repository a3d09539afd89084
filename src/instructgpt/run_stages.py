"""The stages of ``instructgpt run``, as :class:`Stage` records the pipeline runs (``pipeline.py``).

  world      generate the world, its prompts (with heavy users, near-duplicates,
             PII), demonstrations, corpus, FLAN/T0 data and probes; curate the
             prompts (dedupe, cap per user, split by user, scrub PII); train the
             BPE tokenizer                                  -> world/, data/, tokenizer/
  base       pretrain the tiny base model (and the ~8x larger one)  -> models/base[_large]
  sft        step 1 on the labelers' demonstrations                 -> models/sft
  flan       the FLAN/T0-style baseline: SFT of the base on public-NLP-style data -> models/flan
  round r    step 2 and 3: sample K responses per RM prompt from the latest
             policy (mixed with the world's good and flawed candidates, standing
             in for the paper's several models' outputs), the simulated training
             labelers rank them, the RM is retrained on all comparisons so far,
             PPO and PPO-ptx continue from the latest policies (the KL reference
             stays the SFT model)                 -> data/rankings_r*/, models/round*/
  eval       win rates, metadata, probes, alignment tax, report -> eval/, report.html, report.md

Each stage's config is its stage command's config class with every option filled in
(``instructgpt sft``, ``rm``, ``ppo``, ``eval`` ...): the pipeline hashes it into the stage's key.
Stages hand each other files only (:class:`~instructgpt.run_folder.RunFolder` names every one);
the world is generated once and read back by later stages.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import config as config_mod
from . import time_left as tl
from .run_config import BUILTIN_PTX_WARNING, PROFILES, RUNNING_CHECKPOINTS, RunConfig
from .run_folder import RunFolder


@dataclass
class Stage:
    """One stage of a run: what it runs with, reads and writes."""
    name: str                           # world, base, sft, flan, rankings_r1, rm_r1, ppo_r1, ppo_ptx_r1, eval
    kind: str                           # stages of one kind share a measured rate (time_left.py)
    folder: Path                        # its output folder: stage.json / stage.partial.json live here
    config: Any                         # its full resolved config (a dataclass, or a dict of them)
    run: Callable[[Any], dict | None]   # config -> summary for stage.json
    outputs: tuple[Path, ...] = ()      # what else it writes (world: data/, tokenizer/)
    reads: tuple[str, ...] = ()         # stages it reads without naming them in its config
    resumable: bool = False             # a training stage: continues from its checkpoints
    work: Callable[[], float | None] = lambda: None  # expected work (time_left.Work units), None if unknown


class RunStages:
    """Every stage of one run, from its resolved config; what each stage does."""

    def __init__(self, cfg: RunConfig, run_folder: RunFolder):
        self.cfg, self.run_folder = cfg, run_folder
        self.root = run_folder.root
        self._world = None  # the run's WorldData, read back from world/ when a stage needs it
        self.text = tl.TextStats()

    # ---- the stages

    def all(self) -> list[Stage]:
        """Every stage of the run, in order, with its full resolved config."""
        c = self.cfg
        out = [self.world_stage()]
        if not c.base_model:
            out += [self.pretrain_stage("base", "tiny", c.pretrain_epochs)]
            if c.large_base:
                large_epochs = c.pretrain_epochs if c.pretrain_large_epochs is None else c.pretrain_large_epochs
                out += [self.pretrain_stage("base_large", "large", large_epochs)]
        out += [self.sft_stage("sft", self.run_folder.demonstrations("train"), c.sft_epochs, c.sft_lr)]
        if c.flan:
            out += [self.sft_stage("flan", self.run_folder.flan_train, c.flan_epochs, c.flan_lr)]
        for r in range(1, c.rounds + 1):
            out += self.round_stages(r)
        if c.evaluate:
            out += [self.eval_stage([s.name for s in out])]
        for st in out:
            validate_stage(st)
        return out

    @property
    def base(self) -> str:
        """The base model every policy starts from: models/base, or --base-model as given."""
        return self.cfg.base_model or str(self.run_folder.model("base"))

    def world_config(self) -> dict:
        from .curate import CurateConfig
        from .world import WorldConfig
        c = self.cfg
        return {"world": WorldConfig(seed=c.seed, scale=c.scale, corpus_docs=c.corpus_docs, sft_prompts=c.sft_prompts),
                "curate": CurateConfig(seed=c.seed),
                "tokenizer": None if c.base_model else {"vocab_size": c.vocab_size}}

    def world_stage(self) -> Stage:
        c, run = self.cfg, self.run_folder
        return Stage("world", "world", run.world, self.world_config(), lambda cfg: self.make_world(),
                     outputs=(run.data, run.tokenizer), work=lambda: c.scale * 77_000 + c.corpus_docs)

    def pretrain_stage(self, name: str, size: str, epochs: int) -> Stage:
        from .pretrain import SIZES, PretrainConfig, train_pretrain
        c, run = self.cfg, self.run_folder
        pc = PretrainConfig(out_dir=str(run.model(name)), corpus=str(run.corpus_train),
                            valid_corpus=str(run.corpus_heldout), tokenizer=str(run.tokenizer), size=size,
                            epochs=epochs, lr=c.pretrain_lr if size == "tiny" else c.pretrain_lr / 2, seed=c.seed,
                            **self.runtime(name), **PROFILES["tiny"]["pretrain"])
        layers, width, _ = SIZES[size]
        rel_size = layers * width ** 2 / (SIZES["tiny"][0] * SIZES["tiny"][1] ** 2)
        return Stage(name, "pretrain", run.model(name), pc, lambda cfg: _history(train_pretrain(cfg)),
                     resumable=True,
                     work=lambda: tl.lm_training(self.chars(run.corpus_train, "text"), epochs,
                                                 self.chars(run.corpus_heldout, "text"), rel_size))

    def sft_stage(self, name: str, train: Path, epochs: int, lr: float) -> Stage:
        from .sft import SFTConfig
        c, run = self.cfg, self.run_folder
        valid = run.demonstrations("valid")
        sc = SFTConfig(model=self.base, train=str(train), valid=str(valid), out_dir=str(run.model(name)),
                       epochs=epochs, lr=lr, seed=c.seed, **self.runtime(name), **PROFILES[c.profile]["sft"])
        return Stage(name, "sft", run.model(name), sc, self.train_sft_stage, resumable=True,
                     work=lambda: tl.lm_training(self.chars(train, "prompt", "response"), epochs,
                                                 self.chars(valid, "prompt", "response")))

    def round_stages(self, r: int) -> list[Stage]:
        """Step 2 and 3 once: rankings from the latest policy, RM on all rankings, PPO and PPO-ptx."""
        c, run = self.cfg, self.run_folder
        prev_ptx = run.model("sft") if r == 1 else run.round_model(r - 1, "ppo_ptx")
        out = [self.rankings_stage(r, prev_ptx), self.rm_stage(r)]
        for name, ptx in (("ppo", 0.0), ("ppo_ptx", c.ptx_coef)):
            start = run.model("sft") if r == 1 else run.round_model(r - 1, name)
            out.append(self.ppo_stage(r, name, start, ptx))
        return out

    def rankings_stage(self, r: int, policy: Path) -> Stage:
        from .sample import SampleConfig
        c, run = self.cfg, self.run_folder
        config = {"round": r, "rounds": c.rounds, "k_min": c.k_min, "k_max": c.k_max, "world": str(run.world),
                  "prompts": [str(run.prompts("rm", split)) for split in ("train", "valid")],
                  "sample": SampleConfig(policy=str(policy), prompts=str(run.prompts("rm", "train")), out="-",
                                         k=c.policy_samples, max_new_tokens=c.max_new_tokens, seed=c.seed + r,
                                         device=c.device)}

        def work():
            n = self.records(run.prompts("rm", "train")) / c.rounds + self.records(run.prompts("rm", "valid"))
            return tl.sampling(n * c.policy_samples, self.mean(run.prompts("rm", "train"), "text"), c.max_new_tokens)
        return Stage(f"rankings_r{r}", "rankings", run.rankings(r), config, lambda cfg: self.make_rankings(r, cfg),
                     work=work)

    def rm_stage(self, r: int) -> Stage:
        from .rm import RMConfig
        c, run = self.cfg, self.run_folder
        out = run.round_model(r, "rm")
        rc = RMConfig(model=str(run.model("sft")), train=str(run.rm_train_all(r)),
                      valid=str(run.rankings_file(r, "valid")), reference=str(run.demonstrations("train")),
                      out_dir=str(out), epochs=c.rm_epochs, lr=c.rm_lr, seed=c.seed, **self.runtime(f"rm_r{r}"),
                      **PROFILES[c.profile]["rm"])

        def work():
            k = (c.k_min + c.k_max) / 2
            seq = self.mean(run.prompts("rm", "train"), "text") + self.mean(run.demonstrations("train"), "response")
            rankings = self.records(run.prompts("rm", "train")) * r / c.rounds
            return tl.rm_training(rankings, k, seq, c.rm_epochs, self.chars(run.demonstrations("train"), "prompt",
                                                                            "response"))
        return Stage(f"rm_r{r}", "rm", out, rc, lambda cfg: self.train_rm_stage(r, cfg), outputs=(run.rm_train_all(r),),
                     reads=tuple(f"rankings_r{i}" for i in range(1, r + 1)), resumable=True, work=work)

    def ppo_stage(self, r: int, name: str, start: Path, ptx_coef: float) -> Stage:
        from .ppo import PPOConfig
        c, run = self.cfg, self.run_folder
        out = run.round_model(r, name)
        pc = PPOConfig(policy=str(start), reference=str(run.model("sft")), reward_model=str(run.round_model(r, "rm")),
                       prompts=str(run.prompts("ppo", "train")), out_dir=str(out),
                       pretrain_data=(c.pretrain_data or str(run.corpus_train)) if ptx_coef > 0 else "",
                       ptx_coef=ptx_coef, iterations=c.ppo_iterations,
                       batch_size=c.ppo_batch, minibatch_size=c.ppo_minibatch, lr=c.ppo_lr, kl_coef=c.kl_coef,
                       advantage_estimator=c.ppo_advantage_estimator, samples_per_prompt=c.ppo_samples_per_prompt,
                       max_new_tokens=c.max_new_tokens, warmup_iterations=min(10, c.ppo_iterations // 3),
                       seed=c.seed, **self.runtime(f"{name}_r{r}"), **PROFILES[c.profile]["ppo"],
                       **({"ptx_token_ratio": c.ptx_token_ratio} if ptx_coef > 0 else {}))
        work = lambda: tl.ppo(c.ppo_iterations, c.ppo_batch, self.mean(run.prompts("ppo", "train"), "text"),  # noqa: E731
                              c.max_new_tokens, pc.ppo_epochs, c.ptx_token_ratio if ptx_coef > 0 else 0.0,
                              value_model=pc.advantage_estimator != "rloo")
        return Stage(f"{name}_r{r}", "ppo", out, pc, self.train_ppo_stage, resumable=True, work=work)

    def eval_stage(self, reads: list[str]) -> Stage:
        from .evaluation.config import EvalConfig
        c, run = self.cfg, self.run_folder
        ec = EvalConfig(run_dir=str(self.root), device=c.device).with_run_defaults(config_mod.to_dict(c))
        n_models = 5 + c.flan + (c.large_base and not c.base_model)  # base, base_prompted, sft, ppo, ppo_ptx ...

        def work():
            # perplexity, toxicity continuations, bias and cloze items, continuation items (a ~35-token
            # context once and four ~10-token candidates)
            probes = ec.heldout_tokens + 3 * 40 * tl.DECODE * ec.toxicity_tokens + (60 + 200) * 2 * 20 \
                + ec.continuation_items * 75
            available = self.records(run.test_prompts)
            n_prompts = min(ec.n_prompts, available) if ec.n_prompts else available  # 0: every test prompt
            chars = self.mean(run.test_prompts, "text")
            best_of = tl.best_of_n(ec.best_of_n, n_prompts, chars, ec.max_new_tokens) if ec.best_of_n > 1 else 0.0
            return tl.evaluation(n_models, n_prompts, chars, ec.max_new_tokens, probes) + best_of
        return Stage("eval", "eval", run.eval, ec, self.evaluate, reads=tuple(reads), work=work)

    def runtime(self, stage: str) -> dict[str, Any]:
        """The options of training stage ``stage`` that cannot change its result (not in its key); its tracker
        run is named <run name>-<stage> (its folder's name repeats across rounds: models/round<r>/rm ...), and
        MLflow's store is the run folder's mlflow.db, one for every stage."""
        c = self.cfg
        return {"device": c.device, "progress": c.progress, "save_minutes": c.checkpoint_minutes,
                "keep_checkpoints": max(RUNNING_CHECKPOINTS, c.keep_checkpoints), "report_to": c.report_to,
                "run_name": f"{c.name}-{stage}", "tracking_store": str(self.run_folder.root)}

    # ---- what the stages do

    @property
    def world(self):
        """The run's world (WorldData), read back from world/ once and kept."""
        if self._world is None:
            self._world = self.run_folder.load_world()
        return self._world

    def make_world(self) -> dict:
        from .curate import curate_prompts, hold_out_across
        from .data import Demonstration, write_jsonl
        from .world import build_datasets, train_tokenizer
        run, cfg = self.run_folder, self.world_config()
        wd = build_datasets(config=cfg["world"])
        wd.save(run.world)
        self._world = None  # later stages read the saved world back
        run.data.mkdir(parents=True, exist_ok=True)
        summary: dict[str, Any] = {"world": wd.summary()}
        curated = {name: curate_prompts(prompts, cfg["curate"]) for name, prompts in wd.prompts.items()}
        hold_out_across(list(curated.values()))  # no test or valid prompt repeats another pool's training one
        for name, result in curated.items():
            summary[f"curation_{name}"] = result.summary()
            for split in ("train", "valid", "test"):
                write_jsonl(run.prompts(name, split), result.split(split))
        write_jsonl(run.test_prompts, [p for r in curated.values() for p in r.split("test")])
        by_id = {p.id: p for p in curated["sft"].kept()}
        for split in ("train", "valid"):
            keep = {p.id for p in curated["sft"].split(split)}
            demos = [Demonstration(by_id[d.prompt_id].text, d.response, d.labeler_id, d.prompt_id)
                     for d in wd.sft_demos if d.prompt_id in keep]
            write_jsonl(run.demonstrations(split), demos)
            summary[f"sft_{split}_demos"] = len(demos)
        write_jsonl(run.flan_train, wd.flan + wd.t0)
        write_jsonl(run.corpus_train, [{"text": t} for t in wd.corpus])
        write_jsonl(run.corpus_heldout, [{"text": t} for t in wd.heldout_corpus])
        if cfg["tokenizer"] is not None:
            train_tokenizer(wd.tokenizer_texts(), cfg["tokenizer"]["vocab_size"], run.tokenizer)
        return summary

    def train_sft_stage(self, sc) -> dict:
        from .sft import train_sft
        result = train_sft(sc)
        return {"selected_by": result.selected_by, "val_loss": result.val_loss, "history": result.fit.history}

    def make_rankings(self, r: int, cfg: dict) -> dict:
        """K responses per RM prompt (policy samples + world candidates), ranked by training labelers."""
        from .data import load_prompts, write_jsonl
        from .models import load_policy, load_tokenizer, pick_device
        from .sample import sample_k
        from .world import candidate_responses
        c, run, wd, sc = self.cfg, self.run_folder, self.world, cfg["sample"]
        device = pick_device(sc.device)
        tok, model = load_tokenizer(sc.policy), load_policy(sc.policy, device)
        summary = {}
        for split in ("train", "valid"):
            prompts = load_prompts(run.prompts("rm", split))
            prompts = prompts[(r - 1)::c.rounds] if split == "train" else prompts  # each round ranks new prompts
            rng = random.Random(f"rankings:{c.seed}:{r}:{split}")
            ks = [rng.randint(c.k_min, c.k_max) for _ in prompts]
            samples = sample_k(model, tok, prompts, sc)
            rows = []
            for p, k, own in zip(prompts, ks, samples):
                responses = own + candidate_responses(p, k - len(own), rng, wd.world)
                rng.shuffle(responses)
                ranking = wd.panel.rank(p, responses, rng, heldout=False, world=wd.world)
                if len(ranking.ranking) < 2:
                    continue  # all tied: nothing to learn; counted below
                ranking.prompt_id = p.id
                rows.append(ranking)
            write_jsonl(run.rankings_file(r, split), rows)
            summary[split] = {"rankings": len(rows), "all_tied_dropped": len(prompts) - len(rows),
                              "pairs": sum(len(x.pairs()) for x in rows)}
        return summary

    def train_rm_stage(self, r: int, rc) -> dict:
        """The reward model on every ranking so far (merged into models/round<r>/rm_train_all.jsonl)."""
        from .rm import train_rm
        run = self.run_folder
        rows = [line for i in range(1, r + 1) for line in run.rankings_file(i, "train").read_text().splitlines()
                if line.strip()]
        merged = Path(rc.train)
        merged.parent.mkdir(parents=True, exist_ok=True)
        merged.write_text("".join(line + "\n" for line in rows))
        result = train_rm(rc)
        return {"val_accuracy": result.val_accuracy, "reward_bias": result.reward_bias, "rankings": len(rows)}

    def train_ppo_stage(self, pc) -> dict:
        from .ppo import train_ppo
        if pc.ptx_coef > 0 and self.cfg.base_model and not self.cfg.pretrain_data:
            print(f"warning: {BUILTIN_PTX_WARNING}", file=sys.stderr, flush=True)
        result = train_ppo(pc)
        last = result.history[-1] if result.history else {}
        return {k: last.get(k) for k in ("ppo/score", "ppo/kl", "ppo/response_length", "ppo/ptx_loss")}

    def evaluate(self, ec) -> dict:
        """``instructgpt eval`` on the run folder: it reads the run's settings (run_config.json), its
        world, models, rounds and rankings from the folder, as a later eval of the folder does."""
        from .evaluation.run import run_eval
        results = run_eval(ec)
        return {"models": [m.name for m in results.models]}

    # ---- reading data files for the work estimates

    def chars(self, path: Path, *fields: str) -> float:
        return float(self.text.chars(path, fields)[1])

    def records(self, path: Path) -> float:
        return float(self.text.chars(path, ())[0])

    def mean(self, path: Path, *fields: str) -> float:
        return self.text.mean(path, fields)


def validate_stage(st: Stage) -> None:
    """Every check the stage's own command makes on its config, before anything runs: a run option that makes
    a stage's config invalid (``ppo_minibatch`` not dividing ``ppo_batch``, ``sft_lr=-1``) stops the run at its
    start, naming the stage, not after the stages before it have trained."""
    configs = st.config.values() if isinstance(st.config, dict) else [st.config]
    for cfg in configs:
        check = getattr(cfg, "validate", None)
        if check is None:
            continue
        try:
            check()
        except config_mod.ConfigError as e:
            raise config_mod.ConfigError(f"stage {st.name}: {e} (set from this run's options: see "
                                         f"instructgpt run --help)") from None


def _history(result) -> dict:
    return {"steps": result.steps, "history": result.history}
