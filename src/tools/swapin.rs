//! swapin: swap-ins counted by process, as the book's swapin (a kprobe on
//! swap_readpage there, which this kernel lacks). Here a swap-in is a major
//! page fault on anonymous or shmem memory: such memory has no file to be
//! read from, so a fault that had to wait for I/O read it from swap.

use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use serde_json::json;

use crate::cli::{CommonArgs, ReportArgs};
use crate::faultcount::{self as faults, Grouping};
use crate::output::Output;

pub const ABOUT: &str = "Count swap-ins by process (major faults on anonymous and shmem memory)";

#[derive(Parser, Debug)]
#[command(about = ABOUT, after_help = "\
What is counted: faults that read a page of anonymous or shmem memory back from
swap (major faults there), by the process that waited for it. With swap
readahead (vm.page-cluster, default 3) one such fault can bring in up to 8 pages;
the pages that readahead brought in and that are touched later are not faults that
wait, so they are not counted. After each report, the kernel's own counts of pages
read from swap (pswpin, and zswpin for zswap) over the same time, for the whole
machine, are printed for comparison. Swap-ins by swapoff, by madvise(MADV_WILLNEED)
and by the kernel on a process's behalf (process_madvise, get_user_pages) are not
faults by that process and are missed.

Examples:
  swapin                    # counts every second until Ctrl-C
  swapin -i 5 -t 10         # every 5 s, the 10 largest
  swapin -- ./app           # run ./app and count its swap-ins")]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub report: ReportArgs,

    /// Distinct (process, memory) counts the kernel can hold
    #[arg(long, value_name = "N", default_value_t = 10240)]
    pub max_entries: u32,
}

pub fn run(mut args: Args) -> Result<i32> {
    // the originals print every second
    args.report.interval.get_or_insert(Duration::from_secs(1));
    let mut machine = SwapCounters::read();
    let footer = move |out: &mut Output| -> Result<()> {
        let now = SwapCounters::read();
        let pswpin = now.pswpin.saturating_sub(machine.pswpin);
        let zswpin = now.zswpin.saturating_sub(machine.zswpin);
        machine = now;
        if out.json {
            return out.json_line(&json!({
                "time_ns": crate::events::monotonic_ns(),
                "machine_pswpin": pswpin,
                "machine_zswpin": zswpin,
            }));
        }
        out.line(&format!(
            "pages read from swap by the whole machine (/proc/vmstat): pswpin {pswpin}, zswpin {zswpin}"
        ))
    };
    faults::run(faults::Options {
        tool: "swapin",
        common: &args.common,
        report: &args.report,
        grouping: Grouping {
            process: true,
            pid: true,
            file: false,
        },
        max_entries: args.max_entries,
        only: faults::Only::Swap,
        what: "swap-ins",
        footer: Some(Box::new(footer)),
    })
}

/// The kernel's counts of pages read from swap (/proc/vmstat), 0 where absent.
#[derive(Clone, Copy, Default)]
struct SwapCounters {
    pswpin: u64,
    zswpin: u64,
}

impl SwapCounters {
    fn read() -> SwapCounters {
        let Ok(vmstat) = procfs::vmstat() else {
            return SwapCounters::default();
        };
        let get = |name: &str| vmstat.get(name).map_or(0, |&v| v.max(0) as u64);
        SwapCounters {
            pswpin: get("pswpin"),
            zswpin: get("zswpin"),
        }
    }
}
