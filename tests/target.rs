//! What memtrace traces and how a trace ends, whatever the tool: `--user`,
//! `-p` (a thread, a process that exits), signals while stdout is a full
//! pipe, SIGTERM in `-- COMMAND` mode. Driven through mmapsnoop.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

/// What a command (`id`, `getent`) prints, trimmed.
fn id_of(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The direct children of `pid` (memtrace's: the command it started).
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

/// A process held by a pidfd, so that signalling it can't hit a later
/// process given the same pid.
struct Pidfd(std::os::fd::OwnedFd);

impl Pidfd {
    fn open(pid: u32) -> Pidfd {
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open(2) takes a pid and flags and touches no memory.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
        // SAFETY: a new fd the kernel just returned, owned by nothing else.
        Pidfd(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
    }

    /// Whether the process has exited (a pidfd is readable from then on).
    fn exited(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut fds = [libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: poll(2) on one valid pollfd, without waiting.
        unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) == 1 }
    }

    /// Kills the process if it still runs: a test leaves nothing behind.
    fn kill(&self) {
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_send_signal(2) on our fd, with no siginfo.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }
}

/// Waits until process `pid` catches `signal` (SigCgt in /proc/PID/status).
fn wait_for_handler(pid: u32, signal: i32) {
    let started = Instant::now();
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .map(|mask| u64::from_str_radix(mask.trim(), 16).unwrap())
            .unwrap();
        if caught & (1 << (signal - 1)) != 0 {
            return;
        }
        assert!(
            started.elapsed() < scaled(Duration::from_secs(30)),
            "{status}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
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
    require_tool!("mmapsnoop");
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
    require_tool!("mmapsnoop");
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
    require_tool!("mmapsnoop");
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
    require_tool!("mmapsnoop");
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
    let status = wait_within(&mut tracer.child, scaled(Duration::from_secs(1)));
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
    assert!(ended_in < scaled(Duration::from_secs(1)), "{ended_in:?}");
}

/// `memtrace mmapsnoop --json -- mapper loop 30` writing into a pipe that the
/// test holds open and never reads; returns once memtrace is blocked in
/// write(2). Also returns the mapper (its pidfd) and memtrace's stderr lines.
fn blocked_on_a_full_pipe() -> (
    Child,
    std::process::ChildStdout,
    Pidfd,
    mpsc::Receiver<String>,
) {
    let mut child = memtrace()
        .args(["mmapsnoop", "--json", "--"])
        .arg(fixture("mapper"))
        .args(["loop", "30"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let pid = child.id();
    let started = Instant::now();
    // a mapping a millisecond, a few hundred bytes of JSON each: the pipe and
    // memtrace's buffer fill within a second or two
    loop {
        let syscall = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        if syscall.split_whitespace().next() == Some(&libc::SYS_write.to_string()) {
            break;
        }
        if started.elapsed() > scaled(Duration::from_secs(30)) {
            let _ = child.kill();
            panic!("memtrace never blocked writing to the full pipe: {syscall}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // still blocked a moment later: not a write on its way through
    std::thread::sleep(Duration::from_millis(300));
    let syscall = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap();
    assert!(
        syscall.starts_with(&format!("{} ", libc::SYS_write)),
        "{syscall}"
    );
    let mapper = children_of(pid);
    assert_eq!(mapper.len(), 1, "{mapper:?}");
    (child, stdout, Pidfd::open(mapper[0]), rx)
}

#[test]
fn a_signal_ends_a_trace_blocked_on_a_full_pipe() {
    require_tool!("mmapsnoop");
    for (signal, status) in [(libc::SIGINT, 0), (libc::SIGTERM, 128 + libc::SIGTERM)] {
        let (mut child, unread, mapper, stderr) = blocked_on_a_full_pipe();
        let sent = Instant::now();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let limit = scaled(Duration::from_secs(2));
        let ended = wait_within(&mut child, limit);
        let took = sent.elapsed();
        if ended.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let mapper_was_running = !mapper.exited();
        mapper.kill();
        drop(unread);
        let ended = ended
            .unwrap_or_else(|| panic!("signal {signal}: memtrace still running {limit:?} later"));
        let lines: Vec<String> = stderr.try_iter().collect();
        assert_eq!(ended.code(), Some(status), "signal {signal}: {lines:?}");
        assert!(took < limit, "{took:?}");
        assert!(
            !lines
                .iter()
                .any(|l| l.contains("rror") || l.contains("panicked")),
            "signal {signal}: {lines:?}"
        );
        // SIGTERM is passed on to the command; Ctrl-C's SIGINT reaches it from
        // the terminal, not from memtrace
        assert_eq!(
            mapper_was_running,
            signal == libc::SIGINT,
            "signal {signal}"
        );
    }
}

#[test]
fn sigterm_ends_the_command_too() {
    require_tool!("mmapsnoop");
    let runner = fixture("runner");
    // killed by the SIGTERM passed on: 128+15; exiting on it with 7: 7
    for (args, status) in [(&["sleep", "30"][..], 143), (&["sleep", "30", "7"][..], 7)] {
        let mut command = memtrace();
        command.args(["mmapsnoop", "--"]).arg(&runner).args(args);
        let tracer = Tracer::start_command(command);
        let started = children_of(tracer.pid() as u32);
        assert_eq!(started.len(), 1, "{started:?}");
        let command_pidfd = Pidfd::open(started[0]);
        if args.len() == 3 {
            // the SIGTERM must find the fixture's handler in place
            wait_for_handler(started[0], libc::SIGTERM);
        }
        let sent = Instant::now();
        tracer.signal(libc::SIGTERM);
        let finished = tracer.wait();
        assert!(
            sent.elapsed() < scaled(Duration::from_secs(2)),
            "{:?}",
            sent.elapsed()
        );
        assert_eq!(
            finished.status.code(),
            Some(status),
            "{args:?}: {}",
            finished.stderr
        );
        let outlived = !command_pidfd.exited();
        command_pidfd.kill();
        assert!(!outlived, "{args:?}: the command outlived memtrace");
    }
}
