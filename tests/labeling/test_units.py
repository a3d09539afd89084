"""Small functions: display order, rank numbers, agreement, the rate limiter's window."""

from __future__ import annotations

from datetime import datetime, timedelta

from instructgpt.labeling.labels import ranks_to_groups
from instructgpt.labeling.quality import compare, preferences
from instructgpt.labeling.security import LoginLimiter, check_prelogin, prelogin_token
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


def test_rate_limiter_window(sqlite_store):
    now = [0.0]
    t0 = datetime(2030, 1, 1)
    rl = LoginLimiter(sqlite_store, limit=5, window=60, clock=lambda: t0 + timedelta(seconds=now[0]))
    for _ in range(5):
        assert not rl.blocked("user:a", "ip:1")
        rl.fail(rl.reserve("user:a", "ip:1").attempt)
    assert rl.blocked("user:a") and rl.blocked("ip:1") and not rl.blocked("user:b")
    assert rl.reserve("user:a", "ip:2").blocked and rl.reserve("user:b", "ip:1").blocked
    now[0] = 61.0
    assert not rl.blocked("user:a", "ip:1")


def test_rate_limiter_counts_attempts_before_their_check(sqlite_store):
    rl = LoginLimiter(sqlite_store, limit=3, window=60)
    first = rl.reserve("user:a", "ip:1")
    rl.fail(first.attempt)
    in_flight = [rl.reserve("user:a", "ip:1") for _ in range(2)]
    assert all(r.attempt for r in in_flight)
    assert rl.reserve("user:a", "ip:1").busy  # 1 failure + 2 in flight fill the allowance: wait
    assert rl.reserve("user:b", "ip:1").busy  # for the IP too
    rl.fail(in_flight[0].attempt)
    rl.forgive(in_flight[1].attempt, "user:a")  # the right password: the user's failures are forgotten
    assert not rl.blocked("user:a")
    assert rl.reserve("user:a", "ip:2").attempt
    rl.fail(rl.reserve("user:c", "ip:1").attempt)  # the IP kept its 2 failures; a third blocks it
    assert rl.blocked("ip:1") and rl.reserve("user:d", "ip:1").blocked


def test_prelogin_token_is_bound_to_the_cookie():
    key = b"k" * 32
    assert check_prelogin(key, "cookie", prelogin_token(key, "cookie"))
    assert not check_prelogin(key, "other", prelogin_token(key, "cookie"))
    assert not check_prelogin(key, None, prelogin_token(key, "cookie"))
    assert not check_prelogin(key, "cookie", None)
