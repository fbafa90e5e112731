//! pmap against a real process on this kernel. No BPF: reading our own
//! child's smaps needs no root (only the permission test does, and the
//! hugetlb test, which reserves huge pages and takes the machine-wide lock).

mod common;

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::system::*;
use common::*;
use serde_json::Value;

fn pmap(args: &[&str]) -> Output {
    memtrace().arg("pmap").args(args).output().unwrap()
}

fn json_lines(out: &Output) -> Vec<Value> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pmap failed: {stderr}");
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

fn records<'a>(lines: &'a [Value], record: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["record"] == record).collect()
}

fn number(value: &Value, field: &str) -> u64 {
    value[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {value}"))
}

/// Every size column of pmap's JSON.
const SIZES: [&str; 10] = [
    "size",
    "rss",
    "pss",
    "shared_clean",
    "shared_dirty",
    "private_clean",
    "private_dirty",
    "swap",
    "anon_huge_pages",
    "hugetlb",
];

const KINDS: [&str; 7] = [
    "anonymous",
    "heap",
    "stack",
    "file",
    "shmem",
    "hugetlb",
    "vdso",
];

/// /proc/PID/smaps_rollup in bytes by key, None where the kernel has none (before 4.14).
fn rollup(pid: &str) -> Option<HashMap<String, u64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    Some(
        text.lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let key = words.next()?.strip_suffix(':')?;
                let value: u64 = words.next()?.parse().ok()?;
                (words.next() == Some("kB")).then(|| (key.to_string(), value * 1024))
            })
            .collect(),
    )
}

/// pmap's JSON columns and the smaps_rollup keys whose sums other processes
/// and writeback can't move. Pss, and the split of resident pages into
/// shared/private and clean/dirty, move with every process that maps a page
/// the fixture maps (libc; the fixture's own binary, run by other tests too),
/// this test's pmap run among them, and as writeback cleans the fixture's
/// binary, written by the compiler moments before.
const OWN_FIGURES: [(&[&str], &[&str]); 5] = [
    (&["rss"], &["Rss"]),
    (&["swap"], &["Swap"]),
    (&["anon_huge_pages"], &["AnonHugePages"]),
    (&["hugetlb"], &["Shared_Hugetlb", "Private_Hugetlb"]),
    (
        &[
            "shared_clean",
            "shared_dirty",
            "private_clean",
            "private_dirty",
        ],
        &[
            "Shared_Clean",
            "Shared_Dirty",
            "Private_Clean",
            "Private_Dirty",
        ],
    ),
];

fn own_figures(rolled: &HashMap<String, u64>) -> Vec<u64> {
    OWN_FIGURES
        .iter()
        .map(|(_, keys)| keys.iter().map(|k| rolled[*k]).sum())
        .collect()
}

fn on_tmpfs(path: &Path) -> bool {
    let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: statfs(2) with a NUL-terminated path and a zeroed struct to fill.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statfs(c_path.as_ptr(), &mut fs) }, 0);
    #[allow(clippy::unnecessary_cast)] // both types differ between architectures
    let tmpfs = fs.f_type as i64 == libc::TMPFS_MAGIC as i64;
    tmpfs
}

#[test]
fn a_64_mib_mapping_with_16_mib_resident_and_totals_that_add_up() {
    let file = temp_path("pmapped.dat");
    let fixture = Pmapped::start(&[], &[&file]);
    let pid = fixture.pid();

    // The fixture may still fault in the code it waits in after saying it is
    // ready: take a reading with the same Rss (and the rest of what only the
    // process itself changes) in smaps_rollup before and after it.
    let mut attempts = 0;
    let (lines, rolled) = loop {
        attempts += 1;
        let before = rollup(&pid);
        let lines = json_lines(&pmap(&["-p", &pid, "--json"]));
        let after = rollup(&pid);
        let own = |r: &Option<HashMap<String, u64>>| r.as_ref().map(own_figures);
        if own(&before) == own(&after) {
            break (lines, after);
        }
        assert!(attempts < 50, "smaps_rollup kept changing: {after:?}");
    };
    let mappings = records(&lines, "mapping");
    let totals = records(&lines, "total");
    assert!(mappings
        .iter()
        .all(|m| m["pid"] == pid.parse::<u64>().unwrap()));

    let big: Vec<&&Value> = mappings.iter().filter(|m| m["size"] == 67108864).collect();
    assert_eq!(big.len(), 1, "one 64 MiB mapping: {mappings:?}");
    let big = big[0];
    assert_eq!(big["rss"], 16777216, "{big}");
    assert_eq!(big["pss"], 16777216, "{big}");
    assert_eq!(big["private_dirty"], 16777216, "{big}");
    assert_eq!(big["anon_huge_pages"], 0, "{big}");
    assert_eq!(big["kind"], "anonymous");
    assert_eq!(big["name"], Value::Null);
    assert_eq!(big["perms"], "rw-p");
    assert_eq!(number(big, "end") - number(big, "start"), 67108864);
    assert!(
        big["vm_flags"]
            .as_array()
            .unwrap()
            .contains(&Value::from("nh")),
        "{big}"
    );

    let name = file.to_str().unwrap();
    let mapped = mappings
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("{name} not shown: {mappings:?}"));
    assert_eq!(mapped["size"], 65536);
    assert_eq!(mapped["perms"], "r--s");
    let expected = if on_tmpfs(&file) { "shmem" } else { "file" };
    assert_eq!(mapped["kind"], expected, "{mapped}");

    let memfd = mappings
        .iter()
        .find(|m| m["name"] == "/memfd:pmapped (deleted)")
        .unwrap_or_else(|| panic!("no memfd: {mappings:?}"));
    assert_eq!(memfd["kind"], "shmem");
    assert_eq!(memfd["rss"], 1 << 20);
    assert_eq!(memfd["pss"], 1 << 20);
    // A page shared by n processes adds 1/n of itself to each one's Pss
    for m in &mappings {
        let private = number(m, "private_clean") + number(m, "private_dirty");
        let (pss, rss) = (number(m, "pss"), number(m, "rss"));
        assert!(private <= pss && pss <= rss, "{m}");
    }
    for kind in ["heap", "stack", "file", "vdso"] {
        assert!(mappings.iter().any(|m| m["kind"] == kind), "no {kind}");
    }

    // totals: one per kind, then all, each the sum of its rows
    let kinds: Vec<&str> = totals.iter().map(|t| t["kind"].as_str().unwrap()).collect();
    let mut expected_kinds = KINDS.to_vec();
    expected_kinds.push("all");
    assert_eq!(kinds, expected_kinds);
    for total in &totals {
        let rows: Vec<&&Value> = mappings
            .iter()
            .filter(|m| total["kind"] == "all" || m["kind"] == total["kind"])
            .collect();
        assert_eq!(number(total, "mappings"), rows.len() as u64, "{total}");
        for size in SIZES {
            let sum: u64 = rows.iter().map(|m| number(m, size)).sum();
            assert_eq!(number(total, size), sum, "{size} of {total}");
        }
    }

    // and the kernel's own sums, where it has smaps_rollup
    let Some(rolled) = rolled else {
        eprintln!("no smaps_rollup on this kernel: not compared");
        return;
    };
    let all = totals.last().unwrap();
    let ours: Vec<u64> = OWN_FIGURES
        .iter()
        .map(|(columns, _)| columns.iter().map(|c| number(all, c)).sum())
        .collect();
    assert_eq!(ours, own_figures(&rolled), "{all} {rolled:?}");
    let _ = std::fs::remove_file(file);
}

#[test]
fn hostile_names_sorting_summary_and_table() {
    let dir = temp_path("pmap-names");
    std::fs::create_dir_all(&dir).unwrap();
    let hostile: PathBuf = dir.join(OsStr::from_bytes(b"\x1b[31mbad\xffname"));
    let fixture = Pmapped::start(&[], &[&hostile]);
    let pid = fixture.pid();

    // a name that is not UTF-8 is shown, escaped
    let by_rss = json_lines(&pmap(&["-p", &pid, "--json", "--sort", "rss"]));
    let mappings = records(&by_rss, "mapping");
    let escaped = format!("{}/\\x1b[31mbad\\xffname", dir.to_str().unwrap());
    assert!(
        mappings.iter().any(|m| m["name"] == escaped.as_str()),
        "{escaped} not shown: {mappings:?}"
    );
    // largest Rss first: the 16 MiB touched
    assert_eq!(mappings[0]["rss"], 16777216);
    let rss: Vec<u64> = mappings.iter().map(|m| number(m, "rss")).collect();
    assert!(rss.windows(2).all(|w| w[0] >= w[1]), "{rss:?}");

    let summary = json_lines(&pmap(&["-p", &pid, "--json", "--summary"]));
    assert_eq!(summary.len(), 8, "seven kinds and all: {summary:?}");
    assert!(summary.iter().all(|l| l["record"] == "total"));

    let table = pmap(&["-p", &pid]);
    assert!(table.status.success());
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(!text.contains('\x1b'), "a raw escape reached the terminal");
    assert!(text.contains("\\x1b[31mbad\\xffname"), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with(&format!("{pid}:   ")), "{text}");
    assert!(lines[0].contains("pmapped 64 16"), "{text}");
    let header: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        header[..6],
        ["Address", "Perm", "Offset", "Device", "Inode", "Size"]
    );
    assert_eq!(header.last(), Some(&"Mapping"));
    let big = lines
        .iter()
        .find(|l| l.split_whitespace().nth(5) == Some("65536"))
        .unwrap_or_else(|| panic!("no 65536 KiB row: {text}"));
    assert_eq!(
        big.split_whitespace().nth(6),
        Some("16384"),
        "Rss in KiB: {big}"
    );

    let summary = pmap(&["-p", &pid, "--summary"]);
    let text = String::from_utf8(summary.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 10, "title, header, 7 kinds, total: {text}");
    assert!(lines[1].starts_with("Kind"));
    assert!(lines[9].starts_with("total"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_missing_process_is_one_clear_line() {
    // pids run below pid_max: this one can't exist
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap();
    let pid = pid_max.trim();
    let out = pmap(&["-p", pid]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr, format!("pmap: no process with PID {pid}\n"));
}

#[test]
fn usage_errors() {
    for args in [
        &[][..],
        &["-p", "1", "-p", "2"],
        &["-p", "1", "-n", "init"],
        &["-p", "1", "--", "true"],
        &["-p", "1", "--sort", "colour"],
    ] {
        let out = pmap(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn another_users_process_is_permission_denied() {
    require_tool!("pmap");
    let fixture = Pmapped::start(&[], &[]);
    let out = memtrace_as_nobody(&["pmap", "-p", &fixture.pid()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one clear line: {stderr}");
}

#[test]
fn pmap_shows_hugetlb_pages_apart() {
    require_tool!("pmap");
    let _lock = lock_system_state();
    let _pages = HugePages::reserve(2);
    let fixture = Pmapped::start(&["--huge", "2"], &[]);
    let lines = json_lines(&pmap(&["-p", &fixture.pid(), "--json"]));
    let huge: Vec<&Value> = lines
        .iter()
        .filter(|l| l["record"] == "mapping" && l["kind"] == "hugetlb")
        .collect();
    assert_eq!(huge.len(), 1, "{lines:?}");
    assert_eq!(huge[0]["size"], 4 << 20, "{}", huge[0]);
    assert_eq!(huge[0]["hugetlb"], 4 << 20, "{}", huge[0]);
    // smaps counts hugetlb pages apart from Rss
    assert_eq!(huge[0]["rss"], 0, "{}", huge[0]);
    let total = |kind: &str| {
        lines
            .iter()
            .find(|l| l["record"] == "total" && l["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} total: {lines:?}"))
            .clone()
    };
    assert_eq!(total("hugetlb")["hugetlb"], 4 << 20);
    assert_eq!(total("hugetlb")["mappings"], 1);
    assert_eq!(total("all")["hugetlb"], 4 << 20);
    // the ordinary 64 MiB mapping is still counted as it was
    let big = lines
        .iter()
        .find(|l| l["record"] == "mapping" && l["size"] == 64 << 20)
        .unwrap_or_else(|| panic!("no 64 MiB mapping: {lines:?}"));
    assert_eq!(big["kind"], "anonymous");
    assert_eq!(big["rss"], 16 << 20);
}

/// The mapmany fixture's mappings: enough that reading its smaps takes a
/// good part of a second, and fewer than the default vm.max_map_count (65530).
const MANY: usize = 40000;

/// Whether process `pid` has `path` open.
fn has_open(pid: u32, path: &Path) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == path))
}

/// Kills the mapmany fixture once pmap has its smaps open, reaped at once or
/// left a zombie until pmap ends: its read then fails (ESRCH) or ends early
/// with no error. pmap may still have read it all before the kill (then its
/// table must be whole), or see the exit without a cut (then it must say so
/// all the same); tried until a read is cut short.
fn killed_during_the_read(reap_at_once: bool) {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let mut outcomes = Vec::new();
    for _ in 0..20 {
        let mut fixture = Command::new(fixture("mapmany"))
            .arg(MANY.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(fixture.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n", "mapmany did not set up");
        let pid = fixture.id();

        let mut pmap = memtrace()
            .args(["pmap", "--json", "-p", &pid.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = pmap.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            stdout.read_to_string(&mut text).unwrap();
            text
        });
        let smaps = PathBuf::from(format!("/proc/{pid}/smaps"));
        let deadline = Instant::now() + scaled(Duration::from_secs(30));
        while !has_open(pmap.id(), &smaps) && pmap.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "pmap never opened {smaps:?}");
        }
        let _ = fixture.kill();
        if reap_at_once {
            let _ = fixture.wait();
        }
        let mut stderr = String::new();
        pmap.stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let status = pmap.wait().unwrap();
        let stdout = stdout.join().unwrap();
        let _ = fixture.wait();
        let mappings = stdout
            .lines()
            .filter(|l| l.contains("\"record\":\"mapping\""))
            .count();
        outcomes.push((status.code(), mappings));
        if status.success() {
            // read before the kill: the table is whole
            assert!(
                mappings > MANY,
                "a short table: {mappings} mappings; {stderr}"
            );
            assert!(stderr.is_empty(), "{stderr}");
            continue;
        }
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert_eq!(
            stderr,
            format!("pmap: PID {pid} exited during the read; the table is incomplete\n")
        );
        if mappings < MANY {
            return; // a read cut short, and told
        }
    }
    panic!("no read was cut short in 20 tries: (status, mappings) {outcomes:?}");
}

#[test]
fn a_process_that_exits_during_the_read_is_an_error_not_a_short_table() {
    // a zombie's smaps ends early, with no error
    killed_during_the_read(false);
}

#[test]
fn a_process_reaped_during_the_read_is_the_same_error() {
    // once reaped, the next read of its smaps fails with ESRCH
    killed_during_the_read(true);
}
