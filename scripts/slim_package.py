"""Drop from a `chalice package` deployment.zip what no code path imports, then prove the rest loads.

kubernetes 37 depends on its asyncio client and aiohttp, which this service never imports (the
benchmarks list every module loaded by a login and a refresh): about 50 MB unzipped that Lambda
would otherwise copy to every cold container.

    python scripts/slim_package.py build/prod/deployment.zip

The proof is an import of the service from the slimmed files alone. A package built for the other
architecture (`"lambda_architecture": "arm64"` in a stage, built on an x86_64 machine, or the
reverse) cannot be imported here, so it is checked statically instead: every compiled module is an
ELF object for the package's architecture, and every module the import would load is in the zip.

The bytecode scripts/package.py ships (unchecked hash-based .pyc, PEP 552, beside each .py) is kept
for the modules kept and dropped with the others. Python runs such a .pyc without looking at its
source, so each one kept must be the compilation of the source beside it: its source hash is checked
(when this Python wrote it, as it normally did), and a stale one stops the build. Any other .pyc (a
working tree's timestamp-based __pycache__ chalice copied) is dropped. The import proof then checks
that the package's modules were loaded from their shipped bytecode, none compiled.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import zipfile

UNUSED = (
    "kubernetes/aio/",
    "aiohttp/",
    "aiohttp_retry/",
    "aiohappyeyeballs/",
    "aiosignal/",
    "multidict/",
    "yarl/",
    "propcache/",
    "frozenlist/",
)

# Imports the service makes on its login and refresh paths, checked against the slimmed files
# alone (-S: no site-packages), so a removal that breaks an import fails the build.
SMOKE = """
import sys
sys.path[:0] = [sys.argv[1]]
import app
import kubernetes.client, kubernetes.config
from kubernetes.client import AuthenticationV1Api
import chalicelib.clusters, chalicelib.issuers, yaml, cryptography
import jwcrypto.jwk, jwcrypto.jws
"""
# The operator commands live in dashboard_auth_cli/, beside chalicelib/ and never in the package:
# people run them, Lambda never does. A file here means the CLI (or a copy) slipped back in.
NOT_DEPLOYED = ("dashboard_auth_cli/", "chalicelib/cli.py")


PYC = re.compile(r"((?:.*/)?)__pycache__/([^/]+)\.([^./]+)\.pyc")
PYC_UNCHECKED_HASH = 0b01  # PEP 552's flags: hash-based, source not checked (what scripts/package.py writes)


def pyc_source(name: str) -> str | None:
    """The source a __pycache__ entry belongs to (DIR/__pycache__/STEM.TAG.pyc -> DIR/STEM.py), or None."""
    match = PYC.fullmatch(name)
    return f"{match[1]}{match[2]}.py" if match else None


def shipped_pyc(path: str, name: str, pyc: bytes, source: bytes | None) -> bool:
    """Whether to keep a .pyc entry: an unchecked hash-based one of a source kept in the zip. Exits on a stale one."""
    if source is None or len(pyc) < 16 or int.from_bytes(pyc[4:8], "little") != PYC_UNCHECKED_HASH:
        return False
    if pyc[:4] == importlib.util.MAGIC_NUMBER and pyc[8:16] != importlib.util.source_hash(source):
        sys.exit(f"{path}: {name} was not compiled from the {pyc_source(name)} beside it, and Python would run it "
                 "without checking: package again (scripts/package.py)")
    return True


def slim(path: str) -> tuple[int, int, int]:
    """Drop UNUSED, and any .pyc that is not shipped bytecode; (bytes kept, bytes dropped, .pyc kept that
    this Python loads)."""
    kept_bytes = dropped_bytes = pycs = 0
    slimmed = path + ".slim"
    with zipfile.ZipFile(path) as source:
        stray = sorted(name for name in source.namelist() if name.startswith(NOT_DEPLOYED))
    if stray:
        sys.exit(f"{path}: the operator CLI is in the deployment package ({', '.join(stray[:3])}): "
                 "it belongs in dashboard_auth_cli/, outside chalicelib/")
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(slimmed, "w", zipfile.ZIP_DEFLATED) as target:
        kept = {name for name in source.namelist() if not name.startswith(UNUSED)}
        for item in source.infolist():
            keep = item.filename in kept
            data = source.read(item.filename) if keep else b""
            if keep and ("__pycache__/" in item.filename or item.filename.endswith(".pyc")):
                origin = pyc_source(item.filename)
                keep = shipped_pyc(path, item.filename, data, source.read(origin) if origin in kept else None)
                pycs += keep and data[:4] == importlib.util.MAGIC_NUMBER
            if not keep:
                dropped_bytes += item.file_size
                continue
            kept_bytes += item.file_size
            target.writestr(copy.copy(item), data)  # a copy: writestr sets the entry's offset in the target
    os.replace(slimmed, path)
    return kept_bytes, dropped_bytes, pycs


# Lambda's architecture names, and the ELF e_machine of each.
ELF_MACHINE = {"x86_64": 62, "arm64": 183}
HOST_ARCHITECTURE = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}


def package_architecture(path: str) -> str:
    """The API function's architecture, from the sam.json chalice wrote beside the zip (x86_64 if absent)."""
    template = os.path.join(os.path.dirname(os.path.abspath(path)), "sam.json")
    try:
        with open(template, encoding="utf-8") as handle:
            resources = json.load(handle)["Resources"]
    except (OSError, ValueError, KeyError):
        return "x86_64"
    return (resources.get("APIHandler", {}).get("Properties", {}).get("Architectures") or ["x86_64"])[0]


def smoke_modules() -> list[str]:
    """The modules SMOKE imports (from its `import a, b` and `from a import b` lines), sys aside."""
    modules = []
    for line in SMOKE.splitlines():
        if line.startswith("import "):
            modules += [name.strip() for name in line[len("import "):].split(",")]
        elif line.startswith("from "):
            modules.append(line.split()[1])
    return [module for module in modules if module != "sys"]


def static_check(path: str, architecture: str) -> None:
    """What an import would prove, for a package this machine cannot load: right ELF objects, modules present."""
    wanted = ELF_MACHINE[architecture]
    with zipfile.ZipFile(path) as package:
        names = set(package.namelist())
        for name in names:
            if re.search(r"\.so(\.[0-9.]+)?$", name):
                header = package.read(name)[:20]
                machine = int.from_bytes(header[18:20], "little") if header[:4] == b"\x7fELF" else None
                if machine != wanted:
                    sys.exit(f"{path}: {name} is not an {architecture} ELF object (e_machine {machine})")
    for module in smoke_modules():
        base = module.replace(".", "/")
        if not ({base + ".py", base + "/__init__.py"} & names):
            sys.exit(f"{path}: {module} is missing from the package")


CODE_FROM = re.compile(r"^# code object from '?(.*?)'?$", re.M)  # python -v: each module's code, and where from


def smoke(path: str, bytecode: bool) -> str:
    """Import the service from the unpacked zip alone, verbosely; with `bytecode` (the zip carries .pyc this
    Python loads), every module of the package must come from its .pyc, none compiled from source."""
    with tempfile.TemporaryDirectory() as unpacked:
        zipfile.ZipFile(path).extractall(unpacked)
        env = {"PATH": os.environ.get("PATH", ""), "CSRF_ENFORCE": "false", "AWS_DEFAULT_REGION": "us-east-1",
               "PYTHONDONTWRITEBYTECODE": "1"}
        done = subprocess.run([sys.executable, "-S", "-v", "-c", SMOKE, unpacked], env=env, cwd=unpacked,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if done.returncode:
            errors = [line for line in done.stderr.splitlines() if not line.startswith(("#", "import "))]
            sys.stderr.write("\n".join(errors[-40:]) + "\n")
            sys.exit(f"{path}: the service does not import from the package (exit status {done.returncode})")
        prefix = os.path.join(os.path.realpath(unpacked), "")
        loaded = [os.path.realpath(found)[len(prefix):] for found in CODE_FROM.findall(done.stderr)
                  if os.path.realpath(found).startswith(prefix)]
    compiled = sorted(name for name in loaded if name.endswith(".py"))
    from_pyc = len(loaded) - len(compiled)
    if bytecode and compiled:
        sys.exit(f"{path}: {len(compiled)} of the package's modules were compiled at import instead of loaded from "
                 f"their shipped .pyc ({', '.join(compiled[:5])}): package again (scripts/package.py)")
    return f"{from_pyc} of its {len(loaded)} modules imported loaded from their shipped bytecode"


def main(path: str) -> None:
    kept, dropped, pycs = slim(path)
    architecture = package_architecture(path)
    if architecture not in ELF_MACHINE:
        sys.exit(f"{path}: unknown architecture {architecture!r}")
    if architecture == HOST_ARCHITECTURE.get(platform.machine().lower()):
        proof = "the service's imports load from it, " + smoke(path, bytecode=pycs > 0)
    else:
        static_check(path, architecture)
        proof = f"built for {architecture}: its modules are there and its compiled ones are {architecture} ELF objects"
    print(
        f"{path}: dropped {dropped / 2**20:.1f} MiB never imported, kept {kept / 2**20:.1f} MiB unzipped "
        f"({pycs} .pyc), {os.path.getsize(path) / 2**20:.1f} MiB zipped; {proof}"
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/slim_package.py build/<stage>/deployment.zip")
    main(sys.argv[1])
