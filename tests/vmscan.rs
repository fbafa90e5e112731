//! vmscan under real memory cgroup reclaim (tests/fixtures/pressure.c), and
//! idle (root). The tests change system-wide state (a memory cgroup) or need
//! none changed beside them: each takes the machine-wide lock.

mod common;

use common::system::*;
use common::*;

#[test]
fn vmscan_sees_memcg_reclaim() {
    require_tool!("drsnoop");
    let _lock = lock_system_state();
    // drsnoop on the same run is the reference: the stream's own stalls
    let (pid, finished) = memcg_stream_256_mib(|_| {
        vec![
            Tracer::start(&["drsnoop", "--json"]),
            Tracer::start(&["vmscan", "--json", "-i", "0.5"]),
        ]
    });
    let [stalls, summary] = &finished[..] else {
        unreachable!()
    };
    let (stall_count, pages) = memcg_stream_stalls(stalls, pid);

    // vmscan counts the same reclaim (for the whole machine: at least ours)
    let rows = summary.json();
    let intervals = || rows.iter().filter(|r| r.get("memcg_reclaims").is_some());
    assert!(intervals().count() >= 1, "{rows:?}");
    let reclaims = sum_u64(intervals(), "memcg_reclaims");
    assert!(reclaims >= stall_count, "{reclaims} < {stall_count}");
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
fn vmscan_prints_a_zero_interval_when_idle() {
    require_tool!("vmscan");
    let _lock = lock_system_state();
    // this test process reclaims nothing while it waits
    let me = std::process::id().to_string();
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
}
