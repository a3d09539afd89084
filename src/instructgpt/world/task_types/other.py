"""Other: small jobs on a list of names (sort them, count them)."""

from __future__ import annotations

import random

from .. import facts as F
from .. import phrases as P
from ..kb import World
from .base import Grade, task
from .constraints import number_word


@task("sort_names", "other", 0.5)
class SortNames:
    """Sort a few names alphabetically."""

    @staticmethod
    def make(world: World, rng: random.Random):
        names = [e.name for e in rng.sample(list(world.entities.values()), rng.randint(3, 4))]
        text = rng.choice(
            ("Sort these names in alphabetical order: {l}.", "Put these words in alphabetical order: {l}.")
        ).format(l=", ".join(names))
        return text, {"names": names, "n": len(names)}

    @staticmethod
    def solve(world: World, meta: dict, rng: random.Random) -> str:
        return P.format_list(
            sorted(meta["names"], key=str.lower), rng.choice(("comma", "comma", "numbered")), rng
        )

    @staticmethod
    def grade(world: World, meta: dict, response: str) -> Grade:
        found = [n for _, _, n in F.entity_mentions(world, response)]
        target = sorted(meta["names"], key=str.lower)
        extra = [n for n in found if n not in meta["names"]]
        if found == target:
            return Grade(1.0, True)
        same_set = sorted(found, key=str.lower) == target
        return Grade(
            0.4 if same_set else 0.0,
            False,
            bool(extra),
            False,
            ["wrong order" if same_set else "wrong names"],
        )


_COUNT_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8}


@task("count_items", "other", 0.5)
class CountItems:
    """How many names are in this list?"""

    @staticmethod
    def make(world: World, rng: random.Random):
        names = [e.name for e in rng.sample(list(world.entities.values()), rng.randint(2, 6))]
        text = rng.choice(
            ("How many names are in this list: {l}?", "Count the names in this list: {l}.")
        ).format(l=", ".join(names))
        return text, {"answer": len(names)}

    @staticmethod
    def solve(world: World, meta: dict, rng: random.Random) -> str:
        n = meta["answer"]
        return rng.choice(
            (
                f"There are {n} names.",
                f"{n}.",
                f"The list has {number_word(n)} names.",
                P.cap(number_word(n)) + ".",
            )
        )

    @staticmethod
    def grade(world: World, meta: dict, response: str) -> Grade:
        nums = [int(w) for w in F.words(response) if w.isdigit()]
        nums += [_COUNT_WORDS[w.lower()] for w in F.words(response) if w.lower() in _COUNT_WORDS]
        right = meta["answer"] in nums
        ok = right and set(nums) == {meta["answer"]}
        return Grade(1.0 if ok else (0.3 if right else 0.0), ok, False, False, [] if ok else ["wrong count"])
