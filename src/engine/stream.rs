//! The event tools' loop (mmapsnoop, shmsnoop, drsnoop, oomkill): every
//! record of one ring buffer printed as it arrives, until the trace ends.

use std::cell::{Cell, RefCell};

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, RingBufferBuilder};

use crate::engine::loader::Trace;
use crate::engine::session::{Session, Stop};
use crate::present::output::Output;

/// How an event tool prints its records.
pub trait EventPrinter {
    /// The table's column header, printed when tracing starts (not with --json).
    fn header(&self) -> Option<String> {
        None
    }

    /// Prints one ring buffer record. `start_ns` is when tracing started
    /// (CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns): the origin of -T times.
    fn print(&mut self, out: &mut Output, record: &[u8], start_ns: u64) -> Result<()>;

    /// The records of one poll have been printed.
    fn batch_done(&mut self) {}
}

/// Traces until a stop condition, handing every record of the ring buffer
/// `events` to `printer`, which prints to stdout (JSON lines with --json).
/// Returns the session (for its exit code) and why the trace ended.
pub fn print_events(
    events: &dyn MapCore,
    printer: impl EventPrinter,
    trace: Trace,
    what: &str,
) -> Result<(Session, Stop)> {
    let out = RefCell::new(Output::new(trace.json));
    let header = printer.header();
    let start_ns = Cell::new(0);
    let printer = RefCell::new(printer);
    let mut builder = RingBufferBuilder::new();
    builder.add(events, |record| {
        let mut out = out.borrow_mut();
        let printed = printer.borrow_mut().print(&mut out, record, start_ns.get());
        // a write error ends the poll; finish_batch() returns it
        out.callback_status(printed)
    })?;
    let ring = builder.build().context("setting up the ring buffer")?;
    let mut session = Session::start(trace, None, what)?;
    start_ns.set(session.start_ns);
    if let Some(header) = header {
        out.borrow_mut().heading(&header)?;
    }
    out.borrow_mut().flush()?;
    let stop = session.run(
        Some(&ring),
        || {
            printer.borrow_mut().batch_done();
            out.borrow_mut().finish_batch()
        },
        || Ok(()),
    )?;
    Ok((session, stop))
}
