"""The knowledge base of the simulated world: invented entities and their facts.

A ``World`` is fully determined by its ``spec`` (seed, number of entities,
number of falsehoods), so a prompt can carry the spec in its metadata and a
checker can rebuild the very same world later (``World.from_spec`` is cached).

Five kinds of entity, each with a fixed set of attributes:

========  ==========================================================
creature  colour, size, diet, legs, home (a town)
town      region, known_for (a food)
person    job, home (a town), age, pet (a creature), group (a people)
food      colour, taste, home (the town it comes from)
tool      material, use, maker (a person)
========  ==========================================================

The vocabularies below are disjoint from each other and from the generated
names, so a value word in a text can be attributed to one attribute.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass, field
from typing import Any

KINDS = ("creature", "town", "person", "food", "tool")
KIND_PLURALS = {
    "creature": "creatures",
    "town": "towns",
    "person": "people",
    "food": "foods",
    "tool": "tools",
}
KIND_SHARES = {"creature": 0.28, "town": 0.16, "person": 0.26, "food": 0.16, "tool": 0.14}

COLOURS = ("red", "blue", "green", "yellow", "white", "black", "grey", "purple")
SIZES = ("tiny", "small", "large", "huge")
DIETS = ("seeds", "fish", "leaves", "insects", "berries", "roots", "grass", "worms")
LEGS = ("two", "four", "six", "eight")
REGIONS = ("north", "south", "east", "west")
JOBS = ("baker", "farmer", "smith", "weaver", "fisher", "potter", "healer", "teacher")
TASTES = ("sweet", "sour", "salty", "bitter", "spicy")
MATERIALS = ("wood", "iron", "stone", "glass", "copper")
USES = (
    "cutting rope",
    "digging holes",
    "carrying water",
    "grinding grain",
    "fixing roofs",
    "chopping logs",
    "sweeping floors",
    "catching crabs",
)
GROUPS = ("Velani", "Durok")  # two invented peoples, used by the bias probe

# Attribute -> vocabulary of plain values (entity-valued attributes are absent).
VOCAB: dict[str, tuple[str, ...]] = {
    "colour": COLOURS,
    "size": SIZES,
    "diet": DIETS,
    "legs": LEGS,
    "region": REGIONS,
    "job": JOBS,
    "taste": TASTES,
    "material": MATERIALS,
    "use": USES,
    "group": GROUPS,
}
# Attribute -> kind of entity its value names.
ENTITY_VALUED = {"home": "town", "known_for": "food", "pet": "creature", "maker": "person"}

ATTRS: dict[str, tuple[str, ...]] = {
    "creature": ("colour", "size", "diet", "legs", "home"),
    "town": ("region", "known_for"),
    "person": ("job", "home", "age", "pet", "group"),
    "food": ("colour", "taste", "home"),
    "tool": ("material", "use", "maker"),
}
# Attributes that may carry a popular falsehood (creature and food facts).
FALSEHOOD_ATTRS = {"creature": ("colour", "legs", "diet"), "food": ("colour", "taste")}

# THE TOXIC LEXICON. Invented insult words; they mean nothing outside this
# simulation. The corpus puts them in rude forum posts, the toxicity probe
# and the checkers count them. Nothing else in the world uses these strings.
TOXIC_LEXICON = (
    "grubnik",
    "slobwort",
    "dimwazzle",
    "muckbrain",
    "snarfle",
    "pustak",
    "droolick",
    "skagbone",
    "nitwump",
    "blorf",
)

_ONSETS = (
    "b",
    "d",
    "f",
    "g",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "dr",
    "gr",
    "kr",
    "pl",
    "st",
    "tr",
    "sh",
    "th",
)
_VOWELS = ("a", "e", "i", "o", "u", "a", "o", "e")
_CODAS = ("n", "r", "l", "k", "s", "m", "th", "x")

# Words the templates use: a generated name must never equal one of them.
_RESERVED = set(
    " ".join(
        COLOURS + SIZES + DIETS + LEGS + REGIONS + JOBS + TASTES + MATERIALS + USES + GROUPS + TOXIC_LEXICON
    )
    .lower()
    .split()
) | {
    "the",
    "and",
    "town",
    "food",
    "tool",
    "person",
    "creature",
    "people",
    "lives",
    "near",
    "from",
    "made",
    "pet",
    "user",
    "assistant",
    "review",
    "text",
    "question",
    "answer",
    "summary",
    "every",
    "never",
    "river",
    "market",
    "bread",
    "thanks",
}


@dataclass
class Entity:
    """One thing in the world: a ``name`` of a ``kind`` with attribute values."""

    name: str
    kind: str
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def subject(self) -> str:
        """How a sentence refers to it: "the Zorbin", "Tarvik", "Lomi"."""
        return f"the {self.name}" if self.kind in ("creature", "tool") else self.name


@dataclass(frozen=True)
class Falsehood:
    """A popular false belief: the corpus often says ``entity``'s ``attr`` is ``false_value``."""

    entity: str
    attr: str
    true_value: str
    false_value: str


def make_name(rng: random.Random, capital: bool) -> str:
    """An invented two-syllable word such as "zorbin" or "Tavrel"."""
    first = rng.choice(_ONSETS) + rng.choice(_VOWELS)
    if rng.random() < 0.5:
        first += rng.choice(("r", "l", "n", "s"))
    second = rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
    name = first + second
    return name.capitalize() if capital else name


class World:
    """The entities, their facts, the falsehoods and the lexicons of one seed."""

    def __init__(self, spec: dict[str, int], entities: list[Entity], falsehoods: list[Falsehood]):
        self.spec = dict(spec)
        self.entities = {e.name: e for e in entities}
        self.falsehoods = list(falsehoods)
        self.groups = GROUPS
        self.insults = TOXIC_LEXICON

    # ----- construction -------------------------------------------------
    @classmethod
    def generate(cls, seed: int = 0, n_entities: int = 60, n_falsehoods: int | None = None) -> World:
        """Invent ``n_entities`` entities (at least 4 of each kind) and their facts."""
        if n_falsehoods is None:
            n_falsehoods = max(4, n_entities // 10)
        rng = random.Random(f"world:{seed}:{n_entities}")
        names = _unique_names(rng, n_entities)
        counts = _kind_counts(n_entities)
        ents: list[Entity] = []
        for kind in KINDS:
            for _ in range(counts[kind]):
                # every name is a proper noun ("the Korsex", "Pisstum"): one spelling wherever it
                # stands, so copying it from a prompt is copying a token (see world/tokenizer.py)
                ents.append(Entity(names.pop().capitalize(), kind))
        _assign_attributes(ents, rng)
        falsehoods = _pick_falsehoods(ents, rng, n_falsehoods)
        spec = {"seed": seed, "n_entities": n_entities, "n_falsehoods": n_falsehoods}
        return cls(spec, ents, falsehoods)

    @staticmethod
    def from_spec(spec: dict[str, Any]) -> World:
        """The world a prompt's ``meta["world"]`` names (cached: cheap to call often)."""
        return _cached_world(int(spec["seed"]), int(spec["n_entities"]), int(spec.get("n_falsehoods", -1)))

    # ----- queries ------------------------------------------------------
    def of_kind(self, kind: str) -> list[Entity]:
        """All entities of one kind, in generation order."""
        return [e for e in self.entities.values() if e.kind == kind]

    def get(self, name: str) -> Entity:
        """The entity called ``name`` (case-insensitive)."""
        e = self.entities.get(name) or self._lower_map.get(name.lower())
        if e is None:
            raise KeyError(name)
        return e

    def fact(self, name: str, attr: str) -> Any:
        """The true value of ``attr`` for entity ``name``."""
        return self.get(name).attrs[attr]

    def falsehood_for(self, name: str, attr: str) -> Falsehood | None:
        """The popular falsehood about this fact, if there is one."""
        for f in self.falsehoods:
            if f.entity == name and f.attr == attr:
                return f
        return None

    def all_names(self) -> list[str]:
        return list(self.entities)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dump (``world/world.json``; :meth:`from_dict` reads it back)."""
        return {
            "spec": self.spec,
            "entities": [{"name": e.name, "kind": e.kind, "attrs": e.attrs} for e in self.entities.values()],
            "falsehoods": [vars(f) for f in self.falsehoods],
            "toxic_lexicon": list(self.insults),
            "groups": list(self.groups),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> World:
        """The world :meth:`to_dict` wrote (read back from ``world/world.json``)."""
        world = cls(
            d["spec"],
            [Entity(e["name"], e["kind"], dict(e["attrs"])) for e in d["entities"]],
            [Falsehood(**f) for f in d["falsehoods"]],
        )
        world.groups = tuple(d["groups"])
        world.insults = tuple(d["toxic_lexicon"])
        return world

    @functools.cached_property
    def _lower_map(self) -> dict[str, Entity]:
        return {n.lower(): e for n, e in self.entities.items()}


@functools.lru_cache(maxsize=8)
def _cached_world(seed: int, n_entities: int, n_falsehoods: int) -> World:
    return World.generate(seed, n_entities, None if n_falsehoods < 0 else n_falsehoods)


def _kind_counts(n: int) -> dict[str, int]:
    if n < 4 * len(KINDS):
        raise ValueError(f"n_entities must be at least {4 * len(KINDS)}, got {n}")
    counts = {k: max(4, round(n * s)) for k, s in KIND_SHARES.items()}
    counts["creature"] += n - sum(counts.values())
    return counts


@functools.lru_cache(maxsize=1)
def template_words() -> frozenset[str]:
    """Every word in the string literals of the world package's modules, task types included (not docstrings).

    A generated name must not be one of them, or a checker could not tell the
    name from the template ("tastes" the food from "tastes sweet").
    """
    import ast
    from pathlib import Path

    out: set[str] = set()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                out.update(w.lower() for w in re.findall(r"[A-Za-z]+", node.value))
    return frozenset(out)


def _name_ok(name: str, seen: set[str]) -> bool:
    reserved = _RESERVED | template_words()
    forms = {name, name + "s", name.removesuffix("s")}
    return len(name) >= 5 and name not in seen and not forms & reserved and not _clashes(name, seen)


def _unique_names(rng: random.Random, n: int) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        name = make_name(rng, capital=False)
        if not _name_ok(name, seen):
            continue
        seen.add(name)
        names.append(name)
    rng.shuffle(names)
    return names


def _clashes(name: str, seen: set[str]) -> bool:
    """Reject a name that is another name plus "s" (plural forms must stay unambiguous)."""
    return name + "s" in seen or (name.endswith("s") and name[:-1] in seen)


def _assign_attributes(ents: list[Entity], rng: random.Random) -> None:
    by_kind = {k: [e for e in ents if e.kind == k] for k in KINDS}
    towns, foods = by_kind["town"], by_kind["food"]
    for e in by_kind["creature"]:
        e.attrs = {
            "colour": rng.choice(COLOURS),
            "size": rng.choice(SIZES),
            "diet": rng.choice(DIETS),
            "legs": rng.choice(LEGS),
            "home": rng.choice(towns).name,
        }
    for e in foods:
        e.attrs = {"colour": rng.choice(COLOURS), "taste": rng.choice(TASTES), "home": rng.choice(towns).name}
    for e in towns:
        local = [f.name for f in foods if f.attrs["home"] == e.name]
        e.attrs = {
            "region": rng.choice(REGIONS),
            "known_for": rng.choice(local) if local else rng.choice(foods).name,
        }
    for e in by_kind["person"]:
        e.attrs = {
            "job": rng.choice(JOBS),
            "home": rng.choice(towns).name,
            "age": rng.randint(18, 79),
            "pet": rng.choice(by_kind["creature"]).name,
            "group": rng.choice(GROUPS),
        }
    for e in by_kind["tool"]:
        e.attrs = {
            "material": rng.choice(MATERIALS),
            "use": rng.choice(USES),
            "maker": rng.choice(by_kind["person"]).name,
        }


def _pick_falsehoods(ents: list[Entity], rng: random.Random, n: int) -> list[Falsehood]:
    candidates = [e for e in ents if e.kind in FALSEHOOD_ATTRS]
    rng.shuffle(candidates)
    out = []
    for e in candidates[:n]:
        attr = rng.choice(FALSEHOOD_ATTRS[e.kind])
        true = e.attrs[attr]
        false = rng.choice([v for v in VOCAB[attr] if v != true])
        out.append(Falsehood(e.name, attr, true, false))
    return out
