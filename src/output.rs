//! Writing what tools print: escaping of untrusted strings, sizes in human
//! units, and a stdout writer that turns a closed pipe into a quiet end.

use std::fmt::Write as _;
use std::io::{self, BufWriter, Stdout, Write};

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
/// lines promptly without a write(2) per line.
pub struct Output {
    out: BufWriter<Stdout>,
    pub json: bool,
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

    /// A ring buffer callback's return for what it wrote: 0, or -1 (which
    /// ends the poll) with the error kept for finish_batch().
    pub fn callback_status(&mut self, written: anyhow::Result<()>) -> i32 {
        match written {
            Ok(()) => 0,
            Err(err) => {
                self.kept_error = Some(err);
                -1
            }
        }
    }

    /// After a poll: the write error a callback kept, else a flush.
    pub fn finish_batch(&mut self) -> anyhow::Result<()> {
        if let Some(err) = self.kept_error.take() {
            return Err(err);
        }
        self.flush()
    }

    pub fn line(&mut self, line: &str) -> anyhow::Result<()> {
        self.out.write_all(line.as_bytes()).map_err(map_io)?;
        self.out.write_all(b"\n").map_err(map_io)
    }

    pub fn json_line(&mut self, value: &serde_json::Value) -> anyhow::Result<()> {
        serde_json::to_writer(&mut self.out, value).map_err(|err| map_io(err.into()))?;
        self.out.write_all(b"\n").map_err(map_io)
    }

    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.out.flush().map_err(map_io)
    }
}

/// Makes bytes from another user (a process or file name) safe to print:
/// printable UTF-8 stays, a backslash is doubled, `\n`, `\t` and `\r` are
/// written as such, other ASCII controls as `\xNN`, C1 controls as `\u{NN}`,
/// and bytes that are not UTF-8 as `\xNN`.
/// The result can't move a terminal's cursor or break a table row.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for ch in chunk.valid().chars() {
            match ch {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if c.is_ascii_control() => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c if c.is_control() => {
                    // C1 controls: U+009B is an 8-bit CSI to some terminals
                    let _ = write!(out, "\\u{{{:x}}}", c as u32);
                }
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out
}

/// A NUL-terminated C string from a BPF record (a `char[N]` array), escaped.
pub fn escape_c_chars(chars: &[i8]) -> String {
    let bytes: Vec<u8> = chars
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    escape_bytes(&bytes)
}

/// A size in the largest unit that divides it exactly, so no precision is
/// lost: 67108864 is `64M`, 4096 is `4K`, 4097 is `4097`, 12 is `12`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 5] = [
        (1 << 50, "P"),
        (1 << 40, "T"),
        (1 << 30, "G"),
        (1 << 20, "M"),
        (1 << 10, "K"),
    ];
    if bytes == 0 {
        return "0".to_string();
    }
    for (unit, suffix) in UNITS {
        if bytes.is_multiple_of(unit) {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// A table printed with columns as wide as their widest cell; the last
/// column is not padded (it may be long, a file name say).
pub struct Table {
    headers: Vec<&'static str>,
    right_aligned: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Columns named with a leading `>` are right-aligned (numbers).
    pub fn new(columns: &[&'static str]) -> Table {
        Table {
            headers: columns.iter().map(|c| c.trim_start_matches('>')).collect(),
            right_aligned: columns.iter().map(|c| c.starts_with('>')).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn print(&self, out: &mut Output) -> anyhow::Result<()> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let render = |cells: &mut dyn Iterator<Item = &str>| {
            let mut line = String::new();
            for (i, cell) in cells.enumerate() {
                if i > 0 {
                    line.push(' ');
                }
                let width = widths[i];
                let last = i + 1 == widths.len();
                match (self.right_aligned[i], last) {
                    (true, _) => line.push_str(&format!("{cell:>width$}")),
                    (false, true) => line.push_str(cell),
                    (false, false) => line.push_str(&format!("{cell:<width$}")),
                }
            }
            line
        };
        out.line(&render(&mut self.headers.iter().copied()))?;
        for row in &self.rows {
            out.line(&render(&mut row.iter().map(String::as_str)))?;
        }
        Ok(())
    }
}

/// A log2 histogram as the BCC tools print it: bucket 0 holds 0 and 1, bucket
/// i (i > 0) the values from 2^i to 2^(i+1) - 1; empty buckets at the ends are left out.
pub fn log2_histogram(unit: &str, buckets: &[u64]) -> Vec<String> {
    const BAR: u64 = 40;
    let Some(last) = buckets.iter().rposition(|&c| c > 0) else {
        return Vec::new();
    };
    let max = buckets.iter().copied().max().unwrap_or(1).max(1);
    let mut lines = vec![format!("{:>24} : {:<8} distribution", unit, "count")];
    for (i, &count) in buckets.iter().enumerate().take(last + 1) {
        let (low, high) = if i == 0 {
            (0, 1)
        } else {
            (1u64 << i, (1u64 << (i + 1)) - 1)
        };
        let stars = (count * BAR).div_ceil(max) as usize;
        lines.push(format!(
            "{:>10} -> {:<10} : {:<8} |{:<40}|",
            low,
            high,
            count,
            "*".repeat(stars)
        ));
    }
    lines
}

/// The local wall-clock time as `HH:MM:SS`, as the BCC tools print before each report.
pub fn wall_clock_hms() -> String {
    // SAFETY: time(NULL) and localtime_r with valid pointers to locals are
    // thread-safe and write only into `tm`.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return "??:??:??".into();
        }
        format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_keep_every_byte() {
        assert_eq!(human_size(0), "0");
        assert_eq!(human_size(12), "12");
        assert_eq!(human_size(1024), "1K");
        assert_eq!(human_size(4097), "4097");
        assert_eq!(human_size(1536 * 1024), "1536K");
        assert_eq!(human_size(64 << 20), "64M");
        assert_eq!(human_size(3 << 30), "3G");
        assert_eq!(human_size((1 << 40) + 4096), "1073741828K");
    }

    #[test]
    fn escaping_neutralises_terminal_controls() {
        assert_eq!(escape_bytes(b"plain name"), "plain name");
        assert_eq!(escape_bytes(b"\x1b[31mred"), "\\x1b[31mred");
        assert_eq!(escape_bytes(b"a\nb\tc\rd"), "a\\nb\\tc\\rd");
        assert_eq!(escape_bytes(b"back\\slash"), "back\\\\slash");
        assert_eq!(escape_bytes(b"\xff\xfeok"), "\\xff\\xfeok");
        assert_eq!(escape_bytes("caf\u{e9}".as_bytes()), "caf\u{e9}");
        assert_eq!(escape_bytes("\u{9b}2J".as_bytes()), "\\u{9b}2J");
        assert_eq!(escape_bytes(b"\x7f"), "\\x7f");
        let escaped = escape_bytes(b"\x1b]0;title\x07\x00");
        assert!(!escaped.chars().any(|c| c.is_control()), "{escaped}");
    }

    #[test]
    fn log2_histogram_buckets() {
        assert!(log2_histogram("usecs", &[0, 0, 0]).is_empty());
        let lines = log2_histogram("usecs", &[1, 0, 4, 0, 0]);
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(lines[0].trim_start().starts_with("usecs : count"));
        assert!(lines[1].contains("0 -> 1 ") && lines[1].contains("|**********"));
        assert!(lines[2].contains("2 -> 3 ") && lines[2].contains(": 0 "));
        assert!(lines[3].contains("4 -> 7 ") && lines[3].contains(&"*".repeat(40)));
    }

    #[test]
    fn c_strings_stop_at_nul() {
        let mut comm = [0i8; 16];
        for (slot, byte) in comm.iter_mut().zip(b"sh\x1b") {
            *slot = *byte as i8;
        }
        assert_eq!(escape_c_chars(&comm), "sh\\x1b");
    }
}
