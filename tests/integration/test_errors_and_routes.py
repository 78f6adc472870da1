"""The answers a Dashboard frontend or a script gets when something is wrong, and the small routes."""
from __future__ import annotations

import json
import time

import pytest

from chalicelib import dashboard
from tests.conftest import DashboardFrontend, assert_unavailable, body_json, free_port, write_registry

pytestmark = pytest.mark.usefixtures("healthy")


@pytest.fixture
def registry(tmp_path, cluster_a, cluster_b):
    return write_registry(tmp_path / "clusters.json", [cluster_a.registry_entry(), cluster_b.registry_entry()])


@pytest.fixture
def client(configure, secrets_client, secret_id, registry):
    return configure(KEY_SECRET_ID=secret_id, CLUSTERS_FILE=registry, CLUSTER_TIMEOUT=1)


@pytest.fixture
def frontend(client):
    return DashboardFrontend(client)


# ---------------------------------------------------------------- the cluster cannot answer

@pytest.mark.parametrize("fault", ["500", "503", "429", "reset", "hang"])
def test_a_failing_cluster_is_the_services_problem_not_an_invalid_token(frontend, cluster_a, fault):
    token = cluster_a.login_token()
    cluster_a.server.set_fault(fault)

    started = time.monotonic()
    response = frontend.login(token)

    assert_unavailable(response)
    assert time.monotonic() - started < 10  # bounded by CLUSTER_TIMEOUT, not minutes


def test_a_stopped_cluster_answers_503_and_the_other_cluster_still_works(frontend, client, cluster_a, cluster_b):
    token_a, token_b = cluster_a.login_token(), cluster_b.login_token()
    cluster_a.server.stop()

    assert_unavailable(frontend.login(token_a))
    assert body_json(DashboardFrontend(client, f"/clusters/{cluster_b.name}").login(token_b))["name"] == "admin-user"


def test_a_cluster_that_comes_back_is_used_again(frontend, cluster_a):
    token = cluster_a.login_token()
    cluster_a.server.stop()
    assert_unavailable(frontend.login(token))

    cluster_a.server.start()

    assert body_json(frontend.login(token))["name"] == "admin-user"


def test_refresh_needing_a_review_while_the_cluster_is_down_keeps_the_session(
    configure, secrets_client, secret_id, registry, cluster_a
):
    frontend = DashboardFrontend(configure(KEY_SECRET_ID=secret_id, CLUSTERS_FILE=registry, REVIEW_INTERVAL=0))
    session = body_json(frontend.login(cluster_a.login_token()))["jweToken"]
    cluster_a.server.set_fault("500")

    assert_unavailable(frontend.refresh(session))

    cluster_a.server.set_fault(None)
    assert frontend.refresh(session).status_code == 200  # not logged out by the outage


@pytest.mark.parametrize("allowed", [False, None], ids=["forbidden-reviewer", "unknown-reviewer"])
def test_a_reviewer_the_cluster_refuses_is_503_not_invalid_token(
    configure, secrets_client, secret_id, tmp_path, cluster_a, allowed
):
    reviewer_file = tmp_path / "reviewer"
    reviewer_file.write_text(cluster_a.server.new_reviewer(allowed=False) if allowed is False else "unknown-token")
    entry = {**cluster_a.registry_entry(), "reviewer": {"tokenFile": str(reviewer_file)}}
    frontend = DashboardFrontend(
        configure(KEY_SECRET_ID=secret_id, CLUSTERS_FILE=write_registry(tmp_path / "c.json", [entry]))
    )

    assert_unavailable(frontend.login(cluster_a.login_token()))


def test_a_cluster_with_the_wrong_ca_is_503(configure, secrets_client, secret_id, tmp_path, cluster_a, cluster_b):
    entry = {**cluster_a.registry_entry(), "certificateAuthorityData": cluster_b.server.ca_data}
    frontend = DashboardFrontend(
        configure(KEY_SECRET_ID=secret_id, CLUSTERS_FILE=write_registry(tmp_path / "c.json", [entry]))
    )
    assert_unavailable(frontend.login(cluster_a.login_token()))


def test_reviewer_token_from_secrets_manager(configure, secrets_client, secret_id, tmp_path, cluster_a):
    reviewer_secret = f"{secret_id}-reviewer"
    secrets_client.create_secret(Name=reviewer_secret, SecretString=json.dumps({"token": cluster_a.reviewer_token}))
    entry = {**cluster_a.registry_entry(), "reviewer": {"tokenSecretId": reviewer_secret}}
    frontend = DashboardFrontend(
        configure(KEY_SECRET_ID=secret_id, CLUSTERS_FILE=write_registry(tmp_path / "c.json", [entry]))
    )
    assert body_json(frontend.login(cluster_a.login_token()))["name"] == "admin-user"


def test_without_a_registry_the_current_kubeconfig_context_is_cluster_default(
    configure, secrets_client, secret_id, tmp_path, cluster_a
):
    kubeconfig = cluster_a.server.write_kubeconfig(str(tmp_path / "kubeconfig"), cluster_a.reviewer_token)
    client = configure(KEY_SECRET_ID=secret_id, KUBECONFIG=kubeconfig)
    frontend = DashboardFrontend(client)

    session = body_json(frontend.login(cluster_a.login_token()))["jweToken"]

    assert body_json(frontend.get("/api/v1/clusters")) == {"clusters": ["default"], "defaultCluster": "default"}
    assert DashboardFrontend(client, "/clusters/default").refresh(session).status_code == 200


# ---------------------------------------------------------------- Secrets Manager cannot answer

def test_unreachable_secrets_manager_is_503_and_no_token_is_issued(configure, secret_id, registry, cluster_a):
    frontend = DashboardFrontend(
        configure(
            KEY_SECRET_ID=secret_id,
            CLUSTERS_FILE=registry,
            CSRF_ENFORCE="false",
            AWS_ENDPOINT_URL_SECRETS_MANAGER=f"http://127.0.0.1:{free_port()}",
        )
    )
    reviews = cluster_a.server.review_count

    assert_unavailable(frontend.post("/api/v1/login", {"token": cluster_a.login_token()}, None))
    assert cluster_a.server.review_count == reviews  # no key, no point asking the cluster


def test_no_cluster_and_no_key_configured_says_what_to_configure(configure):
    frontend = DashboardFrontend(configure(CSRF_ENFORCE="false"))

    response = frontend.post("/api/v1/login", {"token": "a.b.c"}, None)

    assert response.status_code == 503
    assert b"KEY_SECRET_ID" in response.body and b"KEY_FILE" in response.body
    assert frontend.get("/api/v1/login/modes").status_code == 200


# ---------------------------------------------------------------- malformed requests

@pytest.mark.parametrize(
    "body, path",
    [
        (b"", "/api/v1/login"),
        (b"{not json", "/api/v1/login"),
        (b"[1, 2]", "/api/v1/login"),
        (b'"token"', "/api/v1/login"),
        (b'{"token": 42}', "/api/v1/login"),
        (b'{"tokn": "a.b.c"}', "/api/v1/login"),
        (b"{}", "/api/v1/login"),
        (b'{"username": "admin", "password": "hunter2"}', "/api/v1/login"),
        (b'{"kubeconfig": "apiVersion: v1\\nusers: []"}', "/api/v1/login"),
        (b"\xff\xfe", "/api/v1/login"),
        (b"{}", "/api/v1/token/refresh"),
        (b'{"jweToken": 7}', "/api/v1/token/refresh"),
        (b'{"jweToken": ""}', "/api/v1/token/refresh"),
    ],
)
def test_malformed_bodies_get_400_with_a_sentence(frontend, body, path):
    action = "login" if path.endswith("login") else "token"
    response = frontend.post(path, body, action)

    assert response.status_code == 400, response.body
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.body.endswith(b".\n") and len(response.body) > 20


@pytest.mark.parametrize("path", ["/api/v1/login", "/api/v1/token/refresh"])
def test_a_body_over_the_limit_is_413(frontend, path):
    huge = json.dumps({"token": "a" * (dashboard.MAX_BODY_BYTES + 1)}).encode()
    assert frontend.post(path, huge, None).status_code == 413


@pytest.mark.parametrize("jwe", ["not a token", '{"protected": "x"}', "a.b.c.d.e"])
def test_a_refresh_with_something_that_is_not_our_token_is_unauthorized(frontend, jwe):
    response = frontend.refresh(jwe)
    assert (response.status_code, response.body) == (401, b"MSG_LOGIN_UNAUTHORIZED_ERROR\n")


# ---------------------------------------------------------------- CSRF

@pytest.mark.parametrize("path, action", [("/api/v1/login", "login"), ("/api/v1/token/refresh", "token")])
def test_posts_without_a_valid_csrf_token_are_refused(frontend, cluster_a, path, action):
    body = {"token": cluster_a.login_token()} if action == "login" else {"jweToken": "x"}
    other_action = "token" if action == "login" else "login"
    wrong = [None, "garbage", "abc:123", frontend.csrf(other_action)]
    reviews = cluster_a.server.review_count

    for csrf in wrong:
        headers = {"X-CSRF-TOKEN": csrf} if csrf else {}
        response = frontend.post(path, body, None, headers=headers)
        assert (response.status_code, response.body) == (401, b"CSRF validation failed\n"), csrf
    assert cluster_a.server.review_count == reviews


def test_csrf_enforcement_can_be_switched_off_for_scripts(configure, secrets_client, secret_id, registry, cluster_a):
    script = DashboardFrontend(configure(KEY_SECRET_ID=secret_id, CLUSTERS_FILE=registry, CSRF_ENFORCE="false"))
    assert body_json(script.post("/api/v1/login", {"token": cluster_a.login_token()}, None))["name"] == "admin-user"


# ---------------------------------------------------------------- the small routes and CORS

def test_login_modes_skippable_and_status(frontend):
    assert body_json(frontend.get("/api/v1/login/modes")) == {"modes": ["token"]}
    assert body_json(frontend.get("/api/v1/login/skippable")) == {"skippable": False}
    assert body_json(frontend.get("/api/v1/login/status")) == {
        "tokenPresent": False,
        "headerPresent": False,
        "httpsMode": False,
        "impersonationPresent": False,
        "impersonatedUser": "",
    }
    behind_api_gateway = frontend.get(
        "/api/v1/login/status", headers={"X-Forwarded-Proto": "https", "jweToken": "x", "Impersonate-User": "jane"}
    )
    assert body_json(behind_api_gateway) == {
        "tokenPresent": True,
        "headerPresent": False,
        "httpsMode": True,
        "impersonationPresent": True,
        "impersonatedUser": "jane",
    }


def test_cors_allows_only_the_configured_origins(configure, secrets_client, secret_id, registry):
    allowed = "https://dashboard.example.com"
    frontend = DashboardFrontend(configure(KEY_SECRET_ID=secret_id, CLUSTERS_FILE=registry, CORS_ALLOWED_ORIGINS=allowed))

    ok = frontend.get("/api/v1/login/modes", headers={"Origin": allowed})
    lookalike = frontend.get("/api/v1/login/modes", headers={"Origin": allowed + ".evil.com"})
    preflight = frontend.client.http.request(
        "OPTIONS",
        "/clusters/prod-eu/api/v1/token/refresh",
        headers={"Origin": allowed, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "jwetoken,x-csrf-token,content-type"},
    )

    assert ok.headers["Access-Control-Allow-Origin"] == allowed and ok.headers["Vary"] == "Origin"
    assert not any(h.lower().startswith("access-control-") for h in lookalike.headers)
    assert preflight.status_code in (200, 204)
    assert "X-CSRF-TOKEN" in preflight.headers["Access-Control-Allow-Headers"]
    assert "jweToken" in preflight.headers["Access-Control-Allow-Headers"]
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]


def test_a_post_that_is_not_json_is_415(frontend):
    response = frontend.post("/api/v1/login", b"token=abc", "login", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415
