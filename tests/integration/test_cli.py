"""The operator CLI against real parts: a moto Secrets Manager server over HTTP
(AWS_ENDPOINT_URL_SECRETS_MANAGER) and TLS fake Kubernetes API servers spoken to by the kubernetes client.

Some cases run the CLI as its own process with only environment variables, as an operator would
(`python -m dashboard_auth_cli`, and the `dashboard-auth` console script from another directory);
the rest call cli.main(argv) and read what it printed.
"""
from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from dashboard_auth_cli import cli
from chalicelib import keys, sessions
from demo.kube_apiserver import DEFAULT_ISSUER, TOKENREVIEW_PATH
from tests.conftest import ROOT, UNAUTHORIZED_LOGIN, DashboardFrontend, body_json, write_registry

pytestmark = pytest.mark.usefixtures("healthy")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def run_process(*argv: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess:
    """The CLI as its own process; the environment is the test's (fake AWS credentials) plus `env`."""
    completed = subprocess.run(
        [sys.executable, "-m", "dashboard_auth_cli", *argv],
        cwd=ROOT,
        env={**os.environ, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in completed.stdout + completed.stderr, completed.stderr
    return completed


def stages(secrets_client, secret_id) -> dict[str, str]:
    versions = secrets_client.describe_secret(SecretId=secret_id)["VersionIdsToStages"]
    return {stage: version for version, labels in versions.items() for stage in labels}


def stored(secrets_client, secret_id, stage="AWSCURRENT") -> tuple[str, str]:
    answer = secrets_client.get_secret_value(SecretId=secret_id, VersionStage=stage)
    return answer["VersionId"], answer["SecretString"]


def assert_no_key_material(text: str, *values: str) -> None:
    assert "BEGIN" not in text and "PRIVATE KEY" not in text
    for value in values:
        fields = json.loads(value)
        for name in ("priv", "pub", "csrf"):
            body = "".join(fields[name].splitlines()[1:-1]) if name != "csrf" else fields[name]
            assert body[:40] not in text


# ---------------------------------------------------------------- create-key


def test_create_key_creates_once_then_reports_the_existing_key(moto_server, secrets_client, secret_id, capsys):
    first = run_process("create-key", KEY_SECRET_ID=secret_id, AWS_ENDPOINT_URL_SECRETS_MANAGER=moto_server.url)

    assert first.returncode == 0, first.stderr
    kid, value = stored(secrets_client, secret_id)
    assert first.stdout == f"created the key in {secret_id}: kid {kid}\n"
    keys.parse_secret_value(kid, value)  # a usable key in the service's format

    code, out, err = run(capsys, "create-key", "--secret-id", secret_id)

    assert code == 0
    assert out == f"the key was already there in {secret_id}: kid {kid} (not changed)\n"
    assert stored(secrets_client, secret_id) == (kid, value)
    assert len(secrets_client.list_secret_version_ids(SecretId=secret_id)["Versions"]) == 1
    assert_no_key_material(first.stdout + first.stderr + out + err, value)


def test_create_key_never_replaces_a_usable_key(secrets_client, secret_id, capsys):
    value = keys.new_secret_value()
    kid = secrets_client.create_secret(Name=secret_id, SecretString=value)["VersionId"]

    code, out, _ = run(capsys, "create-key", "--secret-id", secret_id)

    assert code == 0 and "already there" in out and kid in out
    assert stored(secrets_client, secret_id) == (kid, value)


def test_create_key_fills_a_secret_whose_value_is_unusable(secrets_client, secret_id, capsys):
    unusable = secrets_client.create_secret(Name=secret_id, SecretString="{}")["VersionId"]

    code, out, _ = run(capsys, "create-key", "--secret-id", secret_id)

    kid, value = stored(secrets_client, secret_id)
    assert code == 0
    assert out == f"created the key in {secret_id}: kid {kid} (version {unusable} held no usable key)\n"
    keys.parse_secret_value(kid, value)


def test_create_key_with_secrets_manager_refusing_fails_in_one_line(secrets_client, secret_id, capsys):
    secrets_client.create_secret(Name=secret_id, SecretString="{}")
    secrets_client.delete_secret(SecretId=secret_id)  # scheduled for deletion: reads are refused
    code, out, err = run(capsys, "create-key", "--secret-id", secret_id)
    assert code == 1 and out == ""
    assert "InvalidRequestException" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- rotate


def test_rotate_moves_awscurrent_and_awsprevious(moto_server, secrets_client, secret_id, capsys):
    assert run(capsys, "create-key", "--secret-id", secret_id)[0] == 0
    first, first_value = stored(secrets_client, secret_id)

    rotated = run_process("rotate", KEY_SECRET_ID=secret_id, AWS_ENDPOINT_URL_SECRETS_MANAGER=moto_server.url)

    assert rotated.returncode == 0, rotated.stderr
    labels = stages(secrets_client, secret_id)
    second = labels["AWSCURRENT"]
    assert second != first and labels["AWSPREVIOUS"] == first
    assert rotated.stdout.splitlines()[0] == f"rotated {secret_id}: {first} -> {second}"
    second_value = stored(secrets_client, secret_id)[1]
    assert keys.parse_secret_value(second, second_value).fingerprint() != (
        keys.parse_secret_value(first, first_value).fingerprint()
    )
    assert stored(secrets_client, secret_id, "AWSPREVIOUS") == (first, first_value)
    assert_no_key_material(rotated.stdout + rotated.stderr, first_value, second_value)

    code, out, _ = run(capsys, "rotate", "--secret-id", secret_id)

    labels = stages(secrets_client, secret_id)
    third = labels["AWSCURRENT"]
    assert code == 0
    assert labels["AWSPREVIOUS"] == second and third not in (first, second)
    assert out.splitlines()[0] == f"rotated {secret_id}: {second} -> {third}"
    assert re.search(rf"retired\s+{first}\b", out)
    assert "AWSPENDING" not in labels or labels["AWSPENDING"] == third


def test_rotate_a_missing_secret_fails_with_a_hint(secrets_client, secret_id, capsys):
    code, out, err = run(capsys, "rotate", "--secret-id", secret_id)
    assert code == 1 and out == ""
    assert "not found" in err and "create-key" in err


def test_rotate_via_secrets_manager_says_when_rotation_is_not_configured(moto_server, secrets_client, secret_id):
    secrets_client.create_secret(Name=secret_id, SecretString=keys.new_secret_value())
    before = stages(secrets_client, secret_id)

    completed = run_process(
        "rotate", "--via-secrets-manager", "--secret-id", secret_id,
        AWS_ENDPOINT_URL_SECRETS_MANAGER=moto_server.url,
    )

    assert completed.returncode == 1 and completed.stdout == ""
    assert "rotation is not configured on secret" in completed.stderr
    assert "without --via-secrets-manager" in completed.stderr
    assert len(completed.stderr.strip().splitlines()) == 1
    assert stages(secrets_client, secret_id) == before  # nothing was rotated


# ---------------------------------------------------------------- manifest


def decoded_manifest(text: str) -> tuple[dict, str, str, str]:
    """The key-holder document, its priv and pub, and the CSRF Secret's csrf, decoded as kubectl would."""
    documents = {d["metadata"]["name"]: d for d in yaml.safe_load_all(text) if d is not None}
    assert set(documents) == {"kubernetes-dashboard-key-holder", "kubernetes-dashboard-csrf"}
    assert all(d["apiVersion"] == "v1" and d["kind"] == "Secret" for d in documents.values())
    document, csrf = documents["kubernetes-dashboard-key-holder"], documents["kubernetes-dashboard-csrf"]
    assert set(document["data"]) == {"priv", "pub"} and set(csrf["data"]) == {"csrf"}
    assert csrf["metadata"]["namespace"] == document["metadata"]["namespace"]
    return (
        document,
        base64.b64decode(document["data"]["priv"]).decode(),
        base64.b64decode(document["data"]["pub"]).decode(),
        base64.b64decode(csrf["data"]["csrf"]).decode(),
    )


def test_manifest_carries_the_stored_pems_exactly(moto_server, secrets_client, secret_id, capsys):
    assert run(capsys, "create-key", "--secret-id", secret_id)[0] == 0
    kid, value = stored(secrets_client, secret_id)

    completed = run_process("manifest", KEY_SECRET_ID=secret_id, AWS_ENDPOINT_URL_SECRETS_MANAGER=moto_server.url)

    assert completed.returncode == 0, completed.stderr
    document, priv, pub, csrf = decoded_manifest(completed.stdout)
    assert document["metadata"]["namespace"] == "kubernetes-dashboard"
    assert document["metadata"]["annotations"]["dashboard-auth/kid"] == kid
    fields = json.loads(value)
    assert priv == fields["priv"] and pub == fields["pub"] and csrf == fields["csrf"]
    private_key = serialization.load_pem_private_key(priv.encode(), password=None)
    public_key = serialization.load_der_public_key(base64.b64decode("".join(pub.strip().splitlines()[1:-1])))
    assert public_key.public_numbers() == private_key.public_key().public_numbers()
    assert "warning" in completed.stderr and "BEGIN" not in completed.stderr


def test_manifest_of_the_previous_stage_after_a_rotation(secrets_client, secret_id, capsys, tmp_path):
    secrets_client.create_secret(Name=secret_id, SecretString=keys.new_secret_value())
    assert run(capsys, "rotate", "--secret-id", secret_id)[0] == 0
    previous_kid, previous_value = stored(secrets_client, secret_id, "AWSPREVIOUS")
    target = tmp_path / "key-holder.yaml"

    code, out, err = run(capsys, "manifest", "--secret-id", secret_id, "--version-stage", "AWSPREVIOUS",
                         "--output", str(target))

    assert code == 0 and out == ""
    assert oct(os.stat(target).st_mode & 0o777) == "0o600"
    document, priv, pub, csrf = decoded_manifest(target.read_text())
    assert document["metadata"]["annotations"]["dashboard-auth/kid"] == previous_kid
    previous = json.loads(previous_value)
    assert (priv, pub, csrf) == (previous["priv"], previous["pub"], previous["csrf"])
    assert csrf != json.loads(stored(secrets_client, secret_id)[1])["csrf"]  # each key has its own CSRF key


def test_manifest_of_a_missing_stage_or_an_unusable_value_fails(secrets_client, secret_id, capsys):
    secrets_client.create_secret(Name=secret_id, SecretString='{"priv": "no", "pub": "no"}')

    code, out, err = run(capsys, "manifest", "--secret-id", secret_id, "--version-stage", "AWSPREVIOUS")
    assert code == 1 and out == "" and "no AWSPREVIOUS version" in err

    code, out, err = run(capsys, "manifest", "--secret-id", secret_id, "--stage", "AWSPREVIOUS")
    assert code == 2 and out == "" and "--stage was renamed: use --version-stage" in err

    code, out, err = run(capsys, "manifest", "--secret-id", secret_id)
    assert code == 1 and out == "" and "holds no usable key" in err


# ---------------------------------------------------------------- decode, on a token the service minted


def test_decode_a_token_from_a_real_login(configure, secrets_client, secret_id, tmp_path, cluster_a, capsys):
    registry = write_registry(tmp_path / "clusters.json", [cluster_a.registry_entry()])
    frontend = DashboardFrontend(configure(KEY_SECRET_ID=secret_id, CLUSTERS_FILE=registry))
    response = frontend.login(cluster_a.login_token())
    token = body_json(response)["jweToken"]
    kid = stored(secrets_client, secret_id)[0]

    completed = run_process("decode", "--json", "-", stdin=token)

    assert completed.returncode == 0, completed.stderr
    info = json.loads(completed.stdout)
    claims = sessions.parse(token).claims
    assert info["kid"] == kid and info["cluster"] == cluster_a.name
    assert info["iat"] == info["auth_time"] == info["reviewed_at"] == sessions.format_time(claims.issued_at)
    assert info["exp"] == sessions.format_time(claims.expires_at)
    assert 880 <= info["expires_in_seconds"] <= 900 and info["expired"] is False
    for sealed in ("encrypted_key", "ciphertext"):
        assert json.loads(token)[sealed] not in completed.stdout

    garbage = run_process("decode", "-", stdin="not-a-token")
    assert garbage.returncode == 1 and garbage.stdout == ""
    assert "not a well-formed session token" in garbage.stderr


# ---------------------------------------------------------------- check-clusters


def check_lines(out: str) -> dict[str, tuple[str, str]]:
    """{cluster: (OK|FAIL, the rest of the line)}"""
    rows = {}
    for line in out.splitlines():
        verdict, name, rest = line.split(None, 2)
        rows[name] = (verdict, rest)
    return rows


def test_check_clusters_ok_for_healthy_clusters(tmp_path, cluster_a, cluster_b):
    registry = write_registry(tmp_path / "clusters.json", [cluster_a.registry_entry(), cluster_b.registry_entry()])

    completed = run_process("check-clusters", CLUSTERS_FILE=registry)
    tokenreviews = [request for request in cluster_a.server.requests if request[1] == TOKENREVIEW_PATH]

    assert completed.returncode == 0, completed.stdout + completed.stderr
    rows = check_lines(completed.stdout)
    assert set(rows) == {cluster_a.name, cluster_b.name}
    for name, (verdict, rest) in rows.items():
        assert verdict == "OK", rest
        assert "reviewer may create tokenreviews" in rest
    assert rows[cluster_a.name][1].startswith(cluster_a.server.url)
    assert cluster_a.reviewer_token not in completed.stdout + completed.stderr
    assert ("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", 201) in cluster_a.server.requests
    # one TokenReview per cluster, answered: the reviewer path end to end
    assert tokenreviews == [("POST", TOKENREVIEW_PATH, 201)]
    assert rows[cluster_a.name][1].endswith("TokenReview refuses an unsigned token; "
                                            "1 issuer key(s) published, logins verified before review")


def test_check_clusters_fails_a_stopped_cluster_and_still_checks_the_others(tmp_path, cluster_a, cluster_b, capsys):
    registry = write_registry(tmp_path / "clusters.json", [cluster_a.registry_entry(), cluster_b.registry_entry()])
    cluster_b.server.stop()

    code, out, err = run(capsys, "check-clusters", "--clusters-file", registry, "--timeout", "2")

    rows = check_lines(out)
    assert code == 1
    assert rows[cluster_a.name][0] == "OK"
    assert rows[cluster_b.name][0] == "FAIL"
    assert "unreachable: connection refused" in rows[cluster_b.name][1]


def test_check_clusters_fails_a_wrong_ca(tmp_path, cluster_a, cluster_b, capsys):
    wrong_ca = cluster_a.registry_entry(certificateAuthorityData=cluster_b.server.ca_data)
    registry = write_registry(tmp_path / "clusters.json", [wrong_ca])

    code, out, _ = run(capsys, "check-clusters", "--clusters-file", registry)

    verdict, rest = check_lines(out)[cluster_a.name]
    assert code == 1 and verdict == "FAIL"
    assert "the CA does not verify the server's certificate" in rest


def test_check_clusters_fails_a_reviewer_without_tokenreview_permission(tmp_path, cluster_a, capsys):
    forbidden = tmp_path / "forbidden-reviewer"
    forbidden.write_text(cluster_a.server.new_reviewer(allowed=False))
    entry = cluster_a.registry_entry(reviewer={"tokenFile": str(forbidden)})
    registry = write_registry(tmp_path / "clusters.json", [entry])

    code, out, err = run(capsys, "check-clusters", "--clusters-file", registry)

    verdict, rest = check_lines(out)[cluster_a.name]
    assert code == 1 and verdict == "FAIL"
    assert "the reviewer may not create tokenreviews.authentication.k8s.io" in rest
    assert forbidden.read_text() not in out + err


def test_check_clusters_fails_unknown_or_unreadable_reviewer_credentials(tmp_path, cluster_a, cluster_b, capsys):
    unknown = tmp_path / "unknown-reviewer"
    unknown.write_text("not-a-reviewer-this-cluster-knows")
    registry = write_registry(
        tmp_path / "clusters.json",
        [
            cluster_a.registry_entry(reviewer={"tokenFile": str(unknown)}),
            cluster_b.registry_entry(reviewer={"tokenFile": str(tmp_path / "missing-token")}),
        ],
    )

    code, out, err = run(capsys, "check-clusters", "--clusters-file", registry)

    rows = check_lines(out)
    assert code == 1
    assert rows[cluster_a.name][0] == "FAIL" and "rejected the reviewer credentials (HTTP 401)" in rows[cluster_a.name][1]
    assert rows[cluster_b.name][0] == "FAIL" and "cannot read reviewer tokenFile" in rows[cluster_b.name][1]
    assert "not-a-reviewer-this-cluster-knows" not in out + err


def test_check_clusters_fails_a_cluster_that_errors_or_hangs(tmp_path, cluster_a, cluster_b, capsys):
    registry = write_registry(tmp_path / "clusters.json", [cluster_a.registry_entry(), cluster_b.registry_entry()])
    cluster_a.server.set_fault("503")
    cluster_b.server.set_fault("hang")

    code, out, _ = run(capsys, "check-clusters", "--clusters-file", registry, "--timeout", "1")

    rows = check_lines(out)
    assert code == 1
    assert rows[cluster_a.name][0] == "FAIL" and "HTTP 503" in rows[cluster_a.name][1]
    assert rows[cluster_b.name][0] == "FAIL" and "no answer" in rows[cluster_b.name][1]


def test_check_clusters_says_which_clusters_check_logins_by_token_review_alone(tmp_path, cluster_a, cluster_b, capsys):
    registry = write_registry(
        tmp_path / "clusters.json", [cluster_a.registry_entry(), cluster_b.registry_entry(verifyLocally=False)]
    )
    cluster_a.server.discovery = "forbidden"
    try:
        code, out, _ = run(capsys, "check-clusters", "--clusters-file", registry)
    finally:
        cluster_a.server.discovery = "served"

    rows = check_lines(out)
    assert code == 0  # a cluster can be used this way: the line says what it costs
    assert rows[cluster_a.name][0] == "OK" and "publishes no issuer keys" in rows[cluster_a.name][1]
    assert rows[cluster_b.name][0] == "OK" and "verifyLocally is off" in rows[cluster_b.name][1]


def test_check_clusters_without_registry_checks_the_kubeconfig_context_as_default(tmp_path, cluster_a, cluster_b):
    kubeconfig = cluster_a.server.write_kubeconfig(tmp_path / "kubeconfig", cluster_a.reviewer_token)

    completed = run_process("check-clusters", KUBECONFIG=str(kubeconfig))

    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert check_lines(completed.stdout) == {
        "default": ("OK", f"{cluster_a.server.url}  reachable, CA verifies, reviewer may create tokenreviews; "
                          "TokenReview refuses an unsigned token; 1 issuer key(s) published, logins verified "
                          "before review")
    }

    # the same context, with another cluster's CA in the kubeconfig
    config = yaml.safe_load(open(kubeconfig))
    config["clusters"][0]["cluster"]["certificate-authority-data"] = cluster_b.server.ca_data
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
    completed = run_process("check-clusters", KUBECONFIG=str(kubeconfig))
    assert completed.returncode == 1
    assert "FAIL  default" in completed.stdout and "the CA does not verify" in completed.stdout


def test_check_clusters_reports_audiences_the_cluster_names_that_are_not_the_registrys(
        tmp_path, cluster_a, cluster_b, configure, secret_id, secrets_client, capsys):
    """A token authenticator that names its own audiences (a webhook, an authenticating proxy): the
    service refuses every login there, and check-clusters says so before anyone tries."""
    wanted = ["https://dashboard-auth.example.com"]
    registry = write_registry(tmp_path / "clusters.json", [
        cluster_a.registry_entry(audiences=wanted), cluster_b.registry_entry(audiences=[DEFAULT_ISSUER]),
    ])
    cluster_a.server.answer_audiences = [DEFAULT_ISSUER]
    try:
        code, out, err = run(capsys, "check-clusters", "--clusters-file", registry)
        login = DashboardFrontend(configure(KEY_SECRET_ID=secret_id, CLUSTERS_FILE=registry)).login(
            cluster_a.login_token(audiences=wanted))
    finally:
        cluster_a.server.answer_audiences = None

    rows = check_lines(out)
    assert code == 1
    verdict, rest = rows[cluster_a.name]
    assert verdict == "FAIL"
    assert (f"audiences do not match: the cluster's answer names ['{DEFAULT_ISSUER}'], the registry's audiences "
            f"are {wanted}, so every login would be refused") in rest
    assert body_json(login) == UNAUTHORIZED_LOGIN  # what check-clusters foretold
    assert rows[cluster_b.name] == ("OK", rows[cluster_b.name][1])
    assert "TokenReview refuses an unsigned token" in rows[cluster_b.name][1]


def test_check_clusters_says_when_audiences_agree(tmp_path, cluster_a, capsys):
    registry = write_registry(tmp_path / "clusters.json", [cluster_a.registry_entry(audiences=[DEFAULT_ISSUER])])
    unset = write_registry(tmp_path / "no-audiences.json", [cluster_a.registry_entry()])
    cluster_a.server.answer_audiences = [DEFAULT_ISSUER, "https://other.example.com"]
    try:
        code, out, _ = run(capsys, "check-clusters", "--clusters-file", registry)
        code_unset, out_unset, _ = run(capsys, "check-clusters", "--clusters-file", unset)
    finally:
        cluster_a.server.answer_audiences = None
    verdict, rest = check_lines(out)[cluster_a.name]
    assert code == 0 and verdict == "OK"
    assert f"TokenReview refuses an unsigned token, audiences agree ({DEFAULT_ISSUER})" in rest
    verdict, rest = check_lines(out_unset)[cluster_a.name]
    assert code_unset == 0 and verdict == "OK"
    assert "the cluster names audiences" in rest and "(the registry sets none: not checked)" in rest


def test_check_clusters_sends_the_registrys_audiences_and_a_token_nobody_signed(tmp_path, cluster_a, capsys,
                                                                               monkeypatch):
    reviewed = []
    real_review = cluster_a.server.review

    def review(token, audiences=None):
        reviewed.append((token, audiences))
        return real_review(token, audiences)

    monkeypatch.setattr(cluster_a.server, "review", review)
    registry = write_registry(tmp_path / "clusters.json", [cluster_a.registry_entry(audiences=["aud-1", "aud-2"])])

    code, out, err = run(capsys, "check-clusters", "--clusters-file", registry)

    assert code == 0, out
    [(token, audiences)] = reviewed
    assert audiences == ["aud-1", "aud-2"]
    header, claims, signature = token.split(".")
    assert json.loads(base64.urlsafe_b64decode(header + "=="))["alg"] == "RS256"
    assert base64.urlsafe_b64decode(signature + "==") == b"signed by nobody"
    assert "authenticated" not in real_review(token, audiences)  # the fake, like kube-apiserver, refuses it
    assert token not in out + err and "eyJ" not in out + err


def test_check_clusters_fails_a_cluster_whose_token_review_accepts_anything(tmp_path, cluster_a, capsys, monkeypatch):
    monkeypatch.setattr(cluster_a.server, "review", lambda token, audiences=None: {
        "authenticated": True, "user": {"username": "system:serviceaccount:default:anyone"}})
    registry = write_registry(tmp_path / "clusters.json", [cluster_a.registry_entry()])

    code, out, _ = run(capsys, "check-clusters", "--clusters-file", registry)

    verdict, rest = check_lines(out)[cluster_a.name]
    assert code == 1 and verdict == "FAIL"
    assert "the cluster authenticated a token nobody signed" in rest


# ---------------------------------------------------------------- the command, as installed


def test_the_console_script_works_from_any_directory(tmp_path, moto_server, secrets_client, secret_id):
    """`make install` puts .venv/bin/dashboard-auth in place; it needs neither the repository as the
    working directory nor on PYTHONPATH."""
    command = os.path.join(os.path.dirname(sys.executable), "dashboard-auth")
    env = {**os.environ, "PYTHONPATH": "", "KEY_SECRET_ID": secret_id,
           "AWS_ENDPOINT_URL_SECRETS_MANAGER": moto_server.url}

    created = subprocess.run([command, "create-key"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=120)
    helped = subprocess.run([sys.executable, "-m", "dashboard_auth_cli", "--help"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)

    assert created.returncode == 0, created.stderr
    assert created.stdout == f"created the key in {secret_id}: kid {stored(secrets_client, secret_id)[0]}\n"
    assert helped.returncode == 0 and helped.stdout.startswith("usage: dashboard-auth ")
