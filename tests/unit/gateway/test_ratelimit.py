"""Per-key rpm / tpm limits with an injected clock: exact retry-after, nothing taken when refused, bounded."""

import threading

import pytest

from truecost.gateway.ratelimit import RateLimited, RateLimiter


def test_rpm_allows_a_minutes_burst_then_the_steady_rate():
    rl = RateLimiter()
    for _ in range(3):
        rl.check("k", rpm=3, tpm=None, now=0.0)
    with pytest.raises(RateLimited) as err:
        rl.check("k", rpm=3, tpm=None, now=0.0)
    assert err.value.which == "rpm" and err.value.retry_after == pytest.approx(20.0) and err.value.limit == 3
    assert err.value.retry_after_header == "20"
    with pytest.raises(RateLimited) as err:
        rl.check("k", rpm=3, tpm=None, now=5.0)
    assert err.value.retry_after == pytest.approx(15.0)
    rl.check("k", rpm=3, tpm=None, now=20.0)  # exactly when it said
    with pytest.raises(RateLimited):
        rl.check("k", rpm=3, tpm=None, now=20.0)


def test_tpm_retry_after_is_exact_and_refusal_takes_nothing():
    rl = RateLimiter()
    rl.check("k", rpm=10, tpm=600, tokens=500, now=0.0)
    with pytest.raises(RateLimited) as err:
        rl.check("k", rpm=10, tpm=600, tokens=300, now=0.0)
    assert err.value.which == "tpm" and err.value.retry_after == pytest.approx(20.0)  # 200 missing at 10 tokens/s
    assert err.value.retry_after_header == "20"
    rl.check("k", rpm=10, tpm=600, tokens=100, now=0.0)  # the refused request took neither a request nor tokens
    with pytest.raises(RateLimited) as err:
        rl.check("k", rpm=10, tpm=600, tokens=1, now=0.0)
    assert err.value.retry_after == pytest.approx(0.1)
    assert err.value.retry_after_header == "1"


def test_both_limits_short_reports_the_longer_wait():
    rl = RateLimiter()
    rl.check("k", rpm=1, tpm=60, tokens=60, now=0.0)
    with pytest.raises(RateLimited) as err:
        rl.check("k", rpm=1, tpm=60, tokens=30, now=0.0)
    assert err.value.which == "rpm" and err.value.retry_after == pytest.approx(60.0)
    rl.check("k", rpm=1, tpm=60, tokens=30, now=60.0)


def test_a_request_larger_than_the_limit_can_never_pass():
    rl = RateLimiter()
    with pytest.raises(RateLimited) as err:
        rl.check("k", rpm=None, tpm=100, tokens=101, now=0.0)
    assert err.value.retry_after is None and err.value.retry_after_header is None and err.value.requested == 101
    assert "more than" in str(err.value)
    rl.check("k", rpm=None, tpm=100, tokens=100, now=0.0)


def test_adjust_refunds_and_charges_debt_bounded_by_a_minute():
    rl = RateLimiter()
    rl.check("k", rpm=None, tpm=600, tokens=600, now=0.0)
    rl.adjust("k", estimated=600, actual=100, now=0.0)  # 500 back
    rl.check("k", rpm=None, tpm=600, tokens=500, now=0.0)
    rl.adjust("k", estimated=500, actual=10**9, now=0.0)  # far more than estimated: debt capped at -600
    with pytest.raises(RateLimited) as err:
        rl.check("k", rpm=None, tpm=600, tokens=600, now=0.0)
    assert err.value.retry_after == pytest.approx(120.0)
    rl.adjust("unknown", 10, 5)  # no state: nothing to do
    rl.check("k", rpm=None, tpm=600, tokens=600, now=120.0)


def test_unlimited_keys_keep_no_state_and_memory_is_bounded():
    rl = RateLimiter(max_keys=100)
    for i in range(1000):
        rl.check(f"free-{i}", rpm=None, tpm=None, tokens=10**9)
    assert len(rl) == 0
    for i in range(1000):
        rl.check(f"k{i}", rpm=5, tpm=None, now=0.0)
    assert len(rl) == 100


def test_limits_are_per_key_and_a_changed_limit_applies():
    rl = RateLimiter()
    rl.check("a", rpm=1, tpm=None, now=0.0)
    rl.check("b", rpm=1, tpm=None, now=0.0)
    with pytest.raises(RateLimited):
        rl.check("a", rpm=1, tpm=None, now=0.0)
    rl.check("a", rpm=120, tpm=None, now=30.0)  # raised: the new rate applies
    for _ in range(5):
        rl.check("c", rpm=10, tpm=None, now=0.0)
    rl.check("c", rpm=2, tpm=None, now=0.0)  # lowered: the 5 left are capped at the new limit of 2
    rl.check("c", rpm=2, tpm=None, now=0.0)
    with pytest.raises(RateLimited):
        rl.check("c", rpm=2, tpm=None, now=0.0)


def test_clock_going_back_refills_nothing():
    rl = RateLimiter()
    rl.check("k", rpm=1, tpm=None, now=100.0)
    with pytest.raises(RateLimited):
        rl.check("k", rpm=1, tpm=None, now=50.0)


def test_concurrent_checks_admit_exactly_the_limit():
    rl = RateLimiter(clock=lambda: 0.0)
    admitted = []

    def worker():
        n = 0
        for _ in range(500):
            try:
                rl.check("k", rpm=100, tpm=1000, tokens=5)
                n += 1
            except RateLimited:
                pass
        admitted.append(n)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 100
