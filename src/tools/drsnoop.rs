//! drsnoop: each reclaim stall a task suffered, direct reclaim and memory
//! cgroup reclaim, with its latency and the pages it reclaimed.

use std::mem::MaybeUninit;

use anyhow::Result;
use clap::{Parser, ValueEnum};
use libbpf_rs::skel::Skel;
use libbpf_rs::OpenObject;
use serde::Serialize;

use crate::cli::{CommonArgs, SHOW_CGROUP_HELP};
use crate::engine::cgroup::{self, CgroupField, CgroupNames};
use crate::engine::drops;
use crate::engine::loader::{self, Trace};
use crate::engine::records;
use crate::engine::stream::{self, EventPrinter};
use crate::present::escape::escape_c_chars;
use crate::present::format::elapsed_cell;
use crate::present::output::Output;

crate::bpf_skeleton!("drsnoop", OpenDrsnoopSkel, records: [drsnoop_event]);
pub use bpf::types::{drsnoop_event as Event, drsnoop_kind as StallKind};
pub use bpf::DrsnoopSkel;
use bpf::DrsnoopSkelBuilder;

pub const ABOUT: &str =
    "Trace reclaim stalls: direct and memory cgroup reclaim latency per task, pages reclaimed";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// Both kinds
    All,
    /// The page allocator's direct reclaim (the machine is short of memory)
    Direct,
    /// A memory cgroup reclaiming from itself at its limit
    Memcg,
}

#[derive(Parser, Debug)]
#[command(about = ABOUT, after_help = "\
KIND is `direct` (the page allocator's slow path: the machine is short of free
memory) or `memcg` (a memory cgroup charging past its limit reclaims from itself).

Examples:
  drsnoop                   # every reclaim stall, until Ctrl-C
  drsnoop -T -e             # with times and free memory
  drsnoop -p 181 -U         # PID 181 only, with UIDs
  drsnoop --kind memcg -- ./app   # run ./app, its memory cgroup stalls only")]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Trace only this thread
    #[arg(short = 't', long = "tid", value_name = "TID")]
    pub tid: Option<u32>,

    /// Trace only this user
    #[arg(short = 'u', long = "user-id", value_name = "UID")]
    pub uid: Option<u32>,

    /// Show the UID column
    #[arg(short = 'U', long = "print-uid")]
    pub print_uid: bool,

    /// Show free memory (MemFree, read when the stall is printed)
    #[arg(short = 'e', long)]
    pub extended: bool,

    /// Which reclaim to trace
    #[arg(long, value_enum, default_value_t = Kind::All)]
    pub kind: Kind,

    #[arg(long, help = SHOW_CGROUP_HELP)]
    pub show_cgroup: bool,
}

pub fn run(args: Args) -> Result<i32> {
    let mut trace = Trace::prepare(&args.common)?;
    trace.filter.tid = args.tid;
    trace.filter.uid = args.uid;
    let cgroups = cgroup::label_records(args.show_cgroup, &mut trace.filter)?;
    let mut storage = MaybeUninit::uninit();
    let skel = load(&mut storage, &mut trace, args.kind)?;
    let printer = Printer {
        columns: Columns {
            timestamp: args.common.timestamp,
            print_uid: args.print_uid,
            extended: args.extended,
            cgroup: args.show_cgroup,
        },
        batch_free_kib: None,
        cgroups,
    };
    let what = match args.kind {
        Kind::All => "direct and memory cgroup reclaim",
        Kind::Direct => "direct reclaim",
        Kind::Memcg => "memory cgroup reclaim",
    };
    let (mut session, stop) = stream::print_events(&skel.maps.events, printer, trace, what)?;
    drops::report(args.common.tool, skel.object(), &[])?;
    Ok(session.exit_code(stop))
}

/// Loads and attaches drsnoop's programs for `kind`: the stalls go to `maps.events`.
pub fn load<'obj>(
    storage: &'obj mut MaybeUninit<OpenObject>,
    trace: &mut Trace,
    kind: Kind,
) -> Result<DrsnoopSkel<'obj>> {
    loader::load(
        DrsnoopSkelBuilder::default(),
        storage,
        trace,
        |_, programs| {
            programs
                .load_if(
                    kind != Kind::Memcg,
                    &["drsnoop_direct_begin", "drsnoop_direct_end"],
                )
                .load_if(
                    kind != Kind::Direct,
                    &["drsnoop_memcg_begin", "drsnoop_memcg_end"],
                );
            Ok(())
        },
    )
}

/// One stall as printed; the JSON fields are documented in the README.
#[derive(Serialize)]
struct StallRow {
    /// When it ended (CLOCK_MONOTONIC).
    time_ns: u64,
    comm: String,
    pid: u32,
    tid: u32,
    uid: u32,
    latency_ns: u64,
    /// Pages reclaimed.
    pages: u64,
    kind: &'static str,
    /// Of the allocation that needed the memory.
    order: i32,
    gfp_flags: u32,
    /// -e: MemFree when printed.
    free_bytes: Option<u64>,
    /// --show-cgroup: cgroup and container.
    #[serde(flatten)]
    cgroup: Option<CgroupField>,
}

struct Printer {
    columns: Columns,
    /// -e: MemFree, read once for the stalls of one poll, not once per stall.
    batch_free_kib: Option<Option<u64>>,
    /// --show-cgroup: names the stalled tasks' cgroups.
    cgroups: Option<CgroupNames>,
}

/// What the table shows.
struct Columns {
    timestamp: bool,
    print_uid: bool,
    extended: bool,
    cgroup: bool,
}

impl EventPrinter for Printer {
    fn header(&self) -> Option<String> {
        Some(self.columns.header())
    }

    fn print(&mut self, out: &mut Output, record: &[u8], start_ns: u64) -> Result<()> {
        let e: Event = records::decode(record);
        let free_kib = if self.columns.extended {
            *self.batch_free_kib.get_or_insert_with(mem_free_kib)
        } else {
            None
        };
        let row = StallRow {
            time_ns: e.time_ns,
            comm: escape_c_chars(&e.comm),
            pid: e.pid,
            tid: e.tid,
            uid: e.uid,
            latency_ns: e.latency_ns,
            pages: e.pages,
            kind: if e.kind == StallKind::DRSNOOP_DIRECT {
                "direct"
            } else {
                "memcg"
            },
            order: e.order,
            gfp_flags: e.gfp_flags,
            free_bytes: free_kib.map(|kib| kib * 1024),
            cgroup: self.cgroups.as_mut().map(|names| names.field(e.cgroup)),
        };
        out.record(&row, |row| self.columns.line(row, start_ns))
    }

    fn batch_done(&mut self) {
        self.batch_free_kib = None;
    }
}

impl Columns {
    fn header(&self) -> String {
        let mut line = String::new();
        if self.timestamp {
            line.push_str(&format!("{:<12} ", "TIME(s)"));
        }
        if self.print_uid {
            line.push_str(&format!("{:<6} ", "UID"));
        }
        line.push_str(&format!(
            "{:<16} {:<7} {:<7} {:>9} {:>7} {:<6}",
            "COMM", "PID", "TID", "LAT(ms)", "PAGES", "KIND"
        ));
        if self.extended {
            line.push_str(&format!(" {:>10}", "FREE(KB)"));
        }
        if self.cgroup {
            line.push_str(&format!(" {:<12} CGROUP", "CONTAINER"));
        }
        line.trim_end().to_string()
    }

    fn line(&self, row: &StallRow, start_ns: u64) -> String {
        let mut line = String::with_capacity(96);
        if self.timestamp {
            line.push_str(&elapsed_cell(row.time_ns, start_ns));
        }
        if self.print_uid {
            line.push_str(&format!("{:<6} ", row.uid));
        }
        line.push_str(&format!(
            "{:<16} {:<7} {:<7} {:>9.3} {:>7} {:<6}",
            row.comm,
            row.pid,
            row.tid,
            row.latency_ns as f64 / 1e6,
            row.pages,
            row.kind
        ));
        if self.extended {
            match row.free_bytes {
                Some(bytes) => line.push_str(&format!(" {:>10}", bytes / 1024)),
                None => line.push_str(&format!(" {:>10}", "?")),
            }
        }
        if let Some(cgroup) = &row.cgroup {
            line.push_str(&format!(
                " {:<12} {}",
                cgroup.container_cell(),
                cgroup.cgroup
            ));
        }
        line.trim_end().to_string()
    }
}

/// MemFree in KiB. BCC's drsnoop reads the kernel's free page count in BPF;
/// vm_zone_stat is not in every kernel's BTF, so it is read when printing
/// (once per batch of stalls).
fn mem_free_kib() -> Option<u64> {
    use procfs::Current;
    procfs::Meminfo::current().ok().map(|m| m.mem_free / 1024)
}
