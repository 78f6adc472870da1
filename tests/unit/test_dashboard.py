"""The Dashboard v2 wire contract (chalicelib.dashboard): CSRF tokens, request bodies, answers."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time

import pytest
from chalice import Response
from chalice.app import CaseInsensitiveMapping

from chalicelib import dashboard
from chalicelib.clusters import ClusterConfigError, ClusterUnavailable, NotAuthenticated, UnknownCluster
from chalicelib.dashboard import BadRequest, BodyTooLarge, CsrfRejected
from chalicelib.keys import KeyNotConfigured, KeyStoreUnavailable
from chalicelib.sessions import InvalidToken, SessionExpired
from tests.conftest import UNAUTHORIZED_LOGIN

KEY = "c2VjcmV0LWtleS1mb3ItY3NyZi10b2tlbnMtaW4tdGVzdHM="
OTHER_KEY = "YW5vdGhlci1rZXktdGhhdC1pcy1ub3Qtb3Vycy0xMjM0NTY="
NOW_MS = 1_714_564_800_123
DAY_MS = 24 * 60 * 60 * 1000


# ------------------------------------------------------------------ golang.org/x/net/xsrftoken, independently

def xsrf_generate(key: str, user_id: str, action_id: str, milli_time: int) -> str:
    """generateTokenAtTime from golang.org/x/net/xsrftoken, transcribed."""

    def clean(s: str) -> str:
        return s.replace(":", "::")

    h = hmac.new(key.encode(), f"{clean(user_id)}:{clean(action_id)}:{milli_time}".encode(), hashlib.sha1)
    tok = base64.urlsafe_b64encode(h.digest()).decode().rstrip("=")
    return f"{tok}:{milli_time}"


@pytest.mark.parametrize("action", ["login", "token", "a:b", "x::y"])
def test_csrf_token_matches_xsrftoken_generate(action):
    assert dashboard.csrf_token(KEY, action, NOW_MS) == xsrf_generate(KEY, "none", action, NOW_MS)


def test_csrf_token_without_a_time_uses_the_current_time_in_ms():
    before = int(time.time() * 1000)
    token = dashboard.csrf_token(KEY, "login")
    after = int(time.time() * 1000)
    millis = int(token.rsplit(":", 1)[1])
    assert before <= millis <= after
    assert token == xsrf_generate(KEY, "none", "login", millis)


def test_csrf_token_differs_per_action_and_key():
    tokens = {
        dashboard.csrf_token(KEY, "login", NOW_MS),
        dashboard.csrf_token(KEY, "token", NOW_MS),
        dashboard.csrf_token(OTHER_KEY, "login", NOW_MS),
    }
    assert len(tokens) == 3


def test_a_fresh_token_is_valid():
    token = xsrf_generate(KEY, "none", "login", NOW_MS)
    assert dashboard.csrf_valid(token, [KEY], "login", NOW_MS + 1000)
    assert dashboard.csrf_valid(token, [KEY], "login", NOW_MS)


def test_a_token_made_now_is_valid_now():
    assert dashboard.csrf_valid(dashboard.csrf_token(KEY, "token"), [KEY], "token")


def test_a_token_for_another_action_is_rejected():
    token = xsrf_generate(KEY, "none", "login", NOW_MS)
    assert not dashboard.csrf_valid(token, [KEY], "token", NOW_MS)


def test_a_token_for_another_user_is_rejected():
    token = xsrf_generate(KEY, "admin", "login", NOW_MS)
    assert not dashboard.csrf_valid(token, [KEY], "login", NOW_MS)


def test_a_token_signed_with_another_key_is_rejected():
    token = xsrf_generate(OTHER_KEY, "none", "login", NOW_MS)
    assert not dashboard.csrf_valid(token, [KEY], "login", NOW_MS)


def test_a_token_signed_with_any_listed_key_is_valid():
    # Rotation: the previous key's tokens stay good.
    old = xsrf_generate(OTHER_KEY, "none", "login", NOW_MS)
    new = xsrf_generate(KEY, "none", "login", NOW_MS)
    assert dashboard.csrf_valid(old, [KEY, OTHER_KEY], "login", NOW_MS)
    assert dashboard.csrf_valid(new, [KEY, OTHER_KEY], "login", NOW_MS)
    assert not dashboard.csrf_valid(old, [KEY], "login", NOW_MS)


def test_an_empty_key_list_accepts_nothing():
    assert not dashboard.csrf_valid(xsrf_generate(KEY, "none", "login", NOW_MS), [], "login", NOW_MS)


def test_a_tampered_mac_is_rejected():
    token = xsrf_generate(KEY, "none", "login", NOW_MS)
    flipped = ("B" if token[0] == "A" else "A") + token[1:]
    assert not dashboard.csrf_valid(flipped, [KEY], "login", NOW_MS)


def test_a_tampered_timestamp_is_rejected():
    mac = xsrf_generate(KEY, "none", "login", NOW_MS).rsplit(":", 1)[0]
    assert not dashboard.csrf_valid(f"{mac}:{NOW_MS + 1}", [KEY], "login", NOW_MS + 10)
    assert not dashboard.csrf_valid(f"{mac}:0{NOW_MS}", [KEY], "login", NOW_MS)


def test_a_token_24_hours_old_is_expired():
    token = xsrf_generate(KEY, "none", "login", NOW_MS)
    assert dashboard.csrf_valid(token, [KEY], "login", NOW_MS + DAY_MS - 1)
    assert not dashboard.csrf_valid(token, [KEY], "login", NOW_MS + DAY_MS)
    assert not dashboard.csrf_valid(token, [KEY], "login", NOW_MS + 7 * DAY_MS)


def test_a_token_from_the_future_is_rejected_beyond_one_minute_of_grace():
    assert dashboard.csrf_valid(xsrf_generate(KEY, "none", "login", NOW_MS + 60_000), [KEY], "login", NOW_MS)
    assert not dashboard.csrf_valid(xsrf_generate(KEY, "none", "login", NOW_MS + 60_001), [KEY], "login", NOW_MS)
    assert not dashboard.csrf_valid(xsrf_generate(KEY, "none", "login", NOW_MS + DAY_MS), [KEY], "login", NOW_MS)


@pytest.mark.parametrize(
    "token",
    [
        None,
        "",
        "garbage",
        "no-colon-at-all",
        ":",
        f":{NOW_MS}",
        "abc:",
        "abc:-5",
        "abc:12x",
        "abc: 1714564800123",
        "abc:1714564800123 ",
        "x" * 200 + f":{NOW_MS}",
        "\x00:\x00",
    ],
)
def test_garbage_csrf_tokens_are_rejected(token):
    assert dashboard.csrf_valid(token, [KEY], "login", NOW_MS) is False


@pytest.mark.parametrize("timestamp", ["\u00b2", "1\u00b9", "\u2460"])
def test_unicode_digit_timestamps_are_rejected_not_raised(timestamp):
    assert dashboard.csrf_valid(f"abc:{timestamp}", [KEY], "login", NOW_MS) is False


def test_non_ascii_decimal_digits_do_not_validate():
    # Arabic-Indic digits int() accepts: must still not match the ASCII token.
    token = xsrf_generate(KEY, "none", "login", NOW_MS)
    mac, millis = token.rsplit(":", 1)
    arabic = "".join(chr(0x660 + int(d)) for d in millis)
    assert not dashboard.csrf_valid(f"{mac}:{arabic}", [KEY], "login", NOW_MS)


@pytest.mark.parametrize("action", ["login", "token", "a.b-c_d", "x" * 64])
def test_csrf_action_accepts_simple_names(action):
    assert dashboard.csrf_action(action) == action


@pytest.mark.parametrize("action", ["", "x" * 65, "a:b", "a/b", "a b", "../login", None])
def test_csrf_action_rejects_other_names(action):
    with pytest.raises(BadRequest):
        dashboard.csrf_action(action)


# ------------------------------------------------------------------ login bodies

SA = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6a3ViZS1zeXN0ZW06YWRtaW4ifQ.c2lnbmF0dXJl"

KUBECONFIG = f"""
apiVersion: v1
kind: Config
current-context: prod
clusters:
- name: prod-cluster
  cluster: {{server: "https://203.0.113.10:6443"}}
contexts:
- name: dev
  context: {{cluster: prod-cluster, user: dev-user}}
- name: prod
  context: {{cluster: prod-cluster, user: admin}}
users:
- name: dev-user
  user: {{token: wrong.token.here}}
- name: admin
  user:
    token: {SA}
"""


def body(obj) -> bytes:
    return json.dumps(obj).encode()


def bad_request(raw) -> str:
    with pytest.raises(BadRequest) as caught:
        dashboard.parse_login(raw)
    message = str(caught.value)
    assert message and message.endswith(".")
    return message


def test_login_with_a_token():
    assert dashboard.parse_login(body({"token": SA})).token == SA


def test_login_with_dashboard_fields_left_empty():
    # The Dashboard frontend sends every LoginSpec field, the unused ones empty.
    spec = dashboard.parse_login(body({"username": "", "password": "", "token": SA, "kubeconfig": ""}))
    assert spec.token == SA


def test_login_with_a_kubeconfig_uses_the_current_contexts_user():
    assert dashboard.parse_login(body({"kubeconfig": KUBECONFIG})).token == SA


def test_login_with_a_json_kubeconfig():
    config = {
        "current-context": "c",
        "contexts": [{"name": "c", "context": {"user": "u"}}],
        "users": [{"name": "u", "user": {"token": SA}}],
    }
    assert dashboard.parse_login(body({"kubeconfig": json.dumps(config)})).token == SA


@pytest.mark.parametrize("raw", [None, b""])
def test_empty_body(raw):
    assert "empty" in bad_request(raw).lower()


@pytest.mark.parametrize("raw", [b"{", b"token=abc", b'{"token": "a.b.c",}', b"\xff\xfe", b"{'token': 'a.b.c'}"])
def test_invalid_json(raw):
    assert "json" in bad_request(raw).lower()


@pytest.mark.parametrize("raw", [b"[]", b'"a.b.c"', b"null", b"42", b'[{"token":"a.b.c"}]'])
def test_non_object_json(raw):
    assert "object" in bad_request(raw).lower()


def test_unknown_fields_are_refused_without_echoing_them():
    message = bad_request(body({"token": SA, "namespace": "x", SA + "x": "y"}))
    assert '"token"' in message and "kubeconfig" in message
    assert "namespace" not in message and SA not in message


@pytest.mark.parametrize("value", [123, None, ["a.b.c"], {"t": "a.b.c"}, True])
def test_non_string_fields(value):
    assert "string" in bad_request(body({"token": value})).lower()


@pytest.mark.parametrize(
    "fields", [{"username": "admin", "password": "pw"}, {"username": "admin"}, {"password": "pw", "token": SA}]
)
def test_basic_login_is_refused_with_a_pointer_to_tokens(fields):
    message = bad_request(body(fields)).lower()
    assert "token" in message and ("basic" in message or "password" in message or "username" in message)


def test_token_and_kubeconfig_together():
    message = bad_request(body({"token": SA, "kubeconfig": KUBECONFIG}))
    assert "token" in message and "kubeconfig" in message


@pytest.mark.parametrize("fields", [{}, {"token": ""}, {"token": "", "kubeconfig": ""}])
def test_neither_token_nor_kubeconfig(fields):
    message = bad_request(body(fields))
    assert "token" in message and "kubeconfig" in message


@pytest.mark.parametrize(
    "kubeconfig",
    [
        # a client-certificate user
        "current-context: c\ncontexts: [{name: c, context: {user: u}}]\n"
        "users: [{name: u, user: {client-certificate-data: AAAA, client-key-data: BBBB}}]",
        # an exec plugin user
        "current-context: c\ncontexts: [{name: c, context: {user: u}}]\n"
        "users: [{name: u, user: {exec: {command: aws}}}]",
        # the current context names a user that is not there
        "current-context: c\ncontexts: [{name: c, context: {user: ghost}}]\nusers: [{name: u, user: {token: a.b.c}}]",
        # the current context is not there
        "current-context: nope\ncontexts: [{name: c, context: {user: u}}]\nusers: [{name: u, user: {token: a.b.c}}]",
        # an empty token
        "current-context: c\ncontexts: [{name: c, context: {user: u}}]\nusers: [{name: u, user: {token: ''}}]",
        "current-context: c\ncontexts: [{name: c, context: 7}]\nusers: [{name: u, user: {token: a.b.c}}]",
        "apiVersion: v1\nkind: Config",
    ],
)
def test_kubeconfig_without_a_token_user(kubeconfig):
    message = bad_request(body({"kubeconfig": kubeconfig}))
    assert "token" in message.lower() and "kubeconfig" in message.lower()


@pytest.mark.parametrize("kubeconfig", ["a: [b", "key: 'unterminated", "\tfoo: bar", "a: b: c"])
def test_kubeconfig_that_is_not_yaml(kubeconfig):
    message = bad_request(body({"kubeconfig": kubeconfig}))
    assert "yaml" in message.lower()


@pytest.mark.parametrize("kubeconfig", ["just a string", "- a\n- b", "42"])
def test_kubeconfig_that_is_not_a_mapping(kubeconfig):
    assert "kubeconfig" in bad_request(body({"kubeconfig": kubeconfig})).lower()


@pytest.mark.parametrize(
    "kubeconfig",
    [
        "current-context: c\ncontexts: 5",
        "current-context: c\ncontexts: [{name: c, context: {user: u}}]\nusers: true",
    ],
)
def test_kubeconfig_with_scalar_sections_is_a_bad_request(kubeconfig):
    bad_request(body({"kubeconfig": kubeconfig}))


def test_deeply_nested_kubeconfig_is_a_bad_request():
    bad_request(body({"kubeconfig": "[" * 20_000}))


# A kubeconfig is read as text: every scalar is the string written (no YAML 1.1 types), no aliases, no tags.

CONTEXT_AND_USER = "contexts: [{name: c, context: {user: u}}]\nusers: [{name: u, user: {token: %s}}]\n"


def kubeconfig_token(text: str) -> str:
    return dashboard.parse_login(body({"kubeconfig": text})).token


@pytest.mark.parametrize(
    "kubeconfig",
    [
        # the token, a name, the current context or a whole section by alias
        f"current-context: c\nt: &t {SA}\n" + CONTEXT_AND_USER % "*t",
        "current-context: &c c\ncontexts: [{name: *c, context: {user: u}}]\nusers: [{name: u, user: {token: a.b.c}}]",
        "current-context: c\nx: &u [{name: u, user: {token: a.b.c}}]\ncontexts: [{name: c, context: {user: u}}]\nusers: *u",
        # a merge key (<<) is an alias too
        "base: &b {token: a.b.c}\ncurrent-context: c\ncontexts: [{name: c, context: {user: u}}]\n"
        "users: [{name: u, user: {<<: *b}}]",
        # an alias as a mapping key, and one that names no anchor
        "a: &a k\n*a : v",
        "current-context: *nowhere",
        # billion laughs: tiny text, exponentially many values
        "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
        "current-context: *c\ncontexts: [{name: *c}]",
    ],
)
def test_a_kubeconfig_with_a_yaml_alias_is_refused_with_a_sentence_saying_so(kubeconfig):
    message = bad_request(body({"kubeconfig": kubeconfig}))
    assert message.startswith("kubeconfig ") and "aliases are not accepted" in message


def test_anchors_without_aliases_change_nothing():
    text = f"current-context: &cc c\ncontexts: &cs [{{name: c, context: {{user: u}}}}]\nusers: [{{name: u, user: {{token: &t {SA}}}}}]"
    assert kubeconfig_token(text) == SA


@pytest.mark.parametrize(
    "kubeconfig, token",
    [
        # YAML 1.1 would make these an int, a base-60 int, a float, a bool, a null, a date: the kubeconfig means the text
        ("current-context: c\n" + CONTEXT_AND_USER % "12345", "12345"),
        ("current-context: c\n" + CONTEXT_AND_USER % "1:30", "1:30"),
        ("current-context: c\n" + CONTEXT_AND_USER % "1e3", "1e3"),
        ("current-context: c\n" + CONTEXT_AND_USER % "yes", "yes"),
        ("current-context: c\n" + CONTEXT_AND_USER % "~", "~"),
        ("current-context: c\n" + CONTEXT_AND_USER % "2001-02-30", "2001-02-30"),
        ("current-context: c\n" + CONTEXT_AND_USER % "!!str 0x1F", "0x1F"),
        # the same name, quoted on one side and plain on the other
        ("current-context: '1:30'\ncontexts: [{name: 1:30, context: {user: 'on'}}]\nusers: [{name: on, user: {token: t}}]",
         "t"),
        ("current-context: 2001-12-14\ncontexts: [{name: '2001-12-14', context: {user: u}}]\n"
         "users: [{name: u, user: {token: t}}]", "t"),
    ],
)
def test_kubeconfig_scalars_are_the_text_written(kubeconfig, token):
    assert kubeconfig_token(kubeconfig) == token


@pytest.mark.parametrize("fields", [2, 50, 400])
def test_a_base_60_number_too_large_for_a_float_is_just_a_name(fields):
    # YAML 1.1 reads 1:0:...:0.5 as a base-60 float; a long one overflowed and answered 500.
    name = "1" + ":0" * fields + ".5"
    assert bad_request(body({"kubeconfig": f"current-context: {name}"})).startswith("kubeconfig's current context")
    assert kubeconfig_token(f"current-context: {name}\n" + CONTEXT_AND_USER.replace("name: c", f"name: {name}") % "t") == "t"


@pytest.mark.parametrize(
    "kubeconfig",
    [
        "current-context: c\n" + CONTEXT_AND_USER % "!!binary YS5iLmM=",
        "current-context: !!python/object/apply:os.system [true]",
        "current-context: !!python/name:os.system ''",
        "current-context: !custom c\n" + CONTEXT_AND_USER % "t",
        "current-context: !<tag:example.com,2000:x> c\n" + CONTEXT_AND_USER % "t",
        "%TAG ! tag:example.com,2000:\n---\ncurrent-context: !x c\n" + CONTEXT_AND_USER % "t",
        "current-context: c\ncontexts: !!set {c}\n",
        "current-context: !!int c",
        "!!map [current-context, c]",
    ],
)
def test_a_kubeconfig_with_a_yaml_tag_is_not_valid_yaml(kubeconfig):
    assert bad_request(body({"kubeconfig": kubeconfig})) == "kubeconfig is not valid YAML."


@pytest.mark.parametrize(
    "kubeconfig, field",
    [
        ("current-context: [c]\n" + CONTEXT_AND_USER % "t", "current-context"),
        ("current-context: {c: d}\n" + CONTEXT_AND_USER % "t", "current-context"),
        ("current-context: c\ncontexts: [{name: [c], context: {user: u}}]\nusers: [{name: u, user: {token: t}}]",
         "context name"),
        ("current-context: c\ncontexts: [{name: c, context: {user: [u]}}]\nusers: [{name: u, user: {token: t}}]",
         "context's user"),
        ("current-context: c\ncontexts: [{name: c, context: {user: u}}]\nusers: [{name: {u: 1}, user: {token: t}}]",
         "user name"),
        ("current-context: c\n" + CONTEXT_AND_USER % "[a.b.c]", "user's token"),
        ("current-context: c\n" + CONTEXT_AND_USER % "{a: b}", "user's token"),
    ],
)
def test_a_non_string_name_or_token_in_a_kubeconfig_is_refused(kubeconfig, field):
    assert bad_request(body({"kubeconfig": kubeconfig})) == f"kubeconfig's {field} must be a string."


@pytest.mark.parametrize(
    "kubeconfig",
    [
        "a: b\x00",  # a character YAML does not allow (reader)
        "a: 'b\n\x07'",
        "? [a, b]\n: c",  # a key that is a list (constructor: unhashable)
        "? {a: b}\n: c",
        "current-context: c\n---\ncurrent-context: d",  # two documents
        "---\n...\n---\n",
        "{" * 5_000 + "}" * 5_000,  # nesting deeper than the recursion limit
        "- " * 5_000 + "x",
        "[{a: " * 3_000 + "}]" * 3_000,
        "%YAML 1.1\n%YAML 1.1\n--- a",
        "%YAML 2.0\n--- a",
    ],
)
def test_every_failure_of_the_yaml_parser_is_a_bad_request(kubeconfig):
    message = bad_request(body({"kubeconfig": kubeconfig}))
    assert message.startswith("kubeconfig ")


@pytest.mark.parametrize("kubeconfig", ["[" * 2_000, "a: " + "[{b: " * 20, "- " * 40 + "x", "a:\n" + "- " * 40 + "x"])
def test_a_kubeconfig_nested_far_deeper_than_a_kubeconfig_needs_is_refused(kubeconfig):
    # PyYAML's scanner revisits every open "[" of a line for each token: 2 KB of "[" cost 0.6 s of CPU.
    assert bad_request(body({"kubeconfig": kubeconfig})) == "kubeconfig is nested more than 32 levels deep."


def test_nesting_within_the_limit_is_read():
    nested = "[" * 28 + "x" + "]" * 28
    assert kubeconfig_token(f"preferences: {nested}\ncurrent-context: c\n" + CONTEXT_AND_USER % "t") == "t"


def test_a_kubeconfig_as_kubectl_writes_it_still_logs_in():
    import yaml

    ca = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").decode()
    arn = "arn:aws:eks:eu-west-1:123456789012:cluster/prod"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": arn, "cluster": {"server": "https://203.0.113.10:6443", "certificate-authority-data": ca}}],
        "users": [{"name": "other", "user": {"token": "wrong.token.here"}}, {"name": arn, "user": {"token": SA}}],
        "contexts": [{"name": arn, "context": {"cluster": arn, "user": arn, "namespace": "0123"}}],
        "current-context": arn,
        "preferences": {},
    }
    for text in (yaml.safe_dump(config, sort_keys=False), yaml.safe_dump(config, default_flow_style=True), json.dumps(config)):
        assert kubeconfig_token(text) == SA


def test_deeply_nested_json_body_is_a_bad_request():
    raw = b"[" * 30_000 + b"]" * 30_000
    assert len(raw) <= dashboard.MAX_BODY_BYTES
    bad_request(raw)


def test_body_over_the_limit_is_too_large():
    raw = body({"token": SA, "kubeconfig": "x" * dashboard.MAX_BODY_BYTES})
    with pytest.raises(BodyTooLarge):
        dashboard.parse_login(raw)


def test_body_exactly_at_the_limit_is_accepted():
    prefix = body({"token": SA})
    raw = prefix + b" " * (dashboard.MAX_BODY_BYTES - len(prefix))
    assert len(raw) == dashboard.MAX_BODY_BYTES
    assert dashboard.parse_login(raw).token == SA
    with pytest.raises(BodyTooLarge):
        dashboard.parse_login(raw + b" ")


# ------------------------------------------------------------------ refresh bodies

def test_refresh_returns_the_jwe_token_string():
    jwe_text = '{"protected":"x","aad":"y"}'
    assert dashboard.parse_refresh(body({"jweToken": jwe_text})) == jwe_text


@pytest.mark.parametrize(
    "raw, word",
    [
        (None, "empty"),
        (b"", "empty"),
        (b"{", "json"),
        (b"[]", "object"),
        (b'"jwe"', "object"),
        (body({}), "jwetoken"),
        (body({"jweToken": ""}), "jwetoken"),
        (body({"jweToken": None}), "jwetoken"),
        (body({"jweToken": {"protected": "x"}}), "jwetoken"),
        (body({"token": "a.b.c"}), "jwetoken"),
    ],
)
def test_refresh_bad_requests(raw, word):
    with pytest.raises(BadRequest) as caught:
        dashboard.parse_refresh(raw)
    assert word in str(caught.value).lower()


def test_refresh_body_over_the_limit_is_too_large():
    with pytest.raises(BodyTooLarge):
        dashboard.parse_refresh(body({"jweToken": "x" * dashboard.MAX_BODY_BYTES}))


# ------------------------------------------------------------------ response shapes

def test_login_unauthorized_is_the_dashboards_exact_shape():
    assert dashboard.login_unauthorized() == UNAUTHORIZED_LOGIN


def test_auth_response_with_a_name():
    assert dashboard.AuthResponse("jwe-text", name="admin").body() == {
        "name": "admin",
        "jweToken": "jwe-text",
        "errors": [],
    }


def test_auth_response_without_a_name_omits_it():
    assert dashboard.AuthResponse("jwe-text").body() == {"jweToken": "jwe-text", "errors": []}


def test_text_error_is_plain_text_with_a_newline():
    response = dashboard.text_error(401, "MSG_TOKEN_EXPIRED_ERROR")
    assert response.status_code == 401
    assert response.body == "MSG_TOKEN_EXPIRED_ERROR\n"
    assert response.headers["Content-Type"].startswith("text/plain")
    assert "Retry-After" not in response.headers


def test_text_error_with_retry_after():
    response = dashboard.text_error(503, "later", retry_after=7)
    assert response.headers["Retry-After"] == "7"
    assert response.body == "later\n"


def lower(headers: dict) -> CaseInsensitiveMapping:
    return CaseInsensitiveMapping(headers)


def test_login_status_with_no_headers():
    assert dashboard.login_status(lower({})) == {
        "tokenPresent": False,
        "headerPresent": False,
        "httpsMode": False,
        "impersonationPresent": False,
        "impersonatedUser": "",
    }


def test_login_status_behind_api_gateway_with_a_session():
    status = dashboard.login_status(
        lower({"X-Forwarded-Proto": "https", "jweToken": "{...}", "Authorization": "Bearer a.b.c"})
    )
    assert status["httpsMode"] is True
    assert status["tokenPresent"] is True
    assert status["headerPresent"] is True
    assert status["impersonationPresent"] is False


@pytest.mark.parametrize("proto, https", [("https", True), ("HTTPS", True), ("http", False), ("", False)])
def test_login_status_https_mode_follows_x_forwarded_proto(proto, https):
    assert dashboard.login_status(lower({"X-Forwarded-Proto": proto}))["httpsMode"] is https


def test_login_status_reports_impersonation():
    status = dashboard.login_status(lower({"Impersonate-User": "jane"}))
    assert status["impersonationPresent"] is True
    assert status["impersonatedUser"] == "jane"


def test_login_status_with_a_plain_dict_of_lowercase_headers():
    assert dashboard.login_status({"x-forwarded-proto": "https"})["httpsMode"] is True


# ------------------------------------------------------------------ answer(): every outcome in the Dashboard's words

def raising(error: Exception):
    def operation():
        raise error

    return operation


def test_answer_dict_is_json_200():
    response = dashboard.answer(lambda: {"modes": ["token"]})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert json.loads(response.body) == {"modes": ["token"]}


def test_answer_auth_response_is_its_body():
    response = dashboard.answer(lambda: dashboard.AuthResponse("jwe", name="admin"))
    assert response.status_code == 200
    assert json.loads(response.body) == {"name": "admin", "jweToken": "jwe", "errors": []}


def test_answer_passes_a_response_through():
    made = Response(body="x", status_code=204)
    assert dashboard.answer(lambda: made) is made


def test_not_authenticated_is_200_with_the_err_status_body():
    response = dashboard.answer(raising(NotAuthenticated()))
    assert response.status_code == 200
    assert json.loads(response.body) == dashboard.login_unauthorized()
    assert json.loads(response.body)["errors"][0]["ErrStatus"]["code"] == 401


@pytest.mark.parametrize(
    "error, status, text",
    [
        (SessionExpired(), 401, "MSG_TOKEN_EXPIRED_ERROR\n"),
        (InvalidToken(), 401, "MSG_LOGIN_UNAUTHORIZED_ERROR\n"),
        (CsrfRejected(), 401, "CSRF validation failed\n"),
    ],
)
def test_exact_401_answers(error, status, text):
    response = dashboard.answer(raising(error))
    assert response.status_code == status
    assert response.body == text
    assert response.headers["Content-Type"].startswith("text/plain")


def test_bad_request_is_400_with_its_sentence():
    response = dashboard.answer(raising(BadRequest("The request body is not valid JSON.")))
    assert response.status_code == 400
    assert response.body == "The request body is not valid JSON.\n"
    assert response.headers["Content-Type"].startswith("text/plain")


def test_a_real_parse_failure_answers_400():
    response = dashboard.answer(lambda: dashboard.parse_login(b"{"))
    assert response.status_code == 400
    assert "JSON" in response.body


def test_body_too_large_is_413():
    response = dashboard.answer(lambda: dashboard.parse_login(b" " * (dashboard.MAX_BODY_BYTES + 1)))
    assert response.status_code == 413
    assert response.headers["Content-Type"].startswith("text/plain")


def test_unknown_cluster_is_404():
    response = dashboard.answer(raising(UnknownCluster("staging")))
    assert response.status_code == 404
    assert response.body.endswith("\n")


@pytest.mark.parametrize(
    "error",
    [
        ClusterUnavailable("https://203.0.113.10:6443 refused: reviewer token sa-secret-abc123"),
        KeyStoreUnavailable("Secrets Manager refused 'arn:aws:secretsmanager:eu-west-1:123:secret:k': AccessDenied"),
    ],
)
def test_unavailable_is_503_with_retry_after_and_no_detail(error):
    response = dashboard.answer(raising(error))
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) > 0
    assert response.headers["Content-Type"].startswith("text/plain")
    assert str(error) not in response.body
    for secret_part in ("sa-secret-abc123", "203.0.113.10", "arn:aws", "AccessDenied"):
        assert secret_part not in response.body


def broken_registries(tmp_path) -> list[ClusterConfigError]:
    """The errors the real registry loader raises for a missing file, bad JSON and an unknown field."""
    from chalicelib import clusters

    ca = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").decode()
    entry = {"name": "prod-eu", "server": "https://203.0.113.10:6443", "certificateAuthorityData": ca,
             "reviewer": {"tokenFile": "t"}, "serverName": "x"}
    errors = []
    for text in (None, '{"clusters": [{"name": "prod-eu",}]}', json.dumps({"clusters": [entry]})):
        path = tmp_path / f"registry-{len(errors)}" / "clusters.json"
        if text is not None:
            path.parent.mkdir()
            path.write_text(text)
        with pytest.raises(ClusterConfigError) as caught:
            clusters.load_registry(str(path), str(tmp_path))
        errors.append(caught.value)
    return errors


def test_a_broken_registry_is_503_naming_only_the_kind_of_problem(tmp_path, caplog):
    for error in broken_registries(tmp_path):
        detail = str(error)
        assert str(tmp_path) in detail  # what the body must not carry is really there to leak
        caplog.clear()
        response = dashboard.answer(raising(error))
        assert response.status_code == 503 and int(response.headers["Retry-After"]) > 0
        assert response.headers["Content-Type"].startswith("text/plain")
        assert response.body == (
            "The service is not configured: its cluster registry (CLUSTERS_FILE, or the KUBECONFIG context without it) "
            "is missing or invalid; the service log names the problem.\n"
        )
        for internal in (str(tmp_path), "clusters.json", "prod-eu", "line", "column", "serverName", "No such file"):
            assert internal not in response.body
        logged = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
        assert logged == [f"misconfigured: {detail}"]


def test_no_key_configured_is_503_naming_the_settings_to_give(caplog):
    error = KeyNotConfigured("no key is configured: set KEY_SECRET_ID (Secrets Manager) or KEY_FILE (local file)")
    response = dashboard.answer(raising(error))
    assert response.status_code == 503 and int(response.headers["Retry-After"]) > 0
    assert response.body == (
        "The service is not configured: it has no session key; set KEY_SECRET_ID (Secrets Manager) or KEY_FILE.\n"
    )
    assert [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR] == [
        f"misconfigured: {error}"
    ]
