//! hfaults against a workload that faults in two huge pages of a hugetlbfs
//! file (root). It reserves huge pages: it takes the machine-wide lock.

mod common;

use common::system::*;
use common::*;

#[test]
fn hfaults_counts_two_huge_page_faults() {
    require_tool!("hfaults");
    let _lock = lock_system_state();
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
