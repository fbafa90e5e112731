//! Records from the BPF side decoded into Rust values: a record of any
//! generated type (padded when the BPF side sent only its used part), file
//! paths as the BPF side walked them (struct memtrace_path), and the mappings
//! of exiting processes (exitmaps.h) for the symbolizer.

use std::cell::RefCell;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use anyhow::Result;
use libbpf_rs::{MapCore, RingBuffer, RingBufferBuilder};

use crate::analysis::symbolize::{Mapping, StackSymbolizer, VDSO};
use crate::engine::features::Feature;
use crate::engine::skeleton::{ExitMappingKind, ExitMappingRecord, PathFlag};

/// A record of type `T` from a ring buffer. Records may carry only the used
/// part of a trailing buffer (a path): the rest reads as zeros. No copy is
/// made beyond the record itself (mmapsnoop decodes one per mmap).
pub fn decode<T: plain::Plain + Default>(data: &[u8]) -> T {
    let mut record = T::default();
    // SAFETY: T is Plain, so any bytes make a valid T; the view is only
    // written to ("writing is ok" for a type with padding, says plain).
    let bytes = unsafe { plain::as_mut_bytes(&mut record) };
    let n = data.len().min(bytes.len());
    bytes[..n].copy_from_slice(&data[..n]);
    record
}

/// A file's name and path as the BPF side walked it (struct memtrace_path:
/// components leaf first, each NUL-terminated). Raw bytes: escape to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePath {
    pub name: Vec<u8>,
    pub path: Vec<u8>,
}

impl FilePath {
    /// From a record's path buffer, its used length, its depth in components
    /// and its PathFlag bits; None when the record carries no file.
    pub fn from_bpf(buf: &[i8], len: usize, depth: usize, flags: u8) -> Option<FilePath> {
        if depth == 0 {
            return None;
        }
        let flag = |f: PathFlag| u32::from(flags) & f.0 != 0;
        let bytes: Vec<u8> = buf[..len.min(buf.len())].iter().map(|&c| c as u8).collect();
        let mut components: Vec<&[u8]> = bytes.split(|&b| b == 0).take(depth).collect();
        let name = components.first().copied().unwrap_or_default().to_vec();
        components.reverse();
        let mut path = Vec::with_capacity(len + 2);
        let truncated = flag(PathFlag::MEMTRACE_PATH_TRUNCATED);
        if truncated {
            path.extend_from_slice(b"...");
        }
        for (i, component) in components.iter().enumerate() {
            // a pseudo file (memfd:x) is a lone name; anything else is absolute
            if i > 0 || truncated || flag(PathFlag::MEMTRACE_PATH_ROOTED) {
                path.push(b'/');
            }
            path.extend_from_slice(component);
        }
        if flag(PathFlag::MEMTRACE_PATH_DELETED) {
            path.extend_from_slice(b" (deleted)");
        }
        Some(FilePath { name, path })
    }
}

/// The path of a file unlinked since it was mapped, without the marker
/// (blazesym opens it by name; a replaced library still often symbolizes).
fn strip_deleted(mut path: Vec<u8>) -> Vec<u8> {
    if path.ends_with(b" (deleted)") {
        path.truncate(path.len() - b" (deleted)".len());
    }
    path
}

/// exitmaps.bpf.h's program, which sends an exiting process's mappings.
pub const EXIT_MAPPINGS_PROGRAMS: &[&str] = &["exitmaps_send_mappings"];

/// Whether EXIT_MAPPINGS_PROGRAMS are loaded: only where the kernel has the
/// task_vma iterator (6.7), without which they send nothing (and 5.10
/// can't load their global function).
pub fn exit_mappings_sent() -> bool {
    Feature::TaskVmaIterator.present()
}

/// Adds a skeleton's `mappings` ring buffer (exitmaps.bpf.h) to `builder`:
/// each exiting process's mappings go to `add` (StackSymbolizer::add_exited_mapping).
pub fn add_exit_mappings<'slf, 'cb: 'slf>(
    builder: &mut RingBufferBuilder<'slf, 'cb>,
    mappings: &'slf dyn MapCore,
    mut add: impl FnMut(u32, Option<Mapping>) + 'cb,
) -> Result<()> {
    builder.add(mappings, move |data| {
        let (pid, mapping) = exit_mapping(data);
        add(pid, mapping);
        0
    })?;
    Ok(())
}

/// Readies `symbolizer` for a report on `pids`' stacks: each one's live
/// mappings read now, or, for a process whose mappings are already gone (it
/// is exiting), the exit mappings ring consumed first. The BPF side sends a
/// process's mappings before they go, so once /proc shows none they are in
/// the ring: a report made as a process exits has them either way.
pub fn ready_symbolizer(
    symbolizer: &RefCell<StackSymbolizer>,
    exit_mappings: &RingBuffer<'_>,
    pids: impl IntoIterator<Item = u32>,
) {
    symbolizer.borrow_mut().refresh();
    let gone = pids
        .into_iter()
        .any(|pid| !symbolizer.borrow_mut().has_mappings(pid));
    if gone {
        let _ = exit_mappings.consume_raw();
    }
}

/// An exitmaps_mapping record: the exiting process, and one of its
/// executable file mappings (None on the record that ends its list).
fn exit_mapping(data: &[u8]) -> (u32, Option<Mapping>) {
    let record: ExitMappingRecord = decode(data);
    if record.kind == ExitMappingKind::EXITMAPS_VDSO.0 {
        let mapping = Mapping {
            start: record.start,
            end: record.end,
            file_offset: 0,
            path: PathBuf::from(VDSO),
        };
        return (record.tgid, Some(mapping));
    }
    let info = &record.path_info;
    let file = FilePath::from_bpf(
        &record.path,
        info.len as usize,
        info.depth as usize,
        info.flags,
    );
    let mapping = file
        .filter(|_| record.end > record.start)
        .map(|file| Mapping {
            start: record.start,
            end: record.end,
            file_offset: record.file_offset,
            path: PathBuf::from(OsString::from_vec(strip_deleted(file.path))),
        });
    (record.tgid, mapping)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOTED: u8 = PathFlag::MEMTRACE_PATH_ROOTED.0 as u8;
    const TRUNCATED: u8 = PathFlag::MEMTRACE_PATH_TRUNCATED.0 as u8;
    const DELETED: u8 = PathFlag::MEMTRACE_PATH_DELETED.0 as u8;

    fn path_buf(components: &[&str]) -> (Vec<i8>, usize) {
        let mut buf = Vec::new();
        for c in components {
            buf.extend(c.bytes().map(|b| b as i8));
            buf.push(0);
        }
        let len = buf.len();
        buf.resize(4096, 0);
        (buf, len)
    }

    #[test]
    fn file_paths() {
        let (buf, len) = path_buf(&["libc.so.6", "x86_64-linux-gnu", "lib", "usr"]);
        let file = FilePath::from_bpf(&buf, len, 4, ROOTED).unwrap();
        assert_eq!(file.name, b"libc.so.6");
        assert_eq!(file.path, b"/usr/lib/x86_64-linux-gnu/libc.so.6");

        let (buf, len) = path_buf(&["memfd:cache"]);
        let file = FilePath::from_bpf(&buf, len, 1, 0).unwrap();
        assert_eq!(file.path, b"memfd:cache");

        let (buf, len) = path_buf(&["gone", "tmp"]);
        let file = FilePath::from_bpf(&buf, len, 2, ROOTED | DELETED).unwrap();
        assert_eq!(file.path, b"/tmp/gone (deleted)");

        let (buf, len) = path_buf(&["deep", "er"]);
        let file = FilePath::from_bpf(&buf, len, 2, TRUNCATED).unwrap();
        assert_eq!(file.path, b".../er/deep");

        assert_eq!(FilePath::from_bpf(&buf, 0, 0, 0), None);
    }

    #[test]
    fn short_records_are_padded() {
        #[derive(Default, Debug, PartialEq)]
        #[repr(C)]
        struct Two {
            a: u32,
            b: u32,
        }
        // SAFETY: two u32s: every bit pattern is valid.
        unsafe impl plain::Plain for Two {}
        assert_eq!(decode::<Two>(&7u32.to_ne_bytes()), Two { a: 7, b: 0 });
        let mut both = 7u32.to_ne_bytes().to_vec();
        both.extend(9u32.to_ne_bytes());
        both.push(1);
        assert_eq!(decode::<Two>(&both), Two { a: 7, b: 9 });
    }
}
