//! The one sequence every BPF tool loads its skeleton with, so that no tool
//! can skip a step or take them out of order:
//!
//! preflight (privileges, BTF) -> the target (`-p` checked, `-- COMMAND`
//! started held) -> open -> the filter's globals -> the tool's globals, map
//! sizes and programs -> the kernel probed for what the chosen programs need,
//! alternatives chosen -> load -> the pid set filled -> attach (a tool's
//! system call programs through engine/syscalls.rs).
//!
//! Probing the kernel and choosing programs lives here: a tool states which
//! programs can do a job (`Choice`), cheapest first, and what is lost without
//! any; the loader loads the first the running kernel can attach.

use std::mem::MaybeUninit;
use std::os::fd::AsFd;

use anyhow::{bail, Context, Result};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, Object, OpenMapMut, OpenObject, OpenProgramMut, PrintLevel};

use crate::cli::CommonArgs;
use crate::engine::cgroup;
use crate::engine::features;
use crate::engine::kernel;
use crate::engine::maps::map_named;
use crate::engine::skeleton::{Filter, OpenSkeleton};
use crate::engine::syscalls::{self, SyscallHooks, SyscallPrograms};
use crate::engine::target::Target;

pub const LOAD_FAILED: &str =
    "loading the BPF programs into the kernel failed (run with -v to see libbpf's and the verifier's messages)";
pub const ATTACH_FAILED: &str =
    "attaching the BPF programs failed (run with -v to see libbpf's messages)";

/// A trace being set up: the tool, what it traces, and how its BPF side filters.
pub struct Trace {
    pub tool: &'static str,
    pub verbose: bool,
    /// -d: how long to trace.
    pub duration: Option<std::time::Duration>,
    /// --json: what the output is.
    pub json: bool,
    pub target: Target,
    /// The tool may add a thread or user filter before `load`.
    pub filter: Filter,
    /// The tool's system call programs, once `load` attached them.
    pub syscalls: Option<SyscallHooks>,
}

impl Trace {
    /// What every BPF tool does first: libbpf's messages on stderr with -v,
    /// the preflight (privileges, BTF), then the target (`-p` pids checked,
    /// `-- COMMAND` started, held before exec until the trace starts).
    pub fn prepare(common: &CommonArgs) -> Result<Trace> {
        init_libbpf_logging(common.verbose);
        kernel::check_privileges()?;
        kernel::check_btf()?;
        // before the target: a bad path must not start the command
        let cgroup = common.cgroup.as_deref().map(cgroup::resolve).transpose()?;
        let target = Target::new(&common.pids, &common.command, common.user.as_deref())?;
        let filter = Filter::new(common, &target, cgroup);
        Ok(Trace {
            tool: common.tool,
            verbose: common.verbose,
            duration: common.duration,
            json: common.json,
            target,
            filter,
            syscalls: None,
        })
    }
}

fn print_libbpf(_level: PrintLevel, msg: String) {
    crate::present::stderr::text(format_args!("libbpf: {msg}"));
}

/// libbpf's messages go to stderr with -v; otherwise errors speak for themselves.
fn init_libbpf_logging(verbose: bool) {
    if verbose {
        libbpf_rs::set_print(Some((PrintLevel::Debug, print_libbpf)));
    } else {
        libbpf_rs::set_print(None);
    }
}

/// A job the BPF side can do with one of several programs, cheapest first.
/// The loader loads the first whose needs the running kernel meets (today:
/// its attach point, from its section) and none of the others.
pub struct Choice {
    /// What the programs do, for messages: "folios written by reclaim".
    pub job: &'static str,
    pub programs: &'static [&'static str],
    pub without: Without,
}

/// What happens when the kernel can run none of a Choice's programs.
pub enum Without {
    /// The tool can't run: the load stops, naming the first program's missing attach point.
    Fail,
    /// The tool runs without the job, and says on stderr what is lost.
    Lose(&'static str),
}

/// Which of a tool's programs to load, decided between open and load.
#[derive(Default)]
pub struct Programs {
    switches: Vec<(&'static str, bool)>,
    choices: Vec<Choice>,
    syscalls: Option<SyscallPrograms>,
    /// Whether the raw system call programs are used (decided in apply).
    raw_syscalls: bool,
}

impl Programs {
    /// Loads the programs named only if `on`.
    pub fn load_if(&mut self, on: bool, names: &[&'static str]) -> &mut Self {
        self.switches.extend(names.iter().map(|&name| (name, on)));
        self
    }

    /// One job several programs can do (see Choice).
    pub fn choose(&mut self, choice: Choice) -> &mut Self {
        self.choices.push(choice);
        self
    }

    /// The programs that see the tool's system calls, both kinds: the loader
    /// attaches them through engine/syscalls.rs, which says which and when.
    pub fn syscalls(&mut self, programs: SyscallPrograms) -> &mut Self {
        self.syscalls = Some(programs);
        self
    }

    fn apply(&mut self, trace: &Trace, object: &mut OpenObject) -> Result<()> {
        for &(name, on) in &self.switches {
            set_autoload(object, name, on)?;
        }
        if let Some(syscalls) = &self.syscalls {
            self.raw_syscalls = syscalls::raw_usable()?;
            // loaded and attached here: never by the skeleton's attach
            for &name in &syscalls.classic {
                set_autoload(object, name, true)?;
                set_autoattach(object, name, false)?;
            }
            for &name in &syscalls.raw {
                set_autoload(object, name, self.raw_syscalls)?;
                set_autoattach(object, name, false)?;
            }
        }
        for choice in &self.choices {
            let mut chosen = None;
            for &name in choice.programs {
                if chosen.is_none() && kernel::can_attach(&section_of(object, name)?)? {
                    chosen = Some(name);
                }
                set_autoload(object, name, chosen == Some(name))?;
            }
            match (chosen, &choice.without) {
                (Some(name), _) if trace.verbose => {
                    crate::say!("{}: {}: {name}", trace.tool, choice.job)
                }
                (Some(_), _) => {}
                // left on, so the preflight names what the kernel lacks
                (None, Without::Fail) => set_autoload(object, choice.programs[0], true)?,
                (None, Without::Lose(lost)) => crate::say!(
                    "{}: {}: this kernel can attach none of {}",
                    trace.tool,
                    lost,
                    choice.programs.join(", ")
                ),
            }
        }
        Ok(())
    }
}

fn section_of(object: &OpenObject, name: &str) -> Result<String> {
    object
        .progs()
        .find(|p| p.name() == name)
        .map(|p| p.section().to_string_lossy().into_owned())
        .with_context(|| format!("BPF program {name} not found"))
}

fn program_mut<'a>(object: &'a mut OpenObject, name: &str) -> Result<OpenProgramMut<'a>> {
    object
        .progs_mut()
        .find(|p| p.name() == name)
        .with_context(|| format!("BPF program {name} not found"))
}

fn set_autoload(object: &mut OpenObject, name: &str, on: bool) -> Result<()> {
    program_mut(object, name)?.set_autoload(on);
    Ok(())
}

fn set_autoattach(object: &mut OpenObject, name: &str, on: bool) -> Result<()> {
    program_mut(object, name)?.set_autoattach(on);
    Ok(())
}

/// Opens, configures, loads and attaches a tool's skeleton. `configure` sets
/// the tool's read-only globals and map sizes on the open skeleton and says
/// which of its programs to load; the rest is the same for every tool.
/// Programs libbpf can't attach by section (perf events, uprobes) are the
/// tool's to attach afterwards, before its session starts. The system call
/// programs (Programs::syscalls) go into `trace.syscalls`.
pub fn load<'obj, B>(
    builder: B,
    storage: &'obj mut MaybeUninit<OpenObject>,
    trace: &mut Trace,
    configure: impl FnOnce(&mut B::Output, &mut Programs) -> Result<()>,
) -> Result<<B::Output as OpenSkel<'obj>>::Output>
where
    B: SkelBuilder<'obj>,
    B::Output: OpenSkeleton<'obj>,
{
    let mut open = builder.open(storage).context("opening the BPF object")?;
    open.set_common(&trace.filter)?;
    let mut programs = Programs::default();
    programs
        .load_if(trace.filter.follow_forks, &["memtrace_follow_fork"])
        .load_if(trace.filter.by_tgid, &["memtrace_forget_exit"]);
    if let Some(feature) = features::missing_for(trace.tool) {
        bail!(
            "this kernel ({}) lacks {}, which {}'s programs use (`memtrace doctor` says which \
             tools run here)",
            kernel::release().unwrap_or_else(|| "unknown".into()),
            feature.described(),
            trace.tool
        );
    }
    configure(&mut open, &mut programs)?;
    programs.apply(trace, open.open_object_mut())?;
    kernel::check_attach_points(open.open_object())?;
    let mut skel = match open.load() {
        Ok(skel) => skel,
        Err(err) => return Err(err).context(LOAD_FAILED),
    };
    fill_traced_tgids(skel.object(), &trace.target)?;
    skel.attach().context(ATTACH_FAILED)?;
    if let Some(syscalls) = &programs.syscalls {
        let hooks = SyscallHooks::attach(
            trace.tool,
            trace.verbose,
            skel.object(),
            syscalls,
            programs.raw_syscalls,
        )
        .context(ATTACH_FAILED)?;
        trace.syscalls = Some(hooks);
    }
    Ok(skel)
}

/// Puts the target's processes into the BPF side's pid set.
fn fill_traced_tgids(object: &Object, target: &Target) -> Result<()> {
    let Some(tgids) = target.initial_tgids() else {
        return Ok(());
    };
    let traced = map_named(object, "traced_tgids")?;
    for tgid in tgids {
        traced
            .update(&tgid.to_ne_bytes(), &[1u8], MapFlags::ANY)
            .with_context(|| format!("adding PID {tgid} to the filter"))?;
    }
    Ok(())
}

/// Gives a map room for `entries` (at least one), between open and load.
pub fn set_entries(map: &mut OpenMapMut<'_>, entries: u32) -> Result<()> {
    map.set_max_entries(entries.max(1))
        .with_context(|| format!("sizing the BPF map {}", map.name().to_string_lossy()))
}

/// A hash map made in a thread of its own while the trace is prepared (a
/// large one takes the kernel milliseconds to make: memleak's million
/// outstanding allocations ~10 ms, preallocated ~35 ms), given to libbpf in
/// place of the object's own between open and load.
pub struct MapInAdvance(std::thread::JoinHandle<libbpf_rs::Result<libbpf_rs::MapHandle>>);

impl MapInAdvance {
    /// Starts making a BPF_MAP_TYPE_HASH with these sizes and `map_flags`.
    pub fn hash(name: &'static str, sizes: (u32, u32), entries: u32, map_flags: u32) -> Self {
        MapInAdvance(std::thread::spawn(move || {
            let opts = libbpf_sys::bpf_map_create_opts {
                sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
                map_flags,
                ..Default::default()
            };
            libbpf_rs::MapHandle::create(
                libbpf_rs::MapType::Hash,
                Some(name),
                sizes.0,
                sizes.1,
                entries,
                &opts,
            )
        }))
    }

    /// Waits for the map and has libbpf use it for `map`.
    pub fn reuse_for(self, map: &mut OpenMapMut<'_>) -> Result<()> {
        let name = map.name().to_string_lossy().into_owned();
        let made = self
            .0
            .join()
            .map_err(|_| anyhow::anyhow!("the thread making the BPF map {name} panicked"))?
            .with_context(|| format!("creating the BPF map {name}"))?;
        // libbpf keeps a duplicate of the descriptor
        map.reuse_fd(made.as_fd())
            .with_context(|| format!("using the BPF map {name}"))
    }
}

/// Makes a hash map that the BPF side declares with BPF_F_NO_PREALLOC
/// preallocated after all, between open and load.
pub fn preallocate(map: &mut OpenMapMut<'_>) -> Result<()> {
    let flags = map.map_flags() & !libbpf_sys::BPF_F_NO_PREALLOC;
    map.set_map_flags(flags)
        .with_context(|| format!("preallocating the BPF map {}", map.name().to_string_lossy()))
}

/// Sizes a ring buffer for --buffer-size MIB (see ring_buffer_bytes); its bytes.
pub fn set_ring_buffer_size(map: &mut OpenMapMut<'_>, mib: u32) -> Result<u32> {
    let bytes = ring_buffer_bytes(mib)?;
    set_entries(map, bytes)?;
    Ok(bytes)
}

/// The size of a ring buffer of --buffer-size MIB: a power of two, as the
/// kernel requires (rounded up), and at most what its u32 size holds.
fn ring_buffer_bytes(mib: u32) -> Result<u32> {
    mib.checked_next_power_of_two()
        .and_then(|mib| mib.checked_mul(1 << 20))
        .with_context(|| {
            format!("a ring buffer of {mib} MiB is too large: give --buffer-size 2048 or less")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_buffers_are_powers_of_two() {
        assert_eq!(ring_buffer_bytes(1).unwrap(), 1 << 20);
        assert_eq!(ring_buffer_bytes(16).unwrap(), 16 << 20);
        assert_eq!(ring_buffer_bytes(17).unwrap(), 32 << 20);
        assert_eq!(ring_buffer_bytes(2048).unwrap(), 1 << 31);
        assert!(ring_buffer_bytes(2049).is_err());
    }
}
