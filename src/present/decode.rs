//! Decoding of syscall arguments and results: mmap PROT_*/MAP_* bits,
//! mremap flags, System V shm flags and commands, errno names. Values are Linux's generic ones (x86_64, arm64).

/// PROT_* as the book prints them: `RWE` with `-` for an absent right.
pub fn prot_string(prot: u32) -> String {
    let mut s = String::with_capacity(3);
    s.push(if prot & libc::PROT_READ as u32 != 0 {
        'R'
    } else {
        '-'
    });
    s.push(if prot & libc::PROT_WRITE as u32 != 0 {
        'W'
    } else {
        '-'
    });
    s.push(if prot & libc::PROT_EXEC as u32 != 0 {
        'E'
    } else {
        '-'
    });
    s
}

const MAP_TYPE: u32 = 0x0f;
const MAP_HUGE_SHIFT: u32 = 26;
const MAP_HUGE_MASK: u32 = 0x3f;

/// Every MAP_* flag bit above the mapping type, in bit order.
const MAP_FLAG_NAMES: &[(u32, &str)] = &[
    (0x10, "MAP_FIXED"),
    (0x20, "MAP_ANONYMOUS"),
    (0x40, "MAP_32BIT"),
    (0x100, "MAP_GROWSDOWN"),
    (0x800, "MAP_DENYWRITE"),
    (0x1000, "MAP_EXECUTABLE"),
    (0x2000, "MAP_LOCKED"),
    (0x4000, "MAP_NORESERVE"),
    (0x8000, "MAP_POPULATE"),
    (0x10000, "MAP_NONBLOCK"),
    (0x20000, "MAP_STACK"),
    (0x40000, "MAP_HUGETLB"),
    (0x80000, "MAP_SYNC"),
    (0x100000, "MAP_FIXED_NOREPLACE"),
];

fn map_type_name(flags: u32) -> String {
    match flags & MAP_TYPE {
        0x01 => "MAP_SHARED".into(),
        0x02 => "MAP_PRIVATE".into(),
        0x03 => "MAP_SHARED_VALIDATE".into(),
        0x08 => "MAP_DROPPABLE".into(),
        other => format!("MAP_TYPE_{other:#x}"),
    }
}

/// All MAP_* names of an mmap flags word: the type first, then each flag, the
/// huge page size (`MAP_HUGE_2MB`) with MAP_HUGETLB, unknown bits in hex.
pub fn map_flag_names(flags: u32) -> Vec<String> {
    let mut names = vec![map_type_name(flags)];
    let mut known = MAP_TYPE;
    for &(bit, name) in MAP_FLAG_NAMES {
        known |= bit;
        if flags & bit != 0 {
            names.push(name.to_string());
        }
    }
    let high = (flags >> MAP_HUGE_SHIFT) & MAP_HUGE_MASK;
    known |= MAP_HUGE_MASK << MAP_HUGE_SHIFT;
    if flags & 0x40000 != 0 && high != 0 {
        // with MAP_HUGETLB the top bits give log2 of the page size
        names.push(format!("MAP_HUGE_{}", huge_size_name(high)));
    } else if high == 1 {
        names.push("MAP_UNINITIALIZED".into());
    } else if high != 0 {
        names.push(format!("{:#x}", high << MAP_HUGE_SHIFT));
    }
    let unknown = flags & !known;
    if unknown != 0 {
        names.push(format!("{unknown:#x}"));
    }
    names
}

fn huge_size_name(log2: u32) -> String {
    match log2 {
        30.. => format!("{}GB", 1u64 << (log2 - 30)),
        20.. => format!("{}MB", 1u64 << (log2 - 20)),
        10.. => format!("{}KB", 1u64 << (log2 - 10)),
        _ => format!("{}B", 1u64 << log2),
    }
}

/// The book's MAP column: S(hared)/P(rivate), F(ixed), A(nonymous).
pub fn map_letters(flags: u32) -> String {
    let mut s = String::with_capacity(3);
    s.push(match flags & MAP_TYPE {
        0x01 | 0x03 => 'S',
        0x02 => 'P',
        0x08 => 'D',
        _ => '?',
    });
    s.push(if flags & (0x10 | 0x100000) != 0 {
        'F'
    } else {
        '-'
    });
    s.push(if flags & 0x20 != 0 { 'A' } else { '-' });
    s
}

/// The flags the MAP column doesn't show, short and comma-separated
/// (`POPULATE,NORESERVE`), or `-`.
pub fn map_extra_flags(flags: u32) -> String {
    let extra: Vec<String> = map_flag_names(flags)
        .into_iter()
        .skip(1)
        .filter(|name| name != "MAP_FIXED" && name != "MAP_ANONYMOUS")
        .map(|name| name.trim_start_matches("MAP_").to_string())
        .collect();
    if extra.is_empty() {
        "-".into()
    } else {
        extra.join(",")
    }
}

/// MREMAP_* names.
pub fn mremap_flag_names(flags: u32) -> Vec<String> {
    const NAMES: &[(u32, &str)] = &[
        (1, "MREMAP_MAYMOVE"),
        (2, "MREMAP_FIXED"),
        (4, "MREMAP_DONTUNMAP"),
    ];
    let mut names: Vec<String> = NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| name.to_string())
        .collect();
    let unknown = flags & !7;
    if unknown != 0 {
        names.push(format!("{unknown:#x}"));
    }
    names
}

/// Permission bits of a shmget flags word (the low 9, as in open's mode).
const SHM_MODE_MASK: u32 = 0o777;
const SHM_HUGETLB: u32 = 0o4000;
const SHM_HUGE_SHIFT: u32 = 26;
const SHM_HUGE_MASK: u32 = 0x3f;

/// shmget's IPC_* and SHM_* flag bits (linux/ipc.h, linux/shm.h).
const SHMGET_FLAG_NAMES: &[(u32, &str)] = &[
    (0o1000, "IPC_CREAT"),
    (0o2000, "IPC_EXCL"),
    (SHM_HUGETLB, "SHM_HUGETLB"),
    (0o10000, "SHM_NORESERVE"),
];

/// shmat's SHM_* flag bits.
const SHMAT_FLAG_NAMES: &[(u32, &str)] = &[
    (0o10000, "SHM_RDONLY"),
    (0o20000, "SHM_RND"),
    (0o40000, "SHM_REMAP"),
    (0o100000, "SHM_EXEC"),
];

/// Names of the bits of `flags` in `table`, then any bit neither named nor `known` (decoded
/// elsewhere, like a mode) in hex.
fn flag_names(flags: u32, table: &[(u32, &str)], known: u32) -> Vec<String> {
    let mut names = Vec::new();
    let mut known = known;
    for &(bit, name) in table {
        known |= bit;
        if flags & bit != 0 {
            names.push(name.to_string());
        }
    }
    let unknown = flags & !known;
    if unknown != 0 {
        names.push(format!("{unknown:#x}"));
    }
    names
}

/// shmget's flag names without the mode: IPC_CREAT, IPC_EXCL, SHM_HUGETLB with
/// its page size (`SHM_HUGE_2MB`), SHM_NORESERVE; unknown bits in hex.
pub fn shmget_flag_names(flags: u32) -> Vec<String> {
    let huge_bits = SHM_HUGE_MASK << SHM_HUGE_SHIFT;
    let mut names = flag_names(flags & !huge_bits, SHMGET_FLAG_NAMES, SHM_MODE_MASK);
    let log2 = (flags >> SHM_HUGE_SHIFT) & SHM_HUGE_MASK;
    if log2 != 0 {
        // with SHM_HUGETLB the top bits give log2 of the page size; alone they mean nothing
        if flags & SHM_HUGETLB != 0 {
            names.push(format!("SHM_HUGE_{}", huge_size_name(log2)));
        } else {
            names.push(format!("{:#x}", flags & huge_bits));
        }
    }
    names
}

/// The permission bits of a shmget flags word.
pub fn shmget_mode(flags: u32) -> u32 {
    flags & SHM_MODE_MASK
}

/// `0x380 (IPC_CREAT|0600)`, as BCC's shmsnoop writes shmget's flags: the
/// raw word, then the names and the octal mode; `0x0` alone.
pub fn shmget_flags_string(flags: u32) -> String {
    let mut parts = shmget_flag_names(flags);
    let mode = shmget_mode(flags);
    if mode != 0 || parts.is_empty() {
        parts.push(format!("0{mode:o}"));
    }
    raw_and_names(flags, &parts)
}

/// shmat's flag names: SHM_RDONLY, SHM_RND, SHM_REMAP, SHM_EXEC; unknown bits in hex.
pub fn shmat_flag_names(flags: u32) -> Vec<String> {
    flag_names(flags, SHMAT_FLAG_NAMES, 0)
}

/// `0x1000 (SHM_RDONLY)`; `0x0` alone.
pub fn shmat_flags_string(flags: u32) -> String {
    raw_and_names(flags, &shmat_flag_names(flags))
}

fn raw_and_names(flags: u32, names: &[String]) -> String {
    if flags == 0 {
        "0x0".into()
    } else {
        format!("{flags:#x} ({})", names.join("|"))
    }
}

/// The IPC_64 bit some libcs add to a shmctl command to ask for the 64-bit structures.
pub const IPC_64: i32 = 0x100;

/// The name of a shmctl command, IPC_64 aside (linux/ipc.h, linux/shm.h); None if unknown.
pub fn shmctl_cmd_name(cmd: i32) -> Option<&'static str> {
    Some(match cmd & !IPC_64 {
        0 => "IPC_RMID",
        1 => "IPC_SET",
        2 => "IPC_STAT",
        3 => "IPC_INFO",
        11 => "SHM_LOCK",
        12 => "SHM_UNLOCK",
        13 => "SHM_STAT",
        14 => "SHM_INFO",
        15 => "SHM_STAT_ANY",
        _ => return None,
    })
}

/// `0 (IPC_RMID)`, `258 (IPC_STAT|IPC_64)`, or the bare number of an unknown command.
pub fn shmctl_cmd_string(cmd: i32) -> String {
    match shmctl_cmd_name(cmd) {
        Some(name) if cmd & IPC_64 != 0 => format!("{cmd} ({name}|IPC_64)"),
        Some(name) => format!("{cmd} ({name})"),
        None => cmd.to_string(),
    }
}

/// `EACCES` for 13; `E123` for a number this libc doesn't name.
pub fn errno_name(errno: i32) -> String {
    let err = nix::errno::Errno::from_raw(errno);
    if err == nix::errno::Errno::UnknownErrno {
        format!("E{errno}")
    } else {
        format!("{err:?}")
    }
}

/// A syscall's return value: the errno if it is one (-4095..=-1).
pub fn syscall_errno(ret: i64) -> Option<i32> {
    (-4095..0).contains(&ret).then(|| (-ret) as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prot() {
        assert_eq!(prot_string(0), "---");
        assert_eq!(prot_string(1 | 2), "RW-");
        assert_eq!(prot_string(1 | 4), "R-E");
    }

    #[test]
    fn map_flags() {
        assert_eq!(map_flag_names(0x22), ["MAP_PRIVATE", "MAP_ANONYMOUS"]);
        assert_eq!(map_flag_names(0x01), ["MAP_SHARED"]);
        assert_eq!(
            map_flag_names(0x02 | 0x10 | 0x800),
            ["MAP_PRIVATE", "MAP_FIXED", "MAP_DENYWRITE"]
        );
        assert_eq!(
            map_flag_names(0x22 | 0x2000 | 0x4000 | 0x8000 | 0x20000 | 0x100000),
            [
                "MAP_PRIVATE",
                "MAP_ANONYMOUS",
                "MAP_LOCKED",
                "MAP_NORESERVE",
                "MAP_POPULATE",
                "MAP_STACK",
                "MAP_FIXED_NOREPLACE"
            ]
        );
        assert_eq!(
            map_flag_names(0x22 | 0x40000 | (21 << 26)),
            [
                "MAP_PRIVATE",
                "MAP_ANONYMOUS",
                "MAP_HUGETLB",
                "MAP_HUGE_2MB"
            ]
        );
        assert_eq!(
            map_flag_names(0x22 | 0x40000 | (30 << 26)),
            [
                "MAP_PRIVATE",
                "MAP_ANONYMOUS",
                "MAP_HUGETLB",
                "MAP_HUGE_1GB"
            ]
        );
        assert_eq!(
            map_flag_names(0x22 | 0x4000000),
            ["MAP_PRIVATE", "MAP_ANONYMOUS", "MAP_UNINITIALIZED"]
        );
        assert_eq!(
            map_flag_names(0x03 | 0x80000),
            ["MAP_SHARED_VALIDATE", "MAP_SYNC"]
        );
        assert_eq!(map_flag_names(0x08), ["MAP_DROPPABLE"]);
        assert_eq!(map_flag_names(0x02 | 0x200), ["MAP_PRIVATE", "0x200"]);
    }

    #[test]
    fn map_columns() {
        assert_eq!(map_letters(0x22), "P-A");
        assert_eq!(map_letters(0x01 | 0x10), "SF-");
        assert_eq!(map_extra_flags(0x22), "-");
        assert_eq!(
            map_extra_flags(0x22 | 0x8000 | 0x4000),
            "NORESERVE,POPULATE"
        );
    }

    #[test]
    fn mremap_flags() {
        assert_eq!(mremap_flag_names(1), ["MREMAP_MAYMOVE"]);
        assert_eq!(mremap_flag_names(3), ["MREMAP_MAYMOVE", "MREMAP_FIXED"]);
        assert_eq!(mremap_flag_names(0), Vec::<String>::new());
    }

    #[test]
    fn shmget_flags() {
        assert_eq!(
            shmget_flags_string(0o1000 | 0o600),
            "0x380 (IPC_CREAT|0600)"
        );
        assert_eq!(shmget_flag_names(0o1000 | 0o600), ["IPC_CREAT"]);
        assert_eq!(shmget_mode(0o1000 | 0o600), 0o600);
        assert_eq!(shmget_flags_string(0), "0x0");
        assert_eq!(shmget_flags_string(0o666), "0x1b6 (0666)");
        assert_eq!(
            shmget_flags_string(0o1000 | 0o2000 | 0o640),
            "0x7a0 (IPC_CREAT|IPC_EXCL|0640)"
        );
        assert_eq!(
            shmget_flag_names(0o1000 | 0o4000 | (21 << 26)),
            ["IPC_CREAT", "SHM_HUGETLB", "SHM_HUGE_2MB"]
        );
        assert_eq!(
            shmget_flag_names(0o4000 | 0o10000 | (30 << 26)),
            ["SHM_HUGETLB", "SHM_NORESERVE", "SHM_HUGE_1GB"]
        );
        // huge page size bits without SHM_HUGETLB, and a bit shmget doesn't know
        assert_eq!(shmget_flag_names(21 << 26), ["0x54000000"]);
        assert_eq!(
            shmget_flag_names(0x20000 | 0o1000),
            ["IPC_CREAT", "0x20000"]
        );
        assert_eq!(shmget_flags_string(0o1000), "0x200 (IPC_CREAT)");
    }

    #[test]
    fn shmat_flags() {
        assert_eq!(shmat_flags_string(0), "0x0");
        assert_eq!(shmat_flags_string(0o10000), "0x1000 (SHM_RDONLY)");
        assert_eq!(
            shmat_flag_names(0o20000 | 0o40000 | 0o100000),
            ["SHM_RND", "SHM_REMAP", "SHM_EXEC"]
        );
        assert_eq!(shmat_flag_names(0x1), ["0x1"]);
    }

    #[test]
    fn shmctl_cmds() {
        assert_eq!(shmctl_cmd_string(0), "0 (IPC_RMID)");
        assert_eq!(shmctl_cmd_string(2), "2 (IPC_STAT)");
        assert_eq!(shmctl_cmd_string(0x100 | 2), "258 (IPC_STAT|IPC_64)");
        assert_eq!(shmctl_cmd_string(15), "15 (SHM_STAT_ANY)");
        assert_eq!(shmctl_cmd_name(0x100 | 11), Some("SHM_LOCK"));
        assert_eq!(shmctl_cmd_name(12), Some("SHM_UNLOCK"));
        assert_eq!(shmctl_cmd_name(14), Some("SHM_INFO"));
        assert_eq!(shmctl_cmd_name(7), None);
        assert_eq!(shmctl_cmd_string(-1), "-1");
    }

    #[test]
    fn errnos() {
        assert_eq!(errno_name(13), "EACCES");
        assert_eq!(errno_name(12), "ENOMEM");
        assert_eq!(errno_name(9), "EBADF");
        assert_eq!(errno_name(4000), "E4000");
        assert_eq!(syscall_errno(-13), Some(13));
        assert_eq!(syscall_errno(0x7f00_0000_0000), None);
        assert_eq!(syscall_errno(0), None);
    }
}
