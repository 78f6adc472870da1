"""The cluster registry as an operator writes it, and the reviewer credentials derived from it."""
from __future__ import annotations

import base64
import json
import urllib.parse

import pytest

from chalicelib import clusters

CA = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").decode()


def entry(**overrides) -> dict:
    return {
        "name": "prod-eu",
        "server": "https://203.0.113.10:6443",
        "certificateAuthorityData": CA,
        "reviewer": {"tokenFile": "reviewer-token"},
        **overrides,
    }


def parse(document) -> clusters.Registry:
    return clusters.parse_registry("clusters.json", json.dumps(document), "/app")


def test_a_registry_with_two_clusters_and_a_default():
    registry = parse({"defaultCluster": "b", "clusters": [entry(name="a"), entry(name="b", tokenTTL=300)]})

    assert registry.names() == ["a", "b"]
    assert registry.get(None).name == "b"
    assert registry.get("b").token_ttl == 300
    assert registry.get("a").reviewer == {"tokenFile": "/app/reviewer-token"}  # relative to the app's directory
    with pytest.raises(clusters.UnknownCluster):
        registry.get("c")


def test_the_first_cluster_is_the_default_when_none_is_named():
    assert parse({"clusters": [entry(name="x"), entry(name="y")]}).default == "x"


@pytest.mark.parametrize(
    "document, complaint",
    [
        ({}, "at least one cluster"),
        ({"clusters": []}, "at least one cluster"),
        ({"clusters": [entry(name="Prod EU")]}, "DNS label"),
        ({"clusters": [entry(name="../etc")]}, "DNS label"),
        ({"clusters": [entry(server="http://203.0.113.10")]}, "https://"),
        ({"clusters": [entry(certificateAuthorityData="not base64!")]}, "certificateAuthorityData"),
        ({"clusters": [entry(reviewer={})]}, "reviewer"),
        ({"clusters": [entry(reviewer={"password": "x"})]}, "reviewer"),
        ({"clusters": [entry(reviewer={"eks": {}})]}, "reviewer"),
        ({"clusters": [entry(audiences="aud")]}, "audiences"),
        ({"clusters": [entry(tokenTTL=-1)]}, "tokenTTL"),
        ({"clusters": [entry(tokenTTL=True)]}, "tokenTTL"),
        ({"clusters": [entry(insecure=True)]}, "unknown fields"),
        ({"clusters": [entry(), entry()]}, "twice"),
        ({"defaultCluster": "nope", "clusters": [entry()]}, "defaultCluster"),
    ],
)
def test_a_wrong_registry_is_refused_with_a_sentence_naming_the_problem(document, complaint):
    with pytest.raises(clusters.ClusterConfigError, match=complaint) as error:
        parse(document)
    assert str(error.value).startswith("clusters.json: ")


def test_a_registry_file_that_does_not_exist_says_so(tmp_path):
    with pytest.raises(clusters.ClusterConfigError, match="cannot read"):
        clusters.load_registry(str(tmp_path / "missing.json"), str(tmp_path))


def test_no_registry_means_the_current_kubeconfig_context_as_default():
    registry = clusters.load_registry(None, "/app")
    assert registry.names() == ["default"] and registry.default == "default"


def test_an_eks_reviewer_token_is_a_presigned_sts_call_naming_the_cluster():
    # STS and EKS cannot run here; presigning is local botocore work and needs no network.
    import boto3

    sts = boto3.client(
        "sts", region_name="eu-west-1", aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret"
    )
    token = clusters.eks_token("prod-eu", "eu-west-1", sts)

    assert token.startswith("k8s-aws-v1.")
    encoded = token[len("k8s-aws-v1."):]
    url = urllib.parse.urlparse(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode())
    query = urllib.parse.parse_qs(url.query)
    assert url.hostname == "sts.eu-west-1.amazonaws.com"
    assert query["Action"] == ["GetCallerIdentity"]
    assert "x-k8s-aws-id" in query["X-Amz-SignedHeaders"][0].split(";")
    assert query["X-Amz-Expires"] == ["60"]


# ---------------------------------------------------------------- why a TokenReview refused a login

def _cluster(audiences=()):
    return clusters.Cluster(name="prod-eu", server="https://127.0.0.1:6443", ca_data=b"", reviewer={},
                            audiences=tuple(audiences))


def _refusal(status, audiences=()) -> clusters.NotAuthenticated:
    with pytest.raises(clusters.NotAuthenticated) as refused:
        clusters._service_account(_cluster(audiences), status)
    return refused.value


@pytest.mark.parametrize("error, token_audiences", [
    # kube-apiserver writes the lists with Go's %q; the fake cluster (and some versions) as JSON
    ('[invalid bearer token, token audiences ["https://kubernetes.default.svc" "vault"] is invalid for the '
     'target audiences ["dashboard-auth"]]', ["https://kubernetes.default.svc", "vault"]),
    ('[invalid bearer token, token audiences ["api"] is invalid for the target audiences ["dashboard-auth"]]', ["api"]),
])
def test_a_refusal_for_the_audiences_names_the_clusters_and_the_configured_ones(error, token_audiences):
    refused = _refusal({"user": {}, "error": error}, audiences=["dashboard-auth"])
    assert refused.reason == "audience_mismatch"
    assert refused.details == {"token_audiences": token_audiences, "configured_audiences": ["dashboard-auth"]}


def test_an_authenticated_service_account_for_other_audiences_is_an_audience_mismatch_naming_it():
    status = {"authenticated": True, "user": {"username": "system:serviceaccount:team:ci"}, "audiences": ["vault"]}
    refused = _refusal(status, audiences=["dashboard-auth"])
    assert refused.reason == "audience_mismatch"
    assert refused.details == {"answered_audiences": ["vault"], "configured_audiences": ["dashboard-auth"],
                               "namespace": "team", "serviceaccount": "ci"}


@pytest.mark.parametrize("error", [
    "[invalid bearer token, service account team/ci has been deleted]",
    '[invalid bearer token, serviceaccounts "ci" not found]',
    "[invalid bearer token, service account UID (1234) does not match claim (5678)]",
])
def test_a_service_account_that_is_gone_is_deleted(error):
    assert _refusal({"user": {}, "error": error}).reason == "deleted"


@pytest.mark.parametrize("status, reason", [
    ({"user": {}, "error": "[invalid bearer token, token is expired (exp)]"}, "unauthenticated"),
    ({"user": {}}, "unauthenticated"),
    ("not an object", "unauthenticated"),
    ({"authenticated": True, "user": {"username": "jane@example.com"}}, "not_a_service_account"),
    ({"authenticated": True, "user": {"username": "system:node:ip-10-0-0-1"}}, "not_a_service_account"),
])
def test_other_refusals_are_classed_by_what_the_cluster_said(status, reason):
    refused = _refusal(status)
    assert refused.reason == reason
    assert "error" not in refused.details and not any("token is expired" in str(v) for v in refused.details.values())
