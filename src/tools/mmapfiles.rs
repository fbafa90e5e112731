//! mmapfiles: which files get mapped, counted by [grandparent dir, parent
//! dir, file name] as the book's mmapfiles.bt; anonymous maps as `[anon]`.

use std::collections::HashMap;
use std::mem::MaybeUninit;

use anyhow::{Context, Result};
use clap::Parser;
use libbpf_rs::skel::Skel;
use libbpf_rs::{MapCore, MapFlags};
use serde::Serialize;

use crate::cli::{CommonArgs, ReportArgs};
use crate::engine::drops;
use crate::engine::features::Feature;
use crate::engine::loader::{self, Trace};
use crate::engine::maps::take_counts;
use crate::engine::session::{monotonic_ns, Session};
use crate::engine::skeleton::{DropReason, OpenSkeleton};
use crate::engine::syscalls::SyscallPrograms;
use crate::present::escape::escape_c_chars;
use crate::present::format::wall_clock_hms;
use crate::present::output::Output;

crate::bpf_skeleton!(
    "mmapfiles",
    OpenMmapfilesSkel,
    records: [mmapfiles_key, mmapfiles_numbered_key, mmapfiles_name]
);
use bpf::types::{mmapfiles_key as Key, mmapfiles_name, mmapfiles_numbered_key as NumberedKey};
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

/// Whether the kernel counts by the names' numbers (mmapfiles.bpf.c): its
/// hash keys can't hold three names before 5.11.
pub fn names_numbered() -> bool {
    !Feature::LargeHashKeys.present()
}

/// What counting by numbers costs, for doctor.
pub const NUMBERED_LIMIT: &str = "counts by numbered names, each name kept for the run: \
     twice --max-files bounds the distinct names of a run (a key of three names needs hash \
     keys over 512 bytes: Linux 5.11)";

pub fn run(args: Args) -> Result<i32> {
    let mut trace = Trace::prepare(&args.common)?;
    let mut storage = MaybeUninit::uninit();
    let numbered = names_numbered();
    let skel = loader::load(
        MmapfilesSkelBuilder::default(),
        &mut storage,
        &mut trace,
        |open, programs| {
            open.rodata()?.nr_mmap = libc::SYS_mmap;
            open.rodata()?.names_numbered = numbered;
            programs.syscalls(SyscallPrograms {
                raw: ["mmapfiles_sys_enter", "mmapfiles_sys_exit"],
                classic: vec!["mmapfiles_enter_mmap", "mmapfiles_exit_mmap"],
            });
            let maps = &mut open.maps;
            if numbered {
                // a key of three names can't be made: the programs' uses of it are dead code
                maps.counts.set_autocreate(false)?;
                loader::set_entries(&mut maps.counts_by_number, args.max_files)?;
                let names = args.max_files.saturating_mul(2);
                loader::set_entries(&mut maps.name_numbers, names)?;
                loader::set_entries(&mut maps.numbered_names, names)
            } else {
                // the numbering's maps aren't made either: their uses are dead code
                for unused in [
                    &mut maps.counts_by_number,
                    &mut maps.name_numbers,
                    &mut maps.numbered_names,
                    &mut maps.names_counted,
                ] {
                    unused.set_autocreate(false)?;
                }
                loader::set_entries(&mut maps.counts, args.max_files)
            }
        },
    )?;
    let mut out = Output::new(args.common.json);
    let interval = args.report.interval;
    let mut session = Session::start(trace, interval, "mmap() of files")?;
    let mut names = NumberedNames::default();
    let mut report = |out: &mut Output| -> Result<()> {
        let counts = match numbered {
            false => take_counts::<Key>(&skel.maps.counts)?
                .into_iter()
                .map(|(key, count)| {
                    let names = [&key.grandparent, &key.parent, &key.file];
                    (names.map(|name| escape_c_chars(name)), count)
                })
                .collect(),
            true => take_counts::<NumberedKey>(&skel.maps.counts_by_number)?
                .into_iter()
                .map(|(key, count)| {
                    let mut name = |n| names.name(&skel.maps.numbered_names, n);
                    Ok((
                        [name(key.grandparent)?, name(key.parent)?, name(key.file)?],
                        count,
                    ))
                })
                .collect::<Result<_>>()?,
        };
        print_report(out, &args, &rows(counts))?;
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

/// The names of numbers (names_numbered), each read from the kernel once.
#[derive(Default)]
struct NumberedNames(HashMap<u64, String>);

impl NumberedNames {
    /// The name (escaped) of `number`; 0 is no name.
    fn name(&mut self, numbered_names: &dyn MapCore, number: u64) -> Result<String> {
        if number == 0 {
            return Ok(String::new());
        }
        if let Some(name) = self.0.get(&number) {
            return Ok(name.clone());
        }
        // (the BPF side writes a number's name before the number can be counted)
        let raw = numbered_names
            .lookup(&number.to_ne_bytes(), MapFlags::ANY)?
            .with_context(|| format!("the name numbered {number} is missing"))?;
        let mut name = mmapfiles_name::default();
        plain::copy_from_bytes(&mut name, &raw)
            .map_err(|err| anyhow::anyhow!("reading a name: {err:?}"))?;
        let name = escape_c_chars(&name.name);
        self.0.insert(number, name.clone());
        Ok(name)
    }
}

/// Rows from counts by [grandparent, parent, file], the most counted first.
fn rows(counts: Vec<([String; 3], u64)>) -> Vec<Row> {
    let time_ns = monotonic_ns();
    let mut rows: Vec<Row> = counts
        .into_iter()
        .map(|([grandparent, parent, file], count)| Row {
            time_ns,
            grandparent,
            parent,
            file,
            count,
        })
        .collect();
    rows.sort_by(|a, b| {
        b.count.cmp(&a.count).then_with(|| {
            (&a.grandparent, &a.parent, &a.file).cmp(&(&b.grandparent, &b.parent, &b.file))
        })
    });
    rows
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
