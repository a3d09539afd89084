"""The alignment tax on public NLP tasks, through lm-evaluation-harness (``lm_eval_tasks=``).

The paper measures what RLHF costs on public NLP benchmarks (its "alignment
tax"). Here every evaluated model runs the lm-eval tasks named by
``lm_eval_tasks`` (plus your own task YAML files in ``lm_eval_include``), as
plain-text prompts (lm-eval's default: no chat template), with the weights
already loaded for the evaluation. Needs the optional extra:
``pip install 'instructgpt[lm-eval]'``.

Each task's metrics go to ``ModelResult.pretraining`` as
``lm_eval:<task>:<metric>`` (``<metric> (<filter>)`` for filters other than
lm-eval's "none"); the report's alignment-tax table shows them with their
change from the baseline. Metrics that are a mean over the task's documents
(accuracy, exact match ...) get a 95% bootstrap interval over documents from
the per-document values (:func:`~instructgpt.evaluation.stats.mean_estimate`);
any other metric gets lm-eval's own standard error (value +- 1.96 se), or no
interval when lm-eval gives none.
"""

from __future__ import annotations

import errno
import logging
import math
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..data import DataError
from .stats import Z95, Estimate, mean_estimate

EXTRA = "pip install 'instructgpt[lm-eval]'"
#: lm-eval's bootstrap replicates for metrics that are not document means (its default is 100000).
BOOTSTRAP_ITERS = 1000


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise ConfigError(f"lm_eval_tasks: lm-evaluation-harness is not installed ({EXTRA}): {e}") from None
    return lm_eval, TaskManager


def task_manager(tasks: list[str], include: str = ""):
    """An lm-eval TaskManager that knows every task in ``tasks``; unknown ones are an error.

    With ``include`` alone first (indexing lm-eval's own ~15000 tasks takes tens of seconds),
    then with lm-eval's tasks too when some are not in ``include``.
    """
    _, TaskManager = _lm_eval()
    if include and not Path(include).is_dir():
        raise ConfigError(f"lm_eval_include: {include}: not a folder of task YAML files")
    manager = TaskManager(include_path=include, include_defaults=False) if include else None
    if manager is None or any(t not in manager.all_tasks for t in tasks):
        manager = TaskManager(include_path=include or None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ConfigError(f"lm_eval_tasks: unknown task {unknown[0]!r} (lm-eval knows {len(manager.all_tasks)} "
                          f"tasks; your own go in lm_eval_include=FOLDER of YAML files)")
    return manager


def harness_scores(model, tokenizer, tasks: list[str], manager, limit: int = 0, batch_size: int = 16,
                   seed: int = 0, max_length: int | None = None) -> dict[str, Estimate]:
    """Run the lm-eval ``tasks`` on a loaded causal LM; metric key -> Estimate (see the module docstring)."""
    lm_eval, _ = _lm_eval()
    from lm_eval.models.huggingface import HFLM
    device = next(model.parameters()).device
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(device),
              max_length=max_length)
    try:
        out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit or None,
                                      bootstrap_iters=BOOTSTRAP_ITERS, log_samples=True, random_seed=seed,
                                      numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    except OSError as e:  # ConnectionError and requests' errors: a task's data set is not on this machine
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise DataError(f"lm_eval_tasks: {', '.join(tasks)}: lm-eval could not load the data ({type(e).__name__}: "
                        f"{e}); its tasks download their data sets from the Hugging Face hub unless cached: run "
                        f"once where the hub is reachable, or give tasks with local data in lm_eval_include=") from None
    return estimates_from(out, seed)


def estimates_from(out: dict[str, Any], seed: int = 0) -> dict[str, Estimate]:
    """lm-eval's ``simple_evaluate`` output -> ``lm_eval:<task>:<metric>`` -> Estimate."""
    scores: dict[str, Estimate] = {}
    samples = out.get("samples") or {}
    n_samples = out.get("n-samples") or {}
    for task, metrics in (out.get("results") or {}).items():
        for key, value in metrics.items():
            if "," not in key or "_stderr" in key or not _number(value):
                continue
            metric, _, filt = key.partition(",")
            name = f"lm_eval:{task}:{metric}" + (f" ({filt})" if filt != "none" else "")
            docs = [s for s in samples.get(task, []) if s.get("filter", "none") == filt]
            values = [s.get(metric) for s in docs]
            if docs and all(_number(v) for v in values) and math.isclose(
                    sum(float(v) for v in values) / len(values), float(value), rel_tol=1e-6, abs_tol=1e-9):
                scores[name] = mean_estimate([float(v) for v in values], [str(s["doc_id"]) for s in docs],
                                             seed=seed, method="bootstrap-documents")
                continue
            se = metrics.get(f"{metric}_stderr,{filt}")
            n = int((n_samples.get(task) or {}).get("effective", len(docs)))
            if _number(se):
                scores[name] = Estimate(float(value), float(value) - Z95 * float(se), float(value) + Z95 * float(se),
                                        n, "lm-eval-stderr")
            else:
                scores[name] = Estimate(float(value), math.nan, math.nan, n, "given")
    return scores


def _number(x: Any) -> bool:
    """A finite int, float or bool (lm-eval writes "N/A" where it has no value)."""
    return isinstance(x, (int, float)) and math.isfinite(float(x))
