"""The oracle reward (the training labelers' mean noiseless utility) read from a run folder."""

import random

import pytest

from instructgpt.config import ConfigError
from instructgpt.data import DataError, write_jsonl
from instructgpt.reward_fn import load_reward_fn
from instructgpt.world import oracle
from instructgpt.world.datasets import build_datasets
from instructgpt.world.tasks import solve


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    data = build_datasets(seed=5, scale=0.002, corpus_docs=50, heldout_docs=10)
    data.save(folder / "world")
    prompts = data.prompts["ppo"][:6]
    curated = [p.__class__(**{**p.__dict__, "text": "Hi.\n" + p.text}) for p in prompts]  # texts differ from the world's
    (folder / "data").mkdir()
    write_jsonl(folder / "data" / "prompts_ppo_train.jsonl", curated)
    return folder, data, curated


def test_the_reward_is_the_training_labelers_mean_noiseless_utility(run):
    folder, data, prompts = run
    reward = oracle.OracleReward(folder)
    rng = random.Random(0)
    right = [solve(p, rng, data.world) for p in prompts]
    wrong = ["no"] * len(prompts)
    got_right, got_wrong = reward([p.text for p in prompts], right), reward([p.text for p in prompts], wrong)
    labs = data.panel.training_labelers
    assert len(labs) == 40
    for p, r, g in zip(prompts, right, got_right):
        by_hand = sum(lab.base_utility(lab.verdict(p, r, data.world), r) for lab in labs) / 40
        assert g == pytest.approx(by_hand, abs=1e-12)
    assert all(a > b for a, b in zip(got_right, got_wrong))        # the solution beats "no" on every prompt
    # noiseless: the same answer gets the same reward every time
    assert reward([prompts[0].text], [right[0]]) == reward([prompts[0].text], [right[0]])


def test_an_unknown_prompt_is_an_error_naming_it(run):
    folder, _, _ = run
    with pytest.raises(DataError, match=r"the prompt 'Who made the Nothing\?\\n' is not a prompt of .*data"):
        oracle.OracleReward(folder)(["Who made the Nothing?\n"], ["x"])


def test_ppo_reaches_it_as_a_reward_fn_given_the_run_folder(run, monkeypatch):
    folder, data, prompts = run
    fn = load_reward_fn("instructgpt.world.oracle:reward")
    monkeypatch.delenv(oracle.ENV, raising=False)
    with pytest.raises(ConfigError, match=r"set \$INSTRUCTGPT_ORACLE_RUN"):
        fn([prompts[0].text], ["x"])
    monkeypatch.setenv(oracle.ENV, str(folder))
    answer = solve(prompts[0], random.Random(1), data.world)
    assert fn([prompts[0].text], [answer]) == oracle.OracleReward(folder)([prompts[0].text], [answer])


def test_a_folder_without_curated_prompts_is_an_error(run, tmp_path):
    folder, data, _ = run
    data.save(tmp_path / "world")
    with pytest.raises(DataError, match=r"no prompts_\*\.jsonl"):
        oracle.OracleReward(tmp_path)
