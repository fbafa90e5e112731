//! shmsnoop: System V shared memory calls (shmget, shmat, shmdt, shmctl) as
//! they return, with the caller, the decoded arguments and the result, as BCC's
//! shmsnoop shows them.

use std::mem::MaybeUninit;

use anyhow::Result;
use clap::Parser;
use libbpf_rs::skel::Skel;
use serde::Serialize;

use crate::cli::{parse_ring_mib, CommonArgs};
use crate::engine::drops;
use crate::engine::loader::{self, Trace};
use crate::engine::records;
use crate::engine::skeleton::OpenSkeleton;
use crate::engine::stream::{self, EventPrinter};
use crate::engine::syscalls::SyscallPrograms;
use crate::present::decode;
use crate::present::escape::escape_c_chars;
use crate::present::format::elapsed_cell;
use crate::present::output::Output;

crate::bpf_skeleton!("shmsnoop", OpenShmsnoopSkel, records: [shmsnoop_event]);
use bpf::types::{shmsnoop_event as Event, shmsnoop_sys as Sys};
use bpf::ShmsnoopSkelBuilder;

pub const ABOUT: &str = "Trace System V shared memory calls: shmget, shmat, shmdt, shmctl";

#[derive(Parser, Debug)]
#[command(about = ABOUT, after_help = "\
Examples:
  shmsnoop                  # every shm call on the system
  shmsnoop -T               # with timestamps
  shmsnoop -p 181           # only PID 181
  shmsnoop -t 123           # only thread 123
  shmsnoop -n server        # only processes named server
  shmsnoop --json -- ./app  # run ./app and trace it, as JSON lines")]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Trace only this thread
    #[arg(short = 't', long = "tid", value_name = "TID", value_parser = clap::value_parser!(u32).range(1..))]
    pub tid: Option<u32>,

    /// Ring buffer size in MiB, a power of two: raise it if events are lost
    #[arg(long, value_name = "MIB", default_value_t = 4, value_parser = parse_ring_mib)]
    pub buffer_size: u32,
}

pub fn run(args: Args) -> Result<i32> {
    let mut trace = Trace::prepare(&args.common)?;
    trace.filter.tid = args.tid;
    let mut storage = MaybeUninit::uninit();
    let skel = loader::load(
        ShmsnoopSkelBuilder::default(),
        &mut storage,
        &mut trace,
        |open, programs| {
            let rodata = open.rodata()?;
            rodata.nr_shmget = libc::SYS_shmget;
            rodata.nr_shmat = libc::SYS_shmat;
            rodata.nr_shmdt = libc::SYS_shmdt;
            rodata.nr_shmctl = libc::SYS_shmctl;
            programs.syscalls(SyscallPrograms {
                raw: ["shmsnoop_sys_enter", "shmsnoop_sys_exit"],
                classic: vec![
                    "shmsnoop_enter_shmget",
                    "shmsnoop_exit_shmget",
                    "shmsnoop_enter_shmat",
                    "shmsnoop_exit_shmat",
                    "shmsnoop_enter_shmdt",
                    "shmsnoop_exit_shmdt",
                    "shmsnoop_enter_shmctl",
                    "shmsnoop_exit_shmctl",
                ],
            });
            loader::set_ring_buffer_size(&mut open.maps.events, args.buffer_size)?;
            Ok(())
        },
    )?;
    let printer = Printer {
        timestamp: args.common.timestamp,
    };
    let (mut session, stop) = stream::print_events(
        &skel.maps.events,
        printer,
        trace,
        "shmget(), shmat(), shmdt() and shmctl() calls",
    )?;
    drops::report(args.common.tool, skel.object(), drops::RING_BUFFER_HINT)?;
    Ok(session.exit_code(stop))
}

struct Printer {
    /// -T: a time column.
    timestamp: bool,
}

impl EventPrinter for Printer {
    fn header(&self) -> Option<String> {
        Some(header_line(self.timestamp))
    }

    fn print(&mut self, out: &mut Output, record: &[u8], start_ns: u64) -> Result<()> {
        let row = CallRow::new(&records::decode::<Event>(record));
        let start_ns = self.timestamp.then_some(start_ns);
        out.record(&row, |row| table_line(row, start_ns))
    }
}

/// One call as printed; the JSON fields are documented in the README: numbers
/// as numbers, raw values next to decoded ones.
#[derive(Serialize)]
struct CallRow {
    time_ns: u64,
    sys: &'static str,
    pid: u32,
    tid: u32,
    uid: u32,
    comm: String,
    /// -1 on failure, as libc returns it.
    ret: i64,
    errno: Option<String>,
    #[serde(flatten)]
    args: CallArgs,
}

/// A call's own arguments.
#[derive(Serialize)]
#[serde(untagged)]
enum CallArgs {
    Shmget {
        key: u32,
        size: u64,
        shmflg: u32,
        flags: Vec<String>,
        mode: u32,
    },
    Shmat {
        shmid: i32,
        shmaddr: u64,
        shmflg: u32,
        flags: Vec<String>,
    },
    Shmdt {
        shmaddr: u64,
    },
    Shmctl {
        shmid: i32,
        cmd: i32,
        cmd_name: Option<&'static str>,
        ipc_64: bool,
        buf: u64,
    },
    Unknown {},
}

impl CallRow {
    fn new(e: &Event) -> CallRow {
        let errno = decode::syscall_errno(e.ret);
        let (sys, args) = match e.sys {
            Sys::SHMSNOOP_SHMGET => (
                "shmget",
                CallArgs::Shmget {
                    key: e.key,
                    size: e.size,
                    shmflg: e.shmflg,
                    flags: decode::shmget_flag_names(e.shmflg),
                    mode: decode::shmget_mode(e.shmflg),
                },
            ),
            Sys::SHMSNOOP_SHMAT => (
                "shmat",
                CallArgs::Shmat {
                    shmid: e.shmid,
                    shmaddr: e.shmaddr,
                    shmflg: e.shmflg,
                    flags: decode::shmat_flag_names(e.shmflg),
                },
            ),
            Sys::SHMSNOOP_SHMDT => ("shmdt", CallArgs::Shmdt { shmaddr: e.shmaddr }),
            Sys::SHMSNOOP_SHMCTL => (
                "shmctl",
                CallArgs::Shmctl {
                    shmid: e.shmid,
                    cmd: e.cmd,
                    cmd_name: decode::shmctl_cmd_name(e.cmd),
                    ipc_64: e.cmd & decode::IPC_64 != 0,
                    buf: e.buf,
                },
            ),
            _ => ("?", CallArgs::Unknown {}),
        };
        CallRow {
            time_ns: e.time_ns,
            sys,
            pid: e.pid,
            tid: e.tid,
            uid: e.uid,
            comm: escape_c_chars(&e.comm),
            ret: if errno.is_some() { -1 } else { e.ret },
            errno: errno.map(decode::errno_name),
            args,
        }
    }

    /// The result as libc gives it: -1 with the errno name on failure (`-1 ENOENT`),
    /// shmat's address in hex, other results (shmids, 0, counts) in decimal.
    fn result(&self) -> String {
        match (&self.errno, &self.args) {
            (Some(errno), _) => format!("-1 {errno}"),
            (None, CallArgs::Shmat { .. }) => format!("{:#x}", self.ret as u64),
            (None, _) => self.ret.to_string(),
        }
    }

    /// The arguments as BCC's shmsnoop writes them, with flags and commands decoded.
    /// shmids are decimal, as ipcs(1) shows them and as shmget's RET is.
    fn arguments(&self) -> String {
        match &self.args {
            CallArgs::Shmget {
                key, size, shmflg, ..
            } => format!(
                "key: {key:#x}, size: {size}, shmflg: {}",
                decode::shmget_flags_string(*shmflg)
            ),
            CallArgs::Shmat {
                shmid,
                shmaddr,
                shmflg,
                ..
            } => format!(
                "shmid: {shmid}, shmaddr: {shmaddr:#x}, shmflg: {}",
                decode::shmat_flags_string(*shmflg)
            ),
            CallArgs::Shmdt { shmaddr } => format!("shmaddr: {shmaddr:#x}"),
            CallArgs::Shmctl {
                shmid, cmd, buf, ..
            } => format!(
                "shmid: {shmid}, cmd: {}, buf: {buf:#x}",
                decode::shmctl_cmd_string(*cmd)
            ),
            CallArgs::Unknown {} => String::new(),
        }
    }
}

/// BCC's columns, plus TID.
fn header_line(timestamp: bool) -> String {
    let mut line = String::new();
    if timestamp {
        line.push_str(&format!("{:<12} ", "TIME(s)"));
    }
    line.push_str(&format!(
        "{:<7} {:<7} {:<16} {:<6} {:>16} ARGs",
        "PID", "TID", "COMM", "SYS", "RET"
    ));
    line
}

/// One row; `start_ns` (with -T) is the origin of the time column.
fn table_line(row: &CallRow, start_ns: Option<u64>) -> String {
    let mut line = String::with_capacity(160);
    if let Some(start_ns) = start_ns {
        line.push_str(&elapsed_cell(row.time_ns, start_ns));
    }
    line.push_str(&format!(
        "{:<7} {:<7} {:<16} {:<6} {:>16} {}",
        row.pid,
        row.tid,
        row.comm,
        row.sys.to_uppercase(),
        row.result(),
        row.arguments()
    ));
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn line(e: &Event, start_ns: Option<u64>) -> String {
        table_line(&CallRow::new(e), start_ns)
    }

    fn json(e: &Event) -> serde_json::Value {
        serde_json::to_value(CallRow::new(e)).unwrap()
    }

    fn event(sys: Sys, ret: i64) -> Event {
        let mut e = Event {
            sys,
            ret,
            pid: 42,
            tid: 43,
            time_ns: 2_500_000_000,
            ..Default::default()
        };
        for (slot, byte) in e.comm.iter_mut().zip(b"shmer") {
            *slot = *byte as i8;
        }
        e
    }

    #[test]
    fn rows_read_like_bcc() {
        let mut get = event(Sys::SHMSNOOP_SHMGET, 65538);
        get.size = 1 << 20;
        get.shmflg = 0o1000 | 0o600;
        assert_eq!(
            line(&get, None),
            format!(
                "42      43      shmer            SHMGET {:>16} key: 0x0, size: 1048576, shmflg: 0x380 (IPC_CREAT|0600)",
                65538
            )
        );

        let mut at = event(Sys::SHMSNOOP_SHMAT, 0x7f12_3456_7000);
        at.shmid = 65538;
        assert!(
            line(&at, None)
                .ends_with("SHMAT    0x7f1234567000 shmid: 65538, shmaddr: 0x0, shmflg: 0x0"),
            "{}",
            line(&at, None)
        );

        let mut dt = event(Sys::SHMSNOOP_SHMDT, 0);
        dt.shmaddr = 0x7f12_3456_7000;
        assert!(line(&dt, None).ends_with(" 0 shmaddr: 0x7f1234567000"));

        let mut ctl = event(Sys::SHMSNOOP_SHMCTL, 0);
        ctl.shmid = 65538;
        assert!(line(&ctl, None).ends_with(" 0 shmid: 65538, cmd: 0 (IPC_RMID), buf: 0x0"));

        let mut failed = event(Sys::SHMSNOOP_SHMGET, -2);
        failed.key = 0xdead_beef;
        failed.size = 4096;
        let line = line(&failed, Some(2_000_000_000));
        assert!(line.starts_with("0.500000     42 "), "{line}");
        assert!(
            line.ends_with(" -1 ENOENT key: 0xdeadbeef, size: 4096, shmflg: 0x0"),
            "{line}"
        );
    }

    #[test]
    fn header_has_bcc_columns() {
        let words = |s: String| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(
            words(header_line(false)),
            ["PID", "TID", "COMM", "SYS", "RET", "ARGs"]
        );
        assert_eq!(words(header_line(true))[0], "TIME(s)");
    }

    #[test]
    fn json_has_raw_and_decoded_fields() {
        let mut get = event(Sys::SHMSNOOP_SHMGET, 65538);
        get.size = 1 << 20;
        get.shmflg = 0o1000 | 0o600;
        let v = json(&get);
        assert_eq!(v["sys"], "shmget");
        assert_eq!(v["ret"], 65538);
        assert_eq!(v["errno"], serde_json::Value::Null);
        assert_eq!(v["key"], 0);
        assert_eq!(v["size"], 1048576);
        assert_eq!(v["shmflg"], 0x380);
        assert_eq!(v["flags"], json!(["IPC_CREAT"]));
        assert_eq!(v["mode"], 0o600);
        assert_eq!(v["comm"], "shmer");

        let mut ctl = event(Sys::SHMSNOOP_SHMCTL, -22);
        ctl.cmd = 0x100 | 2;
        let v = json(&ctl);
        assert_eq!(v["ret"], -1);
        assert_eq!(v["errno"], "EINVAL");
        assert_eq!(v["cmd"], 258);
        assert_eq!(v["cmd_name"], "IPC_STAT");
        assert_eq!(v["ipc_64"], true);

        let mut at = event(Sys::SHMSNOOP_SHMAT, 0x7f12_3456_7000);
        at.shmflg = 0o10000;
        let v = json(&at);
        assert_eq!(v["ret"], 0x7f12_3456_7000u64);
        assert_eq!(v["flags"], json!(["SHM_RDONLY"]));
    }
}
