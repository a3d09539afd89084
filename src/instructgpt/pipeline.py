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
             stays the SFT model)                 -> data/rankings_r*/, models/round*/
  eval       win rates, metadata, probes, alignment tax, report -> eval/, report.html, report.md

Stages hand each other files only; :class:`~instructgpt.run_folder.RunFolder`
names every one of them. The world is generated once and read back by later
stages; the evaluation is ``instructgpt eval`` on the run folder.

Each stage is a :class:`Stage`: its full resolved config (the stage command's
config class with every option filled in), what it reads and writes, how to run
it. Its key (``stage_keys.py``) hashes that config and what its inputs hold, so

* a stage whose ``stage.json`` has the same key is reused;
* a stage that was interrupted (kill, crash, SIGTERM, Ctrl-C) with the same key
  continues from its last good checkpoint (``stage.partial.json`` holds the key
  it was started with); with another key it starts over, and so does every
  stage that reads it.

A finished stage keeps its final model and metrics; its checkpoints go
(``keep_checkpoints``, ``keep_optimizer``). One run at a time works on a folder
(``run.lock``). Time left is estimated from the work of the remaining stages and
the rates this run has measured (``time_left.py``).
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import config as config_mod
from . import time_left as tl
from .config import ConfigError, opt
from .run_folder import ROUND_STAGES, RunFolder

#: Options of the runs' stages that are not the stage commands' own defaults, in one place: the
#: values RunConfig options left unset take ("run"), and the options given to each stage command,
#: for the built-in tiny base and for a real checkpoint (``--base-model``; the paper's settings for
#: its 1.3B model where they apply: SFT lr 9.65e-6, RM lr 9e-6 for one epoch, PPO lr 5e-6). Every
#: value lands in a stage's resolved config, hence in its key.
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        # ptx_coef 0.03: the tiny SFT model forgets its pretraining (held-out perplexity 2.0 -> 61), so the
        # pretraining gradient is strong; at 1.0 PPO-ptx re-learns the corpus (perplexity 2.5, KL 14.8) and
        # drops 8.5 points of true follow; at 0.1 it repairs more (perplexity 13, continuation +10.8 points
        # over PPO) but pulls towards the base's habits: closed-domain hallucination 62.9% against PPO's
        # 50.5%; at 0.03 perplexity 25, continuation +4.8 [2.4, 7.2], hallucination 53.3%, true follow 70.1%.
        # rm_lr 3e-4: on the test prompts the RM at 1e-3 ranks 66.7 / 58.2 / 47.7% of world / world-policy /
        # policy pairs right, at 3e-4 70.0 / 61.0 / 48.4% (ceilings 79.5 / 77 / 62-65), and PPO keeps more
        # of SFT's true follow (71.9% against 69.5%); a third epoch at 3e-4 overfits (validation loss up).
        # flan_lr 3e-4: FLAN-style answers are a word or two, so a step's loss rests on few tokens and
        # SFT's 1e-3 wrecked the language model (held-out perplexity 10,966, worse than uniform); 3e-4
        # fits the FLAN data as closely (train loss 0.20) with a perplexity near SFT's (40 against 61).
        "run": {"sft_epochs": 8, "sft_lr": 1e-3, "flan_epochs": 3, "flan_lr": 3e-4, "rm_epochs": 2, "rm_lr": 3e-4,
                "ppo_lr": 1e-5, "ptx_coef": 0.03, "eval_prompts": 0},
        # seq_len 256: the context fits a few-shot prefix of the prompted base (128 left room for one or none)
        "pretrain": {"seq_len": 256, "batch_size": 16, "micro_batch_size": 16},
        "sft": {"batch_size": 32, "micro_batch_size": 32, "warmup_steps": 10, "dropout": 0.1},
        "rm": {"batch_size": 16, "micro_batch_size": 16, "warmup_steps": 5},
        "ppo": {"save_every": 10},
    },
    "real": {
        "run": {"sft_epochs": 3, "sft_lr": 1e-5, "flan_epochs": 1, "flan_lr": 1e-5, "rm_epochs": 1, "rm_lr": 9e-6,
                "ppo_lr": 5e-6, "ptx_coef": 1.0, "eval_prompts": 400},
        "sft": {"batch_size": 32, "micro_batch_size": 4, "warmup_steps": 10, "dropout": 0.1},
        "rm": {"batch_size": 16, "micro_batch_size": 2, "warmup_steps": 5},
        "ppo": {"save_every": 5, "micro_batch_size": 4},
    },
}
#: Checkpoints a stage keeps while it runs (for resume); what it keeps once finished is keep_checkpoints.
RUNNING_CHECKPOINTS = 2


@dataclass
class RunConfig:
    """The whole pipeline (``instructgpt run``); every stage's main options."""
    name: str = opt("default", "Run name: outputs go to <runs_dir>/<name>/.")
    runs_dir: str = opt("runs", "Folder holding runs.")
    seed: int = opt(0, "Seed of the world, the data and every stage.")
    scale: float = opt(0.1, "Prompt sets as a fraction of the paper's 13k SFT / 33k RM / 31k PPO prompts (the "
                                "default gives the RM 3,300 ranking prompts).")
    sft_prompts: int = opt(1500, "SFT prompts of the world, one labeler demonstration each, whatever the scale "
                                 "(they cost nothing to generate; curation keeps about 80% for training).")
    corpus_docs: int = opt(12000, "Documents in the generated pretraining corpus.")
    vocab_size: int = opt(4096, "BPE vocabulary of the built-in tokenizer.")
    base_model: str = opt("", "A real checkpoint (folder, .gguf or 'smollm2') instead of pretraining the tiny base; "
                              "its stages then take the paper's settings (printed at the start).")
    large_base: bool = opt(False, "Also pretrain a ~8x larger base model (stands in for 175B GPT-3 in claim (b); "
                                  "adds ~8x the pretraining time).")
    pretrain_epochs: int = opt(4, "Passes over the corpus for the tiny base (validation loss 0.91 after 2, 0.69 after 4).")
    pretrain_large_epochs: int | None = opt(None, "Passes over the corpus for the larger base. Default: "
                                                  "pretrain_epochs (after 1 it is a worse language model than the "
                                                  "tiny base after 4, held-out perplexity 3.73 against 2.01: no "
                                                  "fair stand-in for a larger GPT-3).")
    pretrain_lr: float = opt(2e-3, "Peak learning rate of pretraining.")
    sft_epochs: int | None = opt(None, "SFT epochs (paper: 16). Default: 8 with the built-in base, 3 with "
                                       "--base-model.")
    sft_lr: float | None = opt(None, "SFT peak learning rate. Default: 1e-3 with the built-in base, 1e-5 with "
                                     "--base-model (paper: 9.65e-6).")
    flan_epochs: int | None = opt(None, "Epochs of the FLAN/T0-style baseline's fine-tuning. Default: 3 with the "
                                        "built-in base, 1 with --base-model.")
    flan_lr: float | None = opt(None, "Peak learning rate of the FLAN/T0-style baseline. Default: 3e-4 with the "
                                      "built-in base, 1e-5 with --base-model.")
    k_min: int = opt(4, "Fewest responses per ranking (paper: 4).")
    k_max: int = opt(6, "Most responses per ranking (paper: 9).")
    policy_samples: int = opt(3, "Of the K responses, how many are sampled from the current policy (the RM must "
                                 "rank the policy's own answers, which PPO will produce).")
    rm_epochs: int | None = opt(None, "Reward-model epochs per round (paper: 1). Default: 2 with the built-in base, 1 "
                                      "with --base-model.")
    rm_lr: float | None = opt(None, "Reward-model peak learning rate. Default: 3e-4 with the built-in base, 9e-6 with "
                                    "--base-model (paper).")
    ppo_iterations: int = opt(30, "PPO iterations per round (each = ppo_batch episodes).")
    ppo_batch: int = opt(32, "Episodes per PPO iteration.")
    ppo_minibatch: int = opt(16, "Episodes per PPO optimizer step.")
    ppo_lr: float | None = opt(None, "PPO policy learning rate. Default: 1e-5 with the built-in base, 5e-6 with "
                                     "--base-model (paper, 1.3B).")
    ppo_advantage_estimator: str = opt("gae", "gae: PPO's advantages from a value model initialised from the RM "
                                              "(the paper); rloo: each response against its prompt's other "
                                              "responses, no value model (with ppo_samples_per_prompt >= 2).")
    ppo_samples_per_prompt: int = opt(1, "Responses sampled per PPO prompt (ppo_batch counts responses).")
    kl_coef: float = opt(0.02, "beta, the per-token KL penalty (paper: 0.02).")
    ptx_coef: float | None = opt(None, "PPO-ptx pretraining loss weight (paper: 27.8 at its scale). Default: 0.03 with "
                                       "the built-in base (see PROFILES), 1.0 with --base-model.")
    ptx_token_ratio: float = opt(1.0, "Pretraining tokens per RL token in PPO-ptx (paper: 8).")
    pretrain_data: str = opt("", "PPO-ptx's pretraining corpus (.txt with blank-line separated documents, or .jsonl "
                                 "with 'text'). Default: the built-in world's corpus, which is the tiny base's "
                                 "pretraining data; with --base-model give a sample of that model's pretraining "
                                 "distribution (the built-in corpus is then used with a warning).")
    max_new_tokens: int = opt(48, "Response length limit when sampling.")
    rounds: int = opt(1, "Iterations of steps 2 and 3 (sample, rank, retrain RM, continue PPO).")
    eval_prompts: int | None = opt(None, "Held-out test prompts evaluated, a sample stratified by use case (0 = all). "
                                         "Default: all with the built-in base, 400 with --base-model.")
    continuation_items: int = opt(500, "Items of the evaluation's HellaSwag-like probe (the alignment tax, claim f): "
                                       "four candidate sentences after a held-out document each, 0 = skip. Each "
                                       "model scores them (with SmolLM2-135M on 2 cores about 0.15 s an item).")
    flan: bool = opt(True, "Train the FLAN/T0-style baseline.")
    evaluate: bool = opt(True, "Run the evaluation and write the report.")
    device: str = opt("auto", "auto, cpu, cuda ...")
    report_to: str = opt("none", "Experiment trackers every training stage reports to (comma list): none, "
                                 "tensorboard, wandb, trackio, mlflow; each stage is a run named "
                                 "<stage>-<folder> (see instructgpt sft --help). Not part of the stage keys.")
    progress: bool = opt(True, "Progress bars with time left on training stages (on a terminal; otherwise a line "
                               "every 30 s). The stage lines are always printed.")
    checkpoint_minutes: float = opt(10.0, "A training stage also checkpoints when this many minutes have passed since "
                                          "its last checkpoint (0 = only at epoch ends / every few PPO iterations): "
                                          "bounds what a kill -9 or a preemption without warning loses.")
    keep_checkpoints: int = opt(0, "Checkpoints each finished stage keeps (its newest; 0 = none: the final model and "
                                   "metrics only). With 1 or more PPO stages also keep policy_raw/ (the weights "
                                   f"before the EMA). While a stage runs its {RUNNING_CHECKPOINTS} newest are kept.")
    keep_optimizer: bool = opt(False, "Checkpoints kept by finished stages keep their optimizer state (optim.pt, "
                                      "about 2/3 of their size; needed to train on from them).")
    resume: bool = opt(True, "Continue a stage interrupted earlier (kill, crash, SIGTERM, Ctrl-C) from its last "
                             "good checkpoint when its options are unchanged (false: start it over).")

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
        if self.sft_prompts < 0:
            raise ConfigError("sft_prompts: must be >= 0 (0: scale's share of the paper's 13k)")
        if self.keep_checkpoints < 0:
            raise ConfigError("keep_checkpoints: must be >= 0")
        if self.checkpoint_minutes < 0:
            raise ConfigError("checkpoint_minutes: must be >= 0")
        if self.pretrain_data and not Path(self.pretrain_data).is_file():
            raise ConfigError(f"pretrain_data: {self.pretrain_data}: file not found")

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    @property
    def profile(self) -> str:
        """Which PROFILES entry applies: "real" with --base-model, else "tiny"."""
        return "real" if self.base_model else "tiny"

    def resolved(self) -> tuple[RunConfig, dict[str, Any]]:
        """A copy with every unset option taken from the profile, and {option: value} of those."""
        unset = {k: v for k, v in PROFILES[self.profile]["run"].items() if getattr(self, k) is None}
        return dataclasses.replace(self, **unset), unset


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


@dataclass
class RunResult:
    run_dir: str
    stages: dict[str, dict] = field(default_factory=dict)
    report: str | None = None


class Pipeline:
    """Runs the stages in order: reuses finished ones, resumes interrupted ones, prints progress and time left."""

    def __init__(self, cfg: RunConfig):
        self.cfg, self.profile_defaults = cfg.resolved()
        self.run_folder = RunFolder(cfg.run_dir)
        self.root = self.run_folder.root
        self.root.mkdir(parents=True, exist_ok=True)
        self._world = None  # the run's WorldData, read back from world/ when a stage needs it
        self.timer = tl.TimeLeft()
        self.text = tl.TextStats()
        self.t0 = time.time()
        self.result = RunResult(str(self.root))
        self.keys = None  # StageKeys, made when the run starts

    # ---- running

    def run(self) -> RunResult:
        """The run, holding the folder's lock."""
        from .run_lock import RunLock, describe
        with RunLock(self.run_folder.lock) as lock:
            if lock.took_over:
                print(f"{self.run_folder.lock}: taking over the lock of a run that is no longer running "
                      f"({describe(lock.took_over)})", flush=True)
            return self._run()

    def _run(self) -> RunResult:
        c, run = self.cfg, self.run_folder
        config_mod.save(c, run.run_config)
        _forget_unsaved_world(run)
        plan = self.planned()
        self.print_header(plan)
        for i, (st, key, _) in enumerate(plan):
            self.run_stage(st, key, f"[{i + 1}/{len(plan)}] {st.name}", [s for s, _, status in plan[i + 1:]
                                                                           if status != "done"])
            if st.name == f"ppo_ptx_r{c.rounds}":
                self.link_last_round()
        if c.evaluate:
            self.result.report = str(run.report_html)
        total = time.time() - self.t0
        print(f"run finished in {total / 60:.1f} min: {self.root} ({_folder_size(self.root) / 2**20:.0f} MB)"
              + (f"\nreport: {run.report_html} (and report.md)" if c.evaluate else ""), flush=True)
        return self.result

    def _stage_keys(self):
        from .stage_keys import InputHasher, StageKeys
        aliases = {}
        if self.cfg.base_model == "smollm2":
            from .models import resolve_source
            src = resolve_source("smollm2")
            aliases["smollm2"] = Path(src.folder) / src.gguf_file
        return StageKeys(self.root, InputHasher(self.run_folder.input_hashes), aliases)

    def planned(self) -> list[tuple[Stage, str, str]]:
        """The whole run planned (nothing runs): every stage with its key and status."""
        self.keys = self._stage_keys()
        return self.plan(self.stages())

    def plan(self, stages: list[Stage]) -> list[tuple[Stage, str, str]]:
        """(stage, key, status) for every stage: done (reused), partial (interrupted with the same key:
        resumed or started over), changed (there with another key), new. Keys need no outputs, so the
        whole run is planned before anything runs; earlier measurements feed the time-left estimate."""
        plan = []
        for st in stages:
            key = self.keys.key(st.name, st.config, st.reads, own=(st.folder, *st.outputs))
            done = self.run_folder.read_marker(st.folder)
            partial = self.run_folder.read_partial_marker(st.folder)
            if done is not None and not done.get("resumed_from"):  # a measurement of this machine's rate
                self.timer.record(st.kind, done.get("work"), done.get("seconds"))
            if done is not None and done.get("key") == key:
                status = "done"
            elif partial is not None and partial.get("key") == key:
                status = "partial"
            else:
                status = "changed" if done is not None or partial is not None else "new"
            self.keys.wrote(st.name, key, [st.folder, *st.outputs])  # what later stages' keys read
            plan.append((st, key, status))
        for note in self.keys.hasher.notes:
            print(f"note: {note}", flush=True)
        return plan

    def print_header(self, plan: list[tuple[Stage, str, str]]) -> None:
        counts = {s: sum(1 for _, _, status in plan if status == s) for s in ("done", "partial", "changed", "new")}
        parts = [f"{counts['done']} finished earlier"] if counts["done"] else []
        parts += [f"{counts['partial']} interrupted"] if counts["partial"] else []
        parts += [f"{counts['changed'] + counts['new']} to run"] if counts["changed"] + counts["new"] else []
        print(f"instructgpt run: {self.root}: {len(plan)} stages ({', '.join(parts)})", flush=True)
        if self.cfg.base_model:
            self.print_real_defaults()
        todo = [st for st, _, status in plan if status != "done"]
        left = self.timer.estimate(self.works(todo)) if todo else None
        if left is not None:
            print(f"    about {tl_format(left)} to run (rates measured earlier in this folder)", flush=True)

    def print_real_defaults(self) -> None:
        c, prof = self.cfg, PROFILES["real"]
        print(f"base model {c.base_model}: a real checkpoint, so the paper's settings apply "
              f"(set any of them with key=value):", flush=True)
        if self.profile_defaults:
            print("    " + " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                    for k, v in self.profile_defaults.items()), flush=True)
        for stage in ("sft", "rm", "ppo"):
            print(f"    {stage}: " + " ".join(f"{k}={v}" for k, v in prof[stage].items()), flush=True)
        if c.ptx_coef > 0 and not c.pretrain_data:
            print(f"warning: {_BUILTIN_PTX_WARNING}", file=sys.stderr, flush=True)

    def run_stage(self, st: Stage, key: str, label: str, remaining: list[Stage]) -> None:
        """Reuse, resume or run one stage (its key was planned)."""
        run = self.run_folder
        done = run.read_marker(st.folder)
        if done is not None and done.get("key") == key:
            print(f"{label}: reused ({st.folder})", flush=True)
            self.retain(st)  # e.g. a run killed between the marker and the clean-up
            info = done
        else:
            from . import interrupt
            try:
                info = self.execute(st, key, label)
            except interrupt.Stopped as e:
                e.where = f"during {st.name}" + (f" {e.where}" if e.where else "")
                raise
            self.print_time_left(remaining)
        self.result.stages[st.name] = info

    def execute(self, st: Stage, key: str, label: str) -> dict:
        from .peak_memory import PeakMemory
        run = self.run_folder
        checkpoint = self.resume_point(st, key)
        config = st.config
        if checkpoint is not None:
            print(f"{label}: resuming from {checkpoint} (interrupted earlier; options unchanged)", flush=True)
            config = dataclasses.replace(config, resume=True)
        else:
            print(f"{label}: running ...{self.why_from_scratch(st, key)}", flush=True)
            if st.folder.exists() and st.folder != self.root:
                shutil.rmtree(st.folder)  # a stale, changed or partial stage folder
        st.folder.mkdir(parents=True, exist_ok=True)
        run.write_json(run.partial_marker(st.folder), {"key": key, "stage": st.name, "started": time.time(),
                                                       "pid": os.getpid(), "host": socket.gethostname()})
        work = st.work()
        start = time.time()
        with PeakMemory() as memory:
            summary = st.run(config) or {}
        seconds = round(time.time() - start, 1)
        info = {"key": key, "stage": st.name, "seconds": seconds, "work": work,
                "resumed_from": str(checkpoint) if checkpoint else None, **memory.summary(), "summary": summary}
        run.write_json(run.marker(st.folder), info)
        run.partial_marker(st.folder).unlink(missing_ok=True)
        self.retain(st)
        if checkpoint is None:  # a resumed stage did only part of its work
            self.timer.record(st.kind, work, seconds)
        mem = memory.describe()
        print(f"{label}: done in {seconds:.0f}s" + (f" ({mem})" if mem else ""), flush=True)
        return info

    def resume_point(self, st: Stage, key: str) -> Path | None:
        """The checkpoint an interrupted stage with the same key continues from, or None."""
        from .checkpoint import latest_good_checkpoint
        partial = self.run_folder.read_partial_marker(st.folder)
        if not (st.resumable and self.cfg.resume and partial is not None and partial.get("key") == key):
            return None
        return latest_good_checkpoint(st.folder / "checkpoints")

    def why_from_scratch(self, st: Stage, key: str) -> str:
        partial = self.run_folder.read_partial_marker(st.folder)
        done = self.run_folder.read_marker(st.folder)
        if partial is not None and partial.get("key") == key:
            if not st.resumable:
                return " (interrupted earlier; this stage has no checkpoints: starting over)"
            if not self.cfg.resume:
                return " (interrupted earlier; resume=false: starting over)"
            return " (interrupted earlier before its first checkpoint: starting over)"
        if partial is not None or done is not None:
            return " (its options or inputs changed: starting over)"
        return ""

    def print_time_left(self, remaining: list[Stage]) -> None:
        if not remaining:
            return
        elapsed = time.time() - self.t0
        left = self.timer.estimate(self.works(remaining))
        text = f"    elapsed {tl_format(elapsed)}, "
        text += f"about {tl_format(left)} left" if left is not None else "time left not known yet"
        print(text + f" ({len(remaining)} stage{'s' * (len(remaining) > 1)} to go)", flush=True)

    def works(self, stages: list[Stage]) -> list[tl.Work]:
        return [tl.Work(st.name, st.kind, st.work()) for st in stages]

    def retain(self, st: Stage) -> None:
        """What a finished stage keeps: its final model and metrics; checkpoints only as asked."""
        from .checkpoint import retain
        c = self.cfg
        retain(st.folder / "checkpoints", c.keep_checkpoints, c.keep_optimizer)
        raw = st.folder / "policy_raw"
        if st.kind == "ppo" and c.keep_checkpoints == 0 and raw.is_dir():
            shutil.rmtree(raw)

    def link_last_round(self) -> None:
        run = self.run_folder
        for name in ROUND_STAGES:
            _link(run.model(name), run.round_model(self.cfg.rounds, name))

    # ---- the stages

    def stages(self) -> list[Stage]:
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
                            **self.runtime(), **PROFILES["tiny"]["pretrain"])
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
                       epochs=epochs, lr=lr, seed=c.seed, **self.runtime(), **PROFILES[c.profile]["sft"])
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
                      out_dir=str(out), epochs=c.rm_epochs, lr=c.rm_lr, seed=c.seed, **self.runtime(),
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
                       ptx_coef=ptx_coef, ptx_token_ratio=c.ptx_token_ratio, iterations=c.ppo_iterations,
                       batch_size=c.ppo_batch, minibatch_size=c.ppo_minibatch, lr=c.ppo_lr, kl_coef=c.kl_coef,
                       advantage_estimator=c.ppo_advantage_estimator, samples_per_prompt=c.ppo_samples_per_prompt,
                       max_new_tokens=c.max_new_tokens, warmup_iterations=min(10, c.ppo_iterations // 3),
                       seed=c.seed, **self.runtime(), **PROFILES[c.profile]["ppo"])
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

    def runtime(self) -> dict[str, Any]:
        """The options of every training stage that cannot change its result (not in its key)."""
        c = self.cfg
        return {"device": c.device, "progress": c.progress, "save_minutes": c.checkpoint_minutes,
                "keep_checkpoints": RUNNING_CHECKPOINTS, "report_to": c.report_to}

    # ---- what the stages do

    @property
    def world(self):
        """The run's world (WorldData), read back from world/ once and kept."""
        if self._world is None:
            self._world = self.run_folder.load_world()
        return self._world

    def make_world(self) -> dict:
        from .curate import curate_prompts
        from .data import Demonstration, write_jsonl
        from .world import build_datasets, train_tokenizer
        run, cfg = self.run_folder, self.world_config()
        wd = build_datasets(config=cfg["world"])
        wd.save(run.world)
        self._world = None  # later stages read the saved world back
        run.data.mkdir(parents=True, exist_ok=True)
        summary: dict[str, Any] = {"world": wd.summary()}
        curated = {}
        for name, prompts in wd.prompts.items():
            result = curate_prompts(prompts, cfg["curate"])
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
            print(f"warning: {_BUILTIN_PTX_WARNING}", file=sys.stderr, flush=True)
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


_BUILTIN_PTX_WARNING = ("PPO-ptx mixes the built-in world's synthetic corpus into a real checkpoint's training: it is "
                        "not that model's pretraining distribution, so it measures and limits the wrong alignment tax; "
                        "give pretrain_data=<corpus .txt or .jsonl> with a sample of what the model was pretrained on")


def tl_format(seconds: float) -> str:
    from .progress import format_seconds
    return format_seconds(seconds)


def _history(result) -> dict:
    return {"steps": result.steps, "history": result.history}


def _folder_size(root: Path) -> int:
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file() and not p.is_symlink())


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
