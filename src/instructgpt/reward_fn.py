"""``reward_fn=module:function``: a Python function as PPO's reward instead of a reward model.

The function takes the batch's prompt texts and response texts and returns one float per
response (``instructgpt.world.oracle:reward`` is one: the simulated labelers' noiseless utility).
"""

from __future__ import annotations

import importlib
import math
from typing import Callable

from .config import ConfigError

RewardFn = Callable[[list[str], list[str]], list[float]]


def load_reward_fn(spec: str) -> RewardFn:
    """The function ``spec`` names; a spec that does not name a callable is a ConfigError."""
    module, _, name = spec.partition(":")
    if not name:
        raise ConfigError(f"reward_fn: {spec!r} is not of the form module:function")
    try:
        fn = getattr(importlib.import_module(module), name)
    except ImportError as e:
        raise ConfigError(f"reward_fn: cannot import module {module!r} of {spec!r}: {e}") from None
    except AttributeError:
        raise ConfigError(f"reward_fn: module {module!r} has no function {name!r}") from None
    if not callable(fn):
        raise ConfigError(f"reward_fn: {spec} is not a function")
    return fn


def checked_scores(fn: RewardFn, spec: str, prompts: list[str], responses: list[str]) -> list[float]:
    """``fn``'s scores of the batch: one finite number per response, else a ValueError naming ``spec``
    (a list of another length would be broadcast or misaligned, a NaN would stop PPO later as a
    diverged update)."""
    scores = list(fn(prompts, responses))
    if len(scores) != len(responses):
        raise ValueError(f"reward_fn: {spec} returned {len(scores)} scores for {len(responses)} responses "
                         f"(it must return one float per response, in order)")
    out = []
    for i, s in enumerate(scores):
        try:
            value = float(s)  # Python, NumPy or 0-d tensor numbers
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value):
            raise ValueError(f"reward_fn: {spec} returned {s!r} for response {i} ({responses[i][:60]!r}); "
                             f"expected a finite number")
        out.append(value)
    return out
