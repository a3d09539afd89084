"""Storage: the same tests on SQLite and on PostgreSQL (``db_url`` is parametrised)."""

from __future__ import annotations

import json
import threading

import pytest
from sqlalchemy import func, select

from instructgpt import data
from instructgpt.labeling import export, quality
from instructgpt.labeling.labels import Submission, new_request_id, submit_label
from instructgpt.labeling.store import current_revision
from instructgpt.labeling.tables import Assignment, Label, Task
from instructgpt.labeling.tasks import (
    Conflict,
    Forbidden,
    Invalid,
    claim_tasks,
    display_order,
    import_file,
    open_assignment,
)

from .helpers import NASTY, add_user, write_prompts, write_rank_tasks


def rank_sub(k: int = 4, groups=None, **kw) -> Submission:
    groups = groups or [[p] for p in range(k)]
    return Submission("rank", new_request_id(), ranking=groups, likert=[4] * k,
                      flags=[[] for _ in range(k)], **kw)


def count(store, model) -> int:
    with store.tx() as s:
        return s.scalar(select(func.count()).select_from(model))


@pytest.mark.filterwarnings("ignore:.*expression-based index")
def test_schema_is_at_head_and_matches_models(store):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from instructgpt.labeling.tables import Base

    assert current_revision(store.engine) == "0004"
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models and migrations differ: {diff}"
    if store.dialect == "sqlite":  # SQLite cannot reflect an expression index: compare its DDL instead
        from sqlalchemy.schema import CreateIndex

        for ix in (i for t in Base.metadata.tables.values() for i in t.indexes if i.expressions != list(i.columns)):
            with store.engine.connect() as conn:
                made = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = ?", (ix.name,)).scalar()
            assert made == str(CreateIndex(ix).compile(dialect=store.engine.dialect)).strip(), ix.name
    store.migrate()  # idempotent
    if store.dialect == "sqlite":
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_import_rank_tasks_is_idempotent_and_checks_k(store, tmp_path):
    path = write_rank_tasks(tmp_path / "t.jsonl", 10)
    r = import_file(store, "rank", path, overlap_fraction=0.2, overlap_k=3)
    assert (r.added, r.existing, r.overlapping) == (10, 0, 2)
    assert import_file(store, "rank", path).added == 0
    with store.tx() as s:
        targets = sorted(s.scalars(select(Task.target_labels)))
    assert targets == [1] * 8 + [3, 3]
    bad = write_rank_tasks(tmp_path / "bad.jsonl", 1, k=3)
    with pytest.raises(data.DataError, match=r"bad.jsonl:1: responses: K=3"):
        import_file(store, "rank", bad)


def test_import_prompts_goes_through_curation(store, tmp_path):
    rows = [{"id": f"q{i}", "text": f"Please write a poem about the sea, number {i}. Mail me: ann{i}@example.com",
             "user_id": "u1"} for i in range(3)]
    rows.append({"id": "dup", "text": rows[0]["text"], "user_id": "u2"})
    path = write_prompts(tmp_path / "prompts.jsonl", rows)
    r = import_file(store, "prompts", path)
    assert r.read == 4 and r.added == 3 and r.curation["removed"]["duplicate_prefix"] == 1
    with store.tx() as s:
        texts = list(s.scalars(select(Task.prompt)))
    assert all("@example.com" not in t and "[EMAIL]" in t for t in texts)


def test_a_user_keeps_the_split_of_an_earlier_import(store, tmp_path):
    """Curation splits users per file; a second file used to re-split them, so a user could land in two splits."""
    def batch(name, n):
        return write_prompts(tmp_path / f"{name}.jsonl", [
            {"id": f"{name}{u}-{i}", "text": f"Tell me fact {i} of topic {u} from batch {name} please", "user_id": f"u{u}"}
            for u in range(12) for i in range(n)])

    def user_splits():
        with store.tx() as s:
            pairs = {(m["user_id"], m["split"]) for m in s.scalars(select(Task.meta))}
        assert len(pairs) == len({u for u, _ in pairs}), pairs  # no user in two splits
        return dict(pairs)

    import_file(store, "prompts", batch("a", 1))
    first = user_splits()
    assert len(set(first.values())) > 1  # several splits, so a re-split would show
    # the second file alone would split its users otherwise: its heavy users fill the splits largest first
    assert import_file(store, "prompts", batch("b", 3)).added == 36
    assert user_splits() == first
    clash_user, clash_split = next((u, sp) for u, sp in first.items())
    other = next(sp for sp in data.SPLITS if sp != clash_split)
    clash = write_prompts(tmp_path / "clash.jsonl", [{"id": "c1", "text": "A brand new question about boats",
                                                      "user_id": clash_user, "split": other}])
    with pytest.raises(data.DataError, match=rf"clash.jsonl:1: split: user '{clash_user}' would span two splits: "
                                             rf"'{other}' here but '{clash_split}' at an earlier import"):
        import_file(store, "prompts", clash)


def test_curation_rules_hold_across_imports(store, tmp_path):
    """Dedupe and the per-user cap used to hold per file only: a second file could repeat the first's
    prompts under new ids, and a user could pass the cap 200 prompts at a time."""
    from instructgpt.curate import CurateConfig
    cfg = CurateConfig(max_per_user=3)
    first = write_prompts(tmp_path / "a.jsonl", [
        {"id": f"a{i}", "text": f"Describe the lighthouse number {i} on the northern coast, please", "user_id": "u1"}
        for i in range(2)])
    assert import_file(store, "prompts", first, curate_cfg=cfg).added == 2
    again = import_file(store, "prompts", first, curate_cfg=cfg)
    assert (again.added, again.existing) == (0, 2) and "curation removed" not in again.describe()
    second = write_prompts(tmp_path / "b.jsonl", [
        {"id": "b0", "text": "DESCRIBE the lighthouse number 0 on the northern coast,   please!", "user_id": "u2"},
        *({"id": f"b{i}", "text": f"Name a sea bird that nests on cliffs, variant {i}", "user_id": "u1"}
          for i in range(1, 4))])
    r = import_file(store, "prompts", second, curate_cfg=cfg)
    assert r.curation["removed"] == {"already_curated": 0, "duplicate_prefix": 1, "user_cap": 2}
    with store.tx() as s:
        ids = sorted(s.scalars(select(Task.prompt_id)))
    assert ids == ["a0", "a1", "b1"]  # u1: 2 earlier + 1 new = the cap of 3


def test_chat_prompts_deduplicated_across_imports(store, tmp_path):
    """Earlier imports' prompts came back from the store without their turns, so a chat prompt was compared
    by its transcript ("System: ...  User: ...") against a new one's turns and a repeat under a new id passed."""
    turns = [{"role": "system", "content": "You are a travel agent."},
             {"role": "user", "content": "Plan a three day trip to Lisbon for a family with two small kids."}]
    assert import_file(store, "prompts", write_prompts(tmp_path / "a.jsonl", [
        {"id": "a1", "messages": turns, "user_id": "u1"}])).added == 1
    r = import_file(store, "prompts", write_prompts(tmp_path / "b.jsonl", [
        {"id": "b1", "messages": turns, "user_id": "u2"},
        {"id": "b2", "text": turns[1]["content"], "user_id": "u3"}]))
    assert (r.added, r.curation["removed"]["duplicate_prefix"]) == (0, 2)


def test_claims_respect_overlap_and_never_over_assign(store, tmp_path):
    import_file(store, "rank", write_rank_tasks(tmp_path / "t.jsonl", 20), overlap_fraction=0.5, overlap_k=2)
    users = [add_user(store, f"lab{i}") for i in range(8)]
    errors = []

    def grab(uid):
        try:
            for _ in range(5):
                claim_tasks(store, uid, 3)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=grab, args=(u.id,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    with store.tx() as s:
        per_task = dict(s.execute(select(Assignment.task_id, func.count()).group_by(Assignment.task_id)).all())
        tasks = {t.id: t for t in s.scalars(select(Task))}
    assert sum(per_task.values()) == 30  # 10 tasks x 1 + 10 tasks x 2: every slot taken once
    for tid, n in per_task.items():
        assert n == tasks[tid].target_labels
    assert all(t.slots_left == 0 for t in tasks.values())


def test_held_out_labelers_label_on_top_and_prefer_labelled_tasks(store, tmp_path):
    import_file(store, "rank", write_rank_tasks(tmp_path / "t.jsonl", 4))
    a = add_user(store, "train1")
    h = add_user(store, "held1", held_out=True)
    claim_tasks(store, a.id, 2)
    new = claim_tasks(store, h.id, 2)
    with store.tx() as s:
        held_tasks = {s.get(Assignment, i).task_id for i in new}
        train_tasks = set(s.scalars(select(Assignment.task_id).where(Assignment.user_id == a.id)))
        open_slots = s.scalar(select(func.sum(Task.slots_left)))
    assert held_tasks == train_tasks and open_slots == 2


def test_submit_maps_display_order_back_and_is_idempotent(store, tmp_path):
    import_file(store, "rank", write_rank_tasks(tmp_path / "t.jsonl", 1))
    u = add_user(store, "alice")
    (aid,) = claim_tasks(store, u.id, 1)
    view = open_assignment(store, u.id, aid)
    order = display_order(u.id, view.task_id, 4)
    assert view.responses == [f"Sample {i} for p0" for i in order]
    assert open_assignment(store, u.id, aid).responses == view.responses  # same order on reload
    sub = Submission("rank", new_request_id(), ranking=[[2], [0, 3], [1]], likert=[7, 6, 5, 1],
                     flags=[[], ["hallucination"], [], ["violent", "sexual"]], comment="ok")
    first = submit_label(store, u.id, aid, sub)
    again = submit_label(store, u.id, aid, Submission(**{**sub.__dict__}))
    assert not first.duplicate and again.duplicate and again.label_id == first.label_id
    assert count(store, Label) == 1
    with store.tx() as s:
        label = s.get(Label, first.label_id)
    assert label.ranking == [[order[2]], sorted([order[0], order[3]]), [order[1]]]
    assert label.likert[order[0]] == 7 and label.likert[order[3]] == 1
    assert label.flags[order[1]] == ["hallucination"]
    assert label.flags[order[3]] == ["sexual", "violent"]  # canonical FLAGS order
    with pytest.raises(Conflict):
        submit_label(store, u.id, aid, rank_sub())


def test_only_the_owner_may_submit(store, tmp_path):
    import_file(store, "rank", write_rank_tasks(tmp_path / "t.jsonl", 1))
    a, b = add_user(store, "a1"), add_user(store, "b1")
    (aid,) = claim_tasks(store, a.id, 1)
    with pytest.raises(Forbidden):
        open_assignment(store, b.id, aid)
    with pytest.raises(Forbidden):
        submit_label(store, b.id, aid, rank_sub())
    assert count(store, Label) == 0


@pytest.mark.parametrize("bad", [
    dict(ranking=[[0, 1, 2, 3]]),                 # all tied: no comparison
    dict(ranking=[[0], [1], [2]]),                # one response unranked
    dict(ranking=[[0], [0, 1], [2, 3]]),          # ranked twice
    dict(likert=[4, 4, 4, 8]),
    dict(flags=[["not_a_flag"], [], [], []]),
    dict(request_id="not-a-uuid"),
    dict(comment="nul\x00byte"),
])
def test_invalid_submissions_are_refused(store, tmp_path, bad):
    import_file(store, "rank", write_rank_tasks(tmp_path / "t.jsonl", 1))
    u = add_user(store, "alice")
    (aid,) = claim_tasks(store, u.id, 1)
    sub = rank_sub()
    for key, value in bad.items():
        setattr(sub, key, value)
    with pytest.raises(Invalid):
        submit_label(store, u.id, aid, sub)
    assert count(store, Label) == 0


def test_sql_metacharacters_are_stored_verbatim(store, tmp_path):
    nasty = "\n".join(NASTY)
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"prompt": nasty, "prompt_id": NASTY[0],
                                "responses": NASTY}, ensure_ascii=False) + "\n", encoding="utf-8")
    import_file(store, "rank", path)
    write_prompts(tmp_path / "p.jsonl", [{"id": NASTY[1], "text": nasty, "user_id": NASTY[2]}])
    import_file(store, "prompts", tmp_path / "p.jsonl")
    from instructgpt.labeling.security import AuthError

    with pytest.raises(AuthError):  # user names are a restricted alphabet; everything else is free text
        add_user(store, "o'brien\\--x")
    u = add_user(store, "o.brien--x")
    a_rank, a_demo = sorted(claim_tasks(store, u.id, 2))
    kinds = {open_assignment(store, u.id, a).kind: a for a in (a_rank, a_demo)}
    submit_label(store, u.id, kinds["rank"], rank_sub(comment=nasty))
    submit_label(store, u.id, kinds["demonstration"],
                 Submission("demonstration", new_request_id(), response=nasty))
    with store.tx() as s:
        rank_task = s.scalar(select(Task).where(Task.kind == "rank"))
        demo_task = s.scalar(select(Task).where(Task.kind == "demonstration"))
        labels = {lab.kind: lab for lab in s.scalars(select(Label))}
    assert rank_task.prompt == nasty and rank_task.responses == NASTY and rank_task.prompt_id == NASTY[0]
    assert demo_task.prompt == nasty and demo_task.prompt_id == NASTY[1]
    assert labels["rank"].comment == nasty and labels["demonstration"].response == nasty
    assert count(store, Label) == 2  # the labels table is still there


def test_export_formats_parse_and_hold_out_labelers(store, tmp_path):
    import_file(store, "rank", write_rank_tasks(tmp_path / "t.jsonl", 2), overlap_fraction=1.0, overlap_k=2)
    write_prompts(tmp_path / "p.jsonl", [{"id": "q1", "text": "Say hi in French.", "user_id": "u"}])
    import_file(store, "prompts", tmp_path / "p.jsonl")
    a, b, h = add_user(store, "ann"), add_user(store, "bob"), add_user(store, "hal", held_out=True)
    for user in (a, b, h):
        for aid in claim_tasks(store, user.id, 10):
            view = open_assignment(store, user.id, aid)
            if view.kind == "demonstration":
                submit_label(store, user.id, aid, Submission("demonstration", new_request_id(), response="Salut !"))
            else:
                # everyone prefers the original response 0, then 1, 2, 3
                order = display_order(user.id, view.task_id, 4)
                pos = {orig: p for p, orig in enumerate(order)}
                submit_label(store, user.id, aid, rank_sub(groups=[[pos[0]], [pos[1]], [pos[2], pos[3]]]))
    out = tmp_path / "export"
    manifest = export.export_dir(store, out)
    rankings = data.load_rankings(out / "rankings.jsonl")
    demos = data.load_demonstrations(out / "demonstrations.jsonl")
    eval_rankings = data.load_rankings(out / "eval" / "rankings.jsonl")
    assert len(rankings) == 4 and {r.labeler_id for r in rankings} == {"ann", "bob"}
    assert all(r.ranking == [[0], [1], [2, 3]] and r.responses[0] == f"Sample 0 for {r.prompt_id}"
               for r in rankings + eval_rankings)
    assert [d.labeler_id for d in demos] == ["ann"] and demos[0].response == "Salut !"
    assert {r.labeler_id for r in eval_rankings} == {"hal"} and len(eval_rankings) == 2
    meta = [json.loads(line) for line in (out / "eval" / "metadata.jsonl").read_text().splitlines()]
    assert len(meta) == 6 and {m["held_out"] for m in meta} == {True, False}
    line = json.loads((out / "rankings.jsonl").read_text().splitlines()[0])
    assert set(line) == {"prompt", "prompt_id", "responses", "ranking", "likert", "flags", "labeler_id", "split",
                         "batch"}
    assert manifest["agreement"]["train_train"]["rate"] == 1.0
    assert manifest["agreement"]["train_heldout"]["comparisons"] == 2 * 2 * 5  # 2 tasks x 2 pairs x 5 strict pairs


def test_skip_records_reason_and_frees_the_slot(store, tmp_path):
    import_file(store, "rank", write_rank_tasks(tmp_path / "t.jsonl", 1))
    a, b = add_user(store, "ann"), add_user(store, "bob")
    (aid,) = claim_tasks(store, a.id, 1)
    assert claim_tasks(store, b.id, 1) == []
    submit_label(store, a.id, aid, Submission("skip", new_request_id(), skip_reason="Not in English"))
    assert len(claim_tasks(store, b.id, 1)) == 1
    rows = export.collect(store).files["skips.jsonl"]
    assert rows == [{"prompt_id": "p0", "kind": "rank", "labeler_id": "ann", "held_out": False,
                     "reason": "Not in English", "split": "train", "batch": "t.jsonl"}]


def test_throughput_and_agreement_numbers(store, tmp_path):
    import_file(store, "rank", write_rank_tasks(tmp_path / "t.jsonl", 1), overlap_fraction=1.0, overlap_k=2)
    a, b = add_user(store, "ann"), add_user(store, "bob")
    for user, groups in ((a, [[0], [1], [2], [3]]), (b, [[3], [2], [1], [0]])):
        (aid,) = claim_tasks(store, user.id, 1)
        task_id = open_assignment(store, user.id, aid).task_id
        pos = {o: p for p, o in enumerate(display_order(user.id, task_id, 4))}
        submit_label(store, user.id, aid, rank_sub(groups=[[pos[i] for i in g] for g in groups]))
    agr = quality.agreement(store)
    assert agr.train_train.total == 6 and agr.train_train.agree == 0
    tp = {t.username: t for t in quality.throughput(store)}
    assert tp["ann"].labels == 1 and tp["ann"].median_seconds is not None and tp["ann"].median_seconds >= 0
