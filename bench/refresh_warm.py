"""1. Refresh, warm, through the real Lambda entry point, against the crypto floor.

Subject: POST /api/v1/token/refresh as an API Gateway proxy event into `app.app(event, context)`,
in a warm container (key cache filled by the warm-up), REVIEW_INTERVAL large so no TokenReview is
due, configured as deployed (CSRF enforced: every event carries the frontend's X-CSRF-TOKEN;
LOG_LEVEL=INFO), the key from the moto server (AWSCURRENT + AWSPREVIOUS).
Floor: harness.CryptoFloor on the same token with the same key, in the same process.
Target: median and p99 ratio <= 1.15.
"""
from __future__ import annotations

import sys

from bench import harness
from bench.stats import Row, Subject, interleave, ms, paired, summary, timed_row

TARGET = 1.15
ROUNDS, BATCH = 40, 50  # 2000 calls each


def child(config: dict) -> dict:
    container = harness.Container()
    token = config["session_tokens"][config["clusters"][0]]
    command = {"op": "refresh", "jweToken": token, "csrf": config["csrf"]["token"]}
    subject = Subject("refresh", container.invoke, container.events(command), check=harness.check_answer)
    private_pem = harness.read_private_pem(config)
    floor = Subject("floor", harness.CryptoFloor(private_pem, token))
    answer_size = len(container.invoke(container.events(command)(1)[0])["body"])
    bare = Subject("bare chalice", harness.BareChalice("x" * answer_size), container.events(command))
    unchecked = Subject("unchecked refresh", harness.UncheckedRefresh(private_pem), container.events(command),
                        check=harness.check_answer)
    reference_floor = Subject("floor", floor.call)
    batch, rounds = config.get("batch", BATCH), config.get("rounds", ROUNDS)
    interleave([subject, floor], rounds=rounds, batch=batch)
    # The references in a pass of their own, so that they do not change what the figures above measure.
    interleave([unchecked, bare, reference_floor], rounds=rounds // 2, batch=batch)
    return {"subject": summary(subject.times), "floor": summary(floor.times), "paired": paired(subject, floor, batch),
            "bare": summary(bare.times), "unchecked": summary(unchecked.times),
            "reference_floor": summary(reference_floor.times),
            "kubernetes_imported": "kubernetes" in sys.modules, "max_rss_mb": harness.max_rss_mb()}


def run(world) -> tuple[list[Row], list[str]]:
    result = world.run_child(["bench.refresh_warm", "--child"], world.config())
    s, f = result["subject"], result["floor"]
    rows = [
        timed_row("1. refresh warm, median (Lambda handler)", s["median"], f["median"], TARGET),
        timed_row("1. refresh warm, p99", s["p99"], f["p99"], TARGET),
        timed_row("1. reference: refresh with no checks, median", result["unchecked"]["median"],
                  result["reference_floor"]["median"], None),
    ]
    notes = [f"refresh warm: {s['n']} calls each, interleaved in batches of {BATCH}; floor = RSA-OAEP-256 "
             f"unwrap + AES-256-GCM decrypt + AES-256-GCM encrypt + RSA-OAEP-256 wrap (cryptography); "
             f"warm container imported kubernetes: {result['kubernetes_imported']}; per-batch median ratios (drift-free "
             f"check): median {result['paired']['median']:.2f}, IQR {result['paired']['p25']:.2f}-{result['paired']['p75']:.2f} "
             f"over {result['paired']['rounds']} rounds",
             f"refresh warm, for reference: a bare Chalice app (one route answering a fixed body of the same size, "
             f"same events, nothing of ours) costs {ms(result['bare']['median'])} per call, "
             f"{result['bare']['median'] / result['reference_floor']['median']:.2f} of the floor by itself; the 1.15 target leaves "
             f"{ms(0.15 * f['median'] - result['bare']['median'])} for the service's own work "
             f"(now {ms(s['median'] - f['median'] - result['bare']['median'])})",
             "refresh warm, reference with no checks: harness.UncheckedRefresh, a Chalice route that reads the body "
             "and the JWE, unwraps, decrypts, encrypts, wraps and answers, checking nothing (no strict parse, CSRF, "
             "AAD, policy or key lookup): what Chalice and a JWE's JSON/base64 cost on top of the floor"]
    return rows, notes


if __name__ == "__main__":
    harness.child_main(child)
