"""Lambda SnapStart: what a container does before its snapshot, and what each restored copy resets.

With SnapStart (python3.12 and newer; see README, "Deploying"), Lambda initialises the function once
when a version is published, snapshots the memory, and starts every container of that version from
the snapshot. Lambda says so in AWS_LAMBDA_INITIALIZATION_TYPE=snap-start during that initialisation;
without it (on-demand initialisation, `chalice local`, the tests) nothing here runs and the service
builds everything on first use, as before.

Before the snapshot (`prepare`), the expensive work that holds no secret: the imports (kubernetes
too when a cluster registry is configured), the settings, the registry, one kubernetes ApiClient
and pool per cluster, not connected, and the Secrets Manager client, built and warmed up
(chalicelib/aws_clients.py: its credentials are resolved at its first signed request, its warm-up
neither signs nor sends). No secret is fetched (neither the session key nor a reviewer token nor
AWS credentials) and no connection is opened: a snapshot must not hold a secret, and every restored
container would share it.

After each restore (`after_restore`, a runtime hook), whatever must not be shared between containers
restored from one snapshot, or was measured on the snapshotted container's clock:
- connection pools (none are open at the snapshot; a pool that ever connected is closed and rebuilt),
  the reviewer tokens and session keys in hand (none either), the Secrets Manager client's
  credentials and connections (none either: the client itself, its models and rules, is kept), the
  issuer caches and the circuit breakers (their monotonic times mean nothing in another container);
- Python's `random`, reseeded: its state is in the snapshot, so every restored container would draw
  the same numbers (botocore's retry jitter uses it). os.urandom and `secrets`, which make the
  session tokens' content keys and IVs, ask the kernel on every call and are unique after a restore;
  the CSRF tokens' timestamps are time.time() at each request.

snapshot_restore_py is the Lambda runtime's own module (python3.12 and newer ship it), so it is not
in requirements.txt: the runtime's copy is the one its snapshot machinery reads.
"""
from __future__ import annotations

import logging
import os
import random
from typing import Mapping

logger = logging.getLogger(__name__)

INITIALIZATION_TYPE = "AWS_LAMBDA_INITIALIZATION_TYPE"
SNAP_START = "snap-start"


def initialising_for_snapshot(env: Mapping[str, str] = os.environ) -> bool:
    return env.get(INITIALIZATION_TYPE) == SNAP_START


def prepare(service) -> None:
    """Before the snapshot: see the module's docstring."""
    import boto3  # noqa: F401  (an EKS reviewer's STS client is built with it)
    import botocore.config  # noqa: F401
    import botocore.exceptions  # noqa: F401

    from . import aws_clients, breaker  # noqa: F401

    # Built and warmed up, never used: its credentials are resolved at its first signed request, after
    # the restore; the warm-up neither signs nor sends (aws_clients.warm_up). Should either fail (a
    # malformed endpoint setting), the first request builds it and reports that, as without SnapStart.
    try:
        aws_clients.warm_up(aws_clients.secrets_manager())
    except Exception as error:  # noqa: BLE001  (only speed is at stake here)
        aws_clients.secrets_manager.cache_clear()
        logger.warning("not preparing the Secrets Manager client before the snapshot: %s", type(error).__name__)
    service.prepare()


def after_restore(service) -> None:
    """In each restored container, before its first request: see the module's docstring."""
    random.seed()  # from os.urandom
    from . import aws_clients

    if aws_clients.built():
        aws_clients.reset(aws_clients.secrets_manager())  # kept, minus credentials and connections
    service.after_restore()


def set_up(service_factory, env: Mapping[str, str] = os.environ) -> bool:
    """At import of app.py: under SnapStart's initialisation, prepare and register the restore hook."""
    if not initialising_for_snapshot(env):
        return False
    # Provided by the runtime wherever SnapStart runs; missing, the hooks would silently not run.
    from snapshot_restore_py import register_after_restore

    service = service_factory()
    prepare(service)
    register_after_restore(after_restore, service)
    logger.info("prepared for the SnapStart snapshot")
    return True
