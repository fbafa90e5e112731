//! What pmap prints of a process's mappings: each mapping with its kind
//! (anonymous, heap, stack, file, shmem, hugetlb, vdso), in a chosen order,
//! and the totals by kind; a table, or JSON lines of the same rows.

use std::collections::HashSet;

use anyhow::Result;
use serde::Serialize;

use super::smaps::{Field, Mapping, Sizes};
use super::SortBy;
use crate::present::escape::escape_bytes;
use crate::present::output::Output;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Anonymous,
    Heap,
    Stack,
    File,
    Shmem,
    Hugetlb,
    Vdso,
}

/// In the enum's order, so `kind as usize` indexes it.
pub const KINDS: [Kind; 7] = [
    Kind::Anonymous,
    Kind::Heap,
    Kind::Stack,
    Kind::File,
    Kind::Shmem,
    Kind::Hugetlb,
    Kind::Vdso,
];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Anonymous => "anonymous",
            Kind::Heap => "heap",
            Kind::Stack => "stack",
            Kind::File => "file",
            Kind::Shmem => "shmem",
            Kind::Hugetlb => "hugetlb",
            Kind::Vdso => "vdso",
        }
    }
}

/// Shmem objects on the kernel's internal mount, which no mountinfo lists:
/// SysV segments, memfds, shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS
/// is a deleted /dev/zero). /dev/shm/ stands in for its tmpfs mount when
/// mountinfo can't be read.
const SHMEM_PREFIXES: [&[u8]; 4] = [b"/SYSV", b"/memfd:", b"/dev/zero (deleted)", b"/dev/shm/"];

pub fn classify(map: &Mapping, tmpfs: &HashSet<(u32, u32)>) -> Kind {
    let name = map.name.as_slice();
    // First, whatever the name: a hugetlbfs file, MAP_HUGETLB, a hugetlb memfd or SysV segment.
    if map.vm_flags.iter().any(|flag| flag == "ht") || map.sizes[Field::Hugetlb] > 0 {
        return Kind::Hugetlb;
    }
    if name.is_empty() || name.starts_with(b"[anon:") {
        return Kind::Anonymous; // [anon:NAME]: named with PR_SET_VMA_ANON_NAME
    }
    if name == b"[heap]" {
        return Kind::Heap;
    }
    if name == b"[stack]" || name.starts_with(b"[stack:") {
        return Kind::Stack; // [stack:TID]: thread stacks before Linux 4.5
    }
    if name.starts_with(b"[anon_shmem:") {
        return Kind::Shmem;
    }
    if name.starts_with(b"[") {
        return Kind::Vdso; // the kernel's own: [vdso], [vvar], [vvar_vclock], [vsyscall], [uprobes]
    }
    if tmpfs.contains(&map.device) || SHMEM_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return Kind::Shmem;
    }
    Kind::File
}

/// A mapping and its kind.
pub struct Row {
    pub map: Mapping,
    pub kind: Kind,
}

impl SortBy {
    /// What a mapping sorts by, largest first; None for address and name.
    fn size(self, sizes: &Sizes) -> Option<u64> {
        let field = match self {
            SortBy::Address | SortBy::Name => return None,
            SortBy::Dirty => return Some(sizes[Field::SharedDirty] + sizes[Field::PrivateDirty]),
            SortBy::Size => Field::Size,
            SortBy::Rss => Field::Rss,
            SortBy::Pss => Field::Pss,
            SortBy::SharedClean => Field::SharedClean,
            SortBy::SharedDirty => Field::SharedDirty,
            SortBy::PrivateClean => Field::PrivateClean,
            SortBy::PrivateDirty => Field::PrivateDirty,
            SortBy::Swap => Field::Swap,
            SortBy::AnonHugePages => Field::AnonHugePages,
            SortBy::Hugetlb => Field::Hugetlb,
        };
        Some(sizes[field])
    }
}

/// Ties go by address, so the order is stable from run to run.
pub fn sort_rows(rows: &mut [Row], by: SortBy) {
    rows.sort_by(|a, b| {
        let first = match by {
            SortBy::Name => a.map.name.cmp(&b.map.name),
            _ => by.size(&b.map.sizes).cmp(&by.size(&a.map.sizes)),
        };
        first.then(a.map.start.cmp(&b.map.start))
    });
}

/// A mapping as printed; the JSON fields are documented in the README (sizes in bytes).
#[derive(Serialize)]
struct MappingRow<'a> {
    record: &'static str,
    pid: u32,
    start: u64,
    end: u64,
    perms: &'a str,
    offset: u64,
    device: String,
    inode: u64,
    /// Escaped; null for an anonymous mapping.
    name: Option<String>,
    kind: &'static str,
    #[serde(flatten)]
    sizes: &'a Sizes,
    vm_flags: &'a [String],
}

impl<'a> MappingRow<'a> {
    fn new(pid: u32, row: &'a Row) -> MappingRow<'a> {
        let map = &row.map;
        MappingRow {
            record: "mapping",
            pid,
            start: map.start,
            end: map.end,
            perms: &map.perms,
            offset: map.offset,
            device: device_text(map.device),
            inode: map.inode,
            name: (!map.name.is_empty()).then(|| escape_bytes(&map.name)),
            kind: row.kind.name(),
            sizes: &map.sizes,
            vm_flags: &map.vm_flags,
        }
    }

    fn cells(&self) -> Vec<String> {
        let mut cells = vec![
            format!("{:08x}-{:08x}", self.start, self.end),
            self.perms.to_string(),
            format!("{:08x}", self.offset),
            self.device.clone(),
            self.inode.to_string(),
        ];
        cells.extend(self.sizes.in_columns().map(kib));
        cells.push(self.kind.to_string());
        cells.push(self.vm_flags.join(" "));
        cells.push(self.name.clone().unwrap_or_default());
        cells
    }
}

/// The totals of one kind of mapping, or of all (`kind` "all", the table's "total").
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct TotalRow {
    record: &'static str,
    pid: u32,
    kind: &'static str,
    mappings: u64,
    #[serde(flatten)]
    sizes: Sizes,
}

impl TotalRow {
    fn add(&mut self, sizes: &Sizes) {
        self.mappings += 1;
        self.sizes.add(sizes);
    }

    fn cells(&self) -> Vec<String> {
        let name = if self.kind == "all" {
            "total"
        } else {
            self.kind
        };
        let mut cells = vec![name.to_string(), self.mappings.to_string()];
        cells.extend(self.sizes.in_columns().map(kib));
        cells
    }
}

/// Totals by kind (in KINDS' order), then of all mappings.
pub fn totals(pid: u32, rows: &[Row]) -> Vec<TotalRow> {
    let total = |kind| TotalRow {
        record: "total",
        pid,
        kind,
        ..TotalRow::default()
    };
    let mut totals: Vec<TotalRow> = KINDS.iter().map(|kind| total(kind.name())).collect();
    let mut all = total("all");
    for row in rows {
        totals[row.kind as usize].add(&row.map.sizes);
        all.add(&row.map.sizes);
    }
    totals.push(all);
    totals
}

/// The mappings (unless `summary`), then the totals.
pub fn print(out: &mut Output, pid: u32, rows: &[Row], summary: bool) -> Result<()> {
    out.heading(&format!("{pid}:   {}", process_title(pid)))?;
    if !summary {
        let mut columns = vec!["Address", "Perm", "Offset", "Device", ">Inode"];
        columns.extend(Field::ALL.map(Field::header));
        columns.extend(["Kind", "VmFlags", "Mapping"]);
        let mappings: Vec<MappingRow> = rows.iter().map(|row| MappingRow::new(pid, row)).collect();
        out.table(&columns, &mappings, MappingRow::cells)?;
        out.heading("")?;
    }
    let mut columns = vec!["Kind", ">Mappings"];
    columns.extend(Field::ALL.map(Field::header));
    out.table(&columns, &totals(pid, rows), TotalRow::cells)
}

fn device_text((major, minor): (u32, u32)) -> String {
    format!("{major:02x}:{minor:02x}")
}

/// smaps counts in whole KiB, so nothing is lost.
fn kib(bytes: u64) -> String {
    (bytes / 1024).to_string()
}

/// What pmap prints after the pid: the command line, else `[comm]` (a
/// kernel thread has no command line), escaped.
fn process_title(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let words: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|w| !w.is_empty())
        .map(escape_bytes)
        .collect();
    if !words.is_empty() {
        return words.join(" ");
    }
    match std::fs::read(format!("/proc/{pid}/comm")) {
        Ok(comm) => format!("[{}]", escape_bytes(comm.trim_ascii_end())),
        Err(_) => "?".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::smaps::parse_smaps;
    use super::super::smaps::tests::{MOUNTINFO, SAMPLE};
    use super::super::smaps::tmpfs_devices;
    use super::*;
    use serde_json::{json, Value};

    fn rows() -> Vec<Row> {
        let tmpfs = tmpfs_devices(MOUNTINFO);
        parse_smaps(SAMPLE)
            .unwrap()
            .into_iter()
            .map(|map| Row {
                kind: classify(&map, &tmpfs),
                map,
            })
            .collect()
    }

    fn mapping_json(pid: u32, row: &Row) -> Value {
        serde_json::to_value(MappingRow::new(pid, row)).unwrap()
    }

    #[test]
    fn hostile_names_are_escaped() {
        let rows = rows();
        let row = &rows[6];
        let cells = MappingRow::new(7, row).cells();
        assert_eq!(cells.last().unwrap(), "/tmp/\\x1b[31mbad\\xffname  ");
        assert_eq!(mapping_json(7, row)["name"], "/tmp/\\x1b[31mbad\\xffname  ");
    }

    #[test]
    fn kinds() {
        let rows = rows();
        let kinds: Vec<(&str, Kind)> = rows
            .iter()
            .map(|row| (row.map.name.as_slice(), row.kind))
            .map(|(name, kind)| (std::str::from_utf8(name).unwrap_or("?"), kind))
            .collect();
        use Kind::*;
        assert_eq!(
            kinds,
            [
                ("/usr/bin/head", File),
                ("[heap]", Heap),
                ("", Anonymous),
                ("/memfd:pmapped (deleted)", Shmem),
                ("/dev/shm/x", Shmem),
                ("/mnt/huge/pages", Hugetlb),
                ("?", File),
                ("[anon:arena]", Anonymous),
                ("/SYSV0000abcd (deleted)", Shmem),
                ("[stack]", Stack),
                ("[vvar]", Vdso),
                ("[vdso]", Vdso),
                ("[vsyscall]", Vdso),
            ]
        );
        // a tmpfs file outside /dev/shm is told by its mount's device
        let map = Mapping {
            name: b"/run/user/0/x".to_vec(),
            device: (0, 0x2a),
            ..Mapping::default()
        };
        assert_eq!(classify(&map, &tmpfs_devices(MOUNTINFO)), Shmem);
        assert_eq!(classify(&map, &HashSet::new()), File);
        let map = Mapping {
            name: b"/dev/zero (deleted)".to_vec(),
            ..Mapping::default()
        };
        assert_eq!(classify(&map, &HashSet::new()), Shmem);
    }

    #[test]
    fn totals_are_the_sums_of_the_rows() {
        let rows = rows();
        let totals = totals(7, &rows);
        let (by_kind, all) = totals.split_at(KINDS.len());
        let all = &all[0];
        assert_eq!(all.mappings, 13);
        for field in Field::ALL {
            let sum: u64 = rows.iter().map(|row| row.map.sizes[field]).sum();
            assert_eq!(all.sizes[field], sum);
            let kinds: u64 = by_kind.iter().map(|total| total.sizes[field]).sum();
            assert_eq!(kinds, sum);
        }
        let anonymous = &by_kind[Kind::Anonymous as usize];
        assert_eq!(anonymous.mappings, 2);
        assert_eq!(anonymous.sizes[Field::Rss], (16 << 20) + 4096);
        assert_eq!(by_kind[Kind::Vdso as usize].mappings, 3);
        assert_eq!(
            by_kind[Kind::Hugetlb as usize].sizes[Field::Hugetlb],
            2 << 20
        );
        let json = serde_json::to_value(all).unwrap();
        assert_eq!(json["record"], "total");
        assert_eq!(json["kind"], "all");
        assert_eq!(json["mappings"], 13);
        assert_eq!(json["rss"], all.sizes[Field::Rss]);
        assert_eq!(all.cells()[0], "total");
    }

    #[test]
    fn sorting() {
        let names = |rows: &[Row]| -> Vec<Vec<u8>> {
            rows.iter().map(|row| row.map.name.clone()).collect()
        };
        let mut rows = rows();
        sort_rows(&mut rows, SortBy::Rss);
        assert!(rows[0].map.name.is_empty());
        let rss: Vec<u64> = rows.iter().map(|row| row.map.sizes[Field::Rss]).collect();
        assert!(rss.windows(2).all(|w| w[0] >= w[1]), "{rss:?}");
        // equal sizes keep address order
        for pair in rows.windows(2) {
            if pair[0].map.sizes[Field::Rss] == pair[1].map.sizes[Field::Rss] {
                assert!(pair[0].map.start < pair[1].map.start);
            }
        }
        sort_rows(&mut rows, SortBy::Dirty);
        assert_eq!(
            names(&rows)[..2],
            [b"".to_vec(), b"/memfd:pmapped (deleted)".to_vec()]
        );
        sort_rows(&mut rows, SortBy::Name);
        assert_eq!(names(&rows)[0], b"");
        assert_eq!(names(&rows)[12], b"[vvar]");
        sort_rows(&mut rows, SortBy::Address);
        let starts: Vec<u64> = rows.iter().map(|row| row.map.start).collect();
        assert!(starts.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn table_and_json_rows() {
        let rows = rows();
        let heap = &rows[1];
        assert_eq!(
            MappingRow::new(42, heap).cells(),
            [
                "55f6bc000000-55f6bc021000",
                "rw-p",
                "00000000",
                "00:00",
                "0",
                "132",
                "12",
                "12",
                "0",
                "0",
                "0",
                "12",
                "0",
                "0",
                "0",
                "heap",
                "rd wr mr mw me ac",
                "[heap]",
            ]
        );
        let json = mapping_json(42, &rows[2]);
        assert_eq!(json["record"], "mapping");
        assert_eq!(json["pid"], 42);
        assert_eq!(json["name"], Value::Null);
        assert_eq!(json["kind"], "anonymous");
        assert_eq!(json["size"], 67108864);
        assert_eq!(json["rss"], 16777216);
        assert_eq!(json["device"], "00:00");
        assert_eq!(
            json["vm_flags"],
            json!(["rd", "wr", "mr", "mw", "me", "ac", "nh"])
        );
    }
}
