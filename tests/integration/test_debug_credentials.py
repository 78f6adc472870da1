"""With LOG_LEVEL=DEBUG, a login through a cluster whose reviewer is an EKS token logs no SigV4 material.

The EKS reviewer token is "k8s-aws-v1." + base64url of a presigned STS GetCallerIdentity URL. At
DEBUG botocore's signer logs the canonical request (X-Amz-Credential, X-Amz-Security-Token), the
string to sign and the signature: enough to rebuild the token and act as the reviewer.

STS and EKS cannot run here. Presigning is local botocore work (fake credentials, no network); the
fake API server is told that each token the service presigns is its reviewer, as EKS would accept
it after asking STS.
"""
from __future__ import annotations

import base64
import urllib.parse

import pytest

from chalicelib import clusters
from tests.conftest import DashboardFrontend, body_json, write_registry

pytestmark = pytest.mark.usefixtures("healthy")

FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "AWS_SESSION_TOKEN": "IQoJb3JpZ2luX2VjEXAMPLE/session+token=with/base64+chars//AAAAexample==",
}




@pytest.fixture
def presigned(monkeypatch, cluster_a) -> list[str]:
    """Every EKS token the service makes, each made a reviewer of cluster_a the moment it exists."""
    made: list[str] = []
    real = clusters.eks_token

    def eks_token(*args, **kwargs):
        token = real(*args, **kwargs)
        cluster_a.server.add_reviewer(token)
        made.append(token)
        return token

    monkeypatch.setattr(clusters, "eks_token", eks_token)
    return made


def sigv4_parts(token: str) -> dict[str, str]:
    encoded = token[len("k8s-aws-v1."):]
    url = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    credential = query["X-Amz-Credential"][0]
    session_token = query["X-Amz-Security-Token"][0]
    return {
        "the EKS token": token,
        "the EKS token's base64 part": encoded,
        "the signature": query["X-Amz-Signature"][0],
        "the session token": session_token,
        "the session token, URL-encoded": urllib.parse.quote(session_token, safe=""),
        "the access key id with its scope": credential,
        "the access key id with its scope, URL-encoded": urllib.parse.quote(credential, safe=""),
    }


def test_a_login_through_an_eks_reviewer_at_debug_logs_no_sigv4_material(
    debug_log, presigned, monkeypatch, configure, secrets_client, secret_id, tmp_path, cluster_a
):
    for name, value in FAKE_AWS.items():
        monkeypatch.setenv(name, value)  # the function role's credentials, as Lambda gives them
    entry = {**cluster_a.registry_entry(), "reviewer": {"eks": {"clusterName": "prod-eu", "region": "eu-west-1"}}}
    frontend = DashboardFrontend(configure(
        KEY_SECRET_ID=secret_id, CLUSTERS_FILE=write_registry(tmp_path / "c.json", [entry]), REVIEW_INTERVAL=0,
        LOG_LEVEL="DEBUG",
    ))

    login = frontend.login(cluster_a.login_token("kube-system", "eks-debug"))
    assert login.status_code == 200 and body_json(login)["name"] == "eks-debug", login.body
    assert frontend.refresh(body_json(login)["jweToken"]).status_code == 200  # a second review, same reviewer

    assert presigned, "the service never made an EKS token: the reviewer under test was not used"
    assert cluster_a.server.review_count >= 2
    log = debug_log.getvalue()
    assert "botocore.auth DEBUG" in log  # the signer logged at DEBUG: there was something to withhold
    leaked = [f"{what} of token {n}" for n, token in enumerate(presigned)
              for what, value in sigv4_parts(token).items() if value in log]
    leaked += [what for what, value in (("the secret access key", FAKE_AWS["AWS_SECRET_ACCESS_KEY"]),
                                        ("the session token", FAKE_AWS["AWS_SESSION_TOKEN"])) if value in log]
    assert not leaked, f"in the DEBUG log: {', '.join(leaked)}"
