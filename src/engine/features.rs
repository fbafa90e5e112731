//! The BPF features of the running kernel that tools choose between, each
//! found in the kernel's BTF (kernel_btf.rs) rather than guessed from its
//! release: distribution kernels carry backports, and a feature that came
//! with a release may be configured out. The tools and `memtrace doctor`
//! ask the same questions here, so they never disagree.

use libbpf_rs::btf::types::{self, Composite};
use libbpf_rs::btf::Btf;

use crate::engine::kernel;

/// A kernel feature a tool's choice of mechanism turns on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// bpf_get_attach_cookie: a value per probe link (uprobes: 5.15).
    AttachCookie,
    /// bpf_loop: a loop the verifier checks once (5.17).
    Loop,
    /// bpf_find_vma: the VMA of an address (5.17).
    FindVma,
    /// Multi-uprobe links: many functions, one link (6.6).
    UprobeMulti,
    /// Session uprobes: one program for entry and return, the entry
    /// deciding whether the return is probed (6.13).
    UprobeSession,
    /// The task_vma iterator kfuncs: a process's mappings from BPF (6.7).
    TaskVmaIterator,
    /// mm_struct's mm_lock_seq: a count of changes to a process's
    /// mappings, which validates cached VMAs (6.4).
    MmLockSeq,
}

impl Feature {
    /// Every feature, in the order of their releases.
    pub const ALL: [Feature; 7] = [
        Feature::AttachCookie,
        Feature::Loop,
        Feature::FindVma,
        Feature::MmLockSeq,
        Feature::UprobeMulti,
        Feature::TaskVmaIterator,
        Feature::UprobeSession,
    ];

    /// What it is called in messages.
    pub fn name(self) -> &'static str {
        match self {
            Feature::AttachCookie => "BPF cookies",
            Feature::Loop => "bpf_loop",
            Feature::FindVma => "bpf_find_vma",
            Feature::UprobeMulti => "multi-uprobe links",
            Feature::UprobeSession => "session uprobes",
            Feature::TaskVmaIterator => "the task_vma iterator",
            Feature::MmLockSeq => "mm_lock_seq",
        }
    }

    /// The mainline release that brought it.
    pub fn since(self) -> &'static str {
        match self {
            Feature::AttachCookie => "5.15",
            Feature::Loop | Feature::FindVma => "5.17",
            Feature::UprobeMulti => "6.6",
            Feature::UprobeSession => "6.13",
            Feature::TaskVmaIterator => "6.7",
            Feature::MmLockSeq => "6.4",
        }
    }

    /// `session uprobes (Linux 6.13)`: for messages.
    pub fn described(self) -> String {
        format!("{} (Linux {})", self.name(), self.since())
    }

    /// The name in the kernel's BTF that says it is there: a helper of enum
    /// bpf_func_id, an attach type of enum bpf_attach_type, a kfunc.
    fn btf_name(self) -> &'static str {
        match self {
            Feature::AttachCookie => "BPF_FUNC_get_attach_cookie",
            Feature::Loop => "BPF_FUNC_loop",
            Feature::FindVma => "BPF_FUNC_find_vma",
            Feature::UprobeMulti => "BPF_TRACE_UPROBE_MULTI",
            Feature::UprobeSession => "BPF_TRACE_UPROBE_SESSION",
            Feature::TaskVmaIterator => "bpf_iter_task_vma_new",
            // (a struct member: see present)
            Feature::MmLockSeq => "",
        }
    }

    /// Whether the running kernel has it (a kernel whose BTF can't be read
    /// has none: the tools then fail at their BTF check).
    pub fn present(self) -> bool {
        if self == Feature::MmLockSeq {
            // read as faultvma.bpf.c's CO-RE does, which decides at load
            return Btf::from_vmlinux()
                .ok()
                .and_then(|btf| {
                    let mm = btf.type_by_name::<types::Struct>("mm_struct")?;
                    Some(has_member(&btf, &Composite::from(mm), "mm_lock_seq"))
                })
                .unwrap_or(false);
        }
        kernel::with_kernel_btf(|btf| btf.names.contains(self.btf_name())).unwrap_or(false)
    }
}

/// Whether a struct or union has a member `name`, in it or in its anonymous
/// members (mm_struct keeps its fields in one, for layout randomization).
fn has_member(btf: &Btf, composite: &Composite, name: &str) -> bool {
    composite.iter().any(|member| match member.name {
        Some(member_name) => member_name == name,
        None => btf
            .type_by_id::<Composite>(member.ty)
            .is_some_and(|inner| has_member(btf, &inner, name)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_that_has_a_feature_has_those_before_it() {
        // (on kernels with BTF; the tools' tests run on 5.10 and later)
        if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
            return;
        }
        let order = Feature::ALL;
        let present: Vec<bool> = order.iter().map(|f| f.present()).collect();
        let first_missing = present.iter().position(|p| !p).unwrap_or(order.len());
        assert!(
            present[first_missing..].iter().all(|p| !p),
            "features out of release order: {order:?} {present:?}"
        );
        assert_eq!(Feature::Loop.present(), Feature::FindVma.present());
    }
}
