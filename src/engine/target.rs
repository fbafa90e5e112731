//! What to trace: every process, the processes named by `-p PID`, or a
//! command started by memtrace (`-- COMMAND ARGS`, as `--user USER` if given)
//! and held before exec until the probes are attached, so its first mmap is
//! seen; or, for a tool that must see what the command maps (memleak's
//! allocators), stopped under ptrace right after exec, while its dynamic
//! loader maps its libraries, and kept under ptrace with the children it
//! forks, each stopped at its forks, its later execs and where the tool's
//! BPF program asks (a dlopen).

use std::collections::VecDeque;
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::ptrace;
use nix::sys::signal::{self, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Gid, Pid, Uid, User};
use procfs::FromRead;

use crate::analysis::proc_maps::{self, MapsEntry};
use crate::present::escape::escape_bytes;

pub enum Target {
    All,
    Pids(Vec<TracedProcess>),
    Command(HeldCommand),
}

impl Target {
    /// Checks `-p` pids name running processes; starts `-- COMMAND` held
    /// before exec, as `user` if given.
    pub fn new(pids: &[u32], command: &[OsString], user: Option<&str>) -> Result<Target> {
        if !command.is_empty() {
            if !pids.is_empty() {
                bail!("-p/--pid and -- COMMAND can't be used together");
            }
            let run_as = user.map(RunAs::lookup).transpose()?;
            return Ok(Target::Command(HeldCommand::spawn(
                command,
                run_as.as_ref(),
            )?));
        }
        if user.is_some() {
            bail!("--user says whom -- COMMAND runs as: give -- COMMAND too");
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

    /// The processes given with -p (a held command has not exec'd yet).
    pub fn live_pids(&self) -> Vec<u32> {
        match self {
            Target::Pids(processes) => processes.iter().map(|p| p.pid).collect(),
            _ => Vec::new(),
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

/// The user `--user` runs the command as: looked up before fork, since the
/// child may call no allocator (and the user database may need one).
pub struct RunAs {
    /// The name as given, escaped for messages.
    shown: String,
    /// The name in the user database, for USER and LOGNAME.
    name: OsString,
    uid: Uid,
    gid: Gid,
    /// The supplementary groups, as initgroups(3) would set them.
    groups: Vec<Gid>,
    home: OsString,
}

impl RunAs {
    /// A user name, or a UID: both must be in the user database (for the
    /// group, the supplementary groups and the home directory).
    pub fn lookup(user: &str) -> Result<RunAs> {
        let shown = escape_bytes(user.as_bytes());
        let found = match User::from_name(user) {
            Ok(None) => match user.parse::<u32>() {
                Ok(uid) => User::from_uid(Uid::from_raw(uid)),
                Err(_) => Ok(None),
            },
            other => other,
        };
        let user = match found {
            Ok(Some(user)) => user,
            Ok(None) => bail!(
                "no user '{shown}' in the user database: give --user a user name or UID that getent passwd lists"
            ),
            Err(errno) => bail!("looking up user '{shown}': {}", errno.desc()),
        };
        let c_name = CString::new(user.name.as_bytes()).context("a user name with a NUL byte")?;
        let groups = nix::unistd::getgrouplist(&c_name, user.gid)
            .map_err(|errno| anyhow::anyhow!("the groups of user '{shown}': {}", errno.desc()))?;
        Ok(RunAs {
            shown,
            name: user.name.into(),
            uid: user.uid,
            gid: user.gid,
            groups,
            home: user.dir.into_os_string(),
        })
    }

    /// The environment the command gets: memtrace's, with the user's HOME,
    /// USER and LOGNAME.
    fn environment(&self) -> Vec<(OsString, OsString)> {
        let own = [
            ("HOME", &self.home),
            ("USER", &self.name),
            ("LOGNAME", &self.name),
        ];
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(key, _)| {
                !own.iter()
                    .any(|(name, _)| key.as_os_str() == OsStr::new(name))
            })
            .collect();
        env.extend(
            own.iter()
                .map(|(name, value)| (OsString::from(name), (*value).clone())),
        );
        env
    }

    /// In the forked child: becomes the user, groups first (setgroups and
    /// setgid need the privilege setuid gives up). Allocates nothing.
    /// Fails with the step that failed and its errno.
    fn become_user(&self) -> Result<(), (Step, Errno)> {
        nix::unistd::setgroups(&self.groups).map_err(|e| (Step::Groups, e))?;
        nix::unistd::setresgid(self.gid, self.gid, self.gid).map_err(|e| (Step::Gid, e))?;
        nix::unistd::setresuid(self.uid, self.uid, self.uid).map_err(|e| (Step::Uid, e))?;
        Ok(())
    }
}

/// What the held child failed at, sent to the parent with the errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
enum Step {
    Exec = 0,
    Groups = 1,
    Gid = 2,
    Uid = 3,
}

impl Step {
    fn from_raw(raw: i32) -> Step {
        match raw {
            1 => Step::Groups,
            2 => Step::Gid,
            3 => Step::Uid,
            _ => Step::Exec,
        }
    }
}

/// In the held child: tells the parent what failed, through the pipe that
/// exec would have closed, and ends the child. Allocates nothing.
fn child_failed(err_write: &OwnedFd, step: Step, errno: Errno) -> ! {
    let mut report = [0u8; 8];
    report[..4].copy_from_slice(&(step as i32).to_ne_bytes());
    report[4..].copy_from_slice(&(errno as i32).to_ne_bytes());
    let _ = nix::unistd::write(err_write, &report);
    // SAFETY: _exit is async-signal-safe and ends only this child.
    unsafe { libc::_exit(127) }
}

/// What the held child execs: built before fork, so that it allocates nothing.
struct Exec<'a> {
    program: &'a CString,
    /// NULL-terminated, pointing into argv's CStrings.
    argv: &'a [*const libc::c_char],
    /// NULL-terminated; None: memtrace's own environment.
    envp: Option<&'a [*const libc::c_char]>,
}

/// The forked child: waits on `go` until the parent has attached its probes
/// (EOF: it gave up), becomes --user's user, and execs, under ptrace if told
/// so; a failure goes back on `err` (child_failed). Allocates nothing.
fn held_child(go: &OwnedFd, err: &OwnedFd, run_as: Option<&RunAs>, exec: &Exec<'_>) -> ! {
    let mut byte = [0u8; 1];
    let how = loop {
        match nix::unistd::read(go, &mut byte) {
            Err(Errno::EINTR) => continue,
            Ok(1) => break byte[0],
            _ => break 0,
        }
    };
    if how != GO {
        // SAFETY: _exit is async-signal-safe and ends only this child.
        unsafe { libc::_exit(127) };
    }
    if let Some(user) = run_as {
        if let Err((step, errno)) = user.become_user() {
            child_failed(err, step, errno);
        }
    }
    // Rust ignores SIGPIPE; the command should get the default.
    // SAFETY: restoring a default disposition installs no handler.
    let _ = unsafe { signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    match exec.envp {
        // SAFETY: program, argv and envp (NULL-terminated, pointing into
        // CStrings the parent built) outlive the call.
        Some(envp) => unsafe {
            libc::execve(exec.program.as_ptr(), exec.argv.as_ptr(), envp.as_ptr())
        },
        // SAFETY: program and argv (as above) outlive the call.
        None => unsafe { libc::execv(exec.program.as_ptr(), exec.argv.as_ptr()) },
    };
    child_failed(err, Step::Exec, Errno::last())
}

/// A NUL-terminated array of pointers into `strings`, for exec.
fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
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

/// A forked child blocked on a pipe, exec'ing COMMAND once released.
pub struct HeldCommand {
    pub pid: Pid,
    /// The command's name as given, escaped for messages.
    pub name: String,
    /// --user as given, escaped for messages.
    user: Option<String>,
    go: Option<OwnedFd>,
    exec_error: Option<OwnedFd>,
    /// Stopped under ptrace after exec (exec_until_mapped), until release.
    traced: bool,
    /// Kept under ptrace once released, to be stopped at each later exec
    /// and fork (follow_family).
    following: bool,
    /// The command's descendants under ptrace (follow_family): each fork of
    /// a followed process, followed as the command is.
    children: Vec<Pid>,
    /// The followed processes' threads but their first, under ptrace too
    /// (each may fork or dlopen), with their process.
    threads: Vec<(Pid, Pid)>,
    /// What followed processes stopped for (or, Exited, ended with),
    /// oldest first: the first is the tool's to look at (stopped), and
    /// each holds its process stopped until released.
    stops: VecDeque<Stopped>,
    exit_code: Option<i32>,
}

/// A process of a command kept under ptrace (follow_family), stopped for the tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stopped {
    /// The process: the command or one of its children.
    pub pid: Pid,
    /// Its thread that stopped (a dlopen or a fork of a thread other than
    /// its first), which release lets go on.
    pub thread: Pid,
    pub stop: CommandStop,
}

/// Why a followed process is stopped for the tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandStop {
    /// At an exec, before the new program's loader runs.
    Exec,
    /// Told to stop by a BPF program (a SIGSTOP the kernel sent: memleak's
    /// probe on the loader's _dl_debug_state, which a dlopen calls once its
    /// objects are mapped, before their constructors run).
    Load,
    /// It forked `child` (fork, vfork, posix_spawn), which is followed from
    /// now on: both are stopped, the child before its first instruction.
    Fork { child: Pid },
    /// A child (not the command) ended: nothing is stopped, the tool may
    /// let go of what it kept for it.
    Exited,
}

/// si_code of a signal the kernel sent (bpf_send_signal's).
const SI_KERNEL: i32 = 0x80;

/// The signals that stop a process (a group stop).
fn is_stop_signal(sig: Signal) -> bool {
    matches!(
        sig,
        Signal::SIGSTOP | Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU
    )
}

/// PTRACE_LISTEN: a seized tracee in a group stop stays stopped, as an
/// untraced process would, and its tracer hears when SIGCONT ends it (nix
/// has no wrapper).
fn listen(pid: Pid) {
    // SAFETY: PTRACE_LISTEN takes no pointers (addr and data are 0).
    unsafe {
        libc::ptrace(libc::PTRACE_LISTEN, pid.as_raw(), 0, 0);
    }
}

/// Whether the command's stop is for a SIGSTOP a BPF program sent.
fn stopped_by_bpf(pid: Pid, sig: Signal) -> bool {
    sig == Signal::SIGSTOP && ptrace::getsiginfo(pid).is_ok_and(|info| info.si_code == SI_KERNEL)
}

/// What the held child is told on its pipe: exec (under ptrace if the
/// parent has seized it: exec_until_mapped).
const GO: u8 = 1;

/// What exec_until_mapped saw.
pub enum Mapped<T> {
    /// What was looked for, in the command's mappings; the command is
    /// stopped until release().
    Found(T),
    /// The command's dynamic loader is done and did not map it, or the
    /// command has no dynamic loader (a static program); the command is
    /// stopped, and dropping the HeldCommand kills it.
    Absent,
    /// The command ended first (a library missing, say); its exit status is
    /// kept for the session.
    Exited,
}

impl HeldCommand {
    fn spawn(command: &[OsString], run_as: Option<&RunAs>) -> Result<HeldCommand> {
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
        let argv_ptrs = pointers(&argv);
        // --user's environment, built before fork too; None: memtrace's own
        let envp: Option<Vec<CString>> = run_as
            .map(|user| {
                user.environment()
                    .into_iter()
                    .map(|(key, value)| {
                        let mut entry = key.into_vec();
                        entry.push(b'=');
                        entry.extend_from_slice(value.as_bytes());
                        CString::new(entry)
                    })
                    .collect::<Result<_, _>>()
            })
            .transpose()
            .context("an environment variable contains a NUL byte")?;
        let envp_ptrs = envp.as_deref().map(pointers);
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
                let exec = Exec {
                    program: &program,
                    argv: &argv_ptrs,
                    envp: envp_ptrs.as_deref(),
                };
                held_child(&go_read, &err_write, run_as, &exec)
            }
            ForkResult::Parent { child } => Ok(HeldCommand {
                pid: child,
                name,
                user: run_as.map(|user| user.shown.clone()),
                go: Some(go_write),
                exec_error: Some(err_read),
                traced: false,
                following: false,
                children: Vec::new(),
                threads: Vec::new(),
                stops: VecDeque::new(),
                exit_code: None,
            }),
        }
    }

    /// Lets the command run: exec, or, stopped after exec_until_mapped, go
    /// on (untraced, unless it follows its family); or lets the process of
    /// the first stop (stopped) go on. Fails if exec failed (no such
    /// command, ...).
    pub fn release(&mut self) -> Result<()> {
        if self.traced {
            self.traced = false;
            let going = match self.following {
                true => ptrace::cont(self.pid, None),
                false => ptrace::detach(self.pid, None),
            };
            // ESRCH: killed meanwhile, which try_wait will see
            return match going {
                Ok(()) | Err(Errno::ESRCH) => Ok(()),
                Err(err) => Err(err).with_context(|| format!("letting {} go on", self.name)),
            };
        }
        if let Some(stopped) = self.stops.pop_front() {
            // ESRCH: killed meanwhile, which try_wait will see
            let go_on = |pid| match ptrace::cont(pid, None) {
                Ok(()) | Err(Errno::ESRCH) => Ok(()),
                Err(err) => Err(err).with_context(|| format!("letting process {pid} go on")),
            };
            match stopped.stop {
                CommandStop::Exited => {}
                CommandStop::Fork { child } => {
                    go_on(child)?;
                    go_on(stopped.thread)?;
                }
                CommandStop::Exec | CommandStop::Load => go_on(stopped.thread)?,
            }
            return Ok(());
        }
        self.go_on()
    }

    /// Stopped by exec_until_mapped: keeps the command under ptrace once
    /// released, with its threads, and each process it forks (fork, vfork,
    /// posix_spawn, from any thread), and theirs in turn: each later exec (a wrapper script exec'ing the
    /// real program, a shell running one) stops its process until the tool
    /// has looked at what the new program maps (stopped,
    /// after_exec_until_mapped), as does a fork (the child before it runs)
    /// and a SIGSTOP sent by the tool's BPF program (CommandStop::Load).
    /// Their signals pass through memtrace (try_wait delivers them); a stop
    /// signal holds one stopped until SIGCONT, as untraced (PTRACE_LISTEN).
    /// If memtrace dies, they go on untraced.
    pub fn follow_family(&mut self) -> Result<()> {
        if !self.traced {
            return Ok(());
        }
        let options = ptrace::Options::PTRACE_O_TRACESYSGOOD
            | ptrace::Options::PTRACE_O_TRACEEXEC
            | ptrace::Options::PTRACE_O_TRACEFORK
            | ptrace::Options::PTRACE_O_TRACEVFORK
            | ptrace::Options::PTRACE_O_TRACECLONE;
        ptrace::setoptions(self.pid, options).context("ptrace(PTRACE_SETOPTIONS)")?;
        self.following = true;
        Ok(())
    }

    /// The first of the followed processes' stops for the tool, if any (see
    /// follow_family): its process stays stopped until release().
    pub fn stopped(&self) -> Option<Stopped> {
        self.stops.front().copied()
    }

    /// Tells the child to exec and waits for the exec to succeed or fail.
    fn go_on(&mut self) -> Result<()> {
        if let Some(go) = self.go.take() {
            nix::unistd::write(&go, &[GO]).context("releasing the command")?;
        }
        let Some(err_pipe) = self.exec_error.take() else {
            return Ok(());
        };
        // The pipe closes on a successful exec (O_CLOEXEC), or carries the
        // step that failed and its errno.
        let mut buf = [0u8; 8];
        let n = loop {
            match nix::unistd::read(&err_pipe, &mut buf) {
                Err(Errno::EINTR) => continue,
                other => break other.unwrap_or(0),
            }
        };
        if n != 8 {
            return Ok(());
        }
        let [s0, s1, s2, s3, e0, e1, e2, e3] = buf;
        let step = Step::from_raw(i32::from_ne_bytes([s0, s1, s2, s3]));
        let errno = Errno::from_raw(i32::from_ne_bytes([e0, e1, e2, e3]));
        let _ = waitpid(self.pid, None);
        self.exit_code = Some(127);
        let as_user = match &self.user {
            Some(user) => format!(" as user '{user}'"),
            None => String::new(),
        };
        let what = match step {
            Step::Exec => "",
            Step::Groups => " (setgroups)",
            Step::Gid => " (setresgid)",
            Step::Uid => " (setresuid)",
        };
        bail!("can't run {}{as_user}{what}: {}", self.name, errno.desc())
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
        wanted: impl FnMut(&[MapsEntry]) -> Option<T>,
    ) -> Result<Mapped<T>> {
        // Seized by memtrace (not PTRACE_TRACEME in the child), so that a
        // stop signal for it can be held (PTRACE_LISTEN) while it follows
        // execs; it stops at the exec; killed with memtrace if memtrace dies
        // while it is stopped.
        let options = ptrace::Options::PTRACE_O_TRACESYSGOOD
            | ptrace::Options::PTRACE_O_TRACEEXEC
            | ptrace::Options::PTRACE_O_EXITKILL;
        if let Err(errno) = ptrace::seize(self.pid, options) {
            bail!(
                "can't trace {} with ptrace to see what it maps: {}",
                self.name,
                errno.desc()
            );
        }
        self.go_on()?;
        self.traced = true;
        if !self.wait_stopped()? {
            return Ok(Mapped::Exited);
        }
        self.until_mapped(self.pid, wanted)
    }

    /// exec_until_mapped for a later exec: the process `pid` (the command
    /// or a child), stopped there (CommandStop::Exec), goes on system call
    /// by system call of its new program's loader until `wanted` finds what
    /// it looks for; it stays stopped until release().
    pub fn after_exec_until_mapped<T>(
        &mut self,
        pid: Pid,
        wanted: impl FnMut(&[MapsEntry]) -> Option<T>,
    ) -> Result<Mapped<T>> {
        self.until_mapped(pid, wanted)
    }

    /// The process stopped after exec: on through its loader's system
    /// calls (see exec_until_mapped).
    fn until_mapped<T>(
        &mut self,
        pid: Pid,
        mut wanted: impl FnMut(&[MapsEntry]) -> Option<T>,
    ) -> Result<Mapped<T>> {
        let loader = loader_of(pid)?;
        loop {
            let maps = proc_maps::read_maps(pid.as_raw() as u32)?;
            if let Some(found) = wanted(&maps) {
                return Ok(Mapped::Found(found));
            }
            if loader.is_empty() {
                return Ok(Mapped::Absent);
            }
            // on to the end of the next system call the loader makes
            let mut signal = None;
            loop {
                match ptrace::syscall(pid, signal.take()) {
                    // killed meanwhile: waitpid says how it ended
                    Ok(()) | Err(Errno::ESRCH) => {}
                    Err(err) => return Err(err).context("ptrace(PTRACE_SYSCALL)"),
                }
                match waitpid(pid, None).context("waiting for the command")? {
                    WaitStatus::PtraceSyscall(_) => {
                        let info =
                            ptrace::syscall_info(pid).context("ptrace(PTRACE_GET_SYSCALL_INFO)")?;
                        let ip = info.instruction_pointer;
                        match info.op {
                            libc::PTRACE_SYSCALL_INFO_ENTRY
                                if !loader.iter().any(|m| (m.start..m.end).contains(&ip)) =>
                            {
                                return Ok(Mapped::Absent)
                            }
                            libc::PTRACE_SYSCALL_INFO_EXIT => break,
                            _ => {}
                        }
                    }
                    // a signal for the command: delivered as it resumes,
                    // unless this is a group stop (no siginfo), which resuming
                    // ends, or a BPF program's stop (its maps are read at each
                    // step here anyway)
                    WaitStatus::Stopped(_, sig) => {
                        let deliver = ptrace::getsiginfo(pid).is_ok();
                        signal = (deliver && !stopped_by_bpf(pid, sig)).then_some(sig)
                    }
                    status => {
                        if self.ended(pid, status) {
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
                WaitStatus::PtraceEvent(_, _, libc::PTRACE_EVENT_EXEC) => return Ok(true),
                // a signal that came before the exec: delivered (the exec
                // is still to come)
                WaitStatus::Stopped(_, sig) => {
                    let _ = ptrace::cont(self.pid, sig);
                }
                WaitStatus::PtraceEvent(..) => {
                    let _ = ptrace::cont(self.pid, None);
                }
                status if self.ended(self.pid, status) => return Ok(false),
                _ => {}
            }
        }
    }

    /// If `status` says process `pid` ended: the command's exit status is
    /// kept, a child's end queued for the tool (CommandStop::Exited).
    fn ended(&mut self, pid: Pid, status: WaitStatus) -> bool {
        let code = match status {
            WaitStatus::Exited(_, code) => code,
            WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
            _ => return false,
        };
        if let Some(at) = self.threads.iter().position(|&(thread, _)| thread == pid) {
            // a thread but a process's first
            self.threads.swap_remove(at);
            self.drop_stops(|stopped| stopped.thread == pid);
        } else if pid == self.pid {
            self.exit_code = Some(code);
            self.traced = false;
        } else {
            self.children.retain(|&child| child != pid);
            self.drop_stops(|stopped| stopped.pid == pid);
            self.threads.retain(|&(_, process)| process != pid);
            self.stops.push_back(Stopped {
                pid,
                thread: pid,
                stop: CommandStop::Exited,
            });
        }
        true
    }

    /// The stops of a thread or process that ended are moot (release would
    /// find it gone); a child it forked, held with it, goes on.
    fn drop_stops(&mut self, of: impl Fn(&Stopped) -> bool) {
        for stopped in self.stops.iter().filter(|stopped| of(stopped)) {
            if let CommandStop::Fork { child } = stopped.stop {
                let _ = ptrace::cont(child, None);
            }
        }
        self.stops.retain(|stopped| !of(stopped));
    }

    /// Passes SIGTERM on to the command (not to its process group, which
    /// may hold the rest of a shell pipeline), unless it has ended.
    pub fn terminate(&mut self) {
        if self.go.is_none() && self.try_wait().is_none() {
            let _ = signal::kill(self.pid, Signal::SIGTERM);
        }
    }

    /// The command's exit code once it has ended (128+N for signal N). A
    /// command that follows its family (follow_family) is seen stopping
    /// too, and so are its children: at an exec, a fork or a BPF program's
    /// SIGSTOP a process stays stopped (stopped) until release; a signal
    /// for one is delivered as it goes on; a group stop is held until
    /// SIGCONT.
    pub fn try_wait(&mut self) -> Option<i32> {
        for (thread, _) in self.threads.clone() {
            self.wait_for(thread);
        }
        for child in self.children.clone() {
            self.wait_for(child);
        }
        self.wait_for(self.pid);
        self.exit_code
    }

    /// Whether a stop for the tool holds thread `tid` (a process's first
    /// thread has its pid).
    fn holds(&self, tid: Pid) -> bool {
        self.stops.iter().any(|stopped| match stopped.stop {
            CommandStop::Exited => false,
            CommandStop::Fork { child } => stopped.thread == tid || child == tid,
            CommandStop::Exec | CommandStop::Load => stopped.thread == tid,
        })
    }

    /// The process of followed thread `tid` (itself for a process's first).
    fn process_of(&self, tid: Pid) -> Pid {
        self.threads
            .iter()
            .find(|&&(thread, _)| thread == tid)
            .map_or(tid, |&(_, process)| process)
    }

    /// What followed thread `tid` (a process's first has its pid) did since
    /// the last look, without blocking: until it is held for the tool,
    /// ends, or runs on.
    fn wait_for(&mut self, tid: Pid) {
        let pid = self.process_of(tid);
        let held = |stop| Stopped {
            pid,
            thread: tid,
            stop,
        };
        while self.exit_code.is_none() && !self.holds(tid) {
            match waitpid(tid, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
                Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => {
                    self.ended(tid, status);
                    return;
                }
                // (a thread that exec'd took its process's pid)
                Err(Errno::ECHILD) => {
                    self.ended(tid, WaitStatus::Exited(tid, 127));
                    return;
                }
                Ok(WaitStatus::PtraceEvent(_, _, libc::PTRACE_EVENT_EXEC)) => {
                    self.stops.push_back(held(CommandStop::Exec))
                }
                Ok(WaitStatus::PtraceEvent(
                    _,
                    _,
                    libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK,
                )) => match self.adopt(tid) {
                    Some(child) => {
                        self.children.push(child);
                        self.stops.push_back(held(CommandStop::Fork { child }))
                    }
                    None => {
                        let _ = ptrace::cont(tid, None);
                    }
                },
                // a thread, or a process made by clone() itself
                Ok(WaitStatus::PtraceEvent(_, _, libc::PTRACE_EVENT_CLONE)) => {
                    match self.adopt(tid) {
                        Some(child) if process_of_thread(child) == Some(pid) => {
                            self.threads.push((child, pid));
                            let _ = ptrace::cont(child, None);
                            let _ = ptrace::cont(tid, None);
                        }
                        Some(child) => {
                            self.children.push(child);
                            self.stops.push_back(held(CommandStop::Fork { child }))
                        }
                        None => {
                            let _ = ptrace::cont(tid, None);
                        }
                    }
                }
                Ok(WaitStatus::Stopped(_, sig)) if stopped_by_bpf(tid, sig) => {
                    self.stops.push_back(held(CommandStop::Load))
                }
                Ok(WaitStatus::Stopped(_, sig)) => {
                    let _ = ptrace::cont(tid, sig);
                }
                // a group stop (kill -STOP, Ctrl-Z): held, the tracer told
                // when SIGCONT ends it
                Ok(WaitStatus::PtraceEvent(_, sig, libc::PTRACE_EVENT_STOP))
                    if is_stop_signal(sig) =>
                {
                    listen(tid)
                }
                Ok(WaitStatus::PtraceEvent(..) | WaitStatus::PtraceSyscall(_)) => {
                    let _ = ptrace::cont(tid, None);
                }
                _ => break,
            }
        }
    }

    /// `parent`, stopped at a fork or clone: the new child (a process or a
    /// thread), once it is stopped before its first instruction (the kernel
    /// attaches it to memtrace and stops it); None if it ended first.
    fn adopt(&mut self, parent: Pid) -> Option<Pid> {
        let child = Pid::from_raw(ptrace::getevent(parent).ok()? as i32);
        loop {
            match waitpid(child, Some(WaitPidFlag::__WALL)) {
                Ok(WaitStatus::PtraceEvent(_, _, libc::PTRACE_EVENT_STOP))
                | Ok(WaitStatus::Stopped(_, Signal::SIGSTOP)) => break,
                Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) | Err(_) => return None,
                Ok(_) => {
                    let _ = ptrace::cont(child, None);
                }
            }
        }
        Some(child)
    }
}

impl Drop for HeldCommand {
    /// A command never released (tracing failed to start) is killed, not
    /// left blocked or stopped; processes stopped for a tool that is done
    /// go on, children untraced.
    fn drop(&mut self) {
        if self.go.is_some() || self.traced {
            let _ = signal::kill(self.pid, Signal::SIGKILL);
            let _ = waitpid(self.pid, None);
        }
        for stopped in std::mem::take(&mut self.stops) {
            let mut held = vec![stopped.thread];
            match stopped.stop {
                CommandStop::Exited => continue,
                CommandStop::Fork { child } => held.push(child),
                CommandStop::Exec | CommandStop::Load => {}
            }
            // without the stop's signal
            for pid in held {
                let _ = match pid == self.pid {
                    true => ptrace::cont(pid, None),
                    false => ptrace::detach(pid, None),
                };
            }
        }
    }
}

/// The process thread `tid` belongs to (Tgid in /proc/TID/status).
fn process_of_thread(tid: Pid) -> Option<Pid> {
    let status = procfs::process::Process::new(tid.as_raw())
        .ok()?
        .status()
        .ok()?;
    Some(Pid::from_raw(status.tgid))
}

/// The mappings of process `pid`'s dynamic loader (AT_BASE, where the
/// kernel loaded it, in its auxiliary vector): none for a program run
/// without one.
pub fn loader_of(pid: Pid) -> Result<Vec<MapsEntry>> {
    let process = procfs::process::Process::new(pid.as_raw())
        .with_context(|| format!("reading /proc/{pid}"))?;
    let auxv = process
        .auxv()
        .with_context(|| format!("reading /proc/{pid}/auxv"))?;
    let base = auxv.get(&libc::AT_BASE).copied().unwrap_or(0);
    let maps = proc_maps::read_maps(pid.as_raw() as u32)?;
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

    #[test]
    fn users_by_name_or_uid() {
        for user in ["root", "0"] {
            let root = RunAs::lookup(user).unwrap();
            assert_eq!(root.uid, Uid::from_raw(0));
            assert_eq!(root.gid, Gid::from_raw(0));
            assert_eq!(root.name, "root");
            assert!(root.groups.contains(&Gid::from_raw(0)));
        }
        let err = RunAs::lookup("memtrace-no-such-user\x1b").err().unwrap();
        assert!(
            err.to_string()
                .starts_with("no user 'memtrace-no-such-user\\x1b' in the user database"),
            "{err}"
        );
    }

    #[test]
    fn the_command_gets_the_users_home_and_names() {
        let root = RunAs::lookup("root").unwrap();
        let env = root.environment();
        let get = |key: &str| {
            let values: Vec<_> = env.iter().filter(|(k, _)| k == key).collect();
            assert_eq!(values.len(), 1, "{key}: {values:?}");
            values[0].1.clone()
        };
        assert_eq!(get("HOME"), root.home);
        assert_eq!(get("USER"), "root");
        assert_eq!(get("LOGNAME"), "root");
    }

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
