//! memleak: outstanding allocations by stack. User mode (`-p PID`,
//! `-- COMMAND`): uprobes on the allocator, one multi-uprobe session link.
//! Kernel mode (no process given, or --kernel): the kmem tracepoints.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use blazesym::inspect::source::{Elf, Source};
use blazesym::inspect::Inspector;
use clap::{Parser, ValueEnum};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, RingBufferBuilder, UprobeMultiOpts};
use serde_json::json;

use crate::cli::{parse_seconds, CommonArgs};
use crate::events::{monotonic_ns, Session};
use crate::output::{wall_clock_hms, Output};
use crate::symbolize::StackSymbolizer;
use crate::target::Target;
use crate::{kernel, probe_site, set_filter_rodata, skel};

crate::bpf_skeleton!("memleak");
use bpf::types::{
    exitmaps_mapping, memleak_alloc, memleak_combined, memleak_event, memtrace_stack,
};
use bpf::MemleakSkelBuilder;

// SAFETY: C structs of integers and byte arrays: every bit pattern is valid.
unsafe impl plain::Plain for exitmaps_mapping {}
// SAFETY: as above.
unsafe impl plain::Plain for memleak_alloc {}
// SAFETY: as above.
unsafe impl plain::Plain for memleak_combined {}
// SAFETY: as above.
unsafe impl plain::Plain for memleak_event {}
// SAFETY: as above.
unsafe impl plain::Plain for memtrace_stack {}

pub const ABOUT: &str =
    "Show outstanding allocations by stack: memory that was allocated and not freed";

/// enum memleak_func in memleak.h: (name, cookie).
const FUNCS: &[(&str, u64)] = &[
    ("malloc", 0),
    ("calloc", 1),
    ("realloc", 2),
    ("free", 3),
    ("posix_memalign", 4),
    ("memalign", 5),
    ("aligned_alloc", 6),
    ("valloc", 7),
    ("pvalloc", 8),
    ("mmap", 9),
    ("munmap", 10),
    ("mremap", 11),
];

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
    #[arg(short = 's', long, value_name = "N", default_value_t = 1)]
    pub sample_rate: u32,

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

    /// Distinct stacks the kernel can hold; raise it if stacks are lost
    #[arg(long, value_name = "N", default_value_t = 16384)]
    pub stack_storage_size: u32,

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

    /// The allocator library (default: the target's libc)
    #[arg(short = 'O', long = "obj", value_name = "OBJ")]
    pub object: Option<PathBuf>,

    /// Prefix of the allocator's symbols (je_ for jemalloc's je_malloc, ...)
    #[arg(long, value_name = "PREFIX", default_value = "")]
    pub symbols_prefix: String,
}

/// The `-T` of BCC's memleak is --top here: the shared -T/--timestamp keeps its long form only.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    Args::command().mut_arg("timestamp", |arg| arg.short(None))
}

/// The libc a process uses, from its maps (memtrace's own for a command not started yet).
fn find_libc(pid: Option<u32>) -> Result<PathBuf> {
    let maps_path = match pid {
        Some(pid) => format!("/proc/{pid}/maps"),
        None => "/proc/self/maps".into(),
    };
    let maps =
        std::fs::read_to_string(&maps_path).with_context(|| format!("reading {maps_path}"))?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| {
            Path::new(path)
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libc.so") || n.starts_with("libc-"))
        })
        .map(PathBuf::from)
        .context("no libc in the target's mappings: name the allocator library with -O")
}

/// (name, file offset, cookie) of the allocator functions in `object`; those it lacks are skipped.
fn resolve_functions(object: &Path, prefix: &str) -> Result<Vec<(String, u64, u64)>> {
    let inspector = Inspector::new();
    let names: Vec<String> = FUNCS.iter().map(|(n, _)| format!("{prefix}{n}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut elf = Elf::new(object);
    elf.debug_syms = false; // the ELF symbol tables (.dynsym is all Debian's libc has)
    let found = inspector
        .lookup(&Source::Elf(elf), &refs)
        .with_context(|| format!("reading the symbols of {}", object.display()))?;
    let mut file = File::open(object).with_context(|| format!("opening {}", object.display()))?;
    let mut functions = Vec::new();
    let mut missing = Vec::new();
    for ((name, syms), &(_, cookie)) in names.iter().zip(found).zip(FUNCS) {
        match syms.iter().find_map(|s| s.file_offset) {
            Some(offset) => {
                let site = cheap_probe_site(&mut file, offset)
                    .with_context(|| format!("reading {name} in {}", object.display()))?;
                functions.push((name.clone(), offset + site, cookie));
            }
            None => missing.push(name.clone()),
        }
    }
    if !missing.is_empty() {
        eprintln!(
            "memleak: {} has no {}: not traced",
            object.display(),
            missing.join(", ")
        );
    }
    if functions.is_empty() {
        bail!("{} has none of the allocator functions", object.display());
    }
    Ok(functions)
}

/// How far into the function at `offset` its uprobe can go and cost one trap
/// instead of two (see probe_site).
fn cheap_probe_site(file: &mut File, offset: u64) -> std::io::Result<u64> {
    let mut code = Vec::with_capacity(probe_site::PROLOGUE_BYTES);
    file.seek(SeekFrom::Start(offset))?;
    file.take(probe_site::PROLOGUE_BYTES as u64)
        .read_to_end(&mut code)?;
    Ok(probe_site::emulated_site(&code))
}

/// The kernel-mode programs: (name, needs --percpu).
const KERNEL_PROGRAMS: &[(&str, bool)] = &[
    ("memleak_kmalloc", false),
    ("memleak_kmem_cache_alloc", false),
    ("memleak_page_alloc", false),
    ("memleak_kfree", false),
    ("memleak_kmem_cache_free", false),
    ("memleak_page_free", false),
    ("memleak_percpu_alloc", true),
    ("memleak_percpu_free", true),
];

pub fn run(args: Args) -> Result<i32> {
    let kernel_mode =
        args.kernel || (args.common.pids.is_empty() && args.common.command.is_empty());
    if !kernel_mode && args.common.pids.len() > 1 {
        bail!("memleak traces one process in user mode: give -p once");
    }
    let user = if kernel_mode {
        None
    } else {
        let object = match &args.object {
            Some(path) => path.clone(),
            None => find_libc(args.common.pids.first().copied())?,
        };
        let functions = resolve_functions(&object, &args.symbols_prefix)?;
        Some((object, functions))
    };
    let (target, filter) = skel::prepare(&args.common)?;
    let pid = match &target {
        Target::Pids(pids) => pids[0] as i32,
        Target::Command(cmd) => cmd.pid.as_raw(),
        Target::All => -1,
    };

    let mut storage = MaybeUninit::uninit();
    let mut open = MemleakSkelBuilder::default()
        .open(&mut storage)
        .context("opening the BPF object")?;
    set_filter_rodata!(open, &filter);
    {
        let rodata = open
            .maps
            .rodata_data
            .as_deref_mut()
            .context("BPF object has no .rodata")?;
        rodata.min_size = args.min_size.unwrap_or(0);
        rodata.max_size = args.max_size.unwrap_or(0);
        rodata.sample_rate = args.sample_rate.max(1);
        rodata.trace_all = args.trace;
        rodata.wa_missing_free = args.wa_missing_free;
    }
    let object = open.open_object_mut();
    skel::choose_common_programs(object, &filter)?;
    skel::set_autoload(object, "memleak_call", !kernel_mode)?;
    skel::set_autoload(object, "exitmaps_send_mappings", !kernel_mode)?;
    for (prog, percpu) in KERNEL_PROGRAMS {
        skel::set_autoload(object, prog, kernel_mode && (!percpu || args.percpu))?;
    }
    open.maps
        .stack_store
        .set_max_entries(args.stack_storage_size.max(1))
        .context("sizing the stack map")?;
    open.maps
        .allocs
        .set_max_entries(args.max_allocs.max(1))
        .context("sizing the allocation map")?;
    kernel::check_attach_points(open.open_object())?;
    let mut skel = open.load().context(skel::LOAD_FAILED)?;
    skel::fill_traced_tgids(skel.object(), &target)?;
    skel.attach().context(skel::ATTACH_FAILED)?;

    // One session link for every function: each single uprobe link takes
    // ~0.1 s to remove here, a multi link ~20-35 ms.
    let _link = match &user {
        Some((object, functions)) => {
            let opts = UprobeMultiOpts {
                offsets: functions.iter().map(|f| f.1 as usize).collect(),
                cookies: functions.iter().map(|f| f.2).collect(),
                session: true,
                ..Default::default()
            };
            let link = skel
                .progs
                .memleak_call
                .attach_uprobe_multi_with_opts(pid, object, "", opts)
                .with_context(|| format!("attaching uprobes to {}", object.display()))?;
            Some(link)
        }
        None => None,
    };

    // declared before the ring buffer, whose callbacks borrow them
    let traced = RefCell::new(Output::new(args.common.json));
    let symbolizer = RefCell::new(StackSymbolizer::new(false));
    let mut builder = RingBufferBuilder::new();
    builder.add(&skel.maps.mappings, |data| {
        crate::record_exit_mapping!(symbolizer.borrow_mut(), exitmaps_mapping, data);
        0
    })?;
    if args.trace {
        builder.add(&skel.maps.trace_events, |data| {
            let mut event = memleak_event::default();
            if plain::copy_from_bytes(&mut event, data).is_err() {
                return 0;
            }
            let mut traced = traced.borrow_mut();
            let written = print_trace_event(&mut traced, &event);
            traced.callback_status(written)
        })?;
    }
    let ring = builder.build().context("setting up the ring buffer")?;

    let mut out = Output::new(args.common.json);
    let what = if kernel_mode {
        "kernel allocations"
    } else {
        "allocations"
    };
    let mut session = Session::start(target, args.common.duration, Some(args.interval), what)?;
    session.max_reports = args.count;
    // what is outstanding now: each allocation (filtered by -o), or the kernel's totals by stack
    let current_rows = || {
        if args.combined_only {
            combined_rows(&skel.maps.combined)
        } else {
            outstanding_rows(&skel.maps.allocs, args.older)
        }
    };
    let frames = |symbolizer: &mut StackSymbolizer, id: i64| {
        stack_frames(
            symbolizer,
            &skel.maps.stack_store,
            kernel_mode,
            pid as u32,
            id,
        )
    };
    // outstanding allocations whose stack could not be stored, at the last report
    let lost_allocs = std::cell::Cell::new(0u64);
    let report = |out: &mut Output| -> Result<()> {
        let rows = current_rows()?;
        lost_allocs.set(
            rows.iter()
                .filter(|(id, _)| **id == -i64::from(libc::ENOSPC))
                .map(|(_, row)| row.allocs)
                .sum(),
        );
        let mut symbolizer = symbolizer.borrow_mut();
        symbolizer.refresh();
        print_report(out, &args, &mut symbolizer, frames, pid, rows)?;
        out.flush()
    };
    let stop = session.run(
        Some(&ring),
        || traced.borrow_mut().finish_batch(),
        || report(&mut out),
    )?;
    if stop != crate::events::Stop::Reports {
        report(&mut out)?;
    }
    if args.svg.is_some() || args.pprof.is_some() {
        let mut symbolizer = symbolizer.borrow_mut();
        let profile: Vec<(Vec<String>, u64, u64)> = current_rows()?
            .iter()
            .map(|(id, row)| (frames(&mut symbolizer, *id), row.bytes, row.allocs))
            .collect();
        write_profiles(&args, &profile)?;
    }
    drop(ring);
    if lost_allocs.get() > 0 {
        eprintln!(
            "memleak: the stacks of {} outstanding allocations were lost: the stack store was full (raise --stack-storage-size)",
            lost_allocs.get()
        );
    }
    skel::report_drops(
        "memleak",
        skel.object(),
        &[
            (
                skel::DROP_COUNTS,
                "allocations not tracked: raise --max-allocs",
            ),
            (skel::DROP_STACKS, "raise --stack-storage-size"),
        ],
    )?;
    Ok(session.exit_code(stop))
}

/// -t: one line (or JSON object) per allocation or free.
fn print_trace_event(out: &mut Output, e: &memleak_event) -> Result<()> {
    let comm = crate::output::escape_c_chars(&e.comm);
    let what = if e.is_free != 0 { "free" } else { "alloc" };
    if out.json {
        return out.json_line(&json!({
            "time_ns": e.time_ns,
            "event": what,
            "pid": e.pid,
            "tid": e.tid,
            "comm": comm,
            "addr": e.addr,
            "size": e.size,
        }));
    }
    out.line(&format!(
        "{:<7} {:<7} {:<16} {what:<5} {:#x} {} bytes",
        e.pid, e.tid, comm, e.addr, e.size
    ))
}

/// --svg and --pprof: the outstanding allocations at the end, by stack (frames innermost first).
fn write_profiles(args: &Args, stacks: &[(Vec<String>, u64, u64)]) -> Result<()> {
    if let Some(path) = &args.svg {
        let mut folded: HashMap<Vec<String>, u64> = HashMap::new();
        for (frames, bytes, _) in stacks {
            let outermost_first: Vec<String> = frames.iter().rev().cloned().collect();
            *folded.entry(outermost_first).or_default() += bytes;
        }
        crate::flame::write_svg(path, "Outstanding allocations", "bytes", &folded)?;
    }
    if let Some(path) = &args.pprof {
        let samples: Vec<crate::flame::Sample> = stacks
            .iter()
            .map(|(frames, bytes, allocs)| crate::flame::Sample {
                frames: frames.clone(),
                values: vec![*bytes, *allocs],
            })
            .collect();
        crate::flame::write_pprof(
            path,
            &[("inuse_space", "bytes"), ("inuse_objects", "count")],
            &samples,
        )?;
    }
    Ok(())
}

/// Outstanding bytes and allocations of one stack, and its allocations for -a.
#[derive(Default)]
struct StackRow {
    bytes: u64,
    allocs: u64,
    addresses: Vec<(u64, u64)>,
}

fn outstanding_rows(allocs: &dyn MapCore, older_ms: u64) -> Result<HashMap<i64, StackRow>> {
    let now = monotonic_ns();
    let mut rows: HashMap<i64, StackRow> = HashMap::new();
    for raw_key in allocs.keys() {
        let Some(raw) = allocs.lookup(&raw_key, MapFlags::ANY)? else {
            continue;
        };
        let mut alloc = memleak_alloc::default();
        if plain::copy_from_bytes(&mut alloc, &raw).is_err() {
            continue;
        }
        if now.saturating_sub(alloc.time_ns) < older_ms * 1_000_000 {
            continue;
        }
        let addr = raw_key
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_ne_bytes)
            .unwrap_or(0);
        let row = rows.entry(alloc.stack).or_default();
        row.bytes += alloc.size;
        row.allocs += 1;
        row.addresses.push((addr, alloc.size));
    }
    Ok(rows)
}

fn combined_rows(combined: &dyn MapCore) -> Result<HashMap<i64, StackRow>> {
    let mut rows = HashMap::new();
    for raw_key in combined.keys() {
        let Some(raw) = combined.lookup(&raw_key, MapFlags::ANY)? else {
            continue;
        };
        let mut c = memleak_combined::default();
        let mut id = 0i64;
        if plain::copy_from_bytes(&mut c, &raw).is_err()
            || plain::copy_from_bytes(&mut id, &raw_key).is_err()
        {
            continue;
        }
        if c.allocs > 0 {
            rows.insert(
                id,
                StackRow {
                    bytes: c.bytes,
                    allocs: c.allocs,
                    addresses: Vec::new(),
                },
            );
        }
    }
    Ok(rows)
}

fn stack_frames(
    symbolizer: &mut StackSymbolizer,
    stacks: &dyn MapCore,
    kernel: bool,
    pid: u32,
    id: i64,
) -> Vec<String> {
    // a negative key: -ENOSPC (the stack store was full) or -EFAULT (no stack)
    let Some(ips) =
        crate::symbolize::stored_stack::<memtrace_stack>(stacks, id, |s| (s.nr, &s.ips))
    else {
        return vec!["[stack lost]".into()];
    };
    let ips = &ips[..];
    if kernel {
        symbolizer.kernel_frames(ips)
    } else {
        symbolizer.user_frames(pid, ips)
    }
}

fn print_report(
    out: &mut Output,
    args: &Args,
    symbolizer: &mut StackSymbolizer,
    frames: impl Fn(&mut StackSymbolizer, i64) -> Vec<String>,
    pid: i32,
    rows: HashMap<i64, StackRow>,
) -> Result<()> {
    let mut rows: Vec<(i64, StackRow)> = rows.into_iter().collect();
    rows.sort_by(|(ia, a), (ib, b)| {
        let key = |r: &StackRow| match args.sort {
            SortBy::Size => (r.bytes, r.allocs),
            SortBy::Count => (r.allocs, r.bytes),
        };
        key(b).cmp(&key(a)).then(ia.cmp(ib))
    });
    rows.truncate(args.top);
    if out.json {
        let time_ns = monotonic_ns();
        for (id, row) in &rows {
            out.json_line(&json!({
                "time_ns": time_ns,
                "pid": (pid > 0).then_some(pid),
                "bytes": row.bytes,
                "allocations": row.allocs,
                "stack": frames(symbolizer, *id),
            }))?;
        }
        return Ok(());
    }
    if args.folded {
        for (id, row) in &rows {
            let mut stack = frames(symbolizer, *id);
            stack.reverse();
            out.line(&crate::flame::folded_line(&stack, row.bytes))?;
        }
        return Ok(());
    }
    out.line(&format!(
        "[{}] Top {} stacks with outstanding allocations:",
        wall_clock_hms(),
        rows.len()
    ))?;
    for (id, row) in &rows {
        if args.show_allocs {
            for (addr, size) in &row.addresses {
                out.line(&format!("\taddr = {addr:x} size = {size}"))?;
            }
        }
        out.line(&format!(
            "\t{} bytes in {} allocations from stack",
            row.bytes, row.allocs
        ))?;
        for frame in frames(symbolizer, *id) {
            out.line(&format!("\t\t{frame}"))?;
        }
    }
    Ok(())
}
