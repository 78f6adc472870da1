"""Key rotation by Secrets Manager's own mechanism, against a moto server over HTTP:
nobody is logged out by a rotation, and a key rotated out answers "token expired", never a 5xx."""
from __future__ import annotations

import time

import pytest

from chalicelib import keys, rotation, sessions
from tests.conftest import DashboardFrontend, body_json, write_registry

pytestmark = pytest.mark.usefixtures("healthy")

EXPIRED = (401, b"MSG_TOKEN_EXPIRED_ERROR\n")


@pytest.fixture
def start(configure, secrets_client, secret_id, tmp_path, cluster_a):
    registry = write_registry(tmp_path / "c.json", [cluster_a.registry_entry()])

    def container(**env) -> DashboardFrontend:
        return DashboardFrontend(configure(KEY_SECRET_ID=secret_id, CLUSTERS_FILE=registry, **env))

    return container


@pytest.fixture
def short_mint_delay(monkeypatch) -> float:
    """The production 5 s refetch interval and 5 s read-lag allowance, shortened (so the mint delay is too)."""
    monkeypatch.setattr(keys, "UNKNOWN_KID_REFETCH_INTERVAL", 0.3)
    monkeypatch.setattr(keys, "READ_LAG_ALLOWANCE", 0.1)
    return keys.mint_delay()


def kid_of(response) -> str:
    assert response.status_code == 200, response.body
    return sessions.parse(body_json(response)["jweToken"]).kid


def current_version(secrets_client, secret_id, stage="AWSCURRENT") -> str:
    return secrets_client.get_secret_value(SecretId=secret_id, VersionStage=stage)["VersionId"]


def sealed_under(secrets_client, secret_id, kid: str, like: str, token: str) -> str:
    """A session like `like`, sealed under version `kid` as another container would seal it."""
    value = secrets_client.get_secret_value(SecretId=secret_id, VersionId=kid)["SecretString"]
    key = keys.parse_secret_value(kid, value)
    return sessions.mint(token, sessions.parse(like).claims, key.public, kid)


def test_rotation_logs_nobody_out_and_a_second_one_expires_the_oldest_tokens(
    start, secrets_client, secret_id, cluster_a, short_mint_delay
):
    frontend = start()
    before = body_json(frontend.login(cluster_a.login_token()))["jweToken"]
    first_kid = sessions.parse(before).kid

    new_kid = rotation.rotate_now(secrets_client, secret_id)
    after_one = start()  # a container that starts after the rotation

    # It holds the new key, but seals with the previous one until it has held it for the delay.
    assert kid_of(after_one.login(cluster_a.login_token())) == first_kid
    time.sleep(short_mint_delay)
    assert kid_of(after_one.login(cluster_a.login_token())) == new_kid
    refreshed = after_one.refresh(before)
    assert kid_of(refreshed) == new_kid  # the old session comes back under the new kid
    assert current_version(secrets_client, secret_id, "AWSPREVIOUS") == first_kid

    rotation.rotate_now(secrets_client, secret_id)
    after_two = start()

    gone = after_two.refresh(before)  # sealed under the first key, now rotated out
    assert (gone.status_code, gone.body) == EXPIRED
    assert after_two.refresh(body_json(refreshed)["jweToken"]).status_code == 200  # previous key: still fine


def test_a_session_under_a_retired_key_is_expired_on_every_try_never_a_5xx(start, secrets_client, secret_id, cluster_a):
    """Production intervals: every try falls inside the unknown-kid refetch interval of the one before."""
    sa_token = cluster_a.login_token()
    warm = start(KEY_CACHE_TTL=3600)
    oldest = body_json(warm.login(sa_token))["jweToken"]
    rotation.rotate_now(secrets_client, secret_id)
    newest = rotation.rotate_now(secrets_client, secret_id)

    # A container warmed before the rotations still holds the first key (its set is an hour fresh)
    # until a kid it does not know makes it look again; from then on the first key is retired there.
    assert warm.refresh(oldest).status_code == 200
    time.sleep(keys.UNKNOWN_KID_REFETCH_INTERVAL)  # its last fetch must be an interval old to look again
    assert warm.refresh(sealed_under(secrets_client, secret_id, newest, oldest, sa_token)).status_code == 200
    answers = [warm.refresh(oldest) for _ in range(30)]
    assert [(a.status_code, a.body) for a in answers] == [EXPIRED] * 30

    cold = start()  # fetched after both rotations: the first key is listed as retired from the start
    answers = [cold.refresh(oldest) for _ in range(30)]
    assert [(a.status_code, a.body) for a in answers] == [EXPIRED] * 30


def test_a_warm_container_meets_a_new_kid_and_learns_the_new_key_at_once(
    start, secrets_client, secret_id, cluster_a, short_mint_delay
):
    sa_token = cluster_a.login_token()
    warm = start(KEY_CACHE_TTL=3600)  # caches the key set for an hour
    old_session = body_json(warm.login(sa_token))["jweToken"]
    old_kid = sessions.parse(old_session).kid
    new_kid = rotation.rotate_now(secrets_client, secret_id)
    # Another container, started after the rotation, seals under the new key once it may: after
    # the mint delay (built here without reconfiguring, so that `warm` keeps its cache).
    time.sleep(short_mint_delay)
    new_session = sealed_under(secrets_client, secret_id, new_kid, old_session, sa_token)

    assert kid_of(warm.refresh(old_session)) == old_kid  # still sealing with the key it cached
    assert kid_of(warm.refresh(new_session)) == old_kid  # the unknown kid made it refetch: it opens
    time.sleep(short_mint_delay)
    assert kid_of(warm.refresh(old_session)) == new_kid  # and, once held for the delay, it seals with it


def test_each_rotation_step_is_idempotent_under_retries(secrets_client, secret_id):
    secrets_client.create_secret(Name=secret_id, SecretString=keys.new_secret_value())
    old = current_version(secrets_client, secret_id)
    token = "0f3e6a52-9d1c-4c55-8a3f-0a1b2c3d4e5f"
    for step in rotation.STEPS:
        for _ in range(2):  # Secrets Manager retries a step whose Lambda failed or timed out
            rotation.handle({"SecretId": secret_id, "ClientRequestToken": token, "Step": step}, secrets_client)

    versions = secrets_client.list_secret_version_ids(SecretId=secret_id)["Versions"]
    stages = {v["VersionId"]: set(v["VersionStages"]) for v in versions}
    assert stages == {token: {"AWSCURRENT"}, old: {"AWSPREVIOUS"}}


def test_a_staged_version_without_a_value_is_filled_in(secrets_client, secret_id):
    """Secrets Manager's RotateSecret stages the new version id as AWSPENDING before calling createSecret."""
    secrets_client.create_secret(Name=secret_id, SecretString=keys.new_secret_value())
    token = "1a2b3c4d-0000-4000-8000-000000000001"
    rotation.handle({"SecretId": secret_id, "ClientRequestToken": token, "Step": "createSecret"}, secrets_client)

    pending = secrets_client.get_secret_value(SecretId=secret_id, VersionId=token, VersionStage="AWSPENDING")
    assert keys.parse_secret_value(token, pending["SecretString"]).kid == token


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"SecretId": "x", "ClientRequestToken": "t", "Step": "dropSecret"},
        {"SecretId": "x", "ClientRequestToken": "unknown-version", "Step": "finishSecret"},
    ],
)
def test_events_that_are_not_a_rotation_are_refused(secrets_client, secret_id, event):
    secrets_client.create_secret(Name=secret_id, SecretString=keys.new_secret_value())
    event = {**event, "SecretId": secret_id} if "SecretId" in event else event
    def versions() -> dict:
        listed = secrets_client.list_secret_version_ids(SecretId=secret_id)["Versions"]
        return {v["VersionId"]: sorted(v["VersionStages"]) for v in listed}

    before = versions()
    with pytest.raises(rotation.RotationError):
        rotation.handle(event, secrets_client)
    assert versions() == before


def test_a_pending_key_that_is_unusable_fails_the_test_step_and_nothing_moves(secrets_client, secret_id):
    secrets_client.create_secret(Name=secret_id, SecretString=keys.new_secret_value())
    old = current_version(secrets_client, secret_id)
    token = "2b3c4d5e-0000-4000-8000-000000000002"
    secrets_client.put_secret_value(
        SecretId=secret_id, ClientRequestToken=token, SecretString="{}", VersionStages=["AWSPENDING"]
    )

    with pytest.raises(rotation.RotationError, match="unusable"):
        rotation.handle({"SecretId": secret_id, "ClientRequestToken": token, "Step": "testSecret"}, secrets_client)
    assert current_version(secrets_client, secret_id) == old
