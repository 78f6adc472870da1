"""`dashboard-auth smoke`: the Dashboard frontend's sequence against a deployed stage, step by step.

    GET  login/modes
    GET  csrftoken/login
    POST login                  X-CSRF-TOKEN, {"token": <the ServiceAccount token>}
    GET  login/status           jweToken header
    GET  csrftoken/token
    POST token/refresh          X-CSRF-TOKEN, {"jweToken": ...}
    POST token/refresh          again, with the renewed token

With --origin, every request carries that Origin and every answer must allow it
(Access-Control-Allow-Origin), and the preflights a browser sends first (OPTIONS for the two POSTs
and for login/status, whose jweToken header needs one) must allow the method and the headers the
frontend sends.

Each step prints one line with its latency (reported, never judged); the first failure stops the
walk with one sentence saying what is wrong and where to look. No token is ever printed: not the
ServiceAccount token (read from stdin or a file, never argv), not a CSRF token, not a session token;
an answer is quoted only as a short excerpt with anything token-shaped, or any of those values,
removed.
"""
from __future__ import annotations

import getpass
import ipaddress
import json
import re
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from chalicelib import logs

MAX_TOKEN_BYTES = 64 * 1024
LOGIN_HEADERS = ("content-type", "x-csrf-token")  # what the frontend's POSTs carry besides the simple ones
STATUS_HEADERS = ("jwetoken",)
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_ORIGIN = re.compile(r"https?://[^/\s?#]+")
_JOSE_PART = re.compile(r"eyJ[A-Za-z0-9_.-]*")  # base64url of '{"': a JWT or JWE part, whole or cut
_SHARED_RUN = 12


class SmokeFailed(Exception):
    """The sentence an operator reads (exit 1)."""


class SmokeUsage(ValueError):
    """Arguments that cannot work (exit 2)."""


# ---------------------------------------------------------------- arguments


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def base_url(url: str, cluster: str | None) -> str:
    """The API's base (what /api/v1/... is appended to), for the default cluster or a named one."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SmokeUsage(f"--url must be an https:// URL, e.g. https://<id>.execute-api.<region>.amazonaws.com/api; "
                         f"got {url[:100]!r}")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise SmokeUsage("--url is http:// to another host: the ServiceAccount token would travel unencrypted. "
                         "Use https:// (http:// is accepted for localhost only)")
    if parts.query or parts.fragment:
        raise SmokeUsage("--url takes no query or fragment: give the base URL the routes /api/v1/... hang from")
    path = parts.path.rstrip("/")
    found = re.search(r"/api/v1(/|$)", path)
    if found:
        prefix = path[: found.start()]
        raise SmokeUsage(f"--url is the base URL, without /api/v1/...: did you mean "
                         f"{parts.scheme}://{parts.netloc}{prefix}?")
    if re.search(r"/clusters/[^/]+$", path):
        raise SmokeUsage("--url is the base URL, without /clusters/<name>: name the cluster with --cluster")
    if cluster is not None and not _DNS_LABEL.fullmatch(cluster):
        raise SmokeUsage(f"--cluster {cluster[:70]!r} is not a cluster name (a DNS label: a-z, 0-9, '-')")
    base = f"{parts.scheme}://{parts.netloc}{path}"
    return f"{base}/clusters/{cluster}" if cluster else base


def check_origin(origin: str) -> str:
    if not _ORIGIN.fullmatch(origin):
        raise SmokeUsage(f"--origin is a browser origin: scheme, host and port, no path "
                         f"(e.g. https://dashboard.example.com); got {origin[:100]!r}")
    return origin


def read_token(token_file: str | None, stdin=None) -> str:
    """The ServiceAccount token from a file, or stdin (`-` or no --token-file); a prompt that does not echo on a terminal."""
    stdin = stdin if stdin is not None else sys.stdin
    try:
        if token_file not in (None, "-"):
            with open(token_file, encoding="utf-8") as handle:
                text = handle.read(MAX_TOKEN_BYTES + 1)
            where = "--token-file"
        elif stdin.isatty():
            text = getpass.getpass("ServiceAccount token (not echoed): ")
            where = "the prompt"
        else:
            text = stdin.read(MAX_TOKEN_BYTES + 1)
            where = "stdin"
    except OSError as error:  # the path is not repeated: it may be a token given by mistake
        raise SmokeUsage(f"cannot read --token-file: {error.strerror or type(error).__name__}") from None
    except UnicodeDecodeError:
        raise SmokeUsage("the ServiceAccount token is not text") from None
    text = text.strip()
    if not text:
        raise SmokeUsage(f"no ServiceAccount token on {where}: pipe one in (kubectl create token ... | "
                         "dashboard-auth smoke ...) or give --token-file")
    if len(text) > MAX_TOKEN_BYTES or any(character.isspace() for character in text):
        raise SmokeUsage(f"what {where} holds is not a token (one line, no spaces, under 64 KiB)")
    return text


# ---------------------------------------------------------------- the walk


@dataclass
class Answer:
    status: int
    headers: dict  # lower-case names
    text: str
    ms: float

    def json(self):
        try:
            return json.loads(self.text)
        except ValueError:
            return None

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


@dataclass
class Smoke:
    base: str
    token: str
    origin: str | None = None
    timeout: float = 30.0
    out: object = None
    secrets: list[str] = field(default_factory=list)
    steps: int = 0

    def __post_init__(self):
        import requests

        self.out = self.out or sys.stdout
        self.http = requests.Session()
        self.http.headers.update({"User-Agent": "dashboard-auth-smoke", "Accept": "application/json, text/plain, */*"})
        self.secrets.append(self.token)

    # ------------------------------------------------ plumbing

    @property
    def cluster(self) -> str:
        """The cluster the walk logs in to, in words."""
        return f"cluster {self.base.rsplit('/clusters/', 1)[1]}" if "/clusters/" in self.base else "the default cluster"

    def _line(self, verdict: str, method: str, what: str, ms: float | None) -> None:
        latency = "" if ms is None else f"{ms:7.0f} ms"
        print(f"{verdict:<4}  {method:<7} {what:<28}{latency}", file=self.out, flush=True)

    def excerpt(self, text: str, limit: int = 120) -> str:
        """A short, single-line, token-free quote of an answer: whatever is token-shaped (a JWT, a JOSE
        header or payload, even cut short), and any run of 12 characters of a token this walk holds, goes."""
        text = _JOSE_PART.sub(logs.REDACTED, logs.redact(text[: 8 * limit]))
        hidden = [False] * len(text)
        for secret in filter(None, self.secrets):
            for start in range(len(text) - _SHARED_RUN + 1):
                if text[start:start + _SHARED_RUN] in secret:
                    hidden[start:start + _SHARED_RUN] = [True] * _SHARED_RUN
        text = "".join("\0" if hide else character for character, hide in zip(text, hidden))
        text = re.sub("\0+", "[token]", text)
        text = " ".join(text.split())
        text = "".join(character if character.isprintable() else "?" for character in text)
        return text if len(text) <= limit else text[: limit - 1] + "…"

    def request(self, method: str, path: str, what: str, headers: dict | None = None, body=None) -> Answer:
        import requests

        url = f"{self.base}/api/v1/{path}"
        sent = dict(headers or {})
        if self.origin:
            sent["Origin"] = self.origin
        data = None
        if body is not None:
            sent["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        started = time.perf_counter()
        try:
            response = self.http.request(method, url, headers=sent, data=data, timeout=self.timeout,
                                         allow_redirects=False)
            text = response.content[: 256 * 1024].decode("utf-8", "replace")
        except requests.exceptions.SSLError:
            self._fail(method, what, time.perf_counter() - started,
                       f"TLS to {urlsplit(url).hostname} failed: its certificate does not verify for that name "
                       "(wrong host, or a proxy's own certificate: REQUESTS_CA_BUNDLE names extra CAs)")
        except requests.exceptions.Timeout:
            self._fail(method, what, time.perf_counter() - started,
                       f"no answer from {urlsplit(url).netloc} within {self.timeout:g} s")
        except requests.exceptions.ConnectionError as error:
            self._fail(method, what, time.perf_counter() - started,
                       f"cannot reach {urlsplit(url).netloc}: {_connection_cause(error)}")
        except requests.exceptions.RequestException as error:
            self._fail(method, what, time.perf_counter() - started,
                       f"the request to {urlsplit(url).netloc} failed ({type(error).__name__})")
        ms = (time.perf_counter() - started) * 1000
        return Answer(response.status_code, {k.lower(): v for k, v in response.headers.items()}, text, ms)

    def _fail(self, method: str, what: str, seconds_or_answer, sentence: str):
        ms = seconds_or_answer.ms if isinstance(seconds_or_answer, Answer) else seconds_or_answer * 1000
        self._line("FAIL", method, what, ms)
        raise SmokeFailed(f"{method} {what}: {sentence}")

    def _ok(self, method: str, what: str, answer: Answer) -> None:
        self.steps += 1
        self._line("OK", method, what, answer.ms)

    # ------------------------------------------------ judging an answer

    def not_the_service(self, answer: Answer, path: str) -> str | None:
        """A sentence when the answer comes from something in front of the service, not from it."""
        body = answer.json()  # API Gateway's own answers are {"message": "..."}; the service's never are
        message = body["message"] if isinstance(body, dict) and set(body) == {"message"} else None
        if 300 <= answer.status < 400:
            where = answer.headers.get("location", "")
            return (f"redirected (HTTP {answer.status}) to {self.excerpt(where, 200) or 'somewhere'}: give --url as "
                    "the final https:// address (a redirect would turn the POSTs into GETs)")
        if answer.status == 403 and message == "Missing Authentication Token":
            return (f"API Gateway has no route /api/v1/{path} here (403 Missing Authentication Token): the URL's "
                    "stage path is wrong or missing. A deployed stage is https://<id>.execute-api.<region>."
                    "amazonaws.com/api (the stage is named api); behind a custom domain or a CDN, the path in "
                    "front of /api/v1")
        if answer.status == 403 and message == "Forbidden":
            return ("API Gateway answered 403 Forbidden: no such stage at this URL, or a private API, resource "
                    "policy or WAF refuses this caller")
        if answer.status in (502, 504) and message in ("Internal server error", "Endpoint request timed out"):
            return (f"API Gateway answered {answer.status} {message}: the function failed or timed out before "
                    "answering; its CloudWatch log says why (a malformed setting stops every container)")
        if answer.status == 429 and message:
            return f"API Gateway throttled the request (429 {message}): the stage's or account's rate limit"
        if answer.content_type == "text/html" or answer.text.lstrip()[:15].lower().startswith(("<!doctype", "<html")):
            return (f"answered an HTML page (HTTP {answer.status}), not the API: the URL reaches a web site (the "
                    "Dashboard, a CDN's default behaviour, a sign-in proxy), not dashboard-auth. Check --url and "
                    "the CDN's path behaviours for /api/v1/*")
        if answer.status == 404 and not answer.text.startswith("No such cluster"):
            return (f"HTTP 404 for /api/v1/{path}: nothing serves this path at this URL: the path in front of "
                    "/api/v1 is wrong (a CDN behaviour or a custom domain's base path mapping)")
        return None

    def cors_problem(self, answer: Answer) -> str | None:
        if not self.origin:
            return None
        allowed = answer.headers.get("access-control-allow-origin")
        if allowed is None:
            return (f"CORS: the answer carries no Access-Control-Allow-Origin for {self.origin}, so a browser on "
                    f"that origin cannot read it: add {self.origin} to the stage's CORS_ALLOWED_ORIGINS "
                    "(exact scheme, host and port)")
        if allowed not in (self.origin, "*"):
            return (f"CORS: the answer allows origin {self.excerpt(allowed, 80)}, not {self.origin}: add "
                    f"{self.origin} to the stage's CORS_ALLOWED_ORIGINS")
        return None

    def service_refusal(self, answer: Answer, step: str) -> str:
        """A sentence for an answer of the service that is not the one the step needs."""
        text = answer.text.strip()
        quoted = f'"{self.excerpt(text)}"' if text else "an empty body"
        if answer.status == 503:
            retry = answer.headers.get("retry-after")
            when = f" (Retry-After {retry} s)" if retry else ""
            if "not configured" in text:
                return f"the service is not configured: 503{when} {quoted}"
            if "session key" in text:
                return (f"the service cannot read its session key: 503{when} {quoted}: Secrets Manager is "
                        "unreachable from the function or refuses its role; the function's log says which")
            return (f"the service answered 503{when} {quoted}: {self.cluster} is unreachable from the function, or "
                    "refuses its reviewer: `dashboard-auth check-clusters` checks the clusters, the function's log "
                    "names the cause")
        if answer.status == 401 and text == "CSRF validation failed":
            return ("CSRF refused (401 CSRF validation failed): the service did not accept the X-CSRF-TOKEN it issued "
                    "a moment ago. Something in front drops the X-CSRF-TOKEN header (a CDN's origin request policy "
                    "must forward all viewer headers), or the requests reach deployments with different keys")
        if answer.status == 401 and text == "MSG_TOKEN_EXPIRED_ERROR":
            return ("the service ended the session it had just issued (401 MSG_TOKEN_EXPIRED_ERROR): the "
                    "ServiceAccount token is about to expire, TOKEN_TTL or MAX_SESSION_TTL is tiny, or the "
                    "ServiceAccount was deleted")
        if answer.status == 401 and text == "MSG_LOGIN_UNAUTHORIZED_ERROR":
            return ("the service refused the session token it issued a moment ago (401 MSG_LOGIN_UNAUTHORIZED_ERROR): "
                    "the requests reach deployments with different keys, or something in front alters the body")
        if answer.status == 404:
            return (f"no such cluster at this service: 404 {quoted}: --cluster must be one of the names "
                    "GET /api/v1/clusters lists")
        if answer.status in (400, 413, 415):
            return (f"the service refused the request as malformed: HTTP {answer.status} {quoted}: something in "
                    "front rewrites requests (Content-Type, body)")
        if answer.status >= 500:
            return f"the service failed: HTTP {answer.status} {quoted}: its log has the details"
        if answer.status != 200:
            return f"HTTP {answer.status} where {step} answers 200: {quoted}"
        if answer.content_type != "application/json" or answer.json() is None:
            kind = answer.content_type or "no Content-Type"
            return f"answered {kind} that is not JSON: {quoted}; is --url this service?"
        return f"answered JSON that is not what {step} answers: {quoted}"

    def call(self, method: str, path: str, headers: dict | None = None, body=None, what: str | None = None) -> Answer:
        """One request, judged in the order that names the cause: in front of the service, CORS, the service."""
        what = what or path
        answer = self.request(method, path, what, headers, body)
        for problem in (self.not_the_service(answer, path), self.cors_problem(answer)):
            if problem:
                self._fail(method, what, answer, problem)
        return answer

    def expect_json(self, answer: Answer, method: str, what: str, check) -> dict:
        """The answer's JSON object if `check(body)` holds; else a sentence."""
        body = answer.json() if answer.status == 200 else None
        if not isinstance(body, dict) or not check(body):
            self._fail(method, what, answer, self.service_refusal(answer, f"{method} {what}"))
        return body

    def preflight(self, method: str, path: str, headers: tuple[str, ...]) -> None:
        """The OPTIONS a browser sends before a request it may not make unasked."""
        if not self.origin:
            return
        what = f"{path} (preflight)"
        answer = self.request("OPTIONS", path, what, {
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": ",".join(headers),
        })
        problem = self.not_the_service(answer, path)
        if problem:
            self._fail("OPTIONS", what, answer, problem)
        allowed_origin = answer.headers.get("access-control-allow-origin")
        methods = {m.strip().upper() for m in answer.headers.get("access-control-allow-methods", "").split(",")}
        allowed = {h.strip().lower() for h in answer.headers.get("access-control-allow-headers", "").split(",")}
        if not 200 <= answer.status < 300:
            self._fail("OPTIONS", what, answer, f"the preflight for {method} {path} from {self.origin} answered "
                       f"HTTP {answer.status}: the browser will not send the {method}")
        if allowed_origin not in (self.origin, "*"):
            self._fail("OPTIONS", what, answer, f"CORS: the preflight for {method} {path} does not allow origin "
                       f"{self.origin}, so the browser will not send the {method}: add {self.origin} to the stage's "
                       "CORS_ALLOWED_ORIGINS (exact scheme, host and port)")
        if method not in methods and "*" not in methods:
            self._fail("OPTIONS", what, answer, f"CORS: the preflight for {method} {path} does not allow the method "
                       f"{method} (Access-Control-Allow-Methods: {self.excerpt(', '.join(sorted(methods)), 80)})")
        missing = [header for header in headers if header not in allowed and "*" not in allowed]
        if missing:
            self._fail("OPTIONS", what, answer, f"CORS: the preflight for {method} {path} does not allow the "
                       f"header(s) {', '.join(missing)} the frontend sends")
        self._ok("OPTIONS", what, answer)

    # ------------------------------------------------ the Dashboard's sequence

    def csrf(self, action: str) -> str:
        path = f"csrftoken/{action}"
        answer = self.call("GET", path)
        body = self.expect_json(answer, "GET", path, lambda b: isinstance(b.get("token"), str) and b["token"])
        self.secrets.append(body["token"])
        self._ok("GET", path, answer)
        return body["token"]

    def run(self) -> str:
        """Walk the sequence; returns the ServiceAccount's name. SmokeFailed at the first failure."""
        answer = self.call("GET", "login/modes")
        body = self.expect_json(answer, "GET", "login/modes", lambda b: isinstance(b.get("modes"), list))
        if "token" not in body["modes"]:
            self._fail("GET", "login/modes", answer, f"this service does not offer token login "
                       f"(modes: {self.excerpt(json.dumps(body['modes']), 80)})")
        self._ok("GET", "login/modes", answer)

        csrf = self.csrf("login")
        self.preflight("POST", "login", LOGIN_HEADERS)
        answer = self.call("POST", "login", {"X-CSRF-TOKEN": csrf}, {"token": self.token})
        body = self.expect_json(answer, "POST", "login", lambda b: "jweToken" in b and "errors" in b)
        messages = [str(((error or {}).get("ErrStatus") or {}).get("message", ""))
                    for error in body["errors"] if isinstance(error, dict)] if isinstance(body["errors"], list) else []
        if "MSG_LOGIN_UNAUTHORIZED_ERROR" in messages:
            self._fail("POST", "login", answer, f"login refused (MSG_LOGIN_UNAUTHORIZED_ERROR): {self.cluster} did not "
                       "accept this token. Is it a current ServiceAccount token of that cluster (kubectl create "
                       "token ...), and is that the cluster --cluster names?")
        if body["errors"] or not isinstance(body["jweToken"], str) or not body["jweToken"]:
            self._fail("POST", "login", answer, f"login answered no session token: errors "
                       f"{self.excerpt(json.dumps(messages or body['errors']), 100)}")
        jwe_token, name = body["jweToken"], body.get("name")
        self.secrets.append(jwe_token)
        self._ok("POST", "login", answer)

        self.preflight("GET", "login/status", STATUS_HEADERS)
        answer = self.call("GET", "login/status", {"jweToken": jwe_token})
        body = self.expect_json(answer, "GET", "login/status", lambda b: "tokenPresent" in b)
        if body["tokenPresent"] is not True:
            self._fail("GET", "login/status", answer, "the service says no jweToken header arrived "
                       "(tokenPresent false): something in front drops it (a CDN's origin request policy must "
                       "forward all viewer headers)")
        self._ok("GET", "login/status", answer)

        csrf = self.csrf("token")
        self.preflight("POST", "token/refresh", LOGIN_HEADERS)
        for what in ("token/refresh", "token/refresh (again)"):
            answer = self.call("POST", "token/refresh", {"X-CSRF-TOKEN": csrf}, {"jweToken": jwe_token}, what=what)
            body = self.expect_json(answer, "POST", what,
                                    lambda b: isinstance(b.get("jweToken"), str) and b["jweToken"] and not b.get("errors"))
            jwe_token = body["jweToken"]
            self.secrets.append(jwe_token)
            self._ok("POST", what, answer)
        return name if isinstance(name, str) and name.isprintable() else "?"


def _connection_cause(error: Exception) -> str:
    """What a requests ConnectionError was, in words (never its text: it may quote the URL's query)."""
    text = repr(error)
    for marker, words in (
        ("Name or service not known", "the host name does not resolve"),
        ("nodename nor servname", "the host name does not resolve"),
        ("Temporary failure in name resolution", "the host name does not resolve"),
        ("NameResolutionError", "the host name does not resolve"),
        ("Connection refused", "connection refused"),
        ("RemoteDisconnected", "the server closed the connection without answering"),
        ("Connection reset", "the connection was reset"),
        ("Network is unreachable", "the network is unreachable"),
    ):
        if marker in text:
            return words
    return type(error).__name__


def run(args, out=None) -> int:
    """The smoke command: usage problems raise SmokeUsage, a failed step SmokeFailed."""
    base = base_url(args.url, args.cluster)
    origin = check_origin(args.origin) if args.origin else None
    token = read_token(args.token_file)
    out = out or sys.stdout
    smoke = Smoke(base=base, token=token, origin=origin, timeout=args.timeout, out=out)
    print(f"smoke: {base}" + (f" from origin {origin}" if origin else ""), file=out, flush=True)
    name = smoke.run()
    print(f"smoke: all {smoke.steps} steps passed: logged in as {name}, renewed twice"
          + (f", CORS allows {origin}" if origin else ""), file=out, flush=True)
    return 0

