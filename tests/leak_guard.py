"""The suite-wide "nothing leaks" guard: a pytest plugin, registered by tests/conftest.py.

For the whole run, in the pytest process:

1. Every logger logs at DEBUG (re-asserted before each test's setup and call, because importing
   app.py sets the root level from LOG_LEVEL), and every record is written to a temporary file
   through a handler that carries chalicelib.logs' RedactingFilter, attached by
   `logs.configure("DEBUG")` exactly as production attaches it to its own handler. Each record is
   written as the service writes it (its JSON line, with the request's context keys and every
   field an audit event carries), and also as Lambda's runtime would in its text and JSON formats.
   What lands in the file is what production would log.
2. Every secret the run creates is registered, by wrapping (behaviour unchanged) the places that
   make or handle them: the ServiceAccount tokens the fake clusters issue and every token sealed
   into (`sessions.mint`) or opened from (`sessions.decrypt`) a session; reviewer and static-user
   tokens of the fake clusters; EKS reviewer tokens and the SigV4 parts of their presigned URLs; the
   secret key and session token of every AWS credentials botocore signs with; every session key made
   (`keys.new_secret_value`) or loaded (`keys.parse_secret_value`): its priv and pub PEM body lines
   and its CSRF secret; the encrypted members of every session token minted.
3. Every response the app gives in this process (`Chalice.__call__`, which chalice.test.Client and
   `chalice local` both go through) is recorded: status, headers and body.

At the end (pytest_sessionfinish) the log and the responses are searched for every registered
secret. Any hit sets the exit status to 1 and prints a report: the secret's kind, the test, the
logger (or the route), and up to 200 characters around the hit with every secret masked.

Secrets and where they may not appear:
    ServiceAccount token (whole, and its signature segment)      logs, response bodies
    reviewer token, static user token, EKS reviewer token        logs, response bodies
    EKS reviewer token's base64 part, and its presigned URL's    logs, response bodies
      X-Amz-Signature, X-Amz-Security-Token and X-Amz-Credential
      (access key id with scope), as in the URL and decoded
    AWS secret access key and session token botocore signs with  logs, response bodies
    session key priv/pub PEM body lines (> 40 chars)             logs, response bodies
    session key CSRF secret (first 40 chars)                     logs, response bodies
    session token (JWE) encrypted_key / ciphertext               logs (a body carries them by design)

LEAK_GUARD_KEEP_LOG=1 keeps the log file of a clean run too (a run that leaks always keeps it).

Out of reach: subprocesses (chalice local, lambda containers, moto): the tests that start them read
their logs themselves. Not searched: pytest's own output (assertion text, captured stdout/stderr).
Runs without pytest-xdist; under xdist each worker guards itself and hands its findings to the
controller (`workeroutput`), which fails the session.
"""
from __future__ import annotations

import base64
import copy
import functools
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
import urllib.parse

import pytest
from awslambdaric.lambda_runtime_log_utils import JsonFormatter

MIN_SECRET_CHARS = 16  # shorter values are not registered: they would match by chance
PEM_LINE_MIN_CHARS = 41  # "PEM body lines longer than 40 chars"
CSRF_PREFIX_CHARS = 40
CONTEXT_CHARS = 200
MAX_REPORTED = 30
# Named explicitly because they matter most and because a library or app.py may change their level.
DEBUG_LOGGERS = (
    "kubernetes", "kubernetes.client", "kubernetes.client.rest", "client", "urllib3", "botocore", "boto3",
    "chalicelib", "chalice", "dashboard-auth", "tests",
)

_GRAM = 16  # the scan probes the text every _STEP chars with a _GRAM-char slice (see _find)
_STEP = 16
_SESSION = "(outside any test)"
_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_EKS_PREFIX = "k8s-aws-v1."
_SIGV4_PARAMETERS = {
    "X-Amz-Signature": "EKS presigned URL signature",
    "X-Amz-Security-Token": "EKS presigned URL session token",
    "X-Amz-Credential": "EKS presigned URL credential (access key id with scope)",
}


class _Secrets:
    """Registered secrets: value -> (kind, also forbidden in response bodies, where it was registered)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()  # .origin: the wrapped call registering right now, and its test
        self.values: dict[str, tuple[str, bool, str]] = {}

    def add(self, kind: str, value: object, in_bodies: bool = True) -> None:
        if not isinstance(value, str) or len(value) < MIN_SECRET_CHARS:
            return
        with self._lock:
            known = self.values.get(value)
            if known is None or (in_bodies and not known[1]):
                self.values[value] = (kind, in_bodies, getattr(self._local, "origin", "?"))

    def service_account_token(self, token: object) -> None:
        """Only a whole JWT: tests also seal fragments (a token cut short, a lone header.payload), no secret."""
        if isinstance(token, str) and _JWT.fullmatch(token):
            self.add("ServiceAccount token", token)
            self.add("ServiceAccount token signature", token.rsplit(".", 1)[1])

    def session_key(self, priv: object, pub: object, csrf: object) -> None:
        for half, pem in (("priv", priv), ("pub", pub)):
            if isinstance(pem, str):
                for line in pem.splitlines():
                    line = line.strip()
                    if len(line) >= PEM_LINE_MIN_CHARS and not line.startswith("-----"):
                        self.add(f"session key {half} PEM line", line)
        if isinstance(csrf, str):
            self.add("session key CSRF secret", csrf[:CSRF_PREFIX_CHARS])

    def eks_token(self, token: object) -> None:
        """The token, and the parts of its presigned URL from which it can be rebuilt (a log line may carry
        them one by one: botocore's signer prints the canonical request and the signature)."""
        if not isinstance(token, str) or not token.startswith(_EKS_PREFIX):
            return
        self.add("EKS reviewer token", token)
        encoded = token[len(_EKS_PREFIX):]
        self.add("EKS reviewer token (its base64 part)", encoded)
        url = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
        for pair in urllib.parse.urlsplit(url).query.split("&"):
            name, _, value = pair.partition("=")
            kind = _SIGV4_PARAMETERS.get(name)
            if kind:
                self.add(kind, value)
                self.add(kind, urllib.parse.unquote(value))

    def aws_credentials(self, frozen: object) -> None:
        self.add("AWS secret access key", getattr(frozen, "secret_key", None))
        self.add("AWS session token", getattr(frozen, "token", None))
        self.add("AWS session token (URL-encoded)", urllib.parse.quote(getattr(frozen, "token", None) or "", safe=""))

    def session_token(self, text: object) -> None:
        document = json.loads(text)
        for member in ("encrypted_key", "ciphertext"):
            self.add(f"session token (JWE {member})", document.get(member), in_bodies=False)

    def forbidden(self, in_bodies: bool) -> dict[str, tuple[str, str]]:
        """value -> (kind, origin) of the secrets that may not appear in a log (or, in_bodies, a body)."""
        with self._lock:
            return {value: (kind, origin) for value, (kind, bodies, origin) in self.values.items()
                    if bodies or not in_bodies}


def _arg(args: tuple, kwargs: dict, index: int, name: str) -> object:
    return args[index] if len(args) > index else kwargs.get(name)


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


_LAMBDA_JSON = JsonFormatter()  # the handler format Lambda installs with AWS_LAMBDA_LOG_FORMAT=JSON


class _FileHandler(logging.Handler):
    """Writes every record as one line: test, logger, level, message (with traceback, stack), the
    record as Lambda's runtime writes it in JSON format, and as the service's own handler writes it."""

    def __init__(self, guard: LeakGuard, stream) -> None:
        super().__init__(logging.NOTSET)
        self._guard = guard
        self._stream = stream
        self.records = 0
        self.production = None  # chalicelib.logs.json_formatter(), once chalicelib imports
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # as Lambda's text format and as its JSON format (which reads the exception object itself)
            text = self.format(record) + "\t" + _LAMBDA_JSON.format(copy.copy(record))
            if self.production is not None:  # the service's JSON line: context keys, audit fields
                text += "\t" + self.production.format(copy.copy(record))
            self._stream.write(f"{self._guard.current_test}\t{record.name}\t{record.levelname}\t{_one_line(text)}\n")
            self.records += 1
        except Exception:  # never let the guard break a test; a record it cannot write is a guard error
            self._guard.errors.append(f"could not write a record of logger {record.name!r}")


def _find(text: str, secrets: dict) -> list[tuple[int, str]]:
    """(position, secret) of every occurrence of every secret in text.

    A secret of at least _GRAM + _STEP - 1 chars that occurs at p contains the text's _GRAM-char
    slice at the first multiple q of _STEP at or after p, and that slice is the secret's own slice
    at offset q - p < _STEP: indexing each secret's first _STEP slices and probing the text only
    every _STEP chars finds every occurrence, in one pass whatever the number of secrets.
    Shorter secrets (few: static user tokens) are searched for one by one.
    """
    index: dict[str, list[tuple[int, str]]] = {}
    short = []
    for secret in secrets:
        if len(secret) >= _GRAM + _STEP - 1:
            for offset in range(_STEP):
                index.setdefault(secret[offset:offset + _GRAM], []).append((offset, secret))
        else:
            short.append(secret)
    hits = set()
    lookup = index.get
    for probe in range(0, len(text) - _GRAM + 1, _STEP):
        candidates = lookup(text[probe:probe + _GRAM])
        if candidates:
            for offset, secret in candidates:
                start = probe - offset
                if start >= 0 and text.startswith(secret, start):
                    hits.add((start, secret))
    for secret in short:
        start = text.find(secret)
        while start != -1:
            hits.add((start, secret))
            start = text.find(secret, start + 1)
    # Keep the widest of overlapping hits: a whole token, not also its signature segment.
    kept: list[tuple[int, str]] = []
    for start, secret in sorted(hits, key=lambda hit: (hit[0], -len(hit[1]))):
        if kept and start + len(secret) <= kept[-1][0] + len(kept[-1][1]):
            continue
        kept.append((start, secret))
    return kept


class LeakGuard:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.secrets = _Secrets()
        self.errors: list[str] = []
        self.current_test = _SESSION
        self.responses: list[tuple[str, str, str]] = []  # (test, "METHOD path -> status", headers + body)
        self._undo: list[tuple[object, str, object]] = []
        self._handler: _FileHandler | None = None
        self._attached: list[logging.Logger] = []
        self._path = ""
        self._stream = None
        self.report: list[str] = []
        self.summary = ""
        self.worker_findings: list[dict] = []  # xdist controller only

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        descriptor, self._path = tempfile.mkstemp(prefix="leak-guard-", suffix=".log")
        self._stream = os.fdopen(descriptor, "w", encoding="utf-8", errors="backslashreplace", buffering=1 << 20)
        self._handler = _FileHandler(self, self._stream)
        root = logging.getLogger()
        root.addHandler(self._handler)
        self._attached.append(root)
        self.apply_levels(sweep=True)
        try:
            from chalicelib import logs

            logs.configure("DEBUG")  # attaches the RedactingFilter to our handler, as to the service's in production
            self._handler.production = logs.json_formatter()
            if not any(isinstance(f, logs.RedactingFilter) for f in self._handler.filters):
                self.errors.append("chalicelib.logs.configure did not attach its RedactingFilter to the guard's handler")
            self.apply_levels(sweep=True)
            self._install_wrappers()
        except Exception as error:  # e.g. chalicelib does not import: the tests say why; the guard is blind
            self.errors.append(f"could not set itself up, so it saw or registered too little: {error!r}")

    def apply_levels(self, sweep: bool = False) -> None:
        """Root and the named loggers at DEBUG; with sweep, every logger that set a higher level too."""
        root = logging.getLogger()
        if root.level != logging.DEBUG:
            root.setLevel(logging.DEBUG)
        for name in DEBUG_LOGGERS:
            logger = logging.getLogger(name)
            if logger.level != logging.DEBUG:
                logger.setLevel(logging.DEBUG)
        if not sweep or self._handler is None:
            return
        for logger in list(root.manager.loggerDict.values()):
            if not isinstance(logger, logging.Logger):
                continue
            if logger.level > logging.DEBUG:
                logger.setLevel(logging.DEBUG)
            if not logger.propagate and logger not in self._attached:  # its records never reach the root
                logger.addHandler(self._handler)
                self._attached.append(logger)

    def _wrap(self, owner: object, name: str, after) -> None:
        original = getattr(owner, name)
        guard = self
        label = f"{getattr(owner, '__name__', owner)}.{name}"

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            result = original(*args, **kwargs)
            try:
                guard.secrets._local.origin = f"{label} in {guard.current_test}"
                after(result, args, kwargs)
            except Exception as error:  # the code under test sees exactly what it would have seen
                guard.errors.append(f"registering from {label}: {error!r}")
            return result

        setattr(owner, name, wrapper)
        self._undo.append((owner, name, original))

    def _install_wrappers(self) -> None:
        from chalice.app import Chalice

        from chalicelib import clusters, keys, sessions
        from demo.kube_apiserver import FakeKubeApiServer

        secrets = self.secrets
        self._wrap(FakeKubeApiServer, "issue_token", lambda token, a, k: secrets.service_account_token(token))
        self._wrap(FakeKubeApiServer, "new_reviewer", lambda token, a, k: secrets.add("reviewer token", token))
        self._wrap(FakeKubeApiServer, "add_reviewer",
                   lambda _, a, k: secrets.add("reviewer token", _arg(a, k, 1, "bearer_token")))
        self._wrap(FakeKubeApiServer, "add_static_user_token",
                   lambda _, a, k: secrets.add("static user token", _arg(a, k, 1, "token")))

        def new_key(value, a, k):
            fields = json.loads(value)
            secrets.session_key(fields.get("priv"), fields.get("pub"), fields.get("csrf"))

        def loaded_key(key, a, k):
            fields = json.loads(_arg(a, k, 1, "text"))
            secrets.session_key(fields.get("priv"), fields.get("pub"), key.csrf_secret)

        def minted(session_token, a, k):
            secrets.service_account_token(_arg(a, k, 0, "service_account_token"))
            secrets.session_token(session_token)

        self._wrap(keys, "new_secret_value", new_key)
        self._wrap(keys, "parse_secret_value", loaded_key)
        self._wrap(sessions, "mint", minted)
        self._wrap(sessions, "decrypt", lambda token, a, k: secrets.service_account_token(token))
        self._wrap(clusters, "eks_token", lambda token, a, k: secrets.eks_token(token))
        from botocore.credentials import Credentials, RefreshableCredentials

        for credentials in (Credentials, RefreshableCredentials):  # what every SigV4 signature is made with
            self._wrap(credentials, "get_frozen_credentials", lambda frozen, a, k: secrets.aws_credentials(frozen))
        self._wrap(Chalice, "__call__", self._record_response)

    def _record_response(self, response, args, kwargs) -> None:
        event = _arg(args, kwargs, 1, "event") or {}
        if not isinstance(response, dict):
            return
        body = response.get("body")
        if isinstance(body, bytes):
            body = body.decode("utf-8", "backslashreplace")
        if body and response.get("isBase64Encoded"):
            body = base64.b64decode(body).decode("utf-8", "backslashreplace")
        headers = json.dumps({"headers": response.get("headers"), "multiValueHeaders": response.get("multiValueHeaders")})
        context = event.get("requestContext") or {}
        method = event.get("httpMethod") or context.get("httpMethod")
        path = event.get("path") or context.get("path") or context.get("resourcePath")
        route = f"{method} {path} -> {response.get('statusCode')}"
        self.responses.append((self.current_test, route, f"{body or ''}\n{headers}"))

    # ------------------------------------------------------------------ finish

    def stop(self) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)
        self._undo.clear()
        for logger in self._attached:
            logger.removeHandler(self._handler)
        self._attached.clear()
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def scan(self) -> int:
        """Search the log and the responses; fill self.report and self.summary; return the leak count."""
        started = time.monotonic()
        log_text = ""
        if self._path:
            with open(self._path, encoding="utf-8", errors="backslashreplace") as handle:
                log_text = handle.read()
        body_text = "".join(f"{test}\t{route}\t\t{_one_line(text)}\n" for test, route, text in self.responses)
        findings = self._findings(log_text, self.secrets.forbidden(in_bodies=False), "log")
        findings += self._findings(body_text, self.secrets.forbidden(in_bodies=True), "response")
        elapsed = time.monotonic() - started
        self.summary = (
            f"leak guard: {self._handler.records if self._handler else 0} log records "
            f"({len(log_text) / 2**20:.1f} MiB) and {len(self.responses)} responses searched for "
            f"{len(self.secrets.values)} secrets in {elapsed:.1f} s: "
        )
        if not findings and not self.errors:
            self.summary += "nothing leaked"
            if os.environ.get("LEAK_GUARD_KEEP_LOG"):
                self.summary += f"; the log is kept at {self._path}"
            elif self._path:
                os.unlink(self._path)
            return 0
        self.summary += f"{len(findings)} leak(s), {len(self.errors)} guard error(s); the log is kept at {self._path}"
        self.report = self._format(findings)
        return len(findings) + len(self.errors)

    @staticmethod
    def _findings(text: str, secrets: dict[str, tuple[str, str]], place: str) -> list[dict]:
        lines: dict[int, list[tuple[int, str]]] = {}  # line start -> hits on that line
        for start, secret in _find(text, secrets):
            lines.setdefault(text.rfind("\n", 0, start) + 1, []).append((start, secret))
        findings = []
        for line_start, hits in lines.items():
            line_end = text.find("\n", line_start)
            line = text[line_start:line_end if line_end != -1 else len(text)]
            test, source, level, message = (line.split("\t", 3) + ["", "", "", ""])[:4]
            message_start = line_start + len(test) + len(source) + len(level) + 3
            masks = [(start - message_start, secret) for start, secret in hits if start >= message_start]
            reported = set()
            for start, secret in hits:
                if secret in reported:
                    continue  # one finding per record and secret, however many formats of it show it
                reported.add(secret)
                findings.append({
                    "kind": secrets[secret][0], "origin": secrets[secret][1],
                    "place": place, "test": test, "source": source, "level": level,
                    "context": _masked_context(message, start - message_start, len(secret), masks, secrets),
                })
        return findings

    @staticmethod
    def _format(findings: list[dict]) -> list[str]:
        groups: dict[tuple, list[dict]] = {}
        for finding in findings:
            groups.setdefault((finding["kind"], finding["place"], finding["source"], finding["test"]), []).append(finding)
        lines = []
        for number, ((kind, place, source, test), group) in enumerate(groups.items()):
            if number == MAX_REPORTED:
                lines.append(f"... and {len(groups) - MAX_REPORTED} more (see the kept log)")
                break
            where = f"logger {source} ({group[0]['level']})" if place == "log" else f"response {source}"
            count = f" x{len(group)}" if len(group) > 1 else ""
            lines.append(f"LEAK: {kind} in a {place}{count}: {where}, test {test}")
            lines.append(f"    {group[0]['context']}")
            lines.append(f"    (the secret was registered by {group[0]['origin']})")
        return lines


_SECRET_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=_-.")


def _masked_context(message: str, offset: int, length: int, masks: list[tuple[int, str]], secrets: dict) -> str:
    """About CONTEXT_CHARS chars around the hit at offset, every registered secret on the line masked.

    A mask covers the whole run of base64/JWT characters around a secret, so that what the registry
    holds only a part of (the first 40 chars of a CSRF secret, one segment of a JWT) is hidden whole.
    """
    spans = []
    for start, secret in sorted(masks):
        stop = start + len(secret)
        while start > 0 and message[start - 1] in _SECRET_CHARS:
            start -= 1
        while stop < len(message) and message[stop] in _SECRET_CHARS:
            stop += 1
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(stop, spans[-1][1]), spans[-1][2])
        else:
            spans.append((start, stop, secrets[secret][0]))
    begin, end = max(0, offset - CONTEXT_CHARS // 2), offset + length + CONTEXT_CHARS // 2
    for start, stop, _ in spans:  # the window starts and ends outside any mask
        if start < begin < stop:
            begin = start
        if start < end < stop:
            end = stop
    pieces, cursor = [], begin
    for start, stop, kind in spans:
        if stop <= begin or start >= end:
            continue
        pieces.append(message[cursor:start])
        pieces.append(f"<{kind} masked, {stop - start} chars>")
        cursor = stop
    pieces.append(message[cursor:end])
    return ("..." if begin > 0 else "") + "".join(pieces) + ("..." if end < len(message) else "")


# ---------------------------------------------------------------------- hooks

_GUARD = pytest.StashKey[LeakGuard]()


def secrets_in(config: pytest.Config, text: str) -> list[str]:
    """The kinds of the registered secrets found in `text` (so far in the run), for a test that reads
    output the guard does not see itself: stdout (EMF metrics), a log it captured or a subprocess's."""
    secrets = config.stash[_GUARD].secrets.forbidden(in_bodies=False)
    return [secrets[secret][0] for _, secret in _find(text, secrets)]


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_GUARD] = LeakGuard(config)


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_GUARD].start()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    guard = item.config.stash[_GUARD]
    guard.current_test = item.nodeid
    guard.apply_levels(sweep=True)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    item.config.stash[_GUARD].apply_levels()  # fixtures may have imported app.py (root at LOG_LEVEL)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    guard = session.config.stash[_GUARD]
    guard.current_test = _SESSION
    guard.stop()
    leaks = guard.scan()
    lines = [guard.summary] + guard.report + [f"GUARD ERROR: {error}" for error in guard.errors[:MAX_REPORTED]]
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller reports and fails
        workeroutput["leak_guard"] = {"leaks": leaks, "lines": lines}
        return
    for worker in guard.worker_findings:
        leaks += worker["leaks"]
        lines += worker["lines"]
    _print(session.config, lines, failed=bool(leaks))
    if leaks and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """xdist controller: collect what each worker's guard found."""
    found = getattr(node, "workeroutput", {}).get("leak_guard")
    if found is not None:
        node.config.stash[_GUARD].worker_findings.append(found)


def _print(config: pytest.Config, lines: list[str], failed: bool) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        print("\n".join(lines), file=sys.stderr)
        return
    reporter.ensure_newline()
    if failed:
        reporter.write_sep("=", "leak guard: secrets leaked, the session fails", red=True, bold=True)
        for line in lines:
            reporter.write_line(line, red=line.startswith(("LEAK", "GUARD")))
    else:
        reporter.write_line("")
        reporter.write_line(lines[0])
