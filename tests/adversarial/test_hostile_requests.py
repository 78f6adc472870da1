"""Hostile requests on every route, with and without the /clusters/{cluster}/ prefix.

What docs/design.md and README promise, checked with the worst inputs we could think of:
- a POST that is not application/json: 415 (Chalice's own answer); malformed JSON, non-objects,
  wrong field types: 400 text/plain with a sentence; never a 500, never a stack trace;
- a body over 64 KiB: 413 before anything else happens (no JSON parse, no key fetch, no TokenReview);
- a cluster name that only resembles a real one: 404, never another cluster's answer;
- CSRF tokens expired, for another action, forged, from the future or malformed: 401 "CSRF validation failed";
- an Origin that only resembles the allowed one: no CORS headers at all, on answers and preflights;
- odd CSRF action names: 400.
"""
from __future__ import annotations

import json
import time

import pytest

from chalicelib import dashboard, keys
from tests.adversarial.conftest import (
    ALLOWED_ORIGIN,
    CSRF_FAILED_BODY,
    NOT_FOUND_BODY,
    assert_no_trace,
    csrf_key_token,
)

GETS = ["/api/v1/csrftoken/login", "/api/v1/login/modes", "/api/v1/login/skippable", "/api/v1/login/status",
        "/api/v1/clusters"]
POSTS = {"/api/v1/login": "login", "/api/v1/token/refresh": "token"}
PREFIXES = ["", "/clusters/prod-eu"]
ROUTES = [(prefix + path, "POST") for prefix in PREFIXES for path in POSTS] + [
    (prefix + path, "GET") for prefix in PREFIXES for path in GETS
]
ROUTE_IDS = [f"{method} {path or '/'}" for path, method in ROUTES]
DAY_MS = 24 * 60 * 60 * 1000


def action_of(path: str) -> str | None:
    return next((action for route, action in POSTS.items() if path.endswith(route)), None)


def good_body(service, path: str) -> bytes:
    """A body the route would accept: a login the cluster accepts, or a genuine session to refresh."""
    if path.endswith("/api/v1/login"):
        return json.dumps({"token": service.world.sa_a}).encode()
    return json.dumps({"jweToken": service.genuine()}).encode()


def text_sentence(response, status: int) -> None:
    assert_no_trace(response)
    assert response.status_code == status, (response.status_code, response.body[:300])
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.body.endswith(b".\n") and len(response.body) > 20, response.body


def cors_headers(response) -> dict:
    return {k.lower(): v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


# ---------------------------------------------------------------- content types

CONTENT_TYPES = [
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=----hostile",
    "application/xml",
    "application/json-patch+json",
    "text/json",
    "",
    None,  # no Content-Type header at all
]


@pytest.mark.parametrize("content_type", CONTENT_TYPES, ids=[repr(c) for c in CONTENT_TYPES])
@pytest.mark.parametrize("path, method", ROUTES, ids=ROUTE_IDS)
def test_wrong_content_type_is_415_or_400_never_500(service, path, method, content_type):
    headers = {} if content_type is None else {"Content-Type": content_type}
    reviews = service.reviews()
    if method == "POST":
        headers["X-CSRF-TOKEN"] = service.csrf(action_of(path))
        response = service.client.http.post(path, body=b"token=a.b.c&jweToken=x", headers=headers)
    else:
        response = service.client.http.get(path, headers=headers)

    assert_no_trace(response)
    if content_type is None:
        # Chalice takes a missing Content-Type as application/json: the app parses, and refuses form data
        if method == "POST":
            text_sentence(response, 400)
        else:
            assert response.status_code == 200
    else:
        assert response.status_code == 415, (response.status_code, response.body)
    assert service.reviews() == reviews


@pytest.mark.parametrize(
    "content_type",
    ["text/plain; application/json", "application/x-www-form-urlencoded;application/json",
     "multipart/form-data; boundary=x; application/json"],
)
def test_a_cors_safelisted_type_with_a_json_parameter_is_still_415(service, content_type):
    response = service.client.http.post(
        "/api/v1/login",
        body=b'{"token": "not-a-jwt"}',
        headers={"Content-Type": content_type, "X-CSRF-TOKEN": service.csrf("login")},
    )
    assert_no_trace(response)
    assert response.status_code == 415, (response.status_code, response.body)


# ---------------------------------------------------------------- JSON that is not an object, fields of the wrong type

NON_OBJECTS = [b"[]", b'["token", "a.b.c"]', b'"a.b.c"', b"42", b"null", b"true", b"1e999", b"NaN", b'""',
               b"{not json", b"{}{}", b'{"token": "a.b.c"} trailing', b" ", b"", b'{"a": ' + b"1" * 5000 + b"}",
               b'{"a": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"]


@pytest.mark.parametrize("body", NON_OBJECTS, ids=[b.decode()[:20] + (f"...({len(b)} bytes)" if len(b) > 20 else "")
                                                   or "empty" for b in NON_OBJECTS])
@pytest.mark.parametrize("prefix", PREFIXES, ids=["default", "prefixed"])
@pytest.mark.parametrize("path", list(POSTS))
def test_a_body_that_is_not_a_json_object_is_400(service, path, prefix, body):
    reviews = service.reviews()
    text_sentence(service.post(prefix + path, body, POSTS[path]), 400)
    assert service.reviews() == reviews


LOGIN_BODIES = [
    {"token": 5}, {"token": None}, {"token": True}, {"token": ["a.b.c"]}, {"token": {"jwt": "a.b.c"}}, {"token": 1.5},
    {"kubeconfig": 5}, {"kubeconfig": ["apiVersion: v1"]}, {"token": "", "kubeconfig": ""},
    {"token": "a.b.c", "kubeconfig": "apiVersion: v1"}, {"token": "a.b.c", "extra": "x"}, {"Token": "a.b.c"},
    {"username": 5}, {"username": "admin", "password": "admin"}, {"password": "x"}, {"token": "a.b.c", "username": {}},
]
REFRESH_BODIES = [
    {"jweToken": 5}, {"jweToken": None}, {"jweToken": True}, {"jweToken": []}, {"jweToken": ""},
    {"jweToken": {"protected": "e30", "aad": "e30"}}, {"jwetoken": "x"}, {"token": "a.b.c"},
    {"jweToken": "x", "token": "a.b.c"}, {"jweToken": "x", "errors": []}, {},
]
KUBECONFIGS = {
    "not-yaml": "{: : :",
    "a-list": "- a\n- b\n",
    "python-tag": "!!python/object/apply:os.system ['true']",
    "deep-nesting": "[" * 3_000 + "]" * 3_000,
    "billion-laughs": "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join('*' + chr(97 + i) for _ in range(9))}]\n" for i in range(8)
    ) + "contexts: *i\ncurrent-context: x\nusers: *i\n",
    "users-not-a-list": "current-context: c\ncontexts: [{name: c, context: {user: u}}]\nusers: {u: {token: a.b.c}}\n",
    "token-not-a-string": "current-context: c\ncontexts: [{name: c, context: {user: u}}]\nusers: [{name: u, user: {token: [5]}}]\n",
    "exec-user": "current-context: c\ncontexts: [{name: c, context: {user: u}}]\nusers: [{name: u, user: {exec: {command: id}}}]\n",
}


@pytest.mark.parametrize("body", LOGIN_BODIES, ids=[json.dumps(b)[:40] for b in LOGIN_BODIES])
@pytest.mark.parametrize("prefix", PREFIXES, ids=["default", "prefixed"])
def test_login_fields_of_the_wrong_type_are_400(service, prefix, body):
    reviews = service.reviews()
    text_sentence(service.post(prefix + "/api/v1/login", json.dumps(body).encode(), "login"), 400)
    assert service.reviews() == reviews


@pytest.mark.parametrize("body", REFRESH_BODIES, ids=[json.dumps(b)[:40] for b in REFRESH_BODIES])
@pytest.mark.parametrize("prefix", PREFIXES, ids=["default", "prefixed"])
def test_refresh_fields_of_the_wrong_type_are_400(service, crypto, prefix, body):
    reviews = service.reviews()
    text_sentence(service.post(prefix + "/api/v1/token/refresh", json.dumps(body).encode(), "token"), 400)
    assert service.reviews() == reviews
    assert crypto.snapshot() == (0, 0, 0)


@pytest.mark.parametrize("kubeconfig", list(KUBECONFIGS.values()), ids=list(KUBECONFIGS))
def test_hostile_kubeconfigs_are_400(service, kubeconfig):
    reviews = service.reviews()
    body = json.dumps({"kubeconfig": kubeconfig}).encode()
    assert len(body) <= dashboard.MAX_BODY_BYTES
    text_sentence(service.post("/api/v1/login", body, "login"), 400)
    assert service.reviews() == reviews


@pytest.mark.parametrize(
    "kubeconfig",
    ["current-context: 2001-02-30", "kind: !!int Config", "apiVersion: !!float v1", "a: !!timestamp x",
     "!!bool maybe", "users:\n- name: u\n  user:\n    token: 2001-02-28 25:00:00"],
    ids=["impossible-date", "int-tag", "float-tag", "timestamp-tag", "bool-tag", "impossible-time"],
)
def test_kubeconfigs_whose_yaml_constructors_fail_are_400_not_500(service, kubeconfig):
    response = service.post("/api/v1/login", json.dumps({"kubeconfig": kubeconfig}).encode(), "login")
    text_sentence(response, 400)


@pytest.mark.parametrize(
    "token",
    ["hunter2", "Bearer a.b.c", "a.b", "a.b.c.d", "a.b.c\n", " a.b.c", "a..c", "a.b.c" + "\u200b",
     "a." + "b" * 40_000 + ".c"],
    ids=["password", "bearer-prefix", "two-parts", "four-parts", "newline", "leading-space", "empty-part",
         "zero-width-space", "40k-chars"],
)
def test_a_login_token_that_is_no_jwt_is_unauthorized_without_asking_the_cluster(service, token):
    reviews = service.reviews()
    response = service.post("/api/v1/login", json.dumps({"token": token}).encode(), "login")
    assert_no_trace(response)
    assert response.status_code == 200
    assert json.loads(response.body)["errors"][0]["ErrStatus"]["message"] == "MSG_LOGIN_UNAUTHORIZED_ERROR"
    assert token.encode() not in response.body
    assert service.reviews() == reviews


@pytest.mark.parametrize("path", list(POSTS))
def test_a_body_with_a_duplicate_member_is_400(service, path):
    if path.endswith("/login"):
        body = b'{"token": "not-a-jwt", "token": %s}' % json.dumps(service.world.sa_a).encode()
    else:
        body = b'{"jweToken": "not-a-token", "jweToken": %s}' % json.dumps(service.genuine()).encode()
    response = service.post(path, body, POSTS[path])
    assert_no_trace(response)
    assert response.status_code == 400, (response.status_code, response.body[:200])


# ---------------------------------------------------------------- bodies over 64 KiB

HUGE_BODIES = {
    "invalid-json": b"{" + b"x" * (70 * 1024),
    "valid-json-login-shaped": json.dumps({"token": "a." + "b" * (70 * 1024) + ".c"}).encode(),
    "one-byte-over": b"[" * (dashboard.MAX_BODY_BYTES + 1),
}


@pytest.mark.parametrize("kind", list(HUGE_BODIES))
@pytest.mark.parametrize("path", [prefix + path for prefix in PREFIXES for path in POSTS])
def test_a_body_over_64KiB_is_413_before_any_parse_key_or_cluster_work(
    configure, secrets_client, secret_id, adversary_world, healthy, monkeypatch, path, kind
):
    """A cold container with a key secret that does not exist yet: any key work would create it."""
    client = configure(KEY_SECRET_ID=secret_id, CLUSTERS_FILE=adversary_world.registry)
    calls = {"json": 0, "key": 0, "yaml": 0}
    real_json_object, real_keys = dashboard._json_object, keys.KeyCache.keys

    def json_object(raw):
        calls["json"] += 1
        return real_json_object(raw)

    def key_set(self):
        calls["key"] += 1
        return real_keys(self)

    import yaml

    real_yaml = yaml.safe_load
    monkeypatch.setattr(dashboard, "_json_object", json_object)
    monkeypatch.setattr(keys.KeyCache, "keys", key_set)
    monkeypatch.setattr(yaml, "safe_load", lambda *a, **k: calls.__setitem__("yaml", calls["yaml"] + 1) or real_yaml(*a, **k))

    # no CSRF header at all: the size check comes first
    response = client.http.post(path, body=HUGE_BODIES[kind], headers={"Content-Type": "application/json"})

    text_sentence(response, 413)
    assert calls == {"json": 0, "key": 0, "yaml": 0}
    with pytest.raises(secrets_client.exceptions.ResourceNotFoundException):
        secrets_client.describe_secret(SecretId=secret_id)  # no Secrets Manager work: not even a bootstrap
    assert (adversary_world.cluster_a.server.review_count, adversary_world.cluster_b.server.review_count) == (0, 0)


@pytest.mark.parametrize("path", list(POSTS))
def test_the_body_limit_is_exactly_64KiB(service, path):
    at_limit = b"{" + b" " * (dashboard.MAX_BODY_BYTES - 1)
    text_sentence(service.post(path, at_limit, POSTS[path]), 400)  # parsed, and refused as JSON
    text_sentence(service.post(path, at_limit + b" ", POSTS[path]), 413)


@pytest.mark.parametrize("path", [prefix + path for prefix in PREFIXES for path in GETS])
def test_a_get_with_a_huge_body_answers_as_without_one(service, path):
    plain = service.client.http.get(path)
    huge = service.client.http.request("GET", path, body=b"{" * (70 * 1024), headers={})
    assert_no_trace(huge)
    assert (huge.status_code, huge.headers["Content-Type"]) == (plain.status_code, plain.headers["Content-Type"]) == (
        200, "application/json")


# ---------------------------------------------------------------- cluster names that only resemble one

CLUSTER_NAMES = {
    "cyrillic-o": "pr\u043ed-eu",
    "cyrillic-dze": "\u0455taging-us",
    "fullwidth": "\uff50\uff52\uff4f\uff44\uff0d\uff45\uff55",
    "unicode-hyphen": "prod\u2010eu",
    "minus-sign": "prod\u2212eu",
    "percent-encoded-hyphen": "prod%2Deu",
    "percent-encoded-letter": "%70rod-eu",
    "percent-encoded-utf8-cyrillic": "pr%D0%BEd-eu",
    "encoded-traversal": "prod-eu%2F..%2Fstaging-us",
    "dot-dot": "..",
    "encoded-dot-dot": "%2E%2E",
    "trailing-dot": "prod-eu.",
    "uppercase": "PROD-EU",
    "mixed-case": "Prod-Eu",
    "zero-width-joiner": "prod\u200d-eu",
    "zero-width-space": "prod-eu\u200b",
    "bom-prefix": "\ufeffprod-eu",
    "rtl-override": "\u202eue-dorp",
    "rtl-override-suffix": "prod-eu\u202e",
    "leading-space": " prod-eu",
    "encoded-space": "prod-eu%20",
    "encoded-nul": "prod-eu%00",
    "nul": "prod-eu\x00",
    "very-long": "a" * 5000,
    "real-name-then-long": "prod-eu" + "a" * 300,
    "default-without-kubeconfig": "default",
    "list": "prod-eu,staging-us",
    "semicolon": "prod-eu;staging-us",
    "wildcard": "*",
    "template": "{cluster}",
    "underscore": "prod_eu",
}


@pytest.mark.parametrize("name", list(CLUSTER_NAMES.values()), ids=list(CLUSTER_NAMES))
def test_a_cluster_name_that_only_resembles_a_real_one_is_404_on_every_route(service, crypto, name):
    reviews = service.reviews()
    for path in list(POSTS) + GETS:
        full = f"/clusters/{name}{path}"
        if path in POSTS:
            response = service.post(full, good_body(service, path), POSTS[path])
        else:
            response = service.client.http.get(full)
        assert_no_trace(response)
        assert (response.status_code, response.body) == (404, NOT_FOUND_BODY), (full[:80], response.status_code)
        assert response.headers["Content-Type"].startswith("text/plain")
    assert service.reviews() == reviews
    assert crypto.snapshot() == (0, 0, 0)


@pytest.mark.parametrize("name", ["prod-eu", "staging-us"])
def test_control_the_real_cluster_names_answer(service, name):
    assert service.client.http.get(f"/clusters/{name}/api/v1/login/modes").status_code == 200
    assert service.refresh(service.genuine(cluster=name), prefix=f"/clusters/{name}").status_code == 200


# ---------------------------------------------------------------- CSRF tokens

def now_ms() -> int:
    return int(time.time() * 1000)


def _swap_millis(token: str, millis: int) -> str:
    return token.rpartition(":")[0] + f":{millis}"


CSRF_CASES = {
    "missing": lambda key, action: None,
    "empty": lambda key, action: "",
    "expired-24h-and-1ms": lambda key, action: csrf_key_token(key, action, now_ms() - DAY_MS - 1),
    "expired-30-days": lambda key, action: csrf_key_token(key, action, now_ms() - 30 * DAY_MS),
    "other-action": lambda key, action: csrf_key_token(key, "login" if action == "token" else "token"),
    "action-logout": lambda key, action: csrf_key_token(key, "logout"),
    "action-with-colon-injection": lambda key, action: csrf_key_token(key, f"{action}:1"),
    "forged-other-key": lambda key, action: dashboard.csrf_token("not-our-key", action),
    "forged-empty-key": lambda key, action: dashboard.csrf_token("", action),
    "future-2-minutes": lambda key, action: csrf_key_token(key, action, now_ms() + 120_000),
    "future-far": lambda key, action: csrf_key_token(key, action, 10**15),
    "millis-swapped": lambda key, action: _swap_millis(csrf_key_token(key, action, now_ms() - 1000), now_ms()),
    "millis-leading-zeros": lambda key, action: (lambda m: _swap_millis(csrf_key_token(key, action, m), m).replace(
        f":{m}", f":000{m}"))(now_ms()),
    "millis-17-digits": lambda key, action: _swap_millis(csrf_key_token(key, action), 10**16),
    "millis-negative": lambda key, action: _swap_millis(csrf_key_token(key, action), -1),
    "millis-arabic-indic-digits": lambda key, action: csrf_key_token(key, action).rpartition(":")[0] + ":\u0661\u0662",
    "millis-with-space": lambda key, action: csrf_key_token(key, action).replace(":", ": "),
    "no-colon": lambda key, action: csrf_key_token(key, action).replace(":", ""),
    "only-colon": lambda key, action: ":",
    "only-millis": lambda key, action: f":{now_ms()}",
    "digest-truncated": lambda key, action: csrf_key_token(key, action)[3:],
    "digest-with-padding": lambda key, action: csrf_key_token(key, action).replace(":", "=:", 1),
    "digest-standard-alphabet": lambda key, action: csrf_key_token(key, action).replace("-", "+").replace("_", "/")
    if any(c in csrf_key_token(key, action) for c in "-_") else "+" + csrf_key_token(key, action)[1:],
    "uppercased": lambda key, action: csrf_key_token(key, action).upper(),
    "trailing-space": lambda key, action: csrf_key_token(key, action) + " ",
    "twice-comma-joined": lambda key, action: ",".join([csrf_key_token(key, action)] * 2),
    "200-chars": lambda key, action: "A" * 190 + f":{now_ms()}",
    "non-ascii": lambda key, action: "\u00e9" * 27 + f":{now_ms()}",
}


@pytest.mark.parametrize("case", list(CSRF_CASES))
@pytest.mark.parametrize("path", list(POSTS))
def test_a_bad_csrf_token_is_refused_before_anything_else(service, crypto, monkeypatch, path, case):
    parsed = []
    real_json_object = dashboard._json_object
    monkeypatch.setattr(dashboard, "_json_object", lambda raw: parsed.append(1) or real_json_object(raw))
    reviews = service.reviews()
    for prefix in PREFIXES:
        token = CSRF_CASES[case](service.key, POSTS[path])
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["X-CSRF-TOKEN"] = token
        response = service.client.http.post(prefix + path, body=good_body(service, path), headers=headers)
        assert_no_trace(response)
        assert (response.status_code, response.body) == (401, CSRF_FAILED_BODY), (prefix, token, response.body[:200])
        assert response.headers["Content-Type"].startswith("text/plain")
    assert parsed == []
    assert service.reviews() == reviews
    assert crypto.snapshot() == (0, 0, 0)


def test_a_valid_csrf_token_in_another_header_is_refused(service):
    response = service.client.http.post(
        "/api/v1/token/refresh",
        body=good_body(service, "/api/v1/token/refresh"),
        headers={"Content-Type": "application/json", "X-XSRF-TOKEN": service.csrf("token"),
                 "Cookie": f"XSRF-TOKEN={service.csrf('token')}"},
    )
    assert (response.status_code, response.body) == (401, CSRF_FAILED_BODY)


@pytest.mark.parametrize(
    "age_ms", [DAY_MS - 60_000, 0, -30_000], ids=["23h59m-old", "fresh", "30s-in-the-future"]
)
@pytest.mark.parametrize("path", list(POSTS))
def test_control_csrf_tokens_inside_the_window_pass(service, path, age_ms):
    token = csrf_key_token(service.key, POSTS[path], now_ms() - age_ms)
    response = service.client.http.post(path, body=b"{}", headers={"Content-Type": "application/json",
                                                                    "X-CSRF-TOKEN": token})
    text_sentence(response, 400)  # past the CSRF check, refused for its empty body


# ---------------------------------------------------------------- origins

LOOKALIKE_ORIGINS = [
    "https://dashboard.example.com.evil.com",
    "https://evil-dashboard.example.com",
    "https://evildashboard.example.com",
    "https://sub.dashboard.example.com",
    "http://dashboard.example.com",
    "https://dashboard.example.com:8443",
    "https://dashboard.example.com:443",
    "https://DASHBOARD.example.com",
    "HTTPS://dashboard.example.com",
    "null",
    "https://dashboard.example.com/",
    "https://user@dashboard.example.com",
    "https://user:pass@dashboard.example.com",
    "https://evil.com@dashboard.example.com",
    "https://dashboard.example.com@evil.com",
    "https://dashboard.example.com/path",
    "https://dashboard.example.com.",
    "https://dashboard.example.co",
    "https://d\u0430shboard.example.com",  # Cyrillic a
    "https://dashboard.example.com ",
    " https://dashboard.example.com",
    "https://dashboard.example.com\t",
    "https://dashboard.example.com, https://evil.com",
    "https://dashboard.example.com https://evil.com",
    "https://dashboard.example.com%00",
    "https://dashboard.example.com#",
    "https://dashboard.example.com?",
    "*",
    "",
]


def _answers_and_preflights(service, origin: str):
    """(label, response) for every route's answer and preflight, plus error answers, sent from `origin`."""
    headers = {"Origin": origin}
    out = []
    for path, method in ROUTES:
        if method == "POST":
            out.append((f"POST {path}", service.post(path, good_body(service, path), POSTS[path[path.index("/api"):]],
                                                     headers=headers)))
        else:
            out.append((f"GET {path}", service.client.http.get(path, headers=headers)))
        preflight_headers = {**headers, "Access-Control-Request-Method": method,
                             "Access-Control-Request-Headers": "content-type,jwetoken,x-csrf-token"}
        out.append((f"OPTIONS {path}", service.client.http.request("OPTIONS", path, headers=preflight_headers)))
    out.append(("404", service.client.http.get("/clusters/pr\u043ed-eu/api/v1/login/modes", headers=headers)))
    out.append(("401", service.post("/api/v1/token/refresh", b'{"jweToken": "x"}', "token", headers=headers)))
    out.append(("401-csrf", service.post("/api/v1/token/refresh", b'{"jweToken": "x"}', None, headers=headers)))
    out.append(("413", service.post("/api/v1/login", b"{" * (70 * 1024), None, headers=headers)))
    out.append(("415", service.post("/api/v1/login", b"x", None, headers={**headers, "Content-Type": "text/plain"})))
    return out


@pytest.mark.parametrize("origin", LOOKALIKE_ORIGINS, ids=[repr(o) for o in LOOKALIKE_ORIGINS])
def test_an_origin_that_only_resembles_the_allowed_one_gets_no_cors_headers(service, origin):
    for label, response in _answers_and_preflights(service, origin):
        assert_no_trace(response)
        assert cors_headers(response) == {}, (label, cors_headers(response))
        assert response.headers.get("Vary") == "Origin", label  # caches keep origins apart


def test_the_exact_allowed_origin_is_echoed_on_every_answer_and_preflight(service):
    for label, response in _answers_and_preflights(service, ALLOWED_ORIGIN):
        assert_no_trace(response)
        found = cors_headers(response)
        assert found.get("access-control-allow-origin") == ALLOWED_ORIGIN, (label, found)
        assert "access-control-allow-credentials" not in found, label
        if label.startswith("OPTIONS"):
            assert "X-CSRF-TOKEN" in found["access-control-allow-headers"], label
            assert "POST" in found["access-control-allow-methods"], label


# ---------------------------------------------------------------- CSRF action names

ODD_ACTIONS = {
    "colon": "a:b",
    "space": "a b",
    "65-chars": "a" * 65,
    "10000-chars": "a" * 10_000,
    "non-ascii": "l\u00f6gin",
    "fullwidth": "\uff4c\uff4f\uff47\uff49\uff4e",
    "zero-width-joiner": "log\u200din",
    "rtl-override": "\u202elogin",
    "percent-nul": "login%00",
    "nul": "login\x00",
    "percent-encoded-slash": "login%2F..",
    "percent-encoded-dots": "%2e%2e",
    "template": "{action}",
    "semicolon": "login%3Bx",  # a raw ";" starts path parameters, which the router drops
    "html": "<script>alert(1)<",
    "quote": "login\"",
    "apostrophe": "login'",
    "shell": "$(id)",
    "backtick": "`id`",
    "wildcard": "*",
    "percent": "%",
    "plus": "log+in",
}


@pytest.mark.parametrize("action", list(ODD_ACTIONS.values()), ids=list(ODD_ACTIONS))
@pytest.mark.parametrize("prefix", PREFIXES, ids=["default", "prefixed"])
def test_a_csrf_action_with_odd_characters_is_400(service, prefix, action):
    response = service.client.http.get(f"{prefix}/api/v1/csrftoken/{action}")
    text_sentence(response, 400)
    assert response.body == b"The CSRF action must be 1-64 letters, digits, '.', '_' or '-'.\n"  # nothing reflected


@pytest.mark.parametrize("action", ["a" * 64, "login.v2", "my_action-1"])
def test_control_csrf_actions_of_the_allowed_alphabet_get_a_token(service, action):
    response = service.client.http.get(f"/api/v1/csrftoken/{action}")
    assert response.status_code == 200
    assert dashboard.csrf_valid(json.loads(response.body)["token"], [service.key.csrf_secret], action)


# ---------------------------------------------------------------- methods and headers

@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path, allowed", ROUTES, ids=ROUTE_IDS)
def test_other_methods_are_405_never_500(service, path, allowed, method):
    response = service.client.http.request(method, path, body=b"{}", headers={"Content-Type": "application/json"})
    assert_no_trace(response)
    assert response.status_code == 405


@pytest.mark.parametrize(
    "value",
    ['"}, "impersonationPresent": false, "x": {"', "<script>alert(1)</script>", "\u202enimda", "a" * 60_000,
     "\\u0000\\", "eyJhbGciOiJSUzI1NiJ9.e30.sig"],
    ids=["json-breakout", "html", "rtl-override", "60k", "escapes", "jwt-shaped"],
)
def test_login_status_reflects_hostile_header_values_only_as_json_strings(service, value):
    response = service.client.http.get("/api/v1/login/status", headers={"Impersonate-User": value, "jweToken": value})
    assert_no_trace(response)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    body = json.loads(response.body)
    assert set(body) == {"tokenPresent", "headerPresent", "httpsMode", "impersonationPresent", "impersonatedUser"}
    assert body["impersonatedUser"] == value and body["tokenPresent"] is True
