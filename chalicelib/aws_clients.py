"""AWS clients, built lazily once per container (and never at import: a snapshot must not hold credentials)."""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def secrets_manager():
    """The container's Secrets Manager client, built on first use."""
    return new_secrets_manager()


def new_secrets_manager():
    """A Secrets Manager client with the service's timeouts and retries (honours AWS_ENDPOINT_URL_SECRETS_MANAGER)."""
    import boto3
    from botocore.config import Config

    # Worst case 3 attempts x (2 + 3) s plus backoff: an outage answers 503 inside API Gateway's 29 s.
    config = Config(retries={"mode": "standard", "total_max_attempts": 3}, connect_timeout=2, read_timeout=3)
    return boto3.client("secretsmanager", config=config)
