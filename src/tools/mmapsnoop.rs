//! mmapsnoop: every mmap(2) as it returns, with who made it, the protection,
//! the flags, the offset, the size, the file and the result.

use std::mem::MaybeUninit;

use anyhow::{Context, Result};
use clap::Parser;
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use serde_json::json;

use crate::cli::CommonArgs;
use crate::decode::{self, FilePath};
use crate::events::{self, EventPrinter};
use crate::output::{escape_bytes, escape_c_chars, human_size, Output};
use crate::skel;
use crate::{kernel, set_filter_rodata};

crate::bpf_skeleton!("mmapsnoop");
use bpf::types::mmapsnoop_event as Event;
use bpf::MmapsnoopSkelBuilder;

// SAFETY: a C struct of integers and byte arrays: every bit pattern is valid.
unsafe impl plain::Plain for Event {}

pub const ABOUT: &str = "Trace mmap(2) calls: who, protection, flags, offset, size, file, result";

const CALL_MMAP: u32 = 0;
const CALL_MUNMAP: u32 = 1;
const CALL_MREMAP: u32 = 2;

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

    /// Ring buffer size in MiB (a power of two); raise it if events are lost
    #[arg(long, value_name = "MIB", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub buffer_size: u32,
}

pub fn run(args: Args) -> Result<i32> {
    let (target, filter) = skel::prepare(&args.common)?;

    let mut storage = MaybeUninit::uninit();
    let mut open = MmapsnoopSkelBuilder::default()
        .open(&mut storage)
        .context("opening the BPF object")?;
    set_filter_rodata!(open, &filter);
    let object = open.open_object_mut();
    skel::choose_common_programs(object, &filter)?;
    for prog in [
        "mmapsnoop_enter_munmap",
        "mmapsnoop_exit_munmap",
        "mmapsnoop_enter_mremap",
        "mmapsnoop_exit_mremap",
    ] {
        skel::set_autoload(object, prog, args.munmap)?;
    }
    let ring_bytes = args.buffer_size.next_power_of_two() << 20;
    open.maps
        .events
        .set_max_entries(ring_bytes)
        .context("sizing the ring buffer")?;
    kernel::check_attach_points(open.open_object())?;
    let mut skel = open.load().context(skel::LOAD_FAILED)?;
    skel::fill_traced_tgids(skel.object(), &target)?;
    skel.attach().context(skel::ATTACH_FAILED)?;

    let what = if args.munmap {
        "mmap(), munmap() and mremap() calls"
    } else {
        "mmap() calls"
    };
    let printer = Printer::new(&args);
    let (mut session, stop) = events::print_events(
        &skel.maps.events,
        printer,
        target,
        args.common.duration,
        what,
    )?;
    skel::report_drops(
        "mmapsnoop",
        skel.object(),
        &[(skel::DROP_RINGBUF, "raise --buffer-size")],
    )?;
    Ok(session.exit_code(stop))
}

struct Printer {
    out: Output,
    timestamp: bool,
    full_path: bool,
    show_call: bool,
    start_ns: u64,
    record: Vec<u8>,
}

impl EventPrinter for Printer {
    fn start(&mut self, start_ns: u64) -> Result<()> {
        self.start_ns = start_ns;
        if self.out.json {
            return Ok(());
        }
        let mut line = String::new();
        if self.timestamp {
            line.push_str(&format!("{:<12} ", "TIME(s)"));
        }
        line.push_str(&format!("{:<7} {:<7} {:<16} ", "PID", "TID", "COMM"));
        if self.show_call {
            line.push_str(&format!("{:<6} ", "CALL"));
        }
        line.push_str(&format!(
            "{:<4} {:<3} {:<14} {:<8} {:<8} {:<14} {}",
            "PROT", "MAP", "FLAGS", "OFFS", "SIZE", "RESULT", "FILE"
        ));
        self.out.line(&line)?;
        self.out.flush()
    }

    fn event(&mut self, data: &[u8]) -> i32 {
        // Records carry only the used part of path[]: pad them to a whole event.
        let n = data.len().min(self.record.len());
        self.record[..n].copy_from_slice(&data[..n]);
        self.record[n..].fill(0);
        let mut event = Event::default();
        if plain::copy_from_bytes(&mut event, &self.record).is_err() {
            return 0;
        }
        let result = if self.out.json {
            self.out.json_line(&event_json(&event))
        } else {
            let line = self.table_line(&event);
            self.out.line(&line)
        };
        self.out.callback_status(result)
    }

    fn finish_batch(&mut self) -> Result<()> {
        self.out.finish_batch()
    }
}

impl Printer {
    fn new(args: &Args) -> Printer {
        Printer {
            out: Output::new(args.common.json),
            timestamp: args.common.timestamp,
            full_path: args.full_path,
            show_call: args.munmap,
            start_ns: 0,
            record: vec![0; std::mem::size_of::<Event>()],
        }
    }

    fn table_line(&self, e: &Event) -> String {
        let mut line = String::with_capacity(160);
        if self.timestamp {
            let secs = e.time_ns.saturating_sub(self.start_ns) as f64 / 1e9;
            line.push_str(&format!("{secs:<12.6} "));
        }
        line.push_str(&format!(
            "{:<7} {:<7} {:<16} ",
            e.pid,
            e.tid,
            escape_c_chars(&e.comm)
        ));
        if self.show_call {
            line.push_str(&format!("{:<6} ", call_name(e.call)));
        }
        let errno = decode::syscall_errno(e.ret);
        let result = match errno {
            Some(errno) => decode::errno_name(errno),
            None if e.call == CALL_MUNMAP => format!("{:#x}", e.addr),
            None => format!("{:#x}", e.ret as u64),
        };
        let file = file_path(e)
            .map(|f| escape_bytes(if self.full_path { &f.path } else { &f.name }))
            .unwrap_or_default();
        let (prot, map, flags, offset, size, file) = match e.call {
            CALL_MMAP => (
                decode::prot_string(e.prot),
                decode::map_letters(e.flags),
                decode::map_extra_flags(e.flags),
                human_size(e.offset),
                human_size(e.len),
                file,
            ),
            CALL_MREMAP => {
                let flags = decode::mremap_flag_names(e.flags);
                let flags: Vec<&str> = flags
                    .iter()
                    .map(|f| f.trim_start_matches("MREMAP_"))
                    .collect();
                (
                    "-".into(),
                    "-".into(),
                    if flags.is_empty() {
                        "-".into()
                    } else {
                        flags.join(",")
                    },
                    "-".into(),
                    format!("{}->{}", human_size(e.len), human_size(e.new_len)),
                    format!("[from {:#x}]", e.addr),
                )
            }
            _ => (
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                human_size(e.len),
                String::new(),
            ),
        };
        line.push_str(&format!(
            "{prot:<4} {map:<3} {flags:<14} {offset:<8} {size:<8} {result:<14} {file}"
        ));
        line.trim_end().to_string()
    }
}

fn call_name(call: u32) -> &'static str {
    match call {
        CALL_MMAP => "mmap",
        CALL_MUNMAP => "munmap",
        CALL_MREMAP => "mremap",
        _ => "?",
    }
}

fn file_path(e: &Event) -> Option<FilePath> {
    FilePath::from_bpf(
        &e.path,
        e.path_info.len as usize,
        e.path_info.depth as usize,
        e.path_info.flags,
    )
}

/// The documented JSON fields (README): numbers as numbers, bytes in bytes.
fn event_json(e: &Event) -> serde_json::Value {
    let errno = decode::syscall_errno(e.ret);
    let error = errno.map(decode::errno_name);
    let mut fields = serde_json::Map::new();
    fields.insert("time_ns".into(), json!(e.time_ns));
    fields.insert("call".into(), json!(call_name(e.call)));
    fields.insert("pid".into(), json!(e.pid));
    fields.insert("tid".into(), json!(e.tid));
    fields.insert("uid".into(), json!(e.uid));
    fields.insert("comm".into(), json!(escape_c_chars(&e.comm)));
    fields.insert("error".into(), json!(error));
    let result_addr = if errno.is_some() {
        None
    } else {
        Some(e.ret as u64)
    };
    match e.call {
        CALL_MMAP => {
            let file = file_path(e);
            fields.insert("addr".into(), json!(result_addr));
            fields.insert("hint".into(), json!(e.addr));
            fields.insert("len".into(), json!(e.len));
            fields.insert("prot".into(), json!(decode::prot_string(e.prot)));
            fields.insert("prot_bits".into(), json!(e.prot));
            fields.insert("flags".into(), json!(decode::map_flag_names(e.flags)));
            fields.insert("flags_bits".into(), json!(e.flags));
            fields.insert("offset".into(), json!(e.offset));
            fields.insert("fd".into(), json!(e.fd));
            fields.insert(
                "file".into(),
                json!(file.as_ref().map(|f| escape_bytes(&f.name))),
            );
            fields.insert(
                "path".into(),
                json!(file.as_ref().map(|f| escape_bytes(&f.path))),
            );
        }
        CALL_MREMAP => {
            fields.insert("addr".into(), json!(result_addr));
            fields.insert("len".into(), json!(e.new_len));
            fields.insert("old_addr".into(), json!(e.addr));
            fields.insert("old_len".into(), json!(e.len));
            fields.insert("new_addr".into(), json!(e.new_addr));
            fields.insert("flags".into(), json!(decode::mremap_flag_names(e.flags)));
        }
        _ => {
            fields.insert("addr".into(), json!(e.addr));
            fields.insert("len".into(), json!(e.len));
        }
    }
    serde_json::Value::Object(fields)
}
