//! ffaults: page faults by the file of the mapping they hit (anonymous
//! memory labelled [anon], [heap], [stack]), per process, minor and major.

use anyhow::Result;
use clap::{Parser, ValueEnum};

use crate::cli::CommonArgs;
use crate::engine::faultvma::Only;
use crate::tools::fault_counts::{self, CountArgs, Counting, Grouping};

pub const ABOUT: &str =
    "Count page faults by the file they hit ([anon], [heap], [stack] for anonymous memory), per process";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum By {
    File,
    Process,
    Both,
}

#[derive(Parser, Debug)]
#[command(about = ABOUT, after_help = "\
Examples:
  ffaults                   # count until Ctrl-C, by process and file
  ffaults --by file -i 5    # by file alone, every 5 seconds
  ffaults -- ./app          # run ./app and count its faults")]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Group the counts by file, by process, or by both
    #[arg(long, value_enum, default_value_t = By::Both)]
    pub by: By,

    #[command(flatten)]
    pub counts: CountArgs,
}

pub fn run(args: Args) -> Result<i32> {
    let counting = Counting {
        only: Only::All,
        grouping: Grouping {
            process: args.by != By::File,
            pid: args.by != By::File,
            file: args.by != By::Process,
            cgroup: false,
        },
        what: "page faults",
    };
    fault_counts::run(&args.common, &args.counts, counting, None)
}
