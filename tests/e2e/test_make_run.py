"""`make run` as README promises it: the shell's settings win, a bad one is one sentence, no restarts."""
from __future__ import annotations

import os
import signal
import subprocess

import requests

from tests.conftest import ROOT, free_port, wait_for_port


def make_run(tmp_path, **env) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen(
        ["make", "--no-print-directory", "run", f"PORT={port}"],
        cwd=ROOT,
        env={**os.environ, "KEY_FILE": str(tmp_path / "key.json"), **env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    return process, port


def test_settings_from_the_shell_win_and_the_server_starts_once(tmp_path):
    process, port = make_run(tmp_path, CSRF_ENFORCE="false", CORS_ALLOWED_ORIGINS="http://frontend.test:3000")
    try:
        wait_for_port(port, timeout=60)
        base = f"http://127.0.0.1:{port}"
        modes = requests.get(f"{base}/api/v1/login/modes", headers={"Origin": "http://frontend.test:3000"}, timeout=30)
        assert modes.headers.get("Access-Control-Allow-Origin") == "http://frontend.test:3000"
        # no X-CSRF-TOKEN: refused only if the local stage's CSRF_ENFORCE=true had beaten the shell
        login = requests.post(f"{base}/api/v1/login", json={"token": "a.b.c"}, timeout=30)
        assert login.text != "CSRF validation failed\n"
        assert (tmp_path / "key.json").exists()  # the key file was written: that used to restart the server
        requests.get(f"{base}/api/v1/login/modes", timeout=30)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert output.count("Serving on") == 1, output


def test_a_malformed_setting_stops_make_run_with_one_sentence(tmp_path):
    process, _ = make_run(tmp_path, REVIEW_INTERVAL="abc")
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "make run: REVIEW_INTERVAL must be a whole number of seconds, got 'abc'" in output
    assert "Traceback" not in output
