//! drsnoop: each reclaim stall a task suffered, direct reclaim and memory
//! cgroup reclaim, with its latency and the pages it reclaimed.

use std::mem::MaybeUninit;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use serde_json::json;

use crate::cli::CommonArgs;
use crate::events::{self, EventPrinter};
use crate::output::{escape_c_chars, Output};
use crate::{kernel, set_filter_rodata, skel};

crate::bpf_skeleton!("drsnoop");
use bpf::types::drsnoop_event as Event;
use bpf::DrsnoopSkelBuilder;

// SAFETY: a C struct of integers and byte arrays: every bit pattern is valid.
unsafe impl plain::Plain for Event {}

pub const ABOUT: &str =
    "Trace reclaim stalls: direct and memory cgroup reclaim latency per task, pages reclaimed";

/// enum drsnoop_kind in drsnoop.h.
const KIND_DIRECT: u32 = 0;

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
}

pub fn run(args: Args) -> Result<i32> {
    let (target, mut filter) = skel::prepare(&args.common)?;
    filter.tid = args.tid;
    filter.uid = args.uid;

    let mut storage = MaybeUninit::uninit();
    let mut open = DrsnoopSkelBuilder::default()
        .open(&mut storage)
        .context("opening the BPF object")?;
    set_filter_rodata!(open, &filter);
    let object = open.open_object_mut();
    skel::choose_common_programs(object, &filter)?;
    let direct = args.kind != Kind::Memcg;
    let memcg = args.kind != Kind::Direct;
    skel::set_autoload(object, "drsnoop_direct_begin", direct)?;
    skel::set_autoload(object, "drsnoop_direct_end", direct)?;
    skel::set_autoload(object, "drsnoop_memcg_begin", memcg)?;
    skel::set_autoload(object, "drsnoop_memcg_end", memcg)?;
    kernel::check_attach_points(open.open_object())?;
    let mut skel = open.load().context(skel::LOAD_FAILED)?;
    skel::fill_traced_tgids(skel.object(), &target)?;
    skel.attach().context(skel::ATTACH_FAILED)?;

    let printer = Printer {
        out: Output::new(args.common.json),
        timestamp: args.common.timestamp,
        print_uid: args.print_uid,
        extended: args.extended,
        start_ns: 0,
        batch_free_kib: None,
    };
    let what = match args.kind {
        Kind::All => "direct and memory cgroup reclaim",
        Kind::Direct => "direct reclaim",
        Kind::Memcg => "memory cgroup reclaim",
    };
    let (mut session, stop) = events::print_events(
        &skel.maps.events,
        printer,
        target,
        args.common.duration,
        what,
    )?;
    skel::report_drops("drsnoop", skel.object(), &[])?;
    Ok(session.exit_code(stop))
}

struct Printer {
    out: Output,
    timestamp: bool,
    print_uid: bool,
    extended: bool,
    start_ns: u64,
    /// -e: MemFree, read once for the stalls of one poll, not once per stall.
    batch_free_kib: Option<Option<u64>>,
}

impl EventPrinter for Printer {
    fn start(&mut self, start_ns: u64) -> Result<()> {
        self.start_ns = start_ns;
        if self.out.json {
            return Ok(());
        }
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
        self.out.line(line.trim_end())?;
        self.out.flush()
    }

    fn event(&mut self, data: &[u8]) -> i32 {
        let mut e = Event::default();
        if plain::copy_from_bytes(&mut e, data).is_err() {
            return 0;
        }
        let result = self.print(&e);
        self.out.callback_status(result)
    }

    fn finish_batch(&mut self) -> Result<()> {
        self.batch_free_kib = None;
        self.out.finish_batch()
    }
}

impl Printer {
    fn print(&mut self, e: &Event) -> Result<()> {
        let kind = if e.kind == KIND_DIRECT {
            "direct"
        } else {
            "memcg"
        };
        let comm = escape_c_chars(&e.comm);
        let free_kib = if self.extended {
            *self.batch_free_kib.get_or_insert_with(mem_free_kib)
        } else {
            None
        };
        if self.out.json {
            return self.out.json_line(&json!({
                "time_ns": e.time_ns,
                "comm": comm,
                "pid": e.pid,
                "tid": e.tid,
                "uid": e.uid,
                "latency_ns": e.latency_ns,
                "pages": e.pages,
                "kind": kind,
                "order": e.order,
                "gfp_flags": e.gfp_flags,
                "free_bytes": free_kib.map(|kib| kib * 1024),
            }));
        }
        let mut line = String::with_capacity(96);
        if self.timestamp {
            let secs = e.time_ns.saturating_sub(self.start_ns) as f64 / 1e9;
            line.push_str(&format!("{secs:<12.6} "));
        }
        if self.print_uid {
            line.push_str(&format!("{:<6} ", e.uid));
        }
        line.push_str(&format!(
            "{:<16} {:<7} {:<7} {:>9.3} {:>7} {:<6}",
            comm,
            e.pid,
            e.tid,
            e.latency_ns as f64 / 1e6,
            e.pages,
            kind
        ));
        if self.extended {
            match free_kib {
                Some(kib) => line.push_str(&format!(" {kib:>10}")),
                None => line.push_str(&format!(" {:>10}", "?")),
            }
        }
        self.out.line(line.trim_end())
    }
}

/// MemFree in KiB. BCC's drsnoop reads the kernel's free page count in BPF;
/// vm_zone_stat is not in this kernel's BTF, so it is read when printing
/// (once per batch of stalls).
fn mem_free_kib() -> Option<u64> {
    use procfs::Current;
    procfs::Meminfo::current().ok().map(|m| m.mem_free / 1024)
}
