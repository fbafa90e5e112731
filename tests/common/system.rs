//! For the tests that change system-wide state (the tracefs mount, huge
//! pages, memory cgroups, swap, sysctls): a machine-wide lock that runs them
//! one at a time, across test binaries and concurrent `cargo test` runs, and
//! guards that put back what they changed even when the test fails (Drop).

use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::{fixture, temp_path, Finished, Held, Tracer};

/// The lock file: in /run, where only root can create it.
pub const LOCK_PATH: &str = "/run/memtrace-tests.lock";

/// The machine-wide lock of the tests that change system-wide state, held
/// (flock(2), LOCK_EX) until dropped. Each test takes it after its root gate
/// and before any guard, so the guards put things back before it is let go.
/// A lock of our own open file description: it keeps two tests of one test
/// binary apart as well as two processes, and the kernel lets go of it when
/// a test process dies.
pub struct SystemLock {
    _file: File,
}

/// Takes the machine-wide lock, waiting for whoever holds it.
pub fn lock_system_state() -> SystemLock {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        // never a symlink someone planted there; not inherited by the
        // processes the test starts (they would hold the lock past it)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(LOCK_PATH)
        .unwrap_or_else(|e| panic!("opening the test lock {LOCK_PATH}: {e}"));
    let meta = file.metadata().unwrap();
    assert!(
        meta.file_type().is_file() && meta.uid() == 0,
        "{LOCK_PATH} is not a regular file of root's: {meta:?}"
    );
    let fd = file.as_raw_fd();
    // SAFETY: flock(2) on an open file descriptor we own.
    if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        eprintln!("waiting for {LOCK_PATH} (another test changing system state)");
        // SAFETY: as above.
        while unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
            let err = std::io::Error::last_os_error();
            assert_eq!(
                err.kind(),
                std::io::ErrorKind::Interrupted,
                "locking {LOCK_PATH}: {err}"
            );
        }
    }
    SystemLock { _file: file }
}

pub fn mounted_fs_at(path: &str) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&path)).then(|| fields[2].to_string())
    })
}

pub fn sh(command: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(command)
        .status()
        .unwrap()
        .success()
}

/// Puts tracefs back as it was: mounted or not.
pub struct TracefsGuard {
    pub was_mounted: bool,
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

/// Raises vm.nr_hugepages and mounts hugetlbfs; Drop puts both back.
pub struct HugePages {
    original: String,
    pub mount: PathBuf,
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

impl HugePages {
    pub fn reserve(extra: u64) -> HugePages {
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

/// A child memory cgroup of this test's own, with a limit; Drop kills what is
/// left in it and removes it.
pub struct MemoryCgroup {
    dir: PathBuf,
    /// Its path as the kernel names it, from the hierarchy's root.
    pub path: String,
}

impl MemoryCgroup {
    pub fn create(limit: u64) -> MemoryCgroup {
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

    pub fn add(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A cgroup made below another for a test, removed when dropped (drop it
/// before its parent: a cgroup with children can't be removed).
pub struct ChildCgroup(pub PathBuf);

impl ChildCgroup {
    pub fn create(parent: &Path, name: &str) -> ChildCgroup {
        let dir = parent.join(name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        ChildCgroup(dir)
    }

    pub fn add(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
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

/// A swap file, on for the test, off and removed after.
pub struct SwapFile {
    path: PathBuf,
}

impl SwapFile {
    /// In MEMTRACE_TEST_SWAP_DIR when set (the kernel-matrix VMs' ext4 scratch
    /// disk: their target/tmp is 9p, which swapon refuses), else in target/tmp.
    pub fn on(bytes: u64) -> SwapFile {
        let mut path = temp_path("swapfile");
        if let Some(dir) = std::env::var_os("MEMTRACE_TEST_SWAP_DIR") {
            path = PathBuf::from(dir).join(path.file_name().unwrap());
        }
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
pub struct Sysctl {
    file: &'static str,
    original: String,
}

impl Sysctl {
    pub fn set(file: &'static str, value: &str) -> Sysctl {
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

/// A counter of /proc/vmstat; 0 where this kernel has none.
pub fn vmstat(name: &str) -> u64 {
    std::fs::read_to_string("/proc/vmstat")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// The sum of a numeric field over JSON rows (0 where a row has none).
pub fn sum_u64<'a>(rows: impl Iterator<Item = &'a Value>, field: &str) -> u64 {
    rows.map(|r| r[field].as_u64().unwrap_or(0)).sum()
}

/// The pressure fixture writing a 256 MiB file and reading it back (see
/// tests/fixtures/pressure.c) in a fresh memory cgroup limited to 64 MiB,
/// with the tracers `start` gives (it is told the fixture's pid) attached
/// before it goes and stopped after it ended, each checked to have ended
/// well: the fixture's pid and the tracers' output, in their order. Take the
/// lock first.
pub fn memcg_stream_256_mib(start: impl FnOnce(u32) -> Vec<Tracer>) -> (u32, Vec<Finished>) {
    let cgroup = MemoryCgroup::create(64 << 20);
    let file = temp_path("stream");
    let mut held = Held::start(
        &fixture("pressure"),
        &["stream", file.to_str().unwrap(), "256"],
    );
    cgroup.add(held.pid());
    let tracers = start(held.pid());
    let status = held.go();
    assert!(status.success(), "pressure stream: {status:?}");
    let _ = std::fs::remove_file(&file);
    let finished: Vec<Finished> = tracers.into_iter().map(Tracer::stop).collect();
    for f in &finished {
        f.assert_success();
    }
    (held.pid(), finished)
}

/// drsnoop's JSON stalls of `pid` in a `memcg_stream_256_mib` run, checked:
/// memcg reclaim by that task with a latency, and a sum of pages reclaimed
/// that the stream can explain. Their count and that sum.
pub fn memcg_stream_stalls(drsnoop: &Finished, pid: u32) -> (u64, u64) {
    let stalls = drsnoop.json();
    let ours: Vec<&Value> = stalls.iter().filter(|s| s["pid"] == pid).collect();
    assert!(!ours.is_empty(), "no reclaim stall for {pid}: {stalls:?}");
    for stall in &ours {
        assert_eq!(stall["kind"], "memcg", "{stall}");
        assert_eq!(stall["comm"], "pressure", "{stall}");
        assert_eq!(stall["tid"], pid, "{stall}");
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
    (ours.len() as u64, pages)
}
