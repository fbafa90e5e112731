#!/usr/bin/env python3
"""Overhead of the page-fault tools on a fault storm, against no tracing and bpftrace.

Workload: tests/fixtures/toucher.c touching every 4 KiB page of a 512 MiB private
anonymous mapping (131072 faults). For each configuration, interleaved runs: the
tracer is started, the workload is timed once it says it is attached (so its own
start and exit are not counted), then the tracer is stopped. Prints medians and
ratios to the untraced median. Run as root.

--baseline PATH adds another memtrace binary (a build from before a change),
run interleaved with the rest under the label "baseline", so a change's cost
is read within one run.

Usage: bench/fault_bench.py [--runs N] [--mib N] [--memtrace PATH] [--baseline PATH] [--only NAME,...]
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile

from benchlib import ROOT, build_fixture, say as print, start_tracer, stop_tracer, timed


def configs(memtrace, baseline):
    yield "untraced", None
    for tool in ("ffaults", "fmapfault", "hfaults", "faults"):
        yield f"memtrace {tool}", [memtrace, tool]
        if baseline:
            yield f"baseline {tool}", [baseline, tool]
    # user stacks walked with frame pointers, not .eh_frame (the default)
    yield "memtrace faults --unwind fp", [memtrace, "faults", "--unwind", "fp"]
    yield "bpftrace page_fault_user @[comm]", [
        "bpftrace", "-e",
        'BEGIN { printf("ready\\n"); } tracepoint:exceptions:page_fault_user { @[comm] = count(); }']
    yield "bpftrace page-faults:1 @[ustack,pid,comm]", [
        "bpftrace", "-e",
        'BEGIN { printf("ready\\n"); } software:page-faults:1 { @[ustack, pid, comm] = count(); }']


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--memtrace", default=os.path.join(ROOT, "target/release/memtrace"))
    ap.add_argument("--baseline", help="another memtrace binary to compare with")
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="memtrace-fault-bench-")
    toucher = build_fixture("toucher", tmp)
    workload = [toucher, "anon", str(args.mib)]
    chosen = [c for c in configs(args.memtrace, args.baseline)
              if c[1] is None or not args.only or any(o in c[0] for o in args.only.split(","))]
    chosen = [c for c in chosen if c[1] is None or shutil.which(c[1][0]) or os.path.exists(c[1][0])]
    times = {name: [] for name, _ in chosen}
    print(f"# {args.mib} MiB anonymous touch ({args.mib * 256} faults), {args.runs} interleaved runs")
    for _ in range(args.runs):
        for name, cmd in chosen:
            tracer = start_tracer(cmd) if cmd else None
            times[name].append(timed(workload, check=True)[0])
            if tracer:
                stop_tracer(tracer)
    base = statistics.median(times["untraced"])
    for name, samples in times.items():
        med = statistics.median(samples)
        print(f"{name:44} {med * 1000:8.1f} ms  {med / base:5.2f}x")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    sys.exit(main())
