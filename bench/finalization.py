#!/usr/bin/env python3
"""Measures how sessions that idle out are finalized, on Redis with several instances.

Starts its own redis-server (unix socket in a temp dir) and INSTANCES sessiond release
binaries sharing it, starts SESSIONS sessions spread over the instances, waits until they
idle out, and reads the event log. It prints how many `ended` events each session got (must be
exactly one), the lag from each session's expiry to its finalization (p50, p99, max), and the
total length of the event streams against `events_max_len`. Run from the repository root after
`cargo build --release`:

    python3 bench/finalization.py [SESSIONS] [INSTANCES] [EVENTS_MAX_LEN]
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

SESSIONS = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
INSTANCES = int(sys.argv[2]) if len(sys.argv) > 2 else 2
EVENTS_MAX_LEN = int(sys.argv[3]) if len(sys.argv) > 3 else 100000
IDLE_S = 2


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def millis(text):
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


# The events are an admin call, off without a token.
ADMIN_TOKEN = "bench-admin-token-0123456789"


def call(base, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    headers = {"content-type": "application/json", "authorization": f"Bearer {ADMIN_TOKEN}"}
    req = urllib.request.Request(base + path, data=data, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as answer:
        return json.load(answer)


def main():
    work = tempfile.mkdtemp(prefix="sessiond-bench-")
    sock = os.path.join(work, "redis.sock")
    redis = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", sock, "--save", "",
                              "--appendonly", "no", "--dir", work], stdout=subprocess.DEVNULL)
    config = os.path.join(work, "sessiond.toml")
    with open(config, "w") as f:
        f.write(f'events_max_len = {EVENTS_MAX_LEN}\n[namespaces.app]\nidle_timeout = "{IDLE_S}s"\n'
                # One address starts every session: the abuse limits are off.
                '[limits]\nclient_per_second = 0\naddress_per_second = 0\n'
                'new_clients_per_address_per_minute = 0\n')
    bases, procs = [], []
    try:
        time.sleep(0.3)
        env = dict(os.environ, SESSIOND_SECRET="bench-secret-0123456789", SESSIOND_LOG="warn",
                   SESSIOND_ADMIN_TOKEN=ADMIN_TOKEN)
        for _ in range(INSTANCES):
            port = free_port()
            procs.append(subprocess.Popen(
                ["target/release/sessiond", "--config", config, "--listen", f"127.0.0.1:{port}",
                 "--redis-url", f"redis+unix://{sock}"], env=env))
            bases.append(f"http://127.0.0.1:{port}")
        time.sleep(0.5)

        def start(i):
            return call(bases[i % INSTANCES], "/v1/sessions/tick",
                        {"namespace": "app", "client": f"bench-client-{i:08d}"})

        with ThreadPoolExecutor(16) as pool:
            sessions = list(pool.map(start, range(SESSIONS)))
        expiry = {s["session_id"]: millis(s["expires_at"]) for s in sessions}
        time.sleep(IDLE_S + 2.5)

        events, after = [], None
        while True:
            page = call(bases[0], "/v1/events?limit=1000" + (f"&after={after}" if after else ""))
            if not page["events"]:
                break
            events += page["events"]
            after = page["next"]
        ended = {}
        for e in events:
            if e["type"] == "ended" and e["session_id"] in expiry:
                ended.setdefault(e["session_id"], []).append(e)
        counts = [len(ended.get(sid, [])) for sid in expiry]
        lags = sorted(millis(es[0]["recorded_at"]) - expiry[sid] for sid, es in ended.items())
        pct = lambda q: lags[min(len(lags) - 1, int(q * len(lags)))]
        lens = subprocess.run(["redis-cli", "-s", sock, "--no-raw", "eval",
                               "local n = 0; for _, k in ipairs(redis.call('KEYS', 'sd:*:ev')) do "
                               "n = n + redis.call('XLEN', k) end; return n", "0"],
                              capture_output=True, text=True).stdout.strip()
        print(f"sessions {SESSIONS}, instances {INSTANCES}, sweep_interval 1s (default), idle_timeout {IDLE_S}s")
        print(f"ended events per session: exactly one for {counts.count(1)}, none for "
              f"{counts.count(0)}, more than one for {sum(1 for c in counts if c > 1)}")
        print(f"finalization lag after expiry: p50 {pct(0.5)} ms, p99 {pct(0.99)} ms, max {lags[-1]} ms")
        print(f"events readable {len(events)} of {2 * SESSIONS} written; stream entries {lens} "
              f"(events_max_len {EVENTS_MAX_LEN}; older ones trimmed, so their sessions show none above)")
    finally:
        for p in procs:
            p.terminate()
        redis.terminate()


if __name__ == "__main__":
    main()
