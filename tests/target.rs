//! What memtrace traces and how a trace ends, whatever the tool: `-p` (a
//! thread, a process that exits). Driven through mmapsnoop.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Waits up to `limit` for `child` to end.
fn wait_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_thread_id_is_refused_with_its_process() {
    require_root!();
    let mut runner = Command::new(fixture("runner"))
        .arg("thread")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(runner.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let tid: u32 = line.trim().parse().unwrap();
    let pid = runner.id();
    assert_ne!(tid, pid);
    let out = memtrace()
        .args(["mmapsnoop", "-p", &tid.to_string()])
        .output()
        .unwrap();
    drop(runner.stdin.take());
    runner.wait().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [format!(
            "mmapsnoop: {tid} is a thread of process {pid}: give -p {pid}"
        )]
    );
}

#[test]
fn a_traced_process_that_exits_ends_the_trace_at_once() {
    require_root!();
    // runner thread runs until its stdin ends
    let mut runner = Command::new(fixture("runner"))
        .arg("thread")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = runner.id();
    let mut tracer = Tracer::start(&["mmapsnoop", "-p", &pid.to_string()]);
    drop(runner.stdin.take());
    // Wait for its exit but leave it a zombie: /proc/PID stays until it is
    // reaped, and its pid can't be given to another process meanwhile.
    let mut info = std::mem::MaybeUninit::<libc::siginfo_t>::zeroed();
    // SAFETY: waitid on our own child, info is a valid siginfo_t to fill.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid,
            info.as_mut_ptr(),
            libc::WEXITED | libc::WNOWAIT,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    let exited = Instant::now();
    let status = wait_within(&mut tracer.child, Duration::from_secs(1));
    let ended_in = exited.elapsed();
    runner.wait().unwrap();
    let Some(status) = status else {
        tracer.signal(libc::SIGINT);
        panic!(
            "the trace went on after the traced process exited: {}",
            tracer.wait().stderr
        )
    };
    assert!(status.success(), "{status:?}");
    let finished = tracer.wait();
    assert!(
        finished
            .stderr
            .contains("memtrace: the traced process exited; ending the trace."),
        "{}",
        finished.stderr
    );
    assert!(ended_in < Duration::from_secs(1), "{ended_in:?}");
}
