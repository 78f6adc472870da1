"""One Lambda SnapStart snapshot and two containers restored from it, emulated with os.fork.

Only the SnapStart service itself is emulated (it cannot run here): what Lambda does is initialise
the function once (AWS_LAMBDA_INITIALIZATION_TYPE=snap-start), run the runtime hooks registered with
snapshot_restore_py.register_before_snapshot, snapshot the memory, and in every container restored
from it run the hooks registered with register_after_restore before the first invocation. Here the
"snapshot" is this process after its initialisation, and each "restored container" is a fork of it
that runs the after-restore hooks (read from snapshot_restore_py, as the runtime reads them) and then
serves real invocations: `app.app(event, context)` with API Gateway's proxy events.

    python -m tests.fakes.snapstart_container

stdout carries the protocol, one JSON line each:
  1. after initialisation: {"initialised": true, "kubernetes_imported": ..., "clusters": {name:
     {"client": bool, "connections": n}}, "secrets_manager_client": {"built": bool,
     "credentials_resolved": bool}, "keys_fetched": bool}
  2. the process then waits for a line "restore <cluster> <login token> [<env JSON>]" on stdin (the
     test reads the counters of what it runs in between: nothing may have been asked of anything),
     forks one container at a time, and each answers {"pid", "random", "restored_at_ms", "csrf",
     "jweToken", "statuses", "secrets_manager_client_builds"}. The env JSON, if given, is set in each
     restored container before its hooks run ("{container}" in a value becomes its number, 1 or 2):
     an environment that changed between the snapshot and the restore.
  3. {"done": true}
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import time

from tests.fakes.lambda_container import LambdaContext, api_gateway_event

RESTORED_CONTAINERS = 2


def _invoke(app, event: dict) -> dict:
    answer = app.app(event, LambdaContext())
    return {"status": answer["statusCode"], "body": json.loads(answer["body"])}


def _serve(app, cluster: str, login_token: str, random_state: object, env: dict[str, str]) -> dict:
    """One restored container: the after-restore hooks, as the runtime runs them, then a login."""
    import random

    import snapshot_restore_py

    from chalicelib import aws_clients

    os.environ.update(env)

    # A fork reseeds Python's `random` in the child (random registers that with os.register_at_fork);
    # a SnapStart restore does not: the memory comes back as it was. Put the snapshot's state back,
    # so only the service's own after-restore hook can make the containers' draws differ.
    random.setstate(random_state)
    restored_at_ms = int(time.time() * 1000)
    for hook, args, kwargs in snapshot_restore_py.get_after_restore():
        hook(*args, **kwargs)
    prefix, params = "/clusters/{cluster}", {"cluster": cluster}
    csrf = _invoke(app, api_gateway_event("GET", prefix + "/api/v1/csrftoken/{action}", {**params, "action": "login"}))
    login = _invoke(app, api_gateway_event(
        "POST", prefix + "/api/v1/login", params,
        {"Content-Type": "application/json", "X-CSRF-TOKEN": csrf["body"]["token"]},
        json.dumps({"token": login_token}),
    ))
    return {
        "pid": os.getpid(),
        "random": random.random(),  # the restored container's next draw from Python's `random`
        "restored_at_ms": restored_at_ms,
        "csrf": csrf["body"]["token"],
        "jweToken": login["body"].get("jweToken"),
        "statuses": [csrf["status"], login["status"]],
        # 1: the client the snapshot holds is the one used (the cache's single miss was before the fork)
        "secrets_manager_client_builds": aws_clients.secrets_manager.cache_info().misses,
    }


def main() -> int:
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    # Lambda's initialisation phase: the handler's module, imported once.
    app = importlib.import_module("app")
    from chalicelib import aws_clients

    built = app.auth()  # already built by the import under snap-start: this only reads the cache
    registry = built._registry()
    clusters = {}
    for name, cluster in registry.clusters.items():
        connection = cluster._connection
        clusters[name] = {
            "client": connection is not None,
            "connections": 0 if connection is None else connection.pool.num_connections,
        }
    protocol.write(json.dumps({
        "initialised": True,
        "prepared": app.auth.cache_info().currsize == 1 and app.auth.cache_info().hits == 1,
        "kubernetes_imported": "kubernetes" in sys.modules,
        "clusters": clusters,
        "secrets_manager_client": {
            "built": aws_clients.built(),
            "credentials_resolved": aws_clients.built()
            and aws_clients.credentials_of(aws_clients.secrets_manager()).resolved,
        },
        "keys_fetched": built._keys._keys is not None,
    }) + "\n")

    import snapshot_restore_py

    for hook, args, kwargs in snapshot_restore_py.get_before_snapshot():
        hook(*args, **kwargs)
    command = sys.stdin.readline().split(maxsplit=3)
    if not command or command[0] != "restore":
        return 1
    cluster, login_token = command[1], command[2]
    env_template = json.loads(command[3]) if len(command) > 3 else {}
    import random

    random_state = random.getstate()  # in the snapshot
    time.sleep(0.05)  # the snapshot ages: a restored container's clock is not the snapshot's
    for number in range(1, RESTORED_CONTAINERS + 1):  # one at a time, as two containers started one after the other
        env = {name: value.replace("{container}", str(number)) for name, value in env_template.items()}
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # a container restored from the snapshot
            os.close(read)
            try:
                result = _serve(app, cluster, login_token, random_state, env)
            except BaseException as error:  # noqa: BLE001  reported, never raised into the parent's code
                result = {"error": repr(error)}
            with os.fdopen(write, "w") as out:
                out.write(json.dumps(result))
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as answer:
            protocol.write(answer.read() + "\n")
        os.waitpid(pid, 0)
        time.sleep(0.005)
    protocol.write(json.dumps({"done": True}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
