"""What runs inside a measured child process: the Lambda-like container and the floors.

The container is the real entry point: `app.app(event, context)` with the API Gateway REST proxy
event and Lambda-like context of tests/fakes/lambda_container.py, in this process (no pipe, no
JSON protocol in the timed path). Events are built before a batch, untimed, because Lambda hands
the handler a ready event.

The floors use `cryptography` and `urllib3` directly: what a refresh or a login cannot avoid.
"""
from __future__ import annotations

import base64
import json
import os
import sys

TOKENREVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"


def child_main(child) -> None:
    """Entry point of a child: `python -m bench.<module> --child CONFIG`; one JSON line out."""
    with open(sys.argv[-1]) as handle:
        config = json.load(handle)
    result = child(config)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def max_rss_mb() -> float:
    """Peak RSS of this process image: VmHWM. Not ru_maxrss: on Linux a child's ru_maxrss keeps the peak
    of the process it was forked from (here the benchmark parent) across exec, so it reads too high."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def top_level_modules() -> list[str]:
    return sorted({name.split(".")[0] for name in sys.modules})


# ---------------------------------------------------------------- the container


class Container:
    """One warm Lambda container in this process: `app` imported once, invoked one event at a time."""

    def __init__(self) -> None:
        from tests.fakes.lambda_container import LambdaContext, event_for

        import app

        self.app_module = app
        self.handler = app.app
        self._event_for = event_for
        self._context = LambdaContext

    def events(self, command: dict):
        """A batch-preparer: n fresh (event, context) pairs for this protocol command."""
        def prepare(n: int) -> list:
            return [(self._event_for(command), self._context()) for _ in range(n)]
        return prepare

    def alternating(self, commands: list[dict]):
        def prepare(n: int) -> list:
            return [(self._event_for(commands[i % len(commands)]), self._context()) for i in range(n)]
        return prepare

    def invoke(self, pair) -> dict:
        return self.handler(*pair)


class BareChalice:
    """The least a Chalice route can cost: a one-route app that answers a fixed body of the refresh
    answer's size, invoked with the same events as the real app. Nothing of ours runs; a reference
    for how much of the refresh target Chalice alone takes."""

    def __init__(self, answer_body: str):
        from chalice import Chalice, Response

        app = Chalice(app_name="bare", configure_logs=False)
        app.api.binary_types = []

        @app.route("/api/v1/token/refresh", methods=["POST"])
        def refresh():
            app.current_request.raw_body
            return Response(answer_body, headers={"Content-Type": "application/json"})

        self.app = app

    def __call__(self, pair) -> dict:
        return self.app(*pair)


def _oaep():
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def _reference_app(name: str):
    from chalice import Chalice

    app = Chalice(app_name=name, configure_logs=False)
    app.api.binary_types = []
    return app


def _answer(members: dict):
    """A Dashboard AuthResponse carrying the JWE members, as a Chalice Response."""
    from chalice import Response

    jwe_text = json.dumps(members, separators=(",", ":"))
    return Response(json.dumps({"jweToken": jwe_text, "errors": []}), headers={"Content-Type": "application/json"})


def _jwa():
    """The JOSE pieces the service uses (chalicelib/sessions.py): jwcrypto's JWA algorithm objects."""
    from jwcrypto.jwa import JWA

    return JWA.keymgmt_alg("RSA-OAEP-256"), JWA.encryption_alg("A256GCM")


def _jwk(key):
    """A `cryptography` key as a jwcrypto JWK, converted once (as the service does, per key object)."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwcrypto.jwk import JWK

    converted = JWK()
    converted.unsafe_skip_rsa_key_validation = True
    converted.import_from_pyca(key)
    converted.get_op_key("unwrapKey" if isinstance(key, rsa.RSAPrivateKey) else "wrapKey")
    return converted


class UncheckedRefresh:
    """A reference, not the service: a Chalice route doing only what any refresh must (read the
    body and the JWE, unwrap, decrypt, encrypt, wrap, answer) with the service's JOSE library
    (jwcrypto's JWA objects and JWK keys, as chalicelib/sessions.py) and no check at all: no strict
    parse, no CSRF, no AAD, no policy, no key lookup, no access line or metrics. What is left between
    it and the floor is Chalice, jwcrypto's wrappers and the JSON/base64 a JWE cannot do without."""

    def __init__(self, private_pem: str):
        from cryptography.hazmat.primitives import serialization

        private = serialization.load_pem_private_key(private_pem.encode(), password=None)
        private_jwk, public_jwk = _jwk(private), _jwk(private.public_key())
        wrap, content = _jwa()
        app = _reference_app("unchecked-refresh")

        @app.route("/api/v1/token/refresh", methods=["POST"])
        def refresh():
            document = json.loads(json.loads(app.current_request.raw_body)["jweToken"])
            aad = f"{document['protected']}.{document['aad']}".encode("ascii")
            cek = wrap.unwrap(private_jwk, 256, b64url_decode(document["encrypted_key"]), None)
            plaintext = content.decrypt(cek, aad, b64url_decode(document["iv"]), b64url_decode(document["ciphertext"]),
                                        b64url_decode(document["tag"]))
            wrapped = wrap.wrap(public_jwk, 256, None, None)
            iv, ciphertext, tag = content.encrypt(wrapped["cek"], aad, plaintext)
            return _answer({"protected": document["protected"], "aad": document["aad"],
                            "encrypted_key": b64url(wrapped["ek"]), "iv": b64url(iv),
                            "ciphertext": b64url(ciphertext), "tag": b64url(tag)})

        self.app = app

    def __call__(self, pair) -> dict:
        return self.app(*pair)


class UncheckedLogin:
    """A reference, not the service: a Chalice route that posts the TokenReview on the review
    floor's kept-alive connection, reads `authenticated`, and mints with the service's JOSE library
    (jwcrypto's JWA objects: AES-GCM, RSA wrap; base64, JSON), with no other check: no CSRF, no body
    or answer validation, no issuer check, no policy, no audit or access line, no metrics, no
    kubernetes client."""

    def __init__(self, review_floor: "ReviewFloor", audiences: list[str]):
        app = _reference_app("unchecked-login")
        protected = b64url(b'{"alg":"RSA-OAEP-256","enc":"A256GCM"}')
        public_jwk = _jwk(review_floor.crypto.public)
        wrap, content = _jwa()

        @app.route("/api/v1/login", methods=["POST"])
        def login():
            token = json.loads(app.current_request.raw_body)["token"]
            review_floor.review(json.dumps({"spec": {"token": token, "audiences": audiences}}).encode())
            aad = b64url(json.dumps({"iat": "2026-01-01T00:00:00Z"}).encode())
            wrapped = wrap.wrap(public_jwk, 256, None, None)
            iv, ciphertext, tag = content.encrypt(wrapped["cek"], f"{protected}.{aad}".encode("ascii"),
                                                  json.dumps({"token": token}).encode())
            return _answer({"protected": protected, "aad": aad, "encrypted_key": b64url(wrapped["ek"]),
                            "iv": b64url(iv), "ciphertext": b64url(ciphertext), "tag": b64url(tag)})

        self.app = app

    def __call__(self, pair) -> dict:
        return self.app(*pair)


def check_answer(response: dict) -> None:
    if response.get("statusCode") != 200:
        raise AssertionError(f"expected 200, got {response.get('statusCode')}: {str(response.get('body'))[:200]}")
    body = json.loads(response["body"])
    if not body.get("jweToken"):
        raise AssertionError(f"no jweToken in the answer: {str(body)[:200]}")


# ---------------------------------------------------------------- floors


def read_private_pem(config: dict) -> str:
    """The current key's PEM, read from the moto server as the service reads it (untimed set-up)."""
    import boto3

    client = boto3.client("secretsmanager", endpoint_url=config["moto_url"], region_name="us-east-1")
    answer = client.get_secret_value(SecretId=config["secret_id"], VersionStage="AWSCURRENT")
    return json.loads(answer["SecretString"])["priv"]


class CryptoFloor:
    """One RSA-OAEP-256 unwrap + one AES-256-GCM decrypt of a presented session token, then a fresh
    CEK: one AES-256-GCM encrypt + one RSA-OAEP-256 wrap. Same 2048-bit key, same payload, same AAD.
    No JSON, no base64: the pieces are decoded once, at set-up."""

    def __init__(self, private_pem: str, jwe_text: str):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aesgcm = AESGCM
        self.private = serialization.load_pem_private_key(private_pem.encode(), password=None)
        self.public = self.private.public_key()
        self.oaep = _oaep()
        document = json.loads(jwe_text)
        self.encrypted_key = b64url_decode(document["encrypted_key"])
        self.iv = b64url_decode(document["iv"])
        self.sealed = b64url_decode(document["ciphertext"]) + b64url_decode(document["tag"])
        self.aad = (document["protected"] + "." + document["aad"]).encode("ascii")  # RFC 7516 5.1 step 14
        self.plaintext = self.unwrap_decrypt()
        if not json.loads(self.plaintext).get("token"):
            raise AssertionError("the floor did not open the app's token")

    def unwrap_decrypt(self) -> bytes:
        cek = self.private.decrypt(self.encrypted_key, self.oaep)
        return self._aesgcm(cek).decrypt(self.iv, self.sealed, self.aad)

    def encrypt_wrap(self, plaintext: bytes) -> tuple[bytes, bytes]:
        cek, iv = os.urandom(32), os.urandom(12)
        sealed = self._aesgcm(cek).encrypt(iv, plaintext, self.aad)
        return self.public.encrypt(cek, self.oaep), sealed

    def __call__(self, _=None):
        return self.encrypt_wrap(self.unwrap_decrypt())


class ReviewFloor:
    """The same TokenReview POST the kubernetes client sends (body, bearer, CA-verified TLS), over one
    kept-alive urllib3 connection, its answer parsed; then one mint as raw cryptography
    (AES-256-GCM encrypt + RSA-OAEP-256 wrap of {"token": ...})."""

    def __init__(self, server: dict, crypto: CryptoFloor):
        import urllib3
        from urllib.parse import urlsplit

        url = urlsplit(server["url"])
        self.pool = urllib3.HTTPSConnectionPool(
            url.hostname, url.port, maxsize=1, block=True, retries=False,
            timeout=urllib3.Timeout(connect=5, read=5), cert_reqs="CERT_REQUIRED",
            ca_cert_data=base64.b64decode(server["ca_data"]).decode(),
        )
        self.body = json.dumps({"spec": {"token": server["sa_token"], "audiences": server["audiences"]}}).encode()
        self.headers = {
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": "bench-floor",
            "Authorization": "Bearer " + server["reviewer_token"],
        }
        self.crypto = crypto
        self.plaintext = json.dumps({"token": server["sa_token"]}, separators=(",", ":")).encode()

    def review(self, body: bytes | None = None) -> dict:
        response = self.pool.urlopen("POST", TOKENREVIEW_PATH, body=body or self.body, headers=self.headers)
        status = json.loads(response.data)["status"]
        if response.status != 201 or not status.get("authenticated"):
            raise AssertionError(f"floor TokenReview: HTTP {response.status} {status}")
        return status

    def __call__(self, _=None):
        self.review()
        return self.crypto.encrypt_wrap(self.plaintext)

    @property
    def connections(self) -> int:
        return self.pool.num_connections
