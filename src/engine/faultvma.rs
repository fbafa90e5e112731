//! The fault -> VMA engine (src/bpf/faultvma.bpf.c): page faults counted by
//! process image, kind and what they hit (a file, or a kind of anonymous
//! memory), on the software page-fault perf events. ffaults, fmapfault,
//! hfaults and swapin load this one object with different options and group
//! its counts differently (tools/fault_counts.rs).
//!
//! The counts live in slots, one per (process, image, kind, file). When an
//! address space or a process is gone, the BPF side says so on a ring buffer;
//! `harvest` then reads their slots' last counts and frees them for new keys.

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::mem::MaybeUninit;
use std::rc::Rc;

use anyhow::{Context, Result};
use libbpf_rs::skel::Skel;
use libbpf_rs::{Link, MapCore, MapFlags, Object, OpenObject, RingBuffer, RingBufferBuilder};

use crate::engine::features::Feature;
use crate::engine::kernel::{self, page_size};
use crate::engine::loader::{self, Choice, Trace, Without};
use crate::engine::maps::{map_named, percpu_sums, MappedArray};
use crate::engine::perf;
use crate::engine::skeleton::{FaultKind, OpenSkeleton};
use crate::present::escape::{c_chars_bytes, escape_bytes, escape_c_chars};

crate::bpf_skeleton!(
    "faultvma",
    OpenFaultvmaSkel,
    records: [
        faultvma_file,
        faultvma_name,
        faultvma_count_key,
        faultvma_slot_info,
        faultvma_gone,
        faultvma_cached
    ]
);
use bpf::types::faultvma_gone_what as GoneWhat;
use bpf::types::{faultvma_cached, faultvma_count_key, faultvma_file, faultvma_gone};
use bpf::types::{faultvma_flag as Flag, faultvma_label as Label, faultvma_name};
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

/// How the BPF side learns which VMA a fault hit (faultvma.bpf.c).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmaSource {
    /// bpf_find_vma() answers cached, checked by mm_lock_seq (6.4).
    Cache,
    /// An fentry program on handle_mm_fault, given the VMA: no lookup.
    Fentry,
    /// bpf_find_vma() on every fault, ~6x a fault storm's time.
    Lookup,
}

impl VmaSource {
    /// The cheapest the kernel has: the cache's hit (a per-CPU compare) is
    /// cheaper than a trampoline and a description per fault.
    pub fn choose() -> VmaSource {
        if Feature::MmLockSeq.present() {
            VmaSource::Cache
        } else if Feature::Fentry.present() {
            VmaSource::Fentry
        } else {
            VmaSource::Lookup
        }
    }

    pub fn described(self) -> &'static str {
        match self {
            VmaSource::Cache => "VMA cache",
            VmaSource::Fentry => "fentry handle_mm_fault's VMA",
            VmaSource::Lookup => "a VMA lookup per fault",
        }
    }
}

/// Whether the kernel lacks bpf_find_vma (5.17): the *_pre517 programs then
/// do without it, BPF cookies (5.15) and fetch-and-add (5.12), taking each
/// fault's VMA from fentry on handle_mm_fault (features::required_by).
fn before_find_vma() -> bool {
    !Feature::FindVma.present()
}

/// swapin's programs: pages read from swap (one is loaded).
const SWAP_READ_PROGRAMS: [&str; 3] = [
    "faultvma_swap_read",
    "faultvma_swap_read_pre517",
    "faultvma_swap_read_queue_bio",
];

/// swapin's program before 5.17, for the block_bio_queue tracepoint the
/// kernel has: (bio) since 5.11, (queue, bio) before.
fn swap_read_pre517() -> &'static str {
    match kernel::btf_tracepoint_args("block_bio_queue") {
        Some(2) => "faultvma_swap_read_queue_bio",
        _ => "faultvma_swap_read_pre517",
    }
}

/// What the engine does without the exit_mmap tracepoint.
pub const WITHOUT_EXIT_MMAP: &str = "the count slots of exited processes are freed only once \
     they are reaped (at their exit: the exit_mmap tracepoint, Linux 6.1)";

/// The page-fault programs of kernels before 5.17, one per kind.
const PRE517_FAULT_PROGRAMS: [&str; 2] =
    ["faultvma_fault_minor_pre517", "faultvma_fault_major_pre517"];

/// Faults counted since the last reading for one process image, kind and target.
#[derive(Debug, Clone)]
pub struct FaultCount {
    pub pid: u32,
    pub comm: String,
    /// A file's name, or `[anon]`, `[heap]`, `[stack]`, `[anon-shared]`, `[anon-hugetlb]`, `[unknown]`.
    pub file: String,
    pub major: bool,
    pub count: u64,
    /// The process's cgroup id where the engine labels by cgroup (serve), else 0.
    pub cgroup: u64,
    pub mapping: Mapping,
}

/// What kind of memory a count is of: serve's `mapping` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mapping {
    Anon,
    Heap,
    Stack,
    File,
    /// tmpfs/shmem: System V shared memory, memfd, /dev/shm, shared anonymous.
    Shmem,
    Hugetlb,
    Unknown,
    /// Not faults: pages read from swap (swap_reads).
    SwapRead,
}

impl Mapping {
    fn of(file: &faultvma_file) -> Mapping {
        let flag = |f: Flag| u32::from(file.flags) & f.0 != 0;
        match Label(u32::from(file.label)) {
            _ if flag(Flag::FAULTVMA_HUGETLB) => Mapping::Hugetlb,
            Label::FAULTVMA_FILE if flag(Flag::FAULTVMA_SHMEM) => Mapping::Shmem,
            Label::FAULTVMA_FILE => Mapping::File,
            Label::FAULTVMA_ANON if flag(Flag::FAULTVMA_SHARED) => Mapping::Shmem,
            Label::FAULTVMA_ANON => Mapping::Anon,
            Label::FAULTVMA_HEAP => Mapping::Heap,
            Label::FAULTVMA_STACK => Mapping::Stack,
            Label::FAULTVMA_SWAP_READ => Mapping::SwapRead,
            _ => Mapping::Unknown,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mapping::Anon => "anon",
            Mapping::Heap => "heap",
            Mapping::Stack => "stack",
            Mapping::File => "file",
            Mapping::Shmem => "shmem",
            Mapping::Hugetlb => "hugetlb",
            Mapping::Unknown => "unknown",
            Mapping::SwapRead => "swap_read",
        }
    }

    /// Whether a major fault here is a read from swap (swapin's rule).
    pub fn swaps(self) -> bool {
        matches!(
            self,
            Mapping::Anon | Mapping::Heap | Mapping::Stack | Mapping::Shmem
        )
    }
}

/// The loaded engine, its perf events attached.
pub struct FaultEngine<'obj> {
    skel: FaultvmaSkel<'obj>,
    _links: Vec<Link>,
    slots: Slots,
    /// What the ring buffer told is gone, not yet harvested.
    gone: Rc<RefCell<Vec<faultvma_gone>>>,
}

impl<'obj> FaultEngine<'obj> {
    /// Loads the engine with `max_slots` count slots (distinct process,
    /// image, kind and file) and attaches it; with `swap_reads`, the pages
    /// read from swap are counted too (Mapping::SwapRead).
    pub fn load(
        storage: &'obj mut MaybeUninit<OpenObject>,
        trace: &mut Trace,
        only: Only,
        swap_reads: bool,
        max_slots: u32,
    ) -> Result<FaultEngine<'obj>> {
        let slots = max_slots.max(1);
        let from_fentry = VmaSource::choose() == VmaSource::Fentry;
        let pre517 = before_find_vma();
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
                rodata.vma_from_fentry = from_fentry;
                programs
                    .load_if(!pre517, &["faultvma_fault"])
                    .load_if(pre517, &PRE517_FAULT_PROGRAMS)
                    .load_if(from_fentry && !pre517, &["faultvma_handle_fault"])
                    .load_if(pre517, &["faultvma_handle_fault_pre517"]);
                let swap_read = swap_reads.then(|| match pre517 {
                    false => "faultvma_swap_read",
                    true => swap_read_pre517(),
                });
                for program in SWAP_READ_PROGRAMS {
                    programs.load_if(swap_read == Some(program), &[program]);
                }
                programs.choose(Choice {
                    job: "address spaces gone (their count slots freed at once)",
                    programs: &["faultvma_exit_mmap"],
                    without: Without::Lose(WITHOUT_EXIT_MMAP),
                });
                // the maps of the paths not taken aren't made: their uses are dead code
                let maps = &mut open.maps;
                maps.fault_stash.set_autocreate(from_fentry && !pre517)?;
                maps.thread_stash.set_autocreate(pre517)?;
                maps.images_numbered.set_autocreate(pre517)?;
                for map in [
                    &mut maps.slot_of,
                    &mut maps.slot_info,
                    &mut maps.slot_counts,
                    &mut maps.free_slots,
                    &mut maps.faultvma_images,
                ] {
                    loader::set_entries(map, slots)?;
                }
                Ok(())
            },
        )?;
        let slots = Slots::new(skel.object())?;
        if pre517 {
            slots.queue_all(skel.object())?;
        }
        // swap-ins are major faults: minor ones are not even looked at
        let minor = only != Only::Swap;
        let links = match pre517 {
            false => perf::attach_fault_program(&skel.progs.faultvma_fault, minor)?,
            true => perf::attach_fault_programs(
                &skel.progs.faultvma_fault_major_pre517,
                minor.then_some(&skel.progs.faultvma_fault_minor_pre517),
            )?,
        };
        Ok(FaultEngine {
            skel,
            _links: links,
            slots,
            gone: Rc::default(),
        })
    }

    /// The ring buffer on which the BPF side tells of address spaces and
    /// processes gone: the session polls it, and `harvest` reads what it received.
    pub fn gone_ring(&self) -> Result<RingBuffer<'static>> {
        let mut builder = RingBufferBuilder::new();
        self.add_gone_ring(&mut builder)?;
        builder.build().context("setting up a ring buffer")
    }

    /// gone_ring's, added to a ring buffer of several maps (serve's).
    pub fn add_gone_ring<'slf, 'cb: 'slf>(
        &'slf self,
        builder: &mut RingBufferBuilder<'slf, 'cb>,
    ) -> Result<()> {
        let gone = Rc::clone(&self.gone);
        builder.add(&self.skel.maps.gone_ring, move |data: &[u8]| {
            let mut record = faultvma_gone::default();
            if plain::copy_from_bytes(&mut record, data).is_ok() {
                gone.borrow_mut().push(record);
            }
            0
        })?;
        Ok(())
    }

    /// Frees the count slots of the address spaces and processes gone since
    /// the last call (those no CPU's VMA cache still names; the rest wait for
    /// the next call), returning what they counted since they were last
    /// reported: their last counts, reported once.
    pub fn harvest(&mut self) -> Result<Vec<FaultCount>> {
        let gone = std::mem::take(&mut *self.gone.borrow_mut());
        self.slots.harvest(self.skel.object(), gone)
    }

    /// What each slot counted since the last call (or harvest, for freed
    /// slots): nothing is reset in the kernel, so nothing counted meanwhile is lost.
    pub fn take(&mut self) -> Result<Vec<FaultCount>> {
        let mut counts = self.harvest()?;
        counts.extend(self.slots.take(self.skel.object())?);
        Ok(counts)
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

/// A slot seen counting: its key and process name, fixed until user space frees it.
struct Slot {
    key: faultvma_count_key,
    comm: String,
    /// What it counts, once the file's name is known.
    file: Option<String>,
    cgroup: u64,
}

/// The count slots, read through mmap(), and what user space knows of them.
struct Slots {
    counts: MappedArray<u64>,
    infos: MappedArray<faultvma_slot_info>,
    /// What each slot had counted when it was last reported.
    reported: Vec<u64>,
    described: Vec<Option<Slot>>,
    /// The slots of each image, by its number, and of each process, by pid
    /// and start time (slots freed since may be listed: checked when used).
    of_image: HashMap<u64, Vec<u32>>,
    of_process: HashMap<(u32, u64), Vec<u32>>,
    /// Slots of what is gone that a CPU's VMA cache still named: freed later.
    doomed: HashSet<u32>,
    /// File names read so far.
    names: Names,
}

impl Slots {
    fn new(object: &Object) -> Result<Slots> {
        let counts = MappedArray::new(&map_named(object, "slot_counts")?)?;
        let infos = MappedArray::new(&map_named(object, "slot_info")?)?;
        let n = counts.len();
        Ok(Slots {
            counts,
            infos,
            reported: vec![0; n],
            described: (0..n).map(|_| None).collect(),
            of_image: HashMap::new(),
            of_process: HashMap::new(),
            doomed: HashSet::new(),
            names: Names::new(),
        })
    }

    /// Queues every slot, in order, for the BPF side to take: before 5.12 it
    /// can't count off never-used slots itself (faultvma_take_slot). One
    /// system call a slot (queues have no batch operations), before attaching.
    fn queue_all(&self, object: &Object) -> Result<()> {
        let free_slots = map_named(object, "free_slots")?;
        for slot in 0..self.counts.len() as u32 {
            free_slots
                .update(&[], &slot.to_ne_bytes(), MapFlags::ANY)
                .context("queueing the count slots")?;
        }
        Ok(())
    }

    /// Slots handed out so far (at most): the never-used ones come first.
    fn used(&self, object: &Object) -> Result<usize> {
        let used = map_named(object, "slots_used")?
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)?
            .and_then(|v| v.get(..4).and_then(|b| b.try_into().ok()))
            .map(u32::from_ne_bytes)
            .unwrap_or(0);
        Ok((used as usize).min(self.counts.len()))
    }

    fn count(&self, slot: usize) -> u64 {
        self.counts
            .atomic(slot)
            .map_or(0, |count| count.load(std::sync::atomic::Ordering::Acquire))
    }

    /// Describes a slot from its info once it has counted: the BPF side
    /// writes the info before the slot's first count. False if it is not a
    /// slot of a key (free, or it lost a race for its key).
    fn describe(&mut self, slot: usize) -> bool {
        if self.described[slot].is_some() {
            return true;
        }
        let info = self.infos.read(slot);
        if info.valid == 0 {
            return false;
        }
        let key = &info.key;
        self.of_image
            .entry(key.image)
            .or_default()
            .push(slot as u32);
        self.of_process
            .entry((key.tgid, key.start))
            .or_default()
            .push(slot as u32);
        self.described[slot] = Some(Slot {
            key: info.key,
            comm: escape_c_chars(&info.comm),
            file: None,
            cgroup: info.cgroup,
        });
        true
    }

    /// What `slot` counted since it was last reported, if anything; it is
    /// reported now.
    fn take_slot(&mut self, object: &Object, slot: usize) -> Result<Option<FaultCount>> {
        let total = self.count(slot);
        let delta = total.saturating_sub(self.reported[slot]);
        if delta == 0 || !self.describe(slot) {
            return Ok(None);
        }
        self.reported[slot] = total;
        let Some(described) = self.described[slot].as_mut() else {
            return Ok(None);
        };
        let file = match &described.file {
            Some(file) => file.clone(),
            None => {
                let file = &described.key.file;
                let name = self.names.name(object, file)?;
                let text = describe(name, file);
                // a file whose name is not known yet is looked up again next time
                if name.is_some() || Label(u32::from(file.label)) != Label::FAULTVMA_FILE {
                    described.file = Some(text.clone());
                }
                text
            }
        };
        Ok(Some(FaultCount {
            pid: described.key.tgid,
            comm: described.comm.clone(),
            file,
            major: described.key.kind == FaultKind::MEMTRACE_FAULT_MAJOR.0,
            count: delta,
            cgroup: described.cgroup,
            mapping: Mapping::of(&described.key.file),
        }))
    }

    /// Every slot's count since it was last reported.
    fn take(&mut self, object: &Object) -> Result<Vec<FaultCount>> {
        let mut counts = Vec::new();
        for slot in 0..self.used(object)? {
            counts.extend(self.take_slot(object, slot)?);
        }
        Ok(counts)
    }

    /// See FaultEngine::harvest; `gone`: what is gone since the last call.
    fn harvest(&mut self, object: &Object, gone: Vec<faultvma_gone>) -> Result<Vec<FaultCount>> {
        if gone.is_empty() && self.doomed.is_empty() {
            return Ok(Vec::new());
        }
        // Every slot of what is gone counted before it went (a slot is taken
        // to be counted in), and is described here.
        for slot in 0..self.used(object)? {
            if self.described[slot].is_none() && self.count(slot) > 0 {
                self.describe(slot);
            }
        }
        for record in gone {
            let slots = match GoneWhat(record.what) {
                GoneWhat::FAULTVMA_GONE_IMAGE => self.of_image.remove(&record.image),
                GoneWhat::FAULTVMA_GONE_PROCESS => {
                    self.of_process.remove(&(record.tgid, record.start))
                }
                _ => None,
            };
            for slot in slots.unwrap_or_default() {
                let described = &self.described[slot as usize];
                if described
                    .as_ref()
                    .is_some_and(|d| counted_by(&record, &d.key))
                {
                    self.doomed.insert(slot);
                }
            }
        }
        if self.doomed.is_empty() {
            return Ok(Vec::new());
        }
        // A CPU's last VMA keeps its slots until a fault there moves it on;
        // only the processes that are gone could match it, but the slot is
        // not given to another key while it is named there.
        let cached = cached_slots(object)?;
        let mut last = Vec::new();
        for slot in std::mem::take(&mut self.doomed) {
            if cached.contains(&slot) {
                self.doomed.insert(slot);
                continue;
            }
            last.extend(self.take_slot(object, slot as usize)?);
            self.free(object, slot)?;
        }
        Ok(last)
    }

    /// Gives a slot whose counts were all reported back to the BPF side:
    /// its key forgotten, its info and count cleared, then queued for a new key.
    fn free(&mut self, object: &Object, slot: u32) -> Result<()> {
        let index = slot as usize;
        let Some(described) = self.described[index].take() else {
            return Ok(());
        };
        // SAFETY: a C struct of integers with no padding (tgid, kind, start, image, file).
        let key = unsafe { plain::as_bytes(&described.key) };
        match map_named(object, "slot_of")?.delete(key) {
            Ok(()) => {}
            Err(err) if err.kind() == libbpf_rs::ErrorKind::NotFound => {}
            Err(err) => return Err(err).context("freeing a count slot"),
        }
        self.infos.update(index, |info| info.valid = 0);
        if let Some(count) = self.counts.atomic(index) {
            count.store(0, std::sync::atomic::Ordering::Release);
        }
        self.reported[index] = 0;
        map_named(object, "free_slots")?
            .update(&[], &slot.to_ne_bytes(), MapFlags::ANY)
            .context("freeing a count slot")
    }
}

/// Whether the slot of `key` counted for what `gone` says is gone.
fn counted_by(gone: &faultvma_gone, key: &faultvma_count_key) -> bool {
    match GoneWhat(gone.what) {
        GoneWhat::FAULTVMA_GONE_IMAGE => key.image == gone.image,
        GoneWhat::FAULTVMA_GONE_PROCESS => key.tgid == gone.tgid && key.start == gone.start,
        _ => false,
    }
}

/// The slots each CPU's last VMA names (it adds to them with no lookup).
fn cached_slots(object: &Object) -> Result<HashSet<u32>> {
    let per_cpu = map_named(object, "last_vma")?
        .lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)
        .context("reading the VMA cache")?
        .unwrap_or_default();
    let mut slots = HashSet::new();
    for raw in per_cpu {
        let mut cached = faultvma_cached::default();
        if plain::copy_from_bytes(&mut cached, &raw).is_ok() {
            slots.extend(cached.slot.iter().filter(|&&s| s > 0).map(|&s| s - 1));
        }
    }
    Ok(slots)
}

/// File names the BPF side recorded, by (dev, ino), each looked up once.
#[derive(Default)]
struct Names(HashMap<(u32, u64), Vec<u8>>);

impl Names {
    fn new() -> Names {
        Names::default()
    }

    /// The name of a file (None for anonymous memory, or a file whose name was not read).
    fn name(&mut self, object: &Object, file: &faultvma_file) -> Result<Option<&[u8]>> {
        if Label(u32::from(file.label)) != Label::FAULTVMA_FILE {
            return Ok(None);
        }
        let id = (file.dev, file.ino);
        if let Entry::Vacant(entry) = self.0.entry(id) {
            // SAFETY: a C struct of integers with no padding (ino, dev, label, flags).
            let key = unsafe { plain::as_bytes(file) };
            let raw = map_named(object, "file_names")?
                .lookup(key, MapFlags::ANY)
                .context("reading a file name")?;
            let mut name = faultvma_name::default();
            match raw {
                Some(raw) if plain::copy_from_bytes(&mut name, &raw).is_ok() => {
                    entry.insert(c_chars_bytes(&name.name));
                }
                _ => return Ok(None),
            }
        }
        Ok(self.0.get(&id).map(Vec::as_slice))
    }
}

/// What a fault hit, for people; `name`: the file's, if known.
fn describe(name: Option<&[u8]>, file: &faultvma_file) -> String {
    let flag = |f: Flag| u32::from(file.flags) & f.0 != 0;
    let (dev, ino) = (file.dev, file.ino);
    match Label(u32::from(file.label)) {
        Label::FAULTVMA_FILE => match name {
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
        let mut names = HashMap::new();
        names.insert((8, 12), b"libc.so.6".to_vec());
        names.insert((5, 1), b"dev/zero".to_vec());
        names.insert((9, 2), b"anon_hugepage".to_vec());
        names.insert((9, 3), b"evil\x1b[2J".to_vec());
        let none = Flag(0);
        let described =
            |f: faultvma_file| describe(names.get(&(f.dev, f.ino)).map(Vec::as_slice), &f);
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
