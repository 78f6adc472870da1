"""The leak guard (tests/leak_guard.py) itself: a session that leaks fails with a report, one that does not passes.

Each case is a small pytest session in its own process with the guard loaded (`-p tests.leak_guard`),
so what is checked is the exit status and output a developer would see. Both sessions run at once.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.parse

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Secrets whose shape the production filter does not know (a reviewer token, a PEM body line, a CSRF
# secret) pass it, so logging them is a leak the guard must catch; an SA token in a body too.
LEAKY = '''
import json, logging, os
from chalice import Chalice
from chalice.test import Client
from chalicelib import keys
from demo.kube_apiserver import FakeKubeApiServer

KUBE = FakeKubeApiServer(name="leaky")  # not started: only its token issuing is used
KUBE.create_service_account("kube-system", "admin-user")
SEEN = []

def remember(*values):
    SEEN.extend(values)
    with open(os.environ["LEAKED_SECRETS"], "w") as handle:
        json.dump(SEEN, handle)

def test_logs_a_reviewer_token():
    token = KUBE.new_reviewer()
    remember(token)
    logging.getLogger("chalicelib.x").warning("asking the cluster as %s", token)

def test_logs_key_material():
    value = json.loads(keys.new_secret_value())
    pem_line, csrf = value["priv"].splitlines()[3], value["csrf"]
    remember(pem_line, csrf[:40])
    logging.getLogger("botocore.credentials").debug("loaded %s", pem_line)
    logging.getLogger("chalicelib.keys").info("csrf key %s", csrf)

def test_logs_a_presigned_url_the_filter_missed(monkeypatch):
    # presigning is local botocore work with fake credentials: no STS, no network
    import base64, boto3
    from chalicelib import clusters, logs
    session = boto3.session.Session(
        region_name="eu-west-1", aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        aws_session_token="IQoJb3JpZ2luX2VjEXAMPLE/session+token=with/base64+chars==")
    token = clusters.eks_token("prod-eu", "eu-west-1", session.client("sts"))
    encoded = token[len("k8s-aws-v1."):]
    url = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    query = dict(pair.split("=", 1) for pair in url.split("?", 1)[1].split("&"))
    remember(query["X-Amz-Signature"], query["X-Amz-Security-Token"], query["X-Amz-Credential"])
    monkeypatch.setattr(logs, "redact", lambda text: text)  # a filter that no longer knows SigV4
    logging.getLogger("chalicelib.clusters").info("reviewer URL %s", url)

def test_returns_a_service_account_token_in_a_body():
    token = KUBE.issue_token("kube-system", "admin-user")
    remember(token)
    app = Chalice("leaky")

    @app.route("/echo")
    def echo():
        return {"seen": token}

    with Client(app) as client:
        assert client.http.get("/echo").status_code == 200
'''

# The same kinds of secrets, handled as production handles them: scrubbed, withheld, or sealed.
CLEAN = '''
import json, logging
from datetime import datetime, timezone
from chalice import Chalice
from chalice.test import Client
from chalicelib import keys, sessions
from demo.kube_apiserver import FakeKubeApiServer

def test_scrubbed_withheld_and_sealed_secrets_are_no_leak():
    kube = FakeKubeApiServer(name="clean")
    kube.create_service_account("kube-system", "admin-user")
    token, reviewer = kube.issue_token("kube-system", "admin-user"), kube.new_reviewer()
    value = keys.new_secret_value()
    key = keys.parse_secret_value("v1", value)
    log = logging.getLogger("chalicelib.y")
    log.info("reviewing %s", token)                                       # a JWT: scrubbed
    log.info("headers {'Authorization': 'Bearer %s'}", reviewer)          # a bearer value: scrubbed
    log.debug("secret %s", value)                                         # PEM blocks, JSON members: scrubbed
    logging.getLogger("botocore.endpoint").debug("body %s", value)        # a body logger at DEBUG: withheld
    now = datetime.now(timezone.utc).replace(microsecond=0)
    sealed = sessions.mint(token, sessions.Claims(now, None, "c", now, now), key.public, key.kid)
    assert sessions.decrypt(sessions.parse(sealed), key.private) == token
    app = Chalice("clean")

    @app.route("/login")
    def login():
        return {"jweToken": sealed}                                       # sealed: may be in a body

    with Client(app) as client:
        assert client.http.get("/login").status_code == 200

def test_an_eks_token_made_and_logged_at_debug_is_no_leak():
    import base64, boto3
    from chalicelib import clusters
    session = boto3.session.Session(
        region_name="eu-west-1", aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        aws_session_token="IQoJb3JpZ2luX2VjEXAMPLE/session+token=with/base64+chars==")
    token = clusters.eks_token("prod-eu", "eu-west-1", session.client("sts"))  # botocore.auth at DEBUG: withheld
    encoded = token[len("k8s-aws-v1."):]
    url = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    log = logging.getLogger("chalicelib.z")
    log.debug("reviewer %s", token)                                       # an EKS token: scrubbed
    log.debug("presigned %s", url)                                        # its URL's SigV4 parameters: scrubbed
'''


def _start(directory, source: str):
    directory.mkdir()
    (directory / "test_inner.py").write_text(textwrap.dedent(source))
    env = dict(os.environ, LEAKED_SECRETS=str(directory / "secrets.json"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    env.pop("LEAK_GUARD_KEEP_LOG", None)
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.leak_guard",
         "--rootdir", str(directory), str(directory / "test_inner.py")],
        cwd=directory, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


@pytest.fixture(scope="module")
def inner_sessions(tmp_path_factory):
    base = tmp_path_factory.mktemp("leak-guard")
    processes = {"leaky": _start(base / "leaky", LEAKY), "clean": _start(base / "clean", CLEAN)}
    results = {}
    for name, process in processes.items():
        output, _ = process.communicate(timeout=90)
        results[name] = (process.returncode, output, base / name)
    yield results
    for _, output, directory in results.values():
        for line in output.splitlines():  # a failing session keeps its log; remove it
            if "the log is kept at " in line:
                path = line.rsplit("the log is kept at ", 1)[1].strip()
                if os.path.basename(path).startswith("leak-guard-"):
                    os.unlink(path)


def test_a_session_that_leaks_fails_with_a_masked_report(inner_sessions):
    code, output, directory = inner_sessions["leaky"]
    assert "4 passed" in output, output  # the tests themselves pass: the guard fails the session
    assert code == 1, output
    assert "leak guard: secrets leaked, the session fails" in output
    report = [line for line in output.splitlines() if line.startswith("LEAK: ")]
    assert any(line.startswith("LEAK: reviewer token in a log: logger chalicelib.x (WARNING), test ") and
               "test_logs_a_reviewer_token" in line for line in report), output
    assert any(line.startswith("LEAK: session key priv PEM line in a log: logger botocore.credentials (DEBUG)")
               for line in report), output
    assert any(line.startswith("LEAK: session key CSRF secret in a log: logger chalicelib.keys (INFO)")
               for line in report), output
    assert any(line.startswith("LEAK: ServiceAccount token in a response: response GET /echo -> 200")
               for line in report), output
    presigned = [line.split(" in a log: logger chalicelib.clusters (INFO), test ")[0] for line in report
                 if "test_logs_a_presigned_url_the_filter_missed" in line]
    assert "LEAK: EKS presigned URL signature" in presigned, output
    assert "LEAK: EKS presigned URL credential (access key id with scope)" in presigned, output
    assert any("session token" in kind for kind in presigned), output  # from the URL or the credentials signed with
    assert "<reviewer token masked, 43 chars>" in output
    assert "asking the cluster as <reviewer token masked" in output  # the context around the hit is shown
    secrets = json.loads((directory / "secrets.json").read_text())
    assert len(secrets) == 7
    for secret in secrets:
        assert secret not in output  # the report never repeats a secret
        assert secret.rsplit(".", 1)[-1] not in output
        assert urllib.parse.unquote(secret) not in output


def test_a_session_that_leaks_nothing_passes(inner_sessions):
    code, output, _ = inner_sessions["clean"]
    assert code == 0, output
    assert "2 passed" in output
    assert "searched for" in output and "nothing leaked" in output, output
