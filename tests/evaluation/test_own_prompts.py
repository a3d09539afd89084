"""``instructgpt eval prompts=... models=... baseline=...``: two tiny models with a known difference, three judges.

The models answer every prompt with one word, always: ``sft`` " blue", ``ppo``
" red" (their logits are forced). The reward model scores an answer ending in
" red" +4 and one ending in " blue" -4; the judge model always answers "A";
the people of the labeling app rank red above blue. So, by hand: the reward
model gives ppo a 100% win rate, the judge model 50% (all ties: its position
bias cancels), people 100%; KL(ppo || sft) is 10 nats per token.
"""

from __future__ import annotations

import json
import shutil

import pytest

from instructgpt.cli import main
from instructgpt.data import DataError
from instructgpt.evaluation import EvalResults
from instructgpt.evaluation.config import EvalConfig
from instructgpt.evaluation.run import run_eval
from tests.conftest import write_jsonl

from .chat_models import chatml_model, chatml_tokenizer, force_token, last_token_reward_model, token_of

MAX_NEW = 4
PROMPTS = [
    {"id": "q0", "user_id": "u1", "text": "say red please", "use_case": "generation"},
    {"id": "q1", "user_id": "u1", "text": "say blue please", "use_case": "generation"},
    {"id": "q2", "user_id": "u2", "text": "name a cat", "use_case": "open_qa"},
    {"id": "q3", "user_id": "u2", "text": "name a dog", "use_case": "open_qa"},
    {"id": "q4", "user_id": "u3", "use_case": "brainstorming",
     "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "count one two"}]},
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    tok = chatml_tokenizer()
    red, blue = token_of(tok, " red"), token_of(tok, " blue")
    paths = {
        "sft": force_token(chatml_model(root / "sft", seed=0), blue),
        "ppo": force_token(chatml_model(root / "ppo", seed=1), red),
        "rm": last_token_reward_model(chatml_model(root / "rm_base", seed=2), root / "rm", tok, red, blue),
        "judge": force_token(chatml_model(root / "judge", seed=3, positions=1024), token_of(tok, "A")),
        "prompts": write_jsonl(root / "my.jsonl", PROMPTS),
    }
    return root, paths


def _args(paths, out, *extra) -> list[str]:
    return ["eval", f"prompts={paths['prompts']}", f"models=sft={paths['sft']},ppo={paths['ppo']}", "baseline=sft",
            f"max_new_tokens={MAX_NEW}", "temperature=0", "device=cpu", "batch_size=8", f"out_dir={out}", *extra]


@pytest.fixture(scope="module")
def judged(setup):
    root, paths = setup
    out = root / "out"
    assert main(_args(paths, out, f"reward_model={paths['rm']}", f"judge_model={paths['judge']}",
                      "judges=reward_model,judge_model,people")) == 0
    return out, EvalResults.load(out / "results.json")


def test_every_judge_finds_the_known_difference(judged):
    out, results = judged
    assert results.mode == "prompts" and results.baseline == "sft"
    sft, ppo = results.model("sft"), results.model("ppo")
    assert (sft.kind, ppo.kind) == ("sft", "ppo")
    rm = ppo.win_rate["reward_model"]
    # every one of the 5 prompts won: Wilson over 5 prompts at t(4) = 2.7764, [5 / (5 + 2.7764^2), 1]
    assert (rm.value, rm.high, rm.n) == (1.0, 1.0, len(PROMPTS)) and rm.low == pytest.approx(0.3936, abs=1e-4)
    judge = ppo.win_rate["judge_model"]
    assert judge.value == 0.5 and judge.low + judge.high == pytest.approx(1.0) and judge.high - judge.low > 0.5
    assert {c.outcome for c in ppo.comparisons if c.labelers == "judge_model"} == {0.5}
    assert ppo.benchmarks["judge_model_consistency"].value == 0.0
    assert "it chose the answer shown first in 100.0% of 10 verdicts" in results.meta["judge: judge model"]
    assert set(ppo.judge_use_case_win_rates["reward_model"]) == {"generation", "open_qa", "brainstorming"}
    assert not sft.win_rate and "human" not in ppo.win_rate  # the baseline has none; no labels yet
    assert ppo.benchmarks["reward_model_score"].value == pytest.approx(4.0, abs=1e-3)
    assert sft.benchmarks["reward_model_score"].value == pytest.approx(-4.0, abs=1e-3)
    # KL(ppo || sft) on ppo's answers: 10 nats per token (forced logits 10 vs 0), at temperature 1 (greedy run)
    assert ppo.benchmarks["kl_to_baseline"].value == pytest.approx(10.0 * MAX_NEW, abs=1e-3)
    assert sft.benchmarks["kl_to_baseline"].value == 0.0
    for m in (sft, ppo):
        assert m.benchmarks["response_tokens"].value == MAX_NEW and m.benchmarks["stopped"].value == 0.0
    assert {s.outputs["ppo"] for s in results.samples} == {"red red red red"}
    assert {s.outputs["sft"] for s in results.samples} == {"blue blue blue blue"}


def test_label_tasks_hold_two_answers_of_each_model(judged):
    out, _ = judged
    tasks = [json.loads(line) for line in (out / "label_tasks.jsonl").read_text().splitlines()]
    assert [t["prompt_id"] for t in tasks] == [p["id"] for p in PROMPTS]
    assert all(sorted(t["models"]) == ["ppo", "ppo", "sft", "sft"] and len(t["responses"]) == 4 for t in tasks)
    assert tasks[4]["prompt"] == PROMPTS[4]["messages"]  # chat turns survive
    for t in tasks:
        assert all(r == ("red red red red" if m == "ppo" else "blue blue blue blue")
                   for r, m in zip(t["responses"], t["models"]))


def test_the_report_leaves_out_what_needs_the_world(judged):
    out, _ = judged
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    for present in ("Win rate against sft", "Win rate by use case: reward model", "Win rate by use case: judge model",
                    "Reward-model score, KL and answer length", "kl_to_baseline", "Sample outputs: brainstorming"):
        assert present in html, present
    for absent in ("Claims check", "Truthfulness, toxicity and bias", "Inter-labeler agreement", "RL training",
                   "training labelers", "Likert scores"):
        assert absent not in html and absent not in md, absent
    assert (out / "report_files" / "win_rates.png").is_file() and (out / "timings.json").is_file()



def test_the_report_says_how_each_model_was_asked(judged):
    """A chat model asked without its template is a silent error unless the report names each model's format."""
    out, results = judged
    chatml = "the tokenizer's chat template; responses end with <|im_end|>"
    assert results.meta["asked with"] == {"sft": chatml, "ppo": chatml}
    assert "asked with" in (out / "report.md").read_text()

# ----------------------------------------------------------------------------- people, through the labeling app

def _label_everything(tasks_file, db, export_dir, held_out: bool = False):
    """Import the tasks into a real labeling store, rank every task as a person would (red above blue,
    Likert 6 / 2, blue flagged as failing to follow) through the app's own functions, and export."""
    pytest.importorskip("sqlalchemy", reason="the labeling extra is not installed (pip install 'instructgpt[label]')")
    from instructgpt.labeling.export import export_dir as write_export
    from instructgpt.labeling.labels import Submission, new_request_id, submit_label
    from instructgpt.labeling.store import open_store
    from instructgpt.labeling.tasks import claim_tasks, import_rank_tasks, open_assignment
    from tests.labeling.helpers import add_user
    store = open_store(f"sqlite:///{db}")
    import_rank_tasks(store, tasks_file)
    user = add_user(store, "alice", held_out=held_out)
    for aid in claim_tasks(store, user.id, 50):
        view = open_assignment(store, user.id, aid)
        red = [p for p, r in enumerate(view.responses) if "red" in r]
        blue = [p for p, r in enumerate(view.responses) if "blue" in r]
        submit_label(store, user.id, aid, Submission(
            kind="rank", request_id=new_request_id(), ranking=[red, blue],
            likert=[6 if p in red else 2 for p in range(len(view.responses))],
            flags=[[] if p in red else ["fails_to_follow"] for p in range(len(view.responses))]))
    write_export(store, export_dir)
    store.dispose()
    return export_dir


@pytest.fixture(scope="module")
def export(setup, judged):
    root, _ = setup
    out, _ = judged
    return _label_everything(out / "label_tasks.jsonl", root / "labels.db", root / "export")


def test_people_round_trip_through_the_labeling_apps_export(setup, export):
    root, paths = setup
    out = root / "with_labels"
    assert main(_args(paths, out, f"labels={export}")) == 0  # judges: people (the input given)
    results = EvalResults.load(out / "results.json")
    ppo, sft = results.model("ppo"), results.model("sft")
    human = ppo.win_rate["human"]
    assert (human.value, human.high, human.n) == (1.0, 1.0, 2 * len(PROMPTS))  # 2 pairs per task, 5 prompts
    assert human.low == pytest.approx(0.3936, abs=1e-4)  # what 5 prompts allow, however many pairs each
    assert set(ppo.win_rate) == {"human"}
    assert (ppo.likert.value, sft.likert.value) == (6.0, 2.0) and ppo.likert.n == 2 * len(PROMPTS)
    assert ppo.metadata["fails_to_follow"].value == 0.0 and sft.metadata["fails_to_follow"].value == 1.0
    assert "5 rankings of 5" in results.meta["judge: people (labeling app)"]
    html = (out / "report.html").read_text()
    assert "Likert scores" in html and "people (labeling app)" in html and "Metadata rates" in html


def test_people_labels_from_the_zip_and_from_rankings_without_model_names(setup, export, tmp_path, capsys):
    """The admin's zip download reads the same; the export's rankings_test.jsonl (no task meta) is matched by
    text: the prompts name no split, so their tasks are test tasks, filed apart from the RM's training data."""
    root, paths = setup
    from instructgpt.evaluation.human_labels import EXPORT_RANKINGS
    archive = shutil.make_archive(str(tmp_path / "export"), "zip", export)
    assert main(_args(paths, tmp_path / "z", f"labels={archive}")) == 0
    z = EvalResults.load(tmp_path / "z" / "results.json").model("ppo")
    assert z.win_rate["human"].value == 1.0 and z.win_rate["human"].n == 10
    assert (export / "rankings.jsonl").read_text() == ""
    assert main(_args(paths, tmp_path / "r", f"labels={export / 'rankings_test.jsonl'}")) == 0
    by_text = EvalResults.load(tmp_path / "r" / "results.json").model("ppo")
    assert by_text.win_rate["human"].value == 1.0 and by_text.win_rate["human"].n == 10
    # the export of an earlier evaluation (other answers) is left out, counted
    rows = [json.loads(line) for line in (export / EXPORT_RANKINGS).read_text().splitlines()]
    for row in rows[:2]:
        row["responses"] = ["something else"] * len(row["responses"])
    stale = tmp_path / "stale.jsonl"
    stale.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(_args(paths, tmp_path / "s", f"labels={stale}")) == 0
    again = EvalResults.load(tmp_path / "s" / "results.json")
    assert again.model("ppo").win_rate["human"].n == 6
    assert "2 of other answers" in again.meta["judge: people (labeling app)"]
    capsys.readouterr()
    for row in rows:  # every ranking of other answers: a warning, no win rate from people
        row["responses"] = ["something else"] * len(row["responses"])
    stale.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(_args(paths, tmp_path / "t", f"labels={stale}")) == 0
    err = capsys.readouterr().err
    assert "every ranking is of other answers than this evaluation's" in err
    assert "batch_size" in err   # the answers depend on it: another batch_size makes every label stale
    stale_results = EvalResults.load(tmp_path / "t" / "results.json")
    assert "human" not in stale_results.model("ppo").win_rate
    assert stale_results.meta["batch_size"] == 8   # what the labeled evaluation's answers were sampled with



def test_people_labels_of_prompts_holding_pii_read_back_as_the_app_scrubbed_them(tmp_path):
    """The app's rank import scrubs PII from the tasks' prompts (every message of a chat prompt), so its export
    holds them scrubbed: they are still the evaluation's prompts, not an error naming a prompt that differs."""
    from instructgpt.data import load_prompts
    from instructgpt.evaluation.human_labels import read_labels, write_label_tasks
    prompts = load_prompts(write_jsonl(tmp_path / "p.jsonl", [
        {"id": "c1", "user_id": "u", "messages": [
            {"role": "system", "content": "Write to jane.doe@example.com if unsure."},
            {"role": "user", "content": "say red"}, {"role": "assistant", "content": "red"},
            {"role": "user", "content": "again, and call +44 20 7946 0958"}]},
        {"id": "t1", "user_id": "u", "text": "say red to bob@example.org"},
        {"id": "t2", "user_id": "u", "text": "say blue"}]))
    answers = {"sft": ["blue", "blue", "blue"], "ppo": ["red", "red", "red"]}
    write_label_tasks(tmp_path / "tasks.jsonl", prompts, answers, "sft",
                      samples={"sft": [["blue blue"] * 3], "ppo": [["red red"] * 3]})
    export = _label_everything(tmp_path / "tasks.jsonl", tmp_path / "labels.db", tmp_path / "export")
    assert "jane.doe" not in (export / "eval" / "metadata.jsonl").read_text()
    labels = read_labels(export, prompts)
    assert sorted(r.prompt_id for r in labels.rankings) == ["c1", "t1", "t2"] and labels.describe().endswith("3 rankings of 3")
    # a ranking whose prompt is another text than the evaluation's (scrubbed or not) is still an error
    rows = (export / "eval" / "metadata.jsonl").read_text().replace("say red to [EMAIL]", "say green to [EMAIL]")
    (tmp_path / "other.jsonl").write_text(rows)
    with pytest.raises(DataError, match="prompt: differs from the text of prompt id 't1'"):
        read_labels(tmp_path / "other.jsonl", prompts)


def test_labels_of_two_models_still_count_when_models_are_added(setup, tmp_path):
    """Two sampling models make tasks of 2 + 2 answers (seeds 0 and 1). Labelled, then evaluated again with
    four models (one answer each would fill a task): each must still answer twice to match the labels, or
    every ranking is taken for another evaluation's and people's win rate is lost."""
    pytest.importorskip("sqlalchemy", reason="the labeling extra is not installed (pip install 'instructgpt[label]')")
    from instructgpt.labeling.export import export_dir as write_export
    from instructgpt.labeling.labels import Submission, new_request_id, submit_label
    from instructgpt.labeling.store import open_store
    from instructgpt.labeling.tasks import claim_tasks, import_rank_tasks, open_assignment
    from tests.labeling.helpers import add_user
    root, paths = setup
    a, b = chatml_model(tmp_path / "a", seed=10), chatml_model(tmp_path / "b", seed=11)   # random: samples differ
    common = ["eval", f"prompts={paths['prompts']}", "baseline=a", "max_new_tokens=6", "temperature=1",
              "device=cpu"]
    assert main(common + [f"models=a={a},b={b}", "judges=people", f"out_dir={tmp_path / 'two'}"]) == 0
    store = open_store(f"sqlite:///{tmp_path / 'labels.db'}")
    import_rank_tasks(store, tmp_path / "two" / "label_tasks.jsonl")
    user = add_user(store, "alice")
    for aid in claim_tasks(store, user.id, 50):   # a person who likes longer answers
        lengths = [len(r) for r in open_assignment(store, user.id, aid).responses]
        order = sorted(set(lengths), reverse=True)
        submit_label(store, user.id, aid, Submission(kind="rank", request_id=new_request_id(), ranking=[
            [j for j, n in enumerate(lengths) if n == level] for level in order], likert=[4] * len(lengths),
            flags=[[] for _ in lengths]))
    write_export(store, tmp_path / "export")
    store.dispose()
    assert main(common + [f"models=a={a},b={b}", f"labels={tmp_path / 'export'}", f"out_dir={tmp_path / 'again'}"]) == 0
    assert main(common + [f"models=a={a},b={b},c={paths['sft']},d={paths['ppo']}", f"labels={tmp_path / 'export'}",
                          f"out_dir={tmp_path / 'four'}"]) == 0
    two, four = (EvalResults.load(tmp_path / f / "results.json") for f in ("again", "four"))
    assert two.model("b").win_rate["human"].n == 2 * len(PROMPTS)
    assert four.model("b").win_rate["human"] == two.model("b").win_rate["human"]
    assert "left out" not in four.meta["judge: people (labeling app)"]

# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("args, message", [
    (["models=sft"], "models: 'sft': expected name=path"),
    (["models=sft=a,sft=b"], "models: 'sft' is given twice"),
    (["judges=gpt4"], "judges: unknown judge 'gpt4' (expected reward_model, judge_model, people)"),
    ([], "models: required with prompts="),
    # options of the built-in world's evaluation would be ignored on your own prompts
    (["models=a=x,b=y", "judgements=5"], "judgements: only read when evaluating a run of the built-in world"),
    (["models=a=x,b=y", "few_shot=0", "continuation_items=10"],
     "few_shot, continuation_items: only read when evaluating a run of the built-in world"),
])
def test_cli_errors_before_any_model_loads(setup, capsys, args, message, tmp_path):
    _, paths = setup
    assert main(["eval", f"prompts={paths['prompts']}", f"out_dir={tmp_path / 'o'}", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("instructgpt eval: error: ") and message in err, err
    assert not (tmp_path / "o").exists()


def test_cli_errors_naming_the_model_the_baseline_and_the_judge(setup, capsys, tmp_path):
    _, paths = setup
    base = ["eval", f"prompts={paths['prompts']}", f"out_dir={tmp_path / 'o'}", "device=cpu"]
    cases = [
        ([f"models=sft={paths['sft']},ppo={tmp_path / 'missing'}"], f"models: ppo: {tmp_path / 'missing'}: model "
                                                                    f"folder not found"),
        ([f"models=a={paths['sft']},b={paths['ppo']}"], "baseline: 'sft' is not one of the models (a, b); give it in "
                                                        "models=NAME=PATH or choose baseline=NAME"),
        ([f"models=sft={paths['sft']},ppo={paths['ppo']}", "judges=judge_model"],
         "judges: judge_model needs judge_model=PATH"),
        ([f"models=sft={paths['sft']},ppo={paths['ppo']}", "judges=reward_model"],
         "judges: reward_model needs reward_model=PATH"),
        ([f"models=sft={paths['sft']},ppo={paths['ppo']}", f"reward_model={paths['sft']}"],
         f"reward_model: {paths['sft']}: not a reward-model folder"),
        ([f"models=sft={paths['sft']}"], "models: only 'sft'; win rates need at least one other model"),
        ([f"models=sft={paths['sft']}," + ",".join(f"ppo-{i}={paths['ppo']}" for i in range(9)), "judges=people"],
         "judges: people: 10 models (sft, ppo-0, "),   # a task ranks at most 9 answers: one model would be left out
        # the judge is checked before any model answers: a wrong path, or a context its instructions overflow
        ([f"models=sft={paths['sft']},ppo={paths['ppo']}", f"judge_model={tmp_path / 'nojudge'}"],
         f"judge_model: {tmp_path / 'nojudge'}: model folder not found"),
        ([f"models=sft={paths['sft']},ppo={paths['ppo']}", f"judge_model={paths['sft']}"],
         f"judge_model: {paths['prompts']}:1: the judge prompt (request with empty answers) is "),
        ([f"models=sft={paths['sft']},ppo={paths['ppo']}", f"labels={tmp_path}"],
         f"labels: {tmp_path}: no eval/metadata.jsonl"),
    ]
    tasks = write_jsonl(tmp_path / "label_tasks.jsonl", [{"prompt": "say red please", "prompt_id": "q0",
                                                           "responses": ["a", "b", "c", "d"],
                                                           "models": ["sft", "ppo", "sft", "ppo"]}])
    cases.append(([f"models=sft={paths['sft']},ppo={paths['ppo']}", f"labels={tasks}"],
                  f"labels: {tasks}:1: ranking: missing; this is a label task (label_tasks.jsonl), not people's "
                  f"labels"))
    for args, message in cases:
        assert main(base + args) == 2, args
        err = capsys.readouterr().err
        assert message in err, (args, err)
    assert not (tmp_path / "o").exists()
    with pytest.raises(Exception, match="run_dir: required .*or prompts="):
        EvalConfig().validate()
    with pytest.raises(Exception, match="reuse_answers: only read with prompts="):
        EvalConfig(run_dir=str(tmp_path), reuse_answers=False).validate()
    with pytest.raises(Exception, match="judges, judge_model: only with prompts="):
        run_eval(EvalConfig(run_dir=str(tmp_path), judge_model="x"))


def test_a_prompt_too_long_for_one_model_is_an_error_naming_it_before_any_model_answers(setup, capsys, tmp_path):
    """The judge's GPT-2 has 1024 positions, sft's 128: the long prompt fits the first model only."""
    _, paths = setup
    prompts = write_jsonl(tmp_path / "long.jsonl", [PROMPTS[0], {"id": "long", "user_id": "u", "text": " ".join(
        ["say red please"] * 60)}])
    assert main(["eval", f"prompts={prompts}", f"models=big={paths['judge']},sft={paths['sft']}", "baseline=big",
                 f"max_new_tokens={MAX_NEW}", "device=cpu", f"out_dir={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err
    assert f"models: sft: {prompts}:2: prompt: " in err and "over the model's 128 positions" in err, err
    assert not (tmp_path / "o").exists()

def test_a_prompts_folder_is_named_as_a_folder_not_as_missing(tmp_path):
    from instructgpt.evaluation.own_prompts import load_own_prompts
    with pytest.raises(FileNotFoundError, match="prompts: .*: a folder, not a prompts JSONL"):
        load_own_prompts(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="prompts: .*nope.jsonl: not found"):
        load_own_prompts(str(tmp_path / "nope.jsonl"))


def test_greedy_answers_for_people_with_fewer_models_than_a_task_holds_are_a_warning(capsys):
    """With 2 models each answers twice so that a task holds 4 answers; at temperature=0 those are copies
    of one answer, which people were given to rank without a word."""
    from instructgpt.evaluation.own_prompts import check_people_can_rank
    two, four = {n: None for n in ("a", "b")}, {n: None for n in "abcd"}
    check_people_can_rank(["people"], two, 0.0)
    assert ("warning: temperature=0 with judges=people and 2 models: a labeling task holds at least 4 answers, so "
            "each model answers 2 times, and greedy decoding gives 2 copies") in capsys.readouterr().err
    for judges, models, temperature in ((["people"], two, 0.7), (["people"], four, 0.0), (["reward_model"], two, 0.0)):
        check_people_can_rank(judges, models, temperature)
        assert capsys.readouterr().err == ""


def test_a_runs_settings_fill_only_the_options_an_evaluation_on_your_prompts_reads():
    cfg = EvalConfig(prompts="p.jsonl", run_dir="r", models=["a=x", "b=y"])
    filled = cfg.with_run_defaults({"continuation_items": 300, "seed": 3, "max_new_tokens": 20, "eval_prompts": 50})
    assert (filled.seed, filled.max_new_tokens, filled.n_prompts) == (3, 20, 0)   # every prompt of yours
    assert filled.continuation_items is None   # a probe of the built-in world: unread, so not an error either


def test_answers_are_saved_before_judging_and_read_back_by_the_next_evaluation(setup, tmp_path, monkeypatch, capsys):
    """A judge that fails after the models answered loses no answer; the rerun samples none of them again
    unless what they were sampled from changed (options, model files)."""
    from instructgpt.evaluation import own_prompts
    from instructgpt.evaluation.policies import PolicyRunner
    _, paths = setup
    out = tmp_path / "o"

    def judge_fails(*args, **kwargs):
        raise RuntimeError("the judge ran out of memory")
    with monkeypatch.context() as m:
        m.setattr(own_prompts, "pairwise_outcomes", judge_fails)
        with pytest.raises(RuntimeError, match="out of memory"):
            main(_args(paths, out, f"judge_model={paths['judge']}"))
    saved = {name: json.loads((out / "answers" / f"{name}.json").read_text()) for name in ("sft", "ppo")}
    for name, word in (("ppo", "red"), ("sft", "blue")):   # the forced word until max_new_tokens, no stop
        assert [(text, len(ids), ended) for text, ids, ended in saved[name]["answers"]] == \
            [(" ".join([word] * MAX_NEW), MAX_NEW, False)] * len(PROMPTS)

    sampled = []
    real_sample = PolicyRunner.sample
    monkeypatch.setattr(PolicyRunner, "sample", lambda self, *a, **k: sampled.append(self.spec.name) or
                        real_sample(self, *a, **k))
    capsys.readouterr()
    assert main(_args(paths, out, f"judge_model={paths['judge']}")) == 0
    assert sampled == [] and "eval: ppo: answers reused from" in capsys.readouterr().out
    again = EvalResults.load(out / "results.json")
    assert again.model("ppo").win_rate["judge_model"].value == 0.5
    assert again.model("ppo").benchmarks["response_tokens"].value == MAX_NEW   # ids and ends came back too
    assert again.model("ppo").benchmarks["stopped"].value == 0.0
    assert again.meta["asked with"]["ppo"] == saved["ppo"]["asked_with"]

    assert main(_args(paths, out, f"judge_model={paths['judge']}", "max_new_tokens=3")) == 0   # another option
    assert sampled == ["sft", "ppo"]
    changed = tmp_path / "ppo"
    shutil.copytree(paths["ppo"], changed)
    (changed / "tokenizer_config.json").write_text((changed / "tokenizer_config.json").read_text() + " ")
    args = [a.replace(str(paths["ppo"]), str(changed)) for a in _args(paths, out, "max_new_tokens=3")]
    assert main(args) == 0 and sampled == ["sft", "ppo", "ppo"]   # the same name, other files
    assert main(args + ["reuse_answers=false"]) == 0 and sampled[3:] == ["sft", "ppo"]
