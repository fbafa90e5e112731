//! pmap: a process's mappings from /proc/PID/smaps (range, perms, offset,
//! device, inode, name, sizes, VmFlags) with totals by kind, sorted by a
//! chosen column. User space only: nothing is loaded into the kernel.
//!
//! smaps is parsed here, not with the procfs crate: procfs 0.18 reads it as
//! UTF-8 lines, so one mapped file whose name is not UTF-8 fails the whole
//! read (`Incomplete`), a file named `/SYSV` plus fewer than 8 characters
//! panics it, and names lose their trailing spaces. Names here stay bytes
//! until they are escaped for printing.

use std::collections::HashSet;
use std::io::ErrorKind;

use anyhow::{anyhow, bail, Context, Result};
use clap::{CommandFactory, Parser, ValueEnum};
use serde_json::{json, Map, Value};

use crate::cli::CommonArgs;
use crate::output::{escape_bytes, Output, Table};
use crate::target::process_exists;

pub const ABOUT: &str =
    "Show a process's mappings from /proc/PID/smaps, with totals by kind (no BPF)";

#[derive(Parser, Debug)]
#[command(about = ABOUT, after_help = "\
Sizes are in KiB, as in smaps and pmap -X; JSON gives bytes.
Kinds: anonymous, heap, stack, file, shmem (tmpfs files, POSIX and SysV shared
memory, memfds, shared anonymous memory), hugetlb, vdso ([vdso], [vvar], [vsyscall]...).

Examples:
  pmap -p 1234               # every mapping by address, then the totals by kind
  pmap -p 1234 --sort rss    # the largest resident mappings first
  pmap -p 1234 --summary     # the totals alone
  pmap -p 1234 --json        # one object per mapping, then one per kind and one for all")]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Order the mappings by this column: sizes largest first, address and name ascending
    #[arg(short = 's', long, value_enum, value_name = "COLUMN", default_value_t = SortBy::Address)]
    pub sort: SortBy,

    /// Print only the totals by kind
    #[arg(long)]
    pub summary: bool,
}

/// The shared options, less those that mean nothing to a one-shot read of one
/// process (hidden, and refused when given).
pub fn command() -> clap::Command {
    Args::command()
        .mut_arg("pids", |arg| {
            arg.required(true)
                .help("The process whose mappings to show")
        })
        .mut_arg("comm", |arg| arg.hide(true))
        .mut_arg("duration", |arg| arg.hide(true))
        .mut_arg("timestamp", |arg| arg.hide(true))
        .mut_arg("verbose", |arg| arg.hide(true))
        .mut_arg("command", |arg| arg.hide(true))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SortBy {
    Address,
    Size,
    Rss,
    Pss,
    SharedClean,
    SharedDirty,
    PrivateClean,
    PrivateDirty,
    /// Shared_Dirty + Private_Dirty
    Dirty,
    Swap,
    AnonHugePages,
    Hugetlb,
    Name,
}

pub fn run(args: Args) -> Result<i32> {
    let pid = match the_pid(&args.common) {
        Ok(pid) => pid,
        Err(message) => {
            let err = clap::Error::raw(
                clap::error::ErrorKind::ArgumentConflict,
                format!("{message}\n"),
            );
            let _ = err.print();
            return Ok(err.exit_code());
        }
    };
    let smaps = read_smaps(pid)?;
    let maps = parse_smaps(&smaps).with_context(|| format!("parsing /proc/{pid}/smaps"))?;
    // Without the mount table, tmpfs files are still told by name (/dev/shm/).
    let tmpfs = std::fs::read(format!("/proc/{pid}/mountinfo"))
        .map(|text| tmpfs_devices(&text))
        .unwrap_or_default();
    let mut rows: Vec<Row> = maps
        .into_iter()
        .map(|map| Row {
            kind: classify(&map, &tmpfs),
            map,
        })
        .collect();
    if rows.is_empty() {
        eprintln!(
            "pmap: PID {pid} has no user-space mappings (a kernel thread, or a process that has exited)"
        );
    }
    sort_rows(&mut rows, args.sort);

    let mut out = Output::new(args.common.json);
    if out.json {
        if !args.summary {
            for row in &rows {
                out.json_line(&mapping_json(pid, row))?;
            }
        }
        let (by_kind, all) = totals(&rows);
        for (kind, total) in KINDS.iter().zip(&by_kind) {
            out.json_line(&total_json(pid, kind.name(), total))?;
        }
        out.json_line(&total_json(pid, "all", &all))?;
    } else {
        out.line(&format!("{pid}:   {}", process_title(pid)))?;
        if !args.summary {
            mapping_table(&rows).print(&mut out)?;
            out.line("")?;
        }
        totals_table(&rows).print(&mut out)?;
    }
    out.flush()?;
    Ok(0)
}

/// The one pid pmap reads, or what is wrong with the options.
fn the_pid(common: &CommonArgs) -> Result<u32, &'static str> {
    if !common.command.is_empty() {
        return Err("pmap reads a running process: give -p PID, not -- COMMAND");
    }
    if common.comm.is_some() {
        return Err("pmap reads one process: give -p PID, not -n/--name");
    }
    if common.duration.is_some() || common.timestamp {
        return Err("pmap reads the mappings once: -d/--duration and -T/--timestamp don't apply");
    }
    match common.pids[..] {
        [pid] => Ok(pid),
        _ => Err("pmap shows one process: give exactly one -p PID"),
    }
}

fn read_smaps(pid: u32) -> Result<Vec<u8>> {
    let path = format!("/proc/{pid}/smaps");
    match std::fs::read(&path) {
        Ok(text) => Ok(text),
        Err(err) if err.kind() == ErrorKind::NotFound && process_exists(pid) => {
            bail!("{path} does not exist: this kernel was built without CONFIG_PROC_PAGE_MONITOR")
        }
        // ESRCH: it exited while being read
        Err(err)
            if err.kind() == ErrorKind::NotFound || err.raw_os_error() == Some(libc::ESRCH) =>
        {
            bail!("no process with PID {pid}")
        }
        Err(err) if err.kind() == ErrorKind::PermissionDenied => bail!(
            "can't read {path}: permission denied (PID {pid} belongs to another user or is not \
             dumpable; run as root or as its owner)"
        ),
        Err(err) => Err(err).with_context(|| format!("reading {path}")),
    }
}

/// The smaps fields pmap shows, in column order. Hugetlb sums the shared
/// and private huge pages, as pmap -X does.
struct Field {
    /// Table header; `>` right-aligns it (output::Table)
    header: &'static str,
    json: &'static str,
    keys: &'static [&'static str],
}

const FIELDS: [Field; 10] = [
    Field {
        header: ">Size",
        json: "size",
        keys: &["Size"],
    },
    Field {
        header: ">Rss",
        json: "rss",
        keys: &["Rss"],
    },
    Field {
        header: ">Pss",
        json: "pss",
        keys: &["Pss"],
    },
    Field {
        header: ">Shared_Clean",
        json: "shared_clean",
        keys: &["Shared_Clean"],
    },
    Field {
        header: ">Shared_Dirty",
        json: "shared_dirty",
        keys: &["Shared_Dirty"],
    },
    Field {
        header: ">Private_Clean",
        json: "private_clean",
        keys: &["Private_Clean"],
    },
    Field {
        header: ">Private_Dirty",
        json: "private_dirty",
        keys: &["Private_Dirty"],
    },
    Field {
        header: ">Swap",
        json: "swap",
        keys: &["Swap"],
    },
    Field {
        header: ">AnonHugePages",
        json: "anon_huge_pages",
        keys: &["AnonHugePages"],
    },
    Field {
        header: ">Hugetlb",
        json: "hugetlb",
        keys: &["Shared_Hugetlb", "Private_Hugetlb"],
    },
];

const SIZE: usize = 0;
const RSS: usize = 1;
const PSS: usize = 2;
const SHARED_CLEAN: usize = 3;
const SHARED_DIRTY: usize = 4;
const PRIVATE_CLEAN: usize = 5;
const PRIVATE_DIRTY: usize = 6;
const SWAP: usize = 7;
const ANON_HUGE_PAGES: usize = 8;
const HUGETLB: usize = 9;

/// Bytes, indexed as FIELDS.
type Sizes = [u64; FIELDS.len()];

/// One mapping as smaps shows it.
#[derive(Debug, Clone, PartialEq, Default)]
struct Mapping {
    start: u64,
    end: u64,
    perms: String,
    offset: u64,
    device: (u32, u32),
    inode: u64,
    /// As smaps prints it (the kernel writes a newline as `\012`): raw bytes,
    /// maybe another user's file name, escaped only when printed.
    name: Vec<u8>,
    sizes: Sizes,
    vm_flags: Vec<String>,
}

fn parse_smaps(text: &[u8]) -> Result<Vec<Mapping>> {
    let mut maps: Vec<Mapping> = Vec::new();
    for (index, line) in text.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let parsed = match field(line) {
            Some((key, value)) => match maps.last_mut() {
                Some(map) => add_field(map, key, value),
                None => Err(anyhow!("a field before the first mapping")),
            },
            None => parse_header(line).map(|map| maps.push(map)),
        };
        parsed.with_context(|| format!("line {} ({})", index + 1, escape_bytes(line)))?;
    }
    Ok(maps)
}

/// `Key: value` lines; a mapping's first line starts with its address range.
fn field(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let key = line[..end].strip_suffix(b":")?;
    (!key.is_empty()).then_some((key, &line[end..]))
}

fn words(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes.split(|&b| b == b' ').filter(|w| !w.is_empty())
}

fn add_field(map: &mut Mapping, key: &[u8], value: &[u8]) -> Result<()> {
    if key == b"VmFlags" {
        map.vm_flags = words(value).map(escape_bytes).collect();
        return Ok(());
    }
    let Some(index) = FIELDS
        .iter()
        .position(|f| f.keys.iter().any(|k| k.as_bytes() == key))
    else {
        return Ok(()); // a field pmap doesn't show
    };
    let mut value = words(value);
    let (Some(number), Some(b"kB"), None) = (value.next(), value.next(), value.next()) else {
        bail!("not a size in kB");
    };
    let bytes = number_in(number, 10)?
        .checked_mul(1024)
        .context("size out of range")?;
    map.sizes[index] = map.sizes[index]
        .checked_add(bytes)
        .context("size out of range")?;
    Ok(())
}

fn number_in(bytes: &[u8], radix: u32) -> Result<u64> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| u64::from_str_radix(s, radix).ok())
        .with_context(|| format!("'{}' is not a number", escape_bytes(bytes)))
}

fn pair(bytes: &[u8], separator: u8, radix: u32) -> Result<(u64, u64)> {
    let at = bytes
        .iter()
        .position(|&b| b == separator)
        .with_context(|| format!("no '{}' in '{}'", separator as char, escape_bytes(bytes)))?;
    Ok((
        number_in(&bytes[..at], radix)?,
        number_in(&bytes[at + 1..], radix)?,
    ))
}

fn parse_device(bytes: &[u8]) -> Result<(u32, u32)> {
    let (major, minor) = pair(bytes, b':', 16)?;
    Ok((
        u32::try_from(major).context("device major out of range")?,
        u32::try_from(minor).context("device minor out of range")?,
    ))
}

/// `start-end perms offset major:minor inode   name`: the name is padded to a
/// column with spaces and runs to the end of the line (trailing spaces are
/// part of it); an anonymous mapping has none.
fn parse_header(line: &[u8]) -> Result<Mapping> {
    let mut parts = line.splitn(6, |&b| b == b' ');
    let mut next = |what: &str| {
        parts
            .next()
            .filter(|part| !part.is_empty())
            .with_context(|| format!("no {what}"))
    };
    let range = next("address range")?;
    let perms = next("permissions")?;
    let offset = next("offset")?;
    let device = next("device")?;
    let inode = next("inode")?;
    let name = parts.next().unwrap_or_default();
    let padding = name.iter().take_while(|&&b| b == b' ').count();
    let (start, end) = pair(range, b'-', 16)?;
    Ok(Mapping {
        start,
        end,
        perms: escape_bytes(perms),
        offset: number_in(offset, 16)?,
        device: parse_device(device)?,
        inode: number_in(inode, 10)?,
        name: name[padding..].to_vec(),
        ..Mapping::default()
    })
}

/// The devices (major, minor) of the tmpfs mounts in a /proc/PID/mountinfo:
/// `id parent major:minor root mountpoint options [optional...] - fstype source superoptions`
/// (spaces inside paths are written `\040`).
fn tmpfs_devices(mountinfo: &[u8]) -> HashSet<(u32, u32)> {
    mountinfo
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
            let separator = fields.iter().position(|f| *f == b"-")?;
            if *fields.get(separator + 1)? != b"tmpfs" {
                return None;
            }
            parse_device(fields.get(2)?).ok()
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Anonymous,
    Heap,
    Stack,
    File,
    Shmem,
    Hugetlb,
    Vdso,
}

/// In the enum's order, so `kind as usize` indexes it.
const KINDS: [Kind; 7] = [
    Kind::Anonymous,
    Kind::Heap,
    Kind::Stack,
    Kind::File,
    Kind::Shmem,
    Kind::Hugetlb,
    Kind::Vdso,
];

impl Kind {
    fn name(self) -> &'static str {
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

fn classify(map: &Mapping, tmpfs: &HashSet<(u32, u32)>) -> Kind {
    let name = map.name.as_slice();
    // First, whatever the name: a hugetlbfs file, MAP_HUGETLB, a hugetlb memfd or SysV segment.
    if map.vm_flags.iter().any(|flag| flag == "ht") || map.sizes[HUGETLB] > 0 {
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

struct Row {
    map: Mapping,
    kind: Kind,
}

impl SortBy {
    /// What a mapping sorts by, largest first; None for address and name.
    fn size(self, sizes: &Sizes) -> Option<u64> {
        let index = match self {
            SortBy::Address | SortBy::Name => return None,
            SortBy::Dirty => return Some(sizes[SHARED_DIRTY] + sizes[PRIVATE_DIRTY]),
            SortBy::Size => SIZE,
            SortBy::Rss => RSS,
            SortBy::Pss => PSS,
            SortBy::SharedClean => SHARED_CLEAN,
            SortBy::SharedDirty => SHARED_DIRTY,
            SortBy::PrivateClean => PRIVATE_CLEAN,
            SortBy::PrivateDirty => PRIVATE_DIRTY,
            SortBy::Swap => SWAP,
            SortBy::AnonHugePages => ANON_HUGE_PAGES,
            SortBy::Hugetlb => HUGETLB,
        };
        Some(sizes[index])
    }
}

/// Ties go by address, so the order is stable from run to run.
fn sort_rows(rows: &mut [Row], by: SortBy) {
    rows.sort_by(|a, b| {
        let first = match by {
            SortBy::Name => a.map.name.cmp(&b.map.name),
            _ => by.size(&b.map.sizes).cmp(&by.size(&a.map.sizes)),
        };
        first.then(a.map.start.cmp(&b.map.start))
    });
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Total {
    mappings: u64,
    sizes: Sizes,
}

impl Total {
    fn add(&mut self, sizes: &Sizes) {
        self.mappings += 1;
        for (total, size) in self.sizes.iter_mut().zip(sizes) {
            *total += size;
        }
    }
}

/// Totals by kind (indexed as KINDS) and of all mappings.
fn totals(rows: &[Row]) -> ([Total; KINDS.len()], Total) {
    let mut by_kind = [Total::default(); KINDS.len()];
    let mut all = Total::default();
    for row in rows {
        by_kind[row.kind as usize].add(&row.map.sizes);
        all.add(&row.map.sizes);
    }
    (by_kind, all)
}

fn mapping_json(pid: u32, row: &Row) -> Value {
    let map = &row.map;
    let mut fields = Map::new();
    fields.insert("record".into(), json!("mapping"));
    fields.insert("pid".into(), json!(pid));
    fields.insert("start".into(), json!(map.start));
    fields.insert("end".into(), json!(map.end));
    fields.insert("perms".into(), json!(map.perms));
    fields.insert("offset".into(), json!(map.offset));
    fields.insert("device".into(), json!(device_text(map.device)));
    fields.insert("inode".into(), json!(map.inode));
    let name = (!map.name.is_empty()).then(|| escape_bytes(&map.name));
    fields.insert("name".into(), json!(name));
    fields.insert("kind".into(), json!(row.kind.name()));
    for (field, size) in FIELDS.iter().zip(&map.sizes) {
        fields.insert(field.json.into(), json!(size));
    }
    fields.insert("vm_flags".into(), json!(map.vm_flags));
    Value::Object(fields)
}

fn total_json(pid: u32, kind: &str, total: &Total) -> Value {
    let mut fields = Map::new();
    fields.insert("record".into(), json!("total"));
    fields.insert("pid".into(), json!(pid));
    fields.insert("kind".into(), json!(kind));
    fields.insert("mappings".into(), json!(total.mappings));
    for (field, size) in FIELDS.iter().zip(&total.sizes) {
        fields.insert(field.json.into(), json!(size));
    }
    Value::Object(fields)
}

fn device_text((major, minor): (u32, u32)) -> String {
    format!("{major:02x}:{minor:02x}")
}

/// smaps counts in whole KiB, so nothing is lost.
fn kib(bytes: u64) -> String {
    (bytes / 1024).to_string()
}

fn mapping_cells(row: &Row) -> Vec<String> {
    let map = &row.map;
    let mut cells = vec![
        format!("{:08x}-{:08x}", map.start, map.end),
        map.perms.clone(),
        format!("{:08x}", map.offset),
        device_text(map.device),
        map.inode.to_string(),
    ];
    cells.extend(map.sizes.iter().map(|&size| kib(size)));
    cells.push(row.kind.name().to_string());
    cells.push(map.vm_flags.join(" "));
    cells.push(escape_bytes(&map.name));
    cells
}

fn mapping_table(rows: &[Row]) -> Table {
    let mut columns = vec!["Address", "Perm", "Offset", "Device", ">Inode"];
    columns.extend(FIELDS.iter().map(|field| field.header));
    columns.extend(["Kind", "VmFlags", "Mapping"]);
    let mut table = Table::new(&columns);
    for row in rows {
        table.row(mapping_cells(row));
    }
    table
}

fn totals_table(rows: &[Row]) -> Table {
    let mut columns = vec!["Kind", ">Mappings"];
    columns.extend(FIELDS.iter().map(|field| field.header));
    let mut table = Table::new(&columns);
    let (by_kind, all) = totals(rows);
    let lines = KINDS
        .iter()
        .map(|kind| kind.name())
        .zip(&by_kind)
        .chain([("total", &all)]);
    for (name, total) in lines {
        let mut cells = vec![name.to_string(), total.mappings.to_string()];
        cells.extend(total.sizes.iter().map(|&size| kib(size)));
        table.row(cells);
    }
    table
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
    use super::*;

    /// Abridged from real smaps (each mapping keeps the fields pmap reads),
    /// plus hostile and unusual names.
    const SAMPLE: &[u8] = b"\
55f6bba88000-55f6bba8a000 r--p 00000000 fe:00 247282                     /usr/bin/head
Size:                  8 kB
KernelPageSize:        4 kB
Rss:                   8 kB
Pss:                   4 kB
Shared_Clean:          8 kB
Shared_Dirty:          0 kB
Private_Clean:         0 kB
Private_Dirty:         0 kB
Swap:                  0 kB
AnonHugePages:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
THPeligible:           0
VmFlags: rd mr mw me 
55f6bc000000-55f6bc021000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
Rss:                  12 kB
Pss:                  12 kB
Private_Dirty:        12 kB
VmFlags: rd wr mr mw me ac 
7f0000000000-7f0004000000 rw-p 00000000 00:00 0 
Size:              65536 kB
Rss:               16384 kB
Pss:               16384 kB
Private_Dirty:     16384 kB
Swap:                 20 kB
VmFlags: rd wr mr mw me ac nh 
7f0004000000-7f0004100000 rw-s 00000000 00:01 1042                       /memfd:pmapped (deleted)
Size:               1024 kB
Rss:                1024 kB
Pss:                 512 kB
Shared_Dirty:       1024 kB
VmFlags: rd wr sh mr mw me ms 
7f0004100000-7f0004102000 rw-s 00000000 00:17 77                         /dev/shm/x
Size:                  8 kB
Rss:                   4 kB
Pss:                   4 kB
Private_Clean:         4 kB
VmFlags: rd wr sh mr mw me ms 
7f0004200000-7f0004400000 rw-s 00000000 00:0f 5                          /mnt/huge/pages
Size:               2048 kB
Rss:                   0 kB
Shared_Hugetlb:     2048 kB
Private_Hugetlb:       0 kB
VmFlags: rd wr sh mr mw me ms de ht 
7f0004400000-7f0004410000 r--s 00000000 fe:00 99                         /tmp/\x1b[31mbad\xffname  
Size:                 64 kB
Rss:                   4 kB
Pss:                   4 kB
Private_Clean:         4 kB
VmFlags: rd sh mr mw me ms 
7f0004410000-7f0004411000 rw-p 00000000 00:00 0                          [anon:arena]
Size:                  4 kB
Rss:                   4 kB
Private_Dirty:         4 kB
VmFlags: rd wr mr mw me ac 
7f0004411000-7f0004412000 r--s 00000000 00:01 2                          /SYSV0000abcd (deleted)
Size:                  4 kB
VmFlags: rd sh mr me ms 
7ffc1c000000-7ffc1c021000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  16 kB
Pss:                  16 kB
Private_Dirty:        16 kB
AnonHugePages:         0 kB
VmFlags: rd wr mr mw me gd ac 
7ffc1c1f0000-7ffc1c1f4000 r--p 00000000 00:00 0                          [vvar]
Size:                 16 kB
VmFlags: rd mr pf io de dd 
7ffc1c1f4000-7ffc1c1f6000 r-xp 00000000 00:00 0                          [vdso]
Size:                  8 kB
Rss:                   4 kB
Pss:                   0 kB
Shared_Clean:          4 kB
VmFlags: rd ex mr mw me de sd 
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
Size:                  4 kB
VmFlags: ex 
";

    const MOUNTINFO: &[u8] = b"\
22 27 0:21 / /proc rw,relatime - proc proc rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12334492k,mode=755
25 24 0:17 / /dev/shm rw,relatime shared:3 - tmpfs tmpfs rw,size=24684092k
26 27 0:2a / /my\\040tmp rw - tmpfs none rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
";

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

    #[test]
    fn parses_every_mapping_and_its_sizes() {
        let maps = parse_smaps(SAMPLE).unwrap();
        assert_eq!(maps.len(), 13);
        let head = &maps[0];
        assert_eq!((head.start, head.end), (0x55f6bba88000, 0x55f6bba8a000));
        assert_eq!(head.perms, "r--p");
        assert_eq!(head.device, (0xfe, 0));
        assert_eq!(head.inode, 247282);
        assert_eq!(head.name, b"/usr/bin/head");
        assert_eq!(head.sizes[SIZE], 8192);
        assert_eq!(head.sizes[PSS], 4096);
        assert_eq!(head.vm_flags, ["rd", "mr", "mw", "me"]);

        let anon = &maps[2];
        assert!(anon.name.is_empty());
        assert_eq!(anon.sizes[SIZE], 64 << 20);
        assert_eq!(anon.sizes[RSS], 16 << 20);
        assert_eq!(anon.sizes[SWAP], 20 << 10);
        // the shared and private huge pages add up
        assert_eq!(maps[5].sizes[HUGETLB], 2 << 20);
        assert_eq!(maps[12].start, 0xffffffffff600000);
    }

    #[test]
    fn names_stay_bytes_with_their_spaces() {
        let maps = parse_smaps(SAMPLE).unwrap();
        assert_eq!(maps[6].name, b"/tmp/\x1b[31mbad\xffname  ");
        assert_eq!(maps[6].offset, 0);
        let row = Row {
            map: maps[6].clone(),
            kind: Kind::File,
        };
        let cells = mapping_cells(&row);
        assert_eq!(cells.last().unwrap(), "/tmp/\\x1b[31mbad\\xffname  ");
        assert_eq!(
            mapping_json(7, &row)["name"],
            "/tmp/\\x1b[31mbad\\xffname  "
        );
    }

    #[test]
    fn malformed_smaps_is_an_error_with_its_line() {
        let err = parse_smaps(b"Rss: 4 kB\n").unwrap_err();
        assert!(format!("{err:#}").contains("line 1"), "{err:#}");
        let text = b"00400000-00401000 r--p 00000000 fe:00 1 /bin/x\nRss: many kB\n";
        let err = format!("{:#}", parse_smaps(text).unwrap_err());
        assert!(
            err.contains("line 2") && err.contains("'many' is not a number"),
            "{err}"
        );
        let err = parse_smaps(b"00400000-00401000 r--p 00000000 fe:00 1 /x\nRss: 4 MB\n");
        assert!(err.is_err());
        assert!(parse_smaps(b"00400000 r--p 00000000 fe:00 1\n").is_err());
        // fields pmap doesn't read may hold anything
        let maps = parse_smaps(b"00400000-00401000 r--p 00000000 fe:00 1\nNew: x y\n").unwrap();
        assert_eq!(maps.len(), 1);
        assert!(maps[0].name.is_empty());
        assert!(parse_smaps(b"").unwrap().is_empty());
    }

    #[test]
    fn tmpfs_mounts_by_device() {
        let devices = tmpfs_devices(MOUNTINFO);
        assert_eq!(devices, HashSet::from([(0, 0x17), (0, 0x2a)]));
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
        let (by_kind, all) = totals(&rows);
        assert_eq!(all.mappings, 13);
        for (index, _) in FIELDS.iter().enumerate() {
            let sum: u64 = rows.iter().map(|row| row.map.sizes[index]).sum();
            assert_eq!(all.sizes[index], sum);
            let kinds: u64 = by_kind.iter().map(|total| total.sizes[index]).sum();
            assert_eq!(kinds, sum);
        }
        let anonymous = &by_kind[Kind::Anonymous as usize];
        assert_eq!(anonymous.mappings, 2);
        assert_eq!(anonymous.sizes[RSS], (16 << 20) + 4096);
        assert_eq!(by_kind[Kind::Vdso as usize].mappings, 3);
        assert_eq!(by_kind[Kind::Hugetlb as usize].sizes[HUGETLB], 2 << 20);
        let json = total_json(7, "all", &all);
        assert_eq!(json["record"], "total");
        assert_eq!(json["mappings"], 13);
        assert_eq!(json["rss"], all.sizes[RSS]);
    }

    #[test]
    fn sorting() {
        let names = |rows: &[Row]| -> Vec<Vec<u8>> {
            rows.iter().map(|row| row.map.name.clone()).collect()
        };
        let mut rows = rows();
        sort_rows(&mut rows, SortBy::Rss);
        assert!(rows[0].map.name.is_empty());
        let rss: Vec<u64> = rows.iter().map(|row| row.map.sizes[RSS]).collect();
        assert!(rss.windows(2).all(|w| w[0] >= w[1]), "{rss:?}");
        // equal sizes keep address order
        for pair in rows.windows(2) {
            if pair[0].map.sizes[RSS] == pair[1].map.sizes[RSS] {
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
            mapping_cells(heap),
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

    #[test]
    fn exactly_one_pid() {
        let common = |pids: &[u32]| CommonArgs {
            pids: pids.to_vec(),
            ..CommonArgs::default()
        };
        assert_eq!(the_pid(&common(&[7])), Ok(7));
        assert!(the_pid(&common(&[])).is_err());
        assert!(the_pid(&common(&[7, 8])).is_err());
        let mut with_command = common(&[7]);
        with_command.command = vec!["true".into()];
        assert!(the_pid(&with_command).is_err());
        let mut named = common(&[7]);
        named.comm = Some("x".into());
        assert!(the_pid(&named).is_err());
    }
}
