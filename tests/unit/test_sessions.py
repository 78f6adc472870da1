"""Session tokens (chalicelib.sessions): format, wire compatibility with the Dashboard, strictness.

Tokens that must be rejected are, wherever possible, built *correctly encrypted* under the
service's key, so that the only thing wrong with them is the property under test: a lenient
parser would accept them, and these tests would then fail.
"""
from __future__ import annotations

import base64
import json
import os
import re
import zlib
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwcrypto import jwa, jwe, jwk

from chalicelib import sessions
from chalicelib.sessions import InvalidToken
from tests.fakes import cryptography_jwe
from tests.fakes.go_jose import OAEP_SHA256, b64u, full_serialize, go_json, seal, unb64u

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
RFC3339_UTC_WHOLE_SECONDS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


# ------------------------------------------------------------------ helpers (independent of chalicelib)

def fake_jwt(payload: dict | None = None, size: int = 0) -> str:
    """A JWT-shaped ServiceAccount token (signature irrelevant: sessions never verifies it)."""
    header = b64u(b'{"alg":"RS256","kid":"k1"}')
    body = {"iss": "kubernetes/serviceaccount", "sub": "system:serviceaccount:kube-system:admin"}
    body.update(payload or {})
    if size:
        body["pad"] = "x" * size
    return f"{header}.{b64u(json.dumps(body).encode())}.{b64u(os.urandom(256))}"


def claims(**overrides) -> sessions.Claims:
    values = dict(
        issued_at=T0,
        expires_at=T0 + timedelta(seconds=900),
        cluster="prod-eu",
        auth_time=T0 - timedelta(hours=1),
        reviewed_at=T0 - timedelta(seconds=30),
    )
    values.update(overrides)
    return sessions.Claims(**values)


def good_aad(**overrides) -> bytes:
    fields = {"iat": "2024-05-01T12:00:00Z", "exp": "2024-05-01T12:15:00Z", "cluster": "prod-eu"}
    fields.update(overrides)
    return go_json({k: v for k, v in fields.items() if v is not None})


GOOD_HEADER = b'{"alg":"RSA-OAEP-256","enc":"A256GCM","kid":"v1"}'


def rejected(text, private: rsa.RSAPrivateKey) -> bool:
    """True when the token is refused with InvalidToken at parse or at decrypt (any other outcome fails)."""
    try:
        envelope = sessions.parse(text)
        sessions.decrypt(envelope, private)
    except InvalidToken:
        return True
    return False


def refused_by_parse(text) -> bool:
    """True when `parse` alone refuses the token: the shape is checked before any cryptography runs."""
    try:
        sessions.parse(text)
    except InvalidToken:
        return True
    return False


# ------------------------------------------------------------------ keys (RSA generation is slow: once per module)

@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def private(rsa_key) -> rsa.RSAPrivateKey:
    """The key as the service holds it (chalicelib.keys.SessionKey.private)."""
    return rsa_key


@pytest.fixture(scope="module")
def public(rsa_key) -> rsa.RSAPublicKey:
    """The key as the service seals with it (chalicelib.keys.SessionKey.public)."""
    return rsa_key.public_key()


@pytest.fixture(scope="module")
def private_jwk(rsa_key) -> jwk.JWK:
    """The same private key for jwcrypto, the independent JOSE implementation."""
    return jwk.JWK.from_pyca(rsa_key)


@pytest.fixture(scope="module")
def sa_token() -> str:
    return fake_jwt({"exp": 1714568400})


@pytest.fixture(scope="module")
def minted(sa_token, public) -> str:
    return sessions.mint(sa_token, claims(), public, "v1")


def hand_sealed(rsa_key, protected=GOOD_HEADER, aad=None, plaintext=None, sa="a.b.c") -> str:
    aad = good_aad() if aad is None else aad
    plaintext = go_json({"token": sa}) if plaintext is None else plaintext
    return full_serialize(seal(rsa_key.public_key(), protected, aad, plaintext))


# ------------------------------------------------------------------ minting: the format of docs/design.md

def test_round_trip_returns_the_sealed_token_and_claims(sa_token, public, private):
    original = claims()
    envelope = sessions.parse(sessions.mint(sa_token, original, public, "v1"))
    assert envelope.kid == "v1"
    assert envelope.claims == original
    assert sessions.decrypt(envelope, private) == sa_token


def test_minted_token_is_flattened_json_with_exactly_the_six_members(minted):
    document = json.loads(minted)
    assert set(document) == {"protected", "aad", "encrypted_key", "iv", "ciphertext", "tag"}
    assert all(isinstance(v, str) for v in document.values())
    assert len(unb64u(document["iv"])) == 12
    assert len(unb64u(document["tag"])) == 16
    assert len(unb64u(document["encrypted_key"])) == 256


def test_protected_header_is_exactly_alg_enc_kid(minted):
    header = json.loads(unb64u(json.loads(minted)["protected"]))
    assert header == {"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": "v1"}


def test_protected_header_has_no_kid_when_minted_without_one(sa_token, public, private):
    text = sessions.mint(sa_token, claims(), public, None)
    assert json.loads(unb64u(json.loads(text)["protected"])) == {"alg": "RSA-OAEP-256", "enc": "A256GCM"}
    assert sessions.decrypt(sessions.parse(text), private) == sa_token


def test_aad_is_an_object_of_rfc3339_utc_whole_second_strings(sa_token, public):
    # Sub-second and non-UTC inputs must come out as whole-second UTC "Z" times.
    plus_two = timezone(timedelta(hours=2))
    moment = datetime(2024, 5, 1, 14, 0, 0, 987654, tzinfo=plus_two)  # 12:00:00.987654Z
    text = sessions.mint(
        sa_token,
        claims(
            issued_at=moment,
            expires_at=moment + timedelta(seconds=900),
            auth_time=moment - timedelta(hours=1),
            reviewed_at=moment - timedelta(seconds=30),
        ),
        public,
        "v1",
    )
    aad = json.loads(unb64u(json.loads(text)["aad"]))
    assert aad == {
        "iat": "2024-05-01T12:00:00Z",
        "exp": "2024-05-01T12:15:00Z",
        "cluster": "prod-eu",
        "auth_time": "2024-05-01T11:00:00Z",
        "reviewed_at": "2024-05-01T11:59:30Z",
    }
    for key in ("iat", "exp", "auth_time", "reviewed_at"):
        assert RFC3339_UTC_WHOLE_SECONDS.fullmatch(aad[key])


def test_aad_omits_exp_when_the_session_never_expires(sa_token, public, private):
    text = sessions.mint(sa_token, claims(expires_at=None), public, "v1")
    aad = json.loads(unb64u(json.loads(text)["aad"]))
    assert "exp" not in aad
    assert set(aad) >= {"iat", "auth_time"}
    envelope = sessions.parse(text)
    assert envelope.claims.expires_at is None
    assert sessions.decrypt(envelope, private) == sa_token


def test_aad_omits_optional_claims_that_are_absent(sa_token, public):
    text = sessions.mint(sa_token, claims(cluster=None, reviewed_at=None), public, None)
    aad = json.loads(unb64u(json.loads(text)["aad"]))
    assert "cluster" not in aad and "reviewed_at" not in aad
    parsed = sessions.parse(text).claims
    assert parsed.cluster is None and parsed.reviewed_at is None


def test_each_mint_uses_a_fresh_content_key_and_iv(sa_token, public):
    first, second = (json.loads(sessions.mint(sa_token, claims(), public, "v1")) for _ in range(2))
    assert first["iv"] != second["iv"]
    assert first["encrypted_key"] != second["encrypted_key"]
    assert first["ciphertext"] != second["ciphertext"]


# ------------------------------------------------------------------ wire compatibility with an independent implementation

BOTH_WAYS = pytest.mark.parametrize(
    "kid, overrides",
    [
        ("v1", {}),
        (None, {}),  # no kid: what a Dashboard v2 backend would mint with our key
        ("v1", {"expires_at": None, "cluster": None, "reviewed_at": None}),
        ("a" * 128, {"cluster": "prod-eu/ü \"quoted\""}),  # longest kid, a cluster JSON must escape
    ],
    ids=["full", "no-kid", "only-iat-and-auth_time", "long-kid-escaped-cluster"],
)


def aad_fields(values: sessions.Claims) -> dict[str, str]:
    """The AAD members for these claims, written here without chalicelib."""
    def z(moment):
        return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    fields = {"iat": z(values.issued_at), "auth_time": z(values.auth_time)}
    if values.expires_at is not None:
        fields["exp"] = z(values.expires_at)
    if values.cluster is not None:
        fields["cluster"] = values.cluster
    if values.reviewed_at is not None:
        fields["reviewed_at"] = z(values.reviewed_at)
    return fields


@BOTH_WAYS
def test_a_token_we_mint_opens_with_the_cryptography_only_composition(rsa_key, public, sa_token, kid, overrides):
    # Ours -> the independent implementation (RFC 7516 with `cryptography` alone, tests/fakes).
    text = sessions.mint(sa_token, claims(**overrides), public, kid)
    assert json.loads(cryptography_jwe.open_token(text, rsa_key)) == {"token": sa_token}
    assert unb64u(json.loads(text)["aad"]) == cryptography_jwe.aad_of(aad_fields(claims(**overrides)))
    assert json.loads(text)["protected"] == cryptography_jwe.protected_of(kid)


@BOTH_WAYS
def test_a_token_the_cryptography_only_composition_mints_opens_with_ours(public, private, sa_token, kid, overrides):
    # The independent implementation -> ours: parse reads the same claims, decrypt the same token.
    expected = claims(**overrides)
    text = cryptography_jwe.mint(sa_token, cryptography_jwe.aad_of(aad_fields(expected)), public, kid)
    envelope = sessions.parse(text)
    assert (envelope.kid, envelope.claims) == (kid, expected)
    assert sessions.decrypt(envelope, private) == sa_token


@BOTH_WAYS
def test_given_the_same_content_key_and_iv_we_write_the_independent_compositions_bytes(
    monkeypatch, rsa_key, public, sa_token, kid, overrides
):
    # Byte compatibility: with jwcrypto's random content key and IV pinned, every byte of our token but
    # the (randomised OAEP) encrypted_key is what the cryptography-only composition writes, and the
    # encrypted_key carries the same content key.
    cek, iv = os.urandom(32), os.urandom(12)
    drawn = {256: [cek], 96: [iv]}
    monkeypatch.setattr(jwa, "_randombits", lambda bits: drawn[bits].pop())
    ours = sessions.mint(sa_token, claims(**overrides), public, kid)
    assert drawn == {256: [], 96: []}  # the content key and IV are drawn through jwcrypto, once each
    theirs = cryptography_jwe.mint(
        sa_token, cryptography_jwe.aad_of(aad_fields(claims(**overrides))), public, kid, cek=cek, iv=iv
    )
    ours_doc, theirs_doc = json.loads(ours), json.loads(theirs)
    assert cryptography_jwe.content_key(ours, rsa_key) == cryptography_jwe.content_key(theirs, rsa_key) == cek
    assert ours.replace(ours_doc["encrypted_key"], "EK") == theirs.replace(theirs_doc["encrypted_key"], "EK")


def test_keys_become_jwks_once_per_key_not_once_per_token(monkeypatch, rsa_key, sa_token):
    # Fresh key objects, as a key-set fetch makes them: converted on first use, then reused.
    private_key = rsa_key.private_numbers().private_key(unsafe_skip_rsa_key_validation=True)
    public_key = private_key.public_key()
    imports = []
    real_import = jwk.JWK.import_from_pyca
    monkeypatch.setattr(jwk.JWK, "import_from_pyca", lambda self, key: imports.append(key) or real_import(self, key))
    for _ in range(5):
        assert sessions.decrypt(sessions.parse(sessions.mint(sa_token, claims(), public_key, "v1")), private_key) == sa_token
    assert imports == [public_key, private_key]


def test_jwk_keys_are_taken_as_they_are(private_jwk, sa_token):
    public_jwk = jwk.JWK.from_json(private_jwk.export_public())
    text = sessions.mint(sa_token, claims(), public_jwk, "v1")
    assert sessions.decrypt(sessions.parse(text), private_jwk) == sa_token


def test_the_runtime_names_exactly_the_one_algorithm_pair():
    # jwcrypto's algorithm objects, chosen by our constants, never by anything a token says.
    assert (sessions._KEY_WRAP.name, sessions._CONTENT.name) == ("RSA-OAEP-256", "A256GCM")
    assert isinstance(sessions._KEY_WRAP, jwa._RsaOaep256) and isinstance(sessions._CONTENT, jwa._A256Gcm)


@pytest.fixture
def jwcrypto_calls(monkeypatch) -> list[str]:
    """Every jwcrypto key-management unwrap (any algorithm) and content decryption (any enc)."""
    calls: list[str] = []
    for cls in (jwa._RSA, jwa._AesKw, jwa._AesGcmKw, jwa._Pbes2HsAesKw, jwa._Direct, jwa._EcdhEs):
        real = cls.__dict__["unwrap"]
        monkeypatch.setattr(cls, "unwrap", lambda self, *a, _real=real, **k: calls.append(self.name) or _real(self, *a, **k))
    for cls in (jwa._AesGcm, jwa._AesCbcHmacSha2):
        real = cls.__dict__["decrypt"]
        monkeypatch.setattr(cls, "decrypt", lambda self, *a, _real=real, **k: calls.append(self.name) or _real(self, *a, **k))
    return calls


def test_jwcrypto_sees_only_envelopes_the_strict_parser_accepted(rsa_key, private, private_jwk, minted, jwcrypto_calls):
    hostile = [
        jwcrypto_made(private_jwk, {"alg": "RSA1_5", "enc": "A256GCM", "kid": "v1"}),
        jwcrypto_made(private_jwk, {"alg": "RSA-OAEP-256", "enc": "A128CBC-HS256", "kid": "v1"}),
        hand_sealed(rsa_key, protected=b'{"alg":"RSA-OAEP-256","enc":"A256GCM","zip":"DEF"}'),
        hand_sealed(rsa_key, protected=b'{"alg":"RSA-OAEP-256","enc":"A256GCM","jku":"http://x"}'),
        hand_sealed(rsa_key, aad=b"[]"),
        minted[:-1] + ',"unprotected":{}}',
    ]
    for text in hostile:
        assert refused_by_parse(text) and rejected(text, private)
    assert jwcrypto_calls == []
    # The instrumentation sees the one pair when a token does get through.
    assert sessions.decrypt(sessions.parse(minted), private)
    assert jwcrypto_calls == ["RSA-OAEP-256", "A256GCM"]


def jwcrypto_made(key: jwk.JWK, protected: dict, plaintext: bytes = b'{"token":"a.b.c"}') -> str:
    token = jwe.JWE(plaintext, protected=json.dumps(protected), aad=good_aad(),
                    algs=["RSA1_5", "RSA-OAEP-256", "A256GCM", "A128CBC-HS256"])
    token.add_recipient(key)
    return token.serialize()


def test_rfc7516_aead_covers_protected_and_aad_as_ascii(rsa_key, minted):
    # Recomputing the GCM AAD any other way (e.g. AAD member alone) must fail: proves we follow §5.2.
    doc = json.loads(minted)
    cek = rsa_key.decrypt(unb64u(doc["encrypted_key"]), OAEP_SHA256)
    with pytest.raises(Exception):
        AESGCM(cek).decrypt(
            unb64u(doc["iv"]), unb64u(doc["ciphertext"]) + unb64u(doc["tag"]), unb64u(doc["aad"])
        )


@BOTH_WAYS
def test_a_token_we_mint_opens_with_jwcrypto(private_jwk, public, sa_token, kid, overrides):
    # An independent JOSE implementation, held to the one algorithm pair, opens what we mint and
    # reads the same protected header and AAD.
    text = sessions.mint(sa_token, claims(**overrides), public, kid)
    token = jwe.JWE(algs=["RSA-OAEP-256", "A256GCM"])
    token.deserialize(text, private_jwk)
    assert json.loads(token.payload) == {"token": sa_token}
    expected_header = {"alg": "RSA-OAEP-256", "enc": "A256GCM", **({"kid": kid} if kid else {})}
    assert token.jose_header == expected_header
    assert token.objects["aad"] == unb64u(json.loads(text)["aad"])
    assert sessions.parse(text).claims == claims(**overrides)


def test_minted_token_is_serialized_as_go_jose_writes_it(minted):
    # go-jose's FullSerialize: struct member order (not jwcrypto's sorted keys), compact, no extras;
    # the protected header and the AAD as Go's encoding/json writes a map: sorted, compact.
    document = json.loads(minted)
    assert list(document) == ["protected", "aad", "encrypted_key", "iv", "ciphertext", "tag"]
    assert minted == full_serialize(document)
    assert unb64u(document["protected"]) == go_json({"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": "v1"})
    assert unb64u(document["aad"]) == go_json(json.loads(unb64u(document["aad"])))


@pytest.mark.parametrize(
    "iat, exp",
    [
        ("2024-05-01T12:00:00Z", "2024-05-01T12:15:00Z"),  # Dashboard in a UTC container
        ("2024-05-01T14:00:00+02:00", "2024-05-01T14:15:00+02:00"),  # time.RFC3339 in a local zone
    ],
)
def test_we_accept_what_the_dashboards_go_jose_mints(rsa_key, private, iat, exp):
    sa = fake_jwt({"exp": 1714568400})
    # Go: json.Marshal(map[Claim]string{...}) sorts keys; go-jose puts alg+enc (no kid) in the protected header.
    aad = go_json({"iat": iat, "exp": exp})
    assert aad.startswith(b'{"exp":')
    protected = b'{"alg":"RSA-OAEP-256","enc":"A256GCM"}'
    text = full_serialize(seal(rsa_key.public_key(), protected, aad, go_json({"token": sa})))

    envelope = sessions.parse(text)
    assert envelope.kid is None
    assert envelope.claims.cluster is None
    assert envelope.claims.issued_at == T0
    assert envelope.claims.expires_at == T0 + timedelta(minutes=15)
    assert envelope.claims.auth_time == envelope.claims.issued_at
    assert envelope.claims.reviewed_at is None
    assert sessions.decrypt(envelope, private) == sa


def test_we_accept_a_dashboard_token_without_exp(rsa_key, private):
    # The Dashboard omits exp when its token TTL is 0.
    text = full_serialize(
        seal(
            rsa_key.public_key(),
            b'{"alg":"RSA-OAEP-256","enc":"A256GCM"}',
            go_json({"iat": "2024-05-01T12:00:00Z"}),
            go_json({"token": "a.b.c"}),
        )
    )
    envelope = sessions.parse(text)
    assert envelope.claims.expires_at is None
    assert sessions.decrypt(envelope, private) == "a.b.c"


# ------------------------------------------------------------------ hostile tokens: envelope shape

def test_compact_serialization_is_rejected(rsa_key, private, minted):
    doc = json.loads(minted)
    compact = ".".join(doc[k] for k in ("protected", "encrypted_key", "iv", "ciphertext", "tag"))
    assert refused_by_parse(compact)
    # And a genuine compact JWE made by a library, which has no AAD member at all:
    token = jwe.JWE(b'{"token":"a.b.c"}', protected='{"alg":"RSA-OAEP-256","enc":"A256GCM"}')
    token.add_recipient(jwk.JWK.from_pyca(rsa_key.public_key()))
    assert refused_by_parse(token.serialize(compact=True))


def test_a_correctly_encrypted_token_without_aad_is_rejected(rsa_key, private):
    text = full_serialize(seal(rsa_key.public_key(), GOOD_HEADER, None, go_json({"token": "a.b.c"})))
    assert "aad" not in json.loads(text)
    assert refused_by_parse(text)


@pytest.mark.parametrize(
    "extra",
    [
        {"header": {}},
        {"header": {"kid": "v1"}},
        {"unprotected": {}},
        {"unprotected": {"jku": "https://evil.example/keys"}},
        {"recipients": []},
        {"header": ""},  # string-valued extras: caught by the member check itself, not a type check
        {"kid": "v1"},
        {"zip": "DEF"},
    ],
)
def test_extra_top_level_members_are_rejected(minted, private, extra):
    assert not rejected(minted, private)  # the base token is good
    doc = json.loads(minted)
    doc.update(extra)
    assert refused_by_parse(json.dumps(doc))


def test_general_serialization_with_recipients_is_rejected(minted, private):
    doc = json.loads(minted)
    general = {k: doc[k] for k in ("protected", "aad", "iv", "ciphertext", "tag")}
    general["recipients"] = [{"encrypted_key": doc["encrypted_key"]}]
    assert refused_by_parse(json.dumps(general))


@pytest.mark.parametrize("member", ["protected", "aad", "encrypted_key", "iv", "ciphertext", "tag"])
def test_each_missing_member_is_rejected(minted, private, member):
    doc = json.loads(minted)
    del doc[member]
    assert refused_by_parse(json.dumps(doc))


@pytest.mark.parametrize("member", ["protected", "aad", "encrypted_key", "iv", "ciphertext", "tag"])
def test_a_non_string_member_is_rejected(minted, private, member):
    doc = json.loads(minted)
    doc[member] = {"value": doc[member]}
    assert refused_by_parse(json.dumps(doc))


@pytest.mark.parametrize("value", ["[]", "null", '"a string"', "42", "", "   ", "{}"])
def test_non_object_documents_are_rejected(private, value):
    assert refused_by_parse(value)


@pytest.mark.parametrize("value", [None, 42, b'{"protected":""}', {"protected": ""}, ["x"]])
def test_non_string_input_is_rejected(private, value):
    with pytest.raises(InvalidToken):
        sessions.parse(value)


def test_over_long_but_otherwise_valid_token_is_rejected(public, private):
    long_text = sessions.mint(fake_jwt(size=sessions.MAX_TOKEN_CHARS), claims(), public, "v1")
    assert len(long_text) > sessions.MAX_TOKEN_CHARS
    assert refused_by_parse(long_text)


def test_a_long_token_under_the_limit_still_works(public, private):
    sa = fake_jwt(size=sessions.MAX_TOKEN_CHARS // 2)
    text = sessions.mint(sa, claims(), public, "v1")
    assert len(text) <= sessions.MAX_TOKEN_CHARS
    assert sessions.decrypt(sessions.parse(text), private) == sa


def test_100000_deep_nested_json_is_rejected(private):
    assert refused_by_parse("[" * 100_000 + "]" * 100_000)
    assert refused_by_parse('{"a":' * 100_000 + "1" + "}" * 100_000)


def test_deep_nesting_inside_the_length_limit_is_rejected(minted, private):
    # Deep enough to blow Python's recursion limit but short enough to pass the length check.
    assert refused_by_parse("[" * 8000 + "]" * 8000)
    doc = json.loads(minted)
    doc["protected"] = b64u(b"[" * 5000 + b"]" * 5000)
    assert refused_by_parse(json.dumps(doc))
    doc = json.loads(minted)
    doc["aad"] = b64u(b'{"iat":' * 3000 + b'"x"' + b"}" * 3000)
    assert refused_by_parse(json.dumps(doc))


def test_duplicate_top_level_members_are_rejected(rsa_key, private, minted):
    doc = json.loads(minted)
    # Both aad values are the genuine one: a last-wins or first-wins parser would accept this.
    text = minted[:-1] + ',"aad":' + json.dumps(doc["aad"]) + "}"
    assert json.loads(text) == doc
    assert refused_by_parse(text)


# ------------------------------------------------------------------ hostile tokens: protected header

@pytest.mark.parametrize(
    "header",
    [
        {"alg": "RSA1_5", "enc": "A256GCM"},
        {"alg": "RSA-OAEP", "enc": "A256GCM"},
        {"alg": "RSA-OAEP-256", "enc": "A128GCM"},
        {"alg": "RSA-OAEP-256", "enc": "A256CBC-HS512"},
    ],
)
def test_other_algorithms_made_by_a_real_library_are_rejected(rsa_key, private_jwk, header):
    # jwcrypto itself would happily decrypt these with our key; we must not.
    token = jwe.JWE(
        go_json({"token": "a.b.c"}),
        protected=json.dumps(header),
        aad=good_aad(),
        algs=[header["alg"], header["enc"]],
    )
    token.add_recipient(jwk.JWK.from_pyca(rsa_key.public_key()))
    text = token.serialize()
    lenient = jwe.JWE(algs=[header["alg"], header["enc"]])
    lenient.deserialize(text, private_jwk)
    assert json.loads(lenient.payload) == {"token": "a.b.c"}
    assert refused_by_parse(text)


def test_dir_algorithm_is_rejected(private):
    secret = jwk.JWK.generate(kty="oct", size=256)
    token = jwe.JWE(
        go_json({"token": "a.b.c"}), protected='{"alg":"dir","enc":"A256GCM"}', aad=good_aad(), algs=["dir", "A256GCM"]
    )
    token.add_recipient(secret)
    assert refused_by_parse(token.serialize())


@pytest.mark.parametrize(
    "extra",
    [
        {"crit": ["exp"], "exp": 1},
        {"jku": "https://evil.example/jwks"},
        {"jwk": {"kty": "oct", "k": "AAAA"}},
        {"x5u": "https://evil.example/cert"},
        {"x5c": ["MIIB"]},
        {"typ": "JWE"},
        {"cty": "JWT"},
        {"epk": {}},
    ],
)
def test_extra_protected_header_parameters_are_rejected(rsa_key, private, extra):
    header = {"alg": "RSA-OAEP-256", "enc": "A256GCM", **extra}
    text = hand_sealed(rsa_key, protected=json.dumps(header).encode())
    assert json.loads(cryptography_jwe.open_token(text, rsa_key)) == {"token": "a.b.c"}  # well formed otherwise
    assert refused_by_parse(text)


def test_zip_in_the_protected_header_is_rejected(rsa_key, private_jwk):
    deflated = zlib.compressobj(wbits=-15)
    body = deflated.compress(go_json({"token": "a.b.c"})) + deflated.flush()
    header = b'{"alg":"RSA-OAEP-256","enc":"A256GCM","zip":"DEF"}'
    text = hand_sealed(rsa_key, protected=header, plaintext=body)
    lenient = jwe.JWE(algs=["RSA-OAEP-256", "A256GCM"])
    lenient.deserialize(text, private_jwk)  # a general-purpose library inflates it
    assert json.loads(lenient.payload) == {"token": "a.b.c"}
    assert refused_by_parse(text)


@pytest.mark.parametrize(
    "protected",
    [
        b'{"alg":"RSA-OAEP-256","enc":"A256GCM","enc":"A256GCM"}',
        b'{"alg":"RSA-OAEP-256","alg":"RSA-OAEP-256","enc":"A256GCM"}',
        b'{"alg":"RSA-OAEP-256","enc":"A256GCM","kid":"v1","kid":"v2"}',
    ],
)
def test_duplicate_protected_header_members_are_rejected(rsa_key, private, protected):
    assert refused_by_parse(hand_sealed(rsa_key, protected=protected))


@pytest.mark.parametrize(
    "protected",
    [
        b'{"alg":"RSA-OAEP-256"}',
        b'{"enc":"A256GCM"}',
        b'{"alg":"rsa-oaep-256","enc":"A256GCM"}',
        b'{"alg":"RSA-OAEP-256","enc":"A256GCM","kid":""}',
        b'{"alg":"RSA-OAEP-256","enc":"A256GCM","kid":7}',
        b'["RSA-OAEP-256","A256GCM"]',
        b"not json",
    ],
)
def test_malformed_protected_headers_are_rejected(rsa_key, private, protected):
    assert refused_by_parse(hand_sealed(rsa_key, protected=protected))


def test_null_kid_is_rejected(rsa_key, private):
    assert rejected(hand_sealed(rsa_key, protected=b'{"alg":"RSA-OAEP-256","enc":"A256GCM","kid":null}'), private)


def test_the_hand_sealed_baseline_is_accepted(rsa_key, private):
    # Guards the tests above: the helper makes tokens we accept when nothing is wrong with them.
    envelope = sessions.parse(hand_sealed(rsa_key))
    assert envelope.kid == "v1"
    assert sessions.decrypt(envelope, private) == "a.b.c"


# ------------------------------------------------------------------ hostile tokens: AAD

@pytest.mark.parametrize(
    "aad",
    [
        b'["2024-05-01T12:00:00Z"]',
        b'"2024-05-01T12:00:00Z"',
        b"null",
        b'{"iat":1714564800}',
        b'{"iat":"2024-05-01T12:00:00Z","exp":1714565700}',
        b'{"iat":"2024-05-01T12:00:00Z","cluster":null}',
        b'{"iat":"2024-05-01T12:00:00Z","cluster":["prod-eu"]}',
        b'{"iat":"2024-05-01T12:00:00Z","cluster":""}',
        b'{"exp":"2024-05-01T12:15:00Z"}',  # no iat
        b'{"iat":"2024-05-01T12:00:00Z","sub":"admin"}',  # unknown member
        b'{"iat":"2024-05-01T12:00:00Z","Exp":"2024-05-01T12:15:00Z"}',
        b'{"iat":"1714564800"}',
        b'{"iat":"2024-05-01 12:00:00Z"}',
        b'{"iat":"2024-05-01T12:00:00"}',
        b'{"iat":"2024-05-01"}',
        b'{"iat":"2024-13-01T12:00:00Z"}',
        b'{"iat":"2024-05-01T12:00:00Z","exp":"tomorrow"}',
        b'{"iat":"2024-05-01T12:00:00Z","auth_time":"yesterday"}',
        b'{"iat":"2024-05-01T12:00:00Z","reviewed_at":""}',
        b'{"iat":"\xd9\xa2\xd9\xa0\xd9\xa2\xd9\xa4-05-01T12:00:00Z"}',  # Arabic-Indic digits
        b"",
        b"\xff\xfe",
        b'{"iat":"2024-05-01T12:00:00Z",}',
    ],
)
def test_aad_that_is_not_an_object_of_known_rfc3339_strings_is_rejected(rsa_key, private, aad):
    assert refused_by_parse(hand_sealed(rsa_key, aad=aad))


@pytest.mark.parametrize(
    "aad",
    [
        b'{"iat":"2024-05-01T12:00:00Z","exp":"2024-05-01T12:15:00Z","exp":"2099-01-01T00:00:00Z"}',
        b'{"iat":"2024-05-01T12:00:00Z","cluster":"prod-eu","cluster":"other"}',
        b'{"iat":"2024-05-01T12:00:00Z","iat":"2024-05-01T12:00:00Z"}',
    ],
)
def test_duplicate_aad_members_are_rejected(rsa_key, private, aad):
    assert refused_by_parse(hand_sealed(rsa_key, aad=aad))


def test_aad_claims_are_readable_before_decryption_but_tampering_fails_decryption(minted, private, sa_token):
    doc = json.loads(minted)
    fields = json.loads(unb64u(doc["aad"]))
    fields["exp"] = "2099-01-01T00:00:00Z"  # an attacker extends the session
    doc["aad"] = b64u(go_json(fields))
    envelope = sessions.parse(json.dumps(doc))
    assert envelope.claims.expires_at == datetime(2099, 1, 1, tzinfo=timezone.utc)  # parse alone cannot tell
    with pytest.raises(InvalidToken):
        sessions.decrypt(envelope, private)


def test_tampered_cluster_fails_decryption(minted, private):
    doc = json.loads(minted)
    fields = json.loads(unb64u(doc["aad"]))
    fields["cluster"] = "other-cluster"
    doc["aad"] = b64u(go_json(fields))
    assert rejected(json.dumps(doc), private)


def test_swapping_the_aad_between_two_genuine_tokens_fails(public, private, sa_token):
    a = json.loads(sessions.mint(sa_token, claims(), public, "v1"))
    b = json.loads(sessions.mint(sa_token, claims(expires_at=T0 + timedelta(days=365)), public, "v1"))
    a["aad"] = b["aad"]
    assert rejected(json.dumps(a), private)


# ------------------------------------------------------------------ hostile tokens: binary members

def test_truncated_tag_is_rejected(minted, private):
    doc = json.loads(minted)
    doc["tag"] = b64u(unb64u(doc["tag"])[:15])
    assert refused_by_parse(json.dumps(doc))
    doc["tag"] = b64u(unb64u(json.loads(minted)["tag"])[:12])
    assert refused_by_parse(json.dumps(doc))


@pytest.mark.parametrize("iv_length", [8, 11, 13, 16])
def test_iv_of_the_wrong_length_is_rejected_even_when_correctly_encrypted(rsa_key, private, iv_length):
    members = seal(rsa_key.public_key(), GOOD_HEADER, good_aad(), go_json({"token": "a.b.c"}), iv=os.urandom(iv_length))
    text = full_serialize(members)
    assert json.loads(cryptography_jwe.open_token(text, rsa_key)) == {"token": "a.b.c"}  # GCM itself accepts it
    assert refused_by_parse(text)


def test_empty_iv_is_rejected(minted, private):
    doc = json.loads(minted)
    doc["iv"] = ""
    assert refused_by_parse(json.dumps(doc))


@pytest.mark.parametrize("member", ["protected", "aad", "encrypted_key", "iv", "ciphertext", "tag"])
def test_base64_padding_is_rejected(minted, private, member):
    doc = json.loads(minted)
    raw = unb64u(doc[member])
    padded = base64.urlsafe_b64encode(raw).decode()
    if padded == doc[member]:
        padded = doc[member] + "===="  # already a multiple of 4: add a padding block
    doc[member] = padded
    assert refused_by_parse(json.dumps(doc))


@pytest.mark.parametrize("member", ["encrypted_key"])
def test_standard_base64_alphabet_is_rejected(minted, private, member):
    doc = json.loads(minted)
    standard = base64.b64encode(unb64u(doc[member])).decode().rstrip("=")
    assert standard != doc[member]  # 256 random bytes: '+' or '/' is all but certain
    doc[member] = standard
    assert refused_by_parse(json.dumps(doc))


@pytest.mark.parametrize("junk", [" ", "\n", "\t", "!", ".", "=", "\u00e9", "\\u0041"])
@pytest.mark.parametrize("member", ["protected", "aad", "ciphertext", "tag"])
def test_illegal_characters_in_base64_are_rejected(minted, private, member, junk):
    doc = json.loads(minted)
    value = doc[member]
    doc[member] = value[:4] + junk + value[4:]
    assert refused_by_parse(json.dumps(doc))


def test_encrypted_key_of_the_wrong_length_is_rejected(minted, private):
    doc = json.loads(minted)
    doc["encrypted_key"] = b64u(unb64u(doc["encrypted_key"])[:255])
    assert refused_by_parse(json.dumps(doc))
    doc["encrypted_key"] = ""
    assert refused_by_parse(json.dumps(doc))


def test_flipped_ciphertext_bit_is_rejected(minted, private):
    doc = json.loads(minted)
    raw = bytearray(unb64u(doc["ciphertext"]))
    raw[0] ^= 1
    doc["ciphertext"] = b64u(bytes(raw))
    assert rejected(json.dumps(doc), private)


def test_another_key_cannot_open_the_token(minted, other_rsa_key):
    with pytest.raises(InvalidToken):
        sessions.decrypt(sessions.parse(minted), other_rsa_key)


def test_a_public_only_key_cannot_open_the_token(minted, public, private_jwk):
    # decrypt needs the private key: a public one (as a `cryptography` key or a JWK) has no private
    # operation to offer, so passing one is a programming error that fails loudly, never a token
    # handed back and never an InvalidToken that would hide the bug.
    public_only = jwk.JWK.from_pyca(public)
    assert not public_only.has_private and public_only.thumbprint() == private_jwk.thumbprint()
    sessions.mint("a.b.c", claims(), public, "v1")  # the public key object is now a converted JWK too
    for key in (public, public_only):
        with pytest.raises(TypeError):
            sessions.decrypt(sessions.parse(minted), key)
    # And the independent implementation agrees that the public half alone opens nothing.
    with pytest.raises(Exception):
        jwe.JWE(algs=["RSA-OAEP-256", "A256GCM"]).deserialize(minted, public_only)


def test_non_canonical_base64_spelling_of_a_genuine_member_is_rejected(minted, private):
    doc = json.loads(minted)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    tag = doc["tag"]  # 16 bytes -> 22 chars, the last carrying 4 unused bits
    doc["tag"] = tag[:-1] + alphabet[alphabet.index(tag[-1]) ^ 1]
    assert unb64u(doc["tag"]) == unb64u(tag)  # same bytes, different text
    assert rejected(json.dumps(doc), private)


_BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@given(st.text(alphabet=st.sampled_from(_BASE64URL + "+/=. \n\x00é٣"), max_size=24) | st.text(max_size=12))
@settings(max_examples=3000, deadline=None)
def test_a_member_decodes_only_when_it_is_the_one_canonical_base64url_spelling(text):
    """One token, one spelling: unpadded base64url whose re-encoding gives back the same text, and
    nothing else (no padding, no standard alphabet, no spaces, no spare bits set)."""
    canonical = re.fullmatch(r"[A-Za-z0-9_-]*", text) is not None and len(text) % 4 != 1 and b64u(unb64u(text)) == text
    if canonical:
        assert sessions.b64decode(text) == unb64u(text)
    else:
        with pytest.raises(InvalidToken):
            sessions.b64decode(text)


@pytest.mark.parametrize(
    "encode",
    [lambda s: s.encode("utf-16-le"), lambda s: b"\xef\xbb\xbf" + s.encode()],
    ids=["utf-16", "utf-8-bom"],
)
def test_aad_that_is_not_plain_utf8_json_is_rejected(rsa_key, private, encode):
    text = hand_sealed(rsa_key, aad=encode('{"iat":"2024-05-01T12:00:00Z"}'))
    assert rejected(text, private)


# ------------------------------------------------------------------ hostile tokens: plaintext

@pytest.mark.parametrize(
    "plaintext",
    [
        b'{"token":"not-a-jwt"}',
        b'{"token":"a.b"}',
        b'{"token":"a.b.c.d"}',
        b'{"token":"a.b.c\\n"}',
        b'{"token":"a.b.c "}',
        b'{"token":""}',
        b'{"token":123}',
        b'{"token":null}',
        b'{"token":["a.b.c"]}',
        b'{"token":"a.b.c","username":"admin"}',
        b'{"token":"a.b.c","token":"d.e.f"}',
        b'{"Token":"a.b.c"}',
        b"{}",
        b'["a.b.c"]',
        b'"a.b.c"',
        b"a.b.c",
        b"",
        b"\xff",
    ],
)
def test_plaintext_that_is_not_exactly_a_token_object_is_rejected(rsa_key, private, plaintext):
    # Built with jwcrypto directly: a valid JWE in every respect except its payload.
    token = jwe.JWE(plaintext, protected=GOOD_HEADER.decode(), aad=good_aad(), algs=["RSA-OAEP-256", "A256GCM"])
    token.add_recipient(jwk.JWK.from_pyca(rsa_key.public_key()))
    text = token.serialize()
    envelope = sessions.parse(text)  # the envelope is fine
    with pytest.raises(InvalidToken):
        sessions.decrypt(envelope, private)


def test_plaintext_with_a_jwt_built_by_jwcrypto_is_accepted(rsa_key, private):
    token = jwe.JWE(b'{"token":"x.y.z"}', protected=GOOD_HEADER.decode(), aad=good_aad(), algs=["RSA-OAEP-256", "A256GCM"])
    token.add_recipient(jwk.JWK.from_pyca(rsa_key.public_key()))
    text = token.serialize()
    assert list(json.loads(text)) != ["protected", "aad", "encrypted_key", "iv", "ciphertext", "tag"]  # jwcrypto's order
    envelope = sessions.parse(text)
    assert envelope.kid == "v1"
    assert envelope.claims == claims(auth_time=T0, reviewed_at=None)
    assert sessions.decrypt(envelope, private) == "x.y.z"


# ------------------------------------------------------------------ property: any single-character mutation

MUTATION_CHARS = st.characters(min_codepoint=0, max_codepoint=0x2FF) | st.sampled_from(list('"\\{}[]:,=.-_+/ \n'))


def decoded(text: str) -> dict:
    doc = json.loads(text)
    return {k: unb64u(v) for k, v in doc.items()}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_single_character_mutation_is_refused(minted, private, sa_token, data):
    kind = data.draw(st.sampled_from(["replace", "delete", "insert"]))
    position = data.draw(st.integers(min_value=0, max_value=len(minted) - (0 if kind == "insert" else 1)))
    char = data.draw(MUTATION_CHARS)
    if kind == "replace":
        if minted[position] == char:
            return
        mutated = minted[:position] + char + minted[position + 1 :]
    elif kind == "delete":
        mutated = minted[:position] + minted[position + 1 :]
    else:
        mutated = minted[:position] + char + minted[position:]

    try:
        result = sessions.decrypt(sessions.parse(mutated), private)
    except InvalidToken:
        return  # the only acceptable failure
    # Accepted: only tolerable if the mutation changed no byte that matters (JSON whitespace between
    # members; base64 has one spelling per value), and then it must yield the very same token.
    assert result == sa_token
    assert decoded(mutated) == decoded(minted)


# ------------------------------------------------------------------ jwt_expiry

def test_jwt_expiry_reads_exp():
    assert sessions.jwt_expiry(fake_jwt({"exp": 1714568400})) == datetime(2024, 5, 1, 13, 0, tzinfo=timezone.utc)


def test_jwt_expiry_reads_a_real_padded_segment_length():
    # Payload lengths that need 1 and 2 padding characters when decoded.
    for extra in ("", "a", "ab", "abc"):
        token = fake_jwt({"exp": 1714568400, "x": extra})
        assert sessions.jwt_expiry(token) == datetime(2024, 5, 1, 13, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "token",
    [
        fake_jwt(),  # no exp
        fake_jwt({"exp": "1714568400"}),
        fake_jwt({"exp": True}),
        fake_jwt({"exp": None}),
        fake_jwt({"exp": 10**30}),
        fake_jwt({"exp": -(10**30)}),
        "a." + b64u(b'{"exp": NaN}') + ".c",
        "a." + b64u(b'{"exp": Infinity}') + ".c",
        "a." + b64u(b"[1714568400]") + ".c",
        "a." + b64u(b"not json") + ".c",
        "a." + b64u(b"\xff\xfe") + ".c",
        "a.!!!.c",
        "a.b",
        "a",
        "",
        "a..c",
        "a.A.c",
    ],
)
def test_jwt_expiry_is_none_without_a_numeric_exp(token):
    assert sessions.jwt_expiry(token) is None


def test_jwt_expiry_is_none_for_deeply_nested_payload():
    assert sessions.jwt_expiry("a." + b64u(b"[" * 100_000) + ".c") is None
