"""Login and refresh: composes keys, clusters and sessions. The session policies live here.

Policy, in one place:
- a session token lives TOKEN_TTL (or the cluster's tokenTTL), but never past the ServiceAccount
  token's own exp, nor past auth_time + MAX_SESSION_TTL;
- a refresh asks the cluster again when the last TokenReview is older than REVIEW_INTERVAL, so a
  deleted ServiceAccount loses its session within that interval;
- a session belongs to the cluster it logged in to.
"""
from __future__ import annotations

import functools
import logging
from datetime import datetime, timedelta, timezone
from typing import Callable

from . import dashboard, sessions
from .clusters import Cluster, NotAuthenticated, Registry, Reviewer, load_registry
from .issuers import Issuers
from .keys import FileKeyStore, KeyCache, KeyNotConfigured, SecretsManagerKeyStore
from .settings import Settings, resolve_path

logger = logging.getLogger(__name__)

CLOCK_SKEW = timedelta(seconds=60)


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


class Service:
    def __init__(
        self,
        settings: Settings,
        registry: Callable[[], Registry],
        keys: KeyCache,
        reviewer: Reviewer,
        issuers: Issuers,
        clock: Callable[[], datetime] = utc_now,
    ):
        self._settings = settings
        self._registry = registry
        self._keys = keys
        self._reviewer = reviewer
        self._issuers = issuers
        self._clock = clock

    # ------------------------------------------------------------ routes

    def login(self, cluster_name: str | None, raw_body: bytes | None, csrf: str | None) -> dashboard.AuthResponse:
        cluster = self.cluster(cluster_name)
        self._check_csrf("login", csrf, raw_body)
        spec = dashboard.parse_login(raw_body)
        key = self._keys.mint_key()  # before asking the cluster: no key, no point
        if not sessions.looks_like_jwt(spec.token):
            raise NotAuthenticated()  # ServiceAccount tokens are JWTs; don't send anything else to a cluster
        self._issuers.verify(cluster, spec.token)  # a forgery stops here, before the cluster hears of it
        token_expiry = sessions.jwt_expiry(spec.token)
        account = self._reviewer.review(cluster, spec.token)
        now = self._clock()
        claims = sessions.Claims(
            issued_at=now,
            expires_at=self._expiry(cluster, now, auth_time=now, token_expiry=token_expiry),
            cluster=cluster.name,
            auth_time=now,
            reviewed_at=now,
        )
        logger.info("login: cluster=%s serviceaccount=%s/%s", cluster.name, account.namespace, account.name)
        return dashboard.AuthResponse(sessions.mint(spec.token, claims, key.public, key.kid), name=account.name)

    def refresh(self, cluster_name: str | None, raw_body: bytes | None, csrf: str | None) -> dashboard.AuthResponse:
        cluster = self.cluster(cluster_name)
        self._check_csrf("token", csrf, raw_body)
        envelope = sessions.parse(dashboard.parse_refresh(raw_body))
        if (envelope.claims.cluster or self._registry().default) != cluster.name:
            raise sessions.InvalidToken()
        token = self._open(envelope)
        claims, now = envelope.claims, self._clock()
        if max(claims.issued_at, claims.auth_time) > now + CLOCK_SKEW:
            raise sessions.InvalidToken()  # we never seal times from the future
        token_expiry = sessions.jwt_expiry(token)
        if self._past_limits(claims, token_expiry, now):
            raise sessions.SessionExpired()
        reviewed_at = claims.reviewed_at
        if reviewed_at is None or now - reviewed_at >= timedelta(seconds=self._settings.review_interval):
            try:
                self._reviewer.review(cluster, token)
            except NotAuthenticated:
                logger.info("refresh: cluster=%s no longer accepts the session's ServiceAccount", cluster.name)
                raise sessions.SessionExpired() from None
            reviewed_at = now
        key = self._keys.mint_key()
        renewed = sessions.Claims(
            issued_at=now,
            expires_at=self._expiry(cluster, now, auth_time=claims.auth_time, token_expiry=token_expiry),
            cluster=cluster.name,
            auth_time=claims.auth_time,
            reviewed_at=reviewed_at,
        )
        return dashboard.AuthResponse(sessions.mint(token, renewed, key.public, key.kid))

    def csrf_token(self, cluster_name: str | None, action: str) -> str:
        self.cluster(cluster_name)
        return dashboard.csrf_token(self._keys.mint_key().csrf_secret, dashboard.csrf_action(action))

    def login_modes(self, cluster_name: str | None) -> dict:
        self.cluster(cluster_name)
        return {"modes": ["token"]}

    def login_skippable(self, cluster_name: str | None) -> dict:
        self.cluster(cluster_name)
        return {"skippable": False}

    def login_status(self, cluster_name: str | None, headers) -> dict:
        self.cluster(cluster_name)
        return dashboard.login_status(headers)

    def cluster(self, cluster_name: str | None) -> Cluster:
        return self._registry().get(cluster_name)

    def cluster_names(self, cluster_name: str | None) -> dict:
        registry = self._registry()
        registry.get(cluster_name)
        return {"clusters": registry.names(), "defaultCluster": registry.default}

    # ------------------------------------------------------------ policy

    def _check_csrf(self, action: str, token: str | None, raw_body: bytes | None) -> None:
        if raw_body is not None and len(raw_body) > dashboard.MAX_BODY_BYTES:
            raise dashboard.BodyTooLarge()  # before any work, the CSRF check included
        if not self._settings.csrf_enforce:
            return
        # Any key of the set made it; one the container has not fetched yet earns one refetch.
        if not self._keys.accepts(
            lambda keys: dashboard.csrf_valid(token, [key.csrf_secret for key in keys.all()], action)
        ):
            raise dashboard.CsrfRejected()

    def _open(self, envelope: sessions.Envelope) -> str:
        candidates = self._keys.candidates(envelope.kid)
        if not candidates and self._keys.is_retired(envelope.kid):
            raise sessions.SessionExpired()  # sealed under a key rotated out: log in again
        for key in candidates:
            try:
                return sessions.decrypt(envelope, key.private)
            except sessions.InvalidToken:
                continue
        raise sessions.InvalidToken()

    def _past_limits(self, claims: sessions.Claims, token_expiry: datetime | None, now: datetime) -> bool:
        limits = [claims.expires_at, self._lifetime_end(claims.auth_time), token_expiry]
        return any(limit is not None and now >= limit for limit in limits)

    def _lifetime_end(self, auth_time: datetime) -> datetime | None:
        if self._settings.max_session_ttl == 0:
            return None
        return auth_time + timedelta(seconds=self._settings.max_session_ttl)

    def _expiry(
        self, cluster: Cluster, now: datetime, auth_time: datetime, token_expiry: datetime | None
    ) -> datetime | None:
        ttl = cluster.token_ttl if cluster.token_ttl is not None else self._settings.token_ttl
        bounds = [
            now + timedelta(seconds=ttl) if ttl else None,
            self._lifetime_end(auth_time),
            token_expiry,
        ]
        present = [bound for bound in bounds if bound is not None]
        return min(present) if present else None


# ---------------------------------------------------------------- composition, once per container

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


def key_store(settings: Settings):
    if settings.key_secret_id:
        return SecretsManagerKeyStore(settings.key_secret_id, secrets_manager)
    if settings.key_file:
        return FileKeyStore(resolve_path(settings, settings.key_file))
    return _NoKeyStore()


class _NoKeyStore:
    def fetch(self):
        raise KeyNotConfigured("no key is configured: set KEY_SECRET_ID (Secrets Manager) or KEY_FILE (local file)")


def build(settings: Settings) -> Service:
    registry = functools.lru_cache(maxsize=1)(
        lambda: load_registry(
            resolve_path(settings, settings.clusters_file) if settings.clusters_file else None, settings.app_dir
        )
    )
    reviewer = Reviewer(
        timeout=settings.cluster_timeout,
        secrets_client=secrets_manager,
        failure_threshold=settings.cluster_breaker_failures,
        cooldown=settings.cluster_breaker_cooldown,
        max_in_flight=settings.cluster_max_in_flight,
    )
    return Service(
        settings=settings,
        registry=registry,
        keys=KeyCache(key_store(settings), ttl=settings.key_cache_ttl, grace=settings.key_cache_grace),
        reviewer=reviewer,
        issuers=Issuers(reviewer),
    )
