"""`make demo`: the whole service on this machine, no AWS account, no cluster.

    python -m demo [--host 127.0.0.1] [--api-port 8000] [--web-port 8080] [--secrets-port 4566]
                   [--cluster-ports 0 0]

Starts, each on 127.0.0.1:
- a local Secrets Manager (the moto server), which holds the session key: the service bootstraps
  it there exactly as it does in AWS (KEY_SECRET_ID, not a key file);
- two demo clusters, TLS Kubernetes API servers (demo/kube_apiserver.py) that verify
  ServiceAccount tokens, publish their issuer keys and answer TokenReview as real ones do;
- the service through `chalice local`, with CORS allowing the page's origin;
- the login page (web/) on a second port, so the page and the API are on different origins.

It prints the page's URL, tokens to paste, and a command that deletes a ServiceAccount (its
session then ends at the next review). Ctrl-C stops everything it started.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from demo.kube_apiserver import FakeKubeApiServer
from demo.static_site import StaticSite

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".local" / "demo"
CLUSTERS = ("demo-eu", "demo-us")
NAMESPACE = "demo"
REVIEW_INTERVAL = 10  # seconds: a revoked ServiceAccount's session ends this soon after the revoke
TOKEN_LIFETIME = 24 * 3600
# Fake credentials for the local Secrets Manager; no AWS account is involved.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "demo",
    "AWS_SECRET_ACCESS_KEY": "demo",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


class DemoError(Exception):
    """Why the demo cannot start, in one sentence for the person who ran it."""


def port_argument(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0-65535)")
    return port


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--api-port", type=port_argument, default=8000, help="the service (default: 8000)")
    parser.add_argument("--web-port", type=port_argument, default=8080, help="the login page (default: 8080)")
    parser.add_argument("--secrets-port", type=port_argument, default=4566,
                        help="the local Secrets Manager (default: 4566)")
    parser.add_argument("--cluster-ports", type=port_argument, nargs=2, default=[0, 0], metavar="PORT",
                        help="the two demo clusters (default: any free ports)")
    return parser.parse_args(argv)


def ensure_free(host: str, port: int, flag: str) -> None:
    if port == 0:
        return
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            raise DemoError(f"port {port} on {host} is taken (is another demo or server running?); "
                            f"choose another with {flag} PORT") from None


def wait_for_port(host: str, port: int, process: subprocess.Popen, what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DemoError(f"{what} exited before it listened (exit status {process.returncode})")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise DemoError(f"{what} did not listen on {host}:{port} within {timeout:.0f} s")


class Demo:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.processes: list[subprocess.Popen] = []
        self.clusters: dict[str, FakeKubeApiServer] = {}
        self.site: StaticSite | None = None
        self.tokens: dict[str, str] = {}
        self.admin_token = ""

    # ------------------------------------------------------------ start

    def start(self) -> None:
        args = self.args
        for port, flag in ((args.api_port, "--api-port"), (args.web_port, "--web-port"),
                           (args.secrets_port, "--secrets-port"), (args.cluster_ports[0], "--cluster-ports"),
                           (args.cluster_ports[1], "--cluster-ports")):
            ensure_free(args.host, port, flag)
        WORK.mkdir(parents=True, exist_ok=True)
        secrets_url = self.start_secrets_manager()
        registry = self.start_clusters()
        web_origin = f"http://{args.host}:{args.web_port}"
        api_origin = f"http://{args.host}:{args.api_port}"
        self.start_service(secrets_url, registry, web_origin)
        self.site = StaticSite(args.host, args.web_port, config={"apiBase": api_origin}, api_origin=api_origin)

    def spawn(self, command: list[str], env: dict[str, str], log_name: str) -> subprocess.Popen:
        log = open(WORK / log_name, "wb")
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stopped with everything it started
        )
        self.processes.append(process)
        return process

    def start_secrets_manager(self) -> str:
        host, port = self.args.host, self.args.secrets_port
        moto = self.spawn([sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
                          {**os.environ, **AWS_ENV}, "secrets-manager.log")
        wait_for_port(host, port, moto, "the local Secrets Manager (moto)")
        return f"http://{host}:{port}"

    def start_clusters(self) -> Path:
        entries = []
        for name, port in zip(CLUSTERS, self.args.cluster_ports):
            try:
                cluster = FakeKubeApiServer(port, name=name).start()
            except OSError:
                raise DemoError(f"port {port} is taken; choose other --cluster-ports") from None
            self.clusters[name] = cluster
            reviewer_file = WORK / f"{name}-reviewer-token"
            reviewer_file.write_text(cluster.new_reviewer())
            reviewer_file.chmod(0o600)
            entries.append({"name": name, "server": cluster.url, "certificateAuthorityData": cluster.ca_data,
                            "reviewer": {"tokenFile": str(reviewer_file)}})
        eu, us = self.clusters["demo-eu"], self.clusters["demo-us"]
        for cluster, account in ((eu, "alice"), (us, "bob"), (eu, "temporary")):
            cluster.create_service_account(NAMESPACE, account)
        self.tokens = {
            "alice": eu.issue_token(NAMESPACE, "alice", expires_in=TOKEN_LIFETIME),
            "bob": us.issue_token(NAMESPACE, "bob", expires_in=TOKEN_LIFETIME),
            "temporary": eu.issue_token(NAMESPACE, "temporary", expires_in=TOKEN_LIFETIME),
            "person": "demo-static-token-for-jane",
        }
        eu.add_static_user_token(self.tokens["person"], "jane@example.com", groups=["developers"])
        self.admin_token = eu.new_admin()
        (WORK / "demo-eu-ca.pem").write_bytes(eu.ca_pem)
        eu.write_kubeconfig(WORK / "alice.kubeconfig", self.tokens["alice"], context="demo-eu")
        registry = WORK / "clusters.json"
        registry.write_text(json.dumps({"defaultCluster": "demo-eu", "clusters": entries}, indent=2))
        return registry

    def start_service(self, secrets_url: str, registry: Path, web_origin: str) -> None:
        host, port = self.args.host, self.args.api_port
        origins = {web_origin, web_origin.replace("127.0.0.1", "localhost")}
        env = {
            **os.environ, **AWS_ENV,
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": secrets_url,
            "KEY_SECRET_ID": "dashboard-auth/demo/session-key",
            "CLUSTERS_FILE": str(registry),
            "CORS_ALLOWED_ORIGINS": ",".join(sorted(origins)),
            "REVIEW_INTERVAL": str(REVIEW_INTERVAL),
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("KEY_FILE", None)
        chalice = str(Path(sys.executable).parent / "chalice")
        # A stage that .chalice/config.json does not name, so nothing there overrides this environment.
        service = self.spawn([chalice, "local", "--no-autoreload", "--stage", "demo", "--host", host,
                              "--port", str(port)], env, "service.log")
        wait_for_port(host, port, service, "the service (chalice local)")

    # ------------------------------------------------------------ tell the person

    def banner(self) -> str:
        eu = self.clusters["demo-eu"]
        page = self.site.url()
        revoke = (f"curl -s --cacert {WORK / 'demo-eu-ca.pem'} -X DELETE "
                  f"-H 'Authorization: Bearer {self.admin_token}' "
                  f"{eu.url}/api/v1/namespaces/{NAMESPACE}/serviceaccounts/temporary")
        lines = [
            "",
            "dashboard-auth demo is running. Open the login page:",
            "",
            f"    {page}",
            "",
            f"API {self.args.host}:{self.args.api_port} (chalice local), Secrets Manager on port "
            f"{self.args.secrets_port}, clusters demo-eu {eu.url} and demo-us {self.clusters['demo-us'].url}.",
            "",
            "Tokens to paste (ServiceAccount tokens, valid 24 h):",
            "",
            f"  demo-eu, ServiceAccount {NAMESPACE}/alice:",
            f"    {self.tokens['alice']}",
            "",
            f"  demo-us, ServiceAccount {NAMESPACE}/bob:",
            f"    {self.tokens['bob']}",
            "",
            f"  demo-eu, ServiceAccount {NAMESPACE}/temporary (revoke it below):",
            f"    {self.tokens['temporary']}",
            "",
            "  demo-eu, a person's token, not a ServiceAccount (refused):",
            f"    {self.tokens['person']}",
            "",
            f"  or log in with the kubeconfig file {WORK / 'alice.kubeconfig'}",
            "",
            f"Revoke {NAMESPACE}/temporary (its session ends within {REVIEW_INTERVAL} s):",
            f"    {revoke}",
            "",
            f"Logs: {WORK}/*.log. Ctrl-C stops everything.",
            "",
        ]
        return "\n".join(lines)

    # ------------------------------------------------------------ run and stop

    def failed_process(self) -> subprocess.Popen | None:
        return next((process for process in self.processes if process.poll() is not None), None)

    def stop(self) -> None:
        if self.site is not None:
            self.site.stop()
        for process in self.processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for cluster in self.clusters.values():
            cluster.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    demo = Demo(args)
    try:
        demo.start()
        print(demo.banner(), flush=True)
        while not stop.wait(0.5):
            failed = demo.failed_process()
            if failed is not None:
                raise DemoError(f"a demo process exited (status {failed.returncode}); see {WORK}/*.log")
    except DemoError as error:
        print(f"demo: {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        demo.stop()
    print("demo: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
