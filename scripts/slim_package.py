"""Drop from a `chalice package` deployment.zip what no code path imports, then prove the rest loads.

kubernetes 37 depends on its asyncio client and aiohttp, which this service never imports (the
benchmarks list every module loaded by a login and a refresh): about 50 MB unzipped that Lambda
would otherwise copy to every cold container.

    python scripts/slim_package.py build/prod/deployment.zip

The proof is an import of the service from the slimmed files alone. A package built for the other
architecture (`"lambda_architecture": "arm64"` in a stage, built on an x86_64 machine, or the
reverse) cannot be imported here, so it is checked statically instead: every compiled module is an
ELF object for the package's architecture, and every module the import would load is in the zip.
"""
from __future__ import annotations

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
import aws_lambda_powertools.logging.formatter, aws_lambda_powertools.metrics
"""
# The operator commands live in dashboard_auth_cli/, beside chalicelib/ and never in the package:
# people run them, Lambda never does. A file here means the CLI (or a copy) slipped back in.
NOT_DEPLOYED = ("dashboard_auth_cli/", "chalicelib/cli.py")


def slim(path: str) -> tuple[int, int]:
    kept_bytes = dropped_bytes = 0
    slimmed = path + ".slim"
    with zipfile.ZipFile(path) as source:
        stray = sorted(name for name in source.namelist() if name.startswith(NOT_DEPLOYED))
    if stray:
        sys.exit(f"{path}: the operator CLI is in the deployment package ({', '.join(stray[:3])}): "
                 "it belongs in dashboard_auth_cli/, outside chalicelib/")
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(slimmed, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            if item.filename.startswith(UNUSED) or "/__pycache__/" in item.filename:
                dropped_bytes += item.file_size
                continue
            kept_bytes += item.file_size
            target.writestr(item, source.read(item.filename))
    os.replace(slimmed, path)
    return kept_bytes, dropped_bytes


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


def smoke(path: str) -> None:
    with tempfile.TemporaryDirectory() as unpacked:
        zipfile.ZipFile(path).extractall(unpacked)
        env = {"PATH": os.environ.get("PATH", ""), "CSRF_ENFORCE": "false", "AWS_DEFAULT_REGION": "us-east-1"}
        subprocess.run([sys.executable, "-S", "-c", SMOKE, unpacked], check=True, env=env, cwd=unpacked)


def main(path: str) -> None:
    kept, dropped = slim(path)
    architecture = package_architecture(path)
    if architecture not in ELF_MACHINE:
        sys.exit(f"{path}: unknown architecture {architecture!r}")
    if architecture == HOST_ARCHITECTURE.get(platform.machine().lower()):
        smoke(path)
        proof = "the service's imports load from it"
    else:
        static_check(path, architecture)
        proof = f"built for {architecture}: its modules are there and its compiled ones are {architecture} ELF objects"
    print(
        f"{path}: dropped {dropped / 2**20:.1f} MiB never imported, kept {kept / 2**20:.1f} MiB unzipped, "
        f"{os.path.getsize(path) / 2**20:.1f} MiB zipped; {proof}"
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/slim_package.py build/<stage>/deployment.zip")
    main(sys.argv[1])
