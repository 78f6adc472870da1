"""Operator commands for dashboard-auth: `dashboard-auth <command>` (see --help).

Installed by `make install` as the console script .venv/bin/dashboard-auth (pyproject.toml), so it
runs from any directory; `python -m dashboard_auth_cli` is the same. It lives beside chalicelib/,
not in it: chalice deploys all of chalicelib/, and operator commands have no business in the Lambda
package. The shared logic (settings, key stores, rotation, clusters, session tokens) is chalicelib's.

The commands read the same environment variables as the service (KEY_SECRET_ID, KEY_FILE,
CLUSTERS_FILE, CLUSTER_TIMEOUT, AWS_ENDPOINT_URL_SECRETS_MANAGER, the AWS credential chain),
and flags override them. They run with the operator's own credentials, not the function's.

Output rules, as for the service: no key material is ever printed except by `manifest`, whose
whole point is to carry the key into a cluster (stdout or a 0600 file only); no token, no
TokenReview body, no exception text from a library that might quote one. An expected failure
is one line on stderr: exit 2 for a usage error, 1 for anything that went wrong doing the work.
"""
from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import re
import socket
import ssl
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urlsplit

from chalicelib import clusters, issuers, keys, logs, rotation, service, sessions
from chalicelib import settings as settings_module

PROG = "dashboard-auth"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
KEY_HOLDER_SECRET = "kubernetes-dashboard-key-holder"
CSRF_SECRET = "kubernetes-dashboard-csrf"  # the Dashboard v2 reads data "csrf" at start, as its xsrftoken key
DEFAULT_NAMESPACE = "kubernetes-dashboard"
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class CommandFailed(Exception):
    """An expected operational failure: the message is the one line the operator reads (exit 1)."""


class UsageError(Exception):
    """Arguments or settings that cannot work: one line, exit 2 (as argparse's own errors)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (the usage is one --help away)."""

    def error(self, message: str):
        message = logs.redact(message)  # "unrecognized arguments: eyJ...": a token typed on the command line
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class _RenamedFlag(argparse.Action):
    """A flag that was renamed: using it is a usage error that names the new one."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} was renamed: use {self.new}")


class _CommandListFormatter(argparse.HelpFormatter):
    """Keeps each command and its one-line description on one line in --help.

    argparse measures the command names at the list's indent, then prints them one level deeper.
    """

    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=30)

    def add_argument(self, action):
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            self._action_max_length += self._indent_increment


# ---------------------------------------------------------------- shared helpers

def _settings() -> settings_module.Settings:
    """The service's settings from the environment, read only by the commands that need them."""
    try:
        return settings_module.load(os.environ, settings_module.APP_DIR)
    except settings_module.SettingsError as error:
        raise UsageError(str(error)) from None


def _secret_id(args) -> str:
    configured = None if args.secret_id else _settings()
    secret_id = args.secret_id or configured.key_secret_id
    if not secret_id:
        if configured.key_file:
            raise UsageError("KEY_FILE holds a single key, which is not rotated: rotation is for the Secrets Manager "
                             "secret (give --secret-id or set KEY_SECRET_ID); to replace a local key, delete the file "
                             "(its sessions end) and run create-key")
        raise UsageError("no key secret: give --secret-id or set KEY_SECRET_ID")
    return secret_id


def _secrets_client():
    """A Secrets Manager client configured as the service's (timeouts, retries, endpoint override)."""
    from botocore.exceptions import BotoCoreError

    try:
        return service.new_secrets_manager()  # a fresh one: the service's is cached per container
    except BotoCoreError as error:
        raise _aws_failure(error, "") from None


def _aws_failure(error: Exception, secret_id: str, action: str = "the request") -> CommandFailed:
    """One line saying what AWS refused or why it could not be asked; never a secret value."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, NoRegionError

    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        code, message = details.get("Code", "unknown"), details.get("Message", "")
        if code == "ResourceNotFoundException":
            return CommandFailed(f"secret {secret_id!r} not found ({message or code}); create-key creates it")
        return CommandFailed(f"Secrets Manager refused {action} on {secret_id!r}: {code}" + (f": {message}" if message else ""))
    if isinstance(error, NoRegionError):
        return CommandFailed("no AWS region: set AWS_REGION or AWS_DEFAULT_REGION")
    if isinstance(error, NoCredentialsError):
        return CommandFailed("no AWS credentials found (environment, profile or instance role)")
    if isinstance(error, EndpointConnectionError):
        return CommandFailed(f"Secrets Manager unreachable: {error}")
    return CommandFailed(f"Secrets Manager unreachable: {type(error).__name__}")


def _aws_errors():
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


def _version_stages(client, secret_id: str) -> dict[str, list[str]] | None:
    """{VersionId: [stages]} of the secret (DescribeSecret: no secret value is read), None if it does not exist."""
    try:
        return client.describe_secret(SecretId=secret_id).get("VersionIdsToStages", {})
    except client.exceptions.ResourceNotFoundException:
        return None


def _version_with(stages: dict[str, list[str]] | None, stage: str) -> str | None:
    return next((version for version, labels in (stages or {}).items() if stage in labels), None)


def _write_private_file(path: str, text: str) -> None:
    """Write `text` to `path` with mode 0600 from the first byte, replacing the file atomically."""
    directory = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=".key-holder-", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


# ---------------------------------------------------------------- create-key

def _key_store_target(args) -> tuple[str, str]:
    """("secret", id) or ("file", path): the flags first, else as the service chooses (KEY_SECRET_ID, then KEY_FILE)."""
    if args.secret_id:
        return "secret", args.secret_id
    if args.key_file:
        return "file", os.path.abspath(args.key_file)
    configured = _settings()
    if configured.key_secret_id:
        return "secret", configured.key_secret_id
    if configured.key_file:  # relative to the app's directory, as the service reads it
        return "file", os.path.abspath(settings_module.resolve_path(configured, configured.key_file))
    raise UsageError("no key store: give --secret-id or --key-file, or set KEY_SECRET_ID or KEY_FILE")


def cmd_create_key(args) -> int:
    kind, target = _key_store_target(args)
    if kind == "file":
        return _create_key_file(target)
    secret_id = target
    client = _secrets_client()
    try:
        before = _version_with(_version_stages(client, secret_id), "AWSCURRENT")
    except _aws_errors() as error:
        raise _aws_failure(error, secret_id, "DescribeSecret") from None
    # The service's own bootstrap: one ClientRequestToken per situation, so a racing container
    # (or a second operator) writes the same version, and a usable key is never replaced.
    store = keys.SecretsManagerKeyStore(secret_id, lambda: client)
    try:
        kid = store.fetch().current.kid
    except keys.KeyStoreUnavailable as error:
        raise CommandFailed(str(error)) from None
    if before == kid:
        print(f"the key was already there in {secret_id}: kid {kid} (not changed)")
    elif before is None:
        print(f"created the key in {secret_id}: kid {kid}")
    else:
        print(f"created the key in {secret_id}: kid {kid} (version {before} held no usable key)")
    return EXIT_OK


def _create_key_file(path: str) -> int:
    """The `local` stage's key file, created as the service creates it (mode 0600, never overwritten)."""
    existed = os.path.lexists(path)
    try:
        kid = keys.FileKeyStore(path).fetch().current.kid
    except keys.KeyStoreUnavailable as error:
        hint = "; move it away to have a new one created" if existed else ""
        raise CommandFailed(f"{error}{hint}") from None
    except OSError as error:
        raise CommandFailed(f"cannot create key file {path}: {error.strerror or type(error).__name__}") from None
    if existed:
        print(f"the key was already there in key file {path}: kid {kid} (not changed)")
        mode = os.stat(path).st_mode & 0o777
        if mode & 0o077:
            print(f"warning: key file {path} is readable by others (mode {mode:04o}): chmod 600 it", file=sys.stderr)
    else:
        print(f"created the key in key file {path}: kid {kid} (mode 0600)")
    return EXIT_OK


# ---------------------------------------------------------------- rotate

def cmd_rotate(args) -> int:
    secret_id = _secret_id(args)
    client = _secrets_client()
    try:
        if args.via_secrets_manager:
            return _rotate_via_secrets_manager(client, secret_id)
        before = _version_stages(client, secret_id)
        if before is None:
            raise CommandFailed(f"secret {secret_id!r} not found; create-key creates it")
        old = _version_with(before, "AWSCURRENT")
        if old is None:
            raise CommandFailed(f"secret {secret_id!r} has no key to rotate (no AWSCURRENT version); run create-key first")
        try:
            new = rotation.rotate_now(client, secret_id)
        except rotation.RotationError as error:
            raise CommandFailed(f"rotation failed: {error}") from None
        after = _version_stages(client, secret_id)
    except _aws_errors() as error:
        raise _aws_failure(error, secret_id, "the rotation") from None
    if _version_with(after, "AWSCURRENT") != new or _version_with(after, "AWSPREVIOUS") != old:
        raise CommandFailed(f"rotation of {secret_id} did not settle: AWSCURRENT is {_version_with(after, 'AWSCURRENT')}")
    print(f"rotated {secret_id}: {old} -> {new}")
    print(f"  AWSCURRENT  {new}  seals new sessions")
    print(f"  AWSPREVIOUS {old}  still opens the sessions sealed before")
    retired = _version_with(before, "AWSPREVIOUS")
    if retired and retired not in (old, new):
        print(f"  retired     {retired}  sessions still sealed with it must log in again")
    print("Containers use the new key within KEY_CACHE_TTL (at once when they meet its kid). "
          "An in-cluster Dashboard sharing the key needs the new manifest, and a restart.", file=sys.stderr)
    return EXIT_OK


def _rotate_via_secrets_manager(client, secret_id: str) -> int:
    try:
        described = client.describe_secret(SecretId=secret_id)
    except client.exceptions.ResourceNotFoundException:
        raise CommandFailed(f"secret {secret_id!r} not found; create-key creates it") from None
    function = described.get("RotationLambdaARN")
    if not function:
        raise CommandFailed(
            f"rotation is not configured on secret {secret_id!r} (no rotation function): attach this app's "
            "rotate_key function (aws secretsmanager rotate-secret --rotation-lambda-arn ...), "
            "or rotate here with your own IAM: rotate without --via-secrets-manager"
        )
    answer = client.rotate_secret(SecretId=secret_id)
    print(f"rotation of {secret_id} started by {function}: new version {answer['VersionId']} "
          "(AWSCURRENT once the rotation function has finished)")
    return EXIT_OK


# ---------------------------------------------------------------- manifest

def _namespace(text: str) -> str:
    if not _DNS_LABEL.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a namespace name (a DNS label: a-z, 0-9, '-')")
    return text


def _key_source(args) -> tuple[str, str, str]:
    """(stored JSON text, kid, where it came from) from the flags, else as the service would choose."""
    if args.key_file is not None and args.version_stage is not None:
        raise UsageError("--version-stage applies to --secret-id only; a key file has a single key")
    secret_id, key_file = args.secret_id, args.key_file
    if secret_id is None and key_file is None:
        configured = _settings()
        secret_id = configured.key_secret_id
        if secret_id is None and configured.key_file:
            key_file = settings_module.resolve_path(configured, configured.key_file)
        if secret_id is None and key_file is None:
            raise UsageError("no key: give --secret-id or --key-file, or set KEY_SECRET_ID or KEY_FILE")
    if key_file is not None:
        try:
            with open(key_file, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as error:
            raise CommandFailed(f"cannot read key file {key_file}: {error.strerror}") from None
        try:
            kid = "file-" + keys.parse_secret_value("file", text).fingerprint()[:16]  # as FileKeyStore
        except keys.UnusableKey as why:
            raise CommandFailed(f"key file {key_file} holds no usable key: {why}") from None
        return text, kid, f"key file {key_file}"
    stage = args.version_stage or "AWSCURRENT"
    client = _secrets_client()
    try:
        answer = client.get_secret_value(SecretId=secret_id, VersionStage=stage)
    except client.exceptions.ResourceNotFoundException:
        raise CommandFailed(f"secret {secret_id!r} not found, or it has no {stage} version") from None
    except _aws_errors() as error:
        raise _aws_failure(error, secret_id, "GetSecretValue") from None
    kid, text = answer["VersionId"], answer.get("SecretString")
    try:
        keys.parse_secret_value(kid, text)
    except keys.UnusableKey as why:
        raise CommandFailed(f"secret {secret_id} version {kid} ({stage}) holds no usable key: {why}") from None
    return text, kid, f"secret {secret_id} version {kid} ({stage})"


def _secret_document(name: str, namespace: str, kid: str, data: dict[str, str]) -> dict:
    """A v1 Secret whose `data` carries each value's UTF-8 bytes, base64 as the API wants them."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"k8s-app": "kubernetes-dashboard"},
            "annotations": {"dashboard-auth/kid": kid},
        },
        "type": "Opaque",
        "data": {key: base64.b64encode(value.encode("utf-8")).decode("ascii") for key, value in data.items()},
    }


def render_manifest(text: str, kid: str, origin: str, namespace: str) -> str:
    """The Dashboard v2's two Secrets, as one multi-document YAML stream for `kubectl apply -f -`.

    kubernetes-dashboard-key-holder carries priv and pub exactly as stored. kubernetes-dashboard-csrf
    carries the CSRF key this service signs with: the Dashboard keys xsrftoken with
    string(secret.Data["csrf"]), so data.csrf is the key's text itself (its UTF-8 bytes), not what
    that text encodes. A key with no usable csrf member gets the value the service derives.
    """
    import yaml

    fields = json.loads(text)
    csrf = keys.parse_secret_value(kid, text).csrf_secret  # exactly what the service signs with
    documents = [
        _secret_document(KEY_HOLDER_SECRET, namespace, kid, {name: fields[name] for name in ("priv", "pub")}),
        _secret_document(CSRF_SECRET, namespace, kid, {"csrf": csrf}),
    ]
    body = yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False, width=1 << 30,
                              explicit_start=True)
    return (f"# SECRET: the session key and CSRF key of dashboard-auth, from {origin}.\n"
            "# Apply it (kubectl apply -f -), then restart the Dashboard: it reads the CSRF key only at start.\n"
            f"# Do not commit or log it.\n{body}")


def cmd_manifest(args) -> int:
    text, kid, origin = _key_source(args)
    manifest = render_manifest(text, kid, origin, args.namespace)
    print(
        "warning: this manifest holds the session key (priv and pub) and the CSRF key: whoever reads it can "
        "mint sessions for every configured cluster. Keep it secret.",
        file=sys.stderr,
    )
    if args.output:
        try:
            _write_private_file(args.output, manifest)
        except OSError as error:
            raise CommandFailed(f"cannot write {args.output}: {error.strerror}") from None
        print(f"wrote {KEY_HOLDER_SECRET} and {CSRF_SECRET} (kid {kid}) to {args.output} (mode 0600)", file=sys.stderr)
    else:
        sys.stdout.write(manifest)
        sys.stdout.flush()
    return EXIT_OK


# ---------------------------------------------------------------- decode

def _duration(seconds: float) -> str:
    seconds = int(abs(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    while len(parts) > 1 and parts[0][0] == 0:
        parts.pop(0)
    return " ".join(f"{value}{unit}" for value, unit in parts[:2])


def _relative(moment: datetime, now: datetime) -> str:
    delta = (moment - now).total_seconds()
    return f"in {_duration(delta)}" if delta > 0 else f"{_duration(delta)} ago"


def _read_token(argument: str) -> str:
    if argument != "-":
        return argument.strip()
    try:  # room for a whole login answer: the token inside it is a JSON string, its quotes escaped
        return sys.stdin.read(2 * sessions.MAX_TOKEN_CHARS + 4096).strip()
    except (OSError, UnicodeDecodeError):
        raise CommandFailed("cannot read a token from stdin") from None


LOGIN_ANSWER, REFRESH_ANSWER, SESSION_TOKEN = "login answer", "refresh answer", "session token"


def unwrap_answer(text: str) -> tuple[str, str, str | None]:
    """(the session token, what was read, the login answer's name) from a token or a whole answer.

    A login answer is {"name", "jweToken", "errors"}, a refresh answer {"jweToken", "errors"}: both
    carry the token as a JSON string. Anything else is taken as the token itself (and judged by
    sessions.parse). A refused login (jweToken "") is said to be one rather than called malformed.
    """
    try:
        document = json.loads(text)
    except ValueError:
        return text, SESSION_TOKEN, None
    if not isinstance(document, dict) or "jweToken" not in document or "protected" in document:
        return text, SESSION_TOKEN, None
    token, errors = document["jweToken"], document.get("errors")
    name = document.get("name")
    name = name[:253] if isinstance(name, str) and name.isprintable() else None
    read = LOGIN_ANSWER if "name" in document else REFRESH_ANSWER
    if token == "" and errors:
        messages = sorted({str(((error or {}).get("ErrStatus") or {}).get("message", "?"))[:80]
                           for error in errors if isinstance(error, dict)} or {"?"})
        raise CommandFailed(f"this is a refused login's answer ({', '.join(messages)}): it carries no session token")
    if not isinstance(token, str):
        raise CommandFailed("this answer's jweToken is not a string: not a session token")
    return token, read, name


def _b64url_json(text: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))


def inspect_token(text: str, now: datetime) -> tuple[dict, sessions.Claims]:
    """What a session token says about itself, read without any key; InvalidToken if it is not one.

    sessions.parse decides what is a token (the same strict check as a refresh); the header and the
    AAD are then shown as they are written in it. The encrypted key and the ciphertext never are.
    """
    envelope = sessions.parse(text)
    document = json.loads(text)
    header, aad = _b64url_json(document["protected"]), _b64url_json(document["aad"])
    claims = envelope.claims
    expires_in = None if claims.expires_at is None else int((claims.expires_at - now).total_seconds())
    info = {
        "kid": envelope.kid,
        "alg": header["alg"],
        "enc": header["enc"],
        "cluster": claims.cluster,
        "iat": aad["iat"],
        "exp": aad.get("exp"),
        "auth_time": aad.get("auth_time"),
        "reviewed_at": aad.get("reviewed_at"),
        "now": sessions.format_time(now),
        "expired": expires_in is not None and expires_in <= 0,
        "expires_in_seconds": expires_in,
        "session_age_seconds": int((now - claims.auth_time).total_seconds()),
        "since_review_seconds": None if claims.reviewed_at is None else int((now - claims.reviewed_at).total_seconds()),
    }
    return info, claims


def _describe_text(info: dict, claims: sessions.Claims, now: datetime) -> list[str]:
    rows = [
        ("kid", info["kid"] or "(none: minted by a Dashboard v2 backend)"),
        ("alg", info["alg"]),
        ("enc", info["enc"]),
        ("cluster", info["cluster"] or "(none: the default cluster)"),
        ("iat", f"{info['iat']}  ({_relative(claims.issued_at, now)})"),
    ]
    if claims.expires_at is None:
        rows.append(("exp", "(none: never expires)"))
    elif info["expired"]:
        rows.append(("exp", f"{info['exp']}  (expired {_duration(info['expires_in_seconds'])} ago)"))
    else:
        rows.append(("exp", f"{info['exp']}  (expires in {_duration(info['expires_in_seconds'])})"))
    if info["auth_time"] is None:
        rows.append(("auth_time", "(none: the session began at iat)"))
    else:
        rows.append(("auth_time", f"{info['auth_time']}  ({_relative(claims.auth_time, now)})"))
    if claims.reviewed_at is None:
        rows.append(("reviewed_at", "(none: the next refresh asks the cluster)"))
    else:
        rows.append(("reviewed_at", f"{info['reviewed_at']}  ({_relative(claims.reviewed_at, now)})"))
    rows.append(("session age", _duration(info["session_age_seconds"])))
    return [f"{name:<12} {value}" for name, value in rows]


def cmd_decode(args) -> int:
    text, read, name = unwrap_answer(_read_token(args.token))
    now = datetime.now(timezone.utc).replace(microsecond=0)
    try:
        info, claims = inspect_token(text, now)
    except sessions.InvalidToken:
        what = "" if read == SESSION_TOKEN else f"the jweToken of this {read} is "
        raise CommandFailed(
            f"{what}not a well-formed session token (expected the Dashboard's JWE: flattened JSON, "
            "RSA-OAEP-256/A256GCM, a session AAD; or a whole login or refresh answer that carries one)"
        ) from None
    if args.json:
        print(json.dumps({"read": read, "name": name, **info}, indent=2))
    else:
        source = {SESSION_TOKEN: "a session token",
                  LOGIN_ANSWER: "a login answer's jweToken" + (f" (name {name})" if name else ""),
                  REFRESH_ANSWER: "a refresh answer's jweToken"}[read]
        print("\n".join([f"{'read':<12} {source}", *_describe_text(info, claims, now)]))
    return EXIT_OK


# ---------------------------------------------------------------- check-clusters

@dataclass
class ClusterCheck:
    name: str
    server: str
    ok: bool
    detail: str

    def line(self, name_width: int) -> str:
        return f"{'OK' if self.ok else 'FAIL':<4}  {self.name:<{name_width}}  {self.server}  {self.detail}"


class _Failed(Exception):
    pass


def _tls_check(configuration, timeout: float) -> None:
    """Connect and handshake as the kubernetes client would, so each failure gets its own words."""
    parts = urlsplit(configuration.host)
    if parts.scheme != "https" or not parts.hostname:
        raise _Failed(f"server {configuration.host!r} is not an https:// URL")
    if not configuration.verify_ssl:
        raise _Failed("TLS verification is turned off for this cluster (insecure-skip-tls-verify): no CA to check")
    host, port = parts.hostname, parts.port or 443
    try:
        context = ssl.create_default_context(
            cafile=configuration.ssl_ca_cert or None,
            cadata=configuration.ca_cert_data.decode() if isinstance(configuration.ca_cert_data, bytes)
            else configuration.ca_cert_data or None,
        )
        if configuration.cert_file and configuration.key_file:
            context.load_cert_chain(configuration.cert_file, configuration.key_file)
    except (ssl.SSLError, OSError, ValueError) as error:
        raise _Failed(f"the CA or client certificate does not load ({type(error).__name__})") from None
    if configuration.assert_hostname is False:
        context.check_hostname = False
    try:
        connection = socket.create_connection((host, port), timeout=timeout)
    except socket.timeout:
        raise _Failed(f"unreachable: no TCP connection to {host}:{port} within {timeout:g} s") from None
    except socket.gaierror:
        raise _Failed(f"unreachable: cannot resolve {host}") from None
    except OSError as error:
        raise _Failed(f"unreachable: {(error.strerror or type(error).__name__).lower()} ({host}:{port})") from None
    with connection:
        try:
            with context.wrap_socket(connection, server_hostname=configuration.tls_server_name or host):
                pass
        except ssl.SSLCertVerificationError as error:
            raise _Failed(f"the CA does not verify the server's certificate: {error.verify_message}") from None
        except socket.timeout:
            raise _Failed(f"TLS handshake with {host}:{port} timed out after {timeout:g} s") from None
        except (ssl.SSLError, OSError) as error:
            reason = getattr(error, "reason", None) or type(error).__name__
            raise _Failed(f"TLS handshake with {host}:{port} failed ({reason})") from None


def _access_check(api_client, timeout: float) -> None:
    """SelfSubjectAccessReview with the reviewer's credentials: may it create TokenReviews?"""
    from kubernetes.client import (
        AuthorizationV1Api,
        V1ResourceAttributes,
        V1SelfSubjectAccessReview,
        V1SelfSubjectAccessReviewSpec,
    )
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import ConnectTimeoutError, HTTPError, MaxRetryError, ReadTimeoutError
    from urllib3.exceptions import TimeoutStateError

    body = V1SelfSubjectAccessReview(
        spec=V1SelfSubjectAccessReviewSpec(
            resource_attributes=V1ResourceAttributes(
                verb="create", group="authentication.k8s.io", resource="tokenreviews"
            )
        )
    )
    try:
        answer = AuthorizationV1Api(api_client).create_self_subject_access_review(
            body, _request_timeout=(timeout, timeout)
        )
    except ApiException as error:  # never str(error): it carries the response body
        if error.status == 401:
            raise _Failed("the cluster rejected the reviewer credentials (HTTP 401): unknown, expired or revoked") from None
        raise _Failed(f"the cluster answered HTTP {error.status} to a SelfSubjectAccessReview") from None
    except (HTTPError, OSError) as error:
        cause = getattr(error, "reason", None) if isinstance(error, MaxRetryError) else error
        if isinstance(cause, (TimeoutError, TimeoutStateError, ReadTimeoutError, ConnectTimeoutError)):
            raise _Failed(f"no answer to a SelfSubjectAccessReview within {timeout:g} s") from None
        raise _Failed(f"unreachable during the SelfSubjectAccessReview: {type(cause or error).__name__}") from None
    status = answer.status
    if status is None or not status.allowed:
        why = (status.reason or status.evaluation_error or "") if status is not None else ""
        raise _Failed("the reviewer may not create tokenreviews.authentication.k8s.io"
                      + (f" ({why[:200]})" if why else ""))


def probe_token() -> str:
    """A JWT-shaped string nobody signed: every cluster must refuse it, and it is worth nothing to anyone."""
    def part(value: object) -> str:
        raw = value if isinstance(value, bytes) else json.dumps(value, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    now = int(datetime.now(timezone.utc).timestamp())
    header = {"alg": "RS256", "kid": "dashboard-auth-check-clusters"}
    claims = {"iss": "dashboard-auth check-clusters", "sub": "system:serviceaccount:check-clusters:not-signed",
              "iat": now, "exp": now + 60}
    return ".".join((part(header), part(claims), part(b"signed by nobody")))


def _token_review_check(api_client, cluster: clusters.Cluster, timeout: float) -> str:
    """One TokenReview of a token nobody signed, sent as the service sends it (the registry's audiences
    as spec.audiences): the reviewer path end to end. Returns what it showed; _Failed if it failed.

    A cluster that names audiences in its answer that are not the registry's would fail every login
    (the service wants one of its audiences in status.audiences). A real API server names none when it
    refuses a token, so only an authenticator that always names its audiences shows a mismatch here.
    """
    from kubernetes.client import AuthenticationV1Api, V1TokenReview, V1TokenReviewSpec
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import ConnectTimeoutError, HTTPError, MaxRetryError, ReadTimeoutError
    from urllib3.exceptions import TimeoutStateError

    wanted = list(cluster.audiences)
    body = V1TokenReview(spec=V1TokenReviewSpec(token=probe_token(), audiences=wanted or None))
    try:
        # The answer echoes the token under review: it is read here, never logged or printed.
        answer = AuthenticationV1Api(api_client).create_token_review(body, _request_timeout=(timeout, timeout))
    except ApiException as error:  # never str(error): it carries the response body
        if error.status == 401:
            raise _Failed("the cluster rejected the reviewer credentials on a TokenReview (HTTP 401)") from None
        if error.status == 403:
            raise _Failed("the cluster refused the reviewer's TokenReview (HTTP 403), though its "
                          "SelfSubjectAccessReview allowed it: an authorizer or admission webhook refuses it") from None
        raise _Failed(f"the cluster answered HTTP {error.status} to a TokenReview") from None
    except (HTTPError, OSError) as error:
        cause = getattr(error, "reason", None) if isinstance(error, MaxRetryError) else error
        if isinstance(cause, (TimeoutError, TimeoutStateError, ReadTimeoutError, ConnectTimeoutError)):
            raise _Failed(f"no answer to a TokenReview within {timeout:g} s") from None
        raise _Failed(f"unreachable during a TokenReview: {type(cause or error).__name__}") from None
    except ValueError:  # the client could not read the answer as a TokenReview
        raise _Failed("the cluster answered a TokenReview with something that is not one") from None
    status = answer.status
    if status is None:
        raise _Failed("the cluster's TokenReview answer has no status")
    if status.authenticated:
        raise _Failed("the cluster authenticated a token nobody signed: whatever answers its TokenReviews does not "
                      "check tokens; do not serve logins for it")
    named = [audience for audience in (status.audiences or []) if isinstance(audience, str)]
    note = "TokenReview refuses an unsigned token"
    if named and wanted and not set(named) & set(wanted):
        raise _Failed(f"{note}, but audiences do not match: the cluster's answer names {named}, the registry's "
                      f"audiences are {wanted}, so every login would be refused; set audiences to one the cluster "
                      "names, or remove it")
    if named and wanted:
        return f"{note}, audiences agree ({', '.join(sorted(set(named) & set(wanted)))})"
    if named:
        return f"{note}, the cluster names audiences {named} (the registry sets none: not checked)"
    return note


def _issuer_keys_note(reviewer: clusters.Reviewer, cluster: clusters.Cluster) -> str:
    """Whether logins to this cluster are verified here first, or every one costs the cluster a TokenReview."""
    if not cluster.verify_locally:
        return "verifyLocally is off: every login is a TokenReview"
    try:
        published = issuers.Issuers(reviewer).fetch(cluster)
    except clusters.ClusterUnavailable as error:
        return f"issuer keys unreadable ({error})"
    if published is None:
        return "publishes no issuer keys (see the service log's warning): every login is a TokenReview"
    return f"{len(published.keys)} issuer key(s) published, logins verified before review"


def check_cluster(reviewer: clusters.Reviewer, cluster: clusters.Cluster, timeout: float) -> ClusterCheck:
    server = cluster.server or "(kubeconfig)"
    try:
        api_client = reviewer.client_for(cluster)
        server = api_client.configuration.host
        _tls_check(api_client.configuration, timeout)
        _access_check(api_client, timeout)
        review_note = _token_review_check(api_client, cluster, timeout)
    except _Failed as failure:
        return ClusterCheck(cluster.name, server, False, str(failure))
    except (clusters.ClusterConfigError, clusters.ClusterUnavailable) as error:
        return ClusterCheck(cluster.name, server, False, str(error))
    except Exception as error:  # one cluster's surprise must not hide the others' results; no text: it may quote secrets
        return ClusterCheck(cluster.name, server, False, f"unexpected failure: {type(error).__name__}")
    note = f"reachable, CA verifies, reviewer may create tokenreviews; {review_note}"
    note += "; " + _issuer_keys_note(reviewer, cluster)
    if "eks" in cluster.reviewer:
        note += " (checked with your AWS identity, not the function's role)"
    return ClusterCheck(cluster.name, server, True, note)


def cmd_check_clusters(args) -> int:
    configured = _settings()
    if args.clusters_file is not None:
        clusters_file = os.path.abspath(args.clusters_file)
    elif configured.clusters_file:
        clusters_file = settings_module.resolve_path(configured, configured.clusters_file)
    else:
        clusters_file = None  # the current kubeconfig context, as cluster "default"
    timeout = args.timeout if args.timeout is not None else configured.cluster_timeout
    try:
        registry = clusters.load_registry(clusters_file, configured.app_dir)
    except clusters.ClusterConfigError as error:
        raise CommandFailed(str(error)) from None
    shared: list = []

    def secrets_client():  # for tokenSecretId reviewers: one client, built on first need
        if not shared:
            shared.append(service.new_secrets_manager())
        return shared[0]

    reviewer = clusters.Reviewer(timeout=timeout, secrets_client=secrets_client)
    ordered = [registry.clusters[name] for name in registry.names()]
    with ThreadPoolExecutor(max_workers=min(8, len(ordered))) as pool:
        results = list(pool.map(lambda cluster: check_cluster(reviewer, cluster, timeout), ordered))
    width = max(len(result.name) for result in results)
    for result in results:
        print(result.line(width))
    return EXIT_OK if all(result.ok for result in results) else EXIT_FAILED


# ---------------------------------------------------------------- smoke

def cmd_smoke(args) -> int:
    from dashboard_auth_cli import smoke

    try:
        return smoke.run(args)
    except smoke.SmokeUsage as error:
        raise UsageError(str(error)) from None
    except smoke.SmokeFailed as error:
        raise CommandFailed(str(error)) from None


class _TokenOnArgv(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is not taken: a token on the command line ends up in shell history and the "
                     "process list. Pipe it in (kubectl create token ... | dashboard-auth smoke ...) or give "
                     "--token-file FILE")


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 60:
        raise argparse.ArgumentTypeError("must be between 0 and 60 seconds")
    return value


# ---------------------------------------------------------------- entry point

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        formatter_class=_CommandListFormatter,
        description="Operator commands for dashboard-auth. Settings come from the service's environment "
        "variables (KEY_SECRET_ID, KEY_FILE, CLUSTERS_FILE, CLUSTER_TIMEOUT, AWS_ENDPOINT_URL_SECRETS_MANAGER); "
        "flags override them.",
    )
    commands = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    def command(name: str, summary: str, description: str, **options):
        sub = commands.add_parser(name, help=summary, description=description, **options)
        return sub

    secret_help = "the key secret (name or ARN); default: KEY_SECRET_ID"

    create = command("create-key", "create the key, unless the secret or key file holds one",
                     "Create the session key in the Secrets Manager secret if it has no usable key, with the "
                     "service's race-free bootstrap (a usable key is never replaced). With KEY_FILE (and no "
                     "KEY_SECRET_ID), or --key-file, create the local stage's key file instead (mode 0600; an "
                     "existing file is never replaced). Prints the kid; never the key.")
    store = create.add_mutually_exclusive_group()
    store.add_argument("--secret-id", help=secret_help)
    store.add_argument("--key-file", help="a local key file instead (default: KEY_FILE when KEY_SECRET_ID is unset; "
                       "a relative KEY_FILE is taken from the app's directory, as the service takes it)")
    create.set_defaults(run=cmd_create_key)

    rotate = command("rotate", "rotate the key: new AWSCURRENT, old one AWSPREVIOUS",
                     "Rotate the session key. By default the four rotation steps run here, with your own IAM; "
                     "--via-secrets-manager asks Secrets Manager to run the secret's rotation function instead.")
    rotate.add_argument("--secret-id", help=secret_help)
    rotate.add_argument("--via-secrets-manager", action="store_true",
                        help="call RotateSecret: the rotation function configured on the secret does the work")
    rotate.set_defaults(run=cmd_rotate)

    manifest = command("manifest", "print the Dashboard's key-holder and CSRF Secrets (SECRET)",
                       "Print the Kubernetes Secrets kubernetes-dashboard-key-holder (data priv and pub) and "
                       "kubernetes-dashboard-csrf (data csrf, this service's CSRF key) as one YAML stream, so that "
                       "an in-cluster Dashboard v2 shares the key and accepts the CSRF tokens this service issues. "
                       "Restart the Dashboard after applying: it reads the CSRF key only at start. "
                       "The output IS SECRET: stdout or a 0600 file.")
    source = manifest.add_mutually_exclusive_group()
    source.add_argument("--secret-id", help=secret_help)
    source.add_argument("--key-file", help="a local key file instead (default: KEY_FILE when KEY_SECRET_ID is unset)")
    manifest.add_argument("--namespace", type=_namespace, default=DEFAULT_NAMESPACE,
                          help=f"the Dashboard's namespace (default: {DEFAULT_NAMESPACE})")
    manifest.add_argument("--version-stage", metavar="LABEL",
                          help="the Secrets Manager version stage of the key to carry: AWSCURRENT (default), "
                          "AWSPREVIOUS or AWSPENDING. Not a Chalice stage")
    manifest.add_argument("--stage", action=_RenamedFlag, nargs="?", help=argparse.SUPPRESS,
                          new="--version-stage LABEL (a Secrets Manager version stage such as AWSPREVIOUS; "
                          "the Chalice stage is chosen by KEY_SECRET_ID or --secret-id)")
    manifest.add_argument("--output", "-o", metavar="FILE", help="write the manifest to FILE (mode 0600) instead of stdout")
    manifest.set_defaults(run=cmd_manifest)

    decode = command("decode", "show a session token's header and times, undecrypted",
                     "Show what a session token says about itself (kid, alg, enc, cluster, iat, exp, auth_time, "
                     "reviewed_at, expiry and session age) without decrypting it. It takes the jweToken itself or "
                     "the whole login (or refresh) answer that carries it, and says which it read. Give - to read "
                     "from stdin, which keeps the token out of your shell history and the process list.")
    decode.add_argument("token", metavar="TOKEN|-",
                        help="the jweToken or the whole login/refresh answer, or - for stdin")
    decode.add_argument("--json", action="store_true", help="print JSON")
    decode.set_defaults(run=cmd_decode)

    check = command("check-clusters", "check every cluster's reach, CA and reviewer rights",
                    "For every cluster of the registry (or the kubeconfig context as \"default\"): TCP and TLS "
                    "reach, the CA verifies the server, a SelfSubjectAccessReview with the reviewer's "
                    "credentials says it may create TokenReviews, and one TokenReview of a token nobody signed "
                    "(with the registry's audiences, as the service sends them) is answered and refused; an "
                    "answer naming audiences other than the registry's fails. One line per cluster; exit 1 if "
                    "any fails.")
    check.add_argument("--clusters-file", help="the cluster registry (default: CLUSTERS_FILE, else the kubeconfig)")
    check.add_argument("--timeout", type=_timeout, help="seconds per connection and request (default: CLUSTER_TIMEOUT, 5)")
    check.set_defaults(run=cmd_check_clusters)

    smoke = command("smoke", "walk the frontend's login sequence against a stage",
                    "After a deploy: walk the Dashboard frontend's sequence against the stage at --url (GET "
                    "login/modes, GET csrftoken/login, POST login, GET login/status with the jweToken header, GET "
                    "csrftoken/token, POST token/refresh twice, the second with the renewed token), one line per "
                    "step with its latency. With --origin, every answer must allow that origin and the browser's "
                    "preflights must allow the frontend's methods and headers. Stops at the first failure with a "
                    "sentence saying what is wrong (exit 1). The ServiceAccount token comes from stdin or "
                    "--token-file, never the command line, and is never printed; nor is any token the service "
                    "issues.", allow_abbrev=False)
    smoke.add_argument("--url", required=True,
                       help="the API's base URL, the one /api/v1/... hangs from: https://<id>.execute-api.<region>."
                       "amazonaws.com/api, or your custom domain or CDN URL")
    smoke.add_argument("--origin", help="a Dashboard frontend's origin (https://dashboard.example.com): check CORS for it")
    smoke.add_argument("--cluster", help="a named cluster (/clusters/<name>/...); default: the default cluster")
    smoke.add_argument("--token-file", metavar="FILE|-",
                       help="read the ServiceAccount token from FILE; without it (or with -) from stdin, or a "
                       "prompt that does not echo when stdin is a terminal")
    smoke.add_argument("--token", nargs="?", action=_TokenOnArgv, help=argparse.SUPPRESS)
    smoke.add_argument("--timeout", type=_timeout, default=30.0, help="seconds per request (default: 30)")
    smoke.set_defaults(run=cmd_smoke)
    return parser


def _configure_logging() -> None:
    """Library warnings go to stderr, scrubbed like the service's logs (only when run as a program)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(logs.RedactingFilter())
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # its retry warnings repeat what the command reports


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2), already printed
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    try:
        return args.run(args)
    except UsageError as error:
        print(f"{parser.prog} {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except CommandFailed as error:
        print(f"{parser.prog} {args.command}: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{parser.prog} {args.command}: interrupted", file=sys.stderr)
        return 130


def entry() -> int:
    """The console script `dashboard-auth` (pyproject.toml) and `python -m dashboard_auth_cli`."""
    _configure_logging()
    return main()


if __name__ == "__main__":
    sys.exit(entry())
