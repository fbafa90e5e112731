//! `memtrace doctor` against the tools themselves, on whatever kernel this
//! runs on (the host's, and each kernel of the VM matrix): every tool it says
//! runs does, every one it says cannot run fails (root).

mod common;

use common::*;
use serde_json::Value;

/// A short run of `tool` that loads and attaches all it would (memleak:
/// `mode` user or kernel).
fn short_run(tool: &str, mode: &str) -> std::process::Output {
    let me = std::process::id().to_string();
    let args = match (tool, mode) {
        ("pmap", _) => vec!["pmap", "-p", &me],
        ("memleak", "kernel") => vec!["memleak", "--kernel", "-d", "0.2"],
        (tool, _) => vec![tool, "--", "/bin/true"],
    };
    memtrace().args(&args).output().expect("running memtrace")
}

#[test]
fn every_tool_doctor_says_runs_does_and_the_others_fail() {
    require_root!();
    let report = doctor();
    let tools = report["tools"].as_array().expect("doctor's tools");
    assert_eq!(tools.len(), 14, "{report}");
    for verdict in tools {
        let tool = verdict["tool"].as_str().unwrap();
        let mechanism = verdict["mechanism"].as_str().unwrap();
        let runs = verdict["state"] != "cannot_run";
        let modes: Vec<&str> = match tool {
            // each mode doctor names a mechanism for runs; the other fails
            "memleak" => vec!["user", "kernel"],
            _ => vec![""],
        };
        for mode in modes {
            let expected = match mode {
                "" => runs,
                mode => mechanism.contains(&format!("{mode}: ")),
            };
            let finished = short_run(tool, mode);
            let stderr = String::from_utf8_lossy(&finished.stderr);
            assert_eq!(
                finished.status.success(),
                expected,
                "{tool} {mode}: doctor says {verdict}; the tool: {:?}\n{stderr}",
                finished.status,
            );
            if !expected {
                let lines: Vec<&str> = stderr.lines().collect();
                assert!(
                    lines
                        .last()
                        .is_some_and(|l| l.starts_with(&format!("{tool}: "))),
                    "{tool} {mode}: one line naming the tool: {stderr}"
                );
            }
        }
    }
}

#[test]
fn doctor_names_every_feature_with_its_release() {
    // (no BPF loaded: any user)
    let report = doctor();
    let features: Vec<&Value> = report["features"].as_array().unwrap().iter().collect();
    assert!(features.len() >= 7, "{report}");
    for feature in features {
        let since = feature["since"].as_str().unwrap();
        assert!(
            since.split('.').all(|n| n.parse::<u32>().is_ok()),
            "{feature}"
        );
        assert!(feature["present"].is_boolean(), "{feature}");
    }
    // the text has a line per tool
    let out = memtrace().arg("doctor").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for tool in report["tools"].as_array().unwrap() {
        let name = tool["tool"].as_str().unwrap();
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{name}: {text}"
        );
    }
}
