"""What the local check accepts of a login's JWT header, and of a cluster's published key set."""
from __future__ import annotations

import base64
import json

import pytest
from jwcrypto import jwk

from chalicelib import issuers
from chalicelib.clusters import Cluster, NotAuthenticated


def header(value, raw: bytes | None = None) -> str:
    data = raw if raw is not None else json.dumps(value).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode() + ".e30.c2ln"


@pytest.mark.parametrize("value", [
    {"alg": "RS256", "kid": "k"},
    {"alg": "ES256", "kid": "k", "typ": "JWT"},
    {"alg": "RS256"},
])
def test_headers_kubernetes_writes_are_read(value):
    assert issuers._read_header(header(value)) == (value["alg"], value.get("kid"))


@pytest.mark.parametrize("value", [
    {"alg": "none", "kid": "k"},
    {"alg": "HS256", "kid": "k"},
    {"alg": "RS256", "kid": "k", "jku": "https://attacker.example/jwks"},
    {"alg": "RS256", "kid": "k", "jwk": {"kty": "RSA"}},
    {"alg": "RS256", "kid": "k", "x5u": "https://attacker.example/cert"},
    {"alg": "RS256", "kid": "k", "crit": ["b64"], "b64": False},
    {"alg": "RS256", "kid": "k", "typ": "JWE"},
    {"alg": "RS256", "kid": 7},
    {"alg": "RS256", "kid": ""},
    {"alg": "RS256", "kid": "k" * 257},
    {"alg": ["RS256"], "kid": "k"},
    ["RS256"],
    "RS256",
])
def test_any_other_header_is_refused_before_any_cryptography(value):
    with pytest.raises(NotAuthenticated):
        issuers._read_header(header(value))


@pytest.mark.parametrize("raw", [
    b'{"alg":"RS256","alg":"none","kid":"k"}',  # duplicate members: which one would a verifier read?
    b'\xef\xbb\xbf{"alg":"RS256"}',
    b"not json",
    b'{"alg":"RS256"',
])
def test_headers_that_are_not_strict_json_are_refused(raw):
    with pytest.raises(NotAuthenticated):
        issuers._read_header(header(None, raw))


CLUSTER = Cluster(name="c", server=None, ca_data=None, reviewer={})


def rsa_entry(kid: str, private: bool = False) -> dict:
    key = jwk.JWK.generate(kty="RSA", size=2048, kid=kid)
    return json.loads(key.export(private_key=private))


def test_a_published_key_set_keeps_only_public_signing_keys():
    entries = [
        rsa_entry("good"),
        {**rsa_entry("enc"), "use": "enc"},
        rsa_entry("private", private=True),  # a cluster leaking its private key is not ours to use
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        {**rsa_entry("x"), "kid": None},
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        "not an object",
    ]
    assert list(issuers._public_keys(CLUSTER, entries)) == ["good"]


def test_a_published_key_set_is_read_up_to_a_bound():
    entry = rsa_entry("k")
    entries = [{**entry, "kid": f"k{i}"} for i in range(issuers.MAX_KEYS + 10)]
    assert len(issuers._public_keys(CLUSTER, entries)) == issuers.MAX_KEYS


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(key: jwk.JWK, alg: str, header_alg: str | None = None) -> str:
    """A compact JWS signed with `alg` by `key`, its header naming `header_alg` (default: alg)."""
    from jwcrypto.jwa import JWA

    head = b64(json.dumps({"alg": header_alg or alg, "kid": key.get("kid")}).encode())
    payload = b64(json.dumps({"iss": "https://issuer", "sub": "system:serviceaccount:a:b"}).encode())
    signature = JWA.signing_alg(alg).sign(key, f"{head}.{payload}".encode())
    return f"{head}.{payload}.{b64(signature)}"


@pytest.fixture(scope="module")
def keys():
    return {"RS256": jwk.JWK.generate(kty="RSA", size=2048, kid="rsa"),
            "ES256": jwk.JWK.generate(kty="EC", crv="P-256", kid="ec256"),
            "ES384": jwk.JWK.generate(kty="EC", crv="P-384", kid="ec384")}


@pytest.mark.parametrize("alg", ["RS256", "ES256", "ES384"])
def test_a_signature_by_the_published_key_verifies_and_its_claims_are_read(keys, alg):
    public = jwk.JWK(**keys[alg].export_public(as_dict=True))
    token = signed(keys[alg], alg)

    claims = issuers._verified_claims(token, alg, [public])

    assert claims["sub"] == "system:serviceaccount:a:b"


@pytest.mark.parametrize("alg, key_alg", [("RS256", "ES256"), ("ES256", "RS256"), ("ES384", "ES256")])
def test_a_key_of_another_type_or_curve_than_the_header_names_never_verifies(keys, alg, key_alg):
    """The header's alg picks the verifier; a published key of another kind is not tried with it."""
    public = jwk.JWK(**keys[key_alg].export_public(as_dict=True))
    token = signed(keys[key_alg], key_alg, header_alg=alg)

    with pytest.raises(NotAuthenticated) as refused:
        issuers._verified_claims(token, alg, [public])
    assert refused.value.details["check"] == "signature"


def test_an_ec_signature_of_the_wrong_length_is_refused_before_verifying(keys):
    public = jwk.JWK(**keys["ES256"].export_public(as_dict=True))
    head, payload, signature = signed(keys["ES256"], "ES256").split(".")
    padded = b64(base64.urlsafe_b64decode(signature + "==") + b"\0")

    with pytest.raises(NotAuthenticated):
        issuers._verified_claims(f"{head}.{payload}.{padded}", "ES256", [public])


def test_a_token_of_other_than_three_parts_is_refused(keys):
    public = jwk.JWK(**keys["RS256"].export_public(as_dict=True))
    token = signed(keys["RS256"], "RS256")

    for broken in (token + ".extra", token.rsplit(".", 1)[0]):
        with pytest.raises(NotAuthenticated):
            issuers._verified_claims(broken, "RS256", [public])
