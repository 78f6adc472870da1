"""Secrets Manager rotation of the session key: the four steps AWS calls, each idempotent.

A new key is written as AWSPENDING, then becomes AWSCURRENT and the old one AWSPREVIOUS, so every
token minted before the rotation still refreshes. Containers hold the new key from their next
fetch (within KEY_CACHE_TTL, or at once when they meet a kid or CSRF token they do not hold) and
seal with it once they have held it for keys.mint_delay(); until then a refresh comes back under
the old kid. A key retires (its sessions must log in again) at the second rotation after it began
sealing. Secrets Manager retries a step that failed, so each step first checks whether it has
already been done.
"""
from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta, timezone

from . import keys, sessions

logger = logging.getLogger(__name__)

STEPS = ("createSecret", "setSecret", "testSecret", "finishSecret")


class RotationError(RuntimeError):
    pass


def handle(event: dict, client) -> None:
    """The rotation Lambda's entry point: {"SecretId", "ClientRequestToken", "Step"}."""
    secret_id, token, step = event.get("SecretId"), event.get("ClientRequestToken"), event.get("Step")
    if step not in STEPS or not isinstance(secret_id, str) or not isinstance(token, str):
        raise RotationError(f"not a rotation event (step {step!r})")
    versions = client.describe_secret(SecretId=secret_id).get("VersionIdsToStages", {})
    if token not in versions and step != "createSecret":
        raise RotationError(f"version {token} of {secret_id} does not exist")
    if "AWSCURRENT" in versions.get(token, []):
        logger.info("rotation %s: version %s is already current", step, token)
        return
    if token in versions and "AWSPENDING" not in versions[token]:
        raise RotationError(f"version {token} of {secret_id} is neither current nor pending")
    {"createSecret": _create, "setSecret": _set, "testSecret": _test, "finishSecret": _finish}[step](
        client, secret_id, token, versions
    )


def rotate_now(client, secret_id: str) -> str:
    """Run all four steps here and now (the operator command); returns the new kid."""
    token = str(uuid.uuid4())
    for step in STEPS:
        handle({"SecretId": secret_id, "ClientRequestToken": token, "Step": step}, client)
    return token


def _create(client, secret_id: str, token: str, versions: dict) -> None:
    client.get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")  # the secret must have a current key
    try:
        client.get_secret_value(SecretId=secret_id, VersionId=token, VersionStage="AWSPENDING")
        return  # a retried createSecret: the pending key is already there
    except client.exceptions.ResourceNotFoundException:
        pass  # Secrets Manager may have staged the version id without a value: fill it in
    client.put_secret_value(
        SecretId=secret_id, ClientRequestToken=token, SecretString=keys.new_secret_value(), VersionStages=["AWSPENDING"]
    )
    logger.info("rotation createSecret: pending key version %s written", token)


def _set(client, secret_id: str, token: str, versions: dict) -> None:
    """Nothing outside the secret holds the key; an in-cluster Dashboard is updated by the operator."""


def _test(client, secret_id: str, token: str, versions: dict) -> None:
    value = client.get_secret_value(SecretId=secret_id, VersionId=token, VersionStage="AWSPENDING")
    try:
        key = keys.parse_secret_value(token, value.get("SecretString"))
    except keys.UnusableKey as why:
        raise RotationError(f"pending key version {token} is unusable: {why}") from None
    now = datetime.now(timezone.utc).replace(microsecond=0)
    claims = sessions.Claims(now, now + timedelta(seconds=60), "rotation-test", now, now)
    probe = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJyb3RhdGlvbi10ZXN0In0.c2lnbmF0dXJl"
    sealed = sessions.mint(probe, claims, key.public, key.kid)
    if sessions.decrypt(sessions.parse(sealed), key.private) != probe:
        raise RotationError(f"pending key version {token} does not round-trip a session token")


def _finish(client, secret_id: str, token: str, versions: dict) -> None:
    current = next((version for version, stages in versions.items() if "AWSCURRENT" in stages), None)
    client.update_secret_version_stage(
        SecretId=secret_id, VersionStage="AWSCURRENT", MoveToVersionId=token, RemoveFromVersionId=current
    )
    # Secrets Manager drops AWSPENDING itself after a rotation it drives; rotate_now has no driver.
    client.update_secret_version_stage(SecretId=secret_id, VersionStage="AWSPENDING", RemoveFromVersionId=token)
    logger.info("rotation finishSecret: version %s is now current (was %s)", token, current)
