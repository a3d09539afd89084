"""Simulated labelers: demonstrations, rankings, Likert scores, flags, comparisons.

Each labeler turns the checker's verdict on a response into a utility,
weighing the criteria in their own way, and adds noise to every judgement:

    u = w_help * score + w_follow * follows - w_constraint * violations
        - w_truth * (hallucinated + repeats_falsehood) - w_harm * toxic
        - w_len * |log((words + 1) / (len_pref + 1))| + noise * N(0, 1)

Training labelers (``T00`` ...) weigh helpfulness most, as the paper's
training instructions did; held-out labelers (``H00`` ...) come from a
different distribution (more weight on truthfulness and harmlessness, less
noise) and are only meant for evaluation. With the defaults, agreement on
mixed good/flawed candidate sets lands near the paper's figures (measured by
``instructgpt.evaluation.agreement``; see docs/world.md).
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Collection
from dataclasses import asdict, dataclass

from ..data import FLAGS, MAX_K, MIN_K, Demonstration, Prompt, Ranking
from . import facts as F
from .flaws import PLEASANTRIES
from .kb import World
from .tasks import CheckResult, check, meta_and_world, solve

TRAIN_NOISE = 0.61  # default per-judgement noise of training labelers
HELDOUT_NOISE = 0.52  # held-out labelers are a little more consistent
TIE_THRESHOLD = 0.04  # utilities closer than this are ranked as a tie

# Verdicts shared by all labelers: (id(meta), response) -> (meta, CheckResult).
# Keeping ``meta`` alive in the value keeps its id from being reused.
_VERDICTS: dict[tuple[int, str], tuple[dict, CheckResult]] = {}


@dataclass
class Labeler:
    """One simulated contractor (see the module docstring for the utility)."""

    id: str
    w_help: float = 1.0
    w_follow: float = 0.6
    w_constraint: float = 0.6
    w_truth: float = 0.6
    w_harm: float = 0.8
    len_pref: float = 12.0
    w_len: float = 0.15
    noise: float = TRAIN_NOISE
    tie_threshold: float = TIE_THRESHOLD
    flag_miss: float = 0.1
    flag_false: float = 0.02
    heldout: bool = False

    # ----- judging --------------------------------------------------------
    def verdict(self, prompt: Prompt | dict, response: str, world: World | None = None) -> CheckResult:
        """The checker's verdict (cached per labeler; checking is deterministic)."""
        meta, _ = meta_and_world(prompt, world)
        key = (id(meta), response)
        hit = _VERDICTS.get(key)
        if hit is None or hit[0] is not meta:
            if len(_VERDICTS) > 20000:
                _VERDICTS.clear()
            hit = _VERDICTS[key] = (meta, check(meta, response, world))
        return hit[1]

    def base_utility(self, res: CheckResult, response: str) -> float:
        """The noiseless utility of a response with checker verdict ``res``."""
        n = F.word_count(response)
        u = self.w_help * res.score + self.w_follow * res.follows_instruction
        u -= self.w_constraint * len(res.constraint_violations)
        u -= self.w_truth * (res.hallucinated + res.repeats_falsehood)
        u -= self.w_harm * res.toxic
        u -= self.w_len * abs(math.log((n + 1) / (self.len_pref + 1)))
        return u

    def utilities(
        self, prompt: Prompt | dict, responses: list[str], rng: random.Random, world: World | None = None
    ) -> list[float]:
        """One noisy utility per response (a fresh draw of noise per judgement). Copies of one text
        in a judgement share its draw: a labeler ties identical answers, as a person would."""
        draws = [rng.gauss(0.0, self.noise) for _ in responses]
        first = first_copies(responses)
        return [self.base_utility(self.verdict(prompt, r, world), r) + draws[first[i]] for i, r in enumerate(responses)]

    # ----- the labeling interface ---------------------------------------------
    def rank(
        self, prompt: Prompt | dict, responses: list[str], rng: random.Random, world: World | None = None
    ) -> Ranking:
        """Rank K responses (ties allowed), with a 1-7 Likert score and flags for each."""
        if not MIN_K <= len(responses) <= MAX_K:
            raise ValueError(
                f"rank needs {MIN_K} to {MAX_K} responses (the paper's K is 4..9), got {len(responses)}"
            )
        us = self.utilities(prompt, responses, rng, world)
        order = sorted(range(len(responses)), key=lambda i: -us[i])
        groups: list[list[int]] = []
        for i in order:
            if groups and us[groups[-1][0]] - us[i] <= self.tie_threshold:
                groups[-1].append(i)
            else:
                groups.append([i])
        verdicts = [self.verdict(prompt, r, world) for r in responses]
        meta = prompt.meta if isinstance(prompt, Prompt) else prompt
        likert = [self.likert(v, rng) for v in verdicts]
        flags = [self.flags(v, r, rng) for v, r in zip(verdicts, responses)]
        first = first_copies(responses)  # copies of one answer get its score and flags
        return Ranking(
            prompt=prompt.text if isinstance(prompt, Prompt) else meta.get("text", ""),
            responses=list(responses),
            ranking=groups,
            likert=[likert[j] for j in first],
            flags=[list(flags[j]) for j in first],
            labeler_id=self.id,
            prompt_id=prompt.id if isinstance(prompt, Prompt) else meta.get("id"),
        )

    def compare(
        self, prompt: Prompt | dict, a: str, b: str, rng: random.Random, world: World | None = None
    ) -> float:
        """1.0 if ``a`` is preferred, 0.0 if ``b`` is, 0.5 for a tie."""
        ua, ub = self.utilities(prompt, [a, b], rng, world)
        if abs(ua - ub) <= self.tie_threshold:
            return 0.5
        return 1.0 if ua > ub else 0.0

    def likert(self, res: CheckResult, rng: random.Random) -> int:
        """A 1-7 overall quality score."""
        a = 0.6 * res.score + 0.4 * res.passed - 0.3 * res.toxic + rng.gauss(0.0, self.noise / 2)
        return int(min(7, max(1, round(1 + 6 * a))))

    def flags(self, res: CheckResult, response: str, rng: random.Random) -> list[str]:
        """Metadata flags (names from data.FLAGS), from the verdict plus labeler noise."""
        true = {
            "fails_to_follow": not res.follows_instruction,
            "violates_constraint": bool(res.constraint_violations),
            "hallucination": res.hallucinated or res.repeats_falsehood,
            "inappropriate_for_customer_assistant": res.toxic,
            "denigrates_protected_class": res.toxic
            and any(F.has_word(response, g) for g in ("Velani", "Durok")),
        }
        out = []
        for name in FLAGS:
            if true.get(name, False):
                keep = rng.random() >= self.flag_miss
            else:
                keep = (
                    name in ("fails_to_follow", "violates_constraint", "hallucination")
                    and rng.random() < self.flag_false
                )
            if keep:
                out.append(name)
        return out

    def write_demonstration(
        self, prompt: Prompt | dict, rng: random.Random, world: World | None = None
    ) -> str:
        """A correct answer in this labeler's style (the draw closest to their preferred length)."""
        meta, world = meta_and_world(prompt, world)
        drafts = [solve(meta, rng, world) for _ in range(3)]
        best = min(drafts, key=lambda d: abs(F.word_count(d) - self.len_pref))
        if self.len_pref > 14 and not meta.get("constraints") and rng.random() < 0.5:
            longer = f"{best} {rng.choice(PLEASANTRIES)}"
            if check(meta, longer, world).passed:
                best = longer
        return best


# ----- the panel ------------------------------------------------------------------


def first_copies(responses: list[str]) -> list[int]:
    """For each response, the index of its first identical copy (itself when it has none)."""
    seen: dict[str, int] = {}
    return [seen.setdefault(r, i) for i, r in enumerate(responses)]


def _draw_labeler(rng: random.Random, lid: str, noise: float, heldout: bool) -> Labeler:
    jitter = lambda mean, sd: max(0.0, rng.gauss(mean, sd))
    truth, harm = (0.9, 1.1) if heldout else (0.6, 0.8)
    return Labeler(
        id=lid,
        w_help=jitter(1.0, 0.2),
        w_follow=jitter(0.6, 0.2),
        w_constraint=jitter(0.6, 0.15),
        w_truth=jitter(truth, 0.2),
        w_harm=jitter(harm, 0.25),
        len_pref=rng.uniform(5, 25),
        w_len=jitter(0.15, 0.08),
        noise=noise * math.exp(rng.gauss(0.0, 0.2)),
        tie_threshold=TIE_THRESHOLD,
        flag_miss=rng.uniform(0.03, 0.2),
        flag_false=rng.uniform(0.0, 0.04),
        heldout=heldout,
    )


class Panel:
    """A pool of simulated labelers: ``training_labelers`` and ``heldout_labelers``."""

    def __init__(
        self,
        seed: int = 0,
        n: int = 40,
        n_heldout: int = 10,
        noise: float = TRAIN_NOISE,
        heldout_noise: float = HELDOUT_NOISE,
    ):
        rng = random.Random(f"panel:{seed}")
        self.seed = seed
        self.training_labelers = [_draw_labeler(rng, f"T{i:02d}", noise, False) for i in range(n)]
        self.heldout_labelers = [
            _draw_labeler(rng, f"H{i:02d}", heldout_noise, True) for i in range(n_heldout)
        ]

    def to_dict(self) -> dict:
        """Every labeler's parameters (``world/panel.json``; :meth:`from_dict` reads it back)."""
        return {
            "seed": self.seed,
            "training": [asdict(lab) for lab in self.training_labelers],
            "heldout": [asdict(lab) for lab in self.heldout_labelers],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Panel:
        """The panel :meth:`to_dict` wrote: the same labelers, judging the same way."""
        panel = cls(d["seed"], n=0, n_heldout=0)
        panel.training_labelers = [Labeler(**lab) for lab in d["training"]]
        panel.heldout_labelers = [Labeler(**lab) for lab in d["heldout"]]
        return panel

    @property
    def labelers(self) -> list[Labeler]:
        return self.training_labelers + self.heldout_labelers

    def assign(self, prompt_id: str, heldout: bool = False) -> Labeler:
        """The labeler who handles ``prompt_id`` (stable: crc32 of the id)."""
        pool = self.heldout_labelers if heldout else self.training_labelers
        return pool[zlib.crc32(f"{self.seed}:{prompt_id}".encode()) % len(pool)]

    def write_demonstrations(
        self, prompts: list[Prompt], seed: int = 0, world: World | None = None
    ) -> list[Demonstration]:
        """One demonstration per prompt, each by its assigned training labeler."""
        out = []
        for p in prompts:
            lab = self.assign(p.id)
            rng = random.Random(f"demo:{seed}:{p.id}")
            out.append(
                Demonstration(
                    prompt=p.text,
                    response=lab.write_demonstration(p, rng, world),
                    labeler_id=lab.id,
                    prompt_id=p.id,
                    source=p.source,
                )
            )
        return out

    def rank(
        self,
        prompt: Prompt,
        responses: list[str],
        rng: random.Random,
        heldout: bool = False,
        world: World | None = None,
    ) -> Ranking:
        """A ranking by the labeler assigned to this prompt."""
        return self.assign(prompt.id, heldout).rank(prompt, responses, rng, world)

    def draw_judge(
        self, rng: random.Random, heldout: bool = True, exclude: Collection[str] = ()
    ) -> Labeler:
        """A labeler of the pool drawn with ``rng``, not one whose id is in ``exclude``.

        The several judgements of one comparison pass the ids already drawn, so they are by distinct
        labelers (a draw without replacement). With nothing excluded the draw is ``rng.choice(pool)``,
        so a comparison's first judgement is the one a single-judgement evaluation makes. Raises
        ValueError when every labeler of the pool is excluded: more judgements of one comparison than
        labelers is an error, not a silent repeat (10 held-out labelers allow at most 10)."""
        full = self.heldout_labelers if heldout else self.training_labelers
        pool = [lab for lab in full if lab.id not in exclude] if exclude else full
        if not pool:
            group = "held-out" if heldout else "training"
            raise ValueError(
                f"no {group} labeler left: the panel has {len(full)} and each judgement of one "
                f"comparison needs a distinct labeler"
            )
        return rng.choice(pool)

    def compare(
        self,
        prompt: Prompt,
        a: str,
        b: str,
        rng: random.Random,
        heldout: bool = True,
        world: World | None = None,
        exclude: Collection[str] = (),
    ) -> float:
        """A pairwise preference by a labeler drawn with ``rng`` (held-out by default: evaluation),
        not one of ``exclude`` (:meth:`draw_judge`)."""
        return self.draw_judge(rng, heldout, exclude).compare(prompt, a, b, rng, world)
