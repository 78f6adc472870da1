"""Load across warm Lambda containers, with a key rotation and a made-up-kid flood in the middle.

8 container processes (tests/fakes/lambda_container.py, each invoked through app.app(event,
context) one request at a time, as Lambda does) share one moto server (Secrets Manager) and the
two TLS fake API servers. 8 simulated users log in and refresh as the Dashboard frontend does on
every page change, CSRF enforced as deployed: a GET of a CSRF token, then the POST. Like API
Gateway, each request goes to whichever container is idle, so the CSRF token and the POST, and a
session's refreshes, hop between containers. Every user keeps one long session open the whole
run (a page change every LONG_PAGE_INTERVAL s) and meanwhile runs short sessions (a login, then
REFRESHES_PER_SESSION refreshes). An attacker sends refreshes under made-up kids all along. At
ROTATE_AT the test process runs the four rotation steps (chalicelib.rotation.rotate_now) against
the same secret.

Half the containers trust their key set for SHORT_TTL s and pick the new key up by themselves;
the other half trust it for an hour, so they learn of the new key only from a kid, or a CSRF
token, they do not hold, with at most one fetch per UNKNOWN_KID_REFETCH_INTERVAL, which the
attacker keeps using up. That is the case the mint delay (keys.mint_delay()) is for: no container
seals with the new key before it has held it that long, so any container that has not fetched
since the new key was written may fetch again when it meets it.

Asserted: no request fails (every CSRF GET 200, every login 200 with a jweToken, every refresh
200), no 5xx anywhere, no session is lost (each long session, alive across the rotation, keeps
refreshing), every made-up kid is a plain 401; tokens finished before the rotation carry the old
kid, none carries the new kid before the mint delay has passed since the rotation began, and
every container seals with the new kid once it has had time to learn it and hold it for the
delay. Reported: requests/s and p50/p99 of the handler time measured inside the containers, per
operation and in total (also written to $LOAD_REPORT).
"""
from __future__ import annotations

import base64
import collections
import json
import math
import os
import random
import statistics
import threading
import time
import uuid
from dataclasses import dataclass, field

import pytest

from chalicelib import keys, rotation
from tests.conftest import with_kid, write_registry
from tests.fakes.lambda_container import Container, ContainerError, close_all
from tests.load.conftest import REPORTS

pytestmark = pytest.mark.slow

CONTAINERS = 8
# Fewer users than containers (the attacker is a caller too): with every container busy, a caller
# would only ever get back the container it just freed, and sessions would never hop.
USERS = 6
ROTATE_AT = 6.0
SHORT_TTL = 2  # KEY_CACHE_TTL of the even containers
LONG_TTL = 3600  # KEY_CACHE_TTL of the odd ones: within the run, only an unknown kid or CSRF token makes them fetch
# Beyond a TTL or the refetch interval: a key-set fetch in flight when the rotation's last step lands
# (four Secrets Manager calls, slow on a loaded 2-CPU box) may still see the set before it.
PICKUP_SLACK = 3.0
MINT_DELAY = keys.mint_delay()
# A short-TTL container seals with the new key at most SHORT_TTL + slack + the delay after the rotation;
# a long-TTL one learns of it at the latest from the first tokens sealed with it, then waits the delay too.
SHORT_PICKUP = SHORT_TTL + PICKUP_SLACK + MINT_DELAY
LONG_PICKUP = SHORT_PICKUP + PICKUP_SLACK + MINT_DELAY
DURATION = ROTATE_AT + LONG_PICKUP + 4.0  # seconds of load (every container seals with the new key for a while)...
MAX_REQUESTS_PER_CONTAINER = 8000  # ...with full load for at most this many requests per container on average
REFRESHES_PER_SESSION = 5
LONG_PAGE_INTERVAL = 0.5
ATTACK_PAUSE = 0.05  # between the attacker's made-up-kid refreshes
CALL_TIMEOUT = 30.0
LEAK_MARKERS = ("eyJ", "BEGIN RSA", "PRIVATE KEY", "Traceback")
UNAUTHORIZED = "MSG_LOGIN_UNAUTHORIZED_ERROR\n"


def kid_of(jwe_token: str) -> str | None:
    protected = json.loads(jwe_token)["protected"]
    return json.loads(base64.urlsafe_b64decode(protected + "=" * (-len(protected) % 4))).get("kid")




def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


@dataclass
class Record:
    op: str
    user: int
    session: int
    container: int
    sent: float  # seconds since the load started, parent clock
    done: float
    rtt_ms: float
    ms: float | None  # handler time inside the container
    status: int | None
    ok: bool
    kid_in: str | None = None
    kid_out: str | None = None
    detail: str = ""


@dataclass
class Session:
    id: int
    user: int
    long: bool
    route_cluster: str | None
    sa_token: str
    token: str = ""
    logged_in_at: float = 0.0
    refreshes: int = 0
    lost: bool = False
    next_page_at: float = 0.0
    refreshed_at: list[float] = field(default_factory=list)


class Router:
    """API Gateway in front of Lambda: each request goes to an idle container, one request per container.

    Callers are served in arrival order, so that none waits forever while others keep arriving.
    """

    def __init__(self, containers: list[Container], seed: int = 7):
        self.containers = containers
        self._idle = list(range(len(containers)))
        self._cond = threading.Condition()
        self._random = random.Random(seed)
        self._waiting: collections.deque = collections.deque()

    def call(self, command: dict) -> tuple[int, dict]:
        with self._cond:
            ticket = object()
            self._waiting.append(ticket)
            if not self._cond.wait_for(lambda: self._idle and self._waiting[0] is ticket, timeout=CALL_TIMEOUT):
                self._waiting.remove(ticket)
                self._cond.notify_all()
                raise ContainerError(f"no container became idle within {CALL_TIMEOUT} s")
            self._waiting.popleft()
            index = self._idle.pop(self._random.randrange(len(self._idle)))
            self._cond.notify_all()  # the next caller in line may take another idle container
        try:
            return index, self.containers[index].call(command, timeout=CALL_TIMEOUT)
        finally:
            with self._cond:
                self._idle.append(index)
                self._cond.notify_all()


class LoadRun:
    def __init__(self, router: Router, users: list[list[tuple[str | None, str]]]):
        self.router = router
        self.users = users  # per user: [(route cluster, ServiceAccount token), ...]
        self.records: list[Record] = []
        self.attacks: list[tuple[int, int | None, str]] = []  # (container, status, body)
        self.sessions: list[Session] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.started = 0.0
        self._lock = threading.Lock()
        self._count = 0
        self._max_requests = MAX_REQUESTS_PER_CONTAINER * len(router.containers)

    def now(self) -> float:
        return time.monotonic() - self.started

    def _call(self, command: dict) -> tuple[int, int | None, float | None, object, str]:
        try:
            index, answer = self.router.call(command)
        except ContainerError as error:
            return -1, None, None, None, str(error)[:300]
        with self._lock:
            self._count += 1
        return index, answer.get("status"), answer.get("ms"), answer.get("body"), ""

    def _csrf(self, action: str, session: Session) -> str | None:
        """A CSRF token from whichever container is idle, as the frontend fetches one before each POST."""
        sent = self.now()
        index, status, ms, body, detail = self._call({"op": "csrf", "action": action, "cluster": session.route_cluster})
        done = self.now()
        token = body.get("token") if isinstance(body, dict) else None
        ok = status == 200 and isinstance(token, str) and bool(token)
        record = Record("csrf", session.user, session.id, index, sent, done, (done - sent) * 1000, ms, status, ok,
                        detail=detail or ("" if ok else f"{status}: {str(body)[:200]}"))
        with self._lock:
            self.records.append(record)
        return token if ok else None

    def _invoke(self, op: str, session: Session, command: dict) -> Record:
        csrf = self._csrf("login" if op == "login" else "token", session)
        sent = self.now()
        index, status, ms, body, detail = self._call({**command, "csrf": csrf or "none"})
        done = self.now()
        token = body.get("jweToken") if isinstance(body, dict) else None
        ok = status == 200 and isinstance(token, str) and bool(token) and body.get("errors") == []
        if not ok and not detail:
            detail = f"{status}: {str(body)[:200]}"
        record = Record(op, session.user, session.id, index, sent, done, (done - sent) * 1000, ms, status, ok,
                        kid_in=kid_of(session.token) if op == "refresh" else None,
                        kid_out=kid_of(token) if ok else None, detail=detail)
        if ok:
            session.token = token
        with self._lock:
            self.records.append(record)
        return record

    def _login(self, user: int, long: bool, route_cluster: str | None, sa_token: str) -> Session:
        with self._lock:
            session = Session(len(self.sessions), user, long, route_cluster, sa_token)
            self.sessions.append(session)
        record = self._invoke("login", session, {"op": "login", "cluster": route_cluster, "token": sa_token})
        session.logged_in_at = record.done
        session.next_page_at = record.done + LONG_PAGE_INTERVAL
        session.lost = not record.ok
        return session

    def _refresh(self, session: Session) -> None:
        command = {"op": "refresh", "cluster": session.route_cluster, "jweToken": session.token}
        record = self._invoke("refresh", session, command)
        session.refreshes += 1
        session.next_page_at = record.done + LONG_PAGE_INTERVAL
        if record.ok:
            session.refreshed_at.append(record.sent)
        else:
            session.lost = True

    def user(self, user: int) -> None:
        try:
            identities = self.users[user]
            rng = random.Random(1000 + user)
            long = self._login(user, True, *identities[0])
            short: Session | None = None
            for _ in range(self._max_requests):  # bounded in count; the deadline ends it first
                if self.stop.is_set():
                    break
                if long.lost:  # counted as lost; the user logs in again, as the frontend would send them to
                    long = self._login(user, True, *identities[0])
                elif self.now() >= long.next_page_at:
                    self._refresh(long)
                elif self._count >= self._max_requests:
                    # Load enough: from here on only the long session pages on, until the deadline, so a
                    # fast machine cannot end the run before the rotation has been picked up everywhere.
                    self.stop.wait(max(0.0, long.next_page_at - self.now()))
                elif short is None or short.lost or short.refreshes >= REFRESHES_PER_SESSION:
                    short = self._login(user, False, *rng.choice(identities))
                else:
                    self._refresh(short)
        except Exception as error:  # noqa: BLE001 - reported and asserted on by the test
            self.errors.append(f"user {user}: {type(error).__name__}: {error}")
            self.stop.set()

    def attacker(self, genuine: str) -> None:
        """Refreshes under made-up kids, each with a valid CSRF token, until the run stops."""
        try:
            for _ in range(self._max_requests):
                if self.stop.wait(ATTACK_PAUSE):
                    break
                _, status, _, body, _ = self._call({"op": "csrf", "action": "token"})
                csrf = body.get("token") if status == 200 and isinstance(body, dict) else "none"
                forged = with_kid(genuine, str(uuid.uuid4()))
                index, status, _, body, detail = self._call({"op": "refresh", "jweToken": forged, "csrf": csrf})
                with self._lock:
                    self.attacks.append((index, status, body if isinstance(body, str) else detail or str(body)[:200]))
        except Exception as error:  # noqa: BLE001 - reported and asserted on by the test
            self.errors.append(f"attacker: {type(error).__name__}: {error}")
            self.stop.set()


def stats_row(name: str, records: list, seconds: float) -> str:
    ms = [r.ms for r in records if r.ms is not None]
    rtt = [r.rtt_ms for r in records]
    failed = sum(not r.ok for r in records)
    return (
        f"{name:<9}{len(records):>9}{failed:>8}{len(records) / seconds:>9.1f}"
        f"{percentile(ms, 50):>9.1f}{percentile(ms, 99):>9.1f}{max(ms, default=float('nan')):>9.1f}"
        f"{percentile(rtt, 50):>10.1f}{percentile(rtt, 99):>10.1f}"
    )


def test_logins_and_refreshes_across_containers_survive_a_key_rotation(
    moto_server, secrets_client, secret_id, healthy, cluster_a, cluster_b, tmp_path
):
    test_started = time.monotonic()
    secrets_client.create_secret(Name=secret_id, SecretString=keys.new_secret_value())
    old_kid = secrets_client.get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")["VersionId"]
    registry = write_registry(
        tmp_path / "clusters.json", [cluster_a.registry_entry(), cluster_b.registry_entry()], default=cluster_a.name
    )
    # Each user has a ServiceAccount in each cluster: the default cluster (no prefix) and the other one.
    users = [
        [(None, cluster_a.login_token(f"load-{u}", "viewer")),
         (cluster_b.name, cluster_b.login_token(f"load-{u}", "viewer"))]
        for u in range(USERS)
    ]
    env = {
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": moto_server.url,
        "KEY_SECRET_ID": secret_id,
        "CLUSTERS_FILE": registry,
        "CSRF_ENFORCE": "true",
        "REVIEW_INTERVAL": "5",  # long sessions are re-reviewed during the run too
        "LOG_LEVEL": "INFO",
    }
    ttl_of = [SHORT_TTL if i % 2 == 0 else LONG_TTL for i in range(CONTAINERS)]
    containers = [
        Container.start({**env, "KEY_CACHE_TTL": str(ttl_of[i])}, max_seconds=300, name=f"load-{i}")
        for i in range(CONTAINERS)
    ]
    try:
        for container in containers:
            container.wait_ready(timeout=60)
        # Warm-up (not measured): each container's first invocation builds its service and reads the
        # key; a first login per cluster opens its kubernetes ApiClient (one TLS handshake).
        cold = [container.call({"op": "csrf", "action": "login"}) for container in containers]
        cold_ms = [answer["ms"] for answer in cold]
        genuine = ""
        for container, answer in zip(containers, cold):
            for route_cluster, sa_token in users[0]:
                warm = container.call(
                    {"op": "login", "cluster": route_cluster, "token": sa_token, "csrf": answer["body"]["token"]}
                )
                assert warm["status"] == 200 and warm["body"]["jweToken"], warm.get("body")
                genuine = warm["body"]["jweToken"]

        run = LoadRun(Router(containers), users)
        run.started = time.monotonic()
        threads = [threading.Thread(target=run.user, args=(u,), name=f"user-{u}", daemon=True) for u in range(USERS)]
        threads.append(threading.Thread(target=run.attacker, args=(genuine,), name="attacker", daemon=True))
        for thread in threads:
            thread.start()

        run.stop.wait(ROTATE_AT)
        rotation_started = run.now()
        new_kid = rotation.rotate_now(secrets_client, secret_id)
        rotation_done = run.now()
        run.stop.wait(max(0.0, DURATION - run.now()))
        run.stop.set()
        for thread in threads:
            thread.join(timeout=CALL_TIMEOUT + 5)
        assert not any(thread.is_alive() for thread in threads), "a user or attacker thread did not finish"
        elapsed = max((r.done for r in run.records), default=1e-3)
        logs = [container.log() for container in containers]
    finally:
        close_all(containers)

    records, sessions_ = run.records, run.sessions
    logins = [r for r in records if r.op == "login"]
    refreshes = [r for r in records if r.op == "refresh"]
    csrfs = [r for r in records if r.op == "csrf"]
    pickup = {i: SHORT_PICKUP if ttl_of[i] == SHORT_TTL else LONG_PICKUP for i in range(CONTAINERS)}
    server_errors = [r for r in records if r.status is not None and r.status >= 500]
    attack_5xx = [a for a in run.attacks if a[1] is not None and a[1] >= 500]

    # ---------------------------------------------------------------- the report
    first_new = {}
    for r in sorted(records, key=lambda r: r.done):
        if r.kid_out == new_kid and r.container not in first_new:
            first_new[r.container] = r.done - rotation_done
    spanning = [s for s in sessions_ if s.logged_in_at < rotation_started and any(t > rotation_done for t in s.refreshed_at)]
    in_flight = [s for s in sessions_ if not s.long and s.logged_in_at < rotation_done
                 and any(t > rotation_started for t in s.refreshed_at)]
    lost = [s for s in sessions_ if s.lost]
    header = (f"{'op':<9}{'requests':>9}{'failed':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
              f"{'rtt p50':>10}{'rtt p99':>10}")
    short_first = [v for i, v in first_new.items() if ttl_of[i] == SHORT_TTL]
    long_first = [v for i, v in first_new.items() if ttl_of[i] == LONG_TTL]
    report = "\n".join([
        f"load: {CONTAINERS} container processes (KEY_CACHE_TTL {SHORT_TTL} s and {LONG_TTL} s, half each), "
        f"{USERS} users, CSRF enforced, {elapsed:.1f} s on {os.cpu_count()} CPUs, mint delay {MINT_DELAY:.0f} s",
        f"  rotation at {rotation_started:.1f} s, took {(rotation_done - rotation_started) * 1000:.0f} ms; "
        f"new kid sealed by {len(first_new)}/{CONTAINERS} containers: first "
        f"{min(first_new.values(), default=float('nan')):.2f} s after it, the last short-TTL one "
        f"{max(short_first, default=float('nan')):.2f} s, the last long-TTL one {max(long_first, default=float('nan')):.2f} s",
        "  ms = handler time inside the container (app.app); rtt = round trip seen by the test process",
        header,
        stats_row("csrf", csrfs, elapsed),
        stats_row("login", logins, elapsed),
        stats_row("refresh", refreshes, elapsed),
        stats_row("total", records, elapsed),
        f"  sessions: {len(sessions_)} ({sum(s.long for s in sessions_)} long), {len(lost)} lost, "
        f"{len(spanning)} spanned the rotation, {len(in_flight)} short ones were in flight during it;",
        f"  refreshes of old-kid tokens answered with the new kid: "
        f"{sum(r.op == 'refresh' and r.kid_in == old_kid and r.kid_out == new_kid for r in records)}, "
        f"of new-kid tokens: {sum(r.op == 'refresh' and r.kid_in == new_kid for r in records)}",
        f"  made-up kids: {len(run.attacks)} refreshes, "
        f"{sum(a[1] == 401 and a[2] == UNAUTHORIZED for a in run.attacks)} answered 401 MSG_LOGIN_UNAUTHORIZED_ERROR; "
        f"5xx answers: {len(server_errors) + len(attack_5xx)} of {len(records) + len(run.attacks)} requests",
        f"  cold first invocation per container: median {statistics.median(cold_ms):.0f} ms, max {max(cold_ms):.0f} ms; "
        f"test took {time.monotonic() - test_started:.1f} s",
    ])
    print("\n" + report)
    REPORTS.append(report)
    if os.environ.get("LOAD_REPORT"):
        with open(os.environ["LOAD_REPORT"], "w", encoding="utf-8") as handle:
            handle.write(report + "\n")

    # ---------------------------------------------------------------- what must hold
    assert not run.errors, run.errors
    assert not server_errors and not attack_5xx, (server_errors[:3], attack_5xx[:3])
    failures = [r for r in records if not r.ok]
    assert not failures, f"{len(failures)} failed requests, e.g. " + "; ".join(
        f"{r.op} at {r.sent:.2f} s in container {r.container}: {r.detail}" for r in failures[:5]
    )
    assert not lost, f"{len(lost)} sessions lost"
    assert len(logins) > USERS and len(refreshes) > 5 * USERS, "the load never got going"
    # a made-up kid is not ours, in every container, before, during and after the rotation: never a 503
    assert len(run.attacks) > 20 and {a[0] for a in run.attacks} == set(range(CONTAINERS))
    assert [a for a in run.attacks if (a[1], a[2]) != (401, UNAUTHORIZED)] == []
    # every long session lived through the rotation, refreshing before it and with the new key after it
    long_sessions = [s for s in sessions_ if s.long]
    assert len(long_sessions) == USERS
    assert len(spanning) >= USERS
    for s in long_sessions:
        assert any(t < rotation_started for t in s.refreshed_at), f"long session {s.id} not refreshed before"
        assert any(t > rotation_done + LONG_PICKUP for t in s.refreshed_at), f"long session {s.id} not after"
        assert kid_of(s.token) == new_kid
    # the kids: old before the rotation; new not before the mint delay, but then in every container
    assert {r.kid_out for r in records if r.op != "csrf" and r.done < rotation_started} == {old_kid}
    early = [r for r in records if r.kid_out == new_kid and r.done < rotation_started + MINT_DELAY]
    assert not early, f"{len(early)} tokens sealed with the new key within the mint delay, e.g. container {early[0].container}"
    late = [r for r in records if r.kid_out and r.sent > rotation_done + pickup[r.container]]
    assert late, "no load after the rotation was picked up"
    stale = [r for r in late if r.kid_out != new_kid]
    assert not stale, f"{len(stale)} tokens sealed with the old key after the pickup, e.g. container {stale[0].container}"
    assert {r.container for r in late} == set(range(CONTAINERS)), "some container served no load after the rotation"
    assert set(first_new) == set(range(CONTAINERS))
    for i, text in enumerate(logs):
        for marker in LEAK_MARKERS:
            assert marker not in text, f"container {i} logged {marker!r}"
