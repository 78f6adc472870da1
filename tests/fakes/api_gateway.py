"""An HTTP front for Lambda container processes: what API Gateway's REST API does for this Chalice app.

tests/fakes/lambda_container.py runs the deployed handler (app.app) in its own process, fed API
Gateway proxy events over a pipe; it has no HTTP side. This server is that side, so a client that
speaks HTTP (the `dashboard-auth smoke` command) can be pointed at a "deployed stage":

- the first path segment is the stage (``/api``, as chalice deploys it); any other answers
  API Gateway's ``403 {"message": "Forbidden"}``;
- the rest is matched against the app's routes with chalice's own RouteMatcher (the table
  API Gateway is built from); no route, or a method the route does not have, answers
  ``403 {"message": "Missing Authentication Token"}``, as API Gateway does;
- a match goes to the container as the proxy event (resource template, path parameters,
  headers, body), and its answer comes back as the HTTP response. An invocation error is
  API Gateway's ``502 {"message": "Internal server error"}``.

Two knobs stand in for what sits in front of API Gateway in a real deployment (a CDN):
``drop_headers`` (request headers an origin request policy does not forward) and
``html_fallback`` (unknown paths answered with a web page, as a CDN's default behaviour would).
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from chalice.local import RouteMatcher

from tests.fakes.lambda_container import STAGE, Container, ContainerError

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class ApiGatewayFront:
    def __init__(self, container: Container, routes: dict, stage: str = STAGE):
        self.container = container
        self.routes = routes  # {template: {method: ...}}, as app.app.routes
        self.matcher = RouteMatcher(list(routes))
        self.stage = stage
        self.drop_headers: set[str] = set()
        self.html_fallback = False
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The stage's invoke URL, as API Gateway prints it: https://<id>.execute-api.<region>.amazonaws.com/api"""
        return f"http://127.0.0.1:{self._server.server_address[1]}/{self.stage}"

    @property
    def host_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "ApiGatewayFront":
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # noqa: A002 - quiet: the test reads answers, not logs
                pass

            def _any(self) -> None:
                status, headers, body = front.handle(self.command, self.path, dict(self.headers.items()),
                                                     self._body())
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _body(self) -> str | None:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length).decode("utf-8") if length else None

            do_GET = do_POST = do_OPTIONS = do_PUT = do_DELETE = do_HEAD = _any

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="api-gateway-front",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # ------------------------------------------------------------------ API Gateway's part

    @staticmethod
    def _message(status: int, message: str) -> tuple[int, list, bytes]:
        return status, [("Content-Type", "application/json"), ("x-amzn-ErrorType", "ForbiddenException")], \
            json.dumps({"message": message}).encode()

    def handle(self, method: str, raw_path: str, headers: dict, body: str | None) -> tuple[int, list, bytes]:
        path = raw_path.split("?", 1)[0]
        stage, _, rest = path.lstrip("/").partition("/")
        try:
            if stage != self.stage:
                raise LookupError("Forbidden")
            match = self.matcher.match_route("/" + rest)
            if method not in self.routes[match.route]:
                raise LookupError("Missing Authentication Token")
        except ValueError:
            return self._not_found("Missing Authentication Token")
        except LookupError as error:
            return self._not_found(str(error))
        sent = {name: value for name, value in headers.items()
                if name.lower() not in HOP_BY_HOP and name.lower() not in self.drop_headers}
        try:
            answer = self.container.call({
                "op": "http", "method": method, "resource": match.route,
                "pathParameters": match.captured or None, "headers": sent, "body": body,
            })
        except ContainerError:
            return self._message(502, "Internal server error")
        if answer.get("status") == 502 and "error" in answer:
            return self._message(502, "Internal server error")
        out = []
        for name, value in (answer.get("headers") or {}).items():
            for one in value if isinstance(value, list) else [value]:
                if name.lower() not in HOP_BY_HOP and (name, str(one)) not in out:
                    out.append((name, str(one)))
        payload = answer.get("body")
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload)
        return answer["status"], out, (payload or "").encode("utf-8")

    def _not_found(self, message: str) -> tuple[int, list, bytes]:
        if self.html_fallback:
            page = b"<!doctype html><html><head><title>Kubernetes Dashboard</title></head><body></body></html>"
            return 200, [("Content-Type", "text/html; charset=utf-8")], page
        return self._message(403, message)
