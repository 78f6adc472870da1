"""`dashboard-auth smoke` against stages that work and stages that are broken, over real HTTP.

Two kinds of stage:
- `chalice local` in its own process (as tests/e2e/test_chalice_local.py starts it), with Secrets
  Manager on the moto server and the two TLS fake clusters;
- the deployed handler in a Lambda container process (tests/fakes/lambda_container.py) behind an
  HTTP front that does API Gateway's part (tests/fakes/api_gateway.py: the /api stage, route
  matching with chalice's RouteMatcher, API Gateway's own 403 answers), optionally with a CDN's
  faults in front (headers not forwarded, a web page for unknown paths).

What is checked is what the operator reads: the exit status, one OK line per step (each with its
latency, which is never judged), and for a broken stage the sentence that names the cause. No token
may appear in anything the command prints.
"""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import pytest

from dashboard_auth_cli import cli
from tests.conftest import run_chalice_local, write_registry
from tests.fakes.api_gateway import ApiGatewayFront
from tests.fakes.lambda_container import Container

DASHBOARD_ORIGIN = "http://localhost:8080"
STEPS = ["login/modes", "csrftoken/login", "login", "login/status", "csrftoken/token", "token/refresh",
         "token/refresh (again)"]
PREFLIGHTS = ["login (preflight)", "login/status (preflight)", "token/refresh (preflight)"]
LINE = re.compile(r"^(OK|FAIL)\s+(GET|POST|OPTIONS)\s+(.+?)\s+(\d+) ms$")

pytestmark = pytest.mark.usefixtures("healthy")


@pytest.fixture(scope="module")
def registry(cluster_a, cluster_b, tmp_path_factory) -> str:
    return write_registry(
        tmp_path_factory.mktemp("smoke") / "clusters.json",
        [cluster_a.registry_entry(), cluster_b.registry_entry()],
        default=cluster_a.name,
    )


@pytest.fixture(scope="module")
def chalice_local(moto_server, registry):
    with run_chalice_local(
        AWS_ENDPOINT_URL_SECRETS_MANAGER=moto_server.url,
        KEY_SECRET_ID="dashboard-auth/smoke/session-key",
        CLUSTERS_FILE=registry,
        CORS_ALLOWED_ORIGINS=DASHBOARD_ORIGIN,
    ) as url:
        yield url


@pytest.fixture(scope="module")
def lambda_stage(moto_server, registry):
    """The handler in a Lambda container process, behind API Gateway's /api stage."""
    import app as app_module

    container = Container.start({
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": moto_server.url,
        "KEY_SECRET_ID": "dashboard-auth/smoke-lambda/session-key",
        "CLUSTERS_FILE": registry,
        "CORS_ALLOWED_ORIGINS": DASHBOARD_ORIGIN,
    }, max_seconds=300, name="smoke")
    container.wait_ready()
    front = ApiGatewayFront(container, app_module.app.routes).start()
    try:
        yield front
    finally:
        front.stop()
        container.close()


@pytest.fixture
def front(lambda_stage):
    lambda_stage.drop_headers, lambda_stage.html_fallback = set(), False
    yield lambda_stage
    lambda_stage.drop_headers, lambda_stage.html_fallback = set(), False


def smoke(capsys, monkeypatch, token: str, *argv: str) -> tuple[int, str, str]:
    """The command in this process, the token on stdin."""
    monkeypatch.setattr("sys.stdin", io.StringIO(token + "\n"))
    code = cli.main(["smoke", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert (not token or token not in out + err) and "eyJ" not in out + err, "a token was printed"
    return code, out, err


def steps(out: str) -> list[tuple[str, str, str]]:
    """(verdict, method, step) of each step line; every one carries a latency."""
    rows = []
    for line in out.splitlines():
        if line.startswith("smoke:"):
            continue
        match = LINE.match(line)
        assert match, f"not a step line: {line!r}"
        rows.append(match.group(1, 2, 3))
    return rows


def ok_steps(out: str) -> list[str]:
    return [step for verdict, _, step in steps(out) if verdict == "OK"]


# ---------------------------------------------------------------- a working stage


def test_the_console_script_from_another_directory_walks_a_working_stage(chalice_local, cluster_a, tmp_path):
    """As an operator runs it: `dashboard-auth` from any directory, the token piped in."""
    token = cluster_a.login_token("kube-system", "smoke-admin")
    command = os.path.join(os.path.dirname(sys.executable), "dashboard-auth")

    completed = subprocess.run(
        [command, "smoke", "--url", chalice_local, "--origin", DASHBOARD_ORIGIN],
        input=token, capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={**os.environ, "PYTHONPATH": ""},
    )

    assert completed.returncode == 0, completed.stdout + completed.stderr
    printed = completed.stdout + completed.stderr
    assert token not in printed and "eyJ" not in printed
    rows = steps(completed.stdout)
    assert [step for _, _, step in rows if "preflight" not in step] == STEPS
    assert [step for _, _, step in rows if "preflight" in step] == PREFLIGHTS
    assert all(verdict == "OK" for verdict, _, _ in rows)
    assert completed.stdout.splitlines()[-1].startswith("smoke: all 10 steps passed: logged in as smoke-admin")


def test_a_named_cluster_with_the_token_from_a_file_and_no_origin(chalice_local, cluster_b, tmp_path, capsys,
                                                                  monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text(cluster_b.login_token("kube-system", "viewer") + "\n")

    code, out, err = smoke(capsys, monkeypatch, "", "--url", chalice_local + "/", "--cluster", cluster_b.name,
                           "--token-file", str(token_file))

    assert code == 0, out + err
    assert ok_steps(out) == STEPS  # no origin: no preflight, no CORS check
    assert f"{chalice_local}/clusters/{cluster_b.name}" in out.splitlines()[0]
    assert token_file.read_text().strip() not in out + err


# ---------------------------------------------------------------- broken stages, chalice local


@pytest.mark.parametrize("prefix", ["/api", "/prod"])
def test_a_wrong_stage_path_is_named(chalice_local, cluster_a, capsys, monkeypatch, prefix):
    code, out, err = smoke(capsys, monkeypatch, cluster_a.login_token(), "--url", chalice_local + prefix)

    assert code == 1
    assert steps(out) == [("FAIL", "GET", "login/modes")]
    assert "403 Missing Authentication Token" in err and "stage path is wrong or missing" in err
    assert len(err.strip().splitlines()) == 1


def test_an_origin_the_stage_does_not_allow(chalice_local, cluster_a, capsys, monkeypatch):
    code, out, err = smoke(capsys, monkeypatch, cluster_a.login_token(), "--url", chalice_local,
                           "--origin", "https://dashboard.example.com")

    assert code == 1
    assert steps(out) == [("FAIL", "GET", "login/modes")]
    assert "CORS" in err and "no Access-Control-Allow-Origin for https://dashboard.example.com" in err
    assert "add https://dashboard.example.com to the stage's CORS_ALLOWED_ORIGINS" in err


def test_a_cluster_that_is_down(chalice_local, cluster_b, capsys, monkeypatch):
    token = cluster_b.login_token()
    cluster_b.server.set_fault("503")

    code, out, err = smoke(capsys, monkeypatch, token, "--url", chalice_local, "--cluster", cluster_b.name,
                           "--origin", DASHBOARD_ORIGIN)

    assert code == 1
    assert ok_steps(out) == ["login/modes", "csrftoken/login", "login (preflight)"]
    assert steps(out)[-1] == ("FAIL", "POST", "login")
    assert "the service answered 503 (Retry-After" in err
    assert "The cluster cannot check tokens right now" in err  # the service's own sentence, quoted
    assert f"cluster {cluster_b.name} is unreachable from the function" in err
    assert "dashboard-auth check-clusters" in err


def test_a_refused_token(chalice_local, cluster_a, cluster_b, capsys, monkeypatch):
    other_clusters_token = cluster_b.login_token()  # signed by another cluster: cluster_a refuses it

    code, out, err = smoke(capsys, monkeypatch, other_clusters_token, "--url", chalice_local,
                           "--origin", DASHBOARD_ORIGIN)

    assert code == 1
    assert steps(out)[-1] == ("FAIL", "POST", "login")
    assert "login refused (MSG_LOGIN_UNAUTHORIZED_ERROR): the default cluster did not accept this token" in err


def test_the_token_is_never_taken_from_the_command_line(chalice_local, cluster_a, capsys, monkeypatch):
    token = cluster_a.login_token()
    for argv in (["--token", token], [f"--token={token}"]):
        code, out, err = smoke(capsys, monkeypatch, "", "--url", chalice_local, *argv)  # smoke() checks err for it
        assert code == 2 and out == ""
        assert "--token is not taken: a token on the command line ends up in shell history" in err
        assert len(err.strip().splitlines()) == 1

    for argv, words in (([token], "unrecognized arguments: [redacted]"),
                        (["--tok", token], "unrecognized arguments: --tok [redacted]")):  # no abbreviations
        code, out, err = smoke(capsys, monkeypatch, "", "--url", chalice_local, *argv)
        assert code == 2 and out == ""
        assert words in err


# ---------------------------------------------------------------- the Lambda handler behind API Gateway


def test_a_working_lambda_stage_behind_api_gateway(front, cluster_a, capsys, monkeypatch):
    code, out, err = smoke(capsys, monkeypatch, cluster_a.login_token("kube-system", "lambda-admin"),
                           "--url", front.url, "--origin", DASHBOARD_ORIGIN)

    assert code == 0, out + err
    assert [step for step in ok_steps(out) if "preflight" not in step] == STEPS
    assert "logged in as lambda-admin" in out


def test_the_api_gateway_host_without_the_stage(front, cluster_a, capsys, monkeypatch):
    """https://<id>.execute-api.<region>.amazonaws.com with no /api: the first segment is taken as the stage."""
    code, out, err = smoke(capsys, monkeypatch, cluster_a.login_token(), "--url", front.host_url)
    assert code == 1
    assert "403 Missing Authentication Token" in err and "the stage is named api" in err

    code, out, err = smoke(capsys, monkeypatch, cluster_a.login_token(), "--url", front.host_url + "/prod")
    assert code == 1
    assert "API Gateway answered 403 Forbidden" in err


def test_a_cdn_that_does_not_forward_the_csrf_header(front, cluster_a, capsys, monkeypatch):
    front.drop_headers = {"x-csrf-token"}

    code, out, err = smoke(capsys, monkeypatch, cluster_a.login_token(), "--url", front.url)

    assert code == 1
    assert steps(out)[-1] == ("FAIL", "POST", "login")
    assert "CSRF refused (401 CSRF validation failed)" in err and "X-CSRF-TOKEN header" in err


def test_a_cdn_that_does_not_forward_the_jwetoken_header(front, cluster_a, capsys, monkeypatch):
    front.drop_headers = {"jwetoken"}

    code, out, err = smoke(capsys, monkeypatch, cluster_a.login_token(), "--url", front.url)

    assert code == 1
    assert steps(out)[-1] == ("FAIL", "GET", "login/status")
    assert "tokenPresent false" in err


def test_a_url_that_serves_a_web_page(front, cluster_a, capsys, monkeypatch):
    front.html_fallback = True

    code, out, err = smoke(capsys, monkeypatch, cluster_a.login_token(), "--url", front.host_url + "/dashboard")

    assert code == 1
    assert "answered an HTML page (HTTP 200), not the API" in err


def test_a_cluster_down_behind_api_gateway(front, cluster_a, capsys, monkeypatch):
    token = cluster_a.login_token()
    cluster_a.server.set_fault("503")

    code, out, err = smoke(capsys, monkeypatch, token, "--url", front.url, "--origin", DASHBOARD_ORIGIN)

    assert code == 1
    assert "the service answered 503" in err and "the default cluster is unreachable" in err
