//! brkstack against a fixture that grows its heap through known functions (root).

mod common;

use common::*;

#[test]
fn sbrk_calls_and_bytes_by_stack() {
    require_tool!("brkstack");
    // stacks through libc, which is built without frame pointers
    require_no_limit!("brkstack", "without frame pointers are short");
    let finished = run_on(&["brkstack", "--json"], "grower", &["sbrk", "16", "65536"]);
    finished.assert_success();
    let rows = finished.json();
    let grown = rows_through(&rows, "grower", "grow_heap");
    assert_eq!(grown.len(), 1, "{rows:?}");
    assert_eq!(grown[0]["calls"], 16, "{rows:?}");
    assert_eq!(grown[0]["bytes_grown"], 16 * 65536, "{rows:?}");
    assert_eq!(grown[0]["bytes_shrunk"], 0, "{rows:?}");
    // unwound through libc (built without frame pointers here) down to main
    let stack = stack_frames(grown[0]);
    let at = |name: &str| stack.iter().position(|f| f.contains(name));
    let (sbrk, grow, main) = (at("sbrk+"), at("grow_heap+"), at("main+"));
    assert!(sbrk < grow && grow < main && sbrk.is_some(), "{stack:?}");
    assert!(stack[grow.unwrap()].ends_with("[grower]"), "{stack:?}");
    // the sbrk(0) in main is a brk call of its own stack, growing nothing
    let all_calls: u64 = rows
        .iter()
        .filter(|r| r["comm"] == "grower")
        .map(|r| r["calls"].as_u64().unwrap())
        .sum();
    assert!(all_calls > 16, "{rows:?}");
}

/// On every kernel, .eh_frame or not (5.10's brkstack follows frame pointers
/// alone): brk calls from code with frame pointers down to the system call.
#[test]
fn raw_brk_calls_by_a_frame_pointer_stack() {
    require_tool!("brkstack");
    let finished = run_on(&["brkstack", "--json"], "grower", &["raw", "12", "8192"]);
    finished.assert_success();
    let rows = finished.json();
    let grown = rows_through(&rows, "grower", "grow_heap_raw");
    assert_eq!(grown.len(), 1, "{rows:?}");
    assert_eq!(
        (&grown[0]["calls"], &grown[0]["bytes_grown"]),
        (&12.into(), &(12 * 8192).into()),
        "{rows:?}"
    );
    let stack = stack_frames(grown[0]);
    assert!(
        stack.len() >= 2
            && stack[0].starts_with("grow_heap_raw+")
            && stack[1].starts_with("main+")
            && stack[..2].iter().all(|f| f.ends_with("[grower]")),
        "{stack:?}"
    );
}

#[test]
fn malloc_growth_is_attributed_to_its_caller() {
    require_tool!("brkstack");
    // stacks through libc, which is built without frame pointers
    require_no_limit!("brkstack", "without frame pointers are short");
    // 64 blocks of 100000 bytes, under glibc's mmap threshold: from the heap
    let finished = run_on(
        &["brkstack", "--json"],
        "grower",
        &["malloc", "64", "100000"],
    );
    finished.assert_success();
    let rows = finished.json();
    let grown: u64 = rows_through(&rows, "grower", "grow_with_malloc")
        .iter()
        .map(|r| r["bytes_grown"].as_u64().unwrap())
        .sum();
    // the heap grows by what was asked plus glibc's top pad (128 KiB) per extension
    assert!(
        (6_400_000..6_400_000 + (1 << 20)).contains(&grown),
        "{grown} bytes: {rows:?}"
    );
    assert!(
        rows_through(&rows, "grower", "grow_with_malloc")
            .iter()
            .all(|r| stack_frames(r)
                .iter()
                .any(|f| f.starts_with("malloc+") || f.contains("_int_malloc"))),
        "{rows:?}"
    );
}

#[test]
fn folded_by_bytes_and_svg() {
    require_tool!("brkstack");
    // stacks through libc, which is built without frame pointers
    require_no_limit!("brkstack", "without frame pointers are short");
    let svg = temp_path("brkstack.svg");
    let finished = run_on(
        &[
            "brkstack",
            "--folded",
            "--weight",
            "bytes",
            "--svg",
            svg.to_str().unwrap(),
        ],
        "grower",
        &["sbrk", "8", "4096"],
    );
    finished.assert_success();
    let line = finished
        .stdout
        .lines()
        .find(|l| l.contains(";grow_heap+"))
        .unwrap_or_else(|| panic!("{}", finished.stdout));
    assert!(line.starts_with("grower;"), "{line}");
    assert!(line.ends_with(" 32768"), "{line}");
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    assert!(svg_text.contains("<svg") && svg_text.contains("grow_heap"));
    let _ = std::fs::remove_file(svg);
}

/// Calls before and after the move to the per-call tracepoints (after the
/// trace's first second: engine/syscalls.rs) are each counted once.
#[test]
fn calls_across_the_move_to_per_call_tracepoints_are_each_counted_once() {
    require_tool!("brkstack");
    // stacks through libc, which is built without frame pointers
    require_no_limit!("brkstack", "without frame pointers are short");
    // 150 sbrk(4096) calls 10 ms apart: over a second and a half
    let finished = run_on(
        &["brkstack", "--json", "-v"],
        "grower",
        &["sbrk", "150", "4096", "10000"],
    );
    finished
        .assert_success()
        .assert_moved_to_per_call_tracepoints();
    let rows = finished.json();
    let grown = rows_through(&rows, "grower", "grow_heap");
    let calls: u64 = grown.iter().map(|r| r["calls"].as_u64().unwrap()).sum();
    let bytes: u64 = grown
        .iter()
        .map(|r| r["bytes_grown"].as_u64().unwrap())
        .sum();
    assert_eq!((calls, bytes), (150, 150 * 4096), "{rows:?}");
}

#[test]
fn pprof_counts_calls_and_growth_by_stack() {
    require_tool!("brkstack");
    let profile = temp_path("brk.pb.gz");
    let path = profile.to_str().unwrap();
    run_on(
        &["brkstack", "--pprof", path],
        "grower",
        &["raw", "12", "8192"],
    )
    .assert_success();
    // the brk calls are grow_heap_raw's own (the system call is inlined)
    assert_eq!(pprof_flat(&profile, "brk_calls", "grow_heap_raw"), "12");
    assert_eq!(
        pprof_flat(&profile, "heap_growth B", "grow_heap_raw"),
        "98304B"
    );
    let raw = go_pprof(&["-raw"], &profile);
    assert!(raw.contains("comm:[grower]"), "{raw}");
    let _ = std::fs::remove_file(&profile);
}
