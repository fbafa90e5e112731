//! What the running kernel's BTF says it has, read by walking the raw BTF
//! of /sys/kernel/btf/vmlinux: its BTF tracepoints (`tp_btf/NAME` targets:
//! the typedefs `btf_trace_NAME`), and which of the names asked about, that
//! tell its BPF features (engine::features), it has: kfuncs (functions named
//! `bpf_*`: the task_vma iterator's) and members of its enums named `BPF_*`
//! (the helpers of enum bpf_func_id, the attach types of enum
//! bpf_attach_type). Measured on the development VM: ~1 ms, where parsing
//! it whole (libbpf's btf__parse, behind libbpf-rs's `Btf::from_vmlinux`)
//! takes ~2.9 ms of every tool's start, and libbpf parses it once more as
//! it loads. The file is mapped,
//! not read: sysfs hands it out a page per read(2). A kind of type this walk
//! doesn't know (a newer kernel's) makes it give up, and the caller parses
//! the BTF whole.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::AsRawFd;

const BTF_MAGIC: u16 = 0xeb9f;
const PREFIX: &[u8] = b"btf_trace_";
/// Kfuncs, and the enum members that name BPF helpers and attach types.
const FUNC_PREFIX: &[u8] = b"bpf_";
const ENUM_MEMBER_PREFIX: &[u8] = b"BPF_";
/// Struct members asked about, noted as `STRUCT.MEMBER` when the struct has
/// them, directly or in an anonymous member (mm_struct keeps its fields in
/// one): mm_lock_seq (6.4), which the fault-VMA cache checks entries by.
const STRUCT_MEMBERS: &[(&[u8], &[u8])] = &[(b"mm_struct", b"mm_lock_seq")];
/// The size of `struct btf_type`: name_off, info, size/type.
const TYPE_SIZE: usize = 12;
const KIND_PTR: u32 = 2;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_ENUM64: u32 = 19;

/// What the kernel's BTF holds, of what memtrace asks about.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KernelBtf {
    /// The BTF tracepoints, without the `btf_trace_` prefix, each with the
    /// number of its arguments (TP_PROTO's; None where the typedef is not
    /// the pointer to a function prototype it should be). A tracepoint's
    /// arguments change between releases (mark_victim's).
    pub tracepoints: HashMap<String, Option<usize>>,
    /// The names asked about that it has: functions named `bpf_*`, enum
    /// members named `BPF_*` and STRUCT_MEMBERS (`mm_struct.mm_lock_seq`).
    pub names: HashSet<&'static str>,
}

/// What the running kernel's BTF holds, of its tracepoints and the names
/// `asked`; None if it can't be read this way (see the module).
pub fn of_running_kernel(asked: &[&'static str]) -> Option<KernelBtf> {
    let file = File::open("/sys/kernel/btf/vmlinux").ok()?;
    let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
    if len == 0 {
        return None;
    }
    // SAFETY: a private read-only mapping of a file that stays open until the
    // mapping is gone; its result is checked before use.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return None;
    }
    // SAFETY: the mapping is `len` readable bytes, alive until the munmap
    // below, and nothing writes to it (private and read-only).
    let raw = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
    let found = scan(raw, asked);
    // SAFETY: unmaps exactly the mapping made above; `raw` is not used after.
    unsafe { libc::munmap(ptr, len) };
    found
}

fn u16_at(raw: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(raw.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(raw: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(raw.get(at..at + 4)?.try_into().ok()?))
}

/// The bytes after a type's `struct btf_type` for its kind and vlen; None for
/// a kind this walk doesn't know.
fn extra_bytes(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
        2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,
        // INT, VAR, DECL_TAG: one u32
        1 | 14 | 17 => 4,
        // ARRAY: struct btf_array
        3 => 12,
        // STRUCT, UNION: btf_member; DATASEC: btf_var_secinfo; ENUM64: btf_enum64
        4 | 5 | 15 | 19 => vlen * 12,
        // ENUM: btf_enum; FUNC_PROTO: btf_param
        6 | 13 => vlen * 8,
        _ => return None,
    })
}

/// A type's kind and vlen, from its `info` word.
fn kind_and_vlen(info: u32) -> (u32, usize) {
    ((info >> 24) & 0x1f, (info & 0xffff) as usize)
}

/// Whether the string at `off` of a BTF string section starts with `prefix`.
fn has_prefix_at(strings: &[u8], off: usize, prefix: &[u8]) -> bool {
    strings.get(off..off + prefix.len()) == Some(prefix)
}

/// Whether the string at `off` of a BTF string section is `name`.
fn is_string_at(strings: &[u8], off: usize, name: &[u8]) -> bool {
    has_prefix_at(strings, off, name) && strings.get(off + name.len()) == Some(&0)
}

/// The NUL-terminated string at `off` of a BTF string section.
fn string_at(strings: &[u8], off: usize) -> Option<&[u8]> {
    let rest = strings.get(off..)?;
    Some(&rest[..rest.iter().position(|&b| b == 0)?])
}

/// The tracepoints of raw BTF, and which of the names `asked` it has.
fn scan(raw: &[u8], asked: &[&'static str]) -> Option<KernelBtf> {
    // struct btf_header: magic, version, flags, hdr_len, type_off, type_len, str_off, str_len
    if u16_at(raw, 0)? != BTF_MAGIC {
        return None;
    }
    let hdr_len = u32_at(raw, 4)? as usize;
    let field = |at| u32_at(raw, at).map(|v| v as usize);
    let (type_off, type_len) = (field(8)?, field(12)?);
    let (str_off, str_len) = (field(16)?, field(20)?);
    let types = raw.get(hdr_len + type_off..hdr_len + type_off + type_len)?;
    let strings = raw.get(hdr_len + str_off..hdr_len + str_off + str_len)?;
    let mut names = HashSet::new();
    // compared in place, the prefix first: most names don't match, and
    // finding each one's NUL, or copying it, was most of the walk
    let mut note = |off: usize, prefix: &[u8]| {
        if has_prefix_at(strings, off, prefix) {
            let name = asked
                .iter()
                .find(|name| is_string_at(strings, off, name.as_bytes()));
            names.extend(name);
        }
    };
    // each tracepoint's typedef's type, resolved once all types are known
    let mut tracepoint_types = Vec::new();
    // where each type starts (type ids count from 1), for STRUCT_MEMBERS'
    // anonymous members; and the structs asked about
    // (u32 and sized ahead: a kernel has ~100k types, most of them 12-24 bytes)
    let mut starts: Vec<u32> = Vec::with_capacity(types.len() / 16);
    let mut structs = Vec::new();
    let mut at = 0;
    while at < types.len() {
        starts.push(u32::try_from(at).ok()?);
        let name_off = u32_at(types, at)? as usize;
        let info = u32_at(types, at + 4)?;
        let (kind, vlen) = kind_and_vlen(info);
        match kind {
            KIND_TYPEDEF if has_prefix_at(strings, name_off, PREFIX) => {
                let tracepoint = &string_at(strings, name_off)?[PREFIX.len()..];
                let name = String::from_utf8_lossy(tracepoint).into_owned();
                tracepoint_types.push((name, u32_at(types, at + 8)?));
            }
            KIND_FUNC => note(name_off, FUNC_PREFIX),
            KIND_STRUCT => {
                for &(wanted, member) in STRUCT_MEMBERS {
                    if is_string_at(strings, name_off, wanted) {
                        structs.push((at, wanted, member));
                    }
                }
            }
            KIND_ENUM | KIND_ENUM64 => {
                // btf_enum (name_off, val) or btf_enum64 (name_off, lo32, hi32)
                let member_size = if kind == KIND_ENUM { 8 } else { 12 };
                for n in 0..vlen {
                    let member_name = u32_at(types, at + TYPE_SIZE + n * member_size)?;
                    note(member_name as usize, ENUM_MEMBER_PREFIX);
                }
            }
            _ => {}
        }
        at += TYPE_SIZE + extra_bytes(kind, vlen)?;
    }
    for (at, wanted, member) in structs {
        let noted = [wanted, b".", member].concat();
        let Some(&name) = asked.iter().find(|name| name.as_bytes() == noted) else {
            continue;
        };
        if has_member(types, strings, &starts, at, member, 0)? {
            names.insert(name);
        }
    }
    let tracepoints = tracepoint_types
        .into_iter()
        .map(|(name, type_id)| (name, tracepoint_args(types, &starts, type_id)))
        .collect();
    Some(KernelBtf { tracepoints, names })
}

/// The arguments of a tracepoint whose btf_trace_ typedef names type
/// `type_id`: a pointer to a function prototype whose first parameter is
/// the tracepoint's `void *__data`, not one of its arguments.
fn tracepoint_args(types: &[u8], starts: &[u32], type_id: u32) -> Option<usize> {
    let kind_and_next = |id: u32| -> Option<(u32, usize, u32)> {
        let at = *starts.get((id as usize).checked_sub(1)?)? as usize;
        let (kind, vlen) = kind_and_vlen(u32_at(types, at + 4)?);
        Some((kind, vlen, u32_at(types, at + 8)?))
    };
    let (kind, _, pointee) = kind_and_next(type_id)?;
    if kind != KIND_PTR {
        return None;
    }
    let (kind, params, _) = kind_and_next(pointee)?;
    (kind == KIND_FUNC_PROTO).then(|| params.saturating_sub(1))
}

/// Whether the struct or union at `at` has a member `name`, in it or in its
/// anonymous struct and union members (`depth` of them deep, at most 4).
fn has_member(
    types: &[u8],
    strings: &[u8],
    starts: &[u32],
    at: usize,
    name: &[u8],
    depth: u32,
) -> Option<bool> {
    let info = u32_at(types, at + 4)?;
    let (_, vlen) = kind_and_vlen(info);
    for n in 0..vlen {
        // btf_member: name_off, type, offset
        let member = at + TYPE_SIZE + n * 12;
        let member_name = u32_at(types, member)? as usize;
        if member_name != 0 {
            if string_at(strings, member_name)? == name {
                return Some(true);
            }
            continue;
        }
        let type_id = u32_at(types, member + 4)? as usize;
        let Some(inner) = type_id.checked_sub(1).and_then(|i| starts.get(i)) else {
            continue;
        };
        let inner = *inner as usize;
        let (kind, _) = kind_and_vlen(u32_at(types, inner + 4)?);
        if (kind == KIND_STRUCT || kind == KIND_UNION)
            && depth < 4
            && has_member(types, strings, starts, inner, name, depth + 1)?
        {
            return Some(true);
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Raw BTF of the given (name_off, info, extra bytes) types over `strings`.
    fn btf(types: &[(u32, u32, usize)], strings: &[u8]) -> Vec<u8> {
        let types: Vec<(u32, u32, Vec<u8>)> = types
            .iter()
            .map(|&(name_off, info, extra)| (name_off, info, vec![0u8; extra]))
            .collect();
        btf_with(&types, strings)
    }

    /// Raw BTF of the given (name_off, info, bytes after the type) types.
    fn btf_with(types: &[(u32, u32, Vec<u8>)], strings: &[u8]) -> Vec<u8> {
        let types: Vec<(u32, u32, u32, Vec<u8>)> = types
            .iter()
            .map(|(name_off, info, extra)| (*name_off, *info, 0, extra.clone()))
            .collect();
        btf_typed(&types, strings)
    }

    /// Raw BTF of the given (name_off, info, size or type, bytes after the
    /// type) types.
    fn btf_typed(types: &[(u32, u32, u32, Vec<u8>)], strings: &[u8]) -> Vec<u8> {
        let mut type_bytes = Vec::new();
        for (name_off, info, size_or_type, extra) in types {
            type_bytes.extend_from_slice(&name_off.to_ne_bytes());
            type_bytes.extend_from_slice(&info.to_ne_bytes());
            type_bytes.extend_from_slice(&size_or_type.to_ne_bytes());
            type_bytes.extend_from_slice(extra);
        }
        let mut raw = Vec::new();
        raw.extend_from_slice(&BTF_MAGIC.to_ne_bytes());
        raw.extend_from_slice(&[1, 0]); // version, flags
        for value in [24, 0, type_bytes.len(), type_bytes.len(), strings.len()] {
            raw.extend_from_slice(&(value as u32).to_ne_bytes());
        }
        raw.extend_from_slice(&type_bytes);
        raw.extend_from_slice(strings);
        raw
    }

    /// The names the tests ask about (one of them in no test's BTF).
    const ASKED: &[&str] = &[
        "bpf_iter_task_vma_new",
        "BPF_FUNC_loop",
        "BPF_TRACE_UPROBE_SESSION",
        "BPF_FUNC_not_in_any",
        "mm_struct.mm_lock_seq",
    ];

    const STRINGS: &[u8] = b"\0btf_trace_mark_victim\0task_struct\0btf_trace_exit_mmap\0";

    #[test]
    fn typedefs_named_btf_trace_are_tracepoints() {
        let raw = btf(
            &[
                (23, 4 << 24 | 2, 24), // STRUCT task_struct, two members
                (1, 8 << 24, 0),       // TYPEDEF btf_trace_mark_victim
                (0, 13 << 24 | 3, 24), // FUNC_PROTO, three params
                (35, 2 << 24, 0),      // PTR named btf_trace_exit_mmap: not a typedef
            ],
            STRINGS,
        );
        let found = scan(&raw, ASKED).unwrap();
        // the typedef's type (0 here) is no pointer: its arguments are unknown
        assert_eq!(
            found.tracepoints,
            HashMap::from([("mark_victim".to_string(), None)])
        );
    }

    #[test]
    fn a_tracepoints_arguments_are_its_prototypes_but_the_first() {
        let raw = btf_typed(
            &[
                (1, 8 << 24, 2, vec![]), // 1: TYPEDEF btf_trace_mark_victim -> 2
                (0, 2 << 24, 3, vec![]), // 2: PTR -> 3
                (0, 13 << 24 | 3, 0, vec![0u8; 3 * 8]), // 3: FUNC_PROTO, three params
                (35, 8 << 24, 3, vec![]), // 4: TYPEDEF btf_trace_exit_mmap -> 3: no pointer
            ],
            STRINGS,
        );
        let found = scan(&raw, ASKED).unwrap();
        assert_eq!(found.tracepoints["mark_victim"], Some(2));
        assert_eq!(found.tracepoints["exit_mmap"], None);
    }

    #[test]
    fn kfuncs_and_bpf_enum_members_are_names() {
        const NAMES: &[u8] = b"\0bpf_iter_task_vma_new\0vfs_read\0BPF_FUNC_loop\0OTHER\0\
BPF_TRACE_UPROBE_SESSION\0";
        let at = |name: &str| {
            let needle = [b"\0", name.as_bytes(), b"\0"].concat();
            let found = NAMES
                .windows(needle.len())
                .position(|w| w == needle.as_slice());
            found.unwrap() as u32 + 1
        };
        // a btf_enum (8 bytes) or btf_enum64 (12) named `name`
        let member = |name: &str, size: usize| {
            let mut bytes = at(name).to_ne_bytes().to_vec();
            bytes.resize(size, 0);
            bytes
        };
        let raw = btf_with(
            &[
                (at("bpf_iter_task_vma_new"), 12 << 24, Vec::new()), // FUNC
                (at("vfs_read"), 12 << 24, Vec::new()),              // FUNC, not bpf_
                (
                    0,
                    6 << 24 | 2,
                    [member("BPF_FUNC_loop", 8), member("OTHER", 8)].concat(),
                ),
                (0, 19 << 24 | 1, member("BPF_TRACE_UPROBE_SESSION", 12)),
            ],
            NAMES,
        );
        let found = scan(&raw, ASKED).unwrap();
        let expected = [
            "bpf_iter_task_vma_new",
            "BPF_FUNC_loop",
            "BPF_TRACE_UPROBE_SESSION",
        ];
        assert_eq!(found.names, expected.into());
    }

    #[test]
    fn struct_members_asked_about_are_found_in_anonymous_members() {
        const NAMES: &[u8] = b"\0mm_struct\0mm_lock_seq\0task_struct\0";
        let member = |name_off: u32, type_id: u32| {
            [name_off.to_ne_bytes(), type_id.to_ne_bytes(), [0; 4]].concat()
        };
        let with = |outer_name: u32| {
            btf_with(
                &[
                    // 1: struct NAME { struct { ... }; } (an anonymous member of type 2)
                    (outer_name, 4 << 24 | 1, member(0, 2)),
                    // 2: the anonymous struct { mm_lock_seq; }
                    (0, 4 << 24 | 1, member(11, 0)),
                ],
                NAMES,
            )
        };
        let found = scan(&with(1), ASKED).unwrap();
        assert!(found.names.contains("mm_struct.mm_lock_seq"), "{found:?}");
        // the member in another struct: not noted
        let found = scan(&with(23), ASKED).unwrap();
        assert!(found.names.is_empty(), "{found:?}");
    }

    #[test]
    fn what_it_cannot_read_it_gives_up() {
        // a kind from a newer kernel: sizes after it are unknown
        let raw = btf(&[(1, 8 << 24, 0), (0, 31 << 24, 0)], STRINGS);
        assert_eq!(scan(&raw, ASKED), None);
        // another magic (the other byte order), or truncated
        let mut swapped = btf(&[(1, 8 << 24, 0)], STRINGS);
        swapped.swap(0, 1);
        assert_eq!(scan(&swapped, ASKED), None);
        let whole = btf(&[(1, 8 << 24, 0)], STRINGS);
        assert_eq!(scan(&whole[..whole.len() - 10], ASKED), None);
    }

    #[test]
    fn the_running_kernels_agree_with_libbpf() {
        // what memtrace asks, and two names every kernel with BTF has (4.18, 5.5)
        let mut asked = crate::engine::features::btf_names();
        asked.extend([
            "BPF_FUNC_map_lookup_elem",
            "BPF_TRACE_FENTRY",
            "bpf_no_such_kfunc",
        ]);
        let Some(KernelBtf {
            tracepoints: found,
            names,
        }) = of_running_kernel(&asked)
        else {
            return; // no kernel BTF here
        };
        assert!(names.contains("BPF_FUNC_map_lookup_elem"));
        assert!(names.contains("BPF_TRACE_FENTRY"));
        assert!(!names.contains("bpf_no_such_kfunc"));

        let btf = libbpf_rs::btf::Btf::from_vmlinux().unwrap();
        // every name as libbpf's parse finds it
        let parsed = crate::engine::kernel::of_parsed_btf(&btf, &asked);
        assert_eq!(names, parsed.names);
        for name in ["sched_process_exit", "sys_enter", "mark_victim"] {
            let typedef = format!("btf_trace_{name}");
            let in_libbpf = btf
                .type_by_name::<libbpf_rs::btf::types::Typedef>(&typedef)
                .is_some();
            assert_eq!(found.contains_key(name), in_libbpf, "{name}");
        }
        assert!(!found.contains_key("no_such_tracepoint"));
        // the arguments as libbpf's parse finds them
        assert_eq!(found, parsed.tracepoints);
    }
}
