//! `memtrace serve`: a long-lived agent that exports what the tools see as
//! Prometheus metrics at /metrics, labelled by cgroup (and the container or
//! pod it names) and process name. Its collectors are the tools' own kernel
//! sides: the fault -> VMA engine (faults, swap), oomkill's, drsnoop's
//! (reclaim) and mmapsnoop's (mmap), each told to name the task's cgroup in
//! the memory controller's hierarchy (common.bpf.h's memtrace_cgroup_label).

mod http;
mod metrics;
mod profiles;

use std::cell::RefCell;
use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, ValueEnum};
use libbpf_rs::skel::Skel;
use libbpf_rs::{MapCore, Object, OpenObject, RingBufferBuilder};

use crate::cli::{parse_seconds, CommonArgs};
use crate::engine::cgroup::{
    is_within, memory_cgroup_path, CgroupField, CgroupNames, MemoryHierarchy,
};
use crate::engine::drops;
use crate::engine::faultvma::{FaultCount, FaultEngine, Mapping, Only};
use crate::engine::features;
use crate::engine::loader::Trace;
use crate::engine::maps::entries;
use crate::engine::records;
use crate::engine::session::Session;
use crate::engine::skeleton::DropReason;
use crate::present::escape::escape_c_chars;
use crate::tools::{drsnoop, mmapsnoop, oomkill};
use metrics::{
    FaultLabels, FileLabels, LossLabels, Metrics, MmapLabels, OomLabels, Place, ProcessLabels,
    ReclaimLabels,
};
use profiles::Profiler;

pub const NAME: &str = "serve";

const ABOUT: &str = "Run as an agent: page faults, OOM kills, reclaim stalls, swap-ins and mmap calls by cgroup and process name, as Prometheus metrics";

/// What serve can count, each with a tool's kernel side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Collector {
    /// Page faults by mapping kind (the ffaults engine)
    Faults,
    /// OOM kills (oomkill's)
    Oom,
    /// Reclaim stalls and pages reclaimed (drsnoop's)
    Reclaim,
    /// Swap-ins: faults and pages (swapin's)
    Swap,
    /// mmap() calls (mmapsnoop's, counted in the kernel)
    Mmap,
}

impl Collector {
    const ALL: [Collector; 5] = [
        Collector::Faults,
        Collector::Oom,
        Collector::Reclaim,
        Collector::Swap,
        Collector::Mmap,
    ];

    fn name(self) -> &'static str {
        match self {
            Collector::Faults => "faults",
            Collector::Oom => "oom",
            Collector::Reclaim => "reclaim",
            Collector::Swap => "swap",
            Collector::Mmap => "mmap",
        }
    }

    /// The tool whose kernel side it runs, as `memtrace doctor` lists it.
    fn tool(self) -> &'static str {
        match self {
            Collector::Faults => "ffaults",
            Collector::Oom => "oomkill",
            Collector::Reclaim => "drsnoop",
            Collector::Swap => "swapin",
            Collector::Mmap => "mmapsnoop",
        }
    }

    /// Why this kernel can't run it, if it can't.
    fn missing(self) -> Option<String> {
        if let Some(feature) = features::missing_for(self.tool()) {
            return Some(format!("this kernel lacks {}", feature.described()));
        }
        if self == Collector::Oom && oomkill::Mechanism::choose().is_none() {
            return Some(oomkill::Mechanism::NONE.to_string());
        }
        None
    }
}

#[derive(Parser, Debug)]
#[command(name = NAME, about = ABOUT, after_help = "\
Counters only grow while serve runs; memtrace_start_time_seconds tells a
restart. Labels: cgroup (its path in the memory controller's hierarchy, v1 or
v2), container (a docker/containerd/podman id or a Kubernetes pod's uid, where
the cgroup names one), comm (the process name), and each family's kinds; never
pids or file paths.

Examples:
  memtrace serve                                  # every collector this kernel runs, on 127.0.0.1:9464
  memtrace serve --listen 0.0.0.0:9464 --collect faults,oom
  memtrace serve --cgroup /sys/fs/cgroup/system.slice")]
pub struct Args {
    /// Serve /metrics on this address and port
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9464")]
    pub listen: SocketAddr,

    /// Which collectors run, comma-separated [default: every one this kernel can run]
    #[arg(long, value_enum, value_delimiter = ',', value_name = "LIST")]
    pub collect: Vec<Collector>,

    /// Count only tasks in this cgroup and those below it (its directory under /sys/fs/cgroup)
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,

    /// Stop after this many seconds
    #[arg(short = 'd', long, value_name = "SECS", value_parser = parse_seconds)]
    pub duration: Option<Duration>,

    /// Distinct counts the kernel can hold: (process, mapping, kind) for faults and swap, (cgroup, name, kind) for mmap
    #[arg(long, value_name = "N", default_value_t = 10240)]
    pub max_entries: u32,

    /// Also count page faults by file for the N files with the most (memtrace_file_page_faults_total)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub top_files: usize,

    /// Write memory profiles (pprof: inuse_space, inuse_objects) into DIR, a new file every --every seconds, for a profile collector to pick up: memleak's, in a process of its own
    #[arg(long, value_name = "DIR")]
    pub profiles: Option<PathBuf>,

    /// How often --profiles writes a profile
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_seconds, requires = "profiles")]
    pub every: Duration,

    /// Whose allocations --profiles profiles: this process's (default: the kernel's, memleak --kernel)
    #[arg(long, value_name = "PID", requires = "profiles")]
    pub profile_pid: Option<u32>,

    /// Show libbpf's own messages
    #[arg(short = 'v', long)]
    pub verbose: bool,
}

pub fn command() -> clap::Command {
    Args::command()
}

/// The collectors asked for, or by default every one this kernel can run
/// (each left out said on stderr). One asked for that can't run is an error.
fn chosen(asked: &[Collector]) -> Result<Vec<Collector>> {
    if asked.is_empty() {
        let mut chosen = Vec::new();
        for collector in Collector::ALL {
            match collector.missing() {
                Some(why) => {
                    crate::say!("memtrace serve: no {} collector: {why}", collector.name())
                }
                None => chosen.push(collector),
            }
        }
        return Ok(chosen);
    }
    let mut chosen: Vec<Collector> = Vec::new();
    for &collector in asked {
        if let Some(why) = collector.missing() {
            bail!(
                "--collect {}: {why} (`memtrace doctor` says which tools run here)",
                collector.name()
            );
        }
        if !chosen.contains(&collector) {
            chosen.push(collector);
        }
    }
    Ok(chosen)
}

pub fn run(matches: &ArgMatches) -> Result<i32> {
    let args = Args::from_arg_matches(matches)?;
    let common = CommonArgs {
        tool: NAME,
        duration: args.duration,
        verbose: args.verbose,
        cgroup: args.cgroup.clone(),
        ..CommonArgs::default()
    };
    let mut trace = Trace::prepare(&common)?;
    let collectors = chosen(&args.collect)?;
    if let Some(dir) = &args.profiles {
        profiles::check_dir(dir)?;
    }
    let hierarchy = MemoryHierarchy::find()?;
    trace.filter.label = Some(hierarchy.labels);
    let victims_in = match (&args.cgroup, collectors.contains(&Collector::Oom)) {
        (Some(dir), true) => Some(memory_cgroup_path(dir, "--cgroup")?),
        _ => None,
    };

    let metrics = Metrics::default();
    let started = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics.start_time.set(started);
    let names: Vec<&str> = collectors.iter().map(|c| c.name()).collect();
    // the port first: a taken one is refused before anything loads
    http::start(args.listen, metrics.registry(&names, args.top_files > 0))?;

    let mut storage = Storage::new();
    let loaded = Loaded::load(&mut storage, &mut trace, &collectors, args.max_entries)?;
    let places = RefCell::new(CgroupNames::new(&hierarchy.mount));
    let kills = loaded.oom.as_ref().map(oomkill::Kills::new);
    // what the kernel sends as it happens (mmap's counts are kept there)
    let mut builder = RingBufferBuilder::new();
    let mut rings = 0;
    if let Some(engine) = &loaded.faults {
        engine.add_gone_ring(&mut builder)?;
        rings += 1;
    }
    if let (Some(oom), Some(kills)) = (&loaded.oom, &kills) {
        builder.add(&oom.maps.events, |record| {
            let kill = kills.decode(record);
            if victims_in
                .as_deref()
                .is_none_or(|v| is_within(&kill.cgroup, v))
            {
                count_kill(&metrics, &kill);
            }
            0
        })?;
        rings += 1;
    }
    if let Some(reclaim) = &loaded.reclaim {
        builder.add(&reclaim.maps.events, |record| {
            count_stall(&metrics, &places, &records::decode(record));
            0
        })?;
        rings += 1;
    }
    let ring = match rings {
        0 => None,
        _ => Some(builder.build().context("setting up the ring buffers")?),
    };

    let faults = loaded.faults.map(RefCell::new);
    let fault_counts = RefCell::new(FaultCounts {
        all: collectors.contains(&Collector::Faults),
        top_files: TopFiles::new(args.top_files),
    });
    let mut losses = Losses::default();
    let mut mmap_calls = MmapCalls::default();
    let mut profiler = match &args.profiles {
        Some(dir) => Some(Profiler::start(dir, args.every, args.profile_pid)?),
        None => None,
    };
    let what = format!("{} for http://{}/metrics", names.join(", "), args.listen);
    let mut session = Session::start(trace, Some(REFRESH), &what)?;
    let stop = session.run(
        ring.as_ref(),
        // the slots of what exited are harvested as they go (their last counts kept)
        || {
            if let Some(engine) = &faults {
                let counts = engine.borrow_mut().harvest()?;
                fault_counts.borrow_mut().add(&metrics, &places, &counts);
            }
            Ok(())
        },
        || {
            if let Some(engine) = &faults {
                let engine = &mut *engine.borrow_mut();
                let counts = engine.take()?;
                let mut fault_counts = fault_counts.borrow_mut();
                fault_counts.add(&metrics, &places, &counts);
                fault_counts.top_files.publish(&metrics);
                losses.add(&metrics, "faults", engine.object())?;
            }
            if let Some(mmap) = &loaded.mmap {
                mmap_calls.add(&metrics, &places, &mmap.maps.call_counts)?;
                losses.add(&metrics, "mmap", mmap.object())?;
            }
            if let Some(oom) = &loaded.oom {
                losses.add(&metrics, "oom", oom.object())?;
            }
            if let Some(reclaim) = &loaded.reclaim {
                losses.add(&metrics, "reclaim", reclaim.object())?;
            }
            if let Some(profiler) = &mut profiler {
                profiler.check();
            }
            Ok(())
        },
    )?;
    // memleak writes its last profile
    drop(profiler);
    drop(ring);
    // what was lost, said at the end as the tools say it
    let more_slots = &[(DropReason::MEMTRACE_DROP_COUNTS, "raise --max-entries")];
    if let Some(engine) = faults {
        drops::report(NAME, engine.into_inner().object(), more_slots)?;
    }
    if let Some(mmap) = &loaded.mmap {
        drops::report(NAME, mmap.object(), more_slots)?;
    }
    for object in [
        loaded.oom.as_ref().map(|o| o.object()),
        loaded.reclaim.as_ref().map(|r| r.object()),
    ]
    .into_iter()
    .flatten()
    {
        drops::report(NAME, object, &[])?;
    }
    Ok(session.exit_code(stop))
}

/// Where the collectors' BPF objects live while they are loaded.
struct Storage {
    faults: MaybeUninit<OpenObject>,
    oom: MaybeUninit<OpenObject>,
    reclaim: MaybeUninit<OpenObject>,
    mmap: MaybeUninit<OpenObject>,
}

impl Storage {
    fn new() -> Storage {
        Storage {
            faults: MaybeUninit::uninit(),
            oom: MaybeUninit::uninit(),
            reclaim: MaybeUninit::uninit(),
            mmap: MaybeUninit::uninit(),
        }
    }
}

/// The collectors' kernel sides, loaded and attached; None where not collected.
struct Loaded<'obj> {
    /// The fault -> VMA engine, for faults, swap or both.
    faults: Option<FaultEngine<'obj>>,
    oom: Option<oomkill::OomkillSkel<'obj>>,
    reclaim: Option<drsnoop::DrsnoopSkel<'obj>>,
    mmap: Option<mmapsnoop::MmapsnoopSkel<'obj>>,
}

impl<'obj> Loaded<'obj> {
    /// Loads what `collectors` need. `trace.tool` names, for each, the tool
    /// whose programs load: the loader's checks and messages name it.
    fn load(
        storage: &'obj mut Storage,
        trace: &mut Trace,
        collectors: &[Collector],
        max_entries: u32,
    ) -> Result<Loaded<'obj>> {
        let on = |c: Collector| collectors.contains(&c);
        let mut loaded = Loaded {
            faults: None,
            oom: None,
            reclaim: None,
            mmap: None,
        };
        if on(Collector::Faults) || on(Collector::Swap) {
            // swap alone: only the faults that read from swap are counted
            let (tool, only) = match on(Collector::Faults) {
                true => ("ffaults", Only::All),
                false => ("swapin", Only::Swap),
            };
            trace.tool = tool;
            let swap_reads = on(Collector::Swap);
            loaded.faults = Some(FaultEngine::load(
                &mut storage.faults,
                trace,
                only,
                swap_reads,
                max_entries,
            )?);
        }
        if on(Collector::Oom) {
            trace.tool = "oomkill";
            // --cgroup selects the victims (by their memory cgroup, as
            // oomkill's does), not the tasks that trigger kills
            let cgroup = trace.filter.cgroup.take();
            let oom = oomkill::load(&mut storage.oom, trace);
            trace.filter.cgroup = cgroup;
            loaded.oom = Some(oom?);
        }
        if on(Collector::Reclaim) {
            trace.tool = "drsnoop";
            let kind = drsnoop::Kind::All;
            loaded.reclaim = Some(drsnoop::load(&mut storage.reclaim, trace, kind)?);
        }
        if on(Collector::Mmap) {
            trace.tool = "mmapsnoop";
            let options = mmapsnoop::Options {
                munmap: false,
                buffer_size: 1,
                count: Some(max_entries),
            };
            loaded.mmap = Some(mmapsnoop::load(&mut storage.mmap, trace, options)?);
        }
        trace.tool = NAME;
        Ok(loaded)
    }
}

/// How often the fault counts are read into the metrics (a scrape sees
/// counts at most this old).
const REFRESH: Duration = Duration::from_secs(1);

/// What the fault engine's counts add to: the fault, swap and file families.
struct FaultCounts {
    /// The faults collector runs (else only swap's families are fed).
    all: bool,
    top_files: TopFiles,
}

impl FaultCounts {
    fn add(&mut self, metrics: &Metrics, places: &RefCell<CgroupNames>, counts: &[FaultCount]) {
        let mut places = places.borrow_mut();
        for count in counts {
            let place = Place::from(places.field(count.cgroup));
            let process = || ProcessLabels {
                place: place.clone(),
                comm: count.comm.clone(),
            };
            if count.mapping == Mapping::SwapRead {
                let pages = metrics.swapin_pages.get_or_create(&process());
                pages.inc_by(count.count);
                continue;
            }
            if count.major && count.mapping.swaps() {
                let faults = metrics.swapin_faults.get_or_create(&process());
                faults.inc_by(count.count);
            }
            if self.all {
                let labels = FaultLabels {
                    place: place.clone(),
                    comm: count.comm.clone(),
                    kind: if count.major { "major" } else { "minor" },
                    mapping: count.mapping.name(),
                };
                metrics.faults.get_or_create(&labels).inc_by(count.count);
                self.top_files.add(count);
            }
        }
    }
}

/// --top-files N: the files with the most faults since serve started, the N
/// of them exported (file paths are unbounded: a file that leaves the N
/// leaves the metrics, and comes back with its whole count).
struct TopFiles {
    n: usize,
    totals: HashMap<String, u64>,
    /// What each exported file's counter holds.
    exported: HashMap<String, u64>,
}

/// How many files TopFiles remembers beyond the N it exports, at least.
const FILES_REMEMBERED: usize = 10_000;

impl TopFiles {
    fn new(n: usize) -> TopFiles {
        TopFiles {
            n,
            totals: HashMap::new(),
            exported: HashMap::new(),
        }
    }

    fn add(&mut self, count: &FaultCount) {
        // named files only: not [anon-shared], nor a file whose name was not read
        let named = matches!(count.mapping, Mapping::File | Mapping::Shmem);
        if self.n > 0 && named && !count.file.starts_with('[') {
            *self.totals.entry(count.file.clone()).or_default() += count.count;
        }
    }

    /// Brings the exported files up to date: the N largest totals.
    fn publish(&mut self, metrics: &Metrics) {
        if self.n == 0 {
            return;
        }
        let mut ranked: Vec<(&String, &u64)> = self.totals.iter().collect();
        ranked.sort_by(|(fa, a), (fb, b)| b.cmp(a).then_with(|| fa.cmp(fb)));
        let top: HashMap<String, u64> = ranked
            .iter()
            .take(self.n)
            .map(|(file, total)| ((*file).clone(), **total))
            .collect();
        let limit = (self.n * 10).max(FILES_REMEMBERED);
        if ranked.len() > limit {
            // the least faulted are forgotten: memory stays bounded
            let floor = *ranked[limit / 2].1;
            self.totals.retain(|_, total| *total > floor);
        }
        self.exported.retain(|file, _| {
            let kept = top.contains_key(file);
            if !kept {
                metrics
                    .file_faults
                    .remove(&FileLabels { file: file.clone() });
            }
            kept
        });
        for (file, total) in top {
            let seen = self.exported.entry(file.clone()).or_default();
            let counter = metrics.file_faults.get_or_create(&FileLabels { file });
            counter.inc_by(total - *seen);
            *seen = total;
        }
    }
}

fn count_kill(metrics: &Metrics, kill: &oomkill::KillRow) {
    let labels = OomLabels {
        place: Place::from(CgroupField::of_path(&kill.cgroup)),
        comm: kill.victim_comm.clone(),
        constraint: kill.constraint,
    };
    metrics.oom_kills.get_or_create(&labels).inc();
    let rss = kill.anon_rss + kill.file_rss + kill.shmem_rss;
    metrics.oom_victim_rss.get_or_create(&labels).inc_by(rss);
}

fn count_stall(metrics: &Metrics, places: &RefCell<CgroupNames>, stall: &drsnoop::Event) {
    let labels = ReclaimLabels {
        place: Place::from(places.borrow_mut().field(stall.cgroup)),
        kind: match stall.kind {
            drsnoop::StallKind::DRSNOOP_DIRECT => "direct",
            _ => "memcg",
        },
    };
    let seconds = stall.latency_ns as f64 / 1e9;
    metrics
        .reclaim_stalls
        .get_or_create(&labels)
        .observe(seconds);
    metrics
        .reclaim_pages
        .get_or_create(&labels)
        .inc_by(stall.pages);
}

/// The mmap collector's counts as last read (the kernel keeps the totals).
#[derive(Default)]
struct MmapCalls(HashMap<(u64, u32, [i8; 16]), u64>);

impl MmapCalls {
    /// Adds what each (cgroup, kind, name) counted since the last read.
    fn add(
        &mut self,
        metrics: &Metrics,
        places: &RefCell<CgroupNames>,
        counts: &dyn MapCore,
    ) -> Result<()> {
        let mut places = places.borrow_mut();
        for (key, total) in entries::<mmapsnoop::CountKey, u64>(counts)? {
            let seen = self
                .0
                .entry((key.cgroup, key.kind.0, key.comm))
                .or_default();
            if total <= *seen {
                continue;
            }
            let kind = match key.kind {
                mmapsnoop::MapKind::MMAPSNOOP_ANON => "anon",
                mmapsnoop::MapKind::MMAPSNOOP_SHMEM => "shmem",
                mmapsnoop::MapKind::MMAPSNOOP_FILE => "file",
                _ => "hugetlb",
            };
            let labels = MmapLabels {
                place: Place::from(places.field(key.cgroup)),
                comm: escape_c_chars(&key.comm),
                kind,
            };
            metrics
                .mmap_calls
                .get_or_create(&labels)
                .inc_by(total - *seen);
            *seen = total;
        }
        Ok(())
    }
}

/// What each collector's kernel side lost, as counted so far: the counters
/// grow by what is new.
#[derive(Default)]
struct Losses(HashMap<(&'static str, u32), u64>);

impl Losses {
    fn add(&mut self, metrics: &Metrics, collector: &'static str, object: &Object) -> Result<()> {
        for (reason, _, count) in drops::counts(object)? {
            let seen = self.0.entry((collector, reason.0)).or_default();
            if count > *seen {
                let labels = LossLabels {
                    collector,
                    reason: reason_label(reason),
                };
                metrics.lost.get_or_create(&labels).inc_by(count - *seen);
                *seen = count;
            }
        }
        Ok(())
    }
}

fn reason_label(reason: DropReason) -> &'static str {
    match reason {
        DropReason::MEMTRACE_DROP_RINGBUF => "ring_buffer_full",
        DropReason::MEMTRACE_DROP_PENDING => "too_many_in_flight",
        DropReason::MEMTRACE_DROP_COUNTS => "counting_map_full",
        DropReason::MEMTRACE_DROP_STACKS => "stack_store_full",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(file: &str, mapping: Mapping, count: u64) -> FaultCount {
        FaultCount {
            pid: 1,
            comm: "app".into(),
            file: file.into(),
            major: false,
            count,
            cgroup: 0,
            mapping,
        }
    }

    fn exported(metrics: &Metrics, file: &str) -> Option<u64> {
        let labels = FileLabels { file: file.into() };
        metrics
            .file_faults
            .get(&labels)
            .map(|counter| counter.get())
    }

    #[test]
    fn top_files_export_the_largest_and_drop_those_that_leave() {
        let metrics = Metrics::default();
        let mut top = TopFiles::new(2);
        top.add(&count("/a", Mapping::File, 5));
        top.add(&count("/b", Mapping::File, 3));
        top.add(&count("/c", Mapping::File, 1));
        // not files by name: left out
        top.add(&count("[anon-shared]", Mapping::Shmem, 100));
        top.add(&count("[anon]", Mapping::Anon, 50));
        top.publish(&metrics);
        assert_eq!(exported(&metrics, "/a"), Some(5));
        assert_eq!(exported(&metrics, "/b"), Some(3));
        assert_eq!(exported(&metrics, "/c"), None);
        assert_eq!(exported(&metrics, "[anon-shared]"), None);

        top.add(&count("/c", Mapping::File, 10));
        top.publish(&metrics);
        assert_eq!(exported(&metrics, "/c"), Some(11));
        assert_eq!(exported(&metrics, "/a"), Some(5));
        assert_eq!(exported(&metrics, "/b"), None);

        // back in the top: with its whole count
        top.add(&count("/b", Mapping::File, 20));
        top.publish(&metrics);
        assert_eq!(exported(&metrics, "/b"), Some(23));
        assert_eq!(exported(&metrics, "/c"), Some(11));
        assert_eq!(exported(&metrics, "/a"), None);
    }
}
