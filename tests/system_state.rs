//! Tests that change system-wide state (tracefs mount, huge pages). They run
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
    if !root_tests_enabled() {
        return;
    }
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
    if !root_tests_enabled() {
        return;
    }
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
    let flags: Vec<&str> = hits[0]["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(
        flags,
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
    if !root_tests_enabled() {
        return;
    }
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
    if !root_tests_enabled() {
        return;
    }
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
    if !root_tests_enabled() {
        return;
    }
    let _lock = lock();
    let finished = run(&["oomkill", "-d", "0.5"]);
    finished.assert_success();
    assert_eq!(finished.stdout, "", "no OOM kill, no output");
}
