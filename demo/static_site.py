"""web/ served as a CDN would serve it: the files as they are, config.json naming the API, and the
Content-Security-Policy header from web/csp.txt with the API's origin filled in.

The page ships the policy as text because a <meta> policy cannot know the API origin without a
build step; the host (this server, CloudFront's response headers policy) sends it instead.
"""
from __future__ import annotations

import http.server
import json
import os
import threading
from pathlib import Path

WEB = Path(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) / "web"


def csp_header(api_origin: str) -> str:
    """The policy a host sends with the page: web/csp.txt with the API's origin filled in."""
    return (WEB / "csp.txt").read_text().strip().replace("{API_ORIGIN}", api_origin)


class StaticSite:
    """Serves web/ on host:port (0: any free port). `config` is what config.json answers (None: 404)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, config: dict | None = None, api_origin: str = ""):
        self.config = config
        self.api_origin = api_origin
        site = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(WEB), **kwargs)

            def do_GET(self):
                if self.path.split("?", 1)[0] == "/config.json":
                    if site.config is None:
                        self.send_error(404)
                        return
                    body = json.dumps(site.config).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                super().do_GET()

            def end_headers(self):
                self.send_header("Content-Security-Policy", csp_header(site.api_origin))
                self.send_header("X-Content-Type-Options", "nosniff")
                self.send_header("Referrer-Policy", "no-referrer")
                self.send_header("Cache-Control", "no-store")
                super().end_headers()

            def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
                pass

        self._server = http.server.ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.origin = f"http://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="web", daemon=True)
        self._thread.start()

    def url(self, query: str = "") -> str:
        return f"{self.origin}/{query}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
