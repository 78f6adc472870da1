"""The Secrets Manager client (chalicelib/aws_clients.py): built without credentials, warmed up without a
request, credentials resolved at the first signed request and kept fresh, reset for a restored container.

Real parts: the moto server over HTTP behind tests/fakes' SigningRecorder, which notes the access key
each request was signed with. Lambda's container credentials endpoint is a stand-in
(tests/fakes/aws_credentials.py): it cannot run here. The credentials' clock is moved by the test
(aws_clients._now) instead of waiting minutes.
"""
from __future__ import annotations

import datetime

import pytest

from chalicelib import aws_clients
from tests.fakes.aws_credentials import CredentialsEndpoint, SigningRecorder

_STATIC_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


@pytest.fixture
def recorder(moto_server, monkeypatch):
    with SigningRecorder(moto_server.url) as front:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", front.url)
        yield front


@pytest.fixture
def container_credentials(monkeypatch):
    """The environment of a Lambda function under SnapStart: no keys, a credentials endpoint."""
    with CredentialsEndpoint() as endpoint:
        for name in _STATIC_CREDENTIALS:
            monkeypatch.delenv(name, raising=False)
        for name, value in endpoint.env().items():
            monkeypatch.setenv(name, value)
        yield endpoint


@pytest.fixture
def clock(monkeypatch):
    """The credentials' clock, moved by hand."""
    now = [datetime.datetime.now(datetime.timezone.utc)]
    monkeypatch.setattr(aws_clients, "_now", lambda: now[0])

    def advance(seconds: float) -> None:
        now[0] += datetime.timedelta(seconds=seconds)

    return advance


def signed_with(recorder) -> list[str | None]:
    return [access_key for _operation, access_key in recorder.requests]


def test_building_and_warming_up_the_client_asks_for_no_credentials_and_sends_nothing(
    recorder, container_credentials
):
    client = aws_clients.new_secrets_manager()
    aws_clients.warm_up(client)

    assert container_credentials.requests == 0 and recorder.requests == []
    assert not aws_clients.credentials_of(client).resolved

    client.list_secrets()  # the first signed request resolves them
    assert container_credentials.issued == ["ASIACONTAINER0001"]
    assert signed_with(recorder) == ["ASIACONTAINER0001"]
    assert aws_clients.credentials_of(client).resolved


def test_the_warm_up_leaves_the_client_answering_as_before(secrets_client, recorder, secret_id):
    secrets_client.create_secret(Name=secret_id, SecretString="value")
    client = aws_clients.new_secrets_manager()
    aws_clients.warm_up(client)

    answer = client.get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")
    assert answer["SecretString"] == "value"
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_secret_value(SecretId=secret_id, VersionStage="AWSPREVIOUS")
    listed = client.list_secret_version_ids(SecretId=secret_id, IncludeDeprecated=True, MaxResults=100)
    assert [version["VersionStages"] for version in listed["Versions"]] == [["AWSCURRENT"]]
    assert [operation for operation, _ in recorder.requests] == [
        "GetSecretValue", "GetSecretValue", "ListSecretVersionIds"]


def test_reset_drops_the_credentials_and_connections_and_keeps_the_client_working(
    recorder, container_credentials
):
    client = aws_clients.new_secrets_manager()
    client.list_secrets()
    client.list_secrets()
    assert container_credentials.issued == ["ASIACONTAINER0001"]  # held between requests

    aws_clients.reset(client)  # what each restored container does first

    assert not aws_clients.credentials_of(client).resolved
    client.list_secrets()
    assert container_credentials.issued == ["ASIACONTAINER0001", "ASIACONTAINER0002"]
    assert signed_with(recorder) == ["ASIACONTAINER0001", "ASIACONTAINER0001", "ASIACONTAINER0002"]


def test_static_credentials_from_the_environment_are_read_again_every_few_minutes(recorder, clock, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFIRSTKEY")
    client = aws_clients.new_secrets_manager()
    client.list_secrets()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIASECONDKEY")

    client.list_secrets()
    clock(aws_clients.RECHECK_SECONDS - 5)
    client.list_secrets()
    clock(10)
    client.list_secrets()

    assert signed_with(recorder) == ["AKIAFIRSTKEY", "AKIAFIRSTKEY", "AKIAFIRSTKEY", "AKIASECONDKEY"]


def test_expiring_credentials_are_renewed_through_their_own_refresh(recorder, container_credentials, clock):
    """Credentials from the endpoint refresh themselves (botocore: from 15 min before their expiry).
    These expire in 14 min, so each time they are asked for their value they fetch anew: they are
    asked once at first use, then not again until RECHECK_SECONDS have passed."""
    container_credentials.lifetime = datetime.timedelta(minutes=14)
    client = aws_clients.new_secrets_manager()
    client.list_secrets()
    first = container_credentials.requests
    client.list_secrets()
    assert container_credentials.requests == first  # within the recheck interval: what is held is used

    clock(aws_clients.RECHECK_SECONDS + 1)
    client.list_secrets()

    assert container_credentials.requests == first + 1
    assert signed_with(recorder)[-1] == container_credentials.issued[-1] != signed_with(recorder)[0]


def test_no_credentials_anywhere_fails_the_call_not_the_build(recorder, monkeypatch):
    from botocore.exceptions import NoCredentialsError

    for name in _STATIC_CREDENTIALS:
        monkeypatch.delenv(name, raising=False)
    client = aws_clients.new_secrets_manager()
    aws_clients.warm_up(client)
    with pytest.raises(NoCredentialsError):
        client.list_secrets()
    assert recorder.requests == []
