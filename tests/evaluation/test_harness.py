"""The alignment tax through lm-evaluation-harness, offline, on a small task this test defines.

The task: "say red:" / "say blue:" questions whose choices are " red" and " blue"
(a YAML task over a local JSONL; no download). Two tiny models whose logits are
forced to " red" and " blue": 4 of the 6 answers are red, so their accuracies
are 4/6 and 2/6 exactly. Runs where lm-eval is installed
(pip install 'instructgpt[lm-eval]'; CI installs it) and is skipped, saying so, elsewhere.
"""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")        # read when `datasets` is imported: nothing downloads
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="hf-datasets-"))
lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'instructgpt[lm-eval]')")

from instructgpt.config import ConfigError  # noqa: E402
from instructgpt.evaluation import EvalResults  # noqa: E402
from instructgpt.evaluation.harness import harness_scores, task_manager  # noqa: E402
from instructgpt.evaluation.stats import mean_estimate  # noqa: E402
from tests.conftest import write_jsonl  # noqa: E402

from .chat_models import chatml_model, chatml_tokenizer, force_token, token_of  # noqa: E402

ANSWERS = ["red", "red", "blue", "red", "blue", "red"]
TASK = """\
task: tiny_colors
dataset_path: json
dataset_kwargs:
  data_files:
    test: {items}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval_task")
    items = write_jsonl(root / "items.jsonl", [{"question": f"say {a}", "choices": ["red", "blue"],
                                                "answer": ["red", "blue"].index(a)} for a in ANSWERS])
    (root / "tasks").mkdir()
    (root / "tasks" / "tiny_colors.yaml").write_text(TASK.format(items=items))
    return root / "tasks"


@pytest.fixture(scope="module")
def lovers(tmp_path_factory):
    root = tmp_path_factory.mktemp("lovers")
    tok = chatml_tokenizer()
    return {name: force_token(chatml_model(root / name, seed=i), token_of(tok, f" {name}"))
            for i, name in enumerate(("red", "blue"))}


def test_a_custom_task_scores_known_accuracies(task_dir, lovers):
    from instructgpt.models import load_policy, load_tokenizer
    manager = task_manager(["tiny_colors"], str(task_dir))
    got = {}
    for name, folder in lovers.items():
        scores = harness_scores(load_policy(folder), load_tokenizer(folder), ["tiny_colors"], manager, batch_size=4)
        got[name] = scores["lm_eval:tiny_colors:acc"]
    correct = [float(a == "red") for a in ANSWERS]
    assert got["red"].value == pytest.approx(4 / 6) and got["blue"].value == pytest.approx(2 / 6)
    expected = mean_estimate(correct, [str(i) for i in range(6)], method="bootstrap-documents")
    assert (got["red"].low, got["red"].high, got["red"].n) == (expected.low, expected.high, 6)
    assert got["red"].method == "bootstrap-documents"


def test_include_or_limit_without_tasks_is_an_error_not_ignored(tmp_path):
    from instructgpt.evaluation.config import EvalConfig
    with pytest.raises(ConfigError, match="lm_eval_include: only read with lm_eval_tasks="):
        EvalConfig(run_dir="r", lm_eval_include=str(tmp_path)).validate()
    with pytest.raises(ConfigError, match="lm_eval_limit: only read with lm_eval_tasks="):
        EvalConfig(run_dir="r", lm_eval_limit=5).validate()
    EvalConfig(run_dir="r", lm_eval_tasks=["t"], lm_eval_include=str(tmp_path), lm_eval_limit=5).validate()


def test_unknown_tasks_and_folders_are_named(task_dir, tmp_path):
    with pytest.raises(ConfigError, match="lm_eval_include: .*: not a folder"):
        task_manager(["tiny_colors"], str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="lm_eval_tasks: unknown task 'no_such_task_xyz'"):
        task_manager(["tiny_colors", "no_such_task_xyz"], str(task_dir))


def test_eval_on_your_prompts_reports_the_alignment_tax(task_dir, lovers, tmp_path):
    from instructgpt.cli import main
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "user_id": "u", "text": "say red"},
                                                 {"id": "b", "user_id": "u", "text": "say blue"}])
    out = tmp_path / "out"
    assert main(["eval", f"prompts={prompts}", f"models=sft={lovers['blue']},ppo={lovers['red']}", "baseline=sft",
                 "lm_eval_tasks=tiny_colors", f"lm_eval_include={task_dir}", "max_new_tokens=2", "device=cpu",
                 f"out_dir={out}"]) == 0
    results = EvalResults.load(out / "results.json")
    assert results.model("ppo").pretraining["lm_eval:tiny_colors:acc"].value == pytest.approx(4 / 6)
    assert results.model("sft").pretraining["lm_eval:tiny_colors:acc"].value == pytest.approx(2 / 6)
    md = (out / "report.md").read_text()
    assert "Alignment tax (lm-eval tasks)" in md and "+0.333" in md
    assert "tasks tiny\\_colors" in md


def test_a_run_of_the_world_gets_the_tasks_too(run, task_dir, tmp_path):
    """instructgpt eval run_dir=... lm_eval_tasks=...: every policy's scores in the alignment-tax table."""
    from instructgpt.evaluation.run import run_eval

    from .fake_run import eval_config
    run_dir, _ = run
    results = run_eval(eval_config(run_dir, out_dir=str(tmp_path), few_shot=0, heldout_tokens=128, n_prompts=4,
                                   max_new_tokens=2, lm_eval_tasks=["tiny_colors"], lm_eval_include=str(task_dir)))
    for m in results.models:
        acc = m.pretraining["lm_eval:tiny_colors:acc"]
        assert acc.n == len(ANSWERS) and acc.value in {k / 6 for k in range(7)} and "perplexity" in m.pretraining
    assert results.meta["lm_eval"].startswith("tasks tiny_colors")
    assert "lm_eval:tiny_colors:acc" in (tmp_path / "report.md").read_text().replace("\\_", "_")


def test_a_task_whose_data_cannot_be_fetched_is_a_data_error(task_dir, lovers, monkeypatch):
    """Offline, lm-eval's hub tasks raised a ConnectionError through the CLI as a traceback."""
    from instructgpt.data import DataError
    from instructgpt.models import load_policy, load_tokenizer

    def offline(**kwargs):
        raise ConnectionError("Couldn't reach 'Rowan/hellaswag' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(lm_eval, "simple_evaluate", offline)
    folder = lovers["red"]
    with pytest.raises(DataError, match=r"lm_eval_tasks: tiny_colors: lm-eval could not load the data "
                                        r"\(ConnectionError: Couldn't reach"):
        harness_scores(load_policy(folder), load_tokenizer(folder), ["tiny_colors"],
                       task_manager(["tiny_colors"], str(task_dir)), batch_size=4)
