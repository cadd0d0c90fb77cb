#!/usr/bin/env python3
"""Idle daemon benchmark: RSS and CPU of `dbkeep run` with 3 targets over 60 s, and
/metrics latency under 100 requests/s for 10 s from a loopback client (p50/p99).

Targets (issue 3): idle RSS <= 20 MiB, /metrics p99 < 5 ms. Uses SQLite targets so no
server is needed; the first backup of each runs at start, then the daemon idles.
Writes bench/results/<date>-idle.md. Needs a release build.
"""
import argparse
import datetime
import http.client
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")


def proc_status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])  # kB
    raise KeyError(key)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--idle-seconds", type=int, default=60)
    ap.add_argument("--rate", type=int, default=100)
    ap.add_argument("--load-seconds", type=int, default=10)
    ap.add_argument("--binary", default=f"{ROOT}/target/release/dbkeep")
    args = ap.parse_args()
    if not os.path.exists(args.binary):
        sys.exit(f"{args.binary} missing: run cargo build --release first")

    work = tempfile.mkdtemp(prefix="dbkeep-idle-", dir="/tmp")
    cfg = f"{work}/dbkeep.toml"
    with open(cfg, "w") as f:
        f.write(f'[daemon]\nlisten = "127.0.0.1:0"\n[storage.local]\npath = "{work}/backups"\n')
        for name, sched in [("orders", 'every = "1h"'), ("cache", 'every = "6h"'), ("audit", 'schedule = "0 2 * * *"')]:
            db = f"{work}/{name}.db"
            con = sqlite3.connect(db)
            con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            con.executemany("INSERT INTO t (v) VALUES (?)", [(f"row {i}",) for i in range(20000)])
            con.commit()
            con.close()
            f.write(f'[targets.{name}]\nkind = "sqlite"\npath = "{db}"\n{sched}\n')
    proc = subprocess.Popen([args.binary, "--config", cfg, "run"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=dict(os.environ, RUST_LOG="warn"))
    try:
        line = proc.stdout.readline()
        m = re.search(r"http://([\d.]+):(\d+)", line)
        if not m:
            sys.exit(f"daemon did not start: {line!r}")
        host, port = m.group(1), int(m.group(2))
        time.sleep(5)  # first backups of the interval targets run at start
        rss0 = proc_status(proc.pid, "VmRSS")
        cpu0 = cpu_seconds(proc.pid)
        t0 = time.monotonic()
        samples = []
        while time.monotonic() - t0 < args.idle_seconds:
            time.sleep(1)
            samples.append(proc_status(proc.pid, "VmRSS"))
        cpu_idle = cpu_seconds(proc.pid) - cpu0
        idle_wall = time.monotonic() - t0

        conn = http.client.HTTPConnection(host, port, timeout=5)
        lat = []
        period = 1.0 / args.rate
        n = args.rate * args.load_seconds
        start = time.monotonic()
        for i in range(n):
            target = start + i * period
            now = time.monotonic()
            if target > now:
                time.sleep(target - now)
            a = time.perf_counter()
            conn.request("GET", "/metrics")
            r = conn.getresponse()
            body = r.read()
            lat.append((time.perf_counter() - a) * 1000)
            if r.status != 200 or b"dbkeep_build_info" not in body:
                sys.exit(f"bad /metrics response {r.status}")
        load_wall = time.monotonic() - start
        rss_after = proc_status(proc.pid, "VmRSS")
        hwm = proc_status(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)

    lat.sort()
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
    lines = [
        f"# Idle daemon benchmark, {datetime.date.today()}",
        "",
        f"`dbkeep run`, 3 SQLite targets (every 1h, every 6h, cron 02:00), release build, {os.cpu_count()} cores.",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| RSS idle, median over {args.idle_seconds} s | {statistics.median(samples) / 1024:.1f} MiB "
        f"(min {min(samples) / 1024:.1f}, max {max(samples) / 1024:.1f}) | ≤ 20 MiB |",
        f"| RSS after the first backups | {rss0 / 1024:.1f} MiB | |",
        f"| peak RSS (VmHWM, incl. first backups) | {hwm / 1024:.1f} MiB | |",
        f"| CPU while idle | {cpu_idle:.2f} s over {idle_wall:.0f} s ({100 * cpu_idle / idle_wall:.3f} %) | |",
        f"| /metrics at {args.rate}/s for {args.load_seconds} s ({n} requests, {n / load_wall:.0f}/s achieved) "
        f"| p50 {p(0.50):.2f} ms, p99 {p(0.99):.2f} ms, max {lat[-1]:.2f} ms | p99 < 5 ms |",
        f"| RSS after the load | {rss_after / 1024:.1f} MiB | |",
    ]
    print("\n".join(lines))
    os.makedirs(f"{ROOT}/bench/results", exist_ok=True)
    out = f"{ROOT}/bench/results/{datetime.date.today()}-idle.md"
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
