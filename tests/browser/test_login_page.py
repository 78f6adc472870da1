"""The login page as a person uses it, in Chromium, with the page and the API on different origins.

One `chalice local` for the module: sessions live TOKEN_TTL=6 s, so the page renews them every few
seconds, and a session's ServiceAccount is asked about again after REVIEW_INTERVAL=1 s.
"""
from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from chalicelib import sessions
from tests.browser.conftest import (
    Network,
    StaticSite,
    csp_header,
    expect_logged_in,
    expect_login_form,
    log_in,
    stored_session,
)
from demo.kube_apiserver import generate_rsa_key


@pytest.fixture(scope="module")
def api(site, start_api, moto_server, cluster_b):
    # CLUSTER_TIMEOUT: a TokenReview held by the "hang" fault waits for the test to release it.
    # staging-us's sessions live 20 s: long enough to ride out a 503 and its Retry-After.
    return start_api(site, moto_server.url, cluster_settings={cluster_b.name: {"tokenTTL": 20}},
                     TOKEN_TTL=6, REVIEW_INTERVAL=1, CLUSTER_TIMEOUT=20)


def sa_token(cluster, name: str, namespace: str = "kube-system") -> str:
    return cluster.login_token(namespace, name)


def test_logs_in_on_each_of_two_clusters(api, site, open_page, cluster_a, cluster_b, healthy):
    page = open_page()
    page.goto(site.url())
    cluster = page.get_by_label("Cluster")
    expect(cluster).to_have_value(cluster_a.name)  # the service's defaultCluster
    assert [o.strip() for o in cluster.locator("option").all_inner_texts()] == [cluster_a.name, cluster_b.name]
    page.shot("01-login-form")

    log_in(page, sa_token(cluster_a, "alice"))
    expect_logged_in(page, "alice", cluster_a.name)
    page.shot("02-logged-in-prod-eu")

    page.get_by_role("button", name="Log out").click()
    expect_login_form(page, "You are logged out")
    page.shot("03-logged-out")

    log_in(page, sa_token(cluster_b, "bob"), cluster=cluster_b.name)
    expect_logged_in(page, "bob", cluster_b.name)
    page.shot("04-logged-in-staging-us")
    assert sessions.parse(stored_session(page)["jweToken"]).claims.cluster == cluster_b.name

    linked = open_page()  # a link that names the cluster preselects it
    linked.goto(site.url(f"?cluster={cluster_b.name}"))
    expect(linked.get_by_label("Cluster")).to_have_value(cluster_b.name)


def test_a_refresh_renews_the_token_across_origins(api, site, open_page, cluster_a, healthy):
    page = open_page()
    network = Network(page, api.origin)
    page.goto(site.url())
    log_in(page, sa_token(cluster_a, "alice"))
    expect_logged_in(page, "alice", cluster_a.name)
    expect(page.locator("#session-status")).to_contain_text("Session renewed at")  # the timer fired
    page.shot("05-renewed")

    # The login: a CSRF token for "login", then the POST carrying it, as JSON.
    csrf_login = network.answers("GET", "/csrftoken/login")[0].json()["token"]
    login = network.calls("POST", "/api/v1/login")[0]
    assert login.all_headers()["x-csrf-token"] == csrf_login
    assert login.all_headers()["content-type"] == "application/json"
    first = login.response().json()
    assert first["name"] == "alice" and first["errors"] == []

    # The refresh: login/status with the jweToken header, a CSRF token for "token", the POST.
    status = network.calls("GET", "/login/status")[0]
    assert status.all_headers()["jwetoken"] == first["jweToken"]
    assert status.response().json()["tokenPresent"] is True
    csrf_token = network.answers("GET", "/csrftoken/token")[0].json()["token"]
    refresh = network.calls("POST", "/token/refresh")[0]
    assert refresh.all_headers()["x-csrf-token"] == csrf_token
    assert refresh.post_data_json == {"jweToken": first["jweToken"]}
    answer = refresh.response()
    assert answer.status == 200
    assert answer.headers["access-control-allow-origin"] == site.origin  # so the page may read it
    renewed = answer.json()["jweToken"]
    assert renewed and renewed != first["jweToken"]

    # The page read the answer: it keeps the new token and shows the new expiry.
    assert stored_session(page)["jweToken"] in [r.response().json()["jweToken"] for r in network.calls("POST", "/token/refresh")]
    old, new = sessions.parse(first["jweToken"]).claims, sessions.parse(renewed).claims
    assert new.auth_time == old.auth_time and new.expires_at > old.expires_at

    # Every request that needed one was preceded by a preflight the API allowed for this origin.
    for path in ("/api/v1/login", "/login/status", "/token/refresh"):
        preflights = network.preflights(path)
        assert preflights, f"no preflight for {path}"
        assert preflights[0]["status"] == 204
        headers = preflights[0]["headers"]
        assert headers["access-control-allow-origin"] == site.origin
        allowed = {h.strip().lower() for h in headers["access-control-allow-headers"].split(",")}
        assert {"content-type", "jwetoken", "x-csrf-token"} <= allowed
    assert not [e for e in network.seen() if e.get("failed")], network.seen()


def test_an_origin_not_on_the_allowlist_cannot_read_the_answers(api, open_page):
    elsewhere = StaticSite("localhost")  # another origin, and not in CORS_ALLOWED_ORIGINS
    elsewhere.api_origin = api.origin  # its CSP allows the API: what stops it is CORS alone
    elsewhere.config = {"apiBase": api.origin}
    try:
        page = open_page()
        network = Network(page, api.origin)
        page.goto(elsewhere.url())
        expect(page.get_by_role("alert")).to_contain_text(
            f"The API at {api.origin} is not reachable from this page's origin ({elsewhere.origin})"
        )
        expect(page.get_by_role("alert")).to_contain_text("CORS_ALLOWED_ORIGINS")
        expect(page.get_by_role("button", name="Log in")).to_be_hidden()
        page.shot("06-origin-not-allowed")
    finally:
        elsewhere.stop()
    clusters = [e for e in network.seen() if e["url"].endswith("/api/v1/clusters")][0]
    assert clusters["status"] == 200  # the API answered ...
    assert "access-control-allow-origin" not in clusters["headers"]
    assert clusters["cors_error"] == "MissingAllowOriginHeader"  # ... and the browser kept it from the page
    assert any("blocked by CORS policy" in line for line in page.console)


@pytest.mark.parametrize("config", [None, {"refreshSeconds": 30}], ids=["no-config.json", "no-apiBase"])
def test_without_an_api_base_it_calls_its_own_origin(open_page, config):
    own = StaticSite("127.0.0.1")  # serves no API: its /api/v1/clusters is a 404
    own.config = config
    try:
        page = open_page()
        asked = []
        page.on("request", lambda r: asked.append(r.url) if "/api/v1/" in r.url else None)
        page.goto(own.url())
        expect_login_form(page)
        expect(page.get_by_label("Cluster")).to_be_hidden()  # no list: the default cluster's routes
    finally:
        own.stop()
    assert asked == [f"{own.origin}/api/v1/clusters"]


def test_a_revoked_service_account_is_sent_back_to_login(api, site, open_page, cluster_a, healthy):
    page = open_page()
    page.goto(site.url())
    log_in(page, sa_token(cluster_a, "carol"))
    expect_logged_in(page, "carol", cluster_a.name)

    cluster_a.server.delete_service_account("kube-system", "carol")
    expect_login_form(page, "Your session ended. Log in again to continue.")
    assert stored_session(page) is None
    page.shot("07-revoked")


def test_a_token_the_cluster_refuses(api, site, open_page, cluster_a, healthy):
    page = open_page()
    network = Network(page, api.origin)
    page.goto(site.url())
    forged = cluster_a.server.issue_token("kube-system", "alice", signing_key=generate_rsa_key())
    log_in(page, forged)
    expect(page.get_by_role("alert")).to_contain_text(f"The cluster {cluster_a.name} did not accept this token")
    expect_login_form(page)
    answer = network.calls("POST", "/api/v1/login")[0].response()
    assert answer.status == 200 and answer.json()["errors"][0]["ErrStatus"]["message"] == "MSG_LOGIN_UNAUTHORIZED_ERROR"
    assert stored_session(page) is None
    page.shot("08-token-refused")


def test_an_unavailable_cluster_is_retried_after_retry_after(api, site, open_page, cluster_b, healthy):
    page = open_page()
    network = Network(page, api.origin)
    # this page's config.json asks for a renewal every 2 s (its sessions on staging-us live 20 s)
    page.route(f"{site.origin}/config.json", lambda route: route.fulfill(
        json={"apiBase": api.origin, "refreshSeconds": 2}, headers={"Cache-Control": "no-store"}))
    page.goto(site.url())

    cluster_b.server.set_fault("503")
    log_in(page, sa_token(cluster_b, "bob"), cluster=cluster_b.name)
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text(f"The sign-in service or cluster {cluster_b.name} is unavailable right now.")
    refused = network.answers("POST", "/api/v1/login")[0]
    assert refused.status == 503
    expect(alert).to_contain_text(f"Trying again in {int(refused.headers['retry-after'])} s.")  # the header was readable
    page.shot("09-unavailable-at-login")

    cluster_b.server.set_fault(None)  # the page tries again by itself, after Retry-After
    expect_logged_in(page, "bob", cluster_b.name)

    cluster_b.server.set_fault("503")
    status = page.locator("#session-status")
    expect(status).to_contain_text("is unavailable right now. Your session is kept; trying again in")
    expect(page.get_by_role("heading", name="Logged in")).to_be_visible()
    page.shot("10-unavailable-at-refresh")
    cluster_b.server.set_fault(None)  # the page tries again after Retry-After (5 s; its token has ~15 s left)
    expect(status).to_contain_text("Session renewed at")
    expect_logged_in(page, "bob", cluster_b.name)


def test_logs_in_with_a_kubeconfig_file(api, site, open_page, cluster_b, tmp_path, healthy):
    good = cluster_b.server.write_kubeconfig(tmp_path / "config", sa_token(cluster_b, "dave", "team-b"))
    tokenless = tmp_path / "no-token.yaml"
    tokenless.write_text(json.dumps(cluster_b.server.kubeconfig_dict("")))
    page = open_page()
    network = Network(page, api.origin)
    page.goto(site.url(f"?cluster={cluster_b.name}"))
    page.get_by_label("Kubeconfig file").first.check()
    expect(page.get_by_label("Token", exact=True)).to_be_hidden()

    page.locator("#kubeconfig").set_input_files(str(tokenless))
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text(
        "The sign-in service could not use this: kubeconfig's current context has no user with a token"
    )
    page.shot("11-kubeconfig-without-token")

    page.locator("#kubeconfig").set_input_files(str(good))
    page.get_by_role("button", name="Log in").click()
    expect_logged_in(page, "dave", cluster_b.name)
    page.shot("12-logged-in-by-kubeconfig")
    sent = network.calls("POST", "/api/v1/login")[-1].post_data_json
    assert set(sent) == {"kubeconfig"} and "current-context" in sent["kubeconfig"]


def test_the_session_lives_in_this_tab_until_log_out(api, site, open_page, cluster_a, healthy):
    page = open_page()
    page.goto(site.url())
    log_in(page, sa_token(cluster_a, "alice"))
    expect_logged_in(page, "alice", cluster_a.name)

    page.reload()  # the token is in sessionStorage: a reload keeps the session (after one refresh)
    expect_logged_in(page, "alice", cluster_a.name)
    expect(page.locator("#session-status")).to_contain_text("Session renewed at")

    other_tab = page.context.new_page()  # another tab of the same browser is not logged in
    other_tab.goto(site.url())
    expect(other_tab.get_by_role("heading", name="Log in")).to_be_visible()
    other_tab.close()

    page.get_by_role("button", name="Log out").click()
    expect_login_form(page, "You are logged out")
    assert stored_session(page) is None
    page.reload()
    expect_login_form(page)

    # A session token the service does not accept (tampered) brings the login form back, with a reason.
    log_in(page, sa_token(cluster_a, "alice"))
    expect_logged_in(page, "alice", cluster_a.name)
    page.goto(site.url("no-such-page"))  # same origin and tab, and no app whose timer could write meanwhile
    saved = stored_session(page)
    envelope = json.loads(saved["jweToken"])
    envelope["tag"] = ("A" if envelope["tag"][0] != "A" else "B") + envelope["tag"][1:]
    saved["jweToken"] = json.dumps(envelope, separators=(",", ":"))
    page.evaluate("s => sessionStorage.setItem('dashboard-auth.session', s)", json.dumps(saved))
    page.goto(site.url())
    expect_login_form(page, "The sign-in service no longer accepts this session. Log in again.")
    assert stored_session(page) is None
    page.shot("13-session-refused")


def test_keyboard_phone_width_and_busy_state(api, site, open_page, cluster_a, healthy):
    page = open_page(width=375, height=740)
    page.goto(site.url())
    expect(page.get_by_role("button", name="Log in")).to_be_enabled()
    page.shot("14-login-form-phone")

    # Tab through the form: every control is reachable, in order, and shows where the focus is.
    order = []
    for _ in range(4):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id"))
        outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        width = page.evaluate("parseFloat(getComputedStyle(document.activeElement).outlineWidth)")
        assert outline != "none" and width >= 2, f"no visible focus on #{order[-1]}"
    # arrow keys, not Tab, move between the two radio buttons of a group
    assert order == ["cluster", "mode-token", "token", "login-button"], order
    page.keyboard.press("Shift+Tab")
    assert page.evaluate("document.activeElement.id") == "token"
    page.keyboard.insert_text(sa_token(cluster_a, "erin"))

    cluster_a.server.set_fault("hang")  # the cluster takes its time: the page says it is busy
    try:
        page.keyboard.press("Enter")
        button = page.get_by_role("button", name="Logging in…")
        expect(button).to_be_disabled()
        expect(page.locator("#login-form")).to_have_attribute("aria-busy", "true")
        expect(page.get_by_label("Token", exact=True)).to_be_disabled()
        page.shot("15-busy-phone")
    finally:
        cluster_a.server.set_fault(None)
    expect_logged_in(page, "erin", cluster_a.name)
    assert page.evaluate("document.activeElement.id") == "session-title"  # focus follows the change
    page.shot("16-logged-in-phone")
    # readable at 375 px: nothing wider than the screen
    assert page.evaluate("document.documentElement.scrollWidth") <= 375

    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "logout-button"
    page.keyboard.press("Enter")
    expect_login_form(page, "You are logged out")


def test_the_content_security_policy(api, site, open_page):
    page = open_page()
    response = page.goto(site.url())
    policy = response.headers["content-security-policy"]
    assert policy == csp_header(api.origin)
    assert "connect-src 'self' " + api.origin + ";" in policy and "script-src 'self';" in policy
    expect(page.get_by_role("button", name="Log in")).to_be_enabled()  # the page runs under it

    page.expected_csp_violations = True
    # Another origin is not the API: the page may not talk to it, whatever a script tries.
    blocked = page.evaluate("fetch('http://127.0.0.1:9/steal').then(() => 'sent', e => e.name)")
    assert blocked == "TypeError"
    assert any("connect-src" in line for line in page.csp_violations())
    # No HTML from strings (Trusted Types): the usual way an injected script gets in is refused.
    with pytest.raises(Exception, match="TrustedHTML"):
        page.evaluate("document.body.innerHTML = '<img src=x>'")
