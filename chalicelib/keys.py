"""The service's RSA key: where it is kept, how it is created once, and how long a copy is trusted.

Secrets Manager holds the key in the Dashboard's own format (see docs/design.md), so one key can
serve this service and an in-cluster Dashboard v2. Every version of the secret is a key; its
VersionId is the `kid` stamped on the tokens it seals. AWSCURRENT, AWSPREVIOUS and AWSPENDING
open; AWSCURRENT seals once every container can be relied on to know it (KeyCache says when),
AWSPREVIOUS until then, so a rotation logs nobody out.

Bootstrap is race-free without locks, and safe when reads lag writes: a container that finds no
usable key writes a candidate under a ClientRequestToken derived from what it found (so every
container that found the same thing writes the same version id, and Secrets Manager keeps the
first), then moves AWSCURRENT onto it with a compare-and-set that Secrets Manager refuses if
AWSCURRENT is no longer where the container saw it. Nothing ever overwrites a usable key.
"""
from __future__ import annotations

import base64
import contextlib
import contextvars
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

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from . import audit

logger = logging.getLogger(__name__)

KEY_BITS = 2048  # the Dashboard's size; tokens stay small enough for a header
_PUBLIC_LABEL = "RSA PUBLIC KEY"  # the Dashboard's label for a PKIX key; kept for compatibility
_BOOTSTRAP_NAMESPACE = uuid.UUID("6f1d8a52-3c0e-4b5e-9a51-4d1f3e0b7c21")
_IN_USE = frozenset({"AWSCURRENT", "AWSPREVIOUS", "AWSPENDING"})
# A bootstrap candidate waits under this label until the compare-and-set makes it AWSCURRENT. Not
# AWSPENDING: that belongs to a rotation in flight, whose steps would take the candidate for theirs.
CANDIDATE_STAGE = "DASHBOARD_AUTH_CANDIDATE"
MAX_VERSION_PAGES = 10  # Secrets Manager keeps about 100 versions; 100 per page
UNKNOWN_KID_REFETCH_INTERVAL = 5.0
# How long after a write a Secrets Manager read may still miss it. AWS gives no figure; reads
# normally see a write at once, so this is a generous allowance, paid only as a later switch.
READ_LAG_ALLOWANCE = 5.0
RETRY_AFTER_FAILURE = 10.0


def mint_delay() -> float:
    """Seconds a container holds a new AWSCURRENT key before it seals with it (see KeyCache)."""
    return UNKNOWN_KID_REFETCH_INTERVAL + READ_LAG_ALLOWANCE


class UnusableKey(ValueError):
    """A stored value that is not a key we can use (empty, not JSON, wrong PEM, mismatched pair)."""


class KeyStoreUnavailable(RuntimeError):
    """The key cannot be read or created right now; the message is for the log, not the client."""


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
    """What Secrets Manager holds: the keys by staging label, and the kids that were ours once."""

    current: SessionKey
    previous: SessionKey | None = None
    pending: SessionKey | None = None  # a rotation in flight; it opens, so its tokens never surprise us
    retired: frozenset[str] = frozenset()  # listed, no longer labelled: their tokens expired, not forged

    def all(self) -> list[SessionKey]:
        return [key for key in (self.current, self.previous, self.pending) if key is not None]

    def by_kid(self, kid: str) -> SessionKey | None:
        return next((key for key in self.all() if key.kid == kid), None)


class KeyStore(Protocol):
    def fetch(self) -> KeySet: ...


def new_secret_value() -> str:
    """A fresh key in the secret format of docs/design.md."""
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


def _opens_what_its_public_key_seals(numbers: rsa.RSAPrivateNumbers) -> bool:
    """Whether a private key's numbers are consistent: n = pq, ed = 1 modulo p-1 and q-1, and the CRT
    values OpenSSL decrypts with derive from d, p and q. For primes p and q that is what makes
    decryption invert encryption for every message, so a corrupted d, dmp1, dmq1 or iqmp fails here.
    It replaces an encrypt/decrypt round trip of a random probe, which proves less (one message; and
    OpenSSL falls back from a bad CRT value to d) and costs a private-key operation (~0.5 ms warm,
    more as a restored container's first); this costs ~0.02 ms. Not checked, as before: that p and q
    are prime (OpenSSL's slow part)."""
    p, q, d = numbers.p, numbers.q, numbers.d
    n, e = numbers.public_numbers.n, numbers.public_numbers.e
    return (
        1 < p < n and 1 < q < n and p * q == n
        and (e * d - 1) % (p - 1) == 0 and (e * d - 1) % (q - 1) == 0
        and numbers.dmp1 == d % (p - 1) and numbers.dmq1 == d % (q - 1)
        and (numbers.iqmp * q) % p == 1
    )


def parse_secret_value(kid: str, text: str | None) -> SessionKey:
    """A stored value as a usable key, or UnusableKey saying why (never quoting the value)."""
    try:
        fields = json.loads(text or "")
    except ValueError:
        raise UnusableKey("the value is not JSON") from None
    if not isinstance(fields, dict) or not all(isinstance(fields.get(k), str) for k in ("priv", "pub")):
        raise UnusableKey("the value lacks priv/pub strings")
    try:
        # OpenSSL's full RSA check (its primality tests) costs tens of ms per key per cold start; the
        # checks below prove what matters here, that this pair seals and opens, for a fraction of a ms.
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
    if not _opens_what_its_public_key_seals(private_key.private_numbers()):
        raise UnusableKey("priv does not open what pub seals")
    # A key written by the Dashboard has no csrf member; derive one so CSRF still works.
    csrf = fields.get("csrf")
    if not isinstance(csrf, str) or len(csrf) < 32:
        csrf = base64.b64encode(hmac.new(fields["priv"].encode(), b"csrf", hashlib.sha256).digest()).decode()
    return SessionKey(kid=kid, private=private_key, public=private_key.public_key(), csrf_secret=csrf)


# Answers that are part of the protocol, not failures: no version yet at a stage, and the losing side
# of the bootstrap race (another container wrote the same candidate, or moved AWSCURRENT first).
_EXPECTED_ANSWERS = frozenset({"ResourceNotFoundException", "ResourceExistsException", "InvalidParameterException"})


class SecretsManagerKeyStore:
    """Reads (and, the first time, creates) the key in a Secrets Manager secret."""

    def __init__(self, secret_id: str, client_factory: Callable[[], object]):
        self._secret_id = secret_id
        self._client_factory = client_factory

    def _call(self, client, operation: str, **request):
        """One Secrets Manager call, counted (audit: SecretsManagerCalls/Errors), after botocore's retries."""
        audit.secrets_manager_call()
        try:
            return getattr(client, operation)(**request)
        except Exception as error:
            self._account(operation, error)
            raise

    @staticmethod
    def _account(operation: str, error: Exception) -> None:
        """A failed call, as the audit counts it: answers that are part of the protocol are not errors."""
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(error, ClientError):
            code = error.response.get("Error", {}).get("Code", "unknown")
            if code not in _EXPECTED_ANSWERS:
                audit.secrets_manager_error(operation, code)
        elif isinstance(error, BotoCoreError):
            audit.secrets_manager_error(operation, type(error).__name__)

    def _read_aside(self, stage: str) -> Callable[[], tuple[str | None, str | None]]:
        """Start `_read(stage)` on a thread of its own; the function returned waits for its answer.

        Counted and accounted in the request's thread (the audit's counters belong to it); the
        thread runs in a copy of the request's context, so its log lines carry the request's fields."""
        client = self._client_factory()
        audit.secrets_manager_call()
        outcome: dict = {}

        def read() -> None:
            try:
                outcome["answer"] = client.get_secret_value(SecretId=self._secret_id, VersionStage=stage)
            except Exception as error:  # noqa: BLE001  (handed to the waiting thread)
                outcome["error"] = error

        thread = threading.Thread(target=contextvars.copy_context().run, args=(read,), name=f"read {stage}", daemon=True)
        thread.start()

        def answer() -> tuple[str | None, str | None]:
            thread.join()
            error = outcome.get("error")
            if error is None:
                return outcome["answer"]["VersionId"], outcome["answer"].get("SecretString")
            self._account("get_secret_value", error)
            if isinstance(error, client.exceptions.ResourceNotFoundException):
                return None, None
            raise error

        return answer

    def fetch(self) -> KeySet:
        """Current, previous and pending keys, and the versions rotated out."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self._fetch_or_bootstrap()
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "unknown")
            raise KeyStoreUnavailable(f"Secrets Manager refused {self._secret_id!r}: {code}") from None
        except BotoCoreError as error:
            raise KeyStoreUnavailable(f"Secrets Manager unreachable: {type(error).__name__}") from None

    def _fetch_or_bootstrap(self) -> KeySet:
        for _ in range(4):
            version_id, text = self._read("AWSCURRENT")
            if version_id is None:
                self._write_first_key()
                continue
            try:
                current = parse_secret_value(version_id, text)
            except UnusableKey as why:
                logger.warning("key secret version %s is unusable (%s); replacing it", version_id, why)
                self._install(self._token(version_id), replacing=version_id)
                continue
            # The version list and AWSPREVIOUS are read at the same time (AWSPREVIOUS on a thread): one
            # Secrets Manager latency instead of two, for a second connection. Measured on a restored
            # container's fetch with a front adding a fixed server time to each call (moto on loopback,
            # median of 15): 0 ms: 17.4 against 19.5 ms one after the other; 5 ms: 29.1 against 34.7;
            # 15 ms: 48.9 against 66.4. AWSPENDING, read only when the list shows a rotation in flight,
            # comes after them. Races: these reads were never one atomic snapshot, sequential or not, and
            # a kid they miss is what the unknown kid's bounded refetch is for (KeyCache). What the order
            # keeps: AWSCURRENT is read first, alone, so (1) a key that is AWSCURRENT or AWSPREVIOUS
            # throughout a fetch is held whatever one rotation does meanwhile (read as AWSCURRENT before
            # it, or as AWSPREVIOUS after it), which KeyCache's mint delay argument rests on; reading all
            # three at once would lose that (AWSPREVIOUS read before the rotation, AWSCURRENT after it:
            # the key in between missed); and (2) a missing or unusable AWSCURRENT (bootstrap, an
            # outage) costs the one call it cost before, so the calls and errors counted are the same.
            # Whether the list is read before or after AWSPREVIOUS changes nothing: a version is retired
            # only if listed without a label and not held, and a version does not get a label back once
            # it has lost them all (short of an operator moving one back by hand, which reads in either
            # order can miss alike). If both fail, both failures are counted: two calls were made.
            previous_read = self._read_aside("AWSPREVIOUS")
            try:
                stages = self._version_stages()
            except Exception:
                with contextlib.suppress(Exception):
                    previous_read()  # waited for, and accounted; the list's failure is the one reported
                raise
            previous = self._usable_other("AWSPREVIOUS", *previous_read(), current)
            has_pending = any("AWSPENDING" in labels and "AWSCURRENT" not in labels for labels in stages.values())
            pending = self._read_other("AWSPENDING", current) if has_pending else None
            held = {key.kid for key in (current, previous, pending) if key is not None}
            # Only a version that lost every label is retired: one listed with a label we could not
            # read (a pending version not filled in yet) may still turn up, so it stays unknown.
            retired = frozenset(v for v, labels in stages.items() if not labels & _IN_USE and v not in held)
            return KeySet(current=current, previous=previous, pending=pending, retired=retired)
        raise KeyStoreUnavailable("no usable key settled in the secret after several attempts")

    def _version_stages(self) -> dict[str, frozenset[str]]:
        client = self._client_factory()
        stages: dict[str, frozenset[str]] = {}
        request = {"SecretId": self._secret_id, "IncludeDeprecated": True, "MaxResults": 100}
        for _ in range(MAX_VERSION_PAGES):
            page = self._call(client, "list_secret_version_ids", **request)
            for version in page["Versions"]:
                stages[version["VersionId"]] = frozenset(version.get("VersionStages", ()))
            if not page.get("NextToken"):
                break
            request["NextToken"] = page["NextToken"]
        return stages

    def _read(self, stage: str) -> tuple[str | None, str | None]:
        client = self._client_factory()
        try:
            answer = self._call(client, "get_secret_value", SecretId=self._secret_id, VersionStage=stage)
        except client.exceptions.ResourceNotFoundException:
            return None, None
        return answer["VersionId"], answer.get("SecretString")

    def _read_other(self, stage: str, current: SessionKey) -> SessionKey | None:
        return self._usable_other(stage, *self._read(stage), current)

    @staticmethod
    def _usable_other(stage: str, version_id: str | None, text: str | None, current: SessionKey) -> SessionKey | None:
        if version_id is None or version_id == current.kid:
            return None
        try:
            return parse_secret_value(version_id, text)
        except UnusableKey as why:
            logger.warning("%s key version %s is unusable (%s); ignoring it", stage, version_id, why)
            return None

    def _token(self, replacing: str) -> str:
        return str(uuid.uuid5(_BOOTSTRAP_NAMESPACE, f"{self._secret_id}\n{replacing}"))

    def _write_first_key(self) -> None:
        client = self._client_factory()
        try:
            answer = self._call(
                client, "create_secret",
                Name=self._secret_id,
                SecretString=new_secret_value(),
                ClientRequestToken=self._token("created"),
                Description="Session-token key for the Kubernetes Dashboard login service",
            )
            logger.info("created the key secret %s", self._secret_id)
            audit.key_bootstrapped("secretsmanager", self._secret_id, answer.get("VersionId", self._token("created")))
            return
        except client.exceptions.ResourceExistsException:
            pass
        # Another container created it (our read lagged, or it won the race), or the secret exists
        # with no value at all. Only the second needs a key, and the compare-and-set below cannot
        # take AWSCURRENT from the first, however stale this read is.
        if self._read("AWSCURRENT")[0] is None:
            self._install(self._token("no-current-version"), replacing=None)

    def _install(self, token: str, replacing: str | None) -> None:
        """Make a new key AWSCURRENT if, and only if, AWSCURRENT is still where we saw it.

        `replacing` is the (unusable) version we saw as AWSCURRENT, or None when we saw none.
        UpdateSecretVersionStage refuses to move AWSCURRENT unless RemoveFromVersionId names the
        version holding it, so a container whose read lagged loses the compare-and-set instead of
        replacing a usable key. The caller reads again either way.
        """
        client = self._client_factory()
        try:
            answer = self._call(
                client, "put_secret_value",
                SecretId=self._secret_id,
                SecretString=new_secret_value(),
                ClientRequestToken=token,
                VersionStages=[CANDIDATE_STAGE],
            )
            if "AWSCURRENT" in answer.get("VersionStages", ()):
                # Secrets Manager makes a secret's first version AWSCURRENT whatever labels it is
                # given; there was no current key to lose.
                logger.info("wrote a new key version to %s", self._secret_id)
                audit.key_bootstrapped("secretsmanager", self._secret_id, token, replaced=replacing)
                return
        except client.exceptions.ResourceExistsException:
            pass  # another container wrote this candidate first: install theirs
        move = {"SecretId": self._secret_id, "VersionStage": "AWSCURRENT", "MoveToVersionId": token}
        if replacing is not None:
            move["RemoveFromVersionId"] = replacing
        try:
            self._call(client, "update_secret_version_stage", **move)
        except client.exceptions.InvalidParameterException:
            logger.info("AWSCURRENT of %s moved since it was read; reading it again", self._secret_id)
            return
        logger.info("wrote a new key version to %s", self._secret_id)
        audit.key_bootstrapped("secretsmanager", self._secret_id, token, replaced=replacing)


class FileKeyStore:
    """A key in a local file, for the `local` stage: created on first start, never overwritten."""

    def __init__(self, path: str):
        self._path = path

    def fetch(self) -> KeySet:
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
        audit.key_bootstrapped("file", self._path, "file-" + parse_secret_value("file", text).fingerprint()[:16])
        return text


class KeyCache:
    """How long a container trusts the key set it fetched, which key it seals with, and what a kid
    it does not hold costs; kept apart from the store that fetches.

    Trust:
    - Within `ttl` the cached set is used as it is.
    - Past `ttl` it is fetched again; if the store is unreachable, a warm container keeps serving
      its cached keys for up to `grace` more seconds, trying the store again at most every
      RETRY_AFTER_FAILURE seconds after a failed fetch of any kind, so that requests do not each
      wait for a dead endpoint. A cold
      container, or one past the grace, has nothing to judge a token by: KeyStoreUnavailable (503).

    Looking up a kid (`candidates`): a key we hold opens it; a retired kid is an expired session;
    any other kid is not ours, after at most one refetch. The container asks the store again only
    if its last fetch, of any kind, began UNKNOWN_KID_REFETCH_INTERVAL or more ago, so made-up kids
    cost at most one fetch per interval per container, and never a 5xx: a kid that may not refetch
    yet, or whose refetch failed while the cached keys are still served, is simply not ours. A
    failed CSRF check gets the same single chance (`accepts`), since a CSRF token names no key.

    Sealing (`mint_key`): a new AWSCURRENT seals only once this container has held it for
    mint_delay() = UNKNOWN_KID_REFETCH_INTERVAL + READ_LAG_ALLOWANCE seconds; until then
    AWSPREVIOUS does (a first key, with no previous, seals at once). Why that refuses no token of
    a rotation: say container A first held new key K at h (the end of the fetch that read it), so
    K was readable at h; A seals under K at m >= h + mint_delay(); the token reaches container B
    at r >= m; B's last fetch began at b.
    - If b >= h + READ_LAG_ALLOWANCE, that fetch saw K (AWSPENDING, AWSCURRENT or AWSPREVIOUS):
      B holds K.
    - Otherwise r - b > mint_delay() - READ_LAG_ALLOWANCE = UNKNOWN_KID_REFETCH_INTERVAL: B may
      refetch now, and that fetch sees K.
    Only durations are compared, each on one container's monotonic clock, so no clock skew enters,
    and nothing rests on Secrets Manager's CreatedDate, which can precede the moment a version's
    value became readable (RotateSecret stages the version before createSecret fills it in). The
    argument is the same for CSRF tokens. It fails only when B's store is unreachable just when B
    must refetch: an outage. A key retires at the second rotation after it began sealing, so
    rotations must stay KEY_CACHE_TTL + mint_delay() + TOKEN_TTL apart.
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
        self._fetched_at = 0.0  # start of the last fetch that succeeded
        self._attempted_at = float("-inf")  # start of the last fetch tried, whatever its outcome
        self._retry_at = 0.0
        self._held_since: dict[str, float] = {}  # kid -> when a fetch first brought us that key

    def forget(self) -> None:
        """Drop every key fetched and every time measured: a container restored from a snapshot starts
        as a cold one (its monotonic clock is not the snapshotted container's)."""
        with self._lock:
            self._keys = None
            self._fetched_at = 0.0
            self._attempted_at = float("-inf")
            self._retry_at = 0.0
            self._held_since = {}

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
                self._fetch()
            except KeyStoreUnavailable as error:
                if not stale_usable:
                    raise
                logger.warning("serving cached keys (%.0f s old) while the key store is unavailable: %s", age, error)
            return self._keys

    def mint_key(self) -> SessionKey:
        """The key to seal session tokens and CSRF tokens with now."""
        keys = self.keys()
        if keys.previous is None:
            return keys.current
        with self._lock:
            held_since = self._held_since.get(keys.current.kid)
            now = self._clock()
        if held_since is not None and now - held_since >= mint_delay():
            return keys.current
        return keys.previous

    def candidates(self, kid: str | None) -> list[SessionKey]:
        """The keys that may have sealed a token with this kid (no kid: a Dashboard-minted token).

        Empty for a kid that is not ours and for a retired one (`is_retired` tells them apart).
        """
        seen = self.keys()
        if kid is None:
            return seen.all()
        key = seen.by_kid(kid)
        if key is None and kid not in seen.retired:
            with self._lock:
                if self._keys is seen:  # else another request refetched meanwhile: look there
                    self._refetch_if_allowed("a kid it does not hold")
                key = self._keys.by_kid(kid)
        return [key] if key is not None else []

    def accepts(self, test: Callable[[KeySet], bool]) -> bool:
        """Whether the key set passes `test`, given one refetch on the terms of an unknown kid."""
        seen = self.keys()
        if test(seen):
            return True
        with self._lock:
            if self._keys is seen:
                self._refetch_if_allowed("a CSRF token none of its keys made")
            fresh = self._keys
        return fresh is not seen and test(fresh)

    def is_retired(self, kid: str | None) -> bool:
        """Whether the cached set lists this kid as rotated out (no refetch)."""
        with self._lock:
            return kid is not None and self._keys is not None and kid in self._keys.retired

    def _refetch_if_allowed(self, reason: str) -> None:
        """With the lock held: fetch again unless a fetch began less than the interval ago."""
        if self._clock() - self._attempted_at < UNKNOWN_KID_REFETCH_INTERVAL:
            return
        try:
            self._fetch()
        except KeyStoreUnavailable as error:
            # keys() has just said the cached set is still to be served; judge by it.
            logger.warning("could not refetch the key set for %s: %s", reason, error)

    def _fetch(self) -> None:
        """With the lock held: fetch the set and note since when each of its keys is held."""
        started = self._clock()  # the age counts from before the read, so ttl bounds staleness strictly
        self._attempted_at = started
        try:
            keys = self._store.fetch()
        except KeyStoreUnavailable:
            # Whatever asked, the store is down: the regular refetch waits too, so that during an
            # outage fetches of both kinds together stay one per UNKNOWN_KID_REFETCH_INTERVAL.
            self._retry_at = started + RETRY_AFTER_FAILURE
            raise
        held_at = self._clock()  # after the read: the latest moment the keys can have become readable
        self._held_since = {key.kid: self._held_since.get(key.kid, held_at) for key in keys.all()}
        if self._keys is not None and self._keys.current.kid != keys.current.kid:
            previous = keys.previous.kid if keys.previous is not None else None
            audit.key_rotated(self._keys.current.kid, keys.current.kid, previous)
        self._keys, self._fetched_at = keys, started
