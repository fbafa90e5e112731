//! memleak's reports: the outstanding allocations read from the kernel (each
//! one, or totals by stack with --combined-only), grouped by process and
//! stack and printed largest first; at the end the flame graph and pprof profile; with
//! -t, each allocation and free as it happens.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::time::SystemTime;

use anyhow::{bail, Result};
use libbpf_rs::MapCore;
use serde::Serialize;

use super::bpf::types::{
    memleak_alloc, memleak_combined, memleak_event, memleak_key, memleak_stack_key,
};
use super::bpf::MemleakSkel;
use super::{Args, SortBy};
use crate::analysis::symbolize::StackSymbolizer;
use crate::engine::maps::{entries, stored_stack};
use crate::engine::session::monotonic_ns;
use crate::present::escape::{escape_c_chars, escape_path};
use crate::present::format::{utc_file_stamp, wall_clock_hms};
use crate::present::output::Output;
use crate::present::output_file::OutputFile;
use crate::present::profile::{profile_value, FlameGraph, Pprof, ProfileFrame, Sample};
use crate::present::stack_report::{StackReport, StackRow};
use crate::tools::stack_counts;

/// A process's stack: its tgid (0 in kernel mode) and stack key.
type StackOf = (u32, i64);

/// Outstanding bytes and allocations of one stack, and its allocations for -a.
#[derive(Default)]
struct Outstanding {
    bytes: u64,
    allocs: u64,
    addresses: Vec<(u64, u64)>,
}

/// One stack of a report; the JSON fields are documented in the README.
/// Each report is the whole outstanding set then: it replaces the one
/// before, and is not added to it.
#[derive(Serialize)]
struct Row {
    time_ns: u64,
    /// The report's number, from 1.
    report: u64,
    /// The last report of the trace.
    #[serde(rename = "final")]
    last: bool,
    /// The process that allocated (a command's child, say); null in kernel
    /// mode without -p.
    pid: Option<u32>,
    bytes: u64,
    allocations: u64,
    /// Leaf first.
    stack: Vec<String>,
    /// -a: each allocation's (address, size), in the text report.
    #[serde(skip)]
    addresses: Vec<(u64, u64)>,
    /// The text says whose stack it is: the report holds several processes.
    #[serde(skip)]
    says_pid: bool,
}

impl StackRow for Row {
    fn folded_frames(&self) -> Vec<String> {
        self.stack.iter().rev().cloned().collect()
    }

    fn weight(&self) -> u64 {
        self.bytes
    }

    fn write_json(&self, out: &mut Output) -> Result<()> {
        out.json_line(self)
    }

    fn write_text(&self, out: &mut Output) -> Result<()> {
        for (addr, size) in &self.addresses {
            out.line(&format!("\taddr = {addr:x} size = {size}"))?;
        }
        let whose = match self.pid {
            Some(pid) if self.says_pid => format!(" of PID {pid}"),
            _ => String::new(),
        };
        out.line(&format!(
            "\t{} bytes in {} allocations from stack{whose}",
            self.bytes, self.allocations
        ))?;
        for frame in &self.stack {
            out.line(&format!("\t\t{frame}"))?;
        }
        Ok(())
    }
}

/// --svg and --pprof: the files reserved before the trace, written at its end.
#[derive(Default)]
pub struct Profiles {
    pub svg: Option<OutputFile>,
    pub pprof: Option<OutputFile>,
}

impl Profiles {
    /// Reserves the files --svg and --pprof name (see OutputFile); checks
    /// that --profiles names a directory, where each report writes a file.
    pub fn reserve(args: &Args) -> Result<Profiles> {
        if let Some(dir) = &args.profiles {
            if !dir.is_dir() {
                bail!(
                    "--profiles {}: not a directory (give an existing directory for the profiles)",
                    escape_path(dir)
                );
            }
        }
        Ok(Profiles {
            svg: OutputFile::reserve_if_given("--svg", args.svg.as_deref())?,
            pprof: OutputFile::reserve_if_given("--pprof", args.pprof.as_deref())?,
        })
    }
}

/// Reads what is outstanding and prints it, at each report and at the end.
pub struct Reporter<'a> {
    args: &'a Args,
    allocs: &'a dyn MapCore,
    combined: &'a dyn MapCore,
    stacks: &'a dyn MapCore,
    kernel: bool,
    /// -p's process in kernel mode, whose allocations the kernel's are.
    kernel_pid: Option<u32>,
    report: StackReport,
    profiles: Profiles,
    /// Outstanding allocations whose stack could not be stored, at the last report.
    lost_stacks: u64,
    /// Reports printed.
    reports: u64,
    /// The age below which the last report left allocations out (ms): the
    /// profiles written at the end show what it showed.
    last_older_ms: u64,
}

/// Which report is printed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    /// At an interval, the trace going on.
    Interval,
    /// At the end of the trace, the traced processes alive.
    End,
    /// At the end, the traced command or processes gone: whatever they
    /// still held is shown, however young (-o does not apply).
    TargetGone,
}

impl<'a> Reporter<'a> {
    pub fn new(
        args: &'a Args,
        skel: &'a MemleakSkel<'_>,
        kernel: bool,
        pid: i32,
        profiles: Profiles,
    ) -> Reporter<'a> {
        Reporter {
            args,
            allocs: &skel.maps.allocs,
            combined: &skel.maps.combined,
            stacks: &skel.maps.stack_store,
            kernel,
            kernel_pid: (kernel && pid > 0).then_some(pid as u32),
            report: StackReport::new(args.folded, Some(args.top), None),
            profiles,
            lost_stacks: 0,
            reports: 0,
            last_older_ms: args.older,
        }
    }

    /// What is outstanding now, by process and stack: each allocation
    /// (older than `older_ms`), or the kernel's totals (--combined-only).
    fn outstanding(&self, older_ms: u64) -> Result<HashMap<StackOf, Outstanding>> {
        let mut by_stack: HashMap<StackOf, Outstanding> = HashMap::new();
        if self.args.combined_only {
            for (key, totals) in entries::<memleak_stack_key, memleak_combined>(self.combined)? {
                if totals.allocs > 0 {
                    let row = by_stack.entry((key.tgid, key.stack)).or_default();
                    row.bytes = totals.bytes;
                    row.allocs = totals.allocs;
                }
            }
            return Ok(by_stack);
        }
        let now = monotonic_ns();
        let older_ns = older_ms * 1_000_000;
        for (key, alloc) in entries::<memleak_key, memleak_alloc>(self.allocs)? {
            if now.saturating_sub(alloc.time_ns) < older_ns {
                continue;
            }
            let row = by_stack.entry((key.tgid, alloc.stack)).or_default();
            row.bytes += alloc.size;
            row.allocs += 1;
            if self.args.show_allocs {
                row.addresses.push((key.addr, alloc.size));
            }
        }
        Ok(by_stack)
    }

    /// A stack as a profile records it, leaf first (write_profiles).
    fn profile_frames(
        &self,
        symbolizer: &mut StackSymbolizer,
        (tgid, key): StackOf,
    ) -> Vec<ProfileFrame> {
        match stored_stack(self.stacks, key) {
            None => vec![ProfileFrame::Named("[stack lost]".into())],
            Some(ips) if self.kernel => symbolizer
                .kernel_frames(&ips)
                .into_iter()
                .map(ProfileFrame::Named)
                .collect(),
            Some(ips) => symbolizer.user_profile_frames(tgid, &ips),
        }
    }

    /// A stack's frames, leaf first.
    fn frames(&self, symbolizer: &mut StackSymbolizer, (tgid, key): StackOf) -> Vec<String> {
        // a negative key: -ENOSPC (the stack store was full) or -EFAULT (no stack)
        match stored_stack(self.stacks, key) {
            None => vec!["[stack lost]".into()],
            Some(ips) if self.kernel => symbolizer.kernel_frames(&ips),
            Some(ips) => symbolizer.user_frames(tgid, &ips),
        }
    }

    /// One report: the stacks with the most outstanding (by --sort), the top
    /// first, symbolized with what `symbolizer` knows once `ready` has been
    /// given their processes (see records::ready_symbolizer).
    pub fn print(
        &mut self,
        out: &mut Output,
        symbolizer: &RefCell<StackSymbolizer>,
        moment: Moment,
        ready: impl FnOnce(&[u32]),
    ) -> Result<()> {
        let older_ms = match moment {
            Moment::TargetGone => 0,
            Moment::Interval | Moment::End => self.args.older,
        };
        let outstanding = self.outstanding(older_ms)?;
        ready(&self.processes(outstanding.keys()));
        let symbolizer = &mut *symbolizer.borrow_mut();
        if let Some(dir) = &self.args.profiles {
            self.write_snapshot(dir, symbolizer, &outstanding)?;
        }
        self.last_older_ms = older_ms;
        self.reports += 1;
        let report = self.reports;
        // the COUNTth interval report ends the trace too
        let last = moment != Moment::Interval || self.args.count == Some(report);
        self.lost_stacks = outstanding
            .iter()
            .filter(|((_, key), _)| *key == -i64::from(libc::ENOSPC))
            .map(|(_, row)| row.allocs)
            .sum();
        let mut by_stack: Vec<(StackOf, Outstanding)> = outstanding.into_iter().collect();
        let sort = self.args.sort;
        by_stack.sort_by(|(ka, a), (kb, b)| {
            let key = |r: &Outstanding| match sort {
                SortBy::Size => (r.bytes, r.allocs),
                SortBy::Count => (r.allocs, r.bytes),
            };
            key(b).cmp(&key(a)).then(ka.cmp(kb))
        });
        by_stack.truncate(self.args.top);
        let time_ns = monotonic_ns();
        let says_pid = by_stack
            .iter()
            .any(|((tgid, _), _)| *tgid != by_stack[0].0 .0);
        let rows: Vec<Row> = by_stack
            .into_iter()
            .map(|(key, outstanding)| Row {
                time_ns,
                report,
                last,
                pid: match self.kernel {
                    true => self.kernel_pid,
                    false => Some(key.0),
                },
                bytes: outstanding.bytes,
                allocations: outstanding.allocs,
                stack: self.frames(symbolizer, key),
                addresses: outstanding.addresses,
                says_pid,
            })
            .collect();
        // the originals' title: the JSON rows say which report is the last
        self.report.print_titled(out, rows, |shown| {
            Some(format!(
                "[{}] Top {shown} stacks with outstanding allocations:",
                wall_clock_hms()
            ))
        })
    }

    /// The processes of `stacks` whose user stacks are symbolized (none in
    /// kernel mode), each once.
    fn processes<'k>(&self, stacks: impl Iterator<Item = &'k StackOf>) -> Vec<u32> {
        if self.kernel {
            return Vec::new();
        }
        let mut tgids: Vec<u32> = stacks.map(|&(tgid, _)| tgid).collect();
        tgids.sort_unstable();
        tgids.dedup();
        tgids
    }

    /// --svg and --pprof: what is outstanding at the end, every stack, as
    /// the last report saw it (`ready` as for print).
    pub fn write_profiles(
        &mut self,
        symbolizer: &RefCell<StackSymbolizer>,
        ready: impl FnOnce(&[u32]),
    ) -> Result<()> {
        let Profiles { svg, pprof } = std::mem::take(&mut self.profiles);
        if svg.is_none() && pprof.is_none() {
            return Ok(());
        }
        let outstanding = self.outstanding(self.last_older_ms)?;
        ready(&self.processes(outstanding.keys()));
        let symbolizer = &mut *symbolizer.borrow_mut();
        if let Some(file) = svg {
            let mut flame = FlameGraph::new(file, "Outstanding allocations", "bytes");
            for (&key, row) in &outstanding {
                let mut frames = self.frames(symbolizer, key);
                frames.reverse();
                flame.add(frames, row.bytes);
            }
            flame.write()?;
        }
        if let Some(file) = pprof {
            self.write_pprof(symbolizer, &outstanding, file)?;
        }
        Ok(())
    }

    /// --profiles: what is outstanding now, every stack, in a new file of
    /// the directory named by the time (UTC).
    fn write_snapshot(
        &self,
        dir: &Path,
        symbolizer: &mut StackSymbolizer,
        outstanding: &HashMap<StackOf, Outstanding>,
    ) -> Result<()> {
        let name = format!("memleak-{}.pb.gz", utc_file_stamp(SystemTime::now()));
        let file = OutputFile::reserve("--profiles", &dir.join(name))?;
        self.write_pprof(symbolizer, outstanding, file)
    }

    /// The outstanding allocations as a pprof profile (inuse_space,
    /// inuse_objects), with each process's labels in user mode.
    fn write_pprof(
        &self,
        symbolizer: &mut StackSymbolizer,
        outstanding: &HashMap<StackOf, Outstanding>,
        file: OutputFile,
    ) -> Result<()> {
        let mut profile = Pprof::new(
            file,
            &[("inuse_space", "bytes"), ("inuse_objects", "count")],
        );
        let mut labels_of = HashMap::new();
        for (&key, row) in outstanding {
            profile.add(Sample {
                frames: self.profile_frames(symbolizer, key),
                values: vec![profile_value(row.bytes), profile_value(row.allocs)],
                labels: match self.kernel {
                    true => Vec::new(),
                    false => labels_of
                        .entry(key.0)
                        .or_insert_with(|| stack_counts::process_labels(key.0, None))
                        .clone(),
                },
            });
        }
        profile.write()
    }

    pub fn warn_lost_stacks(&self) {
        self.report
            .say_truncated("memleak", "bytes outstanding at the last report", false);
        if self.lost_stacks > 0 {
            crate::say!(
                "memleak: the stacks of {} outstanding allocations were lost: the stack store was full (raise --stack-storage-size)",
                self.lost_stacks
            );
        }
    }
}

/// -t: an allocation or a free as it happened.
#[derive(Serialize)]
struct TraceRow {
    time_ns: u64,
    /// `alloc` or `free`.
    event: &'static str,
    pid: u32,
    tid: u32,
    comm: String,
    addr: u64,
    size: u64,
}

/// -t: one line (or JSON object) per allocation or free.
pub fn print_trace_event(out: &mut Output, e: &memleak_event) -> Result<()> {
    let row = TraceRow {
        time_ns: e.time_ns,
        event: if e.is_free != 0 { "free" } else { "alloc" },
        pid: e.pid,
        tid: e.tid,
        comm: escape_c_chars(&e.comm),
        addr: e.addr,
        size: e.size,
    };
    out.record(&row, |row| {
        format!(
            "{:<7} {:<7} {:<16} {:<5} {:#x} {} bytes",
            row.pid, row.tid, row.comm, row.event, row.addr, row.size
        )
    })
}
