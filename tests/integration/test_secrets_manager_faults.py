"""Secrets Manager misbehaving under a running service: retries, the stale-key grace, cold starts,
recovery, no overwrite after a failed read, and the made-up-kid flood.

The service runs the production code path (chalice.test.Client, boto3 with the production retry
config) with AWS_ENDPOINT_URL_SECRETS_MANAGER pointing at tests/fakes' FaultyProxy, which forwards
to a moto server of this module's own: this module stops and restarts it, so the shared
`moto_server` of the other tests is never touched. Administrative reads and writes (creating the
secret, checking its versions) go straight to that moto server, past the proxy, so they are
neither counted nor failed.
"""
from __future__ import annotations

import json
import socket
import time
import uuid

import boto3
import pytest

from chalicelib import clusters, keys, service, sessions
from tests.conftest import DashboardFrontend, assert_unavailable, body_json, login_ok, with_kid, write_registry
from tests.fakes.faulty_proxy import FaultyProxy

pytestmark = pytest.mark.usefixtures("healthy")

API_GATEWAY_TIMEOUT = 29.0
#: What README and service.py promise: "3 attempts of at most 2 s connect + 3 s read".
DOCUMENTED_ATTEMPTS = 3
#: Bound for one failing key fetch answered 503. botocore's standard mode backs off up to
#: 1 + 2 + 4 s between attempts on throttling (0.05 + 0.1 + 0.2 s on other errors); every fault
#: here answers at once, so anything near this bound means a retry policy out of hand.
FAILING_FETCH_BOUND = 10.0
FAULTS = ["500", "throttle", "503", "drop"]


def attempts_per_call() -> int:
    """Attempts botocore really makes per call with the service's client config (it normalizes it)."""
    return service.secrets_manager().meta.config.retries["total_max_attempts"]


# ---------------------------------------------------------------- fixtures

def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def moto(own_moto):
    if not _listening(own_moto.port):  # a test that stopped it failed before restarting it
        own_moto.start()
    yield own_moto
    if not _listening(own_moto.port):
        own_moto.start()


@pytest.fixture
def admin(moto):
    """Straight to moto, past the proxy: what an operator (or the rotation function) does."""
    return boto3.client("secretsmanager", endpoint_url=moto.url, region_name="us-east-1")


@pytest.fixture
def proxy(moto):
    with FaultyProxy(moto.url) as faulty:
        yield faulty


@pytest.fixture
def key_version(admin, secret_id) -> str:
    """The secret exists with one good key; its VersionId (the kid) is returned."""
    version = str(uuid.uuid4())
    admin.create_secret(Name=secret_id, SecretString=keys.new_secret_value(), ClientRequestToken=version)
    return version


@pytest.fixture
def registry(tmp_path, cluster_a, cluster_b):
    return write_registry(
        tmp_path / "clusters.json", [cluster_a.registry_entry(), cluster_b.registry_entry()], default=cluster_a.name
    )


@pytest.fixture
def start_service(configure, proxy, secret_id, registry):
    """A fresh (cold) container talking to Secrets Manager through the proxy."""
    def start(**env) -> DashboardFrontend:
        settings = {
            "KEY_SECRET_ID": secret_id,
            "CLUSTERS_FILE": registry,
            "CLUSTER_TIMEOUT": 1,
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": proxy.url,
            **env,
        }
        return DashboardFrontend(configure(**settings))
    return start


# ---------------------------------------------------------------- helpers


def refresh_ok(frontend, session) -> str:
    response = frontend.refresh(session)
    assert response.status_code == 200, response.body
    return body_json(response)["jweToken"]


def script_login(frontend, token):
    """A login as a script makes it (CSRF_ENFORCE=false): exactly one request, one key lookup."""
    return frontend.post("/api/v1/login", {"token": token}, None)




def current_fetches(proxy) -> int:
    """Key fetches the service started: each begins with GetSecretValue(AWSCURRENT), retries included."""
    return sum(1 for e in proxy.entries if e.operation == "GetSecretValue" and e.version_stage == "AWSCURRENT")


# ---------------------------------------------------------------- retries with bounded backoff

@pytest.mark.parametrize("fault", FAULTS)
def test_two_failures_then_success_is_retried_into_a_login(start_service, proxy, key_version, cluster_a, fault):
    frontend = start_service(CSRF_ENFORCE="false")
    token = cluster_a.login_token()
    proxy.inject(fault, times=2)

    started = time.monotonic()
    response = script_login(frontend, token)
    elapsed = time.monotonic() - started

    assert response.status_code == 200, response.body
    assert sessions.parse(body_json(response)["jweToken"]).kid == key_version
    first_read = [e.outcome for e in proxy.entries if e.version_stage == "AWSCURRENT"]
    assert first_read == [fault, fault, "forwarded"]  # 3 attempts: two failed, the third answered
    assert elapsed < 4.0  # backoff bounded: at most 1 + 2 s even for throttling


@pytest.mark.parametrize("fault", FAULTS)
def test_persistent_failures_answer_503_quickly_and_issue_nothing(start_service, proxy, key_version, cluster_a, fault):
    frontend = start_service(CSRF_ENFORCE="false")
    token = cluster_a.login_token()
    reviews = cluster_a.server.review_count
    proxy.inject(fault)

    started = time.monotonic()
    response = script_login(frontend, token)
    elapsed = time.monotonic() - started

    assert_unavailable(response)
    assert elapsed < FAILING_FETCH_BOUND < API_GATEWAY_TIMEOUT
    assert proxy.counts == {"GetSecretValue": attempts_per_call()}  # bounded, and nothing else tried
    assert cluster_a.server.review_count == reviews  # no key, no TokenReview


def test_a_failing_call_is_attempted_three_times_as_documented(start_service, proxy, key_version, cluster_a):
    frontend = start_service(CSRF_ENFORCE="false")
    proxy.inject("500")

    assert_unavailable(script_login(frontend, cluster_a.login_token()))

    assert proxy.counts["GetSecretValue"] == DOCUMENTED_ATTEMPTS


def test_a_read_over_the_read_timeout_is_abandoned_after_3_s_and_retried(start_service, proxy, key_version, cluster_a):
    frontend = start_service(CSRF_ENFORCE="false")
    token = cluster_a.login_token()
    proxy.inject("latency", times=1, delay=4.0)

    started = time.monotonic()
    response = script_login(frontend, token)
    elapsed = time.monotonic() - started

    assert response.status_code == 200, response.body
    assert [e.outcome for e in proxy.entries if e.version_stage == "AWSCURRENT"] == ["latency", "forwarded"]
    assert 2.9 < elapsed < 4.0  # read_timeout=3 s cut the slow attempt; the retry answered at once


# ---------------------------------------------------------------- a warm container through an outage

def test_a_warm_container_keeps_serving_through_an_outage_without_hammering(
    start_service, proxy, moto, key_version, cluster_a
):
    frontend = start_service(KEY_CACHE_TTL=1, KEY_CACHE_GRACE=60)
    token = cluster_a.login_token()
    session = login_ok(frontend, token)
    moto.stop()
    time.sleep(1.2)  # past KEY_CACHE_TTL: every request below finds the cached keys stale
    proxy.reset_counts()

    started = time.monotonic()
    outcomes = []
    for i in range(20):  # each one as the frontend makes it: a csrftoken GET, then the POST
        if i % 2:
            outcomes.append(login_ok(frontend, token))
        else:
            session = refresh_ok(frontend, session)
            outcomes.append(session)
    elapsed = time.monotonic() - started

    assert len(outcomes) == 20 and all(sessions.parse(jwe).kid == key_version for jwe in outcomes)
    # One refetch (its retries included) per RETRY_AFTER_FAILURE, not one per request (40 requests here).
    windows = 1 + int(elapsed // keys.RETRY_AFTER_FAILURE)
    assert proxy.counts["GetSecretValue"] <= attempts_per_call() * windows
    assert set(proxy.counts) == {"GetSecretValue"}
    assert {e.outcome for e in proxy.entries} == {"upstream-down"}


def test_past_the_grace_a_warm_container_answers_503(start_service, proxy, key_version, cluster_a):
    frontend = start_service(KEY_CACHE_TTL=1, KEY_CACHE_GRACE=1)
    token = cluster_a.login_token()
    session = login_ok(frontend, token)
    proxy.inject("drop")  # the outage begins

    time.sleep(1.2)
    session = refresh_ok(frontend, session)  # stale but within the grace: served
    csrf = frontend.csrf("token")
    time.sleep(0.9)  # now past KEY_CACHE_TTL + KEY_CACHE_GRACE (2 s) since the last good fetch

    assert_unavailable(frontend.post("/api/v1/token/refresh", {"jweToken": session}, None, {"X-CSRF-TOKEN": csrf}))
    assert_unavailable(frontend.get("/api/v1/csrftoken/login"))


def test_a_warm_container_with_a_secrets_manager_reviewer_keeps_logging_in_through_an_outage(
    start_service, proxy, admin, secret_id, key_version, tmp_path, cluster_a, monkeypatch
):
    monkeypatch.setattr(clusters, "REVIEWER_TOKEN_REREAD_SECONDS", 1.0)  # the production 60 s, shortened
    reviewer_secret = f"{secret_id}-reviewer"
    admin.create_secret(Name=reviewer_secret, SecretString=json.dumps({"token": cluster_a.reviewer_token}))
    entry = {**cluster_a.registry_entry(), "reviewer": {"tokenSecretId": reviewer_secret}}
    frontend = start_service(
        CLUSTERS_FILE=write_registry(tmp_path / "secret-reviewer.json", [entry]), KEY_CACHE_TTL=1, KEY_CACHE_GRACE=60
    )
    token = cluster_a.login_token()
    login_ok(frontend, token)  # the reviewer token is read from Secrets Manager
    proxy.inject("drop")
    time.sleep(1.2)  # past KEY_CACHE_TTL and the reviewer token's re-read interval

    login_ok(frontend, token)  # the session key is served from the grace; the reviewer token should be too


# ---------------------------------------------------------------- cold containers and recovery

@pytest.mark.parametrize("outage", ["moto-stopped", "endpoint-refusing"])
def test_a_cold_container_during_an_outage_answers_503_and_asks_no_cluster(
    start_service, proxy, moto, key_version, cluster_a, outage
):
    token = cluster_a.login_token()
    reviews = cluster_a.server.review_count
    if outage == "moto-stopped":
        moto.stop()
    else:
        proxy.stop()  # connection refused, as an unreachable endpoint
    frontend = start_service()

    started = time.monotonic()
    csrf = frontend.get("/api/v1/csrftoken/login")
    login = frontend.post("/api/v1/login", {"token": token}, None, headers={"X-CSRF-TOKEN": "x:1"})
    elapsed = time.monotonic() - started

    assert_unavailable(csrf)
    assert_unavailable(login)  # not "CSRF validation failed": without the key nothing can be judged
    assert elapsed < 2 * FAILING_FETCH_BOUND
    assert cluster_a.server.review_count == reviews


def test_a_cold_container_recovers_when_secrets_manager_comes_back(
    start_service, proxy, moto, admin, secret_id, key_version, cluster_a
):
    token = cluster_a.login_token()
    session = login_ok(start_service(), token)  # sealed under key_version before the outage
    value = admin.get_secret_value(SecretId=secret_id)["SecretString"]
    moto.stop()
    frontend = start_service()
    assert_unavailable(frontend.get("/api/v1/csrftoken/login"))

    moto.start()  # moto restarts empty: restore the secret as it was, same VersionId
    admin.create_secret(Name=secret_id, SecretString=value, ClientRequestToken=key_version)

    assert sessions.parse(login_ok(frontend, token)).kid == key_version  # same container, no restart
    assert sessions.parse(refresh_ok(frontend, session)).kid == key_version
    assert len(admin.list_secret_version_ids(SecretId=secret_id)["Versions"]) == 1


def test_a_warm_container_picks_up_a_rotation_made_during_the_outage(
    start_service, proxy, admin, secret_id, key_version, cluster_a, monkeypatch
):
    monkeypatch.setattr(keys, "RETRY_AFTER_FAILURE", 0.5)  # the production 10 s, shortened
    monkeypatch.setattr(keys, "UNKNOWN_KID_REFETCH_INTERVAL", 0.3)  # and the 10 s mint delay with it
    monkeypatch.setattr(keys, "READ_LAG_ALLOWANCE", 0.1)
    frontend = start_service(KEY_CACHE_TTL=1, KEY_CACHE_GRACE=60)
    token = cluster_a.login_token()
    session = login_ok(frontend, token)
    proxy.inject("drop")
    time.sleep(1.2)
    session = refresh_ok(frontend, session)  # the refetch failed; cached keys served
    assert sessions.parse(session).kid == key_version
    rotated = admin.put_secret_value(SecretId=secret_id, SecretString=keys.new_secret_value())["VersionId"]

    proxy.clear()  # Secrets Manager is back
    time.sleep(0.6)  # past RETRY_AFTER_FAILURE

    assert sessions.parse(login_ok(frontend, token)).kid == key_version  # the new key is held, not yet sealed with
    time.sleep(keys.mint_delay())
    assert sessions.parse(login_ok(frontend, token)).kid == rotated
    assert sessions.parse(refresh_ok(frontend, session)).kid == rotated  # the old kid is AWSPREVIOUS now
    assert proxy.forwarded["GetSecretValue"] >= 2


# ---------------------------------------------------------------- a failed read never writes

@pytest.mark.parametrize("fault", ["500", "drop"])
def test_a_failed_read_never_writes_over_the_good_key(
    start_service, proxy, admin, secret_id, key_version, cluster_a, fault
):
    value = admin.get_secret_value(SecretId=secret_id)["SecretString"]
    frontend = start_service()
    proxy.inject(fault, operation="GetSecretValue")

    for _ in range(3):  # three cold-container requests, each a failed fetch
        assert_unavailable(frontend.get("/api/v1/csrftoken/login"))

    assert set(proxy.counts) == {"GetSecretValue"}  # no CreateSecret, no PutSecretValue
    assert proxy.counts["GetSecretValue"] == 3 * attempts_per_call()
    versions = admin.list_secret_version_ids(SecretId=secret_id)["Versions"]
    assert [v["VersionId"] for v in versions] == [key_version]
    assert admin.get_secret_value(SecretId=secret_id)["SecretString"] == value

    proxy.clear()
    assert sessions.parse(login_ok(frontend, cluster_a.login_token())).kid == key_version


# ---------------------------------------------------------------- the made-up-kid flood

UNAUTHORIZED = (401, b"MSG_LOGIN_UNAUTHORIZED_ERROR\n")


def flood(frontend, session: str, count: int, pause: float = 0.0) -> tuple[list, float]:
    """`count` refreshes of `session` under random kids, as one client fires them; (answers, seconds)."""
    csrf = frontend.csrf("token")
    started = time.monotonic()
    answers = []
    for _ in range(count):
        forged = with_kid(session, str(uuid.uuid4()))
        response = frontend.post("/api/v1/token/refresh", {"jweToken": forged}, None, headers={"X-CSRF-TOKEN": csrf})
        answers.append((response.status_code, response.body))
        if pause:
            time.sleep(pause)
    return answers, time.monotonic() - started


def report(name: str, answers: list, proxy) -> None:
    calls = ", ".join(f"{operation} {count}" for operation, count in sorted(proxy.counts.items())) or "none"
    print(f"\n[{name}] {len(answers)} refreshes with made-up kids: {answers.count(UNAUTHORIZED)} answered 401 "
          f"MSG_LOGIN_UNAUTHORIZED_ERROR; key fetches {current_fetches(proxy)}; Secrets Manager calls: {calls}")


def test_a_made_up_kid_flood_right_after_a_fetch_is_all_401_and_costs_nothing_within_the_interval(
    start_service, proxy, key_version, cluster_a, monkeypatch
):
    monkeypatch.setattr(keys, "UNKNOWN_KID_REFETCH_INTERVAL", 3600.0)  # the whole flood inside one interval
    frontend = start_service()
    session = login_ok(frontend, cluster_a.login_token())  # the container's regular fetch
    proxy.reset_counts()

    answers, _ = flood(frontend, session, 300)

    report("right after a fetch", answers, proxy)
    assert answers == [UNAUTHORIZED] * 300
    assert proxy.counts == {}  # the fetch just made already held every key a genuine token can name
    assert sessions.parse(refresh_ok(frontend, session)).kid == key_version


def test_a_made_up_kid_flood_is_all_401_and_refetches_at_most_once_per_interval(
    start_service, proxy, key_version, cluster_a
):
    frontend = start_service()
    session = login_ok(frontend, cluster_a.login_token())
    time.sleep(keys.UNKNOWN_KID_REFETCH_INTERVAL)  # the first made-up kid may refetch
    proxy.reset_counts()

    answers, elapsed = flood(frontend, session, 300)

    report("production interval", answers, proxy)
    assert answers == [UNAUTHORIZED] * 300
    windows = 1 + int(elapsed // keys.UNKNOWN_KID_REFETCH_INTERVAL)
    assert 1 <= current_fetches(proxy) <= windows
    # a fetch: GetSecretValue AWSCURRENT, ListSecretVersionIds, GetSecretValue AWSPREVIOUS
    assert proxy.counts["GetSecretValue"] <= 2 * windows and proxy.counts["ListSecretVersionIds"] <= windows
    assert sessions.parse(refresh_ok(frontend, session)).kid == key_version


def test_a_paced_made_up_kid_flood_refetches_again_only_after_each_interval(
    start_service, proxy, key_version, cluster_a, monkeypatch
):
    monkeypatch.setattr(keys, "UNKNOWN_KID_REFETCH_INTERVAL", 0.25)  # the production 5 s, shortened
    frontend = start_service()
    session = login_ok(frontend, cluster_a.login_token())
    proxy.reset_counts()

    answers, elapsed = flood(frontend, session, 200, pause=0.005)  # over several intervals

    report("paced, 0.25 s interval", answers, proxy)
    assert answers == [UNAUTHORIZED] * 200
    windows = 1 + int(elapsed // keys.UNKNOWN_KID_REFETCH_INTERVAL)
    assert 2 <= current_fetches(proxy) <= windows  # it does look again (a real rotation is found), but rarely
    assert sessions.parse(refresh_ok(frontend, session)).kid == key_version


@pytest.mark.parametrize("cache", ["fresh", "stale-within-grace"])
def test_a_made_up_kid_flood_during_an_outage_is_all_401_and_tries_the_store_once_per_interval(
    start_service, proxy, moto, key_version, cluster_a, cache, monkeypatch
):
    monkeypatch.setattr(keys, "UNKNOWN_KID_REFETCH_INTERVAL", 0.5)  # the production 5 s, shortened
    frontend = start_service(**({"KEY_CACHE_TTL": 1, "KEY_CACHE_GRACE": 600} if cache != "fresh" else {}))
    session = login_ok(frontend, cluster_a.login_token())
    moto.stop()
    if cache != "fresh":
        time.sleep(1.2)  # past KEY_CACHE_TTL: the cached keys are served from the grace
    proxy.reset_counts()

    answers, elapsed = flood(frontend, session, 200, pause=0.01)  # over several intervals

    report(f"outage, {cache} cache", answers, proxy)
    assert answers == [UNAUTHORIZED] * 200  # not 503: a made-up kid is not ours, whatever Secrets Manager says
    windows = 1 + int(elapsed // keys.UNKNOWN_KID_REFETCH_INTERVAL)
    assert 1 <= current_fetches(proxy) <= windows * attempts_per_call()
    assert set(proxy.counts) == {"GetSecretValue"} and {e.outcome for e in proxy.entries} == {"upstream-down"}
    assert sessions.parse(refresh_ok(frontend, session)).kid == key_version  # the good key still opens
