//! fmapfault: page faults on file-backed mappings, counted by process name
//! and file name, as the book's fmapfault (a kprobe on filemap_fault there).

use anyhow::Result;
use clap::Parser;

use crate::cli::CommonArgs;
use crate::engine::faultvma::Only;
use crate::tools::fault_counts::{self, CountArgs, Counting, Grouping};

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
    pub counts: CountArgs,

    /// Count by PID too, not only by process name
    #[arg(long)]
    pub pid_column: bool,
}

pub fn run(args: Args) -> Result<i32> {
    let counting = Counting {
        only: Only::Files,
        grouping: Grouping {
            pid: args.pid_column,
            ..Grouping::ALL
        },
        what: "page faults on file mappings",
    };
    fault_counts::run(&args.common, &args.counts, counting, None)
}
