//! memleak user mode against a fixture that leaks exactly 30000 bytes (root).

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

/// `memleak --json [extra] -- leaker ARGS`: the report after the leaker exited.
fn report(extra: &[&str], leaker_args: &[&str]) -> Vec<Value> {
    let mut args = vec!["memleak", "--json"];
    args.extend_from_slice(extra);
    let finished = run_on(&args, "leaker", leaker_args);
    finished.assert_success();
    finished.json()
}

/// The rows of the final report: a slow machine (an emulated guest) has
/// interval reports before it.
fn final_rows(rows: Vec<Value>) -> Vec<Value> {
    rows.into_iter().filter(|r| r["final"] == true).collect()
}

/// The leak is reported whole, once, from leak_with(); nothing else is outstanding.
fn assert_leaks_30000(allocator: &str) {
    assert_leaks_30000_with(&[], allocator);
}

/// The same, with `extra` options for memleak.
fn assert_leaks_30000_with(extra: &[&str], allocator: &str) {
    let mut args = vec!["-o", "0"];
    args.extend_from_slice(extra);
    let rows = report(&args, &[allocator]);
    // symbolized although the leaker had exited before the report
    assert_the_leak_from_main(&rows, "leaker", allocator);
    let total: u64 = rows.iter().map(|r| r["bytes"].as_u64().unwrap()).sum();
    assert_eq!(
        total, 30000,
        "{allocator}: everything else was freed: {rows:?}"
    );
}

/// Asserts leak_with()'s leak: one row, 30000 bytes in one allocation,
/// its stack down to main of `module`.
fn assert_the_leak_from_main(rows: &[Value], module: &str, what: &str) {
    let leaks: Vec<&Value> = rows.iter().filter(|r| has_frame(r, "leak_with")).collect();
    assert_eq!(leaks.len(), 1, "{what}: {rows:?}");
    assert_eq!(leaks[0]["bytes"], 30000, "{what}: {rows:?}");
    assert_eq!(leaks[0]["allocations"], 1, "{what}: {rows:?}");
    let main_frame = |f: &&str| f.starts_with("main+") && f.ends_with(&format!("[{module}]"));
    assert!(
        stack_frames(leaks[0]).iter().any(main_frame),
        "{what}: {rows:?}"
    );
}

macro_rules! leak_tests {
    ($($name:ident: $allocator:literal,)*) => {$(
        #[test]
        fn $name() {
            require_memleak_user_mode!();
            assert_leaks_30000($allocator);
        }
    )*};
}

leak_tests! {
    leak_through_malloc: "malloc",
    leak_through_calloc: "calloc",
    leak_through_realloc: "realloc",
    leak_through_posix_memalign: "posix_memalign",
    leak_through_aligned_alloc: "aligned_alloc",
    leak_through_valloc: "valloc",
    leak_through_memalign: "memalign",
    leak_through_pvalloc: "pvalloc",
}

/// The mechanisms older kernels get (multi-uprobe links without sessions
/// before 6.13, classic uprobes before 6.6), forced on this kernel: every
/// allocator function, C++'s operators through each allocator (operator
/// new's inner malloc returns on a deeper stack than the call followed), a
/// forked child, each exact.
macro_rules! mechanism_tests {
    ($($name:ident: $mechanism:literal,)*) => {$(
        #[test]
        fn $name() {
            require_memleak_user_mode!();
            if let Some(feature) = feature_for_uprobes($mechanism) {
                require_feature!(feature);
            }
            let extra = ["--uprobes", $mechanism];
            for allocator in ALLOCATORS {
                assert_leaks_30000_with(&extra, allocator);
            }
            // (through libstdc++, built without frame pointers)
            match tool_limited("memleak", FRAME_POINTERS_ONLY) {
                None => assert_cxx_variants_balance(&extra),
                Some(reason) => eprintln!("C++ part skipped: {reason}"),
            }
            // the final report's (classic links of runs before may still
            // be going, slowing this one past an interval)
            assert_parent_and_child_leaks(&final_rows(report(&extra, &["fork"])));
            let finished = run_on(&["memleak", "-v", "--uprobes", $mechanism], "leaker", &["none"]);
            finished.assert_success();
            assert!(finished.stderr.contains(" attached in "), "{}", finished.stderr);
        }
    )*};
}

mechanism_tests! {
    multi_uprobe_links_count_exactly: "multi",
    classic_uprobes_count_exactly: "classic",
}

/// Doctor's words for stacks walked by frame pointers alone (before 5.17).
const FRAME_POINTERS_ONLY: &str = "without frame pointers are short";

/// Each leaker ALLOCATOR.
const ALLOCATORS: &[&str] = &[
    "malloc",
    "calloc",
    "realloc",
    "posix_memalign",
    "aligned_alloc",
    "valloc",
    "memalign",
    "pvalloc",
];

#[test]
fn freeing_everything_leaves_nothing_outstanding() {
    require_memleak_user_mode!();
    let rows = report(&["-o", "0"], &["none"]);
    assert!(rows.is_empty(), "{rows:?}");
}

/// -o hides allocations younger than it from the reports made while the
/// command runs; the one after it exited shows all it still held.
#[test]
fn older_hides_young_allocations_until_the_command_exits() {
    require_memleak_user_mode!();
    // reports every 0.3 s while the leak, younger than 5 s, is held 1.5 s
    let rows = report(&["-o", "5000", "0.3"], &["malloc", "1500"]);
    let interim: Vec<&Value> = rows.iter().filter(|r| r["final"] == false).collect();
    assert!(
        interim.iter().all(|r| !has_frame(r, "leak_with")),
        "{rows:#?}"
    );
    let last: Vec<Value> = rows
        .iter()
        .filter(|r| r["final"] == true)
        .cloned()
        .collect();
    assert_eq!(bytes_per_report(&last, "leak_with"), [30000], "{rows:#?}");
}

/// `memleak -- COMMAND` with default options (-o 500): a leak the command
/// made just before it exited is in the report after it.
#[test]
fn default_options_report_a_short_commands_leak() {
    require_memleak_user_mode!();
    let rows = report(&[], &["malloc"]);
    let total: u64 = rows.iter().map(|r| r["bytes"].as_u64().unwrap()).sum();
    assert_eq!(total, 30000, "{rows:#?}");
    assert!(rows.iter().any(|r| has_frame(r, "leak_with")), "{rows:#?}");
}

/// Each report is the outstanding set then, not an increment: JSON rows
/// carry the report's number, and the last report's rows `"final": true`.
#[test]
fn json_reports_are_numbered_and_the_last_is_final() {
    require_memleak_user_mode!();
    // held 1.3 s, reports every 0.4 s: three or so, then the final one
    let rows = report(&["-o", "0", "0.4"], &["malloc", "1300"]);
    let numbers: Vec<u64> = rows.iter().map(|r| r["report"].as_u64().unwrap()).collect();
    assert!(numbers.windows(2).all(|w| w[0] <= w[1]), "{numbers:?}");
    let last = *numbers.last().unwrap();
    assert!(last >= 3, "{rows:#?}");
    for row in &rows {
        let number = row["report"].as_u64().unwrap();
        assert_eq!(row["final"], number == last, "{row}");
    }
    // every report holds the whole leak: summing them would count it each time
    let leaked = bytes_per_report(&rows, "leak_with");
    assert_eq!(leaked, vec![30000; last as usize], "{rows:#?}");
}

#[test]
fn text_report_as_the_originals() {
    require_memleak_user_mode!();
    let leaker = fixture("leaker");
    let finished = run(&[
        "memleak",
        "-o",
        "0",
        "--",
        leaker.to_str().unwrap(),
        "calloc",
    ]);
    finished.assert_success();
    let lines: Vec<&str> = finished.stdout.lines().collect();
    assert!(lines[0].starts_with('['), "{}", finished.stdout);
    assert!(
        lines[0].ends_with("] Top 1 stacks with outstanding allocations:"),
        "{}",
        finished.stdout
    );
    assert_eq!(lines[1], "\t30000 bytes in 1 allocations from stack");
    assert!(
        lines[2].starts_with("\t\tleak_with+0x") && lines[2].ends_with(" [leaker]"),
        "{}",
        lines[2]
    );
}

/// Outstanding bytes from stacks with a frame of `function`, one total per
/// report (a report's rows share a time_ns), in order.
fn bytes_per_report(rows: &[Value], function: &str) -> Vec<u64> {
    let mut reports: Vec<(u64, u64)> = Vec::new();
    for row in rows {
        let time = row["time_ns"].as_u64().unwrap();
        if reports.last().is_none_or(|(t, _)| *t != time) {
            reports.push((time, 0));
        }
        if has_frame(row, function) {
            reports.last_mut().unwrap().1 += row["bytes"].as_u64().unwrap();
        }
    }
    reports.into_iter().map(|(_, bytes)| bytes).collect()
}

/// `memleak --kernel` with `extra` options on `holder ARGS`, reporting every 0.4 s.
fn kernel_reports(extra: &[&str], holder_args: &[&str]) -> Vec<Value> {
    let mut args = vec!["memleak", "--kernel", "--json", "-o", "0", "-T", "1000"];
    args.extend_from_slice(extra);
    args.push("0.4");
    let finished = run_on(&args, "holder", holder_args);
    finished.assert_success();
    finished.json()
}

#[test]
fn kernel_mode_sees_pipe_buffers_held_and_released() {
    require_tool!("memleak");
    // 64 pipes holding a byte each: a pipe buffer page apiece, held 1.2 s, then closed
    let rows = kernel_reports(&[], &["pipes", "64", "1200"]);
    // the pipe's write is pipe_write on Linux 6.1, anon_pipe_write on newer
    let write = match rows.iter().any(|r| has_frame(r, "anon_pipe_write")) {
        true => "anon_pipe_write",
        false => "pipe_write",
    };
    let reports = bytes_per_report(&rows, write);
    assert_eq!(
        reports.iter().max(),
        Some(&(64 * 4096)),
        "{reports:?}\n{rows:?}"
    );
    assert_eq!(
        reports.last(),
        Some(&0),
        "released pipes still outstanding: {reports:?}"
    );
}

/// Outstanding bytes from stacks with a frame of `function` in each text
/// report, in order; unlike JSON, the text shows reports with no rows too.
fn text_bytes_per_report(stdout: &str, function: &str) -> Vec<u64> {
    let prefix = format!("{function}+");
    let mut reports = Vec::new();
    let mut block_bytes = 0;
    for line in stdout.lines() {
        if line.starts_with('[') {
            reports.push(0);
        } else if let Some(bytes) = line
            .strip_prefix('\t')
            .and_then(|l| l.split_once(" bytes in "))
        {
            block_bytes = bytes.0.parse::<u64>().unwrap();
        } else if line.trim_start().starts_with(&prefix) {
            *reports.last_mut().unwrap() += std::mem::take(&mut block_bytes);
        }
    }
    reports
}

#[test]
fn kernel_mode_percpu_sees_per_cpu_allocations() {
    require_tool!("memleak");
    // a BPF per-CPU array of 50 values of 1000 bytes: 50 per-CPU allocations of
    // 1000 bytes, made under bpf(BPF_MAP_CREATE), held 2 s, then the map is closed
    // (and freed after an RCU grace period, in a kworker)
    let holder_args = ["percpu", "50", "2000"];
    let reports = |percpu: &[&str]| {
        let mut args = vec![
            "memleak", "--kernel", "-o", "0", "-T", "1000", "-z", "1000", "-Z", "1000",
        ];
        args.extend_from_slice(percpu);
        args.push("0.4");
        let finished = run_on(&args, "holder", &holder_args);
        finished.assert_success();
        (
            // (the syscall's own frame is __do_sys_bpf in 5.10, __sys_bpf since)
            text_bytes_per_report(&finished.stdout, "array_map_alloc"),
            finished.stdout,
        )
    };
    let (with_percpu, stdout) = reports(&["--percpu"]);
    assert_eq!(
        with_percpu.iter().max(),
        Some(&50_000),
        "{with_percpu:?}\n{stdout}"
    );
    assert_eq!(
        with_percpu.last(),
        Some(&0),
        "freed map still outstanding: {with_percpu:?}"
    );
    // without --percpu those allocations are not traced
    let (without, stdout) = reports(&[]);
    assert!(
        without.len() >= 5 && without.iter().all(|&b| b == 0),
        "{without:?}\n{stdout}"
    );
}

/// Protocol-buffer fields of a message: (field number, varint or bytes).
fn proto_fields(mut data: &[u8]) -> Vec<(u64, Result<u64, Vec<u8>>)> {
    fn varint(data: &mut &[u8]) -> u64 {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = data[0];
            *data = &data[1..];
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        value
    }
    let mut fields = Vec::new();
    while !data.is_empty() {
        let key = varint(&mut data);
        match key & 7 {
            0 => fields.push((key >> 3, Ok(varint(&mut data)))),
            2 => {
                let len = varint(&mut data) as usize;
                fields.push((key >> 3, Err(data[..len].to_vec())));
                data = &data[len..];
            }
            other => panic!("wire type {other} not expected in a profile"),
        }
    }
    fields
}

fn packed(data: &[u8]) -> Vec<u64> {
    let mut values = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = rest[0];
            rest = &rest[1..];
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        values.push(value);
    }
    values
}

#[test]
fn pprof_folded_and_svg_outputs() {
    require_memleak_user_mode!();
    let profile = temp_path("memleak.pb.gz");
    let svg = temp_path("memleak.svg");
    let finished = run_on(
        &[
            "memleak",
            "-o",
            "0",
            "--folded",
            "--pprof",
            profile.to_str().unwrap(),
            "--svg",
            svg.to_str().unwrap(),
        ],
        "leaker",
        &["malloc"],
    );
    finished.assert_success();
    // folded: outermost frame first, the leak site last, then the bytes
    let line = finished
        .stdout
        .lines()
        .find(|l| l.contains("leak_with"))
        .unwrap();
    let (stack, bytes) = line.rsplit_once(' ').unwrap();
    assert_eq!(bytes, "30000");
    assert!(
        stack
            .split(';')
            .next_back()
            .unwrap()
            .starts_with("leak_with+"),
        "{stack}"
    );

    let svg_text = std::fs::read_to_string(&svg).unwrap();
    assert!(svg_text.starts_with("<?xml") && svg_text.trim_end().ends_with("</svg>"));
    assert!(svg_text.contains("leak_with"));

    // the profile: gzip, then profile.proto
    let mut raw = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(&profile).unwrap()),
        &mut raw,
    )
    .unwrap();
    let fields = proto_fields(&raw);
    let strings: Vec<String> = fields
        .iter()
        .filter(|(n, _)| *n == 6)
        .map(|(_, v)| String::from_utf8(v.clone().unwrap_err()).unwrap())
        .collect();
    assert_eq!(strings[0], "", "string_table[0] must be empty");
    let sample_types: Vec<(String, String)> = fields
        .iter()
        .filter(|(n, _)| *n == 1)
        .map(|(_, v)| {
            let vt = proto_fields(&v.clone().unwrap_err());
            let s = |i: usize| strings[*vt[i].1.as_ref().unwrap() as usize].clone();
            (s(0), s(1))
        })
        .collect();
    assert_eq!(
        sample_types,
        [
            ("inuse_space".to_string(), "bytes".to_string()),
            ("inuse_objects".to_string(), "count".to_string())
        ]
    );
    // function id -> name
    let mut functions = std::collections::HashMap::new();
    for (_, v) in fields.iter().filter(|(n, _)| *n == 5) {
        let f = proto_fields(&v.clone().unwrap_err());
        let id = *f.iter().find(|(n, _)| *n == 1).unwrap().1.as_ref().unwrap();
        let name = *f.iter().find(|(n, _)| *n == 2).unwrap().1.as_ref().unwrap();
        functions.insert(id, strings[name as usize].clone());
    }
    // location id -> the function of its (first) line
    let mut locations_fn = std::collections::HashMap::new();
    for (_, v) in fields.iter().filter(|(n, _)| *n == 4) {
        let l = proto_fields(&v.clone().unwrap_err());
        let id = *l.iter().find(|(n, _)| *n == 1).unwrap().1.as_ref().unwrap();
        let line = proto_fields(
            &l.iter()
                .find(|(n, _)| *n == 4)
                .unwrap()
                .1
                .clone()
                .unwrap_err(),
        );
        locations_fn.insert(id, *line[0].1.as_ref().unwrap());
    }
    let (mut space, mut objects, mut leak_space) = (0, 0, 0);
    for (_, v) in fields.iter().filter(|(n, _)| *n == 2) {
        let sample = proto_fields(&v.clone().unwrap_err());
        let locations = packed(
            &sample
                .iter()
                .find(|(n, _)| *n == 1)
                .unwrap()
                .1
                .clone()
                .unwrap_err(),
        );
        let values = packed(
            &sample
                .iter()
                .find(|(n, _)| *n == 2)
                .unwrap()
                .1
                .clone()
                .unwrap_err(),
        );
        space += values[0];
        objects += values[1];
        // the leaf location comes first
        if functions[&locations_fn[&locations[0]]] == "leak_with" {
            leak_space += values[0];
        }
    }
    assert_eq!((space, objects, leak_space), (30000, 1, 30000));
    let _ = std::fs::remove_file(profile);
    let _ = std::fs::remove_file(svg);
}

#[test]
fn trace_shows_each_allocation_and_free() {
    require_memleak_user_mode!();
    let finished = run_on(
        &["memleak", "-t", "--json", "-o", "0"],
        "leaker",
        &["malloc"],
    );
    finished.assert_success();
    let events: Vec<Value> = finished
        .json()
        .into_iter()
        .filter(|e| e.get("event").is_some())
        .collect();
    let of = |kind: &'static str| events.iter().filter(move |e| e["event"] == kind);
    // churn(): 100 rounds of malloc, calloc, realloc(NULL), realloc (a free and an
    // alloc), and three frees; then the leak: one more allocation
    assert_eq!(of("alloc").count(), 401, "{events:?}");
    assert_eq!(of("free").count(), 400, "{events:?}");
    let bytes = |kind: &'static str| of(kind).map(|e| e["size"].as_u64().unwrap()).sum::<u64>();
    assert_eq!(bytes("alloc") - bytes("free"), 30000);
}

#[test]
fn size_bounds_combined_totals_and_show_allocs() {
    require_memleak_user_mode!();
    let total = |rows: &[Value]| {
        rows.iter()
            .map(|r| r["bytes"].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(total(&report(&["-o", "0", "-z", "30001"], &["malloc"])), 0);
    assert_eq!(total(&report(&["-o", "0", "-Z", "29999"], &["malloc"])), 0);
    assert_eq!(
        total(&report(
            &["-o", "0", "-z", "30000", "-Z", "30000"],
            &["malloc"]
        )),
        30000
    );
    // the running totals by stack, kept in the kernel as allocations come and go
    assert_eq!(total(&report(&["--combined-only"], &["malloc"])), 30000);
    let finished = run_on(&["memleak", "-a", "-o", "0"], "leaker", &["malloc"]);
    finished.assert_success();
    assert!(
        finished
            .stdout
            .lines()
            .any(|l| l.starts_with("\taddr = ") && l.ends_with(" size = 30000")),
        "{}",
        finished.stdout
    );
}

#[test]
fn sort_by_size_or_by_count() {
    require_memleak_user_mode!();
    // leak_with(): 30000 bytes in 1 allocation; leak_small(): 1600 bytes in 100
    let first_frame = |sort: &str| {
        let rows = report(&["-o", "0", "--sort", sort], &["many"]);
        assert_eq!(rows.len(), 2, "{rows:?}");
        let top = &rows[0];
        (
            has_frame(top, "leak_with"),
            has_frame(top, "leak_small"),
            top["bytes"].clone(),
            top["allocations"].clone(),
        )
    };
    assert_eq!(first_frame("size"), (true, false, 30000.into(), 1.into()));
    assert_eq!(first_frame("count"), (false, true, 1600.into(), 100.into()));
}

#[test]
fn count_ends_after_that_many_reports() {
    require_memleak_user_mode!();
    // the leaker holds its leak for 3 s: without COUNT there would be ~10 reports
    let finished = run_on(
        &["memleak", "-o", "0", "0.3", "2"],
        "leaker",
        &["malloc", "3000"],
    );
    finished.assert_success();
    let reports = finished
        .stdout
        .lines()
        .filter(|l| l.ends_with("stacks with outstanding allocations:"))
        .count();
    assert_eq!(reports, 2, "{}", finished.stdout);
}

#[test]
fn the_last_report_comes_quickly_while_the_kernel_allocates_and_frees() {
    require_tool!("memleak");
    // system-wide, beside two processes opening and closing pipes as fast as they can
    let mut churn = std::process::Command::new(fixture("holder"))
        .args(["churn", "2", "20000"])
        .spawn()
        .unwrap();
    let tracer = Tracer::start(&["memleak", "--kernel", "--json"]);
    std::thread::sleep(std::time::Duration::from_secs(6));
    let signalled = std::time::Instant::now();
    let finished = tracer.stop();
    let took = signalled.elapsed();
    let _ = churn.kill();
    let _ = churn.wait();
    finished.assert_success();
    assert!(
        !finished.json().is_empty(),
        "no report: {}",
        finished.stderr
    );
    // a key-by-key read of the allocation map started over at every kfree
    // of the key it stood on: 20 s here before it was read in batches
    assert!(
        took < scaled(std::time::Duration::from_secs(2)),
        "the final report took {took:?} after Ctrl-C"
    );
}

/// Mappings that are not heap (a file mapped shared and private, a shared
/// memfd: 192 KiB through libc's mmap during the trace) are not counted:
/// the leak is exactly its 30000 bytes.
#[test]
fn mapped_files_and_shared_memory_are_not_heap() {
    require_memleak_user_mode!();
    let dir = temp_path("memleak-maps");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("mapped.dat");
    let rows = report(&["-o", "0"], &["--map", file.to_str().unwrap(), "malloc"]);
    let total: u64 = rows.iter().map(|r| r["bytes"].as_u64().unwrap()).sum();
    assert_eq!(total, 30000, "{rows:#?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// 2^15 leaks of 16 bytes, each from a stack of its own: more distinct
/// stacks than the default 16384, so --stack-storage-size is raised, and the
/// running totals by stack (--combined-only) follow it: every byte counted,
/// nothing said lost. (Before, the totals map stayed at 16384 and the loss
/// was blamed on --max-allocs.)
#[test]
fn totals_by_stack_grow_with_the_stack_store() {
    require_memleak_user_mode!();
    let finished = run_on(
        &[
            "memleak",
            "--json",
            "--combined-only",
            "--stack-storage-size",
            "40000",
            "-T",
            "100000",
        ],
        "leaker",
        &["tree", "15"],
    );
    finished.assert_success();
    let rows = finished.json();
    let tree: Vec<&Value> = rows.iter().filter(|r| has_frame(r, "tree")).collect();
    let bytes: u64 = tree.iter().map(|r| r["bytes"].as_u64().unwrap()).sum();
    assert_eq!(
        (tree.len(), bytes),
        (1 << 15, 16 << 15),
        "{}",
        finished.stderr
    );
    assert!(!finished.stderr.contains("lost"), "{}", finished.stderr);
}

/// More outstanding allocations than --max-allocs: the loss is said as it
/// starts (the reports under-count from then on), with the option to raise,
/// and totalled at the end.
#[test]
fn a_full_allocation_map_is_said_as_it_starts() {
    require_memleak_user_mode!();
    // 101 allocations held 1.5 s, reports every 0.3 s, room for 10
    let finished = run_on(
        &["memleak", "--json", "-o", "0", "--max-allocs", "10", "0.3"],
        "leaker",
        &["many", "1500"],
    );
    finished.assert_success();
    let lines: Vec<&str> = finished.stderr.lines().collect();
    let started = lines.iter().position(|l| {
        l.starts_with("memleak: counts lost since ") && l.ends_with("raise --max-allocs)")
    });
    let total = lines
        .iter()
        .position(|l| l.contains(" counts lost: ") && l.ends_with("raise --max-allocs)"));
    assert!(
        matches!((started, total), (Some(s), Some(t)) if s < t),
        "{}",
        finished.stderr
    );
}

/// A fresh directory and, in it, the path of a file whose name is not UTF-8
/// and holds a terminal escape (the leaker creates and maps it).
fn hostile_name() -> (PathBuf, PathBuf) {
    let dir = temp_path("memleak-names");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(OsStr::from_bytes(b"\x1b[31mbad\xffname"));
    (dir, file)
}

/// The rows of the 30000-byte leak, each symbolized through leak_with() and
/// main() of the leaker; at least `reports` of them (one per report).
fn assert_symbolized_leaks(rows: &[Value], reports: usize) {
    let leaks: Vec<&Value> = rows.iter().filter(|r| r["bytes"] == 30000).collect();
    assert!(leaks.len() >= reports, "{rows:?}");
    for leak in leaks {
        assert!(has_frame(leak, "leak_with"), "{leak}");
        assert!(
            stack_frames(leak)
                .iter()
                .any(|f| f.starts_with("main+") && f.ends_with("[leaker]")),
            "{leak}"
        );
    }
}

#[test]
fn a_mapped_file_named_in_bytes_hides_no_process_from_p() {
    require_memleak_user_mode!();
    let (dir, file) = hostile_name();
    // the file is mapped before memleak reads the leaker's maps; the leak comes
    // at the go, and is held 3 s: reports every 0.3 s while it lives
    let child = Command::new(fixture("leaker"))
        .arg("--map")
        .arg(&file)
        .args(["wait", "malloc", "3000"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut leaker = Held { child };
    let pid = leaker.pid().to_string();
    // -p finds libc in the process's maps: wait until it has mapped the file,
    // which it does in main, after the loader has mapped libc
    let mapped = std::time::Instant::now();
    let name = file.file_name().unwrap().as_bytes().to_vec();
    while !std::fs::read(format!("/proc/{pid}/maps"))
        .unwrap()
        .windows(name.len())
        .any(|w| w == name.as_slice())
    {
        assert!(
            mapped.elapsed() < scaled(std::time::Duration::from_secs(10)),
            "the leaker never mapped the file"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let tracer = Tracer::start(&["memleak", "--json", "-o", "0", "-p", &pid, "0.3"]);
    assert!(leaker.go().success());
    let finished = tracer.wait();
    finished.assert_success();
    assert_symbolized_leaks(&finished.json(), 3);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_mapped_file_named_in_bytes_hides_no_command() {
    require_memleak_user_mode!();
    let (dir, file) = hostile_name();
    let mut memleak = memtrace();
    memleak
        .args(["memleak", "--json", "-o", "0", "0.3", "--"])
        .arg(fixture("leaker"))
        .arg("--map")
        .arg(&file)
        .args(["malloc", "3000"]);
    let finished = Tracer::start_command(memleak).wait();
    finished.assert_success();
    assert_symbolized_leaks(&finished.json(), 3);
    let _ = std::fs::remove_dir_all(dir);
}

/// `memleak ARGS`, expected to stop at once with one line on stderr and status 1.
fn refused(args: &[&str]) -> String {
    let out = memtrace().arg("memleak").args(args).output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    stderr
}

/// The state and flags fields of /proc/PID/stat.
fn state_and_flags(pid: &str) -> Option<(String, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some((fields.first()?.to_string(), fields.get(6)?.parse().ok()?))
}

#[test]
fn a_zombie_is_said_to_be_one() {
    require_memleak_user_mode!();
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id().to_string();
    // exited, and not waited for until the end of the test
    while state_and_flags(&pid).map(|(state, _)| state) != Some("Z".into()) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let stderr = refused(&["-p", &pid]);
    assert!(
        stderr.starts_with(&format!("memleak: PID {pid} is a zombie: ")),
        "{stderr}"
    );
    child.wait().unwrap();
}

#[test]
fn a_kernel_thread_is_said_to_be_one() {
    require_memleak_user_mode!();
    const PF_KTHREAD: u32 = 0x0020_0000;
    let kthread = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .find(|pid| state_and_flags(pid).is_some_and(|(_, flags)| flags & PF_KTHREAD != 0))
        .expect("no kernel thread in /proc");
    let stderr = refused(&["-p", &kthread]);
    assert_eq!(
        stderr,
        format!(
            "memleak: PID {kthread} is a kernel thread: memleak traces user processes; for \
             kernel allocations use --kernel\n"
        )
    );
}

#[test]
fn a_missing_pid_is_said_as_every_tool_says_it() {
    require_memleak_user_mode!();
    // pids run below pid_max: this one can't exist
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap();
    let pid = pid_max.trim();
    let stderr = refused(&["-p", pid]);
    assert_eq!(stderr, format!("memleak: no process with PID {pid}\n"));
}

/// Whether a process runs `program` (its /proc/PID/exe).
fn running(program: &std::path::Path) -> bool {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .any(|entry| std::fs::read_link(entry.path().join("exe")).is_ok_and(|exe| exe == program))
}

#[test]
fn a_static_programs_own_allocator_is_found() {
    require_memleak_user_mode!();
    // the leaker linked with the static libc: its malloc is in the program
    let leaker = fixture_with("leaker", "leaker-static", &["-static"]);
    let program = leaker.to_str().unwrap();
    let finished = run(&["memleak", "--json", "-o", "0", "--", program, "malloc"]);
    finished.assert_success();
    assert!(
        finished.stderr.contains(&format!(
            "memleak: probing allocator functions in {program} ("
        )),
        "{}",
        finished.stderr
    );
    assert_the_leak_from_main(&finished.json(), "leaker-static", "static");
}

#[test]
fn a_program_without_an_allocator_is_said_to_have_none() {
    require_memleak_user_mode!();
    // a static program with no allocator at all: nothing to probe
    let bare = fixture_with("bare", "bare", &["-static", "-nostdlib"]);
    let program = bare.to_str().unwrap();
    let out = memtrace()
        .args(["memleak", "-o", "0", "--", program])
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert_eq!(
        stderr,
        format!(
            "memleak: no allocator in the mappings of {program}: none of its objects has \
             malloc, free or operator new; name the allocator's library with -O (and \
             --symbols-prefix if its functions have one)\n"
        )
    );
    // stopped right after exec, then killed: not left behind
    assert!(!running(&bare), "the command was left behind");
}

/// (bytes, allocations) of each row whose stack goes through `function`.
fn bytes_and_allocations(rows: &[Value], function: &str) -> Vec<(u64, u64)> {
    rows.iter()
        .filter(|r| has_frame(r, function))
        .map(|r| {
            (
                r["bytes"].as_u64().unwrap(),
                r["allocations"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Asserts what `leaker many` leaves: leak_with's 30000 bytes in one
/// allocation, leak_small's 100 x 16, the churn (malloc, calloc, realloc,
/// free) balanced.
fn assert_leaks_of_many(rows: &[Value], what: &str) {
    let through = |function: &str| bytes_and_allocations(rows, function);
    assert_eq!(through("leak_with"), [(30000, 1)], "{what}: {rows:?}");
    assert_eq!(through("leak_small"), [(1600, 100)], "{what}: {rows:?}");
    assert_eq!(through("churn"), [], "{what}: {rows:?}");
}

/// Asserts that no row is of a program exec'd away (its addresses in no
/// mapping any more). Where stacks are walked by frame pointers alone, the
/// innermost frame only: the walk goes astray above code built without
/// them (a shell's).
fn assert_nothing_of_an_old_program(rows: &[Value]) {
    let reliable = match tool_limited("memleak", FRAME_POINTERS_ONLY) {
        None => usize::MAX,
        Some(_) => 1,
    };
    for row in rows {
        assert!(
            !stack_frames(row)
                .iter()
                .take(reliable)
                .any(|f| f.ends_with("[unknown]")),
            "an allocation of a program exec'd away: {row}"
        );
    }
}

/// A library of Debian's (libjemalloc2, ...), where the dynamic loader finds it.
fn debian_library(file: &str) -> PathBuf {
    [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib",
        "/lib",
    ]
    .iter()
    .map(|dir| PathBuf::from(dir).join(file))
    .find(|path| path.exists())
    .unwrap_or_else(|| panic!("{file} is not installed (scripts/install-deps installs it)"))
}

/// Asserts that stderr says, after "Tracing", that `library` was probed:
/// found in the command as it went on (an exec, a dlopen).
fn assert_probed_during_the_trace(stderr: &str, library: &Path) {
    let real = std::fs::canonicalize(library).unwrap();
    let tracing = stderr.find("Tracing").expect("no Tracing line");
    let probed = format!(
        "memleak: probing allocator functions in {} (",
        real.display()
    );
    assert!(stderr[tracing..].contains(&probed), "{stderr}");
}

/// Debian's allocators that replace malloc and operator new when preloaded.
const PRELOADED: &[&str] = &[
    "libjemalloc.so.2",
    "libtcmalloc_minimal.so.4",
    "libmimalloc.so.2",
];

/// `memleak --json -o 0 -- fixture ARGS` with `library` preloaded: its stderr and rows.
fn preloaded_report(library: &Path, fixture: &Path, args: &[&str]) -> (String, Vec<Value>) {
    preloaded_report_with(&[], library, fixture, args)
}

/// The same, with `extra` options for memleak.
fn preloaded_report_with(
    extra: &[&str],
    library: &Path,
    fixture: &Path,
    args: &[&str],
) -> (String, Vec<Value>) {
    let mut memleak = memtrace();
    memleak
        .args(["memleak", "--json", "-o", "0"])
        .args(extra)
        .arg("--")
        .arg(fixture)
        .args(args)
        .env("LD_PRELOAD", library);
    let finished = Tracer::start_command(memleak).wait();
    finished.assert_success();
    (finished.stderr.clone(), finished.json())
}

#[test]
fn preloaded_allocators_are_found_without_o() {
    require_memleak_user_mode!();
    let leaker = fixture("leaker");
    for file in PRELOADED {
        let library = debian_library(file);
        let (stderr, rows) = preloaded_report(&library, &leaker, &["many"]);
        // named on stderr beside libc (which the loader maps all the same)
        let real = std::fs::canonicalize(&library).unwrap();
        assert!(
            stderr.contains(&format!("{} (", real.display())) && stderr.contains("libc.so.6 ("),
            "{file}: {stderr}"
        );
        // the leak, exactly, from its function; the churn (calloc, realloc,
        // free) balanced; the 100 small leaks too
        assert_leaks_of_many(&rows, file);
    }
}

/// Every operator new and delete the compiler emits (plain, array, nothrow,
/// aligned; sized and aligned deletes), through libstdc++ to glibc's malloc
/// and through the operators of jemalloc, tcmalloc and mimalloc themselves:
/// the leak exactly, the churn balanced.
#[test]
fn cxx_new_and_delete_variants_balance() {
    require_memleak_user_mode!();
    // stacks through libstdc++, built without frame pointers
    require_no_limit!("memleak", FRAME_POINTERS_ONLY);
    assert_cxx_variants_balance(&[]);
}

/// cxx_new_and_delete_variants_balance's test, with `extra` options for memleak.
fn assert_cxx_variants_balance(extra: &[&str]) {
    let cxxleak = cxx_fixture_with("cxxleak", "cxxleak", &[]);
    let libraries = std::iter::once(None).chain(PRELOADED.iter().map(|f| Some(debian_library(f))));
    for library in libraries {
        let (_, rows) = match &library {
            Some(library) => preloaded_report_with(extra, library, &cxxleak, &["variants"]),
            None => {
                let mut args = vec!["memleak", "--json", "-o", "0"];
                args.extend_from_slice(extra);
                args.extend_from_slice(&["--", cxxleak.to_str().unwrap(), "variants"]);
                let finished = run(&args);
                finished.assert_success();
                (String::new(), finished.json())
            }
        };
        let leaked: Vec<&Value> = rows
            .iter()
            .filter(|r| has_frame(r, "leak_variants()"))
            .collect();
        let bytes: u64 = leaked.iter().map(|r| r["bytes"].as_u64().unwrap()).sum();
        let allocations: u64 = leaked
            .iter()
            .map(|r| r["allocations"].as_u64().unwrap())
            .sum();
        assert_eq!((bytes, allocations), (4020, 5), "{library:?}: {rows:?}");
        assert!(
            !rows.iter().any(|r| has_frame(r, "churn_variants()")),
            "{library:?}: {rows:?}"
        );
    }
}

#[test]
fn a_commands_own_libc_is_probed_from_its_first_allocation() {
    require_memleak_user_mode!();
    // the leaker with a copy of the libc this test runs with, found by its
    // RUNPATH: not the libc memtrace maps
    let own = temp_path("own-libc");
    std::fs::create_dir_all(&own).unwrap();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let libc = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.ends_with("/libc.so.6"))
        .expect("no libc.so.6 in this test's maps");
    std::fs::copy(libc, own.join("libc.so.6")).unwrap();
    let rpath = format!("-Wl,-rpath,{}", own.to_str().unwrap());
    let leaker = fixture_with("leaker", "leaker-own-libc", &[&rpath]);

    // and a leak from a constructor, before main
    let mut memleak = memtrace();
    memleak
        .args(["memleak", "--json", "-o", "0", "--"])
        .arg(&leaker)
        .arg("malloc")
        .env("LEAKER_EARLY", "777");
    let finished = Tracer::start_command(memleak).wait();
    finished.assert_success();
    let rows = finished.json();
    let bytes_through = |function: &str| bytes_and_allocations(&rows, function);
    assert_eq!(bytes_through("leak_with"), [(30000, 1)], "{rows:?}");
    assert_eq!(bytes_through("leak_early"), [(777, 1)], "{rows:?}");
    let total: u64 = rows.iter().map(|r| r["bytes"].as_u64().unwrap()).sum();
    assert_eq!(total, 30777, "everything else was freed: {rows:?}");
    let _ = std::fs::remove_dir_all(own);
}

/// Debian's redis-server on 127.0.0.1, stopped when dropped.
struct Redis {
    server: std::process::Child,
    port: String,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
            .to_string();
        let server = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is not installed (scripts/install-deps installs it)");
        let redis = Redis { server, port };
        for _ in 0..100 {
            if redis.cli(&["ping"]) == "PONG" {
                return redis;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("redis-server did not answer on port {}", redis.port);
    }

    /// redis-cli's answer to one command.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port])
            .args(args)
            .output()
            .expect("redis-cli is not installed (scripts/install-deps installs it)");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// A real server: redis-server takes its malloc from libjemalloc, which
/// memleak finds without -O. Two 30000-byte values are SET while it traces
/// and one is deleted: one value is outstanding at the end, exactly (its sds
/// string: a 5-byte header, the bytes and a NUL), allocated in sdsnewlen.
#[test]
fn redis_servers_jemalloc_is_found_and_its_values_counted() {
    require_memleak_user_mode!();
    // stacks through redis-server, built without frame pointers
    require_no_limit!("memleak", FRAME_POINTERS_ONLY);
    let redis = Redis::start();
    let pid = redis.server.id().to_string();
    let tracer = Tracer::start(&["memleak", "--json", "-o", "0", "-p", &pid, "3600"]);
    let value = "x".repeat(30000);
    assert_eq!(redis.cli(&["set", "kept", &value]), "OK");
    assert_eq!(redis.cli(&["set", "deleted", &value]), "OK");
    assert_eq!(redis.cli(&["del", "deleted"]), "1");
    let finished = tracer.stop();
    assert!(
        finished.stderr.contains("libjemalloc.so.2 ("),
        "{}",
        finished.stderr
    );
    let rows = finished.json();
    let values: Vec<(u64, u64)> = rows
        .iter()
        .filter(|r| stack_frames(r).iter().any(|f| f.contains("sdsnewlen")))
        .map(|r| {
            (
                r["bytes"].as_u64().unwrap(),
                r["allocations"].as_u64().unwrap(),
            )
        })
        .filter(|&(bytes, _)| bytes >= 30000)
        .collect();
    assert_eq!(values, [(30006, 1)], "{rows:?}");
}

/// A wrapper that execs the real program (as pyenv's python3 does): sh,
/// with glibc's malloc, execs env, which execs the leaker with jemalloc
/// preloaded. Each exec is followed: jemalloc is found in the new program
/// and probed before it runs, and what sh and env left allocated went with
/// their address spaces.
#[test]
fn a_program_exec_by_a_wrapper_is_followed_to_its_allocator() {
    require_memleak_user_mode!();
    assert_a_shells_leaker_with_jemalloc(
        |jemalloc| format!("exec env LD_PRELOAD={jemalloc} \"$0\" many"),
        "exec'd by sh and env",
    );
}

/// `memleak --json -o 0 -- sh -c SCRIPT leaker`, where SCRIPT (made by
/// `script` from jemalloc's path) runs `"$0" many` with jemalloc preloaded:
/// jemalloc probed as found, the leaks of `leaker many` exact, nothing of a
/// program exec'd away.
fn assert_a_shells_leaker_with_jemalloc(script: impl Fn(&str) -> String, what: &str) {
    let leaker = fixture("leaker");
    let jemalloc = debian_library("libjemalloc.so.2");
    let script = script(jemalloc.to_str().unwrap());
    let finished = run(&[
        "memleak",
        "--json",
        "-o",
        "0",
        "--",
        "/bin/sh",
        "-c",
        &script,
        leaker.to_str().unwrap(),
    ]);
    finished.assert_success();
    assert_probed_during_the_trace(&finished.stderr, &jemalloc);
    let rows = final_rows(finished.json());
    assert_leaks_of_many(&rows, what);
    assert_nothing_of_an_old_program(&rows);
}

/// The pid of each row whose stack goes through `function`.
fn pids_through(rows: &[Value], function: &str) -> Vec<u64> {
    rows.iter()
        .filter(|r| has_frame(r, function))
        .map(|r| r["pid"].as_u64().unwrap())
        .collect()
}

/// A command's forked child is traced from its first instruction, apart
/// from its parent: it frees its copy of the parent's leaked block (at the
/// same address as the parent's, which stays leaked) and leaks 20000 bytes
/// of its own; each leak is reported exactly, under its own pid.
#[test]
fn a_forked_child_is_traced_apart_from_its_parent() {
    require_memleak_user_mode!();
    assert_parent_and_child_leaks(&report(&[], &["fork"]));
    // the text names whose stack each is, as the report holds two processes
    let finished = run_on(&["memleak"], "leaker", &["fork"]);
    finished.assert_success();
    let mut whose: Vec<&str> = finished
        .stdout
        .lines()
        .filter_map(|line| line.split_once(" allocations from stack of PID "))
        .map(|(_, pid)| pid)
        .collect();
    whose.dedup();
    assert_eq!(whose.len(), 2, "{}", finished.stdout);
}

/// What `leaker fork` and `thread-fork` leave: the parent's leak_with
/// (30000 bytes, its child's free of its copy notwithstanding) and the
/// child's leak_in_child (20000), each exactly, under two pids.
fn assert_parent_and_child_leaks(rows: &[Value]) {
    assert_eq!(
        bytes_and_allocations(rows, "leak_with"),
        [(30000, 1)],
        "{rows:?}"
    );
    assert_eq!(
        bytes_and_allocations(rows, "leak_in_child"),
        [(20000, 1)],
        "{rows:?}"
    );
    assert_eq!(bytes_and_allocations(rows, "churn"), [], "{rows:?}");
    let parent = pids_through(rows, "leak_with");
    let child = pids_through(rows, "leak_in_child");
    assert_ne!(parent, child, "{rows:?}");
}

/// A child forked by a thread other than its process's first: the
/// command's threads are under ptrace too, so the fork is seen and the
/// child probed before it runs.
#[test]
fn a_child_forked_by_a_thread_is_traced() {
    require_memleak_user_mode!();
    assert_parent_and_child_leaks(&report(&[], &["thread-fork"]));
}

/// Children made by posix_spawn (a vfork-like clone, running in its
/// parent's address space until it execs) and by a shell's fork, each
/// exec'ing the leaker: each is probed in its new program (jemalloc, which
/// only the child maps, found there) and its leaks are its own, exactly.
#[test]
fn children_that_exec_are_followed_to_their_allocators() {
    require_memleak_user_mode!();
    let leaker = fixture("leaker");
    let spawner = fixture("spawner");
    let pidfile = temp_path("memleak-spawned");
    let finished = run(&[
        "memleak",
        "--json",
        "--",
        spawner.to_str().unwrap(),
        "spawn",
        "3",
        "0",
        pidfile.to_str().unwrap(),
        leaker.to_str().unwrap(),
        "many",
    ]);
    finished.assert_success();
    // the final report's (a slow machine has interval reports before)
    let rows = final_rows(finished.json());
    let spawned: Vec<u64> = std::fs::read_to_string(&pidfile)
        .unwrap()
        .lines()
        .map(|pid| pid.parse().unwrap())
        .collect();
    let _ = std::fs::remove_file(&pidfile);
    assert_eq!(spawned.len(), 3);
    let mut leakers = pids_through(&rows, "leak_with");
    leakers.sort_unstable();
    let mut expected = spawned.clone();
    expected.sort_unstable();
    assert_eq!(leakers, expected, "{rows:?}");
    assert_eq!(
        bytes_and_allocations(&rows, "leak_with"),
        [(30000, 1); 3],
        "{rows:?}"
    );
    assert_eq!(
        bytes_and_allocations(&rows, "leak_small"),
        [(1600, 100); 3],
        "{rows:?}"
    );
    assert_eq!(bytes_and_allocations(&rows, "churn"), [], "{rows:?}");

    // a shell that forks (its command is not its last) a child that
    // execs the leaker with jemalloc preloaded
    assert_a_shells_leaker_with_jemalloc(
        |jemalloc| format!("LD_PRELOAD={jemalloc} \"$0\" many; exit $?"),
        "a child of sh",
    );
}

/// A command memleak follows (under ptrace, for its execs) gets its
/// signals as it would untraced: the shell's trap runs and sets its status.
#[test]
fn a_followed_command_gets_its_signals() {
    require_memleak_user_mode!();
    // a signal lost: the shell sleeps and exits 0; one never delivered: it
    // stays stopped, and memleak never ends
    let finished = run(&[
        "memleak",
        "--json",
        "--",
        "/bin/sh",
        "-c",
        "trap 'exit 7' USR1; kill -USR1 $$; sleep 5",
    ]);
    assert_eq!(finished.status.code(), Some(7), "{}", finished.stderr);
}

/// An allocator dlopen'ed during the trace (Debian's libtcmalloc_minimal,
/// its malloc found with dlsym): the command stops as the loader has mapped it,
/// before its code runs, and its functions are probed: the leak is exact.
#[test]
fn an_allocator_dlopened_later_is_probed() {
    require_memleak_user_mode!();
    let dlleaker = fixture("dlleaker");
    let tcmalloc = debian_library("libtcmalloc_minimal.so.4");
    let finished = run(&[
        "memleak",
        "--json",
        "-o",
        "0",
        "--",
        dlleaker.to_str().unwrap(),
        "--malloc",
        tcmalloc.to_str().unwrap(),
        "100",
        "30",
    ]);
    finished.assert_success();
    assert_probed_during_the_trace(&finished.stderr, &tcmalloc);
    let rows = finished.json();
    assert_eq!(leaked_from_loaded(&rows), [(30000, 30)], "{rows:?}");
}

/// (bytes, allocations) of the rows of the mallocs dlleaker's
/// leak_from_loaded made itself (its dlopen allocates too, deeper).
fn leaked_from_loaded(rows: &[Value]) -> Vec<(u64, u64)> {
    rows.iter()
        .filter(|r| {
            stack_frames(r)
                .first()
                .is_some_and(|f| f.starts_with("leak_from_loaded+"))
        })
        .map(|r| {
            (
                r["bytes"].as_u64().unwrap(),
                r["allocations"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// A `-p` process that dlopens an allocator: it is not stopped (there is
/// no ptrace), but its loader's probe tells memtrace, which probes the new
/// allocator when it next looks (within its 200 ms tick; the fixture waits
/// a second before it allocates): what it allocates then is exact.
#[test]
fn a_p_processs_dlopened_allocator_is_probed() {
    require_memleak_user_mode!();
    let dlleaker = fixture("dlleaker");
    let tcmalloc = debian_library("libtcmalloc_minimal.so.4");
    let args = ["--malloc", tcmalloc.to_str().unwrap(), "0", "30", "1000"];
    let mut held = Held::start(&dlleaker, &args);
    let pid = held.pid().to_string();
    let tracer = Tracer::start(&["memleak", "--json", "-o", "0", "-p", &pid, "3600"]);
    assert!(held.go().success());
    let finished = tracer.wait();
    assert_probed_during_the_trace(&finished.stderr, &tcmalloc);
    let rows = finished.json();
    assert_eq!(leaked_from_loaded(&rows), [(30000, 30)], "{rows:?}");
}

/// The state letter of /proc/PID/stat (R, S, T, t, Z, ...), if it lives.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// A followed command that stops itself (SIGSTOP) stays stopped, as it
/// would untraced, until SIGCONT; then it goes on to its end.
#[test]
fn a_followed_command_stays_stopped_until_sigcont() {
    require_memleak_user_mode!();
    let tracer = Tracer::start(&[
        "memleak",
        "--json",
        "--",
        "/bin/sh",
        "-c",
        "kill -STOP $$; exit 9",
    ]);
    let memtrace = tracer.pid();
    let children = format!("/proc/{memtrace}/task/{memtrace}/children");
    let command: u32 = std::fs::read_to_string(children)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let stopped = |pid| matches!(process_state(pid), Some('T' | 't'));
    let deadline = std::time::Instant::now() + scaled(std::time::Duration::from_secs(10));
    while !stopped(command) {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            process_state(command)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        stopped(command),
        "went on without SIGCONT: {:?}",
        process_state(command)
    );
    // SAFETY: kill(2) with a pid and a signal number
    assert_eq!(unsafe { libc::kill(command as i32, libc::SIGCONT) }, 0);
    let finished = tracer.wait();
    assert_eq!(finished.status.code(), Some(9), "{}", finished.stderr);
}

/// A `-p` process that execs another program: what the old one leaked went
/// with its address space (not reported, on addresses no mapping holds);
/// the new one's leaks are, exactly (the same libc stays probed); stderr
/// says the exec is not followed as a command's would be.
#[test]
fn a_p_process_that_execs_forgets_its_old_programs_leaks() {
    require_memleak_user_mode!();
    // the new program leaks at once, before memtrace can look at it
    require_no_limit!("memleak", "after a -p process's exec");
    let leaker = fixture("leaker");
    let leaker_path = leaker.to_str().unwrap();
    // the new program stays a second: memtrace reads it in while it lives
    // (on a kernel without exit-time mappings, its stacks are named by them)
    let mut held = Held::start(&leaker, &["exec", leaker_path, "many", "1000"]);
    let pid = held.pid().to_string();
    let tracer = Tracer::start(&["memleak", "--json", "-o", "0", "-p", &pid, "3600"]);
    assert!(held.go().success());
    let finished = tracer.wait();
    assert!(
        finished.stderr.contains(&format!(
            "memleak: PID {pid} exec'd another program: what it allocated before is forgotten"
        )),
        "{}",
        finished.stderr
    );
    let rows = finished.json();
    // the new program's first stacks may end [truncated] until memtrace
    // has read it in (it is not stopped at its exec): its leaks are summed
    let total = |function: &str| {
        bytes_and_allocations(&rows, function)
            .iter()
            .fold((0, 0), |(b, a), (bytes, allocs)| (b + bytes, a + allocs))
    };
    assert_eq!(total("leak_with"), (30000, 1), "{rows:?}");
    assert_eq!(total("leak_small"), (1600, 100), "{rows:?}");
    assert_nothing_of_an_old_program(&rows);
}

#[test]
fn go_tool_pprof_reads_the_profile_with_its_bytes_files_and_lines() {
    require_memleak_user_mode!();
    let profile = temp_path("leak.pb.gz");
    let path = profile.to_str().unwrap();
    run_on(
        &["memleak", "-o", "0", "--source", "--pprof", path],
        "leaker",
        &["malloc"],
    )
    .assert_success();

    // the leak's exact bytes, flat in leak_with, as pprof's -top lists it
    assert_eq!(pprof_flat(&profile, "inuse_space B", "leak_with"), "30000B");
    assert_eq!(pprof_flat(&profile, "inuse_objects", "leak_with"), "1");

    // a location's file and line, the leaker's mapping with its build id, the pid label
    let raw = go_pprof(&["-raw"], &profile);
    assert!(
        raw.lines()
            .any(|l| l.contains(" leak_with ") && l.contains("leaker.c:")),
        "{raw}"
    );
    let leaker = fixture("leaker");
    let mapping = raw
        .lines()
        .find(|l| l.contains(leaker.to_str().unwrap()))
        .unwrap_or_else(|| panic!("no mapping of the leaker:\n{raw}"));
    let build_id = mapping.split_whitespace().nth(3).unwrap_or_default();
    assert!(
        build_id.len() >= 16 && build_id.chars().all(|c| c.is_ascii_hexdigit()),
        "no build id: {mapping}"
    );
    assert!(raw.contains("pid:["), "no pid label:\n{raw}");
    let _ = std::fs::remove_file(&profile);
}
