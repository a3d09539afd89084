"""Fixtures of the evaluation tests that run models: one fake run folder and one evaluation of it."""

from __future__ import annotations

import random
import time

import pytest

from instructgpt.data import Prompt

from .fake_run import eval_config, make_run


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"))


def run_with_oracle(run, **kw):
    """run_eval with ppo answering by the world's reference solver and sft answering garbage."""
    from instructgpt.evaluation import run as run_mod
    from instructgpt.world import solve
    run_dir, data = run
    real = run_mod.generate_responses
    mp = pytest.MonkeyPatch()

    def fake(spec, prompts, cfg, runner=None):
        if prompts and isinstance(prompts[0], Prompt):
            if spec.name == "ppo":
                return [solve(p, random.Random(i), data.world) for i, p in enumerate(prompts)]
            if spec.name == "sft":
                return ["Zorp? Blah blah what?" for _ in prompts]
        return real(spec, prompts, cfg, runner=runner)

    mp.setattr(run_mod, "generate_responses", fake)
    t0 = time.perf_counter()
    try:
        results = run_mod.run_eval(eval_config(run_dir, **kw))
    finally:
        mp.undo()
    return results, time.perf_counter() - t0


@pytest.fixture(scope="session")
def evaluated(run):
    return run_with_oracle(run)
