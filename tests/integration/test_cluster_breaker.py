"""A sick cluster costs its users fast 503s, not a CLUSTER_TIMEOUT wait each, and costs the others nothing.

Per container and cluster, after CLUSTER_BREAKER_FAILURES consecutive failures the service stops
asking the cluster for CLUSTER_BREAKER_COOLDOWN seconds (503 with Retry-After at once), then lets
one probe through. "At once" is read off the fake API server, which records every request it gets:
while the breaker is open, none arrives.
"""
from __future__ import annotations

import threading
import time

import pytest

from chalicelib import clusters
from tests.conftest import DashboardFrontend, assert_unavailable, login_ok, write_registry

pytestmark = pytest.mark.usefixtures("healthy")

COOLDOWN = 1


@pytest.fixture
def start(configure, secrets_client, secret_id, tmp_path, cluster_a, cluster_b):
    def start_service(**env) -> tuple[DashboardFrontend, DashboardFrontend]:
        registry = write_registry(
            tmp_path / "clusters.json", [cluster_a.registry_entry(), cluster_b.registry_entry()], default=cluster_a.name
        )
        client = configure(
            KEY_SECRET_ID=secret_id, CLUSTERS_FILE=registry, CLUSTER_TIMEOUT=1,
            CLUSTER_BREAKER_FAILURES=2, CLUSTER_BREAKER_COOLDOWN=COOLDOWN, **env,
        )
        return DashboardFrontend(client), DashboardFrontend(client, f"/clusters/{cluster_b.name}")
    return start_service


@pytest.mark.parametrize("fault", ["500", "hang"])
def test_the_breaker_opens_answers_at_once_and_recovers_with_one_probe(start, cluster_a, cluster_b, fault):
    frontend, other = start()
    token = cluster_a.login_token()
    login_ok(frontend, token)  # warm: keys fetched, connection pooled
    cluster_a.server.set_fault(fault)
    for _ in range(2):
        assert_unavailable(frontend.login(token))  # each of these did ask the cluster
    asked = len(cluster_a.server.requests)

    for _ in range(5):
        response = frontend.login(token)
        assert_unavailable(response)
        assert int(response.headers["Retry-After"]) <= COOLDOWN
    assert len(cluster_a.server.requests) == asked  # open: the cluster was not asked at all
    login_ok(other, cluster_b.login_token())  # the other cluster never noticed

    cluster_a.server.set_fault(None)
    time.sleep(COOLDOWN + 0.2)
    login_ok(frontend, token)  # the probe
    login_ok(frontend, token)  # closed again
    assert cluster_a.server.review_count >= 2


def test_a_failed_probe_opens_the_breaker_again(start, cluster_a):
    frontend, _ = start()
    token = cluster_a.login_token()
    login_ok(frontend, token)
    cluster_a.server.set_fault("503")
    for _ in range(2):
        assert_unavailable(frontend.login(token))
    time.sleep(COOLDOWN + 0.2)
    asked = len(cluster_a.server.requests)
    assert_unavailable(frontend.login(token))  # the probe, which fails
    assert len(cluster_a.server.requests) == asked + 1
    assert_unavailable(frontend.login(token))  # open again: not sent
    assert len(cluster_a.server.requests) == asked + 1


def test_a_refusal_about_the_token_is_not_a_failure(start, cluster_a):
    """A cluster that answers "not authenticated" is working: any number of those keep the breaker closed."""
    frontend, _ = start()
    cluster_a.server.create_service_account("default", "gone")
    token = cluster_a.server.issue_token("default", "gone")
    cluster_a.server.delete_service_account("default", "gone")
    for _ in range(4):
        assert frontend.login(token).status_code == 200
    login_ok(frontend, cluster_a.login_token())


def test_requests_beyond_the_in_flight_cap_are_refused_at_once(cluster_a):
    """The cap, seen from a container serving requests on several threads (as `chalice local` does)."""
    registry = clusters.parse_registry(
        "test", __import__("json").dumps({"clusters": [cluster_a.registry_entry()]}), "/"
    )
    cluster = registry.get(None)
    reviewer = clusters.Reviewer(timeout=5, secrets_client=lambda: None, failure_threshold=5, cooldown=30,
                                 max_in_flight=1)
    token = cluster_a.login_token()
    reviewer.review(cluster, token)  # connected
    cluster_a.server.set_fault("hang")
    outcomes = []
    first = threading.Thread(target=lambda: outcomes.append(_outcome(reviewer, cluster, token)))
    first.start()
    deadline = time.monotonic() + 5
    while cluster_a.server.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        with pytest.raises(clusters.ClusterUnavailable) as refused:
            reviewer.review(cluster, token)
        assert refused.value.retry_after == 1
        assert cluster_a.server.in_flight == 1  # the second never reached the cluster
    finally:
        cluster_a.server.set_fault(None)
        first.join(timeout=10)
    assert outcomes == ["ok"]


def _outcome(reviewer, cluster, token) -> str:
    try:
        reviewer.review(cluster, token)
        return "ok"
    except clusters.ClusterUnavailable:
        return "unavailable"
