//! The signals that end a trace (Ctrl-C, SIGTERM) and the one that wakes it
//! when `-- COMMAND` exits or stops for memtrace (SIGCHLD, through a pipe the
//! session polls), caught without SA_RESTART so that each interrupts the
//! session's poll at once, and a write to stdout blocked on a
//! full pipe (which present::output then gives up).

use std::os::fd::{BorrowedFd, IntoRawFd};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use anyhow::{Context, Result};
use nix::fcntl::OFlag;
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};

static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// How many stop signals have arrived (present::output tells by it whether
/// one interrupted a write).
static STOP_SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn record_stop_signal(sig: libc::c_int) {
    STOP_SIGNAL.store(sig, Ordering::SeqCst);
    STOP_SIGNALS.fetch_add(1, Ordering::SeqCst);
}

/// The pipe SIGCHLD's handler writes a byte to (write end, [1]) and the
/// session polls (read end, [0]): a SIGCHLD that comes between the session's
/// look at the command and its wait still wakes the wait (an interrupted
/// poll alone would miss it, and the command, or the child of it that
/// memleak follows, would wait a tick).
static CHILD_PIPE: [AtomicI32; 2] = [AtomicI32::new(-1), AtomicI32::new(-1)];

extern "C" fn wake_on_child(_: libc::c_int) {
    let fd = CHILD_PIPE[1].load(Ordering::SeqCst);
    if fd < 0 {
        return;
    }
    // SAFETY: write(2) is async-signal-safe; errno, which it may set (a full
    // pipe: EAGAIN, and a byte is there already), is put back for the code
    // the signal interrupted.
    unsafe {
        let errno = *libc::__errno_location();
        libc::write(fd, [1u8].as_ptr().cast(), 1);
        *libc::__errno_location() = errno;
    }
}

/// The read end of the pipe a SIGCHLD writes to (see CHILD_PIPE), once
/// install_handlers has made it.
pub fn child_wakeups() -> Option<BorrowedFd<'static>> {
    match CHILD_PIPE[0].load(Ordering::SeqCst) {
        fd if fd < 0 => None,
        // SAFETY: made by install_handlers and never closed.
        fd => Some(unsafe { BorrowedFd::borrow_raw(fd) }),
    }
}

/// Empties the SIGCHLD pipe: before the session looks at the command, so
/// that a SIGCHLD after the look wakes the next wait.
pub fn drain_child_wakeups() {
    if let Some(fd) = child_wakeups() {
        let mut buf = [0u8; 64];
        while nix::unistd::read(fd, &mut buf).is_ok_and(|n| n > 0) {}
    }
}

/// Makes the SIGCHLD pipe, once (non-blocking both ends: a full pipe
/// already says what a write would).
fn make_child_pipe() -> Result<()> {
    if CHILD_PIPE[0].load(Ordering::SeqCst) >= 0 {
        return Ok(());
    }
    let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)
        .context("making a pipe for SIGCHLD")?;
    CHILD_PIPE[1].store(write.into_raw_fd(), Ordering::SeqCst);
    CHILD_PIPE[0].store(read.into_raw_fd(), Ordering::SeqCst);
    Ok(())
}

pub fn install_handlers() -> Result<()> {
    make_child_pipe()?;
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
    // SAFETY: the handlers only store to atomics (lock-free) or write(2) to
    // a pipe, which is async-signal-safe.
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
