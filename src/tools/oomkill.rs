//! oomkill: one line per OOM kill, as the BCC and bpftrace originals, plus
//! the victim's memory cgroup, whether a cgroup limit or the whole machine ran
//! out, the victim's RSS by kind and its oom_score_adj.

use std::mem::MaybeUninit;

use anyhow::{Context, Result};
use clap::Parser;
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::MapCore;
use serde_json::json;

use crate::cli::CommonArgs;
use crate::events::{self, EventPrinter};
use crate::output::{escape_bytes, escape_c_chars, wall_clock_hms, Output};
use crate::symbolize::{stored_stack, StackSymbolizer};
use crate::{kernel, set_filter_rodata, skel};

crate::bpf_skeleton!("oomkill");
use bpf::types::{memtrace_stack, oomkill_event as Event};
use bpf::OomkillSkelBuilder;

// SAFETY: C structs of integers and byte arrays: every bit pattern is valid.
unsafe impl plain::Plain for Event {}
// SAFETY: as above.
unsafe impl plain::Plain for memtrace_stack {}

pub const ABOUT: &str =
    "Show each OOM kill: who triggered it, who died, how big, which memory cgroup";

const PAGE_SIZE: u64 = 4096;

#[derive(Parser, Debug)]
#[command(about = ABOUT, after_help = "\
-p and -n select the task that triggered the kill (whose allocation failed).

Examples:
  oomkill                   # until Ctrl-C
  oomkill --json -d 3600    # an hour of OOM kills as JSON lines")]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
}

pub fn run(args: Args) -> Result<i32> {
    let (target, filter) = skel::prepare(&args.common)?;
    let mut storage = MaybeUninit::uninit();
    let mut open = OomkillSkelBuilder::default()
        .open(&mut storage)
        .context("opening the BPF object")?;
    set_filter_rodata!(open, &filter);
    skel::choose_common_programs(open.open_object_mut(), &filter)?;
    kernel::check_attach_points(open.open_object())?;
    let mut skel = open.load().context(skel::LOAD_FAILED)?;
    skel::fill_traced_tgids(skel.object(), &target)?;
    skel.attach().context(skel::ATTACH_FAILED)?;

    let printer = KillPrinter {
        out: Output::new(args.common.json),
        symbolizer: StackSymbolizer::new(false),
        stacks: &skel.maps.stack_store,
    };
    let (mut session, stop) = events::print_events(
        &skel.maps.events,
        printer,
        target,
        args.common.duration,
        "OOM kills",
    )?;
    skel::report_drops("oomkill", skel.object(), &[])?;
    Ok(session.exit_code(stop))
}

/// Prints each kill as it comes; the originals have no header.
struct KillPrinter<'a> {
    out: Output,
    symbolizer: StackSymbolizer,
    stacks: &'a dyn MapCore,
}

impl EventPrinter for KillPrinter<'_> {
    fn start(&mut self, _start_ns: u64) -> Result<()> {
        Ok(())
    }

    fn event(&mut self, data: &[u8]) -> i32 {
        let mut event = Event::default();
        if plain::copy_from_bytes(&mut event, data).is_err() {
            return 0;
        }
        let kill = Kill::from_event(&event, &self.symbolizer, self.stacks);
        let written = kill.print(&mut self.out);
        self.out.callback_status(written)
    }

    fn finish_batch(&mut self) -> Result<()> {
        self.out.finish_batch()
    }
}

/// An OOM kill as reported.
struct Kill {
    time_ns: u64,
    trigger_pid: u32,
    trigger_comm: String,
    victim_pid: u32,
    victim_comm: String,
    cgroup: String,
    memcg: bool,
    pages: u64,
    event: Event,
    loadavg: String,
}

impl Kill {
    fn from_event(e: &Event, symbolizer: &StackSymbolizer, stacks: &dyn MapCore) -> Kill {
        let cgroup = cgroup_path(e);
        // the OOM killer's own call chain says why it ran
        let memcg = stored_stack::<memtrace_stack>(stacks, e.stack, |s| (s.nr, &s.ips))
            .is_some_and(|ips| {
                symbolizer.kernel_frames(&ips).iter().any(|f| {
                    f.starts_with("mem_cgroup_out_of_memory+") || f.starts_with("try_charge_memcg+")
                })
            });
        let pages = if memcg {
            cgroup_limit(&cgroup).map(|bytes| bytes / PAGE_SIZE)
        } else {
            machine_pages()
        };
        Kill {
            time_ns: e.time_ns,
            trigger_pid: e.trigger_pid,
            trigger_comm: escape_c_chars(&e.trigger_comm),
            victim_pid: e.victim_pid,
            victim_comm: escape_c_chars(&e.victim_comm),
            cgroup,
            memcg,
            pages: pages.unwrap_or(0),
            event: *e,
            loadavg: std::fs::read_to_string("/proc/loadavg")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
        }
    }

    fn print(&self, out: &mut Output) -> Result<()> {
        let e = &self.event;
        let constraint = if self.memcg { "memcg" } else { "global" };
        if out.json {
            return out.json_line(&json!({
                "time_ns": self.time_ns,
                "trigger_pid": self.trigger_pid,
                "trigger_comm": self.trigger_comm,
                "victim_pid": self.victim_pid,
                "victim_comm": self.victim_comm,
                "pages": self.pages,
                "total_vm": e.total_vm * PAGE_SIZE,
                "anon_rss": e.anon_rss * PAGE_SIZE,
                "file_rss": e.file_rss * PAGE_SIZE,
                "shmem_rss": e.shmem_rss * PAGE_SIZE,
                "pgtables": e.pgtables_bytes,
                "oom_score_adj": e.oom_score_adj,
                "uid": e.uid,
                "cgroup": self.cgroup,
                "constraint": constraint,
                "loadavg": self.loadavg,
            }));
        }
        out.line(&format!(
            "{} Triggered by PID {} (\"{}\"), OOM kill of PID {} (\"{}\"), {} pages, loadavg: {}",
            wall_clock_hms(),
            self.trigger_pid,
            self.trigger_comm,
            self.victim_pid,
            self.victim_comm,
            self.pages,
            self.loadavg
        ))?;
        out.line(&format!(
            "    {constraint} OOM in memory cgroup {}; victim rss: anon {} KiB, file {} KiB, shmem {} KiB; oom_score_adj {}",
            self.cgroup,
            e.anon_rss * 4,
            e.file_rss * 4,
            e.shmem_rss * 4,
            e.oom_score_adj
        ))
    }
}

/// The victim's memory cgroup as a path from the hierarchy's root.
fn cgroup_path(e: &Event) -> String {
    let bytes: Vec<u8> = e.cgroup[..(e.cgroup_len as usize).min(e.cgroup.len())]
        .iter()
        .map(|&c| c as u8)
        .collect();
    let mut components: Vec<&[u8]> = bytes
        .split(|&b| b == 0)
        .take(e.cgroup_depth as usize)
        .collect();
    components.reverse();
    let mut path = String::new();
    for component in components {
        path.push('/');
        path.push_str(&escape_bytes(component));
    }
    if path.is_empty() {
        path.push('/');
    }
    path
}

/// The memory limit of a cgroup (v1 memory.limit_in_bytes or v2 memory.max).
fn cgroup_limit(path: &str) -> Option<u64> {
    [
        format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"),
        format!("/sys/fs/cgroup{path}/memory.max"),
        format!("/sys/fs/cgroup/unified{path}/memory.max"),
    ]
    .iter()
    .find_map(|file| std::fs::read_to_string(file).ok()?.trim().parse().ok())
}

/// RAM and swap in pages: the OOM killer's domain when the whole machine ran out.
fn machine_pages() -> Option<u64> {
    use procfs::Current;
    let meminfo = procfs::Meminfo::current().ok()?;
    Some((meminfo.mem_total + meminfo.swap_total) / PAGE_SIZE)
}
