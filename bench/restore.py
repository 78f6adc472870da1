"""3 (restored). A restored container (SnapStart, emulated): the first refresh and the first login after a restore.

A local stand-in for snapshot and restore: a "snapshot" process initialises a container as a
snapshot would hold it, then forks; each forked child is a restored container: it runs the
after-restore hook and serves one first request, timed from the fork's return to the answer.

- Service snapshot (SnapshotService below): `import app`, then what app.py runs under SnapStart's
  initialisation, chalicelib.snapstart.prepare: the imports (boto3, botocore, kubernetes), the
  settings, the cluster registry, each cluster's kubernetes ApiClient and its (unconnected) pool, the
  Secrets Manager client built and warmed up without credentials (chalicelib/aws_clients.py). No
  secret read, no credentials resolved, no connection opened. The child first runs
  chalicelib.snapstart.after_restore (as the runtime's after-restore hook), inside the timed span.
  (Without chalicelib/snapstart.py, the same preparation is done by hand.)
- Floor snapshot (SnapshotFloor): the same imports, a Secrets Manager client and an unconnected
  urllib3 pool to the floor server. A forked child does only what a restored container cannot have
  done before the snapshot: ONE GetSecretValue from the moto server, the PEM load (no RSA key check,
  as the service), then for a refresh the JWE's JSON/base64 and unwrap + decrypt + encrypt + wrap,
  for a login ONE TokenReview POST over a fresh TLS connection (one handshake) and the mint.

Both snapshot processes live for the whole section and fork one child at a time on command, the
kinds interleaved, so drift of the shared machine falls on all of them alike. Target: the restored
first refresh and first login each <= 1.3x the floor (median). Also printed against the cold start
from scratch (bench/cold_start.py), when it ran.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from bench.stats import Row, median, timed_row
from bench.world import ROOT, die_with_parent

TARGET = 1.3
REPS = 10
KINDS = ("refresh", "login")
# "floor+warm": the floor whose client has also made the service's dry, unsigned warm-up call before
# the snapshot (chalicelib.aws_clients.warm_up): botocore's lazy first-call work is then in neither
# first request. A figure beside the target's, not the target's.
SNAPSHOTS = ("service", "floor", "floor+warm")


# ---------------------------------------------------------------- inside a snapshot process


def _cpu_ms() -> float:
    return time.process_time() * 1000


class SnapshotService:
    def __init__(self, config: dict):
        from tests.fakes.lambda_container import LambdaContext, event_for

        import app

        import boto3  # noqa: F401  (imported by a first request: a snapshot holds it)
        import botocore.config  # noqa: F401
        import urllib3  # noqa: F401

        self.app, self.context = app, LambdaContext
        self.phases: dict = {}
        self.service = service = app.auth()
        try:
            from chalicelib import snapstart
        except ImportError:  # before the service had its own SnapStart hooks: the same work, by hand
            snapstart = None
            registry = service._registry()
            for name in registry.names():
                service._reviewer._connection(registry.get(name))  # ApiClient + its pool: no connection yet
        else:
            snapstart.prepare(service)  # what app.py runs under SnapStart's initialisation (set_up)
        self.snapstart = snapstart
        from bench.cold_child import _instrument

        _instrument(self.phases, config)  # phase timers (wrappers only; nothing is called)
        self._time_credentials()
        default = config["clusters"][0]
        self.events = {
            "refresh": event_for({"op": "refresh", "jweToken": config["session_tokens"][default],
                                  "csrf": config["csrf"]["token"]}),
            "login": event_for({"op": "login", "token": config["servers"][default]["sa_token"],
                                "csrf": config["csrf"]["login"]}),
        }
        self.kubernetes_imported = "kubernetes" in sys.modules

    def _time_credentials(self) -> None:
        """A phase for the AWS credentials' lookup at the first signed request (the default chain)."""
        try:
            from chalicelib import aws_clients
        except ImportError:
            return
        credentials = aws_clients.credentials_of(aws_clients.secrets_manager()) if aws_clients.built() else None
        if credentials is None:
            return
        ask, phases, name = credentials._ask, self.phases, "AWS credentials lookup (default chain)"

        def timed_ask():
            begin = time.perf_counter()
            try:
                return ask()
            finally:
                phases[name] = phases.get(name, 0.0) + (time.perf_counter() - begin) * 1000
                phases["n: " + name] = phases.get("n: " + name, 0) + 1

        credentials._ask = timed_ask

    def first(self, kind: str) -> dict:
        self.phases.clear()  # what the snapshot's init recorded is not the restored request's
        if self.snapstart is not None:  # the runtime runs the after-restore hooks before the first request
            begin = time.perf_counter()
            self.snapstart.after_restore(self.service)
            self.phases["after-restore hook"] = (time.perf_counter() - begin) * 1000
        response = self.app.app(self.events[kind], self.context())
        body = response.get("body") or ""
        if response.get("statusCode") != 200 or "jweToken" not in body:
            raise SystemExit(f"restored {kind}: {response.get('statusCode')} {body[:200]}")
        return {"phases": dict(self.phases)}


class SnapshotFloor:
    def __init__(self, config: dict, warm: bool = False):
        import base64

        import boto3
        import urllib3
        from botocore.config import Config
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.serialization, self.AESGCM = serialization, AESGCM
        self.oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
        self.client = boto3.client("secretsmanager", config=Config(
            retries={"mode": "standard", "total_max_attempts": 3}, connect_timeout=2, read_timeout=3))
        if warm:
            from chalicelib.aws_clients import warm_up

            warm_up(self.client, ("GetSecretValue",))  # nothing sent, nothing signed
        server = config["servers"][config["floor_server"]]
        self.pool = urllib3.HTTPSConnectionPool(
            "127.0.0.1", int(server["url"].rsplit(":", 1)[1]), maxsize=1, retries=False,
            timeout=urllib3.Timeout(connect=5, read=5), cert_reqs="CERT_REQUIRED",
            ca_cert_data=base64.b64decode(server["ca_data"]).decode())
        self.review = json.dumps({"spec": {"token": server["sa_token"], "audiences": server["audiences"]}}).encode()
        self.headers = {"Accept": "application/json", "Content-Type": "application/json",
                        "Authorization": "Bearer " + server["reviewer_token"]}
        self.session = config["session_tokens"][config["clusters"][0]]
        self.sa_token = server["sa_token"]
        self.secret_id = os.environ["KEY_SECRET_ID"]

    def first(self, kind: str) -> dict:
        from bench.harness import b64url, b64url_decode

        phases: dict = {}
        mark = time.perf_counter()
        secret = self.client.get_secret_value(SecretId=self.secret_id, VersionStage="AWSCURRENT")
        phases["Secrets Manager HTTP"] = (time.perf_counter() - mark) * 1000
        private = self.serialization.load_pem_private_key(json.loads(secret["SecretString"])["priv"].encode(),
                                                          password=None, unsafe_skip_rsa_key_validation=True)
        if kind == "refresh":
            document = json.loads(json.loads(json.dumps({"jweToken": self.session}))["jweToken"])
            aad = (document["protected"] + "." + document["aad"]).encode("ascii")
            cek = private.decrypt(b64url_decode(document["encrypted_key"]), self.oaep)
            plaintext = self.AESGCM(cek).decrypt(b64url_decode(document["iv"]), b64url_decode(document["ciphertext"])
                                                 + b64url_decode(document["tag"]), aad)
        else:
            begin = time.perf_counter()
            response = self.pool.urlopen("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body=self.review,
                                         headers=self.headers)
            if response.status != 201 or not json.loads(response.data)["status"].get("authenticated"):
                raise SystemExit("floor TokenReview not authenticated")
            phases["TokenReview HTTP (TLS handshake incl.)"] = (time.perf_counter() - begin) * 1000
            plaintext, aad = json.dumps({"token": self.sa_token}).encode(), b"e30.e30"
        cek, iv = os.urandom(32), os.urandom(12)
        sealed = self.AESGCM(cek).encrypt(iv, plaintext, aad)
        json.dumps({"encrypted_key": b64url(private.public_key().encrypt(cek, self.oaep)), "iv": b64url(iv),
                    "ciphertext": b64url(sealed[:-16]), "tag": b64url(sealed[-16:])})
        return {"phases": phases}


def _fork_one(snapshot, kind: str) -> dict:
    """Fork a restored container, let it serve one first request; its result through a pipe."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the restored container
        try:
            os.close(read_end)
            cpu, begin = _cpu_ms(), time.perf_counter()
            result = snapshot.first(kind)
            result["ms"] = (time.perf_counter() - begin) * 1000
            result["cpu_ms"] = _cpu_ms() - cpu
            result["kubernetes_imported_before"] = getattr(snapshot, "kubernetes_imported", None)
            data = json.dumps(result).encode()
        except BaseException as error:  # noqa: BLE001  (reported to the parent, never raised past the fork)
            data = json.dumps({"error": f"{type(error).__name__}: {error}"[:500]}).encode()
        with os.fdopen(write_end, "wb") as out:
            out.write(data)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(data or b'{"error": "no answer from the restored child"}')


def snapshot_main() -> int:
    """python -m bench.restore --snapshot service|floor|floor+warm CONFIG: initialise, then fork on each command line."""
    kind_of_snapshot = sys.argv[-2]
    # The protocol gets a descriptor of its own; the service's stdout (EMF metrics) goes with its stderr to a file.
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    with open(sys.argv[-1]) as handle:
        config = json.load(handle)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    begin = time.perf_counter()
    if kind_of_snapshot.startswith("floor"):
        snapshot = SnapshotFloor(config, warm=kind_of_snapshot == "floor+warm")
    else:
        snapshot = SnapshotService(config)
    import threading

    ready = {"init_ms": (time.perf_counter() - begin) * 1000, "threads": threading.active_count()}
    protocol.write(json.dumps(ready) + "\n")
    for line in sys.stdin:
        kind = line.strip()
        if kind == "exit":
            break
        sys.stdout.flush()  # nothing buffered may be written twice, by the parent and by a child
        protocol.write(json.dumps(_fork_one(snapshot, kind)) + "\n")
    return 0


# ---------------------------------------------------------------- the bench parent


def _start(world, which: str, env: dict, cwd: str) -> tuple[subprocess.Popen, dict, str]:
    path = os.path.join(world.tmp, f"restore-{which}.json")
    with open(path, "w") as handle:
        json.dump(world.config(), handle)
    stderr_path = os.path.join(world.tmp, f"restore-{which}.stderr")
    with open(stderr_path, "w") as stderr:  # the child keeps its own descriptor
        process = subprocess.Popen([sys.executable, "-m", "bench.restore", "--snapshot", which, path], cwd=cwd,
                                   env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                   text=True, bufsize=1, preexec_fn=die_with_parent)
    line = process.stdout.readline()
    if not line:
        process.wait(timeout=10)
        with open(stderr_path) as handle:
            raise RuntimeError(f"restore {which} snapshot failed:\n{handle.read()[-2000:]}")
    return process, json.loads(line), stderr_path


def _ask(process: subprocess.Popen, kind: str) -> dict:
    process.stdin.write(kind + "\n")
    process.stdin.flush()
    line = process.stdout.readline()
    result = json.loads(line)
    if "error" in result or "ms" not in result:
        raise RuntimeError(f"restored {kind}: {result.get('error') or line[:300]}")
    return result


def run(world, cold: dict | None = None, reps: int = REPS) -> tuple[list[Row], list[str], dict]:
    from bench.cold_start import _env_and_cwd

    env, cwd, how = _env_and_cwd(world)
    env = {**env, "PYTHONPATH": env.get("PYTHONPATH", ROOT)}
    processes = {}
    try:
        for which in SNAPSHOTS:
            processes[which] = _start(world, which, env, cwd)
        results: dict[tuple[str, str], list[dict]] = {(w, k): [] for w in processes for k in KINDS}
        order = [(w, k) for k in KINDS for w in processes]
        for i in range(reps):
            rotated = order[i % len(order):] + order[:i % len(order)]
            for which, kind in rotated:
                results[(which, kind)].append(_ask(processes[which][0], kind))
    finally:
        for process, _, _ in processes.values():
            try:
                process.stdin.write("exit\n")
                process.stdin.flush()
                process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()
                process.wait(timeout=10)
    ms = {key: [r["ms"] for r in values] for key, values in results.items()}
    cpu = {key: [r["cpu_ms"] for r in values] for key, values in results.items()}
    rows, figures = [], {}
    for kind in KINDS:
        value, floor = median(ms[("service", kind)]), median(ms[("floor", kind)])
        figures[kind] = {"ms": value, "cpu_ms": median(cpu[("service", kind)]), "floor_ms": floor,
                         "floor_cpu_ms": median(cpu[("floor", kind)])}
        rows.append(timed_row(f"3. restored (fork of a snapshot) first {kind}, median", value, floor, TARGET))
        warm_floor = median(ms[("floor+warm", kind)])
        figures[kind]["warm_floor_ms"] = warm_floor
        rows.append(timed_row(f"3. restored first {kind} vs a floor whose client is warmed up too", value, warm_floor, None))
        if cold and cold.get("ms", {}).get(kind):
            cold_ms = median(cold["ms"][kind])
            rows.append(Row(f"3. restored first {kind} vs cold start from scratch, median", f"{value:.1f} ms",
                            f"{cold_ms:.0f} ms (cold)", f"{value / cold_ms:.2f}"))
    phase_lines = []
    for (which, kind), values in results.items():
        names = sorted({name for r in values for name in r["phases"] if not name.startswith("n: ")})
        counts = {name: median([r["phases"].get("n: " + name, 0) for r in values]) for name in names}
        parts = ", ".join(f"{name}{f' x{counts[name]:.0f}' if counts[name] else ''} "
                          f"{median([r['phases'].get(name, 0.0) for r in values]):.1f}" for name in names)
        phase_lines.append(f"  {which} {kind}: {median(ms[(which, kind)]):.1f} ms (min {min(ms[(which, kind)]):.1f}, "
                           f"max {max(ms[(which, kind)]):.1f}; CPU {median(cpu[(which, kind)]):.1f} ms): {parts}")
    notes = [f"restored containers ({how}; {reps} forks of each kind, interleaved): snapshot init "
             f"{processes['service'][1]['init_ms']:.0f} ms for the service (threads at fork: "
             f"{processes['service'][1]['threads']}), {processes['floor'][1]['init_ms']:.0f} ms for the floor; phases "
             "(median ms; the service's by wrapping its functions, the app's HTTP counted per call):\n"
             + "\n".join(phase_lines)]
    return rows, notes, figures


if __name__ == "__main__":
    if "--snapshot" in sys.argv:
        sys.exit(snapshot_main())
