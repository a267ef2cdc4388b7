#!/usr/bin/env python3
"""Two builds of sessiond against each other, A B A B, on the calls bench/run.py measures.

Where run.py compares sessiond with a reference handler, this compares two sessiond binaries
(say, main before and after a change), each on a redis-server of its own and in memory, with
the same wrk scripts, alternating within each round so that the machine's drift falls on
both. It prints req/s and p99 per round, and the medians of B over A for req/s, p99 and the
CPU time per request of the server and of Redis (from /proc): on a shared machine the CPU
time moves less than req/s does.

    python3 bench/ab.py A_BINARY B_BINARY [--rounds 5] [--seconds 10] [--connections 64]
        [--only "Redis tick,memory current"]
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import LOAD_CONFIG, POOL, SECRET, Processes, wrk, wrk_script  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--only", help="the cases to measure, comma-separated (default: all)")
    args = ap.parse_args()
    for tool in ("wrk", "redis-server"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed (wrk: apt-get install wrk)")

    work = tempfile.mkdtemp(prefix="sessiond-ab-")
    procs = Processes(work)
    try:
        builds = {}
        for name, binary in (("A", args.a), ("B", args.b)):
            sock = procs.redis(f"redis-{name}")
            builds[name] = {
                "Redis": (procs.start([binary, "--listen", "127.0.0.1:PORT", "--config", LOAD_CONFIG,
                                       "--redis-url", f"redis+unix://{sock}"],
                                      env={"SESSIOND_SECRET": SECRET}), sock),
                "memory": (procs.start([binary, "--listen", "127.0.0.1:PORT", "--config", LOAD_CONFIG]),
                           None),
            }
        single = wrk_script(work, "single", f'string.format(\'{{"client":"bench-client-%05d"}}\', counter % {POOL})')
        ops = ",".join(['{"op":"tick","client":"bench-client-%05d"}'] * 100)
        fmt_args = ", ".join([f"(counter * 100 + {i}) % {POOL}" for i in range(100)])
        batch = wrk_script(work, "batch", f"string.format('{{\"operations\":[{ops}]}}', {fmt_args})")
        cases = [
            ("Redis", "tick", single),
            ("Redis", "current", single),
            ("Redis", "batch", batch),
            ("memory", "tick", single),
            ("memory", "current", single),
        ]
        if args.only:
            wanted = {c.strip() for c in args.only.split(",")}
            cases = [c for c in cases if f"{c[0]} {c[1]}" in wanted]
        print(f"wrk -t2 -c{args.connections} -d{args.seconds}s, {POOL} clients, A B A B per round; "
              f"A {args.a}, B {args.b}\n")
        print("| round | measured | A req/s | A p99 ms | A CPU us (server, Redis) | B req/s | B p99 ms | "
              "B CPU us (server, Redis) | B/A req/s | B/A p99 |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        ratios = {}
        for r in range(1, args.rounds + 1):
            for store, op, script in cases:
                results = {}
                for name in ("A", "B"):
                    base, sock = builds[name][store]
                    pids = [procs.pids[base]] + ([procs.pids[sock]] if sock else [])
                    results[name] = wrk(f"{base}/v1/sessions/{op}", script, args.seconds,
                                        args.connections, pids)
                a, b = results["A"], results["B"]
                key = f"{store} {op}"
                cpu = [bc / ac if ac else 1.0 for ac, bc in zip(a[3], b[3])]
                ratios.setdefault(key, []).append((b[0] / a[0], b[2] / a[2], *cpu))
                print(f"| {r} | {key} | {a[0]:,.0f} | {a[2]:.2f} | {', '.join(f'{c:.1f}' for c in a[3])} | "
                      f"{b[0]:,.0f} | {b[2]:.2f} | {', '.join(f'{c:.1f}' for c in b[3])} | "
                      f"{b[0] / a[0]:.2f} | {b[2] / a[2]:.2f} |")
        print("\nMedians of B over A:\n")
        print("| measured | req/s | p99 | server CPU per request | Redis CPU per request |")
        print("|---|---|---|---|---|")
        for key, values in ratios.items():
            columns = [statistics.median(v[n] for v in values) for n in range(len(values[0]))]
            cells = [f"{c:.2f}" for c in columns] + ["-"] * (4 - len(columns))
            print(f"| {key} | {' | '.join(cells)} |")
    finally:
        procs.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
