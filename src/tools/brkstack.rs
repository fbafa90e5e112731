//! brkstack: brk(2) calls counted by user stack and process, with the bytes
//! of heap growth each stack caused, as the book's brkstack (which counts
//! calls only). Stacks are unwound in user space from a copy of the stack
//! (see analysis/unwind.rs), so libc's frames without frame pointers don't
//! cut them. x86-64 only, as the unwinder is.

use std::cell::RefCell;
use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use libbpf_rs::skel::Skel;
use libbpf_rs::RingBufferBuilder;
use serde::Serialize;

use crate::analysis::symbolize::StackSymbolizer;
use crate::analysis::unwind::{self, Registers, Unwinder};
use crate::cli::{parse_ring_mib, CommonArgs, ReportArgs};
use crate::engine::drops;
use crate::engine::loader::{self, Trace};
use crate::engine::maps::percpu_sums;
use crate::engine::records::add_exit_mappings;
use crate::engine::session::{monotonic_ns, Session};
use crate::engine::skeleton::{DropReason, OpenSkeleton};
use crate::engine::syscalls::SyscallPrograms;
use crate::present::escape::escape_c_chars;
use crate::present::format::human_size;
use crate::present::output::Output;
use crate::present::output_file::OutputFile;
use crate::present::profile::FlameGraph;
use crate::present::stack_report::{write_stackcount, StackReport, StackRow};

crate::bpf_skeleton!("brkstack", OpenBrkstackSkel, records: [brkstack_event]);
use bpf::types::brkstack_event as Event;
use bpf::BrkstackSkelBuilder;

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

    /// Source file and line of each frame, and the functions inlined
    /// there, where debug information exists (the file's own, or a separate
    /// one under /usr/lib/debug: Debian's -dbg and -dbgsym packages)
    #[arg(long)]
    pub source: bool,

    /// What --folded and --svg count
    #[arg(long, value_enum, default_value_t = Weight::Calls)]
    pub weight: Weight,

    /// Ring buffer size in MiB (a power of two; a call takes 8 KiB): raise it if calls are lost
    #[arg(long, value_name = "MIB", default_value_t = 8, value_parser = parse_ring_mib)]
    pub buffer_size: u32,
}

pub fn run(args: Args) -> Result<i32> {
    unwind::check_architecture()?;
    // reserved first: a path that can't be written fails before the trace
    let svg = OutputFile::reserve_if_given("--svg", args.svg.as_deref())?;
    let mut trace = Trace::prepare(&args.common)?;
    let mut storage = MaybeUninit::uninit();
    let skel = loader::load(
        BrkstackSkelBuilder::default(),
        &mut storage,
        &mut trace,
        |open, programs| {
            let ring_bytes = loader::set_ring_buffer_size(&mut open.maps.events, args.buffer_size)?;
            let rodata = open.rodata()?;
            rodata.ring_bytes = u64::from(ring_bytes);
            rodata.nr_brk = libc::SYS_brk;
            programs.syscalls(SyscallPrograms {
                raw: ["brkstack_sys_enter", "brkstack_sys_exit"],
                classic: vec!["brkstack_enter", "brkstack_exit"],
            });
            Ok(())
        },
    )?;

    let stacks = RefCell::new(Stacks::new(args.source));
    let mut builder = RingBufferBuilder::new();
    add_exit_mappings(&mut builder, &skel.maps.mappings, |pid, mapping| {
        stacks
            .borrow_mut()
            .symbolizer
            .add_exited_mapping(pid, mapping)
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
    let flame = svg.map(|file| match args.weight {
        Weight::Calls => FlameGraph::new(file, "brk() calls by stack", "calls"),
        Weight::Bytes => FlameGraph::new(file, "Heap growth by stack", "bytes"),
    });
    let clock = args.report.interval.is_some() || args.common.timestamp;
    let mut report_stacks = StackReport::new(args.folded, args.report.top, flame).with_clock(clock);
    let interval = args.report.interval;
    let mut session = Session::start(trace, interval, "brk() calls")?;
    let mut report = |out: &mut Output| -> Result<()> {
        let rows = stacks.borrow_mut().take(args.weight);
        report_stacks.print(out, rows)
    };
    let stop = session.run(Some(&ring), || Ok(()), || report(&mut out))?;
    report(&mut out)?;
    drop(ring);
    report_stacks.finish()?;
    let hints = [(
        DropReason::MEMTRACE_DROP_RINGBUF,
        "brk calls, or exited processes' mappings: raise --buffer-size",
    )];
    if drops::report(args.common.tool, skel.object(), &hints)? {
        let lost = percpu_sums(&skel.maps.lost_growth, 1)?[0];
        crate::say!("brkstack: the calls lost grew the heap by {lost} bytes in all");
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
    fn new(with_source: bool) -> Stacks {
        Stacks {
            symbolizer: StackSymbolizer::new(with_source),
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

    /// The rows counted since the last call, the most calls first; `weight`
    /// says what their folded lines and flame graph count.
    fn take(&mut self, weight: Weight) -> Vec<Row> {
        for (call, stack) in std::mem::take(&mut self.pending) {
            self.count(call, &stack);
        }
        self.symbolizer.refresh();
        let time_ns = monotonic_ns();
        let counted: Vec<_> = self.counted.drain().collect();
        let mut rows: Vec<Row> = counted
            .into_iter()
            .map(|((pid, comm, ips), totals)| Row {
                time_ns,
                pid,
                comm,
                calls: totals.calls,
                bytes_grown: totals.grown,
                bytes_shrunk: totals.shrunk,
                stack: self.symbolizer.user_frames(pid, &ips),
                weight: match weight {
                    Weight::Calls => totals.calls,
                    Weight::Bytes => totals.grown,
                },
            })
            .collect();
        rows.sort_by(|a, b| {
            (b.calls, b.bytes_grown)
                .cmp(&(a.calls, a.bytes_grown))
                .then_with(|| (a.pid, &a.stack).cmp(&(b.pid, &b.stack)))
        });
        rows
    }
}

/// One (process, stack) of a report; the JSON fields are documented in the README.
#[derive(Serialize)]
struct Row {
    time_ns: u64,
    pid: u32,
    comm: String,
    calls: u64,
    bytes_grown: u64,
    bytes_shrunk: u64,
    /// Leaf first.
    stack: Vec<String>,
    /// What --folded and --svg count (--weight).
    #[serde(skip)]
    weight: u64,
}

impl StackRow for Row {
    /// `comm`, then frames outermost first.
    fn folded_frames(&self) -> Vec<String> {
        std::iter::once(self.comm.clone())
            .chain(self.stack.iter().rev().cloned())
            .collect()
    }

    fn weight(&self) -> u64 {
        self.weight
    }

    fn write_json(&self, out: &mut Output) -> Result<()> {
        out.json_line(self)
    }

    fn write_text(&self, out: &mut Output) -> Result<()> {
        let mut counts = format!(
            "{} calls, heap grown {}",
            self.calls,
            human_size(self.bytes_grown)
        );
        if self.bytes_shrunk > 0 {
            counts.push_str(&format!(", shrunk {}", human_size(self.bytes_shrunk)));
        }
        write_stackcount(out, None, &self.stack, (&self.comm, self.pid), &counts)
    }
}
