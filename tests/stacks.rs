//! Whole user stacks through code built without frame pointers (root):
//! memleak and faults with their default options (`--unwind cfi` where the
//! kernel has it, as it must here) against fixtures built with -O2 -fomit-frame-pointer,
//! through Debian's libc and libstdc++ (no frame pointers either), through a
//! library loaded after the trace started, and through Debian's own xz. Only
//! call frame information (.eh_frame) unwinds these stacks: walking frame
//! pointers stops after the first frame or two, or wanders into addresses
//! that lie in no mapping.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

/// How the stack fixtures are built: no frame pointers.
const NO_FRAME_POINTERS: &[&str] = &["-O2", "-fomit-frame-pointer"];

/// Frames of functions that start a program's or a thread's stack.
const OUTERMOST: &[&str] = &["_start", "start_thread", "clone3", "__clone", "__clone3"];

/// A frame split into function (None if unsymbolized) and module:
/// `func+0xoff [module]` or `0xoff [module]`; None for what is no frame
/// (`[stack lost: ...]`).
fn parse_frame(frame: &str) -> Option<(Option<&str>, &str)> {
    let (left, rest) = frame.rsplit_once(" [")?;
    let module = rest.strip_suffix(']')?;
    let function = left.rsplit_once("+0x").map(|(function, _)| function);
    Some((function, module))
}

/// One expected frame: a function whose name is one of `names` (or, if
/// `exact` is false, contains one of them), in a module whose name starts
/// with `module`. An exact name also matches a C++ name with its parameters
/// (`leak_new(int)` for `leak_new`).
#[derive(Clone)]
struct Expected<'a> {
    names: Vec<&'a str>,
    exact: bool,
    module: &'a str,
}

impl Expected<'_> {
    fn matches(&self, frame: &str) -> bool {
        let Some((Some(function), module)) = parse_frame(frame) else {
            return false;
        };
        module.starts_with(self.module)
            && self.names.iter().any(|name| match self.exact {
                true => function == *name || function.starts_with(&format!("{name}(")),
                false => function.contains(name),
            })
    }
}

/// Our own function `name` in `module`.
fn ours<'a>(name: &'a str, module: &'a str) -> Expected<'a> {
    Expected {
        names: vec![name],
        exact: true,
        module,
    }
}

/// A library's function whose symbol contains one of `names` (`strdup` for
/// libc's `__strdup`, `memset` for `__memset_avx2_unaligned_erms`).
fn library<'a>(names: &[&'a str], module: &'a str) -> Expected<'a> {
    Expected {
        names: names.to_vec(),
        exact: false,
        module,
    }
}

/// Asserts that `stack` (leaf first) holds `chain`, consecutive frames from
/// its first frame; frames of `allowed_before` (a module) only may come
/// before it (the allocator's own, were a stack taken inside it).
fn assert_chain(stack: &[&str], allowed_before: Option<&str>, chain: &[Expected]) {
    let start = stack
        .iter()
        .position(|f| chain[0].matches(f))
        .unwrap_or_else(|| panic!("no frame of {:?}: {stack:?}", chain[0].names));
    for frame in &stack[..start] {
        let module = parse_frame(frame).map_or("", |(_, module)| module);
        assert!(
            allowed_before.is_some_and(|allowed| module.starts_with(allowed)),
            "{frame:?} before {:?}: {stack:?}",
            chain[0].names
        );
    }
    for (i, expected) in chain.iter().enumerate() {
        let frame = stack.get(start + i).copied();
        assert!(
            frame.is_some_and(|frame| expected.matches(frame)),
            "frame {} is {frame:?}, not {:?} [{}]: {stack:?}",
            start + i,
            expected.names,
            expected.module
        );
    }
}

/// Asserts that no frame is an address in no mapping (`0x... [unknown]`).
fn assert_in_mappings(stack: &[&str]) {
    for frame in stack {
        assert!(!frame.ends_with("[unknown]"), "{frame:?} in {stack:?}");
    }
}

/// Asserts that no frame is an address in no mapping (`0x... [unknown]`)
/// and that the stack was not cut short (`[truncated]`) nor lost.
fn assert_whole(stack: &[&str]) {
    for frame in stack {
        assert!(
            !frame.ends_with("[unknown]") && !frame.contains("[truncated]"),
            "{frame:?} in {stack:?}"
        );
        assert!(!frame.starts_with("[stack lost"), "{stack:?}");
    }
}

/// Asserts that the stack's outermost frame is `_start` of `module`: the
/// whole way down from the allocation to the program's entry.
fn assert_ends_at_start(stack: &[&str], module: &str) {
    let outermost = stack.last().copied();
    assert!(
        outermost.is_some_and(|frame| ours("_start", module).matches(frame)),
        "outermost frame {outermost:?}: {stack:?}"
    );
}

/// `memleak --json -o 0 -- PROGRAM ARGS`: every row after the program exited.
fn memleak_rows(program: &Path, args: &[&str]) -> Vec<Value> {
    memleak_rows_with(&[], program, args)
}

/// `memleak OPTIONS --json -o 0 -- PROGRAM ARGS`: every row after the program exited.
fn memleak_rows_with(options: &[&str], program: &Path, args: &[&str]) -> Vec<Value> {
    let mut command = vec!["memleak"];
    command.extend_from_slice(options);
    command.extend_from_slice(&["--json", "-o", "0", "--"]);
    command.push(program.to_str().unwrap());
    command.extend_from_slice(args);
    let finished = run(&command);
    finished.assert_success();
    finished.json()
}

/// The one row of `rows` whose stack has a frame of `expected`.
fn the_row_through<'a>(rows: &'a [Value], expected: &Expected) -> &'a Value {
    let through: Vec<&Value> = rows
        .iter()
        .filter(|r| stack_frames(r).iter().any(|f| expected.matches(f)))
        .collect();
    assert_eq!(
        through.len(),
        1,
        "rows through {:?}: {through:?}\nall rows: {rows:#?}",
        expected.names
    );
    through[0]
}

/// deepleak KIND 10: the leak is reported whole, once, from the stack
/// ALLOCATOR <- leaf_KIND <- middle_KIND <- main <- ... <- _start, and
/// nothing else is outstanding.
fn assert_deep_leak(kind: &str, bytes_each: u64, allocator: &[Expected]) {
    let deepleak = fixture_with("deepleak", "deepleak", NO_FRAME_POINTERS);
    let rows = memleak_rows(&deepleak, &[kind, "10"]);
    let leaf = format!("leaf_{kind}");
    let middle = format!("middle_{kind}");
    let row = the_row_through(&rows, &ours(&leaf, "deepleak"));
    assert_eq!(row["bytes"], 10 * bytes_each, "{row}");
    assert_eq!(row["allocations"], 10, "{row}");
    let stack = stack_frames(row);
    let mut chain = allocator.to_vec();
    chain.extend([
        ours(&leaf, "deepleak"),
        ours(&middle, "deepleak"),
        ours("main", "deepleak"),
    ]);
    assert_chain(&stack, Some("libc.so.6"), &chain);
    assert_whole(&stack);
    assert_ends_at_start(&stack, "deepleak");
    let total: u64 = rows.iter().map(|r| r["bytes"].as_u64().unwrap()).sum();
    assert_eq!(
        total,
        10 * bytes_each,
        "everything else was freed: {rows:#?}"
    );
}

/// strdup's malloc, under libc's strdup (no frame pointers) under two
/// functions of ours built without them: __strdup <- leaf_strdup <-
/// middle_strdup <- main, 10 x 100 bytes.
#[test]
fn memleak_unwinds_strdup_through_libc_and_code_without_frame_pointers() {
    require_memleak_user_mode!();
    require_no_limit!("memleak", "without frame pointers are short");
    assert_deep_leak("strdup", 100, &[library(&["strdup"], "libc.so.6")]);
}

/// `--unwind fp` is the kernel's frame-pointer walk, as before .eh_frame
/// was the default: the leak is counted exactly, but the walk can't get
/// from libc's strdup (no frame pointers) back through leaf_strdup and
/// middle_strdup (none either) to main.
#[test]
fn memleak_unwind_fp_stops_in_code_without_frame_pointers() {
    require_memleak_user_mode!();
    let deepleak = fixture_with("deepleak", "deepleak", NO_FRAME_POINTERS);
    let rows = memleak_rows_with(&["--unwind", "fp"], &deepleak, &["strdup", "10"]);
    let total: u64 = rows.iter().map(|r| r["bytes"].as_u64().unwrap()).sum();
    assert_eq!(total, 1000, "{rows:#?}");
    for row in &rows {
        let stack = stack_frames(row);
        let whole = ["leaf_strdup+", "middle_strdup+", "main+"]
            .iter()
            .all(|name| stack.iter().any(|frame| frame.starts_with(name)));
        assert!(
            !whole,
            "a frame-pointer walk through code without them: {stack:#?}"
        );
    }
}

/// The line of tests/fixtures/deepleak.c marked `LINE:name`.
fn deepleak_line(name: &str) -> usize {
    let source = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/deepleak.c"),
    )
    .unwrap();
    let marker = format!("/* LINE:{name} */");
    let found: Vec<usize> = source
        .lines()
        .enumerate()
        .filter(|(_, line)| line.contains(&marker))
        .map(|(index, _)| index + 1)
        .collect();
    assert_eq!(found.len(), 1, "{marker} in deepleak.c");
    found[0]
}

/// --source: the leak's frames carry their file and line, and the leaf
/// inlined into middle_inlined is a frame of its own, `leaf_inlined
/// (inlined)`, at the line of its strdup call, before middle_inlined at the
/// line where it was inlined; libc's strdup has its line from libc's
/// separate debug file (libc6-dbg, under /usr/lib/debug/.build-id).
#[test]
fn memleak_source_shows_lines_and_inlined_frames() {
    require_memleak_user_mode!();
    require_no_limit!("memleak", "without frame pointers are short");
    let debug_flags = [NO_FRAME_POINTERS, &["-g"]].concat();
    let deepleak = fixture_with("deepleak", "deepleak-g", &debug_flags);
    let finished = run(&[
        "memleak",
        "--source",
        "--json",
        "-o",
        "0",
        "--",
        deepleak.to_str().unwrap(),
        "inlined",
        "10",
    ]);
    finished.assert_success();
    let rows = finished.json();
    let row = the_row_through(&rows, &ours("middle_inlined", "deepleak-g"));
    assert_eq!(row["bytes"], 1000, "{row}");
    let stack = stack_frames(row);
    let at = |name: &str| {
        stack
            .iter()
            .position(|frame| frame.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} frame in {stack:#?}"))
    };
    let (leaf, middle, main) = (at("leaf_inlined "), at("middle_inlined+"), at("main+"));
    assert_eq!((middle, main), (leaf + 1, leaf + 2), "{stack:#?}");
    let with_line = |name: &str| format!("(deepleak.c:{}) [deepleak-g]", deepleak_line(name));
    assert_eq!(
        stack[leaf],
        format!("leaf_inlined (inlined) {}", with_line("leaf_inlined"))
    );
    assert!(
        stack[middle].ends_with(&with_line("middle_inlined")),
        "{stack:#?}"
    );
    assert!(stack[main].ends_with(&with_line("main")), "{stack:#?}");
    // the frame under ours is libc's strdup, with its source from libc6-dbg
    let strdup = &stack[leaf - 1];
    assert!(
        strdup.contains("strdup")
            && strdup.contains("(strdup.c:")
            && strdup.ends_with("[libc.so.6]"),
        "{stack:#?}"
    );
    assert_whole(&stack);
}

/// calloc's caller and the two functions above it, built without frame
/// pointers: leaf_calloc <- middle_calloc <- main, 10 x 300 bytes.
#[test]
fn memleak_unwinds_calloc_callers_without_frame_pointers() {
    require_memleak_user_mode!();
    require_no_limit!("memleak", "without frame pointers are short");
    assert_deep_leak("calloc", 300, &[]);
}

/// realloc's caller and the two functions above it, built without frame
/// pointers: leaf_realloc <- middle_realloc <- main, 10 x 500 bytes (the
/// 16 bytes malloc'ed first are freed by realloc).
#[test]
fn memleak_unwinds_realloc_callers_without_frame_pointers() {
    require_memleak_user_mode!();
    require_no_limit!("memleak", "without frame pointers are short");
    assert_deep_leak("realloc", 500, &[]);
}

/// The same through a wrapper that execs the program (sh -c 'exec ...'):
/// the exec is followed, the new program's libraries read in before it
/// runs, so its first stacks are whole too; the shell's allocations went
/// with its address space.
#[test]
fn memleak_unwinds_a_program_exec_by_a_wrapper() {
    require_memleak_user_mode!();
    require_no_limit!("memleak", "without frame pointers are short");
    let deepleak = fixture_with("deepleak", "deepleak", NO_FRAME_POINTERS);
    let sh = Path::new("/bin/sh");
    let rows = memleak_rows(
        sh,
        &["-c", "exec \"$0\" calloc 10", deepleak.to_str().unwrap()],
    );
    let row = the_row_through(&rows, &ours("leaf_calloc", "deepleak"));
    assert_eq!(row["bytes"], 3000, "{row}");
    assert_eq!(row["allocations"], 10, "{row}");
    let stack = stack_frames(row);
    assert_whole(&stack);
    assert_ends_at_start(&stack, "deepleak");
    let total: u64 = rows.iter().map(|r| r["bytes"].as_u64().unwrap()).sum();
    assert_eq!(total, 3000, "everything else was freed: {rows:#?}");
}

/// operator new (in libstdc++, no frame pointers)
const OPERATOR_NEW: &[&str] = &["operator new", "_Znwm"];

/// `new Block` 7 times: operator new <- leak_new <- main, 7 x 1000 bytes,
/// through libstdc++ and a C++ fixture, neither with frame pointers.
#[test]
fn memleak_unwinds_operator_new_through_libstdcxx() {
    require_memleak_user_mode!();
    require_no_limit!("memleak", "without frame pointers are short");
    let cxxleak = cxx_fixture_with("cxxleak", "cxxleak", NO_FRAME_POINTERS);
    let rows = memleak_rows(&cxxleak, &["new", "7"]);
    let row = the_row_through(&rows, &ours("leak_new", "cxxleak"));
    assert_eq!(row["bytes"], 7000, "{row}");
    assert_eq!(row["allocations"], 7, "{row}");
    let stack = stack_frames(row);
    assert_chain(
        &stack,
        Some("libc.so.6"),
        &[
            library(OPERATOR_NEW, "libstdc++.so"),
            ours("leak_new", "cxxleak"),
            ours("main", "cxxleak"),
        ],
    );
    assert_whole(&stack);
    assert_ends_at_start(&stack, "cxxleak");
}

/// std::vector<int> grown to 1000 elements: the last buffer (1024 x 4 bytes)
/// is outstanding, from operator new <- the vector's own (instantiated in
/// the fixture) <- grow_vector <- main.
#[test]
fn memleak_unwinds_vector_growth_through_libstdcxx() {
    require_memleak_user_mode!();
    require_no_limit!("memleak", "without frame pointers are short");
    let cxxleak = cxx_fixture_with("cxxleak", "cxxleak", NO_FRAME_POINTERS);
    let rows = memleak_rows(&cxxleak, &["vector"]);
    let row = the_row_through(&rows, &ours("grow_vector", "cxxleak"));
    assert_eq!(row["bytes"], 4096, "{row}");
    assert_eq!(row["allocations"], 1, "{row}");
    let stack = stack_frames(row);
    let grow = stack
        .iter()
        .position(|f| ours("grow_vector", "cxxleak").matches(f))
        .unwrap();
    assert_chain(
        &stack,
        Some("libc.so.6"),
        &[library(OPERATOR_NEW, "libstdc++.so")],
    );
    let new = stack
        .iter()
        .position(|f| library(OPERATOR_NEW, "libstdc++.so").matches(f))
        .unwrap();
    assert!(new < grow, "{stack:?}");
    // between them, only std::vector<int>'s own functions (_M_realloc_insert)
    for frame in &stack[new + 1..grow] {
        assert!(
            library(&["std::vector<int"], "cxxleak").matches(frame),
            "{frame:?} between operator new and grow_vector: {stack:?}"
        );
    }
    assert!(
        stack
            .get(grow + 1)
            .is_some_and(|f| ours("main", "cxxleak").matches(f)),
        "grow_vector's caller is not main: {stack:?}"
    );
    assert_whole(&stack);
    assert_ends_at_start(&stack, "cxxleak");
}

/// libc's memset faulting in 1000 fresh pages: exactly 1000 faults, all on
/// stacks memset <- fill_pages <- main, through libc and the fixture, both
/// without frame pointers.
#[test]
fn faults_unwinds_memset_through_libc() {
    require_tool!("faults");
    require_no_limit!("faults", "without frame pointers are short");
    let memsetter = fixture_with("memsetter", "memsetter", NO_FRAME_POINTERS);
    let finished = run(&[
        "faults",
        "--json",
        "--",
        memsetter.to_str().unwrap(),
        "1000",
    ]);
    finished.assert_success();
    let rows = finished.json();
    let filled: Vec<&Value> = rows
        .iter()
        .filter(|r| {
            stack_frames(r)
                .iter()
                .any(|f| ours("fill_pages", "memsetter").matches(f))
        })
        .collect();
    let faults: u64 = filled.iter().map(|r| r["count"].as_u64().unwrap()).sum();
    assert_eq!(
        faults, 1000,
        "one fault per page: {filled:?}\nall rows: {rows:#?}"
    );
    for row in filled {
        let stack = stack_frames(row);
        assert_chain(
            &stack,
            None,
            &[
                library(&["memset"], "libc.so.6"),
                ours("fill_pages", "memsetter"),
                ours("main", "memsetter"),
            ],
        );
        assert_whole(&stack);
        assert_ends_at_start(&stack, "memsetter");
    }
    // The dynamic loader's own faults: its _start has no call frame
    // information, and a call from an object's entry point is the outermost
    // frame, so these stacks end whole at one of its two entries: _start
    // (relocating, in _dl_start) or _dl_start_user (running constructors);
    // which of them fault depends on the kernel's fault-around.
    let is_entry = |f: &&str| {
        (f.starts_with("_dl_start_user+") || f.starts_with("_start+"))
            && f.ends_with("[ld-linux-x86-64.so.2]")
    };
    let loader: Vec<Vec<&str>> = rows
        .iter()
        .filter(|r| r["comm"] == "memsetter")
        .map(stack_frames)
        .filter(|stack| stack.iter().all(|f| f.ends_with("[ld-linux-x86-64.so.2]")))
        .collect();
    assert!(!loader.is_empty(), "no loader stacks: {rows:#?}");
    for stack in loader {
        assert!(stack.last().is_some_and(is_entry), "{stack:?}");
    }
}

/// A library dlopen()ed 300 ms into the trace, built without frame
/// pointers: its leak (5 x 1000 bytes) is on the stack lib_block <- lib_leak
/// [libdlleak.so] <- load_and_leak <- main [dlleaker]: the library's unwind
/// tables are found although it was mapped after the trace started.
#[test]
fn memleak_unwinds_a_library_loaded_during_the_trace() {
    require_memleak_user_mode!();
    require_no_limit!("memleak", "without frame pointers are short");
    let library_path = library_fixture_with("dlleaklib", "libdlleak.so", NO_FRAME_POINTERS);
    let dlleaker = fixture_with("dlleaker", "dlleaker", NO_FRAME_POINTERS);
    let rows = memleak_rows(&dlleaker, &[library_path.to_str().unwrap(), "300", "5"]);
    let row = the_row_through(&rows, &ours("lib_block", "libdlleak.so"));
    assert_eq!(row["bytes"], 5000, "{row}");
    assert_eq!(row["allocations"], 5, "{row}");
    let stack = stack_frames(row);
    assert_chain(
        &stack,
        Some("libc.so.6"),
        &[
            ours("lib_block", "libdlleak.so"),
            ours("lib_leak", "libdlleak.so"),
            ours("load_and_leak", "dlleaker"),
            ours("main", "dlleaker"),
        ],
    );
    assert_whole(&stack);
    assert_ends_at_start(&stack, "dlleaker");
}

/// The path of `program` in PATH; fails the test, naming `package`, if none.
fn installed(program: &str, package: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!("{program} is not installed: scripts/install-deps installs it ({package})")
        })
}

/// The file offset of an ELF file's entry point (where `_start` is).
fn entry_offset(path: &Path) -> u64 {
    let elf = std::fs::read(path).unwrap();
    let u16_at = |at: usize| u64::from(u16::from_le_bytes(elf[at..at + 2].try_into().unwrap()));
    let u32_at = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap());
    assert_eq!(
        &elf[..5],
        b"\x7fELF\x02",
        "{}: not a 64-bit ELF file",
        path.display()
    );
    let entry = u64_at(24);
    let (phoff, phentsize, phnum) = (u64_at(32) as usize, u16_at(54) as usize, u16_at(56));
    (0..phnum as usize)
        .map(|i| phoff + i * phentsize)
        .filter(|&ph| u32_at(ph) == 1) // PT_LOAD
        .map(|ph| (u64_at(ph + 8), u64_at(ph + 16), u64_at(ph + 32))) // offset, vaddr, filesz
        .find(|&(_, vaddr, filesz)| (vaddr..vaddr + filesz).contains(&entry))
        .map(|(offset, vaddr, _)| entry - vaddr + offset)
        .unwrap_or_else(|| panic!("{}: entry point in no segment", path.display()))
}

/// 30 MiB of xorshift64* output: incompressible, the same in every run.
fn write_noise(path: &Path) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..(30 << 20) / 8 {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.write_all(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes())
            .unwrap();
    }
    out.flush().unwrap();
}

/// Debian's xz (stripped, libc and liblzma without frame pointers)
/// compressing 30 MiB with -9: nothing is lost, at least 99% of its faults
/// are on stacks that go all the way down to `_start` (xz's own, which is
/// unsymbolized in a stripped binary, counts by its address) or a thread's
/// entry, and no frame is an address in no mapping.
#[test]
fn faults_unwinds_xz_whole() {
    require_tool!("faults");
    require_no_limit!("faults", "without frame pointers are short");
    let xz = installed("xz", "xz-utils");
    let input = temp_path("noise-30m.dat");
    write_noise(&input);
    let xz_entry = entry_offset(&xz);
    let finished = run(&[
        "faults",
        "--json",
        "--",
        xz.to_str().unwrap(),
        "-9",
        "-k",
        "-f",
        "-T1",
        input.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(&input);
    let _ = std::fs::remove_file(input.with_extension("dat.xz"));
    finished.assert_success();
    assert!(!finished.stderr.contains("lost"), "{}", finished.stderr);
    let rows: Vec<Value> = finished
        .json()
        .into_iter()
        .filter(|r| r["comm"] == "xz")
        .collect();
    let outermost_is_an_entry = |stack: &[&str]| {
        let Some(&frame) = stack.last() else {
            return false;
        };
        match parse_frame(frame) {
            Some((Some(function), _)) => OUTERMOST.contains(&function),
            Some((None, "xz")) => {
                let offset = frame.split(' ').next().unwrap().trim_start_matches("0x");
                let offset = u64::from_str_radix(offset, 16).unwrap();
                (xz_entry..xz_entry + 0x40).contains(&offset)
            }
            _ => false,
        }
    };
    let mut whole = 0;
    let mut total = 0;
    let mut cut = Vec::new();
    for row in &rows {
        let stack = stack_frames(row);
        let count = row["count"].as_u64().unwrap();
        total += count;
        if outermost_is_an_entry(&stack) {
            whole += count;
        } else {
            cut.push((count, stack));
        }
    }
    cut.sort_by_key(|c| std::cmp::Reverse(c.0));
    cut.truncate(10);
    assert!(total > 10_000, "{total} faults: {rows:?}");
    assert!(
        whole * 100 >= total * 99,
        "{whole} of {total} faults on whole stacks; the largest others: {cut:#?}"
    );
    for row in &rows {
        assert_in_mappings(&stack_frames(row));
    }
}
