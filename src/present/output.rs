//! Where every tool's output goes: buffered stdout, one record at a time as
//! a table line or (with --json) a JSON object, and a closed pipe turned into
//! a quiet end.

use std::io::{self, BufWriter, Stdout, Write};

use anyhow::Result;
use serde::Serialize;

use crate::present::table::Table;

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
        anyhow::Error::new(err).context("writing to standard output")
    }
}

/// Buffered stdout, flushed after each batch of events so a terminal sees
/// lines promptly without a write(2) per line. It decides between the table
/// and JSON: a tool hands it typed rows (`#[derive(Serialize)]`) and says how
/// a row reads as a table; the JSON object is the row itself, so the two
/// can't drift apart.
pub struct Output {
    out: BufWriter<Stdout>,
    json: bool,
    /// A write error inside a ring buffer callback (which can only return a
    /// number), surfaced by finish_batch() after the poll.
    kept_error: Option<anyhow::Error>,
}

impl Output {
    pub fn new(json: bool) -> Self {
        Output {
            out: BufWriter::with_capacity(64 * 1024, io::stdout()),
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
        self.out.write_all(line.as_bytes()).map_err(map_io)?;
        self.out.write_all(b"\n").map_err(map_io)
    }

    /// One JSON object on a line of its own, whatever the output mode.
    pub fn json_line<R: Serialize + ?Sized>(&mut self, row: &R) -> Result<()> {
        serde_json::to_writer(&mut self.out, row).map_err(|err| map_io(err.into()))?;
        self.out.write_all(b"\n").map_err(map_io)
    }

    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(map_io)
    }

    /// A ring buffer callback's return for what it wrote: 0, or -1 (which
    /// ends the poll) with the error kept for finish_batch().
    pub fn callback_status(&mut self, written: Result<()>) -> i32 {
        match written {
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
