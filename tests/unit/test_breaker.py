"""The circuit breaker and in-flight cap, on a fake clock: what a caller sees in each state."""
from __future__ import annotations

import pytest

from chalicelib.breaker import CircuitBreaker, Refused


class Failure(Exception):
    pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock, threshold=3, cooldown=30.0, max_in_flight=2) -> CircuitBreaker:
    return CircuitBreaker("c", threshold, cooldown, max_in_flight, failures=(Failure,), clock=clock)


def fail(b: CircuitBreaker) -> None:
    with pytest.raises(Failure):
        with b.call():
            raise Failure()


def succeed(b: CircuitBreaker) -> None:
    with b.call():
        pass


def test_opens_after_the_threshold_of_consecutive_failures_and_says_when_to_retry():
    clock = Clock()
    b = breaker(clock)
    fail(b), fail(b)
    succeed(b)  # a success in between resets the count
    fail(b), fail(b)
    assert not b.is_open
    fail(b)
    assert b.is_open
    clock.now += 10
    with pytest.raises(Refused) as refused:
        succeed(b)
    assert refused.value.retry_after == 20


def test_after_the_cooldown_one_probe_goes_through_and_its_success_closes_the_breaker():
    clock = Clock()
    b = breaker(clock, threshold=1)
    fail(b)
    clock.now += 30
    ran = []
    with b.call():  # the probe
        ran.append(1)
        with pytest.raises(Refused):  # others are refused while it is out
            succeed(b)
    assert ran == [1] and not b.is_open
    succeed(b)


def test_a_failed_probe_opens_the_breaker_for_another_cooldown():
    clock = Clock()
    b = breaker(clock, threshold=3)
    for _ in range(3):
        fail(b)
    clock.now += 31
    fail(b)  # the probe
    clock.now += 29
    with pytest.raises(Refused) as refused:
        succeed(b)
    assert refused.value.retry_after == 1


def test_errors_that_are_not_the_clusters_fault_do_not_count():
    clock = Clock()
    b = breaker(clock, threshold=1)
    with pytest.raises(KeyError):
        with b.call():
            raise KeyError("a bug of ours")
    assert not b.is_open
    succeed(b)


def test_a_call_beyond_the_in_flight_cap_is_refused_at_once_and_costs_no_failure():
    clock = Clock()
    b = breaker(clock, threshold=1, max_in_flight=2)
    with b.call(), b.call():
        with pytest.raises(Refused) as refused:
            succeed(b)
        assert refused.value.retry_after == 1
    assert not b.is_open
    succeed(b)
