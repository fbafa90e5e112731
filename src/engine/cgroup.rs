//! --cgroup PATH: the cgroup a trace is limited to, as common.bpf.h's
//! memtrace_in_cgroup compares it: its id (the kernfs node of its
//! directory, which is the directory's inode number), which hierarchy to
//! look for it in, the unified one (v2) or a v1 controller's, and where the
//! fields the walk reads are (common.h's memtrace_cgroup_offsets), from the
//! kernel's BTF: by hand rather than by CO-RE, which would cost every load
//! a search of the kernel's types, --cgroup or not.

use std::path::Path;

use anyhow::{bail, Context, Result};
use libbpf_rs::btf::Btf;
use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC};

use crate::engine::kernel::member_offset;
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
    /// From the running kernel's BTF (parsed whole: only with --cgroup).
    fn of_running_kernel() -> Result<CgroupOffsets> {
        let btf = Btf::from_vmlinux().context("--cgroup: reading the kernel's BTF")?;
        let at = |strukt: &str, member: &str| {
            member_offset(&btf, strukt, member).with_context(|| {
                format!("--cgroup: this kernel's BTF has no {strukt}.{member} (a kernel built without cgroups?)")
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
        offsets: CgroupOffsets::of_running_kernel()?,
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
