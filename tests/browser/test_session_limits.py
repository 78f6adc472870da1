"""Sessions that end, and a Secrets Manager that goes away, as the page shows them.

A `chalice local` of its own: tokens live TOKEN_TTL=3 s, a session MAX_SESSION_TTL=10 s, and the
key cache is stale after KEY_CACHE_TTL=1 s, so an outage is met by a container that must fall back
on the keys it has. Secrets Manager is a moto server of this module's own: stopping it touches no
other test's secrets (moto forgets everything when it stops).
"""
from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import (
    Network,
    StaticSite,
    expect_logged_in,
    expect_login_form,
    log_in,
    stored_session,
)

MAX_SESSION_TTL = 10


@pytest.fixture(scope="module")
def short_site():
    server = StaticSite("127.0.0.1")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(short_site, start_api, own_moto):
    return start_api(
        short_site, own_moto.url,
        TOKEN_TTL=3, MAX_SESSION_TTL=MAX_SESSION_TTL, REVIEW_INTERVAL=1, KEY_CACHE_TTL=1,
    )


def test_a_session_past_max_session_ttl_returns_to_login(api, short_site, open_page, cluster_a, healthy):
    page = open_page()
    network = Network(page, api.origin)
    page.goto(short_site.url())
    log_in(page, cluster_a.login_token("kube-system", "frank"))
    expect_logged_in(page, "frank", cluster_a.name)
    # renewed while it can be; then the page says this is as long as it may last ...
    expect(page.locator("#session-ends-note")).to_have_text("(the longest this session may last)",
                                                            timeout=(MAX_SESSION_TTL + 10) * 1000)
    page.shot("17-session-at-its-limit")
    # ... and, past it, goes back to the login form saying why
    expect_login_form(page, "Your session ended. Log in again to continue.")
    assert stored_session(page) is None
    page.shot("18-session-ended")

    refreshes = network.answers("POST", "/token/refresh")
    assert [r.status for r in refreshes[:-1]] == [200] * (len(refreshes) - 1) and len(refreshes) >= 2
    assert (refreshes[-1].status, refreshes[-1].text()) == (401, "MSG_TOKEN_EXPIRED_ERROR\n")


def test_secrets_manager_stopped_under_a_warm_service(api, short_site, open_page, own_moto, cluster_a, healthy):
    page = open_page()
    network = Network(page, api.origin)
    page.goto(short_site.url())
    log_in(page, cluster_a.login_token("kube-system", "grace"))
    expect_logged_in(page, "grace", cluster_a.name)

    own_moto.stop()
    try:
        renewed_before = len(network.answers("POST", "/token/refresh"))
        # two renewals with Secrets Manager gone: the container serves from the keys it has
        for _ in range(2):
            with page.expect_response(lambda r: r.url.endswith("/token/refresh")) as answer:
                pass
            assert answer.value.status == 200, answer.value.text()
        expect_logged_in(page, "grace", cluster_a.name)
        expect(page.locator("#session-status")).to_contain_text("Session renewed at")
        page.shot("19-secrets-manager-down-still-logged-in")
        assert len(network.answers("POST", "/token/refresh")) >= renewed_before + 2
        assert "while the key store is unavailable" in api.log()  # the outage was met, and ridden out

        other = open_page()  # and someone else can still log in
        other.goto(short_site.url())
        log_in(other, cluster_a.login_token("kube-system", "heidi"))
        expect_logged_in(other, "heidi", cluster_a.name)
    finally:
        own_moto.start()
