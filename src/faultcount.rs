//! The user side that ffaults, fmapfault and hfaults share: they run one BPF
//! object (src/bpf/faultvma.bpf.c) with different options and differ only in
//! how they group and print its counts.

use std::collections::HashMap;
use std::mem::MaybeUninit;

use anyhow::{Context, Result};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, Object};

use crate::cli::{CommonArgs, ReportArgs};
use crate::events::Session;
use crate::output::{escape_bytes, escape_c_chars, Output, Table};
use crate::perf;
use crate::skel;
use crate::{kernel, set_filter_rodata};

crate::bpf_skeleton!("faultvma");
use bpf::types::{faultvma_file, faultvma_name, faultvma_slot_info};
use bpf::FaultvmaSkelBuilder;

// SAFETY: C structs of integers and byte arrays: every bit pattern is valid.
unsafe impl plain::Plain for faultvma_file {}
// SAFETY: as above.
unsafe impl plain::Plain for faultvma_name {}
// SAFETY: as above.
unsafe impl plain::Plain for faultvma_slot_info {}

/// enum faultvma_label and the FAULTVMA_* flags of faultvma.h.
const LABEL_FILE: u16 = 0;
const LABEL_ANON: u16 = 1;
const LABEL_HEAP: u16 = 2;
const LABEL_STACK: u16 = 3;
const FLAG_HUGETLB: u16 = 0x1;
const FLAG_SHARED: u16 = 0x2;

/// What a tool asks of the shared kernel side, and how it groups the counts.
pub struct Options<'a> {
    pub tool: &'static str,
    pub common: &'a CommonArgs,
    pub report: &'a ReportArgs,
    pub grouping: Grouping,
    /// Count slots: distinct (process image, kind, file) triples.
    pub max_entries: u32,
    pub only: Only,
    pub what: &'static str,
    /// Printed after each report (swapin: the kernel's own swap-in counters).
    pub footer: Option<Footer<'a>>,
}

/// Something a tool prints after each report.
pub type Footer<'a> = Box<dyn FnMut(&mut Output) -> Result<()> + 'a>;

/// Which faults a tool counts (the BPF side's only_* options).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Only {
    All,
    /// Faults on file-backed mappings.
    Files,
    /// Faults on hugetlb mappings.
    Hugetlb,
    /// Major faults on anonymous or shmem memory: reads from swap.
    Swap,
}

/// Faults counted since the last report for one process image, kind and target.
#[derive(Debug, Clone)]
pub struct Count {
    pub pid: u32,
    pub comm: String,
    /// A file's name, or `[anon]`, `[heap]`, `[stack]`, `[anon-shared]`, `[anon-hugetlb]`, `[unknown]`.
    pub file: String,
    pub major: bool,
    pub count: u64,
}

pub fn kind_name(major: bool) -> &'static str {
    if major {
        "major"
    } else {
        "minor"
    }
}

/// Traces until the session ends, printing the counts since the previous
/// report at each interval and at the end.
pub fn run(mut options: Options<'_>) -> Result<i32> {
    let (target, filter) = skel::prepare(options.common)?;
    let mut storage = MaybeUninit::uninit();
    let mut open = FaultvmaSkelBuilder::default()
        .open(&mut storage)
        .context("opening the BPF object")?;
    set_filter_rodata!(open, &filter);
    let slots = options.max_entries.max(1);
    {
        let rodata = open
            .maps
            .rodata_data
            .as_deref_mut()
            .context("BPF object has no .rodata")?;
        rodata.only_files = options.only == Only::Files;
        rodata.only_hugetlb = options.only == Only::Hugetlb;
        rodata.only_swap = options.only == Only::Swap;
        rodata.max_slots = slots;
        rodata.page_shift = page_size().trailing_zeros();
    }
    skel::choose_common_programs(open.open_object_mut(), &filter)?;
    skel::set_autoload(
        open.open_object_mut(),
        "faultvma_swap_read",
        options.only == Only::Swap,
    )?;
    for map in [
        &mut open.maps.slot_of,
        &mut open.maps.slot_info,
        &mut open.maps.slot_counts,
    ] {
        map.set_max_entries(slots)
            .context("sizing the count maps")?;
    }
    kernel::check_attach_points(open.open_object())?;
    let mut skel = open.load().context(skel::LOAD_FAILED)?;
    skel::fill_traced_tgids(skel.object(), &target)?;
    skel.attach().context(skel::ATTACH_FAILED)?;
    // swap-ins are major faults: minor ones are not even looked at (swapin's
    // kind-0 slots count the pages read from swap instead)
    let minor = (options.only != Only::Swap).then_some(&skel.progs.faultvma_minor);
    let _links = perf::attach_fault_programs(minor, &skel.progs.faultvma_major)?;

    let mut out = Output::new(options.common.json);
    let interval = options.report.interval;
    let clock_header = interval.is_some() || options.common.timestamp;
    let mut session = Session::start(target, options.common.duration, interval, options.what)?;
    let mut reader = SlotReader::default();
    let swap = options.only == Only::Swap;
    let mut footer = options.footer.take();
    let mut report_now = |out: &mut Output| -> Result<()> {
        let counts = reader.take(skel.object())?;
        print_counts(
            out,
            &counts,
            options.grouping,
            options.report.top,
            clock_header,
            swap,
        )?;
        if let Some(footer) = footer.as_mut() {
            footer(out)?;
        }
        out.flush()
    };
    let stop = session.run(None, || Ok(()), || report_now(&mut out))?;
    report_now(&mut out)?;
    if options.common.verbose {
        report_cache_stats(options.tool, skel.object())?;
    }
    skel::report_drops(
        options.tool,
        skel.object(),
        &[(skel::DROP_COUNTS, "raise --max-entries")],
    )?;
    Ok(session.exit_code(stop))
}

/// Which fields of a count make a row.
#[derive(Clone, Copy)]
pub struct Grouping {
    pub process: bool,
    pub pid: bool,
    pub file: bool,
}

/// Prints counts grouped, sorted by total descending, the `top` first:
/// a table (COMM, PID, MINOR, MAJOR, FAULTS, FILE as grouped; for `swap`,
/// COUNT (major faults) and PAGES (read from swap: the kind-0 slots)) or JSON
/// lines (pid, comm, file, kind, count, null where not grouped; for `swap`
/// pid, comm, count, pages).
fn print_counts(
    out: &mut Output,
    counts: &[Count],
    grouping: Grouping,
    top: Option<usize>,
    clock_header: bool,
    swap: bool,
) -> Result<()> {
    type Group = (Option<String>, Option<u32>, Option<String>);
    let mut grouped: HashMap<Group, [u64; 2]> = HashMap::new();
    for c in counts {
        let group = (
            grouping.process.then(|| c.comm.clone()),
            grouping.pid.then_some(c.pid),
            grouping.file.then(|| c.file.clone()),
        );
        grouped.entry(group).or_default()[usize::from(c.major)] += c.count;
    }
    let mut rows: Vec<(Group, [u64; 2])> = grouped.into_iter().collect();
    rows.sort_by(|(ga, a), (gb, b)| (b[0] + b[1]).cmp(&(a[0] + a[1])).then_with(|| ga.cmp(gb)));
    rows.truncate(top.unwrap_or(usize::MAX));

    if out.json {
        let time_ns = crate::events::monotonic_ns();
        for ((comm, pid, file), [minor, major]) in &rows {
            if swap {
                out.json_line(&serde_json::json!({
                    "time_ns": time_ns,
                    "pid": pid,
                    "comm": comm,
                    "count": major,
                    "pages": minor,
                }))?;
                continue;
            }
            for (major, count) in [(false, minor), (true, major)] {
                if *count > 0 {
                    out.json_line(&serde_json::json!({
                        "time_ns": time_ns,
                        "pid": pid,
                        "comm": comm,
                        "file": file,
                        "kind": kind_name(major),
                        "count": count,
                    }))?;
                }
            }
        }
        return Ok(());
    }
    if clock_header {
        out.line(&format!("\n{}", crate::output::wall_clock_hms()))?;
    }
    let mut columns = Vec::new();
    if grouping.process {
        columns.push("COMM");
    }
    if grouping.pid {
        columns.push(">PID");
    }
    if swap {
        columns.extend([">COUNT", ">PAGES"]);
    } else {
        columns.extend([">MINOR", ">MAJOR", ">FAULTS"]);
    }
    if grouping.file {
        columns.push("FILE");
    }
    let mut table = Table::new(&columns);
    for ((comm, pid, file), [minor, major]) in rows {
        let mut cells: Vec<String> = Vec::new();
        cells.extend(comm);
        cells.extend(pid.map(|p| p.to_string()));
        if swap {
            cells.extend([major.to_string(), minor.to_string()]);
        } else {
            cells.extend([
                minor.to_string(),
                major.to_string(),
                (minor + major).to_string(),
            ]);
        }
        cells.extend(file);
        table.row(cells);
    }
    table.print(out)
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |size| size as u64)
}

fn map<'a>(object: &'a Object, name: &str) -> Result<libbpf_rs::Map<'a>> {
    object
        .maps()
        .find(|m| m.name() == name)
        .with_context(|| format!("BPF map {name} not found"))
}

fn read_u64(bytes: &[u8]) -> u64 {
    bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_ne_bytes)
        .unwrap_or(0)
}

/// Reads the count slots and reports what each gained since the last read:
/// nothing is reset in the kernel, so nothing counted meanwhile is lost.
#[derive(Default)]
struct SlotReader {
    previous: Vec<u64>,
    /// Each slot's process, file and kind (its count aside): fixed once the slot is published.
    described: Vec<Option<Count>>,
    /// File names read so far: the map is read again only for a file not in it.
    names: Names,
}

impl SlotReader {
    fn take(&mut self, object: &Object) -> Result<Vec<Count>> {
        let used = map(object, "slots_used")?
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)?
            .and_then(|v| v.get(..4).and_then(|b| b.try_into().ok()))
            .map(u32::from_ne_bytes)
            .unwrap_or(0);
        let counts_map = map(object, "slot_counts")?;
        let info_map = map(object, "slot_info")?;
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
                if file.label == LABEL_FILE && !self.names.contains_key(&id) && !names_read {
                    self.names = read_names(object)?;
                    names_read = true;
                }
                let described = Count {
                    pid: info.key.tgid,
                    comm: escape_c_chars(&info.comm),
                    file: describe(&self.names, file.label, file.flags, file.dev, file.ino),
                    major: info.key.kind == 1,
                    count: 0,
                };
                // a file whose name is not known yet is looked up again next time
                if file.label != LABEL_FILE || self.names.contains_key(&id) {
                    self.described[slot] = Some(described.clone());
                }
                counts.push(Count {
                    count: delta,
                    ..described
                });
            } else if let Some(described) = &self.described[slot] {
                counts.push(Count {
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
    let map = map(object, "file_names")?;
    let mut names = Names::new();
    for raw_key in map.keys() {
        let Some(raw_value) = map.lookup(&raw_key, MapFlags::ANY)? else {
            continue;
        };
        let (mut key, mut value) = (faultvma_file::default(), faultvma_name::default());
        if plain::copy_from_bytes(&mut key, &raw_key).is_err()
            || plain::copy_from_bytes(&mut value, &raw_value).is_err()
        {
            continue;
        }
        let bytes: Vec<u8> = value
            .name
            .iter()
            .map(|&c| c as u8)
            .take_while(|&b| b != 0)
            .collect();
        names.insert((key.dev, key.ino), bytes);
    }
    Ok(names)
}

/// What a fault hit, for people.
fn describe(names: &Names, label: u16, flags: u16, dev: u32, ino: u64) -> String {
    match label {
        LABEL_FILE => match names.get(&(dev, ino)).map(Vec::as_slice) {
            // MAP_SHARED|MAP_ANONYMOUS memory is a shmem file named "dev/zero"
            Some(b"dev/zero") => "[anon-shared]".into(),
            Some(b"anon_hugepage") if flags & FLAG_HUGETLB != 0 => "[anon-hugetlb]".into(),
            Some(name) => escape_bytes(name),
            None => format!("[dev {}:{} inode {ino}]", dev >> 20, dev & 0xfffff),
        },
        LABEL_ANON if flags & FLAG_SHARED != 0 => "[anon-shared]".into(),
        LABEL_ANON => "[anon]".into(),
        LABEL_HEAP => "[heap]".into(),
        LABEL_STACK => "[stack]".into(),
        _ => "[unknown]".into(),
    }
}

/// Region-cache hits and bpf_find_vma() lookups, shown with -v.
fn report_cache_stats(tool: &str, object: &Object) -> Result<()> {
    let stats = map(object, "vma_stats")?;
    let mut totals = [0u64; 2];
    for (i, total) in totals.iter_mut().enumerate() {
        let per_cpu = stats
            .lookup_percpu(&(i as u32).to_ne_bytes(), MapFlags::ANY)?
            .unwrap_or_default();
        *total = per_cpu.iter().map(|v| read_u64(v)).sum();
    }
    eprintln!(
        "{tool}: VMA cache: {} region hits, {} bpf_find_vma() lookups; other faults hit their CPU's last VMA",
        totals[0], totals[1]
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        let mut names = Names::new();
        names.insert((8, 12), b"libc.so.6".to_vec());
        names.insert((5, 1), b"dev/zero".to_vec());
        names.insert((9, 2), b"anon_hugepage".to_vec());
        names.insert((9, 3), b"evil\x1b[2J".to_vec());
        assert_eq!(describe(&names, LABEL_FILE, 0, 8, 12), "libc.so.6");
        assert_eq!(
            describe(&names, LABEL_FILE, FLAG_SHARED, 5, 1),
            "[anon-shared]"
        );
        assert_eq!(
            describe(&names, LABEL_FILE, FLAG_HUGETLB, 9, 2),
            "[anon-hugetlb]"
        );
        assert_eq!(describe(&names, LABEL_FILE, 0, 9, 3), "evil\\x1b[2J");
        assert_eq!(
            describe(&names, LABEL_FILE, 0, (8 << 20) | 1, 77),
            "[dev 8:1 inode 77]"
        );
        assert_eq!(describe(&names, LABEL_ANON, 0, 0, 0), "[anon]");
        assert_eq!(describe(&names, LABEL_HEAP, 0, 0, 0), "[heap]");
        assert_eq!(describe(&names, LABEL_STACK, 0, 0, 0), "[stack]");
        assert_eq!(describe(&names, 4, 0, 0, 0), "[unknown]");
    }
}
