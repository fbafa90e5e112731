//! memleak's user mode: which allocator functions to probe, in which of the
//! target's objects, and where in each function (past opening instructions
//! the kernel would single-step: analysis/probe_site.rs), with the best
//! uprobes the kernel has (Mechanism): one multi-uprobe session link per
//! object and traced process where it can. A command's execs, dlopens and
//! forks bring more (follow_exec, follow_load, follow_fork).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use blazesym::inspect::source::{Elf, Source};
use blazesym::inspect::Inspector;
use libbpf_rs::{Link, MapCore, MapFlags, MapMut, ProgramMut, UprobeMultiOpts, UprobeOpts};
use nix::unistd::Pid;

use super::bpf::types::{memleak_func as Func, memleak_probe_key};
use super::Args;
use crate::analysis::probe_site::{self, ProbeSite};
use crate::analysis::proc_maps::{self, MapsEntry};
use crate::engine::features::Feature;
use crate::engine::target::{loader_of, process_kind, HeldCommand, Mapped, ProcessKind, Target};
use crate::present::escape::{escape_bytes, escape_path};

/// The allocator functions probed, by symbol name, each with what it does
/// (its probe's cookie): glibc's, jemalloc's (mallocx and friends), the
/// C23 sized frees, and libstdc++'s operator new and delete in every
/// variant (nothrow, sized, aligned), which jemalloc, tcmalloc and mimalloc
/// define too. Where one enters another (operator delete -> free, new ->
/// malloc) the outer call is the one counted (memleak.bpf.c). The C++
/// operators of an object without malloc (libstdc++'s) are not probed:
/// they call malloc and free, which are, and a probe costs a trap per call.
/// jemalloc's xallocx resizes in place and is not followed.
const FUNCTIONS: &[(&str, Func)] = &[
    ("malloc", Func::MEMLEAK_MALLOC),
    ("calloc", Func::MEMLEAK_CALLOC),
    ("realloc", Func::MEMLEAK_REALLOC),
    ("reallocarray", Func::MEMLEAK_REALLOCARRAY),
    ("free", Func::MEMLEAK_FREE),
    ("posix_memalign", Func::MEMLEAK_POSIX_MEMALIGN),
    ("memalign", Func::MEMLEAK_MEMALIGN),
    ("aligned_alloc", Func::MEMLEAK_ALIGNED_ALLOC),
    ("valloc", Func::MEMLEAK_VALLOC),
    ("pvalloc", Func::MEMLEAK_PVALLOC),
    ("mmap", Func::MEMLEAK_MMAP),
    ("munmap", Func::MEMLEAK_MUNMAP),
    ("mremap", Func::MEMLEAK_MREMAP),
    ("free_sized", Func::MEMLEAK_FREE),
    ("free_aligned_sized", Func::MEMLEAK_FREE),
    ("mallocx", Func::MEMLEAK_MALLOC),
    ("rallocx", Func::MEMLEAK_REALLOC),
    ("dallocx", Func::MEMLEAK_FREE),
    ("sdallocx", Func::MEMLEAK_FREE),
    ("_Znwm", Func::MEMLEAK_MALLOC),
    ("_Znam", Func::MEMLEAK_MALLOC),
    ("_ZnwmRKSt9nothrow_t", Func::MEMLEAK_MALLOC),
    ("_ZnamRKSt9nothrow_t", Func::MEMLEAK_MALLOC),
    ("_ZnwmSt11align_val_t", Func::MEMLEAK_MALLOC),
    ("_ZnamSt11align_val_t", Func::MEMLEAK_MALLOC),
    ("_ZnwmSt11align_val_tRKSt9nothrow_t", Func::MEMLEAK_MALLOC),
    ("_ZnamSt11align_val_tRKSt9nothrow_t", Func::MEMLEAK_MALLOC),
    ("_ZdlPv", Func::MEMLEAK_FREE),
    ("_ZdaPv", Func::MEMLEAK_FREE),
    ("_ZdlPvm", Func::MEMLEAK_FREE),
    ("_ZdaPvm", Func::MEMLEAK_FREE),
    ("_ZdlPvRKSt9nothrow_t", Func::MEMLEAK_FREE),
    ("_ZdaPvRKSt9nothrow_t", Func::MEMLEAK_FREE),
    ("_ZdlPvSt11align_val_t", Func::MEMLEAK_FREE),
    ("_ZdaPvSt11align_val_t", Func::MEMLEAK_FREE),
    ("_ZdlPvmSt11align_val_t", Func::MEMLEAK_FREE),
    ("_ZdaPvmSt11align_val_t", Func::MEMLEAK_FREE),
    ("_ZdlPvSt11align_val_tRKSt9nothrow_t", Func::MEMLEAK_FREE),
    ("_ZdaPvSt11align_val_tRKSt9nothrow_t", Func::MEMLEAK_FREE),
];

/// How allocator calls are probed, the cheapest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mechanism {
    /// Session uprobes: one multi link per object; the entry half says
    /// whether the return is probed (frees, unsampled calls: not).
    Session,
    /// Multi-uprobe links, entry and return: two links per object; every
    /// allocating call's return traps.
    Multi,
    /// Classic uprobes and uretprobes: a link per function and half, each
    /// tens of ms for the kernel to remove (libc's 23: 0.73 s on 6.18).
    /// Before BPF cookies or bpf_loop (5.15, 5.17), each probe's cookie is
    /// kept by its address (probe_cookies), stacks walked by frame pointers.
    Classic,
}

impl Mechanism {
    /// The kernel features it needs.
    pub fn needs(self) -> &'static [Feature] {
        match self {
            Mechanism::Session => &[Feature::UprobeSession],
            Mechanism::Multi => &[Feature::UprobeMulti],
            // (every kernel with the others has bpf_loop, which the
            // .eh_frame walk needs)
            Mechanism::Classic => &[],
        }
    }

    /// The first feature it needs that the kernel lacks.
    pub fn missing(self) -> Option<Feature> {
        self.needs().iter().copied().find(|f| !f.present())
    }

    /// Its --uprobes value.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Session => "session",
            Mechanism::Multi => "multi",
            Mechanism::Classic => "classic",
        }
    }

    /// `session uprobes`, for messages.
    pub fn described(self) -> &'static str {
        match self {
            Mechanism::Session => "session uprobes",
            Mechanism::Multi => "multi-uprobe links (entry and return)",
            Mechanism::Classic => "classic uprobes and uretprobes",
        }
    }

    /// The one to use: `forced` if the kernel has it, else the cheapest
    /// it has; an error says what is missing.
    pub fn choose(forced: Option<Mechanism>) -> Result<Mechanism> {
        if let Some(forced) = forced {
            return match forced.missing() {
                None => Ok(forced),
                Some(feature) => bail!(
                    "--uprobes {}: this kernel lacks {}",
                    forced.name(),
                    feature.described()
                ),
            };
        }
        let better = [Mechanism::Session, Mechanism::Multi];
        Ok(better
            .into_iter()
            .find(|m| m.missing().is_none())
            .unwrap_or(Mechanism::Classic))
    }

    /// Whether it uses the *_pre517 programs (memleak.bpf.c): classic
    /// uprobes where the kernel lacks BPF cookies or bpf_loop.
    pub fn pre517(self) -> bool {
        self == Mechanism::Classic && (!Feature::AttachCookie.present() || !Feature::Loop.present())
    }
}

/// What telling probes apart by address costs, for doctor.
pub const PROBES_BY_ADDRESS: &str = "probes are told apart by their addresses (BPF cookies: \
     Linux 5.15): after a -p process's exec, its calls are not traced until memtrace next \
     looks (200 ms at most), counted as calls not traced";

/// The programs a mechanism attaches: the session program alone, or an
/// entry and a return program; and where the kernel has no BPF cookies,
/// the map that holds them by probe address.
pub struct CallPrograms<'a, 'obj> {
    pub mechanism: Mechanism,
    pub entry: &'a ProgramMut<'obj>,
    pub ret: &'a ProgramMut<'obj>,
    pub cookies: Option<&'a MapMut<'obj>>,
}

/// The dynamic loader's function called around each change of the loaded
/// objects (glibc's ld.so exports it for debuggers).
const LOADER_HOOK: &str = "_dl_debug_state";

/// Symbol prefixes looked for when --symbols-prefix gives none: jemalloc
/// built with its own (`je_malloc`: redis's bundled copy, linked into the
/// program). C++'s mangled names take none.
const DEFAULT_PREFIXES: &[&str] = &["", "je_"];

/// The arguments a function's entry probe reads (a bit per argument, the
/// first is bit 0), which must still be in registers where it is probed.
fn arguments_read(func: Func) -> u8 {
    match func {
        Func::MEMLEAK_CALLOC | Func::MEMLEAK_REALLOC => 0b11,
        Func::MEMLEAK_REALLOCARRAY => 0b111,
        Func::MEMLEAK_POSIX_MEMALIGN | Func::MEMLEAK_MREMAP => 0b101,
        Func::MEMLEAK_MEMALIGN | Func::MEMLEAK_ALIGNED_ALLOC => 0b10,
        Func::MEMLEAK_MMAP => 0b1010,
        _ => 0b1,
    }
}

/// One probed function.
struct Probe {
    symbol: String,
    func: Func,
    /// The function's file offset.
    offset: u64,
    site: ProbeSite,
}

impl Probe {
    /// Whether its function's return is probed: it returns memory.
    fn returns_memory(&self) -> bool {
        !matches!(
            self.func,
            Func::MEMLEAK_FREE | Func::MEMLEAK_MUNMAP | Func::MEMLEAK_LOADS
        )
    }

    /// The file offset its probes go at.
    fn site_offset(&self) -> usize {
        (self.offset + self.site.offset) as usize
    }

    /// The probe's BPF cookie: the function, and from bit 8 the register of
    /// each of its first four arguments at the site, 4 bits each
    /// (memleak.bpf.c memleak_arg).
    fn cookie(&self) -> u64 {
        let registers = self
            .site
            .args
            .iter()
            .enumerate()
            .fold(0u64, |acc, (n, &reg)| acc | u64::from(reg) << (4 * n));
        u64::from(self.func.0) | registers << 8
    }
}

/// An object with allocator functions, and their probes.
struct ProbedObject {
    path: PathBuf,
    probes: Vec<Probe>,
}

/// What is probed in one traced process: the objects (by path), and the
/// links that do it (and before BPF cookies, the keys of their cookies).
#[derive(Default)]
struct ProcessProbes {
    paths: Vec<PathBuf>,
    links: Vec<Link>,
    cookie_keys: Vec<memleak_probe_key>,
}

/// Every allocator the target uses, found in its mappings, and the probes
/// in each traced process (a command's children have their own: a probe
/// link names one process).
pub struct Allocators {
    /// Each allocator object found, its functions resolved once.
    objects: Vec<ProbedObject>,
    /// Each loader's _dl_debug_state (watch_loads), resolved once; no
    /// probes for a loader without it.
    loader_hooks: Vec<ProbedObject>,
    /// The objects looked at and found to have no allocator functions (so
    /// that each dlopen looks at the new objects only).
    without_allocator: Vec<PathBuf>,
    processes: HashMap<Pid, ProcessProbes>,
    /// The links of children that ended, to be removed (forget).
    retired: Vec<OwnedFd>,
}

/// Links of ended children removed together (see Allocators::forget).
const RETIRE_BATCH: usize = 4;

/// Copies of links' fds: each keeps its link once the Link is dropped.
fn fds_of(links: &[Link]) -> Vec<OwnedFd> {
    links
        .iter()
        .filter_map(|link| link.as_fd().try_clone_to_owned().ok())
        .collect()
}

impl Allocators {
    /// The allocators among the target's mapped objects (its libc, a
    /// jemalloc, tcmalloc or mimalloc linked or preloaded, with their
    /// operator new and delete, the program itself if its allocator is
    /// linked in), or -O's library alone. A command is looked at stopped after exec, once
    /// its loader has mapped libc (and with it the program's own and
    /// preloaded libraries), before any of their code runs, until the session
    /// starts. None: the command ended before (its loader failed).
    pub fn find(args: &Args, target: &mut Target) -> Result<Option<Allocators>> {
        let (maps, whose) = match target {
            Target::Pids(processes) => {
                for process in processes.iter() {
                    check_user_process(process.pid)?;
                }
                let Some(process) = processes.first() else {
                    bail!("memleak's user mode traces one process: give -p PID")
                };
                (read_maps_of(process.pid)?, format!("PID {}", process.pid))
            }
            // kept under ptrace once released: each later exec and fork is
            // followed (follow_exec, follow_fork)
            Target::Command(cmd) => {
                let step = cmd.exec_until_mapped(libc_code_mapped)?;
                let Some(maps) = mapped_by_loader(step, cmd.pid)? else {
                    return Ok(None);
                };
                cmd.follow_family()?;
                (maps, cmd.name.clone())
            }
            Target::All => bail!("memleak's user mode needs -p PID or -- COMMAND"),
        };
        let prefixes = prefixes(args);
        let mut objects = Vec::new();
        if let Some(object) = &args.object {
            let probes = resolve_functions(object, &prefixes)?;
            if probes.is_empty() {
                bail!(
                    "{} has none of the allocator functions{}",
                    escape_path(object),
                    with_prefix(&args.symbols_prefix)
                );
            }
            objects.push(ProbedObject {
                path: object.clone(),
                probes,
            });
        } else {
            objects = allocators_in(&mapped_objects(&maps), &prefixes);
            if objects.is_empty() {
                bail!(
                    "no allocator in the mappings of {whose}: none of its objects has malloc, \
                     free or operator new{}; name the allocator's library with -O (and \
                     --symbols-prefix if its functions have one)",
                    with_prefix(&args.symbols_prefix)
                );
            }
        }
        say_probed(&objects, args.common.verbose);
        Ok(Some(Allocators {
            objects,
            loader_hooks: Vec::new(),
            without_allocator: Vec::new(),
            processes: HashMap::new(),
            retired: Vec::new(),
        }))
    }

    /// Process `pid` (the command or a child) stopped at a later exec (a
    /// wrapper script exec'ing the real program, a shell running one): on
    /// through the new program's loader until libc's code is mapped, as at
    /// the start (`mapped` sees the mappings at each step: the unwinder's),
    /// then the allocators it maps that are not probed in it yet (none new
    /// with -O) are, by `progs`. The process stays stopped.
    pub fn follow_exec(
        &mut self,
        args: &Args,
        cmd: &mut HeldCommand,
        pid: Pid,
        mut mapped: impl FnMut(&[MapsEntry]),
        progs: &CallPrograms,
    ) -> Result<()> {
        let step = cmd.after_exec_until_mapped(pid, |maps| {
            mapped(maps);
            libc_code_mapped(maps)
        })?;
        let Some(maps) = mapped_by_loader(step, pid)? else {
            return Ok(());
        };
        mapped(&maps);
        self.probe_new(args, &maps, pid, progs)
    }

    /// A dlopen of process `pid` stopped at the loader's _dl_debug_state
    /// (see watch_loads): the allocators it mapped that are not probed in it
    /// yet are, by `progs`; `mapped` is given its mappings (the unwinder's).
    pub fn follow_load(
        &mut self,
        args: &Args,
        pid: Pid,
        mut mapped: impl FnMut(&[MapsEntry]),
        progs: &CallPrograms,
    ) -> Result<()> {
        let maps = read_maps_of(pid.as_raw() as u32)?;
        mapped(&maps);
        self.probe_new(args, &maps, pid, progs)
    }

    /// `parent` forked `child` (both stopped): the child, a copy of its
    /// parent, is probed where its parent is.
    pub fn follow_fork(&mut self, parent: Pid, child: Pid, progs: &CallPrograms) -> Result<()> {
        let paths = match self.processes.get(&parent) {
            Some(probed) => probed.paths.clone(),
            None => return Ok(()),
        };
        let probed = self.processes.entry(child).or_default();
        for object in self.objects.iter().chain(&self.loader_hooks) {
            if paths.contains(&object.path) {
                probed.attach(object, child, progs)?;
            }
        }
        Ok(())
    }

    /// A child ended: its probes go (and their cookies), RETIRE_BATCH links
    /// at a time, each by a thread of its own. A link's removal waits for
    /// the kernel (~20-35 ms) and holds off forks meanwhile; removals made
    /// together share the wait. Until removed, a link costs every traced process that calls
    /// its functions: the kernel runs each link's session handler on every
    /// hit, one of another process asks for the return (a return trap), and
    /// each adds to the return's work. A shell running 100 short children,
    /// then 200,000 malloc+free: 1.36 s in batches of 4, 1.67 s of 8, 1.63 s
    /// removing each at once; with 300 children and never removing, the
    /// malloc+free took 13-20 s instead of 1.8 s.
    pub fn forget(&mut self, pid: Pid, progs: &CallPrograms) {
        let Some(mut probed) = self.processes.remove(&pid) else {
            return;
        };
        if let Some(cookies) = progs.cookies {
            probed.forget_cookies(cookies);
        }
        self.retired.extend(fds_of(&probed.links));
        if self.retired.len() >= RETIRE_BATCH {
            for fd in std::mem::take(&mut self.retired) {
                // (a thread that can't be made drops them here, the trace waiting)
                let _ = std::thread::Builder::new().spawn(move || drop(fd));
            }
        }
    }

    /// At the end: every link, as fds that keep it (see engine::detach).
    pub fn into_links(mut self) -> Vec<OwnedFd> {
        let mut all = std::mem::take(&mut self.retired);
        for probed in self.processes.values() {
            all.extend(fds_of(&probed.links));
        }
        all
    }

    /// The allocators in `maps` not probed in process `pid` yet, probed
    /// (with -O: none new).
    fn probe_new(
        &mut self,
        args: &Args,
        maps: &[MapsEntry],
        pid: Pid,
        progs: &CallPrograms,
    ) -> Result<()> {
        if let Some(cookies) = progs.cookies {
            self.move_cookies(maps, pid, cookies)?;
        }
        if args.object.is_some() {
            return Ok(());
        }
        let mapped = mapped_objects(maps);
        let new: Vec<PathBuf> = mapped
            .iter()
            .filter(|path| {
                !self.objects.iter().any(|o| &o.path == *path)
                    && !self.without_allocator.contains(path)
            })
            .cloned()
            .collect();
        let found = allocators_in(&new, &prefixes(args));
        self.without_allocator.extend(
            new.into_iter()
                .filter(|path| !found.iter().any(|o| &o.path == path)),
        );
        if !found.is_empty() {
            say_probed(&found, args.common.verbose);
            self.objects.extend(found);
        }
        let probed = self.processes.entry(pid).or_default();
        for object in &self.objects {
            if mapped.contains(&object.path) {
                probed.attach(object, pid, progs)?;
            }
        }
        Ok(())
    }

    /// Before BPF cookies: the cookies of process `pid`'s probes, where its
    /// objects are in `maps` now. An exec maps them afresh (the probes stay,
    /// their addresses do not); the BPF side asks for this (memleak's
    /// follow_loads) when a probe fires at an address with no cookie.
    fn move_cookies(&mut self, maps: &[MapsEntry], pid: Pid, cookies: &MapMut) -> Result<()> {
        let Some(probed) = self.processes.get_mut(&pid) else {
            return Ok(());
        };
        probed.forget_cookies(cookies);
        let objects = self.objects.iter().chain(&self.loader_hooks);
        for object in objects.filter(|o| probed.paths.contains(&o.path)) {
            let keys = object.store_cookies(cookies, maps, pid)?;
            probed.cookie_keys.extend(keys);
        }
        Ok(())
    }

    /// A probe on process `pid`'s loader's _dl_debug_state, which the
    /// loader calls once a dlopen's objects are mapped, before their
    /// constructors run (the debuggers' r_brk), and once a new program's
    /// are: the BPF side stops a command's thread there (under ptrace:
    /// HeldCommand::follow_family), and notes a -p process (memleak's
    /// follow_loads). Nothing for a program without a loader
    /// (static) or a loader without it. The probe stays through execs of
    /// programs with the same loader.
    pub fn watch_loads(&mut self, pid: Pid, progs: &CallPrograms) -> Result<()> {
        let Some(loader) = loader_of(pid)?
            .iter()
            .find_map(|m| m.path().map(Path::to_path_buf))
        else {
            return Ok(());
        };
        let hook = match self.loader_hooks.iter().position(|h| h.path == loader) {
            Some(known) => known,
            None => {
                let probes = match defined_symbols(&loader, &[LOADER_HOOK])?.pop() {
                    Some(Some((offset, _))) => vec![Probe {
                        symbol: LOADER_HOOK.into(),
                        func: Func::MEMLEAK_LOADS,
                        offset,
                        site: probe_site::ENTRY,
                    }],
                    _ => Vec::new(),
                };
                self.loader_hooks.push(ProbedObject {
                    path: loader,
                    probes,
                });
                self.loader_hooks.len() - 1
            }
        };
        self.processes
            .entry(pid)
            .or_default()
            .attach(&self.loader_hooks[hook], pid, progs)
    }

    /// Every allocator found, probed in process `pid`. Where the kernel
    /// has multi links, one (or two) per object, for all its functions:
    /// each single uprobe link takes ~0.1 s to remove, a multi link ~20-35
    /// ms.
    pub fn attach(&mut self, progs: &CallPrograms, pid: Pid) -> Result<()> {
        let probed = self.processes.entry(pid).or_default();
        for object in &self.objects {
            probed.attach(object, pid, progs)?;
        }
        Ok(())
    }
}

impl ProcessProbes {
    /// Before BPF cookies: the cookies of the probes it has, removed.
    fn forget_cookies(&mut self, cookies: &MapMut) {
        for key in self.cookie_keys.drain(..) {
            // SAFETY: a C struct of integers (tgid, pad, addr), its padding named.
            let _ = cookies.delete(unsafe { plain::as_bytes(&key) });
        }
    }

    /// `object` probed in process `pid`, unless it is already (or has
    /// nothing to probe).
    fn attach(&mut self, object: &ProbedObject, pid: Pid, progs: &CallPrograms) -> Result<()> {
        if object.probes.is_empty() || self.paths.contains(&object.path) {
            return Ok(());
        }
        // the cookies first: a probe hit before its cookie is there is lost
        if let Some(cookies) = progs.cookies {
            let maps = read_maps_of(pid.as_raw() as u32)?;
            self.cookie_keys
                .extend(object.store_cookies(cookies, &maps, pid)?);
        }
        self.links.extend(
            object
                .attach(progs, pid.as_raw())
                .with_context(|| format!("attaching uprobes to {}", escape_path(&object.path)))?,
        );
        self.paths.push(object.path.clone());
        Ok(())
    }
}

impl ProbedObject {
    /// Each probe's cookie, by its address in process `pid`, whose
    /// mappings are `maps`: for the *_pre517 programs, which can't read
    /// cookies (a probe where the object is not mapped fires nowhere).
    /// Returns the keys written.
    fn store_cookies(
        &self,
        cookies: &MapMut,
        maps: &[MapsEntry],
        pid: Pid,
    ) -> Result<Vec<memleak_probe_key>> {
        let mut keys = Vec::new();
        for probe in &self.probes {
            let offset = probe.site_offset() as u64;
            let Some(addr) = address_of(maps, &self.path, offset) else {
                continue;
            };
            let key = memleak_probe_key {
                tgid: pid.as_raw() as u32,
                addr,
                ..Default::default()
            };
            // SAFETY: a C struct of integers (tgid, pad, addr), its padding named.
            let key_bytes = unsafe { plain::as_bytes(&key) };
            cookies
                .update(key_bytes, &probe.cookie().to_ne_bytes(), MapFlags::ANY)
                .context("keeping a uprobe's cookie (probe_cookies is full)")?;
            keys.push(key);
        }
        Ok(keys)
    }

    /// The object's functions probed in process `pid` by the mechanism's
    /// links: one session link, two multi links (entries; returns of the
    /// functions that return memory), or a classic link per function and
    /// half.
    fn attach(&self, progs: &CallPrograms, pid: i32) -> Result<Vec<Link>> {
        let multi = |prog: &ProgramMut, probes: Vec<&Probe>, session, retprobe| {
            let opts = UprobeMultiOpts {
                offsets: probes.iter().map(|p| p.site_offset()).collect(),
                cookies: probes.iter().map(|p| p.cookie()).collect(),
                session,
                retprobe,
                ..Default::default()
            };
            prog.attach_uprobe_multi_with_opts(pid, &self.path, "", opts)
        };
        let all: Vec<&Probe> = self.probes.iter().collect();
        let returning: Vec<&Probe> = all.iter().copied().filter(|p| p.returns_memory()).collect();
        Ok(match progs.mechanism {
            Mechanism::Session => vec![multi(progs.entry, all, true, false)?],
            // returns first: an entry seen before its return probe is in
            // place would be a call in flight that never returns
            Mechanism::Multi => {
                let mut links = Vec::new();
                if !returning.is_empty() {
                    links.push(multi(progs.ret, returning, false, true)?);
                }
                links.push(multi(progs.entry, all, false, false)?);
                links
            }
            Mechanism::Classic => {
                let single = |prog: &ProgramMut, probe: &Probe, retprobe| {
                    let opts = UprobeOpts {
                        // (a kernel without cookies refuses one: EOPNOTSUPP)
                        cookie: match progs.cookies {
                            None => probe.cookie(),
                            Some(_) => 0,
                        },
                        retprobe,
                        ..Default::default()
                    };
                    prog.attach_uprobe_with_opts(pid, &self.path, probe.site_offset(), opts)
                };
                let mut links = Vec::new();
                for probe in returning {
                    links.push(single(progs.ret, probe, true)?);
                }
                for probe in &all {
                    links.push(single(progs.entry, probe, false)?);
                }
                links
            }
        })
    }
}

/// On stderr, the objects probed; verbose: and each function, with the
/// bytes its probe sits past the function's start.
fn say_probed(objects: &[ProbedObject], verbose: bool) {
    let counts: Vec<String> = objects
        .iter()
        .map(|o| format!("{} ({})", escape_path(&o.path), o.probes.len()))
        .collect();
    crate::say!(
        "memleak: probing allocator functions in {}",
        counts.join(", ")
    );
    if !verbose {
        return;
    }
    for object in objects {
        let functions: Vec<String> = object
            .probes
            .iter()
            .map(|p| match p.site.offset {
                0 => p.symbol.clone(),
                offset => format!("{}+{offset:#x}", p.symbol),
            })
            .collect();
        crate::say!(
            "memleak: {}: {}",
            escape_path(&object.path),
            escape_bytes(functions.join(" ").as_bytes())
        );
    }
}

/// The symbol prefixes looked for: --symbols-prefix's, else DEFAULT_PREFIXES.
fn prefixes(args: &Args) -> Vec<&str> {
    match args.symbols_prefix.as_str() {
        "" => DEFAULT_PREFIXES.to_vec(),
        prefix => vec![prefix],
    }
}

/// The objects of `paths` that define allocator functions.
fn allocators_in(paths: &[PathBuf], prefixes: &[&str]) -> Vec<ProbedObject> {
    let mut objects = Vec::new();
    for path in paths {
        match resolve_functions(path, prefixes) {
            Ok(probes) if probes.is_empty() => {}
            Ok(probes) => objects.push(ProbedObject {
                path: path.clone(),
                probes,
            }),
            // a file replaced or deleted since it was mapped
            Err(err) => crate::say!("memleak: not probed: {err:#}"),
        }
    }
    objects
}

/// The loader goes on until libc's code is mapped (libc is, as a rule, the
/// last of the program's own libraries mapped, after the preloaded ones):
/// the libraries are then in the mappings the unwind tables are read from
/// too (engine::unwind); one mapped later is read in when a stack first
/// reaches it.
fn libc_code_mapped(maps: &[MapsEntry]) -> Option<Vec<MapsEntry>> {
    maps.iter()
        .any(|m| is_libc(m) && m.executable())
        .then(|| maps.to_vec())
}

/// Process `pid`'s mappings where its loader stopped: None if it ended.
fn mapped_by_loader(step: Mapped<Vec<MapsEntry>>, pid: Pid) -> Result<Option<Vec<MapsEntry>>> {
    match step {
        Mapped::Exited => Ok(None),
        Mapped::Found(maps) => Ok(Some(maps)),
        // a static program, or one without glibc: its own mappings
        Mapped::Absent => read_maps_of(pid.as_raw() as u32).map(Some),
    }
}

/// ", with prefix P" for messages, when --symbols-prefix gave one.
fn with_prefix(prefix: &str) -> String {
    match prefix {
        "" => String::new(),
        prefix => format!(" with prefix {}", escape_bytes(prefix.as_bytes())),
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

/// Where file offset `offset` of `path` is mapped in a process (`maps`).
fn address_of(maps: &[MapsEntry], path: &Path, offset: u64) -> Option<u64> {
    maps.iter()
        .find(|m| {
            m.path() == Some(path) && (m.offset..m.offset + (m.end - m.start)).contains(&offset)
        })
        .map(|m| m.start + (offset - m.offset))
}

/// A process's mappings; a process gone meanwhile is said to be.
fn read_maps_of(pid: u32) -> Result<Vec<MapsEntry>> {
    match proc_maps::read_maps(pid) {
        Ok(maps) => Ok(maps),
        Err(err) if gone(&err) => bail!("no process with PID {pid}"),
        Err(err) => Err(err),
    }
}

/// Whether reading a process's /proc file failed because it is gone.
fn gone(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .any(|io| {
            io.kind() == std::io::ErrorKind::NotFound || io.raw_os_error() == Some(libc::ESRCH)
        })
}

/// The files a process has code mapped from, each once, in mapping order.
fn mapped_objects(maps: &[MapsEntry]) -> Vec<PathBuf> {
    let mut seen = std::collections::HashSet::new();
    maps.iter()
        .filter(|m| m.executable() && m.inode != 0)
        .filter(|m| seen.insert((m.device, m.inode)))
        .filter_map(|m| m.path().map(Path::to_path_buf))
        .collect()
}

fn is_libc(mapping: &MapsEntry) -> bool {
    let name = mapping.file_name();
    name.starts_with(b"libc.so") || name.starts_with(b"libc-")
}

/// The allocator functions `object` defines (under each prefix), each
/// once (aliases share an address), and where to probe them.
fn resolve_functions(object: &Path, prefixes: &[&str]) -> Result<Vec<Probe>> {
    let names: Vec<(String, Func)> = FUNCTIONS
        .iter()
        .flat_map(|&(name, func)| {
            let prefixes = if name.starts_with("_Z") {
                &[""][..]
            } else {
                prefixes
            };
            prefixes
                .iter()
                .map(move |prefix| (format!("{prefix}{name}"), func))
        })
        .collect();
    let refs: Vec<&str> = names.iter().map(|(name, _)| name.as_str()).collect();
    let found = defined_symbols(object, &refs)?;
    let mut file =
        File::open(object).with_context(|| format!("opening {}", escape_path(object)))?;
    let defines_malloc = names.iter().zip(&found).any(|((name, func), sym)| {
        *func == Func::MEMLEAK_MALLOC && !name.starts_with("_Z") && sym.is_some()
    });
    let mut probes: Vec<Probe> = Vec::new();
    for ((name, func), sym) in names.into_iter().zip(found) {
        let Some((offset, size)) = sym else {
            continue;
        };
        if name.starts_with("_Z") && !defines_malloc {
            continue;
        }
        if probes.iter().any(|p| p.offset == offset) {
            continue;
        }
        let size = size.unwrap_or(probe_site::FUNCTION_BYTES);
        let site =
            cheap_probe_site(&mut file, offset, size, arguments_read(func)).with_context(|| {
                format!(
                    "reading {} in {}",
                    escape_bytes(name.as_bytes()),
                    escape_path(object)
                )
            })?;
        probes.push(Probe {
            symbol: name,
            func,
            offset,
            site,
        });
    }
    Ok(probes)
}

/// A defined symbol's file offset, and its size if known.
type Defined = (u64, Option<usize>);

/// Each of `names` that `object` defines (None: it doesn't), from its ELF
/// symbol tables (.dynsym is all Debian's libc has).
fn defined_symbols(object: &Path, names: &[&str]) -> Result<Vec<Option<Defined>>> {
    let mut elf = Elf::new(object);
    elf.debug_syms = false;
    let inspector = Inspector::new();
    let found = inspector
        .lookup(&Source::Elf(elf), names)
        .with_context(|| format!("reading the symbols of {}", escape_path(object)))?;
    Ok(found
        .iter()
        .map(|syms| {
            syms.iter()
                .find_map(|sym| sym.file_offset.map(|offset| (offset, sym.size)))
        })
        .collect())
}

/// Where in the function of `size` bytes at `offset` its uprobe costs one
/// trap instead of two (see probe_site).
fn cheap_probe_site(
    file: &mut File,
    offset: u64,
    size: usize,
    args_read: u8,
) -> std::io::Result<ProbeSite> {
    let size = size.min(probe_site::FUNCTION_BYTES);
    let mut code = Vec::with_capacity(size);
    file.seek(SeekFrom::Start(offset))?;
    file.take(size as u64).read_to_end(&mut code)?;
    Ok(probe_site::cheap_site(&code, args_read))
}

#[cfg(test)]
mod tests {
    use super::{Func, Probe};
    use crate::analysis::probe_site::ENTRY;

    /// memleak.bpf.c reads the arguments straight from the ABI's registers
    /// when the cookie names those (MEMLEAK_ABI_REGS).
    #[test]
    fn an_entry_probes_cookie_names_the_abi_registers() {
        let probe = Probe {
            symbol: "malloc".into(),
            func: Func::MEMLEAK_MALLOC,
            offset: 0,
            site: ENTRY,
        };
        assert_eq!(probe.cookie() >> 8, 0x1267);
        assert_eq!(probe.cookie() & 0xff, u64::from(Func::MEMLEAK_MALLOC.0));
    }
}
