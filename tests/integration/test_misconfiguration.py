"""A broken cluster registry answers 503 saying what kind of setting is wrong; the details go to the log only.

The registry's error text names its absolute path, cluster names and the JSON parser's line and
column: useful to the operator reading the log, nothing a caller on the internet should learn.
"""
from __future__ import annotations

import io
import json
import logging

import pytest

from chalicelib import logs
from tests.conftest import DashboardFrontend

REGISTRY_BODY = (
    b"The service is not configured: its cluster registry (CLUSTERS_FILE, or the KUBECONFIG context without it) "
    b"is missing or invalid; the service log names the problem.\n"
)


@pytest.fixture
def service_log():
    """The service's log as production writes it: through the RedactingFilter that logs.configure attaches."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.ERROR)
    handler.addFilter(logs.RedactingFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    yield stream
    root.removeHandler(handler)


def _entry(cluster, **extra) -> dict:
    return {**cluster.registry_entry(), **extra}


BROKEN = {
    # what is written to the registry file (None: no file), and what the log must say about it
    "missing file": (None, ["cannot read the cluster registry", "No such file or directory"]),
    "bad JSON": (lambda cluster: json.dumps({"clusters": [_entry(cluster)]})[:-3] + ",]}",
                 ["not valid JSON", "line 1 column"]),
    "unknown field": (lambda cluster: json.dumps({"clusters": [_entry(cluster, serverName="internal.example")]}),
                      ["unknown fields ['serverName']"]),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_registry_answers_503_with_no_path_no_name_no_position(
    case, configure, secrets_client, secret_id, tmp_path, cluster_a, service_log
):
    content, logged = BROKEN[case]
    path = tmp_path / "secret-dir" / "clusters.json"
    if content is not None:
        path.parent.mkdir()
        path.write_text(content(cluster_a))
    frontend = DashboardFrontend(configure(KEY_SECRET_ID=secret_id, CLUSTERS_FILE=str(path), CSRF_ENFORCE="false"))

    for response in (frontend.post("/api/v1/login", {"token": cluster_a.login_token()}, None),
                     frontend.get("/api/v1/clusters"), frontend.get("/api/v1/csrftoken/login")):
        assert response.status_code == 503, (response.status_code, response.body)
        assert int(response.headers["Retry-After"]) > 0
        assert response.headers["Content-Type"].startswith("text/plain")
        assert response.body == REGISTRY_BODY
        for internal in (str(tmp_path), "secret-dir", "clusters.json", cluster_a.name, "serverName", "line", "column",
                         "char", "JSON", "No such file"):
            assert internal.encode() not in response.body, internal

    log = service_log.getvalue()
    assert f"misconfigured: {path}: " in log  # the operator learns which file,
    for detail in logged:  # and what is wrong with it
        assert detail in log, (detail, log)
