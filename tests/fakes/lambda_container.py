"""A stand-in for one warm AWS Lambda container running the Chalice app, in its own process.

Why this exists: the service keeps state per container (settings, the key cache, one kubernetes
ApiClient per cluster) and some of its promises are about many containers at once: a race-free
key bootstrap, a rotation that every container picks up without logging anyone out. Threads in
one interpreter share module state and the GIL, so they cannot show that; separate processes can.

The child process (``python -m tests.fakes.lambda_container``) does what the Lambda Python runtime
does with a Chalice deployment (handler ``app.app``):

* INIT: imports ``app`` once (module-level code only, as Lambda's init phase), optionally after
  pre-importing heavy libraries (``LAMBDA_CONTAINER_PRELOAD``) so that N containers reach their
  first invocation at the same moment;
* optionally waits at a barrier: until the file ``LAMBDA_CONTAINER_START_FILE`` exists, or, with
  ``LAMBDA_CONTAINER_WAIT_GO=1``, until the line ``go`` arrives on stdin
  (``LAMBDA_CONTAINER_IMPORT_AFTER_GO=1`` moves the import itself behind the barrier);
* INVOKE: for each JSON line on stdin builds the API Gateway REST proxy event API Gateway would
  send (resource = the route template, pathParameters, headers incl. Content-Type, body,
  isBase64Encoded, requestContext with resourcePath/httpMethod/stage) and calls
  ``app.app(event, context)`` with a Lambda-like context, one request at a time, as Lambda does.

Protocol: one JSON object per line in, one per line out (the first line out is
``{"ready": true, "pid": ..., "init_ms": ...}``).

    {"op": "login", "cluster": null | "name", "token": "<SA JWT>", "csrf": optional X-CSRF-TOKEN}
    {"op": "refresh", "cluster": null | "name", "jweToken": "...", "csrf": optional}
    {"op": "csrf", "action": "login" | "token", "cluster": null | "name"}
    {"op": "http", "method": "GET", "resource": "/api/v1/login/modes", "pathParameters": {...},
     "headers": {...}, "body": "..." | null}
    {"op": "exit"}
  -> {"id": <echoed>, "status": 200, "headers": {...}, "body": <JSON or text>, "ms": <handler time>,
      "t0": <wall clock at start>, "t1": <wall clock at end>, "seq": <n-th invocation>}

Anything the app prints or logs goes to stderr; stdout carries only the protocol. The child
lives at most ``LAMBDA_CONTAINER_MAX_SECONDS`` (default 600) and exits on EOF of stdin, so a
killed test run leaves nothing behind.

The parent side is :class:`Container`: ``Container.start(env)``, ``.call(op) -> dict``,
``.send(op)`` / ``.receive()`` to pipeline, ``.go()``, ``.close()``.
"""
from __future__ import annotations

import base64
import importlib
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any, Mapping

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STAGE = "api"  # the API Gateway stage chalice deploys to
FUNCTION_NAME = "dashboard-auth-prod"
MEMORY_MB = 1769  # the configured lambda_memory_size (.chalice/config.json)
TIMEOUT_MS = 25_000  # the function's configured timeout (.chalice/config.json: 25 s, under API Gateway's 29 s)
MAX_COMMANDS = 1_000_000
BARRIER_TIMEOUT = 120.0
DEFAULT_MAX_SECONDS = 600
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    # never read a developer's ~/.aws, never ask an instance metadata service
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")


def container_base_env() -> dict[str, str]:
    """What every container process starts from: this machine's basics, fake AWS credentials, the project."""
    env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
    env.update(FAKE_AWS_ENV)
    env.update({"PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1"})
    return env


# =========================================================================== the event API Gateway sends


def api_gateway_event(
    method: str,
    resource: str,
    path_parameters: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    body: str | bytes | None = None,
    stage: str = STAGE,
) -> dict:
    """An API Gateway REST API (v1) Lambda proxy event for `resource` (a route template)."""
    params = dict(path_parameters or {})
    path = resource
    for name, value in params.items():
        path = path.replace("{" + name + "}", value)
    sent = {
        "Accept": "application/json, text/plain, */*",
        "Host": "abcdef1234.execute-api.us-east-1.amazonaws.com",
        "User-Agent": "lambda-container-test",
        "X-Forwarded-For": "127.0.0.1",
        "X-Forwarded-Port": "443",
        "X-Forwarded-Proto": "https",
        **(headers or {}),
    }
    is_base64 = isinstance(body, bytes)
    now = time.time()
    return {
        "resource": resource,
        "path": path,
        "httpMethod": method,
        "headers": sent,
        "multiValueHeaders": {name: [value] for name, value in sent.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": params or None,
        "stageVariables": None,
        "requestContext": {
            "resourceId": "abc123",
            "resourcePath": resource,
            "httpMethod": method,
            "extendedRequestId": uuid.uuid4().hex[:16],
            "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "path": f"/{stage}{path}",
            "accountId": "123456789012",
            "protocol": "HTTP/1.1",
            "stage": stage,
            "domainPrefix": "abcdef1234",
            "requestTimeEpoch": int(now * 1000),
            "requestId": str(uuid.uuid4()),
            "identity": {"sourceIp": "127.0.0.1", "userAgent": sent["User-Agent"]},
            "domainName": sent["Host"],
            "apiId": "abcdef1234",
        },
        "body": base64.b64encode(body).decode("ascii") if is_base64 else body,
        "isBase64Encoded": is_base64,
    }


class LambdaContext:
    """The attributes and method of the Python runtime's context object."""

    def __init__(self, timeout_ms: int = TIMEOUT_MS):
        self.function_name = FUNCTION_NAME
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{FUNCTION_NAME}"
        self.memory_limit_in_mb = str(MEMORY_MB)
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{FUNCTION_NAME}"
        self.log_stream_name = time.strftime("%Y/%m/%d/[$LATEST]") + uuid.uuid4().hex
        self.identity = None
        self.client_context = None
        self._deadline = time.monotonic() + timeout_ms / 1000

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _prefix(cluster: str | None) -> tuple[str, dict]:
    return ("/clusters/{cluster}", {"cluster": cluster}) if cluster else ("", {})


def event_for(command: Mapping[str, Any]) -> dict:
    """The API Gateway event for one protocol command."""
    op = command.get("op")
    prefix, params = _prefix(command.get("cluster"))
    headers = dict(command.get("headers") or {})
    if command.get("csrf"):
        headers["X-CSRF-TOKEN"] = command["csrf"]
    if op in ("login", "refresh"):
        route = "/api/v1/login" if op == "login" else "/api/v1/token/refresh"
        body = {"token": command["token"]} if op == "login" else {"jweToken": command["jweToken"]}
        headers.setdefault("Content-Type", "application/json")
        return api_gateway_event("POST", prefix + route, params, headers, json.dumps(body))
    if op == "csrf":
        return api_gateway_event(
            "GET", prefix + "/api/v1/csrftoken/{action}", {**params, "action": command["action"]}, headers
        )
    if op == "http":
        return api_gateway_event(
            command["method"], command["resource"], command.get("pathParameters"), headers, command.get("body")
        )
    raise ValueError(f"unknown op {op!r}")


# =========================================================================== the child process


def _child_main() -> int:
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)  # whatever the app or a library prints goes to stderr, never into the protocol
    sys.stdout = sys.stderr
    max_seconds = int(os.environ.get("LAMBDA_CONTAINER_MAX_SECONDS", DEFAULT_MAX_SECONDS))
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(max_seconds)  # a hard bound on the container's life, whatever the parent does

    def reply(document: dict) -> None:
        protocol.write(json.dumps(document, separators=(",", ":")) + "\n")

    def init() -> object:
        for module in filter(None, os.environ.get("LAMBDA_CONTAINER_PRELOAD", "").split(",")):
            importlib.import_module(module.strip())
        return importlib.import_module("app")

    def barrier() -> None:
        start_file = os.environ.get("LAMBDA_CONTAINER_START_FILE")
        deadline = time.monotonic() + BARRIER_TIMEOUT
        if start_file:
            while not os.path.exists(start_file):
                if time.monotonic() > deadline:
                    raise SystemExit(f"start file {start_file} did not appear within {BARRIER_TIMEOUT} s")
                time.sleep(0.002)
        elif os.environ.get("LAMBDA_CONTAINER_WAIT_GO") == "1":
            line = sys.stdin.readline()  # the parent's timeout and SIGALRM bound this wait
            if line.strip() != "go":
                raise SystemExit(f"expected 'go' at the barrier, got {line[:40]!r}")

    started = time.perf_counter()
    import_after_go = os.environ.get("LAMBDA_CONTAINER_IMPORT_AFTER_GO") == "1"
    module = None if import_after_go else init()
    init_ms = (time.perf_counter() - started) * 1000
    reply({"ready": True, "pid": os.getpid(), "init_ms": round(init_ms, 3)})
    barrier()
    if module is None:
        module = init()
    handler = module.app  # the deployed handler is app.app

    for seq in range(1, MAX_COMMANDS + 1):
        line = sys.stdin.readline()
        if not line:
            return 0  # the parent closed stdin: the container is reclaimed
        line = line.strip()
        if not line or line == "go":
            continue
        try:
            command = json.loads(line)
            if command.get("op") == "exit":
                return 0
            event = event_for(command)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            reply({"error": f"bad command: {type(error).__name__}: {error}", "seq": seq})
            continue
        t0 = time.time()
        begin = time.perf_counter()
        try:
            response = handler(event, LambdaContext())
        except Exception as error:  # an invocation error, as Lambda would report it (API Gateway: 502)
            elapsed = (time.perf_counter() - begin) * 1000
            reply({"id": command.get("id"), "status": 502, "error": type(error).__name__,
                   "ms": round(elapsed, 3), "t0": t0, "t1": time.time(), "seq": seq})
            continue
        elapsed = (time.perf_counter() - begin) * 1000
        body = response.get("body")
        if response.get("isBase64Encoded") and isinstance(body, str):
            body = base64.b64decode(body).decode("utf-8", "replace")
        headers = {**response.get("headers", {}), **response.get("multiValueHeaders", {})}
        content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
        if isinstance(body, str) and (not content_type or str(content_type).startswith("application/json")):
            try:
                body = json.loads(body)
            except ValueError:
                pass
        reply({"id": command.get("id"), "status": response.get("statusCode"), "headers": headers, "body": body,
               "ms": round(elapsed, 3), "t0": t0, "t1": time.time(), "seq": seq})
    return 0


# =========================================================================== the parent side


class ContainerError(RuntimeError):
    """The container process died, answered nonsense, or did not answer in time."""


_EOF = object()


class Container:
    """The parent's handle on one container process."""

    def __init__(self, process: subprocess.Popen, log, name: str):
        self.process = process
        self.name = name
        self.pid = process.pid
        self.ready_info: dict | None = None
        self._log = log
        self._lines: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name=f"{name}-reader", daemon=True)
        self._reader.start()

    @classmethod
    def start(
        cls,
        env: Mapping[str, str],
        *,
        wait_for_go: bool = False,
        start_file: str | None = None,
        import_after_go: bool = False,
        preload: tuple[str, ...] = (),
        max_seconds: int = DEFAULT_MAX_SECONDS,
        name: str = "container",
    ) -> "Container":
        """Start a container process configured by `env` (on top of fake AWS credentials)."""
        child_env = container_base_env()
        child_env.update({k: str(v) for k, v in env.items() if v is not None})
        child_env["LAMBDA_CONTAINER_MAX_SECONDS"] = str(max_seconds)
        if wait_for_go:
            child_env["LAMBDA_CONTAINER_WAIT_GO"] = "1"
        if start_file:
            child_env["LAMBDA_CONTAINER_START_FILE"] = start_file
        if import_after_go:
            child_env["LAMBDA_CONTAINER_IMPORT_AFTER_GO"] = "1"
        if preload:
            child_env["LAMBDA_CONTAINER_PRELOAD"] = ",".join(preload)
        log = tempfile.TemporaryFile(prefix=f"{name}-", suffix=".log")
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.lambda_container"],
            cwd=ROOT,  # Lambda runs in the function's directory (/var/task)
            env=child_env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        return cls(process, log, name)

    # ------------------------------------------------------------------ protocol

    def _read(self) -> None:
        stream = self.process.stdout
        for _ in range(MAX_COMMANDS + 2):
            line = stream.readline()
            if not line:
                break
            self._lines.put(line)
        self._lines.put(_EOF)

    def _next(self, timeout: float) -> dict:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise ContainerError(f"{self.name} (pid {self.pid}) gave no answer within {timeout} s") from None
        if line is _EOF:
            self._lines.put(_EOF)
            self.process.wait(timeout=5)
            raise ContainerError(
                f"{self.name} (pid {self.pid}) exited with {self.process.returncode}; its log ends:\n{self.log()[-3000:]}"
            )
        try:
            return json.loads(line)
        except ValueError:
            raise ContainerError(f"{self.name} wrote a line that is not JSON: {line[:200]!r}") from None

    def wait_ready(self, timeout: float = 60.0) -> dict:
        """Wait for the end of INIT (the import of app); returns {"ready", "pid", "init_ms"}."""
        if self.ready_info is None:
            info = self._next(timeout)
            if not info.get("ready"):
                raise ContainerError(f"{self.name}: expected the ready line, got {info}")
            self.ready_info = info
        return self.ready_info

    def _write(self, text: str) -> None:
        try:
            self.process.stdin.write(text)
            self.process.stdin.flush()
        except (BrokenPipeError, ValueError, OSError) as error:
            raise ContainerError(f"{self.name} (pid {self.pid}) is gone: {type(error).__name__}") from None

    def go(self) -> None:
        """Release the start barrier (for containers started with wait_for_go)."""
        self._write("go\n")

    def send(self, command: Mapping[str, Any]) -> None:
        """Queue one invocation without waiting; pair every send() with one receive()."""
        self._write(json.dumps(command, separators=(",", ":")) + "\n")

    def receive(self, timeout: float = 60.0) -> dict:
        self.wait_ready(timeout)
        answer = self._next(timeout)
        if "error" in answer and "status" not in answer:
            raise ContainerError(f"{self.name} refused a command: {answer['error']}")
        return answer

    def call(self, command: Mapping[str, Any], timeout: float = 60.0) -> dict:
        """One invocation, answered: {"status", "headers", "body", "ms", "t0", "t1", "seq"}."""
        with self._lock:
            self.send(command)
            return self.receive(timeout)

    # ------------------------------------------------------------------ lifecycle

    def log(self) -> str:
        """Everything the container wrote to stderr so far (its CloudWatch log)."""
        self._log.flush()
        self._log.seek(0)
        text = self._log.read().decode("utf-8", "replace")
        self._log.seek(0, os.SEEK_END)
        return text

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def ask_to_exit(self) -> None:
        """Send the exit command if the process still runs; a closed pipe means it is going anyway."""
        if self.process.poll() is None:
            try:
                self.process.stdin.write('{"op":"exit"}\n')
                self.process.stdin.flush()
            except (BrokenPipeError, ValueError, OSError):
                pass

    def close(self, timeout: float = 10.0) -> int | None:
        """Ask the container to exit, then make sure it has (this process only, by its pid)."""
        self.ask_to_exit()
        try:
            self.process.stdin.close()
        except (BrokenPipeError, ValueError, OSError):
            pass
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._reader.join(timeout=5)
        if self.process.stdout:
            self.process.stdout.close()
        return self.process.returncode

    def __enter__(self) -> "Container":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def close_all(containers: list[Container]) -> None:
    """Close many containers at once: everyone is asked first, then each is waited for."""
    for container in containers:
        container.ask_to_exit()
    for container in containers:
        container.close()


if __name__ == "__main__":
    sys.exit(_child_main())
