//! brkstack: brk(2) calls counted by user stack and process, with the bytes
//! of heap growth each stack caused, as the book's brkstack (which counts
//! calls only). Stacks are walked in the kernel with each object's
//! .eh_frame (engine/unwind.rs, unwind.bpf.h), as memleak's and faults' are,
//! so libc's frames without frame pointers don't cut them, and counted there.

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, ValueEnum};
use libbpf_rs::skel::Skel;
use libbpf_rs::MapCore;
use serde::Serialize;

use crate::analysis::symbolize::StackSymbolizer;
use crate::cli::{CommonArgs, ReportArgs};
use crate::engine::drops;
use crate::engine::loader::{self, Trace};
use crate::engine::maps::{percpu_sums, take_entries};
use crate::engine::records::{self, EXIT_MAPPINGS_PROGRAMS};
use crate::engine::session::{monotonic_ns, Session};
use crate::engine::skeleton::{DropReason, OpenSkeleton};
use crate::engine::syscalls::SyscallPrograms;
use crate::engine::unwind::{Unwind, UnwindArgs, Walker, UNWIND_PROGRAMS};
use crate::present::escape::escape_c_chars;
use crate::present::format::human_size;
use crate::present::output::Output;
use crate::present::output_file::OutputFile;
use crate::present::profile::{profile_value, FlameGraph, Labels, Pprof, ProfileFrame, Sample};
use crate::present::stack_report::{write_stackcount, StackReport, StackRow};
use crate::tools::stack_counts::{self, StackCounting, EXIT_MAPPINGS_HINT, MAX_ENTRIES_HINT};

crate::bpf_skeleton!("brkstack", OpenBrkstackSkel, records: [brkstack_key, brkstack_value]);
use bpf::types::{brkstack_key as Key, brkstack_value as Value};
use bpf::BrkstackSkelBuilder;

pub const ABOUT: &str = "Count brk(2) calls and heap growth by user stack";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Weight {
    /// brk calls
    Calls,
    /// Bytes the heap grew
    Bytes,
}

#[derive(Parser, Debug)]
#[command(about = ABOUT, after_help = "\
Each stack is walked in the kernel with the files' .eh_frame, so libraries
without frame pointers keep their callers.

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

    /// Write a profile of the whole trace to FILE (pprof: gzipped profile.proto, for go tool pprof, Pyroscope, Parca)
    #[arg(long, value_name = "FILE")]
    pub pprof: Option<PathBuf>,

    /// Source file and line of each frame, and the functions inlined
    /// there, where debug information exists (the file's own, or a separate
    /// one under /usr/lib/debug: Debian's -dbg and -dbgsym packages)
    #[arg(long)]
    pub source: bool,

    /// What --folded and --svg count
    #[arg(long, value_enum, default_value_t = Weight::Calls)]
    pub weight: Weight,

    #[command(flatten)]
    pub stacks: UnwindArgs,

    /// Distinct stacks the kernel can hold; raise it if stacks are lost
    #[arg(long, value_name = "N", default_value_t = 16384)]
    pub stack_storage_size: u32,

    /// Distinct (process, stack) counts the kernel can hold
    #[arg(long, value_name = "N", default_value_t = 16384)]
    pub max_entries: u32,
}

pub fn run(args: Args) -> Result<i32> {
    // reserved first: a path that can't be written fails before the trace
    let svg = OutputFile::reserve_if_given("--svg", args.svg.as_deref())?;
    let pprof = OutputFile::reserve_if_given("--pprof", args.pprof.as_deref())?;
    let mut trace = Trace::prepare(&args.common)?;
    let unwind = args.stacks.resolve(args.common.tool, Walker::Probe)?;
    let mut storage = MaybeUninit::uninit();
    let skel = loader::load(
        BrkstackSkelBuilder::default(),
        &mut storage,
        &mut trace,
        |open, programs| {
            let rodata = open.rodata()?;
            rodata.nr_brk = libc::SYS_brk;
            rodata.unwind_cfi = unwind == Unwind::Cfi;
            // the exits that walk by frame pointers carry no .eh_frame walk
            let fp = unwind == Unwind::Fp;
            let (exit, sys_exit) = match fp {
                true => ("brkstack_exit_fp", "brkstack_sys_exit_fp"),
                false => ("brkstack_exit", "brkstack_sys_exit"),
            };
            programs
                .load_if(false, &["brkstack_exit", "brkstack_sys_exit"])
                .load_if(false, &["brkstack_exit_fp", "brkstack_sys_exit_fp"])
                .syscalls(SyscallPrograms {
                    raw: ["brkstack_sys_enter", sys_exit],
                    classic: vec!["brkstack_enter", exit],
                });
            programs
                .load_if(unwind == Unwind::Cfi, UNWIND_PROGRAMS)
                .load_if(records::exit_mappings_sent(), EXIT_MAPPINGS_PROGRAMS);
            let maps = &mut open.maps;
            loader::set_entries(&mut maps.stack_store, args.stack_storage_size)?;
            args.stacks
                .size_maps(unwind, &mut maps.unwind_rows, &mut maps.unwind_pages)?;
            loader::set_entries(&mut maps.counts, args.max_entries)
        },
    )?;
    let counting = StackCounting::start(
        args.common.tool,
        skel.object(),
        crate::stack_maps!(skel.maps),
        &mut trace.target,
        unwind,
        args.source,
        MAX_ENTRIES_HINT,
    )?;
    let ring = counting.ring()?;

    let mut out = Output::new(args.common.json);
    let flame = svg.map(|file| match args.weight {
        Weight::Calls => FlameGraph::new(file, "brk() calls by stack", "calls"),
        Weight::Bytes => FlameGraph::new(file, "Heap growth by stack", "bytes"),
    });
    let clock = args.report.interval.is_some() || args.common.timestamp;
    let with_profile = pprof.is_some();
    let pprof =
        pprof.map(|file| Pprof::new(file, &[("brk_calls", "count"), ("heap_growth", "bytes")]));
    let mut report_stacks = StackReport::new(args.folded, args.report.top, flame)
        .with_clock(clock)
        .with_pprof(pprof);
    let interval = args.report.interval;
    let mut session = Session::start(trace, interval, "brk() calls")?;
    let mut report = |out: &mut Output| -> Result<()> {
        let counts = take_entries::<Key, Value>(&skel.maps.counts)?;
        let mut symbolizer =
            counting.before_report(&ring, counts.iter().map(|(key, _)| key.tgid))?;
        let rows = symbolize_rows(
            &mut symbolizer,
            &skel.maps.stack_store,
            &counts,
            args.weight,
            with_profile,
        );
        report_stacks.print(out, rows)
    };
    let stop = session.run(Some(&ring), || counting.after_poll(), || report(&mut out))?;
    report(&mut out)?;
    drop(ring);
    report_stacks.say_truncated(args.common.tool, "brk calls", true);
    counting.say_lost();
    report_stacks.finish()?;
    if drops::report(args.common.tool, skel.object(), DROP_HINTS)? {
        let lost = percpu_sums(&skel.maps.lost_growth, 1)?[0];
        if lost > 0 {
            crate::say!("brkstack: the calls not counted grew the heap by {lost} bytes in all");
        }
    }
    Ok(session.exit_code(stop))
}

/// What was lost, and what to do about it.
const DROP_HINTS: &[(DropReason, &str)] = &[
    (DropReason::MEMTRACE_DROP_COUNTS, MAX_ENTRIES_HINT),
    (
        DropReason::MEMTRACE_DROP_STACKS,
        "their calls show [stack lost]: raise --stack-storage-size",
    ),
    (
        DropReason::MEMTRACE_DROP_PENDING,
        "brk calls whose start found no room (more than 16384 threads in brk at once)",
    ),
    (DropReason::MEMTRACE_DROP_RINGBUF, EXIT_MAPPINGS_HINT),
];

/// The counts grouped by process and stack, symbolized, the most calls
/// first; `weight` says what their folded lines and flame graph count.
fn symbolize_rows(
    symbolizer: &mut StackSymbolizer,
    stacks: &dyn MapCore,
    counts: &[(Key, Value)],
    weight: Weight,
    with_profile: bool,
) -> Vec<Row> {
    // one process's stack may come under two comms (it renamed itself)
    let mut grouped: HashMap<(u32, String, i64), (u64, u64, u64)> = HashMap::new();
    for (key, value) in counts {
        let group = (key.tgid, escape_c_chars(&value.comm), key.user_stack);
        let totals = grouped.entry(group).or_default();
        totals.0 += value.calls;
        totals.1 += value.grown;
        totals.2 += value.shrunk;
    }
    let time_ns = monotonic_ns();
    let mut labels_of = HashMap::new();
    let mut rows: Vec<Row> = grouped
        .into_iter()
        .map(|((pid, comm, stack), (calls, grown, shrunk))| Row {
            time_ns,
            pid,
            calls,
            bytes_grown: grown,
            bytes_shrunk: shrunk,
            stack: stack_counts::user_frames(symbolizer, stacks, pid, stack),
            weight: match weight {
                Weight::Calls => calls,
                Weight::Bytes => grown,
            },
            profile: with_profile.then(|| {
                let labels = labels_of
                    .entry((pid, comm.clone()))
                    .or_insert_with(|| stack_counts::process_labels(pid, Some(&comm)))
                    .clone();
                let frames = stack_counts::user_profile_frames(symbolizer, stacks, pid, stack);
                (frames, labels)
            }),
            comm,
        })
        .collect();
    rows.sort_by(|a, b| {
        (b.calls, b.bytes_grown)
            .cmp(&(a.calls, a.bytes_grown))
            .then_with(|| (a.pid, &a.stack).cmp(&(b.pid, &b.stack)))
    });
    rows
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
    /// --pprof: the stack as a profile records it, and the sample's labels.
    #[serde(skip)]
    profile: Option<(Vec<ProfileFrame>, Labels)>,
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

    fn profile_sample(&self) -> Option<Sample> {
        let (frames, labels) = self.profile.clone()?;
        Some(Sample {
            frames,
            values: vec![profile_value(self.calls), profile_value(self.bytes_grown)],
            labels,
        })
    }
}
