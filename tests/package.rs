//! The Debian package `make deb` builds (make test builds it first),
//! installed by dpkg into a scratch root of its own: the binary runs from
//! there, its links dispatch to their tools, man pages and completions are
//! where man and the shells look, and dpkg removes it all again. The
//! scratch root's dpkg database has none of the package's dependencies
//! (libc6, libelf1, zlib1g), which the binary finds on this machine.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// target/debian/memtrace_VERSION-1_ARCH.deb, as cargo-deb names it.
fn package() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debian");
    let prefix = format!("memtrace_{}-1_", env!("CARGO_PKG_VERSION"));
    let found = std::fs::read_dir(&dir).ok().and_then(|entries| {
        entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .find(|path| {
                let name = path.file_name().unwrap().to_string_lossy();
                name.starts_with(&prefix) && name.ends_with(".deb")
            })
    });
    found.unwrap_or_else(|| {
        panic!(
            "no {prefix}*.deb in {}: run `make deb` (make test does)",
            dir.display()
        )
    })
}

/// `dpkg --root ROOT ARGS`, which must succeed.
fn dpkg(root: &Path, args: &[&str]) {
    let out = Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--log=/dev/null", "--force-depends", "--force-not-root"])
        .args(args)
        .output()
        .expect("running dpkg");
    assert!(out.status.success(), "dpkg {args:?}: {out:?}");
}

/// A command of the scratch root, run, and its stdout.
fn run_installed(program: &Path, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program:?} {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_package_installs_runs_and_removes_cleanly() {
    let deb = package();
    let root = temp_path("debroot");
    let database = root.join("var/lib/dpkg");
    for dir in ["info", "updates"] {
        std::fs::create_dir_all(database.join(dir)).unwrap();
    }
    std::fs::write(database.join("status"), "").unwrap();
    dpkg(&root, &["--install", deb.to_str().unwrap()]);

    let bin = root.join("usr/bin");
    let list = run_installed(&bin.join("memtrace"), &["--list"]);
    let ours = memtrace().arg("--list").output().unwrap();
    assert_eq!(list, String::from_utf8(ours.stdout).unwrap());
    // a link, named after its tool, runs it; pmap has none (procps's pmap)
    let version = run_installed(&bin.join("mmapsnoop"), &["--version"]);
    assert_eq!(
        version,
        format!("mmapsnoop {}\n", env!("CARGO_PKG_VERSION"))
    );
    assert!(std::fs::symlink_metadata(bin.join("faults"))
        .unwrap()
        .is_symlink());
    assert!(!bin.join("pmap").exists());
    for installed in [
        "usr/share/man/man1/memtrace.1.gz",
        "usr/share/man/man1/memleak.1.gz",
        "usr/share/bash-completion/completions/memtrace",
        "usr/share/bash-completion/completions/mmapsnoop",
        "usr/share/zsh/vendor-completions/_memtrace",
        "usr/share/fish/vendor_completions.d/faults.fish",
        "usr/share/man/man1/memtrace-serve.1.gz",
    ] {
        assert!(root.join(installed).is_file(), "{installed} not installed");
    }
    // the agent's unit runs the installed binary
    let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system/memtrace.service"))
        .expect("memtrace.service not installed");
    assert!(
        unit.contains("\nExecStart=/usr/bin/memtrace serve --listen 127.0.0.1:9464\n"),
        "{unit}"
    );

    dpkg(&root, &["--remove", "memtrace"]);
    assert!(!bin.join("memtrace").exists(), "the binary was left");
    assert!(!bin.join("mmapsnoop").exists(), "a link was left");
    std::fs::remove_dir_all(&root).unwrap();
}
