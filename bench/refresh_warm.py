"""1. Refresh, warm, through the real Lambda entry point, against the crypto floor.

Subject: POST /api/v1/token/refresh as an API Gateway proxy event into `app.app(event, context)`,
in a warm container (key cache filled by the warm-up), REVIEW_INTERVAL large so no TokenReview is
due, configured as deployed (CSRF enforced: every event carries the frontend's X-CSRF-TOKEN;
LOG_LEVEL=INFO), the key from the moto server (AWSCURRENT + AWSPREVIOUS).
Reference: harness.UncheckedRefresh, a Chalice route doing a refresh's unavoidable work with the
service's JOSE library (jwcrypto's JWA objects) and checking nothing; measured interleaved with the
subject. Target: median and p99 ratio to the reference <= 1.3 (what the service's own checks,
access line and metrics may cost).
Raw-crypto floor: harness.CryptoFloor on the same token with the same key (`cryptography` directly),
in the same pass; its ratio is printed, without a target.
"""
from __future__ import annotations

import sys

from bench import harness
from bench.stats import Row, Subject, interleave, ms, paired, summary, timed_row

TARGET = 1.3  # against the no-checks reference
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
    interleave([subject, unchecked, floor], rounds=rounds, batch=batch)
    # The bare route in a pass of its own, with a floor of its own.
    interleave([bare, reference_floor], rounds=rounds // 4, batch=batch)
    return {"subject": summary(subject.times), "floor": summary(floor.times), "paired": paired(subject, floor, batch),
            "paired_reference": paired(subject, unchecked, batch),
            "bare": summary(bare.times), "unchecked": summary(unchecked.times),
            "reference_floor": summary(reference_floor.times),
            "cpu_ms": subject.cpu_per_call(), "unchecked_cpu_ms": unchecked.cpu_per_call(),
            "kubernetes_imported": "kubernetes" in sys.modules, "max_rss_mb": harness.max_rss_mb()}


def run(world) -> tuple[list[Row], list[str], dict]:
    result = world.run_child(["bench.refresh_warm", "--child"], world.config())
    s, f = result["subject"], result["floor"]
    u = result["unchecked"]
    rows = [
        timed_row("1. refresh warm, median, vs no-checks reference", s["median"], u["median"], TARGET),
        timed_row("1. refresh warm, p99, vs no-checks reference p99", s["p99"], u["p99"], TARGET),
        timed_row("1. refresh warm, median, vs raw crypto floor", s["median"], f["median"], None),
        timed_row("1. reference (no checks, jwcrypto JWA) vs raw crypto floor", u["median"], f["median"], None),
    ]
    pr, pf = result["paired_reference"], result["paired"]
    notes = [f"refresh warm: {s['n']} calls each of the handler, the no-checks reference and the raw crypto floor, "
             f"interleaved in batches of {BATCH}; floor = RSA-OAEP-256 unwrap + AES-256-GCM decrypt + AES-256-GCM "
             f"encrypt + RSA-OAEP-256 wrap (cryptography); warm container imported kubernetes: "
             f"{result['kubernetes_imported']}; per-batch median ratios (drift-free check): to the reference median "
             f"{pr['median']:.2f} (IQR {pr['p25']:.2f}-{pr['p75']:.2f}), to the floor median {pf['median']:.2f} "
             f"(IQR {pf['p25']:.2f}-{pf['p75']:.2f}) over {pf['rounds']} rounds; reference p99/floor p99 "
             f"{u['p99'] / f['p99']:.2f}; CPU per call: handler {result['cpu_ms']:.3f} ms, reference "
             f"{result['unchecked_cpu_ms']:.3f} ms",
             f"refresh warm, for reference: a bare Chalice app (one route answering a fixed body of the same size, "
             f"same events, nothing of ours) costs {ms(result['bare']['median'])} per call, "
             f"{result['bare']['median'] / result['reference_floor']['median']:.2f} of the floor by itself; "
             f"the handler's gap to the reference is {ms(s['median'] - u['median'])} per call",
             "refresh warm, reference with no checks: harness.UncheckedRefresh, a Chalice route that reads the body "
             "and the JWE, unwraps, decrypts, encrypts, wraps (jwcrypto's JWA objects, as the service) and answers, "
             "checking nothing (no strict parse, CSRF, AAD, policy, key lookup, access line or metrics)"]
    return rows, notes, result


if __name__ == "__main__":
    harness.child_main(child)
