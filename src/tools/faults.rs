//! faults: page faults counted by user stack (kernel stack with -K), process
//! and kind: which code grows the RSS. As the book's faults.bt, symbolized,
//! with folded stacks and flame graphs.

use std::cell::RefCell;
use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{MapCore, RingBufferBuilder};
use serde_json::json;

use crate::cli::{CommonArgs, ReportArgs};
use crate::events::{monotonic_ns, Session};
use crate::output::{wall_clock_hms, Output};
use crate::symbolize::StackSymbolizer;
use crate::{kernel, perf, set_filter_rodata, skel};

crate::bpf_skeleton!("faults");
use bpf::types::{exitmaps_mapping, faults_key as Key, faults_value as Value, memtrace_stack};
use bpf::FaultsSkelBuilder;

// SAFETY: C structs of integers and byte arrays: every bit pattern is valid.
unsafe impl plain::Plain for Key {}
// SAFETY: as above.
unsafe impl plain::Plain for exitmaps_mapping {}
// SAFETY: as above.
unsafe impl plain::Plain for Value {}
// SAFETY: as above.
unsafe impl plain::Plain for memtrace_stack {}

pub const ABOUT: &str = "Count page faults by user stack: which code grows the RSS";

/// FAULTS_NO_STACK in faults.h: kernel stacks were not asked for.
const NO_STACK: i64 = -100000;

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

    /// Source file and line of each frame, where debug information exists
    #[arg(long)]
    pub source: bool,

    /// Print folded stacks (`comm;outer;...;inner count`) for flame graph tools
    #[arg(long, conflicts_with = "json")]
    pub folded: bool,

    /// Write a flame graph of the whole trace to FILE (SVG)
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,

    /// Distinct stacks the kernel can hold; raise it if stacks are lost
    #[arg(long, value_name = "N", default_value_t = 16384)]
    pub stack_storage_size: u32,

    /// Distinct (process, stack, kind) counts the kernel can hold
    #[arg(long, value_name = "N", default_value_t = 16384)]
    pub max_entries: u32,
}

pub fn run(args: Args) -> Result<i32> {
    let (target, filter) = skel::prepare(&args.common)?;
    let mut storage = MaybeUninit::uninit();
    let mut open = FaultsSkelBuilder::default()
        .open(&mut storage)
        .context("opening the BPF object")?;
    set_filter_rodata!(open, &filter);
    open.maps
        .rodata_data
        .as_deref_mut()
        .context("BPF object has no .rodata")?
        .kernel_stacks = args.kernel_stack;
    skel::choose_common_programs(open.open_object_mut(), &filter)?;
    open.maps
        .stack_store
        .set_max_entries(args.stack_storage_size.max(1))
        .context("sizing the stack map")?;
    open.maps
        .counts
        .set_max_entries(args.max_entries.max(1))
        .context("sizing the counting map")?;
    kernel::check_attach_points(open.open_object())?;
    let mut skel = open.load().context(skel::LOAD_FAILED)?;
    skel::fill_traced_tgids(skel.object(), &target)?;
    skel.attach().context(skel::ATTACH_FAILED)?;
    let _links =
        perf::attach_fault_programs(Some(&skel.progs.faults_minor), &skel.progs.faults_major)?;

    let symbolizer = RefCell::new(StackSymbolizer::new(args.source));
    let mut builder = RingBufferBuilder::new();
    builder.add(&skel.maps.mappings, |data| {
        crate::record_exit_mapping!(symbolizer.borrow_mut(), exitmaps_mapping, data);
        0
    })?;
    let ring = builder.build().context("setting up the ring buffer")?;

    let mut out = Output::new(args.common.json);
    let mut whole_trace: HashMap<Vec<String>, u64> = HashMap::new();
    let mut lost_stacks = 0u64;
    let mut session = Session::start(
        target,
        args.common.duration,
        args.report.interval,
        "page faults",
    )?;
    let mut report = |out: &mut Output| -> Result<()> {
        let counts = skel::take_entries::<Key, Value>(&skel.maps.counts)?;
        let mut symbolizer = symbolizer.borrow_mut();
        symbolizer.refresh();
        let rows = symbolize_rows(
            &mut symbolizer,
            &skel.maps.stack_store,
            &counts,
            &mut lost_stacks,
        )?;
        if args.svg.is_some() {
            for row in &rows {
                *whole_trace.entry(row.folded_frames()).or_default() += row.total();
            }
        }
        print_report(out, &args, rows)?;
        out.flush()
    };
    let stop = session.run(Some(&ring), || Ok(()), || report(&mut out));
    let stop = stop?;
    report(&mut out)?;
    drop(ring);
    if let Some(path) = &args.svg {
        crate::flame::write_svg(path, "Page faults by stack", "faults", &whole_trace)?;
    }
    if lost_stacks > 0 {
        eprintln!("faults: the stacks of {lost_stacks} faults were lost: the stack store was full (raise --stack-storage-size)");
    }
    skel::report_drops(
        "faults",
        skel.object(),
        &[
            (skel::DROP_COUNTS, "raise --max-entries"),
            (
                skel::DROP_RINGBUF,
                "exited processes' mappings: their stacks show addresses",
            ),
        ],
    )?;
    Ok(session.exit_code(stop))
}

/// One report row: a process, its stacks (leaf first) and counts by kind.
struct Row {
    pid: u32,
    comm: String,
    user: Vec<String>,
    kernel: Option<Vec<String>>,
    counts: [u64; 2],
}

impl Row {
    fn total(&self) -> u64 {
        self.counts[0] + self.counts[1]
    }

    /// `comm`, then frames outermost first, kernel frames (marked `_[k]`) innermost.
    fn folded_frames(&self) -> Vec<String> {
        let mut frames = vec![self.comm.replace(';', ":")];
        frames.extend(self.user.iter().rev().map(|f| f.replace(';', ":")));
        if let Some(kernel) = &self.kernel {
            frames.extend(
                kernel
                    .iter()
                    .rev()
                    .map(|f| format!("{}_[k]", f.replace(';', ":"))),
            );
        }
        frames
    }
}

fn stack_ips(stacks: &dyn MapCore, key: i64) -> Option<Vec<u64>> {
    crate::symbolize::stored_stack::<memtrace_stack>(stacks, key, |s| (s.nr, &s.ips))
}

/// Why there is no stack, as a frame. A fault taken in user mode has no
/// kernel stack of its own (the perf event carries user registers).
fn missing_stack(id: i64, kernel: bool, lost: &mut u64, count: u64) -> Vec<String> {
    if id == -i64::from(libc::ENOSPC) {
        *lost += count;
        return vec!["[stack lost: the stack store was full]".into()];
    }
    if kernel {
        vec!["[fault in user mode]".into()]
    } else {
        vec!["[no user stack]".into()]
    }
}

fn symbolize_rows(
    symbolizer: &mut StackSymbolizer,
    stacks: &dyn MapCore,
    counts: &[(Key, Value)],
    lost: &mut u64,
) -> Result<Vec<Row>> {
    type Group = (u32, String, i64, i64);
    let mut grouped: HashMap<Group, [u64; 2]> = HashMap::new();
    for (key, value) in counts {
        let comm = crate::output::escape_c_chars(&value.comm);
        let group = (key.tgid, comm, key.user_stack, key.kernel_stack);
        grouped.entry(group).or_default()[(key.kind as usize).min(1)] += value.count;
    }
    let mut rows = Vec::with_capacity(grouped.len());
    for ((pid, comm, user_id, kernel_id), counts) in grouped {
        let total = counts[0] + counts[1];
        let user = match stack_ips(stacks, user_id).filter(|_| user_id >= 0) {
            Some(ips) => symbolizer.user_frames(pid, &ips),
            None => missing_stack(user_id, false, lost, total),
        };
        let kernel = (kernel_id != NO_STACK).then(|| {
            match stack_ips(stacks, kernel_id).filter(|_| kernel_id >= 0) {
                Some(ips) => symbolizer.kernel_frames(&ips),
                None => missing_stack(kernel_id, true, lost, total),
            }
        });
        rows.push(Row {
            pid,
            comm,
            user,
            kernel,
            counts,
        });
    }
    rows.sort_by(|a, b| {
        b.total()
            .cmp(&a.total())
            .then_with(|| (a.pid, &a.user).cmp(&(b.pid, &b.user)))
    });
    Ok(rows)
}

fn print_report(out: &mut Output, args: &Args, mut rows: Vec<Row>) -> Result<()> {
    rows.truncate(args.report.top.unwrap_or(usize::MAX));
    if out.json {
        let time_ns = monotonic_ns();
        for row in &rows {
            for (kind, &count) in row.counts.iter().enumerate() {
                if count > 0 {
                    out.json_line(&json!({
                        "time_ns": time_ns,
                        "pid": row.pid,
                        "comm": row.comm,
                        "file": null,
                        "kind": if kind == 1 { "major" } else { "minor" },
                        "count": count,
                        "stack": row.user,
                        "kernel_stack": row.kernel,
                    }))?;
                }
            }
        }
        return Ok(());
    }
    if args.folded {
        for row in &rows {
            out.line(&format!(
                "{} {}",
                row.folded_frames().join(";"),
                row.total()
            ))?;
        }
        return Ok(());
    }
    if args.report.interval.is_some() || args.common.timestamp {
        out.line(&format!("\n{}", wall_clock_hms()))?;
    }
    // BCC stackcount's layout: kernel frames, user frames, the process, the count
    for row in &rows {
        for frame in row.kernel.iter().flatten() {
            out.line(&format!("    {frame}"))?;
        }
        if row.kernel.is_some() {
            out.line("    --")?;
        }
        for frame in &row.user {
            out.line(&format!("    {frame}"))?;
        }
        out.line(&format!("    -                {} ({})", row.comm, row.pid))?;
        out.line(&format!(
            "        {} ({} minor, {} major)\n",
            row.total(),
            row.counts[0],
            row.counts[1]
        ))?;
    }
    Ok(())
}
