//! faults: page faults counted by user stack (kernel stack with -K), process
//! and kind: which code grows the RSS. As the book's faults.bt, symbolized,
//! with folded stacks and flame graphs.

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use libbpf_rs::skel::Skel;
use libbpf_rs::{MapCore, OpenObject};
use serde::Serialize;

use crate::analysis::symbolize::StackSymbolizer;
use crate::cli::{CommonArgs, ReportArgs};
use crate::engine::drops;
use crate::engine::features::Feature;
use crate::engine::kernel;
use crate::engine::loader::{self, Trace};
use crate::engine::maps::{stored_stack, take_entries};
use crate::engine::perf;
use crate::engine::records::{self, EXIT_MAPPINGS_PROGRAMS};
use crate::engine::session::{monotonic_ns, Session};
use crate::engine::skeleton::{DropReason, FaultKind, OpenSkeleton};
use crate::engine::unwind::{Unwind, UnwindArgs, Walker, UNWIND_PROGRAMS};
use crate::present::escape::escape_c_chars;
use crate::present::output::Output;
use crate::present::output_file::OutputFile;
use crate::present::profile::{profile_value, FlameGraph, Labels, Pprof, ProfileFrame, Sample};
use crate::present::stack_report::{write_stackcount, StackReport, StackRow, STORE_FULL_FRAME};
use crate::tools::stack_counts::{self, StackCounting, EXIT_MAPPINGS_HINT, MAX_ENTRIES_HINT};

crate::bpf_skeleton!("faults", OpenFaultsSkel, records: [faults_key, faults_value]);
use bpf::types::{faults_key as Key, faults_stack_key, faults_value as Value};
use bpf::{FaultsSkel, FaultsSkelBuilder};

pub const ABOUT: &str = "Count page faults by user stack: which code grows the RSS";

#[derive(Parser, Debug)]
#[command(about = ABOUT, after_help = "\
Examples:
  faults -- ./app                  # which stacks of ./app fault pages in
  faults -p 181 -K -t 5            # user and kernel stacks, the top 5
  faults --folded -- ./app > out.folded
  faults --svg faults.svg -- ./app # a flame graph")]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub report: ReportArgs,

    /// Kernel stacks too
    #[arg(short = 'K', long)]
    pub kernel_stack: bool,

    /// Source file and line of each frame, and the functions inlined
    /// there, where debug information exists (the file's own, or a separate
    /// one under /usr/lib/debug: Debian's -dbg and -dbgsym packages)
    #[arg(long)]
    pub source: bool,

    /// Print folded stacks (`comm;outer;...;inner count`) for flame graph tools
    #[arg(long, conflicts_with = "json")]
    pub folded: bool,

    /// Write a flame graph of the whole trace to FILE (SVG)
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,

    /// Write a profile of the whole trace to FILE (pprof: gzipped profile.proto, for go tool pprof, Pyroscope, Parca)
    #[arg(long, value_name = "FILE")]
    pub pprof: Option<PathBuf>,

    /// Distinct stacks the kernel can hold; raise it if stacks are lost
    #[arg(long, value_name = "N", default_value_t = 16384)]
    pub stack_storage_size: u32,

    #[command(flatten)]
    pub stacks: UnwindArgs,

    /// Distinct (process, stack, kind) counts the kernel can hold
    #[arg(long, value_name = "N", default_value_t = 16384)]
    pub max_entries: u32,
}

pub fn run(args: Args) -> Result<i32> {
    // reserved first: a path that can't be written fails before the trace
    let svg = OutputFile::reserve_if_given("--svg", args.svg.as_deref())?;
    let pprof = OutputFile::reserve_if_given("--pprof", args.pprof.as_deref())?;
    let mut trace = Trace::prepare(&args.common)?;
    let unwind = args.stacks.resolve(args.common.tool, Walker::PerfEvent)?;
    let mut storage = MaybeUninit::uninit();
    let skel = load(&mut storage, &mut trace, &args, unwind)?;
    let _links = match per_kind_programs() {
        false => perf::attach_fault_program(&skel.progs.faults_fault, true)?,
        true => perf::attach_fault_programs(
            &skel.progs.faults_major_fp,
            Some(&skel.progs.faults_minor_fp),
        )?,
    };
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
    let flame = svg.map(|file| FlameGraph::new(file, "Page faults by stack", "faults"));
    let clock = args.report.interval.is_some() || args.common.timestamp;
    let with_profile = pprof.is_some();
    let pprof =
        pprof.map(|file| Pprof::new(file, &[("faults", "count"), ("major_faults", "count")]));
    let mut stacks = StackReport::new(args.folded, args.report.top, flame)
        .with_clock(clock)
        .with_pprof(pprof);
    let interval = args.report.interval;
    let mut session = Session::start(trace, interval, "page faults")?;
    let mut report = |out: &mut Output| -> Result<()> {
        let counts = take_entries::<Key, Value>(&skel.maps.counts)?;
        let mut symbolizer =
            counting.before_report(&ring, counts.iter().map(|(key, _)| key.tgid))?;
        let rows = symbolize_rows(
            &mut symbolizer,
            &skel.maps.stack_store,
            &counts,
            with_profile,
        );
        stacks.print(out, rows)
    };
    let stop = session.run(Some(&ring), || counting.after_poll(), || report(&mut out))?;
    report(&mut out)?;
    drop(ring);
    stacks.say_truncated(args.common.tool, "faults", true);
    counting.say_lost();
    stacks.finish()?;
    drops::report(args.common.tool, skel.object(), DROP_HINTS)?;
    Ok(session.exit_code(stop))
}

/// What was lost, and what to do about it.
const DROP_HINTS: &[(DropReason, &str)] = &[
    (DropReason::MEMTRACE_DROP_COUNTS, MAX_ENTRIES_HINT),
    (
        DropReason::MEMTRACE_DROP_STACKS,
        "their faults show [stack lost]: raise --stack-storage-size",
    ),
    (DropReason::MEMTRACE_DROP_RINGBUF, EXIT_MAPPINGS_HINT),
];

/// The skeleton with -K, and its maps sized.
fn load<'obj>(
    storage: &'obj mut MaybeUninit<OpenObject>,
    trace: &mut Trace,
    args: &Args,
    unwind: Unwind,
) -> Result<FaultsSkel<'obj>> {
    loader::load(
        FaultsSkelBuilder::default(),
        storage,
        trace,
        |open, programs| {
            let rodata = open.rodata()?;
            rodata.kernel_stacks = args.kernel_stack;
            rodata.unwind_cfi = unwind == Unwind::Cfi;
            programs.load_if(unwind == Unwind::Cfi, UNWIND_PROGRAMS);
            let per_kind = per_kind_programs();
            programs
                .load_if(!per_kind, &["faults_fault"])
                .load_if(per_kind, &["faults_minor_fp", "faults_major_fp"])
                .load_if(records::exit_mappings_sent(), EXIT_MAPPINGS_PROGRAMS);
            loader::set_entries(&mut open.maps.stack_store, args.stack_storage_size)?;
            let maps = &mut open.maps;
            args.stacks
                .size_maps(unwind, &mut maps.unwind_rows, &mut maps.unwind_pages)?;
            if !kernel::release_at_least(6, 12) {
                // a perf_event program may use a hash map made as entries come
                // only since 6.1 (the BPF memory allocator), and on 6.1 a burst
                // of new stacks found its caches empty: 1 of 1024 lost to
                // ENOMEM under TCG
                loader::preallocate(&mut open.maps.stack_store)?;
            }
            loader::set_entries(&mut open.maps.counts, args.max_entries)
        },
    )
}

/// Whether the faults are counted by a program per kind with frame-pointer
/// stacks: where faults_fault, which tells the kinds apart by cookie and
/// can walk .eh_frame, can't load (cookies: 5.15; bpf_loop: 5.17).
fn per_kind_programs() -> bool {
    !Feature::AttachCookie.present() || !Feature::Loop.present()
}

/// One report row: a process, its stacks (leaf first) and counts by kind.
struct Row {
    time_ns: u64,
    pid: u32,
    comm: String,
    user: Vec<String>,
    kernel: Option<Vec<String>>,
    minor: u64,
    major: u64,
    /// --pprof: the stacks as a profile records them (kernel frames, then
    /// user frames, leaf first), and the sample's labels.
    profile: Option<(Vec<ProfileFrame>, Labels)>,
}

/// A JSON line: one kind of fault of a row (`file` is null: faults has no
/// file column, but its lines read as ffaults' do).
#[derive(Serialize)]
struct KindRow<'a> {
    time_ns: u64,
    pid: u32,
    comm: &'a str,
    file: Option<&'a str>,
    kind: &'static str,
    count: u64,
    stack: &'a [String],
    kernel_stack: Option<&'a [String]>,
}

impl StackRow for Row {
    /// `comm`, then frames outermost first, kernel frames (marked `_[k]`) innermost.
    fn folded_frames(&self) -> Vec<String> {
        let mut frames = vec![self.comm.clone()];
        frames.extend(self.user.iter().rev().cloned());
        if let Some(kernel) = &self.kernel {
            frames.extend(kernel.iter().rev().map(|f| format!("{f}_[k]")));
        }
        frames
    }

    fn weight(&self) -> u64 {
        self.minor + self.major
    }

    fn write_json(&self, out: &mut Output) -> Result<()> {
        for (kind, count) in [("minor", self.minor), ("major", self.major)] {
            if count > 0 {
                out.json_line(&KindRow {
                    time_ns: self.time_ns,
                    pid: self.pid,
                    comm: &self.comm,
                    file: None,
                    kind,
                    count,
                    stack: &self.user,
                    kernel_stack: self.kernel.as_deref(),
                })?;
            }
        }
        Ok(())
    }

    fn write_text(&self, out: &mut Output) -> Result<()> {
        let counts = format!(
            "{} ({} minor, {} major)",
            self.weight(),
            self.minor,
            self.major
        );
        write_stackcount(
            out,
            self.kernel.as_deref(),
            &self.user,
            (&self.comm, self.pid),
            &counts,
        )
    }

    fn profile_sample(&self) -> Option<Sample> {
        let (frames, labels) = self.profile.clone()?;
        Some(Sample {
            frames,
            values: vec![profile_value(self.weight()), profile_value(self.major)],
            labels,
        })
    }
}

/// Why there is no kernel stack, as a frame. A fault taken in user mode has
/// no kernel stack of its own (the perf event carries user registers).
fn missing_kernel_stack(id: i64) -> Vec<String> {
    if id == -i64::from(libc::ENOSPC) {
        return vec![STORE_FULL_FRAME.into()];
    }
    vec!["[fault in user mode]".into()]
}

/// The counts grouped by process and stacks, symbolized, the most faults first.
fn symbolize_rows(
    symbolizer: &mut StackSymbolizer,
    stacks: &dyn MapCore,
    counts: &[(Key, Value)],
    with_profile: bool,
) -> Vec<Row> {
    type Group = (u32, String, i64, i64);
    let mut grouped: HashMap<Group, [u64; 2]> = HashMap::new();
    for (key, value) in counts {
        let comm = escape_c_chars(&value.comm);
        let group = (key.tgid, comm, key.user_stack, key.kernel_stack);
        let major = key.kind == FaultKind::MEMTRACE_FAULT_MAJOR.0;
        grouped.entry(group).or_default()[usize::from(major)] += value.count;
    }
    let no_kernel_stack = i64::from(faults_stack_key::FAULTS_NO_STACK.0);
    let time_ns = monotonic_ns();
    let mut labels_of = HashMap::new();
    let mut rows = Vec::with_capacity(grouped.len());
    for ((pid, comm, user_id, kernel_id), [minor, major]) in grouped {
        let user = stack_counts::user_frames(symbolizer, stacks, pid, user_id);
        let kernel =
            (kernel_id != no_kernel_stack).then(|| match stored_stack(stacks, kernel_id) {
                Some(ips) => symbolizer.kernel_frames(&ips),
                None => missing_kernel_stack(kernel_id),
            });
        let profile = with_profile.then(|| {
            let kernel = kernel.iter().flatten().cloned().map(ProfileFrame::Named);
            let user = stack_counts::user_profile_frames(symbolizer, stacks, pid, user_id);
            let labels = labels_of
                .entry((pid, comm.clone()))
                .or_insert_with(|| stack_counts::process_labels(pid, Some(&comm)))
                .clone();
            (kernel.chain(user).collect(), labels)
        });
        rows.push(Row {
            time_ns,
            pid,
            comm,
            user,
            kernel,
            minor,
            major,
            profile,
        });
    }
    rows.sort_by(|a, b| {
        b.weight()
            .cmp(&a.weight())
            .then_with(|| (a.pid, &a.user).cmp(&(b.pid, &b.user)))
    });
    rows
}
