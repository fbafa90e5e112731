//! What this process may do and what the running kernel offers, checked
//! before any BPF is loaded so that each failure is one clear line:
//! privileges, BTF, tracefs, the tracepoints programs attach to.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use libbpf_rs::btf::{types, Btf, BtfType, ReferencesType};
use libbpf_rs::OpenObject;

use crate::engine::features;
use crate::engine::kernel_btf::{self, KernelBtf};

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set of this process, from /proc/self/status.
fn effective_caps() -> Result<u64> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    parse_cap_eff(&status).context("no CapEff line in /proc/self/status")
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// The initial user namespace maps every uid to itself: `0 0 4294967295`.
/// (An unreadable map, on a kernel without user namespaces, counts as initial.)
fn is_initial_user_namespace(uid_map: &str) -> bool {
    let fields: Vec<&str> = uid_map.split_whitespace().collect();
    fields.is_empty() || fields == ["0", "0", "4294967295"]
}

fn has_cap(caps: u64, cap: u32) -> bool {
    caps & (1u64 << cap) != 0
}

/// Loading tracing programs needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)
/// in the initial user namespace: the root of a user namespace (unshare -U,
/// a rootless container) has every capability there, but not for BPF.
pub fn check_privileges() -> Result<()> {
    let caps = effective_caps()?;
    if has_cap(caps, CAP_SYS_ADMIN) || (has_cap(caps, CAP_BPF) && has_cap(caps, CAP_PERFMON)) {
        let uid_map = fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
        if !is_initial_user_namespace(&uid_map) {
            bail!("permission denied: this runs in a user namespace (unshare -U, a rootless container), whose root can't load tracing programs: run memtrace as root outside it");
        }
        return Ok(());
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .iter()
        .filter(|(cap, _)| !has_cap(caps, *cap))
        .map(|(_, name)| *name)
        .collect();
    bail!(
        "permission denied: tracing needs root, or {} (run it with sudo)",
        missing.join(" and ")
    )
}

/// CO-RE relocations need the kernel's BTF.
pub fn check_btf() -> Result<()> {
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Ok(());
    }
    bail!("this kernel has no BTF (/sys/kernel/btf/vmlinux is missing): memtrace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y")
}

/// Where libbpf looks for tracepoints: it prefers the debugfs path when that
/// exists, else /sys/kernel/tracing.
fn tracefs_root() -> PathBuf {
    let debugfs = Path::new("/sys/kernel/debug/tracing");
    if debugfs.join("events").exists() {
        debugfs.to_path_buf()
    } else {
        PathBuf::from("/sys/kernel/tracing")
    }
}

/// Mounts tracefs at /sys/kernel/tracing when nothing is there (it is not
/// mounted at boot on some machines). It stays mounted, as perf leaves it.
fn ensure_tracefs() -> Result<PathBuf> {
    let root = tracefs_root();
    match fs::metadata(root.join("events")) {
        Ok(_) => return Ok(root),
        // mounted, but its root directory (mode 0700) is closed to this user
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => bail!(
            "tracefs is mounted at {} but this user can't read it ({err}): classic tracepoints need root, or a tracefs this user may read",
            root.display()
        ),
        Err(_) => {}
    }
    let mount_point = Path::new("/sys/kernel/tracing");
    nix::mount::mount(
        Some("tracefs"),
        mount_point,
        Some("tracefs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .or_else(|errno| {
        // another process (a second memtrace) may have mounted it meanwhile (EBUSY)
        if mount_point.join("events").exists() {
            return Ok(());
        }
        Err(anyhow::anyhow!(
            "tracefs is not mounted and mounting it at {} failed ({errno}): mount it as root with `mount -t tracefs tracefs {}`",
            mount_point.display(),
            mount_point.display()
        ))
    })?;
    Ok(mount_point.to_path_buf())
}

/// A classic tracepoint named by a program's section: `tp/syscalls/sys_enter_mmap`.
pub fn tracepoint_of_section(section: &str) -> Option<(&str, &str)> {
    let rest = section
        .strip_prefix("tp/")
        .or_else(|| section.strip_prefix("tracepoint/"))?;
    rest.split_once('/')
}

/// The tracepoint a BTF (`tp_btf/NAME`) or raw (`raw_tp/NAME`) tracepoint
/// program attaches to: both exist where the kernel's BTF has
/// btf_trace_NAME.
fn raw_tracepoint_of_section(section: &str) -> Option<&str> {
    section
        .strip_prefix("tp_btf/")
        .or_else(|| section.strip_prefix("raw_tp/"))
        .or_else(|| section.strip_prefix("raw_tracepoint/"))
}

/// Checks that every tracepoint is present under a tracefs root; names the first missing one.
fn check_tracepoints(root: &Path, tracepoints: &[(String, String)]) -> Result<()> {
    for (category, name) in tracepoints {
        if !root.join("events").join(category).join(name).is_dir() {
            bail!(
                "tracepoint {category}:{name} does not exist on this kernel (not under {}/events), so this tool can't run here",
                root.display()
            );
        }
    }
    Ok(())
}

thread_local! {
    /// What the kernel's BTF holds, read once however many checks a tool makes.
    static KERNEL_BTF: std::cell::OnceCell<KernelBtf> = const { std::cell::OnceCell::new() };
}

/// What the kernel's BTF holds (tracepoints, BPF names): read from its raw
/// BTF (kernel_btf.rs), or where that can't be done, from the BTF parsed
/// whole.
pub fn with_kernel_btf<T>(f: impl FnOnce(&KernelBtf) -> T) -> Result<T> {
    KERNEL_BTF.with(|cell| {
        if let Some(found) = cell.get() {
            return Ok(f(found));
        }
        let asked = features::btf_names();
        let found = match kernel_btf::of_running_kernel(&asked) {
            Some(found) => found,
            None => of_parsed_btf(
                &Btf::from_vmlinux().context("reading the kernel's BTF")?,
                &asked,
            ),
        };
        Ok(f(cell.get_or_init(|| found)))
    })
}

/// kernel_btf's findings, from parsed BTF.
pub fn of_parsed_btf(btf: &Btf, asked: &[&'static str]) -> KernelBtf {
    let tracepoints = btf
        .type_by_kind::<types::Typedef>()
        .filter_map(|typedef| {
            let name = typedef.name()?.to_str()?;
            let name = name.strip_prefix("btf_trace_")?.to_string();
            // kernel_btf::tracepoint_args: a pointer to a prototype whose
            // first parameter is the tracepoint's own
            let referenced = |id| btf.type_by_id::<BtfType>(id);
            let args = referenced(typedef.referenced_type_id())
                .and_then(|t| types::Ptr::try_from(t).ok())
                .and_then(|ptr| referenced(ptr.referenced_type_id()))
                .and_then(|t| types::FuncProto::try_from(t).ok())
                .map(|proto| proto.len().saturating_sub(1));
            Some((name, args))
        })
        .collect();
    let has = |name: &str| match name.split_once('.') {
        // kernel_btf's STRUCT_MEMBERS
        Some((name, member)) => btf
            .type_by_name::<types::Struct>(name)
            .is_some_and(|s| has_member(btf, &types::Composite::from(s), member)),
        None if name.starts_with("bpf_") => btf.type_by_name::<types::Func>(name).is_some(),
        None => btf.type_by_kind::<types::Enum>().any(|e| {
            e.iter()
                .any(|m| m.name.and_then(|n| n.to_str()) == Some(name))
        }),
    };
    KernelBtf {
        tracepoints,
        names: asked.iter().copied().filter(|name| has(name)).collect(),
    }
}

/// The byte offset of member `name` in struct `strukt` of the kernel's BTF,
/// looked for in it and in its anonymous members; None if it has none.
pub fn member_offset(btf: &Btf, strukt: &str, name: &str) -> Option<u32> {
    let strukt = btf.type_by_name::<types::Struct>(strukt)?;
    offset_in(btf, &types::Composite::from(strukt), name).map(|bits| bits / 8)
}

/// member_offset's search, in bits.
fn offset_in(btf: &Btf, composite: &types::Composite, name: &str) -> Option<u32> {
    composite.iter().find_map(|member| {
        let at = match member.attr {
            types::MemberAttr::Normal { offset } => offset,
            types::MemberAttr::BitField { offset, .. } => offset,
        };
        match member.name {
            Some(member_name) => (member_name == name).then_some(at),
            None => btf
                .type_by_id::<types::Composite>(member.ty)
                .and_then(|inner| offset_in(btf, &inner, name))
                .map(|inner| at + inner),
        }
    })
}

/// Whether a struct or union has a member `name`, in it or in its anonymous
/// members.
fn has_member(btf: &Btf, composite: &types::Composite, name: &str) -> bool {
    composite.iter().any(|member| match member.name {
        Some(member_name) => member_name == name,
        None => btf
            .type_by_id::<types::Composite>(member.ty)
            .is_some_and(|inner| has_member(btf, &inner, name)),
    })
}

/// Whether the kernel has the BTF tracepoint `name` (a `tp_btf/` target):
/// the kernel's BTF then has the typedef btf_trace_NAME.
fn btf_tracepoint_exists(name: &str) -> Result<bool> {
    with_kernel_btf(|btf| btf.tracepoints.contains_key(name))
}

/// The number of arguments the kernel's BTF tracepoint `name` passes; None
/// if it has no such tracepoint (or its BTF can't be read).
pub fn btf_tracepoint_args(name: &str) -> Option<usize> {
    with_kernel_btf(|btf| btf.tracepoints.get(name).copied().flatten())
        .ok()
        .flatten()
}

/// Whether the kernel has what a program with this section attaches to: a
/// BTF tracepoint (`tp_btf/NAME`) in its BTF, a classic one (`tp/CAT/NAME`)
/// under tracefs (mounted if need be). Other kinds are not probed yet: true.
pub fn can_attach(section: &str) -> Result<bool> {
    if let Some(name) = raw_tracepoint_of_section(section) {
        return btf_tracepoint_exists(name);
    }
    if let Some((category, name)) = tracepoint_of_section(section) {
        let root = ensure_tracefs()?;
        return Ok(root.join("events").join(category).join(name).is_dir());
    }
    Ok(true)
}

/// The perf id of a classic tracepoint (tracefs mounted if need be), as
/// perf_event_open(2) takes it.
pub fn tracepoint_id(category: &str, name: &str) -> Result<u64> {
    let path = ensure_tracefs()?
        .join("events")
        .join(category)
        .join(name)
        .join("id");
    let text = fs::read_to_string(&path)
        .with_context(|| format!("reading the id of tracepoint {category}:{name}"))?;
    text.trim()
        .parse()
        .with_context(|| format!("the id of tracepoint {category}:{name} is not a number"))
}

/// After the tool chose its programs: mounts tracefs if a classic tracepoint
/// needs it, and checks that each tracepoint to attach exists, so a missing
/// one is named instead of failing the load.
pub fn check_attach_points(object: &OpenObject) -> Result<()> {
    let sections: Vec<String> = object
        .progs()
        .filter(|prog| prog.autoload())
        .map(|prog| prog.section().to_string_lossy().into_owned())
        .collect();
    let btf_tracepoints: Vec<&str> = sections
        .iter()
        .filter_map(|s| raw_tracepoint_of_section(s))
        .collect();
    if !btf_tracepoints.is_empty() {
        let missing = with_kernel_btf(|btf| {
            btf_tracepoints
                .iter()
                .find(|name| !btf.tracepoints.contains_key(**name))
                .copied()
        })?;
        if let Some(missing) = missing {
            bail!("tracepoint {missing} does not exist on this kernel (no btf_trace_{missing} in its BTF), so this tool can't run here");
        }
    }
    let tracepoints: Vec<(String, String)> = sections
        .iter()
        .filter_map(|section| {
            tracepoint_of_section(section).map(|(c, n)| (c.to_string(), n.to_string()))
        })
        .collect();
    if tracepoints.is_empty() {
        return Ok(());
    }
    let root = ensure_tracefs()?;
    check_tracepoints(&root, &tracepoints)
}

/// The running kernel's release (`6.1.0-56-amd64`), from
/// /proc/sys/kernel/osrelease.
pub fn release() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|release| release.trim().to_string())
}

/// Whether the running kernel's release is `major.minor` or later (an
/// unreadable one counts as older).
pub fn release_at_least(major: u32, minor: u32) -> bool {
    release()
        .and_then(|release| parse_release(&release))
        .is_some_and(|running| running >= (major, minor))
}

/// `6.12.48+deb13-amd64` -> (6, 12).
fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The size of a page, in bytes.
pub fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |size| size as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn releases_are_read_as_major_and_minor() {
        assert_eq!(super::parse_release("6.12.48+deb13-amd64\n"), Some((6, 12)));
        assert_eq!(super::parse_release("5.10.0-35-amd64"), Some((5, 10)));
        assert_eq!(super::parse_release("6.1"), Some((6, 1)));
        assert_eq!(super::parse_release("garbage"), None);
    }

    use super::*;

    #[test]
    fn cap_eff_parsing() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        let caps = parse_cap_eff(status).unwrap();
        assert!(has_cap(caps, CAP_BPF) && has_cap(caps, CAP_PERFMON));
        let caps = parse_cap_eff("CapEff:\t0000000000000000\n").unwrap();
        assert!(!has_cap(caps, CAP_SYS_ADMIN));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }

    #[test]
    fn user_namespaces() {
        assert!(is_initial_user_namespace(
            "         0          0 4294967295\n"
        ));
        assert!(is_initial_user_namespace(""));
        // unshare -Ur: root inside maps to one uid outside
        assert!(!is_initial_user_namespace(
            "         0       1000          1\n"
        ));
        assert!(!is_initial_user_namespace("0 0 1\n"));
    }

    #[test]
    fn sections_name_tracepoints() {
        assert_eq!(
            tracepoint_of_section("tp/syscalls/sys_enter_mmap"),
            Some(("syscalls", "sys_enter_mmap"))
        );
        assert_eq!(
            tracepoint_of_section("tracepoint/oom/mark_victim"),
            Some(("oom", "mark_victim"))
        );
        assert_eq!(tracepoint_of_section("tp_btf/sched_process_fork"), None);
    }

    #[test]
    fn a_missing_tracepoint_is_named() {
        let root = std::env::temp_dir().join(format!("memtrace-tracefs-{}", std::process::id()));
        fs::create_dir_all(root.join("events/syscalls/sys_enter_mmap")).unwrap();
        let present = [("syscalls".to_string(), "sys_enter_mmap".to_string())];
        assert!(check_tracepoints(&root, &present).is_ok());
        let missing = [
            ("syscalls".to_string(), "sys_enter_mmap".to_string()),
            ("syscalls".to_string(), "sys_exit_mmap".to_string()),
        ];
        let err = check_tracepoints(&root, &missing).unwrap_err().to_string();
        assert!(err.contains("syscalls:sys_exit_mmap"), "{err}");
        fs::remove_dir_all(&root).unwrap();
    }
}
