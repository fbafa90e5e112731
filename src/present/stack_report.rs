//! The report of the stack-counting tools (faults, brkstack, memleak), written
//! once: each report's rows as JSON lines, folded stacks or text, the largest
//! first, and a flame graph and a pprof profile of the whole trace at its end.

use anyhow::Result;

use crate::present::format::wall_clock_hms;
use crate::present::output::Output;
use crate::present::profile::{folded_line, FlameGraph, Pprof, Sample};

/// The frame that ends a user stack the unwinder could not follow to its
/// outermost frame.
pub const TRUNCATED_FRAME: &str = "[truncated]";

/// The frame of a stack that found no room in the stack store.
pub const STORE_FULL_FRAME: &str = "[stack lost: the stack store was full]";

/// A row of a stack-counting tool: a stack and what was counted on it.
pub trait StackRow {
    /// Frames outermost first, as folded lines and flame graphs show them
    /// (led by the process name where the tool shows one).
    fn folded_frames(&self) -> Vec<String>;

    /// What folded output and the flame graph count for the row.
    fn weight(&self) -> u64;

    /// --json: the row's JSON line (or lines: faults writes one per kind of fault).
    fn write_json(&self, out: &mut Output) -> Result<()>;

    /// The row in the text report.
    fn write_text(&self, out: &mut Output) -> Result<()>;

    /// --pprof: the row as a profile sample; None where the row has no
    /// profile frames (the tool was not asked for a profile).
    fn profile_sample(&self) -> Option<Sample> {
        None
    }

    /// Whether its stack ends in TRUNCATED_FRAME.
    fn truncated(&self) -> bool {
        self.folded_frames().iter().any(|f| f == TRUNCATED_FRAME)
    }
}

/// How much of what was counted sat on truncated stacks.
#[derive(Clone, Copy, Default)]
struct Tally {
    truncated: u64,
    total: u64,
}

/// How a stack-counting tool reports: --folded, -t/--top, --svg, --pprof.
pub struct StackReport {
    folded: bool,
    top: Option<usize>,
    flame: Option<FlameGraph>,
    pprof: Option<Pprof>,
    /// The wall-clock time before each text report (-i, -T).
    clock: bool,
    /// Over every report, and in the last one.
    all_reports: Tally,
    last_report: Tally,
}

impl StackReport {
    pub fn new(folded: bool, top: Option<usize>, flame: Option<FlameGraph>) -> StackReport {
        StackReport {
            folded,
            top,
            flame,
            pprof: None,
            clock: false,
            all_reports: Tally::default(),
            last_report: Tally::default(),
        }
    }

    /// Gathers every row into a profile too (--pprof).
    pub fn with_pprof(self, pprof: Option<Pprof>) -> StackReport {
        StackReport { pprof, ..self }
    }

    /// Heads each text report with the wall-clock time, as BCC's stackcount does with -i.
    pub fn with_clock(self, clock: bool) -> StackReport {
        StackReport { clock, ..self }
    }

    /// Prints one report of `rows`, given in the order to show them (see `print_titled`).
    pub fn print<R: StackRow>(&mut self, out: &mut Output, rows: Vec<R>) -> Result<()> {
        let clock = self.clock;
        self.print_titled(out, rows, |_| {
            clock.then(|| format!("\n{}", wall_clock_hms()))
        })
    }

    /// Prints one report of `rows`, given in the order to show them: the top
    /// ones as JSON, folded lines, or text under `title` (which is told how
    /// many rows are shown). Every row goes into the flame graph.
    pub fn print_titled<R: StackRow>(
        &mut self,
        out: &mut Output,
        mut rows: Vec<R>,
        title: impl FnOnce(usize) -> Option<String>,
    ) -> Result<()> {
        if let Some(flame) = &mut self.flame {
            for row in &rows {
                flame.add(row.folded_frames(), row.weight());
            }
        }
        if let Some(pprof) = &mut self.pprof {
            rows.iter()
                .filter_map(StackRow::profile_sample)
                .for_each(|sample| pprof.add(sample));
        }
        self.last_report = Tally::default();
        for row in &rows {
            let cut = if row.truncated() { row.weight() } else { 0 };
            self.last_report.truncated += cut;
            self.last_report.total += row.weight();
        }
        self.all_reports.truncated += self.last_report.truncated;
        self.all_reports.total += self.last_report.total;
        rows.truncate(self.top.unwrap_or(usize::MAX));
        if out.is_json() {
            rows.iter().try_for_each(|row| row.write_json(out))?;
        } else if self.folded {
            rows.iter()
                .try_for_each(|row| out.line(&folded_line(&row.folded_frames(), row.weight())))?;
        } else {
            if let Some(title) = title(rows.len()) {
                out.line(&title)?;
            }
            rows.iter().try_for_each(|row| row.write_text(out))?;
        }
        out.flush()
    }

    /// At the end of the trace, on stderr: the share of what was counted
    /// (`what`: "faults", "bytes outstanding") on truncated stacks, over
    /// every report (`cumulative`: each report counts what came since the
    /// last) or in the last one (each is the state then). Nothing if none.
    pub fn say_truncated(&self, tool: &str, what: &str, cumulative: bool) {
        let tally = if cumulative {
            self.all_reports
        } else {
            self.last_report
        };
        if tally.truncated > 0 {
            crate::say!(
                "{tool}: {} of {} {what} ({:.2}%) on stacks the unwinder could not follow to their start (shown ending in {TRUNCATED_FRAME})",
                tally.truncated,
                tally.total,
                100.0 * tally.truncated as f64 / tally.total as f64
            );
        }
    }

    /// At the end of the trace: the flame graph and the profile, where asked for.
    pub fn finish(self) -> Result<()> {
        if let Some(flame) = self.flame {
            flame.write()?;
        }
        match self.pprof {
            Some(pprof) => pprof.write(),
            None => Ok(()),
        }
    }
}

/// One stack in BCC stackcount's layout: kernel frames (and `--`), user
/// frames, the process, then `counts` (a blank line follows).
pub fn write_stackcount(
    out: &mut Output,
    kernel: Option<&[String]>,
    user: &[String],
    process: (&str, u32),
    counts: &str,
) -> Result<()> {
    if let Some(kernel) = kernel {
        for frame in kernel {
            out.line(&format!("    {frame}"))?;
        }
        out.line("    --")?;
    }
    for frame in user {
        out.line(&format!("    {frame}"))?;
    }
    let (comm, pid) = process;
    out.line(&format!("    -                {comm} ({pid})"))?;
    out.line(&format!("        {counts}\n"))
}
