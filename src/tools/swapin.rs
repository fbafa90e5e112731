//! swapin: swap-ins counted by process, as the book's swapin (a kprobe on
//! swap_readpage there; kprobes are not on every kernel). Here two counts: major page
//! faults on anonymous or shmem memory (such memory has no file to be read
//! from, so a fault that had to wait for I/O read it from swap), and the pages
//! a process read from swap devices (read bios into new swap-backed folios),
//! readahead included, which is what the book's tool counts.

use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use serde::Serialize;

use crate::cli::CommonArgs;
use crate::engine::faultvma::Only;
use crate::engine::session::monotonic_ns;
use crate::present::output::Output;
use crate::tools::fault_counts::{self, CountArgs, Counting, Grouping};

pub const ABOUT: &str = "Count swap-ins by process: faults that read from swap, and the pages read";

#[derive(Parser, Debug)]
#[command(about = ABOUT, after_help = "\
What is counted, by process: COUNT, the faults that read a page of anonymous or
shmem memory back from swap (major faults there); PAGES, the pages the process
read from swap devices (its reads into new swap-backed pages, seen as block I/O
is queued), readahead (vm.page-cluster) included: one fault may read up to 8.
PAGES also holds reads that are not faults (swapoff, madvise(MADV_WILLNEED));
pages loaded from zswap need no I/O and are in neither count. After each
report, the kernel's own counts of pages read from swap (pswpin, and zswpin
for zswap) over the same time, for the whole machine, follow for comparison.

Examples:
  swapin                    # counts every second until Ctrl-C
  swapin -i 5 -t 10         # every 5 s, the 10 largest
  swapin -- ./app           # run ./app and count its swap-ins")]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub counts: CountArgs,
}

pub fn run(mut args: Args) -> Result<i32> {
    // the originals print every second
    args.counts
        .report
        .interval
        .get_or_insert(Duration::from_secs(1));
    let mut machine = SwapCounters::read();
    let footer = move |out: &mut Output| -> Result<()> {
        let now = SwapCounters::read();
        let row = MachineRow {
            time_ns: monotonic_ns(),
            machine_pswpin: now.pswpin.saturating_sub(machine.pswpin),
            machine_zswpin: now.zswpin.saturating_sub(machine.zswpin),
        };
        machine = now;
        out.record(&row, |row| {
            format!(
                "pages read from swap by the whole machine (/proc/vmstat): pswpin {}, zswpin {}",
                row.machine_pswpin, row.machine_zswpin
            )
        })
    };
    let counting = Counting {
        only: Only::Swap,
        grouping: Grouping {
            file: false,
            ..Grouping::ALL
        },
        what: "swap-ins",
    };
    fault_counts::run(&args.common, &args.counts, counting, Some(Box::new(footer)))
}

/// What the whole machine read from swap over a report's time, after its rows.
#[derive(Serialize)]
struct MachineRow {
    time_ns: u64,
    machine_pswpin: u64,
    machine_zswpin: u64,
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
