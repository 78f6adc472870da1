"""python -m bench [refresh login cold restore memory throughput profile]: run the benchmarks, print one table.

With no names, everything runs, in this order: package (for cold, restore + memory), refresh, login, cold,
restore, memory, the memory-size model (bench/costs.py, from the figures that ran), throughput,
profile. Sections with details come first; the table is printed last.
"""
from __future__ import annotations

import os
import platform
import signal
import sys
import time
import traceback

from bench import cold_start, costs, login_warm, memory_size, profiles, refresh_warm, restore, throughput
from bench.stats import Row, table
from bench.world import World

ALL = ("refresh", "login", "cold", "restore", "memory", "throughput", "profile")


def _stop_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through World.__exit__: servers and temp files go


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    wanted = [name for name in argv if not name.startswith("-")] or list(ALL)
    unknown = set(wanted) - set(ALL)
    if unknown:
        print(f"unknown benchmark(s): {', '.join(sorted(unknown))}; choose from {', '.join(ALL)}", file=sys.stderr)
        return 2
    started = time.monotonic()
    load_before = os.getloadavg()
    rows: list[Row] = []
    sections: list[str] = []
    failures = 0

    def attempt(name: str, step):
        nonlocal failures
        begin = time.monotonic()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            return step()
        except Exception as error:  # one benchmark failing must not hide the others
            failures += 1
            rows.append(Row(f"{name}: FAILED", type(error).__name__, met="NO"))
            sections.append(f"{name} failed:\n{traceback.format_exc()[-2000:]}")
            return None
        finally:
            print(f"[bench] {name} took {time.monotonic() - begin:.1f} s", file=sys.stderr, flush=True)

    refresh_result = None
    with World() as world:
        zip_path, package_note = None, "not requested"
        if "cold" in wanted or "memory" in wanted or "restore" in wanted:
            built = attempt("package", lambda: memory_size.build_package(world))
            if built:
                zip_path, package_note = built
                if zip_path:
                    world.deployed_dir = memory_size.unpack(zip_path, world)
        if "refresh" in wanted:
            out = attempt("refresh", lambda: refresh_warm.run(world))
            if out:
                rows.extend(out[0])
                sections.extend(out[1])
                refresh_result = out[2]
        login_result = None
        if "login" in wanted:
            out = attempt("login", lambda: login_warm.run(world))
            if out:
                rows.extend(out[0])
                sections.extend(out[1])
                login_result = out[2]
        cold = None
        if "cold" in wanted or "memory" in wanted:
            reps = cold_start.REPS if "cold" in wanted else 2
            out = attempt("cold", lambda: cold_start.run(world, reps=reps))
            if out:
                if "cold" in wanted:
                    rows.extend(out[0])
                sections.extend(out[1])
                cold = out[2]
        restored = None
        if "restore" in wanted:
            out = attempt("restore", lambda: restore.run(world, cold))
            if out:
                rows.extend(out[0])
                sections.extend(out[1])
                restored = out[2]
        if "memory" in wanted:
            out = attempt("memory", lambda: memory_size.run(world, zip_path, package_note, cold, login_result))
            if out:
                rows.extend(out[0])
                sections.extend(out[1])
        if any(name in wanted for name in ("refresh", "login", "cold", "restore")):
            out = attempt("costs", lambda: costs.run(refresh_result, login_result, cold, restored))
            if out:
                sections.extend(out[1])
        if "throughput" in wanted:
            out = attempt("throughput", lambda: throughput.run(world))
            if out:
                rows.extend(out[0])
                sections.extend(out[1])
        if "profile" in wanted:
            out = attempt("profile", lambda: profiles.run(world))
            if out:
                sections.append("\n".join(out))

    load_after = os.getloadavg()
    print()
    for section in sections:
        print(section)
        print()
    print(f"machine: {platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"load average {load_before[0]:.1f} before / {load_after[0]:.1f} after; "
          f"whole run {time.monotonic() - started:.0f} s. Times: median/p99 per call; ratio = figure / floor.")
    print()
    print(table(rows))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
