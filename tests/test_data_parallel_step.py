"""The shared data-parallel pieces of a training step (sharding.py) and the one reward-model batch
scorer (RewardModel.score), each tested alone."""

import torch

from instructgpt import sharding
from instructgpt.reward_model import RewardModel


def test_padded_passes_pad_to_the_busiest_rank_only_when_sharded(monkeypatch):
    chunks = [["a"], ["b"]]
    assert sharding.padded_passes(chunks, ["f"], sharded=False) == [(["a"], True), (["b"], True)]
    assert sharding.padded_passes([], ["f"], sharded=False) == []  # unsharded: a rank may make no pass
    # another rank has 4 micro-batches: a sharded rank with 2 adds 2 zero-weight passes over the filler
    monkeypatch.setattr(sharding.dist, "all_reduce_max", lambda t: torch.tensor(4.0))
    assert sharding.padded_passes(chunks, ["f"], sharded=True) == [
        (["a"], True), (["b"], True), (["f"], False), (["f"], False)]
    assert sharding.padded_passes([], ["f"], sharded=True) == [(["f"], False)] * 4


def test_sum_gradients_reduces_only_unsharded_models(monkeypatch):
    reduced = []
    monkeypatch.setattr(sharding.dist, "all_reduce_gradients", reduced.append)
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    monkeypatch.setattr(sharding, "is_sharded", lambda m: m is b)  # b: FSDP summed its gradients already
    sharding.sum_gradients(a, b)
    assert reduced == [a]


def test_checkpoint_tensors_keep_plain_modules_and_gather_sharded_ones(monkeypatch):
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    monkeypatch.setattr(sharding, "is_sharded", lambda m: m is b)
    monkeypatch.setattr(sharding, "full_state_dict", lambda m, rank0_only: {"gathered": rank0_only})
    assert sharding.checkpoint_tensors({"a": a, "b": b}) == {"a": a, "b": {"gathered": True}}


def test_reward_model_score_is_each_sequence_alone_in_input_order(tiny_gpt2):
    rm = RewardModel.from_policy(str(tiny_gpt2), dropout=0.1)
    rm.reward_bias.fill_(0.5)
    rm.train()
    seqs = [[5, 6, 7, 8, 9, 10], [11], [12, 13, 14], [15, 16], [17, 18, 19, 20]]
    got = rm.score(seqs, pad_id=0, batch_size=2)
    assert rm.training  # the mode it was in is restored
    rm.eval()
    with torch.no_grad():
        want = torch.cat([rm(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)) for s in seqs])
    assert got.shape == (5,) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert len(set(got.tolist())) == 5  # distinct sequences, distinct scores (the order matters)
