"""Logging that cannot leak credentials, whatever a library logs at DEBUG.

The kubernetes client logs whole response bodies at DEBUG, and a TokenReview answer echoes the
token under review; botocore's signer logs what an EKS reviewer token is made of. Rather than
trusting every logger's level, every record is scrubbed on its way out: anything shaped like a JWT,
a JWE, a PEM block, a bearer header or AWS SigV4 signing material is replaced, in the message, in
the traceback text and in the exception a formatter may read directly.
"""
from __future__ import annotations

import logging
import re

REDACTED = "[redacted]"
_SECRET_MEMBERS = "encrypted_key|ciphertext|token|jweToken|priv|pub|csrf|SecretString|SecretBinary"
_SECRETS = re.compile(
    r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*"  # JWT (compact JOSE)
    r"|-----BEGIN [A-Z ]+-----.*?-----END [A-Z ]+-----"  # PEM blocks
    r"|(?i:bearer)\s+[^\s'\",]+"  # Authorization header values
    rf"|\\*\"(?:{_SECRET_MEMBERS})\\*\"\s*:\s*\"(?:[^\"\\]|\\.)*\""  # JSON members, JSON nested in JSON
    rf"|'(?:{_SECRET_MEMBERS})'\s*:\s*'(?:[^'\\]|\\.)*'"  # their Python reprs
    r"|k8s-aws-v1\.[A-Za-z0-9_-]+",  # an EKS bearer token: base64url of a presigned STS URL
    re.DOTALL,
)
# SigV4: the parts of a presigned URL (and of an Authorization header) from which an EKS token can be
# rebuilt, whatever the spelling: a query's "X-Amz-Signature=...", a canonical request's
# "x-amz-security-token:...", a header dict's "'X-Amz-Security-Token': b'...'", JSON, or the signer's
# own "Signature:\n...". The name stays, so a line still says what was there.
_SIGV4 = re.compile(
    r"(?i:((?:x-amz-)?(?:credential|security-token|signature))"
    r"(['\"]?\s*(?:=|%3D|:)\s*"
    r"(?!(?:\[\s*)?b?['\"]?\[?redacted\])"  # not its own "[redacted]": every root handler filters the record
    r"(?:\[\s*)?b?['\"]?))"
    r"[^\s'\",&;\[\]\\]+"
)


_SIGV4_NAMES = ("credential", "security-token", "signature")


def redact(text: str) -> str:
    text = _SECRETS.sub(REDACTED, text)
    lowered = text.lower()
    if any(name in lowered for name in _SIGV4_NAMES):  # 4x cheaper than the pattern on the usual record
        text = _SIGV4.sub(rf"\1\2{REDACTED}", text)
    return text


# Loggers that dump whole request/response bodies at DEBUG (Secrets Manager values, TokenReviews).
# Their bodies nest JSON in JSON in Python reprs, beyond what a pattern can scrub reliably.
BODY_LOGGERS = ("botocore.endpoint", "botocore.parsers", "kubernetes.client.rest")
# Loggers that print what a signature is made of at DEBUG: the canonical request (with
# X-Amz-Credential and X-Amz-Security-Token), the string to sign, the signature itself. For an
# EKS reviewer that is the reviewer's bearer token in pieces. botocore.crt is the awscrt signer.
SIGNING_LOGGERS = ("botocore.auth", "botocore.signers", "botocore.crt")
WITHHELD_AT_DEBUG = BODY_LOGGERS + SIGNING_LOGGERS


class RedactedException(Exception):
    """Stands in for a logged exception: its text, scrubbed, under the original exception's type."""


def _text_of(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:  # a broken __str__ must not stop the record
        return f"<{type(error).__name__} without a printable message>"


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(WITHHELD_AT_DEBUG) and record.levelno <= logging.DEBUG:
            record.msg, record.args = "message withheld: it may carry credentials", None
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args = redact(message), None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.exc_info and record.exc_info[1] is not None:
            # Lambda's JSON log format reads the exception itself (errorMessage = str(exception)),
            # not the scrubbed traceback text above.
            exc_type, exc_value, exc_traceback = record.exc_info
            record.exc_info = (exc_type, RedactedException(redact(_text_of(exc_value))), exc_traceback)
        return True


def configure(level: str) -> None:
    """Attach the scrubber to every root handler (Lambda installs its own) and set the level."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        root.addHandler(handler)
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    root.setLevel(level)
