"""SnapStart in the packaged template (scripts/package.py, a stage's "snapstart" in .chalice/config.json).

Lambda offers SnapStart for python3.12 and newer, and chalice packages for the Python that runs it:
this machine's Python 3.11 gets a template without it and one line saying why. The transformation a
Python 3.12+ packaging applies is checked on this machine's packaged template with its Runtime set to
python3.12 (no newer CPython can be installed here), and cfn-lint, with the serverless rules as .ci/run
runs them, must report nothing on it.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
CFN_LINT_ARGS = ("--append-rules", "cfn_lint_serverless.rules", "--non-zero-exit-code", "warning")
ALIAS = "APIHandlerAliaslive"  # SAM's logical id of AutoPublishAlias "live" on APIHandler

spec = importlib.util.spec_from_file_location("package_script", ROOT / "scripts" / "package.py")
package = importlib.util.module_from_spec(spec)
spec.loader.exec_module(package)


@pytest.fixture(scope="module")
def packaged_prod(tmp_path_factory):
    out = tmp_path_factory.mktemp("snapstart") / "prod"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "package.py"), "prod", str(out), "--allow-placeholders"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    return json.loads((out / "sam.json").read_text()), done.stderr


def integration_uris(template: dict) -> list[str]:
    paths = template["Resources"]["RestAPI"]["Properties"]["DefinitionBody"]["paths"]
    uris = [op["x-amazon-apigateway-integration"]["uri"]["Fn::Sub"]
            for methods in paths.values() for op in methods.values() if "x-amazon-apigateway-integration" in op]
    assert uris
    return [uri if isinstance(uri, str) else uri[0] for uri in uris]


def cfn_lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "cfn-lint"), *CFN_LINT_ARGS, "--", str(path)], capture_output=True, text=True)


def test_snapstart_is_on_for_prod_and_off_for_dev():
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    assert config["stages"]["prod"]["snapstart"] is True
    assert config["stages"]["dev"]["snapstart"] is False
    assert '"snapstart"' in config["_comment"]
    assert package.stage_snapstart(ROOT, "prod") and not package.stage_snapstart(ROOT, "dev")


def test_a_snapstart_setting_that_is_not_a_boolean_is_refused(tmp_path):
    (tmp_path / ".chalice").mkdir()
    (tmp_path / ".chalice" / "config.json").write_text(json.dumps({"stages": {"prod": {"snapstart": "yes"}}}))
    with pytest.raises(package.Refused, match='"snapstart" must be true or false'):
        package.stage_snapstart(tmp_path, "prod")


@pytest.mark.parametrize("runtime, supported", [
    ("python3.9", False), ("python3.11", False), ("python3.12", True), ("python3.13", True), ("nodejs22.x", False),
])
def test_snapstart_only_for_python_3_12_and_newer(runtime, supported):
    assert package.snapstart_supported(runtime) is supported


@pytest.mark.skipif(sys.version_info >= package.SNAPSTART_MIN_PYTHON, reason="this Python packages with SnapStart")
def test_packaged_by_this_python_snapstart_is_left_off_with_one_line(packaged_prod):
    template, stderr = packaged_prod
    function = template["Resources"]["APIHandler"]["Properties"]
    assert function["Runtime"] == f"python{sys.version_info[0]}.{sys.version_info[1]}"
    assert "SnapStart" not in function and "AutoPublishAlias" not in function
    assert all("${APIHandler.Arn}" in uri for uri in integration_uris(template))
    lines = [line for line in stderr.splitlines() if "SnapStart" in line]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("SnapStart left off for stage prod: the packaged runtime is python3.11")
    assert "python3.12 and newer" in lines[0] and "Python 3.12+" in lines[0]


def test_a_stage_without_snapstart_is_left_as_packaged_and_says_nothing(packaged_prod):
    template = copy.deepcopy(packaged_prod[0])
    template["Resources"]["APIHandler"]["Properties"]["Runtime"] = "python3.12"
    before = copy.deepcopy(template)
    assert package.apply_snapstart(template, "dev", enabled=False) is None
    assert template == before


@pytest.fixture(scope="module")
def python312(packaged_prod, tmp_path_factory) -> tuple[dict, str, Path]:
    """This machine's packaged prod template as a Python 3.12 packaging makes it."""
    template = copy.deepcopy(packaged_prod[0])
    template["Resources"]["APIHandler"]["Properties"]["Runtime"] = "python3.12"
    note = package.apply_snapstart(template, "prod", enabled=True)
    path = tmp_path_factory.mktemp("python312") / "sam.json"
    path.write_text(json.dumps(template, indent=2))
    return template, note, path


def test_on_python_3_12_the_api_function_gets_snapstart_and_an_alias(python312):
    template, note, _ = python312
    resources = template["Resources"]
    function = resources["APIHandler"]["Properties"]
    assert function["SnapStart"] == {"ApplyOn": "PublishedVersions"}
    assert function["AutoPublishAlias"] == "live"
    assert note.startswith("SnapStart on for stage prod") and "\n" not in note
    # the rotation function is left alone
    assert "SnapStart" not in resources["RotateKey"]["Properties"]
    assert "AutoPublishAlias" not in resources["RotateKey"]["Properties"]


def test_on_python_3_12_api_gateway_invokes_the_alias_and_may(python312):
    template, _, _ = python312
    uris = integration_uris(template)
    assert all(f"functions/${{{ALIAS}}}/invocations" in uri for uri in uris), uris
    assert not re.search(r"APIHandler\.Arn", json.dumps(template["Resources"]["RestAPI"]))
    permission = template["Resources"]["APIHandlerInvokePermission"]["Properties"]
    assert permission["FunctionName"] == {"Ref": ALIAS}
    assert permission["Principal"] == "apigateway.amazonaws.com"


def test_on_python_3_12_cfn_lint_with_the_serverless_rules_reports_nothing(python312):
    done = cfn_lint(python312[2])
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_cfn_lint_sees_snapstart_without_an_alias(python312, tmp_path):
    """The lint above is not vacuous: SnapStart without the alias (no published version) is reported."""
    template = copy.deepcopy(python312[0])
    del template["Resources"]["APIHandler"]["Properties"]["AutoPublishAlias"]
    broken = tmp_path / "sam.json"
    broken.write_text(json.dumps(template))
    assert "W2530" in cfn_lint(broken).stdout
