//! --cgroup PATH: the cgroup a trace is limited to, as common.bpf.h's
//! memtrace_in_cgroup compares it: its id (the kernfs node of its
//! directory, which is the directory's inode number), which hierarchy to
//! look for it in, the unified one (v2) or a v1 controller's, and where the
//! fields the walk reads are (common.h's memtrace_cgroup_offsets), from the
//! kernel's BTF: by hand rather than by CO-RE, which would cost every load
//! a search of the kernel's types, --cgroup or not.
//!
//! And the cgroups records name (serve's labels, --show-cgroup): ids in the
//! memory controller's hierarchy, named by walking it, with the container
//! or pod a path names.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use libbpf_rs::btf::Btf;
use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC};
use serde::Serialize;

use crate::engine::kernel::member_offset;
use crate::engine::skeleton::Filter;
use crate::present::escape::escape_path;

/// A cgroup to trace, with those below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupFilter {
    pub id: u64,
    /// The v1 controller's subsystem id; None in the unified hierarchy.
    pub subsystem: Option<u32>,
    pub offsets: CgroupOffsets,
}

/// common.h's memtrace_cgroup_offsets: bytes into each struct.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CgroupOffsets {
    pub task_cgroups: u32,
    pub cset_dfl_cgrp: u32,
    pub cset_subsys: u32,
    pub css_cgroup: u32,
    pub cgroup_parent_css: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
}

impl CgroupOffsets {
    /// From the running kernel's BTF (parsed whole: only where asked);
    /// `who`, for messages: "--cgroup".
    fn of_running_kernel(who: &str) -> Result<CgroupOffsets> {
        let btf =
            Btf::from_vmlinux().with_context(|| format!("{who}: reading the kernel's BTF"))?;
        let at = |strukt: &str, member: &str| {
            member_offset(&btf, strukt, member).with_context(|| {
                format!("{who}: this kernel's BTF has no {strukt}.{member} (a kernel built without cgroups?)")
            })
        };
        Ok(CgroupOffsets {
            task_cgroups: at("task_struct", "cgroups")?,
            cset_dfl_cgrp: at("css_set", "dfl_cgrp")?,
            cset_subsys: at("css_set", "subsys")?,
            css_cgroup: at("cgroup_subsys_state", "cgroup")?,
            cgroup_parent_css: at("cgroup", "self")? + at("cgroup_subsys_state", "parent")?,
            cgroup_kn: at("cgroup", "kn")?,
            kernfs_node_id: at("kernfs_node", "id")?,
        })
    }
}

/// Records that name each task's cgroup (serve's labels): in which hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLabels {
    /// The v1 controller's subsystem id; None in the unified hierarchy.
    pub subsystem: Option<u32>,
    pub offsets: CgroupOffsets,
}

impl CgroupLabels {
    /// common.bpf.h's label_cgroup_ssid: -1 for the unified hierarchy.
    pub fn ssid(self) -> i32 {
        self.subsystem.map_or(-1, |id| id as i32)
    }
}

/// The memory controller's hierarchy, whose cgroups serve's counts are
/// labelled by: the unified one where memory is there (v2), else the v1
/// memory hierarchy's. OOM kills name the same cgroups (the victim's memcg).
pub struct MemoryHierarchy {
    /// Where it is mounted: cgroup paths are from here.
    pub mount: PathBuf,
    pub labels: CgroupLabels,
}

impl MemoryHierarchy {
    pub fn find() -> Result<MemoryHierarchy> {
        let (mount, subsystem) = memory_mount()?;
        Ok(MemoryHierarchy {
            mount,
            labels: CgroupLabels {
                subsystem,
                offsets: CgroupOffsets::of_running_kernel("cgroup labels")?,
            },
        })
    }
}

/// Where the memory controller's hierarchy is mounted, and its v1 subsystem
/// id (None: the unified hierarchy).
fn memory_mount() -> Result<(PathBuf, Option<u32>)> {
    let mounts = procfs::process::Process::myself()
        .and_then(|me| me.mountinfo())
        .context("reading /proc/self/mountinfo")?;
    let v1 = mounts
        .iter()
        .find(|m| m.fs_type == "cgroup" && m.super_options.contains_key("memory"));
    if let Some(m) = v1 {
        let controllers = procfs::cgroups().context("reading /proc/cgroups")?;
        let ssid = controllers
            .0
            .iter()
            .position(|c| c.name == "memory")
            .context("/proc/cgroups lists no memory controller")?;
        return Ok((m.mount_point.clone(), Some(ssid as u32)));
    }
    let v2 = mounts
        .iter()
        .filter(|m| m.fs_type == "cgroup2")
        .min_by_key(|m| m.mount_point.as_os_str().len())
        .context("no cgroup file system is mounted (mount cgroup2 on /sys/fs/cgroup)")?;
    Ok((v2.mount_point.clone(), None))
}

/// `dir`'s path in the memory controller's hierarchy (`/a/b`, `/` for its
/// root), as oomkill names a victim's memory cgroup; `who`, for messages:
/// "--cgroup".
pub fn memory_cgroup_path(dir: &Path, who: &str) -> Result<String> {
    let shown = escape_path(dir);
    let canonical = std::fs::canonicalize(dir)
        .with_context(|| format!("{who} {shown}: give a memory cgroup's directory"))?;
    let (mount, _) = memory_mount()?;
    let relative = match canonical.strip_prefix(&mount) {
        Ok(relative) if canonical.is_dir() => relative,
        _ => bail!(
            "{who} {shown}: not a directory in the memory controller's hierarchy (give one under {})",
            escape_path(&mount)
        ),
    };
    let mut path = String::new();
    for component in relative.components() {
        path.push('/');
        path.push_str(&crate::present::escape::escape_bytes(
            component.as_os_str().as_encoded_bytes(),
        ));
    }
    if path.is_empty() {
        path.push('/');
    }
    Ok(path)
}

/// Whether the cgroup at `path` is `ancestor` or below it (paths from the
/// hierarchy's root, as memory_cgroup_path gives them).
pub fn is_within(path: &str, ancestor: &str) -> bool {
    ancestor == "/"
        || path == ancestor
        || path
            .strip_prefix(ancestor)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// A record's cgroup as the tools show it (--show-cgroup): its path in the
/// memory controller's hierarchy, and the container it names, if any.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct CgroupField {
    pub cgroup: String,
    pub container: Option<String>,
}

impl CgroupField {
    pub fn of_path(path: &str) -> CgroupField {
        CgroupField {
            container: container_of(path),
            cgroup: path.to_string(),
        }
    }

    /// The table's CONTAINER cell: "-" where the cgroup names none.
    pub fn container_cell(&self) -> &str {
        self.container.as_deref().unwrap_or("-")
    }
}

/// --show-cgroup (`show`): has the trace's records name each task's memory
/// cgroup, and gives what names them; None, and nothing read, without it.
pub fn label_records(show: bool, filter: &mut Filter) -> Result<Option<CgroupNames>> {
    if !show {
        return Ok(None);
    }
    let hierarchy = MemoryHierarchy::find()?;
    filter.label = Some(hierarchy.labels);
    Ok(Some(CgroupNames::new(&hierarchy.mount)))
}

/// Cgroup paths by id (their directories' inodes), from walks of the
/// hierarchy: one walk when an id is new, at most one a second.
pub struct CgroupNames {
    mount: PathBuf,
    known: HashMap<u64, String>,
    walked: Option<Instant>,
}

/// How often an unknown id may walk the hierarchy again.
const REWALK: Duration = Duration::from_secs(1);

impl CgroupNames {
    pub fn new(mount: &Path) -> CgroupNames {
        CgroupNames {
            mount: mount.to_path_buf(),
            known: HashMap::new(),
            walked: None,
        }
    }

    /// The cgroup's path from the hierarchy's root ("/" for the root); a
    /// cgroup removed before it was seen is "[cgroup N]".
    pub fn name(&mut self, id: u64) -> String {
        if !self.known.contains_key(&id) && self.walked.is_none_or(|at| at.elapsed() >= REWALK) {
            self.walked = Some(Instant::now());
            let mount = self.mount.clone();
            self.walk(&mount, "");
        }
        match self.known.get(&id) {
            Some(path) => path.clone(),
            None => format!("[cgroup {id}]"),
        }
    }

    /// The cgroup's path and container.
    pub fn field(&mut self, id: u64) -> CgroupField {
        CgroupField::of_path(&self.name(id))
    }

    fn walk(&mut self, dir: &Path, path: &str) {
        let Ok(metadata) = std::fs::metadata(dir) else {
            return;
        };
        let shown = if path.is_empty() { "/" } else { path };
        self.known.insert(metadata.ino(), shown.to_string());
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let name =
                    crate::present::escape::escape_bytes(entry.file_name().as_encoded_bytes());
                self.walk(&entry.path(), &format!("{path}/{name}"));
            }
        }
    }
}

/// The container a cgroup path names, if any: a docker, containerd/CRI or
/// podman container's id (12 hex digits, as `docker ps`), or a Kubernetes
/// pod's uid where the path stops at the pod (`pod:UID`).
pub fn container_of(path: &str) -> Option<String> {
    let is_hex_id = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let mut found = None;
    for component in path.split('/') {
        // systemd's driver: docker-ID.scope, cri-containerd-ID.scope, libpod-ID.scope
        let bare = component.strip_suffix(".scope").unwrap_or(component);
        let id = bare.rsplit(['-', ':']).next().unwrap_or(bare);
        if is_hex_id(id) {
            return Some(id[..12].to_string());
        }
        // kubepods-burstable-pod<uid>.slice, or cgroupfs's pod<uid>
        let slice = component.strip_suffix(".slice").unwrap_or(component);
        if let Some(at) = slice.rfind("pod") {
            let uid = &slice[at + 3..];
            if uid.len() == 36
                && uid
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'_')
            {
                found = Some(format!("pod:{}", uid.replace('_', "-")));
            }
        }
    }
    found
}

impl CgroupFilter {
    /// common.bpf.h's filter_cgroup_ssid: -1 for the unified hierarchy.
    pub fn ssid(self) -> i32 {
        self.subsystem.map_or(-1, |id| id as i32)
    }
}

/// The cgroup whose directory is `path`; one line saying what to give
/// where it is none.
pub fn resolve(path: &Path) -> Result<CgroupFilter> {
    let shown = escape_path(path);
    let metadata = std::fs::metadata(path)
        .with_context(|| format!("--cgroup {shown}: give a cgroup's directory"))?;
    if !metadata.is_dir() {
        bail!("--cgroup {shown}: not a directory (give a cgroup's, under /sys/fs/cgroup)");
    }
    let id = std::os::unix::fs::MetadataExt::ino(&metadata);
    let fs = statfs(path).with_context(|| format!("--cgroup {shown}"))?;
    let subsystem = match fs.filesystem_type() {
        CGROUP2_SUPER_MAGIC => None,
        CGROUP_SUPER_MAGIC => Some(v1_subsystem(path, &shown)?),
        _ => bail!(
            "--cgroup {shown}: not in a cgroup file system (give a directory under /sys/fs/cgroup)"
        ),
    };
    Ok(CgroupFilter {
        id,
        subsystem,
        offsets: CgroupOffsets::of_running_kernel("--cgroup")?,
    })
}

/// The subsystem id of the controller whose v1 hierarchy holds `path`: its
/// mount's options name the controllers bound to it, and /proc/cgroups
/// lists the kernel's controllers in the order of their ids.
fn v1_subsystem(path: &Path, shown: &str) -> Result<u32> {
    let canonical = std::fs::canonicalize(path).with_context(|| format!("--cgroup {shown}"))?;
    let mounts = procfs::process::Process::myself()
        .and_then(|me| me.mountinfo())
        .context("reading /proc/self/mountinfo")?;
    let mount = mounts
        .into_iter()
        .filter(|m| m.fs_type == "cgroup" && canonical.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len())
        .with_context(|| format!("--cgroup {shown}: no cgroup mount holds it"))?;
    let controllers = procfs::cgroups().context("reading /proc/cgroups")?;
    let found = controllers
        .0
        .iter()
        .position(|c| mount.super_options.contains_key(&c.name));
    match found {
        Some(ssid) => Ok(ssid as u32),
        None => bail!(
            "--cgroup {shown}: a v1 hierarchy with no controller ({}): give a path in a controller's hierarchy (/sys/fs/cgroup/memory/...) or the unified one",
            mount.mount_point.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroups_within_others() {
        assert!(is_within("/a/b", "/a"));
        assert!(is_within("/a", "/a"));
        assert!(is_within("/a", "/"));
        assert!(!is_within("/ab", "/a"));
        assert!(!is_within("/", "/a"));
    }

    #[test]
    fn containers_named_by_their_cgroups() {
        let id = "3f4e2a1b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f";
        assert_eq!(
            container_of(&format!("/docker/{id}")).as_deref(),
            Some("3f4e2a1b9c8d")
        );
        assert_eq!(
            container_of(&format!("/system.slice/docker-{id}.scope")).as_deref(),
            Some("3f4e2a1b9c8d")
        );
        let pod = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice";
        assert_eq!(
            container_of(&format!("/{pod}/cri-containerd-{id}.scope")).as_deref(),
            Some("3f4e2a1b9c8d")
        );
        assert_eq!(
            container_of(&format!("/{pod}")).as_deref(),
            Some("pod:0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
        );
        assert_eq!(
            container_of("/kubepods/besteffort/pod0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0").as_deref(),
            Some("pod:0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
        );
        assert_eq!(container_of("/system.slice/ssh.service"), None);
        assert_eq!(container_of("/"), None);
    }

    #[test]
    fn what_is_not_a_cgroup_is_refused_in_one_line() {
        let error = resolve(Path::new("/nonexistent/cg")).unwrap_err();
        assert!(
            format!("{error:#}").starts_with("--cgroup /nonexistent/cg: give a cgroup's directory"),
            "{error:#}"
        );
        let error = resolve(Path::new("/")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "--cgroup /: not in a cgroup file system (give a directory under /sys/fs/cgroup)"
        );
    }
}
