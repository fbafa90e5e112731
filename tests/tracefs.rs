//! The tracefs mount taken away and put back: memtrace mounts it when it is
//! missing (root).
//!
//! This test unmounts tracefs, machine-wide. A BPF tool started meanwhile
//! would fail to attach its tracepoints, or race memtrace mounting tracefs
//! (two mounts at once can get EBUSY). So it is alone in its test binary:
//! cargo runs test binaries one after another, so no other test of this run
//! is started beside it, and it takes the machine-wide lock, so no
//! state-changing test of another `cargo test` run is either. (Tests of
//! another run that take no lock are not kept out.)

mod common;

use std::path::Path;

use common::system::*;
use common::*;

#[test]
fn tracefs_is_mounted_when_missing() {
    require_tool!("mmapsnoop");
    let _lock = lock_system_state();
    assert!(
        !Path::new("/sys/kernel/debug/tracing/events").exists(),
        "debugfs tracing is mounted here: libbpf would use it, so this test can't take tracefs away"
    );
    let was_mounted = mounted_fs_at("/sys/kernel/tracing").as_deref() == Some("tracefs");
    let _guard = TracefsGuard { was_mounted };
    if was_mounted {
        assert!(sh("umount /sys/kernel/tracing"), "unmounting tracefs");
    }
    assert_ne!(
        mounted_fs_at("/sys/kernel/tracing").as_deref(),
        Some("tracefs")
    );
    let finished = run_on(&["mmapsnoop", "--json"], "mapper", &["anon64"]);
    finished.assert_success();
    assert!(finished.json().iter().any(|e| e["len"] == 67108864u64));
    assert_eq!(
        mounted_fs_at("/sys/kernel/tracing").as_deref(),
        Some("tracefs")
    );
}
