"""Logging that cannot leak credentials, whatever a library logs at DEBUG.

The kubernetes client logs whole response bodies at DEBUG, and a TokenReview answer echoes the
token under review. Rather than trusting every logger's level, every record is scrubbed on its
way out: anything shaped like a JWT, a JWE, a PEM block or a bearer header is replaced, in the
message, in the traceback text and in the exception a formatter may read directly.
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
    rf"|'(?:{_SECRET_MEMBERS})'\s*:\s*'(?:[^'\\]|\\.)*'",  # their Python reprs
    re.DOTALL,
)


def redact(text: str) -> str:
    return _SECRETS.sub(REDACTED, text)


# Loggers that dump whole request/response bodies at DEBUG (Secrets Manager values, TokenReviews).
# Their bodies nest JSON in JSON in Python reprs, beyond what a pattern can scrub reliably.
BODY_LOGGERS = ("botocore.endpoint", "botocore.parsers", "kubernetes.client.rest")


class RedactedException(Exception):
    """Stands in for a logged exception: its text, scrubbed, under the original exception's type."""


def _text_of(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:  # a broken __str__ must not stop the record
        return f"<{type(error).__name__} without a printable message>"


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(BODY_LOGGERS) and record.levelno <= logging.DEBUG:
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
