//! The files a trace writes (--svg and --pprof at its end, --output as it
//! goes), as root where another user can plant things at the path: a
//! symlink or another user's file at the path is replaced, never written
//! through; a path that can't be written fails before the trace, in one
//! line; no temporary file is left; --output's file holds the tool's output
//! and stdout keeps the command's.
//! Everything happens in the tests' own scratch directories (no lock needed).

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

const NOBODY: u32 = 65534;

/// A fresh directory with `mode`, owned by `uid` (removed when dropped).
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str, mode: u32, uid: u32) -> Dir {
        let path = temp_path(tag);
        fs::create_dir(&path).unwrap();
        // set_permissions, not the umask's create mode: the sticky bit too
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        std::os::unix::fs::chown(&path, Some(uid), Some(uid)).unwrap();
        Dir(path)
    }

    /// World-writable and sticky, as /tmp.
    fn sticky() -> Dir {
        Dir::new("sticky", 0o1777, 0)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A root-owned file holding "victim", and its path (removed when dropped).
struct Victim(PathBuf);

impl Victim {
    fn new() -> Victim {
        let path = temp_path("victim");
        fs::write(&path, "victim").unwrap();
        Victim(path)
    }

    fn assert_unchanged(&self) {
        let content = fs::read(&self.0).unwrap();
        assert!(
            content == b"victim",
            "the victim was written through the symlink: {} bytes, {:?}...",
            content.len(),
            String::from_utf8_lossy(&content[..content.len().min(40)])
        );
        assert_eq!(fs::metadata(&self.0).unwrap().uid(), 0);
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// `link -> target`, owned by nobody, as nobody would plant it.
fn plant_symlink(target: &Path, link: &Path) {
    std::os::unix::fs::symlink(target, link).unwrap();
    std::os::unix::fs::lchown(link, Some(NOBODY), Some(NOBODY)).unwrap();
}

/// `path` is a regular file of root's, mode 0600, and its content.
fn root_private_file(path: &Path) -> Vec<u8> {
    let meta = fs::symlink_metadata(path).unwrap();
    assert!(meta.file_type().is_file(), "{path:?}: {meta:?}");
    assert_eq!(meta.uid(), 0, "{path:?}");
    assert_eq!(meta.mode() & 0o7777, 0o600, "{path:?}");
    fs::read(path).unwrap()
}

/// A whole SVG document.
fn assert_svg(svg: &[u8]) {
    let text = String::from_utf8_lossy(svg);
    assert!(text.starts_with("<?xml"), "not an SVG: {text:.200}");
    assert!(text.trim_end().ends_with("</svg>"), "not a whole SVG");
}

fn assert_flame_graph_of_toucher(svg: &[u8]) {
    assert_svg(svg);
    let text = String::from_utf8_lossy(svg);
    assert!(
        text.contains("touch_pages"),
        "no touch_pages in the flame graph"
    );
}

/// `faults --svg SVG -- toucher anon 16`, to its end, successfully.
fn faults_svg(svg: &Path) {
    run_on(
        &["faults", "--svg", svg.to_str().unwrap()],
        "toucher",
        &["anon", "16"],
    )
    .assert_success();
}

#[test]
fn svg_replaces_a_planted_symlink_not_its_target() {
    require_tool!("faults");
    // /tmp-like, and a directory of nobody's own
    for dir in [Dir::sticky(), Dir::new("nobodys", 0o755, NOBODY)] {
        let victim = Victim::new();
        let svg = dir.join("o.svg");
        plant_symlink(&victim.0, &svg);
        faults_svg(&svg);
        victim.assert_unchanged();
        assert_flame_graph_of_toucher(&root_private_file(&svg));
        assert_eq!(dir.names(), ["o.svg"], "a temporary file left");
    }
}

#[test]
fn svg_replaces_another_users_file() {
    require_tool!("faults");
    let dir = Dir::sticky();
    let svg = dir.join("o.svg");
    fs::write(&svg, "nobody's").unwrap();
    fs::set_permissions(&svg, fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::chown(&svg, Some(NOBODY), Some(NOBODY)).unwrap();
    // nobody keeps the file open, to read whatever lands in it
    let mut held = fs::File::open(&svg).unwrap();
    let old_inode = held.metadata().unwrap().ino();

    faults_svg(&svg);
    let svg_text = root_private_file(&svg);
    assert_flame_graph_of_toucher(&svg_text);
    assert_ne!(
        fs::metadata(&svg).unwrap().ino(),
        old_inode,
        "written in place"
    );
    let mut old = String::new();
    held.read_to_string(&mut old).unwrap();
    assert_eq!(old, "nobody's", "the trace's data reached nobody's file");
    assert_eq!(dir.names(), ["o.svg"]);
}

/// `PREFIX memtrace ARGS -- toucher anon 1` (PREFIX: a command and its
/// options that runs memtrace, or nothing), to its end.
fn memtrace_with(prefix: &[&str], args: &[&str]) -> Output {
    let mut command = match prefix.split_first() {
        Some((program, options)) => {
            let mut command = Command::new(program);
            command.args(options).arg(memtrace_bin());
            command
        }
        None => memtrace(),
    };
    command
        .args(args)
        .arg("--")
        .arg(fixture("toucher"))
        .args(["anon", "1"]);
    command.output().expect("running memtrace")
}

/// Status 1 and one line on stderr, before the trace, that starts with `start`.
fn assert_fails_at_once(output: &Output, start: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        !stderr.contains("Tracing"),
        "failed only after tracing: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(stderr.starts_with(start), "{stderr}");
}

#[test]
fn an_unwritable_or_missing_directory_fails_before_the_trace() {
    require_tool!("faults");
    let parent = Dir::new("parent", 0o755, 0);

    let missing = parent.join("missing").join("o.svg");
    let output = memtrace_with(&[], &["faults", "--svg", missing.to_str().unwrap()]);
    assert_fails_at_once(
        &output,
        &format!(
            "faults: --svg {}: cannot open the directory {}: No such file or directory",
            missing.display(),
            parent.join("missing").display()
        ),
    );

    // root without CAP_DAC_OVERRIDE in nobody's directory, as a user with
    // only the BPF capabilities: it can't create files there
    let unwritable = Dir::new("unwritable", 0o755, NOBODY);
    let svg = unwritable.join("o.svg");
    let no_dac = [
        "setpriv",
        "--inh-caps=-dac_override,-dac_read_search",
        "--bounding-set=-dac_override,-dac_read_search",
    ];
    let output = memtrace_with(&no_dac, &["faults", "--svg", svg.to_str().unwrap()]);
    assert_fails_at_once(
        &output,
        &format!(
            "faults: --svg {}: cannot create a file in {}: Permission denied",
            svg.display(),
            unwritable.0.display()
        ),
    );
    assert!(unwritable.names().is_empty());

    // a hostile name is escaped in the message
    let hostile = parent.join("no\x1b[2Jdir").join("o.svg");
    let output = memtrace_with(&[], &["faults", "--svg", hostile.to_str().unwrap()]);
    let escaped = format!("{}/no\\x1b[2Jdir/o.svg", parent.0.display());
    assert_fails_at_once(&output, &format!("faults: --svg {escaped}: "));
}

#[test]
fn a_failed_or_interrupted_trace_leaves_no_temporary_file() {
    require_tool!("faults");
    let dir = Dir::sticky();
    let svg = dir.join("o.svg");

    // the command can't start: the trace fails after the file was reserved
    let finished = memtrace()
        .args(["faults", "--svg", svg.to_str().unwrap()])
        .args(["--", "/nonexistent/memtrace-test-command"])
        .output()
        .unwrap();
    assert_eq!(finished.status.code(), Some(1));
    assert!(dir.names().is_empty(), "left: {:?}", dir.names());

    // Ctrl-C: the flame graph of what was traced, and nothing else
    let tracer = Tracer::start(&["faults", "--svg", svg.to_str().unwrap()]);
    let status = Command::new(fixture("toucher"))
        .args(["anon", "16"])
        .status()
        .unwrap();
    assert!(status.success());
    tracer.stop().assert_success();
    let graph = root_private_file(&svg);
    // the toucher is gone before the report: its stack is named from its
    // mappings at exit, where the kernel can give them
    match tool_limited("faults", "gone before the report") {
        None => assert_flame_graph_of_toucher(&graph),
        Some(reason) => {
            eprintln!("touch_pages not looked for: {reason}");
            assert_svg(&graph);
        }
    }
    assert_eq!(dir.names(), ["o.svg"]);
}

#[test]
fn memleak_pprof_replaces_a_planted_symlink() {
    require_memleak_user_mode!();
    let dir = Dir::sticky();
    let victim = Victim::new();
    let profile = dir.join("leak.pb.gz");
    plant_symlink(&victim.0, &profile);
    run_on(
        &["memleak", "-o", "0", "--pprof", profile.to_str().unwrap()],
        "leaker",
        &["malloc"],
    )
    .assert_success();
    victim.assert_unchanged();
    let data = root_private_file(&profile);
    assert_eq!(data[..2], [0x1f, 0x8b], "not gzip");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&data[..])
        .read_to_end(&mut raw)
        .unwrap();
    assert!(
        raw.windows(b"leak_with".len()).any(|w| w == b"leak_with"),
        "no leak_with in the profile"
    );
    assert_eq!(dir.names(), ["leak.pb.gz"]);

    let missing = dir.join("missing").join("leak.pb.gz");
    let output = memtrace_with(&[], &["memleak", "--pprof", missing.to_str().unwrap()]);
    assert_fails_at_once(
        &output,
        &format!(
            "memleak: --pprof {}: cannot open the directory",
            missing.display()
        ),
    );
}

/// `mmapsnoop --json ARGS -- sh -c 'echo from the command'`, to its end.
fn mmapsnoop_of_echo(args: &[&str]) -> Output {
    memtrace()
        .args(["mmapsnoop", "--json"])
        .args(args)
        .args(["--", "sh", "-c", "echo from the command"])
        .output()
        .expect("running memtrace")
}

#[test]
fn output_goes_to_its_file_and_the_commands_stays_on_stdout() {
    require_tool!("mmapsnoop");
    let dir = Dir::sticky();
    let victim = Victim::new();
    let path = dir.join("out.jsonl");
    plant_symlink(&victim.0, &path);
    let output = mmapsnoop_of_echo(&["-o", path.to_str().unwrap()]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "from the command\n"
    );
    victim.assert_unchanged();
    let written = String::from_utf8(root_private_file(&path)).unwrap();
    let records: Vec<serde_json::Value> = written
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert!(
        records
            .iter()
            .any(|r| r["comm"] == "sh" && r["call"] == "mmap"),
        "no mmap by sh in {written:.400}"
    );
    assert_eq!(dir.names(), ["out.jsonl"], "a temporary file left");
}

#[test]
fn memleak_output_is_its_long_option() {
    require_memleak_user_mode!();
    // -o is BCC's --older in memleak: --output has no short form there
    let dir = Dir::sticky();
    let report = dir.join("leaks.txt");
    let finished = memtrace()
        .args(["memleak", "-o", "0", "--output", report.to_str().unwrap()])
        .arg("--")
        .arg(fixture("leaker"))
        .arg("malloc")
        .output()
        .unwrap();
    assert!(finished.status.success(), "{finished:?}");
    let text = String::from_utf8(root_private_file(&report)).unwrap();
    assert!(text.contains("leak_with"), "{text:.400}");
    assert!(
        finished.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&finished.stdout)
    );
}

#[test]
fn output_of_a_run_that_fails_leaves_the_path_as_it_was() {
    require_tool!("mmapsnoop");
    let dir = Dir::sticky();
    let path = dir.join("out.jsonl");
    fs::write(&path, "kept").unwrap();
    let finished = memtrace()
        .args(["mmapsnoop", "-o", path.to_str().unwrap()])
        .args(["--", "/nonexistent/memtrace-test-command"])
        .output()
        .unwrap();
    assert_eq!(finished.status.code(), Some(1), "{finished:?}");
    assert_eq!(fs::read_to_string(&path).unwrap(), "kept");
    assert_eq!(dir.names(), ["out.jsonl"], "a temporary file left");

    let missing = dir.join("missing").join("out.jsonl");
    let output = mmapsnoop_of_echo(&["--output", missing.to_str().unwrap()]);
    assert_fails_at_once(
        &output,
        &format!(
            "mmapsnoop: --output {}: cannot open the directory",
            missing.display()
        ),
    );
    assert!(
        output.stdout.is_empty(),
        "the command ran: {:?}",
        output.stdout
    );
}
