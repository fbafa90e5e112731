//! The BPF features of the running kernel that tools choose between, each
//! found in the kernel's BTF (kernel_btf.rs) rather than guessed from its
//! release: distribution kernels carry backports, and a feature that came
//! with a release may be configured out. The tools and `memtrace doctor`
//! ask the same questions here, so they never disagree.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

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
    /// BPF trampolines: fentry programs on kernel functions (5.5, where the
    /// kernel is built with them; this project's VMs are not).
    Fentry,
    /// Hash map keys over 512 bytes (5.11): mmapfiles' key of three names
    /// (before, it counts by their numbers).
    LargeHashKeys,
}

impl Feature {
    /// Every feature, in the order of their releases.
    pub const ALL: [Feature; 9] = [
        Feature::Fentry,
        Feature::LargeHashKeys,
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
            Feature::Fentry => "fentry",
            Feature::LargeHashKeys => "hash keys over 512 bytes",
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
            Feature::Fentry => "5.5",
            Feature::LargeHashKeys => "5.11",
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
            Feature::MmLockSeq => "mm_struct.mm_lock_seq",
            // (a configuration, not a name: see present)
            Feature::Fentry => "BPF_TRACE_FENTRY",
            // (a limit, not a name: see present)
            Feature::LargeHashKeys => "",
        }
    }

    /// Whether the running kernel has it (a kernel whose BTF can't be read
    /// has none: the tools then fail at their BTF check).
    pub fn present(self) -> bool {
        if self == Feature::Fentry {
            // probed once: each probe attaches a trampoline for a moment
            static ATTACHES: OnceLock<bool> = OnceLock::new();
            return *ATTACHES.get_or_init(|| fentry_attaches(FENTRY_PROBE_TARGET));
        }
        if self == Feature::LargeHashKeys {
            static CREATES: OnceLock<bool> = OnceLock::new();
            return *CREATES.get_or_init(large_hash_keys);
        }
        kernel::with_kernel_btf(|btf| btf.names.contains(self.btf_name())).unwrap_or(false)
    }
}

/// The helper behind has_current_task_btf.
const CURRENT_TASK_BTF: &str = "BPF_FUNC_get_current_task_btf";

/// Whether the kernel has bpf_get_current_task_btf (5.11), which
/// common.bpf.h's memtrace_current_task prefers. Not a Feature: no tool's
/// choice of mechanism turns on it.
pub fn has_current_task_btf() -> bool {
    kernel::with_kernel_btf(|btf| btf.names.contains(CURRENT_TASK_BTF)).unwrap_or(false)
}

/// The names in the kernel's BTF asked about here: the kernel's BTF is
/// searched for these alone.
pub fn btf_names() -> Vec<&'static str> {
    Feature::ALL
        .iter()
        .map(|feature| feature.btf_name())
        .chain([CURRENT_TASK_BTF])
        .filter(|name| !name.is_empty())
        .collect()
}

/// Whether the kernel makes a hash map with 768-byte keys (mmapfiles'):
/// before 5.11 a key had to fit the BPF stack (E2BIG).
fn large_hash_keys() -> bool {
    // SAFETY: a plain call; a null name and options are allowed.
    let fd = unsafe {
        libbpf_sys::bpf_map_create(
            libbpf_sys::BPF_MAP_TYPE_HASH,
            std::ptr::null(),
            768,
            8,
            1,
            std::ptr::null(),
        )
    };
    if fd < 0 {
        return false;
    }
    // SAFETY: a descriptor just made and owned by nothing else.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    true
}

/// The features a tool's programs cannot load without, whatever its
/// options: the fault engine, on a kernel without bpf_find_vma (5.17),
/// takes each fault's VMA from fentry on handle_mm_fault. (memleak's user
/// mode: Mechanism::needs.)
pub fn required_by(tool: &str) -> &'static [Feature] {
    match tool {
        "ffaults" | "fmapfault" | "hfaults" | "swapin" if !Feature::FindVma.present() => {
            &[Feature::Fentry]
        }
        _ => &[],
    }
}

/// The first feature `tool` needs that the running kernel lacks.
pub fn missing_for(tool: &str) -> Option<Feature> {
    required_by(tool).iter().copied().find(|f| !f.present())
}

/// The function the fentry probe attaches to: the fault engine's.
const FENTRY_PROBE_TARGET: &str = "handle_mm_fault";

/// Whether an fentry program on kernel function `function` loads and
/// attaches: a kernel may have the attach type in its BTF and still refuse
/// (built without trampolines, or a hypervisor's restrictions: EPERM). The
/// program (r0 = 0; exit) is attached for a moment. ~1 ms, and a parse of
/// the kernel's BTF: only asked where a tool would use it.
pub fn fentry_attaches(function: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(function) else {
        return false;
    };
    // SAFETY: a NUL-terminated name; libbpf reads the kernel's BTF.
    let btf_id = unsafe {
        libbpf_sys::libbpf_find_vmlinux_btf_id(name.as_ptr(), libbpf_sys::BPF_TRACE_FENTRY)
    };
    if btf_id <= 0 {
        return false;
    }
    // BPF_MOV64_IMM(r0, 0) and BPF_EXIT_INSN, each 8 bytes: opcode first
    let insns: [u64; 2] = [0xb7, 0x95];
    let mut opts = libbpf_sys::bpf_prog_load_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_prog_load_opts>() as _,
        expected_attach_type: libbpf_sys::BPF_TRACE_FENTRY,
        attach_btf_id: btf_id as u32,
        ..Default::default()
    };
    // SAFETY: two valid instructions (struct bpf_insn is 8 bytes), a
    // NUL-terminated license, options sized as libbpf expects.
    let prog = unsafe {
        libbpf_sys::bpf_prog_load(
            libbpf_sys::BPF_PROG_TYPE_TRACING,
            std::ptr::null(),
            c"GPL".as_ptr(),
            insns.as_ptr().cast(),
            insns.len() as _,
            &mut opts,
        )
    };
    if prog < 0 {
        return false;
    }
    // SAFETY: a new descriptor that nothing else owns.
    let prog = unsafe { OwnedFd::from_raw_fd(prog) };
    // SAFETY: the program's descriptor is open; no target fd, no options.
    let link = unsafe {
        libbpf_sys::bpf_link_create(
            prog.as_raw_fd(),
            0,
            libbpf_sys::BPF_TRACE_FENTRY,
            std::ptr::null(),
        )
    };
    if link < 0 {
        return false;
    }
    // SAFETY: as above; dropped at once, which detaches it.
    drop(unsafe { OwnedFd::from_raw_fd(link) });
    true
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
        // (fentry is a configuration, not a release's; large keys are older
        // than the rest)
        let order = &Feature::ALL[2..];
        let present: Vec<bool> = order.iter().map(|f| f.present()).collect();
        let first_missing = present.iter().position(|p| !p).unwrap_or(order.len());
        assert!(
            present[first_missing..].iter().all(|p| !p),
            "features out of release order: {order:?} {present:?}"
        );
        assert_eq!(Feature::Loop.present(), Feature::FindVma.present());
    }
}
