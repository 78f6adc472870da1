"""A day of the service as an operator reads it: the audit lines, the access lines and the EMF metrics.

Everything goes through the Lambda entry point: each "container" is its own copy of app.py (a cold
Chalice app, Service, key cache and breakers), invoked with the API Gateway REST proxy events and the
Lambda context of tests/fakes/lambda_container.py, one request at a time. The log is read as the
service writes it (logs.service_handler: JSON lines, scrubbed, at LOG_LEVEL=INFO), the
metrics embedded in the access lines (EMF: CloudWatch Logs reads them from the same lines).

The day runs against real parts: the fake TLS clusters (one of them stopped, faulted, its reviewer
revoked and refused, another reached with the wrong CA), a moto server of this module's own that is
stopped in the evening (the shared one is never touched), a rotation by the rotation function's own
steps. Each step adds what it must produce to `expected`; the metrics must then say exactly that.
Counts are compared; nothing is timed.
"""
from __future__ import annotations

import importlib.util
import itertools
import json
import os
import socket
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone

import boto3
import pytest

from chalicelib import keys, rotation, service, sessions
from demo.kube_apiserver import DEFAULT_ISSUER, generate_rsa_key, key_id, sign_jwt
from tests.conftest import ROOT, UNAUTHORIZED_LOGIN, with_kid, write_registry
from tests.fakes.lambda_container import FUNCTION_NAME, LambdaContext, api_gateway_event
from tests.leak_guard import secrets_in

pytestmark = pytest.mark.usefixtures("healthy")

# docs/observability.md, the contract the alarms are built on: unit and dimension sets per metric.
SERVICE = {"service": "dashboard-auth"}
CONTRACT = {
    "Logins": ("Count", [{"service", "cluster", "outcome"}, {"service"}]),
    "LoginRefusals": ("Count", [{"service", "cluster", "reason"}, {"service"}]),
    "Refreshes": ("Count", [{"service", "cluster", "outcome"}, {"service"}]),
    "TokenReviewLatency": ("Milliseconds", [{"service", "cluster"}]),
    "ClusterFailures": ("Count", [{"service", "cluster", "cause"}, {"service"}]),
    "SecretsManagerCalls": ("Count", [{"service"}]),
    "SecretsManagerErrors": ("Count", [{"service"}]),
    "UnknownKids": ("Count", [{"service"}]),
    "ColdStart": ("Count", [{"function_name", "service"}]),
}
VALUES = {
    "outcome": {"accepted", "refused", "unavailable", "renewed", "expired", "lifetime", "revoked", "invalid"},
    "reason": {"not_a_jwt", "forged", "unauthenticated", "not_a_service_account", "audience_mismatch", "deleted"},
    "cause": {"certificate", "connection_refused", "timeout", "reviewer_unauthorized", "reviewer_forbidden",
              "server_error", "throttled", "circuit_open", "busy", "other"},
}
DETAILED = {"Logins", "LoginRefusals", "Refreshes", "ClusterFailures"}  # written twice: detailed and total


# ---------------------------------------------------------------- the parts

@pytest.fixture
def moto(own_moto):
    own_moto.stop()  # a fresh, empty Secrets Manager: the day starts with no key at all
    own_moto.start()
    yield own_moto
    own_moto.stop()
    own_moto.start()


@pytest.fixture
def staging_reviewer(cluster_b, tmp_path):
    """A reviewer credential of this test's own on cluster B, revoked and refused during the day."""
    token = cluster_b.server.new_reviewer()
    path = tmp_path / "staging-reviewer"
    path.write_text(token)
    yield token, str(path)
    cluster_b.server.remove_reviewer(token)


_copies = itertools.count()


class LambdaContainer:
    """One Lambda container running the app: a fresh copy of app.py, invoked with API Gateway events."""

    def __init__(self):
        spec = importlib.util.spec_from_file_location(f"_day_app_{next(_copies)}", os.path.join(ROOT, "app.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self._handler = module.app  # the deployed handler is app.app
        self.invocations = 0

    def invoke(self, method: str, route: str, cluster: str | None, headers: dict | None = None,
               body: dict | None = None, client: tuple[str, str] = ("198.51.100.7", "Mozilla/5.0 (day)"),
               params: dict | None = None):
        prefix, params = ("/clusters/{cluster}", {"cluster": cluster, **(params or {})}) if cluster else ("", params or {})
        sent = {"User-Agent": client[1], **(headers or {})}
        if body is not None:
            sent["Content-Type"] = "application/json"
        event = api_gateway_event(method, prefix + route, params, sent, json.dumps(body) if body is not None else None)
        event["requestContext"]["identity"] = {"sourceIp": client[0], "userAgent": client[1]}
        self.invocations += 1
        answer = self._handler(event, LambdaContext())
        text = answer["body"]
        if answer.get("headers", {}).get("Content-Type", "").startswith("application/json"):
            return answer["statusCode"], json.loads(text)
        return answer["statusCode"], text

    def csrf(self, action: str, cluster: str | None = None) -> str:
        status, body = self.invoke("GET", "/api/v1/csrftoken/{action}", cluster, params={"action": action})
        assert status == 200, body
        return body["token"]

    def login(self, token: str, cluster: str | None = None, csrf: str | None = None, **kwargs):
        csrf = csrf or self.csrf("login", cluster)
        return self.invoke("POST", "/api/v1/login", cluster, {"X-CSRF-TOKEN": csrf}, {"token": token}, **kwargs)

    def refresh(self, session: str, cluster: str | None = None, **kwargs):
        csrf = self.csrf("token", cluster)
        return self.invoke("POST", "/api/v1/token/refresh", cluster, {"X-CSRF-TOKEN": csrf}, {"jweToken": session},
                           **kwargs)




def sealed_by_us(admin, secret_id: str, sa_token: str, cluster: str, **times: timedelta) -> str:
    """A session sealed with the current key, with chosen times: what a browser holding an old session
    (or an in-cluster Dashboard sharing the key) presents."""
    answer = admin.get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")
    key = keys.parse_secret_value(answer["VersionId"], answer["SecretString"])
    now = datetime.now(timezone.utc).replace(microsecond=0)
    iat, exp, auth = (now + times[name] for name in ("iat", "exp", "auth_time"))
    return sessions.mint(sa_token, sessions.Claims(iat, exp, cluster, auth, iat), key.public, key.kid)


class SecretsManagerCounter:
    """Counts the key store's Secrets Manager calls from botocore's own events, independently of the
    service's metrics: one before-call per API call (retries are inside it), a failure after them."""

    EXPECTED = {"ResourceNotFoundException", "ResourceExistsException", "InvalidParameterException"}

    def __init__(self, client):
        self.calls = self.errors = 0
        client.meta.events.register("before-call.secrets-manager", self._call)
        client.meta.events.register("after-call.secrets-manager", self._answered)
        client.meta.events.register("after-call-error.secrets-manager", self._failed)

    def _call(self, **_):
        self.calls += 1

    def _answered(self, http_response, parsed, **_):
        if http_response.status_code >= 300 and parsed.get("Error", {}).get("Code") not in self.EXPECTED:
            self.errors += 1

    def _failed(self, **_):
        self.errors += 1


# ---------------------------------------------------------------- reading what the service wrote

def json_lines(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        parsed.append(json.loads(line))  # every line is one JSON object, or this fails
    return parsed


def emf_series(blobs: list[dict]) -> Counter:
    """(metric, {dimension: value} as a sorted tuple) -> the sum CloudWatch would count, checked against the
    contract on the way: namespace, units, dimension sets, dimension values. Each dimension set of a
    directive is a series of its own, as CloudWatch reads EMF."""
    series: Counter = Counter()
    for blob in blobs:
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            assert directive["Namespace"] == "DashboardAuth"
            for dimension_names in directive["Dimensions"]:
                dimensions = {name: blob[name] for name in dimension_names}
                assert dimensions.get("service") == "dashboard-auth", blob
                for name, value in dimensions.items():
                    assert name not in VALUES or value in VALUES[name], (name, value)
                for metric in directive["Metrics"]:
                    unit, dimension_sets = CONTRACT[metric["Name"]]
                    assert metric["Unit"] == unit, metric
                    assert set(dimension_names) in dimension_sets, (metric["Name"], dimension_names)
                    values = blob[metric["Name"]]
                    values = values if isinstance(values, list) else [values]
                    key = (metric["Name"], tuple(sorted(dimensions.items())))
                    series[key] += sum(values) if unit == "Count" else len(values)
    return series


def emf_blobs(log_text: str) -> list[dict]:
    """The lines that carry metrics: every access line of a request that counted any, and a metric's own line."""
    return [line for line in json_lines(log_text) if "_aws" in line]


def by_metric(series: Counter, name: str, total: bool = False) -> Counter:
    """One metric's series, keyed by its detailed dimensions (service left out); total: the {service} series."""
    found: Counter = Counter()
    for (metric, dimensions), value in series.items():
        if metric != name:
            continue
        rest = tuple((k, v) for k, v in dimensions if k != "service")
        if bool(rest) != total:
            found[rest] += value
    return found


def series_key(**dimensions) -> tuple:
    return tuple(sorted(dimensions.items()))


# ---------------------------------------------------------------- the day

def test_a_day_of_logins_refusals_outages_and_a_rotation_reads_right_in_the_log_and_the_metrics(
    configure, moto, service_log, staging_reviewer, cluster_a, cluster_b, tmp_path, monkeypatch, capsys, request,
):
    secret_id = f"dashboard-auth/day/{uuid.uuid4().hex}"
    admin = boto3.client("secretsmanager", endpoint_url=moto.url, region_name="us-east-1")
    static_person = sign_jwt({"alg": "RS256", "kid": "person"}, {"sub": "jane"}, generate_rsa_key())
    cluster_a.server.add_static_user_token(static_person, "jane@example.com", groups=["people"])
    registry = write_registry(tmp_path / "clusters.json", [
        cluster_a.registry_entry(),
        {**cluster_b.registry_entry(), "reviewer": {"tokenFile": staging_reviewer[1]}},
        {**cluster_a.registry_entry(), "name": "review-only", "verifyLocally": False},
        {**cluster_a.registry_entry(), "name": "audience-check", "audiences": ["dashboard-auth"]},
        {**cluster_a.registry_entry(), "name": "wrong-ca", "certificateAuthorityData": cluster_b.server.ca_data},
    ], default=cluster_a.name)
    configure(
        KEY_SECRET_ID=secret_id, CLUSTERS_FILE=registry, AWS_ENDPOINT_URL_SECRETS_MANAGER=moto.url,
        CLUSTER_TIMEOUT=1, KEY_CACHE_TTL=0, REVIEW_INTERVAL=0, CLUSTER_BREAKER_FAILURES=3,
        CLUSTER_BREAKER_COOLDOWN=60, LOG_LEVEL="INFO",
    )
    monkeypatch.setattr(keys, "mint_delay", lambda: 0.0)  # a rotation's key seals at once
    calls = SecretsManagerCounter(service.secrets_manager())
    reviews_before = cluster_a.server.review_count, cluster_b.server.review_count
    expected: Counter = Counter()  # (metric, detailed dimensions) -> count, as the script goes
    refused_logins, answers = [], []

    def login_ok(container, token, cluster=None) -> str:
        status, body = container.login(token, cluster)
        assert status == 200 and body["errors"] == [] and body["jweToken"], body
        expected["Logins", series_key(cluster=cluster or "prod-eu", outcome="accepted")] += 1
        return body["jweToken"]

    def login_refused(container, token, cluster, reason):
        status, body = container.login(token, cluster)
        refused_logins.append((status, body))
        expected["Logins", series_key(cluster=cluster, outcome="refused")] += 1
        expected["LoginRefusals", series_key(cluster=cluster, reason=reason)] += 1

    def login_unavailable(container, token, cluster, cause, csrf=None):
        status, body = container.login(token, cluster, csrf=csrf)
        assert status == 503, body
        expected["Logins", series_key(cluster=cluster, outcome="unavailable")] += 1
        if cause:
            expected["ClusterFailures", series_key(cluster=cluster, cause=cause)] += 1

    def refresh(container, session, cluster, outcome, status=200) -> str | None:
        answer_status, body = container.refresh(session, cluster)
        assert answer_status == status, body
        answers.append(body)
        expected["Refreshes", series_key(cluster=cluster or "prod-eu", outcome=outcome)] += 1
        return body["jweToken"] if status == 200 else body

    # ---- morning: a cold container; the very first login makes the key
    morning = LambdaContainer()
    alice_token = cluster_a.login_token("day", "alice")
    alice = login_ok(morning, alice_token)
    first_kid = sessions.parse(alice).kid
    bob = login_ok(morning, cluster_b.login_token("day", "bob"), "staging-us")
    alice = refresh(morning, alice, None, "renewed")
    refresh(morning, bob, "staging-us", "renewed")
    morning_session = alice  # kept in a drawer until two rotations have passed

    # ---- refused logins, one of each class; the client is told the same thing each time
    login_refused(morning, "hello, let me in", "prod-eu", "not_a_jwt")
    login_refused(morning, cluster_a.server.issue_token("day", "alice", signing_key=generate_rsa_key()),
                  "prod-eu", "forged")
    login_refused(morning, cluster_a.login_token("day", "alice", expires_in=-60), "prod-eu", "forged")
    gone = cluster_a.login_token("day", "gone")
    cluster_a.server.delete_service_account("day", "gone")
    login_refused(morning, gone, "prod-eu", "deleted")
    forged_for_review = sign_jwt({"alg": "RS256", "kid": "x"}, {"sub": "system:serviceaccount:day:alice"},
                                 generate_rsa_key())
    login_refused(morning, forged_for_review, "review-only", "unauthenticated")
    login_refused(morning, static_person, "review-only", "not_a_service_account")
    login_refused(morning, cluster_a.login_token("day", "alice"), "audience-check", "audience_mismatch")
    assert all(answer == (200, UNAUTHORIZED_LOGIN) for answer in refused_logins), refused_logins

    # ---- refused refreshes
    refresh(morning, with_kid(alice, "made-up-kid"), None, "invalid", status=401)
    refresh(morning, alice, "staging-us", "invalid", status=401)  # prod-eu's session on another cluster
    refresh(morning, sealed_by_us(admin, secret_id, alice_token, "prod-eu", iat=-timedelta(minutes=1),
                                  exp=timedelta(minutes=10), auth_time=-timedelta(hours=13)),
            None, "lifetime", status=401)
    refresh(morning, sealed_by_us(admin, secret_id, alice_token, "prod-eu", iat=-timedelta(minutes=20),
                                  exp=-timedelta(minutes=5), auth_time=-timedelta(minutes=20)),
            None, "expired", status=401)
    temporary = login_ok(morning, cluster_a.login_token("day", "temporary"))
    temporary = refresh(morning, temporary, None, "renewed")
    cluster_a.server.delete_service_account("day", "temporary")
    refresh(morning, temporary, None, "revoked", status=401)

    # ---- staging-us has a bad day
    bob_token = cluster_b.login_token("day", "bob")
    for fault, cause in (("500", "server_error"), ("429", "throttled")):
        cluster_b.server.set_fault(fault)
        login_unavailable(morning, bob_token, "staging-us", cause)
        cluster_b.server.set_fault(None)
    cluster_b.server.add_reviewer(staging_reviewer[0], allowed=False)  # its RBAC taken away: 403
    login_unavailable(morning, bob_token, "staging-us", "reviewer_forbidden")
    cluster_b.server.remove_reviewer(staging_reviewer[0])  # the credential revoked: 401
    login_unavailable(morning, bob_token, "staging-us", "reviewer_unauthorized")
    cluster_b.server.add_reviewer(staging_reviewer[0], allowed=True)
    login_ok(morning, bob_token, "staging-us")
    cluster_b.server.stop()  # an outage: the breaker opens after 3 consecutive failures
    for _ in range(3):
        login_unavailable(morning, bob_token, "staging-us", "connection_refused")
    for _ in range(2):
        login_unavailable(morning, bob_token, "staging-us", "circuit_open")
    cluster_b.server.start()
    # a registry entry with another cluster's CA: a certificate failure, not "unreachable"
    login_unavailable(morning, cluster_a.login_token("day", "alice"), "wrong-ca", "certificate")

    # ---- afternoon: two rotations by the rotation function's steps; sessions live on, the oldest expires
    second_kid = rotation.rotate_now(admin, secret_id)
    alice = refresh(morning, alice, None, "renewed")
    assert sessions.parse(alice).kid == second_kid
    third_kid = rotation.rotate_now(admin, secret_id)
    alice = refresh(morning, alice, None, "renewed")
    assert sessions.parse(alice).kid == third_kid
    body = refresh(morning, morning_session, None, "expired", status=401)  # its key has retired
    assert body == "MSG_TOKEN_EXPIRED_ERROR\n"

    # ---- evening: Secrets Manager stops; the warm container carries on, a cold one cannot start
    csrf = morning.csrf("login")
    moto.stop()
    alice = refresh(morning, alice, None, "renewed")
    evening = LambdaContainer()
    login_unavailable(evening, alice_token, "prod-eu", None, csrf=csrf)

    # ================================================================ what the operator reads
    lines = json_lines(service_log.getvalue())
    emf = emf_blobs(service_log.getvalue())
    series = emf_series(emf)
    events = Counter(line.get("event") for line in lines)
    audit = [line for line in lines if line.get("logger") == "chalicelib.audit"]
    access = [line for line in lines if line.get("event") == "request"]

    # nothing secret anywhere: every secret the run registered (tokens, reviewer tokens, keys), in the
    # service's lines and in the metrics
    assert secrets_in(request.config, service_log.getvalue()) == []
    assert secrets_in(request.config, json.dumps(emf)) == []
    for text in (service_log.getvalue(), json.dumps(emf)):
        for secret in (alice_token, bob_token, gone, static_person, staging_reviewer[0], cluster_a.reviewer_token):
            assert secret not in text

    # one access line per invocation, and every line of an invocation carries its context
    assert len(access) == morning.invocations + evening.invocations
    assert all({"request_id", "route", "cold_start", "status", "outcome", "latency_ms"} <= set(line) for line in access)
    assert [line["cold_start"] for line in access].count(True) == 2  # each container's first invocation
    for line in lines:
        if line["logger"] != "chalicelib.rotation":  # the rotation function's steps, run by this test
            assert "request_id" in line and "route" in line, line  # the API logs nothing outside an invocation
    assert not [line for line in lines if not line["logger"].startswith("chalicelib") and line["level"] == "INFO"]

    # the audit events
    assert events["login_accepted"] == 4
    accepted = [line for line in audit if line["event"] == "login_accepted"]
    assert {(line["cluster"], line["namespace"], line["serviceaccount"]) for line in accepted} == {
        ("prod-eu", "day", "alice"), ("staging-us", "day", "bob"), ("prod-eu", "day", "temporary")}
    assert all(line["source_ip"] == "198.51.100.7" and line["user_agent"] == "Mozilla/5.0 (day)" for line in accepted)
    refusals = [line for line in audit if line["event"] == "login_refused"]
    assert Counter(line["reason"] for line in refusals) == {
        "not_a_jwt": 1, "forged": 2, "deleted": 1, "unauthenticated": 1, "not_a_service_account": 1,
        "audience_mismatch": 1}
    assert {line.get("check") for line in refusals if line["reason"] == "forged"} == {"unknown_key", "expired"}
    (mismatch,) = [line for line in refusals if line["reason"] == "audience_mismatch"]
    assert mismatch["token_audiences"] == [DEFAULT_ISSUER]
    assert mismatch["configured_audiences"] == ["dashboard-auth"]
    refresh_refusals = [line for line in audit if line["event"] == "refresh_refused"]
    assert Counter(line["reason"] for line in refresh_refusals) == {
        "unknown_key": 1, "other_cluster": 1, "lifetime": 1, "expired": 1, "revoked": 1, "retired_key": 1}
    (revoked,) = [line for line in refresh_refusals if line["reason"] == "revoked"]
    assert (revoked["namespace"], revoked["serviceaccount"], revoked["review"]) == ("day", "temporary", "deleted")
    (retired,) = [line for line in refresh_refusals if line["reason"] == "retired_key"]
    assert retired["kid"] == first_kid
    rotations = [(line["old_kid"], line["new_kid"]) for line in audit if line["event"] == "key_rotated"]
    assert rotations == [(first_kid, second_kid), (second_kid, third_kid)]
    (bootstrapped,) = [line for line in audit if line["event"] == "key_bootstrapped"]
    assert bootstrapped["kid"] == first_kid and bootstrapped["source"] == secret_id
    failures = [line for line in audit if line["event"] == "cluster_failure"]
    assert Counter((line["cluster"], line["cause"]) for line in failures) == {
        ("staging-us", "server_error"): 1, ("staging-us", "throttled"): 1, ("staging-us", "reviewer_forbidden"): 1,
        ("staging-us", "reviewer_unauthorized"): 1, ("staging-us", "connection_refused"): 3,
        ("staging-us", "circuit_open"): 2, ("wrong-ca", "certificate"): 1}
    (certificate,) = [line for line in failures if line["cause"] == "certificate"]
    assert certificate["detail"].startswith("TLS certificate not trusted: unable to get local issuer certificate")
    assert events["secrets_manager_failure"] == 2

    # the metrics: every per-cluster series as the script says, its total series the same sum
    for metric in DETAILED:
        wanted = Counter({dims: n for (name, dims), n in expected.items() if name == metric})
        assert by_metric(series, metric) == wanted, metric
        assert by_metric(series, metric, total=True) == Counter({(): sum(wanted.values())}), metric
    latency = by_metric(series, "TokenReviewLatency")
    reviews_a = cluster_a.server.review_count - reviews_before[0]
    reviews_b = cluster_b.server.review_count - reviews_before[1]
    assert sum(n for dims, n in latency.items() if dims != (("cluster", "staging-us"),)) == reviews_a
    assert latency[(("cluster", "staging-us"),)] == reviews_b
    assert by_metric(series, "UnknownKids", total=True) == Counter({(): 1})
    assert by_metric(series, "SecretsManagerCalls", total=True) == Counter({(): calls.calls})
    assert by_metric(series, "SecretsManagerErrors", total=True) == Counter({(): calls.errors}) == Counter({(): 2})
    cold = by_metric(series, "ColdStart")
    assert cold == Counter({(("function_name", FUNCTION_NAME),): 2})

    totals = {name: sum(by_metric(series, name, total=True).values()) for name in DETAILED}
    print(
        f"\n[a day] {len(access)} requests, {len(lines)} log lines, {len(emf)} EMF blobs; "
        f"Logins {totals['Logins']:.0f} ({dict(sorted(_last(by_metric(series, 'Logins'), 'outcome').items()))}), "
        f"LoginRefusals {dict(sorted(_last(by_metric(series, 'LoginRefusals'), 'reason').items()))}, "
        f"Refreshes {dict(sorted(_last(by_metric(series, 'Refreshes'), 'outcome').items()))}, "
        f"ClusterFailures {dict(sorted(_last(by_metric(series, 'ClusterFailures'), 'cause').items()))}, "
        f"TokenReviews {sum(latency.values()):.0f}, SecretsManagerCalls {calls.calls} (errors {calls.errors}), "
        f"UnknownKids 1, ColdStart 2; audit events {dict(sorted((k, v) for k, v in events.items() if k not in (None, 'request')))}"
    )


def _last(counts: Counter, dimension: str) -> dict:
    """Counts summed by one dimension's value (over clusters)."""
    summed: Counter = Counter()
    for dims, value in counts.items():
        summed[dict(dims)[dimension]] += int(value)
    return summed


# ---------------------------------------------------------------- causes, one by one

class ConnectionCounter:
    """A TCP relay in front of a cluster that counts the connections made to it (each TLS attempt is one)."""

    def __init__(self, upstream_port: int):
        self._upstream = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self._upstream), timeout=5)
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()


@pytest.fixture
def counted_cluster_a(cluster_a):
    relay = ConnectionCounter(cluster_a.server.port)
    yield relay
    relay.close()


def test_a_wrong_ca_is_one_certificate_failure_and_is_not_retried(
    configure, secrets_client, secret_id, tmp_path, cluster_a, cluster_b, counted_cluster_a, service_log, capsys
):
    entry = {**cluster_a.registry_entry(), "server": f"https://127.0.0.1:{counted_cluster_a.port}",
             "certificateAuthorityData": cluster_b.server.ca_data}
    configure(KEY_SECRET_ID=secret_id, CLUSTERS_FILE=write_registry(tmp_path / "c.json", [entry]), CLUSTER_TIMEOUT=1)
    container = LambdaContainer()

    status, body = container.login(cluster_a.login_token())

    assert status == 503, body
    assert counted_cluster_a.connections == 1  # a retry would fail the same way: none is made
    (failure,) = [line for line in json_lines(service_log.getvalue()) if line.get("event") == "cluster_failure"]
    assert failure["cause"] == "certificate"
    assert failure["detail"].startswith("TLS certificate not trusted")
    emf = emf_blobs(service_log.getvalue())
    assert by_metric(emf_series(emf), "ClusterFailures") == Counter({(("cause", "certificate"), ("cluster", "prod-eu")): 1})


@pytest.mark.parametrize("fault, cause, detail", [
    ("hang", "timeout", "no answer within the timeout"),
    ("reset", "other", "connection closed before an answer"),
])
def test_a_cluster_that_hangs_or_drops_the_connection_is_logged_by_its_cause(
    configure, secrets_client, secret_id, tmp_path, cluster_a, service_log, capsys, fault, cause, detail
):
    configure(KEY_SECRET_ID=secret_id, CLUSTERS_FILE=write_registry(tmp_path / "c.json", [cluster_a.registry_entry()]),
              CLUSTER_TIMEOUT=1)
    container = LambdaContainer()
    token = cluster_a.login_token()
    assert container.login(token)[0] == 200  # warm: key, issuer keys and a pooled connection
    cluster_a.server.set_fault(fault)
    try:
        status, body = container.login(token)
    finally:
        cluster_a.server.set_fault(None)

    assert status == 503, body
    (failure,) = [line for line in json_lines(service_log.getvalue()) if line.get("event") == "cluster_failure"]
    assert (failure["cause"], failure["detail"]) == (cause, detail)
    emf = emf_blobs(service_log.getvalue())
    assert by_metric(emf_series(emf), "ClusterFailures") == Counter({(("cause", cause), ("cluster", "prod-eu")): 1})


# ---------------------------------------------------------------- the line format, in a real container process

@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_a_container_writes_only_json_lines_and_no_library_chatter_below_warning_at_info(
    moto_server, secret_id, tmp_path, cluster_a, request, level
):
    """A container process configures logging itself, as in Lambda: every line is JSON (the access
    lines carry the EMF metrics), the first invocation is the cold start, and botocore's "Found credentials in environment variables." (INFO) shows only at DEBUG."""
    from tests.fakes.lambda_container import Container

    registry = write_registry(tmp_path / "c.json", [cluster_a.registry_entry()])
    env = {"KEY_SECRET_ID": secret_id, "CLUSTERS_FILE": registry, "CSRF_ENFORCE": "false", "LOG_LEVEL": level,
           "AWS_ENDPOINT_URL_SECRETS_MANAGER": moto_server.url}
    token = cluster_a.login_token("day", "container")
    with Container.start(env, name="json-lines") as container:
        assert container.call({"op": "login", "token": token})["status"] == 200
        assert container.call({"op": "login", "token": token})["status"] == 200
        log = container.log()

    lines = json_lines(log)  # fails on any line that is not one JSON object
    records = lines
    emf = [line for line in lines if "_aws" in line]
    chatter = [line for line in records if not line["logger"].startswith("chalicelib") and line["level"] in ("DEBUG", "INFO")]
    found_credentials = [line for line in records if line["message"] == "Found credentials in environment variables."]
    if level == "INFO":
        assert chatter == [] and found_credentials == []
    else:
        assert len(found_credentials) == 1  # what INFO hides is there to hide
    access = [line for line in records if line.get("event") == "request"]
    assert [line["cold_start"] for line in access] == [True, False]
    assert [line["outcome"] for line in access] == ["accepted", "accepted"]
    assert len({line["request_id"] for line in access}) == 2
    cold = [blob for blob in emf if "ColdStart" in blob]
    assert len(cold) == 1 and cold[0]["function_name"] == FUNCTION_NAME
    assert by_metric(emf_series(emf), "Logins") == Counter({(("cluster", "prod-eu"), ("outcome", "accepted")): 2})
    assert token not in log and secrets_in(request.config, log) == []
