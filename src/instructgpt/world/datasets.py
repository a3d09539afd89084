"""Everything the pipeline needs from the simulated world, in one call.

``build_datasets(seed, scale)`` returns a ``WorldData`` with the prompt sets in
the paper's proportions (SFT 13k : RM 33k : PPO 31k prompts, times ``scale``),
SFT demonstrations written by training labelers, the pretraining corpus and
its held-out part, the FLAN and T0 baselines, the probes and the labeler
panel. Rankings are not built here: they need model samples (sample K
responses, then ``data.panel.rank(prompt, responses, rng)``).

A world is generated once (the world stage of ``instructgpt run``), written
with :meth:`WorldData.save` and read back by every later stage with
:func:`load_world`; nothing regenerates it. The folder holds plain files::

    config.json          the WorldConfig it was generated with
    world.json           knowledge base: entities, facts, falsehoods, lexicons
    panel.json           every simulated labeler's parameters (weights, noise ...)
    prompts_{sft,rm,ppo}.jsonl   prompts; ``meta`` holds what the checkers need
                         (task type, topic, constraints ...)
    sft_demos.jsonl, flan.jsonl, t0.jsonl    demonstrations
    corpus_train.jsonl, corpus_heldout.jsonl pretraining corpus and its held-out part
    probes.json          truthfulness, toxicity, bias and cloze probe items
    manifest.json        sha256 of each file above (written last)

:func:`load_world` checks every file against the manifest, so a missing or
edited file is an error naming it, never a silently different world.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..config import ConfigError, from_dict, opt
from ..data import DataError, Demonstration, Prompt, load_demonstrations, load_prompts, read_jsonl, write_jsonl
from .corpus import build_corpus, heldout_corpus
from .flan import build_flan
from .kb import World
from .labelers import HELDOUT_NOISE, TRAIN_NOISE, Panel
from .probes import Probes, build_probes
from .tasks import generate_prompts

PAPER_PROMPTS = {"sft": 13_000, "rm": 33_000, "ppo": 31_000}
MANIFEST = "manifest.json"
#: Every file of a saved world (besides the manifest), in the order they are written.
WORLD_FILES = (
    "config.json", "world.json", "panel.json",
    *(f"prompts_{name}.jsonl" for name in PAPER_PROMPTS),
    "sft_demos.jsonl", "flan.jsonl", "t0.jsonl", "corpus_train.jsonl", "corpus_heldout.jsonl", "probes.json",
)


class WorldFileError(DataError):
    """A saved world that cannot be read back as it was written; the message names the file."""


@dataclass
class WorldConfig:
    """Settings of the built-in simulated world."""

    seed: int = opt(0, "seed of everything in the world (same seed, same data)")
    scale: float = opt(0.02, "fraction of the paper's prompt counts (SFT 13k, RM 33k, PPO 31k)")
    sft_prompts: int = opt(0, "SFT prompts, one demonstration each (0: scale's share of the paper's 13k); "
                              "demonstrations cost nothing to generate, so a run can give SFT many more than scale")
    n_entities: int = opt(60, "entities in the knowledge base (creatures, towns, people, foods, tools)")
    n_falsehoods: int = opt(-1, "popular falsehoods the corpus repeats (-1: n_entities // 10, at least 4)")
    n_labelers: int = opt(40, "training labelers in the simulated panel")
    n_heldout_labelers: int = opt(10, "held-out labelers (evaluation only)")
    labeler_noise: float = opt(TRAIN_NOISE, "per-judgement noise of training labelers (sets their agreement)")
    heldout_labeler_noise: float = opt(HELDOUT_NOISE, "per-judgement noise of held-out labelers")
    corpus_docs: int = opt(16_000, "documents in the pretraining corpus (about 40 tokens each)")
    heldout_docs: int = opt(800, "documents in the held-out corpus (perplexity)")
    flan_examples: int = opt(0, "FLAN-style and T0-style demonstrations each (0: as many as SFT prompts)")
    near_dup_rate: float = opt(
        0.05, "share of prompts that copy an earlier prompt of the same user with a new tail"
    )
    pii_rate: float = opt(0.03, "share of prompts carrying an invented e-mail address or phone number")
    heavy_users: int = opt(-1, "users with more than 200 prompts per set (-1: automatic, by set size)")
    n_toxicity_starts: int = opt(40, "sentence starts of the toxicity probe (each under 3 instructions)")
    n_bias: int = opt(60, "items of the bias probe")
    n_cloze: int = opt(200, "items of the cloze (alignment tax) probe")

    def validate(self) -> None:
        if self.scale <= 0:
            raise ConfigError(f"scale: must be positive, got {self.scale}")
        if self.sft_prompts < 0:
            raise ConfigError(f"sft_prompts: must be >= 0, got {self.sft_prompts}")
        if self.n_entities < 20:
            raise ConfigError(f"n_entities: must be at least 20, got {self.n_entities}")
        if self.n_labelers < 2 or self.n_heldout_labelers < 2:
            raise ConfigError(f"n_labelers, n_heldout_labelers: need at least 2 each, got {self.n_labelers}, "
                              f"{self.n_heldout_labelers}")
        for name in ("near_dup_rate", "pii_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name}: must be in [0, 1], got {getattr(self, name)}")
        if self.corpus_docs < 1:
            raise ConfigError(f"corpus_docs: must be >= 1, got {self.corpus_docs}")
        for name in ("labeler_noise", "heldout_labeler_noise", "heldout_docs", "flan_examples", "n_toxicity_starts",
                     "n_bias", "n_cloze"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")
        for name in ("n_falsehoods", "heavy_users"):
            if getattr(self, name) < -1:
                raise ConfigError(f"{name}: must be >= 0, or -1 (automatic), got {getattr(self, name)}")

    def set_sizes(self) -> dict[str, int]:
        """Prompts per set: the paper's counts times ``scale`` (at least 8 each); SFT: ``sft_prompts`` if set."""
        sizes = {k: max(8, round(v * self.scale)) for k, v in PAPER_PROMPTS.items()}
        if self.sft_prompts > 0:
            sizes["sft"] = self.sft_prompts
        return sizes


@dataclass
class WorldData:
    """The output of ``build_datasets`` (see the module docstring)."""

    config: WorldConfig
    world: World
    panel: Panel
    prompts: dict[str, list[Prompt]]
    sft_demos: list[Demonstration]
    corpus: list[str]
    heldout_corpus: list[str]
    flan: list[Demonstration]
    t0: list[Demonstration]
    probes: Probes

    def tokenizer_texts(self) -> list[str]:
        """Texts to train the tokenizer on: corpus, prompts, demonstrations, baselines."""
        texts = list(self.corpus)
        texts += [p.text for ps in self.prompts.values() for p in ps]
        texts += [d.response for d in self.sft_demos]
        texts += [d.prompt + d.response for d in self.flan + self.t0]
        return texts

    def summary(self) -> dict[str, int]:
        return {
            "sft_prompts": len(self.prompts["sft"]),
            "rm_prompts": len(self.prompts["rm"]),
            "ppo_prompts": len(self.prompts["ppo"]),
            "sft_demos": len(self.sft_demos),
            "corpus_docs": len(self.corpus),
            "heldout_docs": len(self.heldout_corpus),
            "flan": len(self.flan),
            "t0": len(self.t0),
            "truth_probes": len(self.probes.truth),
            "toxicity_probes": len(self.probes.toxicity),
            "bias_probes": len(self.probes.bias),
            "cloze_probes": len(self.probes.cloze),
        }

    def save(self, out_dir: str | Path) -> Path:
        """Write everything under ``out_dir`` (see the module docstring); :func:`load_world` reads it back."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / MANIFEST).unlink(missing_ok=True)  # a save cut short leaves no manifest: not a world
        _write_json(out / "config.json", asdict(self.config), indent=2)
        _write_json(out / "world.json", self.world.to_dict())
        _write_json(out / "panel.json", self.panel.to_dict())
        for name, ps in self.prompts.items():
            write_jsonl(out / f"prompts_{name}.jsonl", ps)
        write_jsonl(out / "sft_demos.jsonl", self.sft_demos)
        write_jsonl(out / "flan.jsonl", self.flan)
        write_jsonl(out / "t0.jsonl", self.t0)
        write_jsonl(out / "corpus_train.jsonl", [{"text": t} for t in self.corpus])
        write_jsonl(out / "corpus_heldout.jsonl", [{"text": t} for t in self.heldout_corpus])
        _write_json(out / "probes.json", self.probes.to_dict())
        _write_json(out / MANIFEST, {"files": {name: _sha256(out / name) for name in WORLD_FILES}}, indent=2)
        return out


def load_world(folder: str | Path) -> WorldData:
    """The world :meth:`WorldData.save` wrote to ``folder``, read back as it was (never regenerated).

    Raises :class:`WorldFileError` naming the file when the folder holds no
    saved world, or a file is missing or differs from what was saved.
    """
    folder = Path(folder)
    _verify(folder)
    config = from_dict(WorldConfig, _read_json(folder / "config.json"), where=str(folder / "config.json"))
    prompts = {name: load_prompts(folder / f"prompts_{name}.jsonl") for name in PAPER_PROMPTS}
    return WorldData(
        config=config,
        world=World.from_dict(_read_json(folder / "world.json")),
        panel=Panel.from_dict(_read_json(folder / "panel.json")),
        prompts=prompts,
        sft_demos=load_demonstrations(folder / "sft_demos.jsonl"),
        corpus=_texts(folder / "corpus_train.jsonl"),
        heldout_corpus=_texts(folder / "corpus_heldout.jsonl"),
        flan=load_demonstrations(folder / "flan.jsonl"),
        t0=load_demonstrations(folder / "t0.jsonl"),
        probes=Probes.from_dict(_read_json(folder / "probes.json")),
    )


_REBUILD = ("restore it, or delete {stage} and rerun 'instructgpt run' to write the world again "
            "(same seed, same world)")


def _verify(folder: Path) -> None:
    """Every file of WORLD_FILES present with the sha256 the manifest recorded."""
    manifest = folder / MANIFEST
    hint = _REBUILD.format(stage=folder / "stage.json")
    if not manifest.is_file():
        raise WorldFileError(f"{manifest}: missing: {folder} holds no complete saved world; {hint}")
    recorded = _read_json(manifest).get("files", {})
    for name in WORLD_FILES:
        path = folder / name
        if name not in recorded:
            raise WorldFileError(f"{manifest}: files: {name} is not listed; {hint}")
        if not path.is_file():
            raise WorldFileError(f"{path}: missing (the saved world needs it); {hint}")
        if _sha256(path) != recorded[name]:
            raise WorldFileError(f"{path}: changed since the world was saved (sha256 differs from "
                                 f"{MANIFEST}); {hint}")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_json(path: Path, obj, indent: int = 1) -> None:
    path.write_text(json.dumps(obj, indent=indent) + "\n")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise WorldFileError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None


def _texts(path: Path) -> list[str]:
    return [obj["text"] for _, obj in read_jsonl(path)]


def build_datasets(
    seed: int | None = None, scale: float | None = None, config: WorldConfig | None = None, **overrides
) -> WorldData:
    """Build the whole simulated world; ``seed``/``scale``/``overrides`` replace ``config`` fields."""
    cfg = config or WorldConfig()
    changes = dict(overrides)
    if seed is not None:
        changes["seed"] = seed
    if scale is not None:
        changes["scale"] = scale
    if changes:
        cfg = WorldConfig(**{**asdict(cfg), **changes})
    cfg.validate()
    world = World.generate(cfg.seed, cfg.n_entities, None if cfg.n_falsehoods < 0 else cfg.n_falsehoods)
    panel = Panel(
        cfg.seed, cfg.n_labelers, cfg.n_heldout_labelers, cfg.labeler_noise, cfg.heldout_labeler_noise
    )
    heavy = None if cfg.heavy_users < 0 else cfg.heavy_users
    prompts = {
        name: generate_prompts(
            world,
            n,
            cfg.seed,
            id_prefix=name,
            near_dup_rate=cfg.near_dup_rate,
            pii_rate=cfg.pii_rate,
            heavy_users=heavy,
            user_prefix=f"{name}-user",
        )
        for name, n in cfg.set_sizes().items()
    }
    corpus = build_corpus(world, cfg.corpus_docs, cfg.seed)
    n_flan = cfg.flan_examples or len(prompts["sft"])
    return WorldData(
        config=cfg,
        world=world,
        panel=panel,
        prompts=prompts,
        sft_demos=panel.write_demonstrations(prompts["sft"], cfg.seed, world),
        corpus=corpus,
        heldout_corpus=heldout_corpus(world, cfg.heldout_docs, cfg.seed, exclude=corpus),
        flan=build_flan(world, n_flan, cfg.seed, "flan"),
        t0=build_flan(world, n_flan, cfg.seed, "t0"),
        probes=build_probes(world, cfg.seed, cfg.n_toxicity_starts, cfg.n_bias, cfg.n_cloze),
    )
