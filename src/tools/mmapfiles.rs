//! mmapfiles: which files get mapped, counted by [grandparent dir, parent
//! dir, file name] as the book's mmapfiles.bt; anonymous maps as `[anon]`.

use std::mem::MaybeUninit;

use anyhow::Result;
use clap::Parser;
use libbpf_rs::skel::Skel;
use libbpf_rs::MapCore;
use serde::Serialize;

use crate::cli::{CommonArgs, ReportArgs};
use crate::engine::drops;
use crate::engine::loader::{self, Trace};
use crate::engine::maps::take_counts;
use crate::engine::session::{monotonic_ns, Session};
use crate::engine::skeleton::{DropReason, OpenSkeleton};
use crate::engine::syscalls::SyscallPrograms;
use crate::present::escape::escape_c_chars;
use crate::present::format::wall_clock_hms;
use crate::present::output::Output;

crate::bpf_skeleton!("mmapfiles", OpenMmapfilesSkel, records: [mmapfiles_key]);
use bpf::types::mmapfiles_key as Key;
use bpf::MmapfilesSkelBuilder;

pub const ABOUT: &str = "Count mmap(2)s of files by directory and name ([anon] for anonymous maps)";

#[derive(Parser, Debug)]
#[command(about = ABOUT, after_help = "\
Examples:
  mmapfiles                 # count until Ctrl-C
  mmapfiles -i 5 -t 10      # the top 10 every 5 seconds
  mmapfiles -- make         # what a build maps")]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub report: ReportArgs,

    /// Distinct files the kernel can count at once; raise it if counts are lost
    #[arg(long, value_name = "N", default_value_t = 10240)]
    pub max_files: u32,
}

pub fn run(args: Args) -> Result<i32> {
    let mut trace = Trace::prepare(&args.common)?;
    let mut storage = MaybeUninit::uninit();
    let skel = loader::load(
        MmapfilesSkelBuilder::default(),
        &mut storage,
        &mut trace,
        |open, programs| {
            open.rodata()?.nr_mmap = libc::SYS_mmap;
            programs.syscalls(SyscallPrograms {
                raw: ["mmapfiles_sys_enter", "mmapfiles_sys_exit"],
                classic: vec!["mmapfiles_enter_mmap", "mmapfiles_exit_mmap"],
            });
            loader::set_entries(&mut open.maps.counts, args.max_files)
        },
    )?;
    let mut out = Output::new(args.common.json);
    let interval = args.report.interval;
    let mut session = Session::start(trace, interval, "mmap() of files")?;
    let report = |out: &mut Output| -> Result<()> {
        let rows = read_rows(&skel.maps.counts)?;
        print_report(out, &args, &rows)?;
        out.flush()
    };
    let stop = session.run(None, || Ok(()), || report(&mut out))?;
    report(&mut out)?;
    drops::report(
        args.common.tool,
        skel.object(),
        &[(DropReason::MEMTRACE_DROP_COUNTS, "raise --max-files")],
    )?;
    Ok(session.exit_code(stop))
}

/// The maps of one file counted since the last report.
#[derive(Serialize)]
struct Row {
    time_ns: u64,
    grandparent: String,
    parent: String,
    file: String,
    count: u64,
}

fn read_rows(counts: &dyn MapCore) -> Result<Vec<Row>> {
    let time_ns = monotonic_ns();
    let mut rows: Vec<Row> = take_counts::<Key>(counts)?
        .into_iter()
        .map(|(key, count)| Row {
            time_ns,
            grandparent: escape_c_chars(&key.grandparent),
            parent: escape_c_chars(&key.parent),
            file: escape_c_chars(&key.file),
            count,
        })
        .collect();
    rows.sort_by(|a, b| {
        b.count.cmp(&a.count).then_with(|| {
            (&a.grandparent, &a.parent, &a.file).cmp(&(&b.grandparent, &b.parent, &b.file))
        })
    });
    Ok(rows)
}

fn print_report(out: &mut Output, args: &Args, rows: &[Row]) -> Result<()> {
    let rows = &rows[..args.report.top.map_or(rows.len(), |n| n.min(rows.len()))];
    if args.report.interval.is_some() || args.common.timestamp {
        out.heading(&format!("\n{}", wall_clock_hms()))?;
    }
    out.table(&["GRANDPARENT", "PARENT", "FILE", ">COUNT"], rows, |row| {
        vec![
            row.grandparent.clone(),
            row.parent.clone(),
            row.file.clone(),
            row.count.to_string(),
        ]
    })
}
