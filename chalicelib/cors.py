"""CORS for Dashboard frontends served from another origin (a CDN): an exact-match allowlist.

The request's Origin is echoed only when it is on the list, byte for byte; anything that merely
resembles an allowed origin gets no CORS headers, so the browser refuses to hand it the answer.
"""
from __future__ import annotations

from chalice import Response

ALLOWED_METHODS = "GET, POST, OPTIONS"
ALLOWED_HEADERS = "Content-Type, jweToken, X-CSRF-TOKEN, Authorization"
PREFLIGHT_MAX_AGE = "600"


def _allowed(origin: str | None, allowed_origins: tuple[str, ...]) -> bool:
    return origin is not None and origin in allowed_origins


def decorate(response: Response, origin: str | None, allowed_origins: tuple[str, ...]) -> Response:
    """Add CORS headers to an answer when the caller's origin is allowed."""
    if allowed_origins:
        response.headers["Vary"] = "Origin"  # caches must not serve one origin's answer to another
    if _allowed(origin, allowed_origins):
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = "Retry-After"
    return response


def preflight(origin: str | None, allowed_origins: tuple[str, ...]) -> Response:
    """Answer an OPTIONS preflight; without an allowed origin it carries no CORS headers at all."""
    response = Response(body="", status_code=204, headers={})
    if _allowed(origin, allowed_origins):
        response.headers.update(
            {
                "Access-Control-Allow-Methods": ALLOWED_METHODS,
                "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
            }
        )
    return decorate(response, origin, allowed_origins)
