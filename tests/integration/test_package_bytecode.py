"""The packaged deployment.zip carries bytecode that a cold container of the runtime loads as it is.

`scripts/package.py dev` (chalice package, then the bytecode step) and `scripts/slim_package.py`, as
`make package` runs them; the zip is then unpacked as Lambda unpacks it to /var/task, and a fresh
Python that writes no bytecode imports the service from it. Every module of the package must come
from its shipped .pyc, unchecked (PEP 552): neither a missing source mtime nor an edited source makes
Python compile it again. (That is what makes a cold start faster; bench/cold_start.py measures by how much.)
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TAG = sys.implementation.cache_tag
IMPORTS = "import app, chalicelib.keys, chalicelib.sessions, jwcrypto.jwk, cryptography.hazmat.primitives.ciphers.aead, yaml"


@pytest.fixture(scope="module")
def packaged(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bytecode") / "dev"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "package.py"), "dev", str(out), "--allow-placeholders"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    slimmed = subprocess.run([sys.executable, str(ROOT / "scripts" / "slim_package.py"), str(out / "deployment.zip")],
                             cwd=ROOT, capture_output=True, text=True)
    assert slimmed.returncode == 0, slimmed.stdout + slimmed.stderr
    task = tmp_path_factory.mktemp("task")
    with zipfile.ZipFile(out / "deployment.zip") as archive:
        archive.extractall(task)
        names = archive.namelist()
    return {"zip": out / "deployment.zip", "task": task, "names": names, "package_stderr": done.stderr,
            "slim_stdout": slimmed.stdout}


def run_in_task(task: Path, code: str, *flags: str) -> subprocess.CompletedProcess:
    """A fresh Python in the unpacked package, as the Lambda runtime starts one: -S, no bytecode written."""
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONDONTWRITEBYTECODE": "1", "CSRF_ENFORCE": "false",
           "AWS_DEFAULT_REGION": "us-east-1"}
    return subprocess.run([sys.executable, "-S", *flags, "-c", f"import sys; sys.path[:0] = [{str(task)!r}]\n" + code],
                          cwd=task, env=env, capture_output=True, text=True)


def test_package_py_says_it_compiled_the_package_in_one_line(packaged):
    lines = [line for line in packaged["package_stderr"].splitlines() if line.startswith("bytecode")]
    assert len(lines) == 1 and f"python{sys.version_info.major}.{sys.version_info.minor}" in lines[0], lines


def test_every_module_of_the_package_has_a_valid_unchecked_hash_pyc(packaged):
    names = set(packaged["names"])
    sources = sorted(name for name in names if name.endswith(".py"))
    assert "app.py" in sources and "chalicelib/keys.py" in sources and len(sources) > 1000
    with zipfile.ZipFile(packaged["zip"]) as archive:
        for source in sources:
            directory, _, filename = source.rpartition("/")
            pyc = (directory + "/" if directory else "") + f"__pycache__/{filename[:-3]}.{TAG}.pyc"
            assert pyc in names, source
            data = archive.read(pyc)
            assert data[:4] == importlib.util.MAGIC_NUMBER, pyc
            assert int.from_bytes(data[4:8], "little") == 0b01, pyc  # hash-based, source never checked
            assert data[8:16] == importlib.util.source_hash(archive.read(source)), pyc
    # what slim dropped went with its bytecode
    assert not any(name.startswith(("aiohttp/", "kubernetes/aio/")) for name in names)
    assert sum(name.endswith(".pyc") for name in names) == len(sources)


def test_slim_proved_the_service_imports_from_the_shipped_bytecode(packaged):
    found = re.search(r"(\d+) of its (\d+) modules imported loaded from their shipped bytecode", packaged["slim_stdout"])
    assert found and found[1] == found[2] and int(found[1]) > 300, packaged["slim_stdout"]


def test_the_runtime_loads_each_module_from_its_pyc_and_compiles_none(packaged):
    task = packaged["task"]
    done = run_in_task(task, IMPORTS + "\nimport app\nprint(app.__cached__)", "-v")
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = re.findall(r"^# code object from '?(.*?)'?$", done.stderr, re.M)
    in_task = [path for path in loaded if path.startswith(str(task))]
    assert in_task and all(path.endswith(f".{TAG}.pyc") for path in in_task), [p for p in in_task if p.endswith(".py")]
    assert f"{task}/__pycache__/app.{TAG}.pyc" in in_task
    assert done.stdout.strip() == f"{task}/__pycache__/app.{TAG}.pyc"
    assert not list(task.glob("**/__pycache__/*.opt-*.pyc"))


def test_the_shipped_pyc_is_used_unchecked_whatever_the_source_says(packaged, tmp_path):
    """On Lambda the sources' mtimes are the zip's (1980): only unchecked bytecode is used as it is.
    Here the source is even replaced after unpacking, and the .pyc still runs: Python never compared them."""
    task = tmp_path / "task"
    with zipfile.ZipFile(packaged["zip"]) as archive:
        archive.extractall(task)
    keys = task / "chalicelib" / "keys.py"
    keys.write_text("raise SystemExit('chalicelib/keys.py was compiled from its source')\n")
    os.utime(keys, (2_000_000_000, 2_000_000_000))

    done = run_in_task(task, "import chalicelib.keys as keys\nprint(keys.__spec__.cached, hasattr(keys, 'KeyCache'))")

    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(task / "chalicelib" / "__pycache__" / f"keys.{TAG}.pyc"), "True"]
