"""scripts/package.py refuses to package a broken stage: one sentence, exit 2, and no package.

The checks run on copies of the repository's .chalice/config.json in a scratch app directory (the
script's --app-dir), with a registry written there or not; the full command also runs on the
repository itself, which has no registry (CI's clone never has one) and must be refused.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "package.py"
EXAMPLE_REGISTRY = json.loads((ROOT / "clusters.example.json").read_text())
REAL_ORIGIN = "https://dashboard.corp.internal"

_spec = importlib.util.spec_from_file_location("package_script", SCRIPT)
package_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(package_script)


def registry(**change) -> dict:
    """clusters.example.json with its first cluster renamed: valid, and not the example any more."""
    document = json.loads(json.dumps(EXAMPLE_REGISTRY))
    document["clusters"][0]["name"] = document["defaultCluster"] = "corp-eu"
    document.update(change)
    return document


@pytest.fixture
def app_dir(tmp_path) -> Path:
    """A scratch app directory: the repository's config with a real-looking origin, and chalicelib/."""
    (tmp_path / ".chalice").mkdir()
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    for stage in ("dev", "prod"):
        config["stages"][stage]["environment_variables"]["CORS_ALLOWED_ORIGINS"] = REAL_ORIGIN
    (tmp_path / ".chalice" / "config.json").write_text(json.dumps(config))
    shutil.copy(ROOT / "clusters.example.json", tmp_path / "clusters.example.json")
    (tmp_path / "chalicelib").mkdir()
    return tmp_path


def set_env(app_dir: Path, stage: str, **values: str) -> None:
    path = app_dir / ".chalice" / "config.json"
    config = json.loads(path.read_text())
    config["stages"][stage]["environment_variables"].update(values)
    path.write_text(json.dumps(config))


def write_registry(app_dir: Path, document) -> None:
    text = document if isinstance(document, str) else json.dumps(document)
    (app_dir / "chalicelib" / "clusters.json").write_text(text)


def refusal(app_dir: Path, stage: str = "prod", allow_placeholders: bool = False) -> str:
    with pytest.raises(package_script.Refused) as refused:
        package_script.check(app_dir, stage, allow_placeholders)
    return str(refused.value)


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_a_valid_registry_and_real_origins_pass(app_dir, stage):
    write_registry(app_dir, registry())
    assert package_script.check(app_dir, stage) == ((REAL_ORIGIN,), [])


def test_no_registry_is_refused(app_dir):
    message = refusal(app_dir)
    assert "chalicelib/clusters.json does not exist" in message and "clusters.example.json" in message


def test_the_example_registry_copied_unchanged_is_refused(app_dir):
    write_registry(app_dir, EXAMPLE_REGISTRY)
    assert "is still clusters.example.json" in refusal(app_dir)


@pytest.mark.parametrize("document, says", [
    ("{not json", "not valid JSON"),
    ({"clusters": []}, "at least one cluster"),
    (registry(defaultCluster="nowhere"), "defaultCluster 'nowhere'"),
    (registry(clusters=[{"name": "a", "server": "https://203.0.113.1:6443"}]), "certificateAuthorityData"),
])
def test_an_invalid_registry_is_refused_with_parse_registrys_reason_even_with_the_flag(app_dir, document, says):
    write_registry(app_dir, document)
    for allow in (False, True):
        message = refusal(app_dir, allow_placeholders=allow)
        assert message.startswith("the cluster registry is invalid: chalicelib/clusters.json: ") and says in message


@pytest.mark.parametrize("origin", ["https://dashboard.example.com", "https://dashboard.example.com,https://x.corp.io",
                                    "https://dash.example.org", "https://login.test"])
def test_an_example_origin_is_refused(app_dir, origin):
    write_registry(app_dir, registry())
    set_env(app_dir, "prod", CORS_ALLOWED_ORIGINS=origin)
    message = refusal(app_dir)
    assert "CORS_ALLOWED_ORIGINS still names the example origin https://" in message
    assert "--allow-placeholders" in message


@pytest.mark.parametrize("origins", ["*", "https://dashboard.corp.internal/", "dashboard.corp.internal",
                                     "ftp://dashboard.corp.internal"])
def test_a_malformed_origin_list_is_refused_even_with_the_flag(app_dir, origins):
    write_registry(app_dir, registry())
    set_env(app_dir, "prod", CORS_ALLOWED_ORIGINS=origins)
    for allow in (False, True):
        message = refusal(app_dir, allow_placeholders=allow)
        assert message.startswith(".chalice/config.json (stage prod): CORS_ALLOWED_ORIGINS takes exact origins")


def test_other_invalid_settings_are_refused_too(app_dir):
    write_registry(app_dir, registry())
    set_env(app_dir, "prod", TOKEN_TTL="soon")
    assert "TOKEN_TTL must be a whole number" in refusal(app_dir)


def test_a_registry_outside_chalicelib_is_refused(app_dir):
    set_env(app_dir, "prod", CLUSTERS_FILE="clusters.example.json")
    assert "outside chalicelib/" in refusal(app_dir, allow_placeholders=True)


def test_the_flag_lets_only_the_placeholders_through_with_warnings(app_dir):
    set_env(app_dir, "prod", CORS_ALLOWED_ORIGINS="https://dashboard.example.com")
    origins, warnings = package_script.check(app_dir, "prod", allow_placeholders=True)
    assert origins == ("https://dashboard.example.com",)
    assert len(warnings) == 2 and "does not exist" in warnings[0] and "example origin" in warnings[1]


def test_the_local_stage_and_unknown_stages_are_not_packaged(app_dir):
    assert "not a deployed stage" in refusal(app_dir, "local", True)
    assert "not a deployed stage" in refusal(app_dir, "staging", True)


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True)


@pytest.mark.parametrize("where", ["repository", "scratch"])
def test_no_registry_is_refused_with_one_sentence_and_no_package(app_dir, tmp_path, where):
    if where == "repository" and (ROOT / "chalicelib" / "clusters.json").exists():
        pytest.skip("this checkout has a registry")
    out = tmp_path / "out"
    done = run("prod", str(out), *(["--app-dir", str(app_dir)] if where == "scratch" else []))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("refusing to package stage prod: the cluster registry chalicelib/clusters.json "
                               "does not exist") and lines[0].endswith(".")
    assert lines[0].count(". ") == 0, "one sentence"
    assert not out.exists() and done.stdout == ""


def test_an_invalid_stage_in_a_scratch_app_is_refused_before_chalice_runs(app_dir, tmp_path):
    write_registry(app_dir, "{not json")
    out = tmp_path / "out"
    done = run("prod", str(out), "--allow-placeholders", "--app-dir", str(app_dir))
    assert done.returncode == 2 and "not valid JSON" in done.stderr
    assert not out.exists()


def test_the_dev_and_prod_merge_templates_differ_only_in_the_stages_secret_names():
    """Both are edited by hand: a fix made to one stage and forgotten in the other fails here."""
    dev = (ROOT / ".chalice" / "merge-dev.json").read_text()
    prod = (ROOT / ".chalice" / "merge-prod.json").read_text()
    assert "dashboard-auth/dev/" in dev and "dashboard-auth/prod/" not in dev
    assert dev.replace("dashboard-auth/dev/", "dashboard-auth/prod/") == prod


@pytest.mark.parametrize("flag", ["", "ALLOW_PLACEHOLDERS=1"])
def test_make_package_goes_through_the_checks(flag):
    """`make package` packages only through scripts/package.py (dry run: make -n runs nothing)."""
    done = subprocess.run(["make", "-n", "package", "STAGE=prod", *([flag] if flag else [])], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    packaging = [line for line in lines if "scripts/package.py" in line]
    assert len(packaging) == 1 and "prod build/prod" in packaging[0], lines
    assert packaging[0].rstrip().endswith("--allow-placeholders") == bool(flag)
    assert not [line for line in lines if "chalice package" in line or "/chalice " in line], "chalice only via the script"
