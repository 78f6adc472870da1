"""Many cold Lambda containers at once: the key bootstrap is race-free across processes.

Each container is its own Python process (tests/fakes/lambda_container.py) that imported the
app once and is invoked through the real Lambda entry point, app.app(event, context), with API
Gateway proxy events. Secrets Manager is the shared moto server process; the clusters are the
TLS fake API servers. 16 containers are released at the same instant against a secret that
does not exist, or holds no usable value, and each one's first invocation is a login.

What must hold (README, "The key"; docs/design.md, "Key in Secrets Manager"):
- exactly one key version is written, and it is AWSCURRENT;
- every container seals with it (one kid, the VersionId) and its CSRF tokens come from it;
- any session minted by any container refreshes in every other container, and stays the
  same person's session on the same cluster.
"""
from __future__ import annotations

import statistics
import time

import pytest

from chalicelib import dashboard, keys, sessions
from tests.conftest import write_registry
from tests.fakes.lambda_container import Container, close_all

CONTAINERS = 16
# Lambda's INIT imports the app; these heavy libraries are otherwise imported by the first request.
# Importing them (no clients, no state) before the barrier makes all first requests reach Secrets
# Manager within milliseconds of each other: the tightest race, the hardest case for the bootstrap.
PRELOAD = ("boto3", "botocore.session", "kubernetes.client")
LEAK_MARKERS = ("eyJ", "BEGIN RSA", "PRIVATE KEY", "Traceback")


@pytest.fixture(scope="module")
def registry(cluster_a, cluster_b, tmp_path_factory) -> str:
    return write_registry(
        tmp_path_factory.mktemp("containers") / "clusters.json",
        [cluster_a.registry_entry(), cluster_b.registry_entry()],
        default=cluster_a.name,
    )


def _version_ids(secrets_client, secret_id: str) -> set[str]:
    answer = secrets_client.list_secret_version_ids(SecretId=secret_id, IncludeDeprecated=True)
    assert not answer.get("NextToken")
    return {version["VersionId"] for version in answer["Versions"]}


@pytest.mark.parametrize("existing", ["missing", "unusable-json", "no-value"])
def test_cold_containers_released_at_once_agree_on_one_key(
    existing, moto_server, secrets_client, secret_id, healthy, cluster_a, cluster_b, registry
):
    if existing == "unusable-json":
        secrets_client.create_secret(Name=secret_id, SecretString="{}")
    elif existing == "no-value":
        secrets_client.create_secret(Name=secret_id)
    if existing == "missing":
        with pytest.raises(secrets_client.exceptions.ResourceNotFoundException):
            secrets_client.describe_secret(SecretId=secret_id)
        versions_before: set[str] = set()
    else:
        versions_before = _version_ids(secrets_client, secret_id)

    # Even containers log in to the default cluster (/api/v1/login), odd ones to the other one
    # (/clusters/{cluster}/api/v1/login); each as its own ServiceAccount.
    users = []
    for i in range(CONTAINERS):
        cluster, route_cluster = (cluster_a, None) if i % 2 == 0 else (cluster_b, cluster_b.name)
        users.append((cluster, route_cluster, f"user-{i}", cluster.login_token(f"team-{i}", f"user-{i}")))

    env = {
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": moto_server.url,
        "KEY_SECRET_ID": secret_id,
        "CLUSTERS_FILE": registry,
        "CSRF_ENFORCE": "false",
        "LOG_LEVEL": "INFO",
    }
    started = time.monotonic()
    containers = [
        Container.start(env, wait_for_go=True, preload=PRELOAD, max_seconds=300, name=f"{existing}-{i}")
        for i in range(CONTAINERS)
    ]
    try:
        init_ms = [container.wait_ready(timeout=60)["init_ms"] for container in containers]
        ready = time.monotonic()

        # ---- all 16 released together; the first invocation of each is a login
        for container in containers:
            container.go()
        for container, (_, route_cluster, _, sa_token) in zip(containers, users):
            container.send({"op": "login", "cluster": route_cluster, "token": sa_token})
        logins = [container.receive(timeout=60) for container in containers]

        for i, answer in enumerate(logins):
            assert answer["status"] == 200, (i, answer.get("body"), containers[i].log()[-2000:])
            assert answer["body"]["errors"] == [] and answer["body"]["jweToken"], (i, answer["body"])
            assert answer["body"]["name"] == users[i][2]
        # they really were concurrent: every first login was still running when the last one began
        assert max(a["t0"] for a in logins) < min(a["t1"] for a in logins), "the first logins did not overlap"

        # ---- exactly one key version was written, it is current, and every container sealed with it
        new_versions = _version_ids(secrets_client, secret_id) - versions_before
        assert len(new_versions) == 1, f"{len(new_versions)} key versions were written: {sorted(new_versions)}"
        (kid,) = new_versions
        # VersionStage explicitly: moto's default version does not follow UpdateSecretVersionStage,
        # which the bootstrap's compare-and-set uses to make a replacement key current.
        current = secrets_client.get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")
        assert current["VersionId"] == kid
        key = keys.parse_secret_value(kid, current["SecretString"])
        tokens = [answer["body"]["jweToken"] for answer in logins]
        assert {sessions.parse(token).kid for token in tokens} == {kid}
        for (_, _, _, sa_token), token in zip(users, tokens):
            assert sessions.decrypt(sessions.parse(token), key.private) == sa_token

        # ---- every token minted anywhere refreshes everywhere: the full 16 x 16 matrix, pipelined
        for container in containers:
            for minter, ((_, route_cluster, _, _), token) in enumerate(zip(users, tokens)):
                container.send({"op": "refresh", "cluster": route_cluster, "jweToken": token, "id": minter})
        refreshed: dict[tuple[int, int], dict] = {}
        for refresher, container in enumerate(containers):
            for _ in range(CONTAINERS):
                answer = container.receive(timeout=60)
                refreshed[(answer["id"], refresher)] = answer
        assert len(refreshed) == CONTAINERS * CONTAINERS
        failures = [(pair, a["status"], a["body"]) for pair, a in sorted(refreshed.items()) if a["status"] != 200]
        assert not failures, f"{len(failures)} of {len(refreshed)} cross-container refreshes failed: {failures[:5]}"
        for (minter, refresher), answer in refreshed.items():
            cluster, _, _, sa_token = users[minter]
            envelope = sessions.parse(answer["body"]["jweToken"])
            assert answer["body"]["errors"] == []
            assert envelope.kid == kid
            assert envelope.claims.cluster == cluster.name  # still the session of the minter's cluster...
            assert sessions.decrypt(envelope, key.private) == sa_token  # ...and of the minter's ServiceAccount

        # ---- CSRF tokens come from the same key in every container
        for container in containers:
            answer = container.call({"op": "csrf", "action": "login"})
            assert answer["status"] == 200
            assert dashboard.csrf_valid(answer["body"]["token"], [key.csrf_secret], "login")

        # ---- the key was not replaced meanwhile, and nothing secret (or a stack trace) was logged
        assert secrets_client.get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")["VersionId"] == kid
        assert _version_ids(secrets_client, secret_id) - versions_before == {kid}
        logs = [container.log() for container in containers]
        for i, text in enumerate(logs):
            for marker in LEAK_MARKERS:
                assert marker not in text, f"container {i} logged {marker!r}"
        writers = sum(text.count("created the key secret") + text.count("wrote a new key version") for text in logs)
        first_ms = sorted(answer["ms"] for answer in logins)
        matrix_ms = sorted(answer["ms"] for answer in refreshed.values())
        print(
            f"\n[{existing}] {CONTAINERS} containers: init {statistics.median(init_ms):.0f} ms median, "
            f"ready after {ready - started:.1f} s; first logins {first_ms[0]:.0f}..{first_ms[-1]:.0f} ms "
            f"(median {statistics.median(first_ms):.0f}); key writes that won: {writers}; "
            f"{len(refreshed)} cross refreshes median {statistics.median(matrix_ms):.1f} ms; "
            f"total {time.monotonic() - started:.1f} s"
        )
    finally:
        close_all(containers)
    assert all(not container.alive for container in containers)
