import collections
import json
import random
import shutil
from dataclasses import replace

import pytest

from instructgpt.config import describe, load
from instructgpt.data import load_demonstrations, load_prompts
from instructgpt.world import (WorldConfig, WorldFileError, build_datasets, candidate_responses, check,
                               load_world)


def test_default_world_data(tmp_path):
    data = build_datasets(corpus_docs=1500, heldout_docs=100)
    sizes = data.summary()
    assert (sizes["sft_prompts"], sizes["rm_prompts"], sizes["ppo_prompts"]) == (260, 660, 620)
    assert sizes["sft_demos"] == 260 and sizes["flan"] == 260 and sizes["corpus_docs"] == 1500
    ids = [p.id for ps in data.prompts.values() for p in ps]
    assert len(ids) == len(set(ids))
    users = {name: {p.user_id for p in ps} for name, ps in data.prompts.items()}
    assert users["sft"].isdisjoint(users["rm"])
    assert max(collections.Counter(p.user_id for p in data.prompts["rm"]).values()) > 200  # cap has work
    out = data.save(tmp_path / "world")
    prompts = load_prompts(out / "prompts_sft.jsonl")
    demos = load_demonstrations(out / "sft_demos.jsonl", prompts)
    by_id = {p.id: p for p in prompts}
    assert all(check(by_id[d.prompt_id], d.response).passed for d in demos)
    assert len(data.tokenizer_texts()) > 1500


def test_same_seed_same_data_other_seed_other_data():
    a = build_datasets(seed=5, scale=0.002, corpus_docs=50, heldout_docs=10)
    b = build_datasets(seed=5, scale=0.002, corpus_docs=50, heldout_docs=10)
    c = build_datasets(seed=6, scale=0.002, corpus_docs=50, heldout_docs=10)
    assert [p.text for p in a.prompts["rm"]] == [p.text for p in b.prompts["rm"]]
    assert a.corpus == b.corpus and a.sft_demos == b.sft_demos
    assert a.corpus != c.corpus and [p.text for p in a.prompts["rm"]] != [p.text for p in c.prompts["rm"]]


def test_world_config_loads_and_describes(tmp_path):
    cfg_file = tmp_path / "w.toml"
    cfg_file.write_text("[world]\nseed = 3\nscale = 0.01\n")
    cfg = load(WorldConfig, cfg_file, ["n_entities=80"], section="world")
    assert (cfg.seed, cfg.scale, cfg.n_entities) == (3, 0.01, 80)
    assert cfg.set_sizes() == {"sft": 130, "rm": 330, "ppo": 310}
    assert "labeler_noise" in describe(WorldConfig)


# ----- the saved world, read back ---------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    data = build_datasets(seed=4, scale=0.003, corpus_docs=200, heldout_docs=40, n_toxicity_starts=3,
                          n_bias=6, n_cloze=10)
    folder = data.save(tmp_path_factory.mktemp("w") / "world")
    return data, folder


def _no_generation(monkeypatch):
    """Make every way of generating a world (or its parts) fail loudly."""
    from instructgpt.world import datasets, kb

    def refuse(*args, **kwargs):
        raise AssertionError("the world was regenerated")

    monkeypatch.setattr(kb.World, "generate", classmethod(refuse))
    monkeypatch.setattr(kb, "_cached_world", refuse)
    for name in ("generate_prompts", "build_corpus", "heldout_corpus", "build_flan", "build_probes"):
        monkeypatch.setattr(datasets, name, refuse)


def test_loaded_world_judges_and_ranks_like_the_generated_one(saved, monkeypatch):
    data, folder = saved
    _no_generation(monkeypatch)
    loaded = load_world(folder)  # reads files only: any regeneration would raise
    assert loaded.config == data.config
    assert loaded.world.to_dict() == data.world.to_dict() and loaded.world.spec == data.world.spec
    assert loaded.panel.to_dict() == data.panel.to_dict()
    assert loaded.probes == data.probes
    assert loaded.corpus == data.corpus and loaded.heldout_corpus == data.heldout_corpus
    strip = lambda xs: [replace(x, source="") for x in xs]
    assert {k: strip(v) for k, v in loaded.prompts.items()} == {k: strip(v) for k, v in data.prompts.items()}
    assert strip(loaded.sft_demos) == strip(data.sft_demos)
    assert strip(loaded.flan) == strip(data.flan) and strip(loaded.t0) == strip(data.t0)
    # the same verdicts, rankings, comparisons, Likert scores and flags, draw for draw
    for p in data.prompts["rm"][:25]:
        rng_a, rng_b = random.Random(p.id), random.Random(p.id)
        cand = candidate_responses(p, 5, rng_a, data.world)
        assert candidate_responses(p, 5, rng_b, loaded.world) == cand
        assert [check(p, r, loaded.world) for r in cand] == [check(p, r, data.world) for r in cand]
        ra = data.panel.rank(p, cand, rng_a, world=data.world)
        rb = loaded.panel.rank(p, cand, rng_b, world=loaded.world)
        assert ra == rb
        assert (data.panel.compare(p, cand[0], cand[1], rng_a, world=data.world)
                == loaded.panel.compare(p, cand[0], cand[1], rng_b, world=loaded.world))
    assert [x.id for x in loaded.panel.labelers] == [x.id for x in data.panel.labelers]


def test_edited_or_missing_world_files_are_errors(saved, tmp_path):
    _, folder = saved
    copy = tmp_path / "world"
    shutil.copytree(folder, copy)
    panel = json.loads((copy / "panel.json").read_text())
    panel["training"][0]["noise"] = 0.0  # a labeler made perfectly consistent
    (copy / "panel.json").write_text(json.dumps(panel))
    with pytest.raises(WorldFileError, match=r"panel\.json: changed since the world was saved"):
        load_world(copy)
    shutil.copy(folder / "panel.json", copy / "panel.json")
    load_world(copy)  # restored: fine again
    (copy / "probes.json").unlink()
    with pytest.raises(WorldFileError, match=r"probes\.json: missing"):
        load_world(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(WorldFileError, match=r"manifest\.json: missing: .* no complete saved world"):
        load_world(copy)
    with pytest.raises(WorldFileError, match="stage.json"):  # says how to get the world back
        load_world(tmp_path / "nowhere")


def test_sft_prompts_is_not_tied_to_scale():
    from instructgpt.world.datasets import WorldConfig
    assert WorldConfig(scale=0.01).set_sizes() == {"sft": 130, "rm": 330, "ppo": 310}
    assert WorldConfig(scale=0.01, sft_prompts=2000).set_sizes() == {"sft": 2000, "rm": 330, "ppo": 310}
    import pytest

    from instructgpt.config import ConfigError
    with pytest.raises(ConfigError, match="sft_prompts"):
        WorldConfig(sft_prompts=-1).validate()


def test_world_options_out_of_their_range_are_an_error_naming_them():
    """A negative labeler noise drew noise as its absolute value, flan_examples=-3 made no FLAN data and
    heavy_users=-4 meant 'automatic': every one was accepted."""
    import re

    import pytest

    from instructgpt.config import ConfigError
    from instructgpt.world.datasets import WorldConfig
    for option, named in [(dict(labeler_noise=-1.0), "labeler_noise: must be >= 0"),
                          (dict(heldout_labeler_noise=-0.5), "heldout_labeler_noise: must be >= 0"),
                          (dict(corpus_docs=0), "corpus_docs: must be >= 1"),
                          (dict(heldout_docs=-1), "heldout_docs: must be >= 0"),
                          (dict(flan_examples=-3), "flan_examples: must be >= 0"),
                          (dict(n_cloze=-2), "n_cloze: must be >= 0"),
                          (dict(n_falsehoods=-7), "n_falsehoods: must be >= 0, or -1 (automatic)"),
                          (dict(heavy_users=-4), "heavy_users: must be >= 0, or -1 (automatic)")]:
        with pytest.raises(ConfigError, match=re.escape(named)):
            WorldConfig(**option).validate()
    WorldConfig(n_falsehoods=-1, heavy_users=-1, heldout_docs=0, n_bias=0).validate()  # the edges
