//! serve --profiles: memory profiles written periodically for a profile
//! collector, by memleak in a process of its own (`memtrace memleak
//! --profiles DIR EVERY`): its uprobes or kernel tracepoints, symbolization
//! and reports stay apart from the agent's collectors, and a failure of one
//! does not end the other.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::present::escape::escape_path;

/// How long memleak is given to write its last profile once told to end.
const END_WAIT: Duration = Duration::from_secs(10);

/// --profiles DIR must be a directory: said before anything loads.
pub fn check_dir(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        bail!(
            "--profiles {}: not a directory (give an existing directory for the profiles)",
            escape_path(dir)
        );
    }
    Ok(())
}

/// The memleak process that writes the profiles.
pub struct Profiler {
    child: Child,
    /// Said on stderr that it ended early.
    told: bool,
}

impl Profiler {
    /// Starts memleak writing a profile to `dir` every `every`: of process
    /// `pid`'s allocations, or of the kernel's.
    pub fn start(dir: &Path, every: Duration, pid: Option<u32>) -> Result<Profiler> {
        check_dir(dir)?;
        // this very binary: memleak is one of its tools
        let exe = std::env::current_exe().context("--profiles: finding memtrace's binary")?;
        let mut command = Command::new(exe);
        command.arg("memleak").arg("--profiles").arg(dir);
        match pid {
            Some(pid) => command.arg("-p").arg(pid.to_string()),
            None => command.arg("--kernel"),
        };
        command.arg(every.as_secs_f64().to_string());
        let child = command
            .stdin(Stdio::null())
            // its reports: the profiles hold them
            .stdout(Stdio::null())
            .spawn()
            .context("--profiles: starting memleak")?;
        Ok(Profiler { child, told: false })
    }

    /// Says once on stderr if memleak has ended (a -p process gone, an
    /// error it said): no more profiles are written, the metrics go on.
    pub fn check(&mut self) {
        if self.told {
            return;
        }
        if let Ok(Some(status)) = self.child.try_wait() {
            self.told = true;
            crate::say!("memtrace serve: --profiles: memleak ended ({status}); no more profiles are written");
        }
    }
}

/// Ends memleak as Ctrl-C would, so that it writes its last profile; killed
/// if it takes longer than END_WAIT. On every way out of serve, errors too.
impl Drop for Profiler {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: kill(2) on our own child's pid, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + END_WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
