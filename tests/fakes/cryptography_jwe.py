"""The session JWE composed from `cryptography` primitives alone: the independent implementation.

This is the composition chalicelib.sessions used before it moved onto jwcrypto's algorithm objects
(RFC 7516 §5 for the one pair, RSA-OAEP-256 + A256GCM), kept here, written without chalicelib, so
that every token is checked both ways: the service's tokens must open here, and tokens made here
must open in the service. It mints exactly the service's wire format (flattened JSON in go-jose's
FullSerialize member order, protected header {"alg","enc"[,"kid"]} written compactly, GCM AAD =
ASCII(protected "." aad)); the content key and IV may be given so that a test can compare its
output with the service's byte for byte.
"""
from __future__ import annotations

import base64
import json
import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ALG, ENC = "RSA-OAEP-256", "A256GCM"
OAEP_SHA256 = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
CEK_BYTES, IV_BYTES, TAG_BYTES = 32, 12, 16


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def aad_of(fields: dict[str, str]) -> bytes:
    """The AAD as the Dashboard's Go writes a map[string]string: compact, keys sorted."""
    return json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()


def protected_of(kid: str | None) -> str:
    header = {"alg": ALG, "enc": ENC}
    if kid is not None:
        header["kid"] = kid
    return _b64u(json.dumps(header, separators=(",", ":")).encode())


def mint(
    service_account_token: str,
    aad: bytes,
    public_key: rsa.RSAPublicKey,
    kid: str | None,
    cek: bytes | None = None,
    iv: bytes | None = None,
) -> str:
    """Seal {"token": ...} as the service does, with `cryptography` only."""
    protected, aad_text = protected_of(kid), _b64u(aad)
    cek = AESGCM.generate_key(bit_length=8 * CEK_BYTES) if cek is None else cek
    iv = os.urandom(IV_BYTES) if iv is None else iv
    plaintext = json.dumps({"token": service_account_token}, separators=(",", ":")).encode()
    sealed = AESGCM(cek).encrypt(iv, plaintext, f"{protected}.{aad_text}".encode("ascii"))
    members = {
        "protected": protected,
        "aad": aad_text,
        "encrypted_key": _b64u(public_key.encrypt(cek, OAEP_SHA256)),
        "iv": _b64u(iv),
        "ciphertext": _b64u(sealed[:-TAG_BYTES]),
        "tag": _b64u(sealed[-TAG_BYTES:]),
    }
    return json.dumps(members, separators=(",", ":"))


def content_key(text: str, private_key: rsa.RSAPrivateKey) -> bytes:
    """The content-encryption key a token's encrypted_key carries (RSA-OAEP-256 unwrap)."""
    return private_key.decrypt(_unb64u(json.loads(text)["encrypted_key"]), OAEP_SHA256)


def open_token(text: str, private_key: rsa.RSAPrivateKey) -> bytes:
    """The plaintext of a flattened JWE of the one pair, opened as RFC 7516 §5.2 says.

    Checks only what the algorithms need (the header names the pair, a 256-bit content key, the
    tag); any IV GCM takes is taken: the strictness is the service's business, not the reference's.
    """
    document = json.loads(text)
    header = json.loads(_unb64u(document["protected"]))
    if header.get("alg") != ALG or header.get("enc") != ENC:
        raise ValueError("not RSA-OAEP-256 + A256GCM")
    cek = private_key.decrypt(_unb64u(document["encrypted_key"]), OAEP_SHA256)
    if len(cek) != CEK_BYTES:
        raise ValueError("not a 256-bit content key")
    authenticated = document["protected"] + ("." + document["aad"] if "aad" in document else "")
    sealed = _unb64u(document["ciphertext"]) + _unb64u(document["tag"])
    return AESGCM(cek).decrypt(_unb64u(document["iv"]), sealed, authenticated.encode("ascii"))
