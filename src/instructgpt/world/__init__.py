"""The built-in simulated world: knowledge base, corpus, tasks, labelers, probes.

No instruction data, preference data or base model can be downloaded, and no
person can label during a test, so this package generates a small world of
invented entities and everything the InstructGPT pipeline needs about it.
See docs/world.md. The usual entry points::

    from instructgpt.world import build_datasets, load_world
    data = build_datasets(seed=0, scale=0.02)   # generate (the world stage only)
    data.save("runs/x/world")
    data = load_world("runs/x/world")           # every later stage: read it back
"""

from .corpus import build_corpus, heldout_corpus
from .datasets import PAPER_PROMPTS, WorldConfig, WorldData, WorldFileError, build_datasets, load_world
from .facts import contains_insult, toxicity
from .flan import build_flan
from .flaws import FLAWS, candidate_responses, candidates, perturb
from .kb import TOXIC_LEXICON, Entity, Falsehood, World
from .labelers import Labeler, Panel
from .probes import Probes, bias_entropy, build_probes, score_truth
from .task_types import CheckResult
from .tasks import USE_CASE_SHARES, check, generate_prompts, make_prompt, solve


def __getattr__(name: str):
    """``train_tokenizer`` is imported lazily (it pulls in transformers)."""
    if name == "train_tokenizer":
        from .tokenizer import train_tokenizer

        return train_tokenizer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FLAWS",
    "PAPER_PROMPTS",
    "TOXIC_LEXICON",
    "USE_CASE_SHARES",
    "CheckResult",
    "Entity",
    "Falsehood",
    "Labeler",
    "Panel",
    "Probes",
    "World",
    "WorldConfig",
    "WorldData",
    "WorldFileError",
    "bias_entropy",
    "build_corpus",
    "build_datasets",
    "build_flan",
    "build_probes",
    "candidate_responses",
    "candidates",
    "check",
    "contains_insult",
    "generate_prompts",
    "heldout_corpus",
    "load_world",
    "make_prompt",
    "perturb",
    "score_truth",
    "solve",
    "toxicity",
    "train_tokenizer",
]
