"""The login page (web/) in a real browser: Debian's Chromium driven by Playwright.

The page and the API are on different origins, as on a CDN: web/ is served by a small static HTTP
server on 127.0.0.1:<port> that sets the Content-Security-Policy header from web/csp.txt, and the
API is `chalice local` in its own process on another port, with CORS_ALLOWED_ORIGINS naming the
page's origin, the key in Secrets Manager (moto) and the two fake clusters of tests/conftest.py.

Screenshots of every state go to $BROWSER_SCREENSHOTS (default build/screenshots/); the session
prints the folder at its end.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from demo.static_site import StaticSite, csp_header  # noqa: F401 - the tests use both from here
from tests.conftest import AWS_TEST_ENV, ROOT, free_port, wait_for_port, write_registry

SCREENSHOTS = Path(os.environ.get("BROWSER_SCREENSHOTS") or Path(ROOT) / "build" / "screenshots")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# Generous: the first login of a `chalice local` imports the kubernetes client, and the machine is shared.
WAIT_MS = 20_000

_saved_screenshots: list[Path] = []


# ---------------------------------------------------------------- the API: `chalice local`

class ApiServer:
    """`chalice local` in its own process group, configured only by the environment given here."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.port = free_port()
        self.origin = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        chalice = os.path.join(os.path.dirname(sys.executable), "chalice")
        self._log = open(log_path, "wb")
        # A stage with no entry in .chalice/config.json: nothing there overrides the environment.
        self._process = subprocess.Popen(
            [chalice, "--project-dir", ROOT, "local", "--no-autoreload", "--stage", "browser-test",
             "--host", "127.0.0.1", "--port", str(self.port)],
            env={**os.environ, **AWS_TEST_ENV, "PYTHONUNBUFFERED": "1", **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for_port(self.port, timeout=60)
            deadline = time.monotonic() + 30
            while requests.get(f"{self.origin}/api/v1/login/modes", timeout=10).status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"chalice local did not answer; see {log_path}")
                time.sleep(0.2)
        except BaseException:
            self.stop()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
            self._process.wait(timeout=20)
        self._log.close()


def _assert_log_has_no_secrets(api: ApiServer) -> None:
    log = api.log()
    for marker in ("eyJ", "BEGIN RSA", "BEGIN PRIVATE"):
        assert marker not in log, f"a token or key reached the service's log ({api.log_path})"


@pytest.fixture(scope="module")
def start_api(tmp_path_factory, cluster_a, cluster_b):
    """Start `chalice local` for a StaticSite: CORS allows exactly that site; both fake clusters."""
    started: list[ApiServer] = []
    workdir = tmp_path_factory.mktemp("browser-api")

    def start(site: StaticSite, moto_url: str, cluster_settings: dict | None = None, **settings) -> ApiServer:
        """settings: the service's environment; cluster_settings: {cluster name: registry members}."""
        extra = cluster_settings or {}
        registry = write_registry(
            workdir / f"clusters-{len(started)}.json",
            [c.registry_entry(**extra.get(c.name, {})) for c in (cluster_a, cluster_b)],
            default=cluster_a.name,
        )
        env = {
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": moto_url,
            "KEY_SECRET_ID": f"dashboard-auth/browser/{uuid.uuid4().hex}",
            "CLUSTERS_FILE": registry,
            "CORS_ALLOWED_ORIGINS": site.origin,
            "CSRF_ENFORCE": "true",
            "LOG_LEVEL": "INFO",
            "KUBECONFIG": os.path.join(ROOT, "tests", "no-such-kubeconfig"),
            **{name: str(value) for name, value in settings.items()},
        }
        api = ApiServer(env, workdir / f"chalice-local-{len(started)}.log")
        started.append(api)
        site.api_origin = api.origin
        site.config = {"apiBase": api.origin}
        return api

    yield start
    for api in started:
        api.stop()
    for api in started:
        _assert_log_has_no_secrets(api)


@pytest.fixture(scope="module")
def site():
    server = StaticSite("127.0.0.1")
    yield server
    server.stop()


# ---------------------------------------------------------------- the browser

@pytest.fixture(scope="session")
def browser():
    if not os.path.exists(CHROMIUM):
        message = f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Page:
    """One tab in a fresh browser profile, with what its console said and what it threw."""

    def __init__(self, page):
        self.page = page
        self.console: list[str] = []
        self.errors: list[str] = []
        page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def __getattr__(self, name):
        return getattr(self.page, name)

    def csp_violations(self) -> list[str]:
        return [line for line in self.console if "Content Security Policy" in line]

    def shot(self, name: str) -> Path:
        if not _saved_screenshots and SCREENSHOTS.is_dir():
            # this run's screenshots only: an old file would pass for a state this run never reached
            for old in SCREENSHOTS.glob("*.png"):
                old.unlink()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True, animations="disabled", caret="hide")
        _saved_screenshots.append(path)
        return path


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.browser_call_failed = report.failed
    return report


@pytest.fixture
def open_page(browser, request):
    """open_page(viewport=...) -> Page; every page is checked at the end: no uncaught error, no token
    in the console, no CSP violation unless the test says it expected one."""
    contexts, pages = [], []

    def open_(width: int = 900, height: int = 720) -> Page:
        context = browser.new_context(viewport={"width": width, "height": height}, locale="en-GB",
                                      timezone_id="UTC", color_scheme="light")
        context.set_default_timeout(WAIT_MS)
        contexts.append(context)
        page = Page(context.new_page())
        page.expected_csp_violations = False
        pages.append(page)
        return page

    yield open_
    if getattr(request.node, "browser_call_failed", False):
        for number, page in enumerate(pages):  # what the page showed when the test gave up
            try:
                page.shot(f"FAILED-{request.node.name}-{number}")
            except Exception:
                pass
    for context in contexts:
        context.close()
    for page in pages:
        assert page.errors == [], f"the page threw: {page.errors}"
        assert not [line for line in page.console if "eyJ" in line], "a token reached the console"
        if not page.expected_csp_violations:
            assert page.csp_violations() == [], page.csp_violations()


def pytest_terminal_summary(terminalreporter):
    if _saved_screenshots:
        terminalreporter.write_line(
            f"browser screenshots ({len(_saved_screenshots)}): {SCREENSHOTS}"
        )


# ---------------------------------------------------------------- what a test does and watches

STORAGE_KEY = "dashboard-auth.session"  # where web/app.js keeps the session (sessionStorage)


class Network:
    """Every API call the page makes, as the browser saw it, preflights included.

    Playwright reports the page's own requests; a CORS preflight is the browser's business and is
    read from the DevTools protocol (Network domain), as are the browser's reasons for refusing an
    answer (corsErrorStatus).
    """

    def __init__(self, page, api_origin: str):
        self.api_origin = api_origin
        self.requests = []  # playwright Request objects, in order
        self.responses = []  # playwright Response objects, in order
        self._cdp: dict[str, dict] = {}
        page.on("request", lambda r: self.requests.append(r) if r.url.startswith(api_origin) else None)
        page.on("response", lambda r: self.responses.append(r) if r.url.startswith(api_origin) else None)
        cdp = page.context.new_cdp_session(page.page if isinstance(page, Page) else page)
        cdp.on("Network.requestWillBeSent", self._sent)
        cdp.on("Network.responseReceived", self._received)
        cdp.on("Network.responseReceivedExtraInfo", self._received_raw)
        cdp.on("Network.loadingFailed", self._failed)
        cdp.send("Network.enable")

    def _sent(self, event):
        if event["request"]["url"].startswith(self.api_origin):
            entry = self._cdp.setdefault(event["requestId"], {})
            entry.update(method=event["request"]["method"], url=event["request"]["url"])

    def _received(self, event):
        entry = self._cdp.get(event["requestId"])
        if entry is not None:
            entry["status"] = event["response"]["status"]
            entry["headers"] = {k.lower(): v for k, v in event["response"]["headers"].items()}

    def _received_raw(self, event):
        # the answer as it came off the wire, also for one the browser then refuses to hand over
        entry = self._cdp.setdefault(event["requestId"], {})
        entry.setdefault("status", event["statusCode"])
        entry.setdefault("headers", {k.lower(): v for k, v in event["headers"].items()})

    def _failed(self, event):
        entry = self._cdp.get(event["requestId"])
        if entry is not None:
            entry["failed"] = event.get("errorText")
            entry["cors_error"] = (event.get("corsErrorStatus") or {}).get("corsError")

    def seen(self) -> list[dict]:
        """Everything the browser sent to the API: method, url, and status/headers or why it failed."""
        return [entry for entry in self._cdp.values() if "url" in entry]

    def preflights(self, path: str) -> list[dict]:
        return [e for e in self.seen() if e["method"] == "OPTIONS" and e["url"].endswith(path)]

    def calls(self, method: str, path: str) -> list:
        return [r for r in self.requests if r.method == method and r.url.endswith(path)]

    def answers(self, method: str, path: str) -> list:
        return [r for r in self.responses if r.request.method == method and r.url.endswith(path)]


def stored_session(page) -> dict | None:
    raw = page.evaluate(f"sessionStorage.getItem({json.dumps(STORAGE_KEY)})")
    return json.loads(raw) if raw else None


def log_in(page, token: str, cluster: str | None = None) -> None:
    """What a person does: pick the cluster, paste the token, press Log in."""
    from playwright.sync_api import expect

    expect(page.get_by_role("button", name="Log in")).to_be_enabled()
    if cluster:
        page.get_by_label("Cluster").select_option(cluster)
    page.get_by_label("ServiceAccount token").check()
    page.get_by_label("Token", exact=True).fill(token)
    page.get_by_role("button", name="Log in").click()


def expect_logged_in(page, name: str, cluster: str) -> None:
    from playwright.sync_api import expect

    expect(page.get_by_role("heading", name="Logged in")).to_be_visible()
    expect(page.locator("#session-name")).to_have_text(name)
    expect(page.locator("#session-cluster")).to_have_text(cluster)
    expect(page.locator("#session-ends")).not_to_have_text("")
    assert "eyJ" not in page.inner_text("body"), "a token is shown on the page"


def expect_login_form(page, message: str | None = None) -> None:
    from playwright.sync_api import expect

    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    expect(page.get_by_role("button", name="Log in")).to_be_enabled()
    expect(page.get_by_role("heading", name="Logged in")).to_be_hidden()
    if message is not None:
        expect(page.get_by_role("alert")).to_contain_text(message)
