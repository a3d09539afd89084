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
    "world.json": "6c5bdd021b3b595bc4a619239cd719504fc1ef1359356288a6c915cd4b2271b0",
    "panel.json": "51595ade862eace8e66cdff2aa92006acbc21bc5def0a32f2b517114493d5b20",
    "prompts_sft.jsonl": "6d67699d0ab5971eeea81c7c8bbf3665a91f7068be81bbe102a75359ee2b65b8",
    "prompts_rm.jsonl": "d5947a3d3c3c6cd644fe1f6a032a8343ecaa01b132cc9a86186a96db36e95e46",
    "prompts_ppo.jsonl": "affc940aeb1892eab168fe0958e2169d4c4970771c9ca24f766dc65288fdd0d7",
    "sft_demos.jsonl": "e9a96fad7e0d370d80fc2f1dfb52b0195dbaff7f153502b8cb89faf180ac0fb2",
    "flan.jsonl": "2ad7f1a1b2c8880b2bf402affb306bf26a7f1281303af1fb43a3d4e1f35c16e3",
    "t0.jsonl": "dec5626028de594219a4a9f7875427ea5926a8cc44e0ec7c34d892a52ae2824c",
    "corpus_train.jsonl": "933b4b05d61de22434066825778f46d1c465f9d308b05adfd9bf84cdb083ae66",
    "corpus_heldout.jsonl": "d3c75c2b44f2c4ce8d0082329f01f79ee324a3129d8488c98f5e07bef1700fe1",
    "probes.json": "c76949f392c856fa662f9eafd79de26a3310b6244e87067733418cc4a4e97c6a",
}
# sha256 of World.generate(42).to_dict(): a seed whose names depend on the words of the task-type
# templates (kb.template_words must read task_types/ too, or a name could be a template word)
SEED42_WORLD_SHA256 = "44396f6601b655f8a1c9312d03df2e0a7be7ad58d1a9b964ade8f711d8e5de2d"
# sha256 of the JSON records of test_draws_are_identical and
# test_every_task_type_makes_solves_and_grades_the_same
DRAWS_SHA256 = "d737c39bd433798fcda42b9f7a011a084611e7522a6403981ac0e992d6e86516"
TASKS_SHA256 = "ff8de4b5ff4482b864a1a54fbea50a829549bf2621f4401d85fd3e66b37399af"


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
