//! oomkill against a real OOM kill in a memory cgroup, and with none (root).
//! The tests change system-wide state (a memory cgroup) or need no OOM kill
//! beside them: each takes the machine-wide lock.

mod common;

use common::system::*;
use common::*;

#[test]
fn oomkill_reports_a_memcg_kill() {
    require_tool!("oomkill");
    let _lock = lock_system_state();
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
    require_tool!("oomkill");
    let _lock = lock_system_state();
    let finished = run(&["oomkill", "-d", "0.5"]);
    finished.assert_success();
    assert_eq!(finished.stdout, "", "no OOM kill, no output");
}
