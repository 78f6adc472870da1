"""The service as a Dashboard frontend meets it: `chalice local` over real HTTP, in its own process,
with Secrets Manager on a moto server and a cluster behind TLS."""
from __future__ import annotations


import pytest
import requests

from chalicelib import sessions
from tests.conftest import run_chalice_local, write_registry

DASHBOARD_ORIGIN = "http://localhost:8080"


@pytest.fixture(scope="module")
def service_url(moto_server, cluster_a, cluster_b, tmp_path_factory):
    registry = write_registry(
        tmp_path_factory.mktemp("e2e") / "clusters.json",
        [cluster_a.registry_entry(), cluster_b.registry_entry()],
        default=cluster_a.name,
    )
    with run_chalice_local(
        AWS_ENDPOINT_URL_SECRETS_MANAGER=moto_server.url,
        KEY_SECRET_ID="dashboard-auth/e2e/session-key",
        CLUSTERS_FILE=registry,
        CORS_ALLOWED_ORIGINS=DASHBOARD_ORIGIN,
    ) as url:
        yield url


def test_the_dashboard_frontends_login_sequence(service_url, cluster_a):
    http = requests.Session()
    headers = {"Origin": DASHBOARD_ORIGIN}
    service_account_token = cluster_a.login_token("kubernetes-dashboard", "admin-user")

    csrf = http.get(f"{service_url}/api/v1/csrftoken/login", headers=headers).json()["token"]
    login = http.post(
        f"{service_url}/api/v1/login",
        json={"token": service_account_token},
        headers={**headers, "X-CSRF-TOKEN": csrf},
    )
    assert login.status_code == 200, login.text
    assert login.headers["Access-Control-Allow-Origin"] == DASHBOARD_ORIGIN
    jwe_token = login.json()["jweToken"]
    assert login.json()["name"] == "admin-user"

    status = http.get(f"{service_url}/api/v1/login/status", headers={**headers, "jweToken": jwe_token}).json()
    assert status["tokenPresent"] is True

    for _ in range(2):  # the frontend refreshes on every page change
        csrf = http.get(f"{service_url}/api/v1/csrftoken/token", headers=headers).json()["token"]
        refreshed = http.post(
            f"{service_url}/api/v1/token/refresh",
            json={"jweToken": jwe_token},
            headers={**headers, "X-CSRF-TOKEN": csrf},
        )
        assert refreshed.status_code == 200, refreshed.text
        assert refreshed.json()["errors"] == []
        new_token = refreshed.json()["jweToken"]
        assert sessions.parse(new_token).claims.auth_time == sessions.parse(jwe_token).claims.auth_time
        jwe_token = new_token


def test_preflight_from_the_dashboards_origin(service_url):
    answer = requests.options(
        f"{service_url}/api/v1/token/refresh",
        headers={
            "Origin": DASHBOARD_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,jwetoken,x-csrf-token",
        },
    )
    assert answer.status_code in (200, 204)
    assert answer.headers["Access-Control-Allow-Origin"] == DASHBOARD_ORIGIN
    allowed = {h.strip().lower() for h in answer.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"content-type", "jwetoken", "x-csrf-token"} <= allowed


def test_errors_over_http(service_url, cluster_a, cluster_b):
    csrf = requests.get(f"{service_url}/api/v1/csrftoken/token").json()["token"]
    unauthorized = requests.post(
        f"{service_url}/api/v1/token/refresh", json={"jweToken": "{}"}, headers={"X-CSRF-TOKEN": csrf}
    )
    no_csrf = requests.post(f"{service_url}/api/v1/login", json={"token": cluster_a.login_token()})
    too_big = requests.post(f"{service_url}/api/v1/login", data=b"{" + b" " * 70000 + b"}",
                            headers={"Content-Type": "application/json"})
    unknown = requests.get(f"{service_url}/clusters/nope/api/v1/login/modes")
    other_cluster = requests.get(f"{service_url}/clusters/{cluster_b.name}/api/v1/login/modes")

    assert (unauthorized.status_code, unauthorized.text) == (401, "MSG_LOGIN_UNAUTHORIZED_ERROR\n")
    assert (no_csrf.status_code, no_csrf.text) == (401, "CSRF validation failed\n")
    assert too_big.status_code == 413
    assert unknown.status_code == 404
    assert other_cluster.json() == {"modes": ["token"]}
