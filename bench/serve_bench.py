#!/usr/bin/env python3
"""memtrace serve's overhead on a fault storm and an mmap storm, against no
tracing and against the tools whose kernel sides its collectors run.

Workloads: tests/fixtures/toucher.c touching every page of 512 MiB of private
anonymous memory (131072 faults), and tests/fixtures/mapper.c `storm PAIRS`
(mmap/munmap pairs). Each configuration is started system-wide (as serve
runs), the workload is timed once it says it is attached, then it is stopped;
the configurations run interleaved, round after round, and the medians are
compared with the untraced one, in wall time and in the workload's own system
CPU time (where the BPF programs' cost per event lands, apart from the noise of
whatever else the machine schedules):
  untraced; ffaults (fault storm) or mmapsnoop (mmap storm), system-wide;
  serve with every collector; serve with the one collector the storm hits.
While serve runs, Prometheus-style scrapes of /metrics every second are made
by this script, as a server would.

Usage: bench/serve_bench.py [--runs N] [--mib N] [--pairs N] [--memtrace PATH]
Run as root.
"""
import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from benchlib import ROOT, build_fixture, say as print, start_tracer, stop_tracer


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Scraper:
    """GETs /metrics every second while a serve runs, as Prometheus would."""

    def __init__(self, port):
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.wait(1.0):
            try:
                urllib.request.urlopen(self.url, timeout=5).read()
            except OSError:
                pass

    def end(self):
        self.stop.set()
        self.thread.join()


def run_workload(workload):
    """Wall seconds and system CPU seconds of the workload: the system time is
    where the BPF programs' cost per event lands, read apart from the noise of
    whatever else the machine schedules."""
    t0 = time.perf_counter()
    p = subprocess.Popen(workload, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    if status != 0:
        raise RuntimeError(f"{workload[:2]} failed: {status}")
    return time.perf_counter() - t0, usage.ru_stime


def measure(name, cmd, workload, out):
    """(wall, system) seconds of the workload under cmd (None: untraced)."""
    tracer = scraper = None
    if cmd:
        if "--listen" in cmd:
            port = free_port()
            cmd = [c.replace("PORT", str(port)) for c in cmd]
            scraper = Scraper(port)
        tracer = start_tracer(cmd, stdout=out)
    try:
        return run_workload(workload)
    finally:
        if scraper:
            scraper.end()
        if tracer:
            stop_tracer(tracer)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--pairs", type=int, default=200_000)
    ap.add_argument("--memtrace", default=os.path.join(ROOT, "target/release/memtrace"))
    args = ap.parse_args()
    memtrace = args.memtrace
    tmp = tempfile.mkdtemp(prefix="memtrace-serve-bench-")
    toucher = build_fixture("toucher", tmp)
    mapper = build_fixture("mapper", tmp)
    serve = [memtrace, "serve", "--listen", "127.0.0.1:PORT"]
    storms = {
        f"fault storm ({args.mib * 256} faults)": (
            [toucher, "anon", str(args.mib)],
            [("untraced", None),
             ("ffaults", [memtrace, "ffaults"]),
             ("serve (all collectors)", serve),
             ("serve --collect faults", serve + ["--collect", "faults"])]),
        f"mmap storm ({args.pairs} mmap/munmap pairs)": (
            [mapper, "storm", str(args.pairs)],
            [("untraced", None),
             ("mmapsnoop", [memtrace, "mmapsnoop"]),
             ("serve (all collectors)", serve),
             ("serve --collect mmap", serve + ["--collect", "mmap"])]),
    }
    times = {(storm, name): [] for storm, (_, configs) in storms.items() for name, _ in configs}
    print(f"# {args.runs} interleaved rounds, medians")
    with open(os.path.join(tmp, "tracer.out"), "w") as out:
        for _ in range(args.runs):
            for storm, (workload, configs) in storms.items():
                for name, cmd in configs:
                    out.seek(0)
                    out.truncate()
                    times[(storm, name)].append(measure(name, cmd, workload, out))
    for storm, (_, configs) in storms.items():
        print(f"\n## {storm}")
        print(f"{'':28} {'wall':>8}          {'workload sys':>12}")
        walls = {name: [w for w, _ in times[(storm, name)]] for name, _ in configs}
        syss = {name: [s for _, s in times[(storm, name)]] for name, _ in configs}
        base_wall = statistics.median(walls["untraced"])
        base_sys = statistics.median(syss["untraced"])
        for name, _ in configs:
            wall = statistics.median(walls[name])
            sys_time = statistics.median(syss[name])
            print(f"{name:28} {wall * 1000:8.1f} ms {wall / base_wall:5.2f}x "
                  f"{sys_time * 1000:8.1f} ms {sys_time / base_sys:5.2f}x")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    sys.exit(main())
