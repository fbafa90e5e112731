#!/usr/bin/env python3
"""What tracing system calls costs every other system call of the machine: a
loop of getppid() (the cheapest system call, tests/fixtures/syscaller.c) timed
untraced, and while a tool traces its calls system-wide:
  raw:     in the trace's first second (the raw sys_enter/sys_exit
           tracepoints, whose programs run on every system call)
  classic: after it (the per-call tracepoints: only the calls traced run a
           program, but every system call takes the kernel's slower path)
--baseline PATH adds an older build, measured after its first second too.
Interleaved runs, medians of ns per call. Run as root.

Usage: bench/syscall_bench.py [--runs N] [--tool TOOL] [--calls N] [--memtrace PATH] [--baseline PATH]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import ROOT, build_fixture, say as print, start_tracer, stop_tracer

# what engine/syscalls.rs waits before moving to the per-call tracepoints
SWITCH_AFTER = 1.0


def loop(syscaller, calls):
    """ns per call of one run, and its wall seconds."""
    t0 = time.perf_counter()
    out = subprocess.run([syscaller, str(calls)], capture_output=True, text=True, check=True).stdout
    return float(out), time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--tool", default="mmapsnoop")
    ap.add_argument("--calls", type=int, default=1000000)
    ap.add_argument("--memtrace", default=os.path.join(ROOT, "target/release/memtrace"))
    ap.add_argument("--baseline", help="another memtrace binary to compare with")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        syscaller = build_fixture("syscaller", tmp)
        configs = ["untraced", "raw", "classic"] + (["baseline"] if args.baseline else [])
        ns = {c: [] for c in configs}
        for _ in range(args.runs):
            for config in configs:
                if config == "untraced":
                    ns[config].append(loop(syscaller, args.calls)[0])
                    continue
                binary = args.baseline if config == "baseline" else args.memtrace
                tracer = start_tracer([binary, args.tool])
                try:
                    if config != "raw":
                        time.sleep(SWITCH_AFTER + 0.3)
                    per_call, wall = loop(syscaller, args.calls)
                    if config == "raw" and wall > SWITCH_AFTER * 0.8:
                        raise SystemExit(f"{args.calls} calls took {wall:.2f} s: give fewer --calls")
                    ns[config].append(per_call)
                finally:
                    stop_tracer(tracer)
    base = statistics.median(ns["untraced"])
    print(f"# getppid() loop of {args.calls} calls while {args.tool} traces system-wide, "
          f"{args.runs} interleaved runs: median ns per call")
    for config in configs:
        med = statistics.median(ns[config])
        print(f"{config:10} {med:7.1f} ns  (min {min(ns[config]):6.1f}, max {max(ns[config]):6.1f})  "
              f"+{med - base:5.1f} ns  {med / base:5.2f}x untraced")


if __name__ == "__main__":
    sys.exit(main())
