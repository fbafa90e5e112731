//! How a tool sees its system calls (mmapsnoop, mmapfiles, brkstack,
//! shmsnoop): src/bpf/syscalls.bpf.h gives each tool programs for both kinds
//! of syscall tracepoint, and this module attaches them.
//!
//! - Closing the perf event of a classic tracepoint (`tp/syscalls/sys_enter_mmap`)
//!   makes the kernel wait for RCU grace periods before the close returns, the
//!   events one after the other (a kernel mutex is held meanwhile): 60-100 ms
//!   each where it was measured (BENCHMARKS.md), so shmsnoop's eight took
//!   0.6 s to detach, and still 0.33 s closed in parallel threads.
//! - A raw `sys_enter`/`sys_exit` tracepoint detaches at once, but its program
//!   runs on every system call of the machine: measured, ~50-60 ns a call more
//!   than the classic tracepoints, whose programs run only on the calls they
//!   trace (every system call takes the kernel's slower path with either).
//!
//! So a trace starts on the raw tracepoints, and after `SWITCH_AFTER` attaches
//! the classic programs, then detaches the raw ones: a short trace ends at
//! once, a long one costs per call what the classic tracepoints cost, and its
//! classic perf events are closed after memtrace exits (engine::detach). Both
//! programs of a call share one per-thread map of calls in flight, so a call
//! seen by both while both are attached is reported once (its exit finds the
//! entry only once), and none is missed (the classic programs are attached
//! before the raw ones go).
//!
//! The raw programs need the kernel's `sys_enter`/`sys_exit` BTF tracepoints
//! and a way to tell a 32-bit system call from a native one, which the BPF side
//! has for x86-64 only: elsewhere the classic programs are attached from the start.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use libbpf_rs::{Link, Object};

use crate::engine::detach::{self, Detaching};
use crate::engine::kernel;

/// How long a trace stays on the raw tracepoints.
pub const SWITCH_AFTER: Duration = Duration::from_secs(1);

/// A tool's programs for its system calls, both kinds (syscalls.bpf.h).
pub struct SyscallPrograms {
    /// The `tp_btf/sys_enter` and `tp_btf/sys_exit` programs.
    pub raw: [&'static str; 2],
    /// The classic programs of the calls traced (`tp/syscalls/sys_*_NAME`).
    pub classic: Vec<&'static str>,
}

/// Whether the raw programs can run here: see the module.
pub fn raw_usable() -> Result<bool> {
    Ok(cfg!(target_arch = "x86_64")
        && kernel::can_attach("tp_btf/sys_enter")?
        && kernel::can_attach("tp_btf/sys_exit")?)
}

/// A classic program, ready to attach: a copy of its descriptor (which keeps
/// the program loaded on its own) and its tracepoint's perf id.
struct Classic {
    prog: OwnedFd,
    tracepoint: String,
    id: u64,
}

/// A classic program attached: its BPF link and the perf event under it.
/// Dropped in that order: the perf event's close is the slow one. No link
/// where the program was set on the perf event itself (before 5.15's perf
/// links): closing the event detaches it.
struct ClassicLink {
    link: Option<OwnedFd>,
    perf: OwnedFd,
}

/// The system call programs attached for a trace; the session moves them
/// from raw to classic (`tick`) and detaches them at the end (`detach`).
pub struct SyscallHooks {
    tool: &'static str,
    verbose: bool,
    raw: Vec<Link>,
    classic: Vec<Classic>,
    attached: Vec<ClassicLink>,
    /// When to move to the classic programs; None once done (or given up).
    switch_at: Option<Instant>,
    /// Links being closed in the background, waited for on drop.
    closing: Detaching,
}

impl SyscallHooks {
    /// Attaches a tool's system call programs, loaded from `object`: the raw
    /// ones if `raw` (see raw_usable), else the classic ones.
    pub fn attach(
        tool: &'static str,
        verbose: bool,
        object: &Object,
        programs: &SyscallPrograms,
        raw: bool,
    ) -> Result<SyscallHooks> {
        let mut classic = Vec::new();
        for &name in &programs.classic {
            let prog = object
                .progs()
                .find(|p| p.name() == name)
                .with_context(|| format!("BPF program {name} not found"))?;
            let section = prog.section().to_string_lossy().into_owned();
            let Some((category, event)) = kernel::tracepoint_of_section(&section) else {
                bail!("BPF program {name} is not on a classic tracepoint ({section})");
            };
            classic.push(Classic {
                prog: prog
                    .as_fd()
                    .try_clone_to_owned()
                    .with_context(|| format!("duplicating the descriptor of {name}"))?,
                tracepoint: format!("{category}:{event}"),
                id: kernel::tracepoint_id(category, event)?,
            });
        }
        let mut hooks = SyscallHooks {
            tool,
            verbose,
            raw: Vec::new(),
            classic,
            attached: Vec::new(),
            switch_at: None,
            closing: Detaching::default(),
        };
        if raw {
            for &name in &programs.raw {
                let prog = object
                    .progs_mut()
                    .find(|p| p.name() == name)
                    .with_context(|| format!("BPF program {name} not found"))?;
                hooks
                    .raw
                    .push(prog.attach().with_context(|| format!("attaching {name}"))?);
            }
            hooks.switch_at = Some(Instant::now() + SWITCH_AFTER);
            if verbose {
                crate::say!(
                    "{tool}: system calls: raw sys_enter/sys_exit tracepoints, the per-call ones after {} s",
                    SWITCH_AFTER.as_secs_f64()
                );
            }
        } else {
            hooks.attach_classic()?;
            if verbose {
                crate::say!("{tool}: system calls: the per-call tracepoints");
            }
        }
        Ok(hooks)
    }

    /// Attaches every classic program; on an error, none stays attached.
    fn attach_classic(&mut self) -> Result<()> {
        for i in 0..self.classic.len() {
            match attach_tracepoint(&self.classic[i]) {
                Ok(link) => self.attached.push(link),
                Err(err) => {
                    for link in std::mem::take(&mut self.attached) {
                        self.closing.close(link);
                    }
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// Called by the session as it runs: moves to the classic programs once
    /// SWITCH_AFTER has passed. If they can't be attached, the raw ones stay.
    pub fn tick(&mut self, now: Instant) {
        if self.switch_at.is_none_or(|at| now < at) {
            return;
        }
        self.switch_at = None;
        match self.attach_classic() {
            Ok(()) => {
                // the classic programs see every call from here on; the raw
                // ones go in the background (a tracepoint losing one of two
                // probes may wait for a grace period)
                let raw = std::mem::take(&mut self.raw);
                self.closing.close(raw);
                if self.verbose {
                    crate::say!("{}: system calls: moved to the per-call tracepoints", self.tool);
                }
            }
            Err(err) => crate::say!(
                "{}: staying on the raw system call tracepoints (each system call of the machine costs a little more): {err:#}",
                self.tool
            ),
        }
    }

    /// Detaches every program: the raw ones at once, the classic ones after
    /// memtrace exits (their closes wait for the kernel: detach::close_after_exit).
    pub fn detach(&mut self) {
        self.switch_at = None;
        drop(std::mem::take(&mut self.raw));
        let classic = std::mem::take(&mut self.attached)
            .into_iter()
            .flat_map(|link| link.link.into_iter().chain([link.perf]));
        detach::close_after_exit(classic.collect());
    }
}

impl Drop for SyscallHooks {
    fn drop(&mut self) {
        // then `closing` waits for the closes started during the trace
        self.detach();
    }
}

/// perf_event_open(2) of a classic tracepoint, all processes, as libbpf opens
/// it (enabled from the start).
fn open_tracepoint_event(id: u64) -> std::io::Result<OwnedFd> {
    // SAFETY: perf_event_attr is a plain C struct for which all-zero is the documented default.
    let mut attr: libbpf_sys::perf_event_attr = unsafe { std::mem::zeroed() };
    attr.type_ = libbpf_sys::PERF_TYPE_TRACEPOINT;
    attr.size = std::mem::size_of::<libbpf_sys::perf_event_attr>() as u32;
    attr.config = id;
    // SAFETY: attr is initialised and outlives the call; the kernel only reads it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const libbpf_sys::perf_event_attr,
            -1 as libc::pid_t,
            0 as libc::c_int,
            -1 as libc::c_int,
            libbpf_sys::PERF_FLAG_FD_CLOEXEC as libc::c_ulong,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A classic program attached to its tracepoint through a BPF perf link.
fn attach_tracepoint(classic: &Classic) -> Result<ClassicLink> {
    let perf = open_tracepoint_event(classic.id).with_context(|| {
        format!(
            "opening the perf event of tracepoint {}",
            classic.tracepoint
        )
    })?;
    // SAFETY: both descriptors are open for the call; a null opts is allowed.
    let fd = unsafe {
        libbpf_sys::bpf_link_create(
            classic.prog.as_raw_fd(),
            perf.as_raw_fd(),
            libbpf_sys::BPF_PERF_EVENT,
            std::ptr::null(),
        )
    };
    if fd >= 0 {
        // SAFETY: a new descriptor that nothing else owns.
        let link = Some(unsafe { OwnedFd::from_raw_fd(fd) });
        return Ok(ClassicLink { link, perf });
    }
    let link_error = std::io::Error::from_raw_os_error(-fd);
    // before perf links (5.15): the program set on the event, as libbpf does
    let set_bpf = nix::request_code_write!(b'$', 8, std::mem::size_of::<u32>());
    // SAFETY: PERF_EVENT_IOC_SET_BPF takes the program's descriptor by value.
    let rc = unsafe { libc::ioctl(perf.as_raw_fd(), set_bpf as _, classic.prog.as_raw_fd()) };
    if rc < 0 {
        return Err(link_error)
            .with_context(|| format!("attaching to tracepoint {}", classic.tracepoint));
    }
    Ok(ClassicLink { link: None, perf })
}
