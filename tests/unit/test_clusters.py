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
