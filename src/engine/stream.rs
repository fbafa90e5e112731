//! The event tools' loop (mmapsnoop, shmsnoop, drsnoop, oomkill): every
//! record of one ring buffer printed as it arrives, until the trace ends.

use std::cell::RefCell;
use std::time::Duration;

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, RingBufferBuilder};

use crate::engine::loader::Trace;
use crate::engine::session::{Session, Stop};
use crate::present::output::Output;

/// What an event tool prints, and where.
pub trait EventPrinter {
    /// The stdout it prints to.
    fn output(&mut self) -> &mut Output;

    /// Tracing has started: print the column header (see Output::heading).
    /// `start_ns` is the origin of -T times (CLOCK_MONOTONIC at attach).
    fn start(&mut self, _start_ns: u64) -> Result<()> {
        Ok(())
    }

    /// One ring buffer record.
    fn print(&mut self, record: &[u8]) -> Result<()>;

    /// After each poll: flush, and surface a write error kept from `print`.
    fn finish_batch(&mut self) -> Result<()> {
        self.output().finish_batch()
    }
}

/// Traces until a stop condition, handing every record of the ring buffer
/// `events` to `printer`. Returns the session (for its exit code) and why
/// the trace ended.
pub fn print_events(
    events: &dyn MapCore,
    printer: impl EventPrinter,
    trace: Trace,
    duration: Option<Duration>,
    what: &str,
) -> Result<(Session, Stop)> {
    let printer = RefCell::new(printer);
    let mut builder = RingBufferBuilder::new();
    builder.add(events, |record| {
        let mut printer = printer.borrow_mut();
        let printed = printer.print(record);
        // a write error ends the poll; finish_batch() returns it
        printer.output().callback_status(printed)
    })?;
    let ring = builder.build().context("setting up the ring buffer")?;
    let mut session = Session::start(trace, duration, None, what)?;
    printer.borrow_mut().start(session.start_ns)?;
    let stop = session.run(
        Some(&ring),
        || printer.borrow_mut().finish_batch(),
        || Ok(()),
    )?;
    Ok((session, stop))
}
