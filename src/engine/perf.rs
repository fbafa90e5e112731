//! Software perf events (page faults) opened on every online CPU, each with
//! a BPF program attached: the portable way to see faults, with their address.

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};

use anyhow::{bail, Context, Result};
use libbpf_rs::{Link, PerfEventOpts, ProgramMut};

use crate::engine::skeleton::FaultKind;

const PAGE_FAULTS_MIN: u64 = libbpf_sys::PERF_COUNT_SW_PAGE_FAULTS_MIN as u64;
const PAGE_FAULTS_MAJ: u64 = libbpf_sys::PERF_COUNT_SW_PAGE_FAULTS_MAJ as u64;

/// CPUs in a list such as `0-3,8,10-11` (/sys/devices/system/cpu/online).
pub fn parse_cpu_list(list: &str) -> Result<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u32>()?, b.parse::<u32>()?),
            None => (part.parse::<u32>()?, part.parse::<u32>()?),
        };
        if last < first {
            bail!("bad CPU range {part}");
        }
        cpus.extend(first..=last);
    }
    Ok(cpus)
}

pub fn online_cpus() -> Result<Vec<u32>> {
    let list = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .context("reading /sys/devices/system/cpu/online")?;
    parse_cpu_list(&list).context("parsing /sys/devices/system/cpu/online")
}

/// perf_event_open(2) for a software event with period 1 on one CPU, all processes.
fn open_software_event(config: u64, cpu: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: perf_event_attr is a plain C struct for which all-zero is the documented default.
    let mut attr: libbpf_sys::perf_event_attr = unsafe { std::mem::zeroed() };
    attr.type_ = libbpf_sys::PERF_TYPE_SOFTWARE;
    attr.size = std::mem::size_of::<libbpf_sys::perf_event_attr>() as u32;
    attr.config = config;
    attr.__bindgen_anon_1.sample_period = 1;
    // SAFETY: attr is initialised and outlives the call; the kernel only reads it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const libbpf_sys::perf_event_attr,
            -1 as libc::pid_t,
            cpu as libc::c_int,
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

/// Attaches `prog` to software event `config` on every online CPU, with
/// `cookie` (bpf_get_attach_cookie()).
fn attach_software_event(
    prog: &ProgramMut<'_>,
    config: u64,
    cookie: u64,
    name: &str,
) -> Result<Vec<Link>> {
    let mut links = Vec::new();
    for cpu in online_cpus()? {
        let fd = open_software_event(config, cpu)
            .with_context(|| format!("opening the {name} perf event on CPU {cpu}"))?;
        let raw = fd.into_raw_fd();
        let opts = PerfEventOpts {
            cookie,
            ..Default::default()
        };
        match prog.attach_perf_event_with_opts(raw, opts) {
            // the link owns the descriptor from here on and closes it
            Ok(link) => links.push(link),
            Err(err) => {
                // SAFETY: libbpf did not take the descriptor; it is still ours to close.
                drop(unsafe { OwnedFd::from_raw_fd(raw) });
                return Err(err)
                    .with_context(|| format!("attaching to the {name} perf event on CPU {cpu}"));
            }
        }
    }
    Ok(links)
}

/// Attaches a fault program to the major-fault events, and to the minor-fault
/// ones if `minor`, on every online CPU; its attach cookie is the event's
/// enum memtrace_fault_kind.
pub fn attach_fault_program(prog: &ProgramMut<'_>, minor: bool) -> Result<Vec<Link>> {
    let kind = |kind: FaultKind| u64::from(kind.0);
    attach_fault_events(
        (prog, kind(FaultKind::MEMTRACE_FAULT_MAJOR)),
        minor.then_some((prog, kind(FaultKind::MEMTRACE_FAULT_MINOR))),
    )
}

/// Attaches a program to the major-fault events and another (if any) to the
/// minor-fault ones, on every online CPU: where programs can't tell them
/// apart by cookie (before 5.15).
pub fn attach_fault_programs(
    major: &ProgramMut<'_>,
    minor: Option<&ProgramMut<'_>>,
) -> Result<Vec<Link>> {
    attach_fault_events((major, 0), minor.map(|prog| (prog, 0)))
}

/// The minor-fault events' program and cookie (if any), then the major ones'.
fn attach_fault_events(
    major: (&ProgramMut<'_>, u64),
    minor: Option<(&ProgramMut<'_>, u64)>,
) -> Result<Vec<Link>> {
    let mut links = Vec::new();
    if let Some((prog, cookie)) = minor {
        links = attach_software_event(prog, PAGE_FAULTS_MIN, cookie, "page-faults-min")?;
    }
    let (prog, cookie) = major;
    links.extend(attach_software_event(
        prog,
        PAGE_FAULTS_MAJ,
        cookie,
        "page-faults-maj",
    )?);
    Ok(links)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0\n").unwrap(), [0]);
        assert_eq!(parse_cpu_list("0-3").unwrap(), [0, 1, 2, 3]);
        assert_eq!(parse_cpu_list("0-1,4,6-7").unwrap(), [0, 1, 4, 6, 7]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
    }
}
