"""The best any reward model could do on the built-in world, as a PPO reward.

    INSTRUCTGPT_ORACLE_RUN=runs/default instructgpt ppo policy=runs/default/models/sft \\
        reward_model=runs/default/models/round1/rm prompts=runs/default/data/prompts_ppo_train.jsonl \\
        reward_fn=instructgpt.world.oracle:reward out_dir=runs/oracle_ppo

A response's reward is the mean, over the run's training labelers, of their
noiseless utility (``Labeler.base_utility`` of the checker's verdict): what the
labelers prefer on average with their judgement noise removed, the target a
reward model trained on their rankings approaches at best. The reward model
given alongside only initialises the value function.

A diagnostic, not a training recipe: a PPO policy trained against it shows
whether a policy falls short because its reward model does (the oracle lifts
it) or because PPO cannot move it within its budget (the oracle does not).
Prompts are found by their text among the run's curated prompt files
(``data/prompts_*.jsonl``; curation scrubs PII, so the world's own prompt texts
differ); a text that is none of them is an error naming it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config import ConfigError
from ..data import DataError, Prompt, load_prompts
from .datasets import WorldData, load_world

ENV = "INSTRUCTGPT_ORACLE_RUN"


def noiseless_utility(labelers, prompt: Prompt, response: str, world) -> float:
    """The mean, over ``labelers``, of their noiseless utility of ``response`` to ``prompt``."""
    return sum(lab.base_utility(lab.verdict(prompt, response, world), response) for lab in labelers) / len(labelers)


class OracleReward:
    """``(prompt texts, responses) -> rewards`` for the prompts of the run folder ``run_dir``."""

    def __init__(self, run_dir: str | Path):
        run = Path(run_dir)
        self.run_dir = run
        self.data: WorldData = load_world(run / "world")
        files = sorted((run / "data").glob("prompts_*.jsonl"))
        if not files:
            raise DataError(f"{run / 'data'}: no prompts_*.jsonl (the oracle needs a run's curated prompts)")
        self.prompts: dict[str, Prompt] = {p.text: p for f in files for p in load_prompts(f)}

    def utility(self, prompt: Prompt, response: str) -> float:
        return noiseless_utility(self.data.panel.training_labelers, prompt, response, self.data.world)

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        out = []
        for text, response in zip(prompts, responses):
            prompt = self.prompts.get(text)
            if prompt is None:
                raise DataError(f"oracle reward: the prompt {text[:80]!r} is not a prompt of {self.run_dir}/data")
            out.append(self.utility(prompt, response))
        return out


_loaded: dict[str, OracleReward] = {}


def reward(prompts: list[str], responses: list[str]) -> list[float]:
    """The ``reward_fn`` entry point: the oracle of the run folder named by $INSTRUCTGPT_ORACLE_RUN."""
    run = os.environ.get(ENV, "")
    if not run:
        raise ConfigError(f"reward_fn instructgpt.world.oracle:reward: set ${ENV} to the run folder whose "
                          "world and prompts the oracle judges")
    if run not in _loaded:
        _loaded[run] = OracleReward(run)
    return _loaded[run](prompts, responses)
