//! The trace loop every tool shares: poll the ring buffer (if any), stop on
//! Ctrl-C, SIGTERM, `-d` expiry, the end of `-- COMMAND` or of every `-p`
//! process, and call the tool back at each `-i` interval. A SIGTERM is passed
//! on to `-- COMMAND` (Ctrl-C reaches it from the terminal already).

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use libbpf_rs::RingBuffer;
use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::engine::loader::Trace;
use crate::engine::signals;
use crate::engine::syscalls::SyscallHooks;
use crate::engine::target::{HeldCommand, Stopped, Target};

/// Why a trace ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Signal(i32),
    Duration,
    CommandExited(i32),
    TargetsExited,
    /// The number of interval reports asked for (memleak's COUNT) was printed.
    Reports,
}

/// How often the loop looks at `-p` processes and at signals when idle.
const TICK: Duration = Duration::from_millis(200);

/// How long memtrace waits for `-- COMMAND` to end after a SIGTERM passed on.
const TERM_WAIT: Duration = Duration::from_secs(1);

/// The status after a SIGTERM when the command's own is not known: 128+15.
const TERMINATED: i32 = 128 + libc::SIGTERM;

pub struct Session {
    target: Target,
    /// The tool's system call programs: moved to the classic ones as the
    /// trace goes on, detached as it ends (see engine/syscalls.rs).
    syscalls: Option<SyscallHooks>,
    deadline: Option<Instant>,
    interval: Option<Duration>,
    /// Stop after this many interval reports.
    pub max_reports: Option<u64>,
    /// CLOCK_MONOTONIC at attach, the clock of bpf_ktime_get_ns(): the origin of -T times.
    pub start_ns: u64,
}

pub fn monotonic_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|ts| ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64);
    now.unwrap_or(0)
}

impl Session {
    /// Called once the probes are attached: lets a held command run (an exec
    /// that fails ends it here) and says on stderr that tracing has begun.
    /// `interval`: -i, when the tool reports as it goes.
    pub fn start(trace: Trace, interval: Option<Duration>, what: &str) -> Result<Session> {
        let duration = trace.duration;
        signals::install_handlers()?;
        let syscalls = trace.syscalls;
        let mut target = trace.target;
        let start_ns = monotonic_ns();
        let how_to_end = match &target {
            Target::Command(cmd) => format!("until {} exits", cmd.name),
            _ => match duration {
                Some(d) => format!("for {} s; Ctrl-C to end sooner", d.as_secs_f64()),
                None => "Ctrl-C to end".to_string(),
            },
        };
        if let Target::Command(cmd) = &mut target {
            cmd.release()?;
        }
        crate::say!("Tracing {what}... {how_to_end}.");
        Ok(Session {
            target,
            syscalls,
            // None (no deadline) only past the end of time: -d is at most cli::MAX_SECONDS
            deadline: duration.and_then(|d| Instant::now().checked_add(d)),
            interval,
            max_reports: None,
            start_ns,
        })
    }

    /// Runs until a stop condition. `after_batch` runs after each poll (flush
    /// output, surface a write error); `on_interval` at each `-i` interval.
    pub fn run(
        &mut self,
        ring: Option<&RingBuffer>,
        after_batch: impl FnMut() -> Result<()>,
        on_interval: impl FnMut() -> Result<()>,
    ) -> Result<Stop> {
        self.run_following(ring, after_batch, on_interval, |_, _| Ok(()))
    }

    /// run, for a command that follows its family (HeldCommand::follow_family):
    /// `on_stop` is given each stop of the command or a child (an exec, a
    /// fork, a load, a child's end), and the process goes on (release) once
    /// that returns.
    pub fn run_following(
        &mut self,
        ring: Option<&RingBuffer>,
        mut after_batch: impl FnMut() -> Result<()>,
        mut on_interval: impl FnMut() -> Result<()>,
        mut on_stop: impl FnMut(&mut HeldCommand, Stopped) -> Result<()>,
    ) -> Result<Stop> {
        let mut next_interval = self.interval.map(|i| Instant::now() + i);
        let mut reports = 0u64;
        let mut next_target_check = Instant::now() + TICK;
        let stop = loop {
            let now = Instant::now();
            if let Some(stop) = self.stop_condition(now, &mut next_target_check) {
                break stop;
            }
            if let Target::Command(cmd) = &mut self.target {
                if let Some(stop) = cmd.stopped() {
                    on_stop(cmd, stop)?;
                    cmd.release()?;
                    continue;
                }
            }
            if let Some(syscalls) = &mut self.syscalls {
                syscalls.tick(now);
            }
            if let Some(at) = next_interval.filter(|&at| now >= at) {
                // a report sees every record delivered before it (an
                // exiting process's mappings, sent before its maps vanish)
                if let Some(ring) = ring {
                    let _ = ring.consume_raw();
                    after_batch()?;
                }
                on_interval()?;
                reports += 1;
                if self.max_reports.is_some_and(|max| reports >= max) {
                    break Stop::Reports;
                }
                next_interval = Some(at + self.interval.unwrap_or(TICK));
                continue;
            }
            let mut timeout = TICK;
            for limit in [self.deadline, next_interval].into_iter().flatten() {
                timeout = timeout.min(limit.saturating_duration_since(now));
            }
            if let Err(err) = wait_for_events(ring, timeout) {
                after_batch()?;
                return Err(err);
            }
            after_batch()?;
        };
        // A SIGTERM to memtrace alone: the command ends with the trace.
        if stop == Stop::Signal(libc::SIGTERM) {
            if let Target::Command(cmd) = &mut self.target {
                cmd.terminate();
            }
        }
        // Events already in the ring buffer belong to the trace.
        if let Some(ring) = ring {
            let _ = ring.consume_raw();
            after_batch()?;
        }
        // Detached while the tool reports; the session's drop waits for it.
        if let Some(syscalls) = &mut self.syscalls {
            syscalls.detach();
        }
        if stop == Stop::TargetsExited {
            crate::say!("memtrace: the traced process exited; ending the trace.");
        }
        Ok(stop)
    }

    /// Why the trace ends now, if it does: a stop signal, -d, the command's
    /// end, or (looked at each TICK) the end of every -p process.
    fn stop_condition(&mut self, now: Instant, next_target_check: &mut Instant) -> Option<Stop> {
        if let Some(sig) = signals::stop_signal() {
            return Some(Stop::Signal(sig));
        }
        if self.deadline.is_some_and(|d| now >= d) {
            return Some(Stop::Duration);
        }
        if let Target::Command(cmd) = &mut self.target {
            if let Some(code) = cmd.try_wait() {
                return Some(Stop::CommandExited(code));
            }
        }
        if now >= *next_target_check {
            *next_target_check = now + TICK;
            if let Target::Pids(processes) = &self.target {
                if !processes.iter().any(|p| p.is_running()) {
                    return Some(Stop::TargetsExited);
                }
            }
        }
        None
    }

    /// The exit status: the command's when it ran to the end; after a
    /// SIGTERM in `-- COMMAND` mode, the command's if it ended within
    /// TERM_WAIT, else 128+15; else 0.
    pub fn exit_code(&mut self, stop: Stop) -> i32 {
        match stop {
            Stop::CommandExited(code) => code,
            Stop::Signal(sig) => {
                let Target::Command(cmd) = &mut self.target else {
                    return 0;
                };
                // Ctrl-C reaches the command too, SIGTERM was passed on: give
                // it a moment to end.
                let (wait, otherwise) = if sig == libc::SIGTERM {
                    (TERM_WAIT, TERMINATED)
                } else {
                    (Duration::from_millis(200), 0)
                };
                let deadline = Instant::now() + wait;
                loop {
                    if let Some(code) = cmd.try_wait() {
                        return code;
                    }
                    // the trace is over: the stops for the tool are let go
                    while cmd.stopped().is_some() {
                        let _ = cmd.release();
                    }
                    if Instant::now() >= deadline {
                        return otherwise;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            Stop::Duration | Stop::TargetsExited | Stop::Reports => 0,
        }
    }
}

/// Waits up to `timeout` for records (handing them to the ring buffer's
/// callbacks) or a SIGCHLD (signals::child_wakeups); another signal cuts it
/// short too.
fn wait_for_events(ring: Option<&RingBuffer>, timeout: Duration) -> Result<()> {
    // SAFETY: the ring buffer's epoll fd lives as long as `ring`, which
    // outlives this borrow.
    let epoll = ring.map(|ring| unsafe { BorrowedFd::borrow_raw(ring.epoll_fd()) });
    let mut fds: Vec<PollFd> = signals::child_wakeups()
        .into_iter()
        .chain(epoll)
        .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
        .collect();
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::NONE);
    // EINTR: a signal, which the loop looks at
    let _ = nix::poll::poll(&mut fds, timeout);
    signals::drain_child_wakeups();
    if let Some(ring) = ring {
        let ret = ring.consume_raw();
        // a callback ends the consuming on a write error, or when a stop
        // signal stopped the output (seen at the loop's top)
        if ret < 0 && ret != -libc::EINTR && signals::stop_signal().is_none() {
            return Err(std::io::Error::from_raw_os_error(-ret)).context("reading the ring buffer");
        }
    }
    Ok(())
}
