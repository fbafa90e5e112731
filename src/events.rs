//! The trace loop every tool shares: poll the ring buffer (if any), stop on
//! Ctrl-C, SIGTERM, `-d` expiry, the end of `-- COMMAND` or of every `-p`
//! process, and call the tool back at each `-i` interval.

use std::cell::RefCell;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, RingBuffer, RingBufferBuilder};
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};

use crate::target::{process_exists, Target};

static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn record_stop_signal(sig: libc::c_int) {
    STOP_SIGNAL.store(sig, Ordering::SeqCst);
}

extern "C" fn wake_on_child(_: libc::c_int) {
    // Nothing to do: the signal interrupts poll() so the loop looks at the command.
}

/// Handlers without SA_RESTART, so a signal interrupts the poll at once.
fn install_signal_handlers() -> Result<()> {
    let stop = SigAction::new(
        SigHandler::Handler(record_stop_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    let child = SigAction::new(
        SigHandler::Handler(wake_on_child),
        SaFlags::SA_NOCLDSTOP,
        SigSet::empty(),
    );
    // SAFETY: the handlers only store to an atomic or do nothing, which is
    // async-signal-safe.
    unsafe {
        signal::sigaction(Signal::SIGINT, &stop).context("installing a SIGINT handler")?;
        signal::sigaction(Signal::SIGTERM, &stop).context("installing a SIGTERM handler")?;
        signal::sigaction(Signal::SIGCHLD, &child).context("installing a SIGCHLD handler")?;
    }
    Ok(())
}

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

pub struct Session {
    target: Target,
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
    /// Called once the probes are attached: says so on stderr and lets a held command run.
    pub fn start(
        mut target: Target,
        duration: Option<Duration>,
        interval: Option<Duration>,
        what: &str,
    ) -> Result<Session> {
        install_signal_handlers()?;
        let start_ns = monotonic_ns();
        let how_to_end = match &target {
            Target::Command(cmd) => format!("until {} exits", cmd.name),
            _ => match duration {
                Some(d) => format!("for {} s; Ctrl-C to end sooner", d.as_secs_f64()),
                None => "Ctrl-C to end".to_string(),
            },
        };
        eprintln!("Tracing {what}... {how_to_end}.");
        if let Target::Command(cmd) = &mut target {
            cmd.release()?;
        }
        Ok(Session {
            target,
            deadline: duration.map(|d| Instant::now() + d),
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
        mut after_batch: impl FnMut() -> Result<()>,
        mut on_interval: impl FnMut() -> Result<()>,
    ) -> Result<Stop> {
        let mut next_interval = self.interval.map(|i| Instant::now() + i);
        let mut reports = 0u64;
        let mut next_target_check = Instant::now() + TICK;
        let stop = loop {
            let sig = STOP_SIGNAL.load(Ordering::SeqCst);
            if sig != 0 {
                break Stop::Signal(sig);
            }
            let now = Instant::now();
            if self.deadline.is_some_and(|d| now >= d) {
                break Stop::Duration;
            }
            if let Target::Command(cmd) = &mut self.target {
                if let Some(code) = cmd.try_wait() {
                    break Stop::CommandExited(code);
                }
            }
            if now >= next_target_check {
                next_target_check = now + TICK;
                if let Target::Pids(pids) = &self.target {
                    if !pids.iter().any(|&pid| process_exists(pid)) {
                        break Stop::TargetsExited;
                    }
                }
            }
            if let Some(at) = next_interval {
                if now >= at {
                    on_interval()?;
                    reports += 1;
                    if self.max_reports.is_some_and(|max| reports >= max) {
                        break Stop::Reports;
                    }
                    next_interval = Some(at + self.interval.unwrap_or(TICK));
                    continue;
                }
            }

            let mut timeout = TICK;
            for limit in [self.deadline, next_interval].into_iter().flatten() {
                timeout = timeout.min(limit.saturating_duration_since(now));
            }
            match ring {
                Some(ring) => {
                    let ret = ring.poll_raw(timeout);
                    if ret < 0 && ret != -libc::EINTR {
                        after_batch()?;
                        return Err(std::io::Error::from_raw_os_error(-ret))
                            .context("polling the ring buffer");
                    }
                }
                None => {
                    // poll() with no fds: a sleep that a signal cuts short
                    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
                    let _ = nix::poll::poll(
                        &mut [],
                        nix::poll::PollTimeout::try_from(ms)
                            .unwrap_or(nix::poll::PollTimeout::NONE),
                    );
                }
            }
            after_batch()?;
        };
        // Events already in the ring buffer belong to the trace.
        if let Some(ring) = ring {
            let _ = ring.consume_raw();
            after_batch()?;
        }
        if stop == Stop::TargetsExited {
            eprintln!("memtrace: the traced process exited; ending the trace.");
        }
        Ok(stop)
    }

    /// The exit status: the command's when it ran to the end, else 0.
    pub fn exit_code(&mut self, stop: Stop) -> i32 {
        match stop {
            Stop::CommandExited(code) => code,
            Stop::Signal(_) => {
                // Ctrl-C reaches the command too; give it a moment to end.
                if let Target::Command(cmd) = &mut self.target {
                    for _ in 0..20 {
                        if let Some(code) = cmd.try_wait() {
                            return code;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                0
            }
            Stop::Duration | Stop::TargetsExited | Stop::Reports => 0,
        }
    }
}

/// A tool that prints each event as it arrives (oomkill and the snoop tools).
pub trait EventPrinter {
    /// Tracing has started: print the column header. `start_ns` is the
    /// origin of -T times (CLOCK_MONOTONIC at attach).
    fn start(&mut self, start_ns: u64) -> Result<()>;

    /// One ring buffer record. The return value is the ring buffer
    /// callback's: nonzero ends this poll (see Output::callback_status).
    fn event(&mut self, data: &[u8]) -> i32;

    /// After each poll: flush, and surface a write error kept by `event`.
    fn finish_batch(&mut self) -> Result<()>;
}

/// Traces until a stop condition, handing every record of the ring buffer
/// `events` to `printer`. Returns the session (for its exit code) and why
/// the trace ended.
pub fn print_events(
    events: &dyn MapCore,
    printer: impl EventPrinter,
    target: Target,
    duration: Option<Duration>,
    what: &str,
) -> Result<(Session, Stop)> {
    let printer = RefCell::new(printer);
    let mut builder = RingBufferBuilder::new();
    builder.add(events, |data| printer.borrow_mut().event(data))?;
    let ring = builder.build().context("setting up the ring buffer")?;
    let mut session = Session::start(target, duration, None, what)?;
    printer.borrow_mut().start(session.start_ns)?;
    let stop = session.run(
        Some(&ring),
        || printer.borrow_mut().finish_batch(),
        || Ok(()),
    )?;
    Ok((session, stop))
}
