"""Log records are scrubbed whichever format Lambda writes them in.

Lambda's text format prints the (scrubbed) traceback text; its JSON format
(AWS_LAMBDA_LOG_FORMAT=JSON) reads the exception object itself for errorMessage. Both are checked
with the Lambda runtime's own formatter (awslambdaric), the handler Lambda installs.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import urllib.parse

import pytest
from awslambdaric.lambda_runtime_log_utils import JsonFormatter

from chalicelib import clusters, logs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SA_TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6a3ViZS1zeXN0ZW06YWRtaW4ifQ.c2lnbmF0dXJl"


class TokenInMessage(ValueError):
    pass


@pytest.fixture
def lambda_log():
    """A logger whose records reach a handler formatted as Lambda formats them, scrubbed by logs.configure."""
    streams = {"json": io.StringIO(), "text": io.StringIO()}
    root = logging.getLogger()
    handlers = []
    for kind, stream in streams.items():
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter() if kind == "json" else logging.Formatter("%(levelname)s %(message)s"))
        handlers.append(handler)
        root.addHandler(handler)
    level = root.level
    logs.configure("INFO")
    yield logging.getLogger("chalicelib.test"), streams
    for handler in handlers:
        root.removeHandler(handler)
    root.setLevel(level)


def raise_with_token():
    raise TokenInMessage(f"could not parse {SA_TOKEN}")


def log_what_it_raises(logger: logging.Logger, raiser) -> None:
    try:
        raiser()
    except Exception:
        logger.exception("unexpected error")


def test_an_exception_carrying_a_token_is_scrubbed_in_lambdas_json_log_format(lambda_log):
    logger, streams = lambda_log
    log_what_it_raises(logger, raise_with_token)

    line = streams["json"].getvalue()
    assert SA_TOKEN not in line and SA_TOKEN.split(".")[1] not in line
    record = json.loads(line)
    assert record["errorType"] == "TokenInMessage"  # what went wrong is still there
    assert record["errorMessage"] == f"could not parse {logs.REDACTED}"
    assert any("raise_with_token" in frame for frame in record["stackTrace"])


def test_an_exception_carrying_a_token_is_scrubbed_in_the_text_format(lambda_log):
    logger, streams = lambda_log
    log_what_it_raises(logger, raise_with_token)

    text = streams["text"].getvalue()
    assert SA_TOKEN not in text
    assert "TokenInMessage: could not parse [redacted]" in text


def test_an_exception_whose_message_cannot_be_printed_still_logs(lambda_log):
    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("no")

    def raise_unprintable():
        raise Unprintable()

    logger, streams = lambda_log
    log_what_it_raises(logger, raise_unprintable)

    record = json.loads(streams["json"].getvalue())
    assert record["errorType"] == "Unprintable"
    assert record["message"] == "unexpected error"


# ---------------------------------------------------------------- SigV4 material: the EKS reviewer token
#
# An EKS reviewer token is "k8s-aws-v1." + base64url of a presigned STS GetCallerIdentity URL; whoever
# reads the URL's parts (X-Amz-Credential, X-Amz-Security-Token, X-Amz-Signature) in a log can rebuild
# the token and act as the reviewer for the URL's lifetime. STS and EKS cannot run here: presigning is
# local botocore work, so these tests presign with fake credentials and need no network.

FAKE_AWS = {
    "aws_access_key_id": "AKIAIOSFODNN7EXAMPLE",
    "aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "aws_session_token": "IQoJb3JpZ2luX2VjEXAMPLE/session+token=with/base64+chars//AAAAexample==",
}
EKS_PREFIX = "k8s-aws-v1."




def sts_client():
    import boto3

    return boto3.session.Session(region_name="eu-west-1", **FAKE_AWS).client("sts")


def presigned_url(token: str) -> str:
    encoded = token[len(EKS_PREFIX):]
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()


def sigv4_secrets(token: str) -> dict[str, str]:
    """What must never be logged, in every spelling a log line may carry it."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(presigned_url(token)).query)
    credential = query["X-Amz-Credential"][0]  # the access key id with its scope: date/region/sts/aws4_request
    session_token = FAKE_AWS["aws_session_token"]
    return {
        "the EKS token": token,
        "the EKS token without its prefix": token[len(EKS_PREFIX):],
        "the signature": query["X-Amz-Signature"][0],
        "the session token": session_token,
        "the session token, URL-encoded": urllib.parse.quote(session_token, safe=""),
        "the access key id with its scope": credential,
        "the access key id with its scope, URL-encoded": urllib.parse.quote(credential, safe=""),
        "the secret access key": FAKE_AWS["aws_secret_access_key"],
    }


def assert_none_logged(text: str, secrets: dict[str, str]) -> None:
    leaked = [what for what, value in secrets.items() if value in text]
    assert not leaked, f"in the log: {', '.join(leaked)}"


def test_an_eks_token_presigned_at_debug_leaves_no_sigv4_material_in_the_log(debug_log):
    token = clusters.eks_token("prod-eu", "eu-west-1", sts_client())
    # and what a careless line of ours could log: the token, its URL, the header it travels in
    log = logging.getLogger("chalicelib.clusters")
    log.debug("reviewer token %s", token)
    log.debug("presigned %s", presigned_url(token))
    log.debug("headers %s", {"authorization": "Bearer " + token, "url": presigned_url(token)})

    text = debug_log.getvalue()
    assert "botocore.auth DEBUG" in text  # the signer did log: there was something to withhold
    assert_none_logged(text, sigv4_secrets(token))
    assert "X-Amz-Signature=" + logs.REDACTED in text and "X-Amz-Security-Token=" + logs.REDACTED in text


def test_a_request_signed_in_its_headers_leaves_no_sigv4_material_in_the_log(debug_log):
    """The other SigV4 form (every Secrets Manager call): an Authorization header and X-Amz-Security-Token."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    token = clusters.eks_token("prod-eu", "eu-west-1", sts_client())
    request = AWSRequest(method="POST", url="https://secretsmanager.eu-west-1.amazonaws.com/", data=b"{}",
                         headers={"X-Amz-Target": "secretsmanager.GetSecretValue"})
    credentials = Credentials(FAKE_AWS["aws_access_key_id"], FAKE_AWS["aws_secret_access_key"], FAKE_AWS["aws_session_token"])
    SigV4Auth(credentials, "secretsmanager", "eu-west-1").add_auth(request)
    prepared = request.prepare()
    authorization = prepared.headers["Authorization"]
    signature = authorization.rsplit("Signature=", 1)[1]
    credential = authorization.split("Credential=", 1)[1].split(",", 1)[0]
    # botocore.endpoint prints a request this way ("Sending http request: %s"); here under a logger that is not withheld
    log = logging.getLogger("chalicelib.keys")
    log.debug("request %s", prepared)
    log.debug("headers %s", dict(prepared.headers))
    log.info("authorization: %s", authorization)

    text = debug_log.getvalue()
    assert "SignedHeaders=" in text  # the harmless parts stay readable
    assert_none_logged(text, {**sigv4_secrets(token), "the header signature": signature, "the header credential": credential})


@pytest.mark.parametrize(
    "line, kept",
    [
        ("GET /?Action=GetCallerIdentity&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20260101%2Feu-west-1%2Fsts%2Faws4_request"
         "&X-Amz-Date=20260101T000000Z&X-Amz-Security-Token=IQoJb3JpZ2lu%2Fabc%2B%3D&X-Amz-Signature=" + "ab12" * 16,
         ["X-Amz-Date=20260101T000000Z", "X-Amz-Credential=", "X-Amz-Security-Token=", "X-Amz-Signature="]),
        ("host:sts.amazonaws.com\nx-amz-security-token:IQoJb3JpZ2lu/abc+def=\n", ["host:sts.amazonaws.com"]),
        ("{'X-Amz-Security-Token': b'IQoJb3JpZ2lu/abc+def=', 'Authorization': b'AWS4-HMAC-SHA256 "
         "Credential=AKIAIOSFODNN7EXAMPLE/20260101/eu-west-1/secretsmanager/aws4_request, "
         "SignedHeaders=host;x-amz-date, Signature=" + "cd34" * 16 + "'}", ["SignedHeaders=host;x-amz-date"]),
        ('{"X-Amz-Signature": "' + "ef56" * 16 + '", "X-Amz-Expires": "60"}', ['"X-Amz-Expires": "60"']),
        ("Signature:\n" + "0a1b" * 16, ["Signature:"]),
        ("token k8s-aws-v1.aHR0cHM6Ly9zdHMuZXUtd2VzdC0xLmFtYXpvbmF3cy5jb20vP0FjdGlvbj1HZXRDYWxsZXJJZGVudGl0eQ end",
         ["token ", " end"]),
    ],
    ids=["presigned query", "canonical header", "header repr", "json", "signer output", "eks token"],
)
def test_sigv4_material_is_scrubbed_in_any_record(line, kept):
    scrubbed = logs.redact(line)
    for secret in re.findall(r"AKIAIOSFODNN7EXAMPLE[^\s,'&]*|IQoJb3JpZ2lu[^\s,'&]*|(?:ab12|cd34|ef56|0a1b){16}|k8s-aws-v1\.\w+", line):
        assert secret not in scrubbed, scrubbed
    for part in kept:
        assert part in scrubbed, scrubbed


@pytest.mark.parametrize("line", [
    "Calculating signature using v4 auth.", "Looking for credentials via: env", "Found credentials in environment variables.",
    "Event before-sign.sts.GetCallerIdentity: calling handler <function add_cluster_header>",
    "Endpoint provider result: https://sts.eu-west-1.amazonaws.com", "X-Amz-SignedHeaders=host%3Bx-k8s-aws-id",
])
def test_what_botocore_logs_around_signing_stays_readable(line):
    assert logs.redact(line) == line


def test_scrubbing_twice_changes_nothing_more():
    # Every root handler carries its own RedactingFilter, so a record may be scrubbed several times.
    line = ("X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2Fscope&X-Amz-Signature=" + "ab12" * 16 +
            " {'X-Amz-Security-Token': b'IQoJ', \"x-amz-signature\": \"ab\"} Signature:\n0a1b Bearer k8s-aws-v1.aHR0")
    once = logs.redact(line)
    assert logs.redact(once) == once
    assert once.count(logs.REDACTED) == 6, once


# ---------------------------------------------------------------- the service's own JSON lines

def test_fields_an_event_carries_are_scrubbed_like_the_message(service_lines):
    logging.getLogger("chalicelib.audit").info(
        "login refused", extra={"event": "login_refused", "user_agent": f"curl Bearer {SA_TOKEN}",
                                "audiences": ["dashboard", SA_TOKEN], "nested": {"token": SA_TOKEN}},
    )

    (line,) = service_lines()
    assert SA_TOKEN.split(".")[1] not in json.dumps(line)
    assert line["event"] == "login_refused"  # what is not secret stays readable
    assert line["user_agent"] == f"curl {logs.REDACTED}"
    assert line["audiences"] == ["dashboard", logs.REDACTED]


def test_an_exception_carrying_a_token_is_scrubbed_in_the_services_json_line(service_lines):
    log_what_it_raises(logging.getLogger("chalicelib.test"), raise_with_token)

    (line,) = service_lines()
    assert SA_TOKEN.split(".")[1] not in json.dumps(line)
    assert line["exception_name"] == "TokenInMessage"
    assert line["exception"].endswith(f"TokenInMessage: could not parse {logs.REDACTED}")  # the traceback names it


def test_the_lambda_runtimes_handler_gives_way_to_the_services_json_lines():
    """In Lambda the runtime has put its own handler on the root logger; configure() replaces it, so no
    record is written twice (once in Lambda's text format) and every line is the service's JSON."""
    program = textwrap.dedent("""
        import logging
        from awslambdaric import bootstrap
        from awslambdaric.lambda_runtime_log_utils import LogFormat
        bootstrap._setup_logging(LogFormat.TEXT, None, bootstrap.StandardLogSink())
        from chalicelib import logs
        logs.configure("INFO")
        print([type(h).__name__ for h in logging.getLogger().handlers])
        logging.getLogger("chalicelib.audit").info("key rotation observed", extra={"event": "key_rotated"})
        logging.getLogger("botocore.credentials").info("Found credentials in environment variables.")
    """)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": ROOT})

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['_ServiceHandler']"
    (line,) = [json.loads(text) for text in done.stderr.splitlines()]
    assert (line["logger"], line["event"], line["service"]) == ("chalicelib.audit", "key_rotated", "dashboard-auth")
