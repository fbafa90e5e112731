#!/usr/bin/env python3
"""memleak's cost on a real server: Debian's redis-server (jemalloc) under redis-benchmark.

A redis-server on 127.0.0.1 (no persistence) serves `redis-benchmark -q -t set,get -n N`
untraced and with `memleak -p PID` attached (default options, `-s 10`, `--unwind fp`;
with --baseline, another memtrace's memleak too), in interleaved runs. memleak finds
libjemalloc in redis-server's mappings by itself. The server's requests per second
are its own measure: prints medians and the slowdown (untraced / traced) for SET and GET.
Run as root.

--baseline PATH adds another memtrace's memleak, given -O libjemalloc (as one from
before memleak found allocators itself needed).

Usage: bench/redis_bench.py [--runs N] [--requests N] [--memtrace PATH] [--baseline PATH]
"""
import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import time

from benchlib import ROOT, say as print, start_tracer, stop_tracer


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(port):
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        ping = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True)
        if ping.stdout.strip() == "PONG":
            return server
        time.sleep(0.05)
    server.kill()
    raise SystemExit("redis-server did not start")


def jemalloc_of(pid):
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and os.path.basename(fields[5]).startswith("libjemalloc"):
                return fields[5]
    raise SystemExit(f"redis-server {pid} maps no libjemalloc")


def requests_per_second(port, requests):
    """{'SET': rps, 'GET': rps} from one redis-benchmark run."""
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-q", "-t", "set,get", "-n", str(requests)],
        capture_output=True, text=True, check=True).stdout
    found = dict(re.findall(r"(SET|GET): ([0-9.]+) requests per second", out.replace("\r", "\n")))
    return {test: float(rps) for test, rps in found.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--memtrace", default=os.path.join(ROOT, "target/release/memtrace"))
    ap.add_argument("--baseline", help="another memtrace binary to compare with")
    args = ap.parse_args()
    for tool in ("redis-server", "redis-benchmark", "redis-cli"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not installed (apt-get install redis-server redis-tools)")
    port = free_port()
    server = start_redis(port)
    pid = str(server.pid)
    # a long interval: the one report is the final one, read at the end
    memleak = lambda binary, *opts: [binary, "memleak", *opts, "-p", pid, "3600"]
    configs = [
        ("untraced", None),
        ("memleak", memleak(args.memtrace)),
        ("memleak -s 10", memleak(args.memtrace, "-s", "10")),
        ("memleak --unwind fp", memleak(args.memtrace, "--unwind", "fp")),
    ]
    if args.baseline:
        # a memleak from before allocator discovery is told where jemalloc is
        configs.append(("baseline memleak -O jemalloc", memleak(args.baseline, "-O", jemalloc_of(pid))))
    rps = {name: {"SET": [], "GET": []} for name, _ in configs}
    try:
        print(f"# redis-server {pid} on 127.0.0.1:{port}, redis-benchmark -t set,get -n "
              f"{args.requests}, {args.runs} interleaved runs")
        for _ in range(args.runs):
            for name, cmd in configs:
                tracer = start_tracer(cmd) if cmd else None
                try:
                    result = requests_per_second(port, args.requests)
                finally:
                    if tracer:
                        stop_tracer(tracer)
                for test, value in result.items():
                    rps[name][test].append(value)
    finally:
        server.terminate()
        server.wait()
    for test in ("SET", "GET"):
        base = statistics.median(rps["untraced"][test])
        for name, _ in configs:
            med = statistics.median(rps[name][test])
            print(f"{test} {name:30} {med:10.0f} requests/s  {base / med:5.2f}x slower")


if __name__ == "__main__":
    main()
