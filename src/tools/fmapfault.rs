//! fmapfault: page faults on file-backed mappings, counted by process name
//! and file name, as the book's fmapfault (a kprobe on filemap_fault there).

use anyhow::Result;
use clap::Parser;

use crate::cli::{CommonArgs, ReportArgs};
use crate::engine::faultvma::Only;
use crate::tools::fault_counts::{self, Grouping};

pub const ABOUT: &str = "Count page faults on file-backed mappings by process name and file name";

#[derive(Parser, Debug)]
#[command(about = ABOUT, after_help = "\
Examples:
  fmapfault                 # count until Ctrl-C
  fmapfault -p 181 -i 1     # one process, every second
  fmapfault --pid-column    # keep processes of the same name apart")]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub report: ReportArgs,

    /// Count by PID too, not only by process name
    #[arg(long)]
    pub pid_column: bool,

    /// Distinct (process, file, kind) counts the kernel can hold
    #[arg(long, value_name = "N", default_value_t = 10240)]
    pub max_entries: u32,
}

pub fn run(args: Args) -> Result<i32> {
    fault_counts::run(fault_counts::Options {
        common: &args.common,
        report: &args.report,
        grouping: Grouping {
            process: true,
            pid: args.pid_column,
            file: true,
        },
        max_entries: args.max_entries,
        only: Only::Files,
        what: "page faults on file mappings",
        footer: None,
    })
}
