"""Pins the world's behaviour: same seed -> byte-identical files, prompts, verdicts, rankings.

A refactor of ``instructgpt.world`` must not change a single byte of what it
generates (saved worlds of earlier runs are read back, and every stage key
depends on them). These tests fail on any change to what a seed produces: the
registration order of the task types (it orders ``make_prompt``'s draws),
the files of a small saved world, and a few hundred draws of prompts,
reference answers, candidates, flaws, verdicts, rankings, comparisons and
demonstrations.

If you change the world on purpose, update the pins below (the failure
message prints the new values) and say so in the commit message. The digests
come from CPython's ``random`` (the same on every platform) and libm
(``log``/``exp``/``cos``; a different libm could, in principle, move a
last digit).
"""

import hashlib
import json
import random
from dataclasses import asdict

import pytest

from instructgpt.world import FLAWS, World, build_datasets, candidates, check, make_prompt, perturb, solve
from instructgpt.world.tasks import TASKS

TASK_ORDER = [
    ("describe", "generation", 0.35), ("story", "generation", 0.30), ("note", "generation", 0.20),
    ("ad", "generation", 0.15), ("fact_qa", "open_qa", 1.0), ("chat_qa", "chat", 0.6),
    ("chat_rude", "chat", 0.2), ("chat_greet", "chat", 0.2), ("list_kind", "brainstorming", 0.4),
    ("list_filter", "brainstorming", 0.6), ("sentiment", "classification", 0.4),
    ("kind", "classification", 0.3), ("politeness", "classification", 0.3), ("sort_names", "other", 0.5),
    ("count_items", "other", 0.5), ("closed_qa", "closed_qa", 1.0), ("summarize", "summarization", 1.0),
    ("extract_kind", "extract", 1.0), ("rewrite_list", "rewrite", 0.35), ("rewrite_replace", "rewrite", 0.35),
    ("rewrite_polite", "rewrite", 0.30),
]

SMALL = dict(seed=0, scale=0.004, corpus_docs=300, heldout_docs=30, n_toxicity_starts=3, n_bias=6, n_cloze=10)
# sha256 of each file of build_datasets(**SMALL).save(dir) (its manifest.json)
SMALL_WORLD_FILES = {
    "config.json": "92cca8c0f6afc85d9eaf6798bc91751b8d66db7a0f1899f59947ea5c29269027",
    "world.json": "9f8fb3debea97d6c4220e9fc20d85d6c2aece047af375f91c77227c8e2c720cd",
    "panel.json": "51595ade862eace8e66cdff2aa92006acbc21bc5def0a32f2b517114493d5b20",
    "prompts_sft.jsonl": "d927dfc151bd231e60764dd474f51245cf576cbae2c1e5b5da307e8608a23dac",
    "prompts_rm.jsonl": "899c74b32776a8bd8fabcb9be1a8a456a78eea07b1a895d3876bf28ebee76421",
    "prompts_ppo.jsonl": "c474e70a0fdb59317f8cb45ba9a40048af0d41db1c82e07a4eb8a8d62e5412e6",
    "sft_demos.jsonl": "705f8b6a747ca0549d12a38740de3166cae7bdebb2c7106e09ecb0ef4c69c953",
    "flan.jsonl": "4d846c96a1b6c949e82b4136bf746c33dc40d3c91760c3f473fb778eaf346100",
    "t0.jsonl": "6dc203ad3b92701eca0451a5803ad89cf1a2921fb4519bc3486d64884e685d68",
    "corpus_train.jsonl": "8a3b711992591d5d128cca8f2e1fe7d9dd038003908ebc9e1c573637096421e7",
    "corpus_heldout.jsonl": "7fa63018c627e859eff14bfe7428369530e993fe1fbd11135e329b453520fed5",
    "probes.json": "11c355c7b58e88ea2717c6e680433714e019d289ab61f79413a9b928d0ca3caf",
}
# sha256 of World.generate(42).to_dict(): a seed whose names depend on the words of the task-type
# templates (kb.template_words must read task_types/ too, or a name could be a template word)
SEED42_WORLD_SHA256 = "30449b917fa0dcadb187f78418f8a38a704dd71c5e631480d98145172a2214b2"
# sha256 of the JSON records of test_draws_are_identical and
# test_every_task_type_makes_solves_and_grades_the_same
DRAWS_SHA256 = "66566b4667a0c60aa13b81fa7e407cfe039ae8e696700b077867cec20e9ff87a"
TASKS_SHA256 = "78cc53074b6e4d1331966ddb204c63918f4786fb77ec5d59316a2c0cf08a0eca"


def _sha256(records) -> str:
    return hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()


def _ranking_fields(ranking) -> dict:
    """The ranking's fields as pinned (``turns``, added later for chat prompts, is None here)."""
    fields = asdict(ranking)
    assert fields.pop("turns", None) is None
    return fields


def test_task_types_keep_their_registration_order():
    assert [(t.name, t.use_case, t.weight) for t in TASKS.values()] == TASK_ORDER


def test_names_avoid_every_template_word_of_the_package():
    digest = _sha256(World.generate(42).to_dict())
    assert digest == SEED42_WORLD_SHA256, f"the knowledge base of seed 42 changed; new pin: {digest}"


@pytest.fixture(scope="module")
def small():
    return build_datasets(**SMALL)


def test_small_world_files_are_byte_identical(small, tmp_path):
    folder = small.save(tmp_path / "world")
    manifest = json.loads((folder / "manifest.json").read_text())["files"]
    new_pins = json.dumps(manifest, indent=4)
    assert manifest == SMALL_WORLD_FILES, f"the saved world changed; new pins:\n{new_pins}"


def test_draws_are_identical(small):
    """Candidates, flaws, verdicts, rankings, comparisons and demonstrations on the small world's prompts."""
    data = small
    rng = random.Random("digest-draws")
    records = []
    for p in data.prompts["rm"][:20] + data.prompts["ppo"][:10]:
        cands = candidates(p, rng.randint(4, 9), rng, data.world)
        texts = [t for _, t in cands]
        good = solve(p, rng, data.world)
        records.append({
            "candidates": cands,
            "verdicts": [asdict(check(p, t, data.world)) for t in texts],
            "ranking": _ranking_fields(data.panel.rank(p, texts, rng, world=data.world)),
            "compare": data.panel.compare(p, texts[0], texts[-1], rng, world=data.world),
            "demo": data.panel.assign(p.id).write_demonstration(p, rng, data.world),
            "flawed": [perturb(p, good, f, rng, data.world) for f in FLAWS],
        })
    digest = _sha256(records)
    assert digest == DRAWS_SHA256, f"draws changed; new pin: {digest}"


def test_every_task_type_makes_solves_and_grades_the_same():
    world = World.generate(3)
    records = []
    for name in TASKS:
        rng = random.Random(f"digest-task:{name}")
        for _ in range(8):
            text, use_case, meta = make_prompt(world, rng, task_name=name)
            answer = solve(meta, rng, world)
            records.append([text, use_case, meta, answer, asdict(check(meta, answer, world))])
    digest = _sha256(records)
    assert digest == TASKS_SHA256, f"task types changed; new pin: {digest}"
