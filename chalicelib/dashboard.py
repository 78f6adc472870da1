"""The Dashboard v2 wire contract: request bodies in, response bodies and error shapes out.

The Dashboard frontend reads these exact shapes (see docs/design.md, "Errors"); nothing here
decides policy, it only speaks the Dashboard's language.
"""
from __future__ import annotations

import base64
import functools
import hmac
import json
import re
import logging
import time
from dataclasses import dataclass
from typing import Callable

from chalice import Response

from .clusters import ClusterConfigError, ClusterUnavailable, NotAuthenticated, UnknownCluster
from .keys import KeyNotConfigured, KeyStoreUnavailable
from .sessions import InvalidToken, SessionExpired

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
RETRY_AFTER_SECONDS = 5
UNAUTHORIZED = "MSG_LOGIN_UNAUTHORIZED_ERROR"
EXPIRED = "MSG_TOKEN_EXPIRED_ERROR"
CSRF_FAILED = "CSRF validation failed"
CSRF_HEADER = "X-CSRF-TOKEN"
CSRF_TIMEOUT_MS = 24 * 60 * 60 * 1000
_CSRF_ACTION = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_CSRF_MILLIS = re.compile(r"[0-9]{1,16}")
_LOGIN_FIELDS = {"username", "password", "token", "kubeconfig"}


class BadRequest(ValueError):
    """The request is malformed; the message is a sentence for the client."""


class BodyTooLarge(ValueError):
    pass


class CsrfRejected(Exception):
    pass


@dataclass(frozen=True)
class LoginSpec:
    token: str


# ---------------------------------------------------------------- request bodies

class _DuplicateMember(Exception):
    pass


def _unique_members(pairs: list[tuple[str, object]]) -> dict:
    """One value per member: a proxy reading the first copy must see the request we act on."""
    seen: dict = {}
    for name, value in pairs:
        if name in seen:
            raise _DuplicateMember(name[:64])
        seen[name] = value
    return seen


_BODY_JSON = json.JSONDecoder(object_pairs_hook=_unique_members)  # built once: json.loads(hook=...) builds one per call


def is_json_request(content_type: str | None) -> bool:
    """application/json (parameters allowed), or no type at all; never a list of types.

    Chalice alone would take "text/plain; application/json", a type a browser sends across
    origins without a preflight.
    """
    if content_type is None:
        return True
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" and "," not in content_type


def unsupported_media_type() -> Response:
    return text_error(415, "Send the body as Content-Type: application/json.")


def _json_object(raw_body: bytes | None) -> dict:
    if raw_body is not None and len(raw_body) > MAX_BODY_BYTES:
        raise BodyTooLarge()
    if not raw_body:
        raise BadRequest("The request body is empty; send a JSON object.")
    try:
        document = _BODY_JSON.decode(raw_body.decode("utf-8"))
    except _DuplicateMember as duplicate:
        raise BadRequest(f'The request body names "{duplicate}" twice.') from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadRequest("The request body is not valid JSON.") from None
    if not isinstance(document, dict):
        raise BadRequest("The request body must be a JSON object.")
    return document


KUBECONFIG_NOT_YAML = "kubeconfig is not valid YAML."
KUBECONFIG_ALIASES = "kubeconfig uses YAML aliases (*name), and aliases are not accepted; write the values out in full."
KUBECONFIG_MAX_DEPTH = 32  # a kubeconfig nests about 8 deep (users, an entry, user, exec, env, an entry)
KUBECONFIG_TOO_DEEP = f"kubeconfig is nested more than {KUBECONFIG_MAX_DEPTH} levels deep."


class _AliasRefused(Exception):
    pass


class _TooDeep(Exception):
    pass


@functools.lru_cache(maxsize=1)
def _kubeconfig_loader() -> type:
    """A YAML loader that reads a kubeconfig as text, and whose cost follows the size of the text.

    BaseLoader: every scalar is the string written, with none of YAML 1.1's implicit types (a
    base-60 float too large for a float, impossible dates), the way kubectl reads the string fields
    of a kubeconfig. An alias is refused before it is composed: a kilobyte of nested aliases
    ("billion laughs") stands for billions of values, and comparing two of them at the lookup of the
    current context would take hours. A tag is refused too: nothing written by kubectl carries one,
    and reading `!!binary x` as the text "x" would not be what the writer meant. Nesting is capped:
    PyYAML's scanner looks at every open flow collection ("[", "{") of a line for each token, so
    2 KB of "[" cost 0.6 s of CPU, and deeper documents end in a RecursionError.
    """
    import yaml

    plain_tags = {
        yaml.ScalarEvent: "tag:yaml.org,2002:str",
        yaml.SequenceStartEvent: "tag:yaml.org,2002:seq",
        yaml.MappingStartEvent: "tag:yaml.org,2002:map",
    }

    class KubeconfigLoader(yaml.BaseLoader):
        depth = 0

        def fetch_flow_collection_start(self, TokenClass):
            if self.flow_level >= KUBECONFIG_MAX_DEPTH:
                raise _TooDeep()
            super().fetch_flow_collection_start(TokenClass)

        def compose_node(self, parent, index):
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent):
                raise _AliasRefused()
            tag = getattr(event, "tag", None)
            if tag not in (None, "!") and tag != plain_tags.get(type(event)):
                raise yaml.YAMLError("tags are not accepted")
            if self.depth >= KUBECONFIG_MAX_DEPTH:
                raise _TooDeep()  # block collections ("- - - x") nest without a flow level
            self.depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    return KubeconfigLoader


def _string(value: object, field: str) -> str | None:
    """A name or token as written, or None when absent; anything but a string is refused, never compared."""
    if value is None or isinstance(value, str):
        return value
    raise BadRequest(f"kubeconfig's {field} must be a string.")


def _token_from_kubeconfig(text: str) -> str:
    import yaml

    loader = _kubeconfig_loader()
    try:
        config = yaml.load(text, Loader=loader)
    except _AliasRefused:
        raise BadRequest(KUBECONFIG_ALIASES) from None
    except _TooDeep:
        raise BadRequest(KUBECONFIG_TOO_DEEP) from None
    except Exception:
        # Whatever the parser raises (YAMLError, RecursionError on deep nesting, or a plain Python
        # error from some corner of it) is about the text the client sent: a 400, never a 500.
        raise BadRequest(KUBECONFIG_NOT_YAML) from None
    if not isinstance(config, dict):
        raise BadRequest("kubeconfig must be a YAML mapping.")

    def named(section: str, name: str | None, field: str) -> dict:
        entries = config.get(section)
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and _string(entry.get("name"), field) == name and name:
                return entry
        return {}

    current = _string(config.get("current-context"), "current-context")
    context = named("contexts", current, "context name").get("context") or {}
    user_name = _string(context.get("user"), "context's user") if isinstance(context, dict) else None
    user = named("users", user_name, "user name").get("user") or {}
    token = _string(user.get("token"), "user's token") if isinstance(user, dict) else None
    if not token:
        raise BadRequest("kubeconfig's current context has no user with a token; only token logins are supported.")
    return token


def parse_login(raw_body: bytes | None) -> LoginSpec:
    body = _json_object(raw_body)
    if set(body) - _LOGIN_FIELDS:
        # never echo the client's member names: one of them may be a token sent by mistake
        raise BadRequest('The login body takes only "token" or "kubeconfig" (and empty "username"/"password").')
    if not all(isinstance(value, str) for value in body.values()):
        raise BadRequest("Login fields must be strings.")
    if body.get("username") or body.get("password"):
        raise BadRequest("Basic (username/password) login is not supported; log in with a token.")
    token, kubeconfig = body.get("token", ""), body.get("kubeconfig", "")
    if bool(token) == bool(kubeconfig):
        raise BadRequest('Send exactly one of "token" or "kubeconfig".')
    return LoginSpec(token=token or _token_from_kubeconfig(kubeconfig))


def parse_refresh(raw_body: bytes | None) -> str:
    body = _json_object(raw_body)
    if set(body) - {"jweToken"}:
        raise BadRequest('The refresh body takes only "jweToken", a string.')
    token = body.get("jweToken")
    if not isinstance(token, str) or not token:
        raise BadRequest('The request body must carry "jweToken", a string.')
    return token


def csrf_action(action: str) -> str:
    if not _CSRF_ACTION.fullmatch(action or ""):
        raise BadRequest("The CSRF action must be 1-64 letters, digits, '.', '_' or '-'.")
    return action


# ---------------------------------------------------------------- CSRF (golang.org/x/net/xsrftoken)

def _clean(value: str) -> str:
    return value.replace(":", "::")


def csrf_token(key: str, action: str, now_ms: int | None = None) -> str:
    """A token the Dashboard's xsrftoken.Generate(key, "none", action) would produce."""
    millis = int(time.time() * 1000) if now_ms is None else now_ms
    digest = hmac.digest(key.encode(), f"{_clean('none')}:{_clean(action)}:{millis}".encode(), "sha1")
    return base64.urlsafe_b64encode(digest).decode().rstrip("=") + f":{millis}"


def csrf_valid(token: str | None, keys: list[str], action: str, now_ms: int | None = None) -> bool:
    """xsrftoken.Valid: signed by one of our keys for this action, under 24 h old, not from the future."""
    if not token or len(token) > 128:
        return False
    _, sep, millis_text = token.rpartition(":")
    if not sep or not _CSRF_MILLIS.fullmatch(millis_text):
        return False
    millis = int(millis_text)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if now - millis >= CSRF_TIMEOUT_MS or millis > now + 60_000:
        return False
    return any(hmac.compare_digest(token.encode(), csrf_token(key, action, millis).encode()) for key in keys)


# ---------------------------------------------------------------- responses

@dataclass(frozen=True)
class AuthResponse:
    """The Dashboard's AuthResponse: `name` only on login, as the Dashboard omits it when empty."""

    jwe_token: str
    name: str | None = None

    def body(self) -> dict:
        body = {"jweToken": self.jwe_token, "errors": []}
        return {"name": self.name, **body} if self.name else body


def login_unauthorized() -> dict:
    """The Dashboard's answer to a token the cluster does not accept: 200 with a k8s Status error."""
    status = {"metadata": {}, "status": "Failure", "message": UNAUTHORIZED, "reason": "Unauthorized", "code": 401}
    return {"jweToken": "", "errors": [{"ErrStatus": status}]}


def text_error(status_code: int, message: str, retry_after: int | None = None) -> Response:
    headers = {"Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff"}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return Response(body=message + "\n", status_code=status_code, headers=headers)


def json_response(body: dict, status_code: int = 200) -> Response:
    return Response(
        body=json.dumps(body),
        status_code=status_code,
        headers={"Content-Type": "application/json", "Cache-Control": "no-store"},
    )


def login_status(headers) -> dict:
    impersonated = headers.get("impersonate-user") or ""
    return {
        "tokenPresent": bool(headers.get("jwetoken")),
        "headerPresent": bool(headers.get("authorization")),
        # API Gateway terminates TLS and says so here; the frontend disables login when this is false off localhost.
        "httpsMode": headers.get("x-forwarded-proto", "").lower() == "https",
        "impersonationPresent": bool(impersonated),
        "impersonatedUser": impersonated,
    }


def _not_configured(error: Exception) -> str:
    """Which setting is wrong, by kind only.

    The exception's own text is for the log: it names the registry's absolute path, cluster names
    and the JSON parser's line and column, none of which a caller on the internet needs.
    """
    if isinstance(error, KeyNotConfigured):
        return "The service is not configured: it has no session key; set KEY_SECRET_ID (Secrets Manager) or KEY_FILE."
    return ("The service is not configured: its cluster registry (CLUSTERS_FILE, or the KUBECONFIG context without it) "
            "is missing or invalid; the service log names the problem.")


def answer(operation: Callable[[], object]) -> Response:
    """Run one route's operation and speak its outcome, or its failure, as the Dashboard expects."""
    try:
        result = operation()
    except NotAuthenticated:
        return json_response(login_unauthorized())
    except SessionExpired:
        return text_error(401, EXPIRED)
    except InvalidToken:
        return text_error(401, UNAUTHORIZED)
    except CsrfRejected:
        return text_error(401, CSRF_FAILED)
    except BadRequest as error:
        return text_error(400, str(error))
    except BodyTooLarge:
        return text_error(413, f"The request body is larger than {MAX_BODY_BYTES} bytes.")
    except UnknownCluster:
        return text_error(404, "No such cluster; GET /api/v1/clusters lists the clusters served here.")
    except (ClusterConfigError, KeyNotConfigured) as error:
        logger.error("misconfigured: %s", error)
        return text_error(503, _not_configured(error), retry_after=60)
    except ClusterUnavailable as error:
        # already logged where it failed, with its cause (audit.cluster_failure)
        return text_error(503, "The cluster cannot check tokens right now; try again shortly.", error.retry_after)
    except KeyStoreUnavailable as error:
        logger.error("key store unavailable: %s", error)
        return text_error(503, "The session key is unavailable right now; try again shortly.", RETRY_AFTER_SECONDS)
    except Exception:  # a bug of ours: the client learns nothing, the log gets the (scrubbed) trace
        logger.exception("unexpected error")
        return text_error(500, "Internal error; the service log has the details.")
    if isinstance(result, AuthResponse):
        result = result.body()
    return result if isinstance(result, Response) else json_response(result)
