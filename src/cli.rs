//! Options every tool shares, flattened into each tool's clap arguments.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

#[derive(Args, Debug, Clone, Default)]
pub struct CommonArgs {
    /// The tool's name, for messages (set by the registry, not an option)
    #[arg(skip)]
    pub tool: &'static str,

    /// Trace only this process (may be given more than once)
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Trace only processes with this name (exact, first 15 characters)
    #[arg(short = 'n', long = "name", value_name = "COMM")]
    pub comm: Option<String>,

    /// Stop after this many seconds
    #[arg(short = 'd', long, value_name = "SECS", value_parser = parse_seconds)]
    pub duration: Option<Duration>,

    /// Show timestamps
    #[arg(short = 'T', long)]
    pub timestamp: bool,

    /// One JSON object per line
    #[arg(long)]
    pub json: bool,

    /// Write the output to FILE, not stdout, where a COMMAND's own output stays (FILE is replaced, never written through a link; mode 0600)
    #[arg(long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Show libbpf's own messages
    #[arg(short = 'v', long)]
    pub verbose: bool,

    /// Run COMMAND as USER (a name or UID): its uid, gid, groups, HOME, USER and LOGNAME
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// Trace only tasks in this cgroup and those below it: its directory, in the unified hierarchy or a v1 controller's (/sys/fs/cgroup/...)
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,

    /// Start COMMAND, trace only it and its descendants, stop when it exits and exit with its status
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

impl CommonArgs {
    /// What is wrong with the options together, for a usage error (the
    /// `-- COMMAND` words are split off before clap parses the rest).
    pub fn conflict(&self) -> Option<&'static str> {
        if self.user.is_some() && self.command.is_empty() {
            return Some("--user says whom -- COMMAND runs as: give -- COMMAND too");
        }
        None
    }
}

/// --show-cgroup's help, the same for every tool that has it.
pub const SHOW_CGROUP_HELP: &str = "Show each task's memory cgroup (CGROUP: its path in the memory controller's hierarchy, v1 or v2) and the container or pod it names (CONTAINER); JSON fields cgroup and container";

/// Options of the tools that count and report: how often, and how much.
#[derive(Args, Debug, Clone, Default)]
pub struct ReportArgs {
    /// Print the counts of each SECS seconds (the BPF side keeps counting between reports)
    #[arg(short = 'i', long, value_name = "SECS", value_parser = parse_seconds)]
    pub interval: Option<Duration>,

    /// Show only the N largest counts
    #[arg(short = 't', long, value_name = "N")]
    pub top: Option<usize>,
}

/// The longest -d or -i: about 31 years, so that adding it to the clock can't overflow.
const MAX_SECONDS: f64 = 1e9;

/// The largest ring buffer: its size in bytes is a u32, and a power of two.
const MAX_RING_MIB: u32 = 2048;

/// A ring buffer's --buffer-size in MiB: a power of two (the kernel's ring
/// buffers are), from 1 to MAX_RING_MIB.
pub fn parse_ring_mib(s: &str) -> Result<u32, String> {
    let mib: u32 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of MiB"))?;
    if !mib.is_power_of_two() || mib > MAX_RING_MIB {
        return Err(format!(
            "{mib} is not a power of two from 1 to {MAX_RING_MIB} (1, 2, 4, 8, ...)"
        ));
    }
    Ok(mib)
}

/// Prints a usage error as clap does (`error: ...`) and gives its exit status
/// (2): for rules between options that clap's attributes can't state.
pub fn usage_error(message: &str) -> i32 {
    let err = clap::Error::raw(
        clap::error::ErrorKind::ArgumentConflict,
        format!("{message}\n"),
    );
    let _ = err.print();
    err.exit_code()
}

/// Seconds as a positive number, fractions allowed: `5`, `0.5`; at most MAX_SECONDS.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(format!("'{s}' is not a positive number of seconds"));
    }
    if secs > MAX_SECONDS {
        return Err(format!(
            "'{s}' is too many seconds (at most {MAX_SECONDS:e})"
        ));
    }
    Duration::try_from_secs_f64(secs).map_err(|err| format!("'{s}': {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes() {
        assert_eq!(parse_ring_mib("16"), Ok(16));
        assert_eq!(parse_ring_mib("2048"), Ok(2048));
        assert!(parse_ring_mib("3").unwrap_err().contains("power of two"));
        assert!(parse_ring_mib("0").is_err());
        assert!(parse_ring_mib("4096").is_err());
        assert!(parse_ring_mib("x").is_err());
    }

    #[test]
    fn user_needs_a_command() {
        let mut common = CommonArgs {
            user: Some("nobody".into()),
            ..CommonArgs::default()
        };
        assert!(common.conflict().unwrap().contains("-- COMMAND"));
        common.command = vec!["true".into()];
        assert_eq!(common.conflict(), None);
        assert_eq!(CommonArgs::default().conflict(), None);
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_seconds("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_seconds("0.25"), Ok(Duration::from_millis(250)));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("soon").is_err());
        // these panicked in Duration::from_secs_f64, or later in Instant + Duration
        assert!(parse_seconds("1e30")
            .unwrap_err()
            .contains("too many seconds"));
        assert!(parse_seconds("1e19").is_err());
        assert!(parse_seconds("inf").is_err());
        assert!(parse_seconds("1e9").is_ok());
    }
}
