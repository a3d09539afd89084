"""Shared fixtures of the simulated-world tests (small sizes: the suite must stay fast)."""

import pytest

from instructgpt.world import World, build_corpus


@pytest.fixture(scope="session")
def world():
    return World.generate(0)


@pytest.fixture(scope="session")
def small_corpus(world):
    return build_corpus(world, 2000, 0)
