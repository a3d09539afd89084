"""Time left of a run, from what the run itself has measured.

Each stage is given an amount of *work* before it runs: the tokens its models
process, counted in passes (``Work``). A training token counts ``TRAIN`` passes
(forward and backward), a scored token one, a sampled token ``DECODE`` (one
token through the model per step of the KV-cache loop, which is overhead
bound), all times the model's size relative to the run's policy. Token counts
come from the run's own data files (characters / ``CHARS_PER_TOKEN``).

A finished stage gives a measured rate (seconds per unit of work).
``TimeLeft.estimate`` prices every remaining stage at the measured rate of its
own kind (``sft`` and ``flan`` are one kind, ``ppo`` and ``ppo_ptx`` another,
so are every round's ``rm``) when one has run, else at the pooled rate of every
measured kind (total seconds / total work). Before anything comparable has been
measured it says it does not know. Stages reused from an earlier run of the
same folder count as measurements too (their ``stage.json`` holds their
seconds and work).

The constants only set how different kinds of work compare before each kind
has been measured once; they hold no seconds, so nothing in an estimate comes
from another machine or another configuration.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CHARS_PER_TOKEN = 4.0   # BPE tokenizers on English text
TRAIN = 3.0             # a trained token: forward + backward (about twice the forward)
DECODE = 3.0            # a sampled token: a one-token pass of the KV-cache loop
#: Kinds whose work is not in tokens (their rate never stands in for another kind's).
OWN_RATE_ONLY = frozenset({"world"})


@dataclass
class Work:
    """A stage's expected work: ``units`` (token passes) of ``kind``; None when not known yet."""
    stage: str
    kind: str
    units: float | None


class TimeLeft:
    """Measured rates per kind of stage, and estimates of what remains."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.units: dict[str, float] = {}

    def record(self, kind: str, units: float | None, seconds: float | None) -> None:
        """A stage of ``kind`` did ``units`` of work in ``seconds``."""
        if not units or seconds is None or units <= 0 or seconds < 0:
            return
        self.seconds[kind] = self.seconds.get(kind, 0.0) + float(seconds)
        self.units[kind] = self.units.get(kind, 0.0) + float(units)

    def rate(self, kind: str) -> float | None:
        """Seconds per unit of ``kind``: its own measurement, else the pooled one, else None."""
        if kind in self.units:
            return self.seconds[kind] / self.units[kind]
        if kind in OWN_RATE_ONLY:
            return None
        pooled = [k for k in self.units if k not in OWN_RATE_ONLY]
        if not pooled:
            return None
        return sum(self.seconds[k] for k in pooled) / sum(self.units[k] for k in pooled)

    def estimate(self, remaining: list[Work]) -> float | None:
        """Seconds for ``remaining``; None when a stage cannot be priced yet (its work or kind unknown)."""
        total = 0.0
        for w in remaining:
            r = self.rate(w.kind)
            if r is None or w.units is None:
                return None
            total += w.units * r
        return total


# ----------------------------------------------------------------------------- work of each kind of stage

def tokens(chars: float) -> float:
    return chars / CHARS_PER_TOKEN


def lm_training(train_chars: float, epochs: float, valid_chars: float = 0.0, size: float = 1.0) -> float:
    """Pretraining or SFT: ``epochs`` passes trained over the text, one scored over the validation text."""
    return size * epochs * (TRAIN * tokens(train_chars) + tokens(valid_chars))


def sampling(n_sequences: float, prompt_chars: float, new_tokens: float) -> float:
    """Sampling ``n_sequences`` responses of ``new_tokens`` to prompts of ``prompt_chars`` characters on average."""
    return n_sequences * (tokens(prompt_chars) + DECODE * new_tokens)


def rm_training(rankings: float, k: float, sequence_chars: float, epochs: float, reference_chars: float = 0.0) -> float:
    """``rankings`` of ``k`` responses (``sequence_chars`` each, prompt included), ``epochs`` times,
    then the reference responses scored once for the bias."""
    return epochs * TRAIN * rankings * k * tokens(sequence_chars) + tokens(reference_chars)


def ppo(iterations: float, batch: float, prompt_chars: float, new_tokens: float, ppo_epochs: float,
        ptx_token_ratio: float = 0.0, value_model: bool = True) -> float:
    """Per episode: the response sampled; policy, reference, reward and value models scoring the
    sequence; ``ppo_epochs`` trained passes of policy and value; PPO-ptx's pretraining tokens.
    Without a value model (RLOO) one model fewer scores and trains."""
    seq = tokens(prompt_chars) + new_tokens
    models = 2 if value_model else 1  # trained: the policy, and the value model
    per_episode = DECODE * new_tokens + (2 + models) * seq + ppo_epochs * models * TRAIN * seq
    per_episode += ppo_epochs * TRAIN * ptx_token_ratio * new_tokens
    return iterations * batch * per_episode


def evaluation(n_models: float, prompts: float, prompt_chars: float, new_tokens: float,
               probe_tokens: float) -> float:
    """Every model answers the prompts, is scored (KL, reward) and takes the probes."""
    return n_models * (sampling(prompts, prompt_chars, new_tokens) + 3 * prompts * (tokens(prompt_chars) + new_tokens)
                       + probe_tokens)


def best_of_n(n: float, prompts: float, prompt_chars: float, new_tokens: float) -> float:
    """The SFT policy samples ``n`` answers per prompt and the reward model scores each."""
    return sampling(n * prompts, prompt_chars, new_tokens) + n * prompts * (tokens(prompt_chars) + new_tokens)


# ----------------------------------------------------------------------------- reading the data files

class TextStats:
    """Characters and records of JSONL files (cached by path, size and mtime)."""

    def __init__(self):
        self._cache: dict[tuple, tuple[int, int]] = {}

    def chars(self, path: str | Path, fields: tuple[str, ...]) -> tuple[int, int]:
        """(records, total characters of ``fields``) of a JSONL file; (0, 0) if it is missing."""
        path = Path(path)
        if not path.is_file():
            return 0, 0
        st = path.stat()
        key = (str(path), fields, st.st_size, st.st_mtime_ns)
        if key not in self._cache:
            n = chars = 0
            for line in path.read_text().splitlines():
                if not line.strip():
                    continue
                row = json.loads(line)
                n += 1
                for f in fields:
                    v = row.get(f)
                    if isinstance(v, str):
                        chars += len(v)
                    elif isinstance(v, list):
                        chars += sum(len(x) for x in v if isinstance(x, str))
            self._cache[key] = (n, chars)
        return self._cache[key]

    def mean(self, path: str | Path, fields: tuple[str, ...]) -> float:
        n, chars = self.chars(path, fields)
        return chars / n if n else 0.0
