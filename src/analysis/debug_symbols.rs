//! A stripped file's symbol table from its separate debug file, without its
//! DWARF. blazesym follows a file to its debug file only to load the DWARF
//! there, and a distribution's debug files compress it: for Debian's libc
//! (libc6-dbg) the inflating took ~40 ms of every report that named a libc
//! frame. Names alone need the debug file's ELF symbol table, which is not
//! compressed; so without `--source` the symbolizer asks blazesym for that
//! file's ELF symbols, at the virtual address this module computes (a debug
//! file's segments have no file contents, so a file offset means nothing there).
//!
//! Only the build-id path (`/usr/lib/debug/.build-id/xx/rest.debug`, what
//! Debian's, Fedora's and Ubuntu's debug packages install) is looked up here;
//! a file found another way (.gnu_debuglink) keeps blazesym's DWARF path.

use std::path::{Path, PathBuf};

use object::{Object, ObjectSegment};

/// Where separate debug files are found by build id.
const BUILD_ID_DIR: &str = "/usr/lib/debug/.build-id";

/// An ELF file's PT_LOAD segments: (file offset, virtual address, file size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadSegments(Vec<(u64, u64, u64)>);

impl LoadSegments {
    pub fn of(file: &object::File<'_>) -> LoadSegments {
        LoadSegments(
            file.segments()
                .map(|s| {
                    let (offset, size) = s.file_range();
                    (offset, s.address(), size)
                })
                .collect(),
        )
    }

    /// The virtual address (as the ELF file numbers them) of a file offset.
    pub fn address_of(&self, file_offset: u64) -> Option<u64> {
        self.0
            .iter()
            .find(|(offset, _, size)| (*offset..offset + size).contains(&file_offset))
            .map(|(offset, vaddr, _)| file_offset - offset + vaddr)
    }
}

/// An ELF file's GNU build id, in hex; None where it has none or can't be read.
pub fn build_id_hex(path: &Path) -> Option<String> {
    let data = std::fs::read(path).ok()?;
    let file = object::File::parse(&*data).ok()?;
    let build_id = file.build_id().ok()??;
    Some(hex(build_id))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A file's separate debug file, and how to turn the file's offsets into
/// the addresses its symbols have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugSymbols {
    pub path: PathBuf,
    /// The mapped file's segments.
    pub loads: LoadSegments,
}

impl DebugSymbols {
    /// The debug file installed for `path`'s build id, if there is one.
    pub fn find(path: &Path) -> Option<DebugSymbols> {
        Self::find_in(path, Path::new(BUILD_ID_DIR))
    }

    fn find_in(path: &Path, build_id_dir: &Path) -> Option<DebugSymbols> {
        let data = std::fs::read(path).ok()?;
        let file = object::File::parse(&*data).ok()?;
        let build_id = file.build_id().ok()??;
        let (first, rest) = build_id.split_first()?;
        let debug_path = build_id_dir
            .join(hex(&[*first]))
            .join(format!("{}.debug", hex(rest)));
        if !debug_path.is_file() {
            return None;
        }
        Some(DebugSymbols {
            path: debug_path,
            loads: LoadSegments::of(&file),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_debug_file_is_found_by_build_id_and_offsets_become_addresses() {
        // this test binary: its build id, and a debug file "installed" for it
        let exe = std::env::current_exe().unwrap();
        let data = std::fs::read(&exe).unwrap();
        let file = object::File::parse(&*data).unwrap();
        let Some(build_id) = file.build_id().unwrap() else {
            panic!("the test binary has no build id; link with --build-id");
        };
        let dir = std::env::temp_dir().join(format!("memtrace-debug-{}", std::process::id()));
        let hex: String = build_id.iter().map(|b| format!("{b:02x}")).collect();
        let sub = dir.join(&hex[..2]);
        std::fs::create_dir_all(&sub).unwrap();
        let debug = sub.join(format!("{}.debug", &hex[2..]));
        std::fs::write(&debug, b"").unwrap();

        let found = DebugSymbols::find_in(&exe, &dir);
        std::fs::remove_dir_all(&dir).unwrap();
        let found = found.expect("the debug file by build id");
        assert_eq!(found.path, debug);
        let text = file
            .segments()
            .find(|s| s.file_range().1 > 0 && s.address() != s.file_range().0)
            .or_else(|| file.segments().nth(1))
            .unwrap();
        let (offset, _) = text.file_range();
        assert_eq!(
            found.loads.address_of(offset + 16),
            Some(text.address() + 16)
        );
        assert_eq!(found.loads.address_of(u64::MAX - 1), None);
        assert_eq!(DebugSymbols::find_in(&exe, Path::new("/nonexistent")), None);
    }
}
