"""Routes only: HTTP in, one call into chalicelib, a Dashboard-shaped answer out.

Every route is served twice: as the Dashboard has it (the default cluster) and under
/clusters/{cluster}/ for one named cluster.
"""
from __future__ import annotations

import functools

from chalice import Chalice

from chalicelib import audit, cors, dashboard, logs, rotation, service, settings, snapstart

app = Chalice(app_name="dashboard-auth", configure_logs=False)
# Only JSON and text are served. Chalice matches every request and answer against this list (four
# times per request), and API Gateway would base64 any body whose type is on it.
app.api.binary_types = []
logs.configure(settings.current().log_level)


@functools.lru_cache(maxsize=1)
def auth() -> service.Service:
    return service.build(settings.current())


# Under SnapStart's initialisation only: build it now, before the snapshot (chalicelib/snapstart.py).
snapstart.set_up(auth)


def route(path: str, methods: list[str]):
    """Register a view at `path` and at /clusters/{cluster}`path`, with OPTIONS for CORS preflights."""
    def register(view):
        for prefix in ("", "/clusters/{cluster}"):
            app.route(prefix + path, methods=methods + ["OPTIONS"], content_types=["application/json"])(view)
        return view
    return register


# Registered first, so it is the outermost: its access line sees the answer the client gets.
app.register_middleware(audit.RequestLog(), "http")


@app.middleware("http")
def cross_origin(event, get_response):
    origin, allowed = event.headers.get("origin"), settings.current().cors_allowed_origins
    if event.method == "OPTIONS":
        return cors.preflight(origin, allowed)
    if event.method == "POST" and not dashboard.is_json_request(event.headers.get("content-type")):
        return cors.decorate(dashboard.unsupported_media_type(), origin, allowed)
    return cors.decorate(get_response(event), origin, allowed)


def _csrf() -> str | None:
    return app.current_request.headers.get(dashboard.CSRF_HEADER)


@route("/api/v1/login", ["POST"])
def login(cluster=None):
    return dashboard.answer(lambda: auth().login(cluster, app.current_request.raw_body, _csrf()))


@route("/api/v1/token/refresh", ["POST"])
def refresh(cluster=None):
    return dashboard.answer(lambda: auth().refresh(cluster, app.current_request.raw_body, _csrf()))


@route("/api/v1/csrftoken/{action}", ["GET"])
def csrf_token(action, cluster=None):
    return dashboard.answer(lambda: {"token": auth().csrf_token(cluster, action)})


@route("/api/v1/login/modes", ["GET"])
def login_modes(cluster=None):
    return dashboard.answer(lambda: auth().login_modes(cluster))


@route("/api/v1/login/skippable", ["GET"])
def login_skippable(cluster=None):
    return dashboard.answer(lambda: auth().login_skippable(cluster))


@route("/api/v1/login/status", ["GET"])
def login_status(cluster=None):
    return dashboard.answer(lambda: auth().login_status(cluster, app.current_request.headers))


@route("/api/v1/clusters", ["GET"])
def clusters(cluster=None):
    return dashboard.answer(lambda: auth().cluster_names(cluster))


@app.lambda_function(name="rotate_key")
def rotate_key(event, context):
    """Secrets Manager's rotation function for the key secret (see chalicelib/rotation.py)."""
    rotation.handle(event, service.secrets_manager())
