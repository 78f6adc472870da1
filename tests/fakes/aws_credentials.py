"""Where AWS credentials come from and where they are used, observable from outside the service.

- CredentialsEndpoint: a stand-in for Lambda's container credentials endpoint
  (AWS_CONTAINER_CREDENTIALS_FULL_URI + AWS_CONTAINER_AUTHORIZATION_TOKEN), which cannot run here.
  It answers as the real one does (AccessKeyId, SecretAccessKey, Token, Expiration), refuses a
  request without the authorization token, and hands out a new access key id on every request,
  so a test can tell which fetch a signed request's credentials came from.
- SigningRecorder: an HTTP front for the moto server that records, per request, the operation and
  the access key id its SigV4 Authorization header names, then forwards it unchanged (after
  `before_forward`, if set: a test may hold a request there).

Both are real HTTP servers on loopback; botocore talks to them as it talks to AWS.
"""
from __future__ import annotations

import http.client
import http.server
import json
import re
import threading
import urllib.parse
from datetime import datetime, timedelta, timezone

_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


class _Base:
    def __init__(self, handler_class):
        self._server = _Server(("127.0.0.1", 0), handler_class)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._server.shutdown()
        self._server.server_close()


class _CredentialsHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        owner: CredentialsEndpoint = self.server.owner
        if self.headers.get("Authorization") != owner.authorization_token:
            self.send_response(401)
            self.end_headers()
            return
        with owner._lock:
            owner.requests += 1
            access_key = f"{owner.prefix}{owner.requests:04d}"
            owner.issued.append(access_key)
        expiration = datetime.now(timezone.utc) + owner.lifetime
        body = json.dumps({
            "AccessKeyId": access_key,
            "SecretAccessKey": f"secret-of-{access_key}",
            "Token": f"token-of-{access_key}",
            "Expiration": expiration.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        pass


class CredentialsEndpoint(_Base):
    def __init__(self, prefix: str = "ASIACONTAINER", authorization_token: str = "container-authorization"):
        super().__init__(_CredentialsHandler)
        self.prefix = prefix
        self.authorization_token = authorization_token
        self.requests = 0
        self.issued: list[str] = []
        self.lifetime = timedelta(hours=6)  # of the credentials it hands out

    def env(self) -> dict[str, str]:
        """What Lambda sets for a function to find this endpoint."""
        return {
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": self.url + "/credentials",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN": self.authorization_token,
        }


class _RecordingHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as written, without a delayed-ACK stall

    def do_POST(self) -> None:  # noqa: N802
        owner: SigningRecorder = self.server.owner
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        match = _CREDENTIAL.search(self.headers.get("Authorization") or "")
        operation = (self.headers.get("X-Amz-Target") or "").rpartition(".")[2]
        with owner._lock:
            owner.requests.append((operation, match.group(1) if match else None))
        if owner.before_forward is not None:
            owner.before_forward(operation, json.loads(body or b"{}"))
        upstream = urllib.parse.urlsplit(owner.upstream)
        connection = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=10)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "host")}
            connection.request("POST", self.path, body=body, headers=headers)
            answer = connection.getresponse()
            data = answer.read()
            self.send_response(answer.status)
            for name, value in answer.getheaders():
                if name.lower() not in ("connection", "transfer-encoding", "content-length", "server", "date"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        finally:
            connection.close()

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        pass


class SigningRecorder(_Base):
    def __init__(self, upstream: str):
        super().__init__(_RecordingHandler)
        self.upstream = upstream
        self.requests: list[tuple[str, str | None]] = []  # (operation, access key id it was signed with)
        self.before_forward = None  # optional (operation, request JSON) -> None, in the request's thread
