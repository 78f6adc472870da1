"""Keys (chalicelib.keys): the secret format, the local key file, and the key cache's policy.

SecretsManagerKeyStore is tested elsewhere against a real moto server.
"""
from __future__ import annotations

import base64
import hashlib
import json
import stat
import textwrap
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from chalicelib import keys, sessions
from chalicelib.keys import FileKeyStore, KeyCache, KeySet, KeyStoreUnavailable, UnusableKey

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


# ------------------------------------------------------------------ helpers

def pem_blocks(text: str) -> tuple[str, str, bytes]:
    lines = text.strip().splitlines()
    begin, end, body = lines[0], lines[-1], lines[1:-1]
    return begin, end, base64.b64decode("".join(body), validate=True)


def go_pem(label: str, der: bytes) -> str:
    """Go's pem.EncodeToMemory: 64-character lines."""
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n"


def dashboard_value(private_key: rsa.RSAPrivateKey) -> str:
    """What the Dashboard's ExportRSAKeyOrDie writes into kubernetes-dashboard-key-holder: no csrf."""
    priv = go_pem(
        "RSA PRIVATE KEY",
        private_key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        ),
    )
    pub = go_pem(
        "RSA PUBLIC KEY",
        private_key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
    )
    return json.dumps({"priv": priv, "pub": pub})


def sa_jwt() -> str:
    return "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDphIn0.c2ln"


def seals_and_opens(key: keys.SessionKey) -> bool:
    claims = sessions.Claims(NOW, NOW + timedelta(minutes=15), "c", NOW, NOW)
    text = sessions.mint(sa_jwt(), claims, key.public, key.kid)
    envelope = sessions.parse(text)
    return envelope.kid == key.kid and sessions.decrypt(envelope, key.private) == sa_jwt()


def private_of(value: str) -> rsa.RSAPrivateKey:
    return serialization.load_pem_private_key(json.loads(value)["priv"].encode(), password=None)


@pytest.fixture(scope="module")
def value() -> str:
    return keys.new_secret_value()


@pytest.fixture(scope="module")
def other_value() -> str:
    return keys.new_secret_value()


@pytest.fixture(scope="module")
def key_a(value) -> keys.SessionKey:
    return keys.parse_secret_value("v1", value)


@pytest.fixture(scope="module")
def key_b(other_value) -> keys.SessionKey:
    return keys.parse_secret_value("v2", other_value)


# ------------------------------------------------------------------ new_secret_value: the format of docs/design.md

def test_secret_value_has_priv_pub_and_csrf(value):
    fields = json.loads(value)
    assert set(fields) == {"priv", "pub", "csrf"}
    assert all(isinstance(v, str) for v in fields.values())


def test_priv_is_a_pkcs1_pem_2048_bit_rsa_key(value):
    priv = json.loads(value)["priv"]
    begin, end, _ = pem_blocks(priv)
    assert begin == "-----BEGIN RSA PRIVATE KEY-----"
    assert end == "-----END RSA PRIVATE KEY-----"
    key = serialization.load_pem_private_key(priv.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 2048


def test_pub_is_spki_der_labelled_rsa_public_key_matching_priv(value):
    fields = json.loads(value)
    begin, end, der = pem_blocks(fields["pub"])
    assert begin == "-----BEGIN RSA PUBLIC KEY-----"
    assert end == "-----END RSA PUBLIC KEY-----"
    public = serialization.load_der_public_key(der)
    assert isinstance(public, rsa.RSAPublicKey)
    expected = private_of(value).public_key()
    assert public.public_numbers() == expected.public_numbers()
    # Exactly the SubjectPublicKeyInfo encoding (Go's x509.MarshalPKIXPublicKey), not PKCS#1.
    assert der == expected.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert all(len(line) <= 76 for line in fields["pub"].splitlines())


def test_csrf_is_base64_of_256_random_bytes(value, other_value):
    csrf = json.loads(value)["csrf"]
    assert len(base64.b64decode(csrf, validate=True)) == 256
    assert csrf != json.loads(other_value)["csrf"]


def test_each_new_value_is_a_different_key(value, other_value):
    assert private_of(value).private_numbers() != private_of(other_value).private_numbers()


# ------------------------------------------------------------------ parse_secret_value

def test_parse_round_trips_to_a_working_key(value, key_a):
    assert key_a.kid == "v1"
    assert key_a.csrf_secret == json.loads(value)["csrf"]
    assert seals_and_opens(key_a)


def test_parsed_private_and_public_belong_to_the_stored_key(value, key_a):
    stored = private_of(value)
    assert isinstance(key_a.private, rsa.RSAPrivateKey) and isinstance(key_a.public, rsa.RSAPublicKey)
    assert key_a.public.public_numbers() == stored.public_key().public_numbers()
    assert key_a.private.private_numbers() == stored.private_numbers()


def test_fingerprint_is_the_sha256_of_the_public_spki_der(value, key_a, key_b):
    der = private_of(value).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert key_a.fingerprint() == hashlib.sha256(der).hexdigest()
    assert key_a.fingerprint() != key_b.fingerprint()
    # Names the key, not the version: the same key under another kid has the same fingerprint.
    assert keys.parse_secret_value("other-kid", value).fingerprint() == key_a.fingerprint()


def test_a_dashboard_written_value_without_csrf_parses(value):
    written = dashboard_value(private_of(value))
    key = keys.parse_secret_value("dash", written)
    assert seals_and_opens(key)
    # The derived csrf secret is stable (every container agrees), long, and not a constant.
    again = keys.parse_secret_value("other-kid", written)
    assert key.csrf_secret == again.csrf_secret
    assert len(key.csrf_secret) >= 32
    from chalicelib import dashboard

    token = dashboard.csrf_token(key.csrf_secret, "login")
    assert dashboard.csrf_valid(token, [again.csrf_secret], "login")


def test_derived_csrf_secrets_differ_between_keys(value, other_value):
    one = keys.parse_secret_value("a", dashboard_value(private_of(value))).csrf_secret
    two = keys.parse_secret_value("a", dashboard_value(private_of(other_value))).csrf_secret
    assert one != two


def test_a_short_csrf_is_not_trusted_as_a_secret(value):
    fields = json.loads(dashboard_value(private_of(value)))
    fields["csrf"] = "x"
    key = keys.parse_secret_value("v", json.dumps(fields))
    assert key.csrf_secret != "x"
    assert len(key.csrf_secret) >= 32


@pytest.fixture(scope="module")
def small_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


@pytest.fixture(scope="module")
def unusable_values(value: str, other_value: str, small_key) -> dict[str, str | None]:
    fields, other = json.loads(value), json.loads(other_value)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_value = json.dumps(
        {
            "priv": ec_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ).decode(),
            "pub": ec_key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode(),
        }
    )
    encrypted = private_of(value).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(b"pw"),
    ).decode()
    return {
        "none": None,
        "empty": "",
        "not json": "priv=abc",
        "json list": json.dumps([fields["priv"], fields["pub"]]),
        "json string": json.dumps(value),
        "missing priv": json.dumps({"pub": fields["pub"], "csrf": fields["csrf"]}),
        "missing pub": json.dumps({"priv": fields["priv"], "csrf": fields["csrf"]}),
        "non-string priv": json.dumps({"priv": 1, "pub": fields["pub"]}),
        "garbage priv": json.dumps({"priv": "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n", "pub": fields["pub"]}),
        "garbage pub": json.dumps({"priv": fields["priv"], "pub": "-----BEGIN RSA PUBLIC KEY-----\n!!!!\n-----END RSA PUBLIC KEY-----\n"}),
        "pub not pem": json.dumps({"priv": fields["priv"], "pub": "ssh-rsa AAAA"}),
        "mismatched pair": json.dumps({"priv": fields["priv"], "pub": other["pub"], "csrf": fields["csrf"]}),
        "1024-bit key": dashboard_value(small_key),
        "ec key": ec_value,
        "encrypted priv": json.dumps({"priv": encrypted, "pub": fields["pub"]}),
    }


CASES = [
    "none", "empty", "not json", "json list", "json string", "missing priv", "missing pub", "non-string priv",
    "garbage priv", "garbage pub", "pub not pem", "mismatched pair", "1024-bit key", "ec key", "encrypted priv",
]


@pytest.mark.parametrize("case", CASES)
def test_unusable_values_are_refused_without_quoting_them(value, unusable_values, case):
    text = unusable_values[case]
    with pytest.raises(UnusableKey) as caught:
        keys.parse_secret_value("v1", text)
    message = str(caught.value)
    assert message
    for secret in json.loads(value).values():
        assert secret[40:80] not in message  # no key material in what ends up in logs


# ------------------------------------------------------------------ KeySet

def test_key_set_all_and_by_kid(key_a, key_b, key_c):
    both = KeySet(current=key_b, previous=key_a)
    assert both.all() == [key_b, key_a]
    assert both.by_kid("v1") is key_a
    assert both.by_kid("v2") is key_b
    assert both.by_kid("v3") is None
    alone = KeySet(current=key_a)
    assert alone.all() == [key_a]
    assert alone.by_kid("v2") is None
    rotating = KeySet(current=key_b, previous=key_a, pending=key_c, retired=frozenset({"v0"}))
    assert rotating.all() == [key_b, key_a, key_c]
    assert rotating.by_kid("v3") is key_c
    assert rotating.by_kid("v0") is None  # retired: listed, not held


# ------------------------------------------------------------------ FileKeyStore

def test_file_store_creates_a_private_key_file_once(tmp_path):
    path = tmp_path / "nested" / "dir" / "key.json"
    first = FileKeyStore(str(path)).fetch()
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    content = path.read_bytes()
    keys.parse_secret_value("x", content.decode())  # the file holds the docs/design.md format
    assert seals_and_opens(first.current)
    assert first.previous is None

    second = FileKeyStore(str(path)).fetch()  # a new process, same file
    assert path.read_bytes() == content
    assert second.current.kid == first.current.kid
    assert second.current.fingerprint() == first.current.fingerprint()
    assert first.current.kid == "file-" + first.current.fingerprint()[:16]
    assert second.current.csrf_secret == first.current.csrf_secret
    # A token sealed by the first instance opens with the second's key.
    claims = sessions.Claims(NOW, None, None, NOW, None)
    text = sessions.mint(sa_jwt(), claims, first.current.public, first.current.kid)
    assert sessions.decrypt(sessions.parse(text), second.current.private) == sa_jwt()


def test_file_stores_on_different_files_have_different_keys_and_kids(tmp_path):
    a = FileKeyStore(str(tmp_path / "a.json")).fetch().current
    b = FileKeyStore(str(tmp_path / "b.json")).fetch().current
    assert a.kid != b.kid
    assert a.fingerprint() != b.fingerprint()


def test_file_store_uses_an_existing_dashboard_key(tmp_path, value):
    path = tmp_path / "key.json"
    written = dashboard_value(private_of(value))
    path.write_text(written)
    key = FileKeyStore(str(path)).fetch().current
    assert key.public.public_numbers() == private_of(value).public_key().public_numbers()
    assert key.kid == "file-" + key.fingerprint()[:16]
    assert path.read_text() == written


@pytest.mark.parametrize("content", ["", "not a key", '{"priv": "x", "pub": "y"}'])
def test_an_unusable_key_file_is_unavailable_and_left_alone(tmp_path, content):
    path = tmp_path / "key.json"
    path.write_text(content)
    with pytest.raises(KeyStoreUnavailable) as caught:
        FileKeyStore(str(path)).fetch()
    assert str(path) in str(caught.value)
    assert path.read_text() == content


def test_a_mismatched_key_file_is_unavailable_without_quoting_the_key(tmp_path, value, other_value):
    fields = json.loads(value)
    fields["pub"] = json.loads(other_value)["pub"]
    content = json.dumps(fields)
    path = tmp_path / "key.json"
    path.write_text(content)
    with pytest.raises(KeyStoreUnavailable) as caught:
        FileKeyStore(str(path)).fetch()
    assert fields["priv"][40:80] not in str(caught.value)
    assert path.read_text() == content


def test_a_key_path_that_is_a_directory_is_unavailable(tmp_path):
    with pytest.raises(KeyStoreUnavailable):
        FileKeyStore(str(tmp_path)).fetch()


# ------------------------------------------------------------------ KeyCache: the policy, with a counting fake store

class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 10_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingStore:
    """Stands in for Secrets Manager; `keys` is what it would return now. `fetch_takes` moves the
    clock during each fetch, as a read over the network takes time."""

    def __init__(self, key_set: KeySet, clock: Clock | None = None, fetch_takes: float = 0.0):
        self.keys = key_set
        self.fetches = 0
        self.up = True
        self._clock, self._takes = clock, fetch_takes

    def fetch(self) -> KeySet:
        self.fetches += 1
        if self._clock is not None:
            self._clock.now += self._takes
        if not self.up:
            raise KeyStoreUnavailable("Secrets Manager unreachable: EndpointConnectionError")
        return self.keys


INTERVAL = keys.UNKNOWN_KID_REFETCH_INTERVAL


@pytest.fixture(scope="module")
def key_c() -> keys.SessionKey:
    return keys.parse_secret_value("v3", keys.new_secret_value())


def test_cache_fetches_once_within_ttl(key_a):
    store, clock = CountingStore(KeySet(key_a)), Clock()
    cache = KeyCache(store, ttl=300, clock=clock)
    assert store.fetches == 0  # nothing before the first use
    for _ in range(5):
        assert cache.keys().current is key_a
    clock.now += 299.9
    cache.keys()
    assert store.fetches == 1


def test_cache_fetches_again_after_ttl_and_sees_a_rotation(key_a, key_b):
    store, clock = CountingStore(KeySet(key_a)), Clock()
    cache = KeyCache(store, ttl=300, clock=clock)
    cache.keys()
    store.keys = KeySet(current=key_b, previous=key_a)
    clock.now += 300
    assert cache.keys().current is key_b
    assert store.fetches == 2
    cache.keys()
    assert store.fetches == 2


def test_zero_ttl_fetches_every_time(key_a):
    store = CountingStore(KeySet(key_a))
    cache = KeyCache(store, ttl=0, clock=Clock())
    for _ in range(3):
        cache.keys()
    assert store.fetches == 3


def test_candidates_without_kid_are_all_keys_the_pending_one_too(key_a, key_b, key_c):
    cache = KeyCache(CountingStore(KeySet(current=key_b, previous=key_a, pending=key_c)), ttl=300, clock=Clock())
    assert cache.candidates(None) == [key_b, key_a, key_c]


def test_candidates_for_a_known_kid_is_that_key_only_and_costs_no_fetch(key_a, key_b, key_c):
    store, clock = CountingStore(KeySet(current=key_b, previous=key_a, pending=key_c)), Clock()
    cache = KeyCache(store, ttl=300, clock=clock)
    assert cache.candidates("v1") == [key_a]
    clock.now += INTERVAL * 10
    assert cache.candidates("v2") == [key_b]
    assert cache.candidates("v3") == [key_c]  # sealed by a container that already switched
    assert store.fetches == 1


def test_an_unknown_kid_is_never_deferred_and_refetches_at_most_once_per_interval(key_a):
    store, clock = CountingStore(KeySet(key_a)), Clock()
    cache = KeyCache(store, ttl=3600, clock=clock)
    cache.keys()
    clock.now += INTERVAL  # the regular fetch is an interval old

    answers = []
    for i in range(200):  # an attacker's stream of made-up kids, all within one interval
        answers.append(cache.candidates(f"made-up-{i}"))
        clock.now += INTERVAL / 400
    assert answers == [[]] * 200  # no exception: not ours, a plain 401
    assert store.fetches == 2  # the first one refetched; the rest found the last fetch too recent

    clock.now += INTERVAL
    assert [cache.candidates(f"more-{i}") for i in range(50)] == [[]] * 50
    assert store.fetches == 3


def test_an_unknown_kid_right_after_a_regular_fetch_does_not_refetch(key_a):
    """Any fetch counts: a kid minted before it began is either in it or, past the interval, refetched."""
    store, clock = CountingStore(KeySet(key_a)), Clock()
    cache = KeyCache(store, ttl=300, clock=clock)
    cache.keys()
    clock.now += 300  # past the ttl: the next use is a regular refetch
    assert cache.candidates("x0") == []
    assert store.fetches == 2
    assert [cache.candidates(f"x{i}") for i in range(1, 100)] == [[]] * 99
    assert store.fetches == 2


def test_a_retired_kid_is_refused_as_retired_every_time_without_a_fetch(key_a, key_b):
    store, clock = CountingStore(KeySet(current=key_b, previous=key_a, retired=frozenset({"v0"}))), Clock()
    cache = KeyCache(store, ttl=3600, clock=clock)
    cache.keys()
    for _ in range(100):
        clock.now += INTERVAL  # each try would be allowed a refetch; a retired kid needs none
        assert cache.candidates("v0") == []
        assert cache.is_retired("v0")
    assert store.fetches == 1
    assert not cache.is_retired("forged") and not cache.is_retired(None) and not cache.is_retired("v1")


def test_a_kid_retired_since_the_last_fetch_is_told_apart_after_the_refetch(key_a, key_b, key_c):
    store, clock = CountingStore(KeySet(current=key_b, previous=key_a)), Clock()
    cache = KeyCache(store, ttl=3600, clock=clock)
    cache.keys()
    store.keys = KeySet(current=key_c, previous=key_b, retired=frozenset({"v1"}))  # a rotation elsewhere
    clock.now += INTERVAL
    assert cache.candidates("v1") == [key_a]  # still held here: the cached set is trusted within its ttl
    assert cache.candidates("v0") == []  # unknown: refetched, and now v1 is known to be retired
    assert store.fetches == 2
    assert cache.candidates("v1") == [] and cache.is_retired("v1")


def test_a_kid_that_appears_after_a_refetch_is_found(key_a, key_b):
    store, clock = CountingStore(KeySet(key_a)), Clock()
    cache = KeyCache(store, ttl=3600, clock=clock)
    cache.keys()
    store.keys = KeySet(current=key_b, previous=key_a)  # rotated elsewhere; our ttl has not run out
    clock.now += INTERVAL
    assert cache.candidates("v2") == [key_b]
    assert store.fetches == 2
    assert cache.keys().current is key_b
    assert store.fetches == 2


def test_during_an_outage_an_unknown_kid_is_not_ours_while_the_cached_keys_are_served(key_a):
    store, clock = CountingStore(KeySet(key_a)), Clock()
    cache = KeyCache(store, ttl=300, grace=600, clock=clock)
    cache.keys()
    store.up = False

    clock.now += 100  # within the ttl
    assert [cache.candidates(f"f{i}") for i in range(100)] == [[]] * 100
    assert store.fetches == 2  # one attempt, failed
    clock.now += 300  # past the ttl, within the grace
    assert [cache.candidates(f"g{i}") for i in range(100)] == [[]] * 100
    assert cache.candidates("v1") == [key_a]  # the good key still opens
    assert store.fetches == 3  # the regular refetch failed; the unknown kids found it too recent

    # Regular refetches and unknown kids together: one attempt per interval, never more.
    attempts_before, started = store.fetches, clock.now
    for i in range(1000):
        clock.now += INTERVAL / 50
        assert cache.candidates(f"h{i}") == []
    assert store.fetches - attempts_before <= 1 + (clock.now - started) // INTERVAL

    clock.now = 10_000.0 + 300 + 600 + 1  # past ttl + grace: nothing left to judge by
    with pytest.raises(KeyStoreUnavailable):
        cache.candidates("z")


def test_a_cold_container_during_an_outage_cannot_judge_any_kid(key_a):
    store = CountingStore(KeySet(key_a))
    store.up = False
    cache = KeyCache(store, ttl=300, grace=600, clock=Clock())
    for kid in ("made-up", "v1", None):
        with pytest.raises(KeyStoreUnavailable):
            cache.candidates(kid)


def test_accepts_gives_a_failed_check_one_refetch_per_interval(key_a, key_b):
    store, clock = CountingStore(KeySet(key_a)), Clock()
    cache = KeyCache(store, ttl=3600, clock=clock)
    made_by_b = lambda key_set: key_set.by_kid("v2") is not None  # noqa: E731 - a CSRF token of key_b's
    assert cache.accepts(lambda key_set: key_set.current is key_a)
    assert store.fetches == 1

    assert not cache.accepts(made_by_b)  # the set was just fetched: no refetch
    assert store.fetches == 1
    store.keys = KeySet(current=key_b, previous=key_a)
    clock.now += INTERVAL
    assert cache.accepts(made_by_b)
    assert store.fetches == 2
    assert [cache.accepts(lambda key_set: False) for _ in range(100)] == [False] * 100
    assert store.fetches == 2


# ------------------------------------------------------------------ KeyCache: which key seals

def test_a_first_key_with_no_previous_seals_at_once(key_a):
    cache = KeyCache(CountingStore(KeySet(key_a)), ttl=300, clock=Clock())
    assert cache.mint_key() is key_a


def test_a_new_current_key_seals_only_once_held_for_the_mint_delay(key_a, key_b):
    clock = Clock()
    store = CountingStore(KeySet(key_a), clock, fetch_takes=0.5)
    cache = KeyCache(store, ttl=60, clock=clock)
    assert cache.mint_key() is key_a
    store.keys = KeySet(current=key_b, previous=key_a)
    clock.now += 60
    assert cache.mint_key() is key_a  # the refetch brought key_b; it is not sealed with yet
    held = clock.now  # the end of that fetch
    clock.now = held + keys.mint_delay() - 0.001
    assert cache.mint_key() is key_a
    assert cache.candidates("v2") == [key_b]  # it opens already, of course
    clock.now = held + keys.mint_delay()
    assert cache.mint_key() is key_b
    assert store.fetches == 2


def test_a_key_first_held_as_pending_counts_from_then(key_a, key_b):
    clock = Clock()
    store = CountingStore(KeySet(current=key_a, pending=key_b), clock)
    cache = KeyCache(store, ttl=60, clock=clock)
    cache.keys()
    clock.now += keys.mint_delay()
    store.keys = KeySet(current=key_b, previous=key_a)  # the rotation finished
    clock.now += 60
    assert cache.mint_key() is key_b


def test_a_cold_container_holds_the_current_key_for_the_delay_and_seals_with_the_previous(key_a, key_b):
    clock = Clock()
    cache = KeyCache(CountingStore(KeySet(current=key_b, previous=key_a)), ttl=300, clock=clock)
    assert cache.mint_key() is key_a
    clock.now += keys.mint_delay()
    assert cache.mint_key() is key_b


def _first_seal_under_new_key(sealer: KeyCache, clock: Clock, new_kid: str) -> None:
    """Advance the clock to the first moment the sealer's mint_key is the new key."""
    for _ in range(10_000):
        if sealer.mint_key().kid == new_kid:
            return
        clock.now += 0.05
    raise AssertionError("the sealer never switched to the new key")


@pytest.mark.parametrize("fetch_takes", [0.0, 0.4])
@pytest.mark.parametrize("last_fetch_before", [0.01, 1.0, INTERVAL / 2, INTERVAL - 0.01, INTERVAL + 1, 299.0])
def test_a_token_sealed_under_a_new_key_opens_in_a_container_that_fetched_just_before_it_existed(
    key_a, key_b, last_fetch_before, fetch_takes
):
    """The argument of KeyCache's docstring, on one clock: B fetched `last_fetch_before` s before
    key_b was written; A fetches right after, seals under key_b as soon as it may, and B opens it."""
    clock = Clock()
    store = CountingStore(KeySet(key_a), clock, fetch_takes=fetch_takes)
    sealer = KeyCache(store, ttl=300, clock=clock)
    receiver = KeyCache(store, ttl=300, clock=clock)
    sealer.keys()
    clock.now += 400  # A's cached set is past its ttl: A's next use fetches
    receiver.keys()  # B's last fetch
    clock.now += last_fetch_before
    store.keys = KeySet(current=key_b, previous=key_a)  # the rotation lands
    _first_seal_under_new_key(sealer, clock, "v2")  # A fetches at once and seals as early as it may

    assert receiver.candidates("v2") == [key_b]


def test_without_the_mint_delay_such_a_token_would_be_refused(key_a, key_b):
    """The control for the test above: sealing under a new key the moment it is held is not safe."""
    clock = Clock()
    store = CountingStore(KeySet(key_a), clock)
    receiver = KeyCache(store, ttl=300, clock=clock)
    receiver.keys()  # B fetches...
    clock.now += 1.0
    store.keys = KeySet(current=key_b, previous=key_a)  # ...1 s before the rotation lands
    eager = KeyCache(store, ttl=300, clock=clock)
    assert eager.keys().current is key_b  # a container that would seal under key_b now
    clock.now += 1.0
    assert receiver.candidates("v2") == []  # B may not refetch yet: a real session refused


def test_the_mint_delay_covers_the_refetch_interval_and_the_read_lag():
    assert keys.mint_delay() == keys.UNKNOWN_KID_REFETCH_INTERVAL + keys.READ_LAG_ALLOWANCE
    assert keys.READ_LAG_ALLOWANCE > 0


def test_a_warm_cache_serves_its_keys_through_an_outage_for_the_grace_period(key_a):
    store, clock = CountingStore(KeySet(key_a)), Clock()
    cache = KeyCache(store, ttl=300, grace=600, clock=clock)
    assert cache.keys().current is key_a
    fetched_at = clock.now
    store.up = False

    clock.now += 301
    assert cache.keys().current is key_a  # stale but within grace
    attempts = store.fetches
    for _ in range(100):  # no request waits on the dead store again before RETRY_AFTER_FAILURE
        cache.keys()
    assert store.fetches == attempts
    clock.now += keys.RETRY_AFTER_FAILURE
    cache.keys()
    assert store.fetches == attempts + 1

    clock.now = fetched_at + 300 + 600 + 1  # past ttl + grace
    with pytest.raises(KeyStoreUnavailable):
        cache.keys()
    store.up = True
    assert cache.keys().current is key_a


def test_a_failing_store_surfaces_as_unavailable(key_a):
    store = CountingStore(KeySet(key_a))
    store.up = False
    with pytest.raises(KeyStoreUnavailable):
        KeyCache(store, ttl=300, clock=Clock()).keys()


def test_a_private_key_with_corrupted_crt_values_is_unusable_not_silently_accepted():
    """Keys load without OpenSSL's slow full check; the round trip must still refuse a broken one."""
    from cryptography.hazmat.primitives.asymmetric import rsa as rsa_primitives

    value = json.loads(keys.new_secret_value())
    numbers = serialization.load_pem_private_key(value["priv"].encode(), None).private_numbers()
    broken = rsa_primitives.RSAPrivateNumbers(
        numbers.p, numbers.q, numbers.d ^ 2, numbers.dmp1 ^ 2, numbers.dmq1, numbers.iqmp, numbers.public_numbers
    ).private_key(unsafe_skip_rsa_key_validation=True)
    value["priv"] = broken.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()

    with pytest.raises(UnusableKey, match="does not open"):
        keys.parse_secret_value("v1", json.dumps(value))


def _with_numbers(value: str, **changes) -> str:
    """The stored value with some of its private key's numbers replaced (pub left as stored)."""
    from cryptography.hazmat.primitives.asymmetric import rsa as rsa_primitives

    fields = json.loads(value)
    numbers = serialization.load_pem_private_key(fields["priv"].encode(), None).private_numbers()
    values = {name: getattr(numbers, name) for name in ("p", "q", "d", "dmp1", "dmq1", "iqmp")}
    values.update({name: change(values) for name, change in changes.items()})
    broken = rsa_primitives.RSAPrivateNumbers(**values, public_numbers=numbers.public_numbers).private_key(
        unsafe_skip_rsa_key_validation=True
    )
    fields["priv"] = broken.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()
    return json.dumps(fields)


@pytest.mark.parametrize("corrupted", [
    {"d": lambda v: v["d"] ^ 2},  # the CRT values still decrypt: only d is wrong
    {"dmp1": lambda v: v["dmp1"] ^ 2},  # OpenSSL falls back to d and decrypts; a probe's round trip passed
    {"dmq1": lambda v: v["dmq1"] ^ 4},
    {"iqmp": lambda v: v["iqmp"] ^ 2},
    {"p": lambda v: v["q"], "q": lambda v: v["p"]},  # swapped primes: iqmp no longer inverts q modulo p
], ids=["d", "dmp1", "dmq1", "iqmp", "swapped-primes"])
def test_a_private_key_with_any_inconsistent_number_is_unusable(value, corrupted):
    """As OpenSSL's full key check would refuse them (less its primality tests, the slow part)."""
    with pytest.raises(UnusableKey, match="does not open"):
        keys.parse_secret_value("v1", _with_numbers(value, **corrupted))


@pytest.mark.parametrize("exponent", [65537, 3])
def test_keys_made_elsewhere_pass_the_consistency_check_and_work(exponent):
    private_key = rsa.generate_private_key(public_exponent=exponent, key_size=2048)
    key = keys.parse_secret_value("v1", dashboard_value(private_key))
    assert seals_and_opens(key)
