"""The export's layout: splits kept apart, chat turns kept, held-out filed by the claim; throughput."""

from __future__ import annotations

import json
import zipfile
from io import BytesIO

import pytest
from sqlalchemy import select, update

from instructgpt import data
from instructgpt.labeling import accounts, export, quality
from instructgpt.labeling.labels import Submission, new_request_id, submit_label
from instructgpt.labeling.tables import Assignment, Label, Task
from instructgpt.labeling.tasks import (
    Conflict,
    claim_tasks,
    import_file,
    open_assignment,
)

from .helpers import add_user, write_prompts, write_rank_tasks

CHAT = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Say hi to my cat."}]


def rank_row(pid: str, prompt, **extra) -> dict:
    return {"prompt": prompt, "prompt_id": pid, "responses": [f"Answer {j} to {pid}" for j in range(4)], **extra}


def label_everything(store, user, response: str = "Bonjour !") -> None:
    """``user`` claims every task they can and labels it (rankings: original order 0 > 1 > 2 > 3)."""
    for aid in claim_tasks(store, user.id, 100):
        view = open_assignment(store, user.id, aid)
        if view.kind == "demonstration":
            submit_label(store, user.id, aid, Submission("demonstration", new_request_id(), response=response))
        else:
            submit_label(store, user.id, aid, Submission("rank", new_request_id(), ranking=[[0], [1], [2], [3]],
                                                         likert=[4, 4, 4, 4]))


def ids(out, name: str) -> list[str]:
    return [json.loads(line)["prompt_id"] for line in (out / name).read_text().splitlines()]


def test_labels_of_valid_and_test_prompts_never_reach_the_training_files(store, tmp_path):
    write_prompts(tmp_path / "p.jsonl", [
        {"id": "q_train", "text": "Write a haiku about autumn leaves.", "user_id": "u1", "split": "train"},
        {"id": "q_valid", "text": "Explain how a bicycle gear works.", "user_id": "u2", "split": "valid"},
        {"id": "q_test", "text": "Name three rivers of South America.", "user_id": "u3", "split": "test"},
    ])
    import_file(store, "prompts", tmp_path / "p.jsonl")
    write_prompts(tmp_path / "r.jsonl", [rank_row("r_train", "Rank these for train.", split="train"),
                                         rank_row("r_none", "Rank these, no split given."),
                                         rank_row("r_valid", "Rank these for valid.", split="valid")])
    import_file(store, "rank", tmp_path / "r.jsonl")
    label_everything(store, add_user(store, "ann"))
    out = tmp_path / "export"
    manifest = export.export_dir(store, out)
    assert ids(out, "demonstrations.jsonl") == ["q_train"]
    assert ids(out, "demonstrations_valid.jsonl") == ["q_valid"]
    assert ids(out, "demonstrations_test.jsonl") == ["q_test"]
    assert sorted(ids(out, "rankings.jsonl")) == ["r_none", "r_train"]
    assert ids(out, "rankings_valid.jsonl") == ["r_valid"]
    assert ids(out, "rankings_test.jsonl") == []
    assert manifest["format_version"] == 2
    assert manifest["counts"] == {
        "demonstrations.jsonl": 1, "demonstrations_valid.jsonl": 1, "demonstrations_test.jsonl": 1,
        "rankings.jsonl": 2, "rankings_valid.jsonl": 1, "rankings_test.jsonl": 0,
        "eval/demonstrations.jsonl": 0, "eval/rankings.jsonl": 0, "eval/metadata.jsonl": 3, "skips.jsonl": 0}
    splits = {}
    for name in manifest["counts"]:
        for line in (out / name).read_text().splitlines():
            rec = json.loads(line)
            splits.setdefault(name, set()).add(rec["split"])
    assert splits == {"demonstrations.jsonl": {"train"}, "demonstrations_valid.jsonl": {"valid"},
                      "demonstrations_test.jsonl": {"test"}, "rankings.jsonl": {"train"},
                      "rankings_valid.jsonl": {"valid"}, "eval/metadata.jsonl": {"train", "valid"}}
    # the trainer's readers take the files as they are (split lands in meta)
    assert [d.meta for d in data.load_demonstrations(out / "demonstrations_valid.jsonl")] == \
        [{"split": "valid", "batch": "p.jsonl"}]   # and the import it came from
    assert len(data.load_rankings(out / "rankings.jsonl")) == 2
    # the zip holds the same files
    names = set(zipfile.ZipFile(BytesIO(export.export_zip(store))).namelist())
    assert names == set(manifest["counts"]) | {"manifest.json"}


def test_a_rank_row_with_an_unknown_split_is_an_error_naming_it(store, tmp_path):
    write_prompts(tmp_path / "r.jsonl", [rank_row("a", "Fine."), rank_row("b", "Bad split.", split="dev")])
    with pytest.raises(data.DataError) as e:
        import_file(store, "rank", tmp_path / "r.jsonl")
    assert str(e.value) == f"{tmp_path / 'r.jsonl'}:2: split: unknown split 'dev' (expected one of train, valid, test)"


def test_chat_prompts_keep_their_turns_from_import_to_the_trainers_readers(store, tmp_path):
    write_prompts(tmp_path / "p.jsonl", [{"id": "chat1", "messages": CHAT, "user_id": "u1", "split": "train"}])
    import_file(store, "prompts", tmp_path / "p.jsonl")
    write_prompts(tmp_path / "r.jsonl", [rank_row("chat2", CHAT, policy=["x"] * 4),
                                         rank_row("plain", "A plain prompt.")])
    import_file(store, "rank", tmp_path / "r.jsonl")
    label_everything(store, add_user(store, "ann"))
    label_everything(store, add_user(store, "hal", held_out=True))
    out = tmp_path / "export"
    export.export_dir(store, out)
    (demo,) = data.load_demonstrations(out / "demonstrations.jsonl")
    assert demo.turns == CHAT and demo.prompt == data.render_messages(CHAT) and demo.response == "Bonjour !"
    rankings = {r.prompt_id: r for r in data.load_rankings(out / "rankings.jsonl")}
    assert rankings["chat2"].turns == CHAT and rankings["chat2"].prompt == data.render_messages(CHAT)
    assert rankings["plain"].turns is None and rankings["plain"].prompt == "A plain prompt."
    assert {r.prompt_id: r.turns for r in data.load_rankings(out / "eval" / "rankings.jsonl")} == {
        "chat2": CHAT, "plain": None}
    assert {r.prompt_id: r.turns for r in data.load_rankings(out / "eval" / "metadata.jsonl")} == {
        "chat2": CHAT, "plain": None}
    # written as data.to_record writes it
    line = json.loads((out / "demonstrations.jsonl").read_text())
    assert line["prompt"] == data.to_record(demo)["prompt"] == CHAT
    # the task page still shows the transcript
    with store.tx() as s:
        task = s.scalar(select(Task).where(Task.prompt_id == "chat2"))
        assert task.prompt == data.render_messages(CHAT)


@pytest.mark.parametrize("messages, what", [
    ([{"role": "system", "content": "Be nice."}], "prompt: the prompt turns have no user message"),
    ([{"role": "user", "content": "Hi"}, {"role": "system", "content": "x"}],
     "prompt: message 1: a system message may only come first"),
    ([{"role": "robot", "content": "Hi"}],
     "prompt: message 0 has unknown role 'robot' (expected system, user or assistant)"),
])
def test_rank_import_checks_chat_messages_as_the_trainer_does(store, tmp_path, messages, what):
    write_prompts(tmp_path / "r.jsonl", [rank_row("ok", "Fine."), rank_row("bad", messages)])
    with pytest.raises(data.DataError) as e:
        import_file(store, "rank", tmp_path / "r.jsonl")
    assert str(e.value) == f"{tmp_path / 'r.jsonl'}:2: {what}"
    with store.tx() as s:
        assert s.scalar(select(Task.id).limit(1)) is None  # nothing imported


def export_counts(store) -> dict[str, int]:
    return {name: len(recs) for name, recs in export.collect(store).files.items() if recs}


def test_marking_a_labeler_held_out_later_does_not_move_their_past_labels(store, tmp_path):
    import_file(store, "rank", write_rank_tasks(tmp_path / "t.jsonl", 2), overlap_fraction=1.0, overlap_k=2)
    ann, bob = add_user(store, "ann"), add_user(store, "bob")
    label_everything(store, ann)
    label_everything(store, bob)
    before = export_counts(store)
    assert before == {"rankings.jsonl": 4, "eval/metadata.jsonl": 4}
    accounts.update_user(store, ann.id, held_out=True)
    assert export_counts(store) == before
    assert {m["held_out"] for m in export.collect(store).files["eval/metadata.jsonl"]} == {False}
    assert quality.agreement(store).train_train.total == 2 * 6  # still two training labelers per task
    with store.tx() as s:
        assert s.execute(select(Task.target_labels, Task.slots_left)).all() == [(2, 0), (2, 0)]
    # and the other way round: hal's held-out labels stay held out once hal is unmarked
    hal = add_user(store, "hal", held_out=True)
    label_everything(store, hal)
    accounts.update_user(store, hal.id, held_out=False)
    counts = export_counts(store)
    assert counts == {"rankings.jsonl": 4, "eval/rankings.jsonl": 2, "eval/metadata.jsonl": 6}


def test_changing_the_held_out_mark_releases_pending_claims(store, tmp_path):
    import_file(store, "rank", write_rank_tasks(tmp_path / "t.jsonl", 1))  # one task, one training label
    hal, bob = add_user(store, "hal", held_out=True), add_user(store, "bob")
    (h,) = claim_tasks(store, hal.id, 1)            # takes no slot
    accounts.update_user(store, hal.id, held_out=False)
    with store.tx() as s:
        a = s.get(Assignment, h)
        assert (a.status, a.release_reason) == ("released", "admin")
    (b,) = claim_tasks(store, bob.id, 1)
    sub = Submission("rank", new_request_id(), ranking=[[0], [1], [2], [3]], likert=[1, 2, 3, 4])
    with pytest.raises(Conflict):
        submit_label(store, hal.id, h, sub)
    submit_label(store, bob.id, b, Submission("rank", new_request_id(), ranking=[[0], [1], [2], [3]],
                                              likert=[1, 2, 3, 4]))
    with store.tx() as s:
        assert s.execute(select(Task.target_labels, Task.slots_left)).one() == (1, 0)
    assert export_counts(store) == {"rankings.jsonl": 1, "eval/metadata.jsonl": 1}
    # a training labeler marked held out: the pending claim is released and its slot comes back
    import_file(store, "rank", write_rank_tasks(tmp_path / "u.jsonl", 2, prefix="u"))
    (c,) = claim_tasks(store, bob.id, 1)
    accounts.update_user(store, bob.id, held_out=True)
    with store.tx() as s:
        assert s.get(Assignment, c).status == "released"
        assert s.scalar(select(Task.slots_left).where(Task.prompt_id == "u0")) == 1
    # setting the mark it already has releases nothing
    (d,) = claim_tasks(store, bob.id, 1)
    accounts.update_user(store, bob.id, held_out=True)
    with store.tx() as s:
        assert s.get(Assignment, d).status == "pending"


def test_labels_per_hour_counts_labels_not_skips(store, tmp_path):
    import_file(store, "rank", write_rank_tasks(tmp_path / "t.jsonl", 2))
    ann = add_user(store, "ann")
    a1, a2 = claim_tasks(store, ann.id, 2)
    submit_label(store, ann.id, a1, Submission("rank", new_request_id(), ranking=[[0], [1], [2], [3]],
                                               likert=[1, 2, 3, 4]))
    submit_label(store, ann.id, a2, Submission("skip", new_request_id(), skip_reason="Other"))
    with store.tx() as s:
        s.execute(update(Label).values(seconds_spent=60.0))
    (t,) = quality.throughput(store)
    assert (t.labels, t.skips, t.median_seconds, t.labels_per_hour) == (1, 1, 60.0, 30.0)


def test_an_evaluations_label_tasks_never_reach_the_training_rankings(store, tmp_path):
    """judges=people writes label_tasks.jsonl of the evaluation's (test) prompts: imported into the app beside
    the training tasks, people's rankings of them must land in the split files, not in rankings.jsonl."""
    from instructgpt.evaluation.human_labels import write_label_tasks
    prompts = [data.Prompt(id="t_test", text="Name a river.", user_id="u1", split="test"),
               data.Prompt(id="t_none", text="Name a lake.", user_id="u2")]   # own prompts: no split
    answers = {name: [f"{name} says Nile", f"{name} says Tana"] for name in ("sft", "ppo", "ppo_ptx", "flan")}
    write_label_tasks(tmp_path / "label_tasks.jsonl", prompts, answers, baseline="sft")
    import_file(store, "rank", tmp_path / "label_tasks.jsonl")
    label_everything(store, add_user(store, "ann"))
    out = tmp_path / "export"
    export.export_dir(store, out)
    assert ids(out, "rankings.jsonl") == []
    assert sorted(ids(out, "rankings_test.jsonl")) == ["t_none", "t_test"]


def test_a_prompt_keeps_its_split_across_rounds_and_kinds(store, tmp_path):
    """Round 2's samples of a test prompt, written without a split (or with another), were filed as train:
    their rankings reached rankings.jsonl, the RM's training data. They are now an error naming the record."""
    write_prompts(tmp_path / "p.jsonl", [{"id": "q_test", "text": "Name three rivers.", "user_id": "u3",
                                          "split": "test"}])
    import_file(store, "prompts", tmp_path / "p.jsonl")
    write_prompts(tmp_path / "r1.jsonl", [rank_row("r_valid", "Rank these.", split="valid")])
    import_file(store, "rank", tmp_path / "r1.jsonl")
    later = {"r2.jsonl": [rank_row("q_test", "Name three rivers.")],                       # no split: train
             "r3.jsonl": [rank_row("r_valid", "Rank these.", split="train")],
             "r4.jsonl": [rank_row("new", "A.", split="test"), rank_row("new", "A.", split="valid")],
             "r6.jsonl": [rank_row("r_train", "Rank those.", split="train"),   # an evaluation's test tasks of a
                          rank_row("r_train", "Rank those.", split="test")]}   # training prompt: never refiled train
    for name, rows in later.items():
        write_prompts(tmp_path / name, rows)
    messages = {
        "r2.jsonl": f"{tmp_path / 'r2.jsonl'}:1: split: train (none given), but prompt 'q_test' is a test prompt in "
                    f"an earlier import; the tasks of one prompt keep its split (give \"split\": \"test\")",
        "r3.jsonl": f"{tmp_path / 'r3.jsonl'}:1: split: train, but prompt 'r_valid' is a valid prompt in an earlier "
                    f"import; the tasks of one prompt keep its split (give \"split\": \"valid\")",
        "r4.jsonl": f"{tmp_path / 'r4.jsonl'}:2: split: valid, but prompt 'new' is a test prompt in "
                    f"{tmp_path / 'r4.jsonl'}:1; the tasks of one prompt keep its split (give \"split\": \"test\")",
        "r6.jsonl": f"{tmp_path / 'r6.jsonl'}:2: split: test, but prompt 'r_train' is a train prompt in "
                    f"{tmp_path / 'r6.jsonl'}:1; the tasks of one prompt keep its split (its test labels would be "
                    f"filed with its training ones: evaluate on prompts the app does not hold for training, or "
                    f"import these tasks into a database of their own with --db)"}
    for name, message in messages.items():
        with pytest.raises(data.DataError) as e:
            import_file(store, "rank", tmp_path / name)
        assert str(e.value) == message
    write_prompts(tmp_path / "r5.jsonl", [rank_row("q_test", "Name three rivers.", split="test")])
    assert import_file(store, "rank", tmp_path / "r5.jsonl").added == 1   # its own split: fine
    label_everything(store, add_user(store, "ann"))
    export.export_dir(store, tmp_path / "export")
    assert ids(tmp_path / "export", "rankings.jsonl") == [] and ids(tmp_path / "export", "demonstrations.jsonl") == []


def test_a_prompt_id_names_one_text_across_imports(store, tmp_path):
    """Samples of the raw prompts file (not the curated one) carry a prompt's text before the app scrubbed its
    PII on import: they were accepted, and the email reached the labelers and rankings.jsonl. One id names one
    prompt, as in curation: another text for an id that earlier tasks (or earlier rows) hold is an error."""
    write_prompts(tmp_path / "p.jsonl", [{"id": "q1", "text": "Email jane.doe@example.com about the invoice.",
                                          "user_id": "u1", "split": "train"},
                                         {"id": "q2", "messages": CHAT, "user_id": "u2", "split": "train"}])
    import_file(store, "prompts", tmp_path / "p.jsonl")
    write_prompts(tmp_path / "raw.jsonl", [rank_row("q1", "Email jane.roe@example.com about the order.",
                                                    split="train")])
    write_prompts(tmp_path / "twice.jsonl", [rank_row("n1", "Say yes.", split="train"),
                                             rank_row("n1", "Say no.", split="train")])
    messages = {
        "raw.jsonl": f"{tmp_path / 'raw.jsonl'}:1: prompt: prompt 'q1' has another text in an earlier import; one "
                     f"id names one prompt (the app keeps prompts as curated, PII scrubbed: sample from the curated "
                     f"prompts, or give this prompt its own id)",
        "twice.jsonl": f"{tmp_path / 'twice.jsonl'}:2: prompt: prompt 'n1' has another text in "
                       f"{tmp_path / 'twice.jsonl'}:1; one id names one prompt (the app keeps prompts as curated, PII "
                       f"scrubbed: sample from the curated prompts, or give this prompt its own id)"}
    for name, message in messages.items():
        with pytest.raises(data.DataError) as e:
            import_file(store, "rank", tmp_path / name)
        assert str(e.value) == message
    # samples of the curated prompts (scrubbed text; a chat prompt as its turns) are the same prompts, and so
    # are samples of the raw prompts file: a rank import scrubs its prompts as the prompts import did
    write_prompts(tmp_path / "curated.jsonl", [rank_row("q1", "Email [EMAIL] about the invoice.", split="train"),
                                               rank_row("q2", CHAT, split="train")])
    assert import_file(store, "rank", tmp_path / "curated.jsonl").added == 2
    write_prompts(tmp_path / "samples.jsonl", [rank_row("q1", "Email jane.doe@example.com about the invoice.",
                                                        split="train", responses=["w", "x", "y", "z"])])
    result = import_file(store, "rank", tmp_path / "samples.jsonl")
    assert result.added == 1 and result.describe().endswith("; PII scrubbed from prompts: 1 email")
    label_everything(store, add_user(store, "ann"))
    export.export_dir(store, tmp_path / "export")
    assert "jane.doe" not in (tmp_path / "export" / "rankings.jsonl").read_text()


def test_every_label_names_the_import_it_came_from(store, tmp_path):
    """Round 1's and round 2's rankings could be told apart only by their time: each record now names its
    task's import (batch), the manifest counts labels per import, and a sampled task names its policy."""
    write_prompts(tmp_path / "r1.jsonl", [rank_row("a", "Say one.", split="train", policy="runs/x/models/sft")])
    write_prompts(tmp_path / "samples.jsonl", [rank_row("b", "Say two.", split="train")])
    import_file(store, "rank", tmp_path / "r1.jsonl", batch="round1")
    import_file(store, "rank", tmp_path / "samples.jsonl")   # no name given: the file's
    label_everything(store, add_user(store, "ann"))
    manifest = export.export_dir(store, tmp_path / "export")
    rows = [json.loads(line) for line in (tmp_path / "export" / "rankings.jsonl").read_text().splitlines()]
    assert {r["prompt_id"]: r["batch"] for r in rows} == {"a": "round1", "b": "samples.jsonl"}
    assert manifest["batches"] == {"round1": 1, "samples.jsonl": 1}
    meta = [json.loads(line) for line in (tmp_path / "export" / "eval" / "metadata.jsonl").read_text().splitlines()]
    assert [(m["batch"], m["task_meta"].get("policy")) for m in meta] == [("round1", "runs/x/models/sft"),
                                                                          ("samples.jsonl", None)]
    assert [r.meta["batch"] for r in data.load_rankings(tmp_path / "export" / "rankings.jsonl")] == \
        ["round1", "samples.jsonl"]   # the trainer reads them, the batch kept as the record's meta


def test_the_export_says_in_which_order_each_labeler_saw_the_responses(store, tmp_path):
    """Each labeler sees a task's responses in an order of their own; the export kept only the username, so the
    order people saw (and their position bias) could not be rebuilt from it."""
    write_prompts(tmp_path / "r.jsonl", [rank_row(f"p{i}", f"Say {i}.", split="train") for i in range(3)])
    import_file(store, "rank", tmp_path / "r.jsonl", overlap_fraction=1.0, overlap_k=2)
    seen = {}
    for name in ("ann", "bob"):
        user = add_user(store, name)
        for aid in claim_tasks(store, user.id, 100):
            view = open_assignment(store, user.id, aid)
            seen[(name, view.prompt_id)] = view.responses
            submit_label(store, user.id, aid, Submission("rank", new_request_id(), ranking=[[0], [1], [2], [3]],
                                                         likert=[4, 4, 4, 4]))
    export.export_dir(store, tmp_path / "export")
    meta = [json.loads(line) for line in (tmp_path / "export" / "eval" / "metadata.jsonl").read_text().splitlines()]
    assert len(meta) == len(seen) == 6
    for m in meta:
        assert [m["responses"][i] for i in m["shown_order"]] == seen[(m["labeler_id"], m["prompt_id"])]
    assert len({tuple(m["shown_order"]) for m in meta}) > 1   # orders of their own, not one for all


def test_the_export_streams_labels_from_the_database_a_chunk_at_a_time(store, tmp_path, monkeypatch):
    """export_dir (and so the zip download) never reads more than EXPORT_CHUNK labels ahead of what it
    has written: memory does not grow with the number of labels (it used to load every label first)."""
    from sqlalchemy import event

    import_file(store, "rank", write_rank_tasks(tmp_path / "t.jsonl", 30))
    label_everything(store, add_user(store, "ann"))
    monkeypatch.setattr(export, "EXPORT_CHUNK", 10, raising=False)
    loaded, ahead = [0], []

    def count_load(*_):
        loaded[0] += 1

    def counting(make):
        def wrapped(task, label, *rest):
            ahead.append(loaded[0] - len(ahead))   # labels read but not yet turned into records
            return make(task, label, *rest)
        return wrapped

    monkeypatch.setattr(export, "ranking_record", counting(export.ranking_record))
    event.listen(Label, "load", count_load)
    try:
        manifest = export.export_dir(store, tmp_path / "export")
    finally:
        event.remove(Label, "load", count_load)
    assert manifest["counts"]["rankings.jsonl"] == len(ahead) == 30
    assert max(ahead) <= 10, f"read up to {max(ahead)} labels ahead of the records written"


def test_the_admin_pages_agreement_reads_only_the_rankings_added_since_its_last_load(store, tmp_path):
    """The admin page used to read and compare every ranking on every load (850 ms at 11,664 rankings);
    AgreementTally reads the new rankings and the earlier ones of their tasks, and gives the same numbers."""
    import_file(store, "rank", write_rank_tasks(tmp_path / "t.jsonl", 6), overlap_fraction=1.0, overlap_k=3)
    label_everything(store, add_user(store, "ann"))
    label_everything(store, add_user(store, "bob"))
    tally = quality.AgreementTally(store)
    assert tally.current().as_dict() == quality.agreement(store).as_dict()
    assert tally.rows_read == 12 and tally.current().tasks_compared == 6
    assert tally.rows_read == 0   # nothing new: nothing read
    hal = add_user(store, "hal", held_out=True)
    (aid,) = claim_tasks(store, hal.id, 1)
    submit_label(store, hal.id, aid, Submission("rank", new_request_id(), ranking=[[1], [0, 2], [3]],
                                                likert=[4, 4, 4, 4]))
    now = tally.current()
    assert tally.rows_read == 3   # hal's ranking and the two earlier ones of its task, not all 13
    assert now.as_dict() == quality.agreement(store).as_dict() and now.train_heldout.total > 0
    with store.tx() as s:   # a ranking deleted by hand: counted again from the start
        s.execute(Label.__table__.delete().where(Label.id == 1))
    assert tally.current().as_dict() == quality.agreement(store).as_dict() and tally.rows_read == 12
