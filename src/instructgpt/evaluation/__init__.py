"""The evaluation: run a run's policies (or any models on your prompts), judge them, check the paper's claims,
write the report.

One concern per module, in the order an evaluation uses them:

* :mod:`.config` - :class:`EvalConfig`, the options of ``instructgpt eval``;
* :mod:`.inputs` - what an evaluation reads from a run folder;
* :mod:`.policies` - which policies, loading them, encoding prompts, sampling;
* :mod:`.scoring` - continuation log-probs, KL to SFT, reward-model scores;
* :mod:`.probes` - truthfulness, toxicity, bias, cloze, held-out perplexity;
* :mod:`.judging` - simulated labelers' win rates, Likert scores, metadata flags;
* :mod:`.judges` - automatic judges: a reward model, a judge model asked in both orders;
* :mod:`.agreement` - inter-labeler agreement (one measure for every row);
* :mod:`.human_labels` - label tasks out to the labeling app, its export back in;
* :mod:`.harness` - lm-evaluation-harness tasks (the alignment tax on public NLP tasks);
* :mod:`.run` - :func:`run_eval`, the orchestration of a run's evaluation;
* :mod:`.own_prompts` - any models on your own prompts (``instructgpt eval prompts=``);
* :mod:`.results` - :class:`EvalResults`, the data model and its JSON (results.json);
* :mod:`.stats` - estimates with intervals (bootstrap over prompts, Wilson);
* :mod:`.claims` - :func:`check_claims`, the paper's claims decided from intervals;
* :mod:`.report` and :mod:`.plots` - report.md / report.html and their figures.

Importing the package loads no model code: the model-free part (results,
statistics, claims, report) is imported here; ``run_eval`` on first use.
"""

from .claims import VERDICTS, ClaimResult, check_claims
from .config import EvalConfig
from .report import render_from_json, write_report
from .results import (LABELER_GROUPS, MODEL_KINDS, Comparison, EvalResults, ModelResult, SampleOutput,
                      Samples)
from .stats import (Estimate, bootstrap_interval, difference, difference_of_estimates,
                    likert_mean, mean_estimate, pairwise_agreement, rate, share, wilson_interval,
                    win_rate,
                    win_rates_by)


def __getattr__(name: str):
    """``run_eval`` is imported lazily (it pulls in torch and the model code)."""
    if name == "run_eval":
        from .run import run_eval

        return run_eval
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Estimate", "win_rate", "win_rates_by", "wilson_interval", "bootstrap_interval",
    "likert_mean", "mean_estimate", "rate", "share", "pairwise_agreement", "difference",
    "difference_of_estimates",
    "EvalResults", "ModelResult", "Comparison", "Samples", "SampleOutput", "ClaimResult",
    "MODEL_KINDS", "LABELER_GROUPS", "VERDICTS", "check_claims",
    "EvalConfig", "run_eval", "write_report", "render_from_json",
]
