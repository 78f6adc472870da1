"""2. Login, warm, against the fake TLS API servers, and the handshakes it costs.

Subject: POST /api/v1/login (cluster prod-eu, the default) and POST /clusters/staging-us/api/v1/login,
alternately, through `app.app(event, context)` in one warm container: a real TokenReview by the
kubernetes client over TLS to the fake API server process, then a mint.
Reference: harness.UncheckedLogin, a Chalice route that posts the same TokenReview on the floor's
connection and mints with the service's JOSE library (jwcrypto's JWA objects), checking nothing else;
measured interleaved with the subject. Target: median and p99 ratio to the reference <= 1.2.
Raw floor: harness.ReviewFloor, the same TokenReview POST over one kept-alive urllib3 connection to a
twin fake server (so the clusters' counters see the app's connections only) + a raw-cryptography mint;
its ratio is printed, without a target. Also: exactly one TLS handshake per cluster for the
container's whole life (warm-up included), read from FakeKubeApiServer.handshakes.
"""
from __future__ import annotations

from bench import harness
from bench.stats import Row, Subject, interleave, paired, summary, timed_row

TARGET = 1.2  # against the no-checks reference
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
    batch, rounds = config.get("batch", BATCH), config.get("rounds", ROUNDS)
    interleave([subject, unchecked, floor], rounds=rounds, batch=batch, warmup=WARMUP)
    return {"subject": summary(subject.times), "floor": summary(floor.times), "paired": paired(subject, floor, batch),
            "paired_reference": paired(subject, unchecked, batch),
            "unchecked": summary(unchecked.times),
            "cpu_ms": subject.cpu_per_call(), "unchecked_cpu_ms": unchecked.cpu_per_call(),
            "floor_connections": review_floor.connections, "max_rss_mb": harness.max_rss_mb(),
            "logins": len(subject.times) + WARMUP}


def run(world) -> tuple[list[Row], list[str], dict]:
    world.reset_counters()
    result = world.run_child(["bench.login_warm", "--child"], world.config())
    handshakes = world.handshakes()
    s, f = result["subject"], result["floor"]
    per_cluster = [handshakes[name] for name in world.config()["clusters"]]
    floor_hs = handshakes[world.config()["floor_server"]]
    u = result["unchecked"]
    rows = [
        timed_row("2. login warm, median, vs no-checks reference", s["median"], u["median"], TARGET),
        timed_row("2. login warm, p99, vs no-checks reference p99", s["p99"], u["p99"], TARGET),
        timed_row("2. login warm, median, vs raw floor (POST + raw mint)", s["median"], f["median"], None),
        timed_row("2. reference (no checks, jwcrypto JWA) vs raw floor", u["median"], f["median"], None),
        Row("2. login: TLS handshakes per cluster, whole run",
            " / ".join(f"{n}={c}" for n, c in zip(world.config()["clusters"], per_cluster)),
            f"{floor_hs} (urllib3 pool)", f"{max(per_cluster) / max(floor_hs, 1):.2f}",
            "== 1 per cluster", "yes" if all(c == 1 for c in per_cluster) else "NO"),
    ]
    notes = [f"login warm: {s['n']} logins (alternating 2 clusters) and {f['n']} floor calls, interleaved in "
             f"batches of {BATCH}; container's {result['logins']} logins made {sum(per_cluster)} handshakes; "
             f"warm container max RSS after them {result['max_rss_mb']:.1f} MB; per-batch median ratios: median "
             f"{result['paired']['median']:.2f} to the floor (IQR {result['paired']['p25']:.2f}-{result['paired']['p75']:.2f}), "
             f"{result['paired_reference']['median']:.2f} to the reference (IQR {result['paired_reference']['p25']:.2f}-"
             f"{result['paired_reference']['p75']:.2f}); CPU per call: handler {result['cpu_ms']:.3f} ms, reference "
             f"{result['unchecked_cpu_ms']:.3f} ms (the rest of a call is waiting for the API server)",
             "login warm, reference with no checks: harness.UncheckedLogin, a Chalice route that posts the TokenReview "
             "on the floor's connection, reads `authenticated` and mints (jwcrypto's JWA objects, base64, JSON), checking "
             "nothing else (no CSRF, body or answer validation, issuer check, policy, audit or access line, metrics "
             "or kubernetes client)"]
    return rows, notes, result


if __name__ == "__main__":
    harness.child_main(child)
