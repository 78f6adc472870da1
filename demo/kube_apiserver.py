"""A fake Kubernetes API server, served over TLS, that answers TokenReview strictly.

Why this exists: the service under test logs people in with Kubernetes
ServiceAccount tokens and checks them with TokenReview through the official
``kubernetes`` client. A mock of the client would accept whatever the code
under test sends; this fake instead speaks real HTTPS, with its own CA, to a
real client, and validates tokens the way kube-apiserver does, so that the
tests can fail for the reasons production would fail: a wrong CA, a reviewer
credential that is unknown or lacks RBAC, a token that is expired, signed by a
foreign key, for another issuer or audience, or whose ServiceAccount was
deleted, a cluster that is slow, overloaded or down.

Wire details copied from kube-apiserver on purpose:

* a TokenReview answer is ``201 Created`` and echoes the request's ``spec``
  (token included), so a service that logs the raw response leaks tokens;
* a failed review *omits* ``status.authenticated`` (Go ``omitempty`` on a
  false bool) and carries ``"user": {}``; with the Python client this reads
  as ``authenticated is None``, not ``False``. Set
  ``emit_authenticated_false = True`` to send a literal ``false`` instead;
* errors are ``v1.Status`` objects with the usual ``reason`` and ``code``.

Run standalone (for multi-process tests)::

    python -m demo.kube_apiserver --port 0 --state /tmp/state.json
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import http.server
import ipaddress
import json
import logging
import os
import re
import secrets
import signal
import socket
import socketserver
import ssl
import struct
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOG = logging.getLogger(__name__)

DEFAULT_ISSUER = "https://kubernetes.default.svc.cluster.local"
LEGACY_ISSUER = "kubernetes/serviceaccount"
TOKENREVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/openid/v1/jwks"
#: How the server answers DISCOVERY_PATH and JWKS_PATH: as kube-apiserver does by default, not at
#: all (an old or locked-down cluster: 404), or forbidden to the caller (no issuer-discovery RBAC: 403).
DISCOVERY_MODES = frozenset({"served", "absent", "forbidden"})
_SERVICE_ACCOUNT_PATH = re.compile(r"/api/v1/namespaces/([a-z0-9-]{1,63})/serviceaccounts/([a-z0-9.-]{1,253})")
SSAR_PATH = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
FAULT_MODES = frozenset({"500", "503", "429", "hang", "reset", "redirect"})
#: All fields a real /version has: the Python client's VersionInfo requires them.
VERSION_INFO = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0-fake",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-08-13T00:00:00Z",
    "goVersion": "go1.22.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}

#: Tolerated clock skew for ``nbf``/``iat``; ``exp`` is enforced exactly so
#: that "expired one second ago" tests are deterministic.
NBF_LEEWAY_SECONDS = 5
#: A TLS handshake that takes longer than this is abandoned.
HANDSHAKE_TIMEOUT_SECONDS = 10.0
#: Idle keep-alive connections are closed after this long.
IDLE_TIMEOUT_SECONDS = 120.0
#: kube-apiserver refuses request bodies above 3 MiB.
MAX_BODY_BYTES = 3 * 1024 * 1024

_LEGACY_NS = "kubernetes.io/serviceaccount/namespace"
_LEGACY_SA_NAME = "kubernetes.io/serviceaccount/service-account.name"
_LEGACY_SA_UID = "kubernetes.io/serviceaccount/service-account.uid"
_LEGACY_SECRET = "kubernetes.io/serviceaccount/secret.name"


# --------------------------------------------------------------------------- helpers


def generate_rsa_key() -> rsa.RSAPrivateKey:
    """A fresh RSA-2048 key: quick enough for tests, the size clusters use."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_B64URL_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _b64url_decode(part: str) -> bytes:
    """Strict unpadded base64url, as JWS compact serialization requires."""
    if not set(part) <= _B64URL_ALPHABET or len(part) % 4 == 1:
        raise ValueError("illegal base64url data")
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def key_id(public_key: rsa.RSAPublicKey) -> str:
    """The ``kid`` kube-apiserver derives: base64url(SHA-256(DER SubjectPublicKeyInfo))."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _b64url(hashlib.sha256(der).digest())


def sign_jwt(header: Mapping[str, Any], claims: Mapping[str, Any], key: rsa.RSAPrivateKey) -> str:
    """RS256 JWS compact serialization, written by hand so no JWT library is needed."""
    signing_input = (
        _b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64url(json.dumps(claims, separators=(",", ":")).encode())
    )
    signature = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + _b64url(signature)


def _public_jwk(kid: str, public_key: rsa.RSAPublicKey) -> dict[str, str]:
    """An RSA public key as kube-apiserver publishes it in /openid/v1/jwks."""
    numbers = public_key.public_numbers()

    def as_b64url(value: int) -> str:
        return _b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))

    return {"use": "sig", "kty": "RSA", "kid": kid, "alg": "RS256", "n": as_b64url(numbers.n), "e": as_b64url(numbers.e)}


def _new_ca(name: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = generate_rsa_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"fake-kube-ca-{name}")])
    now = dt.datetime.now(dt.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _new_server_cert(
    ca_key: rsa.RSAPrivateKey, ca_cert: x509.Certificate
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = generate_rsa_key()
    now = dt.datetime.now(dt.timezone.utc)
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.DNSName("kubernetes"),
        x509.DNSName("kubernetes.default"),
        x509.DNSName("kubernetes.default.svc"),
        x509.DNSName("kubernetes.default.svc.cluster.local"),
        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=True,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _server_ssl_context(key: rsa.RSAPrivateKey, cert: x509.Certificate) -> ssl.SSLContext:
    """``load_cert_chain`` only reads files, so the PEM lives on disk for one call."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd, path = tempfile.mkstemp(prefix="fake-kube-apiserver-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        ctx.load_cert_chain(path)
    finally:
        os.unlink(path)
    return ctx


def _status(code: int, reason: str, message: str, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A ``v1.Status`` failure object, as kube-apiserver returns for every error."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        body["details"] = dict(details)
    return body


@dataclass(frozen=True)
class _Reply:
    """What a handler should do: send ``status``/``body``, or drop the connection (status 0)."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def abort(self) -> bool:
        return self.status == 0

    @classmethod
    def json(cls, status: int, obj: Any, headers: Mapping[str, str] | None = None) -> _Reply:
        return cls(status, json.dumps(obj).encode(), "application/json", headers or {})

    @classmethod
    def status_object(cls, code: int, reason: str, message: str, **kw: Any) -> _Reply:
        headers = kw.pop("headers", None)
        return cls.json(code, _status(code, reason, message, **kw), headers)


_DROP = _Reply(0)


@dataclass(frozen=True)
class _Reviewer:
    username: str
    allowed: bool
    admin: bool = False  # may also delete ServiceAccounts (cluster-admin, for the demo's revoke line)


@dataclass(frozen=True)
class _StaticUser:
    username: str
    uid: str
    groups: tuple[str, ...]


class _InvalidToken(Exception):
    """A token that a real API server would answer with ``authenticated`` unset."""


# --------------------------------------------------------------------------- HTTP plumbing


class _Handler(http.server.BaseHTTPRequestHandler):
    """Thin HTTP layer: read one request, ask the fake what to do, do it."""

    protocol_version = "HTTP/1.1"
    server_version = "fake-kube-apiserver"
    timeout = IDLE_TIMEOUT_SECONDS
    server: _TLSServer

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _serve(self) -> None:
        fake = self.server.fake
        body = self._read_body()
        if isinstance(body, _Reply):
            self.close_connection = True
            fake._record(self.command, self.path, body.status)
            self._send(body)
            return
        reply = fake._handle(self.command, self.path, self.headers, body, self.server.stopped)
        if reply.abort:
            self.close_connection = True
            self.server.abort_connection(self.connection)
            return
        self._send(reply)

    def _read_body(self) -> bytes | _Reply:
        """Always consume the whole body, so keep-alive stays in sync."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return _Reply.status_object(411, "BadRequest", "chunked request bodies are not supported")
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length < 0:
                raise ValueError
        except ValueError:
            return _Reply.status_object(400, "BadRequest", "invalid Content-Length")
        if length > MAX_BODY_BYTES:
            return _Reply.status_object(413, "RequestEntityTooLarge", "request entity too large")
        body = self.rfile.read(length)
        if len(body) != length:
            return _DROP
        return body

    def _send(self, reply: _Reply) -> None:
        if reply.abort:
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("Audit-Id", str(uuid.uuid4()))
        self.send_header("Cache-Control", "no-cache, private")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(reply.body)

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Silenced: the stdlib would log request lines; _record logs method/path/status."""


class _TLSServer(http.server.ThreadingHTTPServer):
    """ThreadingHTTPServer that does the TLS handshake in the worker thread and counts it.

    The handshake is deferred (``do_handshake_on_connect=False``) so a slow or
    hostile client never blocks the accept loop, and so we can count completed
    handshakes, which proves whether a client reuses its connection.
    """

    daemon_threads = True
    block_on_close = False  # stop() must not wait for hanging or idle keep-alive handlers
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], fake: FakeKubeApiServer, context: ssl.SSLContext):
        self.fake = fake
        self.ssl_context = context
        self.stopped = threading.Event()
        self._conn_lock = threading.Lock()
        self._connections: set[ssl.SSLSocket] = set()
        self._aborted: set[ssl.SSLSocket] = set()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup we do not need.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def get_request(self) -> tuple[ssl.SSLSocket, Any]:
        sock, addr = self.socket.accept()
        # Without TCP_NODELAY, Nagle + delayed ACK add ~40 ms to every keep-alive response.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with self._conn_lock:
            self._connections.add(conn)
        return conn, addr

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(HANDSHAKE_TIMEOUT_SECONDS)
        try:
            request.do_handshake()
        except (ssl.SSLError, OSError):
            return  # e.g. the client does not trust our CA; a real server just drops it too
        self.fake._count_handshake()
        super().finish_request(request, client_address)

    def abort_connection(self, conn: ssl.SSLSocket) -> None:
        """Make the coming close send a TCP RST instead of a clean FIN."""
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        with self._conn_lock:
            self._aborted.add(conn)

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            self._connections.discard(request)
            aborted = request in self._aborted
            self._aborted.discard(request)
        if aborted:
            self.close_request(request)
        else:
            super().shutdown_request(request)

    def close_all_connections(self) -> None:
        """Shut every live socket down; the owning handler threads then close them.

        ``shutdown`` (not ``close``) is used from this thread because it is safe
        while another thread is blocked reading the same socket.
        """
        with self._conn_lock:
            conns = list(self._connections)
        for conn in conns:
            try:
                socket.socket.shutdown(conn, socket.SHUT_RDWR)  # bypass SSLSocket bookkeeping
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (OSError, ssl.SSLError)):
            LOG.debug("%s: connection error: %s", self.fake.name, type(exc).__name__)
        else:
            LOG.exception("%s: unexpected error while handling a request", self.fake.name)


# --------------------------------------------------------------------------- the fake


class FakeKubeApiServer:
    """An HTTPS Kubernetes API server that implements just enough, strictly, for TokenReview.

    Usage::

        with FakeKubeApiServer() as kube:
            kube.create_service_account("default", "dashboard-user")
            reviewer = kube.new_reviewer()
            token = kube.issue_token("default", "dashboard-user")
            ...  # point the service at kube.url / kube.ca_pem with `reviewer`
    """

    def __init__(
        self,
        port: int = 0,
        *,
        name: str = "fake",
        issuer: str = DEFAULT_ISSUER,
        default_audiences: Iterable[str] | None = None,
        hang_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.issuer = issuer
        self.default_audiences: list[str] = (
            [DEFAULT_ISSUER] if default_audiences is None else list(default_audiences)
        )
        #: Upper bound for how long a "hang" fault holds a request before a 504.
        self.hang_timeout = hang_timeout
        #: Where the "redirect" fault sends every request (307, so a client that follows resends the body).
        self.redirect_location = "https://127.0.0.1:9/"
        #: Send ``"authenticated": false`` on failed reviews; real servers omit it.
        self.emit_authenticated_false = False
        #: When set, every TokenReview answer names these ``status.audiences``, refused tokens
        #: included, whatever ``spec.audiences`` asked: a token authenticator (a webhook, an
        #: authenticating proxy) that names its own audiences. kube-apiserver names none on a refusal.
        self.answer_audiences: list[str] | None = None
        #: One of DISCOVERY_MODES.
        self.discovery = "served"

        # One CA, server certificate and SA signing key per instance: distinct
        # instances are distinct clusters that do not trust each other.
        ca_key, ca_cert = _new_ca(name)
        server_key, server_cert = _new_server_cert(ca_key, ca_cert)
        self.ca_pem: bytes = ca_cert.public_bytes(serialization.Encoding.PEM)
        self.ca_data: str = base64.b64encode(self.ca_pem).decode("ascii")
        self._ssl_context = _server_ssl_context(server_key, server_cert)
        #: The key the cluster signs ServiceAccount tokens with (trusted).
        self.signing_key: rsa.RSAPrivateKey = generate_rsa_key()

        self._lock = threading.Lock()
        self._fault_changed = threading.Condition(self._lock)
        self._fault: str | None = None
        self._trusted_keys: dict[str, rsa.RSAPublicKey] = {}
        self._service_accounts: dict[tuple[str, str], str] = {}
        self._reviewers: dict[str, _Reviewer] = {}
        self._static_users: dict[str, _StaticUser] = {}
        self._handshakes = 0
        self._review_count = 0
        self._in_flight = 0
        self._requests: list[tuple[str, str, int]] = []
        self.trust_signing_key(self.signing_key)

        self._port = port
        self._server: _TLSServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeKubeApiServer:
        """Listen on 127.0.0.1; after a stop() the same port is bound again."""
        if self._server is not None:
            return self
        server = _TLSServer(("127.0.0.1", self._port), self, self._ssl_context)
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-kube-apiserver-{self.name}",
            daemon=True,
        )
        self._thread.start()
        LOG.debug("%s: listening on %s", self.name, self.url)
        return self

    def stop(self) -> None:
        """Stop accepting, release hanging requests, and cut every open connection.

        Afterwards clients get "connection refused", including those holding a
        pooled keep-alive connection (they see it dropped and reconnect).
        """
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.stopped.set()
        with self._fault_changed:
            self._fault_changed.notify_all()
        server.shutdown()
        server.server_close()
        server.close_all_connections()
        if thread is not None:
            thread.join(timeout=5)
        LOG.debug("%s: stopped", self.name)

    @property
    def running(self) -> bool:
        return self._server is not None

    def __enter__(self) -> FakeKubeApiServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("port is chosen on the first start(); call start() first")
        return self._port

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ cluster state

    def create_service_account(self, namespace: str, name: str, uid: str | None = None) -> str:
        """Register a ServiceAccount and return its uid; re-creating needs a delete first."""
        with self._lock:
            if (namespace, name) in self._service_accounts:
                raise ValueError(f'serviceaccounts "{name}" already exists in {namespace}')
            sa_uid = uid or str(uuid.uuid4())
            self._service_accounts[(namespace, name)] = sa_uid
            return sa_uid

    def delete_service_account(self, namespace: str, name: str) -> None:
        """Delete a ServiceAccount: its tokens stop authenticating at once."""
        with self._lock:
            if self._service_accounts.pop((namespace, name), None) is None:
                raise KeyError(f'serviceaccounts "{name}" not found in {namespace}')

    def service_account_uid(self, namespace: str, name: str) -> str | None:
        with self._lock:
            return self._service_accounts.get((namespace, name))

    def trust_signing_key(self, key: rsa.RSAPrivateKey | rsa.RSAPublicKey) -> None:
        """Accept tokens signed by ``key`` (e.g. to model a key rotation overlap)."""
        public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
        with self._lock:
            self._trusted_keys[key_id(public)] = public

    def rotate_signing_key(self) -> rsa.RSAPrivateKey:
        """Sign new tokens with a fresh key, as a cluster does after a rotation; the old key still verifies
        (it stays in --service-account-key-file) until :meth:`distrust_signing_key`. Returns the old key."""
        old, new = self.signing_key, generate_rsa_key()
        self.trust_signing_key(new)
        self.signing_key = new
        return old

    def distrust_signing_key(self, key: rsa.RSAPrivateKey | rsa.RSAPublicKey) -> None:
        """Stop accepting tokens signed by ``key`` (the end of a rotation)."""
        public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
        with self._lock:
            self._trusted_keys.pop(key_id(public), None)

    def add_reviewer(self, bearer_token: str, allowed: bool = True, username: str | None = None) -> None:
        """Register a credential that may call the API; ``allowed`` is its tokenreviews/create RBAC."""
        with self._lock:
            user = username or f"system:serviceaccount:kube-system:token-reviewer-{len(self._reviewers) + 1}"
            self._reviewers[bearer_token] = _Reviewer(user, allowed)

    def new_admin(self, username: str = "kubernetes-admin") -> str:
        """A credential that may delete ServiceAccounts over the API, as a cluster admin's may."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._reviewers[token] = _Reviewer(username, allowed=True, admin=True)
        return token

    def new_reviewer(self, allowed: bool = True, username: str | None = None) -> str:
        """Generate, register and return a random reviewer bearer token."""
        token = secrets.token_urlsafe(32)
        self.add_reviewer(token, allowed=allowed, username=username)
        return token

    def remove_reviewer(self, bearer_token: str) -> None:
        """Revoke a reviewer credential (subsequent calls get 401)."""
        with self._lock:
            self._reviewers.pop(bearer_token, None)

    def add_static_user_token(
        self, token: str, username: str, groups: Iterable[str] = (), uid: str | None = None
    ) -> None:
        """Authenticate an opaque token as a non-ServiceAccount user, like a static token file."""
        with self._lock:
            self._static_users[token] = _StaticUser(username, uid or str(uuid.uuid4()), tuple(groups))

    # ------------------------------------------------------------------ tokens

    generate_rsa_key = staticmethod(generate_rsa_key)

    def issue_token(
        self,
        namespace: str,
        name: str,
        audiences: Iterable[str] | None = None,
        expires_in: int | None = 3600,
        issuer: str | None = None,
        signing_key: rsa.RSAPrivateKey | None = None,
        legacy: bool = False,
        *,
        uid: str | None = None,
        extra_claims: Mapping[str, Any] | None = None,
        header_overrides: Mapping[str, Any] | None = None,
    ) -> str:
        """Mint a ServiceAccount JWT shaped like the cluster's own.

        Hostile variants come from the arguments: ``signing_key`` (a key the
        server does not trust, see :meth:`generate_rsa_key`), a negative
        ``expires_in``, another ``issuer``, ``audiences`` the service does not
        expect. A token for an unknown ServiceAccount gets a random uid.
        ``extra_claims`` overrides/adds claims and ``header_overrides`` header
        fields (a ``None`` value removes one), for anything else.
        ``legacy=True`` makes an old Secret-based token, which never has
        ``aud`` or ``exp`` (``audiences``/``expires_in`` are ignored).
        """
        now = int(time.time())
        sa_uid = uid or self.service_account_uid(namespace, name) or str(uuid.uuid4())
        subject = f"system:serviceaccount:{namespace}:{name}"
        claims: dict[str, Any]
        if legacy:
            claims = {
                "iss": issuer or LEGACY_ISSUER,
                _LEGACY_NS: namespace,
                _LEGACY_SECRET: f"{name}-token-{secrets.token_hex(3)}",
                _LEGACY_SA_NAME: name,
                _LEGACY_SA_UID: sa_uid,
                "sub": subject,
            }
        else:
            # An already-expired token was, realistically, issued in the past.
            issued_at = now if expires_in is None or expires_in > 0 else now + expires_in - 600
            claims = {
                "aud": list(self.default_audiences if audiences is None else audiences),
                "iat": issued_at,
                "iss": issuer or self.issuer,
                "jti": str(uuid.uuid4()),
                "kubernetes.io": {
                    "namespace": namespace,
                    "serviceaccount": {"name": name, "uid": sa_uid},
                },
                "nbf": issued_at,
                "sub": subject,
            }
            if expires_in is not None:
                claims["exp"] = now + expires_in
        claims.update(extra_claims or {})
        key = signing_key or self.signing_key
        header: dict[str, Any] = {"alg": "RS256", "kid": key_id(key.public_key())}
        for hname, value in (header_overrides or {}).items():
            if value is None:
                header.pop(hname, None)
            else:
                header[hname] = value
        return sign_jwt(header, claims, key)

    # ------------------------------------------------------------------ faults & counters

    def set_fault(self, mode: str | int | None) -> None:
        """Inject a failure for every endpoint: None, "500", "503", "429", "hang", "reset" or "redirect".

        "hang" holds requests unanswered until the fault changes, stop(), or
        ``hang_timeout`` (then 504). "reset" drops the connection with a TCP RST.
        """
        value = None if mode is None else str(mode)
        if value is not None and value not in FAULT_MODES:
            raise ValueError(f"unknown fault {mode!r}; expected one of {sorted(FAULT_MODES)} or None")
        with self._fault_changed:
            self._fault = value
            self._fault_changed.notify_all()

    @property
    def fault(self) -> str | None:
        with self._lock:
            return self._fault

    @property
    def handshakes(self) -> int:
        """Completed TLS handshakes, i.e. new client connections actually established."""
        with self._lock:
            return self._handshakes

    @property
    def review_count(self) -> int:
        """TokenReview requests that got an HTTP answer: 201 (authenticated or not), 4xx or injected 5xx.

        Requests dropped by the "reset" fault or by stop() are not counted.
        """
        with self._lock:
            return self._review_count

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        """A copy of (method, path, status) per request; status 0 = dropped without answer."""
        with self._lock:
            return list(self._requests)

    @property
    def in_flight(self) -> int:
        """Requests currently being handled (e.g. held by the "hang" fault)."""
        with self._lock:
            return self._in_flight

    def reset_counters(self) -> None:
        with self._lock:
            self._handshakes = 0
            self._review_count = 0
            self._requests.clear()

    # ------------------------------------------------------------------ kubeconfig

    def kubeconfig_dict(self, user_token: str, context: str = "fake", namespace: str = "default") -> dict[str, Any]:
        """A kubeconfig for this cluster with a token user, as ``kubectl`` would write it."""
        user = f"{self.name}-user"
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": self.name, "cluster": {"server": self.url, "certificate-authority-data": self.ca_data}}
            ],
            "users": [{"name": user, "user": {"token": user_token}}],
            "contexts": [
                {"name": context, "context": {"cluster": self.name, "user": user, "namespace": namespace}}
            ],
            "current-context": context,
            "preferences": {},
        }

    def write_kubeconfig(
        self, path: str | os.PathLike[str], user_token: str, context: str = "fake", namespace: str = "default"
    ) -> str | os.PathLike[str]:
        """Write :meth:`kubeconfig_dict` as YAML (mode 0600: it holds a token) and return ``path``."""
        config = self.kubeconfig_dict(user_token, context=context, namespace=namespace)
        try:
            import yaml

            text = yaml.safe_dump(config, sort_keys=False)
        except ImportError:  # JSON is valid YAML
            text = json.dumps(config, indent=2)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        return path

    # ------------------------------------------------------------------ request handling

    def _count_handshake(self) -> None:
        with self._lock:
            self._handshakes += 1

    def _record(self, method: str, raw_path: str, status: int) -> None:
        """Book-keep one request; called *before* the answer is written so tests never race it."""
        path = urlsplit(raw_path).path
        with self._lock:
            self._requests.append((method, path, status))
            if path == TOKENREVIEW_PATH and status:
                self._review_count += 1
        LOG.debug("%s: %s %s -> %s", self.name, method, path, status or "dropped")

    def _handle(
        self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes, stopped: threading.Event
    ) -> _Reply:
        with self._lock:
            self._in_flight += 1
        try:
            reply = self._route(method, urlsplit(raw_path).path, headers, body, stopped)
        finally:
            with self._lock:
                self._in_flight -= 1
        self._record(method, raw_path, reply.status)
        return reply

    def _route(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes, stopped: threading.Event
    ) -> _Reply:
        fault = self._fault_reply(stopped)
        if fault is not None:
            return fault
        reviewer = self._caller(headers.get("Authorization", ""))
        if reviewer is None:
            return _Reply.status_object(401, "Unauthorized", "Unauthorized")
        if path in (TOKENREVIEW_PATH, SSAR_PATH):
            if method != "POST":
                return _Reply.status_object(
                    405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
                )
            # Like kube-apiserver, a missing Content-Type means JSON (the
            # generated client sends none); anything else non-JSON is refused.
            ctype = headers.get("Content-Type", "").split(";")[0].strip().lower()
            if ctype not in ("", "application/json"):
                return _Reply.status_object(
                    415, "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types include: "
                    "application/json, application/yaml, application/vnd.kubernetes.protobuf",
                )
            if path == TOKENREVIEW_PATH:
                return self._token_review(reviewer, body)
            return self._self_subject_access_review(reviewer, body)
        if method == "DELETE" and _SERVICE_ACCOUNT_PATH.fullmatch(path):
            return self._delete_service_account(reviewer, *_SERVICE_ACCOUNT_PATH.fullmatch(path).groups())
        if method == "GET" and path in (DISCOVERY_PATH, JWKS_PATH):
            return self._discovery(path)
        if method == "GET" and path in ("/version", "/version/"):
            return _Reply.json(200, VERSION_INFO)
        if method == "GET" and path in ("/healthz", "/readyz", "/livez"):
            return _Reply(200, b"ok", "text/plain; charset=utf-8")
        return _Reply.status_object(404, "NotFound", "the server could not find the requested resource", details={})

    def _fault_reply(self, stopped: threading.Event) -> _Reply | None:
        with self._fault_changed:
            if self._fault == "hang":
                released = self._fault_changed.wait_for(
                    lambda: self._fault != "hang" or stopped.is_set(), timeout=self.hang_timeout
                )
                if stopped.is_set():
                    return _DROP
                if not released:
                    return _Reply.status_object(
                        504, "Timeout", "Timeout: request did not complete within requested timeout", details={}
                    )
            mode = self._fault
        if mode is None:
            return None
        if mode == "reset":
            return _DROP
        if mode == "redirect":
            return _Reply.status_object(
                307, "TemporaryRedirect", "moved", headers={"Location": self.redirect_location}
            )
        if mode == "429":
            return _Reply.status_object(
                429, "TooManyRequests", "Too many requests, please try again later.",
                details={"retryAfterSeconds": 1}, headers={"Retry-After": "1"},
            )
        if mode == "503":
            return _Reply.status_object(
                503, "ServiceUnavailable", "The server is currently unable to handle the request"
            )
        return _Reply.status_object(500, "InternalError", "Internal error occurred: injected fault", details={})

    def _delete_service_account(self, caller: _Reviewer, namespace: str, name: str) -> _Reply:
        if not caller.admin:
            return _Reply.status_object(
                403, "Forbidden",
                f'serviceaccounts "{name}" is forbidden: User "{caller.username}" cannot delete resource '
                f'"serviceaccounts" in API group "" in the namespace "{namespace}"',
            )
        with self._lock:
            uid = self._service_accounts.pop((namespace, name), None)
        if uid is None:
            return _Reply.status_object(404, "NotFound", f'serviceaccounts "{name}" not found')
        return _Reply.json(200, {
            "kind": "ServiceAccount", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": namespace, "uid": uid},
        })

    def _discovery(self, path: str) -> _Reply:
        """ServiceAccount issuer discovery, readable by ServiceAccounts as kube-apiserver's default RBAC allows."""
        if self.discovery == "absent":
            return _Reply.status_object(404, "NotFound", "the server could not find the requested resource", details={})
        if self.discovery == "forbidden":
            return _Reply.status_object(
                403, "Forbidden", f'forbidden: User cannot get path "{path}"', details={}
            )
        if path == DISCOVERY_PATH:
            return _Reply.json(200, {
                "issuer": self.issuer,
                "jwks_uri": f"{self.url}{JWKS_PATH}",
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
            })
        with self._lock:
            keys = list(self._trusted_keys.items())
        return _Reply(200, json.dumps({"keys": [_public_jwk(kid, key) for kid, key in keys]}).encode(),
                      "application/jwk-set+json")

    def _caller(self, authorization: str) -> _Reviewer | None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        with self._lock:
            return self._reviewers.get(token.strip())

    @staticmethod
    def _parse_object(body: bytes, api_version: str, kind: str) -> dict[str, Any] | _Reply:
        """Decode a request object, with kube-apiserver's 400 wording when it is not one.

        Like the real decoder, an absent apiVersion/kind defaults to the
        endpoint's (the generated Python client omits them unless set), but a
        different one is refused.
        """
        try:
            obj = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _Reply.status_object(
                400, "BadRequest", f"the object provided is unrecognized (must be of type {kind}): {exc}"
            )
        if not isinstance(obj, dict):
            return _Reply.status_object(
                400, "BadRequest", f"the object provided is unrecognized (must be of type {kind})"
            )
        if obj.get("apiVersion", api_version) != api_version:
            return _Reply.status_object(
                400, "BadRequest",
                f"the API version in the data ({obj.get('apiVersion')}) does not match "
                f"the expected API version ({api_version})",
            )
        if obj.get("kind", kind) != kind:
            return _Reply.status_object(
                400, "BadRequest", f"the object provided is unrecognized (must be of type {kind}): "
                f"kind {obj.get('kind')!r} is not {kind}",
            )
        if not isinstance(obj.get("spec"), dict):
            return _Reply.status_object(400, "BadRequest", f"{kind} spec must be an object")
        return obj

    def _token_review(self, reviewer: _Reviewer, body: bytes) -> _Reply:
        if not reviewer.allowed:
            return _Reply.status_object(
                403, "Forbidden",
                f'tokenreviews.authentication.k8s.io is forbidden: User "{reviewer.username}" cannot create '
                f'resource "tokenreviews" in API group "authentication.k8s.io" at the cluster scope',
                details={"group": "authentication.k8s.io", "kind": "tokenreviews"},
            )
        obj = self._parse_object(body, "authentication.k8s.io/v1", "TokenReview")
        if isinstance(obj, _Reply):
            return obj
        spec = obj["spec"]
        token, audiences = spec.get("token"), spec.get("audiences")
        if not isinstance(token, str) or not token:
            return _Reply.status_object(400, "BadRequest", "token is required for TokenReview in authentication")
        if audiences is not None and not (
            isinstance(audiences, list) and all(isinstance(a, str) for a in audiences)
        ):
            return _Reply.status_object(400, "BadRequest", "spec.audiences must be a list of strings")
        echoed: dict[str, Any] = {"token": token}
        if audiences:
            echoed["audiences"] = audiences
        return _Reply.json(201, {
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": echoed,  # real servers echo the token back; leak tests rely on it
            "status": self.review(token, audiences),
        })

    def review(self, token: str, audiences: list[str] | None = None) -> dict[str, Any]:
        """The TokenReview ``status`` this server would return for ``token`` (no HTTP involved)."""
        status = self._review(token, audiences)
        if self.answer_audiences is not None:
            status = {**status, "audiences": list(self.answer_audiences)}
        return status

    def _review(self, token: str, audiences: list[str] | None) -> dict[str, Any]:
        requested = list(audiences) if audiences else list(self.default_audiences)
        with self._lock:
            static = self._static_users.get(token)
        if static is not None:
            groups = list(static.groups) + ["system:authenticated"]
            return {
                "authenticated": True,
                "user": {"username": static.username, "uid": static.uid, "groups": groups},
                "audiences": requested,
            }
        try:
            user, token_audiences = self._authenticate_jwt(token)
        except _InvalidToken as exc:
            return self._unauthenticated(f"[invalid bearer token, {exc}]")
        granted = [aud for aud in requested if aud in token_audiences]
        if not granted:
            return self._unauthenticated(
                f"[invalid bearer token, token audiences {json.dumps(token_audiences)} "
                f"is invalid for the target audiences {json.dumps(requested)}]"
            )
        return {"authenticated": True, "user": user, "audiences": granted}

    def _unauthenticated(self, error: str) -> dict[str, Any]:
        status: dict[str, Any] = {"user": {}, "error": error}
        if self.emit_authenticated_false:
            status = {"authenticated": False, **status}
        return status

    def _authenticate_jwt(self, token: str) -> tuple[dict[str, Any], list[str]]:
        """Verify a ServiceAccount JWT; return (userInfo, token audiences) or raise _InvalidToken."""
        claims = self._verified_claims(token)
        now = time.time()
        for claim, bad in (
            ("exp", lambda v: now >= v),
            ("nbf", lambda v: v > now + NBF_LEEWAY_SECONDS),
            ("iat", lambda v: v > now + NBF_LEEWAY_SECONDS),
        ):
            if claim in claims:
                value = claims[claim]
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    raise _InvalidToken(f"{claim} claim is not a number")
                if bad(value):
                    raise _InvalidToken(
                        "token is expired (exp)" if claim == "exp" else f"token not valid yet ({claim})"
                    )
        iss = claims.get("iss")
        extra: dict[str, list[str]] = {}
        if iss == LEGACY_ISSUER:
            namespace, name, uid = (claims.get(c) for c in (_LEGACY_NS, _LEGACY_SA_NAME, _LEGACY_SA_UID))
            if not isinstance(claims.get(_LEGACY_SECRET), str):
                raise _InvalidToken("legacy token is missing the secret name claim")
            token_audiences = list(self.default_audiences)  # legacy tokens are valid for the API server
        elif iss == self.issuer:
            ku = claims.get("kubernetes.io")
            if not isinstance(ku, dict) or not isinstance(ku.get("serviceaccount"), dict):
                raise _InvalidToken("token is missing the kubernetes.io claim")
            namespace, name, uid = ku.get("namespace"), ku["serviceaccount"].get("name"), ku["serviceaccount"].get("uid")
            aud = claims.get("aud")
            token_audiences = [aud] if isinstance(aud, str) else aud
            if not isinstance(token_audiences, list) or not all(isinstance(a, str) for a in token_audiences):
                raise _InvalidToken("token has no valid aud claim")
            if isinstance(claims.get("jti"), str):
                extra["authentication.kubernetes.io/credential-id"] = [f"JTI={claims['jti']}"]
        else:
            raise _InvalidToken("token issuer not recognized")
        if not all(isinstance(v, str) and v for v in (namespace, name, uid)):
            raise _InvalidToken("token is missing ServiceAccount claims")
        username = f"system:serviceaccount:{namespace}:{name}"
        if claims.get("sub") != username:
            raise _InvalidToken("sub claim does not match the ServiceAccount")
        current_uid = self.service_account_uid(namespace, name)
        if current_uid is None:
            raise _InvalidToken(f"service account {namespace}/{name} has been deleted")
        if current_uid != uid:
            raise _InvalidToken(f"service account UID ({current_uid}) does not match claim ({uid})")
        user: dict[str, Any] = {
            "username": username,
            "uid": uid,
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"],
        }
        if extra:
            user["extra"] = extra
        return user, token_audiences

    def _verified_claims(self, token: str) -> dict[str, Any]:
        """Compact JWS, RS256 only, signed by one of our trusted keys."""
        parts = token.split(".")
        if len(parts) != 3:
            raise _InvalidToken("compact JWS format must have three parts")
        try:
            header = json.loads(_b64url_decode(parts[0]))
            claims = json.loads(_b64url_decode(parts[1]))
            signature = _b64url_decode(parts[2])
        except (ValueError, UnicodeDecodeError):
            raise _InvalidToken("malformed JWS") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise _InvalidToken("malformed JWS")
        if header.get("alg") != "RS256":
            raise _InvalidToken(f"unexpected signature algorithm {str(header.get('alg'))[:20]!r}")
        if header.get("crit"):
            raise _InvalidToken("unsupported critical header")
        with self._lock:
            keys = list(self._trusted_keys.values())
        signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
        for public in keys:
            try:
                public.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
            except InvalidSignature:
                continue
            return claims
        raise _InvalidToken("error in cryptographic primitive")

    def _self_subject_access_review(self, reviewer: _Reviewer, body: bytes) -> _Reply:
        obj = self._parse_object(body, "authorization.k8s.io/v1", "SelfSubjectAccessReview")
        if isinstance(obj, _Reply):
            return obj
        spec = obj["spec"]
        attrs = spec.get("resourceAttributes") or {}
        allowed = bool(
            reviewer.allowed
            and isinstance(attrs, dict)
            and attrs.get("verb") == "create"
            and attrs.get("group") == "authentication.k8s.io"
            and attrs.get("resource") == "tokenreviews"
        )
        status: dict[str, Any] = {"allowed": allowed}
        if allowed:
            status["reason"] = 'RBAC: allowed by ClusterRoleBinding "system:auth-delegator"'
        return _Reply.json(201, {
            "kind": "SelfSubjectAccessReview",
            "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": status,
        })


# --------------------------------------------------------------------------- standalone


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT, publishing connection details in a JSON state file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--state", required=True, help="where to write {url, ca_data, reviewer_token, sa_token}")
    parser.add_argument("--name", default="standalone")
    parser.add_argument("--token-ttl", type=int, default=3600, help="sa_token lifetime in seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    kube = FakeKubeApiServer(args.port, name=args.name)
    with kube:
        kube.create_service_account("default", "dashboard-user")
        state = {
            "url": kube.url,
            "ca_data": kube.ca_data,
            "reviewer_token": kube.new_reviewer(),
            "sa_token": kube.issue_token("default", "dashboard-user", expires_in=args.token_ttl),
            "issuer": kube.issuer,
            "audiences": kube.default_audiences,
            "pid": os.getpid(),
        }
        # Write-then-rename so a poller never reads a half-written file.
        tmp = f"{args.state}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(state, fh)
        os.replace(tmp, args.state)
        LOG.info("%s: serving on %s (state in %s)", kube.name, kube.url, args.state)
        while not stop.wait(0.5):
            pass
    LOG.info("%s: stopped", kube.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
