#!/usr/bin/env python3
"""sessiond's benchmark: its hot path against the cheapest possible handler, in the same run.

Builds the release binary and the reference handlers (bench/reference.rs), starts its own
redis-server (unix socket in a temp dir), and measures with wrk at a fixed connection count,
alternating A B A B within each round:
  - Redis: the reference (one JSON parse, one EVALSHA of a trivial script, one JSON answer)
    against sessiond's tick and current;
  - memory: the store-less reference against sessiond's tick and current on the in-memory store;
  - batches: sessiond's batch of 100 ticks against single ticks, in operations per second;
  - shared limits: sessiond's tick on Redis with the default [limits] through a trusted proxy
    (X-Forwarded-For from POOL addresses, one per client), counted per instance against
    counted in the store (scope = "store");
  - the default configuration: sessiond's tick and current in memory with the default [limits]
    through the trusted proxy, against the same with the limits off: CLIENTS clients (so that
    none passes the default 10 calls per second), client n from address n % POOL;
  - Redis bytes per live session: INFO used_memory before and after starting SESSIONS sessions
    (with everything sessiond keeps for them), on a redis-server of its own.
It prints req/s, p50 and p99 per round, the ratio to the reference, the medians, and the CPU
time the server and Redis spent per request (from /proc), as markdown (the form BENCHMARKS.md
keeps). Needs wrk (apt-get install wrk) and redis-server.

    python3 bench/run.py [--rounds 3] [--seconds 10] [--connections 64] [--sessions 1000000]
"""

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "bench-secret-0123456789"
# Every request of a benchmark comes from one address, so the abuse limits are off.
LOAD_CONFIG = os.path.join(ROOT, "deploy", "k6", "load-test.toml")
POOL = 10_000
CLIENTS = 100_000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, what):
    for _ in range(200):
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not start")


class Processes:
    def __init__(self, work):
        self.work = work
        self.procs = []
        self.pids = {}  # base URL or socket path -> pid, for CPU accounting

    def redis(self, name):
        sock = os.path.join(self.work, f"{name}.sock")
        self.procs.append(subprocess.Popen(
            ["redis-server", "--port", "0", "--unixsocket", sock, "--save", "", "--appendonly", "no",
             "--dir", self.work, "--dbfilename", f"{name}.rdb"], stdout=subprocess.DEVNULL))
        self.pids[sock] = self.procs[-1].pid
        for _ in range(200):
            if os.path.exists(sock):
                break
            time.sleep(0.02)
        return sock

    def start(self, args, env=None, probe="/v1/sessions/tick"):
        port = free_port()
        full_env = dict(os.environ, SESSIOND_LOG="warn", **(env or {}))
        self.procs.append(subprocess.Popen(
            [a.replace("PORT", str(port)) for a in args], env=full_env, stdout=subprocess.DEVNULL))
        base = f"http://127.0.0.1:{port}"
        self.pids[base] = self.procs[-1].pid
        wait_http(base + "/healthz" if "sessiond" in args[0] else base + probe, args[0])
        return base

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait()


def wrk_script(work, name, body_lua, headers_lua='{["Content-Type"] = "application/json"}'):
    path = os.path.join(work, f"{name}.lua")
    with open(path, "w") as f:
        f.write(f"""counter = 0
request = function()
  counter = counter + 1
  local body = {body_lua}
  return wrk.format("POST", nil, {headers_lua}, body)
end
""")
    return path


def limits_config(work, scope):
    """The default [limits], believing the proxy on loopback, counted per instance or in the store."""
    path = os.path.join(work, f"limits-{scope}.toml")
    with open(path, "w") as f:
        f.write(f'[limits]\nscope = "{scope}"\ntrusted_proxies = ["127.0.0.1"]\n')
    return path


def cpu_seconds(pid):
    """User plus system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url, script, seconds, connections, pids=()):
    """Runs wrk after a short warm-up; returns (req/s, p50 ms, p99 ms, CPU us per request of
    each process in `pids`)."""
    base = ["wrk", "-t2", f"-c{connections}", "-s", script]
    subprocess.run(base + ["-d2s", url], capture_output=True, check=True)
    before = [cpu_seconds(pid) for pid in pids]
    out = subprocess.run(base + [f"-d{seconds}s", "--latency", url], capture_output=True, text=True,
                         check=True).stdout
    after = [cpu_seconds(pid) for pid in pids]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    cpu = [(a - b) * 1e6 / requests for a, b in zip(after, before)]

    def pct(p):
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        sys.exit(f"{url}: {errors.group(1)} error responses\n{out}")
    return rps, pct(50), pct(99), cpu


def post(base, path, body):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as answer:
        return json.load(answer)


def redis_info(sock, field):
    out = subprocess.run(["redis-cli", "-s", sock, "info", "memory"], capture_output=True, text=True).stdout
    return int(re.search(rf"^{field}:(\d+)", out, re.M).group(1))


def bytes_per_session(procs, binary, sessions):
    """Starts `sessions` sessions (three attributes each) on a redis-server of its own."""
    sock = procs.redis("memory")
    base = procs.start([binary, "--listen", "127.0.0.1:PORT", "--config", LOAD_CONFIG,
                        "--redis-url", f"redis+unix://{sock}"], env={"SESSIOND_SECRET": SECRET})
    post(base, "/v1/sessions/tick", {"client": "bench-warm-up-client"})
    before = redis_info(sock, "used_memory")
    attrs = {"release": "1.4.2", "environment": "production", "platform": "web"}

    def batch(n):
        ops = [{"op": "tick", "client": f"bench-memory-{n:04d}-{i:04d}", "attributes": attrs} for i in range(1000)]
        post(base, "/v1/sessions/batch", {"operations": ops})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(batch, range(sessions // 1000)))
    after = redis_info(sock, "used_memory")
    keys = int(subprocess.run(["redis-cli", "-s", sock, "dbsize"], capture_output=True, text=True).stdout)
    return (after - before) / sessions, keys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--sessions", type=int, default=1_000_000)
    args = ap.parse_args()
    for tool in ("wrk", "redis-server", "redis-cli", "cargo"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed (wrk: apt-get install wrk)")
    subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "sessiond", "--example", "reference"],
                   cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target/release/sessiond")
    reference = os.path.join(ROOT, "target/release/examples/reference")

    work = tempfile.mkdtemp(prefix="sessiond-bench-")
    procs = Processes(work)
    try:
        sock = procs.redis("hot")
        targets = {
            "reference (Redis)": procs.start([reference, "--mode", "redis", "--listen", "127.0.0.1:PORT",
                                              "--redis-url", f"redis+unix://{sock}"]),
            "sessiond on Redis": procs.start([binary, "--listen", "127.0.0.1:PORT", "--config", LOAD_CONFIG,
                                              "--redis-url", f"redis+unix://{sock}"],
                                             env={"SESSIOND_SECRET": SECRET}),
            "reference (no store)": procs.start([reference, "--mode", "none", "--listen", "127.0.0.1:PORT"]),
            "sessiond in memory": procs.start([binary, "--listen", "127.0.0.1:PORT", "--config", LOAD_CONFIG]),
        }
        targets["sessiond in memory, default limits"] = procs.start(
            [binary, "--listen", "127.0.0.1:PORT", "--config", limits_config(work, "instance")])
        for scope in ("instance", "store"):
            targets[f"limits per {scope}"] = procs.start(
                [binary, "--listen", "127.0.0.1:PORT", "--config", limits_config(work, scope),
                 "--redis-url", f"redis+unix://{sock}"], env={"SESSIOND_SECRET": SECRET})
        single = wrk_script(work, "single", f'string.format(\'{{"client":"bench-client-%05d"}}\', counter % {POOL})')
        ops = ",".join(['{"op":"tick","client":"bench-client-%05d"}'] * 100)
        fmt_args = ", ".join([f"(counter * 100 + {i}) % {POOL}" for i in range(100)])
        batch = wrk_script(work, "batch", f"string.format('{{\"operations\":[{ops}]}}', {fmt_args})")
        # Client n comes from address 10.x.y.z number n, through the trusted proxy.
        proxied = wrk_script(
            work, "proxied", f'string.format(\'{{"client":"bench-client-%05d"}}\', counter % {POOL})',
            '{["Content-Type"] = "application/json", ["X-Forwarded-For"] = string.format("10.%d.%d.%d", '
            f'math.floor(counter % {POOL} / 65536), math.floor(counter % {POOL} / 256) % 256, counter % {POOL} % 256)}}')
        many = f'string.format(\'{{"client":"bench-client-%06d"}}\', counter % {CLIENTS})'
        many_single = wrk_script(work, "many", many)
        many_proxied = wrk_script(
            work, "many-proxied", many,
            '{["Content-Type"] = "application/json", ["X-Forwarded-For"] = string.format("10.%d.%d.%d", '
            f'math.floor(counter % {POOL} / 65536), math.floor(counter % {POOL} / 256) % 256, counter % {POOL} % 256)}}')
        pairs = [
            ("reference (Redis)", "sessiond on Redis", "tick"),
            ("reference (Redis)", "sessiond on Redis", "current"),
            ("reference (no store)", "sessiond in memory", "tick"),
            ("reference (no store)", "sessiond in memory", "current"),
        ]
        ratios = {}
        print(f"wrk -t2 -c{args.connections} -d{args.seconds}s, {POOL} clients, A B A B per round\n")
        print("| round | A | req/s | p50 ms | p99 ms | B | req/s | p50 ms | p99 ms | B/A req/s | B/A p99 |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        batch_ratios = []
        cpu = {}  # what was measured -> [(server us, Redis us) per request, per round]

        def measured(name, target, path, script):
            pids = [procs.pids[target]] + ([procs.pids[sock]] if "Redis" in name else [])
            result = wrk(f"{target}{path}", script, args.seconds, args.connections, pids)
            cpu.setdefault(name, []).append(result[3] + [0.0] * (2 - len(result[3])))
            return result

        for r in range(1, args.rounds + 1):
            a, b = "limits per instance", "limits per store"
            ra = measured(f"sessiond on Redis {a} tick", targets[a], "/v1/sessions/tick", proxied)
            rb = measured(f"sessiond on Redis {b} tick", targets[b], "/v1/sessions/tick", proxied)
            ratios.setdefault("tick, default limits in the store over per instance", []).append(
                (rb[0] / ra[0], rb[2] / ra[2]))
            print(f"| {r} | tick, {a} | {ra[0]:,.0f} | {ra[1]:.2f} | {ra[2]:.2f} | tick, {b} | {rb[0]:,.0f} | "
                  f"{rb[1]:.2f} | {rb[2]:.2f} | {rb[0] / ra[0]:.2f} | {rb[2] / ra[2]:.2f} |")
            for op in ("tick", "current"):
                a, b = "sessiond in memory", "sessiond in memory, default limits"
                ra = measured(f"{a} {op}, limits off", targets[a], f"/v1/sessions/{op}", many_single)
                rb = measured(f"{b} {op}", targets[b], f"/v1/sessions/{op}", many_proxied)
                ratios.setdefault(f"in memory {op}, default limits over limits off", []).append(
                    (rb[0] / ra[0], rb[2] / ra[2]))
                print(f"| {r} | {op}, limits off | {ra[0]:,.0f} | {ra[1]:.2f} | {ra[2]:.2f} | {op}, default limits | "
                      f"{rb[0]:,.0f} | {rb[1]:.2f} | {rb[2]:.2f} | {rb[0] / ra[0]:.2f} | {rb[2] / ra[2]:.2f} |")
            for a, b, op in pairs:
                ra = measured(f"{a} {op}", targets[a], f"/v1/sessions/{op}", single)
                rb = measured(f"{b} {op}", targets[b], f"/v1/sessions/{op}", single)
                key = f"{b} {op}"
                ratios.setdefault(key, []).append((rb[0] / ra[0], rb[2] / ra[2]))
                print(f"| {r} | {a} | {ra[0]:,.0f} | {ra[1]:.2f} | {ra[2]:.2f} | {b} {op} | {rb[0]:,.0f} | "
                      f"{rb[1]:.2f} | {rb[2]:.2f} | {rb[0] / ra[0]:.2f} | {rb[2] / ra[2]:.2f} |")
                if op == "tick" and b == "sessiond on Redis":
                    bb = measured(f"{b} batch of 100 ticks", targets[b], "/v1/sessions/batch", batch)
                    batch_ratios.append(bb[0] * 100 / rb[0])
                    print(f"| {r} | sessiond on Redis tick | {rb[0]:,.0f} | | | batch of 100 ticks | "
                          f"{bb[0]:,.0f} ({bb[0] * 100:,.0f} ops/s) | {bb[1]:.2f} | {bb[2]:.2f} | "
                          f"{bb[0] * 100 / rb[0]:.2f} (ops/s) | |")
        print("\nMedians over the rounds:\n")
        print("| measured | req/s ratio to reference | p99 ratio to reference |")
        print("|---|---|---|")
        for key, values in ratios.items():
            print(f"| {key} | {statistics.median(v[0] for v in values):.2f} | "
                  f"{statistics.median(v[1] for v in values):.2f} |")
        print(f"| batch of 100, operations/s over single ticks | {statistics.median(batch_ratios):.1f} | |")
        print("\nCPU time per request (us, medians; a batch request carries 100 operations):\n")
        print("| measured | server process | redis-server |")
        print("|---|---|---|")
        for name, values in cpu.items():
            print(f"| {name} | {statistics.median(v[0] for v in values):.1f} | "
                  f"{statistics.median(v[1] for v in values):.1f} |")
        if args.sessions:
            per, keys = bytes_per_session(procs, binary, args.sessions)
            print(f"\nRedis: {per:.0f} bytes per live session (used_memory delta over {args.sessions:,} "
                  f"sessions with three attributes; {keys:,} keys)")
    finally:
        procs.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
