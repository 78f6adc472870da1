"""With every logger at DEBUG (the kubernetes client logs TokenReview bodies, which echo the token),
no ServiceAccount token, session token or key material reaches a log line or a response body."""
from __future__ import annotations

import io
import json
import logging

import pytest

from chalicelib import logs
from tests.conftest import DashboardFrontend, body_json, write_registry

pytestmark = pytest.mark.usefixtures("healthy")


@pytest.fixture
def log_output():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    logs.configure("DEBUG")
    for name in ("kubernetes", "urllib3", "botocore", "chalicelib"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(logging.WARNING)


def test_nothing_secret_is_logged_or_returned_at_debug(
    log_output, configure, secrets_client, secret_id, tmp_path, cluster_a
):
    registry = write_registry(tmp_path / "c.json", [cluster_a.registry_entry()])
    frontend = DashboardFrontend(
        configure(KEY_SECRET_ID=secret_id, CLUSTERS_FILE=registry, REVIEW_INTERVAL=0, LOG_LEVEL="DEBUG")
    )
    service_account_token = cluster_a.login_token("kube-system", "leak-check")
    login = frontend.login(service_account_token)
    session = body_json(login)["jweToken"]
    refreshed = frontend.refresh(session)
    cluster_a.server.delete_service_account("kube-system", "leak-check")
    revoked = frontend.refresh(body_json(refreshed)["jweToken"])
    bad = frontend.login(service_account_token)
    cluster_a.server.set_fault("500")
    frontend.login(cluster_a.login_token("kube-system", "other"))

    secret_value = json.loads(secrets_client.get_secret_value(SecretId=secret_id)["SecretString"])
    logged = log_output.getvalue()
    assert "TokenReview" in logged or "tokenreviews" in logged  # the DEBUG output did include the reviews
    forbidden = [
        service_account_token,
        service_account_token.split(".")[2],  # the signature alone
        session,
        json.loads(session)["encrypted_key"],
        json.loads(session)["ciphertext"],
        cluster_a.reviewer_token,
        secret_value["priv"].splitlines()[1],
        secret_value["pub"].splitlines()[1],
        secret_value["csrf"][:40],
    ]
    for secret in forbidden:
        assert secret not in logged
    for response in (refreshed, revoked, bad):
        assert service_account_token.encode() not in response.body
    assert revoked.status_code == 401
