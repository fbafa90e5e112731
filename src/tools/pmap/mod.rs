//! pmap: a process's mappings from /proc/PID/smaps (range, perms, offset,
//! device, inode, name, sizes, VmFlags) with totals by kind, sorted by a
//! chosen column. User space only: nothing is loaded into the kernel.
//! smaps.rs parses smaps; report.rs classifies and prints.

mod report;
mod smaps;

use std::io::Read;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser, ValueEnum};
use procfs::process::{ProcState, Process, Stat};
use procfs::ProcError;

use crate::cli::{usage_error, CommonArgs};
use crate::present::output::Output;

use report::{classify, sort_rows, Row};
use smaps::{ends_inside_a_mapping, parse_smaps, tmpfs_devices};

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
        Err(message) => return Ok(usage_error(message)),
    };
    let process = open_process(pid)?;
    let smaps = read_smaps(&process, pid)?;
    let maps = parse_smaps(&smaps).with_context(|| format!("parsing /proc/{pid}/smaps"))?;
    // A read of smaps ends early, at the end of a mapping and with no error,
    // when the process exits meanwhile: its state after the read tells. An
    // exit just after a whole read is told the same way (nothing tells the
    // two apart), and an exec during the read, which ends it the same way,
    // is not told.
    let cut_short = !maps.is_empty() && (ends_inside_a_mapping(&smaps) || exited(&process, pid)?);
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
    if cut_short {
        bail!("PID {pid} exited during the read; the table is incomplete");
    }
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
    if common.cgroup.is_some() {
        return Err("pmap reads one process: give -p PID, not --cgroup");
    }
    if common.duration.is_some() || common.timestamp {
        return Err("pmap reads the mappings once: -d/--duration and -T/--timestamp don't apply");
    }
    match common.pids[..] {
        [pid] => Ok(pid),
        _ => Err("pmap shows one process: give exactly one -p PID"),
    }
}

/// /proc/PID, held open: what is read through it is this process's, or
/// nothing (ENOENT, ESRCH) once it is gone, even if its pid is reused.
fn open_process(pid: u32) -> Result<Process> {
    match i32::try_from(pid).map(Process::new) {
        Ok(Ok(process)) => Ok(process),
        Ok(Err(ProcError::PermissionDenied(_))) => bail!(
            "can't read /proc/{pid}: permission denied (run as root or as the owner of PID {pid})"
        ),
        Ok(Err(ProcError::NotFound(_))) | Err(_) => bail!("no process with PID {pid}"),
        Ok(Err(err)) => Err(err).with_context(|| format!("opening /proc/{pid}")),
    }
}

fn read_smaps(process: &Process, pid: u32) -> Result<Vec<u8>> {
    let path = format!("/proc/{pid}/smaps");
    let mut text = Vec::new();
    let read = match process.open_relative("smaps") {
        Ok(mut file) => file.read_to_end(&mut text).map_err(ProcError::from),
        Err(err) => Err(err),
    };
    let gone = |err: &ProcError| match err {
        ProcError::NotFound(_) => true,
        ProcError::Io(err, _) => err.raw_os_error() == Some(libc::ESRCH),
        _ => false,
    };
    match read {
        Ok(_) => Ok(text),
        Err(ProcError::NotFound(_)) if process.stat().is_ok() => {
            bail!("{path} does not exist: this kernel was built without CONFIG_PROC_PAGE_MONITOR")
        }
        // it exited while being read: what was read is told incomplete
        Err(err) if gone(&err) && !text.is_empty() => Ok(text),
        Err(err) if gone(&err) => bail!("no process with PID {pid}"),
        Err(ProcError::PermissionDenied(_)) => bail!(
            "can't read {path}: permission denied (PID {pid} belongs to another user or is not \
             dumpable; run as root or as its owner)"
        ),
        Err(err) => Err(err).with_context(|| format!("reading {path}")),
    }
}

/// Whether the process read has exited, from its /proc/PID/stat after the read.
fn exited(process: &Process, pid: u32) -> Result<bool> {
    match process.stat() {
        Ok(stat) => Ok(has_exited(&stat)),
        Err(ProcError::NotFound(_)) => Ok(true),
        Err(ProcError::Io(err, _)) if err.raw_os_error() == Some(libc::ESRCH) => Ok(true),
        Err(err) => Err(err).with_context(|| format!("reading /proc/{pid}/stat")),
    }
}

/// A zombie, or a task whose memory is gone: exit drops the memory first
/// (the size field is 0 then), and a read of smaps ends when it does.
fn has_exited(stat: &Stat) -> bool {
    matches!(stat.state(), Ok(ProcState::Zombie | ProcState::Dead)) || stat.vsize == 0
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

    fn stat(line: &str) -> Stat {
        use procfs::FromRead;
        Stat::from_read(line.as_bytes()).unwrap()
    }

    #[test]
    fn exit_is_told_by_state_or_memory() {
        // /proc/PID/stat of a sleeping process (fields up to vsize, 23rd), a
        // zombie, and one that has let go of its memory but is not a zombie yet
        let head = "4242 (a (b) c) ";
        let middle = " 1 4242 4242 0 -1 4194560 100 0 0 0 1 1 0 0 20 0 1 0 5000 ";
        let tail = " 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let line = |state: &str, vsize: &str| format!("{head}{state}{middle}{vsize}{tail}");
        assert!(!has_exited(&stat(&line("S", "2617344"))));
        assert!(!has_exited(&stat(&line("R", "2617344"))));
        assert!(has_exited(&stat(&line("Z", "0"))));
        assert!(has_exited(&stat(&line("R", "0"))));
        assert!(has_exited(&stat(&line("X", "0"))));
    }
}
