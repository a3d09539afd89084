"""Prompt curation (instructgpt.curate)."""

from __future__ import annotations

import dataclasses
import json
import random
import unicodedata

import pytest

from instructgpt.config import ConfigError, load
from instructgpt.curate import CurateConfig, curate_prompts, format_summary, run_curate, user_split
from instructgpt.pii import scrub_pii
from instructgpt.data import USE_CASES, DataError, Prompt, load_prompts, write_jsonl

WORDS = ("otter badger heron lichen quartz saffron tundra violin walrus yonder zephyr amber basalt cobalt "
         "delta ember fjord glacier harbor indigo juniper kelp lagoon meadow nectar orchid").split()


def unique_text(rng: random.Random, i: int) -> str:
    """A text whose first 60 normalised characters differ from every other call's."""
    return f"#{i} " + " ".join(rng.choice(WORDS) for _ in range(12))


def make_prompts(n_users: int, per_user: int = 3, seed: int = 0, start: int = 0) -> list[Prompt]:
    rng = random.Random(seed)
    prompts = []
    for u in range(start, start + n_users):
        for j in range(per_user):
            i = len(prompts) + start * per_user
            prompts.append(Prompt(id=f"p{i}", text=unique_text(rng, i), user_id=f"user{u}",
                                  use_case=USE_CASES[i % len(USE_CASES)], source=f"gen:{i}"))
    return prompts


def users_by_split(result) -> dict[str, set[str]]:
    return {name: {p.user_id for p in result.split(name)} for name in ("train", "valid", "test")}


# ---------------------------------------------------------------- splits

def test_no_user_in_two_splits():
    prompts = make_prompts(300, per_user=4)
    result = curate_prompts(prompts, CurateConfig())
    users = users_by_split(result)
    assert not users["train"] & users["valid"]
    assert not users["train"] & users["test"]
    assert not users["valid"] & users["test"]
    assert len(users["train"] | users["valid"] | users["test"]) == 300
    assert all(p.split == name for name in ("train", "valid", "test") for p in result.split(name))
    assert len(result.kept()) == len(prompts) and not result.removed


def test_split_is_stable_when_users_are_added_or_reordered():
    # the hash placement (balance_min_share=1; by default users are placed to balance prompt shares)
    cfg = CurateConfig(seed=7, balance_min_share=1.0)
    base = make_prompts(200)
    before = {p.user_id: p.split for p in curate_prompts(base, cfg).kept()}
    more = make_prompts(300, start=200, seed=1) + list(reversed(base))
    after = {p.user_id: p.split for p in curate_prompts(more, cfg).kept()}
    assert all(after[u] == s for u, s in before.items())
    assert {p.user_id: p.split for p in curate_prompts(base, CurateConfig(seed=8, balance_min_share=1.0)).kept()} \
        != before


def test_fractions_roughly_respected():
    prompts = make_prompts(1000, per_user=1)
    result = curate_prompts(prompts, CurateConfig(valid_fraction=0.1, test_fraction=0.2))
    n = {name: len(users) for name, users in users_by_split(result).items()}
    assert sum(n.values()) == 1000
    assert 60 <= n["valid"] <= 140
    assert 150 <= n["test"] <= 250
    assert 620 <= n["train"] <= 780


def test_user_split_depends_only_on_seed_and_user():
    assert user_split("alice", 3, 0.1, 0.1) == user_split("alice", 3, 0.1, 0.1)
    assert user_split("alice", 0, 0.0, 0.0) == "train"
    assert user_split("alice", 0, 0.0, 1.0) == "test"
    assert user_split("alice", 0, 1.0, 0.0) == "valid"


def test_pinned_split_is_kept_and_followed_by_the_users_other_prompts():
    prompts = make_prompts(50, per_user=3)
    prompts[4].split = "test"  # user1's second prompt
    result = curate_prompts(prompts, CurateConfig(test_fraction=0.0, valid_fraction=0.0))
    assert {p.id for p in result.test} == {"p3", "p4", "p5"}
    assert all(p.split == "train" for p in result.train) and len(result.train) == 147


def test_user_spanning_two_pinned_splits_is_an_error():
    prompts = make_prompts(5, per_user=3)
    prompts[3].split = "train"
    prompts[5].split = "valid"
    with pytest.raises(DataError) as info:
        curate_prompts(prompts, CurateConfig())
    msg = str(info.value)
    assert msg.startswith("gen:5: split: ")
    assert "'user1'" in msg and "gen:3" in msg


# ---------------------------------------------------------------- dedupe and cap

def test_near_duplicates_removed_and_short_distinct_kept():
    long_a = "Write a short story about a lighthouse keeper who finds a message in a bottle, set in Maine."
    long_b = "write a  SHORT story about a lighthouse keeper who finds a message\nin a bottle, set in Norway!"
    prompts = [
        Prompt(id="a", text=long_a, user_id="u1", source="f:1"),
        Prompt(id="b", text=long_b, user_id="u2", source="f:2"),
        Prompt(id="c", text="Hi", user_id="u3", source="f:3"),
        Prompt(id="d", text="Hi!", user_id="u4", source="f:4"),
        Prompt(id="e", text="hi", user_id="u5", source="f:5"),
        Prompt(id="f", text="Write a short story", user_id="u6", source="f:6"),
    ]
    result = curate_prompts(prompts, CurateConfig())
    assert sorted(p.id for p in result.kept()) == ["a", "c", "d", "f"]
    assert [(r.prompt.id, r.reason, r.duplicate_of) for r in result.removed] == [
        ("b", "duplicate_prefix", "a"), ("e", "duplicate_prefix", "c")]
    # With a longer prefix the two stories differ.
    assert "b" in {p.id for p in curate_prompts(prompts, CurateConfig(prefix_chars=200)).kept()}


def test_per_user_cap_keeps_first_non_duplicates():
    rng = random.Random(1)
    heavy = []
    for i in range(500):
        if i % 5 == 4:  # every fifth prompt repeats the one before it
            text = heavy[-1].text.upper()
        else:
            text = unique_text(rng, i)
        heavy.append(Prompt(id=f"h{i}", text=text, user_id="heavy", source=f"h:{i}"))
    others = make_prompts(20, per_user=5, seed=2, start=1000)
    result = curate_prompts(others[:50] + heavy + others[50:], CurateConfig())

    kept = [p for p in result.kept() if p.user_id == "heavy"]
    expected = [p.id for p in heavy if int(p.id[1:]) % 5 != 4][:200]
    assert len(kept) == 200
    assert sorted(p.id for p in kept) == sorted(expected)
    reasons = {r.prompt.id: r.reason for r in result.removed}
    assert sum(r == "duplicate_prefix" for r in reasons.values()) == 100
    assert sum(r == "user_cap" for r in reasons.values()) == 200
    assert all(sum(p.user_id == f"user{u}" for p in result.kept()) == 5 for u in range(1000, 1020))


def test_cap_counts_after_dedupe_and_input_is_not_modified():
    prompts = [Prompt(id=str(i), text=f"prompt number {i} by u mail x{i}@example.com", user_id="u", source=f"f:{i}")
               for i in range(5)]
    result = curate_prompts(prompts, CurateConfig(max_per_user=3))
    assert [p.id for p in result.kept()] == ["0", "1", "2"]
    assert [r.prompt.id for r in result.removed] == ["3", "4"]
    assert "@" in prompts[0].text and prompts[0].split is None  # inputs untouched
    assert "[EMAIL]" in result.kept()[0].text


def test_chat_prompts_are_compared_by_their_request_not_a_shared_system_message():
    system = {"role": "system", "content": "You are the helpful assistant of Harbor Shoes, an online shoe shop."}
    def chat(i, question, user):
        return Prompt(id=i, text="", user_id=user, source=f"f:{i}",
                      turns=[system, {"role": "user", "content": question}])
    prompts = [chat("c1", "What is your return policy for shoes bought on sale?", "u1"),
               chat("c2", "Write a poem about autumn leaves falling in the park.", "u2"),
               Prompt(id="t1", text="Write a poem about autumn leaves falling in the park.", user_id="u3",
                      source="f:t1"),
               Prompt(id="t2", text="", user_id="u4", source="f:t2",
                      turns=[{"role": "user", "content": "What is your return policy for shoes bought on sale?"}])]
    result = curate_prompts(prompts, CurateConfig(prefix_chars=40))
    # the shared system message made c2 a duplicate of c1; a text prompt and the same single user turn
    # were two prompts
    assert {(r.prompt.id, r.duplicate_of) for r in result.removed} == {("t1", "c2"), ("t2", "c1")}


def test_unicode_variants_of_one_prompt_are_duplicates():
    text = "Café owners: write a short note about opening hours for the holidays"
    variants = [unicodedata.normalize("NFD", text), text.replace(" ", " \u200b"),
                "Ｃａｆé owners: write a short note about opening hours for the holidays"]
    prompts = [Prompt(id=f"v{i}", text=t, user_id=f"u{i}", source=f"f:{i}") for i, t in enumerate([text, *variants])]
    result = curate_prompts(prompts, CurateConfig())
    assert [p.id for p in result.kept()] == ["v0"] and len(result.removed) == 3


def test_a_pinned_split_holds_when_the_pinning_prompt_is_removed():
    """bob pinned to test by a prompt that is a duplicate of alice's: his other prompts went to train."""
    prompts = [Prompt(id="a1", text="Explain how tides work in simple words for a child", user_id="alice"),
               Prompt(id="b1", text="explain how TIDES work in simple   words for a child", user_id="bob",
                      split="test"),
               Prompt(id="b2", text="List three birds that live near the sea", user_id="bob"),
               Prompt(id="b3", text="Translate good morning into French", user_id="bob")]
    result = curate_prompts(prompts, CurateConfig(valid_fraction=0.0, test_fraction=0.0))
    assert [r.prompt.id for r in result.removed] == ["b1"]
    assert {p.id for p in result.test} == {"b2", "b3"}
    # and beyond the cap: the pin of a capped prompt holds too
    capped = curate_prompts(prompts[:1] + [prompts[2], prompts[3], dataclasses.replace(prompts[1], text="new")],
                            CurateConfig(max_per_user=2, valid_fraction=0.0, test_fraction=0.0))
    assert {p.id for p in capped.test} == {"b2", "b3"}


def test_a_bad_removed_record_leaves_the_earlier_output_whole(tmp_path):
    """The split files were replaced before removed.jsonl failed on a reserved field."""
    write_jsonl(tmp_path / "a.jsonl", make_prompts(10, per_user=2))
    run_curate(CurateConfig(prompts=str(tmp_path / "a.jsonl"), out_dir=str(tmp_path / "out")))
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    rows = [{"id": "x1", "text": "Name three rivers of Europe please", "user_id": "u"},
            {"id": "x2", "text": "name three rivers of europe please", "user_id": "v", "reason": "old"}]
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"b\.jsonl:2: reason: field is reserved in removed\.jsonl"):
        run_curate(CurateConfig(prompts=str(tmp_path / "b.jsonl"), out_dir=str(tmp_path / "out")))
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before


# ---------------------------------------------------------------- PII

@pytest.mark.parametrize("text, expected, kind", [
    ("write to jane.doe@example.com today", "write to [EMAIL] today", "email"),
    ("call 555-123-4567 now", "call [PHONE] now", "phone"),
    ("London: +44 20 7946 0958.", "London: [PHONE].", "phone"),
    ("card 4111-1111-1111-1111", "card [CARD]", "card"),
    ("host 192.168.0.1 is down", "host [IP] is down", "ip"),
    ("v6 2001:db8::1 works", "v6 [IP] works", "ip"),
    ("see https://bob:secret@example.com/x", "see https://[CREDENTIALS]@example.com/x", "credentials"),
])
def test_scrub_pii_examples(text, expected, kind):
    assert scrub_pii(text) == (expected, {kind: 1})


def test_scrub_pii_counts_several_kinds():
    text = "a@b.io, c@d.org, 10.0.0.1 and 555-123-4567"
    assert scrub_pii(text) == ("[EMAIL], [EMAIL], [IP] and [PHONE]", {"email": 2, "ip": 1, "phone": 1})


def test_scrub_can_be_turned_off():
    prompts = [Prompt(id="1", text="mail me at a@b.io", user_id="u")]
    result = curate_prompts(prompts, CurateConfig(scrub_pii=False))
    assert result.kept()[0].text == "mail me at a@b.io"
    assert result.summary()["pii"]["email"] == 0


# ---------------------------------------------------------------- config

@pytest.mark.parametrize("overrides, key", [
    ({"valid_fraction": -0.1}, "valid_fraction"),
    ({"test_fraction": 1.5}, "test_fraction"),
    ({"valid_fraction": 0.6, "test_fraction": 0.6}, "test_fraction"),
    ({"prefix_chars": 0}, "prefix_chars"),
    ({"max_per_user": 0}, "max_per_user"),
    ({"out_dir": ""}, "out_dir"),
])
def test_config_validation(overrides, key):
    with pytest.raises(ConfigError, match=f"^{key}: "):
        load(CurateConfig, overrides=overrides)


def test_config_loads_overrides():
    cfg = load(CurateConfig, overrides=["prompts=p.jsonl", "max_per_user=50", "scrub_pii=false"])
    assert (cfg.prompts, cfg.max_per_user, cfg.scrub_pii) == ("p.jsonl", 50, False)


def test_run_curate_needs_prompts():
    with pytest.raises(ConfigError, match="^prompts: "):
        run_curate(CurateConfig())


# ---------------------------------------------------------------- files

def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_curate_writes_files_and_summary(tmp_path):
    prompts = make_prompts(120, per_user=2)
    prompts += [Prompt(id="dup", text=prompts[0].text + " (again)", user_id="user0", use_case="chat")]
    prompts += [Prompt(id=f"cap{i}", text=f"capped {i} " + "x" * 70, user_id="busy") for i in range(4)]
    prompts[1].text = "reach me on 555-123-4567 or at me@example.com"
    write_jsonl(tmp_path / "prompts.jsonl", prompts)

    cfg = CurateConfig(prompts=str(tmp_path / "prompts.jsonl"), out_dir=str(tmp_path / "out"), max_per_user=2)
    result = run_curate(cfg)
    out = tmp_path / "out"

    splits = {name: load_prompts(out / f"{name}.jsonl") for name in ("train", "valid", "test")}
    removed = read_lines(out / "removed.jsonl")
    summary = json.loads((out / "curation_summary.json").read_text())

    assert {r["id"]: r["reason"] for r in removed} == {"dup": "duplicate_prefix", "cap2": "user_cap",
                                                       "cap3": "user_cap"}
    assert next(r for r in removed if r["id"] == "dup")["duplicate_of"] == "p0"
    assert summary["prompts_in"] == 245 and summary["users_in"] == 121
    assert summary["prompts_out"] == 242 == sum(len(v) for v in splits.values())
    assert summary["removed"] == {"already_curated": 0, "duplicate_prefix": 1, "user_cap": 2}
    assert summary["users_capped"] == 1
    assert summary["pii"] == {"email": 1, "phone": 1, "card": 0, "iban": 0, "ssn": 0, "ip": 0, "credentials": 0, "secret": 0}
    assert summary["prompts_scrubbed"] == 1
    for name, loaded in splits.items():
        assert summary["splits"][name] == {"prompts": len(loaded), "users": len({p.user_id for p in loaded})}
        assert all(p.split == name for p in loaded)
    assert sum(n["total"] for n in summary["use_cases"].values()) == 242
    assert summary["config"]["max_per_user"] == 2
    texts = {p.id: p.text for ps in splits.values() for p in ps}
    assert texts["p1"] == "reach me on [PHONE] or at [EMAIL]"
    assert result.summary() == {k: v for k, v in summary.items() if k != "config"}

    report = format_summary(result)
    assert "duplicate_prefix: 1" in report and "user_cap: 2" in report
    assert "(duplicate of id p0)" in report
    assert "1 email" in report and "1 phone" in report


# ---------------------------------------------------------------- prompt-balanced splits (issue 13)

def test_heavy_user_cannot_starve_training():
    """One user with 183 of 650 prompts used to land in validation by the hash; now whole users are placed
    so each split gets its target share of the prompts (80/10/10)."""
    rng = random.Random(3)
    prompts = []
    heavy = [Prompt(id=f"h{i}", text=unique_text(rng, 10_000 + i), user_id="heavy", use_case="generation")
             for i in range(183)]
    for seed in range(6):  # whatever the seed, the heavy user goes to train and shares stay near target
        light = make_prompts(90, per_user=5, seed=seed)
        prompts = heavy + light
        result = curate_prompts(prompts, CurateConfig(seed=seed, max_per_user=200))
        shares = result.summary()["split_shares"]
        assert {p.user_id for p in result.train} >= {"heavy"}
        for name, target in (("train", 0.8), ("valid", 0.1), ("test", 0.1)):
            assert shares[name]["target"] == target
            assert abs(shares[name]["achieved"] - target) <= 0.03, (seed, name, shares)
        users = users_by_split(result)
        assert not (users["train"] & users["valid"] or users["train"] & users["test"] or users["valid"] & users["test"])


def test_heavy_users_fill_the_split_furthest_below_its_prompt_share():
    """Users all heavy (>= 1% of the prompts): sizes 50, 30, 10, 5, 5 of 100 with 50/30/20 targets."""
    rng = random.Random(0)
    prompts = [Prompt(id=f"{u}{i}", text=unique_text(rng, 1000 * n + i), user_id=u, use_case="generation")
               for u, n in (("a", 50), ("b", 30), ("c", 10), ("d", 5), ("e", 5)) for i in range(n)]
    result = curate_prompts(prompts, CurateConfig(valid_fraction=0.3, test_fraction=0.2))
    assert {p.user_id for p in result.train} == {"a"}
    assert {p.user_id for p in result.valid} == {"b"}
    assert {p.user_id for p in result.test} == {"c", "d", "e"}
    assert "50.0% (target 50%)" in format_summary(result)


def test_balance_min_share_one_is_the_plain_user_hash():
    prompts = make_prompts(40, per_user=6)
    result = curate_prompts(prompts, CurateConfig(balance_min_share=1.0, seed=2))
    assert all(p.split == user_split(p.user_id, 2, 0.1, 0.1) for p in result.kept())


def test_an_empty_prompts_file_is_an_error_that_keeps_the_earlier_output(tmp_path):
    """It used to overwrite good splits with empty ones and exit 0."""
    write_jsonl(tmp_path / "prompts.jsonl", make_prompts(40, per_user=2))
    run_curate(CurateConfig(prompts=str(tmp_path / "prompts.jsonl"), out_dir=str(tmp_path / "out")))
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match=r"empty\.jsonl: no prompts .*nothing written"):
        run_curate(CurateConfig(prompts=str(tmp_path / "empty.jsonl"), out_dir=str(tmp_path / "out")))
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before


def test_pools_curated_apart_hold_their_test_prompts_out_of_every_pools_training():
    from instructgpt.curate import hold_out_across
    cfg = CurateConfig(valid_fraction=0.3, test_fraction=0.3)
    rng = random.Random(5)
    shared = [unique_text(rng, 9000 + i) for i in range(40)]
    a = [Prompt(id=f"a{i}", text=shared[i], user_id=f"a-user{i}") for i in range(40)]
    b = [Prompt(id=f"b{i}", text=shared[i].upper(), user_id=f"b-user{i}") for i in range(40)]
    pools = [curate_prompts(a, cfg), curate_prompts(b, cfg)]
    a_train = {normalize(p) for p in pools[0].train}
    assert any(normalize(p) in a_train for p in pools[1].test)  # apart, pool b tests on pool a's training prompts
    hold_out_across(pools)
    train = {normalize(p) for r in pools for p in r.train}
    held = [normalize(p) for r in pools for name in ("valid", "test") for p in r.split(name)]
    assert held and not set(held) & train and len(set(held)) == len(held)
    assert all(r.reason == "duplicate_prefix" and r.duplicate_of[0] in "ab" for r in pools[1].removed)
    # training splits are left whole
    assert sum(len(r.train) for r in pools) == sum(len(r.train) for r in (curate_prompts(a, cfg), curate_prompts(b, cfg)))


def normalize(p: Prompt) -> str:
    return p.text.casefold()


# ---------------------------------------------------------------- batches: the rules hold across curations

def test_a_second_batch_is_curated_against_the_first():
    cfg = CurateConfig(max_per_user=4, valid_fraction=0.2, test_fraction=0.2)
    first = curate_prompts(make_prompts(30, per_user=3), cfg)
    earlier = first.kept()
    split_of = {p.user_id: p.split for p in earlier}
    rng = random.Random(7)
    batch = [Prompt(id=f"n{u}-{j}", text=unique_text(rng, 1000 + 10 * u + j), user_id=f"user{u}") for u in range(3)
             for j in range(3)]                                                    # users 0-2 hold 3 already
    batch.append(Prompt(id="again", text=earlier[5].text.upper() + " and more", user_id="newcomer"))  # prefix repeat
    batch.append(Prompt(id=earlier[7].id, text=earlier[7].text, user_id=earlier[7].user_id))          # re-sent
    second = curate_prompts(batch, cfg, earlier)
    reasons = {r.prompt.id: (r.reason, r.duplicate_of) for r in second.removed}
    # the cap counts each user's earlier prompts: 3 + 1 kept, 2 capped
    assert sorted(i for i, (why, _) in reasons.items() if why == "user_cap") == [
        "n0-1", "n0-2", "n1-1", "n1-2", "n2-1", "n2-2"]
    assert reasons["again"] == ("duplicate_prefix", earlier[5].id)
    assert reasons[earlier[7].id] == ("already_curated", earlier[7].id)
    # a user keeps the earlier split; nothing curated earlier is output again
    assert all(p.split == split_of[p.user_id] for p in second.kept() if p.user_id in split_of)
    assert {p.id for p in second.kept()} == {"n0-0", "n1-0", "n2-0"}
    summary = second.summary()
    assert summary["earlier"]["prompts"] == 90 and summary["removed"]["already_curated"] == 1
    assert "Checked against 90 prompts from 30 users curated earlier" in format_summary(second)
    # the same batch alone: nothing would have been removed but the one in-batch case
    assert not curate_prompts(batch, cfg).removed


def test_across_batches_an_id_names_one_prompt_and_a_user_one_split():
    cfg = CurateConfig()
    earlier = [Prompt(id="a", text="Write a poem about the harbor at dawn", user_id="u1", split="valid",
                      source="valid.jsonl:1")]
    with pytest.raises(DataError, match=r"^b\.jsonl:1: id: 'a' was curated earlier with another text "
                                        r"\(valid\.jsonl:1\)"):
        curate_prompts([Prompt(id="a", text="Something else entirely", user_id="u1", source="b.jsonl:1")], cfg, earlier)
    with pytest.raises(DataError, match=r"^b\.jsonl:2: split: user 'u1' would span two splits: 'train' here but "
                                        r"'valid' at valid\.jsonl:1"):
        curate_prompts([Prompt(id="c", text="A new question on tides", user_id="u1", split="train",
                               source="b.jsonl:2")], cfg, earlier)
    with pytest.raises(DataError, match=r"^x: split: an earlier curation's prompt needs one of"):
        curate_prompts([], cfg, [Prompt(id="x", text="t", user_id="u", source="x")])


def test_heavy_users_of_a_new_batch_fill_the_splits_the_earlier_batches_left_short():
    cfg = CurateConfig(valid_fraction=0.25, test_fraction=0.25)
    rng = random.Random(3)
    earlier = [Prompt(id=f"e{i}", text=unique_text(rng, i), user_id=f"old{i % 4}", split="train") for i in range(40)]
    batch = [Prompt(id=f"b{u}-{j}", text=unique_text(rng, 100 + 10 * u + j), user_id=f"new{u}")
             for u in range(2) for j in range(10)]
    second = curate_prompts(batch, cfg, earlier)
    # 40 earlier prompts all in train (target 30 of 60): the two new users go to valid and test
    assert {p.split for p in second.kept()} == {"valid", "test"}
    assert second.summary()["earlier"]["split_shares"] == {"train": 0.6667, "valid": 0.1667, "test": 0.1667}
    # alone, the batch's heavier user would have filled train
    assert "train" in {p.split for p in curate_prompts(batch, cfg).kept()}


def test_curate_previous_writes_the_new_prompts_only(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", make_prompts(20, per_user=2))
    run_curate(CurateConfig(prompts=str(tmp_path / "a.jsonl"), out_dir=str(tmp_path / "v1")))
    more = make_prompts(20, per_user=2) + make_prompts(5, per_user=2, seed=9, start=40)
    write_jsonl(tmp_path / "b.jsonl", more)
    result = run_curate(CurateConfig(prompts=str(tmp_path / "b.jsonl"), out_dir=str(tmp_path / "v2"),
                                     previous=str(tmp_path / "v1")))
    written = [p for name in ("train", "valid", "test") for p in load_prompts(tmp_path / "v2" / f"{name}.jsonl")]
    assert len(written) == 10 and {p.user_id for p in written} == {f"user{u}" for u in range(40, 45)}
    assert json.loads((tmp_path / "v2" / "curation_summary.json").read_text())["removed"]["already_curated"] == 40
    assert result.summary()["earlier"]["prompts"] == 40
    with pytest.raises(ConfigError, match=r"^out_dir: .* is the previous curation's folder"):
        run_curate(CurateConfig(prompts=str(tmp_path / "b.jsonl"), out_dir=str(tmp_path / "v1"),
                                previous=str(tmp_path / "v1")))
    with pytest.raises(DataError, match=r"nope/train\.jsonl: not found \(previous= names the out_dir"):
        run_curate(CurateConfig(prompts=str(tmp_path / "b.jsonl"), out_dir=str(tmp_path / "v3"),
                                previous=str(tmp_path / "nope")))


# ---------------------------------------------------------------- PII: audit 2026-12-03

@pytest.mark.parametrize("code", [
    "evens = nums[::2]", "print(s[::3])", "a[1::2]", "m[:, ::4]", "for k in d[::10]:",
    "numpy.arange(0, 1e6)[::1000]", "x = arr[::-1]", "time 1:2:3",
])
def test_pii_python_slices_are_not_ip_addresses(code):
    assert scrub_pii(code) == (code, {})


@pytest.mark.parametrize("address", [
    "2001:db8:85a3::8a2e:370:7334", "fe80::1ff:fe23:4567:890a", "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
    "2001:db8::1", "::ffff:192.168.0.1",
])
def test_pii_ipv6_addresses_with_three_groups_are_scrubbed(address):
    assert scrub_pii(f"host {address} is down") == ("host [IP] is down", {"ip": 1})


@pytest.mark.parametrize("text", [
    "15! = 1307674368000", "2**63 - 1 = 9223372036854775807", "timestamp 1700000000000 in ms",
    "ISBN 9780306406157 and 9783161484100", "compact datetime 20230115123045", "the range 1000-2000-3000-4000",
    "compute 1234567890123 * 2", "6000 0000 0000 0000",
])
def test_pii_long_numbers_that_are_not_card_numbers_are_left_alone(text):
    assert scrub_pii(text) == (text, {})


@pytest.mark.parametrize("card", [
    "4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111", "5555 5555 5555 4444",
    "3782 822463 10005", "378282246310005", "6011 1111 1111 1117", "3056 930902 5904",
])
def test_pii_card_numbers_pass_the_luhn_check_and_are_scrubbed(card):
    assert scrub_pii(f"card {card} exp") == ("card [CARD] exp", {"card": 1})


@pytest.mark.parametrize("text", ["score: +10 20 30 40", "+12 345 6789 0123 points"])
def test_pii_plus_one_needs_a_north_american_number(text):
    assert scrub_pii(text) == (text, {})


@pytest.mark.parametrize("phone", [
    "+44 20 7946 0958", "+1 415 555 2671", "+49 30 12345678", "+33 1 23 45 67 89", "+7 495 123-45-67",
    "+1 (555) 123-4567", "+91 98765 43210", "0049 30 12345678", "0044 20 7946 0958",
])
def test_pii_international_numbers_are_scrubbed(phone):
    assert scrub_pii(f"call {phone} now") == ("call [PHONE] now", {"phone": 1})


@pytest.mark.parametrize("phone", [
    "020 7946 0958", "0161 496 0000", "07700 900123", "030 12345678", "01 23 45 67 89", "01.23.45.67.89",
    "03-1234-5678", "090-1234-5678", "(02) 1234 5678", "0412 345 678", "098765 43210",
])
def test_pii_national_numbers_with_a_trunk_zero_are_scrubbed(phone):
    assert scrub_pii(f"call {phone} now") == ("call [PHONE] now", {"phone": 1})


@pytest.mark.parametrize("text, expected, kind", [
    ("call 555\u00a0123\u00a04567 now", "call [PHONE] now", "phone"),
    ("call +44\u00a020\u00a07946\u00a00958 now", "call [PHONE] now", "phone"),
    ("call 020\u202f7946\u202f0958 now", "call [PHONE] now", "phone"),
    ("call 555\u200b-123-4567 now", "call [PHONE] now", "phone"),
    ("call 555\u2011123\u20114567 now", "call [PHONE] now", "phone"),
    ("card 4111\u00a01111\u00a01111\u00a01111 exp", "card [CARD] exp", "card"),
    ("card 4111\u200b1111\u200b1111\u200b1111 exp", "card [CARD] exp", "card"),
    ("mail jane\u200b@example.com now", "mail [EMAIL] now", "email"),
    ("mail ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ now", "mail [EMAIL] now", "email"),
    # what lies outside the match keeps its unusual characters
    ("\u00a0mail\u200b a@b.io\u200b\u00a0or", "\u00a0mail\u200b [EMAIL]\u200b\u00a0or", "email"),
])
def test_pii_behind_unusual_spaces_and_zero_width_characters_is_scrubbed(text, expected, kind):
    assert scrub_pii(text) == (expected, {kind: 1})


@pytest.mark.parametrize("email", ["jörg@müller.de", "ana@correo.españa.es", "иван@пример.рф"])
def test_pii_emails_with_non_ascii_domains_are_scrubbed(email):
    assert scrub_pii(f"mail {email} now") == ("mail [EMAIL] now", {"email": 1})


@pytest.mark.parametrize("text", [
    "in 2019 we had 1200 users",
    "the years 1999-2004 and a 2-3 week trip",
    "version 3.11.2 and 12:30:45 and std::vector",
    "order 123456789012 and $1,200,000",
    "dates 2023-01-15, 15.01.2023, 01/15/2023, 01-15-2023 and 05.01.2024",
    "at 09:30:00, 12 30 45 and 0800 1200 1600 2000",
    "versions 1.2.3, 0.12.3 and 01.02.03",
    "prices $0.99, $1,200.50 and 0,99 EUR",
    "1200 users in 2019, 10-20 items, 1999-2004",
    "x = 0.5 * 0.25 + 03 - 07",
    "ISBN 0-306-40615-2 and 978-3-16-148410-0",
    "ids 0123 0456 0789 and 0001 2345 6789",
    "code points 0041 0042 0043 0044",
    "math 2 + 3 = 5, 10 20 30 40 50 60",
    "call 5551234567",  # unbroken ten digits: too ambiguous to call a phone number
    "10\u00a0000 people and 1\u202f234\u202f567 €",
])
def test_pii_ordinary_numbers_are_left_alone(text):
    assert scrub_pii(text) == (text, {})


@pytest.mark.parametrize("text, expected, kind", [
    ("my SSN is 123-45-6789, thanks", "my SSN is [SSN], thanks", "ssn"),
    ("ssn 078 05 1120.", "ssn [SSN].", "ssn"),
    ("https://maps.example.com/api?q=x&key=AIzaSyA1234567890abcdefghijklmnopqrstu",
     "https://maps.example.com/api?q=x&key=[SECRET]", "secret"),
    ("GET /v1/me?access_token=abc.def-123&lang=en", "GET /v1/me?access_token=[SECRET]&lang=en", "secret"),
    ("-H 'Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOjF9.sig'", "-H 'Authorization: Bearer [SECRET]'",
     "secret"),
    ("why does sk-proj-abcdefghijklmnopqrstuvwx1234 fail?", "why does [SECRET] fail?", "secret"),
    ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789 here", "token [SECRET] here", "secret"),
    ("aws AKIAIOSFODNN7EXAMPLE key", "aws [SECRET] key", "secret"),
    ("slack xoxb-1234567890-abcdefghij", "slack [SECRET]", "secret"),
])
def test_pii_social_security_numbers_and_secrets_are_scrubbed(text, expected, kind):
    assert scrub_pii(text) == (expected, {kind: 1})


@pytest.mark.parametrize("text", [
    # numbers the SSA never issues, and mixed separators
    "codes 000-12-3456, 666-12-3456, 912-34-5678, 123-00-4567, 123-45-0000 and 123-45 6789",
    "git clone git@github.com:org/repo.git",  # an SSH remote, not a person's address
    "the key=value pairs, sk-learn and task-master",
    "a ratio 123-45-6789.5 and the date 2023-01-15",
])
def test_pii_look_alikes_of_ssns_secrets_and_emails_are_left_alone(text):
    assert scrub_pii(text) == (text, {})


@pytest.mark.parametrize("text, expected, kind", [
    ("SSN:123-45-6789", "SSN:[SSN]", "ssn"),
    ("name=Jo;ssn:078-05-1120;dob=1990", "name=Jo;ssn:[SSN];dob=1990", "ssn"),
    ("Tel:020 7946 0958", "Tel:[PHONE]", "phone"),
    ("mobile:07700 900123.", "mobile:[PHONE].", "phone"),
])
def test_pii_glued_to_its_label_by_a_colon_is_scrubbed(text, expected, kind):
    """A colon before an SSN or a national phone number was refused whatever preceded it (meant for times)."""
    assert scrub_pii(text) == (expected, {kind: 1})


@pytest.mark.parametrize("text", ["at 12:01 23 45 67 89", "ratio 1:123-45-6789", "from 10:030 12345678"])
def test_pii_numbers_after_a_digit_and_colon_are_left_alone(text):
    assert scrub_pii(text) == (text, {})


@pytest.mark.parametrize("text, expected", [
    ("login with hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345678 fails", "login with [SECRET] fails"),
    ("stripe.api_key = 'sk_live_51HqzX2eZvKYlo2C0aBcDeFgHiJkLmNoPq'", "stripe.api_key = '[SECRET]'"),
    ("GITLAB_TOKEN=glpat-Ab12Cd34Ef56Gh78Ij90 in CI", "GITLAB_TOKEN=[SECRET] in CI"),
    ("//registry.npmjs.org/:_authToken=npm_abcdefghijklmnopqrstuvwxyz0123456789", "//registry.npmjs.org/:_authToken=[SECRET]"),
])
def test_pii_hugging_face_stripe_gitlab_and_npm_keys_are_scrubbed(text, expected):
    """Only OpenAI, GitHub, AWS, Google and Slack key shapes were known: a Hugging Face token stayed in a prompt."""
    assert scrub_pii(text) == (expected, {"secret": 1})


@pytest.mark.parametrize("text", ["hf_hub_download(repo_id=x) and model.hf_device_map", "sk_learn_style_name",
                                  "stripe's publishable pk_live_51HqzX2eZvKYlo2C0aBcDeFgHi"])
def test_pii_identifiers_like_key_prefixes_are_left_alone(text):
    assert scrub_pii(text) == (text, {})


@pytest.mark.parametrize("text, expected, n", [
    ('r = requests.get("https://api.example.com/v1/me?access_token=abc123def456")\nprint(r)',
     'r = requests.get("https://api.example.com/v1/me?access_token=[SECRET]")\nprint(r)', 1),
    ("Link: <https://x.io/cb?sig=a1b2c3d4>, see (https://x.io/?token=zzz999).",
     "Link: <https://x.io/cb?sig=[SECRET]>, see (https://x.io/?token=[SECRET]).", 2),
    ("[docs](https://x.io/?key=Zx81kLm0)", "[docs](https://x.io/?key=[SECRET])", 1),
])
def test_pii_secret_parameter_leaves_the_code_and_prose_around_the_url(text, expected, n):
    """The value ran to the next &, #, ; or space, taking the closing quote, bracket and full stop with it."""
    assert scrub_pii(text) == (expected, {"secret": n})


def test_pii_secret_parameter_placeholder_is_left_alone():
    text = 'url = f"https://api.example.com/v1?api_key={api_key}"'
    assert scrub_pii(text) == (text, {})


@pytest.mark.parametrize("text", ['[assembly: AssemblyVersion("1.0.0.0")]', "<Version>4.0.0.0</Version>",
                                  "FileVersion=2.0.0.1", "upgrade to version 1.2.3.4 today", "Version: 1.1.1.1"])
def test_pii_four_part_versions_are_not_ip_addresses(text):
    """A four-part version number after the word "version" was scrubbed as an IP address."""
    assert scrub_pii(text) == (text, {})


def test_pii_an_address_near_the_word_version_is_still_scrubbed():
    assert scrub_pii("IP version 4 address 10.0.0.1, server 192.168.1.10 version 3") == (
        "IP version 4 address [IP], server [IP] version 3", {"ip": 2})


def test_pii_big_numbers_in_prompts_survive_curation():
    texts = ["Is 1307674368000 divisible by 7?", "Is 9223372036854775807 divisible by 7?",
             "Convert the timestamp 1700000000000 to UTC"]
    prompts = [Prompt(id=str(i), text=t, user_id=f"u{i}") for i, t in enumerate(texts)]
    result = curate_prompts(prompts, CurateConfig(valid_fraction=0, test_fraction=0))
    assert sorted(p.text for p in result.kept()) == sorted(texts)
    assert result.summary()["prompts_scrubbed"] == 0


@pytest.mark.parametrize("text, expected", [
    ('db = connect(user="bob", password="hunter22")', 'db = connect(user="bob", password="[SECRET]")'),
    ('{"api_key": "abcd1234efgh", "model": "x"}', '{"api_key": "[SECRET]", "model": "x"}'),
    ("DB_PASSWORD: 'x9!kz'", "DB_PASSWORD: '[SECRET]'"),
    ("export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCY\nls", "export AWS_SECRET_ACCESS_KEY=[SECRET]\nls"),
    ("[db]\npassword = hunter22\nport = 5432", "[db]\npassword = [SECRET]\nport = 5432"),
    ("decode eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fw please",
     "decode [SECRET] please"),
])
def test_pii_passwords_and_keys_in_code_and_config_and_bare_jwts_are_scrubbed(text, expected):
    """Secrets were found only in URLs, after Bearer and in issuers' key shapes: password="hunter22" in a
    pasted snippet, a .env line or a JWT on its own stayed in the prompt."""
    assert scrub_pii(text) == (expected, {"secret": 1})


@pytest.mark.parametrize("text", [
    'password = "****"', 'api_key = "your_api_key"', 'password = "{pw}"', "secret_key = os.environ['KEY']",
    'tokenizer = "bert-base"', '{"token": "while"}', "the password: must be 8 characters", "pwd = 'abc'",
    '"password_hint": "my dog"', "passwordless = true\n",
])
def test_pii_placeholders_and_names_that_only_look_like_secrets_are_left_alone(text):
    assert scrub_pii(text) == (text, {})


@pytest.mark.parametrize("text, expected", [
    ("pay DE89 3704 0044 0532 0130 00 by Friday", "pay [IBAN] by Friday"),
    ("IBAN: GB82WEST12345698765432.", "IBAN: [IBAN]."),
])
def test_pii_ibans_are_scrubbed_by_their_checksum(text, expected):
    assert scrub_pii(text) == (expected, {"iban": 1})


@pytest.mark.parametrize("text", ["part AB12 CDEF GHIJ KLMN", "DE88 3704 0044 0532 0130 00", "DE89370400440532013001", "GB82WEST12"])
def test_pii_iban_shapes_without_a_valid_checksum_or_length_are_left_alone(text):
    assert scrub_pii(text) == (text, {})


def _nested_unbounded_repeats(items, inside: bool = False) -> list[str]:
    """Greedy or lazy unbounded repeats inside another unbounded one (possessive and atomic ones reset)."""
    from re import _constants as c
    found = []
    for op, arg in items:
        if op in (c.MAX_REPEAT, c.MIN_REPEAT):
            unbounded = arg[1] == c.MAXREPEAT
            found += [str(op)] if unbounded and inside else []
            found += _nested_unbounded_repeats(arg[2], inside or unbounded)
        elif op in (c.POSSESSIVE_REPEAT, c.ATOMIC_GROUP):
            found += _nested_unbounded_repeats(arg[2] if op == c.POSSESSIVE_REPEAT else arg)
        elif op == c.SUBPATTERN:
            found += _nested_unbounded_repeats(arg[3], inside)
        elif op == c.BRANCH:
            found += [r for branch in arg[1] for r in _nested_unbounded_repeats(branch, inside)]
        elif op in (c.ASSERT, c.ASSERT_NOT):
            found += _nested_unbounded_repeats(arg[1], inside)
    return found


def test_pii_patterns_have_no_nested_unbounded_repeats():
    from re import _parser
    from instructgpt.pii import _RULES
    for kind, pattern, _, _ in _RULES:
        assert not _nested_unbounded_repeats(_parser.parse(pattern.pattern, pattern.flags)), (kind, pattern.pattern)


@pytest.mark.parametrize("unit, tail, kind", [
    ("a-", " see http://bob:pw@example.com", "credentials"),
    ("http+a.", " see http://bob:pw@example.com", "credentials"),
    ("password_", '\npassword = "hunter22"', "secret"),
    ("api-key-", "\nexport DB_PASSWORD=hunter22", "secret"),
    ("-", " mail bob@example.com", "email"), (".", " mail bob@example.com", "email"),
    ("@", " mail bob@example.com", "email"), (":", " mail bob@example.com", "email"),
    ("1", " mail bob@example.com", "email"), ("a", " mail bob@example.com", "email"),
    ("a1-.@:", " mail bob@example.com", "email"), ("@a-", " mail bob@example.com", "email"),
])
def test_pii_scrubbing_takes_linear_time_on_long_runs(unit, tail, kind):
    """1 MB of pasted log took minutes: the URL-credentials pattern scanned a long hyphenated run to its end
    from every letter after a "-", and the secret-name patterns did the same from every name in
    password_password_...; 200 KB of such a run (about 20 s and 2 min of CPU before) now takes well under a second."""
    import time
    text = unit * (200_000 // len(unit)) + tail
    start = time.process_time()
    scrubbed, counts = scrub_pii(text)
    assert time.process_time() - start < 5
    assert counts.get(kind) == 1 and scrubbed.startswith(unit * 1000)


def _digit_repeats_cut_more_ways(items, repeated: bool = False) -> list[str]:
    """Greedy or lazy repeats of a variable count of digits inside a repeat of more than one iteration: a run of
    digits such a pattern meets can be cut into its groups in many ways, and backtracking tries them all."""
    from re import _constants as c
    found = []
    for op, arg in items:
        if op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
            low, high, body = arg
            digits = any(o == c.IN and (c.CATEGORY, c.CATEGORY_DIGIT) in a for o, a in body)
            if repeated and op != c.POSSESSIVE_REPEAT and low != high and digits:
                found.append(str(op))
            found += _digit_repeats_cut_more_ways(body, repeated or high > 1)
        elif op == c.SUBPATTERN:
            found += _digit_repeats_cut_more_ways(arg[3], repeated)
        elif op == c.BRANCH:
            found += [r for branch in arg[1] for r in _digit_repeats_cut_more_ways(branch, repeated)]
        elif op in (c.ASSERT, c.ASSERT_NOT):
            found += _digit_repeats_cut_more_ways(arg[1], repeated)
    return found


def test_pii_phone_patterns_cut_a_run_of_digits_into_groups_one_way():
    from re import _parser

    from instructgpt.pii import _RULES
    phones = [pattern for kind, pattern, _, _ in _RULES if kind == "phone"]
    assert len(phones) == 4
    for pattern in phones:
        assert not _digit_repeats_cut_more_ways(_parser.parse(pattern.pattern, pattern.flags)), pattern.pattern
    assert _digit_repeats_cut_more_ways(_parser.parse(r"\+\d{1,3}(?:[ .-]?\d{1,5}){1,5}(?!\d)"))  # the test can fail


@pytest.mark.parametrize("unit, size, tail", [
    ("+" + "1234567890" * 3 + " ", 1_000_000, "call +44 20 7946 0958"),
    ("0012 " + "1234567890" * 3 + " ", 2_000_000, "call 0044 20 7946 0958"),
])
def test_pii_phone_patterns_take_linear_time_on_long_digit_runs(unit, size, tail):
    """A "+" or "00" before a run of digits too long for a phone number: the pattern tried every cut of the run into
    its five digit groups before giving up, thousands per start (1 MB of the first: 11 s of CPU, 2 MB of the
    second: 7 s); each run is now cut one way (0.4 s a MB)."""
    import time
    text = unit * (size // len(unit)) + tail
    start = time.process_time()
    scrubbed, counts = scrub_pii(text)
    assert time.process_time() - start < 5
    assert counts == {"phone": 1} and scrubbed.startswith(unit * 1000) and scrubbed.endswith("call [PHONE]")


@pytest.mark.parametrize("text, expected, kind", [
    ("svn+ssh://bob:pw@host/repo", "svn+ssh://[CREDENTIALS]@host/repo", "credentials"),
    ("x-a.b-http://bob:pw@host", "x-a.b-http://[CREDENTIALS]@host", "credentials"),
    ("1a.git://bob:pw@host", "1a.git://[CREDENTIALS]@host", "credentials"),
    ("cfg.password_api_key = 'hunter22'", "cfg.password_api_key = '[SECRET]'", "secret"),
    ("DB_PASSWORD_SECRET_TOKEN: 'x9!kz'", "DB_PASSWORD_SECRET_TOKEN: '[SECRET]'", "secret"),
    ("export MY_SECRET_PASSWORD_HASH=abcd1234", "export MY_SECRET_PASSWORD_HASH=[SECRET]", "secret"),
])
def test_pii_schemes_and_secret_names_with_several_starts_are_scrubbed_whole(text, expected, kind):
    assert scrub_pii(text) == (expected, {kind: 1})


def test_chat_prompts_opening_with_the_same_assistant_greeting_are_compared_by_their_requests():
    # a support bot's canned opening line is a shared prefix of different requests, as a system message is
    greeting = {"role": "assistant", "content": "Hi, I'm Acme's virtual assistant. How can I help you today?"}
    def chat(i, question):
        return Prompt(id=i, text="", user_id=f"u{i}", source=f"f:{i}",
                      turns=[greeting, {"role": "user", "content": question}])
    prompts = [chat("c1", "My order number 123 never arrived, what can I do about it?"),
               chat("c2", "How do I change the email address on my account?"),
               Prompt(id="t1", text="How do I change the email address on my account?", user_id="u3", source="f:t1")]
    result = curate_prompts(prompts, CurateConfig(scrub_pii=False))
    assert sorted(p.id for p in result.kept()) == ["c1", "c2"]
    assert [(r.prompt.id, r.duplicate_of) for r in result.removed] == [("t1", "c2")]


def test_chat_prompts_sharing_a_canned_opening_exchange_are_compared_by_what_their_users_wrote():
    # "hi" answered by the same canned reply, then different requests: the shared prefix is the bot's words
    reply = {"role": "assistant", "content": "Hello! I am your AI assistant, happy to help. What can I do for you today?"}
    def chat(i, *asks):
        turns = [{"role": "user", "content": "hi"}, reply]
        for j, ask in enumerate(asks):
            turns += ([reply] if j else []) + [{"role": "user", "content": ask}]
        return Prompt(id=i, text="", user_id=f"u{i}", source=f"f:{i}", turns=turns)
    prompts = [chat("c1", "Write a limerick about a cat."), chat("c2", "Summarise the French revolution."),
               chat("c3", "Write a limerick about a cat.", "Now make it sadder.")]   # the same request, then more
    result = curate_prompts(prompts, CurateConfig(scrub_pii=False, prefix_chars=30))
    assert sorted(p.id for p in result.kept()) == ["c1", "c2"]
    assert [(r.prompt.id, r.duplicate_of) for r in result.removed] == [("c3", "c1")]
