//! mmapsnoop: every mmap(2) as it returns, with who made it, the protection,
//! the flags, the offset, the size, the file and the result.

use std::mem::MaybeUninit;

use anyhow::Result;
use clap::Parser;
use libbpf_rs::skel::Skel;
use libbpf_rs::OpenObject;
use serde::Serialize;

use crate::cli::{parse_ring_mib, CommonArgs, SHOW_CGROUP_HELP};
use crate::engine::cgroup::{self, CgroupField, CgroupNames};
use crate::engine::drops;
use crate::engine::features::Feature;
use crate::engine::loader::{self, Trace};
use crate::engine::records::{self, FilePath};
use crate::engine::skeleton::OpenSkeleton;
use crate::engine::stream::{self, EventPrinter};
use crate::engine::syscalls::SyscallPrograms;
use crate::present::decode;
use crate::present::escape::{escape_bytes, escape_c_chars};
use crate::present::format::{elapsed_cell, human_size};
use crate::present::output::Output;

crate::bpf_skeleton!(
    "mmapsnoop",
    OpenMmapsnoopSkel,
    records: [mmapsnoop_event, mmapsnoop_count_key]
);
use bpf::types::{mmapsnoop_call as Call, mmapsnoop_event as Event};
pub use bpf::types::{mmapsnoop_count_key as CountKey, mmapsnoop_kind as MapKind};
pub use bpf::MmapsnoopSkel;
use bpf::MmapsnoopSkelBuilder;

pub const ABOUT: &str = "Trace mmap(2) calls: who, protection, flags, offset, size, file, result";

#[derive(Parser, Debug)]
#[command(about = ABOUT, after_help = "\
Examples:
  mmapsnoop                 # every mmap on the system
  mmapsnoop -p 181          # only PID 181
  mmapsnoop --munmap --full-path -- ./app   # run ./app and trace it, munmap and mremap too
  mmapsnoop --json -d 10    # JSON lines for 10 seconds")]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Show each file's full path instead of its name
    #[arg(long)]
    pub full_path: bool,

    /// Also trace munmap(2) and mremap(2)
    #[arg(long)]
    pub munmap: bool,

    /// Ring buffer size in MiB, a power of two: raise it if events are lost
    #[arg(long, value_name = "MIB", default_value_t = 8, value_parser = parse_ring_mib)]
    pub buffer_size: u32,

    #[arg(long, help = SHOW_CGROUP_HELP)]
    pub show_cgroup: bool,
}

/// The classic programs of munmap and mremap, loaded with --munmap only.
/// The exit programs that walk a file's path, without and with bpf_loop.
const LOOP_PROGRAMS: [[&str; 2]; 2] = [
    ["mmapsnoop_exit_mmap", "mmapsnoop_exit_mmap_loop"],
    ["mmapsnoop_sys_exit", "mmapsnoop_sys_exit_loop"],
];

const MUNMAP_PROGRAMS: &[&str] = &[
    "mmapsnoop_enter_munmap",
    "mmapsnoop_exit_munmap",
    "mmapsnoop_enter_mremap",
    "mmapsnoop_exit_mremap",
];

pub fn run(args: Args) -> Result<i32> {
    let mut trace = Trace::prepare(&args.common)?;
    let cgroups = cgroup::label_records(args.show_cgroup, &mut trace.filter)?;
    let mut storage = MaybeUninit::uninit();
    let options = Options {
        munmap: args.munmap,
        buffer_size: args.buffer_size,
        count: None,
    };
    let skel = load(&mut storage, &mut trace, options)?;
    let what = if args.munmap {
        "mmap(), munmap() and mremap() calls"
    } else {
        "mmap() calls"
    };
    let printer = Columns {
        timestamp: args.common.timestamp,
        full_path: args.full_path,
        show_call: args.munmap,
        cgroups,
    };
    let (mut session, stop) = stream::print_events(&skel.maps.events, printer, trace, what)?;
    drops::report(args.common.tool, skel.object(), drops::RING_BUFFER_HINT)?;
    Ok(session.exit_code(stop))
}

/// One call as printed; the JSON fields are documented in the README.
/// What mmapsnoop's BPF side reports.
pub struct Options {
    /// munmap() and mremap() calls too.
    pub munmap: bool,
    /// The ring buffer's size, MiB.
    pub buffer_size: u32,
    /// serve: mmap() calls counted in the kernel by cgroup, name and kind
    /// (in `maps.call_counts`, with room for this many), not sent one by one.
    pub count: Option<u32>,
}

/// Loads and attaches mmapsnoop's programs: the calls go to `maps.events`.
pub fn load<'obj>(
    storage: &'obj mut MaybeUninit<OpenObject>,
    trace: &mut Trace,
    options: Options,
) -> Result<MmapsnoopSkel<'obj>> {
    loader::load(
        MmapsnoopSkelBuilder::default(),
        storage,
        trace,
        |open, programs| {
            let counts = &mut open.maps.call_counts;
            counts.set_autocreate(options.count.is_some())?;
            loader::set_entries(counts, options.count.unwrap_or(1))?;
            let rodata = open.rodata()?;
            rodata.nr_mmap = libc::SYS_mmap;
            rodata.count_calls = options.count.is_some();
            // the exit programs that walk paths with bpf_loop where it is (5.17)
            let with_loop = Feature::Loop.present();
            let [exit_mmap, sys_exit] = match with_loop {
                true => ["mmapsnoop_exit_mmap_loop", "mmapsnoop_sys_exit_loop"],
                false => ["mmapsnoop_exit_mmap", "mmapsnoop_sys_exit"],
            };
            programs.load_if(
                false,
                &LOOP_PROGRAMS.map(|[without, with]| match with_loop {
                    true => without,
                    false => with,
                }),
            );
            let mut classic = vec!["mmapsnoop_enter_mmap", exit_mmap];
            // munmap's and mremap's programs are not even loaded without --munmap
            programs.load_if(options.munmap, MUNMAP_PROGRAMS);
            if options.munmap {
                rodata.nr_munmap = libc::SYS_munmap;
                rodata.nr_mremap = libc::SYS_mremap;
                classic.extend_from_slice(MUNMAP_PROGRAMS);
            }
            programs.syscalls(SyscallPrograms {
                raw: ["mmapsnoop_sys_enter", sys_exit],
                classic,
            });
            // counting, nothing is sent: the smallest ring buffer
            let ring_mib = if options.count.is_some() {
                1
            } else {
                options.buffer_size
            };
            loader::set_ring_buffer_size(&mut open.maps.events, ring_mib)?;
            Ok(())
        },
    )
}

#[derive(Serialize)]
struct CallRow {
    /// CLOCK_MONOTONIC at return.
    time_ns: u64,
    call: &'static str,
    pid: u32,
    tid: u32,
    uid: u32,
    comm: String,
    /// The errno name, if the call failed.
    error: Option<String>,
    #[serde(flatten)]
    args: CallArgs,
    /// --show-cgroup: cgroup and container.
    #[serde(flatten)]
    cgroup: Option<CgroupField>,
}

/// A call's own fields.
#[derive(Serialize)]
#[serde(untagged)]
enum CallArgs {
    Mmap {
        /// The address mapped.
        addr: Option<u64>,
        hint: u64,
        len: u64,
        prot: String,
        prot_bits: u32,
        flags: Vec<String>,
        flags_bits: u32,
        offset: u64,
        fd: i32,
        /// The file's name and path, escaped.
        file: Option<String>,
        path: Option<String>,
    },
    Munmap {
        /// The address unmapped.
        addr: u64,
        len: u64,
    },
    Mremap {
        /// The address it moved to.
        addr: Option<u64>,
        /// The new length.
        len: u64,
        old_addr: u64,
        old_len: u64,
        new_addr: u64,
        flags: Vec<String>,
    },
}

impl CallRow {
    fn new(e: &Event, cgroup: Option<CgroupField>) -> CallRow {
        let errno = decode::syscall_errno(e.ret);
        let result_addr = errno.is_none().then_some(e.ret as u64);
        let (call, args) = match e.call {
            Call::MMAPSNOOP_MMAP => {
                let file = FilePath::from_bpf(
                    &e.path,
                    e.path_info.len as usize,
                    e.path_info.depth as usize,
                    e.path_info.flags,
                );
                let args = CallArgs::Mmap {
                    addr: result_addr,
                    hint: e.addr,
                    len: e.len,
                    prot: decode::prot_string(e.prot),
                    prot_bits: e.prot,
                    flags: decode::map_flag_names(e.flags),
                    flags_bits: e.flags,
                    offset: e.offset,
                    fd: e.fd,
                    file: file.as_ref().map(|f| escape_bytes(&f.name)),
                    path: file.as_ref().map(|f| escape_bytes(&f.path)),
                };
                ("mmap", args)
            }
            Call::MMAPSNOOP_MREMAP => {
                let args = CallArgs::Mremap {
                    addr: result_addr,
                    len: e.new_len,
                    old_addr: e.addr,
                    old_len: e.len,
                    new_addr: e.new_addr,
                    flags: decode::mremap_flag_names(e.flags),
                };
                ("mremap", args)
            }
            _ => {
                let args = CallArgs::Munmap {
                    addr: e.addr,
                    len: e.len,
                };
                ("munmap", args)
            }
        };
        CallRow {
            time_ns: e.time_ns,
            call,
            pid: e.pid,
            tid: e.tid,
            uid: e.uid,
            comm: escape_c_chars(&e.comm),
            error: errno.map(decode::errno_name),
            args,
            cgroup,
        }
    }
}

/// What the table shows.
struct Columns {
    timestamp: bool,
    full_path: bool,
    show_call: bool,
    /// --show-cgroup: names the callers' cgroups.
    cgroups: Option<CgroupNames>,
}

impl EventPrinter for Columns {
    fn header(&self) -> Option<String> {
        Some(self.header_line())
    }

    fn print(&mut self, out: &mut Output, record: &[u8], start_ns: u64) -> Result<()> {
        // records carry only the used part of path[]
        let event = records::decode::<Event>(record);
        let cgroup = self.cgroups.as_mut().map(|names| names.field(event.cgroup));
        let row = CallRow::new(&event, cgroup);
        out.record(&row, |row| self.line(row, start_ns))
    }
}

impl Columns {
    fn header_line(&self) -> String {
        let mut line = String::new();
        if self.timestamp {
            line.push_str(&format!("{:<12} ", "TIME(s)"));
        }
        line.push_str(&format!("{:<7} {:<7} {:<16} ", "PID", "TID", "COMM"));
        if self.cgroups.is_some() {
            line.push_str(&format!("{:<12} {:<30} ", "CONTAINER", "CGROUP"));
        }
        if self.show_call {
            line.push_str(&format!("{:<6} ", "CALL"));
        }
        line.push_str(&format!(
            "{:<4} {:<3} {:<14} {:<8} {:<8} {:<14} {}",
            "PROT", "MAP", "FLAGS", "OFFS", "SIZE", "RESULT", "FILE"
        ));
        line
    }

    fn line(&self, row: &CallRow, start_ns: u64) -> String {
        let mut line = String::with_capacity(160);
        if self.timestamp {
            line.push_str(&elapsed_cell(row.time_ns, start_ns));
        }
        line.push_str(&format!("{:<7} {:<7} {:<16} ", row.pid, row.tid, row.comm));
        if let Some(cgroup) = &row.cgroup {
            line.push_str(&format!(
                "{:<12} {:<30} ",
                cgroup.container_cell(),
                cgroup.cgroup
            ));
        }
        if self.show_call {
            line.push_str(&format!("{:<6} ", row.call));
        }
        let Cells {
            prot,
            map,
            flags,
            offset,
            size,
            result,
            file,
        } = self.cells(row);
        line.push_str(&format!(
            "{prot:<4} {map:<3} {flags:<14} {offset:<8} {size:<8} {result:<14} {file}"
        ));
        line.trim_end().to_string()
    }

    /// The columns a call fills its own way; `-` where it has no such thing.
    fn cells(&self, row: &CallRow) -> Cells {
        let none = || "-".to_string();
        let result = |addr: Option<u64>| match &row.error {
            Some(errno) => errno.clone(),
            None => format!("{:#x}", addr.unwrap_or(0)),
        };
        match &row.args {
            CallArgs::Mmap {
                addr,
                len,
                prot,
                flags_bits,
                offset,
                file,
                path,
                ..
            } => Cells {
                prot: prot.clone(),
                map: decode::map_letters(*flags_bits),
                flags: decode::map_extra_flags(*flags_bits),
                offset: human_size(*offset),
                size: human_size(*len),
                result: result(*addr),
                file: if self.full_path { path } else { file }
                    .clone()
                    .unwrap_or_default(),
            },
            CallArgs::Mremap {
                addr,
                len,
                old_addr,
                old_len,
                flags,
                ..
            } => {
                let flags: Vec<&str> = flags
                    .iter()
                    .map(|f| f.trim_start_matches("MREMAP_"))
                    .collect();
                Cells {
                    prot: none(),
                    map: none(),
                    flags: if flags.is_empty() {
                        none()
                    } else {
                        flags.join(",")
                    },
                    offset: none(),
                    size: format!("{}->{}", human_size(*old_len), human_size(*len)),
                    result: result(*addr),
                    file: format!("[from {old_addr:#x}]"),
                }
            }
            CallArgs::Munmap { addr, len } => Cells {
                prot: none(),
                map: none(),
                flags: none(),
                offset: none(),
                size: human_size(*len),
                result: result(Some(*addr)),
                file: String::new(),
            },
        }
    }
}

/// PROT MAP FLAGS OFFS SIZE RESULT FILE of a table row.
struct Cells {
    prot: String,
    map: String,
    flags: String,
    offset: String,
    size: String,
    result: String,
    file: String,
}
