//! drsnoop under real memory cgroup reclaim (tests/fixtures/pressure.c), and
//! idle (root). The tests change system-wide state (a memory cgroup) or need
//! none changed beside them: each takes the machine-wide lock.

mod common;

use common::system::*;
use common::*;
use serde_json::Value;

#[test]
fn drsnoop_sees_memcg_reclaim() {
    require_tool!("drsnoop");
    let _lock = lock_system_state();
    let (pid, finished) = memcg_stream_256_mib(|pid| {
        let tid = pid.to_string();
        vec![
            Tracer::start(&["drsnoop", "--json"]),
            // the filters: another user's stalls only, and this thread's only
            Tracer::start(&["drsnoop", "--json", "-u", "65534"]),
            Tracer::start(&["drsnoop", "--json", "-t", &tid, "-U"]),
            Tracer::start(&["drsnoop", "--json", "-p", &tid, "--show-cgroup"]),
        ]
    });
    let [stalls, other_user, this_thread, with_cgroup] = &finished[..] else {
        unreachable!()
    };
    // --show-cgroup: the stream's test cgroup (MemoryCgroup's name)
    let test_cgroup = format!("/memtrace-test-{}", std::process::id());
    let named = with_cgroup.json();
    assert!(!named.is_empty());
    for stall in &named {
        let cgroup = stall["cgroup"].as_str().unwrap_or_default();
        assert!(cgroup.ends_with(&test_cgroup), "{stall}");
        assert_eq!(stall["container"], Value::Null, "{stall}");
    }
    assert!(
        other_user.json().iter().all(|s| s["pid"] != pid),
        "-u 65534 showed root's stalls: {}",
        other_user.stdout
    );
    let only_ours = this_thread.json();
    assert!(!only_ours.is_empty());
    assert!(
        only_ours.iter().all(|s| s["tid"] == pid && s["uid"] == 0),
        "{only_ours:?}"
    );
    // memcg stalls of the stream's task, with as many pages as it must have
    // reclaimed
    memcg_stream_stalls(stalls, pid);
}

#[test]
fn drsnoop_prints_nothing_when_idle() {
    require_tool!("drsnoop");
    let _lock = lock_system_state();
    // this test process reclaims nothing while it waits
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
}
