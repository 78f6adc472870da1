"""The access line and the metrics it carries, read the way CloudWatch Logs reads EMF."""
from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

from chalicelib import audit, logs


def series(documents: list[dict]) -> Counter:
    """(metric, dimensions) -> what CloudWatch would count: every dimension set of every directive."""
    counted: Counter = Counter()
    for document in documents:
        for directive in document.get("_aws", {}).get("CloudWatchMetrics", []):
            assert directive["Namespace"] == "DashboardAuth"
            for names in directive["Dimensions"]:
                dimensions = tuple(sorted((name, document[name]) for name in names))
                for metric in directive["Metrics"]:
                    value = document[metric["Name"]]
                    counted[metric["Name"], dimensions] += sum(value) if isinstance(value, list) else value
    return counted


def request(path: str = "/api/v1/login", user_agent: str = "curl/8.5") -> SimpleNamespace:
    return SimpleNamespace(
        method="POST", path=path, headers={}, uri_params=None,
        context={"requestId": "r-1", "identity": {"sourceIp": "198.51.100.7", "userAgent": user_agent}},
        lambda_context=SimpleNamespace(aws_request_id="f-1", function_name="dashboard-auth-APIHandler"),
    )


def run(view, user_agent: str = "curl/8.5") -> None:
    def get_response(_):
        view()
        return SimpleNamespace(status_code=200)

    audit.RequestLog()(request(user_agent=user_agent), get_response)


def test_a_login_writes_one_access_line_that_counts_its_metrics_in_both_series(service_lines):
    def login():
        audit.cluster_resolved("prod-eu")
        audit.token_review_answered("prod-eu", 12.5)
        audit.login_unavailable("prod-eu")

    run(login)

    (access,) = service_lines()
    assert (access["event"], access["outcome"], access["cluster"]) == ("request", "unavailable", "prod-eu")
    assert series([access]) == Counter({
        ("Logins", (("service", "dashboard-auth"),)): 1,
        ("Logins", (("cluster", "prod-eu"), ("outcome", "unavailable"), ("service", "dashboard-auth"))): 1,
        ("TokenReviewLatency", (("cluster", "prod-eu"), ("service", "dashboard-auth"))): 12.5,
        ("ColdStart", (("function_name", "dashboard-auth-APIHandler"), ("service", "dashboard-auth"))): 1,
    })


def test_metrics_whose_dimensions_clash_on_the_line_each_get_a_line_of_their_own_and_all_are_counted(service_lines):
    def two_failures():
        audit.cluster_resolved("prod-eu")
        audit.cluster_failure("prod-eu", "connection_refused", "refused")
        audit.cluster_failure("prod-eu", "timeout", "no answer")
        audit.cluster_failure("prod-eu", "timeout", "no answer")
        audit.login_unavailable("prod-eu")

    run(two_failures)

    written = service_lines()
    failures = Counter((line["cause"]) for line in written if line.get("event") == "cluster_failure")
    assert failures == {"connection_refused": 1, "timeout": 2}
    assert sum(line.get("event") == "request" for line in written) == 1
    counted = series(written)
    by_cause = {dims: n for (name, dims), n in counted.items() if name == "ClusterFailures" and len(dims) == 3}
    assert by_cause == {
        (("cause", "connection_refused"), ("cluster", "prod-eu"), ("service", "dashboard-auth")): 1,
        (("cause", "timeout"), ("cluster", "prod-eu"), ("service", "dashboard-auth")): 2,
    }
    assert counted["ClusterFailures", (("service", "dashboard-auth"),)] == 3
    assert counted["Logins", (("service", "dashboard-auth"),)] == 1


def test_a_user_agent_carrying_a_token_is_scrubbed_on_the_access_line(service_lines):
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"

    run(lambda: audit.cluster_resolved("prod-eu"), user_agent=f"script {token}")

    (access,) = service_lines()
    assert token not in json.dumps(access)
    assert access["user_agent"] == f"script {logs.REDACTED}"


def test_outside_an_invocation_nothing_is_counted(service_lines):
    audit.login_unavailable("prod-eu")  # the operator CLI, a script

    assert service_lines() == []
