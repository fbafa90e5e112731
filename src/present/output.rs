//! Where every tool's output goes: buffered stdout (or --output's file),
//! one record at a time as a table line or (with --json) a JSON object, a
//! closed pipe turned into a quiet end, and a write that a stop signal
//! interrupts given up.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use anyhow::Result;
use serde::Serialize;

use crate::present::output_file::OutputFile;
use crate::present::table::Table;

/// Where every Output's lines go.
enum Destination {
    Stdout,
    /// --output's file, reserved; put in place at the first write, so that a
    /// run that fails before it has written anything leaves the path as it was.
    Reserved(OutputFile),
    /// --output's file, in place; and its option and path, for messages.
    File(File, String),
    /// --output's file could not be put in place: why, for every write
    /// after (none goes to stdout instead).
    Failed(String),
}

static DESTINATION: Mutex<Destination> = Mutex::new(Destination::Stdout);

fn destination() -> MutexGuard<'static, Destination> {
    DESTINATION
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sends every Output's lines to `file` (--output) instead of stdout; the
/// `-- COMMAND`'s own output stays on stdout.
pub fn send_to(file: OutputFile) {
    *destination() = Destination::Reserved(file);
}

/// The reserved file, if the destination is one, put in place: the
/// destination becomes the file, or the reason it failed.
fn put_in_place(destination: &mut Destination) -> Result<()> {
    let file = match std::mem::replace(destination, Destination::Stdout) {
        Destination::Reserved(file) => file,
        placed => {
            *destination = placed;
            return Ok(());
        }
    };
    let described = file.described();
    match file.into_stream() {
        Ok(stream) => {
            *destination = Destination::File(stream, described);
            Ok(())
        }
        Err(err) => {
            *destination = Destination::Failed(format!("{err:#}"));
            Err(err)
        }
    }
}

/// At the tool's end: --output's file, if nothing was written to it, is put
/// in place empty when the tool succeeded, and removed when it failed.
pub fn finish(succeeded: bool) -> Result<()> {
    let mut destination = destination();
    match succeeded {
        true => put_in_place(&mut destination),
        false => {
            if let Destination::Reserved(_) = &*destination {
                *destination = Destination::Stdout; // Drop removes the file
            }
            Ok(())
        }
    }
}

/// Writes to the destination, putting a reserved file in place first.
fn write_destination(buf: &[u8]) -> io::Result<usize> {
    write_to(&mut destination(), buf)
}

/// write_destination's work, on any destination (the tests' own).
fn write_to(destination: &mut Destination, buf: &[u8]) -> io::Result<usize> {
    put_in_place(destination).map_err(|err| io::Error::other(format!("{err:#}")))?;
    let written = match &*destination {
        Destination::File(file, _) => nix::unistd::write(file.as_fd(), buf),
        Destination::Failed(why) => return Err(io::Error::other(why.clone())),
        _ => nix::unistd::write(io::stdout().as_fd(), buf),
    };
    written.map_err(io::Error::from)
}

/// What a write error names: `standard output`, or `--output out.jsonl`.
fn destination_name() -> String {
    match &*destination() {
        Destination::File(_, described) => described.clone(),
        Destination::Reserved(file) => file.described(),
        Destination::Failed(_) => "--output".to_string(),
        Destination::Stdout => "standard output".to_string(),
    }
}

/// Returned (wrapped in anyhow) when stdout was closed by its reader:
/// `memtrace mmapsnoop | head` ends quietly with status 0.
#[derive(Debug)]
pub struct OutputClosed;

impl std::fmt::Display for OutputClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for OutputClosed {}

/// Is this error, anywhere in its chain, a closed stdout?
pub fn is_output_closed(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause.is::<OutputClosed>()
            || cause
                .downcast_ref::<io::Error>()
                .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

fn map_io(err: io::Error) -> anyhow::Error {
    if err.kind() == io::ErrorKind::BrokenPipe {
        anyhow::Error::new(OutputClosed)
    } else {
        anyhow::Error::new(err).context(format!("writing to {}", destination_name()))
    }
}

/// Counts the stop signals (Ctrl-C, SIGTERM) received so far; set by the
/// engine when it installs its signal handlers.
static STOP_SIGNALS: OnceLock<fn() -> usize> = OnceLock::new();

/// From now on, a write to stdout that a stop signal interrupts (one that
/// `stop_signals` counts while the write waits) is given up, and with it the
/// rest of the output.
pub fn give_up_writes_on_stop(stop_signals: fn() -> usize) {
    let _ = STOP_SIGNALS.set(stop_signals);
}

fn stop_signals() -> usize {
    STOP_SIGNALS.get().map_or(0, |count| count())
}

/// stdout (or --output's file) written with write(2) itself. std's Stdout,
/// BufWriter and write_all retry a write that a signal interrupted (EINTR),
/// so memtrace blocked on a full pipe would never see Ctrl-C. Here a write
/// that a stop signal interrupted (EINTR, or a part written) stops the
/// output: this write and every later one report `Stopped` without a system
/// call. A stop signal
/// that came before the write does not: after Ctrl-C ends a trace, the
/// summary is still written, unless another Ctrl-C interrupts that. (A signal
/// that comes between the count and write(2) is missed; the next one ends the
/// write.) Stopped for every Output at once: memleak has two.
struct OutputFd;

/// Whether a stop signal has interrupted a write to stdout: nothing more is written.
static STDOUT_STOPPED: AtomicBool = AtomicBool::new(false);

fn stdout_stopped() -> bool {
    STDOUT_STOPPED.load(Ordering::SeqCst)
}

/// The error an output stopped by a signal gives.
#[derive(Debug)]
struct Stopped;

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("output given up: a stop signal interrupted a write")
    }
}

impl std::error::Error for Stopped {}

impl Write for OutputFd {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            if stdout_stopped() {
                return Err(io::Error::other(Stopped));
            }
            let signals_before = stop_signals();
            let interrupted = || stop_signals() != signals_before;
            match write_destination(buf) {
                Ok(n) => {
                    // a blocking pipe writes less only when a signal interrupts it
                    if n < buf.len() && interrupted() {
                        STDOUT_STOPPED.store(true, Ordering::SeqCst);
                    }
                    return Ok(n);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {
                    if interrupted() {
                        STDOUT_STOPPED.store(true, Ordering::SeqCst);
                    }
                }
                Err(err) => return Err(err),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Buffered stdout, flushed after each batch of events so a terminal sees
/// lines promptly without a write(2) per line. It decides between the table
/// and JSON: a tool hands it typed rows (`#[derive(Serialize)]`) and says how
/// a row reads as a table; the JSON object is the row itself, so the two
/// can't drift apart. Once a stop signal has interrupted a write (see
/// OutputFd), nothing more is written and every call succeeds: the session
/// ends the trace as for the signal.
pub struct Output {
    out: BufWriter<OutputFd>,
    json: bool,
    /// A write error inside a ring buffer callback (which can only return a
    /// number), surfaced by finish_batch() after the poll.
    kept_error: Option<anyhow::Error>,
}

impl Output {
    pub fn new(json: bool) -> Self {
        Output {
            out: BufWriter::with_capacity(64 * 1024, OutputFd),
            json,
            kept_error: None,
        }
    }

    /// Whether rows are printed as JSON lines.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// One row: its JSON object with --json, else the table line `table_line` makes of it.
    pub fn record<R: Serialize>(
        &mut self,
        row: &R,
        table_line: impl FnOnce(&R) -> String,
    ) -> Result<()> {
        if self.json {
            self.json_line(row)
        } else {
            self.line(&table_line(row))
        }
    }

    /// Rows as a table of these columns (a leading `>` right-aligns one;
    /// `cells` gives a row's cells), or a JSON line each.
    pub fn table<R: Serialize>(
        &mut self,
        columns: &[&'static str],
        rows: &[R],
        cells: impl Fn(&R) -> Vec<String>,
    ) -> Result<()> {
        if self.json {
            return rows.iter().try_for_each(|row| self.json_line(row));
        }
        let mut table = Table::new(columns);
        for row in rows {
            table.row(cells(row));
        }
        table.print(self)
    }

    /// A line only the table shows (a column header, a report's time); nothing with --json.
    pub fn heading(&mut self, line: &str) -> Result<()> {
        if self.json {
            return Ok(());
        }
        self.line(line)
    }

    /// A line as it is (folded stacks, histograms).
    pub fn line(&mut self, line: &str) -> Result<()> {
        let written = self
            .out
            .write_all(line.as_bytes())
            .and_then(|()| self.out.write_all(b"\n"));
        self.checked(written)
    }

    /// One JSON object on a line of its own, whatever the output mode.
    pub fn json_line<R: Serialize + ?Sized>(&mut self, row: &R) -> Result<()> {
        let written = serde_json::to_writer(&mut self.out, row)
            .map_err(io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"));
        self.checked(written)
    }

    pub fn flush(&mut self) -> Result<()> {
        let flushed = self.out.flush();
        self.checked(flushed)
    }

    /// Whether a stop signal interrupted a write: nothing more is written.
    pub fn is_stopped(&self) -> bool {
        stdout_stopped()
    }

    /// A write's result: Ok once the output has stopped (see OutputFd).
    fn checked(&self, written: io::Result<()>) -> Result<()> {
        match written {
            Err(_) if self.is_stopped() => Ok(()),
            other => other.map_err(map_io),
        }
    }

    /// A ring buffer callback's return for what it wrote: 0, or -1 (which
    /// ends the poll) with the error kept for finish_batch(), or -1 when a
    /// stop signal has stopped the output (the session then sees the signal).
    pub fn callback_status(&mut self, written: Result<()>) -> i32 {
        match written {
            Ok(()) if self.is_stopped() => -1,
            Ok(()) => 0,
            Err(err) => {
                self.kept_error = Some(err);
                -1
            }
        }
    }

    /// After a poll: the write error a callback kept, else a flush.
    pub fn finish_batch(&mut self) -> Result<()> {
        if let Some(err) = self.kept_error.take() {
            return Err(err);
        }
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_write_after_the_first_goes_to_the_file_too() {
        let dir = std::env::temp_dir().join(format!("memtrace-output-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.txt");
        std::fs::write(&path, "old").unwrap();
        let mut destination =
            Destination::Reserved(OutputFile::reserve("--output", &path).unwrap());
        // nothing written yet: the old file is still there
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        for line in ["one\n", "two\n", "three\n"] {
            assert_eq!(
                write_to(&mut destination, line.as_bytes()).unwrap(),
                line.len()
            );
        }
        assert!(matches!(destination, Destination::File(..)));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\ntwo\nthree\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
