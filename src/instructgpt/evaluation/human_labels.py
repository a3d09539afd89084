"""The bridge to people: answers out as labeling-app ranking tasks, the app's export back in.

* :func:`write_label_tasks` writes ``label_tasks.jsonl`` in the labeling app's
  import format (``instructgpt label import --kind rank``): one ranking task per
  prompt with every model's answer, shuffled, and ``models`` naming the model of
  each response. The app keeps ``models`` in the task's meta and gives it back
  in its export (``eval/metadata.jsonl``: ``task_meta``). The app ranks 4 to 9
  responses per task: with fewer than 4 models, each model gives several
  answers (``samples``: the further answers of each model, sampled with other
  seeds), so two models make tasks of 2 + 2 answers.
* :func:`read_labels` reads people's rankings back: from the app's export
  folder (``instructgpt label export --out DIR``), its zip (the admin page's
  download), its ``eval/metadata.jsonl`` alone, or any rankings JSONL (the
  export's ``eval/rankings.jsonl``, which has no ``models``: the responses are
  then matched to the models by their text).
* :func:`label_comparisons` turns the rankings into
  :class:`~instructgpt.evaluation.results.Comparison` s against the baseline;
  :func:`label_scores` averages the Likert scores and flags people gave each
  model; :func:`add_human_labels` fills ``win_rate["human"]`` and writes
  ``human_labels.json`` (per-use-case tables).
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..curate import scrub_prompt
from ..data import FLAGS, DataError, Prompt, Ranking, parse_ranking, read_jsonl, write_jsonl
from .judging import normalized
from .results import Comparison, ModelResult
from .stats import Estimate, likert_mean, rate, win_rate, win_rates_by

#: Responses per ranking task the labeling app accepts (instructgpt.labeling.tasks.K_MIN, K_MAX).
TASK_K_MIN, TASK_K_MAX = 4, 9
#: Where an export folder (or zip) keeps every ranking with its task's meta.
EXPORT_RANKINGS = "eval/metadata.jsonl"
#: The split of a label task whose prompt names none: the app files its rankings apart from training data.
EVAL_SPLIT = "test"

Answers = dict[str, list[Sequence[str]]]   # model -> [sample s][prompt i] answer text


def samples_per_model(n_models: int) -> int:
    """Answers each model gives per task so that a task holds at least TASK_K_MIN responses."""
    return max(1, -(-TASK_K_MIN // max(1, n_models)))


# ----------------------------------------------------------------------------- out: tasks

def task_models(names: Sequence[str], baseline: str, per_model: int = 1) -> list[str]:
    """The models whose answers a ranking task holds: the baseline, then the others in order, as many as
    fit in TASK_K_MAX answers when each gives ``per_model``."""
    ordered = [baseline] + [n for n in names if n != baseline]
    return ordered[:max(1, TASK_K_MAX // per_model)]


def write_label_tasks(path: Path, prompts: Sequence[Prompt], responses_by_model: dict[str, Sequence[str]],
                      baseline: str, seed: int = 0, samples: Answers | None = None) -> int:
    """Ranking tasks (the labeling app's import format), one per prompt: every model's answer
    (baseline first in choice, at most 9 responses), plus each model's further ``samples``,
    shuffled; ``models`` names the model of each response. An empty answer is written as ""
    (the app shows it as an empty response). ``split`` is the prompt's, test when it has none:
    people's judgements of an evaluation never reach the app's training files."""
    per_model = 1 + min(len(v) for v in samples.values()) if samples else 1
    names = task_models(list(responses_by_model), baseline, per_model)
    rows = []
    for i, p in enumerate(prompts):
        pairs = [(n, str(responses_by_model[n][i]).strip()) for n in names]
        for s in range(per_model - 1):
            pairs += [(n, str(samples[n][s][i]).strip()) for n in names]  # type: ignore[index]
        random.Random(f"tasks:{seed}:{p.id}").shuffle(pairs)
        rows.append({"prompt": p.turns or p.text, "prompt_id": p.id, "use_case": p.use_case,
                     "split": p.split or EVAL_SPLIT,
                     "responses": [t for _, t in pairs], "models": [n for n, _ in pairs]})
    return write_jsonl(path, rows)


# ----------------------------------------------------------------------------- in: rankings

@dataclass
class LabelFile:
    """People's rankings of this evaluation's tasks, and what was left out of the file."""
    rankings: list[Ranking]
    path: str
    read: int = 0                 # rankings in the file
    other_prompts: int = 0        # rankings of prompts this evaluation does not hold
    stale: int = 0                # rankings whose answers are not this evaluation's answers
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        text = f"{self.path}: {len(self.rankings)} rankings of {self.read}"
        left = [f"{self.other_prompts} of other prompts"] if self.other_prompts else []
        left += [f"{self.stale} of other answers (an earlier evaluation's tasks?)"] if self.stale else []
        return text + (f" ({', '.join(left)} left out)" if left else "")


def _rankings_file(path: Path, tmp: Path) -> tuple[Path, str]:
    """(JSONL file to read, the name to give it in errors) for a folder, zip or JSONL ``path``."""
    if path.is_dir():
        inner = path / EXPORT_RANKINGS
        if not inner.is_file():
            raise FileNotFoundError(f"labels: {path}: no {EXPORT_RANKINGS} (give the folder written by "
                                    f"'instructgpt label export --out DIR', its zip, or a rankings JSONL)")
        return inner, str(inner)
    if not path.is_file():
        raise FileNotFoundError(f"labels: {path}: not found")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            if EXPORT_RANKINGS not in zf.namelist():
                raise FileNotFoundError(f"labels: {path}: the zip holds no {EXPORT_RANKINGS} (is it the labeling "
                                        f"app's export?)")
            out = tmp / "metadata.jsonl"
            out.write_bytes(zf.read(EXPORT_RANKINGS))
        return out, f"{path}:{EXPORT_RANKINGS}"
    return path, str(path)


def read_labels(path: str | Path, prompts: Sequence[Prompt]) -> LabelFile:
    """The rankings in ``path`` (export folder, zip, or JSONL) of prompts in ``prompts``;
    rankings of other prompts are counted and left out, and a file with none of ``prompts``
    is an error. Errors name the record. A ranking's prompt may be the evaluation's prompt as the labeling
    app stores it: scrubbed of PII by its rank import (:func:`as_labeling_app_stores`)."""
    index = {p.id: p for p in prompts}
    scrubbed = as_labeling_app_stores(prompts)
    with tempfile.TemporaryDirectory() as tmp:
        file, name = _rankings_file(Path(path), Path(tmp))
        out = LabelFile([], str(path))
        try:
            for source, obj in read_jsonl(file):
                out.read += 1
                pid = obj.get("prompt_id")
                if pid is None or str(pid) not in index:
                    out.other_prompts += 1
                    continue
                if "ranking" not in obj and "models" in obj and "responses" in obj:
                    raise DataError(f"{source}: ranking: missing; this is a label task (label_tasks.jsonl), not "
                                    f"people's labels: import it into the labeling app (instructgpt label import "
                                    f"--kind rank), label it, and give the app's export (instructgpt label export "
                                    f"--out DIR)")
                out.rankings.append(_parse_label(obj, source, index, scrubbed))
        except DataError as e:
            raise DataError(f"labels: {str(e).replace(str(file), name)}") from None
    if not out.rankings:
        raise DataError(f"labels: {name}: none of its {out.read} rankings is of a prompt of this evaluation "
                        f"(its label tasks: label_tasks.jsonl in the evaluation's folder); wrong file, or "
                        f"another evaluation's prompts (n_prompts, seed)?")
    return out


def as_labeling_app_stores(prompts: Sequence[Prompt]) -> dict[str, Prompt]:
    """id -> prompt as the labeling app's rank import stores (and exports) it, for the prompts holding PII it
    scrubs (``curate.scrub_prompt``: every message of a chat prompt)."""
    out = {}
    for p in prompts:
        text, turns, found = scrub_prompt(p.text, p.turns, p.source)
        if found:
            out[p.id] = replace(p, text=text, turns=turns)
    return out


def _parse_label(obj: dict[str, Any], source: str, index: dict[str, Prompt], scrubbed: dict[str, Prompt]) -> Ranking:
    """A ranking of one of the evaluation's prompts (``index``): given as it is, or as the app scrubbed it."""
    pid = str(obj.get("prompt_id"))
    if pid not in scrubbed:
        return parse_ranking(obj, source, index)
    try:
        return parse_ranking(obj, source, index)
    except DataError:  # the app's export: the prompt without its PII (a real mismatch fails again here)
        return parse_ranking(obj, source, {**index, pid: scrubbed[pid]})


def _tagged_models(r: Ranking) -> tuple[list[str] | None, bool]:
    """(the model of each response, whether the tags come from the app's export) when the ranking
    carries them: ``models`` in the row itself, or in the export's ``task_meta``."""
    meta = r.meta if isinstance(r.meta, dict) else {}
    task_meta = meta.get("task_meta") if isinstance(meta.get("task_meta"), dict) else {}
    exported = "models" not in meta
    tagged = meta.get("models", task_meta.get("models"))
    if isinstance(tagged, list) and len(tagged) == r.k and all(isinstance(t, str) for t in tagged):
        return tagged, exported
    return None, False


def answers_in_labels(labels: LabelFile) -> int:
    """The most answers one model gave to a ranking of ``labels`` (from its ``models`` tags; 1 without
    tags): an evaluation reading them needs that many answers of each model to match them."""
    most = 1
    for r in labels.rankings:
        tagged, _ = _tagged_models(r)
        if tagged:
            most = max(most, max(tagged.count(t) for t in tagged))
    return most


def _owners(r: Ranking, i: int, answers: Answers) -> list[set[str]] | None:
    """The models each response of a ranking came from: by its ``models`` tags when it has them,
    else by text (whitespace-normalised) against every answer of each model to prompt ``i``.
    Tags from the app's export (``task_meta``) must name this evaluation's answers: a task of an
    earlier evaluation with other answers gives None."""
    texts = {name: {normalized(s[i]) for s in samples} for name, samples in answers.items()}
    tagged, exported = _tagged_models(r)
    if tagged is not None:
        if exported and any(t in texts and normalized(resp) not in texts[t] for t, resp in zip(tagged, r.responses)):
            return None
        return [{t} for t in tagged]
    return [{name for name, known in texts.items() if normalized(resp) in known} for resp in r.responses]


def as_answers(responses_by_model: dict[str, Sequence[str]], samples: Answers | None = None) -> Answers:
    """Every answer of each model: its evaluated answers first, then its further samples."""
    return {n: [r] + list((samples or {}).get(n, [])) for n, r in responses_by_model.items()}


@dataclass
class PeopleJudgement:
    """What people said: comparisons against the baseline, and each model's Likert scores and flags."""
    comparisons: dict[str, list[Comparison]]
    likert: dict[str, Estimate]
    flags: dict[str, dict[str, Estimate]]


def label_comparisons(rankings: Sequence[Ranking], prompts: Sequence[Prompt], answers: Answers, baseline: str,
                      group: str = "human", labels: LabelFile | None = None) -> dict[str, list[Comparison]]:
    """Comparisons against the baseline read from people's rankings.

    A ranking's responses are matched to models by their ``models`` tags when
    it has them, else by text (see ``_owners``). The k-th response of a model
    is compared with the k-th response of the baseline in the same ranking
    (ranked above: 1, below: 0, in the same group: 0.5), so a task with two
    answers of each model gives two comparisons. ``answers``: every answer of
    each model (:func:`as_answers`); rankings of other answers are counted in
    ``labels.stale``.
    """
    index = {p.id: i for i, p in enumerate(prompts)}
    by_id = {p.id: p for p in prompts}
    out: dict[str, list[Comparison]] = {n: [] for n in answers if n != baseline}
    for r in rankings:
        if r.prompt_id not in index:
            continue
        owners = _owners(r, index[r.prompt_id], answers)
        if owners is None:
            if labels is not None:
                labels.stale += 1
            continue
        base_idx = [j for j, o in enumerate(owners) if baseline in o]
        for name, comps in out.items():
            mine = [j for j, o in enumerate(owners) if name in o]
            for a, b in zip(mine, base_idx):
                comps.append(Comparison(r.prompt_id, r.outcome(a, b), group, by_id[r.prompt_id].use_case,
                                        labeler_id=r.labeler_id))
    return out


def label_scores(rankings: Sequence[Ranking], prompts: Sequence[Prompt], answers: Answers,
                 seed: int = 0) -> tuple[dict[str, Estimate], dict[str, dict[str, Estimate]]]:
    """Per model: people's mean 1-7 Likert score of its answers, and the share of its answers
    given each flag (bootstrap over prompts), from the rankings that carry them."""
    index = {p.id: i for i, p in enumerate(prompts)}
    scores: dict[str, tuple[list[float], list[str]]] = {}
    flagged: dict[str, list[tuple[set[str], str]]] = {}
    for r in rankings:
        owners = _owners(r, index[r.prompt_id], answers) if r.prompt_id in index else None
        if owners is None:
            continue
        for j, models in enumerate(owners):
            for m in models:
                if r.likert is not None:
                    values, groups = scores.setdefault(m, ([], []))
                    values.append(float(r.likert[j]))
                    groups.append(r.prompt_id)
                if r.flags is not None:
                    flagged.setdefault(m, []).append((set(r.flags[j]), r.prompt_id))
    likert = {m: likert_mean(v, g, seed=seed) for m, (v, g) in scores.items()}
    flags: dict[str, dict[str, Estimate]] = {}
    for m, rows in flagged.items():
        groups = [pid for _, pid in rows]
        flags[m] = {f: rate([f in fs for fs, _ in rows], groups, seed=seed) for f in FLAGS}
    return likert, flags


def people_judgement(labels: LabelFile, prompts: Sequence[Prompt], answers: Answers, baseline: str,
                     seed: int = 0) -> PeopleJudgement:
    """Comparisons, Likert means and flag rates from people's rankings."""
    comps = label_comparisons(labels.rankings, prompts, answers, baseline, labels=labels)
    likert, flags = label_scores(labels.rankings, prompts, answers, seed)
    return PeopleJudgement(comps, likert, flags)


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


def warn_all_stale(labels: LabelFile) -> None:
    print(f"eval: warning: labels: {labels.path}: every ranking is of other answers than this evaluation's "
          f"(an earlier evaluation's tasks?); no win rate from people. The answers depend on seed, temperature, "
          f"max_new_tokens, batch_size, chat_template and the prompts evaluated: run with the options of the "
          f"evaluation that wrote the tasks (its results.json meta)", file=sys.stderr, flush=True)


def add_human_labels(models: Sequence[ModelResult], labels: LabelFile, prompts: Sequence[Prompt],
                     responses_by_model: dict[str, Sequence[str]], baseline: str, seed: int,
                     out_file: Path) -> tuple[int, int]:
    """Win rates from people's labels (read by :func:`read_labels`) as
    ``win_rate["human"]`` of each model (their comparisons added); per-use-case tables to ``out_file``.

    Returns (rankings used, models with a human win rate).
    """
    human = label_comparisons(labels.rankings, prompts, as_answers(responses_by_model), baseline, labels=labels)
    if labels.stale == len(labels.rankings):
        warn_all_stale(labels)
    for m in models:
        comps = human.get(m.name) or []
        if comps:
            m.comparisons += comps
            m.win_rate["human"] = win_rate([c.outcome for c in comps], [c.prompt_id for c in comps], seed=seed)
    tables = human_tables(human, seed)
    out_file.write_text(json.dumps({"file": labels.path, "rankings": len(labels.rankings),
                                    "read": labels.describe(), "tables": tables}, indent=1) + "\n")
    return len(labels.rankings), len(tables)
