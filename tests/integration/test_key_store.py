"""The Secrets Manager key store against a moto server over HTTP: bootstrap, versions, failures."""
from __future__ import annotations

import threading

import boto3
import pytest

from chalicelib import keys
from tests.conftest import free_port


def store_for(secret_id: str, endpoint: str) -> keys.SecretsManagerKeyStore:
    client = boto3.client("secretsmanager", endpoint_url=endpoint, region_name="us-east-1")
    return keys.SecretsManagerKeyStore(secret_id, lambda: client)


@pytest.mark.parametrize("existing", [None, "", "{}"], ids=["missing", "no-value", "unusable"])
def test_cold_containers_racing_to_bootstrap_agree_on_one_key(moto_server, secrets_client, secret_id, existing):
    if existing is not None:
        secrets_client.create_secret(Name=secret_id, **({"SecretString": existing} if existing else {}))
    barrier = threading.Barrier(8)
    results: list = []

    def cold_container() -> None:
        store = store_for(secret_id, moto_server.url)
        barrier.wait()
        results.append(store.fetch().current)

    threads = [threading.Thread(target=cold_container) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == 8
    assert len({key.kid for key in results}) == 1
    assert len({key.fingerprint() for key in results}) == 1
    current = secrets_client.get_secret_value(SecretId=secret_id)
    assert current["VersionId"] == results[0].kid


def test_current_and_previous_versions_are_both_held(moto_server, secrets_client, secret_id):
    secrets_client.create_secret(Name=secret_id, SecretString=keys.new_secret_value())
    secrets_client.put_secret_value(SecretId=secret_id, SecretString=keys.new_secret_value())

    key_set = store_for(secret_id, moto_server.url).fetch()

    versions = {
        stage: secrets_client.get_secret_value(SecretId=secret_id, VersionStage=stage)["VersionId"]
        for stage in ("AWSCURRENT", "AWSPREVIOUS")
    }
    assert key_set.current.kid == versions["AWSCURRENT"]
    assert key_set.previous.kid == versions["AWSPREVIOUS"]


def test_a_usable_key_is_never_replaced_and_an_unusable_previous_is_ignored(moto_server, secrets_client, secret_id):
    secrets_client.create_secret(Name=secret_id, SecretString="garbage")
    good = keys.new_secret_value()
    secrets_client.put_secret_value(SecretId=secret_id, SecretString=good)

    key_set = store_for(secret_id, moto_server.url).fetch()

    assert key_set.previous is None
    assert secrets_client.get_secret_value(SecretId=secret_id)["SecretString"] == good
    assert len(secrets_client.list_secret_version_ids(SecretId=secret_id)["Versions"]) == 2


def test_an_unreachable_secrets_manager_is_unavailable_not_a_new_key(secret_id):
    store = store_for(secret_id, f"http://127.0.0.1:{free_port()}")
    with pytest.raises(keys.KeyStoreUnavailable, match="unreachable"):
        store.fetch()
