//! What ffaults, fmapfault, hfaults and swapin share: a trace of the fault
//! -> VMA engine (engine/faultvma.rs) with the tool's options, and its counts
//! grouped as the tool asks and printed at each interval and at the end.

use std::cell::RefCell;
use std::collections::HashMap;
use std::mem::MaybeUninit;

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use crate::cli::{CommonArgs, ReportArgs, SHOW_CGROUP_HELP};
use crate::engine::cgroup::{self, CgroupField, CgroupNames};
use crate::engine::drops::{self, LossWatch};
use crate::engine::faultvma::{FaultCount, FaultEngine, Only};
use crate::engine::loader::Trace;
use crate::engine::session::{monotonic_ns, Session};
use crate::engine::skeleton::DropReason;
use crate::present::format::wall_clock_hms;
use crate::present::output::Output;
use crate::present::table::Table;

/// The options these tools share: how often and how much to report, and
/// how many counts the kernel holds.
#[derive(Args, Debug, Clone)]
pub struct CountArgs {
    #[command(flatten)]
    pub report: ReportArgs,

    /// Distinct (process, file or memory, kind) counts the kernel can hold
    #[arg(long, value_name = "N", default_value_t = 10240)]
    pub max_entries: u32,

    #[arg(long, help = SHOW_CGROUP_HELP)]
    pub show_cgroup: bool,
}

/// What a tool asks of the shared kernel side, and how it groups the counts.
pub struct Counting {
    pub only: Only,
    pub grouping: Grouping,
    /// For "Tracing ...": "page faults".
    pub what: &'static str,
}

/// Something a tool prints after each report (swapin: the kernel's own swap-in counters).
pub type Footer<'a> = Box<dyn FnMut(&mut Output) -> Result<()> + 'a>;

/// Which fields of a count make a row.
#[derive(Clone, Copy)]
pub struct Grouping {
    pub process: bool,
    pub pid: bool,
    pub file: bool,
    /// --show-cgroup (set from CountArgs).
    pub cgroup: bool,
}

impl Grouping {
    /// By process name, pid and file.
    pub const ALL: Grouping = Grouping {
        process: true,
        pid: true,
        file: true,
        cgroup: false,
    };
}

/// What a full counting map loses, and what to do about it.
const MAX_ENTRIES_HINT: &str = "raise --max-entries";

/// Traces until the session ends, printing the counts since the previous
/// report at each interval and at the end. Between reports the slots of
/// exited processes are harvested (their last counts kept here, the slots
/// freed for new processes), so a long trace keeps counting new processes.
pub fn run(
    common: &CommonArgs,
    counts: &CountArgs,
    counting: Counting,
    mut footer: Option<Footer<'_>>,
) -> Result<i32> {
    let mut trace = Trace::prepare(common)?;
    // each process's cgroup, read at its first fault of each count slot
    let cgroups = cgroup::label_records(counts.show_cgroup, &mut trace.filter)?;
    let mut storage = MaybeUninit::uninit();
    let engine = FaultEngine::load(
        &mut storage,
        &mut trace,
        counting.only,
        counting.only == Only::Swap,
        counts.max_entries,
    )?;
    let gone = engine.gone_ring()?;
    let engine = RefCell::new(engine);
    let grouping = Grouping {
        cgroup: counts.show_cgroup,
        ..counting.grouping
    };
    let totals = RefCell::new(Totals::new(grouping, cgroups));
    let watch = RefCell::new(LossWatch::new(
        common.tool,
        DropReason::MEMTRACE_DROP_COUNTS,
        MAX_ENTRIES_HINT,
    ));
    let mut out = Output::new(common.json);
    let interval = counts.report.interval;
    let mut session = Session::start(trace, interval, counting.what)?;
    let clock_heading = interval.is_some() || common.timestamp;
    // what is gone (the BPF side wakes us only when slots run short) is read every 200 ms
    let harvest = || -> Result<()> {
        gone.consume_raw();
        let mut engine = engine.borrow_mut();
        totals.borrow_mut().add(&engine.harvest()?);
        watch.borrow_mut().check(engine.object(), false)
    };
    let mut report = |out: &mut Output| -> Result<()> {
        gone.consume_raw();
        {
            let mut engine = engine.borrow_mut();
            totals.borrow_mut().add(&engine.take()?);
            let mut watch = watch.borrow_mut();
            watch.check(engine.object(), true)?;
            watch.end_interval();
        }
        if clock_heading {
            out.heading(&format!("\n{}", wall_clock_hms()))?;
        }
        let groups = totals.borrow_mut().take(counts.report.top);
        if counting.only == Only::Swap {
            print_swap_ins(out, grouping, &groups)?;
        } else {
            print_faults(out, grouping, &groups)?;
        }
        if let Some(footer) = footer.as_mut() {
            footer(out)?;
        }
        out.flush()
    };
    let stop = session.run(Some(&gone), harvest, || report(&mut out))?;
    report(&mut out)?;
    drop(gone);
    let engine = engine.into_inner();
    if common.verbose {
        engine.report_cache_stats(common.tool)?;
    }
    drops::report(
        common.tool,
        engine.object(),
        &[
            (DropReason::MEMTRACE_DROP_COUNTS, MAX_ENTRIES_HINT),
            (
                DropReason::MEMTRACE_DROP_RINGBUF,
                "exits not seen: those processes' count slots were not reused",
            ),
        ],
    )?;
    Ok(session.exit_code(stop))
}

/// Counts of one group: the grouped fields (None where not grouped by).
#[derive(Default)]
struct Group {
    comm: Option<String>,
    pid: Option<u32>,
    file: Option<String>,
    /// --show-cgroup: the process's cgroup, also a grouped field.
    cgroup: Option<CgroupField>,
    minor: u64,
    major: u64,
}

type GroupKey = (
    Option<String>,
    Option<u32>,
    Option<String>,
    Option<CgroupField>,
);

/// The counts of a report, grouped as they come in (at each harvest and at the report).
struct Totals {
    grouping: Grouping,
    /// --show-cgroup: names the counts' cgroups.
    cgroups: Option<CgroupNames>,
    grouped: HashMap<GroupKey, [u64; 2]>,
}

impl Totals {
    fn new(grouping: Grouping, cgroups: Option<CgroupNames>) -> Totals {
        Totals {
            grouping,
            cgroups,
            grouped: HashMap::new(),
        }
    }

    fn add(&mut self, counts: &[FaultCount]) {
        let grouping = self.grouping;
        for c in counts {
            let key = (
                grouping.process.then(|| c.comm.clone()),
                grouping.pid.then_some(c.pid),
                grouping.file.then(|| c.file.clone()),
                self.cgroups.as_mut().map(|names| names.field(c.cgroup)),
            );
            self.grouped.entry(key).or_default()[usize::from(c.major)] += c.count;
        }
    }

    /// The groups counted since the last call, sorted by total descending, the `top` first.
    fn take(&mut self, top: Option<usize>) -> Vec<Group> {
        let mut rows: Vec<(GroupKey, [u64; 2])> =
            std::mem::take(&mut self.grouped).into_iter().collect();
        rows.sort_by(|(ka, a), (kb, b)| (b[0] + b[1]).cmp(&(a[0] + a[1])).then_with(|| ka.cmp(kb)));
        rows.truncate(top.unwrap_or(usize::MAX));
        rows.into_iter()
            .map(|((comm, pid, file, cgroup), [minor, major])| Group {
                comm,
                pid,
                file,
                cgroup,
                minor,
                major,
            })
            .collect()
    }
}

/// The columns of the grouped fields, around the counts' own.
fn columns(grouping: Grouping, counts: &[&'static str]) -> Vec<&'static str> {
    let mut columns = Vec::new();
    if grouping.process {
        columns.push("COMM");
    }
    if grouping.pid {
        columns.push(">PID");
    }
    if grouping.cgroup {
        columns.extend(["CONTAINER", "CGROUP"]);
    }
    columns.extend(counts);
    if grouping.file {
        columns.push("FILE");
    }
    columns
}

/// A group's cells: the grouped fields around `counts`.
fn cells(group: &Group, counts: &[u64]) -> Vec<String> {
    let mut cells: Vec<String> = Vec::new();
    cells.extend(group.comm.clone());
    cells.extend(group.pid.map(|p| p.to_string()));
    if let Some(cgroup) = &group.cgroup {
        cells.push(cgroup.container_cell().to_string());
        cells.push(cgroup.cgroup.clone());
    }
    cells.extend(counts.iter().map(u64::to_string));
    cells.extend(group.file.clone());
    cells
}

/// A JSON line of ffaults, fmapfault, hfaults: one kind of fault of a group
/// (null where not grouped by).
#[derive(Serialize)]
struct FaultRow<'a> {
    time_ns: u64,
    pid: Option<u32>,
    comm: Option<&'a str>,
    file: Option<&'a str>,
    kind: &'static str,
    count: u64,
    /// --show-cgroup: cgroup and container.
    #[serde(flatten)]
    cgroup: Option<&'a CgroupField>,
}

/// A table row per group (COMM, PID, MINOR, MAJOR, FAULTS, FILE as grouped);
/// with --json, a line per group and kind of fault.
fn print_faults(out: &mut Output, grouping: Grouping, groups: &[Group]) -> Result<()> {
    if out.is_json() {
        let time_ns = monotonic_ns();
        for g in groups {
            for (kind, count) in [("minor", g.minor), ("major", g.major)] {
                if count > 0 {
                    out.json_line(&FaultRow {
                        time_ns,
                        pid: g.pid,
                        comm: g.comm.as_deref(),
                        file: g.file.as_deref(),
                        kind,
                        count,
                        cgroup: g.cgroup.as_ref(),
                    })?;
                }
            }
        }
        return Ok(());
    }
    let mut table = Table::new(&columns(grouping, &[">MINOR", ">MAJOR", ">FAULTS"]));
    for g in groups {
        table.row(cells(g, &[g.minor, g.major, g.minor + g.major]));
    }
    table.print(out)
}

/// swapin's row: the major faults on anonymous or shmem memory (reads from
/// swap) and the pages read from swap (counted in the minor-fault slots).
#[derive(Serialize)]
struct SwapRow<'a> {
    time_ns: u64,
    pid: Option<u32>,
    comm: Option<&'a str>,
    count: u64,
    pages: u64,
    /// --show-cgroup: cgroup and container.
    #[serde(flatten)]
    cgroup: Option<&'a CgroupField>,
    #[serde(skip)]
    group: &'a Group,
}

fn print_swap_ins(out: &mut Output, grouping: Grouping, groups: &[Group]) -> Result<()> {
    let time_ns = monotonic_ns();
    let rows: Vec<SwapRow> = groups
        .iter()
        .map(|g| SwapRow {
            time_ns,
            pid: g.pid,
            comm: g.comm.as_deref(),
            count: g.major,
            pages: g.minor,
            cgroup: g.cgroup.as_ref(),
            group: g,
        })
        .collect();
    out.table(&columns(grouping, &[">COUNT", ">PAGES"]), &rows, |row| {
        cells(row.group, &[row.count, row.pages])
    })
}
