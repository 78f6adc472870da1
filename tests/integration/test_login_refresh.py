"""Login and refresh through the Chalice app (chalice.test.Client), against real parts:
a moto Secrets Manager server over HTTP and TLS fake API servers spoken to by the kubernetes client.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from chalicelib import keys, sessions
from tests.conftest import UNAUTHORIZED_LOGIN, DashboardFrontend, body_json, login_ok, write_registry

pytestmark = pytest.mark.usefixtures("healthy")


@pytest.fixture
def registry(tmp_path, cluster_a, cluster_b):
    return write_registry(
        tmp_path / "clusters.json", [cluster_a.registry_entry(), cluster_b.registry_entry()], default=cluster_a.name
    )


@pytest.fixture
def client(configure, secrets_client, secret_id, registry):
    return configure(KEY_SECRET_ID=secret_id, CLUSTERS_FILE=registry)


@pytest.fixture
def frontend(client):
    return DashboardFrontend(client)


def stored_key(secrets_client, secret_id, stage="AWSCURRENT") -> keys.SessionKey:
    answer = secrets_client.get_secret_value(SecretId=secret_id, VersionStage=stage)
    return keys.parse_secret_value(answer["VersionId"], answer["SecretString"])


def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


# ---------------------------------------------------------------- the happy path

def test_login_returns_the_service_account_name_and_a_session_token(frontend, cluster_a, secrets_client, secret_id):
    response = frontend.login(cluster_a.login_token("kube-system", "admin-user"))

    body = body_json(response)
    assert response.status_code == 200
    assert body["name"] == "admin-user" and body["errors"] == []
    key = stored_key(secrets_client, secret_id)
    envelope = sessions.parse(body["jweToken"])
    assert envelope.kid == key.kid  # kid is the Secrets Manager VersionId
    assert envelope.claims.cluster == cluster_a.name
    assert envelope.claims.expires_at - envelope.claims.issued_at == timedelta(seconds=900)
    assert envelope.claims.auth_time == envelope.claims.issued_at == envelope.claims.reviewed_at


def test_refresh_renews_the_session_and_keeps_its_login_time(frontend, cluster_a):
    first = login_ok(frontend, cluster_a.login_token())

    response = frontend.refresh(first)
    assert response.status_code == 200, response.body
    second = body_json(response)["jweToken"]
    third = body_json(frontend.refresh(second))["jweToken"]

    assert "name" not in body_json(response)  # the Dashboard's refresh answer has no name
    assert len({first, second, third}) == 3
    claims = [sessions.parse(t).claims for t in (first, second, third)]
    assert claims[0].auth_time == claims[1].auth_time == claims[2].auth_time


def test_refresh_within_the_review_interval_does_not_ask_the_cluster(frontend, cluster_a):
    token = login_ok(frontend, cluster_a.login_token())
    reviews = cluster_a.server.review_count

    for _ in range(3):
        token = body_json(frontend.refresh(token))["jweToken"]

    assert cluster_a.server.review_count == reviews


def test_login_with_a_kubeconfig_whose_user_has_a_token(frontend, cluster_a):
    kubeconfig = json.dumps(cluster_a.server.kubeconfig_dict(cluster_a.login_token("team-a", "viewer")))

    response = frontend.post("/api/v1/login", {"kubeconfig": kubeconfig}, "login")

    assert body_json(response)["name"] == "viewer"


def test_warm_container_reuses_one_tls_connection_per_cluster(frontend, cluster_a):
    token = cluster_a.login_token()
    for _ in range(5):
        login_ok(frontend, token)
    assert cluster_a.server.handshakes == 1


# ---------------------------------------------------------------- what the cluster says no to

@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda c: c.server.issue_token("kube-system", "admin-user", expires_in=-60), id="expired"),
        pytest.param(
            lambda c: c.server.issue_token("kube-system", "admin-user", signing_key=c.server.generate_rsa_key()),
            id="signed-by-another-cluster",
        ),
        pytest.param(lambda c: c.server.issue_token("kube-system", "never-created"), id="unknown-serviceaccount"),
        pytest.param(lambda c: c.server.issue_token("kube-system", "admin-user", issuer="https://evil"), id="wrong-issuer"),
        pytest.param(lambda c: "not-a-jwt", id="garbage"),
    ],
)
def test_tokens_the_cluster_rejects_get_the_dashboards_unauthorized_answer(frontend, cluster_a, make_token):
    cluster_a.login_token()  # the ServiceAccount exists
    response = frontend.login(make_token(cluster_a))

    assert response.status_code == 200
    assert body_json(response) == UNAUTHORIZED_LOGIN


def test_a_user_that_is_not_a_service_account_cannot_log_in(frontend, cluster_a):
    cluster_a.server.add_static_user_token("a.b.c-static-admin", "kubernetes-admin", groups=["system:masters"])
    assert body_json(frontend.login("a.b.c-static-admin")) == UNAUTHORIZED_LOGIN


def test_audiences_are_requested_and_checked(configure, secrets_client, secret_id, tmp_path, cluster_a):
    registry = write_registry(tmp_path / "c.json", [cluster_a.registry_entry(audiences=["dashboard-auth"])])
    frontend = DashboardFrontend(configure(KEY_SECRET_ID=secret_id, CLUSTERS_FILE=registry))

    default_audience = frontend.login(cluster_a.login_token())
    right_audience = frontend.login(cluster_a.login_token(audiences=["dashboard-auth"]))

    assert body_json(default_audience) == UNAUTHORIZED_LOGIN
    assert body_json(right_audience)["name"] == "admin-user"


# ---------------------------------------------------------------- session policy

def test_an_expired_session_token_answers_token_expired(frontend, cluster_a, secrets_client, secret_id):
    login_ok(frontend, cluster_a.login_token())
    key = stored_key(secrets_client, secret_id)
    past = now() - timedelta(hours=1)
    expired = sessions.mint(
        cluster_a.login_token(),
        sessions.Claims(past, past + timedelta(minutes=15), cluster_a.name, past, past),
        key.public,
        key.kid,
    )

    response = frontend.refresh(expired)

    assert (response.status_code, response.body) == (401, b"MSG_TOKEN_EXPIRED_ERROR\n")
    assert response.headers["Content-Type"].startswith("text/plain")


def test_a_session_past_max_session_ttl_cannot_be_refreshed(configure, secrets_client, secret_id, registry, cluster_a):
    frontend = DashboardFrontend(configure(KEY_SECRET_ID=secret_id, CLUSTERS_FILE=registry, MAX_SESSION_TTL=3600))
    login_ok(frontend, cluster_a.login_token())
    key = stored_key(secrets_client, secret_id)
    logged_in = now() - timedelta(hours=2)
    recent = now() - timedelta(seconds=10)
    still_fresh = sessions.mint(
        cluster_a.login_token(),
        sessions.Claims(recent, recent + timedelta(minutes=15), cluster_a.name, logged_in, recent),
        key.public,
        key.kid,
    )

    response = frontend.refresh(still_fresh)

    assert (response.status_code, response.body) == (401, b"MSG_TOKEN_EXPIRED_ERROR\n")


def test_exp_never_passes_max_session_ttl_or_the_service_account_tokens_own_exp(
    configure, secrets_client, secret_id, registry, cluster_a
):
    frontend = DashboardFrontend(configure(KEY_SECRET_ID=secret_id, CLUSTERS_FILE=registry, MAX_SESSION_TTL=600))
    capped_by_lifetime = sessions.parse(login_ok(frontend, cluster_a.login_token())).claims
    capped_by_token = sessions.parse(login_ok(frontend, cluster_a.login_token(expires_in=120))).claims

    assert capped_by_lifetime.expires_at == capped_by_lifetime.auth_time + timedelta(seconds=600)
    assert capped_by_token.expires_at <= now() + timedelta(seconds=121)


def test_token_ttl_zero_mints_tokens_without_exp_like_the_dashboard(
    configure, secrets_client, secret_id, registry, cluster_a
):
    frontend = DashboardFrontend(
        configure(KEY_SECRET_ID=secret_id, CLUSTERS_FILE=registry, TOKEN_TTL=0, MAX_SESSION_TTL=0)
    )
    token = login_ok(frontend, cluster_a.login_token(expires_in=None))

    assert sessions.parse(token).claims.expires_at is None
    assert frontend.refresh(token).status_code == 200


def test_a_deleted_service_account_loses_its_session_at_the_next_review(
    configure, secrets_client, secret_id, registry, cluster_a
):
    frontend = DashboardFrontend(configure(KEY_SECRET_ID=secret_id, CLUSTERS_FILE=registry, REVIEW_INTERVAL=0))
    token = login_ok(frontend, cluster_a.login_token("team-b", "deployer"))
    assert frontend.refresh(token).status_code == 200

    cluster_a.server.delete_service_account("team-b", "deployer")
    response = frontend.refresh(token)

    assert (response.status_code, response.body) == (401, b"MSG_TOKEN_EXPIRED_ERROR\n")


def test_a_token_of_cluster_a_is_refused_on_cluster_bs_route(client, cluster_a, cluster_b):
    on_a = DashboardFrontend(client, prefix=f"/clusters/{cluster_a.name}")
    on_b = DashboardFrontend(client, prefix=f"/clusters/{cluster_b.name}")
    token = login_ok(on_a, cluster_a.login_token())

    response = on_b.refresh(token)

    assert (response.status_code, response.body) == (401, b"MSG_LOGIN_UNAUTHORIZED_ERROR\n")


def test_two_clusters_side_by_side(client, cluster_a, cluster_b):
    on_a = DashboardFrontend(client, prefix=f"/clusters/{cluster_a.name}")
    on_b = DashboardFrontend(client, prefix=f"/clusters/{cluster_b.name}")
    default = DashboardFrontend(client)

    token_a = login_ok(on_a, cluster_a.login_token("ns-a", "alice"))
    token_b = login_ok(on_b, cluster_b.login_token("ns-b", "bob"))

    assert sessions.parse(token_a).claims.cluster == cluster_a.name
    assert sessions.parse(token_b).claims.cluster == cluster_b.name
    assert on_a.refresh(token_a).status_code == 200
    assert on_b.refresh(token_b).status_code == 200
    assert default.refresh(token_a).status_code == 200  # cluster_a is the default
    # a token of cluster B presented to cluster A's ServiceAccount check: refused by the API server
    assert body_json(on_a.login(cluster_b.login_token("ns-b", "bob"))) == UNAUTHORIZED_LOGIN
    assert body_json(default.get("/api/v1/clusters")) == {
        "clusters": sorted([cluster_a.name, cluster_b.name]),
        "defaultCluster": cluster_a.name,
    }


def test_unknown_cluster_is_404_on_every_route(frontend, client, cluster_a):
    unknown = DashboardFrontend(client, prefix="/clusters/nope")
    assert unknown.get("/api/v1/login/modes").status_code == 404
    assert unknown.get("/api/v1/csrftoken/login").status_code == 404
    assert unknown.post("/api/v1/login", {"token": cluster_a.login_token()}, None).status_code == 404


# ---------------------------------------------------------------- Dashboard-minted tokens and key handling

def _dashboard_style_token(key: keys.SessionKey, service_account_token: str, issued: datetime) -> str:
    """What a Dashboard v2 backend holding our key mints: no kid, AAD with only iat and exp."""
    from jwcrypto import jwe, jwk

    aad = json.dumps(
        {"exp": sessions.format_time(issued + timedelta(minutes=15)), "iat": sessions.format_time(issued)},
        separators=(",", ":"),
    )
    token = jwe.JWE(
        json.dumps({"token": service_account_token}).encode(),
        protected=json.dumps({"alg": "RSA-OAEP-256", "enc": "A256GCM"}),
        aad=aad.encode(),
    )
    token.add_recipient(jwk.JWK.from_pyca(key.public))
    return token.serialize()


def test_a_token_minted_by_the_dashboard_with_our_key_refreshes_after_a_review(
    frontend, cluster_a, secrets_client, secret_id
):
    login_ok(frontend, cluster_a.login_token())
    key = stored_key(secrets_client, secret_id)
    reviews = cluster_a.server.review_count

    response = frontend.refresh(_dashboard_style_token(key, cluster_a.login_token(), now()))

    assert response.status_code == 200, response.body
    assert cluster_a.server.review_count == reviews + 1  # no reviewed_at: reviewed now
    claims = sessions.parse(body_json(response)["jweToken"]).claims
    assert claims.cluster == cluster_a.name and claims.reviewed_at is not None


def test_the_key_is_created_once_and_never_overwritten(configure, secrets_client, secret_id, registry, cluster_a):
    first = DashboardFrontend(configure(KEY_SECRET_ID=secret_id, CLUSTERS_FILE=registry))
    token = login_ok(first, cluster_a.login_token())
    version = secrets_client.get_secret_value(SecretId=secret_id)["VersionId"]

    second = DashboardFrontend(configure(KEY_SECRET_ID=secret_id, CLUSTERS_FILE=registry))  # a new container
    assert second.refresh(token).status_code == 200
    assert secrets_client.get_secret_value(SecretId=secret_id)["VersionId"] == version
    assert len(secrets_client.list_secret_version_ids(SecretId=secret_id)["Versions"]) == 1


@pytest.mark.parametrize(
    "existing",
    [{"SecretString": "{}"}, {"SecretString": "not json"}, {"SecretString": '{"priv": "x", "pub": "y"}'}, {}],
    ids=["empty-object", "not-json", "bad-pem", "no-value-at-all"],
)
def test_an_unusable_secret_value_is_replaced_by_a_key(
    configure, secrets_client, secret_id, registry, cluster_a, existing
):
    secrets_client.create_secret(Name=secret_id, **existing)
    frontend = DashboardFrontend(configure(KEY_SECRET_ID=secret_id, CLUSTERS_FILE=registry))

    token = login_ok(frontend, cluster_a.login_token())

    assert sessions.parse(token).kid == stored_key(secrets_client, secret_id).kid


def test_tokens_under_the_previous_key_still_refresh(configure, secrets_client, secret_id, registry, cluster_a, monkeypatch):
    frontend = DashboardFrontend(configure(KEY_SECRET_ID=secret_id, CLUSTERS_FILE=registry))
    old_token = login_ok(frontend, cluster_a.login_token())
    old_kid = sessions.parse(old_token).kid
    secrets_client.put_secret_value(SecretId=secret_id, SecretString=keys.new_secret_value())

    fresh = DashboardFrontend(configure(KEY_SECRET_ID=secret_id, CLUSTERS_FILE=registry))
    response = fresh.refresh(old_token)
    assert response.status_code == 200, response.body
    # the new key is not sealed with until every container that meets its kid is sure to find it
    assert sessions.parse(body_json(response)["jweToken"]).kid == old_kid

    monkeypatch.setattr(keys, "mint_delay", lambda: 0.0)  # as if that delay had passed
    response = fresh.refresh(old_token)
    assert response.status_code == 200, response.body
    new_kid = sessions.parse(body_json(response)["jweToken"]).kid
    assert new_kid == stored_key(secrets_client, secret_id).kid != old_kid


def test_a_token_under_a_key_we_do_not_hold_is_refused(frontend, cluster_a):
    foreign = keys.parse_secret_value("foreign", keys.new_secret_value())
    login_ok(frontend, cluster_a.login_token())
    issued = now()
    token = sessions.mint(
        cluster_a.login_token(), sessions.Claims(issued, issued + timedelta(minutes=5), cluster_a.name, issued, issued),
        foreign.public, None,
    )
    assert (frontend.refresh(token).status_code, frontend.refresh(token).body) == (401, b"MSG_LOGIN_UNAUTHORIZED_ERROR\n")
