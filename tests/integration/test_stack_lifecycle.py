"""A key that outlives stacks: one key secret (the template's KeySecretArn) under a stack deleted and
created again, or under a blue and a green stack side by side, logs nobody out, and the first key is
written once, never over a usable one.

CloudFormation cannot run here. A stack is stood in for by what it does with the secret: its API
containers read it (the service, configured as the stack configures it: KEY_SECRET_ID), the operator
provisions the key with `dashboard-auth create-key` (the stack's API role may only read it), and its
rotation schedule rotates with the real rotation steps against the moto server. That the template
never rotates on create or update (RotateImmediatelyOnUpdate false) is asserted on the packaged
template in tests/integration/test_template.py.
"""
from __future__ import annotations

import pytest

from chalicelib import keys, rotation, sessions
from dashboard_auth_cli.cli import main as operator_command
from tests.conftest import DashboardFrontend, body_json, login_ok, write_registry

pytestmark = pytest.mark.usefixtures("healthy")


@pytest.fixture
def stack(configure, secrets_client, secret_id, tmp_path, cluster_a):
    registry = write_registry(tmp_path / "clusters.json", [cluster_a.registry_entry()])

    def container() -> DashboardFrontend:
        """A cold API container of a stack whose KeySecretArn is this secret."""
        return DashboardFrontend(configure(KEY_SECRET_ID=secret_id, CLUSTERS_FILE=registry))

    return container


def current_kid(secrets_client, secret_id) -> str:
    return secrets_client.get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")["VersionId"]


def refreshed_kid(frontend, token) -> str:
    response = frontend.refresh(token)
    assert response.status_code == 200, response.body
    return sessions.parse(body_json(response)["jweToken"]).kid


def test_a_stack_deleted_and_created_again_keeps_the_key_and_every_session(
    stack, secrets_client, secret_id, cluster_a, capsys
):
    # the stack's secret starts empty, as the template creates it; the operator writes the key once
    secrets_client.create_secret(Name=secret_id, SecretString="{}")
    assert operator_command(["create-key", "--secret-id", secret_id]) == 0
    kid = current_kid(secrets_client, secret_id)
    session = login_ok(stack(), cluster_a.login_token())
    assert sessions.parse(session).kid == kid

    # stack deleted (its containers gone, the secret kept) and created again against the same secret;
    # the deploy steps run create-key again, which finds the usable key and leaves it alone
    capsys.readouterr()
    assert operator_command(["create-key", "--secret-id", secret_id]) == 0
    assert "already there" in capsys.readouterr().out
    assert current_kid(secrets_client, secret_id) == kid
    assert refreshed_kid(stack(), session) == kid  # a container of the new stack: same key, session alive


def test_blue_and_green_stacks_on_one_key_serve_each_others_sessions_through_a_rotation(
    stack, secrets_client, secret_id, cluster_a, monkeypatch
):
    assert operator_command(["create-key", "--secret-id", secret_id]) == 0
    blue, green = stack(), stack()
    from_blue = login_ok(blue, cluster_a.login_token())
    from_green = login_ok(green, cluster_a.login_token())
    assert refreshed_kid(green, from_blue) == refreshed_kid(blue, from_green)

    # the schedule's rotation (the four steps, as Secrets Manager runs them); both stacks keep everyone
    old_kid = current_kid(secrets_client, secret_id)
    new_kid = rotation.rotate_now(secrets_client, secret_id)
    monkeypatch.setattr(keys, "mint_delay", lambda: 0.0)  # as if the new key had been held long enough
    for frontend, token in ((stack(), from_blue), (stack(), from_green)):
        assert refreshed_kid(frontend, token) == new_kid
    assert old_kid != new_kid


def test_a_container_that_finds_the_secret_empty_never_replaces_a_key_written_meanwhile(
    stack, secrets_client, secret_id, cluster_a
):
    """The `chalice deploy` path, where the first container bootstraps: once a usable key is there,
    neither another container nor the operator's create-key writes over it."""
    secrets_client.create_secret(Name=secret_id, SecretString="{}")
    session = login_ok(stack(), cluster_a.login_token())  # this container bootstraps the key
    kid = current_kid(secrets_client, secret_id)
    assert operator_command(["create-key", "--secret-id", secret_id]) == 0
    login_ok(stack(), cluster_a.login_token())
    assert current_kid(secrets_client, secret_id) == kid
    assert refreshed_kid(stack(), session) == kid
