//! shmsnoop against a real System V shared memory workload on this kernel (root).

mod common;

use common::*;
use serde_json::Value;

/// A key no segment has: shmget(KEY, 4096, 0) fails with ENOENT.
fn missing_key() -> String {
    let key = 0x5e00_0000u32 | (std::process::id() & 0xff_ffff);
    let segments = std::fs::read_to_string("/proc/sysvipc/shm").unwrap_or_default();
    let taken = segments
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|k| k.parse::<i64>().ok())
        .any(|k| k as u32 == key);
    assert!(!taken, "key {key:#x} is in use");
    format!("{key:#x}")
}

#[test]
fn shm_cycle_shows_each_call_with_its_arguments_and_result() {
    require_tool!("shmsnoop");
    let key = missing_key();
    let finished = run_on(&["shmsnoop", "--json"], "shmer", &["cycle", &key]);
    finished.assert_success();
    let events = finished.json();
    let pid = events
        .iter()
        .find(|e| e["comm"] == "shmer")
        .unwrap_or_else(|| panic!("no event from the fixture: {}", finished.stdout))["pid"]
        .as_u64()
        .unwrap();
    let mine = of_pid(&events, pid);
    let calls: Vec<&str> = mine.iter().map(|e| e["sys"].as_str().unwrap()).collect();
    assert_eq!(
        calls,
        ["shmget", "shmat", "shmdt", "shmctl", "shmget"],
        "{mine:?}"
    );
    let (get, at, dt, ctl, failed) = (mine[0], mine[1], mine[2], mine[3], mine[4]);
    assert!(mine.iter().all(|e| e["tid"] == pid && e["comm"] == "shmer"));

    assert_eq!(get["key"], 0);
    assert_eq!(get["size"], 1048576);
    assert_eq!(get["shmflg"], 0o1000 | 0o600);
    assert_eq!(get["flags"], serde_json::json!(["IPC_CREAT"]));
    assert_eq!(get["mode"], 0o600);
    assert_eq!(get["errno"], Value::Null);
    let shmid = get["ret"].as_i64().unwrap();
    assert!(shmid >= 0);

    assert_eq!(at["shmid"], shmid);
    assert_eq!(at["shmaddr"], 0);
    assert_eq!(at["shmflg"], 0);
    assert_eq!(at["flags"], serde_json::json!([]));
    assert_eq!(at["errno"], Value::Null);
    let addr = at["ret"].as_u64().unwrap();
    assert!(addr > 0 && addr % 4096 == 0, "{at}");

    assert_eq!(dt["shmaddr"], addr);
    assert_eq!(dt["ret"], 0);

    assert_eq!(ctl["shmid"], shmid);
    assert_eq!(ctl["cmd_name"], "IPC_RMID");
    assert_eq!(ctl["cmd"].as_i64().unwrap() & !0x100, 0);
    assert_eq!(ctl["buf"], 0);
    assert_eq!(ctl["ret"], 0);
    assert_eq!(ctl["errno"], Value::Null);

    let key_value = u64::from_str_radix(key.trim_start_matches("0x"), 16).unwrap();
    assert_eq!(failed["key"], key_value);
    assert_eq!(failed["size"], 4096);
    assert_eq!(failed["shmflg"], 0);
    assert_eq!(failed["ret"], -1);
    assert_eq!(failed["errno"], "ENOENT");

    // what the fixture itself saw
    let said = format!("shmid {shmid} addr {addr:#x} tid {pid}");
    assert!(
        finished.stderr.contains(&said),
        "{said}: {}",
        finished.stderr
    );
}

#[test]
fn table_has_bcc_columns_and_errno_names() {
    require_tool!("shmsnoop");
    let key = missing_key();
    let finished = run_on(&["shmsnoop", "-T"], "shmer", &["cycle", &key]);
    finished.assert_success();
    let lines: Vec<&str> = finished.stdout.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["TIME(s)", "PID", "TID", "COMM", "SYS", "RET", "ARGs"]
    );
    let rows: Vec<&str> = lines[1..]
        .iter()
        .copied()
        .filter(|l| l.split_whitespace().nth(3) == Some("shmer"))
        .collect();
    assert_eq!(rows.len(), 5, "{}", finished.stdout);
    assert!(
        rows[0].contains("SHMGET")
            && rows[0].ends_with(" key: 0x0, size: 1048576, shmflg: 0x380 (IPC_CREAT|0600)"),
        "{}",
        rows[0]
    );
    assert!(rows[1].contains(" SHMAT ") && rows[1].contains("shmaddr: 0x0, shmflg: 0x0"));
    assert!(rows[2].contains(" SHMDT ") && rows[2].contains(" 0 shmaddr: 0x7"));
    assert!(
        rows[3].contains(" SHMCTL ") && rows[3].contains("cmd: 0 (IPC_RMID), buf: 0x0"),
        "{}",
        rows[3]
    );
    assert!(
        rows[4].contains(&format!(" -1 ENOENT key: {key}, size: 4096, shmflg: 0x0")),
        "{}",
        rows[4]
    );
    // the shmid shmget returned is the one shmat and shmctl were given
    let shmid = rows[0].split_whitespace().nth(5).unwrap();
    assert!(rows[1].contains(&format!("shmid: {shmid},")), "{}", rows[1]);
    assert!(rows[3].contains(&format!("shmid: {shmid},")), "{}", rows[3]);
    // shmat's result is shmdt's argument
    let addr = rows[1].split_whitespace().nth(5).unwrap();
    assert!(
        rows[2].ends_with(&format!("shmaddr: {addr}")),
        "{}",
        rows[2]
    );
}

#[test]
fn tid_filter_keeps_one_thread() {
    require_tool!("shmsnoop");
    let key = missing_key();
    let mut held = Held::start(&fixture("shmer"), &["thread", &key]);
    let tid = held.pid().to_string();
    let tracer = Tracer::start(&["shmsnoop", "--json", "-t", &tid]);
    assert!(held.go().success());
    let finished = tracer.stop();
    finished.assert_success();
    let events = finished.json();
    // the main thread's failing shmget, not the second thread's
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["tid"], held.pid());
    assert_eq!(events[0]["pid"], held.pid());
    assert_eq!(events[0]["sys"], "shmget");
    assert_eq!(events[0]["errno"], "ENOENT");
}

/// Calls before and after the move to the per-call tracepoints (after the
/// trace's first second: engine/syscalls.rs) are each reported once.
#[test]
fn calls_across_the_move_to_per_call_tracepoints_are_each_reported_once() {
    require_tool!("shmsnoop");
    let key = missing_key();
    // 150 calls 10 ms apart: over a second and a half
    let finished = run_on(
        &["shmsnoop", "--json", "-v"],
        "shmer",
        &["paced", &key, "150", "10000"],
    );
    finished
        .assert_success()
        .assert_moved_to_per_call_tracepoints();
    let events = finished.json();
    let failed_gets = events
        .iter()
        .filter(|e| e["comm"] == "shmer" && e["sys"] == "shmget" && e["errno"] == "ENOENT")
        .count();
    assert_eq!(failed_gets, 150, "{events:?}");
}
