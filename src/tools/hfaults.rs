//! hfaults: hugetlb page faults counted by process (and hugetlbfs file), as
//! the book's hfaults (a kprobe on hugetlb_fault there).

use anyhow::Result;
use clap::Parser;

use crate::cli::CommonArgs;
use crate::engine::faultvma::Only;
use crate::tools::fault_counts::{self, CountArgs, Counting, Grouping};

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
    pub counts: CountArgs,
}

pub fn run(args: Args) -> Result<i32> {
    let counting = Counting {
        only: Only::Hugetlb,
        grouping: Grouping::ALL,
        what: "hugetlb page faults",
    };
    fault_counts::run(&args.common, &args.counts, counting, None)
}
