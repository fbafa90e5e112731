//! ffaults and fmapfault against workloads with known fault counts (root).

mod common;

use common::*;
use serde_json::Value;

/// JSON rows of `TOOL --json [extra] -- toucher ARGS`, and the toucher's pid
/// (null from tools that count by name).
fn count_faults(tool: &str, extra: &[&str], toucher_args: &[&str]) -> (Value, Vec<Value>) {
    let toucher = fixture("toucher");
    let mut args = vec![tool, "--json"];
    args.extend_from_slice(extra);
    args.push("--");
    args.push(toucher.to_str().unwrap());
    args.extend_from_slice(toucher_args);
    let finished = run(&args);
    finished.assert_success();
    let rows = finished.json();
    let pid = rows
        .iter()
        .find(|r| r["comm"] == "toucher")
        .unwrap_or_else(|| panic!("no row for the toucher: {}", finished.stdout))["pid"]
        .clone();
    (pid, rows)
}

/// Faults of both kinds that rows attribute to `file` for `pid`.
fn faults_on(rows: &[Value], pid: &Value, file: &str) -> u64 {
    rows.iter()
        .filter(|r| &r["pid"] == pid && r["file"] == file)
        .map(|r| r["count"].as_u64().unwrap())
        .sum()
}

#[test]
fn anonymous_64_mib_touch_is_16384_anon_faults() {
    if !root_tests_enabled() {
        return;
    }
    let (pid, rows) = count_faults("ffaults", &[], &["anon", "64"]);
    let anon = faults_on(&rows, &pid, "[anon]");
    // 16384 touched pages; the loader and libc fault a few more anonymous pages (.bss, TLS)
    assert!(
        (16384..=16384 + 64).contains(&anon),
        "{anon} [anon] faults: {rows:?}"
    );
    for row in &rows {
        for field in ["pid", "comm", "file", "kind", "count"] {
            assert!(row.get(field).is_some(), "{field} missing: {row}");
        }
        assert!(row["kind"] == "minor" || row["kind"] == "major");
    }
    // the loader's faults on its own files are attributed to them
    assert!(faults_on(&rows, &pid, "libc.so.6") > 0, "{rows:?}");
}

#[test]
fn shared_file_writes_are_1024_faults_on_the_file() {
    if !root_tests_enabled() {
        return;
    }
    for tool in ["ffaults", "fmapfault"] {
        let file = temp_path("faulted-4m.dat");
        let name = file.file_name().unwrap().to_str().unwrap().to_string();
        let (_, rows) = count_faults(tool, &[], &["shared", file.to_str().unwrap(), "4"]);
        let on_file: u64 = rows
            .iter()
            .filter(|r| r["comm"] == "toucher" && r["file"] == name.as_str())
            .map(|r| r["count"].as_u64().unwrap())
            .sum();
        assert_eq!(on_file, 1024, "{tool}: {rows:?}");
        if tool == "fmapfault" {
            assert!(
                rows.iter()
                    .all(|r| !r["file"].as_str().unwrap().starts_with('[')),
                "fmapfault counted anonymous memory: {rows:?}"
            );
            assert!(
                rows.iter().all(|r| r["pid"] == Value::Null),
                "by name, as the book's"
            );
        }
    }
}

#[test]
fn a_new_file_mapped_at_the_same_address_gets_its_own_faults() {
    if !root_tests_enabled() {
        return;
    }
    let first = temp_path("remap-first.dat");
    let second = temp_path("remap-second.dat");
    let (pid, rows) = count_faults(
        "ffaults",
        &[],
        &["remap", first.to_str().unwrap(), second.to_str().unwrap()],
    );
    let name = |p: &std::path::Path| p.file_name().unwrap().to_str().unwrap().to_string();
    assert_eq!(faults_on(&rows, &pid, &name(&first)), 16, "{rows:?}");
    assert_eq!(faults_on(&rows, &pid, &name(&second)), 32, "{rows:?}");
}

#[test]
fn by_file_and_by_process_group_the_counts() {
    if !root_tests_enabled() {
        return;
    }
    let toucher = fixture("toucher");
    let finished = run(&[
        "ffaults",
        "--by",
        "process",
        "--",
        toucher.to_str().unwrap(),
        "anon",
        "16",
    ]);
    finished.assert_success();
    let lines: Vec<&str> = finished.stdout.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["COMM", "PID", "MINOR", "MAJOR", "FAULTS"]
    );
    let toucher_row: Vec<&str> = lines
        .iter()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells[0] == "toucher")
        .unwrap();
    let total: u64 = toucher_row[4].parse().unwrap();
    assert!((4096..=4096 + 128).contains(&total), "{}", finished.stdout);

    let finished = run(&[
        "ffaults",
        "--by",
        "file",
        "-t",
        "1",
        "--",
        toucher.to_str().unwrap(),
        "anon",
        "16",
    ]);
    finished.assert_success();
    let lines: Vec<&str> = finished.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", finished.stdout);
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["MINOR", "MAJOR", "FAULTS", "FILE"]
    );
    assert!(lines[1].ends_with("[anon]"), "{}", finished.stdout);
}

#[test]
fn interval_reports_add_up_to_the_total() {
    if !root_tests_enabled() {
        return;
    }
    let toucher = fixture("toucher");
    let mut held = Held::start(&toucher, &["anon", "32"]);
    let pid = held.pid().to_string();
    let tracer = Tracer::start(&["ffaults", "--json", "-i", "0.2", "-p", &pid]);
    assert!(held.go().success());
    let finished = tracer.wait();
    finished.assert_success();
    let rows = finished.json();
    let anon = faults_on(&rows, &Value::from(held.pid()), "[anon]");
    // counted once across the reports: each shows what came since the last
    assert!((8192..=8192 + 64).contains(&anon), "{anon}: {rows:?}");
}
