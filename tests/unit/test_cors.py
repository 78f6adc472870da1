"""CORS (chalicelib.cors): an exact-match origin allowlist; anything else gets no CORS headers."""
from __future__ import annotations

import pytest
from chalice import Response

from chalicelib import cors

ALLOWED = ("https://dash.example.com", "http://localhost:8080")


def access_control(response: Response) -> dict:
    return {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


def answer() -> Response:
    return Response(body='{"jweToken":"x","errors":[]}', status_code=200, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("origin", ALLOWED)
def test_allowed_origin_is_echoed_exactly(origin):
    response = cors.decorate(answer(), origin, ALLOWED)
    assert response.headers["Access-Control-Allow-Origin"] == origin
    assert response.headers["Vary"] == "Origin"
    assert response.headers["Content-Type"] == "application/json"  # the answer itself is untouched
    assert response.status_code == 200


def test_allowed_origin_never_gets_a_wildcard_or_credentials_with_a_wildcard():
    response = cors.decorate(answer(), "https://dash.example.com", ALLOWED)
    assert response.headers["Access-Control-Allow-Origin"] != "*"


def test_error_answers_are_decorated_too_so_the_frontend_can_read_them():
    error = Response(body="MSG_TOKEN_EXPIRED_ERROR\n", status_code=401, headers={"Content-Type": "text/plain"})
    response = cors.decorate(error, "https://dash.example.com", ALLOWED)
    assert response.headers["Access-Control-Allow-Origin"] == "https://dash.example.com"
    assert response.status_code == 401


@pytest.mark.parametrize(
    "origin",
    [
        "https://dash.example.com/",
        "https://dash.example.com:443",
        "https://dash.example.com:8443",
        "http://dash.example.com",
        "https://dash.example.com.evil.com",
        "https://evil-dash.example.com",
        "https://evildash.example.com",
        "https://dash.example.co",
        "https://ash.example.com",
        "https://DASH.EXAMPLE.COM",
        "HTTPS://dash.example.com",
        " https://dash.example.com",
        "https://dash.example.com ",
        "https://dash.example.com,https://evil.com",
        "https://evil.com, https://dash.example.com",
        "http://localhost:8081",
        "http://localhost",
        "https://localhost:8080",
        "null",
        "*",
        "",
        None,
    ],
)
def test_lookalike_origins_get_no_cors_headers(origin):
    response = cors.decorate(answer(), origin, ALLOWED)
    assert access_control(response) == {}
    preflight = cors.preflight(origin, ALLOWED)
    assert access_control(preflight) == {}


def test_vary_origin_is_set_even_for_a_refused_origin_when_cors_is_configured():
    # A shared cache must not replay an allowed origin's answer (with its ACAO) to another origin.
    assert cors.decorate(answer(), "https://evil.com", ALLOWED).headers["Vary"] == "Origin"


def test_without_an_allowlist_no_origin_gets_cors_headers():
    for origin in ALLOWED + ("null", "*"):
        assert access_control(cors.decorate(answer(), origin, ())) == {}
        assert access_control(cors.preflight(origin, ())) == {}


def split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",")]


def test_preflight_for_an_allowed_origin_lists_what_the_dashboard_sends():
    response = cors.preflight("https://dash.example.com", ALLOWED)
    assert 200 <= response.status_code < 300
    assert response.headers["Access-Control-Allow-Origin"] == "https://dash.example.com"
    allowed_headers = [h.lower() for h in split(response.headers["Access-Control-Allow-Headers"])]
    for header in ("jwetoken", "x-csrf-token", "content-type"):
        assert header in allowed_headers
    assert "POST" in split(response.headers["Access-Control-Allow-Methods"])
    assert response.headers["Vary"] == "Origin"


def test_preflight_for_a_refused_origin_is_still_an_empty_success_without_cors():
    response = cors.preflight("https://dash.example.com.evil.com", ALLOWED)
    assert access_control(response) == {}
    assert response.body == ""
