//! mmapfiles against real workloads on this kernel (root).

mod common;

use common::*;

#[test]
fn counts_a_files_mappings_exactly() {
    require_tool!("mmapfiles");
    let file = temp_path("counted.dat");
    let finished = run_on(
        &["mmapfiles", "--json"],
        "mapper",
        &["repeat", file.to_str().unwrap(), "37"],
    );
    finished.assert_success();
    let rows = finished.json();
    let name = file.file_name().unwrap().to_str().unwrap();
    let dir = file.parent().unwrap();
    let row = rows
        .iter()
        .find(|r| r["file"] == name)
        .unwrap_or_else(|| panic!("{name} not counted: {rows:?}"));
    assert_eq!(row["count"], 37);
    assert_eq!(row["parent"], dir.file_name().unwrap().to_str().unwrap());
    assert_eq!(
        row["grandparent"],
        dir.parent().unwrap().file_name().unwrap().to_str().unwrap()
    );
    // the loader's mappings of libc are counted too, and anonymous ones as [anon]
    assert!(rows.iter().any(|r| r["file"] == "libc.so.6"), "{rows:?}");
    assert!(rows
        .iter()
        .any(|r| r["file"] == "[anon]" && r["count"].as_u64().unwrap() > 0));
    // sorted by count, descending
    let counts: Vec<u64> = rows.iter().map(|r| r["count"].as_u64().unwrap()).collect();
    assert!(counts.windows(2).all(|w| w[0] >= w[1]), "{counts:?}");
    let _ = std::fs::remove_file(file);
}

#[test]
fn table_top_and_sigterm_summary() {
    require_tool!("mmapfiles");
    let mapper = fixture("mapper");
    let file = temp_path("top.dat");
    let mut held = Held::start(&mapper, &["repeat", file.to_str().unwrap(), "500"]);
    let pid = held.pid().to_string();
    let tracer = Tracer::start(&["mmapfiles", "-t", "1", "-p", &pid]);
    assert!(held.go().success());
    // SIGTERM, like Ctrl-C, prints the summary before ending
    tracer.signal(libc::SIGTERM);
    let finished = tracer.wait();
    finished.assert_success();
    let lines: Vec<&str> = finished.stdout.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(
        lines.len(),
        2,
        "header and the top row: {}",
        finished.stdout
    );
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["GRANDPARENT", "PARENT", "FILE", "COUNT"]);
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row[2], file.file_name().unwrap().to_str().unwrap());
    assert_eq!(row[3], "500");
    let _ = std::fs::remove_file(file);
}

#[test]
fn interval_reports_reset_the_counts() {
    require_tool!("mmapfiles");
    let mapper = fixture("mapper");
    let file = temp_path("interval.dat");
    let mut held = Held::start(&mapper, &["repeat", file.to_str().unwrap(), "25"]);
    let pid = held.pid().to_string();
    let tracer = Tracer::start(&["mmapfiles", "--json", "-i", "0.5", "-p", &pid]);
    assert!(held.go().success());
    let finished = tracer.wait(); // ends when the process is gone
    finished.assert_success();
    let name = file.file_name().unwrap().to_str().unwrap();
    let total: u64 = finished
        .json()
        .iter()
        .filter(|r| r["file"] == name)
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    // counted once across the reports: each report takes what it prints
    assert_eq!(total, 25, "{}", finished.stdout);
    let _ = std::fs::remove_file(file);
}

/// Mappings before and after the move to the per-call tracepoints (after the
/// trace's first second: engine/syscalls.rs) are each counted once.
#[test]
fn mappings_across_the_move_to_per_call_tracepoints_are_each_counted_once() {
    require_tool!("mmapfiles");
    let file = temp_path("paced.dat");
    // 150 mappings 10 ms apart: over a second and a half
    let finished = run_on(
        &["mmapfiles", "--json", "-v"],
        "mapper",
        &["paced", "150", "10000", file.to_str().unwrap()],
    );
    finished
        .assert_success()
        .assert_moved_to_per_call_tracepoints();
    let rows = finished.json();
    let name = file.file_name().unwrap().to_str().unwrap();
    let row = rows
        .iter()
        .find(|r| r["file"] == name)
        .unwrap_or_else(|| panic!("{name} not counted: {rows:?}"));
    assert_eq!(row["count"], 150);
    let _ = std::fs::remove_file(file);
}
