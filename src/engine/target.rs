//! What to trace: every process, the processes named by `-p PID`, or a
//! command started by memtrace (`-- COMMAND ARGS`) and held before exec until
//! the probes are attached, so its first mmap is seen.

use std::ffi::{CString, OsString};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{self, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use procfs::FromRead;

use crate::present::escape::escape_bytes;

pub enum Target {
    All,
    Pids(Vec<TracedProcess>),
    Command(HeldCommand),
}

impl Target {
    /// Checks `-p` pids name running processes; starts `-- COMMAND` held before exec.
    pub fn new(pids: &[u32], command: &[OsString]) -> Result<Target> {
        if !command.is_empty() {
            if !pids.is_empty() {
                bail!("-p/--pid and -- COMMAND can't be used together");
            }
            return Ok(Target::Command(HeldCommand::spawn(command)?));
        }
        if pids.is_empty() {
            return Ok(Target::All);
        }
        let processes = pids
            .iter()
            .map(|&pid| TracedProcess::new(pid))
            .collect::<Result<_>>()?;
        Ok(Target::Pids(processes))
    }

    /// The tgids the BPF side starts its filter with; None traces everything.
    pub fn initial_tgids(&self) -> Option<Vec<u32>> {
        match self {
            Target::All => None,
            Target::Pids(processes) => Some(processes.iter().map(|p| p.pid).collect()),
            Target::Command(cmd) => Some(vec![cmd.pid.as_raw() as u32]),
        }
    }

    pub fn follows_forks(&self) -> bool {
        matches!(self, Target::Command(_))
    }
}

/// A `-p` process, told apart from a later process that is given its pid
/// once it has exited: a pidfd (Linux 5.3) becomes readable when the process
/// exits, whatever then happens to the number; without pidfds, the start time
/// in /proc/PID/stat tells a new process from the old one.
pub struct TracedProcess {
    pub pid: u32,
    pidfd: Option<OwnedFd>,
    /// When it started (clock ticks after boot), for the check without a pidfd.
    start_time: u64,
}

impl TracedProcess {
    fn new(pid: u32) -> Result<TracedProcess> {
        let gone = || anyhow::anyhow!("no process with PID {pid}");
        let pid_i32 = i32::try_from(pid)
            .ok()
            .filter(|&pid| pid > 0)
            .ok_or_else(gone)?;
        // First, so that what /proc says next is of this process: its pid
        // can't go to another while it runs.
        let pidfd = match pidfd_open(pid_i32) {
            Ok(fd) => Some(fd),
            Err(Errno::ESRCH) => return Err(gone()),
            // a thread (EINVAL, told below), an older kernel (ENOSYS), or no
            // fd to spare: the start time will do
            Err(_) => None,
        };
        let process = procfs::process::Process::new(pid_i32).map_err(|_| gone())?;
        // /proc/TID exists for every thread, though only processes are listed
        let status = process.status().map_err(|_| gone())?;
        if status.tgid != pid_i32 {
            bail!(
                "{pid} is a thread of process {tgid}: give -p {tgid}",
                tgid = status.tgid
            );
        }
        let start_time = process.stat().map_err(|_| gone())?.starttime;
        Ok(TracedProcess {
            pid,
            pidfd,
            start_time,
        })
    }

    /// Whether the process first seen under this pid is still running (a
    /// zombie is not: it has exited and only waits for its parent).
    pub fn is_running(&self) -> bool {
        match &self.pidfd {
            Some(pidfd) => {
                let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
                // readable once it has exited; EINTR: look again next time
                !matches!(nix::poll::poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
            }
            None => {
                let stat = std::fs::read(format!("/proc/{}/stat", self.pid)).ok();
                still_the_process(self.start_time, stat.as_deref())
            }
        }
    }
}

/// pidfd_open(2): a file descriptor for the process `pid`, close-on-exec.
fn pidfd_open(pid: libc::pid_t) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes a pid and flags (0) and touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel just returned this fd, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether `stat` (the text of /proc/PID/stat, None when the pid is gone)
/// is the process that started at `start_time` and has not exited.
fn still_the_process(start_time: u64, stat: Option<&[u8]>) -> bool {
    let Some(stat) = stat.and_then(|text| procfs::process::Stat::from_read(text).ok()) else {
        return false;
    };
    stat.starttime == start_time && !matches!(stat.state, 'Z' | 'X' | 'x')
}

/// The path exec should run: a name with a slash as it is, else the first
/// executable match in PATH (as execvp would find it), else the name itself
/// (exec then fails with ENOENT, reported as such).
fn resolve_program(name: &OsString) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    if name.as_bytes().contains(&b'/') {
        return name.into();
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .unwrap_or_else(|| name.into())
}

/// Whether /proc has an entry for `pid` (a process, a thread or a zombie).
pub fn process_exists(pid: u32) -> bool {
    pid != 0 && Path::new(&format!("/proc/{pid}")).exists()
}

/// A forked child blocked on a pipe, exec'ing COMMAND once released.
pub struct HeldCommand {
    pub pid: Pid,
    /// The command's name as given, escaped for messages.
    pub name: String,
    go: Option<OwnedFd>,
    exec_error: Option<OwnedFd>,
    exit_code: Option<i32>,
}

impl HeldCommand {
    fn spawn(command: &[OsString]) -> Result<HeldCommand> {
        // Resolved here, so the child between release and exec calls no
        // allocator (execvp's PATH search mallocs, and memleak would see it).
        let program = CString::new(resolve_program(&command[0]).as_os_str().as_bytes())
            .context("the command contains a NUL byte")?;
        let argv: Vec<CString> = command
            .iter()
            .map(|arg| CString::new(arg.as_bytes()))
            .collect::<Result<_, _>>()
            .context("a command argument contains a NUL byte")?;
        // exec's NULL-terminated argv, built before fork for the same reason
        let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let (go_read, go_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).context("pipe")?;
        let (err_read, err_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).context("pipe")?;
        // for messages: another user may have named it
        let name = escape_bytes(command[0].as_bytes());

        // SAFETY: memtrace is single-threaded here (nothing has started a
        // thread yet), so the child may run any code before exec.
        match unsafe { fork() }.context("fork")? {
            ForkResult::Child => {
                drop(go_write);
                drop(err_read);
                let mut byte = [0u8; 1];
                // Wait until the parent has attached its probes; EOF means it gave up.
                let released = loop {
                    match nix::unistd::read(&go_read, &mut byte) {
                        Err(Errno::EINTR) => continue,
                        Ok(1) => break true,
                        _ => break false,
                    }
                };
                if !released {
                    // SAFETY: _exit is async-signal-safe and ends only this child.
                    unsafe { libc::_exit(127) };
                }
                // Rust ignores SIGPIPE; the command should get the default.
                // SAFETY: restoring a default disposition installs no handler.
                let _ = unsafe { signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) };
                // SAFETY: program and argv_ptrs (NULL-terminated, pointing into argv) outlive the call.
                unsafe { libc::execv(program.as_ptr(), argv_ptrs.as_ptr()) };
                let errno = Errno::last();
                let _ = nix::unistd::write(&err_write, &(errno as i32).to_ne_bytes());
                // SAFETY: as above.
                unsafe { libc::_exit(127) }
            }
            ForkResult::Parent { child } => Ok(HeldCommand {
                pid: child,
                name,
                go: Some(go_write),
                exec_error: Some(err_read),
                exit_code: None,
            }),
        }
    }

    /// Lets the command exec; fails if exec failed (no such command, ...).
    pub fn release(&mut self) -> Result<()> {
        if let Some(go) = self.go.take() {
            nix::unistd::write(&go, &[1u8]).context("releasing the command")?;
        }
        let Some(err_pipe) = self.exec_error.take() else {
            return Ok(());
        };
        // The pipe closes on a successful exec (O_CLOEXEC), or carries errno.
        let mut buf = [0u8; 4];
        let n = loop {
            match nix::unistd::read(&err_pipe, &mut buf) {
                Err(Errno::EINTR) => continue,
                other => break other.unwrap_or(0),
            }
        };
        if n == 4 {
            let errno = Errno::from_raw(i32::from_ne_bytes(buf));
            let _ = waitpid(self.pid, None);
            self.exit_code = Some(127);
            bail!("can't run {}: {}", self.name, errno.desc());
        }
        Ok(())
    }

    /// The command's exit code once it has ended (128+N for signal N).
    pub fn try_wait(&mut self) -> Option<i32> {
        if self.exit_code.is_none() {
            match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => self.exit_code = Some(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => self.exit_code = Some(128 + sig as i32),
                Err(Errno::ECHILD) => self.exit_code = Some(127),
                _ => {}
            }
        }
        self.exit_code
    }
}

impl Drop for HeldCommand {
    /// A command never released (tracing failed to start) is killed, not left blocked.
    fn drop(&mut self) {
        if self.go.is_some() {
            let _ = signal::kill(self.pid, Signal::SIGKILL);
            let _ = waitpid(self.pid, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // /proc/PID/stat of a process named "a) Z (b" (the name is not escaped
    // there), running, started 4242 ticks after boot
    const STAT: &[u8] = b"1234 (a) Z (b) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 4242 2240512 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n";

    fn with_state(state: &str) -> Vec<u8> {
        String::from_utf8_lossy(STAT)
            .replacen(") S ", &format!(") {state} "), 1)
            .into_bytes()
    }

    #[test]
    fn the_start_time_tells_the_process_from_a_later_one() {
        assert!(still_the_process(4242, Some(STAT)));
        // another process given the pid later: a later start time
        assert!(!still_the_process(4241, Some(STAT)));
        // the pid is gone
        assert!(!still_the_process(4242, None));
        // exited, waiting for its parent: not running
        assert!(!still_the_process(4242, Some(&with_state("Z"))));
        assert!(!still_the_process(4242, Some(&with_state("X"))));
        assert!(still_the_process(4242, Some(&with_state("D"))));
        assert!(!still_the_process(4242, Some(b"garbage")));
    }

    #[test]
    fn this_process_is_running_with_or_without_a_pidfd() {
        let mut me = TracedProcess::new(std::process::id()).unwrap();
        assert!(me.is_running());
        me.pidfd = None;
        assert!(me.is_running());
        me.start_time += 1;
        assert!(!me.is_running());
    }

    #[test]
    fn a_thread_is_not_a_process() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            tx.send(nix::unistd::gettid().as_raw() as u32).unwrap();
            let _ = done_rx.recv();
        });
        let tid = rx.recv().unwrap();
        let err = TracedProcess::new(tid).err().unwrap().to_string();
        let pid = std::process::id();
        assert_eq!(
            err,
            format!("{tid} is a thread of process {pid}: give -p {pid}")
        );
        done_tx.send(()).unwrap();
        thread.join().unwrap();
        assert!(TracedProcess::new(0).is_err());
        assert!(TracedProcess::new(u32::MAX).is_err());
    }
}
