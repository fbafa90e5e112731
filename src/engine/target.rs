//! What to trace: every process, the processes named by `-p PID`, or a
//! command started by memtrace (`-- COMMAND ARGS`) and held before exec until
//! the probes are attached, so its first mmap is seen; or, for a tool that
//! must see what the command maps (memleak's libc), stopped under ptrace
//! right after exec, while its dynamic loader maps its libraries.

use std::ffi::{CString, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::ptrace;
use nix::sys::signal::{self, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use crate::analysis::proc_maps::{self, MapsEntry};
use crate::present::escape::escape_bytes;

pub enum Target {
    All,
    Pids(Vec<u32>),
    Command(HeldCommand),
}

impl Target {
    /// Checks `-p` pids exist; starts `-- COMMAND` held before exec.
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
        for &pid in pids {
            if !process_exists(pid) {
                bail!("no process with PID {pid}");
            }
        }
        Ok(Target::Pids(pids.to_vec()))
    }

    /// The tgids the BPF side starts its filter with; None traces everything.
    pub fn initial_tgids(&self) -> Option<Vec<u32>> {
        match self {
            Target::All => None,
            Target::Pids(pids) => Some(pids.clone()),
            Target::Command(cmd) => Some(vec![cmd.pid.as_raw() as u32]),
        }
    }

    pub fn follows_forks(&self) -> bool {
        matches!(self, Target::Command(_))
    }
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

pub fn process_exists(pid: u32) -> bool {
    pid != 0 && Path::new(&format!("/proc/{pid}")).exists()
}

/// What a pid is, for the tools that trace a user process's own code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessKind {
    User,
    /// Exited, not yet reaped: no memory, no mappings.
    Zombie,
    /// No user space at all.
    KernelThread,
}

/// The kind of process `pid` is, from /proc/PID/stat; an error naming the
/// pid if there is none.
pub fn process_kind(pid: u32) -> Result<ProcessKind> {
    let stat = i32::try_from(pid)
        .ok()
        .and_then(|pid| procfs::process::Process::new(pid).ok())
        .map(|process| process.stat());
    let stat = match stat {
        None | Some(Err(procfs::ProcError::NotFound(_))) => bail!("no process with PID {pid}"),
        Some(stat) => stat.with_context(|| format!("reading /proc/{pid}/stat"))?,
    };
    Ok(kind_of(&stat))
}

fn kind_of(stat: &procfs::process::Stat) -> ProcessKind {
    use procfs::process::{ProcState, StatFlags};
    if StatFlags::from_bits_truncate(stat.flags).contains(StatFlags::PF_KTHREAD) {
        ProcessKind::KernelThread
    } else if matches!(stat.state(), Ok(ProcState::Zombie | ProcState::Dead)) {
        ProcessKind::Zombie
    } else {
        ProcessKind::User
    }
}

/// A forked child blocked on a pipe, exec'ing COMMAND once released.
pub struct HeldCommand {
    pub pid: Pid,
    /// The command's name as given, escaped for messages.
    pub name: String,
    go: Option<OwnedFd>,
    exec_error: Option<OwnedFd>,
    /// Stopped under ptrace after exec (exec_until_mapped), until release.
    traced: bool,
    exit_code: Option<i32>,
}

/// What the held child is told on its pipe: exec, or exec under ptrace.
const GO: u8 = 1;
const GO_TRACED: u8 = 2;

/// What failed in the child before the command ran, as it reports it on
/// its error pipe (with the errno after it).
const FAILED_EXEC: u8 = 0;
const FAILED_PTRACE: u8 = 1;

/// What exec_until_mapped saw.
pub enum Mapped<T> {
    /// What was looked for, in the command's mappings; the command is
    /// stopped until release().
    Found(T),
    /// The command's dynamic loader is done and did not map it (`dynamic`),
    /// or the command has no dynamic loader (a static program); the command
    /// is stopped, and dropping the HeldCommand kills it.
    Absent { dynamic: bool },
    /// The command ended first (a library missing, say); its exit status is
    /// kept for the session.
    Exited,
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
                let report = |what: u8, errno: Errno| {
                    let mut message = [what, 0, 0, 0, 0];
                    message[1..].copy_from_slice(&(errno as i32).to_ne_bytes());
                    let _ = nix::unistd::write(&err_write, &message);
                };
                let mut byte = [0u8; 1];
                // Wait until the parent has attached its probes; EOF means it gave up.
                let go = loop {
                    match nix::unistd::read(&go_read, &mut byte) {
                        Err(Errno::EINTR) => continue,
                        Ok(1) => break byte[0],
                        _ => break 0,
                    }
                };
                if go == GO_TRACED {
                    // stopped by the kernel once exec succeeds (SIGTRAP)
                    if let Err(errno) = ptrace::traceme() {
                        report(FAILED_PTRACE, errno);
                        // SAFETY: _exit is async-signal-safe and ends only this child.
                        unsafe { libc::_exit(127) };
                    }
                } else if go != GO {
                    // SAFETY: as above.
                    unsafe { libc::_exit(127) };
                }
                // Rust ignores SIGPIPE; the command should get the default.
                // SAFETY: restoring a default disposition installs no handler.
                let _ = unsafe { signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) };
                // SAFETY: program and argv_ptrs (NULL-terminated, pointing into argv) outlive the call.
                unsafe { libc::execv(program.as_ptr(), argv_ptrs.as_ptr()) };
                report(FAILED_EXEC, Errno::last());
                // SAFETY: as above.
                unsafe { libc::_exit(127) }
            }
            ForkResult::Parent { child } => Ok(HeldCommand {
                pid: child,
                name,
                go: Some(go_write),
                exec_error: Some(err_read),
                traced: false,
                exit_code: None,
            }),
        }
    }

    /// Lets the command run: exec, or, stopped after exec_until_mapped, go
    /// on untraced; fails if exec failed (no such command, ...).
    pub fn release(&mut self) -> Result<()> {
        if self.traced {
            self.traced = false;
            return ptrace::detach(self.pid, None)
                .with_context(|| format!("letting {} go on", self.name));
        }
        self.go_on(GO)
    }

    /// Tells the child to exec (under ptrace with GO_TRACED) and waits for
    /// the exec to succeed or fail.
    fn go_on(&mut self, how: u8) -> Result<()> {
        if let Some(go) = self.go.take() {
            nix::unistd::write(&go, &[how]).context("releasing the command")?;
        }
        let Some(err_pipe) = self.exec_error.take() else {
            return Ok(());
        };
        // The pipe closes on a successful exec (O_CLOEXEC), or carries what
        // failed and its errno.
        let mut buf = [0u8; 5];
        let n = loop {
            match nix::unistd::read(&err_pipe, &mut buf) {
                Err(Errno::EINTR) => continue,
                other => break other.unwrap_or(0),
            }
        };
        if n == buf.len() {
            let mut errno = [0u8; 4];
            errno.copy_from_slice(&buf[1..]);
            let errno = Errno::from_raw(i32::from_ne_bytes(errno));
            let _ = waitpid(self.pid, None);
            self.exit_code = Some(127);
            if buf[0] == FAILED_PTRACE {
                bail!(
                    "can't stop {} after exec to find what it maps: ptrace: {} (name the \
                     allocator library with -O)",
                    self.name,
                    errno.desc()
                );
            }
            bail!("can't run {}: {}", self.name, errno.desc());
        }
        Ok(())
    }

    /// Lets the command exec, stopped under ptrace right after and then at
    /// each system call of its dynamic loader, until `wanted` finds what it
    /// looks for in the command's mappings (read after each call), or the
    /// loader is done: a system call made from outside it. A program without
    /// a loader (static) is Absent at once. Nothing of the command but its
    /// loader has run then, and it stays stopped until release() or drop.
    /// Requires PTRACE_GET_SYSCALL_INFO (Linux 5.3; nix has it on glibc targets).
    pub fn exec_until_mapped<T>(
        &mut self,
        mut wanted: impl FnMut(&[MapsEntry]) -> Option<T>,
    ) -> Result<Mapped<T>> {
        self.go_on(GO_TRACED)?;
        self.traced = true;
        // the stop after exec (SIGTRAP, not delivered: the next resume drops it)
        if !self.wait_stopped()? {
            return Ok(Mapped::Exited);
        }
        // Killed with memtrace if memtrace dies while it is stopped.
        let options = ptrace::Options::PTRACE_O_TRACESYSGOOD | ptrace::Options::PTRACE_O_EXITKILL;
        ptrace::setoptions(self.pid, options).context("ptrace(PTRACE_SETOPTIONS)")?;
        let loader = self.loader()?;
        loop {
            let maps = proc_maps::read_maps(self.pid.as_raw() as u32)?;
            if let Some(found) = wanted(&maps) {
                return Ok(Mapped::Found(found));
            }
            if loader.is_empty() {
                return Ok(Mapped::Absent { dynamic: false });
            }
            // on to the end of the next system call the loader makes
            let mut signal = None;
            loop {
                match ptrace::syscall(self.pid, signal.take()) {
                    // killed meanwhile: waitpid says how it ended
                    Ok(()) | Err(Errno::ESRCH) => {}
                    Err(err) => return Err(err).context("ptrace(PTRACE_SYSCALL)"),
                }
                match waitpid(self.pid, None).context("waiting for the command")? {
                    WaitStatus::PtraceSyscall(_) => {
                        let info = ptrace::syscall_info(self.pid)
                            .context("ptrace(PTRACE_GET_SYSCALL_INFO)")?;
                        let ip = info.instruction_pointer;
                        match info.op {
                            libc::PTRACE_SYSCALL_INFO_ENTRY
                                if !loader.iter().any(|m| (m.start..m.end).contains(&ip)) =>
                            {
                                return Ok(Mapped::Absent { dynamic: true })
                            }
                            libc::PTRACE_SYSCALL_INFO_EXIT => break,
                            _ => {}
                        }
                    }
                    // a signal for the command: delivered as it resumes,
                    // unless this is a group stop (no siginfo), which resuming ends
                    WaitStatus::Stopped(_, sig) => {
                        signal = ptrace::getsiginfo(self.pid).is_ok().then_some(sig)
                    }
                    status => {
                        if self.ended(status) {
                            return Ok(Mapped::Exited);
                        }
                    }
                }
            }
        }
    }

    /// Waits for the traced command's next stop: false if it ended instead.
    fn wait_stopped(&mut self) -> Result<bool> {
        loop {
            match waitpid(self.pid, None).context("waiting for the command")? {
                WaitStatus::Stopped(..) => return Ok(true),
                status if self.ended(status) => return Ok(false),
                _ => {}
            }
        }
    }

    /// Keeps the exit status, if `status` says the command ended.
    fn ended(&mut self, status: WaitStatus) -> bool {
        let code = match status {
            WaitStatus::Exited(_, code) => code,
            WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
            _ => return false,
        };
        self.exit_code = Some(code);
        self.traced = false;
        true
    }

    /// The mappings of the command's dynamic loader (AT_BASE, where the
    /// kernel loaded it, in the command's auxiliary vector): none for a
    /// program run without one.
    fn loader(&self) -> Result<Vec<MapsEntry>> {
        let process = procfs::process::Process::new(self.pid.as_raw())
            .with_context(|| format!("reading /proc/{}", self.pid))?;
        let auxv = process
            .auxv()
            .with_context(|| format!("reading /proc/{}/auxv", self.pid))?;
        let base = auxv.get(&libc::AT_BASE).copied().unwrap_or(0);
        let maps = proc_maps::read_maps(self.pid.as_raw() as u32)?;
        let Some(file) = maps
            .iter()
            .find(|m| base != 0 && m.inode != 0 && (m.start..m.end).contains(&base))
            .map(|m| (m.device, m.inode))
        else {
            return Ok(Vec::new());
        };
        Ok(maps
            .into_iter()
            .filter(|m| (m.device, m.inode) == file)
            .collect())
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
    /// A command never released (tracing failed to start) is killed, not
    /// left blocked or stopped.
    fn drop(&mut self) {
        if self.go.is_some() || self.traced {
            let _ = signal::kill(self.pid, Signal::SIGKILL);
            let _ = waitpid(self.pid, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_of_process() {
        assert_eq!(process_kind(std::process::id()).unwrap(), ProcessKind::User);
        let stat = |state: &str, flags: u32| {
            use procfs::FromRead;
            let line = format!(
                "2 (kthreadd) {state} 0 0 0 0 -1 {flags} 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0 \
                 18446744073709551615 0 0 0 0 0 0 0 2147483647 0 0 0 0 17 1 0 0 0 0 0"
            );
            procfs::process::Stat::from_read(line.as_bytes()).unwrap()
        };
        assert_eq!(kind_of(&stat("S", 0x0020_8040)), ProcessKind::KernelThread);
        assert_eq!(kind_of(&stat("Z", 0x0040_4044)), ProcessKind::Zombie);
        assert_eq!(kind_of(&stat("S", 0x0040_0100)), ProcessKind::User);
        let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap();
        let missing: u32 = pid_max.trim().parse().unwrap();
        let err = process_kind(missing).unwrap_err();
        assert_eq!(err.to_string(), format!("no process with PID {missing}"));
    }
}
