"""Profiles of the warm refresh and the warm login, and a cost breakdown by subtraction.

Two views, in one warm container (bench.harness.Container):
1. cProfile over N handler calls, self time grouped into cost buckets (the RSA/AES work itself,
   chalice, JSON, base64, the kubernetes client, urllib3/http.client,
   ssl and socket I/O, logging, the app's own code...). Profiling inflates Python-level code
   against C calls, so the shares are indicative.
2. Unprofiled, interleaved timings of the layers one inside the other (handler -> Service method ->
   sessions.decrypt/mint -> the raw cryptography; kubernetes TokenReview -> raw urllib3 POST), plus
   a few isolated pieces (sessions.parse, a minimal route through chalice). Differences between layers
   are what each layer costs beyond the floor.
"""
from __future__ import annotations

import collections
import cProfile
import json
import pstats
import re

from bench import harness
from bench.stats import Subject, interleave, median, ms, per_round

PROFILE_REFRESHES, PROFILE_LOGINS = 600, 300
ROUNDS, BATCH = 10, 30

BUCKETS = [  # (bucket, regex on "file:line(function)" of pstats), first match wins
    ("RSA/AES in OpenSSL + os.urandom (the floor's work)",
     r"cryptography\.hazmat\.bindings|'(en|de)crypt' of|create_(en|de)cryption_ctx|aead|urandom"),
    ("ssl/socket I/O (incl. waiting for the API server)", r"_ssl\._SSLSocket|'recv_into'|'sendall'|'send' of|_socket|select|poll"),
    ("copy.deepcopy", r"/copy\.py|copyreg"),
    ("jwcrypto (JWA objects and JWK keys, the service's JOSE library)", r"/jwcrypto/"),
    ("kubernetes client (models, (de)serialization, ApiClient)", r"/kubernetes/"),
    ("urllib3 + http.client (request/response handling)", r"/urllib3/|/http/client\.py|/email/|/http/__init__"),
    ("chalice (event -> Request, routing, Response)", r"/chalice/"),
    ("json (loads/dumps)", r"/json/|_json|'(loads|dumps)'"),
    ("base64 / binascii", r"/base64\.py|binascii|b64"),
    ("re", r"/re/|/sre_|of 're\.Pattern'"),
    ("datetime / time formatting", r"datetime|strftime|strptime|fromisoformat|astimezone"),
    ("logging", r"/logging/"),
    ("audit.py + logs.py (access line, audit events, metrics: our code)", r"/chalicelib/(audit|logs)\.py"),
    ("app + chalicelib (our code)", r"/chalicelib/|/app\.py"),
    ("test harness (not in Lambda)", r"/tests/fakes/"),
]
# Buckets that builtins are charged to by their own name (the others' builtins go to their callers).
_SPECIFIC_BUILTINS = {bucket for bucket, _ in BUCKETS if bucket.split(" ")[0] in ("RSA/AES", "ssl/socket", "json", "base64", "re", "datetime")}


def _bucket(label: str) -> str:
    return next((b for b, pattern in BUCKETS if re.search(pattern, label)), "other (interpreter, stdlib)")


def _label(func: tuple) -> str:
    filename, line, name = func
    return f"{filename}:{line}({name})"


def _bucketed(profile: cProfile.Profile, calls: int) -> tuple[list[tuple[str, float, float]], list[tuple[str, float]]]:
    """Self time per bucket. A builtin (dict.get, isinstance, ...) that is not itself a bucket's work is
    charged to its callers' buckets, in proportion to the time it spent under each caller."""
    stats = pstats.Stats(profile)
    total = sum(entry[2] for entry in stats.stats.values())
    buckets: collections.Counter = collections.Counter()
    functions = []
    for func, (_, _, tottime, _, callers) in stats.stats.items():
        label = _label(func)
        bucket = _bucket(label)
        if func[0] == "~" and bucket not in _SPECIFIC_BUILTINS and callers:
            spent = sum(value[2] for value in callers.values()) or 1.0
            for caller, value in callers.items():
                buckets[_bucket(_label(caller))] += tottime * value[2] / spent
        else:
            buckets[bucket] += tottime
        short = re.sub(r".*/(site-packages|lib/python3\.\d+)/", "", func[0])
        functions.append((f"{short}:{func[1]}({func[2]})" if func[0] != "~" else func[2], tottime))
    rows = [(bucket, seconds / calls * 1e6, seconds / total * 100) for bucket, seconds in buckets.most_common()]
    functions.sort(key=lambda item: -item[1])
    return rows, [(name, seconds / calls * 1e6) for name, seconds in functions[:12]]


def child(config: dict) -> dict:
    from chalicelib import sessions

    container = harness.Container()
    default = config["clusters"][0]
    token = config["session_tokens"][default]
    sa_token = config["servers"][default]["sa_token"]
    refresh_events = container.events({"op": "refresh", "jweToken": token, "csrf": config["csrf"]["token"]})
    login_events = container.events({"op": "login", "token": sa_token, "csrf": config["csrf"]["login"]})
    harness.check_answer(container.invoke(refresh_events(1)[0]))
    harness.check_answer(container.invoke(login_events(1)[0]))
    service = container.app_module.auth()
    key = service._keys.keys().current
    cluster = service.cluster(None)
    crypto = harness.CryptoFloor(harness.read_private_pem(config), token)
    review_floor = harness.ReviewFloor(config["servers"][config["floor_server"]], crypto)
    envelope = sessions.parse(token)
    claims = envelope.claims
    refresh_body = json.dumps({"jweToken": token}).encode()
    login_body = json.dumps({"token": sa_token}).encode()
    modes_events = container.events({"op": "http", "method": "GET", "resource": "/api/v1/login/modes"})

    result: dict = {"profiles": {}}
    for name, events, calls in (("refresh", refresh_events, PROFILE_REFRESHES), ("login", login_events, PROFILE_LOGINS)):
        batch = events(calls)
        profile = cProfile.Profile()
        profile.enable()
        for pair in batch:
            container.invoke(pair)
        profile.disable()
        buckets, top = _bucketed(profile, calls)
        result["profiles"][name] = {"buckets": buckets, "top": top, "calls": calls}

    on, off_access, off_all = _observability_switches()
    quiet = {"access line (with its EMF) off": off_access, "all log lines + EMF off": off_all}
    handler_off = {
        (kind, label): Subject(f"handler, {label} (measurement only)", container.invoke, _prepared(events, switch))
        for kind, events in (("refresh", refresh_events), ("login", login_events)) for label, switch in quiet.items()
    }
    layers = {
        "refresh": [
            Subject("handler: POST /api/v1/token/refresh (event -> response)", container.invoke, refresh_events),
            Subject("Service.refresh (no chalice)", lambda _: service.refresh(None, refresh_body, config["csrf"]["token"])),
            Subject("sessions.parse (envelope checks, AAD claims)", lambda _: sessions.parse(token)),
            Subject("sessions.decrypt", lambda _: sessions.decrypt(envelope, key.private)),
            Subject("sessions.mint", lambda _: sessions.mint(sa_token, claims, key.public, key.kid)),
            Subject("floor: RSA unwrap + AES-GCM decrypt", lambda _: crypto.unwrap_decrypt()),
            Subject("floor: AES-GCM encrypt + RSA wrap", lambda _: crypto.encrypt_wrap(crypto.plaintext)),
            Subject("floor: the whole crypto floor", crypto),
            Subject("handler: GET /api/v1/login/modes (chalice + middleware, no crypto)", container.invoke, modes_events),
            *(subject for (kind, _), subject in handler_off.items() if kind == "refresh"),
        ],
        "login": [
            Subject("handler: POST /api/v1/login (event -> response)", container.invoke, login_events),
            Subject("Service.login (no chalice)", lambda _: service.login(None, login_body, config["csrf"]["login"])),
            Subject("Reviewer.review (kubernetes client TokenReview)", lambda _: service._reviewer.review(cluster, sa_token)),
            Subject("floor: urllib3 TokenReview POST + json", lambda _: review_floor.review()),
            Subject("sessions.mint", lambda _: sessions.mint(sa_token, claims, key.public, key.kid)),
            Subject("floor: the whole login floor (POST + raw mint)", review_floor),
            *(subject for (kind, _), subject in handler_off.items() if kind == "login"),
        ],
    }
    for subjects in layers.values():  # everything else runs with the service's logging and metrics on
        for subject in subjects:
            if "(measurement only)" not in subject.name:
                subject.prepare = _prepared(subject.prepare, on)
    # What a warm container pays every KEY_CACHE_TTL: the key set fetched and parsed again, and the first
    # refresh after it (the new key objects are used as they are: nothing is rebuilt on first use).
    import time

    on()
    refetch, after, warm = [], [], []
    for _ in range(5):
        begin = time.perf_counter()
        _refetch_keys(service._keys)
        refetch.append((time.perf_counter() - begin) * 1000)
        for target in (after, warm):
            pair = refresh_events(1)[0]
            begin = time.perf_counter()
            container.invoke(pair)
            target.append((time.perf_counter() - begin) * 1000)
    result["refetch"] = {"refetch": median(refetch), "after": median(after), "warm": median(warm)}

    result["layers"], result["rounds"] = {}, {}
    batch = config.get("batch", BATCH)
    for name, subjects in layers.items():
        interleave(subjects, rounds=config.get("rounds", ROUNDS), batch=batch)
        result["layers"][name] = [(s.name, median(s.times)) for s in subjects]
        result["rounds"][name] = {s.name: per_round(s, batch) for s in subjects}
    return result


def _refetch_keys(cache) -> None:
    """The key set fetched again, as a container does when its cache expires (KeyCache's private API)."""
    if hasattr(cache, "_refetch"):
        cache._refetch()
        return
    with cache._lock:  # KeyCache._fetch runs with the lock held
        cache._fetch()


def _prepared(prepare, switch):
    """A batch-preparer that first sets the service's logging/metrics state (untimed, like the events)."""
    def wrapped(n: int) -> list:
        switch()
        return prepare(n)
    return wrapped


def _observability_switches():
    """Measurement only: switch off the access line (which carries the request's EMF metrics), or every
    log line and metric, to measure what they cost. (on, off_access, off_all)."""
    import logging

    from chalicelib import audit

    real_count = audit._count

    def on():
        audit._count = real_count
        audit.access_log.disabled = False
        logging.disable(logging.NOTSET)

    def off_access():
        on()
        audit.access_log.disabled = True

    def off_all():
        off_access()
        audit._count = lambda *args, **kwargs: None
        logging.disable(logging.CRITICAL)

    return on, off_access, off_all


def _layer_lines(layers: list[tuple[str, float]], floor_name: str, total_name: str) -> list[str]:
    values = dict(layers)
    floor, total = values[floor_name], values[total_name]
    lines = [f"    {'median':>10}  {'/floor':>6}  piece"]
    for name, value in layers:
        lines.append(f"    {ms(value):>10}  {value / floor:6.2f}  {name}")
    lines.append(f"    gap to the floor: {ms(total - floor)} per call ({total / floor:.2f}x the floor)")
    return lines


def _derived(rounds: dict[str, list[float]], plus: list[str], minus: list[str]) -> float:
    """sum(plus) - sum(minus), round by round on batch medians, then the median over rounds."""
    count = min(len(values) for values in rounds.values())
    return median([sum(rounds[n][r] for n in plus) - sum(rounds[n][r] for n in minus) for r in range(count)])


REFRESH_DERIVED = [
    ("chalice + app.py + dashboard.answer (handler - Service.refresh)",
     ["handler: POST /api/v1/token/refresh (event -> response)"], ["Service.refresh (no chalice)"]),
    ("sessions.decrypt around the raw unwrap/decrypt (sessions.decrypt - floor)",
     ["sessions.decrypt"], ["floor: RSA unwrap + AES-GCM decrypt"]),
    ("sessions.mint around the raw encrypt/wrap (sessions.mint - floor)",
     ["sessions.mint"], ["floor: AES-GCM encrypt + RSA wrap"]),
    ("Service.refresh's own work (- decrypt - mint; parse included)",
     ["Service.refresh (no chalice)"], ["sessions.decrypt", "sessions.mint"]),
    ("the access line with its EMF metrics (handler - handler without it)",
     ["handler: POST /api/v1/token/refresh (event -> response)"],
     ["handler, access line (with its EMF) off (measurement only)"]),
    ("every log line and EMF metric (handler - handler without any)",
     ["handler: POST /api/v1/token/refresh (event -> response)"], ["handler, all log lines + EMF off (measurement only)"]),
]
LOGIN_DERIVED = [
    ("chalice + app.py + dashboard.answer (handler - Service.login)",
     ["handler: POST /api/v1/login (event -> response)"], ["Service.login (no chalice)"]),
    ("kubernetes client beyond the raw POST (Reviewer.review - urllib3 POST)",
     ["Reviewer.review (kubernetes client TokenReview)"], ["floor: urllib3 TokenReview POST + json"]),
    ("sessions.mint around the raw encrypt/wrap (sessions.mint - floor, from the refresh set)", [], []),
    ("Service.login's own work (- review - mint)",
     ["Service.login (no chalice)"], ["Reviewer.review (kubernetes client TokenReview)", "sessions.mint"]),
    ("the access line with its EMF metrics (handler - handler without it)",
     ["handler: POST /api/v1/login (event -> response)"], ["handler, access line (with its EMF) off (measurement only)"]),
    ("every log line and EMF metric (handler - handler without any)",
     ["handler: POST /api/v1/login (event -> response)"], ["handler, all log lines + EMF off (measurement only)"]),
]


def run(world) -> list[str]:
    result = world.run_child(["bench.profiles", "--child"], world.config())
    out = []
    for name in ("refresh", "login"):
        profile = result["profiles"][name]
        out.append(f"profile, warm {name} (cProfile, {profile['calls']} handler calls; self time per call, share; "
                   "profiling inflates Python code against C calls):")
        for bucket, micros, share in profile["buckets"][:12]:
            out.append(f"    {micros:8.1f} us  {share:5.1f} %  {bucket}")
        out.append("  top functions by self time (us per handler call, profiled):")
        for function, micros in profile["top"][:8]:
            out.append(f"    {micros:8.1f} us  {function}")
    for name, floor_name, total_name, derived in (
        ("refresh", "floor: the whole crypto floor", "handler: POST /api/v1/token/refresh (event -> response)",
         REFRESH_DERIVED),
        ("login", "floor: the whole login floor (POST + raw mint)", "handler: POST /api/v1/login (event -> response)",
         LOGIN_DERIVED),
    ):
        out.append(f"breakdown, warm {name} (unprofiled medians, {ROUNDS} interleaved rounds; /floor = vs {floor_name[7:]}):")
        out += _layer_lines(result["layers"][name], floor_name, total_name)
        out.append("  what each layer adds (differences of batch medians within each round, median over rounds):")
        rounds = result["rounds"][name]
        for label, plus, minus in derived:
            if not plus:
                plus, minus = ["sessions.mint"], ["floor: AES-GCM encrypt + RSA wrap"]
                value = _derived(result["rounds"]["refresh"], plus, minus)
            else:
                value = _derived(rounds, plus, minus)
            out.append(f"    {ms(value):>10}  {label}")
    refetch = result["refetch"]
    out.append(f"key cache expiry (every KEY_CACHE_TTL, default 300 s, per container; median of 5): the refetch "
               f"takes {refetch['refetch']:.1f} ms (2 Secrets Manager calls, AWSCURRENT and AWSPREVIOUS; 2 PEM "
               f"parses without the RSA key check), in the request that finds the cache expired; the next refresh "
               f"takes {refetch['after']:.1f} ms against {refetch['warm']:.2f} ms warm")
    return out


if __name__ == "__main__":
    harness.child_main(child)
