"""The clusters this service logs people in to, and the TokenReview that asks each one who a token is.

Each cluster gets one kubernetes ApiClient per container, built on first use and kept, so a
warm container pays one TLS handshake per cluster, not one per login. The kubernetes package
is imported only when a review is actually needed: most refreshes never load it. Under SnapStart
(snapstart.py) the ApiClients, kubernetes with them, are built before the snapshot instead, without
connecting or reading a reviewer credential, and each restored container gets a fresh pool.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from . import audit

logger = logging.getLogger(__name__)

DEFAULT_CLUSTER = "default"
_CLUSTER_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_LABEL = r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?"
_SERVICE_ACCOUNT = re.compile(rf"system:serviceaccount:(?P<namespace>{_DNS_LABEL}):(?P<name>{_DNS_LABEL})")
REVIEWER_TOKEN_REREAD_SECONDS = 60.0
TOKENREVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"


class ClusterConfigError(ValueError):
    """The cluster registry (or kubeconfig) is missing or wrong; the message says what to fix."""


class UnknownCluster(LookupError):
    pass


class ClusterUnavailable(RuntimeError):
    """The cluster could not give an answer (down, slow, 5xx, or it refused our reviewer).

    `cause` is one of audit.CLUSTER_FAILURE_CAUSES, `detail` says more for the log; both are reported
    (audit.cluster_failure) where the request failed.
    """

    def __init__(self, message: str, retry_after: int = 5, cause: str = "other", detail: str | None = None):
        super().__init__(message)
        self.retry_after = retry_after  # seconds a client should wait before trying again
        self.cause = cause
        self.detail = detail or message


class NotAuthenticated(Exception):
    """This token does not log in: the cluster said so, or the local check did (issuers.py).

    `reason` is the class an operator sees (audit.LOGIN_REFUSALS), `details` what else the log may say
    about it (never the token). The client's answer is the same for every reason.
    """

    def __init__(self, reason: str = "unauthenticated", **details):
        super().__init__(reason)
        self.reason = reason
        self.details = details


@dataclass(frozen=True)
class ServiceAccount:
    namespace: str
    name: str


@dataclass
class Cluster:
    name: str
    server: str | None
    ca_data: bytes | None
    reviewer: dict
    audiences: tuple[str, ...] = ()
    token_ttl: int | None = None
    verify_locally: bool = True  # check ServiceAccount JWTs against the cluster's published keys first
    _connection: object = field(default=None, repr=False)  # _Connection, built on first review
    _connection_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _breaker: object = field(default=None, repr=False)  # breaker.CircuitBreaker, built on first request

    def breaker(self, settings: tuple[int, float, int]):
        """This container's circuit breaker for the cluster (built on first use)."""
        with self._connection_lock:
            if self._breaker is None:
                from .breaker import CircuitBreaker

                failure_threshold, cooldown, max_in_flight = settings
                self._breaker = CircuitBreaker(
                    self.name, failure_threshold, cooldown, max_in_flight, failures=(ClusterUnavailable,)
                )
            return self._breaker


@dataclass(frozen=True)
class Registry:
    default: str
    clusters: dict[str, Cluster]

    def get(self, name: str | None) -> Cluster:
        cluster = self.clusters.get(self.default if name is None else name)
        if cluster is None:
            raise UnknownCluster(name)
        return cluster

    def names(self) -> list[str]:
        return sorted(self.clusters)


# ---------------------------------------------------------------- registry loading

def _fail(source: str, message: str) -> ClusterConfigError:
    return ClusterConfigError(f"{source}: {message}")


def _parse_reviewer(source: str, name: str, reviewer: object, base_dir: str) -> dict:
    if not isinstance(reviewer, dict) or len(reviewer) != 1:
        raise _fail(source, f'cluster {name!r} needs "reviewer": one of {{"tokenFile"}}, {{"tokenSecretId"}}, {{"eks"}}')
    (kind, value), = reviewer.items()
    if kind == "tokenFile" and isinstance(value, str) and value:
        return {kind: os.path.join(base_dir, value)}  # an absolute value stays as it is
    if kind == "tokenSecretId" and isinstance(value, str) and value:
        return {kind: value}
    if kind == "eks" and isinstance(value, dict) and isinstance(value.get("clusterName"), str):
        region = value.get("region")
        if region is not None and not isinstance(region, str):
            raise _fail(source, f'cluster {name!r}: reviewer.eks.region must be a string')
        return {"eks": {"clusterName": value["clusterName"], "region": region}}
    raise _fail(source, f'cluster {name!r}: reviewer {kind!r} is not one of tokenFile, tokenSecretId, eks (with clusterName)')


def _parse_cluster(source: str, entry: object, base_dir: str) -> Cluster:
    if not isinstance(entry, dict):
        raise _fail(source, "each entry of clusters must be an object")
    name = entry.get("name")
    if not isinstance(name, str) or not _CLUSTER_NAME.fullmatch(name):
        raise _fail(source, f"cluster name {name!r} must be a DNS label (lowercase letters, digits, '-')")
    server = entry.get("server")
    if not isinstance(server, str) or not server.startswith("https://"):
        raise _fail(source, f"cluster {name!r}: server must be an https:// URL")
    try:
        ca_data = base64.b64decode(entry.get("certificateAuthorityData", ""), validate=True)
    except (ValueError, TypeError):
        ca_data = b""
    if b"-----BEGIN CERTIFICATE-----" not in ca_data:
        raise _fail(source, f"cluster {name!r}: certificateAuthorityData must be base64 of a PEM certificate")
    audiences = entry.get("audiences", [])
    if not isinstance(audiences, list) or not all(isinstance(a, str) and a for a in audiences):
        raise _fail(source, f"cluster {name!r}: audiences must be a list of strings")
    token_ttl = entry.get("tokenTTL")
    if token_ttl is not None and (not isinstance(token_ttl, int) or isinstance(token_ttl, bool) or token_ttl < 0):
        raise _fail(source, f"cluster {name!r}: tokenTTL must be a whole number of seconds")
    verify_locally = entry.get("verifyLocally", True)
    if not isinstance(verify_locally, bool):
        raise _fail(source, f"cluster {name!r}: verifyLocally must be true or false")
    unknown = set(entry) - {
        "name", "server", "certificateAuthorityData", "reviewer", "audiences", "tokenTTL", "verifyLocally"
    }
    if unknown:
        raise _fail(source, f"cluster {name!r}: unknown fields {sorted(unknown)}")
    return Cluster(
        name=name,
        server=server.rstrip("/"),
        ca_data=ca_data,
        reviewer=_parse_reviewer(source, name, entry.get("reviewer"), base_dir),
        audiences=tuple(audiences),
        token_ttl=token_ttl,
        verify_locally=verify_locally,
    )


def parse_registry(source: str, text: str, base_dir: str) -> Registry:
    try:
        document = json.loads(text)
    except ValueError as error:
        raise _fail(source, f"not valid JSON ({error})") from None
    if not isinstance(document, dict) or not isinstance(document.get("clusters"), list) or not document["clusters"]:
        raise _fail(source, 'expected {"defaultCluster": ..., "clusters": [ ... ]} with at least one cluster')
    clusters: dict[str, Cluster] = {}
    for entry in document["clusters"]:
        cluster = _parse_cluster(source, entry, base_dir)
        if cluster.name in clusters:
            raise _fail(source, f"cluster {cluster.name!r} is listed twice")
        clusters[cluster.name] = cluster
    default = document.get("defaultCluster", next(iter(clusters)))
    if default not in clusters:
        raise _fail(source, f"defaultCluster {default!r} is not one of the clusters {sorted(clusters)}")
    return Registry(default=default, clusters=clusters)


def load_registry(clusters_file: str | None, base_dir: str) -> Registry:
    """The registry file, or without one the current kubeconfig context as cluster "default"."""
    if clusters_file is None:
        kubeconfig = Cluster(name=DEFAULT_CLUSTER, server=None, ca_data=None, reviewer={"kubeconfig": True})
        return Registry(default=DEFAULT_CLUSTER, clusters={DEFAULT_CLUSTER: kubeconfig})
    try:
        with open(clusters_file, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise _fail(clusters_file, f"cannot read the cluster registry ({error.strerror})") from None
    return parse_registry(clusters_file, text, base_dir)


# ---------------------------------------------------------------- reviewer credentials

class _ReviewerToken:
    """The service's own bearer token for a cluster, re-read now and then so rotated tokens are picked up.

    A failed re-read keeps the token in hand (an outage of its store must not stop logins) and
    waits REVIEWER_TOKEN_REREAD_SECONDS before trying again.
    """

    def __init__(self, fetch: Callable[[], str]):
        self._fetch = fetch
        self._token: str | None = None
        self._fetched_at = 0.0

    def forget(self) -> None:
        """Drop the token in hand (a container restored from a snapshot reads it afresh)."""
        self._token = None
        self._fetched_at = 0.0

    def get(self) -> str:
        if self._token is None or time.monotonic() - self._fetched_at > REVIEWER_TOKEN_REREAD_SECONDS:
            try:
                self._token = self._fetch().strip()
            except ClusterUnavailable as error:
                if self._token is None:
                    raise
                logger.warning("keeping the reviewer token in hand: %s", error)
            self._fetched_at = time.monotonic()
        return self._token


def _token_file_reader(path: str) -> Callable[[], str]:
    def read() -> str:
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read()
        except OSError as error:
            raise ClusterUnavailable(f"cannot read reviewer tokenFile {path}: {error.strerror}") from None
    return read


def _token_secret_reader(secret_id: str, secrets_client: Callable[[], object]) -> Callable[[], str]:
    def read() -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            value = secrets_client().get_secret_value(SecretId=secret_id)["SecretString"]
        except (ClientError, BotoCoreError, KeyError) as error:
            raise ClusterUnavailable(f"cannot read reviewer tokenSecretId {secret_id}: {type(error).__name__}") from None
        try:
            document = json.loads(value)
        except ValueError:
            return value
        return document["token"] if isinstance(document, dict) and isinstance(document.get("token"), str) else value
    return read


def eks_token(cluster_name: str, region: str | None, sts_client: object) -> str:
    """An EKS bearer token: a presigned STS GetCallerIdentity URL naming the cluster, as `aws eks get-token` makes."""
    def add_cluster_header(request, **_):
        request.headers["x-k8s-aws-id"] = cluster_name

    sts_client.meta.events.register("before-sign.sts.GetCallerIdentity", add_cluster_header)
    try:
        url = sts_client.generate_presigned_url("get_caller_identity", ExpiresIn=60, HttpMethod="GET")
    finally:
        sts_client.meta.events.unregister("before-sign.sts.GetCallerIdentity", add_cluster_header)
    return "k8s-aws-v1." + base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")


def _eks_reader(cluster_name: str, region: str | None) -> Callable[[], str]:
    def read() -> str:
        import boto3

        return eks_token(cluster_name, region, boto3.client("sts", region_name=region))
    return read


# ---------------------------------------------------------------- TokenReview

class _Connection(NamedTuple):
    """A cluster's long-lived ApiClient (reviewer credentials), its pool to the API server, the server's base path."""

    client: object
    pool: object
    base_path: str  # "" unless the server URL has a path (a proxy in front of the API server)
    reviewer_token: "_ReviewerToken | None" = None  # None for a kubeconfig context


class Reviewer:
    """Asks clusters about tokens, as the service's reviewer: one long-lived ApiClient per cluster, each
    request under the cluster's circuit breaker (see breaker.py)."""

    def __init__(
        self,
        timeout: float,
        secrets_client: Callable[[], object],
        failure_threshold: int = 5,
        cooldown: float = 30.0,
        max_in_flight: int = 10,
    ):
        self._timeout = timeout
        self._secrets_client = secrets_client
        self._breaker_settings = (failure_threshold, cooldown, max_in_flight)

    def review(self, cluster: Cluster, token: str) -> ServiceAccount:
        spec = {"token": token, **({"audiences": list(cluster.audiences)} if cluster.audiences else {})}
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        # Never log the answer: a TokenReview answer echoes the token under review.
        status, data = self._request(cluster, "POST", TOKENREVIEW_PATH, json.dumps(body).encode())
        if status == 403:
            raise _failed(
                cluster,
                f"cluster {cluster.name} refused the service's reviewer credentials (HTTP {status}); "
                "the reviewer needs `create` on tokenreviews.authentication.k8s.io",
                "reviewer_forbidden", "HTTP 403 to TokenReview: the reviewer needs `create` on tokenreviews",
            )
        if not 200 <= status < 300:
            raise _failed(cluster, f"cluster {cluster.name} answered HTTP {status} to TokenReview", "other",
                          f"HTTP {status} to TokenReview")
        try:
            review = json.loads(data)
        except ValueError:
            raise _failed(cluster, f"cluster {cluster.name} answered TokenReview with something not JSON", "other",
                          "a TokenReview answer that is not JSON") from None
        return _service_account(cluster, review.get("status") if isinstance(review, dict) else None)

    def get(self, cluster: Cluster, path: str, max_bytes: int) -> tuple[int, bytes | None]:
        """GET a document the cluster publishes, as the reviewer: (status, body, or None if over max_bytes)."""
        return self._request(cluster, "GET", path, None, max_bytes)

    def _request(
        self, cluster: Cluster, method: str, path: str, body: bytes | None, max_bytes: int | None = None
    ) -> tuple[int, bytes | None]:
        from .breaker import Refused

        connection = self._connection(cluster)
        try:
            return self._send(cluster, connection, method, path, body, max_bytes)
        except Refused as refused:
            failure = ClusterUnavailable(str(refused), retry_after=refused.retry_after, cause=refused.kind)
        except ClusterUnavailable as error:
            failure = error
        audit.cluster_failure(cluster.name, failure.cause, failure.detail, failure.retry_after)
        raise failure

    def _send(
        self, cluster: Cluster, connection: "_Connection", method: str, path: str, body: bytes | None,
        max_bytes: int | None,
    ) -> tuple[int, bytes | None]:
        import urllib3
        from urllib3.exceptions import HTTPError

        with cluster.breaker(self._breaker_settings).call():
            try:
                # The kubernetes ApiClient prepares the request as the generated API methods would
                # (URL, headers, the reviewer's credentials) and it goes out through the client's
                # own pool (its TLS, CA and proxy settings). Skipped: the generated methods'
                # per-call pydantic validation and the REST and pool-manager layers' per-request
                # dispatch and URL parsing, which together cost more than the request itself; and
                # redirects, which would carry the token under review to another URL.
                _, _, headers, _, _ = connection.client.param_serialize(
                    method=method,
                    resource_path=path,
                    header_params={"Accept": "application/json", "Content-Type": "application/json"},
                    auth_settings=["BearerToken"],
                )
                started = time.perf_counter()
                # One retry of a connect, as before; none of a TLS failure (a wrong CA fails the same
                # way twice) or of anything else that is not a connect or read error.
                answer = connection.pool.urlopen(
                    method, connection.base_path + path, body=body, headers=headers, redirect=False,
                    preload_content=max_bytes is None, retries=urllib3.Retry(total=1, other=0),
                )
                if max_bytes is None:
                    status, data = answer.status, answer.data
                else:
                    status, data = answer.status, answer.read(max_bytes + 1)
                    if len(data) > max_bytes:
                        answer.close()  # the rest is never read: this connection cannot be reused
                        data = None
                    else:
                        answer.release_conn()
            except (HTTPError, OSError) as error:
                cause, detail = _connection_failure(error)
                raise ClusterUnavailable(
                    f"cluster {cluster.name} unreachable: {cause} ({detail})", cause=cause, detail=detail
                ) from None
            if path == TOKENREVIEW_PATH:
                audit.token_review_answered(cluster.name, (time.perf_counter() - started) * 1000)
            # The cluster is failing, or our own credentials are: either way its breaker counts it.
            if status == 401:
                raise ClusterUnavailable(
                    f"cluster {cluster.name} refused the service's reviewer credentials (HTTP 401)",
                    cause="reviewer_unauthorized", detail=f"HTTP 401 to {method} {path}",
                )
            if status == 429 or status >= 500:
                raise ClusterUnavailable(
                    f"cluster {cluster.name} answered HTTP {status} to {method} {path}",
                    cause="throttled" if status == 429 else "server_error", detail=f"HTTP {status} to {method} {path}",
                )
            return status, data

    def client_for(self, cluster: Cluster):
        """The cluster's long-lived ApiClient with the reviewer's credentials (built on first use)."""
        return self._connection(cluster).client

    def prepare(self, cluster: Cluster) -> None:
        """Build the cluster's ApiClient and pool now, without connecting or reading any credential.

        For SnapStart's initialisation (chalicelib/snapstart.py). A kubeconfig context is left for the
        first request: loading it may run a credential plugin.
        """
        if "kubeconfig" not in cluster.reviewer:
            self._connection(cluster)

    def after_restore(self, cluster: Cluster) -> None:
        """What one container restored from a snapshot must not share with another restored from it:
        the pool's connections, the reviewer token in hand, the breaker's monotonic-clock state."""
        with cluster._connection_lock:
            cluster._breaker = None
            connection = cluster._connection
            if connection is None:
                return
            if connection.reviewer_token is not None:
                connection.reviewer_token.forget()
            if connection.pool.num_connections == 0:
                return  # built and never connected (SnapStart's preparation): nothing in it to share
            connection.pool.close()  # and whatever connections it holds
            connection.client.rest_client.pool_manager.clear()
            cluster._connection = connection._replace(pool=self._pool(connection.client))

    def _pool(self, client):
        import urllib3

        url = urllib3.util.parse_url(client.configuration.host)
        return client.rest_client.pool_manager.connection_from_url(
            url.url, pool_kwargs={"timeout": urllib3.Timeout(connect=self._timeout, read=self._timeout)}
        )

    def _connection(self, cluster: Cluster) -> _Connection:
        with cluster._connection_lock:
            if cluster._connection is None:
                import urllib3

                client, reviewer_token = self._build_client(cluster)
                url = urllib3.util.parse_url(client.configuration.host)
                cluster._connection = _Connection(
                    client, self._pool(client), (url.path or "").rstrip("/"), reviewer_token
                )
            return cluster._connection

    def _build_client(self, cluster: Cluster) -> tuple[object, "_ReviewerToken | None"]:
        from kubernetes import client, config

        if "kubeconfig" in cluster.reviewer:
            try:
                # The kubernetes package reads KUBECONFIG once, at import; read it now instead.
                api_client = config.new_client_from_config(config_file=os.environ.get("KUBECONFIG") or None)
            except (config.ConfigException, OSError) as error:
                raise ClusterConfigError(
                    "no cluster is configured: set CLUSTERS_FILE to a cluster registry, or point KUBECONFIG at a "
                    f"kubeconfig whose current context may create TokenReviews ({type(error).__name__})"
                ) from None
            api_client.configuration.retries = 1
            return api_client, None
        configuration = client.Configuration(host=cluster.server, ca_cert_data=cluster.ca_data.decode())
        configuration.retries = 1
        configuration.connection_pool_maxsize = 4
        reviewer_token = _ReviewerToken(self._token_source(cluster))
        configuration.api_key_prefix["BearerToken"] = "Bearer"
        configuration.api_key["BearerToken"] = ""  # the hook fills it in before every request

        def refresh_reviewer_token(conf) -> None:
            conf.api_key["BearerToken"] = reviewer_token.get()

        configuration.refresh_api_key_hook = refresh_reviewer_token
        return client.ApiClient(configuration), reviewer_token

    def _token_source(self, cluster: Cluster) -> Callable[[], str]:
        kind, value = next(iter(cluster.reviewer.items()))
        if kind == "tokenFile":
            return _token_file_reader(value)
        if kind == "tokenSecretId":
            return _token_secret_reader(value, self._secrets_client)
        return _eks_reader(value["clusterName"], value["region"])


def _failed(cluster: Cluster, message: str, cause: str, detail: str) -> ClusterUnavailable:
    """A cluster's answer that is a failure (not about the token), reported where it is recognised."""
    audit.cluster_failure(cluster.name, cause, detail)
    return ClusterUnavailable(message, cause=cause, detail=detail)


def _connection_failure(error: BaseException) -> tuple[str, str]:
    """(cause, detail) of a request that got no HTTP answer, from urllib3's error and what it wraps.

    urllib3 reports most of these as MaxRetryError, the cause in `.reason`, itself often wrapping the
    socket or TLS error (`__cause__`, or an argument of its SSLError or ProtocolError): a wrong CA is a
    MaxRetryError whose reason wraps an ssl.SSLCertVerificationError. The detail names the error,
    never the request.
    """
    import socket
    import ssl

    from urllib3 import exceptions

    chain, seen = [], error
    for _ in range(6):  # the wrapped errors, outermost first; bounded against a cycle
        if seen is None or seen in chain:
            break
        chain.append(seen)
        inner = getattr(seen, "reason", None)
        if not isinstance(inner, BaseException):
            inner = seen.__cause__ or seen.__context__
        if inner is None:  # urllib3's SSLError and ProtocolError carry what they wrap as an argument
            inner = next((arg for arg in seen.args if isinstance(arg, BaseException)), None)
        seen = inner
    for item in chain:
        if isinstance(item, ssl.SSLCertVerificationError):
            return "certificate", f"TLS certificate not trusted: {item.verify_message or item.reason}"
    for item in reversed(chain):  # the innermost says most
        if isinstance(item, (exceptions.SSLError, ssl.SSLError)) and not isinstance(item, ssl.SSLEOFError):
            reason = getattr(item, "reason", None)
            return "certificate", f"TLS handshake failed: {reason if isinstance(reason, str) else type(item).__name__}"
    for item in chain:
        if isinstance(item, ConnectionRefusedError):
            return "connection_refused", "connection refused"
        if isinstance(item, (exceptions.ConnectTimeoutError,)) and not isinstance(item, exceptions.NewConnectionError):
            return "timeout", "no connection within the timeout"
        if isinstance(item, (exceptions.ReadTimeoutError, socket.timeout, TimeoutError)):
            return "timeout", "no answer within the timeout"
    for item in chain:
        if isinstance(item, ConnectionResetError):
            return "other", "connection reset"
        if isinstance(item, (ssl.SSLEOFError, exceptions.ProtocolError)):
            return "other", "connection closed before an answer"
        if isinstance(item, exceptions.NameResolutionError):
            return "other", "the server's name does not resolve"
    return "other", type(chain[-1] if chain else error).__name__


# What kube-apiserver writes in a failed TokenReview's status.error (and the fake cluster too): the
# audiences ("token audiences ["a"] is invalid for the target audiences ["b"]", Go's %q of a list
# or JSON), and a ServiceAccount that is gone (deleted, or deleted and re-created: another UID).
_AUDIENCE_ERROR = re.compile(r"token audiences (\[[^\]]*\]) is invalid for the target audiences (\[[^\]]*\])")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_DELETED_ERROR = re.compile(
    r'has been deleted|serviceaccounts? "[^"]*" not found|service account UID \([^)]*\) does not match claim'
)


def _service_account(cluster: Cluster, status: object) -> ServiceAccount:
    """Who the cluster says the token is: only an authenticated ServiceAccount passes.

    A refusal carries its class for the log (NotAuthenticated.reason); the error text itself is never
    logged, only what is read out of it (audience names).
    """
    if not isinstance(status, dict) or status.get("authenticated") is not True:
        error = status.get("error") if isinstance(status, dict) else None
        error = error if isinstance(error, str) else ""
        audiences = _AUDIENCE_ERROR.search(error)
        if audiences:
            raise NotAuthenticated(
                "audience_mismatch",
                token_audiences=audit.audiences(_QUOTED.findall(audiences[1])),
                configured_audiences=list(cluster.audiences),
            )
        if _DELETED_ERROR.search(error):
            raise NotAuthenticated("deleted")
        raise NotAuthenticated("unauthenticated")
    user = status.get("user")
    username = user.get("username") if isinstance(user, dict) else None
    match = _SERVICE_ACCOUNT.fullmatch(username) if isinstance(username, str) else None
    if match is None:
        raise NotAuthenticated("not_a_service_account")  # a person or a node, not a ServiceAccount
    answered = status.get("audiences")
    answered = answered if isinstance(answered, list) else []
    if cluster.audiences and not set(a for a in answered if isinstance(a, str)) & set(cluster.audiences):
        raise NotAuthenticated(
            "audience_mismatch",
            answered_audiences=audit.audiences(answered),
            configured_audiences=list(cluster.audiences),
            namespace=match["namespace"], serviceaccount=match["name"],
        )
    return ServiceAccount(namespace=match["namespace"], name=match["name"])
