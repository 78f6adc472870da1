"""The Secrets Manager key store against a moto server over HTTP: bootstrap, versions, failures.

Some tests put tests/fakes' FaultyProxy between the store and moto to make reads lag writes
("stale" answers). That proxy is a stand-in for Secrets Manager's eventual consistency, which
moto cannot show: every moto read sees every write at once. Writes, and the compare-and-set
itself (UpdateSecretVersionStage), always reach moto unchanged.
"""
from __future__ import annotations

import threading

import boto3
import pytest

from chalicelib import keys, rotation
from tests.conftest import free_port
from tests.fakes.faulty_proxy import FaultyProxy


def client_for(endpoint: str):
    return boto3.client("secretsmanager", endpoint_url=endpoint, region_name="us-east-1")


def store_for(secret_id: str, endpoint: str) -> keys.SecretsManagerKeyStore:
    client = client_for(endpoint)
    return keys.SecretsManagerKeyStore(secret_id, lambda: client)


def current_version(secrets_client, secret_id: str) -> str:
    # VersionStage explicitly: moto's default version does not follow UpdateSecretVersionStage
    return secrets_client.get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")["VersionId"]


def version_stages(secrets_client, secret_id: str) -> dict[str, set[str]]:
    listed = secrets_client.list_secret_version_ids(SecretId=secret_id, IncludeDeprecated=True)["Versions"]
    return {version["VersionId"]: set(version["VersionStages"]) for version in listed}


def run_concurrently(count: int, work) -> list:
    """`work(i)` in `count` threads released together; each result, or the exception it raised."""
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as error:  # noqa: BLE001 - returned to the test, which asserts on it
            results[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


# ---------------------------------------------------------------- bootstrap, reads as moto gives them

@pytest.mark.parametrize("existing", [None, "", "{}"], ids=["missing", "no-value", "unusable"])
def test_cold_containers_racing_to_bootstrap_agree_on_one_key(moto_server, secrets_client, secret_id, existing):
    if existing is not None:
        secrets_client.create_secret(Name=secret_id, **({"SecretString": existing} if existing else {}))
    before = set(version_stages(secrets_client, secret_id)) if existing is not None else set()
    stores = [store_for(secret_id, moto_server.url) for _ in range(8)]

    results = run_concurrently(8, lambda i: stores[i].fetch().current)

    assert len({key.kid for key in results}) == 1
    assert len({key.fingerprint() for key in results}) == 1
    assert current_version(secrets_client, secret_id) == results[0].kid
    assert set(version_stages(secrets_client, secret_id)) - before == {results[0].kid}  # one key written


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
    assert key_set.pending is None and key_set.retired == frozenset()


def test_a_rotation_in_flight_is_held_as_pending_and_rotated_out_versions_are_retired(
    moto_server, secrets_client, secret_id
):
    secrets_client.create_secret(Name=secret_id, SecretString=keys.new_secret_value())
    first = current_version(secrets_client, secret_id)
    second = rotation.rotate_now(secrets_client, secret_id)
    third = rotation.rotate_now(secrets_client, secret_id)
    fourth = "4c5d6e7f-0000-4000-8000-000000000004"
    rotation.handle({"SecretId": secret_id, "ClientRequestToken": fourth, "Step": "createSecret"}, secrets_client)

    key_set = store_for(secret_id, moto_server.url).fetch()

    assert (key_set.current.kid, key_set.previous.kid, key_set.pending.kid) == (third, second, fourth)
    assert key_set.retired == frozenset({first})


def test_a_pending_version_whose_value_is_not_readable_yet_is_neither_held_nor_retired(
    moto_server, secrets_client, secret_id
):
    """RotateSecret stages the version id before createSecret writes its value; a lagging read of
    a written value looks the same. Either way the kid is not called retired: it may turn up."""
    secrets_client.create_secret(Name=secret_id, SecretString=keys.new_secret_value())
    with FaultyProxy(moto_server.url) as proxy:
        store = store_for(secret_id, proxy.url)
        with pytest.raises(client_for(proxy.url).exceptions.ResourceNotFoundException):
            client_for(proxy.url).get_secret_value(SecretId=secret_id, VersionStage="AWSPENDING")  # the old answer
        pending = "5d6e7f80-0000-4000-8000-000000000005"
        rotation.handle({"SecretId": secret_id, "ClientRequestToken": pending, "Step": "createSecret"}, secrets_client)
        proxy.inject("stale", operation="GetSecretValue", stage="AWSPENDING")

        key_set = store.fetch()

    assert key_set.pending is None and pending not in key_set.retired
    assert version_stages(secrets_client, secret_id)[pending] == {"AWSPENDING"}


def test_a_usable_key_is_never_replaced_and_an_unusable_previous_is_ignored(moto_server, secrets_client, secret_id):
    secrets_client.create_secret(Name=secret_id, SecretString="garbage")
    good = keys.new_secret_value()
    secrets_client.put_secret_value(SecretId=secret_id, SecretString=good)

    key_set = store_for(secret_id, moto_server.url).fetch()

    assert key_set.previous is None
    assert secrets_client.get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")["SecretString"] == good
    assert len(secrets_client.list_secret_version_ids(SecretId=secret_id)["Versions"]) == 2


def test_an_unreachable_secrets_manager_is_unavailable_not_a_new_key(secret_id):
    store = store_for(secret_id, f"http://127.0.0.1:{free_port()}")
    with pytest.raises(keys.KeyStoreUnavailable, match="unreachable"):
        store.fetch()


# ---------------------------------------------------------------- bootstrap when reads lag writes

def test_moto_refuses_to_move_awscurrent_away_from_another_version_without_naming_it(
    moto_server, secrets_client, secret_id
):
    """The compare-and-set rests on this refusal (Secrets Manager documents it for
    UpdateSecretVersionStage); moto 5.2.5 models it, so the tests below use moto's own answer."""
    secrets_client.create_secret(Name=secret_id, SecretString=keys.new_secret_value())
    holder = current_version(secrets_client, secret_id)
    candidate = secrets_client.put_secret_value(
        SecretId=secret_id, SecretString=keys.new_secret_value(), VersionStages=[keys.CANDIDATE_STAGE]
    )["VersionId"]
    for remove_from in ({}, {"RemoveFromVersionId": candidate}):
        with pytest.raises(secrets_client.exceptions.InvalidParameterException):
            secrets_client.update_secret_version_stage(
                SecretId=secret_id, VersionStage="AWSCURRENT", MoveToVersionId=candidate, **remove_from
            )
    assert current_version(secrets_client, secret_id) == holder


def test_a_container_whose_reads_lag_the_winners_write_reads_the_winners_key(moto_server, secrets_client, secret_id):
    with FaultyProxy(moto_server.url) as proxy:
        store = store_for(secret_id, proxy.url)
        with pytest.raises(client_for(proxy.url).exceptions.ResourceNotFoundException):
            client_for(proxy.url).get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")  # the old answer
        secrets_client.create_secret(Name=secret_id, SecretString=keys.new_secret_value())  # the winner
        winner = current_version(secrets_client, secret_id)
        # The container's first read, and its read after CreateSecret said the secret exists, both lag.
        proxy.inject("stale", times=2, operation="GetSecretValue", stage="AWSCURRENT")

        key_set = store.fetch()
        reads = [e for e in proxy.entries if e.operation == "GetSecretValue" and e.version_stage == "AWSCURRENT"]
        outcomes = [e.outcome for e in reads]

    assert outcomes[-3:] == ["stale", "stale", "forwarded"]
    assert key_set.current.kid == winner
    assert current_version(secrets_client, secret_id) == winner
    stages = version_stages(secrets_client, secret_id)
    assert stages.pop(winner) == {"AWSCURRENT"}
    assert list(stages.values()) == [{keys.CANDIDATE_STAGE}]  # its candidate, never made current
    assert key_set.retired == frozenset(stages)


def test_however_long_reads_lag_cold_containers_never_replace_a_usable_current_key(
    moto_server, secrets_client, secret_id
):
    with FaultyProxy(moto_server.url) as proxy:
        with pytest.raises(client_for(proxy.url).exceptions.ResourceNotFoundException):
            client_for(proxy.url).get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")
        secrets_client.create_secret(Name=secret_id, SecretString=keys.new_secret_value())
        winner = current_version(secrets_client, secret_id)
        proxy.inject("stale", operation="GetSecretValue", stage="AWSCURRENT")  # until cleared
        stores = [store_for(secret_id, proxy.url) for _ in range(8)]

        lagging = run_concurrently(8, lambda i: stores[i].fetch())

        assert all(isinstance(result, keys.KeyStoreUnavailable) for result in lagging), lagging  # a 503, no key
        assert current_version(secrets_client, secret_id) == winner
        proxy.clear()  # the reads catch up
        caught_up = run_concurrently(8, lambda i: stores[i].fetch().current.kid)

    assert caught_up == [winner] * 8
    stages = version_stages(secrets_client, secret_id)
    assert stages.pop(winner) == {"AWSCURRENT"}
    assert list(stages.values()) == [{keys.CANDIDATE_STAGE}]  # the same candidate for all: one version


def test_a_stale_read_of_an_unusable_key_cannot_replace_the_key_that_replaced_it(
    moto_server, secrets_client, secret_id
):
    """The deterministic ClientRequestToken makes containers that saw the same unusable version
    converge; this is the writer it does not cover: an operator (or a rotation) who replaced it."""
    secrets_client.create_secret(Name=secret_id, SecretString="{}")
    unusable = current_version(secrets_client, secret_id)
    with FaultyProxy(moto_server.url) as proxy:
        client_for(proxy.url).get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")  # the old answer
        operators = secrets_client.put_secret_value(
            SecretId=secret_id, SecretString=keys.new_secret_value()
        )["VersionId"]
        proxy.inject("stale", times=1, operation="GetSecretValue", stage="AWSCURRENT")

        key_set = store_for(secret_id, proxy.url).fetch()

    assert key_set.current.kid == operators
    assert current_version(secrets_client, secret_id) == operators
    stages = version_stages(secrets_client, secret_id)
    assert stages.pop(unusable) == {"AWSPREVIOUS"} and stages.pop(operators) == {"AWSCURRENT"}
    assert list(stages.values()) == [{keys.CANDIDATE_STAGE}]  # our candidate lost the compare-and-set


def test_containers_replacing_an_unusable_key_with_stale_reads_converge_on_one_key(
    moto_server, secrets_client, secret_id
):
    secrets_client.create_secret(Name=secret_id, SecretString="{}")
    unusable = current_version(secrets_client, secret_id)
    proxies = [FaultyProxy(moto_server.url).start() for _ in range(8)]
    try:
        for proxy in proxies:  # each container's first read will answer "unusable", whatever happened since
            client_for(proxy.url).get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")
            proxy.inject("stale", times=1, operation="GetSecretValue", stage="AWSCURRENT")
        stores = [store_for(secret_id, proxy.url) for proxy in proxies]

        results = run_concurrently(8, lambda i: stores[i].fetch().current)
    finally:
        for proxy in proxies:
            proxy.stop()

    assert len({key.kid for key in results}) == 1, results
    assert len({key.fingerprint() for key in results}) == 1
    assert current_version(secrets_client, secret_id) == results[0].kid
    assert set(version_stages(secrets_client, secret_id)) == {unusable, results[0].kid}


# ---------------------------------------------------------------- the reads: AWSCURRENT, then the list and AWSPREVIOUS together

def _expected_key_set(secrets_client, secret_id: str) -> dict:
    """What Secrets Manager holds, read plainly one call after another: the kids a fetch must give."""
    def read(stage: str):
        try:
            answer = secrets_client.get_secret_value(SecretId=secret_id, VersionStage=stage)
        except secrets_client.exceptions.ResourceNotFoundException:
            return None
        try:
            keys.parse_secret_value(answer["VersionId"], answer.get("SecretString"))
        except keys.UnusableKey:
            return None
        return answer["VersionId"]

    stages = version_stages(secrets_client, secret_id)
    current = read("AWSCURRENT")
    previous = read("AWSPREVIOUS")
    pending = read("AWSPENDING") if any(
        "AWSPENDING" in labels and "AWSCURRENT" not in labels for labels in stages.values()) else None
    held = {kid for kid in (current, previous, pending) if kid is not None}
    retired = {kid for kid, labels in stages.items() if not labels & {"AWSCURRENT", "AWSPREVIOUS", "AWSPENDING"}}
    return {"current": current, "previous": previous if previous != current else None,
            "pending": pending if pending != current else None, "retired": retired - held}


def _one_key(client, secret_id):
    client.create_secret(Name=secret_id, SecretString=keys.new_secret_value())


def _current_and_previous(client, secret_id):
    _one_key(client, secret_id)
    client.put_secret_value(SecretId=secret_id, SecretString=keys.new_secret_value())


def _rotation_in_flight(client, secret_id):
    _one_key(client, secret_id)
    rotation.rotate_now(client, secret_id)
    rotation.rotate_now(client, secret_id)
    rotation.handle({"SecretId": secret_id, "ClientRequestToken": "4c5d6e7f-0000-4000-8000-00000000000a",
                     "Step": "createSecret"}, client)


def _rotated_out_twice(client, secret_id):
    _one_key(client, secret_id)
    for _ in range(3):
        rotation.rotate_now(client, secret_id)


def _unusable_previous(client, secret_id):
    client.create_secret(Name=secret_id, SecretString="garbage")
    client.put_secret_value(SecretId=secret_id, SecretString=keys.new_secret_value())


@pytest.mark.parametrize("state", [_one_key, _current_and_previous, _rotation_in_flight, _rotated_out_twice,
                                   _unusable_previous],
                         ids=["one-key", "current-and-previous", "rotation-in-flight", "rotated-out",
                              "unusable-previous"])
def test_the_key_set_is_what_plain_sequential_reads_give_in_every_rotation_state(
    moto_server, secrets_client, secret_id, state
):
    state(secrets_client, secret_id)

    key_set = store_for(secret_id, moto_server.url).fetch()

    got = {"current": key_set.current.kid, "previous": key_set.previous.kid if key_set.previous else None,
           "pending": key_set.pending.kid if key_set.pending else None, "retired": set(key_set.retired)}
    assert got == _expected_key_set(secrets_client, secret_id)


def test_the_version_list_and_the_previous_key_are_read_at_the_same_time_after_the_current_one(
    moto_server, secrets_client, secret_id
):
    """The front holds the list and the AWSPREVIOUS read until both have arrived: read one after the
    other, the first would wait out the barrier and the fetch would report it."""
    from tests.fakes.aws_credentials import SigningRecorder

    _current_and_previous(secrets_client, secret_id)
    barrier = threading.Barrier(2, timeout=10)
    arrivals, met = [], []

    def hold(operation: str, request: dict) -> None:
        name = f"{operation} {request.get('VersionStage', '')}".strip()
        arrivals.append(name)
        if name in ("ListSecretVersionIds", "GetSecretValue AWSPREVIOUS"):
            try:
                barrier.wait()
                met.append(name)
            except threading.BrokenBarrierError:
                pass

    with SigningRecorder(moto_server.url) as front:
        front.before_forward = hold
        key_set = store_for(secret_id, front.url).fetch()

    assert arrivals[0] == "GetSecretValue AWSCURRENT"  # first, and alone
    assert sorted(arrivals[1:]) == ["GetSecretValue AWSPREVIOUS", "ListSecretVersionIds"]
    assert sorted(met) == ["GetSecretValue AWSPREVIOUS", "ListSecretVersionIds"]
    assert key_set.previous is not None


def test_when_the_list_fails_the_previous_read_is_waited_for_and_the_fetch_is_unavailable(
    moto_server, secrets_client, secret_id
):
    from tests.fakes.aws_credentials import SigningRecorder

    _current_and_previous(secrets_client, secret_id)
    finished = []

    def refuse_the_list(operation: str, request: dict) -> None:
        if operation == "ListSecretVersionIds":
            raise ConnectionError("the front drops the list")
        finished.append(request.get("VersionStage"))

    with SigningRecorder(moto_server.url) as front:
        front.before_forward = refuse_the_list
        with pytest.raises(keys.KeyStoreUnavailable):
            store_for(secret_id, front.url).fetch()
        assert not [thread for thread in threading.enumerate() if thread.name.startswith("read ")]  # joined
    assert finished[:2] == ["AWSCURRENT", "AWSPREVIOUS"]
