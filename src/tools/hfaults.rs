//! hfaults: hugetlb page faults counted by process (and hugetlbfs file), as
//! the book's hfaults (a kprobe on hugetlb_fault there).

use anyhow::Result;
use clap::Parser;

use crate::cli::{CommonArgs, ReportArgs};
use crate::engine::faultvma::Only;
use crate::tools::fault_counts::{self, Grouping};

pub const ABOUT: &str = "Count hugetlb page faults by process and hugetlbfs file";

#[derive(Parser, Debug)]
#[command(about = ABOUT, after_help = "\
Examples:
  hfaults                   # count until Ctrl-C
  hfaults -- ./db           # run ./db and count its hugetlb faults")]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub report: ReportArgs,

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
            pid: true,
            file: true,
        },
        max_entries: args.max_entries,
        only: Only::Hugetlb,
        what: "hugetlb page faults",
        footer: None,
    })
}
