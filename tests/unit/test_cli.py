"""The operator CLI without outside systems: usage errors, decode, manifest from a key file, help.

Secrets Manager and clusters are exercised for real in tests/integration/test_cli.py.
"""
from __future__ import annotations

import base64
import io
import json
import os
import stat
from datetime import datetime, timedelta, timezone

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dashboard_auth_cli import cli
from chalicelib import keys, sessions

SA_TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6a3ViZS1zeXN0ZW06YWRtaW4ifQ.c2ln"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.fixture(scope="module")
def secret_value() -> str:
    return keys.new_secret_value()


@pytest.fixture(scope="module")
def session_key(secret_value) -> keys.SessionKey:
    return keys.parse_secret_value("0b9e6a4c-kid-1", secret_value)


def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def mint(key: keys.SessionKey, kid: str | None = "from-key", **overrides) -> str:
    moment = now()
    fields = dict(
        issued_at=moment - timedelta(seconds=30),
        expires_at=moment + timedelta(seconds=870),
        cluster="prod-eu",
        auth_time=moment - timedelta(hours=2),
        reviewed_at=moment - timedelta(seconds=30),
    )
    fields.update(overrides)
    return sessions.mint(SA_TOKEN, sessions.Claims(**fields), key.public, key.kid if kid == "from-key" else kid)


# ---------------------------------------------------------------- help and usage


def test_help_lists_every_command_with_a_one_line_description(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("create-key", "rotate", "manifest", "decode", "check-clusters", "smoke"):
        line = next(line for line in out.splitlines() if line.strip().startswith(command))
        assert len(line.split(None, 1)) == 2, line  # name and description on the same line


@pytest.mark.parametrize("command", ["create-key", "rotate", "manifest", "decode", "check-clusters", "smoke"])
def test_each_command_has_help(capsys, command):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0 and out.startswith("usage: ")


@pytest.mark.parametrize(
    "argv, words",
    [
        ([], "required: <command>"),
        (["unknown-command"], "invalid choice: 'unknown-command'"),
        (["create-key"], "no key store: give --secret-id or --key-file, or set KEY_SECRET_ID or KEY_FILE"),
        (["create-key", "--key-file", "k.json", "--secret-id", "s"], "not allowed with argument"),
        (["rotate"], "no key secret"),
        (["rotate", "--via-secrets-manager"], "no key secret"),
        (["manifest"], "no key: give --secret-id or --key-file"),
        (["manifest", "--key-file", "k.json", "--secret-id", "s"], "not allowed with argument"),
        (["manifest", "--key-file", "k.json", "--version-stage", "AWSPREVIOUS"],
         "--version-stage applies to --secret-id only"),
        (["manifest", "--secret-id", "s", "--stage", "AWSPREVIOUS"], "--stage was renamed: use --version-stage"),
        (["manifest", "--stage=prod"], "the Chalice stage is chosen by KEY_SECRET_ID or --secret-id"),
        (["manifest", "--stage"], "--stage was renamed: use --version-stage"),
        (["manifest", "--key-file", "k.json", "--namespace", "Not_A_Namespace"], "is not a namespace name"),
        (["decode"], "required: TOKEN|-"),
        (["decode", "x", "--bogus"], "unrecognized arguments: --bogus"),
        (["check-clusters", "--timeout", "0"], "between 0 and 60"),
        (["check-clusters", "--timeout", "soon"], "is not a number of seconds"),
    ],
)
def test_usage_errors_exit_2_with_one_line(capsys, argv, words):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert words in err
    assert len(err.strip().splitlines()) == 1, err
    assert "error:" in err


def test_a_malformed_setting_is_a_usage_error_naming_the_variable(capsys, monkeypatch):
    monkeypatch.setenv("CLUSTER_TIMEOUT", "soon")
    code, _, err = run(capsys, "check-clusters")
    assert code == 2
    assert "CLUSTER_TIMEOUT" in err and len(err.strip().splitlines()) == 1


def test_the_secret_id_comes_from_the_environment_when_not_given(capsys, monkeypatch):
    """KEY_SECRET_ID is honoured: the command gets past argument checks to Secrets Manager (unreachable here)."""
    from tests.conftest import free_port

    monkeypatch.setenv("KEY_SECRET_ID", "dashboard-auth/unit")
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", f"http://127.0.0.1:{free_port()}")
    code, out, err = run(capsys, "create-key")
    assert code == 1
    assert out == ""
    assert "unreachable" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- decode


def test_decode_shows_header_claims_and_times_without_the_sealed_parts(capsys, session_key):
    token = mint(session_key)
    document = json.loads(token)

    code, out, err = run(capsys, "decode", token)

    assert code == 0 and err == ""
    fields = dict(line.split(None, 1) for line in out.splitlines() if not line.startswith("session age"))
    aad = json.loads(base64.urlsafe_b64decode(document["aad"] + "=="))
    assert fields["kid"] == "0b9e6a4c-kid-1"
    assert fields["alg"] == "RSA-OAEP-256"
    assert fields["enc"] == "A256GCM"
    assert fields["cluster"] == "prod-eu"
    assert fields["iat"].startswith(aad["iat"]) and "ago" in fields["iat"]
    assert fields["exp"].startswith(aad["exp"])
    assert "(expires in 14m" in fields["exp"]
    assert fields["auth_time"].startswith(aad["auth_time"]) and "(2h 0m ago)" in fields["auth_time"]
    assert fields["reviewed_at"].startswith(aad["reviewed_at"])
    assert "session age  2h 0m" in out
    for sealed in ("encrypted_key", "ciphertext", "tag", "iv"):
        assert document[sealed] not in out
    assert SA_TOKEN not in out


def test_decode_json(capsys, session_key):
    token = mint(session_key)
    code, out, _ = run(capsys, "decode", "--json", token)
    assert code == 0
    info = json.loads(out)
    assert info["kid"] == session_key.kid
    assert info["cluster"] == "prod-eu"
    assert (info["alg"], info["enc"]) == ("RSA-OAEP-256", "A256GCM")
    assert info["expired"] is False
    assert 860 <= info["expires_in_seconds"] <= 870
    assert 7200 <= info["session_age_seconds"] <= 7210
    assert 30 <= info["since_review_seconds"] <= 40
    assert (info["read"], info["name"]) == ("session token", None)
    assert set(info) == {
        "read", "name", "kid", "alg", "enc", "cluster", "iat", "exp", "auth_time", "reviewed_at", "now",
        "expired", "expires_in_seconds", "session_age_seconds", "since_review_seconds",
    }


def test_decode_says_how_long_ago_a_token_expired(capsys, session_key):
    token = mint(session_key, issued_at=now() - timedelta(minutes=20), expires_at=now() - timedelta(minutes=5))
    code, out, _ = run(capsys, "decode", token)
    assert code == 0
    assert "(expired 5m" in out

    run_json = run(capsys, "decode", "--json", token)
    info = json.loads(run_json[1])
    assert info["expired"] is True and -310 <= info["expires_in_seconds"] <= -300


def test_decode_a_dashboard_minted_token_without_kid_cluster_or_session_times(capsys, session_key):
    moment = now()
    token = mint(session_key, kid=None, cluster=None, expires_at=None, auth_time=moment - timedelta(seconds=30),
                 reviewed_at=None)
    # A Dashboard AAD has only iat (and exp): rebuild it without auth_time, re-sealed properly.
    from jwcrypto import jwe, jwk

    sealed = jwe.JWE(
        plaintext=json.dumps({"token": SA_TOKEN}).encode(),
        protected=json.dumps({"alg": "RSA-OAEP-256", "enc": "A256GCM"}),
        aad=json.dumps({"iat": sessions.format_time(moment)}).encode(),
    )
    sealed.add_recipient(jwk.JWK.from_pyca(session_key.public))
    dashboard_token = sealed.serialize()

    for candidate in (token, dashboard_token):
        code, out, _ = run(capsys, "decode", candidate)
        assert code == 0
        assert "(none: minted by a Dashboard v2 backend)" in out
        assert "(none: the default cluster)" in out
        assert "(none: never expires)" in out
        assert "(none: the next refresh asks the cluster)" in out
    assert "(none: the session began at iat)" in out
    info = json.loads(run(capsys, "decode", "--json", dashboard_token)[1])
    assert info["kid"] is None and info["auth_time"] is None and info["exp"] is None
    assert info["expired"] is False and info["expires_in_seconds"] is None


def test_decode_reads_the_token_from_stdin(capsys, monkeypatch, session_key):
    token = mint(session_key)
    monkeypatch.setattr("sys.stdin", io.StringIO(token + "\n"))
    code, out, _ = run(capsys, "decode", "--json", "-")
    assert code == 0
    assert json.loads(out)["kid"] == session_key.kid


def test_decode_reads_a_whole_login_answer_and_says_so(capsys, monkeypatch, session_key):
    token = mint(session_key)
    answer = json.dumps({"name": "admin-user", "jweToken": token, "errors": []})  # as POST /api/v1/login answers

    code, out, err = run(capsys, "decode", answer)

    assert code == 0 and err == ""
    assert out.splitlines()[0] == "read         a login answer's jweToken (name admin-user)"
    assert "kid          0b9e6a4c-kid-1" in out and "cluster      prod-eu" in out
    assert json.loads(token)["ciphertext"] not in out

    monkeypatch.setattr("sys.stdin", io.StringIO(answer + "\n"))
    code, out, _ = run(capsys, "decode", "--json", "-")
    info = json.loads(out)
    assert code == 0
    assert (info["read"], info["name"], info["kid"], info["cluster"]) == (
        "login answer", "admin-user", session_key.kid, "prod-eu")


def test_decode_says_it_read_a_token_or_a_refresh_answer(capsys, session_key):
    token = mint(session_key)
    code, out, _ = run(capsys, "decode", token)
    assert code == 0 and out.splitlines()[0] == "read         a session token"
    assert json.loads(run(capsys, "decode", "--json", token)[1])["read"] == "session token"

    code, out, _ = run(capsys, "decode", json.dumps({"jweToken": token, "errors": []}))
    assert code == 0 and out.splitlines()[0] == "read         a refresh answer's jweToken"


def test_decode_of_a_refused_login_answer_says_it_carries_no_token(capsys):
    refused = json.dumps({"jweToken": "", "errors": [{"ErrStatus": {
        "metadata": {}, "status": "Failure", "message": "MSG_LOGIN_UNAUTHORIZED_ERROR", "reason": "Unauthorized",
        "code": 401}}]})
    code, out, err = run(capsys, "decode", refused)
    assert code == 1 and out == ""
    assert "refused login's answer (MSG_LOGIN_UNAUTHORIZED_ERROR): it carries no session token" in err


def test_decode_of_an_answer_whose_token_is_not_one(capsys):
    code, out, err = run(capsys, "decode", json.dumps({"name": "x", "jweToken": "garbage-here", "errors": []}))
    assert code == 1 and out == ""
    assert "the jweToken of this login answer is not a well-formed session token" in err
    assert "garbage-here" not in err


@pytest.mark.parametrize(
    "garbage",
    [
        "garbage",
        SA_TOKEN,  # a JWT, not a session token
        "{}",
        '{"protected": "x"}',
        "",
    ],
    ids=["word", "jwt", "empty-object", "partial", "empty"],
)
def test_decode_rejects_what_is_not_a_session_token(capsys, garbage):
    code, out, err = run(capsys, "decode", garbage)
    assert code == 1
    assert out == ""
    assert "not a well-formed session token" in err
    assert len(err.strip().splitlines()) == 1
    if len(garbage) > 3:
        assert garbage not in err


def test_decode_rejects_a_tampered_envelope_and_never_echoes_it(capsys, session_key):
    document = json.loads(mint(session_key))
    document["header"] = {"kid": "x"}  # a seventh member: not what the Dashboard or we ever mint
    tampered = json.dumps(document)
    code, out, err = run(capsys, "decode", tampered)
    assert code == 1 and out == ""
    assert document["encrypted_key"] not in err and document["ciphertext"] not in err


def test_decode_rejects_garbage_on_stdin(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("not a token\n"))
    code, _, err = run(capsys, "decode", "-")
    assert code == 1 and "not a well-formed session token" in err


# ---------------------------------------------------------------- manifest from a key file


def write_key_file(path, value: str) -> str:
    path.write_text(value)
    return str(path)


def manifest_secrets(text: str) -> dict[str, dict]:
    """The Secrets of a manifest by name, read as `kubectl apply -f -` reads the stream."""
    documents = [document for document in yaml.safe_load_all(text) if document is not None]
    assert all(document["apiVersion"] == "v1" and document["kind"] == "Secret" for document in documents)
    secrets = {document["metadata"]["name"]: document for document in documents}
    assert len(secrets) == len(documents)
    return secrets


def check_manifest(text: str, stored: str, namespace: str = "kubernetes-dashboard") -> dict:
    secrets = manifest_secrets(text)
    assert set(secrets) == {"kubernetes-dashboard-key-holder", "kubernetes-dashboard-csrf"}
    document = secrets["kubernetes-dashboard-key-holder"]
    fields = json.loads(stored)
    assert document["metadata"]["namespace"] == namespace
    assert set(document["data"]) == {"priv", "pub"}
    priv = base64.b64decode(document["data"]["priv"]).decode()
    pub = base64.b64decode(document["data"]["pub"]).decode()
    assert priv == fields["priv"] and pub == fields["pub"]  # exactly as stored, byte for byte
    private_key = serialization.load_pem_private_key(priv.encode(), password=None)
    body = "".join(pub.strip().splitlines()[1:-1])  # PKIX DER under the Dashboard's "RSA PUBLIC KEY" label
    public_key = serialization.load_der_public_key(base64.b64decode(body))
    assert isinstance(private_key, rsa.RSAPrivateKey)
    assert public_key.public_numbers() == private_key.public_key().public_numbers()
    csrf = secrets["kubernetes-dashboard-csrf"]
    assert csrf["metadata"]["namespace"] == namespace and csrf["type"] == "Opaque"
    assert set(csrf["data"]) == {"csrf"} and "stringData" not in csrf
    # The Dashboard keys xsrftoken with string(Data["csrf"]): the bytes must be the key's text itself.
    assert base64.b64decode(csrf["data"]["csrf"]) == keys.parse_secret_value("k", stored).csrf_secret.encode()
    assert csrf["metadata"]["annotations"] == document["metadata"]["annotations"]
    return document


def test_manifest_from_a_key_file(capsys, tmp_path, secret_value):
    key_file = write_key_file(tmp_path / "key.json", secret_value)
    code, out, err = run(capsys, "manifest", "--key-file", key_file, "--namespace", "dashboards")
    assert code == 0
    document = check_manifest(out, secret_value, namespace="dashboards")
    assert document["metadata"]["annotations"]["dashboard-auth/kid"].startswith("file-")
    assert document["metadata"]["annotations"]["dashboard-auth/kid"] == keys.FileKeyStore(key_file).fetch().current.kid
    assert "warning" in err and "secret" in err.lower()
    assert "BEGIN" not in err and json.loads(secret_value)["csrf"] not in err


def test_manifest_csrf_is_the_stored_text_not_the_bytes_it_encodes(capsys, tmp_path, secret_value):
    code, out, _ = run(capsys, "manifest", "--key-file", write_key_file(tmp_path / "key.json", secret_value))
    assert code == 0
    data = manifest_secrets(out)["kubernetes-dashboard-csrf"]["data"]["csrf"]
    stored = json.loads(secret_value)["csrf"]  # base64 of 256 random bytes, used as text by both sides
    assert base64.b64decode(data).decode("ascii") == stored
    assert base64.b64decode(data) != base64.b64decode(stored)


@pytest.mark.parametrize("csrf", [None, "", "too-short-to-be-a-key"])
def test_manifest_of_a_key_without_a_usable_csrf_carries_the_derived_one(capsys, tmp_path, secret_value, csrf):
    fields = {name: json.loads(secret_value)[name] for name in ("priv", "pub")}  # as a Dashboard writes it
    if csrf is not None:
        fields["csrf"] = csrf
    stored = json.dumps(fields)
    key_file = write_key_file(tmp_path / "dashboard-key.json", stored)

    code, out, _ = run(capsys, "manifest", "--key-file", key_file)

    assert code == 0
    check_manifest(out, stored)  # data.csrf is what the service signs with
    derived = keys.FileKeyStore(key_file).fetch().current.csrf_secret
    assert base64.b64decode(manifest_secrets(out)["kubernetes-dashboard-csrf"]["data"]["csrf"]).decode() == derived
    assert len(derived) >= 32 and derived != csrf


def test_manifest_uses_KEY_FILE_when_no_flag_and_no_secret(capsys, tmp_path, monkeypatch, secret_value):
    monkeypatch.setenv("KEY_FILE", write_key_file(tmp_path / "key.json", secret_value))
    code, out, _ = run(capsys, "manifest")
    assert code == 0
    check_manifest(out, secret_value)


def test_manifest_output_file_is_mode_0600_and_stdout_stays_empty(capsys, tmp_path, secret_value):
    key_file = write_key_file(tmp_path / "key.json", secret_value)
    target = tmp_path / "key-holder.yaml"
    target.write_text("old, world-readable\n")
    os.chmod(target, 0o644)

    code, out, err = run(capsys, "manifest", "--key-file", key_file, "--output", str(target))

    assert code == 0 and out == ""
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    check_manifest(target.read_text(), secret_value)
    assert str(target) in err
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_manifest_unwritable_output_fails_cleanly(capsys, tmp_path, secret_value):
    key_file = write_key_file(tmp_path / "key.json", secret_value)
    code, out, err = run(capsys, "manifest", "--key-file", key_file, "--output", str(tmp_path / "no" / "dir.yaml"))
    assert code == 1 and out == ""
    assert "cannot write" in err


def test_manifest_from_a_missing_or_unusable_key_file_fails_without_creating_one(capsys, tmp_path):
    missing = tmp_path / "missing.json"
    code, out, err = run(capsys, "manifest", "--key-file", str(missing))
    assert code == 1 and out == "" and "cannot read key file" in err
    assert not missing.exists()

    code, out, err = run(capsys, "manifest", "--key-file", write_key_file(tmp_path / "bad.json", '{"priv": "x"}'))
    assert code == 1 and out == "" and "holds no usable key" in err


# ---------------------------------------------------------------- create-key with a key file (KEY_FILE)


def test_create_key_creates_the_KEY_FILE_the_local_stage_reads(capsys, tmp_path, monkeypatch):
    """README: the commands read KEY_FILE, used when KEY_SECRET_ID is unset (the local stage)."""
    key_file = tmp_path / "local" / "key.json"
    monkeypatch.setenv("KEY_FILE", str(key_file))

    code, out, err = run(capsys, "create-key")

    assert code == 0 and err == ""
    kid = keys.FileKeyStore(str(key_file)).fetch().current.kid  # what `make run` would seal with
    assert out == f"created the key in key file {key_file}: kid {kid} (mode 0600)\n"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    value = key_file.read_text()
    keys.parse_secret_value("file", value)

    code, out, _ = run(capsys, "create-key")

    assert code == 0
    assert out == f"the key was already there in key file {key_file}: kid {kid} (not changed)\n"
    assert key_file.read_text() == value
    assert "BEGIN" not in out and json.loads(value)["csrf"] not in out


def test_create_key_resolves_a_relative_KEY_FILE_from_the_app_directory_as_the_service_does(capsys, monkeypatch,
                                                                                          tmp_path):
    from chalicelib import settings

    monkeypatch.setattr(settings, "APP_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path / "..")
    monkeypatch.setenv("KEY_FILE", ".local/key.json")
    code, out, _ = run(capsys, "create-key")
    assert code == 0 and f"key file {tmp_path / '.local' / 'key.json'}:" in out
    assert (tmp_path / ".local" / "key.json").exists()


def test_create_key_with_a_key_file_flag_and_KEY_SECRET_ID_winning_over_KEY_FILE(capsys, tmp_path, monkeypatch):
    target = tmp_path / "flag.json"
    code, out, _ = run(capsys, "create-key", "--key-file", str(target))
    assert code == 0 and out.startswith(f"created the key in key file {target}") and target.exists()

    # with both set, the service uses the secret: so does create-key (unreachable here, one line)
    from tests.conftest import free_port

    monkeypatch.setenv("KEY_FILE", str(tmp_path / "unused.json"))
    monkeypatch.setenv("KEY_SECRET_ID", "dashboard-auth/unit")
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", f"http://127.0.0.1:{free_port()}")
    code, out, err = run(capsys, "create-key")
    assert code == 1 and "unreachable" in err
    assert not (tmp_path / "unused.json").exists()


def test_create_key_never_overwrites_an_unusable_key_file(capsys, tmp_path):
    key_file = write_key_file(tmp_path / "key.json", '{"priv": "not a key"}')
    code, out, err = run(capsys, "create-key", "--key-file", key_file)
    assert code == 1 and out == ""
    assert "holds no usable key" in err and "move it away" in err
    assert open(key_file).read() == '{"priv": "not a key"}'


def test_create_key_warns_about_a_key_file_others_can_read(capsys, tmp_path, secret_value):
    key_file = write_key_file(tmp_path / "key.json", secret_value)
    os.chmod(key_file, 0o644)
    code, out, err = run(capsys, "create-key", "--key-file", key_file)
    assert code == 0 and "already there" in out
    assert "readable by others (mode 0644): chmod 600" in err


def test_rotate_with_only_a_KEY_FILE_says_what_rotation_is_for(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("KEY_FILE", str(tmp_path / "key.json"))
    code, out, err = run(capsys, "rotate")
    assert code == 2 and out == ""
    assert "KEY_FILE holds a single key, which is not rotated" in err


# ---------------------------------------------------------------- rotate via Secrets Manager (call shape)


class _RotationConfiguredClient:
    """Stands in for Secrets Manager with a rotation function attached (moto cannot run one)."""

    class exceptions:
        class ResourceNotFoundException(Exception):
            pass

    def __init__(self):
        self.calls: list = []

    def describe_secret(self, SecretId):
        self.calls.append(("describe_secret", SecretId))
        return {"RotationEnabled": True, "RotationLambdaARN": "arn:aws:lambda:us-east-1:123456789012:function:rotate_key"}

    def rotate_secret(self, **kwargs):
        self.calls.append(("rotate_secret", kwargs))
        return {"ARN": "arn", "Name": kwargs["SecretId"], "VersionId": "8f14e45f-new-version"}


def test_rotate_via_secrets_manager_calls_rotate_secret_and_prints_the_new_version(capsys, monkeypatch):
    client = _RotationConfiguredClient()
    monkeypatch.setattr(cli, "_secrets_client", lambda: client)
    code, out, _ = run(capsys, "rotate", "--via-secrets-manager", "--secret-id", "dashboard-auth/prod/key")
    assert code == 0
    assert "8f14e45f-new-version" in out and "function:rotate_key" in out
    assert client.calls == [
        ("describe_secret", "dashboard-auth/prod/key"),
        ("rotate_secret", {"SecretId": "dashboard-auth/prod/key"}),
    ]


# ---------------------------------------------------------------- check-clusters without clusters


def test_check_clusters_with_an_unreadable_registry_fails_in_one_line(capsys, tmp_path):
    code, out, err = run(capsys, "check-clusters", "--clusters-file", str(tmp_path / "missing.json"))
    assert code == 1 and out == ""
    assert "cannot read the cluster registry" in err and len(err.strip().splitlines()) == 1


def test_check_clusters_with_a_malformed_registry_says_what_is_wrong(capsys, tmp_path):
    registry = tmp_path / "clusters.json"
    registry.write_text('{"clusters": [{"name": "Bad Name"}]}')
    code, _, err = run(capsys, "check-clusters", "--clusters-file", str(registry))
    assert code == 1 and "must be a DNS label" in err


def test_check_clusters_without_registry_or_kubeconfig_fails_the_default_cluster(capsys):
    code, out, _ = run(capsys, "check-clusters")  # conftest points KUBECONFIG at a missing file
    assert code == 1
    assert out.startswith("FAIL  default  (kubeconfig)  no cluster is configured")
