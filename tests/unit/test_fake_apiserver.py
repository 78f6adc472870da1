"""The fake API server must behave like kube-apiserver for the real ``kubernetes`` client.

These tests go through the official client over real TLS on purpose: if the
fake were lenient where a cluster is strict, tests built on it could not fail.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from demo.kube_apiserver import (
    SSAR_PATH,
    TOKENREVIEW_PATH,
    FakeKubeApiServer,
    generate_rsa_key,
    key_id,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_AUD = "https://kubernetes.default.svc.cluster.local"


# --------------------------------------------------------------------------- fixtures & helpers


@pytest.fixture(scope="module")
def kube() -> Iterator[FakeKubeApiServer]:
    """One cluster for the module: key generation is the slow part."""
    with FakeKubeApiServer(name="cluster-a") as server:
        yield server


@pytest.fixture(autouse=True)
def _clean_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test starts healthy with zeroed counters, and cannot leave a fault behind."""
    if "kube" in request.fixturenames:
        kube = request.getfixturevalue("kube")
        kube.set_fault(None)
        kube.reset_counters()
        kube.emit_authenticated_false = False
        yield
        kube.set_fault(None)
    else:
        yield


@pytest.fixture(scope="module")
def reviewer(kube: FakeKubeApiServer) -> str:
    return kube.new_reviewer()


@pytest.fixture(scope="module")
def sa(kube: FakeKubeApiServer) -> tuple[str, str, str]:
    """(namespace, name, uid) of a ServiceAccount that exists."""
    uid = kube.create_service_account("default", "dashboard-user")
    return "default", "dashboard-user", uid


def ca_file(server: FakeKubeApiServer, directory: Path) -> str:
    path = directory / f"ca-{uuid.uuid4().hex}.pem"
    path.write_bytes(server.ca_pem)
    return str(path)


@contextmanager
def api_client(url: str, ca_path: str, bearer: str | None) -> Iterator[client.ApiClient]:
    """An ApiClient configured the way a service configures it from a Secret/ConfigMap."""
    cfg = client.Configuration(
        host=url,
        ssl_ca_cert=ca_path,
        api_key={"authorization": f"Bearer {bearer}"} if bearer else None,
    )
    with client.ApiClient(cfg) as api:
        yield api


@pytest.fixture
def auth_api(kube: FakeKubeApiServer, reviewer: str, tmp_path: Path) -> Iterator[client.AuthenticationV1Api]:
    with api_client(kube.url, ca_file(kube, tmp_path), reviewer) as api:
        yield client.AuthenticationV1Api(api)


def review(
    api: client.AuthenticationV1Api, token: str, audiences: list[str] | None = None, **kwargs: object
) -> client.V1TokenReview:
    body = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=audiences))
    return api.create_token_review(body, **kwargs)


def unique(prefix: str = "sa") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- TokenReview semantics


def test_valid_token_is_authenticated(kube, sa, auth_api) -> None:
    ns, name, uid = sa
    token = kube.issue_token(ns, name)

    result = review(auth_api, token)

    assert result.status.authenticated is True
    assert result.status.error is None
    assert result.status.user.username == f"system:serviceaccount:{ns}:{name}"
    assert result.status.user.uid == uid
    assert result.status.user.groups == [
        "system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated",
    ]
    assert result.status.audiences == [DEFAULT_AUD]
    # Like a real server, the request spec (token included) is echoed back.
    assert result.spec.token == token
    assert kube.review_count == 1
    assert kube.requests == [("POST", TOKENREVIEW_PATH, 201)]


def test_audiences_are_intersected(kube, sa, auth_api) -> None:
    token = kube.issue_token(sa[0], sa[1], audiences=["dashboard", "other"])

    result = review(auth_api, token, audiences=["metrics", "dashboard"])

    assert result.status.authenticated is True
    assert result.status.audiences == ["dashboard"]


def test_token_without_exp_is_accepted(kube, sa, auth_api) -> None:
    assert review(auth_api, kube.issue_token(sa[0], sa[1], expires_in=None)).status.authenticated is True


def test_legacy_secret_token(kube, sa, auth_api) -> None:
    token = kube.issue_token(sa[0], sa[1], legacy=True)

    ok = review(auth_api, token)
    assert ok.status.authenticated is True
    assert ok.status.user.username == f"system:serviceaccount:{sa[0]}:{sa[1]}"
    assert ok.status.audiences == [DEFAULT_AUD]
    # A legacy token is only good for the API server's own audiences.
    assert not review(auth_api, token, audiences=["dashboard"]).status.authenticated


def test_static_user_token_is_not_a_service_account(kube, auth_api) -> None:
    kube.add_static_user_token("opaque-admin-token", "alice@example.com", groups=["system:masters"])

    result = review(auth_api, "opaque-admin-token", audiences=["dashboard"])

    assert result.status.authenticated is True
    assert result.status.user.username == "alice@example.com"
    assert result.status.user.groups == ["system:masters", "system:authenticated"]
    assert result.status.audiences == ["dashboard"]


def _deleted_sa_token(kube: FakeKubeApiServer) -> str:
    name = unique()
    kube.create_service_account("default", name)
    token = kube.issue_token("default", name)
    kube.delete_service_account("default", name)
    return token


def _recreated_sa_token(kube: FakeKubeApiServer) -> str:
    """Same namespace/name, new uid: the old token must die with the old object."""
    name = unique()
    kube.create_service_account("default", name)
    token = kube.issue_token("default", name)
    kube.delete_service_account("default", name)
    kube.create_service_account("default", name)
    return token


_FOREIGN_KEY = generate_rsa_key()

HOSTILE_TOKENS: dict[str, Callable[[FakeKubeApiServer], str]] = {
    "expired": lambda k: k.issue_token("default", "dashboard-user", expires_in=-60),
    "expired-1s": lambda k: k.issue_token("default", "dashboard-user", expires_in=-1),
    "foreign-key": lambda k: k.issue_token("default", "dashboard-user", signing_key=_FOREIGN_KEY),
    "foreign-key-our-kid": lambda k: k.issue_token(
        "default", "dashboard-user", signing_key=_FOREIGN_KEY,
        header_overrides={"kid": key_id(k.signing_key.public_key())},
    ),
    "wrong-issuer": lambda k: k.issue_token("default", "dashboard-user", issuer="https://evil.example.com"),
    "wrong-audience": lambda k: k.issue_token("default", "dashboard-user", audiences=["someone-else"]),
    "no-audience": lambda k: k.issue_token("default", "dashboard-user", audiences=[]),
    "not-yet-valid": lambda k: k.issue_token(
        "default", "dashboard-user", extra_claims={"nbf": int(time.time()) + 3600}
    ),
    "deleted-sa": _deleted_sa_token,
    "recreated-sa": _recreated_sa_token,
    "never-created-sa": lambda k: k.issue_token("default", unique("ghost")),
    "sub-mismatch": lambda k: k.issue_token(
        "default", "dashboard-user", extra_claims={"sub": "system:serviceaccount:kube-system:admin"}
    ),
    "alg-none": lambda k: k.issue_token("default", "dashboard-user", header_overrides={"alg": "none"}),
    "alg-hs256": lambda k: k.issue_token("default", "dashboard-user", header_overrides={"alg": "HS256"}),
    "unsigned": lambda k: k.issue_token("default", "dashboard-user").rsplit(".", 1)[0] + ".",
    "tampered-claims": lambda k: _tamper(k.issue_token("default", "dashboard-user")),
    "two-parts": lambda k: ".".join(k.issue_token("default", "dashboard-user").split(".")[:2]),
    "garbage": lambda k: "not-a-token",
    "garbage-dots": lambda k: "a.b.c",
}


def _tamper(token: str) -> str:
    """Swap in claims for another ServiceAccount but keep the original signature."""
    header, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "system:serviceaccount:kube-system:admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{sig}"


@pytest.mark.parametrize("case", sorted(HOSTILE_TOKENS))
def test_hostile_tokens_are_not_authenticated(kube, sa, auth_api, case: str) -> None:
    token = HOSTILE_TOKENS[case](kube)

    result = review(auth_api, token)

    # A real server omits "authenticated" when false: the client reads None.
    assert result.status.authenticated is None
    assert result.status.error
    assert result.status.user.username is None
    assert result.status.audiences is None
    assert token not in result.status.error
    assert result.spec.token == token  # still echoed


def test_failed_review_wire_format(kube, reviewer, tmp_path) -> None:
    """Raw JSON of a failed review, both the realistic and the literal-false variant."""
    ca = ca_file(kube, tmp_path)
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": "nope"}}
    headers = {"Authorization": f"Bearer {reviewer}"}

    real = requests.post(kube.url + TOKENREVIEW_PATH, json=body, headers=headers, verify=ca, timeout=5)
    kube.emit_authenticated_false = True
    literal = requests.post(kube.url + TOKENREVIEW_PATH, json=body, headers=headers, verify=ca, timeout=5)

    assert real.status_code == 201
    assert real.json()["metadata"] == {"creationTimestamp": None}
    assert real.json()["spec"] == {"token": "nope"}
    assert "authenticated" not in real.json()["status"]
    assert real.json()["status"]["user"] == {}
    assert literal.json()["status"]["authenticated"] is False


@pytest.mark.parametrize(
    ("body", "content_type", "code"),
    [
        (b"{not json", "application/json", 400),
        (json.dumps({"apiVersion": "v1", "kind": "TokenReview", "spec": {"token": "x"}}).encode(), None, 400),
        (json.dumps({"kind": "Pod", "spec": {"token": "x"}}).encode(), None, 400),
        (json.dumps({"kind": "TokenReview", "spec": {}}).encode(), None, 400),
        (json.dumps({"kind": "TokenReview", "spec": {"token": ""}}).encode(), None, 400),
        (json.dumps({"kind": "TokenReview", "spec": {"token": "x", "audiences": "aud"}}).encode(), None, 400),
        (json.dumps({"kind": "TokenReview", "spec": {"token": "x"}}).encode(), "text/plain", 415),
    ],
)
def test_malformed_review_requests_are_rejected(kube, reviewer, tmp_path, body, content_type, code) -> None:
    headers = {"Authorization": f"Bearer {reviewer}"}
    if content_type:
        headers["Content-Type"] = content_type

    resp = requests.post(kube.url + TOKENREVIEW_PATH, data=body, headers=headers, verify=ca_file(kube, tmp_path))

    assert resp.status_code == code
    assert resp.json()["kind"] == "Status" and resp.json()["code"] == code


# --------------------------------------------------------------------------- reviewer credentials & RBAC


def test_unknown_reviewer_gets_401(kube, sa, tmp_path) -> None:
    with api_client(kube.url, ca_file(kube, tmp_path), "not-a-reviewer") as api:
        with pytest.raises(ApiException) as err:
            review(client.AuthenticationV1Api(api), kube.issue_token(sa[0], sa[1]))
    assert err.value.status == 401
    assert json.loads(err.value.body) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "Unauthorized", "reason": "Unauthorized", "code": 401,
    }
    assert kube.review_count == 1


def test_missing_credentials_get_401(kube, sa, tmp_path) -> None:
    with api_client(kube.url, ca_file(kube, tmp_path), None) as api:
        with pytest.raises(ApiException) as err:
            review(client.AuthenticationV1Api(api), kube.issue_token(sa[0], sa[1]))
    assert err.value.status == 401


def test_forbidden_reviewer_gets_403(kube, sa, tmp_path) -> None:
    token = kube.new_reviewer(allowed=False, username="system:serviceaccount:dash:no-rbac")
    with api_client(kube.url, ca_file(kube, tmp_path), token) as api:
        with pytest.raises(ApiException) as err:
            review(client.AuthenticationV1Api(api), kube.issue_token(sa[0], sa[1]))
    status = json.loads(err.value.body)
    assert err.value.status == 403
    assert status["reason"] == "Forbidden"
    assert status["message"] == (
        'tokenreviews.authentication.k8s.io is forbidden: User "system:serviceaccount:dash:no-rbac" '
        'cannot create resource "tokenreviews" in API group "authentication.k8s.io" at the cluster scope'
    )


def test_self_subject_access_review(kube, reviewer, tmp_path) -> None:
    forbidden = kube.new_reviewer(allowed=False)
    ca = ca_file(kube, tmp_path)

    def can(bearer: str, resource: str = "tokenreviews") -> bool:
        attrs = client.V1ResourceAttributes(verb="create", group="authentication.k8s.io", resource=resource)
        body = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=attrs))
        with api_client(kube.url, ca, bearer) as api:
            return client.AuthorizationV1Api(api).create_self_subject_access_review(body).status.allowed

    assert can(reviewer) is True
    assert can(forbidden) is False
    assert can(reviewer, resource="secrets") is False
    assert kube.requests[0] == ("POST", SSAR_PATH, 201)


def test_discovery_endpoints(kube, reviewer, tmp_path) -> None:
    ca = ca_file(kube, tmp_path)
    with api_client(kube.url, ca, reviewer) as api:
        assert client.VersionApi(api).get_code().git_version == "v1.31.0-fake"
    headers = {"Authorization": f"Bearer {reviewer}"}
    for path in ("/healthz", "/readyz"):
        resp = requests.get(kube.url + path, headers=headers, verify=ca)
        assert (resp.status_code, resp.text) == (200, "ok")
    missing = requests.get(kube.url + "/api/v1/secrets", headers=headers, verify=ca)
    assert missing.status_code == 404 and missing.json()["reason"] == "NotFound"
    wrong_verb = requests.get(kube.url + TOKENREVIEW_PATH, headers=headers, verify=ca)
    assert wrong_verb.status_code == 405


# --------------------------------------------------------------------------- TLS & connections


def test_other_clusters_ca_is_rejected(kube, reviewer, sa, tmp_path) -> None:
    other = FakeKubeApiServer(name="cluster-b")
    assert other.ca_pem != kube.ca_pem

    with api_client(kube.url, ca_file(other, tmp_path), reviewer) as api:
        with pytest.raises((urllib3.exceptions.MaxRetryError, ApiException)) as err:
            review(client.AuthenticationV1Api(api), kube.issue_token(sa[0], sa[1]))

    assert "CERTIFICATE_VERIFY_FAILED" in str(err.value)
    assert kube.handshakes == 0 and kube.review_count == 0


def test_one_handshake_for_many_reviews(kube, sa, auth_api) -> None:
    token = kube.issue_token(sa[0], sa[1])

    for _ in range(20):
        assert review(auth_api, token).status.authenticated is True

    assert kube.handshakes == 1
    assert kube.review_count == 20


def test_tokens_never_logged(kube, sa, reviewer, auth_api, caplog) -> None:
    token = kube.issue_token(sa[0], sa[1])
    with caplog.at_level(logging.DEBUG, logger="demo.kube_apiserver"):
        review(auth_api, token)
        review(auth_api, "opaque-garbage-token")
    assert TOKENREVIEW_PATH in caplog.text
    for secret in (token, "opaque-garbage-token", reviewer):
        assert secret not in caplog.text


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize(("fault", "reason"), [("500", "InternalError"), ("503", "ServiceUnavailable")])
def test_server_error_faults(kube, sa, auth_api, fault: str, reason: str) -> None:
    kube.set_fault(fault)
    with pytest.raises(ApiException) as err:
        review(auth_api, kube.issue_token(sa[0], sa[1]))
    assert err.value.status == int(fault)
    assert json.loads(err.value.body)["reason"] == reason

    kube.set_fault(None)
    assert review(auth_api, kube.issue_token(sa[0], sa[1])).status.authenticated is True
    assert kube.review_count == 2


def test_rate_limit_fault(kube, sa, auth_api) -> None:
    kube.set_fault("429")
    with pytest.raises(ApiException) as err:
        review(auth_api, kube.issue_token(sa[0], sa[1]))
    assert err.value.status == 429
    assert err.value.headers["Retry-After"] == "1"
    assert json.loads(err.value.body)["details"] == {"retryAfterSeconds": 1}


def test_hang_fault_times_out_client_then_recovers(kube, sa, auth_api) -> None:
    kube.set_fault("hang")
    started = time.monotonic()
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        review(auth_api, kube.issue_token(sa[0], sa[1]), _request_timeout=0.3)
    assert time.monotonic() - started < 2
    assert kube.in_flight == 1

    kube.set_fault(None)
    assert review(auth_api, kube.issue_token(sa[0], sa[1]), _request_timeout=5).status.authenticated is True
    # The held request is released too (into a closed connection); let it finish
    # so it cannot land in the next test's counters.
    deadline = time.monotonic() + 5
    while kube.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert kube.in_flight == 0


def test_hang_fault_gives_504_after_hang_timeout(kube, sa, auth_api, monkeypatch) -> None:
    monkeypatch.setattr(kube, "hang_timeout", 0.2)
    kube.set_fault("hang")
    with pytest.raises(ApiException) as err:
        review(auth_api, kube.issue_token(sa[0], sa[1]), _request_timeout=5)
    assert err.value.status == 504


def test_reset_fault_drops_connection(kube, sa, auth_api) -> None:
    kube.set_fault("reset")
    with pytest.raises(urllib3.exceptions.ProtocolError):
        review(auth_api, kube.issue_token(sa[0], sa[1]))
    assert kube.requests == [("POST", TOKENREVIEW_PATH, 0)]
    assert kube.review_count == 0

    kube.set_fault(None)
    assert review(auth_api, kube.issue_token(sa[0], sa[1])).status.authenticated is True


def test_set_fault_rejects_unknown_modes(kube) -> None:
    with pytest.raises(ValueError):
        kube.set_fault("418")


# --------------------------------------------------------------------------- lifecycle


def test_stop_refuses_connections_and_restart_reuses_port(tmp_path) -> None:
    server = FakeKubeApiServer(name="flaky").start()
    try:
        server.create_service_account("default", "u")
        bearer = server.new_reviewer()
        token = server.issue_token("default", "u")
        port = server.port
        with api_client(server.url, ca_file(server, tmp_path), bearer) as api:
            auth = client.AuthenticationV1Api(api)
            assert review(auth, token).status.authenticated is True

            server.stop()
            with pytest.raises(urllib3.exceptions.MaxRetryError) as err:
                review(auth, token)
            assert isinstance(err.value.reason, urllib3.exceptions.NewConnectionError)
            assert "refused" in str(err.value.reason).lower()

            server.start()
            assert server.port == port
            assert review(auth, token).status.authenticated is True  # same client, reconnects
    finally:
        server.stop()


def test_stop_releases_hanging_requests_promptly(tmp_path) -> None:
    server = FakeKubeApiServer(name="hanging").start()
    bearer = server.new_reviewer()
    server.set_fault("hang")
    outcome: list[BaseException] = []

    def call() -> None:
        with api_client(server.url, ca_file(server, tmp_path), bearer) as api:
            try:
                review(client.AuthenticationV1Api(api), "whatever", _request_timeout=10)
            except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
                outcome.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    deadline = time.monotonic() + 5
    while server.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.in_flight == 1

    started = time.monotonic()
    server.stop()
    caller.join(timeout=5)

    assert time.monotonic() - started < 2
    assert not caller.is_alive()
    assert outcome and isinstance(outcome[0], urllib3.exceptions.HTTPError)


# --------------------------------------------------------------------------- kubeconfig & standalone


def test_kubeconfig_loads_with_official_loader(kube, sa, reviewer, tmp_path) -> None:
    path = kube.write_kubeconfig(tmp_path / "kubeconfig", reviewer, context="ctx", namespace="dash")
    assert os.stat(path).st_mode & 0o777 == 0o600

    cfg = client.Configuration()
    config.load_kube_config(config_file=str(path), context="ctx", client_configuration=cfg)
    with client.ApiClient(cfg) as api:
        result = review(client.AuthenticationV1Api(api), kube.issue_token(sa[0], sa[1]))
    assert result.status.authenticated is True
    assert kube.kubeconfig_dict(reviewer)["clusters"][0]["cluster"]["certificate-authority-data"] == kube.ca_data


def test_standalone_process(tmp_path) -> None:
    state_file = tmp_path / "state.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "demo.kube_apiserver", "--port", "0", "--state", str(state_file)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while not state_file.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        state = json.loads(state_file.read_text())
        assert set(state) >= {"url", "ca_data", "reviewer_token", "sa_token"}

        ca = tmp_path / "ca.pem"
        ca.write_bytes(base64.b64decode(state["ca_data"]))
        with api_client(state["url"], str(ca), state["reviewer_token"]) as api:
            result = review(client.AuthenticationV1Api(api), state["sa_token"])
        assert result.status.user.username == "system:serviceaccount:default:dashboard-user"

        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=5)
        assert proc.returncode == 0
        for secret in (state["sa_token"], state["reviewer_token"]):
            assert secret.encode() not in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
