"""Losses against values computed by hand (plain math, not torch)."""

import math

import torch

from instructgpt.batching import Encoded, collate_lm
from instructgpt.data import Ranking
from instructgpt.losses import next_token_targets, nll_sum, pairwise_accuracy, ranking_loss


def nls(x: float) -> float:
    """-log sigmoid(x) by hand."""
    return math.log(1.0 + math.exp(-x))


def rm_loss(rewards: list[float], ranking: list[list[int]]) -> torch.Tensor:
    pairs = Ranking("p", ["r"] * len(rewards), ranking).pairs()
    w = torch.tensor([a for a, _ in pairs])
    l = torch.tensor([b for _, b in pairs])
    total, _ = ranking_loss(torch.tensor(rewards, dtype=torch.float64), w, l, torch.zeros(len(pairs), dtype=torch.long), 1)
    return total


def test_ranking_loss_k2():
    assert abs(rm_loss([1.0, 0.0], [[0], [1]]).item() - 0.31326168751822286) < 1e-9
    assert abs(rm_loss([1.0, 0.0], [[0], [1]]).item() - nls(1.0)) < 1e-12


def test_ranking_loss_k4_with_tie():
    # 0 best; 1 and 2 tied; 3 worst -> pairs (0,1) (0,2) (0,3) (1,3) (2,3); no pair between 1 and 2.
    rewards = [2.0, 1.0, 1.0, 0.0]
    expected = (nls(1.0) + nls(1.0) + nls(2.0) + nls(1.0) + nls(1.0)) / 5
    assert abs(rm_loss(rewards, [[0], [1, 2], [3]]).item() - expected) < 1e-12
    assert abs(expected - 0.2759951) < 1e-6


def test_ranking_loss_k9_has_36_pairs():
    rewards = [0.3 * (8 - i) + 0.1 * (i % 3) for i in range(9)]
    ranking = [[i] for i in range(9)]
    pairs = Ranking("p", ["r"] * 9, ranking).pairs()
    assert len(pairs) == 36 == math.comb(9, 2)
    expected = sum(nls(rewards[i] - rewards[j]) for i in range(9) for j in range(i + 1, 9)) / 36
    assert abs(rm_loss(rewards, ranking).item() - expected) < 1e-12


def test_ranking_loss_averages_per_ranking_then_sums():
    # Two rankings in one batch: K=2 (1 pair) and K=3 (3 pairs); each is a mean over its own pairs.
    rewards = torch.tensor([1.0, 0.0, 3.0, 2.0, 0.0], dtype=torch.float64)
    w = torch.tensor([0, 2, 2, 3])
    l = torch.tensor([1, 3, 4, 4])
    g = torch.tensor([0, 1, 1, 1])
    total, per_pair = ranking_loss(rewards, w, l, g, 2)
    expected = nls(1.0) + (nls(1.0) + nls(3.0) + nls(2.0)) / 3
    assert abs(total.item() - expected) < 1e-12
    assert per_pair.shape == (4,)
    assert pairwise_accuracy(rewards, w, l).item() == 1.0


def test_lm_loss_counts_response_tokens_only():
    ex = [Encoded([5, 6, 7], [8, 9]), Encoded([5], [8, 9, 4])]
    batch = collate_lm(ex, pad_id=0)
    assert batch["loss_mask"].tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 1, 0]]
    V = 12
    logits = torch.randn(2, 5, V, dtype=torch.float64)
    predicts, targets = next_token_targets(batch["input_ids"], batch["loss_mask"])
    total, count = nll_sum(logits[predicts], targets), len(targets)
    # by hand: targets at positions 3,4 (row 0) and 1,2,3 (row 1), predicted from the previous position
    logp = torch.log_softmax(logits, -1)
    ids = batch["input_ids"]
    hand = -(logp[0, 2, ids[0, 3]] + logp[0, 3, ids[0, 4]] + logp[1, 0, ids[1, 1]] + logp[1, 1, ids[1, 2]]
             + logp[1, 2, ids[1, 3]])
    assert count == 5
    assert abs(total.item() - hand.item()) < 1e-9
    # changing a prompt token's logits (a non-target position) leaves the loss unchanged
    logits2 = logits.clone()
    logits2[0, 0] += 5.0
    assert abs(nll_sum(logits2[predicts], targets).item() - total.item()) < 1e-9
