//! /proc/PID/maps, and the first line of each smaps mapping, parsed as bytes:
//! the one parser of that format (memleak's libc search, the symbolizer's
//! live mappings, pmap). Not with the procfs crate: procfs 0.18 reads maps as
//! UTF-8 lines, so one mapped file whose name is not UTF-8 fails the whole
//! read (`Incomplete`), and any process could make itself untraceable by
//! mapping one. Names stay bytes until they are escaped for printing.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Context, Result};

use crate::present::escape::escape_bytes;

/// One mapping: `start-end perms offset major:minor inode   name`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MapsEntry {
    pub start: u64,
    pub end: u64,
    /// `rwxp` and the like, as the kernel wrote them.
    pub perms: Vec<u8>,
    /// File offset of `start`.
    pub offset: u64,
    /// (major, minor)
    pub device: (u32, u32),
    pub inode: u64,
    /// As the kernel prints it (a newline in a file name is written `\012`):
    /// raw bytes, maybe another user's file name; empty for anonymous memory.
    pub name: Vec<u8>,
}

impl MapsEntry {
    pub fn executable(&self) -> bool {
        self.perms.get(2) == Some(&b'x')
    }

    /// The file mapped, for a name that is a path (`[heap]`, `[vdso]`,
    /// `[anon:...]` and anonymous memory have none).
    pub fn path(&self) -> Option<&Path> {
        self.name
            .starts_with(b"/")
            .then(|| Path::new(OsStr::from_bytes(&self.name)))
    }

    /// The last component of the name (`libc.so.6` of `/usr/lib/libc.so.6`).
    pub fn file_name(&self) -> &[u8] {
        match self.name.iter().rposition(|&b| b == b'/') {
            Some(slash) => &self.name[slash + 1..],
            None => &self.name,
        }
    }
}

/// Every line of a /proc/PID/maps text.
pub fn parse_maps(text: &[u8]) -> Result<Vec<MapsEntry>> {
    text.split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(index, line)| {
            parse_line(line).with_context(|| format!("line {} ({})", index + 1, escape_bytes(line)))
        })
        .collect()
}

/// /proc/PID/maps read and parsed; the io::Error (NotFound, ESRCH...) stays
/// the error's source, for callers that tell a missing process apart.
pub fn read_maps(pid: u32) -> Result<Vec<MapsEntry>> {
    let path = format!("/proc/{pid}/maps");
    let text = std::fs::read(&path).with_context(|| format!("reading {path}"))?;
    parse_maps(&text).with_context(|| format!("parsing {path}"))
}

/// One maps line. The name is padded to a column with spaces and runs to the
/// end of the line (trailing spaces are part of it).
pub fn parse_line(line: &[u8]) -> Result<MapsEntry> {
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
    Ok(MapsEntry {
        start,
        end,
        perms: perms.to_vec(),
        offset: number_in(offset, 16)?,
        device: parse_device(device)?,
        inode: number_in(inode, 10)?,
        name: name[padding..].to_vec(),
    })
}

pub fn number_in(bytes: &[u8], radix: u32) -> Result<u64> {
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

/// `major:minor` in hex, as maps and mountinfo write a device.
pub fn parse_device(bytes: &[u8]) -> Result<(u32, u32)> {
    let (major, minor) = pair(bytes, b':', 16)?;
    Ok((
        u32::try_from(major).context("device major out of range")?,
        u32::try_from(minor).context("device minor out of range")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Abridged from a real /proc/PID/maps, plus names procfs can't read.
    const SAMPLE: &[u8] = b"\
55f6bba88000-55f6bba8a000 r--p 00000000 fe:00 247282                     /usr/bin/head
55f6bba8a000-55f6bba8f000 r-xp 00002000 fe:00 247282                     /usr/bin/head
55f6bc000000-55f6bc021000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0004000000 rw-p 00000000 00:00 0 
7f0004400000-7f0004410000 r--s 00000000 fe:00 99                         /tmp/\x1b[31mbad\xffname  
7f0004410000-7f0004411000 rw-p 00000000 00:00 0                          [anon:arena]
7f1c2a228000-7f1c2a3ad000 r-xp 00028000 fe:00 1311                       /usr/lib/x86_64-linux-gnu/libc.so.6
7ffc1c1f4000-7ffc1c1f6000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    #[test]
    fn every_line_with_names_as_bytes() {
        let maps = parse_maps(SAMPLE).unwrap();
        assert_eq!(maps.len(), 9);
        let text = &maps[1];
        assert_eq!((text.start, text.end), (0x55f6bba8a000, 0x55f6bba8f000));
        assert_eq!(text.perms, b"r-xp");
        assert!(text.executable() && !maps[0].executable());
        assert_eq!(text.offset, 0x2000);
        assert_eq!(text.device, (0xfe, 0));
        assert_eq!(text.inode, 247282);
        assert_eq!(text.path(), Some(Path::new("/usr/bin/head")));
        assert_eq!(maps[2].name, b"[heap]");
        assert_eq!(maps[2].path(), None);
        assert!(maps[3].name.is_empty() && maps[3].path().is_none());
        // not UTF-8, an escape sequence, trailing spaces: kept as they are
        assert_eq!(maps[4].name, b"/tmp/\x1b[31mbad\xffname  ");
        assert_eq!(maps[4].file_name(), b"\x1b[31mbad\xffname  ");
        assert_eq!(
            maps[4].path().map(|p| p.as_os_str().as_bytes()),
            Some(&b"/tmp/\x1b[31mbad\xffname  "[..])
        );
        assert_eq!(maps[6].file_name(), b"libc.so.6");
        assert_eq!(
            (maps[6].start, maps[6].end),
            (0x7f1c2a228000, 0x7f1c2a3ad000)
        );
        assert_eq!(maps[8].start, 0xffffffffff600000);
    }

    #[test]
    fn a_malformed_line_is_an_error_naming_it() {
        let err = parse_maps(b"00400000-00401000 r--p 00000000 fe:00 1 /x\nnonsense\n");
        let err = format!("{:#}", err.unwrap_err());
        assert!(err.contains("line 2 (nonsense)"), "{err}");
        assert!(parse_line(b"00400000 r--p 00000000 fe:00 1").is_err());
        assert!(parse_line(b"00400000-00401000 r--p 00000000 fe:00 x").is_err());
        assert!(parse_maps(b"").unwrap().is_empty());
    }

    #[test]
    fn reads_its_own_maps() {
        let maps = read_maps(std::process::id()).unwrap();
        let here = reads_its_own_maps as *const () as u64;
        let own = maps
            .iter()
            .find(|m| (m.start..m.end).contains(&here))
            .unwrap();
        assert!(own.executable() && own.path().is_some(), "{own:?}");
    }
}
