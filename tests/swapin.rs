//! swapin against memory read back from a temporary swap file in a memory
//! cgroup, with swap readahead off and on and with MADV_WILLNEED, and idle
//! (root). The tests change system-wide state (swap, a memory cgroup,
//! vm.page-cluster) or need none changed beside them: each takes the
//! machine-wide lock.

mod common;

use common::system::*;
use common::*;

#[test]
fn swapin_counts_reads_from_swap() {
    require_tool!("swapin");
    let _lock = lock_system_state();
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
fn swapin_counts_nothing_when_idle() {
    require_tool!("swapin");
    let _lock = lock_system_state();
    // this test process swaps nothing while it waits
    let me = std::process::id().to_string();
    let finished = run(&["swapin", "--json", "-p", &me, "-d", "0.5"]);
    finished.assert_success();
    let rows = finished.json();
    assert!(
        rows.iter().all(|r| r.get("count").is_none()),
        "no swap-in counted: {rows:?}"
    );
}
