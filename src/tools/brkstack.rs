//! brkstack: brk(2) calls counted by user stack and process, with the bytes
//! of heap growth each stack caused, as the book's brkstack (which counts
//! calls only). Stacks are unwound in user space from a copy of the stack
//! (see unwind.rs), so libc's frames without frame pointers don't cut them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::RingBufferBuilder;
use serde_json::json;

use crate::cli::{CommonArgs, ReportArgs};
use crate::events::{monotonic_ns, Session};
use crate::output::{escape_c_chars, human_size, wall_clock_hms, Output};
use crate::symbolize::StackSymbolizer;
use crate::unwind::{Registers, Unwinder};
use crate::{kernel, set_filter_rodata, skel};

crate::bpf_skeleton!("brkstack");
use bpf::types::{brkstack_event as Event, exitmaps_mapping};
use bpf::BrkstackSkelBuilder;

// SAFETY: C structs of integers and byte arrays: every bit pattern is valid.
unsafe impl plain::Plain for Event {}
// SAFETY: as above.
unsafe impl plain::Plain for exitmaps_mapping {}

pub const ABOUT: &str = "Count brk(2) calls and heap growth by user stack";

/// Calls kept raw (with their stack copies) before they are unwound; beyond
/// this they are unwound at once, so memory stays bounded between reports.
const MAX_PENDING: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Weight {
    /// brk calls
    Calls,
    /// Bytes the heap grew
    Bytes,
}

#[derive(Parser, Debug)]
#[command(about = ABOUT, after_help = "\
Each stack is unwound from the caller's registers and the top 8 KiB of its stack
with the files' .eh_frame, so libraries without frame pointers keep their callers.

Examples:
  brkstack -- ./app                 # which code grows ./app's heap
  brkstack -p 181 -i 10             # every 10 s
  brkstack --svg heap.svg --weight bytes -- ./app")]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub report: ReportArgs,

    /// Print folded stacks (`comm;outer;...;inner value`) for flame graph tools
    #[arg(long, conflicts_with = "json")]
    pub folded: bool,

    /// Write a flame graph of the whole trace to FILE (SVG)
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,

    /// What --folded and --svg count
    #[arg(long, value_enum, default_value_t = Weight::Calls)]
    pub weight: Weight,
}

pub fn run(args: Args) -> Result<i32> {
    let (target, filter) = skel::prepare(&args.common)?;
    let mut storage = MaybeUninit::uninit();
    let mut open = BrkstackSkelBuilder::default()
        .open(&mut storage)
        .context("opening the BPF object")?;
    set_filter_rodata!(open, &filter);
    skel::choose_common_programs(open.open_object_mut(), &filter)?;
    kernel::check_attach_points(open.open_object())?;
    let mut skel = open.load().context(skel::LOAD_FAILED)?;
    skel::fill_traced_tgids(skel.object(), &target)?;
    skel.attach().context(skel::ATTACH_FAILED)?;

    let stacks = RefCell::new(Stacks::new());
    let mut builder = RingBufferBuilder::new();
    builder.add(&skel.maps.mappings, |data| {
        crate::record_exit_mapping!(stacks.borrow_mut().symbolizer, exitmaps_mapping, data);
        0
    })?;
    builder.add(&skel.maps.events, |data| {
        let mut event = Event::default();
        if plain::copy_from_bytes(&mut event, data).is_ok() {
            stacks.borrow_mut().add(event);
        }
        0
    })?;
    let ring = builder.build().context("setting up the ring buffer")?;

    let mut out = Output::new(args.common.json);
    let mut whole_trace: HashMap<Vec<String>, u64> = HashMap::new();
    let mut session = Session::start(
        target,
        args.common.duration,
        args.report.interval,
        "brk() calls",
    )?;
    let mut report = |out: &mut Output| -> Result<()> {
        let rows = stacks.borrow_mut().take();
        if args.svg.is_some() {
            for row in &rows {
                *whole_trace.entry(row.folded_frames()).or_default() += row.weight(args.weight);
            }
        }
        print_report(out, &args, rows)?;
        out.flush()
    };
    let stop = session.run(Some(&ring), || Ok(()), || report(&mut out))?;
    report(&mut out)?;
    drop(ring);
    if let Some(path) = &args.svg {
        let (title, unit) = match args.weight {
            Weight::Calls => ("brk() calls by stack", "calls"),
            Weight::Bytes => ("Heap growth by stack", "bytes"),
        };
        crate::flame::write_svg(path, title, unit, &whole_trace)?;
    }
    skel::report_drops(
        "brkstack",
        skel.object(),
        &[(
            skel::DROP_RINGBUF,
            "exited processes' mappings or brk calls: raise the interval's frequency with -i",
        )],
    )?;
    Ok(session.exit_code(stop))
}

/// Counts of one (process, stack).
#[derive(Default, Clone, Copy)]
struct Totals {
    calls: u64,
    grown: u64,
    shrunk: u64,
}

/// Calls gathered between reports. A call is unwound at the report, once the
/// mappings of a process that exited meanwhile have arrived.
struct Stacks {
    symbolizer: StackSymbolizer,
    unwinder: Unwinder,
    pending: Vec<Event>,
    counted: HashMap<(u32, String, Vec<String>), Totals>,
}

impl Stacks {
    fn new() -> Stacks {
        Stacks {
            symbolizer: StackSymbolizer::new(false),
            unwinder: Unwinder::default(),
            pending: Vec::new(),
            counted: HashMap::new(),
        }
    }

    fn add(&mut self, event: Event) {
        self.pending.push(event);
        if self.pending.len() >= MAX_PENDING {
            self.unwind_pending();
        }
    }

    fn unwind_pending(&mut self) {
        self.symbolizer.refresh();
        for e in std::mem::take(&mut self.pending) {
            let regs = Registers {
                ip: e.ip,
                sp: e.sp,
                bp: e.bp,
            };
            let stack = &e.stack[..(e.stack_len as usize).min(e.stack.len())];
            let symbolizer = &mut self.symbolizer;
            let ips = self
                .unwinder
                .unwind(regs, stack, |addr| symbolizer.locate(e.pid, addr));
            let frames = self.symbolizer.user_frames(e.pid, &ips);
            let totals = self
                .counted
                .entry((e.pid, escape_c_chars(&e.comm), frames))
                .or_default();
            totals.calls += 1;
            if e.new_brk > e.old_brk {
                totals.grown += e.new_brk - e.old_brk;
            } else {
                totals.shrunk += e.old_brk - e.new_brk;
            }
        }
    }

    /// The rows counted since the last call, the most calls first.
    fn take(&mut self) -> Vec<Row> {
        self.unwind_pending();
        let mut rows: Vec<Row> = self
            .counted
            .drain()
            .map(|((pid, comm, frames), totals)| Row {
                pid,
                comm,
                frames,
                totals,
            })
            .collect();
        rows.sort_by(|a, b| {
            (b.totals.calls, b.totals.grown)
                .cmp(&(a.totals.calls, a.totals.grown))
                .then_with(|| (a.pid, &a.frames).cmp(&(b.pid, &b.frames)))
        });
        rows
    }
}

struct Row {
    pid: u32,
    comm: String,
    /// Leaf first.
    frames: Vec<String>,
    totals: Totals,
}

impl Row {
    fn weight(&self, weight: Weight) -> u64 {
        match weight {
            Weight::Calls => self.totals.calls,
            Weight::Bytes => self.totals.grown,
        }
    }

    /// `comm`, then frames outermost first.
    fn folded_frames(&self) -> Vec<String> {
        std::iter::once(self.comm.clone())
            .chain(self.frames.iter().rev().cloned())
            .collect()
    }
}

fn print_report(out: &mut Output, args: &Args, mut rows: Vec<Row>) -> Result<()> {
    rows.truncate(args.report.top.unwrap_or(usize::MAX));
    if out.json {
        let time_ns = monotonic_ns();
        for row in &rows {
            out.json_line(&json!({
                "time_ns": time_ns,
                "pid": row.pid,
                "comm": row.comm,
                "calls": row.totals.calls,
                "bytes_grown": row.totals.grown,
                "bytes_shrunk": row.totals.shrunk,
                "stack": row.frames,
            }))?;
        }
        return Ok(());
    }
    if args.folded {
        for row in &rows {
            let line = crate::flame::folded_line(&row.folded_frames(), row.weight(args.weight));
            out.line(&line)?;
        }
        return Ok(());
    }
    if args.report.interval.is_some() || args.common.timestamp {
        out.line(&format!("\n{}", wall_clock_hms()))?;
    }
    // BCC stackcount's layout: frames, the process, the count
    for row in &rows {
        for frame in &row.frames {
            out.line(&format!("    {frame}"))?;
        }
        out.line(&format!("    -                {} ({})", row.comm, row.pid))?;
        let mut line = format!(
            "        {} calls, heap grown {}",
            row.totals.calls,
            human_size(row.totals.grown)
        );
        if row.totals.shrunk > 0 {
            line.push_str(&format!(", shrunk {}", human_size(row.totals.shrunk)));
        }
        out.line(&format!("{line}\n"))?;
    }
    Ok(())
}
