"""Model-free evaluation: statistics, the paper's claims check, and the report.

Models are run elsewhere; this package takes their numbers as an
:class:`EvalResults` (JSON-serialisable, see :mod:`.claims` for the data
model), decides each claim of the paper from confidence intervals alone
(:func:`check_claims`) and writes ``report.md`` / ``report.html``
(:func:`write_report`, :func:`render_from_json`).
"""

from .claims import (LABELER_GROUPS, MODEL_KINDS, VERDICTS, ClaimResult, Comparison,
                     EvalResults, ModelResult, SampleOutput, Samples, check_claims)
from .report import render_from_json, write_report
from .stats import (Estimate, bootstrap_interval, choice_entropy, difference,
                    difference_of_estimates, likert_mean, pairwise_agreement, rate,
                    wilson_interval, win_rate, win_rates_by)

__all__ = [
    "Estimate", "win_rate", "win_rates_by", "wilson_interval", "bootstrap_interval",
    "likert_mean", "rate", "pairwise_agreement", "difference", "difference_of_estimates",
    "choice_entropy",
    "EvalResults", "ModelResult", "Comparison", "Samples", "SampleOutput", "ClaimResult",
    "MODEL_KINDS", "LABELER_GROUPS", "VERDICTS", "check_claims",
    "write_report", "render_from_json",
]
