"""What an operator reads: one access line per request, audit events, and CloudWatch metrics (EMF).

The decisions are made elsewhere (service.py, issuers.py, clusters.py, keys.py); each reports here,
where it is made, so a reason is never guessed afterwards from an answer. Clients never see any of
it: every refused login is the same MSG_LOGIN_UNAUTHORIZED_ERROR.

- Every line of an invocation carries its request context (request_id, route, cold_start, and the
  cluster once known) through Powertools' context keys (see logs.py).
- The access line (event "request") ends each invocation: status, outcome, latency_ms, cluster.
- Audit events are one INFO/WARNING line each with a stable `event` name and flat fields, never a
  token; see README ("Operating it") for the table.
- Metrics follow docs/observability.md exactly: namespace DashboardAuth, dimension service on every
  metric, a per-cluster metric counted in its detailed series and in its {service}-only total. They
  are written in CloudWatch's embedded metric format (EMF) inside the access line itself: one line per
  request is at once what an operator reads and what CloudWatch counts. A metric whose dimension
  values cannot share that line (two cluster failures of different causes in one request) gets an
  EMF line of its own. Outside an API invocation (the operator CLI) nothing is emitted.
"""
from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Callable

from . import logs

NAMESPACE = "DashboardAuth"
SERVICE = logs.SERVICE
MAX_USER_AGENT = 256
MAX_AUDIENCES = 16

log = logging.getLogger("chalicelib.audit")
access_log = logging.getLogger("chalicelib.access")

# Contract values (docs/observability.md): the dimension values an alarm may name.
LOGIN_OUTCOMES = ("accepted", "refused", "unavailable")
LOGIN_REFUSALS = ("not_a_jwt", "forged", "unauthenticated", "not_a_service_account", "audience_mismatch", "deleted")
REFRESH_OUTCOMES = ("renewed", "expired", "lifetime", "revoked", "invalid", "unavailable")
CLUSTER_FAILURE_CAUSES = (
    "certificate", "connection_refused", "timeout", "reviewer_unauthorized", "reviewer_forbidden",
    "server_error", "throttled", "circuit_open", "busy", "other",
)
# A refused refresh's reason (in the audit line) and the outcome it counts under.
REFRESH_REFUSALS = {
    "expired": "expired",  # the session token's exp
    "token_expired": "expired",  # the ServiceAccount token's own exp
    "retired_key": "expired",  # sealed under a key rotated out: the client is told to log in again
    "lifetime": "lifetime",  # auth_time + MAX_SESSION_TTL
    "revoked": "revoked",  # TokenReview no longer accepts the ServiceAccount's token
    "unknown_key": "invalid",
    "other_cluster": "invalid",
    "tampered": "invalid",
    "malformed": "invalid",
    "future": "invalid",
}


@dataclass(frozen=True)
class _Metric:
    name: str
    unit: str
    dimensions: tuple  # the detailed ones, (name, value) pairs, besides service
    total: bool  # also counted in the {service}-only series


@dataclass
class _Invocation:
    route: str
    request_id: str | None
    source_ip: str | None
    user_agent: str | None
    cluster: str | None = None
    outcome: str | None = None
    metrics: dict = field(default_factory=dict)  # _Metric -> a Count's sum, or the list of other values


_current: ContextVar[_Invocation | None] = ContextVar("dashboard_auth_invocation", default=None)


# ---------------------------------------------------------------- the invocation

class RequestLog:
    """Chalice http middleware: context keys, the access line, the metrics blob. One per app (container)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self._cold = True
        self._clock = clock

    def __call__(self, request, get_response):
        cold, self._cold = self._cold, False
        context = request.context or {}
        identity = context.get("identity") or {}
        lambda_context = request.lambda_context
        invocation = _Invocation(
            route=f"{request.method} {request.path}",
            request_id=context.get("requestId") or getattr(lambda_context, "aws_request_id", None),
            source_ip=identity.get("sourceIp"),
            user_agent=_short(identity.get("userAgent") or request.headers.get("user-agent"), MAX_USER_AGENT),
            cluster=(request.uri_params or {}).get("cluster"),
        )
        reset = _current.set(invocation)
        logs.start_context(
            request_id=invocation.request_id,
            function_request_id=getattr(lambda_context, "aws_request_id", None),
            route=invocation.route,
            cold_start=cold,
        )
        if cold and getattr(lambda_context, "function_name", None):
            _count("ColdStart", {"function_name": lambda_context.function_name}, total=False)
        started = self._clock()
        status = 500
        try:
            response = get_response(request)
            status = response.status_code
            return response
        finally:
            outcome = invocation.outcome or _outcome_of(status)
            fields = _fields(
                event="request", status=status, outcome=outcome,
                latency_ms=round((self._clock() - started) * 1000, 1), cluster=invocation.cluster,
                source_ip=invocation.source_ip, user_agent=invocation.user_agent,
            )
            logs.log_fields(access_log, logging.INFO, _with_metrics(fields, invocation), "%s %s %s",
                            invocation.route, status, outcome)
            _current.reset(reset)
            logs.clear_context()


def _outcome_of(status: int) -> str:
    """The outcome of a request nothing more specific was said about, by its status."""
    return {
        200: "ok", 400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
        413: "too_large", 415: "unsupported_media_type", 500: "error", 503: "unavailable",
    }.get(status, "ok" if status < 400 else f"http_{status}")


def cluster_resolved(name: str) -> None:
    """The request's cluster is known (the route named it, or it is the default)."""
    invocation = _current.get()
    if invocation is not None and invocation.cluster != name:
        invocation.cluster = name
    logs.bind_context(cluster=name)


def _set_outcome(outcome: str) -> None:
    invocation = _current.get()
    if invocation is not None:
        invocation.outcome = outcome


def _client_fields() -> dict:
    invocation = _current.get()
    if invocation is None:
        return {}
    return {"source_ip": invocation.source_ip, "user_agent": invocation.user_agent}


def _fields(**fields) -> dict:
    return {name: value for name, value in fields.items() if value is not None}


def _short(value: object, limit: int) -> str | None:
    if not isinstance(value, str):
        return None
    return value if len(value) <= limit else value[:limit] + "..."


# ---------------------------------------------------------------- metrics

def _count(name: str, detailed: dict | None = None, value: float = 1, unit: str = "Count", total: bool = True) -> None:
    """Count a metric for the current invocation: in its detailed series (if any) and its total series."""
    invocation = _current.get()
    if invocation is None:
        return  # the operator CLI, a script: metrics belong to the API function's invocations
    metric = _Metric(name, unit, tuple(detailed.items()) if detailed else (), total)
    if unit == "Count":
        invocation.metrics[metric] = invocation.metrics.get(metric, 0) + value
    else:
        invocation.metrics.setdefault(metric, []).append(value)


def _with_metrics(fields: dict, invocation: _Invocation) -> dict:
    """The access line's fields with the invocation's metrics embedded (EMF); the metrics that cannot
    share it, because a dimension of theirs already has another value on the line, each get a line of their own."""
    if not invocation.metrics:
        return fields
    directives: dict[tuple, list] = {}  # the dimension sets -> the metrics counted under them
    for metric, value in invocation.metrics.items():
        clash = any(fields.get(name, dimension) != dimension for name, dimension in metric.dimensions)
        if clash:
            line = _emf({"event": "metric", **dict(metric.dimensions)}, {_dimension_sets(metric): [(metric, value)]})
            logs.log_fields(access_log, logging.INFO, line, "metric %s", metric.name)
            continue
        fields.update(metric.dimensions)
        directives.setdefault(_dimension_sets(metric), []).append((metric, value))
    return _emf(fields, directives)


def _dimension_sets(metric: _Metric) -> tuple:
    sets = [("service",)] if metric.total or not metric.dimensions else []
    if metric.dimensions:
        sets.append(("service",) + tuple(name for name, _ in metric.dimensions))
    return tuple(sets)


def _emf(fields: dict, directives: dict) -> dict:
    """fields with CloudWatch's embedded metric format added: the directives under _aws, the values as
    members. The dimensions' values must be members of fields already; the line's `service` member,
    which every line carries, is the service dimension."""
    for metrics in directives.values():
        for metric, value in metrics:
            fields[metric.name] = value
    fields["_aws"] = {
        "Timestamp": int(time.time() * 1000),
        "CloudWatchMetrics": [
            {
                "Namespace": NAMESPACE,
                "Dimensions": [list(names) for names in dimension_sets],
                "Metrics": [{"Name": metric.name, "Unit": metric.unit} for metric, _ in metrics],
            }
            for dimension_sets, metrics in directives.items()
        ],
    }
    return fields


# ---------------------------------------------------------------- logins

def login_accepted(cluster: str, namespace: str, name: str) -> None:
    _set_outcome("accepted")
    logs.log_fields(
        log, logging.INFO, _fields(event="login_accepted", cluster=cluster, namespace=namespace, serviceaccount=name,
                      **_client_fields()),
        "login accepted: %s/%s on %s", namespace, name, cluster,
    )
    _count("Logins", {"cluster": cluster, "outcome": "accepted"})


def login_refused(cluster: str, reason: str, **details) -> None:
    """reason: one of LOGIN_REFUSALS; details: what the operator needs (never the token)."""
    _set_outcome("refused")
    logs.log_fields(
        log, logging.INFO, _fields(event="login_refused", cluster=cluster, reason=reason, **details, **_client_fields()),
        "login refused on %s: %s", cluster, reason,
    )
    _count("Logins", {"cluster": cluster, "outcome": "refused"})
    _count("LoginRefusals", {"cluster": cluster, "reason": reason})


def login_unavailable(cluster: str) -> None:
    _set_outcome("unavailable")
    _count("Logins", {"cluster": cluster, "outcome": "unavailable"})


# ---------------------------------------------------------------- refreshes

def refresh_renewed(cluster: str) -> None:
    _set_outcome("renewed")
    _count("Refreshes", {"cluster": cluster, "outcome": "renewed"})


def refresh_refused(cluster: str, reason: str, **details) -> None:
    """reason: a key of REFRESH_REFUSALS; details: e.g. the revoked ServiceAccount, never the token."""
    outcome = REFRESH_REFUSALS[reason]
    _set_outcome(outcome)
    logs.log_fields(
        log, logging.INFO, _fields(event="refresh_refused", cluster=cluster, reason=reason, outcome=outcome, **details,
                      **_client_fields()),
        "refresh refused on %s: %s", cluster, reason,
    )
    _count("Refreshes", {"cluster": cluster, "outcome": outcome})


def refresh_unavailable(cluster: str) -> None:
    _set_outcome("unavailable")
    _count("Refreshes", {"cluster": cluster, "outcome": "unavailable"})


def unknown_kid() -> None:
    _count("UnknownKids")


# ---------------------------------------------------------------- clusters

def token_review_answered(cluster: str, milliseconds: float) -> None:
    _count("TokenReviewLatency", {"cluster": cluster}, value=round(milliseconds, 3), unit="Milliseconds", total=False)


def cluster_failure(cluster: str, cause: str, detail: str, retry_after: int | None = None) -> None:
    """One failed request to a cluster, or one refused by its breaker: cause is one of CLUSTER_FAILURE_CAUSES."""
    logs.log_fields(
        log, logging.WARNING, _fields(event="cluster_failure", cluster=cluster, cause=cause, detail=detail, retry_after=retry_after),
        "cluster %s failed: %s (%s)", cluster, cause, detail,
    )
    _count("ClusterFailures", {"cluster": cluster, "cause": cause})


def audiences(values: object) -> list[str]:
    """A cluster's audience list as logged: strings only, bounded."""
    if not isinstance(values, (list, tuple)):
        return []
    return [_short(value, 128) for value in values if isinstance(value, str)][:MAX_AUDIENCES]


# ---------------------------------------------------------------- the key

def secrets_manager_call() -> None:
    _count("SecretsManagerCalls")


def secrets_manager_error(operation: str, error: str) -> None:
    logs.log_fields(
        log, logging.WARNING, _fields(event="secrets_manager_failure", operation=operation, error=error),
        "Secrets Manager %s failed: %s", operation, error,
    )
    _count("SecretsManagerErrors")


def key_rotated(old_kid: str, new_kid: str, previous_kid: str | None) -> None:
    logs.log_fields(
        log, logging.INFO, _fields(event="key_rotated", old_kid=old_kid, new_kid=new_kid, previous_kid=previous_kid),
        "key rotation observed: %s -> %s", old_kid, new_kid,
    )


def key_bootstrapped(store: str, source: str, kid: str, replaced: str | None = None) -> None:
    """A key this container wrote: store is "secretsmanager" or "file", source the secret id or the path."""
    logs.log_fields(
        log, logging.INFO, _fields(event="key_bootstrapped", store=store, source=source, kid=kid, replaced=replaced),
        "key bootstrapped: %s in %s", kid, source,
    )
