import collections

from instructgpt.config import describe, load
from instructgpt.data import load_demonstrations, load_prompts
from instructgpt.world import WorldConfig, build_datasets, check


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
