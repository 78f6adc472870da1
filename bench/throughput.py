"""5. Refresh throughput per container: one process on one core, then two processes in parallel.

Each process is a warm container (bench.harness.Container, pinned to its own CPU) running the
refresh handler in a loop, a fresh API Gateway event per call (building it is counted: a real
container also receives one per call), alternating time windows of the refresh and of the crypto
floor (harness.CryptoFloor), so each window of the subject has its floor next to it in time.
Phases alternate: 1 process, 2 processes, 1, 2, ... (the idle process waits on a pipe meanwhile).
Reported: req/s of 1 process; aggregate and per-process req/s of 2; the 2-process/1-process ratio.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from bench import harness
from bench.stats import Row, Subject, run_for
from bench.world import ROOT, die_with_parent

PHASE_SECONDS = 1.5
PHASES = 3  # of each kind


def child(config: dict) -> dict:
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[config["cpu"] % len(cpus)]})
    # The protocol gets a descriptor of its own: the service prints its EMF metrics on stdout.
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    container = harness.Container()
    token = config["session_tokens"][config["clusters"][0]]
    subject = Subject("refresh", container.invoke, container.events({"op": "refresh", "jweToken": token, "csrf": config["csrf"]["token"]}))
    floor = Subject("floor", harness.CryptoFloor(harness.read_private_pem(config), token))
    harness.check_answer(container.invoke(subject.prepare(1)[0]))
    run_for(0.3, [subject, floor], window=0.05)  # warm-up
    protocol.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "exit":
            break
        rates = run_for(float(words[1]), [subject, floor])
        protocol.write(json.dumps(rates) + "\n")
    return {"done": True}


def run(world) -> tuple[list[Row], list[str]]:
    path = os.path.join(world.tmp, "throughput.json")
    with open(path, "w") as handle:
        json.dump(world.config(), handle)
    children = []
    for cpu in (0, 1):
        config_path = f"{path}.{cpu}"
        with open(config_path, "w") as handle:
            json.dump({**world.config(), "cpu": cpu}, handle)
        children.append(subprocess.Popen([sys.executable, "-m", "bench.throughput", "--child", config_path],
                                         cwd=ROOT, env=world.service_env(), stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
                                         preexec_fn=die_with_parent))
    try:
        for process in children:
            if not json.loads(process.stdout.readline() or "{}").get("ready"):
                raise RuntimeError("a throughput child did not start")
        single, dual = [], []
        for _ in range(PHASES):
            children[0].stdin.write(f"run {PHASE_SECONDS}\n")
            children[0].stdin.flush()
            single.append(json.loads(children[0].stdout.readline()))
            for process in children:
                process.stdin.write(f"run {PHASE_SECONDS}\n")
                process.stdin.flush()
            dual.append([json.loads(process.stdout.readline()) for process in children])
    finally:
        for process in children:
            try:
                process.stdin.write("exit\n")
                process.stdin.close()
            except OSError:
                pass
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def mean(values):
        return sum(values) / len(values)

    one = {k: mean([p[k] for p in single]) for k in ("refresh", "floor")}
    agg = {k: mean([sum(p[k] for p in phase) for phase in dual]) for k in ("refresh", "floor")}
    per = {k: agg[k] / 2 for k in agg}
    scaling = {k: agg[k] / one[k] for k in agg}

    def rate_row(figure, values):
        return Row(figure, f"{values['refresh']:.0f} req/s", f"{values['floor']:.0f} op/s",
                   f"{values['refresh'] / values['floor']:.2f}")

    rows = [
        rate_row("5. refresh throughput, 1 process (1 core)", one),
        rate_row("5. refresh throughput, 2 processes, aggregate", agg),
        rate_row("5. refresh throughput, 2 processes, per process", per),
        Row("5. throughput scaling, 2 processes / 1", f"{scaling['refresh']:.2f}x", f"{scaling['floor']:.2f}x",
            f"{scaling['refresh'] / scaling['floor']:.2f}"),
    ]
    notes = [f"throughput: {PHASES} phases of {PHASE_SECONDS} s each for 1 and 2 processes (pinned to CPU 0 / CPU 1), "
             "refresh and floor in alternating 0.2 s windows; ratio = refresh rate / floor rate (higher is better); "
             "single-phase refresh req/s: " + ", ".join(f"{p['refresh']:.0f}" for p in single)
             + "; dual-phase aggregate: " + ", ".join(f"{sum(x['refresh'] for x in p):.0f}" for p in dual)]
    return rows, notes


if __name__ == "__main__":
    harness.child_main(child)
