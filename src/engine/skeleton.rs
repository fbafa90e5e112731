//! What every tool's BPF skeleton has: common.bpf.h's process filter (set
//! through the skeleton's generated rodata), and the types every BPF side
//! shares with user space (generated from src/bpf/shared.bpf.c).

use anyhow::Result;

use crate::cli::CommonArgs;
use crate::engine::cgroup::{CgroupFilter, CgroupLabels};
use crate::engine::target::Target;

// The generated skeleton of src/bpf/shared.bpf.c, never loaded: its types are
// the Rust side of common.h and exitmaps.h, the same for every tool.
crate::bpf_skeleton!(@generated shared, "shared");

pub use shared::types::{
    exitmaps_kind as ExitMappingKind, exitmaps_mapping as ExitMappingRecord,
    memtrace_drop_reason as DropReason, memtrace_fault_kind as FaultKind,
    memtrace_path_flag as PathFlag, memtrace_stack as StackRecord,
    memtrace_stack_flag as StackFlag, unwind_cfa as UnwindCfa, unwind_deferred as UnwindDeferred,
    unwind_mapping as UnwindMapping, unwind_object as UnwindObject,
    unwind_process as UnwindProcess, unwind_rbp as UnwindRbp, unwind_row as UnwindRow,
};

// SAFETY: C structs of integers and byte arrays: every bit pattern is valid.
unsafe impl plain::Plain for ExitMappingRecord {}
// SAFETY: as above.
unsafe impl plain::Plain for StackRecord {}
// SAFETY: as above.
unsafe impl plain::Plain for UnwindRow {}
// SAFETY: as above.
unsafe impl plain::Plain for UnwindDeferred {}
// SAFETY: as above.
unsafe impl plain::Plain for UnwindObject {}
// SAFETY: as above.
unsafe impl plain::Plain for UnwindProcess {}

/// The filter options of common.bpf.h, computed from the shared arguments.
pub struct Filter {
    pub by_tgid: bool,
    pub follow_forks: bool,
    pub comm: Option<[i8; 16]>,
    /// One thread (a tool's `-t TID`).
    pub tid: Option<u32>,
    /// One user (a tool's `-u UID`).
    pub uid: Option<u32>,
    /// --cgroup: one cgroup and those below it.
    pub cgroup: Option<CgroupFilter>,
    /// serve: records name the task's cgroup in this hierarchy.
    pub label: Option<CgroupLabels>,
}

impl Filter {
    pub fn new(common: &CommonArgs, target: &Target, cgroup: Option<CgroupFilter>) -> Filter {
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
            cgroup,
            label: None,
        }
    }
}

/// What the loader needs of a tool's open skeleton beyond libbpf-rs's
/// OpenSkel: its read-only globals. Implemented by `bpf_skeleton!`.
pub trait OpenSkeleton<'obj>: libbpf_rs::skel::OpenSkel<'obj> {
    /// The skeleton's generated `.rodata` type.
    type Rodata;

    /// The tool's read-only globals, to set between open and load.
    fn rodata(&mut self) -> Result<&mut Self::Rodata>;

    /// Sets common.bpf.h's globals: the filter's, and what the kernel has.
    fn set_common(&mut self, filter: &Filter) -> Result<()>;
}

/// `mod bpf`: the generated skeleton of src/bpf/NAME.bpf.c (lints off:
/// generated code), with OpenSkeleton for its open skeleton type `$open`, and
/// `plain::Plain` for the generated record types the tool decodes.
#[macro_export]
macro_rules! bpf_skeleton {
    // the generated code alone, in `mod $module`, lints off
    (@generated $module:ident, $name:literal) => {
        mod $module {
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
    ($name:literal, $open:ident $(, records: [$($record:ident),* $(,)?])?) => {
        $crate::bpf_skeleton!(@generated bpf, $name);

        impl<'obj> $crate::engine::skeleton::OpenSkeleton<'obj> for bpf::$open<'obj> {
            type Rodata = bpf::types::rodata;

            fn rodata(&mut self) -> anyhow::Result<&mut bpf::types::rodata> {
                self.maps
                    .rodata_data
                    .as_deref_mut()
                    .ok_or_else(|| anyhow::anyhow!("BPF object has no .rodata"))
            }

            fn set_common(&mut self, filter: &$crate::engine::skeleton::Filter) -> anyhow::Result<()> {
                let rodata = self.rodata()?;
                rodata.has_current_task_btf = $crate::engine::features::has_current_task_btf();
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
                if let Some(cgroup) = filter.cgroup {
                    rodata.filter_by_cgroup = true;
                    rodata.filter_cgroup_id = cgroup.id;
                    rodata.filter_cgroup_ssid = cgroup.ssid();
                }
                if let Some(label) = filter.label {
                    rodata.label_by_cgroup = true;
                    rodata.label_cgroup_ssid = label.ssid();
                }
                let offsets = filter.cgroup.map(|c| c.offsets).or(filter.label.map(|l| l.offsets));
                if let Some(offsets) = offsets {
                    let off = &mut rodata.cgroup_offsets;
                    off.task_cgroups = offsets.task_cgroups;
                    off.cset_dfl_cgrp = offsets.cset_dfl_cgrp;
                    off.cset_subsys = offsets.cset_subsys;
                    off.css_cgroup = offsets.css_cgroup;
                    off.cgroup_parent_css = offsets.cgroup_parent_css;
                    off.cgroup_kn = offsets.cgroup_kn;
                    off.kernfs_node_id = offsets.kernfs_node_id;
                }
                Ok(())
            }
        }

        $($(
            // SAFETY: generated from a C struct of integers and byte arrays:
            // every bit pattern is valid.
            unsafe impl plain::Plain for bpf::types::$record {}
        )*)?
    };
}
