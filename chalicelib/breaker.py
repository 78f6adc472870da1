"""How much of one cluster's time a container may take: a cap on requests in flight and a circuit breaker.

A cluster that is down or hanging would otherwise cost every login a CLUSTER_TIMEOUT wait, and
every waiting request a Lambda container. Per container and cluster:

- at most `max_in_flight` requests to the cluster at once; one more is refused at once (busy);
- after `failure_threshold` consecutive failures (no answer, a timeout, a 5xx, a 429, the reviewer
  refused) the breaker opens: for `cooldown` seconds nothing is sent and callers are refused at once,
  told when to retry;
- then one request goes through as a probe, the others still refused; its success closes the
  breaker, its failure opens it for another cooldown.

What counts as a failure is the caller's choice (`failures`): for a cluster, no answer or an
answer that is not about the token; an answer about a token (authenticated or not) is a success.
A refusal raises Refused, which says when to try again.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

logger = logging.getLogger(__name__)


class Refused(Exception):
    """Not sent: the breaker is open, or too many requests are in flight. The message is for the log."""

    def __init__(self, message: str, retry_after: int, kind: str = "circuit_open"):
        super().__init__(message)
        self.retry_after = retry_after
        self.kind = kind  # "circuit_open" or "busy" (the in-flight cap)


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        failure_threshold: int,
        cooldown: float,
        max_in_flight: int,
        failures: tuple[type[BaseException], ...],
        clock: Callable[[], float] = time.monotonic,
    ):
        self._name = name
        self._failure_threshold = failure_threshold
        self._cooldown = cooldown
        self._max_in_flight = max_in_flight
        self._counted_failures = failures
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until: float | None = None  # None: closed
        self._probing = False
        self._in_flight = 0

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._open_until is not None

    @contextmanager
    def call(self) -> Iterator[None]:
        """Run one request under the breaker, or raise Refused at once."""
        probe = self._enter()
        try:
            yield
        except BaseException as error:
            # anything else is not the cluster's fault (a bug of ours, a configuration error)
            self._leave(probe, failed=isinstance(error, self._counted_failures))
            raise
        self._leave(probe, failed=False)

    def _enter(self) -> bool:
        with self._lock:
            if self._open_until is not None:
                wait = self._open_until - self._clock()
                if wait > 0 or self._probing:
                    raise Refused(
                        f"cluster {self._name}: circuit open after {self._failures} consecutive failures; "
                        "not asking it until the cooldown ends",
                        retry_after=max(1, math.ceil(wait)),
                    )
            if self._in_flight >= self._max_in_flight:
                raise Refused(
                    f"cluster {self._name}: {self._in_flight} requests already in flight from this container",
                    retry_after=1,
                    kind="busy",
                )
            self._in_flight += 1
            probe = self._probing = self._open_until is not None
            return probe

    def _leave(self, probe: bool, failed: bool) -> None:
        with self._lock:
            self._in_flight -= 1
            if probe:
                self._probing = False
            if not failed:
                if self._open_until is not None:
                    logger.info("cluster %s: circuit closed, the probe succeeded", self._name)
                self._failures, self._open_until = 0, None
                return
            self._failures += 1
            if probe or self._failures >= self._failure_threshold:
                if self._open_until is None or probe:
                    logger.warning(
                        "cluster %s: circuit open for %.0f s after %d consecutive failures",
                        self._name, self._cooldown, self._failures,
                    )
                self._open_until = self._clock() + self._cooldown
