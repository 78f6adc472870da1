"""The outside world of a benchmark run, built once by the parent process and shared by the children.

- Secrets Manager: a moto server process (tests/conftest.py's MotoServer), holding the key secret in
  its steady state: an AWSCURRENT key and an AWSPREVIOUS one (one rotation done), as a deployment has
  for all but its first 30 days.
- Kubernetes: two clusters, prod-eu (the default) and staging-us, plus a twin "floor" server the floors
  talk to, so the clusters' handshake counters count the app's connections only; all three are
  FakeKubeApiServer instances over TLS in one process of their own (bench/kube_servers.py).
- The cluster registry (tokenFile reviewers, audiences as a registry would have them), and a session
  token minted with the current key for the refresh benchmarks.

Children (the measured processes) get everything through their environment and one JSON config file.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTERS = ("prod-eu", "staging-us")
FLOOR_SERVER = "floor"
SECRET_ID = "dashboard-auth/bench/session-key"
CHILD_TIMEOUT = 120.0


class ChildFailed(RuntimeError):
    pass


def die_with_parent() -> None:
    """preexec_fn: the long-lived helper processes get SIGTERM if the benchmark process dies (Linux)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _moto_server():
    """tests/conftest.py's MotoServer, started so that it cannot outlive this process."""
    from tests.conftest import MotoServer, wait_for_port

    class BoundMotoServer(MotoServer):
        def start(self) -> None:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent,
            )
            wait_for_port(self.port)

    return BoundMotoServer()


class World:
    def __init__(self) -> None:
        if ROOT not in sys.path:
            sys.path.insert(0, ROOT)
        self.tmp = tempfile.mkdtemp(prefix="dashboard-auth-bench-")
        self.moto = None
        self.kube: subprocess.Popen | None = None
        self.servers: dict = {}
        self.kid = ""
        self.previous_kid = ""
        self.private_pem = ""
        self.registry_file = os.path.join(self.tmp, "clusters.json")
        self.session_tokens: dict[str, str] = {}
        self.deployed_dir: str | None = None  # the unpacked deployment.zip, once bench.memory_size built it

    # ------------------------------------------------------------ lifecycle

    def start(self) -> "World":
        self.moto = _moto_server()
        self.moto.start()
        self.kube = subprocess.Popen(
            [sys.executable, "-m", "bench.kube_servers", *CLUSTERS, FLOOR_SERVER],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, bufsize=1, env={**os.environ, "PYTHONPATH": ROOT, "PYTHONDONTWRITEBYTECODE": "1"},
            preexec_fn=die_with_parent,
        )
        self.servers = json.loads(self.kube.stdout.readline())
        self._write_key()
        self._write_registry()
        self._mint_sessions()
        return self

    def stop(self) -> None:
        if self.kube is not None:
            try:
                self.kube.stdin.write("exit\n")
                self.kube.stdin.flush()
                self.kube.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.kube.terminate()
                self.kube.wait(timeout=10)
            self.kube = None
        if self.moto is not None:
            self.moto.stop()
            self.moto = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "World":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------ the fake clusters

    def kube_command(self, command: str) -> dict:
        self.kube.stdin.write(command + "\n")
        self.kube.stdin.flush()
        return json.loads(self.kube.stdout.readline())

    def handshakes(self) -> dict[str, int]:
        return self.kube_command("handshakes")

    def reset_counters(self) -> None:
        self.kube_command("reset")

    # ------------------------------------------------------------ set-up

    def secrets_client(self):
        import boto3

        return boto3.client("secretsmanager", endpoint_url=self.moto.url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def _write_key(self) -> None:
        from chalicelib import keys

        client = self.secrets_client()
        first = client.create_secret(Name=SECRET_ID, SecretString=keys.new_secret_value())
        second = client.put_secret_value(SecretId=SECRET_ID, SecretString=keys.new_secret_value())
        self.previous_kid, self.kid = first["VersionId"], second["VersionId"]
        current = client.get_secret_value(SecretId=SECRET_ID, VersionStage="AWSCURRENT")
        assert current["VersionId"] == self.kid
        self.secret_text = current["SecretString"]
        self.private_pem = json.loads(self.secret_text)["priv"]

    def _write_registry(self) -> None:
        clusters = []
        for name in CLUSTERS:
            server = self.servers[name]
            token_file = os.path.join(self.tmp, f"reviewer-{name}")
            with open(token_file, "w") as handle:
                handle.write(server["reviewer_token"])
            clusters.append({
                "name": name,
                "server": server["url"],
                "certificateAuthorityData": server["ca_data"],
                "reviewer": {"tokenFile": token_file},
                "audiences": server["audiences"],
            })
        with open(self.registry_file, "w") as handle:
            json.dump({"defaultCluster": CLUSTERS[0], "clusters": clusters}, handle)

    def _mint_sessions(self) -> None:
        """A session per cluster, as a login a few seconds ago made it (reviewed now: no TokenReview due),
        and the CSRF tokens the frontend fetched before it (GET /api/v1/csrftoken/{login,token}, 24 h)."""
        from chalicelib import dashboard, keys, sessions

        key = keys.parse_secret_value(self.kid, self.secret_text)
        self.csrf_tokens = {action: dashboard.csrf_token(key.csrf_secret, action) for action in ("login", "token")}
        now = datetime.now(timezone.utc).replace(microsecond=0)
        for name in CLUSTERS:
            claims = sessions.Claims(issued_at=now, expires_at=now + timedelta(hours=1), cluster=name,
                                     auth_time=now, reviewed_at=now)
            self.session_tokens[name] = sessions.mint(self.servers[name]["sa_token"], claims, key.public, key.kid)

    # ------------------------------------------------------------ children

    def service_env(self, **overrides) -> dict[str, str]:
        """The environment of a container (the test containers' base: fake AWS credentials, the project on
        PYTHONPATH), plus moto, the registry and the service settings."""
        from tests.fakes.lambda_container import container_base_env

        env = container_base_env()
        env.update({
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": self.moto.url,
            "KEY_SECRET_ID": SECRET_ID,
            "CLUSTERS_FILE": self.registry_file,
            "CSRF_ENFORCE": "true",  # as deployed: every POST carries the frontend's X-CSRF-TOKEN
            "REVIEW_INTERVAL": "86400",  # a refresh of a reviewed session asks no cluster
            "TOKEN_TTL": "900",
            "LOG_LEVEL": "INFO",  # as deployed (.chalice/config.json): a line per login
            "KUBECONFIG": os.path.join(self.tmp, "no-kubeconfig"),
            "PYTHONDONTWRITEBYTECODE": "1",
        })
        env.update({k: str(v) for k, v in overrides.items() if v is not None})
        return env

    def config(self, **extra) -> dict:
        return {
            "servers": self.servers,
            "clusters": list(CLUSTERS),
            "floor_server": FLOOR_SERVER,
            "session_tokens": self.session_tokens,
            "csrf": self.csrf_tokens,
            "secret_id": SECRET_ID,
            "moto_url": self.moto.url,
            "kid": self.kid,
            **extra,
        }

    def run_child(self, args: list[str], config: dict, env: dict | None = None, cwd: str = ROOT,
                  timeout: float = CHILD_TIMEOUT, python_flags: tuple[str, ...] = ()) -> dict:
        """Run `python [flags] -m <args...> CONFIG` and return the JSON of its last stdout line.

        The child's stderr (its log, a line per login at INFO) goes to a file, not a pipe: the child
        still pays for every write, but a pipe would also wake this process, which is not part of what
        is measured, for every line, and on a two-core machine it competes with the child for a CPU."""
        stem = os.path.join(self.tmp, f"child-{time.monotonic_ns()}")
        with open(stem + ".json", "w") as handle:
            json.dump(config, handle)
        with open(stem + ".stderr", "w+") as stderr:
            process = subprocess.run(
                [sys.executable, *python_flags, "-m", *args, stem + ".json"],
                cwd=cwd, env=env or self.service_env(), stdout=subprocess.PIPE, stderr=stderr, text=True,
                timeout=timeout, preexec_fn=die_with_parent,
            )
            stderr.seek(0)
            process.stderr = stderr.read()
        os.unlink(stem + ".json")
        os.unlink(stem + ".stderr")
        lines = process.stdout.strip().splitlines()
        if process.returncode != 0 or not lines:
            raise ChildFailed(f"{' '.join(args)} exited {process.returncode}:\n{process.stderr[-3000:]}")
        result = json.loads(lines[-1])
        result["_stderr"] = process.stderr
        return result
