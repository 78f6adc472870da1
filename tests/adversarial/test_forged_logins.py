"""Forged ServiceAccount tokens never reach a cluster.

Every JWT-shaped login used to become a TokenReview on a production API server. Now the service
checks a login's signature, issuer and expiry against the keys the cluster publishes (fetched from
the fake API server's /.well-known/openid-configuration and /openid/v1/jwks, through the real
kubernetes client) and only a token that verifies is sent for review.

The fake API server counts every TokenReview it answers and records every request, so "never reached
the cluster" is read off the cluster itself.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import time
import uuid

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import UNAUTHORIZED_LOGIN, DashboardFrontend, body_json, login_ok, write_registry
from demo.kube_apiserver import JWKS_PATH, LEGACY_ISSUER, FakeKubeApiServer, key_id, sign_jwt

pytestmark = pytest.mark.usefixtures("healthy")

UNKNOWN_KID_REFETCH_INTERVAL = 5.0  # chalicelib.issuers' budget, restated: the test is what it promises


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segments(token: str) -> tuple[dict, dict, str]:
    header, payload, signature = token.split(".")
    pad = lambda part: part + "=" * (-len(part) % 4)  # noqa: E731
    return (
        json.loads(base64.urlsafe_b64decode(pad(header))),
        json.loads(base64.urlsafe_b64decode(pad(payload))),
        signature,
    )


def unsigned(header: dict, claims: dict) -> str:
    return b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())


# ---------------------------------------------------------------- the forgeries

def forge(kind: str, server: FakeKubeApiServer, foreign_key, serial: int = 0) -> str:
    """One forged login token of `kind` for the fake cluster `server` (its ServiceAccount exists)."""
    cluster_kid = key_id(server.signing_key.public_key())
    if kind == "bad-signature":  # a real token with its name edited: the signature no longer matches
        header, claims, signature = segments(server.issue_token("kube-system", "admin-user"))
        claims["kubernetes.io"]["serviceaccount"]["name"] = "cluster-admin"
        return unsigned(header, claims) + "." + signature
    if kind == "foreign-key-cluster-kid":  # signed by another key, claiming the cluster's kid
        return server.issue_token("kube-system", "admin-user", signing_key=foreign_key,
                                  header_overrides={"kid": cluster_kid})
    if kind == "wrong-issuer":  # signed by the cluster's own key, but for another issuer
        return server.issue_token("kube-system", "admin-user", issuer="https://evil.example.com")
    if kind == "expired":  # the cluster's own signature, a minute past exp
        return server.issue_token("kube-system", "admin-user", expires_in=-60)
    if kind == "unknown-kid":  # a kid the cluster never published, a new one each time
        return server.issue_token("kube-system", "admin-user", signing_key=foreign_key,
                                  header_overrides={"kid": f"made-up-{serial}-{uuid.uuid4().hex}"})
    if kind == "alg-none":
        _, claims, _ = segments(server.issue_token("kube-system", "admin-user"))
        return unsigned({"alg": "none", "kid": cluster_kid}, claims) + ".AAAA"
    if kind == "hs256-public-key":  # HMAC keyed with the cluster's public key, which anyone may read
        _, claims, _ = segments(server.issue_token("kube-system", "admin-user"))
        signing_input = unsigned({"alg": "HS256", "kid": cluster_kid}, claims)
        public_pem = server.signing_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return signing_input + "." + b64url(hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest())
    if kind == "embedded-jwk":  # the attacker's own key, offered in the header
        public = foreign_key.public_key().public_numbers()
        to_b64 = lambda n: b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))  # noqa: E731
        return server.issue_token("kube-system", "admin-user", signing_key=foreign_key, header_overrides={
            "kid": cluster_kid, "jwk": {"kty": "RSA", "n": to_b64(public.n), "e": to_b64(public.e)},
        })
    if kind == "jku":
        return server.issue_token("kube-system", "admin-user", signing_key=foreign_key,
                                  header_overrides={"jku": "https://127.0.0.1:9/jwks"})
    if kind == "no-kid-foreign-key":
        return server.issue_token("kube-system", "admin-user", signing_key=foreign_key, header_overrides={"kid": None})
    if kind == "es256-unpublished":
        _, claims, _ = segments(server.issue_token("kube-system", "admin-user"))
        key = ec.generate_private_key(ec.SECP256R1())
        signing_input = unsigned({"alg": "ES256", "kid": cluster_kid}, claims)
        der = key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
        r, s = decode_dss_signature(der)
        return signing_input + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    if kind == "legacy-foreign-key":  # an old Secret-based token, signed by another key
        return server.issue_token("kube-system", "admin-user", legacy=True, signing_key=foreign_key,
                                  header_overrides={"kid": cluster_kid})
    raise ValueError(kind)


KINDS = [
    "bad-signature", "foreign-key-cluster-kid", "wrong-issuer", "expired", "unknown-kid", "alg-none",
    "hs256-public-key", "embedded-jwk", "jku", "no-kid-foreign-key", "es256-unpublished", "legacy-foreign-key",
]
FLOOD_KINDS = ["bad-signature", "wrong-issuer", "expired", "unknown-kid", "alg-none", "hs256-public-key",
               "foreign-key-cluster-kid"]


@pytest.fixture(scope="module")
def foreign_key():
    return FakeKubeApiServer.generate_rsa_key()


@pytest.fixture
def frontend(configure, secrets_client, secret_id, tmp_path, cluster_a):
    registry = write_registry(tmp_path / "clusters.json", [cluster_a.registry_entry()])
    return DashboardFrontend(configure(KEY_SECRET_ID=secret_id, CLUSTERS_FILE=registry))


def jwks_fetches(server: FakeKubeApiServer) -> int:
    return sum(1 for method, path, _ in server.requests if method == "GET" and path == JWKS_PATH)


# ---------------------------------------------------------------- each kind

@pytest.mark.parametrize("kind", KINDS)
def test_a_forged_token_is_refused_without_a_token_review(frontend, cluster_a, foreign_key, kind):
    login_ok(frontend, cluster_a.login_token())  # the cluster is real, and its keys are in hand
    reviews = cluster_a.server.review_count

    response = frontend.login(forge(kind, cluster_a.server, foreign_key))

    assert response.status_code == 200 and body_json(response) == UNAUTHORIZED_LOGIN
    assert cluster_a.server.review_count == reviews


def test_a_forgery_is_refused_even_on_a_cold_container(frontend, cluster_a, foreign_key):
    """The first login of a container fetches the keys first, then judges: no review either."""
    response = frontend.login(forge("bad-signature", cluster_a.server, foreign_key))
    assert body_json(response) == UNAUTHORIZED_LOGIN
    assert cluster_a.server.review_count == 0


# ---------------------------------------------------------------- a flood

def test_a_flood_of_forgeries_costs_the_cluster_nothing_while_real_tokens_log_in(frontend, cluster_a, foreign_key):
    """280 forgeries of seven kinds, a real login after every 14: 0 TokenReviews for the forgeries,
    and made-up kids refetch the key set at most once per interval."""
    server = cluster_a.server
    real = cluster_a.login_token()
    forgeries = [forge(kind, server, foreign_key, serial) for serial in range(40) for kind in FLOOD_KINDS]
    started = time.monotonic()
    refused, real_logins = 0, 0
    for index, token in enumerate(forgeries):
        if body_json(frontend.login(token)) == UNAUTHORIZED_LOGIN:
            refused += 1
        if index % 14 == 0:
            login_ok(frontend, real)
            real_logins += 1
    elapsed = time.monotonic() - started

    print(f"\nflood: {len(forgeries)} forgeries refused {refused}, {real_logins} real logins, "
          f"{server.review_count} TokenReviews, {jwks_fetches(server)} JWKS fetches in {elapsed:.1f} s")
    assert refused == len(forgeries)
    assert server.review_count == real_logins  # one per real login, none for a forgery
    # the container's first fetch, then at most one per interval for the made-up kids
    assert jwks_fetches(server) <= 1 + math.ceil(elapsed / UNKNOWN_KID_REFETCH_INTERVAL)


# ---------------------------------------------------------------- what still goes to the cluster

def test_a_token_that_verifies_still_needs_the_clusters_word(frontend, cluster_a):
    """TokenReview stays the authority: a well-signed token of a deleted ServiceAccount is refused by it."""
    server = cluster_a.server
    server.create_service_account("default", "short-lived")
    token = server.issue_token("default", "short-lived")
    login_ok(frontend, token)
    server.delete_service_account("default", "short-lived")
    reviews = server.review_count

    assert body_json(frontend.login(token)) == UNAUTHORIZED_LOGIN
    assert server.review_count == reviews + 1
