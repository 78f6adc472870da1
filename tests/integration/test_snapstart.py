"""SnapStart (chalicelib/snapstart.py): the initialisation before the snapshot asks nothing of anyone,
and containers restored from one snapshot share nothing that must be unique.

What is emulated, and only that: the SnapStart service itself, which cannot run here. The "snapshot"
is a process initialised as Lambda initialises for SnapStart (AWS_LAMBDA_INITIALIZATION_TYPE=snap-start,
`import app`); the "restored containers" are forks of it, each running the after-restore hooks from
snapshot_restore_py as the runtime does, then serving real invocations (tests/fakes/snapstart_container.py).
Secrets Manager is the moto server behind tests/fakes' FaultyProxy (which counts every request) or
SigningRecorder (which notes the access key each request is signed with), Lambda's container
credentials endpoint is tests/fakes' CredentialsEndpoint (a stand-in: it cannot run here), the
clusters are the fake kube-apiservers over TLS (which count handshakes and requests).
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from chalicelib import keys, snapstart
from tests.conftest import ROOT, write_registry
from tests.fakes.aws_credentials import CredentialsEndpoint, SigningRecorder
from tests.fakes.faulty_proxy import FaultyProxy
from tests.fakes.lambda_container import container_base_env

OAEP_SHA256 = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture
def start_snapshot(moto_server, secrets_client, secret_id, cluster_a, cluster_b, healthy, tmp_path):
    """start(secrets_manager_url, env_changes): a process initialised for SnapStart (the snapshot),
    with the key and both reviewer tokens in Secrets Manager, reached at `secrets_manager_url`."""
    kid = secrets_client.create_secret(Name=secret_id, SecretString=keys.new_secret_value())["VersionId"]
    entries = []
    for cluster in (cluster_a, cluster_b):
        reviewer_secret = f"{secret_id}-reviewer-{cluster.name}"
        secrets_client.create_secret(Name=reviewer_secret, SecretString=cluster.reviewer_token)
        entries.append({**cluster.registry_entry(), "reviewer": {"tokenSecretId": reviewer_secret}})
    registry = write_registry(tmp_path / "clusters.json", entries, default=cluster_a.name)
    processes = []

    def start(secrets_manager_url: str, env_changes: dict | None = None):
        env = {
            **container_base_env(),
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": secrets_manager_url,
            "KEY_SECRET_ID": secret_id,
            "CLUSTERS_FILE": registry,
            "LOG_LEVEL": "WARNING",
            snapstart.INITIALIZATION_TYPE: snapstart.SNAP_START,
        }
        for name, value in (env_changes or {}).items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.snapstart_container"], cwd=ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        processes.append(process)
        return process, json.loads(process.stdout.readline() or "{}"), kid

    yield start
    for process in processes:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture
def snapshot(moto_server, start_snapshot):
    """The snapshot process, Secrets Manager reached through a counting proxy."""
    with FaultyProxy(moto_server.url) as proxy:
        process, initialised, kid = start_snapshot(proxy.url)
        yield process, initialised, proxy, kid


def restore(process, cluster, env: dict | None = None) -> list[dict]:
    """Restore two containers from the snapshot, one after the other; each logs in to `cluster`."""
    line = f"restore {cluster.name} {cluster.login_token()}"
    process.stdin.write(line + (" " + json.dumps(env) if env else "") + "\n")
    process.stdin.flush()
    restored = [json.loads(process.stdout.readline()) for _ in range(2)]
    assert json.loads(process.stdout.readline()) == {"done": True}
    for container in restored:
        assert "error" not in container, container
        assert container["statuses"] == [200, 200], container
    return restored


def test_initialisation_prepares_everything_secret_free_and_asks_nothing_of_anyone(snapshot, cluster_a, cluster_b):
    process, initialised, proxy, _ = snapshot
    assert initialised.get("initialised"), "the snapshot process did not initialise (see its stderr)"
    assert initialised["prepared"], "under snap-start, `import app` builds the service before the snapshot"
    assert initialised["kubernetes_imported"]
    assert initialised["clusters"] == {
        cluster_a.name: {"client": True, "connections": 0}, cluster_b.name: {"client": True, "connections": 0}
    }
    # The Secrets Manager client is built (and warmed up) before the snapshot, without credentials.
    assert initialised["secrets_manager_client"] == {"built": True, "credentials_resolved": False}
    assert not initialised["keys_fetched"]
    # Zero: no secret fetched (neither the key nor a reviewer token), no connection opened.
    assert proxy.entries == []
    for cluster in (cluster_a, cluster_b):
        assert (cluster.server.handshakes, cluster.server.requests) == (0, [])
    process.stdin.close()


def test_containers_restored_from_one_snapshot_mint_unique_tokens(snapshot, secrets_client, secret_id, cluster_a):
    process, initialised, proxy, kid = snapshot
    assert initialised.get("initialised")
    assert proxy.entries == [] and cluster_a.server.requests == []
    restored = restore(process, cluster_a)
    first, second = restored
    assert first["pid"] != second["pid"]
    # The counters do see the service: the restored containers fetched the key and asked the cluster.
    assert proxy.entries and cluster_a.server.review_count >= 2

    # Content keys and IVs: each token's CEK, unwrapped with the key, and its IV differ.
    key = keys.parse_secret_value(kid, secrets_client.get_secret_value(SecretId=secret_id)["SecretString"])
    opened = []
    for container in restored:
        token = json.loads(container["jweToken"])
        cek = key.private.decrypt(_b64url(token["encrypted_key"]), OAEP_SHA256)
        opened.append((cek, _b64url(token["iv"])))
    (cek1, iv1), (cek2, iv2) = opened
    assert len(cek1) == len(cek2) == 32 and len(iv1) == len(iv2) == 12
    assert cek1 != cek2 and iv1 != iv2

    # CSRF timestamps: each container's own clock at its request, not the snapshot's.
    stamps = [int(container["csrf"].rsplit(":", 1)[1]) for container in restored]
    assert stamps[0] != stamps[1]
    for stamp, container in zip(stamps, restored):
        assert stamp >= container["restored_at_ms"]

    # Python's `random` is in the snapshot: without the after-restore reseed both would draw the same.
    assert first["random"] != second["random"]


_STATIC_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def test_each_restored_container_fetches_its_own_aws_credentials_none_are_in_the_snapshot(
    moto_server, start_snapshot, cluster_a
):
    """As Lambda gives a SnapStart function its credentials: from the container credentials endpoint
    (a stand-in here), no access keys in the environment. The snapshot holds the Secrets Manager
    client, built, but no credentials: the endpoint is asked by each restored container, and each
    signs its Secrets Manager requests with the credentials it was given."""
    with CredentialsEndpoint() as endpoint, SigningRecorder(moto_server.url) as secrets_manager:
        process, initialised, _ = start_snapshot(
            secrets_manager.url, {**{name: None for name in _STATIC_CREDENTIALS}, **endpoint.env()}
        )
        assert initialised.get("initialised"), "the snapshot process did not initialise (see its stderr)"
        assert initialised["secrets_manager_client"] == {"built": True, "credentials_resolved": False}
        assert endpoint.requests == 0 and secrets_manager.requests == []  # nothing asked before the snapshot

        first, second = restore(process, cluster_a)

        assert endpoint.issued == ["ASIACONTAINER0001", "ASIACONTAINER0002"]  # one fetch per container
        assert first["secrets_manager_client_builds"] == second["secrets_manager_client_builds"] == 1
        signed_with = [access_key for _operation, access_key in secrets_manager.requests]
        assert "GetSecretValue" in {operation for operation, _ in secrets_manager.requests}
        # The containers ran one after the other: the first's requests all under its key, then the second's.
        split = signed_with.index("ASIACONTAINER0002")
        assert split > 0 and set(signed_with[:split]) == {"ASIACONTAINER0001"}
        assert set(signed_with[split:]) == {"ASIACONTAINER0002"}


def test_credentials_changed_between_the_snapshot_and_the_restore_are_the_ones_used(
    moto_server, start_snapshot, cluster_a
):
    with SigningRecorder(moto_server.url) as secrets_manager:
        process, initialised, _ = start_snapshot(secrets_manager.url, {"AWS_ACCESS_KEY_ID": "AKIASNAPSHOTTIME"})
        assert initialised["secrets_manager_client"] == {"built": True, "credentials_resolved": False}

        restore(process, cluster_a, {"AWS_ACCESS_KEY_ID": "AKIARESTORED{container}"})

        signed_with = [access_key for _operation, access_key in secrets_manager.requests]
        assert signed_with and "AKIASNAPSHOTTIME" not in signed_with
        assert set(signed_with) == {"AKIARESTORED1", "AKIARESTORED2"}


def test_without_snap_start_nothing_is_built_at_import():
    built = []
    assert snapstart.set_up(lambda: built.append(1), env={}) is False
    assert snapstart.set_up(lambda: built.append(1), env={snapstart.INITIALIZATION_TYPE: "on-demand"}) is False
    assert built == []


def test_snapshot_restore_py_is_the_runtimes_not_packaged():
    """The runtime ships it wherever SnapStart runs (python3.12+); packaging a copy would shadow it."""
    requirements = open(os.path.join(ROOT, "requirements.txt")).read().lower()
    assert "snapshot-restore-py" not in requirements and "snapshot_restore_py" not in requirements


def test_after_restore_drops_connections_and_the_reviewer_token_then_serves_again(cluster_a, healthy):
    """Should a connection or a reviewer token be in the snapshot after all, a restored container uses
    neither: its pool is new (the old one closed) and it reads the reviewer token afresh."""
    from chalicelib.clusters import Reviewer, parse_registry

    registry = parse_registry("registry", json.dumps({"clusters": [cluster_a.registry_entry()]}), ROOT)
    cluster = registry.get(None)
    reads = []
    reviewer = Reviewer(timeout=5.0, secrets_client=lambda: None)
    reviewer._token_source = lambda _cluster: lambda: reads.append(1) or cluster_a.reviewer_token
    token = cluster_a.login_token()
    reviewer.review(cluster, token)
    before = cluster._connection
    assert before.pool.num_connections == 1 and reads == [1] and cluster_a.server.handshakes == 1

    reviewer.after_restore(cluster)
    after = cluster._connection
    assert after.client is before.client  # the prepared ApiClient is kept
    assert after.pool is not before.pool and before.pool.pool is None  # the old pool is closed
    assert cluster._breaker is None
    reviewer.review(cluster, token)
    assert reads == [1, 1] and cluster_a.server.handshakes == 2  # its own token read, its own connection


def test_key_cache_forgets_what_it_fetched():
    fetched = []

    class Store:
        def fetch(self):
            fetched.append(1)
            return keys.KeySet(current=keys.parse_secret_value("v1", keys.new_secret_value()))

    cache = keys.KeyCache(Store(), ttl=300)
    cache.mint_key()
    cache.mint_key()
    assert fetched == [1]
    cache.forget()
    cache.mint_key()
    assert fetched == [1, 1]


def test_a_secrets_manager_client_that_cannot_be_built_before_the_snapshot_is_built_at_first_use(monkeypatch):
    """Preparing the client is for speed only: a setting it cannot be built with must not stop the
    initialisation; the first request then builds it, and reports the setting, as without SnapStart."""
    from chalicelib import aws_clients

    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", "not a url")
    aws_clients.secrets_manager.cache_clear()
    prepared = []

    class Service:
        def prepare(self):
            prepared.append(True)

    try:
        snapstart.prepare(Service())
        assert prepared == [True] and not aws_clients.built()
        with pytest.raises(ValueError, match="Invalid endpoint"):
            aws_clients.secrets_manager()
    finally:
        aws_clients.secrets_manager.cache_clear()
