//! oomkill: one line per OOM kill, as the BCC and bpftrace originals, plus
//! the victim's memory cgroup, whether a cgroup limit or the whole machine ran
//! out, the victim's RSS by kind and its oom_score_adj.

use std::mem::MaybeUninit;

use anyhow::{bail, Result};
use clap::Parser;
use libbpf_rs::skel::Skel;
use libbpf_rs::{MapCore, OpenObject};
use serde::Serialize;

use crate::analysis::symbolize::StackSymbolizer;
use crate::cli::CommonArgs;
use crate::engine::cgroup;
use crate::engine::drops;
use crate::engine::features;
use crate::engine::kernel;
use crate::engine::kernel::page_size;
use crate::engine::loader::{self, Trace};
use crate::engine::maps::stored_stack;
use crate::engine::records;
use crate::engine::stream::{self, EventPrinter};
use crate::present::escape::{escape_bytes, escape_c_chars};
use crate::present::format::wall_clock_hms;
use crate::present::output::Output;

crate::bpf_skeleton!("oomkill", OpenOomkillSkel, records: [oomkill_event]);
use bpf::types::oomkill_event as Event;
pub use bpf::OomkillSkel;
use bpf::OomkillSkelBuilder;

pub const ABOUT: &str =
    "Show each OOM kill: who triggered it, who died, how big, which memory cgroup";

#[derive(Parser, Debug)]
#[command(about = ABOUT, after_help = "\
-p and -n select the task that triggered the kill (whose allocation failed);
--cgroup selects the victims, by their memory cgroup (it or one below it).

Examples:
  oomkill                   # until Ctrl-C
  oomkill --json -d 3600    # an hour of OOM kills as JSON lines")]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Where oomkill sees each kill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// The BTF tracepoint mark_victim, where it passes the victim and its
    /// uid.
    MarkVictim,
    /// fentry on oom_kill_process, where mark_victim passes the victim's pid
    /// alone (5.10) and the kernel has BPF trampolines.
    OomKillProcess,
}

impl Mechanism {
    /// Why oomkill cannot run where choose finds nothing.
    pub const NONE: &'static str = "this kernel's mark_victim tracepoint doesn't pass the victim, \
         and fentry can't attach to oom_kill_process";

    /// The first this kernel has, or None.
    pub fn choose() -> Option<Mechanism> {
        if kernel::btf_tracepoint_args("mark_victim").is_some_and(|n| n >= 2) {
            Some(Mechanism::MarkVictim)
        } else if features::fentry_attaches("oom_kill_process") {
            Some(Mechanism::OomKillProcess)
        } else {
            None
        }
    }

    /// What `memtrace doctor` says it uses.
    pub fn described(self) -> &'static str {
        match self {
            Mechanism::MarkVictim => "BTF tracepoint mark_victim",
            Mechanism::OomKillProcess => "fentry oom_kill_process",
        }
    }

    fn program(self) -> &'static str {
        match self {
            Mechanism::MarkVictim => "oomkill_mark_victim",
            Mechanism::OomKillProcess => "oomkill_oom_kill_process",
        }
    }
}

pub fn run(args: Args) -> Result<i32> {
    // --cgroup selects victims by their memory cgroup, here: in the kernel it
    // would select the task that triggered the kill, anyone's in a global OOM
    let victims_in = args
        .common
        .cgroup
        .as_deref()
        .map(|dir| cgroup::memory_cgroup_path(dir, "--cgroup"))
        .transpose()?;
    let common = CommonArgs {
        cgroup: None,
        ..args.common.clone()
    };
    let mut trace = Trace::prepare(&common)?;
    let mut storage = MaybeUninit::uninit();
    let skel = load(&mut storage, &mut trace)?;
    let printer = KillPrinter {
        kills: Kills::new(&skel),
        victims_in,
    };
    let (mut session, stop) = stream::print_events(&skel.maps.events, printer, trace, "OOM kills")?;
    drops::report(args.common.tool, skel.object(), &[])?;
    Ok(session.exit_code(stop))
}

/// Loads and attaches oomkill's programs: the events go to `maps.events`.
pub fn load<'obj>(
    storage: &'obj mut MaybeUninit<OpenObject>,
    trace: &mut Trace,
) -> Result<OomkillSkel<'obj>> {
    let Some(mechanism) = Mechanism::choose() else {
        bail!("{}", Mechanism::NONE);
    };
    let verbose = trace.verbose;
    loader::load(
        OomkillSkelBuilder::default(),
        storage,
        trace,
        |_, programs| {
            for other in [Mechanism::MarkVictim, Mechanism::OomKillProcess] {
                programs.load_if(other == mechanism, &[other.program()]);
            }
            if verbose {
                crate::say!("oomkill: {}", mechanism.described());
            }
            Ok(())
        },
    )
}

/// Turns oomkill's records into kills (their stacks read from the skeleton's store).
pub struct Kills<'a> {
    symbolizer: StackSymbolizer,
    stacks: &'a dyn MapCore,
}

impl<'a> Kills<'a> {
    pub fn new(skel: &'a OomkillSkel<'_>) -> Kills<'a> {
        Kills {
            symbolizer: StackSymbolizer::new(false),
            stacks: &skel.maps.stack_store,
        }
    }

    pub fn decode(&self, record: &[u8]) -> KillRow {
        KillRow::new(&records::decode(record), &self.symbolizer, self.stacks)
    }
}

/// Prints each kill as it comes; the originals have no header.
struct KillPrinter<'a> {
    kills: Kills<'a>,
    /// --cgroup: only victims in this memory cgroup or below it.
    victims_in: Option<String>,
}

impl EventPrinter for KillPrinter<'_> {
    fn print(&mut self, out: &mut Output, record: &[u8], _start_ns: u64) -> Result<()> {
        let kill = self.kills.decode(record);
        if let Some(ancestor) = &self.victims_in {
            if !cgroup::is_within(&kill.cgroup, ancestor) {
                return Ok(());
            }
        }
        out.record(&kill, KillRow::text)
    }
}

/// An OOM kill as reported; the JSON fields are documented in the README
/// (sizes in bytes).
#[derive(Serialize)]
pub struct KillRow {
    time_ns: u64,
    trigger_pid: u32,
    trigger_comm: String,
    victim_pid: u32,
    pub victim_comm: String,
    /// The OOM killer's domain: the cgroup's limit or the machine's RAM and swap.
    pages: u64,
    total_vm: u64,
    pub anon_rss: u64,
    pub file_rss: u64,
    pub shmem_rss: u64,
    pgtables: u64,
    oom_score_adj: i32,
    uid: u32,
    pub cgroup: String,
    /// `memcg` or `global`.
    pub constraint: &'static str,
    loadavg: String,
}

impl KillRow {
    fn new(e: &Event, symbolizer: &StackSymbolizer, stacks: &dyn MapCore) -> KillRow {
        let cgroup = cgroup_path(e);
        // the OOM killer's own call chain says why it ran
        let memcg = stored_stack(stacks, e.stack).is_some_and(|ips| {
            symbolizer.kernel_frames(&ips).iter().any(|f| {
                f.starts_with("mem_cgroup_out_of_memory+") || f.starts_with("try_charge_memcg+")
            })
        });
        let page = page_size();
        let pages = if memcg {
            cgroup_limit(&cgroup).map(|bytes| bytes / page)
        } else {
            machine_pages(page)
        };
        KillRow {
            time_ns: e.time_ns,
            trigger_pid: e.trigger_pid,
            trigger_comm: escape_c_chars(&e.trigger_comm),
            victim_pid: e.victim_pid,
            victim_comm: escape_c_chars(&e.victim_comm),
            pages: pages.unwrap_or(0),
            total_vm: e.total_vm * page,
            anon_rss: e.anon_rss * page,
            file_rss: e.file_rss * page,
            shmem_rss: e.shmem_rss * page,
            pgtables: e.pgtables_bytes,
            oom_score_adj: e.oom_score_adj,
            uid: e.uid,
            cgroup,
            constraint: if memcg { "memcg" } else { "global" },
            loadavg: std::fs::read_to_string("/proc/loadavg")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
        }
    }

    /// The originals' line, then the cgroup and the victim's memory.
    fn text(&self) -> String {
        format!(
            "{} Triggered by PID {} (\"{}\"), OOM kill of PID {} (\"{}\"), {} pages, loadavg: {}\n    \
             {} OOM in memory cgroup {}; victim rss: anon {} KiB, file {} KiB, shmem {} KiB; oom_score_adj {}",
            wall_clock_hms(),
            self.trigger_pid,
            self.trigger_comm,
            self.victim_pid,
            self.victim_comm,
            self.pages,
            self.loadavg,
            self.constraint,
            self.cgroup,
            self.anon_rss / 1024,
            self.file_rss / 1024,
            self.shmem_rss / 1024,
            self.oom_score_adj
        )
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
fn machine_pages(page_size: u64) -> Option<u64> {
    use procfs::Current;
    let meminfo = procfs::Meminfo::current().ok()?;
    Some((meminfo.mem_total + meminfo.swap_total) / page_size)
}
