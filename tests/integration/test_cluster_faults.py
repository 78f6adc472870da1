"""A Kubernetes API server that cannot answer: every way it fails ends in a bounded 503 and no
token, and one failing cluster never slows or fails the others.

Clusters are tests/fakes' TLS API servers, spoken to by the real kubernetes client with the
service's own reviewer credentials; CLUSTER_TIMEOUT is 1 s throughout.

Concurrency: chalice.test.Client is not safe to share between threads (each request rebinds the
process-wide os.environ, and the Chalice app keeps the request in one attribute,
app.current_request), and Lambda never runs two requests in one container anyway. So each
"container" below is its own copy of app.py (its own Chalice app, its own Service, its own
kubernetes ApiClient per cluster), driven through chalice's LocalGateway, which builds API Gateway
proxy events and calls the app's Lambda handler. Containers run side by side in threads, one
request at a time each, as Lambda runs them.
"""
from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os
import socket
import threading
import time

import pytest
from chalice.config import Config
from chalice.local import LocalGateway

from tests.conftest import ROOT, DashboardFrontend, assert_unavailable, login_ok, write_registry

pytestmark = pytest.mark.usefixtures("healthy")

CLUSTER_TIMEOUT = 1.0
BOUND = 5.0  # a failing cluster's answer comes within this, whatever the failure
FAULTS = ["down", "hang", "500", "503", "429", "reset", "forbidden-reviewer", "unknown-reviewer"]


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture
def reviewer(cluster_a, tmp_path):
    """A reviewer credential of this test's own on cluster A, so revoking it touches no other test."""
    token = cluster_a.server.new_reviewer()
    path = tmp_path / "reviewer-token"
    path.write_text(token)
    yield token, str(path)
    cluster_a.server.remove_reviewer(token)


@pytest.fixture
def registry_file(tmp_path, cluster_a, cluster_b, reviewer):
    def write(server: str | None = None) -> str:
        entry_a = {**cluster_a.registry_entry(), "reviewer": {"tokenFile": reviewer[1]}}
        if server:
            entry_a["server"] = server
        return write_registry(
            tmp_path / "clusters.json", [entry_a, cluster_b.registry_entry()], default=cluster_a.name
        )
    return write


@pytest.fixture
def start_service(configure, secrets_client, secret_id, registry_file):
    def start(server: str | None = None, **env) -> DashboardFrontend:
        client = configure(
            KEY_SECRET_ID=secret_id, CLUSTERS_FILE=registry_file(server), CLUSTER_TIMEOUT=CLUSTER_TIMEOUT, **env
        )
        return DashboardFrontend(client)
    return start


@pytest.fixture
def dead_server(request):
    """An address where an API server should be, in one of two dead states.

    "silent": the TCP connection is accepted (by the kernel) and then nothing, not even TLS.
    "unreachable": SYNs go unanswered, as behind a firewall that drops (the listen backlog is
    filled and nobody accepts; Linux then drops new SYNs).
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    fillers = []
    if request.param == "silent":
        listener.listen(64)
    else:
        listener.listen(0)
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.1)
        with socket.socket() as probe:
            probe.settimeout(0.3)
            try:
                probe.connect(("127.0.0.1", port))
                reachable = True
            except OSError:
                reachable = False
        if reachable:
            pytest.skip("this kernel does not drop SYNs on a full listen backlog")
    yield f"https://127.0.0.1:{port}"
    for sock in fillers + [listener]:
        sock.close()


def apply_fault(fault: str, cluster, reviewer_token: str) -> None:
    if fault == "down":
        cluster.server.stop()
    elif fault == "forbidden-reviewer":
        cluster.server.add_reviewer(reviewer_token, allowed=False)  # RBAC taken away: 403
    elif fault == "unknown-reviewer":
        cluster.server.remove_reviewer(reviewer_token)  # credential revoked: 401
    else:
        cluster.server.set_fault(fault)


def clear_fault(cluster, reviewer_token: str) -> None:
    cluster.server.set_fault(None)
    if not cluster.server.running:
        cluster.server.start()
    cluster.server.add_reviewer(reviewer_token, allowed=True)


# ---------------------------------------------------------------- each failure: bounded 503, no token

@pytest.mark.parametrize("fault", FAULTS)
def test_a_failing_cluster_answers_a_login_with_503_within_the_timeout(start_service, cluster_a, reviewer, fault):
    frontend = start_service()
    token = cluster_a.login_token()
    login_ok(frontend, token)  # a warm container: key cached, a keep-alive connection to the cluster pooled
    reviews = cluster_a.server.review_count
    apply_fault(fault, cluster_a, reviewer[0])

    started = time.monotonic()
    response = frontend.login(token)
    elapsed = time.monotonic() - started

    assert_unavailable(response)
    assert elapsed < BOUND
    if fault == "hang":
        assert elapsed >= 0.9 * CLUSTER_TIMEOUT  # what ended it was the timeout
    if fault in ("down", "reset"):
        assert cluster_a.server.review_count == reviews  # no answer was ever given

    clear_fault(cluster_a, reviewer[0])
    login_ok(frontend, token)  # the same container recovers by itself


def test_a_redirected_token_review_is_not_followed(start_service, cluster_a):
    """A TokenReview carries the token under review in its body, and a 307 has a following client send
    that body again to wherever Location says. The Location here is on the cluster's own address (so
    the client's TLS trust would let the request through): it must never be asked for."""
    frontend = start_service()
    token = cluster_a.login_token()
    login_ok(frontend, token)
    cluster_a.server.redirect_location = cluster_a.server.url + "/elsewhere"
    cluster_a.server.set_fault("redirect")
    try:
        assert_unavailable(frontend.login(token))
    finally:
        cluster_a.server.set_fault(None)
    assert [path for _, path, _ in cluster_a.server.requests if path == "/elsewhere"] == []
    login_ok(frontend, token)


@pytest.mark.parametrize("fault", FAULTS)
def test_a_failing_cluster_answers_a_reviewing_refresh_with_503_and_keeps_the_session(
    start_service, cluster_a, reviewer, fault
):
    frontend = start_service(REVIEW_INTERVAL=0)  # every refresh asks the cluster
    session = login_ok(frontend, cluster_a.login_token())
    apply_fault(fault, cluster_a, reviewer[0])

    started = time.monotonic()
    response = frontend.refresh(session)
    elapsed = time.monotonic() - started

    assert_unavailable(response)  # not MSG_TOKEN_EXPIRED_ERROR: an outage logs nobody out
    assert elapsed < BOUND

    clear_fault(cluster_a, reviewer[0])
    assert frontend.refresh(session).status_code == 200


@pytest.mark.parametrize("dead_server", ["silent", "unreachable"], indirect=True)
def test_a_dead_address_answers_503_within_the_timeout(start_service, cluster_a, cluster_b, dead_server):
    frontend = start_service(server=dead_server)
    login_ok(DashboardFrontend(frontend.client, f"/clusters/{cluster_b.name}"), cluster_b.login_token())  # warm
    csrf = frontend.csrf("login")

    started = time.monotonic()
    response = frontend.post("/api/v1/login", {"token": cluster_a.login_token()}, None, {"X-CSRF-TOKEN": csrf})
    elapsed = time.monotonic() - started

    assert_unavailable(response)
    # silent: one read timeout; unreachable: two connect timeouts (the client retries a connect once)
    assert 0.9 * CLUSTER_TIMEOUT <= elapsed < BOUND


# ---------------------------------------------------------------- one cluster down, the others unaffected

_copies = itertools.count()


class Container:
    """One Lambda container: its own copy of app.py, invoked through API Gateway proxy events."""

    def __init__(self):
        spec = importlib.util.spec_from_file_location(f"_container_app_{next(_copies)}", os.path.join(ROOT, "app.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # a fresh Chalice app and a fresh auth() cache: a cold container
        self._gateway = LocalGateway(module.app, Config.create())

    def request(self, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, bytes]:
        answer = self._gateway.handle_request(method=method, path=path, headers=headers or {}, body=body)
        text = answer["body"]
        return answer["statusCode"], text.encode() if isinstance(text, str) else (text or b"")

    def login(self, cluster: str, token: str) -> tuple[int, dict | bytes, float]:
        """The frontend's login (csrftoken, then POST); the POST is timed. Returns (status, body, seconds)."""
        prefix = f"/clusters/{cluster}"
        status, body = self.request("GET", f"{prefix}/api/v1/csrftoken/login")
        assert status == 200, body
        headers = {"Content-Type": "application/json", "X-CSRF-TOKEN": json.loads(body)["token"]}
        started = time.monotonic()
        status, body = self.request("POST", f"{prefix}/api/v1/login", json.dumps({"token": token}).encode(), headers)
        elapsed = time.monotonic() - started
        return status, json.loads(body) if status == 200 else body, elapsed


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


@pytest.mark.parametrize("trouble", ["hang", "killed"])
def test_one_cluster_in_trouble_never_slows_or_fails_the_others(
    configure, secrets_client, secret_id, tmp_path, cluster_a, cluster_b, trouble
):
    registry = write_registry(tmp_path / "clusters.json", [cluster_a.registry_entry(), cluster_b.registry_entry()])
    configure(KEY_SECRET_ID=secret_id, CLUSTERS_FILE=registry, CLUSTER_TIMEOUT=CLUSTER_TIMEOUT)
    token_a, token_b = cluster_a.login_token(), cluster_b.login_token()
    b_containers = [Container() for _ in range(4)]
    a_containers = [Container() for _ in range(2)]
    mixed = Container()  # serves A and B in turn: an A timeout must not slow its next B login
    for container in b_containers + [mixed]:
        assert container.login(cluster_b.name, token_b)[0] == 200  # warm: key fetched, connection pooled
    for container in a_containers + [mixed]:
        assert container.login(cluster_a.name, token_a)[0] == 200

    cluster_a.server.set_fault("hang")
    killer = threading.Timer(0.3, cluster_a.server.stop) if trouble == "killed" else None
    a_done = threading.Event()
    lock = threading.Lock()
    a_results: list[tuple[int, object, float, float]] = []  # (status, body, seconds, started at)
    b_results: list[tuple[int, object, float, float]] = []

    def timed_login(results, container, cluster, token):
        started_at = time.monotonic()
        outcome = container.login(cluster, token)
        with lock:
            results.append((*outcome, started_at))

    def a_worker(container):
        for _ in range(2):
            timed_login(a_results, container, cluster_a.name, token_a)

    def b_worker(container):
        for _ in range(200):  # bounded; paced to last as long as the A requests do
            timed_login(b_results, container, cluster_b.name, token_b)
            if a_done.wait(0.02):
                return

    def mixed_worker():
        for _ in range(2):
            timed_login(a_results, mixed, cluster_a.name, token_a)
            timed_login(b_results, mixed, cluster_b.name, token_b)

    a_threads = [threading.Thread(target=a_worker, args=(c,)) for c in a_containers]
    a_threads.append(threading.Thread(target=mixed_worker))
    b_threads = [threading.Thread(target=b_worker, args=(c,)) for c in b_containers]
    started = time.monotonic()
    for thread in a_threads + b_threads:
        thread.start()
    if killer:
        killer.start()
    for thread in a_threads:
        thread.join(timeout=20)
    a_over = time.monotonic()
    a_done.set()
    for thread in b_threads:
        thread.join(timeout=20)
    if killer:
        killer.join()
    assert not any(thread.is_alive() for thread in a_threads + b_threads)

    assert len(a_results) == 6
    for status, body, elapsed, _ in a_results:
        assert status == 503, body
        assert elapsed < BOUND
    if trouble == "hang":
        assert min(elapsed for _, _, elapsed, _ in a_results) >= 0.9 * CLUSTER_TIMEOUT  # they did wait
    for status, body, _, _ in b_results:
        assert status == 200, body
        assert body["name"] == "admin-user" and body["errors"] == [] and body["jweToken"]
    during_a = [elapsed for _, _, elapsed, at in b_results if started <= at < a_over]
    assert len(during_a) >= (40 if trouble == "hang" else 8)  # B kept being served while A was in trouble
    assert p99([elapsed for _, _, elapsed, _ in b_results]) < 1.0
    assert a_over - started < 15
