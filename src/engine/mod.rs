//! The tracing engine every BPF tool runs on: the skeleton loader (preflight,
//! kernel probing, program choice), the trace session (poll, signals,
//! `-d`, `-i`, the target's end), targets (`-p`, `-- COMMAND`), reading
//! maps and records, drop accounting, perf events, system call tracepoints,
//! and the fault -> VMA engine four tools share. It may use analysis and
//! present, never tools.

pub mod cgroup;
pub mod detach;
pub mod drops;
pub mod faultvma;
pub mod features;
pub mod kernel;
pub mod kernel_btf;
pub mod loader;
pub mod maps;
pub mod perf;
pub mod records;
pub mod session;
pub mod signals;
pub mod skeleton;
pub mod stream;
pub mod syscalls;
pub mod target;
pub mod unwind;
