//! /proc/PID/smaps parsed as bytes. Not with the procfs crate: procfs 0.18
//! reads it as UTF-8 lines, so one mapped file whose name is not UTF-8 fails
//! the whole read (`Incomplete`), a file named `/SYSV` plus fewer than 8
//! characters panics it, and names lose their trailing spaces. Names here
//! stay bytes until they are escaped for printing. Each mapping's first line
//! is a maps line, parsed by analysis::proc_maps.

use std::collections::HashSet;
use std::ops::{Index, IndexMut};

use anyhow::{anyhow, bail, Context, Result};
use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::analysis::proc_maps::{self, number_in, parse_device};
use crate::present::escape::escape_bytes;

/// The smaps sizes pmap shows. Each field's header, JSON name and smaps
/// keys are said once, below; Field::ALL gives the column order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Size,
    Rss,
    Pss,
    SharedClean,
    SharedDirty,
    PrivateClean,
    PrivateDirty,
    Swap,
    AnonHugePages,
    Hugetlb,
}

impl Field {
    /// Every field, in column order.
    pub const ALL: [Field; 10] = [
        Field::Size,
        Field::Rss,
        Field::Pss,
        Field::SharedClean,
        Field::SharedDirty,
        Field::PrivateClean,
        Field::PrivateDirty,
        Field::Swap,
        Field::AnonHugePages,
        Field::Hugetlb,
    ];

    /// The smaps keys whose sizes make the field: Hugetlb sums the shared and
    /// private huge pages, as pmap -X does.
    pub fn smaps_keys(self) -> &'static [&'static str] {
        match self {
            Field::Size => &["Size"],
            Field::Rss => &["Rss"],
            Field::Pss => &["Pss"],
            Field::SharedClean => &["Shared_Clean"],
            Field::SharedDirty => &["Shared_Dirty"],
            Field::PrivateClean => &["Private_Clean"],
            Field::PrivateDirty => &["Private_Dirty"],
            Field::Swap => &["Swap"],
            Field::AnonHugePages => &["AnonHugePages"],
            Field::Hugetlb => &["Shared_Hugetlb", "Private_Hugetlb"],
        }
    }

    /// The table header: right-aligned (output::Table's `>`).
    pub fn header(self) -> &'static str {
        match self {
            Field::Size => ">Size",
            Field::Rss => ">Rss",
            Field::Pss => ">Pss",
            Field::SharedClean => ">Shared_Clean",
            Field::SharedDirty => ">Shared_Dirty",
            Field::PrivateClean => ">Private_Clean",
            Field::PrivateDirty => ">Private_Dirty",
            Field::Swap => ">Swap",
            Field::AnonHugePages => ">AnonHugePages",
            Field::Hugetlb => ">Hugetlb",
        }
    }

    /// The JSON field (bytes).
    pub fn json_name(self) -> &'static str {
        match self {
            Field::Size => "size",
            Field::Rss => "rss",
            Field::Pss => "pss",
            Field::SharedClean => "shared_clean",
            Field::SharedDirty => "shared_dirty",
            Field::PrivateClean => "private_clean",
            Field::PrivateDirty => "private_dirty",
            Field::Swap => "swap",
            Field::AnonHugePages => "anon_huge_pages",
            Field::Hugetlb => "hugetlb",
        }
    }
}

/// Bytes, by Field; serialized as one JSON field each.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sizes([u64; Field::ALL.len()]);

impl Index<Field> for Sizes {
    type Output = u64;

    fn index(&self, field: Field) -> &u64 {
        &self.0[field as usize]
    }
}

impl IndexMut<Field> for Sizes {
    fn index_mut(&mut self, field: Field) -> &mut u64 {
        &mut self.0[field as usize]
    }
}

impl Sizes {
    /// The sizes in column order.
    pub fn in_columns(&self) -> impl Iterator<Item = u64> + '_ {
        Field::ALL.into_iter().map(|field| self[field])
    }

    pub fn add(&mut self, other: &Sizes) {
        for field in Field::ALL {
            self[field] += other[field];
        }
    }
}

impl Serialize for Sizes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(Field::ALL.len()))?;
        for field in Field::ALL {
            map.serialize_entry(field.json_name(), &self[field])?;
        }
        map.end()
    }
}

/// One mapping as smaps shows it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub offset: u64,
    pub device: (u32, u32),
    pub inode: u64,
    /// As smaps prints it (the kernel writes a newline as `\012`): raw bytes,
    /// maybe another user's file name, escaped only when printed.
    pub name: Vec<u8>,
    pub sizes: Sizes,
    pub vm_flags: Vec<String>,
}

pub fn parse_smaps(text: &[u8]) -> Result<Vec<Mapping>> {
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

/// Whether smaps text stops inside a mapping: the kernel ends each mapping's
/// fields with VmFlags (since Linux 3.8), so a text that has VmFlags lines but
/// does not end with one, or ends inside a line, was cut off.
pub fn ends_inside_a_mapping(text: &[u8]) -> bool {
    let Some(body) = text.strip_suffix(b"\n") else {
        return !text.is_empty();
    };
    let mut lines = body.split(|&b| b == b'\n');
    let is_flags = |line: &[u8]| line.starts_with(b"VmFlags:");
    match lines.next_back() {
        Some(last) => !is_flags(last) && lines.any(is_flags),
        None => false,
    }
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
    let Some(field) = Field::ALL
        .into_iter()
        .find(|f| f.smaps_keys().iter().any(|k| k.as_bytes() == key))
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
    map.sizes[field] = map.sizes[field]
        .checked_add(bytes)
        .context("size out of range")?;
    Ok(())
}

/// A mapping's first line: the line of /proc/PID/maps (analysis::proc_maps).
fn parse_header(line: &[u8]) -> Result<Mapping> {
    let entry = proc_maps::parse_line(line)?;
    Ok(Mapping {
        start: entry.start,
        end: entry.end,
        perms: escape_bytes(&entry.perms),
        offset: entry.offset,
        device: entry.device,
        inode: entry.inode,
        name: entry.name,
        ..Mapping::default()
    })
}

/// The devices (major, minor) of the tmpfs mounts in a /proc/PID/mountinfo:
/// `id parent major:minor root mountpoint options [optional...] - fstype source superoptions`
/// (spaces inside paths are written `\040`).
pub fn tmpfs_devices(mountinfo: &[u8]) -> HashSet<(u32, u32)> {
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

#[cfg(test)]
pub mod tests {
    use super::*;

    /// Abridged from real smaps (each mapping keeps the fields pmap reads),
    /// plus hostile and unusual names.
    pub const SAMPLE: &[u8] = b"\
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

    pub const MOUNTINFO: &[u8] = b"\
22 27 0:21 / /proc rw,relatime - proc proc rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12334492k,mode=755
25 24 0:17 / /dev/shm rw,relatime shared:3 - tmpfs tmpfs rw,size=24684092k
26 27 0:2a / /my\\040tmp rw - tmpfs none rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
";

    #[test]
    fn every_field_is_a_column_once() {
        let mut seen: Vec<usize> = Field::ALL.iter().map(|&f| f as usize).collect();
        seen.sort();
        assert_eq!(seen, (0..Field::ALL.len()).collect::<Vec<_>>());
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
        assert_eq!(head.sizes[Field::Size], 8192);
        assert_eq!(head.sizes[Field::Pss], 4096);
        assert_eq!(head.vm_flags, ["rd", "mr", "mw", "me"]);

        let anon = &maps[2];
        assert!(anon.name.is_empty());
        assert_eq!(anon.sizes[Field::Size], 64 << 20);
        assert_eq!(anon.sizes[Field::Rss], 16 << 20);
        assert_eq!(anon.sizes[Field::Swap], 20 << 10);
        // the shared and private huge pages add up
        assert_eq!(maps[5].sizes[Field::Hugetlb], 2 << 20);
        assert_eq!(maps[12].start, 0xffffffffff600000);
    }

    #[test]
    fn names_stay_bytes_with_their_spaces() {
        let maps = parse_smaps(SAMPLE).unwrap();
        assert_eq!(maps[6].name, b"/tmp/\x1b[31mbad\xffname  ");
        assert_eq!(maps[6].offset, 0);
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
    fn a_text_cut_inside_a_mapping_is_told() {
        assert!(!ends_inside_a_mapping(SAMPLE));
        assert!(!ends_inside_a_mapping(b""));
        // cut between two mappings: nothing in the text can tell (the process
        // having exited does: see pmap's run)
        let between = SAMPLE.len() - b"ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]\nSize:                  4 kB\nVmFlags: ex \n".len();
        assert!(SAMPLE[..between].ends_with(b"VmFlags: rd ex mr mw me de sd \n"));
        assert!(!ends_inside_a_mapping(&SAMPLE[..between]));
        // cut after the last mapping's first line, after a field, inside a line
        for cut in [b"[vsyscall]\n".as_slice(), b"4 kB\n", b"4 k"] {
            let end = SAMPLE.windows(cut.len()).rposition(|w| w == cut).unwrap() + cut.len();
            assert!(ends_inside_a_mapping(&SAMPLE[..end]), "cut after {cut:?}");
            // and the parser alone takes it for a whole table, or fails
            if let Ok(maps) = parse_smaps(&SAMPLE[..end]) {
                assert_eq!(maps.len(), 13);
            }
        }
        // a kernel without VmFlags (before 3.8): a mapping may end with any field
        assert!(!ends_inside_a_mapping(
            b"00400000-00401000 r--p 00000000 fe:00 1 /x\nRss: 4 kB\n"
        ));
    }

    #[test]
    fn tmpfs_mounts_by_device() {
        let devices = tmpfs_devices(MOUNTINFO);
        assert_eq!(devices, HashSet::from([(0, 0x17), (0, 0x2a)]));
    }
}
