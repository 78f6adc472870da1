"""2. Login, warm, against the fake TLS API servers, and the handshakes it costs.

Subject: POST /api/v1/login (cluster prod-eu, the default) and POST /clusters/staging-us/api/v1/login,
alternately, through `app.app(event, context)` in one warm container: a real TokenReview by the
kubernetes client over TLS to the fake API server process, then a mint.
Floor: harness.ReviewFloor, the same TokenReview POST over one kept-alive urllib3 connection to a
twin fake server (so the clusters' counters see the app's connections only) + a raw-cryptography mint.
Targets: median and p99 ratio <= 1.3; exactly one TLS handshake per cluster for the container's
whole life (warm-up included), read from FakeKubeApiServer.handshakes.
"""
from __future__ import annotations

from bench import harness
from bench.stats import Row, Subject, interleave, paired, summary, timed_row

TARGET = 1.3
ROUNDS, BATCH = 30, 40  # 1200 calls each
WARMUP = 20


def child(config: dict) -> dict:
    container = harness.Container()
    default, other = config["clusters"]
    commands = [
        {"op": "login", "token": config["servers"][default]["sa_token"], "csrf": config["csrf"]["login"]},
        {"op": "login", "cluster": other, "token": config["servers"][other]["sa_token"], "csrf": config["csrf"]["login"]},
    ]
    subject = Subject("login", container.invoke, container.alternating(commands), check=harness.check_answer)
    crypto = harness.CryptoFloor(harness.read_private_pem(config), config["session_tokens"][default])
    floor_server = config["servers"][config["floor_server"]]
    review_floor = harness.ReviewFloor(floor_server, crypto)
    floor = Subject("floor", review_floor)
    # the reference shares the floor's connection, so the floor server still sees one handshake
    unchecked = Subject("unchecked login", harness.UncheckedLogin(review_floor, floor_server["audiences"]),
                        container.events({"op": "login", "token": floor_server["sa_token"]}), check=harness.check_answer)
    reference_floor = Subject("floor", review_floor)
    batch, rounds = config.get("batch", BATCH), config.get("rounds", ROUNDS)
    interleave([subject, floor], rounds=rounds, batch=batch, warmup=WARMUP)
    # The reference in a pass of its own, so that it does not change what the figures above measure.
    interleave([unchecked, reference_floor], rounds=rounds // 2, batch=batch)
    return {"subject": summary(subject.times), "floor": summary(floor.times), "paired": paired(subject, floor, batch),
            "unchecked": summary(unchecked.times), "reference_floor": summary(reference_floor.times),
            "floor_connections": review_floor.connections, "max_rss_mb": harness.max_rss_mb(),
            "logins": len(subject.times) + WARMUP}


def run(world) -> tuple[list[Row], list[str], dict]:
    world.reset_counters()
    result = world.run_child(["bench.login_warm", "--child"], world.config())
    handshakes = world.handshakes()
    s, f = result["subject"], result["floor"]
    per_cluster = [handshakes[name] for name in world.config()["clusters"]]
    floor_hs = handshakes[world.config()["floor_server"]]
    rows = [
        timed_row("2. login warm, median (Lambda handler)", s["median"], f["median"], TARGET),
        timed_row("2. login warm, p99", s["p99"], f["p99"], TARGET),
        timed_row("2. reference: login with no checks, median", result["unchecked"]["median"],
                  result["reference_floor"]["median"], None),
        Row("2. login: TLS handshakes per cluster, whole run",
            " / ".join(f"{n}={c}" for n, c in zip(world.config()["clusters"], per_cluster)),
            f"{floor_hs} (urllib3 pool)", f"{max(per_cluster) / max(floor_hs, 1):.2f}",
            "== 1 per cluster", "yes" if all(c == 1 for c in per_cluster) else "NO"),
    ]
    notes = [f"login warm: {s['n']} logins (alternating 2 clusters) and {f['n']} floor calls, interleaved in "
             f"batches of {BATCH}; container's {result['logins']} logins made {sum(per_cluster)} handshakes; "
             f"warm container max RSS after them {result['max_rss_mb']:.1f} MB; per-batch median ratios: median "
             f"{result['paired']['median']:.2f}, IQR {result['paired']['p25']:.2f}-{result['paired']['p75']:.2f}",
             "login warm, reference with no checks: harness.UncheckedLogin, a Chalice route that posts the TokenReview "
             "on the floor's connection, reads `authenticated` and mints (AES-GCM, RSA wrap, base64, JSON), checking "
             "nothing else (no CSRF, body or answer validation, policy, audit line or kubernetes client)"]
    return rows, notes, result


if __name__ == "__main__":
    harness.child_main(child)
