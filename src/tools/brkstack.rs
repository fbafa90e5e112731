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

/// Calls of exited processes kept raw (with their stack copies) until their
/// mappings arrive; beyond this they are counted by their leaf frame alone.
const MAX_PENDING: usize = 4096;

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

    /// Ring buffer size in MiB (a power of two; a call takes 8 KiB): raise it if calls are lost
    #[arg(long, value_name = "MIB", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub buffer_size: u32,
}

pub fn run(args: Args) -> Result<i32> {
    let (target, filter) = skel::prepare(&args.common)?;
    let mut storage = MaybeUninit::uninit();
    let mut open = BrkstackSkelBuilder::default()
        .open(&mut storage)
        .context("opening the BPF object")?;
    set_filter_rodata!(open, &filter);
    let ring_bytes = args.buffer_size.next_power_of_two() << 20;
    open.maps
        .rodata_data
        .as_deref_mut()
        .context("BPF object has no .rodata")?
        .ring_bytes = u64::from(ring_bytes);
    open.maps
        .events
        .set_max_entries(ring_bytes)
        .context("sizing the ring buffer")?;
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
        // in place: an event is 8 KiB, and storms of them come faster than copies go
        if let Ok(event) = plain::from_bytes::<Event>(data) {
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
    if skel::report_drops(
        "brkstack",
        skel.object(),
        &[(
            skel::DROP_RINGBUF,
            "brk calls, or exited processes' mappings: raise --buffer-size",
        )],
    )? {
        let lost = skel::percpu_sums(&skel.maps.lost_growth, 1)?[0];
        eprintln!("brkstack: the calls lost grew the heap by {lost} bytes in all");
    }
    Ok(session.exit_code(stop))
}

/// Counts of one (process, stack).
#[derive(Default, Clone, Copy)]
struct Totals {
    calls: u64,
    grown: u64,
    shrunk: u64,
}

/// Calls gathered between reports: unwound as they come (most are a stack
/// seen before: see Unwinder::unwind_memo), or at the report for a process
/// that exited before its mappings arrived; symbolized once each, at the report.
struct Stacks {
    symbolizer: StackSymbolizer,
    unwinder: Unwinder,
    /// Calls not unwound yet, with the used part of their stack copies.
    pending: Vec<(Call, Vec<u8>)>,
    counted: HashMap<(u32, String, Vec<u64>), Totals>,
}

/// A call as counted: who, from where, and how the heap moved.
struct Call {
    pid: u32,
    comm: String,
    regs: Registers,
    old_brk: u64,
    new_brk: u64,
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

    /// Counts a call, unwinding it now if its process's mappings are known
    /// (alive, or its exit already reported); else keeps it for the report.
    fn add(&mut self, e: &Event) {
        let call = Call {
            pid: e.pid,
            comm: escape_c_chars(&e.comm),
            regs: Registers {
                ip: e.ip,
                sp: e.sp,
                bp: e.bp,
            },
            old_brk: e.old_brk,
            new_brk: e.new_brk,
        };
        let stack = &e.stack[..(e.stack_len as usize).min(e.stack.len())];
        if self.pending.len() < MAX_PENDING && !self.symbolizer.has_mappings(e.pid) {
            self.pending.push((call, stack.to_vec()));
        } else {
            // beyond MAX_PENDING, unwound as far as it can be: its leaf frame
            self.count(call, stack);
        }
    }

    fn count(&mut self, call: Call, stack: &[u8]) {
        let symbolizer = &mut self.symbolizer;
        let ips = self
            .unwinder
            .unwind_memo(call.pid, call.regs, stack, |addr| {
                symbolizer.locate(call.pid, addr)
            });
        let totals = self.counted.entry((call.pid, call.comm, ips)).or_default();
        totals.calls += 1;
        if call.new_brk > call.old_brk {
            totals.grown += call.new_brk - call.old_brk;
        } else {
            totals.shrunk += call.old_brk - call.new_brk;
        }
    }

    /// The rows counted since the last call, the most calls first.
    fn take(&mut self) -> Vec<Row> {
        for (call, stack) in std::mem::take(&mut self.pending) {
            self.count(call, &stack);
        }
        self.symbolizer.refresh();
        let counted: Vec<_> = self.counted.drain().collect();
        let mut rows: Vec<Row> = counted
            .into_iter()
            .map(|((pid, comm, ips), totals)| Row {
                pid,
                comm,
                frames: self.symbolizer.user_frames(pid, &ips),
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
