#!/usr/bin/env python3
"""memleak's overhead on a malloc/free storm, against no tracing and bpftrace.

Workload: tests/fixtures/leaker.c `storm N`, N malloc(64)+free pairs. Interleaved
runs, whole-process wall time (tracer start and exit included, as a user
waits for them): untraced; a bpftrace script doing memleak's bookkeeping (uprobe
malloc, uretprobe malloc, uprobe free, a map of live addresses); `memleak --`;
`memleak -s 10 --`. Also `memleak -- true`: start, attach, detach, exit; `memleak -p`
on a leaker of 106,496 allocations over 8192 stacks: its attach and its final report;
and a command's children: a shell running /bin/true 100 times (each child probed as it
forks, its exec followed, its probes removed once it ends), and the storm run by a shell
(`sh -c 'leaker storm N; true'`: two processes of the family live at once).
Run as root. Prints medians and ratios.

--baseline PATH adds another memtrace binary (a build from before a change),
run interleaved with the rest, so a change's cost is read within one run.

Usage: bench/memleak_bench.py [--runs N] [--pairs N] [--memtrace PATH] [--baseline PATH]
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


def libc_path():
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and os.path.basename(fields[5]).startswith("libc.so"):
                return fields[5]
    raise SystemExit("no libc in /proc/self/maps")


def quiet(cmd):
    """Seconds to run cmd to its end, its output discarded."""
    return timed(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=200_000)
    ap.add_argument("--memtrace", default=os.path.join(ROOT, "target/release/memtrace"))
    ap.add_argument("--baseline", help="another memtrace binary to compare with")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="memtrace-memleak-bench-")
    leaker = build_fixture("leaker", tmp)
    storm = [leaker, "storm", str(args.pairs)]
    libc = libc_path()
    script = f"""
uprobe:{libc}:malloc /pid == cpid/ {{ @size[tid] = arg0; }}
uretprobe:{libc}:malloc /pid == cpid && @size[tid]/ {{ @live[retval] = @size[tid]; delete(@size[tid]); }}
uprobe:{libc}:free /pid == cpid/ {{ delete(@live[arg0]); }}
END {{ clear(@size); clear(@live); }}
"""
    configs = [("untraced", storm)]
    if shutil.which("bpftrace"):
        configs.append(("bpftrace malloc/free bookkeeping", ["bpftrace", "-e", script, "-c", " ".join(storm)]))
    configs += [
        ("memleak", [args.memtrace, "memleak", "--"] + storm),
        ("memleak -s 10", [args.memtrace, "memleak", "-s", "10", "--"] + storm),
        # user stacks walked with frame pointers, not .eh_frame (the default)
        ("memleak --unwind fp", [args.memtrace, "memleak", "--unwind", "fp", "--"] + storm),
    ]
    if args.baseline:
        configs += [
            ("baseline memleak", [args.baseline, "memleak", "--"] + storm),
            ("baseline memleak -s 10", [args.baseline, "memleak", "-s", "10", "--"] + storm),
        ]
    times = {name: [] for name, _ in configs}
    print(f"# {args.pairs} malloc(64)+free pairs, {args.runs} interleaved runs, whole-process wall time")
    for _ in range(args.runs):
        for name, cmd in configs:
            times[name].append(quiet(cmd))
    base = statistics.median(times["untraced"])
    for name, samples in times.items():
        med = statistics.median(samples)
        print(f"{name:36} {med:8.3f} s  {med / base:7.1f}x untraced")
    if "bpftrace malloc/free bookkeeping" in times:
        bt = statistics.median(times["bpftrace malloc/free bookkeeping"])
        for name in [n for n in times if "memleak" in n and "bookkeeping" not in n]:
            print(f"{name:36} {statistics.median(times[name]) / bt:5.2f}x bpftrace")
    binaries = [("memleak", args.memtrace)] + ([("baseline memleak", args.baseline)] if args.baseline else [])
    true_runs = {name: [] for name, _ in binaries}
    for _ in range(args.runs * 2):
        for name, binary in binaries:
            true_runs[name].append(quiet([binary, "memleak", "--", "true"]))
    print()
    for name, runs in true_runs.items():
        print(f"{name} -- true: median {statistics.median(runs) * 1000:.0f} ms, max {max(runs) * 1000:.0f} ms")
    attach_and_report(leaker, binaries, args.runs)
    children(storm, binaries, args.runs)
    shutil.rmtree(tmp)


def attach_and_report(leaker, binaries, runs):
    """`memleak -p` on a waiting leaker: seconds to attach; then, after it leaked
    106,496 x 16 bytes from 8192 stacks (`tree 13 13`), seconds from Ctrl-C to the end
    of the final report, every stack in JSON."""
    times = {name: {"attach": [], "report": []} for name, _ in binaries}
    for _ in range(runs):
        for name, binary in binaries:
            target = subprocess.Popen([leaker, "wait", "tree", "13", "13", "600000"],
                                      stdin=subprocess.PIPE)
            # a process at rest, as -p finds one: right after exec its loader
            # may still be mapping, and attach times came out 10 ms apart
            # from run to run
            time.sleep(0.2)
            t0 = time.perf_counter()
            tracer = start_tracer([binary, "memleak", "--json", "-T", "1000000", "-o", "0",
                                   "-p", str(target.pid), "3600"])
            times[name]["attach"].append(time.perf_counter() - t0)
            target.stdin.write(b"g")
            target.stdin.flush()
            time.sleep(2)  # its leaks take ~0.2 s traced
            t1 = time.perf_counter()
            stop_tracer(tracer)
            times[name]["report"].append(time.perf_counter() - t1)
            target.kill()
            target.wait()
    print()
    for name, measured in times.items():
        print(f"{name} -p attached in {statistics.median(measured['attach']) * 1000:.0f} ms; "
              f"final report of 106,496 allocations on 8192 stacks "
              f"{statistics.median(measured['report']) * 1000:.0f} ms (medians)")


def children(storm, binaries, runs):
    """A command's children: 100 short ones in a row, and the storm in a shell's child."""
    loop = ["sh", "-c", "for i in $(seq 100); do /bin/true; done"]
    in_shell = ["sh", "-c", " ".join(storm) + "; true"]
    configs = [("untraced 100 children", loop)]
    for name, binary in binaries:
        configs += [
            (f"{name} 100 children", [binary, "memleak", "--"] + loop),
            (f"{name} storm", [binary, "memleak", "--"] + storm),
            (f"{name} storm in a shell's child", [binary, "memleak", "--"] + in_shell),
        ]
    times = {name: [] for name, _ in configs}
    for _ in range(runs):
        for name, cmd in configs:
            times[name].append(quiet(cmd))
    print()
    base = statistics.median(times["untraced 100 children"])
    for name, samples in times.items():
        med = statistics.median(samples)
        ratio = f"  {med / base:7.1f}x untraced" if "children" in name else ""
        print(f"{name:40} {med:8.3f} s{ratio}")


if __name__ == "__main__":
    sys.exit(main())
