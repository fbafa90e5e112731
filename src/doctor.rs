//! `memtrace doctor`: whether each tool runs on this kernel, by which
//! mechanism, and what it does without (one line a tool; `--json` for
//! scripts). It asks the questions the tools ask as they load
//! (engine::features, kernel::can_attach, Mechanism::choose, the unwinder's
//! helper probe), so the two never disagree: tests/doctor.rs runs every tool
//! it says works, on every kernel of the matrix.

use std::io::Write;

use anyhow::Result;
use clap::{Arg, ArgAction, ArgMatches, Command};
use serde::Serialize;

use crate::engine::faultvma::{self, VmaSource};
use crate::engine::features::{self, Feature};
use crate::engine::kernel;
use crate::engine::syscalls;
use crate::engine::unwind::{self, Walker};
use crate::tools::memleak::allocator::{self, Mechanism};
use crate::tools::TOOLS;
use crate::tools::{mmapfiles, oomkill};

pub const NAME: &str = "doctor";

pub fn command() -> Command {
    Command::new(NAME)
        .about("Say which tools run on this kernel, how, and what they lack")
        .arg(
            Arg::new("json")
                .long("json")
                .action(ArgAction::SetTrue)
                .help("One JSON object: the kernel, its features, a verdict per tool"),
        )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum State {
    /// Runs with the cheapest mechanism memtrace has for it.
    Works,
    /// Runs, with a limitation named (a costlier mechanism, less seen).
    Limited,
    CannotRun,
}

impl State {
    fn word(self) -> &'static str {
        match self {
            State::Works => "works",
            State::Limited => "limited",
            State::CannotRun => "cannot run",
        }
    }
}

#[derive(Debug, Serialize)]
struct Verdict {
    tool: &'static str,
    state: State,
    /// What it attaches to here.
    mechanism: String,
    /// What it does without, each with the kernel change that would lift it.
    limits: Vec<String>,
    /// Why it cannot run.
    reason: Option<String>,
}

#[derive(Serialize)]
struct FeatureRow {
    name: &'static str,
    since: &'static str,
    present: bool,
}

#[derive(Serialize)]
struct Report {
    kernel: String,
    arch: &'static str,
    /// Whether this process may load tracing programs.
    privileged: bool,
    features: Vec<FeatureRow>,
    tools: Vec<Verdict>,
}

/// A verdict under way: the mechanism's parts, the limits, or the reason it
/// cannot run.
struct Findings {
    parts: Vec<String>,
    limits: Vec<String>,
    reason: Option<String>,
}

impl Findings {
    fn new() -> Findings {
        Findings {
            parts: Vec::new(),
            limits: Vec::new(),
            reason: None,
        }
    }

    fn uses(&mut self, part: impl Into<String>) -> &mut Self {
        self.parts.push(part.into());
        self
    }

    fn limit(&mut self, limit: impl Into<String>) -> &mut Self {
        self.limits.push(limit.into());
        self
    }

    /// The tool cannot run without `what` (the first reason found is kept).
    fn needs(&mut self, present: bool, what: impl FnOnce() -> String) -> &mut Self {
        if !present && self.reason.is_none() {
            self.reason = Some(what());
        }
        self
    }

    /// Needs every tracepoint of these program sections.
    fn attaches(&mut self, sections: &[&str]) -> &mut Self {
        for section in sections {
            let present = kernel::can_attach(section).unwrap_or(false);
            let name = section.rsplit('/').next().unwrap_or(section);
            self.needs(present, || format!("no tracepoint {name} on this kernel"));
        }
        self
    }

    fn verdict(&self, tool: &'static str) -> Verdict {
        let state = match (&self.reason, self.limits.is_empty()) {
            (Some(_), _) => State::CannotRun,
            (None, true) => State::Works,
            (None, false) => State::Limited,
        };
        Verdict {
            tool,
            state,
            mechanism: self.parts.join("; "),
            limits: self.limits.clone(),
            reason: self.reason.clone(),
        }
    }
}

/// The system call tracepoints (engine/syscalls.rs) of a tool tracing `calls`.
fn syscalls(found: &mut Findings, calls: &[&str]) {
    let sections: Vec<String> = calls
        .iter()
        .flat_map(|c| {
            [
                format!("tp/syscalls/sys_enter_{c}"),
                format!("tp/syscalls/sys_exit_{c}"),
            ]
        })
        .collect();
    let sections: Vec<&str> = sections.iter().map(String::as_str).collect();
    found.attaches(&sections);
    match syscalls::raw_usable().unwrap_or(false) {
        true => found.uses("raw sys_enter/sys_exit tracepoints, then syscall tracepoints"),
        false => found.uses("syscall tracepoints"),
    };
}

/// The user stack walk of a tool whose programs are of kind `walker`.
fn stacks(found: &mut Findings, walker: Walker) {
    match unwind::cfi_missing(walker) {
        None => found.uses(".eh_frame stack walk in BPF"),
        Some(missing) => found.uses("frame-pointer stack walk").limit(format!(
            "user stacks through code without frame pointers are short: .eh_frame needs {missing}"
        )),
    };
}

/// The mappings of processes that end before a report (exitmaps.bpf.h).
fn exit_mappings(found: &mut Findings) {
    let limit = "a process gone before the report is symbolized by its last mappings read";
    if !Feature::TaskVmaIterator.present() {
        found.limit(format!(
            "{limit} (exit-time mappings need {})",
            Feature::TaskVmaIterator.described()
        ));
    } else if !kernel::release_at_least(6, 18) {
        // measured: 6.12 runs exit_mm() before sched_process_exit, 6.18 not
        found.limit(format!(
            "{limit} (this kernel drops a process's mappings before its exit \
             tracepoint: 6.18 keeps them)"
        ));
    }
}

/// The fault -> VMA engine (engine/faultvma.rs) of ffaults, fmapfault,
/// hfaults and swapin.
fn fault_vmas(found: &mut Findings) {
    found
        .uses("page-fault perf events")
        .attaches(&["tp_btf/sched_process_free"]);
    if !kernel::can_attach("tp_btf/exit_mmap").unwrap_or(false) {
        found.limit(faultvma::WITHOUT_EXIT_MMAP);
    }
    let source = VmaSource::choose();
    found.uses(source.described());
    if source == VmaSource::Lookup {
        found.limit(format!(
            "each fault looks its VMA up (several times the cost of a cached one): the cache \
             needs {}, or {} the VMA from handle_mm_fault",
            Feature::MmLockSeq.described(),
            Feature::Fentry.described()
        ));
    }
}

/// memleak: user mode on the best uprobes there are, kernel mode on the kmem
/// tracepoints; it runs if either mode does.
fn memleak(found: &mut Findings) {
    let kernel_mode = ["raw_tp/kmalloc", "raw_tp/kfree", "raw_tp/kmem_cache_alloc"]
        .iter()
        .all(|s| kernel::can_attach(s).unwrap_or(false));
    let user_mode = Mechanism::choose(None);
    match &user_mode {
        Ok(mechanism) => {
            let mechanism = *mechanism;
            found.uses(format!("user: {}", mechanism.described()));
            if mechanism != Mechanism::Session {
                found.limit(format!(
                    "every allocating call's return traps (the entry decides with {})",
                    Feature::UprobeSession.described()
                ));
            }
            if mechanism == Mechanism::Classic {
                found.limit(format!(
                    "a uprobe link per function and half, tens of ms each to remove after \
                     the end (one link per object: {})",
                    Feature::UprobeMulti.described()
                ));
            }
            if mechanism.pre517() {
                found.limit(allocator::PROBES_BY_ADDRESS);
            }
            stacks(found, Walker::Probe);
            exit_mappings(found);
        }
        Err(err) => {
            found.limit(format!("{err:#}"));
        }
    }
    match kernel_mode {
        true => found.uses("kernel: kmem raw tracepoints"),
        false => found.limit("--kernel: no kmem tracepoints on this kernel"),
    };
    found.needs(user_mode.is_ok() || kernel_mode, || {
        "neither uprobes with BPF cookies nor kmem tracepoints".into()
    });
}

fn verdict_of(tool: &'static str) -> Verdict {
    let mut found = Findings::new();
    if tool != "pmap" {
        found.needs(kernel::check_btf().is_ok(), || {
            "no kernel BTF (/sys/kernel/btf/vmlinux): CONFIG_DEBUG_INFO_BTF".into()
        });
    }
    for &feature in features::required_by(tool) {
        found.needs(feature.present(), || {
            format!("needs {}", feature.described())
        });
    }
    match tool {
        "mmapsnoop" => syscalls(&mut found, &["mmap", "munmap", "mremap"]),
        "mmapfiles" => {
            syscalls(&mut found, &["mmap"]);
            if mmapfiles::names_numbered() {
                found.limit(mmapfiles::NUMBERED_LIMIT);
            }
        }
        "shmsnoop" => syscalls(&mut found, &["shmget", "shmat", "shmdt", "shmctl"]),
        "brkstack" => {
            syscalls(&mut found, &["brk"]);
            stacks(&mut found, Walker::Probe);
            exit_mappings(&mut found);
        }
        "ffaults" | "fmapfault" | "hfaults" => fault_vmas(&mut found),
        "swapin" => {
            fault_vmas(&mut found);
            found.attaches(&["tp_btf/block_bio_queue"]);
        }
        "faults" => {
            found.uses("page-fault perf events");
            stacks(&mut found, Walker::PerfEvent);
            exit_mappings(&mut found);
        }
        "memleak" => memleak(&mut found),
        "oomkill" => match oomkill::Mechanism::choose() {
            Some(mechanism) => {
                found.uses(mechanism.described());
            }
            None => {
                found.needs(false, || oomkill::Mechanism::NONE.into());
            }
        },
        "drsnoop" | "vmscan" => {
            found.uses("BTF vmscan tracepoints").attaches(&[
                "tp_btf/mm_vmscan_direct_reclaim_begin",
                "tp_btf/mm_vmscan_direct_reclaim_end",
                "tp_btf/mm_vmscan_memcg_reclaim_begin",
                "tp_btf/mm_vmscan_memcg_reclaim_end",
            ]);
        }
        "pmap" => {
            found.uses("/proc/PID/smaps, no BPF");
        }
        _ => {
            found.uses("unknown to doctor");
        }
    }
    found.verdict(tool)
}

fn report() -> Report {
    Report {
        kernel: kernel::release().unwrap_or_else(|| "unknown".into()),
        arch: std::env::consts::ARCH,
        privileged: kernel::check_privileges().is_ok(),
        features: Feature::ALL
            .iter()
            .map(|f| FeatureRow {
                name: f.name(),
                since: f.since(),
                present: f.present(),
            })
            .collect(),
        tools: TOOLS.iter().map(|t| verdict_of(t.name)).collect(),
    }
}

fn text(report: &Report) -> String {
    let mut out = format!("kernel {} ({})\n", report.kernel, report.arch);
    let features: Vec<String> = report
        .features
        .iter()
        .map(|f| {
            format!(
                "{} ({}) {}",
                f.name,
                f.since,
                if f.present { "yes" } else { "no" }
            )
        })
        .collect();
    out.push_str(&format!("features: {}\n", features.join(", ")));
    if !report.privileged {
        out.push_str("this process may not load BPF: run the tools as root (or with CAP_BPF and CAP_PERFMON)\n");
    }
    let width = report.tools.iter().map(|v| v.tool.len()).max().unwrap_or(0);
    for verdict in &report.tools {
        let what = match &verdict.reason {
            Some(reason) => reason.clone(),
            None => verdict.mechanism.clone(),
        };
        out.push_str(&format!(
            "{:<width$}  {:<10}  {what}\n",
            verdict.tool,
            verdict.state.word()
        ));
        if verdict.reason.is_none() {
            for limit in &verdict.limits {
                out.push_str(&format!("{:<width$}  {:<10}  - {limit}\n", "", ""));
            }
        }
    }
    out
}

/// `memtrace doctor [--json]`: status 0 (it reports; the tools fail when run).
pub fn run(matches: &ArgMatches) -> Result<i32> {
    let report = report();
    let out = match matches.get_flag("json") {
        true => serde_json::to_string(&report)? + "\n",
        false => text(&report),
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    Ok(0)
}
