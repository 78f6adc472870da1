"""A reverse proxy in front of the moto server that fails on demand, the way AWS endpoints fail.

Why this exists: botocore's retries, timeouts and the service's key cache only show their worth
when Secrets Manager misbehaves, and moto never does. The proxy sits between the service (its
AWS_ENDPOINT_URL_SECRETS_MANAGER points here) and an upstream moto server, forwards every request
unchanged, and on demand answers instead of the upstream:

* ``"500"``       HTTP 500 ``{"__type": "InternalServiceError", "message": ...}``, as Secrets Manager sends it;
* ``"throttle"``  HTTP 400 ``{"__type": "ThrottlingException", ...}``, Secrets Manager's rate limit;
* ``"503"``       HTTP 503 ``{"__type": "ServiceUnavailable", ...}``, an overloaded front end;
* ``"latency"``   waits ``delay`` seconds, then forwards (set it above botocore's read timeout to time out);
* ``"drop"``      closes the connection without an answer (TCP RST), as a dying load balancer does;
* ``"stale"``     answers a read (``GetSecretValue``, ``ListSecretVersionIds``, ``DescribeSecret``) with
  what the upstream answered to the same read (same operation, ``SecretId``, ``VersionId`` and
  ``VersionStage``) when the proxy last forwarded it, as an error or not; with no earlier answer it
  forwards. This is a stand-in for Secrets Manager's eventual consistency, which moto cannot show
  (every moto read sees every write at once): a read served by a replica that has not caught up
  with a write answers as things stood before it.

An injection applies to the next ``times`` matching requests (``None``: until ``clear()``), optionally
only to one operation (the ``X-Amz-Target`` suffix, e.g. ``"GetSecretValue"``) and one
``VersionStage`` (e.g. ``"AWSCURRENT"``). Every request is
counted per operation, whether it was failed here or forwarded, so a test can say exactly how
many calls the service made, including to an endpoint that is down. When the upstream itself is
unreachable (the moto server stopped) the proxy drops the client's connection, as a dead endpoint
would, and logs the outcome ``"upstream-down"``.

``stop()`` and ``start()`` keep the port, so stopping the proxy is a "connection refused" outage.
Loopback only; every wait is bounded.
"""
from __future__ import annotations

import http.client
import http.server
import json
import socket
import struct
import threading
import uuid
from collections import Counter
from dataclasses import dataclass
from urllib.parse import urlsplit

FAULT_KINDS = frozenset({"500", "throttle", "503", "latency", "drop", "stale"})
READ_OPERATIONS = frozenset({"GetSecretValue", "ListSecretVersionIds", "DescribeSecret"})
UPSTREAM_TIMEOUT_SECONDS = 10.0
IDLE_TIMEOUT_SECONDS = 30.0
MAX_BODY_BYTES = 1024 * 1024
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
_JSON_1_1 = "application/x-amz-json-1.1"


@dataclass
class _Injection:
    kind: str
    remaining: int | None  # None: until cleared
    operation: str | None
    delay: float
    stage: str | None = None


@dataclass(frozen=True)
class Entry:
    """One request the proxy saw: its operation, the VersionStage it asked for, and what happened."""

    operation: str
    version_stage: str | None
    outcome: str  # "forwarded", "upstream-down", or the fault kind ("latency": delayed, then forwarded)
    secret_id: str | None = None


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_SECONDS
    server: "_ProxyServer"

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        proxy = self.server.proxy
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 <= length <= MAX_BODY_BYTES:
            self._drop()
            return
        body = self.rfile.read(length)
        operation = (self.headers.get("X-Amz-Target") or "").rpartition(".")[2] or "unknown"
        read = _read_of(operation, body)
        stage, secret_id = read[3], read[1]
        injection = proxy._take(operation, stage)
        kind = injection.kind if injection else None
        if kind == "stale":
            earlier = proxy._earlier_answer(read)
            if earlier is not None:
                proxy._record(operation, stage, "stale", secret_id)
                self._answer(*earlier)
                return
            kind = None  # nothing older to serve: the read sees the upstream as it is
        if kind == "latency":
            # counted on arrival: the client may give up meanwhile
            proxy._record(operation, stage, "latency", secret_id)
            if self.server.stopped.wait(injection.delay):
                self._drop()
                return
        if kind in ("500", "throttle", "503", "drop"):
            proxy._record(operation, stage, kind, secret_id)
            if kind == "drop":
                self._drop()
            else:
                self._fault(kind)
            return
        try:
            status, headers, answer = proxy._forward(self.command, self.path, self.headers, body)
        except OSError:
            if kind != "latency":
                proxy._record(operation, stage, "upstream-down", secret_id)
            self._drop()
            return
        if kind != "latency":
            proxy._record(operation, stage, "forwarded", secret_id)
        if operation in READ_OPERATIONS:
            proxy._remember(read, (status, headers, answer))
        self._answer(status, headers, answer)

    def _answer(self, status: int, headers, answer: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_PUT = do_DELETE = do_POST

    def _fault(self, kind: str) -> None:
        status, error_type, message = {
            "500": (500, "InternalServiceError", "An error occurred on the server side (injected)."),
            "throttle": (400, "ThrottlingException", "Rate exceeded (injected)."),
            "503": (503, "ServiceUnavailable", "Service is unavailable (injected)."),
        }[kind]
        body = json.dumps({"__type": error_type, "message": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", _JSON_1_1)
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.send_header("x-amzn-ErrorType", error_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _drop(self) -> None:
        """No answer at all: reset the connection."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.server.mark_aborted(self.connection)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        """Silenced: the proxy's own log is `entries`."""


def _read_of(operation: str, body: bytes) -> tuple[str, str | None, str | None, str | None]:
    """(operation, SecretId, VersionId, VersionStage) of a request: what makes two reads the same read."""
    try:
        document = json.loads(body or b"{}")
    except ValueError:
        document = None
    if not isinstance(document, dict):
        document = {}

    def text(name: str) -> str | None:
        value = document.get(name)
        return value if isinstance(value, str) else None

    return operation, text("SecretId"), text("VersionId"), text("VersionStage")


class _ProxyServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address, proxy: "FaultyProxy"):
        self.proxy = proxy
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._aborted: set[socket.socket] = set()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup we do not need.
        import socketserver

        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def get_request(self):
        sock, address = self.socket.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._connections.add(sock)
        return sock, address

    def mark_aborted(self, sock: socket.socket) -> None:
        with self._lock:
            self._aborted.add(sock)

    def shutdown_request(self, request) -> None:
        with self._lock:
            self._connections.discard(request)
            aborted = request in self._aborted
            self._aborted.discard(request)
        if aborted:
            self.close_request(request)  # SO_LINGER 0: the close sends a RST
        else:
            super().shutdown_request(request)

    def close_all_connections(self) -> None:
        with self._lock:
            connections = list(self._connections)
        for sock in connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request, client_address) -> None:
        """Clients that vanish mid-request are normal here; nothing to print."""


class FaultyProxy:
    """A threaded HTTP reverse proxy on 127.0.0.1 in front of `upstream` (e.g. the moto server's URL)."""

    def __init__(self, upstream: str):
        parts = urlsplit(upstream)
        if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost"):
            raise ValueError("the proxy forwards to a loopback http:// upstream only")
        self._upstream = (parts.hostname, parts.port or 80)
        self._lock = threading.Lock()
        self._injections: list[_Injection] = []
        self._entries: list[Entry] = []
        self._answers: dict[tuple, tuple] = {}  # the last upstream answer to each read, for "stale"
        self._port = 0
        self._server: _ProxyServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "FaultyProxy":
        if self._server is not None:
            return self
        server = _ProxyServer(("127.0.0.1", self._port), self)
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="faulty-proxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection: clients now get "connection refused"."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.stopped.set()
        server.shutdown()
        server.server_close()
        server.close_all_connections()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> "FaultyProxy":
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the port is chosen on the first start()")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ faults

    def inject(
        self,
        kind: str,
        times: int | None = None,
        operation: str | None = None,
        delay: float = 0.0,
        stage: str | None = None,
    ) -> None:
        """Fail the next `times` requests (None: every request until clear()), optionally of one
        operation and one VersionStage.

        Injections queue up: the oldest one still matching a request applies to it.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; expected one of {sorted(FAULT_KINDS)}")
        if kind == "stale" and operation not in READ_OPERATIONS:
            raise ValueError(f"stale answers are for one read operation: {sorted(READ_OPERATIONS)}")
        if times is not None and times < 1:
            raise ValueError("times must be a positive count or None")
        if kind == "latency" and not 0 < delay <= 60:
            raise ValueError("latency needs 0 < delay <= 60 seconds")
        with self._lock:
            self._injections.append(_Injection(kind, times, operation, delay, stage))

    def clear(self) -> None:
        with self._lock:
            self._injections.clear()

    def reset_counts(self) -> None:
        with self._lock:
            self._entries.clear()

    # ------------------------------------------------------------------ counters

    @property
    def entries(self) -> list[Entry]:
        """Every request seen since the last reset_counts(), in arrival order."""
        with self._lock:
            return list(self._entries)

    @property
    def counts(self) -> Counter:
        """Requests seen per operation (X-Amz-Target suffix), failed here or forwarded."""
        with self._lock:
            return Counter(entry.operation for entry in self._entries)

    @property
    def forwarded(self) -> Counter:
        """Requests per operation that reached the upstream and got its answer."""
        with self._lock:
            return Counter(e.operation for e in self._entries if e.outcome in ("forwarded", "latency"))

    # ------------------------------------------------------------------ internals

    def _take(self, operation: str, stage: str | None) -> _Injection | None:
        with self._lock:
            for injection in self._injections:
                if injection.operation in (None, operation) and injection.stage in (None, stage):
                    if injection.remaining is not None:
                        injection.remaining -= 1
                        if injection.remaining == 0:
                            self._injections.remove(injection)
                    return injection
        return None

    def _record(self, operation: str, stage: str | None, outcome: str, secret_id: str | None = None) -> None:
        with self._lock:
            self._entries.append(Entry(operation, stage, outcome, secret_id))

    def _remember(self, read: tuple, answer: tuple) -> None:
        with self._lock:
            self._answers[read] = answer

    def _earlier_answer(self, read: tuple) -> tuple | None:
        with self._lock:
            return self._answers.get(read)

    def _forward(self, method: str, path: str, headers, body: bytes):
        connection = http.client.HTTPConnection(*self._upstream, timeout=UPSTREAM_TIMEOUT_SECONDS)
        try:
            forwarded = {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}
            connection.request(method, path, body=body, headers=forwarded)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        except http.client.HTTPException as error:
            raise OSError(str(error)) from None
        finally:
            connection.close()
