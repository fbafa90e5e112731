//! Tests that change system-wide state (tracefs mount, huge pages, memory
//! cgroups, swap, vm.page-cluster). They run
//! one at a time (a lock; cargo runs test binaries one after another) and
//! restore what they changed even when they fail (guards' Drop).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use common::*;
use serde_json::Value;

static SYSTEM_STATE: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SYSTEM_STATE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn mounted_fs_at(path: &str) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&path)).then(|| fields[2].to_string())
    })
}

fn sh(command: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(command)
        .status()
        .unwrap()
        .success()
}

/// Puts tracefs back as it was: mounted or not.
struct TracefsGuard {
    was_mounted: bool,
}

impl Drop for TracefsGuard {
    fn drop(&mut self) {
        let mounted = mounted_fs_at("/sys/kernel/tracing").as_deref() == Some("tracefs");
        if self.was_mounted && !mounted {
            sh("mount -t tracefs tracefs /sys/kernel/tracing");
        } else if !self.was_mounted && mounted {
            sh("umount /sys/kernel/tracing");
        }
    }
}

#[test]
fn tracefs_is_mounted_when_missing() {
    require_root!();
    let _lock = lock();
    assert!(
        !Path::new("/sys/kernel/debug/tracing/events").exists(),
        "debugfs tracing is mounted here: libbpf would use it, so this test can't take tracefs away"
    );
    let was_mounted = mounted_fs_at("/sys/kernel/tracing").as_deref() == Some("tracefs");
    let _guard = TracefsGuard { was_mounted };
    if was_mounted {
        assert!(sh("umount /sys/kernel/tracing"), "unmounting tracefs");
    }
    assert_ne!(
        mounted_fs_at("/sys/kernel/tracing").as_deref(),
        Some("tracefs")
    );
    let finished = run_on(&["mmapsnoop", "--json"], "mapper", &["anon64"]);
    finished.assert_success();
    assert!(finished.json().iter().any(|e| e["len"] == 67108864u64));
    assert_eq!(
        mounted_fs_at("/sys/kernel/tracing").as_deref(),
        Some("tracefs")
    );
}

/// Raises vm.nr_hugepages and mounts hugetlbfs; Drop puts both back.
struct HugePages {
    original: String,
    mount: PathBuf,
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

impl HugePages {
    fn reserve(extra: u64) -> HugePages {
        let original = std::fs::read_to_string(NR_HUGEPAGES)
            .unwrap()
            .trim()
            .to_string();
        let wanted = original.parse::<u64>().unwrap() + extra;
        let mount = temp_path("hugetlbfs");
        std::fs::create_dir_all(&mount).unwrap();
        let guard = HugePages { original, mount };
        std::fs::write(NR_HUGEPAGES, wanted.to_string()).unwrap();
        let got: u64 = std::fs::read_to_string(NR_HUGEPAGES)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(
            got, wanted,
            "the kernel could not reserve {extra} huge pages"
        );
        assert!(
            sh(&format!(
                "mount -t hugetlbfs -o pagesize=2M none {}",
                guard.mount.display()
            )),
            "mounting hugetlbfs"
        );
        guard
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        sh(&format!("umount {} 2>/dev/null", self.mount.display()));
        let _ = std::fs::remove_dir(&self.mount);
        let _ = std::fs::write(NR_HUGEPAGES, &self.original);
    }
}

#[test]
fn hugetlb_mappings_are_named_and_decoded() {
    require_root!();
    let _lock = lock();
    let pages = HugePages::reserve(2);
    let mapper = fixture("mapper");
    let file = pages.mount.join("huge.dat");

    let finished = run(&[
        "mmapsnoop",
        "--json",
        "--",
        mapper.to_str().unwrap(),
        "hugefile",
        file.to_str().unwrap(),
    ]);
    finished.assert_success();
    let events = finished.json();
    let hits: Vec<&Value> = events.iter().filter(|e| e["file"] == "huge.dat").collect();
    assert_eq!(hits.len(), 1, "{events:?}");
    assert_eq!(hits[0]["len"], 2097152);
    assert_eq!(hits[0]["path"], file.to_str().unwrap());
    assert_eq!(hits[0]["error"], Value::Null);

    let finished = run(&[
        "mmapsnoop",
        "--json",
        "--",
        mapper.to_str().unwrap(),
        "anonhuge",
    ]);
    finished.assert_success();
    let events = finished.json();
    let hits: Vec<&Value> = events.iter().filter(|e| e["len"] == 2097152).collect();
    assert_eq!(hits.len(), 1, "{events:?}");
    assert_eq!(
        strings(&hits[0]["flags"]),
        [
            "MAP_PRIVATE",
            "MAP_ANONYMOUS",
            "MAP_HUGETLB",
            "MAP_HUGE_2MB"
        ]
    );
    assert_eq!(
        hits[0]["error"],
        Value::Null,
        "the huge page was not available"
    );
}

#[test]
fn hfaults_counts_two_huge_page_faults() {
    require_root!();
    let _lock = lock();
    let pages = HugePages::reserve(2);
    let toucher = fixture("toucher");
    let file = pages.mount.join("two-pages.dat");
    let finished = run(&[
        "hfaults",
        "--json",
        "--",
        toucher.to_str().unwrap(),
        "hugefile",
        file.to_str().unwrap(),
        "2",
    ]);
    finished.assert_success();
    let rows = finished.json();
    let pid = rows
        .iter()
        .find(|r| r["comm"] == "toucher")
        .unwrap_or_else(|| panic!("no hugetlb faults: {}", finished.stdout))["pid"]
        .clone();
    let total: u64 = rows
        .iter()
        .filter(|r| r["pid"] == pid && r["file"] == "two-pages.dat")
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 2, "{rows:?}");
    // only hugetlb faults: the loader's ordinary ones are not there
    assert!(
        rows.iter().all(|r| r["file"] == "two-pages.dat"),
        "{rows:?}"
    );
}

#[test]
fn pmap_shows_hugetlb_pages_apart() {
    require_root!();
    let _lock = lock();
    let _pages = HugePages::reserve(2);
    let fixture = Pmapped::start(&["--huge", "2"], &[]);
    let out = memtrace()
        .args(["pmap", "-p", &fixture.pid(), "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
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

/// A child memory cgroup of this test's own, with a limit; Drop kills what is
/// left in it and removes it.
struct MemoryCgroup {
    dir: PathBuf,
    /// Its path as the kernel names it, from the hierarchy's root.
    path: String,
}

impl MemoryCgroup {
    fn create(limit: u64) -> MemoryCgroup {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let name = format!("memtrace-test-{}", std::process::id());
        // cgroup v1's memory controller, else the v2 unified hierarchy
        let (root, parent, limit_file) = match own
            .lines()
            .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()))
        {
            Some(parent) => ("/sys/fs/cgroup/memory", parent, "memory.limit_in_bytes"),
            None => {
                let parent = own
                    .lines()
                    .find_map(|l| l.strip_prefix("0::"))
                    .unwrap()
                    .to_string();
                ("/sys/fs/cgroup", parent, "memory.max")
            }
        };
        let path = format!("{}/{name}", parent.trim_end_matches('/'));
        let dir = PathBuf::from(format!("{root}{path}"));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let cgroup = MemoryCgroup { dir, path };
        std::fs::write(cgroup.dir.join(limit_file), limit.to_string()).unwrap();
        cgroup
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|p| p.parse::<i32>().ok()) {
                // SAFETY: kill(2) on a pid read from our own test cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

#[test]
fn oomkill_reports_a_memcg_kill() {
    require_root!();
    let _lock = lock();
    let cgroup = MemoryCgroup::create(64 << 20);
    let toucher = fixture("toucher");
    let mut held = Held::start(&toucher, &["anon", "256"]);
    cgroup.add(held.pid());
    let tracer = Tracer::start(&["oomkill", "--json"]);
    let status = held.go();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "256 MiB in a 64 MiB cgroup must be OOM-killed: {status:?}"
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let finished = tracer.stop();
    finished.assert_success();
    let kills = finished.json();
    let kill = kills
        .iter()
        .find(|k| k["victim_pid"] == held.pid())
        .unwrap_or_else(|| panic!("no OOM kill of {} reported: {kills:?}", held.pid()));
    assert_eq!(kill["victim_comm"], "toucher");
    assert_eq!(kill["trigger_pid"], held.pid());
    assert_eq!(kill["cgroup"], cgroup.path.as_str());
    assert_eq!(kill["constraint"], "memcg");
    assert_eq!(kill["pages"], 16384, "the cgroup's limit in pages");
    // the victim filled its 64 MiB limit with anonymous memory
    let anon = kill["anon_rss"].as_u64().unwrap();
    assert!((48 << 20..=64 << 20).contains(&anon), "anon_rss {anon}");
    for field in [
        "file_rss",
        "shmem_rss",
        "oom_score_adj",
        "loadavg",
        "time_ns",
        "trigger_comm",
    ] {
        assert!(kill.get(field).is_some(), "{field} missing: {kill}");
    }
}

#[test]
fn oomkill_prints_nothing_when_nothing_happens() {
    require_root!();
    let _lock = lock();
    let finished = run(&["oomkill", "-d", "0.5"]);
    finished.assert_success();
    assert_eq!(finished.stdout, "", "no OOM kill, no output");
}

/// A swap file, on for the test, off and removed after.
struct SwapFile {
    path: PathBuf,
}

impl SwapFile {
    fn on(bytes: u64) -> SwapFile {
        let path = temp_path("swapfile");
        let guard = SwapFile { path };
        let p = guard.path.display();
        // a file of real blocks (swapon refuses holes), private to root
        assert!(
            sh(&format!(
                "dd if=/dev/zero of={p} bs=1M count={} status=none && chmod 600 {p} && mkswap {p} >/dev/null && swapon {p}",
                bytes >> 20
            )),
            "making and enabling a swap file at {p}"
        );
        guard
    }
}

impl Drop for SwapFile {
    fn drop(&mut self) {
        sh(&format!("swapoff {} 2>/dev/null", self.path.display()));
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A sysctl under /proc/sys set for the test and put back after.
struct Sysctl {
    file: &'static str,
    original: String,
}

impl Sysctl {
    fn set(file: &'static str, value: &str) -> Sysctl {
        let original = std::fs::read_to_string(file).unwrap();
        let guard = Sysctl { file, original };
        std::fs::write(file, value).unwrap();
        guard
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(self.file, self.original.trim());
    }
}

fn vmstat(name: &str) -> u64 {
    std::fs::read_to_string("/proc/vmstat")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

fn sum_u64<'a>(rows: impl Iterator<Item = &'a Value>, field: &str) -> u64 {
    rows.map(|r| r[field].as_u64().unwrap_or(0)).sum()
}

#[test]
fn drsnoop_and_vmscan_see_memcg_reclaim() {
    require_root!();
    let _lock = lock();
    let cgroup = MemoryCgroup::create(64 << 20);
    let file = temp_path("stream");
    let mut held = Held::start(
        &fixture("pressure"),
        &["stream", file.to_str().unwrap(), "256"],
    );
    cgroup.add(held.pid());
    let drsnoop = Tracer::start(&["drsnoop", "--json"]);
    // the filters: another user's stalls only, and this thread's only
    let other_user = Tracer::start(&["drsnoop", "--json", "-u", "65534"]);
    let tid = held.pid().to_string();
    let this_thread = Tracer::start(&["drsnoop", "--json", "-t", &tid, "-U"]);
    let vmscan = Tracer::start(&["vmscan", "--json", "-i", "0.5"]);
    let status = held.go();
    assert!(status.success(), "pressure stream: {status:?}");
    let _ = std::fs::remove_file(&file);
    let stalls = drsnoop.stop();
    stalls.assert_success();
    let summary = vmscan.stop();
    summary.assert_success();
    let other_user = other_user.stop();
    other_user.assert_success();
    assert!(
        other_user.json().iter().all(|s| s["pid"] != held.pid()),
        "-u 65534 showed root's stalls: {}",
        other_user.stdout
    );
    let this_thread = this_thread.stop();
    this_thread.assert_success();
    let only_ours = this_thread.json();
    assert!(!only_ours.is_empty());
    assert!(
        only_ours
            .iter()
            .all(|s| s["tid"] == held.pid() && s["uid"] == 0),
        "{only_ours:?}"
    );

    let stalls = stalls.json();
    let ours: Vec<&Value> = stalls.iter().filter(|s| s["pid"] == held.pid()).collect();
    assert!(
        !ours.is_empty(),
        "no reclaim stall for {}: {stalls:?}",
        held.pid()
    );
    for stall in &ours {
        assert_eq!(stall["kind"], "memcg", "{stall}");
        assert_eq!(stall["comm"], "pressure", "{stall}");
        assert_eq!(stall["tid"], held.pid(), "{stall}");
        assert!(stall["latency_ns"].as_u64().unwrap() > 0, "{stall}");
    }
    // Reading the 256 MiB back alone charges 65536 pages to a cgroup that holds
    // at most 16384, so at least 49152 had to be reclaimed by this task; all it
    // ever brought in is the file twice (written, then read) and its own pages.
    let pages = sum_u64(ours.iter().copied(), "pages");
    assert!(
        (49152..=2 * 65536 + 4096).contains(&pages),
        "{pages} pages reclaimed in {} stalls",
        ours.len()
    );

    // vmscan counts the same reclaim (for the whole machine: at least ours)
    let rows = summary.json();
    let intervals = || rows.iter().filter(|r| r.get("memcg_reclaims").is_some());
    assert!(intervals().count() >= 1, "{rows:?}");
    let reclaims = sum_u64(intervals(), "memcg_reclaims");
    assert!(reclaims >= ours.len() as u64, "{reclaims} < {}", ours.len());
    assert!(sum_u64(intervals(), "memcg_reclaim_pages") >= pages);
    assert!(sum_u64(intervals(), "memcg_reclaim_ns") > 0);
    // and its histogram holds each of those reclaims once
    let histogram = rows
        .iter()
        .find(|r| r["histogram"] == "memcg_reclaim_latency")
        .unwrap_or_else(|| panic!("no memcg reclaim histogram: {rows:?}"));
    let in_buckets: u64 = histogram["log2_buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert_eq!(in_buckets, reclaims);
}

#[test]
fn swapin_counts_reads_from_swap() {
    require_root!();
    let _lock = lock();
    let _swap = SwapFile::on(256 << 20);
    let cgroup = MemoryCgroup::create(64 << 20);

    // 128 MiB written in a 64 MiB cgroup: at least 64 MiB (16384 pages) went
    // to swap and is read back. The kernel's count of pages read from swap
    // over the same time is the bound: the few pages it counted beyond ours
    // are other processes' or swap-cache races.
    let within = |ours: u64, machine: u64| ours <= machine && machine - ours <= machine / 100 + 64;

    // No swap readahead: each page read from swap is then one major fault.
    let (faults, pages, machine) = swap_in_128_mib(&cgroup, "swap", "0");
    assert!(faults >= 16384, "{faults} swap-in faults counted");
    assert!(
        within(faults, machine),
        "{faults} faults, pswpin+zswpin {machine}"
    );
    assert!(
        within(pages, machine),
        "{pages} pages, pswpin+zswpin {machine}"
    );

    // Readahead (the default page-cluster, 3: 8 pages a read): fewer faults,
    // the same pages.
    let (faults, pages, machine) = swap_in_128_mib(&cgroup, "swap", "3");
    assert!(pages >= 16384, "{pages} pages read from swap counted");
    assert!(
        within(pages, machine),
        "{pages} pages, pswpin+zswpin {machine}"
    );
    assert!(faults < pages / 2, "{faults} faults for {pages} pages");

    // madvise(MADV_WILLNEED) reads the swapped memory back with no faults
    // (the few there are come from filling it: the loader's pages swapped out)
    let (faults, pages, machine) = swap_in_128_mib(&cgroup, "willneed", "0");
    assert!(pages >= 16384, "{pages} pages read from swap counted");
    assert!(
        within(pages, machine),
        "{pages} pages, pswpin+zswpin {machine}"
    );
    assert!(faults < pages / 100, "{faults} faults for {pages} pages");
}

/// Runs `pressure MODE 128` (swap, willneed) in the cgroup under swapin with
/// vm.page-cluster set (and restored): the swap-in faults and pages counted
/// for it, and the machine's pswpin+zswpin over the run.
fn swap_in_128_mib(cgroup: &MemoryCgroup, mode: &str, page_cluster: &str) -> (u64, u64, u64) {
    let _page_cluster = Sysctl::set("/proc/sys/vm/page-cluster", page_cluster);
    let mut held = Held::start(&fixture("pressure"), &[mode, "128"]);
    cgroup.add(held.pid());
    let tracer = Tracer::start(&["swapin", "--json"]);
    let before = vmstat("pswpin") + vmstat("zswpin");
    let status = held.go();
    let after = vmstat("pswpin") + vmstat("zswpin");
    assert!(
        status.success(),
        "pressure swap (checks every page): {status:?}"
    );
    let finished = tracer.stop();
    finished.assert_success();
    let rows = finished.json();
    let ours = || {
        rows.iter()
            .filter(|r| r["pid"] == held.pid() && r["comm"] == "pressure")
    };
    let (faults, pages) = (sum_u64(ours(), "count"), sum_u64(ours(), "pages"));
    // the machine-wide figures are reported alongside, and agree
    let reported = sum_u64(rows.iter(), "machine_pswpin") + sum_u64(rows.iter(), "machine_zswpin");
    assert!(
        reported >= pages,
        "reported {reported}, counted {pages}: {rows:?}"
    );
    (faults, pages, after - before)
}

#[test]
fn pressure_tools_print_nothing_misleading_when_idle() {
    require_root!();
    let _lock = lock();
    // this test process reclaims and swaps nothing while it waits
    let me = std::process::id().to_string();
    let finished = run(&["drsnoop", "--json", "-p", &me, "-d", "0.5"]);
    finished.assert_success();
    assert_eq!(finished.stdout, "", "no stall, no output");
    let finished = run(&["drsnoop", "-p", &me, "-d", "0.5"]);
    finished.assert_success();
    assert_eq!(
        finished.stdout.lines().collect::<Vec<_>>(),
        ["COMM             PID     TID       LAT(ms)   PAGES KIND"],
        "the header alone"
    );

    let finished = run(&["vmscan", "--json", "-p", &me, "-d", "0.5", "-i", "10"]);
    finished.assert_success();
    let rows = finished.json();
    assert_eq!(
        rows.len(),
        1,
        "one (partial) interval, no histogram: {rows:?}"
    );
    for field in [
        "slab_ns",
        "direct_reclaim_ns",
        "memcg_reclaim_ns",
        "direct_reclaims",
        "memcg_reclaims",
    ] {
        assert_eq!(rows[0][field], 0, "{field}: {rows:?}");
    }

    let finished = run(&["swapin", "--json", "-p", &me, "-d", "0.5"]);
    finished.assert_success();
    let rows = finished.json();
    assert!(
        rows.iter().all(|r| r.get("count").is_none()),
        "no swap-in counted: {rows:?}"
    );
}
