"""The service's RSA key: where it is kept, how it is created once, and how long a copy is trusted.

Secrets Manager holds the key in the Dashboard's own format (see DESIGN.md), so one key can
serve this service and an in-cluster Dashboard v2. Every version of the secret is a key; its
VersionId is the `kid` stamped on the tokens it seals. AWSCURRENT seals, AWSCURRENT and
AWSPREVIOUS open, so a rotation logs nobody out.

Bootstrap is race-free without locks: a container that finds no usable key writes one under a
ClientRequestToken derived from what it found, so every container that found the same thing
writes the same version id, Secrets Manager keeps the first and refuses the rest, and the
losers read the winner's key. Nothing ever overwrites a usable key.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Protocol

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

logger = logging.getLogger(__name__)

KEY_BITS = 2048  # the Dashboard's size; tokens stay small enough for a header
_PUBLIC_LABEL = "RSA PUBLIC KEY"  # the Dashboard's label for a PKIX key; kept for compatibility
_PROBE_PADDING = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
_BOOTSTRAP_NAMESPACE = uuid.UUID("6f1d8a52-3c0e-4b5e-9a51-4d1f3e0b7c21")
UNKNOWN_KID_REFETCH_INTERVAL = 5.0
RETRY_AFTER_FAILURE = 10.0


class UnusableKey(ValueError):
    """A stored value that is not a key we can use (empty, not JSON, wrong PEM, mismatched pair)."""


class KeyStoreUnavailable(RuntimeError):
    """The key cannot be read or created right now; the message is for the log, not the client."""


class KeyRefetchDeferred(KeyStoreUnavailable):
    """An unknown kid arrived while the container may not ask the store again yet."""


class KeyNotConfigured(KeyStoreUnavailable):
    """No key store is configured at all; the message says which setting to give."""


@dataclass(frozen=True)
class SessionKey:
    kid: str
    private: rsa.RSAPrivateKey
    public: rsa.RSAPublicKey
    csrf_secret: str

    def fingerprint(self) -> str:
        """SHA-256 of the public key (SPKI DER), hex: names a key without revealing it."""
        der = self.public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class KeySet:
    current: SessionKey
    previous: SessionKey | None = None
    retired: frozenset[str] = frozenset()  # kids that were ours once: their tokens expired, not forged

    def all(self) -> list[SessionKey]:
        return [self.current] + ([self.previous] if self.previous else [])

    def by_kid(self, kid: str) -> SessionKey | None:
        return next((key for key in self.all() if key.kid == kid), None)


class KeyStore(Protocol):
    def fetch(self, with_retired: bool = False) -> KeySet: ...


def new_secret_value() -> str:
    """A fresh key in the secret format of DESIGN.md."""
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    priv = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    spki = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    body = base64.encodebytes(spki).decode()
    pub = f"-----BEGIN {_PUBLIC_LABEL}-----\n{body}-----END {_PUBLIC_LABEL}-----\n"
    csrf = base64.b64encode(secrets.token_bytes(256)).decode()
    return json.dumps({"priv": priv, "pub": pub, "csrf": csrf})


def _load_public_pem(pem: str):
    lines = [line.strip() for line in pem.strip().splitlines()]
    if len(lines) < 3 or not lines[0].startswith("-----BEGIN ") or not lines[-1].startswith("-----END "):
        raise UnusableKey("pub is not a PEM block")
    return serialization.load_der_public_key(base64.b64decode("".join(lines[1:-1])))


def parse_secret_value(kid: str, text: str | None) -> SessionKey:
    """A stored value as a usable key, or UnusableKey saying why (never quoting the value)."""
    try:
        fields = json.loads(text or "")
    except ValueError:
        raise UnusableKey("the value is not JSON") from None
    if not isinstance(fields, dict) or not all(isinstance(fields.get(k), str) for k in ("priv", "pub")):
        raise UnusableKey("the value lacks priv/pub strings")
    try:
        # OpenSSL's full RSA check costs tens of ms per key per cold start; the pair check and the
        # round trip below prove what matters here: this pair seals and opens.
        private_key = serialization.load_pem_private_key(
            fields["priv"].encode(), password=None, unsafe_skip_rsa_key_validation=True
        )
        public_key = _load_public_pem(fields["pub"])
    except (ValueError, TypeError) as error:
        raise UnusableKey(f"the PEM does not load ({type(error).__name__})") from None
    if not isinstance(private_key, rsa.RSAPrivateKey) or private_key.key_size < KEY_BITS:
        raise UnusableKey(f"priv is not an RSA key of at least {KEY_BITS} bits")
    if not isinstance(public_key, rsa.RSAPublicKey) or (
        public_key.public_numbers() != private_key.public_key().public_numbers()
    ):
        raise UnusableKey("pub does not match priv")
    probe = secrets.token_bytes(32)
    try:
        opened = private_key.decrypt(public_key.encrypt(probe, _PROBE_PADDING), _PROBE_PADDING)
    except ValueError:
        opened = None
    if opened != probe:
        raise UnusableKey("priv does not open what pub seals")
    # A key written by the Dashboard has no csrf member; derive one so CSRF still works.
    csrf = fields.get("csrf")
    if not isinstance(csrf, str) or len(csrf) < 32:
        csrf = base64.b64encode(hmac.new(fields["priv"].encode(), b"csrf", hashlib.sha256).digest()).decode()
    return SessionKey(kid=kid, private=private_key, public=private_key.public_key(), csrf_secret=csrf)


class SecretsManagerKeyStore:
    """Reads (and, the first time, creates) the key in a Secrets Manager secret."""

    def __init__(self, secret_id: str, client_factory: Callable[[], object]):
        self._secret_id = secret_id
        self._client_factory = client_factory

    def fetch(self, with_retired: bool = False) -> KeySet:
        """Current and previous keys; with_retired also lists the versions rotated out (one more call)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self._fetch_or_bootstrap(with_retired)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "unknown")
            raise KeyStoreUnavailable(f"Secrets Manager refused {self._secret_id!r}: {code}") from None
        except BotoCoreError as error:
            raise KeyStoreUnavailable(f"Secrets Manager unreachable: {type(error).__name__}") from None

    def _fetch_or_bootstrap(self, with_retired: bool) -> KeySet:
        for _ in range(4):
            version_id, text = self._read("AWSCURRENT")
            if version_id is None:
                self._write_first_key()
                continue
            try:
                current = parse_secret_value(version_id, text)
            except UnusableKey as why:
                logger.warning("key secret version %s is unusable (%s); replacing it", version_id, why)
                self._write_key(replacing=version_id)
                continue
            previous = self._read_previous()
            retired = self._retired_versions(current, previous) if with_retired else frozenset()
            return KeySet(current=current, previous=previous, retired=retired)
        raise KeyStoreUnavailable("no usable key settled in the secret after several attempts")

    def _retired_versions(self, current: SessionKey, previous: SessionKey | None) -> frozenset[str]:
        client = self._client_factory()
        in_use = {current.kid} | ({previous.kid} if previous else set())
        retired: set[str] = set()
        request = {"SecretId": self._secret_id, "IncludeDeprecated": True, "MaxResults": 100}
        while True:
            page = client.list_secret_version_ids(**request)
            for version in page["Versions"]:
                if "AWSPENDING" not in version.get("VersionStages", []):
                    retired.add(version["VersionId"])
            if not page.get("NextToken"):
                return frozenset(retired - in_use)
            request["NextToken"] = page["NextToken"]

    def _read(self, stage: str) -> tuple[str | None, str | None]:
        client = self._client_factory()
        try:
            answer = client.get_secret_value(SecretId=self._secret_id, VersionStage=stage)
        except client.exceptions.ResourceNotFoundException:
            return None, None
        return answer["VersionId"], answer.get("SecretString")

    def _read_previous(self) -> SessionKey | None:
        version_id, text = self._read("AWSPREVIOUS")
        if version_id is None:
            return None
        try:
            return parse_secret_value(version_id, text)
        except UnusableKey as why:
            logger.warning("previous key version %s is unusable (%s); ignoring it", version_id, why)
            return None

    def _token(self, replacing: str) -> str:
        return str(uuid.uuid5(_BOOTSTRAP_NAMESPACE, f"{self._secret_id}\n{replacing}"))

    def _write_first_key(self) -> None:
        client = self._client_factory()
        try:
            client.create_secret(
                Name=self._secret_id,
                SecretString=new_secret_value(),
                ClientRequestToken=self._token("created"),
                Description="Session-token key for the Kubernetes Dashboard login service",
            )
            logger.info("created the key secret %s", self._secret_id)
        except client.exceptions.ResourceExistsException:
            # Another container created it first (then we read its key next), or the secret
            # exists with no current value at all, which every container fills the same way.
            if self._read("AWSCURRENT")[0] is None:
                self._write_key(replacing="no-current-version")

    def _write_key(self, replacing: str) -> None:
        client = self._client_factory()
        try:
            client.put_secret_value(
                SecretId=self._secret_id,
                SecretString=new_secret_value(),
                ClientRequestToken=self._token(replacing),
            )
            logger.info("wrote a new key version to %s", self._secret_id)
        except client.exceptions.ResourceExistsException:
            pass  # another container wrote this version first: we read theirs next


class FileKeyStore:
    """A key in a local file, for the `local` stage: created on first start, never overwritten."""

    def __init__(self, path: str):
        self._path = path

    def fetch(self, with_retired: bool = False) -> KeySet:
        try:
            with open(self._path, encoding="utf-8") as handle:
                text = handle.read()
        except FileNotFoundError:
            text = self._create()
        except OSError as error:
            raise KeyStoreUnavailable(f"cannot read KEY_FILE {self._path}: {error.strerror}") from None
        try:
            provisional = parse_secret_value("file", text)
        except UnusableKey as why:
            raise KeyStoreUnavailable(f"KEY_FILE {self._path} holds no usable key: {why}") from None
        kid = "file-" + provisional.fingerprint()[:16]
        return KeySet(current=SessionKey(kid, provisional.private, provisional.public, provisional.csrf_secret))

    def _create(self) -> str:
        text = new_secret_value()
        os.makedirs(os.path.dirname(os.path.abspath(self._path)), exist_ok=True)
        try:
            descriptor = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            with open(self._path, encoding="utf-8") as handle:
                return handle.read()
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        logger.info("created a new key file %s", self._path)
        return text


class KeyCache:
    """How long a container trusts the key set it fetched; kept apart from the store that fetches.

    - Within `ttl` the cached set is used as it is.
    - Past `ttl` it is fetched again; if the store is unreachable, a warm container keeps serving
      its cached keys for up to `grace` more seconds, trying the store again at most every
      RETRY_AFTER_FAILURE seconds so that requests do not each wait for a dead endpoint.
    - A kid we do not know may be a rotation we have not seen yet, so it triggers a refetch, but
      at most one per UNKNOWN_KID_REFETCH_INTERVAL: made-up kids cannot drive Secrets Manager calls.
      Inside that interval an unknown kid is deferred (503, retry), never declared a forgery.
    """

    def __init__(
        self, store: KeyStore, ttl: float, grace: float = 0.0, clock: Callable[[], float] = time.monotonic
    ):
        self._store = store
        self._ttl = ttl
        self._grace = grace
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: KeySet | None = None
        self._fetched_at = 0.0
        self._retry_at = 0.0
        self._unknown_kid_fetch_at = float("-inf")

    def keys(self) -> KeySet:
        with self._lock:
            now = self._clock()
            age = now - self._fetched_at
            if self._keys is not None and age < self._ttl:
                return self._keys
            stale_usable = self._keys is not None and age < self._ttl + self._grace
            if stale_usable and now < self._retry_at:
                return self._keys
            try:
                self._refetch()
            except KeyStoreUnavailable as error:
                if not stale_usable:
                    raise
                self._retry_at = now + RETRY_AFTER_FAILURE
                logger.warning("serving cached keys (%.0f s old) while the key store is unavailable: %s", age, error)
            return self._keys

    def candidates(self, kid: str | None) -> list[SessionKey]:
        """The keys that may have sealed a token with this kid (no kid: a Dashboard-minted token)."""
        keys = self.keys()
        if kid is None:
            return keys.all()
        key = keys.by_kid(kid)
        if key is not None:
            return [key]
        with self._lock:
            key = self._keys.by_kid(kid)  # another request may have refetched meanwhile
            if key is None:
                now = self._clock()
                if now - self._unknown_kid_fetch_at < UNKNOWN_KID_REFETCH_INTERVAL:
                    # Maybe a rotation we have not seen, maybe a forgery: "try again shortly" logs
                    # nobody out, and costs Secrets Manager nothing.
                    raise KeyRefetchDeferred(f"unknown kid; the key set was refetched under {UNKNOWN_KID_REFETCH_INTERVAL:.0f} s ago")
                self._unknown_kid_fetch_at = now
                self._refetch(with_retired=True)  # so that a rotated-out kid can be told from a forged one
                key = self._keys.by_kid(kid)
        return [key] if key is not None else []

    def is_retired(self, kid: str | None) -> bool:
        """Whether the set that `candidates` last fetched lists this kid as rotated out (no refetch)."""
        with self._lock:
            return kid is not None and self._keys is not None and kid in self._keys.retired

    def _refetch(self, with_retired: bool = False) -> None:
        started = self._clock()  # the age counts from before the read, so ttl bounds staleness strictly
        self._keys = self._store.fetch(with_retired=with_retired)
        self._fetched_at = started
