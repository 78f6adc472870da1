"""`python -m demo` as a process the tests start and read, as a person reads its banner."""
from __future__ import annotations

import re
import subprocess
import sys
import time

import requests

from tests.conftest import ROOT

BANNER_END = "Ctrl-C stops everything."


class RunningDemo:
    def __init__(self, output: str, ports: dict[str, int], process: subprocess.Popen):
        self.output, self.ports, self.process = output, ports, process
        self.page = re.search(r"Open the login page:\s+(\S+)", output).group(1)
        self.api = f"http://127.0.0.1:{ports['api']}"
        self.origin = self.page.rstrip("/")

    def token(self, label: str) -> str:
        return re.search(rf"{re.escape(label)}[^\n]*:\n\s+(\S+)", self.output).group(1)

    def call(self, method: str, path: str, body: dict | None = None) -> requests.Response:
        headers = {"Origin": self.origin}
        if method == "POST":
            action = "login" if path.endswith("/login") else "token"
            prefix = path.split("/api/v1/")[0]
            csrf = requests.get(f"{self.api}{prefix}/api/v1/csrftoken/{action}", headers=headers, timeout=30)
            headers.update({"Content-Type": "application/json", "X-CSRF-TOKEN": csrf.json()["token"]})
        return requests.request(method, self.api + path, json=body, headers=headers, timeout=60)


def start_demo(ports: dict[str, int]) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "demo", "--api-port", str(ports["api"]), "--web-port", str(ports["web"]),
         "--secrets-port", str(ports["secrets"])],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if BANNER_END in line:
            return process, "".join(lines)
    process.kill()
    raise AssertionError("the demo printed no banner:\n" + "".join(lines) + process.stderr.read())
