"""Shared helpers for the adversarial suite: a warm service, the real key, JWE builders, counters.

The service is driven through chalice.test.Client against the same real parts as the integration
tests (a moto Secrets Manager server over HTTP, TLS fake API servers). Most tests share one warm
"container" (the app's per-container caches are kept between tests, as Lambda keeps them between
invocations); tests about cold starts or the unknown-kid window use `configure` for a cold one.
"""
from __future__ import annotations

import json
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwcrypto import jwa, jwe, jwk

from chalicelib import dashboard, keys, sessions
from tests.conftest import AWS_TEST_ENV, write_registry

ALLOWED_ORIGIN = "https://dashboard.example.com"
UNAUTHORIZED_BODY = b"MSG_LOGIN_UNAUTHORIZED_ERROR\n"
CSRF_FAILED_BODY = b"CSRF validation failed\n"
NOT_FOUND_BODY = b"No such cluster; GET /api/v1/clusters lists the clusters served here.\n"

# Tables printed at the end of the run (also without -s), as tests/load does.
REPORTS: list[str] = []


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not REPORTS:
        return
    terminalreporter.section("adversarial report")
    for report in REPORTS:
        for line in report.splitlines():
            terminalreporter.write_line(line)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def jwcrypto_token(
    plaintext: bytes,
    key: jwk.JWK | rsa.RSAPublicKey,
    protected: dict | None,
    aad: bytes | None,
    unprotected: dict | None = None,
    header: dict | None = None,
    compact: bool = False,
) -> str:
    """A token made by a real JOSE library (jwcrypto), any algorithms allowed."""
    if not isinstance(key, jwk.JWK):
        key = jwk.JWK.from_pyca(key)  # the service's key is a `cryptography` object
    algs = [n for n in jwa.JWA.algorithms_registry if jwa.JWA.algorithms_registry[n].algorithm_use in ("kex", "enc")]
    token = jwe.JWE(
        plaintext,
        protected=json.dumps(protected) if protected is not None else None,
        unprotected=json.dumps(unprotected) if unprotected else None,
        aad=aad,
        algs=algs,
    )
    token.add_recipient(key, header=json.dumps(header) if header else None)
    return token.serialize(compact=compact)


def lenient_open(text: str, private: jwk.JWK | rsa.RSAPrivateKey) -> bytes:
    """What a JOSE library that trusts the token's headers would decrypt (any algorithm, any placement)."""
    if not isinstance(private, jwk.JWK):
        private = jwk.JWK.from_pyca(private)  # the service's key is a `cryptography` object
    algs = [n for n in jwa.JWA.algorithms_registry if jwa.JWA.algorithms_registry[n].algorithm_use in ("kex", "enc")]
    token = jwe.JWE(algs=algs)
    token.deserialize(text, private)
    return token.payload


# ---------------------------------------------------------------- the world: key, registry, ServiceAccount tokens

@dataclass
class World:
    secret_id: str
    key: keys.SessionKey
    registry: str
    cluster_a: object
    cluster_b: object
    sa_a: str  # a ServiceAccount JWT cluster_a accepts
    sa_b: str  # one cluster_b accepts

    @property
    def kid(self) -> str:
        return self.key.kid


@pytest.fixture(scope="session")
def adversary_world(moto_server, cluster_a, cluster_b, tmp_path_factory) -> World:
    """One key secret in moto (the format of docs/design.md), read back and parsed as the service parses it."""
    import boto3

    client = boto3.client(
        "secretsmanager",
        endpoint_url=moto_server.url,
        region_name=AWS_TEST_ENV["AWS_REGION"],
        aws_access_key_id=AWS_TEST_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_TEST_ENV["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=AWS_TEST_ENV["AWS_SESSION_TOKEN"],
    )
    secret_id = f"dashboard-auth/adversarial/{uuid.uuid4().hex}"
    client.create_secret(Name=secret_id, SecretString=keys.new_secret_value())
    stored = client.get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")
    key = keys.parse_secret_value(stored["VersionId"], stored["SecretString"])
    registry = write_registry(
        tmp_path_factory.mktemp("adversarial") / "clusters.json",
        [cluster_a.registry_entry(), cluster_b.registry_entry()],
        default=cluster_a.name,
    )
    return World(
        secret_id=secret_id,
        key=key,
        registry=registry,
        cluster_a=cluster_a,
        cluster_b=cluster_b,
        sa_a=cluster_a.login_token(expires_in=7200),
        sa_b=cluster_b.login_token(expires_in=7200),
    )


@pytest.fixture(scope="session")
def attacker_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


# ---------------------------------------------------------------- one warm container shared by the suite

_WARM: dict = {}


def _reset_app_caches() -> None:
    import app as app_module
    from chalicelib import service, settings

    settings.current.cache_clear()
    app_module.auth.cache_clear()
    service.secrets_manager.cache_clear()


@pytest.fixture(scope="package", autouse=True)
def _cold_after_the_package():
    yield
    _reset_app_caches()
    _WARM.clear()


class Harness:
    """A Dashboard-like caller of the warm service, with the real key at hand."""

    def __init__(self, client, world: World):
        self.client = client
        self.world = world
        self._csrf: dict[str, str] = {}

    @property
    def key(self) -> keys.SessionKey:
        return self.world.key

    def csrf(self, action: str) -> str:
        if action not in self._csrf:
            response = self.client.http.get(f"/api/v1/csrftoken/{action}")
            assert response.status_code == 200, response.body
            self._csrf[action] = json.loads(response.body)["token"]
        return self._csrf[action]

    def post(self, path: str, body: bytes, csrf_action: str | None = None, headers: dict | None = None):
        sent = {"Content-Type": "application/json"}
        if csrf_action:
            sent["X-CSRF-TOKEN"] = self.csrf(csrf_action)
        sent.update(headers or {})
        return self.client.http.post(path, body=body, headers=sent)

    def refresh(self, jwe_token: str, prefix: str = ""):
        return self.post(prefix + "/api/v1/token/refresh", json.dumps({"jweToken": jwe_token}).encode(), "token")

    def genuine(self, cluster: str | None = "prod-eu", kid: str | None = "", sa: str | None = None, **claims) -> str:
        """A session token exactly as a login through the service would mint it now."""
        now = utc_now()
        values = dict(issued_at=now, expires_at=now + timedelta(seconds=900), cluster=cluster, auth_time=now,
                      reviewed_at=now)
        values.update(claims)
        sa = sa or (self.world.sa_b if cluster == self.world.cluster_b.name else self.world.sa_a)
        return sessions.mint(sa, sessions.Claims(**values), self.key.public, self.key.kid if kid == "" else kid)

    def reviews(self) -> tuple[int, int]:
        return self.world.cluster_a.server.review_count, self.world.cluster_b.server.review_count


@pytest.fixture
def service(adversary_world, monkeypatch, secrets_client, healthy) -> Harness:
    """The service as one warm container: settings and caches survive between tests (rebuilt if anyone reset them)."""
    from chalice.test import Client

    import app as app_module
    from chalicelib import settings

    env = {
        "KEY_SECRET_ID": adversary_world.secret_id,
        "CLUSTERS_FILE": adversary_world.registry,
        "REVIEW_INTERVAL": "3600",  # genuine sessions need no TokenReview: any review seen is the attack's
        "CORS_ALLOWED_ORIGINS": ALLOWED_ORIGIN,
        "KEY_CACHE_TTL": "3600",  # no scheduled refetch in the middle of a count
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    warm = (
        _WARM.get("env") == env
        and settings.current.cache_info().currsize == 1
        and app_module.auth.cache_info().currsize == 1
        and settings.current() is _WARM.get("settings")
        and app_module.auth() is _WARM.get("service")
    )
    if not warm:
        _reset_app_caches()
        _WARM.update(env=env, settings=settings.current(), service=app_module.auth())
    return Harness(Client(app_module.app, stage_name="integration-test"), adversary_world)


# ---------------------------------------------------------------- counting the expensive and the forbidden

class CryptoCounter:
    """Counts what a request costs in private-key cryptography.

    - decrypt: calls of chalicelib.sessions.decrypt (the service's only way to open a token);
    - unwraps: jwcrypto key-management unwraps of any algorithm (RSA, AES-KW, ECDH-ES, PBES2, dir).
      The service opens a token with exactly one, RSA-OAEP-256 (jwcrypto's algorithm object, after
      the strict parse), so a valid refresh counts 1 and no hostile request may cost more; `unwrapped`
      records which algorithm each unwrap was, and any name but RSA-OAEP-256 is the algorithm zoo the
      strict envelope keeps out;
    - rsa: RSA private-key decryptions actually performed by `cryptography` with the private key a
      jwcrypto JWK hands out for an unwrap or decrypt (JWK.get_op_key is the one door: a
      `cryptography` key object cannot be patched, so what comes out of it is a counting proxy).
      A runtime that decrypted with a raw `cryptography` key behind jwcrypto's back would count 0
      for a valid refresh, and the tests' baseline (at least one) would fail.
    """

    def __init__(self):
        self.decrypt = 0
        self.unwraps = 0
        self.rsa = 0
        self.unwrapped: list[str] = []  # the algorithm of every unwrap, in order

    def snapshot(self) -> tuple[int, int, int]:
        return self.decrypt, self.unwraps, self.rsa


class _CountingRsaKey:
    def __init__(self, inner, counter: CryptoCounter):
        self._inner = inner
        self._counter = counter

    def decrypt(self, *args, **kwargs):
        self._counter.rsa += 1
        return self._inner.decrypt(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


@pytest.fixture
def crypto(monkeypatch) -> CryptoCounter:
    counter = CryptoCounter()

    real_decrypt = sessions.decrypt

    def decrypt(envelope, private_key, *args, **kwargs):
        counter.decrypt += 1
        return real_decrypt(envelope, private_key, *args, **kwargs)

    monkeypatch.setattr(sessions, "decrypt", decrypt)

    real_get_op_key = jwk.JWK.get_op_key

    def get_op_key(self, operation=None, arg=None):
        key = real_get_op_key(self, operation, arg)
        if operation in ("unwrapKey", "decrypt") and isinstance(key, rsa.RSAPrivateKey):
            return _CountingRsaKey(key, counter)
        return key

    monkeypatch.setattr(jwk.JWK, "get_op_key", get_op_key)

    # _Rsa15.unwrap and _RsaOaep256.unwrap go through _RSA.unwrap, so each is counted once.
    for cls in (jwa._RSA, jwa._AesKw, jwa._AesGcmKw, jwa._Pbes2HsAesKw, jwa._Direct, jwa._EcdhEs):
        real_unwrap = cls.__dict__["unwrap"]

        def unwrap(self, *args, _real=real_unwrap, **kwargs):
            counter.unwraps += 1
            counter.unwrapped.append(self.name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(cls, "unwrap", unwrap)
    return counter


class Listener:
    """A loopback TCP listener that counts every connection made to it (accepted, then closed at once)."""

    def __init__(self):
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.05)
        self.port = self._sock.getsockname()[1]
        self._peers: list[int] = []  # client ports, in accept order
        self._sentinels: set[int] = set()
        self._lock = threading.Lock()
        self._accepted = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, peer = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            with self._accepted:
                self._peers.append(peer[1])
                self._accepted.notify_all()
            conn.close()

    def connections(self) -> int:
        """Connections made so far by anyone but us. Deterministic: the accept queue is FIFO, so once our own
        sentinel connection has been accepted, every connection made before it has been counted."""
        with socket.create_connection(("127.0.0.1", self.port)) as sentinel:
            port = sentinel.getsockname()[1]
            with self._accepted:
                self._sentinels.add(port)
                assert self._accepted.wait_for(lambda: port in self._peers, timeout=10), "listener stuck"
                return len([p for p in self._peers if p not in self._sentinels])

    def close(self):
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()


@pytest.fixture(scope="session")
def listener():
    server = Listener()
    yield server
    server.close()


def assert_no_trace(response) -> None:
    assert response.status_code != 500, response.body
    assert b"Traceback" not in response.body and b'File "' not in response.body


def csrf_key_token(key: keys.SessionKey, action: str, now_ms: int | None = None) -> str:
    return dashboard.csrf_token(key.csrf_secret, action, now_ms)
