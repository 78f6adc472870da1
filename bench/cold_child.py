"""One cold container, or one cold floor process: from import to the first answer.

    python [-X importtime] -m bench.cold_child MODE CONFIG

MODE: refresh | login (the app: `import app`, then one invocation of `app.app(event, context)`),
floor-refresh | floor-login (only what that path truly needs, see bench/cold_start.py), or
scan (refresh, token login, kubeconfig login, csrftoken: which packages each step imports).

Before the clock starts this process imports only the standard library and the event builder
(the Lambda runtime's part: it hands the handler a ready event). One JSON line out: `ms` from
the start of the import to the answer, `max_rss_mb`, and what got imported.
"""
from __future__ import annotations

import json
import os
import sys
import time

MARK = "bench.cold_child: the clock starts"
# The app's requests to a cluster: the issuer documents (discovery, JWKS) of a first login, then the TokenReview.
CLUSTER_HTTP = "cluster HTTP: issuer documents + TokenReview (TLS handshake incl.)"


def _top_levels() -> list[str]:
    return sorted({name.split(".")[0] for name in sys.modules})


def _rss_mb() -> float:
    """Peak RSS of this process image (VmHWM; see bench.harness.max_rss_mb for why not ru_maxrss)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return _ru_maxrss_mb()


def _ru_maxrss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_now_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _b64url(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _floor(mode: str, event: dict, config: dict, phases: dict) -> dict:
    """The floor's work, timed by the caller: imports included. Phases go to `phases` (ms)."""
    mark = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phases[name] = phases.get(name, 0.0) + (now - mark) * 1000
        mark = now

    import boto3
    from botocore.config import Config
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    phase("imports (boto3, cryptography)")
    client = boto3.client("secretsmanager", config=Config(
        retries={"mode": "standard", "total_max_attempts": 3}, connect_timeout=2, read_timeout=3))
    phase("Secrets Manager client")
    secret = client.get_secret_value(SecretId=os.environ["KEY_SECRET_ID"], VersionStage="AWSCURRENT")
    phase("Secrets Manager HTTP")
    # As the service loads its own key: without OpenSSL's RSA key check (chalicelib.keys.parse_secret_value).
    private = serialization.load_pem_private_key(json.loads(secret["SecretString"])["priv"].encode(), password=None,
                                                 unsafe_skip_rsa_key_validation=True)
    phase("key load (PEM, no RSA key check)")
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    body = json.loads(event["body"])
    if mode == "floor-refresh":
        document = json.loads(body["jweToken"])
        cek = private.decrypt(_b64url_decode(document["encrypted_key"]), oaep)
        aad = (document["protected"] + "." + document["aad"]).encode("ascii")
        plaintext = AESGCM(cek).decrypt(_b64url_decode(document["iv"]),
                                        _b64url_decode(document["ciphertext"]) + _b64url_decode(document["tag"]), aad)
    else:
        import base64

        import urllib3

        phase("imports (urllib3)")
        import kubernetes  # noqa: F401  (what the specification requires a login to use: the package, imported)

        phase("imports (kubernetes package)")

        server = config["servers"][config["floor_server"]]
        pool = urllib3.HTTPSConnectionPool(
            "127.0.0.1", int(server["url"].rsplit(":", 1)[1]), maxsize=1, retries=False,
            timeout=urllib3.Timeout(connect=5, read=5), cert_reqs="CERT_REQUIRED",
            ca_cert_data=base64.b64decode(server["ca_data"]).decode())
        review = json.dumps({"spec": {"token": server["sa_token"], "audiences": server["audiences"]}}).encode()
        response = pool.urlopen("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body=review, headers={
            "Accept": "application/json", "Content-Type": "application/json",
            "Authorization": "Bearer " + server["reviewer_token"]})
        if not json.loads(response.data)["status"].get("authenticated"):
            raise SystemExit("floor TokenReview not authenticated")
        phase("TokenReview HTTP (TLS handshake incl.)")
        plaintext = json.dumps({"token": body["token"]}).encode()
        aad = b"e30.e30"
    cek, iv = os.urandom(32), os.urandom(12)
    sealed = AESGCM(cek).encrypt(iv, plaintext, aad)
    wrapped = private.public_key().encrypt(cek, oaep)
    answer = json.dumps({"encrypted_key": _b64url(wrapped), "iv": _b64url(iv), "ciphertext": _b64url(sealed[:-16]),
                         "tag": _b64url(sealed[-16:])})
    phase("token crypto + JSON")
    return {"statusCode": 200, "body": answer}


def _instrument(phases: dict, config: dict) -> None:
    """Time the cold path's phases by wrapping module attributes of this process (measurement only)."""
    import functools

    import urllib3.connectionpool

    from chalicelib import aws_clients, clusters, issuers, keys, sessions

    def timed(owner, attribute: str, phase: str) -> None:
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            begin = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                phases[phase] = phases.get(phase, 0.0) + (time.perf_counter() - begin) * 1000
                phases["n: " + phase] = phases.get("n: " + phase, 0) + 1
        setattr(owner, attribute, wrapper)

    moto_port = int(config["moto_url"].rsplit(":", 1)[1])
    original_urlopen = urllib3.connectionpool.HTTPConnectionPool.urlopen

    def urlopen(pool, *args, **kwargs):
        name = "Secrets Manager HTTP" if pool.port == moto_port else CLUSTER_HTTP
        begin = time.perf_counter()
        try:
            return original_urlopen(pool, *args, **kwargs)
        finally:
            phases[name] = phases.get(name, 0.0) + (time.perf_counter() - begin) * 1000
            phases["n: " + name] = phases.get("n: " + name, 0) + 1

    urllib3.connectionpool.HTTPConnectionPool.urlopen = urlopen
    timed(aws_clients, "new_secrets_manager", "Secrets Manager client (botocore import incl.)")
    timed(keys, "parse_secret_value", "key parse (PEM loads, pair check)")
    timed(keys.SecretsManagerKeyStore, "fetch", "_key set fetch (total)")
    timed(sessions, "decrypt", "sessions.decrypt (1st)")
    timed(sessions, "mint", "sessions.mint")
    timed(clusters.Reviewer, "review", "_review (total)")
    timed(issuers.Issuers, "verify", "_issuer check (total)")
    timed(clusters.Reviewer, "_build_client", "kubernetes ApiClient build")


def main() -> int:
    mode = sys.argv[-2]
    with open(sys.argv[-1]) as handle:
        config = json.load(handle)
    from tests.fakes.lambda_container import LambdaContext, event_for

    default = config["clusters"][0]
    token = config["servers"][default]["sa_token"]
    if mode in ("refresh", "floor-refresh", "scan"):
        event = event_for({"op": "refresh", "jweToken": config["session_tokens"][default], "csrf": config["csrf"]["token"]})
    else:
        event = event_for({"op": "login", "token": token, "csrf": config["csrf"]["login"]})
    context = LambdaContext()
    result: dict = {"mode": mode}

    print(MARK, file=sys.stderr, flush=True)
    t0, cpu0 = time.perf_counter(), time.process_time()
    phases: dict = {}
    if mode in ("refresh", "login", "scan"):
        import app

        phases["import app (INIT)"] = (time.perf_counter() - t0) * 1000
        if mode != "scan" and os.environ.get("BENCH_COLD_PHASES") == "1":
            begin = time.perf_counter()
            _instrument(phases, config)  # imports urllib3 a little earlier than botocore would
            phases["instrumentation (urllib3 import, moved out of boto3's)"] = (time.perf_counter() - begin) * 1000
        response = app.app(event, context)
    else:
        response = _floor(mode, event, config, phases)
    result["ms"] = (time.perf_counter() - t0) * 1000
    result["cpu_ms"] = (time.process_time() - cpu0) * 1000  # what scales with a Lambda CPU share (bench/costs.py)
    result["status"] = response["statusCode"]
    answered = response["statusCode"] == 200 and ("jweToken" in response["body"] or mode.startswith("floor"))
    if not answered:
        raise SystemExit(f"{mode}: unexpected answer {response['statusCode']}: {str(response['body'])[:300]}")
    result["phases"] = phases
    result["kubernetes_imported"] = "kubernetes" in sys.modules
    result["modules"] = len(sys.modules)
    result["max_rss_mb"] = _rss_mb()
    result["rss_now_mb"] = _rss_now_mb()
    result["ru_maxrss_mb"] = _ru_maxrss_mb()
    result["top_levels"] = _top_levels()

    if mode == "scan":  # after the refresh above: a token login, a kubeconfig login, a CSRF token
        steps = {"refresh": result["top_levels"]}
        login = {"op": "login", "token": token, "csrf": config["csrf"]["login"]}
        if app.app(event_for(login), LambdaContext())["statusCode"] != 200:
            raise SystemExit("scan: the token login failed")
        steps["login"] = _top_levels()
        kubeconfig = json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
            "users": [{"name": "u", "user": {"token": token}}]})
        answer = app.app(event_for({"op": "http", "method": "POST", "resource": "/api/v1/login",
                                    "headers": {"Content-Type": "application/json",
                                                "X-CSRF-TOKEN": config["csrf"]["login"]},
                                    "body": json.dumps({"kubeconfig": kubeconfig})}), LambdaContext())
        if answer["statusCode"] != 200:
            raise SystemExit(f"kubeconfig login answered {answer['statusCode']}")
        steps["kubeconfig login"] = _top_levels()
        if app.app(event_for({"op": "csrf", "action": "login"}), LambdaContext())["statusCode"] != 200:
            raise SystemExit("scan: the CSRF token failed")
        steps["csrftoken"] = _top_levels()
        result["steps"] = steps
        result["max_rss_mb"] = _rss_mb()
        result["files"] = sorted({getattr(m, "__file__", None) or "" for m in list(sys.modules.values())} - {""})
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
