"""Log records are scrubbed whichever format Lambda writes them in.

Lambda's text format prints the (scrubbed) traceback text; its JSON format
(AWS_LAMBDA_LOG_FORMAT=JSON) reads the exception object itself for errorMessage. Both are checked
with the Lambda runtime's own formatter (awslambdaric), the handler Lambda installs.
"""
from __future__ import annotations

import io
import json
import logging

import pytest
from awslambdaric.lambda_runtime_log_utils import JsonFormatter

from chalicelib import logs

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
