"""3. Cold start: a fresh process from import to the first answer, for a refresh and for a login.

Subject: bench/cold_child.py `refresh` / `login`: `import app`, then one `app.app(event, context)`.
The container runs the deployed files: the unpacked deployment.zip (bench/memory_size.py builds it as
`make package` does: chalice package, then scripts/package.py's bytecode step, then the slimming) as
its working directory and first on sys.path, and writes no bytecode (PYTHONDONTWRITEBYTECODE; /var/task
is read-only on Lambda). So it loads exactly the bytecode the zip ships, the unchecked hash-based .pyc
scripts/package.py compiles beside each module when the packaging Python is the runtime's, as Lambda
would from /var/task; a module without one is compiled at every import, as on Lambda. boto3/botocore
come from the venv (with its .pyc), as the Lambda runtime provides them, precompiled. Without a zip
(packaging failed) the venv's code is used, and said. The floors run in the same place, so what the
zip shadows comes from the zip for them too, with the same bytecode: cryptography (and the login
floor's kubernetes), and botocore's urllib3, dateutil, jmespath and six; only boto3, botocore and
s3transfer come from the venv.

Floors (chosen: what the path truly needs, same process conditions):
- refresh: import boto3 + cryptography, a Secrets Manager client with the service's config, ONE
  GetSecretValue (AWSCURRENT), load the PEM private key (without the RSA key check, as the service
  does), open the presented token (JSON, base64, RSA-OAEP-256 unwrap, AES-256-GCM decrypt), seal it
  again (AES-256-GCM + RSA-OAEP-256 wrap).
- login: the same key read and key load, an import of the kubernetes package (what the
  specification requires a login to use), then the TokenReview as a raw urllib3 HTTPS POST (fresh TLS
  connection verified with the cluster's CA) and its JSON answer, then the seal. Not the kubernetes
  client's request path: what it adds on top of that POST is what this benchmark wants to expose.
Each cold run is repeated REPS times, the four kinds interleaved (rotating order).
Also checked: whether the refresh imports the `kubernetes` package (it must not), and, with
`python -X importtime`, which packages the import time goes to (self time summed per top-level package).
"""
from __future__ import annotations

import collections
import os
import re
import time

from bench.stats import Row, median, timed_row
from bench.world import ROOT

TARGET_REFRESH = 1.3
REPS = 10
BUDGET_SECONDS = 80.0  # on a crowded machine, stop after MIN_REPS rounds once this is spent (and say so)
MIN_REPS = 5
MODES = ("refresh", "floor-refresh", "login", "floor-login")
IMPORTTIME = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def _env_and_cwd(world) -> tuple[dict, str, str]:
    if world.deployed_dir:
        env = world.service_env(PYTHONPATH=os.pathsep.join([world.deployed_dir, ROOT]), PYTHONDONTWRITEBYTECODE="1",
                                BENCH_COLD_PHASES="1")
        return env, world.deployed_dir, f"deployed files, {_shipped_bytecode(world.deployed_dir)}, none written"
    return world.service_env(BENCH_COLD_PHASES="1"), ROOT, "venv code, .pyc cached (deployment.zip unavailable)"


def _shipped_bytecode(task: str) -> str:
    """How many of the unpacked zip's modules have a .pyc beside them (in __pycache__), as shipped."""
    sources = pycs = 0
    for _, dirs, files in os.walk(task):
        sources += sum(name.endswith(".py") for name in files)
        pycs += sum(name.endswith(".pyc") for name in files)
    return f"the zip's .pyc for {pycs} of its {sources} .py" if pycs else "no .pyc (the zip carries none)"


def _import_costs(stderr: str) -> list[tuple[str, float]]:
    """Self import time (ms) per top-level package, for imports after the clock started."""
    _, _, after = stderr.partition("bench.cold_child: the clock starts")
    totals: collections.Counter = collections.Counter()
    for match in IMPORTTIME.finditer(after):
        totals[match[4].split(".")[0]] += int(match[1]) / 1000
    return totals.most_common(8)


def _parts(mode: str, run: dict) -> list[tuple[str, float]]:
    """One run's phases as disjoint parts that add up to its total (the last part, 'rest', closes the sum)."""
    phases = run["phases"]

    def get(name: str) -> float:
        return phases.get(name, 0.0)

    def count(name: str) -> int:
        return int(phases.get("n: " + name, 0))

    if mode.startswith("floor"):
        parts = [(name, value) for name, value in phases.items() if not name.startswith("n: ")]
    else:
        client, http, parse = ("Secrets Manager client (botocore import incl.)", "Secrets Manager HTTP",
                               "key parse (PEM loads, pair check)")
        from bench.cold_child import CLUSTER_HTTP as review_http
        parts = [("import app (INIT)", get("import app (INIT)")),
                 ("urllib3 import (moved ahead of boto3's)", get("instrumentation (urllib3 import, moved out of boto3's)")),
                 (client, get(client)), (f"{http} x{count(http)}", get(http)), (f"{parse} x{count(parse)}", get(parse)),
                 ("key fetch, other", get("_key set fetch (total)") - get(client) - get(http) - get(parse))]
        if mode == "login":
            build = "kubernetes ApiClient build"
            # The ApiClient is built by the first request to the cluster: the issuer check's, or the review's.
            parts += [(build + " (kubernetes import incl.)", get(build)),
                      (f"{review_http} x{count(review_http)}", get(review_http)),
                      ("issuer check + TokenReview call, without the build and the HTTP",
                       get("_issuer check (total)") + get("_review (total)") - get(build) - get(review_http))]
        else:
            name = "sessions.decrypt (1st)"
            parts.append((name, get(name)))
        parts.append(("sessions.mint", get("sessions.mint")))
    parts.append(("rest of the invocation", run["ms"] - sum(value for _, value in parts)))
    return parts


def _phase_line(mode: str, runs: list[dict]) -> str:
    """Median ms of each part over the runs (medians of parts need not add up to the median total)."""
    per_run = [_parts(mode, run) for run in runs]
    names = [name for name, _ in per_run[0]]
    values = {name: median([dict(parts).get(name, 0.0) for parts in per_run]) for name in names}
    total = median([run["ms"] for run in runs])
    return f"  {mode:<13} {total:6.0f} ms: " + ", ".join(f"{name} {values[name]:.0f}" for name in names)


def _extra_top_levels(runs: list[dict], floor_runs: list[dict]) -> list[str]:
    """Top-level modules in the first run of `runs` and in no run of `floor_runs` (private ones left out)."""
    floor = set().union(*(set(r.get("top_levels") or []) for r in floor_runs))
    return sorted(name for name in set(runs[0].get("top_levels") or []) - floor if not name.startswith("_"))


def run(world, reps: int = REPS) -> tuple[list[Row], list[str], dict]:
    env, cwd, how = _env_and_cwd(world)
    config = world.config()
    results: dict[str, list[dict]] = {mode: [] for mode in MODES}
    walls: dict[str, list[float]] = {mode: [] for mode in MODES}
    started = time.perf_counter()
    for i in range(reps):
        if i >= MIN_REPS and time.perf_counter() - started > BUDGET_SECONDS:
            reps = i
            break
        order = MODES[i % len(MODES):] + MODES[:i % len(MODES)]
        for mode in order:
            begin = time.perf_counter()
            results[mode].append(world.run_child(["bench.cold_child", mode], config, env=env, cwd=cwd))
            walls[mode].append((time.perf_counter() - begin) * 1000)
    ms = {mode: [r["ms"] for r in results[mode]] for mode in MODES}
    rss = {mode: median([r["max_rss_mb"] for r in results[mode]]) for mode in MODES}
    rss_now = {mode: median([r["rss_now_mb"] for r in results[mode]]) for mode in MODES}
    ru_maxrss = {mode: median([r["ru_maxrss_mb"] for r in results[mode]]) for mode in MODES}
    k8s_in_refresh = sum(r["kubernetes_imported"] for r in results["refresh"])

    scan = world.run_child(["bench.cold_child", "scan"], config, env=env, cwd=cwd)
    costs = {mode: _import_costs(world.run_child(["bench.cold_child", mode], config, env=env, cwd=cwd,
                                                 python_flags=("-X", "importtime"))["_stderr"])
             for mode in ("refresh", "login")}

    rows = [
        timed_row("3. cold refresh, import -> answer (median)", median(ms["refresh"]), median(ms["floor-refresh"]),
                  TARGET_REFRESH),
        timed_row("3. cold login, import -> answer (median; floor imports kubernetes)", median(ms["login"]),
                  median(ms["floor-login"]), None),
        Row("3. cold refresh imports kubernetes?", f"{'yes' if k8s_in_refresh else 'no'} ({k8s_in_refresh}/{reps} runs)",
            "no", "n/a", "must not", "yes" if k8s_in_refresh == 0 else "NO"),
    ]
    notes = [
        f"cold start ({how}): {reps} runs of each, interleaved; import->answer ms min/median/max: " + "; ".join(
            f"{mode} {min(ms[mode]):.0f}/{median(ms[mode]):.0f}/{max(ms[mode]):.0f}" for mode in MODES)
        + "; whole process (spawn to exit) median: " + ", ".join(f"{m} {median(walls[m]):.0f}" for m in MODES) + " ms",
        "cold import time by package (self ms, -X importtime, one run each; inflated by the flag): "
        + " | ".join(f"{mode}: " + ", ".join(f"{name} {cost:.0f}" for name, cost in costs[mode]) for mode in costs),
        "cold phases (median ms; the app's phases by wrapping its functions in the child):\n"
        + "\n".join(_phase_line(mode, results[mode]) for mode in MODES),
        "RSS right after the first answer (median MB; the peak, VmHWM, is in the table): "
        + ", ".join(f"{mode} {rss_now[mode]:.1f}" for mode in MODES)
        + "; for comparison ru_maxrss, which on Linux carries the spawning parent's peak across exec: "
        + ", ".join(f"{mode} {ru_maxrss[mode]:.1f}" for mode in MODES),
        f"modules loaded: refresh {median([r['modules'] for r in results['refresh']]):.0f}, "
        f"floor-refresh {median([r['modules'] for r in results['floor-refresh']]):.0f}, "
        f"login {median([r['modules'] for r in results['login']]):.0f}, "
        f"floor-login {median([r['modules'] for r in results['floor-login']]):.0f}; top-level packages the refresh "
        f"loads and its floor does not: {', '.join(_extra_top_levels(results['refresh'], results['floor-refresh']))}",
    ]
    cpu = {mode: [r.get("cpu_ms", float("nan")) for r in results[mode]] for mode in MODES}
    return rows, notes, {"cpu_ms": cpu, "rss": rss, "steps": scan.get("steps"), "files": scan.get("files"), "ms": ms,
                         "k8s_in_refresh": k8s_in_refresh, "how": how}
