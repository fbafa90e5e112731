#!/usr/bin/env python3
"""Overhead of the page-fault tools on a fault storm, against no tracing and bpftrace.

Workload: tests/fixtures/toucher.c touching every 4 KiB page of a 512 MiB private
anonymous mapping (131072 faults). For each configuration, interleaved runs: the
tracer is started, the workload is timed once it says it is attached (so its own
start and exit are not counted), then the tracer is stopped. Prints medians and
ratios to the untraced median. Run as root.

Usage: bench/fault_bench.py [--runs N] [--mib N] [--memtrace PATH] [--only NAME,...]
"""
import argparse
import functools
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

print = functools.partial(print, flush=True)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def configs(memtrace):
    yield "untraced", None, None
    for tool in ("ffaults", "fmapfault", "hfaults", "faults"):
        yield f"memtrace {tool}", [memtrace, tool], "Tracing"
    yield "bpftrace page_fault_user @[comm]", [
        "bpftrace", "-e",
        'BEGIN { printf("ready\\n"); } tracepoint:exceptions:page_fault_user { @[comm] = count(); }'], "ready"
    yield "bpftrace page-faults:1 @[ustack,pid,comm]", [
        "bpftrace", "-e",
        'BEGIN { printf("ready\\n"); } software:page-faults:1 { @[ustack, pid, comm] = count(); }'], "ready"


def start_tracer(cmd, ready):
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stream = p.stdout if ready == "ready" else p.stderr
    for line in stream:
        if line.startswith(ready):
            return p
    p.kill()
    raise RuntimeError(f"{cmd[:2]} did not start: {p.stderr.read()}")


def stop_tracer(p):
    while True:
        p.send_signal(signal.SIGINT)
        try:
            p.communicate(timeout=5)
            return
        except subprocess.TimeoutExpired:
            pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--memtrace", default=os.path.join(ROOT, "target/release/memtrace"))
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="memtrace-fault-bench-")
    toucher = os.path.join(tmp, "toucher")
    # frame pointers, as stack profiling wants: every stack walk then follows the real chain
    subprocess.run([
        "cc", "-O2", "-fno-omit-frame-pointer", "-o", toucher, os.path.join(ROOT, "tests/fixtures/toucher.c"),
    ], check=True)
    workload = [toucher, "anon", str(args.mib)]
    chosen = [c for c in configs(args.memtrace)
              if c[1] is None or not args.only or any(o in c[0] for o in args.only.split(","))]
    chosen = [c for c in chosen if c[1] is None or shutil.which(c[1][0]) or os.path.exists(c[1][0])]
    times = {name: [] for name, _, _ in chosen}
    print(f"# {args.mib} MiB anonymous touch ({args.mib * 256} faults), {args.runs} interleaved runs")
    for _ in range(args.runs):
        for name, cmd, ready in chosen:
            tracer = start_tracer(cmd, ready) if cmd else None
            t0 = time.perf_counter()
            subprocess.run(workload, check=True)
            times[name].append(time.perf_counter() - t0)
            if tracer:
                stop_tracer(tracer)
    base = statistics.median(times["untraced"])
    for name, samples in times.items():
        med = statistics.median(samples)
        print(f"{name:44} {med * 1000:8.1f} ms  {med / base:5.2f}x")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    sys.exit(main())
