//! mmapfiles: which files get mapped, counted by [grandparent dir, parent
//! dir, file name] as the book's mmapfiles.bt; anonymous maps as `[anon]`.

use std::mem::MaybeUninit;

use anyhow::{Context, Result};
use clap::Parser;
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::MapCore;
use serde_json::json;

use crate::cli::{CommonArgs, ReportArgs};
use crate::events::{monotonic_ns, Session};
use crate::output::{escape_c_chars, wall_clock_hms, Output, Table};
use crate::skel;
use crate::{kernel, set_filter_rodata};

crate::bpf_skeleton!("mmapfiles");
use bpf::types::mmapfiles_key as Key;
use bpf::MmapfilesSkelBuilder;

// SAFETY: a C struct of byte arrays: every bit pattern is valid.
unsafe impl plain::Plain for Key {}

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
    let (target, filter) = skel::prepare(&args.common)?;

    let mut storage = MaybeUninit::uninit();
    let mut open = MmapfilesSkelBuilder::default()
        .open(&mut storage)
        .context("opening the BPF object")?;
    set_filter_rodata!(open, &filter);
    skel::choose_common_programs(open.open_object_mut(), &filter)?;
    open.maps
        .counts
        .set_max_entries(args.max_files.max(1))
        .context("sizing the counting map")?;
    kernel::check_attach_points(open.open_object())?;
    let mut skel = open.load().context(skel::LOAD_FAILED)?;
    skel::fill_traced_tgids(skel.object(), &target)?;
    skel.attach().context(skel::ATTACH_FAILED)?;

    let mut out = Output::new(args.common.json);
    let mut session = Session::start(
        target,
        args.common.duration,
        args.report.interval,
        "mmap() of files",
    )?;
    let report = |out: &mut Output| -> Result<()> {
        let rows = read_rows(&skel.maps.counts)?;
        print_report(out, &args, &rows)?;
        out.flush()
    };
    let stop = session.run(None, || Ok(()), || report(&mut out))?;
    report(&mut out)?;
    skel::report_drops(
        "mmapfiles",
        skel.object(),
        &[(skel::DROP_COUNTS, "raise --max-files")],
    )?;
    Ok(session.exit_code(stop))
}

struct Row {
    grandparent: String,
    parent: String,
    file: String,
    count: u64,
}

fn read_rows(counts: &dyn MapCore) -> Result<Vec<Row>> {
    let mut rows: Vec<Row> = skel::take_counts::<Key>(counts)?
        .into_iter()
        .map(|(key, count)| Row {
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
    if out.json {
        let time_ns = monotonic_ns();
        for row in rows {
            out.json_line(&json!({
                "time_ns": time_ns,
                "grandparent": row.grandparent,
                "parent": row.parent,
                "file": row.file,
                "count": row.count,
            }))?;
        }
        return Ok(());
    }
    if args.report.interval.is_some() || args.common.timestamp {
        out.line(&format!("\n{}", wall_clock_hms()))?;
    }
    let mut table = Table::new(&["GRANDPARENT", "PARENT", "FILE", ">COUNT"]);
    for row in rows {
        table.row(vec![
            row.grandparent.clone(),
            row.parent.clone(),
            row.file.clone(),
            row.count.to_string(),
        ]);
    }
    table.print(out)?;
    Ok(())
}
