//! ffaults and fmapfault against workloads with known fault counts (root).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::system::*;
use common::*;
use serde_json::Value;

/// JSON rows of `TOOL --json [extra] -- toucher ARGS`, and the toucher's pid
/// (null from tools that count by name).
fn count_faults(tool: &str, extra: &[&str], toucher_args: &[&str]) -> (Value, Vec<Value>) {
    let mut args = vec![tool, "--json"];
    args.extend_from_slice(extra);
    let finished = run_on(&args, "toucher", toucher_args);
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
    require_tool!("ffaults");
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
    // the loader's faults on its own files are attributed to them, and the
    // first touches of the main stack to [stack]
    assert!(faults_on(&rows, &pid, "libc.so.6") > 0, "{rows:?}");
    assert!(faults_on(&rows, &pid, "[stack]") > 0, "{rows:?}");
}

#[test]
fn shared_file_writes_are_1024_faults_on_the_file() {
    require_tool!("ffaults");
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
    require_tool!("ffaults");
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
    require_tool!("ffaults");
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
    require_tool!("ffaults");
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

/// `faults --json [extra] -- toucher anon 16`: the toucher's rows.
fn stack_rows(extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["faults", "--json"];
    args.extend_from_slice(extra);
    let finished = run_on(&args, "toucher", &["anon", "16"]);
    finished.assert_success();
    finished
        .json()
        .into_iter()
        .filter(|r| r["comm"] == "toucher")
        .collect()
}

#[test]
fn faults_names_the_touching_function_after_the_process_exited() {
    require_tool!("faults");
    // the report comes after the command exited: symbolized from the mappings
    // the BPF side sent at its exit
    let rows = stack_rows(&[]);
    let top = rows
        .iter()
        .max_by_key(|r| r["count"].as_u64().unwrap())
        .unwrap();
    let stack = stack_frames(top);
    assert!(stack[0].starts_with("touch_pages+0x"), "{stack:?}");
    assert!(stack[0].ends_with("[toucher]"), "{stack:?}");
    let on_stack: u64 = rows
        .iter()
        .filter(|r| r["stack"] == top["stack"])
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    assert_eq!(on_stack, 4096, "one fault per touched page: {rows:?}");
}

#[test]
fn faults_folded_and_flame_graph() {
    require_tool!("faults");
    let toucher = fixture("toucher");
    let svg = temp_path("faults.svg");
    let finished = run(&[
        "faults",
        "--folded",
        "--svg",
        svg.to_str().unwrap(),
        "--",
        toucher.to_str().unwrap(),
        "anon",
        "16",
    ]);
    finished.assert_success();
    let line = finished
        .stdout
        .lines()
        .find(|l| l.contains("touch_pages"))
        .unwrap_or_else(|| panic!("{}", finished.stdout));
    let (frames, count) = line.rsplit_once(' ').unwrap();
    assert_eq!(count, "4096");
    assert!(frames.starts_with("toucher;"), "{frames}");
    assert!(
        frames
            .split(';')
            .next_back()
            .unwrap()
            .starts_with("touch_pages+0x"),
        "{frames}"
    );

    // --source: file and line from the fixture's debug information
    let finished = run(&[
        "faults",
        "--folded",
        "--source",
        "--",
        toucher.to_str().unwrap(),
        "anon",
        "16",
    ]);
    finished.assert_success();
    assert!(
        finished.stdout.contains("(toucher.c:"),
        "{}",
        finished.stdout
    );

    let svg_text = std::fs::read_to_string(&svg).unwrap();
    assert!(svg_text.starts_with("<?xml"), "not an SVG");
    assert!(svg_text.contains("<svg") && svg_text.trim_end().ends_with("</svg>"));
    assert!(svg_text.contains("touch_pages"));
    let _ = std::fs::remove_file(svg);
}

#[test]
fn faults_pprof_counts_each_fault_on_its_stack() {
    require_tool!("faults");
    let profile = temp_path("faults.pb.gz");
    let path = profile.to_str().unwrap();
    run_on(&["faults", "--pprof", path], "toucher", &["anon", "16"]).assert_success();
    // 16 MiB of fresh anonymous memory touched a page at a time
    assert_eq!(pprof_flat(&profile, "faults", "touch_pages"), "4096");
    let raw = go_pprof(&["-raw"], &profile);
    assert!(raw.contains("comm:[toucher]"), "{raw}");
    let _ = std::fs::remove_file(&profile);
}

#[test]
fn faults_kernel_stacks_are_optional() {
    require_tool!("faults");
    let rows = stack_rows(&[]);
    assert!(rows.iter().all(|r| r["kernel_stack"] == Value::Null));
    let rows = stack_rows(&["-K"]);
    // these faults are taken in user mode: no kernel stack of their own
    assert!(rows
        .iter()
        .any(|r| r["kernel_stack"] == serde_json::json!(["[fault in user mode]"])));

    // read(2) into untouched memory: the kernel's copy to user faults, with a kernel stack
    let toucher = fixture("toucher");
    let file = temp_path("readinto.dat");
    let finished = run(&[
        "faults",
        "--json",
        "-K",
        "--",
        toucher.to_str().unwrap(),
        "readinto",
        file.to_str().unwrap(),
        "4",
    ]);
    finished.assert_success();
    let rows = finished.json();
    let toucher_rows = || rows.iter().filter(|r| r["comm"] == "toucher");
    let in_read: u64 = toucher_rows()
        .filter(|r| {
            r["kernel_stack"].is_array()
                && strings(&r["kernel_stack"])
                    .iter()
                    .any(|f| f.contains("read"))
        })
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    // a kernel stack that found no room (a store not preallocated may fail
    // to allocate in a burst of faults) is shown as lost and said on stderr
    let lost_in_read: u64 = toucher_rows()
        .filter(|r| {
            strings(&r["kernel_stack"]) == ["[stack lost: the stack store was full]"]
                && strings(&r["stack"]).iter().any(|f| f.contains("read"))
        })
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    assert_eq!(
        in_read + lost_in_read,
        1024,
        "4 MiB copied into 1024 fresh pages: {}",
        finished.stdout
    );
    assert!(in_read >= 1000, "{}", finished.stdout);
    if lost_in_read > 0 {
        assert!(
            finished.stderr.contains("[stack lost]"),
            "a lost stack not said: {}",
            finished.stderr
        );
    }
}

#[test]
fn a_full_stack_store_is_said_once() {
    require_tool!("faults");
    // one stack fits: the toucher's other stacks (the loader's) are lost
    let finished = run_on(
        &["faults", "--json", "--stack-storage-size", "1"],
        "toucher",
        &["anon", "16"],
    );
    finished.assert_success();
    let about_stacks: Vec<&str> = finished
        .stderr
        .lines()
        // (not the notice of a frame-pointer walk, where .eh_frame's can't load)
        .filter(|l| {
            l.contains("stack") && !l.contains("[truncated]") && !l.contains("frame pointers")
        })
        .collect();
    assert_eq!(about_stacks.len(), 1, "{}", finished.stderr);
    assert!(
        about_stacks[0].contains("stacks lost: the stack store was full")
            && about_stacks[0].contains("raise --stack-storage-size"),
        "{}",
        finished.stderr
    );
    assert!(finished
        .json()
        .iter()
        .any(|r| strings(&r["stack"]) == ["[stack lost: the stack store was full]"]));
}

/// `TOOL_ARGS -- spawner MODE RUNS PAUSE_MS PIDFILE toucher anon 1`: RUNS
/// touchers one after the other, each faulting 256 anonymous pages. The
/// finished trace and the touchers' pids.
fn spawn_touchers(
    tool_args: &[&str],
    mode: &str,
    runs: u32,
    pause_ms: u32,
) -> (Finished, Vec<u64>) {
    let spawner = fixture("spawner");
    let toucher = fixture("toucher");
    let pid_file = temp_path("spawned.pids");
    let (runs, pause) = (runs.to_string(), pause_ms.to_string());
    let mut args = tool_args.to_vec();
    args.extend([
        "--",
        spawner.to_str().unwrap(),
        mode,
        &runs,
        &pause,
        pid_file.to_str().unwrap(),
        toucher.to_str().unwrap(),
        "anon",
        "1",
    ]);
    let finished = run(&args);
    finished.assert_success();
    let pids = std::fs::read_to_string(&pid_file)
        .unwrap()
        .lines()
        .map(|line| line.parse().unwrap())
        .collect();
    let _ = std::fs::remove_file(pid_file);
    (finished, pids)
}

#[test]
fn count_slots_of_exited_processes_are_reused() {
    require_tool!("ffaults");
    // 150 short processes one after the other, 5 ms apart, each faulting
    // 256 anonymous pages and taking about 10 count slots: five times the
    // 300 there are. Started with fork and exec, and with posix_spawn, whose
    // vfork child faults in its parent's address space before it execs.
    for mode in ["fork", "spawn"] {
        let (finished, pids) = spawn_touchers(
            &["ffaults", "--json", "-i", "0.3", "--max-entries", "300"],
            mode,
            150,
            5,
        );
        // never more than three processes alive at once: nothing is lost
        assert!(
            !finished.stderr.contains("lost"),
            "{mode}: {}",
            finished.stderr
        );
        assert_eq!(pids.len(), 150, "{mode}");
        let rows = finished.json();
        for pid in &pids {
            // every one reported, once: its 256 pages and the loader's few
            let anon = faults_on(&rows, &Value::from(*pid), "[anon]");
            assert!(
                (256..=256 + 64).contains(&anon),
                "{mode}: toucher {pid} (of {pids:?}): {anon} [anon] faults"
            );
        }
        let reports: HashSet<u64> = rows
            .iter()
            .filter(|r| r["comm"] == "toucher")
            .map(|r| r["time_ns"].as_u64().unwrap())
            .collect();
        // over 0.75 s: two interval reports and the last
        assert!(reports.len() >= 3, "{mode}: {} reports", reports.len());
    }
}

#[test]
fn faults_deletes_the_counts_it_reported() {
    require_tool!("faults");
    // the children are gone before the report: their stacks are named
    // from their mappings at exit
    require_no_limit!("faults", "gone before the report");
    // 30 processes, one every 200 ms, each with about 55 (stack, kind)
    // counts: three times the 600 the map holds. Each report reads and
    // deletes its counts, so those of exited processes don't fill it.
    let (finished, pids) = spawn_touchers(
        &["faults", "--json", "-i", "0.3", "--max-entries", "600"],
        "fork",
        30,
        200,
    );
    assert!(!finished.stderr.contains("lost"), "{}", finished.stderr);
    assert_eq!(pids.len(), 30);
    let rows = finished.json();
    for pid in &pids {
        let touched: u64 = rows
            .iter()
            .filter(|r| r["pid"] == *pid && has_frame(r, "touch_pages"))
            .map(|r| r["count"].as_u64().unwrap())
            .sum();
        assert_eq!(touched, 256, "toucher {pid}: {}", finished.stdout);
    }
}

#[test]
fn losses_are_told_when_they_start() {
    require_tool!("ffaults");
    // 4 counts can't hold a process's (its files, [anon], [stack]; its
    // stacks): counts are lost from the start, by a process every 25 ms
    // for over a second, so in every interval
    let spawner = fixture("spawner");
    let toucher = fixture("toucher");
    for tool in ["ffaults", "faults"] {
        let pid_file = temp_path("lossy.pids");
        let mut tracer = Tracer::start(&[
            tool,
            "-i",
            "0.5",
            "--max-entries",
            "4",
            "--",
            spawner.to_str().unwrap(),
            "fork",
            "40",
            "25",
            pid_file.to_str().unwrap(),
            toucher.to_str().unwrap(),
            "anon",
            "1",
        ]);
        let first = tracer.stderr_line(|l| l.contains("lost"), scaled(Duration::from_secs(60)));
        let told_while_tracing = tracer.running();
        let finished = tracer.wait();
        finished.assert_success();
        let _ = std::fs::remove_file(pid_file);
        let first = first.unwrap_or_else(|| panic!("{tool}: no loss told: {}", finished.stderr));
        // HH:MM:SS: the last reading that found nothing lost
        let since = first
            .strip_prefix(&format!("{tool}: counts lost since "))
            .and_then(|rest| rest.strip_suffix(": the counting map is full (raise --max-entries)"))
            .unwrap_or_else(|| panic!("{tool}: {first:?}"));
        assert!(
            since.len() == 8
                && since.bytes().enumerate().all(|(i, b)| if i % 3 == 2 {
                    b == b':'
                } else {
                    b.is_ascii_digit()
                }),
            "{tool}: {first:?}"
        );
        assert!(
            told_while_tracing,
            "{tool}: told only at the end: {}",
            finished.stderr
        );
        // once while the losses go on, then the total at the end
        let lines: Vec<&str> = finished.stderr.lines().collect();
        assert_eq!(
            lines.iter().filter(|l| l.contains("lost since")).count(),
            1,
            "{tool}: {}",
            finished.stderr
        );
        assert!(
            lines.iter().any(|l| l.starts_with(&format!("{tool}: "))
                && l.ends_with(" counts lost: the counting map was full (raise --max-entries)")),
            "{tool}: {}",
            finished.stderr
        );
    }
}

#[test]
fn cgroup_limits_the_trace_to_a_cgroup_and_those_below_it() {
    require_tool!("ffaults");
    let _lock = lock_system_state();
    // the memory controller's hierarchy (v1) or the unified one (v2): the
    // filter reads the task's cgroup in the hierarchy the path is in
    let cgroup = MemoryCgroup::create(1 << 30);
    let inner = ChildCgroup::create(cgroup.dir(), "inner");
    let toucher = fixture("toucher");
    let mut inside = Held::start(&toucher, &["anon", "16"]);
    let mut below = Held::start(&toucher, &["anon", "8"]);
    let mut outside = Held::start(&toucher, &["anon", "4"]);
    cgroup.add(inside.pid());
    inner.add(below.pid());
    let dir = cgroup.dir().to_str().unwrap();
    let tracer = Tracer::start(&["ffaults", "--json", "--cgroup", dir, "--show-cgroup"]);
    for held in [&mut inside, &mut below, &mut outside] {
        assert!(held.go().success());
    }
    let finished = tracer.stop();
    finished.assert_success();
    let rows = finished.json();
    let anon = |held: &Held| faults_on(&rows, &Value::from(held.pid()), "[anon]");
    // a page at a time, and a few of the C library's own
    assert!((4096..4096 + 64).contains(&anon(&inside)), "{rows:?}");
    assert!((2048..2048 + 64).contains(&anon(&below)), "{rows:?}");
    assert_eq!(anon(&outside), 0, "traced outside the cgroup: {rows:?}");
    let pids: HashSet<u64> = rows.iter().filter_map(|r| r["pid"].as_u64()).collect();
    let ours = HashSet::from([u64::from(inside.pid()), u64::from(below.pid())]);
    assert!(pids.is_subset(&ours), "other processes traced: {pids:?}");
    // --show-cgroup: each count's memory cgroup, and no container
    let inner = format!("{}/inner", cgroup.path);
    for row in &rows {
        let expected = match row["pid"] == inside.pid() {
            true => cgroup.path.as_str(),
            false => inner.as_str(),
        };
        assert_eq!(row["cgroup"], expected, "{row}");
        assert_eq!(row["container"], Value::Null, "{row}");
    }
}
