"""The clusters' published signing keys, as the service fetches, caches and falls back from them.

Each cluster is tests/fakes' TLS API server, which serves /.well-known/openid-configuration and
/openid/v1/jwks like kube-apiserver (or 404s / 403s them, as an old or locked-down cluster does)
and rotates its signing key on demand; the service reads them through the real kubernetes client
with its reviewer credentials.
"""
from __future__ import annotations

import pytest

from tests.conftest import UNAUTHORIZED_LOGIN, DashboardFrontend, assert_unavailable, body_json, login_ok, write_registry
from demo.kube_apiserver import DISCOVERY_PATH, JWKS_PATH

pytestmark = pytest.mark.usefixtures("healthy")


@pytest.fixture
def start(configure, secrets_client, secret_id, tmp_path, cluster_a, cluster_b):
    def start_service(**entry) -> DashboardFrontend:
        registry = write_registry(
            tmp_path / "clusters.json", [cluster_a.registry_entry(**entry), cluster_b.registry_entry()],
            default=cluster_a.name,
        )
        return DashboardFrontend(configure(KEY_SECRET_ID=secret_id, CLUSTERS_FILE=registry, CLUSTER_TIMEOUT=1))
    return start_service


@pytest.fixture
def discovery(cluster_a):
    yield cluster_a.server
    cluster_a.server.discovery = "served"


def fetches(server, path: str) -> int:
    return sum(1 for method, seen, _ in server.requests if method == "GET" and seen == path)


def foreign_token(cluster) -> str:
    return cluster.server.issue_token("kube-system", "admin-user", signing_key=cluster.server.generate_rsa_key())


def test_the_keys_are_fetched_once_and_kept(start, cluster_a):
    frontend = start()
    for _ in range(5):
        login_ok(frontend, cluster_a.login_token())
    assert fetches(cluster_a.server, DISCOVERY_PATH) == 1
    assert fetches(cluster_a.server, JWKS_PATH) == 1
    assert cluster_a.server.review_count == 5


def test_a_cluster_key_rotation_is_picked_up_without_a_failed_login(start, cluster_a):
    frontend = start()
    login_ok(frontend, cluster_a.login_token())  # the old key set is cached
    old_key = cluster_a.server.rotate_signing_key()
    try:
        login_ok(frontend, cluster_a.login_token())  # signed with the new key: its kid is unknown, so refetched
        login_ok(frontend, cluster_a.server.issue_token("kube-system", "admin-user", signing_key=old_key))
        assert fetches(cluster_a.server, JWKS_PATH) == 2
    finally:
        cluster_a.server.distrust_signing_key(old_key)


def test_a_key_the_cluster_stopped_publishing_is_refused_after_the_next_fetch(start, cluster_a):
    frontend = start()
    old_key = cluster_a.server.rotate_signing_key()
    old_token = cluster_a.server.issue_token("kube-system", "admin-user", signing_key=old_key)
    cluster_a.server.distrust_signing_key(old_key)
    login_ok(frontend, cluster_a.login_token())  # fetches the set, which no longer has the old key
    reviews = cluster_a.server.review_count
    assert body_json(frontend.login(old_token)) == UNAUTHORIZED_LOGIN
    assert cluster_a.server.review_count == reviews


def test_legacy_secret_based_tokens_verify_against_the_same_keys(start, cluster_a):
    frontend = start()
    cluster_a.login_token()  # creates the ServiceAccount
    legacy = cluster_a.server.issue_token("kube-system", "admin-user", legacy=True)
    assert body_json(frontend.login(legacy))["name"] == "admin-user"
    forged = cluster_a.server.issue_token(
        "kube-system", "admin-user", legacy=True, signing_key=cluster_a.server.generate_rsa_key()
    )
    reviews = cluster_a.server.review_count
    assert body_json(frontend.login(forged)) == UNAUTHORIZED_LOGIN
    assert cluster_a.server.review_count == reviews


@pytest.mark.parametrize("mode", ["absent", "forbidden"])
def test_a_cluster_that_publishes_no_keys_falls_back_to_token_review(start, cluster_a, discovery, mode):
    """The documented cost: without published keys every JWT-shaped login is a TokenReview."""
    discovery.discovery = mode
    frontend = start()
    login_ok(frontend, cluster_a.login_token())
    reviews = cluster_a.server.review_count
    assert body_json(frontend.login(foreign_token(cluster_a))) == UNAUTHORIZED_LOGIN
    assert cluster_a.server.review_count == reviews + 1  # the cluster had to say no
    assert fetches(cluster_a.server, DISCOVERY_PATH) == 1  # not asked again on every login


def test_verify_locally_false_never_fetches_keys(start, cluster_a):
    frontend = start(verifyLocally=False)
    login_ok(frontend, cluster_a.login_token())
    assert body_json(frontend.login(foreign_token(cluster_a))) == UNAUTHORIZED_LOGIN
    assert fetches(cluster_a.server, DISCOVERY_PATH) == fetches(cluster_a.server, JWKS_PATH) == 0
    assert cluster_a.server.review_count == 2


def test_verify_locally_must_be_a_boolean(start, cluster_a):
    frontend = start(verifyLocally="no")
    assert_unavailable(frontend.get("/api/v1/login/modes"))  # a registry the service cannot use serves nothing


def test_a_cluster_down_on_the_first_fetch_answers_503_and_recovers(start, cluster_a):
    frontend = start()
    token = cluster_a.login_token()
    cluster_a.server.set_fault("503")
    assert_unavailable(frontend.login(token))
    cluster_a.server.set_fault(None)
    login_ok(frontend, token)


def test_a_warm_container_keeps_its_keys_when_a_refetch_fails(start, cluster_a):
    """A refetch for an unknown kid that fails leaves the cached keys in place: the next real login works."""
    frontend = start()
    token = cluster_a.login_token()
    login_ok(frontend, token)
    cluster_a.server.set_fault("503")
    assert body_json(frontend.login(foreign_token(cluster_a))) == UNAUTHORIZED_LOGIN  # refetch failed: still refused
    cluster_a.server.set_fault(None)
    login_ok(frontend, token)
