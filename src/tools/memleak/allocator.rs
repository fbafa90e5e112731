//! memleak's user mode: which allocator functions to probe, in which file,
//! and where in each function (past opening instructions the kernel would
//! single-step: analysis/probe_site.rs); all attached as one multi-uprobe
//! session link.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use blazesym::inspect::source::{Elf, Source};
use blazesym::inspect::Inspector;
use libbpf_rs::{Link, ProgramMut, UprobeMultiOpts};

use super::bpf::types::memleak_func as Func;
use super::Args;
use crate::analysis::probe_site;
use crate::analysis::proc_maps::{self, MapsEntry};
use crate::engine::target::{process_kind, Mapped, ProcessKind, Target};
use crate::engine::unwind::Unwind;
use crate::present::escape::{escape_bytes, escape_path};

/// The functions probed, each with its enum memleak_func (its probe's cookie).
const FUNCS: &[(&str, Func)] = &[
    ("malloc", Func::MEMLEAK_MALLOC),
    ("calloc", Func::MEMLEAK_CALLOC),
    ("realloc", Func::MEMLEAK_REALLOC),
    ("free", Func::MEMLEAK_FREE),
    ("posix_memalign", Func::MEMLEAK_POSIX_MEMALIGN),
    ("memalign", Func::MEMLEAK_MEMALIGN),
    ("aligned_alloc", Func::MEMLEAK_ALIGNED_ALLOC),
    ("valloc", Func::MEMLEAK_VALLOC),
    ("pvalloc", Func::MEMLEAK_PVALLOC),
    ("mmap", Func::MEMLEAK_MMAP),
    ("munmap", Func::MEMLEAK_MUNMAP),
    ("mremap", Func::MEMLEAK_MREMAP),
];

/// An allocator library and where to probe its functions.
pub struct Allocator {
    object: PathBuf,
    /// (file offset of the probe, cookie)
    probes: Vec<(u64, u64)>,
}

impl Allocator {
    /// The library of -O (default: the target's libc) and its functions
    /// (with --symbols-prefix); those it lacks are said and skipped. A
    /// command's libc is looked for in what it maps after exec: it is
    /// stopped there, before any of its code runs, until the session
    /// starts. None: the command ended before (its loader failed).
    pub fn find(args: &Args, unwind: Unwind, target: &mut Target) -> Result<Option<Allocator>> {
        let object = match target {
            Target::Pids(processes) => {
                for process in processes.iter() {
                    check_user_process(process.pid)?;
                }
                match (&args.object, processes.first()) {
                    (Some(path), _) => path.clone(),
                    (None, Some(process)) => find_libc(process.pid)?,
                    (None, None) => bail!("memleak's user mode traces one process: give -p PID"),
                }
            }
            // The loader runs until libc is mapped; with --unwind cfi until
            // its code is (libc is, as a rule, the last library mapped): the
            // libraries are then in the mappings the unwind tables are read
            // from (engine::unwind); one mapped later is read in when a stack
            // first reaches it.
            Target::Command(cmd) => match cmd.exec_until_mapped(if unwind == Unwind::Cfi {
                libc_code_in
            } else {
                libc_in
            })? {
                Mapped::Exited => return Ok(None),
                _ if args.object.is_some() => args.object.clone().unwrap_or_default(),
                Mapped::Found(path) => path,
                Mapped::Absent { dynamic: true } => bail!(NO_LIBC),
                Mapped::Absent { dynamic: false } => bail!(
                    "no libc in the target's mappings: {} runs without a dynamic loader (a \
                     static program); name its allocator with -O, the program itself if the \
                     allocator is linked into it",
                    cmd.name
                ),
            },
            Target::All => bail!("memleak's user mode needs -p PID or -- COMMAND"),
        };
        let probes = resolve_functions(&object, &args.symbols_prefix)?;
        Ok(Some(Allocator { object, probes }))
    }

    /// One session link for every function: each single uprobe link takes
    /// ~0.1 s to remove, a multi link ~20-35 ms.
    pub fn attach(&self, prog: &ProgramMut<'_>, pid: i32) -> Result<Link> {
        let opts = UprobeMultiOpts {
            offsets: self.probes.iter().map(|p| p.0 as usize).collect(),
            cookies: self.probes.iter().map(|p| p.1).collect(),
            session: true,
            ..Default::default()
        };
        prog.attach_uprobe_multi_with_opts(pid, &self.object, "", opts)
            .with_context(|| format!("attaching uprobes to {}", escape_path(&self.object)))
    }
}

/// A process with user space to probe, or what it is instead.
fn check_user_process(pid: u32) -> Result<()> {
    match process_kind(pid)? {
        ProcessKind::User => Ok(()),
        ProcessKind::Zombie => bail!(
            "PID {pid} is a zombie: it has exited (its parent has not reaped it yet) and has no \
             memory left to trace"
        ),
        ProcessKind::KernelThread => bail!(
            "PID {pid} is a kernel thread: memleak traces user processes; for kernel \
             allocations use --kernel"
        ),
    }
}

const NO_LIBC: &str = "no libc in the target's mappings: name the allocator library with -O";

/// The libc a process uses, from its maps.
fn find_libc(pid: u32) -> Result<PathBuf> {
    let maps = match proc_maps::read_maps(pid) {
        Ok(maps) => maps,
        // it exited meanwhile
        Err(err) if gone(&err) => bail!("no process with PID {pid}"),
        Err(err) => return Err(err),
    };
    libc_in(&maps).context(NO_LIBC)
}

/// Whether reading a process's /proc file failed because it is gone.
fn gone(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .any(|io| {
            io.kind() == std::io::ErrorKind::NotFound || io.raw_os_error() == Some(libc::ESRCH)
        })
}

/// The libc among a process's mappings.
fn libc_in(maps: &[MapsEntry]) -> Option<PathBuf> {
    maps.iter()
        .filter(|m| is_libc(m))
        .find_map(|m| m.path().map(Path::to_path_buf))
}

/// libc, once its code is mapped (the loader maps a library's code after
/// reserving its whole range).
fn libc_code_in(maps: &[MapsEntry]) -> Option<PathBuf> {
    maps.iter()
        .filter(|m| is_libc(m) && m.executable())
        .find_map(|m| m.path().map(Path::to_path_buf))
}

fn is_libc(mapping: &MapsEntry) -> bool {
    let name = mapping.file_name();
    name.starts_with(b"libc.so") || name.starts_with(b"libc-")
}

/// (probe's file offset, cookie) of the allocator functions in `object`.
fn resolve_functions(object: &Path, prefix: &str) -> Result<Vec<(u64, u64)>> {
    let inspector = Inspector::new();
    let names: Vec<String> = FUNCS.iter().map(|(n, _)| format!("{prefix}{n}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut elf = Elf::new(object);
    elf.debug_syms = false; // the ELF symbol tables (.dynsym is all Debian's libc has)
    let found = inspector
        .lookup(&Source::Elf(elf), &refs)
        .with_context(|| format!("reading the symbols of {}", escape_path(object)))?;
    let mut file =
        File::open(object).with_context(|| format!("opening {}", escape_path(object)))?;
    let mut probes = Vec::new();
    let mut missing = Vec::new();
    for ((name, syms), &(_, func)) in names.iter().zip(found).zip(FUNCS) {
        match syms.iter().find_map(|s| s.file_offset) {
            Some(offset) => {
                let site = cheap_probe_site(&mut file, offset).with_context(|| {
                    format!(
                        "reading {} in {}",
                        escape_bytes(name.as_bytes()),
                        escape_path(object)
                    )
                })?;
                probes.push((offset + site, u64::from(func.0)));
            }
            None => missing.push(name.clone()),
        }
    }
    if !missing.is_empty() {
        crate::say!(
            "memleak: {} has no {}: not traced",
            escape_path(object),
            escape_bytes(missing.join(", ").as_bytes())
        );
    }
    if probes.is_empty() {
        bail!(
            "{} has none of the allocator functions",
            escape_path(object)
        );
    }
    Ok(probes)
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
