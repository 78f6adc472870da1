"""Shared fixtures: the real outside parts the service talks to, started for the test run.

- Secrets Manager is a moto server in its own process, reached over HTTP through
  AWS_ENDPOINT_URL_SECRETS_MANAGER, exactly the production code path.
- Each Kubernetes cluster is a FakeKubeApiServer over TLS (tests/fakes), talked to by the real
  `kubernetes` client with the service's own reviewer credentials.
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Iterator

import pytest

from demo.kube_apiserver import FakeKubeApiServer

pytest_plugins = ["tests.leak_guard"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The Dashboard v2 frontend's "this token is not valid" answer to a login, exactly (docs/design.md, Errors).
UNAUTHORIZED_LOGIN = {
    "jweToken": "",
    "errors": [
        {
            "ErrStatus": {
                "metadata": {},
                "status": "Failure",
                "message": "MSG_LOGIN_UNAUTHORIZED_ERROR",
                "reason": "Unauthorized",
                "code": 401,
            }
        }
    ],
}
AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}
SERVICE_ENV = (
    "TOKEN_TTL", "MAX_SESSION_TTL", "REVIEW_INTERVAL", "KEY_SECRET_ID", "KEY_FILE", "KEY_CACHE_TTL",
    "CLUSTERS_FILE", "CORS_ALLOWED_ORIGINS", "CSRF_ENFORCE", "LOG_LEVEL", "CLUSTER_TIMEOUT", "KUBECONFIG",
)


@contextlib.contextmanager
def run_chalice_local(**settings: str) -> Iterator[str]:
    """`chalice local --stage local` in its own process group, with the test AWS environment and the
    service `settings` on top; yields its URL. Whatever it logged must carry no token or key."""
    port = free_port()
    chalice = os.path.join(os.path.dirname(sys.executable), "chalice")
    process = subprocess.Popen(
        [chalice, "--project-dir", ROOT, "local", "--no-autoreload", "--stage", "local", "--host", "127.0.0.1",
         "--port", str(port)],
        env={**os.environ, **AWS_TEST_ENV, **settings},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, so nothing it starts outlives the test
    )
    try:
        wait_for_port(port, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        _, errors = process.communicate(timeout=20)
        for token_marker in (b"eyJ", b"BEGIN RSA"):
            assert token_marker not in errors, "a token or key reached the service's log"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on port {port} within {timeout} s")


class MotoServer:
    """A moto server process; stop() and start() keep the port, as a Secrets Manager outage would."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None


@pytest.fixture(scope="session")
def moto_server():
    server = MotoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def own_moto():
    """A moto server for one test module alone: its tests may stop and restart it (an outage, a fresh
    empty Secrets Manager) without touching the session's shared one."""
    server = MotoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch, request):
    """No test ever reaches real AWS: fake credentials, a fixed region, and no service settings leaking in."""
    for name, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(name, value)
    for name in SERVICE_ENV + ("AWS_ENDPOINT_URL_SECRETS_MANAGER", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KUBECONFIG", os.path.join(ROOT, "tests", "no-such-kubeconfig"))


@pytest.fixture
def secrets_client(moto_server, monkeypatch):
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", moto_server.url)
    return boto3.client("secretsmanager", endpoint_url=moto_server.url, region_name="us-east-1")


@pytest.fixture
def secret_id() -> str:
    """A secret name no other test uses, so tests share one moto server without seeing each other."""
    return f"dashboard-auth/test/{uuid.uuid4().hex}"


@dataclass
class FakeCluster:
    name: str
    server: FakeKubeApiServer
    reviewer_token: str
    reviewer_file: str

    def login_token(self, namespace: str = "kube-system", name: str = "admin-user", **kwargs) -> str:
        if self.server.service_account_uid(namespace, name) is None:
            self.server.create_service_account(namespace, name)
        return self.server.issue_token(namespace, name, **kwargs)

    def registry_entry(self, **extra) -> dict:
        return {
            "name": self.name,
            "server": self.server.url,
            "certificateAuthorityData": self.server.ca_data,
            "reviewer": {"tokenFile": self.reviewer_file},
            **extra,
        }


def _start_cluster(name: str, tmp_path_factory) -> FakeCluster:
    server = FakeKubeApiServer(name=name).start()
    reviewer = server.new_reviewer()
    token_file = tmp_path_factory.mktemp(name) / "reviewer-token"
    token_file.write_text(reviewer)
    return FakeCluster(name=name, server=server, reviewer_token=reviewer, reviewer_file=str(token_file))


@pytest.fixture(scope="session")
def cluster_a(tmp_path_factory):
    cluster = _start_cluster("prod-eu", tmp_path_factory)
    yield cluster
    cluster.server.stop()


@pytest.fixture(scope="session")
def cluster_b(tmp_path_factory):
    cluster = _start_cluster("staging-us", tmp_path_factory)
    yield cluster
    cluster.server.stop()


@pytest.fixture
def healthy(cluster_a, cluster_b):
    """Every test starts with both clusters up, unfaulted and with fresh counters."""
    for cluster in (cluster_a, cluster_b):
        if not cluster.server.running:
            cluster.server.start()
        cluster.server.set_fault(None)
        cluster.server.reset_counters()
    yield
    for cluster in (cluster_a, cluster_b):
        cluster.server.set_fault(None)
        if not cluster.server.running:
            cluster.server.start()


def write_registry(path, clusters: list[dict], default: str | None = None) -> str:
    document = {"clusters": clusters}
    if default:
        document["defaultCluster"] = default
    path.write_text(json.dumps(document))
    return str(path)


@pytest.fixture
def configure(monkeypatch):
    """Configure the service through its environment, as Lambda would, and get a chalice test Client.

    The service builds its settings, key cache and cluster clients once per container; clearing
    those caches makes each call a fresh cold container.
    """
    from chalice.test import Client

    import app as app_module
    from chalicelib import service, settings

    def reset() -> None:
        settings.current.cache_clear()
        app_module.auth.cache_clear()
        service.secrets_manager.cache_clear()

    def apply(**env) -> Client:
        for name, value in env.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, str(value))
        reset()
        return Client(app_module.app, stage_name="integration-test")  # no such stage: the env above is all it gets

    yield apply
    reset()


class DashboardFrontend:
    """Calls the service the way the Dashboard v2 frontend does: csrftoken first, then the POST."""

    def __init__(self, client, prefix: str = ""):
        self.client = client
        self.prefix = prefix

    def get(self, path: str, headers: dict | None = None):
        return self.client.http.get(self.prefix + path, headers=headers or {})

    def post(self, path: str, body, csrf_action: str | None, headers: dict | None = None):
        sent = {"Content-Type": "application/json", **(headers or {})}
        if csrf_action:
            sent["X-CSRF-TOKEN"] = self.csrf(csrf_action)
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.client.http.post(self.prefix + path, body=raw, headers=sent)

    def csrf(self, action: str) -> str:
        response = self.get(f"/api/v1/csrftoken/{action}")
        assert response.status_code == 200, response.body
        return json.loads(response.body)["token"]

    def login(self, token: str):
        return self.post("/api/v1/login", {"token": token}, "login")

    def refresh(self, jwe_token: str):
        return self.post("/api/v1/token/refresh", {"jweToken": jwe_token}, "token")


def body_json(response) -> dict:
    return json.loads(response.body)


def assert_unavailable(response) -> None:
    """docs/design.md's 503: text/plain with Retry-After, and no token of any kind in the body."""
    assert response.status_code == 503, (response.status_code, response.body)
    assert int(response.headers["Retry-After"]) > 0
    assert response.headers["Content-Type"].startswith("text/plain")
    assert b"jweToken" not in response.body and b"eyJ" not in response.body


def with_kid(jwe_token: str, kid: str) -> str:
    """The same session token with another kid in its protected header (which breaks its GCM tag too)."""
    document = json.loads(jwe_token)
    protected = document["protected"]
    header = json.loads(base64.urlsafe_b64decode(protected + "=" * (-len(protected) % 4)))
    header["kid"] = kid
    document["protected"] = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    return json.dumps(document)


@pytest.fixture
def debug_log():
    """Every record at DEBUG, library loggers included, through the production filter (logs.configure);
    yields the text written, and puts the levels back afterwards."""
    from chalicelib import logs

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    names = ("", "botocore", "boto3", "urllib3", "kubernetes", "chalicelib")
    levels = {name: logging.getLogger(name).level for name in names}
    logs.configure("DEBUG")
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture
def service_log():
    """The service's own handler, as logs.configure installs it in Lambda, at LOG_LEVEL=INFO: yields its stream."""
    from chalicelib import logs

    stream = io.StringIO()
    handler = logs.service_handler(stream, "INFO")
    root = logging.getLogger()
    root.addHandler(handler)
    yield stream
    root.removeHandler(handler)


@pytest.fixture
def service_lines(service_log):
    """The JSON lines the service's own handler has written so far, parsed."""
    return lambda: [json.loads(line) for line in service_log.getvalue().splitlines()]


def login_ok(frontend, token) -> str:
    """Log in and return the session token, asserting the Dashboard's success shape."""
    response = frontend.login(token)
    assert response.status_code == 200, response.body
    body = body_json(response)
    assert body["errors"] == [] and body["jweToken"], body
    return body["jweToken"]
