"""`dashboard-auth smoke` against canned HTTP answers: each broken answer gets the sentence that names it.

A real HTTP server on 127.0.0.1 answers the Dashboard's shapes, except for the one answer a test
breaks. The service itself (chalice local, the Lambda container behind API Gateway) is walked in
tests/e2e/test_smoke.py.
"""
from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dashboard_auth_cli import cli, smoke as smoke_module
from tests.conftest import free_port

SA_TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6a3ViZS1zeXN0ZW06YWRtaW4ifQ.c2ln"
ORIGIN = "https://dashboard.example.com"
JSON = {"Content-Type": "application/json"}
TEXT = {"Content-Type": "text/plain; charset=utf-8"}


class CannedStage:
    """Answers as the service does (with CORS for ORIGIN), unless `broken` answers a (method, path) otherwise."""

    def __init__(self):
        self.broken: dict[tuple[str, str], tuple[int, dict, bytes]] = {}
        self.cors_headers = "Content-Type, jweToken, X-CSRF-TOKEN, Authorization"
        self.allow_origin: str | None = ORIGIN
        self.requests: list[tuple[str, str, dict, bytes]] = []
        stage = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                stage.requests.append((self.command, self.path, dict(self.headers.items()), body))
                status, headers, payload = stage.answer(self.command, self.path, self.headers, body)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_OPTIONS = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api"

    def answer(self, method, path, headers, body):
        route = path.removeprefix("/api/api/v1/")
        status, sent, payload = self.broken.get((method, route)) or self.normal(method, route, headers, body)
        sent = dict(sent)
        if self.allow_origin and headers.get("Origin"):
            sent.setdefault("Access-Control-Allow-Origin", self.allow_origin)
        return status, sent, payload

    def normal(self, method, route, headers, body):
        if method == "OPTIONS":
            return 204, {"Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                         "Access-Control-Allow-Headers": self.cors_headers}, b""
        answers = {
            "login/modes": {"modes": ["token"]},
            "csrftoken/login": {"token": "csrf-login-secret:1"},
            "csrftoken/token": {"token": "csrf-token-secret:1"},
            "login": {"name": "admin", "jweToken": '{"protected":"session-one"}', "errors": []},
            "login/status": {"tokenPresent": bool(headers.get("jweToken")), "headerPresent": False},
            "token/refresh": {"jweToken": '{"protected":"session-two"}', "errors": []},
        }
        return 200, JSON, json.dumps(answers[route]).encode()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stage():
    canned = CannedStage()
    yield canned
    canned.close()


def run(capsys, monkeypatch, *argv, token=SA_TOKEN) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(token))
    code = cli.main(["smoke", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    for secret in (SA_TOKEN, "session-one", "session-two", "csrf-login-secret", "csrf-token-secret", "eyJ"):
        assert secret not in out + err, f"{secret} was printed"
    return code, out, err


def failed_step(out: str) -> str:
    line = next(line for line in out.splitlines() if line.startswith("FAIL"))
    return " ".join(line.split()[1:-2])


def test_a_working_stage_sends_what_the_frontend_sends(stage, capsys, monkeypatch):
    code, out, err = run(capsys, monkeypatch, "--url", stage.url, "--origin", ORIGIN)

    assert code == 0, out + err
    sent = [(method, path.removeprefix("/api/api/v1/")) for method, path, _, _ in stage.requests]
    assert sent == [
        ("GET", "login/modes"), ("GET", "csrftoken/login"), ("OPTIONS", "login"), ("POST", "login"),
        ("OPTIONS", "login/status"), ("GET", "login/status"), ("GET", "csrftoken/token"),
        ("OPTIONS", "token/refresh"), ("POST", "token/refresh"), ("POST", "token/refresh"),
    ]
    by_step = {(m, p.removeprefix("/api/api/v1/")): (h, b) for m, p, h, b in stage.requests}
    assert all(headers["Origin"] == ORIGIN for _, _, headers, _ in stage.requests)
    login_headers, login_body = by_step[("POST", "login")]
    assert login_headers["X-CSRF-TOKEN"] == "csrf-login-secret:1"
    assert login_headers["Content-Type"] == "application/json"
    assert json.loads(login_body) == {"token": SA_TOKEN}
    assert by_step[("GET", "login/status")][0]["jweToken"] == '{"protected":"session-one"}'
    assert by_step[("OPTIONS", "login")][0]["Access-Control-Request-Headers"] == "content-type,x-csrf-token"
    assert by_step[("OPTIONS", "login/status")][0]["Access-Control-Request-Headers"] == "jwetoken"
    refreshes = [json.loads(b) for m, p, _, b in stage.requests if p.endswith("token/refresh") and m == "POST"]
    assert refreshes == [{"jweToken": '{"protected":"session-one"}'}, {"jweToken": '{"protected":"session-two"}'}]


@pytest.mark.parametrize(
    "broken, step, words",
    [
        (("GET", "login/modes", 200, TEXT, b"hello"), "GET login/modes", "answered text/plain that is not JSON"),
        (("GET", "login/modes", 200, JSON, b'{"modes": ["basic"]}'), "GET login/modes",
         "does not offer token login"),
        (("GET", "login/modes", 301, {"Location": "https://auth.example.com/api"}, b""), "GET login/modes",
         "redirected (HTTP 301) to https://auth.example.com/api"),
        (("GET", "login/modes", 404, TEXT, b"404 page not found"), "GET login/modes",
         "the path in front of /api/v1 is wrong"),
        (("GET", "csrftoken/login", 200, JSON, b'{"csrf": "x"}'), "GET csrftoken/login", "answered JSON that is not"),
        (("POST", "login", 502, JSON, b'{"message": "Internal server error"}'), "POST login",
         "API Gateway answered 502 Internal server error: the function failed or timed out"),
        (("POST", "login", 504, JSON, b'{"message": "Endpoint request timed out"}'), "POST login",
         "API Gateway answered 504 Endpoint request timed out"),
        (("POST", "login", 503, {**TEXT, "Retry-After": "5"}, b"The session key is unavailable right now; try again "
          b"shortly.\n"), "POST login", "cannot read its session key: 503 (Retry-After 5 s)"),
        (("POST", "login", 503, {**TEXT, "Retry-After": "60"}, b"The service is not configured: it has no session "
          b"key; set KEY_SECRET_ID (Secrets Manager) or KEY_FILE.\n"), "POST login",
         "the service is not configured: 503 (Retry-After 60 s) \"The service is not configured"),
        (("POST", "login", 415, TEXT, b"Send Content-Type: application/json.\n"), "POST login",
         "refused the request as malformed: HTTP 415"),
        (("POST", "login", 200, JSON, json.dumps({"jweToken": "", "errors": [{"ErrStatus": {
            "message": "MSG_LOGIN_UNAUTHORIZED_ERROR", "code": 401}}]}).encode()), "POST login",
         "login refused (MSG_LOGIN_UNAUTHORIZED_ERROR): the default cluster did not accept this token"),
        (("POST", "token/refresh", 401, TEXT, b"MSG_LOGIN_UNAUTHORIZED_ERROR\n"), "POST token/refresh",
         "refused the session token it issued a moment ago"),
        (("POST", "token/refresh", 401, TEXT, b"MSG_TOKEN_EXPIRED_ERROR\n"), "POST token/refresh",
         "ended the session it had just issued"),
        (("POST", "token/refresh", 500, TEXT, b"Internal error; the service log has the details.\n"),
         "POST token/refresh", "the service failed: HTTP 500"),
    ],
    ids=["not-json", "no-token-mode", "redirect", "plain-404", "wrong-shape", "gateway-502", "gateway-504",
         "key-503", "not-configured", "415", "refused-login", "refresh-unauthorized", "refresh-expired", "500"],
)
def test_a_broken_answer_is_named(stage, capsys, monkeypatch, broken, step, words):
    method, path, status, headers, body = broken
    stage.broken[(method, path)] = (status, headers, body)

    code, out, err = run(capsys, monkeypatch, "--url", stage.url)

    assert code == 1
    assert failed_step(out) == step
    assert words in err, err
    assert len(err.strip().splitlines()) == 1


def test_an_answer_that_quotes_the_token_is_quoted_without_it(stage, capsys, monkeypatch):
    stage.broken[("POST", "login")] = (400, TEXT, b"cannot parse " + json.dumps({"token": SA_TOKEN}).encode())
    code, _, err = run(capsys, monkeypatch, "--url", stage.url)
    assert code == 1 and "malformed: HTTP 400" in err  # and run() checked the token is nowhere

    stage.broken[("POST", "login")] = (400, TEXT, b"bad token " + b"x" * 30 + SA_TOKEN[:40].encode())
    code, _, err = run(capsys, monkeypatch, "--url", stage.url)
    assert code == 1 and "[redacted]" in err  # a JWT cut short

    del stage.broken[("POST", "login")]
    stage.broken[("POST", "token/refresh")] = (400, TEXT, b"cannot open: protected\":\"session-one - try again")
    code, _, err = run(capsys, monkeypatch, "--url", stage.url)
    assert code == 1 and "cannot open: [token] - try again" in err  # a piece of the session token it holds


def test_an_answer_allowing_another_origin(stage, capsys, monkeypatch):
    stage.allow_origin = "https://other.example.com"
    code, out, err = run(capsys, monkeypatch, "--url", stage.url, "--origin", ORIGIN)
    assert code == 1 and failed_step(out) == "GET login/modes"
    assert f"allows origin https://other.example.com, not {ORIGIN}" in err


def test_a_preflight_that_does_not_allow_the_csrf_header(stage, capsys, monkeypatch):
    stage.cors_headers = "Content-Type, jweToken"
    code, out, err = run(capsys, monkeypatch, "--url", stage.url, "--origin", ORIGIN)
    assert code == 1 and failed_step(out) == "OPTIONS login (preflight)"
    assert "does not allow the header(s) x-csrf-token the frontend sends" in err


def test_a_preflight_refused(stage, capsys, monkeypatch):
    stage.broken[("OPTIONS", "token/refresh")] = (403, TEXT, b"")
    code, out, err = run(capsys, monkeypatch, "--url", stage.url, "--origin", ORIGIN)
    assert code == 1 and failed_step(out) == "OPTIONS token/refresh (preflight)"
    assert "answered HTTP 403: the browser will not send the POST" in err


def test_nothing_listening(capsys, monkeypatch):
    url = f"http://127.0.0.1:{free_port()}/api"
    code, out, err = run(capsys, monkeypatch, "--url", url)
    assert code == 1 and failed_step(out) == "GET login/modes"
    assert "cannot reach 127.0.0.1" in err and "connection refused" in err


# ---------------------------------------------------------------- usage


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--url", "ftp://auth.example.com"], "--url must be an https:// URL"),
        (["--url", "http://auth.example.com/api"], "would travel unencrypted"),
        (["--url", "https://auth.example.com/api/api/v1/login"], "did you mean https://auth.example.com/api?"),
        (["--url", "https://auth.example.com/api/v1"], "did you mean https://auth.example.com?"),
        (["--url", "https://auth.example.com/clusters/prod-eu"], "name the cluster with --cluster"),
        (["--url", "https://auth.example.com/?x=1"], "no query or fragment"),
        (["--url", "https://auth.example.com", "--cluster", "Prod_EU"], "is not a cluster name"),
        (["--url", "https://auth.example.com", "--origin", "https://dashboard.example.com/"], "no path"),
        (["--url", "https://auth.example.com", "--timeout", "0"], "between 0 and 60"),
        ([], "the following arguments are required: --url"),
    ],
)
def test_usage_errors(capsys, monkeypatch, argv, words):
    code, out, err = run(capsys, monkeypatch, *argv)
    assert code == 2 and out == ""
    assert words in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("token, words", [("", "no ServiceAccount token on stdin"),
                                          ("two words", "not a token"),
                                          ("x" * (64 * 1024 + 10), "not a token")])
def test_what_stdin_holds_must_be_a_token(stage, capsys, monkeypatch, token, words):
    code, out, err = run(capsys, monkeypatch, "--url", stage.url, token=token)
    assert code == 2 and words in err
    assert stage.requests == []  # nothing was sent


def test_an_unreadable_token_file_is_not_named(capsys, monkeypatch, tmp_path):
    missing = tmp_path / SA_TOKEN  # a token given where a file name belongs
    code, _, err = run(capsys, monkeypatch, "--url", "https://auth.example.com", "--token-file", str(missing))
    assert code == 2 and "cannot read --token-file: No such file or directory" in err


def test_a_loopback_url_may_be_http():
    assert smoke_module.base_url("http://localhost:8000/", None) == "http://localhost:8000"
    assert smoke_module.base_url("http://[::1]:8000/api", "prod-eu") == "http://[::1]:8000/api/clusters/prod-eu"
