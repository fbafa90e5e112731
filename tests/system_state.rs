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

    let mapper = fixture("mapper");
    let finished = run(&[
        "mmapsnoop",
        "--json",
        "--",
        mapper.to_str().unwrap(),
        "anon64",
    ]);
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
