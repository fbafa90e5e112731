#!/usr/bin/env python3
"""mmapsnoop/mmapfiles overhead and throughput, against no tracing and bpftrace.

(a) startup: exec of the tracer until its probes are attached (memtrace's
    "Tracing ..." line; bpftrace's BEGIN probe), then Ctrl-C until it exits.
(b) storm: PAIRS mmap/munmap pairs from the mapper fixture, interleaved runs:
    untraced, under `memtrace mmapsnoop`, under `memtrace mmapfiles`, and under
    a bpftrace script that prints each mmap; wall time ratios against
    untraced, events delivered per second, events lost.

--baseline PATH adds another memtrace binary (a build from before a change),
run interleaved with the rest under the label "baseline".

Usage: bench/mmap_bench.py [--runs N] [--pairs N] [--memtrace PATH] [--baseline PATH]
Run as root. Prints medians; the machines are noisy, so read the ratios.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import ROOT, build_fixture, say as print, start_tracer, stop_tracer, timed

BPFTRACE_SNOOP = r"""
BEGIN { printf("ready\n"); }
tracepoint:syscalls:sys_enter_mmap /pid == cpid/ { @len[tid] = args->len; @flags[tid] = args->flags; }
tracepoint:syscalls:sys_exit_mmap /pid == cpid && @len[tid]/ {
    printf("%d %d %s %d %x %d\n", pid, tid, comm, @len[tid], @flags[tid], args->ret);
    delete(@len[tid]); delete(@flags[tid]);
}
"""

BPFTRACE_READY = r"""
BEGIN { printf("ready\n"); }
tracepoint:syscalls:sys_enter_mmap { @[comm] = count(); }
tracepoint:syscalls:sys_exit_mmap { @x[tid] = 1; }
"""


def startup(cmd):
    """Seconds from exec until the tracer says it is ready, and until it has exited after SIGINT."""
    t0 = time.perf_counter()
    p = start_tracer(cmd)
    up = time.perf_counter() - t0
    time.sleep(0.3)  # let every tracer settle before Ctrl-C
    t1 = time.perf_counter()
    stop_tracer(p)
    return up, time.perf_counter() - t1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=200_000)
    ap.add_argument("--memtrace", default=os.path.join(ROOT, "target/release/memtrace"))
    ap.add_argument("--baseline", help="another memtrace binary to compare with")
    args = ap.parse_args()
    binaries = [("", args.memtrace)] + ([("baseline ", args.baseline)] if args.baseline else [])
    have_bpftrace = shutil.which("bpftrace") is not None
    tmp = tempfile.mkdtemp(prefix="memtrace-bench-")
    mapper = build_fixture("mapper", tmp)
    storm = [mapper, "storm", str(args.pairs)]

    print(f"# startup (median of {args.runs * 2}): exec -> attached, and Ctrl-C -> exited")
    peers = [(f"{label}memtrace {tool}", [binary, tool])
             for label, binary in binaries for tool in ("mmapsnoop", "mmapfiles")]
    if have_bpftrace:
        peers.append(("bpftrace (2 tracepoints)", ["bpftrace", "-e", BPFTRACE_READY]))
    for name, cmd in peers:
        samples = [startup(cmd) for _ in range(args.runs * 2)]
        up = statistics.median(s[0] for s in samples) * 1000
        down = statistics.median(s[1] for s in samples) * 1000
        print(f"{name:28} attach {up:7.1f} ms   exit {down:7.1f} ms")

    print(f"\n# storm: {args.pairs} mmap/munmap pairs, {args.runs} interleaved runs, medians")
    results = {"untraced": []}
    for label, _ in binaries:
        results[f"{label}mmapsnoop"] = []
        results[f"{label}mmapfiles"] = []
    results["bpftrace"] = []
    delivered, lost = [], []
    events_file = os.path.join(tmp, "events.json")
    for _ in range(args.runs):
        t, _ = timed(storm, check=True)
        results["untraced"].append(t)

        for label, binary in binaries:
            with open(events_file, "w") as f:
                t, r = timed([binary, "mmapsnoop", "--json", "--"] + storm,
                             stdout=f, stderr=subprocess.PIPE, text=True, check=True)
            results[f"{label}mmapsnoop"].append(t)
            if not label:
                n = 0
                with open(events_file) as f:
                    for line in f:
                        if '"len":36864' in line:
                            n += 1
                delivered.append(n)
                lost_line = [l for l in r.stderr.splitlines() if "events lost" in l]
                lost.append(int(lost_line[0].split()[1]) if lost_line else 0)

            t, _ = timed([binary, "mmapfiles", "--"] + storm,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            results[f"{label}mmapfiles"].append(t)

        if have_bpftrace:
            with open(os.path.join(tmp, "bpftrace.out"), "w") as f:
                t, _ = timed(["bpftrace", "-e", BPFTRACE_SNOOP, "-c", " ".join(storm)],
                             stdout=f, stderr=subprocess.DEVNULL, check=True)
            results["bpftrace"].append(t)

    base = statistics.median(results["untraced"])
    for name, samples in results.items():
        if not samples:
            continue
        med = statistics.median(samples)
        print(f"{name:28} {med:7.3f} s   {med / base:5.2f}x untraced")
    med_t = statistics.median(results["mmapsnoop"])
    print(f"\nmmapsnoop delivered {statistics.median(delivered)} of {args.pairs} storm events "
          f"(min {min(delivered)}), lost {max(lost)} at most; "
          f"{statistics.median(delivered) / med_t:,.0f} events/s (storm events / whole run time)")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    sys.exit(main())
