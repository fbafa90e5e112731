//! What every tool does with its BPF skeleton, written once: libbpf's
//! messages, the process filter, the shared programs, drop accounting.

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapFlags, Object, OpenObject, PrintLevel};

use crate::cli::CommonArgs;
use crate::target::Target;

/// Indexes of the BPF side's drop_counts array (enum memtrace_drop_reason in
/// common.h; index 1 is MEMTRACE_DROP_PENDING).
pub const DROP_RINGBUF: usize = 0;
pub const DROP_COUNTS: usize = 2;
pub const DROP_STACKS: usize = 3;
const DROP_NR: usize = 4;

fn print_libbpf(_level: PrintLevel, msg: String) {
    eprint!("libbpf: {msg}");
}

/// libbpf's messages go to stderr with -v; otherwise errors speak for themselves.
fn init_libbpf_logging(verbose: bool) {
    if verbose {
        libbpf_rs::set_print(Some((PrintLevel::Debug, print_libbpf)));
    } else {
        libbpf_rs::set_print(None);
    }
}

pub const LOAD_FAILED: &str =
    "loading the BPF programs into the kernel failed (run with -v to see libbpf's and the verifier's messages)";
pub const ATTACH_FAILED: &str =
    "attaching the BPF programs failed (run with -v to see libbpf's messages)";

/// The filter options of common.bpf.h, computed from the shared arguments.
pub struct Filter {
    pub by_tgid: bool,
    pub follow_forks: bool,
    pub comm: Option<[i8; 16]>,
    /// One thread (a tool's `-t TID`), set by the tool after `prepare`.
    pub tid: Option<u32>,
    /// One user (a tool's `-u UID`), set by the tool after `prepare`.
    pub uid: Option<u32>,
}

impl Filter {
    pub fn new(common: &CommonArgs, target: &Target) -> Filter {
        let comm = common.comm.as_ref().map(|name| {
            // the kernel keeps 15 bytes of a name and a NUL
            let mut comm = [0i8; 16];
            for (slot, byte) in comm.iter_mut().zip(name.as_bytes().iter().take(15)) {
                *slot = *byte as i8;
            }
            comm
        });
        Filter {
            by_tgid: target.initial_tgids().is_some(),
            follow_forks: target.follows_forks(),
            comm,
            tid: None,
            uid: None,
        }
    }
}

/// `mod bpf`: the generated skeleton of src/bpf/NAME.bpf.c, lints off (generated code).
#[macro_export]
macro_rules! bpf_skeleton {
    ($name:literal) => {
        mod bpf {
            #![allow(
                clippy::all,
                clippy::pedantic,
                non_camel_case_types,
                dead_code,
                unused_imports
            )]
            include!(concat!(env!("OUT_DIR"), "/", $name, ".skel.rs"));
        }
    };
}

/// What every tool does before opening its skeleton: libbpf logging,
/// preflight (privileges, BTF), and the target (`-p` checked, `-- COMMAND` started held).
pub fn prepare(common: &CommonArgs) -> Result<(Target, Filter)> {
    init_libbpf_logging(common.verbose);
    crate::kernel::check_privileges()?;
    crate::kernel::check_btf()?;
    let target = Target::new(&common.pids, &common.command)?;
    let filter = Filter::new(common, &target);
    Ok((target, filter))
}

/// Sets common.bpf.h's read-only globals in a skeleton's generated rodata.
#[macro_export]
macro_rules! set_filter_rodata {
    ($open_skel:expr, $filter:expr) => {{
        let rodata = $open_skel
            .maps
            .rodata_data
            .as_deref_mut()
            .ok_or_else(|| anyhow::anyhow!("BPF object has no .rodata"))?;
        let filter: &$crate::skel::Filter = $filter;
        rodata.filter_by_tgid = filter.by_tgid;
        rodata.follow_forks = filter.follow_forks;
        if let Some(comm) = filter.comm {
            rodata.filter_by_comm = true;
            rodata.filter_comm = comm;
        }
        if let Some(tid) = filter.tid {
            rodata.filter_by_tid = true;
            rodata.filter_tid = tid;
        }
        if let Some(uid) = filter.uid {
            rodata.filter_by_uid = true;
            rodata.filter_uid = uid;
        }
    }};
}

/// Turns a program on or off before load, by name.
pub fn set_autoload(object: &mut OpenObject, name: &str, on: bool) -> Result<()> {
    let mut prog = object
        .progs_mut()
        .find(|p| p.name() == name)
        .with_context(|| format!("BPF program {name} not found"))?;
    prog.set_autoload(on);
    Ok(())
}

/// Loads only the shared programs the filter needs.
pub fn choose_common_programs(object: &mut OpenObject, filter: &Filter) -> Result<()> {
    set_autoload(object, "memtrace_follow_fork", filter.follow_forks)?;
    set_autoload(object, "memtrace_forget_exit", filter.by_tgid)?;
    Ok(())
}

fn map<'a>(object: &'a Object, name: &str) -> Result<libbpf_rs::Map<'a>> {
    object
        .maps()
        .find(|m| m.name() == name)
        .with_context(|| format!("BPF map {name} not found"))
}

/// Puts the target's processes into the BPF side's pid set.
pub fn fill_traced_tgids(object: &Object, target: &Target) -> Result<()> {
    let Some(tgids) = target.initial_tgids() else {
        return Ok(());
    };
    let traced = map(object, "traced_tgids")?;
    for tgid in tgids {
        traced
            .update(&tgid.to_ne_bytes(), &[1u8], MapFlags::ANY)
            .with_context(|| format!("adding PID {tgid} to the filter"))?;
    }
    Ok(())
}

/// The first `n` slots of a per-CPU array of u64, each summed over the CPUs.
pub fn percpu_sums(map: &dyn MapCore, n: usize) -> Result<Vec<u64>> {
    (0..n as u32)
        .map(|slot| {
            let per_cpu = map
                .lookup_percpu(&slot.to_ne_bytes(), MapFlags::ANY)
                .with_context(|| format!("reading {}", map.name().to_string_lossy()))?
                .unwrap_or_default();
            Ok(per_cpu
                .iter()
                .filter_map(|v| v.get(..8).and_then(|b| b.try_into().ok()))
                .map(u64::from_ne_bytes)
                .sum())
        })
        .collect()
}

/// What the BPF side could not record, summed over CPUs, by reason.
pub fn drop_counts(object: &Object) -> Result<[u64; DROP_NR]> {
    let sums = percpu_sums(&map(object, "drop_counts")?, DROP_NR)?;
    let mut totals = [0u64; DROP_NR];
    totals.copy_from_slice(&sums);
    Ok(totals)
}

/// Tells on stderr what was lost and which option gives more room; true if anything was.
pub fn report_drops(tool: &str, object: &Object, hints: &[(usize, &str)]) -> Result<bool> {
    let counts = drop_counts(object)?;
    let what = [
        "events lost: the ring buffer was full",
        "calls not traced: too many in flight at once",
        "counts lost: the counting map was full",
        "stacks lost: the stack store was full",
    ];
    let mut lost = false;
    for (reason, &count) in counts.iter().enumerate() {
        if count == 0 {
            continue;
        }
        lost = true;
        let hint = hints
            .iter()
            .find(|(r, _)| *r == reason)
            .map(|(_, h)| format!(" ({h})"))
            .unwrap_or_default();
        eprintln!("{tool}: {count} {}{hint}", what[reason]);
    }
    Ok(lost)
}

/// Reads and clears a map (each entry atomically: what is added during the
/// read lands in the next report), decoding keys with `K` and values with `V`.
pub fn take_entries<K, V>(map: &dyn MapCore) -> Result<Vec<(K, V)>>
where
    K: plain::Plain + Default,
    V: plain::Plain + Default,
{
    let keys: Vec<Vec<u8>> = map.keys().collect();
    let mut entries = Vec::with_capacity(keys.len());
    for raw_key in keys {
        let Some(raw_value) = map
            .lookup_and_delete(&raw_key)
            .context("reading the counts")?
        else {
            continue;
        };
        let (mut key, mut value) = (K::default(), V::default());
        if plain::copy_from_bytes(&mut key, &raw_key).is_ok()
            && plain::copy_from_bytes(&mut value, &raw_value).is_ok()
        {
            entries.push((key, value));
        }
    }
    Ok(entries)
}

/// take_entries() for maps of u64 counts.
pub fn take_counts<K: plain::Plain + Default>(counts: &dyn MapCore) -> Result<Vec<(K, u64)>> {
    take_entries::<K, u64>(counts)
}
