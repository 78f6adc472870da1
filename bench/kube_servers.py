"""The fake TLS Kubernetes API servers of a benchmark run, in a process of their own.

Run by bench.world (``python -m bench.kube_servers NAME...``). Each NAME is a FakeKubeApiServer
(demo/kube_apiserver.py) on 127.0.0.1 with a ServiceAccount, a reviewer and a ServiceAccount
token. Keeping the servers out of the measured process means their work (TLS, HTTP parsing, RS256
verification) runs on the other core instead of competing for the measured interpreter's GIL.

Protocol, one JSON line each way: first out is {NAME: {url, ca_data, reviewer_token, sa_token,
audiences}}; then commands on stdin: "handshakes" -> {NAME: completed TLS handshakes},
"reviews" -> {NAME: TokenReviews answered}, "reset" -> {} (counters to zero), "exit" or EOF ends.
The process also ends by itself after --max-seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from demo.kube_apiserver import FakeKubeApiServer  # noqa: E402

NAMESPACE, ACCOUNT = "kubernetes-dashboard", "bench-user"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("names", nargs="+")
    parser.add_argument("--max-seconds", type=int, default=900)
    parser.add_argument("--token-ttl", type=int, default=7200)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(args.max_seconds)
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    servers = {name: FakeKubeApiServer(name=name).start() for name in args.names}
    state = {}
    for name, kube in servers.items():
        kube.create_service_account(NAMESPACE, ACCOUNT)
        state[name] = {
            "url": kube.url,
            "ca_data": kube.ca_data,
            "reviewer_token": kube.new_reviewer(),
            "sa_token": kube.issue_token(NAMESPACE, ACCOUNT, expires_in=args.token_ttl),
            "audiences": kube.default_audiences,
        }
    protocol.write(json.dumps(state) + "\n")
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "handshakes":
                protocol.write(json.dumps({n: k.handshakes for n, k in servers.items()}) + "\n")
            elif command == "reviews":
                protocol.write(json.dumps({n: k.review_count for n, k in servers.items()}) + "\n")
            elif command == "reset":
                for kube in servers.values():
                    kube.reset_counters()
                protocol.write("{}\n")
            elif command == "exit":
                break
            else:
                protocol.write(json.dumps({"error": f"unknown command {command[:40]!r}"}) + "\n")
    finally:
        for kube in servers.values():
            kube.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
