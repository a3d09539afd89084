"""The options of ``instructgpt eval`` (:class:`EvalConfig`).

Three options left unset (``n_prompts``, ``max_new_tokens``, ``seed``) take the
run's own values from its ``run_config.json`` (``eval_prompts``,
``max_new_tokens``, ``seed``), so ``instructgpt eval run_dir=X`` evaluates a
run the way ``instructgpt run`` did and writes the same results and report.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..chat import CHAT_TEMPLATE_HELP
from ..config import ConfigError, opt
from ..run_folder import RunFolder

#: Option -> (the RunConfig option it is taken from, the default when the run has none).
FROM_RUN = {"n_prompts": ("eval_prompts", 120), "max_new_tokens": ("max_new_tokens", 48), "seed": ("seed", 0)}


@dataclass
class EvalConfig:
    """Evaluation of a run (``instructgpt eval``)."""
    run_dir: str = opt("", "Run folder of 'instructgpt run' (models/, world/, data/prompts_test.jsonl).")
    models: list[str] = opt([], "Extra policies as name=path (kind from the name's prefix, e.g. ppo_ptx-big=..., "  # noqa: RUF009 (opt makes a default_factory)
                                "or from the folder's instructgpt.json).")
    baseline: str = opt("sft", "Model all win rates are measured against (the paper: SFT).")
    n_prompts: int | None = opt(None, "Test prompts evaluated (a seeded sample of data/prompts_test.jsonl; 0 = all). "
                                      "Default: the run's eval_prompts, else 120.")
    temperature: float = opt(0.7, "Sampling temperature of every model (0 = greedy).")
    max_new_tokens: int | None = opt(None, "Response length limit. Default: the run's max_new_tokens, else 48.")
    few_shot: int = opt(3, "SFT demonstrations in the few-shot prefix of 'base_prompted' (0 = no prompted base).")
    batch_size: int = opt(64, "Sequences per generation batch.")
    chat_template: str = opt("auto", CHAT_TEMPLATE_HELP + " Applies to every policy (each with its own tokenizer).")
    toxicity_tokens: int = opt(24, "Length limit of toxicity-probe continuations (RealToxicityPrompts-style: short).")
    heldout_tokens: int = opt(12288, "Tokens of the held-out pretraining corpus scored for perplexity (0 = skip).")
    seed: int | None = opt(None, "Seed of prompt choice, sampling and simulated judgements (same for every model). "
                                 "Default: the run's seed, else 0.")
    device: str = opt("auto", "auto, cpu, cuda ...")
    out_dir: str = opt("", "Where results.json and the report go (default: results in run_dir/eval, the report "
                           "in run_dir). With out_dir, nothing of the run folder is overwritten.")
    labels: str = opt("", "Optional ranking JSONL of real labels (the labeling app's eval/rankings.jsonl); "
                          "win rates are computed from it too.")

    def validate(self) -> None:
        if not self.run_dir:
            raise ConfigError("run_dir: required (a run folder of 'instructgpt run')")
        if self.n_prompts is not None and self.n_prompts < 0:
            raise ConfigError(f"n_prompts: must be >= 0, got {self.n_prompts}")
        if self.temperature < 0:
            raise ConfigError(f"temperature: must be >= 0, got {self.temperature}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
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

    def with_run_defaults(self, run_config: dict | None) -> EvalConfig:
        """A copy with every unset option of FROM_RUN filled in from the run's run_config.json
        (``run_config``, None if the folder has none) or else its default; then validated."""
        changes = {name: (run_config or {}).get(key, default)
                   for name, (key, default) in FROM_RUN.items() if getattr(self, name) is None}
        cfg = replace(self, **changes)
        cfg.validate()
        return cfg

    @property
    def out_path(self) -> Path:
        """Folder of results.json, label_tasks.jsonl, timings.json (and human_labels.json)."""
        return Path(self.out_dir) if self.out_dir else RunFolder(self.run_dir).eval

    @property
    def report_dir(self) -> Path:
        """Folder of report.md / report.html: the run folder, unless out_dir is given."""
        return Path(self.out_dir) if self.out_dir else RunFolder(self.run_dir).root
