"""What the benchmark scripts share: fixtures, timing, starting and stopping tracers."""
import functools
import os
import signal
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
say = functools.partial(print, flush=True)


def build_fixture(name, tmp):
    """tests/fixtures/NAME.c, built with frame pointers (as stack profiling wants) into tmp."""
    out = os.path.join(tmp, name)
    subprocess.run(["cc", "-O2", "-fno-omit-frame-pointer", "-o", out,
                    os.path.join(ROOT, "tests/fixtures", name + ".c")], check=True)
    return out


def timed(cmd, **kw):
    """Wall seconds of running cmd to its end, and its CompletedProcess."""
    t0 = time.perf_counter()
    result = subprocess.run(cmd, **kw)
    return time.perf_counter() - t0, result


def start_tracer(cmd, stdout=subprocess.PIPE):
    """Starts a tracer and returns once its probes are attached: memtrace says
    "Tracing ..." on stderr; the bpftrace scripts here print "ready" from BEGIN.
    `stdout`: where a memtrace tracer that prints as it goes writes (a file:
    a pipe nobody reads would fill and hold it up)."""
    p = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True)
    bpftrace = os.path.basename(cmd[0]) == "bpftrace"
    stream, ready = (p.stdout, "ready") if bpftrace else (p.stderr, "Tracing")
    for line in stream:
        if line.startswith(ready):
            return p
    p.kill()
    raise RuntimeError(f"{cmd[:2]} did not start: {p.stderr.read()}")


def stop_tracer(p):
    """Ctrl-C, again if need be: bpftrace can miss a SIGINT right after BEGIN."""
    while True:
        p.send_signal(signal.SIGINT)
        try:
            p.communicate(timeout=2)
            return
        except subprocess.TimeoutExpired:
            pass
