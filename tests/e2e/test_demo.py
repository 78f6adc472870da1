"""`make demo` as a newcomer runs it: `python -m demo` in its own process, read by what it prints.

Everything it starts is real here: the moto server for Secrets Manager, the two TLS demo clusters,
`chalice local`, the static host of web/ on another origin.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests

from tests.conftest import ROOT, UNAUTHORIZED_LOGIN, free_port
from tests.demo_run import RunningDemo, start_demo

def processes_naming(port: int) -> list[str]:
    """Command lines of live processes that name this port (the demo's children do)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if re.search(rf"(-p|--port) {port}\b", command):
            found.append(command)
    return found


@pytest.fixture(scope="module")
def demo():
    ports = {"api": free_port(), "web": free_port(), "secrets": free_port()}
    process, output = start_demo(ports)
    running = RunningDemo(output, ports, process)
    yield running
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)


def test_the_page_is_on_another_origin_and_knows_where_the_api_is(demo):
    config = requests.get(demo.page + "config.json", timeout=10)
    assert config.json() == {"apiBase": demo.api}
    page = requests.get(demo.page, timeout=10)
    assert page.status_code == 200 and "connect-src 'self' " + demo.api in page.headers["Content-Security-Policy"]
    clusters = demo.call("GET", "/api/v1/clusters")
    assert clusters.json() == {"clusters": ["demo-eu", "demo-us"], "defaultCluster": "demo-eu"}
    assert clusters.headers["Access-Control-Allow-Origin"] == demo.origin


def test_the_printed_tokens_log_in_on_each_cluster(demo):
    alice = demo.call("POST", "/api/v1/login", {"token": demo.token("demo-eu, ServiceAccount demo/alice")})
    assert alice.json()["name"] == "alice"
    bob = demo.call("POST", "/clusters/demo-us/api/v1/login", {"token": demo.token("demo-us, ServiceAccount demo/bob")})
    assert bob.json()["name"] == "bob"
    refreshed = demo.call("POST", "/api/v1/token/refresh", {"jweToken": alice.json()["jweToken"]})
    assert refreshed.status_code == 200 and refreshed.json()["jweToken"] != alice.json()["jweToken"]
    person = demo.call("POST", "/api/v1/login", {"token": demo.token("not a ServiceAccount")})
    assert person.json() == UNAUTHORIZED_LOGIN


def test_the_printed_kubeconfig_file_logs_in(demo):
    path = re.search(r"kubeconfig file (\S+)", demo.output).group(1)
    with open(path, encoding="utf-8") as handle:
        answer = demo.call("POST", "/api/v1/login", {"kubeconfig": handle.read()})
    assert answer.json()["name"] == "alice"


def test_the_printed_revoke_line_ends_that_session(demo):
    token = demo.token("demo-eu, ServiceAccount demo/temporary")
    assert demo.call("POST", "/api/v1/login", {"token": token}).json()["name"] == "temporary"
    revoke = re.search(r"Revoke [^\n]*\n\s+(curl [^\n]+)", demo.output).group(1)
    bearer = re.search(r"Authorization: Bearer (\S+)'", revoke).group(1)
    ca = re.search(r"--cacert (\S+)", revoke).group(1)
    url = revoke.split()[-1]
    assert requests.delete(url, headers={"Authorization": f"Bearer {bearer}"}, verify=ca, timeout=10).status_code == 200
    assert demo.call("POST", "/api/v1/login", {"token": token}).json() == UNAUTHORIZED_LOGIN


def test_ctrl_c_stops_everything_it_started(demo):
    demo.process.send_signal(signal.SIGINT)
    out, err = demo.process.communicate(timeout=60)
    assert demo.process.returncode == 0, err
    assert "demo: stopped" in out and "Traceback" not in err
    for port in demo.ports.values():
        assert processes_naming(port) == []
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))  # free again


def test_a_taken_port_is_one_clear_sentence():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        completed = subprocess.run(
            [sys.executable, "-m", "demo", "--api-port", str(port), "--web-port", str(free_port()),
             "--secrets-port", str(free_port())],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
    assert completed.returncode == 1
    assert completed.stderr.strip() == (
        f"demo: port {port} on 127.0.0.1 is taken (is another demo or server running?); "
        "choose another with --api-port PORT"
    )
