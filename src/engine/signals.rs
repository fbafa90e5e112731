//! The signals that end a trace (Ctrl-C, SIGTERM) and the one that wakes it
//! when `-- COMMAND` exits (SIGCHLD), caught without SA_RESTART so that each
//! interrupts the session's poll at once, and a write to stdout blocked on a
//! full pipe (which present::output then gives up).

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use anyhow::{Context, Result};
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};

static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// How many stop signals have arrived (present::output tells by it whether
/// one interrupted a write).
static STOP_SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn record_stop_signal(sig: libc::c_int) {
    STOP_SIGNAL.store(sig, Ordering::SeqCst);
    STOP_SIGNALS.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn wake_on_child(_: libc::c_int) {
    // Nothing to do: the signal interrupts poll() so the loop looks at the
    // command (its end, or a stop under memleak's ptrace).
}

pub fn install_handlers() -> Result<()> {
    let stop = SigAction::new(
        SigHandler::Handler(record_stop_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // not SA_NOCLDSTOP: a command under ptrace (memleak follows its execs
    // and loads) stops for memtrace, which must hear of it at once
    let child = SigAction::new(
        SigHandler::Handler(wake_on_child),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handlers only store to atomics (lock-free) or do nothing,
    // which is async-signal-safe.
    unsafe {
        signal::sigaction(Signal::SIGINT, &stop).context("installing a SIGINT handler")?;
        signal::sigaction(Signal::SIGTERM, &stop).context("installing a SIGTERM handler")?;
        signal::sigaction(Signal::SIGCHLD, &child).context("installing a SIGCHLD handler")?;
    }
    crate::present::output::give_up_writes_on_stop(|| STOP_SIGNALS.load(Ordering::SeqCst));
    Ok(())
}

/// The stop signal received (SIGINT, SIGTERM), if any.
pub fn stop_signal() -> Option<i32> {
    match STOP_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(sig),
    }
}
