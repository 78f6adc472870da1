"""Drop from a `chalice package` deployment.zip what no code path imports, then prove the rest loads.

kubernetes 37 depends on its asyncio client and aiohttp, which this service never imports (the
benchmarks list every module loaded by a login and a refresh): about 50 MB unzipped that Lambda
would otherwise copy to every cold container.

    python scripts/slim_package.py build/prod/deployment.zip
"""
from __future__ import annotations

import os
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


def smoke(path: str) -> None:
    with tempfile.TemporaryDirectory() as unpacked:
        zipfile.ZipFile(path).extractall(unpacked)
        env = {"PATH": os.environ.get("PATH", ""), "CSRF_ENFORCE": "false", "AWS_DEFAULT_REGION": "us-east-1"}
        subprocess.run([sys.executable, "-S", "-c", SMOKE, unpacked], check=True, env=env, cwd=unpacked)


def main(path: str) -> None:
    kept, dropped = slim(path)
    smoke(path)
    print(
        f"{path}: dropped {dropped / 2**20:.1f} MiB never imported, kept {kept / 2**20:.1f} MiB unzipped, "
        f"{os.path.getsize(path) / 2**20:.1f} MiB zipped; the service's imports load from it"
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/slim_package.py build/<stage>/deployment.zip")
    main(sys.argv[1])
