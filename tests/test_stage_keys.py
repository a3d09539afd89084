"""Stage keys cover every option of a stage's resolved config and what its input files hold, and
nothing that cannot change its output."""

import dataclasses
import json

import pytest

from instructgpt.stage_keys import RUNTIME_OPTIONS, InputHasher, StageKeys


def _perturbed(value, tmp_path):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 0.25
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return [*value, "x"]
    if value is None:
        return 1
    raise TypeError(type(value))


def _configs():
    from instructgpt.ppo import PPOConfig
    from instructgpt.pretrain import PretrainConfig
    from instructgpt.rm import RMConfig
    from instructgpt.sample import SampleConfig
    from instructgpt.sft import SFTConfig
    return [SFTConfig(model="m", train="t"), RMConfig(model="m", train="t"), PretrainConfig(corpus="c", tokenizer="t"),
            PPOConfig(policy="p", prompts="q", reward_model="r"), SampleConfig(policy="p", prompts="q", out="-")]


@pytest.mark.parametrize("config", _configs(), ids=lambda c: type(c).__name__)
def test_every_option_is_in_the_key_except_runtime_ones(tmp_path, config):
    keys = StageKeys(tmp_path)
    base = keys.key("s", config)
    assert keys.key("s", config) == base  # deterministic
    moved, unchanged = [], []
    for f in dataclasses.fields(config):
        other = dataclasses.replace(config, **{f.name: _perturbed(getattr(config, f.name), tmp_path)})
        (unchanged if keys.key("s", other) == base else moved).append(f.name)
    assert set(unchanged) == RUNTIME_OPTIONS & {f.name for f in dataclasses.fields(config)}, unchanged
    assert {"lr", "seed"} & set(moved) or {"temperature", "seed"} <= set(moved)
    assert "device" in unchanged  # where it runs is never in a key; nor are progress bars (where they exist)
    assert "progress" in unchanged or not hasattr(config, "progress")


def test_an_external_file_is_keyed_by_content_not_by_name(tmp_path):
    a = tmp_path / "one" / "corpus.txt"
    a.parent.mkdir()
    a.write_text("some text\n\nmore text\n")
    b = tmp_path / "two" / "renamed.txt"
    b.parent.mkdir()
    b.write_text(a.read_text())
    run = tmp_path / "run"
    keys = StageKeys(run, InputHasher(run / ".cache/h.json"))
    ka, kb = keys.key("ppo", {"pretrain_data": str(a)}), keys.key("ppo", {"pretrain_data": str(b)})
    assert ka == kb  # same bytes at another path
    b.write_text("some text\n\nmore text!\n")
    assert keys.key("ppo", {"pretrain_data": str(b)}) != ka
    # a folder (a checkpoint): every file's name and content
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    k1 = keys.key("sft", {"model": str(folder)})
    (folder / "model.safetensors").write_bytes(b"\0" * 63 + b"\1")
    assert keys.key("sft", {"model": str(folder)}) != k1


def test_content_hashes_are_cached_by_size_and_mtime(tmp_path):
    f = tmp_path / "big.bin"
    f.write_bytes(b"abc" * 1000)
    cache = tmp_path / "cache.json"
    first = InputHasher(cache).digest(f)
    stored = json.loads(cache.read_text())
    assert stored[str(f.resolve())][2] == first
    stored[str(f.resolve())][2] = "cafe"  # a second hasher trusts the cache while size and mtime match
    cache.write_text(json.dumps(stored))
    assert InputHasher(cache).digest(f) == "cafe"
    f.write_bytes(b"abd" * 1000)
    assert InputHasher(cache).digest(f) not in ("cafe", first)


def test_huge_files_are_keyed_by_size_mtime_and_path_with_a_note(tmp_path):
    f = tmp_path / "weights.gguf"
    f.write_bytes(b"x" * 100)
    hasher = InputHasher(huge=50)
    d = hasher.digest(f)
    assert d.startswith("size=100;") and str(f.resolve()) in d
    assert hasher.notes and "not its content" in hasher.notes[0] and "weights.gguf" in hasher.notes[0]


def test_paths_written_by_a_stage_stand_for_that_stages_key(tmp_path):
    run = tmp_path / "run"
    keys = StageKeys(run)
    keys.wrote("world", "k-world-1", [run / "world", run / "data"])
    sft = {"train": str(run / "data/sft_train.jsonl"), "model": str(run / "models/base")}
    keys.wrote("base", "k-base-1", [run / "models/base"])
    k1 = keys.key("sft", sft)
    described = keys.describe(sft)
    assert described == {"train": "world@k-world-1:sft_train.jsonl", "model": "base@k-base-1:."}
    keys.wrote("base", "k-base-2", [run / "models/base"])  # the base was trained again, differently
    assert keys.key("sft", sft) != k1
    # a moved run folder gives the same keys (no absolute path is hashed)
    moved = StageKeys(tmp_path / "elsewhere")
    moved.wrote("world", "k-world-1", [tmp_path / "elsewhere/world", tmp_path / "elsewhere/data"])
    moved.wrote("base", "k-base-2", [tmp_path / "elsewhere/models/base"])
    assert moved.key("sft", {k: v.replace(str(run), str(tmp_path / "elsewhere")) for k, v in sft.items()}) == \
        keys.key("sft", sft)


def test_a_stages_own_outputs_and_reads(tmp_path):
    run = tmp_path / "run"
    keys = StageKeys(run)
    merged = run / "models/round1/rm_train_all.jsonl"
    config = {"train": str(merged)}
    k1 = keys.key("rm_r1", config, own=[merged])
    merged.parent.mkdir(parents=True)
    merged.write_text("written by the stage itself\n")  # its own output, not an input: same key
    assert keys.key("rm_r1", config, own=[merged]) == k1
    keys.wrote("rankings_r1", "a", [run / "data/rankings_r1"])
    with_reads = keys.key("rm_r1", config, reads=["rankings_r1"], own=[merged])
    keys.wrote("rankings_r1", "b", [run / "data/rankings_r1"])
    assert keys.key("rm_r1", config, reads=["rankings_r1"], own=[merged]) != with_reads


def test_a_model_alias_is_keyed_by_its_files_content(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 32)
    keys = StageKeys(tmp_path / "run", aliases={"smollm2": gguf})
    k1 = keys.key("sft", {"model": "smollm2"})
    assert keys.describe({"model": "smollm2"})["model"].startswith("smollm2=sha256:")
    gguf.write_bytes(b"GGUF" + b"\1" * 32)
    assert keys.key("sft", {"model": "smollm2"}) != k1


def test_the_code_digest_follows_the_packages_files_not_its_bytecode(tmp_path, monkeypatch):
    import instructgpt
    from instructgpt import stage_keys
    package = tmp_path / "instructgpt"
    (package / "templates").mkdir(parents=True)
    (package / "__init__.py").write_text("__version__ = '1'\n")
    (package / "templates" / "page.html").write_text("<p>hi</p>\n")
    monkeypatch.setattr(instructgpt, "__file__", str(package / "__init__.py"))

    def digest():
        stage_keys.code_digest.cache_clear()
        return stage_keys.code_digest()

    try:
        first = digest()
        (package / "__pycache__").mkdir()
        (package / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0\1")
        assert digest() == first
        (package / "templates" / "page.html").write_text("<p>hello</p>\n")
        assert digest() != first
        (package / "templates" / "page.html").write_text("<p>hi</p>\n")
        assert digest() == first
        (package / "templates" / "page.html").rename(package / "templates" / "other.html")
        assert digest() != first  # the path counts, not only the bytes
    finally:
        monkeypatch.undo()
        stage_keys.code_digest.cache_clear()


def test_a_new_release_changes_every_key(tmp_path, monkeypatch):
    import instructgpt
    keys = StageKeys(tmp_path)
    before = keys.key("sft", {"lr": 1e-3})
    monkeypatch.setattr(instructgpt, "__version__", "99.0")
    assert keys.key("sft", {"lr": 1e-3}) != before
