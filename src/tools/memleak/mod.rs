//! memleak: outstanding allocations by stack. User mode (`-p PID`,
//! `-- COMMAND`): uprobes on the allocator (allocator.rs), one multi-uprobe
//! session link. Kernel mode (no process given, or --kernel): the kmem
//! tracepoints. Reports, folded stacks and profiles: report.rs.

pub mod allocator;
mod report;

use std::cell::RefCell;
use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use libbpf_rs::skel::Skel;
use libbpf_rs::{MapCore, MapFlags, OpenObject, RingBuffer, RingBufferBuilder};
use nix::unistd::Pid;

use crate::analysis::proc_maps::{self, MapsEntry};
use crate::analysis::symbolize::StackSymbolizer;
use crate::cli::{parse_ring_mib, parse_seconds, usage_error, CommonArgs};
use crate::engine::detach;
use crate::engine::drops::{self, LossWatch};
use crate::engine::kernel;
use crate::engine::loader::{self, MapInAdvance, Trace};
use crate::engine::maps::{entries, take_entries};
use crate::engine::records::{self, ready_symbolizer, EXIT_MAPPINGS_PROGRAMS};
use crate::engine::session::{Session, Stop};
use crate::engine::skeleton::{DropReason, OpenSkeleton};
use crate::engine::target::{process_kind, CommandStop, HeldCommand, ProcessKind, Stopped, Target};
use crate::engine::unwind::{Unwind, UnwindArgs, UserStacks, Walker, UNWIND_PROGRAMS};
use crate::present::output::Output;

use allocator::{Allocators, CallPrograms, Mechanism};
use report::{print_trace_event, Moment, Profiles, Reporter};

crate::bpf_skeleton!("memleak", OpenMemleakSkel, records: [memleak_alloc, memleak_combined, memleak_event, memleak_key, memleak_probe_key, memleak_stack_key]);
use bpf::types::{memleak_event, memleak_key, memleak_stack_key};
use bpf::{MemleakSkel, MemleakSkelBuilder};

pub const ABOUT: &str =
    "Show outstanding allocations by stack: memory that was allocated and not freed";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SortBy {
    Size,
    Count,
}

#[derive(Parser, Debug)]
#[command(about = ABOUT, after_help = "\
Examples:
  memleak -p 181            # outstanding allocations of PID 181, every 5 seconds
  memleak -o 1000 -p 181    # only allocations older than a second
  memleak -s 10 -p 181      # trace one allocation in 10: cheaper
  memleak -- ./app          # run ./app; the report after it exits is symbolized")]
pub struct Args {
    // The positionals come before the shared options, so that the `-- COMMAND`
    // positional among those stays the last one, as clap requires.
    /// Seconds between reports
    #[arg(value_name = "INTERVAL", value_parser = parse_seconds, default_value = "5")]
    pub interval: Duration,

    /// Number of reports (default: until the end of the trace)
    #[arg(value_name = "COUNT")]
    pub count: Option<u64>,

    #[command(flatten)]
    pub common: CommonArgs,

    /// Print each allocation and free as it happens
    #[arg(short = 't', long)]
    pub trace: bool,

    /// Show each outstanding allocation's address and size too
    #[arg(short = 'a', long)]
    pub show_allocs: bool,

    /// Only allocations older than this many milliseconds
    #[arg(short = 'o', long, value_name = "MS", default_value_t = 500)]
    pub older: u64,

    /// Show the N largest stacks
    #[arg(short = 'T', long = "top", value_name = "N", default_value_t = 10)]
    pub top: usize,

    /// Ignore allocations smaller than this many bytes
    #[arg(short = 'z', long, value_name = "BYTES")]
    pub min_size: Option<u64>,

    /// Ignore allocations larger than this many bytes
    #[arg(short = 'Z', long, value_name = "BYTES")]
    pub max_size: Option<u64>,

    /// Trace one allocation in N (cheaper; sizes are not scaled)
    #[arg(short = 's', long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub sample_rate: u32,

    /// Source file and line of each frame, and the functions inlined
    /// there, where debug information exists (the file's own, or a separate
    /// one under /usr/lib/debug: Debian's -dbg and -dbgsym packages)
    #[arg(long)]
    pub source: bool,

    /// Report totals by stack only (faster with many allocations; ignores -o)
    #[arg(long)]
    pub combined_only: bool,

    /// Sort stacks by outstanding bytes or by allocation count
    #[arg(long, value_enum, default_value_t = SortBy::Size)]
    pub sort: SortBy,

    /// Print folded stacks (`outer;...;inner bytes`) instead of the report
    #[arg(long, conflicts_with = "json")]
    pub folded: bool,

    /// At the end, write a flame graph of the outstanding bytes to FILE (SVG)
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,

    /// At the end, write the outstanding allocations to FILE as a gzipped pprof
    /// profile (inuse_space, inuse_objects)
    #[arg(long, value_name = "FILE")]
    pub pprof: Option<PathBuf>,

    /// At each report, write the outstanding allocations to a new pprof file
    /// in DIR, memleak-YYYYMMDDTHHMMSS.mmmZ.pb.gz (UTC), for a profile
    /// collector to pick up (and remove)
    #[arg(long, value_name = "DIR")]
    pub profiles: Option<PathBuf>,

    /// Distinct stacks the kernel can hold, and their running totals;
    /// raise it if stacks are lost (default: 65536 for a process and its
    /// children, whose stacks are each their own; 16384 in kernel mode,
    /// where they are made up front)
    #[arg(long, value_name = "N")]
    pub stack_storage_size: Option<u32>,

    /// Ring buffer for -t's events, in MiB (a power of two): raise it if
    /// events are lost
    #[arg(long, value_name = "MIB", default_value_t = 4, value_parser = parse_ring_mib)]
    pub buffer_size: u32,

    #[command(flatten)]
    pub stacks: UnwindArgs,

    /// Outstanding allocations the kernel can hold
    #[arg(long, value_name = "N", default_value_t = 1 << 20)]
    pub max_allocs: u32,

    /// Treat an address allocated again as freed (for allocators that free by
    /// paths the probes don't see)
    #[arg(long)]
    pub wa_missing_free: bool,

    /// Kernel allocations (the default without -p or a command); with -p or a
    /// command, those made while that process runs
    #[arg(long)]
    pub kernel: bool,

    /// Kernel mode: per-CPU allocations too
    #[arg(long)]
    pub percpu: bool,

    /// The allocator library (default: every allocator in the target's
    /// mappings: libc, jemalloc, tcmalloc, mimalloc, libstdc++'s operator
    /// new, the program's own)
    #[arg(short = 'O', long = "obj", value_name = "OBJ")]
    pub object: Option<PathBuf>,

    /// Prefix of the allocator's symbols (default: none, and je_ for a
    /// jemalloc built with it)
    #[arg(long, value_name = "PREFIX", default_value = "")]
    pub symbols_prefix: String,

    /// How allocator calls are probed (default: the cheapest this kernel
    /// has: session uprobes on 6.13+, multi-uprobe links on 6.6+, classic
    /// uprobes on 5.15+; `memtrace doctor` says which)
    #[arg(long, value_enum, value_name = "KIND")]
    pub uprobes: Option<Mechanism>,
}

/// The `-T` of BCC's memleak is --top here: the shared -T/--timestamp keeps its long form only.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    Args::command().mut_arg("timestamp", |arg| arg.short(None))
}

/// The kernel-mode programs (the kmem tracepoints).
const KERNEL_PROGRAMS: &[&str] = &[
    "memleak_kmalloc",
    "memleak_kmem_cache_alloc",
    "memleak_page_alloc",
    "memleak_kfree",
    "memleak_kmem_cache_free",
    "memleak_page_free",
];
/// And with --percpu: the free, and the allocation's program for the
/// tracepoint's arguments (PERCPU_ALLOC_ARGS, or those before call_site).
const PERCPU_FREE: &str = "memleak_percpu_free";
const PERCPU_ALLOC: &str = "memleak_percpu_alloc";
const PERCPU_ALLOC_WITHOUT_CALLER: &str = "memleak_percpu_alloc_without_caller";
/// percpu_alloc_percpu's arguments since it passes its call_site (5.10's
/// has 7, without it).
const PERCPU_ALLOC_ARGS: usize = 8;

/// What was lost, and what to do about it.
const DROP_HINTS: &[(DropReason, &str)] = &[
    (DropReason::MEMTRACE_DROP_COUNTS, MAX_ALLOCS_HINT),
    (
        DropReason::MEMTRACE_DROP_PENDING,
        "allocator calls of more than 16384 threads at once, or execs and loads of more \
         than 1024 processes between two looks",
    ),
    (
        DropReason::MEMTRACE_DROP_STACKS,
        "raise --stack-storage-size",
    ),
    (
        DropReason::MEMTRACE_DROP_RINGBUF,
        "-t's events (raise --buffer-size), or exited processes' mappings",
    ),
];

/// What a full allocation map loses, and what to do about it.
const MAX_ALLOCS_HINT: &str = "allocations not tracked: raise --max-allocs";

/// Keys of the totals map that are not stacks: the errnos a stack's key may be.
const ERRNO_KEYS: u32 = 16;

/// --stack-storage-size's default for a process and its children: the same
/// code in two programs, or in two runs of one, is at other addresses, so
/// each child that execs brings stacks of its own (a pyenv shim's forty
/// shell processes and its python saw ~39,000).
const USER_STACKS: u32 = 1 << 16;

/// Entries of probe_cookies where the kernel has no BPF cookies: ~30 probes
/// a process, for a thousand processes probed at once (those that end are
/// forgotten).
const PROBE_COOKIES: u32 = 32 * 1024;

/// And in kernel mode, where the store is made up front (~1 KiB a stack).
const KERNEL_STACKS: u32 = 1 << 14;

pub fn run(args: Args) -> Result<i32> {
    if let Some(conflict) = size_conflict(&args) {
        return Ok(usage_error(&conflict));
    }
    let kernel_mode = kernel_mode(&args)?;
    // user mode: the cheapest uprobes this kernel has
    let mechanism = match kernel_mode {
        true => None,
        false => Some(Mechanism::choose(args.uprobes)?),
    };
    let allocs = allocs_map(&args, kernel_mode);
    // reserved first: a path that can't be written fails before the trace
    let profiles = Profiles::reserve(&args)?;
    // -p checked (a missing pid is said as every tool says it) before the
    // allocator is looked for in it
    let mut trace = Trace::prepare(&args.common)?;
    let mut allocators = if kernel_mode {
        None
    } else {
        Allocators::find(&args, &mut trace.target)?
    };
    // kernel mode's stacks are the kernel's (said once the target is
    // known good: a refusal is one line)
    let unwind = match kernel_mode {
        true => Unwind::Fp,
        false => args.stacks.resolve(args.common.tool, Walker::Probe)?,
    };
    let pid = match &trace.target {
        Target::Pids(processes) => processes[0].pid as i32,
        Target::Command(cmd) => cmd.pid.as_raw(),
        Target::All => -1,
    };
    let mut storage = MaybeUninit::uninit();
    let skel = load(&mut storage, &mut trace, &args, mechanism, unwind, allocs)?;
    let progs = mechanism.map(|mechanism| call_programs(&skel, mechanism));
    if let (Some(allocators), Some(progs)) = (&mut allocators, &progs) {
        let started = Instant::now();
        allocators.attach(progs, Pid::from_raw(pid))?;
        // a command's loader stops it at each dlopen (on_stop); a -p
        // process's is noted, and what it mapped looked at after the next
        // poll (follow_loads)
        allocators.watch_loads(Pid::from_raw(pid), progs)?;
        if args.common.verbose {
            crate::say!(
                "memleak: {} attached in {:.0} ms",
                progs.mechanism.described(),
                started.elapsed().as_secs_f64() * 1e3
            );
        }
    }
    let allocators = RefCell::new(allocators);
    let user_stacks = UserStacks::start(skel.object(), &[pid as u32], unwind)?;
    // declared before the ring buffer, whose callbacks borrow them
    let traced = RefCell::new(Output::new(args.common.json));
    let symbolizer = RefCell::new(StackSymbolizer::new(args.source));
    // the target's mappings as it starts: the last known, should it be gone
    // before a report with no exit record (before 6.7) and no exec or load
    // read them since (a static program has neither)
    if !kernel_mode && !records::exit_mappings_sent() {
        if let Ok(maps) = proc_maps::read_maps(pid as u32) {
            symbolizer.borrow_mut().note_mappings(pid as u32, &maps);
        }
    }
    let ring = ring_buffers(
        &skel,
        &symbolizer,
        args.trace.then_some(&traced),
        &user_stacks,
    )?;
    let catch_up = || user_stacks.catch_up(&skel.maps.stack_store, &symbolizer);

    let mut out = Output::new(args.common.json);
    let mut reporter = Reporter::new(&args, &skel, kernel_mode, pid, profiles);
    let what = if kernel_mode {
        "kernel allocations"
    } else {
        "allocations"
    };
    let mut session = Session::start(trace, Some(args.interval), what)?;
    session.max_reports = args.count;
    // allocations the full map could not hold are said as they start: the
    // reports under-count from then on (a perl's million outstanding)
    let watch = RefCell::new(LossWatch::new(
        args.common.tool,
        DropReason::MEMTRACE_DROP_COUNTS,
        MAX_ALLOCS_HINT,
    ));
    // a command's execs are followed (on_stop); a -p process's are said
    let followed = !args.common.command.is_empty();
    let said_exec = RefCell::new(false);
    // the symbolizer told of the processes a report shows (those gone
    // too), the deferred stacks unwound
    let ready = |pids: &[u32]| {
        ready_symbolizer(&symbolizer, &ring, pids.iter().copied());
        catch_up();
    };
    let mut report = |out: &mut Output, moment: Moment| {
        forget_execs(&skel, followed, &mut said_exec.borrow_mut())?;
        let mut watch = watch.borrow_mut();
        watch.check(skel.object(), true)?;
        watch.end_interval();
        reporter.print(out, &symbolizer, moment, ready)
    };
    // A command, or a child of it, that execs another program (a wrapper
    // script's exec, a shell running one): its loader followed as at the
    // start, the unwinder given each step's mappings, the new program's
    // allocators probed. One that dlopens objects: stopped by the BPF side
    // once they are mapped, the same. A fork: the child probed as its
    // parent is, before it runs; its probes go when it ends.
    let on_stop = |cmd: &mut HeldCommand, stopped: Stopped| -> Result<()> {
        let mut allocators = allocators.borrow_mut();
        let Some(allocators) = allocators.as_mut() else {
            return Ok(());
        };
        let pid = stopped.pid;
        let mapped = |maps: &[MapsEntry]| note_mappings(&user_stacks, &symbolizer, pid, maps);
        let Some(progs) = &progs else {
            return Ok(());
        };
        let looked = match stopped.stop {
            // (the old program's allocations: forget_execs, as for -p)
            CommandStop::Exec => allocators
                .follow_exec(&args, cmd, pid, mapped, progs)
                .and_then(|()| allocators.watch_loads(pid, progs)),
            CommandStop::Load => allocators.follow_load(&args, pid, mapped, progs),
            CommandStop::Fork { child } => {
                // the child is a copy of its parent until it execs: its
                // mappings, read while it is stopped, name its stacks if it
                // ends before a report without an exit record
                if let Ok(maps) = proc_maps::read_maps(child.as_raw() as u32) {
                    symbolizer
                        .borrow_mut()
                        .note_mappings(child.as_raw() as u32, &maps);
                }
                allocators.follow_fork(pid, child, progs)
            }
            CommandStop::Exited => {
                allocators.forget(pid, progs);
                Ok(())
            }
        };
        match looked {
            // a child killed meanwhile: its end is on its way
            Err(_) if pid != cmd.pid && !is_running(pid) => Ok(()),
            other => other,
        }
    };
    let stop = session.run_following(
        Some(&ring),
        || {
            forget_execs(&skel, followed, &mut said_exec.borrow_mut())?;
            if let Some(progs) = &progs {
                follow_loads(
                    &skel,
                    &args,
                    allocators.borrow_mut().as_mut(),
                    progs,
                    &user_stacks,
                    &symbolizer,
                )?;
            }
            catch_up();
            watch.borrow_mut().check(skel.object(), false)?;
            traced.borrow_mut().finish_batch()
        },
        || report(&mut out, Moment::Interval),
        on_stop,
    )?;
    // The trace is over. The uprobes' removal waits for the kernel (~20 ms),
    // which a process of its own does after memtrace exits (engine::detach);
    // until then they see no traced process, and count nothing more: the
    // report sees the allocations as they stood at the end.
    if let Some(allocators) = allocators.into_inner() {
        for tgid in skel.maps.traced_tgids.keys() {
            let _ = skel.maps.traced_tgids.delete(&tgid);
        }
        detach::close_after_exit(allocators.into_links());
    }
    match stop {
        Stop::Reports => {}
        Stop::CommandExited(_) | Stop::TargetsExited => report(&mut out, Moment::TargetGone)?,
        Stop::Signal(_) | Stop::Duration => report(&mut out, Moment::End)?,
    }
    reporter.write_profiles(&symbolizer, ready)?;
    drop(ring);
    reporter.warn_lost_stacks();
    user_stacks.say_lost(args.common.tool);
    drops::report(args.common.tool, skel.object(), DROP_HINTS)?;
    Ok(session.exit_code(stop))
}

/// Traced processes that exec'd, each at its time (bpf_ktime_get_ns's
/// clock): their old programs' allocations, made before, went with their
/// address spaces; they are forgotten, and taken out of the totals by stack
/// (else they would stay outstanding, on stacks of addresses no mapping
/// holds any more).
fn forget_before_execs(skel: &MemleakSkel<'_>, execs: &HashMap<u32, u64>) -> Result<()> {
    let allocs = &skel.maps.allocs;
    for (key, alloc) in entries::<memleak_key, bpf::types::memleak_alloc>(allocs)? {
        let tgid = key.tgid;
        if execs
            .get(&tgid)
            .is_none_or(|&exec_ns| alloc.time_ns > exec_ns)
        {
            continue;
        }
        // SAFETY: plain C structs without padding (memleak.h)
        let _ = allocs.delete(unsafe { plain::as_bytes(&key) });
        let stack = memleak_stack_key {
            stack: alloc.stack,
            tgid,
            ..Default::default()
        };
        // SAFETY: as above
        let stack = unsafe { plain::as_bytes(&stack) };
        let combined = &skel.maps.combined;
        let Some(raw) = combined.lookup(stack, MapFlags::ANY)? else {
            continue;
        };
        let mut totals = bpf::types::memleak_combined::default();
        if plain::copy_from_bytes(&mut totals, &raw).is_ok() {
            totals.bytes = totals.bytes.saturating_sub(alloc.size);
            totals.allocs = totals.allocs.saturating_sub(1);
            // SAFETY: a plain C struct of two u64s, no padding
            let bytes = unsafe { plain::as_bytes(&totals) };
            combined.update(stack, bytes, MapFlags::ANY)?;
        }
    }
    Ok(())
}

/// The execs the BPF side saw since the last look (after each poll, before
/// each report): each process's old allocations forgotten, all in one pass
/// over the map. A `-- COMMAND` (or its child) was stopped at its exec and
/// its new program's allocators probed (follow_exec); a `-p` process's are
/// probed later (follow_loads): said once.
fn forget_execs(skel: &MemleakSkel<'_>, followed: bool, said: &mut bool) -> Result<()> {
    let execs: HashMap<u32, u64> = take_entries::<u32, u64>(&skel.maps.execs)?
        .into_iter()
        .collect();
    if execs.is_empty() {
        return Ok(());
    }
    forget_before_execs(skel, &execs)?;
    if let Some(tgid) = execs.keys().next().filter(|_| !followed && !*said) {
        *said = true;
        crate::say!(
            "memleak: PID {tgid} exec'd another program: what it allocated before is \
             forgotten; the allocators its new program maps are probed once its loader has \
             mapped them, and what it allocates before is not seen (-- COMMAND follows an \
             exec from its start)"
        );
    }
    Ok(())
}

/// The processes whose loader mapped objects without stopping for memtrace
/// (a -p process's dlopens, and the program it execs): the allocators among
/// them probed now, the process having gone on meanwhile (what it allocated
/// with them before is not seen).
fn follow_loads(
    skel: &MemleakSkel<'_>,
    args: &Args,
    allocators: Option<&mut Allocators>,
    progs: &CallPrograms,
    user_stacks: &UserStacks<'_>,
    symbolizer: &RefCell<StackSymbolizer>,
) -> Result<()> {
    let Some(allocators) = allocators else {
        return Ok(());
    };
    for (tgid, _) in take_entries::<u32, u8>(&skel.maps.loads)? {
        let pid = Pid::from_raw(tgid as i32);
        let mapped = |maps: &[MapsEntry]| note_mappings(user_stacks, symbolizer, pid, maps);
        match allocators.follow_load(args, pid, mapped, progs) {
            // gone meanwhile
            Err(_) if !is_running(pid) => {}
            other => other?,
        }
    }
    Ok(())
}

/// Process `pid`'s mappings, read as its loader went (an exec, a dlopen):
/// for the unwinder's tables, and as the last known for the symbolizer, for
/// a process gone before a report without an exit record (before 6.7).
fn note_mappings(
    user_stacks: &UserStacks<'_>,
    symbolizer: &RefCell<StackSymbolizer>,
    pid: Pid,
    maps: &[MapsEntry],
) {
    let pid = pid.as_raw() as u32;
    user_stacks.set_mappings(pid, maps);
    symbolizer.borrow_mut().note_mappings(pid, maps);
}

/// Whether process `pid` is still there to trace (not gone, not a zombie).
fn is_running(pid: Pid) -> bool {
    matches!(process_kind(pid.as_raw() as u32), Ok(ProcessKind::User))
}

/// The map of outstanding allocations, made while the trace is prepared.
/// Preallocated in kernel mode only: there the BPF allocator's refills of a
/// map made as entries come are kmallocs, which kernel mode would trace, each
/// wanting an entry in turn; in user mode a million entries made up front
/// took the kernel 30-38 ms.
fn allocs_map(args: &Args, kernel_mode: bool) -> MapInAdvance {
    let flags = if kernel_mode {
        0
    } else {
        libbpf_sys::BPF_F_NO_PREALLOC
    };
    let sizes = (
        std::mem::size_of::<memleak_key>() as u32,
        std::mem::size_of::<bpf::types::memleak_alloc>() as u32,
    );
    MapInAdvance::hash("allocs", sizes, args.max_allocs, flags)
}

/// -z above -Z traces nothing: said as a usage error.
fn size_conflict(args: &Args) -> Option<String> {
    match (args.min_size, args.max_size) {
        (Some(min), Some(max)) if min > max => Some(format!(
            "-z/--min-size {min} is above -Z/--max-size {max}: nothing would be traced"
        )),
        _ => None,
    }
}

/// Kernel allocations (--kernel, or no process given), or one process's.
fn kernel_mode(args: &Args) -> Result<bool> {
    let kernel_mode =
        args.kernel || (args.common.pids.is_empty() && args.common.command.is_empty());
    if kernel_mode && args.uprobes.is_some() {
        bail!("--uprobes is for user mode (-p PID or -- COMMAND): kernel mode uses no uprobes");
    }
    if !kernel_mode && args.common.pids.len() > 1 {
        bail!("memleak traces one process in user mode: give -p once");
    }
    Ok(kernel_mode)
}

/// The skeleton with the options as its globals, the mode's programs, and its maps sized.
fn load<'obj>(
    storage: &'obj mut MaybeUninit<OpenObject>,
    trace: &mut Trace,
    args: &Args,
    mechanism: Option<Mechanism>,
    unwind: Unwind,
    allocs: MapInAdvance,
) -> Result<MemleakSkel<'obj>> {
    let kernel_mode = mechanism.is_none();
    let pre517 = mechanism.is_some_and(Mechanism::pre517);
    loader::load(
        MemleakSkelBuilder::default(),
        storage,
        trace,
        |open, programs| {
            let rodata = open.rodata()?;
            rodata.min_size = args.min_size.unwrap_or(0);
            rodata.max_size = args.max_size.unwrap_or(0);
            rodata.sample_rate = args.sample_rate;
            rodata.trace_all = args.trace;
            rodata.wa_missing_free = args.wa_missing_free;
            // a command is under ptrace (HeldCommand::follow_execs): its
            // dlopens stop it until their allocators are probed
            rodata.stop_at_loads = !kernel_mode && !args.common.command.is_empty();
            let cfi = unwind == Unwind::Cfi;
            rodata.unwind_cfi = cfi;
            let percpu = kernel_mode && args.percpu;
            let with_caller = kernel::btf_tracepoint_args("percpu_alloc_percpu")
                .is_none_or(|n| n >= PERCPU_ALLOC_ARGS);
            programs
                .load_if(!kernel_mode, &["memleak_exec"])
                .load_if(
                    !kernel_mode && records::exit_mappings_sent(),
                    EXIT_MAPPINGS_PROGRAMS,
                )
                .load_if(mechanism == Some(Mechanism::Session), &["memleak_call"])
                .load_if(
                    mechanism == Some(Mechanism::Multi),
                    &["memleak_multi_entry", "memleak_multi_return"],
                )
                .load_if(
                    mechanism == Some(Mechanism::Classic) && !pre517,
                    &["memleak_entry", "memleak_return"],
                )
                .load_if(pre517, &["memleak_entry_pre517", "memleak_return_pre517"])
                .load_if(cfi, UNWIND_PROGRAMS)
                .load_if(kernel_mode, KERNEL_PROGRAMS)
                .load_if(percpu, &[PERCPU_FREE])
                .load_if(percpu && with_caller, &[PERCPU_ALLOC])
                .load_if(percpu && !with_caller, &[PERCPU_ALLOC_WITHOUT_CALLER]);
            let stacks = args.stack_storage_size.unwrap_or(match kernel_mode {
                true => KERNEL_STACKS,
                false => USER_STACKS,
            });
            loader::set_entries(&mut open.maps.stack_store, stacks)?;
            // a total per process and stack kept, and per key that says why
            // none was (-ENOSPC, -EFAULT); forked children share their
            // parent's stacks, each with totals of its own, and a full map
            // is said as the store's is. (Four times as many cost `-p` 11
            // ms more to attach: the kernel makes a map's buckets up front.)
            let totals = stacks.saturating_add(ERRNO_KEYS);
            loader::set_entries(&mut open.maps.combined, totals)?;
            let ring = if args.trace { args.buffer_size } else { 1 };
            loader::set_ring_buffer_size(&mut open.maps.trace_events, ring)?;
            let maps = &mut open.maps;
            args.stacks
                .size_maps(unwind, &mut maps.unwind_rows, &mut maps.unwind_pages)?;
            allocs.reuse_for(&mut open.maps.allocs)?;
            // a cookie a probe (libc's 25 and the loader's), for the command
            // and the children probed at once; with BPF cookies, no map
            // (its uses are dead code)
            open.maps.probe_cookies.set_autocreate(pre517)?;
            loader::set_entries(&mut open.maps.probe_cookies, PROBE_COOKIES)?;
            if kernel_mode {
                // the BPF allocator's refills of maps made as entries come are
                // kmallocs, which kernel mode would trace (see memleak.bpf.c)
                loader::preallocate(&mut open.maps.stack_store)?;
                loader::preallocate(&mut open.maps.combined)?;
            }
            Ok(())
        },
    )
}

/// The programs `mechanism` attaches (loaded by `load`).
fn call_programs<'a, 'obj>(
    skel: &'a MemleakSkel<'obj>,
    mechanism: Mechanism,
) -> CallPrograms<'a, 'obj> {
    let progs = &skel.progs;
    let (entry, ret) = match mechanism {
        Mechanism::Session => (&progs.memleak_call, &progs.memleak_call),
        Mechanism::Multi => (&progs.memleak_multi_entry, &progs.memleak_multi_return),
        Mechanism::Classic if mechanism.pre517() => {
            (&progs.memleak_entry_pre517, &progs.memleak_return_pre517)
        }
        Mechanism::Classic => (&progs.memleak_entry, &progs.memleak_return),
    };
    CallPrograms {
        mechanism,
        entry,
        ret,
        cookies: mechanism.pre517().then_some(&skel.maps.probe_cookies),
    }
}

/// The exiting processes' mappings (for the symbolizer) and, with -t, each
/// allocation and free (printed to `traced` as they come).
fn ring_buffers<'a>(
    skel: &'a MemleakSkel<'_>,
    symbolizer: &'a RefCell<StackSymbolizer>,
    traced: Option<&'a RefCell<Output>>,
    user_stacks: &'a UserStacks<'_>,
) -> Result<RingBuffer<'a>> {
    let mut builder = RingBufferBuilder::new();
    user_stacks.add_to(&mut builder, symbolizer, crate::stack_maps!(skel.maps))?;
    if let Some(traced) = traced {
        builder.add(&skel.maps.trace_events, |data| {
            let mut traced = traced.borrow_mut();
            let written = print_trace_event(&mut traced, &records::decode::<memleak_event>(data));
            traced.callback_status(written)
        })?;
    }
    builder.build().context("setting up the ring buffer")
}
