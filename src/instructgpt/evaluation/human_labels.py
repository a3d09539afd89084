"""The bridge to real labelers: answers out as ranking tasks, rankings back in as comparisons.

* :func:`write_label_tasks` writes ``label_tasks.jsonl``: every model's answer
  per test prompt as one ranking task for the labeling app, ``models`` naming
  the model of each response.
* :func:`label_comparisons` reads rankings exported by the app back into
  :class:`~instructgpt.evaluation.results.Comparison` s against the baseline;
  :func:`add_human_labels` turns them into ``win_rate["human"]`` and
  ``human_labels.json`` (per-use-case tables).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data import Prompt, Ranking, load_rankings, write_jsonl
from .judging import normalized
from .results import Comparison, ModelResult
from .stats import win_rate, win_rates_by


def write_label_tasks(path: Path, prompts: Sequence[Prompt], responses_by_model: dict[str, Sequence[str]],
                      baseline: str, seed: int = 0) -> int:
    """Ranking tasks (the labeling app's import format) with every model's answer, shuffled,
    and ``models`` naming the model of each response (baseline first in choice, at most 9)."""
    names = [baseline] + [n for n in responses_by_model if n != baseline][:8]
    rows = []
    for i, p in enumerate(prompts):
        pairs = [(n, str(responses_by_model[n][i]).strip() or "(empty response)") for n in names]
        random.Random(f"tasks:{seed}:{p.id}").shuffle(pairs)
        rows.append({"prompt": p.text, "prompt_id": p.id, "use_case": p.use_case,
                     "responses": [t for _, t in pairs], "models": [n for n, _ in pairs]})
    return write_jsonl(path, rows)


def _owners(r: Ranking, i: int, responses_by_model: dict[str, Sequence[str]]) -> list[set[str]]:
    """The models each response of a ranking came from: by ``meta["models"]`` when it names one per
    response, else by text (whitespace-normalised) against each model's answer to prompt ``i``."""
    tagged = r.meta.get("models") if isinstance(r.meta, dict) else None
    if isinstance(tagged, list) and len(tagged) == r.k:
        return [{str(t)} for t in tagged]
    text_to_models: dict[str, set[str]] = {}
    for name, resp in responses_by_model.items():
        text_to_models.setdefault(normalized(resp[i]), set()).add(name)
    return [text_to_models.get(normalized(t), set()) for t in r.responses]


def label_comparisons(rankings: Sequence[Ranking], prompts: Sequence[Prompt],
                      responses_by_model: dict[str, Sequence[str]], baseline: str,
                      group: str = "human") -> dict[str, list[Comparison]]:
    """Comparisons against the baseline read from real rankings.

    A ranking's responses are matched to models by ``meta["models"]`` when it
    has one per response, else by their text (whitespace-normalised) against
    each model's answer to that prompt. Every ranking that holds both a model's
    and the baseline's answer gives one comparison (same group = tie).
    """
    index = {p.id: i for i, p in enumerate(prompts)}
    by_id = {p.id: p for p in prompts}
    out: dict[str, list[Comparison]] = {n: [] for n in responses_by_model if n != baseline}
    for r in rankings:
        if r.prompt_id not in index:
            continue
        owners = _owners(r, index[r.prompt_id], responses_by_model)
        pos = {j: g for g, grp in enumerate(r.ranking) for j in grp}
        base_idx = [j for j, o in enumerate(owners) if baseline in o]
        if not base_idx:
            continue
        b = base_idx[0]
        for name, comps in out.items():
            mine = [j for j, o in enumerate(owners) if name in o]
            if not mine:
                continue
            a = mine[0]
            outcome = 0.5 if pos[a] == pos[b] else float(pos[a] < pos[b])
            comps.append(Comparison(r.prompt_id, outcome, group, by_id[r.prompt_id].use_case,
                                    labeler_id=r.labeler_id))
    return out


def human_tables(comps_by_model: dict[str, list[Comparison]], seed: int) -> dict[str, Any]:
    """Per model: win rate, per-use-case win rates and count of the real-label comparisons."""
    tables: dict[str, Any] = {}
    for name, comps in comps_by_model.items():
        if not comps:
            continue
        outcomes, groups = [c.outcome for c in comps], [c.prompt_id for c in comps]
        tables[name] = {
            "win_rate": win_rate(outcomes, groups, seed=seed).to_dict(),
            "use_case_win_rates": {k: v.to_dict() for k, v in win_rates_by(
                outcomes, [c.use_case for c in comps], groups, seed=seed).items()},
            "n": len(comps)}
    return tables


def add_human_labels(models: Sequence[ModelResult], labels: str, prompts: Sequence[Prompt],
                     responses_by_model: dict[str, Sequence[str]], baseline: str, seed: int,
                     out_file: Path) -> tuple[int, int]:
    """Win rates from the real labels in file ``labels`` as ``win_rate["human"]`` of each model
    (their comparisons added); per-use-case tables to ``out_file``.

    Returns (rankings read, models with a human win rate).
    """
    rankings = load_rankings(labels, prompts)
    human = label_comparisons(rankings, prompts, responses_by_model, baseline)
    for m in models:
        comps = human.get(m.name) or []
        if comps:
            m.comparisons += comps
            m.win_rate["human"] = win_rate([c.outcome for c in comps], [c.prompt_id for c in comps], seed=seed)
    tables = human_tables(human, seed)
    out_file.write_text(json.dumps({"file": str(labels), "rankings": len(rankings), "tables": tables},
                                   indent=1) + "\n")
    return len(rankings), len(tables)
