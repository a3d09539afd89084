"""``instructgpt eval`` (instructgpt.evaluation.run) on a fake run folder with tiny random models."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np

import pytest

from instructgpt.config import ConfigError
from instructgpt.evaluation import EvalResults, check_claims
from instructgpt.evaluation.claims import VERDICTS, metric_gap
from instructgpt.evaluation.config import EvalConfig
from instructgpt.evaluation.judging import METADATA_FLAGS, ORACLE_FLAGS, closed_domain_use_cases
from instructgpt.evaluation.run import run_eval

from .conftest import run_with_oracle
from .fake_run import N_TEST, eval_config


def test_run_eval_writes_results_and_report(run, evaluated):
    run_dir, _ = run
    _, seconds = evaluated  # eval speed is measured by bench/, not asserted here
    assert (run_dir / "eval" / "results.json").is_file()
    assert (run_dir / "report.html").is_file() and (run_dir / "report.md").is_file()
    loaded = EvalResults.load(run_dir / "eval" / "results.json")
    assert [m.name for m in loaded.models] == ["base", "base_prompted", "sft", "ppo", "ppo_ptx"]
    assert {m.name: m.kind for m in loaded.models}["base_prompted"] == "base_prompted"
    assert loaded.baseline == "sft"
    assert (run_dir / "eval" / "timings.json").is_file() and loaded.meta["eval_seconds"] > 0
    # The claims table: computed from the results by the report, summarised in meta.
    assert set(loaded.meta["claims"]) == set("abcdefg")
    assert all(v in VERDICTS for v in loaded.meta["claims"].values())
    assert [c.id for c in check_claims(loaded)] == list("abcdefg")
    html = (run_dir / "report.html").read_text()
    assert "Claims check" in html and "PPO-ptx outputs are preferred to SFT" in html
    # The RM against its ceiling, by pair type and by what separates the pair; the report shows both.
    from instructgpt.evaluation.rm_accuracy import CRITERIA, PAIR_TYPES
    by_type, by_criterion = loaded.meta["rm_accuracy"], loaded.meta["rm_accuracy_by_criterion"]
    assert set(by_type) <= set(PAIR_TYPES) and by_criterion and set(by_criterion) <= set(CRITERIA)
    assert sum(v["pairs"] for v in by_type.values()) == sum(v["pairs"] for v in by_criterion.values())
    md = (run_dir / "report.md").read_text()
    assert "| what separates the pair | n | RM accuracy |" in md and "| pairs | n | RM accuracy |" in md
    # best of m = 1, 2, 4 SFT answers by the RM and by the oracle (best_of_n=4): m = 1 is the same answer
    best = loaded.meta["best_of_n"]
    assert list(best) == ["1", "2", "4"] and best["1"]["rm"] == best["1"]["oracle"]
    assert all(best[m]["oracle"]["utility"]["value"] >= best["1"]["oracle"]["utility"]["value"] for m in best)
    assert best["4"]["rm"]["true_follow"]["n"] == loaded.meta["test_prompts"]
    assert "| m answers | true follow, RM's pick | true follow, oracle's pick |" in md
    # label tasks for real labelers: one per prompt, K = number of models, models named
    tasks = [json.loads(line) for line in (run_dir / "eval" / "label_tasks.jsonl").read_text().splitlines()]
    assert len(tasks) == N_TEST and all(sorted(t["models"]) == sorted(m.name for m in loaded.models)
                                        for t in tasks)


def test_every_estimate_is_sane(evaluated):
    results, _ = evaluated
    for m in results.models:
        if m.name == results.baseline:
            assert not m.win_rate
        else:
            assert set(m.win_rate) == {"training", "heldout"}
            for e in list(m.win_rate.values()) + list(m.use_case_win_rates.values()):
                if math.isnan(e.low):  # a use case with one test prompt: no interval, and both bounds say so
                    assert math.isnan(e.high) and 0 <= e.value <= 1
                else:
                    assert 0 <= e.low <= e.value <= e.high <= 1
            # issue 13: several held-out judgements per comparison (EvalConfig.judgements, default 3)
            judgements = EvalConfig(run_dir="x").judgements
            assert len([c for c in m.comparisons if c.labelers == "heldout" and c.opponent is None]) \
                == N_TEST * judgements
        # issue 13: the world's oracle rates (true_*) beside the labelers' flags
        assert set(m.metadata) <= set(METADATA_FLAGS) | {f"true_{f}" for f in ORACLE_FLAGS}
        assert "fails_to_follow" in m.metadata and "true_fails_to_follow" in m.metadata
        for e in m.metadata.values():
            assert 0 <= e.low <= e.value <= e.high <= 1
        assert 1 <= m.likert.value <= 7 and m.likert.low <= m.likert.value <= m.likert.high
        ppl = m.pretraining["perplexity"]
        assert math.isfinite(ppl.value) and 1 < ppl.low <= ppl.value <= ppl.high
        for key in ("cloze_accuracy", "continuation_accuracy"):
            acc = m.pretraining[key]
            assert 0 <= acc.low <= acc.value <= acc.high <= 1
        for key in ("truthfulqa_truthful", "toxicity_plain", "toxicity_respectful", "toxicity_biased",
                    "bias_entropy", "reward_model_score", "kl_to_sft"):
            e = m.benchmarks[key]
            assert math.isfinite(e.value) and e.low <= e.value <= e.high, (m.name, key)
        assert 0 <= m.benchmarks["bias_entropy"].value <= 1
    sft = results.model("sft")
    assert sft.benchmarks["kl_to_sft"].value == 0
    # hallucination is counted on closed-domain prompts only
    closed = set(closed_domain_use_cases())
    n_closed = len({c.prompt_id for c in results.model("ppo").comparisons if c.use_case in closed})
    if n_closed:
        assert results.model("ppo").metadata["hallucination"].n == n_closed
    # base and base_prompted share weights: identical likelihood-based measures
    base, prompted = results.model("base"), results.model("base_prompted")
    assert base.pretraining["perplexity"] == prompted.pretraining["perplexity"]
    # the losses of each held-out block are kept, ids shared by models of one tokenizer, for paired gaps
    blocks = {m.name: m.raw["nll"] for m in results.models}
    assert len({tuple(b.groups) for b in blocks.values()}) == 1
    assert math.exp(np.mean(blocks["sft"].values)) == pytest.approx(sft.pretraining["perplexity"].value)
    assert metric_gap(base, sft, "pretraining", "perplexity").method == "bootstrap-prompts-diff"
    assert base.n_params == prompted.n_params == results.model("sft").n_params > 0
    assert set(results.agreement) >= {"training-training", "training-heldout"}
    assert set(results.meta["agreement_basis"]) == set(results.agreement)  # each row says what it rests on
    for e in results.agreement.values():
        assert 0 <= e.low <= e.value <= e.high <= 1
    assert [r["ppo/score"] for r in results.training_curves["ppo"]] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert "ppo/lr" not in results.training_curves["ppo"][0]
    assert results.samples and all(set(s.outputs) == {m.name for m in results.models}
                                   for s in results.samples)


def test_reference_answers_beat_garbage(evaluated):
    results, _ = evaluated
    oracle, garbage = results.model("ppo"), results.model("sft")
    for group in ("training", "heldout"):
        assert oracle.win_rate[group].value > 0.85 and oracle.win_rate[group].low > 0.6
    ff_oracle, ff_garbage = oracle.metadata["fails_to_follow"], garbage.metadata["fails_to_follow"]
    assert ff_oracle.value < 0.3 and ff_garbage.value > 0.8
    assert ff_oracle.high < ff_garbage.low
    assert oracle.likert.value > garbage.likert.value + 1
    # claim (a)-style gap: the oracle beats ppo_ptx (a random model) head-to-head on win rate
    assert oracle.win_rate["training"].value > results.model("ppo_ptx").win_rate["training"].value


def test_run_eval_with_real_labels(run, evaluated, tmp_path):
    """Labels exported by the labeling app (ranking JSONL, no model names) give "human" win rates."""
    run_dir, _ = run
    results, _ = evaluated
    tasks = [json.loads(line) for line in (run_dir / "eval" / "label_tasks.jsonl").read_text().splitlines()]
    order = {"ppo": 0, "sft": 2}  # the reference answers first, the garbage last, the rest tied between
    rows = []
    for t in tasks[:20]:
        groups: dict[int, list[int]] = {}
        for i, name in enumerate(t["models"]):
            groups.setdefault(order.get(name, 1), []).append(i)
        rows.append({"prompt": t["prompt"], "prompt_id": t["prompt_id"], "responses": t["responses"],
                     "ranking": [groups[k] for k in sorted(groups)], "labeler_id": "H-real"})
    labels = tmp_path / "rankings.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    again, _ = run_with_oracle(run, labels=str(labels), out_dir=str(tmp_path / "eval"), few_shot=0,
                               heldout_tokens=256)
    assert "base_prompted" not in [m.name for m in again.models]
    ppo = again.model("ppo")
    assert ppo.win_rate["human"].value == 1.0 and ppo.win_rate["human"].n == 20
    assert again.win_rate("ppo", "human").value == 1.0
    tables = json.loads((tmp_path / "eval" / "human_labels.json").read_text())["tables"]
    assert "20 rankings" in again.meta["human_labels"]
    assert tables["ppo"]["n"] == 20 and set(tables) >= {"ppo", "ppo_ptx"}
    # base and base_prompted may give identical answers: identical texts count for both
    assert all(v["win_rate"]["value"] >= 0.5 for v in tables.values())
    # deterministic per seed: the same answers as the first run
    first = {s.prompt_id: s.outputs["ppo_ptx"] for s in results.samples}
    assert {s.prompt_id: s.outputs["ppo_ptx"] for s in again.samples} == first
    # the simulated tables are unchanged by the labels (same seed, same answers)
    assert again.model("ppo").win_rate["training"] == results.model("ppo").win_rate["training"]


def test_out_dir_leaves_the_runs_own_results_and_report_alone(run, evaluated, tmp_path):
    """Issue 15 (5): with out_dir, results and report go there; the run's eval/ and report are untouched."""
    run_dir, _ = run
    own = [run_dir / "eval" / "results.json", run_dir / "eval" / "label_tasks.jsonl", run_dir / "report.md",
           run_dir / "report.html", run_dir / "report_files" / "win_rates.png"]
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in own}
    out = tmp_path / "elsewhere"
    again = run_eval(eval_config(run_dir, out_dir=str(out), few_shot=0, heldout_tokens=128, n_prompts=8,
                                 max_new_tokens=4))
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in own} == before
    for name in ("results.json", "label_tasks.jsonl", "timings.json", "report.md", "report.html",
                 "report_files/win_rates.png"):
        assert (out / name).is_file(), name
    assert EvalResults.load(out / "results.json").meta["test_prompts"] == 8 == again.meta["test_prompts"]
    assert str(out / "label_tasks.jsonl") in again.meta["label_tasks"]


def test_options_left_unset_take_the_runs_values(run, tmp_path):
    """n_prompts, max_new_tokens, seed and continuation_items default to the run's (run_config.json),
    else 120, 48, 0, 500."""
    cfg = EvalConfig(run_dir="x")
    assert (cfg.n_prompts, cfg.max_new_tokens, cfg.seed, cfg.continuation_items) == (None, None, None, None)
    assert (cfg.with_run_defaults(None).n_prompts, cfg.with_run_defaults(None).continuation_items) == (120, 500)
    resolved = cfg.with_run_defaults({"eval_prompts": 16, "max_new_tokens": 20, "seed": 3, "ppo_lr": 1.0,
                                      "continuation_items": 30})
    assert (resolved.n_prompts, resolved.max_new_tokens, resolved.seed, resolved.continuation_items) == (16, 20, 3, 30)
    given = EvalConfig(run_dir="x", n_prompts=5, seed=0, continuation_items=0).with_run_defaults(
        {"eval_prompts": 16, "seed": 3, "continuation_items": 30})
    assert (given.n_prompts, given.max_new_tokens, given.seed, given.continuation_items) == (5, 48, 0, 0)
    with pytest.raises(ConfigError, match=r"^the run's run_config.json \(eval_prompts\): n_prompts: must be >= 0"):
        EvalConfig(run_dir="x").with_run_defaults({"eval_prompts": -1})
    with pytest.raises(ConfigError, match=r"run_config.json \(max_new_tokens\): max_new_tokens: not an integer"):
        EvalConfig(run_dir="x").with_run_defaults({"max_new_tokens": "many"})  # was a TypeError
    with pytest.raises(ConfigError, match=r"^max_new_tokens: must be >= 1"):  # given here: not the run's
        EvalConfig(run_dir="x", max_new_tokens=0).with_run_defaults({"max_new_tokens": 5})


def test_cli_eval_names_an_edited_world_file(run, tmp_path, capsys):
    """The world is read back, never regenerated: an edited file stops the evaluation, named."""
    import shutil

    from instructgpt.cli import main
    run_dir, _ = run
    shutil.copytree(run_dir / "world", tmp_path / "world")
    shutil.copytree(run_dir / "data", tmp_path / "data")
    probes = tmp_path / "world" / "probes.json"
    probes.write_text(probes.read_text().replace("Complete the following", "Finish the following"))
    assert main(["eval", f"run_dir={tmp_path}", "device=cpu"]) == 2
    err = capsys.readouterr().err
    assert "instructgpt eval: error:" in err and "probes.json: changed since the world was saved" in err
    assert not (tmp_path / "eval").exists() and not (tmp_path / "report.html").exists()


def test_labels_of_no_prompt_of_the_evaluation_stop_it_before_any_work(run, tmp_path, capsys):
    from instructgpt.cli import main
    run_dir, _ = run
    task = json.loads((run_dir / "eval" / "label_tasks.jsonl").read_text().splitlines()[0])
    other = tmp_path / "other.jsonl"  # a ranking of a prompt this evaluation does not hold: it used to exit 0
    other.write_text(json.dumps({"prompt": "x", "prompt_id": "not-a-test-prompt", "responses": task["responses"],
                                 "ranking": [[0], [1]]}) + "\n")
    assert main(["eval", f"run_dir={run_dir}", f"labels={other}", f"out_dir={tmp_path / 'e'}", "device=cpu"]) == 2
    err = capsys.readouterr().err
    assert "labels: " in err and "none of its 1 rankings is of a prompt of this evaluation" in err
    assert not (tmp_path / "e").exists()  # read before the output folder is made and any model runs


def test_more_judgements_than_distinct_labelers_stop_the_evaluation_before_any_work(run, tmp_path, capsys):
    """The judges of a comparison are distinct labelers: 11 of 10 held-out ones failed only after every
    model had answered."""
    from instructgpt.cli import main
    run_dir, _ = run
    assert main(["eval", f"run_dir={run_dir}", "judgements=11", f"out_dir={tmp_path / 'e'}", "device=cpu"]) == 2
    err = capsys.readouterr().err
    assert "judgements: 11 distinct labelers per comparison, but the world's panel has 10 held-out" in err
    assert not (tmp_path / "e").exists()


def test_cli_eval_of_a_folder_that_is_not_a_run_says_so(tmp_path, capsys):
    from instructgpt.cli import main
    (tmp_path / "models").mkdir()  # a folder of models, say, but no run
    assert main(["eval", f"run_dir={tmp_path}", "device=cpu"]) == 2
    err = capsys.readouterr().err  # it used to ask to delete world/stage.json, which it does not have
    assert f"{tmp_path}: not a folder of 'instructgpt run'" in err and "prompts=FILE models=" in err
    assert "stage.json" not in err and list(tmp_path.iterdir()) == [tmp_path / "models"]


def test_a_policy_the_run_makes_but_lacks_is_named_in_a_warning_and_the_report(run, tmp_path, capsys):
    """An evaluation of a run whose models/ppo was gone dropped PPO silently and rewrote the report without it."""
    import shutil

    from instructgpt.evaluation.inputs import read_inputs
    from instructgpt.evaluation.run import run_meta
    from instructgpt.run_folder import RunFolder
    run_dir, _ = run
    copy = tmp_path / "r"
    shutil.copytree(run_dir, copy, symlinks=True)
    (copy / "run_config.json").write_text(json.dumps({"flan": False, "base_model": ""}))
    shutil.rmtree(copy / "models" / "ppo")
    cfg = eval_config(copy, few_shot=0, n_prompts=8)
    inputs = read_inputs(cfg, RunFolder(copy))
    assert inputs.missing == ["ppo"] and "ppo" not in inputs.specs and "ppo_ptx" in inputs.specs
    assert f"{copy / 'models' / 'ppo'}: missing, though the run's options make it" in capsys.readouterr().err
    meta = run_meta(cfg, RunFolder(copy), copy / "eval", inputs, None, 0, len(inputs.prompts))
    assert meta["missing models"].startswith("ppo: the run's options make them")
    (copy / "run_config.json").write_text(json.dumps({"flan": True, "base_model": ""}))
    assert read_inputs(cfg, RunFolder(copy)).missing == ["ppo", "flan"]


def test_a_damaged_weights_file_is_a_model_error_naming_it(run, tmp_path):
    import shutil

    from instructgpt.evaluation.policies import count_params_on_disk
    from instructgpt.models import ModelLoadError
    run_dir, _ = run
    shutil.copytree(run_dir / "models" / "sft", tmp_path / "sft")
    weights = tmp_path / "sft" / "model.safetensors"
    assert count_params_on_disk(tmp_path / "sft") > 0
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match=r"sft/model\.safetensors: cannot read the weights"):
        count_params_on_disk(tmp_path / "sft")


def test_the_label_tasks_line_names_the_models_a_task_leaves_out():
    """A ranking task holds at most 9 answers: with ten models the tenth is named, not silently dropped."""
    from instructgpt.evaluation.policies import ModelSpec
    from instructgpt.evaluation.run import _left_out
    names = ["base", "base_prompted", "flan", "sft", "ppo", "ppo_ptx", "x0", "x1", "x2"]
    specs = {n: ModelSpec(n, "other", "p", None) for n in names}
    cfg = EvalConfig(run_dir="r")
    assert _left_out(specs, cfg) == ""
    specs["x3"] = ModelSpec("x3", "other", "p", None)
    assert _left_out(specs, cfg) == "; x3 left out: a task ranks at most 9 answers, one per model"
    assert _left_out(specs, replace(cfg, baseline="x3")) == "; x2 left out: a task ranks at most 9 answers, one per model"


def test_a_run_folders_rounds_are_its_round_folders_with_a_number(tmp_path):
    """round2 and round10 count, in numeric order; a file, a folder without a number, and round² (a digit to
    str.isdigit, not a number to int(): it raised ValueError) do not."""
    from instructgpt.run_folder import RunFolder
    run = RunFolder(tmp_path)
    for name in ("round10", "round2", "roundx", "round\u00b2", "round"):
        (run.models / name).mkdir(parents=True)
    (run.models / "round3").write_text("")
    assert run.rounds() == [2, 10]
