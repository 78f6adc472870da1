"""The bytecode scripts/package.py ships in deployment.zip, and what scripts/slim_package.py keeps of it.

Small zips written here, run through the scripts' real functions: unchecked hash-based .pyc (PEP 552)
beside each .py when this Python is the packaged runtime, one line and an untouched zip otherwise;
slim keeps the .pyc of the modules it keeps, drops the others, and refuses a stale one. The real
package is checked in tests/integration/test_package_bytecode.py.
"""
from __future__ import annotations

import importlib.util
import json
import marshal
import os
import sys
import zipfile

import pytest

from tests.conftest import ROOT

HERE = f"python{sys.version_info.major}.{sys.version_info.minor}"
OTHER = f"python{sys.version_info.major}.{sys.version_info.minor + 1}"
TAG = sys.implementation.cache_tag


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


package_script = load_script("package")
slim_package = load_script("slim_package")


def template(runtime: str = HERE, architecture: str = "x86_64") -> dict:
    function = {"Type": "AWS::Serverless::Function",
                "Properties": {"Runtime": runtime, "CodeUri": "./deployment.zip", "Architectures": [architecture]}}
    return {"Resources": {"APIHandler": function, "RotateKey": json.loads(json.dumps(function))}}


def write_zip(path, files: dict[str, bytes]) -> None:
    """As chalice writes deployment.zip: fixed 1980 timestamps, mode 0644, deflated."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            entry = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            entry.external_attr = 0o100644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, data)


SOURCES = {
    "app.py": b"from chalicelib import keys\nANSWER = keys.VALUE\n",
    "chalicelib/__init__.py": b"",
    "chalicelib/keys.py": b"VALUE = 42\n",
    "jwcrypto/jwk.py": b'"""docstring"""\nassert True\n',
    "aiohttp/client.py": b"x = 1\n",
    "requests-2.0.dist-info/RECORD": b"requests/__init__.py,,\n",
}


@pytest.fixture
def packaged(tmp_path):
    path = tmp_path / "deployment.zip"
    write_zip(path, SOURCES)
    (tmp_path / "sam.json").write_text(json.dumps(template()))
    return path


def entries(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_each_module_gets_an_unchecked_hash_pyc_in_its_pycache(packaged):
    line = package_script.ship_bytecode(packaged, template(), "dev")

    files = entries(packaged)
    sources = [name for name in SOURCES if name.endswith(".py")]
    assert f"{len(sources)} modules" in line and HERE in line and "\n" not in line
    assert {name: files[name] for name in SOURCES} == SOURCES  # every original entry unchanged
    assert set(files) - set(SOURCES) == {package_script.pyc_name(name, TAG) for name in sources}
    assert package_script.pyc_name("app.py", TAG) == f"__pycache__/app.{TAG}.pyc"
    assert package_script.pyc_name("chalicelib/keys.py", TAG) == f"chalicelib/__pycache__/keys.{TAG}.pyc"
    for name in sources:
        pyc = files[package_script.pyc_name(name, TAG)]
        assert pyc[:4] == importlib.util.MAGIC_NUMBER
        assert int.from_bytes(pyc[4:8], "little") == 0b01  # hash-based, check_source off
        assert pyc[8:16] == importlib.util.source_hash(SOURCES[name])
        code = marshal.loads(pyc[16:])
        assert code.co_filename == name  # the path in the zip, never this machine's scratch directory
    # not optimised: Lambda runs python without -O, and the .pyc name is the -O0 one
    assert marshal.loads(files[package_script.pyc_name("jwcrypto/jwk.py", TAG)][16:]).co_consts[0] == "docstring"


def test_the_pyc_entries_keep_the_zip_reproducible(packaged, tmp_path):
    twin = tmp_path / "twin.zip"
    twin.write_bytes(packaged.read_bytes())
    package_script.ship_bytecode(packaged, template(), "dev")
    package_script.ship_bytecode(twin, template(), "dev")

    assert packaged.read_bytes() == twin.read_bytes()
    with zipfile.ZipFile(packaged) as archive:
        assert {(info.date_time, info.external_attr >> 16, info.compress_type) for info in archive.infolist()} == {
            ((1980, 1, 1, 0, 0, 0), 0o100644, zipfile.ZIP_DEFLATED)}


def test_a_pycache_chalice_copied_from_a_working_tree_is_replaced(tmp_path):
    path = tmp_path / "deployment.zip"
    stale = f"chalicelib/__pycache__/keys.{TAG}.pyc"
    write_zip(path, {**SOURCES, stale: b"timestamp-based, checked against a 1980 mtime", "old.pyc": b""})

    package_script.ship_bytecode(path, template(), "dev")

    files = entries(path)
    assert "old.pyc" not in files and int.from_bytes(files[stale][4:8], "little") == 0b01
    assert len(files) == len(set(files))


@pytest.mark.parametrize("runtimes", [(OTHER, OTHER), (HERE, OTHER), ("python2.7", "python2.7")])
def test_another_runtime_gets_no_bytecode_and_one_line_says_why(packaged, runtimes):
    document = template()
    document["Resources"]["APIHandler"]["Properties"]["Runtime"] = runtimes[0]
    document["Resources"]["RotateKey"]["Properties"]["Runtime"] = runtimes[1]
    before = packaged.read_bytes()

    line = package_script.ship_bytecode(packaged, document, "prod")

    assert packaged.read_bytes() == before
    assert "\n" not in line and line.startswith("bytecode left out of stage prod's deployment.zip: ")
    assert runtimes[1] in line and f"{sys.version_info.major}.{sys.version_info.minor}" in line


def test_a_file_that_does_not_compile_is_left_as_source(tmp_path):
    path = tmp_path / "deployment.zip"
    write_zip(path, {**SOURCES, "templates/py2.py": b"print 'hello'\n"})

    line = package_script.ship_bytecode(path, template(), "dev")

    assert "1 files that do not compile left as source only" in line
    assert package_script.pyc_name("templates/py2.py", TAG) not in entries(path)


# ---------------------------------------------------------------- scripts/slim_package.py and the bytecode

def test_slim_keeps_the_bytecode_of_the_modules_it_keeps(packaged):
    package_script.ship_bytecode(packaged, template(), "dev")

    kept, dropped, pycs = slim_package.slim(str(packaged))

    files = entries(packaged)
    assert "aiohttp/client.py" not in files and package_script.pyc_name("aiohttp/client.py", TAG) not in files
    for name in ("app.py", "chalicelib/__init__.py", "chalicelib/keys.py", "jwcrypto/jwk.py"):
        assert package_script.pyc_name(name, TAG) in files, name
    assert pycs == 4


def test_slim_refuses_bytecode_that_is_not_its_source_s(packaged):
    package_script.ship_bytecode(packaged, template(), "dev")
    files = entries(packaged)
    files["chalicelib/keys.py"] = b"VALUE = 43\n"  # edited after compiling: Python would run the old bytecode
    write_zip(packaged, files)

    with pytest.raises(SystemExit, match=f"chalicelib/__pycache__/keys.{TAG}.pyc was not compiled from"):
        slim_package.slim(str(packaged))


def test_slim_drops_a_pyc_without_its_source_or_that_is_checked_against_mtimes(packaged):
    package_script.ship_bytecode(packaged, template(), "dev")
    files = entries(packaged)
    orphan = package_script.pyc_name("gone.py", TAG)
    files[orphan] = files[package_script.pyc_name("app.py", TAG)]
    timestamped = f"jwcrypto/__pycache__/jwk.{TAG}.pyc"
    files[timestamped] = importlib.util.MAGIC_NUMBER + bytes(12)  # flags 0: timestamp-based
    write_zip(packaged, files)

    slim_package.slim(str(packaged))

    assert orphan not in entries(packaged) and timestamped not in entries(packaged)


def test_an_arm64_package_keeps_its_bytecode_and_is_checked_statically(tmp_path):
    """.pyc are the same for every architecture: an arm64 package built here ships them too."""
    files = {module.replace(".", "/") + ".py": b"" for module in slim_package.smoke_modules()}
    files["yaml/_yaml.cpython-311-aarch64-linux-gnu.so"] = b"\x7fELF" + bytes(14) + (183).to_bytes(2, "little")
    path = tmp_path / "deployment.zip"
    write_zip(path, files)
    (tmp_path / "sam.json").write_text(json.dumps(template(architecture="arm64")))
    package_script.ship_bytecode(path, template(architecture="arm64"), "dev")
    if slim_package.HOST_ARCHITECTURE.get(os.uname().machine.lower()) == "arm64":
        pytest.skip("on an arm64 machine the package is import-tested instead")

    slim_package.main(str(path))

    names = entries(path)
    assert package_script.pyc_name("jwcrypto/jwk.py", TAG) in names
    assert sum(name.endswith(".pyc") for name in names) == sum(name.endswith(".py") for name in names) > 5
