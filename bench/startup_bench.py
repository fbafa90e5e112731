#!/usr/bin/env python3
"""What a short trace costs: the whole-run wall time and peak RSS of
`memtrace TOOL -- true` for every BPF tool (start, attach, the command, detach,
exit), against bpftrace's smallest trace of the same command, interleaved in
one run. Medians and maxima; ratios to bpftrace. Run as root.

The peak RSS is the tool's own, as GNU time reports it (time forks the tool
from its own small image). wait4's figure from this script's child would start
at Python's size: exec keeps the larger of the old image's peak and the new
one's, and a child forked from Python starts as a copy of it.

--baseline PATH adds another memtrace binary (a build from before a change),
run interleaved under the label "baseline".

--hide-debug-info runs it all with /usr/lib/debug hidden (an empty tmpfs over
it, in a mount namespace of its own): the tools that symbolize a report
(faults, brkstack) then don't read the separate debug files a machine may
have installed (libc6-dbg), whose DWARF takes blazesym tens of ms to inflate.

Usage: bench/startup_bench.py [--runs N] [--memtrace PATH] [--baseline PATH] [--only TOOL,...]
                              [--hide-debug-info]
"""
import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import ROOT, say as print

TOOLS = ["mmapsnoop", "mmapfiles", "ffaults", "fmapfault", "hfaults", "faults", "memleak",
         "oomkill", "drsnoop", "vmscan", "swapin", "brkstack", "shmsnoop"]

# bpftrace's least: one probe that never fires, run around the same command
TRUE = "/usr/bin/true"  # bpftrace -c wants a path that names one binary
BPFTRACE = ["bpftrace", "-e", "tracepoint:syscalls:sys_enter_reboot { exit(); }", "-c", TRUE]


GNU_TIME = "/usr/bin/time"


def run_once(cmd, rss_file):
    """Wall seconds of cmd to its end (started and waited for through GNU time,
    for every command alike), and its peak RSS in MiB."""
    t0 = time.perf_counter()
    status = subprocess.run([GNU_TIME, "-f", "%M", "-o", rss_file] + cmd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"{cmd} failed")
    with open(rss_file) as f:
        return wall, int(f.read().split()[-1]) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=11)
    ap.add_argument("--memtrace", default=os.path.join(ROOT, "target/release/memtrace"))
    ap.add_argument("--baseline", help="another memtrace binary to compare with")
    ap.add_argument("--only", default="")
    ap.add_argument("--hide-debug-info", action="store_true",
                    help="hide /usr/lib/debug from every command (see above)")
    args = ap.parse_args()
    if args.hide_debug_info and not os.environ.get("STARTUP_BENCH_DEBUG_HIDDEN"):
        # the same run again, in a mount namespace where /usr/lib/debug is empty
        os.environ["STARTUP_BENCH_DEBUG_HIDDEN"] = "1"
        os.execvp("unshare", ["unshare", "-m", "sh", "-c",
                              'mount -t tmpfs none /usr/lib/debug && exec "$@"', "sh",
                              sys.executable] + sys.argv)
    tools = [t for t in TOOLS if not args.only or t in args.only.split(",")]
    configs = []
    for tool in tools:
        configs.append((f"memtrace {tool}", [args.memtrace, tool, "--", TRUE]))
        if args.baseline:
            configs.append((f"baseline {tool}", [args.baseline, tool, "--", TRUE]))
    if shutil.which("bpftrace"):
        configs.append(("bpftrace (one probe) -c true", BPFTRACE))
    if not os.access(GNU_TIME, os.X_OK):
        raise SystemExit(f"{GNU_TIME} (GNU time) is needed for the peak RSS")
    walls = {name: [] for name, _ in configs}
    rss = {name: [] for name, _ in configs}
    hidden = ", /usr/lib/debug hidden" if args.hide_debug_info else ""
    print(f"# `TOOL -- true`, {args.runs} interleaved runs in shuffled order{hidden}: median and max wall time, peak RSS")
    with tempfile.NamedTemporaryFile(prefix="startup_bench") as rss_file:
        for _ in range(args.runs):
            # a new order each round, and each run of the script: a start is
            # slower right after bpftrace's, and a fixed order (or a fixed
            # seed) puts one memtrace after it more often than the other
            for name, cmd in random.sample(configs, len(configs)):
                wall, peak = run_once(cmd, rss_file.name)
                walls[name].append(wall)
                rss[name].append(peak)
    bt = statistics.median(walls["bpftrace (one probe) -c true"]) if shutil.which("bpftrace") else None
    for name, _ in configs:
        med = statistics.median(walls[name])
        ratio = f"  {bt / med:5.1f}x quicker than bpftrace" if bt and not name.startswith("bpftrace") else ""
        print(f"{name:32} {med * 1000:7.1f} ms  max {max(walls[name]) * 1000:7.1f} ms  "
              f"RSS {max(rss[name]):6.1f} MiB{ratio}")


if __name__ == "__main__":
    sys.exit(main())
