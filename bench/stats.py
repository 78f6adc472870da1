"""Percentiles, interleaved measurement and the result table. Standard library only."""
from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p50 of an even count is the lower middle)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def summary(values: Sequence[float]) -> dict:
    return {"n": len(values), "median": median(values), "p99": percentile(values, 99),
            "min": min(values) if values else float("nan"),
            "mean": sum(values) / len(values) if values else float("nan")}


@dataclass
class Subject:
    """Something measured one call at a time. `prepare(n)` builds the inputs of a batch (untimed:
    e.g. the API Gateway events, which Lambda hands to the handler ready-made); `call(x)` is timed."""

    name: str
    call: Callable[[object], object]
    prepare: Callable[[int], list] = lambda n: [None] * n
    check: Callable[[object], None] | None = None  # called on the first result only, untimed
    times: list[float] = field(default_factory=list)
    cpu_ms: float = 0.0  # process CPU time over the measured calls (for bench/costs.py: what scales with a CPU share)

    def cpu_per_call(self) -> float:
        return self.cpu_ms / len(self.times) if self.times else float("nan")

    def batch(self, n: int) -> None:
        inputs = self.prepare(n)
        gc.collect()  # garbage of the other subject's batch is not this one's cost
        call, clock, times = self.call, time.perf_counter_ns, self.times
        cpu_begin = time.process_time()
        for x in inputs:
            begin = clock()
            result = call(x)
            times.append((clock() - begin) / 1e6)  # ms
            if self.check is not None:
                self.check(result)
                self.check = None
        self.cpu_ms += (time.process_time() - cpu_begin) * 1000


def interleave(subjects: Sequence[Subject], rounds: int, batch: int, warmup: int = 20) -> None:
    """Alternate batches of every subject (A B, then B A, ...) so that drift of the shared machine
    falls on all of them alike. Warm-up calls are made and thrown away first."""
    for subject in subjects:
        subject.batch(warmup)
        subject.times.clear()
        subject.cpu_ms = 0.0
    for r in range(rounds):
        for subject in (subjects if r % 2 == 0 else list(reversed(subjects))):
            subject.batch(batch)


def per_round(subject: Subject, batch: int) -> list[float]:
    """The median of each round's batch (interleave() appends one batch per subject per round)."""
    times = subject.times
    return [median(times[i:i + batch]) for i in range(0, len(times) - batch + 1, batch)]


def paired(a: Subject, b: Subject, batch: int, op=lambda x, y: x / y) -> dict:
    """op(a, b) round by round, on each round's batch medians: drift between rounds cancels out."""
    values = [op(x, y) for x, y in zip(per_round(a, batch), per_round(b, batch))]
    return {"median": median(values), "p25": percentile(values, 25), "p75": percentile(values, 75), "rounds": len(values)}


def run_for(seconds: float, subjects: Sequence[Subject], window: float = 0.2) -> dict[str, float]:
    """Throughput: alternate time windows of each subject for `seconds` in all; calls per second each."""
    done = {s.name: 0 for s in subjects}
    spent = {s.name: 0.0 for s in subjects}
    deadline = time.perf_counter() + seconds
    turn = 0
    while time.perf_counter() < deadline:
        subject = subjects[turn % len(subjects)]
        turn += 1
        inputs = subject.prepare(64)
        gc.collect()
        begin = time.perf_counter()
        end = begin + window
        count = 0
        while True:
            for x in inputs:
                subject.call(x)
            count += len(inputs)
            if time.perf_counter() >= end:
                break
            inputs = subject.prepare(64)  # a fresh event per call, as Lambda gives; its cost is counted
        spent[subject.name] += time.perf_counter() - begin
        done[subject.name] += count
    return {name: done[name] / spent[name] if spent[name] else 0.0 for name in done}


# ---------------------------------------------------------------- the table


@dataclass
class Row:
    figure: str
    value: str
    floor: str = "n/a"
    ratio: str = "n/a"
    target: str = "-"
    met: str = "-"


def ms(x: float) -> str:
    return f"{x:.3f} ms" if x < 10 else f"{x:.1f} ms"


def timed_row(figure: str, value: float, floor: float, max_ratio: float | None, unit=ms) -> Row:
    ratio = value / floor if floor else float("nan")
    if max_ratio is None:
        return Row(figure, unit(value), unit(floor), f"{ratio:.2f}")
    return Row(figure, unit(value), unit(floor), f"{ratio:.2f}", f"ratio <= {max_ratio:g}",
               "yes" if ratio <= max_ratio else "NO")


def table(rows: Sequence[Row]) -> str:
    head = Row("figure", "value", "floor", "ratio", "target", "met?")
    cells = [[r.figure, r.value, r.floor, r.ratio, r.target, r.met] for r in [head, *rows]]
    widths = [max(len(c[i]) for c in cells) for i in range(6)]
    lines = []
    for n, c in enumerate(cells):
        lines.append("| " + " | ".join(c[i].ljust(widths[i]) for i in range(6)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
