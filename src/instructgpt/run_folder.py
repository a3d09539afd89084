"""The run folder: every path of an ``instructgpt run``, in one place.

Stages talk to each other only through these files (a stage reads what the
ones before it wrote), so the pipeline, ``instructgpt eval`` and the CLI all
name them through :class:`RunFolder`::

    runs/<name>/
      run_config.json              the RunConfig the run was last started with (resolved)
      run.lock                     held while an ``instructgpt run`` works on the folder (pid, host, start)
      .cache/input_hashes.json     content hashes of files from outside the run (keys; see stage_keys.py)
      world/                       the simulated world (world.WorldData.save; read back by load_world)
      tokenizer/                   the BPE tokenizer (not with --base-model)
      data/
        prompts_{sft,rm,ppo}_{train,valid,test}.jsonl   curated prompt sets
        prompts_test.jsonl         every set's test split: what the evaluation asks
        sft_{train,valid}.jsonl    labelers' demonstrations
        flan_train.jsonl           FLAN/T0-style public-NLP demonstrations
        corpus_{train,heldout}.jsonl   pretraining corpus / held-out part (perplexity)
        rankings_r<r>/{train,valid}.jsonl   round r's rankings by the training labelers
      models/
        base/ base_large/ sft/ flan/             policies (Hugging Face folders)
        round<r>/rm/ round<r>/ppo/ round<r>/ppo_ptx/   round r's reward model and policies
        round<r>/rm_train_all.jsonl              every ranking up to round r (the RM's data)
        rm, ppo, ppo_ptx -> round<last>/...      symlinks to the last round
      eval/                        results.json, label_tasks.jsonl, timings.json [, human_labels.json]
      report.md, report.html, report_files/

Each stage's output folder (world/, models/sft/, data/rankings_r1/, eval/ ...)
holds a stage marker, ``stage.json``, once the stage has finished: the stage's
key (a hash of its resolved options and of the keys of what it read), its wall
time, work and peak memory, and a summary of its result. While a stage runs
(or after it was interrupted) the folder holds ``stage.partial.json`` with the
key it was started with: a later run with the same key continues it from its
last checkpoint, one with another key starts it over. From the moment a run
first works on a stage folder to the run's end, the folder's ``run.lock`` is
held too: a stage run on its own into it (``instructgpt sft out_dir=...``,
which holds the same file) and the run exclude each other.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .run_lock import LOCK_NAME
from typing import Any

STAGE_MARKER = "stage.json"
PARTIAL_MARKER = "stage.partial.json"
#: Policies and the reward model under models/, in report order.
POLICY_FOLDERS = ("base", "base_large", "sft", "ppo", "ppo_ptx", "flan", "t0")
#: A round's trained folders under models/round<r>/.
ROUND_STAGES = ("rm", "ppo", "ppo_ptx")


class RunFolder:
    """The paths of one run folder (nothing is created or read on construction)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"

    # ---- top level
    @property
    def run_config(self) -> Path:
        return self.root / "run_config.json"

    @property
    def lock(self) -> Path:
        """The run lock (see run_lock.py): who is working on the folder."""
        return self.root / LOCK_NAME

    @property
    def input_hashes(self) -> Path:
        """Cached content hashes of inputs from outside the run (stage_keys.InputHasher)."""
        return self.root / ".cache" / "input_hashes.json"

    @property
    def world(self) -> Path:
        return self.root / "world"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    # ---- data/
    def prompts(self, name: str, split: str) -> Path:
        """Curated prompts of set ``name`` (sft, rm, ppo) and ``split`` (train, valid, test)."""
        return self.data / f"prompts_{name}_{split}.jsonl"

    @property
    def test_prompts(self) -> Path:
        return self.data / "prompts_test.jsonl"

    def demonstrations(self, split: str) -> Path:
        return self.data / f"sft_{split}.jsonl"

    @property
    def flan_train(self) -> Path:
        return self.data / "flan_train.jsonl"

    @property
    def corpus_train(self) -> Path:
        return self.data / "corpus_train.jsonl"

    @property
    def corpus_heldout(self) -> Path:
        return self.data / "corpus_heldout.jsonl"

    def rankings(self, r: int) -> Path:
        """Folder of round ``r``'s rankings (the stage's output folder)."""
        return self.data / f"rankings_r{r}"

    def rankings_file(self, r: int, split: str) -> Path:
        """Round ``r``'s rankings of the RM prompts of ``split`` (train, valid)."""
        return self.rankings(r) / f"{split}.jsonl"

    # ---- models/
    def model(self, name: str) -> Path:
        """models/<name>: a policy (base, sft, flan ...) or a link to the last round's rm/ppo/ppo_ptx."""
        return self.models / name

    def round(self, r: int) -> Path:
        return self.models / f"round{r}"

    def round_model(self, r: int, name: str) -> Path:
        return self.round(r) / name

    def rm_train_all(self, r: int) -> Path:
        return self.round(r) / "rm_train_all.jsonl"

    def rounds(self) -> list[int]:
        """Numbers of the rounds whose folder exists, in order."""
        found = [p.name[len("round"):] for p in self.models.glob("round*") if p.is_dir()]
        return sorted(int(n) for n in found if n.isascii() and n.isdigit())

    # ---- reports (of the run's own evaluation; an eval with out_dir writes its own)
    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    # ---- stage markers and small JSON files
    @staticmethod
    def marker(folder: Path) -> Path:
        return Path(folder) / STAGE_MARKER

    def read_marker(self, folder: Path) -> dict[str, Any] | None:
        """The stage marker of a stage's output folder, or None if the stage has not finished."""
        return _read_json(self.marker(folder))

    @staticmethod
    def partial_marker(folder: Path) -> Path:
        return Path(folder) / PARTIAL_MARKER

    def read_partial_marker(self, folder: Path) -> dict[str, Any] | None:
        """The marker of a stage that was started and has not finished (running or interrupted), or None."""
        return _read_json(self.partial_marker(folder))

    @staticmethod
    def write_json(path: Path, data: dict[str, Any]) -> None:
        """Write a small JSON file atomically (a temp file renamed into place): a kill never leaves half of it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
        os.replace(tmp, path)

    def read_run_config(self) -> dict[str, Any] | None:
        """run_config.json as a dict, or None when the folder was not made by ``instructgpt run``."""
        return _read_json(self.run_config)

    def load_world(self):
        """The run's simulated world, read back from world/ (see world.load_world)."""
        from .world import load_world
        return load_world(self.world)


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    from .data import DataError
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
