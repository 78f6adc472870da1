"""The Dashboard's side of the session-token format, written independently of chalicelib.

RFC 7516 RSA-OAEP-256 + A256GCM with `cryptography` alone, for any protected-header and AAD bytes,
serialized as go-jose's FullSerialize writes a flattened JWE. Tests build the Dashboard's tokens
(and broken ones) with it, and check the service's tokens against it.
"""
from __future__ import annotations

import base64
import json
import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

OAEP_SHA256 = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
# go-jose's rawJSONWebEncryption field order
_MEMBER_ORDER = ["protected", "unprotected", "header", "recipients", "aad", "encrypted_key", "iv", "ciphertext", "tag"]


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def go_json(obj) -> bytes:
    """What Go's encoding/json writes for a map[string]string or a struct: compact, maps sorted."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def seal(
    public_key: rsa.RSAPublicKey,
    protected: bytes,
    aad: bytes | None,
    plaintext: bytes,
    iv: bytes | None = None,
    cek: bytes | None = None,
) -> dict:
    """Encrypt as RFC 7516 says, for any header and AAD bytes. Returns the flattened members."""
    cek = cek or AESGCM.generate_key(bit_length=256)
    iv = os.urandom(12) if iv is None else iv
    members = {"protected": b64u(protected)}
    gcm_aad = members["protected"]
    if aad is not None:
        members["aad"] = b64u(aad)
        gcm_aad += "." + members["aad"]
    sealed = AESGCM(cek).encrypt(iv, plaintext, gcm_aad.encode("ascii"))
    members.update(
        encrypted_key=b64u(public_key.encrypt(cek, OAEP_SHA256)),
        iv=b64u(iv),
        ciphertext=b64u(sealed[:-16]),
        tag=b64u(sealed[-16:]),
    )
    return members


def full_serialize(members: dict) -> str:
    """go-jose's FullSerialize of a flattened JWE: its member order, compact; members it does not
    know (hostile tests add some) follow in the order given."""
    ordered = {k: members[k] for k in _MEMBER_ORDER if k in members}
    ordered.update({k: v for k, v in members.items() if k not in ordered})
    return json.dumps(ordered, separators=(",", ":"))
