"""``instructgpt run`` end to end: a scaled-down run in the default suite, a medium one marked slow."""

import dataclasses
import json
import shutil
import subprocess
import sys

import pytest

from instructgpt import config
from instructgpt.pipeline import RunConfig, run_pipeline

TINY = dict(scale=0.003, sft_prompts=0, corpus_docs=250, vocab_size=768, pretrain_epochs=1, sft_epochs=2, rm_epochs=1,
            ppo_iterations=2, ppo_batch=8, ppo_minibatch=8, max_new_tokens=16, eval_prompts=16,
            continuation_items=40)  # of the default 500: 4 candidates each, 6 models, eval run twice below


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The scaled-down run, recording every generation of a world (True: inside the world stage)."""
    from instructgpt import run_stages
    from instructgpt.world import kb
    root = tmp_path_factory.mktemp("runs")
    cfg = config.from_dict(RunConfig, dict(runs_dir=str(root), name="t", **TINY))
    generations, inside = [], [False]
    make_world, generate, cached = run_stages.RunStages.make_world, kb.World.generate.__func__, kb._cached_world

    def in_world_stage(self):
        inside[0] = True
        try:
            return make_world(self)
        finally:
            inside[0] = False

    def recorded(fn):
        def wrapper(*args, **kwargs):
            generations.append(inside[0])
            return fn(*args, **kwargs)
        return wrapper

    mp = pytest.MonkeyPatch()
    mp.setattr(run_stages.RunStages, "make_world", in_world_stage)
    mp.setattr(kb.World, "generate", classmethod(recorded(generate)))
    mp.setattr(kb, "_cached_world", recorded(cached))
    try:
        result = run_pipeline(cfg)
    finally:
        mp.undo()
    return cfg, result, generations


def test_scaled_down_run_leaves_every_stage(tiny_run):
    cfg, result, _ = tiny_run
    run = cfg.run_dir
    for path in ["world/config.json", "tokenizer/tokenizer.json", "data/prompts_sft_train.jsonl",
                 "data/prompts_test.jsonl", "data/sft_train.jsonl", "data/flan_train.jsonl",
                 "data/rankings_r1/train.jsonl", "data/corpus_train.jsonl",
                 "models/base/model.safetensors", "models/sft/model.safetensors", "models/flan/model.safetensors",
                 "models/round1/rm/reward_model.json", "models/round1/ppo/model.safetensors",
                 "models/round1/ppo_ptx/model.safetensors", "models/ppo_ptx/value_model/reward_model.json",
                 "eval/results.json", "report.html", "report.md"]:
        assert (run / path).exists(), path
    for stage in ("world", "base", "sft", "flan", "rankings_r1", "rm_r1", "ppo_r1", "ppo_ptx_r1", "eval"):
        assert stage in result.stages
    info = json.loads((run / "models/round1/ppo_ptx/instructgpt.json").read_text())
    assert info["stage"] == "ppo-ptx" and info["config"]["ptx_coef"] > 0
    assert info["config"]["reference"].endswith("models/sft")
    rankings = [json.loads(l) for l in (run / "data/rankings_r1/train.jsonl").read_text().splitlines()]
    assert all(cfg.k_min <= len(r["responses"]) <= cfg.k_max for r in rankings)
    assert all(r["labeler_id"].startswith("T") for r in rankings)  # training labelers only
    results = json.loads((run / "eval/results.json").read_text())
    names = {m["name"] for m in results["models"]}
    assert {"base", "sft", "ppo", "ppo_ptx"} <= names


def test_curation_split_keeps_users_apart(tiny_run):
    cfg, _, _ = tiny_run
    users = {}
    for split in ("train", "valid", "test"):
        for line in (cfg.run_dir / f"data/prompts_rm_{split}.jsonl").read_text().splitlines():
            users.setdefault(json.loads(line)["user_id"], set()).add(split)
    assert users and all(len(s) == 1 for s in users.values())


def test_no_held_out_prompt_repeats_a_training_prompt_of_any_pool(tiny_run):
    """The pools were curated apart: test prompts repeated the sft, rm or ppo pool's training prompts."""
    from instructgpt.curate import dedupe_text, normalize_text
    from instructgpt.data import load_prompts
    cfg, _, _ = tiny_run
    data = cfg.run_dir / "data"
    def keys(split):
        return [normalize_text(dedupe_text(p))[:60] for pool in ("sft", "rm", "ppo")
                for p in load_prompts(data / f"prompts_{pool}_{split}.jsonl")]
    test, trained = keys("test"), set(keys("train"))
    assert test and not set(test) & trained and not set(keys("valid")) & trained
    assert len(set(test)) == len(test) == len(load_prompts(data / "prompts_test.jsonl"))


def test_the_world_is_generated_once_and_read_back(tiny_run):
    cfg, _, generations = tiny_run
    assert generations and all(generations), "a world was generated outside the world stage"
    for name in ("config.json", "world.json", "panel.json", "probes.json", "prompts_rm.jsonl", "manifest.json"):
        assert (cfg.run_dir / "world" / name).is_file(), name


def test_eval_of_the_run_folder_reproduces_the_runs_own_results_and_report(tiny_run):
    """``instructgpt eval run_dir=X`` (nothing else given) writes what the run wrote, timing aside:
    the rounds, the agreement on the RM comparisons and the curves are eval's own rows now."""
    from instructgpt.cli import main
    cfg, _, _ = tiny_run
    run = cfg.run_dir
    own_report = {name: (run / name).read_bytes() for name in ("report.md", "report.html")}
    own = json.loads((run / "eval/results.json").read_text())
    assert main(["eval", f"run_dir={run}"]) == 0
    again = json.loads((run / "eval/results.json").read_text())
    assert own["meta"].pop("eval_seconds") > 0 and again["meta"].pop("eval_seconds") > 0
    assert again == own
    assert {name: (run / name).read_bytes() for name in own_report} == own_report
    assert own["meta"]["test_prompts"] == TINY["eval_prompts"] and own["meta"]["seed"] == cfg.seed
    assert own["meta"]["round 1"].startswith("RM on ")
    # the PPO summaries are means over the last iterations, not one batch's score
    rows = [json.loads(line) for line in (run / "models/round1/ppo_ptx/metrics.jsonl").read_text().splitlines()]
    last = rows[-10:]
    mean = sum(m["ppo/score"] for m in last) / len(last)
    assert f"ppo_ptx: RM score {mean:.3f} and KL " in own["meta"]["round 1"]
    assert f"means of the last {len(last)} of {len(rows)} iterations" in own["meta"]["round 1"]
    assert {"training-training (RM comparisons)", "training-heldout (RM comparisons)",
            "training-training", "training-heldout"} <= set(own["agreement"])
    assert {e["method"] for e in own["agreement"].values()} == {"bootstrap-prompts"}  # one interval method
    assert set(own["training_curves"]) == {"ppo", "ppo_ptx"}


def test_second_run_reuses_finished_stages(tiny_run):
    cfg, first, _ = tiny_run
    again = run_pipeline(cfg)
    for name, info in again.stages.items():
        assert info["key"] == first.stages[name]["key"], name
        assert info["seconds"] == first.stages[name]["seconds"], name  # not re-run
    _, status = _keys(cfg, ppo_iterations=3)  # the plan a third run with one PPO option changed follows
    assert {n: status[n] for n in ("sft", "rm_r1", "ppo_r1", "ppo_ptx_r1", "eval")} == \
        {"sft": "done", "rm_r1": "done", "ppo_r1": "changed", "ppo_ptx_r1": "changed", "eval": "changed"}


def test_a_stage_written_by_other_code_is_kept_with_a_note_naming_both(tiny_run, capsys):
    """Stage keys hash the release, not the code: a finished stage that other code of this release wrote
    (its stage.json records the code's digest) is reused, and the run says so, naming both."""
    from instructgpt.stage_keys import code_digest
    cfg, first, _ = tiny_run
    marker_path = cfg.run_dir / "models" / "sft" / "stage.json"
    marker = json.loads(marker_path.read_text())
    assert marker["code"] == code_digest()
    try:
        marker_path.write_text(json.dumps({**marker, "code": "0123456789abcdef"}))
        capsys.readouterr()
        again = run_pipeline(cfg)
        out = capsys.readouterr().out
    finally:
        marker_path.write_text(json.dumps(marker))
    assert again.stages["sft"]["seconds"] == first.stages["sft"]["seconds"]  # kept, not run again
    noted = [line for line in out.splitlines() if "written by code" in line]
    assert len(noted) == 1, out
    assert "sft: reused" in noted[0] and "0123456789abcdef" in noted[0] and code_digest() in noted[0]


def test_a_world_folder_without_manifest_is_written_again_and_nothing_else(tiny_run, capsys):
    """A world/ finished by an older version (no panel.json, no manifest) cannot be read back:
    the world stage runs again (same seed, same world, same key), every other stage is reused."""
    cfg, _, _ = tiny_run
    before = run_pipeline(cfg)  # every stage reused
    world = cfg.run_dir / "world"
    manifest = (world / "manifest.json").read_text()
    (world / "manifest.json").unlink()
    (world / "panel.json").unlink()
    capsys.readouterr()
    again = run_pipeline(cfg)
    out = capsys.readouterr().out
    assert "older version" in out and "world: running" in out
    assert (world / "manifest.json").read_text() == manifest
    for name, info in again.stages.items():
        assert info["key"] == before.stages[name]["key"], name
        if name != "world":
            assert info["seconds"] == before.stages[name]["seconds"], name  # reused


def test_a_finished_run_keeps_final_models_and_metrics_only(tiny_run):
    """Retention: no checkpoints, optimizer states or raw PPO weights once a stage has finished; the
    final models, value models, metrics and stage markers stay; the lock is gone."""
    cfg, _, _ = tiny_run
    run = cfg.run_dir
    assert not list(run.rglob("checkpoints")), list(run.rglob("checkpoints"))
    assert not list(run.rglob("optim.pt")) and not list(run.rglob("policy_raw"))
    assert not list(run.rglob("stage.partial.json")) and not (run / "run.lock").exists()
    for name in ("base", "sft", "flan", "round1/rm", "round1/ppo", "round1/ppo_ptx"):
        assert (run / "models" / name / "metrics.jsonl").is_file(), name
        marker = json.loads((run / "models" / name / "stage.json").read_text())
        assert marker["seconds"] > 0 and marker["work"] > 0 and marker["peak_rss_mb"] > 0, name
    assert (run / "models/round1/ppo/value_model/model.safetensors").is_file()


def _keys(cfg, **changes):
    from instructgpt.pipeline import Pipeline
    plan = Pipeline(dataclasses.replace(cfg, **changes)).planned()
    return {st.name: key for st, key, _ in plan}, {st.name: status for st, _, status in plan}


def test_keys_cover_the_pipelines_own_stage_options_and_not_runtime_ones(tiny_run, monkeypatch):
    """SFT's batch, warmup and dropout, the RM batch, PPO's micro-batches were once hard-coded in no key."""
    from instructgpt import pipeline
    cfg, _, _ = tiny_run
    before, _ = _keys(cfg)
    assert before.keys() == {"world", "base", "sft", "flan", "rankings_r1", "rm_r1", "ppo_r1", "ppo_ptx_r1", "eval"}
    same, _ = _keys(cfg, device="cpu", progress=not cfg.progress, checkpoint_minutes=1.5, keep_checkpoints=3,
                    keep_optimizer=True, resume=False)
    assert same == before
    for stage, option, value, first_changed in (("sft", "warmup_steps", 5, "sft"), ("rm", "batch_size", 8, "rm_r1"),
                                                 ("ppo", "micro_batch_size", 4, "ppo_r1")):
        monkeypatch.setitem(pipeline.PROFILES["tiny"], stage, {**pipeline.PROFILES["tiny"][stage], option: value})
        after, _ = _keys(cfg)
        order = list(before)
        changed = [n for n in order if after[n] != before[n]]
        assert changed == [n for n in order[order.index(first_changed):]
                           if n != "flan" or stage == "sft"], (option, changed)
        monkeypatch.undo()
    after, _ = _keys(cfg, scale=cfg.scale * 2)
    assert all(after[n] != before[n] for n in before)  # the world, so everything trained on it


def test_base_model_keys_follow_its_content_and_the_data_not_its_name(tiny_run, tmp_path, capsys):
    """--base-model: the SFT key is the checkpoint's content hash, not its name; scale still counts."""
    cfg, _, _ = tiny_run
    base = tmp_path / "my-model"
    shutil.copytree(cfg.run_dir / "models/base", base, ignore=shutil.ignore_patterns("stage*.json", "checkpoints"))
    common = dict(base_model=str(base), runs_dir=str(tmp_path / "runs"), name="b", flan=False)
    before, status = _keys(cfg, **common)
    assert list(before) == ["world", "sft", "rankings_r1", "rm_r1", "ppo_r1", "ppo_ptx_r1", "eval"]
    assert set(status.values()) == {"new"}
    moved = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(base, moved)
    assert _keys(cfg, **{**common, "base_model": str(moved)})[0] == before
    assert _keys(cfg, **common, scale=cfg.scale * 2)[0]["sft"] != before["sft"]
    weights = moved / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 1
    weights.write_bytes(bytes(blob))
    after, _ = _keys(cfg, **{**common, "base_model": str(moved)})
    assert after["world"] == before["world"] and all(after[n] != before[n] for n in before if n != "world")


def test_base_model_run_prints_the_real_checkpoint_defaults_and_warns_about_the_corpus(tiny_run, tmp_path, capsys):
    from instructgpt.pipeline import PROFILES, Pipeline
    cfg, _, _ = tiny_run
    base = cfg.run_dir / "models/base"
    p = Pipeline(dataclasses.replace(cfg, base_model=str(base), runs_dir=str(tmp_path), sft_lr=None, sft_epochs=None,
                                     rm_lr=None, rm_epochs=None, ppo_lr=None, flan_epochs=None, flan_lr=None,
                                     ptx_coef=None, eval_prompts=None))
    assert (p.cfg.sft_lr, p.cfg.sft_epochs, p.cfg.rm_lr, p.cfg.ppo_lr, p.cfg.ptx_coef, p.cfg.eval_prompts) == \
        (1e-5, 3, 9e-6, 5e-6, 1.0, 400)
    p.print_header(p.planned())
    out, err = capsys.readouterr()
    assert "a real checkpoint, so the paper's settings apply" in out
    assert ("sft_epochs=3 sft_lr=1e-05 flan_epochs=1 flan_lr=1e-05 rm_epochs=1 rm_lr=9e-06 ppo_lr=5e-06 ptx_coef=1 "
            "eval_prompts=400") in out
    assert "sft: batch_size=32 micro_batch_size=4" in out and PROFILES["real"]["sft"]["warmup_steps"] == 10
    assert "warning: PPO-ptx mixes the built-in world's synthetic corpus" in err
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a sample of the model's own pretraining text\n\nanother document\n")
    p = Pipeline(dataclasses.replace(cfg, base_model=str(base), runs_dir=str(tmp_path), sft_lr=2e-5,
                                     pretrain_data=str(corpus)))
    plan = p.planned()
    p.print_header(plan)
    out, err = capsys.readouterr()
    assert "warning" not in err and "sft_lr" not in out  # set by the user: not a profile default
    (ptx,) = [st for st, _, _ in plan if st.name == "ppo_ptx_r1"]
    assert ptx.config.pretrain_data == str(corpus) and ptx.config.lr == 5e-6
    (sft,) = [st for st, _, _ in plan if st.name == "sft"]
    assert sft.config.lr == 2e-5 and sft.config.model == str(base)


def test_ptx_coef_defaults_per_profile_and_a_set_value_wins(tmp_path):
    """The built-in base's PPO-ptx mixes the pretraining loss at 0.03 (measured: 1.0 re-learned the corpus and
    cost 8.5 points of true follow, 0.1 raised closed-domain hallucination from PPO's 50.5% to 62.9%), a real
    checkpoint at 1.0; a value the user sets is kept."""
    from instructgpt.pipeline import Pipeline
    def ptx_stage(cfg):
        p = Pipeline(cfg)
        (st,) = [st for st, _, _ in p.planned() if st.name == "ppo_ptx_r1"]
        return p.cfg.ptx_coef, st.config.ptx_coef
    assert ptx_stage(RunConfig(runs_dir=str(tmp_path))) == (0.03, 0.03)
    assert ptx_stage(RunConfig(runs_dir=str(tmp_path), ptx_coef=0.5)) == (0.5, 0.5)


def test_the_larger_base_pretrains_as_long_as_the_tiny_one_unless_set(tmp_path):
    """large_base=true (claim b): after 1 epoch the larger base was a worse language model than the tiny
    base after 4 (held-out perplexity 3.73 against 2.01), so it follows pretrain_epochs; a set value wins."""
    from instructgpt.pipeline import Pipeline
    def epochs(**kw):
        stages = {st.name: st for st, _, _ in Pipeline(RunConfig(runs_dir=str(tmp_path), large_base=True,
                                                                 **kw)).planned()}
        return stages["base"].config.epochs, stages["base_large"].config.epochs
    assert epochs() == (4, 4)
    assert epochs(pretrain_epochs=2) == (2, 2)
    assert epochs(pretrain_large_epochs=1) == (4, 1)


def test_the_reward_model_of_the_built_in_base_trains_at_3e_4(tmp_path):
    """At 1e-3 the tiny RM ranked 66.7 / 58.2 / 47.7% of the test pairs right, at 3e-4 70.0 / 61.0 / 48.4%
    (world / world-policy / policy pairs); a real checkpoint keeps the paper's 9e-6; a set value wins."""
    from instructgpt.pipeline import Pipeline
    def rm_stage(cfg):
        (st,) = [st for st, _, _ in Pipeline(cfg).planned() if st.name == "rm_r1"]
        return st.config.lr, st.config.epochs
    assert rm_stage(RunConfig(runs_dir=str(tmp_path))) == (3e-4, 2)
    assert rm_stage(RunConfig(runs_dir=str(tmp_path), rm_lr=1e-3)) == (1e-3, 2)


def test_keep_checkpoints_above_two_is_what_a_running_stage_keeps_too(tmp_path):
    """A running stage pruned to its 2 newest checkpoints, so keep_checkpoints=3 could only ever keep 2."""
    from instructgpt.pipeline import Pipeline
    def kept(**kw):
        return {st.config.keep_checkpoints for st, _, _ in Pipeline(RunConfig(runs_dir=str(tmp_path), **kw)).planned()
                if hasattr(st.config, "keep_checkpoints")}
    assert kept() == {2}
    assert kept(keep_checkpoints=3) == {3}


def test_the_built_in_world_is_evaluated_on_every_test_prompt_unless_set(tmp_path):
    """All test prompts by default with the built-in base (626 at scale 1: intervals of about +-0.025
    with 3 held-out judgements); a value the user sets reaches the eval stage."""
    from instructgpt.pipeline import Pipeline
    def eval_stage(cfg):
        p = Pipeline(cfg)
        (st,) = [st for st, _, _ in p.planned() if st.name == "eval"]
        return p.cfg.eval_prompts, st.config.n_prompts
    assert eval_stage(RunConfig(runs_dir=str(tmp_path))) == (0, 0)
    assert eval_stage(RunConfig(runs_dir=str(tmp_path), eval_prompts=250)) == (250, 250)


def test_the_continuation_probe_size_is_a_run_option_that_reaches_the_eval_stage(tmp_path):
    """continuation_items of instructgpt run reaches the eval stage's config (its key) and its time
    estimate; 0 skips the probe (a real checkpoint scores 4 candidates per item per model)."""
    from instructgpt.pipeline import Pipeline
    def eval_stage(**kw):
        (st,) = [st for st, _, _ in Pipeline(RunConfig(runs_dir=str(tmp_path), **kw)).planned() if st.name == "eval"]
        return st
    default, small, off = eval_stage(), eval_stage(continuation_items=40), eval_stage(continuation_items=0)
    assert (default.config.continuation_items, small.config.continuation_items, off.config.continuation_items) \
        == (500, 40, 0)
    assert default.work() > small.work() > off.work()


def test_the_flan_baseline_trains_at_its_own_learning_rate(tmp_path):
    """FLAN-style answers are a word or two: at SFT's 1e-3 the baseline lost its language model
    (held-out perplexity 10,966); its own default is 3e-4, and a value the user sets wins."""
    from instructgpt.pipeline import Pipeline
    def lrs(cfg):
        stages = {st.name: st for st, _, _ in Pipeline(cfg).planned()}
        return stages["sft"].config.lr, stages["flan"].config.lr
    assert lrs(RunConfig(runs_dir=str(tmp_path))) == (1e-3, 3e-4)
    assert lrs(RunConfig(runs_dir=str(tmp_path), flan_lr=5e-5, sft_lr=2e-4)) == (2e-4, 5e-5)


def test_rloo_is_a_run_option_that_reaches_both_ppo_stages(tmp_path):
    """ppo_advantage_estimator and ppo_samples_per_prompt reach PPO and PPO-ptx (their keys), and the time
    estimate counts no value model; the default is the paper's PPO."""
    from instructgpt.pipeline import Pipeline
    def ppo_stages(**kw):
        stages = {st.name: st for st, _, _ in Pipeline(RunConfig(runs_dir=str(tmp_path), **kw)).planned()}
        return stages["ppo_r1"], stages["ppo_ptx_r1"]
    default, rloo = ppo_stages(), ppo_stages(ppo_advantage_estimator="rloo", ppo_samples_per_prompt=4)
    assert {(st.config.advantage_estimator, st.config.samples_per_prompt) for st in default} == {("gae", 1)}
    assert {(st.config.advantage_estimator, st.config.samples_per_prompt) for st in rloo} == {("rloo", 4)}
    assert all(r.work() < d.work() for d, r in zip(default, rloo))


def test_the_runs_ptx_token_ratio_reaches_ppo_ptx_only(tmp_path):
    """`instructgpt ppo ptx_token_ratio=4` without ptx_coef is an error (the ratio is only read by PPO-ptx), so the
    run's plain PPO stage takes the option's default and PPO-ptx the run's value."""
    from instructgpt.pipeline import Pipeline
    from instructgpt.ppo_config import PtxOptions
    stages = {st.name: st for st, _, _ in Pipeline(RunConfig(runs_dir=str(tmp_path), ptx_token_ratio=2.0)).planned()}
    assert stages["ppo_r1"].config.ptx_token_ratio == PtxOptions.ptx_token_ratio != 2.0
    assert stages["ppo_ptx_r1"].config.ptx_token_ratio == 2.0


def test_cli_label_dispatches_before_importing_torch():
    """The CLI's signal handling and run lock import nothing heavy: ``instructgpt label`` stays fast."""
    code = ("import sys; from instructgpt.cli import main\n"
            "try:\n    main(['label', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout + out.stderr


@pytest.mark.slow
def test_medium_run_base_continues_and_sft_follows(tmp_path):
    """The paper's starting point and step 1, measured by the checkers on held-out prompts:
    the base model mostly fails to follow instructions; SFT raises the pass rate clearly."""
    cfg = config.from_dict(RunConfig, dict(runs_dir=str(tmp_path), name="m", ppo_iterations=4, flan=False,
                                           eval_prompts=300))
    run_pipeline(cfg)
    results = json.loads((cfg.run_dir / "eval/results.json").read_text())
    by_name = {m["name"]: m for m in results["models"]}
    fails = {n: by_name[n]["metadata"]["fails_to_follow"] for n in ("base", "sft")}
    assert fails["base"]["low"] > fails["sft"]["high"], fails
    assert fails["base"]["value"] > 0.5, fails
    # issue 13's target, by the world's checkers: SFT truly follows at least half of the test prompts
    # (28% before names became one token wherever they stand and the base pretrained 4 epochs; 72% now)
    assert by_name["sft"]["metadata"]["true_fails_to_follow"]["value"] <= 0.5, by_name["sft"]["metadata"]


@pytest.mark.slow
def test_rounds_iterate_rm_and_ppo(tmp_path):
    cfg = config.from_dict(RunConfig, dict(runs_dir=str(tmp_path), name="r", rounds=2, evaluate=False, **TINY))
    result = run_pipeline(cfg)
    assert {"rankings_r2", "rm_r2", "ppo_r2", "ppo_ptx_r2"} <= set(result.stages)
    assert result.stages["rm_r2"]["summary"]["rankings"] > result.stages["rm_r1"]["summary"]["rankings"]
    info = json.loads((cfg.run_dir / "models/round2/ppo/instructgpt.json").read_text())
    assert info["config"]["policy"].endswith("round1/ppo")


def test_the_default_run_gives_sft_its_own_prompt_count(tmp_path):
    """Issue 13: SFT demonstrations are not tied to scale (290 training demonstrations starved SFT)."""
    from instructgpt.pipeline import Pipeline
    cfg = RunConfig(runs_dir=str(tmp_path))
    world = Pipeline(cfg).stages.world_config()["world"]
    assert world.sft_prompts == 1500 and world.set_sizes()["sft"] == 1500
    assert world.set_sizes()["rm"] == round(33_000 * cfg.scale)
    assert Pipeline(RunConfig(runs_dir=str(tmp_path), sft_prompts=0)).stages.world_config()["world"].set_sizes()["sft"] \
        == round(13_000 * cfg.scale)
    with pytest.raises(config.ConfigError, match="sft_prompts"):
        RunConfig(sft_prompts=-1).validate()


def test_run_help_in_a_bare_interpreter_lists_options_without_matplotlib():
    """`instructgpt run --help` must not rely on modules that site or other packages happen to import first
    (a fresh virtual environment has fewer of them): the CLI's main with no site hooks. It lists the run's
    options, and leaves matplotlib unimported: only eval draws figures (about 1 s of every command's start)."""
    import sysconfig
    from pathlib import Path

    import instructgpt
    src = str(Path(instructgpt.__file__).resolve().parents[1])
    # this process's package folders: under -S a virtual environment is not applied (site.py does that), so the
    # child's own sysconfig names the base interpreter's, which on a fresh machine holds no torch
    packages = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    code = ("import sys; sys.path[:0] = sys.argv[1:]\n"
            "from instructgpt.cli import main\n"
            "try:\n    main(['run', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "print('matplotlib imported:', 'matplotlib' in sys.modules)")
    done = subprocess.run([sys.executable, "-S", "-c", code, src, *packages], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    for option in ("scale", "rounds", "base_model", "ptx_coef", "kl_coef", "--rounds", "--base-model",
                   "keep_checkpoints", "keep_optimizer", "checkpoint_minutes", "pretrain_data"):
        assert option in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "matplotlib imported: False"


def test_the_eval_time_estimate_counts_every_test_prompt_when_all_are_evaluated(tmp_path):
    """eval_prompts=0 means every test prompt: the stage's work grows with the file (it read 0 before)."""
    import json

    from instructgpt.pipeline import Pipeline

    def eval_work(n_available, **kw):
        p = Pipeline(RunConfig(runs_dir=str(tmp_path / f"{n_available}-{kw}"), **kw))
        path = p.run_folder.test_prompts
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"id": f"t{i}", "text": "Write a poem about the sea.", "user_id": "u",
                                            "use_case": "generation", "split": "test"}) + "\n"
                                for i in range(n_available)))
        (st,) = [st for st, _, _ in p.planned() if st.name == "eval"]
        return st.work()

    assert eval_work(40) > eval_work(20) > eval_work(0)
    assert eval_work(40, eval_prompts=10) == eval_work(20, eval_prompts=10) < eval_work(20)


@pytest.mark.parametrize("options,message", [
    (dict(ppo_batch=4, ppo_minibatch=8), "stage ppo_r1: minibatch_size: must divide batch_size=4, got 8"),
    (dict(sft_lr=-1.0), "stage sft: lr: must be > 0"),
    (dict(kl_coef=-1.0), "stage ppo_r1: kl_coef: must be >= 0, got -1.0"),
    (dict(ptx_coef=-2.0), "stage ppo_ptx_r1: ptx_coef: must be >= 0, got -2.0"),
])
def test_a_run_option_that_breaks_a_stage_stops_the_run_before_it_starts(tmp_path, options, message):
    """Each stage's own checks run on every stage's config when the run is planned: a bad option used to be
    accepted (ppo_minibatch > ppo_batch, kl_coef < 0) or to fail with a traceback after the base had trained."""
    from instructgpt.pipeline import Pipeline
    earlier = tmp_path / "r" / "run_config.json"
    earlier.parent.mkdir()
    earlier.write_text('{"an earlier": "run"}\n')
    with pytest.raises(config.ConfigError) as e:
        Pipeline(RunConfig(runs_dir=str(tmp_path), name="r", **options)).run()
    assert str(e.value).startswith(message), e.value
    assert earlier.read_text() == '{"an earlier": "run"}\n'  # nothing of the folder was touched
    assert sorted(p.name for p in earlier.parent.iterdir()) == ["run_config.json"]
    with pytest.raises(config.ConfigError):  # a new run's folder is not made (it was, empty)
        Pipeline(RunConfig(runs_dir=str(tmp_path), name="typo", **options)).run()
    assert not (tmp_path / "typo").exists()


def test_a_changed_stage_that_fails_gives_back_its_finished_folder(tiny_run, tmp_path, capsys):
    """A finished stage whose options changed used to be deleted before its new attempt checked its inputs:
    with pretrain_data= a corpus too short for one block, PPO-ptx failed and its finished model was gone."""
    cfg, _, _ = tiny_run
    copy = tmp_path / "t"
    shutil.copytree(cfg.run_dir, copy, symlinks=True)
    ptx = copy / "models" / "round1" / "ppo_ptx"
    before = {p.relative_to(ptx): p.read_bytes() for p in ptx.rglob("*") if p.is_file()}
    (tmp_path / "short.txt").write_text("five words and no more\n")
    changed = dataclasses.replace(cfg, runs_dir=str(tmp_path), pretrain_data=str(tmp_path / "short.txt"))
    with pytest.raises(Exception, match="short.txt: 1 documents, .* fewer than one block"):
        run_pipeline(changed)
    assert "ppo_ptx_r1: failed; its earlier finished folder is back" in capsys.readouterr().err
    assert {p.relative_to(ptx): p.read_bytes() for p in ptx.rglob("*") if p.is_file()} == before
    assert not (ptx.parent / "ppo_ptx.previous").exists()
    assert run_pipeline(dataclasses.replace(cfg, runs_dir=str(tmp_path))).stages["ppo_ptx_r1"]["seconds"] == \
        json.loads((ptx / "stage.json").read_text())["seconds"]  # the old options: reused, not rerun


def test_a_finished_stage_set_aside_comes_back_when_its_options_do(tiny_run, tmp_path, monkeypatch, capsys):
    """A stage whose options changed waits in <folder>.previous while the new attempt runs. When that attempt
    was stopped (Ctrl-C, SIGTERM, kill -9), a rerun with the old options trained the stage again from scratch
    and deleted the finished one that had exactly those options."""
    import signal
    from instructgpt import interrupt, ppo
    cfg, _, _ = tiny_run
    copy = tmp_path / "t"
    shutil.copytree(cfg.run_dir, copy, symlinks=True)
    ptx = copy / "models" / "round1" / "ppo_ptx"
    before = {p.relative_to(ptx): p.read_bytes() for p in ptx.rglob("*") if p.is_file()}

    def stopped(pc):
        (ptx / "checkpoints").mkdir()  # what the stopped attempt had written
        raise interrupt.Stopped(signal.SIGINT)
    monkeypatch.setattr(ppo, "train_ppo", stopped)  # and a rerun may not train PPO again
    with pytest.raises(interrupt.Stopped):
        run_pipeline(dataclasses.replace(cfg, runs_dir=str(tmp_path), ptx_coef=0.5))
    assert (ptx.parent / "ppo_ptx.previous" / "stage.json").is_file() and (ptx / "checkpoints").is_dir()
    result = run_pipeline(dataclasses.replace(cfg, runs_dir=str(tmp_path)))
    out = capsys.readouterr().out
    assert f"ppo_ptx_r1: its options are those of the earlier finished stage in {ptx}.previous: brought back" in out
    assert "ppo_ptx_r1: reused" in out and "eval: reused" in out
    assert {p.relative_to(ptx): p.read_bytes() for p in ptx.rglob("*") if p.is_file()} == before
    assert not (ptx.parent / "ppo_ptx.previous").exists()
    assert result.stages["ppo_ptx_r1"]["seconds"] == json.loads((ptx / "stage.json").read_text())["seconds"]


@pytest.mark.parametrize("options,message", [
    (dict(name=".."), "name: '..' is not a folder name"), (dict(name="a/b"), "name: 'a/b' is not a folder name"),
    (dict(name=""), "name: '' is not a folder name"), (dict(base_model="/no/such/model"), "base_model: /no/such/"),
    (dict(vocab_size=0), "vocab_size: must be >= 258"), (dict(corpus_docs=0), "corpus_docs: must be >= 1"),
    (dict(eval_prompts=-1), "eval_prompts: must be >= 0"), (dict(policy_samples=1), "policy_samples: must be >= 2"),
    (dict(seed=-1), "seed: must be in [0, 2^63 - 1]"), (dict(device="gpu0"), "device: 'gpu0' is not auto"),
])
def test_run_options_that_cannot_work_are_errors_before_the_folder_is_made(tmp_path, options, message):
    """``name=..`` wrote the run into the parent of runs_dir, a missing --base-model was found only after the
    world stage, vocab_size=0 trained."""
    with pytest.raises(config.ConfigError) as e:
        config.from_dict(RunConfig, dict(runs_dir=str(tmp_path / "runs"), **options))
    assert str(e.value).startswith(message), e.value
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("option", ["large_base=true", "pretrain_epochs=8", "pretrain_large_epochs=2",
                                    "pretrain_lr=1e-3", "vocab_size=8000"])
def test_options_of_the_tiny_base_with_base_model_are_an_error_not_ignored(tmp_path, option):
    """With --base-model nothing is pretrained and no tokenizer trained: large_base=true made no larger base
    (claim b had none), pretrain_* and vocab_size changed nothing, and the run said nothing."""
    base = tmp_path / "base"
    base.mkdir()
    name = option.split("=")[0]
    with pytest.raises(config.ConfigError, match=rf"^{name}: with base_model the run pretrains no base and trains "
                                                 rf"no tokenizer, so {name}=.* would do nothing"):
        config.load(RunConfig, overrides=[f"runs_dir={tmp_path / 'runs'}", f"base_model={base}", option])
    assert not (tmp_path / "runs").exists()
    config.load(RunConfig, overrides=[f"runs_dir={tmp_path / 'runs'}", option, *(["large_base=true"] if
                                      name == "pretrain_large_epochs" else [])])  # the built-in base reads it
    with pytest.raises(config.ConfigError, match=r"^pretrain_large_epochs: 2 epochs of the larger base, which only "
                                                 r"large_base=true pretrains"):
        config.load(RunConfig, overrides=[f"runs_dir={tmp_path / 'runs'}", "pretrain_large_epochs=2"])


@pytest.mark.parametrize("option", ["pretrain_data=corpus.txt", "ptx_token_ratio=8"])
def test_ptx_options_of_a_run_without_ptx_are_an_error_not_ignored(tmp_path, option):
    """ptx_coef=0 gives the run's ppo_ptx stage no pretraining loss: pretrain_data and ptx_token_ratio reached no
    stage, and the run said nothing."""
    (tmp_path / "corpus.txt").write_text("a document\n\nanother one\n")
    name, value = option.split("=")
    option = f"{name}={tmp_path / value}" if name == "pretrain_data" else option
    with pytest.raises(config.ConfigError, match=rf"^{name}: only read by PPO-ptx, so {name}=.* would do nothing "
                                                 rf"with ptx_coef=0"):
        config.load(RunConfig, overrides=[f"runs_dir={tmp_path / 'runs'}", "ptx_coef=0", option])
    cfg = config.load(RunConfig, overrides=[f"runs_dir={tmp_path / 'runs'}", "ptx_coef=0.5", option])
    assert getattr(cfg, name) != getattr(RunConfig(), name)


def test_cli_paths_of_the_wrong_kind_exit_2_and_eval_has_no_resume_flag(tmp_path, capsys):
    from instructgpt.cli import main
    (tmp_path / "p.jsonl").write_text('{"id": "a", "text": "hello there", "user_id": "u"}\n')
    (tmp_path / "a_file").write_text("")
    assert main(["curate", f"prompts={tmp_path / 'p.jsonl'}", f"out_dir={tmp_path / 'a_file'}"]) == 2
    assert "instructgpt curate: error: " in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # eval has no checkpoints: --resume is not offered
        main(["eval", "--resume", "run_dir=x"])
    assert e.value.code == 2 and "unrecognized arguments: --resume" in capsys.readouterr().err


def test_cli_flags_go_between_options_and_may_not_be_given_twice(tmp_path, capsys):
    from instructgpt.cli import build_parser, main
    args = build_parser().parse_args(["run", "a=1", "--rounds", "2", "b=2", "--base-model", "m", "c=3"])
    assert (args.overrides, args.rounds, args.base_model) == (["a=1", "b=2", "c=3"], 2, "m")
    args = build_parser().parse_args(["sft", "model=m", "--resume", "train=t"])
    assert args.overrides == ["model=m", "train=t"] and args.resume
    for twice in (["--config", "a.toml", "x=1", "--config", "b.toml"], ["--rounds", "1", "--rounds", "2"]):
        with pytest.raises(SystemExit) as e:  # the second used to win silently
            main(["run", *twice])
        assert e.value.code == 2 and f"{twice[0]} given twice" in capsys.readouterr().err
    assert main(["run", "vocab_size=300", "--rounds", "1", "bogus=1"]) == 2
    assert "command line: bogus: unknown option for RunConfig" in capsys.readouterr().err


@pytest.mark.parametrize("argv, named", [
    (["run", "rounds=3", "--rounds", "2"], "rounds: given twice (--rounds and rounds=3)"),
    (["run", "--base-model", "m", "base_model=n"], "base_model: given twice (--base-model and base_model=n)"),
    (["run", "resume=false", "--resume"], "resume: given twice (--resume and resume=false)"),
    (["sft", "model=m", "train=t", "runtime.resume=false", "--resume"],
     "resume: given twice (--resume and runtime.resume=false)"),
])
def test_a_flag_and_its_option_given_together_are_an_error(tmp_path, monkeypatch, capsys, argv, named):
    """The flag won silently: rounds=3 --rounds 2 ran 2 rounds, resume=false --resume resumed."""
    import instructgpt.pipeline
    import instructgpt.sft
    from instructgpt import cli
    for module, function in ((instructgpt.pipeline, "run_pipeline"), (instructgpt.sft, "train_sft")):
        monkeypatch.setattr(module, function, lambda cfg: pytest.fail(f"ran with {cfg}"))
    monkeypatch.chdir(tmp_path)
    where = f"out_dir={tmp_path / 'o'}" if argv[0] == "sft" else f"runs_dir={tmp_path / 'runs'}"
    assert cli.main([*argv, where]) == 2
    assert f"command line: {named}; give one of them" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_a_run_config_file_with_other_stages_tables_is_an_error_not_ignored(tmp_path, monkeypatch, capsys):
    """[sft] dropout=0.0 and [ppo] cliprange=0.1 in the file given to instructgpt run reached none of its stages:
    the run trained at dropout 0.1 and cliprange 0.2 without a word."""
    import instructgpt.pipeline
    from instructgpt import cli
    ran = []
    monkeypatch.setattr(instructgpt.pipeline, "run_pipeline", ran.append)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.toml").write_text(f'[run]\nruns_dir = "{tmp_path / "runs"}"\n[sft]\ndropout = 0.0\n'
                                       f'[ppo]\ncliprange = 0.1\n')
    assert cli.main(["run", "--config", str(tmp_path / "run.toml")]) == 2
    assert (f"{tmp_path / 'run.toml'}: [ppo], [sft]: instructgpt run reads only [run]; its stages take their "
            f"options from the run's") in capsys.readouterr().err
    assert ran == [] and not (tmp_path / "runs").exists()
    (tmp_path / "run.toml").write_text(f'[run]\nruns_dir = "{tmp_path / "runs"}"\nrounds = 2\n')
    assert cli.main(["run", "--config", str(tmp_path / "run.toml")]) == 0 and ran[0].rounds == 2   # [run] alone


def test_a_changed_world_that_fails_gives_back_its_data_and_tokenizer_too(tmp_path, monkeypatch, capsys):
    """The world stage writes data/ and tokenizer/ besides world/. A changed world that failed part way (a full
    disk while its tokenizer was written) got world/ back with its old marker while data/ kept the failed
    attempt's prompts and demonstrations: the old options then reused every stage on another world's data."""
    import errno
    from instructgpt import pretrain, world
    cfg = config.from_dict(RunConfig, dict(runs_dir=str(tmp_path), name="w", **TINY))
    copy = tmp_path / "w"

    def only_the_world(pc):
        raise RuntimeError("the test stops after the world")
    monkeypatch.setattr(pretrain, "train_pretrain", only_the_world)
    with pytest.raises(RuntimeError, match="stops after the world"):
        run_pipeline(cfg)

    def files():
        return {p.relative_to(copy): p.read_bytes() for part in ("world", "data", "tokenizer")
                for p in (copy / part).rglob("*") if p.is_file()}
    before = files()

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(world, "train_tokenizer", full_disk)
    with pytest.raises(OSError, match="No space left"):
        run_pipeline(dataclasses.replace(cfg, scale=2 * cfg.scale))
    assert "world: failed; its earlier finished folder is back" in capsys.readouterr().err
    assert files() == before
    assert not list(copy.glob("*.previous"))


def test_a_run_and_a_stage_on_its_own_do_not_write_one_stage_folder_at_once(tiny_run, tmp_path, monkeypatch):
    """`instructgpt run` deleted (or set aside) an unfinished stage folder, lock file and all, while
    `instructgpt ppo out_dir=<that folder>` was writing it, and a stage on its own could write a stage folder
    the run was about to read. The run now holds each stage folder's run.lock from its first touch to its end,
    and its clean-ups leave that file in place."""
    import os
    from instructgpt import interrupt, ppo
    from instructgpt.run_lock import RunLock, RunLockedError
    cfg, _, _ = tiny_run
    copy = tmp_path / "t"
    shutil.copytree(cfg.run_dir, copy, symlinks=True)
    ptx, sft = copy / "models" / "round1" / "ppo_ptx", copy / "models" / "sft"
    before = {p.relative_to(ptx): p.read_bytes() for p in ptx.rglob("*") if p.is_file()}
    changed = dataclasses.replace(cfg, runs_dir=str(tmp_path), ptx_coef=0.5)

    # 1. a stage on its own holds ppo_ptx's folder: the run stops there, moving and deleting nothing of it
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from instructgpt.run_lock import RunLock; "
                               "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)",
                               str(ptx / "run.lock")], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=f"{ptx} is in use by another instructgpt run \\(pid {holder.pid}"):
            run_pipeline(changed)
        assert json.loads((ptx / "run.lock").read_text())["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
    assert {p.relative_to(ptx): p.read_bytes() for p in ptx.rglob("*") if p.is_file() and p.name != "run.lock"} \
        == before and not (ptx.parent / "ppo_ptx.previous").exists()

    # 2. while the run trains ppo_ptx, its folder (set aside, lock file kept) and sft's are the run's
    seen = {}

    def stopped(pc):
        seen["lock"] = json.loads((ptx / "run.lock").read_text())["pid"]
        for folder in (ptx, sft):
            with pytest.raises(RunLockedError):
                RunLock(folder / "run.lock", option="out_dir").acquire()
            seen[folder.name] = True
        raise interrupt.Stopped(2)
    monkeypatch.setattr(ppo, "train_ppo", stopped)
    with pytest.raises(interrupt.Stopped):
        run_pipeline(changed)
    assert seen == {"lock": os.getpid(), "ppo_ptx": True, "sft": True}
    assert (ptx.parent / "ppo_ptx.previous" / "stage.json").is_file()
    assert not list(copy.rglob("run.lock"))  # all released at the run's end


def test_a_stage_folder_the_runs_lock_made_and_nothing_wrote_is_removed_with_the_lock(tmp_path):
    """The run's lock of a stage folder makes the folder: one the run stopped before writing (an error between
    the lock and the stage) stayed behind, empty, because it was looked at before the lock file went."""
    import contextlib
    from instructgpt.pipeline import Pipeline
    from instructgpt.run_stages import Stage
    pipeline = Pipeline(RunConfig(runs_dir=str(tmp_path)))
    fresh, kept = tmp_path / "r" / "models" / "sft", tmp_path / "r" / "world"
    kept.mkdir(parents=True)
    with contextlib.ExitStack() as pipeline.stage_locks:
        for folder in (fresh, kept):
            pipeline.hold(Stage(folder.name, "sft", folder, None, lambda c: None))
            assert (folder / "run.lock").is_file()
    assert not fresh.exists() and kept.is_dir() and not any(kept.iterdir())
