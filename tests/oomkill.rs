//! oomkill against a real OOM kill in a memory cgroup, and with none (root).
//! The tests change system-wide state (a memory cgroup) or need no OOM kill
//! beside them: each takes the machine-wide lock.

mod common;

use common::system::*;
use common::*;

/// A toucher held before it touches 256 MiB, in a test cgroup limited to 64 MiB.
fn toucher_in_small_cgroup() -> (MemoryCgroup, Held) {
    let cgroup = MemoryCgroup::create(64 << 20);
    let held = Held::start(&fixture("toucher"), &["anon", "256"]);
    cgroup.add(held.pid());
    (cgroup, held)
}

/// Lets the held toucher go, which the OOM killer must end; then waits a
/// moment for the kill's record to be read.
fn go_and_be_killed(held: &mut Held) {
    let status = held.go();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "256 MiB in a 64 MiB cgroup must be OOM-killed: {status:?}"
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
}

#[test]
fn oomkill_reports_a_memcg_kill() {
    require_tool!("oomkill");
    let _lock = lock_system_state();
    let (cgroup, mut held) = toucher_in_small_cgroup();
    let tracer = Tracer::start(&["oomkill", "--json"]);
    go_and_be_killed(&mut held);
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
fn cgroup_selects_the_victims_by_their_memory_cgroup() {
    require_tool!("oomkill");
    let _lock = lock_system_state();
    let (cgroup, mut held) = toucher_in_small_cgroup();
    let dir = cgroup.dir().to_str().unwrap();
    // the victim's cgroup, and a parent of it: the kill; one beside it: none
    let parent = cgroup.dir().parent().unwrap().to_str().unwrap();
    let beside = ChildCgroup::create(
        cgroup.dir().parent().unwrap(),
        &format!("memtrace-beside-{}", std::process::id()),
    );
    let beside_dir = beside.0.to_str().unwrap().to_string();
    let tracers: Vec<Tracer> = [dir, parent, beside_dir.as_str()]
        .iter()
        .map(|path| Tracer::start(&["oomkill", "--json", "--cgroup", path]))
        .collect();
    go_and_be_killed(&mut held);
    let seen: Vec<usize> = tracers
        .into_iter()
        .map(|tracer| {
            let finished = tracer.stop();
            finished.assert_success();
            let kills = finished.json();
            kills
                .iter()
                .filter(|k| k["victim_pid"] == held.pid())
                .count()
        })
        .collect();
    assert_eq!(
        seen,
        [1, 1, 0],
        "kills seen with --cgroup: the victim's, its parent, beside it"
    );
    drop(beside);

    // a path outside the memory controller's hierarchy: one line, status 1
    let refused = memtrace()
        .args(["oomkill", "--cgroup", "/proc"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("not a directory in the memory controller's hierarchy"),
        "{stderr}"
    );
}

#[test]
fn oomkill_prints_nothing_when_nothing_happens() {
    require_tool!("oomkill");
    let _lock = lock_system_state();
    let finished = run(&["oomkill", "-d", "0.5"]);
    finished.assert_success();
    assert_eq!(finished.stdout, "", "no OOM kill, no output");
}
