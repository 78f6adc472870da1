"""Logging that cannot leak credentials, whatever a library logs at DEBUG, one JSON object a line.

The kubernetes client logs whole response bodies at DEBUG, and a TokenReview answer echoes the
token under review; botocore's signer logs what an EKS reviewer token is made of. Rather than
trusting every logger's level, every record is scrubbed on its way out: anything shaped like a JWT,
a JWE, a PEM block, a bearer header or AWS SigV4 signing material is replaced, in the message, in
the fields a record carries (audit events, request context), in the traceback text and in the
exception a formatter may read directly.

Every line is one JSON object, written by JsonFormatter on the root handler, so library records come
out in the same shape as ours; the request's context keys (request id, route, cluster, cold start)
are added to every line of an invocation (see audit.py).
Library records below WARNING are dropped unless LOG_LEVEL is DEBUG.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import time
from contextvars import ContextVar

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


# Each of _SECRETS' and _SIGV4's matches contains one of these (lower-cased): text without any cannot
# match, and most of what is logged (routes, outcomes, cluster names, user agents) has none. Substring
# tests, because a regular expression of these alternatives costs more than the patterns it spares.
_MARKERS = ("eyj", "-----begin ", '"', "'", "k8s-aws-v1.", "bearer", "credential", "security-token", "signature")


def _may_hold_secret(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in _MARKERS)


def redact(text: str) -> str:
    if not _may_hold_secret(text):
        return text
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


_STAND_INS: dict[type, type] = {}


def _stand_in(exc_type: type) -> type:
    """A RedactedException subclass named like the original, so a formatted traceback still names it."""
    stand_in = _STAND_INS.get(exc_type)
    if stand_in is None:
        name = getattr(exc_type, "__name__", "Exception")
        stand_in = type(name, (RedactedException,), {"__module__": getattr(exc_type, "__module__", __name__)})
        stand_in.__qualname__ = getattr(exc_type, "__qualname__", name)
        _STAND_INS[exc_type] = stand_in
    return stand_in


def _text_of(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:  # a broken __str__ must not stop the record
        return f"<{type(error).__name__} without a printable message>"


# What every LogRecord carries; anything else on a record is a field someone added (extra=..., a
# filter) and a JSON formatter writes it out, so it is scrubbed like the message.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


_PLAIN = frozenset({int, float, bool, type(None)})  # what a field can be that holds no text


def _plain(value: object) -> bool:
    """No text in it: a number, a flag, None, or a list of those (a metric's values)."""
    if value.__class__ in _PLAIN:
        return True
    return value.__class__ is list and all(item.__class__ in _PLAIN for item in value)


def _scrubbed(value: object, depth: int = 0) -> object:
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if depth < 4 and isinstance(value, (list, tuple)):
        return [_scrubbed(item, depth + 1) for item in value]
    if depth < 4 and isinstance(value, dict):
        return {str(key): _scrubbed(item, depth + 1) for key, item in value.items()}
    return redact(_text_of(value) if isinstance(value, BaseException) else str(value))


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
        if record.exc_info and record.exc_info[1] is not None and not isinstance(record.exc_info[1], RedactedException):
            # Lambda's JSON log format reads the exception itself (errorMessage = str(exception)), and
            # a formatter may format the traceback from it, not from the scrubbed text above.
            exc_type, exc_value, exc_traceback = record.exc_info
            stand_in = _stand_in(exc_type)(redact(_text_of(exc_value)))
            record.exc_info = (exc_type, stand_in, exc_traceback)
        fields = record.__dict__
        # "_": a handler's own (bytes), and the access line's EMF (ours). Plain text fields are searched
        # for markers all at once: on the usual line none has any, and one search is all it costs.
        names = [name for name in fields.keys() - _RECORD_ATTRIBUTES if name[0] != "_"]
        texts, nested = [], False
        for name in names:
            value = fields[name]
            if value.__class__ is str:
                texts.append(value)
            elif not _plain(value):
                nested = True
        if nested or _may_hold_secret("\n".join(texts)):
            for name in names:
                fields[name] = _scrubbed(fields[name])
        return True


def log_fields(logger: logging.Logger, level: int, fields: dict, message: str, *args) -> None:
    """Log one line carrying `fields`, without logging's search of the stack for the caller's file and
    line: no line shows them, and the search is a fifth of what a line costs."""
    if logger.isEnabledFor(level):
        logger.handle(logger.makeRecord(logger.name, level, "", 0, message, args, None, extra=fields))


# ---------------------------------------------------------------- the line format

SERVICE = "dashboard-auth"
# Our own records; any other logger's is library chatter, kept below WARNING only at DEBUG.
OWN_LOGGERS = ("chalicelib",)
# The handlers the Lambda Python runtime puts on the root logger: they would write every record a
# second time, in Lambda's text format. Lambda keeps what a function writes to stderr as log lines.
LAMBDA_RUNTIME_HANDLERS = ("LambdaLoggerHandler", "LambdaLoggerHandlerWithFrameType")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: timestamp (UTC, RFC 3339, ms), level, logger, message, service, the
    invocation's context keys, then whatever fields the record carries (audit events, the access
    line and its EMF metrics), then the exception if any.

    Written here rather than with Powertools' LambdaPowertoolsFormatter, which this service used
    before: the access line of every request goes through it, and Powertools' formatter cost 20 us
    a line against a refresh's whole budget of 100 us for its own work (docs/design.md, "Logs and
    metrics"). The shape is the one it wrote, less its stack_trace object.
    """

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_text = ""

    def _timestamp(self, created: float) -> str:
        second = int(created)
        if second != self._second:  # one strftime a second, not one a line
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._second_text}.{int((created - second) * 1000):03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        document = {
            "timestamp": self._timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": SERVICE,
        }
        document.update(_context.get())
        for name, value in record.__dict__.items():
            if name not in _RECORD_ATTRIBUTES and (not name.startswith("_") or name == EMF_MEMBER):
                document[name] = value
        if record.exc_info and record.exc_info[0] is not None:
            document["exception_name"] = record.exc_info[0].__name__
            document["exception"] = record.exc_text or self.formatException(record.exc_info)
        return _LINE_JSON.encode(document)


EMF_MEMBER = "_aws"  # CloudWatch's embedded metric format: the one "_" field a line carries (audit.py)
_LINE_JSON = json.JSONEncoder(separators=(",", ":"), default=str)


def json_formatter() -> logging.Formatter:
    return JsonFormatter()


# The keys every line of the current invocation carries (request id, route, cluster, cold start).
_NO_CONTEXT: dict = {}  # never written to
_context: ContextVar[dict] = ContextVar("dashboard_auth_log_context", default=_NO_CONTEXT)


def start_context(**keys) -> None:
    """Begin an invocation's context: these keys (None left out) on every line it logs."""
    _context.set({name: value for name, value in keys.items() if value is not None})


def bind_context(**keys) -> None:
    """Add keys to every line this invocation logs."""
    context = _context.get()
    if context is _NO_CONTEXT:  # outside an invocation: a context of its own, not the shared default
        start_context(**keys)
        return
    context.update((name, value) for name, value in keys.items() if value is not None)


def clear_context() -> None:
    _context.set(_NO_CONTEXT)


class LibraryChatterFilter(logging.Filter):
    """Library records below WARNING pass only at DEBUG ("Found credentials in environment variables.")."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return (
            self.level <= logging.DEBUG
            or record.levelno >= logging.WARNING
            or record.name.startswith(OWN_LOGGERS)
        )


class _ServiceHandler(logging.StreamHandler):
    """The service's own handler (JSON lines), told apart from a test's or the runtime's."""


def service_handler(stream, level: str | int) -> logging.Handler:
    """The handler the service logs through where it sets up logging itself: JSON lines on `stream`,
    scrubbed, library chatter below WARNING dropped unless `level` is DEBUG."""
    numeric = logging.getLevelName(level) if isinstance(level, str) else level
    handler = _ServiceHandler(stream)
    handler.setFormatter(json_formatter())
    handler.addFilter(RedactingFilter())
    handler.addFilter(LibraryChatterFilter(numeric))
    handler.setLevel(numeric)
    return handler


def configure(level: str) -> None:
    """Log JSON lines through the scrubber at `level`.

    Where nobody else set up logging (Lambda, whose runtime handler is replaced; a script) the
    service's handler writes JSON lines to stderr. Whatever other root handler there is (a test's,
    or `chalice local`'s, which prints messages only) keeps its format and gets the scrubber.
    """
    # No line carries the thread or the process (one of each per Lambda container): don't look them up.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler).__name__ in LAMBDA_RUNTIME_HANDLERS:
            root.removeHandler(handler)
    if not root.handlers:
        root.addHandler(service_handler(sys.stderr, level))
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
        if isinstance(handler, _ServiceHandler):  # a second configure (tests) moves the level
            handler.setLevel(level)
            for chatter in (f for f in handler.filters if isinstance(f, LibraryChatterFilter)):
                chatter.level = handler.level
    root.setLevel(level)
