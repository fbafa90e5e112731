//! Shared by the integration tests: the root gate, fixtures compiled from
//! tests/fixtures/*.c during the run, running memtrace against them, reading
//! its JSON, and (in `system`) the lock and guards of the tests that change
//! system-wide state.
#![allow(dead_code)] // each test binary uses a different part

pub mod system;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Tests that load BPF need root. They fail loudly without it, unless
/// MEMTRACE_SKIP_ROOT_TESTS=1 says to skip them on purpose.
pub fn root_tests_enabled() -> bool {
    if std::env::var("MEMTRACE_SKIP_ROOT_TESTS").as_deref() == Ok("1") {
        eprintln!("skipped: MEMTRACE_SKIP_ROOT_TESTS=1");
        return false;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test loads BPF programs and must run as root (set MEMTRACE_SKIP_ROOT_TESTS=1 to skip root tests on purpose)"
    );
    true
}

/// The root gate, the first line of a test that loads BPF (or otherwise needs
/// root): returns from the test when `root_tests_enabled()` says to skip.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::common::root_tests_enabled() {
            return;
        }
    };
}

/// `memtrace doctor --json`: the kernel's features and each tool's verdict
/// (asked once per test binary).
pub fn doctor() -> Value {
    static REPORT: OnceLock<Value> = OnceLock::new();
    REPORT
        .get_or_init(|| {
            let out = memtrace()
                .args(["doctor", "--json"])
                .output()
                .expect("running memtrace doctor");
            assert!(out.status.success(), "memtrace doctor: {out:?}");
            serde_json::from_slice(&out.stdout).expect("doctor's JSON")
        })
        .clone()
}

/// A JSON string's text (unquoted), else the value as JSON.
fn text(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_string)
}

/// Doctor's verdict on `tool` in its report.
fn verdict_of<'a>(report: &'a Value, tool: &str) -> &'a Value {
    report["tools"]
        .as_array()
        .expect("doctor's tools")
        .iter()
        .find(|v| v["tool"] == tool)
        .unwrap_or_else(|| panic!("doctor knows no tool {tool}: {report}"))
}

/// Why `tool` cannot run on this kernel, as doctor says; None if it can.
pub fn tool_cannot_run(tool: &str) -> Option<String> {
    let report = doctor();
    let verdict = verdict_of(&report, tool);
    (verdict["state"] == "cannot_run").then(|| {
        format!(
            "{tool} cannot run on this kernel ({}): {}, as `memtrace doctor` says",
            text(&report["kernel"]),
            text(&verdict["reason"])
        )
    })
}

/// The gate of a test of `tool`: root (see require_root), and a kernel
/// the tool runs on; where doctor says it cannot, the test returns saying
/// why (a test that cannot apply there; tests/doctor.rs checks the tool
/// does fail).
#[macro_export]
macro_rules! require_tool {
    ($tool:expr) => {
        $crate::require_root!();
        if let Some(reason) = $crate::common::tool_cannot_run($tool) {
            eprintln!("skipped: {reason}");
            return;
        }
    };
}

/// Why this kernel can't run a test that needs the feature doctor names
/// `feature` (`session uprobes`); None if it has it.
pub fn kernel_lacks(feature: &str) -> Option<String> {
    let report = doctor();
    let features = report["features"].as_array().expect("doctor's features");
    let found = features
        .iter()
        .find(|f| f["name"] == feature)
        .unwrap_or_else(|| panic!("doctor knows no feature {feature:?}: {report}"));
    match found["present"].as_bool() {
        Some(true) => None,
        _ => Some(format!(
            "this kernel ({}) lacks {feature} (Linux {}), as `memtrace doctor` says",
            text(&report["kernel"]),
            text(&found["since"])
        )),
    }
}

/// The limitation of `tool` on this kernel that doctor names with words
/// `about` (`gone before the report`), with the kernel's release; None if none.
pub fn tool_limited(tool: &str, about: &str) -> Option<String> {
    let report = doctor();
    let verdict = verdict_of(&report, tool);
    let limits = verdict["limits"].as_array().expect("doctor's limits");
    limits
        .iter()
        .filter_map(|l| l.as_str())
        .find(|l| l.contains(about))
        .map(|l| {
            format!(
                "{tool} on this kernel ({}): {l}, as `memtrace doctor` says",
                text(&report["kernel"])
            )
        })
}

/// Returns from a test of what `tool` can't do on this kernel (doctor's
/// limitation with words `about`), saying so.
#[macro_export]
macro_rules! require_no_limit {
    ($tool:expr, $about:expr) => {
        if let Some(reason) = $crate::common::tool_limited($tool, $about) {
            eprintln!("skipped: {reason}");
            return;
        }
    };
}

/// The gate of a test of memleak's user mode (-p, -- COMMAND): memleak runs
/// here and doctor names no limit on its user mode.
#[macro_export]
macro_rules! require_memleak_user_mode {
    () => {
        $crate::require_tool!("memleak");
        $crate::require_no_limit!("memleak", "user mode");
    };
}

/// Returns from a test that needs a kernel feature this kernel lacks (by
/// doctor's name for it), saying so: a test that cannot apply here.
#[macro_export]
macro_rules! require_feature {
    ($feature:expr) => {
        if let Some(reason) = $crate::common::kernel_lacks($feature) {
            eprintln!("skipped: {reason}");
            return;
        }
    };
}

/// The feature (doctor's name) memleak's `--uprobes MECHANISM` needs, if
/// any (classic uprobes are on every kernel, with BPF cookies or without).
pub fn feature_for_uprobes(mechanism: &str) -> Option<&'static str> {
    match mechanism {
        "session" => Some("session uprobes"),
        "multi" => Some("multi-uprobe links"),
        "classic" => None,
        other => panic!("no uprobe mechanism {other:?}"),
    }
}

pub fn memtrace_bin() -> &'static str {
    env!("CARGO_BIN_EXE_memtrace")
}

pub fn memtrace() -> Command {
    Command::new(memtrace_bin())
}

/// `memtrace ARGS` as user nobody with no capabilities (setpriv, util-linux).
pub fn memtrace_as_nobody(args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(memtrace_bin())
        .args(args)
        .output()
        .expect("running setpriv (util-linux)")
}

/// The strings of a JSON array (flags, stack frames); fails the test if it
/// is not an array of strings.
pub fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("not a string: {v} in {value}"))
        })
        .collect()
}

/// The frames of a JSON row's `stack` array.
pub fn stack_frames(row: &Value) -> Vec<&str> {
    strings(&row["stack"])
}

/// Whether a JSON row's stack has a frame of `function` (`function+0x...`).
pub fn has_frame(row: &Value, function: &str) -> bool {
    let prefix = format!("{function}+");
    stack_frames(row).iter().any(|f| f.starts_with(&prefix))
}

/// The JSON rows of processes named `comm` whose stack has a frame of `function`.
pub fn rows_through<'a>(rows: &'a [Value], comm: &str, function: &str) -> Vec<&'a Value> {
    rows.iter()
        .filter(|r| r["comm"] == comm && has_frame(r, function))
        .collect()
}

fn scratch_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("memtrace-tests");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A fresh path for a test's files, unique across tests and runs.
pub fn temp_path(tag: &str) -> PathBuf {
    static COUNTER: Mutex<u32> = Mutex::new(0);
    let mut n = COUNTER.lock().unwrap();
    *n += 1;
    scratch_dir().join(format!("{tag}-{}-{}", std::process::id(), *n))
}

/// tests/fixtures/NAME.c compiled (once per test binary) into the target dir.
pub fn fixture(name: &str) -> PathBuf {
    fixture_with(name, name, &[])
}

/// tests/fixtures/SOURCE.c compiled with more cc `flags` (`-static`, ...)
/// into the target dir as NAME, once per test binary.
pub fn fixture_with(source: &str, name: &str, flags: &[&str]) -> PathBuf {
    build_fixture("cc", &format!("{source}.c"), name, flags)
}

/// tests/fixtures/SOURCE.cc compiled with c++ and more `flags` into the
/// target dir as NAME, once per test binary.
pub fn cxx_fixture_with(source: &str, name: &str, flags: &[&str]) -> PathBuf {
    build_fixture("c++", &format!("{source}.cc"), name, flags)
}

/// tests/fixtures/SOURCE.c built as a shared library (`-shared -fPIC`, and
/// more `flags`) into the target dir as NAME (`libfoo.so`: the module name
/// its frames print), once per test binary, beside the other fixtures.
pub fn library_fixture_with(source: &str, name: &str, flags: &[&str]) -> PathBuf {
    let mut all = vec!["-shared", "-fPIC"];
    all.extend_from_slice(flags);
    build_fixture("cc", &format!("{source}.c"), name, &all)
}

/// tests/fixtures/FILE compiled by `compiler` with the fixtures' flags and
/// `flags` (later ones win: `-O2` over `-O1`) into the fixtures dir as NAME,
/// once per test binary. A build of an earlier run is reused when its NAME.cmd
/// stamp holds the same command line and it is newer than its source and
/// fixture.h: compiling is slow in an emulated VM (scripts/test-kernel), which
/// reuses what `make test` built.
fn build_fixture(compiler: &str, file: &str, name: &str, flags: &[&str]) -> PathBuf {
    const BASE_FLAGS: [&str; 5] = ["-O1", "-g", "-fno-omit-frame-pointer", "-Wall", "-Werror"];
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT.get_or_init(Default::default).lock().unwrap();
    if let Some(path) = built.get(name) {
        return path.clone();
    }
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let source = fixtures.join(file);
    let dir = scratch_dir().join("fixtures");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(name);
    let stamp = dir.join(format!("{name}.cmd"));
    let command_line = format!(
        "{compiler} {} {} -o OUT {}\n",
        BASE_FLAGS.join(" "),
        flags.join(" "),
        source.display()
    );
    if !up_to_date(
        &out,
        &stamp,
        &command_line,
        &[&source, &fixtures.join("fixture.h")],
    ) {
        let tmp = dir.join(format!("{name}.{}.tmp", std::process::id()));
        let status = Command::new(compiler)
            .args(BASE_FLAGS)
            .args(flags)
            .arg("-o")
            .arg(&tmp)
            .arg(&source)
            .status()
            .unwrap_or_else(|err| panic!("running {compiler} to build a test fixture: {err}"));
        assert!(
            status.success(),
            "compiling {} with {compiler} {flags:?}",
            source.display()
        );
        std::fs::rename(&tmp, &out).unwrap();
        let tmp_stamp = dir.join(format!("{name}.cmd.{}.tmp", std::process::id()));
        std::fs::write(&tmp_stamp, &command_line).unwrap();
        std::fs::rename(&tmp_stamp, &stamp).unwrap();
    }
    built.insert(name.to_string(), out.clone());
    out
}

/// Whether `out` was built by `command_line` (its stamp says so) after each
/// of `inputs` last changed.
fn up_to_date(out: &Path, stamp: &Path, command_line: &str, inputs: &[&Path]) -> bool {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let Some(built) = modified(out) else {
        return false;
    };
    std::fs::read_to_string(stamp).is_ok_and(|s| s == command_line)
        && modified(stamp).is_some_and(|t| t >= built)
        && inputs
            .iter()
            .all(|input| modified(input).is_some_and(|t| t < built))
}

/// What a finished memtrace run left.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// Every stdout line as JSON; fails the test if any line isn't.
    pub fn json(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|err| panic!("not a JSON line ({err}): {line:?}"))
            })
            .collect()
    }

    pub fn assert_success(&self) -> &Self {
        assert!(
            self.status.success(),
            "memtrace failed: {:?}\nstderr:\n{}",
            self.status,
            self.stderr
        );
        self
    }

    /// Asserts that `-v` said the trace moved from the raw system call
    /// tracepoints to the per-call ones (engine/syscalls.rs).
    pub fn assert_moved_to_per_call_tracepoints(&self) -> &Self {
        assert!(
            self.stderr
                .contains("system calls: moved to the per-call tracepoints"),
            "{}",
            self.stderr
        );
        self
    }
}

/// The whole of `stream`, sent once it ends (a channel, not a join: a
/// process that outlives memtrace and holds the stream would block a join).
fn collect<R: Read + Send + 'static>(stream: R) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(stream).read_to_string(&mut text);
        let _ = tx.send(text);
    });
    rx
}

/// A memtrace process running in the background.
pub struct Tracer {
    pub child: Child,
    stdout: Option<Receiver<String>>,
    stderr_lines: Receiver<String>,
    stderr_seen: Vec<String>,
}

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// A limit on waiting, stretched by MEMTRACE_TEST_TIME_SCALE (a whole
/// number; the kernel matrix sets it for its emulated guests, where
/// workloads run several times slower).
pub fn scaled(limit: Duration) -> Duration {
    let scale = std::env::var("MEMTRACE_TEST_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    limit * scale
}

impl Tracer {
    /// Starts memtrace and returns once it says its probes are attached.
    pub fn start(args: &[&str]) -> Tracer {
        let mut command = memtrace();
        command.args(args);
        Tracer::start_command(command)
    }

    pub fn start_command(mut command: Command) -> Tracer {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("starting memtrace");
        let stdout = collect(child.stdout.take().unwrap());
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut tracer = Tracer {
            child,
            stdout: Some(stdout),
            stderr_lines: rx,
            stderr_seen: Vec::new(),
        };
        tracer.wait_ready();
        tracer
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + scaled(READY_TIMEOUT);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => {
                    let ready = line.starts_with("Tracing");
                    self.stderr_seen.push(line);
                    if ready {
                        return;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!(
                        "memtrace did not start tracing; stderr:\n{}",
                        self.stderr_seen.join("\n")
                    );
                }
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits up to `timeout` for a stderr line that `wanted` accepts while
    /// memtrace runs: the line, or None. The lines read stay in the output.
    pub fn stderr_line(
        &mut self,
        wanted: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.stderr_lines.recv_timeout(left).ok()?;
            let found = wanted(&line);
            self.stderr_seen.push(line.clone());
            if found {
                return Some(line);
            }
        }
    }

    /// Whether memtrace is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Ends it with Ctrl-C's signal and collects its output.
    pub fn stop(self) -> Finished {
        self.signal(libc::SIGINT);
        self.wait()
    }

    /// Waits for it to end by itself.
    pub fn wait(mut self) -> Finished {
        let limit = scaled(RUN_TIMEOUT);
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("memtrace did not end within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // a process memtrace traced that outlived it (left stopped?) would
        // hold its stdout open: said, not waited for
        let stdout = self
            .stdout
            .take()
            .unwrap()
            .recv_timeout(scaled(Duration::from_secs(10)))
            .unwrap_or_else(|_| {
                panic!(
                    "memtrace ended ({status}), but its stdout stayed open: a process it \
                     traced outlived it; stderr:\n{}",
                    self.stderr_seen.join("\n")
                )
            });
        let mut stderr = std::mem::take(&mut self.stderr_seen);
        while let Ok(line) = self.stderr_lines.recv_timeout(Duration::from_secs(5)) {
            stderr.push(line);
        }
        Finished {
            status,
            stdout,
            stderr: stderr.join("\n"),
        }
    }
}

/// A test that failed while memtrace ran leaves no tracer behind (a
/// `memtrace serve` would go on holding its port and its probes).
impl Drop for Tracer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs memtrace to its end (use with `-- COMMAND` or `-d`).
pub fn run(args: &[&str]) -> Finished {
    Tracer::start(args).wait()
}

/// Runs `memtrace TOOL_ARGS -- FIXTURE FIXTURE_ARGS` to its end, the fixture
/// compiled from tests/fixtures/FIXTURE.c.
pub fn run_on(tool_args: &[&str], fixture_name: &str, fixture_args: &[&str]) -> Finished {
    let program = fixture(fixture_name);
    let mut args = tool_args.to_vec();
    args.push("--");
    args.push(program.to_str().unwrap());
    args.extend_from_slice(fixture_args);
    run(&args)
}

/// Events of one pid from JSON lines.
pub fn of_pid(events: &[Value], pid: u64) -> Vec<&Value> {
    events.iter().filter(|e| e["pid"] == pid).collect()
}

/// A fixture started held on its stdin (mode "wait"), released by `go`.
pub struct Held {
    pub child: Child,
}

impl Held {
    pub fn start(fixture: &Path, args: &[&str]) -> Held {
        let child = Command::new(fixture)
            .arg("wait")
            .args(args)
            .stdin(Stdio::piped())
            .spawn()
            .expect("starting a fixture");
        Held { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn go(&mut self) -> ExitStatus {
        use std::io::Write;
        self.child.stdin.take().unwrap().write_all(b"g").unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pmapped fixture with 64 MiB mapped and 16 MiB of it touched, and
/// `files` mapped, set up and sleeping; killed when dropped. `options` go
/// first (`--huge N`).
pub struct Pmapped {
    child: Child,
}

impl Pmapped {
    pub fn start(options: &[&str], files: &[&Path]) -> Pmapped {
        let mut child = Command::new(fixture("pmapped"))
            .args(options)
            .args(["64", "16"])
            .args(files)
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting pmapped");
        let stdout = child.stdout.take().unwrap();
        let fixture = Pmapped { child };
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert_eq!(line, "ready\n", "pmapped did not set up");
        fixture
    }

    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for Pmapped {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `go tool pprof ARGS PROFILE` (Debian's golang-go), which must succeed,
/// and its stdout. -symbolize=none: the names must come from the profile.
pub fn go_pprof(args: &[&str], profile: &Path) -> String {
    let out = Command::new("go")
        .args(["tool", "pprof", "-symbolize=none"])
        .args(args)
        .arg(profile)
        .env("PPROF_TMPDIR", std::env::temp_dir())
        .output()
        .expect("running go tool pprof (Debian's golang-go; make deps installs it)");
    assert!(out.status.success(), "go tool pprof {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// What `go tool pprof -top` puts in the flat column of `function` for the
/// profile's `sample_index`: a count, or with " B" after the index, bytes
/// (`NB`).
pub fn pprof_flat(profile: &Path, sample_index: &str, function: &str) -> String {
    let (index, bytes) = match sample_index.strip_suffix(" B") {
        Some(index) => (index, true),
        None => (sample_index, false),
    };
    let index = format!("-sample_index={index}");
    let mut args = vec!["-top", &index];
    if bytes {
        args.push("-unit=B");
    }
    let top = go_pprof(&args, profile);
    let line = top
        .lines()
        .find(|line| line.trim_end().ends_with(&format!(" {function}")))
        .unwrap_or_else(|| panic!("no {function} in pprof -top:\n{top}"));
    line.split_whitespace().next().unwrap().to_string()
}
