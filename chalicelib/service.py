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
import re
from datetime import datetime, timedelta, timezone
from typing import Callable

from . import audit, dashboard, sessions
from .clusters import (
    Cluster, ClusterConfigError, ClusterUnavailable, NotAuthenticated, Registry, Reviewer, load_registry,
)
from .issuers import Issuers
from .keys import FileKeyStore, KeyCache, KeyNotConfigured, KeyStoreUnavailable, SecretsManagerKeyStore
from .settings import Settings, resolve_path
from .aws_clients import new_secrets_manager, secrets_manager  # noqa: F401  (the CLI and tests use them from here)

logger = logging.getLogger(__name__)

CLOCK_SKEW = timedelta(seconds=60)
_SERVICE_ACCOUNT_SUBJECT = re.compile(r"system:serviceaccount:(?P<namespace>[^:]{1,253}):(?P<name>[^:]{1,253})")


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


class _Refused(Exception):
    """A refused refresh, with the reason the operator reads; the client's answer depends only on the
    outcome (audit.REFRESH_REFUSALS): an expired session or a token that is not ours."""

    def __init__(self, reason: str, **details):
        super().__init__(reason)
        self.reason = reason
        self.details = details

    @property
    def answer(self) -> Exception:
        expired = audit.REFRESH_REFUSALS[self.reason] in ("expired", "lifetime", "revoked")
        return sessions.SessionExpired() if expired else sessions.InvalidToken()


def _account_fields(token: str) -> dict:
    """The ServiceAccount a session's token names (its `sub`, as the cluster authenticated it at login)."""
    subject = sessions.jwt_subject(token)
    match = _SERVICE_ACCOUNT_SUBJECT.fullmatch(subject) if subject else None
    return {"namespace": match["namespace"], "serviceaccount": match["name"]} if match else {}


def _kid(envelope: sessions.Envelope) -> str | None:
    """The kid a presented token names, as logged: the client chose it, so it is cut short."""
    return envelope.kid[:64] if envelope.kid else None


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
        try:
            self._check_csrf("login", csrf, raw_body)
            spec = dashboard.parse_login(raw_body)
            key = self._keys.mint_key()  # before asking the cluster: no key, no point
            if not sessions.looks_like_jwt(spec.token):
                # ServiceAccount tokens are JWTs; don't send anything else to a cluster
                raise NotAuthenticated("not_a_jwt")
            self._issuers.verify(cluster, spec.token)  # a forgery stops here, before the cluster hears of it
            token_expiry = sessions.jwt_expiry(spec.token)
            account = self._reviewer.review(cluster, spec.token)
        except NotAuthenticated as refused:
            audit.login_refused(cluster.name, refused.reason, **refused.details)
            raise
        except (ClusterUnavailable, ClusterConfigError, KeyStoreUnavailable):
            audit.login_unavailable(cluster.name)
            raise
        now = self._clock()
        claims = sessions.Claims(
            issued_at=now,
            expires_at=self._expiry(cluster, now, auth_time=now, token_expiry=token_expiry),
            cluster=cluster.name,
            auth_time=now,
            reviewed_at=now,
        )
        session = sessions.mint(spec.token, claims, key.public, key.kid)
        audit.login_accepted(cluster.name, account.namespace, account.name)
        return dashboard.AuthResponse(session, name=account.name)

    def refresh(self, cluster_name: str | None, raw_body: bytes | None, csrf: str | None) -> dashboard.AuthResponse:
        cluster = self.cluster(cluster_name)
        try:
            self._check_csrf("token", csrf, raw_body)
            presented = dashboard.parse_refresh(raw_body)
            renewed = self._renew(cluster, presented)
        except _Refused as refused:
            audit.refresh_refused(cluster.name, refused.reason, **refused.details)
            raise refused.answer from None
        except (ClusterUnavailable, ClusterConfigError, KeyStoreUnavailable):
            audit.refresh_unavailable(cluster.name)
            raise
        audit.refresh_renewed(cluster.name)
        return renewed

    def _renew(self, cluster: Cluster, presented: str) -> dashboard.AuthResponse:
        try:
            envelope = sessions.parse(presented)
        except sessions.InvalidToken:
            raise _Refused("malformed") from None
        if (envelope.claims.cluster or self._registry().default) != cluster.name:
            raise _Refused("other_cluster")
        token = self._open(envelope)
        claims, now = envelope.claims, self._clock()
        if max(claims.issued_at, claims.auth_time) > now + CLOCK_SKEW:
            raise _Refused("future")  # we never seal times from the future
        token_expiry = sessions.jwt_expiry(token)
        limit = self._limit_reached(claims, token_expiry, now)
        if limit:
            raise _Refused(limit, **_account_fields(token))
        reviewed_at = claims.reviewed_at
        if reviewed_at is None or now - reviewed_at >= timedelta(seconds=self._settings.review_interval):
            try:
                self._reviewer.review(cluster, token)
            except NotAuthenticated as refused:
                # The session's ServiceAccount is no longer accepted: deleted, or its token revoked.
                raise _Refused("revoked", review=refused.reason, **_account_fields(token)) from None
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
        cluster = self._registry().get(cluster_name)
        audit.cluster_resolved(cluster.name)
        return cluster

    def cluster_names(self, cluster_name: str | None) -> dict:
        registry = self._registry()
        registry.get(cluster_name)
        return {"clusters": registry.names(), "defaultCluster": registry.default}

    # ------------------------------------------------------------ SnapStart (chalicelib/snapstart.py)

    def prepare(self) -> None:
        """Before the snapshot: the registry and one ApiClient per cluster, no connection, no secret.

        A registry that does not load is left for the requests to report, as without SnapStart."""
        try:
            registry = self._registry()
        except ClusterConfigError as error:
            logger.warning("not preparing the clusters before the snapshot: %s", error)
            return
        for name in registry.names():
            self._reviewer.prepare(registry.clusters[name])

    def after_restore(self) -> None:
        """In each container restored from the snapshot: forget what must not be shared between them."""
        self._keys.forget()
        self._issuers.forget()
        try:
            registry = self._registry()
        except ClusterConfigError:
            return
        for cluster in registry.clusters.values():
            self._reviewer.after_restore(cluster)

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
            raise _Refused("retired_key", kid=_kid(envelope))  # sealed under a key rotated out: log in again
        if not candidates:
            audit.unknown_kid()
            raise _Refused("unknown_key", kid=_kid(envelope))
        for key in candidates:
            try:
                return sessions.decrypt(envelope, key.private)
            except sessions.InvalidToken:
                continue
        raise _Refused("tampered", kid=_kid(envelope))

    def _limit_reached(self, claims: sessions.Claims, token_expiry: datetime | None, now: datetime) -> str | None:
        """Which limit the session has reached, if any: the one a refusal names."""
        # The session's exp is never past the token's, nor past the lifetime: name the cause, not the symptom.
        for reason, limit in (
            ("lifetime", self._lifetime_end(claims.auth_time)),
            ("token_expired", token_expiry),
            ("expired", claims.expires_at),
        ):
            if limit is not None and now >= limit:
                return reason
        return None

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
