"""The in-cluster Dashboard v2 behind the same origin: under the kubernetes-dashboard-csrf Secret
that `manifest` writes, a CSRF token this service issues passes the Dashboard's check, and a token
the Dashboard issues passes ours.

In the same-origin layout (README, "Pointing a Dashboard frontend at it") every
`/api/v1/csrftoken/<action>` goes to this service, also for the Dashboard's own POSTs such as
`appdeployment`, which the Dashboard then checks with its own key. The Dashboard's side is modelled
on its source (github.com/kubernetes/dashboard, v2):

- src/app/backend/client/csrf/manager.go: the key is `string(tokenSecret.Data["csrf"])` of the
  Secret `kubernetes-dashboard-csrf` in the Dashboard's namespace (names in
  src/app/backend/client/api/types.go), read once when the Dashboard starts;
- src/app/backend/handler/filter.go: a POST passes if `xsrftoken.Valid(X-CSRF-TOKEN, key, "none",
  <the path segment after /api/v1/>)`; apihandler.go's handleGetCsrfToken is
  `xsrftoken.Generate(key, "none", action)`.

A Go string is bytes, so the Dashboard's key is the raw bytes of `data.csrf` after base64, as
kubectl hands them to the API server. xsrftoken is transcribed independently of chalicelib: Generate
is tests/unit/test_dashboard.py's `xsrf_generate`; Valid (validTokenAtTime) is below.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
import yaml

from chalicelib import dashboard, keys
from tests.conftest import DashboardFrontend, body_json, write_registry
from tests.integration.test_cli import run, run_process
from tests.unit.test_dashboard import xsrf_generate

pytestmark = pytest.mark.usefixtures("healthy")

CSRF_SECRET = "kubernetes-dashboard-csrf"
# Ours, then the Dashboard's: its filter checks POSTs with the path segment as the action (the deploy
# form asks for "appdeployment"); the other names stand for any action a frontend may ask for.
ACTIONS = ("login", "token", "appdeployment", "deploy", "scale", "delete")
TIMEOUT_MS = 24 * 60 * 60 * 1000  # xsrftoken.Timeout


# ---------------------------------------------------------------- the Dashboard's side, from its source


def applied_secrets(manifest: str) -> dict[str, dict[str, bytes]]:
    """What the API server stores for each Secret of the stream: data base64-decoded, stringData as UTF-8 on top."""
    stored: dict[str, dict[str, bytes]] = {}
    for document in yaml.safe_load_all(manifest):
        if document is None or document.get("kind") != "Secret":
            continue
        values = {name: base64.b64decode(value, validate=True) for name, value in (document.get("data") or {}).items()}
        values.update({name: value.encode("utf-8") for name, value in (document.get("stringData") or {}).items()})
        stored[document["metadata"]["name"]] = values
    return stored


def dashboard_csrf_key(manifest: str) -> bytes:
    """csrfTokenManager.init: string(tokenSecret.Data["csrf"]), as the bytes HMAC is keyed with."""
    key = applied_secrets(manifest)[CSRF_SECRET]["csrf"]
    assert key, "an empty csrf makes the Dashboard generate its own key, which nobody else knows"
    return key


def go_generate(key: bytes, user_id: str, action_id: str, milli_time: int) -> str:
    """generateTokenAtTime with the key as bytes (a Go string may hold any bytes)."""
    def clean(text: str) -> str:
        return text.replace(":", "::")

    digest = hmac.new(key, f"{clean(user_id)}:{clean(action_id)}:{milli_time}".encode(), hashlib.sha1).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=") + f":{milli_time}"


def go_valid(token: str, key: bytes, user_id: str, action_id: str, now_ms: int | None = None) -> bool:
    """validTokenAtTime: the issue time after the last ':', under Timeout old, at most a minute ahead."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    sep = token.rfind(":")
    if sep < 0:
        return False
    try:
        millis = int(token[sep + 1:])
    except ValueError:
        return False
    if now - millis >= TIMEOUT_MS or millis > now + 60_000:
        return False
    return hmac.compare_digest(token.encode(), go_generate(key, user_id, action_id, millis).encode())


def dashboard_issues(key: bytes, action: str) -> str:
    """handleGetCsrfToken: xsrftoken.Generate(key, "none", action)."""
    millis = int(time.time() * 1000)
    token = go_generate(key, "none", action, millis)
    try:
        assert token == xsrf_generate(key.decode("utf-8"), "none", action, millis)  # the two transcriptions agree
    except UnicodeDecodeError:
        pass  # not text: only the bytes form can express this key
    return token


# ---------------------------------------------------------------- the check, both ways


def check_agreement(manifest: str, frontend: DashboardFrontend, login_token, service_csrf_key: str) -> None:
    """Tokens we issue pass the Dashboard's check; tokens the Dashboard issues pass ours, through the app.

    `service_csrf_key` is the CSRF key the service holds (read from its key store, not from the manifest).
    """
    key = dashboard_csrf_key(manifest)
    for action in ACTIONS:
        ours = frontend.csrf(action)  # GET /api/v1/csrftoken/<action>
        assert go_valid(ours, key, "none", action), action
        assert not go_valid(ours, key, "none", action + "x")  # and for that action only

        theirs = dashboard_issues(key, action)
        assert dashboard.csrf_valid(theirs, [service_csrf_key], action), action

    response = frontend.post("/api/v1/login", {"token": login_token()}, None,
                             headers={"X-CSRF-TOKEN": dashboard_issues(key, "login")})
    assert response.status_code == 200, response.body
    session = body_json(response)["jweToken"]
    assert session
    response = frontend.post("/api/v1/token/refresh", {"jweToken": session}, None,
                             headers={"X-CSRF-TOKEN": dashboard_issues(key, "token")})
    assert response.status_code == 200, response.body


def rewrite_csrf(manifest: str, value: bytes | None) -> str:
    """The manifest with the CSRF Secret's data.csrf replaced by `value` (None: the Secret left out)."""
    documents = [document for document in yaml.safe_load_all(manifest) if document is not None]
    if value is None:
        documents = [document for document in documents if document["metadata"]["name"] != CSRF_SECRET]
    for document in documents:
        if document["metadata"]["name"] == CSRF_SECRET:
            document["data"] = {"csrf": base64.b64encode(value).decode()}
    return yaml.safe_dump_all(documents)


@pytest.fixture
def registry(tmp_path, cluster_a):
    return write_registry(tmp_path / "clusters.json", [cluster_a.registry_entry()], default=cluster_a.name)


def test_csrf_tokens_pass_both_ways_under_the_secret_manifest_writes(
    moto_server, secrets_client, secret_id, configure, registry, cluster_a, capsys
):
    assert run(capsys, "create-key", "--secret-id", secret_id)[0] == 0
    completed = run_process("manifest", KEY_SECRET_ID=secret_id, AWS_ENDPOINT_URL_SECRETS_MANAGER=moto_server.url)
    assert completed.returncode == 0, completed.stderr
    manifest = completed.stdout
    frontend = DashboardFrontend(configure(KEY_SECRET_ID=secret_id, CLUSTERS_FILE=registry))

    stored = json.loads(secrets_client.get_secret_value(SecretId=secret_id)["SecretString"])["csrf"]

    check_agreement(manifest, frontend, cluster_a.login_token, stored)

    assert dashboard_csrf_key(manifest) == stored.encode()  # the text, as both sides key with it


def test_a_wrongly_encoded_or_missing_csrf_secret_fails_the_check(
    moto_server, secrets_client, secret_id, configure, registry, cluster_a, capsys
):
    """The check above is not vacuous: the encodings a manifest could get wrong all fail it."""
    assert run(capsys, "create-key", "--secret-id", secret_id)[0] == 0
    code, manifest, _ = run(capsys, "manifest", "--secret-id", secret_id)
    assert code == 0
    frontend = DashboardFrontend(configure(KEY_SECRET_ID=secret_id, CLUSTERS_FILE=registry))
    stored = json.loads(secrets_client.get_secret_value(SecretId=secret_id)["SecretString"])["csrf"]
    check_agreement(manifest, frontend, cluster_a.login_token, stored)  # as written, it passes
    text = dashboard_csrf_key(manifest)
    wrong = {
        "the 256 random bytes the text encodes": base64.b64decode(text),
        "the text base64-encoded once more (stringData written into data)": base64.b64encode(text),
        "the text with a trailing newline": text + b"\n",
        "another key's text": json.loads(keys.new_secret_value())["csrf"].encode(),
    }
    for why, value in wrong.items():
        with pytest.raises((AssertionError, KeyError)):
            check_agreement(rewrite_csrf(manifest, value), frontend, cluster_a.login_token, stored)
            pytest.fail(f"the check passed with {why}")  # pragma: no cover
    with pytest.raises(KeyError):
        dashboard_csrf_key(rewrite_csrf(manifest, None))  # the key-holder Secret alone, as before


def test_a_dashboard_written_key_without_csrf_gets_the_derived_key_on_both_sides(
    tmp_path, configure, registry, cluster_a, capsys
):
    """A key taken from a Dashboard's key-holder has no csrf; the service derives one, and the manifest carries it."""
    fields = json.loads(keys.new_secret_value())
    key_file = tmp_path / "dashboard-key.json"
    key_file.write_text(json.dumps({"priv": fields["priv"], "pub": fields["pub"]}))
    code, manifest, _ = run(capsys, "manifest", "--key-file", str(key_file))
    assert code == 0
    frontend = DashboardFrontend(configure(KEY_FILE=str(key_file), CLUSTERS_FILE=registry))
    derived = keys.FileKeyStore(str(key_file)).fetch().current.csrf_secret

    check_agreement(manifest, frontend, cluster_a.login_token, derived)

    assert dashboard_csrf_key(manifest) == derived.encode()
