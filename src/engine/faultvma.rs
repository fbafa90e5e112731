//! The fault -> VMA engine (src/bpf/faultvma.bpf.c): page faults counted by
//! process image, kind and what they hit (a file, or a kind of anonymous
//! memory), on the software page-fault perf events. ffaults, fmapfault,
//! hfaults and swapin load this one object with different options and group
//! its counts differently (tools/fault_counts.rs).

use std::collections::HashMap;
use std::mem::MaybeUninit;

use anyhow::Result;
use libbpf_rs::skel::Skel;
use libbpf_rs::{Link, MapCore, MapFlags, Object, OpenObject};

use crate::engine::kernel::page_size;
use crate::engine::loader::{self, Trace};
use crate::engine::maps::{entries, map_named, percpu_sums, read_u64};
use crate::engine::perf;
use crate::engine::skeleton::{FaultKind, OpenSkeleton};
use crate::present::escape::{c_chars_bytes, escape_bytes, escape_c_chars};

crate::bpf_skeleton!(
    "faultvma",
    OpenFaultvmaSkel,
    records: [faultvma_file, faultvma_name, faultvma_slot_info]
);
use bpf::types::{faultvma_file, faultvma_flag as Flag, faultvma_label as Label, faultvma_name};
use bpf::types::{faultvma_slot_info, faultvma_stat as Stat};
use bpf::{FaultvmaSkel, FaultvmaSkelBuilder};

/// Which faults a tool counts (the BPF side's only_* options).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Only {
    All,
    /// Faults on file-backed mappings.
    Files,
    /// Faults on hugetlb mappings.
    Hugetlb,
    /// Major faults on anonymous or shmem memory: reads from swap. The
    /// minor-fault slots count the pages read from swap instead.
    Swap,
}

/// Faults counted since the last reading for one process image, kind and target.
#[derive(Debug, Clone)]
pub struct FaultCount {
    pub pid: u32,
    pub comm: String,
    /// A file's name, or `[anon]`, `[heap]`, `[stack]`, `[anon-shared]`, `[anon-hugetlb]`, `[unknown]`.
    pub file: String,
    pub major: bool,
    pub count: u64,
}

/// The loaded engine, its perf events attached.
pub struct FaultEngine<'obj> {
    skel: FaultvmaSkel<'obj>,
    _links: Vec<Link>,
    reader: SlotReader,
}

impl<'obj> FaultEngine<'obj> {
    /// Loads the engine with `max_slots` count slots (distinct process
    /// image, kind and file triples) and attaches it.
    pub fn load(
        storage: &'obj mut MaybeUninit<OpenObject>,
        trace: &Trace,
        only: Only,
        max_slots: u32,
    ) -> Result<FaultEngine<'obj>> {
        let slots = max_slots.max(1);
        let skel = loader::load(
            FaultvmaSkelBuilder::default(),
            storage,
            trace,
            |open, programs| {
                let rodata = open.rodata()?;
                rodata.only_files = only == Only::Files;
                rodata.only_hugetlb = only == Only::Hugetlb;
                rodata.only_swap = only == Only::Swap;
                rodata.max_slots = slots;
                rodata.page_shift = page_size().trailing_zeros();
                programs.load_if(only == Only::Swap, &["faultvma_swap_read"]);
                for map in [
                    &mut open.maps.slot_of,
                    &mut open.maps.slot_info,
                    &mut open.maps.slot_counts,
                ] {
                    loader::set_entries(map, slots)?;
                }
                Ok(())
            },
        )?;
        // swap-ins are major faults: minor ones are not even looked at
        let minor = (only != Only::Swap).then_some(&skel.progs.faultvma_minor);
        let links = perf::attach_fault_programs(minor, &skel.progs.faultvma_major)?;
        Ok(FaultEngine {
            skel,
            _links: links,
            reader: SlotReader::default(),
        })
    }

    /// What each slot counted since the last call: nothing is reset in the
    /// kernel, so nothing counted meanwhile is lost.
    pub fn take(&mut self) -> Result<Vec<FaultCount>> {
        self.reader.take(self.skel.object())
    }

    pub fn object(&self) -> &Object {
        self.skel.object()
    }

    /// Region-cache hits and bpf_find_vma() lookups, shown with -v.
    pub fn report_cache_stats(&self, tool: &str) -> Result<()> {
        let stats = percpu_sums(&self.skel.maps.vma_stats, Stat::FAULTVMA_STAT_NR.0 as usize)?;
        let stat = |which: Stat| stats[which.0 as usize];
        crate::say!(
            "{tool}: VMA cache: {} region hits, {} bpf_find_vma() lookups; other faults hit their CPU's last VMA",
            stat(Stat::FAULTVMA_STAT_HIT_REGION),
            stat(Stat::FAULTVMA_STAT_LOOKUP)
        );
        Ok(())
    }
}

/// Reads the count slots and reports what each gained since the last read.
#[derive(Default)]
struct SlotReader {
    previous: Vec<u64>,
    /// Each slot's process, file and kind (its count aside): fixed once the slot is published.
    described: Vec<Option<FaultCount>>,
    /// File names read so far: the map is read again only for a file not in it.
    names: Names,
}

impl SlotReader {
    fn take(&mut self, object: &Object) -> Result<Vec<FaultCount>> {
        let used = map_named(object, "slots_used")?
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)?
            .and_then(|v| v.get(..4).and_then(|b| b.try_into().ok()))
            .map(u32::from_ne_bytes)
            .unwrap_or(0);
        let counts_map = map_named(object, "slot_counts")?;
        let info_map = map_named(object, "slot_info")?;
        let slots = used.min(counts_map.max_entries()) as usize;
        self.previous.resize(slots, 0);
        self.described.resize(slots, None);
        let mut names_read = false;
        let mut counts = Vec::new();
        for slot in 0..slots {
            let key = (slot as u32).to_ne_bytes();
            let total = read_u64(&counts_map.lookup(&key, MapFlags::ANY)?.unwrap_or_default());
            let delta = total.saturating_sub(self.previous[slot]);
            if delta == 0 {
                continue;
            }
            if self.described[slot].is_none() {
                let mut info = faultvma_slot_info::default();
                let raw = info_map.lookup(&key, MapFlags::ANY)?.unwrap_or_default();
                if plain::copy_from_bytes(&mut info, &raw).is_err() || info.valid == 0 {
                    continue;
                }
                let file = &info.key.file;
                let id = (file.dev, file.ino);
                let is_file = Label(u32::from(file.label)) == Label::FAULTVMA_FILE;
                if is_file && !self.names.contains_key(&id) && !names_read {
                    self.names = read_names(object)?;
                    names_read = true;
                }
                let described = FaultCount {
                    pid: info.key.tgid,
                    comm: escape_c_chars(&info.comm),
                    file: describe(&self.names, file),
                    major: info.key.kind == FaultKind::MEMTRACE_FAULT_MAJOR.0,
                    count: 0,
                };
                // a file whose name is not known yet is looked up again next time
                if !is_file || self.names.contains_key(&id) {
                    self.described[slot] = Some(described.clone());
                }
                counts.push(FaultCount {
                    count: delta,
                    ..described
                });
            } else if let Some(described) = &self.described[slot] {
                counts.push(FaultCount {
                    count: delta,
                    ..described.clone()
                });
            }
            self.previous[slot] = total;
        }
        Ok(counts)
    }
}

/// File names the BPF side recorded, by (dev, ino).
type Names = HashMap<(u32, u64), Vec<u8>>;

fn read_names(object: &Object) -> Result<Names> {
    let names = entries::<faultvma_file, faultvma_name>(&map_named(object, "file_names")?)?;
    Ok(names
        .into_iter()
        .map(|(file, name)| ((file.dev, file.ino), c_chars_bytes(&name.name)))
        .collect())
}

/// What a fault hit, for people.
fn describe(names: &Names, file: &faultvma_file) -> String {
    let flag = |f: Flag| u32::from(file.flags) & f.0 != 0;
    let (dev, ino) = (file.dev, file.ino);
    match Label(u32::from(file.label)) {
        Label::FAULTVMA_FILE => match names.get(&(dev, ino)).map(Vec::as_slice) {
            // MAP_SHARED|MAP_ANONYMOUS memory is a shmem file named "dev/zero"
            Some(b"dev/zero") => "[anon-shared]".into(),
            Some(b"anon_hugepage") if flag(Flag::FAULTVMA_HUGETLB) => "[anon-hugetlb]".into(),
            Some(name) => escape_bytes(name),
            None => format!("[dev {}:{} inode {ino}]", dev >> 20, dev & 0xfffff),
        },
        Label::FAULTVMA_ANON if flag(Flag::FAULTVMA_SHARED) => "[anon-shared]".into(),
        Label::FAULTVMA_ANON => "[anon]".into(),
        Label::FAULTVMA_HEAP => "[heap]".into(),
        Label::FAULTVMA_STACK => "[stack]".into(),
        _ => "[unknown]".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(label: Label, flags: Flag, dev: u32, ino: u64) -> faultvma_file {
        faultvma_file {
            ino,
            dev,
            label: label.0 as u16,
            flags: flags.0 as u16,
        }
    }

    #[test]
    fn labels() {
        let mut names = Names::new();
        names.insert((8, 12), b"libc.so.6".to_vec());
        names.insert((5, 1), b"dev/zero".to_vec());
        names.insert((9, 2), b"anon_hugepage".to_vec());
        names.insert((9, 3), b"evil\x1b[2J".to_vec());
        let none = Flag(0);
        let described = |f: faultvma_file| describe(&names, &f);
        assert_eq!(
            described(file(Label::FAULTVMA_FILE, none, 8, 12)),
            "libc.so.6"
        );
        assert_eq!(
            described(file(Label::FAULTVMA_FILE, Flag::FAULTVMA_SHARED, 5, 1)),
            "[anon-shared]"
        );
        assert_eq!(
            described(file(Label::FAULTVMA_FILE, Flag::FAULTVMA_HUGETLB, 9, 2)),
            "[anon-hugetlb]"
        );
        assert_eq!(
            described(file(Label::FAULTVMA_FILE, none, 9, 3)),
            "evil\\x1b[2J"
        );
        assert_eq!(
            described(file(Label::FAULTVMA_FILE, none, (8 << 20) | 1, 77)),
            "[dev 8:1 inode 77]"
        );
        assert_eq!(described(file(Label::FAULTVMA_ANON, none, 0, 0)), "[anon]");
        assert_eq!(described(file(Label::FAULTVMA_HEAP, none, 0, 0)), "[heap]");
        assert_eq!(
            described(file(Label::FAULTVMA_STACK, none, 0, 0)),
            "[stack]"
        );
        assert_eq!(
            described(file(Label::FAULTVMA_UNKNOWN, none, 0, 0)),
            "[unknown]"
        );
    }
}
