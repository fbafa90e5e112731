//! pmap: a process's mappings from /proc/PID/smaps (range, perms, offset,
//! device, inode, name, sizes, VmFlags) with totals by kind, sorted by a
//! chosen column. User space only: nothing is loaded into the kernel.
//! smaps.rs parses smaps; report.rs classifies and prints.

mod report;
mod smaps;

use std::io::ErrorKind;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser, ValueEnum};

use crate::cli::CommonArgs;
use crate::engine::target::process_exists;
use crate::present::output::Output;

use report::{classify, sort_rows, Row};
use smaps::{parse_smaps, tmpfs_devices};

pub const ABOUT: &str =
    "Show a process's mappings from /proc/PID/smaps, with totals by kind (no BPF)";

#[derive(Parser, Debug)]
#[command(about = ABOUT, after_help = "\
Sizes are in KiB, as in smaps and pmap -X; JSON gives bytes.
Kinds: anonymous, heap, stack, file, shmem (tmpfs files, POSIX and SysV shared
memory, memfds, shared anonymous memory), hugetlb, vdso ([vdso], [vvar], [vsyscall]...).

Examples:
  pmap -p 1234               # every mapping by address, then the totals by kind
  pmap -p 1234 --sort rss    # the largest resident mappings first
  pmap -p 1234 --summary     # the totals alone
  pmap -p 1234 --json        # one object per mapping, then one per kind and one for all")]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Order the mappings by this column: sizes largest first, address and name ascending
    #[arg(short = 's', long, value_enum, value_name = "COLUMN", default_value_t = SortBy::Address)]
    pub sort: SortBy,

    /// Print only the totals by kind
    #[arg(long)]
    pub summary: bool,
}

/// The shared options, less those that mean nothing to a one-shot read of one
/// process (hidden, and refused when given).
pub fn command() -> clap::Command {
    Args::command()
        .mut_arg("pids", |arg| {
            arg.required(true)
                .help("The process whose mappings to show")
        })
        .mut_arg("comm", |arg| arg.hide(true))
        .mut_arg("duration", |arg| arg.hide(true))
        .mut_arg("timestamp", |arg| arg.hide(true))
        .mut_arg("verbose", |arg| arg.hide(true))
        .mut_arg("user", |arg| arg.hide(true))
        .mut_arg("command", |arg| arg.hide(true))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SortBy {
    Address,
    Size,
    Rss,
    Pss,
    SharedClean,
    SharedDirty,
    PrivateClean,
    PrivateDirty,
    /// Shared_Dirty + Private_Dirty
    Dirty,
    Swap,
    AnonHugePages,
    Hugetlb,
    Name,
}

pub fn run(args: Args) -> Result<i32> {
    let pid = match the_pid(&args.common) {
        Ok(pid) => pid,
        Err(message) => {
            let err = clap::Error::raw(
                clap::error::ErrorKind::ArgumentConflict,
                format!("{message}\n"),
            );
            let _ = err.print();
            return Ok(err.exit_code());
        }
    };
    let smaps = read_smaps(pid)?;
    let maps = parse_smaps(&smaps).with_context(|| format!("parsing /proc/{pid}/smaps"))?;
    // Without the mount table, tmpfs files are still told by name (/dev/shm/).
    let tmpfs = std::fs::read(format!("/proc/{pid}/mountinfo"))
        .map(|text| tmpfs_devices(&text))
        .unwrap_or_default();
    let mut rows: Vec<Row> = maps
        .into_iter()
        .map(|map| Row {
            kind: classify(&map, &tmpfs),
            map,
        })
        .collect();
    if rows.is_empty() {
        crate::say!(
            "pmap: PID {pid} has no user-space mappings (a kernel thread, or a process that has exited)"
        );
    }
    sort_rows(&mut rows, args.sort);
    let mut out = Output::new(args.common.json);
    report::print(&mut out, pid, &rows, args.summary)?;
    out.flush()?;
    Ok(0)
}

/// The one pid pmap reads, or what is wrong with the options.
fn the_pid(common: &CommonArgs) -> Result<u32, &'static str> {
    if !common.command.is_empty() {
        return Err("pmap reads a running process: give -p PID, not -- COMMAND");
    }
    if common.comm.is_some() {
        return Err("pmap reads one process: give -p PID, not -n/--name");
    }
    if common.duration.is_some() || common.timestamp {
        return Err("pmap reads the mappings once: -d/--duration and -T/--timestamp don't apply");
    }
    match common.pids[..] {
        [pid] => Ok(pid),
        _ => Err("pmap shows one process: give exactly one -p PID"),
    }
}

fn read_smaps(pid: u32) -> Result<Vec<u8>> {
    let path = format!("/proc/{pid}/smaps");
    match std::fs::read(&path) {
        Ok(text) => Ok(text),
        Err(err) if err.kind() == ErrorKind::NotFound && process_exists(pid) => {
            bail!("{path} does not exist: this kernel was built without CONFIG_PROC_PAGE_MONITOR")
        }
        // ESRCH: it exited while being read
        Err(err)
            if err.kind() == ErrorKind::NotFound || err.raw_os_error() == Some(libc::ESRCH) =>
        {
            bail!("no process with PID {pid}")
        }
        Err(err) if err.kind() == ErrorKind::PermissionDenied => bail!(
            "can't read {path}: permission denied (PID {pid} belongs to another user or is not \
             dumpable; run as root or as its owner)"
        ),
        Err(err) => Err(err).with_context(|| format!("reading {path}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_pid() {
        let common = |pids: &[u32]| CommonArgs {
            pids: pids.to_vec(),
            ..CommonArgs::default()
        };
        assert_eq!(the_pid(&common(&[7])), Ok(7));
        assert!(the_pid(&common(&[])).is_err());
        assert!(the_pid(&common(&[7, 8])).is_err());
        let mut with_command = common(&[7]);
        with_command.command = vec!["true".into()];
        assert!(the_pid(&with_command).is_err());
        let mut named = common(&[7]);
        named.comm = Some("x".into());
        assert!(the_pid(&named).is_err());
    }
}
