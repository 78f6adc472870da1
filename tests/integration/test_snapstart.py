"""SnapStart (chalicelib/snapstart.py): the initialisation before the snapshot asks nothing of anyone,
and containers restored from one snapshot share nothing that must be unique.

What is emulated, and only that: the SnapStart service itself, which cannot run here. The "snapshot"
is a process initialised as Lambda initialises for SnapStart (AWS_LAMBDA_INITIALIZATION_TYPE=snap-start,
`import app`); the "restored containers" are forks of it, each running the after-restore hooks from
snapshot_restore_py as the runtime does, then serving real invocations (tests/fakes/snapstart_container.py).
Secrets Manager is the moto server behind tests/fakes' FaultyProxy (which counts every request), the
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
from tests.fakes.faulty_proxy import FaultyProxy
from tests.fakes.lambda_container import container_base_env

OAEP_SHA256 = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture
def snapshot(moto_server, secrets_client, secret_id, cluster_a, cluster_b, healthy, tmp_path):
    """A process initialised for SnapStart (the snapshot), with the key and both reviewer tokens in
    Secrets Manager, reached through a counting proxy."""
    kid = secrets_client.create_secret(Name=secret_id, SecretString=keys.new_secret_value())["VersionId"]
    entries = []
    for cluster in (cluster_a, cluster_b):
        reviewer_secret = f"{secret_id}-reviewer-{cluster.name}"
        secrets_client.create_secret(Name=reviewer_secret, SecretString=cluster.reviewer_token)
        entries.append({**cluster.registry_entry(), "reviewer": {"tokenSecretId": reviewer_secret}})
    registry = write_registry(tmp_path / "clusters.json", entries, default=cluster_a.name)
    with FaultyProxy(moto_server.url) as proxy:
        env = {
            **container_base_env(),
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": proxy.url,
            "KEY_SECRET_ID": secret_id,
            "CLUSTERS_FILE": registry,
            "LOG_LEVEL": "WARNING",
            snapstart.INITIALIZATION_TYPE: snapstart.SNAP_START,
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.snapstart_container"], cwd=ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        try:
            initialised = json.loads(process.stdout.readline() or "{}")
            yield process, initialised, proxy, kid
        finally:
            process.kill()
            process.wait(timeout=10)


def test_initialisation_prepares_everything_secret_free_and_asks_nothing_of_anyone(snapshot, cluster_a, cluster_b):
    process, initialised, proxy, _ = snapshot
    assert initialised.get("initialised"), "the snapshot process did not initialise (see its stderr)"
    assert initialised["prepared"], "under snap-start, `import app` builds the service before the snapshot"
    assert initialised["kubernetes_imported"]
    assert initialised["clusters"] == {
        cluster_a.name: {"client": True, "connections": 0}, cluster_b.name: {"client": True, "connections": 0}
    }
    assert not initialised["secrets_manager_client"] and not initialised["keys_fetched"]
    # Zero: no secret fetched (neither the key nor a reviewer token), no connection opened.
    assert proxy.entries == []
    for cluster in (cluster_a, cluster_b):
        assert (cluster.server.handshakes, cluster.server.requests) == (0, [])
    process.stdin.close()


def test_containers_restored_from_one_snapshot_mint_unique_tokens(snapshot, secrets_client, secret_id, cluster_a):
    process, initialised, proxy, kid = snapshot
    assert initialised.get("initialised")
    assert proxy.entries == [] and cluster_a.server.requests == []
    process.stdin.write(f"restore {cluster_a.name} {cluster_a.login_token()}\n")
    process.stdin.flush()
    restored = [json.loads(process.stdout.readline()) for _ in range(2)]
    assert json.loads(process.stdout.readline()) == {"done": True}
    for container in restored:
        assert "error" not in container, container
        assert container["statuses"] == [200, 200], container
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
