//! The multicall front end; needs no root.

mod common;

use common::*;

#[test]
fn list_names_every_tool() {
    let out = memtrace().arg("--list").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("mmapsnoop"));
    assert!(text.contains("mmapfiles"));
}

#[test]
fn version() {
    let out = memtrace().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .starts_with("memtrace "));
}

#[test]
fn unknown_tool_lists_tools_with_status_2() {
    let out = memtrace().arg("nosuchtool").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("unknown tool 'nosuchtool'"), "{stderr}");
    assert!(
        stderr.contains("mmapsnoop") && stderr.contains("mmapfiles"),
        "{stderr}"
    );
}

#[test]
fn a_link_named_after_a_tool_runs_it() {
    let dir = temp_path("links");
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("mmapfiles");
    std::os::unix::fs::symlink(memtrace_bin(), &link).unwrap();
    let out = std::process::Command::new(&link)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("Usage: mmapfiles"), "{help}");
    assert!(help.contains("--top"), "{help}");

    // not an exact tool name: the memtrace front end
    let other = dir.join("mmapfiles2");
    std::os::unix::fs::symlink(memtrace_bin(), &other).unwrap();
    let out = std::process::Command::new(&other)
        .arg("--list")
        .output()
        .unwrap();
    assert!(out.status.success());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_option_is_a_usage_error() {
    let out = memtrace()
        .args(["mmapsnoop", "--no-such-option"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = memtrace()
        .args(["mmapsnoop", "-d", "soon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_full_stdout_is_one_line_not_a_panic() {
    let full = std::fs::File::create("/dev/full").unwrap();
    let out = memtrace().arg("--list").stdout(full).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        ["memtrace: writing the list of tools: No space left on device (os error 28)"]
    );
}

#[test]
fn absurd_durations_are_usage_errors() {
    // these panicked (Duration::from_secs_f64, then Instant + Duration)
    for args in [
        ["mmapsnoop", "-d", "1e30"],
        ["mmapsnoop", "-d", "1e19"],
        ["mmapfiles", "-i", "1e30"],
        ["vmscan", "-i", "1e19"],
    ] {
        let out = memtrace().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.contains("too many seconds"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn option_values_that_make_no_sense_are_usage_errors() {
    for (args, said) in [
        (
            &["mmapsnoop", "--buffer-size", "3"][..],
            "not a power of two",
        ),
        (
            &["shmsnoop", "--buffer-size", "4096"][..],
            "not a power of two",
        ),
        (&["memleak", "-s", "0"][..], "0"),
        (
            &["memleak", "-z", "100", "-Z", "50", "-p", "1"][..],
            "-z/--min-size 100 is above -Z/--max-size 50",
        ),
    ] {
        let out = memtrace().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.contains(said), "{args:?}: {stderr}");
    }
}

#[test]
fn user_without_a_command_is_a_usage_error() {
    for args in [
        &["mmapsnoop", "--user", "nobody"][..],
        &["drsnoop", "-p", "1", "--user", "nobody"][..],
    ] {
        let out = memtrace().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(
            stderr.starts_with("error: --user says whom -- COMMAND runs as: give -- COMMAND too\n"),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("Usage:"), "{stderr}");
    }
}

/// memleak's --uprobes chooses how user mode probes: with --kernel it would
/// mean nothing, and is refused in one line before anything loads (any user).
#[test]
fn uprobes_in_kernel_mode_is_refused() {
    let out = memtrace()
        .args(["memleak", "--kernel", "--uprobes", "classic", "-d", "0.1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("memleak: --uprobes is for user mode"),
        "{stderr}"
    );
}

/// What bash completes `line` to with memtrace's completions for `name`
/// (memtrace, or a tool's link) loaded, as bash calls the function at TAB.
fn bash_completes(name: &str, line: &str) -> Vec<String> {
    let tool = if name == "memtrace" { "" } else { name };
    let script = format!(
        r#"script=$("$MEMTRACE" completions bash {tool}) || exit 9
eval "$script"
COMP_LINE="{line}"; COMP_POINT=${{#COMP_LINE}}
read -r -a COMP_WORDS <<< "$COMP_LINE"
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
_{name} {name} "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .env("MEMTRACE", memtrace_bin())
        .output()
        .expect("running bash");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines().map(str::to_string).collect()
}

#[test]
fn bash_completes_tools_and_their_options() {
    assert_eq!(
        bash_completes("memtrace", "memtrace mmap"),
        ["mmapsnoop", "mmapfiles"]
    );
    assert_eq!(
        bash_completes("memtrace", "memtrace faults --sv"),
        ["--svg"]
    );
    assert_eq!(
        bash_completes("mmapsnoop", "mmapsnoop --outp"),
        ["--output"]
    );
}

#[test]
fn man_pages_are_roff_named_after_the_tool() {
    let out = memtrace().args(["manpage", "memleak"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains(".TH memleak 1"), "{page:.300}");
    assert!(page.contains("\\-\\-output"), "{page:.300}");

    // serve's page is memtrace-serve(1)
    let out = memtrace().args(["manpage", "serve"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains(".TH memtrace-serve 1"), "{page:.300}");
    assert!(page.contains("\\-\\-listen"), "{page:.300}");

    let out = memtrace().args(["manpage", "nosuch"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "memtrace manpage: unknown tool 'nosuch' (memtrace --list names them)\n"
    );
}

#[test]
fn profiles_need_a_directory() {
    for args in [
        &[
            "memleak",
            "--profiles",
            "/nonexistent-dir",
            "1",
            "--",
            "true",
        ][..],
        &[
            "serve",
            "--collect",
            "faults",
            "--profiles",
            "/nonexistent-dir",
        ],
    ] {
        let out = memtrace().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("--profiles /nonexistent-dir: not a directory"),
            "{stderr}"
        );
    }
}

#[test]
fn cgroup_is_refused_where_it_does_not_apply() {
    // oomkill's selects victims by their memory cgroup: a path elsewhere is one line
    let out = memtrace()
        .args(["oomkill", "--cgroup", "/proc"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(
            "oomkill: --cgroup /proc: not a directory in the memory controller's hierarchy (give one under /sys/fs/cgroup"
        ),
        "{stderr}"
    );
    let out = memtrace()
        .args(["pmap", "-p", "1", "--cgroup", "/sys/fs/cgroup"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not --cgroup"),
        "{out:?}"
    );
}
