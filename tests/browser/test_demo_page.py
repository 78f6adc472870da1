"""`make demo` in Chromium: a person opens the printed URL and logs in to either demo cluster."""
from __future__ import annotations

import os
import signal

import pytest

from tests.browser.conftest import expect_logged_in, expect_login_form, log_in
from tests.conftest import free_port
from tests.demo_run import RunningDemo, start_demo


@pytest.fixture(scope="module")
def demo():
    ports = {"api": free_port(), "web": free_port(), "secrets": free_port()}
    process, output = start_demo(ports)
    yield RunningDemo(output, ports, process)
    os.killpg(process.pid, signal.SIGINT)
    process.communicate(timeout=60)


def test_a_person_logs_in_to_either_demo_cluster_from_the_printed_url(demo, open_page):
    page = open_page()
    page.goto(demo.page)
    log_in(page, demo.token("demo-eu, ServiceAccount demo/alice"))
    expect_logged_in(page, "alice", "demo-eu")
    page.shot("demo-01-alice-on-demo-eu")

    page.get_by_role("button", name="Log out").click()
    expect_login_form(page, "You are logged out")
    log_in(page, demo.token("demo-us, ServiceAccount demo/bob"), cluster="demo-us")
    expect_logged_in(page, "bob", "demo-us")
    page.shot("demo-02-bob-on-demo-us")

    page.get_by_role("button", name="Log out").click()
    log_in(page, demo.token("not a ServiceAccount"), cluster="demo-eu")
    expect_login_form(page, "did not accept this token")
    page.shot("demo-03-a-person-token-refused")
