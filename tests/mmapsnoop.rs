//! mmapsnoop against real workloads on this kernel (root). The hugetlb test
//! reserves huge pages: it takes the machine-wide lock.

mod common;

use common::system::*;
use common::*;
use serde_json::Value;

/// The one event of `pid` whose field `key` equals `value`; fails the test otherwise.
fn only<'a>(events: &'a [Value], pid: u64, key: &str, value: impl Into<Value>) -> &'a Value {
    let value = value.into();
    let hits: Vec<&Value> = of_pid(events, pid)
        .into_iter()
        .filter(|e| e[key] == value)
        .collect();
    assert_eq!(hits.len(), 1, "one event with {key} = {value}: {events:?}");
    hits[0]
}

fn file_name(path: &std::path::Path) -> &str {
    path.file_name().unwrap().to_str().unwrap()
}

/// Runs `mmapsnoop --json [extra] -- mapper ARGS` and returns the command's pid and events.
fn trace_mapper(extra: &[&str], mapper_args: &[&str]) -> (u64, Vec<Value>, Finished) {
    let mut args = vec!["mmapsnoop", "--json"];
    args.extend_from_slice(extra);
    let finished = run_on(&args, "mapper", mapper_args);
    finished.assert_success();
    let events = finished.json();
    let pid = events
        .iter()
        .find(|e| e["comm"] == "mapper")
        .unwrap_or_else(|| panic!("no event from the mapper: {}", finished.stdout))["pid"]
        .as_u64()
        .unwrap();
    (pid, events, finished)
}

#[test]
fn anonymous_64_mib_mapping_is_shown_whole() {
    require_tool!("mmapsnoop");
    let (pid, events, _) = trace_mapper(&[], &["anon64"]);
    let e = only(&events, pid, "len", 67108864u64);
    assert_eq!(e["call"], "mmap");
    assert_eq!(strings(&e["flags"]), ["MAP_PRIVATE", "MAP_ANONYMOUS"]);
    assert_eq!(e["prot"], "RW-");
    assert_eq!(e["file"], Value::Null);
    assert_eq!(e["error"], Value::Null);
    assert!(e["addr"].as_u64().unwrap() > 0);
    assert_eq!(e["addr"].as_u64().unwrap() % 4096, 0);
}

#[test]
fn twelve_byte_mapping_prints_12_not_0() {
    require_tool!("mmapsnoop");
    let mapper = fixture("mapper");
    let finished = run(&["mmapsnoop", "--", mapper.to_str().unwrap(), "anon64"]);
    finished.assert_success();
    let lines: Vec<&str> = finished.stdout.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["PID", "TID", "COMM", "PROT", "MAP", "FLAGS", "OFFS", "SIZE", "RESULT", "FILE"]
    );
    let size_col = header.iter().position(|h| *h == "SIZE").unwrap();
    let sizes: Vec<&str> = lines[1..]
        .iter()
        .filter(|l| l.split_whitespace().nth(2) == Some("mapper"))
        .map(|l| l.split_whitespace().nth(size_col).unwrap())
        .collect();
    assert!(sizes.contains(&"64M"), "{sizes:?}");
    assert!(sizes.contains(&"12"), "{sizes:?}");
}

#[test]
fn shared_file_mapping_has_file_name_and_flags() {
    require_tool!("mmapsnoop");
    let file = temp_path("shared.dat");
    let (pid, events, _) = trace_mapper(&[], &["shared", file.to_str().unwrap()]);
    let e = only(&events, pid, "file", file_name(&file));
    assert_eq!(e["len"], 1024);
    assert_eq!(strings(&e["flags"]), ["MAP_SHARED"]);
    assert_eq!(e["prot"], "RW-");
    assert_eq!(e["path"], file.to_str().unwrap());
    assert!(e["fd"].as_i64().unwrap() >= 0);
    let _ = std::fs::remove_file(file);
}

#[test]
fn writable_shared_map_of_read_only_fd_is_eacces() {
    require_tool!("mmapsnoop");
    let file = temp_path("readonly.dat");
    let (pid, events, _) = trace_mapper(&[], &["eacces", file.to_str().unwrap()]);
    let e = only(&events, pid, "file", file_name(&file));
    assert_eq!(e["error"], "EACCES");
    assert_eq!(e["addr"], Value::Null);
    assert_eq!(strings(&e["flags"]), ["MAP_SHARED"]);
    let _ = std::fs::remove_file(file);
}

#[test]
fn private_file_mapping_is_copy_on_write() {
    require_tool!("mmapsnoop");
    let file = temp_path("private.dat");
    let (pid, events, _) = trace_mapper(&[], &["private", file.to_str().unwrap()]);
    let e = only(&events, pid, "file", file_name(&file));
    assert_eq!(strings(&e["flags"]), ["MAP_PRIVATE"]);
    assert_eq!(e["prot"], "RW-");
    assert_eq!(e["len"], 8192);
    assert_eq!(e["offset"], 4096);
    let _ = std::fs::remove_file(file);
}

#[test]
fn posix_shm_and_memfd_are_named() {
    require_tool!("mmapsnoop");
    let shm_name = format!("memtrace-test-shm-{}", std::process::id());
    let (pid, events, _) = trace_mapper(&[], &["shm", &format!("/{shm_name}")]);
    let e = only(&events, pid, "file", shm_name.as_str());
    assert_eq!(e["path"], format!("/dev/shm/{shm_name}"));
    assert_eq!(e["len"], 8192);

    let (pid, events, _) = trace_mapper(&[], &["memfd", "memtrace-memfd"]);
    assert_eq!(
        only(&events, pid, "len", 16384)["file"],
        "memfd:memtrace-memfd"
    );
}

#[test]
fn device_mapping_is_named() {
    require_tool!("mmapsnoop");
    let (pid, events, _) = trace_mapper(&[], &["device", "/dev/zero"]);
    let e = only(&events, pid, "len", 1024);
    assert_eq!(e["file"], "zero");
    assert_eq!(e["path"], "/dev/zero");
}

#[test]
fn command_is_traced_from_its_first_mmap_and_its_status_returned() {
    require_tool!("mmapsnoop");
    let finished = run_on(&["mmapsnoop", "--json"], "mapper", &["anon64", "7"]);
    assert_eq!(
        finished.status.code(),
        Some(7),
        "stderr: {}",
        finished.stderr
    );
    let events = finished.json();
    let pid = events[0]["pid"].as_u64().unwrap();
    // the dynamic loader's mappings come before main(): seen only if the
    // command was held until the probes were attached
    let first_file = events.iter().find(|e| e["file"] != Value::Null).unwrap();
    assert_eq!(first_file["pid"], pid);
    assert!(
        events
            .iter()
            .any(|e| e["file"] == "libc.so.6" && e["pid"] == pid),
        "the loader mapping libc was missed: {}",
        finished.stdout
    );
    assert!(
        events.iter().all(|e| e["pid"] == pid),
        "another process leaked in"
    );
}

#[test]
fn missing_command_is_a_clear_error() {
    require_tool!("mmapsnoop");
    let out = memtrace()
        .args(["mmapsnoop", "--", "/nonexistent/memtrace-no-such-command"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // one line, and no "Tracing ... until it exits" for a command that never ran
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        ["mmapsnoop: can't run /nonexistent/memtrace-no-such-command: No such file or directory"],
    );
}

#[test]
fn a_hostile_command_name_is_escaped_on_stderr() {
    require_tool!("mmapsnoop");
    use std::os::unix::ffi::OsStrExt;
    let dir = temp_path("hostile-command");
    std::fs::create_dir_all(&dir).unwrap();
    let name = std::ffi::OsStr::from_bytes(b"run\x1b[31m\xff\x07");
    let program = dir.join(name);
    std::fs::copy("/bin/true", &program).unwrap();
    let missing = dir.join(std::ffi::OsStr::from_bytes(b"gone\x1b]0;x\x07"));
    for (command, expected) in [
        (&program, "run\\x1b[31m\\xff\\x07"),
        (&missing, "gone\\x1b]0;x\\x07"),
    ] {
        let out = memtrace()
            .arg("mmapsnoop")
            .arg("--")
            .arg(command)
            .output()
            .unwrap();
        // raw, the name would reach the terminal: ESC and BEL are control characters
        assert!(
            !out.stderr
                .iter()
                .any(|&b| b == 0x1b || b == 0x07 || b == 0xff),
            "{:?}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.contains(expected), "{stderr}");
    }
}

#[test]
fn a_full_stderr_is_not_a_panic() {
    require_tool!("mmapsnoop");
    let full = std::fs::File::create("/dev/full").unwrap();
    let out = memtrace()
        .args(["mmapsnoop", "-d", "0.2"])
        .stdout(std::process::Stdio::null())
        .stderr(full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn pid_filter_excludes_other_processes_and_ends_with_the_target() {
    require_tool!("mmapsnoop");
    let mapper = fixture("mapper");
    let mut traced = Held::start(&mapper, &["size", "3149824"]);
    let mut other = Held::start(&mapper, &["size", "3153920"]);
    let pid = traced.pid().to_string();
    let tracer = Tracer::start(&["mmapsnoop", "--json", "-p", &pid]);
    assert!(other.go().success());
    assert!(traced.go().success());
    // the only traced process exited: memtrace ends by itself
    let finished = tracer.wait();
    finished.assert_success();
    assert!(finished.stderr.contains("exited"), "{}", finished.stderr);
    let events = finished.json();
    assert!(
        events.iter().all(|e| e["pid"] == traced.pid()),
        "{events:?}"
    );
    assert!(events.iter().any(|e| e["len"] == 3149824));
    assert!(!events.iter().any(|e| e["len"] == 3153920));
}

#[test]
fn nonexistent_pid_is_a_clear_error() {
    require_tool!("mmapsnoop");
    let out = memtrace()
        .args(["mmapsnoop", "-p", "999999999"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no process with PID 999999999"), "{stderr}");
}

#[test]
fn name_filter_keeps_only_that_comm() {
    require_tool!("mmapsnoop");
    let mapper = fixture("mapper");
    let renamed = temp_path("mt-named");
    std::fs::copy(&mapper, &renamed).unwrap();
    let comm: String = renamed
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .chars()
        .take(15)
        .collect();
    let tracer = Tracer::start(&["mmapsnoop", "--json", "-n", &comm]);
    let plain = std::process::Command::new(&mapper)
        .args(["size", "3158016"])
        .status()
        .unwrap();
    let named = std::process::Command::new(&renamed)
        .args(["size", "3162112"])
        .status()
        .unwrap();
    assert!(plain.success() && named.success());
    let finished = tracer.stop();
    finished.assert_success();
    let events = finished.json();
    assert!(
        events.iter().all(|e| e["comm"] == comm.as_str()),
        "{events:?}"
    );
    assert!(events.iter().any(|e| e["len"] == 3162112));
    assert!(!events.iter().any(|e| e["len"] == 3158016));
    let _ = std::fs::remove_file(renamed);
}

#[test]
fn hostile_process_name_is_escaped() {
    require_tool!("mmapsnoop");
    let mapper = fixture("mapper");
    let hostile = "\x1b[2J\x1b[31mevil\x07";
    let finished = run(&[
        "mmapsnoop",
        "--",
        mapper.to_str().unwrap(),
        "rename",
        hostile,
    ]);
    finished.assert_success();
    assert!(
        !finished.stdout.contains('\x1b'),
        "raw ESC reached the output"
    );
    assert!(
        !finished.stdout.contains('\x07'),
        "raw BEL reached the output"
    );
    assert!(
        finished.stdout.contains("\\x1b[2J\\x1b[31mevil\\x07"),
        "{}",
        finished.stdout
    );

    let finished = run(&[
        "mmapsnoop",
        "--json",
        "--",
        mapper.to_str().unwrap(),
        "rename",
        hostile,
    ]);
    let events = finished.json();
    assert!(
        events
            .iter()
            .any(|e| e["comm"] == "\\x1b[2J\\x1b[31mevil\\x07"),
        "{events:?}"
    );
    assert!(
        !finished.stdout.contains("\\u001b"),
        "JSON must carry the escaped form"
    );
}

#[test]
fn munmap_and_mremap_are_shown_with_the_option() {
    require_tool!("mmapsnoop");
    let (pid, events, _) = trace_mapper(&["--munmap"], &["anon64"]);
    let mine = of_pid(&events, pid);
    let big_map = mine
        .iter()
        .find(|e| e["call"] == "mmap" && e["len"] == 67108864u64)
        .unwrap();
    let unmaps: Vec<_> = mine
        .iter()
        .filter(|e| e["call"] == "munmap" && e["len"] == 67108864u64)
        .collect();
    assert_eq!(unmaps.len(), 1, "{mine:?}");
    assert_eq!(unmaps[0]["addr"], big_map["addr"]);
    assert_eq!(unmaps[0]["error"], Value::Null);

    let (pid, events, _) = trace_mapper(&["--munmap"], &["remap"]);
    let grown = only(&events, pid, "call", "mremap");
    assert_eq!(grown["old_len"], 16384);
    assert_eq!(grown["len"], 32768);
    assert_eq!(strings(&grown["flags"]), ["MREMAP_MAYMOVE"]);
    assert_eq!(grown["error"], Value::Null);
    // the mapping it grew: the last 16 KiB mmap before it
    let mapped = of_pid(&events, pid)
        .into_iter()
        .take_while(|e| e["call"] != "mremap")
        .filter(|e| e["call"] == "mmap" && e["len"] == 16384)
        .last()
        .unwrap();
    assert_eq!(grown["old_addr"], mapped["addr"]);
    let unmapped = of_pid(&events, pid)
        .into_iter()
        .find(|e| e["call"] == "munmap" && e["len"] == 32768)
        .unwrap();
    assert_eq!(unmapped["addr"], grown["addr"]);

    let (_, events, _) = trace_mapper(&[], &["remap"]);
    assert!(
        events.iter().all(|e| e["call"] == "mmap"),
        "munmap or mremap shown without --munmap"
    );
}

#[test]
fn closed_stdout_ends_quietly_with_status_0() {
    require_tool!("mmapsnoop");
    let mapper = fixture("mapper");
    let mut child = memtrace()
        .args(["mmapsnoop", "--", mapper.to_str().unwrap(), "loop", "20"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    assert!(first.starts_with("PID"), "{first}");
    drop(stdout); // like `| head -1`
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < scaled(std::time::Duration::from_secs(15)),
            "memtrace kept running with stdout closed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    assert!(!stderr.to_lowercase().contains("error"), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
    // the command was left running when the trace ended; end it
    let _ = std::process::Command::new("pkill")
        .args(["-f", "mapper loop 20"])
        .status();
}

#[test]
fn lost_events_are_counted_and_reported() {
    require_tool!("mmapsnoop");
    // a 1 MiB ring buffer and a reader that does not read while the storm runs
    const PAIRS: usize = 100_000;
    let mapper = fixture("mapper");
    let mut child = memtrace()
        .args(["mmapsnoop", "--json", "--buffer-size", "1", "--"])
        .arg(&mapper)
        .args(["storm", &PAIRS.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::BufReader::new(stdout), &mut text).unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    let storm_events = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["len"] == 36864)
        .count();
    let lost: usize = stderr
        .lines()
        .find(|l| l.contains("events lost"))
        .unwrap_or_else(|| panic!("no loss reported; stderr: {stderr}"))
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(lost > 0);
    assert!(stderr.contains("--buffer-size"), "{stderr}");
    // every storm mmap was either delivered or counted as lost
    assert!(storm_events <= PAIRS);
    assert!(
        storm_events + lost >= PAIRS,
        "delivered {storm_events} + lost {lost} < {PAIRS}"
    );
}

#[test]
fn duration_and_timestamps() {
    require_tool!("mmapsnoop");
    let started = std::time::Instant::now();
    let finished = run(&["mmapsnoop", "-T", "-d", "1"]);
    finished.assert_success();
    assert!(started.elapsed() < scaled(std::time::Duration::from_secs(10)));
    assert!(
        finished.stdout.starts_with("TIME(s)"),
        "{}",
        finished.stdout
    );
}

#[test]
fn non_root_user_gets_a_clear_error() {
    require_tool!("mmapsnoop");
    let out = memtrace_as_nobody(&["mmapsnoop"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(stderr.contains("CAP_BPF"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one clear line: {stderr}");
}

#[test]
fn hugetlb_mappings_are_named_and_decoded() {
    require_tool!("mmapsnoop");
    let _lock = lock_system_state();
    let pages = HugePages::reserve(2);
    let mapper = fixture("mapper");
    let file = pages.mount.join("huge.dat");

    let finished = run(&[
        "mmapsnoop",
        "--json",
        "--",
        mapper.to_str().unwrap(),
        "hugefile",
        file.to_str().unwrap(),
    ]);
    finished.assert_success();
    let events = finished.json();
    let hits: Vec<&Value> = events.iter().filter(|e| e["file"] == "huge.dat").collect();
    assert_eq!(hits.len(), 1, "{events:?}");
    assert_eq!(hits[0]["len"], 2097152);
    assert_eq!(hits[0]["path"], file.to_str().unwrap());
    assert_eq!(hits[0]["error"], Value::Null);

    let finished = run(&[
        "mmapsnoop",
        "--json",
        "--",
        mapper.to_str().unwrap(),
        "anonhuge",
    ]);
    finished.assert_success();
    let events = finished.json();
    let hits: Vec<&Value> = events.iter().filter(|e| e["len"] == 2097152).collect();
    assert_eq!(hits.len(), 1, "{events:?}");
    assert_eq!(
        strings(&hits[0]["flags"]),
        [
            "MAP_PRIVATE",
            "MAP_ANONYMOUS",
            "MAP_HUGETLB",
            "MAP_HUGE_2MB"
        ]
    );
    assert_eq!(
        hits[0]["error"],
        Value::Null,
        "the huge page was not available"
    );
}

#[test]
fn privileges_are_checked_where_they_count() {
    require_tool!("mmapsnoop");
    // root of a user namespace has every capability there, none for BPF
    let out = std::process::Command::new("unshare")
        .args(["-Ur", memtrace_bin(), "mmapsnoop", "-d", "0.1"])
        .output()
        .expect("running unshare (util-linux)");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("mmapsnoop: permission denied: this runs in a user namespace"),
        "{stderr}"
    );
}

/// Puts back the mode of tracefs's root directory.
struct TracefsMode(u32);

impl Drop for TracefsMode {
    fn drop(&mut self) {
        let _ = std::fs::set_permissions(
            "/sys/kernel/tracing",
            std::os::unix::fs::PermissionsExt::from_mode(self.0),
        );
    }
}

#[test]
fn a_closed_tracefs_is_not_called_unmounted() {
    require_tool!("mmapsnoop");
    let _lock = common::system::lock_system_state();
    // as root: mounts tracefs if it isn't
    run(&["mmapsnoop", "-d", "0.1"]).assert_success();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata("/sys/kernel/tracing")
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    let _restore = TracefsMode(mode);
    // tracefs's own default; some systems open it up
    std::fs::set_permissions("/sys/kernel/tracing", PermissionsExt::from_mode(0o700)).unwrap();
    // CAP_BPF and CAP_PERFMON without root: tracefs is mounted, but closed to this user
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=+bpf,+perfmon",
            "--ambient-caps=+bpf,+perfmon",
            memtrace_bin(),
            "mmapsnoop",
            "-d",
            "0.1",
        ])
        .output()
        .expect("running setpriv (util-linux)");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(
            "mmapsnoop: tracefs is mounted at /sys/kernel/tracing but this user can't read it"
        ),
        "{stderr}"
    );
}

/// A trace that outlasts its first second moves from the raw system call
/// tracepoints to the per-call ones (engine/syscalls.rs): each call is still
/// reported once, before, during and after the move.
#[test]
fn calls_across_the_move_to_per_call_tracepoints_are_each_reported_once() {
    require_tool!("mmapsnoop");
    // 300 mmap/munmap pairs 5 ms apart: over a second and a half
    let (pid, events, finished) = trace_mapper(&["--munmap", "-v"], &["paced", "300", "5000"]);
    finished.assert_moved_to_per_call_tracepoints();
    let mine = of_pid(&events, pid);
    let count = |call: &str| {
        mine.iter()
            .filter(|e| e["call"] == call && e["len"] == 28672)
            .count()
    };
    assert_eq!((count("mmap"), count("munmap")), (300, 300), "{mine:?}");
}

#[test]
fn show_cgroup_names_each_callers_memory_cgroup() {
    require_tool!("mmapsnoop");
    let _lock = lock_system_state();
    let cgroup = MemoryCgroup::create(1 << 30);
    let toucher = fixture("toucher");
    // a shell joins the cgroup, then execs the toucher: its every mmap is there
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec {} anon 1",
        cgroup.dir().display(),
        toucher.display()
    );
    let finished = run(&[
        "mmapsnoop",
        "--json",
        "--show-cgroup",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    finished.assert_success();
    let calls = finished.json();
    let touchers: Vec<&Value> = calls.iter().filter(|c| c["comm"] == "toucher").collect();
    assert!(touchers.len() >= 2, "{calls:?}");
    for call in touchers {
        assert_eq!(call["cgroup"], cgroup.path.as_str(), "{call}");
        assert_eq!(call["container"], Value::Null, "{call}");
    }
    // without the option, no such fields
    let plain = run(&["mmapsnoop", "--json", "--", "true"]);
    assert!(plain.json().iter().all(|c| c.get("cgroup").is_none()));
}
