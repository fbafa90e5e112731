//! What memtrace traces and how a trace ends, whatever the tool: `--user`,
//! `-p` (a thread, a process that exits). Driven through mmapsnoop.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// What a command (`id`, `getent`) prints, trimmed.
fn id_of(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

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
fn user_runs_the_command_as_that_user() {
    require_root!();
    let finished = run_on(
        &["mmapsnoop", "--json", "--user", "nobody"],
        "runner",
        &["ids"],
    );
    finished.assert_success();
    let uid = id_of(&["id", "-u", "nobody"]);
    let gid = id_of(&["id", "-g", "nobody"]);
    let groups = id_of(&["id", "-G", "nobody"]).replace(' ', ",");
    let home = id_of(&["getent", "passwd", "nobody"])
        .split(':')
        .nth(5)
        .unwrap()
        .to_string();
    // the fixture's own report, on stderr
    let expected = format!(
        "uid={uid} gid={gid} groups={groups} euid={uid} egid={gid} home={home} user=nobody logname=nobody"
    );
    assert!(
        finished.stderr.lines().any(|line| line == expected),
        "expected {expected:?} in:\n{}",
        finished.stderr
    );
    // and what the kernel side saw: every mmap of the command, made as nobody
    let events = finished.json();
    let mapping = events
        .iter()
        .find(|e| e["len"] == 1234567)
        .unwrap_or_else(|| panic!("the fixture's mapping is missing: {}", finished.stdout));
    let pid = mapping["pid"].as_u64().unwrap();
    let ours = of_pid(&events, pid);
    assert!(ours.len() > 1, "{}", finished.stdout);
    assert!(
        ours.iter().all(|e| e["uid"] == uid.parse::<u64>().unwrap()),
        "{}",
        finished.stdout
    );
}

#[test]
fn an_unknown_user_is_one_line_and_nothing_runs() {
    require_root!();
    let witness = temp_path("unknown-user");
    for user in ["memtrace-no-such-user", "4000000123"] {
        let out = memtrace()
            .args(["mmapsnoop", "--user", user, "--", "/bin/touch"])
            .arg(&witness)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(
            stderr.lines().collect::<Vec<_>>(),
            [format!(
                "mmapsnoop: no user '{user}' in the user database: give --user a user name or UID that getent passwd lists"
            )]
        );
        assert!(!witness.exists(), "the command ran");
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
