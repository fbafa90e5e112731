//! shmsnoop: System V shared memory calls (shmget, shmat, shmdt, shmctl) as
//! they return, with the caller, the decoded arguments and the result, as BCC's
//! shmsnoop shows them.

use std::mem::MaybeUninit;

use anyhow::{Context, Result};
use clap::Parser;
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use serde_json::json;

use crate::cli::CommonArgs;
use crate::decode;
use crate::events::{self, EventPrinter};
use crate::output::{escape_c_chars, Output};
use crate::skel;
use crate::{kernel, set_filter_rodata};

crate::bpf_skeleton!("shmsnoop");
use bpf::types::shmsnoop_event as Event;
use bpf::ShmsnoopSkelBuilder;

// SAFETY: a C struct of integers and byte arrays: every bit pattern is valid.
unsafe impl plain::Plain for Event {}

pub const ABOUT: &str = "Trace System V shared memory calls: shmget, shmat, shmdt, shmctl";

/// enum shmsnoop_sys in shmsnoop.h.
const SYS_SHMGET: u32 = 0;
const SYS_SHMAT: u32 = 1;
const SYS_SHMDT: u32 = 2;
const SYS_SHMCTL: u32 = 3;

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

    /// Ring buffer size in MiB (a power of two); raise it if events are lost
    #[arg(long, value_name = "MIB", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub buffer_size: u32,
}

pub fn run(args: Args) -> Result<i32> {
    let (target, mut filter) = skel::prepare(&args.common)?;
    filter.tid = args.tid;

    let mut storage = MaybeUninit::uninit();
    let mut open = ShmsnoopSkelBuilder::default()
        .open(&mut storage)
        .context("opening the BPF object")?;
    set_filter_rodata!(open, &filter);
    let object = open.open_object_mut();
    skel::choose_common_programs(object, &filter)?;
    let ring_bytes = args.buffer_size.next_power_of_two() << 20;
    open.maps
        .events
        .set_max_entries(ring_bytes)
        .context("sizing the ring buffer")?;
    kernel::check_attach_points(open.open_object())?;
    let mut skel = open.load().context(skel::LOAD_FAILED)?;
    skel::fill_traced_tgids(skel.object(), &target)?;
    skel.attach().context(skel::ATTACH_FAILED)?;

    let (mut session, stop) = events::print_events(
        &skel.maps.events,
        Printer::new(&args),
        target,
        args.common.duration,
        "shmget(), shmat(), shmdt() and shmctl() calls",
    )?;
    skel::report_drops(
        "shmsnoop",
        skel.object(),
        &[(skel::DROP_RINGBUF, "raise --buffer-size")],
    )?;
    Ok(session.exit_code(stop))
}

struct Printer {
    out: Output,
    timestamp: bool,
    start_ns: u64,
}

impl Printer {
    fn new(args: &Args) -> Printer {
        Printer {
            out: Output::new(args.common.json),
            timestamp: args.common.timestamp,
            start_ns: 0,
        }
    }
}

impl EventPrinter for Printer {
    fn start(&mut self, start_ns: u64) -> Result<()> {
        self.start_ns = start_ns;
        if self.out.json {
            return Ok(());
        }
        let line = header_line(self.timestamp);
        self.out.line(&line)?;
        self.out.flush()
    }

    fn event(&mut self, data: &[u8]) -> i32 {
        let mut event = Event::default();
        if plain::copy_from_bytes(&mut event, data).is_err() {
            return 0;
        }
        let result = if self.out.json {
            self.out.json_line(&event_json(&event))
        } else {
            let line = table_line(&event, self.timestamp.then_some(self.start_ns));
            self.out.line(&line)
        };
        self.out.callback_status(result)
    }

    fn finish_batch(&mut self) -> Result<()> {
        self.out.finish_batch()
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
fn table_line(e: &Event, start_ns: Option<u64>) -> String {
    let mut line = String::with_capacity(160);
    if let Some(start_ns) = start_ns {
        let secs = e.time_ns.saturating_sub(start_ns) as f64 / 1e9;
        line.push_str(&format!("{secs:<12.6} "));
    }
    line.push_str(&format!(
        "{:<7} {:<7} {:<16} {:<6} {:>16} {}",
        e.pid,
        e.tid,
        escape_c_chars(&e.comm),
        sys_name(e.sys).to_uppercase(),
        ret_string(e),
        args_string(e)
    ));
    line
}

fn sys_name(sys: u32) -> &'static str {
    match sys {
        SYS_SHMGET => "shmget",
        SYS_SHMAT => "shmat",
        SYS_SHMDT => "shmdt",
        SYS_SHMCTL => "shmctl",
        _ => "?",
    }
}

/// The result as libc gives it: -1 with the errno name on failure (`-1 ENOENT`),
/// shmat's address in hex, other results (shmids, 0, counts) in decimal.
fn ret_string(e: &Event) -> String {
    match decode::syscall_errno(e.ret) {
        Some(errno) => format!("-1 {}", decode::errno_name(errno)),
        None if e.sys == SYS_SHMAT => format!("{:#x}", e.ret as u64),
        None => e.ret.to_string(),
    }
}

/// The arguments as BCC's shmsnoop writes them, with flags and commands decoded.
/// shmids are decimal, as ipcs(1) shows them and as shmget's RET is.
fn args_string(e: &Event) -> String {
    match e.sys {
        SYS_SHMGET => format!(
            "key: {:#x}, size: {}, shmflg: {}",
            e.key,
            e.size,
            decode::shmget_flags_string(e.shmflg)
        ),
        SYS_SHMAT => format!(
            "shmid: {}, shmaddr: {:#x}, shmflg: {}",
            e.shmid,
            e.shmaddr,
            decode::shmat_flags_string(e.shmflg)
        ),
        SYS_SHMDT => format!("shmaddr: {:#x}", e.shmaddr),
        SYS_SHMCTL => format!(
            "shmid: {}, cmd: {}, buf: {:#x}",
            e.shmid,
            decode::shmctl_cmd_string(e.cmd),
            e.buf
        ),
        _ => String::new(),
    }
}

/// The documented JSON fields (README): numbers as numbers, raw values next to decoded ones.
fn event_json(e: &Event) -> serde_json::Value {
    let errno = decode::syscall_errno(e.ret);
    let mut fields = serde_json::Map::new();
    fields.insert("time_ns".into(), json!(e.time_ns));
    fields.insert("sys".into(), json!(sys_name(e.sys)));
    fields.insert("pid".into(), json!(e.pid));
    fields.insert("tid".into(), json!(e.tid));
    fields.insert("uid".into(), json!(e.uid));
    fields.insert("comm".into(), json!(escape_c_chars(&e.comm)));
    match errno {
        Some(errno) => {
            fields.insert("ret".into(), json!(-1));
            fields.insert("errno".into(), json!(decode::errno_name(errno)));
        }
        None => {
            fields.insert("ret".into(), json!(e.ret));
            fields.insert("errno".into(), serde_json::Value::Null);
        }
    }
    match e.sys {
        SYS_SHMGET => {
            fields.insert("key".into(), json!(e.key));
            fields.insert("size".into(), json!(e.size));
            fields.insert("shmflg".into(), json!(e.shmflg));
            fields.insert("flags".into(), json!(decode::shmget_flag_names(e.shmflg)));
            fields.insert("mode".into(), json!(decode::shmget_mode(e.shmflg)));
        }
        SYS_SHMAT => {
            fields.insert("shmid".into(), json!(e.shmid));
            fields.insert("shmaddr".into(), json!(e.shmaddr));
            fields.insert("shmflg".into(), json!(e.shmflg));
            fields.insert("flags".into(), json!(decode::shmat_flag_names(e.shmflg)));
        }
        SYS_SHMDT => {
            fields.insert("shmaddr".into(), json!(e.shmaddr));
        }
        SYS_SHMCTL => {
            fields.insert("shmid".into(), json!(e.shmid));
            fields.insert("cmd".into(), json!(e.cmd));
            fields.insert("cmd_name".into(), json!(decode::shmctl_cmd_name(e.cmd)));
            fields.insert("ipc_64".into(), json!(e.cmd & decode::IPC_64 != 0));
            fields.insert("buf".into(), json!(e.buf));
        }
        _ => {}
    }
    serde_json::Value::Object(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(sys: u32, ret: i64) -> Event {
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
        let mut get = event(SYS_SHMGET, 65538);
        get.size = 1 << 20;
        get.shmflg = 0o1000 | 0o600;
        assert_eq!(
            table_line(&get, None),
            format!(
                "42      43      shmer            SHMGET {:>16} key: 0x0, size: 1048576, shmflg: 0x380 (IPC_CREAT|0600)",
                65538
            )
        );

        let mut at = event(SYS_SHMAT, 0x7f12_3456_7000);
        at.shmid = 65538;
        assert!(
            table_line(&at, None)
                .ends_with("SHMAT    0x7f1234567000 shmid: 65538, shmaddr: 0x0, shmflg: 0x0"),
            "{}",
            table_line(&at, None)
        );

        let mut dt = event(SYS_SHMDT, 0);
        dt.shmaddr = 0x7f12_3456_7000;
        assert!(table_line(&dt, None).ends_with(" 0 shmaddr: 0x7f1234567000"));

        let mut ctl = event(SYS_SHMCTL, 0);
        ctl.shmid = 65538;
        assert!(table_line(&ctl, None).ends_with(" 0 shmid: 65538, cmd: 0 (IPC_RMID), buf: 0x0"));

        let mut failed = event(SYS_SHMGET, -2);
        failed.key = 0xdead_beef;
        failed.size = 4096;
        let line = table_line(&failed, Some(2_000_000_000));
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
        let mut get = event(SYS_SHMGET, 65538);
        get.size = 1 << 20;
        get.shmflg = 0o1000 | 0o600;
        let v = event_json(&get);
        assert_eq!(v["sys"], "shmget");
        assert_eq!(v["ret"], 65538);
        assert_eq!(v["errno"], serde_json::Value::Null);
        assert_eq!(v["key"], 0);
        assert_eq!(v["size"], 1048576);
        assert_eq!(v["shmflg"], 0x380);
        assert_eq!(v["flags"], json!(["IPC_CREAT"]));
        assert_eq!(v["mode"], 0o600);
        assert_eq!(v["comm"], "shmer");

        let mut ctl = event(SYS_SHMCTL, -22);
        ctl.cmd = 0x100 | 2;
        let v = event_json(&ctl);
        assert_eq!(v["ret"], -1);
        assert_eq!(v["errno"], "EINVAL");
        assert_eq!(v["cmd"], 258);
        assert_eq!(v["cmd_name"], "IPC_STAT");
        assert_eq!(v["ipc_64"], true);

        let mut at = event(SYS_SHMAT, 0x7f12_3456_7000);
        at.shmflg = 0o10000;
        let v = event_json(&at);
        assert_eq!(v["ret"], 0x7f12_3456_7000u64);
        assert_eq!(v["flags"], json!(["SHM_RDONLY"]));
    }
}
