"""What ships to Lambda and what does not: the operator CLI lives beside chalicelib/, never in it.

chalice deploys app.py and all of chalicelib/; scripts/slim_package.py (run by `make package` and
.ci/run on deployment.zip) refuses a package that carries the CLI. `make install` installs the
project itself, editable, for the `dashboard-auth` command; scripts/check_pins.py lets exactly that
through.
"""
from __future__ import annotations

import importlib.util
import os
import zipfile
from importlib import metadata

import pytest

from tests.conftest import ROOT


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_nothing_in_chalicelib_is_or_imports_the_operator_cli():
    assert not os.path.exists(os.path.join(ROOT, "chalicelib", "cli.py"))
    for name in os.listdir(os.path.join(ROOT, "chalicelib")):
        if name.endswith(".py"):
            with open(os.path.join(ROOT, "chalicelib", name), encoding="utf-8") as handle:
                assert "dashboard_auth_cli" not in handle.read(), name


@pytest.mark.parametrize("stray", ["dashboard_auth_cli/cli.py", "chalicelib/cli.py"])
def test_slim_package_refuses_a_deployment_zip_that_carries_the_cli(tmp_path, stray):
    slim_package = load_script("slim_package")
    path = tmp_path / "deployment.zip"
    with zipfile.ZipFile(path, "w") as package:
        package.writestr("app.py", "")
        package.writestr("chalicelib/service.py", "")
        package.writestr(stray, "")

    with pytest.raises(SystemExit) as refused:
        slim_package.main(str(path))

    assert "the operator CLI is in the deployment package" in str(refused.value) and stray in str(refused.value)


def test_the_smoke_import_of_the_package_does_not_import_the_cli():
    slim_package = load_script("slim_package")
    assert "cli" not in slim_package.SMOKE.replace("client", "")


def test_check_pins_lets_through_only_this_checkout_installed_editable():
    check_pins = load_script("check_pins")
    project = metadata.distribution("dashboard-auth")  # `make install` installed it
    assert check_pins.is_this_project(project)
    assert not check_pins.is_this_project(metadata.distribution("pytest"))


def test_the_console_script_is_declared_for_the_cli():
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        project = tomllib.load(handle)
    assert project["project"]["scripts"] == {"dashboard-auth": "dashboard_auth_cli.cli:entry"}
    assert project["project"]["dependencies"] == []  # every dependency is pinned in requirements*.txt
    entry_points = metadata.distribution("dashboard-auth").entry_points
    assert [(e.name, e.value) for e in entry_points if e.group == "console_scripts"] == [
        ("dashboard-auth", "dashboard_auth_cli.cli:entry")]


# ---------------------------------------------------------------- a package for the other architecture

def _elf(machine: int) -> bytes:
    return b"\x7fELF" + bytes(14) + machine.to_bytes(2, "little") + bytes(12)


def _package(tmp_path, architecture: str, files: dict[str, bytes]) -> str:
    import json
    import zipfile

    (tmp_path / "sam.json").write_text(json.dumps(
        {"Resources": {"APIHandler": {"Properties": {"Architectures": [architecture]}}}}
    ))
    path = tmp_path / "deployment.zip"
    with zipfile.ZipFile(path, "w") as package:
        for name, data in files.items():
            package.writestr(name, data)
    return str(path)


def _all_smoke_modules(slim_package) -> dict[str, bytes]:
    return {module.replace(".", "/") + ".py": b"" for module in slim_package.smoke_modules()}


def test_an_arm64_package_is_checked_statically_on_another_machine(tmp_path):
    import sys as _sys

    _sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import slim_package

    files = {**_all_smoke_modules(slim_package), "yaml/_yaml.cpython-311-aarch64-linux-gnu.so": _elf(183)}
    path = _package(tmp_path, "arm64", files)
    assert slim_package.package_architecture(path) == "arm64"
    slim_package.static_check(path, "arm64")  # passes

    wrong = _package(tmp_path, "arm64", {**files, "_cffi_backend.cpython-311-x86_64-linux-gnu.so": _elf(62)})
    with pytest.raises(SystemExit, match="_cffi_backend.*not an arm64 ELF object"):
        slim_package.static_check(wrong, "arm64")

    del files["jwcrypto/jwk.py"]
    missing = _package(tmp_path, "arm64", files)
    with pytest.raises(SystemExit, match="jwcrypto.jwk is missing"):
        slim_package.static_check(missing, "arm64")
