"""The options of ``instructgpt eval`` (:class:`EvalConfig`).

Two ways to evaluate:

* ``run_dir=X``: a run of the built-in world (its policies, test prompts,
  simulated labelers, probes and the paper's claims). Options left unset
  (``n_prompts``, ``max_new_tokens``, ``seed``, ``continuation_items``) take the run's own values
  from its ``run_config.json`` (``eval_prompts``, ``max_new_tokens``, ``seed``, ``continuation_items``), so
  ``instructgpt eval run_dir=X`` evaluates a run the way ``instructgpt run``
  did and writes the same results and report.
* ``prompts=FILE models=a=PATH,b=PATH baseline=a``: any models on your own
  prompts, judged by the judges you choose (a reward model, a judge model,
  people through the labeling app); no world needed (``run_dir`` optional: its
  policies and reward model join in).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ..chat import CHAT_TEMPLATE_HELP
from ..config import ConfigError, changed_from_default, check_seed, from_dict, opt
from ..runtime import check_device
from ..run_folder import RunFolder

#: Option -> (the RunConfig option it is taken from, the default when the run has none).
FROM_RUN = {"n_prompts": ("eval_prompts", 120), "max_new_tokens": ("max_new_tokens", 48), "seed": ("seed", 0),
            "continuation_items": ("continuation_items", 500)}

#: Options read only by an evaluation of the built-in world (``run_dir=`` without ``prompts=``): its simulated
#: labelers, best-of-n table, prompted base and probes.
WORLD_ONLY = ("judgements", "best_of_n", "few_shot", "toxicity_tokens", "heldout_tokens", "continuation_items")

#: The judges of ``prompts=`` evaluations, and the option each needs.
JUDGE_INPUTS = {"reward_model": "reward_model", "judge_model": "judge_model", "people": "labels"}


@dataclass
class EvalConfig:
    """Evaluation of a run (``instructgpt eval run_dir=...``) or of any models on your prompts (``prompts=...``)."""
    run_dir: str = opt("", "Run folder of 'instructgpt run' (models/, world/, data/prompts_test.jsonl).")
    prompts: str = opt("", "Your own prompts (JSONL: id, text or messages, user_id, use_case?; docs/data-formats.md): "
                           "evaluate the models on them, no built-in world needed (docs/evaluation.md).")
    models: list[str] = opt([], "Policies as name=path (a model folder, .gguf file or smollm2), comma-separated. "  # noqa: RUF009 (opt makes a default_factory)
                                "Kind from the name's prefix (e.g. ppo_ptx-big=...) or the folder's "
                                "instructgpt.json; with prompts= any name goes.")
    baseline: str = opt("sft", "Model all win rates are measured against (the paper: SFT).")
    reward_model: str = opt("", "Judge: a reward-model folder ('instructgpt rm'); the answer it scores higher wins. "
                                "Default with run_dir: the run's models/rm.")
    judge_model: str = opt("", "Judge: a causal LM (model folder, .gguf file or smollm2) asked which answer is "
                               "better, in both orders (docs/evaluation.md).")
    judges: list[str] = opt([], "Judges of prompts= evaluations: reward_model, judge_model, people "  # noqa: RUF009
                                "(default: each whose input is given; people = labels=).")
    n_prompts: int | None = opt(None, "Prompts evaluated (a seeded sample; 0 = all). Default: the run's eval_prompts, "
                                      "else 120; with prompts=, all.")
    judgements: int = opt(3, "Simulated labelers judging each pair of answers, per labeler group (built-in world). "
                             "More shrink the labelers' noise in the win rates; the prompts' spread stays.")
    best_of_n: int = opt(4, "Built-in world: the SFT policy samples this many answers per test prompt, and the best "
                            "of the first 1, 2, 4 ... is picked by the reward model and by the labelers' noiseless "
                            "utility; the report gives each pick's true follow rate (what the RM's choice is "
                            "worth; 0 or 1 = off).")
    temperature: float = opt(0.7, "Sampling temperature of every model (0 = greedy).")
    max_new_tokens: int | None = opt(None, "Response length limit. Default: the run's max_new_tokens, else 48.")
    few_shot: int = opt(3, "SFT demonstrations in the few-shot prefix of 'base_prompted' (0 = no prompted base).")
    batch_size: int = opt(64, "Sequences per generation batch.")
    chat_template: str = opt("auto", CHAT_TEMPLATE_HELP + " Applies to every policy (each with its own tokenizer).")
    toxicity_tokens: int = opt(24, "Length limit of toxicity-probe continuations (RealToxicityPrompts-style: short).")
    heldout_tokens: int = opt(12288, "Tokens of the held-out pretraining corpus scored for perplexity (0 = skip).")
    continuation_items: int | None = opt(None, "HellaSwag-like items from the held-out corpus, at most one per "
                                               "document: which of four sentences continues it (the alignment "
                                               "tax; 0 = skip). Default: the run's continuation_items, else 500.")
    seed: int | None = opt(None, "Seed of prompt choice, sampling and simulated judgements (same for every model). "
                                 "Default: the run's seed, else 0.")
    device: str = opt("auto", "auto, cpu, cuda ...")
    out_dir: str = opt("", "Where results.json and the report go (default: results in run_dir/eval, the report "
                           "in run_dir; with prompts=, <prompts file>-eval/ beside it). With out_dir, nothing of "
                           "the run folder is overwritten.")
    reuse_answers: bool = opt(True, "prompts=: read back the answers an earlier evaluation saved in "
                                    "out_dir/answers/ when they were sampled from the same model files, prompts and "
                                    "sampling options (false: sample every answer again).")
    labels: str = opt("", "People's labels of eval/label_tasks.jsonl: the labeling app's export folder ('instructgpt "
                          "label export --out DIR'), its zip, its eval/metadata.jsonl, or a rankings JSONL; "
                          "win rates (and with the export, Likert scores and flags) are computed from it.")
    lm_eval_tasks: list[str] = opt([], "lm-evaluation-harness tasks run on every model (the alignment tax on "  # noqa: RUF009
                                       "public NLP tasks; pip install 'instructgpt[lm-eval]').")
    lm_eval_include: str = opt("", "A folder of your own lm-eval task YAML files.")
    lm_eval_limit: int = opt(0, "At most this many examples per lm-eval task (0 = all).")

    @property
    def own_prompts(self) -> bool:
        """True for an evaluation on your own prompts (``prompts=``)."""
        return bool(self.prompts)

    def validate(self) -> None:
        if self.seed is not None:  # None: the run's
            check_seed(self.seed)
        check_device(self.device)
        if not self.run_dir and not self.prompts:
            raise ConfigError("run_dir: required (a run folder of 'instructgpt run'), or prompts= your own prompts "
                              "JSONL with models=name=path,... (docs/evaluation.md)")
        if self.n_prompts is not None and self.n_prompts < 0:
            raise ConfigError(f"n_prompts: must be >= 0, got {self.n_prompts}")
        if self.judgements < 1:
            raise ConfigError(f"judgements: must be >= 1, got {self.judgements}")
        if self.best_of_n < 0:
            raise ConfigError(f"best_of_n: must be >= 0, got {self.best_of_n}")
        if self.temperature < 0:
            raise ConfigError(f"temperature: must be >= 0, got {self.temperature}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens: must be >= 1, got {self.max_new_tokens}")
        if self.few_shot < 0:
            raise ConfigError(f"few_shot: must be >= 0, got {self.few_shot}")
        if self.toxicity_tokens < 1:
            raise ConfigError(f"toxicity_tokens: must be >= 1, got {self.toxicity_tokens}")
        if self.continuation_items is not None and self.continuation_items < 0:
            raise ConfigError(f"continuation_items: must be >= 0, got {self.continuation_items}")
        if self.heldout_tokens < 0:
            raise ConfigError(f"heldout_tokens: must be >= 0, got {self.heldout_tokens}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: must be >= 1, got {self.batch_size}")
        if self.lm_eval_limit < 0:
            raise ConfigError(f"lm_eval_limit: must be >= 0, got {self.lm_eval_limit}")
        if not self.lm_eval_tasks and (self.lm_eval_include or self.lm_eval_limit):
            given = "lm_eval_include" if self.lm_eval_include else "lm_eval_limit"
            raise ConfigError(f"{given}: only read with lm_eval_tasks= (name the tasks to run, e.g. "
                              f"lm_eval_tasks=my_task for a task of your own in lm_eval_include)")
        seen: set[str] = set()
        for item in self.models:
            name, _, path = (s.strip() for s in item.partition("="))
            if not name or not path:
                raise ConfigError(f"models: {item!r}: expected name=path (e.g. models=sft=runs/x/models/sft,"
                                  f"ppo=runs/x/models/ppo)")
            if name in seen:
                raise ConfigError(f"models: {name!r} is given twice")
            seen.add(name)
        for judge in self.judges:
            if judge not in JUDGE_INPUTS:
                raise ConfigError(f"judges: unknown judge {judge!r} (expected {', '.join(JUDGE_INPUTS)})")
        if self.prompts:
            self._check_no_world_options()
        if not self.prompts and not self.reuse_answers:
            raise ConfigError("reuse_answers: only read with prompts= (a run's evaluation samples every answer; "
                              "the pipeline reuses a finished eval stage as a whole)")
        if not self.prompts and (self.judges or self.judge_model):
            raise ConfigError("judges, judge_model: only with prompts= (a run of the built-in world is judged by "
                              "its simulated labelers; people's labels go in labels=)")
        if self.prompts and not self.run_dir and not self.models:
            raise ConfigError("models: required with prompts= (name=path,..., e.g. models=sft=PATH,ppo=PATH "
                              "baseline=sft)")

    def _check_no_world_options(self) -> None:
        """With prompts=, an option of the built-in world's evaluation set to anything but its default is an
        error: it would be ignored."""
        given = [setting.split("=")[0] for setting in changed_from_default(self, WORLD_ONLY)]
        if given:
            raise ConfigError(f"{', '.join(given)}: only read when evaluating a run of the built-in world "
                              f"(run_dir= without prompts=: simulated labelers, probes, the prompted base); "
                              f"an evaluation on your own prompts would ignore {'them' if len(given) > 1 else 'it'}")

    def with_run_defaults(self, run_config: dict | None) -> EvalConfig:
        """A copy with every unset option of FROM_RUN filled in from the run's run_config.json
        (``run_config``, None if the folder has none) or else its default; then validated.
        With ``prompts=`` an unset n_prompts means all of them."""
        unset = [name for name in FROM_RUN if getattr(self, name) is None
                 and not (self.prompts and name in WORLD_ONLY)]   # unread with prompts=
        changes = {name: (run_config or {}).get(FROM_RUN[name][0], FROM_RUN[name][1]) for name in unset}
        if self.prompts and self.n_prompts is None:
            changes["n_prompts"] = 0
        from_run = {name: f"the run's run_config.json ({FROM_RUN[name][0]})" for name in changes
                    if FROM_RUN[name][0] in (run_config or {}) and not (self.prompts and name == "n_prompts")}
        try:  # run_config.json's values are typed and checked like options given here, and named as its
            return from_dict(EvalConfig, {**asdict(self), **changes}, sources=from_run)
        except ConfigError as e:
            name = str(e).split(":", 1)[0]
            raise ConfigError(f"{from_run[name]}: {e}" if name in from_run else str(e)) from None

    @property
    def out_path(self) -> Path:
        """Folder of results.json, label_tasks.jsonl, timings.json (and human_labels.json). With
        prompts= and no out_dir: <prompts file without .jsonl>-eval/ beside the prompts file."""
        if self.out_dir:
            return Path(self.out_dir)
        if self.prompts:
            path = Path(self.prompts)
            return path.with_name(path.name.removesuffix(".jsonl") + "-eval")
        return RunFolder(self.run_dir).eval

    @property
    def report_dir(self) -> Path:
        """Folder of report.md / report.html: the run folder, unless out_dir is given (or prompts=)."""
        if self.out_dir or self.prompts:
            return self.out_path
        return RunFolder(self.run_dir).root
