"""Small pure functions: display order, rank numbers, agreement, the rate limiter."""

from __future__ import annotations

from instructgpt.labeling.labels import ranks_to_groups
from instructgpt.labeling.quality import compare, preferences
from instructgpt.labeling.security import RateLimiter, check_prelogin, prelogin_token
from instructgpt.labeling.tasks import _overlap_set, display_order


def test_display_order_is_a_deterministic_permutation_that_varies():
    orders = {tuple(display_order(u, t, 6)) for u in range(5) for t in range(5)}
    assert all(sorted(o) == list(range(6)) for o in orders)
    assert len(orders) > 10
    assert display_order(3, 7, 9) == display_order(3, 7, 9)


def test_ranks_to_groups():
    assert ranks_to_groups([2, 2, 3, 1]) == [[3], [0, 1], [2]]
    assert ranks_to_groups([1, 2, 3, 4]) == [[0], [1], [2], [3]]


def test_pairwise_agreement_ignores_ties():
    assert preferences([[2], [0, 1]]) == {(0, 2): -1, (1, 2): -1}
    assert compare([[0], [1], [2]], [[0], [2], [1]]) == (2, 3)
    assert compare([[0, 1], [2]], [[1], [0], [2]]) == (2, 2)  # (0,1) is tied by the first labeler


def test_overlap_share_is_exact():
    hashes = [f"{i:064x}" for i in range(100)]
    assert len(_overlap_set(hashes, 0.1)) == 10 and _overlap_set(hashes, 0.1) == _overlap_set(hashes, 0.1)
    assert _overlap_set(hashes, 0.0) == set()


def test_rate_limiter_window():
    now = [0.0]
    rl = RateLimiter(limit=5, window=60, clock=lambda: now[0])
    for _ in range(5):
        assert not rl.blocked("user:a", "ip:1")
        rl.fail("user:a", "ip:1")
    assert rl.blocked("user:a") and rl.blocked("ip:1") and not rl.blocked("user:b")
    now[0] = 61.0
    assert not rl.blocked("user:a", "ip:1")


def test_prelogin_token_is_bound_to_the_cookie():
    key = b"k" * 32
    assert check_prelogin(key, "cookie", prelogin_token(key, "cookie"))
    assert not check_prelogin(key, "other", prelogin_token(key, "cookie"))
    assert not check_prelogin(key, None, prelogin_token(key, "cookie"))
    assert not check_prelogin(key, "cookie", None)
