"""``instructgpt run``: the whole InstructGPT pipeline on the built-in world, offline.

Stages, each writing a folder under ``runs/<name>/``:

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
             stays the SFT model)                 -> data/rankings_r*.jsonl, models/round*/
  eval       win rates, metadata, probes, alignment tax, report -> eval/, report.html, report.md

Stages hand each other files only; :class:`~instructgpt.run_folder.RunFolder`
names every one of them. The world is generated once and read back by later
stages (``world.load_world``); the evaluation is ``instructgpt eval`` on the
run folder, so running it again later gives the same results and report.

A stage whose folder holds ``stage.json`` with the same key (a hash of its own
options and of the keys of the stages it reads) is reused; change an option and
that stage and everything after it runs again.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import config as config_mod
from .config import ConfigError, opt
from .curate import CurateConfig, curate_prompts
from .data import Demonstration, load_prompts, write_jsonl
from .run_folder import ROUND_STAGES, RunFolder


@dataclass
class RunConfig:
    """The whole pipeline (``instructgpt run``); every stage's main options."""
    name: str = opt("default", "Run name: outputs go to <runs_dir>/<name>/.")
    runs_dir: str = opt("runs", "Folder holding runs.")
    seed: int = opt(0, "Seed of the world, the data and every stage.")
    scale: float = opt(0.05, "Prompt sets as a fraction of the paper's 13k SFT / 33k RM / 31k PPO prompts.")
    corpus_docs: int = opt(12000, "Documents in the generated pretraining corpus.")
    vocab_size: int = opt(4096, "BPE vocabulary of the built-in tokenizer.")
    base_model: str = opt("", "A real checkpoint (folder, .gguf or 'smollm2') instead of pretraining the tiny base.")
    large_base: bool = opt(False, "Also pretrain a ~8x larger base model (stands in for 175B GPT-3 in claim (b); adds ~8x the pretraining time).")
    pretrain_epochs: int = opt(2, "Passes over the corpus for the tiny base.")
    pretrain_large_epochs: int = opt(1, "Passes over the corpus for the larger base.")
    pretrain_lr: float = opt(2e-3, "Peak learning rate of pretraining.")
    sft_epochs: int = opt(10, "SFT epochs (paper: 16).")
    sft_lr: float = opt(1e-3, "SFT peak learning rate.")
    flan_epochs: int = opt(3, "Epochs of the FLAN/T0-style baseline's fine-tuning.")
    k_min: int = opt(4, "Fewest responses per ranking (paper: 4).")
    k_max: int = opt(6, "Most responses per ranking (paper: 9).")
    policy_samples: int = opt(2, "Of the K responses, how many are sampled from the current policy.")
    rm_epochs: int = opt(2, "Reward-model epochs per round (paper: 1).")
    rm_lr: float = opt(1e-4, "Reward-model peak learning rate.")
    ppo_iterations: int = opt(30, "PPO iterations per round (each = ppo_batch episodes).")
    ppo_batch: int = opt(32, "Episodes per PPO iteration.")
    ppo_minibatch: int = opt(16, "Episodes per PPO optimizer step.")
    ppo_lr: float = opt(1e-5, "PPO policy learning rate.")
    kl_coef: float = opt(0.02, "beta, the per-token KL penalty (paper: 0.02).")
    ptx_coef: float = opt(1.0, "PPO-ptx pretraining loss weight (paper: 27.8 at its scale).")
    ptx_token_ratio: float = opt(1.0, "Pretraining tokens per RL token in PPO-ptx (paper: 8).")
    max_new_tokens: int = opt(48, "Response length limit when sampling.")
    rounds: int = opt(1, "Iterations of steps 2 and 3 (sample, rank, retrain RM, continue PPO).")
    eval_prompts: int = opt(120, "Held-out test prompts evaluated.")
    flan: bool = opt(True, "Train the FLAN/T0-style baseline.")
    evaluate: bool = opt(True, "Run the evaluation and write the report.")
    device: str = opt("auto", "auto, cpu, cuda ...")
    report_to: str = opt("none", "Experiment trackers every training stage reports to (comma list): none, "
                                 "tensorboard, wandb, trackio, mlflow; each stage is a run named "
                                 "<stage>-<folder> (see instructgpt sft --help). Not part of the stage keys.")
    progress: bool = opt(False, "Per-stage progress bars (the stage lines are always printed).")
    resume: bool = opt(False, "Accepted for symmetry: finished stages are always reused.")

    def validate(self) -> None:
        from .tracking import parse_report_to
        parse_report_to(self.report_to)
        if not 2 <= self.k_min <= self.k_max <= 9:
            raise ConfigError("k_min, k_max: need 2 <= k_min <= k_max <= 9")
        if self.policy_samples > self.k_min:
            raise ConfigError("policy_samples: cannot exceed k_min")
        if self.rounds < 1:
            raise ConfigError("rounds: must be >= 1")
        if self.scale <= 0:
            raise ConfigError("scale: must be > 0")

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


# Expected wall time per stage with the defaults; the time-left estimate scales what remains
# by how fast the stages run so far went against these.
WEIGHTS = {"world": 5, "base": 200, "base_large": 1600, "sft": 40, "flan": 40, "rankings": 25, "rm": 120,
           "ppo": 130, "ppo_ptx": 150, "eval": 35}  # seconds measured on 2 idle cores with the defaults


@dataclass
class RunResult:
    run_dir: str
    stages: dict[str, dict] = field(default_factory=dict)
    report: str | None = None


class Pipeline:
    """Runs the stages in order, reusing finished ones; prints progress and time left."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.run_folder = RunFolder(cfg.run_dir)
        self.root = self.run_folder.root
        self.root.mkdir(parents=True, exist_ok=True)
        self._world = None  # the run's WorldData, read back from world/ when a stage needs it
        self.keys: dict[str, str] = {}
        self.t0 = time.time()
        self.total_weight = sum(WEIGHTS[s] for s in self._planned())
        self.done_weight = 0.0
        self.result = RunResult(str(self.root))

    def _planned(self) -> list[str]:
        c = self.cfg
        stages = ["world"] + ([] if c.base_model else ["base"]) + (["base_large"] if c.large_base and not c.base_model else [])
        stages += ["sft"] + (["flan"] if c.flan else [])
        stages += ["rankings", "rm", "ppo", "ppo_ptx"] * c.rounds
        return stages + (["eval"] if c.evaluate else [])

    # ---- stage bookkeeping

    def stage(self, name: str, folder: Path, options: dict, needs: list[str], fn: Callable[[], Any],
              weight_name: str | None = None) -> str:
        """Run ``fn`` unless ``folder/stage.json`` holds the same key; returns the key."""
        key = hashlib.sha256(json.dumps({"stage": name, "options": options,
                                         "needs": [self.keys[n] for n in needs]}, sort_keys=True,
                                        default=str).encode()).hexdigest()[:16]
        done = self.run_folder.read_marker(folder)
        label = f"[{len(self.keys) + 1}/{len(self._planned())}] {name}"
        weight = WEIGHTS[weight_name or name]
        if done is not None and done.get("key") == key:
            print(f"{label}: reused ({folder})", flush=True)
            info = done
            self.total_weight -= weight  # no time spent, none expected
        else:
            print(f"{label}: running ...", flush=True)
            start = time.time()
            if folder.exists() and folder != self.root:
                shutil.rmtree(folder)  # a stale or partial stage folder
            folder.mkdir(parents=True, exist_ok=True)
            out = fn() or {}
            info = {"key": key, "stage": name, "seconds": round(time.time() - start, 1), "summary": out}
            RunFolder.marker(folder).write_text(json.dumps(info, indent=2, default=str) + "\n")
            print(f"{label}: done in {info['seconds']:.0f}s", flush=True)
            self.done_weight += weight
            elapsed = time.time() - self.t0
            if self.done_weight < self.total_weight:
                left = (self.total_weight - self.done_weight) * elapsed / self.done_weight
                print(f"    elapsed {elapsed / 60:.1f} min, about {left / 60:.1f} min left", flush=True)
        self.keys[name] = key
        self.result.stages[name] = info
        return key

    # ---- the stages

    def run(self) -> RunResult:
        c, run = self.cfg, self.run_folder
        config_mod.save(c, run.run_config)
        _forget_unsaved_world(run)
        self.stage("world", run.world, _subset(c, "seed scale corpus_docs vocab_size base_model"), [],
                   self.make_world)
        base = self.pretrain_bases()
        self.stage("sft", run.model("sft"), _subset(c, "sft_epochs sft_lr seed"), ["base"],
                   lambda: self.train_sft_stage(base, run.demonstrations("train"), run.model("sft"), c.sft_epochs))
        if c.flan:
            self.stage("flan", run.model("flan"), _subset(c, "flan_epochs sft_lr seed"), ["base"],
                       lambda: self.train_sft_stage(base, run.flan_train, run.model("flan"), c.flan_epochs))
        policy, ptx_policy = run.model("sft"), run.model("sft")
        for r in range(1, c.rounds + 1):
            policy, ptx_policy = self.run_round(r, policy, ptx_policy)
        for name in ROUND_STAGES:
            _link(run.model(name), run.round_model(c.rounds, name))
        if c.evaluate:
            self.stage("eval", run.eval, _subset(c, "eval_prompts seed max_new_tokens"),
                       [k for k in self.keys], self.evaluate)
            self.result.report = str(run.report_html)
        total = time.time() - self.t0
        print(f"run finished in {total / 60:.1f} min: {self.root}"
              + (f"\nreport: {run.report_html} (and report.md)" if c.evaluate else ""), flush=True)
        return self.result

    @property
    def world(self):
        """The run's world (WorldData), read back from world/ once and kept."""
        if self._world is None:
            self._world = self.run_folder.load_world()
        return self._world

    def make_world(self) -> dict:
        from .world import build_datasets, train_tokenizer
        c, run = self.cfg, self.run_folder
        wd = build_datasets(seed=c.seed, scale=c.scale, corpus_docs=c.corpus_docs)
        wd.save(run.world)
        self._world = None  # later stages read the saved world back
        run.data.mkdir(parents=True, exist_ok=True)
        summary: dict[str, Any] = {"world": wd.summary()}
        curated = {}
        for name, prompts in wd.prompts.items():
            result = curate_prompts(prompts, CurateConfig(seed=c.seed))
            curated[name] = result
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
        if not c.base_model:
            train_tokenizer(wd.tokenizer_texts(), c.vocab_size, run.tokenizer)
        return summary

    def pretrain_bases(self) -> Path:
        c, run = self.cfg, self.run_folder
        if c.base_model:
            self.keys["base"] = hashlib.sha256(c.base_model.encode()).hexdigest()[:16]
            return Path(c.base_model) if c.base_model != "smollm2" else c.base_model  # type: ignore[return-value]
        from .pretrain import PretrainConfig, train_pretrain
        for name, size, epochs in (("base", "tiny", c.pretrain_epochs), ("base_large", "large", c.pretrain_large_epochs)):
            if name == "base_large" and not c.large_base:
                continue
            out = run.model(name)
            pc = PretrainConfig(out_dir=str(out), corpus=str(run.corpus_train), valid_corpus=str(run.corpus_heldout),
                                tokenizer=str(run.tokenizer), size=size, epochs=epochs,
                                lr=c.pretrain_lr if size == "tiny" else c.pretrain_lr / 2,
                                seq_len=128, batch_size=32, micro_batch_size=32, seed=c.seed, device=c.device,
                                progress=c.progress, report_to=c.report_to)
            key = {k: v for k, v in asdict(pc).items() if k not in ("report_to", "run_name")}
            self.stage(name, out, key, ["world"], lambda pc=pc: _history(train_pretrain(pc)))
        return run.model("base")

    def train_sft_stage(self, base, train: Path, out: Path, epochs: int) -> dict:
        from .sft import SFTConfig, train_sft
        c = self.cfg
        valid = self.run_folder.demonstrations("valid")
        sc = SFTConfig(model=str(base), train=str(train), valid=str(valid) if valid.exists() else "",
                       out_dir=str(out), epochs=epochs, lr=c.sft_lr, batch_size=32, micro_batch_size=32,
                       warmup_steps=10, dropout=0.1, seed=c.seed, device=c.device, progress=c.progress,
                       report_to=c.report_to)
        result = train_sft(sc)
        return {"selected_by": result.selected_by, "val_loss": result.val_loss, "history": result.fit.history}

    def run_round(self, r: int, policy: Path, ptx_policy: Path) -> tuple[Path, Path]:
        """Step 2 and 3 once: rankings from the latest policy, RM on all rankings, PPO and PPO-ptx."""
        c, run = self.cfg, self.run_folder
        prev = [f"rankings_r{i}" for i in range(1, r)]
        self.stage(f"rankings_r{r}", run.rankings(r),
                   _subset(c, "k_min k_max policy_samples max_new_tokens seed rounds"),
                   ["world", "sft"] + ([f"ppo_ptx_r{r - 1}"] if r > 1 else []),
                   lambda: self.make_rankings(r, ptx_policy), weight_name="rankings")
        rank_files = [run.rankings_file(i, "train") for i in range(1, r + 1)]
        rm = run.round_model(r, "rm")
        self.stage(f"rm_r{r}", rm, _subset(c, "rm_epochs rm_lr seed"), ["sft", f"rankings_r{r}"] + prev,
                   lambda: self.train_rm_stage(rank_files, run.rankings_file(r, "valid"), rm, run.rm_train_all(r)),
                   weight_name="rm")
        outs = []
        for name, start, ptx in (("ppo", policy, 0.0), ("ppo_ptx", ptx_policy, c.ptx_coef)):
            key_needs = [f"rm_r{r}", "sft"] + ([f"{name}_r{r - 1}"] if r > 1 else [])
            opts = _subset(c, "ppo_iterations ppo_batch ppo_minibatch ppo_lr kl_coef max_new_tokens seed")
            opts["ptx"] = [ptx, c.ptx_token_ratio]
            out = run.round_model(r, name)
            self.stage(f"{name}_r{r}", out, opts, key_needs,
                       lambda start=start, out=out, ptx=ptx: self.train_ppo_stage(start, rm, out, ptx),
                       weight_name=name)
            outs.append(out)
        return outs[0], outs[1]

    def make_rankings(self, r: int, policy: Path) -> dict:
        """K responses per RM prompt (policy samples + world candidates), ranked by training labelers."""
        from .models import load_policy, load_tokenizer, pick_device
        from .sample import SampleConfig, sample_k
        from .world import candidate_responses
        c, run, wd = self.cfg, self.run_folder, self.world
        device = pick_device(c.device)
        tok, model = load_tokenizer(policy), load_policy(policy, device)
        summary = {}
        for split in ("train", "valid"):
            prompts = load_prompts(run.prompts("rm", split))
            prompts = prompts[(r - 1)::c.rounds] if split == "train" else prompts  # each round ranks new prompts
            rng = random.Random(f"rankings:{c.seed}:{r}:{split}")
            ks = [rng.randint(c.k_min, c.k_max) for _ in prompts]
            samples = sample_k(model, tok, prompts, SampleConfig(policy=str(policy), prompts="-", out="-",
                                                                k=c.policy_samples, max_new_tokens=c.max_new_tokens,
                                                                seed=c.seed + r))
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

    def train_rm_stage(self, rank_files: list[Path], valid: Path, out: Path, merged: Path) -> dict:
        """The reward model on every ranking so far (``rank_files`` merged into ``merged``)."""
        from .rm import RMConfig, train_rm
        c, run = self.cfg, self.run_folder
        rows = [line for f in rank_files for line in f.read_text().splitlines() if line.strip()]
        merged.parent.mkdir(parents=True, exist_ok=True)
        merged.write_text("".join(line + "\n" for line in rows))
        rc = RMConfig(model=str(run.model("sft")), train=str(merged), valid=str(valid), out_dir=str(out),
                      reference=str(run.demonstrations("train")), epochs=c.rm_epochs, lr=c.rm_lr,
                      batch_size=16, micro_batch_size=16, warmup_steps=5, seed=c.seed, device=c.device,
                      progress=c.progress, report_to=c.report_to)
        result = train_rm(rc)
        return {"val_accuracy": result.val_accuracy, "reward_bias": result.reward_bias, "rankings": len(rows)}

    def train_ppo_stage(self, start: Path, rm: Path, out: Path, ptx_coef: float) -> dict:
        from .ppo import PPOConfig, train_ppo
        c, run = self.cfg, self.run_folder
        pc = PPOConfig(policy=str(start), reference=str(run.model("sft")), reward_model=str(rm),
                       prompts=str(run.prompts("ppo", "train")), out_dir=str(out),
                       pretrain_data=str(run.corpus_train) if ptx_coef > 0 else "",
                       ptx_coef=ptx_coef, ptx_token_ratio=c.ptx_token_ratio, iterations=c.ppo_iterations,
                       batch_size=c.ppo_batch, minibatch_size=c.ppo_minibatch, lr=c.ppo_lr, kl_coef=c.kl_coef,
                       max_new_tokens=c.max_new_tokens, warmup_iterations=min(10, c.ppo_iterations // 3),
                       seed=c.seed, device=c.device, progress=c.progress, save_every=10, report_to=c.report_to)
        result = train_ppo(pc)
        last = result.history[-1] if result.history else {}
        return {k: last.get(k) for k in ("ppo/score", "ppo/kl", "ppo/response_length", "ppo/ptx_loss")}

    def evaluate(self) -> dict:
        """``instructgpt eval`` on the run folder: it reads the run's settings (run_config.json), its
        world, models, rounds and rankings from the folder, as a later eval of the folder does."""
        from .evaluation.config import EvalConfig
        from .evaluation.run import run_eval
        results = run_eval(EvalConfig(run_dir=str(self.root), device=self.cfg.device))
        return {"models": [m.name for m in results.models]}


def _subset(cfg: RunConfig, names: str) -> dict:
    return {n: getattr(cfg, n) for n in names.split()}


def _history(result) -> dict:
    return {"steps": result.steps, "history": result.history}


def _link(link: Path, target: Path) -> None:
    """models/rm -> round<N>/rm (a relative symlink, replaced if present)."""
    if link.is_symlink() or link.exists():
        if link.is_symlink() or link.is_file():
            link.unlink()
        else:
            shutil.rmtree(link)
    link.symlink_to(target.relative_to(link.parent), target_is_directory=True)


def _forget_unsaved_world(run: RunFolder) -> None:
    """A world/ finished by an older version holds no manifest.json and cannot be read back:
    drop its stage marker, so the world stage writes it again (same seed, same world and key)."""
    from .world.datasets import MANIFEST
    marker = run.marker(run.world)
    if marker.is_file() and not (run.world / MANIFEST).is_file():
        print(f"{run.world}: saved without {MANIFEST} (older version); writing the world again", flush=True)
        marker.unlink()


def run_pipeline(cfg: RunConfig) -> RunResult:
    return Pipeline(cfg).run()
