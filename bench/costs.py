"""6. Memory size, latency and cost: what each Lambda memory size would make of this run's figures.

A model, not a measurement on Lambda. Lambda gives a function a CPU share in proportion to its memory,
one full vCPU at 1769 MB (so 256 MB gets 256/1769, about a seventh of a core); above 1769 MB the
second vCPU does not help a single-threaded Python handler. From this run:

- each path's CPU time (process CPU time of the measured process, per call) is taken to scale with
  1 / share: at M MB it takes cpu * 1769 / M (M <= 1769);
- the rest of its wall time is waiting (for the moto server, the fake API servers, which run on the
  other core) and does not scale;
- one local core counts as one Lambda vCPU (a Lambda x86_64 vCPU may well be slower: then every
  figure here is optimistic by that factor);
- the network waits are loopback waits; in a region, a Secrets Manager call and a TokenReview to an
  EKS API server each add their round trip (typically a few to tens of ms) at every memory size;
- billed duration is the duration rounded up to 1 ms; a cold start's INIT phase is billed too
  (on-demand functions, managed runtime, ZIP package: since 1 August 2025), so a cold figure is
  billed from import to answer;
- price: x86_64 on-demand in us-east-1 (N. Virginia), PRICE_GB_SECOND per GB-second (first tier)
  and PRICE_REQUEST per request, as published on aws.amazon.com/lambda/pricing (the figures there
  since 1 ms billing began in December 2020; assumed unchanged, not checked on the day of the run);
  no free tier, no API Gateway, no Secrets Manager API charges; SnapStart's own charges (cache per
  GB-second, restore per GB) are not in the restored figures' price.
"""
from __future__ import annotations

import math

from bench.stats import Row, median

FULL_VCPU_MB = 1769
SIZES = (256, 512, 1024, 1769)
PRICE_GB_SECOND = 0.0000166667  # USD, x86_64, us-east-1, first 6 billion GB-s a month
PRICE_REQUEST = 0.20 / 1e6  # USD
PRICE_NOTE = ("x86_64 on-demand, us-east-1: USD 0.0000166667 per GB-second and USD 0.20 per million requests "
              "(aws.amazon.com/lambda/pricing, unchanged since December 2020 as far as this bench knows; assumed, "
              "not checked on the day of the run)")


def share(memory_mb: int) -> float:
    return min(1.0, memory_mb / FULL_VCPU_MB)


def latency(cpu_ms: float, wait_ms: float, memory_mb: int) -> float:
    return cpu_ms / share(memory_mb) + wait_ms


def price_per_million(duration_ms: float, memory_mb: int) -> float:
    billed = math.ceil(duration_ms)
    return 1e6 * (memory_mb / 1024 * billed / 1000 * PRICE_GB_SECOND + PRICE_REQUEST)


def _split(wall_ms: float, cpu_ms: float) -> tuple[float, float]:
    """(cpu, wait) of a figure; CPU time above the wall time (a second thread, clock granularity) counts as wall."""
    cpu = min(cpu_ms, wall_ms)
    return cpu, wall_ms - cpu


def paths(refresh: dict | None, login: dict | None, cold: dict | None, restored: dict | None) -> dict[str, tuple]:
    """{path: (wall ms, cpu ms)} from this run's figures (those that ran)."""
    out: dict[str, tuple] = {}
    for name, result in (("warm refresh", refresh), ("warm login", login)):
        if result:
            s = result["subject"]
            # CPU per call is a mean over the calls: scale it to the median call by the mean's CPU fraction
            fraction = result["cpu_ms"] / s["mean"] if s.get("mean") else 1.0
            out[name] = (s["median"], s["median"] * min(1.0, fraction))
    if cold and cold.get("cpu_ms"):
        for kind in ("refresh", "login"):
            walls, cpus = cold["ms"][kind], cold["cpu_ms"][kind]
            out[f"cold {kind} (from scratch)"] = (median(walls), median(cpus))
    if restored:
        for kind in ("refresh", "login"):
            if kind in restored:
                out[f"restored {kind} (SnapStart, emulated)"] = (restored[kind]["ms"], restored[kind]["cpu_ms"])
    return out


def table_lines(figures: dict[str, tuple]) -> list[str]:
    lines = ["| path | measured here: wall (CPU / wait) | " + " | ".join(
        f"{m} MB ({share(m):.2f} vCPU): latency, billed, USD per million" for m in SIZES) + " |",
        "|---|---|" + "---|" * len(SIZES)]
    for name, (wall, cpu_ms) in figures.items():
        cpu, wait = _split(wall, cpu_ms)
        cells = []
        for m in SIZES:
            duration = latency(cpu, wait, m)
            cells.append(f"{_fmt(duration)}, {math.ceil(duration)} ms, {price_per_million(duration, m):.2f}")
        lines.append(f"| {name} | {_fmt(wall)} ({_fmt(cpu)} / {_fmt(wait)}) | " + " | ".join(cells) + " |")
    return lines


def _fmt(value: float) -> str:
    return f"{value:.2f} ms" if value < 10 else f"{value:.0f} ms"


def run(refresh, login, cold, restored) -> tuple[list[Row], list[str]]:
    figures = paths(refresh, login, cold, restored)
    if not figures:
        return [], ["memory size model: no figures (run refresh, login, cold and/or restore with it)"]
    notes = ["memory size, latency and cost (a model from this run's figures: CPU time scales with the share, "
             f"min(1, M/{FULL_VCPU_MB}) of a vCPU, waits do not; billed = duration rounded up to 1 ms, a cold start's "
             f"INIT included; {PRICE_NOTE}; loopback waits: add the region's Secrets Manager and API server round "
             "trips at every size):\n" + "\n".join(table_lines(figures))]
    return [], notes
