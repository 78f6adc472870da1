"""Session tokens: mint and open the Dashboard v2 JWE, strictly. Pure: no I/O, no clock.

Wire format (shared with the Dashboard's go-jose code): flattened JWE JSON serialization,
protected header {"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": ...}, the AAD a JSON object
of strings carrying the session's times, the plaintext the Dashboard's AuthInfo {"token": ...}.

The one algorithm pair runs on jwcrypto's JWA algorithm objects (RSA-OAEP-256 key wrapping,
A256GCM content encryption) with jwcrypto JWK keys, composed as RFC 7516 §5 lays out. Not a
`jwcrypto.jwe.JWE` per token: that object copies its header registry and re-reads the envelope
every time (about 1.6x the crypto of a refresh done with `cryptography` directly, against 1.04x
for the algorithm objects; see docs/design.md). Each `cryptography` key the service holds is converted to a JWK once, not per
token. Tests check every token both ways against a `cryptography`-only composition
(tests/fakes/cryptography_jwe.py), jwcrypto's JWE and a go-jose-shaped builder.

Every byte of a presented token is hostile. `parse` checks the envelope's shape before any
cryptography runs, so jwcrypto only ever sees an envelope it has accepted (and only the two
algorithm objects named here: nothing in a token selects an algorithm), and every way a token can
be wrong raises the same `InvalidToken`, so an answer never tells an attacker which check failed.
"""
from __future__ import annotations

import base64
import binascii
import functools
import json
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timezone

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import rsa
from jwcrypto.common import JWException
from jwcrypto.jwa import JWA
from jwcrypto.jwk import JWK

ALGORITHM = "RSA-OAEP-256"
ENCRYPTION = "A256GCM"
MAX_TOKEN_CHARS = 16 * 1024

_MEMBERS = {"protected", "aad", "encrypted_key", "iv", "ciphertext", "tag"}
_HEADER_MEMBERS = {"alg", "enc", "kid"}
_CLAIM_MEMBERS = {"iat", "exp", "cluster", "auth_time", "reviewed_at"}
# base64url to the standard alphabet; "+", "/" and "=" are not base64url, so they become a byte strict mode refuses
_B64URL_TO_STANDARD = bytes.maketrans(b"-_+/=", b"+/!!!")
_SPARE_BITS = {0: 0, 2: 0b1111, 3: 0b11}
_B64URL_VALUES = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})")
_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_MAX_KID_CHARS = 128
_IV_BYTES, _TAG_BYTES = 12, 16
# The one pair, by name, built once: nothing in a token ever chooses an algorithm object.
_KEY_WRAP = JWA.keymgmt_alg(ALGORITHM)  # RSAES-OAEP, SHA-256 and MGF1-SHA-256
_CONTENT = JWA.encryption_alg(ENCRYPTION)  # AES-256-GCM, 96-bit IV, 128-bit tag
_CEK_BITS = _CONTENT.wrap_key_size  # 256: unwrap refuses a content key of any other length
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))
_GO_MAP_JSON = json.JSONEncoder(separators=(",", ":"), sort_keys=True)  # how Go writes a map[string]string


class InvalidToken(Exception):
    """Not a session token of ours. Deliberately carries no detail for the client."""


class SessionExpired(Exception):
    """A genuine session that may not continue: past exp, past its lifetime, or its ServiceAccount is gone."""


@dataclass(frozen=True)
class Claims:
    """What the AAD says about a session. Authenticated by the AEAD tag, readable without the key."""

    issued_at: datetime
    expires_at: datetime | None
    cluster: str | None
    auth_time: datetime
    reviewed_at: datetime | None


@dataclass(frozen=True)
class Envelope:
    """A presented token whose shape has been checked but whose contents are not yet trusted."""

    kid: str | None
    claims: Claims
    authenticated_data: bytes  # ASCII(protected "." aad), what the GCM tag covers
    encrypted_key: bytes
    iv: bytes
    ciphertext: bytes
    tag: bytes


# A container writes and reads the same few instants over and over (this second, each session's
# auth_time), so both directions are memoised.
@functools.lru_cache(maxsize=1024)
def format_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds")[: -len("+00:00")] + "Z"


@functools.lru_cache(maxsize=1024)
def parse_time(text: object) -> datetime:
    if not isinstance(text, str) or not _RFC3339.fullmatch(text):
        raise InvalidToken()
    try:
        moment = datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        raise InvalidToken() from None
    if moment.tzinfo is timezone.utc:
        return moment
    try:
        return moment.astimezone(timezone.utc)
    except (ValueError, OverflowError):  # out of datetime's range once moved to UTC
        raise InvalidToken() from None


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise InvalidToken()
    return result


_STRICT_JSON = json.JSONDecoder(object_pairs_hook=_reject_duplicates)  # built once: json.loads(hook=...) builds one per call


def strict_json(text: str | bytes) -> object:
    """JSON read strictly (plain UTF-8, no duplicate members), or InvalidToken: for every hostile token."""
    try:
        # bytes must be plain UTF-8: json.loads would also take UTF-16/32 and skip a BOM
        document = text.decode("utf-8") if isinstance(text, bytes) else text
        return _STRICT_JSON.decode(document)
    except (ValueError, RecursionError):
        raise InvalidToken() from None


def b64decode(text: object) -> bytes:
    """base64url without padding, strictly (one spelling per value), or InvalidToken."""
    if not isinstance(text, str):
        raise InvalidToken()
    try:
        standard = text.encode("ascii").translate(_B64URL_TO_STANDARD)
        # strict mode refuses any byte outside the alphabet, and a length of 4n+1
        data = binascii.a2b_base64(standard + b"=" * (-len(standard) % 4), strict_mode=True)
    except (UnicodeEncodeError, binascii.Error):
        raise InvalidToken() from None
    spare_bits = _SPARE_BITS[len(text) % 4]
    if spare_bits and _B64URL_VALUES.index(text[-1]) & spare_bits:
        raise InvalidToken()  # non-zero spare bits: one token, one spelling
    return data


def strict_json_member(member: object) -> object:
    """One base64url member of a presented token (a JWS or JWE header, an AAD) as strict JSON."""
    return strict_json(b64decode(member))


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _claims_from_aad(aad: bytes) -> Claims:
    fields = strict_json(aad)
    if (
        not isinstance(fields, dict)
        or not set(fields) <= _CLAIM_MEMBERS
        or "iat" not in fields
        or not all(isinstance(v, str) for v in fields.values())
    ):
        raise InvalidToken()
    issued_at = parse_time(fields["iat"])
    cluster = fields.get("cluster")
    if cluster is not None and not cluster:
        raise InvalidToken()
    return Claims(
        issued_at=issued_at,
        expires_at=parse_time(fields["exp"]) if "exp" in fields else None,
        cluster=cluster,
        # A Dashboard-minted token has no auth_time: its session began no earlier than iat.
        auth_time=parse_time(fields["auth_time"]) if "auth_time" in fields else issued_at,
        reviewed_at=parse_time(fields["reviewed_at"]) if "reviewed_at" in fields else None,
    )


def _aad_from_claims(claims: Claims) -> bytes:
    fields = {"iat": format_time(claims.issued_at), "auth_time": format_time(claims.auth_time)}
    if claims.expires_at is not None:
        fields["exp"] = format_time(claims.expires_at)
    if claims.cluster is not None:
        fields["cluster"] = claims.cluster
    if claims.reviewed_at is not None:
        fields["reviewed_at"] = format_time(claims.reviewed_at)
    return _GO_MAP_JSON.encode(fields).encode()


@functools.lru_cache(maxsize=64)
def _kid_from_header(protected: str) -> str | None:
    """The kid of a protected header that names our one algorithm pair (memoised: a few keys, a few headers)."""
    header = strict_json(b64decode(protected))
    if (
        not isinstance(header, dict)
        or not set(header) <= _HEADER_MEMBERS
        or header.get("alg") != ALGORITHM
        or header.get("enc") != ENCRYPTION
    ):
        raise InvalidToken()
    kid = header.get("kid")
    if "kid" in header and (not isinstance(kid, str) or not 0 < len(kid) <= _MAX_KID_CHARS):
        raise InvalidToken()
    return kid


def parse(text: object) -> Envelope:
    """Check a presented token's envelope: only what the Dashboard and we ever mint passes."""
    if not isinstance(text, str) or not 0 < len(text) <= MAX_TOKEN_CHARS:
        raise InvalidToken()
    document = strict_json(text)
    if not isinstance(document, dict) or set(document) != _MEMBERS:
        raise InvalidToken()
    if not all(isinstance(value, str) for value in document.values()):
        raise InvalidToken()
    kid = _kid_from_header(document["protected"])
    iv, tag = b64decode(document["iv"]), b64decode(document["tag"])
    encrypted_key = b64decode(document["encrypted_key"])
    if len(iv) != _IV_BYTES or len(tag) != _TAG_BYTES or len(encrypted_key) not in (256, 384, 512):
        raise InvalidToken()
    return Envelope(
        kid=kid,
        claims=_claims_from_aad(b64decode(document["aad"])),
        authenticated_data=f"{document['protected']}.{document['aad']}".encode("ascii"),
        encrypted_key=encrypted_key,
        iv=iv,
        ciphertext=b64decode(document["ciphertext"]),
        tag=tag,
    )


# jwcrypto JWKs of the `cryptography` keys the service holds (a few per key set), converted once per key
# object instead of once per token. Keyed by identity: the entry holds the key itself, so its id cannot
# be reused while the entry lives; the oldest entries go once a few key sets have come and gone.
_JWK_MEMO: dict[int, tuple[object, JWK, bool]] = {}  # id(key) -> (key, its JWK, whether it is private)
_JWK_MEMO_SIZE = 16
_JWK_MEMO_LOCK = threading.Lock()


def _jwk(key: JWK | rsa.RSAPrivateKey | rsa.RSAPublicKey, private: bool) -> JWK:
    """The key as a jwcrypto JWK: given as one, or converted the first time this key object is seen.

    A public key where a private one is needed is a programming error: TypeError, never InvalidToken.
    """
    entry = _JWK_MEMO.get(id(key))
    if entry is not None and entry[0] is key:
        converted, has_private = entry[1], entry[2]
    elif isinstance(key, JWK):
        converted, has_private = key, key.has_private
    else:
        converted, has_private = _convert(key)
    if private and not has_private:
        raise TypeError("opening a token needs the private key")
    return converted


def _convert(key: rsa.RSAPrivateKey | rsa.RSAPublicKey) -> tuple[JWK, bool]:
    if not isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        raise TypeError(f"not an RSA key: {type(key).__name__}")
    has_private = isinstance(key, rsa.RSAPrivateKey)
    converted = JWK()
    # The numbers come from a key already loaded (keys.parse_secret_value proves each pair with a
    # round trip); OpenSSL's full check would cost tens of ms again for nothing.
    converted.unsafe_skip_rsa_key_validation = True
    converted.import_from_pyca(key)
    # Build the key object the operations use now, not on the first token.
    converted.get_op_key("unwrapKey" if has_private else "wrapKey")
    with _JWK_MEMO_LOCK:
        while len(_JWK_MEMO) >= _JWK_MEMO_SIZE:
            del _JWK_MEMO[next(iter(_JWK_MEMO))]
        _JWK_MEMO[id(key)] = (key, converted, has_private)
    return converted, has_private


def decrypt(envelope: Envelope, private_key: JWK | rsa.RSAPrivateKey) -> str:
    """The ServiceAccount token sealed in the envelope; InvalidToken if this key did not seal it.

    Only for an Envelope from `parse`: jwcrypto sees nothing the strict parser has not accepted.
    """
    key = _jwk(private_key, private=True)
    try:
        content_key = _KEY_WRAP.unwrap(key, _CEK_BITS, envelope.encrypted_key, None)
        plaintext = _CONTENT.decrypt(
            content_key, envelope.authenticated_data, envelope.iv, envelope.ciphertext, envelope.tag
        )
    except (ValueError, InvalidTag, JWException):
        raise InvalidToken() from None
    auth_info = strict_json(plaintext)
    if not isinstance(auth_info, dict) or set(auth_info) != {"token"}:
        raise InvalidToken()
    service_account_token = auth_info["token"]
    if not isinstance(service_account_token, str) or not _JWT.fullmatch(service_account_token):
        raise InvalidToken()
    return service_account_token


def mint(
    service_account_token: str, claims: Claims, public_key: JWK | rsa.RSAPublicKey, kid: str | None
) -> str:
    """Seal a ServiceAccount token into a session token the Dashboard v2 backend can also open."""
    key = _jwk(public_key, private=False)
    protected = _protected_header(kid)
    aad = _b64encode(_aad_from_claims(claims))
    plaintext = _COMPACT_JSON.encode({"token": service_account_token}).encode()
    wrapped = _KEY_WRAP.wrap(key, _CEK_BITS, None, None)  # a fresh random content key, RSA-OAEP-256 wrapped
    iv, ciphertext, tag = _CONTENT.encrypt(wrapped["cek"], f"{protected}.{aad}".encode("ascii"), plaintext)
    # What json.dumps would write, in go-jose's FullSerialize member order: base64url needs no escaping.
    return (
        f'{{"protected":"{protected}","aad":"{aad}","encrypted_key":"{_b64encode(wrapped["ek"])}",'
        f'"iv":"{_b64encode(iv)}","ciphertext":"{_b64encode(ciphertext)}","tag":"{_b64encode(tag)}"}}'
    )


@functools.lru_cache(maxsize=16)
def _protected_header(kid: str | None) -> str:
    """The protected header, base64url: one per key, so built once per key."""
    header = {"alg": ALGORITHM, "enc": ENCRYPTION}
    if kid is not None:
        header["kid"] = kid
    return _b64encode(_COMPACT_JSON.encode(header).encode())


def jwt_expiry(service_account_token: str) -> datetime | None:
    """The `exp` a JWT declares, read without verification.

    Only ever called on a token the cluster has vouched for (or that we sealed ourselves),
    and only to shorten a session, never to lengthen one.
    """
    try:
        payload = json.loads(b64decode(service_account_token.split(".")[1]))
        exp = payload.get("exp") if isinstance(payload, dict) else None
        if isinstance(exp, (int, float)) and not isinstance(exp, bool):
            return datetime.fromtimestamp(exp, timezone.utc)
    except (InvalidToken, ValueError, IndexError, OverflowError, OSError, RecursionError):
        pass
    return None


def jwt_subject(service_account_token: str) -> str | None:
    """The `sub` a JWT declares, read without verification: for the log, about a token we sealed."""
    try:
        payload = json.loads(b64decode(service_account_token.split(".")[1]))
        subject = payload.get("sub") if isinstance(payload, dict) else None
        return subject if isinstance(subject, str) else None
    except (InvalidToken, ValueError, IndexError, RecursionError):
        return None


def looks_like_jwt(text: object) -> bool:
    return isinstance(text, str) and len(text) <= MAX_TOKEN_CHARS and bool(_JWT.fullmatch(text))
