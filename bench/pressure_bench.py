#!/usr/bin/env python3
"""Overhead of drsnoop, vmscan, swapin and brkstack on the workloads they explain,
against no tracing and the bpftrace equivalents.

Workloads (tests/fixtures/pressure.c and grower.c):
  reclaim: a 256 MiB file written and read back inside a memory cgroup limited to
           64 MiB (memcg reclaim all along); drsnoop, vmscan, and bpftrace scripts
           doing what they do (a line per stall; the book's vmscan.bt)
  swap:    128 MiB filled and read back in that cgroup with a temporary swap file;
           swapin, and bpftrace counting major faults and pages read by comm and pid
  brk:     20000 sbrk(4096) calls back to back (a storm: ~1.5 M calls/s); brkstack
           and the book's brkstack.bt (--baseline: an older build's brkstack too)
  heap:    4000 blocks of 100000 bytes malloc'ed and written (about 3000 brk calls)
For each configuration, interleaved runs: the tracer is started, the workload is
timed once the tracer is attached, then the tracer is stopped. Medians, ratios to
untraced. Run as root; the cgroup and the swap file are removed at the end.

Usage: bench/pressure_bench.py [--runs N] [--memtrace PATH] [--baseline PATH] [--only reclaim,swap,brk,heap]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from benchlib import ROOT, build_fixture, say as print, start_tracer, stop_tracer, timed

READY = 'BEGIN { printf("ready\\n"); } '

BT_DRSNOOP = READY + """
tracepoint:vmscan:mm_vmscan_direct_reclaim_begin, tracepoint:vmscan:mm_vmscan_memcg_reclaim_begin
{ @start[tid] = nsecs; }
tracepoint:vmscan:mm_vmscan_direct_reclaim_end, tracepoint:vmscan:mm_vmscan_memcg_reclaim_end
/@start[tid]/ { printf("%-16s %-7d %-7d %8d %5d\\n", comm, pid, tid,
  (nsecs - @start[tid]) / 1000, args->nr_reclaimed); delete(@start[tid]); }
"""

BT_VMSCAN = READY + """
tracepoint:vmscan:mm_shrink_slab_start { @start_ss[tid] = nsecs; }
tracepoint:vmscan:mm_shrink_slab_end /@start_ss[tid]/ {
  $dur = nsecs - @start_ss[tid]; @sslat = hist($dur / 1000); @ss += $dur; delete(@start_ss[tid]); }
tracepoint:vmscan:mm_vmscan_direct_reclaim_begin { @start_dr[tid] = nsecs; }
tracepoint:vmscan:mm_vmscan_direct_reclaim_end /@start_dr[tid]/ {
  $dur = nsecs - @start_dr[tid]; @drlat = hist($dur / 1000); @dr += $dur; delete(@start_dr[tid]); }
tracepoint:vmscan:mm_vmscan_memcg_reclaim_begin { @start_mr[tid] = nsecs; }
tracepoint:vmscan:mm_vmscan_memcg_reclaim_end /@start_mr[tid]/ {
  $dur = nsecs - @start_mr[tid]; @mrlat = hist($dur / 1000); @mr += $dur; delete(@start_mr[tid]); }
tracepoint:vmscan:mm_vmscan_kswapd_wake { @kw++; }
tracepoint:vmscan:mm_vmscan_write_folio { @wp++; }
interval:s:1 { time("%H:%M:%S"); printf(" %10d %12d %12d %7d %10d\\n", @ss / 1000000, @dr / 1000000,
  @mr / 1000000, @kw, @wp); @ss = 0; @dr = 0; @mr = 0; @kw = 0; @wp = 0; }
"""

BT_SWAPIN = READY + """
software:major-faults:1 { @faults[comm, pid] = count(); }
tracepoint:block:block_bio_queue /args->rwbs == "R"/ { @pages[comm, pid] = sum(args->nr_sector / 8); }
"""
BT_BRKSTACK = READY + "tracepoint:syscalls:sys_enter_brk { @[ustack, comm] = count(); }"


def own_memory_cgroup():
    """(directory of a new child memory cgroup under ours, its limit file)."""
    with open("/proc/self/cgroup") as f:
        lines = f.read().splitlines()
    for line in lines:
        if ":memory:" in line:
            parent = line.split(":memory:", 1)[1]
            return f"/sys/fs/cgroup/memory{parent.rstrip('/')}/memtrace-bench-{os.getpid()}", "memory.limit_in_bytes"
    parent = next(l[3:] for l in lines if l.startswith("0::"))
    return f"/sys/fs/cgroup{parent.rstrip('/')}/memtrace-bench-{os.getpid()}", "memory.max"


def in_cgroup(cgroup, cmd):
    return ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh"] + cmd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--memtrace", default=os.path.join(ROOT, "target/release/memtrace"))
    ap.add_argument("--only", default="reclaim,swap,brk,heap")
    ap.add_argument("--baseline", help="another memtrace binary whose brkstack runs interleaved")
    args = ap.parse_args()
    mt = args.memtrace
    tmp = tempfile.mkdtemp(prefix="memtrace-pressure-bench-", dir=os.path.join(ROOT, "target"))
    pressure = build_fixture("pressure", tmp)
    grower = build_fixture("grower", tmp)
    cgroup, limit_file = own_memory_cgroup()
    swapfile = os.path.join(tmp, "swapfile")
    os.mkdir(cgroup)
    swap_on = False
    try:
        with open(os.path.join(cgroup, limit_file), "w") as f:
            f.write(str(64 << 20))
        workloads = {
            "reclaim": (in_cgroup(cgroup, [pressure, "stream", os.path.join(tmp, "stream.dat"), "256"]), [
                ("memtrace drsnoop", [mt, "drsnoop"]),
                ("memtrace vmscan", [mt, "vmscan"]),
                ("bpftrace drsnoop (printf per stall)", ["bpftrace", "-e", BT_DRSNOOP]),
                ("bpftrace vmscan.bt", ["bpftrace", "-e", BT_VMSCAN]),
            ]),
            "swap": (in_cgroup(cgroup, [pressure, "swap", "128"]), [
                ("memtrace swapin", [mt, "swapin"]),
                ("bpftrace major faults + read bio pages", ["bpftrace", "-e", BT_SWAPIN]),
            ]),
            "brk": ([grower, "sbrk", "20000", "4096"], [
                ("memtrace brkstack", [mt, "brkstack"]),
                ("bpftrace brkstack.bt", ["bpftrace", "-e", BT_BRKSTACK]),
            ] + ([
                # before brkstack unwound in the kernel: 8 KiB of stack a call, a ring that holds them all
                ("baseline brkstack --buffer-size 256", [args.baseline, "brkstack", "--buffer-size", "256"]),
            ] if args.baseline else [])),
            "heap": ([grower, "malloc", "4000", "100000"], [
                ("memtrace brkstack", [mt, "brkstack"]),
                ("bpftrace brkstack.bt", ["bpftrace", "-e", BT_BRKSTACK]),
            ] + ([("baseline brkstack", [args.baseline, "brkstack"])] if args.baseline else [])),
        }
        for name in args.only.split(","):
            workload, tracers = workloads[name]
            if name == "swap" and not swap_on:
                subprocess.run(f"dd if=/dev/zero of={swapfile} bs=1M count=256 status=none && chmod 600 {swapfile}"
                               f" && mkswap {swapfile} >/dev/null && swapon {swapfile}", shell=True, check=True)
                swap_on = True
            tracers = [t for t in tracers if shutil.which(t[1][0]) or os.path.exists(t[1][0])]
            configs = [("untraced", None)] + tracers
            times = {c: [] for c, _ in configs}
            for _ in range(args.runs):
                for config, cmd in configs:
                    tracer = start_tracer(cmd) if cmd else None
                    times[config].append(timed(workload, check=True, stdout=subprocess.DEVNULL)[0])
                    if tracer:
                        stop_tracer(tracer)
            print(f"# {name}: {' '.join(os.path.basename(w) for w in workload[-4:])}, {args.runs} interleaved runs")
            base = statistics.median(times["untraced"])
            for config, samples in times.items():
                med = statistics.median(samples)
                print(f"{config:40} {med * 1000:9.1f} ms  {med / base:5.2f}x")
    finally:
        if swap_on:
            subprocess.run(["swapoff", swapfile])
        for _ in range(50):
            try:
                os.rmdir(cgroup)
                break
            except OSError:
                import time
                time.sleep(0.1)
        shutil.rmtree(tmp)


if __name__ == "__main__":
    sys.exit(main())
