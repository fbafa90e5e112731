#!/usr/bin/env python3
"""mmapsnoop/mmapfiles overhead and throughput, against no tracing and bpftrace.

(a) startup: exec of the tracer until its probes are attached (memtrace's
    "Tracing ..." line; bpftrace's BEGIN probe), then Ctrl-C until it exits.
(b) storm: PAIRS mmap/munmap pairs from the mapper fixture, interleaved runs:
    untraced, under `memtrace mmapsnoop`, under `memtrace mmapfiles`, and under
    a bpftrace script that prints each mmap; wall time ratios against
    untraced, events delivered per second, events lost.

Usage: bench/mmap_bench.py [--runs N] [--pairs N] [--memtrace PATH]
Run as root. Prints medians; the machines are noisy, so read the ratios.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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


def build_mapper(tmp):
    out = os.path.join(tmp, "mapper")
    subprocess.run(["cc", "-O2", "-o", out, os.path.join(ROOT, "tests/fixtures/mapper.c")], check=True)
    return out


def startup(cmd, ready):
    """Seconds from exec until the tracer says it is ready, and until it has exited after SIGINT."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stream = p.stderr if ready == "stderr" else p.stdout
    for line in stream:
        if line.startswith("Tracing") or line.strip() == "ready":
            break
    up = time.perf_counter() - t0
    # let every tracer settle (bpftrace can miss a SIGINT right after BEGIN)
    time.sleep(0.3)
    t1 = time.perf_counter()
    while True:
        # bpftrace sometimes misses a SIGINT that comes right after BEGIN: ask again
        p.send_signal(signal.SIGINT)
        try:
            p.communicate(timeout=2)
            break
        except subprocess.TimeoutExpired:
            pass
    return up, time.perf_counter() - t1


def timed(cmd, **kw):
    t0 = time.perf_counter()
    r = subprocess.run(cmd, **kw)
    return time.perf_counter() - t0, r


print = functools.partial(print, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=200_000)
    ap.add_argument("--memtrace", default=os.path.join(ROOT, "target/release/memtrace"))
    args = ap.parse_args()
    have_bpftrace = shutil.which("bpftrace") is not None
    tmp = tempfile.mkdtemp(prefix="memtrace-bench-")
    mapper = build_mapper(tmp)
    storm = [mapper, "storm", str(args.pairs)]

    print(f"# startup (median of {args.runs * 2}): exec -> attached, and Ctrl-C -> exited")
    peers = [("memtrace mmapsnoop", [args.memtrace, "mmapsnoop"], "stderr"),
             ("memtrace mmapfiles", [args.memtrace, "mmapfiles"], "stderr")]
    if have_bpftrace:
        peers.append(("bpftrace (2 tracepoints)", ["bpftrace", "-e", BPFTRACE_READY], "stdout"))
    for name, cmd, ready in peers:
        samples = [startup(cmd, ready) for _ in range(args.runs * 2)]
        up = statistics.median(s[0] for s in samples) * 1000
        down = statistics.median(s[1] for s in samples) * 1000
        print(f"{name:28} attach {up:7.1f} ms   exit {down:7.1f} ms")

    print(f"\n# storm: {args.pairs} mmap/munmap pairs, {args.runs} interleaved runs, medians")
    results = {k: [] for k in ("untraced", "mmapsnoop", "mmapfiles", "bpftrace")}
    delivered, lost = [], []
    events_file = os.path.join(tmp, "events.json")
    for _ in range(args.runs):
        t, _ = timed(storm, check=True)
        results["untraced"].append(t)

        with open(events_file, "w") as f:
            t, r = timed([args.memtrace, "mmapsnoop", "--json", "--"] + storm,
                         stdout=f, stderr=subprocess.PIPE, text=True, check=True)
        results["mmapsnoop"].append(t)
        n = 0
        with open(events_file) as f:
            for line in f:
                if '"len":36864' in line:
                    n += 1
        delivered.append(n)
        lost_line = [l for l in r.stderr.splitlines() if "events lost" in l]
        lost.append(int(lost_line[0].split()[1]) if lost_line else 0)

        t, _ = timed([args.memtrace, "mmapfiles", "--"] + storm,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        results["mmapfiles"].append(t)

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
