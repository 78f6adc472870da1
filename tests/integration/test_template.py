"""The deployed configuration's alarms, rotation-failure rule and dashboard (.chalice/merge-<stage>.json).

Checked on the template `chalice package --merge-template` really produces, for dev and prod, against
docs/observability.md (the metrics contract): namespace, metric names and dimension sets are read from
that file, so a template that drifts from it fails here, and so does a contract that changes under the
template. cfn-lint, with the cfn-lint-serverless rules, must report nothing on the packaged template, as .ci/run
checks it. Also the deployment's guard rails: log groups with retention created before anything writes to
them, an access log without headers or bodies, stage and login throttling.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ROOT / "docs" / "observability.md"
VENV_BIN = Path(sys.executable).parent
STAGES = ("dev", "prod")

# What this template chooses to alarm on among the contract's metrics (the contract itself says nothing
# about alarms). Each must still be a metric of the contract with a total ({service}-only) series.
ALARMED_TOTALS = ("ClusterFailures", "SecretsManagerErrors", "LoginRefusals")
# API Gateway answers 504 after 29 s: a latency alarm must fire before that.
API_GATEWAY_TIMEOUT_MS = 29_000
# Sample values for the pseudo parameters when the dashboard's Fn::Sub is expanded here.
REGION, ACCOUNT, STACK = "eu-west-3", "123456789012", "dashboard-auth-test"
PSEUDO = {"AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::StackName": STACK,
          "AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com"}


# ---------------------------------------------------------------------------------------- the contract
@dataclass
class Contract:
    namespace: str
    service_dimension: str
    service: str
    metrics: dict[str, dict]  # name -> {"unit": str, "dims": set[frozenset[str]], "detailed": frozenset[str]}
    api_function: str
    rotation_function: str
    rest_api: str
    api_stage: str

    def functions(self) -> tuple[str, str]:
        return self.api_function, self.rotation_function


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def parse_contract(text: str) -> Contract:
    def one(pattern: str) -> re.Match:
        match = re.search(pattern, text)
        assert match, f"docs/observability.md no longer says {pattern!r}"
        return match

    namespace = one(r'EMF namespace:\s*"([^"]+)"').group(1)
    service = one(r'carries dimension (\w+)="([^"]+)"')
    rows = [_cells(line) for line in text.splitlines() if line.lstrip().startswith("|")]
    header = [cell.lower() for cell in rows[0]]
    col = {name: next(i for i, cell in enumerate(header) if cell.startswith(name))
           for name in ("metric", "unit", "detailed", "total")}
    metrics = {}
    for row in rows[1:]:
        if set("".join(row)) <= set("-: "):  # the |---|---| line
            continue
        detailed_cell = re.sub(r"\([^)]*\)", "", row[col["detailed"]])  # drop the value lists
        detailed = frozenset(d.strip() for d in detailed_cell.split(",") if d.strip() not in ("", "-"))
        dims = set()
        if detailed:
            dims.add(detailed | {service.group(1)})
        if row[col["total"]].lower().startswith("yes"):
            dims.add(frozenset({service.group(1)}))
        assert dims, f"the contract gives metric {row[col['metric']]} no dimension set"
        metrics[row[col["metric"]]] = {"unit": row[col["unit"]], "dims": dims, "detailed": detailed}
    assert metrics, "docs/observability.md has no metrics table"
    api = one(r'API "(\w+)" \(stage name "([^"]+)"\)')
    return Contract(
        namespace=namespace, service_dimension=service.group(1), service=service.group(2), metrics=metrics,
        api_function=one(r'API function "(\w+)"').group(1),
        rotation_function=one(r'rotation function "(\w+)"').group(1),
        rest_api=api.group(1), api_stage=api.group(2),
    )


@pytest.fixture(scope="module")
def contract() -> Contract:
    return parse_contract(CONTRACT.read_text())


# ---------------------------------------------------------------------------------------- the template
@dataclass
class Packaged:
    stage: str
    path: Path
    template: dict
    resources: dict = field(init=False)

    def __post_init__(self):
        self.resources = self.template["Resources"]

    def of_type(self, kind: str) -> dict[str, dict]:
        return {name: r for name, r in self.resources.items() if r["Type"] == kind}

    def alarms(self) -> dict[str, dict]:
        return {name: r["Properties"] for name, r in self.of_type("AWS::CloudWatch::Alarm").items()}


@pytest.fixture(scope="module", params=STAGES)
def packaged(request, tmp_path_factory) -> Packaged:
    """scripts/package.py (`chalice package --stage <stage> --merge-template` of .chalice/merge-<stage>.json
    and the stage's gateway responses), once per stage, as .ci/run runs it: with --allow-placeholders, since
    the repository has no cluster registry and names example origins (tests/integration/test_package_checks.py
    shows that without the flag it is refused)."""
    stage = request.param
    out = tmp_path_factory.mktemp(f"package-{stage}") / "out"
    env = {**os.environ, "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
           "AWS_EC2_METADATA_DISABLED": "true"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "package.py"), stage, str(out), "--allow-placeholders"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    assert done.returncode == 0, f"scripts/package.py {stage} failed:\n{done.stdout}\n{done.stderr}"
    path = out / "sam.json"
    return Packaged(stage, path, json.loads(path.read_text()))


def topic_expression(packaged: Packaged) -> dict:
    """The one topic everything notifies: the AlarmTopicArn parameter, or the stack's own topic if it is empty."""
    parameter = packaged.template["Parameters"]["AlarmTopicArn"]
    assert parameter["Type"] == "String" and parameter["Default"] == ""
    topics = packaged.of_type("AWS::SNS::Topic")
    assert list(topics) == ["AlarmTopic"], "exactly one SNS topic, created only when no AlarmTopicArn is given"
    condition = topics["AlarmTopic"]["Condition"]
    assert packaged.template["Conditions"][condition] == {"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}
    return {"Fn::If": [condition, {"Ref": "AlarmTopic"}, {"Ref": "AlarmTopicArn"}]}


def alarm_metrics(props: dict) -> list[dict]:
    """Every metric an alarm reads, as {namespace, name, dims, stat}, plain or in metric math."""
    def dims(dimensions):
        return {d["Name"]: d["Value"] for d in dimensions or []}

    if "MetricName" in props:
        return [{"id": None, "namespace": props["Namespace"], "name": props["MetricName"],
                 "dims": dims(props.get("Dimensions")),
                 "stat": props.get("Statistic") or props.get("ExtendedStatistic"), "period": props["Period"]}]
    return [{"id": m["Id"], "namespace": m["MetricStat"]["Metric"]["Namespace"],
             "name": m["MetricStat"]["Metric"]["MetricName"], "dims": dims(m["MetricStat"]["Metric"].get("Dimensions")),
             "stat": m["MetricStat"]["Stat"], "period": m["MetricStat"]["Period"]}
            for m in props["Metrics"] if "MetricStat" in m]


def text_of(value) -> str:
    return value["Fn::Sub"] if isinstance(value, dict) else value


def api_dimensions(packaged: Packaged, contract: Contract) -> dict:
    """API Gateway names a REST API's metrics by the API's name (the OpenAPI title) and its stage."""
    api = packaged.resources[contract.rest_api]["Properties"]
    return {"ApiName": api["DefinitionBody"]["info"]["title"], "Stage": api["StageName"]}


# ---------------------------------------------------------------------------------------- alarms
def test_the_contract_names_what_the_template_needs(contract):
    assert contract.api_stage and contract.functions()
    for name in ALARMED_TOTALS:
        assert name in contract.metrics, f"{name} is alarmed on but no longer in docs/observability.md"
        assert frozenset({contract.service_dimension}) in contract.metrics[name]["dims"], (
            f"{name} has no total series in docs/observability.md: its alarm needs one")


def test_every_service_metric_an_alarm_reads_is_in_the_contract(packaged, contract):
    seen = 0
    for name, props in packaged.alarms().items():
        for metric in alarm_metrics(props):
            if metric["namespace"] != contract.namespace:
                assert metric["namespace"].startswith("AWS/"), f"{name}: namespace {metric['namespace']}"
                continue
            seen += 1
            spec = contract.metrics.get(metric["name"])
            assert spec, f"{name} watches {metric['name']}, which docs/observability.md does not define"
            assert frozenset(metric["dims"]) in spec["dims"], (
                f"{name}: dimensions {sorted(metric['dims'])} are not a set docs/observability.md emits "
                f"for {metric['name']} ({[sorted(d) for d in spec['dims']]})")
            assert metric["dims"][contract.service_dimension] == contract.service
            assert "Unit" not in props or props["Unit"] == spec["unit"], name
    assert seen >= len(ALARMED_TOTALS)


@pytest.mark.parametrize("metric_name", ALARMED_TOTALS)
def test_alarm_on_the_total_series(packaged, contract, metric_name):
    matching = [name for name, props in packaged.alarms().items()
                for m in alarm_metrics(props)
                if (m["namespace"], m["name"]) == (contract.namespace, metric_name)
                and m["dims"] == {contract.service_dimension: contract.service} and m["stat"] == "Sum"]
    assert len(matching) == 1, f"one alarm on the Sum of {metric_name}'s total series, found {matching}"


@pytest.mark.parametrize("metric_name", ["Errors", "Throttles"])
@pytest.mark.parametrize("function", ["api", "rotation"])
def test_alarm_on_each_functions_errors_and_throttles(packaged, contract, function, metric_name):
    logical_id = contract.api_function if function == "api" else contract.rotation_function
    assert packaged.resources[logical_id]["Type"] == "AWS::Serverless::Function"
    matching = [(name, props) for name, props in packaged.alarms().items()
                for m in alarm_metrics(props)
                if (m["namespace"], m["name"]) == ("AWS/Lambda", metric_name)
                and m["dims"] == {"FunctionName": {"Ref": logical_id}}]
    assert len(matching) == 1, f"one alarm on {logical_id}'s {metric_name}, found {[n for n, _ in matching]}"
    props = matching[0][1]
    assert props["Statistic"] == "Sum"
    assert props["ComparisonOperator"] == "GreaterThanOrEqualToThreshold" and props["Threshold"] >= 1


def test_api_5xx_rate_alarm_is_a_ratio_of_5xx_to_requests(packaged, contract):
    wanted = api_dimensions(packaged, contract)
    candidates = {name: props for name, props in packaged.alarms().items() if "Metrics" in props
                  and {m["name"] for m in alarm_metrics(props)} == {"5XXError", "Count"}}
    assert len(candidates) == 1, f"one 5xx-rate alarm, found {sorted(candidates)}"
    props = next(iter(candidates.values()))
    stats = {m["name"]: m for m in alarm_metrics(props)}
    for m in stats.values():
        assert m["namespace"] == "AWS/ApiGateway" and m["dims"] == wanted and m["stat"] == "Sum"
    assert stats["5XXError"]["period"] == stats["Count"]["period"]
    returned = [m for m in props["Metrics"] if m.get("ReturnData", True)]
    assert len(returned) == 1 and "Expression" in returned[0]
    errors, requests = stats["5XXError"]["id"], stats["Count"]["id"]
    assert re.search(rf"\b{errors}\s*/\s*{requests}\b", returned[0]["Expression"]), returned[0]["Expression"]
    assert props["ComparisonOperator"] == "GreaterThanThreshold" and 0 < props["Threshold"] < 100


def test_latency_alarm_fires_before_api_gateway_gives_up(packaged, contract):
    wanted = {("AWS/ApiGateway", "Latency"): api_dimensions(packaged, contract),
              ("AWS/Lambda", "Duration"): {"FunctionName": {"Ref": contract.api_function}}}
    latency = [props for props in packaged.alarms().values() for m in alarm_metrics(props)
               if wanted.get((m["namespace"], m["name"])) == m["dims"]]
    assert latency, "an alarm on API Gateway Latency or the API function's Duration"
    for props in latency:
        assert props["ExtendedStatistic"] == "p99"
        assert props["ComparisonOperator"] in ("GreaterThanThreshold", "GreaterThanOrEqualToThreshold")
        assert 0 < props["Threshold"] < API_GATEWAY_TIMEOUT_MS


def test_every_alarm_notifies_the_one_topic_and_explains_missing_data(packaged):
    topic = topic_expression(packaged)
    alarms = packaged.alarms()
    assert len(alarms) >= len(ALARMED_TOTALS) + 4 + 2
    wording = {"notBreaching": "not breaching", "breaching": "breaching", "ignore": "ignored",
               "missing": "missing"}
    for name, props in alarms.items():
        assert props["AlarmActions"] == [topic], name
        assert props.get("OKActions", [topic]) == [topic], name
        assert "InsufficientDataActions" not in props, name
        assert props.get("ActionsEnabled", True) is True, name
        description = text_of(props["AlarmDescription"])
        assert "Missing data" in description, f"{name}: AlarmDescription must say how missing data is treated"
        chosen = props["TreatMissingData"]
        assert wording[chosen] in description.split("Missing data", 1)[1], (
            f"{name}: TreatMissingData is {chosen}, its description says otherwise")


def test_the_topic_can_be_given_or_created_with_an_email_subscription(packaged):
    template = packaged.template
    topic = packaged.resources["AlarmTopic"]
    assert topic["Condition"] == "CreateAlarmTopic"
    subscriptions = packaged.of_type("AWS::SNS::Subscription")
    assert len(subscriptions) == 1
    subscription = next(iter(subscriptions.values()))
    assert subscription["Properties"] == {"TopicArn": {"Ref": "AlarmTopic"}, "Protocol": "email",
                                          "Endpoint": {"Ref": "AlarmEmail"}}
    assert template["Parameters"]["AlarmEmail"]["Default"] == ""
    condition = template["Conditions"][subscription["Condition"]]
    assert {"Condition": "CreateAlarmTopic"} in condition["Fn::And"]
    assert {"Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmEmail"}, ""]}]} in condition["Fn::And"]


# ---------------------------------------------------------------------------------------- rotation failure
# The key secret: the stack's own (SessionKeySecret) unless the KeySecretArn parameter names one.
KEY_SECRET = {"Fn::If": ["CreateKeySecret", {"Ref": "SessionKeySecret"}, {"Ref": "KeySecretArn"}]}

def rotation_failed_rule(packaged: Packaged) -> tuple[str, dict]:
    rules = {name: r["Properties"] for name, r in packaged.of_type("AWS::Events::Rule").items()
             if "RotationFailed" in r["Properties"].get("EventPattern", {}).get("detail", {}).get("eventName", [])}
    assert len(rules) == 1, f"one rule on RotationFailed, found {sorted(rules)}"
    return next(iter(rules.items()))


def test_rotation_failed_rule_matches_the_event_of_this_stacks_secret_and_notifies_the_topic(packaged):
    name, rule = rotation_failed_rule(packaged)
    assert rule.get("State", "ENABLED") == "ENABLED" and "EventBusName" not in rule  # the default bus
    pattern = rule["EventPattern"]
    assert pattern["source"] == ["aws.secretsmanager"]
    assert pattern["detail-type"] == ["AWS Service Event via CloudTrail"]
    assert pattern["detail"]["eventName"] == ["RotationFailed"]
    secrets = packaged.of_type("AWS::SecretsManager::Secret")
    assert list(secrets) == ["SessionKeySecret"]
    assert pattern["detail"]["additionalEventData"] == {"SecretId": [KEY_SECRET]}
    assert [t["Arn"] for t in rule["Targets"]] == [topic_expression(packaged)]

    policy = packaged.resources["AlarmTopicPolicy"]
    assert policy["Condition"] == "CreateAlarmTopic"
    assert policy["Properties"]["Topics"] == [{"Ref": "AlarmTopic"}]
    by_service = {s["Principal"]["Service"]: s for s in policy["Properties"]["PolicyDocument"]["Statement"]}
    events = by_service["events.amazonaws.com"]
    assert events["Effect"] == "Allow" and events["Action"] == "sns:Publish"
    assert events["Resource"] == {"Ref": "AlarmTopic"}
    assert events["Condition"] == {"ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": [name, "Arn"]}}}
    # the policy replaces the topic's default one: the alarms must still be let in
    cloudwatch = by_service["cloudwatch.amazonaws.com"]
    assert cloudwatch["Effect"] == "Allow" and cloudwatch["Action"] == "sns:Publish"
    assert cloudwatch["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}


def test_rotation_failed_pattern_selects_only_a_failed_rotation_of_this_secret(packaged):
    """The rule's pattern, run by EventBridge's emulation in moto against Secrets Manager's event shape."""
    import boto3
    from moto import mock_aws

    _, rule = rotation_failed_rule(packaged)
    secret_arn = f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:dashboard-auth/{packaged.stage}/session-key-AbC123"
    pattern = json.dumps(rule["EventPattern"]).replace(json.dumps(KEY_SECRET), json.dumps(secret_arn))
    assert secret_arn in pattern

    def event(name: str, secret: str, detail_type: str = "AWS Service Event via CloudTrail") -> dict:
        # as Secrets Manager sends it: a CloudTrail service event whose additionalEventData names the secret
        detail = {"eventVersion": "1.08", "userIdentity": {"accountId": ACCOUNT, "invokedBy": "secretsmanager.amazonaws.com"},
                  "eventSource": "secretsmanager.amazonaws.com", "eventName": name, "awsRegion": "us-east-1",
                  "errorMessage": "Error when executing lambda during createSecret step",
                  "requestParameters": None, "responseElements": None,
                  "additionalEventData": {"SecretId": secret}, "eventType": "AwsServiceEvent"}
        return {"Source": "aws.secretsmanager", "DetailType": detail_type, "Detail": json.dumps(detail)}

    with mock_aws():
        events, sqs = boto3.client("events", region_name="us-east-1"), boto3.client("sqs", region_name="us-east-1")
        queue = sqs.create_queue(QueueName="alarm-topic-stand-in")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        events.put_rule(Name="rotation-failed", EventPattern=pattern)
        events.put_targets(Rule="rotation-failed", Targets=[{"Id": "topic", "Arn": queue_arn}])
        entries = [event("RotationFailed", secret_arn), event("RotationSucceeded", secret_arn),
                   event("RotationFailed", secret_arn.replace(packaged.stage, "other")),
                   event("RotationFailed", secret_arn, "AWS API Call via CloudTrail")]
        assert events.put_events(Entries=entries)["FailedEntryCount"] == 0
        received = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
    delivered = [json.loads(m["Body"])["detail"] for m in received]
    assert [(d["eventName"], d["additionalEventData"]["SecretId"]) for d in delivered] == [("RotationFailed", secret_arn)]


# ---------------------------------------------------------------------------------------- dashboard
def expand_sub(template: dict, text: str) -> str:
    """Fn::Sub as CloudFormation would do it, with sample values; an unknown name fails."""
    parameters, resources = template.get("Parameters", {}), template["Resources"]

    def value(match: re.Match) -> str:
        name = match.group(1)
        if name in PSEUDO:
            return PSEUDO[name]
        if name in parameters:
            return str(parameters[name]["Default"])
        logical_id, _, attribute = name.partition(".")
        assert logical_id in resources, f"${{{name}}} names nothing in the template"
        if attribute:
            assert attribute == "Arn", name
            return f"arn:aws:{resources[logical_id]['Type'].split('::')[1].lower()}:{REGION}:{ACCOUNT}:{logical_id}"
        return f"{STACK}-{logical_id}-NAME"

    return re.sub(r"\$\{([^}!]+)\}", value, text)


@pytest.fixture
def dashboard(packaged) -> dict:
    dashboards = packaged.of_type("AWS::CloudWatch::Dashboard")
    assert len(dashboards) == 1
    body = next(iter(dashboards.values()))["Properties"]["DashboardBody"]
    assert set(body) == {"Fn::Sub"} and isinstance(body["Fn::Sub"], str), "DashboardBody is one Fn::Sub string"
    return json.loads(expand_sub(packaged.template, body["Fn::Sub"]))


def dashboard_metrics(dashboard: dict) -> list[dict]:
    """Every metric a widget shows, as {namespace, name, dims}: explicit rows, and SEARCH expressions."""
    found = []
    for widget in dashboard["widgets"]:
        for row in widget["properties"].get("metrics", []):
            assert isinstance(row, list), f"a metrics entry is an array: {row}"
            strings = [item for item in row if isinstance(item, str)]
            assert "." not in strings and "..." not in strings, "no shorthand rows: each names its metric"
            if strings:
                namespace, name, *pairs = strings
                assert len(pairs) % 2 == 0, row
                found.append({"namespace": namespace, "name": name, "search": False,
                              "dims": dict(zip(pairs[::2], pairs[1::2]))})
            for options in (item for item in row if isinstance(item, dict)):
                for search in re.finditer(r"SEARCH\(\s*'\{([^}]*)\}([^']*)'", options.get("expression", "")):
                    namespace, *dims = [part.strip() for part in search.group(1).split(",")]
                    name = re.search(r'MetricName="([^"]+)"', search.group(2))
                    assert name, f"SEARCH without an exact MetricName: {search.group(0)}"
                    values = dict(re.findall(r'(\w+)="([^"]*)"', search.group(2)))
                    values.pop("MetricName")
                    assert set(values) <= set(dims), search.group(0)
                    found.append({"namespace": namespace, "name": name.group(1), "search": True,
                                  "dims": {d: values.get(d) for d in dims}})
    return found


def test_dashboard_body_is_json_in_this_region(dashboard):
    widgets = dashboard["widgets"]
    assert widgets
    for widget in widgets:
        assert {"type", "x", "y", "width", "height", "properties"} <= set(widget)
        assert widget["x"] + widget["width"] <= 24
        if widget["type"] == "metric":
            assert widget["properties"]["region"] == REGION
            assert widget["properties"]["metrics"] and widget["properties"]["title"]


def test_dashboard_shows_every_contract_metric_with_its_contract_dimensions(dashboard, contract):
    shown = [m for m in dashboard_metrics(dashboard) if m["namespace"] == contract.namespace]
    for m in shown:
        spec = contract.metrics.get(m["name"])
        assert spec, f"the dashboard shows {m['name']}, which docs/observability.md does not define"
        assert frozenset(m["dims"]) in spec["dims"], (
            f"{m['name']} shown with dimensions {sorted(m['dims'])}, not a set docs/observability.md emits "
            f"({[sorted(d) for d in spec['dims']]})")
        assert m["dims"][contract.service_dimension] == contract.service, m
    for name, spec in contract.metrics.items():
        sets = {frozenset(m["dims"]) for m in shown if m["name"] == name}
        assert sets, f"the dashboard does not show {name}"
        # "by outcome", "by reason", "by cause", "by cluster", "by function": the detailed series
        if spec["detailed"]:
            assert spec["detailed"] | {contract.service_dimension} in sets, (
                f"the dashboard does not show {name} by {', '.join(sorted(spec['detailed']))}")


def test_dashboard_cold_starts_are_those_of_this_stacks_functions(dashboard, packaged, contract):
    names = {expand_sub(packaged.template, "${%s}" % f) for f in contract.functions()}
    shown = {m["dims"].get("function_name") for m in dashboard_metrics(dashboard)
             if m["namespace"] == contract.namespace and "function_name" in m["dims"]}
    assert shown == names


def test_dashboard_shows_the_lambda_and_api_gateway_basics(dashboard, packaged, contract):
    shown = dashboard_metrics(dashboard)
    for function in contract.functions():
        function_name = expand_sub(packaged.template, "${%s}" % function)
        names = {m["name"] for m in shown if m["namespace"] == "AWS/Lambda" and m["dims"] == {"FunctionName": function_name}}
        assert {"Invocations", "Errors", "Throttles", "Duration"} <= names, (function, names)
    api = api_dimensions(packaged, contract)
    names = {m["name"] for m in shown if m["namespace"] == "AWS/ApiGateway" and m["dims"] == api}
    assert {"Count", "4XXError", "5XXError", "Latency"} <= names, names
    for m in shown:
        if m["namespace"] == "AWS/Lambda":
            assert set(m["dims"]) == {"FunctionName"}, m
        if m["namespace"] == "AWS/ApiGateway":
            assert m["dims"] == api, m


def test_dashboard_lists_every_alarm(dashboard, packaged):
    listed = [arn for w in dashboard["widgets"] if w["type"] == "alarm" for arn in w["properties"]["alarms"]]
    assert sorted(listed) == sorted(expand_sub(packaged.template, "${%s.Arn}" % a) for a in packaged.alarms())


# ---------------------------------------------------------------------------------------- cfn-lint
# .ci/run lints with these arguments: cfn-lint's own rules plus the serverless rules (cfn-lint-serverless).
CFN_LINT_ARGS = ("--append-rules", "cfn_lint_serverless.rules")


def cfn_lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "cfn-lint"), *CFN_LINT_ARGS, "--", str(path)], capture_output=True, text=True)


def test_cfn_lint_with_the_serverless_rules_reports_nothing(packaged):
    done = cfn_lint(packaged.path)
    assert (done.returncode, done.stdout.strip(), done.stderr.strip()) == (0, "", ""), done.stdout + done.stderr


def test_the_serverless_rules_are_really_applied(packaged, tmp_path):
    """Without the access log, the log groups and the throttling, the serverless rules speak up."""
    template = json.loads(packaged.path.read_text())
    api = template["Resources"][RESTAPI]["Properties"]
    del api["AccessLogSetting"], api["MethodSettings"]
    template["Resources"] = {name: r for name, r in template["Resources"].items() if r["Type"] != "AWS::Logs::LogGroup"}
    template["Resources"][RESTAPI].pop("DependsOn")
    template["Resources"]["SessionKeyRotationSchedule"]["DependsOn"] = ["RotateKeyInvokePermission"]
    broken = tmp_path / "sam.json"
    broken.write_text(json.dumps(template))
    found = set(re.findall(r"^([EW]S\d{4}) ", cfn_lint(broken).stdout, re.M))
    assert {"ES2000", "ES2003", "WS1004"} <= found, found


def test_every_ignored_rule_is_ignored_on_one_resource_with_a_written_reason(packaged):
    assert "cfn-lint" not in packaged.template.get("Metadata", {}), "no template-wide ignores"
    ignored = 0
    for name, resource in packaged.resources.items():
        metadata = resource.get("Metadata", {})
        rules = metadata.get("cfn-lint", {}).get("config", {}).get("ignore_checks", [])
        reasons = metadata.get("cfn-lint-reason", {})
        assert sorted(rules) == sorted(reasons), f"{name}: each ignored rule, and only those, has a reason"
        for rule in rules:
            ignored += 1
            assert len(reasons[rule].split()) >= 12 and reasons[rule].endswith("."), f"{name} {rule}: {reasons[rule]!r}"
    assert ignored <= 5, "ignoring is the exception: fix what cfn-lint finds"


# ---------------------------------------------------------------------------------------- logs
RESTAPI = "RestAPI"
RETENTION_PARAMETER = "LogRetentionInDays"
# $context variables that carry no request header and no body: what the access log may hold. Not here on
# purpose: identity.userAgent (the User-Agent header), domainName (the Host header), identity.caller/user and
# authorizer.* (credentials' owners), requestOverride/responseOverride, anything from $input or $method.
SAFE_CONTEXT = {
    "requestId", "extendedRequestId", "requestTime", "requestTimeEpoch", "httpMethod", "resourcePath", "path",
    "protocol", "status", "responseLength", "responseLatency", "integration.status", "integration.latency",
    "integration.error", "integrationStatus", "integrationLatency", "error.responseType", "error.message",
    "identity.sourceIp", "wafResponseCode", "stage", "apiId",
}


def log_groups(packaged: Packaged) -> dict[str, dict]:
    return {name: r["Properties"] for name, r in packaged.of_type("AWS::Logs::LogGroup").items()}


def test_log_retention_is_a_parameter_with_a_valid_default(packaged):
    parameter = packaged.template["Parameters"][RETENTION_PARAMETER]
    assert parameter["Type"] == "Number" and parameter["Default"] in parameter["AllowedValues"]
    assert 30 <= parameter["Default"] <= 3653
    groups = log_groups(packaged)
    assert len(groups) == 3, sorted(groups)
    for name, props in groups.items():
        assert props["RetentionInDays"] == {"Ref": RETENTION_PARAMETER}, name


@pytest.mark.parametrize("function", ["api", "rotation"])
def test_each_function_has_its_log_group_created_before_anything_invokes_it(packaged, contract, function):
    logical_id = contract.api_function if function == "api" else contract.rotation_function
    assert "FunctionName" not in packaged.resources[logical_id]["Properties"], (
        "CloudFormation names the function; its log group follows that name through Ref")
    # Lambda writes to /aws/lambda/<function name>; Ref of a function is its name
    wanted = {"Fn::Sub": "/aws/lambda/${%s}" % logical_id}
    matching = [name for name, props in log_groups(packaged).items() if props["LogGroupName"] == wanted]
    assert len(matching) == 1, f"one log group named {wanted}, found {matching}"
    group = matching[0]
    # A log group Lambda had to create itself would make the stack's one fail ("already exists"): what
    # invokes the function waits for the group. The API stage invokes APIHandler; the rotation schedule
    # invokes RotateKey (at once on creation, were RotateImmediatelyOnUpdate not false).
    invoker = RESTAPI if function == "api" else "SessionKeyRotationSchedule"
    assert group in packaged.resources[invoker]["DependsOn"], f"{invoker} must depend on {group}"


def access_log(packaged: Packaged) -> tuple[dict, dict]:
    setting = packaged.resources[RESTAPI]["Properties"]["AccessLogSetting"]
    return setting, json.loads(setting["Format"])


def test_access_log_goes_to_the_stacks_log_group(packaged):
    setting, _ = access_log(packaged)
    target = setting["DestinationArn"]["Fn::GetAtt"]
    assert target[1] == "Arn" and target[0] in log_groups(packaged)
    assert not target[0].startswith(("ApiHandler", "RotateKey"))


def test_access_log_is_json_of_context_variables_without_headers_or_bodies(packaged):
    setting, fields = access_log(packaged)
    assert fields, "a JSON object, one field per variable"
    for key, value in fields.items():
        match = re.fullmatch(r"\$context\.([A-Za-z.]+)", value)
        assert match, f"{key}: {value!r} is not exactly one $context variable"
        assert match.group(1) in SAFE_CONTEXT, f"{key}: $context.{match.group(1)} may carry a header or body"
    text = setting["Format"].lower()
    for forbidden in ("$input", "$method", "header", "useragent", "domainname", "authorizer", "override", "body"):
        assert forbidden not in text, forbidden
    # what a platform team needs to tell a throttled or refused request from a served one
    assert {"$context.requestId", "$context.status", "$context.error.responseType", "$context.identity.sourceIp",
            "$context.resourcePath", "$context.httpMethod"} <= set(fields.values())


# ---------------------------------------------------------------------------------------- throttling
def decoded(resource_path: str) -> str:
    """MethodSettings' ResourcePath: "/" then the resource's path with each "/" written "~1"."""
    assert resource_path.startswith("/")
    return resource_path[1:].replace("~1", "/")


def test_stage_throttling_with_a_tighter_limit_on_each_login_route(packaged):
    parameters = packaged.template["Parameters"]
    settings = packaged.resources[RESTAPI]["Properties"]["MethodSettings"]
    default = [s for s in settings if (s["ResourcePath"], s["HttpMethod"]) == ("/*", "*")]
    assert len(default) == 1
    assert default[0]["ThrottlingRateLimit"] == {"Ref": "ThrottlingRateLimit"}
    assert default[0]["ThrottlingBurstLimit"] == {"Ref": "ThrottlingBurstLimit"}
    paths = packaged.resources[RESTAPI]["Properties"]["DefinitionBody"]["paths"]
    login_paths = {p for p in paths if p.endswith("/api/v1/login")}
    assert login_paths == {"/api/v1/login", "/clusters/{cluster}/api/v1/login"}
    login = {decoded(s["ResourcePath"]): s for s in settings if s["ResourcePath"] != "/*"}
    assert set(login) == login_paths, sorted(login)
    for path, s in login.items():
        assert s["HttpMethod"] == "POST" and "post" in paths[path]
        assert s["ResourcePath"].startswith("/~1") and "/" not in s["ResourcePath"][1:], "slashes encoded as ~1"
        assert s["ThrottlingRateLimit"] == {"Ref": "LoginThrottlingRateLimit"}
        assert s["ThrottlingBurstLimit"] == {"Ref": "LoginThrottlingBurstLimit"}
    for kind in ("Rate", "Burst"):
        stage, tight = parameters[f"Throttling{kind}Limit"], parameters[f"LoginThrottling{kind}Limit"]
        assert stage["Type"] == tight["Type"] == "Number" and stage["MinValue"] >= 1 and tight["MinValue"] >= 1
        assert 1 <= tight["Default"] < stage["Default"], kind
    assert parameters["ThrottlingBurstLimit"]["Default"] >= parameters["ThrottlingRateLimit"]["Default"]


# ---------------------------------------------------------------------------------------- API Gateway's own answers
def stage_origins(packaged: Packaged, contract: Contract) -> list[str]:
    """The origins a stack gets unless told otherwise: the default of its CorsAllowedOrigins parameter."""
    default = packaged.template["Parameters"]["CorsAllowedOrigins"]["Default"]
    return [o for o in default.split(",") if o]


NO_VALUE = object()


def evaluate(node, parameters: dict, conditions: dict):
    """The few intrinsic functions these headers use, resolved as CloudFormation would for `parameters`."""
    def go(value):
        return evaluate(value, parameters, conditions)

    if not isinstance(node, dict):
        return [go(v) for v in node] if isinstance(node, list) else node
    (function, argument), = node.items()
    if function == "Ref":
        return NO_VALUE if argument == "AWS::NoValue" else parameters[argument]
    if function == "Condition":
        return go(conditions[argument])
    if function == "Fn::If":
        condition, then, otherwise = argument
        return go(then) if go(conditions[condition]) else go(otherwise)
    if function == "Fn::Sub":
        return re.sub(r"\$\{(\w+)\}", lambda m: parameters[m[1]], argument)
    if function == "Fn::Join":
        return argument[0].join(go(argument[1]))
    if function == "Fn::Split":
        return go(argument[1]).split(argument[0])
    if function == "Fn::Equals":
        return go(argument[0]) == go(argument[1])
    if function == "Fn::Not":
        return not go(argument[0])
    if function == "Fn::And":
        return all(go(part) for part in argument)
    raise AssertionError(f"not expected here: {function}")


def gateway_headers(packaged: Packaged, origins: str) -> dict[str, dict[str, str]]:
    """Each gateway response's headers in a stack deployed with CorsAllowedOrigins=`origins`."""
    parameters = {"CorsAllowedOrigins": origins}
    responses = packaged.resources[RESTAPI]["Properties"]["GatewayResponses"]
    resolved = {}
    for kind, response in responses.items():
        headers = {name: evaluate(value, parameters, packaged.template["Conditions"])
                   for name, value in response["ResponseParameters"]["Headers"].items()}
        resolved[kind] = {name: value for name, value in headers.items() if value is not NO_VALUE}
    return resolved


def test_the_origins_are_a_parameter_the_function_reads(packaged, contract):
    parameter = packaged.template["Parameters"]["CorsAllowedOrigins"]
    assert packaged.resources[contract.api_function]["Properties"]["Environment"]["Variables"][
        "CORS_ALLOWED_ORIGINS"] == {"Ref": "CorsAllowedOrigins"}
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())["stages"][packaged.stage]
    assert parameter["Default"] == config["environment_variables"]["CORS_ALLOWED_ORIGINS"]
    pattern = re.compile(parameter["AllowedPattern"])
    for good in ("", "https://a.corp.io", "https://a.corp.io,http://localhost:8080"):
        assert pattern.fullmatch(good), good
    for bad in ("*", "https://a.corp.io/", "https://a.corp.io, https://b.corp.io", "ftp://a.corp.io"):
        assert not pattern.fullmatch(bad), bad


def test_gateway_responses_carry_cors_headers_that_follow_the_stages_origins(packaged, contract):
    """A 429 (throttled), a WAF block or a 504 comes from API Gateway, not the function: with one allowed
    origin it names that origin, as the function would; with several it can name none of them (API Gateway
    cannot echo an Origin only when it is on a list), and never "*" nor the caller's Origin."""
    responses = packaged.resources[RESTAPI]["Properties"]["GatewayResponses"]
    assert set(responses) == {"DEFAULT_4XX", "DEFAULT_5XX"}
    for kind, response in responses.items():
        # the body API Gateway writes by default, kept: a frontend reads {"message": "Too Many Requests"}
        assert response["ResponseTemplates"] == {"application/json": '{"message":$context.error.messageString}'}
    origins = ",".join(stage_origins(packaged, contract))
    for kind, headers in gateway_headers(packaged, origins).items():
        for value in headers.values():
            assert value.startswith("'") and value.endswith("'"), f"{kind}: {value} must be a static value"
            assert "*" not in value and "method.request" not in value, f"{kind}: {value}"
    # the repository's stages show both cases
    assert len(stage_origins(packaged, contract)) == {"dev": 2, "prod": 1}[packaged.stage]


@pytest.mark.parametrize("origins, expected", [
    ("", {}),
    ("https://a.corp.io", {"Vary": "'Origin'", "Access-Control-Allow-Origin": "'https://a.corp.io'",
                           "Access-Control-Expose-Headers": "'Retry-After'"}),
    ("https://a.corp.io,https://b.corp.io", {"Vary": "'Origin'"}),
])
def test_gateway_response_headers_for_none_one_and_several_origins(packaged, origins, expected):
    for kind, headers in gateway_headers(packaged, origins).items():
        assert headers == expected, kind


# ---------------------------------------------------------------------------------------- timeout and endpoint
def test_api_function_gives_up_well_before_api_gateway(packaged, contract, dashboard):
    timeout = packaged.resources[contract.api_function]["Properties"]["Timeout"]
    assert timeout <= 25, "at most 25 s: API Gateway answers 504 after 29 s, the function must answer first"
    for name in ("ApiLatencyAlarm", "ApiHandlerErrorsAlarm"):
        description = text_of(packaged.alarms()[name]["AlarmDescription"])
        assert f"{timeout} s" in description and not re.search(r"\b2[6-8] s\b", description), name
    annotations = [a for w in dashboard["widgets"]
                   for a in w["properties"].get("annotations", {}).get("horizontal", [])
                   if a.get("label") == "API function timeout"]
    assert [a["value"] for a in annotations] == [timeout * 1000]


def test_endpoint_is_regional(packaged):
    assert packaged.resources[RESTAPI]["Properties"]["EndpointConfiguration"] == "REGIONAL"


def test_custom_domain_and_disabling_execute_api_are_optional_parameters(packaged):
    template = packaged.template
    parameters, conditions = template["Parameters"], template["Conditions"]
    assert parameters["CustomDomainName"]["Default"] == "" and parameters["CertificateArn"]["Default"] == ""
    assert parameters["DisableExecuteApiEndpoint"]["Default"] == "false"
    assert conditions["HasCustomDomain"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "CustomDomainName"}, ""]}]}
    domain = packaged.resources["ApiCustomDomain"]
    assert domain["Type"] == "AWS::ApiGateway::DomainName" and domain["Condition"] == "HasCustomDomain"
    assert domain["Properties"]["EndpointConfiguration"] == {"Types": ["REGIONAL"]}
    assert domain["Properties"]["RegionalCertificateArn"] == {"Ref": "CertificateArn"}
    assert domain["Properties"]["SecurityPolicy"] == "TLS_1_2"
    mapping = packaged.resources["ApiCustomDomainMapping"]
    assert mapping["Condition"] == "HasCustomDomain"
    # no BasePath: the domain's root is the stage, so https://<domain>/api/v1/login as the frontend calls it
    assert mapping["Properties"] == {"DomainName": {"Ref": "ApiCustomDomain"}, "RestApiId": {"Ref": RESTAPI},
                                     "Stage": {"Ref": f"{RESTAPI}.Stage"}}
    # execute-api is disabled only when asked and only with a custom domain: otherwise nothing could reach the API
    disable = packaged.resources[RESTAPI]["Properties"]["DisableExecuteApiEndpoint"]
    condition = disable["Fn::If"][0]
    assert disable == {"Fn::If": [condition, True, False]}
    assert {"Condition": "HasCustomDomain"} in conditions[condition]["Fn::And"]
    assert {"Fn::Equals": [{"Ref": "DisableExecuteApiEndpoint"}, "true"]} in conditions[condition]["Fn::And"]
    for output in ("CustomDomainTarget", "CustomDomainHostedZoneId"):
        assert template["Outputs"][output]["Condition"] == "HasCustomDomain"


# ---------------------------------------------------------------------------------------- concurrency and WAF
def test_both_functions_have_reserved_concurrency(packaged, contract):
    api = packaged.resources[contract.api_function]["Properties"]["ReservedConcurrentExecutions"]
    rotation = packaged.resources[contract.rotation_function]["Properties"]["ReservedConcurrentExecutions"]
    # the API's ceiling: a flood (or many hung clusters) cannot take the account's whole concurrency, and
    # the rotation function keeps its own small share whatever the API is doing
    assert 1 <= rotation < api <= 100, (api, rotation)
    # the stage's steady rate is reachable: at the default rate, a request taking under a second fits
    assert api >= packaged.template["Parameters"]["ThrottlingRateLimit"]["Default"]


def test_web_acl_is_optional_with_a_per_ip_rate_rule_and_a_body_size_rule(packaged):
    template = packaged.template
    parameter = template["Parameters"]["WebAcl"]
    assert parameter["Default"] == "none" and sorted(parameter["AllowedValues"]) == ["create", "none"]
    condition = template["Conditions"]["CreateWebAcl"]
    assert condition == {"Fn::Equals": [{"Ref": "WebAcl"}, "create"]}
    acls = packaged.of_type("AWS::WAFv2::WebACL")
    assert list(acls) == ["ApiWebAcl"]
    acl = acls["ApiWebAcl"]
    assert acl["Condition"] == "CreateWebAcl"
    props = acl["Properties"]
    assert props["Scope"] == "REGIONAL" and props["DefaultAction"] == {"Allow": {}}
    rules = {r["Name"]: r for r in props["Rules"]}
    assert len({r["Priority"] for r in rules.values()}) == len(rules)
    rate = [r for r in rules.values() if "RateBasedStatement" in r["Statement"]]
    assert len(rate) == 1 and rate[0]["Action"] == {"Block": {}}
    statement = rate[0]["Statement"]["RateBasedStatement"]
    assert statement["AggregateKeyType"] == "IP" and statement["Limit"] == {"Ref": "WafRequestsPerIp"}
    assert template["Parameters"]["WafRequestsPerIp"]["MinValue"] >= 10
    size = [r for r in rules.values() if "SizeConstraintStatement" in r["Statement"]]
    assert len(size) == 1 and size[0]["Action"] == {"Block": {}}
    statement = size[0]["Statement"]["SizeConstraintStatement"]
    # the service's own limit (chalicelib.dashboard.MAX_BODY_BYTES, README "Errors": 413 over 64 KiB);
    # WAF inspects 64 KiB of an API Gateway body only when told, and a larger body is then "oversize": MATCH
    assert statement["ComparisonOperator"] == "GT" and statement["Size"] == 64 * 1024
    assert statement["FieldToMatch"] == {"Body": {"OversizeHandling": "MATCH"}}
    assert props["AssociationConfig"]["RequestBody"]["API_GATEWAY"]["DefaultSizeInspectionLimit"] == "KB_64"
    associations = packaged.of_type("AWS::WAFv2::WebACLAssociation")
    assert list(associations) == ["ApiWebAclAssociation"]
    association = associations["ApiWebAclAssociation"]
    assert association["Condition"] == "CreateWebAcl"
    assert association["Properties"]["WebACLArn"] == {"Fn::GetAtt": ["ApiWebAcl", "Arn"]}
    arn, values = association["Properties"]["ResourceArn"]["Fn::Sub"]
    assert arn == "arn:${AWS::Partition}:apigateway:${AWS::Region}::/restapis/${Api}/stages/${Stage}"
    assert values == {"Api": {"Ref": RESTAPI}, "Stage": {"Ref": f"{RESTAPI}.Stage"}}


# ---------------------------------------------------------------------------------------- key secret and IAM
WRITE_KEY_ACTIONS = {"secretsmanager:CreateSecret", "secretsmanager:PutSecretValue",
                     "secretsmanager:UpdateSecretVersionStage"}


def test_key_secret_is_the_stacks_own_or_passed_in_and_the_stack_never_rotates_it(packaged, contract):
    template = packaged.template
    assert template["Parameters"]["KeySecretArn"]["Default"] == ""
    assert template["Conditions"]["CreateKeySecret"] == {"Fn::Equals": [{"Ref": "KeySecretArn"}, ""]}
    secret = packaged.resources["SessionKeySecret"]
    assert secret["Condition"] == "CreateKeySecret"
    assert secret["DeletionPolicy"] == secret["UpdateReplacePolicy"] == "Retain"
    assert secret["Properties"]["Name"] == f"dashboard-auth/{packaged.stage}/session-key"
    for function in contract.functions():
        assert packaged.resources[function]["Properties"]["Environment"]["Variables"]["KEY_SECRET_ID"] == KEY_SECRET
    schedule = packaged.resources["SessionKeyRotationSchedule"]["Properties"]
    assert schedule["SecretId"] == KEY_SECRET
    # CloudFormation would otherwise rotate at once on every create and on each change of the schedule
    assert schedule["RotateImmediatelyOnUpdate"] is False
    assert template["Outputs"]["KeySecretArn"]["Value"] == KEY_SECRET


def statements(document: dict) -> list[dict]:
    """A policy's statements that are always there; a conditional one (Fn::If: the optional KMS grants)
    is left to its own test."""
    found = document["Statement"]
    return [s for s in (found if isinstance(found, list) else [found]) if "Fn::If" not in s]


def conditional_statements(packaged, role: str) -> list[list]:
    """The [condition, statement, otherwise] of each Fn::If statement of a role's inline policies."""
    return [s["Fn::If"] for p in packaged.resources[role]["Properties"]["Policies"]
            for s in as_list(p["PolicyDocument"]["Statement"]) if "Fn::If" in s]


def role_statements(packaged: Packaged, role: str) -> list[dict]:
    inline = [s for p in packaged.resources[role]["Properties"]["Policies"] for s in statements(p["PolicyDocument"])]
    attached = [s for name, r in packaged.of_type("AWS::IAM::Policy").items() if {"Ref": role} in r["Properties"]["Roles"]
                for s in statements(r["Properties"]["PolicyDocument"])]
    return inline + attached


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def test_no_iam_policy_names_a_partition_region_or_account_literally_nor_any_resource(packaged):
    policies = [r["Properties"]["PolicyDocument"] for r in packaged.of_type("AWS::IAM::Policy").values()]
    policies += [p["PolicyDocument"] for r in packaged.of_type("AWS::IAM::Role").values()
                 for p in r["Properties"].get("Policies", [])]
    assert policies
    for document in policies:
        for statement in statements(document):
            for resource in as_list(statement["Resource"]):
                text = json.dumps(resource)
                assert resource != "*" and '"arn:aws:' not in text and "arn:aws:" not in text, text
                for literal in re.findall(r"arn:[^\"]*", text):
                    assert literal.startswith("arn:${AWS::Partition}:"), literal
                    plain = literal.replace("${AWS::Partition}", "P").replace("${AWS::Region}", "R")
                    service, region, account = plain.replace("${AWS::AccountId}", "A").split(":")[2:5]
                    assert (region, account) == ("R", "A"), literal


@pytest.mark.parametrize("function", ["api", "rotation"])
def test_each_function_writes_only_its_own_log_group(packaged, contract, function):
    logical_id = contract.api_function if function == "api" else contract.rotation_function
    role = packaged.resources[logical_id]["Properties"]["Role"]["Fn::GetAtt"][0]
    group = next(name for name, props in log_groups(packaged).items()
                 if props["LogGroupName"] == {"Fn::Sub": "/aws/lambda/${%s}" % logical_id})
    logs = [s for s in role_statements(packaged, role) if any(a.startswith("logs:") for a in as_list(s["Action"]))]
    assert len(logs) == 1, logs
    assert sorted(as_list(logs[0]["Action"])) == ["logs:CreateLogStream", "logs:PutLogEvents"], (
        "no logs:CreateLogGroup: the stack creates the group")
    assert logs[0]["Resource"] == {"Fn::GetAtt": [group, "Arn"]}  # the group's ARN ends in :*, its streams
    policy = next(name for name, r in packaged.of_type("AWS::IAM::Policy").items()
                  if {"Ref": role} in r["Properties"]["Roles"])
    invoker = RESTAPI if function == "api" else "SessionKeyRotationSchedule"
    assert policy in packaged.resources[invoker]["DependsOn"], f"{invoker} waits until the function may log"


def test_only_the_rotation_function_may_write_the_key_secret(packaged, contract):
    by_function = {}
    for function in contract.functions():
        role = packaged.resources[function]["Properties"]["Role"]["Fn::GetAtt"][0]
        by_function[function] = {a for s in role_statements(packaged, role) if KEY_SECRET in as_list(s["Resource"])
                                 for a in as_list(s["Action"])}
    assert by_function[contract.api_function] == {"secretsmanager:GetSecretValue", "secretsmanager:ListSecretVersionIds"}
    assert by_function[contract.rotation_function] == {
        "secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue",
        "secretsmanager:UpdateSecretVersionStage"}
    for function in contract.functions():
        role = packaged.resources[function]["Properties"]["Role"]["Fn::GetAtt"][0]
        for s in role_statements(packaged, role):
            assert s["Effect"] == "Allow" and "secretsmanager:*" not in as_list(s["Action"])


def test_the_stack_roles_stay_in_step_with_the_chalice_deploy_policies(packaged, contract):
    """policy-<stage>.json and policy-rotate-<stage>.json serve `chalice deploy`; the stack's roles are
    those actions, minus the API's key bootstrap writes (the first key is written by create-key), with
    partition/region/account ARNs and one log group each."""
    def actions(path: Path, sid_filter=lambda sid: True) -> set[str]:
        document = json.loads(path.read_text())
        return {a for s in statements(document) if sid_filter(s.get("Sid", "")) and not s["Sid"].startswith("LambdaWrites")
                for a in as_list(s["Action"])}

    chalice_dir = ROOT / ".chalice"
    for function, file in ((contract.api_function, f"policy-{packaged.stage}.json"),
                           (contract.rotation_function, f"policy-rotate-{packaged.stage}.json")):
        role = packaged.resources[function]["Properties"]["Role"]["Fn::GetAtt"][0]
        stack = {a for s in role_statements(packaged, role) for a in as_list(s["Action"]) if not a.startswith("logs:")}
        deploy = actions(chalice_dir / file)
        if function == contract.api_function:
            assert deploy - stack == WRITE_KEY_ACTIONS and stack <= deploy, (sorted(deploy), sorted(stack))
        else:
            assert deploy == stack


# ---------------------------------------------------------------------------------------- KMS and the secret's own policy

def test_a_customer_managed_kms_key_is_optional_and_usable_only_through_secrets_manager(packaged, contract):
    template = packaged.template
    assert template["Parameters"]["KeyKmsKeyArn"]["Default"] == ""
    assert packaged.resources["SessionKeySecret"]["Properties"]["KmsKeyId"] == {
        "Fn::If": ["HasKeyKmsKey", {"Ref": "KeyKmsKeyArn"}, {"Ref": "AWS::NoValue"}]
    }
    wanted = {"ApiHandlerRole": {"kms:Decrypt"}, "RotateKeyRole": {"kms:Decrypt", "kms:GenerateDataKey"}}
    for role, actions in wanted.items():
        kms = [then for condition, then, _ in conditional_statements(packaged, role) if condition == "HasKeyKmsKey"]
        assert len(kms) == 1 and set(as_list(kms[0]["Action"])) == actions
        assert kms[0]["Resource"] == {"Ref": "KeyKmsKeyArn"}
        assert kms[0]["Condition"] == {
            "StringEquals": {"kms:ViaService": {"Fn::Sub": "secretsmanager.${AWS::Region}.amazonaws.com"}}
        }


def test_the_secrets_own_policy_admits_only_the_two_roles_and_a_named_break_glass_role(packaged):
    template = packaged.template
    assert template["Parameters"]["BreakGlassRoleArn"]["Default"] == ""
    assert template["Conditions"]["GuardKeySecret"] == {
        "Fn::And": [{"Condition": "CreateKeySecret"}, {"Condition": "HasBreakGlassRole"}]
    }
    policy = packaged.resources["SessionKeySecretPolicy"]
    assert policy["Condition"] == "GuardKeySecret"
    assert policy["Properties"]["SecretId"] == {"Ref": "SessionKeySecret"}
    assert policy["Properties"]["BlockPublicPolicy"] is True
    api, rotate = {"Fn::GetAtt": ["ApiHandlerRole", "Arn"]}, {"Fn::GetAtt": ["RotateKeyRole", "Arn"]}
    break_glass = {"Ref": "BreakGlassRoleArn"}
    read, write = statements(policy["Properties"]["ResourcePolicy"])
    for statement in (read, write):
        assert statement["Effect"] == "Deny" and statement["Principal"] == {"AWS": "*"}
    assert read["Action"] == "secretsmanager:GetSecretValue"
    assert read["Condition"] == {"StringNotEquals": {"aws:PrincipalArn": [api, rotate, break_glass]}}
    assert set(write["Action"]) == {"secretsmanager:PutSecretValue", "secretsmanager:UpdateSecretVersionStage"}
    assert write["Condition"] == {"StringNotEquals": {"aws:PrincipalArn": [rotate, break_glass]}}
