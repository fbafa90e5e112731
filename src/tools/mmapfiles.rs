//! mmapfiles: which files get mapped, counted by [grandparent dir, parent
//! dir, file name] as the book's mmapfiles.bt; anonymous maps as `[anon]`.

use std::mem::MaybeUninit;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::MapCore;
use serde_json::json;

use crate::cli::{parse_seconds, CommonArgs};
use crate::events::{monotonic_ns, Session};
use crate::output::{escape_c_chars, wall_clock_hms, Output};
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

    /// Print (and reset) the counts every SECS seconds
    #[arg(short = 'i', long, value_name = "SECS", value_parser = parse_seconds)]
    pub interval: Option<Duration>,

    /// Show only the N most mapped files
    #[arg(short = 't', long, value_name = "N")]
    pub top: Option<usize>,

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
        args.interval,
        "mmap() of files",
    )?;
    let report = |out: &mut Output| -> Result<()> {
        let rows = take_counts(&skel.maps.counts)?;
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

/// Reads and clears the kernel's counts, each entry atomically, so a
/// mapping counted during the read lands in the next report.
fn take_counts(counts: &dyn MapCore) -> Result<Vec<Row>> {
    let keys: Vec<Vec<u8>> = counts.keys().collect();
    let mut rows = Vec::with_capacity(keys.len());
    for raw_key in keys {
        let Some(value) = counts
            .lookup_and_delete(&raw_key)
            .context("reading the counts")?
        else {
            continue;
        };
        let mut key = Key::default();
        plain::copy_from_bytes(&mut key, &raw_key)
            .map_err(|_| anyhow::anyhow!("a count's key has the wrong size"))?;
        let count = value
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_ne_bytes)
            .unwrap_or(0);
        rows.push(Row {
            grandparent: escape_c_chars(&key.grandparent),
            parent: escape_c_chars(&key.parent),
            file: escape_c_chars(&key.file),
            count,
        });
    }
    rows.sort_by(|a, b| {
        b.count.cmp(&a.count).then_with(|| {
            (&a.grandparent, &a.parent, &a.file).cmp(&(&b.grandparent, &b.parent, &b.file))
        })
    });
    Ok(rows)
}

fn print_report(out: &mut Output, args: &Args, rows: &[Row]) -> Result<()> {
    let rows = &rows[..args.top.map_or(rows.len(), |n| n.min(rows.len()))];
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
    if args.interval.is_some() || args.common.timestamp {
        out.line(&format!("\n{}", wall_clock_hms()))?;
    }
    let width = |f: fn(&Row) -> &str, title: &str| {
        rows.iter()
            .map(|r| f(r).chars().count())
            .max()
            .unwrap_or(0)
            .max(title.len())
    };
    let gw = width(|r| &r.grandparent, "GRANDPARENT");
    let pw = width(|r| &r.parent, "PARENT");
    let fw = width(|r| &r.file, "FILE");
    out.line(&format!(
        "{:<gw$} {:<pw$} {:<fw$} {:>8}",
        "GRANDPARENT", "PARENT", "FILE", "COUNT"
    ))?;
    for row in rows {
        out.line(&format!(
            "{:<gw$} {:<pw$} {:<fw$} {:>8}",
            row.grandparent, row.parent, row.file, row.count
        ))?;
    }
    Ok(())
}
